//! The heartbeat: renews every held lease and records this consumer's liveness.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use super::held::Held;
use crate::{maintenance::HeartbeatHealth, service::Periodic, Store, WorkerInfo};

/// Renews the held leases every `interval` and records each beat in `health`. A failure is
/// logged when the beats start failing and when they succeed again, not at every beat.
pub(crate) struct Heartbeat {
    pub(crate) store: Store,
    pub(crate) info: WorkerInfo,
    pub(crate) held: Arc<Held>,
    pub(crate) health: Arc<HeartbeatHealth>,
    pub(crate) interval: Duration,
    pub(crate) failing_since: Option<Instant>,
}

impl Periodic for Heartbeat {
    /// How many leases were renewed.
    type Report = usize;

    fn name(&self) -> &'static str {
        "heartbeat"
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    async fn run_once(&mut self) -> crate::Result<usize> {
        let lease = Duration::try_from_secs_f64(self.info.lease_seconds).unwrap_or(Duration::ZERO);
        let leases = self.held.leases();
        let sent = Instant::now();
        let result = self.store.worker_heartbeat(&self.info, &leases).await;
        self.health.record(result.is_ok());
        match result {
            Ok(renewed) => {
                self.held.renewed(&renewed, sent + lease);
                if let Some(since) = self.failing_since.take() {
                    tracing::info!(after = ?since.elapsed(), "database reachable again; {} lease(s) renewed", renewed.len());
                }
                // Rows being settled right now are skipped, so a short count is normal.
                let missing = leases.len().saturating_sub(renewed.len());
                if missing > 0 {
                    tracing::debug!(missing, "some held leases were not renewed (being settled, or lost)");
                }
                Ok(renewed.len())
            }
            Err(e) => {
                if self.failing_since.is_none() {
                    self.failing_since = Some(sent);
                    tracing::warn!(
                        error = %e,
                        held = leases.len(),
                        "heartbeat failed: leases are not being renewed until the database answers again"
                    );
                }
                Err(e)
            }
        }
    }
}
