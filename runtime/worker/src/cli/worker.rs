//! `celeriac worker`: consumes queues with the registered Rust handlers and, with `-A`, the
//! Celery app's Python tasks in the pool of Python children.
//!
//! This file maps the flags to a [`WorkerConfig`] (and a `PoolConfig`); how the app's own
//! settings fill in what no flag gave is the pool's business (`crate::python::settings`), so a
//! program embedding the worker gets the same behaviour.

use std::time::Duration;

use celeriac_protocol::Accept;
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::{store, CliError};
use crate::{Registry, Worker, WorkerConfig};

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
    /// Store the results of Rust handlers (and the states the worker decides for any task:
    /// unregistered, expired) in this Celery result backend: db+postgresql://…, django-db (the
    /// queue database's django_celery_results tables), redis://… or rediss://… [default: with
    /// -A, the app's result_backend; else none].
    #[arg(long, env = "CELERIAC_RESULT_BACKEND", value_name = "URL")]
    pub result_backend: Option<String>,
    /// Store name, args, kwargs, worker, retries and queue with results (Celery's
    /// result_extended) [default: with -A, the app's setting].
    #[arg(long)]
    pub result_extended: bool,
    /// Store STARTED when a Rust handler starts (Celery's task_track_started) [default: with -A,
    /// the app's setting].
    #[arg(long)]
    pub task_track_started: bool,
    /// Also register the example handlers (examples.add, examples.noop, examples.sleep, …).
    #[arg(long)]
    pub example_handlers: bool,
    /// Ignore the tasks' per-worker rate limits (Celery's worker_disable_rate_limits, which -A
    /// also reads); fleet-wide limits (celeriac rate-limit) still apply.
    #[arg(long)]
    pub disable_rate_limits: bool,
    /// Send task events (Celery's -E; with -A, also the app's worker_send_task_events), for
    /// `celery events` and Flower.
    #[arg(short = 'E', long)]
    pub task_events: bool,
    /// Send no worker-online/heartbeat/offline events (Celery's --without-heartbeat).
    #[arg(long)]
    pub without_heartbeat: bool,
    /// Pool for the app's Python tasks (with -A): prefork (-c child processes), threads (one
    /// process, -c threads) or solo (one process, one task at a time).
    #[cfg(feature = "python")]
    #[arg(short = 'P', long, value_enum, default_value = "prefork")]
    pub pool: crate::python::PoolKind,
    /// Also run the scheduler (Celery's -B/--beat): fire the periodic schedules, with -A after
    /// syncing the app's beat_schedule into the database. Any number of workers may run with
    /// -B: one leads at a time, and each slot fires once.
    #[arg(short = 'B', long)]
    pub beat: bool,
    /// Change to this directory before loading the app.
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<std::path::PathBuf>,
    /// Python interpreter (3.9 or later, with the celeriac package) that runs the app's tasks
    /// [default: $CELERIAC_PYTHON, which the pip-installed celeriac command sets to its own
    /// interpreter, else $VIRTUAL_ENV/bin/python, else python3 on PATH].
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

/// Runs a worker until SIGTERM/SIGINT; with `app` (`-A`), also the app's Python tasks.
pub(super) async fn run(
    url: &str,
    app: Option<&str>,
    args: &WorkerArgs,
    mut registry: Registry,
) -> Result<(), CliError> {
    if args.example_handlers {
        crate::examples::register(&mut registry);
    }
    if let Some(dir) = &args.workdir {
        std::env::set_current_dir(dir).map_err(|source| CliError::Workdir { dir: dir.clone(), source })?;
    }
    let mut config = worker_config(args)?;
    let shutdown = CancellationToken::new();
    tokio::spawn(handle_signals(shutdown.clone()));
    let pool = match app {
        Some(app) => Some(start_python_pool(app, args, url, &mut config, &mut registry).await?),
        None => None,
    };
    // The flags also apply to the app's own result backend.
    if let Some(results) = &mut config.results {
        results.extended |= args.result_extended;
        results.track_started |= args.task_track_started;
    }
    let store = store(url, if args.beat { 8 } else { 6 })?;
    if args.beat {
        if let (Some(app), Some(pool)) = (app, &pool) {
            sync_schedule(&store, pool, app).await?;
        }
        config.scheduler = Some(crate::scheduler::SchedulerConfig::default());
    }
    let worker = Worker::new(store, registry, config.clone()).map_err(CliError::from);
    let result = match worker {
        Ok(worker) => {
            if let Some(pool) = &pool {
                pool.announce_ready().await;
            }
            worker.run(shutdown).await.map(drop).map_err(CliError::from)
        }
        Err(e) => Err(e),
    };
    if let Some(pool) = pool {
        pool.shutdown(config.shutdown_timeout.min(Duration::from_secs(10))).await;
    }
    result
}

/// Starts the Python pool for `-A app` and registers the app's tasks; adjusts `config` to the
/// pool and to the app's settings where no flag was given (see `crate::python::settings`).
#[cfg(feature = "python")]
async fn start_python_pool(
    app: &str,
    args: &WorkerArgs,
    url: &str,
    config: &mut WorkerConfig,
    registry: &mut Registry,
) -> Result<crate::python::PythonPool, CliError> {
    use crate::python::{interp, ExplicitSettings, PoolConfig, PoolKind, PythonPool};
    let interpreter = interp::probe(&interp::choose(args.python.as_deref()))?;
    let limit = |flag: &'static str, v: Option<f64>| match v {
        Some(s) if !(s.is_finite() && s > 0.0) => Err(CliError::NotPositiveSeconds { flag }),
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
    let names = pool.register_tasks(registry)?;
    tracing::info!(
        app = %hello.app, pool = ?args.pool, python = %hello.python, executable = %hello.executable, celery = %hello.celery,
        "app loaded; Python tasks: {}", names.join(", ")
    );
    let explicit = ExplicitSettings {
        queues: args.queues.is_some(),
        prefetch_multiplier: args.prefetch_multiplier.is_some(),
        accept_content: args.accept_content.is_some(),
    };
    pool.configure_worker(config, explicit);
    config.validate()?;
    Ok(pool)
}

/// Writes the app's `beat_schedule` into the database (new entries fired by celeriac).
#[cfg(feature = "python")]
async fn sync_schedule(
    store: &celeriac_store::Store,
    pool: &crate::python::PythonPool,
    app: &str,
) -> Result<(), CliError> {
    crate::scheduler::sync::sync_app_schedule(store, pool.interpreter(), app, None).await?;
    Ok(())
}

#[cfg(not(feature = "python"))]
async fn sync_schedule(_store: &celeriac_store::Store, pool: &NoPool, _app: &str) -> Result<(), CliError> {
    match *pool {}
}

/// Without the `python` feature there is no pool; `-A` is refused.
#[cfg(not(feature = "python"))]
async fn start_python_pool(
    _app: &str,
    _args: &WorkerArgs,
    _url: &str,
    _config: &mut WorkerConfig,
    _registry: &mut Registry,
) -> Result<NoPool, CliError> {
    Err(CliError::NoEmbeddedPython)
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

/// The worker's settings from the flags (celeriac's defaults where none was given).
fn worker_config(args: &WorkerArgs) -> Result<WorkerConfig, CliError> {
    let secs = |flag: &'static str, v: f64| match Duration::try_from_secs_f64(v) {
        Ok(d) if v > 0.0 && d <= Duration::from_secs(365 * 86_400) => Ok(d),
        _ => Err(CliError::NotADuration { flag }),
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
        disable_rate_limits: args.disable_rate_limits,
        scheduler: None,
        results: args.result_backend.as_ref().map(|url| crate::ResultsConfig {
            extended: args.result_extended,
            track_started: args.task_track_started,
            ..crate::ResultsConfig::new(url)
        }),
        default_queue: defaults.default_queue.clone(),
        task_routes: defaults.task_routes.clone(),
        control: defaults.control.clone(),
        events: crate::EventSettings {
            task_events: args.task_events,
            worker_events: !args.without_heartbeat,
            ..defaults.events.clone()
        },
    };
    config.validate()?;
    Ok(config)
}

/// Expands Celery's `%h`, `%n`, `%d` in a worker name.
fn expand_hostname(template: &str) -> String {
    let host = crate::hostname();
    let (name, domain) = host.split_once('.').unwrap_or((&host, ""));
    template.replace("%h", &host).replace("%n", name).replace("%d", domain)
}

pub(super) async fn handle_signals(shutdown: CancellationToken) {
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

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> WorkerArgs {
        let cli = Cli::try_parse_from([&["celeriac", "worker"], args].concat()).unwrap();
        match cli.command {
            Command::Worker(args) => args,
            other => panic!("not a worker command: {other:?}"),
        }
    }

    #[test]
    fn flags_become_the_worker_config() {
        let config =
            worker_config(&parse(&["-Q", "a, b,,c", "-c", "3", "--prefetch-multiplier", "2", "-n", "w@%h"])).unwrap();
        assert_eq!(config.queues, ["a", "b", "c"]);
        assert_eq!((config.concurrency, config.prefetch_multiplier), (3, 2));
        assert_eq!(config.hostname, format!("w@{}", crate::hostname()));
        assert_eq!(config.rescue_interval, Duration::from_secs(5));
        let config = worker_config(&parse(&["--lease-seconds", "4", "--heartbeat-interval", "1"])).unwrap();
        assert_eq!(config.rescue_interval, Duration::from_secs(2));
        let defaults = WorkerConfig::default();
        let config = worker_config(&parse(&[])).unwrap();
        assert_eq!((config.queues, config.prefetch_multiplier), (defaults.queues, defaults.prefetch_multiplier));
    }

    #[test]
    fn bad_durations_name_the_flag() {
        let err = worker_config(&parse(&["--poll-interval", "0"])).unwrap_err();
        assert_eq!(err.to_string(), "--poll-interval must be a positive number of seconds, at most a year");
        let err = worker_config(&parse(&["--lease-seconds", "1e12"])).unwrap_err();
        assert_eq!(err.to_string(), "--lease-seconds must be a positive number of seconds, at most a year");
    }

    #[test]
    fn hostnames_expand_celerys_placeholders() {
        let host = crate::hostname();
        let (name, domain) = host.split_once('.').unwrap_or((&host, ""));
        assert_eq!(expand_hostname("x@%n.%d|%h"), format!("x@{name}.{domain}|{host}"));
    }
}
