//! `celeriac bench --control`: what remote control and events cost. Side by side, round after
//! round: the drain rate of no-op Rust handlers with task events off, with task events on (every
//! event checked: three per task reach `celeriac.broadcast`), and with 100,000 live revocations
//! in `celeriac.revoked` (checked by every claim); then the round trip of a `ping` command
//! through `celeriac.broadcast` to an idle worker and back (what a revoke takes to reach a
//! worker is within it).

use std::time::{Duration, Instant};

use celeriac_protocol::{pidbox, Map, Value};
use celeriac_store::{Revocation, Store};
use tokio_util::sync::CancellationToken;

use super::{drain_noop, messages, quiet_config, rate, BenchArgs, BenchError, TASK};
use crate::{EventSettings, Registry, Worker};

/// Live revocations during the revoked drains.
const REVOCATIONS: usize = 100_000;
/// Ping round trips measured.
const PINGS: usize = 200;

async fn drain(store: &Store, args: &BenchArgs, concurrency: usize, events: bool) -> Result<f64, BenchError> {
    // Every drain starts from a vacuumed table: the dead rows the previous one left (which
    // autovacuum clears within its naptime) would slow whichever drain comes next.
    store.message_vacuum().await?;
    for chunk in messages(TASK, args.tasks, &args.queue).chunks(args.batch.max(1)) {
        store.message_insert_many(chunk).await?;
    }
    let config = crate::WorkerConfig {
        events: EventSettings { task_events: events, ..EventSettings::default() },
        ..quiet_config(&args.queue, concurrency, args.prefetch_multiplier)
    };
    let (elapsed, _) = drain_noop(store, config, args.tasks).await?;
    Ok(rate(args.tasks, elapsed))
}

/// Runs the comparison and the ping latency, printing one line each.
pub(super) async fn run(store: &Store, args: &BenchArgs) -> Result<(), BenchError> {
    store.message_purge(&args.queue).await?;
    store.revoked_clear().await?;
    println!(
        "celeriac bench --control: {} no-op Rust tasks per drain; task events off vs on, and {REVOCATIONS} live \
         revocations vs none; {} rounds",
        args.tasks, args.rounds
    );
    let revocations = Revocation {
        task_ids: (0..REVOCATIONS).map(|_| uuid::Uuid::new_v4().to_string()).collect(),
        expires: Duration::from_secs(3600),
        ..Revocation::default()
    };
    for round in 1..=args.rounds {
        for &concurrency in &args.concurrency {
            let off = drain(store, args, concurrency, false).await?;
            let head = store.broadcast_head().await?;
            let on = drain(store, args, concurrency, true).await?;
            // The worker's events are flushed when it stops, which the drain waits for.
            let events = task_events(store, head).await?;
            let expected = 3 * i64::try_from(args.tasks).unwrap_or(i64::MAX);
            if events < expected {
                println!("ERROR: {events} events for {} tasks (3 task events each expected)", args.tasks);
                return Err(BenchError::StoppedEarly);
            }
            store.revoked_insert(&revocations).await?;
            let revoked = drain(store, args, concurrency, false).await?;
            store.revoked_clear().await?;
            println!(
                "round {round} c={concurrency:<3} events off {off:>9.0} tasks/s   events on {on:>9.0} tasks/s ({:.2})   \
                 {REVOCATIONS} revocations {revoked:>9.0} tasks/s ({:.2})",
                on / off,
                revoked / off
            );
        }
    }
    ping_latency(store, args).await
}

/// The `task-*` events published to `celeryev` after position `after` (a `task.multi`
/// message holds many).
async fn task_events(store: &Store, mut after: i64) -> Result<i64, BenchError> {
    let exchanges = ["celeryev".to_owned()];
    let mut count = 0;
    loop {
        let rows = store.broadcast_read(&exchanges, after, 1000).await?;
        for row in &rows {
            after = row.id;
            if !row.routing_key.starts_with("task.") {
                continue;
            }
            let body = celeriac_protocol::Envelope::parse(&row.payload)
                .and_then(|e| e.decode_body(&celeriac_protocol::Limits::default()));
            count += match body {
                Ok(Value::List(events)) => events.len(),
                Ok(_) => 1,
                Err(_) => 0,
            };
        }
        if rows.len() < 1000 {
            return Ok(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }
}

/// Round trips of `ping` through the broadcast table to an idle worker.
async fn ping_latency(store: &Store, args: &BenchArgs) -> Result<(), BenchError> {
    let worker = Worker::new(store.clone(), Registry::new(), quiet_config(&args.queue, 2, 1))?;
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(worker.run(shutdown.clone()));
    let wake = std::sync::Arc::new(tokio::sync::Notify::new());
    let mut listening = celeriac_store::service::Supervisor::default();
    {
        let wake = wake.clone();
        listening.start(store.broadcast_listener().service(move |_| wake.notify_one()));
    }
    let exchange = pidbox::control_exchange("celery");
    let reply_exchange = pidbox::reply_exchange("celery");
    let key = uuid::Uuid::new_v4().to_string();
    // The worker is ready once it answers a first ping.
    let mut samples = Vec::with_capacity(PINGS);
    for i in 0..=PINGS {
        let ticket = uuid::Uuid::new_v4().to_string();
        let after = store.broadcast_head().await?;
        let payload =
            pidbox::call_envelope(&exchange, "ping", Map::new(), None, Some((&reply_exchange, &key, &ticket)));
        let sent = Instant::now();
        store.broadcast_publish(&exchange, "", &payload, None).await?;
        let deadline = sent + Duration::from_secs(10);
        loop {
            let replies = store.broadcast_read(std::slice::from_ref(&reply_exchange), after, 10).await?;
            if replies.iter().any(|r| r.routing_key == key) {
                break;
            }
            if Instant::now() >= deadline {
                shutdown.cancel();
                return Err(BenchError::NotPickedUp);
            }
            let _ = tokio::time::timeout(Duration::from_millis(20), wake.notified()).await;
        }
        if i > 0 {
            samples.push(sent.elapsed());
        }
    }
    listening.stop().await;
    shutdown.cancel();
    handle.await??;
    samples.sort();
    let at = |q: f64| {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
        let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[i].as_secs_f64() * 1000.0
    };
    println!(
        "ping round trip through celeriac.broadcast ({PINGS} samples, idle worker): p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        at(0.5),
        at(0.99),
        at(1.0)
    );
    Ok(())
}
