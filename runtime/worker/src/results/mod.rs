//! Results of the tasks the worker itself decides (Rust handlers, and the states no task code
//! reaches: unregistered, expired, refused content), written to the app's result backend in
//! Celery's format so that an unmodified client's `AsyncResult` reads them.
//!
//! | backend (`result_backend`) | where | how |
//! |---|---|---|
//! | `db+postgresql://…` on the queue database | `celery_taskmeta` | with the message's deletion, in one statement (`Settlement::Finish`) |
//! | `db+postgresql://…` elsewhere | `celery_taskmeta` | one upsert, before the message is deleted |
//! | `django-db` | `django_celery_results_taskresult` (the queue database, or `django_db_url`) | as the two above |
//! | `redis://…` | `celery-task-meta-<id>` | `SETEX` + `PUBLISH`, before the message is deleted |
//!
//! Python tasks (`-A`) store their own results through Celery's code in the pool children; this
//! module never writes for them, except for the states the worker decides before a task runs.

mod meta;
mod read;
pub(crate) use read::decode_value;
mod redis;

use std::{collections::HashMap, sync::Arc, time::Duration};

use celeriac_protocol::TaskMessage;
use celeriac_store::{ResultRow, ResultTable, ResultTableConfig, ResultTableKind, Store, StoreConfig};

pub use meta::DbValueFormat;
pub(crate) use meta::{Exception, State, TaskContext};
pub(crate) use read::StoredResult;

use crate::Error;

/// Where and how results are stored (Celery's `result_*` settings).
#[derive(Debug, Clone)]
pub struct ResultsConfig {
    /// Celery's `result_backend`: `db+postgresql://…` (also `db+postgresql+psycopg://…`,
    /// `db+postgresql+psycopg2://…`), `django-db`, or `redis://…`.
    pub backend: String,
    /// For `django-db`: the Django project's database (default: the queue database).
    pub django_database_url: Option<String>,
    /// `result_extended`: also store name, args, kwargs, worker, retries and queue.
    pub extended: bool,
    /// `result_expires` (Redis keys' time to live). Default: one day.
    pub expires: Option<Duration>,
    /// `task_track_started`: store `STARTED` when a task starts (unless the task says).
    pub track_started: bool,
    /// `task_ignore_result`: store nothing (unless the task says).
    pub ignore_result: bool,
    /// Tasks' own `ignore_result` and `track_started` (the app's task declarations).
    pub tasks: HashMap<String, TaskResultSettings>,
    /// How `celery_taskmeta.result` is encoded (by the clients' Celery version).
    pub db_format: DbValueFormat,
    /// `database_table_names['task']` and `database_table_schemas['task']`.
    pub table: Option<String>,
    /// The schema of the table.
    pub schema: Option<String>,
    /// `database_create_tables_at_setup`.
    pub create_tables: bool,
    /// `result_backend_transport_options['global_keyprefix']` (Redis).
    pub redis_key_prefix: Option<String>,
    /// `result_backend_transport_options['result_chord_ordered']` (Redis): chord parts in a
    /// sorted set by header index (Celery's default) rather than a list.
    pub redis_chord_ordered: bool,
    /// `redis_backend_use_ssl` (Redis over TLS): options the `rediss://` URL's own query
    /// parameters override.
    pub redis_ssl: RedisSsl,
    /// Whether a backend that cannot be used (unsupported, unreachable, its table missing) only
    /// means no results (a warning: the app's setting, which its Python tasks use through
    /// Celery), rather than an error that stops the worker (`--result-backend`).
    pub optional: bool,
}

impl ResultsConfig {
    /// Celery's defaults for `backend`; pickle in `celery_taskmeta`, which every Celery version
    /// reads.
    #[must_use]
    pub fn new(backend: impl Into<String>) -> Self {
        ResultsConfig {
            backend: backend.into(),
            django_database_url: None,
            extended: false,
            expires: Some(Duration::from_secs(86_400)),
            track_started: false,
            ignore_result: false,
            tasks: HashMap::new(),
            db_format: DbValueFormat::Pickle,
            table: None,
            schema: None,
            create_tables: true,
            redis_key_prefix: None,
            redis_chord_ordered: true,
            redis_ssl: RedisSsl::default(),
            optional: false,
        }
    }
}

/// TLS settings of a `rediss://` backend, as Celery names them (`redis_backend_use_ssl`, or the
/// URL's `ssl_cert_reqs`, `ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub struct RedisSsl {
    /// `required` (the default), `optional` (verified as required) or `none` (not verified).
    pub cert_reqs: Option<String>,
    /// The CA bundle (PEM) the server's certificate is verified with (default: the system's).
    pub ca_certs: Option<String>,
    /// The client certificate (PEM), with `keyfile`.
    pub certfile: Option<String>,
    /// The client key (PEM).
    pub keyfile: Option<String>,
}

/// A task's own result settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
pub struct TaskResultSettings {
    /// `Task.ignore_result`.
    pub ignore_result: bool,
    /// `Task.track_started`.
    pub track_started: bool,
}

/// The database URL of a `db+postgresql…://` backend, if it is one.
fn sqlalchemy_postgres_url(backend: &str) -> Option<String> {
    let rest = backend.strip_prefix("db+")?;
    let (scheme, tail) = rest.split_once("://")?;
    let driverless = scheme.split('+').next()?;
    matches!(driverless, "postgresql" | "postgres").then(|| format!("postgresql://{tail}"))
}

enum Backend {
    /// The queue database's table: rows go with the completion.
    QueueDatabase(Arc<ResultTable>),
    /// Another database's table.
    Database {
        store: Store,
        table: Arc<ResultTable>,
    },
    Redis(redis::RedisResults),
}

/// The result backend of a running worker.
pub(crate) struct Results {
    backend: Backend,
    config: ResultsConfig,
    /// The queue database (for states stored ahead of the completion).
    queue: Store,
}

impl std::fmt::Debug for Results {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Results").field("backend", &self.describe()).finish_non_exhaustive()
    }
}

impl Results {
    /// Opens the backend `config` names (finding or creating its table).
    ///
    /// # Errors
    /// [`Error::Config`] for an unsupported or unreadable backend URL, a missing table; store
    /// errors when the database cannot be reached.
    pub(crate) async fn open(config: ResultsConfig, queue: &Store, queues: &[String]) -> Result<Results, Error> {
        let backend = config.backend.trim();
        let table_config = |kind: ResultTableKind| {
            let mut t = match kind {
                ResultTableKind::Celery => ResultTableConfig::celery(),
                ResultTableKind::Django => ResultTableConfig::django(),
            };
            if kind == ResultTableKind::Celery {
                if let Some(name) = &config.table {
                    t.table.clone_from(name);
                }
                t.schema.clone_from(&config.schema);
                t.create = config.create_tables;
            }
            t
        };
        let open_db = |url: String, kind: ResultTableKind| async move {
            if url.is_empty() || queue.is_same_database(&url) {
                let table = queue.result_table_open(&table_config(kind.clone())).await?;
                if kind == ResultTableKind::Celery {
                    match queue.chord_counting_install(&table, queues).await {
                        Ok(true) => tracing::info!("chords are counted in the database from now on (the result table's trigger celeriac_chord_count)"),
                        Ok(false) => {}
                        Err(e) => tracing::warn!(
                            error = %e,
                            "could not put the chord-counting trigger on the result table; celery.chord_unlock checks \
                             each second, as Celery's does"
                        ),
                    }
                }
                Ok::<_, Error>(Backend::QueueDatabase(Arc::new(table)))
            } else {
                let store = Store::new(&StoreConfig { max_connections: 4, ..StoreConfig::new(url) })?;
                let table = store.result_table_open(&table_config(kind)).await?;
                Ok(Backend::Database { store, table: Arc::new(table) })
            }
        };
        let backend = if let Some(url) = sqlalchemy_postgres_url(backend) {
            open_db(url, ResultTableKind::Celery).await?
        } else if backend == "django-db" {
            let url = config.django_database_url.clone().unwrap_or_default();
            open_db(url, ResultTableKind::Django).await?
        } else if backend.starts_with("redis://") || backend.starts_with("rediss://") || backend.starts_with("unix://")
        {
            Backend::Redis(
                redis::RedisResults::new(
                    backend,
                    config.redis_key_prefix.as_deref(),
                    config.expires,
                    &config.redis_ssl,
                )
                .map_err(Error::Config)?,
            )
        } else {
            let scheme = backend.split("://").next().unwrap_or(backend);
            return Err(Error::Config(format!(
                "result backend {scheme}: celeriac stores the results of Rust handlers in db+postgresql://, django-db \
                 and redis:// backends"
            )));
        };
        Ok(Results { backend, config, queue: queue.clone() })
    }

    /// For the log: which backend.
    pub(crate) fn describe(&self) -> String {
        match &self.backend {
            Backend::QueueDatabase(t) => format!("{:?} table on the queue database", t.kind()),
            Backend::Database { table, .. } => format!("{:?} table on another database", table.kind()),
            Backend::Redis(r) => format!("redis ({}…)", r.key("")),
        }
    }

    /// The queue database's result table, for the lease session's completions.
    pub(crate) fn queue_table(&self) -> Option<Arc<ResultTable>> {
        match &self.backend {
            Backend::QueueDatabase(t) => Some(t.clone()),
            _ => None,
        }
    }

    /// Whether a result is stored for `message` (Celery's `ignore_result`: the message's header,
    /// the task's setting, the app's `task_ignore_result`).
    pub(crate) fn wanted(&self, message: &TaskMessage) -> bool {
        !message.headers.ignore_result
            && !self.config.tasks.get(&message.headers.task).map_or(self.config.ignore_result, |t| t.ignore_result)
    }

    /// Whether `STARTED` is stored when `task` starts.
    pub(crate) fn track_started(&self, task: &str) -> bool {
        self.config.tasks.get(task).map_or(self.config.track_started, |t| t.track_started)
    }

    fn row(&self, table: &ResultTable, state: &State, ctx: &TaskContext<'_>) -> ResultRow {
        meta::table_row(table.kind(), self.config.db_format, table.extended(), state, ctx)
    }

    /// Stores `state` now (a state before the end, or an outcome that settles without
    /// [`Settlement::Finish`](celeriac_store::Settlement::Finish)).
    ///
    /// # Errors
    /// The backend's error, as text for the log.
    pub(crate) async fn store_now(&self, state: &State, ctx: &TaskContext<'_>) -> Result<(), String> {
        match &self.backend {
            Backend::QueueDatabase(table) => {
                let row = self.row(table, state, ctx);
                self.queue.result_store_many(table, &[row]).await.map(drop).map_err(|e| e.to_string())
            }
            Backend::Database { store, table } => {
                let row = self.row(table, state, ctx);
                store.result_store_many(table, &[row]).await.map(drop).map_err(|e| e.to_string())
            }
            Backend::Redis(r) => {
                let meta = meta::kv_meta(self.config.extended, state, ctx);
                r.store(&ctx.message.headers.id, &meta).await.map_err(|e| e.to_string())
            }
        }
    }

    /// The stored states of `task_ids`, in that order (`None`: nothing stored, Celery's
    /// `PENDING`).
    ///
    /// # Errors
    /// The backend's error, as text for the log.
    pub(crate) async fn read_many(&self, task_ids: &[String]) -> Result<Vec<Option<StoredResult>>, String> {
        let from_table = |rows: Vec<Option<(String, Option<Vec<u8>>)>>| {
            rows.into_iter()
                .map(|row| {
                    row.map(|(status, bytes)| StoredResult {
                        status,
                        value: bytes.map_or(Ok(celeriac_protocol::Value::Null), |b| read::decode_value(&b)),
                    })
                })
                .collect()
        };
        match &self.backend {
            Backend::QueueDatabase(table) => {
                self.queue.result_get_many(table, task_ids).await.map(from_table).map_err(|e| e.to_string())
            }
            Backend::Database { store, table } => {
                store.result_get_many(table, task_ids).await.map(from_table).map_err(|e| e.to_string())
            }
            Backend::Redis(r) => Ok(r
                .get_many(task_ids)
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(|meta| meta.map(|m| read::decode_meta(&m)))
                .collect()),
        }
    }

    /// Celery's `backend_cleanup`: deletes results older than `result_expires` from a result
    /// table (Redis keys expire on their own). Returns how many were deleted.
    ///
    /// # Errors
    /// The backend's error, as text for the log.
    pub(crate) async fn cleanup(&self) -> Result<u64, String> {
        let Some(expires) = self.config.expires else { return Ok(0) };
        let seconds = expires.as_secs_f64();
        match &self.backend {
            Backend::QueueDatabase(table) => self.queue.result_cleanup(table, seconds).await,
            Backend::Database { store, table } => store.result_cleanup(table, seconds).await,
            Backend::Redis(_) => return Ok(0),
        }
        .map_err(|e| e.to_string())
    }

    /// A header task's part of a chord counted in Redis (the Redis backend's own chords, which
    /// Celery producers send without `celery.chord_unlock`). `None` unless this part completed
    /// the chord and won its dispatch claim; then the parts' states and results in group order.
    ///
    /// # Errors
    /// Redis' error, as text for the log.
    pub(crate) async fn redis_chord_part(
        &self,
        state: &State,
        ctx: &TaskContext<'_>,
    ) -> Result<Option<(redis::ChordClaim, Vec<(String, StoredResult)>)>, String> {
        let Backend::Redis(r) = &self.backend else { return Ok(None) };
        let headers = &ctx.message.headers;
        let Some(group) = headers.group.as_deref() else { return Ok(None) };
        let part = celeriac_protocol::Value::List(vec![
            celeriac_protocol::Value::Int(1),
            celeriac_protocol::Value::Str(headers.id.clone()),
            celeriac_protocol::Value::Str(state.status()),
            meta::result_value(state, ctx.hostname),
        ]);
        let encoded = celeriac_protocol::json::to_vec(&part);
        let claim = r
            .chord_part(group, &headers.id, headers.group_index, &encoded, self.config.redis_chord_ordered)
            .await
            .map_err(|e| e.to_string())?;
        Ok(claim.map(|claim| {
            let parts = claim.parts.iter().map(|p| read::decode_part(p)).collect();
            (claim, parts)
        }))
    }

    /// Whether chords are counted by the backend as each header task finishes (Redis' keys,
    /// django-celery-results' `ChordCounter`) rather than by `celery.chord_unlock`.
    pub(crate) fn counts_chord_parts(&self) -> bool {
        match &self.backend {
            Backend::Redis(_) => true,
            Backend::QueueDatabase(t) | Backend::Database { table: t, .. } => *t.kind() == ResultTableKind::Django,
        }
    }

    /// A header task's part of a chord counted by django-celery-results: the header's task ids
    /// when this part completed the chord, else `None`.
    ///
    /// # Errors
    /// The database's error, as text for the log.
    pub(crate) async fn django_chord_part(&self, group_id: &str) -> Result<Option<Vec<String>>, String> {
        let (store, table) = match &self.backend {
            Backend::QueueDatabase(t) => (&self.queue, t),
            Backend::Database { store, table } => (store, table),
            Backend::Redis(_) => return Ok(None),
        };
        if *table.kind() != ResultTableKind::Django {
            return Ok(None);
        }
        let Some(sub_tasks) = store.django_chord_part(table, group_id).await.map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let tuples = celeriac_protocol::json::from_slice(sub_tasks.as_bytes()).map_err(|e| e.to_string())?;
        let ids = tuples
            .as_list()
            .ok_or("ChordCounter.sub_tasks is not a list")?
            .iter()
            .map(|t| {
                t.as_list()
                    .and_then(|t| t.first())
                    .and_then(|head| head.as_list())
                    .and_then(|head| head.first())
                    .and_then(celeriac_protocol::Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| "a ChordCounter.sub_tasks entry without a task id".to_owned())
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(ids))
    }

    /// Whether this worker still holds a Redis chord's dispatch claim (extending it), or took
    /// it back while the chord is still there (Celery's claim extension before publishing).
    pub(crate) async fn redis_chord_claim_extend(&self, claim: &redis::ChordClaim) -> bool {
        let Backend::Redis(r) = &self.backend else { return false };
        match r.chord_claim_extend(claim).await {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!("chord {}: cannot extend its dispatch claim: {e}", claim.group_id());
                false
            }
        }
    }

    /// Stores a row built for a completion, now (a table backend; otherwise nothing).
    pub(crate) async fn store_row_now(&self, row: ResultRow) {
        let written = match &self.backend {
            Backend::QueueDatabase(table) => self.queue.result_store_many(table, &[row]).await,
            Backend::Database { store, table } => store.result_store_many(table, &[row]).await,
            Backend::Redis(_) => return,
        };
        if let Err(e) = written {
            tracing::error!("cannot store a result: {e}");
        }
    }

    /// The body of a Redis-counted chord was published (or failed): releases the chord.
    pub(crate) async fn redis_chord_finished(&self, claim: &redis::ChordClaim, failed: bool) {
        let Backend::Redis(r) = &self.backend else { return };
        let done =
            if failed { r.chord_failed(claim.group_id()).await.map(|()| true) } else { r.chord_done(claim).await };
        match done {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                "chord {}: the dispatch claim was lost before cleanup; its keys expire",
                claim.group_id()
            ),
            Err(e) => tracing::warn!("chord {}: cannot clean up its keys ({e}); they expire", claim.group_id()),
        }
    }

    /// Stores a final state: returns the row that goes with the message's deletion (the queue
    /// database's table), or writes it now and returns `None`.
    ///
    /// # Errors
    /// The backend's error, as text for the log.
    pub(crate) async fn store_final(&self, state: &State, ctx: &TaskContext<'_>) -> Result<Option<ResultRow>, String> {
        match &self.backend {
            Backend::QueueDatabase(table) => Ok(Some(self.row(table, state, ctx))),
            _ => self.store_now(state, ctx).await.map(|()| None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_urls() {
        assert_eq!(sqlalchemy_postgres_url("db+postgresql://u@h/db").as_deref(), Some("postgresql://u@h/db"));
        assert_eq!(
            sqlalchemy_postgres_url("db+postgresql+psycopg://u@h:5/db").as_deref(),
            Some("postgresql://u@h:5/db")
        );
        assert_eq!(sqlalchemy_postgres_url("db+sqlite:///x.db"), None);
        assert_eq!(sqlalchemy_postgres_url("redis://h"), None);
    }
}
