//! A worker's Prometheus metrics and health probes (`--metrics-port`): `/metrics`, `/healthz`
//! (the process answers) and `/readyz` (the database answers, its schema is current, and the
//! worker's heartbeats succeed), on one port, served with axum. The registry and the
//! exposition format are `prometheus-client`'s.
//!
//! Per-queue depth and oldest-ready age are computed by one process of the fleet at a time
//! (whoever holds the `celeriac-metrics` lease, renewed every [`QUEUE_STATS_EVERY`]), so a
//! fleet of workers does not scan the queue table once per worker; the others export none.

use std::{
    net::SocketAddr,
    sync::{atomic::AtomicU64, Arc, Mutex, PoisonError},
    time::Duration,
};

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Router};
use celeriac_store::service::Service;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::{Registry, Unit},
};
use tokio_util::sync::CancellationToken;

use super::Shared;

/// How often the queue-depth leader refreshes the per-queue gauges (and renews its lease).
const QUEUE_STATS_EVERY: Duration = Duration::from_secs(15);
/// The lease that elects the process computing the per-queue gauges.
const QUEUE_STATS_LEASE: &str = "celeriac-metrics";
/// How long a probe waits for the database.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The labels of a task's metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    task: String,
    queue: String,
}

/// The label of a queue's metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: String,
}

type TaskCounter = Family<TaskLabels, Counter>;
type QueueGauge = Family<QueueLabels, Gauge>;
type QueueGaugeF64 = Family<QueueLabels, Gauge<f64, AtomicU64>>;
/// The per-queue counts (exact up to a bound, estimated beyond it) and oldest ready ages.
type QueueReadings = Vec<celeriac_store::QueueOverview>;

/// How a delivery ended, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    Succeeded,
    Failed,
    Retried,
    Revoked,
    Rejected,
}

/// A worker's metrics.
pub(super) struct Metrics {
    registry: Registry,
    received: TaskCounter,
    succeeded: TaskCounter,
    failed: TaskCounter,
    retried: TaskCounter,
    revoked: TaskCounter,
    rejected: TaskCounter,
    dead_lettered: TaskCounter,
    runtime: Family<TaskLabels, Histogram, fn() -> Histogram>,
    claim: Histogram,
    settle: Histogram,
    leases_held: Gauge,
    pool_children: Gauge,
    database_errors: Counter,
    queue_ready: QueueGauge,
    queue_delayed: QueueGauge,
    queue_leased: QueueGauge,
    queue_dead: QueueGauge,
    queue_oldest_ready: QueueGaugeF64,
    /// What `database_errors` was last brought up to.
    errors_seen: Mutex<u64>,
}

fn runtime_histogram() -> Histogram {
    // 0.5 ms to about 4.5 min.
    Histogram::new(exponential_buckets(0.0005, 2.5, 15))
}

impl Metrics {
    pub(super) fn new() -> Metrics {
        let mut registry = Registry::default();
        let mut counter = |name: &str, help: &str| {
            let family = TaskCounter::default();
            registry.register(name, help, family.clone());
            family
        };
        let received = counter("celeriac_tasks_received", "Deliveries received, by task and queue");
        let succeeded = counter("celeriac_tasks_succeeded", "Tasks that succeeded");
        let failed = counter(
            "celeriac_tasks_failed",
            "Tasks that failed (for good, or before a retry the task did not ask for)",
        );
        let retried = counter("celeriac_tasks_retried", "Tasks that asked for a retry (Task.retry, autoretry)");
        let revoked = counter("celeriac_tasks_revoked", "Deliveries discarded as revoked or expired, or terminated");
        let rejected = counter("celeriac_tasks_rejected", "Deliveries rejected (Reject), requeued or not");
        let dead_lettered = counter("celeriac_tasks_dead_lettered", "Messages moved to dead_letter");
        let runtime = Family::<TaskLabels, Histogram, fn() -> Histogram>::new_with_constructor(runtime_histogram);
        registry.register_with_unit("celeriac_task_runtime", "How long tasks ran", Unit::Seconds, runtime.clone());
        let claim = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register_with_unit(
            "celeriac_claim_duration",
            "Round trip of a claim statement",
            Unit::Seconds,
            claim.clone(),
        );
        let settle = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register_with_unit(
            "celeriac_settle_duration",
            "Time to write a batch of outcomes (retries included)",
            Unit::Seconds,
            settle.clone(),
        );
        let leases_held = Gauge::default();
        registry.register(
            "celeriac_leases_held",
            "Messages this worker holds: running and reserved",
            leases_held.clone(),
        );
        let pool_children = Gauge::default();
        registry.register("celeriac_pool_children", "Python pool children alive", pool_children.clone());
        let database_errors = Counter::default();
        registry.register("celeriac_database_errors", "Failed database calls of this process", database_errors.clone());
        let mut queue = |name: &str, help: &str| {
            let family = QueueGauge::default();
            registry.register(name, help, family.clone());
            family
        };
        let queue_ready =
            queue("celeriac_queue_ready", "Messages ready to run, per queue (from one process of the fleet)");
        let queue_delayed = queue("celeriac_queue_delayed", "Messages waiting for their ETA, per queue");
        let queue_leased = queue("celeriac_queue_leased", "Messages held by workers, per queue");
        let queue_dead = queue("celeriac_queue_dead_lettered", "Messages in dead_letter, per queue");
        let queue_oldest_ready = QueueGaugeF64::default();
        registry.register_with_unit(
            "celeriac_queue_oldest_ready_age",
            "Age of the oldest ready message, per queue",
            Unit::Seconds,
            queue_oldest_ready.clone(),
        );
        Metrics {
            registry,
            received,
            succeeded,
            failed,
            retried,
            revoked,
            rejected,
            dead_lettered,
            runtime,
            claim,
            settle,
            leases_held,
            pool_children,
            database_errors,
            queue_ready,
            queue_delayed,
            queue_leased,
            queue_dead,
            queue_oldest_ready,
            errors_seen: Mutex::new(0),
        }
    }

    fn labels(task: &str, queue: &str) -> TaskLabels {
        TaskLabels { task: task.to_owned(), queue: queue.to_owned() }
    }

    pub(super) fn received(&self, task: &str, queue: &str) {
        self.received.get_or_create(&Self::labels(task, queue)).inc();
    }

    pub(super) fn ended(&self, task: &str, queue: &str, ended: Ended, runtime: Option<f64>) {
        let labels = Self::labels(task, queue);
        let family = match ended {
            Ended::Succeeded => &self.succeeded,
            Ended::Failed => &self.failed,
            Ended::Retried => &self.retried,
            Ended::Revoked => &self.revoked,
            Ended::Rejected => &self.rejected,
        };
        family.get_or_create(&labels).inc();
        if let Some(runtime) = runtime {
            self.runtime.get_or_create(&labels).observe(runtime);
        }
    }

    pub(super) fn dead_lettered(&self, task: &str, queue: &str) {
        self.dead_lettered.get_or_create(&Self::labels(task, queue)).inc();
    }

    pub(super) fn claimed(&self, took: Duration) {
        self.claim.observe(took.as_secs_f64());
    }

    pub(super) fn settled(&self, took: Duration) {
        self.settle.observe(took.as_secs_f64());
    }

    /// The exposition of every metric, the gauges read now.
    fn encode(&self, shared: &Shared) -> String {
        self.leases_held.set(i64::try_from(shared.control.held()).unwrap_or(i64::MAX));
        let children = shared.config.control.pool_processes.as_ref().map_or(0, |pids| pids().len());
        self.pool_children.set(i64::try_from(children).unwrap_or(i64::MAX));
        {
            let mut seen = self.errors_seen.lock().unwrap_or_else(PoisonError::into_inner);
            let now = celeriac_store::database_errors();
            self.database_errors.inc_by(now.saturating_sub(*seen));
            *seen = now.max(*seen);
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Sets the per-queue gauges (the leader), or clears them (`None`: another process does).
    fn set_queues(&self, stats: Option<QueueReadings>) {
        for family in [&self.queue_ready, &self.queue_delayed, &self.queue_leased, &self.queue_dead] {
            family.clear();
        }
        self.queue_oldest_ready.clear();
        let Some(stats) = stats else { return };
        for s in stats {
            let labels = QueueLabels { queue: s.queue.clone() };
            self.queue_ready.get_or_create(&labels).set(s.ready.value);
            self.queue_delayed.get_or_create(&labels).set(s.delayed.value);
            self.queue_leased.get_or_create(&labels).set(s.leased.value);
            self.queue_dead.get_or_create(&labels).set(s.dead_lettered.value);
            self.queue_oldest_ready.get_or_create(&labels).set(s.oldest_ready_age.unwrap_or(0.0));
        }
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz`, and keeps the per-queue gauges while this
/// process holds the `celeriac-metrics` lease.
pub(super) struct MetricsService {
    pub(super) shared: Arc<Shared>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) listener: tokio::net::TcpListener,
}

impl Service for MetricsService {
    fn name(&self) -> &'static str {
        "metrics"
    }

    async fn run(self, shutdown: CancellationToken) {
        let MetricsService { shared, metrics, listener } = self;
        let app = Router::new()
            .route("/metrics", get(scrape))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(ready))
            .with_state((shared.clone(), metrics.clone()));
        let server = axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
        tokio::join!(
            async {
                if let Err(e) = server.await {
                    tracing::error!("metrics: the HTTP server stopped: {e}");
                }
            },
            queue_stats(&shared, &metrics, &shutdown)
        );
    }
}

/// `/metrics`.
async fn scrape(State((shared, metrics)): State<(Arc<Shared>, Arc<Metrics>)>) -> impl IntoResponse {
    let body = metrics.encode(&shared);
    ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
}

/// `/readyz`: 200 when the database answers within [`PROBE_TIMEOUT`], its schema is at least
/// this build's newest migration, and the worker's heartbeats succeed; else 503 and why.
async fn ready(State((shared, _)): State<(Arc<Shared>, Arc<Metrics>)>) -> impl IntoResponse {
    let mut problems = Vec::new();
    let newest = celeriac_store::MIGRATIONS.iter().map(|m| m.version).max().unwrap_or(0);
    match tokio::time::timeout(PROBE_TIMEOUT, shared.store.schema_version()).await {
        Err(_) => problems.push("database: no answer within 2 s".to_owned()),
        Ok(Err(e)) => problems.push(format!("database: {e}")),
        Ok(Ok(version)) if version < newest => {
            problems
                .push(format!("schema: at migration {version}, this celeriac needs {newest} (run celeriac migrate)"));
        }
        Ok(Ok(_)) => {}
    }
    if shared.session.health().healthy_seconds() <= 0.0 {
        problems.push("heartbeats: not succeeding".to_owned());
    }
    if problems.is_empty() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, problems.join("\n") + "\n")
    }
}

/// While this process holds the `celeriac-metrics` lease, refreshes the per-queue gauges.
async fn queue_stats(shared: &Shared, metrics: &Metrics, shutdown: &CancellationToken) {
    let store = &shared.store;
    let ttl = QUEUE_STATS_EVERY.as_secs_f64() * 3.0;
    let mut term: Option<i64> = None;
    loop {
        let held = match term {
            Some(t) => store.lease_renew(QUEUE_STATS_LEASE, shared.worker_id, t, ttl).await,
            None => store.lease_acquire(QUEUE_STATS_LEASE, shared.worker_id, &shared.config.hostname, ttl).await,
        };
        match held {
            Ok(held) => term = held.map(|t| t.term),
            // Not lost for a failed call: renewed (or given up) next time.
            Err(e) => tracing::debug!("metrics: the queue statistics lease: {e}"),
        }
        if term.is_some() {
            match queue_readings(store).await {
                Ok(stats) => metrics.set_queues(Some(stats)),
                Err(e) => tracing::debug!("metrics: queue statistics failed: {e}"),
            }
        } else {
            metrics.set_queues(None);
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(QUEUE_STATS_EVERY) => {}
        }
    }
    if let Some(term) = term {
        let _ = store.lease_release(QUEUE_STATS_LEASE, shared.worker_id, term).await;
    }
}

/// Every queue's counts, as the dashboard reads them: exact up to
/// [`celeriac_store::COUNT_BOUND`] rows, the planner's estimate beyond (no `count(*)` over a
/// queue of millions).
async fn queue_readings(store: &celeriac_store::Store) -> celeriac_store::Result<QueueReadings> {
    let mut readings = Vec::new();
    for name in store.queue_names().await? {
        readings.push(store.queue_overview(&name).await?);
    }
    Ok(readings)
}

/// Binds the metrics port.
///
/// # Errors
/// The address cannot be bound (in use, not permitted).
pub(super) async fn bind(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address).await
}
