//! The app's periodic schedule into the database: `celeriac worker -B -A proj`, `celeriac beat
//! -A proj` and `celeriac schedule import -A proj` run the app's interpreter once to list what
//! Celery Beat would run (`celeriac._schedule_export`), and write it by name
//! ([`Store::schedule_sync`]).

use std::process::Command;

use celeriac_store::{ScheduleDefinition, Store, SyncReport, When, REMOVED_FROM_APP};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::python::interp::Interpreter;

/// What `python -c EXPORT_BOOTSTRAP --app SPEC` runs (the working directory is dropped from
/// `sys.path` as for pool children; Celery's `find_app` imports the app from it).
const EXPORT_BOOTSTRAP: &str = "import sys\nif sys.path[:1] == ['']: del sys.path[0]\nfrom celeriac._schedule_export import main\nsys.exit(main())";

/// Why the app's schedule could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// The interpreter could not be started.
    #[error("cannot run {python:?} to read the app's beat_schedule: {source}")]
    Spawn {
        /// The interpreter.
        python: String,
        /// Why.
        source: std::io::Error,
    },
    /// The export failed (the app did not load, …).
    #[error("cannot read the app's beat_schedule:\n{stderr}")]
    Export {
        /// What the interpreter printed.
        stderr: String,
    },
    /// The export printed something else than expected.
    #[error("the schedule export printed unexpected output ({source}): {stdout}")]
    Output {
        /// Why it does not parse.
        source: serde_json::Error,
        /// What it printed.
        stdout: String,
    },
    /// The database refused the schedule.
    #[error(transparent)]
    Store(#[from] celeriac_store::Error),
}

#[derive(Debug, Deserialize)]
struct Export {
    #[serde(default)]
    app: String,
    timezone: String,
    entries: Vec<Entry>,
    #[serde(default)]
    warnings: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Entry {
    name: String,
    task: String,
    args_json: String,
    kwargs_json: String,
    options_json: String,
    schedule: Spec,
    #[serde(default)]
    policy: Policy,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Spec {
    Crontab { fields: [String; 5] },
    Interval { seconds: f64, relative: bool },
    Clocked { at: String },
    Solar { event: String, lat: f64, lon: f64 },
    Unsupported { reason: String },
}

#[derive(Debug, Default, Deserialize)]
struct Policy {
    catchup: Option<String>,
    catchup_window: Option<f64>,
    catchup_max: Option<i32>,
    overlap: Option<String>,
}

/// An app's schedule, read and converted.
#[derive(Debug, Clone, Default)]
pub struct AppSchedule {
    /// The rows' source: `app:<the app's main name>`, so apps sharing a database keep their
    /// own schedules.
    pub source: String,
    /// The definitions with their ramp buckets.
    pub definitions: Vec<(ScheduleDefinition, i16)>,
    /// Entries celeriac cannot fire, with the reason (solar, custom schedule classes).
    pub unsupported: Vec<(String, String)>,
    /// What the export warned about (options celeriac does not carry, …).
    pub warnings: Vec<String>,
}

/// Reads the periodic schedule of the app `spec` with `interpreter`.
///
/// # Errors
/// [`SyncError`].
pub fn read_app_schedule(interpreter: &Interpreter, spec: &str) -> Result<AppSchedule, SyncError> {
    let out = Command::new(&interpreter.program)
        .args(["-c", EXPORT_BOOTSTRAP, "--app", spec])
        .output()
        .map_err(|source| SyncError::Spawn { python: interpreter.program.clone(), source })?;
    if !out.status.success() {
        return Err(SyncError::Export { stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned() });
    }
    let export: Export = serde_json::from_slice(&out.stdout)
        .map_err(|source| SyncError::Output { source, stdout: String::from_utf8_lossy(&out.stdout).into_owned() })?;
    Ok(convert(export))
}

fn convert(export: Export) -> AppSchedule {
    let mut schedule =
        AppSchedule { source: format!("app:{}", export.app), warnings: export.warnings, ..AppSchedule::default() };
    for entry in export.entries {
        let when = match entry.schedule {
            Spec::Crontab { fields } => When::Crontab(fields),
            Spec::Interval { seconds, relative } => When::Interval { seconds, relative },
            Spec::Clocked { at } => match DateTime::parse_from_rfc3339(&at) {
                Ok(t) => When::Clocked(t.with_timezone(&Utc)),
                Err(e) => {
                    schedule.unsupported.push((entry.name, format!("clocked time {at:?}: {e}")));
                    continue;
                }
            },
            Spec::Solar { event, lat, lon } => {
                schedule.unsupported.push((
                    entry.name.clone(),
                    "solar schedules are not supported by celeriac; keep them on Celery Beat".into(),
                ));
                When::Solar(serde_json::json!({"event": event, "lat": lat, "lon": lon}).to_string())
            }
            Spec::Unsupported { reason } => {
                schedule.unsupported.push((entry.name, reason));
                continue;
            }
        };
        if let Err(reason) = check_policy(&when, &entry.policy) {
            schedule.unsupported.push((entry.name, reason));
            continue;
        }
        let bucket = super::ramp_bucket(&entry.name);
        let definition = ScheduleDefinition {
            name: entry.name,
            task: entry.task,
            args_json: entry.args_json,
            kwargs_json: entry.kwargs_json,
            options_json: entry.options_json,
            when,
            tz: export.timezone.clone(),
            start_at: None,
            end_at: None,
            one_off: false,
            catchup: entry.policy.catchup.unwrap_or_else(|| "latest".into()),
            catchup_window_seconds: entry.policy.catchup_window,
            catchup_max: entry.policy.catchup_max.unwrap_or(100),
            overlap: entry.policy.overlap.unwrap_or_else(|| "allow".into()),
        };
        schedule.definitions.push((definition, bucket));
    }
    schedule
}

/// What the schema accepts, checked per entry, so one bad entry is reported and the others
/// are synced.
fn check_policy(when: &When, policy: &Policy) -> Result<(), String> {
    if let When::Interval { seconds, .. } = when {
        if !(0.001..3.2e9).contains(seconds) {
            return Err(format!("an interval of {seconds} seconds (celeriac takes 0.001 s to 100 years)"));
        }
    }
    if let Some(c) = policy.catchup.as_deref().filter(|c| !["latest", "skip", "all"].contains(c)) {
        return Err(format!("celeriac_schedule_policies: catchup {c:?} (latest, skip or all)"));
    }
    if let Some(o) = policy.overlap.as_deref().filter(|o| !["allow", "skip"].contains(o)) {
        return Err(format!("celeriac_schedule_policies: overlap {o:?} (allow or skip)"));
    }
    if let Some(w) = policy.catchup_window.filter(|w| !(w.is_finite() && *w > 0.0 && *w < 3.2e9)) {
        return Err(format!("celeriac_schedule_policies: catchup_window {w} (seconds, positive, under 100 years)"));
    }
    if let Some(m) = policy.catchup_max.filter(|m| !(1..=100_000).contains(m)) {
        return Err(format!("celeriac_schedule_policies: catchup_max {m} (1 to 100,000)"));
    }
    Ok(())
}

/// Reads the app's schedule and writes it (source `app:<main>`; entries gone from the code disabled),
/// logging what celeriac cannot fire. New rows are owned by `owner_for_new`; `None` (`-B`):
/// by celeriac, unless a ramp is set (`celeriac schedule import` started a migration), in
/// which case by whom the ramp says, so Beat and celeriac never both fire a new entry.
///
/// # Errors
/// [`SyncError`].
pub async fn sync_app_schedule(
    store: &Store,
    interpreter: &Interpreter,
    spec: &str,
    owner_for_new: Option<&str>,
) -> Result<(AppSchedule, SyncReport), SyncError> {
    let interpreter = interpreter.clone();
    let spec_owned = spec.to_owned();
    let schedule = tokio::task::spawn_blocking(move || read_app_schedule(&interpreter, &spec_owned))
        .await
        .map_err(|e| SyncError::Export { stderr: e.to_string() })??;
    for warning in &schedule.warnings {
        tracing::warn!("beat_schedule: {warning}");
    }
    for (name, reason) in &schedule.unsupported {
        tracing::warn!(schedule = %name, "beat_schedule: {name} is not fired by celeriac: {reason}");
    }
    let report =
        store.schedule_sync(&schedule.definitions, &schedule.source, owner_for_new, Some(REMOVED_FROM_APP)).await?;
    tracing::info!(
        entries = schedule.definitions.len(),
        added = report.added,
        updated = report.updated,
        disabled = report.disabled,
        "beat_schedule synced"
    );
    Ok((schedule, report))
}
