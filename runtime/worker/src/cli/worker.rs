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

use celeriac_store::{Store, StoreConfig};

use super::{
    banner::{self, Banner, QueueLine},
    CliError,
};
use crate::{Registry, Worker, WorkerConfig};

/// `celeriac worker` options (named like `celery worker`'s where one exists).
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Comma-separated queues to consume [default: celery; with -A, the app's queues
    /// (task_queues, else task_default_queue), as celery worker consumes].
    #[arg(short = 'Q', long, value_delimiter = ',', env = "CELERY_WORKER_QUEUES")]
    pub queues: Option<Vec<String>>,
    /// Comma-separated queues not to consume, taken out of -Q or the app's queues (Celery's
    /// -X).
    #[arg(short = 'X', long, value_delimiter = ',', env = "CELERY_WORKER_EXCLUDE_QUEUES")]
    pub exclude_queues: Option<Vec<String>>,
    /// Tasks run at once, or `auto` (the CPUs this process may use) [default: number of CPUs;
    /// with -A -P prefork, the app's worker_concurrency if set].
    #[arg(short = 'c', long, value_parser = parse_concurrency, env = "CELERY_WORKER_CONCURRENCY")]
    pub concurrency: Option<u32>,
    /// Log level: DEBUG, INFO, WARNING, ERROR, CRITICAL. WARNING by default, as for `celery
    /// worker`: `-l INFO` shows the worker's start ("… ready.") and every task's outcome.
    #[arg(short = 'l', long, default_value = "WARNING", env = "CELERY_WORKER_LOGLEVEL")]
    pub loglevel: String,
    /// Worker name; %h = host name, %n = its first label, %d = its domain.
    #[arg(short = 'n', long, default_value = "celeriac@%h", env = "CELERY_WORKER_HOSTNAME")]
    pub hostname: String,
    /// Messages reserved ahead per execution slot, besides the running ones (Celery's
    /// worker_prefetch_multiplier; 0, Celery's "unlimited", is not supported: ETA tasks wait in
    /// the database, so there is nothing to gain from it) [default: 4; with -A, the app's
    /// worker_prefetch_multiplier].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000), env = "CELERY_WORKER_PREFETCH_MULTIPLIER")]
    pub prefetch_multiplier: Option<u32>,
    /// Reserve nothing ahead: claim a message only for a free execution slot (Celery's
    /// --disable-prefetch; here the same as --prefetch-multiplier 1 with --fixed-prefetch, the
    /// least celeriac reserves).
    #[arg(long, env = "CELERY_WORKER_DISABLE_PREFETCH")]
    pub disable_prefetch: bool,
    /// Never reserve more than concurrency × prefetch multiplier. Without it, while tasks
    /// finish before a claim comes back (the worker waits on the database, not on its tasks)
    /// and claims bring messages of one priority, the window of messages held grows up to 16
    /// times that (at most 1,024), and shrinks back (giving back what it holds beyond) once a
    /// reserved message waits 50 ms behind busy slots.
    #[arg(long, env = "CELERIAC_FIXED_PREFETCH")]
    pub fixed_prefetch: bool,
    /// Seconds a claim lasts without a heartbeat; after that the message runs elsewhere.
    #[arg(long, default_value_t = 30.0)]
    pub lease_seconds: f64,
    /// Seconds between heartbeats (lease renewals); at most half the lease.
    #[arg(long, default_value_t = 5.0, env = "CELERY_WORKER_HEARTBEAT_INTERVAL")]
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
    #[arg(short = 'E', long, visible_alias = "events", env = "CELERY_WORKER_TASK_EVENTS")]
    pub task_events: bool,
    /// Send no worker-online/heartbeat/offline events (Celery's --without-heartbeat).
    #[arg(long, env = "CELERY_WORKER_WITHOUT_HEARTBEAT")]
    pub without_heartbeat: bool,
    /// Pool for the app's Python tasks (with -A): prefork (-c child processes), threads (one
    /// process, -c threads) or solo (one process, one task at a time). Celery's `processes` is
    /// prefork; `eventlet` and `gevent` run the threads pool (with a warning).
    #[cfg(feature = "python")]
    #[arg(short = 'P', long, value_enum, default_value = "prefork", env = "CELERY_WORKER_POOL")]
    pub pool: PoolFlag,
    /// Also run the scheduler (Celery's -B/--beat): fire the periodic schedules, with -A after
    /// syncing the app's beat_schedule into the database. Any number of workers may run with
    /// -B: one leads at a time, and each slot fires once.
    #[arg(short = 'B', long, env = "CELERY_WORKER_BEAT")]
    pub beat: bool,
    /// Python interpreter (3.9 or later, with the celeriac package) that runs the app's tasks
    /// [default: $CELERIAC_PYTHON, which the pip-installed celeriac command sets to its own
    /// interpreter, else $VIRTUAL_ENV/bin/python, else python3 on PATH]. Celery's
    /// --executable.
    #[arg(long, visible_alias = "executable", env = "CELERIAC_PYTHON", value_name = "PATH")]
    pub python: Option<String>,
    /// Replace a prefork child after it ran this many tasks [default: the app's
    /// worker_max_tasks_per_child].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), env = "CELERY_WORKER_MAX_TASKS_PER_CHILD")]
    pub max_tasks_per_child: Option<u64>,
    /// Replace a prefork child after a task that left its resident memory above this many KiB
    /// [default: the app's worker_max_memory_per_child].
    #[arg(long, value_name = "KIB", value_parser = clap::value_parser!(u64).range(1..), env = "CELERY_WORKER_MAX_MEMORY_PER_CHILD")]
    pub max_memory_per_child: Option<u64>,
    /// Hard time limit in seconds for Python tasks that set none: the child running the task
    /// is killed and replaced, and the task fails with TimeLimitExceeded.
    #[arg(long, value_name = "SECONDS", env = "CELERY_WORKER_TIME_LIMIT")]
    pub time_limit: Option<f64>,
    /// Soft time limit in seconds for Python tasks that set none: SoftTimeLimitExceeded is
    /// raised inside the task.
    #[arg(long, value_name = "SECONDS", env = "CELERY_WORKER_SOFT_TIME_LIMIT")]
    pub soft_time_limit: Option<f64>,
    /// Delete the waiting messages of the worker's queues before starting (Celery's
    /// --purge/--discard; messages a worker holds are left).
    #[arg(long, visible_alias = "discard", env = "CELERY_WORKER_PURGE")]
    pub purge: bool,
    /// Comma-separated modules the app's children import after the app, for their tasks
    /// (Celery's -I).
    #[arg(short = 'I', long, value_delimiter = ',', env = "CELERY_WORKER_INCLUDE")]
    pub include: Option<Vec<String>>,
    /// MAX,MIN: grow the prefork pool up to MAX children while tasks wait, shrink it to MIN
    /// when they do not (Celery's --autoscale; starts at MIN).
    #[arg(long, value_name = "MAX,MIN", value_parser = parse_autoscale, env = "CELERY_WORKER_AUTOSCALE")]
    pub autoscale: Option<(u32, u32)>,
    /// Accepted for Celery's -O: celeriac's pool hands a task only to an idle child (or queues
    /// one behind a task that just started), which is what `fair` asks for.
    #[arg(short = 'O', long, value_parser = ["default", "fair"], env = "CELERY_WORKER_OPTIMIZATION")]
    pub optimization: Option<String>,
    /// Accepted, with a warning, for Celery's -S: revocations are kept in the database, which
    /// every worker reads; there is no state file.
    #[arg(short = 'S', long, value_name = "PATH", env = "CELERY_WORKER_STATEDB")]
    pub statedb: Option<std::path::PathBuf>,
    /// Accepted, with a warning, for Celery's --without-gossip: workers know each other from
    /// the worker table.
    #[arg(long, env = "CELERY_WORKER_WITHOUT_GOSSIP")]
    pub without_gossip: bool,
    /// Accepted, with a warning, for Celery's --without-mingle: revocations and clocks are in
    /// the database, so there is nothing to sync at startup.
    #[arg(long, env = "CELERY_WORKER_WITHOUT_MINGLE")]
    pub without_mingle: bool,
    /// Accepted for Celery's --pool-start-method: children are always started fresh (as
    /// `spawn`), never forked from the worker; `fork` gets a warning.
    #[arg(long, value_parser = ["fork", "spawn"], env = "CELERY_WORKER_POOL_START_METHOD")]
    pub pool_start_method: Option<String>,
    /// Accepted, with a warning, for Celery's -s (with -B): schedules live in the database.
    #[arg(
        short = 's',
        long = "schedule-filename",
        visible_alias = "schedule",
        value_name = "PATH",
        env = "CELERY_WORKER_SCHEDULE_FILENAME"
    )]
    pub schedule_filename: Option<String>,
    /// Accepted, with a warning, for Celery's --scheduler (with -B): celeriac's scheduler reads
    /// the schedule table, which `celeriac schedule import` fills from the app or from
    /// django-celery-beat.
    #[arg(long, value_name = "CLASS", env = "CELERY_WORKER_SCHEDULER")]
    pub scheduler: Option<String>,
    /// Serve Prometheus metrics (`/metrics`) and the health probes `/healthz` (the process
    /// answers) and `/readyz` (the database answers, the schema is current, heartbeats succeed)
    /// on this port.
    #[arg(long, value_name = "PORT", env = "CELERIAC_METRICS_PORT")]
    pub metrics_port: Option<u16>,
    /// The address the metrics port listens on (all interfaces by default, for Prometheus and
    /// Kubernetes probes; the endpoints only read).
    #[arg(long, value_name = "ADDRESS", default_value = "0.0.0.0", requires = "metrics_port")]
    pub metrics_host: std::net::IpAddr,
    /// Also serve the web dashboard on this port (as `celeriac dashboard`, in this process).
    #[arg(long, value_name = "PORT")]
    pub dashboard: Option<u16>,
    /// The address the dashboard listens on (a non-loopback address needs
    /// --basic-auth, --token or --read-only).
    #[arg(long, value_name = "ADDRESS", default_value = "127.0.0.1", requires = "dashboard")]
    pub dashboard_host: std::net::IpAddr,
    /// The dashboard's access options.
    #[command(flatten)]
    pub dashboard_access: super::DashboardAccess,
    /// Celery's daemon options.
    #[command(flatten)]
    pub daemon: super::DaemonArgs,
}

/// `-P`: Celery's pool names, as celeriac runs them.
#[cfg(feature = "python")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PoolFlag {
    /// `-c N` child processes, one task each at a time (the default, as in Celery).
    #[value(alias = "processes")]
    Prefork,
    /// One child process running `-c N` tasks on threads (I/O-bound tasks).
    Threads,
    /// One child process running one task at a time.
    Solo,
    /// Runs the threads pool (celeriac embeds no event loop): same concurrency, real threads.
    Eventlet,
    /// Runs the threads pool (celeriac embeds no event loop): same concurrency, real threads.
    Gevent,
}

#[cfg(feature = "python")]
impl PoolFlag {
    /// The pool that runs.
    #[must_use]
    pub fn kind(self) -> crate::python::PoolKind {
        use crate::python::PoolKind;
        match self {
            PoolFlag::Prefork => PoolKind::Prefork,
            PoolFlag::Threads | PoolFlag::Eventlet | PoolFlag::Gevent => PoolKind::Threads,
            PoolFlag::Solo => PoolKind::Solo,
        }
    }
}

/// `-c`: a number from 1 to 10,000, or `auto`.
fn parse_concurrency(text: &str) -> Result<u32, String> {
    if text.eq_ignore_ascii_case("auto") {
        return Ok(std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(1)));
    }
    match text.trim().parse::<u32>() {
        Ok(n) if (1..=10_000).contains(&n) => Ok(n),
        _ => Err(format!("{text:?} is not a number from 1 to 10000, or auto")),
    }
}

/// `--autoscale MAX,MIN`: as Celery, the larger number is the maximum, whichever comes
/// first; a single number is the maximum, with a minimum of 0.
fn parse_autoscale(text: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{text:?} is not MAX,MIN (e.g. 10,3)");
    let numbers = text.split(',').map(|p| p.trim().parse::<u32>()).collect::<Result<Vec<_>, _>>().map_err(|_| bad())?;
    let (max, min) = match numbers[..] {
        [max] => (max, 0),
        [a, b] => (a.max(b), a.min(b)),
        _ => return Err(bad()),
    };
    if max == 0 || max > 10_000 {
        return Err(bad());
    }
    Ok((max, min))
}

/// The options of the top-level command the worker uses.
#[derive(Debug)]
pub(super) struct Globals<'a> {
    /// `-A`.
    pub app: Option<&'a str>,
    /// `--result-backend`.
    pub result_backend: Option<&'a str>,
    /// What `--loader`, `--config` and `--result-backend` set in the app's environment.
    #[cfg_attr(not(feature = "python"), allow(dead_code))]
    pub app_env: Vec<(String, String)>,
    /// `-q`: no start-up banner.
    pub quiet: bool,
}

/// The worker's node name (`-n` expanded).
pub(super) fn nodename(args: &WorkerArgs) -> String {
    expand_hostname(&args.hostname)
}

/// Runs a worker until SIGTERM/SIGINT; with `app` (`-A`), also the app's Python tasks.
pub(super) async fn run(
    url: &str,
    globals: &Globals<'_>,
    args: &WorkerArgs,
    mut registry: Registry,
) -> Result<(), CliError> {
    let app = globals.app;
    if args.example_handlers {
        crate::examples::register(&mut registry);
    }
    warn_about_flags_without_meaning(args);
    let mut config = worker_config(args, globals.result_backend)?;
    let shutdown = CancellationToken::new();
    tokio::spawn(handle_signals(shutdown.clone()));
    let pool = match app {
        Some(app) => Some(start_python_pool(app, args, globals, url, &mut config, &mut registry, &shutdown).await?),
        None => None,
    };
    // The flags also apply to the app's own result backend.
    if let Some(results) = &mut config.results {
        results.extended |= args.result_extended;
        results.track_started |= args.task_track_started;
    }
    if let Some(excluded) = &args.exclude_queues {
        config.queues.retain(|q| !excluded.iter().any(|x| x.trim() == q));
        if config.queues.is_empty() {
            return Err(CliError::NoQueuesLeft);
        }
    }
    if args.disable_prefetch {
        config.prefetch_multiplier = 1;
        config.adaptive_prefetch = false;
    }
    if let Some((max, min)) = args.autoscale {
        if matches!(config.control.resize, crate::PoolResize::Fixed(_)) {
            return Err(CliError::BadFlag { flag: "autoscale", why: "the threads and solo pools cannot grow".into() });
        }
        if pool.is_none() {
            // Rust handlers: start at the minimum too.
            config.concurrency = (min as usize).max(1);
        }
        config.autoscale = Some(crate::Autoscale { min: min as usize, max: max as usize });
        config.validate()?;
    }
    let store = Store::new(&StoreConfig {
        max_connections: if args.beat { 8 } else { 6 },
        connect_timeout: connect_timeout_for(config.lease),
        ..StoreConfig::new(url)
    })?;
    // The dashboard's port is bound before the first claim: a port in use fails the start.
    let dashboard = match args.dashboard {
        Some(port) => {
            let config = args.dashboard_access.config(std::net::SocketAddr::new(args.dashboard_host, port));
            let listener = crate::dashboard::bind(&config).await?;
            let stop = CancellationToken::new();
            let served = tokio::spawn(crate::dashboard::serve(super::store(url, 4)?, config, listener, stop.clone()));
            Some((stop, served))
        }
        None => None,
    };
    if args.purge {
        let mut erased = 0;
        for queue in &config.queues {
            erased += store.message_purge(queue).await?;
        }
        if erased > 0 {
            println!("purge: Erased {erased} {} from the queue.", if erased == 1 { "message" } else { "messages" });
        }
    }
    if args.beat {
        if let (Some(app), Some(pool)) = (app, &pool) {
            sync_schedule(&store, pool, app).await?;
        }
        config.scheduler = Some(crate::scheduler::SchedulerConfig::default());
    }
    if !globals.quiet {
        let mut task_names = registry.names();
        #[cfg(feature = "python")]
        if let Some(pool) = &pool {
            // Celery's own tasks that celeriac runs natively are registered with the worker.
            task_names.extend(pool.hello().tasks.keys().map(String::as_str));
        }
        task_names.sort_unstable();
        task_names.dedup();
        println!("{}", startup_banner(url, args, &config, pool.as_ref(), &task_names).render());
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
    if let Some((stop, served)) = dashboard {
        stop.cancel();
        let _ = served.await;
    }
    result
}

/// What the start-up banner shows of this worker.
#[cfg(feature = "python")]
fn startup_banner(
    url: &str,
    args: &WorkerArgs,
    config: &WorkerConfig,
    pool: Option<&crate::python::PythonPool>,
    task_names: &[&str],
) -> Banner {
    let mut banner = rust_banner(url, args, config, task_names);
    if let Some(pool) = pool {
        let hello = pool.hello();
        let app = &hello.banner;
        banner.celery = Some(hello.celery.clone());
        if !app.platform.is_empty() {
            banner.platform.clone_from(&app.platform);
        }
        banner.app.clone_from(&app.app);
        if !app.results.is_empty() {
            banner.results.clone_from(&app.results);
        }
        banner.queues = config
            .queues
            .iter()
            .map(|name| match app.queues.get(name) {
                Some((exchange, kind, key)) => QueueLine {
                    name: name.clone(),
                    exchange: exchange.clone(),
                    exchange_type: kind.clone(),
                    routing_key: key.clone(),
                },
                None => QueueLine::undeclared(name),
            })
            .collect();
        banner.concurrency = concurrency_text(config, args.pool.kind().name());
    }
    banner
}

#[cfg(not(feature = "python"))]
fn startup_banner(
    url: &str,
    args: &WorkerArgs,
    config: &WorkerConfig,
    _pool: Option<&NoPool>,
    task_names: &[&str],
) -> Banner {
    rust_banner(url, args, config, task_names)
}

/// The banner of a worker of Rust handlers alone.
fn rust_banner(url: &str, args: &WorkerArgs, config: &WorkerConfig, task_names: &[&str]) -> Banner {
    Banner {
        hostname: config.hostname.clone(),
        celery: None,
        platform: banner::kernel_platform(),
        timestamp: banner::now(),
        app: "none (Rust handlers)".to_owned(),
        transport: celeriac_store::redact_url(url),
        results: config.results.as_ref().map_or_else(|| "disabled://".to_owned(), |r| redact_backend(&r.backend)),
        concurrency: concurrency_text(config, "Rust handlers"),
        task_events: config.events.task_events,
        queues: config.queues.iter().map(|q| QueueLine::undeclared(q)).collect(),
        tasks: banner::listed_tasks(&args.loglevel, task_names),
    }
}

/// `2 (prefork)`, or with `--autoscale` `{min=1, max=4} (prefork)`, as Celery shows it.
fn concurrency_text(config: &WorkerConfig, pool: &str) -> String {
    match &config.autoscale {
        Some(a) => format!("{{min={}, max={}}} ({pool})", a.min, a.max),
        None => format!("{} ({pool})", config.concurrency),
    }
}

/// A result backend URL with its password masked (`scheme://user:**@host/…`), as kombu's
/// `as_uri()` shows it.
fn redact_backend(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_once('/').map_or((rest, None), |(a, p)| (a, Some(p)));
    let masked = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:**@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_owned(),
    };
    match path {
        Some(path) => format!("{scheme}://{masked}/{}", path.split('?').next().unwrap_or_default()),
        None => format!("{scheme}://{masked}"),
    }
}

/// Starts the Python pool for `-A app` and registers the app's tasks; adjusts `config` to the
/// pool and to the app's settings where no flag was given (see `crate::python::settings`).
#[cfg(feature = "python")]
async fn start_python_pool(
    app: &str,
    args: &WorkerArgs,
    globals: &Globals<'_>,
    url: &str,
    config: &mut WorkerConfig,
    registry: &mut Registry,
    shutdown: &CancellationToken,
) -> Result<crate::python::PythonPool, CliError> {
    use crate::python::{interp, ExplicitSettings, PoolConfig, PoolKind, PythonPool};
    if matches!(args.pool, PoolFlag::Eventlet | PoolFlag::Gevent) {
        tracing::warn!(
            "-P {}: celeriac embeds no event loop; the threads pool runs the tasks (-c {} threads)",
            if args.pool == PoolFlag::Gevent { "gevent" } else { "eventlet" },
            config.concurrency
        );
    }
    let kind = args.pool.kind();
    let interpreter = interp::probe(&interp::choose(args.python.as_deref()))?;
    let limit = |flag: &'static str, v: Option<f64>| match v {
        Some(s) if !(s.is_finite() && s > 0.0) => Err(CliError::NotPositiveSeconds { flag }),
        other => Ok(other),
    };
    let mut env = globals.app_env.clone();
    if let Some(include) = &args.include {
        env.push(("CELERIAC_INCLUDE".to_owned(), include.join(",")));
    }
    let concurrency = match args.autoscale {
        // Celery's autoscaler starts the pool at its minimum (one child at least here).
        Some((_, min)) => (min as usize).max(1),
        None => config.concurrency,
    };
    let pool_config = PoolConfig {
        kind,
        concurrency: if kind == PoolKind::Solo { 1 } else { concurrency },
        concurrency_from_app: args.concurrency.is_none() && args.autoscale.is_none(),
        app: app.to_owned(),
        hostname: config.hostname.clone(),
        loglevel: args.loglevel.clone(),
        database_url: url.to_owned(),
        interpreter,
        max_tasks_per_child: args.max_tasks_per_child,
        max_memory_per_child_kib: args.max_memory_per_child,
        time_limit: limit("time-limit", args.time_limit)?,
        soft_time_limit: limit("soft-time-limit", args.soft_time_limit)?,
        env,
    };
    let pool = PythonPool::start(pool_config).await?;
    pool.stop_sending_at(shutdown);
    let hello = pool.hello();
    let names = pool.register_tasks(registry)?;
    tracing::info!(
        app = %hello.app, pool = kind.name(), python = %hello.python, executable = %hello.executable, celery = %hello.celery,
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
    _globals: &Globals<'_>,
    _url: &str,
    _config: &mut WorkerConfig,
    _registry: &mut Registry,
    _shutdown: &CancellationToken,
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
fn worker_config(args: &WorkerArgs, result_backend: Option<&str>) -> Result<WorkerConfig, CliError> {
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
        adaptive_prefetch: !args.fixed_prefetch,
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
        results: result_backend.map(|url| crate::ResultsConfig {
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
        autoscale: None,
        metrics_address: args.metrics_port.map(|port| std::net::SocketAddr::new(args.metrics_host, port)),
    };
    config.validate()?;
    Ok(config)
}

/// One line for each `celery worker` flag given that has no meaning on PostgreSQL.
fn warn_about_flags_without_meaning(args: &WorkerArgs) {
    if args.without_gossip {
        tracing::warn!("--without-gossip: nothing to turn off; celeriac workers know each other from the worker table");
    }
    if args.without_mingle {
        tracing::warn!("--without-mingle: nothing to turn off; revocations are in the database, read at every claim");
    }
    if let Some(path) = &args.statedb {
        tracing::warn!(
            "-S/--statedb {}: ignored; revocations are kept in the database for every worker",
            path.display()
        );
    }
    if args.pool_start_method.as_deref() == Some("fork") {
        tracing::warn!("--pool-start-method fork: ignored; celeriac starts each child fresh, as spawn");
    }
    if let Some(path) = &args.schedule_filename {
        tracing::warn!("-s/--schedule-filename {path}: ignored; celeriac's schedules live in the database");
    }
    if let Some(class) = &args.scheduler {
        tracing::warn!(
            "--scheduler {class}: ignored; celeriac's scheduler reads its schedule table (see `celeriac schedule import`)"
        );
    }
}

/// The app's `broker_url` (`-A` loaded by `python` the way the pool's children load it), for
/// a worker given no database URL.
///
/// # Errors
/// The app does not load (Celery's message), or the interpreter is unusable.
#[cfg(feature = "python")]
pub(super) fn app_broker_url(
    python: Option<&str>,
    app: &str,
    env: &[(String, String)],
) -> Result<Option<String>, CliError> {
    const READ_BROKER_URL: &str = "import sys\n\
from celeriac._worker import AppLoadError, load_app\n\
try:\n    app = load_app(sys.argv[1])\n\
except AppLoadError as e:\n    sys.exit(str(e))\n\
print(app.conf.broker_url or '')\n";
    let program = crate::python::interp::choose(python);
    let out = std::process::Command::new(&program)
        .args(["-c", READ_BROKER_URL, app])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .map_err(|source| crate::python::interp::InterpreterError::NotRunnable { python: program.clone(), source })?;
    if !out.status.success() {
        return Err(CliError::Pool(crate::python::pool::PoolError::AppLoad(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        )));
    }
    let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Ok((!url.is_empty()).then_some(url))
}

#[cfg(not(feature = "python"))]
pub(super) fn app_broker_url(
    _python: Option<&str>,
    _app: &str,
    _env: &[(String, String)],
) -> Result<Option<String>, CliError> {
    Err(CliError::NoEmbeddedPython)
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
            Command::Worker(args) => *args,
            other => panic!("not a worker command: {other:?}"),
        }
    }

    #[test]
    fn flags_become_the_worker_config() {
        let config =
            worker_config(&parse(&["-Q", "a, b,,c", "-c", "3", "--prefetch-multiplier", "2", "-n", "w@%h"]), None)
                .unwrap();
        assert_eq!(config.queues, ["a", "b", "c"]);
        assert_eq!((config.concurrency, config.prefetch_multiplier), (3, 2));
        assert_eq!(config.hostname, format!("w@{}", crate::hostname()));
        assert_eq!(config.rescue_interval, Duration::from_secs(5));
        let config = worker_config(&parse(&["--lease-seconds", "4", "--heartbeat-interval", "1"]), None).unwrap();
        assert_eq!(config.rescue_interval, Duration::from_secs(2));
        let defaults = WorkerConfig::default();
        let config = worker_config(&parse(&[]), None).unwrap();
        assert_eq!((config.queues, config.prefetch_multiplier), (defaults.queues, defaults.prefetch_multiplier));
    }

    #[test]
    fn bad_durations_name_the_flag() {
        let err = worker_config(&parse(&["--poll-interval", "0"]), None).unwrap_err();
        assert_eq!(err.to_string(), "--poll-interval must be a positive number of seconds, at most a year");
        let err = worker_config(&parse(&["--lease-seconds", "1e12"]), None).unwrap_err();
        assert_eq!(err.to_string(), "--lease-seconds must be a positive number of seconds, at most a year");
    }

    #[test]
    fn celerys_flag_values_parse_as_celery_reads_them() {
        assert_eq!(parse_autoscale("10,3"), Ok((10, 3)));
        assert_eq!(parse_autoscale("3,10"), Ok((10, 3)));
        assert_eq!(parse_autoscale("4"), Ok((4, 0)));
        for bad in ["", "0", "a,b", "1,2,3", "20000"] {
            assert!(parse_autoscale(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_concurrency("7"), Ok(7));
        assert!(parse_concurrency("AUTO").is_ok_and(|n| n >= 1));
        for bad in ["0", "-1", "many", "10001"] {
            assert!(parse_concurrency(bad).is_err(), "{bad}");
        }
        let args = parse(&["--discard", "--events", "-X", "a,b", "-I", "m1,m2", "-O", "fair", "-D", "-f", "%n.log"]);
        assert!(args.purge && args.task_events && args.daemon.detach);
        assert_eq!(args.exclude_queues.as_deref(), Some(&["a".to_owned(), "b".to_owned()][..]));
        assert_eq!(args.include.as_deref(), Some(&["m1".to_owned(), "m2".to_owned()][..]));
        assert_eq!(args.daemon.logfile.as_deref(), Some(std::path::Path::new("%n.log")));
        #[cfg(feature = "python")]
        {
            use crate::python::PoolKind;
            assert_eq!(parse(&["-P", "processes"]).pool.kind(), PoolKind::Prefork);
            assert_eq!(parse(&["-P", "gevent"]).pool.kind(), PoolKind::Threads);
            assert_eq!(parse(&["-P", "eventlet"]).pool.kind(), PoolKind::Threads);
        }
        let cli = Cli::try_parse_from(["celeriac", "-b", "celeriac+postgresql://h/db", "--workdir", "/tmp", "worker"]);
        let cli = cli.unwrap();
        assert_eq!(crate::cli::database_url(&cli).unwrap(), "postgresql://h/db");
        let cli = Cli::try_parse_from(["celeriac", "worker", "-b", "redis://h"]).unwrap();
        assert!(crate::cli::database_url(&cli).is_err());
    }

    #[test]
    fn hostnames_expand_celerys_placeholders() {
        let host = crate::hostname();
        let (name, domain) = host.split_once('.').unwrap_or((&host, ""));
        assert_eq!(expand_hostname("x@%n.%d|%h"), format!("x@{name}.{domain}|{host}"));
    }
}

/// How long the worker waits for a connection (to open, or to come free in its pool): a fifth of
/// the lease, between 1 and 5 s. The heartbeat renews leases through the same pool, and a pass
/// stuck that long is retried on the next beat; a wait as long as a short lease (the chaos suite
/// runs 4 s leases) let a stuck connection attempt during a 0.9 s restart cost every lease.
fn connect_timeout_for(lease: Duration) -> Duration {
    (lease / 5).clamp(Duration::from_secs(1), Duration::from_secs(5))
}

#[cfg(test)]
mod connect_timeout_tests {
    use std::time::Duration;

    #[test]
    fn the_connect_timeout_is_a_fifth_of_the_lease_within_one_and_five_seconds() {
        assert_eq!(super::connect_timeout_for(Duration::from_secs(4)), Duration::from_secs(1));
        assert_eq!(super::connect_timeout_for(Duration::from_secs(10)), Duration::from_secs(2));
        assert_eq!(super::connect_timeout_for(Duration::from_secs(30)), Duration::from_secs(5));
        assert_eq!(super::connect_timeout_for(Duration::from_secs(300)), Duration::from_secs(5));
    }
}
