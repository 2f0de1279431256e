//! The parent side of the Python pool: starts pool children (the app's interpreter running
//! `celeriac._pool_child`), hands them jobs,
//! enforces time limits, replaces children that die or reach their recycling limits, and runs
//! the post-mortem of a task whose child died.
//!
//! A job goes to an idle child if there is one. Otherwise (prefork and solo) it may queue behind
//! the job a child is running, so the child goes from one task to the next without waiting for
//! the worker, but only behind a job that started moments ago ([`QUEUE_BEHIND_AT_MOST`]): a job
//! never waits behind a long task while another child could take it. A child whose recent tasks
//! were short holds up to [`MAX_QUEUED_BEHIND`] such jobs, as many as its recent run times say
//! it finishes within [`QUEUE_BUDGET`]: on two busy cores the worker is not always scheduled
//! in the tenth of a millisecond a no-op task takes, and a child with nothing queued waits for
//! it. Jobs wait for a child in the order they asked for one. The threads pool runs one job per
//! thread.

use std::{
    collections::HashMap,
    os::{fd::OwnedFd, unix::process::ExitStatusExt as _},
    process::Stdio,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use celeriac_protocol::TaskState;
use celeriac_store::service::{Service, Supervisor};
use serde::Deserialize;
use tokio::{
    net::unix::OwnedWriteHalf,
    sync::{mpsc, oneshot},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use celeriac_pool::{
    frame::{self, DeathCause, Decision, FromChild, ToChild},
    process as sys,
};

use super::settings::ExplicitSettings;
use crate::{
    registry::{Handler, HandlerFuture},
    task::{LeaseCheck, Outcome, Request, TaskControl},
    Registry,
};

// Moved to `settings`; re-exported under their former path.
pub use super::settings::{AppConfig, PoolConfig, PoolKind};

/// Why the pool (or one of its children) could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// The app could not be loaded: the child's message for the user (Celery's own for a bad
    /// `-A`, or the traceback).
    #[error("{0}")]
    AppLoad(String),
    /// A task's rate limit is not a rate.
    #[error("task {task}: {source}")]
    BadRateLimit {
        /// The task.
        task: String,
        /// Why.
        source: celeriac_protocol::RateError,
    },
    /// The child exited (or sent something other than its hello) while loading the app.
    #[error("the pool child exited while loading the app ({status}; {why})")]
    ExitedWhileLoading {
        /// How the process ended.
        status: String,
        /// What the channel said instead of the hello.
        why: String,
    },
    /// The hello did not have the expected shape.
    #[error("unreadable hello from the pool child: {0}")]
    UnreadableHello(#[source] serde_json::Error),
    /// No socket pair for the child's channel.
    #[error("cannot create a socket pair: {0}")]
    SocketPair(#[source] std::io::Error),
    /// The child process could not be started.
    #[error("cannot start a pool child: {0}")]
    Spawn(#[source] std::io::Error),
    /// The worker's end of the channel could not be set up.
    #[error(transparent)]
    Channel(std::io::Error),
}

/// A task's limits and ack mode, from the hello.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TaskInfo {
    /// Task attribute `soft_time_limit` (or the app's `task_soft_time_limit`).
    pub soft_time_limit: Option<f64>,
    /// Task attribute `time_limit` (or the app's `task_time_limit`).
    pub time_limit: Option<f64>,
    /// `acks_late`.
    #[serde(default)]
    pub acks_late: bool,
    /// `rate_limit` (Celery's syntax, as text), after `task_default_rate_limit` and
    /// `task_annotations`.
    #[serde(default)]
    pub rate_limit: Option<String>,
    /// The task's `global_rate_limit` option (celeriac's fleet-wide limit).
    #[serde(default)]
    pub global_rate_limit: Option<String>,
    /// `ignore_result` (or the app's `task_ignore_result`).
    #[serde(default)]
    pub ignore_result: bool,
    /// `track_started` (or the app's `task_track_started`).
    #[serde(default)]
    pub track_started: bool,
}

/// What a child reported once it had loaded the app.
#[derive(Debug, Clone, Deserialize)]
pub struct Hello {
    /// The child's pid.
    pub pid: u32,
    /// Python version.
    pub python: String,
    /// `sys.executable`.
    pub executable: String,
    /// Celery version.
    pub celery: String,
    /// The app's name.
    pub app: String,
    /// The app's tasks.
    pub tasks: HashMap<String, TaskInfo>,
    /// App settings.
    pub config: AppConfig,
    /// What Celery's start-up banner shows of the app.
    #[serde(default)]
    pub banner: AppBanner,
}

/// What Celery's start-up banner shows of the app, as Celery formats it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AppBanner {
    /// The app (`proj:0x7f…`, with the loader if not the default).
    #[serde(default)]
    pub app: String,
    /// `platform.platform()`.
    #[serde(default)]
    pub platform: String,
    /// `app.backend.as_uri()`: the result backend, password masked.
    #[serde(default)]
    pub results: String,
    /// The app's declared queues: name → (exchange, exchange type, routing key).
    #[serde(default)]
    pub queues: HashMap<String, (String, String, String)>,
}

/// A reply to a job.
#[derive(Debug)]
enum Reply {
    Done {
        decision: Decision,
        state: TaskState,
        detail: String,
        max_rss_kib: u64,
    },
    /// The child died with the job; `detail` is how it ended.
    Lost {
        detail: String,
        killed_for_timeout: bool,
    },
    /// The child died before it started the job (it was queued behind the one that was lost).
    NotStarted,
}

/// A job queues behind the one a child runs only if that one started less than this long ago.
const QUEUE_BEHIND_AT_MOST: Duration = Duration::from_millis(20);

/// Jobs a prefork or solo child holds queued behind the one it runs, at most.
const MAX_QUEUED_BEHIND: usize = crate::worker::MAX_PIPELINE_PER_SLOT;

/// A second and later job queues behind the running one only if the child's recent run times
/// say the jobs queued ahead of it, and it, finish within this.
const QUEUE_BUDGET: Duration = Duration::from_millis(5);

struct Child {
    index: usize,
    pid: u32,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    jobs_done: AtomicU64,
    /// Jobs sent and not answered, in the order they were written (a child with one task
    /// thread runs them in that order), with the control of a task's job (to report its start).
    sent: Mutex<std::collections::VecDeque<(u64, Option<Arc<TaskControl>>)>>,
    /// The jobs it holds, and whether it is being replaced (see [`Inner::take`]).
    load: Mutex<Load>,
    killed_for_timeout: AtomicBool,
    gone: CancellationToken,
}

/// What a child holds. Taking a job and retiring the child both happen under this lock, so a
/// retiring child's shutdown frame is written only once no job is on its way to it.
#[derive(Debug, Default)]
struct Load {
    /// Jobs taken with [`Inner::take`] and not yet answered.
    outstanding: usize,
    /// Whether one of them has a time limit (it then runs alone).
    limited: bool,
    /// When the job it runs now started (prefork and solo).
    busy_since: Option<Instant>,
    /// Its recent run times, a moving average (`None` until its first job is answered).
    recent_run_time: Option<Duration>,
    /// Being replaced: takes no new jobs; its exit is expected.
    retiring: bool,
    /// Its shutdown frame is on its way.
    shutdown_sent: bool,
}

impl Child {
    fn load(&self) -> std::sync::MutexGuard<'_, Load> {
        self.load.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn retiring(&self) -> bool {
        self.load().retiring
    }

    /// Sends the shutdown frame (once) if the child is retiring and holds no job.
    fn shut_down_if_idle(self: &Arc<Self>) {
        let now = {
            let mut load = self.load();
            let now = load.retiring && load.outstanding == 0 && !load.shutdown_sent;
            load.shutdown_sent |= now;
            now
        };
        if now {
            let child = self.clone();
            tokio::spawn(async move {
                let _ = child.send(&ToChild::Shutdown { announce_worker: false }, b"").await;
            });
        }
    }

    fn name(&self, kind: PoolKind) -> String {
        match kind {
            PoolKind::Prefork => format!("ForkPoolWorker-{}", self.index + 1),
            PoolKind::Threads => "ThreadPool".into(),
            PoolKind::Solo => "SoloPool".into(),
        }
    }

    async fn send(&self, msg: &ToChild, raw: &[u8]) -> std::io::Result<()> {
        let mut w = self.writer.lock().await;
        frame::write(&mut *w, msg, raw).await
    }

    /// Sends a job, recording its place in the child's queue. A task's job starts now if the
    /// child runs it at once (a threads child, or one with no job ahead of it); else when the
    /// job ahead of it is answered (see `read_replies`).
    async fn send_job(
        &self,
        seq: u64,
        msg: &ToChild,
        raw: &[u8],
        control: Option<&Arc<TaskControl>>,
        kind: PoolKind,
    ) -> std::io::Result<()> {
        let mut w = self.writer.lock().await;
        let starts_now = self.sent.lock().is_ok_and(|mut sent| {
            let first = sent.is_empty();
            sent.push_back((seq, control.cloned()));
            first || kind == PoolKind::Threads
        });
        if let Some(control) = control.filter(|_| starts_now) {
            control.mark_started(self.pid);
        }
        frame::write(&mut *w, msg, raw).await
    }
}

struct Inner {
    config: PoolConfig,
    tasks: HashMap<String, TaskInfo>,
    /// The children in service (see [`Inner::take`]).
    children: Mutex<Vec<Option<Arc<Child>>>>,
    /// Children retired by `pool_shrink` that may still be finishing a job: stopped with the
    /// pool like the others.
    shrunk: Mutex<Vec<Arc<Child>>>,
    /// Signalled whenever a child takes a job less, or joins.
    freed: tokio::sync::Notify,
    respawn: mpsc::UnboundedSender<usize>,
    seq: AtomicU64,
    /// The worker's warm shutdown (see [`PythonPool::stop_sending_at`]).
    worker_stopping: std::sync::OnceLock<CancellationToken>,
    /// The jobs waiting for a child, by ticket, first come first (see [`Inner::checkout`]).
    waiting: Mutex<std::collections::VecDeque<u64>>,
    tickets: AtomicU64,
    stopping: CancellationToken,
}

/// A job's place among those waiting for a child; leaving (with a child, or dropped on any
/// other path) lets the next one go.
struct WaitingTurn<'a> {
    inner: &'a Inner,
    ticket: u64,
}

impl<'a> WaitingTurn<'a> {
    fn new(inner: &'a Inner) -> Self {
        let ticket = inner.tickets.fetch_add(1, Ordering::Relaxed);
        inner.waiting().push_back(ticket);
        WaitingTurn { inner, ticket }
    }

    fn is_first(&self) -> bool {
        self.inner.waiting().front() == Some(&self.ticket)
    }
}

impl Drop for WaitingTurn<'_> {
    fn drop(&mut self) {
        let was_first = {
            let mut waiting = self.inner.waiting();
            let at = waiting.iter().position(|t| *t == self.ticket);
            if let Some(at) = at {
                waiting.remove(at);
            }
            at == Some(0)
        };
        if was_first {
            self.inner.freed.notify_waiters();
        }
    }
}

/// A running pool of Python children. Cheap to clone.
#[derive(Clone)]
pub struct PythonPool {
    inner: Arc<Inner>,
    hello: Arc<Hello>,
    /// The pool's background service: the respawner.
    services: Arc<Mutex<Supervisor>>,
}

impl std::fmt::Debug for PythonPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PythonPool").field("kind", &self.inner.config.kind).finish_non_exhaustive()
    }
}

/// billiard's `human_status`.
fn human_status(status: std::process::ExitStatus) -> String {
    if let Some(sig) = status.signal() {
        let name = match sig {
            libc::SIGKILL => "SIGKILL",
            libc::SIGSEGV => "SIGSEGV",
            libc::SIGABRT => "SIGABRT",
            libc::SIGBUS => "SIGBUS",
            libc::SIGFPE => "SIGFPE",
            libc::SIGILL => "SIGILL",
            libc::SIGTERM => "SIGTERM",
            libc::SIGINT => "SIGINT",
            libc::SIGHUP => "SIGHUP",
            libc::SIGUSR1 => "SIGUSR1",
            _ => "",
        };
        if name.is_empty() {
            format!("signal {sig}")
        } else {
            format!("signal {sig} ({name})")
        }
    } else {
        format!("exitcode {}", status.code().unwrap_or(-1))
    }
}

impl PythonPool {
    /// Starts the children and waits until each has imported the app.
    ///
    /// # Errors
    /// The first child's load error (Celery's messages for a bad `-A`), or a start failure.
    pub async fn start(config: PoolConfig) -> Result<PythonPool, PoolError> {
        let mut children = match config.kind {
            PoolKind::Prefork => config.concurrency.max(1),
            PoolKind::Threads | PoolKind::Solo => 1,
        };
        let (respawn_tx, respawn_rx) = mpsc::unbounded_channel();
        let mut inner = Inner {
            config,
            tasks: HashMap::new(),
            children: Mutex::new((0..children).map(|_| None).collect()),
            shrunk: Mutex::new(Vec::new()),
            freed: tokio::sync::Notify::new(),
            respawn: respawn_tx,
            seq: AtomicU64::new(1),
            worker_stopping: std::sync::OnceLock::new(),
            waiting: Mutex::default(),
            tickets: AtomicU64::new(0),
            stopping: CancellationToken::new(),
        };
        // The first child alone: a bad -A fails once, with one message.
        let (first, hello) = spawn(&inner, 0).await?;
        let hello: Hello = serde_json::from_value(hello).map_err(PoolError::UnreadableHello)?;
        inner.tasks.clone_from(&hello.tasks);
        // As in Celery, the app's settings apply where none was given.
        let concurrency = inner.config.concurrency;
        inner.config.adopt_app_settings(&hello.config);
        if inner.config.concurrency != concurrency {
            children = inner.config.concurrency;
            if let Ok(mut slots) = inner.children.lock() {
                slots.resize_with(children, || None);
            }
        }
        let inner = Arc::new(inner);
        let mut started = vec![first];
        let rest = futures_util::future::join_all((1..children).map(|i| spawn(&inner, i))).await;
        for r in rest {
            match r {
                Ok((child, _)) => started.push(child),
                Err(e) => {
                    for (child, _) in &started {
                        let _ = sys::kill_group(child.pid);
                    }
                    return Err(e);
                }
            }
        }
        for (child, reader) in started {
            inner.adopt(child, reader);
        }
        let mut services = Supervisor::default();
        services.start(Respawner { inner: inner.clone(), respawn: respawn_rx });
        if !inner.config.kind.enforces_limits()
            && (inner.config.time_limit.is_some()
                || inner.config.soft_time_limit.is_some()
                || inner.tasks.values().any(|t| t.time_limit.is_some() || t.soft_time_limit.is_some()))
        {
            tracing::warn!(
                "The threads pool does not enforce time limits (as in Celery): tasks' soft and hard limits are ignored"
            );
        }
        Ok(PythonPool { inner, hello: Arc::new(hello), services: Arc::new(Mutex::new(services)) })
    }

    /// Tasks the pool runs at once.
    #[must_use]
    pub fn concurrency(&self) -> usize {
        match self.inner.config.kind {
            PoolKind::Solo => 1,
            PoolKind::Prefork | PoolKind::Threads => self.inner.config.concurrency.max(1),
        }
    }

    /// From `shutdown` on (the worker's warm shutdown), a task still waiting for a child is not
    /// sent to one: it ends [`Outcome::StoppedBeforeStart`] and goes back to the queue, as the
    /// requests Celery reserved and had not started do. Jobs already queued in a child run.
    pub fn stop_sending_at(&self, shutdown: &CancellationToken) {
        let _ = self.inner.worker_stopping.set(shutdown.clone());
    }

    /// Tasks queued in children beyond [`PythonPool::concurrency`]: up to
    /// [`MAX_QUEUED_BEHIND`] per prefork or solo child (see `Inner::take`).
    #[must_use]
    pub fn pipeline(&self) -> usize {
        match self.inner.config.kind {
            PoolKind::Threads => 0,
            PoolKind::Prefork | PoolKind::Solo => self.concurrency() * MAX_QUEUED_BEHIND,
        }
    }

    /// Adjusts the worker's settings to this pool: its concurrency and pipeline, and the app's
    /// queues, prefetch multiplier and accepted content where `explicit` says they were not
    /// given (see [`super::settings`]).
    pub fn configure_worker(&self, config: &mut crate::WorkerConfig, explicit: ExplicitSettings) {
        config.concurrency = self.concurrency();
        config.pipeline = self.pipeline();
        config.control.pool_implementation = format!("celeriac:{}", self.inner.config.kind.name());
        config.control.resize = match self.inner.config.kind {
            PoolKind::Prefork => {
                let inner = self.inner.clone();
                crate::worker::PoolResize::Pool(Arc::new(move |grow, n| inner.resize(grow, n)))
            }
            kind => crate::worker::PoolResize::Fixed(format!(
                "NotImplementedError('celeriac's {} pool cannot grow or shrink; restart the worker with another \
                 --concurrency')",
                kind.name()
            )),
        };
        let inner = self.inner.clone();
        config.control.pool_processes = Some(Arc::new(move || inner.pids()));
        self.hello.config.apply_to_worker(config, explicit);
        self.configure_results(config);
    }

    /// The app's result backend for the results the worker stores itself (Rust handlers, and
    /// unregistered or expired tasks), unless `--result-backend` named one; the app's tasks'
    /// own `ignore_result` and `track_started` either way.
    fn configure_results(&self, config: &mut crate::WorkerConfig) {
        let app = self.hello.config.results.as_ref();
        if config.results.is_none() {
            let Some(app) = app else { return };
            if app.serializer != "json" {
                tracing::warn!(
                    "result_serializer is {:?}: the results of Rust handlers are not stored (celeriac writes them as \
                     json); Python tasks store theirs as usual",
                    app.serializer
                );
                return;
            }
            config.results = Some(app.to_results_config(&self.hello.celery));
        }
        if let Some(results) = &mut config.results {
            for (name, task) in &self.hello.tasks {
                results.tasks.insert(
                    name.clone(),
                    crate::TaskResultSettings { ignore_result: task.ignore_result, track_started: task.track_started },
                );
            }
        }
    }

    /// What the first child reported.
    #[must_use]
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// The interpreter the children are.
    #[must_use]
    pub fn interpreter(&self) -> &super::interp::Interpreter {
        &self.inner.config.interpreter
    }

    /// Registers a handler for every task of the app that `registry` has no Rust handler for
    /// (Rust handlers win), with the task's rate limits: Celery's `rate_limit` (after
    /// `task_default_rate_limit` and `task_annotations`) per worker, and fleet-wide the task's
    /// `global_rate_limit` option, which the app's `celeriac_global_rate_limits` setting beats.
    /// Returns the names registered.
    ///
    /// # Errors
    /// [`PoolError::BadRateLimit`] for a limit that is not a rate.
    pub fn register_tasks(&self, registry: &mut Registry) -> Result<Vec<String>, PoolError> {
        let mut names: Vec<String> = self.inner.tasks.keys().filter(|n| !registry.contains(n)).cloned().collect();
        names.sort();
        let global = &self.hello.config.celeriac_global_rate_limits;
        for name in &names {
            registry.register_raw(name, PythonHandler { inner: self.inner.clone() });
            let task = &self.inner.tasks[name];
            let bad = |source| PoolError::BadRateLimit { task: name.clone(), source };
            if let Some(rate) = &task.rate_limit {
                registry.rate_limit(name, rate).map_err(bad)?;
            }
            if let Some(rate) = global.get(name).or(task.global_rate_limit.as_ref()) {
                registry.global_rate_limit(name, rate).map_err(bad)?;
            }
        }
        Ok(names)
    }

    /// Sends `worker_ready` (from the first child).
    pub async fn announce_ready(&self) {
        let first = self.inner.children.lock().ok().and_then(|c| c.first().cloned().flatten());
        if let Some(child) = first {
            let _ = child.send(&ToChild::Ready, b"").await;
        }
    }

    /// Stops the children: each finishes what it runs (up to `grace`), sends its shutdown
    /// signals and exits; what is left after `grace` is killed.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.stopping.cancel();
        let mut services =
            std::mem::take(&mut *self.services.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        services.stop().await;
        let mut children: Vec<Arc<Child>> =
            self.inner.children.lock().map(|c| c.iter().flatten().cloned().collect()).unwrap_or_default();
        if let Ok(mut shrunk) = self.inner.shrunk.lock() {
            children.extend(shrunk.drain(..).filter(|c| !c.gone.is_cancelled()));
        }
        for child in &children {
            let _ = child.send(&ToChild::Shutdown { announce_worker: child.index == 0 }, b"").await;
        }
        let all_gone = futures_util::future::join_all(children.iter().map(|c| c.gone.cancelled()));
        if tokio::time::timeout(grace, all_gone).await.is_err() {
            for child in children.iter().filter(|c| !c.gone.is_cancelled()) {
                tracing::warn!(pid = child.pid, "pool: child did not exit in time; killing it");
                let _ = sys::kill_group(child.pid);
            }
        }
    }
}

/// Starts child `index` and waits for its hello. Returns the child and its frame reader.
async fn spawn(inner: &Inner, index: usize) -> Result<((Arc<Child>, ChildReader), serde_json::Value), PoolError> {
    let config = &inner.config;
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(PoolError::SocketPair)?;
    // What a task publishes goes to the worker's database. The URL in the environment (which
    // every process a task starts inherits) carries no password; the full one reaches the child
    // as its first frame (`ToChild::BrokerUrl`) and stays in-process.
    let (broker, secret) = if celeriac_store::url_has_password(&config.database_url) {
        (format!("celeriac+{}", celeriac_store::redact_url(&config.database_url)), Some(&config.database_url))
    } else {
        (format!("celeriac+{}", config.database_url), None)
    };
    let threads = if config.kind == PoolKind::Threads { config.concurrency.max(1) } else { 1 };
    let mut cmd = tokio::process::Command::new(&config.interpreter.program);
    cmd.args(["-c", celeriac_pool::CHILD_BOOTSTRAP, "--protocol", &celeriac_pool::PROTOCOL.to_string()])
        .args(["--index", &index.to_string(), "--pool", config.kind.name(), "--threads", &threads.to_string()])
        .args(["--hostname", &config.hostname, "--app", &config.app, "--loglevel", &config.loglevel])
        .envs(config.env.iter().map(|(k, v)| (k, v)))
        .env(celeriac_pool::PARENT_PID_ENV, std::process::id().to_string())
        .env("CELERY_BROKER_URL", &broker)
        .env("CELERY_BROKER_READ_URL", &broker)
        .env("CELERY_BROKER_WRITE_URL", &broker)
        .envs(secret.map(|_| (celeriac_pool::BROKER_URL_FRAME_ENV, "1")))
        // The worker's own setting (the app's DATABASE_URL, if any, is the app's business).
        .env_remove("CELERIAC_DATABASE_URL")
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .process_group(0)
        .kill_on_drop(false);
    let mut process = cmd.spawn().map_err(PoolError::Spawn)?;
    drop(cmd);
    let pid = process.id().unwrap_or(0);
    ours.set_nonblocking(true).map_err(PoolError::Channel)?;
    let stream = tokio::net::UnixStream::from_std(ours).map_err(PoolError::Channel)?;
    let (mut read, mut write) = stream.into_split();
    if let Some(url) = secret {
        // A failed write means the child is gone: reading its hello reports why.
        let _ = frame::write(&mut write, &ToChild::BrokerUrl { url: url.clone() }, b"").await;
    }
    let hello = match frame::read::<FromChild>(&mut read).await {
        Ok(Some((FromChild::Hello { hello }, _))) => hello,
        Ok(Some((FromChild::InitError { message }, _))) => {
            let _ = process.wait().await;
            return Err(PoolError::AppLoad(message));
        }
        other => {
            let _ = sys::kill_group(pid);
            let status = process.wait().await.map(human_status).unwrap_or_else(|e| e.to_string());
            let why = match other {
                Err(e) => e.to_string(),
                _ => "no hello".into(),
            };
            return Err(PoolError::ExitedWhileLoading { status, why });
        }
    };
    let child = Arc::new(Child {
        index,
        pid,
        writer: tokio::sync::Mutex::new(write),
        pending: Mutex::new(HashMap::new()),
        jobs_done: AtomicU64::new(0),
        sent: Mutex::default(),
        load: Mutex::default(),
        killed_for_timeout: AtomicBool::new(false),
        gone: CancellationToken::new(),
    });
    Ok(((child, ChildReader { read: tokio::io::BufReader::new(read), process }), hello))
}

struct ChildReader {
    read: tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
    process: tokio::process::Child,
}

/// A job taken from a child with [`Inner::take`]; dropping it, on any path (a panic included),
/// gives the child's capacity back.
struct Taken<'a> {
    inner: &'a Inner,
    child: Arc<Child>,
    limited: bool,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        self.inner.release(&self.child, self.limited);
    }
}

impl Inner {
    /// The pids of the children in service (for `inspect stats`).
    fn pids(&self) -> Vec<u32> {
        self.children.lock().map(|c| c.iter().flatten().map(|c| c.pid).collect()).unwrap_or_default()
    }

    /// Puts a started child in service: it can take jobs, and its reader runs. It takes the place
    /// of a child that exited or is being replaced (recycled); a child whose place was removed
    /// meanwhile (the pool shrank), or was taken by another child in service (two starts for one
    /// place: a shrink and a grow while one was starting), is shut down instead.
    fn adopt(self: &Arc<Self>, child: Arc<Child>, reader: ChildReader) {
        let placed = self.children.lock().is_ok_and(|mut children| match children.get_mut(child.index) {
            Some(slot) if slot.as_ref().is_none_or(|c| c.gone.is_cancelled() || c.retiring()) => {
                *slot = Some(child.clone());
                true
            }
            _ => false,
        });
        if placed {
            self.freed.notify_waiters();
        } else {
            tracing::info!("child process {} started for a place no longer free; shutting it down", child.pid);
            child.load().retiring = true;
            child.shut_down_if_idle();
        }
        tokio::spawn(read_replies(self.clone(), child, reader));
    }

    /// `pool_grow` / `pool_shrink` (prefork): starts `n` more children, or retires the `n`
    /// newest (each finishes the job it holds, then exits; one child always stays). Returns
    /// the children added or retired, and the worker's run slots that is: per child, its task
    /// and the [`MAX_QUEUED_BEHIND`] that may queue behind it (see [`Inner::take`]).
    fn resize(self: &Arc<Self>, grow: bool, n: usize) -> Result<(usize, usize), String> {
        let mut children = self.children.lock().map_err(|_| "the pool is unavailable".to_owned())?;
        if grow {
            let first = children.len();
            children.resize_with(first + n, || None);
            drop(children);
            for index in first..first + n {
                respawn(self.clone(), index);
            }
            return Ok((n, (1 + MAX_QUEUED_BEHIND) * n));
        }
        let wanted = n;
        let n = n.min(children.len().saturating_sub(1));
        if n == 0 && wanted > 0 {
            return Err("ValueError(\"Can't shrink pool below one process\")".into());
        }
        let keep = children.len() - n;
        let retired: Vec<Arc<Child>> = children.drain(keep..).flatten().collect();
        drop(children);
        for child in &retired {
            child.load().retiring = true;
            child.shut_down_if_idle();
        }
        if let Ok(mut shrunk) = self.shrunk.lock() {
            shrunk.retain(|c| !c.gone.is_cancelled());
            shrunk.extend(retired);
        }
        Ok((n, (1 + MAX_QUEUED_BEHIND) * n))
    }

    /// A child for a job, if one can take it now: an idle child first, else the one with the
    /// fewest jobs (the threads pool: one per thread). prefork and solo may also queue jobs
    /// behind the running one, so the child goes from one task to the next without waiting for
    /// the worker, but only behind a job that started less than [`QUEUE_BEHIND_AT_MOST`] ago,
    /// and neither a job with a time limit nor one behind it (its timers start when it is sent,
    /// and a hard limit kills the whole child). The first queues behind any such job; up to
    /// [`MAX_QUEUED_BEHIND`] do when the child's recent run times say they all finish within
    /// [`QUEUE_BUDGET`].
    fn take(&self, limited: bool) -> Option<Arc<Child>> {
        let children = self.children.lock().ok()?;
        let threads = self.config.concurrency.max(1);
        let max_tasks = self.config.max_tasks_per_child;
        let kind = self.config.kind;
        let now = Instant::now();
        let mut best: Option<(&Arc<Child>, std::sync::MutexGuard<'_, Load>)> = None;
        for child in children.iter().flatten().filter(|c| !c.gone.is_cancelled()) {
            let load = child.load();
            let eligible = !load.retiring
                && match kind {
                    PoolKind::Threads => load.outstanding < threads,
                    PoolKind::Prefork | PoolKind::Solo => {
                        let done = child.jobs_done.load(Ordering::Relaxed);
                        // Only prefork children are recycled (Celery's solo pool ignores
                        // max-tasks-per-child too): a limit on the solo child would stall it.
                        let room = kind == PoolKind::Solo
                            || max_tasks.is_none_or(|max| done + (load.outstanding as u64) < max);
                        let queued = load.outstanding.saturating_sub(1);
                        let short_enough = queued == 0
                            || (queued < MAX_QUEUED_BEHIND
                                && load.recent_run_time.is_some_and(|t| t * (queued as u32 + 1) <= QUEUE_BUDGET));
                        let queue_behind = load.outstanding >= 1
                            && short_enough
                            && !load.limited
                            && !limited
                            && load.busy_since.is_some_and(|t| now.saturating_duration_since(t) < QUEUE_BEHIND_AT_MOST);
                        room && (load.outstanding == 0 || queue_behind)
                    }
                };
            if eligible && best.as_ref().is_none_or(|(_, b)| load.outstanding < b.outstanding) {
                best = Some((child, load));
            }
        }
        let (child, mut load) = best?;
        if load.outstanding == 0 {
            load.busy_since = Some(now);
        }
        load.outstanding += 1;
        load.limited |= limited;
        Some(child.clone())
    }

    /// A child answered (or lost) a job it took with [`Inner::take`].
    fn release(&self, child: &Arc<Child>, limited: bool) {
        {
            let mut load = child.load();
            load.outstanding = load.outstanding.saturating_sub(1);
            if limited {
                load.limited = false;
            }
            let now = Instant::now();
            if let Some(started) = load.busy_since {
                // Answered jobs weigh a quarter each in the average.
                let took = now.saturating_duration_since(started);
                load.recent_run_time = Some(load.recent_run_time.map_or(took, |average| (average * 3 + took) / 4));
            }
            // The job queued behind the answered one starts now.
            load.busy_since = (load.outstanding > 0).then_some(now);
        }
        child.shut_down_if_idle();
        self.freed.notify_waiters();
    }

    /// A child that can take the job, waiting until one can; jobs that wait get a child in the
    /// order they asked (the worker's start order). A job queued behind another is not taken
    /// later than [`QUEUE_BEHIND_AT_MOST`] after that one started, so this also wakes up then.
    async fn checkout(&self, limited: bool) -> Taken<'_> {
        if self.waiting().is_empty() {
            if let Some(child) = self.take(limited) {
                return Taken { inner: self, child, limited };
            }
        }
        let turn = WaitingTurn::new(self);
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if turn.is_first() {
                if let Some(child) = self.take(limited) {
                    return Taken { inner: self, child, limited };
                }
            }
            tokio::select! {
                () = freed => {}
                () = tokio::time::sleep(QUEUE_BEHIND_AT_MOST) => {}
            }
        }
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<u64>> {
        self.waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sends a job to a child and waits for its reply, enforcing the time limits. A job the
    /// child had not started when it died is sent again (to another child). [`Unsent`] if the
    /// request's lease ran out, or the worker began a warm shutdown, while the job waited for a
    /// child.
    async fn dispatch(
        &self,
        msg: ToChild,
        seq: u64,
        raw: &[u8],
        limits: Limits,
        what: &str,
        request: Option<&Request>,
    ) -> Result<(Arc<Child>, Reply), Unsent> {
        let lease = request.map(|r| &r.lease_check);
        let control = request.map(|r| &r.control);
        let limited = self.config.kind.enforces_limits() && (limits.soft.is_some() || limits.hard.is_some());
        // Post-mortems run whatever happens; tasks do not start once the worker is stopping.
        let stopping = self.worker_stopping.get().filter(|_| request.is_some());
        loop {
            if stopping.is_some_and(CancellationToken::is_cancelled) {
                return Err(Unsent::WorkerStopping);
            }
            let taken = match stopping {
                Some(stopping) => tokio::select! {
                    biased;
                    () = stopping.cancelled() => return Err(Unsent::WorkerStopping),
                    taken = self.checkout(limited) => taken,
                },
                None => self.checkout(limited).await,
            };
            if lease.is_some_and(LeaseCheck::expired) {
                return Err(Unsent::LeaseRanOut);
            }
            let child = taken.child.clone();
            let (tx, rx) = oneshot::channel();
            if let Ok(mut pending) = child.pending.lock() {
                pending.insert(seq, tx);
            }
            if child.gone.is_cancelled() {
                // Died between checkout and registration: its reader already failed its jobs.
                if let Ok(mut pending) = child.pending.lock() {
                    pending.remove(&seq);
                }
                continue;
            }
            if let Some(control) = control {
                control.set_pid(child.pid);
            }
            // A failed write means the child died; its reader then answers this job.
            let _ = child.send_job(seq, &msg, raw, control, self.config.kind).await;
            let reply = self.await_reply(&child, rx, limits, what, control.map(|c| &**c)).await;
            if let Reply::Done { max_rss_kib, .. } = &reply {
                // Counted (and the child retired if it reached a limit) before its capacity is
                // given back, so no job is handed to a child past its limit.
                self.after_job(&child, *max_rss_kib);
            }
            drop(taken);
            if matches!(reply, Reply::NotStarted) {
                continue;
            }
            return Ok((child, reply));
        }
    }

    async fn await_reply(
        &self,
        child: &Child,
        rx: oneshot::Receiver<Reply>,
        limits: Limits,
        what: &str,
        control: Option<&TaskControl>,
    ) -> Reply {
        let started = Instant::now();
        let enforce = self.config.kind.enforces_limits();
        let mut soft = limits.soft.filter(|_| enforce).and_then(|s| Duration::try_from_secs_f64(s).ok());
        let hard = limits.hard.filter(|_| enforce).and_then(|s| Duration::try_from_secs_f64(s).ok());
        let mut hard_fired = false;
        let mut terminated = false;
        tokio::pin!(rx);
        loop {
            // The earlier of the limits still to fire (`true`: the soft one). A limit too far
            // away to represent as an instant never fires.
            let soft_at = soft.and_then(|s| started.checked_add(s)).map(|at| (at, true));
            let hard_at = hard.filter(|_| !hard_fired).and_then(|h| started.checked_add(h)).map(|at| (at, false));
            let deadline = match (soft_at, hard_at) {
                (Some(s), Some(h)) => Some(if s.0 <= h.0 { s } else { h }),
                (s, h) => s.or(h),
            };
            tokio::select! {
                reply = &mut rx => {
                    return reply.unwrap_or(Reply::Lost { detail: "the reply was lost".into(), killed_for_timeout: false });
                }
                signal = async { control.expect("guarded").terminated().await }, if control.is_some() && !terminated => {
                    terminated = true;
                    if self.config.kind == PoolKind::Threads {
                        // Its child runs other tasks on other threads (Celery's threads pool
                        // cannot terminate a task either).
                        tracing::warn!("{what}: terminate is not supported by the threads pool; the task keeps running");
                        continue;
                    }
                    // billiard's `terminate_job`: the signal goes to the child; it dies with the
                    // task and is replaced, and the post-mortem stores REVOKED ('terminated').
                    // The child ignores SIGINT and SIGTERM unless armed first.
                    if matches!(signal, libc::SIGINT | libc::SIGTERM) {
                        let _ = sys::signal_process(child.pid, sys::ARM_STOP_SIGNALS);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    if let Err(e) = sys::signal_process(child.pid, signal) {
                        tracing::debug!(error = %e, pid = child.pid, "pool: terminate signal not delivered");
                    }
                }
                () = async { tokio::time::sleep_until(deadline.map_or(started, |d| d.0)).await }, if deadline.is_some() => {
                    if deadline.is_some_and(|d| d.1) {
                        soft = None;
                        let secs = limits.soft.unwrap_or_default();
                        tracing::warn!("Soft time limit ({}s) exceeded for {what}", celeriac_protocol::json::python_float_repr(secs));
                        if let Err(e) = sys::signal_main_thread(child.pid, sys::SOFT_LIMIT_SIGNAL) {
                            tracing::debug!(error = %e, pid = child.pid, "pool: soft limit signal not delivered");
                        }
                    } else {
                        hard_fired = true;
                        soft = None;
                        let secs = limits.hard.unwrap_or_default();
                        tracing::warn!(pid = child.pid, "Hard time limit ({}s) exceeded for {what}: killing the child", celeriac_protocol::json::python_float_repr(secs));
                        child.killed_for_timeout.store(true, Ordering::Relaxed);
                        if let Err(e) = sys::kill_group(child.pid) {
                            tracing::debug!(error = %e, pid = child.pid, "pool: kill failed");
                        }
                    }
                }
            }
        }
    }

    /// After a job: count it, and replace the child if it reached a recycling limit.
    fn after_job(&self, child: &Arc<Child>, max_rss_kib: u64) {
        let done = child.jobs_done.fetch_add(1, Ordering::Relaxed) + 1;
        let config = &self.config;
        if config.kind == PoolKind::Prefork {
            let by_tasks = config.max_tasks_per_child.is_some_and(|max| done >= max);
            let by_memory = config.max_memory_per_child_kib.is_some_and(|max| max_rss_kib > max);
            let retire = {
                let mut load = child.load();
                let retire = (by_tasks || by_memory) && !load.retiring;
                load.retiring |= retire;
                retire
            };
            if retire {
                if by_memory {
                    tracing::warn!(
                        "child process {} exceeded the memory limit ({max_rss_kib}KiB > {}KiB); replacing it",
                        child.pid,
                        config.max_memory_per_child_kib.unwrap_or_default()
                    );
                } else {
                    tracing::info!("child process {} ran {done} tasks (max tasks per child); replacing it", child.pid);
                }
                let _ = self.respawn.send(child.index);
                // Its shutdown frame goes once it holds no job (now, or when the last is answered).
                child.shut_down_if_idle();
            }
        }
    }

    fn limits(&self, request: &Request) -> Limits {
        let task = self.tasks.get(request.task());
        let header = &request.message.headers.timelimit;
        let pick = |header: Option<f64>, task: Option<f64>, flag: Option<f64>| {
            header.filter(|s| *s > 0.0).or(task).or(flag).filter(|s| *s > 0.0)
        };
        // Limits set by the `time_limit` command replace the task's own.
        let (task_soft, task_hard) = crate::task::time_limits(request.task())
            .unwrap_or((task.and_then(|t| t.soft_time_limit), task.and_then(|t| t.time_limit)));
        Limits {
            hard: pick(header.hard, task_hard, self.config.time_limit),
            soft: pick(header.soft, task_soft, self.config.soft_time_limit),
        }
    }

    async fn run(&self, request: Request) -> Outcome {
        let what = format!("{}[{}]", request.message.display_name(), request.id());
        let limits = self.limits(&request);
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let job = ToChild::Job {
            seq,
            queue: request.queue.to_string(),
            redelivered: request.redelivered,
            revoked: request.control.is_revoked(),
        };
        let reply = match self.dispatch(job, seq, &request.payload, limits, &what, Some(&request)).await {
            Ok((_, reply)) => reply,
            Err(Unsent::LeaseRanOut) => return Outcome::NotStarted,
            Err(Unsent::WorkerStopping) => return Outcome::StoppedBeforeStart,
        };
        let (cause, detail) = match reply {
            Reply::Done { decision: Decision::Ack, state, detail, .. } => {
                // On an ack, the detail is the result's repr or the exception (for events).
                request.control.set_summary(detail);
                return outcome(Decision::Ack, state, String::new());
            }
            Reply::Done { decision, state, detail, .. } => return outcome(decision, state, detail),
            Reply::Lost { .. } if request.control.termination().is_some() => {
                (DeathCause::Terminated, request.control.termination().unwrap_or_default().to_string())
            }
            Reply::Lost { killed_for_timeout: true, detail } => (DeathCause::Timeout, detail),
            Reply::Lost { detail, .. } => (DeathCause::Lost, detail),
            Reply::NotStarted => (DeathCause::Lost, "not started".into()),
        };
        // The child died with the task: settle it as Celery's MainProcess would, in a live child.
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let post_mortem = ToChild::PostMortem {
            seq,
            queue: request.queue.to_string(),
            redelivered: request.redelivered,
            cause,
            detail: detail.clone(),
            hard_limit: limits.hard.unwrap_or_default(),
        };
        let settled = self
            .dispatch(post_mortem, seq, &request.payload, Limits::default(), &format!("post-mortem of {what}"), None)
            .await;
        let Ok((_, reply)) = settled else { return Outcome::Requeue { reason: "its child process exited".into() } };
        match reply {
            Reply::Done { decision, state, detail, .. } => outcome(decision, state, detail),
            Reply::NotStarted => Outcome::Requeue { reason: "its child process exited".into() },
            Reply::Lost { detail: again, .. } => Outcome::Requeue {
                reason: format!("its child process exited ({detail}), and so did the one settling it ({again})"),
            },
        }
    }
}

/// Why a job was not sent to a child.
#[derive(Debug, Clone, Copy)]
enum Unsent {
    /// Its lease ran out while it waited.
    LeaseRanOut,
    /// The worker began a warm shutdown while it waited.
    WorkerStopping,
}

#[derive(Debug, Clone, Copy, Default)]
struct Limits {
    soft: Option<f64>,
    hard: Option<f64>,
}

/// The outcome of a delivery that Celery's code settled with `decision`.
fn outcome(decision: Decision, state: TaskState, detail: String) -> Outcome {
    match decision {
        Decision::Ack => Outcome::Handled { state },
        Decision::Reject => Outcome::Reject {
            reason: if detail.is_empty() {
                format!("rejected by the task (Reject(requeue=False); {state})")
            } else {
                detail
            },
        },
        Decision::Requeue => Outcome::Requeue { reason: format!("rejected with requeue ({state})") },
        Decision::Undecided => Outcome::Requeue { reason: format!("neither acknowledged nor rejected ({state})") },
    }
}

/// Reads a child's replies until it exits; then fails its jobs as lost and asks for a
/// replacement.
async fn read_replies(inner: Arc<Inner>, child: Arc<Child>, mut reader: ChildReader) {
    loop {
        match frame::read::<FromChild>(&mut reader.read).await {
            Ok(Some((FromChild::Result { seq, decision, state, detail, max_rss_kib }, _))) => {
                // With one task thread, the job after the answered one starts now.
                let next = child.sent.lock().ok().and_then(|mut sent| {
                    let at = sent.iter().position(|(s, _)| *s == seq)?;
                    sent.remove(at);
                    let one_thread = inner.config.kind != PoolKind::Threads;
                    (at == 0 && one_thread).then(|| sent.front().and_then(|(_, control)| control.clone())).flatten()
                });
                if let Some(control) = next {
                    control.mark_started(child.pid);
                }
                let tx = child.pending.lock().ok().and_then(|mut p| p.remove(&seq));
                if let Some(tx) = tx {
                    let _ = tx.send(Reply::Done { decision, state, detail, max_rss_kib });
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => {
                tracing::error!(pid = child.pid, error = %e, "pool: unreadable reply from a child; killing it");
                let _ = sys::kill_group(child.pid);
                break;
            }
        }
    }
    let status = reader.process.wait().await;
    child.gone.cancel();
    let detail = status.map(human_status).unwrap_or_else(|e| format!("unknown status ({e})"));
    let expected = child.retiring() || inner.stopping.is_cancelled();
    let pending: Vec<_> = child.pending.lock().map(|mut p| p.drain().collect()).unwrap_or_default();
    if !expected || !pending.is_empty() {
        tracing::error!("Process '{}' pid:{} exited with '{detail}'", child.name(inner.config.kind), child.pid);
    }
    let killed_for_timeout = child.killed_for_timeout.load(Ordering::Relaxed);
    // With one task thread, jobs run in the order they were sent: the first unanswered one
    // was running, the others had not started. With several threads, any may have started.
    let running = match inner.config.kind {
        PoolKind::Threads => None,
        PoolKind::Prefork | PoolKind::Solo => child.sent.lock().ok().and_then(|s| s.front().map(|(seq, _)| *seq)),
    };
    for (seq, tx) in pending {
        let reply = match running {
            Some(first) if seq != first => Reply::NotStarted,
            _ => Reply::Lost { detail: detail.clone(), killed_for_timeout },
        };
        let _ = tx.send(reply);
    }
    if !expected {
        let _ = inner.respawn.send(child.index);
    }
}

/// Replaces children: on request (death or recycling), starts a new child for that index,
/// retrying with backoff while the app fails to load. Stops with the pool.
struct Respawner {
    inner: Arc<Inner>,
    respawn: mpsc::UnboundedReceiver<usize>,
}

impl Service for Respawner {
    fn name(&self) -> &'static str {
        "pool respawner"
    }

    async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let index = tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.inner.stopping.cancelled() => return,
                i = self.respawn.recv() => match i { Some(i) => i, None => return },
            };
            respawn(self.inner.clone(), index);
        }
    }
}

/// Starts a replacement for child `index` on a task of its own.
fn respawn(inner: Arc<Inner>, index: usize) {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(500);
        loop {
            if inner.stopping.is_cancelled() {
                return;
            }
            match spawn(&inner, index).await {
                Ok(((child, reader), _)) => {
                    if inner.stopping.is_cancelled() {
                        let _ = child.send(&ToChild::Shutdown { announce_worker: false }, b"").await;
                    }
                    inner.adopt(child, reader);
                    return;
                }
                Err(e) => {
                    tracing::error!(retry_in = ?backoff, "pool: cannot start a replacement child: {e}");
                    tokio::select! {
                        () = inner.stopping.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    });
}

/// Runs a Python task of the app in the pool.
struct PythonHandler {
    inner: Arc<Inner>,
}

impl Handler for PythonHandler {
    fn call(&self, request: Request) -> HandlerFuture {
        let inner = self.inner.clone();
        Box::pin(async move { inner.run(request).await })
    }

    fn manages_execution(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_become_outcomes() {
        assert_eq!(
            outcome(Decision::Ack, TaskState::Retry, String::new()),
            Outcome::Handled { state: TaskState::Retry }
        );
        assert_eq!(
            outcome(Decision::Reject, TaskState::Rejected, String::new()),
            Outcome::Reject { reason: "rejected by the task (Reject(requeue=False); REJECTED)".into() }
        );
        assert_eq!(
            outcome(Decision::Reject, TaskState::Undecodable, "bad body".into()),
            Outcome::Reject { reason: "bad body".into() }
        );
        assert_eq!(
            outcome(Decision::Requeue, TaskState::Failure, String::new()),
            Outcome::Requeue { reason: "rejected with requeue (FAILURE)".into() }
        );
        assert_eq!(
            outcome(Decision::Undecided, TaskState::Success, "ignored".into()),
            Outcome::Requeue { reason: "neither acknowledged nor rejected (SUCCESS)".into() }
        );
    }
}
