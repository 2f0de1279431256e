//! Background maintenance that is safe to run in every consumer at once (celeriac workers and
//! Python Celery workers on the kombu transport): redelivering the messages of dead workers,
//! returning to their queue the parked messages of task types no live worker rate-limits,
//! pruning old broadcasts and expired revocations, vacuuming the message table when it has
//! many dead rows ([`Vacuumer`]) and rebuilding its indexes after a burst has left them bloated
//! ([`Reindexer`]).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use crate::{service::Periodic, RescueReport, Store};

/// Settings of the [`Rescuer`].
#[derive(Debug, Clone)]
pub struct RescuerConfig {
    /// How often to look for expired leases. Default: 5 s.
    pub interval: Duration,
    /// Redeliveries before a message is dead-lettered. Default: 3.
    pub max_redeliveries: i32,
    /// Worker rows without a heartbeat for this long are deleted. Default: 10 minutes.
    pub worker_retention: Duration,
    /// Every this many passes, look at all expired leases rather than only dead workers'
    /// (catches leases no worker tracks). Default: 12 (once a minute at the default interval).
    pub full_scan_every: u32,
    /// Told of the messages a pass dead-lettered because every worker that held them died
    /// (the worker stores Celery's `WorkerLostError` for them). Default: none.
    pub on_lost: Option<LostHook>,
    /// Broadcasts (remote control, replies, events) older than this are deleted. Default: 5
    /// minutes.
    pub broadcast_retention: Duration,
    /// Revocations kept at most (Celery's `REVOKES_MAX`), beyond their expiry. Default: 50,000.
    pub revokes_max: i64,
}

/// Called with the messages a rescue pass dead-lettered for exhausting their redeliveries.
#[derive(Clone)]
pub struct LostHook(pub Arc<dyn Fn(Vec<crate::LostMessage>) + Send + Sync>);

impl std::fmt::Debug for LostHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LostHook")
    }
}

impl Default for RescuerConfig {
    fn default() -> Self {
        RescuerConfig {
            interval: Duration::from_secs(5),
            max_redeliveries: 3,
            worker_retention: Duration::from_secs(600),
            full_scan_every: 12,
            on_lost: None,
            broadcast_retention: Duration::from_secs(300),
            revokes_max: crate::REVOKES_MAX,
        }
    }
}

/// How long a worker's heartbeats have been succeeding without interruption. The heartbeat
/// loop reports each attempt; the rescuer reads it, so that after a database outage (which
/// stopped every worker's heartbeats alike) nobody is declared dead before it could heartbeat.
#[derive(Debug)]
pub struct HeartbeatHealth {
    base: Instant,
    /// Microseconds after `base` since when heartbeats succeed; `u64::MAX` while failing.
    since: AtomicU64,
}

impl Default for HeartbeatHealth {
    fn default() -> Self {
        HeartbeatHealth { base: Instant::now(), since: AtomicU64::new(u64::MAX) }
    }
}

impl HeartbeatHealth {
    /// Records a heartbeat attempt.
    pub fn record(&self, ok: bool) {
        if ok {
            let now = u64::try_from(self.base.elapsed().as_micros()).unwrap_or(u64::MAX - 1);
            let _ = self.since.compare_exchange(u64::MAX, now, Ordering::Relaxed, Ordering::Relaxed);
        } else {
            self.since.store(u64::MAX, Ordering::Relaxed);
        }
    }

    /// Seconds of uninterrupted successful heartbeats (0 while failing or before the first).
    #[must_use]
    pub fn healthy_seconds(&self) -> f64 {
        match self.since.load(Ordering::Relaxed) {
            u64::MAX => 0.0,
            since => {
                let now = u64::try_from(self.base.elapsed().as_micros()).unwrap_or(u64::MAX - 1);
                #[allow(clippy::cast_precision_loss)]
                let secs = now.saturating_sub(since) as f64 / 1e6;
                secs
            }
        }
    }
}

/// Rows a pass deletes at most from `broadcast`, and from `revoked`.
const PRUNE_BATCH: i64 = 5_000;

/// How long a rescuer's heartbeats must have been landing before it judges which task types
/// live workers limit (their rows say so, kept by their heartbeats): a worker lease, the default.
const UNPARK_AFTER_HEALTHY_SECONDS: f64 = 30.0;

/// Frees messages whose worker died (lease ran out), marking them redelivered, and dead-letters
/// those that exhausted their redeliveries. Uses `SKIP LOCKED`, so any number of rescuers may
/// run at once without doing the same work twice.
#[derive(Debug, Clone)]
pub struct Rescuer {
    store: Store,
    config: RescuerConfig,
    passes: u32,
    health: Option<Arc<HeartbeatHealth>>,
    worker: Option<uuid::Uuid>,
}

impl Rescuer {
    /// A rescuer over `store`.
    #[must_use]
    pub fn new(store: Store, config: RescuerConfig) -> Self {
        Rescuer { store, config, passes: 0, health: None, worker: None }
    }

    /// Judges other workers only as far as this process's own heartbeats allow (see
    /// [`HeartbeatHealth`]). Without it, every worker with a stale heartbeat counts as dead.
    #[must_use]
    pub fn with_health(mut self, health: Arc<HeartbeatHealth>) -> Self {
        self.health = Some(health);
        self
    }

    /// The worker whose row's health (as the server sees it when a pass runs) bounds its
    /// judgement too (see [`Store::message_rescue`]).
    #[must_use]
    pub fn for_worker(mut self, worker: uuid::Uuid) -> Self {
        self.worker = Some(worker);
        self
    }
}

impl Periodic for Rescuer {
    type Report = RescueReport;

    fn name(&self) -> &'static str {
        "rescuer"
    }

    fn interval(&self) -> Duration {
        self.config.interval
    }

    /// One pass; the first and every `full_scan_every`-th pass look at all expired leases.
    async fn run_once(&mut self) -> crate::Result<RescueReport> {
        let full_scan = self.passes.is_multiple_of(self.config.full_scan_every.max(1));
        self.passes = self.passes.wrapping_add(1);
        let healthy = self.health.as_ref().map_or(f64::MAX, |h| h.healthy_seconds());
        let mut report =
            self.store.message_rescue(self.worker, self.config.max_redeliveries, full_scan, healthy).await?;
        if let (Some(hook), false) = (&self.config.on_lost, report.lost.is_empty()) {
            (hook.0)(std::mem::take(&mut report.lost));
        }
        if report.rescued > 0 {
            tracing::warn!(count = report.rescued, "rescuer: redelivering messages whose worker stopped heartbeating");
        }
        if report.dead_lettered > 0 {
            tracing::error!(
                count = report.dead_lettered,
                max_redeliveries = self.config.max_redeliveries,
                "rescuer: moved messages that keep killing their workers to dead_letter"
            );
        }
        // Parked messages of task types no live worker limits any more go back to their queue
        // (judged, like death, only while this process's own heartbeats land).
        if healthy >= UNPARK_AFTER_HEALTHY_SECONDS {
            let unparked = self.store.message_unpark_unlimited().await?;
            if unparked > 0 {
                tracing::warn!(
                    count = unparked,
                    "rescuer: returned rate-limited messages to their queue: no live worker limits their task any more"
                );
            }
        }
        // Pruning is judged like death: only by a rescuer whose own heartbeats have succeeded
        // for the whole retention, or a database outage longer than it would delete every live
        // worker's row (and their leases would then look orphaned).
        let retention = self.config.worker_retention.as_secs_f64();
        if healthy >= retention {
            self.store.worker_prune(retention).await?;
        }
        // Deleting is idempotent and bounded: any number of rescuers may, in batches.
        self.store.broadcast_prune(self.config.broadcast_retention, PRUNE_BATCH).await?;
        if full_scan {
            self.store.revoked_prune(self.config.revokes_max, PRUNE_BATCH).await?;
        }
        Ok(report)
    }
}

/// Rebuilds the message table's indexes once a burst has left them bloated over a table that
/// holds few messages again (see [`Store::message_reindex_bloated`]): autovacuum gives the
/// heap's empty pages back, but never an index's. One consumer at a time; every consumer runs it.
#[derive(Debug, Clone)]
pub struct Reindexer {
    store: Store,
    /// An index bigger than this and than the table's heap is rebuilt (while the table holds
    /// few messages).
    pub min_bytes: i64,
    /// "Few messages": fewer live ones than this.
    pub few_rows: i64,
    /// Time between looks.
    pub interval: Duration,
}

impl Reindexer {
    /// An index over 1 MiB (about 12,000 entries) and over the heap is rebuilt while fewer
    /// than 10,000 messages are live, looked at once a minute (autovacuum's default naptime:
    /// the heap is given back on that rhythm too).
    #[must_use]
    pub fn new(store: Store) -> Self {
        Reindexer { store, min_bytes: 1 << 20, few_rows: 10_000, interval: Duration::from_secs(60) }
    }
}

impl Periodic for Reindexer {
    type Report = Vec<String>;

    fn name(&self) -> &'static str {
        "reindexer"
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    async fn run_once(&mut self) -> crate::Result<Vec<String>> {
        self.store.message_reindex_bloated(self.min_bytes, self.few_rows).await
    }
}

/// Vacuums the message table as soon as it holds many dead rows (see
/// [`Store::message_vacuum_when_dead`]), instead of waiting up to a minute for autovacuum: a
/// busy queue then stays about `min_dead` dead rows big rather than a minute of traffic big.
/// Every consumer runs it; a vacuum already running makes the others skip theirs.
#[derive(Debug, Clone)]
pub struct Vacuumer {
    store: Store,
    /// Vacuum once the statistics count this many dead rows (and a quarter of the live ones).
    pub min_dead: i64,
    /// Time between looks.
    pub interval: Duration,
}

impl Vacuumer {
    /// At 50,000 dead rows (a few tens of megabytes of Celery envelopes), looked at every 2 s
    /// (the server's statistics lag by about 1 s).
    #[must_use]
    pub fn new(store: Store) -> Self {
        Vacuumer { store, min_dead: 50_000, interval: Duration::from_secs(2) }
    }
}

impl Periodic for Vacuumer {
    type Report = Option<i64>;

    fn name(&self) -> &'static str {
        "vacuumer"
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    async fn run_once(&mut self) -> crate::Result<Option<i64>> {
        self.store.message_vacuum_when_dead(self.min_dead).await
    }
}
