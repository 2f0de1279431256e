//! `Subscriber`: wake-ups for broadcast exchanges (remote control, replies, events), without
//! registering a consumer (a `celery inspect` client or an event monitor is not a worker).

use std::sync::{Arc, Mutex, PoisonError};

use celeriac_store::service::Supervisor;
use pyo3::prelude::*;
use tokio::sync::Notify;

use crate::{
    runtime::{block_on, runtime},
    store::PyStore,
};

/// Listens for `NOTIFY celeriac_broadcast` naming one of its exchanges.
#[pyclass(name = "Subscriber", module = "celeriac._native", frozen)]
pub struct Subscriber {
    pub(crate) wake: Arc<Notify>,
    exchanges: Arc<Mutex<Vec<String>>>,
    services: Mutex<Supervisor>,
    pid: u32,
}

#[pymethods]
impl Subscriber {
    /// Starts listening (on a connection of its own) for broadcasts to `exchanges`.
    #[new]
    fn new(store: &PyStore, exchanges: Vec<String>) -> PyResult<Self> {
        let pg = store.store()?;
        let wake = Arc::new(Notify::new());
        let exchanges = Arc::new(Mutex::new(exchanges));
        let mut services = Supervisor::default();
        {
            let _in_runtime = runtime()?.enter();
            let (wake, exchanges) = (wake.clone(), exchanges.clone());
            services.start(pg.broadcast_listener().service(move |wakeup| {
                if wakeup.concerns(&exchanges.lock().unwrap_or_else(PoisonError::into_inner)) {
                    wake.notify_one();
                }
            }));
        }
        Ok(Subscriber { wake, exchanges, services: Mutex::new(services), pid: std::process::id() })
    }

    /// Replaces the exchanges it wakes for.
    fn set_exchanges(&self, exchanges: Vec<String>) {
        *self.exchanges.lock().unwrap_or_else(PoisonError::into_inner) = exchanges;
    }

    /// Blocks (GIL released) until a broadcast to one of its exchanges may have arrived, or
    /// `timeout` seconds pass. Returns whether it was woken.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let wake = self.wake.clone();
        let woken = crate::consumer::wait_interruptibly(py, timeout, move |slice| {
            let wake = wake.clone();
            async move { tokio::time::timeout(slice, wake.notified()).await.ok() }
        })?;
        Ok(woken.is_some())
    }

    /// Stops listening. Idempotent.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        if std::process::id() != self.pid {
            return Ok(());
        }
        let mut services = std::mem::take(&mut *self.services.lock().unwrap_or_else(PoisonError::into_inner));
        block_on(py, async move { services.stop().await })
    }
}
