//! # celeriac-store
//!
//! The PostgreSQL queue behind celeriac, and the only crate that speaks SQL. Methods are named
//! noun-then-verb by table (`message_claim`, `worker_heartbeat`, …) and are all parameterised.
//!
//! Delivery model (see `shared/design.md`):
//! - A message row is *ready* when it is not leased and its `eta` has passed. [`Store::message_claim`]
//!   takes up to N ready rows in one statement (`FOR UPDATE SKIP LOCKED`, ordered by priority
//!   desc, eta, id), bumps `attempt` and sets a lease (`leased_by`, `lease_expires`).
//! - The holder renews its leases with every heartbeat ([`Store::worker_heartbeat`]); a lease that
//!   runs out means the worker died, and [`Store::message_rescue`] makes the row ready again,
//!   marked `redelivered`, or dead-letters it once it has exhausted its redeliveries.
//! - Completion, retry and dead-lettering are fenced by `(id, attempt, leased_by)`: a worker
//!   that lost its lease cannot finish or re-schedule a newer attempt.
//! - Inserts wake listeners with one `NOTIFY celeriac_message` per statement (a statement-level
//!   trigger); [`Listener`] receives them, polling remains the safety net.

mod backoff;
mod control;
mod dead_letter;
mod error;
mod lease_session;
mod listener;
pub mod maintenance;
mod message;
mod migrate;
mod operations;
mod queue_stats;
mod rate_limit;
mod results;
mod schedule;
pub mod service;
mod sql;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(test)]
mod tests;
mod worker;

use std::{
    str::FromStr,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

pub use backoff::Backoff;
pub use celeriac_protocol::DeadLetterReason;
pub use control::{BroadcastMessage, Revocation, RevokedStamp, RevokedTask, REVOKES_MAX, REVOKE_EXPIRES};
pub use dead_letter::{DeadLetter, DeadLetterFilter};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
pub use error::{Error, Result};
pub use lease_session::{LeaseSession, LeaseSessionConfig, SettledHook, SettledNow, Settlement};
pub use listener::{Listener, Listening, Wakeup, BROADCAST_CHANNEL, NOTIFY_CHANNEL};
pub use message::{
    ClaimCursor, ClaimParams, ClaimedMessage, DeadLetterParams, Durability, InsertBatch, Lease, LostMessage,
    NewMessage, RequeueReport, RescueReport, MESSAGE_INSERT_DBAPI_SQL, ORPHAN_AFTER_HEALTHY_SECONDS,
};
pub use migrate::{migrations_fingerprint, MigrateReport, Migration, MIGRATIONS};
pub use operations::{
    Count, DeadLetterSearch, MessageFilter, MessageRow, MessageState, MinuteCounts, PausedQueue, QueueOverview,
    ResultSearch, TaskCountDelta, COUNT_BOUND, SEARCH_TIMEOUT,
};
pub use queue_stats::QueueStats;
pub use rate_limit::{global_burst, RateLimitRow, RateLimitScope, RateValue, TokenGrant, GLOBAL_BURST_SECONDS, PARKED};
pub use results::{Finish, ResultRow, ResultTable, ResultTableConfig, ResultTableKind};
pub use schedule::{
    DjangoPeriodicTask, LeaseRow, LeaseTerm, PlannedFire, Schedule, ScheduleDefinition, SyncReport, TickPlan,
    TickReport, When, REMOVED_FROM_APP, REMOVED_FROM_DJANGO, SCHEDULER_LEASE,
};
#[cfg(feature = "testing")]
pub use schedule::{TickFailpoint, TickStage};
pub use sql::Pooler;
use sql::Session;
use tokio_postgres::NoTls;
pub use worker::{ConsumerKind, ScheduledMessage, WorkerInfo, WorkerRow};

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `postgresql://user:password@host:port/dbname` (libpq URL or key=value form), plus
    /// celeriac's own `pooler=transaction` option for a transaction-mode pooler such as
    /// PgBouncer (see [`Pooler`]).
    pub database_url: String,
    /// Pool size. Default: 8.
    pub max_connections: usize,
    /// How long to wait for a connection (to open or to come free). Default: 5 s.
    pub connect_timeout: Duration,
}

impl StoreConfig {
    /// A config with defaults for `database_url`.
    #[must_use]
    pub fn new(database_url: impl Into<String>) -> Self {
        StoreConfig { database_url: database_url.into(), max_connections: 8, connect_timeout: Duration::from_secs(5) }
    }
}

/// A handle on the queue tables: a connection pool plus the parsed connection settings.
/// Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    pg_config: tokio_postgres::Config,
    pooler: Pooler,
    /// Test builds: a fault to inject into the scheduler's tick (`schedule::TickFailpoint`).
    #[cfg(feature = "testing")]
    tick_failpoint: std::sync::Arc<std::sync::Mutex<Option<schedule::TickFailpoint>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("pool", &self.pool.status()).finish_non_exhaustive()
    }
}

/// TLS to PostgreSQL is not implemented: a URL that requires it is refused with this message
/// rather than failing obscurely at the first connection.
const NO_TLS: &str = "TLS connections to PostgreSQL are not supported yet; connect over a local socket, a private \
                      network or a tunnel, with sslmode=disable (or no sslmode)";

/// Parses a libpq URL or key=value string with celeriac's `pooler` option, refusing settings
/// celeriac cannot honour.
fn parse_url(url: &str) -> Result<(tokio_postgres::Config, Pooler)> {
    let (url, pooler) = sql::take_pooler_option(url)?;
    let url = url.as_str();
    for mode in ["verify-ca", "verify-full"] {
        if url.contains(&format!("sslmode={mode}")) || url.contains(&format!("sslmode='{mode}'")) {
            return Err(Error::Config(format!("sslmode={mode}: {NO_TLS}")));
        }
    }
    let config = tokio_postgres::Config::from_str(url)
        .map_err(|e| Error::Config(format!("cannot read the database URL {}: {e}", redact_url(url))))?;
    match config.get_ssl_mode() {
        tokio_postgres::config::SslMode::Require => Err(Error::Config(format!("sslmode=require: {NO_TLS}"))),
        // Also libpq's default: plaintext when the server offers no TLS. Said once, when asked
        // for explicitly.
        tokio_postgres::config::SslMode::Prefer if url.contains("sslmode=prefer") => {
            tracing::warn!("sslmode=prefer: celeriac does not support TLS yet; connecting without encryption");
            Ok((config, pooler))
        }
        _ => Ok((config, pooler)),
    }
}

/// The connection string as it may be shown: user, hosts, ports and database, never the password
/// (nor any other option). A string that does not parse is not shown at all.
#[must_use]
pub fn redact_url(url: &str) -> String {
    let Ok((config, pooler)) =
        sql::take_pooler_option(url).and_then(|(url, pooler)| Ok((tokio_postgres::Config::from_str(&url)?, pooler)))
    else {
        return "(a connection string that does not parse)".to_owned();
    };
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let name = match host {
                tokio_postgres::config::Host::Tcp(h) if h.contains(':') => format!("[{h}]"),
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string().replace('/', "%2F"),
            };
            match config.get_ports().get(i).or(config.get_ports().first()) {
                Some(port) => format!("{name}:{port}"),
                None => name,
            }
        })
        .collect();
    let user = config.get_user().map(|u| format!("{u}@")).unwrap_or_default();
    let db = config.get_dbname().unwrap_or_default();
    let pooler = if pooler == Pooler::Transaction { "?pooler=transaction" } else { "" };
    format!("postgresql://{user}{}/{db}{pooler}", hosts.join(","))
}

/// Whether the connection string carries a password.
#[must_use]
pub fn url_has_password(url: &str) -> bool {
    sql::take_pooler_option(url)
        .is_ok_and(|(url, _)| tokio_postgres::Config::from_str(&url).is_ok_and(|c| c.get_password().is_some()))
}

impl Store {
    /// Whether `url` names this store's database: the same hosts, ports, database and user
    /// (a result backend on the queue database writes with the queue's transactions).
    #[must_use]
    pub fn is_same_database(&self, url: &str) -> bool {
        let Ok((other, _)) = parse_url(url) else { return false };
        let ours = &self.pg_config;
        ours.get_hosts() == other.get_hosts()
            && ours.get_ports() == other.get_ports()
            && ours.get_dbname() == other.get_dbname()
            && ours.get_user() == other.get_user()
    }

    /// Builds a store. Connections are opened lazily, so this succeeds while the server is down.
    ///
    /// # Errors
    /// [`Error::Config`] when the URL does not parse, or asks for TLS (not supported yet:
    /// `sslmode=require`, `verify-ca`, `verify-full` are refused; `prefer` connects without).
    pub fn new(config: &StoreConfig) -> Result<Store> {
        let (mut pg_config, pooler) = parse_url(&config.database_url)?;
        if pg_config.get_application_name().is_none() {
            pg_config.application_name("celeriac");
        }
        pg_config.connect_timeout(config.connect_timeout);
        // Notice a dead peer (network black hole, failover) in about 30 s instead of the
        // kernel's two hours, so a stuck statement errors out and is retried.
        pg_config.keepalives(true).keepalives_idle(Duration::from_secs(15)).keepalives_interval(Duration::from_secs(5));
        pg_config.keepalives_retries(3);
        pg_config.tcp_user_timeout(Duration::from_secs(30));
        let manager =
            Manager::from_config(pg_config.clone(), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let mut pool = Pool::builder(manager);
        if pooler == Pooler::Session {
            // Every statement here is written for index access; generic plans skip re-planning
            // each execution (custom plans of the claim cost more than running it). JIT off: a
            // generic plan costs its `limit $n` as a tenth of the table, so behind a backlog of
            // about a million messages the claim's estimate passes the JIT thresholds and every
            // claim spent ~240 ms compiling to run in ~1 ms (a 1,000,000-task drain fell to
            // ~300 tasks/s). Not behind a transaction-mode pooler, where a `SET` would stick to
            // whichever server session ran it, and statements are unnamed (custom plans, their
            // limits known) anyway.
            pool = pool.post_create(deadpool_postgres::Hook::async_fn(|client, _| {
                Box::pin(async move {
                    client
                        .batch_execute("set plan_cache_mode = force_generic_plan; set jit = off")
                        .await
                        .map_err(deadpool_postgres::HookError::Backend)
                })
            }));
        }
        let pool = pool
            .max_size(config.max_connections.max(1))
            .wait_timeout(Some(config.connect_timeout))
            .create_timeout(Some(config.connect_timeout))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| Error::Config(e.to_string()))?;
        Ok(Store {
            pool,
            pg_config,
            pooler,
            #[cfg(feature = "testing")]
            tick_failpoint: std::sync::Arc::default(),
        })
    }

    /// Shorthand for [`Store::new`] with [`StoreConfig::new`].
    ///
    /// # Errors
    /// [`Error::Config`] when the URL does not parse.
    pub fn connect(database_url: &str) -> Result<Store> {
        Store::new(&StoreConfig::new(database_url))
    }

    /// The newest migration applied to the database (0: none), against
    /// [`MIGRATIONS`]'s newest: the schema is current when it is at least that.
    ///
    /// # Errors
    /// [`Error::SchemaMissing`] when `celeriac migrate` has not run; connection errors.
    pub async fn schema_version(&self) -> Result<i32> {
        let client = self.pool.get().await?;
        let row =
            client.row(self.pooler, "select coalesce(max(version), 0) from celeriac.schema_migration", &[]).await?;
        Ok(row.get(0))
    }

    /// Checks that the server answers and the schema is there.
    ///
    /// # Errors
    /// [`Error::SchemaMissing`] when `celeriac migrate` has not run; connection errors.
    pub async fn check(&self) -> Result<()> {
        let client = self.pool.get().await?;
        client.row(self.pooler, "select count(*) from celeriac.schema_migration", &[]).await?;
        Ok(())
    }

    /// Closes the pool: idle connections are dropped, connections in use are dropped when they
    /// come back, and later calls fail with [`Error::Pool`].
    pub fn close(&self) {
        self.pool.close();
    }

    /// A [`Listener`] for `NOTIFY` wake-ups on its own connection (outside the pool). Behind a
    /// transaction-mode pooler, where `LISTEN` cannot work, it only waits for shutdown (and
    /// says so once): consumers find work by polling.
    #[must_use]
    pub fn listener(&self) -> Listener {
        Listener::new(self.pg_config.clone(), self.pooler == Pooler::Session, listener::NOTIFY_CHANNEL)
    }

    /// A listener for `broadcast` wake-ups: [`Wakeup::Queues`] names the exchanges that got
    /// messages.
    #[must_use]
    pub fn broadcast_listener(&self) -> Listener {
        Listener::new(self.pg_config.clone(), self.pooler == Pooler::Session, listener::BROADCAST_CHANNEL)
    }

    /// The value of the setting `name` (letters and underscores) on a pooled connection, asked
    /// with the simple protocol, which prepares nothing.
    ///
    /// # Errors
    /// Connection errors; [`Error::Config`] for another name.
    #[cfg(feature = "testing")]
    pub async fn testing_setting(&self, name: &str) -> Result<String> {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            return Err(Error::Config(format!("not a setting name: {name}")));
        }
        let client = self.pool.get().await?;
        let rows = client.simple_query(&format!("show {name}")).await?;
        let value = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        });
        value.ok_or(Error::UnexpectedRows(0))
    }

    /// How many named prepared statements the session of a pooled connection holds (with
    /// `max_connections = 1`, the session every statement ran on): the session state a
    /// transaction-mode pooler would break. Asked with the simple protocol, which prepares
    /// nothing itself.
    ///
    /// # Errors
    /// Connection errors.
    #[cfg(feature = "testing")]
    pub async fn testing_prepared_statements(&self) -> Result<i64> {
        let client = self.pool.get().await?;
        let rows = client.simple_query("select count(*) from pg_prepared_statements").await?;
        let count = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).and_then(|v| v.parse().ok()),
            _ => None,
        });
        count.ok_or(Error::UnexpectedRows(0))
    }

    /// The generic plan of every statement the session of a pooled connection has prepared
    /// (with `max_connections = 1`, every statement the store ran), as `(statement, plan)`:
    /// `EXPLAIN EXECUTE` with null parameters, which the session's `force_generic_plan` plans
    /// as it plans every execution.
    ///
    /// # Errors
    /// Connection errors.
    #[cfg(feature = "testing")]
    pub async fn testing_generic_plans(&self) -> Result<Vec<(String, String)>> {
        let client = self.pool.get().await?;
        let rows = client
            .simple_query("select name, statement, cardinality(parameter_types) from pg_prepared_statements")
            .await?;
        let prepared: Vec<(String, String, usize)> = rows
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => Some((
                    row.get(0)?.to_owned(),
                    row.get(1)?.to_owned(),
                    row.get(2).and_then(|n| n.parse().ok()).unwrap_or(0),
                )),
                _ => None,
            })
            .collect();
        let mut plans = Vec::with_capacity(prepared.len());
        for (name, statement, params) in prepared {
            let args = if params == 0 { String::new() } else { format!("({})", vec!["null"; params].join(", ")) };
            // A statement name cannot be a parameter: quoted as an identifier instead.
            let name = name.replace('"', "\"\"");
            let explained = client.simple_query(&format!("explain execute \"{name}\"{args}")).await?;
            let plan: Vec<&str> = explained
                .iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0),
                    _ => None,
                })
                .collect();
            plans.push((statement, plan.join("\n")));
        }
        Ok(plans)
    }

    /// What the connection string says sits between celeriac and PostgreSQL.
    #[must_use]
    pub fn pooler(&self) -> Pooler {
        self.pooler
    }
}

static DATABASE_ERRORS: AtomicU64 = AtomicU64::new(0);

/// Counts a failed database call (a claim, a heartbeat, a write of outcomes, a maintenance
/// pass) for [`database_errors`].
pub fn note_database_error() {
    DATABASE_ERRORS.fetch_add(1, Ordering::Relaxed);
}

/// Failed database calls of this process's workers and services since it started (the
/// `celeriac_database_errors_total` metric).
#[must_use]
pub fn database_errors() -> u64 {
    DATABASE_ERRORS.load(Ordering::Relaxed)
}
