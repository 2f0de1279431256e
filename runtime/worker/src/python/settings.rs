//! How the Python pool is configured, and how the Celery app's own settings fill in what the
//! command line (or a program embedding the worker) left open, as `celery worker` does. The
//! rule is the same for every setting: a value given explicitly beats the app's setting, which
//! beats celeriac's default.
//!
//! | setting | given explicitly | else the app's | else |
//! |---|---|---|---|
//! | queues | `-Q` | `app.amqp.queues` (`task_queues`, else `task_default_queue`), if any | `celery` |
//! | concurrency (prefork) | `-c` | `worker_concurrency`, if in 1..=10,000 | the number of CPUs |
//! | prefetch multiplier | `--prefetch-multiplier` | `worker_prefetch_multiplier`, if above 0 (at most 1,000) | 4 |
//! | accept content | `--accept-content` | `accept_content`, if not empty | JSON |
//! | max tasks per child | `--max-tasks-per-child` | `worker_max_tasks_per_child`, if above 0 | none |
//! | max memory per child | `--max-memory-per-child` | `worker_max_memory_per_child`, if above 0 | none |
//! | prefetch off (multiplier 1, window fixed) | `--disable-prefetch` | `worker_disable_prefetch` | on |
//! | per-worker rate limits off | `--disable-rate-limits` | `worker_disable_rate_limits` | on |
//! | the queue of chain links and callbacks Rust handlers publish | — | `task_routes` (map routers), then `task_default_queue` | `celery` |
//! | result backend (Rust handlers, worker-decided states) | `--result-backend` | `result_backend` and the `result_*` settings | none |
//!
//! The pool applies the last three itself ([`PoolConfig::adopt_app_settings`], when its first
//! child reported the app's settings); [`AppConfig::apply_to_worker`] applies the others to the
//! [`WorkerConfig`] (through [`super::PythonPool::configure_worker`]).

use serde::Deserialize;

use super::interp::Interpreter;
use crate::WorkerConfig;

/// Celery's worker pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PoolKind {
    /// `-c N` child processes, one task each at a time (the default, as in Celery).
    Prefork,
    /// One child process running `-c N` tasks on threads (I/O-bound tasks).
    Threads,
    /// One child process running one task at a time.
    Solo,
}

impl PoolKind {
    /// The pool's name, as `-P` takes it.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            PoolKind::Prefork => "prefork",
            PoolKind::Threads => "threads",
            PoolKind::Solo => "solo",
        }
    }

    /// Whether time limits can be enforced (the task runs on a child's main thread, which can
    /// be signalled, and the child can be killed alone).
    #[must_use]
    pub fn enforces_limits(self) -> bool {
        self != PoolKind::Threads
    }
}

/// How to run the pool.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Which pool.
    pub kind: PoolKind,
    /// Tasks at once: children (prefork) or threads (threads); solo runs one.
    pub concurrency: usize,
    /// Whether the app's `worker_concurrency`, if set, replaces `concurrency` (prefork: `-c`
    /// was not given).
    pub concurrency_from_app: bool,
    /// The `-A` spec.
    pub app: String,
    /// The worker's name (Celery's `hostname`).
    pub hostname: String,
    /// Log level name for the children.
    pub loglevel: String,
    /// The queue database; children publish to it (`celeriac+<url>` as the broker).
    pub database_url: String,
    /// The interpreter the children are.
    pub interpreter: Interpreter,
    /// Replace a prefork child after this many tasks [`None`: the app's
    /// `worker_max_tasks_per_child`, if any].
    pub max_tasks_per_child: Option<u64>,
    /// Replace a prefork child once its peak RSS exceeds this many KiB (after a task) [`None`:
    /// the app's `worker_max_memory_per_child`, if any].
    pub max_memory_per_child_kib: Option<u64>,
    /// Hard time limit for tasks that set none (seconds).
    pub time_limit: Option<f64>,
    /// Soft time limit for tasks that set none (seconds).
    pub soft_time_limit: Option<f64>,
    /// Environment for the children (Celery's `--loader`, `--config`, `--result-backend` and
    /// `-I` reach the app this way); the broker URL is always the worker's database.
    pub env: Vec<(String, String)>,
}

/// App settings the worker uses where no command-line flag was given.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AppConfig {
    /// `accept_content`.
    #[serde(default)]
    pub accept_content: Vec<String>,
    /// `task_default_queue`.
    pub task_default_queue: Option<String>,
    /// The queues a Celery worker of the app consumes by default (`app.amqp.queues`).
    #[serde(default)]
    pub queues: Vec<String>,
    /// `worker_concurrency`.
    pub worker_concurrency: Option<u64>,
    /// `worker_prefetch_multiplier`.
    pub worker_prefetch_multiplier: Option<u64>,
    /// `worker_disable_prefetch` (Celery 5.6+).
    #[serde(default)]
    pub worker_disable_prefetch: bool,
    /// `worker_max_tasks_per_child`.
    pub worker_max_tasks_per_child: Option<u64>,
    /// `worker_max_memory_per_child` (KiB).
    pub worker_max_memory_per_child: Option<u64>,
    /// `worker_disable_rate_limits`.
    #[serde(default)]
    pub worker_disable_rate_limits: bool,
    /// `celeriac_global_rate_limits`: task name → fleet-wide rate limit (as text).
    #[serde(default)]
    pub celeriac_global_rate_limits: std::collections::HashMap<String, String>,
    /// The result backend settings (`None`: the app stores no results).
    #[serde(default)]
    pub results: Option<AppResults>,
    /// `task_routes`: the map routers the worker evaluates itself.
    #[serde(default)]
    pub task_routes: Vec<AppRouteMap>,
    /// The routers it does not (functions, import paths), described.
    #[serde(default)]
    pub task_routes_skipped: Vec<String>,
    /// The tasks' own `queue` attributes.
    #[serde(default)]
    pub task_queues: std::collections::HashMap<String, String>,
    /// `control_exchange`: remote-control commands come on `<it>.pidbox`.
    #[serde(default)]
    pub control_exchange: Option<String>,
    /// What `inspect conf` answers: the app's settings without and with Celery's defaults.
    #[serde(default)]
    pub conf: Vec<serde_json::Value>,
    /// `event_exchange`: where events go.
    #[serde(default)]
    pub event_exchange: Option<String>,
    /// `worker_send_task_events` (as `-E`).
    #[serde(default)]
    pub worker_send_task_events: bool,
}

/// One map router of `task_routes`: exact names and glob patterns, each to a queue name.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AppRouteMap {
    /// Task name → queue.
    #[serde(default)]
    pub exact: std::collections::HashMap<String, String>,
    /// `[pattern, queue]`, in the app's order: Python regular expressions (a glob key's is
    /// Celery's `fnmatch.translate` of it).
    #[serde(default)]
    pub patterns: Vec<(String, String)>,
}

/// The app's result backend settings (`result_backend`, `result_extended`, …).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AppResults {
    /// `result_backend`.
    pub backend: String,
    /// `result_extended`.
    #[serde(default)]
    pub extended: bool,
    /// `result_expires`, in seconds.
    pub expires: Option<f64>,
    /// `task_track_started`.
    #[serde(default)]
    pub track_started: bool,
    /// `task_ignore_result`.
    #[serde(default)]
    pub ignore_result: bool,
    /// `result_serializer`.
    #[serde(default)]
    pub serializer: String,
    /// `database_table_names['task']`.
    pub table: Option<String>,
    /// `database_table_schemas['task']`.
    pub schema: Option<String>,
    /// `database_create_tables_at_setup`.
    #[serde(default)]
    pub create_tables: bool,
    /// `result_backend_transport_options['global_keyprefix']`.
    pub redis_key_prefix: Option<String>,
    /// `result_backend_transport_options['result_chord_ordered']` (default on).
    #[serde(default = "default_true")]
    pub redis_chord_ordered: bool,
    /// django-db: the Django project's default database, as a URL.
    pub django_database_url: Option<String>,
    /// `redis_backend_use_ssl`.
    #[serde(default)]
    pub redis_ssl: crate::RedisSsl,
}

fn default_true() -> bool {
    true
}

impl AppResults {
    /// The worker's results settings; `celery_version` (the app's Celery) decides how
    /// `celery_taskmeta.result` is encoded: JSON from 5.7 on, pickle before.
    #[must_use]
    pub fn to_results_config(&self, celery_version: &str) -> crate::ResultsConfig {
        let mut numbers = celery_version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
        crate::ResultsConfig {
            extended: self.extended,
            expires: self.expires.and_then(|s| std::time::Duration::try_from_secs_f64(s).ok()),
            track_started: self.track_started,
            ignore_result: self.ignore_result,
            db_format: if version >= (5, 7) { crate::DbValueFormat::Json } else { crate::DbValueFormat::Pickle },
            table: self.table.clone(),
            schema: self.schema.clone(),
            create_tables: self.create_tables,
            redis_key_prefix: self.redis_key_prefix.clone(),
            redis_chord_ordered: self.redis_chord_ordered,
            redis_ssl: self.redis_ssl.clone(),
            optional: true,
            django_database_url: self.django_database_url.clone(),
            ..crate::ResultsConfig::new(self.backend.clone())
        }
    }
}

/// Which of the worker's settings were given explicitly (on the command line, or by the program
/// embedding the worker): those keep their value; the others take the app's setting if it has
/// one. See the [module documentation](self).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExplicitSettings {
    /// `queues` (`-Q`).
    pub queues: bool,
    /// `prefetch_multiplier` (`--prefetch-multiplier`).
    pub prefetch_multiplier: bool,
    /// `accept` (`--accept-content`).
    pub accept_content: bool,
}

impl PoolConfig {
    /// Fills in from the app's settings what this configuration leaves open: the prefork
    /// concurrency (when [`PoolConfig::concurrency_from_app`]), and the recycling limits.
    pub fn adopt_app_settings(&mut self, app: &AppConfig) {
        if let Some(n) = app.worker_concurrency.filter(|n| (1..=10_000).contains(n)) {
            if self.kind == PoolKind::Prefork && self.concurrency_from_app {
                self.concurrency = usize::try_from(n).unwrap_or(self.concurrency);
            }
        }
        self.max_tasks_per_child = self.max_tasks_per_child.or(app.worker_max_tasks_per_child.filter(|n| *n > 0));
        self.max_memory_per_child_kib =
            self.max_memory_per_child_kib.or(app.worker_max_memory_per_child.filter(|n| *n > 0));
    }
}

impl AppConfig {
    /// Applies the app's queues, prefetch multiplier and accepted content to `config`, each
    /// where `explicit` says it was not given and the app has one.
    pub fn apply_to_worker(&self, config: &mut WorkerConfig, explicit: ExplicitSettings) {
        if !explicit.queues && !self.queues.is_empty() {
            config.queues.clone_from(&self.queues);
        }
        if let Some(p) = self.worker_prefetch_multiplier.filter(|p| *p > 0 && !explicit.prefetch_multiplier) {
            config.prefetch_multiplier = usize::try_from(p).unwrap_or(4).min(1_000);
        }
        if !explicit.accept_content && !self.accept_content.is_empty() {
            config.accept = celeriac_protocol::Accept::new(&self.accept_content);
        }
        config.disable_rate_limits |= self.worker_disable_rate_limits;
        if self.worker_disable_prefetch {
            // As `--disable-prefetch`, which this setting is Celery's default for.
            config.prefetch_multiplier = 1;
            config.adaptive_prefetch = false;
        }
        if let Some(namespace) = self.control_exchange.as_ref().filter(|n| !n.is_empty()) {
            config.control.namespace.clone_from(namespace);
        }
        if let Some(exchange) = self.event_exchange.as_ref().filter(|n| !n.is_empty()) {
            config.events.exchange.clone_from(exchange);
        }
        config.events.task_events |= self.worker_send_task_events;
        if let [own, all] = self.conf.as_slice() {
            let value = |v: &serde_json::Value| {
                celeriac_protocol::json::from_slice(&serde_json::to_vec(v).unwrap_or_default()).unwrap_or_default()
            };
            config.control.app_conf = Some((value(own), value(all)));
        }
        if let Some(queue) = self.task_default_queue.as_ref().filter(|q| !q.is_empty()) {
            config.default_queue.clone_from(queue);
        }
        let mut skipped = self.task_routes_skipped.clone();
        config.task_routes = crate::TaskRoutes {
            declared: self.task_queues.clone(),
            maps: self
                .task_routes
                .iter()
                .map(|m| {
                    let (map, refused) = crate::RouteMap::new(m.exact.clone(), &m.patterns);
                    skipped.extend(refused);
                    map
                })
                .collect(),
        };
        if !skipped.is_empty() {
            tracing::warn!(
                ?skipped,
                "task_routes: routers that are not maps of names or globs to queues are not evaluated for the \
                 messages Rust handlers publish (a link without a queue goes by the other routers, then to \
                 task_default_queue)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool_config(kind: PoolKind, concurrency_from_app: bool) -> PoolConfig {
        PoolConfig {
            kind,
            concurrency: 3,
            concurrency_from_app,
            app: "proj".into(),
            hostname: "celeriac@test".into(),
            loglevel: "INFO".into(),
            database_url: "postgresql://localhost/app".into(),
            interpreter: Interpreter {
                program: "python3".into(),
                executable: "/usr/bin/python3".into(),
                version: (3, 11, 2),
                package: None,
                package_error: None,
            },
            max_tasks_per_child: None,
            max_memory_per_child_kib: None,
            time_limit: None,
            soft_time_limit: None,
            env: Vec::new(),
        }
    }

    fn app() -> AppConfig {
        AppConfig {
            accept_content: vec!["json".into(), "pickle".into()],
            task_default_queue: Some("default".into()),
            queues: vec!["default".into(), "hipri".into()],
            worker_concurrency: Some(8),
            worker_prefetch_multiplier: Some(2),
            worker_disable_prefetch: false,
            worker_max_tasks_per_child: Some(100),
            worker_max_memory_per_child: Some(200_000),
            worker_disable_rate_limits: false,
            celeriac_global_rate_limits: std::collections::HashMap::new(),
            results: None,
            task_routes: vec![AppRouteMap {
                exact: std::collections::HashMap::from([("proj.a".to_owned(), "qa".to_owned())]),
                patterns: vec![(r"(?s:proj\..*)\Z".into(), "qp".into())],
            }],
            task_routes_skipped: Vec::new(),
            task_queues: std::collections::HashMap::from([("proj.b".to_owned(), "qb".to_owned())]),
            control_exchange: None,
            conf: Vec::new(),
            event_exchange: None,
            worker_send_task_events: false,
        }
    }

    #[test]
    fn the_pool_takes_the_apps_concurrency_and_limits_where_left_open() {
        let mut config = pool_config(PoolKind::Prefork, true);
        config.adopt_app_settings(&app());
        assert_eq!(
            (config.concurrency, config.max_tasks_per_child, config.max_memory_per_child_kib),
            (8, Some(100), Some(200_000))
        );

        // Given explicitly: kept.
        let mut config = pool_config(PoolKind::Prefork, false);
        config.max_tasks_per_child = Some(5);
        config.max_memory_per_child_kib = Some(7);
        config.adopt_app_settings(&app());
        assert_eq!(
            (config.concurrency, config.max_tasks_per_child, config.max_memory_per_child_kib),
            (3, Some(5), Some(7))
        );

        // worker_concurrency is for prefork only, and only within 1..=10,000; zero limits are none.
        let mut config = pool_config(PoolKind::Threads, true);
        config.adopt_app_settings(&app());
        assert_eq!(config.concurrency, 3);
        let zeroes = AppConfig {
            worker_concurrency: Some(0),
            worker_max_tasks_per_child: Some(0),
            worker_max_memory_per_child: Some(0),
            ..app()
        };
        let mut config = pool_config(PoolKind::Prefork, true);
        config.adopt_app_settings(&zeroes);
        assert_eq!((config.concurrency, config.max_tasks_per_child, config.max_memory_per_child_kib), (3, None, None));
        let mut config = pool_config(PoolKind::Prefork, true);
        config.adopt_app_settings(&AppConfig { worker_concurrency: Some(10_001), ..app() });
        assert_eq!(config.concurrency, 3);
    }

    #[test]
    fn the_worker_takes_the_apps_queues_prefetch_and_accept_where_not_given() {
        let defaults =
            WorkerConfig { queues: vec!["celery".into()], prefetch_multiplier: 4, ..WorkerConfig::default() };
        let mut config = defaults.clone();
        app().apply_to_worker(&mut config, ExplicitSettings::default());
        assert_eq!(config.queues, ["default", "hipri"]);
        assert_eq!(config.prefetch_multiplier, 2);
        assert!(config.adaptive_prefetch);
        assert_eq!(config.accept, celeriac_protocol::Accept::new(["json", "pickle"]));
        // Routes: the task's own queue, the map's exact name, its glob, then the default queue.
        let queue = |task: &str| config.task_routes.queue_for(task).unwrap_or(&config.default_queue).to_owned();
        assert_eq!([queue("proj.b"), queue("proj.a"), queue("proj.c"), queue("other")], ["qb", "qa", "qp", "default"]);

        let mut config = WorkerConfig { queues: vec!["mine".into()], prefetch_multiplier: 9, ..defaults.clone() };
        let all = ExplicitSettings { queues: true, prefetch_multiplier: true, accept_content: true };
        app().apply_to_worker(&mut config, all);
        assert_eq!((config.queues, config.prefetch_multiplier), (vec!["mine".to_owned()], 9));
        assert_eq!(config.accept, defaults.accept);

        // An app without the settings (or with prefetch 0, which is not supported) changes nothing.
        let mut config = defaults.clone();
        let bare = AppConfig { worker_prefetch_multiplier: Some(0), ..AppConfig::default() };
        bare.apply_to_worker(&mut config, ExplicitSettings::default());
        assert_eq!((config.queues, config.prefetch_multiplier), (defaults.queues.clone(), 4));
        assert_eq!(config.accept, defaults.accept);
        let mut config = defaults.clone();
        AppConfig { worker_prefetch_multiplier: Some(5_000), ..AppConfig::default() }
            .apply_to_worker(&mut config, ExplicitSettings::default());
        assert_eq!(config.prefetch_multiplier, 1_000);
        // worker_disable_prefetch: one reserved per slot, and the window never grows.
        let mut config = defaults.clone();
        AppConfig { worker_disable_prefetch: true, ..app() }.apply_to_worker(&mut config, ExplicitSettings::default());
        assert_eq!((config.prefetch_multiplier, config.adaptive_prefetch), (1, false));
    }
}
