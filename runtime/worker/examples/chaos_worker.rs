//! The Rust-handler worker of the chaos suite (`scripts/chaos`): the whole `celeriac` CLI (as
//! `celeriac::cli::main` gives it) plus one handler, `chaos.record(seq, sleep_seconds)`.
//!
//! ```sh
//! CHAOS_LEDGER_URL=postgresql://…/db cargo run -p celeriac --example chaos_worker -- \
//!     worker --database-url postgresql://…/db -Q chaos -c 4 -n rust1.0@chaos
//! ```
//!
//! `chaos.record` sleeps `sleep_seconds` (so tasks are in flight when the suite injects a fault),
//! then writes one row into `chaos_ledger` in its own transaction, on its own connections
//! (`CHAOS_LEDGER_URL`, `application_name=chaos_ledger`, `synchronous_commit=on`), and returns
//! `seq`. The row is the task's side effect: the suite counts rows per task id to find lost and
//! duplicated runs. Each run writes under a fresh `run_id`, so retrying the insert after a
//! broken connection (commit outcome unknown) can never record one run twice.

use std::{
    str::FromStr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use celeriac::{protocol::Value, Outcome, Registry, Request};
use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

/// Ledger connections per process (tasks pipeline their inserts over them).
const CONNECTIONS: usize = 4;
/// How long a run keeps retrying its ledger insert before failing the task (the suite then
/// reports it as lost, which is what a handler that gives up would cause).
const LEDGER_RETRY_FOR: Duration = Duration::from_secs(300);

const INSERT: &str = "insert into chaos_ledger \
     (run_id, task_id, seq, worker, pid, kind, attempt, redelivered, started, finished) \
     values ($1, $2, $3, $4, $5, 'rust', $6, $7, $8, $9) on conflict (run_id) do nothing";

struct Ledger {
    config: tokio_postgres::Config,
    slots: Vec<Mutex<Option<Arc<Client>>>>,
    next: AtomicUsize,
}

impl Ledger {
    fn from_env() -> Result<Ledger, String> {
        let url = std::env::var("CHAOS_LEDGER_URL").map_err(|_| "CHAOS_LEDGER_URL is not set".to_owned())?;
        let mut config = tokio_postgres::Config::from_str(&url).map_err(|e| format!("CHAOS_LEDGER_URL: {e}"))?;
        config.application_name("chaos_ledger").connect_timeout(Duration::from_secs(5));
        config.options("-c synchronous_commit=on");
        Ok(Ledger { config, slots: (0..CONNECTIONS).map(|_| Mutex::new(None)).collect(), next: AtomicUsize::new(0) })
    }

    /// A connection of the next slot, opened if the slot has none or its connection broke.
    async fn client(&self) -> Result<Arc<Client>, tokio_postgres::Error> {
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        let mut guard = slot.lock().await;
        if let Some(client) = guard.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        let (client, connection) = self.config.connect(NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let client = Arc::new(client);
        *guard = Some(client.clone());
        Ok(client)
    }
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

fn number(value: Option<&Value>) -> Option<f64> {
    match value? {
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    }
}

async fn record(ledger: Arc<Ledger>, req: Request) -> Outcome {
    let started = now();
    let (Some(seq), Some(sleep)) = (number(req.args().first()), number(req.args().get(1))) else {
        return Outcome::failure("TypeError", "chaos.record(seq, sleep_seconds) takes two numbers");
    };
    if sleep > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(sleep)).await;
    }
    let run_id = Uuid::new_v4();
    let seq = seq as i32;
    let pid = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
    let worker: &str = &req.hostname;
    let finished = now();
    let deadline = Instant::now() + LEDGER_RETRY_FOR;
    loop {
        let result = match ledger.client().await {
            Ok(client) => {
                client
                    .execute(
                        INSERT,
                        &[
                            &run_id,
                            &req.id(),
                            &seq,
                            &worker,
                            &pid,
                            &req.lease.attempt,
                            &req.redelivered,
                            &started,
                            &finished,
                        ],
                    )
                    .await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(_) => return Outcome::Success(Value::Int(i64::from(seq))),
            Err(e) if Instant::now() < deadline => {
                eprintln!("chaos.record[{}]: ledger insert failed, retrying: {e}", req.id());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Outcome::failure("LedgerError", format!("could not write the ledger row: {e}")),
        }
    }
}

fn main() -> std::process::ExitCode {
    let mut registry = Registry::with_builtins();
    // The ledger is needed by `worker` only; other subcommands (migrate, send, …) run without it.
    match Ledger::from_env() {
        Ok(ledger) => {
            let ledger = Arc::new(ledger);
            registry.register_raw("chaos.record", move |req: Request| record(ledger.clone(), req));
        }
        Err(e) if std::env::args().any(|a| a == "worker") => {
            eprintln!("chaos_worker: {e}");
            return std::process::ExitCode::from(2);
        }
        Err(_) => {}
    }
    celeriac::cli::main(registry)
}
