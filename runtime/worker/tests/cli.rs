//! End-to-end tests of the real `celeriac` binary: send, inspect, migrate, worker crash
//! recovery (SIGKILL), poison messages and graceful shutdown (SIGTERM).

use std::{
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
};

use celeriac_store::testing::TestDatabase;
use common::wait_for;

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_celeriac");

fn celeriac(db: &TestDatabase, args: &[&str]) -> Output {
    Command::new(BIN).args(args).env("CELERIAC_DATABASE_URL", &db.url).env_remove("DATABASE_URL").output().unwrap()
}

fn ok_stdout(out: &Output) -> String {
    assert!(out.status.success(), "celeriac failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

struct WorkerProcess {
    child: Child,
    log: PathBuf,
}

impl WorkerProcess {
    /// A worker with the example handlers, logging at INFO.
    fn start(db: &TestDatabase, extra: &[&str]) -> WorkerProcess {
        WorkerProcess::start_at_default_level(db, &[&["-l", "INFO"], extra].concat())
    }

    /// The same, at the default log level unless `extra` sets one.
    fn start_at_default_level(db: &TestDatabase, extra: &[&str]) -> WorkerProcess {
        let log = std::env::temp_dir().join(format!("celeriac-worker-{}.log", uuid::Uuid::new_v4().simple()));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(BIN)
            .args(["worker", "--example-handlers", "--database-url", &db.url, "--poll-interval", "0.2"])
            .args(extra)
            .env_remove("CELERY_WORKER_LOGLEVEL")
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        WorkerProcess { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill").args([sig, &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        } else {
            eprintln!("worker log kept at {}", self.log.display());
        }
    }
}

async fn scalar(db: &TestDatabase, sql: &str) -> i64 {
    db.client().await.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn send_inspect_and_migrate() {
    let db = TestDatabase::new().await;
    assert!(ok_stdout(&celeriac(&db, &["migrate"])).contains("up to date"));
    let id = ok_stdout(&celeriac(&db, &["send", "examples.add", "--args", "[2, 2]", "--priority", "5"]));
    assert_eq!(id.trim().len(), 36, "prints the task id: {id:?}");
    ok_stdout(&celeriac(&db, &["send", "examples.add", "--args", "[1, 1]", "-Q", "hipri", "--countdown", "3600"]));
    let table = ok_stdout(&celeriac(&db, &["inspect", "queues"]));
    let line =
        |q: &str| table.lines().find(|l| l.starts_with(q)).map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>());
    // ready, delayed, leased, rate_limited, dead_lettered
    assert_eq!(line("celery").unwrap(), ["1", "0", "0", "0", "0"], "{table}");
    assert_eq!(line("hipri").unwrap(), ["0", "1", "0", "0", "0"], "{table}");

    let stored: Vec<u8> = db
        .client()
        .await
        .query_one("select payload from celeriac.message where task_id = $1", &[&id.trim()])
        .await
        .unwrap()
        .get(0);
    let msg = celeriac_protocol::TaskMessage::decode(&stored, &celeriac_protocol::Accept::default()).unwrap();
    assert_eq!(msg.headers.task, "examples.add");
    assert_eq!(msg.delivery_info.priority, Some(5));
    assert!(msg.headers.origin.unwrap().starts_with("gen"));

    // Bad input is refused with a clear message and nothing is written.
    let out = celeriac(&db, &["send", "examples.add", "--args", "{\"a\": 1}"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--args must be a JSON array"));
    let out = celeriac(&db, &["send", "examples.add", "--priority", "300"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("priority"));
    assert_eq!(scalar(&db, "select count(*) from celeriac.message").await, 2);
    let out = Command::new(BIN)
        .args(["inspect", "queues"])
        .env_remove("CELERIAC_DATABASE_URL")
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("no database URL"));
}

#[tokio::test]
async fn dry_run_prints_the_envelope() {
    let out = Command::new(BIN)
        .args([
            "send",
            "proj.add",
            "--args",
            "[2, 2]",
            "--task-id",
            "aaaaaaaa-0000-0000-0000-000000000001",
            "--dry-run",
        ])
        .output()
        .unwrap();
    let text = ok_stdout(&out);
    let msg =
        celeriac_protocol::TaskMessage::decode(text.trim().as_bytes(), &celeriac_protocol::Accept::default()).unwrap();
    assert_eq!(msg.headers.id, "aaaaaaaa-0000-0000-0000-000000000001");
    assert!(text.contains(r#""body": "W1syLCAyXSwge30sIHsiY2FsbGJhY2tzIjogbnVsbCwgImVycmJhY2tzIjogbnVsbCwgImNoYWluIjogbnVsbCwgImNob3JkIjogbnVsbH1d""#));
}

#[tokio::test]
async fn killed_worker_tasks_run_again_elsewhere_marked_redelivered() {
    let db = TestDatabase::new().await;
    for _ in 0..4 {
        ok_stdout(&celeriac(&db, &["send", "examples.sleep", "--args", "[1.5]"]));
    }
    let lease = ["--lease-seconds", "2", "--heartbeat-interval", "0.5", "-c", "4"];
    let mut first = WorkerProcess::start(&db, &lease);
    wait_for(30, "all four leased by the first worker", || async {
        scalar(&db, "select count(*) from celeriac.message where leased_by is not null").await == 4
    })
    .await;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    // The killed worker's row stays; its leases run out without heartbeats.
    let second = WorkerProcess::start(&db, &lease);
    wait_for(60, "the queue to drain", || async { scalar(&db, "select count(*) from celeriac.message").await == 0 })
        .await;
    wait_for(30, "four successes in the log", || async { second.log().matches("succeeded in").count() == 4 }).await;
    let log = second.log();
    assert_eq!(log.matches("redelivered=true").count(), 4, "{log}");
    assert_eq!(scalar(&db, "select count(*) from celeriac.dead_letter").await, 0);
}

#[tokio::test]
async fn a_message_that_keeps_killing_workers_is_dead_lettered() {
    let db = TestDatabase::new().await;
    let id = ok_stdout(&celeriac(&db, &["send", "examples.sleep", "--args", "[30]"]));
    let args = ["--lease-seconds", "1", "--heartbeat-interval", "0.25", "--max-redeliveries", "1"];
    for attempt in 1..=2 {
        let mut w = WorkerProcess::start(&db, &args);
        wait_for(30, "the message leased", || async {
            scalar(
                &db,
                &format!("select count(*) from celeriac.message where leased_by is not null and attempt = {attempt}"),
            )
            .await
                == 1
        })
        .await;
        w.child.kill().unwrap();
        w.child.wait().unwrap();
    }
    // A third worker's rescuer buries it instead of running it a third time.
    let _third = WorkerProcess::start(&db, &args);
    wait_for(30, "the dead letter", || async { scalar(&db, "select count(*) from celeriac.dead_letter").await == 1 })
        .await;
    let row = db
        .client()
        .await
        .query_one("select reason_code, task_id, redeliveries from celeriac.dead_letter", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "redeliveries_exhausted");
    assert_eq!(row.get::<_, String>(1), id.trim());
    assert_eq!(row.get::<_, i32>(2), 2);
    assert_eq!(scalar(&db, "select count(*) from celeriac.message").await, 0);
    let out = ok_stdout(&celeriac(&db, &["inspect", "dead-letters"]));
    assert!(out.contains("redeliveries_exhausted"), "{out}");
}

#[tokio::test]
async fn sigterm_is_a_warm_shutdown() {
    let db = TestDatabase::new().await;
    for _ in 0..6 {
        ok_stdout(&celeriac(&db, &["send", "examples.sleep", "--args", "[1]"]));
    }
    let mut w = WorkerProcess::start(&db, &["-c", "2", "--prefetch-multiplier", "2"]);
    wait_for(30, "two running", || async { w.log().matches("received").count() >= 2 }).await;
    w.signal("-TERM");
    let status = tokio::task::spawn_blocking(move || {
        let status = w.child.wait().unwrap();
        (status, w)
    })
    .await
    .unwrap();
    let (status, w) = status;
    assert!(status.success(), "exit status {status}\n{}", w.log());
    let log = w.log();
    assert!(log.contains("Warm shutdown"), "{log}");
    let done = log.matches("succeeded in").count();
    assert!(done >= 2, "running tasks finished: {log}");
    // Nothing is leased after a warm shutdown; everything not run is ready again.
    assert_eq!(scalar(&db, "select count(*) from celeriac.message where leased_by is not null").await, 0);
    assert_eq!(scalar(&db, "select count(*) from celeriac.message").await, 6 - i64::try_from(done).unwrap());
    assert_eq!(scalar(&db, "select count(*) from celeriac.worker").await, 0);
}

#[tokio::test]
async fn the_default_log_level_is_warning_as_celery_workers() {
    let db = TestDatabase::new().await;
    ok_stdout(&celeriac(&db, &["send", "examples.add", "--args", "[20, 22]"]));
    ok_stdout(&celeriac(&db, &["send", "examples.fail", "--args", "[\"on purpose\"]"]));
    let worker = WorkerProcess::start_at_default_level(&db, &[]);
    // A failure is logged at ERROR, as Celery's.
    wait_for(30, "both tasks to run and the failure to be logged", || async {
        scalar(&db, "select count(*) from celeriac.message").await == 0 && worker.log().contains("on purpose")
    })
    .await;
    // INFO lines (the start, a success) are not shown; the banner is, without the task list.
    let text = worker.log();
    assert!(!text.contains("ready.") && !text.contains("succeeded in"), "{text}");
    assert!(text.contains("examples.fail"), "{text}");
    assert!(text.contains("[config]") && !text.contains("[tasks]"), "{text}");
}

#[tokio::test]
async fn workers_print_celerys_start_up_banner_unless_quiet() {
    let db = TestDatabase::new().await;
    let worker = WorkerProcess::start(&db, &["-Q", "celery,hipri", "-c", "3", "-E"]);
    wait_for(30, "the worker to be ready", || async { worker.log().contains("ready.") }).await;
    let text = worker.log();
    let banner = text.split("ready.").next().unwrap();
    for line in [
        &format!(".> transport:   {}", celeriac_store::redact_url(&db.url)),
        ".> results:     disabled://",
        ".> concurrency: 3 (Rust handlers)",
        ".> task events: ON",
        "[queues]",
        ".> celery           exchange=celery(direct) key=celery",
        ".> hipri            exchange=hipri(direct) key=hipri",
        "[tasks]\n  . examples.add\n",
    ] {
        assert!(banner.contains(line), "{line:?} not in the banner:\n{text}");
    }
    let password = db.url.split_once("://").and_then(|(_, rest)| rest.split_once('@')).map(|(auth, _)| auth);
    if let Some((_, password)) = password.and_then(|auth| auth.split_once(':')) {
        assert!(!text.contains(password), "the password is shown:\n{text}");
    }
    drop(worker);

    let quiet = WorkerProcess::start(&db, &["-q"]);
    wait_for(30, "the quiet worker to be ready", || async { quiet.log().contains("ready.") }).await;
    assert!(!quiet.log().contains("[config]"), "{}", quiet.log());
}

#[tokio::test]
async fn unregistered_tasks_can_be_redriven_once_a_handler_exists() {
    let db = TestDatabase::new().await;
    ok_stdout(&celeriac(&db, &["send", "examples.add", "--args", "[20, 22]"]));
    ok_stdout(&celeriac(&db, &["send", "examples.nope"]));
    // A worker without the example handlers dead-letters both as NotRegistered.
    let mut bare = Command::new(BIN)
        .args(["worker", "--database-url", &db.url, "--poll-interval", "0.2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(30, "two dead letters", || async { scalar(&db, "select count(*) from celeriac.dead_letter").await == 2 })
        .await;
    bare.kill().unwrap();
    bare.wait().unwrap();

    let out = celeriac(&db, &["dead-letters", "redrive"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("say which dead letters"), "a filter is required");
    assert_eq!(
        ok_stdout(&celeriac(&db, &["dead-letters", "redrive", "--task", "examples.add"])).trim(),
        "redrove 1 dead letter(s)"
    );
    let worker = WorkerProcess::start(&db, &[]);
    wait_for(30, "the redriven task to run", || async { worker.log().contains("succeeded in") }).await;
    assert!(worker.log().contains(": 42"), "{}", worker.log());
    assert_eq!(
        ok_stdout(&celeriac(&db, &["dead-letters", "purge", "--reason-code", "not_registered"])).trim(),
        "purged 1 dead letter(s)"
    );
    assert_eq!(scalar(&db, "select count(*) from celeriac.dead_letter").await, 0);
}
