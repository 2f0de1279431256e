//! `celeriac bench --schedules N`: how fast the scheduler fires many schedules due at one
//! instant, and what an idle scheduler costs the database.
//!
//! Output:
//!
//! ```text
//! schedules: 10000 due at one instant, fired in 0.84 s (11905 fires/s), 0 duplicates
//! idle: 2 schedulers (1 leader) for 30 s: 0.60 transactions/s per scheduler
//! ```
//!
//! N every-minute crontab schedules are written, made due two seconds ahead, and one scheduler
//! (the leader; a second one stands by) fires them; the time is from the due instant to the
//! last fire's commit (the database's clock). Then, with nothing due for the measured window,
//! the transactions the two schedulers make are counted from the server's statistics
//! (`pg_stat_database`, which here counts about two per statement: the leader runs two
//! statements per five seconds, a lease renewal and the tick's look at the next due row, and a
//! follower one, a bid for the lease).

use std::time::{Duration, Instant};

use celeriac_store::{service::Supervisor, ScheduleDefinition, Store, When};
use uuid::Uuid;

use super::{BenchArgs, BenchError};
use crate::scheduler::{self, SchedulerConfig};

/// Runs the scheduler benchmark and prints its report.
///
/// # Errors
/// [`BenchError`]: the database failed.
pub async fn run(store: &Store, args: &BenchArgs) -> Result<(), BenchError> {
    let n = args.schedules;
    store.schedule_remove_all().await?;
    let definitions: Vec<(ScheduleDefinition, i16)> = (0..n)
        .map(|i| {
            let name = format!("bench-{i:06}");
            let bucket = scheduler::ramp_bucket(&name);
            let definition = ScheduleDefinition {
                options_json: format!(r#"{{"queue": {:?}}}"#, args.queue),
                ..ScheduleDefinition::new(
                    name,
                    super::TASK,
                    When::Crontab(["*".into(), "*".into(), "*".into(), "*".into(), "*".into()]),
                )
            };
            (definition, bucket)
        })
        .collect();
    store.schedule_sync(&definitions, "manual", Some("celeriac"), None).await?;
    store.message_purge(&args.queue).await?;
    let config = SchedulerConfig::default();
    let mut schedulers = Vec::new();
    for i in 0..2 {
        let mut services = Supervisor::default();
        scheduler::start(&mut services, store, Uuid::new_v4(), format!("bench scheduler {i}"), config.clone());
        schedulers.push(services);
    }
    let due = store.schedule_all_due_in(2.0).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let (fired, last) = loop {
        let (count, last) = store.schedule_fire_count().await?;
        if usize::try_from(count).unwrap_or(0) >= n || Instant::now() > deadline {
            break (count, last);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let took = last.map_or(f64::NAN, |l| (l - due).as_seconds_f64());
    let messages = store.message_ready_count(&args.queue).await?;
    println!(
        "schedules: {n} due at one instant, fired in {took:.2} s ({:.0} fires/s), {} messages, {} duplicates",
        fired as f64 / took.max(1e-9),
        messages,
        messages - fired
    );
    // Idle: nothing due within the window (the next minute's slots are re-based far ahead).
    store.schedule_all_due_in(3600.0).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let window = Duration::from_secs_f64(args.idle_seconds);
    let before = store.database_transactions().await?;
    tokio::time::sleep(window).await;
    let after = store.database_transactions().await?;
    // Our own two reads count one transaction each.
    let theirs = (after - before - 1).max(0) as f64;
    println!(
        "idle: 2 schedulers (1 leader) for {:.0} s: {:.2} transactions/s per scheduler",
        window.as_secs_f64(),
        theirs / window.as_secs_f64() / 2.0
    );
    for mut services in schedulers {
        services.stop().await;
    }
    store.schedule_remove_all().await?;
    store.message_purge(&args.queue).await?;
    Ok(())
}
