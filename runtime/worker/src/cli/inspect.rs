//! `celeriac inspect …`: the state of the queues and the newest dead letters.

use clap::Subcommand;

use super::{store, CliError};

/// `celeriac inspect …`
#[derive(Debug, Subcommand)]
pub enum Inspect {
    /// Per queue: ready, delayed (eta in the future), leased, rate-limited (waiting for a
    /// token) and dead-lettered counts.
    Queues,
    /// Rate limits in force and the messages waiting for a token (as `celeriac rate-limit show`).
    RateLimits,
    /// Live workers (from the worker table, no broadcast): name, pid, queues, concurrency,
    /// heartbeat age and the messages each holds.
    Workers,
    /// The newest dead-lettered messages with their reasons.
    DeadLetters {
        /// How many to show.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i64).range(1..))]
        limit: i64,
    },
}

/// Prints what `what` asks for.
pub(super) async fn run(url: &str, what: Inspect) -> Result<(), CliError> {
    match what {
        Inspect::Queues => {
            let stats = store(url, 1)?.queue_stats().await?;
            println!(
                "{:<24} {:>10} {:>10} {:>10} {:>12} {:>14}",
                "queue", "ready", "delayed", "leased", "rate_limited", "dead_lettered"
            );
            for s in stats {
                println!(
                    "{:<24} {:>10} {:>10} {:>10} {:>12} {:>14}",
                    s.queue, s.ready, s.delayed, s.leased, s.rate_limited, s.dead_lettered
                );
            }
        }
        Inspect::RateLimits => super::rate_limit::show(&store(url, 1)?, None).await?,
        Inspect::Workers => {
            println!(
                "{:<32} {:>8} {:>5} {:>6} {:>10}  {:<25} queues",
                "worker", "pid", "conc", "held", "heartbeat", "started"
            );
            for w in store(url, 1)?.worker_list().await? {
                println!(
                    "{:<32} {:>8} {:>5} {:>6} {:>9.1}s  {:<25} {}",
                    w.hostname,
                    w.pid,
                    w.concurrency,
                    w.held,
                    w.heartbeat_age,
                    w.started_at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                    w.queues.join(",")
                );
            }
        }
        Inspect::DeadLetters { limit } => {
            for d in store(url, 1)?.dead_letter_list(limit).await? {
                println!(
                    "{} {} queue={} task={} id={} [{}] {}",
                    d.id,
                    d.failed_at.to_rfc3339(),
                    d.queue,
                    d.task_name.as_deref().unwrap_or("?"),
                    d.task_id.as_deref().unwrap_or("?"),
                    d.reason_code,
                    d.reason
                );
            }
        }
    }
    Ok(())
}
