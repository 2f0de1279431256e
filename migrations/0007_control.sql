-- celeriac 0007: durable revocations, and the broadcast table that carries Celery's remote
-- control (pidbox), its replies and task events between processes.

-- Revoked task ids. A claim reports a message whose task id is here (and not expired) as revoked,
-- and the worker stores REVOKED instead of running it: on every worker, whenever it started, for
-- as long as the revocation lives. Written by `celeriac revoke`, `celeriac.revoke()` and by the
-- kombu transport when a Celery app broadcasts `revoke` (`app.control.revoke`, `celery control
-- revoke|terminate`, Flower).
create table celeriac.revoked (
    task_id    text        primary key,
    revoked_at timestamptz not null default now(),
    -- Celery's REVOKE_EXPIRES after the revocation, or after the message's ETA when one is
    -- queued further ahead: a task revoked a day before its ETA still never starts.
    expires_at timestamptz not null,
    -- Kill the task if it is running (`terminate=True`), with this signal.
    terminate  boolean     not null default false,
    signal     text
);

create index revoked_expires on celeriac.revoked (expires_at);
create index revoked_at on celeriac.revoked (revoked_at);

-- Revocations by stamped header (`revoke_by_stamped_headers`): a message whose stamp `header`
-- has `value` (or, for a list-valued stamp, contains it) is revoked.
create table celeriac.revoked_stamp (
    header     text        not null,
    value      text        not null,
    revoked_at timestamptz not null default now(),
    expires_at timestamptz not null,
    terminate  boolean     not null default false,
    signal     text,
    primary key (header, value)
);

-- Delayed messages by task id (an ETA or countdown task is inserted with `eta` after its
-- `created_at`; a retry moves `eta` ahead too): what a revocation looks up to outlive the ETA.
-- Messages that run now are not in it, so enqueues of ordinary tasks pay nothing for it.
create index message_delayed_task on celeriac.message (task_id) where eta > created_at;

-- Messages to exchanges that are not queues: Celery's pidbox broadcasts (`celery.pidbox`, a
-- fanout), the replies to them (`reply.celery.pidbox`, routed by the reply queue's key) and
-- events (`celeryev`, a topic). Every reader keeps its own position (the last id it read) and
-- filters by exchange and routing key; nothing is consumed or locked. Rows live for a few
-- minutes: the rescuers prune them in batches.
--
-- Unlogged: what it carries is transient (as RabbitMQ's transient pidbox and event messages),
-- so it writes no WAL; a PostgreSQL crash empties it (commands in flight are lost, their
-- revocations are not: those live in `revoked`), and standbys do not have it. Its positions
-- come from a logged sequence, so they keep growing across a crash and readers' positions stay
-- valid. Payloads are stored uncompressed: a row of events is written once and read a few
-- times within minutes.
create sequence celeriac.broadcast_id;

create unlogged table celeriac.broadcast (
    id           bigint      primary key default nextval('celeriac.broadcast_id'),
    exchange     text        not null,
    routing_key  text        not null default '',
    -- The kombu envelope JSON, as for `message.payload`.
    payload      bytea       not null,
    published_at timestamptz not null default now()
);

alter table celeriac.broadcast alter column payload set storage external;

alter table celeriac.broadcast set (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_cost_delay = 0
);

create index broadcast_exchange on celeriac.broadcast (exchange, id);

-- One wake-up per statement on `celeriac_broadcast`, naming the exchanges as a JSON array.
create function celeriac.broadcast_notify() returns trigger
language plpgsql as $$
declare
    exchanges text;
begin
    select json_agg(distinct exchange)::text into exchanges from inserted;
    if exchanges is not null then
        if octet_length(exchanges) > 7900 then
            exchanges := '*';
        end if;
        perform pg_notify('celeriac_broadcast', exchanges);
    end if;
    return null;
end
$$;

create trigger broadcast_notify after insert on celeriac.broadcast
    referencing new table as inserted
    for each statement execute function celeriac.broadcast_notify();
