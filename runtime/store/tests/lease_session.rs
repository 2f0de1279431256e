//! The lease session (held leases, heartbeat, completer) against a real PostgreSQL.

use std::{sync::Arc, time::Duration, time::Instant};

use celeriac_protocol::{encode_task, Map, TaskOptions, Value};
use celeriac_store::{
    testing::{PgCluster, TestDatabase},
    ClaimParams, ClaimedMessage, DeadLetterParams, Lease, LeaseSession, LeaseSessionConfig, SettledNow, Settlement,
    Store, StoreConfig, WorkerInfo,
};
use chrono::Utc;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

fn info(lease_seconds: f64) -> WorkerInfo {
    WorkerInfo {
        id: Uuid::new_v4(),
        hostname: "session@test".into(),
        pid: 1,
        queues: vec!["celery".into()],
        concurrency: 1,
        lease_seconds,
        rate_limited: Vec::new(),
        kind: celeriac_store::ConsumerKind::Worker,
    }
}

fn config() -> LeaseSessionConfig {
    LeaseSessionConfig {
        heartbeat_interval: Duration::from_millis(200),
        rescuer: None,
        ..LeaseSessionConfig::default()
    }
}

async fn enqueue(store: &Store, n: i64) {
    let msgs: Vec<_> = (0..n)
        .map(|i| {
            encode_task("tasks.add", &[Value::Int(i)], &Map::new(), &TaskOptions::default(), Utc::now()).unwrap().into()
        })
        .collect();
    store.message_insert_many(&msgs).await.unwrap();
}

async fn claim(store: &Store, session: &LeaseSession, n: i64) -> Vec<ClaimedMessage> {
    let queues = vec!["celery".to_owned()];
    let params = ClaimParams {
        worker_id: session.worker_id(),
        queues: &queues,
        limit: n,
        lease_seconds: session.lease().as_secs_f64(),
        after: None,
        suspects: n,
        park: &[],
    };
    let sent = Instant::now();
    let claimed = store.message_claim(&params).await.unwrap();
    session.hold(&claimed, sent);
    claimed
}

async fn lease_expires(db: &TestDatabase, id: i64) -> chrono::DateTime<Utc> {
    let client = db.client().await;
    client.query_one("select lease_expires from celeriac.message where id = $1", &[&id]).await.unwrap().get(0)
}

async fn count(db: &TestDatabase, sql: &str) -> i64 {
    db.client().await.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn settles_in_the_background_and_now_then_closes() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let me = info(30.0);
    store.worker_register(&me).await.unwrap();
    let settled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let hook = {
        let settled = settled.clone();
        Arc::new(move |batch: &[Settlement], _took| {
            settled.fetch_add(batch.len(), std::sync::atomic::Ordering::Relaxed);
        })
    };
    let session = LeaseSession::start(store.clone(), me.clone(), &config(), Some(hook));
    enqueue(&store, 5).await;
    let claimed = claim(&store, &session, 5).await;
    let leases: Vec<Lease> = claimed.iter().map(|m| m.lease).collect();
    assert_eq!(session.held_count(), 5);
    assert!(!session.expired(leases[0]));

    assert!(session.settle(Settlement::Complete(leases[0])));
    assert_eq!(session.settle_now(Settlement::Requeue(leases[1])).await.unwrap(), SettledNow::Written { held: true });
    let dead = DeadLetterParams {
        lease: leases[2],
        reason_code: celeriac_store::DeadLetterReason::Rejected,
        reason: "test".into(),
    };
    assert_eq!(session.settle_now(Settlement::DeadLetter(dead)).await.unwrap(), SettledNow::Written { held: true });
    // A lease this session does not hold is refused by the fence.
    let stale = Lease { id: leases[3].id, attempt: leases[3].attempt - 1 };
    assert_eq!(session.settle_now(Settlement::Release(stale)).await.unwrap(), SettledNow::Written { held: false });
    tokio::time::timeout(WAIT, session.flush()).await.unwrap().unwrap();
    assert_eq!(settled.load(std::sync::atomic::Ordering::Relaxed), 4);
    assert_eq!(session.held_count(), 2);
    // Completed and dead-lettered rows are gone from the queue; the requeued one is ready again.
    assert_eq!(count(&db, "select count(*) from celeriac.message").await, 3);
    assert_eq!(count(&db, "select count(*) from celeriac.message where leased_by is null and redelivered").await, 1);
    assert_eq!(count(&db, "select count(*) from celeriac.dead_letter").await, 1);

    // The heartbeat renews what is held.
    let before = lease_expires(&db, leases[3].id).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let now = lease_expires(&db, leases[3].id).await;
        if now > before {
            break;
        }
        assert!(Instant::now() < deadline, "the lease was never renewed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // One outcome still on its way, one message idle: close gives the idle one back, writes the
    // other and removes the worker row.
    assert!(session.settle(Settlement::Complete(leases[3])));
    assert_eq!(session.give_back_idle().await.unwrap(), 1);
    assert_eq!(session.close().await, 0);
    assert_eq!(count(&db, "select count(*) from celeriac.message where leased_by is not null").await, 0);
    assert_eq!(count(&db, "select count(*) from celeriac.message").await, 2);
    assert_eq!(count(&db, "select count(*) from celeriac.worker").await, 0);
    // Closed: nothing more is accepted, and a second close returns at once.
    assert!(!session.settle(Settlement::Complete(leases[4])));
    assert_eq!(session.close().await, 0);
}

/// The database goes away with outcomes pending: nothing is dropped. The completer retries
/// until the server is back, `settle_now` hands its outcome over instead of failing, the held
/// leases count as expired once their lease ran out unrenewed, and renewal resumes after.
#[tokio::test]
async fn keeps_outcomes_through_an_outage() {
    let cluster = tokio::task::spawn_blocking(PgCluster::start_private).await.unwrap().unwrap();
    let db = TestDatabase::on_server(&cluster.url("postgres")).await;
    let store =
        Store::new(&StoreConfig { connect_timeout: Duration::from_secs(1), ..StoreConfig::new(&db.url) }).unwrap();
    let me = info(1.0);
    store.worker_register(&me).await.unwrap();
    let session = LeaseSession::start(store.clone(), me, &config(), None);
    enqueue(&store, 3).await;
    let claimed = claim(&store, &session, 3).await;
    let leases: Vec<Lease> = claimed.iter().map(|m| m.lease).collect();

    let cluster = Arc::new(cluster);
    {
        let cluster = cluster.clone();
        tokio::task::spawn_blocking(move || cluster.stop()).await.unwrap().unwrap();
    }
    assert!(session.settle(Settlement::Complete(leases[0])));
    assert_eq!(session.settle_now(Settlement::Release(leases[1])).await.unwrap(), SettledNow::Queued);
    let flushed = session.flush();
    // Unrenewed for longer than its 1 s lease: not to be started any more.
    let deadline = Instant::now() + WAIT;
    while !session.expired(leases[2]) {
        assert!(Instant::now() < deadline, "the lease never counted as expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    {
        let cluster = cluster.clone();
        tokio::task::spawn_blocking(move || cluster.start_again()).await.unwrap().unwrap();
    }
    tokio::time::timeout(WAIT, flushed).await.expect("flushed once the server is back").unwrap();
    assert_eq!(count(&db, "select count(*) from celeriac.message").await, 2);
    assert_eq!(count(&db, "select count(*) from celeriac.message where leased_by is null").await, 1);
    // The heartbeat renews the remaining lease again (nobody rescued it meanwhile).
    let deadline = Instant::now() + WAIT;
    while session.expired(leases[2]) {
        assert!(Instant::now() < deadline, "the lease was never renewed after the outage");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(session.health().healthy_seconds() > 0.0);
    assert_eq!(session.close().await, 1, "the held message is left to its lease");
}
