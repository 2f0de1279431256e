//! When a schedule may move from Celery Beat to celeriac without a slot fired twice, and which
//! slot celeriac fires first (see `docs/beat.md`, "The ramp").
//!
//! Beat holds its schedule in memory and notices a change only when it reloads, so the
//! database cannot always tell whether Beat already sent the current slot. Two modes:
//!
//! - **Strict**, when Beat runs one of celeriac's scheduler classes (`celeriac.beat`): every send
//!   is claimed in the database first, under the row's lock, and recorded
//!   (`last_beat_send_at`). A flip then knows: if Beat sent the latest slot, celeriac starts at
//!   the next one; if not, celeriac fires it (Beat's claim, after the flip, is refused).
//!   Intervals continue Beat's own cadence (its last send plus the interval). Nothing is
//!   fired twice and nothing is lost.
//! - **Dead zone**, with any other Beat (django-celery-beat's scheduler, which reloads within
//!   seconds of the flip disabling its row): the flip waits until the latest slot is at least
//!   `margin` old and the next at least `margin` away, and celeriac starts at the next slot.
//!   Schedules more frequent than twice the margin have no dead zone: they move at once, and
//!   celeriac starts at the first slot after `now + margin`, which may skip one slot, never
//!   fire one twice. Intervals (whose phase in Beat is unknown) start one interval (at least
//!   the margin) after the flip.

use celeriac_store::Schedule;
use chrono::{DateTime, TimeDelta, Utc};

use super::plan::{around, Timing};

/// What a flip towards celeriac may do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handover {
    /// Move now; celeriac's next run (`None`: a baseline, the next slot after its first tick).
    Now(Option<DateTime<Utc>>),
    /// Not now: the next moment at which it may.
    Wait(DateTime<Utc>),
    /// It stays with Beat, for this reason.
    Stay(String),
}

/// Whether and how `schedule` may move to celeriac at `now` (the database's clock).
#[must_use]
pub fn to_celeriac(schedule: &Schedule, now: DateTime<Utc>, margin: TimeDelta) -> Handover {
    let timing = match Timing::of(schedule) {
        Ok(t) => t,
        Err(reason) => return Handover::Stay(reason),
    };
    let (prev, next) = match around(&timing, now) {
        Ok(pair) => pair,
        Err(reason) => return Handover::Stay(reason),
    };
    if let Timing::Clocked(at) = timing {
        return match () {
            () if at > now + margin => Handover::Now(Some(at)),
            () if at > now - margin => Handover::Wait(at + margin),
            () => Handover::Stay("its clocked time has passed (Beat fired it, or will)".into()),
        };
    }
    let strict = schedule.last_beat_send_at;
    if let Timing::Interval { every, .. } = timing {
        return Handover::Now(Some(match strict {
            Some(sent) => sent + every,
            None => now + every.max(margin),
        }));
    }
    // A crontab.
    let Some(next) = next else {
        return Handover::Stay("no next slot".into());
    };
    if let Some(sent) = strict {
        return match prev {
            Some(prev) if sent < prev => Handover::Now(Some(prev)),
            _ => Handover::Now(Some(next)),
        };
    }
    let settled = prev.is_none_or(|p| now - p >= margin);
    if settled && next - now >= margin {
        return Handover::Now(Some(next));
    }
    if prev.is_some_and(|p| next - p < margin * 2) {
        return match around(&timing, now + margin) {
            Ok((_, Some(first))) => Handover::Now(Some(first)),
            _ => Handover::Stay("no next slot".into()),
        };
    }
    Handover::Wait(match prev {
        Some(p) if now - p < margin => p + margin,
        _ => next + margin,
    })
}
