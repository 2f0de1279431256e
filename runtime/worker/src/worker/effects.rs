//! What a task's outcome writes besides its message: its result in the app's result backend
//! (stored now, or carried with the completion as `Settlement::Finish`), the states the worker
//! decides (`STARTED`, `ContentDisallowed`, custom states), and what it publishes (chain links,
//! callbacks, errbacks). See `docs/results.md`.

use std::sync::Arc;

use celeriac_protocol::{TaskMessage, TaskState, Value};
use celeriac_store::{ClaimedMessage, Finish, Lease, Settlement};
use chrono::Utc;

use super::{settle::TaskResult, Shared};
use crate::{
    canvas,
    results::{Exception, State, TaskContext},
    task::{StateError, StateUpdater},
};

/// A message refused by `accept_content` fails its task with `ContentDisallowed`, as under
/// Celery (whose pool refuses the body), when its headers can be read.
pub(super) async fn store_content_disallowed(shared: &Shared, claimed: &ClaimedMessage, content_type: &str) {
    if shared.results.is_none() {
        return;
    }
    let Ok(message) = TaskMessage::decode_head(&claimed.payload, &celeriac_protocol::Accept::new([content_type]))
    else {
        return;
    };
    let serializer = match content_type {
        "application/x-python-serialize" => "pickle",
        "application/x-yaml" => "yaml",
        "application/x-msgpack" => "msgpack",
        "application/json" => "json",
        other => other,
    };
    let text = format!("Refusing to deserialize untrusted content of type {serializer} ({content_type})");
    let state =
        State::Exception { state: TaskState::Failure, exception: Exception::new("ContentDisallowed", &text, None) };
    store_now(shared, &message, claimed.queue.as_str(), &state).await;
}

/// The result state of a verdict's task result.
pub(super) fn result_state(result: &TaskResult) -> State {
    match result {
        TaskResult::Success(value) => State::Success(value.clone()),
        TaskResult::Failure { exc_type, message, traceback } => State::Exception {
            state: TaskState::Failure,
            exception: Exception::new(exc_type, message, traceback.clone()),
        },
        TaskResult::Retry { reason } => {
            State::Exception { state: TaskState::Retry, exception: Exception::new("Retry", reason, None) }
        }
    }
}

/// A handler's `update_state`: stores custom states of this task while it runs.
pub(super) fn state_updater(shared: &Arc<Shared>, message: &Arc<TaskMessage>, queue: &str) -> StateUpdater {
    if !shared.results.as_ref().is_some_and(|r| r.wanted(message)) {
        return StateUpdater::none();
    }
    let (shared, message, queue) = (shared.clone(), message.clone(), Arc::<str>::from(queue));
    StateUpdater::new(move |state, meta| {
        let (shared, message, queue) = (shared.clone(), message.clone(), queue.clone());
        Box::pin(async move {
            let Some(results) = &shared.results else { return Ok(()) };
            let ctx = TaskContext { message: &message, hostname: &shared.hostname, queue: &queue, now: Utc::now() };
            results.store_now(&State::Custom { state, meta }, &ctx).await.map_err(StateError)
        })
    })
}

/// Stores `state` of `message`'s task now, if results are stored for it; a failure is logged
/// (the task's outcome stands, as in Celery).
pub(super) async fn store_now(shared: &Shared, message: &TaskMessage, queue: &str, state: &State) {
    let Some(results) = shared.results.as_ref().filter(|r| r.wanted(message)) else { return };
    let ctx = TaskContext { message, hostname: &shared.hostname, queue, now: Utc::now() };
    if let Err(e) = results.store_now(state, &ctx).await {
        let (name, id) = (message.display_name(), &message.headers.id);
        tracing::error!("Task {name}[{id}]: cannot store its {} state: {e}", state.status());
    }
}

/// Celery 5.7's `_revoke`: a revoked task that has no result yet (and is not running here) is
/// marked REVOKED at once, so a client waiting on it hears now, not when a worker meets its
/// message (which may wait for an ETA a day ahead).
pub(super) async fn store_revoked(
    shared: &Shared,
    results: &crate::results::Results,
    ids: &[String],
    running: &[String],
) {
    let ids: Vec<String> = ids.iter().filter(|i| !running.contains(i)).cloned().collect();
    if ids.is_empty() {
        return;
    }
    let stored = match results.read_many(&ids).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("Failed to mark tasks {} as revoked in backend: {e}", ids.join(", "));
            return;
        }
    };
    for (id, stored) in ids.iter().zip(stored) {
        if stored.as_ref().is_some_and(|s| !matches!(s.status.as_str(), "PENDING" | "RECEIVED" | "RETRY" | "REJECTED"))
        {
            continue;
        }
        let message = celeriac_protocol::TaskMessage::bare(id);
        let state = State::Exception {
            state: celeriac_protocol::TaskState::Revoked,
            exception: crate::results::Exception::new("TaskRevokedError", "revoked", None),
        };
        let ctx = TaskContext { message: &message, hostname: &shared.hostname, queue: "", now: Utc::now() };
        if let Err(e) = results.store_now(&state, &ctx).await {
            tracing::warn!("Failed to mark task {id} as revoked in backend: {e}");
        }
    }
}

/// Stores a final state: the row to write with the completion, if it goes there.
pub(super) async fn store_final(
    shared: &Shared,
    message: &TaskMessage,
    queue: &str,
    state: &State,
) -> Option<celeriac_store::ResultRow> {
    let results = shared.results.as_ref().filter(|r| r.wanted(message))?;
    let ctx = TaskContext { message, hostname: &shared.hostname, queue, now: Utc::now() };
    match results.store_final(state, &ctx).await {
        Ok(row) => row,
        Err(e) => {
            let (name, id) = (message.display_name(), &message.headers.id);
            tracing::error!("Task {name}[{id}]: cannot store its {} state: {e}", state.status());
            None
        }
    }
}

/// A completion with its effects, or a plain one when it has none.
pub(super) fn finish(
    lease: Lease,
    result: Option<celeriac_store::ResultRow>,
    publish: Vec<celeriac_store::NewMessage>,
) -> Settlement {
    if result.is_none() && publish.is_empty() {
        Settlement::Complete(lease)
    } else {
        Settlement::Finish(Box::new(Finish { lease, result, publish }))
    }
}

/// What a Rust handler's outcome writes besides its message: its result (stored, or carried
/// with the completion) and what it publishes (the chain's next task, callbacks, errbacks).
pub(super) async fn effects(
    shared: &Shared,
    message: &TaskMessage,
    queue: &str,
    verdict: &super::settle::Verdict,
    now: chrono::DateTime<Utc>,
) -> Settlement {
    let settlement = verdict.settlement.clone();
    let Some(result) = &verdict.result else { return settlement };
    let state = result_state(result);
    if let Settlement::Retry { .. } = settlement {
        // The message stays (re-scheduled): the RETRY state is stored on its own.
        store_now(shared, message, queue, &state).await;
        return settlement;
    }
    let Settlement::Complete(lease) = settlement else { return settlement };
    if let (TaskResult::Failure { .. }, Some(results)) =
        (result, shared.results.as_deref().filter(|r| r.wanted(message)))
    {
        store_chain_failure(results, &shared.hostname, message, queue, &state).await;
    }
    let publisher = canvas::Publisher::new(message, &shared.config.default_queue, &shared.config.task_routes, now);
    let (publish, errors) = match result {
        TaskResult::Success(value) => publisher.on_success(value),
        // The request, exception and traceback are built only for a task that has errbacks.
        TaskResult::Failure { exc_type, message: text, traceback }
            if !canvas::signatures(&message.embed.errbacks).is_empty() =>
        {
            let exception = Exception::new(exc_type, text, traceback.clone());
            let request = errback_request(message, &shared.hostname, queue);
            let (exc, traceback) = (exception.as_value(), exception.traceback_text(message.display_name()));
            let python_task = |name: &str| shared.registry.get(name).is_some_and(|h| h.manages_execution());
            let detail = canvas::FailureDetail {
                request: &request,
                exc: &exc,
                traceback: &traceback,
                queue,
                python_task: &python_task,
            };
            publisher.on_failure(Some(&detail))
        }
        TaskResult::Failure { .. } => (Vec::new(), Vec::new()),
        TaskResult::Retry { .. } => (Vec::new(), Vec::new()),
    };
    for e in errors {
        let (name, id) = (message.display_name(), &message.headers.id);
        tracing::error!("Task {name}[{id}]: {e}");
    }
    let row = if matches!(message.embed.chord, Value::Map(_))
        && shared.results.as_ref().is_some_and(|r| r.counts_chord_parts())
    {
        // A header task of a chord the backend counts: its result is stored before its part is
        // counted (the last part reads every member's), as Celery does.
        store_now(shared, message, queue, &state).await;
        super::chords::chord_part(shared, message, queue, &state, now).await;
        None
    } else {
        store_final(shared, message, queue, &state).await
    };
    finish(lease, row, publish)
}

/// Stores Celery's `WorkerLostError` for the messages a rescue pass dead-lettered because every
/// worker that held them died (a task that kills its worker), as Celery's pool does for a task
/// whose child died (`mark_as_failure`: the rest of its chain too, and its errbacks published),
/// so the client's `AsyncResult` fails instead of waiting forever. Only messages of this
/// worker's queues: another app's share the database, not this app's backend.
pub(super) fn lost_hook(
    results: Arc<crate::results::Results>,
    store: celeriac_store::Store,
    registry: Arc<crate::registry::Registry>,
    config: crate::WorkerConfig,
) -> celeriac_store::maintenance::LostHook {
    let shared = Arc::new((results, store, registry, config));
    celeriac_store::maintenance::LostHook(Arc::new(move |lost: Vec<celeriac_store::LostMessage>| {
        let shared = shared.clone();
        tokio::spawn(async move {
            let (results, store, registry, config) = &*shared;
            for m in lost.into_iter().filter(|m| config.queues.contains(&m.queue)) {
                let Ok(message) = TaskMessage::decode(&m.payload, &config.accept) else { continue };
                if !results.wanted(&message) {
                    continue;
                }
                let text = format!(
                    "Worker exited prematurely: the task's worker died {} times while it ran (celeriac \
                     --max-redeliveries); the message is in dead_letter",
                    m.redeliveries
                );
                let exception = Exception::new("WorkerLostError", &text, None);
                let state = State::Exception { state: TaskState::Failure, exception: exception.clone() };
                let hostname = config.hostname.as_str();
                let ctx = TaskContext { message: &message, hostname, queue: &m.queue, now: Utc::now() };
                let (name, id) = (message.display_name(), &message.headers.id);
                match results.store_now(&state, &ctx).await {
                    Ok(()) => tracing::error!("Task {name}[{id}] raised unexpected: WorkerLostError('{text}')"),
                    Err(e) => tracing::error!("Task {name}[{id}]: cannot store its WorkerLostError: {e}"),
                }
                store_chain_failure(results, hostname, &message, &m.queue, &state).await;
                let request = errback_request(&message, hostname, &m.queue);
                let (exc, traceback) = (exception.as_value(), exception.traceback_text(name));
                let python_task = |task: &str| registry.get(task).is_some_and(|h| h.manages_execution());
                let detail = canvas::FailureDetail {
                    request: &request,
                    exc: &exc,
                    traceback: &traceback,
                    queue: &m.queue,
                    python_task: &python_task,
                };
                let (errbacks, errors) =
                    canvas::Publisher::new(&message, &config.default_queue, &config.task_routes, Utc::now())
                        .on_failure(Some(&detail));
                for e in errors {
                    tracing::error!("Task {name}[{id}]: {e}");
                }
                if let Err(e) = store.message_insert_many(&errbacks).await {
                    tracing::error!("Task {name}[{id}]: cannot publish its errbacks: {e}");
                }
            }
        });
    }))
}

/// Celery's `mark_as_failure` beyond the task itself: the same failure is stored for every later
/// element of its chain that has a task id (and for the body of a chord among them), so a client
/// waiting on the chain's last result gets the error instead of waiting forever. A stored
/// failure also counts the element's part of a chord counted in the database.
pub(super) async fn store_chain_failure(
    results: &crate::results::Results,
    hostname: &str,
    message: &TaskMessage,
    queue: &str,
    state: &State,
) {
    let Value::List(chain) = &message.embed.chain else { return };
    let mut pending: std::collections::VecDeque<&Value> = chain.iter().collect();
    let mut stored = 0usize;
    while let Some(sig) = pending.pop_front() {
        let Some(map) = sig.as_map() else { continue };
        if let Some(id) = canvas::option(sig, "task_id").and_then(Value::as_str) {
            let mut element = message.clone();
            element.headers.id = id.to_owned();
            element.headers.task = map.get("task").and_then(Value::as_str).unwrap_or_default().to_owned();
            element.headers.group = canvas::option(sig, "group_id").and_then(Value::as_str).map(str::to_owned);
            element.args = map.get("args").and_then(Value::as_list).map(<[Value]>::to_vec).unwrap_or_default();
            element.kwargs = map.get("kwargs").and_then(Value::as_map).cloned().unwrap_or_default();
            element.embed = celeriac_protocol::Embed::default();
            let ctx = TaskContext { message: &element, hostname, queue, now: Utc::now() };
            if let Err(e) = results.store_now(state, &ctx).await {
                tracing::error!("Task {}[{id}]: cannot store the chain's failure: {e}", element.display_name());
            }
            stored += 1;
        }
        if map.get("subtask_type").and_then(Value::as_str) == Some("chord") {
            if let Some(body) = canvas::kwarg(sig, "body") {
                pending.push_back(body);
            }
        }
        if stored >= 10_000 {
            break;
        }
    }
}

/// The failed task's request as Celery's `Context` has it, for an errback called with
/// `(request, exc, traceback)`.
fn errback_request(message: &TaskMessage, hostname: &str, queue: &str) -> Value {
    let h = &message.headers;
    let text = |v: &Option<String>| v.clone().map_or(Value::Null, Value::Str);
    let mut delivery = celeriac_protocol::Map::new();
    delivery.insert("exchange".into(), Value::Str(String::new()));
    delivery.insert("routing_key".into(), Value::Str(queue.to_owned()));
    delivery.insert("redelivered".into(), Value::Bool(message.delivery_info.redelivered));
    let mut m = celeriac_protocol::Map::new();
    m.insert("id".into(), Value::Str(h.id.clone()));
    m.insert("task".into(), Value::Str(h.task.clone()));
    m.insert("args".into(), Value::List(message.args.clone()));
    m.insert("kwargs".into(), Value::Map(message.kwargs.clone()));
    m.insert("root_id".into(), text(&h.root_id));
    m.insert("parent_id".into(), text(&h.parent_id));
    m.insert("group".into(), text(&h.group));
    m.insert("group_index".into(), h.group_index.map_or(Value::Null, Value::Int));
    m.insert("retries".into(), Value::Int(h.retries));
    m.insert("hostname".into(), Value::Str(hostname.to_owned()));
    m.insert("correlation_id".into(), Value::Str(h.id.clone()));
    m.insert("origin".into(), text(&h.origin));
    m.insert("ignore_result".into(), Value::Bool(h.ignore_result));
    m.insert("is_eager".into(), Value::Bool(false));
    m.insert("delivery_info".into(), Value::Map(delivery));
    m.insert("callbacks".into(), message.embed.callbacks.clone());
    m.insert("errbacks".into(), message.embed.errbacks.clone());
    m.insert("chain".into(), message.embed.chain.clone());
    m.insert("chord".into(), message.embed.chord.clone());
    Value::Map(m)
}
