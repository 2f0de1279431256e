//! Revocations (`revoked`, `revoked_stamp`) and the `broadcast` table that carries Celery's
//! remote control, its replies and events between processes (see
//! `migrations/0007_control.sql`).

use std::time::Duration;

use tokio_postgres::types::Type;

use crate::{message::pg_text, sql::Session, Result, Store};

/// What a revoke records, besides the broadcast that announces it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Revocation {
    /// Task ids to revoke.
    pub task_ids: Vec<String>,
    /// Stamped headers to revoke by (`revoke_by_stamped_headers`): `(stamp, value)` pairs.
    pub stamps: Vec<(String, String)>,
    /// Kill the task if it is running.
    pub terminate: bool,
    /// The signal to kill it with (a name such as `SIGTERM`, or a number).
    pub signal: Option<String>,
    /// How long the revocation lives (after the message's ETA, for a message queued further
    /// ahead): Celery's `REVOKE_EXPIRES`, 3 hours, by default.
    pub expires: Duration,
}

/// Celery's `REVOKE_EXPIRES` (`CELERY_WORKER_REVOKE_EXPIRES`): how long a revocation lives.
pub const REVOKE_EXPIRES: Duration = Duration::from_secs(10_800);
/// Celery's `REVOKES_MAX` (`CELERY_WORKER_REVOKES_MAX`): revocations kept at most.
pub const REVOKES_MAX: i64 = 50_000;

/// A row of `broadcast`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BroadcastMessage {
    /// Its position: readers ask for the rows after the last one they read.
    pub id: i64,
    /// The exchange it was published to.
    pub exchange: String,
    /// Its routing key.
    pub routing_key: String,
    /// The kombu envelope JSON.
    pub payload: Vec<u8>,
}

/// A live revocation by stamped header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedStamp {
    /// The stamp's name.
    pub header: String,
    /// The revoked value.
    pub value: String,
    /// Whether running tasks are killed.
    pub terminate: bool,
    /// The signal they are killed with.
    pub signal: Option<String>,
}

/// A live revocation by task id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedTask {
    /// The task id.
    pub task_id: String,
    /// Whether it is killed if running.
    pub terminate: bool,
    /// The signal it is killed with.
    pub signal: Option<String>,
}

/// Records revocations (ids and stamps) and publishes one broadcast row, in one statement.
const PUBLISH_SQL: &str = "
with ids as (
    insert into celeriac.revoked as r (task_id, expires_at, terminate, signal)
    select u.id, greatest(now(), coalesce(d.eta, now())) + make_interval(secs => $5), $6, $7
    from unnest($4::text[]) as u(id)
    left join lateral (
        select max(m.eta) as eta from celeriac.message m where m.task_id = u.id and m.eta > m.created_at
    ) d on true
    on conflict (task_id) do update
    set revoked_at = now(),
        expires_at = greatest(r.expires_at, excluded.expires_at),
        terminate = r.terminate or excluded.terminate,
        signal = coalesce(excluded.signal, r.signal)
    returning 1
), stamps as (
    insert into celeriac.revoked_stamp as s (header, value, expires_at, terminate, signal)
    select h, v, now() + make_interval(secs => $5), $6, $7
    from unnest($8::text[], $9::text[]) as u(h, v)
    on conflict (header, value) do update
    set revoked_at = now(),
        expires_at = greatest(s.expires_at, excluded.expires_at),
        terminate = s.terminate or excluded.terminate,
        signal = coalesce(excluded.signal, s.signal)
    returning 1
)
insert into celeriac.broadcast (exchange, routing_key, payload) values ($1, $2, $3) returning id";

/// Revocations recorded at once from which `celeriac.revoked` is analyzed straight away.
const BULK_REVOKE: usize = 1000;

/// After a bulk revoke, analyzes `celeriac.revoked`, so the claim's revocation probe is
/// planned on its real size (not on statistics from when it was nearly empty, with which
/// PostgreSQL scans it whole for every claim) before autovacuum gets to it. A role that may
/// not analyze it only loses that (logged).
async fn analyze_after_bulk_revoke(client: &deadpool_postgres::Object, pooler: crate::Pooler, revoked: usize) {
    if revoked < BULK_REVOKE {
        return;
    }
    if let Err(e) = client.touch(pooler, "analyze celeriac.revoked", &[]).await {
        tracing::debug!("cannot analyze celeriac.revoked after a bulk revoke: {e}");
    }
}

impl Store {
    /// Publishes `payload` (a kombu envelope) to `exchange` with `routing_key`, and records
    /// `revocation` in the same statement: every reader of that exchange sees the message once,
    /// and the revocation holds even for workers that never read it.
    ///
    /// # Errors
    /// Connection errors; nothing is published or recorded then.
    pub async fn broadcast_publish(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        revocation: Option<&Revocation>,
    ) -> Result<i64> {
        let client = self.pool.get().await?;
        let empty = Revocation::default();
        let r = revocation.unwrap_or(&empty);
        let mut ids: Vec<&str> = r.task_ids.iter().map(String::as_str).collect();
        ids.sort_unstable();
        ids.dedup();
        let ids: Vec<_> = ids.into_iter().map(pg_text).collect();
        let mut stamps: Vec<(&str, &str)> = r.stamps.iter().map(|(h, v)| (h.as_str(), v.as_str())).collect();
        stamps.sort_unstable();
        stamps.dedup();
        let headers: Vec<_> = stamps.iter().map(|(h, _)| pg_text(h)).collect();
        let values: Vec<_> = stamps.iter().map(|(_, v)| pg_text(v)).collect();
        let secs = r.expires.as_secs_f64();
        let (exchange, routing_key) = (pg_text(exchange), pg_text(routing_key));
        let signal = r.signal.as_deref().map(pg_text);
        let params = [
            (&exchange as _, Type::TEXT),
            (&routing_key as _, Type::TEXT),
            (&payload as _, Type::BYTEA),
            (&ids as _, Type::TEXT_ARRAY),
            (&secs as _, Type::FLOAT8),
            (&r.terminate as _, Type::BOOL),
            (&signal as _, Type::TEXT),
            (&headers as _, Type::TEXT_ARRAY),
            (&values as _, Type::TEXT_ARRAY),
        ];
        let position = client.row(self.pooler, PUBLISH_SQL, &params).await?.get(0);
        analyze_after_bulk_revoke(&client, self.pooler, ids.len()).await;
        Ok(position)
    }

    /// Publishes many messages (events) in one statement.
    ///
    /// # Errors
    /// Connection errors; nothing is published then.
    pub async fn broadcast_publish_many(&self, messages: &[(String, String, Vec<u8>)]) -> Result<u64> {
        if messages.is_empty() {
            return Ok(0);
        }
        let client = self.pool.get().await?;
        let exchanges: Vec<_> = messages.iter().map(|(e, _, _)| pg_text(e)).collect();
        let keys: Vec<_> = messages.iter().map(|(_, k, _)| pg_text(k)).collect();
        let payloads: Vec<&[u8]> = messages.iter().map(|(_, _, p)| p.as_slice()).collect();
        client
            .touch(
                self.pooler,
                "insert into celeriac.broadcast (exchange, routing_key, payload)
                 select e, k, p from unnest($1::text[], $2::text[], $3::bytea[]) as u(e, k, p)
                 where celeriac.relaxed_commit()",
                &[(&exchanges, Type::TEXT_ARRAY), (&keys, Type::TEXT_ARRAY), (&payloads, Type::BYTEA_ARRAY)],
            )
            .await
    }

    /// The messages of `exchanges` after position `after`, oldest first, at most `limit`.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn broadcast_read(&self, exchanges: &[String], after: i64, limit: i64) -> Result<Vec<BroadcastMessage>> {
        let client = self.pool.get().await?;
        let rows = client
            .rows(
                self.pooler,
                "select b.id, b.exchange, b.routing_key, b.payload
                 from unnest($1::text[]) as x(name)
                 cross join lateral (
                     select id, exchange, routing_key, payload from celeriac.broadcast
                     where exchange = x.name and id > $2 order by id limit $3
                 ) b
                 order by b.id limit $3",
                &[(&exchanges, Type::TEXT_ARRAY), (&after, Type::INT8), (&limit, Type::INT8)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| BroadcastMessage { id: r.get(0), exchange: r.get(1), routing_key: r.get(2), payload: r.get(3) })
            .collect())
    }

    /// Deletes every revocation (a benchmark's or a test's reset).
    ///
    /// # Errors
    /// Connection errors.
    pub async fn revoked_clear(&self) -> Result<u64> {
        let client = self.pool.get().await?;
        client.touch(self.pooler, "delete from celeriac.revoked", &[]).await
    }

    /// The position of the newest message: a new reader starts after it.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn broadcast_head(&self) -> Result<i64> {
        let client = self.pool.get().await?;
        Ok(client.row(self.pooler, "select coalesce(max(id), 0) from celeriac.broadcast", &[]).await?.get(0))
    }

    /// Deletes up to `batch` messages published more than `retention` ago. Returns how many.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn broadcast_prune(&self, retention: Duration, batch: i64) -> Result<u64> {
        let client = self.pool.get().await?;
        let secs = retention.as_secs_f64();
        client
            .touch(
                self.pooler,
                // The oldest rows by id, then those of them old enough: the scan stops after
                // `$2` rows however many recent ones the table holds.
                "delete from celeriac.broadcast where id = any(array(
                     select id from (select id, published_at from celeriac.broadcast order by id limit $2) oldest
                     where published_at < now() - make_interval(secs => $1)))",
                &[(&secs, Type::FLOAT8), (&batch, Type::INT8)],
            )
            .await
    }

    /// Records a revocation without a broadcast (a database-only revoke). Prefer
    /// [`Store::broadcast_publish`], which also tells running workers.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn revoked_insert(&self, revocation: &Revocation) -> Result<()> {
        let client = self.pool.get().await?;
        let mut ids: Vec<&str> = revocation.task_ids.iter().map(String::as_str).collect();
        ids.sort_unstable();
        ids.dedup();
        let ids: Vec<_> = ids.into_iter().map(pg_text).collect();
        let secs = revocation.expires.as_secs_f64();
        let signal = revocation.signal.as_deref().map(pg_text);
        client
            .touch(
                self.pooler,
                "insert into celeriac.revoked as r (task_id, expires_at, terminate, signal)
                 select u.id, now() + make_interval(secs => $2), $3, $4 from unnest($1::text[]) as u(id)
                 on conflict (task_id) do update
                 set revoked_at = now(), expires_at = greatest(r.expires_at, excluded.expires_at),
                     terminate = r.terminate or excluded.terminate, signal = coalesce(excluded.signal, r.signal)",
                &[
                    (&ids, Type::TEXT_ARRAY),
                    (&secs, Type::FLOAT8),
                    (&revocation.terminate, Type::BOOL),
                    (&signal, Type::TEXT),
                ],
            )
            .await?;
        analyze_after_bulk_revoke(&client, self.pooler, ids.len()).await;
        Ok(())
    }

    /// Live revocations by task id, newest first, at most `limit`.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn revoked_list(&self, limit: i64) -> Result<Vec<RevokedTask>> {
        let client = self.pool.get().await?;
        let rows = client
            .rows(
                self.pooler,
                "select task_id, terminate, signal from celeriac.revoked where expires_at > now()
                 order by revoked_at desc limit $1",
                &[(&limit, Type::INT8)],
            )
            .await?;
        Ok(rows.iter().map(|r| RevokedTask { task_id: r.get(0), terminate: r.get(1), signal: r.get(2) }).collect())
    }

    /// Live revocations by stamped header.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn revoked_stamps(&self) -> Result<Vec<RevokedStamp>> {
        let client = self.pool.get().await?;
        let rows = client
            .rows(
                self.pooler,
                "select header, value, terminate, signal from celeriac.revoked_stamp where expires_at > now()
                 order by header, value",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| RevokedStamp { header: r.get(0), value: r.get(1), terminate: r.get(2), signal: r.get(3) })
            .collect())
    }

    /// Deletes up to `batch` expired revocations (by id and by stamp), and the oldest beyond
    /// `max_count` (Celery's `REVOKES_MAX`).
    ///
    /// # Errors
    /// Connection errors.
    pub async fn revoked_prune(&self, max_count: i64, batch: i64) -> Result<()> {
        let client = self.pool.get().await?;
        client
            .touch(
                self.pooler,
                "with ids as (
                     delete from celeriac.revoked where task_id = any(array(
                         select task_id from celeriac.revoked where expires_at <= now() order by expires_at limit $1))
                     returning 1
                 ), over as (
                     delete from celeriac.revoked where task_id = any(array(
                         select task_id from celeriac.revoked where expires_at > now()
                         order by revoked_at desc offset $2 limit $1))
                     returning 1
                 )
                 delete from celeriac.revoked_stamp where (header, value) in (
                     select header, value from celeriac.revoked_stamp where expires_at <= now() limit $1)",
                &[(&batch, Type::INT8), (&max_count, Type::INT8)],
            )
            .await?;
        Ok(())
    }
}
