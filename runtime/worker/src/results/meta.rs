//! What a result backend stores for one state of one task, in Celery's formats. Pure: no I/O.
//!
//! Reference: `shared/reference/celery-compat.md` §5 (the meta dict, the `celery_taskmeta`
//! column encodings per Celery version, django-celery-results' text columns, exceptions).

use celeriac_protocol::{json, json::python_isoformat, pickle, pyrepr, Map, TaskMessage, TaskState, Value};
use celeriac_store::{ResultRow, ResultTableKind};
use chrono::{DateTime, Utc};

/// One state to store.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum State {
    /// `STARTED` with `{"pid", "hostname"}`.
    Started { pid: u32 },
    /// `SUCCESS` with the returned value.
    Success(Value),
    /// `FAILURE` (or `REVOKED`, `RETRY`: see `state`) with an exception.
    Exception { state: TaskState, exception: Exception },
    /// A custom state set by the task (`update_state`), with its meta.
    Custom { state: String, meta: Value },
}

/// An exception as Celery stores it (`Backend.prepare_exception`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Exception {
    /// `type.__qualname__`.
    pub exc_type: String,
    /// `type.__module__`.
    pub exc_module: String,
    /// `exc.args`.
    pub args: Vec<Value>,
    /// The traceback text.
    pub traceback: Option<String>,
}

/// Exceptions Celery's own code raises, and their modules.
const CELERY_EXCEPTIONS: &[(&str, &str)] = &[
    ("NotRegistered", "celery.exceptions"),
    ("TaskRevokedError", "celery.exceptions"),
    ("MaxRetriesExceededError", "celery.exceptions"),
    ("Retry", "celery.exceptions"),
    ("ChordError", "celery.exceptions"),
    ("ContentDisallowed", "kombu.exceptions"),
    ("EncodeError", "kombu.exceptions"),
    ("DecodeError", "kombu.exceptions"),
    ("TimeLimitExceeded", "billiard.exceptions"),
    ("SoftTimeLimitExceeded", "billiard.exceptions"),
    ("WorkerLostError", "billiard.exceptions"),
];

/// The module a client looks `exc_type` up in: `builtins` for Python's built-in exceptions,
/// Celery's, kombu's and billiard's for theirs. Any other name is stored under `builtins` too,
/// where the client does not find it and makes a class of that name (in `celery.exceptions`),
/// so `type(exc).__name__` still reads as the handler named it.
pub(crate) fn exception_module(exc_type: &str) -> &'static str {
    if let Some((_, module)) = CELERY_EXCEPTIONS.iter().find(|(name, _)| *name == exc_type) {
        return module;
    }
    "builtins"
}

impl Exception {
    /// A failure of type `exc_type` with one argument, `message` (as `ValueError("bad")`).
    pub(crate) fn new(exc_type: &str, message: &str, traceback: Option<String>) -> Exception {
        Exception {
            exc_type: exc_type.to_owned(),
            exc_module: exception_module(exc_type).to_owned(),
            args: vec![Value::Str(message.to_owned())],
            traceback,
        }
    }

    /// `{"exc_type", "exc_message" (the args), "exc_module"}`, the JSON form.
    pub(crate) fn as_value(&self) -> Value {
        let mut m = Map::with_capacity(3);
        m.insert("exc_type".into(), Value::Str(self.exc_type.clone()));
        m.insert("exc_message".into(), Value::List(self.args.clone()));
        m.insert("exc_module".into(), Value::Str(self.exc_module.clone()));
        Value::Map(m)
    }

    /// The traceback text Celery would store: the handler's own, else one line in Python's
    /// format naming the exception.
    pub(crate) fn traceback_text(&self, task: &str) -> String {
        if let Some(tb) = &self.traceback {
            return tb.clone();
        }
        let args: Vec<String> = self.args.iter().map(pyrepr::repr).collect();
        let shown = match self.args.as_slice() {
            [] => String::new(),
            [Value::Str(s)] => format!(": {s}"),
            [one] => format!(": {}", pyrepr::repr(one)),
            _ => format!(": ({})", args.join(", ")),
        };
        format!("Traceback (most recent call last):\n  Rust handler \"{task}\"\n{}{shown}\n", self.exc_type)
    }
}

impl State {
    /// The state's name.
    pub(crate) fn status(&self) -> String {
        match self {
            State::Started { .. } => TaskState::Started.as_str().to_owned(),
            State::Success(_) => TaskState::Success.as_str().to_owned(),
            State::Exception { state, .. } => state.as_str().to_owned(),
            State::Custom { state, .. } => state.clone(),
        }
    }

    /// Whether the state is final (`date_done` set): every state but `STARTED` and custom ones.
    fn done(&self) -> bool {
        !matches!(self, State::Started { .. } | State::Custom { .. })
    }

    /// The `result` value in JSON form.
    fn value(&self, hostname: &str) -> Value {
        match self {
            State::Started { pid } => {
                let mut m = Map::with_capacity(2);
                m.insert("pid".into(), Value::Int(i64::from(*pid)));
                m.insert("hostname".into(), Value::Str(hostname.to_owned()));
                Value::Map(m)
            }
            State::Success(v) => v.clone(),
            State::Exception { exception, .. } => exception.as_value(),
            State::Custom { meta, .. } => meta.clone(),
        }
    }

    fn traceback(&self, task: &str) -> Option<String> {
        match self {
            State::Exception { state: TaskState::Failure | TaskState::Retry, exception } => {
                Some(exception.traceback_text(task))
            }
            _ => None,
        }
    }
}

/// The `result` value of `state` in JSON form (what a chord part carries).
pub(crate) fn result_value(state: &State, hostname: &str) -> Value {
    state.value(hostname)
}

/// What the task was: the fields stored beside its state.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TaskContext<'a> {
    pub message: &'a TaskMessage,
    pub hostname: &'a str,
    pub queue: &'a str,
    pub now: DateTime<Utc>,
}

/// How `celery_taskmeta.result` is encoded: Celery ≤ 5.6 reads only pickle (its `PickleType`
/// column); 5.7 reads the result serializer's bytes, and pickle as a fallback (with a warning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbValueFormat {
    /// Pickle: readable by every Celery version.
    Pickle,
    /// The result serializer's bytes (JSON): Celery 5.7 and later.
    Json,
}

/// The row for a result table.
pub(crate) fn table_row(
    kind: &ResultTableKind,
    format: DbValueFormat,
    extended: bool,
    state: &State,
    ctx: &TaskContext<'_>,
) -> ResultRow {
    let headers = &ctx.message.headers;
    let task = headers.task.as_str();
    let value = state.value(ctx.hostname);
    let done = state.done().then_some(ctx.now);
    match kind {
        ResultTableKind::Celery => {
            let result = match (format, state) {
                (DbValueFormat::Pickle, State::Exception { exception, .. }) => {
                    pickle::dumps_exception(&exception.exc_type, &exception.exc_module, &exception.args)
                }
                (DbValueFormat::Pickle, _) => pickle::dumps(&value),
                (DbValueFormat::Json, _) => json::to_vec(&value),
            };
            let ext = extended && !matches!(state, State::Started { .. });
            ResultRow {
                task_id: headers.id.clone(),
                status: state.status(),
                result: Some(result),
                traceback: state.traceback(task),
                date_done: done,
                // Celery 5.7 writes NULL for no children.
                children: None,
                name: ext.then(|| task.to_owned()),
                args: ext.then(|| json::to_vec(&Value::List(ctx.message.args.clone()))),
                kwargs: ext.then(|| json::to_vec(&Value::Map(ctx.message.kwargs.clone()))),
                worker: ext.then(|| ctx.hostname.to_owned()),
                retries: ext.then(|| i32::try_from(headers.retries).unwrap_or(i32::MAX)),
                queue: ext.then(|| ctx.queue.to_owned()),
                ..ResultRow::default()
            }
        }
        ResultTableKind::Django => {
            // django-celery-results stores the reprs the producer wrote, as JSON strings.
            let argsrepr = headers.argsrepr.clone().unwrap_or_else(|| pyrepr::args_repr(&ctx.message.args, 1024));
            let kwargsrepr =
                headers.kwargsrepr.clone().unwrap_or_else(|| pyrepr::kwargs_repr(&ctx.message.kwargs, 1024));
            let periodic = ctx.message.envelope.headers.get("periodic_task_name").and_then(Value::as_str);
            ResultRow {
                task_id: headers.id.clone(),
                status: state.status(),
                result: Some(json::to_vec(&value)),
                traceback: state.traceback(task),
                date_done: done,
                meta: Some(r#"{"children": []}"#.to_owned()),
                args: Some(json::to_vec(&Value::Str(argsrepr))),
                kwargs: Some(json::to_vec(&Value::Str(kwargsrepr))),
                name: Some(task.to_owned()),
                worker: Some(ctx.hostname.to_owned()),
                periodic_task_name: periodic.map(str::to_owned),
                content_type: Some("application/json".to_owned()),
                ..ResultRow::default()
            }
        }
    }
}

/// The meta dict of a key-value backend (Redis' `celery-task-meta-<id>`), JSON-encoded.
pub(crate) fn kv_meta(extended: bool, state: &State, ctx: &TaskContext<'_>) -> Vec<u8> {
    let headers = &ctx.message.headers;
    let mut m = Map::with_capacity(12);
    m.insert("status".into(), Value::Str(state.status()));
    m.insert("result".into(), state.value(ctx.hostname));
    m.insert("traceback".into(), state.traceback(&headers.task).map_or(Value::Null, Value::Str));
    let done = state.done();
    m.insert("children".into(), if done { Value::List(Vec::new()) } else { Value::Null });
    m.insert(
        "date_done".into(),
        if done { Value::Str(python_isoformat(&ctx.now.fixed_offset())) } else { Value::Null },
    );
    if let Some(group) = &headers.group {
        m.insert("group_id".into(), Value::Str(group.clone()));
    }
    if let Some(parent) = &headers.parent_id {
        m.insert("parent_id".into(), Value::Str(parent.clone()));
    }
    if extended {
        m.insert("name".into(), Value::Str(headers.task.clone()));
        m.insert("args".into(), Value::List(ctx.message.args.clone()));
        m.insert("kwargs".into(), Value::Map(ctx.message.kwargs.clone()));
        m.insert("worker".into(), Value::Str(ctx.hostname.to_owned()));
        m.insert("retries".into(), Value::Int(headers.retries));
        m.insert("queue".into(), Value::Str(ctx.queue.to_owned()));
    }
    m.insert("task_id".into(), Value::Str(headers.id.clone()));
    json::to_vec(&Value::Map(m))
}

#[cfg(test)]
mod tests {
    use celeriac_protocol::{encode_task, Accept, TaskOptions};

    use super::*;

    fn message() -> TaskMessage {
        let now = Utc::now();
        let opts = TaskOptions { task_id: Some("t-1".into()), ..TaskOptions::default() };
        let encoded = encode_task("tasks.add", &[Value::Int(2), Value::Int(2)], &Map::new(), &opts, now).unwrap();
        TaskMessage::decode(&encoded.payload, &Accept::default()).unwrap()
    }

    #[test]
    fn the_meta_dict_is_celerys() {
        let m = message();
        let ctx = TaskContext {
            message: &m,
            hostname: "celeriac@h",
            queue: "celery",
            now: DateTime::parse_from_rfc3339("2026-12-01T01:02:03.000004Z").unwrap().to_utc(),
        };
        let meta = kv_meta(false, &State::Success(Value::Int(4)), &ctx);
        assert_eq!(
            String::from_utf8(meta).unwrap(),
            r#"{"status": "SUCCESS", "result": 4, "traceback": null, "children": [], "date_done": "2026-12-01T01:02:03.000004+00:00", "task_id": "t-1"}"#
        );
        let failure =
            State::Exception { state: TaskState::Failure, exception: Exception::new("ValueError", "bad", None) };
        let meta: serde_json::Value = serde_json::from_slice(&kv_meta(true, &failure, &ctx)).unwrap();
        assert_eq!(meta["result"]["exc_type"], "ValueError");
        assert_eq!(meta["result"]["exc_message"], serde_json::json!(["bad"]));
        assert_eq!(meta["result"]["exc_module"], "builtins");
        assert!(meta["traceback"].as_str().unwrap().ends_with("ValueError: bad\n"));
        assert_eq!(meta["args"], serde_json::json!([2, 2]));
        assert_eq!(meta["worker"], "celeriac@h");

        let row =
            table_row(&ResultTableKind::Celery, DbValueFormat::Pickle, true, &State::Success(Value::Int(4)), &ctx);
        assert_eq!(row.result.as_deref(), Some(&b"\x80\x04K\x04."[..]));
        assert_eq!(row.args.as_deref(), Some(&b"[2, 2]"[..]));
        let row = table_row(&ResultTableKind::Django, DbValueFormat::Json, false, &failure, &ctx);
        assert_eq!(row.args.as_deref(), Some(&b"\"(2, 2)\""[..]));
        assert_eq!(exception_module("NotRegistered"), "celery.exceptions");
        assert_eq!(exception_module("WorkerLostError"), "billiard.exceptions");
    }
}
