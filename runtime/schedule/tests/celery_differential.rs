//! Differential test against real Celery: `celery_oracle.py` builds thousands of random crontab
//! specs with `celery.schedules.crontab` and steps Celery's own `remaining_estimate` through their
//! slots; the same specs must be refused by both or accepted by both, expand to the same sets,
//! and give the same slots.
//!
//! The interpreter is `$CELERIAC_TEST_PYTHON`, else `<workspace>/.venv/bin/python`; without one the
//! tests fail. `CELERIAC_DIFF_SEED` and `CELERIAC_DIFF_COUNT` change the generated specs.

// Only the `celery` column is read here; `dst.rs` reads the others.
#[allow(dead_code)]
#[path = "support/dst_cases.rs"]
mod dst_cases;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use celeriac_schedule::crontab::{parse_zone, Crontab, CrontabError};
use chrono::{DateTime, Offset as _, TimeDelta, TimeZone as _, Utc};
use chrono_tz::Tz;
use serde_json::{json, Value};

use dst_cases::DST_CASES;

const DEFAULT_SEED: u64 = 20_250_309;
const DEFAULT_COUNT: u64 = 2000;
const OCCURRENCES: usize = 50;
/// The zone whose slots may differ around its clock changes (see `crontab.rs`'s module docs).
const DST_ZONE: &str = "America/New_York";

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("CELERIAC_TEST_PYTHON") {
        let p = PathBuf::from(p);
        assert!(p.exists(), "CELERIAC_TEST_PYTHON={} does not exist", p.display());
        return p;
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    assert!(
        venv.exists(),
        "no Python with Celery for the differential test: set CELERIAC_TEST_PYTHON or create {} \
         (with celery installed)",
        venv.display()
    );
    venv
}

/// Runs the oracle with `args`, `stdin` on its standard input, and parses its JSON.
fn oracle(args: &[&str], stdin: &str) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/celery_oracle.py");
    let python = python();
    let mut child = Command::new(&python)
        .arg(&script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes()).unwrap_or_else(|e| panic!("writing to the oracle: {e}"));
    }
    let output = child.wait_with_output().unwrap_or_else(|e| panic!("waiting for the oracle: {e}"));
    assert!(
        output.status.success(),
        "{} {} {args:?} failed ({}):\n{}",
        python.display(),
        script.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("oracle output is not JSON: {e}"))
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|e| panic!("{name}={v:?}: {e}")),
        Err(_) => default,
    }
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("expected a string, got {v}"))
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc)).unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

fn format(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Whether the zone's offset changes within three hours of `t`.
fn near_clock_change(tz: Tz, t: DateTime<Utc>) -> bool {
    let offset = |t: DateTime<Utc>| tz.offset_from_utc_datetime(&t.naive_utc()).fix();
    let hour = TimeDelta::hours(1);
    (-3..3).any(|h| offset(t + hour * h) != offset(t + hour * (h + 1)))
}

/// Counts kept while comparing, for the summary line.
#[derive(Default, Debug)]
struct Tally {
    specs: usize,
    refused: usize,
    runs: usize,
    slots: usize,
    dst_runs: usize,
    dst_differences: usize,
}

/// Compares one accepted spec's runs. Returns failure messages.
fn compare_runs(case: &Value, crontab: &Crontab, tally: &mut Tally) -> Vec<String> {
    let mut failures = vec![];
    let id = &case["id"];
    let runs = case["runs"].as_array().map_or(&[][..], Vec::as_slice);
    for run in runs {
        let zone = text(&run["zone"]);
        let tz = parse_zone(zone).unwrap_or_else(|e| panic!("{e}"));
        let after = utc(text(&run["after"]));
        let celery: Vec<&str> = run["slots"].as_array().map_or(vec![], |a| a.iter().map(text).collect());
        let mut ours = Vec::with_capacity(celery.len());
        let mut t = after;
        for _ in 0..celery.len() {
            match crontab.next_after(tz, t) {
                Ok(next) => {
                    ours.push(format(next));
                    t = next;
                }
                Err(e) => {
                    ours.push(format!("error: {e}"));
                    break;
                }
            }
        }
        tally.runs += 1;
        tally.slots += celery.len();
        if zone != DST_ZONE {
            if ours != celery {
                let first = ours.iter().zip(&celery).position(|(o, c)| o != c).unwrap_or(0);
                failures.push(format!(
                    "spec #{id} {} ({}) in {zone} after {after}: slot {first} is {:?} here, {:?} in Celery",
                    case["fields"],
                    crontab.cron_expr(),
                    ours.get(first),
                    celery.get(first)
                ));
            }
            continue;
        }
        // In a zone with daylight saving time, the slots may differ only within three hours of a
        // clock change, and only in the ways `crontab.rs` documents; compare the common span.
        // chrono-tz's tables apply daylight saving time up to 2099 only (Python's zoneinfo goes
        // on), so the comparison stops there.
        tally.dst_runs += 1;
        let parse_all = |list: &[String]| -> Option<Vec<DateTime<Utc>>> {
            list.iter().map(|s| DateTime::parse_from_rfc3339(s).ok().map(|t| t.with_timezone(&Utc))).collect()
        };
        let celery_owned: Vec<String> = celery.iter().map(|s| (*s).to_owned()).collect();
        let (Some(o), Some(c)) = (parse_all(&ours), parse_all(&celery_owned)) else {
            failures.push(format!("spec #{id} in {zone}: ours {ours:?}, Celery {celery:?}"));
            continue;
        };
        let end = [o.last(), c.last(), Some(&utc("2099-01-01T00:00:00Z"))].into_iter().flatten().min().copied();
        let Some(end) = end else { continue };
        let o: BTreeSet<_> = o.into_iter().filter(|t| *t <= end).collect();
        let c: BTreeSet<_> = c.into_iter().filter(|t| *t <= end).collect();
        for t in o.symmetric_difference(&c) {
            tally.dst_differences += 1;
            if !near_clock_change(tz, *t) {
                let side = if o.contains(t) { "here only" } else { "in Celery only" };
                failures.push(format!(
                    "spec #{id} {} ({}) in {zone} after {after}: {} {side}, far from a clock change",
                    case["fields"],
                    crontab.cron_expr(),
                    format(*t)
                ));
            }
        }
    }
    failures
}

fn compare_case(case: &Value, tally: &mut Tally) -> Vec<String> {
    let fields: Vec<&str> = case["fields"].as_array().map_or(vec![], |a| a.iter().map(text).collect());
    let [minute, hour, dow, dom, moy] = fields[..] else { panic!("bad case {case}") };
    let ours = match case["from_string"].as_str() {
        Some(s) => Crontab::from_string(s),
        None => Crontab::new(minute, hour, dow, dom, moy),
    };
    tally.specs += 1;
    let id = &case["id"];
    let accepted = case["ok"].as_bool().unwrap_or(false);
    match (ours, accepted) {
        (Ok(crontab), true) => {
            let values: Vec<Vec<u32>> = case["values"]
                .as_array()
                .map_or(vec![], |a| a.iter().map(|v| serde_json::from_value(v.clone()).unwrap_or_default()).collect());
            if crontab.values().to_vec() != values {
                return vec![format!("spec #{id} {fields:?}: sets {:?} here, {values:?} in Celery", crontab.values())];
            }
            compare_runs(case, &crontab, tally)
        }
        (Ok(crontab), false) => vec![format!(
            "spec #{id} {fields:?}: accepted here ({}), Celery refuses it: {}: {}",
            crontab.cron_expr(),
            case["error"],
            case["message"]
        )],
        (Err(e), true) => vec![format!("spec #{id} {fields:?}: refused here ({e}), Celery accepts it")],
        (Err(e), false) => {
            tally.refused += 1;
            let message = text(&case["message"]);
            let same_reason = if message.contains("values to unpack") {
                matches!(e, CrontabError::FieldCount { .. })
            } else {
                e.to_string().ends_with(message)
            };
            if same_reason {
                vec![]
            } else {
                vec![format!("spec #{id} {fields:?}: refused here with {e:?} ({e}), Celery says {message:?}")]
            }
        }
    }
}

#[test]
fn random_specs_match_celery() {
    let seed = env_u64("CELERIAC_DIFF_SEED", DEFAULT_SEED);
    let count = env_u64("CELERIAC_DIFF_COUNT", DEFAULT_COUNT);
    let result = oracle(
        &[
            "random",
            "--seed",
            &seed.to_string(),
            "--count",
            &count.to_string(),
            "--occurrences",
            &OCCURRENCES.to_string(),
        ],
        "",
    );
    let cases = result["cases"].as_array().unwrap_or_else(|| panic!("no cases in the oracle's output"));
    assert_eq!(cases.len() as u64, count);
    let mut tally = Tally::default();
    let mut failures = vec![];
    for case in cases {
        failures.extend(compare_case(case, &mut tally));
    }
    eprintln!("celery {} seed {seed}: {tally:?}", result["celery"]);
    assert!(
        failures.is_empty(),
        "{} differences from Celery {} (seed {seed}):\n{}",
        failures.len(),
        result["celery"],
        failures.iter().take(40).cloned().collect::<Vec<_>>().join("\n")
    );
    // The generator must keep exercising both sides of every comparison.
    assert!(tally.refused * 20 >= tally.specs, "too few refused specs: {tally:?}");
    assert!(tally.refused * 2 <= tally.specs, "too few accepted specs: {tally:?}");
    assert!(tally.dst_runs > 0 && tally.runs > tally.dst_runs, "{tally:?}");
}

/// The `celery` column of the daylight saving cases (`tests/support/dst_cases.rs`, asserted
/// against celeriac in `dst.rs`) is what real Celery answers.
#[test]
fn dst_cases_celery_column_is_real_celery() {
    let requests: Vec<Value> = DST_CASES
        .iter()
        .map(|c| json!({"zone": c.zone, "spec": c.spec, "after": c.after, "n": c.celery.len()}))
        .collect();
    let answers = oracle(&["slots"], &Value::Array(requests).to_string());
    let answers = answers.as_array().unwrap_or_else(|| panic!("expected a list, got {answers}"));
    assert_eq!(answers.len(), DST_CASES.len());
    for (case, answer) in DST_CASES.iter().zip(answers) {
        let celery: Vec<&str> = answer.as_array().map_or(vec![], |a| a.iter().map(text).collect());
        assert_eq!(celery, case.celery, "{:?} in {} after {}", case.spec, case.zone, case.after);
    }
}
