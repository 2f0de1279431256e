//! `Store`: a connection pool to the queue database, usable from any Python thread and safe
//! across `fork()` (see [`crate::runtime`]).

use std::{
    sync::{Mutex, PoisonError},
    time::Duration,
};

use celeriac_store::{Durability, InsertBatch, NewMessage, Store, StoreConfig};
use pyo3::{
    exceptions::{PyRuntimeError, PyValueError},
    prelude::*,
    types::PyBytes,
};
use tokio::{sync::mpsc, task::JoinHandle};

use crate::{
    errors::{redact, store_error, Doing},
    message::Message,
    runtime::{block_on, runtime},
};

fn durability(durable: bool) -> Durability {
    if durable {
        Durability::Synchronous
    } else {
        Durability::Relaxed
    }
}

/// A pool of connections to one PostgreSQL database holding celeriac's schema.
#[pyclass(name = "Store", module = "celeriac._native", frozen)]
pub struct PyStore {
    config: StoreConfig,
    target: String,
    /// The pool and the process that built it; a forked child builds its own.
    pool: Mutex<(u32, Store)>,
}

impl PyStore {
    /// This process's pool.
    ///
    /// # Errors
    /// A `ConnectError` for a URL that does not parse.
    pub fn store(&self) -> PyResult<Store> {
        let pid = std::process::id();
        let mut slot = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.0 != pid {
            let fresh = Store::new(&self.config).map_err(|e| self.error(&e, Doing::Other))?;
            // The parent's pool: its sockets belong to the parent, its tasks to threads that do
            // not exist here. Leak it rather than drop it.
            std::mem::forget(std::mem::replace(&mut *slot, (pid, fresh)));
        }
        Ok(slot.1.clone())
    }

    /// Maps a store error, naming this database.
    pub fn error(&self, error: &celeriac_store::Error, doing: Doing) -> PyErr {
        store_error(error, &self.target, doing)
    }
}

#[pymethods]
impl PyStore {
    /// A pool for `url` (`postgresql://user:password@host:port/db` or libpq `key=value` form).
    /// Connections open on first use, so this does not fail while the server is down.
    #[new]
    #[pyo3(signature = (url, *, max_connections=4, connect_timeout=5.0))]
    fn new(url: String, max_connections: usize, connect_timeout: f64) -> PyResult<Self> {
        if !(connect_timeout.is_finite() && connect_timeout > 0.0) {
            return Err(PyValueError::new_err(format!(
                "connect_timeout must be a positive number, got {connect_timeout}"
            )));
        }
        let target = redact(&url);
        let config = StoreConfig {
            max_connections: max_connections.max(1),
            connect_timeout: Duration::from_secs_f64(connect_timeout),
            ..StoreConfig::new(url)
        };
        let store = Store::new(&config).map_err(|e| store_error(&e, &target, Doing::Other))?;
        Ok(PyStore { config, target, pool: Mutex::new((std::process::id(), store)) })
    }

    /// Creates or upgrades celeriac's schema (idempotent; safe from several processes at once).
    /// Returns the versions applied now (empty when it was up to date).
    fn migrate(&self, py: Python<'_>) -> PyResult<Vec<i32>> {
        let store = self.store()?;
        let report = block_on(py, async move { store.migrate().await })?.map_err(|e| self.error(&e, Doing::Other))?;
        Ok(report.applied)
    }

    /// Checks that the server answers and the schema is there.
    fn check(&self, py: Python<'_>) -> PyResult<()> {
        let store = self.store()?;
        block_on(py, async move { store.check().await })?.map_err(|e| self.error(&e, Doing::Other))
    }

    /// Enqueues one message in its own transaction and returns its row id. `durable=False`
    /// commits without waiting for the WAL flush (see `Client(durable=...)`).
    #[pyo3(signature = (message, *, durable=true))]
    fn insert(&self, py: Python<'_>, message: &Message, durable: bool) -> PyResult<i64> {
        let store = self.store()?;
        let row = message.row.clone();
        block_on(py, async move { store.message_insert_with(&row, durability(durable)).await })?
            .map_err(|e| self.error(&e, Doing::Enqueue))
    }

    /// Starts a transaction that inserts the batches given to `InsertStream.add` in the
    /// background (on celeriac's I/O thread) while the caller prepares the next ones; nothing
    /// is visible until `commit()`.
    #[pyo3(signature = (*, durable=true))]
    fn begin_insert(slf: Py<Self>, durable: bool) -> PyResult<InsertStream> {
        let store = slf.get().store()?;
        let (sender, batches) = mpsc::unbounded_channel();
        let task = runtime()?.spawn(async move { store.message_insert_stream(batches, durability(durable)).await });
        Ok(InsertStream { owner: slf, sender: Mutex::new(Some(sender)), task: Mutex::new(Some(task)) })
    }

    /// Messages of `queue` ready to run now.
    fn ready_count(&self, py: Python<'_>, queue: String) -> PyResult<i64> {
        let store = self.store()?;
        block_on(py, async move { store.message_ready_count(&queue).await })?.map_err(|e| self.error(&e, Doing::Other))
    }

    /// Deletes every message of `queue` that no worker holds; returns how many.
    fn purge(&self, py: Python<'_>, queue: String) -> PyResult<u64> {
        let store = self.store()?;
        block_on(py, async move { store.message_purge(&queue).await })?.map_err(|e| self.error(&e, Doing::Other))
    }

    /// Before Celery Beat sends the periodic task `name` (celeriac's Beat scheduler classes):
    /// `("beat", None)` if Beat fires it (the send is recorded), `("celeriac", next_run)` if
    /// celeriac does (Beat skips it; `next_run`, seconds since the epoch, is the slot celeriac
    /// fires next), `("fenced", last_slot)` if it is back with Beat but celeriac already fired
    /// the slot Beat is due for (Beat skips it; `last_slot`: that slot), `("unknown", None)` if
    /// no schedule has that name (Beat keeps it).
    fn schedule_beat_claim(&self, py: Python<'_>, name: String) -> PyResult<(&'static str, Option<f64>)> {
        let store = self.store()?;
        let (owner, next) = block_on(py, async move { store.schedule_beat_claim(&name).await })?
            .map_err(|e| self.error(&e, Doing::Other))?;
        Ok((owner, next.map(|t| t.timestamp_micros() as f64 / 1e6)))
    }

    /// Publishes a kombu envelope to a broadcast exchange (remote control, replies, events):
    /// every reader of that exchange sees it. `revoke`, a dict with `task_ids` (list of str),
    /// `stamps` (list of `(stamp, value)`), `terminate` (bool), `signal` (str or None) and
    /// `expires` (seconds), is recorded in the same statement. Returns the row's position.
    #[pyo3(signature = (exchange, routing_key, payload, *, revoke=None))]
    fn broadcast_publish(
        &self,
        py: Python<'_>,
        exchange: String,
        routing_key: String,
        payload: Vec<u8>,
        revoke: Option<Bound<'_, pyo3::types::PyDict>>,
    ) -> PyResult<i64> {
        let revocation = revoke.map(|d| revocation_from(&d)).transpose()?;
        let store = self.store()?;
        block_on(
            py,
            async move { store.broadcast_publish(&exchange, &routing_key, &payload, revocation.as_ref()).await },
        )?
        .map_err(|e| self.error(&e, Doing::Other))
    }

    /// The broadcasts of `exchanges` after position `after`, oldest first, at most `limit`:
    /// `(position, exchange, routing_key, envelope)` tuples.
    fn broadcast_read<'py>(
        &self,
        py: Python<'py>,
        exchanges: Vec<String>,
        after: i64,
        limit: i64,
    ) -> PyResult<Vec<Broadcast<'py>>> {
        let store = self.store()?;
        let rows = block_on(py, async move { store.broadcast_read(&exchanges, after, limit).await })?
            .map_err(|e| self.error(&e, Doing::Other))?;
        Ok(rows.into_iter().map(|m| (m.id, m.exchange, m.routing_key, PyBytes::new(py, &m.payload))).collect())
    }

    /// The position of the newest broadcast: a new reader starts after it.
    fn broadcast_head(&self, py: Python<'_>) -> PyResult<i64> {
        let store = self.store()?;
        block_on(py, async move { store.broadcast_head().await })?.map_err(|e| self.error(&e, Doing::Other))
    }

    /// Revokes tasks for good: records the revocation (it outlives worker restarts and holds for
    /// workers that are down) and broadcasts Celery's `revoke` command on
    /// `<namespace>.pidbox`, so running workers (Python Celery workers on the transport too)
    /// hear it at once, and `terminate` kills a running task with `signal`.
    #[pyo3(signature = (task_ids, *, terminate=false, signal=None, expires=None, namespace="celery".to_owned()))]
    fn revoke(
        &self,
        py: Python<'_>,
        task_ids: Vec<String>,
        terminate: bool,
        signal: Option<String>,
        expires: Option<f64>,
        namespace: String,
    ) -> PyResult<i64> {
        let expires = match expires {
            None => celeriac_store::REVOKE_EXPIRES,
            Some(s) => Duration::try_from_secs_f64(s)
                .map_err(|_| PyValueError::new_err(format!("expires must be a positive number of seconds, got {s}")))?,
        };
        let revocation = celeriac_store::Revocation {
            task_ids,
            stamps: Vec::new(),
            terminate,
            signal: signal.or_else(|| terminate.then(|| "SIGTERM".to_owned())),
            expires,
        };
        let exchange = celeriac_protocol::pidbox::control_exchange(&namespace);
        let payload = celeriac_protocol::pidbox::revoke_envelope(
            &exchange,
            &revocation.task_ids,
            terminate,
            revocation.signal.as_deref(),
        );
        let store = self.store()?;
        block_on(py, async move { store.broadcast_publish(&exchange, "", &payload, Some(&revocation)).await })?
            .map_err(|e| self.error(&e, Doing::Other))
    }

    /// Closes the pool's connections. Later calls fail.
    fn close(&self) -> PyResult<()> {
        self.store()?.close();
        Ok(())
    }

    fn __repr__(&self) -> String {
        format!("<celeriac Store {}>", self.target)
    }
}

/// A broadcast as Python sees it: `(position, exchange, routing_key, envelope)`.
type Broadcast<'py> = (i64, String, String, Bound<'py, PyBytes>);

/// A revocation from the dict `Store.broadcast_publish` takes.
fn revocation_from(d: &Bound<'_, pyo3::types::PyDict>) -> PyResult<celeriac_store::Revocation> {
    let get = |key: &str| d.get_item(key);
    let task_ids: Vec<String> = match get("task_ids")? {
        Some(v) if !v.is_none() => v.extract()?,
        _ => Vec::new(),
    };
    let stamps: Vec<(String, String)> = match get("stamps")? {
        Some(v) if !v.is_none() => v.extract()?,
        _ => Vec::new(),
    };
    let terminate: bool = match get("terminate")? {
        Some(v) if !v.is_none() => v.is_truthy()?,
        _ => false,
    };
    let signal: Option<String> = match get("signal")? {
        Some(v) if !v.is_none() => Some(v.str()?.to_string()),
        _ => None,
    };
    let expires = match get("expires")? {
        Some(v) if !v.is_none() => {
            let secs: f64 = v.extract()?;
            Duration::try_from_secs_f64(secs).map_err(|_| {
                PyValueError::new_err(format!("expires must be a positive number of seconds, got {secs}"))
            })?
        }
        _ => celeriac_store::REVOKE_EXPIRES,
    };
    Ok(celeriac_store::Revocation { task_ids, stamps, terminate, signal, expires })
}

/// A transaction of inserts written in the background (see `Store.begin_insert`).
#[pyclass(name = "InsertStream", module = "celeriac._native", frozen)]
pub struct InsertStream {
    owner: Py<PyStore>,
    sender: Mutex<Option<mpsc::UnboundedSender<InsertBatch>>>,
    task: Mutex<Option<JoinHandle<celeriac_store::Result<u64>>>>,
}

impl InsertStream {
    /// Waits for the background insert and maps its outcome.
    fn finish(&self, py: Python<'_>) -> PyResult<u64> {
        let task = self.task.lock().unwrap_or_else(PoisonError::into_inner).take();
        let Some(task) = task else {
            return Err(PyRuntimeError::new_err("this insert already finished"));
        };
        match block_on(py, task)? {
            Ok(Ok(count)) => Ok(count),
            Ok(Err(e)) => Err(self.owner.get().error(&e, Doing::Enqueue)),
            Err(join) => Err(PyRuntimeError::new_err(format!("the insert task failed: {join}"))),
        }
    }

    fn send(&self, batch: InsertBatch) -> bool {
        self.sender.lock().unwrap_or_else(PoisonError::into_inner).as_ref().is_some_and(|s| s.send(batch).is_ok())
    }
}

#[pymethods]
impl InsertStream {
    /// Queues `messages` for insertion; returns at once. Raises the insert's error if it has
    /// already failed.
    fn add(&self, py: Python<'_>, messages: Vec<PyRef<'_, Message>>) -> PyResult<()> {
        let rows: Vec<NewMessage> = messages.iter().map(|m| m.row.clone()).collect();
        if self.send(InsertBatch::Rows(rows)) {
            return Ok(());
        }
        self.sender.lock().unwrap_or_else(PoisonError::into_inner).take();
        match self.finish(py) {
            Err(e) => Err(e),
            Ok(_) => Err(PyRuntimeError::new_err("this insert already finished")),
        }
    }

    /// Commits everything added (durably) and returns how many messages were enqueued.
    fn commit(&self, py: Python<'_>) -> PyResult<u64> {
        self.send(InsertBatch::Commit);
        self.sender.lock().unwrap_or_else(PoisonError::into_inner).take();
        self.finish(py)
    }

    /// Abandons the transaction: nothing added is written. Idempotent.
    fn abort(&self) {
        self.sender.lock().unwrap_or_else(PoisonError::into_inner).take();
        self.task.lock().unwrap_or_else(PoisonError::into_inner).take();
    }
}
