//! django-celery-beat's periodic tasks as schedules (`celeriac schedule import
//! --django-celery-beat`): read from its tables in the same database, written by name, owned
//! by Beat until ramped.

use celeriac_store::{DjangoPeriodicTask, ScheduleDefinition, When};
use serde_json::{json, Map, Value};

/// What [`convert`] made of django-celery-beat's rows.
#[derive(Debug, Clone, Default)]
pub struct Imported {
    /// The definitions with their ramp buckets.
    pub definitions: Vec<(ScheduleDefinition, i16)>,
    /// Rows that cannot be imported, with the reason.
    pub skipped: Vec<(String, String)>,
    /// Names disabled in django-celery-beat.
    pub disabled: Vec<String>,
    /// Names enabled there.
    pub enabled: Vec<String>,
    /// Names whose row gives no queue: Beat would route them with the app's `task_routes` and
    /// default queue, which the import cannot see; celeriac fires them into `celery`.
    pub unrouted: Vec<String>,
}

/// The reason a schedule is disabled while its django-celery-beat row is.
pub const DISABLED_IN_DJANGO: &str = "disabled in django-celery-beat";

/// Converts django-celery-beat's rows (as `DatabaseScheduler` reads them: the crontab's own
/// zone, the interval's period, the clocked time; queue, exchange, routing key, priority,
/// headers, expires or expire_seconds as the options of every fire).
#[must_use]
pub fn convert(rows: Vec<DjangoPeriodicTask>) -> Imported {
    let mut out = Imported::default();
    for row in rows {
        let name = row.name.clone();
        match definition(row) {
            Ok((definition, enabled)) => {
                if !definition.options_json.contains("\"queue\"")
                    && !definition.options_json.contains("\"routing_key\"")
                {
                    out.unrouted.push(name.clone());
                }
                if enabled {
                    out.enabled.push(name);
                } else {
                    out.disabled.push(name);
                }
                let bucket = super::ramp_bucket(&definition.name);
                out.definitions.push((definition, bucket));
            }
            Err(reason) => out.skipped.push((name, reason)),
        }
    }
    out
}

fn definition(row: DjangoPeriodicTask) -> Result<(ScheduleDefinition, bool), String> {
    let seconds_per = |period: &str| match period {
        "days" => Ok(86_400.0),
        "hours" => Ok(3_600.0),
        "minutes" => Ok(60.0),
        "seconds" => Ok(1.0),
        "microseconds" => Ok(1e-6),
        other => Err(format!("unknown interval period {other:?}")),
    };
    let when = match (&row.crontab, &row.interval, row.clocked_time, &row.solar) {
        (Some(fields), ..) => When::Crontab(fields.clone()),
        (None, Some((every, period)), ..) => {
            When::Interval { seconds: f64::from(*every) * seconds_per(period)?, relative: false }
        }
        (None, None, Some(at), _) => When::Clocked(at),
        (None, None, None, Some((event, lat, lon))) => {
            When::Solar(json!({"event": event, "lat": lat, "lon": lon}).to_string())
        }
        _ => return Err("no schedule (crontab, interval, clocked or solar)".into()),
    };
    let json_text = |what: &str, text: &str, object: bool| -> Result<String, String> {
        // django-celery-beat reads an empty field as no arguments.
        if text.trim().is_empty() {
            return Ok(if object { "{}" } else { "[]" }.to_owned());
        }
        let value: Value = serde_json::from_str(text).map_err(|e| format!("{what}: {e}"))?;
        if object != value.is_object() || (!object && !value.is_array()) {
            return Err(format!("{what} must be a JSON {}", if object { "object" } else { "array" }));
        }
        Ok(value.to_string())
    };
    let mut options = Map::new();
    for (key, value) in [("queue", &row.queue), ("exchange", &row.exchange), ("routing_key", &row.routing_key)] {
        if let Some(v) = value.as_ref().filter(|v| !v.is_empty()) {
            options.insert(key.into(), json!(v));
        }
    }
    if let Some(p) = row.priority {
        options.insert("priority".into(), json!(p));
    }
    match (row.expires, row.expire_seconds) {
        (Some(at), _) => {
            options.insert("expires".into(), json!(at.to_rfc3339()));
        }
        (None, Some(seconds)) => {
            options.insert("expires".into(), json!(seconds));
        }
        (None, None) => {}
    }
    let headers: Value = serde_json::from_str(&json_text("headers", &row.headers, true)?).unwrap_or(Value::Null);
    if headers.as_object().is_some_and(|h| !h.is_empty()) {
        options.insert("headers".into(), headers);
    }
    let definition = ScheduleDefinition {
        name: row.name,
        task: row.task,
        args_json: json_text("args", &row.args, false)?,
        kwargs_json: json_text("kwargs", &row.kwargs, true)?,
        options_json: Value::Object(options).to_string(),
        when,
        tz: row.timezone.filter(|z| !z.is_empty()).unwrap_or_else(|| "UTC".into()),
        start_at: row.start_time,
        // django-celery-beat disables a row once `expires` passes.
        end_at: row.expires,
        one_off: row.one_off || row.clocked_time.is_some(),
        catchup: "latest".into(),
        catchup_window_seconds: None,
        catchup_max: 100,
        overlap: "allow".into(),
    };
    Ok((definition, row.enabled))
}
