//! The worker: claims messages, runs handlers with a concurrency limit, settles outcomes.
//!
//! Shape of a running worker (all tokio tasks in one process):
//!
//! ```text
//!  listener ──wake──┐
//!                   ▼
//!  claim loop ── claims ≤ free prefetch slots ──► execute (one task per message)
//!  (claim.rs)                                        │ decode head → handler? → expired?
//!                                                    │ → turn in line (line.rs), run slot → decode body
//!                                                    │ → handler (own task: panics caught)
//!                                                    ▼ (execute.rs)
//!  lease session ◄──────────── settle: outcome → settlement (settle.rs, pure)
//!  (celeriac_store: held leases, heartbeat, batched completer, rescuer)
//!  statistics (stats.rs): counters read by `celeriac bench` and the final report
//! ```
//!
//! Messages claimed but not started do not exceed `concurrency × prefetch_multiplier` (Celery's
//! prefetch count; with the running ones, at most `concurrency × (prefetch_multiplier + 1)` are
//! held) unless tasks finish faster than a claim comes back: then the window grows until they
//! no longer wait for claims, and shrinks back as soon as they wait for run slots (window.rs);
//! ETA tasks stay in the database until due, so nothing is hoarded.
//! Outcomes are flushed in batches by the completer, and every write is fenced by the lease,
//! so a worker that lost its lease cannot overwrite a newer delivery.
//!
//! Shutdown (the token passed to [`Worker::run`] is cancelled): stop claiming; messages that
//! were claimed but not started are released at once; running tasks get `shutdown_timeout` to
//! finish, after which they are abandoned (their leases expire and the messages run again,
//! marked redelivered); pending outcomes are flushed; the worker row is removed.

mod autoscale;
mod builtins;
mod chords;
mod claim;
mod control;
mod effects;
mod events;
mod execute;
mod line;
mod metrics;
mod rate_limit;
mod settle;
mod stats;
mod task_counts;
mod window;

use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use celeriac_protocol::Accept;
use celeriac_store::{
    service::Supervisor, Backoff, LeaseSession, LeaseSessionConfig, SettledHook, Settlement, Store, WorkerInfo,
};
use tokio::sync::{Notify, Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use uuid::Uuid;

use crate::{maintenance::RescuerConfig, registry::Registry, Error};
use claim::{claim_loop, ClaimState};
pub use control::{ControlSettings, PoolResize};
pub use events::EventSettings;
pub use stats::{WorkerReport, WorkerStats};

/// [`WorkerConfig::pipeline`] is at most this many per unit of concurrency.
pub const MAX_PIPELINE_PER_SLOT: usize = 3;

/// Worker settings. Every field has a default (see [`WorkerConfig::default`]).
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Queues to consume. Default: `["celery"]`.
    pub queues: Vec<String>,
    /// Tasks run at once. Default: the number of CPUs.
    pub concurrency: usize,
    /// Messages claimed per execution slot (Celery's `worker_prefetch_multiplier`). Default: 4.
    pub prefetch_multiplier: usize,
    /// Let the prefetch window grow beyond Celery's count while tasks finish faster than a claim
    /// comes back, and shrink back when they wait (window.rs). Default: true.
    pub adaptive_prefetch: bool,
    /// Worker name for logs and the `worker` table. Default: `celeriac@<host>`.
    pub hostname: String,
    /// How long a claim stays valid without a heartbeat. Default: 30 s.
    pub lease: Duration,
    /// How often leases are renewed; must be under half the lease. Default: 5 s.
    pub heartbeat_interval: Duration,
    /// How often to look for work when no notification came. Default: 1 s.
    pub poll_interval: Duration,
    /// How long running tasks may take to finish after a shutdown request. Default: 60 s.
    pub shutdown_timeout: Duration,
    /// Redeliveries after lost leases before a message is dead-lettered. Default: 3.
    pub max_redeliveries: i32,
    /// How often this worker runs the rescuer. Default: 5 s.
    pub rescue_interval: Duration,
    /// Content types to deserialize. Default: JSON only.
    pub accept: Accept,
    /// Use LISTEN/NOTIFY wake-ups (off behind PgBouncer in transaction mode). Default: true.
    pub listen: bool,
    /// Handler calls started beyond `concurrency`, at most [`MAX_PIPELINE_PER_SLOT`] ×
    /// `concurrency`, for handlers that queue their work in a pool which itself runs
    /// `concurrency` at a time (the embedded Python pool keeps up to three short tasks queued
    /// behind the running one in each child). They come out of the prefetched messages, not on
    /// top of them. Default: 0.
    pub pipeline: usize,
    /// Ignore per-worker rate limits (Celery's `worker_disable_rate_limits`); fleet-wide limits
    /// still apply. Default: false.
    pub disable_rate_limits: bool,
    /// Also run the scheduler (Celery's `worker -B`): campaign for the scheduler lease and,
    /// while leading, fire the due periodic schedules. Any number of workers may. Default: off.
    pub scheduler: Option<crate::scheduler::SchedulerConfig>,
    /// Where the results of Rust handlers (and the states the worker decides for any task:
    /// unregistered, expired) are stored, as Celery's `result_backend`. Default: none.
    pub results: Option<crate::ResultsConfig>,
    /// The queue of messages the worker publishes without one named (the next task of a chain,
    /// callbacks): Celery's `task_default_queue`. Default: `celery`.
    pub default_queue: String,
    /// The app's `task_routes` (map routers), for the queue of what the worker publishes when
    /// the signature names none; before `default_queue`. Default: none.
    pub task_routes: crate::TaskRoutes,
    /// Remote control (`celery inspect|control`): the control exchange and what the worker
    /// reports about its app and pool. Default: [`ControlSettings::new`].
    pub control: ControlSettings,
    /// Celery's events (`-E`): default worker events only.
    pub events: EventSettings,
    /// Celery's `--autoscale`: grow and shrink how many tasks run at once (see
    /// [`Autoscale`]). Default: off.
    pub autoscale: Option<Autoscale>,
    /// Serve Prometheus metrics and the health probes (`/metrics`, `/healthz`, `/readyz`) on
    /// this address. Default: off (no metrics are kept).
    pub metrics_address: Option<std::net::SocketAddr>,
}

/// Celery's `--autoscale MAX,MIN`: every second, while more messages are held than can run,
/// the pool grows (up to `max`); once fewer are held, and no growth happened for 30 s, it
/// shrinks back (down to `min`), through the same path as `pool_grow`/`pool_shrink`. The
/// worker starts at its `concurrency`; reservations (`prefetch_multiplier`) are sized for
/// `max`, as in Celery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Autoscale {
    /// The fewest tasks at once.
    pub min: usize,
    /// The most tasks at once.
    pub max: usize,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            queues: vec![celeriac_protocol::DEFAULT_QUEUE.to_owned()],
            concurrency: std::thread::available_parallelism().map_or(2, std::num::NonZero::get),
            prefetch_multiplier: 4,
            adaptive_prefetch: true,
            hostname: format!("celeriac@{}", crate::hostname()),
            lease: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(5),
            poll_interval: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(60),
            max_redeliveries: 3,
            rescue_interval: Duration::from_secs(5),
            accept: Accept::default(),
            listen: true,
            pipeline: 0,
            disable_rate_limits: false,
            scheduler: None,
            results: None,
            default_queue: celeriac_protocol::DEFAULT_QUEUE.to_owned(),
            task_routes: crate::TaskRoutes::default(),
            control: ControlSettings::new(),
            events: EventSettings::default(),
            autoscale: None,
            metrics_address: None,
        }
    }
}

impl WorkerConfig {
    /// Checks the settings for consistency.
    ///
    /// # Errors
    /// [`Error::Config`] naming the bad setting.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Config(m));
        if self.queues.is_empty() || self.queues.iter().any(String::is_empty) {
            return bad("at least one queue, and no empty queue names, are required".into());
        }
        if self.concurrency == 0 {
            return bad("concurrency must be at least 1".into());
        }
        if self.prefetch_multiplier == 0 {
            return bad("prefetch multiplier must be at least 1".into());
        }
        if self.concurrency > 10_000 || self.prefetch_multiplier > 1_000 {
            return bad("concurrency is limited to 10,000 and the prefetch multiplier to 1,000".into());
        }
        if self.heartbeat_interval.is_zero() || self.heartbeat_interval.checked_mul(2).is_none_or(|d| d > self.lease) {
            return bad(format!(
                "heartbeat interval ({:?}) must be positive and at most half the lease ({:?})",
                self.heartbeat_interval, self.lease
            ));
        }
        if self.poll_interval.is_zero() || self.rescue_interval.is_zero() {
            return bad("poll and rescue intervals must be positive".into());
        }
        if self.pipeline > self.concurrency.saturating_mul(MAX_PIPELINE_PER_SLOT) {
            return bad(format!("pipeline must not exceed {MAX_PIPELINE_PER_SLOT} x concurrency"));
        }
        if self.max_redeliveries < 0 {
            return bad("max redeliveries must not be negative".into());
        }
        if self.autoscale.is_some_and(|a| a.max == 0 || a.min > a.max || a.max > 10_000) {
            return bad("autoscale needs 0 <= min <= max, 1 <= max <= 10,000".into());
        }
        Ok(())
    }
}

/// State shared by the claim loop and the per-message tasks.
pub(super) struct Shared {
    store: Store,
    registry: Arc<Registry>,
    config: WorkerConfig,
    worker_id: Uuid,
    stats: Arc<WorkerStats>,
    /// Held leases, their renewal and the completer.
    session: Arc<LeaseSession>,
    run_slots: Arc<Semaphore>,
    /// The prefetch window: messages held from their claim until their outcome is handed over.
    window: window::Window,
    /// Claimed messages waiting for a run slot, in the claim statement's order.
    line: Arc<line::Line>,
    /// Cancelled on shutdown: stop claiming, do not start claimed tasks.
    stopping: CancellationToken,
    /// Cancelled when the shutdown timeout ran out: abandon running tasks.
    abandon: CancellationToken,
    /// Keyset cursors of the claim loop.
    claim_state: std::sync::Mutex<ClaimState>,
    /// One permit: whether this worker may claim a suspect now.
    suspect_slot: Arc<Semaphore>,
    /// Wakes the claim loop (notifications, a suspect settled).
    wake: Arc<Notify>,
    /// `config.hostname`, shared by every request.
    hostname: Arc<str>,
    /// Rate limits and their buckets (rate_limit.rs).
    rate_limits: rate_limit::RateLimits,
    /// The result backend, if results are stored.
    results: Option<Arc<crate::results::Results>>,
    /// Remote control: the deliveries held, the revocations heard (control.rs).
    control: control::Control,
    /// Celery's events (events.rs).
    events: events::Events,
    /// Prometheus metrics, with `metrics_address` (metrics.rs).
    metrics: Option<Arc<metrics::Metrics>>,
    /// Ended deliveries per queue and task, for `celeriac.task_count` (task_counts.rs).
    task_counts: task_counts::TaskCounts,
    /// Tasks that run at once now: `concurrency`, changed by `pool_grow`/`pool_shrink` and
    /// `--autoscale` (control.rs).
    pool_size: std::sync::atomic::AtomicUsize,
    /// The last `add_consumer`/`cancel_consumer` change, and the lock its row write takes: only
    /// the newest list is written, whatever order the writes run in.
    queues_written: Arc<(tokio::sync::Mutex<()>, std::sync::atomic::AtomicU64)>,
    /// The queues consumed now (`add_consumer` and `cancel_consumer` change them; changed
    /// under the `claim_state` lock, with the cursors).
    queues: std::sync::RwLock<Arc<Vec<String>>>,
}

impl Shared {
    /// The queues consumed now.
    fn queues(&self) -> Arc<Vec<String>> {
        self.queues.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Consumes `queues` from now on (and says so in the worker's row).
    fn set_queues(&self, queues: Vec<String>) {
        let mut state = self.claim_state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        state.reset(queues.len());
        *self.queues.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(queues.clone());
        drop(state);
        self.wake.notify_one();
        let (store, id, written) = (self.store.clone(), self.worker_id, self.queues_written.clone());
        let change = written.1.fetch_add(1, Ordering::Relaxed) + 1;
        tokio::spawn(async move {
            let _turn = written.0.lock().await;
            if written.1.load(Ordering::Relaxed) != change {
                return; // a newer list is on its way
            }
            if let Err(e) = store.worker_set_queues(id, &queues).await {
                tracing::warn!("cannot record the worker's queues: {e}");
            }
        });
    }
}

/// A worker process's runtime. See the module docs.
pub struct Worker {
    store: Store,
    registry: Arc<Registry>,
    config: WorkerConfig,
    id: Uuid,
    stats: Arc<WorkerStats>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("id", &self.id).field("config", &self.config).finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker over `store` running the handlers of `registry`.
    ///
    /// # Errors
    /// [`Error::Config`] for inconsistent settings.
    pub fn new(store: Store, registry: Registry, config: WorkerConfig) -> Result<Worker, Error> {
        config.validate()?;
        Ok(Worker { store, registry: Arc::new(registry), config, id: Uuid::new_v4(), stats: Arc::default() })
    }

    /// This worker's id (what `leased_by` holds).
    #[must_use]
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// Live counters.
    #[must_use]
    pub fn stats(&self) -> Arc<WorkerStats> {
        self.stats.clone()
    }

    /// Runs until `shutdown` is cancelled, then shuts down gracefully (module docs).
    ///
    /// # Errors
    /// Only if the schema is missing at start; database outages while running are logged and
    /// retried with backoff.
    pub async fn run(self, shutdown: CancellationToken) -> Result<WorkerReport, Error> {
        let config = self.config.clone();
        let info = WorkerInfo {
            id: self.id,
            hostname: config.hostname.clone(),
            pid: i32::try_from(std::process::id()).unwrap_or(0),
            queues: config.queues.clone(),
            concurrency: i32::try_from(config.concurrency).unwrap_or(i32::MAX),
            lease_seconds: config.lease.as_secs_f64(),
            rate_limited: Vec::new(),
            kind: celeriac_store::ConsumerKind::Worker,
        };
        // The result backend first: a worker that cannot use the one it was told to does not start.
        let results = match config.results.clone() {
            Some(results_config) => {
                let optional = results_config.optional;
                match crate::results::Results::open(results_config, &self.store, &config.queues).await {
                    Ok(results) => {
                        tracing::info!("results: {}", results.describe());
                        Some(Arc::new(results))
                    }
                    Err(e) if optional => {
                        tracing::warn!(
                            "the app's result backend cannot hold the results of Rust handlers ({e}); they are not \
                             stored (Python tasks store theirs as usual)"
                        );
                        None
                    }
                    Err(e) => return Err(e),
                }
            }
            None => None,
        };
        self.register(&info, &shutdown).await?;
        // Before "ready." (as Celery's pidbox consumes before it says so) and before the first
        // claim: a command or revoke committed from now on is heard by this worker.
        let broadcasts_from = self.store.broadcast_head().await.ok();
        tracing::info!(
            hostname = %config.hostname, queues = %config.queues.join(","), concurrency = config.concurrency,
            tasks = %self.registry.names().join(", "), "{} ready.", config.hostname
        );

        let wake = Arc::new(Notify::new());
        // The metrics port is bound before the first claim: a port in use fails the start.
        let metrics_listener = match config.metrics_address {
            Some(address) => {
                Some(metrics::bind(address).await.map_err(|source| Error::MetricsPort { address, source })?)
            }
            None => None,
        };
        let metrics = metrics_listener.as_ref().map(|_| Arc::new(metrics::Metrics::new()));
        let settled: SettledHook = {
            let stats = self.stats.clone();
            let metrics = metrics.clone();
            Arc::new(move |batch: &[Settlement], took| {
                stats.settled.fetch_add(batch.len() as u64, Ordering::Relaxed);
                if let Some(metrics) = &metrics {
                    metrics.settled(took);
                }
            })
        };
        let session = LeaseSession::start(
            self.store.clone(),
            info,
            &LeaseSessionConfig {
                heartbeat_interval: config.heartbeat_interval,
                max_redeliveries: config.max_redeliveries,
                rescuer: Some(RescuerConfig {
                    interval: config.rescue_interval,
                    on_lost: results.as_ref().map(|r| {
                        effects::lost_hook(r.clone(), self.store.clone(), self.registry.clone(), config.clone())
                    }),
                    ..RescuerConfig::default()
                }),
                // Pending outcomes get a bounded time to reach the database at shutdown.
                write_at_close: Duration::from_secs(15),
                result_table: results.as_ref().and_then(|r| r.queue_table()),
            },
            Some(settled),
        );
        let running = config.concurrency + config.pipeline;
        // As in Celery (early acks): `concurrency × prefetch_multiplier` messages reserved, plus
        // the ones running; with --autoscale, for its maximum concurrency, as Celery sizes it.
        let window = window::Window::new(
            config.autoscale.map_or(config.concurrency, |a| a.max.max(config.concurrency))
                * (config.prefetch_multiplier + 1),
            running,
            config.adaptive_prefetch,
        );
        let shared = Arc::new(Shared {
            store: self.store.clone(),
            registry: self.registry.clone(),
            config: config.clone(),
            worker_id: self.id,
            stats: self.stats.clone(),
            session: session.clone(),
            run_slots: Arc::new(Semaphore::new(running)),
            window,
            line: Arc::default(),
            stopping: shutdown.clone(),
            abandon: CancellationToken::new(),
            claim_state: std::sync::Mutex::new(ClaimState::new(config.queues.len())),
            suspect_slot: Arc::new(Semaphore::new(1)),
            wake: wake.clone(),
            hostname: config.hostname.as_str().into(),
            rate_limits: rate_limit::RateLimits::new(&self.registry, config.disable_rate_limits),
            results,
            control: control::Control::new(&config.control.namespace),
            events: events::Events::new(&config.events, config.hostname.as_str().into()),
            metrics: metrics.clone(),
            task_counts: task_counts::TaskCounts::default(),
            pool_size: std::sync::atomic::AtomicUsize::new(config.concurrency),
            queues_written: Arc::default(),
            queues: std::sync::RwLock::new(Arc::new(config.queues.clone())),
        });

        // The worker's own background services (the lease session runs its heartbeat,
        // completer and rescuer): one `services.start(…)` line each, stopped in reverse order.
        let mut services = Supervisor::default();
        if config.listen {
            let shared = shared.clone();
            services.start(self.store.listener().service(move |w| {
                if w.concerns(&shared.queues()) {
                    shared.wake.notify_one();
                }
            }));
        }

        services.start(control::ControlService {
            shared: shared.clone(),
            shutdown_worker: shutdown.clone(),
            start: broadcasts_from,
        });
        services.start(events::EventService { shared: shared.clone() });
        services.start(task_counts::TaskCountService { shared: shared.clone() });
        if let Some(limits) = config.autoscale {
            services.start(autoscale::Autoscaler { shared: shared.clone(), limits });
        }
        if let (Some(listener), Some(metrics)) = (metrics_listener, metrics) {
            services.start(metrics::MetricsService { shared: shared.clone(), metrics, listener });
        }

        // The scheduler (-B) stops first at shutdown: nothing fires once the worker is stopping.
        let mut scheduler = Supervisor::default();
        if let Some(scheduler_config) = &config.scheduler {
            let holder_name = format!("{} pid {}", config.hostname, std::process::id());
            crate::scheduler::start(&mut scheduler, &self.store, self.id, holder_name, scheduler_config.clone());
        }

        let tracker = TaskTracker::new();
        let declared = rate_limit::start(&shared, &tracker).await;
        tracker.spawn(rate_limit::refresh_loop(shared.clone(), tracker.clone(), declared));
        claim_loop(&shared, &tracker).await;
        scheduler.stop().await;

        tracing::info!("worker: warm shutdown, waiting for {} running task(s)", tracker.len());
        tracker.close();
        if tokio::time::timeout(config.shutdown_timeout, tracker.wait()).await.is_err() {
            tracing::warn!(
                "worker: {} task(s) still running after {:?}; abandoning them (their messages run again after the lease)",
                tracker.len(),
                config.shutdown_timeout
            );
            shared.abandon.cancel();
            tracker.wait().await;
        }
        drop(shared);
        // Pending outcomes get a bounded time to reach the database; the worker row stays if
        // some could not (rescuers then deliver those messages again after the lease).
        session.close().await;
        services.stop().await;
        let report = self.stats.snapshot();
        tracing::info!(?report, "worker: stopped");
        Ok(report)
    }

    async fn register(&self, info: &WorkerInfo, shutdown: &CancellationToken) -> Result<(), Error> {
        let mut backoff = Backoff::new();
        loop {
            match self.store.worker_register(info).await {
                Ok(()) => return Ok(()),
                Err(e) if !e.is_connection() => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff.peek(), "worker: cannot register with the database");
                    if !backoff.wait(shutdown).await {
                        return Err(Error::Config("shut down before the database became reachable".into()));
                    }
                }
            }
        }
    }
}
