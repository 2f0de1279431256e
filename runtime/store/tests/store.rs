//! Store behaviour against a real PostgreSQL (one database per test).

use std::{collections::HashSet, sync::Arc, time::Duration};

use celeriac_protocol::{encode_task, Map, TaskOptions, Value};
use celeriac_store::{testing::TestDatabase, ClaimParams, DeadLetterParams, Store, Wakeup, WorkerInfo};
use chrono::Utc;
use uuid::Uuid;

fn message(queue: &str, priority: i64, countdown: Option<f64>) -> celeriac_store::NewMessage {
    let opts = TaskOptions { queue: queue.into(), priority: Some(priority), countdown, ..TaskOptions::default() };
    encode_task("tasks.add", &[Value::Int(1)], &Map::new(), &opts, Utc::now()).unwrap().into()
}

fn claim(worker: Uuid, queues: &[String], limit: i64) -> ClaimParams<'_> {
    ClaimParams { worker_id: worker, queues, limit, lease_seconds: 30.0, after: None, suspects: limit, park: &[] }
}

fn info(id: Uuid) -> WorkerInfo {
    WorkerInfo {
        id,
        hostname: "test@host".into(),
        pid: 1,
        queues: vec!["celery".into()],
        concurrency: 1,
        lease_seconds: 30.0,
        rate_limited: Vec::new(),
        kind: celeriac_store::ConsumerKind::Worker,
    }
}

async fn register(store: &Store) -> Uuid {
    let id = Uuid::new_v4();
    store.worker_register(&info(id)).await.unwrap();
    id
}

#[tokio::test]
async fn migrate_is_idempotent_and_concurrent_safe() {
    let db = TestDatabase::new().await;
    let store = db.store();
    // The template is already migrated: nothing left to apply, from several callers at once.
    let runs = migrate_concurrently(vec![store.clone(), store.clone(), store]).await;
    for report in runs {
        let report = report.unwrap();
        assert!(report.applied.is_empty());
        assert_eq!(report.current, celeriac_store::MIGRATIONS.last().unwrap().version);
    }

    // A fresh, empty database: concurrent migrations apply each version exactly once.
    let client = db.client().await;
    client.batch_execute("drop schema celeriac cascade").await.unwrap();
    let stores: Vec<Store> = (0..4).map(|_| db.store()).collect();
    let runs = migrate_concurrently(stores).await;
    let applied: usize = runs.into_iter().map(|r| r.unwrap().applied.len()).sum();
    assert_eq!(applied, celeriac_store::MIGRATIONS.len());
    let n: i64 = client.query_one("select count(*) from celeriac.schema_migration", &[]).await.unwrap().get(0);
    assert_eq!(n, i64::try_from(celeriac_store::MIGRATIONS.len()).unwrap());
}

async fn migrate_concurrently(stores: Vec<Store>) -> Vec<celeriac_store::Result<celeriac_store::MigrateReport>> {
    let handles: Vec<_> = stores.into_iter().map(|s| tokio::spawn(async move { s.migrate().await })).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn an_edited_migration_is_refused() {
    let db = TestDatabase::new().await;
    db.client()
        .await
        .batch_execute("update celeriac.schema_migration set checksum = 'edited' where version = 1")
        .await
        .unwrap();
    let err = db.store().migrate().await.unwrap_err();
    assert!(matches!(err, celeriac_store::Error::MigrationChanged { version: 1, .. }), "{err}");
    assert!(err.to_string().contains("was changed after it was applied"), "{err}");
}

#[tokio::test]
async fn missing_schema_is_a_clear_error() {
    let db = TestDatabase::new().await;
    db.client().await.batch_execute("drop schema celeriac cascade").await.unwrap();
    let err = db.store().message_insert(&message("celery", 0, None)).await.unwrap_err();
    assert!(err.to_string().contains("celeriac migrate"), "{err}");
    let err = db.store().check().await.unwrap_err();
    assert!(matches!(err, celeriac_store::Error::SchemaMissing(_)), "{err}");
}

#[tokio::test]
async fn claims_in_priority_then_eta_order_and_skips_delayed() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let worker = register(&store).await;
    let low = store.message_insert(&message("celery", 0, None)).await.unwrap();
    let high = store.message_insert(&message("celery", 9, None)).await.unwrap();
    let delayed = store.message_insert(&message("celery", 9, Some(3600.0))).await.unwrap();
    let other_queue = store.message_insert(&message("other", 5, None)).await.unwrap();
    let low2 = store.message_insert(&message("celery", 0, None)).await.unwrap();

    let queues = vec!["celery".to_owned()];
    let got = store.message_claim(&claim(worker, &queues, 10)).await.unwrap();
    let ids: Vec<i64> = got.iter().map(|m| m.lease.id).collect();
    assert_eq!(ids, vec![high, low, low2]);
    assert!(got.iter().all(|m| m.lease.attempt == 1 && !m.redelivered));
    assert!(!ids.contains(&delayed) && !ids.contains(&other_queue));

    // Nothing left that is ready; the delayed and other-queue rows are counted as such.
    assert!(store.message_claim(&claim(worker, &queues, 10)).await.unwrap().is_empty());
    let stats = store.queue_stats().await.unwrap();
    let celery = stats.iter().find(|s| s.queue == "celery").unwrap();
    assert_eq!((celery.ready, celery.delayed, celery.leased, celery.dead_lettered), (0, 1, 3, 0));
    let other = stats.iter().find(|s| s.queue == "other").unwrap();
    assert_eq!(other.ready, 1);

    // Several queues at once still take the highest priority first.
    let both = vec!["celery".to_owned(), "other".to_owned()];
    let got = store.message_claim(&claim(worker, &both, 1)).await.unwrap();
    assert_eq!(got.iter().map(|m| m.lease.id).collect::<Vec<_>>(), vec![other_queue]);
}

#[tokio::test]
async fn concurrent_claimers_never_share_a_message() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let batch: Vec<_> = (0..2000).map(|_| message("celery", 0, None)).collect();
    assert_eq!(store.message_insert_many(&batch).await.unwrap(), 2000);

    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let store = db.store();
        let seen = seen.clone();
        tasks.push(tokio::spawn(async move {
            let worker = register(&store).await;
            let queues = vec!["celery".to_owned()];
            loop {
                let got = store.message_claim(&claim(worker, &queues, 7)).await.unwrap();
                if got.is_empty() {
                    break;
                }
                let leases: Vec<_> = got.iter().map(|m| m.lease).collect();
                seen.lock().unwrap().extend(leases.iter().map(|l| l.id));
                assert_eq!(store.message_complete_many(worker, &leases).await.unwrap().len(), leases.len());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let seen = seen.lock().unwrap().clone();
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(seen.len(), 2000);
    assert_eq!(unique.len(), 2000);
    assert_eq!(store.message_count().await.unwrap(), 0);
}

#[tokio::test]
async fn completion_retry_and_dead_letter_are_fenced_by_lease() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let worker = register(&store).await;
    let zombie = Uuid::new_v4();
    let queues = vec!["celery".to_owned()];
    store
        .message_insert_many(&[message("celery", 0, None), message("celery", 0, None), message("celery", 0, None)])
        .await
        .unwrap();
    let got = store.message_claim(&claim(worker, &queues, 3)).await.unwrap();
    let (a, b, c) = (got[0].lease, got[1].lease, got[2].lease);

    // Another worker id, or a stale attempt, changes nothing.
    assert_eq!(store.message_complete_many(zombie, &[a]).await.unwrap().len(), 0);
    let stale = celeriac_store::Lease { id: a.id, attempt: a.attempt + 1 };
    assert_eq!(store.message_complete_many(worker, &[stale]).await.unwrap().len(), 0);
    assert_eq!(store.message_complete_many(worker, &[a]).await.unwrap().len(), 1);

    let eta = Utc::now() + chrono::Duration::seconds(60);
    assert!(!store.message_retry(zombie, b, b"{}", eta).await.unwrap());
    assert!(store.message_retry(worker, b, b"{\"new\": 1}", eta).await.unwrap());
    let stats = store.queue_stats().await.unwrap();
    assert_eq!(stats[0].delayed, 1);

    let dl = DeadLetterParams {
        lease: c,
        reason_code: celeriac_store::DeadLetterReason::NotRegistered,
        reason: "NotRegistered('tasks.add')".into(),
    };
    assert_eq!(store.message_dead_letter_many(zombie, std::slice::from_ref(&dl)).await.unwrap().len(), 0);
    assert_eq!(store.message_dead_letter_many(worker, &[dl]).await.unwrap().len(), 1);
    let dead = store.dead_letter_list(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason_code, "not_registered");
    assert_eq!(dead[0].task_name.as_deref(), Some("tasks.add"));
    assert!(dead[0].payload.starts_with(b"{\"body\": "));
    assert_eq!(store.message_count().await.unwrap(), 1);
}

#[tokio::test]
async fn expired_leases_are_rescued_then_dead_lettered() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let worker = register(&store).await;
    let queues = vec!["celery".to_owned()];
    store.message_insert(&message("celery", 0, None)).await.unwrap();
    let expire_all =
        "update celeriac.message set lease_expires = now() - interval '1 second' where leased_by is not null";
    let client = db.client().await;

    for round in 1..=2 {
        let got = store.message_claim(&claim(worker, &queues, 1)).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].redelivered, round > 1);
        // A live lease is never rescued.
        assert_eq!(store.message_rescue(None, 2, true, f64::MAX).await.unwrap().rescued, 0);
        client.batch_execute(expire_all).await.unwrap();
        let report = store.message_rescue(None, 2, true, f64::MAX).await.unwrap();
        assert_eq!((report.rescued, report.dead_lettered), (1, 0));
        // The dead holder cannot complete after the rescue.
        assert_eq!(store.message_complete_many(worker, &[got[0].lease]).await.unwrap().len(), 0);
    }
    let got = store.message_claim(&claim(worker, &queues, 1)).await.unwrap();
    assert_eq!(got[0].redeliveries, 2);
    client.batch_execute(expire_all).await.unwrap();
    let report = store.message_rescue(None, 2, true, f64::MAX).await.unwrap();
    assert_eq!((report.rescued, report.dead_lettered), (0, 1));
    let dead = store.dead_letter_list(10).await.unwrap();
    assert_eq!(dead[0].reason_code, "redeliveries_exhausted");
    assert!(dead[0].reason.contains("3 times"), "{}", dead[0].reason);
    assert_eq!(store.message_count().await.unwrap(), 0);
}

#[tokio::test]
async fn heartbeat_renews_leases_and_release_frees_them() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let worker = register(&store).await;
    let queues = vec!["celery".to_owned()];
    store.message_insert_many(&[message("celery", 0, None), message("celery", 0, None)]).await.unwrap();
    let got = store.message_claim(&ClaimParams { lease_seconds: 0.5, ..claim(worker, &queues, 2) }).await.unwrap();
    let held: Vec<_> = got.iter().map(|m| m.lease).collect();
    assert_eq!(
        store.worker_heartbeat(&WorkerInfo { lease_seconds: 600.0, ..info(worker) }, &held).await.unwrap().len(),
        2
    );
    let client = db.client().await;
    let far: bool = client
        .query_one("select bool_and(lease_expires > now() + interval '500 seconds') from celeriac.message", &[])
        .await
        .unwrap()
        .get(0);
    assert!(far);
    assert_eq!(store.message_release_many(worker, &[got[0].lease], false).await.unwrap().len(), 1);
    let again = store.message_claim(&claim(worker, &queues, 2)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].lease.id, got[0].lease.id);
    assert!(!again[0].redelivered, "a released message is not a redelivery");
    store.worker_deregister(worker).await.unwrap();
    assert_eq!(store.worker_prune(0.0).await.unwrap(), 0);
}

#[tokio::test]
async fn one_notification_per_insert_statement() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let shutdown = tokio_util_like_token();
    let listener = store.listener();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        listener.run(move |w| drop(tx.send(w)), async move { stop.notified().await }).await;
    });
    // First the connect wake-up.
    assert_eq!(recv(&mut rx).await, Wakeup::Any);
    let batch: Vec<_> = (0..500).map(|i| message(if i % 2 == 0 { "a" } else { "b" }, 0, None)).collect();
    store.message_insert_many(&batch).await.unwrap();
    let Wakeup::Queues(mut queues) = recv(&mut rx).await else { panic!("expected named queues") };
    queues.sort();
    assert_eq!(queues, vec!["a".to_owned(), "b".to_owned()]);
    // A delayed message wakes nobody; a ready one does.
    store.message_insert(&message("a", 0, Some(3600.0))).await.unwrap();
    store.message_insert(&message("c,d \u{fc}", 0, None)).await.unwrap();
    assert_eq!(recv(&mut rx).await, Wakeup::Queues(vec!["c,d \u{fc}".into()]));
    assert!(rx.try_recv().is_err(), "one statement, one notification");
    shutdown.notify_one();
    task.await.unwrap();
}

fn tokio_util_like_token() -> Arc<tokio::sync::Notify> {
    Arc::new(tokio::sync::Notify::new())
}

async fn recv(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Wakeup>) -> Wakeup {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("wake-up within 10 s")
        .expect("listener alive")
}

#[tokio::test]
async fn cursor_claims_continue_after_the_cursor_at_its_priority() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let worker = register(&store).await;
    let queues = vec!["celery".to_owned()];
    let batch: Vec<_> = (0..6).map(|_| message("celery", 0, None)).collect();
    store.message_insert_many(&batch).await.unwrap();
    let first = store.message_claim(&claim(worker, &queues, 2)).await.unwrap();
    let last = first.last().unwrap();
    let cursor = [celeriac_store::ClaimCursor { priority: last.priority, eta: last.eta, id: last.lease.id }];
    // Rows before the cursor (a released one) and of another priority are invisible to it.
    store.message_release_many(worker, &[first[0].lease], false).await.unwrap();
    store.message_insert(&message("celery", 9, None)).await.unwrap();
    let after = store.message_claim(&ClaimParams { after: Some(&cursor), ..claim(worker, &queues, 10) }).await.unwrap();
    assert_eq!(after.len(), 4);
    assert!(after.iter().all(|m| m.lease.id > last.lease.id && m.priority == 0));
    // A full claim sees them.
    let full = store.message_claim(&claim(worker, &queues, 10)).await.unwrap();
    let ids: Vec<i64> = full.iter().map(|m| m.lease.id).collect();
    assert_eq!(full.len(), 2);
    assert_eq!(full[0].priority, 9);
    assert_eq!(ids[1], first[0].lease.id);
}

#[tokio::test]
async fn rescue_frees_dead_workers_and_full_scans_catch_untracked_leases() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let client = db.client().await;
    let alive = register(&store).await;
    let dead = register(&store).await;
    let queues = vec!["celery".to_owned()];
    store.message_insert_many(&[message("celery", 0, None), message("celery", 0, None)]).await.unwrap();
    let a = store.message_claim(&ClaimParams { lease_seconds: 0.01, ..claim(alive, &queues, 1) }).await.unwrap();
    let d = store.message_claim(&ClaimParams { lease_seconds: 0.01, ..claim(dead, &queues, 1) }).await.unwrap();
    client.batch_execute("update celeriac.message set lease_expires = now() - interval '1 second'").await.unwrap();
    client
        .execute("update celeriac.worker set heartbeat_at = now() - interval '1 hour' where id = $1", &[&dead])
        .await
        .unwrap();
    client
        .execute("update celeriac.worker set heartbeat_at = now() - interval '2 seconds' where id = $1", &[&alive])
        .await
        .unwrap();
    // A rescuer whose own heartbeats only just recovered judges nobody.
    assert_eq!(store.message_rescue(None, 3, false, 0.0).await.unwrap().rescued, 0);
    assert_eq!(store.message_rescue(None, 3, true, 0.0).await.unwrap().rescued, 0);
    // A normal pass frees only the dead worker's message, and forgets the dead worker.
    let report = store.message_rescue(None, 3, false, f64::MAX).await.unwrap();
    assert_eq!(report.rescued, 1);
    let freed: i64 =
        client.query_one("select id from celeriac.message where leased_by is null", &[]).await.unwrap().get(0);
    assert_eq!(freed, d[0].lease.id);
    let workers: i64 = client.query_one("select count(*) from celeriac.worker", &[]).await.unwrap().get(0);
    assert_eq!(workers, 1);
    // The live worker's expired lease (one it went on heartbeating without renewing) needs a
    // full scan.
    client.execute("update celeriac.worker set heartbeat_at = now() where id = $1", &[&alive]).await.unwrap();
    assert_eq!(store.message_rescue(None, 3, false, f64::MAX).await.unwrap().rescued, 0);
    assert_eq!(store.message_rescue(None, 3, true, f64::MAX).await.unwrap().rescued, 1);
    // Heartbeats renew only the leases they name, fenced by attempt.
    let again = store.message_claim(&claim(alive, &queues, 2)).await.unwrap();
    assert_eq!(again.len(), 2);
    let stale = celeriac_store::Lease { id: a[0].lease.id, attempt: a[0].lease.attempt };
    let renewed = store.worker_heartbeat(&info(alive), &[stale, again[0].lease, again[1].lease]).await.unwrap();
    assert_eq!(renewed.len(), 2, "the stale attempt is not renewed");
}

#[tokio::test]
async fn streamed_inserts_commit_together_or_not_at_all() {
    use celeriac_store::{Durability, InsertBatch};

    let db = TestDatabase::new().await;
    let store = db.store();

    // Committed: every batch lands, in one transaction (nothing visible before the commit).
    let (sender, batches) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn({
        let store = store.clone();
        async move { store.message_insert_stream(batches, Durability::Synchronous).await }
    });
    sender.send(InsertBatch::Rows((0..3).map(|_| message("celery", 0, None)).collect())).unwrap();
    sender.send(InsertBatch::Rows((0..2).map(|_| message("other", 0, None)).collect())).unwrap();
    // Once the stream's transaction has run an insert and waits for more, its rows are still
    // invisible to everyone else.
    let observer = db.client().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = observer
            .query_one(
                "select count(*) from pg_stat_activity where datname = current_database()
                 and state = 'idle in transaction' and query like '%insert into celeriac.message%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the stream never ran its inserts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(store.message_count().await.unwrap(), 0, "rows visible before the commit");
    sender.send(InsertBatch::Commit).unwrap();
    assert_eq!(task.await.unwrap().unwrap(), 5);
    assert_eq!(store.message_count().await.unwrap(), 5);

    // Abandoned (the sender goes away without a commit): nothing is written.
    let (sender, batches) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn({
        let store = store.clone();
        async move { store.message_insert_stream(batches, Durability::Relaxed).await }
    });
    sender.send(InsertBatch::Rows((0..4).map(|_| message("celery", 0, None)).collect())).unwrap();
    drop(sender);
    assert!(matches!(task.await.unwrap(), Err(celeriac_store::Error::Aborted)));
    assert_eq!(store.message_count().await.unwrap(), 5);

    // A relaxed single insert is an ordinary row.
    let id = store.message_insert_with(&message("celery", 3, None), Durability::Relaxed).await.unwrap();
    let got = store.message_claim(&claim(register(&store).await, &["celery".into()], 10)).await.unwrap();
    assert_eq!(got.first().map(|m| (m.lease.id, m.priority)), Some((id, 3)));
}

/// A message that kills every worker that runs it (here: whoever claims it "dies" before
/// settling anything) must not take the messages claimed beside it to `redeliveries_exhausted`.
#[tokio::test]
async fn innocent_neighbours_of_a_poison_message_are_not_dead_lettered_with_it() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let client = db.client().await;
    let queues = vec!["celery".to_owned()];
    let max_redeliveries = 3;
    let batch: Vec<_> = (0..5).map(|_| message("celery", 0, None)).collect();
    store.message_insert_many(&batch).await.unwrap();
    let row = client.query_one("select id, task_id from celeriac.message order by id limit 1", &[]).await.unwrap();
    let (poison, poison_task): (i64, String) = (row.get(0), row.get(1));
    let mut completed = 0;
    for _round in 0..20 {
        let worker = register(&store).await;
        // Suspects allowed as a worker holding none would ask.
        let got = store.message_claim(&ClaimParams { suspects: 1, ..claim(worker, &queues, 10) }).await.unwrap();
        if got.is_empty() {
            break;
        }
        let suspects = got.iter().filter(|m| m.redeliveries > 0).count();
        assert!(suspects <= 1, "a claim took {suspects} suspects");
        if got.iter().any(|m| m.lease.id == poison) {
            // The worker dies with everything it holds.
            client
                .execute(
                    "update celeriac.worker set heartbeat_at = now() - interval '1 hour' where id = $1",
                    &[&worker],
                )
                .await
                .unwrap();
            client
                .execute(
                    "update celeriac.message set lease_expires = now() - interval '1 second' where leased_by = $1",
                    &[&worker],
                )
                .await
                .unwrap();
            store.message_rescue(None, max_redeliveries, false, f64::MAX).await.unwrap();
        } else {
            let leases: Vec<_> = got.iter().map(|m| m.lease).collect();
            completed += store.message_complete_many(worker, &leases).await.unwrap().len();
        }
    }
    let dead = store.dead_letter_list(10).await.unwrap();
    let dead_tasks: Vec<Option<&str>> = dead.iter().map(|d| d.task_id.as_deref()).collect();
    assert_eq!(dead_tasks, vec![Some(poison_task.as_str())], "only the poison message is dead-lettered");
    assert_eq!(completed, 4, "its neighbours all ran");
    assert_eq!(store.message_count().await.unwrap(), 0);
}

/// Requeues count as redeliveries: a message requeued `max_redeliveries` times is
/// dead-lettered on the next requeue instead of looping forever.
#[tokio::test]
async fn requeues_are_counted_and_end_in_dead_letter() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let worker = register(&store).await;
    let queues = vec!["celery".to_owned()];
    store.message_insert(&message("celery", 0, None)).await.unwrap();
    for round in 0..3 {
        let got = store.message_claim(&claim(worker, &queues, 1)).await.unwrap();
        assert_eq!(got.len(), 1, "round {round}");
        assert_eq!(got[0].redeliveries, round);
        let report = store.message_requeue_many(worker, &[got[0].lease], 3).await.unwrap();
        assert_eq!((report.requeued.len(), report.dead_lettered.len()), (1, 0));
        // Fenced: the same lease cannot be requeued twice.
        let again = store.message_requeue_many(worker, &[got[0].lease], 3).await.unwrap();
        assert_eq!(again, celeriac_store::RequeueReport::default());
    }
    let got = store.message_claim(&claim(worker, &queues, 1)).await.unwrap();
    assert!(got[0].redelivered);
    let report = store.message_requeue_many(worker, &[got[0].lease], 3).await.unwrap();
    assert_eq!(report.dead_lettered, vec![got[0].lease.id]);
    let dead = store.dead_letter_list(10).await.unwrap();
    assert_eq!(dead[0].reason_code, "redeliveries_exhausted");
    assert!(dead[0].reason.contains("requeued 4 times"), "{}", dead[0].reason);
    assert_eq!(store.message_count().await.unwrap(), 0);
}

/// After an outage longer than the worker retention every row is stale; a lease whose holder's
/// row is gone is only judged by a rescuer healthy for longer than that retention (by then a
/// live holder has re-registered with its heartbeat).
#[tokio::test]
async fn orphaned_leases_wait_for_a_long_healthy_rescuer() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let client = db.client().await;
    let holder = register(&store).await;
    let queues = vec!["celery".to_owned()];
    store.message_insert(&message("celery", 0, None)).await.unwrap();
    store.message_claim(&claim(holder, &queues, 1)).await.unwrap();
    client.batch_execute("update celeriac.message set lease_expires = now() - interval '1 second'").await.unwrap();
    client.execute("delete from celeriac.worker where id = $1", &[&holder]).await.unwrap();
    let recovering = celeriac_store::ORPHAN_AFTER_HEALTHY_SECONDS - 1.0;
    assert_eq!(store.message_rescue(None, 3, true, recovering).await.unwrap().rescued, 0);
    assert_eq!(store.message_rescue(None, 3, true, f64::MAX).await.unwrap().rescued, 1);
}

/// A rescuer judges by its own row's health when the statement runs (a pooler may hold a
/// statement through an outage and run it late): not while its own last heartbeat is older than
/// its lease, not until its heartbeats have come for a lease's length after such a gap, and
/// whatever health the caller claims.
#[tokio::test]
async fn a_rescuer_judges_by_its_own_rows_health_when_the_rescue_runs() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let client = db.client().await;
    let (victim, rescuer) = (register(&store).await, register(&store).await);
    let queues = vec!["celery".to_owned()];
    store.message_insert(&message("celery", 0, None)).await.unwrap();
    store.message_claim(&claim(victim, &queues, 1)).await.unwrap();
    // Everyone went through an outage: both heartbeats a minute old, the lease run out.
    client
        .batch_execute(
            "update celeriac.worker set heartbeat_at = now() - interval '60 seconds', healthy_since = now() - interval '1 hour';
             update celeriac.message set lease_expires = now() - interval '1 second'",
        )
        .await
        .unwrap();
    // The rescue statement was judged healthy when sent, but its own row is stale: no judgement.
    assert_eq!(store.message_rescue(Some(rescuer), 3, false, f64::MAX).await.unwrap().rescued, 0);
    assert_eq!(store.message_rescue(Some(rescuer), 3, true, f64::MAX).await.unwrap().rescued, 0);
    // Its heartbeat lands after the gap: a new streak starts, still too short to judge.
    store.worker_heartbeat(&info(rescuer), &[]).await.unwrap();
    let since: bool = client
        .query_one(
            "select healthy_since > now() - interval '5 seconds' from celeriac.worker where id = $1",
            &[&rescuer],
        )
        .await
        .unwrap()
        .get(0);
    assert!(since, "a heartbeat after a gap longer than the lease starts a new streak");
    assert_eq!(store.message_rescue(Some(rescuer), 3, false, f64::MAX).await.unwrap().rescued, 0);
    // A lease's length of heartbeats later it judges: the victim never came back.
    client
        .execute("update celeriac.worker set healthy_since = now() - interval '31 seconds' where id = $1", &[&rescuer])
        .await
        .unwrap();
    assert_eq!(
        store.message_rescue(Some(rescuer), 3, false, 0.0).await.unwrap().rescued,
        0,
        "nor beyond the caller's own"
    );
    assert_eq!(store.message_rescue(Some(rescuer), 3, false, f64::MAX).await.unwrap().rescued, 1);
}

/// Pool connections plan generically and never JIT-compile: behind a large backlog a generic
/// plan's estimate passes the JIT thresholds, and compiling cost ~240 ms a claim.
#[tokio::test]
async fn pooled_connections_plan_generically_without_jit() {
    let db = TestDatabase::new().await;
    let store = db.store();
    assert_eq!(store.testing_setting("jit").await.unwrap(), "off");
    assert_eq!(store.testing_setting("plan_cache_mode").await.unwrap(), "force_generic_plan");
    // The server's own default is not what the pool sets (so the check above can fail).
    let client = db.client().await;
    let default: String =
        client.query_one("select boot_val from pg_settings where name = 'jit'", &[]).await.unwrap().get(0);
    assert_eq!(default, "on");
}

/// The statements that settle, renew or park held messages find them by primary key, whatever
/// the statistics say. Analyzed while no row was leased, they estimate one row per worker for
/// `leased_by = $n`; fenced with `=`, their generic plans scanned `message_leased` instead:
/// every row the worker held, and the dead entries of every row it had finished since the last
/// vacuum, for each settle and heartbeat (a 100,000-task drain fell from ~20,000 to ~1,500
/// tasks/s, the server's CPU per task twenty times as high).
#[tokio::test]
async fn settling_finds_held_rows_by_primary_key_whatever_the_statistics() {
    let db = TestDatabase::new().await;
    let config = celeriac_store::StoreConfig { max_connections: 1, ..celeriac_store::StoreConfig::new(db.url.clone()) };
    let store = Store::new(&config).unwrap();
    store.migrate().await.unwrap();
    let queue = "plans".to_owned();
    let batch: Vec<_> = (0..2_000).map(|i| message(&queue, i % 3, None)).collect();
    store.message_insert_many(&batch).await.unwrap();
    db.client().await.batch_execute("analyze celeriac.message").await.unwrap();

    let worker = register(&store).await;
    let queues = vec![queue];
    let claimed = store.message_claim(&claim(worker, &queues, 2_000)).await.unwrap();
    assert_eq!(claimed.len(), 2_000);
    let leases: Vec<_> = claimed.iter().map(|m| m.lease).collect();
    assert_eq!(store.worker_heartbeat(&info(worker), &leases[..10]).await.unwrap().len(), 10);
    assert_eq!(store.message_complete_many(worker, &leases[..10]).await.unwrap().len(), 10);
    assert_eq!(store.message_release_many(worker, &leases[10..20], false).await.unwrap().len(), 10);
    assert_eq!(store.message_requeue_many(worker, &leases[20..30], 5).await.unwrap().requeued.len(), 10);
    let dl = DeadLetterParams {
        lease: leases[30],
        reason_code: celeriac_store::DeadLetterReason::Rejected,
        reason: "test".into(),
    };
    assert_eq!(store.message_dead_letter_many(worker, &[dl]).await.unwrap().len(), 1);
    assert!(store.message_retry(worker, leases[31], &claimed[31].payload, Utc::now()).await.unwrap());
    let parks: Vec<_> = leases[32..42].iter().map(|l| (*l, "tasks.add".to_owned())).collect();
    assert_eq!(store.message_park_many(worker, &parks).await.unwrap().len(), 10);
    let finish = celeriac_store::Finish { lease: leases[42], result: None, publish: Vec::new() };
    assert_eq!(store.message_finish_many(worker, None, &[&finish]).await.unwrap().len(), 1);

    let plans = store.testing_generic_plans().await.unwrap();
    let by_lease: Vec<_> = plans
        .iter()
        .filter(|(sql, _)| {
            ["c(id, attempt", "l(id, attempt", "id = $1 and attempt = $2"].iter().any(|s| sql.contains(s))
        })
        .collect();
    // complete, release, requeue, dead-letter, retry, park, finish, and the heartbeat.
    assert!(by_lease.len() >= 8, "only {} lease-fenced statements prepared", by_lease.len());
    for (sql, plan) in by_lease {
        assert!(plan.contains("message_pkey"), "not by primary key:\n{sql}\n{plan}");
        assert!(!plan.contains("message_leased"), "scans the worker's leases:\n{sql}\n{plan}");
    }
}

/// Behind a transaction-mode pooler (`?pooler=transaction`) no statement may leave session
/// state: every operation runs, on a single pooled session, and that session holds no prepared
/// statement afterwards (the same operations without the option leave several, which shows the
/// check can fail), and the listener never sends `LISTEN`.
#[tokio::test]
async fn pooler_transaction_leaves_no_session_state() {
    let db = TestDatabase::new().await;
    // Transaction first: the session run's LISTEN backend may linger a moment after it stops.
    for (option, pooler) in
        [("?pooler=transaction", celeriac_store::Pooler::Transaction), ("", celeriac_store::Pooler::Session)]
    {
        let config = celeriac_store::StoreConfig {
            max_connections: 1,
            ..celeriac_store::StoreConfig::new(format!("{}{option}", db.url))
        };
        let store = Store::new(&config).unwrap();
        assert_eq!(store.pooler(), pooler);
        assert!(!celeriac_store::redact_url(&config.database_url).contains("password"));
        assert_eq!(
            celeriac_store::redact_url(&config.database_url).ends_with("?pooler=transaction"),
            !option.is_empty()
        );

        store.migrate().await.unwrap();
        store.check().await.unwrap();
        let worker = register(&store).await;
        store.message_insert(&message("pooled", 0, None)).await.unwrap();
        store
            .message_insert_many(&[message("pooled", 1, None), message("pooled", 2, None), message("pooled", 3, None)])
            .await
            .unwrap();
        let queues = vec!["pooled".to_owned()];
        let claimed = store.message_claim(&claim(worker, &queues, 4)).await.unwrap();
        assert_eq!(claimed.len(), 4);
        let cursor = [celeriac_store::ClaimCursor { priority: 0, eta: Utc::now(), id: 0 }];
        let after = ClaimParams { after: Some(&cursor), ..claim(worker, &queues, 1) };
        assert!(store.message_claim(&after).await.unwrap().is_empty());
        let leases: Vec<_> = claimed.iter().map(|m| m.lease).collect();
        assert_eq!(store.worker_heartbeat(&info(worker), &leases).await.unwrap().len(), 4);
        assert_eq!(store.message_complete_many(worker, &leases[..1]).await.unwrap().len(), 1);
        assert_eq!(store.message_release_many(worker, &leases[1..2], false).await.unwrap().len(), 1);
        assert_eq!(store.message_requeue_many(worker, &leases[2..3], 5).await.unwrap().requeued.len(), 1);
        let dl = DeadLetterParams {
            lease: leases[3],
            reason_code: celeriac_store::DeadLetterReason::Rejected,
            reason: "test".into(),
        };
        assert_eq!(store.message_dead_letter_many(worker, &[dl]).await.unwrap().len(), 1);
        let again = store.message_claim(&claim(worker, &queues, 1)).await.unwrap();
        assert!(store.message_retry(worker, again[0].lease, &again[0].payload, Utc::now()).await.unwrap());
        store.message_rescue(None, 5, true, f64::MAX).await.unwrap();
        store.message_rescue(None, 5, false, 0.0).await.unwrap();
        assert_eq!(store.queue_stats().await.unwrap().iter().map(|q| q.dead_lettered).sum::<i64>(), 1);
        assert_eq!(store.dead_letter_list(10).await.unwrap().len(), 1);
        assert_eq!(store.dead_letter_redrive(&celeriac_store::DeadLetterFilter::default()).await.unwrap(), 1);
        assert_eq!(store.message_ready_count("pooled").await.unwrap(), 3);
        assert!(store.message_count().await.unwrap() >= 3);
        assert_eq!(store.message_purge("pooled").await.unwrap(), 3);
        assert_eq!(store.dead_letter_purge(&celeriac_store::DeadLetterFilter::default()).await.unwrap(), 0);
        store.worker_prune(3600.0).await.unwrap();
        store.worker_deregister(worker).await.unwrap();

        let prepared = store.testing_prepared_statements().await.unwrap();
        match pooler {
            celeriac_store::Pooler::Session => assert!(prepared > 5, "only {prepared} statements cached"),
            celeriac_store::Pooler::Transaction => assert_eq!(prepared, 0, "a statement was prepared by name"),
        }

        // The listener: with the option it never connects, so no session runs LISTEN.
        let stop = Arc::new(tokio::sync::Notify::new());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let listening = {
            let stop = stop.clone();
            tokio::spawn(store.listener().run(move |w| drop(tx.send(w)), async move { stop.notified().await }))
        };
        if pooler == celeriac_store::Pooler::Session {
            assert_eq!(recv(&mut rx).await, Wakeup::Any);
        }
        let client = db.client().await;
        let listens: i64 = client
            .query_one(
                "select count(*) from pg_stat_activity where datname = current_database() and query ilike 'listen %'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(listens, i64::from(pooler == celeriac_store::Pooler::Session));
        stop.notify_one();
        listening.await.unwrap();
    }
}

/// The live-row count the server's statistics give the message table (what the reindexer
/// judges by), once it satisfies `ready`.
async fn live_rows_when(client: &tokio_postgres::Client, ready: impl Fn(i64) -> bool) -> i64 {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let live: i64 =
            client.query_one("select pg_stat_get_live_tuples('celeriac.message'::regclass)", &[]).await.unwrap().get(0);
        if ready(live) {
            return live;
        }
        assert!(tokio::time::Instant::now() < deadline, "statistics still say {live} live rows");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

async fn index_bytes(client: &tokio_postgres::Client) -> i64 {
    client.query_one("select pg_indexes_size('celeriac.message')", &[]).await.unwrap().get(0)
}

/// After a burst the indexes stay as big as it made them (VACUUM never gives their pages back);
/// once few messages are left and the heap has been given back the reindexer rebuilds them
/// small, without blocking anything, and never while the table is busy.
#[tokio::test]
async fn bloated_indexes_are_rebuilt_once_few_messages_are_left() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let client = db.client().await;
    for _ in 0..12 {
        store.message_insert_many(&(0..5000).map(|_| message("burst", 0, None)).collect::<Vec<_>>()).await.unwrap();
    }
    live_rows_when(&client, |live| live >= 60_000).await;
    // Busy: 60,000 live messages, more than "few".
    assert!(store.message_reindex_bloated(512 << 10, 10_000).await.unwrap().is_empty());

    client.batch_execute("delete from celeriac.message").await.unwrap();
    // Vacuumed but its heap not given back (as under a steady load, where vacuum keeps the
    // table's pages in use): the heap is bigger than any index, which is not rebuilt.
    client.batch_execute("vacuum (truncate false) celeriac.message").await.unwrap();
    live_rows_when(&client, |live| live == 0).await;
    let bloated = index_bytes(&client).await;
    assert!(bloated > 2 << 20, "the burst left {bloated} bytes of indexes");
    assert!(store.message_reindex_bloated(512 << 10, 10_000).await.unwrap().is_empty());
    // The heap given back: the indexes are now much bigger than the table.
    client.batch_execute("vacuum celeriac.message").await.unwrap();
    assert_eq!(index_bytes(&client).await, bloated);
    // Two consumers at once: one rebuilds (the other finds the lock taken or nothing left).
    let (a, b) = tokio::join!(
        store.message_reindex_bloated(512 << 10, 10_000),
        store.message_reindex_bloated(512 << 10, 10_000)
    );
    let mut rebuilt = [a.unwrap(), b.unwrap()].concat();
    rebuilt.sort();
    assert!(rebuilt.contains(&"celeriac.message_pkey".to_owned()), "{rebuilt:?}");
    assert!(rebuilt.contains(&"celeriac.message_claim".to_owned()), "{rebuilt:?}");
    let before = rebuilt.len();
    rebuilt.dedup();
    assert_eq!(rebuilt.len(), before, "an index was rebuilt twice");
    let small = index_bytes(&client).await;
    assert!(small < 256 << 10, "indexes still {small} bytes after the rebuild");
    // Every index is valid, and nothing is left to rebuild.
    let invalid: i64 = client
        .query_one(
            "select count(*) from pg_index where indrelid = 'celeriac.message'::regclass and not indisvalid",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(invalid, 0);
    assert!(store.message_reindex_bloated(512 << 10, 10_000).await.unwrap().is_empty());
    // The queue works as before.
    store.message_insert(&message("burst", 0, None)).await.unwrap();
    let worker = register(&store).await;
    let queues = vec!["burst".to_owned()];
    assert_eq!(store.message_claim(&claim(worker, &queues, 10)).await.unwrap().len(), 1);
}

/// The dead-row count the server's statistics give the message table, once it satisfies `ready`.
async fn dead_rows_when(client: &tokio_postgres::Client, ready: impl Fn(i64) -> bool) -> i64 {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let dead: i64 =
            client.query_one("select pg_stat_get_dead_tuples('celeriac.message'::regclass)", &[]).await.unwrap().get(0);
        if ready(dead) {
            return dead;
        }
        assert!(tokio::time::Instant::now() < deadline, "statistics still say {dead} dead rows");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The vacuumer leaves a table with few dead rows alone, and one with many dead rows beside
/// many more live ones; vacuums it once they pass its threshold; and leaves it alone for a role
/// that may not vacuum it.
#[tokio::test]
async fn the_message_table_is_vacuumed_once_it_holds_many_dead_rows() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let client = db.client().await;
    // Autovacuum would change the counts under the test.
    client.batch_execute("alter table celeriac.message set (autovacuum_enabled = false)").await.unwrap();
    let vacuums = || async {
        let n: i64 = client
            .query_one("select vacuum_count from pg_stat_user_tables where relid = 'celeriac.message'::regclass", &[])
            .await
            .unwrap()
            .get(0);
        n
    };
    let insert = |queue: &'static str, n: usize| {
        let store = store.clone();
        async move {
            for _ in 0..n / 5000 {
                store
                    .message_insert_many(&(0..5000).map(|_| message(queue, 0, None)).collect::<Vec<_>>())
                    .await
                    .unwrap();
            }
        }
    };
    insert("dead", 5000).await;
    client.batch_execute("delete from celeriac.message where id % 5 < 2").await.unwrap();
    dead_rows_when(&client, |dead| dead >= 2000).await;
    // 2,000 dead rows: under a threshold of 3,000.
    assert_eq!(store.message_vacuum_when_dead(3000).await.unwrap(), None);
    // 4,000 dead rows, but fewer than a quarter of the 21,000 live ones: not yet.
    insert("live", 20_000).await;
    client.batch_execute("delete from celeriac.message where queue = 'dead' and id % 5 < 4").await.unwrap();
    dead_rows_when(&client, |dead| dead >= 4000).await;
    live_rows_when(&client, |live| live >= 21_000).await;
    assert_eq!(store.message_vacuum_when_dead(3000).await.unwrap(), None);
    assert_eq!(vacuums().await, 0);
    // 25,000 dead rows: vacuumed once, and not again.
    client.batch_execute("delete from celeriac.message").await.unwrap();
    let dead = dead_rows_when(&client, |dead| dead >= 25_000).await;
    assert_eq!(store.message_vacuum_when_dead(3000).await.unwrap(), Some(dead));
    assert_eq!(vacuums().await, 1);
    dead_rows_when(&client, |dead| dead == 0).await;
    assert_eq!(store.message_vacuum_when_dead(3000).await.unwrap(), None);

    // A role that owns neither the table nor the database and is not a superuser may not
    // vacuum the table: it does not try (VACUUM would only warn).
    let guest = format!("guest_{}", db.name);
    client
        .batch_execute(&format!(
            "create role {guest} login password 'guest'; grant usage on schema celeriac to {guest};
             grant select on all tables in schema celeriac to {guest}"
        ))
        .await
        .unwrap();
    insert("dead", 5000).await;
    client.batch_execute("delete from celeriac.message").await.unwrap();
    dead_rows_when(&client, |dead| dead >= 5000).await;
    let config: tokio_postgres::Config = db.url.parse().unwrap();
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(host) => host.clone(),
        other => panic!("test cluster reached by {other:?}"),
    };
    let guest_url = format!("postgresql://{guest}:guest@{host}:{}/{}", config.get_ports()[0], db.name);
    let as_guest = Store::new(&celeriac_store::StoreConfig::new(guest_url)).unwrap();
    assert_eq!(as_guest.message_vacuum_when_dead(3000).await.unwrap(), None);
    assert_eq!(vacuums().await, 1);
    drop(as_guest);
    client.batch_execute(&format!("drop owned by {guest}; drop role {guest}")).await.unwrap();
}
