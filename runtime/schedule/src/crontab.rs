//! Celery's `crontab` schedule: Celery's field syntax, evaluated in an IANA time zone by croner.
//!
//! # Parsing
//!
//! [`Crontab::new`] takes the five fields in Celery's positional order (`minute`, `hour`,
//! `day_of_week`, `day_of_month`, `month_of_year`) and [`Crontab::from_string`] takes Celery's
//! `"m h dom mon dow"` string. Each field is expanded the way `celery.schedules.crontab_parser`
//! does it, and refused where Celery refuses it, with Celery's message:
//!
//! - `*`, `N`, `a-b`, `*/s`, `a-b/s` and comma lists; `N/s` is refused; an empty part is refused.
//! - Ranges wrap past the field's end: day of week `fri-mon` is {5, 6, 0, 1}, minute `50-10` is
//!   50–59 and 0–10.
//! - Steps count from the field's minimum over the whole range, wrapped or not: day of week `*/2`
//!   is {0, 2, 4, 6}, day of month `*/10` is {1, 11, 21, 31}, month `*/5` is {1, 6, 11}.
//! - Names are read on their first three letters, case-insensitive, month names first and then
//!   weekday names, in every field: day of week `monkey` is {1} and day of week `jan` is {1}.
//! - Ranges: minute 0–59, hour 0–23, day of week 0–6 with 0 = Sunday (7 is refused with
//!   `Invalid end range: 7 > 6.`), day of month 1–31, month 1–12.
//! - Like Celery 5.7, a day-of-month set that falls in none of the months (30 February) is
//!   refused when the crontab is built ([`CrontabError::InvalidDate`]).
//! - Whatever follows a match of Celery's (start-anchored) patterns is ignored, as in Celery:
//!   minute `1-5/2/3` is `1-5/2`, `*/5-3` is `*/5`. Numbers are read as Python's `int()` reads them
//!   (surrounding white space, a `+` sign and `1_0` are accepted).
//!
//! A day must be in the day-of-week set **and** in the day-of-month set **and** in the month set
//! (Celery ANDs the day fields; Vixie cron ORs day of month and day of week). `crontab(0, 0,
//! day_of_week=1, day_of_month='1-7')` is the first Monday of each month.
//!
//! The expanded sets are handed to croner as explicit sorted lists (or `*` for a full field), in a
//! pattern built with `dom_and_dow(true)`; Celery's strings never reach croner.
//!
//! # Time zones and daylight saving time
//!
//! Slots are evaluated on the wall clock of the given zone and returned as UTC instants; each
//! search moves from the previous instant in real time, never through naive local time, and
//! every result is strictly later than the instant it was asked after. croner's rules decide the
//! days the clock changes:
//!
//! - A **fixed-time** crontab is one with exactly one minute and exactly one hour (`30 2 * * *`).
//!   When its time falls in a spring-forward gap, it fires once, at the first instant after the
//!   gap. When its time is repeated by a fall-back, it fires once, on the first pass.
//! - Every other crontab (`0 * * * *`, `*/15 * * * *`, `15,45 2 * * *`) skips the slots that fall
//!   in a gap, and fires the slots of a repeated hour on both passes, in real-time order.
//!
//! ## Where this differs from Celery 5.7
//!
//! Measured with Celery 5.7 stepping `remaining_estimate` from each previous slot, as Beat does;
//! `tests/dst.rs` asserts both sides and `tests/celery_differential.rs` checks the list against
//! real Celery.
//!
//! 1. **Spring-forward, fixed time in the gap.** `30 2 * * *` in America/New_York on 2025-03-09:
//!    celeriac fires at 03:00 EDT (07:00 UTC), the end of the gap; Celery fires at 03:30 EDT
//!    (07:30 UTC), the wall time read with the offset from before the change (celery#9653). In
//!    Australia/Lord_Howe (a 30-minute change, 02:00 → 02:30 on 2025-10-05) `15 2 * * *` fires at
//!    02:30 here and at 02:45 in Celery.
//! 2. **Fall-back, repeated hour, not fixed-time.** `0 * * * *` in America/New_York on
//!    2025-11-02: celeriac fires at 01:00 EDT and again at 01:00 EST; Celery skips the second
//!    01:00 (celery#10107). The same holds for every slot of the repeated hour: `*/15 * * * *`
//!    fires 01:00–01:45 twice here and once in Celery.
//! 3. **Spring-forward, several slots in the gap.** `15,45 2 * * *` in America/New_York on
//!    2025-03-09 does not fire that day here (it is not fixed-time, so its slots in the gap are
//!    skipped); Celery fires once, at 03:15 EDT.
//! 4. **Spring-forward in a zone that moves by 30 minutes.** `0 * * * *` in Australia/Lord_Howe on
//!    2025-10-05 (02:00 → 02:30): celeriac skips 02:00 and fires next at 03:00; Celery fires at
//!    02:30 for the missing 02:00.
//!
//! Outside the days the clock changes, and in zones without daylight saving time, slots are the
//! same as Celery's (checked on thousands of random specs by `tests/celery_differential.rs`).
//!
//! Two parser details also differ: Python's `int()` accepts non-ASCII decimal digits (`'٥'`),
//! which are refused here, and Celery also accepts ints, lists and sets for each field, which a
//! caller passes here as their text (`"0,15,30"`).
//!
//! Time zone rules come from chrono-tz (tzdata compiled in; a tzdata change needs a crate bump),
//! Celery's from Python's `zoneinfo`. chrono-tz applies daylight saving time up to 2099 only, so
//! slots after 2099 in zones with daylight saving time follow standard time here.
//!
//! croner searches up to the year 5000: [`CrontabError::NoOccurrence`] means no slot before then.
//! The sparsest crontab Celery accepts (29 February on a given weekday) recurs within 40 years,
//! which takes croner under 5 ms in a debug build.

mod parse;

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use croner::errors::CronError;
use croner::parser::CronParser;
use croner::Cron;

use self::parse::py_repr;

/// One of the five crontab fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    /// Minute of the hour, 0–59.
    Minute,
    /// Hour of the day, 0–23.
    Hour,
    /// Day of the week, 0–6, 0 = Sunday.
    DayOfWeek,
    /// Day of the month, 1–31.
    DayOfMonth,
    /// Month of the year, 1–12.
    MonthOfYear,
}

impl Field {
    /// The fields in Celery's positional order: minute, hour, day_of_week, day_of_month,
    /// month_of_year.
    pub const ALL: [Field; 5] = [Field::Minute, Field::Hour, Field::DayOfWeek, Field::DayOfMonth, Field::MonthOfYear];

    /// Celery's keyword for the field (`"day_of_week"`).
    pub fn name(self) -> &'static str {
        match self {
            Field::Minute => "minute",
            Field::Hour => "hour",
            Field::DayOfWeek => "day_of_week",
            Field::DayOfMonth => "day_of_month",
            Field::MonthOfYear => "month_of_year",
        }
    }

    /// The smallest and largest values of the field.
    pub fn bounds(self) -> (u32, u32) {
        match self {
            Field::Minute => (0, 59),
            Field::Hour => (0, 23),
            Field::DayOfWeek => (0, 6),
            Field::DayOfMonth => (1, 31),
            Field::MonthOfYear => (1, 12),
        }
    }

    /// Position in Celery's positional order.
    fn index(self) -> usize {
        match self {
            Field::Minute => 0,
            Field::Hour => 1,
            Field::DayOfWeek => 2,
            Field::DayOfMonth => 3,
            Field::MonthOfYear => 4,
        }
    }
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why Celery's field parser refuses a field; the message is Celery's exception text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    /// A comma-separated part is empty (`"1,,2"`, `""`).
    #[error("empty part")]
    EmptyPart,
    /// A `/` has no step after it (`"*/"`, `"1-5/"`).
    #[error("empty filter")]
    EmptyFilter,
    /// The part starts with `-` (`"-5"`).
    #[error("negative numbers not supported")]
    Negative,
    /// Neither a number nor a month or weekday name (`"5/2"`, `"xyz"`).
    #[error("Invalid weekday literal {}.", py_repr(.0))]
    InvalidLiteral(String),
    /// The step is not a number (`"*/x"`).
    #[error("invalid literal for int() with base 10: {}", py_repr(.0))]
    InvalidStep(String),
    /// The step is zero (`"*/0"`).
    #[error("slice step cannot be zero")]
    ZeroStep,
    /// A value above the field's maximum (`"7"` as a day of week).
    #[error("Invalid end range: {value} > {max}.")]
    EndRange {
        /// The value, as Python prints it.
        value: String,
        /// The field's maximum.
        max: i64,
    },
    /// A value below the field's minimum (`"0"` as a day of month).
    #[error("Invalid beginning range: {value} < {min}.")]
    BeginningRange {
        /// The value, as Python prints it.
        value: String,
        /// The field's minimum.
        min: i64,
    },
}

/// A crontab that cannot be built or evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrontabError {
    /// Celery's parser refuses a field.
    #[error("invalid {field} {}: {reason}", py_repr(.spec))]
    Field {
        /// The field.
        field: Field,
        /// The field's text as given.
        spec: String,
        /// Celery's reason.
        reason: FieldError,
    },
    /// No day of the day-of-month set exists in any month of the month set (30 February).
    #[error(
        "Invalid crontab: day_of_month {} never occurs in month_of_year {}.",
        py_repr(.day_of_month),
        py_repr(.month_of_year)
    )]
    InvalidDate {
        /// The day-of-month field as given.
        day_of_month: String,
        /// The month-of-year field as given.
        month_of_year: String,
    },
    /// A crontab string without exactly five fields separated by single spaces.
    #[error("a crontab string has 5 fields separated by single spaces (\"m h dom mon dow\"), found {found}")]
    FieldCount {
        /// How many fields the string has.
        found: usize,
    },
    /// Not an IANA time zone name.
    #[error("unknown time zone {}", py_repr(.0))]
    UnknownZone(String),
    /// The crontab has no slot after the given instant (croner searches up to the year 5000).
    #[error("the crontab has no slot after the given instant (searched up to the year 5000)")]
    NoOccurrence,
    /// croner refused the pattern built from the parsed fields, or returned an impossible slot.
    #[error("crontab evaluation failed: {0}")]
    Evaluation(String),
}

/// Number of days in each month, with the longest February (Celery's `CRON_DAYS_IN_MONTH`).
const DAYS_IN_MONTH: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

/// A Celery crontab: five fields with Celery's parser rules, evaluated in an IANA time zone by croner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crontab {
    /// The fields as given, in Celery's positional order.
    fields: [String; 5],
    /// The expanded fields, bit `v` set for value `v`, in Celery's positional order.
    sets: [u64; 5],
    /// The croner schedule built from `sets`.
    cron: Cron,
}

impl Crontab {
    /// Celery's `crontab(minute, hour, day_of_week, day_of_month, month_of_year)` (Celery's positional order).
    ///
    /// The fields are checked in Celery's order (hour first, then minute, day of week, day of
    /// month and month), so the error names the same field Celery's does.
    pub fn new(
        minute: &str,
        hour: &str,
        day_of_week: &str,
        day_of_month: &str,
        month_of_year: &str,
    ) -> Result<Crontab, CrontabError> {
        let fields = [minute, hour, day_of_week, day_of_month, month_of_year];
        let mut sets = [0u64; 5];
        for field in [Field::Hour, Field::Minute, Field::DayOfWeek, Field::DayOfMonth, Field::MonthOfYear] {
            let spec = fields[field.index()];
            sets[field.index()] = parse::expand(field, spec).map_err(|reason| CrontabError::Field {
                field,
                spec: spec.to_owned(),
                reason,
            })?;
        }
        let (days, months) = (sets[Field::DayOfMonth.index()], sets[Field::MonthOfYear.index()]);
        let some_day_exists = (1..=12u32)
            .filter(|m| months & (1 << m) != 0)
            .any(|m| (1..=DAYS_IN_MONTH[m as usize - 1]).any(|d| days & (1 << d) != 0));
        if !some_day_exists {
            return Err(CrontabError::InvalidDate {
                day_of_month: day_of_month.to_owned(),
                month_of_year: month_of_year.to_owned(),
            });
        }
        let pattern = cron_pattern(&sets);
        let cron = CronParser::builder()
            .dom_and_dow(true)
            .build()
            .parse(&pattern)
            .map_err(|e| CrontabError::Evaluation(format!("croner refused {pattern:?}: {e}")))?;
        Ok(Crontab { fields: fields.map(str::to_owned), sets, cron })
    }

    /// Celery's `crontab.from_string("m h dom mon dow")`.
    ///
    /// Like Celery, the string is split on single spaces: two spaces in a row make an empty field.
    pub fn from_string(cron: &str) -> Result<Crontab, CrontabError> {
        let parts: Vec<&str> = cron.split(' ').collect();
        let [minute, hour, day_of_month, month_of_year, day_of_week] = parts[..] else {
            return Err(CrontabError::FieldCount { found: parts.len() });
        };
        Crontab::new(minute, hour, day_of_week, day_of_month, month_of_year)
    }

    /// The fields as given: [minute, hour, day_of_week, day_of_month, month_of_year].
    pub fn fields(&self) -> [&str; 5] {
        [&self.fields[0], &self.fields[1], &self.fields[2], &self.fields[3], &self.fields[4]]
    }

    /// The expanded fields, sorted, in the same order as [`Crontab::fields`] (Celery's
    /// `crontab.minute`, `.hour`, `.day_of_week`, `.day_of_month`, `.month_of_year`).
    pub fn values(&self) -> [Vec<u32>; 5] {
        self.sets.map(set_values)
    }

    /// The 5-field pattern actually evaluated (explicit sorted lists or `*`), for display/debug.
    ///
    /// The order is cron's, `minute hour day_of_month month day_of_week`, with 0 = Sunday; it is
    /// evaluated with day of month AND day of week.
    pub fn cron_expr(&self) -> String {
        cron_pattern(&self.sets)
    }

    /// The first slot strictly after `after`, evaluated in `tz`. Err(CrontabError::NoOccurrence) when the
    /// sets can never match (e.g. Feb 30) — must not panic, must not take more than ~100 ms.
    ///
    /// Sets that can never match are refused by [`Crontab::new`] (as Celery does), so
    /// `NoOccurrence` only comes when no slot exists before the year 5000.
    pub fn next_after(&self, tz: Tz, after: DateTime<Utc>) -> Result<DateTime<Utc>, CrontabError> {
        let next = self.cron.find_next_occurrence(&after.with_timezone(&tz), false).map_err(search_error)?;
        let next = next.with_timezone(&Utc);
        if next <= after {
            return Err(CrontabError::Evaluation(format!(
                "croner returned {next} for the first slot after {after} of {:?} in {tz}",
                self.cron_expr()
            )));
        }
        Ok(next)
    }

    /// The latest slot at or before `at` and strictly after `floor` (None if none in (floor, at]).
    /// Used for Beat's "fire only the latest missed slot" catch-up. Must be cheap even if `floor` is years back.
    ///
    /// The answer is always one of the slots [`Crontab::next_after`] steps through: croner's
    /// backward search proposes it, two forward searches confirm it, and a bisection over
    /// forward searches (about 32 of them for a century) settles any disagreement.
    pub fn latest_in(
        &self,
        tz: Tz,
        floor: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, CrontabError> {
        if at <= floor {
            return Ok(None);
        }
        let candidate = match self.cron.find_previous_occurrence(&at.with_timezone(&tz), true) {
            Ok(previous) => Some(previous.with_timezone(&Utc)),
            Err(e) => match search_error(e) {
                CrontabError::NoOccurrence => None,
                other => return Err(other),
            },
        };
        match candidate {
            Some(c) if c > floor && c <= at => {
                let is_slot = match c.checked_sub_signed(TimeDelta::seconds(1)) {
                    Some(before) => self.next_or_none(tz, before)? == Some(c),
                    None => false,
                };
                let is_latest = self.next_or_none(tz, c)?.is_none_or(|next| next > at);
                if is_slot && is_latest {
                    return Ok(Some(c));
                }
            }
            _ => {
                if self.next_or_none(tz, floor)?.is_none_or(|next| next > at) {
                    return Ok(None);
                }
            }
        }
        self.latest_by_bisection(tz, floor, at)
    }

    /// [`Crontab::latest_in`] from forward searches only: the slot after the latest instant `x`
    /// in `[floor, at)` whose next slot is still at or before `at`.
    fn latest_by_bisection(
        &self,
        tz: Tz,
        floor: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, CrontabError> {
        let within = |next: Option<DateTime<Utc>>| next.is_some_and(|n| n <= at);
        let mut low = floor;
        let mut low_next = self.next_or_none(tz, low)?;
        if !within(low_next) {
            return Ok(None);
        }
        let mut high = at;
        // Invariant: next(low) <= at < next(high). Slots sit on whole seconds, so once the two
        // are a second apart, next(low) is the only slot in (low, at].
        while high - low > TimeDelta::seconds(1) {
            let middle = low + (high - low) / 2;
            let next = self.next_or_none(tz, middle)?;
            if within(next) {
                low = middle;
                low_next = next;
            } else {
                high = middle;
            }
        }
        Ok(low_next)
    }

    /// [`Crontab::next_after`], with `None` for [`CrontabError::NoOccurrence`].
    fn next_or_none(&self, tz: Tz, after: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, CrontabError> {
        match self.next_after(tz, after) {
            Ok(next) => Ok(Some(next)),
            Err(CrontabError::NoOccurrence) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Parses an IANA zone name ("UTC", "Europe/London"); error names the bad zone.
pub fn parse_zone(name: &str) -> Result<Tz, CrontabError> {
    name.parse::<Tz>().map_err(|_| CrontabError::UnknownZone(name.to_owned()))
}

/// Maps a croner search failure: running out of time (or out of representable dates) means there
/// is no slot.
fn search_error(e: CronError) -> CrontabError {
    match e {
        CronError::TimeSearchLimitExceeded | CronError::InvalidDate | CronError::InvalidTime => {
            CrontabError::NoOccurrence
        }
        other => CrontabError::Evaluation(other.to_string()),
    }
}

/// The values of a bit set, ascending.
fn set_values(set: u64) -> Vec<u32> {
    (0..64).filter(|v| set & (1u64 << v) != 0).collect()
}

/// One field for croner: `*` when the set is the whole field, else the sorted values.
fn cron_field(field: Field, set: u64) -> String {
    let (min, max) = field.bounds();
    let full = (min..=max).fold(0u64, |acc, v| acc | (1 << v));
    if set == full {
        "*".to_owned()
    } else {
        set_values(set).iter().map(u32::to_string).collect::<Vec<_>>().join(",")
    }
}

/// The 5-field croner pattern, in cron's order: minute hour day_of_month month day_of_week.
fn cron_pattern(sets: &[u64; 5]) -> String {
    [Field::Minute, Field::Hour, Field::DayOfMonth, Field::MonthOfYear, Field::DayOfWeek]
        .map(|field| cron_field(field, sets[field.index()]))
        .join(" ")
}

#[cfg(test)]
mod tests;
