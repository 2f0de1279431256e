//! Example handlers, registered by `celeriac worker --example-handlers`: for the demo, the
//! benchmark and smoke tests of a deployment. Their names live under `examples.`.

use std::time::Duration;

use celeriac_protocol::Value;

use crate::{Outcome, Registry, Request, TaskError};

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
pub fn register(registry: &mut Registry) {
    registry.register("examples.add", |(a, b): (i64, i64)| async move {
        a.checked_add(b)
            .ok_or_else(|| TaskError::Fail { exc_type: "OverflowError".into(), message: "integer overflow".into() })
    });
    registry.register_raw("examples.noop", |_req: Request| async { Outcome::Success(Value::Null) });
    registry.register("examples.sleep", |(seconds,): (f64,)| async move {
        tokio::time::sleep(Duration::from_secs_f64(seconds.clamp(0.0, 86_400.0))).await;
        Ok::<_, TaskError>(seconds)
    });
    registry.register("examples.fail", |(message,): (String,)| async move {
        Err::<(), _>(TaskError::Fail { exc_type: "ValueError".into(), message })
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
