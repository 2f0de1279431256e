//! Statistics: live counters of a worker.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of a worker, readable while it runs.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Messages claimed.
    pub received: AtomicU64,
    /// Tasks that returned a value.
    pub succeeded: AtomicU64,
    /// Tasks that failed (including unknown names are counted in `dead_lettered` instead).
    pub failed: AtomicU64,
    /// Tasks re-scheduled by a retry.
    pub retried: AtomicU64,
    /// Messages moved to `dead_letter`.
    pub dead_lettered: AtomicU64,
    /// Claimed messages given back unstarted.
    pub released: AtomicU64,
    /// Claimed messages parked to wait for their rate limit.
    pub parked: AtomicU64,
    /// Outcomes written to the database.
    pub settled: AtomicU64,
    /// Claim statements issued.
    pub claims: AtomicU64,
    /// Time spent in claim statements, in microseconds.
    pub claim_micros: AtomicU64,
}

/// A snapshot of [`WorkerStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WorkerReport {
    /// Messages claimed.
    pub received: u64,
    /// Tasks that returned a value.
    pub succeeded: u64,
    /// Tasks that failed.
    pub failed: u64,
    /// Tasks re-scheduled.
    pub retried: u64,
    /// Messages moved to `dead_letter`.
    pub dead_lettered: u64,
    /// Claimed messages given back unstarted.
    pub released: u64,
    /// Claimed messages parked to wait for their rate limit.
    pub parked: u64,
    /// Outcomes written to the database.
    pub settled: u64,
}

impl WorkerStats {
    /// The current values.
    #[must_use]
    pub fn snapshot(&self) -> WorkerReport {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        WorkerReport {
            received: get(&self.received),
            succeeded: get(&self.succeeded),
            failed: get(&self.failed),
            retried: get(&self.retried),
            dead_lettered: get(&self.dead_lettered),
            released: get(&self.released),
            parked: get(&self.parked),
            settled: get(&self.settled),
        }
    }
}

/// The counters an outcome bumps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counter {
    Succeeded,
    Failed,
    Retried,
    DeadLettered,
    Released,
}

impl WorkerStats {
    /// Adds one to `counter`.
    pub(crate) fn count(&self, counter: Counter) {
        let c = match counter {
            Counter::Succeeded => &self.succeeded,
            Counter::Failed => &self.failed,
            Counter::Retried => &self.retried,
            Counter::DeadLettered => &self.dead_lettered,
            Counter::Released => &self.released,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}
