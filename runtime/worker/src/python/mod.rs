//! Python pool: `celeriac worker -A proj` runs a Celery app's own tasks.
//!
//! The worker process itself never starts Python. Its pool children are the app's interpreter
//! running `celeriac._pool_child` (the task loop is Rust, in the `celeriac._native`
//! extension module), each importing the app once; the worker ([`pool`]) sends them jobs over a
//! socket (`celeriac_pool::frame`), keeps the message's lease while they run, enforces time
//! limits from outside, and replaces children that die or reach their recycling limits.
//! [`settings`] is how the pool is configured and how the app's own settings fill in what was
//! not given. [`interp`] finds the interpreter and checks that it has a matching celeriac
//! package. See `docs/embedded-python.md`.

pub mod interp;
pub mod pool;
pub mod settings;

pub use pool::PythonPool;
pub use settings::{AppConfig, ExplicitSettings, PoolConfig, PoolKind};
