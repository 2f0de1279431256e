//! The scheduler (Beat replacement) against a real PostgreSQL: the tick's exactly-once per
//! slot with concurrent tickers, lease fencing, baselines, catch-up and overlap policies,
//! invalid rows, and leader failover with several scheduler instances.

use std::time::Duration;

use celeriac::scheduler::{self, fire, plan::plan, SchedulerConfig};
use celeriac_store::{service::Supervisor, testing::TestDatabase, ScheduleDefinition, Store, TickReport, When};
use common::wait_for;
use uuid::Uuid;

mod common;

fn definition(name: &str, when: When) -> ScheduleDefinition {
    ScheduleDefinition {
        args_json: "[1]".to_owned(),
        options_json: r#"{"queue": "periodic"}"#.to_owned(),
        ..ScheduleDefinition::new(name, "proj.tick", when)
    }
}

fn every_minute() -> When {
    When::Crontab(["*".into(), "*".into(), "*".into(), "*".into(), "*".into()])
}

async fn add(store: &Store, d: &ScheduleDefinition) -> i64 {
    store.schedule_add(d, "celeriac", scheduler::ramp_bucket(&d.name)).await.unwrap()
}

async fn tick(store: &Store, holder: Uuid, term: i64) -> TickReport {
    tick_result(store, holder, term).await.unwrap()
}

async fn lead(store: &Store) -> (Uuid, i64) {
    let holder = Uuid::new_v4();
    // Long enough that a paused machine (a VM's clock jumps on) does not end it mid-test.
    let lease = store.lease_acquire("scheduler", holder, "test", 3600.0).await.unwrap().expect("lease free");
    (holder, lease.term)
}

async fn scalar(db: &TestDatabase, sql: &str) -> i64 {
    db.client().await.query_one(sql, &[]).await.unwrap().get(0)
}

/// Adds `n` every-minute schedules named `{prefix}{i}`, all due now (their slot: the current
/// whole minute).
async fn add_due(db: &TestDatabase, store: &Store, prefix: &str, n: usize) {
    for i in 0..n {
        add(store, &definition(&format!("{prefix}{i:03}"), every_minute())).await;
    }
    db.client()
        .await
        .execute(
            "update celeriac.schedule set next_run_at = date_trunc('minute', now()) where starts_with(name, $1)",
            &[&prefix],
        )
        .await
        .unwrap();
}

/// Messages per (schedule name, slot) header, counted over the queue.
const DUPLICATES_SQL: &str = "select count(*) from (
    select convert_from(payload, 'UTF8')::jsonb -> 'headers' ->> 'periodic_task_name' as name,
           convert_from(payload, 'UTF8')::jsonb -> 'headers' ->> 'periodic_task_slot' as slot
    from celeriac.message group by 1, 2 having count(*) > 1) d";

#[tokio::test]
async fn concurrent_ticks_fire_every_due_slot_exactly_once() {
    let db = TestDatabase::new().await;
    let store = db.store();
    add_due(&db, &store, "s", 200).await;
    let (holder, term) = lead(&store).await;
    // Eight tickers at once, each in batches of 25, as if fencing had let all of them through.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut fired = 0;
            for _ in 0..20 {
                let report = store
                    .schedule_tick(holder, term, 25, Duration::from_secs(30), |s, now| {
                        plan(s, now, |s, slot| fire::build(s, slot, now))
                    })
                    .await
                    .unwrap();
                assert_eq!(report.refused, 0);
                assert!(!report.not_leader, "the lease was lost: {report:?}");
                fired += report.fired;
            }
            fired
        }));
    }
    let mut fired = 0;
    for t in tasks {
        fired += t.await.unwrap();
    }
    let left: Vec<(String, Option<chrono::DateTime<chrono::Utc>>, chrono::DateTime<chrono::Utc>)> = db
        .client()
        .await
        .query("select name, next_run_at, now() from celeriac.schedule where total_run_count = 0 limit 3", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(fired, 200, "not fired: {left:?}");
    assert_eq!(scalar(&db, "select count(*) from celeriac.message").await, 200);
    assert_eq!(scalar(&db, DUPLICATES_SQL).await, 0);
    assert_eq!(scalar(&db, "select count(*) from celeriac.schedule_fire").await, 200);
    assert_eq!(
        scalar(&db, "select count(*) from celeriac.schedule where total_run_count = 1 and next_run_at > now()").await,
        200
    );
    // The message is the one Beat would send, with the schedule's name and slot in its headers.
    let row = db
        .client()
        .await
        .query_one(
            "select queue, task_name, convert_from(payload, 'UTF8') from celeriac.message m
             join celeriac.schedule s on s.last_message_id = m.id where s.name = 's007'",
            &[],
        )
        .await
        .unwrap();
    let envelope: serde_json::Value = serde_json::from_str(row.get(2)).unwrap();
    assert_eq!((row.get::<_, String>(0), row.get::<_, String>(1)), ("periodic".to_owned(), "proj.tick".to_owned()));
    assert_eq!(envelope["headers"]["periodic_task_name"], "s007");
    assert!(envelope["headers"]["periodic_task_slot"].as_str().unwrap().ends_with(":00Z"), "{envelope}");
}

#[tokio::test]
async fn only_the_lease_holder_at_its_term_fires() {
    let db = TestDatabase::new().await;
    let store = db.store();
    add(&store, &definition("a", every_minute())).await;
    db.client()
        .await
        .execute("update celeriac.schedule set next_run_at = now() - interval '1 second'", &[])
        .await
        .unwrap();
    let (holder, term) = lead(&store).await;
    // Someone else, or the holder at another term, is fenced off.
    assert!(tick(&store, Uuid::new_v4(), term).await.not_leader);
    assert!(tick(&store, holder, term + 1).await.not_leader);
    assert!(store.lease_acquire("scheduler", Uuid::new_v4(), "other", 60.0).await.unwrap().is_none());
    // The lease runs out; another process takes it at a higher term; the old holder is stale.
    db.client().await.execute("update celeriac.lease set expires_at = now() - interval '1 second'", &[]).await.unwrap();
    assert!(store.lease_renew("scheduler", holder, term, 60.0).await.unwrap().is_none());
    let other = Uuid::new_v4();
    let taken = store.lease_acquire("scheduler", other, "other", 60.0).await.unwrap().unwrap();
    assert_eq!(taken.term, term + 1);
    assert!(tick(&store, holder, term).await.not_leader);
    assert_eq!(scalar(&db, "select count(*) from celeriac.message").await, 0);
    assert_eq!(tick(&store, other, taken.term).await.fired, 1);
    // Released: the next candidate gets it at once.
    assert!(store.lease_release("scheduler", other, taken.term).await.unwrap());
    assert_eq!(store.lease_acquire("scheduler", holder, "again", 60.0).await.unwrap().unwrap().term, term + 2);
}

#[tokio::test]
async fn a_new_or_edited_schedule_records_a_baseline_and_fires_nothing() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let d = definition("a", When::Interval { seconds: 3600.0, relative: false });
    add(&store, &d).await;
    let (holder, term) = lead(&store).await;
    let report = tick(&store, holder, term).await;
    assert_eq!((report.due, report.fired, report.quiet), (1, 0, 1));
    let s = store.schedule_get("a").await.unwrap();
    let next = s.next_run_at.expect("baseline");
    let now = report.db_now.unwrap();
    assert_eq!((next - now).num_seconds(), 3600);
    // Not due: nothing happens, and the tick says when to look again.
    let report = tick(&store, holder, term).await;
    assert_eq!((report.due, report.next_due), (0, Some(next)));
    // An edit of the timing re-baselines (django-celery-beat #683: edits must not fire at once).
    store.schedule_update(&ScheduleDefinition { when: every_minute(), ..d.clone() }).await.unwrap();
    assert_eq!(store.schedule_get("a").await.unwrap().next_run_at, None);
    // An edit of the arguments does not.
    let report = tick(&store, holder, term).await;
    assert_eq!(report.fired, 0);
    let next = store.schedule_get("a").await.unwrap().next_run_at;
    store.schedule_update(&ScheduleDefinition { args_json: "[2]".into(), when: every_minute(), ..d }).await.unwrap();
    assert_eq!(store.schedule_get("a").await.unwrap().next_run_at, next);
    // Pause, resume: re-baselined, never a missed slot at once.
    store.schedule_set_paused("a", true, Some("maintenance")).await.unwrap();
    db.client()
        .await
        .execute("update celeriac.schedule set next_run_at = now() - interval '1 hour'", &[])
        .await
        .unwrap();
    assert_eq!(tick(&store, holder, term).await.due, 0);
    store.schedule_set_paused("a", false, None).await.unwrap();
    let report = tick(&store, holder, term).await;
    assert_eq!((report.due, report.fired), (1, 0));
    assert_eq!(scalar(&db, "select count(*) from celeriac.message").await, 0);
}

#[tokio::test]
async fn missed_slots_follow_the_catch_up_policy() {
    let db = TestDatabase::new().await;
    let store = db.store();
    // A minute half an hour away from now's, so the latest missed slot is ~30 minutes old.
    let minute: i64 = (scalar(&db, "select extract(minute from now())::int8").await + 30) % 60;
    let hourly = When::Crontab([minute.to_string(), "*".into(), "*".into(), "*".into(), "*".into()]);
    let policies: [(&str, &str, Option<f64>, i32); 5] = [
        ("latest", "latest", None, 100),
        ("latest-window", "latest", Some(600.0), 100),
        ("skip", "skip", None, 100),
        ("all-5", "all", None, 5),
        ("all-window", "all", Some(3.0 * 3600.0), 100),
    ];
    for (name, catchup, window, max) in policies {
        let d = ScheduleDefinition {
            catchup: catchup.into(),
            catchup_window_seconds: window,
            catchup_max: max,
            ..definition(name, hourly.clone())
        };
        add(&store, &d).await;
    }
    // Down for three days: the next run is the first slot after three days ago.
    db.client()
        .await
        .execute(
            "update celeriac.schedule set next_run_at =
                 date_trunc('hour', now() - interval '3 days') + make_interval(mins => $1::int4)
                 + case when date_trunc('hour', now() - interval '3 days') + make_interval(mins => $1::int4)
                             <= now() - interval '3 days' then interval '1 hour' else interval '0' end",
            &[&i32::try_from(minute).unwrap()],
        )
        .await
        .unwrap();
    let (holder, term) = lead(&store).await;
    let report = tick(&store, holder, term).await;
    assert_eq!(report.due, 5);
    let fires = |name: &'static str| {
        let db = &db;
        async move {
            scalar(
                db,
                &format!(
                    "select count(*) from celeriac.schedule_fire f join celeriac.schedule s on s.id = f.schedule_id
                     where s.name = '{name}'"
                ),
            )
            .await
        }
    };
    assert_eq!(fires("latest").await, 1);
    assert_eq!(fires("latest-window").await, 0);
    assert_eq!(fires("skip").await, 0);
    assert_eq!(fires("all-5").await, 5);
    // Slots within three hours: 3 (or 2, when the hour's slot is still ahead in the window).
    let in_window = fires("all-window").await;
    assert!((2..=3).contains(&in_window), "{in_window}");
    // `latest` fired the latest slot; `all` the most recent five, one hour apart, ending there.
    let slots: Vec<chrono::DateTime<chrono::Utc>> = db
        .client()
        .await
        .query(
            "select f.slot_at from celeriac.schedule_fire f join celeriac.schedule s on s.id = f.schedule_id
             where s.name = 'all-5' order by f.slot_at",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let latest = store.schedule_get("latest").await.unwrap().last_slot_at.unwrap();
    assert_eq!(slots.last(), Some(&latest));
    assert!(slots.windows(2).all(|w| (w[1] - w[0]).num_minutes() == 60), "{slots:?}");
    let now = report.db_now.unwrap();
    assert!((now - latest).num_minutes() < 60 && latest < now);
    // Every row's next run is its first slot after now.
    for s in store.schedule_list().await.unwrap() {
        let next = s.next_run_at.unwrap();
        assert!(next > now && (next - now).num_minutes() < 60, "{}: {next}", s.definition.name);
    }
}

#[tokio::test]
async fn invalid_rows_are_disabled_with_a_reason_and_the_others_still_fire() {
    let db = TestDatabase::new().await;
    let store = db.store();
    add(
        &store,
        &definition("bad-minute", When::Crontab(["61".into(), "*".into(), "*".into(), "*".into(), "*".into()])),
    )
    .await;
    add(&store, &ScheduleDefinition { tz: "Mars/Olympus_Mons".into(), ..definition("bad-zone", every_minute()) }).await;
    add(&store, &definition("feb-30", When::Crontab(["0".into(), "0".into(), "*".into(), "30".into(), "2".into()])))
        .await;
    add(&store, &ScheduleDefinition { args_json: "{}".into(), ..definition("bad-args", every_minute()) }).await;
    add(&store, &definition("good", every_minute())).await;
    db.client()
        .await
        .execute("update celeriac.schedule set next_run_at = date_trunc('minute', now())", &[])
        .await
        .unwrap();
    let (holder, term) = lead(&store).await;
    let report = tick(&store, holder, term).await;
    assert_eq!(report.fired, 1);
    let mut disabled: Vec<&str> = report.disabled.iter().map(|(n, _)| n.as_str()).collect();
    disabled.sort_unstable();
    assert_eq!(disabled, ["bad-args", "bad-minute", "bad-zone", "feb-30"]);
    for name in disabled {
        let s = store.schedule_get(name).await.unwrap();
        assert!(!s.enabled && s.disabled_reason.is_some(), "{s:?}");
    }
    let reason = |name| report.disabled.iter().find(|(n, _)| n == name).unwrap().1.clone();
    assert!(reason("bad-minute").contains("61"), "{}", reason("bad-minute"));
    assert!(reason("bad-zone").contains("Mars/Olympus_Mons"), "{}", reason("bad-zone"));
    assert!(reason("bad-args").contains("args"), "{}", reason("bad-args"));
    // Logged once: a disabled row is not looked at again.
    assert_eq!(tick(&store, holder, term).await.due, 0);
}

#[tokio::test]
async fn overlap_skip_waits_for_the_previous_fire() {
    let db = TestDatabase::new().await;
    let store = db.store();
    add(&store, &ScheduleDefinition { overlap: "skip".into(), ..definition("slow", every_minute()) }).await;
    add(&store, &definition("fast", every_minute())).await;
    let due = "update celeriac.schedule set next_run_at = date_trunc('minute', now())";
    db.client().await.execute(due, &[]).await.unwrap();
    let (holder, term) = lead(&store).await;
    assert_eq!(tick(&store, holder, term).await.fired, 2);
    // Its message is still queued: the next slot of `slow` is skipped, `fast` fires.
    db.client().await.execute("delete from celeriac.schedule_fire", &[]).await.unwrap();
    db.client().await.execute(due, &[]).await.unwrap();
    let report = tick(&store, holder, term).await;
    assert_eq!(report.fired, 1);
    assert!(store.schedule_get("slow").await.unwrap().next_run_at.unwrap() > report.db_now.unwrap());
    // Done (the message is gone): it fires again.
    db.client().await.execute("delete from celeriac.message", &[]).await.unwrap();
    db.client().await.execute("delete from celeriac.schedule_fire", &[]).await.unwrap();
    db.client().await.execute(due, &[]).await.unwrap();
    assert_eq!(tick(&store, holder, term).await.fired, 2);
}

#[tokio::test]
async fn clocked_and_one_off_schedules_fire_once() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let past = chrono::Utc::now() - chrono::TimeDelta::minutes(5);
    add(&store, &definition("clocked", When::Clocked(past))).await;
    add(&store, &ScheduleDefinition { one_off: true, ..definition("once", every_minute()) }).await;
    db.client()
        .await
        .execute("update celeriac.schedule set next_run_at = date_trunc('minute', now()) where name = 'once'", &[])
        .await
        .unwrap();
    let (holder, term) = lead(&store).await;
    // The clocked row baselines to its own time, the one-off fires.
    assert_eq!(tick(&store, holder, term).await.fired, 1);
    assert_eq!(tick(&store, holder, term).await.fired, 1);
    for name in ["clocked", "once"] {
        let s = store.schedule_get(name).await.unwrap();
        assert_eq!((s.enabled, s.total_run_count), (false, 1), "{s:?}");
    }
    assert_eq!(tick(&store, holder, term).await.due, 0);
    assert_eq!(scalar(&db, "select count(*) from celeriac.message").await, 2);
}

/// Four scheduler instances (as in four processes) fire an every-second schedule; the leader is
/// stopped twice: another takes over, and every slot fires exactly once (catch-up `all`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_failover_loses_no_slot_and_doubles_none() {
    let db = TestDatabase::new().await;
    let store = db.store();
    let d = ScheduleDefinition {
        catchup: "all".into(),
        ..definition("every-second", When::Interval { seconds: 1.0, relative: false })
    };
    add(&store, &d).await;
    let config = SchedulerConfig {
        lease_ttl: Duration::from_secs(2),
        max_sleep: Duration::from_millis(500),
        ..SchedulerConfig::default()
    };
    let mut instances: Vec<(Uuid, Supervisor)> = (0..4)
        .map(|i| {
            let holder = Uuid::new_v4();
            let mut services = Supervisor::default();
            scheduler::start(&mut services, &store, holder, format!("instance {i}"), config.clone());
            (holder, services)
        })
        .collect();
    let fires = "select count(*) from celeriac.schedule_fire";
    for round in 0..2 {
        let before = scalar(&db, fires).await;
        wait_for(20, "fires", || async { scalar(&db, fires).await >= before + 3 }).await;
        // Stop the leader without giving up its lease (as a crash would): the lease runs out.
        let leader: Uuid = db.client().await.query_one("select holder from celeriac.lease", &[]).await.unwrap().get(0);
        let index = instances.iter().position(|(h, _)| *h == leader).expect("the leader is one of them");
        let (_, mut services) = instances.remove(index);
        db.client()
            .await
            .execute("update celeriac.lease set expires_at = now() + interval '2 seconds'", &[])
            .await
            .unwrap();
        services.stop().await;
        db.client()
            .await
            .execute(
                "update celeriac.lease set expires_at = now() + interval '2 seconds' where holder = $1",
                &[&leader],
            )
            .await
            .unwrap();
        let after_stop = scalar(&db, fires).await;
        wait_for(20, &format!("a new leader (round {round})"), || async {
            let holder: Uuid =
                db.client().await.query_one("select holder from celeriac.lease", &[]).await.unwrap().get(0);
            holder != leader && scalar(&db, fires).await >= after_stop + 2
        })
        .await;
    }
    for (_, mut services) in instances {
        services.stop().await;
    }
    assert_eq!(scalar(&db, DUPLICATES_SQL).await, 0);
    // Every slot from the first to the last, one second apart, none missing.
    let slots: Vec<chrono::DateTime<chrono::Utc>> = db
        .client()
        .await
        .query("select slot_at from celeriac.schedule_fire order by slot_at", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(slots.len() >= 10, "{slots:?}");
    assert!(slots.windows(2).all(|w| (w[1] - w[0]).num_milliseconds() == 1000), "{slots:?}");
    assert_eq!(scalar(&db, "select count(*) from celeriac.message").await, slots.len() as i64);
}

/// Starts a tick whose planner stalls for `stall` on its first row (the transaction open, the
/// rows locked), and returns once it stalls.
async fn stalling_tick(
    store: &Store,
    holder: Uuid,
    term: i64,
    stall: Duration,
) -> tokio::task::JoinHandle<celeriac_store::Result<TickReport>> {
    let (stalled_tx, stalled_rx) = std::sync::mpsc::channel::<()>();
    let store = store.clone();
    let tick = tokio::spawn(async move {
        let mut stalled = false;
        store
            .schedule_tick(holder, term, 1000, Duration::from_secs(30), move |s, now| {
                if !stalled {
                    stalled = true;
                    stalled_tx.send(()).unwrap();
                    std::thread::sleep(stall);
                }
                plan(s, now, |s, slot| fire::build(s, slot, now))
            })
            .await
    });
    tokio::task::spawn_blocking(move || stalled_rx.recv().unwrap()).await.unwrap();
    tick
}

/// A tick that dies anywhere before its commit — the planner panics (after the lease check and
/// the row locks), or its connection is terminated mid-tick — fires nothing and moves nothing;
/// the next tick fires every slot once. A takeover waits for a tick in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tick_that_dies_fires_nothing_and_the_next_fires_once() {
    let db = TestDatabase::new().await;
    let store = db.store();
    add_due(&db, &store, "s", 20).await;
    let (holder, term) = lead(&store).await;
    let untouched = "select count(*) from celeriac.schedule where next_run_at = date_trunc('minute', now())";

    // The planner panics on the tenth row.
    let panicking = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut seen = 0;
            store
                .schedule_tick(holder, term, 1000, Duration::from_secs(30), |s, now| {
                    seen += 1;
                    assert!(seen < 10, "injected panic");
                    plan(s, now, |s, slot| fire::build(s, slot, now))
                })
                .await
        })
    };
    assert!(panicking.await.unwrap_err().is_panic());
    assert_eq!(scalar(&db, "select count(*) from celeriac.message").await, 0);
    assert_eq!(scalar(&db, "select count(*) from celeriac.schedule_fire").await, 0);
    assert_eq!(scalar(&db, untouched).await, 20);

    // The connection is terminated while the tick holds its locks.
    let monitor = db.client().await;
    let cut = stalling_tick(&store, holder, term, Duration::from_secs(2)).await;
    let terminated = monitor
        .execute(
            "select pg_terminate_backend(pid) from pg_stat_activity
             where datname = current_database() and pid <> pg_backend_pid() and state = 'idle in transaction'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(terminated, 1, "the tick's connection, in its transaction");
    assert!(cut.await.unwrap().is_err(), "the tick must fail when its connection is cut");
    assert_eq!(scalar(&db, "select count(*) from celeriac.message").await, 0);
    assert_eq!(scalar(&db, untouched).await, 20);

    // A takeover while a tick is in flight waits for it; then the old term is fenced off.
    let slow = stalling_tick(&store, holder, term, Duration::from_millis(300)).await;
    let other = Uuid::new_v4();
    db.client()
        .await
        .execute("update celeriac.lease set expires_at = now() - interval '1 second'", &[])
        .await
        .unwrap_or(0);
    let taken = store.lease_acquire("scheduler", other, "other", 60.0).await.unwrap().expect("the lease ran out");
    let report = slow.await.unwrap().unwrap();
    assert_eq!(report.fired, 20, "the tick in flight finished first");
    assert!(tick(&store, holder, term).await.not_leader);
    assert_eq!(tick(&store, other, taken.term).await.fired, 0);
    assert_eq!(scalar(&db, DUPLICATES_SQL).await, 0);
    assert_eq!(scalar(&db, "select count(*) from celeriac.message").await, 20);
}

/// A tick that fails (an error, as a lost connection gives) or panics after each statement of
/// its transaction: before the commit nothing is fired or moved, after it the fires stand; either
/// way the ticks that follow fire every slot exactly once.
#[tokio::test]
async fn a_failure_after_any_statement_of_a_tick_fires_each_slot_once() {
    use celeriac_store::{TickFailpoint, TickStage};
    let db = TestDatabase::new().await;
    let store = db.store();
    let (holder, term) = lead(&store).await;
    let stages = [TickStage::Lease, TickStage::Rows, TickStage::Fires, TickStage::Advanced, TickStage::Committed];
    let mut round = 0;
    for stage in stages {
        for panic in [false, true] {
            round += 1;
            let prefix = format!("r{round:02}-");
            add_due(&db, &store, &prefix, 5).await;
            let fired = |prefix: String| {
                let db = &db;
                async move {
                    db.client()
                        .await
                        .query_one(
                            "select count(*) from celeriac.message m join celeriac.schedule s on s.last_message_id = m.id
                             where starts_with(s.name, $1)",
                            &[&prefix],
                        )
                        .await
                        .unwrap()
                        .get::<_, i64>(0)
                }
            };
            store.testing_tick_failpoint(Some(TickFailpoint { stage, panic }));
            let failing = {
                let store = store.clone();
                tokio::spawn(async move { tick_result(&store, holder, term).await })
            };
            match failing.await {
                Err(e) => assert!(panic && e.is_panic(), "{stage:?}: {e}"),
                Ok(result) => assert!(!panic && result.is_err(), "{stage:?}: {result:?}"),
            }
            store.testing_tick_failpoint(None);
            let committed = stage == TickStage::Committed;
            assert_eq!(fired(prefix.clone()).await, if committed { 5 } else { 0 }, "{stage:?} panic={panic}");
            let report = tick(&store, holder, term).await;
            assert_eq!((report.fired, report.refused), (if committed { 0 } else { 5 }, 0), "{stage:?} panic={panic}");
            assert_eq!(fired(prefix).await, 5, "{stage:?} panic={panic}");
        }
    }
    assert_eq!(scalar(&db, DUPLICATES_SQL).await, 0);
    assert_eq!(scalar(&db, "select count(*) from celeriac.message").await, 50);
    assert_eq!(scalar(&db, "select count(*) from celeriac.schedule_fire").await, 50);
}

async fn tick_result(store: &Store, holder: Uuid, term: i64) -> celeriac_store::Result<TickReport> {
    store
        .schedule_tick(holder, term, 1000, Duration::from_secs(30), |s, now| {
            plan(s, now, |s, slot| fire::build(s, slot, now))
        })
        .await
}
