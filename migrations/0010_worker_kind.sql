-- celeriac 0010: what kind of consumer each worker row is.
-- 'worker': a `celeriac worker`; 'kombu': a Celery worker (or any kombu consumer) on celeriac's
-- kombu transport. ETA messages wait in the message table, never in a worker's memory, so
-- Celery's `inspect scheduled` is answered from the table: for each queue by its oldest live
-- celeriac worker (a kombu consumer's Celery answers from its own memory, which holds none).
alter table celeriac.worker add column kind text not null default 'worker'
    constraint worker_kind check (kind in ('worker', 'kombu'));
