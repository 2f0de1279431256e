//! The `worker` table: registration and heartbeats (which also renew leases).

use uuid::Uuid;

use crate::{Error, Result, Store};

/// A worker process as registered in `celeriac.worker`.
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

impl Store {
    /// Registers (or re-registers, after a reconnect) a worker.
    ///
    /// # Errors
    /// Connection errors; [`Error::SchemaMissing`] before `migrate`.
    pub async fn worker_register(&self, w: &WorkerInfo) -> Result<()> {
        let client = self.pool.get().await?;
        client
            .execute(
                "insert into celeriac.worker (id, hostname, pid, queues, concurrency) values ($1, $2, $3, $4, $5)
                 on conflict (id) do update set heartbeat_at = now()",
                &[&w.id, &w.hostname, &w.pid, &w.queues, &w.concurrency],
            )
            .await
            .map_err(Error::from_pg)?;
        Ok(())
    }

    /// Records a heartbeat and extends every lease the worker holds to `now + lease_seconds`,
    /// in one statement. Returns the number of leases renewed.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn worker_heartbeat(&self, id: Uuid, lease_seconds: f64) -> Result<u64> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "with beat as (
                     insert into celeriac.worker (id, hostname, pid, queues, concurrency)
                     values ($1, '?', 0, '{}', 0)
                     on conflict (id) do update set heartbeat_at = now()
                 ), renewed as (
                     update celeriac.message set lease_expires = now() + make_interval(secs => $2)
                     where leased_by = $1
                     returning 1
                 )
                 select count(*) from renewed",
                &[&id, &lease_seconds],
            )
            .await
            .map_err(Error::from_pg)?;
        let n: i64 = row.get(0);
        Ok(n.unsigned_abs())
    }

    /// Removes a worker's row (graceful shutdown).
    ///
    /// # Errors
    /// Connection errors.
    pub async fn worker_deregister(&self, id: Uuid) -> Result<()> {
        let client = self.pool.get().await?;
        client.execute("delete from celeriac.worker where id = $1", &[&id]).await.map_err(Error::from_pg)?;
        Ok(())
    }

    /// Deletes worker rows whose last heartbeat is older than `seconds`. Returns how many.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn worker_prune(&self, seconds: f64) -> Result<u64> {
        let client = self.pool.get().await?;
        client
            .execute("delete from celeriac.worker where heartbeat_at < now() - make_interval(secs => $1)", &[&seconds])
            .await
            .map_err(Error::from_pg)
    }
}
