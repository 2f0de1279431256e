//! Celery's events from a celeriac worker: `worker-online|heartbeat|offline` always (as a
//! Celery worker sends them unless `--without-heartbeat`), and the `task-*` events with `-E`
//! (`worker_send_task_events`, or the `enable_events` command), with Celery's fields, published
//! to the event exchange (`celeryev`) through `celeriac.broadcast`. `celery events` and Flower
//! read them there through the kombu transport.
//!
//! Events are buffered and written in batches, never on a task's own path: every
//! [`FLUSH_EVERY`] (or at [`FLUSH_AT`] events), the `task-*` events go out as one message whose
//! body is the list of them, routed `task.multi`, as Celery's own prefork worker sends its
//! buffered task events (`celery events` and Flower take a list body as that many events);
//! `worker-*` events go one message each. A worker with task events off writes only its
//! heartbeat every [`HEARTBEAT`].

use std::{
    sync::{
        atomic::{AtomicBool, AtomicI64, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::Duration,
};

use std::collections::VecDeque;

use celeriac_protocol::{json, pidbox, Map, Value};
use celeriac_store::service::Service;
use chrono::Utc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Shared;

/// How often buffered events are written.
const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Buffered events beyond which they are written at once.
const FLUSH_AT: usize = 1000;
/// Events kept while the database cannot be reached; older ones are dropped beyond it.
const MOST_BUFFERED: usize = 50_000;
/// Celery's worker heartbeat interval (`freq`).
const HEARTBEAT: Duration = Duration::from_secs(2);

/// Event settings of a worker.
#[derive(Debug, Clone)]
pub struct EventSettings {
    /// Send `task-*` events (Celery's `-E`, `worker_send_task_events`). Default: off.
    pub task_events: bool,
    /// Send `worker-*` events (off: Celery's `--without-heartbeat`). Default: on.
    pub worker_events: bool,
    /// The event exchange (Celery's `event_exchange`). Default: `celeryev`.
    pub exchange: String,
}

impl Default for EventSettings {
    fn default() -> Self {
        EventSettings { task_events: false, worker_events: true, exchange: "celeryev".to_owned() }
    }
}

/// A worker's event dispatcher.
pub(super) struct Events {
    task_events: AtomicBool,
    worker_events: bool,
    exchange: String,
    hostname: Arc<str>,
    /// Fields every event carries that do not change: `utcoffset`, `pid`.
    utcoffset: i64,
    pid: i64,
    buffer: Mutex<Buffered>,
    wake: Notify,
}

/// Events waiting to be written.
#[derive(Default)]
struct Buffered {
    /// `task-*` events, each a JSON object: written as one `task.multi` message.
    tasks: VecDeque<Vec<u8>>,
    /// `worker-*` events: their routing keys and envelopes.
    others: VecDeque<(String, Vec<u8>)>,
}

impl Buffered {
    fn len(&self) -> usize {
        self.tasks.len() + self.others.len()
    }

    fn is_empty(&self) -> bool {
        self.tasks.is_empty() && self.others.is_empty()
    }

    /// Keeps the newest [`MOST_BUFFERED`] of each kind.
    fn trim(&mut self) {
        while self.tasks.len() > MOST_BUFFERED {
            self.tasks.pop_front();
        }
        while self.others.len() > MOST_BUFFERED {
            self.others.pop_front();
        }
    }
}

impl Events {
    pub(super) fn new(settings: &EventSettings, hostname: Arc<str>) -> Events {
        Events {
            task_events: AtomicBool::new(settings.task_events),
            worker_events: settings.worker_events,
            exchange: settings.exchange.clone(),
            hostname,
            utcoffset: utcoffset(),
            pid: i64::from(std::process::id()),
            buffer: Mutex::default(),
            wake: Notify::new(),
        }
    }

    /// Whether `task-*` events are sent.
    pub(super) fn tasks(&self) -> bool {
        self.task_events.load(Ordering::Relaxed)
    }

    /// Turns `task-*` events on or off; whether that changed anything.
    pub(super) fn set_tasks(&self, on: bool) -> bool {
        self.task_events.swap(on, Ordering::Relaxed) != on
    }

    /// Queues an event of `kind` with `fields`, as Celery's `EventDispatcher.send` builds it.
    pub(super) fn send(&self, clock: &AtomicI64, kind: &str, fields: Vec<(&str, Value)>) {
        #[allow(clippy::cast_precision_loss)]
        let now = Utc::now().timestamp_micros() as f64 / 1e6;
        let mut event = Map::with_capacity(fields.len() + 6);
        event.insert("hostname".into(), Value::Str(self.hostname.to_string()));
        event.insert("utcoffset".into(), Value::Int(self.utcoffset));
        event.insert("pid".into(), Value::Int(self.pid));
        event.insert("clock".into(), Value::Int(clock.fetch_add(1, Ordering::Relaxed) + 1));
        for (k, v) in fields {
            event.insert(k.to_owned(), v);
        }
        event.insert("timestamp".into(), Value::Float(now));
        event.insert("type".into(), Value::Str(kind.to_owned()));
        let task = kind.starts_with("task-");
        let encoded = if task {
            json::to_vec(&Value::Map(event))
        } else {
            pidbox::event_envelope(&self.exchange, event, &self.hostname)
        };
        let len = {
            let mut buffer = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
            if task {
                buffer.tasks.push_back(encoded);
            } else {
                buffer.others.push_back((kind.replace('-', "."), encoded));
            }
            buffer.trim();
            buffer.len()
        };
        if len >= FLUSH_AT {
            self.wake.notify_one();
        }
    }

    fn take(&self) -> Buffered {
        std::mem::take(&mut *self.buffer.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Puts events that could not be written back, before those buffered since.
    fn put_back(&self, mut events: Buffered) {
        let mut buffer = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
        let newer = std::mem::take(&mut *buffer);
        events.tasks.extend(newer.tasks);
        events.others.extend(newer.others);
        events.trim();
        *buffer = events;
    }
}

/// Celery's `utcoffset()`: hours west of UTC, as Python's `time.timezone // 3600`.
fn utcoffset() -> i64 {
    let offset = chrono::Local::now().offset().local_minus_utc();
    i64::from(-offset).div_euclid(3600)
}

/// `os.getloadavg()`, rounded as Celery's `load_average` does.
fn load_average() -> Value {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let values: Vec<Value> = text
        .split_whitespace()
        .take(3)
        .map(|v| Value::Float((v.parse::<f64>().unwrap_or(0.0) * 100.0).round() / 100.0))
        .collect();
    Value::List(values)
}

/// Writes buffered events, and sends the worker's online, heartbeat and offline events.
pub(super) struct EventService {
    pub(super) shared: Arc<Shared>,
}

impl EventService {
    /// Sends a `worker-heartbeat` now (the `heartbeat` command: Flower asks for one on start).
    pub(super) fn heartbeat(shared: &Shared) {
        Self::worker_event(shared, "worker-heartbeat");
    }

    fn worker_event(shared: &Shared, kind: &str) {
        let events = &shared.events;
        if !events.worker_events {
            return;
        }
        let (active, processed) = shared.control.counts();
        events.send(
            &shared.control.clock,
            kind,
            vec![
                ("freq", Value::Float(HEARTBEAT.as_secs_f64())),
                ("active", Value::Int(active)),
                ("processed", Value::Int(processed)),
                ("loadavg", load_average()),
                ("sw_ident", "celeriac".into()),
                ("sw_ver", env!("CARGO_PKG_VERSION").into()),
                ("sw_sys", "Linux".into()),
            ],
        );
    }

    /// Writes the buffered events: the `task-*` events as one `task.multi` message (one row,
    /// so a busy worker adds one row per flush, not three per task), the others one row each.
    async fn flush(shared: &Shared) {
        let events = &shared.events;
        let batch = events.take();
        if batch.is_empty() {
            return;
        }
        let mut rows: Vec<(String, String, Vec<u8>)> = Vec::with_capacity(batch.others.len() + 1);
        if !batch.tasks.is_empty() {
            let size = batch.tasks.iter().map(|e| e.len() + 1).sum::<usize>() + 1;
            let mut body = Vec::with_capacity(size);
            body.push(b'[');
            for (i, event) in batch.tasks.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(event);
            }
            body.push(b']');
            let envelope = pidbox::events_envelope(&events.exchange, "task.multi", &body, &events.hostname);
            rows.push((events.exchange.clone(), "task.multi".to_owned(), envelope));
        }
        for (routing_key, envelope) in &batch.others {
            rows.push((events.exchange.clone(), routing_key.clone(), envelope.clone()));
        }
        if let Err(e) = shared.store.broadcast_publish_many(&rows).await {
            tracing::debug!(error = %e, count = batch.len(), "events: cannot publish; keeping them for the next flush");
            events.put_back(batch);
        }
    }
}

impl Service for EventService {
    fn name(&self) -> &'static str {
        "events"
    }

    async fn run(self, shutdown: CancellationToken) {
        let shared = self.shared;
        Self::worker_event(&shared, "worker-online");
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.tick().await;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = heartbeat.tick() => Self::worker_event(&shared, "worker-heartbeat"),
                () = shared.events.wake.notified() => {}
                () = tokio::time::sleep(FLUSH_EVERY) => {}
            }
            Self::flush(&shared).await;
        }
        Self::worker_event(&shared, "worker-offline");
        Self::flush(&shared).await;
    }
}

/// The `task-*` events of one delivery.
pub(super) mod task {
    use super::Value;

    /// `task-received`: as Celery's strategy sends it.
    pub(in crate::worker) fn received(m: &celeriac_protocol::TaskMessage) -> Vec<(&'static str, Value)> {
        let h = &m.headers;
        let text = |v: &Option<String>| v.clone().map_or(Value::Null, Value::Str);
        vec![
            ("uuid", h.id.as_str().into()),
            ("name", h.task.as_str().into()),
            ("args", text(&h.argsrepr)),
            ("kwargs", text(&h.kwargsrepr)),
            ("root_id", text(&h.root_id)),
            ("parent_id", text(&h.parent_id)),
            ("retries", Value::Int(h.retries)),
            ("eta", h.eta.map_or(Value::Null, |t| Value::Str(t.to_rfc3339()))),
            ("expires", h.expires.map_or(Value::Null, |t| Value::Str(t.to_rfc3339()))),
        ]
    }

    /// `task-started`: process `pid` (the worker, or the pool child) runs task `id` now.
    pub(in crate::worker) fn started(id: &str, pid: u32) -> Vec<(&'static str, Value)> {
        vec![("uuid", id.into()), ("pid", Value::Int(i64::from(pid)))]
    }
}
