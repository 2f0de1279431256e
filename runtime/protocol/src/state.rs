//! [`TaskState`]: what became of a task, by the names Celery writes (`celery.states`) in result
//! backends and events.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// A task's state, spelled on the wire exactly as Celery spells it (`"SUCCESS"`, `"RETRY"`, …).
///
/// Besides Celery's own states, two name what celeriac's Python pool reports for a delivery that
/// Celery's task machinery never ran: [`TaskState::Undecodable`] and
/// [`TaskState::InternalError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskState {
    /// `PENDING`: unknown, or waiting to run.
    Pending,
    /// `RECEIVED`: a worker received the message.
    Received,
    /// `STARTED`: running (only recorded with `task_track_started`).
    Started,
    /// `SUCCESS`: returned a value.
    Success,
    /// `FAILURE`: raised an exception, for good.
    Failure,
    /// `REVOKED`: revoked or expired before it ran.
    Revoked,
    /// `REJECTED`: the task raised `Reject`.
    Rejected,
    /// `RETRY`: the task will run again (`Task.retry`).
    Retry,
    /// `IGNORED`: the task raised `Ignore`.
    Ignored,
    /// `UNDECODABLE` (celeriac): the message could not be read into a Celery request.
    Undecodable,
    /// `INTERNAL_ERROR` (celeriac): celeriac's or Celery's own code failed around the task.
    InternalError,
}

impl TaskState {
    /// Every state, in declaration order.
    pub const ALL: [TaskState; 11] = [
        TaskState::Pending,
        TaskState::Received,
        TaskState::Started,
        TaskState::Success,
        TaskState::Failure,
        TaskState::Revoked,
        TaskState::Rejected,
        TaskState::Retry,
        TaskState::Ignored,
        TaskState::Undecodable,
        TaskState::InternalError,
    ];

    /// The state's name as Celery writes it, e.g. `"SUCCESS"`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "PENDING",
            TaskState::Received => "RECEIVED",
            TaskState::Started => "STARTED",
            TaskState::Success => "SUCCESS",
            TaskState::Failure => "FAILURE",
            TaskState::Revoked => "REVOKED",
            TaskState::Rejected => "REJECTED",
            TaskState::Retry => "RETRY",
            TaskState::Ignored => "IGNORED",
            TaskState::Undecodable => "UNDECODABLE",
            TaskState::InternalError => "INTERNAL_ERROR",
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a [`TaskState`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown task state {0:?}")]
pub struct UnknownTaskState(pub String);

impl FromStr for TaskState {
    type Err = UnknownTaskState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskState::ALL.into_iter().find(|state| state.as_str() == s).ok_or_else(|| UnknownTaskState(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_celerys_on_the_wire_and_in_text() {
        for state in TaskState::ALL {
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
            assert_eq!(serde_json::from_str::<TaskState>(&json).unwrap(), state);
            assert_eq!(state.to_string().parse::<TaskState>(), Ok(state));
        }
        assert_eq!(TaskState::InternalError.as_str(), "INTERNAL_ERROR");
    }

    #[test]
    fn unknown_names_are_errors() {
        assert_eq!("success".parse::<TaskState>(), Err(UnknownTaskState("success".into())));
        let err = serde_json::from_str::<TaskState>("\"SUCCEEDED\"").unwrap_err();
        assert!(err.to_string().contains("unknown variant `SUCCEEDED`"), "{err}");
    }
}
