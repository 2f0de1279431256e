//! Rate limits against a real PostgreSQL: parked messages, fleet-wide token buckets, the
//! `rate_limit` table and the rescuer's return of parked messages nobody limits.

use std::{collections::HashSet, time::Duration};

use celeriac_protocol::{encode_task, Map, TaskOptions, Value};
use celeriac_store::{
    maintenance::{Rescuer, RescuerConfig},
    service::Periodic,
    testing::TestDatabase,
    ClaimParams, RateLimitScope, RateValue, Store, TokenGrant, WorkerInfo, PARKED,
};
use chrono::Utc;
use uuid::Uuid;

const QUEUES: &[&str] = &["celery"];

fn queues() -> Vec<String> {
    QUEUES.iter().map(|q| (*q).to_owned()).collect()
}

fn message(task: &str) -> celeriac_store::NewMessage {
    encode_task(task, &[Value::Int(1)], &Map::new(), &TaskOptions::default(), Utc::now()).unwrap().into()
}

fn claim(worker: Uuid, queues: &[String], limit: i64) -> ClaimParams<'_> {
    ClaimParams { worker_id: worker, queues, limit, lease_seconds: 30.0, after: None, suspects: 1, park: &[] }
}

async fn register(store: &Store, rate_limited: &[&str]) -> Uuid {
    let id = Uuid::new_v4();
    let info = WorkerInfo {
        id,
        hostname: "test@host".into(),
        pid: 1,
        queues: queues(),
        concurrency: 1,
        lease_seconds: 30.0,
        rate_limited: rate_limited.iter().map(|t| (*t).to_owned()).collect(),
        kind: celeriac_store::ConsumerKind::Worker,
    };
    store.worker_register(&info).await.unwrap();
    id
}

/// Each claimed message with the task name of its payload.
fn parks(claimed: &[celeriac_store::ClaimedMessage]) -> Vec<(celeriac_store::Lease, String)> {
    let accept = celeriac_protocol::Accept::default();
    claimed
        .iter()
        .map(|m| (m.lease, celeriac_protocol::TaskMessage::decode_head(&m.payload, &accept).unwrap().headers.task))
        .collect()
}

fn value(spec: &str, per_second: f64) -> RateValue {
    RateValue { spec: spec.into(), per_second }
}

#[tokio::test]
async fn parked_messages_leave_the_claims_way_and_come_back_oldest_first() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let worker = register(&store, &["slow"]).await;
    let qs = queues();
    for _ in 0..5 {
        store.message_insert(&message("slow")).await.unwrap();
    }
    store.message_insert(&message("fast")).await.unwrap();
    let claimed = store.message_claim(&claim(worker, &qs, 5)).await.unwrap();
    assert_eq!(claimed.len(), 5);
    let leases: Vec<_> = claimed.iter().map(|m| (m.lease, "slow".to_owned())).collect();
    let parked = store.message_park_many(worker, &leases).await.unwrap();
    assert_eq!(parked.len(), 5);
    // Parked twice: the fence refuses (the lease is no longer this worker's).
    assert!(store.message_park_many(worker, &leases).await.unwrap().is_empty());

    // Claims go past them; only the unlimited message is claimable.
    let other = register(&store, &[]).await;
    let next = store.message_claim(&claim(other, &qs, 10)).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(store.queue_stats().await.unwrap()[0].rate_limited, 5);
    assert!(store.message_parked_exists("slow", &qs).await.unwrap());
    assert!(!store.message_parked_exists("fast", &qs).await.unwrap());
    assert_eq!(store.message_parked_counts().await.unwrap(), vec![("slow".to_owned(), 5)]);

    // Taken back in claim order, a new attempt each.
    let back = store.message_claim_parked(&claim(worker, &qs, 2), "slow").await.unwrap();
    let ids: Vec<i64> = back.iter().map(|m| m.lease.id).collect();
    let mut oldest = parked.clone();
    oldest.sort_unstable();
    assert_eq!(ids, oldest[..2]);
    assert!(back.iter().all(|m| m.lease.attempt == 2));
    // The heartbeat renews them like any claim; completion is fenced as usual.
    let done = store.message_complete_many(worker, &back.iter().map(|m| m.lease).collect::<Vec<_>>()).await.unwrap();
    assert_eq!(done.len(), 2);
    let rest = store.message_claim_parked(&claim(worker, &qs, 10), "slow").await.unwrap();
    assert_eq!(rest.len(), 3);
    assert!(!store.message_parked_exists("slow", &qs).await.unwrap());
}

#[tokio::test]
async fn a_parked_claim_takes_at_most_one_suspect() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let worker = register(&store, &["slow"]).await;
    let qs = queues();
    for _ in 0..3 {
        store.message_insert(&message("slow")).await.unwrap();
    }
    let claimed = store.message_claim(&claim(worker, &qs, 3)).await.unwrap();
    store.message_park_many(worker, &parks(&claimed)).await.unwrap();
    db.client().await.batch_execute("update celeriac.message set redeliveries = 1").await.unwrap();
    let params = ClaimParams { suspects: 1, ..claim(worker, &qs, 3) };
    assert_eq!(store.message_claim_parked(&params, "slow").await.unwrap().len(), 1);
    let params = ClaimParams { suspects: 0, ..claim(worker, &qs, 3) };
    assert!(store.message_claim_parked(&params, "slow").await.unwrap().is_empty());
}

#[tokio::test]
async fn the_rescuer_returns_parked_messages_no_live_worker_limits() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let limiting = register(&store, &["slow"]).await;
    store.message_insert(&message("slow")).await.unwrap();
    store.message_insert(&message("other")).await.unwrap();
    let mut elsewhere = message("slow");
    elsewhere.queue = "elsewhere".into();
    store.message_insert(&elsewhere).await.unwrap();
    let both = vec!["celery".to_owned(), "elsewhere".to_owned()];
    let claimed = store.message_claim(&claim(limiting, &both, 3)).await.unwrap();
    assert_eq!(claimed.len(), 3);
    store.message_park_many(limiting, &parks(&claimed)).await.unwrap();
    // "slow" in "celery" is limited by a live worker consuming it: it stays; "other" is limited
    // by nobody, and no live worker that limits "slow" consumes "elsewhere": both go back.
    assert_eq!(store.message_unpark_unlimited().await.unwrap(), 2);
    let client = db.client().await;
    let parked: Vec<String> = client
        .query("select task_name from celeriac.message where leased_by = $1", &[&PARKED])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(parked, ["slow"]);
    // Once no live worker limits it (its heartbeat stopped), the rescuer's pass returns it.
    client
        .execute("update celeriac.worker set heartbeat_at = now() - interval '1 hour' where id = $1", &[&limiting])
        .await
        .unwrap();
    let mut rescuer = Rescuer::new(store.clone(), RescuerConfig::default());
    rescuer.run_once().await.unwrap();
    let ready = store.message_claim(&claim(Uuid::new_v4(), &both, 10)).await.unwrap();
    assert_eq!(ready.len(), 3);
}

#[tokio::test]
async fn a_fleet_wide_bucket_grants_each_token_once() {
    let db = TestDatabase::new().await;
    let store = db.store();
    assert_eq!(store.rate_limit_acquire("t", 5).await.unwrap(), TokenGrant::Unlimited);
    // 10/s: a bucket of max(1, 10 × 0.2) = 2 tokens, full at the start.
    store.rate_limit_set("t", RateLimitScope::Global, &value("10/s", 10.0)).await.unwrap();
    let TokenGrant::Granted { granted, next_in, per_second } = store.rate_limit_acquire("t", 5).await.unwrap() else {
        panic!("limited")
    };
    assert_eq!((granted, per_second), (2, 10.0));
    assert!(next_in <= Duration::from_millis(100), "{next_in:?}");
    // Many takers at once, over about a second: never more than the rate allows.
    let started = std::time::Instant::now();
    let mut takers = Vec::new();
    for _ in 0..4 {
        let store = store.clone();
        takers.push(tokio::spawn(async move {
            let mut got = 0;
            while started.elapsed() < Duration::from_millis(1000) {
                if let TokenGrant::Granted { granted, next_in, .. } = store.rate_limit_acquire("t", 3).await.unwrap() {
                    got += granted;
                    if granted == 0 {
                        tokio::time::sleep(next_in.min(Duration::from_millis(50))).await;
                    }
                }
            }
            got
        }));
    }
    let mut total = 0;
    for t in takers {
        total += t.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    // At most the bucket's capacity plus what it refilled meanwhile.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let most = (2.0 + 10.0 * elapsed).floor() as u32;
    assert!(total <= most, "{total} tokens in {elapsed:.3}s");
    assert!(total >= 5, "{total} tokens in {elapsed:.3}s: the bucket refills");
    // Tokens given back are granted again, up to the capacity only.
    store.rate_limit_give_back("t", 50).await.unwrap();
    let TokenGrant::Granted { granted, .. } = store.rate_limit_acquire("t", 50).await.unwrap() else { panic!() };
    assert_eq!(granted, 2);
}

#[tokio::test]
async fn the_operators_value_beats_the_apps_until_cleared() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let known = vec!["a".to_owned(), "b".to_owned()];
    store
        .rate_limit_declare(RateLimitScope::Global, &[("a".into(), value("100/m", 100.0 / 60.0))], &known)
        .await
        .unwrap();
    store.rate_limit_set("a", RateLimitScope::Global, &value("5/s", 5.0)).await.unwrap();
    store.rate_limit_set("b", RateLimitScope::Worker, &value("0", 0.0)).await.unwrap();
    let rows = store.rate_limit_list().await.unwrap();
    let a = rows.iter().find(|r| r.task_name == "a").unwrap();
    assert_eq!(a.declared.as_ref().unwrap().spec, "100/m");
    assert_eq!(a.effective().unwrap().spec, "5/s");
    // The app drops its limit: the operator's stays; cleared, the row goes.
    store.rate_limit_declare(RateLimitScope::Global, &[], &known).await.unwrap();
    let rows = store.rate_limit_list().await.unwrap();
    let a = rows.iter().find(|r| r.task_name == "a").unwrap();
    assert!(a.declared.is_none());
    assert_eq!(a.effective().unwrap().spec, "5/s");
    assert!(store.rate_limit_clear("a", RateLimitScope::Global).await.unwrap());
    assert!(!store.rate_limit_clear("a", RateLimitScope::Global).await.unwrap());
    let names: HashSet<(String, RateLimitScope)> =
        store.rate_limit_list().await.unwrap().into_iter().map(|r| (r.task_name, r.scope)).collect();
    assert_eq!(names, HashSet::from([("b".to_owned(), RateLimitScope::Worker)]));
    // Declaring again records the app's value; a task the app does not know is left alone.
    store
        .rate_limit_declare(RateLimitScope::Global, &[("a".into(), value("1/s", 1.0))], &["a".to_owned()])
        .await
        .unwrap();
    assert!(store.rate_limit_clear("b", RateLimitScope::Worker).await.unwrap());
    let rows = store.rate_limit_list().await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].effective().unwrap().spec, "1/s");
}

#[tokio::test]
async fn a_claim_parks_the_messages_of_the_types_it_is_told_to() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let worker = register(&store, &["slow"]).await;
    let qs = queues();
    for task in ["slow", "fast", "slow", "fast"] {
        store.message_insert(&message(task)).await.unwrap();
    }
    let park = vec!["slow".to_owned()];
    let claimed = store.message_claim(&ClaimParams { park: &park, ..claim(worker, &qs, 3) }).await.unwrap();
    // Three rows in claim order: two leased (attempt 1), one parked (attempt unchanged).
    let shape: Vec<(bool, i32)> = claimed.iter().map(|m| (m.parked, m.lease.attempt)).collect();
    assert_eq!(shape, [(true, 0), (false, 1), (true, 0)]);
    assert_eq!(store.message_parked_counts().await.unwrap(), vec![("slow".to_owned(), 2)]);
    // The leased one completes as usual; the parked ones come back through the parked claim.
    let leased: Vec<_> = claimed.iter().filter(|m| !m.parked).map(|m| m.lease).collect();
    assert_eq!(store.message_complete_many(worker, &leased).await.unwrap().len(), 1);
    let back = store.message_claim_parked(&claim(worker, &qs, 10), "slow").await.unwrap();
    assert_eq!(back.iter().map(|m| (m.parked, m.lease.attempt)).collect::<Vec<_>>(), [(false, 1), (false, 1)]);
    let rest = store.message_claim(&claim(worker, &qs, 10)).await.unwrap();
    assert_eq!(rest.len(), 1, "the other fast message, never parked");
}

#[tokio::test]
async fn a_parked_claim_skips_a_paused_queue_until_it_is_resumed() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let worker = register(&store, &["slow"]).await;
    let qs = queues();
    for _ in 0..4 {
        store.message_insert(&message("slow")).await.unwrap();
    }
    let claimed = store.message_claim(&claim(worker, &qs, 4)).await.unwrap();
    assert_eq!(store.message_park_many(worker, &parks(&claimed)).await.unwrap().len(), 4);
    // Two of them redelivered: the suspects' branch of the claim must skip the queue too.
    db.client().await.batch_execute("update celeriac.message set redeliveries = 1 where id in (select id from celeriac.message order by id limit 2)").await.unwrap();
    assert!(store.queue_pause(QUEUES[0], None).await.unwrap());
    let params = ClaimParams { suspects: 4, ..claim(worker, &qs, 4) };
    assert!(store.message_claim_parked(&params, "slow").await.unwrap().is_empty());
    assert_eq!(store.message_parked_counts().await.unwrap(), vec![("slow".to_owned(), 4)]);

    assert!(store.queue_resume(QUEUES[0]).await.unwrap());
    let back = store.message_claim_parked(&params, "slow").await.unwrap();
    assert_eq!(back.len(), 4, "fresh and redelivered parked messages come back once resumed");
}
