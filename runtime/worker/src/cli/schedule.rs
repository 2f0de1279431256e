//! `celeriac schedule …`: the periodic schedules in the database (the Beat replacement).

use std::io::{BufRead, Write};

use celeriac_schedule::{parse_zone, Crontab};
use celeriac_store::{Schedule, ScheduleDefinition, When, SCHEDULER_LEASE};
use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, Subcommand};
use serde_json::{json, Value as Json};

use super::{store, CliError};
use crate::scheduler::{fire, ramp_bucket};

/// `celeriac schedule` actions.
#[derive(Debug, Subcommand)]
pub enum ScheduleAction {
    /// List every schedule: owner, timing, next and last run, state.
    List {
        /// One JSON object per schedule, one per line.
        #[arg(long)]
        json: bool,
    },
    /// Show one schedule.
    Show {
        /// Schedule name.
        name: String,
        /// As a JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Who fires what: the leader, then every schedule with its next run, last fire and why it
    /// is disabled or paused.
    Status,
    /// Add a schedule (fired by celeriac unless --owner beat).
    Add(Box<AddArgs>),
    /// Change a schedule; options not given keep their value. A timing change re-baselines it.
    Edit(Box<EditArgs>),
    /// Enable a disabled schedule (it fires from its next slot on).
    Enable {
        /// Schedule name.
        name: String,
    },
    /// Disable a schedule.
    Disable {
        /// Schedule name.
        name: String,
        /// Why (shown by list and status).
        #[arg(long, default_value = "disabled by an operator")]
        reason: String,
    },
    /// Pause a schedule; it stays paused across syncs from the app's code.
    Pause {
        /// Schedule name.
        name: String,
        /// Why (shown by list and status).
        #[arg(long, default_value = "paused by an operator")]
        reason: String,
    },
    /// Resume a paused schedule (it fires from its next slot on, never a missed one at once).
    Resume {
        /// Schedule name.
        name: String,
    },
    /// Delete a schedule and its fire history.
    Remove {
        /// Schedule name.
        name: String,
    },
    /// Fire a schedule once now, outside its slots; prints the task id.
    RunNow {
        /// Schedule name.
        name: String,
    },
    /// Import the app's beat_schedule (-A) as schedules Celery Beat keeps firing until ramped
    /// (or pinned) to celeriac; entries gone from the code are disabled. Run Beat with
    /// `-S celeriac.beat:Scheduler` for a strict hand-over (docs/beat.md).
    Import(ImportArgs),
    /// Move schedules between Celery Beat and celeriac: celeriac fires those whose stable
    /// bucket (0-99) is below PERCENT (pins aside); 0 returns everything to Beat. Each move is
    /// one transaction and never fires a slot twice; a move that must wait for a quiet moment
    /// between slots waits (unless --no-wait).
    Ramp(RampArgs),
    /// Pin a schedule to an owner, overriding the ramp (`--owner none` unpins); it moves as
    /// `ramp` moves schedules.
    Pin(PinArgs),
    /// Compute crontab slots: reads JSON lines from stdin, {"crontab": [minute, hour,
    /// day_of_week, day_of_month, month_of_year]} or {"cron": "m h dom mon dow"}, with "tz",
    /// "after" (ISO 8601) and "count"; writes {"slots": [...]} or {"error": "..."} per line.
    Preview,
}

/// Timing and options of `schedule add`/`edit`.
#[derive(Debug, Args, Default)]
pub struct SpecArgs {
    /// Task name.
    #[arg(long)]
    pub task: Option<String>,
    /// Crontab as a cron string, "minute hour day_of_month month_of_year day_of_week"
    /// (Celery's crontab.from_string; 0 = Sunday; day fields are ANDed as in Celery).
    #[arg(long, conflicts_with_all = ["every", "clocked"])]
    pub crontab: Option<String>,
    /// Interval in seconds.
    #[arg(long, conflicts_with = "clocked")]
    pub every: Option<f64>,
    /// With --every: slots on the interval's resolution (Celery's relative=True).
    #[arg(long)]
    pub relative: bool,
    /// Fire once at this ISO-8601 time.
    #[arg(long)]
    pub clocked: Option<String>,
    /// Positional arguments, a JSON array.
    #[arg(long)]
    pub args: Option<String>,
    /// Keyword arguments, a JSON object.
    #[arg(long)]
    pub kwargs: Option<String>,
    /// Queue of the fired tasks.
    #[arg(short = 'Q', long)]
    pub queue: Option<String>,
    /// Priority of the fired tasks, 0–255.
    #[arg(long)]
    pub priority: Option<i64>,
    /// The fired tasks expire this many seconds after each fire.
    #[arg(long)]
    pub expires: Option<f64>,
    /// Extra message headers, a JSON object.
    #[arg(long)]
    pub headers: Option<String>,
    /// IANA time zone the crontab is evaluated in [default: UTC].
    #[arg(long)]
    pub tz: Option<String>,
    /// Not before this ISO-8601 time.
    #[arg(long)]
    pub start: Option<String>,
    /// Not after this ISO-8601 time.
    #[arg(long)]
    pub end: Option<String>,
    /// Disable after the first fire.
    #[arg(long)]
    pub one_off: bool,
    /// Missed slots: latest (fire the latest once, as Beat does), skip, or all (within the
    /// window, at most --catchup-max).
    #[arg(long, value_parser = ["latest", "skip", "all"])]
    pub catchup: Option<String>,
    /// Missed slots older than this many seconds are not fired.
    #[arg(long)]
    pub catchup_window: Option<f64>,
    /// At most this many missed slots fired by --catchup all.
    #[arg(long)]
    pub catchup_max: Option<i32>,
    /// allow (Beat's behaviour) or skip a slot while the previous fire is queued or running.
    #[arg(long, value_parser = ["allow", "skip"])]
    pub overlap: Option<String>,
}

/// `schedule add` options.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// Schedule name (unique).
    pub name: String,
    /// Timing and options.
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Who fires it: celeriac, or Celery Beat (until ramped).
    #[arg(long, default_value = "celeriac", value_parser = ["celeriac", "beat"])]
    pub owner: String,
}

/// `schedule import` options.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Import django-celery-beat's periodic tasks from its tables in this database instead of
    /// the app's beat_schedule (no -A needed).
    #[arg(long)]
    pub django_celery_beat: bool,
    /// Python interpreter of the app [default: $CELERIAC_PYTHON, else $VIRTUAL_ENV/bin/python,
    /// else python3 on PATH].
    #[arg(long, env = "CELERIAC_PYTHON", value_name = "PATH")]
    pub python: Option<String>,
}

/// `schedule ramp` options.
#[derive(Debug, Args)]
pub struct RampArgs {
    /// Share of schedules celeriac fires, 0-100.
    #[arg(long, value_parser = clap::value_parser!(i16).range(0..=100))]
    pub percent: i16,
    /// Seconds kept clear of a slot on either side when a schedule moves from a Beat that does
    /// not record its sends (at least Beat's reload interval, beat_max_loop_interval).
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    pub margin: f64,
    /// Move what may move now and leave the rest for a later run.
    #[arg(long)]
    pub no_wait: bool,
}

/// `schedule pin` options.
#[derive(Debug, Args)]
pub struct PinArgs {
    /// Schedule name.
    pub name: String,
    /// beat, celeriac, or none (the ramp decides).
    #[arg(long, value_parser = ["beat", "celeriac", "none"])]
    pub owner: String,
    /// See `ramp --margin`.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    pub margin: f64,
    /// See `ramp --no-wait`.
    #[arg(long)]
    pub no_wait: bool,
}

/// `schedule edit` options.
#[derive(Debug, Args)]
pub struct EditArgs {
    /// Schedule name.
    pub name: String,
    /// Timing and options.
    #[command(flatten)]
    pub spec: SpecArgs,
}

pub(super) async fn run(url: &str, app: Option<&str>, action: ScheduleAction) -> Result<(), CliError> {
    if matches!(action, ScheduleAction::Preview) {
        return preview(std::io::stdin().lock(), std::io::stdout().lock());
    }
    let store = store(url, 2)?;
    match action {
        ScheduleAction::List { json } => {
            let rows = store.schedule_list().await?;
            if json {
                for s in &rows {
                    println!("{}", to_json(s));
                }
            } else {
                print_table(&rows);
            }
        }
        ScheduleAction::Show { name, json } => {
            let s = store.schedule_get(&name).await?;
            if json {
                println!("{}", to_json(&s));
            } else if let Json::Object(fields) = to_json(&s) {
                for (k, v) in fields {
                    println!("{k:>20}: {}", if let Json::String(s) = &v { s.clone() } else { v.to_string() });
                }
            }
        }
        ScheduleAction::Status => {
            println!("ramp: {}% of schedules (by bucket) fired by celeriac", store.schedule_ramp_get().await?);
            match store.lease_get(SCHEDULER_LEASE).await? {
                Some(l) if l.valid => println!(
                    "leader: {} (term {}, since {}, lease until {})",
                    l.holder_name,
                    l.term,
                    time(l.acquired_at),
                    time(l.expires_at)
                ),
                Some(l) => {
                    println!("leader: none (the last, {} at term {}, let its lease run out)", l.holder_name, l.term)
                }
                None => println!("leader: none (no `celeriac worker -B` or `celeriac beat` has run)"),
            }
            let rows = store.schedule_list().await?;
            let by = |owner: &str| rows.iter().filter(|s| s.owner == owner).count();
            println!("schedules: {} ({} fired by celeriac, {} by Celery Beat)", rows.len(), by("celeriac"), by("beat"));
            print_table(&rows);
        }
        ScheduleAction::Add(args) => {
            let definition = definition(&args.name, &args.spec, None)?;
            store.schedule_add(&definition, &args.owner, ramp_bucket(&args.name)).await?;
            println!("added {}", args.name);
        }
        ScheduleAction::Edit(args) => {
            let current = store.schedule_get(&args.name).await?;
            let definition = definition(&args.name, &args.spec, Some(&current.definition))?;
            store.schedule_update(&definition).await?;
            println!("updated {}", args.name);
        }
        ScheduleAction::Enable { name } => store.schedule_set_enabled(&name, true, None).await?,
        ScheduleAction::Disable { name, reason } => store.schedule_set_enabled(&name, false, Some(&reason)).await?,
        ScheduleAction::Pause { name, reason } => store.schedule_set_paused(&name, true, Some(&reason)).await?,
        ScheduleAction::Resume { name } => store.schedule_set_paused(&name, false, None).await?,
        ScheduleAction::Remove { name } => store.schedule_remove(&name).await?,
        ScheduleAction::RunNow { name } => {
            let (_, message) = store.schedule_run_now(&name, |s, slot| fire::build(s, slot, slot)).await?;
            println!("{}", message.task_id.unwrap_or_default());
        }
        ScheduleAction::Import(args) => import(&store, app, &args).await?,
        ScheduleAction::Ramp(args) => {
            store.schedule_ramp_set(args.percent).await?;
            println!("ramp: celeriac fires the schedules in buckets below {}", args.percent);
            move_misplaced(&store, args.margin, args.no_wait).await?;
        }
        ScheduleAction::Pin(args) => {
            let owner = (args.owner != "none").then_some(args.owner.as_str());
            store.schedule_pin(&args.name, owner).await?;
            move_misplaced(&store, args.margin, args.no_wait).await?;
        }
        ScheduleAction::Preview => unreachable!("handled above"),
    }
    Ok(())
}

/// `schedule import --django-celery-beat`.
async fn import_django(store: &celeriac_store::Store) -> Result<(), CliError> {
    use crate::scheduler::django::{convert, DISABLED_IN_DJANGO};
    let rows = store.django_periodic_tasks().await?;
    if rows.is_empty() {
        return Err(CliError::Schedule(
            "no django-celery-beat periodic tasks in this database (django_celery_beat_periodictask)".into(),
        ));
    }
    let imported = convert(rows);
    store.schedule_ramp_start().await?;
    let report = store
        .schedule_sync(&imported.definitions, "django", Some("beat"), Some(celeriac_store::REMOVED_FROM_DJANGO))
        .await?;
    store.schedule_follow_source_enabled(&imported.disabled, &imported.enabled, DISABLED_IN_DJANGO).await?;
    println!(
        "imported {} django-celery-beat periodic tasks: {} new (fired by Celery Beat until ramped), {} updated, {} disabled",
        imported.definitions.len(),
        report.added,
        report.updated,
        report.disabled
    );
    for (name, reason) in imported.skipped {
        println!("  {name}: not imported: {reason}");
    }
    if !imported.unrouted.is_empty() {
        println!(
            "  no queue on {}: celeriac fires them into 'celery' (Beat would apply the app's task_routes and \
             task_default_queue; set the queue on the periodic task if those route elsewhere)",
            imported.unrouted.join(", ")
        );
    }
    Ok(())
}

#[cfg(feature = "python")]
async fn import(store: &celeriac_store::Store, app: Option<&str>, args: &ImportArgs) -> Result<(), CliError> {
    use crate::python::interp;
    if args.django_celery_beat {
        return import_django(store).await;
    }
    let Some(app) = app else {
        return Err(CliError::Schedule("schedule import needs the app: celeriac -A proj schedule import".into()));
    };
    let interpreter = interp::probe(&interp::choose(args.python.as_deref()))?;
    store.schedule_ramp_start().await?;
    let (schedule, report) = crate::scheduler::sync::sync_app_schedule(store, &interpreter, app, Some("beat")).await?;
    println!(
        "imported {} entries of {app}'s beat_schedule: {} new (fired by Celery Beat until ramped), {} updated, {} disabled",
        schedule.definitions.len(),
        report.added,
        report.updated,
        report.disabled
    );
    for (name, reason) in schedule.unsupported {
        println!("  {name}: stays with Beat: {reason}");
    }
    Ok(())
}

#[cfg(not(feature = "python"))]
async fn import(store: &celeriac_store::Store, _app: Option<&str>, args: &ImportArgs) -> Result<(), CliError> {
    if args.django_celery_beat {
        return import_django(store).await;
    }
    Err(CliError::NoEmbeddedPython)
}

/// Moves every schedule whose owner is not the one the ramp and its pin say, one transaction
/// each; waits for the quiet moment of those that need one unless `no_wait`.
async fn move_misplaced(store: &celeriac_store::Store, margin: f64, no_wait: bool) -> Result<(), CliError> {
    use crate::scheduler::handover::{to_beat, to_celeriac, Handover};
    let margin = chrono::TimeDelta::milliseconds((margin.clamp(0.0, 3600.0) * 1000.0) as i64);
    let mut reported = std::collections::HashSet::new();
    loop {
        let mut earliest: Option<chrono::TimeDelta> = None;
        let mut waiting = 0;
        for (schedule, target) in store.schedule_misplaced().await? {
            let name = schedule.definition.name.clone();
            let mut outcome = None;
            let moved = store
                .schedule_flip(&name, &target, |row, now| {
                    let handover =
                        if target == "beat" { to_beat(row, now, margin) } else { to_celeriac(row, now, margin) };
                    match handover {
                        Handover::Now(at) => Some(at),
                        other => {
                            outcome = Some((other, now));
                            None
                        }
                    }
                })
                .await?;
            match outcome {
                _ if moved => println!("{name}: {} -> {target}", schedule.owner),
                Some((Handover::Wait(at), now)) => {
                    waiting += 1;
                    let wait = at - now;
                    earliest = Some(earliest.map_or(wait, |e| e.min(wait)));
                    if reported.insert(name.clone()) {
                        println!("{name}: waits until {} to move to {target} (between two slots)", time(at));
                    }
                }
                Some((Handover::Stay(reason), _)) if reported.insert(name.clone()) => {
                    println!("{name}: stays with {}: {reason}", schedule.owner);
                }
                _ => {}
            }
        }
        match earliest {
            Some(wait) if !no_wait => {
                tokio::time::sleep(wait.to_std().unwrap_or_default() + std::time::Duration::from_millis(50)).await;
            }
            _ => {
                if waiting > 0 {
                    println!("{waiting} schedule(s) left to move: run the command again");
                }
                return Ok(());
            }
        }
    }
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// How a schedule's timing reads: `crontab(…) zone`, `every Ns`, `at …`.
pub(crate) fn timing(d: &ScheduleDefinition) -> String {
    match &d.when {
        When::Crontab(f) => format!("crontab({} {} {} {} {}) {}", f[0], f[1], f[3], f[4], f[2], d.tz),
        When::Interval { seconds, relative } => {
            format!("every {seconds}s{}", if *relative { " (relative)" } else { "" })
        }
        When::Clocked(at) => format!("at {}", time(*at)),
        When::Solar(json) => format!("solar {json}"),
    }
}

fn state(s: &Schedule) -> String {
    match (s.enabled, s.paused) {
        (false, _) => format!("disabled: {}", s.disabled_reason.as_deref().unwrap_or("-")),
        (true, true) => format!("paused: {}", s.paused_reason.as_deref().unwrap_or("-")),
        (true, false) if s.owner == "beat" => "with Celery Beat".to_owned(),
        (true, false) => "active".to_owned(),
    }
}

fn print_table(rows: &[Schedule]) {
    println!(
        "{:<28} {:<8} {:<36} {:<20} {:<20} {:>6}  STATE",
        "NAME", "OWNER", "TIMING", "NEXT RUN", "LAST RUN", "RUNS"
    );
    for s in rows {
        let opt = |t: Option<DateTime<Utc>>| t.map_or_else(|| "-".to_owned(), time);
        println!(
            "{:<28} {:<8} {:<36} {:<20} {:<20} {:>6}  {}",
            s.definition.name,
            s.owner,
            timing(&s.definition),
            opt(s.next_run_at),
            opt(s.last_run_at),
            s.total_run_count,
            state(s)
        );
    }
}

fn to_json(s: &Schedule) -> Json {
    let d = &s.definition;
    let parse = |text: &str| serde_json::from_str::<Json>(text).unwrap_or(Json::Null);
    let t = |v: Option<DateTime<Utc>>| v.map(time);
    let when = match &d.when {
        When::Crontab(f) => json!({"kind": "crontab", "minute": f[0], "hour": f[1], "day_of_week": f[2],
            "day_of_month": f[3], "month_of_year": f[4]}),
        When::Interval { seconds, relative } => json!({"kind": "interval", "seconds": seconds, "relative": relative}),
        When::Clocked(at) => json!({"kind": "clocked", "at": time(*at)}),
        When::Solar(j) => json!({"kind": "solar", "solar": parse(j)}),
    };
    json!({
        "name": d.name, "task": d.task, "args": parse(&d.args_json), "kwargs": parse(&d.kwargs_json),
        "options": parse(&d.options_json), "schedule": when, "tz": d.tz, "start_at": t(d.start_at),
        "end_at": t(d.end_at), "one_off": d.one_off, "catchup": d.catchup,
        "catchup_window_seconds": d.catchup_window_seconds, "catchup_max": d.catchup_max, "overlap": d.overlap,
        "enabled": s.enabled, "disabled_reason": s.disabled_reason, "paused": s.paused,
        "paused_reason": s.paused_reason, "owner": s.owner, "owner_pin": s.owner_pin, "ramp_bucket": s.ramp_bucket,
        "source": s.source, "next_run_at": t(s.next_run_at), "last_slot_at": t(s.last_slot_at),
        "last_run_at": t(s.last_run_at), "last_task_id": s.last_task_id, "total_run_count": s.total_run_count,
        "last_beat_send_at": t(s.last_beat_send_at),
    })
}

fn parse_time(flag: &'static str, text: &str) -> Result<DateTime<Utc>, CliError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| text.parse::<chrono::NaiveDateTime>().map(|t| t.and_utc()))
        .map_err(|_| CliError::NotATime { flag, text: text.to_owned() })
}

fn json_of(flag: &'static str, text: &str, expected: &'static str) -> Result<Json, CliError> {
    let value: Json = serde_json::from_str(text).map_err(|e| CliError::Schedule(format!("--{flag}: {e}")))?;
    let ok = match expected {
        "array" => value.is_array(),
        _ => value.is_object(),
    };
    if ok {
        Ok(value)
    } else {
        Err(CliError::JsonShape { flag, expected })
    }
}

/// The definition `spec` describes, over `current` (edit) or from scratch (add); the crontab
/// and the zone are checked here, so a bad one is refused before it reaches the table.
fn definition(
    name: &str,
    spec: &SpecArgs,
    current: Option<&ScheduleDefinition>,
) -> Result<ScheduleDefinition, CliError> {
    let bad = |m: String| CliError::Schedule(m);
    let when = if let Some(cron) = &spec.crontab {
        let parsed = Crontab::from_string(cron).map_err(|e| bad(format!("--crontab {cron:?}: {e}")))?;
        let [minute, hour, dow, dom, month] = parsed.fields().map(str::to_owned);
        When::Crontab([minute, hour, dow, dom, month])
    } else if let Some(seconds) = spec.every {
        if !(seconds.is_finite() && seconds > 0.0) {
            return Err(bad("--every must be a positive number of seconds".into()));
        }
        When::Interval { seconds, relative: spec.relative }
    } else if let Some(at) = &spec.clocked {
        When::Clocked(parse_time("clocked", at)?)
    } else if let Some(current) = current {
        current.when.clone()
    } else {
        return Err(bad("say when: --crontab, --every or --clocked".into()));
    };
    let tz = spec.tz.clone().or_else(|| current.map(|c| c.tz.clone())).unwrap_or_else(|| "UTC".into());
    parse_zone(&tz).map_err(|e| bad(e.to_string()))?;
    if let When::Crontab([minute, hour, dow, dom, month]) = &when {
        let cron = Crontab::new(minute, hour, dow, dom, month).map_err(|e| bad(format!("crontab: {e}")))?;
        cron.next_after(parse_zone(&tz).map_err(|e| bad(e.to_string()))?, Utc::now())
            .map_err(|e| bad(format!("crontab: {e}")))?;
    }
    let task = match (&spec.task, current) {
        (Some(t), _) if !t.is_empty() => t.clone(),
        (None, Some(c)) => c.task.clone(),
        _ => return Err(bad("--task is required".into())),
    };
    let mut options: serde_json::Map<String, Json> = match current {
        Some(c) => serde_json::from_str(&c.options_json).unwrap_or_default(),
        None => serde_json::Map::new(),
    };
    if let Some(q) = &spec.queue {
        options.insert("queue".into(), json!(q));
    }
    if let Some(p) = spec.priority {
        if !(0..=255).contains(&p) {
            return Err(bad("--priority must be between 0 and 255".into()));
        }
        options.insert("priority".into(), json!(p));
    }
    if let Some(x) = spec.expires {
        options.insert("expires".into(), json!(x));
    }
    if let Some(h) = &spec.headers {
        options.insert("headers".into(), json_of("headers", h, "object")?);
    }
    let text = |flag, given: &Option<String>, kept: Option<&String>, expected, default: &str| match given {
        Some(t) => json_of(flag, t, expected).map(|v| v.to_string()),
        None => Ok(kept.cloned().unwrap_or_else(|| default.to_owned())),
    };
    let catchup_max = spec.catchup_max.or(current.map(|c| c.catchup_max)).unwrap_or(100);
    if catchup_max < 1 {
        return Err(bad("--catchup-max must be at least 1".into()));
    }
    if spec.catchup_window.is_some_and(|w| !(w.is_finite() && w > 0.0)) {
        return Err(bad("--catchup-window must be a positive number of seconds".into()));
    }
    let time = |flag, given: &Option<String>, kept: Option<DateTime<Utc>>| match given {
        Some(t) if t.is_empty() => Ok(None),
        Some(t) => parse_time(flag, t).map(Some),
        None => Ok(kept),
    };
    Ok(ScheduleDefinition {
        name: name.to_owned(),
        task,
        args_json: text("args", &spec.args, current.map(|c| &c.args_json), "array", "[]")?,
        kwargs_json: text("kwargs", &spec.kwargs, current.map(|c| &c.kwargs_json), "object", "{}")?,
        options_json: Json::Object(options).to_string(),
        when,
        tz,
        start_at: time("start", &spec.start, current.and_then(|c| c.start_at))?,
        end_at: time("end", &spec.end, current.and_then(|c| c.end_at))?,
        one_off: spec.one_off || current.is_some_and(|c| c.one_off),
        catchup: spec.catchup.clone().or(current.map(|c| c.catchup.clone())).unwrap_or_else(|| "latest".into()),
        catchup_window_seconds: spec.catchup_window.or(current.and_then(|c| c.catchup_window_seconds)),
        catchup_max,
        overlap: spec.overlap.clone().or(current.map(|c| c.overlap.clone())).unwrap_or_else(|| "allow".into()),
    })
}

/// `schedule preview`: JSON lines in, JSON lines out (see [`ScheduleAction::Preview`]).
fn preview(input: impl BufRead, mut output: impl Write) -> Result<(), CliError> {
    for line in input.lines() {
        let line = line.map_err(|source| CliError::ReadFile { path: "-".into(), source })?;
        if line.trim().is_empty() {
            continue;
        }
        let answer = match preview_one(&line) {
            Ok(slots) => json!({ "slots": slots }),
            Err(e) => json!({ "error": e }),
        };
        writeln!(output, "{answer}").map_err(|source| CliError::ReadFile { path: "stdout".into(), source })?;
    }
    Ok(())
}

fn preview_one(line: &str) -> Result<Vec<String>, String> {
    let request: Json = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let cron = match (&request["crontab"], &request["cron"]) {
        (Json::Array(fields), _) if fields.len() == 5 => {
            let f: Vec<String> =
                fields.iter().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned)).collect();
            Crontab::new(&f[0], &f[1], &f[2], &f[3], &f[4])
        }
        (_, Json::String(text)) => Crontab::from_string(text),
        _ => return Err("give \"crontab\": [5 fields] or \"cron\": \"m h dom mon dow\"".into()),
    }
    .map_err(|e| e.to_string())?;
    let tz = parse_zone(request["tz"].as_str().unwrap_or("UTC")).map_err(|e| e.to_string())?;
    let mut after = match request["after"].as_str() {
        Some(t) => DateTime::parse_from_rfc3339(t).map_err(|e| format!("after: {e}"))?.with_timezone(&Utc),
        None => Utc::now(),
    };
    let count = request["count"].as_u64().unwrap_or(10).min(10_000);
    let mut slots = Vec::new();
    for _ in 0..count {
        after = cron.next_after(tz, after).map_err(|e| e.to_string())?;
        slots.push(after.to_rfc3339_opts(SecondsFormat::AutoSi, true));
    }
    Ok(slots)
}
