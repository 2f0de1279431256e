//! The in-process worker against a real PostgreSQL: outcomes, bad input, concurrency,
//! shutdown and database restarts.

use std::{
    collections::HashMap,
    sync::{atomic::Ordering, Arc, Mutex},
    time::Duration,
};

use celeriac::{examples, Client, Outcome, Registry, Request, TaskError, Worker, WorkerConfig, WorkerReport};
use celeriac_protocol::{Map, TaskOptions, Value};
use celeriac_store::{testing::PgCluster, testing::TestDatabase, NewMessage, Store, StoreConfig};
use common::wait_for;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

mod common;

fn config() -> WorkerConfig {
    WorkerConfig {
        concurrency: 4,
        lease: Duration::from_secs(10),
        heartbeat_interval: Duration::from_millis(500),
        poll_interval: Duration::from_millis(200),
        rescue_interval: Duration::from_millis(500),
        shutdown_timeout: Duration::from_secs(10),
        ..WorkerConfig::default()
    }
}

struct Running {
    shutdown: CancellationToken,
    handle: JoinHandle<Result<WorkerReport, celeriac::Error>>,
    stats: Arc<celeriac::WorkerStats>,
}

impl Running {
    async fn stop(self) -> WorkerReport {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.handle).await.expect("worker stops").unwrap().unwrap()
    }
}

fn start(store: &Store, registry: Registry, config: WorkerConfig) -> Running {
    let worker = Worker::new(store.clone(), registry, config).unwrap();
    let stats = worker.stats();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(worker.run(shutdown.clone()));
    Running { shutdown, handle, stats }
}

async fn send(store: &Store, task: &str, args: Vec<Value>) -> String {
    Client::new(store.clone()).send_task(task, &args, &Map::new(), &TaskOptions::default()).await.unwrap()
}

fn raw(queue: &str, payload: &str) -> NewMessage {
    NewMessage {
        queue: queue.into(),
        priority: 0,
        eta: None,
        expires: None,
        task_name: None,
        task_id: None,
        payload: payload.as_bytes().to_vec(),
    }
}

#[tokio::test]
async fn runs_typed_handlers_and_records_outcomes() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let results = Arc::new(Mutex::new(Vec::new()));
    let mut registry = Registry::with_builtins();
    examples::register(&mut registry);
    let seen = results.clone();
    registry.register("tasks.mul", move |(a, b): (i64, i64)| {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().push(a * b);
            Ok::<_, TaskError>(a * b)
        }
    });
    send(&store, "tasks.mul", vec![Value::Int(6), Value::Int(7)]).await;
    send(&store, "examples.add", vec![Value::Int(1), Value::Int(2)]).await;
    send(&store, "celery.ping", vec![]).await;
    send(&store, "examples.fail", vec![Value::Str("boom".into())]).await;
    // Args of the wrong shape fail the task (TypeError) instead of crashing anything.
    send(&store, "tasks.mul", vec![Value::Str("x".into())]).await;
    let worker = start(&store, registry, config());
    wait_for(20, "all five settled", || async { worker.stats.settled.load(std::sync::atomic::Ordering::Relaxed) >= 5 })
        .await;
    let report = worker.stop().await;
    assert_eq!((report.succeeded, report.failed), (3, 2), "{report:?}");
    assert_eq!(*results.lock().unwrap(), vec![42]);
    assert_eq!(store.message_count().await.unwrap(), 0);
    assert!(store.dead_letter_list(10).await.unwrap().is_empty());
}

#[derive(Debug, serde::Deserialize)]
struct Discount {
    #[serde(default)]
    discount: f64,
}

#[tokio::test]
async fn typed_kwargs_and_refused_kwargs() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let totals = Arc::new(Mutex::new(Vec::new()));
    let seen = totals.clone();
    let mut registry = Registry::new();
    registry.register_with_kwargs("shop.total", move |(prices,): (Vec<f64>,), opts: Discount| {
        let seen = seen.clone();
        async move {
            let total = prices.iter().sum::<f64>() * (1.0 - opts.discount);
            seen.lock().unwrap().push(total);
            Ok::<_, TaskError>(total)
        }
    });
    examples::register(&mut registry);
    let client = Client::new(store.clone());
    let prices = Value::List(vec![Value::Float(3.0), Value::Int(5)]);
    let mut kwargs = Map::new();
    kwargs.insert("discount".into(), Value::Float(0.5));
    client.send_task("shop.total", std::slice::from_ref(&prices), &kwargs, &TaskOptions::default()).await.unwrap();
    client.send_task("shop.total", &[prices], &Map::new(), &TaskOptions::default()).await.unwrap();
    // examples.add takes no keyword arguments: a TypeError failure, like Python's.
    client.send_task("examples.add", &[Value::Int(1), Value::Int(2)], &kwargs, &TaskOptions::default()).await.unwrap();
    let worker = start(&store, registry, WorkerConfig { concurrency: 1, ..config() });
    wait_for(20, "three settled", || async { worker.stats.settled.load(std::sync::atomic::Ordering::Relaxed) >= 3 })
        .await;
    let report = worker.stop().await;
    assert_eq!((report.succeeded, report.failed), (2, 1), "{report:?}");
    assert_eq!(*totals.lock().unwrap(), vec![4.0, 8.0]);
}

#[tokio::test]
async fn bad_messages_are_dead_lettered_and_the_worker_keeps_going() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let bad = [
        (
            "not-base64",
            r#"{"body": "%%%", "content-type": "application/json", "headers": {"task": "examples.add", "id": "1"}, "properties": {"body_encoding": "base64"}}"#,
            "base64",
        ),
        (
            "not-json-body",
            r#"{"body": "bm90IGpzb24=", "content-type": "application/json", "headers": {"task": "examples.add", "id": "2"}, "properties": {"body_encoding": "base64"}}"#,
            "invalid JSON",
        ),
        (
            "no-task-header",
            r#"{"body": "W1tdLCB7fSwge31d", "content-type": "application/json", "headers": {"id": "3"}, "properties": {"body_encoding": "base64"}}"#,
            "headers.task",
        ),
        (
            "wrong-body-shape",
            r#"{"body": "eyJhIjogMX0=", "content-type": "application/json", "headers": {"task": "examples.add", "id": "4"}, "properties": {"body_encoding": "base64"}}"#,
            "body",
        ),
        (
            "pickle",
            r#"{"body": "gARdlC4=", "content-type": "application/x-python-serialize", "content-encoding": "binary", "headers": {"task": "examples.add", "id": "5"}, "properties": {"body_encoding": "base64"}}"#,
            "disallowed",
        ),
        ("envelope-not-json", "\u{0}\u{1}garbage", "envelope"),
        // A NUL in the task name cannot be stored in a text column; the reason gets U+FFFD.
        (
            "nul-in-task-name",
            r#"{"body": "W1tdLCB7fSwge31d", "content-type": "application/json", "headers": {"task": "x\u0000y", "id": "7"}, "properties": {"body_encoding": "base64"}}"#,
            "NotRegistered('x\u{FFFD}y')",
        ),
        // A time limit too large for a Duration is no limit, not a crash.
        (
            "huge-time-limit",
            r#"{"body": "W1tdLCB7fSwge31d", "content-type": "application/json", "headers": {"task": "examples.reject", "id": "8", "timelimit": [1e300, null]}, "properties": {"body_encoding": "base64"}}"#,
            "examples.reject() arguments",
        ),
    ];
    let msgs: Vec<_> = bad.iter().map(|(_, payload, _)| raw("celery", payload)).collect();
    store.message_insert_many(&msgs).await.unwrap();
    send(&store, "examples.add", vec![Value::Int(2), Value::Int(2)]).await;

    let mut registry = Registry::new();
    examples::register(&mut registry);
    let worker = start(&store, registry, config());
    wait_for(20, "all settled", || async { worker.stats.settled.load(std::sync::atomic::Ordering::Relaxed) >= 9 })
        .await;
    let report = worker.stop().await;
    assert_eq!(report.succeeded, 1, "the good message still ran: {report:?}");
    // examples.reject() called without its argument fails with a TypeError.
    assert_eq!(report.failed, 1, "{report:?}");
    assert_eq!(report.dead_lettered, 7);

    let dead = store.dead_letter_list(20).await.unwrap();
    assert_eq!(dead.len(), 7);
    for (label, payload, reason) in bad.into_iter().filter(|(label, ..)| *label != "huge-time-limit") {
        let row = dead
            .iter()
            .find(|d| d.payload == payload.as_bytes())
            .unwrap_or_else(|| panic!("{label} not dead-lettered with its bytes"));
        assert!(row.reason.contains(reason), "{label}: reason {:?} lacks {reason:?}", row.reason);
        let code = match label {
            "pickle" => "content_disallowed",
            "nul-in-task-name" => "not_registered",
            _ => "undecodable",
        };
        assert_eq!(row.reason_code, code, "{label}");
    }
    assert_eq!(store.message_count().await.unwrap(), 0);
}

#[tokio::test]
async fn unknown_tasks_fail_as_not_registered_once() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let id = send(&store, "tasks.nope", vec![]).await;
    let worker = start(&store, Registry::with_builtins(), config());
    wait_for(20, "dead letter", || async { store.dead_letter_list(1).await.unwrap().len() == 1 }).await;
    let report = worker.stop().await;
    assert_eq!(report.received, 1, "received exactly once, not retried");
    let dead = store.dead_letter_list(10).await.unwrap();
    assert_eq!(dead[0].reason_code, "not_registered");
    assert_eq!(dead[0].reason, "NotRegistered('tasks.nope')");
    assert_eq!(dead[0].task_id.as_deref(), Some(id.as_str()));
    assert_eq!(store.message_count().await.unwrap(), 0);
}

#[tokio::test]
async fn panics_fail_the_task_not_the_worker() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let mut registry = Registry::new();
    examples::register(&mut registry);
    for _ in 0..3 {
        send(&store, "examples.panic", vec![Value::Str("handler exploded".into())]).await;
    }
    send(&store, "examples.add", vec![Value::Int(1), Value::Int(1)]).await;
    let worker = start(&store, registry, config());
    wait_for(20, "all settled", || async { worker.stats.settled.load(std::sync::atomic::Ordering::Relaxed) >= 4 })
        .await;
    assert!(!worker.handle.is_finished());
    let report = worker.stop().await;
    assert_eq!((report.failed, report.succeeded), (3, 1), "{report:?}");
}

#[tokio::test]
async fn retries_republish_with_incremented_retries() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let retries_seen = Arc::new(Mutex::new(Vec::new()));
    let seen = retries_seen.clone();
    let mut registry = Registry::new();
    registry.register_raw("tasks.flaky", move |req: Request| {
        seen.lock().unwrap().push((req.retries(), req.message.headers.parent_id.clone()));
        let retries = req.retries();
        async move {
            if retries < 2 {
                TaskError::Retry { countdown: 0.05, max_retries: Some(5), reason: "not yet".into() }
                    .into_outcome(retries, chrono::Utc::now())
            } else {
                Outcome::Success(Value::Int(retries))
            }
        }
    });
    registry.register("tasks.always", |_: Vec<Value>| async { Err::<(), _>(TaskError::retry(0.01, "never works")) });
    let id = send(&store, "tasks.flaky", vec![]).await;
    send(&store, "tasks.always", vec![]).await;
    let worker = start(&store, registry, config());
    wait_for(30, "both done", || async { store.message_count().await.unwrap() == 0 }).await;
    let report = worker.stop().await;
    let seen = retries_seen.lock().unwrap().clone();
    assert_eq!(seen, vec![(0, None), (1, Some(id.clone())), (2, Some(id))]);
    // tasks.always: 3 retries (Celery's default max) then MaxRetriesExceededError.
    assert_eq!(report.retried, 2 + 3, "{report:?}");
    assert_eq!((report.succeeded, report.failed), (1, 1), "{report:?}");
}

#[tokio::test]
async fn two_workers_never_run_a_message_twice_or_concurrently() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let n = 1500;
    let msgs: Vec<NewMessage> = (0..n)
        .map(|i| {
            Client::new(store.clone())
                .build("tasks.track", &[Value::Int(i)], &Map::new(), &TaskOptions::default())
                .unwrap()
        })
        .collect();
    store.message_insert_many(&msgs).await.unwrap();
    let runs: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let running: Arc<Mutex<std::collections::HashSet<String>>> = Arc::default();
    let overlaps = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let registry = || {
        let (runs, running, overlaps) = (runs.clone(), running.clone(), overlaps.clone());
        let mut r = Registry::new();
        r.register_raw("tasks.track", move |req: Request| {
            let (runs, running, overlaps) = (runs.clone(), running.clone(), overlaps.clone());
            async move {
                let id = req.id().to_owned();
                if !running.lock().unwrap().insert(id.clone()) {
                    overlaps.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                tokio::task::yield_now().await;
                *runs.lock().unwrap().entry(id.clone()).or_default() += 1;
                running.lock().unwrap().remove(&id);
                Outcome::Success(Value::Null)
            }
        });
        r
    };
    let a = start(&store, registry(), WorkerConfig { concurrency: 8, ..config() });
    let b = start(&db.store(), registry(), WorkerConfig { concurrency: 8, ..config() });
    wait_for(60, "all tracked tasks done", || async { store.message_count().await.unwrap() == 0 }).await;
    let (ra, rb) = (a.stop().await, b.stop().await);
    assert!(ra.succeeded > 0 && rb.succeeded > 0, "both workers took part: {ra:?} {rb:?}");
    assert_eq!(ra.succeeded + rb.succeeded, n as u64);
    let runs = runs.lock().unwrap();
    assert_eq!(runs.len(), n as usize);
    assert!(runs.values().all(|&c| c == 1), "a message ran more than once");
    assert_eq!(overlaps.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn graceful_shutdown_finishes_running_and_releases_prefetched() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel();
    let gate = Arc::new(tokio::sync::Notify::new());
    let gate_in = gate.clone();
    let mut registry = Registry::new();
    registry.register_raw("tasks.gated", move |req: Request| {
        let _ = started_tx.send(req.id().to_owned());
        let gate = gate_in.clone();
        async move {
            gate.notified().await;
            Outcome::Success(Value::Null)
        }
    });
    for _ in 0..6 {
        send(&store, "tasks.gated", vec![]).await;
    }
    // One running plus concurrency × prefetch multiplier = 4 reserved, as in Celery; one left.
    let worker = start(&store, registry, WorkerConfig { concurrency: 1, prefetch_multiplier: 4, ..config() });
    let first = tokio::time::timeout(Duration::from_secs(20), started_rx.recv()).await.unwrap().unwrap();
    wait_for(20, "prefetch", || async { worker.stats.received.load(std::sync::atomic::Ordering::Relaxed) == 5 }).await;
    worker.shutdown.cancel();
    // The running task is allowed to finish; nothing else starts.
    gate.notify_one();
    let report = tokio::time::timeout(Duration::from_secs(30), worker.handle).await.unwrap().unwrap().unwrap();
    assert_eq!(report.succeeded, 1, "{report:?}");
    assert_eq!(report.released, 4, "{report:?}");
    assert!(started_rx.try_recv().is_err(), "no task started after shutdown");
    let stats = store.queue_stats().await.unwrap();
    assert_eq!((stats[0].ready, stats[0].leased), (5, 0), "released messages are ready at once");
    let client = db.client().await;
    let remaining: Vec<String> =
        client.query("select task_id from celeriac.message", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert!(!remaining.contains(&first));
    let workers: i64 = client.query_one("select count(*) from celeriac.worker", &[]).await.unwrap().get(0);
    assert_eq!(workers, 0, "the worker deregistered");
}

#[tokio::test]
async fn survives_a_postgres_restart_without_losing_or_repeating_work() {
    let cluster = tokio::task::spawn_blocking(PgCluster::start_private).await.unwrap().unwrap();
    let db = TestDatabase::on_server(&cluster.url("postgres")).await;
    let store =
        Store::new(&StoreConfig { connect_timeout: Duration::from_secs(2), ..StoreConfig::new(&db.url) }).unwrap();
    let runs: Arc<Mutex<HashMap<i64, u32>>> = Arc::default();
    let seen = runs.clone();
    let mut registry = Registry::new();
    registry.register("tasks.count", move |(i,): (i64,)| {
        let seen = seen.clone();
        async move {
            *seen.lock().unwrap().entry(i).or_default() += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
            Ok::<_, TaskError>(i)
        }
    });
    let batch = |range: std::ops::Range<i64>| -> Vec<NewMessage> {
        range
            .map(|i| {
                Client::new(store.clone())
                    .build("tasks.count", &[Value::Int(i)], &Map::new(), &TaskOptions::default())
                    .unwrap()
            })
            .collect()
    };
    store.message_insert_many(&batch(0..300)).await.unwrap();
    let worker = start(&store, registry, WorkerConfig { concurrency: 4, lease: Duration::from_secs(60), ..config() });
    wait_for(30, "some progress", || async { runs.lock().unwrap().len() >= 50 }).await;

    cluster.stop().unwrap();
    // While the server is down the worker keeps running and retrying.
    assert!(!worker.handle.is_finished());
    cluster.start_again().unwrap();

    wait_for(60, "the enqueue after the restart", || async {
        store.message_insert_many(&batch(300..400)).await.is_ok()
    })
    .await;
    wait_for(60, "all 400 run", || async { runs.lock().unwrap().len() == 400 }).await;
    wait_for(60, "queue empty", || async { store.message_count().await.is_ok_and(|n| n == 0) }).await;
    let report = worker.stop().await;
    let runs = runs.lock().unwrap();
    let repeated: Vec<_> = runs.iter().filter(|(_, &c)| c != 1).collect();
    assert!(repeated.is_empty(), "tasks ran more than once: {repeated:?}");
    assert_eq!(report.succeeded, 400);
    drop(db);
    drop(cluster);
}

/// A database outage longer than the lease stops every worker's heartbeats alike: when the
/// server is back, no worker may treat the others (or itself) as dead and run their tasks again.
#[tokio::test]
async fn an_outage_longer_than_the_lease_runs_nothing_twice() {
    let cluster = tokio::task::spawn_blocking(PgCluster::start_private).await.unwrap().unwrap();
    let db = TestDatabase::on_server(&cluster.url("postgres")).await;
    let store =
        Store::new(&StoreConfig { connect_timeout: Duration::from_secs(1), ..StoreConfig::new(&db.url) }).unwrap();
    let runs: Arc<Mutex<HashMap<i64, u32>>> = Arc::default();
    let registry = || {
        let seen = runs.clone();
        let mut registry = Registry::new();
        registry.register("tasks.slow", move |(i,): (i64,)| {
            let seen = seen.clone();
            async move {
                *seen.lock().unwrap().entry(i).or_default() += 1;
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok::<_, TaskError>(i)
            }
        });
        registry
    };
    let messages: Vec<NewMessage> = (0..8)
        .map(|i| {
            Client::new(store.clone())
                .build("tasks.slow", &[Value::Int(i)], &Map::new(), &TaskOptions::default())
                .unwrap()
        })
        .collect();
    store.message_insert_many(&messages).await.unwrap();
    let lease = Duration::from_secs(2);
    let short = WorkerConfig {
        concurrency: 2,
        prefetch_multiplier: 1,
        lease,
        heartbeat_interval: Duration::from_millis(400),
        rescue_interval: Duration::from_millis(300),
        ..config()
    };
    let a = start(&store, registry(), short.clone());
    let b = start(&store, registry(), short);
    wait_for(30, "four tasks running", || async { runs.lock().unwrap().len() >= 4 }).await;

    cluster.stop().unwrap();
    // The outage itself (the fault being injected): longer than the lease.
    tokio::time::sleep(lease * 2).await;
    cluster.start_again().unwrap();

    wait_for(90, "all 8 run", || async { runs.lock().unwrap().len() == 8 }).await;
    wait_for(90, "queue empty", || async { store.message_count().await.is_ok_and(|n| n == 0) }).await;
    assert!(!a.handle.is_finished() && !b.handle.is_finished(), "no worker exited");
    let (ra, rb) = (a.stop().await, b.stop().await);
    let runs = runs.lock().unwrap();
    let repeated: Vec<_> = runs.iter().filter(|(_, &c)| c != 1).collect();
    assert!(repeated.is_empty(), "tasks ran more than once after the outage: {repeated:?}");
    assert_eq!(ra.succeeded + rb.succeeded, 8);
    drop(db);
    drop(cluster);
}

/// A prefetched message whose lease ran out while it waited (here: another worker took it over)
/// is not started: its lease is no longer this worker's to use.
#[tokio::test]
async fn prefetched_messages_whose_lease_ran_out_are_not_started() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let client = db.client().await;
    let runs: Arc<Mutex<Vec<i64>>> = Arc::default();
    let gate = Arc::new(tokio::sync::Notify::new());
    let mut registry = Registry::new();
    {
        let (runs, gate) = (runs.clone(), gate.clone());
        registry.register("tasks.step", move |(i,): (i64,)| {
            let (runs, gate) = (runs.clone(), gate.clone());
            async move {
                runs.lock().unwrap().push(i);
                if i == 0 {
                    gate.notified().await;
                }
                Ok::<_, TaskError>(i)
            }
        });
    }
    let messages: Vec<NewMessage> = (0..3)
        .map(|i| {
            Client::new(store.clone())
                .build("tasks.step", &[Value::Int(i)], &Map::new(), &TaskOptions::default())
                .unwrap()
        })
        .collect();
    store.message_insert_many(&messages).await.unwrap();
    let lease = Duration::from_secs(2);
    let worker = start(
        &store,
        registry,
        WorkerConfig {
            concurrency: 1,
            prefetch_multiplier: 2,
            lease,
            heartbeat_interval: Duration::from_millis(300),
            ..config()
        },
    );
    wait_for(30, "the first task to run", || async { runs.lock().unwrap().len() == 1 }).await;
    wait_for(30, "the other two to be prefetched", || async {
        let n: i64 = client
            .query_one("select count(*) from celeriac.message where leased_by is not null", &[])
            .await
            .unwrap()
            .get(0);
        n == 3
    })
    .await;
    // Another worker takes the two waiting messages over (as a rescuer would after this worker
    // was cut off from the database), so this worker's heartbeats stop renewing them.
    let taken: i64 = client
        .query_one(
            "with t as (
                 update celeriac.message set leased_by = gen_random_uuid(), attempt = attempt + 1,
                        lease_expires = now() + interval '1 hour'
                 where id in (select id from celeriac.message order by id offset 1) returning 1
             ) select count(*) from t",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(taken, 2);
    let since: chrono::DateTime<chrono::Utc> = client.query_one("select now()", &[]).await.unwrap().get(0);
    // By the time a heartbeat is more than a lease later, their leases have surely run out here.
    wait_for(30, "a heartbeat a lease later", || async {
        let beat: chrono::DateTime<chrono::Utc> =
            client.query_one("select max(heartbeat_at) from celeriac.worker", &[]).await.unwrap().get(0);
        beat > since + chrono::Duration::from_std(lease).unwrap()
    })
    .await;
    gate.notify_one();
    wait_for(30, "the first task to be settled", || async { store.message_count().await.is_ok_and(|n| n == 2) }).await;
    let report = worker.stop().await;
    assert_eq!(*runs.lock().unwrap(), vec![0], "the taken-over messages did not run here");
    assert_eq!(report.succeeded, 1);
    assert_eq!(report.released, 2);
}

#[tokio::test]
async fn msgpack_bodies_run_when_accepted() {
    let db = TestDatabase::new().await;
    let store = db.store();
    // add(2, 2) published by real Celery 5.7 with serializer='msgpack'.
    let envelope = include_str!("../../protocol/tests/fixtures/celery-5.7/serializer_msgpack.envelope.json");
    store.message_insert(&raw("celery", envelope)).await.unwrap();
    let sums = Arc::new(Mutex::new(Vec::new()));
    let seen = sums.clone();
    let mut registry = Registry::new();
    registry.register("tasks.add", move |(a, b): (i64, i64)| {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().push(a + b);
            Ok::<_, TaskError>(a + b)
        }
    });
    let accept = celeriac_protocol::Accept::new(["json", "msgpack"]);
    let worker = start(&store, registry, WorkerConfig { accept, ..config() });
    wait_for(20, "the msgpack task", || async { worker.stats.settled.load(std::sync::atomic::Ordering::Relaxed) >= 1 })
        .await;
    let report = worker.stop().await;
    assert_eq!(report.succeeded, 1, "{report:?}");
    assert_eq!(*sums.lock().unwrap(), vec![4]);
}

/// Tasks that finish before a claim comes back grow the prefetch window beyond Celery's count;
/// when tasks turn slow, it shrinks back and the reserved messages beyond it go back to the
/// queue unstarted; `adaptive_prefetch: false` keeps Celery's count.
#[tokio::test]
async fn the_prefetch_window_grows_for_fast_tasks_and_gives_back_when_they_turn_slow() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let runs: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let registry = || {
        let mut registry = Registry::new();
        registry.register_raw("tasks.fast", |_req: Request| async { Outcome::Success(Value::Null) });
        let (gate, runs) = (gate.clone(), runs.clone());
        registry.register_raw("tasks.gated", move |req: Request| {
            *runs.lock().unwrap().entry(req.id().to_owned()).or_default() += 1;
            let gate = gate.clone();
            async move {
                let _ = gate.acquire().await.unwrap();
                Outcome::Success(Value::Null)
            }
        });
        registry
    };
    // Celery's count at -c 1 with prefetch multiplier 1: one running, one reserved.
    let celery = WorkerConfig { concurrency: 1, prefetch_multiplier: 1, ..config() };

    for _ in 0..400 {
        send(&store, "tasks.fast", vec![]).await;
    }
    let fixed = start(&store, registry(), WorkerConfig { adaptive_prefetch: false, ..celery.clone() });
    wait_for(60, "the fixed window's drain", || async { fixed.stats.succeeded.load(Ordering::Relaxed) == 400 }).await;
    let (received, claims) = (fixed.stats.received.load(Ordering::Relaxed), fixed.stats.claims.load(Ordering::Relaxed));
    fixed.stop().await;
    assert!(received <= 2 * claims, "at most 2 per claim with a fixed window: {received} in {claims} claims");

    for _ in 0..2000 {
        send(&store, "tasks.fast", vec![]).await;
    }
    let worker = start(&store, registry(), celery);
    wait_for(60, "the drain", || async { worker.stats.succeeded.load(Ordering::Relaxed) == 2000 }).await;
    let (received, claims) =
        (worker.stats.received.load(Ordering::Relaxed), worker.stats.claims.load(Ordering::Relaxed));
    assert!(received > 4 * claims, "claims grew beyond Celery's 2 messages: {received} in {claims} claims");

    // Now slow tasks: the grown window takes many, then keeps one running and one reserved.
    for _ in 0..40 {
        send(&store, "tasks.gated", vec![]).await;
    }
    wait_for(30, "the gated tasks to be given back down to Celery's count", || async {
        let stats = store.queue_stats().await.unwrap();
        runs.lock().unwrap().len() == 1 && stats[0].leased == 2 && stats[0].ready == 38
    })
    .await;
    assert!(worker.stats.released.load(Ordering::Relaxed) > 0, "reserved messages were given back");
    gate.add_permits(1000);
    wait_for(60, "every gated task", || async { runs.lock().unwrap().len() == 40 }).await;
    worker.stop().await;
    let runs = runs.lock().unwrap();
    assert!(runs.values().all(|&n| n == 1), "each gated task ran once: {runs:?}");
}
