//! Canvas around Rust handlers: what a finished task publishes, as Celery's tracer does
//! (`celery/app/trace.py`, `Backend._call_task_errbacks`). Pure: messages are built here and
//! inserted with the task's completion, in the same transaction.
//!
//! - On success: the next task of the chain (`embed.chain`'s last element, with the rest of the
//!   chain carried), and every callback (`embed.callbacks`, Celery's `link`), each called with
//!   the result prepended to its args unless the signature is immutable.
//! - On failure: every errback (`embed.errbacks`, `link_error`) with the failed task's id
//!   prepended (the form Celery publishes for errbacks it does not call in-process).
//!
//! Each published task has `parent_id` = the finished task and `root_id` = its root, and the
//! finished task's priority unless the signature sets one. Its queue is the signature's
//! `queue` option, else its `routing_key`, else the worker's default queue: celeriac does not
//! evaluate the app's `task_routes` for messages it publishes itself.

use celeriac_protocol::{encode_task, json, message::Expires, Map, TaskMessage, TaskOptions, Value};
use celeriac_store::NewMessage;
use chrono::{DateTime, Utc};

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

fn signatures(v: &Value) -> Vec<&Value> {
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
    parent: &TaskMessage,
    default_queue: &str,
    chain: Option<Vec<Value>>,
    now: DateTime<Utc>,
) -> Result<NewMessage, SignatureError> {
    let Some(map) = sig.as_map() else { return Err(error("?", "not a signature (a dict)")) };
    let task = map.get("task").and_then(Value::as_str).unwrap_or_default();
    if task.is_empty() {
        return Err(error("?", "no task name"));
    }
    if let Some(kind) = map.get("subtask_type").and_then(Value::as_str) {
        return Err(error(task, format!("nested {kind} signatures are not published by Rust handlers yet")));
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
    let priority = options.get("priority").and_then(Value::as_i64).or(parent.delivery_info.priority);
    let opts = TaskOptions {
        task_id: text("task_id"),
        queue: text("queue").or_else(|| text("routing_key")).unwrap_or_else(|| default_queue.to_owned()),
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

/// What a task that returned `value` publishes: the chain's next task, then its callbacks.
pub(crate) fn on_success(
    message: &TaskMessage,
    value: &Value,
    default_queue: &str,
    now: DateTime<Utc>,
) -> (Vec<NewMessage>, Vec<SignatureError>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let prepend = std::slice::from_ref(value);
    if let Value::List(chain) = &message.embed.chain {
        if let Some((next, rest)) = chain.split_last() {
            match signature_message(next, prepend, message, default_queue, Some(rest.to_vec()), now) {
                Ok(m) => out.push(m),
                Err(e) => errors.push(e),
            }
        }
    }
    for sig in signatures(&message.embed.callbacks) {
        match signature_message(sig, prepend, message, default_queue, None, now) {
            Ok(m) => out.push(m),
            Err(e) => errors.push(e),
        }
    }
    (out, errors)
}

/// What a failed task publishes: its errbacks, called with its id.
pub(crate) fn on_failure(
    message: &TaskMessage,
    default_queue: &str,
    now: DateTime<Utc>,
) -> (Vec<NewMessage>, Vec<SignatureError>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let prepend = [Value::Str(message.headers.id.clone())];
    for sig in signatures(&message.embed.errbacks) {
        match signature_message(sig, &prepend, message, default_queue, None, now) {
            Ok(m) => out.push(m),
            Err(e) => errors.push(e),
        }
    }
    (out, errors)
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
        let (out, errors) = on_success(&parent, &Value::Int(3), "celery", now);
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
        let (out, _) = on_success(&parent, &Value::Int(3), "celery", now);
        assert_eq!(decode(&out[0]).args, Vec::<Value>::new());
        let (out, _) = on_failure(&parent, "celery", now);
        assert_eq!(decode(&out[0]).args, vec![Value::Str(parent.headers.id.clone())]);

        let bad = sig("", Value::Null, Value::Null, false);
        assert!(signature_message(&bad, &[], &parent, "celery", None, now).is_err());
    }
}
