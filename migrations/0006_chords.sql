-- celeriac 0006: chords counted in the database.
--
-- Celery's database result backend counts nothing: its `apply_chord` publishes
-- `celery.chord_unlock`, which checks the header's results and retries every second until they
-- are all ready. Where the app's result table is on the queue database and a worker has put the
-- trigger `celeriac_chord_count` on it (`Store::chord_counting_install`, which also records the
-- worker's queues in `chord_counting_queue`), celeriac counts instead:
--
-- * a `celery.chord_unlock` message first published (retries 0) to one of those queues registers
--   its chord: one `chord_member` row per header task id, and the message is *parked* (its eta
--   moved past a safety interval); a retry of it (re-published, or re-scheduled in place) is
--   parked again while its chord counts, and never registers one (its members may be done);
-- * each member's first ready result row (SUCCESS, FAILURE, REVOKED) deletes its member row and
--   counts the chord down, in the transaction that stores the result;
-- * the result that takes it to zero releases the unlock (eta = now, with a wake-up), which then
--   runs once and finds every member ready.
--
-- No polling, whoever writes the results: Rust handlers, Celery's own code in pool children, or
-- Python Celery workers on the transport. The unlock itself stays Celery's (or celeriac's
-- built-in one), so the body is published once, with the unlock's completion. The safety
-- interval (the chord's age, between 60 s and an hour) only matters when a member's result never
-- reaches this database: the unlock then runs and checks as Celery's does. A released chord's row
-- stays a day, so a late retry of its unlock is not parked again.

create table celeriac.chord (
    -- The header group's id (the unlock's first argument).
    group_id    text        primary key,
    -- Header tasks whose ready result has not been stored yet.
    remaining   integer     not null,
    -- The parked `celery.chord_unlock` message.
    unlock_id   bigint,
    created_at  timestamptz not null default now(),
    -- When the last member's result released the unlock.
    released_at timestamptz
);
create index chord_created on celeriac.chord (created_at);

create table celeriac.chord_member (
    task_id  text not null,
    group_id text not null,
    primary key (task_id, group_id)
);
create index chord_member_group on celeriac.chord_member (group_id);

-- The queues of workers whose result table counts chords: only unlocks sent to these are parked
-- (another app on the same database, whose results live elsewhere, keeps Celery's polling).
create table celeriac.chord_counting_queue (
    queue      text        primary key,
    updated_at timestamptz not null default now()
);

-- The task ids of a header result tuple (`[[id, parent], children]`), a nested group's members
-- in its place.
create function celeriac.chord_leaf_ids(t jsonb) returns setof text
language plpgsql immutable as $$
begin
    if jsonb_typeof(t->1) = 'array' then
        return query select celeriac.chord_leaf_ids(c) from jsonb_array_elements(t->1) c;
    elsif jsonb_typeof(t->0->0) = 'string' then
        return next t->0->>0;
    end if;
end
$$;

-- The eta of the `celery.chord_unlock` message `unlock` (`payload`, asked to run at `due`): registers its chord
-- and parks it, or leaves it as asked.
create function celeriac.chord_unlock_eta(unlock bigint, queue text, payload bytea, due timestamptz)
returns timestamptz
language plpgsql as $$
declare
    envelope jsonb;
    body     jsonb;
    gid      text;
    counted  integer;
    found_chord celeriac.chord;
begin
    -- Parked only in the queues of workers whose result table counts chords.
    if not exists (select 1 from celeriac.chord_counting_queue q where q.queue = chord_unlock_eta.queue) then
        return due;
    end if;
    begin
        envelope := convert_from(payload, 'UTF8')::jsonb;
        if envelope->>'content-type' is distinct from 'application/json'
           or envelope->'headers' ? 'compression' then
            return due;
        end if;
        if envelope->'properties'->>'body_encoding' = 'base64' then
            body := convert_from(decode(envelope->>'body', 'base64'), 'UTF8')::jsonb;
        else
            body := (envelope->>'body')::jsonb;
        end if;
    exception when others then
        -- A body this cannot read: Celery's polling.
        return due;
    end;
    if jsonb_typeof(body) is distinct from 'array' then
        return due;
    end if;
    gid := body->0->>0;
    if gid is null or jsonb_typeof(body->1->'result') is distinct from 'array' then
        return due;
    end if;
    select * into found_chord from celeriac.chord where group_id = gid for update;
    if not found then
        -- Only a first publication registers: by a retry's time, members may be done already,
        -- and they would never be counted.
        if coalesce(envelope->'headers'->>'retries', '0') <> '0' then
            return due;
        end if;
        insert into celeriac.chord (group_id, remaining, unlock_id) values (gid, 0, unlock)
            on conflict (group_id) do nothing;
        if not found then
            return due;
        end if;
        with leaves as (
            select distinct celeriac.chord_leaf_ids(t) as task_id from jsonb_array_elements(body->1->'result') t
        ), added as (
            insert into celeriac.chord_member (task_id, group_id)
            select task_id, gid from leaves where task_id is not null
            on conflict do nothing
            returning 1
        )
        select count(*) into counted from added;
        if counted = 0 then
            delete from celeriac.chord where group_id = gid;
            return due;
        end if;
        update celeriac.chord set remaining = counted where group_id = gid;
        -- Old chords: released a day ago, or never completed in a week (their unlocks then check
        -- as Celery's do).
        with stale as (
            delete from celeriac.chord where group_id in (
                select group_id from celeriac.chord
                where created_at < now() - interval '1 day'
                  and (released_at is not null or created_at < now() - interval '7 days')
                limit 100
                for update skip locked)
            returning group_id)
        delete from celeriac.chord_member m using stale where m.group_id = stale.group_id;
        return greatest(due, now() + interval '60 seconds');
    end if;
    if found_chord.released_at is not null then
        return due;
    end if;
    update celeriac.chord set unlock_id = unlock where group_id = gid;
    return greatest(due,
        now() + least(greatest(interval '60 seconds', now() - found_chord.created_at), interval '1 hour'));
end
$$;

-- BEFORE INSERT / UPDATE OF eta of a `celery.chord_unlock` row.
create function celeriac.chord_unlock_park() returns trigger
language plpgsql as $$
begin
    new.eta := celeriac.chord_unlock_eta(new.id, new.queue, new.payload, new.eta);
    return new;
exception when others then
    -- Never refuse a message over this: the unlock then checks each second, as Celery's does.
    raise warning 'celeriac: chord % not counted in the database: %', new.task_id, sqlerrm;
    return new;
end
$$;

create trigger chord_unlock_park_insert before insert on celeriac.message
    for each row when (new.task_name = 'celery.chord_unlock')
    execute function celeriac.chord_unlock_park();
create trigger chord_unlock_park_update before update of eta on celeriac.message
    for each row when (new.task_name = 'celery.chord_unlock')
    execute function celeriac.chord_unlock_park();

-- AFTER INSERT / UPDATE OF status of a ready row in an app's result table (the trigger
-- `celeriac_chord_count`): count the member's chords down, and release each that reaches zero.
-- It runs as its owner, so an app whose role may write its result table but not celeriac's
-- tables keeps storing results (every name in it is schema-qualified).
create function celeriac.chord_member_ready() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
declare
    gid  text;
    left_over integer;
    q    text;
begin
    if not exists (select 1 from celeriac.chord_member where task_id = new.task_id) then
        return null;
    end if;
    -- Never fails the app's result write: a count missed here leaves the unlock to its safety
    -- interval.
    begin
    for gid in delete from celeriac.chord_member where task_id = new.task_id returning group_id loop
        left_over := null;
        update celeriac.chord set remaining = remaining - 1
            where group_id = gid and released_at is null
            returning remaining into left_over;
        if left_over = 0 then
            update celeriac.chord set released_at = now() where group_id = gid;
            for q in update celeriac.message m set eta = now()
                     from celeriac.chord c
                     where c.group_id = gid and m.id = c.unlock_id and m.leased_by is null and m.eta > now()
                     returning m.queue loop
                perform pg_notify('celeriac_message', json_build_array(q)::text);
            end loop;
        end if;
    end loop;
    exception when others then
        raise warning 'celeriac: result of % not counted for its chord: %', new.task_id, sqlerrm;
    end;
    return null;
end
$$;
-- Only the trigger calls it (it runs as its owner).
revoke execute on function celeriac.chord_member_ready() from public;
