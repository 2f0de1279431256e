//! `celeriac bench --results`: the drain rate of no-op Rust handlers with their results stored in
//! `celery_taskmeta` on the queue's database (written with the completion) against the same
//! drain storing nothing, side by side, round after round, with the ratio of each pair. Every
//! results run is checked: exactly one row per task.

use celeriac_store::{ResultTableConfig, Store};

use super::{drain_noop, messages, quiet_config, rate, BenchArgs, BenchError, TASK};
use crate::ResultsConfig;

/// One drain of `args.tasks` messages; returns tasks per second.
async fn drain(
    store: &Store,
    args: &BenchArgs,
    concurrency: usize,
    results: Option<ResultsConfig>,
) -> Result<f64, BenchError> {
    for chunk in messages(TASK, args.tasks, &args.queue).chunks(args.batch.max(1)) {
        store.message_insert_many(chunk).await?;
    }
    let config = crate::WorkerConfig { results, ..quiet_config(&args.queue, concurrency, args.prefetch_multiplier) };
    let (elapsed, _) = drain_noop(store, config, args.tasks).await?;
    Ok(rate(args.tasks, elapsed))
}

/// Runs the comparison and prints one line per drain and the ratio of each pair.
pub(super) async fn run(store: &Store, url: &str, args: &BenchArgs) -> Result<(), BenchError> {
    store.message_purge(&args.queue).await?;
    let table = store.result_table_open(&ResultTableConfig::celery()).await?;
    println!(
        "celeriac bench --results: {} no-op Rust tasks per drain, results in celery_taskmeta on the queue database \
         (pickle, written with the completion) vs none; {} rounds",
        args.tasks, args.rounds
    );
    let backend = format!("db+{url}");
    for round in 1..=args.rounds {
        for &concurrency in &args.concurrency {
            let none = drain(store, args, concurrency, None).await?;
            store.result_cleanup(&table, -1e9).await?;
            let with = drain(store, args, concurrency, Some(ResultsConfig::new(backend.clone()))).await?;
            let rows = store.result_count(&table).await?;
            let expected = i64::try_from(args.tasks).unwrap_or(i64::MAX);
            if rows != expected {
                println!("ERROR: {rows} result rows for {expected} tasks");
                return Err(BenchError::StoppedEarly);
            }
            println!(
                "round {round} c={concurrency:<3} no results {none:>9.0} tasks/s   db results {with:>9.0} tasks/s   ratio {:.2}",
                with / none
            );
        }
    }
    Ok(())
}
