//! Result tables (Celery's `celery_taskmeta`, django-celery-results') and finishing a message
//! with its result and follow-up messages, against a real PostgreSQL.

use celeriac_protocol::{encode_task, Map, TaskOptions, Value};
use celeriac_store::{
    testing::TestDatabase, ClaimParams, Finish, NewMessage, ResultRow, ResultTableConfig, Store, WorkerInfo,
};
use chrono::Utc;
use uuid::Uuid;

fn message(name: &str, id: &str) -> NewMessage {
    let opts = TaskOptions { task_id: Some(id.into()), ..TaskOptions::default() };
    encode_task(name, &[Value::Int(1)], &Map::new(), &opts, Utc::now()).unwrap().into()
}

async fn worker(store: &Store) -> Uuid {
    let info = WorkerInfo {
        id: Uuid::new_v4(),
        hostname: "results@test".into(),
        pid: 1,
        queues: vec!["celery".into()],
        concurrency: 1,
        lease_seconds: 30.0,
        rate_limited: Vec::new(),
        kind: celeriac_store::ConsumerKind::Worker,
    };
    store.worker_register(&info).await.unwrap();
    info.id
}

/// Claims (up to) two messages of queue `celery` for `me`.
async fn claim_two(store: &Store, me: Uuid) -> Vec<celeriac_store::ClaimedMessage> {
    let queues = vec!["celery".to_owned()];
    let params = ClaimParams {
        worker_id: me,
        queues: &queues,
        limit: 2,
        lease_seconds: 30.0,
        after: None,
        suspects: 2,
        park: &[],
    };
    store.message_claim(&params).await.unwrap()
}

fn row(id: &str, status: &str, result: &[u8]) -> ResultRow {
    ResultRow {
        task_id: id.into(),
        status: status.into(),
        result: Some(result.to_vec()),
        date_done: Some(Utc::now()),
        ..ResultRow::default()
    }
}

#[tokio::test]
async fn results_commit_with_the_deletion_and_never_for_a_lost_lease() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let table = store.result_table_open(&ResultTableConfig::celery()).await.unwrap();
    // Opened twice (two workers): found, not created again.
    let again = store.result_table_open(&ResultTableConfig::celery()).await.unwrap();
    assert_eq!(again.extended(), table.extended());

    store.message_insert_many(&[message("t.a", "a"), message("t.b", "b")]).await.unwrap();
    let me = worker(&store).await;
    let claimed = claim_two(&store, me).await;
    assert_eq!(claimed.len(), 2);
    let (a, b) = (claimed[0].lease, claimed[1].lease);
    // b's lease is lost (another attempt holds it): nothing of b's finish may be written.
    let lost = celeriac_store::Lease { id: b.id, attempt: b.attempt + 1 };
    let finishes = [
        Finish { lease: a, result: Some(row("a", "SUCCESS", b"4")), publish: vec![message("t.next", "a-next")] },
        Finish { lease: lost, result: Some(row("b", "SUCCESS", b"5")), publish: vec![message("t.next", "b-next")] },
    ];
    let refs: Vec<&Finish> = finishes.iter().collect();
    let done = store.message_finish_many(me, Some(&table), &refs).await.unwrap();
    assert_eq!(done, vec![a.id]);
    assert_eq!(store.result_get(&table, "a").await.unwrap(), Some(("SUCCESS".into(), Some(b"4".to_vec()))));
    assert_eq!(store.result_get(&table, "b").await.unwrap(), None);
    let client = db.client().await;
    let published: Vec<String> = client
        .query("select task_id from celeriac.message where task_name = 't.next'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(published, ["a-next"]);

    // Upserts: a later state replaces an earlier one, but never a stored SUCCESS; ids come from
    // Celery's sequence.
    store.result_store_many(&table, &[row("c", "STARTED", b"{}"), row("c", "RETRY", b"{}")]).await.unwrap();
    assert_eq!(store.result_get(&table, "c").await.unwrap().unwrap().0, "RETRY");
    store.result_store_many(&table, &[row("a", "FAILURE", b"{}")]).await.unwrap();
    assert_eq!(store.result_get(&table, "a").await.unwrap().unwrap().0, "SUCCESS");
    let got = store.result_get_many(&table, &["c".into(), "zz".into(), "a".into()]).await.unwrap();
    assert_eq!(
        got.iter().map(|g| g.as_ref().map(|(s, _)| s.as_str())).collect::<Vec<_>>(),
        [Some("RETRY"), None, Some("SUCCESS")]
    );
    let ids: Vec<i32> = client
        .query("select id from celery_taskmeta order by id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids.len(), 2);
    let last: i64 = client.query_one("select last_value from task_id_sequence", &[]).await.unwrap().get(0);
    assert!(i64::from(*ids.last().unwrap()) <= last);
}

#[tokio::test]
async fn a_missing_django_table_is_a_clear_error_and_custom_names_are_quoted() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let err = store.result_table_open(&ResultTableConfig::django()).await.unwrap_err();
    assert!(err.to_string().contains("manage.py migrate django_celery_results"), "{err}");
    let config = ResultTableConfig {
        table: "odd \"name\"".into(),
        schema: Some("results schema".into()),
        ..ResultTableConfig::celery()
    };
    let table = store.result_table_open(&config).await.unwrap();
    store.result_store_many(&table, &[row("x", "SUCCESS", b"1")]).await.unwrap();
    assert_eq!(store.result_get(&table, "x").await.unwrap().unwrap().0, "SUCCESS");
}

/// Celery's `apply_chord` for the database backends: `celery.chord_unlock(group_id, body,
/// result=[…header result tuples…])`, a second later.
fn unlock(group: &str, header: Vec<Value>) -> NewMessage {
    let mut kwargs = Map::new();
    kwargs.insert("interval".into(), Value::Null);
    kwargs.insert("max_retries".into(), Value::Null);
    kwargs.insert("result".into(), Value::List(header));
    let mut body = Map::new();
    body.insert("task".into(), Value::Str("t.body".into()));
    let opts = TaskOptions { countdown: Some(1.0), ..TaskOptions::default() };
    let args = [Value::Str(group.into()), Value::Map(body)];
    encode_task("celery.chord_unlock", &args, &kwargs, &opts, Utc::now()).unwrap().into()
}

fn member(id: &str) -> Value {
    Value::List(vec![Value::List(vec![Value::Str(id.into()), Value::Null]), Value::Null])
}

#[tokio::test]
async fn chords_are_counted_by_their_members_results_and_release_their_unlock_once() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let client = db.client().await;
    let table = store.result_table_open(&ResultTableConfig::celery()).await.unwrap();
    let parked = |group: &'static str| {
        let client = &client;
        async move {
            let rows = client
                .query(
                    "select m.eta > now() + interval '30 seconds' from celeriac.message m
                     join celeriac.chord c on c.unlock_id = m.id where c.group_id = $1",
                    &[&group],
                )
                .await
                .unwrap();
            rows.first().map(|r| r.get::<_, bool>(0))
        }
    };
    let remaining = |group: &'static str| {
        let client = &client;
        async move {
            client
                .query_opt("select remaining from celeriac.chord where group_id = $1", &[&group])
                .await
                .unwrap()
                .map(|r| r.get::<_, i32>(0))
        }
    };

    // Before any result table counts chords, an unlock is left as Celery sent it.
    store.message_insert(&unlock("g0", vec![member("z")])).await.unwrap();
    assert_eq!(remaining("g0").await, None);
    let queues = ["celery".to_owned()];
    assert!(store.chord_counting_install(&table, &queues).await.unwrap());
    assert!(!store.chord_counting_install(&table, &queues).await.unwrap(), "installed once");
    // An unlock sent to a queue no counting worker consumes (another app's) is left alone.
    let mut elsewhere = unlock("g-elsewhere", vec![member("y")]);
    elsewhere.queue = "other-app".into();
    store.message_insert(&elsewhere).await.unwrap();
    assert_eq!(remaining("g-elsewhere").await, None);
    // A retry of an unlock whose chord was never registered (sent before the trigger existed)
    // registers nothing: its members may be done already.
    let mut retried = unlock("g-late", vec![member("x")]);
    retried.payload =
        String::from_utf8(retried.payload).unwrap().replace("\"retries\": 0", "\"retries\": 1").into_bytes();
    assert!(String::from_utf8_lossy(&retried.payload).contains("\"retries\": 1"));
    store.message_insert(&retried).await.unwrap();
    assert_eq!(remaining("g-late").await, None);

    // A header of a, b and a nested group holding c: three members, the unlock parked.
    let nested =
        Value::List(vec![Value::List(vec![Value::Str("g-inner".into()), Value::Null]), Value::List(vec![member("c")])]);
    store.message_insert(&unlock("g1", vec![member("a"), member("b"), nested])).await.unwrap();
    assert_eq!(remaining("g1").await, Some(3));
    assert_eq!(parked("g1").await, Some(true));

    // RETRY and STARTED do not count; each member's first ready state counts once.
    store.result_store_many(&table, &[row("a", "STARTED", b"{}"), row("b", "RETRY", b"{}")]).await.unwrap();
    assert_eq!(remaining("g1").await, Some(3));
    store.result_store_many(&table, &[row("a", "SUCCESS", b"1"), row("b", "FAILURE", b"{}")]).await.unwrap();
    store.result_store_many(&table, &[row("b", "FAILURE", b"{}")]).await.unwrap();
    assert_eq!(remaining("g1").await, Some(1));
    assert_eq!(parked("g1").await, Some(true), "parked until the last member");

    // The last member releases the unlock: due now.
    store.result_store_many(&table, &[row("c", "REVOKED", b"{}")]).await.unwrap();
    assert_eq!(remaining("g1").await, Some(0));
    assert_eq!(parked("g1").await, Some(false));
    // A later unlock of the released chord (a retry Celery publishes) is not parked again.
    store.message_insert(&unlock("g1", vec![member("a"), member("b")])).await.unwrap();
    let late: i64 = client
        .query_one(
            "select count(*) from celeriac.message where task_name = 'celery.chord_unlock'
             and eta > now() + interval '30 seconds'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(late, 0);

    // An unlock re-scheduled in place (the worker's own retry) while its chord counts is parked
    // again.
    let id = store.message_insert(&unlock("g2", vec![member("d")])).await.unwrap();
    client
        .execute("update celeriac.message set eta = now() + interval '1 second' where id = $1", &[&id])
        .await
        .unwrap();
    assert_eq!(parked("g2").await, Some(true));
    store.result_store_many(&table, &[row("d", "SUCCESS", b"1")]).await.unwrap();
    assert_eq!(parked("g2").await, Some(false));

    // A body the trigger cannot read (not JSON) is never refused: it runs as Celery's unlock.
    let mut odd = unlock("g3", vec![member("e")]);
    odd.payload = b"{not json".to_vec();
    store.message_insert(&odd).await.unwrap();
    assert_eq!(remaining("g3").await, None);
}

#[tokio::test]
async fn of_two_finishes_of_one_task_the_one_still_leased_stores_its_result() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let table = store.result_table_open(&ResultTableConfig::celery()).await.unwrap();
    // Two messages of one task id (a producer that published it twice).
    store.message_insert_many(&[message("t.a", "same"), message("t.a", "same")]).await.unwrap();
    let me = worker(&store).await;
    let claimed = claim_two(&store, me).await;
    let (held, lost) = (claimed[0].lease, claimed[1].lease);
    let lost = celeriac_store::Lease { id: lost.id, attempt: lost.attempt + 1 };
    // The later one in the batch lost its lease: the earlier one's result is stored.
    let finishes = [
        Finish { lease: held, result: Some(row("same", "SUCCESS", b"1")), publish: Vec::new() },
        Finish { lease: lost, result: Some(row("same", "FAILURE", b"{}")), publish: Vec::new() },
    ];
    let refs: Vec<&Finish> = finishes.iter().collect();
    assert_eq!(store.message_finish_many(me, Some(&table), &refs).await.unwrap(), vec![held.id]);
    assert_eq!(store.result_get(&table, "same").await.unwrap(), Some(("SUCCESS".into(), Some(b"1".to_vec()))));
    // Both held: the last one wins, as before.
    store.message_insert_many(&[message("t.b", "twice"), message("t.b", "twice")]).await.unwrap();
    let claimed = claim_two(&store, me).await;
    let finishes = [
        Finish { lease: claimed[0].lease, result: Some(row("twice", "STARTED", b"{}")), publish: Vec::new() },
        Finish { lease: claimed[1].lease, result: Some(row("twice", "FAILURE", b"{}")), publish: Vec::new() },
    ];
    let refs: Vec<&Finish> = finishes.iter().collect();
    assert_eq!(store.message_finish_many(me, Some(&table), &refs).await.unwrap().len(), 2);
    assert_eq!(store.result_get(&table, "twice").await.unwrap().unwrap().0, "FAILURE");
}
