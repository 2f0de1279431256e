//! Canvas around Rust handlers: what a finished task publishes, as Celery's tracer does
//! (`celery/app/trace.py`, `Backend._call_task_errbacks`). Pure: messages are built here and
//! inserted with the task's completion, in the same transaction.
//!
//! - On success: the next task of the chain (`embed.chain`'s last element, with the rest of the
//!   chain carried), and every callback (`embed.callbacks`, Celery's `link`), each called with
//!   the result prepended to its args unless the signature is immutable.
//! - A group or a chord among those is published as Celery's `group.apply_async` and
//!   `chord.apply_async` would on a database backend: each member with the group id and its
//!   index, and for a chord `celery.chord_unlock` (see `crate::chord`).
//! - On failure: every errback (`embed.errbacks`, `link_error`) with the failed task's id
//!   prepended (the form Celery publishes for errbacks it does not call in-process).
//!
//! Each published task has `parent_id` = the finished task and `root_id` = its root. Chain links
//! and callbacks get no priority (Celery's default, `task_inherit_parent_priority` off, which
//! overrides even the signature's own); errbacks keep the signature's. Its queue is the signature's
//! `queue` option, else its `routing_key`, else the worker's default queue: celeriac does not
//! evaluate the app's `task_routes` for messages it publishes itself.

use celeriac_protocol::{encode_task, json, message::Expires, Map, TaskMessage, TaskOptions, Value};
use celeriac_store::NewMessage;
use chrono::{DateTime, Utc};

use crate::routes::TaskRoutes;

/// A signature that cannot be published, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("cannot publish the signature {task}: {problem}")]
pub(crate) struct SignatureError {
    pub task: String,
    pub problem: String,
}

fn error(task: &str, problem: impl Into<String>) -> SignatureError {
    SignatureError { task: task.to_owned(), problem: problem.into() }
}

/// The signatures of a `link`/`link_error`/embed value: one signature, or a list of them.
pub(crate) fn signatures(v: &Value) -> Vec<&Value> {
    match v {
        Value::List(items) => items.iter().collect(),
        Value::Map(_) => vec![v],
        _ => Vec::new(),
    }
}

fn time_option(v: &Value) -> Option<DateTime<chrono::FixedOffset>> {
    match v {
        Value::DateTime(t) => Some(*t),
        Value::NaiveDateTime(t) => Some(t.and_utc().fixed_offset()),
        Value::Str(s) => match json::parse_datetime(s) {
            Some(Value::DateTime(t)) => Some(t),
            Some(Value::NaiveDateTime(t)) => Some(t.and_utc().fixed_offset()),
            _ => None,
        },
        _ => None,
    }
}

/// The message for signature `sig` (Celery's `Signature.apply_async(args, **options)`), with
/// `prepend` before its args (unless immutable) and `embed` (the chain carried on).
pub(crate) fn signature_message(
    sig: &Value,
    prepend: &[Value],
    chain: Option<Vec<Value>>,
    p: &Publisher<'_>,
) -> Result<NewMessage, SignatureError> {
    let (parent, default_queue, now) = (p.parent, p.default_queue, p.now);
    let Some(map) = sig.as_map() else { return Err(error("?", "not a signature (a dict)")) };
    let task = map.get("task").and_then(Value::as_str).unwrap_or_default();
    if task.is_empty() {
        return Err(error("?", "no task name"));
    }
    if let Some(kind) = map.get("subtask_type").and_then(Value::as_str) {
        return Err(error(task, format!("a {kind} signature is published with `publish`, not as one message")));
    }
    let immutable = map.get("immutable").and_then(Value::as_bool).unwrap_or(false);
    let mut args: Vec<Value> = if immutable { Vec::new() } else { prepend.to_vec() };
    match map.get("args") {
        None | Some(Value::Null) => {}
        Some(Value::List(a)) => args.extend(a.iter().cloned()),
        Some(_) => return Err(error(task, "args is not a list")),
    }
    let kwargs = match map.get("kwargs") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Map(k)) => k.clone(),
        Some(_) => return Err(error(task, "kwargs is not a dict")),
    };
    let empty = Map::new();
    let options = map.get("options").and_then(Value::as_map).unwrap_or(&empty);
    let text = |key: &str| options.get(key).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
    let number = |key: &str| options.get(key).and_then(Value::as_f64);
    let mut headers = options.get("headers").and_then(Value::as_map).cloned().unwrap_or_default();
    if let Some(group) = text("group_id") {
        headers.insert("group".into(), Value::Str(group));
        if let Some(i) = options.get("group_index").and_then(Value::as_i64) {
            headers.insert("group_index".into(), Value::Int(i));
        }
    }
    let mut embed = Map::new();
    if let Some(link) = options.get("link").filter(|v| !matches!(v, Value::Null)) {
        embed.insert("callbacks".into(), Value::List(signatures(link).into_iter().cloned().collect()));
    }
    if let Some(link_error) = options.get("link_error").filter(|v| !matches!(v, Value::Null)) {
        embed.insert("errbacks".into(), Value::List(signatures(link_error).into_iter().cloned().collect()));
    }
    if let Some(chord) = options.get("chord").filter(|v| !matches!(v, Value::Null)) {
        embed.insert("chord".into(), chord.clone());
    }
    if let Some(chain) = chain.filter(|c| !c.is_empty()) {
        embed.insert("chain".into(), Value::List(chain));
    }
    let expires = match options.get("expires") {
        Some(Value::Int(_) | Value::Float(_)) => number("expires").map(Expires::After),
        Some(v) => time_option(v).map(Expires::At),
        None => None,
    };
    // Celery publishes chain links and callbacks with `priority=None` unless
    // `task_inherit_parent_priority` (off by default), which overrides the signature's own;
    // errbacks and a chord's parts keep the signature's.
    let priority = match p.priority {
        Priority::Given(priority) => priority,
        Priority::Signature => options.get("priority").and_then(Value::as_i64),
    };
    let opts = TaskOptions {
        task_id: text("task_id"),
        queue: text("queue")
            .or_else(|| text("routing_key"))
            .unwrap_or_else(|| p.routes.queue_for(task).unwrap_or(default_queue).to_owned()),
        countdown: number("countdown"),
        eta: options.get("eta").and_then(time_option),
        expires,
        priority,
        time_limit: number("time_limit"),
        soft_time_limit: number("soft_time_limit"),
        ignore_result: options.get("ignore_result").and_then(Value::as_bool).unwrap_or(false),
        shadow: text("shadow"),
        headers,
        parent_id: Some(parent.headers.id.clone()),
        root_id: Some(parent.headers.root_id.clone().unwrap_or_else(|| parent.headers.id.clone())),
        reply_to: text("reply_to"),
        embed,
        ..TaskOptions::default()
    };
    let encoded = encode_task(task, &args, &kwargs, &opts, now).map_err(|e| error(task, e.to_string()))?;
    Ok(encoded.into())
}

/// The option `key` of signature `sig`, if it has one.
pub(crate) fn option<'a>(sig: &'a Value, key: &str) -> Option<&'a Value> {
    sig.as_map()?.get("options")?.as_map()?.get(key)
}

/// The keyword argument `key` of signature `sig` (a group's `tasks`, a chord's `body`).
pub(crate) fn kwarg<'a>(sig: &'a Value, key: &str) -> Option<&'a Value> {
    sig.as_map()?.get("kwargs")?.as_map()?.get(key)
}

pub(crate) fn with_option(sig: &Value, key: &str, value: Value) -> Value {
    let mut sig = sig.clone();
    if let Value::Map(m) = &mut sig {
        let options = m.entry("options".to_owned()).or_insert_with(|| Value::Map(Map::new()));
        if !matches!(options, Value::Map(_)) {
            *options = Value::Map(Map::new());
        }
        if let Value::Map(o) = options {
            o.insert(key.to_owned(), value);
        }
    }
    sig
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Publishes any signature: a task, a group (each member, with the group's id and its index),
/// or a chord (its header as a group, and `celery.chord_unlock`, which publishes the body once
/// the header is done: the database backends' way, which celeriac's worker runs itself).
/// `prepend` goes before each task's args (a group's and a chord header's members each get it).
pub(crate) fn publish(
    sig: &Value,
    prepend: &[Value],
    chain: Option<Vec<Value>>,
    p: &Publisher<'_>,
    out: &mut Vec<NewMessage>,
) -> Result<(), SignatureError> {
    let (parent, default_queue, now) = (p.parent, p.default_queue, p.now);
    let map = sig.as_map().ok_or_else(|| error("?", "not a signature (a dict)"))?;
    let task = map.get("task").and_then(Value::as_str).unwrap_or("?");
    let kind = map.get("subtask_type").and_then(Value::as_str);
    let empty = Map::new();
    let kwargs = map.get("kwargs").and_then(Value::as_map).unwrap_or(&empty);
    let options = map.get("options").and_then(Value::as_map).unwrap_or(&empty);
    let immutable = map.get("immutable").and_then(Value::as_bool).unwrap_or(false);
    let prepend = if immutable { &[][..] } else { prepend };
    let rest_of_chain = chain.filter(|c| !c.is_empty());
    match kind {
        None => {
            out.push(signature_message(sig, prepend, rest_of_chain, p)?);
            Ok(())
        }
        Some("chain") => {
            // Celery's `chain.apply_async(args)`: the first task, carrying the others (reversed,
            // popped from the end) and then whatever followed this chain.
            let tasks =
                kwargs.get("tasks").and_then(Value::as_list).ok_or_else(|| error(task, "a chain without tasks"))?;
            let Some((first, others)) = tasks.split_first() else { return Ok(()) };
            let mut carried: Vec<Value> = rest_of_chain.unwrap_or_default();
            carried.extend(others.iter().rev().cloned());
            publish(first, prepend, Some(carried), p, out)
        }
        Some("group") => {
            if rest_of_chain.is_some() {
                return Err(error(task, "a group followed by more of a chain (Celery makes that a chord)"));
            }
            let members =
                kwargs.get("tasks").and_then(Value::as_list).ok_or_else(|| error(task, "a group without tasks"))?;
            let group_id = options
                .get("group_id")
                .or_else(|| options.get("task_id"))
                .and_then(Value::as_str)
                .map_or_else(new_id, str::to_owned);
            for (i, member) in members.iter().enumerate() {
                let member = with_option(member, "group_id", Value::Str(group_id.clone()));
                let member = with_option(&member, "group_index", Value::Int(i64::try_from(i).unwrap_or(i64::MAX)));
                publish(&member, prepend, None, p, out)?;
            }
            Ok(())
        }
        Some("chord") => {
            if rest_of_chain.is_some() {
                return Err(error(task, "a chord followed by more of a chain is not published by Rust handlers yet"));
            }
            let header = kwargs.get("header").ok_or_else(|| error(task, "a chord without a header"))?;
            let body = kwargs
                .get("body")
                .filter(|b| b.as_map().is_some())
                .ok_or_else(|| error(task, "a chord without a body"))?;
            let header_options =
                header.as_map().and_then(|h| h.get("options")).and_then(Value::as_map).unwrap_or(&empty);
            let group_id = header_options
                .get("task_id")
                .or_else(|| header_options.get("group_id"))
                .and_then(Value::as_str)
                .map_or_else(new_id, str::to_owned);
            let members: Vec<Value> = match header {
                Value::List(items) => items.clone(),
                h => h
                    .as_map()
                    .and_then(|m| m.get("kwargs"))
                    .and_then(Value::as_map)
                    .and_then(|k| k.get("tasks"))
                    .and_then(Value::as_list)
                    .map(<[Value]>::to_vec)
                    .ok_or_else(|| error(task, "a chord header that is not a group"))?,
            };
            let body = match option(body, "task_id") {
                Some(_) => body.clone(),
                None => with_option(body, "task_id", Value::Str(new_id())),
            };
            let mut result_tuples = Vec::with_capacity(members.len());
            let mut header_messages = Vec::with_capacity(members.len());
            for (i, member) in members.iter().enumerate() {
                if member.as_map().and_then(|m| m.get("subtask_type")).is_some_and(|t| !matches!(t, Value::Null)) {
                    return Err(error(task, "a chord header member that is itself a canvas"));
                }
                let mut member = with_option(member, "group_id", Value::Str(group_id.clone()));
                member = with_option(&member, "group_index", Value::Int(i64::try_from(i).unwrap_or(i64::MAX)));
                member = with_option(&member, "chord", body.clone());
                if option(&member, "task_id").and_then(Value::as_str).is_none() {
                    member = with_option(&member, "task_id", Value::Str(new_id()));
                }
                let id = option(&member, "task_id").cloned().unwrap_or_default();
                result_tuples.push(Value::List(vec![Value::List(vec![id, Value::Null]), Value::Null]));
                header_messages.push(signature_message(&member, prepend, None, p)?);
            }
            // Celery's `apply_chord` for the database backends: the unlock first, a second later,
            // to the body's queue.
            let body_queue = option(&body, "queue")
                .and_then(Value::as_str)
                .filter(|q| !q.is_empty())
                .or_else(|| {
                    body.as_map()
                        .and_then(|b| b.get("task"))
                        .and_then(Value::as_str)
                        .and_then(|t| p.routes.queue_for(t))
                })
                .unwrap_or(default_queue);
            let mut unlock_kwargs = Map::new();
            unlock_kwargs.insert("interval".into(), Value::Null);
            unlock_kwargs.insert("max_retries".into(), Value::Null);
            unlock_kwargs.insert("result".into(), Value::List(result_tuples));
            unlock_kwargs.insert("_chord_unlock_exchange_type".into(), Value::Str("direct".into()));
            let unlock_opts = TaskOptions {
                queue: body_queue.to_owned(),
                countdown: Some(1.0),
                ignore_result: true,
                parent_id: Some(parent.headers.id.clone()),
                root_id: Some(parent.headers.root_id.clone().unwrap_or_else(|| parent.headers.id.clone())),
                ..TaskOptions::default()
            };
            let unlock = encode_task(
                crate::chord::CHORD_UNLOCK,
                &[Value::Str(group_id), body],
                &unlock_kwargs,
                &unlock_opts,
                now,
            )
            .map_err(|e| error(task, e.to_string()))?;
            out.push(unlock.into());
            out.extend(header_messages);
            Ok(())
        }
        Some(other) => Err(error(task, format!("{other} signatures are not published by Rust handlers yet"))),
    }
}

/// A failure, for the errbacks that are the app's Python tasks (Celery may call them
/// in-process with `(request, exc, traceback)`).
#[derive(Clone, Copy)]
pub(crate) struct FailureDetail<'a> {
    /// The failed task's request, as Celery's `Context` fields.
    pub request: &'a Value,
    /// The exception, as Celery stores it (`{"exc_type", "exc_message", "exc_module"}`).
    pub exc: &'a Value,
    /// Its traceback text.
    pub traceback: &'a str,
    /// The queue the failed task came from (consumed by a worker with the app's tasks).
    pub queue: &'a str,
    /// Whether a task name is one of the app's Python tasks.
    pub python_task: &'a (dyn Fn(&str) -> bool + Sync),
}

impl FailureDetail<'_> {
    /// The `celeriac_errback` header: `{"signature", "request", "exc", "traceback"}`.
    fn call(&self, signature: &Value) -> Value {
        let mut m = Map::with_capacity(4);
        m.insert("signature".into(), signature.clone());
        m.insert("request".into(), self.request.clone());
        m.insert("exc".into(), self.exc.clone());
        m.insert("traceback".into(), Value::Str(self.traceback.to_owned()));
        Value::Map(m)
    }
}

/// How a published task's priority is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Priority {
    /// The signature's own `priority` option.
    Signature,
    /// This one, whatever the signature says (Celery's `apply_async(priority=…)` for chain links
    /// and callbacks: `None`, or the parent's with `task_inherit_parent_priority`).
    Given(Option<i64>),
}

/// What a finished task publishes from: its message (the parent of what it publishes), the queue
/// for signatures that name none, the time, and the priority rule.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Publisher<'a> {
    pub parent: &'a TaskMessage,
    pub default_queue: &'a str,
    pub routes: &'a TaskRoutes,
    pub now: DateTime<Utc>,
    pub priority: Priority,
}

impl<'a> Publisher<'a> {
    /// A publisher for the follow-ups of `parent` (chain links and callbacks without a priority,
    /// as Celery's default `task_inherit_parent_priority=False`).
    pub(crate) fn new(
        parent: &'a TaskMessage,
        default_queue: &'a str,
        routes: &'a TaskRoutes,
        now: DateTime<Utc>,
    ) -> Self {
        Publisher { parent, default_queue, routes, now, priority: Priority::Given(None) }
    }

    /// The same, keeping each signature's own priority.
    pub(crate) fn with_signature_priority(self) -> Self {
        Publisher { priority: Priority::Signature, ..self }
    }

    /// What a task that returned `value` publishes: the chain's next task, then its callbacks.
    pub(crate) fn on_success(&self, value: &Value) -> (Vec<NewMessage>, Vec<SignatureError>) {
        let message = self.parent;
        let mut out = Vec::new();
        let mut errors = Vec::new();
        let prepend = std::slice::from_ref(value);
        if let Value::List(chain) = &message.embed.chain {
            if let Some((next, rest)) = chain.split_last() {
                if let Err(e) = publish(next, prepend, Some(rest.to_vec()), self, &mut out) {
                    errors.push(e);
                }
            }
        }
        for sig in signatures(&message.embed.callbacks) {
            if let Err(e) = publish(sig, prepend, None, self, &mut out) {
                errors.push(e);
            }
        }
        (out, errors)
    }

    /// What a failed task publishes: its errbacks, called with its id (each with its own
    /// priority, as Celery's errback group is published). An errback that is one of the app's
    /// Python tasks (`failure`'s `python_task`) is sent instead to the failed task's queue with
    /// the signature, request, exception and traceback in its `celeriac_errback` header: a pool
    /// child then does what Celery's `_call_task_errbacks` does with it (calls it in-process
    /// with `(request, exc, traceback)` if its function takes them, else publishes it with the
    /// task id).
    pub(crate) fn on_failure(&self, failure: Option<&FailureDetail<'_>>) -> (Vec<NewMessage>, Vec<SignatureError>) {
        let message = self.parent;
        let errbacks = self.with_signature_priority();
        let mut out = Vec::new();
        let mut errors = Vec::new();
        let prepend = [Value::Str(message.headers.id.clone())];
        for sig in signatures(&message.embed.errbacks) {
            let task = sig.as_map().and_then(|m| m.get("task")).and_then(Value::as_str).unwrap_or_default();
            let published = match failure.filter(|f| (f.python_task)(task)) {
                Some(f) => {
                    let mut headers = Map::new();
                    headers.insert("celeriac_errback".into(), f.call(sig));
                    let mut call = Map::new();
                    call.insert("task".into(), Value::Str(task.to_owned()));
                    let mut options = Map::new();
                    options.insert("queue".into(), Value::Str(f.queue.to_owned()));
                    options.insert("headers".into(), Value::Map(headers));
                    call.insert("options".into(), Value::Map(options));
                    signature_message(&Value::Map(call), &[], None, &errbacks).map(|m| out.push(m))
                }
                None => publish(sig, &prepend, None, &errbacks, &mut out),
            };
            if let Err(e) = published {
                errors.push(e);
            }
        }
        (out, errors)
    }
}

#[cfg(test)]
mod tests {
    use celeriac_protocol::{Accept, TaskMessage};

    use super::*;

    fn sig(task: &str, args: Value, options: Value, immutable: bool) -> Value {
        let mut m = Map::new();
        m.insert("task".into(), Value::Str(task.into()));
        m.insert("args".into(), args);
        m.insert("kwargs".into(), Value::Map(Map::new()));
        m.insert("options".into(), options);
        m.insert("subtask_type".into(), Value::Null);
        m.insert("immutable".into(), Value::Bool(immutable));
        Value::Map(m)
    }

    fn opts(task_id: &str) -> Value {
        let mut m = Map::new();
        m.insert("task_id".into(), Value::Str(task_id.into()));
        Value::Map(m)
    }

    fn decode(m: &NewMessage) -> TaskMessage {
        TaskMessage::decode(&m.payload, &Accept::default()).unwrap()
    }

    #[test]
    fn a_chain_publishes_its_next_task_with_the_result_and_the_rest() {
        let now = Utc::now();
        let c = sig("t.c", Value::List(vec![Value::Int(4)]), opts("C"), false);
        let b = sig("t.b", Value::List(vec![Value::Int(3)]), opts("B"), false);
        let mut embed = Map::new();
        embed.insert("chain".into(), Value::List(vec![c.clone(), b]));
        let parent = encode_task(
            "t.a",
            &[Value::Int(1), Value::Int(2)],
            &Map::new(),
            &TaskOptions { task_id: Some("A".into()), embed, ..TaskOptions::default() },
            now,
        )
        .unwrap();
        let parent = TaskMessage::decode(&parent.payload, &Accept::default()).unwrap();
        let (out, errors) = Publisher::new(&parent, "celery", &TaskRoutes::default(), now).on_success(&Value::Int(3));
        assert!(errors.is_empty());
        let next = decode(&out[0]);
        assert_eq!((next.headers.task.as_str(), next.headers.id.as_str()), ("t.b", "B"));
        assert_eq!(next.args, vec![Value::Int(3), Value::Int(3)]);
        assert_eq!(next.headers.parent_id.as_deref(), Some("A"));
        assert_eq!(next.headers.root_id.as_deref(), Some("A"));
        assert_eq!(next.embed.chain, Value::List(vec![c]));

        // Immutable signatures take no result; errbacks get the failed task's id.
        let mut embed = Map::new();
        embed.insert("errbacks".into(), Value::List(vec![sig("t.err", Value::List(vec![]), opts("E"), false)]));
        embed.insert("callbacks".into(), Value::List(vec![sig("t.cb", Value::List(vec![]), opts("F"), true)]));
        let parent =
            encode_task("t.a", &[], &Map::new(), &TaskOptions { embed, ..TaskOptions::default() }, now).unwrap();
        let parent = TaskMessage::decode(&parent.payload, &Accept::default()).unwrap();
        let (out, _) = Publisher::new(&parent, "celery", &TaskRoutes::default(), now).on_success(&Value::Int(3));
        assert_eq!(decode(&out[0]).args, Vec::<Value>::new());
        let (out, _) = Publisher::new(&parent, "celery", &TaskRoutes::default(), now).on_failure(None);
        assert_eq!(decode(&out[0]).args, vec![Value::Str(parent.headers.id.clone())]);

        let bad = sig("", Value::Null, Value::Null, false);
        assert!(signature_message(&bad, &[], None, &Publisher::new(&parent, "celery", &TaskRoutes::default(), now))
            .is_err());
    }
}
