//! What a handler sees ([`Request`]) and what it returns ([`Outcome`], [`TaskError`]).

use std::sync::Arc;

use celeriac_protocol::{DeliveryInfo, Map, TaskMessage, TaskState, Value};
use celeriac_store::Lease;
use chrono::{DateTime, Duration, Utc};

/// One delivery of a task message to a handler: the decoded message plus how it was delivered.
#[derive(Debug, Clone)]
pub struct Request {
    /// The decoded message (headers, args, kwargs, embed, envelope).
    pub message: Arc<TaskMessage>,
    /// The lease this delivery holds.
    pub lease: Lease,
    /// Whether an earlier delivery's worker died holding it (the task may have run partly).
    pub redelivered: bool,
    /// The worker's `--hostname`.
    pub hostname: Arc<str>,
    /// The queue it was claimed from.
    pub queue: Arc<str>,
    /// The stored envelope, exactly as claimed (what an embedded Python task decodes itself).
    pub payload: Arc<[u8]>,
    /// Whether this delivery's lease may have run out since: a handler that queues the task
    /// before running it (the Python pool) checks it before the task starts, and answers
    /// [`Outcome::NotStarted`] if so.
    pub lease_check: LeaseCheck,
    /// Stores custom states while the task runs (Celery's `update_state`).
    pub state: StateUpdater,
    /// Remote control of this delivery: a `revoke(terminate=True)` asks to kill it; a pool
    /// that runs it in another process reports that process's pid here.
    pub control: Arc<TaskControl>,
}

/// Time limits set at run time by Celery's `time_limit` command, by task name: `(soft, hard)`.
/// They replace the task's own (a message's `timelimit` header still wins), as the command
/// replaces a Celery worker's task attributes.
type TimeLimitTable = std::collections::HashMap<String, (Option<f64>, Option<f64>)>;
static TIME_LIMITS: std::sync::LazyLock<std::sync::RwLock<TimeLimitTable>> = std::sync::LazyLock::new(Default::default);

/// Sets `task`'s time limits for this process (`time_limit` remote-control command).
pub(crate) fn set_time_limits(task: &str, soft: Option<f64>, hard: Option<f64>) {
    TIME_LIMITS.write().unwrap_or_else(std::sync::PoisonError::into_inner).insert(task.to_owned(), (soft, hard));
}

/// `task`'s time limits set at run time, `(soft, hard)`, if any were.
pub(crate) fn time_limits(task: &str) -> Option<(Option<f64>, Option<f64>)> {
    TIME_LIMITS.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(task).copied()
}

/// Remote control of one running delivery (Celery's `revoke(..., terminate=True)` and the
/// `worker_pid` that `inspect active` shows), and when it started.
#[derive(Debug, Default)]
pub struct TaskControl {
    /// What runs once when the task starts (see [`TaskControl::mark_started`]).
    on_start: std::sync::Mutex<Option<StartHook>>,
    /// When it started, for a handler that reports it (see [`TaskControl::mark_started`]).
    started_at: std::sync::OnceLock<std::time::Instant>,
    terminate: tokio::sync::Notify,
    /// The signal asked for (0: none yet).
    signal: std::sync::atomic::AtomicI32,
    /// The process running it (0: the worker's own).
    pid: std::sync::atomic::AtomicU32,
    /// Its task id was revoked before it started.
    revoked: std::sync::atomic::AtomicBool,
    /// What the pool reported of the outcome: the result's repr, or the exception's repr and
    /// traceback separated by `\x1e` (for the `task-*` events).
    summary: std::sync::Mutex<Option<String>>,
}

impl TaskControl {
    /// Asks to kill the task with `signal` (a number such as 15 for `SIGTERM`).
    pub fn terminate(&self, signal: i32) {
        self.signal.store(signal.max(1), std::sync::atomic::Ordering::Release);
        self.terminate.notify_waiters();
        self.terminate.notify_one();
    }

    /// The signal a terminate asked for, if one did.
    #[must_use]
    pub fn termination(&self) -> Option<i32> {
        match self.signal.load(std::sync::atomic::Ordering::Acquire) {
            0 => None,
            s => Some(s),
        }
    }

    /// Resolves with the signal once a terminate is asked for.
    pub async fn terminated(&self) -> i32 {
        loop {
            let notified = self.terminate.notified();
            if let Some(signal) = self.termination() {
                return signal;
            }
            notified.await;
        }
    }

    /// Records that the task was revoked before it started (a handler that settles deliveries
    /// itself, the Python pool, then discards it as Celery does).
    pub fn mark_revoked(&self) {
        self.revoked.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether the task was revoked before it started.
    #[must_use]
    pub fn is_revoked(&self) -> bool {
        self.revoked.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Records what the pool reported of the outcome (see [`TaskControl::summary`]).
    pub fn set_summary(&self, summary: String) {
        *self.summary.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(summary);
    }

    /// What the pool reported of the outcome: the result's repr, or `exception repr\x1etraceback`.
    #[must_use]
    pub fn summary(&self) -> Option<String> {
        self.summary.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Sets what runs once when the task starts: the worker marks it active and sends
    /// `task-started` then, with the pid of the process that runs it.
    pub fn on_start(&self, hook: impl FnOnce(u32) + Send + 'static) {
        *self.on_start.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(StartHook(Box::new(hook)));
    }

    /// Reports that process `pid` began running the task now (a handler that queues tasks before
    /// running them, the Python pool, calls it when the task leaves its queue, as billiard's
    /// child acknowledges a job it starts). The first call counts; later ones do nothing.
    pub fn mark_started(&self, pid: u32) {
        if self.started_at.set(std::time::Instant::now()).is_err() {
            return;
        }
        self.set_pid(pid);
        let hook = self.on_start.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(StartHook(hook)) = hook {
            hook(pid);
        }
    }

    /// When [`TaskControl::mark_started`] reported the start, if it did.
    #[must_use]
    pub fn started_at(&self) -> Option<std::time::Instant> {
        self.started_at.get().copied()
    }

    /// Records the process that runs the task.
    pub fn set_pid(&self, pid: u32) {
        self.pid.store(pid, std::sync::atomic::Ordering::Relaxed);
    }

    /// The process that runs the task, if not the worker's own.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        match self.pid.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            p => Some(p),
        }
    }
}

/// [`TaskControl::on_start`]'s hook.
struct StartHook(Box<dyn FnOnce(u32) + Send>);

impl std::fmt::Debug for StartHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StartHook")
    }
}

/// A custom state could not be stored.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot store the state: {0}")]
pub struct StateError(pub String);

type UpdateFn = dyn Fn(String, Value) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StateError>> + Send>>
    + Send
    + Sync;

/// Stores a running task's custom states in the result backend (Celery's
/// `self.update_state(state="PROGRESS", meta={...})`): a client's `AsyncResult.state` reads the
/// state and `.info` the meta. Without a result backend (or with `ignore_result`) it stores
/// nothing.
#[derive(Clone)]
pub struct StateUpdater(Option<Arc<UpdateFn>>);

impl StateUpdater {
    /// An updater that stores nothing.
    #[must_use]
    pub fn none() -> Self {
        StateUpdater(None)
    }

    /// An updater calling `update`.
    pub fn new(
        update: impl Fn(String, Value) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StateError>> + Send>>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        StateUpdater(Some(Arc::new(update)))
    }

    /// Stores `state` (e.g. `PROGRESS`) with `meta` as the task's result.
    ///
    /// # Errors
    /// [`StateError`] when the backend cannot be written.
    pub async fn update_state(&self, state: &str, meta: Value) -> Result<(), StateError> {
        match &self.0 {
            Some(update) => update(state.to_owned(), meta).await,
            None => Ok(()),
        }
    }
}

impl std::fmt::Debug for StateUpdater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StateUpdater").field(&self.0.is_some()).finish()
    }
}

/// Tells whether a delivery's lease may have run out (the worker could not renew it, so another
/// worker may run the message now). Cheap to clone and to call.
#[derive(Clone)]
pub struct LeaseCheck(Arc<dyn Fn() -> bool + Send + Sync>);

impl LeaseCheck {
    /// A check that calls `expired`.
    pub fn new(expired: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        LeaseCheck(Arc::new(expired))
    }

    /// A lease that never runs out (a request made outside a worker, e.g. in a test).
    #[must_use]
    pub fn never() -> Self {
        LeaseCheck::new(|| false)
    }

    /// Whether the lease may have run out.
    #[must_use]
    pub fn expired(&self) -> bool {
        (self.0)()
    }
}

impl std::fmt::Debug for LeaseCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("LeaseCheck").field(&self.expired()).finish()
    }
}

impl Request {
    /// Task id.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.message.headers.id
    }

    /// Task name.
    #[must_use]
    pub fn task(&self) -> &str {
        &self.message.headers.task
    }

    /// How many times the task was retried before this run.
    #[must_use]
    pub fn retries(&self) -> i64 {
        self.message.headers.retries
    }

    /// Positional arguments.
    #[must_use]
    pub fn args(&self) -> &[Value] {
        &self.message.args
    }

    /// Keyword arguments.
    #[must_use]
    pub fn kwargs(&self) -> &Map {
        &self.message.kwargs
    }

    /// All message headers, including user headers.
    #[must_use]
    pub fn headers(&self) -> &Map {
        &self.message.envelope.headers
    }

    /// Delivery info as Celery's `task.request.delivery_info` shows it.
    #[must_use]
    pub fn delivery_info(&self) -> DeliveryInfo {
        DeliveryInfo { redelivered: self.redelivered, ..self.message.delivery_info.clone() }
    }
}

/// How a task run ended. Not an error type: failure is an ordinary outcome.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Returned a value.
    Success(Value),
    /// Run again at `eta` (Celery's `Task.retry`): same id, `retries + 1`.
    Retry {
        /// When to run again.
        eta: DateTime<Utc>,
        /// Why, for the log.
        reason: String,
    },
    /// Failed for good (the exception, in Celery's terms).
    Failure {
        /// Exception type name, e.g. `ValueError`, `NotRegistered`, `TimeLimitExceeded`.
        exc_type: String,
        /// The message.
        message: String,
        /// The traceback text stored with the result (`None`: one naming the handler).
        traceback: Option<String>,
    },
    /// Refused: the message goes to `dead_letter` (Celery's `Reject(requeue=False)`, which
    /// RabbitMQ routes to the dead-letter exchange).
    Reject {
        /// Why.
        reason: String,
    },
    /// Celery's own code already handled the outcome (stored the result, published retries and
    /// callbacks, logged it) and acknowledged the message: the worker only deletes the row.
    /// `state` is the task's state (`SUCCESS`, `FAILURE`, `RETRY`, `IGNORED`, `REVOKED`, …),
    /// for the counters.
    Handled {
        /// What became of the task.
        state: TaskState,
    },
    /// Not started: the lease ran out before the task could start (see [`Request::lease_check`]). The
    /// message is given back without counting a redelivery (a no-op if another worker has it).
    NotStarted,
    /// Not started: the worker began a warm shutdown while the task waited to start (in the
    /// Python pool, for a child). Given back without counting a redelivery, as Celery gives
    /// back the requests it reserved and did not start.
    StoppedBeforeStart,
    /// Put the message back in its queue, marked redelivered, to run again (Celery's
    /// `Reject(requeue=True)`, or `reject_on_worker_lost`). Each requeue counts as a redelivery:
    /// past `--max-redeliveries` the message goes to `dead_letter` instead.
    Requeue {
        /// Why, for the log.
        reason: String,
    },
}

impl Outcome {
    /// A failure with exception type `exc_type`.
    #[must_use]
    pub fn failure(exc_type: impl Into<String>, message: impl Into<String>) -> Outcome {
        Outcome::Failure { exc_type: exc_type.into(), message: message.into(), traceback: None }
    }
}

/// The error side of a typed handler: fail, retry or reject.
///
/// Any `std::error::Error` converts into [`TaskError::Fail`] with `?`.
#[derive(Debug)]
pub enum TaskError {
    /// Fail with an exception type name and message.
    Fail {
        /// Exception type name (a Python built-in such as `ValueError` is rebuilt as that class
        /// by Celery clients; any other name as a class of that name).
        exc_type: String,
        /// Message.
        message: String,
        /// The traceback text stored with the result, if the handler has one.
        traceback: Option<String>,
    },
    /// Retry after `countdown` seconds unless the task was already retried `max_retries` times
    /// (then it fails with `MaxRetriesExceededError`; `None` retries forever).
    Retry {
        /// Seconds until the next run.
        countdown: f64,
        /// Retry limit; Celery's default is 3.
        max_retries: Option<i64>,
        /// Why, for the log.
        reason: String,
    },
    /// Reject the message to `dead_letter`.
    Reject(String),
}

impl TaskError {
    /// A plain failure (`exc_type` = `Error`).
    #[must_use]
    pub fn fail(message: impl Into<String>) -> TaskError {
        TaskError::Fail { exc_type: "Error".into(), message: message.into(), traceback: None }
    }

    /// A failure with exception type `exc_type` (e.g. `ValueError`).
    #[must_use]
    pub fn exception(exc_type: impl Into<String>, message: impl Into<String>) -> TaskError {
        TaskError::Fail { exc_type: exc_type.into(), message: message.into(), traceback: None }
    }

    /// Retry with Celery's exponential backoff (`retry_backoff`, `retry_backoff_max`,
    /// `retry_jitter`) for a request retried `retries` times so far, at most `max_retries` times.
    #[must_use]
    pub fn retry_with_backoff(
        backoff: &RetryBackoff,
        retries: i64,
        max_retries: Option<i64>,
        reason: impl Into<String>,
    ) -> TaskError {
        TaskError::Retry { countdown: backoff.countdown(retries), max_retries, reason: reason.into() }
    }

    /// Retry after `countdown` seconds, at most Celery's default of 3 times.
    #[must_use]
    pub fn retry(countdown: f64, reason: impl Into<String>) -> TaskError {
        TaskError::Retry { countdown, max_retries: Some(3), reason: reason.into() }
    }

    /// Turns this error into the outcome for a request that was retried `retries` times.
    #[must_use]
    pub fn into_outcome(self, retries: i64, now: DateTime<Utc>) -> Outcome {
        match self {
            TaskError::Fail { exc_type, message, traceback } => Outcome::Failure { exc_type, message, traceback },
            TaskError::Retry { max_retries: Some(max), reason, .. } if retries >= max => Outcome::failure(
                "MaxRetriesExceededError",
                format!("Can't retry task: exceeded max retries ({max}) after {reason}"),
            ),
            TaskError::Retry { countdown, .. } if countdown.is_nan() => {
                Outcome::failure("ValueError", "cannot convert float NaN to integer")
            }
            TaskError::Retry { countdown, reason, .. } => {
                // As Celery's `now + timedelta(seconds=countdown)`: an OverflowError past the year
                // 9999, never a panic.
                const YEAR_10000: i64 = 253_402_300_800;
                #[allow(clippy::cast_possible_truncation)]
                let eta = Duration::try_milliseconds((countdown.clamp(0.0, 1e15) * 1000.0) as i64)
                    .and_then(|delay| now.checked_add_signed(delay))
                    .filter(|eta| eta.timestamp() < YEAR_10000);
                match eta {
                    Some(eta) => Outcome::Retry { eta, reason },
                    None => Outcome::failure("OverflowError", "date value out of range"),
                }
            }
            TaskError::Reject(reason) => Outcome::Reject { reason },
        }
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for TaskError {
    fn from(e: E) -> Self {
        TaskError::Fail { exc_type: short_type_name::<E>(), message: e.to_string(), traceback: None }
    }
}

fn short_type_name<T>() -> String {
    let full = std::any::type_name::<T>();
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base).to_owned()
}

impl std::fmt::Display for TaskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TaskError::Fail { exc_type, message, .. } => write!(f, "{exc_type}: {message}"),
            TaskError::Retry { countdown, reason, .. } => write!(f, "Retry in {countdown}s: {reason}"),
            TaskError::Reject(reason) => write!(f, "Reject: {reason}"),
        }
    }
}

/// Celery's exponential backoff for retries (`autoretry_for` with `retry_backoff`):
/// `min(maximum, factor × 2^retries)` seconds, then, with `jitter`, a random whole number of
/// seconds from 0 to that (`celery.utils.time.get_exponential_backoff_interval`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBackoff {
    /// `retry_backoff` (`True` is 1): the first countdown, in seconds.
    pub factor: u32,
    /// `retry_backoff_max`: the longest countdown. Celery's default: 600 s.
    pub maximum: u32,
    /// `retry_jitter`: Celery's default is on.
    pub jitter: bool,
}

impl Default for RetryBackoff {
    fn default() -> Self {
        RetryBackoff { factor: 1, maximum: 600, jitter: true }
    }
}

impl RetryBackoff {
    /// The countdown before retry number `retries + 1`, in seconds.
    #[must_use]
    pub fn countdown(&self, retries: i64) -> f64 {
        let exponent = u32::try_from(retries.clamp(0, 63)).unwrap_or(63);
        let grown = u64::from(self.factor.max(1)).saturating_mul(2u64.saturating_pow(exponent));
        let countdown = grown.min(u64::from(self.maximum));
        let countdown = if self.jitter {
            // `random.randrange(countdown + 1)`: uniform over 0..=countdown.
            let random = u64::try_from(uuid::Uuid::new_v4().as_u128() >> 64).unwrap_or(0);
            random % (countdown + 1)
        } else {
            countdown
        };
        #[allow(clippy::cast_precision_loss)] // at most u32::MAX
        let seconds = countdown as f64;
        seconds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_celerys_formula() {
        let b = RetryBackoff { factor: 1, maximum: 600, jitter: false };
        let countdowns: Vec<f64> = (0..12).map(|r| b.countdown(r)).collect();
        assert_eq!(countdowns, [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 600.0, 600.0]);
        assert_eq!(RetryBackoff { factor: 3, maximum: 10, jitter: false }.countdown(1), 6.0);
        assert_eq!(b.countdown(i64::MAX), 600.0);
        let jittered = RetryBackoff { jitter: true, ..b };
        for r in 0..20 {
            let c = jittered.countdown(3);
            assert!((0.0..=8.0).contains(&c) && c.fract() == 0.0, "{r}: {c}");
        }
    }

    #[test]
    fn retry_countdowns_never_overflow() {
        let now = Utc::now();
        let outcome = TaskError::retry(2.0, "again").into_outcome(0, now);
        assert!(matches!(outcome, Outcome::Retry { eta, .. } if eta == now + Duration::seconds(2)));
        for (countdown, exc) in [(1e300, "OverflowError"), (f64::INFINITY, "OverflowError"), (f64::NAN, "ValueError")] {
            let outcome = TaskError::retry(countdown, "again").into_outcome(0, now);
            assert!(
                matches!(&outcome, Outcome::Failure { exc_type, .. } if exc_type == exc),
                "{countdown}: {outcome:?}"
            );
        }
    }

    #[test]
    fn a_task_starts_once_with_the_pid_that_reported_it() {
        let control = TaskControl::default();
        assert!(control.started_at().is_none() && control.pid().is_none());
        let (tx, rx) = std::sync::mpsc::channel();
        control.on_start(move |pid| tx.send(pid).unwrap());
        control.mark_started(41);
        let first = control.started_at().expect("started");
        control.mark_started(42);
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), [41], "the hook runs once");
        assert_eq!((control.pid(), control.started_at()), (Some(41), Some(first)));
    }
}
