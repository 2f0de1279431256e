//! Executing one claimed message: decode the head, look the handler up, check expiry, wait
//! for its turn and a run slot, decode the body (Rust handlers only), run the handler under its
//! time limit, and hand the outcome to settling.

use std::{
    panic::AssertUnwindSafe,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use celeriac_protocol::{pyrepr, DecodeError, Limits, TaskMessage, TaskState, Value};
use celeriac_store::{ClaimedMessage, DeadLetterParams, DeadLetterReason, Lease, LeaseSession, Settlement};
use chrono::Utc;
use futures_util::FutureExt as _;
use tokio::sync::OwnedSemaphorePermit;

use super::{
    builtins, chords,
    claim::SuspectPermit,
    effects::{effects, finish, state_updater, store_content_disallowed, store_final, store_now},
    events,
    line::Turn,
    rate_limit::{Admission, Admitted},
    settle::{self, Delivery, Level, TaskResult, Verdict},
    window::SLOW_START,
    Shared,
};
use crate::{
    chord,
    registry::Handler,
    results::{Exception, State},
    task::{LeaseCheck, Outcome, Request, TaskControl},
};

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

/// Forgets a lease if `execute` ends without settling it (a bug, or an abandoned task), so the
/// heartbeat stops renewing it: the lease then expires and the message is redelivered.
struct Unsettled<'a> {
    session: &'a LeaseSession,
    lease: Option<Lease>,
}

impl Drop for Unsettled<'_> {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            self.session.forget(lease);
        }
    }
}

/// Runs one claimed message to its settlement. `slot` is its place in the prefetch window
/// (`None` for a message its type's parked claimer took back: the claimer sized its claim by the
/// rate limit, outside the window) and `turn` its place in the start line.
pub(super) async fn execute(
    shared: Arc<Shared>,
    claimed: ClaimedMessage,
    slot: Option<OwnedSemaphorePermit>,
    turn: Turn,
    suspect: Option<SuspectPermit>,
) {
    let mut guard = Unsettled { session: &shared.session, lease: Some(claimed.lease) };
    execute_inner(&shared, claimed, slot, turn).await;
    guard.lease = None;
    drop(suspect);
}

/// Gives back a message whose lease ran out before its task started, instead of starting it (a
/// no-op in the database if another worker has it by now).
fn give_back_unstarted(shared: &Shared, lease: Lease, name: &str, id: &str) {
    let delivery = Delivery { lease, name, id, redeliveries: 0, max_redeliveries: 0, runtime: 0.0, now: Utc::now() };
    apply(shared, settle::not_started(lease), &delivery);
}

/// Carries a verdict out: its log line (formatted only when logged), its counter, its write.
fn apply(shared: &Shared, verdict: Verdict, delivery: &Delivery<'_>) {
    match verdict.level() {
        Some(Level::Info) if tracing::enabled!(tracing::Level::INFO) => {
            tracing::info!("{}", verdict.log_line(delivery));
        }
        Some(Level::Warn) if tracing::enabled!(tracing::Level::WARN) => {
            tracing::warn!("{}", verdict.log_line(delivery));
        }
        Some(Level::Error) if tracing::enabled!(tracing::Level::ERROR) => {
            tracing::error!("{}", verdict.log_line(delivery));
        }
        _ => {}
    }
    if let Some(counter) = verdict.counter {
        shared.stats.count(counter);
    }
    shared.session.settle(verdict.settlement);
}

/// What a message's headers say about when it may run, decided in one place: whether it
/// expired before it could start, and its hard time limit. A handler that manages execution
/// itself (embedded Python, where Celery's own code reads these headers) gets neither.
#[derive(Debug, Clone, Copy, PartialEq)]
struct RunLimits {
    expired_at: Option<chrono::DateTime<Utc>>,
    /// The hard limit, and the seconds the header gave (for the error message).
    hard: Option<(Duration, f64)>,
}

impl RunLimits {
    fn of(message: &TaskMessage, managed: bool, now: chrono::DateTime<Utc>) -> RunLimits {
        if managed {
            return RunLimits { expired_at: None, hard: None };
        }
        RunLimits {
            expired_at: message.headers.expires.filter(|e| *e < now),
            // A limit too large to represent is no limit; zero or negative, none either.
            // The header first, then what the `time_limit` command set for the task.
            hard: message
                .headers
                .timelimit
                .hard
                .filter(|secs| *secs > 0.0)
                .or_else(|| crate::task::time_limits(&message.headers.task).and_then(|(_, hard)| hard))
                .filter(|secs| *secs > 0.0)
                .and_then(|secs| Some((Duration::try_from_secs_f64(secs).ok()?, secs))),
        }
    }
}

/// Moves a message to `dead_letter` because it cannot be decoded (`task`: its name, when the
/// headers could be read).
pub(super) fn dead_letter_undecodable(shared: &Shared, claimed: &ClaimedMessage, task: &str, e: &DecodeError) {
    let lease = claimed.lease;
    tracing::error!(message_id = lease.id, queue = %claimed.queue, reason = %e, "Can't decode message body; moving it to dead_letter");
    shared.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
    if let Some(metrics) = &shared.metrics {
        metrics.dead_lettered(task, &claimed.queue);
    }
    shared.task_counts.dead_lettered(&claimed.queue, task);
    shared.session.settle(Settlement::DeadLetter(DeadLetterParams {
        lease,
        reason_code: e.reason_code(),
        reason: e.to_string(),
    }));
}

/// Counts a delivery's outcome in the task counts and the metrics (the same reading of it as
/// [`outcome_event`]).
fn record_outcome(
    shared: &Shared,
    task: &str,
    queue: &str,
    handled: Option<TaskState>,
    verdict: &Verdict,
    runtime: f64,
) {
    use super::metrics::Ended;
    let ended = match (handled, &verdict.result, &verdict.event) {
        (Some(TaskState::Success), _, _) | (None, Some(TaskResult::Success(_)), _) => Some(Ended::Succeeded),
        (Some(TaskState::Failure), _, _) | (None, Some(TaskResult::Failure { .. }), _) => Some(Ended::Failed),
        (Some(TaskState::Retry), _, _) | (None, Some(TaskResult::Retry { .. }), _) => Some(Ended::Retried),
        (Some(TaskState::Revoked), _, _) => Some(Ended::Revoked),
        (None, None, settle::Event::Rejected { .. }) => Some(Ended::Rejected),
        _ => None,
    };
    let dead_lettered = matches!(verdict.settlement, Settlement::DeadLetter(_));
    match ended {
        Some(ended) => shared.task_counts.add(queue, task, ended),
        None if dead_lettered => shared.task_counts.dead_lettered(queue, task),
        None => {}
    }
    let Some(metrics) = &shared.metrics else { return };
    if let Some(ended) = ended {
        let ran = matches!(ended, Ended::Succeeded | Ended::Failed | Ended::Retried);
        metrics.ended(task, queue, ended, ran.then_some(runtime));
    }
    if dead_lettered {
        metrics.dead_lettered(task, queue);
    }
}

/// The `task-*` event of a delivery's outcome, with Celery's fields: from the result of a Rust
/// handler, or from what the pool reported of a Python task's.
fn outcome_event(
    shared: &Shared,
    id: &str,
    verdict: &Verdict,
    handled: Option<TaskState>,
    control: &TaskControl,
    runtime: f64,
) {
    let uuid = || ("uuid", Value::Str(id.to_owned()));
    let failure = |summary: Option<String>| {
        let summary = summary.unwrap_or_default();
        let (exception, traceback) = summary.split_once('\x1e').unwrap_or((summary.as_str(), ""));
        vec![uuid(), ("exception", exception.into()), ("traceback", traceback.into())]
    };
    let (kind, fields) = match (handled, &verdict.result, &verdict.event) {
        (Some(TaskState::Success), _, _) => (
            "task-succeeded",
            vec![uuid(), ("result", control.summary().unwrap_or_default().into()), ("runtime", Value::Float(runtime))],
        ),
        (Some(TaskState::Failure), _, _) => ("task-failed", failure(control.summary())),
        (Some(TaskState::Retry), _, _) => ("task-retried", failure(control.summary())),
        (Some(TaskState::Revoked), _, _) => (
            "task-revoked",
            vec![
                uuid(),
                ("terminated", Value::Bool(control.termination().is_some())),
                ("signum", control.termination().map_or(Value::Null, |s| Value::Str(format!("-{s}")))),
                ("expired", Value::Bool(false)),
            ],
        ),
        (Some(_), _, _) => return,
        (None, Some(TaskResult::Success(value)), _) => {
            ("task-succeeded", vec![uuid(), ("result", pyrepr::repr(value).into()), ("runtime", Value::Float(runtime))])
        }
        (None, Some(TaskResult::Failure { exc_type, message, traceback }), _) => {
            let exception = format!("{exc_type}({})", pyrepr::repr(&Value::Str(message.clone())));
            ("task-failed", failure(Some(format!("{exception}\x1e{}", traceback.as_deref().unwrap_or("")))))
        }
        (None, Some(TaskResult::Retry { reason }), _) => {
            ("task-retried", failure(Some(format!("Retry({})", pyrepr::repr(&Value::Str(reason.clone()))))))
        }
        (None, None, settle::Event::Rejected { .. } | settle::Event::RequeueExhausted { .. }) => {
            ("task-rejected", vec![uuid(), ("requeue", Value::Bool(false))])
        }
        (None, None, settle::Event::Requeued { .. }) => ("task-rejected", vec![uuid(), ("requeue", Value::Bool(true))]),
        _ => return,
    };
    shared.events.send(&shared.control.clock, kind, fields);
}

/// Settles a message that must not run (expired, revoked, terminated): REVOKED with
/// `TaskRevokedError(reason)` is stored, and, as Celery's `mark_as_revoked` does, a chord header
/// task's part is counted.
async fn discard_revoked(
    shared: &Arc<Shared>,
    lease: Lease,
    message: &mut TaskMessage,
    queue: &str,
    body_decoded: bool,
    reason: &str,
) {
    shared.task_counts.add(queue, message.headers.task.as_str(), super::metrics::Ended::Revoked);
    if let Some(metrics) = &shared.metrics {
        metrics.ended(message.headers.task.as_str(), queue, super::metrics::Ended::Revoked, None);
    }
    if shared.events.tasks() {
        shared.events.send(
            &shared.control.clock,
            "task-revoked",
            vec![
                ("uuid", message.headers.id.as_str().into()),
                ("terminated", Value::Bool(reason == "terminated")),
                ("signum", Value::Null),
                ("expired", Value::Bool(reason == "expired")),
            ],
        );
    }
    let state =
        State::Exception { state: TaskState::Revoked, exception: Exception::new("TaskRevokedError", reason, None) };
    let counted =
        matches!(message.embed.chord, Value::Map(_)) && shared.results.as_ref().is_some_and(|r| r.counts_chord_parts());
    let row = if counted {
        store_now(shared, message, queue, &state).await;
        if let Err(e) = if body_decoded { Ok(()) } else { message.decode_body(&Limits::default()) } {
            let (name, id) = (message.display_name(), &message.headers.id);
            tracing::debug!("Task {name}[{id}]: body unreadable ({e}); its chord part carries no args");
        }
        chords::chord_part(shared, message, queue, &state, Utc::now()).await;
        None
    } else {
        store_final(shared, message, queue, &state).await
    };
    shared.session.settle(finish(lease, row, Vec::new()));
}

/// A run slot for the message at the head of the line, or `None` when the worker stops first.
/// While the window may shrink, waiting [`SLOW_START`] for one (every slot busy: the tasks hold
/// the line up) halves it, and what then waits beyond it goes back (window.rs).
async fn run_slot(shared: &Shared) -> Option<OwnedSemaphorePermit> {
    if shared.stopping.is_cancelled() {
        return None;
    }
    if let Ok(slot) = shared.run_slots.clone().try_acquire_owned() {
        return Some(slot);
    }
    let acquire = shared.run_slots.clone().acquire_owned();
    tokio::pin!(acquire);
    loop {
        tokio::select! {
            biased;
            () = shared.stopping.cancelled() => return None,
            slot = &mut acquire => return slot.ok(),
            () = tokio::time::sleep(SLOW_START), if shared.window.adaptive() => {
                shared.window.slow_start();
                shared.line.give_back(shared.window.excess(shared.line.len()));
            }
        }
    }
}

async fn execute_inner(
    shared: &Arc<Shared>,
    mut claimed: ClaimedMessage,
    mut slot: Option<OwnedSemaphorePermit>,
    turn: Turn,
) {
    let from_parked = slot.is_none();
    let mut turn = Some(turn);
    let lease = claimed.lease;
    let accept = &shared.config.accept;
    // Only the envelope and headers now: the body, which may decode to far more than its
    // bytes, is decoded when the task is about to run, so prefetched messages stay small.
    // (Protocol 1 keeps its headers in the body: decoded whole here.)
    let head = match TaskMessage::decode_head(&claimed.payload, accept) {
        Ok(m) => Ok((m, false)),
        Err(DecodeError::UnsupportedContentType(_)) => TaskMessage::decode(&claimed.payload, accept).map(|m| (m, true)),
        Err(e) => Err(e),
    };
    let (mut message, body_decoded) = match head {
        Ok(m) => m,
        Err(e) => {
            if let DecodeError::ContentDisallowed { content_type, .. } = &e {
                store_content_disallowed(shared, &claimed, content_type).await;
            }
            dead_letter_undecodable(shared, &claimed, "", &e);
            return;
        }
    };
    let name = message.display_name().to_owned();
    let id = message.headers.id.clone();
    tracing::info!(redelivered = claimed.redelivered, "Task {name}[{id}] received");
    let redeliveries = claimed.redeliveries;
    if message.headers.task == chord::CHORD_UNLOCK && !shared.registry.contains(chord::CHORD_UNLOCK) {
        if let Some(results) = shared.results.clone() {
            chords::chord_unlock(shared, &claimed, message, body_decoded, &results).await;
            return;
        }
    }
    if message.headers.task == chords::BACKEND_CLEANUP && !shared.registry.contains(chords::BACKEND_CLEANUP) {
        chords::backend_cleanup(shared, claimed.lease, &name, &id).await;
        return;
    }
    let builtin = builtins::Builtin::for_task(shared, &message.headers.task);
    let registered = shared.registry.get(&message.headers.task);
    let Some(handler) = registered.or_else(|| builtin.clone().map(|b| Arc::new(b) as Arc<dyn Handler>)) else {
        let task = &message.headers.task;
        let quoted = pyrepr::repr(&Value::Str(task.clone()));
        tracing::error!("Received unregistered task of type {quoted}. The message has been moved to dead_letter.");
        // As Celery does, the client's result fails with NotRegistered; the message is kept for
        // a redrive once a handler is deployed.
        let state =
            State::Exception { state: TaskState::Failure, exception: Exception::new("NotRegistered", task, None) };
        store_now(shared, &message, claimed.queue.as_str(), &state).await;
        shared.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
        shared.task_counts.dead_lettered(&claimed.queue, task);
        if let Some(metrics) = &shared.metrics {
            metrics.received(task, &claimed.queue);
            metrics.dead_lettered(task, &claimed.queue);
        }
        shared.session.settle(Settlement::DeadLetter(DeadLetterParams {
            lease,
            reason_code: DeadLetterReason::NotRegistered,
            reason: format!("NotRegistered({quoted})"),
        }));
        return;
    };
    let managed = handler.manages_execution();
    let limits = RunLimits::of(&message, managed, Utc::now());
    if let Some(expires) = limits.expired_at {
        tracing::info!("Discarding revoked task: {name}[{id}] (expired at {expires})");
        discard_revoked(shared, lease, &mut message, &claimed.queue, body_decoded, "expired").await;
        return;
    }
    // What `inspect reserved|active` shows, and what a terminate reaches, until it is settled.
    let payload: Arc<[u8]> = std::mem::take(&mut claimed.payload).into();
    let task_control = Arc::new(TaskControl::default());
    let _held = shared.control.hold(
        lease.id,
        &message,
        &claimed.queue,
        claimed.redelivered,
        payload.clone(),
        task_control.clone(),
    );
    if shared.events.tasks() {
        shared.events.send(&shared.control.clock, "task-received", events::task::received(&message));
    }
    if let Some(metrics) = &shared.metrics {
        metrics.received(message.headers.task.as_str(), &claimed.queue);
    }
    let task = message.headers.task.as_str();
    let admission = shared.rate_limits.admit(task, from_parked, Instant::now());
    // Counted as admitted-not-started until it has its run slot (or gives up).
    let admitted = Admitted::new(&shared.rate_limits, task, admission);
    let mut wait_until = match admission {
        Admission::Unlimited | Admission::Run => None,
        Admission::At(at) => Some(at),
        Admission::Park => {
            // Not within reach of its rate limit: it waits in the database (the turn, dropped,
            // lets the next message go).
            tracing::debug!("Task {name}[{id}] waits for its rate limit in the database");
            shared.stats.parked.fetch_add(1, Ordering::Relaxed);
            shared.session.settle(Settlement::Park { lease, task: task.to_owned() });
            return;
        }
    };
    if admission != Admission::Unlimited {
        loop {
            if let Some(at) = wait_until {
                // Its token is reserved: it leaves the start line and the prefetch window, so
                // other messages go on while it waits.
                drop(turn.take());
                drop(slot.take());
                let due = tokio::select! {
                    biased;
                    () = shared.stopping.cancelled() => false,
                    () = tokio::time::sleep_until(at.into()) => true,
                };
                if !due {
                    shared.stats.released.fetch_add(1, Ordering::Relaxed);
                    shared.session.settle(Settlement::Release(lease));
                    return;
                }
            }
            // Starts of one type keep the limit's interval, measured when they are let go.
            let now = Instant::now();
            match shared.rate_limits.fire(task, now) {
                Ok(()) => break,
                Err(wait) => wait_until = Some(now + wait),
            }
        }
    }
    if let Some(waiting) = turn.as_mut() {
        if !waiting.wait().await {
            // The window shrank (tasks turned slow) and this one waits beyond it: back to the
            // queue, where another worker (or this one, later) takes it.
            drop(turn);
            shared.window.repay(slot.take());
            tracing::debug!("Task {name}[{id}] given back unstarted: the prefetch window shrank");
            shared.stats.released.fetch_add(1, Ordering::Relaxed);
            shared.session.settle(Settlement::Release(lease));
            return;
        }
    }
    let run_slot = run_slot(shared).await;
    // It has its run slot (or will not run): the next in line goes.
    drop(turn);
    drop(admitted);
    let Some(run_slot) = run_slot else {
        shared.stats.released.fetch_add(1, Ordering::Relaxed);
        shared.session.settle(Settlement::Release(lease));
        return;
    };
    if shared.session.expired(lease) {
        // The heartbeat could not renew it (the database was unreachable): another worker may
        // run it already.
        give_back_unstarted(shared, lease, &name, &id);
        return;
    }
    // Revoked when it was claimed (`celeriac.revoked`), or since (a revoke broadcast).
    if claimed.revoked || shared.control.revoked(&message) {
        if managed {
            // Celery's own code in the pool child discards it (signals, result, ack).
            task_control.mark_revoked();
        } else {
            tracing::info!("Discarding revoked task: {name}[{id}]");
            discard_revoked(shared, lease, &mut message, &claimed.queue, body_decoded, "revoked").await;
            return;
        }
    }
    if managed {
        // The pool reports when a child begins it (it may wait in the child's queue first), as
        // billiard's child acknowledges a job: active from then, `task-started` with the
        // child's pid. A task revoked before it started is discarded without one, as Celery's.
        // (The hook lives in the control: a weak reference back, so an unstarted task frees it.)
        let (on_start, control) = (shared.clone(), Arc::downgrade(&task_control));
        let (lease_id, task_id) = (lease.id, id.clone());
        task_control.on_start(move |pid| {
            on_start.control.started(lease_id);
            let revoked = control.upgrade().is_some_and(|c| c.is_revoked());
            if on_start.events.tasks() && !revoked {
                on_start.events.send(&on_start.control.clock, "task-started", events::task::started(&task_id, pid));
            }
        });
    } else {
        shared.control.started(lease.id);
        if shared.events.tasks() {
            shared.events.send(&shared.control.clock, "task-started", events::task::started(&id, std::process::id()));
        }
    }
    // A handler that decodes the body itself (embedded Python, which reads the stored envelope
    // as Celery would) gets the headers only.
    let mut message = message;
    if !body_decoded && !managed {
        // The envelope parsed at claim time is reused: only the body is read now.
        if let Err(e) = message.decode_body(&Limits::default()) {
            dead_letter_undecodable(shared, &claimed, message.headers.task.as_str(), &e);
            return;
        }
    }
    let message = Arc::new(message);
    if !managed && shared.results.as_ref().is_some_and(|r| r.track_started(&message.headers.task)) {
        store_now(shared, &message, claimed.queue.as_str(), &State::Started { pid: std::process::id() }).await;
    }
    let queue_name = claimed.queue.clone();
    let request = Request {
        message: message.clone(),
        lease,
        redelivered: claimed.redelivered,
        hostname: shared.hostname.clone(),
        queue: claimed.queue.as_str().into(),
        payload,
        lease_check: {
            let session = shared.session.clone();
            LeaseCheck::new(move || session.expired(lease))
        },
        state: state_updater(shared, &message, &queue_name),
        control: task_control.clone(),
    };
    let started = Instant::now();
    // A panic fails this task only: it is caught here, on the task's own tokio task.
    let run = AssertUnwindSafe(handler.call(request)).catch_unwind();
    let limited = async move {
        match limits.hard {
            Some((limit, secs)) => tokio::time::timeout(limit, run)
                .await
                .unwrap_or_else(|_| Ok(Outcome::failure("TimeLimitExceeded", format!("TimeLimitExceeded({secs})")))),
            None => run.await,
        }
    };
    let outcome = tokio::select! {
        r = limited => match r {
            Ok(o) => o,
            Err(panic) => Outcome::failure("panic", panic_message(panic.as_ref())),
        },
        // A Rust handler is stopped where it awaits; a pool kills its process itself.
        signal = task_control.terminated(), if !managed => {
            tracing::info!("Task {name}[{id}] terminated (signal {signal})");
            let mut message = TaskMessage::clone(&message);
            discard_revoked(shared, lease, &mut message, &queue_name, true, "terminated").await;
            return;
        }
        () = shared.abandon.cancelled() => {
            tracing::warn!("Task {name}[{id}] abandoned at shutdown; it runs again after its lease expires");
            return;
        }
    };
    let delivery = Delivery {
        lease,
        name: &name,
        id: &id,
        redeliveries,
        max_redeliveries: shared.config.max_redeliveries,
        // A pooled task's run starts when its child begins it.
        runtime: task_control.started_at().unwrap_or(started).elapsed().as_secs_f64(),
        now: Utc::now(),
    };
    let handled = match &outcome {
        Outcome::Handled { state } => Some(*state),
        _ => None,
    };
    let mut verdict = settle::verdict(outcome, &delivery);
    record_outcome(shared, message.headers.task.as_str(), &queue_name, handled, &verdict, delivery.runtime);
    if shared.events.tasks() {
        outcome_event(shared, &id, &verdict, handled, &task_control, delivery.runtime);
    }
    if let Some(eta) = verdict.retry_eta() {
        verdict.settlement = Settlement::Retry { lease, payload: message.to_retry(eta).payload, eta };
    }
    if !managed {
        verdict.settlement = effects(shared, &message, &queue_name, &verdict, delivery.now).await;
    }
    if let Some(builtin) = &builtin {
        verdict.settlement = builtin.with_published(verdict.settlement);
    }
    apply(shared, verdict, &delivery);
    // Only now may the next task start: its log lines follow this task's outcome.
    drop(run_slot);
    drop(slot);
}

#[cfg(test)]
mod tests {
    use celeriac_protocol::{encode_task, Accept, Map, TaskOptions, Value};

    use super::*;

    fn message(timelimit: (Option<f64>, Option<f64>), expires_in: Option<f64>) -> TaskMessage {
        let options = TaskOptions {
            time_limit: timelimit.0,
            soft_time_limit: timelimit.1,
            expires: expires_in.map(celeriac_protocol::message::Expires::After),
            ..TaskOptions::default()
        };
        let now = Utc::now();
        let encoded = encode_task("tasks.add", &[Value::Int(1)], &Map::new(), &options, now).unwrap();
        TaskMessage::decode_head(&encoded.payload, &Accept::default()).unwrap()
    }

    #[test]
    fn run_limits_come_from_the_headers_in_one_place() {
        let now = Utc::now();
        let m = message((Some(2.5), None), None);
        assert_eq!(
            RunLimits::of(&m, false, now),
            RunLimits { expired_at: None, hard: Some((Duration::from_millis(2500), 2.5)) }
        );
        // A managed handler (embedded Python) applies them itself.
        assert_eq!(RunLimits::of(&m, true, now), RunLimits { expired_at: None, hard: None });
        // Too large to represent, zero or negative: no limit, never a panic.
        for secs in [1e300, 0.0, -1.0] {
            let mut m = message((None, None), None);
            m.headers.timelimit.hard = Some(secs);
            assert_eq!(RunLimits::of(&m, false, now).hard, None, "{secs}");
        }
        let m = message((None, None), Some(10.0));
        assert_eq!(RunLimits::of(&m, false, now).expired_at, None);
        let later = now + chrono::Duration::seconds(60);
        assert_eq!(RunLimits::of(&m, false, later).expired_at, m.headers.expires);
        assert_eq!(RunLimits::of(&m, true, later).expired_at, None);
    }
}
