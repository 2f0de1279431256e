-- celeriac 0001: the message queue, dead letters and live workers.
-- Applied by `celeriac migrate` inside one transaction holding an advisory lock; the runner creates
-- schema `celeriac` and `celeriac.schema_migration` itself.

-- One row per deliverable Celery message. `payload` is the kombu envelope JSON exactly as the
-- producer wrote it; the other columns are extracted from it for the claim query.
create table celeriac.message (
    id            bigint      generated always as identity primary key,
    queue         text        not null,
    -- AMQP semantics: higher runs first (Redis is the inverse; see the README).
    priority      smallint    not null default 0,
    -- Not before this time; ETA/countdown tasks wait here, never in worker memory.
    eta           timestamptz not null default now(),
    expires       timestamptz,
    -- NULL when the producer's envelope could not be parsed; the worker dead-letters such rows.
    task_name     text,
    task_id       text,
    payload       bytea       not null,
    -- Number of claims; fences completion so a zombie cannot finish a newer attempt.
    attempt       integer     not null default 0,
    -- Times a lease expired while held (the worker died); bounded by the worker's max redeliveries.
    redeliveries  integer     not null default 0,
    redelivered   boolean     not null default false,
    leased_by     uuid,
    lease_expires timestamptz,
    created_at    timestamptz not null default now(),
    constraint message_lease_consistent check ((leased_by is null) = (lease_expires is null))
);

-- A queue table churns: every message is inserted, updated (claimed) and deleted. Vacuum it
-- after ~1% of it is dead instead of PostgreSQL's default 20%, without cost-based throttling,
-- so the claim index sheds the entries of finished messages quickly (autovacuum_naptime, a
-- server setting, still bounds how often: one minute by default).
alter table celeriac.message set (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.01,
    autovacuum_vacuum_cost_delay = 0
);

-- Serves exactly the claim query: ready rows of one queue in (priority desc, eta, id) order.
create index message_claim on celeriac.message (queue, priority desc, eta, id) where leased_by is null;
-- Leased rows by holder: the rescuer finds a dead worker's messages here. (Heartbeats renew by
-- row id, so they never walk this index's entries of rows already completed.)
create index message_leased on celeriac.message (leased_by, lease_expires) where leased_by is not null;

-- Makes the calling statement's transaction commit asynchronously (synchronous_commit=off for
-- that transaction only), like a RabbitMQ ack. Used in the WHERE clause of every state change
-- after enqueue (claim, complete, retry, release, dead-letter, rescue, lease renewal): losing
-- one to a server crash only redelivers a message. Enqueues stay synchronous.
create function celeriac.relaxed_commit() returns boolean
language sql volatile as $$ select set_config('synchronous_commit', 'off', true) is not null $$;

-- At most one wake-up per statement, naming the queues that got ready messages as a JSON array
-- of strings ('*' when that would not fit in a notification's 8000 bytes).
create function celeriac.message_notify() returns trigger
language plpgsql as $$
declare
    queues text;
begin
    select json_agg(distinct queue)::text into queues from inserted where eta <= now();
    if queues is not null then
        if octet_length(queues) > 7900 then
            queues := '*';
        end if;
        perform pg_notify('celeriac_message', queues);
    end if;
    return null;
end
$$;

create trigger message_notify after insert on celeriac.message
    referencing new table as inserted
    for each statement execute function celeriac.message_notify();

-- Messages that could not be decoded, were not accepted, named no registered task, were
-- rejected, or exhausted their redeliveries: kept with the reason and the original bytes.
create table celeriac.dead_letter (
    id            bigint      generated always as identity primary key,
    message_id    bigint,
    queue         text        not null,
    priority      smallint    not null default 0,
    task_name     text,
    task_id       text,
    payload       bytea       not null,
    -- undecodable | content_disallowed | not_registered | rejected | redeliveries_exhausted
    reason_code   text        not null,
    reason        text        not null,
    attempt       integer     not null default 0,
    redeliveries  integer     not null default 0,
    enqueued_at   timestamptz,
    failed_at     timestamptz not null default now()
);

create index dead_letter_queue on celeriac.dead_letter (queue, failed_at);

-- Live workers. A worker's heartbeat also renews the leases of the messages it holds; one whose
-- heartbeat is older than its lease is dead, and the rescuer frees its messages.
create table celeriac.worker (
    id            uuid        primary key,
    hostname      text        not null,
    pid           integer     not null,
    queues        text[]      not null,
    concurrency   integer     not null,
    lease_seconds float8      not null default 30,
    started_at   timestamptz not null default now(),
    heartbeat_at timestamptz not null default now()
);
