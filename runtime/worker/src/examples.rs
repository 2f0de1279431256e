//! Example handlers, registered by `celeriac worker --example-handlers`: for the demo, the
//! benchmark and smoke tests of a deployment. Their names live under `examples.`.

use std::time::Duration;

use celeriac_protocol::Value;

use crate::{Outcome, Registry, Request, RetryBackoff, TaskError};

/// Registers the example tasks on `registry`:
///
/// | task | args | does |
/// |---|---|---|
/// | `examples.add` | `(a, b)` integers | returns `a + b` |
/// | `examples.noop` | anything | returns `None` |
/// | `examples.sleep` | `(seconds,)` | sleeps (async), returns `seconds` |
/// | `examples.fail` | `(message,)` | fails with `ValueError(message)` |
/// | `examples.panic` | `(message,)` | panics (the task fails; the worker lives) |
/// | `examples.retry` | `(times,)` | retries after 0.1 s until it has been retried `times` times |
/// | `examples.reject` | `(reason,)` | rejects the message to `dead_letter` |
/// | `examples.echo` | `(value,)` | returns `value` unchanged (any type kombu's JSON carries) |
/// | `examples.progress` | `(steps,)` | stores `PROGRESS` with `{"done": i, "total": steps}` after each step (10 ms apart), returns `steps` |
/// | `examples.flaky` | `(succeed_after, max_retries)` | retries with Celery's backoff (1 s, 2 s, …, no jitter) until retried `succeed_after` times, then returns the retries; past `max_retries` it fails with `MaxRetriesExceededError` |
/// | `examples.record` | `(n,)` | appends the line `n unix_nanoseconds` to the file named by the worker's `CELERIAC_RECORD_FILE` (what the benchmark suite counts), returns `None` |
pub fn register(registry: &mut Registry) {
    registry.register_raw("examples.record", |req: Request| async move {
        match req.args() {
            [n] => match record(n) {
                Ok(()) => Outcome::Success(Value::Null),
                Err(e) => Outcome::failure("OSError", e),
            },
            args => Outcome::failure("TypeError", format!("examples.record() takes 1 argument ({} given)", args.len())),
        }
    });
    registry.register_raw("examples.echo", |req: Request| async move {
        match req.args() {
            [value] => Outcome::Success(value.clone()),
            args => Outcome::failure("TypeError", format!("examples.echo() takes 1 argument ({} given)", args.len())),
        }
    });
    registry.register_raw("examples.progress", |req: Request| async move {
        let steps = req.args().first().and_then(Value::as_i64).unwrap_or(1).clamp(0, 1000);
        for done in 1..=steps {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let mut meta = celeriac_protocol::Map::new();
            meta.insert("done".into(), Value::Int(done));
            meta.insert("total".into(), Value::Int(steps));
            if let Err(e) = req.state.update_state("PROGRESS", Value::Map(meta)).await {
                return Outcome::failure("RuntimeError", e.to_string());
            }
        }
        Outcome::Success(Value::Int(steps))
    });
    registry.register_raw("examples.flaky", |req: Request| async move {
        let succeed_after = req.args().first().and_then(Value::as_i64).unwrap_or(1);
        let max_retries = req.args().get(1).and_then(Value::as_i64);
        if req.retries() >= succeed_after {
            return Outcome::Success(Value::Int(req.retries()));
        }
        let backoff = RetryBackoff { factor: 1, maximum: 600, jitter: false };
        TaskError::retry_with_backoff(&backoff, req.retries(), max_retries, "flaky")
            .into_outcome(req.retries(), chrono::Utc::now())
    });
    registry.register("examples.add", |(a, b): (i64, i64)| async move {
        a.checked_add(b).ok_or_else(|| TaskError::exception("OverflowError", "integer overflow"))
    });
    registry.register_raw("examples.noop", |_req: Request| async { Outcome::Success(Value::Null) });
    registry.register("examples.sleep", |(seconds,): (f64,)| async move {
        tokio::time::sleep(Duration::from_secs_f64(seconds.clamp(0.0, 86_400.0))).await;
        Ok::<_, TaskError>(seconds)
    });
    registry.register("examples.fail", |(message,): (String,)| async move {
        Err::<(), _>(TaskError::exception("ValueError", message))
    });
    registry.register("examples.panic", |(message,): (String,)| async move {
        if !message.is_empty() {
            panic!("{message}");
        }
        Ok::<_, TaskError>(())
    });
    registry.register_raw("examples.retry", |req: Request| async move {
        let times = req.args().first().and_then(Value::as_i64).unwrap_or(1);
        if req.retries() < times {
            TaskError::Retry {
                countdown: 0.1,
                max_retries: None,
                reason: format!("retry {} of {times}", req.retries() + 1),
            }
            .into_outcome(req.retries(), chrono::Utc::now())
        } else {
            Outcome::Success(Value::Int(req.retries()))
        }
    });
    registry.register("examples.reject", |(reason,): (String,)| async move { Err::<(), _>(TaskError::Reject(reason)) });
}

/// The file `examples.record` appends to, opened once (append mode) from `CELERIAC_RECORD_FILE`.
static RECORD_FILE: std::sync::OnceLock<Result<std::fs::File, String>> = std::sync::OnceLock::new();

/// Appends `n` and the time now (nanoseconds since the Unix epoch) as one line, with one write.
fn record(n: &Value) -> Result<(), String> {
    use std::io::Write as _;
    let file = RECORD_FILE.get_or_init(|| {
        let path = std::env::var_os("CELERIAC_RECORD_FILE").ok_or("CELERIAC_RECORD_FILE is not set")?;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", std::path::Path::new(&path).display()))
    });
    let mut file = file.as_ref().map_err(Clone::clone)?;
    let n = match n {
        Value::Int(i) => i.to_string(),
        Value::Str(s) if !s.contains(['\n', ' ']) => s.clone(),
        other => return Err(format!("examples.record() wants an integer or a word, not {other:?}")),
    };
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    file.write_all(format!("{n} {nanos}\n").as_bytes()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_appends_one_line_per_call_and_refuses_what_would_break_a_line() {
        let dir = std::env::temp_dir().join(format!("celeriac-record-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rust.log");
        // The only test in this binary that touches the variable (the file is opened once).
        std::env::set_var("CELERIAC_RECORD_FILE", &path);
        record(&Value::Int(7)).unwrap();
        record(&Value::Str("word".into())).unwrap();
        assert!(record(&Value::Str("two words".into())).is_err());
        assert!(record(&Value::Float(1.5)).is_err());
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<(&str, u128)> = text
            .lines()
            .map(|l| {
                let (n, t) = l.split_once(' ').unwrap();
                (n, t.parse().unwrap())
            })
            .collect();
        assert_eq!(lines.iter().map(|(n, _)| *n).collect::<Vec<_>>(), ["7", "word"]);
        assert!(lines[0].1 > 1_700_000_000_000_000_000 && lines[0].1 <= lines[1].1);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
