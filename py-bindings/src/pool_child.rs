//! `celeriac._pool_child.run`: one pool child of a celeriac worker. The interpreter is the
//! app's own; this task loop imports the app once through `celeriac._worker.init`, then runs the
//! jobs its worker sends over the socket that is its standard input. No tokio here: one reader
//! thread, and the task thread(s).
//!
//! - prefork and solo: tasks run on the main thread, so the soft time limit signal handler runs
//!   in the task;
//! - threads: `threads` threads, each attached to Python for its whole life (per-task attach
//!   would drop every `threading.local`, such as Celery's per-thread result backend).

use std::{
    io::{BufReader, BufWriter, Write as _},
    os::{fd::AsFd as _, unix::net::UnixStream},
    sync::{mpsc, Arc, Mutex},
};

use pyo3::{
    exceptions::{PySystemExit, PyValueError},
    prelude::*,
    types::{PyBytes, PyList},
};

use celeriac_pool::{
    frame::{self, DeathCause, Decision, FromChild, ToChild},
    process as sys, BROKER_URL_FRAME_ENV, EXIT_INIT_FAILED, PARENT_PID_ENV, PROTOCOL,
};
use celeriac_protocol::TaskState;

/// How a child runs its tasks (the worker's `-P`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PoolKind {
    Prefork,
    Threads,
    Solo,
}

impl PoolKind {
    fn parse(name: &str) -> PyResult<Self> {
        match name {
            "prefork" => Ok(PoolKind::Prefork),
            "threads" => Ok(PoolKind::Threads),
            "solo" => Ok(PoolKind::Solo),
            other => Err(PyValueError::new_err(format!("unknown pool {other:?}"))),
        }
    }

    fn name(self) -> &'static str {
        match self {
            PoolKind::Prefork => "prefork",
            PoolKind::Threads => "threads",
            PoolKind::Solo => "solo",
        }
    }
}

/// What the worker passes on the child's command line.
struct ChildArgs {
    index: usize,
    pool: PoolKind,
    threads: usize,
    hostname: String,
    app: String,
    loglevel: String,
}

type Writer = Arc<Mutex<BufWriter<UnixStream>>>;

fn send(writer: &Writer, msg: &FromChild) {
    let mut w = writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    // A write error means the worker is gone; the death signal ends this process.
    let _ = frame::write_sync(&mut *w, msg, b"").and_then(|()| w.flush());
}

enum Work {
    Job(ToChild, Vec<u8>),
    Ready,
}

/// Runs a pool child until its worker says to stop; returns the process's exit code (the
/// caller, `celeriac._pool_child`, exits with it at once, without Python's shutdown).
///
/// `protocol` is the worker's [`PROTOCOL`]: a worker of another release is refused (exit 2)
/// before anything is read from it.
#[pyfunction]
#[pyo3(signature = (*, protocol, index, pool, threads, hostname, app, loglevel))]
#[allow(clippy::too_many_arguments)]
pub fn run_pool_child(
    py: Python<'_>,
    protocol: u32,
    index: usize,
    pool: &str,
    threads: usize,
    hostname: String,
    app: String,
    loglevel: String,
) -> PyResult<u8> {
    if protocol != PROTOCOL {
        eprintln!(
            "celeriac pool child: the worker speaks pool protocol {protocol}, this celeriac package ({}) {PROTOCOL}: \
             install the same celeriac release as the worker",
            env!("CARGO_PKG_VERSION")
        );
        return Ok(2);
    }
    let args = ChildArgs { index, pool: PoolKind::parse(pool)?, threads, hostname, app, loglevel };
    Ok(py.detach(|| child_main(&args)))
}

fn child_main(args: &ChildArgs) -> u8 {
    let expects_broker_url = std::env::var_os(BROKER_URL_FRAME_ENV).is_some();
    let parent = std::env::var(PARENT_PID_ENV).ok().and_then(|p| p.parse().ok());
    match sys::die_with_parent(parent) {
        Ok(true) => {}
        Ok(false) => return 1,
        Err(e) => eprintln!("celeriac pool child: cannot arrange to exit with the worker: {e}"),
    }
    sys::ignore_stop_signals();
    let socket = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => UnixStream::from(fd),
        Err(e) => {
            eprintln!("celeriac pool child: no channel to the worker on standard input: {e}");
            return 1;
        }
    };
    if let Err(e) = sys::stdin_to_dev_null() {
        eprintln!("celeriac pool child: {e}");
    }
    let reader = match socket.try_clone() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("celeriac pool child: {e}");
            return 1;
        }
    };
    // Unbuffered: nothing after this frame may be read ahead of the task loop's reader.
    let broker_secret = match expects_broker_url.then(|| frame::read_sync::<ToChild>(&mut &socket)) {
        None => None,
        Some(Ok(Some((ToChild::BrokerUrl { url }, _)))) => Some(url),
        Some(other) => {
            eprintln!("celeriac pool child: expected the broker URL from the worker first, got {other:?}");
            return 1;
        }
    };
    let writer: Writer = Arc::new(Mutex::new(BufWriter::new(socket)));

    if let Some(secret) = broker_secret {
        let registered = Python::attach(|py| {
            py.import("celeriac.transport").and_then(|t| t.call_method1("register_url", (secret,))).map(drop)
        });
        if let Err(e) = registered {
            eprintln!("celeriac pool child: cannot hand the broker URL to the transport: {e}");
        }
    }
    let worker = match Python::attach(|py| init(py, args)) {
        Ok((module, hello)) => {
            send(&writer, &FromChild::Hello { hello });
            module
        }
        Err(e) => {
            send(&writer, &FromChild::InitError { message: e.to_string() });
            return EXIT_INIT_FAILED;
        }
    };

    let announce = Arc::new(Mutex::new(None::<bool>));
    let code = if args.pool == PoolKind::Threads {
        // Several task threads share the jobs: one reader thread hands them out.
        let (tx, rx) = mpsc::channel::<Work>();
        {
            let announce = announce.clone();
            std::thread::Builder::new()
                .name("celeriac-reader".into())
                .spawn(move || {
                    let mut reader = BufReader::new(reader);
                    while let Some(work) = next_work(&mut reader, &announce) {
                        if tx.send(work).is_err() {
                            return;
                        }
                    }
                })
                .map_or_else(|e| eprintln!("celeriac pool child: cannot start its reader: {e}"), drop);
        }
        let source = Arc::new(Source::Channel(Mutex::new(rx)));
        let handles: Vec<_> = (0..args.threads.max(1))
            .filter_map(|i| {
                let (source, writer, worker) =
                    (source.clone(), writer.clone(), Python::attach(|py| worker.clone_ref(py)));
                std::thread::Builder::new()
                    .name(format!("celeriac-task-{i}"))
                    .spawn(move || {
                        let code = Python::attach(|py| task_loop(py, &worker, &source, &writer, true));
                        if let Some(code) = code {
                            // The process exits (Celery's WorkerShutdown/WorkerTerminate, or
                            // SystemExit in the post-mortem): the other task threads go with it
                            // rather than keep it alive without this thread.
                            let _ = writer.lock().map(|mut w| w.flush());
                            std::process::exit(i32::from(code));
                        }
                        code
                    })
                    .ok()
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(None)).find_map(|c| c)
    } else {
        // One task thread, the main one: it reads its jobs itself (no hand-off per job).
        let source = Source::Socket(Mutex::new(BufReader::new(reader)), announce.clone());
        Python::attach(|py| task_loop(py, &worker, &source, &writer, args.pool == PoolKind::Solo))
    };
    if let Some(code) = code {
        // A task raised SystemExit: leave as billiard's child would; the worker treats the
        // task as lost and replaces this process.
        let _ = writer.lock().map(|mut w| w.flush());
        return code;
    }
    let announce_worker = announce.lock().ok().and_then(|a| *a);
    if let Some(announce_worker) = announce_worker {
        Python::attach(|py| {
            if let Err(e) = worker.bind(py).call_method1("shutdown", (0, announce_worker)) {
                e.print(py);
            }
        });
    }
    0
}

/// Why a child could not load the app; its text goes to the worker, which shows it to the user.
#[derive(Debug, thiserror::Error)]
enum InitError {
    /// Python raised: Celery's message for a bad `-A` (`AppLoadError`), else the traceback.
    #[error("{0}")]
    Python(String),
    /// `init` returned something that is not a hello.
    #[error("unreadable hello from celeriac._worker: {0}")]
    UnreadableHello(#[source] serde_json::Error),
}

/// Imports `celeriac._worker` and runs `init`; returns the module and the hello, or the message
/// for the user.
fn init(py: Python<'_>, args: &ChildArgs) -> Result<(Py<PyModule>, serde_json::Value), InitError> {
    let described = |e: PyErr| -> InitError {
        let is_load_error = py
            .import("celeriac._worker")
            .and_then(|m| m.getattr("AppLoadError"))
            .is_ok_and(|cls| e.get_type(py).is(&cls));
        if is_load_error {
            InitError::Python(e.value(py).str().map_or_else(|_| e.to_string(), |s| s.to_string()))
        } else {
            let tb = e.traceback(py).and_then(|tb| tb.format().ok()).unwrap_or_default();
            InitError::Python(format!("{tb}{e}"))
        }
    };
    // Apps read sys.argv; `celery worker` children see the worker's command line.
    let argv = PyList::new(py, ["celeriac", "worker", "-A", args.app.as_str()]).map_err(described)?;
    py.import("sys").and_then(|sys| sys.setattr("argv", argv)).map_err(described)?;
    let module = py.import("celeriac._worker").map_err(described)?;
    let concurrency = if args.pool == PoolKind::Threads { args.threads } else { 1 };
    let hello = module
        .call_method1(
            "init",
            (
                args.app.as_str(),
                args.hostname.as_str(),
                args.loglevel.as_str(),
                args.pool.name(),
                args.index,
                concurrency,
            ),
        )
        .map_err(described)?;
    let text: String = py
        .import("json")
        .and_then(|json| json.call_method1("dumps", (hello,)))
        .and_then(|t| t.extract())
        .map_err(described)?;
    let hello = serde_json::from_str(&text).map_err(InitError::UnreadableHello)?;
    Ok((module.unbind(), hello))
}

/// Where a task thread gets its next job.
enum Source {
    /// Straight from the socket (the only task thread); remembers the `Shutdown` frame.
    Socket(Mutex<BufReader<UnixStream>>, Arc<Mutex<Option<bool>>>),
    /// From the reader thread (the threads pool).
    Channel(Mutex<mpsc::Receiver<Work>>),
}

impl Source {
    /// The next job; `None` once the worker said to shut down, or is gone.
    fn next(&self) -> Option<Work> {
        match self {
            Source::Socket(reader, announce) => next_work(&mut *reader.lock().ok()?, announce),
            Source::Channel(rx) => rx.lock().ok()?.recv().ok(),
        }
    }
}

/// Reads frames until one is work; `None` at `Shutdown` (recorded in `announce`), at the end of
/// the stream (the worker is gone; the death signal ends the process) or at a bad frame.
fn next_work(reader: &mut BufReader<UnixStream>, announce: &Mutex<Option<bool>>) -> Option<Work> {
    match frame::read_sync::<ToChild>(reader) {
        Ok(Some((ToChild::Shutdown { announce_worker }, _))) => {
            if let Ok(mut a) = announce.lock() {
                *a = Some(announce_worker);
            }
            None
        }
        Ok(Some((ToChild::Ready, _))) => Some(Work::Ready),
        Ok(Some((job, envelope))) => Some(Work::Job(job, envelope)),
        Ok(None) => None,
        Err(e) => {
            eprintln!("celeriac pool-child: bad frame from the worker: {e}");
            None
        }
    }
}

/// Runs jobs until there are no more; `Some(code)` if a task asked the process to exit.
fn task_loop(
    py: Python<'_>,
    worker: &Py<PyModule>,
    source: &Source,
    writer: &Writer,
    in_process_exit: bool,
) -> Option<u8> {
    let worker = worker.bind(py);
    loop {
        let work = py.detach(|| source.next());
        let work = work?;
        // A soft-limit signal meant for an earlier task runs its handler now, while no task runs.
        if let Err(e) = py.check_signals() {
            e.print(py);
        }
        let (seq, result) = match work {
            Work::Ready => {
                if let Err(e) = worker.call_method0("ready") {
                    e.print(py);
                }
                continue;
            }
            Work::Job(ToChild::Job { seq, queue, redelivered, revoked }, envelope) => {
                let result =
                    worker.call_method1("run", (PyBytes::new(py, &envelope), queue.as_str(), redelivered, revoked));
                match result {
                    // As Celery's threads and solo pools do (`apply_target`), a task's SystemExit
                    // fails that task with WorkerLostError and the pool goes on; a prefork child
                    // exits, as billiard's does.
                    Err(e) if in_process_exit && is_task_exit(py, &e) => {
                        let detail = e.value(py).repr().map_or_else(|_| "SystemExit()".to_owned(), |r| r.to_string());
                        let args = (
                            PyBytes::new(py, &envelope),
                            queue,
                            redelivered,
                            DeathCause::InProcess.as_str(),
                            detail,
                            0.0,
                        );
                        (seq, worker.call_method1("post_mortem", args))
                    }
                    result => (seq, result),
                }
            }
            Work::Job(ToChild::PostMortem { seq, queue, redelivered, cause, detail, hard_limit }, envelope) => (
                seq,
                worker.call_method1(
                    "post_mortem",
                    (PyBytes::new(py, &envelope), queue, redelivered, cause.as_str(), detail, hard_limit),
                ),
            ),
            Work::Job(..) => continue,
        };
        let reply = match result.and_then(|r| r.extract::<(String, String, String)>()) {
            Ok((decision, state, detail)) => match (from_wire::<Decision>(decision), from_wire::<TaskState>(state)) {
                (Ok(decision), Ok(state)) => {
                    FromChild::Result { seq, decision, state, detail, max_rss_kib: sys::max_rss_kib() }
                }
                (Err(e), _) | (_, Err(e)) => {
                    internal_error(seq, format!("celeriac._worker answered with an unknown decision or state: {e}"))
                }
            },
            Err(e) if e.is_instance_of::<PySystemExit>(py) => return Some(exit_code(py, &e)),
            Err(e) => {
                // celeriac's or Celery's own code failed (not the task: its exceptions are
                // Celery's outcomes). Keep the message, with the reason, in dead_letter.
                e.print(py);
                internal_error(seq, format!("celeriac could not run the task through Celery: {e}"))
            }
        };
        send(writer, &reply);
    }
}

/// Reads a decision or state as the frame carries it (`"ack"`, `"SUCCESS"`, …).
fn from_wire<T: serde::de::DeserializeOwned>(name: String) -> Result<T, serde_json::Error> {
    serde_json::from_value(serde_json::Value::String(name))
}

/// The reply for a delivery that celeriac's or Celery's own code could not settle: rejected (to
/// `dead_letter`) with `detail` as the reason.
fn internal_error(seq: u64, detail: String) -> FromChild {
    FromChild::Result {
        seq,
        decision: Decision::Reject,
        state: TaskState::InternalError,
        detail,
        max_rss_kib: sys::max_rss_kib(),
    }
}

/// Whether a task's exception ends only that task in a threads or solo pool, as Celery's
/// `apply_target` decides: a `BaseException` that is not an `Exception` (`SystemExit`,
/// `KeyboardInterrupt`, …), except Celery's `WorkerShutdown` and `WorkerTerminate`, which stop
/// the process.
fn is_task_exit(py: Python<'_>, e: &PyErr) -> bool {
    if e.is_instance_of::<pyo3::exceptions::PyException>(py) {
        return false;
    }
    let stops_worker = py.import("celery.exceptions").is_ok_and(|m| {
        ["WorkerShutdown", "WorkerTerminate"]
            .iter()
            .any(|name| m.getattr(*name).is_ok_and(|cls| e.value(py).is_instance(&cls).unwrap_or(false)))
    });
    !stops_worker
}

fn exit_code(py: Python<'_>, e: &PyErr) -> u8 {
    let code = e.value(py).getattr("code").ok();
    match code {
        Some(c) if c.is_none() => 0,
        Some(c) => c.extract::<i64>().map_or(1, |n| u8::try_from(n.rem_euclid(256)).unwrap_or(1)),
        None => 1,
    }
}
