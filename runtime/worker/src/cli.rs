//! The `celeriac` command line. [`main`] is the whole binary; a Rust application with its own
//! handlers calls it with its own [`Registry`] to get the same CLI.

use std::{io::BufRead as _, process::ExitCode, time::Duration};

use celeriac_protocol::{json, Accept, Expires, Map, TaskOptions, Value};
use celeriac_store::{NewMessage, Store, StoreConfig};
use chrono::{DateTime, FixedOffset};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::{Registry, Worker, WorkerConfig};

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
    /// the virtualenv). Its tasks run in embedded Python; Rust handlers of the same name win.
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
    /// Put dead-lettered messages back in their queue, or delete them.
    DeadLetters {
        /// What to do.
        #[command(subcommand)]
        action: DeadLetterAction,
    },
    /// Measure enqueue rate, drain rate and idle pickup latency against the database.
    Bench(crate::bench::BenchArgs),
    /// A pool child of `celeriac worker -A` (started by the worker, not by hand).
    #[cfg(feature = "python")]
    #[command(hide = true)]
    PoolChild(crate::python::child::ChildArgs),
}

/// `celeriac dead-letters …`
#[derive(Debug, Subcommand)]
pub enum DeadLetterAction {
    /// Move matching dead letters back into their queue as new messages (e.g. after deploying
    /// the handler of a task that was not registered).
    Redrive(DeadLetterSelection),
    /// Delete matching dead letters.
    Purge(DeadLetterSelection),
}

/// Which dead letters; give at least one condition, or `--all`.
#[derive(Debug, Args)]
pub struct DeadLetterSelection {
    /// Dead-letter row ids (as `inspect dead-letters` prints them).
    #[arg(long = "id", value_name = "ID")]
    pub ids: Vec<i64>,
    /// Only this queue.
    #[arg(short = 'Q', long)]
    pub queue: Option<String>,
    /// Only this reason code: undecodable, too_large, content_disallowed, not_registered,
    /// rejected, redeliveries_exhausted.
    #[arg(long)]
    pub reason_code: Option<String>,
    /// Only this task name.
    #[arg(long)]
    pub task: Option<String>,
    /// Every dead letter.
    #[arg(long, conflicts_with_all = ["ids", "queue", "reason_code", "task"])]
    pub all: bool,
}

impl DeadLetterSelection {
    fn filter(&self) -> Result<celeriac_store::DeadLetterFilter, String> {
        let filter = celeriac_store::DeadLetterFilter {
            ids: (!self.ids.is_empty()).then(|| self.ids.clone()),
            queue: self.queue.clone(),
            reason_code: self.reason_code.clone(),
            task_name: self.task.clone(),
        };
        if filter == celeriac_store::DeadLetterFilter::default() && !self.all {
            return Err("say which dead letters: --id, -Q/--queue, --reason-code, --task, or --all".into());
        }
        Ok(filter)
    }
}

/// `celeriac inspect …`
#[derive(Debug, Subcommand)]
pub enum Inspect {
    /// Per queue: ready, delayed (eta in the future), leased and dead-lettered counts.
    Queues,
    /// The newest dead-lettered messages with their reasons.
    DeadLetters {
        /// How many to show.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i64).range(1..))]
        limit: i64,
    },
}

/// `celeriac worker` options (named like `celery worker`'s where one exists).
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Comma-separated queues to consume [default: celery; with -A, the app's queues
    /// (task_queues, else task_default_queue), as celery worker consumes].
    #[arg(short = 'Q', long, value_delimiter = ',')]
    pub queues: Option<Vec<String>>,
    /// Tasks run at once [default: number of CPUs; with -A -P prefork, the app's
    /// worker_concurrency if set].
    #[arg(short = 'c', long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: Option<u32>,
    /// Log level: DEBUG, INFO, WARNING, ERROR, CRITICAL.
    #[arg(short = 'l', long, default_value = "INFO")]
    pub loglevel: String,
    /// Worker name; %h = host name, %n = its first label, %d = its domain.
    #[arg(short = 'n', long, default_value = "celeriac@%h")]
    pub hostname: String,
    /// Messages reserved ahead per execution slot, besides the running ones (Celery's
    /// worker_prefetch_multiplier; 0, Celery's "unlimited", is not supported: ETA tasks wait in
    /// the database, so there is nothing to gain from it) [default: 4; with -A, the app's
    /// worker_prefetch_multiplier].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub prefetch_multiplier: Option<u32>,
    /// Seconds a claim lasts without a heartbeat; after that the message runs elsewhere.
    #[arg(long, default_value_t = 30.0)]
    pub lease_seconds: f64,
    /// Seconds between heartbeats (lease renewals); at most half the lease.
    #[arg(long, default_value_t = 5.0)]
    pub heartbeat_interval: f64,
    /// Seconds between polls when no notification arrives.
    #[arg(long, default_value_t = 1.0)]
    pub poll_interval: f64,
    /// Seconds running tasks get to finish after SIGTERM/SIGINT (a second signal stops at once).
    #[arg(long, default_value_t = 60.0)]
    pub shutdown_timeout: f64,
    /// Times a message may lose its worker (lease expiry) before it goes to dead_letter.
    #[arg(long, default_value_t = 3)]
    pub max_redeliveries: i32,
    /// Comma-separated serializers or content types to accept (Celery's accept_content)
    /// [default: json; with -A, the app's accept_content]. Rust handlers need JSON or msgpack
    /// bodies; Python tasks take any serializer the app accepts (pickle, yaml, …).
    #[arg(long, value_delimiter = ',')]
    pub accept_content: Option<Vec<String>>,
    /// Do not LISTEN for wake-ups; poll only (implied by `?pooler=transaction` on the URL).
    #[arg(long)]
    pub no_listen: bool,
    /// Also register the example handlers (examples.add, examples.noop, examples.sleep, …).
    #[arg(long)]
    pub example_handlers: bool,
    /// Pool for the app's Python tasks (with -A): prefork (-c child processes), threads (one
    /// process, -c threads) or solo (one process, one task at a time).
    #[cfg(feature = "python")]
    #[arg(short = 'P', long, value_enum, default_value = "prefork")]
    pub pool: crate::python::PoolKind,
    /// Change to this directory before loading the app.
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<std::path::PathBuf>,
    /// Python interpreter whose environment the pool embeds [default: $CELERIAC_PYTHON, else
    /// $VIRTUAL_ENV/bin/python, else python3 on PATH].
    #[arg(long, env = "CELERIAC_PYTHON", value_name = "PATH")]
    pub python: Option<String>,
    /// Replace a prefork child after it ran this many tasks [default: the app's
    /// worker_max_tasks_per_child].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_tasks_per_child: Option<u64>,
    /// Replace a prefork child after a task that left its resident memory above this many KiB
    /// [default: the app's worker_max_memory_per_child].
    #[arg(long, value_name = "KIB", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_memory_per_child: Option<u64>,
    /// Hard time limit in seconds for Python tasks that set none: the child running the task
    /// is killed and replaced, and the task fails with TimeLimitExceeded.
    #[arg(long, value_name = "SECONDS")]
    pub time_limit: Option<f64>,
    /// Soft time limit in seconds for Python tasks that set none: SoftTimeLimitExceeded is
    /// raised inside the task.
    #[arg(long, value_name = "SECONDS")]
    pub soft_time_limit: Option<f64>,
}

/// `celeriac send` options (named like `apply_async`'s).
#[derive(Debug, Args)]
pub struct SendArgs {
    /// Registered task name, e.g. proj.tasks.add.
    pub task: String,
    /// Positional arguments as a JSON array.
    #[arg(long, default_value = "[]")]
    pub args: String,
    /// Keyword arguments as a JSON object.
    #[arg(long, default_value = "{}")]
    pub kwargs: String,
    /// Queue (routing key).
    #[arg(short = 'Q', long, default_value = "celery")]
    pub queue: String,
    /// Run no earlier than this many seconds from now.
    #[arg(long, conflicts_with = "eta")]
    pub countdown: Option<f64>,
    /// Run no earlier than this ISO-8601 time (UTC if no offset).
    #[arg(long)]
    pub eta: Option<String>,
    /// Discard the task if not started within this many seconds (or after this ISO-8601 time).
    #[arg(long)]
    pub expires: Option<String>,
    /// Priority 0–255; higher runs first.
    #[arg(long)]
    pub priority: Option<i64>,
    /// Task id [default: a new UUID].
    #[arg(long)]
    pub task_id: Option<String>,
    /// Hard time limit, seconds.
    #[arg(long)]
    pub time_limit: Option<f64>,
    /// Soft time limit, seconds.
    #[arg(long)]
    pub soft_time_limit: Option<f64>,
    /// Ask the worker not to store a result.
    #[arg(long)]
    pub ignore_result: bool,
    /// Extra message headers as a JSON object.
    #[arg(long)]
    pub headers: Option<String>,
    /// Print the envelope JSON instead of enqueueing it.
    #[arg(long)]
    pub dry_run: bool,
}

/// `celeriac enqueue-envelopes` options.
#[derive(Debug, Args)]
pub struct EnvelopeArgs {
    /// File with one envelope per line, or `-` for standard input.
    pub file: String,
    /// Rows per insert statement.
    #[arg(long, default_value_t = 5000)]
    pub batch: usize,
}

/// Runs the CLI with `registry` (plus the example handlers on request) and returns the exit code.
#[must_use]
pub fn main(registry: Registry) -> ExitCode {
    let cli = Cli::parse();
    #[cfg(feature = "python")]
    if let Command::PoolChild(args) = &cli.command {
        return crate::python::child::main(args);
    }
    let loglevel = match &cli.command {
        Command::Worker(w) => w.loglevel.clone(),
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

fn init_logging(level: &str) -> Result<(), String> {
    let filter = match level.to_ascii_uppercase().as_str() {
        "DEBUG" => "debug",
        "INFO" => "info",
        "WARNING" | "WARN" => "warn",
        "ERROR" | "CRITICAL" | "FATAL" => "error",
        other => return Err(format!("unknown log level {other:?} (use DEBUG, INFO, WARNING, ERROR or CRITICAL)")),
    };
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

fn database_url(cli: &Cli) -> Result<String, String> {
    cli.database_url
        .clone()
        .or_else(|| std::env::var("CELERIAC_DATABASE_URL").ok().filter(|s| !s.is_empty()))
        .or_else(|| std::env::var("DATABASE_URL").ok().filter(|s| !s.is_empty()))
        .ok_or_else(|| "no database URL: pass --database-url or set CELERIAC_DATABASE_URL (or DATABASE_URL)".to_owned())
}

fn store(url: &str, connections: usize) -> Result<Store, String> {
    Store::new(&StoreConfig { max_connections: connections, ..StoreConfig::new(url) }).map_err(|e| e.to_string())
}

async fn run(cli: Cli, mut registry: Registry) -> Result<(), String> {
    match &cli.command {
        Command::Send(args) if args.dry_run => {
            let message = build_send(args)?;
            println!("{}", String::from_utf8_lossy(&message.payload));
            return Ok(());
        }
        _ => {}
    }
    let url = database_url(&cli)?;
    match cli.command {
        Command::Migrate => {
            let report = store(&url, 1)?.migrate().await.map_err(|e| e.to_string())?;
            if report.applied.is_empty() {
                println!("schema celeriac is up to date (version {})", report.current);
            } else {
                println!("applied migrations {:?}; schema celeriac is at version {}", report.applied, report.current);
            }
            Ok(())
        }
        Command::Worker(args) => {
            if args.example_handlers {
                crate::examples::register(&mut registry);
            }
            if let Some(dir) = &args.workdir {
                std::env::set_current_dir(dir).map_err(|e| format!("--workdir {}: {e}", dir.display()))?;
            }
            let mut config = worker_config(&args)?;
            let shutdown = CancellationToken::new();
            tokio::spawn(handle_signals(shutdown.clone()));
            let pool = match &cli.app {
                Some(app) => Some(start_python_pool(app, &args, &url, &mut config, &mut registry).await?),
                None => None,
            };
            let store = store(&url, 6)?;
            let worker = Worker::new(store, registry, config.clone()).map_err(|e| e.to_string());
            let result = match worker {
                Ok(worker) => {
                    if let Some(pool) = &pool {
                        pool.announce_ready().await;
                    }
                    worker.run(shutdown).await.map(drop).map_err(|e| e.to_string())
                }
                Err(e) => Err(e),
            };
            if let Some(pool) = pool {
                pool.shutdown(config.shutdown_timeout.min(Duration::from_secs(10))).await;
            }
            result
        }
        #[cfg(feature = "python")]
        Command::PoolChild(_) => Ok(()),
        Command::Send(args) => {
            let store = store(&url, 1)?;
            let message = build_send(&args)?;
            store.message_insert(&message).await.map_err(|e| e.to_string())?;
            println!("{}", message.task_id.unwrap_or_default());
            Ok(())
        }
        Command::EnqueueEnvelopes(args) => enqueue_envelopes(&store(&url, 1)?, &args).await,
        Command::Inspect { what: Inspect::Queues } => {
            let stats = store(&url, 1)?.queue_stats().await.map_err(|e| e.to_string())?;
            println!("{:<24} {:>10} {:>10} {:>10} {:>14}", "queue", "ready", "delayed", "leased", "dead_lettered");
            for s in stats {
                println!("{:<24} {:>10} {:>10} {:>10} {:>14}", s.queue, s.ready, s.delayed, s.leased, s.dead_lettered);
            }
            Ok(())
        }
        Command::Inspect { what: Inspect::DeadLetters { limit } } => {
            for d in store(&url, 1)?.dead_letter_list(limit).await.map_err(|e| e.to_string())? {
                println!(
                    "{} {} queue={} task={} id={} [{}] {}",
                    d.id,
                    d.failed_at.to_rfc3339(),
                    d.queue,
                    d.task_name.as_deref().unwrap_or("?"),
                    d.task_id.as_deref().unwrap_or("?"),
                    d.reason_code,
                    d.reason
                );
            }
            Ok(())
        }
        Command::DeadLetters { action: DeadLetterAction::Redrive(selection) } => {
            let n = store(&url, 1)?.dead_letter_redrive(&selection.filter()?).await.map_err(|e| e.to_string())?;
            println!("redrove {n} dead letter(s)");
            Ok(())
        }
        Command::DeadLetters { action: DeadLetterAction::Purge(selection) } => {
            let n = store(&url, 1)?.dead_letter_purge(&selection.filter()?).await.map_err(|e| e.to_string())?;
            println!("purged {n} dead letter(s)");
            Ok(())
        }
        Command::Bench(args) => crate::bench::run(&url, &args).await,
    }
}

/// Starts the Python pool for `-A app` and registers the app's tasks; adjusts `config` to the
/// pool (solo runs one task at a time; prefork and solo children hold one queued task each).
#[cfg(feature = "python")]
async fn start_python_pool(
    app: &str,
    args: &WorkerArgs,
    url: &str,
    config: &mut WorkerConfig,
    registry: &mut Registry,
) -> Result<crate::python::PythonPool, String> {
    use crate::python::{interp, PoolConfig, PoolKind, PythonPool};
    let interpreter = interp::probe(&interp::choose(args.python.as_deref()))?;
    let limit = |name: &str, v: Option<f64>| match v {
        Some(s) if !(s.is_finite() && s > 0.0) => Err(format!("--{name} must be a positive number of seconds")),
        other => Ok(other),
    };
    let pool_config = PoolConfig {
        kind: args.pool,
        concurrency: if args.pool == PoolKind::Solo { 1 } else { config.concurrency },
        concurrency_from_app: args.concurrency.is_none(),
        app: app.to_owned(),
        hostname: config.hostname.clone(),
        loglevel: args.loglevel.clone(),
        database_url: url.to_owned(),
        interpreter,
        max_tasks_per_child: args.max_tasks_per_child,
        max_memory_per_child_kib: args.max_memory_per_child,
        time_limit: limit("time-limit", args.time_limit)?,
        soft_time_limit: limit("soft-time-limit", args.soft_time_limit)?,
    };
    let pool = PythonPool::start(pool_config).await?;
    let hello = pool.hello();
    let names = pool.register_tasks(registry);
    tracing::info!(
        app = %hello.app, pool = ?args.pool, python = %hello.python, celery = %hello.celery,
        "app loaded; Python tasks: {}", names.join(", ")
    );
    config.concurrency = pool.concurrency();
    config.pipeline = pool.pipeline();
    // As `celery worker` does, consume the app's queues and use its prefetch setting unless
    // told otherwise.
    if args.queues.is_none() && !hello.config.queues.is_empty() {
        config.queues.clone_from(&hello.config.queues);
    }
    if let Some(p) = hello.config.worker_prefetch_multiplier.filter(|p| *p > 0 && args.prefetch_multiplier.is_none()) {
        config.prefetch_multiplier = usize::try_from(p).unwrap_or(4).min(1_000);
    }
    if args.accept_content.is_none() && !hello.config.accept_content.is_empty() {
        config.accept = celeriac_protocol::Accept::new(&hello.config.accept_content);
    }
    config.validate().map_err(|e| e.to_string())?;
    Ok(pool)
}

/// Without embedded Python there is no pool; `-A` is refused.
#[cfg(not(feature = "python"))]
async fn start_python_pool(
    _app: &str,
    _args: &WorkerArgs,
    _url: &str,
    _config: &mut WorkerConfig,
    _registry: &mut Registry,
) -> Result<NoPool, String> {
    Err("-A needs embedded Python: this celeriac was built without the `python` feature".into())
}

#[cfg(not(feature = "python"))]
enum NoPool {}

#[cfg(not(feature = "python"))]
impl NoPool {
    async fn announce_ready(&self) {
        match *self {}
    }
    async fn shutdown(&self, _grace: Duration) {
        match *self {}
    }
}

fn worker_config(args: &WorkerArgs) -> Result<WorkerConfig, String> {
    let secs = |name: &str, v: f64| match Duration::try_from_secs_f64(v) {
        Ok(d) if v > 0.0 && d <= Duration::from_secs(365 * 86_400) => Ok(d),
        _ => Err(format!("--{name} must be a positive number of seconds, at most a year")),
    };
    let defaults = WorkerConfig::default();
    let config = WorkerConfig {
        queues: match &args.queues {
            Some(queues) => queues.iter().map(|q| q.trim().to_owned()).filter(|q| !q.is_empty()).collect(),
            None => defaults.queues.clone(),
        },
        concurrency: args.concurrency.map_or(defaults.concurrency, |c| c as usize),
        prefetch_multiplier: args.prefetch_multiplier.map_or(defaults.prefetch_multiplier, |p| p as usize),
        hostname: expand_hostname(&args.hostname),
        lease: secs("lease-seconds", args.lease_seconds)?,
        heartbeat_interval: secs("heartbeat-interval", args.heartbeat_interval)?,
        poll_interval: secs("poll-interval", args.poll_interval)?,
        shutdown_timeout: secs("shutdown-timeout", args.shutdown_timeout)?,
        max_redeliveries: args.max_redeliveries,
        accept: args.accept_content.as_ref().map_or_else(Accept::default, Accept::new),
        // Look for dead workers' leases at least twice per lease period.
        rescue_interval: defaults.rescue_interval.min(secs("lease-seconds", args.lease_seconds / 2.0)?),
        listen: !args.no_listen,
        pipeline: 0,
    };
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

/// Expands Celery's `%h`, `%n`, `%d` in a worker name.
fn expand_hostname(template: &str) -> String {
    let host = crate::hostname();
    let (name, domain) = host.split_once('.').unwrap_or((&host, ""));
    template.replace("%h", &host).replace("%n", name).replace("%d", domain)
}

async fn handle_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::warn!("worker: Warm shutdown (SIGTERM); a second signal stops at once"),
        _ = int.recv() => tracing::warn!("worker: Warm shutdown (SIGINT); a second signal stops at once"),
    }
    shutdown.cancel();
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::warn!("worker: Cold shutdown; leases of unfinished tasks expire and those messages run again");
    std::process::exit(1);
}

fn parse_json(what: &str, text: &str) -> Result<Value, String> {
    json::from_slice(text.as_bytes()).map_err(|e| format!("--{what}: {e}"))
}

/// Parses an ISO-8601 time, keeping its offset (UTC when it has none).
fn parse_time(what: &str, text: &str) -> Result<DateTime<FixedOffset>, String> {
    match json::parse_datetime(text) {
        Some(Value::DateTime(dt)) => Ok(dt),
        Some(Value::NaiveDateTime(dt)) => Ok(dt.and_utc().fixed_offset()),
        _ => Err(format!("--{what}: not an ISO-8601 time: {text:?}")),
    }
}

fn build_send(args: &SendArgs) -> Result<NewMessage, String> {
    let Value::List(call_args) = parse_json("args", &args.args)? else {
        return Err("--args must be a JSON array".into());
    };
    let Value::Map(kwargs) = parse_json("kwargs", &args.kwargs)? else {
        return Err("--kwargs must be a JSON object".into());
    };
    let headers = match &args.headers {
        None => Map::new(),
        Some(text) => match parse_json("headers", text)? {
            Value::Map(m) => m,
            _ => return Err("--headers must be a JSON object".into()),
        },
    };
    let expires = match &args.expires {
        None => None,
        Some(text) => Some(match text.parse::<f64>() {
            Ok(secs) => Expires::After(secs),
            Err(_) => Expires::At(parse_time("expires", text)?),
        }),
    };
    let options = TaskOptions {
        task_id: args.task_id.clone(),
        queue: args.queue.clone(),
        countdown: args.countdown,
        eta: args.eta.as_deref().map(|t| parse_time("eta", t)).transpose()?,
        expires,
        priority: args.priority,
        time_limit: args.time_limit,
        soft_time_limit: args.soft_time_limit,
        ignore_result: args.ignore_result,
        headers,
        ..TaskOptions::default()
    };
    crate::build_message(&args.task, &call_args, &kwargs, &options).map_err(|e| e.to_string())
}

/// Reads envelopes and enqueues them unchanged; the queue, priority, eta, expiry, task name and
/// id columns are read from each envelope. A line that is not a readable envelope is still
/// enqueued (queue from `delivery_info` if readable, else `celery`), so the worker dead-letters
/// it with its reason instead of it being lost here.
async fn enqueue_envelopes(store: &Store, args: &EnvelopeArgs) -> Result<(), String> {
    let reader: Box<dyn std::io::BufRead> = if args.file == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        Box::new(std::io::BufReader::new(std::fs::File::open(&args.file).map_err(|e| format!("{}: {e}", args.file))?))
    };
    let mut batch = Vec::with_capacity(args.batch.max(1));
    let mut total = 0u64;
    for line in reader.lines() {
        let line = line.map_err(|e| format!("reading {}: {e}", args.file))?;
        if line.trim().is_empty() {
            continue;
        }
        batch.push(NewMessage::from_envelope(line.into_bytes()));
        if batch.len() >= args.batch.max(1) {
            total += store.message_insert_many(&batch).await.map_err(|e| e.to_string())?;
            batch.clear();
        }
    }
    total += store.message_insert_many(&batch).await.map_err(|e| e.to_string())?;
    println!("enqueued {total} message(s)");
    Ok(())
}
