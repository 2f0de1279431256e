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
    };
    store.worker_register(&info).await.unwrap();
    info.id
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
    let queues = vec!["celery".to_owned()];
    let claimed = store
        .message_claim(&ClaimParams {
            worker_id: me,
            queues: &queues,
            limit: 2,
            lease_seconds: 30.0,
            after: None,
            suspects: 2,
            park: &[],
        })
        .await
        .unwrap();
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
