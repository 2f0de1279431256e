//! Celery's canvas built-in tasks, run by the worker when no handler of that name is registered
//! (with `-A`, the app's own run instead), as `celery/app/builtins.py` defines them:
//!
//! | task | args | what it does | its result |
//! |---|---|---|---|
//! | `celery.map` | `(task, it)` | calls the Rust handler `task` in-process with each item | the list of results |
//! | `celery.starmap` | `(task, it)` | the same, each item spread as the args | the list of results |
//! | `celery.chunks` | `(task, it, n)` | publishes a group of `celery.starmap` over `n` items each | the group's result tuple |
//! | `celery.group` | `(tasks, result, group_id, partial_args)` | publishes each task with the group's id, `partial_args` first | `result` |
//! | `celery.chord` | `(header, body, partial_args)` | publishes the chord (its header, and `celery.chord_unlock`) | the body's result tuple |
//! | `celery.chain` | any | fails with `NotImplementedError`, as Celery's | |
//!
//! What they publish goes in with the task's completion, so it is published exactly once.

use std::sync::{Arc, Mutex, PoisonError};

use celeriac_protocol::{Map, TaskMessage, Value};
use celeriac_store::{NewMessage, Settlement};
use chrono::Utc;

use super::Shared;
use crate::{
    canvas,
    registry::{Handler, HandlerFuture},
    task::{Outcome, Request, StateUpdater},
};

/// Names of the built-ins this module runs.
const NAMES: [&str; 6] =
    ["celery.map", "celery.starmap", "celery.chunks", "celery.group", "celery.chord", "celery.chain"];

/// One run of a canvas built-in: a handler for this delivery only, which keeps what it
/// publishes for the completion ([`Builtin::with_published`]).
#[derive(Clone)]
pub(super) struct Builtin {
    shared: Arc<Shared>,
    published: Arc<Mutex<Vec<NewMessage>>>,
}

impl Builtin {
    /// The built-in for `task`, unless it is not one or a handler of that name is registered.
    pub(super) fn for_task(shared: &Arc<Shared>, task: &str) -> Option<Builtin> {
        (NAMES.contains(&task) && !shared.registry.contains(task))
            .then(|| Builtin { shared: shared.clone(), published: Arc::default() })
    }

    /// `settlement` with what the run published added to its completion (nothing unless it
    /// succeeded: a failed run publishes nothing).
    pub(super) fn with_published(&self, settlement: Settlement) -> Settlement {
        let published = std::mem::take(&mut *self.published.lock().unwrap_or_else(PoisonError::into_inner));
        if published.is_empty() {
            return settlement;
        }
        match settlement {
            Settlement::Complete(lease) => super::effects::finish(lease, None, published),
            Settlement::Finish(mut f) => {
                f.publish.extend(published);
                Settlement::Finish(f)
            }
            other => other,
        }
    }

    async fn run(&self, req: Request) -> Outcome {
        let message = req.message.clone();
        // Celery's client sends `xmap`/`xstarmap`/`chunks` with keyword arguments only.
        let arg = |i: usize, name: &str| message.args.get(i).or_else(|| message.kwargs.get(name));
        match message.headers.task.as_str() {
            "celery.map" | "celery.starmap" => {
                let spread = message.headers.task == "celery.starmap";
                let (Some(task), Some(items)) = (arg(0, "task"), arg(1, "it")) else {
                    return missing_args(&message.headers.task, "task, it");
                };
                let Some(items) = items.as_list() else {
                    return Outcome::failure("TypeError", format!("'{}' object is not iterable", type_name(items)));
                };
                self.map(&req, task, items, spread).await
            }
            "celery.chunks" => {
                let (Some(task), Some(items), Some(n)) = (arg(0, "task"), arg(1, "it"), arg(2, "n")) else {
                    return missing_args("celery.chunks", "task, it, n");
                };
                let (Some(items), Some(n)) = (items.as_list(), n.as_i64().filter(|n| *n > 0)) else {
                    return Outcome::failure("TypeError", "celery.chunks takes a list of items and a positive size");
                };
                let group_id = new_id();
                let mut members = Vec::new();
                let mut tuples = Vec::new();
                // Celery routes each `celery.starmap` by the task it maps (`route_name`).
                let inner = match task {
                    Value::Str(name) => Some(name.as_str()),
                    other => other.as_map().and_then(|m| m.get("task")).and_then(Value::as_str),
                };
                let routed = inner.and_then(|t| self.shared.config.task_routes.queue_for(t));
                for part in items.chunks(usize::try_from(n).unwrap_or(usize::MAX)) {
                    let id = new_id();
                    tuples.push(result_tuple(&id, Value::Null));
                    let mut member = signature(
                        "celery.starmap",
                        vec![task.clone(), Value::List(part.to_vec())],
                        [("task_id", Value::Str(id))],
                    );
                    if let Some(queue) = routed {
                        member = canvas::with_option(&member, "queue", Value::Str(queue.to_owned()));
                    }
                    members.push(member);
                }
                let group = group_signature(members, &group_id);
                match self.publish(&message, &group, &[]) {
                    Ok(()) => Outcome::Success(Value::List(vec![
                        Value::List(vec![Value::Str(group_id), Value::Null]),
                        Value::List(tuples),
                    ])),
                    Err(e) => e,
                }
            }
            "celery.group" => {
                let (Some(tasks), Some(result)) = (arg(0, "tasks").and_then(Value::as_list), arg(1, "result")) else {
                    return missing_args("celery.group", "tasks, result, group_id, partial_args");
                };
                let group_id = match arg(2, "group_id") {
                    Some(Value::Str(id)) => id.clone(),
                    _ => new_id(),
                };
                let partial = partial_args(arg(3, "partial_args"));
                // Celery's `stask.apply_async(group_id=group_id)`: no group_index.
                let mut out = Vec::new();
                for task in tasks {
                    let member = canvas::with_option(task, "group_id", Value::Str(group_id.clone()));
                    if let Err(e) = canvas::publish(&member, &partial, None, &self.publisher(&message), &mut out) {
                        return Outcome::failure("ValueError", e.to_string());
                    }
                }
                self.keep(out);
                Outcome::Success(result.clone())
            }
            "celery.chord" => {
                let (header, body) = (arg(0, "header"), arg(1, "body"));
                let (Some(header), Some(body)) = (header, body) else {
                    return missing_args("celery.chord", "header, body");
                };
                let partial = partial_args(arg(2, "partial_args"));
                let body_id =
                    canvas::option(body, "task_id").and_then(Value::as_str).map_or_else(new_id, str::to_owned);
                let body = canvas::with_option(body, "task_id", Value::Str(body_id.clone()));
                let mut kwargs = Map::new();
                kwargs.insert("header".into(), header.clone());
                kwargs.insert("body".into(), body);
                let mut chord = signature("celery.chord", Vec::new(), []);
                if let Value::Map(m) = &mut chord {
                    m.insert("kwargs".into(), Value::Map(kwargs));
                    m.insert("subtask_type".into(), Value::Str("chord".into()));
                }
                match self.publish(&message, &chord, &partial) {
                    Ok(()) => Outcome::Success(result_tuple(&body_id, Value::Null)),
                    Err(e) => e,
                }
            }
            _ => Outcome::failure("NotImplementedError", "chain is not a real task"),
        }
    }

    /// `[task(item) for item in it]`: the Rust handler `task`, called in this run for each
    /// item, with this run's delivery (Celery calls the task's function in the map task's
    /// context). The first failure fails the map.
    async fn map(&self, req: &Request, task: &Value, items: &[Value], spread: bool) -> Outcome {
        let name = match task {
            Value::Str(name) => name.as_str(),
            other => other.as_map().and_then(|m| m.get("task")).and_then(Value::as_str).unwrap_or_default(),
        };
        let handler = match self.shared.registry.get(name) {
            Some(h) if !h.manages_execution() => h,
            _ => return Outcome::failure("NotRegistered", name),
        };
        let mut results = Vec::with_capacity(items.len());
        for item in items {
            let args = match (spread, item) {
                (true, Value::List(args)) => args.clone(),
                (true, other) => {
                    return Outcome::failure(
                        "TypeError",
                        format!("argument after * must be an iterable, not {}", type_name(other)),
                    )
                }
                (false, item) => vec![item.clone()],
            };
            let mut message = TaskMessage::clone(&req.message);
            message.args = args;
            message.kwargs = Map::new();
            let call = Request {
                message: Arc::new(message),
                lease: req.lease,
                redelivered: req.redelivered,
                hostname: req.hostname.clone(),
                queue: req.queue.clone(),
                payload: req.payload.clone(),
                lease_check: req.lease_check.clone(),
                state: StateUpdater::none(),
                control: req.control.clone(),
            };
            match handler.call(call).await {
                Outcome::Success(v) => results.push(v),
                failure @ Outcome::Failure { .. } => return failure,
                other => {
                    return Outcome::failure(
                        "RuntimeError",
                        format!("{name} called by {}: {}", req.message.headers.task, describe(&other)),
                    )
                }
            }
        }
        Outcome::Success(Value::List(results))
    }

    fn publisher<'a>(&'a self, message: &'a TaskMessage) -> canvas::Publisher<'a> {
        // `apply_async` inside a task: each signature keeps its own priority.
        canvas::Publisher::new(message, &self.shared.config.default_queue, &self.shared.config.task_routes, Utc::now())
            .with_signature_priority()
    }

    /// Publishes `sig` (with `prepend` first) with this run's completion.
    fn publish(&self, message: &TaskMessage, sig: &Value, prepend: &[Value]) -> Result<(), Outcome> {
        let mut out = Vec::new();
        canvas::publish(sig, prepend, None, &self.publisher(message), &mut out)
            .map_err(|e| Outcome::failure("ValueError", e.to_string()))?;
        self.keep(out);
        Ok(())
    }

    fn keep(&self, messages: Vec<NewMessage>) {
        self.published.lock().unwrap_or_else(PoisonError::into_inner).extend(messages);
    }
}

impl Handler for Builtin {
    fn call(&self, request: Request) -> HandlerFuture {
        let this = self.clone();
        Box::pin(async move { this.run(request).await })
    }
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn missing_args(task: &str, names: &str) -> Outcome {
    Outcome::failure("TypeError", format!("{task}() missing required arguments ({names})"))
}

/// Python's name of a value's type, for `TypeError` messages.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "NoneType",
        Value::Bool(_) => "bool",
        Value::Int(_) | Value::BigInt(_) => "int",
        Value::Float(_) => "float",
        Value::Str(_) => "str",
        Value::Map(_) => "dict",
        _ => "object",
    }
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Retry { reason, .. } => format!("asked to retry ({reason})"),
        Outcome::Reject { reason } => format!("rejected ({reason})"),
        _ => "did not return".to_owned(),
    }
}

/// `partial_args` as a list (absent or null: none).
fn partial_args(v: Option<&Value>) -> Vec<Value> {
    v.and_then(Value::as_list).map(<[Value]>::to_vec).unwrap_or_default()
}

/// An `AsyncResult.as_tuple()`: `[[id, parent], None]`.
fn result_tuple(id: &str, parent: Value) -> Value {
    Value::List(vec![Value::List(vec![Value::Str(id.to_owned()), parent]), Value::Null])
}

/// A task signature as Celery serializes one.
fn signature<const N: usize>(task: &str, args: Vec<Value>, options: [(&str, Value); N]) -> Value {
    let mut m = Map::new();
    m.insert("task".into(), Value::Str(task.into()));
    m.insert("args".into(), Value::List(args));
    m.insert("kwargs".into(), Value::Map(Map::new()));
    m.insert("options".into(), Value::Map(options.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()));
    m.insert("subtask_type".into(), Value::Null);
    m.insert("immutable".into(), Value::Bool(false));
    Value::Map(m)
}

/// A group signature of `members` with id `group_id`.
fn group_signature(members: Vec<Value>, group_id: &str) -> Value {
    let mut kwargs = Map::new();
    kwargs.insert("tasks".into(), Value::List(members));
    let mut sig = signature("celery.group", Vec::new(), [("task_id", Value::Str(group_id.to_owned()))]);
    if let Value::Map(m) = &mut sig {
        m.insert("kwargs".into(), Value::Map(kwargs));
        m.insert("subtask_type".into(), Value::Str("group".into()));
    }
    sig
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_and_tuples_have_celerys_shape() {
        let g = group_signature(vec![signature("a", vec![Value::Int(1)], [])], "g1");
        let m = g.as_map().unwrap();
        assert_eq!(m.get("subtask_type").and_then(Value::as_str), Some("group"));
        assert_eq!(
            m.get("options").and_then(Value::as_map).and_then(|o| o.get("task_id")).and_then(Value::as_str),
            Some("g1")
        );
        assert_eq!(
            result_tuple("x", Value::Null),
            Value::List(vec![Value::List(vec![Value::Str("x".into()), Value::Null]), Value::Null])
        );
        assert_eq!(partial_args(Some(&Value::List(vec![Value::Int(2)]))), vec![Value::Int(2)]);
        assert!(partial_args(Some(&Value::Null)).is_empty());
        assert_eq!(type_name(&Value::Str("s".into())), "str");
    }
}
