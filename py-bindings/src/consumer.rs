//! `Consumer`: what the kombu transport needs to let a Python Celery worker consume celeriac's
//! queue with the same guarantees as a celeriac worker: claims are leases, a background thread
//! heartbeats them (so a long task is never handed to someone else), acks delete the row
//! (batched in the background like the Rust worker's completions), requeue and restore free
//! the lease, and the messages of consumers that died are redelivered by the same rescuer the
//! Rust worker runs.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::{Duration, Instant},
};

use celeriac_store::{
    maintenance::RescuerConfig, service::Supervisor, ClaimParams, DeadLetterParams, DeadLetterReason, Lease,
    LeaseSession, LeaseSessionConfig, SettledNow, Settlement, Store, WorkerInfo,
};
use pyo3::{
    exceptions::{PyRuntimeError, PyValueError},
    prelude::*,
    types::PyBytes,
};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::{
    errors::Doing,
    runtime::{block_on, runtime},
    store::PyStore,
    subscriber::Subscriber,
};

/// A claimed message as Python sees it: `(id, attempt, redelivered, queue, envelope, revoked)`.
type Claimed<'py> = (i64, i32, bool, String, Bound<'py, PyBytes>, bool);

/// A registered consumer of celeriac's queue (one per kombu channel).
#[pyclass(name = "Consumer", module = "celeriac._native", frozen)]
pub struct Consumer {
    owner: Py<PyStore>,
    store: Store,
    pid: u32,
    info: WorkerInfo,
    /// Held leases, their heartbeat, the ack completer and the rescuer: the same machinery as
    /// the Rust worker's.
    session: Arc<LeaseSession>,
    wake: Arc<Notify>,
    queues: Arc<Mutex<Vec<String>>>,
    /// The wake-up listener.
    services: Mutex<Supervisor>,
    closed: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Consumer {
    fn same_process(&self) -> PyResult<()> {
        if std::process::id() == self.pid {
            Ok(())
        } else {
            Err(PyRuntimeError::new_err(
                "this celeriac Consumer belongs to the process that created it (it was inherited through fork); \
                 open a new connection in this process",
            ))
        }
    }

    /// Writes `settlement` now (or, with the database unreachable, hands it to the completer,
    /// which writes it once it can). Returns whether this consumer still held the lease (true
    /// when queued: it is written if so).
    fn settle_now(&self, py: Python<'_>, settlement: Settlement) -> PyResult<bool> {
        self.same_process()?;
        let session = self.session.clone();
        match block_on(py, async move { session.settle_now(settlement).await })? {
            Ok(SettledNow::Written { held }) => Ok(held),
            Ok(SettledNow::Queued) => Ok(true),
            Err(e) => Err(self.owner.get().error(&e, Doing::Other)),
        }
    }
}

#[pymethods]
impl Consumer {
    /// Registers a consumer named `hostname` in `celeriac.worker` and starts its heartbeat,
    /// rescuer, wake-up listener and ack batching on celeriac's I/O thread.
    #[new]
    #[pyo3(signature = (store, hostname, *, concurrency=1, lease_seconds=30.0, max_redeliveries=3))]
    fn new(
        py: Python<'_>,
        store: Py<PyStore>,
        hostname: String,
        concurrency: i32,
        lease_seconds: f64,
        max_redeliveries: i32,
    ) -> PyResult<Self> {
        if !(lease_seconds.is_finite() && lease_seconds >= 1.0) {
            return Err(PyValueError::new_err(format!("lease_seconds must be at least 1, got {lease_seconds}")));
        }
        let pg = store.get().store()?;
        let info = WorkerInfo {
            id: Uuid::new_v4(),
            hostname,
            pid: i32::try_from(std::process::id()).unwrap_or(i32::MAX),
            queues: Vec::new(),
            concurrency,
            lease_seconds,
            rate_limited: Vec::new(),
            kind: celeriac_store::ConsumerKind::Kombu,
        };
        {
            let (pg, info) = (pg.clone(), info.clone());
            block_on(py, async move { pg.worker_register(&info).await })?
                .map_err(|e| store.get().error(&e, Doing::Other))?;
        }
        let wake = Arc::new(Notify::new());
        let queues: Arc<Mutex<Vec<String>>> = Arc::default();
        let rt = runtime()?;
        let session = {
            let _in_runtime = rt.enter();
            let config = LeaseSessionConfig {
                // Six beats per lease, at most every 5 s (the Rust worker's default).
                heartbeat_interval: Duration::from_secs_f64((lease_seconds / 6.0).clamp(0.25, 5.0)),
                max_redeliveries,
                rescuer: Some(RescuerConfig::default()),
                // `close` waits for the acks itself (`flush`, 10 s) before it closes the session.
                write_at_close: Duration::ZERO,
                result_table: None,
            };
            LeaseSession::start(pg.clone(), info.clone(), &config, None)
        };
        let mut services = Supervisor::default();
        {
            let _in_runtime = rt.enter();
            let (wake, queues) = (wake.clone(), queues.clone());
            services.start(pg.listener().service(move |wakeup| {
                if wakeup.concerns(&lock(&queues)) {
                    wake.notify_one();
                }
            }));
        }
        Ok(Consumer {
            owner: store,
            store: pg,
            pid: std::process::id(),
            info,
            session,
            wake,
            queues,
            services: Mutex::new(services),
            closed: AtomicBool::new(false),
        })
    }

    /// This consumer's id (the `leased_by` of its claims).
    #[getter]
    fn id(&self) -> String {
        self.info.id.to_string()
    }

    /// Claims up to `limit` ready messages from `queues` (priority desc, then eta, then id),
    /// leased to this consumer. Returns `(id, attempt, redelivered, queue, envelope, revoked)`
    /// tuples; `revoked` says the task id is revoked (`celeriac.revoked`).
    fn claim<'py>(&self, py: Python<'py>, queues: Vec<String>, limit: i64) -> PyResult<Vec<Claimed<'py>>> {
        self.same_process()?;
        if self.closed.load(Ordering::Acquire) {
            return Err(PyRuntimeError::new_err("this celeriac Consumer is closed"));
        }
        {
            let mut known = lock(&self.queues);
            if *known != queues {
                known.clone_from(&queues);
            }
        }
        let (store, worker, lease_seconds) = (self.store.clone(), self.info.id, self.info.lease_seconds);
        // At most one suspect held at a time (see `ClaimParams::suspects`).
        let suspects = i64::from(!self.session.holds_suspect());
        let sent = Instant::now();
        let claimed = block_on(py, async move {
            let params = ClaimParams {
                worker_id: worker,
                queues: &queues,
                limit,
                lease_seconds,
                after: None,
                suspects,
                park: &[],
            };
            store.message_claim(&params).await
        })?
        .map_err(|e| self.owner.get().error(&e, Doing::Other))?;
        self.session.hold(&claimed, sent);
        Ok(claimed
            .into_iter()
            .map(|m| (m.lease.id, m.lease.attempt, m.redelivered, m.queue, PyBytes::new(py, &m.payload), m.revoked))
            .collect())
    }

    /// Acknowledges a finished message: its row is deleted (fenced by the lease) in the next
    /// background batch, within milliseconds. Returns immediately.
    fn ack(&self, id: i64, attempt: i32) -> PyResult<()> {
        self.same_process()?;
        if self.session.settle(Settlement::Complete(Lease { id, attempt })) {
            Ok(())
        } else {
            Err(PyRuntimeError::new_err("this celeriac Consumer is closed"))
        }
    }

    /// Whether the lease on a claimed message may have run out: the heartbeat could not renew
    /// it in time (the database was unreachable), so another consumer may have the message by
    /// now. Such a message must not be started; give it back with `restore`.
    fn expired(&self, id: i64, attempt: i32) -> bool {
        self.session.expired(Lease { id, attempt })
    }

    /// Waits (at most `timeout` seconds; `None` or infinity: no limit) until every ack sent so
    /// far is written. Returns False on timeout (the database is unreachable; the acks stay
    /// queued and are retried).
    #[pyo3(signature = (timeout=Some(10.0)))]
    fn flush(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        self.same_process()?;
        let flushed = Arc::new(tokio::sync::Mutex::new(self.session.flush()));
        let written = wait_interruptibly(py, timeout, move |slice| {
            let flushed = flushed.clone();
            async move {
                let mut rx = flushed.lock().await;
                tokio::time::timeout(slice, &mut *rx).await.ok().map(|r| r.is_ok())
            }
        })?;
        Ok(written.unwrap_or(false))
    }

    /// Puts a message back at once, marked redelivered (`basic_reject(requeue=True)`), counting
    /// a redelivery: one requeued more than `max_redeliveries` times moves to `dead_letter`
    /// (`redeliveries_exhausted`) instead. Returns whether this consumer still held it.
    /// With the database unreachable it returns True at once and the write is retried in the
    /// background (fenced by the lease, like an ack).
    fn requeue(&self, py: Python<'_>, id: i64, attempt: i32) -> PyResult<bool> {
        self.settle_now(py, Settlement::Requeue(Lease { id, attempt }))
    }

    /// Gives back a message that was delivered but never started (unacked at shutdown), as if
    /// it had never been claimed. Returns whether this consumer still held it.
    /// With the database unreachable it returns True at once and the write is retried in the
    /// background (fenced by the lease, like an ack).
    fn restore(&self, py: Python<'_>, id: i64, attempt: i32) -> PyResult<bool> {
        self.settle_now(py, Settlement::Release(Lease { id, attempt }))
    }

    /// Moves a held message to `celeriac.dead_letter` with a reason (`basic_reject` without
    /// requeue). Returns whether this consumer still held it.
    /// With the database unreachable it returns True at once and the write is retried in the
    /// background (fenced by the lease, like an ack).
    fn dead_letter(
        &self,
        py: Python<'_>,
        id: i64,
        attempt: i32,
        reason_code: String,
        reason: String,
    ) -> PyResult<bool> {
        let lease = Lease { id, attempt };
        let reason_code: DeadLetterReason = reason_code.parse().map_err(|e| PyValueError::new_err(format!("{e}")))?;
        self.settle_now(py, Settlement::DeadLetter(DeadLetterParams { lease, reason_code, reason }))
    }

    /// Blocks (GIL released) until a new message may be ready in one of the queues last
    /// claimed from (or, with `also`, a broadcast to one of its exchanges arrived), or
    /// `timeout` seconds pass. Returns whether it was woken.
    /// Python signal handlers (Ctrl-C, Celery's SIGTERM handler) run every 100 ms meanwhile.
    #[pyo3(signature = (timeout, also=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>, also: Option<PyRef<'_, Subscriber>>) -> PyResult<bool> {
        self.same_process()?;
        let wake = self.wake.clone();
        let other = also.map(|s| s.wake.clone());
        let woken = wait_interruptibly(py, timeout, move |slice| {
            let (wake, other) = (wake.clone(), other.clone());
            async move {
                let either = async {
                    match &other {
                        Some(other) => tokio::select! {
                            () = wake.notified() => {}
                            () = other.notified() => {}
                        },
                        None => wake.notified().await,
                    }
                };
                tokio::time::timeout(slice, either).await.ok()
            }
        })?;
        Ok(woken.is_some())
    }

    /// Writes pending acks (waiting up to 10 s), gives back every message still held whose ack is
    /// not pending, unregisters (unless acks could not be written: the row then lets rescuers
    /// redeliver those messages after the lease) and stops the background work. Idempotent.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        if self.closed.swap(true, Ordering::AcqRel) || std::process::id() != self.pid {
            return Ok(());
        }
        self.flush(py, Some(10.0))?;
        // A message whose ack is still unwritten (the flush timed out) is not given back: it ran.
        // If the ack never lands, its lease expires and it is delivered again (at least once),
        // and the worker row stays, so rescuers treat this consumer as dead promptly.
        let session = self.session.clone();
        let mut services = std::mem::take(&mut *lock(&self.services));
        let result = block_on(py, async move {
            let given_back = session.give_back_idle().await;
            session.close().await;
            services.stop().await;
            given_back
        });
        // Leases not given back expire and are redelivered by a rescuer; nothing is lost.
        result?.map(drop).map_err(|e| self.owner.get().error(&e, Doing::Other))
    }

    fn __repr__(&self) -> String {
        format!("<celeriac Consumer {} {}>", self.info.hostname, self.info.id)
    }
}

/// Runs `attempt` with slices of at most 100 ms of `timeout` (seconds; `None`, infinity or a
/// timeout too long to represent: no limit) until it gives an answer, letting Python signal
/// handlers (Ctrl-C, Celery's SIGTERM handler) run between slices. `None` when time ran out.
pub(crate) fn wait_interruptibly<T, F, Fut>(py: Python<'_>, timeout: Option<f64>, mut attempt: F) -> PyResult<Option<T>>
where
    F: FnMut(Duration) -> Fut,
    Fut: std::future::Future<Output = Option<T>> + Send,
    T: Send,
{
    let deadline = timeout_duration(timeout)?.and_then(|t| std::time::Instant::now().checked_add(t));
    loop {
        let slice = deadline
            .map_or(Duration::MAX, |d| d.saturating_duration_since(std::time::Instant::now()))
            .min(Duration::from_millis(100));
        if let Some(answer) = block_on(py, attempt(slice))? {
            return Ok(Some(answer));
        }
        py.check_signals()?;
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            return Ok(None);
        }
    }
}

/// A Python timeout in seconds: `None` or infinity mean no limit; negative means none left.
fn timeout_duration(timeout: Option<f64>) -> PyResult<Option<Duration>> {
    match timeout {
        None => Ok(None),
        Some(t) if t.is_nan() => Err(PyValueError::new_err("timeout must be a number, not NaN")),
        Some(t) if t <= 0.0 => Ok(Some(Duration::ZERO)),
        Some(t) => Ok(Duration::try_from_secs_f64(t).ok()),
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        // The listener stops with its supervisor; the session's services stop with the last
        // reference to it.
        drop(std::mem::take(&mut *lock(&self.services)));
    }
}
