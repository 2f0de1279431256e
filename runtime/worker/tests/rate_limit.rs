//! Rate limits on Rust handlers, in-process workers against a real PostgreSQL.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use celeriac::{Client, Registry, TaskError, Worker, WorkerConfig, WorkerReport};
use celeriac_protocol::{Map, TaskOptions, Value};
use celeriac_store::{testing::TestDatabase, Store};
use common::wait_for;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

mod common;

type Starts = Arc<Mutex<Vec<(String, Instant)>>>;

/// A registry where `limited` and `global` record when they started, and `fast` too.
fn registry(starts: &Starts) -> Registry {
    let mut registry = Registry::new();
    for name in ["limited", "global", "fast"] {
        let starts = starts.clone();
        registry.register(name, move |_args: Vec<Value>| {
            starts.lock().unwrap().push((name.to_owned(), Instant::now()));
            async { Ok::<_, TaskError>(()) }
        });
    }
    registry.rate_limit("limited", "4/s").unwrap();
    registry.global_rate_limit("global", "240/m").unwrap();
    registry
}

fn config() -> WorkerConfig {
    WorkerConfig {
        concurrency: 4,
        prefetch_multiplier: 1,
        poll_interval: Duration::from_millis(200),
        heartbeat_interval: Duration::from_millis(500),
        lease: Duration::from_secs(10),
        ..WorkerConfig::default()
    }
}

struct Running {
    shutdown: CancellationToken,
    handle: JoinHandle<Result<WorkerReport, celeriac::Error>>,
}

fn start(store: &Store, registry: Registry) -> Running {
    let worker = Worker::new(store.clone(), registry, config()).unwrap();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(worker.run(shutdown.clone()));
    Running { shutdown, handle }
}

impl Running {
    async fn stop(self) -> WorkerReport {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.handle).await.expect("worker stops").unwrap().unwrap()
    }
}

async fn send(store: &Store, task: &str, n: usize) {
    let client = Client::new(store.clone());
    for _ in 0..n {
        client.send_task(task, &[] as &[Value], &Map::new(), &TaskOptions::default()).await.unwrap();
    }
}

fn times(starts: &Starts, name: &str) -> Vec<Instant> {
    let mut t: Vec<Instant> = starts.lock().unwrap().iter().filter(|(n, _)| n == name).map(|(_, t)| *t).collect();
    t.sort();
    t
}

#[tokio::test]
async fn a_per_worker_limit_spaces_starts_while_other_tasks_flow() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let starts = Starts::default();
    send(&store, "limited", 6).await;
    send(&store, "fast", 40).await;
    let worker = start(&store, registry(&starts));
    wait_for(20, "every task", || async { starts.lock().unwrap().len() == 46 }).await;
    let limited = times(&starts, "limited");
    let gaps: Vec<Duration> = limited.windows(2).map(|w| w[1] - w[0]).collect();
    // The limiter spaces releases by 250 ms; a start is recorded by the handler a moment after its
    // release, so two recordings may be a little closer than their releases were.
    assert!(gaps.iter().all(|g| *g >= Duration::from_millis(240)), "{gaps:?}");
    // The fast tasks queued behind the limited ones did not wait for them.
    let fast = times(&starts, "fast");
    assert!(fast.last().unwrap() < &limited[3], "fast tasks waited behind the limited ones");
    let report = worker.stop().await;
    assert!(report.parked >= 1, "{report:?}");
    assert_eq!(report.succeeded, 46);
}

#[tokio::test]
async fn a_global_limit_holds_across_workers_and_waiting_messages_stay_parked() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let starts = Starts::default();
    send(&store, "global", 8).await;
    let workers = [start(&store, registry(&starts)), start(&store, registry(&starts))];
    wait_for(20, "every task", || async { starts.lock().unwrap().len() == 8 }).await;
    let global = times(&starts, "global");
    // 240/m is 4/s: a bucket of one token, so 8 tokens are granted over at least 7 intervals;
    // a start may follow its token by a moment (the first one especially: a new worker's first
    // message), so the starts are allowed one interval less.
    assert!(global[7] - global[0] >= Duration::from_millis(1500), "{:?}", global[7] - global[0]);
    for w in workers {
        w.stop().await;
    }
    let rows = store.rate_limit_list().await.unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(store.message_count().await.unwrap(), 0);
}
