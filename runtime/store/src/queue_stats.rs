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

    /// Vacuums the message table (`VACUUM (SKIP_LOCKED)`) when the server's statistics count at
    /// least `min_dead` dead rows in it, and at least a quarter as many as live ones; returns
    /// the dead rows counted when it did. Autovacuum looks at a table at most once per
    /// `autovacuum_naptime` (a server setting, one minute by default), and a queue draining
    /// 20,000 messages a second leaves over a gigabyte of dead rows (each message's insert and its
    /// claim write its envelope) in that minute; vacuuming as soon as they pass `min_dead` keeps
    /// the table about that many rows big instead, and it stops growing once vacuum has made
    /// room (inserts reuse it). Does nothing when this role may not vacuum the table (not its
    /// owner, the database's owner or a superuser: VACUUM would only warn), or when another
    /// vacuum of it (autovacuum's, another consumer's) is running. The look goes through the
    /// pool; the vacuum runs on a connection of its own.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn message_vacuum_when_dead(&self, min_dead: i64) -> Result<Option<i64>> {
        let client = self.pool.get().await?;
        let row = client.row(self.pooler, VACUUM_DUE_SQL, &[(&min_dead, Type::INT8)]).await?;
        let (due, dead): (bool, i64) = (row.get(0), row.get(1));
        drop(client);
        if !due {
            return Ok(None);
        }
        // On a connection of its own: a vacuum takes a while and the pool's are for messages.
        let (client, connection) = self.pg_config.connect(tokio_postgres::NoTls).await?;
        let driver = tokio::spawn(connection);
        let result = client.batch_execute("vacuum (skip_locked) celeriac.message").await;
        drop(client);
        let _ = driver.await;
        result?;
        Ok(Some(dead))
    }

    /// Rebuilds, with `REINDEX INDEX CONCURRENTLY`, each index of the message table that has
    /// grown past `min_bytes` and past the table's own heap while the table holds few messages
    /// (fewer than `few_rows` live ones): VACUUM makes the space of finished messages reusable
    /// but never gives an index's pages back, so after a burst (1,000,000 messages drained left
    /// 100 MB of indexes over an empty table) they stay that big. An index entry is a few
    /// dozen bytes where its message is about a kilobyte, so an index bigger than the heap is
    /// bloated; under a steady load, where vacuum keeps the index's pages in use, the heap
    /// stays bigger and nothing is rebuilt over and over. Rebuilding does not block enqueues or claims. Runs on a
    /// connection of its own (outside any transaction, as `CONCURRENTLY` requires), only while
    /// it holds a session advisory lock, so one consumer at a time rebuilds; first it drops the
    /// invalid leftovers of a rebuild that was interrupted. Returns the names of the indexes
    /// rebuilt; none behind a transaction-mode pooler (the lock is session state).
    ///
    /// # Errors
    /// Connection errors, or the rebuild's own (the next call drops what it left).
    pub async fn message_reindex_bloated(&self, min_bytes: i64, few_rows: i64) -> Result<Vec<String>> {
        if self.pooler == crate::Pooler::Transaction {
            return Ok(Vec::new());
        }
        // A look through the pool first: most minutes there is nothing to do, and no
        // connection is opened for it.
        let client = self.pool.get().await?;
        let due: bool = client
            .row(
                self.pooler,
                &format!("select exists ({BLOATED_INDEXES_SQL}) or exists ({LEFTOVER_INDEXES_SQL})"),
                &[(&min_bytes, Type::INT8), (&few_rows, Type::INT8)],
            )
            .await?
            .get(0);
        drop(client);
        if !due {
            return Ok(Vec::new());
        }
        let (client, connection) = self.pg_config.connect(tokio_postgres::NoTls).await?;
        let driver = tokio::spawn(connection);
        let result = reindex_bloated(&client, min_bytes, few_rows).await;
        drop(client);
        let _ = driver.await;
        result
    }
}

/// Whether the message table is due a vacuum by [`Store::message_vacuum_when_dead`] (at least
/// `$1` dead rows, at least a quarter of the live ones, and a role allowed to vacuum it), and its
/// dead rows.
const VACUUM_DUE_SQL: &str = "
    select pg_stat_get_dead_tuples(c.oid) >= greatest($1, pg_stat_get_live_tuples(c.oid) / 4)
           and (pg_has_role(c.relowner, 'USAGE') or pg_has_role(d.datdba, 'USAGE')
                or (select rolsuper from pg_roles where rolname = current_user)),
           pg_stat_get_dead_tuples(c.oid)
    from pg_class c, pg_database d
    where c.oid = 'celeriac.message'::regclass and d.datname = current_database()";

/// A fixed advisory-lock key for the message table's index rebuilds ("reindex!" in ASCII).
const REINDEX_LOCK_KEY: i64 = 0x7265_696e_6465_7821;

/// The valid message-table indexes bigger than `$1` bytes and than the table's heap while fewer
/// than `$2` messages are live, by the server's statistics and by the table's last vacuum or
/// analyze both (statistics are reset by a crash: a backlog they miss is not rebuilt under),
/// biggest first; quoted names.
const BLOATED_INDEXES_SQL: &str = "
    select format('%I.%I', n.nspname, c.relname) from pg_index i
    join pg_class c on c.oid = i.indexrelid join pg_namespace n on n.oid = c.relnamespace
    join pg_class t on t.oid = i.indrelid
    where i.indrelid = 'celeriac.message'::regclass and i.indisvalid
      and pg_relation_size(c.oid) > greatest($1, pg_relation_size(t.oid))
      and pg_stat_get_live_tuples(t.oid) < $2 and t.reltuples < $2
    order by pg_relation_size(c.oid) desc";

/// What an interrupted `REINDEX CONCURRENTLY` of the message table left: invalid `*_ccnew`
/// indexes; quoted names.
const LEFTOVER_INDEXES_SQL: &str = "
    select format('%I.%I', n.nspname, c.relname) from pg_index i
    join pg_class c on c.oid = i.indexrelid join pg_namespace n on n.oid = c.relnamespace
    where i.indrelid = 'celeriac.message'::regclass and not i.indisvalid and c.relname like '%\\_ccnew%'";

async fn reindex_bloated(client: &tokio_postgres::Client, min_bytes: i64, few_rows: i64) -> Result<Vec<String>> {
    let locked: bool = client.query_one("select pg_try_advisory_lock($1)", &[&REINDEX_LOCK_KEY]).await?.get(0);
    if !locked {
        return Ok(Vec::new());
    }
    let rebuilt = reindex_locked(client, min_bytes, few_rows).await;
    client.execute("select pg_advisory_unlock($1)", &[&REINDEX_LOCK_KEY]).await?;
    rebuilt
}

async fn reindex_locked(client: &tokio_postgres::Client, min_bytes: i64, few_rows: i64) -> Result<Vec<String>> {
    // A rebuild bounded in time: one that waits longer (on a long transaction) is cancelled
    // and its leftover dropped next time.
    client.batch_execute("set statement_timeout = '10min'").await?;
    let leftovers = client.query(LEFTOVER_INDEXES_SQL, &[]).await?;
    for row in leftovers {
        let name: String = row.get(0);
        client.batch_execute(&format!("drop index concurrently if exists {name}")).await?;
    }
    let bloated = client.query(BLOATED_INDEXES_SQL, &[&min_bytes, &few_rows]).await?;
    let mut rebuilt = Vec::new();
    for row in bloated {
        let name: String = row.get(0);
        // The name comes from the catalog, quoted by format('%I').
        client.batch_execute(&format!("reindex index concurrently {name}")).await?;
        tracing::info!(index = %name, "rebuilt a bloated index of the message table");
        rebuilt.push(name);
    }
    Ok(rebuilt)
}
