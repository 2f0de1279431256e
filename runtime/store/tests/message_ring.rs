//! The message table's ring of partitions against a real PostgreSQL
//! (`migrations/0010_message_ring.sql`): a slot is emptied by TRUNCATE only when no message is
//! left in it, delayed messages move out of the way, an uncommitted insert is never truncated
//! away, and an idle ring shrinks to nothing and stops.

use std::time::Duration;

use celeriac_protocol::{encode_task, Map, TaskOptions, Value};
use celeriac_store::{
    maintenance::MessageRing, service::Periodic, testing::TestDatabase, ClaimParams, Store, WorkerInfo,
};
use chrono::Utc;
use uuid::Uuid;

fn message(countdown: Option<f64>) -> celeriac_store::NewMessage {
    let options = TaskOptions { countdown, ..TaskOptions::default() };
    encode_task("ring.task", &[Value::Int(1)], &Map::new(), &options, Utc::now()).unwrap().into()
}

async fn register(store: &Store) -> Uuid {
    let id = Uuid::new_v4();
    let info = WorkerInfo {
        id,
        hostname: "ring@host".into(),
        pid: 1,
        queues: vec!["celery".into()],
        concurrency: 1,
        lease_seconds: 30.0,
        rate_limited: Vec::new(),
    };
    store.worker_register(&info).await.unwrap();
    id
}

/// Messages per slot, the delayed partition as -1.
async fn slots(client: &tokio_postgres::Client) -> Vec<(i16, i64)> {
    client
        .query("select slot, count(*) from celeriac.message group by slot order by slot", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn heap_bytes(client: &tokio_postgres::Client, slot: i16) -> i64 {
    client
        .query_one("select pg_relation_size(format('celeriac.%I', 'message_' || $1::int2)::regclass)", &[&slot])
        .await
        .unwrap()
        .get(0)
}

async fn current(client: &tokio_postgres::Client) -> i16 {
    client.query_one("select slot from celeriac.message_ring", &[]).await.unwrap().get(0)
}

/// Finishes every ready message through the store, as a worker would.
async fn run_all(store: &Store, worker: Uuid) -> usize {
    let queues = vec!["celery".to_owned()];
    let params = ClaimParams {
        worker_id: worker,
        queues: &queues,
        limit: 1000,
        lease_seconds: 30.0,
        after: None,
        suspects: 1,
        park: &[],
    };
    let mut done = 0;
    loop {
        let claimed = store.message_claim(&params).await.unwrap();
        if claimed.is_empty() {
            return done;
        }
        let leases: Vec<_> = claimed.iter().map(|m| m.lease).collect();
        done += store.message_complete_many(worker, &leases).await.unwrap().len();
    }
}

#[tokio::test]
async fn a_slot_is_emptied_only_once_no_message_is_left_in_it() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let client = db.client().await;
    let worker = register(&store).await;
    let start = current(&client).await;

    // Five ready messages, a countdown of an hour and one of two seconds, in the first slot.
    store.message_insert_many(&(0..5).map(|_| message(None)).collect::<Vec<_>>()).await.unwrap();
    let hour = store.message_insert(&message(Some(3600.0))).await.unwrap();
    store.message_insert(&message(Some(2.0))).await.unwrap();
    // Not due: too few new messages, too young.
    assert_eq!(store.message_rotate(10, Duration::from_secs(3600)).await.unwrap(), None);
    // Due by fill: a slot never used becomes current; the messages stay where they are.
    let first = store.message_rotate(7, Duration::from_secs(3600)).await.unwrap().expect("a step");
    assert_ne!(first, start);
    assert_eq!(current(&client).await, first);
    assert_eq!(slots(&client).await, vec![(start, 7)]);

    // One ready message is claimed and held; the other four finish.
    let queues = vec!["celery".to_owned()];
    let one = ClaimParams {
        worker_id: worker,
        queues: &queues,
        limit: 1,
        lease_seconds: 30.0,
        after: None,
        suspects: 1,
        park: &[],
    };
    let held = store.message_claim(&one).await.unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(run_all(&store, worker).await, 4);

    // Steps whenever asked now: the ring goes between the free slots and never empties `start`,
    // which holds the leased message and the one due in two seconds. The hour-long countdown
    // moved to the delayed partition on the way.
    let mut visited = Vec::new();
    for _ in 0..4 {
        visited.push(store.message_rotate(0, Duration::ZERO).await.unwrap().expect("a free slot"));
    }
    assert!(!visited.contains(&start), "a slot with messages left was made current: {visited:?}");
    assert_eq!(slots(&client).await, vec![(-1, 1), (start, 2)]);
    let moved: i64 = client.query_one("select id from celeriac.message where slot = -1", &[]).await.unwrap().get(0);
    assert_eq!(moved, hour);

    // Once the held one is done and the countdown has run, the next pass empties `start` too.
    store.message_complete_many(worker, &[held[0].lease]).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while run_all(&store, worker).await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the 2 s countdown never came due");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(heap_bytes(&client, start).await > 0);
    store.message_rotate(0, Duration::ZERO).await.unwrap();
    assert_eq!(heap_bytes(&client, start).await, 0, "the slot was not emptied once its messages were gone");
    // The delayed message is still there, under its id, and runs when due like any other.
    let left: Vec<(i64, i16)> = client
        .query("select id, slot from celeriac.message", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(left, vec![(hour, -1)]);
    client.execute("update celeriac.message set eta = now()", &[]).await.unwrap();
    assert_eq!(run_all(&store, worker).await, 1);
}

#[tokio::test]
async fn an_uncommitted_insert_is_never_truncated_away() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let client = db.client().await;
    let start = current(&client).await;

    // A producer's transaction inserts into the current slot and stays open.
    let mut producer = db.client().await;
    let tx = producer.transaction().await.unwrap();
    tx.execute(
        "insert into celeriac.message (queue, task_name, task_id, payload) values ('celery', 'x', 'open', '\\x00')",
        &[],
    )
    .await
    .unwrap();
    // The ring steps away from that slot and goes round to it: it must not empty it.
    let mut visited = Vec::new();
    for _ in 0..6 {
        if let Some(slot) = store.message_rotate(0, Duration::ZERO).await.unwrap() {
            visited.push(slot);
        }
    }
    assert!(!visited.is_empty());
    assert!(!visited.contains(&start), "stepped into a slot with an open insert: {visited:?}");
    tx.commit().await.unwrap();
    assert_eq!(slots(&client).await, vec![(start, 1)]);
}

#[tokio::test]
async fn an_idle_ring_shrinks_to_nothing_and_stops() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let client = db.client().await;
    let worker = register(&store).await;
    for _ in 0..5 {
        store.message_insert_many(&(0..2000).map(|_| message(None)).collect::<Vec<_>>()).await.unwrap();
        assert_eq!(run_all(&store, worker).await, 2000);
        store.message_rotate(2000, Duration::from_secs(3600)).await.unwrap();
    }
    let size = || async {
        let r = client
            .query_one(
                "select coalesce(sum(pg_total_relation_size(relid)), 0)::int8 from pg_partition_tree('celeriac.message')",
                &[],
            )
            .await
            .unwrap();
        r.get::<_, i64>(0)
    };
    // A few more after the last step: the current slot is not empty either.
    store.message_insert_many(&(0..10).map(|_| message(None)).collect::<Vec<_>>()).await.unwrap();
    assert_eq!(run_all(&store, worker).await, 10);
    let busy = size().await;
    // With no new messages, one step by age leaves the slot that took the last ones; every
    // drained slot is emptied (once the server's statistics have counted the deletions).
    let mut ring = MessageRing::new(store.clone());
    ring.age = Duration::ZERO;
    let mut steps = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if ring.run_once().await.unwrap().is_some() {
            steps += 1;
        }
        let mut heaps = 0;
        for slot in 0..3 {
            heaps += heap_bytes(&client, slot).await;
        }
        if heaps == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "slots still hold {heaps} bytes");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(steps, 1, "an idle ring steps once, off the slot that took the last messages");
    // Idle now: no more steps, and every partition is back to its empty size.
    for _ in 0..3 {
        assert_eq!(ring.run_once().await.unwrap(), None);
    }
    let idle = size().await;
    assert!(idle < busy / 4, "idle {idle} bytes, busy {busy}");
}
