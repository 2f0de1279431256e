//! # celeriac-schedule
//!
//! Celery's periodic schedules, evaluated: [`Crontab`] with Celery's parser rules (0 = Sunday,
//! wrapping ranges, names, day fields ANDed) evaluated by croner in an IANA time zone
//! ([`parse_zone`]), with the DST policy written in [`crontab`]. Pure: no I/O. This crate holds
//! the time-zone database and the cron engine, so the protocol crate (used by the fuzzers and
//! the extension module) stays without them.

pub mod crontab;

pub use crontab::{parse_zone, Crontab, CrontabError};
