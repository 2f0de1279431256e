//! Background maintenance that is safe to run in every worker at once.

use std::time::Duration;

use celeriac_store::{RescueReport, Store};
use tokio_util::sync::CancellationToken;

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
}

impl Default for RescuerConfig {
    fn default() -> Self {
        RescuerConfig {
            interval: Duration::from_secs(5),
            max_redeliveries: 3,
            worker_retention: Duration::from_secs(600),
            full_scan_every: 12,
        }
    }
}

/// Frees messages whose worker died (lease ran out), marking them redelivered, and dead-letters
/// those that exhausted their redeliveries. Uses `SKIP LOCKED`, so any number of rescuers may
/// run at once without doing the same work twice.
#[derive(Debug, Clone)]
pub struct Rescuer {
    store: Store,
    config: RescuerConfig,
    passes: u32,
}

impl Rescuer {
    /// A rescuer over `store`.
    #[must_use]
    pub fn new(store: Store, config: RescuerConfig) -> Self {
        Rescuer { store, config, passes: 0 }
    }

    /// One pass; the first and every `full_scan_every`-th pass look at all expired leases.
    ///
    /// # Errors
    /// Database errors.
    pub async fn run_once(&mut self) -> Result<RescueReport, celeriac_store::Error> {
        let full_scan = self.passes.is_multiple_of(self.config.full_scan_every.max(1));
        self.passes = self.passes.wrapping_add(1);
        let report = self.store.message_rescue(self.config.max_redeliveries, full_scan).await?;
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
        self.store.worker_prune(self.config.worker_retention.as_secs_f64()).await?;
        Ok(report)
    }

    /// Runs [`Rescuer::run_once`] every `interval` until `stop` is cancelled; errors are logged.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut ticker = tokio::time::interval(self.config.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            if let Err(e) = self.run_once().await {
                tracing::debug!(error = %e, "rescuer: pass failed");
            }
        }
    }
}
