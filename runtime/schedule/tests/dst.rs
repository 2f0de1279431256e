//! Daylight saving time: croner's rules as adopted in `crontab.rs`'s module docs, asserted as
//! exact UTC instants, with Celery 5.7's (measured) answers alongside where they differ.

#[path = "support/dst_cases.rs"]
mod dst_cases;

use celeriac_schedule::crontab::{parse_zone, Crontab};
use chrono::{DateTime, NaiveDate, TimeDelta, TimeZone as _, Utc};
use chrono_tz::Tz;

use dst_cases::{Difference, DST_CASES};

fn utc(s: &str) -> DateTime<Utc> {
    match DateTime::parse_from_rfc3339(s) {
        Ok(t) => t.with_timezone(&Utc),
        Err(e) => panic!("bad test instant {s:?}: {e}"),
    }
}

fn zone(name: &str) -> Tz {
    parse_zone(name).unwrap_or_else(|e| panic!("{e}"))
}

fn crontab(spec: &str) -> Crontab {
    Crontab::from_string(spec).unwrap_or_else(|e| panic!("{spec:?}: {e}"))
}

/// The first `n` slots strictly after `after`, each searched from the previous one.
fn slots(spec: &str, tz: Tz, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
    let c = crontab(spec);
    let mut out = Vec::with_capacity(n);
    let mut t = after;
    for _ in 0..n {
        t = c.next_after(tz, t).unwrap_or_else(|e| panic!("{spec:?} in {tz} after {t}: {e}"));
        out.push(t);
    }
    out
}

/// Every slot in `[start, end)`, stepping from slot to slot.
fn slots_between(spec: &str, tz: Tz, start: DateTime<Utc>, end: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let c = crontab(spec);
    let mut out = vec![];
    let mut t = start - TimeDelta::seconds(1);
    loop {
        t = c.next_after(tz, t).unwrap_or_else(|e| panic!("{spec:?} in {tz} after {t}: {e}"));
        if t >= end {
            return out;
        }
        out.push(t);
    }
}

fn instants(list: &[&str]) -> Vec<DateTime<Utc>> {
    list.iter().map(|s| utc(s)).collect()
}

/// Local midnight of `date` in `tz` (or the first instant of the day when midnight is skipped).
fn start_of_day(tz: Tz, date: NaiveDate) -> DateTime<Utc> {
    let midnight = date.and_hms_opt(0, 0, 0).unwrap_or_else(|| panic!("{date}"));
    (0..=120)
        .find_map(|m| tz.from_local_datetime(&(midnight + TimeDelta::minutes(m))).earliest())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| panic!("no start of {date} in {tz}"))
}

#[test]
fn every_case_gives_the_exact_instants() {
    for case in DST_CASES {
        let got = slots(case.spec, zone(case.zone), utc(case.after), case.ours.len());
        assert_eq!(got, instants(case.ours), "{:?} in {} after {}", case.spec, case.zone, case.after);
        assert!(got.windows(2).all(|w| w[0] < w[1]), "{case:?}: not strictly increasing");
    }
}

#[test]
fn celery_differs_exactly_where_documented() {
    for case in DST_CASES {
        assert_eq!(case.ours.len(), case.celery.len(), "{case:?}");
        let differs = case.ours != case.celery;
        assert_eq!(differs, case.difference != Difference::None, "{case:?}");
    }
    for kind in [
        Difference::SpringFixedTime,
        Difference::FallRepeatedHour,
        Difference::SpringSeveralSlotsInGap,
        Difference::SpringHalfHourShift,
    ] {
        assert!(DST_CASES.iter().any(|c| c.difference == kind), "no case shows {kind:?}");
    }
}

/// Difference 1: `30 2 * * *` on 2025-03-09 in New York fires at 03:00 EDT, the end of the gap;
/// Celery fires at 03:30 EDT.
#[test]
fn new_york_spring_fixed_time_fires_at_the_end_of_the_gap() {
    let tz = Tz::America__New_York;
    let got = slots("30 2 * * *", tz, utc("2025-03-08T12:00:00Z"), 2);
    assert_eq!(got, instants(&["2025-03-09T07:00:00Z", "2025-03-10T06:30:00Z"]));
    assert_eq!(got[0].with_timezone(&tz).to_string(), "2025-03-09 03:00:00 EDT");
    let celery = utc("2025-03-09T07:30:00Z");
    assert_ne!(got[0], celery);
    // 01:30 is before the gap and fires as usual.
    assert_eq!(slots("30 1 * * *", tz, utc("2025-03-08T12:00:00Z"), 1), instants(&["2025-03-09T06:30:00Z"]));
}

/// Difference 2: on 2025-11-02 in New York, `0 * * * *` fires at 01:00 EDT and at 01:00 EST;
/// Celery skips the second. A fixed time in the repeated hour fires once, like Celery.
#[test]
fn new_york_fall_back_fires_wildcards_twice_and_fixed_times_once() {
    let tz = Tz::America__New_York;
    let hourly = slots("0 * * * *", tz, utc("2025-11-02T04:30:00Z"), 3);
    assert_eq!(hourly, instants(&["2025-11-02T05:00:00Z", "2025-11-02T06:00:00Z", "2025-11-02T07:00:00Z"]));
    let local: Vec<String> = hourly.iter().map(|t| t.with_timezone(&tz).format("%H:%M %Z").to_string()).collect();
    assert_eq!(local, ["01:00 EDT", "01:00 EST", "02:00 EST"]);
    // Celery 5.7: 01:00 EDT, then 02:00 EST.
    assert_ne!(hourly[..2], instants(&["2025-11-02T05:00:00Z", "2025-11-02T07:00:00Z"]));

    let quarter = slots("*/15 * * * *", tz, utc("2025-11-02T04:50:00Z"), 9);
    let expected = instants(&[
        "2025-11-02T05:00:00Z",
        "2025-11-02T05:15:00Z",
        "2025-11-02T05:30:00Z",
        "2025-11-02T05:45:00Z",
        "2025-11-02T06:00:00Z",
        "2025-11-02T06:15:00Z",
        "2025-11-02T06:30:00Z",
        "2025-11-02T06:45:00Z",
        "2025-11-02T07:00:00Z",
    ]);
    assert_eq!(quarter, expected);

    assert_eq!(
        slots("30 1 * * *", tz, utc("2025-11-01T12:00:00Z"), 2),
        instants(&["2025-11-02T05:30:00Z", "2025-11-03T06:30:00Z"])
    );
}

/// Difference 3: `15,45 2 * * *` is not fixed-time, so its slots in the gap are skipped; Celery
/// fires once at 03:15 EDT.
#[test]
fn new_york_spring_several_slots_in_the_gap_are_skipped() {
    let got = slots("15,45 2 * * *", Tz::America__New_York, utc("2025-03-08T12:00:00Z"), 2);
    assert_eq!(got, instants(&["2025-03-10T06:15:00Z", "2025-03-10T06:45:00Z"]));
}

/// Lord Howe moves by 30 minutes (02:00 → 02:30 on 2025-10-05): `15 2 * * *` fires at 02:30
/// (Celery: 02:45); `0 * * * *` skips 02:00 (difference 4: Celery fires at 02:30).
#[test]
fn lord_howe_half_hour_change() {
    let tz = Tz::Australia__Lord_Howe;
    let fixed = slots("15 2 * * *", tz, utc("2025-10-04T00:00:00Z"), 2);
    assert_eq!(fixed, instants(&["2025-10-04T15:30:00Z", "2025-10-05T15:15:00Z"]));
    assert_eq!(fixed[0].with_timezone(&tz).format("%Y-%m-%d %H:%M %z").to_string(), "2025-10-05 02:30 +1100");
    let hourly = slots("0 * * * *", tz, utc("2025-10-04T14:10:00Z"), 3);
    assert_eq!(hourly, instants(&["2025-10-04T14:30:00Z", "2025-10-04T16:00:00Z", "2025-10-04T17:00:00Z"]));
    // Fall-back (02:00 → 01:30 on 2025-04-06): only 01:30–01:59 repeats.
    let quarter = slots("*/15 * * * *", tz, utc("2025-04-05T14:20:00Z"), 6);
    assert_eq!(
        quarter,
        instants(&[
            "2025-04-05T14:30:00Z",
            "2025-04-05T14:45:00Z",
            "2025-04-05T15:00:00Z",
            "2025-04-05T15:15:00Z",
            "2025-04-05T15:30:00Z",
            "2025-04-05T15:45:00Z",
        ])
    );
    assert_eq!(
        slots("45 1 * * *", tz, utc("2025-04-05T00:00:00Z"), 2),
        instants(&["2025-04-05T14:45:00Z", "2025-04-06T15:15:00Z"])
    );
}

/// Santiago changes at midnight: on 2025-09-07 00:00 becomes 01:00, so `0 0 * * *` fires at 01:00
/// (as Celery does); on 2025-04-06 00:00 goes back to 23:00 of the 5th, so 23:00 repeats.
#[test]
fn santiago_midnight_change() {
    let tz = Tz::America__Santiago;
    let daily = slots("0 0 * * *", tz, utc("2025-09-05T12:00:00Z"), 3);
    assert_eq!(daily, instants(&["2025-09-06T04:00:00Z", "2025-09-07T04:00:00Z", "2025-09-08T03:00:00Z"]));
    assert_eq!(daily[1].with_timezone(&tz).format("%Y-%m-%d %H:%M %z").to_string(), "2025-09-07 01:00 -0300");
    assert_eq!(
        slots("0 0 * * *", tz, utc("2025-04-04T12:00:00Z"), 2),
        instants(&["2025-04-05T03:00:00Z", "2025-04-06T04:00:00Z"])
    );
    assert_eq!(
        slots("0 23 * * *", tz, utc("2025-04-04T12:00:00Z"), 3),
        instants(&["2025-04-05T02:00:00Z", "2025-04-06T02:00:00Z", "2025-04-07T03:00:00Z"])
    );
    assert_eq!(
        slots("0 * * * *", tz, utc("2025-04-06T01:30:00Z"), 3),
        instants(&["2025-04-06T02:00:00Z", "2025-04-06T03:00:00Z", "2025-04-06T04:00:00Z"])
    );
}

/// Sydney: spring-forward 02:00 → 03:00 on 2025-10-05, fall-back 03:00 → 02:00 on 2025-04-06.
#[test]
fn sydney_changes() {
    let tz = Tz::Australia__Sydney;
    assert_eq!(
        slots("30 2 * * *", tz, utc("2025-10-04T00:00:00Z"), 2),
        instants(&["2025-10-04T16:00:00Z", "2025-10-05T15:30:00Z"])
    );
    assert_eq!(
        slots("30 2 * * *", tz, utc("2025-04-05T00:00:00Z"), 2),
        instants(&["2025-04-05T15:30:00Z", "2025-04-06T16:30:00Z"])
    );
    assert_eq!(
        slots("0 * * * *", tz, utc("2025-04-05T14:30:00Z"), 3),
        instants(&["2025-04-05T15:00:00Z", "2025-04-05T16:00:00Z", "2025-04-05T17:00:00Z"])
    );
}

/// Counting slots over whole local days: a 23-hour day has 23 hourly slots, a 25-hour day 25, and
/// a fixed daily time fires exactly once on every day, transition days included.
#[test]
fn slot_counts_over_transition_days() {
    // (zone, local day, hours in the day, hourly slots, minutely slots)
    let days = [
        ("America/New_York", (2025, 3, 9), 23, 23, 23 * 60),
        ("America/New_York", (2025, 11, 2), 25, 25, 25 * 60),
        ("Europe/London", (2025, 3, 30), 23, 23, 23 * 60),
        ("Europe/London", (2025, 10, 26), 25, 25, 25 * 60),
        // 30-minute changes: 02:00 disappears in spring; only 01:30–01:59 repeats in autumn.
        ("Australia/Lord_Howe", (2025, 10, 5), 23, 23, 23 * 60 + 30),
        ("Australia/Lord_Howe", (2025, 4, 6), 24, 24, 24 * 60 + 30),
        // The change is at midnight: the 7th of September starts at 01:00, the 5th of April has
        // its 23:00 hour twice.
        ("America/Santiago", (2025, 9, 7), 23, 23, 23 * 60),
        ("America/Santiago", (2025, 4, 5), 25, 25, 25 * 60),
        ("Australia/Sydney", (2025, 10, 5), 23, 23, 23 * 60),
        ("Australia/Sydney", (2025, 4, 6), 25, 25, 25 * 60),
    ];
    for (name, (y, m, d), hours, hourly, minutely) in days {
        let tz = zone(name);
        let date = NaiveDate::from_ymd_opt(y, m, d).unwrap_or_else(|| panic!("{y}-{m}-{d}"));
        let start = start_of_day(tz, date);
        let end = start_of_day(tz, date + TimeDelta::days(1));
        let context = format!("{name} {date}");
        // Lord Howe's day lengths are 23.5 and 24.5 hours.
        assert_eq!((end - start).num_minutes() / 60, hours, "{context}");
        let h = slots_between("0 * * * *", tz, start, end);
        assert_eq!(h.len(), hourly, "{context}: hourly");
        let every = slots_between("* * * * *", tz, start, end);
        assert_eq!(every.len(), minutely, "{context}: every minute");
        assert!(every.windows(2).all(|w| w[1] - w[0] == TimeDelta::minutes(1)), "{context}: a minute apart");
        for spec in ["30 2 * * *", "30 1 * * *", "0 0 * * *", "30 0 * * *", "59 23 * * *", "15 2 * * *"] {
            assert_eq!(slots_between(spec, tz, start, end).len(), 1, "{context}: {spec:?}");
        }
    }
}

/// `latest_in` returns the same slots as stepping forward, through every case.
#[test]
fn latest_in_matches_the_cases() {
    for case in DST_CASES {
        let (tz, c) = (zone(case.zone), crontab(case.spec));
        let floor = utc(case.after);
        let ours = instants(case.ours);
        let context = format!("{:?} in {}", case.spec, case.zone);
        assert_eq!(c.latest_in(tz, floor, ours[0] - TimeDelta::seconds(1)), Ok(None), "{context}");
        for (i, slot) in ours.iter().enumerate() {
            assert_eq!(c.latest_in(tz, floor, *slot), Ok(Some(*slot)), "{context}: at {slot}");
            if let Some(next) = ours.get(i + 1) {
                let before_next = *next - TimeDelta::seconds(1);
                assert_eq!(c.latest_in(tz, floor, before_next), Ok(Some(*slot)), "{context}: at {before_next}");
                // A floor years back finds the same slot.
                let far = floor - TimeDelta::days(3650);
                assert_eq!(c.latest_in(tz, far, before_next), Ok(Some(*slot)), "{context}: from {far}");
            }
        }
    }
}
