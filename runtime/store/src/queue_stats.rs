//! Queue statistics: how many messages each queue has ready, delayed, leased and dead.

use tokio_postgres::types::Type;

use crate::{rate_limit::PARKED_SQL, sql::Session, Result, Store};

/// Counts for one queue.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueueStats {
    /// Queue name.
    pub queue: String,
    /// Not leased, eta passed: would be claimed now.
    pub ready: i64,
    /// Not leased, eta in the future (countdown/eta/retry backoff).
    pub delayed: i64,
    /// Claimed by a worker (running or prefetched).
    pub leased: i64,
    /// Waiting for a rate limit's token (parked, see `migrations/0004_rate_limits.sql`).
    pub rate_limited: i64,
    /// In `dead_letter`.
    pub dead_lettered: i64,
}

impl Store {
    /// Per-queue counts of ready, delayed, leased and dead-lettered messages, by queue name.
    ///
    /// # Errors
    /// Connection errors; [`Error::SchemaMissing`] before `migrate`.
    pub async fn queue_stats(&self) -> Result<Vec<QueueStats>> {
        let client = self.pool.get().await?;
        let rows = client
            .rows(
                self.pooler,
                &format!(
                    "with live as (
                     select queue,
                            count(*) filter (where leased_by is null and eta <= now()) as ready,
                            count(*) filter (where leased_by is null and eta > now()) as delayed,
                            count(*) filter (where leased_by is not null and leased_by <> {PARKED_SQL}) as leased,
                            count(*) filter (where leased_by = {PARKED_SQL}) as parked
                     from celeriac.message group by queue
                 ), dead as (
                     select queue, count(*) as dead from celeriac.dead_letter group by queue
                 )
                 select coalesce(l.queue, d.queue), coalesce(l.ready, 0), coalesce(l.delayed, 0),
                        coalesce(l.leased, 0), coalesce(d.dead, 0), coalesce(l.parked, 0)
                 from live l full join dead d on d.queue = l.queue
                 order by 1"
                ),
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| QueueStats {
                queue: r.get(0),
                ready: r.get(1),
                delayed: r.get(2),
                leased: r.get(3),
                dead_lettered: r.get(4),
                rate_limited: r.get(5),
            })
            .collect())
    }

    /// Per queue with ready messages, the age in seconds of the oldest one (how long the
    /// queue has kept work waiting).
    ///
    /// # Errors
    /// Connection errors.
    pub async fn queue_oldest_ready(&self) -> Result<Vec<(String, f64)>> {
        let client = self.pool.get().await?;
        let rows = client
            .rows(
                self.pooler,
                "select queue, extract(epoch from now() - min(eta))::float8 from celeriac.message
                 where leased_by is null and eta <= now() group by queue order by 1",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Number of rows in `message` (all states).
    ///
    /// # Errors
    /// Connection errors.
    pub async fn message_count(&self) -> Result<i64> {
        let client = self.pool.get().await?;
        Ok(client.row(self.pooler, "select count(*) from celeriac.message", &[]).await?.get(0))
    }

    /// How many messages of `queue` are ready to be claimed now (not leased, eta passed).
    ///
    /// # Errors
    /// Connection errors.
    pub async fn message_ready_count(&self, queue: &str) -> Result<i64> {
        let client = self.pool.get().await?;
        let row = client
            .row(
                self.pooler,
                "select count(*) from celeriac.message where queue = $1 and leased_by is null and eta <= now()",
                &[(&queue, Type::TEXT)],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Vacuums and analyzes the message table now (what autovacuum does on its own schedule):
    /// benchmarks call it so that runs they compare start from the same table state.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn message_vacuum(&self) -> Result<()> {
        let client = self.pool.get().await?;
        client.touch(self.pooler, "vacuum (analyze) celeriac.message", &[]).await?;
        Ok(())
    }
}
