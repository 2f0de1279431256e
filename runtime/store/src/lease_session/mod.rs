//! The lease session: what every consumer of the queue (the Rust worker, and the kombu
//! transport's `Consumer` under Python Celery workers) does between claiming a message and
//! writing its outcome, in one place with one error policy.
//!
//! ```text
//!  claim ──hold──► held leases ◄── heartbeat (renews them, records liveness)
//!                      │                     │
//!  outcome ──settle──► completer (batches, fenced writes; retries while unreachable)
//!                                            ▼
//!                               rescuer (frees dead consumers' leases, judged by liveness)
//! ```
//!
//! A consumer registers a `celeriac.worker` row and calls [`LeaseSession::start`]; it then
//! [`hold`](LeaseSession::hold)s what it claims, asks [`expired`](LeaseSession::expired)
//! before starting a message it held for a while, and hands each outcome to
//! [`settle`](LeaseSession::settle) (batched, in the background) or
//! [`settle_now`](LeaseSession::settle_now) (written before it returns, for callers that must
//! answer synchronously). [`close`](LeaseSession::close) writes what is pending (for a bounded
//! time), stops the background tasks and removes the worker row, unless outcomes could not be
//! written: then the row stays, so rescuers see the consumer dead after a lease and deliver
//! those messages again.
//!
//! The error policy, for a database that is unreachable or refuses: every statement is retried
//! with [`crate::Backoff`] and logged; an outcome is never dropped silently (see the completer);
//! the heartbeat logs when it starts and stops failing; the rescuer judges other consumers only
//! as far as this one's own heartbeats succeed ([`HeartbeatHealth`]).

mod completer;
mod heartbeat;
mod held;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    maintenance::{HeartbeatHealth, Reindexer, Rescuer, RescuerConfig, Vacuumer},
    service::{Every, Supervisor},
    ClaimedMessage, DeadLetterParams, Finish, Lease, ResultTable, Store, WorkerInfo,
};
use completer::{Command, Completer, WriteProgress};
use heartbeat::Heartbeat;
use held::Held;

/// What becomes of a held message: the write the completer makes, fenced by its lease.
#[derive(Debug, Clone, PartialEq)]
pub enum Settlement {
    /// Finished (succeeded, or failed for good): the row is deleted.
    Complete(Lease),
    /// Given back unstarted (shutdown, a lease that ran out before the start): ready again at
    /// once, not counted as a redelivery.
    Release(Lease),
    /// Back to its queue to run again (Celery's `Reject(requeue=True)`), counted as a
    /// redelivery; dead-lettered once it has had `max_redeliveries`.
    Requeue(Lease),
    /// Moved to `dead_letter` with its reason.
    DeadLetter(DeadLetterParams),
    /// Parked unstarted: its task's rate limit has no token for it soon. It waits in the
    /// database, out of the claims' way, until a worker that limits its task takes it back
    /// (see `migrations/0004_rate_limits.sql`).
    Park {
        /// The lease held.
        lease: Lease,
        /// The task name it waits under (recorded on a row that has none).
        task: String,
    },
    /// Re-scheduled as a new delivery at `eta` with a new envelope (Celery's `Task.retry`).
    Retry {
        /// The lease held.
        lease: Lease,
        /// The envelope of the next run.
        payload: Vec<u8>,
        /// When it may run.
        eta: DateTime<Utc>,
    },
    /// Finished, with effects that commit with the row's deletion: the result row (when results
    /// go to the queue database's result table) and follow-up messages (callbacks, the next task
    /// of a chain). None of them is written if the lease was lost.
    Finish(Box<Finish>),
}

impl Settlement {
    /// The lease it settles.
    #[must_use]
    pub fn lease(&self) -> Lease {
        match self {
            Settlement::Complete(l)
            | Settlement::Release(l)
            | Settlement::Requeue(l)
            | Settlement::Park { lease: l, .. }
            | Settlement::Retry { lease: l, .. } => *l,
            Settlement::DeadLetter(d) => d.lease,
            Settlement::Finish(f) => f.lease,
        }
    }
}

/// Called with every batch of settlements once it is written, and how long the writing took
/// (statistics, metrics).
pub type SettledHook = Arc<dyn Fn(&[Settlement], std::time::Duration) + Send + Sync>;

/// Settings of a [`LeaseSession`].
#[derive(Debug, Clone)]
pub struct LeaseSessionConfig {
    /// How often held leases are renewed (and liveness recorded). Default: 5 s; keep it well
    /// under the lease (the Rust worker uses a sixth of it at most).
    pub heartbeat_interval: Duration,
    /// Redeliveries before a requeued or rescued message is dead-lettered. Default: 3.
    pub max_redeliveries: i32,
    /// The rescuer this session runs beside its heartbeat (`None`: none). Its
    /// `max_redeliveries` is taken from this config. Default: the rescuer's defaults.
    pub rescuer: Option<RescuerConfig>,
    /// How long [`LeaseSession::close`] keeps trying to write the outcomes handed over before
    /// it gives up on them (their leases run out; the messages run again). Default: 15 s.
    pub write_at_close: Duration,
    /// The queue database's result table, which [`Settlement::Finish`] results are written to
    /// (`None`: their results are not stored). Default: none.
    pub result_table: Option<Arc<ResultTable>>,
}

impl Default for LeaseSessionConfig {
    fn default() -> Self {
        LeaseSessionConfig {
            heartbeat_interval: Duration::from_secs(5),
            max_redeliveries: 3,
            rescuer: Some(RescuerConfig::default()),
            write_at_close: Duration::from_secs(15),
            result_table: None,
        }
    }
}

/// How [`LeaseSession::settle_now`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettledNow {
    /// Written. `held` is false when the fence refused it: the lease was lost meanwhile.
    Written {
        /// Whether this consumer still held the lease.
        held: bool,
    },
    /// The database could not be reached: handed to the completer, which writes it once it
    /// can (still fenced by the lease).
    Queued,
}

/// One consumer's held leases, heartbeat, completer and rescuer. See the module docs.
pub struct LeaseSession {
    store: Store,
    info: WorkerInfo,
    max_redeliveries: i32,
    result_table: Option<Arc<ResultTable>>,
    held: Arc<Held>,
    health: Arc<HeartbeatHealth>,
    commands: mpsc::UnboundedSender<Command>,
    on_settled: Option<SettledHook>,
    /// The heartbeat, the rescuer and the completer (started in that order, stopped in the
    /// reverse one: the last outcomes are written while the leases are still renewed).
    services: Mutex<Supervisor>,
    closed: AtomicBool,
}

impl std::fmt::Debug for LeaseSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseSession")
            .field("worker", &self.info.id)
            .field("held", &self.held.len())
            .finish_non_exhaustive()
    }
}

impl LeaseSession {
    /// Starts the heartbeat, the completer and (if configured) the rescuer of the consumer
    /// `info` (registered already) on the current tokio runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    #[must_use]
    pub fn start(
        store: Store,
        info: WorkerInfo,
        config: &LeaseSessionConfig,
        on_settled: Option<SettledHook>,
    ) -> Arc<LeaseSession> {
        let held = Arc::new(Held::default());
        let health = Arc::new(HeartbeatHealth::default());
        let (commands, received) = mpsc::unbounded_channel();
        let mut services = Supervisor::default();
        services.start(Every(Heartbeat {
            store: store.clone(),
            info: info.clone(),
            held: held.clone(),
            health: health.clone(),
            interval: config.heartbeat_interval,
            failing_since: None,
        }));
        if let Some(rescuer) = config.rescuer.clone() {
            // Judges other consumers only as far as this one's own heartbeats allow: after an
            // outage longer than the lease, nobody's leases are freed before they could be renewed.
            let config = RescuerConfig { max_redeliveries: config.max_redeliveries, ..rescuer };
            services.start(Every(Rescuer::new(store.clone(), config).with_health(health.clone()).for_worker(info.id)));
            services.start(Every(Vacuumer::new(store.clone())));
            services.start(Every(Reindexer::new(store.clone())));
        }
        services.start(Completer {
            store: store.clone(),
            worker_id: info.id,
            max_redeliveries: config.max_redeliveries,
            result_table: config.result_table.clone(),
            held: held.clone(),
            on_settled: on_settled.clone(),
            commands: received,
            write_for: config.write_at_close,
            give_up: CancellationToken::new(),
        });
        Arc::new(LeaseSession {
            store,
            info,
            max_redeliveries: config.max_redeliveries,
            result_table: config.result_table.clone(),
            held,
            health,
            commands,
            on_settled,
            services: Mutex::new(services),
            closed: AtomicBool::new(false),
        })
    }

    /// The consumer's id (the `leased_by` of its claims).
    #[must_use]
    pub fn worker_id(&self) -> Uuid {
        self.info.id
    }

    /// The consumer's lease length.
    #[must_use]
    pub fn lease(&self) -> Duration {
        Duration::try_from_secs_f64(self.info.lease_seconds).unwrap_or(Duration::ZERO)
    }

    /// Holds what a claim sent at `claimed_at` brought: the heartbeat renews it from now on.
    pub fn hold(&self, claimed: &[ClaimedMessage], claimed_at: Instant) {
        self.held.add(claimed.iter().map(|m| (m.lease, m.redeliveries > 0)), claimed_at + self.lease());
    }

    /// Whether `lease` is held and may have run out: the heartbeat has not renewed it in time
    /// (the database was unreachable), so another consumer may have it by now. Such a message
    /// must not be started.
    #[must_use]
    pub fn expired(&self, lease: Lease) -> bool {
        self.held.expired(lease, Instant::now())
    }

    /// Whether a held message is a suspect (it came back after a lost lease or a requeue).
    #[must_use]
    pub fn holds_suspect(&self) -> bool {
        self.held.holds_suspect()
    }

    /// How many leases are held.
    #[must_use]
    pub fn held_count(&self) -> usize {
        self.held.len()
    }

    /// Liveness as the rescuer reads it.
    #[must_use]
    pub fn health(&self) -> Arc<HeartbeatHealth> {
        self.health.clone()
    }

    /// Hands an outcome to the completer, which writes it within milliseconds (batched with
    /// others). False once the session is closed (the lease then runs out; the message is
    /// delivered again).
    pub fn settle(&self, settlement: Settlement) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        let lease = settlement.lease();
        let sent = self.commands.send(Command::Settle(settlement)).is_ok();
        if sent {
            self.held.settling(lease);
        }
        sent
    }

    /// Writes an outcome before returning, for callers that answer synchronously (the kombu
    /// transport's reject and restore). When the database cannot be reached, the outcome goes
    /// to the completer instead ([`SettledNow::Queued`]), which retries.
    ///
    /// # Errors
    /// The server refused the statement: the outcome is dropped (logged) and the lease no
    /// longer renewed, so the message is delivered again after it.
    pub async fn settle_now(&self, settlement: Settlement) -> crate::Result<SettledNow> {
        let started = std::time::Instant::now();
        let batch = std::slice::from_ref(&settlement);
        let written = completer::write_batch(
            &self.store,
            self.info.id,
            self.max_redeliveries,
            self.result_table.as_deref(),
            batch,
            &mut WriteProgress::default(),
        )
        .await;
        match written {
            Ok(n) => {
                completer::written(&self.held, self.on_settled.as_ref(), batch, started.elapsed());
                Ok(SettledNow::Written { held: n == 1 })
            }
            Err(e) if e.is_connection() && self.settle(settlement.clone()) => {
                tracing::warn!(error = %e, message_id = settlement.lease().id, "database unreachable; the outcome is written once it answers");
                Ok(SettledNow::Queued)
            }
            Err(e) => {
                tracing::error!(error = %e, message_id = settlement.lease().id, "the database refused an outcome; the message will be delivered again");
                self.held.remove([settlement.lease()]);
                Err(e)
            }
        }
    }

    /// Stops renewing `lease` without writing anything (a task abandoned at shutdown): it runs
    /// out and the message is delivered again.
    pub fn forget(&self, lease: Lease) {
        self.held.remove([lease]);
    }

    /// Resolves once every outcome handed over before the call is written; an error when the
    /// session gave up on them (closed before the database answered).
    pub fn flush(&self) -> oneshot::Receiver<()> {
        let (done, written) = oneshot::channel();
        // Closed already: `done` is dropped with the error, nothing more will be written.
        let _ = self.commands.send(Command::Flush(done));
        written
    }

    /// Gives back every held message whose outcome was not handed over (prefetched, or
    /// delivered and not finished), in one statement. Returns how many were still held.
    ///
    /// # Errors
    /// Connection errors: the leases then run out and the messages are delivered again.
    pub async fn give_back_idle(&self) -> crate::Result<usize> {
        let idle = self.held.idle();
        if idle.is_empty() {
            return Ok(0);
        }
        let released = self.store.message_release_many(self.info.id, &idle, false).await?;
        self.held.remove(idle);
        Ok(released.len())
    }

    /// Stops taking outcomes, writes those handed over (giving up after
    /// [`LeaseSessionConfig::write_at_close`]), stops the heartbeat and the rescuer, and
    /// removes the worker row when nothing is left held; otherwise keeps it (once its heartbeat
    /// is a lease old, rescuers deliver those messages again) and warns. Returns how many leases
    /// were left held. Later calls return at once.
    pub async fn close(&self) -> usize {
        if self.closed.swap(true, Ordering::AcqRel) {
            return self.held.len();
        }
        let mut services = std::mem::take(&mut *self.services.lock().unwrap_or_else(PoisonError::into_inner));
        services.stop().await;
        let left = self.held.len();
        if left == 0 {
            if let Err(e) = self.store.worker_deregister(self.info.id).await {
                tracing::warn!(error = %e, "could not remove the worker row (a rescuer removes it later)");
            }
        } else {
            tracing::warn!(count = left, "stopping with unsettled messages; they run again after their lease");
        }
        left
    }
}
