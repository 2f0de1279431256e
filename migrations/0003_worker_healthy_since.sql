-- celeriac 0003: each worker row records since when its heartbeats have been landing without a
-- gap longer than its lease (`healthy_since`), so a rescuer judges other workers by its own
-- health as the server sees it when the rescue runs, not as the rescuer saw it when it sent the
-- statement. The two differ behind a pooler: PgBouncer queues statements while it cannot reach
-- the server (15 s with its default `server_login_retry`), then runs them all at once, and a
-- rescue judged before the outage would free every live worker's leases. The heartbeat keeps
-- the column up to date; a worker that stops heartbeating for longer than its lease starts a new
-- streak when it comes back.
alter table celeriac.worker add column healthy_since timestamptz not null default now();
