//! Revocations and broadcasts (`migrations/0007_control.sql`) against a real PostgreSQL.

use std::time::Duration;

use celeriac_protocol::{encode_task, Map, TaskOptions};
use celeriac_store::{testing::TestDatabase, ClaimParams, NewMessage, Revocation, Store, WorkerInfo};
use chrono::Utc;
use uuid::Uuid;

fn message(id: &str, countdown: Option<f64>) -> NewMessage {
    let opts = TaskOptions { task_id: Some(id.into()), countdown, ..TaskOptions::default() };
    encode_task("tasks.add", &[], &Map::new(), &opts, Utc::now()).unwrap().into()
}

async fn claim(store: &Store) -> Vec<celeriac_store::ClaimedMessage> {
    let info = WorkerInfo {
        id: Uuid::new_v4(),
        hostname: "control@test".into(),
        pid: 1,
        queues: vec!["celery".into()],
        concurrency: 4,
        lease_seconds: 30.0,
        rate_limited: Vec::new(),
        kind: celeriac_store::ConsumerKind::Worker,
    };
    store.worker_register(&info).await.unwrap();
    let queues = vec!["celery".to_owned()];
    let params = ClaimParams {
        worker_id: info.id,
        queues: &queues,
        limit: 10,
        lease_seconds: 30.0,
        after: None,
        suspects: 1,
        park: &[],
    };
    store.message_claim(&params).await.unwrap()
}

fn revocation(ids: &[&str]) -> Revocation {
    Revocation {
        task_ids: ids.iter().map(|s| (*s).to_owned()).collect(),
        expires: Duration::from_secs(60),
        ..Revocation::default()
    }
}

#[tokio::test]
async fn claims_report_revoked_tasks_and_revocations_outlive_a_later_eta() {
    let db = TestDatabase::new().await;
    let store = db.store();
    store.message_insert(&message("kept", None)).await.unwrap();
    store.message_insert(&message("gone", None)).await.unwrap();
    store.message_insert(&message("ahead", Some(86_400.0))).await.unwrap();
    // Duplicates are one revocation; the broadcast row is written with them.
    let id = store
        .broadcast_publish("celery.pidbox", "", b"{}", Some(&revocation(&["gone", "gone", "ahead"])))
        .await
        .unwrap();
    assert!(id > 0);
    let client = db.client().await;
    let ahead: bool = client
        .query_one("select expires_at > now() + interval '1 day' from celeriac.revoked where task_id = 'ahead'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(ahead, "the revocation lasts past the message's ETA");
    let mut claimed: Vec<(String, bool)> = claim(&store)
        .await
        .iter()
        .map(|m| {
            let head = celeriac_protocol::TaskMessage::decode_head(&m.payload, &celeriac_protocol::Accept::default());
            (head.unwrap().headers.id, m.revoked)
        })
        .collect();
    claimed.sort();
    assert_eq!(claimed, [("gone".to_owned(), true), ("kept".to_owned(), false)]);
    let live: Vec<String> = store.revoked_list(10).await.unwrap().into_iter().map(|r| r.task_id).collect();
    assert_eq!(live.len(), 2);
}

#[tokio::test]
async fn revoked_prune_keeps_live_revocations_and_caps_them() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let client = db.client().await;
    store.revoked_insert(&revocation(&["a", "b", "c"])).await.unwrap();
    // One long expired, one live but revoked long ago (its ETA is far ahead).
    client
        .execute("update celeriac.revoked set expires_at = now() - interval '1 hour' where task_id = 'a'", &[])
        .await
        .unwrap();
    client
        .execute(
            "update celeriac.revoked set revoked_at = now() - interval '2 days', expires_at = now() + interval '1 day' \
             where task_id = 'b'",
            &[],
        )
        .await
        .unwrap();
    store.revoked_prune(2, 100).await.unwrap();
    let mut left: Vec<String> =
        client.query("select task_id from celeriac.revoked", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    left.sort();
    assert_eq!(left, ["b", "c"], "expired ones go; live ones within the cap stay, however old");
    store.revoked_prune(1, 100).await.unwrap();
    let left: Vec<String> =
        client.query("select task_id from celeriac.revoked", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(left, ["c"], "beyond the cap, the oldest revoked go first");
}

#[tokio::test]
async fn broadcasts_are_read_per_exchange_in_order_and_pruned() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let head = store.broadcast_head().await.unwrap();
    store.broadcast_publish("x", "a", b"1", None).await.unwrap();
    let many = vec![("y".to_owned(), "k".to_owned(), b"2".to_vec()), ("x".to_owned(), "b".to_owned(), b"3".to_vec())];
    assert_eq!(store.broadcast_publish_many(&many).await.unwrap(), 2);
    let xs = store.broadcast_read(&["x".to_owned()], head, 10).await.unwrap();
    assert_eq!(
        xs.iter().map(|m| (m.routing_key.as_str(), m.payload.as_slice())).collect::<Vec<_>>(),
        [("a", &b"1"[..]), ("b", b"3")]
    );
    assert!(xs[0].id < xs[1].id);
    let after_first = store.broadcast_read(&["x".to_owned(), "y".to_owned()], xs[0].id, 10).await.unwrap();
    assert_eq!(after_first.len(), 2);
    assert_eq!(store.broadcast_prune(Duration::from_secs(60), 100).await.unwrap(), 0, "recent rows stay");
    let client = db.client().await;
    client.execute("update celeriac.broadcast set published_at = now() - interval '10 minutes'", &[]).await.unwrap();
    assert_eq!(store.broadcast_prune(Duration::from_secs(60), 2).await.unwrap(), 2, "in batches");
    assert_eq!(store.broadcast_prune(Duration::from_secs(60), 2).await.unwrap(), 1);
}

fn consumer(queues: &[&str], kind: celeriac_store::ConsumerKind) -> WorkerInfo {
    WorkerInfo {
        id: Uuid::new_v4(),
        hostname: "scheduled@test".into(),
        pid: 1,
        queues: queues.iter().map(|q| (*q).to_owned()).collect(),
        concurrency: 2,
        lease_seconds: 30.0,
        rate_limited: Vec::new(),
        kind,
    }
}

fn queued(id: &str, queue: &str, countdown: Option<f64>) -> NewMessage {
    let opts = TaskOptions { task_id: Some(id.into()), countdown, queue: queue.into(), ..TaskOptions::default() };
    encode_task("tasks.add", &[], &Map::new(), &opts, Utc::now()).unwrap().into()
}

async fn scheduled_ids(store: &Store, worker: &WorkerInfo) -> Vec<String> {
    let rows = store.message_scheduled(worker.id, &worker.queues, 100).await.unwrap();
    rows.iter()
        .map(|m| {
            let head = celeriac_protocol::TaskMessage::decode_head(&m.payload, &celeriac_protocol::Accept::default());
            format!("{}:{}", m.queue, head.unwrap().headers.id)
        })
        .collect()
}

#[tokio::test]
async fn each_eta_message_is_listed_by_the_oldest_live_celeriac_worker_of_its_queue() {
    use celeriac_store::ConsumerKind::{Kombu, Worker};
    let db = TestDatabase::new().await;
    let store = db.store();
    store.message_insert(&queued("now", "a", None)).await.unwrap();
    store.message_insert(&queued("later", "a", Some(7200.0))).await.unwrap();
    store.message_insert(&queued("soon", "a", Some(3600.0))).await.unwrap();
    store.message_insert(&queued("b-later", "b", Some(3600.0))).await.unwrap();
    // A Celery worker on the kombu transport, registered first, lists nothing for celeriac.
    let kombu = consumer(&["a", "b"], Kombu);
    store.worker_register(&kombu).await.unwrap();
    let oldest = consumer(&["a"], Worker);
    store.worker_register(&oldest).await.unwrap();
    let client = db.client().await;
    // Registered a second later (rows registered in one transaction would tie on started_at).
    let newer = consumer(&["a", "b"], Worker);
    store.worker_register(&newer).await.unwrap();
    client
        .execute("update celeriac.worker set started_at = started_at + interval '1 s' where id = $1", &[&newer.id])
        .await
        .unwrap();
    // Soonest first; a message due now is not scheduled.
    assert_eq!(scheduled_ids(&store, &oldest).await, ["a:soon", "a:later"]);
    assert_eq!(scheduled_ids(&store, &newer).await, ["b:b-later"], "queue a is the oldest worker's");
    // A worker not registered yet answers for its queues.
    let fresh = consumer(&["a"], Worker);
    assert_eq!(scheduled_ids(&store, &fresh).await, ["a:soon", "a:later"]);
    // Once the oldest is dead (no heartbeat for its lease), the next one answers.
    client
        .execute("update celeriac.worker set heartbeat_at = now() - interval '1 hour' where id = $1", &[&oldest.id])
        .await
        .unwrap();
    assert_eq!(scheduled_ids(&store, &newer).await, ["a:soon", "b:b-later", "a:later"]);
    // A message that came due is not scheduled any more.
    client.execute("update celeriac.message set eta = now() where task_id = 'soon'", &[]).await.unwrap();
    assert_eq!(scheduled_ids(&store, &newer).await, ["b:b-later", "a:later"]);
}
