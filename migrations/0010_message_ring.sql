-- celeriac 0010: the message table becomes a ring of partitions that are emptied by TRUNCATE.
--
-- Every message is inserted, updated (claimed) and deleted, so a queue table that autovacuum
-- alone looks after grows to about a naptime's worth of traffic (a minute: 197 MiB after 60 s
-- at 2,000 tasks/s), and its indexes never shrink again. So `celeriac.message` is now
-- partitioned by `slot`:
--
-- * three ring partitions (`message_0`..`message_2`): new messages go to the current one
--   (`message_ring.slot`, the default of `slot`);
-- * `message_delayed` (slot -1): messages due later than a minute, moved there out of a slot
--   about to be emptied, so a countdown does not hold a ring partition for its whole wait.
--
-- Any consumer's maintenance calls `celeriac.message_rotate` about once a second. Each pass
-- empties every other slot that all its messages have left with TRUNCATE (its heap and indexes
-- start from nothing), under an ACCESS EXCLUSIVE lock waited for at most 50 ms, after an
-- emptiness check made under that lock: a transaction that inserted into the slot and has not
-- committed holds a lock that makes the pass wait and try again later, so nothing is ever
-- truncated away. When the current slot has had enough new messages, or has been current long
-- enough with anything in it, the pass makes an emptied slot current. Rows that stay long
-- (running tasks, rate-limited rows, a parked chord unlock, a message due within a minute) keep
-- their slot from being emptied; new messages go round the others, and if no other slot is
-- empty, the current one takes them: the table is then only as bloated as autovacuum alone
-- leaves it, as before.
--
-- The same pass analyzes a partition that has grown well past its statistics (the current slot
-- fills from empty): the store's generic plans would otherwise keep scanning it as if empty.
--
-- Queries keep using `celeriac.message`; a row's id is still unique (one identity), the primary
-- key is (id, slot) because PostgreSQL requires the partition key in it.

alter table celeriac.message rename to message_unpartitioned;
alter sequence celeriac.message_id_seq rename to message_unpartitioned_id_seq;

create table celeriac.message_ring (
    one          boolean     primary key default true check (one),
    -- The slot new messages go to.
    slot         smallint    not null default 0,
    -- Ring partitions (message_0 .. message_{slots-1}).
    slots        smallint    not null default 3 check (slots between 2 and 32),
    rotated_at   timestamptz not null default now(),
    -- The identity's last value when the slot became current: what it has had since.
    rotated_id   bigint      not null default 0
);
insert into celeriac.message_ring default values;

create function celeriac.message_slot() returns smallint
language sql stable as $$ select slot from celeriac.message_ring $$;

create table celeriac.message (
    id            bigint      generated always as identity,
    queue         text        not null,
    priority      smallint    not null default 0,
    eta           timestamptz not null default now(),
    expires       timestamptz,
    task_name     text,
    task_id       text,
    payload       bytea       not null,
    attempt       integer     not null default 0,
    redeliveries  integer     not null default 0,
    redelivered   boolean     not null default false,
    leased_by     uuid,
    lease_expires timestamptz,
    created_at    timestamptz not null default now(),
    -- The partition: a ring slot (0 and up) or -1 (`message_delayed`).
    slot          smallint    not null default celeriac.message_slot(),
    constraint message_lease_consistent check ((leased_by is null) = (lease_expires is null))
) partition by list (slot);

create table celeriac.message_0 partition of celeriac.message for values in (0);
create table celeriac.message_1 partition of celeriac.message for values in (1);
create table celeriac.message_2 partition of celeriac.message for values in (2);
create table celeriac.message_delayed partition of celeriac.message for values in (-1);

-- Between rotations autovacuum still keeps each partition's free space reusable (0001's reasons).
alter table celeriac.message_0 set (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.01, autovacuum_vacuum_cost_delay = 0);
alter table celeriac.message_1 set (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.01, autovacuum_vacuum_cost_delay = 0);
alter table celeriac.message_2 set (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.01, autovacuum_vacuum_cost_delay = 0);
alter table celeriac.message_delayed set (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.01, autovacuum_vacuum_cost_delay = 0);

-- The messages of the old table keep their ids, in slot 0; new ids continue after them.
insert into celeriac.message (id, queue, priority, eta, expires, task_name, task_id, payload, attempt,
                              redeliveries, redelivered, leased_by, lease_expires, created_at, slot)
    overriding system value
    select id, queue, priority, eta, expires, task_name, task_id, payload, attempt,
           redeliveries, redelivered, leased_by, lease_expires, created_at, 0
    from celeriac.message_unpartitioned;
select setval('celeriac.message_id_seq', last_value, is_called) from celeriac.message_unpartitioned_id_seq;
update celeriac.message_ring set rotated_id = (
    select case when is_called then last_value else last_value - 1 end from celeriac.message_id_seq);
drop table celeriac.message_unpartitioned;

alter table celeriac.message add constraint message_pkey primary key (id, slot);
-- The indexes of 0001, 0002, 0004 and 0007, unchanged.
create index message_claim on celeriac.message (queue, priority desc, eta, id) where leased_by is null;
create index message_leased on celeriac.message (leased_by, lease_expires) where leased_by is not null;
create index message_claim_suspect on celeriac.message (queue, priority desc, eta, id)
    where leased_by is null and redeliveries > 0;
create index message_rate_limited on celeriac.message (task_name, queue, priority desc, eta, id)
    where leased_by = '00000000-0000-0000-0000-000000000000';
create index message_rate_limited_suspect on celeriac.message (task_name, queue, priority desc, eta, id)
    where leased_by = '00000000-0000-0000-0000-000000000000' and redeliveries > 0;
create index message_delayed_task on celeriac.message (task_id) where eta > created_at;

-- The triggers of 0001 and 0006, unchanged.
create trigger message_notify after insert on celeriac.message
    referencing new table as inserted
    for each statement execute function celeriac.message_notify();
create trigger chord_unlock_park_insert before insert on celeriac.message
    for each row when (new.task_name = 'celery.chord_unlock')
    execute function celeriac.chord_unlock_park();
create trigger chord_unlock_park_update before update of eta on celeriac.message
    for each row when (new.task_name = 'celery.chord_unlock')
    execute function celeriac.chord_unlock_park();

-- One pass of the ring (see the top of this file). Returns the slot it made current, or null
-- (no step due, no clean slot to step to, or another consumer's pass under way).
-- `fill`: step once the current slot has had this many new messages; `age`: or once it has been
-- current this long with anything in it.
create function celeriac.message_rotate(fill bigint, age interval) returns smallint
language plpgsql as $$
declare
    ring     celeriac.message_ring;
    issued   bigint;
    due      boolean;
    clean    smallint;
    candidate smallint;
    part     text;
    heap     bigint;
    live     bigint;
    occupied boolean;
begin
    select * into ring from celeriac.message_ring for update skip locked;
    if not found then
        return null; -- another consumer's pass
    end if;
    perform set_config('lock_timeout', '50ms', true);
    -- Statistics first. The store's connections keep generic plans, made with what the planner
    -- knew then: a plan made while a partition was empty scans it whole, so a partition that has
    -- grown well past what its statistics say (the current slot, message_delayed) is analyzed,
    -- which also makes every connection plan its statements again.
    foreach part in array array[format('celeriac.%I', 'message_' || ring.slot), 'celeriac.message_delayed'] loop
        if (select pg_relation_size(c.oid) / current_setting('block_size')::int > 2 * greatest(c.relpages, 0) + 8
            from pg_class c where c.oid = part::regclass) then
            begin
                execute format('analyze %s', part);
            exception when lock_not_available then
                null; -- autovacuum is at it
            end;
        end if;
    end loop;
    select case when is_called then last_value else last_value - 1 end into issued from celeriac.message_id_seq;
    due := issued - ring.rotated_id >= fill
        or (now() - ring.rotated_at >= age
            and pg_relation_size(format('celeriac.%I', 'message_' || ring.slot)::regclass) > 0);
    -- Every other slot, oldest first: empty it if every message has left it.
    for k in 1 .. ring.slots - 1 loop
        candidate := (ring.slot + k) % ring.slots;
        part := format('celeriac.%I', 'message_' || candidate);
        heap := pg_relation_size(part::regclass);
        if heap = 0 then
            clean := coalesce(clean, candidate); -- emptied already, nothing inserted since
            continue;
        end if;
        live := pg_stat_get_live_tuples(part::regclass);
        -- Messages due later than a minute leave the oldest slot for message_delayed once few are
        -- left in it (at most 10,000 a pass, those no one holds): claims never lock them, so
        -- moving them races with nothing but an operator's change to the same row. A chord
        -- unlock stays: the result store's trigger updates its row.
        if k = 1 and live <= 10000 then
            execute format(
                'update celeriac.message set slot = -1 where slot = %s and id in (
                     select id from %s where leased_by is null and eta > now() + interval ''1 minute''
                         and task_name is distinct from ''celery.chord_unlock''
                     limit 10000 for update skip locked)', candidate, part);
            live := greatest(live - 10000, 0);
        end if;
        -- Messages are left: the statistics say so (for a heap too big to read each pass), or a
        -- look without the lock finds one. The hot path never waits for a slot in use.
        continue when live > 0 and heap > 1048576;
        execute format('select exists (select from %s)', part) into occupied;
        continue when occupied;
        begin
            execute format('lock table %s in access exclusive mode', part);
            -- Under the lock every transaction that wrote to it has ended: this look is final.
            execute format('select exists (select from %s)', part) into occupied;
            if occupied then
                raise exception using errcode = 'object_in_use';
            end if;
            execute format('truncate %s', part);
            clean := coalesce(clean, candidate);
        exception when lock_not_available or object_in_use then
            null; -- busy or not empty: the next pass looks again
        end;
    end loop;
    if not due or clean is null then
        return null;
    end if;
    update celeriac.message_ring set slot = clean, rotated_at = now(), rotated_id = issued;
    return clean;
end
$$;
