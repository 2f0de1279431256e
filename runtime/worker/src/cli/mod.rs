//! The `celeriac` command line. [`main`] is the whole binary; a Rust application with its own
//! handlers calls it with its own [`Registry`] to get the same CLI.
//!
//! This module holds the argument definitions shared by every command ([`Cli`], [`Command`]),
//! the dispatch and [`CliError`]; each command's options and body live in a file of their own
//! (`worker.rs`, `send.rs`, `enqueue_envelopes.rs`, `inspect.rs`, `dead_letters.rs`,
//! `migrate.rs`, `rate_limit.rs`; `bench` is [`crate::bench`]).

use std::process::ExitCode;

use celeriac_store::{Store, StoreConfig};
use clap::{Parser, Subcommand};

mod beat;
mod dead_letters;
mod enqueue_envelopes;
mod inspect;
mod migrate;
mod rate_limit;
mod revoke;
mod schedule;
mod send;
mod worker;

pub use beat::BeatArgs;
pub use dead_letters::{DeadLetterAction, DeadLetterSelection};
pub use enqueue_envelopes::EnvelopeArgs;
pub use inspect::Inspect;
pub use rate_limit::RateLimitAction;
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
    #[arg(short = 'A', long, global = true, value_name = "APP")]
    pub app: Option<String>,

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
    Worker(WorkerArgs),
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
    /// Measure enqueue rate, drain rate and idle pickup latency against the database.
    Bench(crate::bench::BenchArgs),
}

/// Why a command failed; `celeriac: <this>` is what the user reads (exit status 1, or 2 for a
/// bad log level).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
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
    let loglevel = match &cli.command {
        Command::Worker(w) => w.loglevel.clone(),
        Command::Beat(b) => b.loglevel.clone(),
        _ => "WARNING".to_owned(),
    };
    if let Err(e) = init_logging(&loglevel) {
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

fn init_logging(level: &str) -> Result<(), CliError> {
    let filter = log_filter(level)?;
    let filter = tracing_subscriber::EnvFilter::try_from_env("CELERIAC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{filter},tokio_postgres=warn")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    Ok(())
}

fn database_url(cli: &Cli) -> Result<String, CliError> {
    cli.database_url
        .clone()
        .or_else(|| std::env::var("CELERIAC_DATABASE_URL").ok().filter(|s| !s.is_empty()))
        .or_else(|| std::env::var("DATABASE_URL").ok().filter(|s| !s.is_empty()))
        .ok_or(CliError::NoDatabaseUrl)
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
        Command::Worker(args) => worker::run(&url, cli.app.as_deref(), &args, registry).await,
        Command::Beat(args) => beat::run(&url, cli.app.as_deref(), &args).await,
        Command::Schedule { action } => schedule::run(&url, cli.app.as_deref(), action).await,
        Command::Send(args) => send::run(&url, &args).await,
        Command::EnqueueEnvelopes(args) => enqueue_envelopes::run(&url, &args).await,
        Command::Inspect { what } => inspect::run(&url, what).await,
        Command::Revoke(args) => revoke::run(&url, args).await,
        Command::RateLimit { action } => rate_limit::run(&url, action).await,
        Command::DeadLetters { action } => dead_letters::run(&url, action).await,
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
