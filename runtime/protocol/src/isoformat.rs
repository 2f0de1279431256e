//! Python's `isoformat()` text of dates and times: the `__value__` of kombu's `datetime`,
//! `date` and `time` markers, and the `eta`/`expires` headers Celery writes.
//!
//! Only chrono here, no [`crate::Value`]: the value model, the JSON writer and serde all format
//! through these functions, so this module sits below them.

use std::fmt::Write as _;

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, Timelike};

/// Appends `.ffffff` (microseconds) unless they are zero, as Python's `isoformat` does.
fn push_fraction(out: &mut String, nanos: u32) {
    let micros = nanos / 1000 % 1_000_000;
    if micros != 0 {
        let _ = write!(out, ".{micros:06}");
    }
}

/// `datetime.isoformat()` of an aware datetime, as Python prints it.
#[must_use]
pub fn python_isoformat(dt: &DateTime<FixedOffset>) -> String {
    let mut out = dt.format("%Y-%m-%dT%H:%M:%S").to_string();
    push_fraction(&mut out, dt.nanosecond());
    out.push_str(&dt.format("%:z").to_string());
    out
}

/// `datetime.isoformat()` of a naive datetime.
#[must_use]
pub(crate) fn naive_datetime_isoformat(dt: &NaiveDateTime) -> String {
    let mut out = dt.format("%Y-%m-%dT%H:%M:%S").to_string();
    push_fraction(&mut out, dt.nanosecond());
    out
}

/// `date.isoformat()`.
#[must_use]
pub(crate) fn date_isoformat(d: &NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

/// `time.isoformat()` of a naive time.
#[must_use]
pub(crate) fn time_isoformat(t: &NaiveTime) -> String {
    let mut out = t.format("%H:%M:%S").to_string();
    push_fraction(&mut out, t.nanosecond());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn microseconds_only_when_not_zero() {
        let dt = DateTime::parse_from_rfc3339("2024-01-02T03:04:05+02:00").unwrap();
        assert_eq!(python_isoformat(&dt), "2024-01-02T03:04:05+02:00");
        let dt = DateTime::parse_from_rfc3339("2024-01-02T03:04:05.000120789-05:30").unwrap();
        assert_eq!(python_isoformat(&dt), "2024-01-02T03:04:05.000120-05:30");
        assert_eq!(naive_datetime_isoformat(&dt.naive_local()), "2024-01-02T03:04:05.000120");
        assert_eq!(date_isoformat(&dt.date_naive()), "2024-01-02");
        assert_eq!(time_isoformat(&NaiveTime::from_hms_micro_opt(23, 59, 1, 5).unwrap()), "23:59:01.000005");
        assert_eq!(time_isoformat(&NaiveTime::from_hms_opt(0, 0, 0).unwrap()), "00:00:00");
    }
}
