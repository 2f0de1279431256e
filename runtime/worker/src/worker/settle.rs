//! Settling: what a task's outcome becomes in the queue, as a pure function.
//!
//! [`verdict`] turns an [`Outcome`] into the [`Settlement`] the lease session writes, the counter
//! it bumps and the log line Celery would print for it, and carries the task's result
//! ([`TaskResult`]) for whoever records results (the worker logs it today; result backends for
//! Rust handlers build on it).

use celeriac_protocol::{json, pyrepr, DeadLetterReason, TaskState, Value};
use celeriac_store::{DeadLetterParams, Lease, Settlement};
use chrono::{DateTime, Utc};

use super::stats::Counter;
use crate::task::Outcome;

/// What the settle path needs to know of the delivery besides its outcome.
#[derive(Debug, Clone)]
pub(crate) struct Delivery<'a> {
    /// The lease held on the message.
    pub lease: Lease,
    /// The task's name as Celery logs it (`display_name`) and id.
    pub name: &'a str,
    pub id: &'a str,
    /// Redeliveries so far, and the most allowed (`--max-redeliveries`).
    pub redeliveries: i32,
    pub max_redeliveries: i32,
    /// How long the handler ran, in seconds.
    pub runtime: f64,
    pub now: DateTime<Utc>,
}

/// How loud a log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    Info,
    Warn,
    Error,
}

/// A task's result as a result backend would record it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TaskResult {
    /// `SUCCESS` with the returned value.
    Success(Value),
    /// `FAILURE` with the exception's type, message and traceback.
    Failure { exc_type: String, message: String, traceback: Option<String> },
    /// `RETRY` with the reason.
    Retry { reason: String },
}

impl TaskResult {
    /// The state Celery records for it.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn state(&self) -> TaskState {
        match self {
            TaskResult::Success(_) => TaskState::Success,
            TaskResult::Failure { .. } => TaskState::Failure,
            TaskResult::Retry { .. } => TaskState::Retry,
        }
    }
}

/// What the log says of a delivery. Kept as data: the line is only formatted when its level is
/// logged (formatting a result's repr for every task would cost more than settling it).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Event {
    /// Succeeded or failed: the line is read from the result.
    Finished,
    Retry {
        secs: f64,
    },
    Rejected {
        reason: String,
    },
    /// Celery's own code logged it.
    Handled,
    NotStarted,
    /// Given back at a warm shutdown, unstarted: nothing to log (Celery logs nothing for the
    /// requests it gives back).
    StoppedBeforeStart,
    Requeued {
        reason: String,
    },
    RequeueExhausted {
        reason: String,
    },
}

/// What becomes of a delivery: the write, the counter, the log event, the result.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Verdict {
    /// The write the lease session makes. `Retry` carries an empty payload: the caller builds
    /// the next envelope (see [`Verdict::retry_eta`]).
    pub settlement: Settlement,
    pub counter: Option<Counter>,
    pub event: Event,
    /// The task's result, for outcomes the worker (not Celery's own code) decided.
    pub result: Option<TaskResult>,
}

impl Verdict {
    /// When a retry runs again, if this is one.
    pub(crate) fn retry_eta(&self) -> Option<DateTime<Utc>> {
        match &self.settlement {
            Settlement::Retry { eta, .. } => Some(*eta),
            _ => None,
        }
    }

    /// How loud its log line is; `None`: nothing to log.
    pub(crate) fn level(&self) -> Option<Level> {
        match (&self.event, &self.result) {
            (Event::Handled | Event::StoppedBeforeStart, _) => None,
            (Event::Finished, Some(TaskResult::Failure { .. })) | (Event::RequeueExhausted { .. }, _) => {
                Some(Level::Error)
            }
            (Event::Rejected { .. } | Event::NotStarted | Event::Requeued { .. }, _) => Some(Level::Warn),
            _ => Some(Level::Info),
        }
    }

    /// The log line Celery prints for it.
    pub(crate) fn log_line(&self, d: &Delivery<'_>) -> String {
        let (name, id) = (d.name, d.id);
        match (&self.event, &self.result) {
            (Event::Finished, Some(TaskResult::Success(value))) => format!(
                "Task {name}[{id}] succeeded in {}s: {}",
                json::python_float_repr(d.runtime),
                pyrepr::repr(value)
            ),
            (Event::Finished, Some(TaskResult::Failure { exc_type, message, .. })) => format!(
                "Task {name}[{id}] raised unexpected: {exc_type}({})",
                pyrepr::repr(&Value::Str(message.clone()))
            ),
            (Event::Retry { secs }, Some(TaskResult::Retry { reason })) => {
                format!("Task {name}[{id}] retry: Retry in {secs}s: {reason}")
            }
            (Event::Rejected { reason }, _) => format!("Task {name}[{id}] rejected: {reason}; moving it to dead_letter"),
            (Event::NotStarted, _) => format!(
                "Task {name}[{id}] not started: its lease ran out before it could start (is the database reachable?)"
            ),
            (Event::Requeued { reason }, _) => format!("Task {name}[{id}] requeued: {reason}"),
            (Event::RequeueExhausted { reason }, _) => format!(
                "Task {name}[{id}] was requeued ({reason}) after {} redeliveries; limit reached, moving it to dead_letter",
                d.redeliveries
            ),
            _ => String::new(),
        }
    }
}

/// Decides what an outcome becomes. Pure: no I/O, no clock (the delivery carries `now`).
pub(crate) fn verdict(outcome: Outcome, d: &Delivery<'_>) -> Verdict {
    let lease = d.lease;
    match outcome {
        Outcome::Success(value) => Verdict {
            settlement: Settlement::Complete(lease),
            counter: Some(Counter::Succeeded),
            event: Event::Finished,
            result: Some(TaskResult::Success(value)),
        },
        Outcome::Failure { exc_type, message, traceback } => Verdict {
            settlement: Settlement::Complete(lease),
            counter: Some(Counter::Failed),
            event: Event::Finished,
            result: Some(TaskResult::Failure { exc_type, message, traceback }),
        },
        Outcome::Retry { eta, reason } => {
            let delay = (eta - d.now).num_milliseconds().max(0);
            #[allow(clippy::cast_precision_loss)]
            let secs = delay as f64 / 1000.0;
            Verdict {
                settlement: Settlement::Retry { lease, payload: Vec::new(), eta },
                counter: Some(Counter::Retried),
                event: Event::Retry { secs },
                result: Some(TaskResult::Retry { reason }),
            }
        }
        Outcome::Reject { reason } => Verdict {
            settlement: Settlement::DeadLetter(DeadLetterParams {
                lease,
                reason_code: DeadLetterReason::Rejected,
                reason: reason.clone(),
            }),
            counter: Some(Counter::DeadLettered),
            event: Event::Rejected { reason },
            result: None,
        },
        Outcome::Handled { state } => Verdict {
            settlement: Settlement::Complete(lease),
            counter: match state {
                TaskState::Success => Some(Counter::Succeeded),
                TaskState::Failure => Some(Counter::Failed),
                TaskState::Retry => Some(Counter::Retried),
                _ => None,
            },
            event: Event::Handled,
            result: None,
        },
        Outcome::NotStarted => not_started(lease),
        Outcome::StoppedBeforeStart => Verdict {
            settlement: Settlement::Release(lease),
            counter: Some(Counter::Released),
            event: Event::StoppedBeforeStart,
            result: None,
        },
        Outcome::Requeue { reason } if d.redeliveries >= d.max_redeliveries => Verdict {
            settlement: Settlement::DeadLetter(DeadLetterParams {
                lease,
                reason_code: DeadLetterReason::RedeliveriesExhausted,
                reason: format!(
                    "requeued {} times ({reason}); limit is {} redeliveries",
                    d.redeliveries + 1,
                    d.max_redeliveries
                ),
            }),
            counter: Some(Counter::DeadLettered),
            event: Event::RequeueExhausted { reason },
            result: None,
        },
        Outcome::Requeue { reason } => Verdict {
            settlement: Settlement::Requeue(lease),
            counter: Some(Counter::Released),
            event: Event::Requeued { reason },
            result: None,
        },
    }
}

/// A message whose lease ran out before its task could start is given back, not started.
pub(crate) fn not_started(lease: Lease) -> Verdict {
    Verdict {
        settlement: Settlement::Release(lease),
        counter: Some(Counter::Released),
        event: Event::NotStarted,
        result: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(redeliveries: i32) -> Delivery<'static> {
        Delivery {
            lease: Lease { id: 7, attempt: 2 },
            name: "tasks.add",
            id: "abc",
            redeliveries,
            max_redeliveries: 3,
            runtime: 0.25,
            now: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        }
    }

    #[test]
    fn success_and_failure_complete_the_message_and_carry_the_result() {
        let v = verdict(Outcome::Success(Value::Int(3)), &delivery(0));
        assert_eq!(v.settlement, Settlement::Complete(Lease { id: 7, attempt: 2 }));
        assert_eq!(v.counter, Some(Counter::Succeeded));
        assert_eq!(v.level(), Some(Level::Info));
        assert_eq!(v.log_line(&delivery(0)), "Task tasks.add[abc] succeeded in 0.25s: 3");
        assert_eq!(v.result.as_ref().map(TaskResult::state), Some(TaskState::Success));

        let v = verdict(Outcome::failure("ValueError", "bad"), &delivery(0));
        assert_eq!(v.settlement, Settlement::Complete(Lease { id: 7, attempt: 2 }));
        assert_eq!(v.counter, Some(Counter::Failed));
        assert_eq!(v.level(), Some(Level::Error));
        assert_eq!(v.log_line(&delivery(0)), "Task tasks.add[abc] raised unexpected: ValueError('bad')");
        assert_eq!(
            v.result,
            Some(TaskResult::Failure { exc_type: "ValueError".into(), message: "bad".into(), traceback: None })
        );
    }

    #[test]
    fn retry_reschedules_at_its_eta() {
        let d = delivery(0);
        let eta = d.now + chrono::Duration::milliseconds(1500);
        let v = verdict(Outcome::Retry { eta, reason: "later".into() }, &d);
        assert_eq!(v.retry_eta(), Some(eta));
        assert_eq!(v.counter, Some(Counter::Retried));
        assert_eq!(v.log_line(&d), "Task tasks.add[abc] retry: Retry in 1.5s: later");
        // An eta in the past retries at once, never with a negative delay.
        let v = verdict(Outcome::Retry { eta: d.now - chrono::Duration::seconds(5), reason: "x".into() }, &d);
        assert_eq!(v.log_line(&d), "Task tasks.add[abc] retry: Retry in 0s: x");
    }

    #[test]
    fn reject_dead_letters_and_requeue_counts_redeliveries_up_to_the_limit() {
        let v = verdict(Outcome::Reject { reason: "no".into() }, &delivery(0));
        let Settlement::DeadLetter(dl) = &v.settlement else { panic!("{v:?}") };
        assert_eq!((dl.reason_code, dl.reason.as_str()), (DeadLetterReason::Rejected, "no"));

        let v = verdict(Outcome::Requeue { reason: "lost".into() }, &delivery(2));
        assert_eq!(v.settlement, Settlement::Requeue(Lease { id: 7, attempt: 2 }));
        assert_eq!(v.counter, Some(Counter::Released));

        let v = verdict(Outcome::Requeue { reason: "lost".into() }, &delivery(3));
        let Settlement::DeadLetter(dl) = &v.settlement else { panic!("{v:?}") };
        assert_eq!(dl.reason_code, DeadLetterReason::RedeliveriesExhausted);
        assert_eq!(dl.reason, "requeued 4 times (lost); limit is 3 redeliveries");
        assert_eq!(v.level(), Some(Level::Error));
        assert_eq!(
            v.log_line(&delivery(3)),
            "Task tasks.add[abc] was requeued (lost) after 3 redeliveries; limit reached, moving it to dead_letter"
        );
    }

    #[test]
    fn handled_outcomes_only_count_and_not_started_ones_are_given_back() {
        for (state, counter) in [
            (TaskState::Success, Some(Counter::Succeeded)),
            (TaskState::Failure, Some(Counter::Failed)),
            (TaskState::Retry, Some(Counter::Retried)),
            (TaskState::Ignored, None),
            (TaskState::Revoked, None),
        ] {
            let v = verdict(Outcome::Handled { state }, &delivery(0));
            assert_eq!(v.settlement, Settlement::Complete(Lease { id: 7, attempt: 2 }));
            assert_eq!(v.counter, counter, "{state:?}");
            assert!(v.level().is_none() && v.result.is_none());
        }
        let v = verdict(Outcome::NotStarted, &delivery(0));
        assert_eq!(v.settlement, Settlement::Release(Lease { id: 7, attempt: 2 }));
        assert_eq!(v.counter, Some(Counter::Released));
        assert_eq!(v.level(), Some(Level::Warn));
        assert!(v.log_line(&delivery(0)).contains("not started: its lease ran out"));
    }
}
