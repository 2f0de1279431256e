//! [`DeadLetterReason`]: why a message was moved to `celeriac.dead_letter`, by the codes stored
//! in its `reason_code` column, shown by `celeriac dead-letter` and filtered on with `--reason`.

use std::{fmt, str::FromStr};

/// Why a message was dead-lettered. The stored code is [`DeadLetterReason::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterReason {
    /// `undecodable`: the envelope, headers or body could not be read.
    Undecodable,
    /// `content_disallowed`: a content type the worker does not accept (`accept_content`).
    ContentDisallowed,
    /// `too_large`: the body would decode beyond the size or nesting limits.
    TooLarge,
    /// `not_registered`: no handler or Celery task of that name.
    NotRegistered,
    /// `rejected`: the task rejected it without requeue (`Reject(requeue=False)`, kombu
    /// `basic_reject`).
    Rejected,
    /// `redeliveries_exhausted`: it came back (lost lease, requeue) more often than allowed.
    RedeliveriesExhausted,
}

impl DeadLetterReason {
    /// Every reason, in declaration order.
    pub const ALL: [DeadLetterReason; 6] = [
        DeadLetterReason::Undecodable,
        DeadLetterReason::ContentDisallowed,
        DeadLetterReason::TooLarge,
        DeadLetterReason::NotRegistered,
        DeadLetterReason::Rejected,
        DeadLetterReason::RedeliveriesExhausted,
    ];

    /// The stored code, e.g. `"not_registered"`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::Undecodable => "undecodable",
            DeadLetterReason::ContentDisallowed => "content_disallowed",
            DeadLetterReason::TooLarge => "too_large",
            DeadLetterReason::NotRegistered => "not_registered",
            DeadLetterReason::Rejected => "rejected",
            DeadLetterReason::RedeliveriesExhausted => "redeliveries_exhausted",
        }
    }

    /// The codes, comma-separated (for help texts and error messages).
    #[must_use]
    pub fn codes() -> String {
        DeadLetterReason::ALL.map(DeadLetterReason::as_str).join(", ")
    }
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A code that is not a [`DeadLetterReason`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown dead-letter reason {0:?}; expected one of: {codes}", codes = DeadLetterReason::codes())]
pub struct UnknownReason(pub String);

impl FromStr for DeadLetterReason {
    type Err = UnknownReason;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DeadLetterReason::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| UnknownReason(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_ones_are_refused() {
        for reason in DeadLetterReason::ALL {
            assert_eq!(reason.as_str().parse::<DeadLetterReason>(), Ok(reason));
            assert_eq!(reason.to_string(), reason.as_str());
        }
        let err = "lost".parse::<DeadLetterReason>().unwrap_err();
        assert!(err.to_string().contains("not_registered"), "{err}");
    }
}
