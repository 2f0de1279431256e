//! The Celery message of one fire: what Celery Beat's `task.apply_async(args, kwargs,
//! **entry.options)` publishes (with Beat's `celery_beat_task` header), plus two headers naming
//! the schedule and the slot, so a task
//! can be idempotent per slot (`self.request.periodic_task_name`,
//! `self.request.periodic_task_slot`).

use celeriac_protocol::{encode_task, json, Expires, Map, TaskOptions, Value};
use celeriac_store::{NewMessage, Schedule};
use chrono::{DateTime, SecondsFormat, Utc};

/// The header naming the schedule (as django-celery-beat's scheduler adds it).
pub const NAME_HEADER: &str = "periodic_task_name";
/// The header carrying the slot, ISO 8601 in UTC.
pub const SLOT_HEADER: &str = "periodic_task_slot";

/// The message of `schedule`'s fire for `slot`, built at `now` (the database's clock:
/// `expires` and `countdown` count from it).
///
/// # Errors
/// A description of what in the row cannot be encoded.
pub fn build(schedule: &Schedule, slot: DateTime<Utc>, now: DateTime<Utc>) -> Result<NewMessage, String> {
    let d = &schedule.definition;
    let parse = |what: &str, text: &str| json::from_slice(text.as_bytes()).map_err(|e| format!("{what}: {e}"));
    let args = match parse("args", &d.args_json)? {
        Value::List(items) => items,
        _ => return Err("args must be a JSON array".into()),
    };
    let kwargs = match parse("kwargs", &d.kwargs_json)? {
        Value::Map(map) => map,
        _ => return Err("kwargs must be a JSON object".into()),
    };
    let options = match parse("options", &d.options_json)? {
        Value::Map(map) => map,
        _ => return Err("options must be a JSON object".into()),
    };
    let mut opts = task_options(&options)?;
    // Celery 5.7's Beat marks its messages so.
    opts.headers.insert("celery_beat_task".into(), Value::Bool(true));
    opts.headers.insert(NAME_HEADER.into(), Value::Str(d.name.clone()));
    opts.headers.insert(SLOT_HEADER.into(), Value::Str(slot.to_rfc3339_opts(SecondsFormat::AutoSi, true)));
    let encoded = encode_task(&d.task, &args, &kwargs, &opts, now).map_err(|e| e.to_string())?;
    Ok(NewMessage::from(encoded))
}

/// `apply_async` options from a row's `options` object.
fn task_options(options: &Map) -> Result<TaskOptions, String> {
    let mut opts = TaskOptions { origin: format!("celeriac-beat@{}", crate::hostname()), ..TaskOptions::default() };
    let number = |key: &str, v: &Value| match v {
        Value::Int(i) => Ok(*i as f64),
        Value::Float(f) => Ok(*f),
        _ => Err(format!("option {key} must be a number")),
    };
    for (key, value) in options {
        if matches!(value, Value::Null) {
            continue;
        }
        match key.as_str() {
            "queue" => match value {
                Value::Str(q) if !q.is_empty() => opts.queue.clone_from(q),
                _ => return Err("option queue must be a queue name".into()),
            },
            "routing_key" => {
                // A routing key without a queue routes to the queue of that name (the default
                // exchange), as on the transport.
                if let (Value::Str(rk), false) = (value, options.contains_key("queue")) {
                    if !rk.is_empty() {
                        opts.queue.clone_from(rk);
                    }
                }
            }
            "priority" => opts.priority = Some(number(key, value)? as i64),
            "expires" => {
                opts.expires = Some(match value {
                    Value::Str(text) => match json::parse_datetime(text) {
                        Some(Value::DateTime(t)) => Expires::At(t),
                        Some(Value::NaiveDateTime(t)) => Expires::At(t.and_utc().fixed_offset()),
                        _ => return Err(format!("option expires: not a time or a number: {text:?}")),
                    },
                    Value::DateTime(t) => Expires::At(*t),
                    other => Expires::After(number(key, other)?),
                });
            }
            "countdown" => opts.countdown = Some(number(key, value)?),
            "time_limit" => opts.time_limit = Some(number(key, value)?),
            "soft_time_limit" => opts.soft_time_limit = Some(number(key, value)?),
            "ignore_result" => opts.ignore_result = matches!(value, Value::Bool(true)),
            "shadow" => opts.shadow = value.as_str().map(str::to_owned),
            "headers" => match value {
                Value::Map(headers) => {
                    for (k, v) in headers {
                        opts.headers.insert(k.clone(), v.clone());
                    }
                }
                _ => return Err("option headers must be an object".into()),
            },
            // Celery's exchange only matters for AMQP routing; on the transport the queue does.
            _ => {}
        }
    }
    Ok(opts)
}
