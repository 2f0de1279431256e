use chrono::{DateTime, TimeDelta, TimeZone as _, Utc};
use chrono_tz::Tz;

use super::*;

fn utc(s: &str) -> DateTime<Utc> {
    match DateTime::parse_from_rfc3339(s) {
        Ok(t) => t.with_timezone(&Utc),
        Err(e) => panic!("bad test instant {s:?}: {e}"),
    }
}

fn cron(minute: &str, hour: &str, dow: &str, dom: &str, moy: &str) -> Crontab {
    match Crontab::new(minute, hour, dow, dom, moy) {
        Ok(c) => c,
        Err(e) => panic!("crontab({minute:?}, {hour:?}, {dow:?}, {dom:?}, {moy:?}): {e}"),
    }
}

fn refused(minute: &str, hour: &str, dow: &str, dom: &str, moy: &str) -> CrontabError {
    match Crontab::new(minute, hour, dow, dom, moy) {
        Ok(c) => panic!("crontab({minute:?}, {hour:?}, {dow:?}, {dom:?}, {moy:?}) was accepted: {}", c.cron_expr()),
        Err(e) => e,
    }
}

/// The first `n` slots after `after`, each searched from the previous one.
fn slots(c: &Crontab, tz: Tz, after: &str, n: usize) -> Vec<DateTime<Utc>> {
    let mut out = Vec::with_capacity(n);
    let mut t = utc(after);
    for _ in 0..n {
        t = match c.next_after(tz, t) {
            Ok(next) => next,
            Err(e) => panic!("{}: next after {t}: {e}", c.cron_expr()),
        };
        out.push(t);
    }
    out
}

fn instants(list: &[&str]) -> Vec<DateTime<Utc>> {
    list.iter().map(|s| utc(s)).collect()
}

#[test]
fn day_of_week_seven_is_refused_and_names_the_field() {
    let e = refused("*", "*", "7", "*", "*");
    assert_eq!(
        e,
        CrontabError::Field {
            field: Field::DayOfWeek,
            spec: "7".into(),
            reason: FieldError::EndRange { value: "7".into(), max: 6 }
        }
    );
    assert_eq!(e.to_string(), "invalid day_of_week '7': Invalid end range: 7 > 6.");
    assert!(Crontab::from_string("0 0 * * 7").is_err());
}

#[test]
fn quirk_table() {
    // (minute, hour, day_of_week, day_of_month, month_of_year) → expanded values.
    let all = |a: u32, b: u32| (a..=b).collect::<Vec<_>>();
    let cases: [([&str; 5], [Vec<u32>; 5]); 8] = [
        (["*", "*", "fri-mon", "*", "*"], [all(0, 59), all(0, 23), vec![0, 1, 5, 6], all(1, 31), all(1, 12)]),
        (
            ["50-10", "*", "*", "*", "*"],
            [[all(0, 10), all(50, 59)].concat(), all(0, 23), all(0, 6), all(1, 31), all(1, 12)],
        ),
        (["*", "*", "monkey", "*", "*"], [all(0, 59), all(0, 23), vec![1], all(1, 31), all(1, 12)]),
        (["*", "*", "jan", "*", "*"], [all(0, 59), all(0, 23), vec![1], all(1, 31), all(1, 12)]),
        (
            ["*", "*", "*/2", "*/10", "*/5"],
            [all(0, 59), all(0, 23), vec![0, 2, 4, 6], vec![1, 11, 21, 31], vec![1, 6, 11]],
        ),
        (
            ["*/15", "*/5", "*", "*", "*"],
            [vec![0, 15, 30, 45], vec![0, 5, 10, 15, 20], all(0, 6), all(1, 31), all(1, 12)],
        ),
        (["0", "9-17/4", "Mon-Fri", "*", "Jun-aug"], [vec![0], vec![9, 13, 17], all(1, 5), all(1, 31), vec![6, 7, 8]]),
        (
            ["1,2,3", "23-1", "sat-sun", "31-2", "dec-jan"],
            [vec![1, 2, 3], vec![0, 1, 23], vec![0, 6], vec![1, 2, 31], vec![1, 12]],
        ),
    ];
    for ([m, h, dow, dom, moy], expected) in cases {
        assert_eq!(cron(m, h, dow, dom, moy).values(), expected, "crontab({m:?}, {h:?}, {dow:?}, {dom:?}, {moy:?})");
    }
}

#[test]
fn refusals_name_the_field_and_quote_celery() {
    let cases = [
        (["5/2", "*", "*", "*", "*"], "invalid minute '5/2': Invalid weekday literal '5/2'."),
        (["*", "1,,2", "*", "*", "*"], "invalid hour '1,,2': empty part"),
        (["", "*", "*", "*", "*"], "invalid minute '': empty part"),
        (["60", "*", "*", "*", "*"], "invalid minute '60': Invalid end range: 60 > 59."),
        (["*", "24", "*", "*", "*"], "invalid hour '24': Invalid end range: 24 > 23."),
        (["*", "*", "*", "0", "*"], "invalid day_of_month '0': Invalid beginning range: 0 < 1."),
        (["*", "*", "*", "32", "*"], "invalid day_of_month '32': Invalid end range: 32 > 31."),
        (["*", "*", "*", "*", "13"], "invalid month_of_year '13': Invalid end range: 13 > 12."),
        (["*", "*", "*", "*", "0"], "invalid month_of_year '0': Invalid beginning range: 0 < 1."),
        (["*/0", "*", "*", "*", "*"], "invalid minute '*/0': slice step cannot be zero"),
        (["-1", "*", "*", "*", "*"], "invalid minute '-1': negative numbers not supported"),
        (["*", "*", "funday", "*", "*"], "invalid day_of_week 'funday': Invalid weekday literal 'funday'."),
        // Celery checks the hour before the minute.
        (["61", "25", "*", "*", "*"], "invalid hour '25': Invalid end range: 25 > 23."),
    ];
    for ([m, h, dow, dom, moy], message) in cases {
        assert_eq!(refused(m, h, dow, dom, moy).to_string(), message);
    }
}

#[test]
fn impossible_dates_are_refused_like_celery() {
    let e = refused("0", "0", "*", "30", "2");
    assert_eq!(e, CrontabError::InvalidDate { day_of_month: "30".into(), month_of_year: "2".into() });
    assert_eq!(e.to_string(), "Invalid crontab: day_of_month '30' never occurs in month_of_year '2'.");
    assert!(matches!(refused("0", "0", "*", "31", "apr,jun,sep,nov"), CrontabError::InvalidDate { .. }));
    assert!(matches!(Crontab::from_string("0 0 30,31 feb *"), Err(CrontabError::InvalidDate { .. })));
    // One possible day is enough.
    assert!(Crontab::new("0", "0", "*", "30,31", "2,4").is_ok());
}

#[test]
fn no_occurrence_is_an_error_not_a_panic() {
    // 29 February on a Monday: 2044, 2072, 2112, ... but none between 4996 and croner's limit.
    let c = cron("0", "0", "mon", "29", "feb");
    assert_eq!(c.next_after(Tz::UTC, utc("4996-03-01T00:00:00Z")), Err(CrontabError::NoOccurrence));
    let every_minute = cron("*", "*", "*", "*", "*");
    assert_eq!(every_minute.next_after(Tz::UTC, DateTime::<Utc>::MAX_UTC), Err(CrontabError::NoOccurrence));
}

#[test]
fn february_29_on_a_monday_recurs() {
    let c = cron("0", "0", "1", "29", "2");
    assert_eq!(
        slots(&c, Tz::UTC, "2025-01-01T00:00:00Z", 3),
        instants(&["2044-02-29T00:00:00Z", "2072-02-29T00:00:00Z", "2112-02-29T00:00:00Z"])
    );
    assert_eq!(
        c.latest_in(Tz::UTC, utc("2000-01-01T00:00:00Z"), utc("2100-01-01T00:00:00Z")),
        Ok(Some(utc("2072-02-29T00:00:00Z")))
    );
}

#[test]
fn from_string_uses_cron_order() {
    let c = match Crontab::from_string("5 4 3 2 1") {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(c.fields(), ["5", "4", "1", "3", "2"]);
    assert_eq!(c.values(), [vec![5], vec![4], vec![1], vec![3], vec![2]]);
    assert_eq!(c.cron_expr(), "5 4 3 2 1");
    assert_eq!(c, cron("5", "4", "1", "3", "2"));
    // Split on single spaces, as Celery does.
    assert_eq!(Crontab::from_string("* * * *"), Err(CrontabError::FieldCount { found: 4 }));
    assert_eq!(Crontab::from_string("*  * * * *"), Err(CrontabError::FieldCount { found: 6 }));
    assert_eq!(Crontab::from_string("* * * * * *"), Err(CrontabError::FieldCount { found: 6 }));
    // Names are read on three characters, so a trailing tab is ignored, as in Celery.
    assert_eq!(Crontab::from_string("0 0 * * mon\t").map(|c| c.values()[2].clone()), Ok(vec![1]));
}

#[test]
fn cron_expr_lists_values_and_stars_full_fields() {
    assert_eq!(cron("*", "*", "*", "*", "*").cron_expr(), "* * * * *");
    assert_eq!(cron("0-59", "0-23", "sun-sat", "1-31", "jan-dec").cron_expr(), "* * * * *");
    assert_eq!(
        cron("*/20", "9-11", "fri-mon", "1-7", "*/5").cron_expr(),
        "0,20,40 9,10,11 1,2,3,4,5,6,7 1,6,11 0,1,5,6"
    );
    assert_eq!(cron("0", "0", "jan", "*", "*").cron_expr(), "0 0 * * 1");
}

#[test]
fn day_fields_are_anded() {
    // First Monday of the month.
    let c = cron("0", "0", "1", "1-7", "*");
    assert_eq!(
        slots(&c, Tz::UTC, "2025-01-01T00:00:00Z", 7),
        instants(&[
            "2025-01-06T00:00:00Z",
            "2025-02-03T00:00:00Z",
            "2025-03-03T00:00:00Z",
            "2025-04-07T00:00:00Z",
            "2025-05-05T00:00:00Z",
            "2025-06-02T00:00:00Z",
            "2025-07-07T00:00:00Z",
        ])
    );
    // Friday the 13th, only in the months given.
    let c = cron("30", "12", "fri", "13", "1-6");
    assert_eq!(
        slots(&c, Tz::UTC, "2025-01-01T00:00:00Z", 3),
        instants(&["2025-06-13T12:30:00Z", "2026-02-13T12:30:00Z", "2026-03-13T12:30:00Z"])
    );
}

#[test]
fn evaluated_in_the_zone() {
    let tz = match parse_zone("Asia/Kolkata") {
        Ok(tz) => tz,
        Err(e) => panic!("{e}"),
    };
    let c = cron("0", "9", "*", "*", "*");
    assert_eq!(slots(&c, tz, "2025-01-01T00:00:00Z", 2), instants(&["2025-01-01T03:30:00Z", "2025-01-02T03:30:00Z"]));
}

#[test]
fn next_after_is_strictly_after() {
    let c = cron("*/15", "*", "*", "*", "*");
    let tz = Tz::Europe__London;
    assert_eq!(c.next_after(tz, utc("2025-01-01T10:15:00Z")), Ok(utc("2025-01-01T10:30:00Z")));
    assert_eq!(c.next_after(tz, utc("2025-01-01T10:14:59.999Z")), Ok(utc("2025-01-01T10:15:00Z")));
    assert_eq!(c.next_after(tz, utc("2025-01-01T10:15:00.001Z")), Ok(utc("2025-01-01T10:30:00Z")));
}

#[test]
fn parse_zone_names_the_bad_zone() {
    assert_eq!(parse_zone("UTC"), Ok(Tz::UTC));
    assert_eq!(parse_zone("Europe/London"), Ok(Tz::Europe__London));
    let e = parse_zone("Mars/Olympus_Mons");
    assert_eq!(e, Err(CrontabError::UnknownZone("Mars/Olympus_Mons".into())));
    assert!(e.is_err_and(|e| e.to_string().contains("'Mars/Olympus_Mons'")));
}

#[test]
fn latest_in_bounds() {
    let c = cron("0", "*/6", "*", "*", "*");
    let tz = Tz::UTC;
    let floor = utc("2025-01-01T00:00:00Z");
    // `at` is inclusive, `floor` exclusive.
    assert_eq!(c.latest_in(tz, floor, utc("2025-01-01T06:00:00Z")), Ok(Some(utc("2025-01-01T06:00:00Z"))));
    assert_eq!(c.latest_in(tz, floor, utc("2025-01-01T05:59:59Z")), Ok(None));
    assert_eq!(c.latest_in(tz, floor, floor), Ok(None));
    assert_eq!(c.latest_in(tz, utc("2025-01-01T06:00:00Z"), utc("2025-01-01T11:59:00Z")), Ok(None));
    assert_eq!(c.latest_in(tz, floor, utc("2025-01-03T13:00:00Z")), Ok(Some(utc("2025-01-03T12:00:00Z"))));
    // A floor years back costs nothing more.
    assert_eq!(
        c.latest_in(tz, utc("1970-01-01T00:00:00Z"), utc("2025-01-03T13:00:00.5Z")),
        Ok(Some(utc("2025-01-03T12:00:00Z")))
    );
    assert_eq!(c.latest_in(tz, utc("2025-01-03T13:00:00Z"), utc("2025-01-01T00:00:00Z")), Ok(None));
}

/// The two ways `latest_in` finds its answer agree with each other and with stepping forward,
/// across daylight saving changes.
#[test]
fn latest_in_agrees_with_forward_stepping() {
    let specs = [
        ("30", "2", "*", "*", "*"),
        ("30", "1", "*", "*", "*"),
        ("0", "*", "*", "*", "*"),
        ("*/15", "*", "*", "*", "*"),
        ("15,45", "2", "*", "*", "*"),
        ("0", "0", "*", "*", "*"),
        ("15", "2", "*", "*", "*"),
        ("*", "1-3", "*", "*", "*"),
    ];
    let windows = [
        (Tz::America__New_York, "2025-03-08T20:00:00Z", "2025-03-10T08:00:00Z"),
        (Tz::America__New_York, "2025-11-01T20:00:00Z", "2025-11-03T08:00:00Z"),
        (Tz::Europe__London, "2025-03-29T20:00:00Z", "2025-03-31T08:00:00Z"),
        (Tz::Europe__London, "2025-10-25T20:00:00Z", "2025-10-27T08:00:00Z"),
        (Tz::Australia__Lord_Howe, "2025-10-04T00:00:00Z", "2025-10-06T00:00:00Z"),
        (Tz::Australia__Lord_Howe, "2025-04-05T00:00:00Z", "2025-04-07T00:00:00Z"),
        (Tz::America__Santiago, "2025-09-05T20:00:00Z", "2025-09-07T20:00:00Z"),
        (Tz::America__Santiago, "2025-04-04T20:00:00Z", "2025-04-06T20:00:00Z"),
    ];
    for (m, h, dow, dom, moy) in specs {
        let c = cron(m, h, dow, dom, moy);
        for (tz, start, end) in windows {
            let (start, end) = (utc(start), utc(end));
            let floor = start - TimeDelta::days(2);
            let mut chain = vec![];
            let mut t = floor;
            while t <= end {
                t = match c.next_after(tz, t) {
                    Ok(next) => next,
                    Err(e) => panic!("{e}"),
                };
                chain.push(t);
            }
            let mut at = start;
            let mut step = 0;
            while at <= end {
                let expected = chain.iter().copied().rfind(|s| *s <= at);
                let context = format!("{} in {tz} at {at}", c.cron_expr());
                assert_eq!(c.latest_in(tz, floor, at), Ok(expected), "{context}");
                if step % 3 == 0 {
                    assert_eq!(c.latest_by_bisection(tz, floor, at), Ok(expected), "{context} (bisection)");
                }
                // An odd step visits every quarter hour's neighbourhood over the window.
                at += TimeDelta::seconds(17 * 60 + 30);
                step += 1;
            }
        }
    }
}

#[test]
fn latest_in_with_a_minutely_crontab_over_years() {
    let c = cron("*", "*", "*", "*", "*");
    let at = Tz::Asia__Tokyo.with_ymd_and_hms(2030, 6, 1, 12, 34, 56).single().map(|t| t.with_timezone(&Utc));
    let Some(at) = at else { panic!("bad instant") };
    assert_eq!(c.latest_in(Tz::Asia__Tokyo, utc("1990-01-01T00:00:00Z"), at), Ok(Some(utc("2030-06-01T03:34:00Z"))));
    assert_eq!(
        c.latest_by_bisection(Tz::Asia__Tokyo, utc("1990-01-01T00:00:00Z"), at),
        Ok(Some(utc("2030-06-01T03:34:00Z")))
    );
}
