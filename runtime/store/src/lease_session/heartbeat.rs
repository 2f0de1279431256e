//! The heartbeat: renews every held lease and records this consumer's liveness.

use std::{sync::Arc, time::Duration, time::Instant};

use tokio_util::sync::CancellationToken;

use super::held::Held;
use crate::{maintenance::HeartbeatHealth, Store, WorkerInfo};

pub(crate) struct Heartbeat {
    pub(crate) store: Store,
    pub(crate) info: WorkerInfo,
    pub(crate) held: Arc<Held>,
    pub(crate) health: Arc<HeartbeatHealth>,
    pub(crate) interval: Duration,
}

impl Heartbeat {
    /// Beats every `interval` until `stop` is cancelled. A failure is logged when the beats
    /// start failing and when they succeed again, not at every beat.
    pub(crate) async fn run(self, stop: CancellationToken) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let lease = Duration::try_from_secs_f64(self.info.lease_seconds).unwrap_or(Duration::ZERO);
        let mut failing_since: Option<Instant> = None;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let leases = self.held.leases();
            let sent = Instant::now();
            let result = self.store.worker_heartbeat(&self.info, &leases).await;
            self.health.record(result.is_ok());
            match result {
                Ok(renewed) => {
                    self.held.renewed(&renewed, sent + lease);
                    if let Some(since) = failing_since.take() {
                        tracing::info!(
                            after = ?since.elapsed(),
                            "database reachable again; {} lease(s) renewed",
                            renewed.len()
                        );
                    }
                    // Rows being settled right now are skipped, so a short count is normal.
                    let missing = leases.len().saturating_sub(renewed.len());
                    if missing > 0 {
                        tracing::debug!(missing, "some held leases were not renewed (being settled, or lost)");
                    }
                }
                Err(e) => {
                    if failing_since.is_none() {
                        failing_since = Some(sent);
                        tracing::warn!(
                            error = %e,
                            held = leases.len(),
                            "heartbeat failed: leases are not being renewed until the database answers again"
                        );
                    } else {
                        tracing::debug!(error = %e, "heartbeat failed again");
                    }
                }
            }
        }
    }
}
