//! Leader election: the [`SCHEDULER_LEASE`] row, taken by one process at a time with an
//! increasing term and renewed well inside its time to live.
//!
//! Leadership only saves work; it is not what prevents double fires (every tick re-checks the
//! term inside its own transaction, and the schedule rows and the fire ledger do the rest). A
//! process identifies itself by a random id, never by host name, so two processes on one host
//! (or two containers with one name) are two candidates. The lease is a row, not a session
//! advisory lock, so it works behind PgBouncer in transaction mode.

use std::time::{Duration, Instant};

use celeriac_store::{service::Service, Store, SCHEDULER_LEASE};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Campaigns for the scheduler lease and keeps it; publishes the term it holds (`None`: not
/// the leader) on a watch channel.
pub struct LeaderElection {
    pub(super) store: Store,
    pub(super) holder: Uuid,
    pub(super) holder_name: String,
    pub(super) ttl: Duration,
    pub(super) term: watch::Sender<Option<i64>>,
}

impl LeaderElection {
    /// One campaign or renewal; returns the term now held. `trusted_until` is when a leader
    /// whose renewals fail stops counting on its lease.
    async fn step(&self, held: Option<i64>, trusted_until: &mut Instant) -> Option<i64> {
        let started = Instant::now();
        let ttl = self.ttl.as_secs_f64();
        let result = match held {
            Some(term) => self.store.lease_renew(SCHEDULER_LEASE, self.holder, term, ttl).await,
            None => self.store.lease_acquire(SCHEDULER_LEASE, self.holder, &self.holder_name, ttl).await,
        };
        match result {
            Ok(Some(lease)) => {
                if held != Some(lease.term) {
                    tracing::info!(term = lease.term, "scheduler: this process is the leader (term {})", lease.term);
                }
                // Stop trusting the lease a margin before it could have run out.
                *trusted_until = started + self.ttl.mul_f64(0.8);
                Some(lease.term)
            }
            Ok(None) => {
                if let Some(term) = held {
                    tracing::warn!(term, "scheduler: lost the lease (it ran out or was taken over)");
                }
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "scheduler: cannot reach the database for the lease");
                match held {
                    Some(term) if Instant::now() >= *trusted_until => {
                        tracing::warn!(term, "scheduler: stepping down: the lease was not renewed in time");
                        None
                    }
                    other => other,
                }
            }
        }
    }
}

impl Service for LeaderElection {
    fn name(&self) -> &'static str {
        "leader-election"
    }

    async fn run(self, shutdown: CancellationToken) {
        let mut held: Option<i64> = None;
        let mut trusted_until = Instant::now();
        loop {
            let before = held;
            held = self.step(held, &mut trusted_until).await;
            self.term.send_if_modified(|t| std::mem::replace(t, held) != held);
            // A lease that ran out unclaimed is retaken at once; otherwise a third of the TTL.
            let pause = if before.is_some() && held.is_none() { Duration::ZERO } else { self.ttl / 3 };
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(pause) => {}
            }
        }
        self.term.send_replace(None);
        if let Some(term) = held {
            // Hand over at once rather than after the TTL.
            match self.store.lease_release(SCHEDULER_LEASE, self.holder, term).await {
                Ok(_) => tracing::info!(term, "scheduler: gave up the lease"),
                Err(e) => tracing::warn!(error = %e, "scheduler: cannot give up the lease; it runs out by itself"),
            }
        }
    }
}
