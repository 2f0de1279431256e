//! `celeriac bench --rate-limits`: what rate limits cost the tasks they do not limit, and how
//! exactly a fleet-wide limit holds.
//!
//! Output:
//!
//! ```text
//! drain r1 baseline                          100000 tasks   9.10 s   10989 tasks/s
//! drain r1 100000 limited enqueued ahead     100000 tasks  19.80 s    5050 tasks/s   0.46 of baseline
//! drain r1 100000 limited parked             100000 tasks   9.20 s   10870 tasks/s   0.99 of baseline
//! ...
//! global limit 50/s, 4 workers, 60 s: 3003 started, 50.05/s = 1.001 of the limit; per worker 751 750 752 750
//! ```
//!
//! Each round drains the same number of unlimited no-op tasks three ways, one after the other:
//! with nothing else queued (baseline); with `--limited-backlog` messages of a task limited to
//! one per hour enqueued ahead of them (the worker claims and parks each, once); and with that
//! backlog already parked. Rounds alternate the three, so machine noise spreads over all of them,
//! and each drain starts from a vacuumed table, so none inherits the dead rows of the one before.
//! The fleet-wide limit is measured from the start times of `--global-workers` workers' tasks
//! over `--global-seconds`, counted from the first start.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use celeriac_protocol::Value;
use celeriac_store::{RateLimitScope, RateValue, Store};
use tokio_util::sync::CancellationToken;

use super::{messages, quiet_config, rate, BenchArgs, BenchError, TASK};
use crate::{Outcome, Registry, Request, Worker};

const LIMITED: &str = "celeriac.bench.limited";
const GLOBAL: &str = "celeriac.bench.global";

/// Runs the rate-limit benchmark and prints its report.
///
/// # Errors
/// [`BenchError`]: the database failed, or a benchmark worker did.
pub(super) async fn run(store: &Store, args: &BenchArgs) -> Result<(), BenchError> {
    let concurrency = args.concurrency.first().copied().unwrap_or(2);
    println!(
        "celeriac bench --rate-limits: {} unlimited no-op tasks per drain, c={concurrency}, {} limited waiting; \
         fleet-wide {}/s over {} s with {} workers",
        args.tasks, args.limited_backlog, args.global_rate, args.global_seconds, args.global_workers
    );
    store.rate_limit_clear(LIMITED, RateLimitScope::Worker).await?;
    store.message_purge(&args.queue).await?;
    // A first, unreported drain warms the caches and grows the table's files, which would
    // otherwise slow the first baseline only.
    drain(store, &BenchArgs { tasks: args.tasks / 4, ..args.clone() }, concurrency, 0).await?;
    for round in 1..=args.rounds.max(1) {
        store.message_purge(&args.queue).await?;
        let baseline = drain(store, args, concurrency, 0).await?;
        report(round, "baseline", args.tasks, baseline, None);
        let cold = drain(store, args, concurrency, args.limited_backlog).await?;
        report(round, &format!("{} limited enqueued ahead", args.limited_backlog), args.tasks, cold, Some(baseline));
        let warm = drain(store, args, concurrency, 0).await?;
        report(round, &format!("{} limited parked", args.limited_backlog), args.tasks, warm, Some(baseline));
    }
    store.message_purge(&args.queue).await?;
    global(store, args).await
}

fn report(round: usize, what: &str, tasks: usize, took: Duration, baseline: Option<Duration>) {
    let ratio =
        baseline.map_or_else(String::new, |b| format!("   {:.2} of baseline", b.as_secs_f64() / took.as_secs_f64()));
    println!(
        "drain r{round} {what:<36} {tasks:>8} tasks {:>7.2} s {:>9.0} tasks/s{ratio}",
        took.as_secs_f64(),
        rate(tasks, took)
    );
}

/// Enqueues `backlog` limited messages, then `args.tasks` unlimited ones, and times a worker
/// until it has run every unlimited one. Parked messages from earlier drains stay.
async fn drain(store: &Store, args: &BenchArgs, concurrency: usize, backlog: usize) -> Result<Duration, BenchError> {
    // Every drain starts from a vacuumed table: the dead rows the previous one left (which
    // autovacuum clears within its naptime) would slow whichever drain comes next.
    store.message_vacuum().await?;
    let limited = messages(LIMITED, backlog, &args.queue);
    for chunk in limited.chunks(args.batch.max(1)) {
        store.message_insert_many(chunk).await?;
    }
    let unlimited = messages(TASK, args.tasks, &args.queue);
    for chunk in unlimited.chunks(args.batch.max(1)) {
        store.message_insert_many(chunk).await?;
    }
    let done = Arc::new(AtomicU64::new(0));
    let mut registry = Registry::new();
    let counter = done.clone();
    registry.register_raw(TASK, move |_req: Request| {
        counter.fetch_add(1, Ordering::Relaxed);
        async { Outcome::Success(Value::Null) }
    });
    registry.register_raw(LIMITED, |_req: Request| async { Outcome::Success(Value::Null) });
    registry.rate_limit(LIMITED, "1/h")?;
    let worker =
        Worker::new(store.clone(), registry, quiet_config(&args.queue, concurrency, args.prefetch_multiplier))?;
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let handle = tokio::spawn(worker.run(shutdown.clone()));
    let target = args.tasks as u64;
    while done.load(Ordering::Relaxed) < target {
        if handle.is_finished() {
            return Err(BenchError::StoppedEarly);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = started.elapsed();
    shutdown.cancel();
    handle.await??;
    Ok(took)
}

/// Runs `args.global_workers` workers on a fleet-wide limit of `args.global_rate` per second and
/// prints how many tasks started in `args.global_seconds`.
async fn global(store: &Store, args: &BenchArgs) -> Result<(), BenchError> {
    let seconds = args.global_seconds.max(1.0);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let supply = (args.global_rate * (seconds + 10.0)).ceil() as usize + 100;
    let backlog = messages(GLOBAL, supply, &args.queue);
    for chunk in backlog.chunks(args.batch.max(1)) {
        store.message_insert_many(chunk).await?;
    }
    let spec = format!("{}/s", args.global_rate);
    store
        .rate_limit_set(GLOBAL, RateLimitScope::Global, &RateValue { spec: spec.clone(), per_second: args.global_rate })
        .await?;
    let starts: Arc<Mutex<Vec<(usize, Instant)>>> = Arc::default();
    let mut running = Vec::new();
    for index in 0..args.global_workers.max(1) {
        let mut registry = Registry::new();
        let starts = starts.clone();
        registry.register_raw(GLOBAL, move |_req: Request| {
            starts.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push((index, Instant::now()));
            async { Outcome::Success(Value::Null) }
        });
        let mut config = quiet_config(&args.queue, 4, args.prefetch_multiplier);
        config.hostname = format!("{}-{index}", config.hostname);
        let worker = Worker::new(store.clone(), registry, config)?;
        let shutdown = CancellationToken::new();
        running.push((shutdown.clone(), tokio::spawn(worker.run(shutdown))));
    }
    let first = loop {
        if let Some(first) = starts.lock().unwrap_or_else(std::sync::PoisonError::into_inner).first() {
            break first.1;
        }
        if running.iter().any(|(_, h)| h.is_finished()) {
            return Err(BenchError::StoppedEarly);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let window = Duration::from_secs_f64(seconds);
    tokio::time::sleep_until((first + window).into()).await;
    let in_window: Vec<usize> = starts
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .filter(|(_, t)| *t < first + window)
        .map(|(i, _)| *i)
        .collect();
    for (shutdown, handle) in running {
        shutdown.cancel();
        handle.await??;
    }
    store.rate_limit_clear(GLOBAL, RateLimitScope::Global).await?;
    store.message_purge(&args.queue).await?;
    let per_worker: Vec<String> =
        (0..args.global_workers.max(1)).map(|w| in_window.iter().filter(|i| **i == w).count().to_string()).collect();
    let observed = rate(in_window.len(), window);
    println!(
        "global limit {spec}, {} workers, {seconds} s: {} started, {observed:.2}/s = {:.3} of the limit; per worker {}",
        args.global_workers,
        in_window.len(),
        observed / args.global_rate,
        per_worker.join(" ")
    );
    Ok(())
}
