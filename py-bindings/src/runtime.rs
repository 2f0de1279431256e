//! The tokio runtime behind blocking calls, one per process and safe across `fork()`.
//!
//! Celery's prefork pool forks children from a parent that may already have used the database
//! (Beat, the consumer, a publish at import time). A child inherits the parent's memory but
//! none of its threads, so the parent's runtime and connection pools are unusable there. Every
//! call therefore checks the process id: a child builds its own runtime (and [`crate::store`]
//! its own pool) and never touches the inherited ones, which are leaked rather than dropped
//! (dropping would wait for threads that do not exist, or close sockets the parent still uses).

use std::{
    future::Future,
    sync::{Mutex, PoisonError},
};

use pyo3::{exceptions::PyRuntimeError, prelude::*};
use tokio::runtime::{Builder, Runtime};

static RUNTIME: Mutex<Option<(u32, &'static Runtime)>> = Mutex::new(None);

/// This process's runtime: one I/O thread that also runs heartbeats and acks in the background.
///
/// # Errors
/// When the OS refuses to start the thread.
pub fn runtime() -> PyResult<&'static Runtime> {
    let pid = std::process::id();
    let mut slot = RUNTIME.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((owner, runtime)) = *slot {
        if owner == pid {
            return Ok(runtime);
        }
    }
    let runtime = Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("celeriac-io")
        .enable_all()
        .build()
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start celeriac's I/O thread: {e}")))?;
    let runtime: &'static Runtime = Box::leak(Box::new(runtime));
    *slot = Some((pid, runtime));
    Ok(runtime)
}

/// Runs `future` to completion with the GIL released, so other Python threads run meanwhile.
///
/// # Errors
/// When the runtime cannot start.
pub fn block_on<F>(py: Python<'_>, future: F) -> PyResult<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    let runtime = runtime()?;
    Ok(py.detach(|| runtime.block_on(future)))
}
