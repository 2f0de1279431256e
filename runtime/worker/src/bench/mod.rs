//! `celeriac bench`: enqueue rate, drain rate and idle pickup latency, measured in one run
//! against a real database with an in-process worker and a Rust no-op handler.
//!
//! Output (one line per measurement, rates in tasks/s):
//!
//! ```text
//! enqueue      c=2     100000 tasks   1.52 s    65789 tasks/s
//! drain        c=2     100000 tasks   6.10 s    16393 tasks/s
//! ...
//! pickup latency (idle queue, 200 samples): p50 1.10 ms  p90 1.60 ms  p99 2.90 ms  max 4.00 ms
//! ```
//!
//! `--rate-limits` measures rate limits instead ([`rate_limits`]), `--schedules N` the
//! scheduler ([`schedules`]).

mod control;
mod rate_limits;
mod results;
mod schedules;

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use celeriac_protocol::{encode_task, Map, TaskOptions};
use celeriac_store::{NewMessage, Store, StoreConfig};
use chrono::Utc;
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::{Outcome, Registry, Request, Worker, WorkerConfig};

/// `celeriac bench` options.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Tasks enqueued and drained per concurrency level.
    #[arg(long, default_value_t = 100_000)]
    pub tasks: usize,
    /// Comma-separated worker concurrency levels to drain with.
    #[arg(long, default_value = "2,16", value_delimiter = ',')]
    pub concurrency: Vec<usize>,
    /// Messages per enqueue statement.
    #[arg(long, default_value_t = 5000)]
    pub batch: usize,
    /// Prefetch multiplier of the draining worker.
    #[arg(long, default_value_t = 4)]
    pub prefetch_multiplier: usize,
    /// Keep the draining worker's prefetch window at Celery's count (the worker's
    /// --fixed-prefetch).
    #[arg(long)]
    pub fixed_prefetch: bool,
    /// Single-message round trips for the idle pickup latency.
    #[arg(long, default_value_t = 200)]
    pub latency_samples: usize,
    /// Queue used by the benchmark (emptied first).
    #[arg(long, default_value = "celeriac_bench")]
    pub queue: String,
    /// Measure rate limits instead: the drain rate of unlimited tasks with and without
    /// --limited-backlog rate-limited messages waiting (alternating --rounds times), then the
    /// accuracy of a fleet-wide limit of --global-rate per second over --global-seconds with
    /// --global-workers workers.
    #[arg(long)]
    pub rate_limits: bool,
    /// Instead: the drain rate with results stored in celery_taskmeta on the queue database
    /// against none, side by side for --rounds rounds (--tasks per drain, each --concurrency).
    #[arg(long)]
    pub results: bool,
    /// Instead: the drain rate with task events on and with 100,000 live revocations against
    /// neither, side by side for --rounds rounds, then the ping round trip of remote control.
    #[arg(long)]
    pub control: bool,
    /// Rate-limited messages waiting while unlimited ones drain (--rate-limits).
    #[arg(long, default_value_t = 100_000)]
    pub limited_backlog: usize,
    /// Alternating baseline / with-backlog drain pairs (--rate-limits).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// The fleet-wide limit, tasks per second (--rate-limits).
    #[arg(long, default_value_t = 50.0)]
    pub global_rate: f64,
    /// How long the fleet-wide limit is measured (--rate-limits).
    #[arg(long, default_value_t = 60.0)]
    pub global_seconds: f64,
    /// Workers sharing the fleet-wide limit (--rate-limits).
    #[arg(long, default_value_t = 4)]
    pub global_workers: usize,
    /// Measure the scheduler instead: this many schedules due at one instant, then the
    /// database load of idle schedulers (0: off).
    #[arg(long, default_value_t = 0)]
    pub schedules: usize,
    /// How long idle schedulers are measured (--schedules).
    #[arg(long, default_value_t = 30.0)]
    pub idle_seconds: f64,
}

const TASK: &str = "celeriac.bench.noop";

/// Why the benchmark stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] celeriac_store::Error),
    /// A benchmark worker could not start or failed.
    #[error(transparent)]
    Worker(#[from] crate::Error),
    /// A benchmark worker's task panicked or was cancelled.
    #[error(transparent)]
    Join(#[from] tokio::task::JoinError),
    /// The draining worker stopped before the queue was drained.
    #[error("the benchmark worker stopped early")]
    StoppedEarly,
    /// The latency probe's message could not be built.
    #[error("cannot build a message")]
    NoMessage,
    /// A latency probe was not picked up in time.
    #[error("a benchmark task was not picked up within 10 s")]
    NotPickedUp,
    /// The latency worker stopped while a probe was waiting.
    #[error("benchmark worker stopped")]
    WorkerStopped,
    /// A rate limit is not a rate.
    #[error(transparent)]
    Rate(#[from] celeriac_protocol::RateError),
}

/// `n` messages of `task` (no arguments) for `queue`.
fn messages(task: &str, n: usize, queue: &str) -> Vec<NewMessage> {
    let opts = TaskOptions { queue: queue.to_owned(), ..TaskOptions::default() };
    let now = Utc::now();
    (0..n).filter_map(|_| encode_task(task, &[], &Map::new(), &opts, now).ok().map(NewMessage::from)).collect()
}

fn rate(n: usize, d: Duration) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let n = n as f64;
    n / d.as_secs_f64().max(1e-9)
}

fn quiet_config(queue: &str, concurrency: usize, prefetch: usize) -> WorkerConfig {
    WorkerConfig {
        queues: vec![queue.to_owned()],
        concurrency,
        prefetch_multiplier: prefetch,
        hostname: format!("celeriac-bench@{}", crate::hostname()),
        shutdown_timeout: Duration::from_secs(10),
        ..WorkerConfig::default()
    }
}

/// Runs the benchmark and prints its report to stdout.
///
/// # Errors
/// [`BenchError`]: the database failed, or a benchmark worker did.
pub async fn run(url: &str, args: &BenchArgs) -> Result<(), BenchError> {
    let store = Store::new(&StoreConfig { max_connections: 8, ..StoreConfig::new(url) })?;
    store.migrate().await?;
    if args.rate_limits {
        return rate_limits::run(&store, args).await;
    }
    if args.schedules > 0 {
        return schedules::run(&store, args).await;
    }
    if args.results {
        return results::run(&store, url, args).await;
    }
    if args.control {
        return control::run(&store, args).await;
    }
    let purged = store.message_purge(&args.queue).await?;
    println!(
        "celeriac bench: {} no-op tasks per run, {} per insert, prefetch multiplier {}{}, queue {:?}{}",
        args.tasks,
        args.batch,
        args.prefetch_multiplier,
        if args.fixed_prefetch { " (fixed window)" } else { "" },
        args.queue,
        if purged > 0 { format!(" ({purged} stale messages purged)") } else { String::new() }
    );
    for &concurrency in &args.concurrency {
        let batch = messages(TASK, args.tasks, &args.queue);
        let started = Instant::now();
        for chunk in batch.chunks(args.batch.max(1)) {
            store.message_insert_many(chunk).await?;
        }
        let enqueue = started.elapsed();
        println!(
            "enqueue      c={concurrency:<4} {:>8} tasks {:>7.2} s {:>9.0} tasks/s",
            args.tasks,
            enqueue.as_secs_f64(),
            rate(args.tasks, enqueue)
        );

        let config = WorkerConfig {
            adaptive_prefetch: !args.fixed_prefetch,
            ..quiet_config(&args.queue, concurrency, args.prefetch_multiplier)
        };
        let (drain, stats) = drain_noop(&store, config, args.tasks).await?;
        let claims = stats.claims.load(Ordering::Relaxed).max(1);
        #[allow(clippy::cast_precision_loss)]
        let (claim_ms, per_claim) = (
            stats.claim_micros.load(Ordering::Relaxed) as f64 / claims as f64 / 1000.0,
            args.tasks as f64 / claims as f64,
        );
        println!(
            "drain        c={concurrency:<4} {:>8} tasks {:>7.2} s {:>9.0} tasks/s   ({claims} claims, {per_claim:.1} messages and {claim_ms:.2} ms each)",
            args.tasks,
            drain.as_secs_f64(),
            rate(args.tasks, drain)
        );
    }
    if args.latency_samples > 0 {
        latency(&store, args).await?;
    }
    Ok(())
}

/// Runs a worker with the no-op handler (returning `None`) until `tasks` messages are settled
/// (and not merely given back),
/// then stops it. Returns how long that took and the worker's counters.
async fn drain_noop(
    store: &Store,
    config: WorkerConfig,
    tasks: usize,
) -> Result<(Duration, std::sync::Arc<crate::WorkerStats>), BenchError> {
    let mut registry = Registry::new();
    registry.register_raw(TASK, |_req: Request| async { Outcome::Success(celeriac_protocol::Value::Null) });
    let worker = Worker::new(store.clone(), registry, config)?;
    let stats = worker.stats();
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let handle = tokio::spawn(worker.run(shutdown.clone()));
    let target = tasks as u64;
    // Messages given back unstarted (the prefetch window shrank) are settled but not done.
    while stats.settled.load(Ordering::Relaxed).saturating_sub(stats.released.load(Ordering::Relaxed)) < target {
        if handle.is_finished() {
            return Err(BenchError::StoppedEarly);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed();
    shutdown.cancel();
    handle.await??;
    Ok((elapsed, stats))
}

async fn latency(store: &Store, args: &BenchArgs) -> Result<(), BenchError> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let mut registry = Registry::new();
    registry.register_raw(TASK, move |_req: Request| {
        let _ = tx.send(Instant::now());
        async { Outcome::Success(celeriac_protocol::Value::Null) }
    });
    let worker = Worker::new(store.clone(), registry, quiet_config(&args.queue, 2, args.prefetch_multiplier))?;
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(worker.run(shutdown.clone()));
    // Let the worker register and go idle (its first claim finds nothing).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut samples = Vec::with_capacity(args.latency_samples);
    for _ in 0..args.latency_samples {
        let message = messages(TASK, 1, &args.queue).pop().ok_or(BenchError::NoMessage)?;
        let sent = Instant::now();
        store.message_insert(&message).await?;
        let started = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .map_err(|_| BenchError::NotPickedUp)?
            .ok_or(BenchError::WorkerStopped)?;
        samples.push(started.saturating_duration_since(sent));
        // Idle between samples, so each one measures an idle worker's wake-up.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shutdown.cancel();
    handle.await??;
    samples.sort();
    let pct = |p: f64| {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
        let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
        samples[i.min(samples.len() - 1)].as_secs_f64() * 1000.0
    };
    println!(
        "pickup latency (idle queue, {} samples): p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        samples.len(),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0)
    );
    Ok(())
}
