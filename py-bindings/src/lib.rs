//! `celeriac._native`, the extension module of the `celeriac` Python package.
//!
//! Two jobs. Conversion for the Python API: Python values become celeriac-protocol values and
//! messages are built by the codec the Rust worker decodes with; every statement runs through
//! celeriac-store. The API (`celeriac.Client`, `celeriac.enqueue`, the kombu transport) lives in
//! `python/src/celeriac/` and is typed by `_native.pyi`. And the task loop of a worker's pool
//! child ([`pool_child`], run by `celeriac._pool_child`), so that one abi3 build
//! serves every Python from 3.9 on.

mod consumer;
mod convert;
mod errors;
mod message;
mod pool_child;
mod runtime;
mod store;
mod subscriber;

use pyo3::prelude::*;

/// The module. Its classes: `Store`, `Consumer`, `Message`; its functions: `encode_task`,
/// `message_from_envelope`, `run_pool_child`; its exceptions: `CeleriacError` and subclasses.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("MESSAGE_INSERT_SQL", celeriac_store::MESSAGE_INSERT_DBAPI_SQL)?;
    m.add("POOL_PROTOCOL", celeriac_pool::PROTOCOL)?;
    errors::register(m)?;
    m.add_class::<message::Message>()?;
    m.add_class::<store::PyStore>()?;
    m.add_class::<store::InsertStream>()?;
    m.add_class::<consumer::Consumer>()?;
    m.add_class::<subscriber::Subscriber>()?;
    m.add_function(wrap_pyfunction!(message::encode_task, m)?)?;
    m.add_function(wrap_pyfunction!(message::message_from_envelope, m)?)?;
    m.add_function(wrap_pyfunction!(message::encode_simple, m)?)?;
    m.add_function(wrap_pyfunction!(redact_url, m)?)?;
    m.add_function(wrap_pyfunction!(pool_child::run_pool_child, m)?)?;
    Ok(())
}

/// The connection string as it may be shown or put in an environment: user, hosts, ports and
/// database, never the password (nor any other option).
#[pyfunction]
fn redact_url(url: &str) -> String {
    celeriac_store::redact_url(url)
}
