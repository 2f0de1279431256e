//! `celeriac send`: enqueues one task exactly as Celery 5.7's `apply_async` builds it.

use celeriac_protocol::{json, Expires, Map, TaskOptions, Value};
use celeriac_store::NewMessage;
use chrono::{DateTime, FixedOffset};
use clap::Args;

use super::{store, CliError};

/// `celeriac send` options (named like `apply_async`'s).
#[derive(Debug, Args)]
pub struct SendArgs {
    /// Registered task name, e.g. proj.tasks.add.
    pub task: String,
    /// Positional arguments as a JSON array.
    #[arg(long, default_value = "[]")]
    pub args: String,
    /// Keyword arguments as a JSON object.
    #[arg(long, default_value = "{}")]
    pub kwargs: String,
    /// Queue (routing key).
    #[arg(short = 'Q', long, default_value = "celery")]
    pub queue: String,
    /// Run no earlier than this many seconds from now.
    #[arg(long, conflicts_with = "eta")]
    pub countdown: Option<f64>,
    /// Run no earlier than this ISO-8601 time (UTC if no offset).
    #[arg(long)]
    pub eta: Option<String>,
    /// Discard the task if not started within this many seconds (or after this ISO-8601 time).
    #[arg(long)]
    pub expires: Option<String>,
    /// Priority 0–255; higher runs first.
    #[arg(long)]
    pub priority: Option<i64>,
    /// Task id [default: a new UUID].
    #[arg(long)]
    pub task_id: Option<String>,
    /// Hard time limit, seconds.
    #[arg(long)]
    pub time_limit: Option<f64>,
    /// Soft time limit, seconds.
    #[arg(long)]
    pub soft_time_limit: Option<f64>,
    /// Ask the worker not to store a result.
    #[arg(long)]
    pub ignore_result: bool,
    /// Extra message headers as a JSON object.
    #[arg(long)]
    pub headers: Option<String>,
    /// Print the envelope JSON instead of enqueueing it.
    #[arg(long)]
    pub dry_run: bool,
}

/// Prints the envelope `args` describe (`--dry-run`: no database involved).
pub(super) fn print_envelope(args: &SendArgs) -> Result<(), CliError> {
    let message = build_message(args)?;
    println!("{}", String::from_utf8_lossy(&message.payload));
    Ok(())
}

/// Enqueues the message `args` describe and prints its task id.
pub(super) async fn run(url: &str, args: &SendArgs) -> Result<(), CliError> {
    let store = store(url, 1)?;
    let message = build_message(args)?;
    store.message_insert(&message).await?;
    println!("{}", message.task_id.unwrap_or_default());
    Ok(())
}

fn parse_json(flag: &'static str, text: &str) -> Result<Value, CliError> {
    json::from_slice(text.as_bytes()).map_err(|source| CliError::Json { flag, source })
}

/// Parses an ISO-8601 time, keeping its offset (UTC when it has none).
fn parse_time(flag: &'static str, text: &str) -> Result<DateTime<FixedOffset>, CliError> {
    match json::parse_datetime(text) {
        Some(Value::DateTime(dt)) => Ok(dt),
        Some(Value::NaiveDateTime(dt)) => Ok(dt.and_utc().fixed_offset()),
        _ => Err(CliError::NotATime { flag, text: text.to_owned() }),
    }
}

/// The message as Celery's `apply_async` would build it from these options.
fn build_message(args: &SendArgs) -> Result<NewMessage, CliError> {
    let Value::List(call_args) = parse_json("args", &args.args)? else {
        return Err(CliError::JsonShape { flag: "args", expected: "array" });
    };
    let Value::Map(kwargs) = parse_json("kwargs", &args.kwargs)? else {
        return Err(CliError::JsonShape { flag: "kwargs", expected: "object" });
    };
    let headers = match &args.headers {
        None => Map::new(),
        Some(text) => match parse_json("headers", text)? {
            Value::Map(m) => m,
            _ => return Err(CliError::JsonShape { flag: "headers", expected: "object" }),
        },
    };
    let expires = match &args.expires {
        None => None,
        Some(text) => Some(match text.parse::<f64>() {
            Ok(secs) => Expires::After(secs),
            Err(_) => Expires::At(parse_time("expires", text)?),
        }),
    };
    let options = TaskOptions {
        task_id: args.task_id.clone(),
        queue: args.queue.clone(),
        countdown: args.countdown,
        eta: args.eta.as_deref().map(|t| parse_time("eta", t)).transpose()?,
        expires,
        priority: args.priority,
        time_limit: args.time_limit,
        soft_time_limit: args.soft_time_limit,
        ignore_result: args.ignore_result,
        headers,
        ..TaskOptions::default()
    };
    Ok(crate::build_message(&args.task, &call_args, &kwargs, &options)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send_args(args: &str, kwargs: &str) -> SendArgs {
        SendArgs {
            task: "proj.add".into(),
            args: args.into(),
            kwargs: kwargs.into(),
            queue: "celery".into(),
            countdown: None,
            eta: None,
            expires: None,
            priority: None,
            task_id: None,
            time_limit: None,
            soft_time_limit: None,
            ignore_result: false,
            headers: None,
            dry_run: true,
        }
    }

    #[test]
    fn bad_options_are_refused_with_the_flag_named() {
        let err = |args: SendArgs| build_message(&args).unwrap_err().to_string();
        assert_eq!(err(send_args("{\"a\": 1}", "{}")), "--args must be a JSON array");
        assert_eq!(err(send_args("[]", "[]")), "--kwargs must be a JSON object");
        assert!(err(send_args("[", "{}")).starts_with("--args: invalid JSON at byte 1"));
        assert_eq!(
            err(SendArgs { headers: Some("1".into()), ..send_args("[]", "{}") }),
            "--headers must be a JSON object"
        );
        assert_eq!(
            err(SendArgs { eta: Some("tomorrow".into()), ..send_args("[]", "{}") }),
            "--eta: not an ISO-8601 time: \"tomorrow\""
        );
        assert_eq!(
            err(SendArgs { expires: Some("soon".into()), ..send_args("[]", "{}") }),
            "--expires: not an ISO-8601 time: \"soon\""
        );
    }

    #[test]
    fn times_keep_their_offset_and_default_to_utc() {
        assert_eq!(parse_time("eta", "2030-01-02T03:04:05+02:00").unwrap().to_rfc3339(), "2030-01-02T03:04:05+02:00");
        assert_eq!(parse_time("eta", "2030-01-02T03:04:05").unwrap().to_rfc3339(), "2030-01-02T03:04:05+00:00");
        let message = build_message(&SendArgs { priority: Some(5), ..send_args("[2, 2]", "{}") }).unwrap();
        assert_eq!(message.priority, 5);
    }
}
