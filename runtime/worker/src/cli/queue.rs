//! `celeriac queue pause|resume|list|purge`: stop and start the claiming of a queue's messages
//! for the whole fleet, see every queue's counts, empty one.

use clap::Subcommand;

use super::{store, CliError};

/// `celeriac queue …`
#[derive(Debug, Subcommand)]
pub enum QueueAction {
    /// Stop every worker (and every Celery worker on the transport) from taking this queue's
    /// messages; enqueues go on and the messages wait. Running tasks finish.
    Pause {
        /// The queue.
        name: String,
        /// Why (shown by `queue list` and the dashboard).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Let workers take the queue's messages again (they are woken at once).
    Resume {
        /// The queue.
        name: String,
    },
    /// Every queue with its counts (estimated above 10,000, marked ~) and whether it is paused.
    List,
    /// Delete every message of the queue that no worker holds (as `celery purge -Q NAME`).
    Purge {
        /// The queue.
        name: String,
        /// Do it (without it, only say how many would go).
        #[arg(long)]
        yes: bool,
    },
}

/// Carries `action` out.
pub(super) async fn run(url: &str, action: QueueAction) -> Result<(), CliError> {
    let store = store(url, 1)?;
    match action {
        QueueAction::Pause { name, reason } => {
            if store.queue_pause(&name, reason.as_deref()).await? {
                println!("paused {name}: no worker takes its messages until `celeriac queue resume {name}`");
            } else {
                println!("{name} was paused already");
            }
        }
        QueueAction::Resume { name } => {
            if store.queue_resume(&name).await? {
                println!("resumed {name}");
            } else {
                println!("{name} was not paused");
            }
        }
        QueueAction::List => {
            println!(
                "{:<24} {:>10} {:>10} {:>10} {:>12} {:>14}  paused",
                "queue", "ready", "delayed", "leased", "rate_limited", "dead_lettered"
            );
            let count = |c: celeriac_store::Count| if c.exact { c.value.to_string() } else { format!("~{}", c.value) };
            for name in store.queue_names().await? {
                let q = store.queue_overview(&name).await?;
                let paused = q.paused.map_or_else(String::new, |p| match p.reason {
                    Some(reason) => format!("since {} ({reason})", p.paused_at.format("%Y-%m-%dT%H:%M:%SZ")),
                    None => format!("since {}", p.paused_at.format("%Y-%m-%dT%H:%M:%SZ")),
                });
                println!(
                    "{:<24} {:>10} {:>10} {:>10} {:>12} {:>14}  {paused}",
                    q.queue,
                    count(q.ready),
                    count(q.delayed),
                    count(q.leased),
                    count(q.rate_limited),
                    count(q.dead_lettered)
                );
            }
        }
        QueueAction::Purge { name, yes } => {
            if yes {
                println!("purged {} message(s) from {name}", store.message_purge(&name).await?);
            } else {
                let q = store.queue_overview(&name).await?;
                let n = q.ready.value + q.delayed.value + q.rate_limited.value;
                let about = if q.ready.exact && q.delayed.exact && q.rate_limited.exact { "" } else { "about " };
                println!("{about}{n} message(s) of {name} would be deleted; run again with --yes to delete them");
            }
        }
    }
    Ok(())
}
