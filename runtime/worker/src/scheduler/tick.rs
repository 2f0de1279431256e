//! The tick: while this process leads, fires the due schedules ([`Store::schedule_tick`]) and
//! sleeps until the next one is due (at most [`super::SchedulerConfig::max_sleep`], so new and
//! edited rows are picked up), never on a fixed poll.

use std::time::{Duration, Instant};

use celeriac_store::{service::Service, Backoff, Store, TickReport};
use chrono::Utc;
use futures_util::FutureExt as _;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{fire, plan::plan, SchedulerConfig};

/// The pause when due rows are locked by another transaction.
const LOCKED_PAUSE: Duration = Duration::from_millis(250);

/// Fires due schedules while the leader election says this process leads.
pub struct Ticker {
    pub(super) store: Store,
    pub(super) holder: Uuid,
    pub(super) term: watch::Receiver<Option<i64>>,
    pub(super) config: SchedulerConfig,
}

impl Ticker {
    /// One tick at `term`: fires what is due (up to one batch) and logs what happened.
    ///
    /// # Errors
    /// Database errors; nothing of the tick was written then.
    pub async fn run_once(&self, term: i64) -> celeriac_store::Result<TickReport> {
        let mut sent: Vec<(String, String)> = Vec::new();
        let report = self
            .store
            .schedule_tick(self.holder, term, self.config.batch, self.config.lease_ttl / 2, |schedule, now| {
                let decided = plan(schedule, now, |s, slot| fire::build(s, slot, now));
                if !decided.fires.is_empty() {
                    sent.push((schedule.definition.name.clone(), schedule.definition.task.clone()));
                }
                decided
            })
            .await?;
        if report.refused == 0 {
            for (name, task) in &sent {
                tracing::info!(schedule = %name, "Scheduler: Sending due task {name} ({task})");
            }
        } else {
            tracing::error!(refused = report.refused, "scheduler: the fire ledger refused slots already fired");
        }
        for (name, reason) in &report.disabled {
            tracing::warn!(schedule = %name, "scheduler: disabled {name}: {reason}");
        }
        Ok(report)
    }

    /// How long to wait after `report`.
    fn pause(&self, report: &TickReport) -> Duration {
        if report.not_leader {
            return self.config.max_sleep;
        }
        if report.more {
            return Duration::ZERO;
        }
        match (report.next_due, report.db_now) {
            // Due, yet nothing was taken: the rows are locked by another transaction (a flip,
            // run-now, an operator's): look again shortly rather than spin.
            (Some(due), Some(now)) if due <= now && report.due == 0 => LOCKED_PAUSE.min(self.config.max_sleep),
            (Some(due), Some(now)) => (due - now).to_std().unwrap_or(Duration::ZERO).min(self.config.max_sleep),
            _ => self.config.max_sleep,
        }
    }
}

impl Service for Ticker {
    fn name(&self) -> &'static str {
        "scheduler-tick"
    }

    async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new();
        let mut last_prune: Option<Instant> = None;
        loop {
            let term = *self.term.borrow_and_update();
            let pause = match term {
                None => Duration::MAX,
                // A panic (a bug) fails this tick only: its transaction is rolled back, and the
                // next tick runs after the backoff, as after a database error.
                Some(term) => match std::panic::AssertUnwindSafe(self.run_once(term))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|panic| {
                        Err(celeriac_store::Error::Invalid(format!("the tick panicked: {}", panic_text(&panic))))
                    }) {
                    Ok(report) => {
                        backoff.reset();
                        if last_prune.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600)) {
                            last_prune = Some(Instant::now());
                            self.prune().await;
                        }
                        self.pause(&report)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?backoff.peek(), "scheduler: tick failed; nothing of it was fired");
                        if !backoff.wait(&shutdown).await {
                            return;
                        }
                        continue;
                    }
                },
            };
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                changed = self.term.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(pause.min(Duration::from_secs(86_400))) => {}
            }
        }
    }
}

impl Ticker {
    async fn prune(&self) {
        let before = Utc::now() - self.config.keep_fires;
        match self.store.schedule_fire_prune(before, 10_000).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(pruned = n, "scheduler: pruned the fire ledger"),
            Err(e) => tracing::debug!(error = %e, "scheduler: cannot prune the fire ledger"),
        }
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}
