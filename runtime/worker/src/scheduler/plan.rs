//! What a due schedule row does at one tick: pure, from the row and the database's clock.
//!
//! - No next run (`next_run_at` NULL: new, edited, re-enabled, resumed, handed over): record a
//!   baseline, the first slot strictly after now (or at/after `start_at`), and fire nothing.
//! - Due: the slots in `[next_run_at, now]` are the missed ones, and the catch-up policy picks:
//!   `latest` (Beat's behaviour) the latest of them, unless it is older than the catch-up window;
//!   `skip` the latest only if it is at most the window (default [`SKIP_GRACE`]) late;
//!   `all` every one inside the window, the most recent `catchup_max`, oldest first.
//!   Overlap `skip` fires nothing while the previous fire's message is still queued or running.
//!   The next run is the first slot after now, counted from the slots (intervals do not drift).
//! - A spec that cannot be evaluated (bad crontab, unknown zone, never matching), an `end_at` that
//!   has passed, or a one-off that fired disables the row with a reason; nothing fires.

use celeriac_schedule::{parse_zone, Crontab};
use celeriac_store::{NewMessage, PlannedFire, Schedule, TickPlan, When};
use chrono::{DateTime, Datelike, TimeDelta, TimeZone, Timelike, Utc};

/// How late a slot may be and still fire under the `skip` policy without a window.
pub const SKIP_GRACE: TimeDelta = TimeDelta::seconds(60);

/// The most slots `all` walks through looking for the ones to fire.
const MAX_WALK: usize = 1_000_000;

/// A row's timing, ready to evaluate.
pub(crate) enum Timing {
    Crontab(Box<Crontab>, chrono_tz::Tz),
    Interval { every: TimeDelta, relative: bool, tz: chrono_tz::Tz },
    Clocked(DateTime<Utc>),
}

impl Timing {
    pub(crate) fn of(schedule: &Schedule) -> Result<Timing, String> {
        let d = &schedule.definition;
        let tz = || parse_zone(&d.tz).map_err(|e| e.to_string());
        match &d.when {
            When::Crontab([minute, hour, dow, dom, month]) => {
                let cron = Crontab::new(minute, hour, dow, dom, month).map_err(|e| format!("invalid crontab: {e}"))?;
                Ok(Timing::Crontab(Box::new(cron), tz()?))
            }
            When::Interval { seconds, relative } => {
                let micros = seconds * 1e6;
                if !(1.0..1e17).contains(&micros) {
                    return Err(format!("invalid interval: {seconds} seconds"));
                }
                #[allow(clippy::cast_possible_truncation)]
                let every = TimeDelta::microseconds(micros.round() as i64);
                Ok(Timing::Interval { every, relative: *relative, tz: tz()? })
            }
            When::Clocked(at) => Ok(Timing::Clocked(*at)),
            When::Solar(_) => Err("solar schedules are not supported by celeriac; keep them on Celery Beat".into()),
        }
    }

    /// The first slot strictly after `t`, for a row whose slots are anchored at `anchor` (the
    /// interval's previous slot), or `None` for a clocked one-off.
    fn next_after(&self, t: DateTime<Utc>, anchor: Option<DateTime<Utc>>) -> Result<Option<DateTime<Utc>>, String> {
        match self {
            Timing::Crontab(cron, tz) => cron.next_after(*tz, t).map(Some).map_err(|e| e.to_string()),
            Timing::Interval { every, relative, tz } => {
                let anchor = match anchor {
                    Some(a) => a,
                    // Celery's relative=True: counted from t rounded down to the interval's
                    // resolution (which a DST change can put an hour off: step on until after t).
                    None if *relative => resolution_floor(t, *every, *tz),
                    None => {
                        return t.checked_add_signed(*every).map(Some).ok_or_else(|| "interval out of range".to_owned())
                    }
                };
                if anchor > t {
                    return Ok(Some(anchor));
                }
                Ok(Some(step(anchor, *every, t).ok_or_else(|| "interval out of range".to_owned())?))
            }
            Timing::Clocked(_) => Ok(None),
        }
    }
}

/// The latest slot at or before some instant, and the first after it.
pub(crate) type Around = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// The latest slot at or before `now` (within about a year and a half) and the first after it.
/// Intervals have neither (their phase depends on their anchor); a clocked one-off has its time
/// on the side it falls.
pub(crate) fn around(timing: &Timing, now: DateTime<Utc>) -> Result<Around, String> {
    match timing {
        Timing::Crontab(cron, tz) => {
            let prev = cron.latest_in(*tz, now - TimeDelta::days(550), now).map_err(|e| e.to_string())?;
            let next = cron.next_after(*tz, now).map_err(|e| e.to_string())?;
            Ok((prev, Some(next)))
        }
        Timing::Interval { .. } => Ok((None, None)),
        Timing::Clocked(at) if *at <= now => Ok((Some(*at), None)),
        Timing::Clocked(at) => Ok((None, Some(*at))),
    }
}

/// The first of `anchor + k·every` (k ≥ 1) strictly after `t` (`anchor` at or before `t`).
fn step(anchor: DateTime<Utc>, every: TimeDelta, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let every_us = every.num_microseconds().filter(|us| *us > 0)?;
    let steps = (t - anchor).num_microseconds()?.div_euclid(every_us).checked_add(1)?;
    anchor.checked_add_signed(TimeDelta::microseconds(steps.checked_mul(every_us)?))
}

/// Celery's `delta_resolution`: `t` rounded down to the day, hour or minute when the interval
/// is at least that long (in the row's zone), else `t`.
fn resolution_floor(t: DateTime<Utc>, every: TimeDelta, tz: chrono_tz::Tz) -> DateTime<Utc> {
    let local = t.with_timezone(&tz);
    let floored = if every >= TimeDelta::days(1) {
        tz.with_ymd_and_hms(local.year(), local.month(), local.day(), 0, 0, 0).earliest()
    } else if every >= TimeDelta::hours(1) {
        tz.with_ymd_and_hms(local.year(), local.month(), local.day(), local.hour(), 0, 0).earliest()
    } else if every >= TimeDelta::minutes(1) {
        tz.with_ymd_and_hms(local.year(), local.month(), local.day(), local.hour(), local.minute(), 0).earliest()
    } else {
        return t;
    };
    floored.map_or(t, |f| f.with_timezone(&Utc))
}

/// Decides what `schedule` does at `now`; `build` makes the message of one slot (an error
/// disables the row). See the module documentation.
pub fn plan(
    schedule: &Schedule,
    now: DateTime<Utc>,
    mut build: impl FnMut(&Schedule, DateTime<Utc>) -> Result<NewMessage, String>,
) -> TickPlan {
    let disable = |reason: String| TickPlan { fires: Vec::new(), next_run_at: None, disable: Some(reason) };
    let d = &schedule.definition;
    if let Some(end) = d.end_at.filter(|end| *end <= now) {
        return disable(format!("ended at {}", end.to_rfc3339()));
    }
    let timing = match Timing::of(schedule) {
        Ok(t) => t,
        Err(reason) => return disable(reason),
    };
    let Some(due) = schedule.next_run_at else {
        return baseline(schedule, &timing, now).unwrap_or_else(disable);
    };
    // The missed slots, oldest first: all of them for `all` (bounded), else just the latest.
    // At most about a century (the schema's bound): no arithmetic below can overflow.
    #[allow(clippy::cast_possible_truncation)]
    let window = d.catchup_window_seconds.map(|s| TimeDelta::milliseconds((s.clamp(0.0, 3.2e9) * 1000.0) as i64));
    let slots = match missed(&timing, due, now, d.catchup.as_str(), d.catchup_max, window) {
        Ok(s) => s,
        Err(reason) => return disable(reason),
    };
    let selected: Vec<DateTime<Utc>> = match d.catchup.as_str() {
        "skip" => slots.into_iter().filter(|s| now - *s <= window.unwrap_or(SKIP_GRACE)).collect(),
        "all" => slots,
        _ => slots.into_iter().filter(|s| window.is_none_or(|w| now - *s <= w)).collect(),
    };
    let selected = if d.overlap == "skip" && schedule.previous_pending { Vec::new() } else { selected };
    let mut fires = Vec::with_capacity(selected.len());
    for slot in selected {
        match build(schedule, slot) {
            Ok(message) => fires.push(PlannedFire { slot, message }),
            Err(reason) => return disable(format!("cannot build the message: {reason}")),
        }
    }
    let last_slot = latest_slot(&timing, due, now);
    let next = match timing.next_after(now, Some(last_slot)) {
        Ok(next) => next,
        Err(reason) => return TickPlan { fires, next_run_at: None, disable: Some(reason) },
    };
    let reason = match next {
        None => Some(
            if fires.is_empty() {
                "clocked: its time passed without a fire (catch-up policy)"
            } else {
                "clocked: fired"
            }
            .to_owned(),
        ),
        Some(_) if d.one_off && !fires.is_empty() => Some("one-off: fired".to_owned()),
        Some(n) if d.end_at.is_some_and(|end| n >= end) => Some("ended: no slot before its end".to_owned()),
        Some(_) => None,
    };
    TickPlan { fires, next_run_at: if reason.is_some() { None } else { next }, disable: reason }
}

/// The first slot of a row that has none yet.
fn baseline(schedule: &Schedule, timing: &Timing, now: DateTime<Utc>) -> Result<TickPlan, String> {
    let d = &schedule.definition;
    let next = match (timing, d.start_at) {
        // A clocked one-off that fired (and was enabled again) does not fire again.
        (Timing::Clocked(_), _) if schedule.total_run_count > 0 => return Err("clocked: fired".into()),
        (Timing::Clocked(at), _) => *at,
        // Interval slots counted from the start time: start_at, start_at + every, …
        (Timing::Interval { .. }, Some(start)) => timing.next_after(now, Some(start))?.unwrap_or(start),
        (_, Some(start)) if start > now => {
            timing.next_after(start - TimeDelta::microseconds(1), None)?.unwrap_or(start)
        }
        _ => timing.next_after(now, None)?.unwrap_or(now),
    };
    if d.end_at.is_some_and(|end| next >= end) {
        return Err("ended: no slot before its end".into());
    }
    Ok(TickPlan { fires: Vec::new(), next_run_at: Some(next), disable: None })
}

/// The latest slot in `[due, now]` (`due` is a slot and not after `now`).
fn latest_slot(timing: &Timing, due: DateTime<Utc>, now: DateTime<Utc>) -> DateTime<Utc> {
    match timing {
        Timing::Crontab(cron, tz) => {
            cron.latest_in(*tz, due - TimeDelta::microseconds(1), now).ok().flatten().unwrap_or(due)
        }
        Timing::Interval { every, .. } => {
            // The last of due + k·every at or before now.
            let every_us = every.num_microseconds().unwrap_or(1).max(1);
            let steps = (now - due).num_microseconds().unwrap_or(0).max(0) / every_us;
            steps
                .checked_mul(every_us)
                .and_then(|us| due.checked_add_signed(TimeDelta::microseconds(us)))
                .unwrap_or(due)
        }
        Timing::Clocked(at) => *at,
    }
}

/// The missed slots in `[due, now]`, oldest first: for `all`, the ones inside the window (the
/// most recent `max`); otherwise only the latest.
fn missed(
    timing: &Timing,
    due: DateTime<Utc>,
    now: DateTime<Utc>,
    policy: &str,
    max: i32,
    window: Option<TimeDelta>,
) -> Result<Vec<DateTime<Utc>>, String> {
    if policy != "all" {
        return Ok(vec![latest_slot(timing, due, now)]);
    }
    let max = usize::try_from(max.max(1)).unwrap_or(1);
    let floor = window.and_then(|w| now.checked_sub_signed(w)).map_or(due, |f| due.max(f));
    let mut slots = std::collections::VecDeque::with_capacity(max.min(1024));
    match timing {
        Timing::Clocked(at) => slots.push_back(*at),
        Timing::Interval { every, .. } => {
            // Arithmetic: the last `max` slots at or after `floor`.
            let last = latest_slot(timing, due, now);
            let mut slot = last;
            while slot >= floor && slots.len() < max {
                slots.push_front(slot);
                match slot.checked_sub_signed(*every) {
                    Some(earlier) => slot = earlier,
                    None => break,
                }
            }
        }
        Timing::Crontab(..) => {
            let mut slot =
                if floor == due { Some(due) } else { timing.next_after(floor - TimeDelta::microseconds(1), None)? };
            let mut walked = 0;
            while let Some(s) = slot.filter(|s| *s <= now) {
                if slots.len() == max {
                    slots.pop_front();
                }
                slots.push_back(s);
                walked += 1;
                if walked >= MAX_WALK {
                    break;
                }
                slot = timing.next_after(s, None)?;
            }
        }
    }
    Ok(slots.into())
}
