//! The built-in tasks the worker runs itself (they need its result backend) and chord counting:
//! `celery.backend_cleanup`, `celery.chord_unlock` (the database backends' chords), and a Rust
//! header task's part of a chord counted in Redis. See `crate::chord` and `docs/results.md`.

use std::time::Instant;

use celeriac_protocol::{pyrepr, Limits, TaskMessage, TaskState, Value};
use celeriac_store::{ClaimedMessage, Lease, Settlement};
use chrono::Utc;

use super::{
    effects::{finish, store_final},
    execute::dead_letter_undecodable,
    stats::Counter,
    Shared,
};
use crate::{
    canvas, chord,
    results::{Exception, State, TaskContext},
};

/// Celery's built-in result cleanup, which Beat (and celeriac's scheduler) sends daily at 04:00.
pub(super) const BACKEND_CLEANUP: &str = "celery.backend_cleanup";

/// `celery.backend_cleanup` without the app's Python: deletes expired rows from a result table;
/// without a result backend (or with Redis, whose keys expire) there is nothing to do.
pub(super) async fn backend_cleanup(shared: &Shared, lease: Lease, name: &str, id: &str) {
    let started = Instant::now();
    let deleted = match &shared.results {
        Some(results) => results.cleanup().await,
        None => Ok(0),
    };
    match deleted {
        Ok(n) => {
            let secs = celeriac_protocol::json::python_float_repr(started.elapsed().as_secs_f64());
            tracing::info!(deleted = n, "Task {name}[{id}] succeeded in {secs}s: None");
            shared.stats.count(Counter::Succeeded);
        }
        Err(e) => {
            tracing::error!("Task {name}[{id}] raised unexpected: OperationalError({e:?})");
            shared.stats.count(Counter::Failed);
        }
    }
    shared.session.settle(Settlement::Complete(lease));
}

/// `celery.chord_unlock` without the app's Python (see `crate::chord`): checks the header's
/// states; publishes the body with their results, or fails it, or checks again later.
pub(super) async fn chord_unlock(
    shared: &Shared,
    claimed: &ClaimedMessage,
    mut message: TaskMessage,
    body_decoded: bool,
    results: &crate::results::Results,
) {
    let lease = claimed.lease;
    if !body_decoded {
        if let Err(e) = message.decode_body(&Limits::default()) {
            dead_letter_undecodable(shared, claimed, message.headers.task.as_str(), &e);
            return;
        }
    }
    let (name, id) = (message.display_name().to_owned(), message.headers.id.clone());
    let unlock = match chord::parse(&message) {
        Ok(u) => u,
        Err(e) => {
            let reason = pyrepr::repr(&Value::Str(e));
            tracing::error!("Task {name}[{id}] raised unexpected: ValueError({reason})");
            shared.stats.count(Counter::Failed);
            shared.session.settle(Settlement::Complete(lease));
            return;
        }
    };
    let now = Utc::now();
    let join = match results.read_many(&unlock.members).await {
        Ok(states) => chord::join(&unlock.members, &states),
        Err(e) => {
            tracing::warn!("Task {name}[{id}]: cannot read the chord header's results ({e}); checking again later");
            chord::Join::Waiting
        }
    };
    let queue = claimed.queue.as_str();
    // `callback.delay(results)`: the body keeps its own priority.
    let publisher = canvas::Publisher::new(&message, &shared.config.default_queue, &shared.config.task_routes, now)
        .with_signature_priority();
    let settlement = match join {
        chord::Join::Waiting => {
            if unlock.max_retries.is_some_and(|max| message.headers.retries >= max) {
                // Celery 5.7 fails the body when the unlock gives up.
                let reason = format!("the chord's header was not ready after {} checks", message.headers.retries + 1);
                tracing::error!("Task {name}[{id}] raised unexpected: MaxRetriesExceededError({reason})");
                shared.stats.count(Counter::Failed);
                let (row, errbacks) = chord_body_failure(shared, &unlock.body, &publisher, queue, &reason).await;
                finish(lease, row, errbacks)
            } else {
                #[allow(clippy::cast_possible_truncation)] // at most a day of milliseconds
                let delay = chrono::Duration::milliseconds((unlock.interval.min(86_400.0) * 1000.0) as i64);
                let eta = now + delay;
                // Celery logs each check at INFO ("Task celery.chord_unlock[…] retry: Retry in 1s").
                let secs = celeriac_protocol::json::python_float_repr(unlock.interval.min(86_400.0));
                tracing::info!("Task {name}[{id}] retry: Retry in {secs}s: the chord's header is not ready");
                shared.stats.count(Counter::Retried);
                Settlement::Retry { lease, payload: message.to_retry(eta).payload, eta }
            }
        }
        joined => {
            // Ready or failed: the body is published, or fails, as for every counted chord.
            let ready = matches!(joined, chord::Join::Ready(_));
            let joined = match joined {
                chord::Join::Ready(values) => chord::Join::Ready(chord::nest(&unlock.shape, values)),
                other => other,
            };
            let group = message.args.first().and_then(Value::as_str).unwrap_or("?");
            let (out, row, failed) = chord_completion(shared, &unlock.body, &publisher, queue, group, Ok(joined)).await;
            if failed {
                // The unlock itself fails only when it could not publish the body.
                shared.stats.count(if ready { Counter::Failed } else { Counter::Succeeded });
            } else {
                tracing::info!("Task {name}[{id}] succeeded: the chord's body is published");
                shared.stats.count(Counter::Succeeded);
            }
            finish(lease, row, out)
        }
    };
    shared.session.settle(settlement);
}

/// A header task's part of a chord its backend counts (Redis keys, django-celery-results'
/// `ChordCounter`).
pub(super) async fn chord_part(
    shared: &Shared,
    message: &TaskMessage,
    queue: &str,
    state: &State,
    now: chrono::DateTime<Utc>,
) {
    let Some(results) = &shared.results else { return };
    let Some(group) = message.headers.group.as_deref() else { return };
    match results.django_chord_part(group).await {
        Ok(Some(ids)) => django_chord_done(shared, message, queue, &ids, now).await,
        Ok(None) => redis_chord_part(shared, message, queue, state, now).await,
        Err(e) => {
            let (name, id) = (message.display_name(), &message.headers.id);
            tracing::error!("Task {name}[{id}]: cannot count its chord part: {e}");
        }
    }
}

/// The last part of a django-celery-results chord: joins the header and publishes the body
/// (or fails it), as its `trigger_callback`.
async fn django_chord_done(
    shared: &Shared,
    message: &TaskMessage,
    queue: &str,
    ids: &[String],
    now: chrono::DateTime<Utc>,
) {
    let Some(results) = &shared.results else { return };
    let publisher = canvas::Publisher::new(message, &shared.config.default_queue, &shared.config.task_routes, now)
        .with_signature_priority();
    let group = message.headers.group.as_deref().unwrap_or("?");
    let joined = match results.read_many(ids).await {
        Ok(states) => Ok(chord::join(ids, &states)),
        Err(e) => Err(format!("Join error: {e}")),
    };
    let (out, row, _) = chord_completion(shared, &message.embed.chord, &publisher, queue, group, joined).await;
    if let Some(row) = row {
        results.store_row_now(row).await;
    }
    if let Err(e) = shared.store.message_insert_many(&out).await {
        tracing::error!("Chord {group}: cannot publish its body: {e}");
    }
}

/// What completes a counted chord: the body with the header's results; or, when a member failed
/// or the body cannot be published, the body's `ChordError` row and its errbacks. Returns the
/// messages to publish, the row to store, and whether the body failed.
async fn chord_completion(
    shared: &Shared,
    body: &Value,
    publisher: &canvas::Publisher<'_>,
    queue: &str,
    group: &str,
    joined: Result<chord::Join, String>,
) -> (Vec<celeriac_store::NewMessage>, Option<celeriac_store::ResultRow>, bool) {
    let mut out = Vec::new();
    let failure = match joined {
        Ok(chord::Join::Ready(values)) => canvas::publish(body, &[Value::List(values)], None, publisher, &mut out)
            .err()
            .map(|e| format!("Callback error: {e}")),
        Ok(chord::Join::Failed(reason)) | Err(reason) => Some(reason),
        Ok(chord::Join::Waiting) => {
            Some("a header member's state cannot be read although the chord is complete".to_owned())
        }
    };
    let Some(reason) = failure else { return (out, None, false) };
    tracing::error!("Chord {group}: the body fails: ChordError({reason})");
    let (row, errbacks) = chord_body_failure(shared, body, publisher, queue, &reason).await;
    (errbacks, row, true)
}

/// A header task of a chord counted in Redis (a Celery producer's chord on the Redis backend):
/// records its part and, when it completed the chord and won the dispatch claim, publishes the
/// body with the header's results (or fails it), as Celery's `on_chord_part_return` does.
async fn redis_chord_part(
    shared: &Shared,
    message: &TaskMessage,
    queue: &str,
    state: &State,
    now: chrono::DateTime<Utc>,
) {
    let Some(results) = &shared.results else { return };
    let (name, id) = (message.display_name(), &message.headers.id);
    let ctx = TaskContext { message, hostname: &shared.hostname, queue, now };
    let (claim, parts) = match results.redis_chord_part(state, &ctx).await {
        Ok(Some(done)) => done,
        Ok(None) => return,
        Err(e) => {
            tracing::error!("Task {name}[{id}]: cannot count its chord part in Redis: {e}");
            return;
        }
    };
    let (ids, states): (Vec<String>, Vec<_>) = parts.into_iter().map(|(id, s)| (id, Some(s))).unzip();
    let publisher = canvas::Publisher::new(message, &shared.config.default_queue, &shared.config.task_routes, now)
        .with_signature_priority();
    let joined = Ok(chord::join(&ids, &states));
    let (out, row, failed) =
        chord_completion(shared, &message.embed.chord, &publisher, queue, claim.group_id(), joined).await;
    // Publish only while the dispatch claim is still ours (it may have run out meanwhile).
    if !results.redis_chord_claim_extend(&claim).await {
        tracing::warn!(
            "Chord {}: the dispatch claim was lost before publishing; another worker publishes",
            claim.group_id()
        );
        return;
    }
    if let Some(row) = row {
        results.store_row_now(row).await;
    }
    if let Err(e) = shared.store.message_insert_many(&out).await {
        tracing::error!("Chord {}: cannot publish its body: {e}", claim.group_id());
    }
    results.redis_chord_finished(&claim, failed).await;
}

/// A chord's body fails with `ChordError(reason)` (Celery's `chord_error_from_stack`): its
/// `FAILURE` row (when it goes with a completion; else stored now) and its errbacks.
async fn chord_body_failure(
    shared: &Shared,
    body: &Value,
    publisher: &canvas::Publisher<'_>,
    queue: &str,
    reason: &str,
) -> (Option<celeriac_store::ResultRow>, Vec<celeriac_store::NewMessage>) {
    // A chain body's result is its last task's.
    let last = match body.as_map().and_then(|b| b.get("subtask_type")).and_then(Value::as_str) {
        Some("chain") => {
            canvas::kwarg(body, "tasks").and_then(Value::as_list).and_then(<[Value]>::last).unwrap_or(body)
        }
        _ => body,
    };
    let message = canvas::signature_message(last, &[], None, publisher).map_err(|e| e.to_string()).and_then(|m| {
        TaskMessage::decode(&m.payload, &celeriac_protocol::Accept::default()).map_err(|e| e.to_string())
    });
    let message = match message {
        Ok(m) => m,
        Err(e) => {
            tracing::error!("cannot read a chord's body: {e}");
            return (None, Vec::new());
        }
    };
    let state = State::Exception { state: TaskState::Failure, exception: Exception::new("ChordError", reason, None) };
    let row = store_final(shared, &message, queue, &state).await;
    let (errbacks, errors) =
        canvas::Publisher::new(&message, publisher.default_queue, publisher.routes, publisher.now).on_failure(None);
    for e in errors {
        tracing::error!("{e}");
    }
    (row, errbacks)
}
