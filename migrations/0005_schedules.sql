-- celeriac 0005: periodic schedules (the Beat replacement), their fire ledger and the leader lease.
--
-- Correctness comes from the schedule row, not from the leader: a tick locks the due rows it
-- owns (skip locked), records each (schedule, slot) in schedule_fire (unique on the pair),
-- inserts the Celery message and advances next_run_at, all in one transaction fenced by the
-- lease term. See docs/beat.md.

create table celeriac.schedule (
    id                bigint      generated always as identity primary key,
    -- The Beat entry's key (beat_schedule) or django-celery-beat's PeriodicTask.name.
    name              text        not null unique,
    task              text        not null,
    args              jsonb       not null default '[]',
    kwargs            jsonb       not null default '{}',
    -- apply_async options of every fire: queue, exchange, routing_key, priority, expires,
    -- headers, time_limit, soft_time_limit, countdown, ignore_result, shadow.
    options           jsonb       not null default '{}',
    kind              text        not null check (kind in ('crontab', 'interval', 'clocked', 'solar')),
    -- crontab: Celery's five fields as given (minute, hour, day_of_week, day_of_month, month_of_year).
    crontab           text[]      check (crontab is null or (cardinality(crontab) = 5 and array_position(crontab, null) is null)),
    -- interval: seconds between slots; relative = slots on the interval's resolution (Celery's
    -- schedule(relative=True)).
    every_seconds     float8      check (every_seconds is null or (every_seconds >= 0.001 and every_seconds < 3.2e9)),
    relative          boolean     not null default false,
    -- clocked: the one instant it fires.
    clocked_at        timestamptz,
    -- solar: event, latitude, longitude (kept for Beat; celeriac does not fire solar schedules).
    solar             jsonb,
    -- IANA zone the crontab is evaluated in.
    tz                text        not null default 'UTC',
    start_at          timestamptz,
    end_at            timestamptz,
    one_off           boolean     not null default false,
    -- Part of the schedule's definition: false when removed from the app's code, invalid, or done.
    enabled           boolean     not null default true,
    disabled_reason   text,
    -- Operator state that survives syncs from the app's code.
    paused            boolean     not null default false,
    paused_reason     text,
    -- Who fires it: Celery Beat, or celeriac's tick. owner_pin overrides the ramp.
    owner             text        not null default 'celeriac' check (owner in ('beat', 'celeriac')),
    owner_pin         text        check (owner_pin in ('beat', 'celeriac')),
    -- Stable bucket of the name (0-99) the ramp percentage compares with; computed by celeriac.
    ramp_bucket       smallint    not null check (ramp_bucket between 0 and 99),
    owner_changed_at  timestamptz,
    -- Where the definition comes from: 'app:<the Celery app's main name>' (its code, synced at
    -- start), 'manual' (the operator), 'django' (django-celery-beat's tables).
    source            text        not null default 'manual'
                                  check (source in ('manual', 'django') or source like 'app:%'),
    -- Missed slots: latest (Beat's: at most one coalesced fire), skip, all (within the window, capped).
    catchup           text        not null default 'latest' check (catchup in ('skip', 'latest', 'all')),
    catchup_window_seconds float8 check (catchup_window_seconds is null
                                         or (catchup_window_seconds > 0 and catchup_window_seconds < 3.2e9)),
    catchup_max       integer     not null default 100 check (catchup_max between 1 and 100000),
    -- allow (Beat's) or skip a slot while the previous fire is still queued or running.
    overlap           text        not null default 'allow' check (overlap in ('allow', 'skip')),
    -- NULL: the next tick records a baseline (computes the next slot after now) and fires nothing.
    next_run_at       timestamptz,
    last_slot_at      timestamptz,
    last_run_at       timestamptz,
    last_task_id      text,
    last_message_id   bigint,
    total_run_count   bigint      not null default 0,
    -- When Beat last sent it (recorded by celeriac's Beat scheduler classes).
    last_beat_send_at timestamptz,
    -- Set when the schedule moves back to Beat: celeriac's Beat scheduler classes send nothing
    -- before this (the slot celeriac fired last is not sent again by a Beat that was due too).
    beat_from         timestamptz,
    spec_version      integer     not null default 0,
    created_at        timestamptz not null default now(),
    updated_at        timestamptz not null default now(),
    -- Instants chrono (and Python) can represent: no infinities, years 1 to 9999.
    constraint schedule_times check (
        coalesce(start_at between '0001-01-01' and '9999-12-31', true)
        and coalesce(end_at between '0001-01-01' and '9999-12-31', true)
        and coalesce(clocked_at between '0001-01-01' and '9999-12-31', true)
        and coalesce(next_run_at between '0001-01-01' and '9999-12-31', true)
        and coalesce(beat_from between '0001-01-01' and '9999-12-31', true)
    ),
    constraint schedule_spec check (
        (kind = 'crontab' and crontab is not null)
        or (kind = 'interval' and every_seconds is not null)
        or (kind = 'clocked' and clocked_at is not null)
        or (kind = 'solar' and solar is not null)
    )
);

-- The tick's query: due rows celeriac fires.
create index schedule_due on celeriac.schedule (next_run_at nulls first, id)
    where owner = 'celeriac' and enabled and not paused and kind <> 'solar';

-- An edit of what or when a schedule fires, a re-enable or a resume re-baselines it: the next
-- tick computes the next slot after now and fires nothing, so an edit never fires a missed slot
-- at once (django-celery-beat #683, #537). Other updates keep next_run_at as written.
create function celeriac.schedule_rebaseline() returns trigger
language plpgsql as $$
begin
    if (new.kind, new.crontab, new.every_seconds, new.relative, new.clocked_at, new.tz, new.start_at)
           is distinct from
       (old.kind, old.crontab, old.every_seconds, old.relative, old.clocked_at, old.tz, old.start_at)
       or (new.enabled and not old.enabled)
       or (old.paused and not new.paused) then
        new.next_run_at := null;
        new.spec_version := old.spec_version + 1;
    end if;
    new.updated_at := now();
    return new;
end
$$;

create trigger schedule_rebaseline before update on celeriac.schedule
    for each row execute function celeriac.schedule_rebaseline();

-- One row per (schedule, slot) fired: a second fire of a slot is refused here whatever happens
-- to leaders and clocks. Pruned after a week by the tick.
create table celeriac.schedule_fire (
    schedule_id bigint      not null references celeriac.schedule on delete cascade,
    slot_at     timestamptz not null,
    task_id     text        not null,
    -- Who fired it: the leader's term, or 0 for run-now.
    term        bigint      not null,
    fired_at    timestamptz not null default now(),
    primary key (schedule_id, slot_at)
);

create index schedule_fire_fired_at on celeriac.schedule_fire (fired_at);

-- Leases of singleton roles (the scheduler): one row per role, an increasing term per new holder.
-- Holders are processes (a random id per process), never host names.
create table celeriac.lease (
    name        text        primary key,
    holder      uuid        not null,
    holder_name text        not null,
    term        bigint      not null,
    acquired_at timestamptz not null default now(),
    expires_at  timestamptz not null
);

-- The ramp: the share of schedules (by ramp_bucket) celeriac owns.
create table celeriac.schedule_ramp (
    id         integer     primary key check (id = 1),
    percent    smallint    not null check (percent between 0 and 100),
    updated_at timestamptz not null default now()
);
