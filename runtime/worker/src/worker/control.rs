//! Celery's remote control for a celeriac worker: kombu's pidbox commands (`celery inspect …`,
//! `celery control …`, `app.control.revoke`, Flower's buttons) read from `celeriac.broadcast`,
//! answered with Celery's reply formats; what the worker holds (reserved and active tasks) for
//! `inspect`; and the revocations it heard, checked before a task starts.
//!
//! Revocations are durable without this module: whoever revokes records the task id in
//! `celeriac.revoked` and every claim reports it ([`celeriac_store::ClaimedMessage::revoked`]).
//! The broadcast only tells running workers at once: a message claimed before the revoke is
//! still caught before it starts, and `terminate=True` kills a running one.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{atomic::Ordering, Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use celeriac_protocol::{
    pidbox::{self, ControlCommand},
    Accept, Map, TaskMessage, Value,
};
use celeriac_store::{service::Service, Backoff, BroadcastMessage};
use chrono::Utc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::task::TaskControl;

/// What the worker tells remote control about itself beyond its [`crate::WorkerConfig`].
#[derive(Clone, Default)]
pub struct ControlSettings {
    /// Celery's `control_exchange`: commands arrive on `<namespace>.pidbox`. Default: `celery`.
    pub namespace: String,
    /// `inspect conf` (the app's settings, without and with Celery's defaults), when the worker
    /// runs an app.
    pub app_conf: Option<(Value, Value)>,
    /// `stats` → `pool.implementation`.
    pub pool_implementation: String,
    /// `stats` → `pool.processes`: the pool's child processes (none: the worker's own pid).
    pub pool_processes: Option<Arc<dyn Fn() -> Vec<u32> + Send + Sync>>,
    /// What `pool_grow`/`pool_shrink` change (see [`PoolResize`]).
    pub resize: PoolResize,
}

/// A pool's resize function (see [`PoolResize::Pool`]): `(grow, n)` → `(tasks, run slots)`.
pub type PoolResizer = dyn Fn(bool, usize) -> Result<(usize, usize), String> + Send + Sync;

/// How `pool_grow`/`pool_shrink` change how many tasks run at once.
#[derive(Clone, Default)]
pub enum PoolResize {
    /// The worker's own concurrency: handlers run on the worker's runtime.
    #[default]
    Concurrency,
    /// A pool that grows or shrinks itself: given whether to grow and by how many processes,
    /// it returns by how many tasks at once it grew or shrank (it may shrink less than asked),
    /// and how many of the worker's run slots that is (its pipeline included), or why it
    /// cannot.
    Pool(Arc<PoolResizer>),
    /// Neither: the message says why.
    Fixed(String),
}

impl std::fmt::Debug for ControlSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlSettings")
            .field("namespace", &self.namespace)
            .field("pool_implementation", &self.pool_implementation)
            .finish_non_exhaustive()
    }
}

impl ControlSettings {
    /// Defaults for a worker of Rust handlers.
    #[must_use]
    pub fn new() -> Self {
        ControlSettings {
            namespace: "celery".to_owned(),
            app_conf: None,
            pool_implementation: "celeriac:tokio".to_owned(),
            pool_processes: None,
            resize: PoolResize::Concurrency,
        }
    }
}

/// Revoked task ids a worker remembers from broadcasts (Celery's `REVOKES_MAX`).
const REVOKED_IN_MEMORY: usize = 50_000;

/// A delivery the worker holds: reserved (claimed, not started) or active (running).
struct Tracked {
    id: String,
    name: String,
    queue: String,
    priority: i16,
    redelivered: bool,
    payload: Arc<[u8]>,
    /// When it started (seconds since the epoch); `None` while reserved.
    started: Option<f64>,
    control: Arc<TaskControl>,
}

#[derive(Default)]
struct Tables {
    /// By lease id.
    held: HashMap<i64, Tracked>,
    /// Tasks started, by name (Celery's `total`).
    total: BTreeMap<String, u64>,
    /// Task ids revoked since the worker started (a message claimed before its revoke is still
    /// caught before it starts), at most [`REVOKED_IN_MEMORY`], the oldest forgotten first.
    revoked: HashSet<String>,
    revoked_order: std::collections::VecDeque<String>,
    /// Revoked stamps: `(stamp, value)`.
    stamps: HashSet<(String, String)>,
}

/// The worker's remote-control state.
pub(super) struct Control {
    tables: Mutex<Tables>,
    started: chrono::DateTime<Utc>,
    /// The worker's Lamport clock (Celery's `app.clock`): commands and events move it.
    pub(super) clock: std::sync::atomic::AtomicI64,
    exchange: String,
}

/// Removes a delivery from the held table when its `execute` ends, on any path.
pub(super) struct Held<'a> {
    control: &'a Control,
    lease: i64,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.control.lock().held.remove(&self.lease);
    }
}

impl Control {
    pub(super) fn new(namespace: &str) -> Control {
        Control {
            tables: Mutex::default(),
            started: Utc::now(),
            clock: std::sync::atomic::AtomicI64::new(0),
            exchange: pidbox::control_exchange(namespace),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a delivery as reserved; it is forgotten when the guard drops.
    pub(super) fn hold(
        &self,
        lease: i64,
        message: &TaskMessage,
        queue: &str,
        redelivered: bool,
        payload: Arc<[u8]>,
        control: Arc<TaskControl>,
    ) -> Held<'_> {
        let tracked = Tracked {
            id: message.headers.id.clone(),
            name: message.headers.task.clone(),
            queue: queue.to_owned(),
            priority: message.delivery_info.priority.and_then(|p| i16::try_from(p).ok()).unwrap_or(0),
            redelivered,
            payload,
            started: None,
            control,
        };
        self.lock().held.insert(lease, tracked);
        Held { control: self, lease }
    }

    /// Marks a delivery active and counts it.
    pub(super) fn started(&self, lease: i64) {
        let mut tables = self.lock();
        let tables = &mut *tables;
        if let Some(t) = tables.held.get_mut(&lease) {
            #[allow(clippy::cast_precision_loss)]
            let now = Utc::now().timestamp_micros() as f64 / 1e6;
            t.started = Some(now);
            // Counted without a new key (and its allocation) once the name is known.
            match tables.total.get_mut(&t.name) {
                Some(n) => *n += 1,
                None => {
                    tables.total.insert(t.name.clone(), 1);
                }
            }
        }
    }

    /// Messages the worker holds now: running, and reserved to run.
    pub(super) fn held(&self) -> usize {
        self.lock().held.len()
    }

    /// Tasks running now, and tasks started since the worker started (a heartbeat's `active`
    /// and `processed`).
    pub(super) fn counts(&self) -> (i64, i64) {
        let tables = self.lock();
        let active = tables.held.values().filter(|t| t.started.is_some()).count();
        let processed: u64 = tables.total.values().sum();
        (i64::try_from(active).unwrap_or(i64::MAX), i64::try_from(processed).unwrap_or(i64::MAX))
    }

    /// Whether a revoke heard since the worker started (by id or by stamp) covers `message`.
    pub(super) fn revoked(&self, message: &TaskMessage) -> bool {
        let tables = self.lock();
        if tables.revoked.is_empty() && tables.stamps.is_empty() {
            return false;
        }
        tables.revoked.contains(&message.headers.id) || stamps_of(message).any(|s| tables.stamps.contains(&s))
    }

    /// Loads the live revocations by stamp (a worker that starts after them still honours them).
    pub(super) fn load_stamps(&self, stamps: Vec<celeriac_store::RevokedStamp>) {
        let mut tables = self.lock();
        tables.stamps.extend(stamps.into_iter().map(|s| (s.header, s.value)));
    }
}

/// A message's stamps as `(stamp, value)` pairs (list-valued stamps give one pair per item).
fn stamps_of(message: &TaskMessage) -> impl Iterator<Item = (String, String)> + '_ {
    let stamps = match message.envelope.headers.get("stamps") {
        Some(Value::Map(m)) => Some(m),
        _ => None,
    };
    stamps.into_iter().flat_map(|m| m.iter()).flat_map(|(k, v)| {
        let values: Vec<&Value> = match v {
            Value::List(items) => items.iter().collect(),
            other => vec![other],
        };
        values.into_iter().map(move |v| (k.clone(), stamp_text(v)))
    })
}

/// A stamp value as `revoked_stamp.value` holds it: strings as they are, others as JSON.
fn stamp_text(v: &Value) -> String {
    match v {
        Value::Str(s) => s.clone(),
        other => celeriac_protocol::json::to_string(other),
    }
}

fn ok(text: impl Into<String>) -> Value {
    let mut m = Map::with_capacity(1);
    m.insert("ok".into(), Value::Str(text.into()));
    Value::Map(m)
}

fn nok(text: impl Into<String>) -> Value {
    let mut m = Map::with_capacity(1);
    m.insert("error".into(), Value::Str(text.into()));
    Value::Map(m)
}

fn map<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::Map(entries.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

/// Python's `repr` of a set of strings, as Celery's revoke reply prints it.
fn set_repr(ids: &[String]) -> String {
    let items: Vec<String> = ids.iter().map(|i| celeriac_protocol::pyrepr::repr(&Value::Str(i.clone()))).collect();
    format!("{{{}}}", items.join(", "))
}

/// A signal name or number as a number (`SIGTERM`, `TERM`, `15`); Celery's `signum`.
pub(crate) fn signum(signal: Option<&Value>) -> Result<i32, String> {
    let text = match signal {
        None | Some(Value::Null) => return Ok(libc::SIGTERM),
        Some(Value::Int(n)) => {
            return i32::try_from(*n).ok().filter(|n| *n >= 1).ok_or_else(|| format!("Invalid signal specified: {n}"))
        }
        Some(Value::Str(s)) => s.trim().to_ascii_uppercase(),
        Some(other) => return Err(format!("Invalid signal specified: {}", celeriac_protocol::pyrepr::repr(other))),
    };
    if let Ok(n) = text.parse::<i32>() {
        return if n >= 1 { Ok(n) } else { Err(format!("Invalid signal specified: {n}")) };
    }
    let name = text.strip_prefix("SIG").unwrap_or(&text);
    let number = match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "ALRM" => libc::SIGALRM,
        "ABRT" => libc::SIGABRT,
        _ => return Err(format!("Invalid signal specified: {text}")),
    };
    Ok(number)
}

fn ids_of(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Str(s)) => vec![s.clone()],
        Some(Value::List(items)) => items.iter().filter_map(|i| i.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    }
}

/// `Request.info()`: what `inspect active|reserved|query_task` shows of a delivery.
fn info(t: &Tracked, hostname: &str, safe: bool) -> Value {
    let shown = Shown {
        id: &t.id,
        name: &t.name,
        queue: &t.queue,
        priority: t.priority,
        redelivered: t.redelivered,
        payload: &t.payload,
        started: t.started,
        worker_pid: t.started.map(|_| t.control.pid().unwrap_or_else(std::process::id)),
    };
    shown.info(hostname, safe)
}

/// A delivery as `Request.info()` shows it: held by the worker, or waiting for its ETA.
struct Shown<'a> {
    id: &'a str,
    name: &'a str,
    queue: &'a str,
    priority: i16,
    redelivered: bool,
    payload: &'a [u8],
    /// When it started (seconds since the epoch).
    started: Option<f64>,
    /// The process running it.
    worker_pid: Option<u32>,
}

impl Shown<'_> {
    fn info(&self, hostname: &str, safe: bool) -> Value {
        let (args, kwargs) = match TaskMessage::decode(self.payload, &Accept::new(["json", "msgpack"])) {
            Ok(m) if !safe => (Value::List(m.args), Value::Map(m.kwargs)),
            Ok(m) => (
                Value::Str(m.headers.argsrepr.clone().unwrap_or_default()),
                Value::Str(m.headers.kwargsrepr.clone().unwrap_or_default()),
            ),
            // A body celeriac does not decode (pickle, yaml): its repr, as `safe` shows it.
            Err(_) => match TaskMessage::decode_head(self.payload, &Accept::new(["json", "msgpack", "pickle", "yaml"]))
            {
                Ok(m) => (
                    Value::Str(m.headers.argsrepr.clone().unwrap_or_default()),
                    Value::Str(m.headers.kwargsrepr.clone().unwrap_or_default()),
                ),
                Err(_) => (Value::Null, Value::Null),
            },
        };
        map([
            ("id", self.id.into()),
            ("name", self.name.into()),
            ("args", args),
            ("kwargs", kwargs),
            ("type", self.name.into()),
            ("hostname", hostname.into()),
            ("time_start", self.started.map_or(Value::Null, Value::Float)),
            ("acknowledged", Value::Bool(self.started.is_some())),
            (
                "delivery_info",
                map([
                    ("exchange", "".into()),
                    ("routing_key", self.queue.into()),
                    ("priority", Value::Int(i64::from(self.priority))),
                    ("redelivered", Value::Bool(self.redelivered)),
                ]),
            ),
            ("worker_pid", self.worker_pid.map_or(Value::Null, |pid| Value::Int(i64::from(pid)))),
        ])
    }
}

/// The most ETA messages one `inspect scheduled` reply lists.
pub(super) const SCHEDULED_MAX: i64 = 10_000;

/// `inspect scheduled`: the ETA messages of the queues this worker answers for
/// ([`celeriac_store::Store::message_scheduled`]), as Celery lists the ones its timer holds.
async fn scheduled(shared: &Shared) -> Value {
    let queues = shared.queues();
    let heads = Accept::new(["json", "msgpack", "pickle", "yaml"]);
    match shared.store.message_scheduled(shared.worker_id, &queues[..], SCHEDULED_MAX).await {
        Ok(rows) => Value::List(
            rows.iter()
                // Undecodable: dead-lettered when due; nothing to show of it meanwhile.
                .filter_map(|m| Some((m, TaskMessage::decode_head(&m.payload, &heads).ok()?)))
                .map(|(m, head)| {
                    let shown = Shown {
                        id: &head.headers.id,
                        name: &head.headers.task,
                        queue: &m.queue,
                        priority: m.priority,
                        redelivered: m.redelivered,
                        payload: &m.payload,
                        started: None,
                        worker_pid: None,
                    };
                    map([
                        ("eta", Value::Str(iso_eta(m.eta))),
                        // The priority of Celery's timer entry for an ETA task.
                        ("priority", Value::Int(6)),
                        ("request", shown.info(&shared.hostname, false)),
                    ])
                })
                .collect(),
        ),
        Err(e) => nok(format!("cannot read the scheduled tasks: {e}")),
    }
}

/// A due time as Python's `datetime.isoformat()` writes an aware UTC one.
fn iso_eta(eta: chrono::DateTime<Utc>) -> String {
    if eta.timestamp_subsec_micros() == 0 {
        eta.format("%Y-%m-%dT%H:%M:%S+00:00").to_string()
    } else {
        eta.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string()
    }
}

/// `stats` → `rusage` (only where the pool's process helpers are built in).
#[cfg(feature = "python")]
fn rusage() -> Value {
    Value::Map(
        celeriac_pool::process::rusage()
            .into_iter()
            .map(|(name, v)| {
                #[allow(clippy::cast_possible_truncation)]
                let v = if name.ends_with("time") { Value::Float(v) } else { Value::Int(v as i64) };
                (name.to_owned(), v)
            })
            .collect(),
    )
}

#[cfg(not(feature = "python"))]
fn rusage() -> Value {
    Value::Map(Map::new())
}

/// What a command does to the worker, besides its reply.
enum After {
    Nothing,
    /// `shutdown`: stop after replying (Celery does not reply to it).
    Shutdown,
}

/// Runs one command; `None` when Celery sends no reply for it.
async fn handle(shared: &Arc<Shared>, command: &ControlCommand) -> (Option<Value>, After) {
    let control = &shared.control;
    let hostname = shared.hostname.as_ref();
    let args = &command.arguments;
    let reply = match command.method.as_str() {
        "ping" => ok("pong"),
        "active" | "dump_active" => {
            let safe = matches!(args.get("safe"), Some(Value::Bool(true)));
            let tables = control.lock();
            Value::List(tables.held.values().filter(|t| t.started.is_some()).map(|t| info(t, hostname, safe)).collect())
        }
        "reserved" | "dump_reserved" => {
            let tables = control.lock();
            Value::List(
                tables.held.values().filter(|t| t.started.is_none()).map(|t| info(t, hostname, false)).collect(),
            )
        }
        // ETA tasks wait in the database: the oldest worker of each queue lists its ones.
        "scheduled" | "dump_schedule" => scheduled(shared).await,
        "query_task" => {
            let ids = ids_of(args.get("ids"));
            let tables = control.lock();
            let mut found = Map::new();
            for t in tables.held.values().filter(|t| ids.contains(&t.id)) {
                let state = if t.started.is_some() { "active" } else { "reserved" };
                found.insert(t.id.clone(), Value::List(vec![state.into(), info(t, hostname, false)]));
            }
            Value::Map(found)
        }
        "revoked" | "dump_revoked" => match shared.store.revoked_list(celeriac_store::REVOKES_MAX).await {
            Ok(ids) => Value::List(ids.into_iter().map(|r| Value::Str(r.task_id)).collect()),
            Err(e) => nok(format!("cannot read the revoked tasks: {e}")),
        },
        "registered" | "dump_tasks" => registered(shared, args),
        "stats" => stats(shared),
        "active_queues" => Value::List(shared.queues().iter().map(|q| queue_info(q)).collect()),
        "conf" | "dump_conf" => {
            let with_defaults = matches!(args.get("with_defaults"), Some(Value::Bool(true)));
            match &shared.config.control.app_conf {
                Some((own, all)) => {
                    if with_defaults {
                        all.clone()
                    } else {
                        own.clone()
                    }
                }
                None => map([
                    ("task_default_queue", shared.config.default_queue.as_str().into()),
                    ("worker_concurrency", Value::Int(i64::try_from(shared.config.concurrency).unwrap_or(i64::MAX))),
                    (
                        "worker_prefetch_multiplier",
                        Value::Int(i64::try_from(shared.config.prefetch_multiplier).unwrap_or(i64::MAX)),
                    ),
                ]),
            }
        }
        "clock" => map([("clock", Value::Int(control.clock.load(Ordering::Relaxed)))]),
        "revoke" => revoke(shared, ids_of(args.get("task_id")), args.get("terminate"), args.get("signal")).await,
        "terminate" => revoke(shared, ids_of(args.get("task_id")), Some(&Value::Bool(true)), args.get("signal")).await,
        "revoke_by_stamped_headers" => revoke_by_stamps(shared, args),
        "rate_limit" => rate_limit(shared, args).await,
        "time_limit" => time_limit(shared, args),
        "add_consumer" | "cancel_consumer" => {
            let Some(queue) = args.get("queue").and_then(Value::as_str).filter(|q| !q.is_empty()) else {
                return (Some(nok("no queue given")), After::Nothing);
            };
            let mut queues = shared.queues().as_ref().clone();
            if command.method == "add_consumer" {
                if !queues.iter().any(|q| q == queue) {
                    queues.push(queue.to_owned());
                    tracing::info!("Started consuming from {queue}");
                    shared.set_queues(queues);
                }
                ok(format!("add consumer {queue}"))
            } else {
                if queues.iter().any(|q| q == queue) {
                    queues.retain(|q| q != queue);
                    tracing::info!("Stopped consuming from {queue}");
                    shared.set_queues(queues);
                }
                ok(format!("no longer consuming from {queue}"))
            }
        }
        "pool_grow" | "pool_shrink" => pool_resize(shared, command.method == "pool_grow", args),
        "enable_events" => {
            if shared.events.set_tasks(true) {
                tracing::info!("Events of group {{task}} enabled by remote.");
                ok("task events enabled")
            } else {
                ok("task events already enabled")
            }
        }
        "disable_events" => {
            if shared.events.set_tasks(false) {
                tracing::info!("Events of group {{task}} disabled by remote.");
                ok("task events disabled")
            } else {
                ok("task events already disabled")
            }
        }
        "heartbeat" => {
            tracing::debug!("Heartbeat requested by remote.");
            super::events::EventService::heartbeat(shared);
            return (None, After::Nothing);
        }
        "shutdown" => {
            let msg = args.get("msg").and_then(Value::as_str).unwrap_or("Got shutdown from remote");
            tracing::warn!("{msg}");
            return (None, After::Shutdown);
        }
        other => nok(format!("No such command: {other}")),
    };
    (Some(reply), After::Nothing)
}

fn registered(shared: &Shared, args: &Map) -> Value {
    let builtins = matches!(args.get("builtins"), Some(Value::Bool(true)));
    // Celery's `taskinfoitems or DEFAULT_TASK_INFO_ITEMS`: an empty list means the defaults.
    let wanted: Vec<String> = match args.get("taskinfoitems") {
        Some(Value::List(items)) if !items.is_empty() => {
            items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()
        }
        _ => vec!["exchange".into(), "routing_key".into(), "rate_limit".into()],
    };
    let mut names = shared.registry.names();
    names.sort();
    Value::List(
        names
            .into_iter()
            .filter(|n| builtins || !n.starts_with("celery."))
            .map(|name| {
                let rate = shared.registry.rate_limits(name).per_worker;
                match rate.filter(|_| wanted.iter().any(|w| w == "rate_limit")) {
                    Some(rate) => Value::Str(format!("{name} [rate_limit={rate}]")),
                    None => Value::Str(name.to_owned()),
                }
            })
            .collect(),
    )
}

fn stats(shared: &Shared) -> Value {
    let config = &shared.config;
    let control = &shared.control;
    let total: Map = control
        .lock()
        .total
        .iter()
        .map(|(k, v)| (k.clone(), Value::Int(i64::try_from(*v).unwrap_or(i64::MAX))))
        .collect();
    let processes: Vec<Value> = match &config.control.pool_processes {
        Some(pids) => pids().into_iter().map(|p| Value::Int(i64::from(p))).collect(),
        None => vec![Value::Int(i64::from(std::process::id()))],
    };
    let concurrency = i64::try_from(config.concurrency).unwrap_or(i64::MAX);
    let uptime = (Utc::now() - control.started).num_seconds();
    let mut reply = Map::new();
    reply.insert("total".into(), Value::Map(total));
    reply.insert("pid".into(), Value::Int(i64::from(std::process::id())));
    reply.insert("clock".into(), Value::Str(control.clock.load(Ordering::Relaxed).to_string()));
    reply.insert("uptime".into(), Value::Int(uptime));
    reply.insert(
        "pool".into(),
        map([
            ("implementation", config.control.pool_implementation.as_str().into()),
            ("max-concurrency", Value::Int(concurrency)),
            ("processes", Value::List(processes)),
            ("max-tasks-per-child", "N/A".into()),
            ("put-guarded-by-semaphore", Value::Bool(false)),
            ("timeouts", Value::List(vec![Value::Int(0), Value::Int(0)])),
        ]),
    );
    reply.insert(
        "broker".into(),
        map([
            ("hostname", Value::Null),
            ("userid", Value::Null),
            ("virtual_host", "/".into()),
            ("port", Value::Null),
            ("insist", Value::Bool(false)),
            ("ssl", Value::Bool(false)),
            ("transport", "celeriac".into()),
            ("connect_timeout", Value::Int(4)),
            ("transport_options", Value::Map(Map::new())),
            ("login_method", Value::Null),
            ("uri_prefix", Value::Null),
            ("heartbeat", Value::Float(120.0)),
            ("failover_strategy", "round-robin".into()),
            ("alternates", Value::List(Vec::new())),
        ]),
    );
    reply.insert("prefetch_count".into(), Value::Int(i64::try_from(celery_prefetch_count(shared)).unwrap_or(i64::MAX)));
    reply.insert("rusage".into(), rusage());
    Value::Map(reply)
}

/// What Celery's `stats` calls the prefetch count: the messages reserved beyond the running
/// ones, `prefetch_multiplier` per process (of the pool now, or of `--autoscale`'s maximum).
fn celery_prefetch_count(shared: &Shared) -> usize {
    let processes = match shared.config.autoscale {
        Some(limits) => limits.max.max(shared.config.concurrency),
        None => shared.pool_size.load(Ordering::Relaxed),
    };
    processes * shared.config.prefetch_multiplier
}

/// A queue as kombu's `Queue.as_dict(recurse=True)` describes it.
fn queue_info(name: &str) -> Value {
    map([
        ("name", name.into()),
        (
            "exchange",
            map([
                ("name", name.into()),
                ("type", "direct".into()),
                ("arguments", Value::Null),
                ("durable", Value::Bool(true)),
                ("passive", Value::Bool(false)),
                ("auto_delete", Value::Bool(false)),
                ("delivery_mode", Value::Null),
                ("no_declare", Value::Bool(false)),
            ]),
        ),
        ("routing_key", name.into()),
        ("queue_arguments", Value::Null),
        ("binding_arguments", Value::Null),
        ("consumer_arguments", Value::Null),
        ("durable", Value::Bool(true)),
        ("exclusive", Value::Bool(false)),
        ("auto_delete", Value::Bool(false)),
        ("no_ack", Value::Bool(false)),
        ("alias", Value::Null),
        ("bindings", Value::List(Vec::new())),
        ("no_declare", Value::Null),
        ("expires", Value::Null),
        ("message_ttl", Value::Null),
        ("max_length", Value::Null),
        ("max_length_bytes", Value::Null),
        ("max_priority", Value::Null),
    ])
}

/// Celery's `revoke`: remember the ids (the publisher recorded them durably), store REVOKED for
/// those not running, and kill the running ones when asked to terminate.
async fn revoke(shared: &Arc<Shared>, ids: Vec<String>, terminate: Option<&Value>, signal: Option<&Value>) -> Value {
    let control = &shared.control;
    let terminate = matches!(terminate, Some(Value::Bool(true)) | Some(Value::Int(1..)));
    let running: Vec<String> = {
        let mut tables = control.lock();
        for id in &ids {
            if tables.revoked.insert(id.clone()) {
                tables.revoked_order.push_back(id.clone());
            }
        }
        // Bounded as Celery's in-memory set is (the database keeps them all, and claims see them).
        while tables.revoked_order.len() > REVOKED_IN_MEMORY {
            if let Some(old) = tables.revoked_order.pop_front() {
                tables.revoked.remove(&old);
            }
        }
        tables.held.values().filter(|t| t.started.is_some() && ids.contains(&t.id)).map(|t| t.id.clone()).collect()
    };
    if let Some(results) = &shared.results {
        super::effects::store_revoked(shared, results, &ids, &running).await;
    }
    if terminate {
        let signal = match signum(signal) {
            Ok(s) => s,
            Err(e) => return nok(e),
        };
        let mut terminated = Vec::new();
        for t in control.lock().held.values().filter(|t| ids.contains(&t.id)) {
            if !terminated.contains(&t.id) {
                tracing::info!("Terminating {} ({signal})", t.id);
                // A reserved one never starts: it is revoked (Celery terminates it on accept).
                if t.started.is_some() {
                    t.control.terminate(signal);
                }
                terminated.push(t.id.clone());
            }
        }
        if terminated.is_empty() {
            return ok("terminate: tasks unknown");
        }
        return ok(format!("terminate: {}", terminated.join(", ")));
    }
    tracing::info!("Tasks flagged as revoked: {}", ids.join(", "));
    ok(format!("tasks {} flagged as revoked", set_repr(&ids)))
}

fn revoke_by_stamps(shared: &Shared, args: &Map) -> Value {
    let control = &shared.control;
    let mut pairs = Vec::new();
    match args.get("headers") {
        Some(Value::Map(h)) => {
            for (k, v) in h {
                match v {
                    Value::List(items) => pairs.extend(items.iter().map(|i| (k.clone(), stamp_text(i)))),
                    other => pairs.push((k.clone(), stamp_text(other))),
                }
            }
        }
        Some(Value::List(items)) => {
            for item in items.iter().filter_map(Value::as_str) {
                if let Some((k, v)) = item.split_once('=') {
                    pairs.push((k.to_owned(), v.to_owned()));
                }
            }
        }
        _ => {}
    }
    let headers_repr = celeriac_protocol::pyrepr::repr(args.get("headers").unwrap_or(&Value::Null));
    let terminate = matches!(args.get("terminate"), Some(Value::Bool(true)));
    let mut tables = control.lock();
    tables.stamps.extend(pairs.iter().cloned());
    if !terminate {
        return ok(format!("headers {headers_repr} flagged as revoked, but not terminated"));
    }
    let signal = match signum(args.get("signal")) {
        Ok(s) => s,
        Err(e) => return nok(e),
    };
    let mut hit = false;
    for t in tables.held.values().filter(|t| t.started.is_some()) {
        let Ok(m) = TaskMessage::decode_head(&t.payload, &Accept::new(["json", "msgpack", "pickle", "yaml"])) else {
            continue;
        };
        if stamps_of(&m).any(|s| pairs.contains(&s)) {
            t.control.terminate(signal);
            hit = true;
        }
    }
    if hit {
        ok(format!("headers {headers_repr} revoked"))
    } else {
        ok(format!("headers {headers_repr} were not terminated"))
    }
}

/// Celery's `rate_limit`: the per-worker limit of a task type, set for every celeriac worker
/// through `celeriac.rate_limit` (as `celeriac rate-limit set --per-worker` does; applied within
/// half a second).
async fn rate_limit(shared: &Shared, args: &Map) -> Value {
    let Some(task) = args.get("task_name").and_then(Value::as_str) else { return nok("unknown task") };
    if !shared.registry.contains(task) {
        return nok("unknown task");
    }
    let spec = match args.get("rate_limit") {
        None | Some(Value::Null) => String::new(),
        Some(Value::Str(s)) => s.trim().to_owned(),
        Some(other) => celeriac_protocol::json::to_string(other),
    };
    let parsed = match celeriac_protocol::Rate::parse(&spec) {
        Ok(p) => p,
        Err(e) => return nok(format!("Invalid rate limit string: {e}")),
    };
    let value = celeriac_store::RateValue {
        spec: parsed.as_ref().map_or_else(|| "0".to_owned(), |r| r.spec().to_owned()),
        per_second: parsed.as_ref().map_or(0.0, celeriac_protocol::Rate::per_second),
    };
    if let Err(e) = shared.store.rate_limit_set(task, celeriac_store::RateLimitScope::Worker, &value).await {
        return nok(format!("cannot store the rate limit: {e}"));
    }
    if parsed.is_none() {
        tracing::info!("Rate limits disabled for tasks of type {task}");
        ok("rate limit disabled successfully")
    } else {
        tracing::info!("New rate limit for tasks of type {task}: {}.", value.spec);
        ok("new rate limit set successfully")
    }
}

fn time_limit(shared: &Shared, args: &Map) -> Value {
    let Some(task) = args.get("task_name").and_then(Value::as_str) else { return nok("unknown task") };
    if !shared.registry.contains(task) {
        return nok("unknown task");
    }
    let seconds = |key: &str| match args.get(key) {
        Some(Value::Int(n)) => Some(*n as f64),
        Some(Value::Float(f)) => Some(*f),
        Some(Value::Str(s)) => s.parse().ok(),
        _ => None,
    };
    let (soft, hard) = (seconds("soft"), seconds("hard"));
    crate::task::set_time_limits(task, soft, hard);
    tracing::info!(
        "New time limits for tasks of type {task}: soft={} hard={}",
        soft.map_or("None".into(), celeriac_protocol::json::python_float_repr),
        hard.map_or("None".into(), celeriac_protocol::json::python_float_repr)
    );
    ok("time limits set successfully")
}

fn pool_resize(shared: &Shared, grow: bool, args: &Map) -> Value {
    let n = args.get("n").and_then(Value::as_i64).unwrap_or(1).clamp(0, 10_000);
    match resize(shared, grow, usize::try_from(n).unwrap_or(0)) {
        Ok(_) if grow => ok("pool will grow"),
        Ok(_) => ok("pool will shrink"),
        Err(why) => nok(why),
    }
}

/// Grows or shrinks how many tasks run at once by `n` (`pool_grow`/`pool_shrink`, and
/// `--autoscale`); never below one. Returns by how many it changed.
pub(super) fn resize(shared: &Shared, grow: bool, n: usize) -> Result<usize, String> {
    let (tasks, slots) = match &shared.config.control.resize {
        PoolResize::Concurrency if grow => (n, n),
        PoolResize::Concurrency => {
            let fewer = n.min(shared.pool_size.load(Ordering::Relaxed).saturating_sub(1));
            if fewer == 0 && n > 0 {
                return Err("ValueError(\"Can't shrink pool below one process\")".into());
            }
            (fewer, fewer)
        }
        PoolResize::Pool(resize) => resize(grow, n)?,
        PoolResize::Fixed(why) => return Err(why.clone()),
    };
    // As Celery's prefetch count follows `pool_grow`/`pool_shrink`; with `--autoscale` the
    // window was sized for its maximum, as Celery's is.
    if shared.config.autoscale.is_none() {
        shared.window.pool_resized(grow, tasks * shared.config.prefetch_multiplier + slots, slots);
    }
    if grow {
        shared.pool_size.fetch_add(tasks, Ordering::Relaxed);
        shared.run_slots.add_permits(slots);
    } else {
        let _ = shared.pool_size.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| Some(s.saturating_sub(tasks)));
        // Slots in use are taken as their tasks end.
        let run_slots = shared.run_slots.clone();
        if let Ok(slots) = u32::try_from(slots) {
            tokio::spawn(async move {
                if let Ok(permits) = run_slots.acquire_many_owned(slots).await {
                    permits.forget();
                }
            });
        }
    }
    Ok(tasks)
}

/// Reads the control exchange and answers the commands addressed to this worker.
pub(super) struct ControlService {
    pub(super) shared: Arc<Shared>,
    /// Cancelled by a `shutdown` command: the worker's own shutdown token.
    pub(super) shutdown_worker: CancellationToken,
    /// The broadcast position read before the worker's first claim (a revoke committed after
    /// it is heard, whatever the claims took meanwhile); `None`: read it at start.
    pub(super) start: Option<i64>,
}

/// How long a gap in the broadcast positions is waited for (a publisher that took an earlier
/// position but committed later).
const REORDER_WINDOW: Duration = Duration::from_secs(2);

impl Service for ControlService {
    fn name(&self) -> &'static str {
        "remote control"
    }

    async fn run(self, shutdown: CancellationToken) {
        let shared = self.shared;
        let store = shared.store.clone();
        let exchanges = vec![shared.control.exchange.clone()];
        let wake = Arc::new(Notify::new());
        let mut listening = celeriac_store::service::Supervisor::default();
        if shared.config.listen {
            let (wake, exchanges) = (wake.clone(), exchanges.clone());
            listening.start(store.broadcast_listener().service(move |w| {
                if w.concerns(&exchanges) {
                    wake.notify_one();
                }
            }));
        }
        let mut backoff = Backoff::new();
        let mut position = loop {
            if let Some(start) = self.start {
                break start;
            }
            match store.broadcast_head().await {
                Ok(p) => break p,
                Err(e) => {
                    tracing::warn!(error = %e, "remote control: cannot read the broadcast position");
                    if !backoff.wait(&shutdown).await {
                        listening.stop().await;
                        return;
                    }
                }
            }
        };
        match store.revoked_stamps().await {
            Ok(stamps) => shared.control.load_stamps(stamps),
            Err(e) => tracing::warn!(error = %e, "remote control: cannot read the revoked stamps"),
        }
        let mut seen: BTreeMap<i64, Instant> = BTreeMap::new();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = wake.notified() => {}
                () = tokio::time::sleep(shared.config.poll_interval) => {}
            }
            let rows = match store.broadcast_read(&exchanges, position, 1000).await {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(error = %e, "remote control: cannot read commands");
                    continue;
                }
            };
            let now = Instant::now();
            for row in rows {
                // The first sighting counts: a gap is given up on 2 s after the row behind it
                // was first seen, however often it is read again meanwhile.
                if row.id <= position || seen.contains_key(&row.id) {
                    continue;
                }
                seen.insert(row.id, now);
                if let Some(After::Shutdown) = dispatch(&shared, &row).await {
                    self.shutdown_worker.cancel();
                }
            }
            // Positions move past ids seen once every id before them was seen, or a gap is old.
            while let Some((&id, &at)) = seen.first_key_value() {
                if id != position + 1 && now.duration_since(at) <= REORDER_WINDOW {
                    break;
                }
                position = id;
                seen.remove(&id);
            }
        }
        listening.stop().await;
    }
}

/// Parses one broadcast, runs it if it is addressed to this worker, and replies.
async fn dispatch(shared: &Arc<Shared>, row: &BroadcastMessage) -> Option<After> {
    let command = match ControlCommand::parse(&row.payload) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(position = row.id, error = %e, "remote control: unreadable command ignored");
            return None;
        }
    };
    let hostname = shared.hostname.as_ref();
    let addressed = match &command.pattern {
        Some((pattern, matcher)) if matcher == "pcre" && command.destination.as_ref().is_none_or(Vec::is_empty) => {
            // kombu matches with `re.match`: anchored at the start.
            regex::Regex::new(&format!("^(?:{pattern})")).is_ok_and(|r| r.is_match(hostname))
        }
        _ => command.addressed_to(hostname),
    };
    if !addressed {
        return None;
    }
    let control = &shared.control;
    let _ = control.clock.fetch_max(command.clock, Ordering::Relaxed);
    control.clock.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(method = %command.method, "remote control: command received");
    let (reply, after) = handle(shared, &command).await;
    if let (Some(reply), Some((exchange, routing_key)), Some(ticket)) = (reply, &command.reply_to, &command.ticket) {
        let clock = control.clock.fetch_add(1, Ordering::Relaxed) + 1;
        let payload = pidbox::reply_envelope(exchange, routing_key, hostname, reply, ticket, clock);
        if let Err(e) = shared.store.broadcast_publish(exchange, routing_key, &payload, None).await {
            tracing::warn!(error = %e, method = %command.method, "remote control: cannot reply");
        }
    }
    Some(after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_or_number() {
        assert_eq!(signum(None), Ok(libc::SIGTERM));
        assert_eq!(signum(Some(&"SIGKILL".into())), Ok(libc::SIGKILL));
        assert_eq!(signum(Some(&"kill".into())), Ok(libc::SIGKILL));
        assert_eq!(signum(Some(&"9".into())), Ok(9));
        assert_eq!(signum(Some(&Value::Int(15))), Ok(15));
        assert!(signum(Some(&"SIGNOPE".into())).is_err());
    }

    #[test]
    fn revoke_replies_print_ids_as_a_python_set() {
        assert_eq!(set_repr(&["a".into()]), "{'a'}");
        assert_eq!(set_repr(&["a".into(), "b".into()]), "{'a', 'b'}");
    }
}
