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
                     insert into celeriac.worker (id, hostname, pid, queues, concurrency, lease_seconds)
                     values ($1, $4, $5, $6, $7, $8)
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
                    "insert into celeriac.worker (id, hostname, pid, queues, concurrency, lease_seconds, rate_limited)
                 values ($1, $2, $3, $4, $5, $6, $7)
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
                ],
            )
            .await?;
        Ok(row.get(0))
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
