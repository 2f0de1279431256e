//! `celeriac rate-limit set|show|clear`: operators' rate limits, which every worker applies
//! within a second and which beat the apps' own.

use celeriac_protocol::Rate;
use celeriac_store::{RateLimitRow, RateLimitScope, RateValue, Store};
use clap::Subcommand;

use super::{store, CliError};

/// `celeriac rate-limit …`
#[derive(Debug, Subcommand)]
pub enum RateLimitAction {
    /// Limit a task type: fleet-wide (one token bucket in the database for every worker), or
    /// with --per-worker in each worker process (Celery's rate_limit). Beats the app's value
    /// until cleared; RATE 0 lifts the app's limit.
    Set {
        /// The task name, e.g. proj.tasks.call_api.
        task: String,
        /// Celery's syntax: N/s, N/m, N/h, or N per second (e.g. 10/s, 100/m); 0 for no limit.
        rate: String,
        /// Each worker on its own (Celery's rate_limit), instead of fleet-wide.
        #[arg(long)]
        per_worker: bool,
    },
    /// Remove an operator's limit: the app's value (if any) applies again.
    Clear {
        /// The task name.
        task: String,
        /// The per-worker value, instead of the fleet-wide one.
        #[arg(long)]
        per_worker: bool,
    },
    /// Every limit the database knows (the app's, the operator's, the one in force) and the
    /// messages waiting for a token.
    Show {
        /// Only this task.
        task: Option<String>,
    },
}

fn scope(per_worker: bool) -> RateLimitScope {
    if per_worker {
        RateLimitScope::Worker
    } else {
        RateLimitScope::Global
    }
}

/// Carries `action` out.
pub(super) async fn run(url: &str, action: RateLimitAction) -> Result<(), CliError> {
    let store = store(url, 1)?;
    match action {
        RateLimitAction::Set { task, rate, per_worker } => {
            let parsed = Rate::parse(&rate)?;
            let value = RateValue {
                spec: parsed.as_ref().map_or_else(|| rate.trim().to_owned(), |r| r.spec().to_owned()),
                per_second: parsed.as_ref().map_or(0.0, Rate::per_second),
            };
            let value = if value.spec.is_empty() { RateValue { spec: "0".into(), ..value } } else { value };
            store.rate_limit_set(&task, scope(per_worker), &value).await?;
            show(&store, Some(&task)).await
        }
        RateLimitAction::Clear { task, per_worker } => {
            if !store.rate_limit_clear(&task, scope(per_worker)).await? {
                eprintln!("celeriac: {task} had no {} limit set by an operator", scope(per_worker).as_str());
            }
            show(&store, Some(&task)).await
        }
        RateLimitAction::Show { task } => show(&store, task.as_deref()).await,
    }
}

/// Prints the limits (of `task`, or all) as a table.
pub(super) async fn show(store: &Store, task: Option<&str>) -> Result<(), CliError> {
    let rows: Vec<RateLimitRow> =
        store.rate_limit_list().await?.into_iter().filter(|r| task.is_none_or(|t| r.task_name == t)).collect();
    let waiting = store.message_parked_counts().await?;
    let text = |v: Option<&RateValue>| v.map_or_else(|| "-".to_owned(), |v| v.spec.clone());
    println!("{:<40} {:<10} {:>10} {:>10} {:>10} {:>9}", "task", "scope", "app", "set", "in force", "waiting");
    for r in &rows {
        let in_force = match r.effective() {
            Some(v) if v.per_second > 0.0 => v.spec.clone(),
            _ => "none".to_owned(),
        };
        let waiting = waiting.iter().find(|(t, _)| *t == r.task_name).map_or(0, |(_, n)| *n);
        println!(
            "{:<40} {:<10} {:>10} {:>10} {:>10} {:>9}",
            r.task_name,
            r.scope.as_str(),
            text(r.declared.as_ref()),
            text(r.set.as_ref()),
            in_force,
            waiting
        );
    }
    if rows.is_empty() {
        println!("(no rate limits{})", task.map(|t| format!(" for {t}")).unwrap_or_default());
    }
    Ok(())
}
