-- celeriac 0004: rate limits.
--
-- A worker that claims a message whose task type it may not run soon (its rate limit has no
-- token for it within a second) *parks* it instead of holding it: the row stays in the database,
-- leased to nobody in particular (`leased_by` = the nil UUID, `lease_expires` = infinity), so it
-- leaves the claim indexes (`leased_by is null`) and the claims of every worker, of this version
-- and the previous one, go past it at full speed. Workers that limit the task type take parked
-- rows back, oldest first, only as fast as their limits let them run (`message_rate_limited`).
-- A rescuer returns to their queue the parked rows of a task type and queue that no live worker
-- consuming that queue limits any more (`worker.rate_limited`, `worker.queues`). The heartbeat and the rescuer never touch parked rows: their
-- lease never runs out and no worker has the nil id.
create index message_rate_limited on celeriac.message (task_name, queue, priority desc, eta, id)
    where leased_by = '00000000-0000-0000-0000-000000000000';
-- Parked suspects (see 0002): taken back one at a time, like ready ones.
create index message_rate_limited_suspect on celeriac.message (task_name, queue, priority desc, eta, id)
    where leased_by = '00000000-0000-0000-0000-000000000000' and redeliveries > 0;

-- The task types a worker rate-limits (per worker or fleet-wide) right now: a parked message
-- waits while one live worker limits its type.
alter table celeriac.worker add column rate_limited text[] not null default '{}';

-- Rate limits the database knows, by task name and scope:
-- * scope 'global': one token bucket for the whole fleet (`tokens`, refilled at the effective
--   rate since `refilled_at`), which workers take tokens from in batches;
-- * scope 'worker': Celery's own per-worker limit; the row holds the app's value (for
--   `celeriac rate-limit show`) and an operator's override that every worker applies.
-- `declared` is the app's value as the last worker to start with the app declared it;
-- `set_value` is the operator's (`celeriac rate-limit set`), which beats it until cleared. Both
-- are kept as written ("100/m") beside their rate in tokens per second; a rate of 0 is no limit.
create table celeriac.rate_limit (
    task_name           text        not null,
    scope               text        not null check (scope in ('global', 'worker')),
    declared            text,
    declared_per_second float8      check (declared_per_second >= 0),
    set_value           text,
    set_per_second      float8      check (set_per_second >= 0),
    tokens              float8      not null default 0,
    refilled_at         timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    primary key (task_name, scope)
);
