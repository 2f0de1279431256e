//! Embedded Python: `celeriac worker -A proj` runs a Celery app's own tasks.
//!
//! The worker process itself never starts Python. Its pool children are this binary again,
//! run as the hidden `celeriac pool-child` subcommand ([`child`]), each embedding CPython and
//! importing the app once; the worker ([`pool`]) sends them jobs over a socket ([`frame`]),
//! keeps the message's lease while they run, enforces time limits from outside, and replaces
//! children that die or reach their recycling limits. [`settings`] is how the pool is configured
//! and how the app's own settings fill in what was not given. [`interp`] makes the embedded
//! interpreter the user's (virtualenv, standard library, libpython). See
//! `docs/embedded-python.md`.

pub mod child;
pub mod frame;
pub mod interp;
pub mod pool;
pub mod settings;
mod sys;

pub use pool::PythonPool;
pub use settings::{AppConfig, ExplicitSettings, PoolConfig, PoolKind};
