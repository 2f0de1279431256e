//! When a schedule may move from Celery Beat to celeriac without a slot fired twice, and which
//! slot celeriac fires first (see `docs/beat.md`, "The ramp").
//!
//! Beat holds its schedule in memory and notices a change only when it reloads, so the
//! database cannot always tell whether Beat already sent the current slot. Two modes:
//!
//! - **Strict**, when Beat runs one of celeriac's scheduler classes (`celeriac.beat`): every send
//!   is claimed in the database first, under the row's lock, and recorded
//!   (`last_beat_send_at`, the database's clock). A flip then knows which slot Beat sent last
//!   (the slot nearest to that send, so Beat's clock may be off by up to half a period):
//!   celeriac starts at the slot after it, firing it at once if it is already due (Beat's claim,
//!   after the flip, is refused). Intervals continue Beat's own cadence (its last send plus the
//!   interval). Nothing is fired twice and nothing is lost. A record older than one period
//!   (plus the margin) is no evidence (Beat stopped, or stopped using the class): dead zone.
//! - **Dead zone**, with any other Beat (django-celery-beat's scheduler, which reloads within
//!   seconds of the flip disabling its row): the flip waits until the latest slot is at least
//!   `margin` old and the next at least `margin` away, and celeriac starts at the next slot.
//!   Schedules more frequent than twice the margin have no dead zone: they move at once, and
//!   celeriac starts at the first slot after `now + margin`, which may skip one slot, never
//!   fire one twice. Intervals (whose phase in Beat is unknown) start one interval (at least
//!   the margin) after the flip.
//!
//! Back to Beat ([`to_beat`]) a schedule moves at once: django-celery-beat's row is enabled with
//! the last run celeriac made, from which Beat counts its next slot; celeriac's Beat scheduler
//! classes are fenced by `beat_from` (the slot after the one celeriac fired last, less
//! tolerance for Beat's clock), so a Beat that was due for the slot celeriac just fired does not
//! send it again.

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
    // Back with a strict Beat only briefly, and Beat sent nothing since (its sends are fenced
    // at `beat_from`, so one since would be recorded at or after it): no slot after celeriac's own
    // last fire has been sent, and celeriac carries on from there.
    if let (Some(from), Some(last), Some(sent)) =
        (schedule.beat_from, schedule.last_slot_at, schedule.last_beat_send_at)
    {
        let following = match timing {
            Timing::Interval { every, .. } => Some((last + every, every)),
            _ => match around(&timing, last) {
                Ok((_, Some(next))) => Some((next, next - last)),
                _ => None,
            },
        };
        if let Some((next, period)) = following {
            if sent < from && now - from <= period + margin {
                return Handover::Now(Some(next));
            }
        }
    }
    if let Timing::Interval { every, .. } = timing {
        return Handover::Now(Some(match schedule.last_beat_send_at {
            Some(sent) if now - sent <= every + margin => sent + every,
            _ => now + every.max(margin),
        }));
    }
    // A crontab.
    let Some(next) = next else {
        return Handover::Stay("no next slot".into());
    };
    if let Some(sent) = schedule.last_beat_send_at {
        if let Ok((Some(before), Some(after))) = around(&timing, sent) {
            if now - sent <= (after - before) + margin {
                // The slot Beat's last send was for: the nearest one to it.
                let covered = if sent - before <= after - sent { before } else { after };
                return match around(&timing, covered) {
                    Ok((_, Some(first))) => Handover::Now(Some(first)),
                    _ => Handover::Stay("no next slot".into()),
                };
            }
        }
    }
    let settled = prev.is_none_or(|p| now - p >= margin);
    if settled && next - now >= margin {
        return Handover::Now(Some(next));
    }
    if prev.is_some_and(|p| next - p <= margin * 2) {
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

/// Moves `schedule` back to Beat at `now`: always at once. Returns the fence for celeriac's
/// Beat scheduler classes (`beat_from`): the slot after the one celeriac fired last, less the
/// smaller of `margin` and half a period (Beat's clock may be a little off); `None` when
/// celeriac never fired it.
#[must_use]
pub fn to_beat(schedule: &Schedule, _now: DateTime<Utc>, margin: TimeDelta) -> Handover {
    let Some(last) = schedule.last_slot_at else {
        return Handover::Now(None);
    };
    let Ok(timing) = Timing::of(schedule) else {
        return Handover::Now(None);
    };
    let next = match timing {
        Timing::Interval { every, .. } => Some(last + every),
        Timing::Crontab(..) => around(&timing, last).ok().and_then(|(_, next)| next),
        Timing::Clocked(_) => None,
    };
    Handover::Now(next.map(|n| n - margin.min((n - last) / 2)))
}

#[cfg(test)]
mod tests {
    use celeriac_store::{ScheduleDefinition, When};
    use chrono::TimeZone;

    use super::*;

    fn schedule(when: When, last_beat_send_at: Option<DateTime<Utc>>, last_slot_at: Option<DateTime<Utc>>) -> Schedule {
        Schedule {
            id: 1,
            definition: ScheduleDefinition::new("s", "t", when),
            enabled: true,
            disabled_reason: None,
            paused: false,
            paused_reason: None,
            owner: "beat".into(),
            owner_pin: None,
            ramp_bucket: 0,
            source: "app".into(),
            next_run_at: None,
            last_slot_at,
            last_run_at: None,
            last_task_id: None,
            total_run_count: 0,
            last_beat_send_at,
            spec_version: 0,
            previous_pending: false,
            beat_from: None,
        }
    }

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 6, 1, h, m, s).unwrap()
    }

    fn hourly() -> When {
        When::Crontab(["0".into(), "*".into(), "*".into(), "*".into(), "*".into()])
    }

    fn minutely() -> When {
        When::Crontab(["*".into(), "*".into(), "*".into(), "*".into(), "*".into()])
    }

    const MARGIN: TimeDelta = TimeDelta::seconds(30);

    #[test]
    fn dead_zone_moves_between_slots_and_waits_near_them() {
        let s = schedule(hourly(), None, None);
        assert_eq!(to_celeriac(&s, at(10, 20, 0), MARGIN), Handover::Now(Some(at(11, 0, 0))));
        // Just after a slot (Beat may not have sent it yet) or just before one: wait.
        assert_eq!(to_celeriac(&s, at(10, 0, 10), MARGIN), Handover::Wait(at(10, 0, 30)));
        assert_eq!(to_celeriac(&s, at(10, 59, 50), MARGIN), Handover::Wait(at(11, 0, 30)));
        // More frequent than twice the margin: at once, from the first slot after now + margin.
        let s = schedule(minutely(), None, None);
        assert_eq!(to_celeriac(&s, at(10, 20, 45), MARGIN), Handover::Now(Some(at(10, 22, 0))));
        // An interval starts one interval (at least the margin) after the move.
        let s = schedule(When::Interval { seconds: 10.0, relative: false }, None, None);
        assert_eq!(to_celeriac(&s, at(10, 0, 0), MARGIN), Handover::Now(Some(at(10, 0, 30))));
    }

    #[test]
    fn strict_hand_over_starts_after_the_slot_beat_sent_whatever_its_clock() {
        // Beat sent 10:00 (a little late, or early: its clock is off): celeriac starts at 11:00.
        for sent in [at(10, 0, 2), at(9, 59, 57)] {
            let s = schedule(hourly(), Some(sent), None);
            assert_eq!(to_celeriac(&s, at(10, 0, 5), MARGIN), Handover::Now(Some(at(11, 0, 0))), "{sent}");
        }
        // Beat last sent 09:00 and 10:00 is due: celeriac fires 10:00 at once.
        let s = schedule(hourly(), Some(at(9, 0, 1)), None);
        assert_eq!(to_celeriac(&s, at(10, 0, 1), MARGIN), Handover::Now(Some(at(10, 0, 0))));
        // A record older than a period and the margin is no evidence: dead zone.
        let s = schedule(hourly(), Some(at(7, 0, 1)), None);
        assert_eq!(to_celeriac(&s, at(10, 20, 0), MARGIN), Handover::Now(Some(at(11, 0, 0))));
        assert_eq!(to_celeriac(&s, at(10, 0, 10), MARGIN), Handover::Wait(at(10, 0, 30)));
        // An interval continues Beat's cadence.
        let s = schedule(When::Interval { seconds: 10.0, relative: false }, Some(at(10, 0, 3)), None);
        assert_eq!(to_celeriac(&s, at(10, 0, 8), MARGIN), Handover::Now(Some(at(10, 0, 13))));
    }

    #[test]
    fn back_with_beat_briefly_and_not_sent_since_celeriac_carries_on_after_its_last_fire() {
        // Beat sent 10:00:50 before celeriac took the 2 s interval; celeriac fired up to 10:01:30,
        // then it went back to Beat (fenced at 10:01:31), and comes back to celeriac at 10:01:31.5,
        // before Beat's first send: celeriac's next slot is 10:01:32, none skipped.
        let mut s =
            schedule(When::Interval { seconds: 2.0, relative: false }, Some(at(10, 0, 50)), Some(at(10, 1, 30)));
        s.beat_from = Some(at(10, 1, 31));
        let now = at(10, 1, 31) + TimeDelta::milliseconds(500);
        assert_eq!(to_celeriac(&s, now, TimeDelta::seconds(5)), Handover::Now(Some(at(10, 1, 32))));
        // A crontab the same way: celeriac fired 10:00, so 10:01.
        let mut s = schedule(minutely(), Some(at(9, 50, 0)), Some(at(10, 0, 0)));
        s.beat_from = Some(at(10, 0, 30));
        assert_eq!(to_celeriac(&s, at(10, 0, 40), MARGIN), Handover::Now(Some(at(10, 1, 0))));
        // Beat has sent since it came back (at or after the fence): its send is the evidence.
        let mut s =
            schedule(When::Interval { seconds: 2.0, relative: false }, Some(at(10, 1, 32)), Some(at(10, 1, 30)));
        s.beat_from = Some(at(10, 1, 31));
        assert_eq!(to_celeriac(&s, at(10, 1, 33), TimeDelta::seconds(5)), Handover::Now(Some(at(10, 1, 34))));
        // Long since back with Beat and no send recorded: no evidence (Beat stopped); dead zone.
        let mut s =
            schedule(When::Interval { seconds: 2.0, relative: false }, Some(at(10, 0, 50)), Some(at(10, 1, 30)));
        s.beat_from = Some(at(10, 1, 31));
        assert_eq!(to_celeriac(&s, at(10, 5, 0), TimeDelta::seconds(5)), Handover::Now(Some(at(10, 5, 5))));
    }

    #[test]
    fn back_to_beat_fences_the_slot_celeriac_fired() {
        let s = schedule(hourly(), None, Some(at(10, 0, 0)));
        assert_eq!(to_beat(&s, at(10, 0, 1), MARGIN), Handover::Now(Some(at(10, 59, 30))));
        let s = schedule(When::Interval { seconds: 2.0, relative: false }, None, Some(at(10, 0, 0)));
        assert_eq!(to_beat(&s, at(10, 0, 1), MARGIN), Handover::Now(Some(at(10, 0, 1))));
        assert_eq!(to_beat(&schedule(hourly(), None, None), at(10, 0, 1), MARGIN), Handover::Now(None));
    }

    #[test]
    fn clocked_one_offs_move_only_well_before_their_time() {
        let s = schedule(When::Clocked(at(12, 0, 0)), None, None);
        assert_eq!(to_celeriac(&s, at(10, 0, 0), MARGIN), Handover::Now(Some(at(12, 0, 0))));
        assert_eq!(to_celeriac(&s, at(11, 59, 50), MARGIN), Handover::Wait(at(12, 0, 30)));
        assert!(matches!(to_celeriac(&s, at(13, 0, 0), MARGIN), Handover::Stay(_)));
    }
}
