//! The `celeriac` command line. [`main`] is the whole binary; a Rust application with its own
//! handlers calls it with its own [`Registry`] to get the same CLI.
//!
//! This module holds the argument definitions shared by every command ([`Cli`], [`Command`]),
//! the dispatch and [`CliError`]; each command's options and body live in a file of their own
//! (`worker.rs`, `dashboard.rs`, `send.rs`, `enqueue_envelopes.rs`, `inspect.rs`, `dead_letters.rs`,
//! `migrate.rs`, `queue.rs`, `rate_limit.rs`; `bench` is [`crate::bench`]).

use std::process::ExitCode;

use celeriac_store::{Store, StoreConfig};
use clap::{Parser, Subcommand};

mod banner;
mod beat;
mod daemon;
mod dashboard;
mod dead_letters;
mod enqueue_envelopes;
mod inspect;
mod migrate;
mod queue;
mod rate_limit;
mod revoke;
mod schedule;
mod send;
mod worker;

pub use beat::BeatArgs;
pub use daemon::{DaemonArgs, DaemonError};
pub use dashboard::{DashboardAccess, DashboardArgs};
pub use dead_letters::{DeadLetterAction, DeadLetterSelection};
pub use enqueue_envelopes::EnvelopeArgs;
pub use inspect::Inspect;
pub use queue::QueueAction;
pub use rate_limit::RateLimitAction;
pub(crate) use schedule::timing as schedule_timing;
pub use schedule::{AddArgs, EditArgs, ImportArgs, PinArgs, RampArgs, ScheduleAction, SpecArgs};
pub use send::SendArgs;
pub use worker::WorkerArgs;

use crate::Registry;

/// celeriac: Celery-compatible workers on a PostgreSQL queue.
#[derive(Debug, Parser)]
#[command(name = "celeriac", version, about, max_term_width = 100)]
pub struct Cli {
    /// PostgreSQL URL of the queue database, e.g. postgresql://user@host/db; add
    /// ?pooler=transaction behind PgBouncer in transaction mode.
    /// Defaults to $CELERIAC_DATABASE_URL, then $DATABASE_URL.
    #[arg(long, global = true, value_name = "URL")]
    pub database_url: Option<String>,

    /// The Celery app whose tasks the worker runs, as `celery -A` takes it: `proj`,
    /// `proj.celery` or `proj.celery:app` (imported from the current directory, PYTHONPATH and
    /// the virtualenv). Its tasks run in a pool of Python children (the app's interpreter); Rust handlers of the same name win.
    #[arg(short = 'A', long, global = true, value_name = "APP", env = "CELERY_APP")]
    pub app: Option<String>,

    /// The broker, as `celery -b` takes it: a celeriac+postgresql:// URL names the queue
    /// database (as --database-url, which wins). Without either, with -A, the app's own
    /// broker_url is used when it is a celeriac+postgresql:// URL.
    #[arg(short = 'b', long, global = true, value_name = "URL")]
    pub broker: Option<String>,

    /// Store the results of Rust handlers (and the states the worker decides for any task:
    /// unregistered, expired) in this Celery result backend: db+postgresql://…, django-db (the
    /// queue database's django_celery_results tables), redis://… or rediss://… [default: with
    /// -A, the app's result_backend; else none]. The app's children use it too, as with
    /// `celery --result-backend`.
    #[arg(long, global = true, env = "CELERIAC_RESULT_BACKEND", value_name = "URL")]
    pub result_backend: Option<String>,

    /// The app's loader class, as `celery --loader` (set as CELERY_LOADER for the app).
    #[arg(long, global = true, value_name = "LOADER")]
    pub loader: Option<String>,

    /// The app's configuration module, as `celery --config` (set as CELERY_CONFIG_MODULE for
    /// the app).
    #[arg(long, global = true, value_name = "MODULE")]
    pub config: Option<String>,

    /// Change to this directory first (before loading the app, and before relative
    /// --logfile and --pidfile paths are resolved).
    #[arg(long, global = true, value_name = "DIR", env = "CELERY_WORKDIR")]
    pub workdir: Option<std::path::PathBuf>,

    /// No colours in the logs (as `celery -C`; never on a file or a pipe anyway).
    #[arg(short = 'C', long, global = true, env = "NO_COLOR")]
    pub no_color: bool,

    /// Print no start-up banner (`worker`, `beat`; as `celery -q`).
    #[arg(short = 'q', long, global = true)]
    pub quiet: bool,

    /// Accepted for `celery --skip-checks` (Django's checks, which celeriac does not run).
    #[arg(long, global = true, env = "CELERY_SKIP_CHECKS")]
    pub skip_checks: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or upgrade schema `celeriac` (idempotent; safe to run concurrently).
    Migrate,
    /// Consume queues and run the registered Rust handlers and, with -A, a Celery app's Python
    /// tasks (like `celery worker`).
    Worker(Box<WorkerArgs>),
    /// Run the scheduler alone (like `celery beat`): fire the periodic schedules; with -A, sync
    /// the app's beat_schedule first.
    Beat(BeatArgs),
    /// List, add, change, pause and fire periodic schedules.
    Schedule {
        /// What to do.
        #[command(subcommand)]
        action: ScheduleAction,
    },
    /// Enqueue one task, built exactly as Celery 5.7's apply_async builds it; prints its id.
    Send(SendArgs),
    /// Enqueue kombu envelopes as they are, one JSON document per line (from a file or `-`).
    EnqueueEnvelopes(EnvelopeArgs),
    /// Pause, resume, list or purge queues (a paused queue's messages wait; no worker takes them).
    Queue {
        /// What to do.
        #[command(subcommand)]
        action: QueueAction,
    },
    /// Show the state of queues.
    Inspect {
        /// What to show.
        #[command(subcommand)]
        what: Inspect,
    },
    /// Revoke tasks for good (as `app.control.revoke`): recorded in the database, so no worker
    /// starts them, even one that is down now or restarts; running workers are told at once.
    Revoke(revoke::RevokeArgs),
    /// Set, show or clear rate limits (fleet-wide, or per worker as Celery's rate_limit).
    RateLimit {
        /// What to do.
        #[command(subcommand)]
        action: RateLimitAction,
    },
    /// Put dead-lettered messages back in their queue, or delete them.
    DeadLetters {
        /// What to do.
        #[command(subcommand)]
        action: DeadLetterAction,
    },
    /// Serve the web dashboard: queues (pause, resume, purge), tasks, dead letters, schedules,
    /// workers, with Prometheus queue gauges and health probes (localhost:5555 by default).
    Dashboard(DashboardArgs),
    /// Measure enqueue rate, drain rate and idle pickup latency against the database.
    Bench(crate::bench::BenchArgs),
}

/// Why a command failed; `celeriac: <this>` is what the user reads (exit status 1, or 2 for a
/// bad log level).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// The dashboard cannot start.
    #[error(transparent)]
    Dashboard(#[from] crate::dashboard::DashboardError),
    /// `-l/--loglevel` names no level.
    #[error("unknown log level {0:?} (use DEBUG, INFO, WARNING, ERROR or CRITICAL)")]
    UnknownLogLevel(String),
    /// Neither `--database-url` nor the environment gives a database.
    #[error("no database URL: pass --database-url or set CELERIAC_DATABASE_URL (or DATABASE_URL)")]
    NoDatabaseUrl,
    /// A duration flag is zero, negative, not a number or longer than a year.
    #[error("--{flag} must be a positive number of seconds, at most a year")]
    NotADuration {
        /// The flag, without its dashes.
        flag: &'static str,
    },
    /// A time limit flag is zero, negative or not a number.
    #[error("--{flag} must be a positive number of seconds")]
    NotPositiveSeconds {
        /// The flag, without its dashes.
        flag: &'static str,
    },
    /// A daemon option (`--logfile`, `--pidfile`, `--uid`, …) could not be applied.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    /// `-b/--broker` is not celeriac's.
    #[error("-b/--broker must be a celeriac+postgresql:// URL (celeriac's queue is PostgreSQL), got {0:?}")]
    NotCeleriacBroker(String),
    /// A flag's value is not one celeriac takes.
    #[error("--{flag}: {why}")]
    BadFlag {
        /// The flag, without its dashes.
        flag: &'static str,
        /// Why.
        why: String,
    },
    /// `-X` left no queue to consume.
    #[error("-X/--exclude-queues leaves no queue to consume")]
    NoQueuesLeft,
    /// `--workdir` cannot be entered.
    #[error("--workdir {}: {source}", .dir.display())]
    Workdir {
        /// The directory.
        dir: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `-A` on a binary built without the `python` feature.
    #[cfg(not(feature = "python"))]
    #[error("-A needs a Python pool: this celeriac was built without the `python` feature")]
    NoEmbeddedPython,
    /// The interpreter for `-A` is unusable.
    #[cfg(feature = "python")]
    #[error(transparent)]
    Interpreter(#[from] crate::python::interp::InterpreterError),
    /// The Python pool did not start (e.g. the app did not load).
    #[cfg(feature = "python")]
    #[error(transparent)]
    Pool(#[from] crate::python::pool::PoolError),
    /// A JSON option does not parse.
    #[error("--{flag}: {source}")]
    Json {
        /// The flag, without its dashes.
        flag: &'static str,
        /// Why.
        source: celeriac_protocol::json::JsonError,
    },
    /// A JSON option parses, to the wrong kind of value.
    #[error("--{flag} must be a JSON {expected}")]
    JsonShape {
        /// The flag, without its dashes.
        flag: &'static str,
        /// `array` or `object`.
        expected: &'static str,
    },
    /// A time option is not ISO-8601.
    #[error("--{flag}: not an ISO-8601 time: {text:?}")]
    NotATime {
        /// The flag, without its dashes.
        flag: &'static str,
        /// What was given.
        text: String,
    },
    /// `dead-letters redrive|purge` without a condition or `--all`.
    #[error("say which dead letters: --id, -Q/--queue, --reason-code, --task, or --all")]
    NoDeadLetterSelection,
    /// An input file cannot be opened.
    #[error("{path}: {source}")]
    OpenFile {
        /// The path as given.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// An input file cannot be read.
    #[error("reading {path}: {source}")]
    ReadFile {
        /// The path as given.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The worker runtime failed (configuration, database, message building).
    #[error(transparent)]
    Worker(#[from] crate::Error),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] celeriac_store::Error),
    /// The benchmark failed.
    #[error(transparent)]
    Bench(#[from] crate::bench::BenchError),
    /// The app's beat_schedule could not be read or written.
    #[cfg(feature = "python")]
    #[error(transparent)]
    Sync(#[from] crate::scheduler::sync::SyncError),
    /// A schedule option is invalid, or a schedule cannot fire.
    #[error("{0}")]
    Schedule(String),
    /// A rate limit is not a rate.
    #[error(transparent)]
    Rate(#[from] celeriac_protocol::RateError),
}

/// Runs the CLI with `registry` (plus the example handlers on request) and returns the exit code.
#[must_use]
pub fn main(registry: Registry) -> ExitCode {
    let cli = Cli::parse();
    let launched_from = std::env::current_dir().ok();
    if let Some(dir) = &cli.workdir {
        if let Err(source) = std::env::set_current_dir(dir) {
            eprintln!("celeriac: {}", CliError::Workdir { dir: dir.clone(), source });
            return ExitCode::FAILURE;
        }
    }
    let (loglevel, daemon) = match &cli.command {
        Command::Worker(w) => (w.loglevel.clone(), Some((&w.daemon, worker::nodename(w)))),
        Command::Beat(b) => (b.loglevel.clone(), Some((&b.daemon, format!("beat@{}", crate::hostname())))),
        _ => ("WARNING".to_owned(), None),
    };
    if let Err(e) = log_filter(&loglevel) {
        eprintln!("celeriac: {e}");
        return ExitCode::from(2);
    }
    // Detach, umask, drop privileges, log file, pid file: before anything else runs.
    let daemon = match daemon.map(|(args, nodename)| args.apply(&nodename, launched_from.as_deref())).transpose() {
        Ok(Some(None)) => return ExitCode::SUCCESS, // detached: the copy runs on
        Ok(held) => held.flatten(),
        Err(e) => {
            eprintln!("celeriac: {e}");
            return ExitCode::FAILURE;
        }
    };
    let color = !cli.no_color && !daemon.as_ref().is_some_and(|d| d.logs_to_file);
    if let Err(e) = init_logging(&loglevel, color) {
        eprintln!("celeriac: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("celeriac: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, registry)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("celeriac: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The `tracing` filter for a Celery log level name (any case; `WARN` and `FATAL` too).
fn log_filter(level: &str) -> Result<&'static str, CliError> {
    match level.to_ascii_uppercase().as_str() {
        "DEBUG" => Ok("debug"),
        "INFO" => Ok("info"),
        "WARNING" | "WARN" => Ok("warn"),
        "ERROR" | "CRITICAL" | "FATAL" => Ok("error"),
        other => Err(CliError::UnknownLogLevel(other.to_owned())),
    }
}

fn init_logging(level: &str, color: bool) -> Result<(), CliError> {
    let filter = log_filter(level)?;
    let filter = tracing_subscriber::EnvFilter::try_from_env("CELERIAC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{filter},tokio_postgres=warn")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(color && std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    Ok(())
}

/// The queue database: `--database-url`, else `-b/--broker`, else `$CELERIAC_DATABASE_URL`,
/// `$DATABASE_URL`, a celeriac `$CELERY_BROKER_URL`, and, for `worker` and `beat` with `-A`,
/// the app's own `broker_url` when it is celeriac's (as `celery worker` would use it).
fn database_url(cli: &Cli) -> Result<String, CliError> {
    if let Some(url) = &cli.database_url {
        return Ok(url.clone());
    }
    if let Some(broker) = &cli.broker {
        return celeriac_broker(broker).ok_or_else(|| CliError::NotCeleriacBroker(broker.clone()));
    }
    let env = |name: &str| std::env::var(name).ok().filter(|s| !s.is_empty());
    if let Some(url) = env("CELERIAC_DATABASE_URL").or_else(|| env("DATABASE_URL")) {
        return Ok(url);
    }
    if let Some(url) = env("CELERY_BROKER_URL").as_deref().and_then(celeriac_broker) {
        return Ok(url);
    }
    let python = match &cli.command {
        Command::Worker(w) => Some(w.python.as_deref()),
        Command::Beat(b) => Some(b.python.as_deref()),
        _ => None,
    };
    if let (Some(app), Some(python)) = (&cli.app, python) {
        if let Some(url) =
            worker::app_broker_url(python, app, &app_environment(cli))?.as_deref().and_then(celeriac_broker)
        {
            return Ok(url);
        }
    }
    Err(CliError::NoDatabaseUrl)
}

/// The database of a `celeriac+postgresql://…` broker URL.
fn celeriac_broker(url: &str) -> Option<String> {
    let rest = url.strip_prefix("celeriac+")?;
    (rest.starts_with("postgresql://") || rest.starts_with("postgres://")).then(|| rest.to_owned())
}

/// What `celery --loader/--config/--result-backend` put in the app's environment.
fn app_environment(cli: &Cli) -> Vec<(String, String)> {
    [
        ("CELERY_LOADER", &cli.loader),
        ("CELERY_CONFIG_MODULE", &cli.config),
        ("CELERY_RESULT_BACKEND", &cli.result_backend),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.as_ref().map(|v| (name.to_owned(), v.clone())))
    .collect()
}

/// A store on `url` with at most `connections` connections.
fn store(url: &str, connections: usize) -> Result<Store, CliError> {
    Ok(Store::new(&StoreConfig { max_connections: connections, ..StoreConfig::new(url) })?)
}

async fn run(cli: Cli, registry: Registry) -> Result<(), CliError> {
    if let Command::Send(args) = &cli.command {
        if args.dry_run {
            return send::print_envelope(args);
        }
    }
    if let Command::Schedule { action: ScheduleAction::Preview } = &cli.command {
        return schedule::run("", None, ScheduleAction::Preview).await;
    }
    let url = database_url(&cli)?;
    match cli.command {
        Command::Migrate => migrate::run(&url).await,
        Command::Worker(ref args) => {
            let globals = worker::Globals {
                app: cli.app.as_deref(),
                result_backend: cli.result_backend.as_deref(),
                app_env: app_environment(&cli),
                quiet: cli.quiet,
            };
            worker::run(&url, &globals, args, registry).await
        }
        Command::Beat(args) => beat::run(&url, cli.app.as_deref(), cli.quiet, &args).await,
        Command::Schedule { action } => schedule::run(&url, cli.app.as_deref(), action).await,
        Command::Send(args) => send::run(&url, &args).await,
        Command::EnqueueEnvelopes(args) => enqueue_envelopes::run(&url, &args).await,
        Command::Queue { action } => queue::run(&url, action).await,
        Command::Inspect { what } => inspect::run(&url, what).await,
        Command::Revoke(args) => revoke::run(&url, args).await,
        Command::RateLimit { action } => rate_limit::run(&url, action).await,
        Command::DeadLetters { action } => dead_letters::run(&url, action).await,
        Command::Dashboard(args) => dashboard::run(&url, &args).await,
        Command::Bench(args) => Ok(crate::bench::run(&url, &args).await?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_levels_are_celerys_names_in_any_case() {
        assert_eq!(log_filter("debug").unwrap(), "debug");
        assert_eq!(log_filter("Warn").unwrap(), "warn");
        assert_eq!(log_filter("CRITICAL").unwrap(), "error");
        let err = log_filter("loud").unwrap_err();
        assert_eq!(err.to_string(), "unknown log level \"LOUD\" (use DEBUG, INFO, WARNING, ERROR or CRITICAL)");
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }
}
