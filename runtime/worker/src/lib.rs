//! # celeriac
//!
//! A Celery-compatible worker runtime on a PostgreSQL queue. Celery producers keep publishing
//! ordinary protocol-2 messages; celeriac workers claim them from Postgres and run Rust handlers
//! registered by task name.
//!
//! ```no_run
//! use celeriac::{Client, Registry, TaskError, Worker, WorkerConfig};
//! use celeriac_protocol::{Map, TaskOptions, Value};
//! use celeriac_store::Store;
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let store = Store::connect("postgresql://localhost/app")?;
//! store.migrate().await?;
//!
//! let mut registry = Registry::with_builtins();
//! registry.register("tasks.add", |(a, b): (i64, i64)| async move { Ok::<_, TaskError>(a + b) });
//!
//! Client::new(store.clone()).send_task("tasks.add", &[Value::Int(2), Value::Int(2)], &Map::new(), &TaskOptions::default()).await?;
//!
//! let shutdown = CancellationToken::new();
//! let worker = Worker::new(store, registry, WorkerConfig { concurrency: 4, ..WorkerConfig::default() })?;
//! worker.run(shutdown).await?;
//! # Ok(()) }
//! ```

pub mod bench;
mod canvas;
mod chord;
pub mod cli;
mod client;
pub mod dashboard;
pub mod examples;
#[cfg(feature = "python")]
pub mod python;
mod registry;
mod results;
mod routes;
pub mod scheduler;
mod task;
mod worker;

pub use celeriac_protocol as protocol;
pub use celeriac_store as store;
pub use celeriac_store::maintenance;
pub use client::{build_message, Client};
pub use registry::{DeclaredRateLimits, Handler, HandlerFuture, Registry};
pub use results::{DbValueFormat, RedisSsl, ResultsConfig, TaskResultSettings};
pub use routes::{RouteMap, TaskRoutes};
pub use task::{LeaseCheck, Outcome, Request, RetryBackoff, StateError, StateUpdater, TaskControl, TaskError};
pub use worker::{
    Autoscale, ControlSettings, EventSettings, PoolResize, Worker, WorkerConfig, WorkerReport, WorkerStats,
    MAX_PIPELINE_PER_SLOT,
};

/// Errors of the worker runtime.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// The metrics port cannot be bound.
    #[error("metrics on {address}: {source}")]
    MetricsPort {
        /// The address.
        address: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] celeriac_store::Error),
    /// A message could not be built.
    #[error("cannot build the message: {0}")]
    Encode(#[from] celeriac_protocol::EncodeError),
}

/// This machine's host name (for `origin` and the default worker name).
#[must_use]
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned())
}
