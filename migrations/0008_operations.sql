-- celeriac 0008: paused queues, and per-minute task counts for the dashboard.

-- Queues an operator paused (`celeriac queue pause`, the dashboard): no claim takes their
-- messages, whichever worker or transport consumer makes it, until the row is deleted. Enqueues
-- go on; the messages wait. A claim looks a consumed queue up here by primary key, so pausing
-- costs claims nothing while the table is small (it holds only paused queues).
create table celeriac.queue_paused (
    queue     text        primary key,
    paused_at timestamptz not null default now(),
    paused_by text        not null default current_user,
    reason    text
);

-- Resuming wakes the workers of the resumed queues at once, as an enqueue would.
create function celeriac.queue_resumed_notify() returns trigger
language plpgsql as $$
declare
    queues text;
begin
    select json_agg(distinct queue)::text into queues from resumed;
    if queues is not null then
        if octet_length(queues) > 7900 then
            queues := '*';
        end if;
        perform pg_notify('celeriac_message', queues);
    end if;
    return null;
end
$$;

create trigger queue_resumed_notify after delete on celeriac.queue_paused
    referencing old table as resumed
    for each statement execute function celeriac.queue_resumed_notify();

-- How many deliveries ended in each minute, per queue and task: what the dashboard charts.
-- Every worker adds its own counts every few seconds (one upsert for all its keys), so the
-- table grows by (queues × task names) rows a minute whatever the throughput; workers delete
-- rows older than a week.
create table celeriac.task_count (
    minute    timestamptz not null,
    queue     text        not null,
    task_name text        not null,
    succeeded bigint      not null default 0,
    failed    bigint      not null default 0,
    retried   bigint      not null default 0,
    -- Revoked, rejected or dead-lettered: ended without a result of their own.
    other     bigint      not null default 0,
    primary key (minute, queue, task_name)
);

-- Lookups by task id in dead letters (the dashboard's task search).
create index dead_letter_task_id on celeriac.dead_letter (task_id);

-- The planner's estimate of how many rows `query` returns (its top plan node's rows), without
-- running it: what the dashboard shows, marked as an estimate, where an exact count would scan
-- millions of rows. Callers build `query` with format('%L') around every value.
create function celeriac.plan_rows(query text) returns bigint
language plpgsql volatile as $$
declare
    plan json;
begin
    execute 'explain (format json) ' || query into plan;
    return (plan -> 0 -> 'Plan' ->> 'Plan Rows')::bigint;
end
$$;
