//! Paused queues, bounded counts and searches against a real PostgreSQL (one database per test).

use std::{sync::Arc, time::Duration};

use celeriac_protocol::{encode_task, Map, TaskOptions, Value};
use celeriac_store::{
    testing::TestDatabase, ClaimParams, DeadLetterSearch, MessageFilter, MessageState, TaskCountDelta, Wakeup,
    COUNT_BOUND,
};
use chrono::Utc;
use uuid::Uuid;

fn message(queue: &str, name: &str, countdown: Option<f64>) -> celeriac_store::NewMessage {
    let opts = TaskOptions { queue: queue.into(), countdown, ..TaskOptions::default() };
    encode_task(name, &[Value::Int(1)], &Map::new(), &opts, Utc::now()).unwrap().into()
}

fn claim(worker: Uuid, queues: &[String], limit: i64, suspects: i64) -> ClaimParams<'_> {
    ClaimParams { worker_id: worker, queues, limit, lease_seconds: 30.0, after: None, suspects, park: &[] }
}

#[tokio::test]
async fn a_paused_queue_is_not_claimed_until_resumed_and_resuming_wakes_its_workers() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stop = Arc::new(tokio::sync::Notify::new());
    let listener = store.listener();
    let stopped = stop.clone();
    let task = tokio::spawn(async move {
        listener.run(move |w| drop(tx.send(w)), async move { stopped.notified().await }).await;
    });
    let recv = async |rx: &mut tokio::sync::mpsc::UnboundedReceiver<Wakeup>| {
        tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("a wake-up").expect("listener alive")
    };
    assert_eq!(recv(&mut rx).await, Wakeup::Any);

    for _ in 0..3 {
        store.message_insert(&message("paused", "t.a", None)).await.unwrap();
        store.message_insert(&message("open", "t.a", None)).await.unwrap();
    }
    assert!(store.queue_pause("paused", Some("deploy")).await.unwrap());
    assert!(!store.queue_pause("paused", Some("again")).await.unwrap(), "pausing twice changes nothing");
    let paused = store.queue_paused_list().await.unwrap();
    assert_eq!(paused.len(), 1);
    assert_eq!(paused[0].reason.as_deref(), Some("deploy"));

    // Neither fresh messages nor suspects (redelivered ones) of the paused queue are claimed.
    let worker = Uuid::new_v4();
    let queues = vec!["paused".to_owned(), "open".to_owned()];
    let claimed = store.message_claim(&claim(worker, &queues, 10, 10)).await.unwrap();
    assert_eq!(claimed.len(), 3);
    assert!(claimed.iter().all(|c| c.queue == "open"));
    let mut client = db.client().await;
    client.execute("update celeriac.message set redeliveries = 1 where queue = 'paused'", &[]).await.unwrap();
    assert!(store.message_claim(&claim(worker, &queues, 10, 10)).await.unwrap().is_empty());
    // The six inserts' own wake-ups, then the resume's.
    for _ in 0..6 {
        recv(&mut rx).await;
    }

    assert!(store.queue_resume("paused").await.unwrap());
    assert!(!store.queue_resume("paused").await.unwrap());
    assert_eq!(recv(&mut rx).await, Wakeup::Queues(vec!["paused".into()]));
    let claimed = store.message_claim(&claim(worker, &queues, 10, 10)).await.unwrap();
    assert_eq!(claimed.len(), 3);
    assert!(claimed.iter().all(|c| c.queue == "paused"));

    stop.notify_one();
    task.await.unwrap();
    let _ = client.transaction().await;
}

#[tokio::test]
async fn queue_counts_are_exact_up_to_the_bound_and_estimated_beyond() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let client = db.client().await;
    // Past the bound, with plain inserts (the envelope does not matter to counting).
    client
        .execute(
            "insert into celeriac.message (queue, task_name, payload)
             select 'big', 't.a', '\\x00' from generate_series(1, $1::int8)",
            &[&(COUNT_BOUND + 5_000)],
        )
        .await
        .unwrap();
    client.execute("analyze celeriac.message", &[]).await.unwrap();
    for _ in 0..4 {
        store.message_insert(&message("small", "t.b", None)).await.unwrap();
    }
    store.message_insert(&message("small", "t.b", Some(3600.0))).await.unwrap();
    let worker = Uuid::new_v4();
    let queues = vec!["small".to_owned()];
    assert_eq!(store.message_claim(&claim(worker, &queues, 1, 0)).await.unwrap().len(), 1);
    store.queue_pause("idle", None).await.unwrap();

    let names = store.queue_names().await.unwrap();
    assert_eq!(names, vec!["big".to_owned(), "idle".to_owned(), "small".to_owned()]);

    let small = store.queue_overview("small").await.unwrap();
    assert_eq!((small.ready.value, small.ready.exact), (3, true));
    assert_eq!((small.delayed.value, small.delayed.exact), (1, true));
    assert_eq!((small.leased.value, small.leased.exact), (1, true));
    assert!(small.oldest_ready_age.is_some_and(|age| age >= 0.0));
    assert!(small.paused.is_none());

    let big = store.queue_overview("big").await.unwrap();
    assert!(!big.ready.exact, "over the bound: estimated");
    // The planner's estimate after analyze is close to the real number.
    let real = COUNT_BOUND + 5_000;
    assert!((big.ready.value - real).abs() < real / 5, "estimate {} for {real}", big.ready.value);
    assert_eq!((big.delayed.value, big.delayed.exact), (0, true));

    let idle = store.queue_overview("idle").await.unwrap();
    assert!(idle.paused.is_some());
    assert_eq!(idle.ready.value, 0);
    assert_eq!(idle.oldest_ready_age, None);
}

#[tokio::test]
async fn task_counts_add_up_per_minute_and_task() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let delta = |queue: &str, name: &str, s: i64, f: i64| TaskCountDelta {
        queue: queue.into(),
        task_name: name.into(),
        succeeded: s,
        failed: f,
        retried: 0,
        other: 1,
    };
    store.task_count_add(&[delta("q", "t.a", 5, 1), delta("q", "t.b", 2, 0)]).await.unwrap();
    store.task_count_add(&[delta("q", "t.a", 3, 2)]).await.unwrap();
    store.task_count_add(&[]).await.unwrap();
    let series = store.task_count_series(60, None).await.unwrap();
    let total: (i64, i64, i64) =
        series.iter().fold((0, 0, 0), |acc, m| (acc.0 + m.succeeded, acc.1 + m.failed, acc.2 + m.other));
    assert_eq!(total, (10, 3, 3));
    assert!(store.task_count_series(60, Some("elsewhere")).await.unwrap().is_empty());
    let by_task = store.task_count_by_task(60).await.unwrap();
    assert_eq!(by_task[0].0, "t.a");
    assert_eq!(by_task[0].2, [8, 3, 0, 2]);
    assert_eq!(store.task_count_prune(Duration::from_secs(3600)).await.unwrap(), 0);
}

#[tokio::test]
async fn searches_page_by_keyset_and_filter() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let mut ids = Vec::new();
    for i in 0..7 {
        let name = if i % 2 == 0 { "t.even" } else { "t.odd" };
        ids.push(store.message_insert(&message("s", name, None)).await.unwrap());
    }
    store.message_insert(&message("s", "t.even", Some(3600.0))).await.unwrap();
    let filter =
        MessageFilter { task_name: Some("t.even".into()), state: Some(MessageState::Ready), ..Default::default() };
    let first = store.message_search(&filter, None, 3).await.unwrap().unwrap();
    assert_eq!(first.iter().map(|m| m.id).collect::<Vec<_>>(), vec![ids[6], ids[4], ids[2]]);
    let next = store.message_search(&filter, Some(first[2].id), 3).await.unwrap().unwrap();
    assert_eq!(next.iter().map(|m| m.id).collect::<Vec<_>>(), vec![ids[0]]);
    let delayed = MessageFilter { state: Some(MessageState::Delayed), ..Default::default() };
    assert_eq!(store.message_search(&delayed, None, 10).await.unwrap().unwrap().len(), 1);

    let one = store.message_get(ids[1]).await.unwrap().unwrap();
    assert_eq!(one.task_name.as_deref(), Some("t.odd"));
    assert!(one.payload.is_some_and(|p| !p.is_empty()));
    let task_id = one.task_id.clone().unwrap();
    assert_eq!(store.message_ids_of_task(&task_id, true).await.unwrap(), Some(vec![ids[1]]));
    assert_eq!(store.message_ids_of_task(&task_id, false).await.unwrap(), Some(vec![]), "not delayed");
    assert!(store.message_delete_unheld(ids[1]).await.unwrap());
    assert!(store.message_get(ids[1]).await.unwrap().is_none());

    let client = db.client().await;
    client
        .execute(
            "insert into celeriac.dead_letter (queue, task_name, task_id, payload, reason_code, reason)
             select 'dq', 't.x', 'id-' || g, '\\x01', case when g % 2 = 0 then 'rejected' else 'undecodable' end, 'r'
             from generate_series(1, 5) g",
            &[],
        )
        .await
        .unwrap();
    let search = DeadLetterSearch { reason_code: Some("rejected".into()), ..Default::default() };
    let dead = store.dead_letter_search(&search, None, 10).await.unwrap().unwrap();
    assert_eq!(dead.iter().map(|d| d.task_id.clone().unwrap()).collect::<Vec<_>>(), vec!["id-4", "id-2"]);
    let reasons = store.dead_letter_reasons().await.unwrap().unwrap();
    assert_eq!(reasons, vec!["rejected".to_owned(), "undecodable".to_owned()]);
    assert_eq!(store.dead_letter_get(dead[0].id).await.unwrap().unwrap().task_id.as_deref(), Some("id-4"));
}
