//! The `worker` table: registration and heartbeats (which also renew leases).

use std::sync::LazyLock;

use tokio_postgres::types::Type;
use uuid::Uuid;

use crate::{sql::Session, Lease, Result, Store};

/// A worker process as registered in `celeriac.worker`.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerInfo {
    /// Unique id of this worker process; leases name it.
    pub id: Uuid,
    /// `-n/--hostname`, e.g. `celeriac@host`.
    pub hostname: String,
    /// OS process id.
    pub pid: i32,
    /// Queues it consumes.
    pub queues: Vec<String>,
    /// Concurrency.
    pub concurrency: i32,
    /// Lease length of its claims, in seconds: without a heartbeat for this long it is dead.
    pub lease_seconds: f64,
    /// Task types it rate-limits (see [`Store::worker_set_rate_limited`]).
    pub rate_limited: Vec<String>,
    /// A `celeriac worker`, or a kombu consumer (a Celery worker on celeriac's transport).
    pub kind: ConsumerKind,
}

/// What kind of consumer a worker row is (`celeriac.worker.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerKind {
    /// A `celeriac worker`: it answers Celery's `inspect scheduled` from the message table.
    Worker,
    /// A consumer on celeriac's kombu transport (a Celery worker, or any kombu app).
    Kombu,
}

impl ConsumerKind {
    /// As the column stores it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ConsumerKind::Worker => "worker",
            ConsumerKind::Kombu => "kombu",
        }
    }
}

/// An ETA message as Celery's `inspect scheduled` shows it (see [`Store::message_scheduled`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduledMessage {
    /// Its row id.
    pub id: i64,
    /// Its queue.
    pub queue: String,
    /// Its priority.
    pub priority: i16,
    /// When it is due.
    pub eta: chrono::DateTime<chrono::Utc>,
    /// The envelope.
    pub payload: Vec<u8>,
    /// Whether it was delivered before (a retry, or a lease that expired).
    pub redelivered: bool,
}

/// The worker row's new `healthy_since` at a heartbeat: unchanged while heartbeats keep coming,
/// now after a gap longer than the worker's lease (a new streak; see migration 0003).
const HEALTHY_SINCE: &str =
    "case when celeriac.worker.heartbeat_at < now() - make_interval(secs => celeriac.worker.lease_seconds)
         then now() else celeriac.worker.healthy_since end";

/// Heartbeat and lease renewal in one statement (see [`Store::worker_heartbeat`]).
static HEARTBEAT_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "with beat as (
                     insert into celeriac.worker (id, hostname, pid, queues, concurrency, lease_seconds, kind)
                     values ($1, $4, $5, $6, $7, $8, $9)
                     on conflict (id) do update
                     set heartbeat_at = now(), lease_seconds = excluded.lease_seconds, healthy_since = {HEALTHY_SINCE}
                 ), renewed as (
                     update celeriac.message set lease_expires = now() + make_interval(secs => $8)
                     where id = any(array(
                         select m.id from celeriac.message m
                         join unnest($2::int8[], $3::int4[]) as l(id, attempt) on m.id = l.id and m.attempt = l.attempt
                         where m.leased_by is not distinct from $1
                         for no key update of m skip locked
                     ))
                       and celeriac.relaxed_commit()
                     returning id
                 )
                 select array(select id from renewed)"
    )
});

/// A live worker as `celeriac inspect workers` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerRow {
    /// Its name.
    pub hostname: String,
    /// OS process id.
    pub pid: i32,
    /// Queues it consumes.
    pub queues: Vec<String>,
    /// Concurrency.
    pub concurrency: i32,
    /// When it registered.
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// Seconds since its last heartbeat.
    pub heartbeat_age: f64,
    /// Messages it holds leases on.
    pub held: i64,
}

impl Store {
    /// The registered workers, by name, with the messages each holds.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn worker_list(&self) -> Result<Vec<WorkerRow>> {
        let client = self.pool.get().await?;
        let rows = client
            .rows(
                self.pooler,
                "select w.hostname, w.pid, w.queues, w.concurrency, w.started_at,
                        extract(epoch from now() - w.heartbeat_at)::float8,
                        (select count(*) from celeriac.message m where m.leased_by = w.id)
                 from celeriac.worker w order by w.hostname, w.pid",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| WorkerRow {
                hostname: r.get(0),
                pid: r.get(1),
                queues: r.get(2),
                concurrency: r.get(3),
                started_at: r.get(4),
                heartbeat_age: r.get(5),
                held: r.get(6),
            })
            .collect())
    }

    /// Registers (or re-registers, after a reconnect) a worker.
    ///
    /// # Errors
    /// Connection errors; [`Error::SchemaMissing`] before `migrate`.
    pub async fn worker_register(&self, w: &WorkerInfo) -> Result<()> {
        let client = self.pool.get().await?;
        client
            .touch(
                self.pooler,
                &format!(
                    "insert into celeriac.worker (id, hostname, pid, queues, concurrency, lease_seconds, rate_limited, kind)
                 values ($1, $2, $3, $4, $5, $6, $7, $8)
                 on conflict (id) do update
                 set heartbeat_at = now(), healthy_since = {HEALTHY_SINCE}, rate_limited = excluded.rate_limited"
                ),
                &[
                    (&w.id, Type::UUID),
                    (&w.hostname, Type::TEXT),
                    (&w.pid, Type::INT4),
                    (&w.queues, Type::TEXT_ARRAY),
                    (&w.concurrency, Type::INT4),
                    (&w.lease_seconds, Type::FLOAT8),
                    (&w.rate_limited, Type::TEXT_ARRAY),
                    (&w.kind.as_str(), Type::TEXT),
                ],
            )
            .await?;
        Ok(())
    }

    /// Records a heartbeat of `worker` (re-registering it if its row is gone) and extends the
    /// given leases to `now + lease_seconds`, in one statement. Leases are renewed by row id and
    /// fenced by attempt and holder; rows locked at that moment (being completed, retried or
    /// released by this same worker) are skipped, never waited for. Returns the ids of the
    /// messages whose lease was renewed.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn worker_heartbeat(&self, worker: &WorkerInfo, leases: &[Lease]) -> Result<Vec<i64>> {
        let (ids, attempts) = crate::message::split(leases);
        let client = self.pool.get().await?;
        let row = client
            .row(
                self.pooler,
                &HEARTBEAT_SQL,
                &[
                    (&worker.id, Type::UUID),
                    (&ids, Type::INT8_ARRAY),
                    (&attempts, Type::INT4_ARRAY),
                    (&worker.hostname, Type::TEXT),
                    (&worker.pid, Type::INT4),
                    (&worker.queues, Type::TEXT_ARRAY),
                    (&worker.concurrency, Type::INT4),
                    (&worker.lease_seconds, Type::FLOAT8),
                    (&worker.kind.as_str(), Type::TEXT),
                ],
            )
            .await?;
        Ok(row.get(0))
    }

    /// The ETA messages `worker` shows for Celery's `inspect scheduled`: those of `queues` not
    /// yet due and not held, soonest first, at most `limit`, in the queues it answers for. A
    /// queue is answered for by its oldest live `celeriac worker` (by registration, then id), so
    /// a fleet shows each ETA message once; a worker not registered yet answers for all of its
    /// queues.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn message_scheduled(
        &self,
        worker: Uuid,
        queues: &[String],
        limit: i64,
    ) -> Result<Vec<ScheduledMessage>> {
        let client = self.pool.get().await?;
        // `eta > created_at` lets the plan read the partial index of delayed messages
        // (message_delayed_task, migration 0007): messages that run now are never scanned.
        let rows = client
            .rows(
                self.pooler,
                "with me as (select started_at, id from celeriac.worker where id = $1),
                 answered as (
                     select q from unnest($2::text[]) as q
                     where not exists (
                         select 1 from celeriac.worker w, me
                         where w.kind = 'worker' and q = any(w.queues)
                           and w.heartbeat_at > now() - make_interval(secs => w.lease_seconds)
                           and (w.started_at, w.id) < (me.started_at, me.id)))
                 select m.id, m.queue, m.priority, m.eta, m.payload, m.redelivered
                 from celeriac.message m
                 where m.queue in (select q from answered)
                   and m.eta > m.created_at and m.eta > now() and m.leased_by is null
                 order by m.eta, m.id
                 limit $3",
                &[(&worker, Type::UUID), (&queues, Type::TEXT_ARRAY), (&limit, Type::INT8)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| ScheduledMessage {
                id: r.get(0),
                queue: r.get(1),
                priority: r.get(2),
                eta: r.get(3),
                payload: r.get(4),
                redelivered: r.get(5),
            })
            .collect())
    }

    /// Records the task types `worker` rate-limits now: messages of those types that it parked
    /// wait while a live worker limits them (see [`Store::message_unpark_unlimited`]).
    ///
    /// # Errors
    /// Connection errors.
    pub async fn worker_set_rate_limited(&self, worker: Uuid, task_names: &[String]) -> Result<()> {
        let client = self.pool.get().await?;
        client
            .touch(
                self.pooler,
                "update celeriac.worker set rate_limited = $2 where id = $1",
                &[(&worker, Type::UUID), (&task_names, Type::TEXT_ARRAY)],
            )
            .await?;
        Ok(())
    }

    /// Records the queues `worker` consumes now (`add_consumer` / `cancel_consumer`), for
    /// `celeriac inspect workers`.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn worker_set_queues(&self, worker: Uuid, queues: &[String]) -> Result<()> {
        let client = self.pool.get().await?;
        client
            .touch(
                self.pooler,
                "update celeriac.worker set queues = $2 where id = $1",
                &[(&worker, Type::UUID), (&queues, Type::TEXT_ARRAY)],
            )
            .await?;
        Ok(())
    }

    /// Removes a worker's row (graceful shutdown).
    ///
    /// # Errors
    /// Connection errors.
    pub async fn worker_deregister(&self, id: Uuid) -> Result<()> {
        let client = self.pool.get().await?;
        client.touch(self.pooler, "delete from celeriac.worker where id = $1", &[(&id, Type::UUID)]).await?;
        Ok(())
    }

    /// Deletes worker rows whose last heartbeat is older than `seconds`. Returns how many.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn worker_prune(&self, seconds: f64) -> Result<u64> {
        let client = self.pool.get().await?;
        client
            .touch(
                self.pooler,
                "delete from celeriac.worker where heartbeat_at < now() - make_interval(secs => $1)",
                &[(&seconds, Type::FLOAT8)],
            )
            .await
    }
}
