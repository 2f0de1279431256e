//! The Beat replacement: periodic schedules fired from the database by a leader-elected tick
//! inside any number of `celeriac worker -B` / `celeriac beat` processes. See `docs/beat.md`.
//!
//! ```text
//!  leader election (leader.rs) ──term──► tick (tick.rs): schedule_tick(term)
//!   lease row, renewed every TTL/3          │ per due row: plan.rs (pure) → fire.rs (message)
//!                                           ▼
//!                              one transaction: lease check, due rows (skip locked),
//!                              fire ledger, messages, next runs
//! ```
//!
//! [`sync`] writes the app's `beat_schedule` into the table at start.

pub mod django;
pub mod fire;
pub mod handover;
mod leader;
pub mod plan;
#[cfg(feature = "python")]
pub mod sync;
mod tick;

use std::time::Duration;

use celeriac_store::{service::Supervisor, Store};
use tokio::sync::watch;
use uuid::Uuid;

pub use leader::LeaderElection;
pub use tick::Ticker;

/// Scheduler settings. Every field has a default.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// How long the leader's lease lasts without renewal (renewed every third of it); a dead
    /// leader is replaced within about this long. Default: 15 s.
    pub lease_ttl: Duration,
    /// The longest the tick sleeps: how soon a new or edited row is noticed. Default: 5 s.
    pub max_sleep: Duration,
    /// Rows fired per transaction. Default: 1,000.
    pub batch: i64,
    /// How long the fire ledger keeps a fire. Default: 7 days.
    pub keep_fires: chrono::TimeDelta,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            lease_ttl: Duration::from_secs(15),
            max_sleep: Duration::from_secs(5),
            batch: 1_000,
            keep_fires: chrono::TimeDelta::days(7),
        }
    }
}

/// Starts the leader election and the tick on `services` for this process (`holder`, a random
/// id per process; `holder_name` for operators, e.g. `celeriac@host pid 42`).
pub fn start(services: &mut Supervisor, store: &Store, holder: Uuid, holder_name: String, config: SchedulerConfig) {
    let (term_tx, term_rx) = watch::channel(None);
    services.start(LeaderElection { store: store.clone(), holder, holder_name, ttl: config.lease_ttl, term: term_tx });
    services.start(Ticker { store: store.clone(), holder, term: term_rx, config });
}

/// The stable ramp bucket (0–99) of a schedule name: FNV-1a of its UTF-8 bytes, mod 100. Not
/// PostgreSQL's `hashtext`, which is not promised stable across major versions.
#[must_use]
pub fn ramp_bucket(name: &str) -> i16 {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    i16::try_from(hash % 100).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ramp_buckets_are_stable_and_spread() {
        assert_eq!((super::ramp_bucket(""), super::ramp_bucket("nightly")), (37, 58));
        let mut counts = [0u32; 100];
        for i in 0..10_000 {
            counts[super::ramp_bucket(&format!("schedule-{i}")) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (50..=150).contains(c)), "{counts:?}");
    }
}
