//! The worker: claims messages, runs handlers with a concurrency limit, settles outcomes.
//!
//! Shape of a running worker (all tokio tasks in one process):
//!
//! ```text
//!  listener ──wake──┐
//!                   ▼
//!  claim loop ── claims ≤ free prefetch slots ──► execute (one task per message)
//!                                                   │ decode → dispatch → wait for a run slot
//!                                                   │ → handler (own task: panics are caught)
//!                                                   ▼
//!  completer ◄──────────── settle (complete / retry / dead-letter / release)
//!  heartbeat (renews all held leases)      rescuer (frees expired leases, any worker)
//! ```
//!
//! Messages claimed but not started never exceed `concurrency × prefetch_multiplier` (Celery's
//! prefetch count; with the running ones, at most `concurrency × (prefetch_multiplier + 1)` are
//! held); ETA tasks stay in the database until due, so nothing is hoarded.
//! Outcomes are flushed in batches by the completer, and every write is fenced by the lease,
//! so a worker that lost its lease cannot overwrite a newer delivery.
//!
//! Shutdown (the token passed to [`Worker::run`] is cancelled): stop claiming; messages that
//! were claimed but not started are released at once; running tasks get `shutdown_timeout` to
//! finish, after which they are abandoned (their leases expire and the messages run again,
//! marked redelivered); pending outcomes are flushed; the worker row is removed.

use std::{
    panic::AssertUnwindSafe,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use celeriac_protocol::{json, pyrepr, Accept, DecodeError, Limits, TaskMessage};
use celeriac_store::{
    Backoff, ClaimCursor, ClaimParams, ClaimedMessage, DeadLetterParams, Lease, LeaseSession, LeaseSessionConfig,
    SettledHook, Settlement, Store, WorkerInfo,
};
use chrono::Utc;
use futures_util::FutureExt as _;
use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use uuid::Uuid;

use crate::{
    maintenance::RescuerConfig,
    registry::Registry,
    task::{LeaseCheck, Outcome, Request},
    Error,
};

/// Worker settings. Every field has a default (see [`WorkerConfig::default`]).
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Queues to consume. Default: `["celery"]`.
    pub queues: Vec<String>,
    /// Tasks run at once. Default: the number of CPUs.
    pub concurrency: usize,
    /// Messages claimed per execution slot (Celery's `worker_prefetch_multiplier`). Default: 4.
    pub prefetch_multiplier: usize,
    /// Worker name for logs and the `worker` table. Default: `celeriac@<host>`.
    pub hostname: String,
    /// How long a claim stays valid without a heartbeat. Default: 30 s.
    pub lease: Duration,
    /// How often leases are renewed; must be under half the lease. Default: 5 s.
    pub heartbeat_interval: Duration,
    /// How often to look for work when no notification came. Default: 1 s.
    pub poll_interval: Duration,
    /// How long running tasks may take to finish after a shutdown request. Default: 60 s.
    pub shutdown_timeout: Duration,
    /// Redeliveries after lost leases before a message is dead-lettered. Default: 3.
    pub max_redeliveries: i32,
    /// How often this worker runs the rescuer. Default: 5 s.
    pub rescue_interval: Duration,
    /// Content types to deserialize. Default: JSON only.
    pub accept: Accept,
    /// Use LISTEN/NOTIFY wake-ups (off behind PgBouncer in transaction mode). Default: true.
    pub listen: bool,
    /// Handler calls started beyond `concurrency`, at most `concurrency`, for handlers that
    /// queue their work in a pool which itself runs `concurrency` at a time (the embedded
    /// Python pool keeps one task queued behind the running one in each child). They come out
    /// of the prefetched messages, not on top of them. Default: 0.
    pub pipeline: usize,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            queues: vec![celeriac_protocol::DEFAULT_QUEUE.to_owned()],
            concurrency: std::thread::available_parallelism().map_or(2, std::num::NonZero::get),
            prefetch_multiplier: 4,
            hostname: format!("celeriac@{}", crate::hostname()),
            lease: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(5),
            poll_interval: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(60),
            max_redeliveries: 3,
            rescue_interval: Duration::from_secs(5),
            accept: Accept::default(),
            listen: true,
            pipeline: 0,
        }
    }
}

impl WorkerConfig {
    /// Checks the settings for consistency.
    ///
    /// # Errors
    /// [`Error::Config`] naming the bad setting.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Config(m));
        if self.queues.is_empty() || self.queues.iter().any(String::is_empty) {
            return bad("at least one queue, and no empty queue names, are required".into());
        }
        if self.concurrency == 0 {
            return bad("concurrency must be at least 1".into());
        }
        if self.prefetch_multiplier == 0 {
            return bad("prefetch multiplier must be at least 1".into());
        }
        if self.concurrency > 10_000 || self.prefetch_multiplier > 1_000 {
            return bad("concurrency is limited to 10,000 and the prefetch multiplier to 1,000".into());
        }
        if self.heartbeat_interval.is_zero() || self.heartbeat_interval.checked_mul(2).is_none_or(|d| d > self.lease) {
            return bad(format!(
                "heartbeat interval ({:?}) must be positive and at most half the lease ({:?})",
                self.heartbeat_interval, self.lease
            ));
        }
        if self.poll_interval.is_zero() || self.rescue_interval.is_zero() {
            return bad("poll and rescue intervals must be positive".into());
        }
        if self.pipeline > self.concurrency {
            return bad("pipeline must not exceed concurrency".into());
        }
        if self.max_redeliveries < 0 {
            return bad("max redeliveries must not be negative".into());
        }
        Ok(())
    }
}

/// Live counters of a worker, readable while it runs.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Messages claimed.
    pub received: AtomicU64,
    /// Tasks that returned a value.
    pub succeeded: AtomicU64,
    /// Tasks that failed (including unknown names are counted in `dead_lettered` instead).
    pub failed: AtomicU64,
    /// Tasks re-scheduled by a retry.
    pub retried: AtomicU64,
    /// Messages moved to `dead_letter`.
    pub dead_lettered: AtomicU64,
    /// Claimed messages given back unstarted.
    pub released: AtomicU64,
    /// Outcomes written to the database.
    pub settled: AtomicU64,
    /// Claim statements issued.
    pub claims: AtomicU64,
    /// Time spent in claim statements, in microseconds.
    pub claim_micros: AtomicU64,
}

/// A snapshot of [`WorkerStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WorkerReport {
    /// Messages claimed.
    pub received: u64,
    /// Tasks that returned a value.
    pub succeeded: u64,
    /// Tasks that failed.
    pub failed: u64,
    /// Tasks re-scheduled.
    pub retried: u64,
    /// Messages moved to `dead_letter`.
    pub dead_lettered: u64,
    /// Claimed messages given back unstarted.
    pub released: u64,
    /// Outcomes written to the database.
    pub settled: u64,
}

impl WorkerStats {
    /// The current values.
    #[must_use]
    pub fn snapshot(&self) -> WorkerReport {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        WorkerReport {
            received: get(&self.received),
            succeeded: get(&self.succeeded),
            failed: get(&self.failed),
            retried: get(&self.retried),
            dead_lettered: get(&self.dead_lettered),
            released: get(&self.released),
            settled: get(&self.settled),
        }
    }
}

/// Where the next claim starts. Under load most claims continue from the last row claimed in
/// each queue (a keyset cursor), which keeps their cost flat however many rows were consumed
/// before; every [`FULL_CLAIM_EVERY`] claims or [`FULL_CLAIM_INTERVAL`], and whenever a cursor
/// claim comes back short, a full claim from the head of each queue picks up what a cursor
/// cannot see: newly arrived higher-priority rows, released or rescued rows, rows whose
/// producer committed late.
#[derive(Debug)]
struct ClaimState {
    cursors: Vec<Option<ClaimCursor>>,
    since_full: u32,
    last_full: Instant,
    force_full: bool,
}

/// Cursor claims between two full claims, at most.
const FULL_CLAIM_EVERY: u32 = 8;
/// Longest time between two full claims while the queue is busy.
const FULL_CLAIM_INTERVAL: Duration = Duration::from_millis(100);

impl ClaimState {
    fn new(queues: usize) -> Self {
        ClaimState { cursors: vec![None; queues], since_full: 0, last_full: Instant::now(), force_full: true }
    }

    /// The cursors for the next claim, or `None` for a full claim.
    fn next(&mut self) -> Option<Vec<ClaimCursor>> {
        let due =
            self.force_full || self.since_full >= FULL_CLAIM_EVERY || self.last_full.elapsed() >= FULL_CLAIM_INTERVAL;
        let cursors: Option<Vec<ClaimCursor>> = self.cursors.iter().copied().collect();
        match cursors {
            Some(c) if !due => {
                self.since_full += 1;
                Some(c)
            }
            _ => {
                self.force_full = false;
                self.since_full = 0;
                self.last_full = Instant::now();
                None
            }
        }
    }

    /// Advances the cursors past `claimed`.
    fn advance(&mut self, queues: &[String], claimed: &[ClaimedMessage]) {
        // Suspects come from their own index, not from the cursor's range.
        for m in claimed.iter().filter(|m| m.redeliveries == 0) {
            let Some(i) = queues.iter().position(|q| *q == m.queue) else { continue };
            let here = ClaimCursor { priority: m.priority, eta: m.eta, id: m.lease.id };
            match &mut self.cursors[i] {
                Some(c) if !c.is_before(&here) => {}
                slot => *slot = Some(here),
            }
        }
    }
}

/// State shared by the claim loop and the per-message tasks.
struct Shared {
    store: Store,
    registry: Arc<Registry>,
    config: WorkerConfig,
    worker_id: Uuid,
    stats: Arc<WorkerStats>,
    /// Held leases, their renewal and the completer.
    session: Arc<LeaseSession>,
    run_slots: Arc<Semaphore>,
    /// Signalled when the last claim issued has started all its messages: the next claim's
    /// first message waits for it, so messages start in claim order across claims too.
    last_turn: std::sync::Mutex<Option<oneshot::Receiver<()>>>,
    /// Cancelled on shutdown: stop claiming, do not start claimed tasks.
    stopping: CancellationToken,
    /// Cancelled when the shutdown timeout ran out: abandon running tasks.
    abandon: CancellationToken,
    /// Keyset cursors of the claim loop.
    claim_state: std::sync::Mutex<ClaimState>,
    /// One permit: whether this worker may claim a suspect now.
    suspect_slot: Arc<Semaphore>,
    /// Wakes the claim loop (notifications, a suspect settled).
    wake: Arc<Notify>,
    /// `config.hostname`, shared by every request.
    hostname: Arc<str>,
}

/// The one suspect a worker may hold (a message that came back after a lost lease or a requeue;
/// see `migrations/0002_claim_suspects.sql`): taken by the claim that brought it, held until its
/// outcome is handed to the completer, then the claim loop is woken to take the next.
struct SuspectPermit {
    _permit: OwnedSemaphorePermit,
    wake: Arc<Notify>,
}

impl Drop for SuspectPermit {
    fn drop(&mut self) {
        self.wake.notify_one();
    }
}

/// A worker process's runtime. See the module docs.
pub struct Worker {
    store: Store,
    registry: Arc<Registry>,
    config: WorkerConfig,
    id: Uuid,
    stats: Arc<WorkerStats>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("id", &self.id).field("config", &self.config).finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker over `store` running the handlers of `registry`.
    ///
    /// # Errors
    /// [`Error::Config`] for inconsistent settings.
    pub fn new(store: Store, registry: Registry, config: WorkerConfig) -> Result<Worker, Error> {
        config.validate()?;
        Ok(Worker { store, registry: Arc::new(registry), config, id: Uuid::new_v4(), stats: Arc::default() })
    }

    /// This worker's id (what `leased_by` holds).
    #[must_use]
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// Live counters.
    #[must_use]
    pub fn stats(&self) -> Arc<WorkerStats> {
        self.stats.clone()
    }

    /// Runs until `shutdown` is cancelled, then shuts down gracefully (module docs).
    ///
    /// # Errors
    /// Only if the schema is missing at start; database outages while running are logged and
    /// retried with backoff.
    pub async fn run(self, shutdown: CancellationToken) -> Result<WorkerReport, Error> {
        let config = self.config.clone();
        let info = WorkerInfo {
            id: self.id,
            hostname: config.hostname.clone(),
            pid: i32::try_from(std::process::id()).unwrap_or(0),
            queues: config.queues.clone(),
            concurrency: i32::try_from(config.concurrency).unwrap_or(i32::MAX),
            lease_seconds: config.lease.as_secs_f64(),
        };
        self.register(&info, &shutdown).await?;
        tracing::info!(
            hostname = %config.hostname, queues = %config.queues.join(","), concurrency = config.concurrency,
            tasks = %self.registry.names().join(", "), "{} ready.", config.hostname
        );

        let background = CancellationToken::new();
        let wake = Arc::new(Notify::new());
        let settled: SettledHook = {
            let stats = self.stats.clone();
            Arc::new(move |batch: &[Settlement]| {
                stats.settled.fetch_add(batch.len() as u64, Ordering::Relaxed);
            })
        };
        let session = LeaseSession::start(
            self.store.clone(),
            info,
            &LeaseSessionConfig {
                heartbeat_interval: config.heartbeat_interval,
                max_redeliveries: config.max_redeliveries,
                rescuer: Some(RescuerConfig { interval: config.rescue_interval, ..RescuerConfig::default() }),
            },
            Some(settled),
        );
        let shared = Arc::new(Shared {
            store: self.store.clone(),
            registry: self.registry.clone(),
            config: config.clone(),
            worker_id: self.id,
            stats: self.stats.clone(),
            session: session.clone(),
            run_slots: Arc::new(Semaphore::new(config.concurrency + config.pipeline)),
            last_turn: std::sync::Mutex::new(None),
            stopping: shutdown.clone(),
            abandon: CancellationToken::new(),
            claim_state: std::sync::Mutex::new(ClaimState::new(config.queues.len())),
            suspect_slot: Arc::new(Semaphore::new(1)),
            wake: wake.clone(),
            hostname: config.hostname.as_str().into(),
        });

        let listener = config.listen.then(|| {
            let wake = wake.clone();
            let queues = config.queues.clone();
            let stop = background.clone();
            let listener = self.store.listener();
            tokio::spawn(async move {
                listener
                    .run(
                        move |w| {
                            if w.concerns(&queues) {
                                wake.notify_one()
                            }
                        },
                        stop.cancelled_owned(),
                    )
                    .await;
            })
        });

        let tracker = TaskTracker::new();
        claim_loop(&shared, &tracker).await;

        tracing::info!("worker: warm shutdown, waiting for {} running task(s)", tracker.len());
        tracker.close();
        if tokio::time::timeout(config.shutdown_timeout, tracker.wait()).await.is_err() {
            tracing::warn!(
                "worker: {} task(s) still running after {:?}; abandoning them (their messages run again after the lease)",
                tracker.len(),
                config.shutdown_timeout
            );
            shared.abandon.cancel();
            tracker.wait().await;
        }
        drop(shared);
        // Pending outcomes get a bounded time to reach the database; the worker row stays if
        // some could not (rescuers then deliver those messages again after the lease).
        session.close(Duration::from_secs(15)).await;
        background.cancel();
        if let Some(l) = listener {
            let _ = l.await;
        }
        let report = self.stats.snapshot();
        tracing::info!(?report, "worker: stopped");
        Ok(report)
    }

    async fn register(&self, info: &WorkerInfo, shutdown: &CancellationToken) -> Result<(), Error> {
        let mut backoff = Backoff::new();
        loop {
            match self.store.worker_register(info).await {
                Ok(()) => return Ok(()),
                Err(e) if !e.is_connection() => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff.peek(), "worker: cannot register with the database");
                    if !backoff.wait(shutdown).await {
                        return Err(Error::Config("shut down before the database became reachable".into()));
                    }
                }
            }
        }
    }
}

/// How a claim statement went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClaimResult {
    /// Got as many messages as asked: the queue has more.
    Full,
    /// Got fewer: the queues are drained for now.
    Short,
    /// The statement failed.
    Failed,
}

/// At most this many claim statements are in flight at once while the queue is busy, so the
/// next batch is on its way while the current one runs.
const CLAIMS_IN_FLIGHT: usize = 2;

async fn claim_loop(shared: &Arc<Shared>, tracker: &TaskTracker) {
    let config = &shared.config;
    // As in Celery (early acks): `concurrency × prefetch_multiplier` messages reserved, plus
    // the ones running.
    let capacity = config.concurrency * (config.prefetch_multiplier + 1);
    let slots = Arc::new(Semaphore::new(capacity));
    let tickets = Arc::new(Semaphore::new(CLAIMS_IN_FLIGHT));
    let mut pending: Vec<tokio::sync::oneshot::Receiver<ClaimResult>> = Vec::new();
    let mut backoff = Backoff::new();
    let mut busy = false;
    // When the queue is busy, claim in batches to save round trips, but never let execution
    // slots idle for it: wait for at most the prefetched part of the capacity to free up.
    // When it is idle, claim as soon as one slot is free.
    let batch_floor = (capacity / 2).min(capacity - config.concurrency).max(1);
    loop {
        // Results of pipelined claims decide whether the queue is still busy.
        pending.retain_mut(|rx| match rx.try_recv() {
            Ok(result) => {
                busy &= result == ClaimResult::Full;
                false
            }
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => true,
            Err(tokio::sync::oneshot::error::TryRecvError::Closed) => false,
        });
        let ticket = tokio::select! {
            biased;
            () = shared.stopping.cancelled() => return,
            t = tickets.clone().acquire_owned() => match t { Ok(t) => t, Err(_) => return },
        };
        let want_at_least = if busy { batch_floor } else { 1 };
        let mut permits = tokio::select! {
            biased;
            () = shared.stopping.cancelled() => return,
            p = slots.clone().acquire_many_owned(u32::try_from(want_at_least).unwrap_or(1)) => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let extra = slots.available_permits();
        if extra > 0 {
            if let Ok(more) = slots.clone().try_acquire_many_owned(u32::try_from(extra).unwrap_or(0)) {
                permits.merge(more);
            }
        }
        if shared.stopping.is_cancelled() {
            return;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        tracker.spawn(claim_batch(shared.clone(), tracker.clone(), permits, ticket, tx));
        if busy {
            pending.push(rx);
            continue;
        }
        // Idle or recovering: one claim at a time, and wait before polling an empty queue.
        match rx.await.unwrap_or(ClaimResult::Failed) {
            ClaimResult::Full => {
                backoff.reset();
                busy = true;
            }
            ClaimResult::Short => {
                backoff.reset();
                tokio::select! {
                    () = shared.stopping.cancelled() => return,
                    () = shared.wake.notified() => {}
                    () = tokio::time::sleep(config.poll_interval) => {}
                }
            }
            ClaimResult::Failed => {
                if !backoff.wait(&shared.stopping).await {
                    return;
                }
            }
        }
    }
}

/// One claim statement for as many messages as `permits` holds; starts an `execute` task per
/// message, each holding one permit until its outcome is handed to the completer.
async fn claim_batch(
    shared: Arc<Shared>,
    tracker: TaskTracker,
    mut permits: OwnedSemaphorePermit,
    _ticket: OwnedSemaphorePermit,
    done: tokio::sync::oneshot::Sender<ClaimResult>,
) {
    let want = permits.num_permits();
    // This claim's place in the start order is taken now, when it is issued (claims run two at
    // a time and may answer out of order): its messages start after the previous claim's.
    let (claim_done, after_this_claim) = oneshot::channel::<()>();
    let mut previous =
        shared.last_turn.lock().unwrap_or_else(std::sync::PoisonError::into_inner).replace(after_this_claim);
    let cursors = shared.claim_state.lock().map(|mut s| s.next()).unwrap_or(None);
    // Suspects are looked for by full claims only (every 100 ms at most under load): cursor
    // claims, the bulk of a busy queue's claims, skip that part of the statement.
    let mut suspect = if cursors.is_none() { shared.suspect_slot.clone().try_acquire_owned().ok() } else { None };
    let params = ClaimParams {
        worker_id: shared.worker_id,
        queues: &shared.config.queues,
        limit: i64::try_from(want).unwrap_or(i64::MAX),
        lease_seconds: shared.config.lease.as_secs_f64(),
        after: cursors.as_deref(),
        suspects: i64::from(suspect.is_some()),
    };
    let started = Instant::now();
    let result = shared.store.message_claim(&params).await;
    shared.stats.claims.fetch_add(1, Ordering::Relaxed);
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    shared.stats.claim_micros.fetch_add(micros, Ordering::Relaxed);
    let claimed = match result {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "worker: claim failed; retrying with backoff");
            tracker.spawn(pass_turn(previous, claim_done));
            let _ = done.send(ClaimResult::Failed);
            return;
        }
    };
    let got = claimed.len();
    shared.session.hold(&claimed, started);
    let full_claim = cursors.is_none();
    if let Ok(mut state) = shared.claim_state.lock() {
        state.advance(&shared.config.queues, &claimed);
        // A short cursor claim only means this priority ran dry after the cursor: look at
        // the whole queue next time.
        if got < want && !full_claim {
            state.force_full = true;
        }
    }
    shared.stats.received.fetch_add(got as u64, Ordering::Relaxed);
    // The claim is sorted (priority desc, eta, id); each message waits for its predecessor (in
    // this claim or the one before) to take a run slot, or give up, before asking for one, so
    // they start in claim order.
    for message in claimed {
        let Some(slot) = permits.split(1) else { break };
        let (started, next) = oneshot::channel();
        let turn = Turn { previous: previous.replace(next), started };
        let suspect = if message.redeliveries > 0 {
            suspect.take().map(|permit| SuspectPermit { _permit: permit, wake: shared.wake.clone() })
        } else {
            None
        };
        tracker.spawn(execute(shared.clone(), message, slot, turn, suspect));
    }
    tracker.spawn(pass_turn(previous, claim_done));
    let _ = done.send(if got == want || !full_claim { ClaimResult::Full } else { ClaimResult::Short });
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

/// Forgets a lease if `execute` ends without settling it (a bug, or an abandoned task), so the
/// heartbeat stops renewing it: the lease then expires and the message is redelivered.
struct Unsettled<'a> {
    session: &'a LeaseSession,
    lease: Option<Lease>,
}

impl Drop for Unsettled<'_> {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            self.session.forget(lease);
        }
    }
}

/// Lets the next claim's messages start once this claim's last message has started (or this
/// claim brought none).
async fn pass_turn(previous: Option<oneshot::Receiver<()>>, claim_done: oneshot::Sender<()>) {
    if let Some(previous) = previous {
        let _ = previous.await;
    }
    let _ = claim_done.send(());
}

/// A message's place in its claim's start order: it asks for a run slot once `previous` has
/// one (or was settled without running), and then lets the next one ask. Dropping it, on any
/// path, lets the next one go.
struct Turn {
    previous: Option<oneshot::Receiver<()>>,
    started: oneshot::Sender<()>,
}

async fn execute(
    shared: Arc<Shared>,
    claimed: ClaimedMessage,
    slot: OwnedSemaphorePermit,
    turn: Turn,
    suspect: Option<SuspectPermit>,
) {
    let mut guard = Unsettled { session: &shared.session, lease: Some(claimed.lease) };
    execute_inner(&shared, claimed, slot, turn).await;
    guard.lease = None;
    drop(suspect);
}

/// Gives back a message whose lease ran out before its task started, instead of starting it (a
/// no-op in the database if another worker has it by now).
fn give_back_unstarted(shared: &Shared, lease: Lease, name: &str, id: &str) {
    tracing::warn!(
        message_id = lease.id,
        "Task {name}[{id}] not started: its lease ran out before it could start (is the database reachable?)"
    );
    shared.stats.released.fetch_add(1, Ordering::Relaxed);
    shared.session.settle(Settlement::Release(lease));
}

/// Moves a message to `dead_letter` because it cannot be decoded.
fn dead_letter_undecodable(shared: &Shared, claimed: &ClaimedMessage, e: &DecodeError) {
    let lease = claimed.lease;
    tracing::error!(message_id = lease.id, queue = %claimed.queue, reason = %e, "Can't decode message body; moving it to dead_letter");
    shared.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
    shared.session.settle(Settlement::DeadLetter(DeadLetterParams {
        lease,
        reason_code: e.reason_code().into(),
        reason: e.to_string(),
    }));
}

async fn execute_inner(shared: &Arc<Shared>, claimed: ClaimedMessage, _slot: OwnedSemaphorePermit, mut turn: Turn) {
    let lease = claimed.lease;
    let accept = &shared.config.accept;
    // Only the envelope and headers now: the body, which may decode to far more than its
    // bytes, is decoded when the task is about to run, so prefetched messages stay small.
    // (Protocol 1 keeps its headers in the body: decoded whole here.)
    let head = match TaskMessage::decode_head(&claimed.payload, accept) {
        Ok(m) => Ok((m, false)),
        Err(DecodeError::UnsupportedContentType(_)) => TaskMessage::decode(&claimed.payload, accept).map(|m| (m, true)),
        Err(e) => Err(e),
    };
    let (message, body_decoded) = match head {
        Ok(m) => m,
        Err(e) => {
            dead_letter_undecodable(shared, &claimed, &e);
            return;
        }
    };
    let name = message.display_name().to_owned();
    let id = message.headers.id.clone();
    tracing::info!(redelivered = claimed.redelivered, "Task {name}[{id}] received");
    let redeliveries = claimed.redeliveries;
    let Some(handler) = shared.registry.get(&message.headers.task) else {
        let task = &message.headers.task;
        let quoted = pyrepr::repr(&celeriac_protocol::Value::Str(task.clone()));
        tracing::error!("Received unregistered task of type {quoted}. The message has been moved to dead_letter.");
        shared.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
        shared.session.settle(Settlement::DeadLetter(DeadLetterParams {
            lease,
            reason_code: "not_registered".into(),
            reason: format!("NotRegistered({quoted})"),
        }));
        return;
    };
    let managed = handler.manages_execution();
    if let Some(expires) = message.headers.expires.filter(|_| !managed) {
        if expires < Utc::now() {
            tracing::info!("Discarding revoked task: {name}[{id}] (expired at {expires})");
            shared.session.settle(Settlement::Complete(lease));
            return;
        }
    }
    if let Some(previous) = turn.previous.take() {
        // Err: the previous message was settled without running; either way it is our turn.
        let _ = previous.await;
    }
    let run_slot = tokio::select! {
        biased;
        () = shared.stopping.cancelled() => None,
        p = shared.run_slots.clone().acquire_owned() => p.ok(),
    };
    let _ = turn.started.send(());
    let Some(run_slot) = run_slot else {
        shared.stats.released.fetch_add(1, Ordering::Relaxed);
        shared.session.settle(Settlement::Release(lease));
        return;
    };
    if shared.session.expired(lease) {
        // The heartbeat could not renew it (the database was unreachable): another worker may
        // run it already.
        give_back_unstarted(shared, lease, &name, &id);
        return;
    }
    // A handler that decodes the body itself (embedded Python, which reads the stored envelope
    // as Celery would) gets the headers only.
    let mut message = message;
    if !body_decoded && !managed {
        // The envelope parsed at claim time is reused: only the body is read now.
        if let Err(e) = message.decode_body(&Limits::default()) {
            dead_letter_undecodable(shared, &claimed, &e);
            return;
        }
    }
    let hard_limit = message.headers.timelimit.hard.filter(|_| !managed);
    let message = Arc::new(message);
    let request = Request {
        message: message.clone(),
        lease,
        redelivered: claimed.redelivered,
        hostname: shared.hostname.clone(),
        queue: claimed.queue.as_str().into(),
        payload: claimed.payload.into(),
        lease_check: {
            let session = shared.session.clone();
            LeaseCheck::new(move || session.expired(lease))
        },
    };
    let started = Instant::now();
    // A panic fails this task only: it is caught here, on the task's own tokio task.
    let run = AssertUnwindSafe(handler.call(request)).catch_unwind();
    let limited = async move {
        match hard_limit {
            Some(secs) if secs > 0.0 => match Duration::try_from_secs_f64(secs) {
                Ok(limit) => tokio::time::timeout(limit, run).await.unwrap_or_else(|_| {
                    Ok(Outcome::failure("TimeLimitExceeded", format!("TimeLimitExceeded({secs})")))
                }),
                // Too large to represent: no limit.
                Err(_) => run.await,
            },
            _ => run.await,
        }
    };
    let outcome = tokio::select! {
        r = limited => match r {
            Ok(o) => o,
            Err(panic) => Outcome::failure("panic", panic_message(panic.as_ref())),
        },
        () = shared.abandon.cancelled() => {
            tracing::warn!("Task {name}[{id}] abandoned at shutdown; it runs again after its lease expires");
            return;
        }
    };
    let runtime = started.elapsed().as_secs_f64();
    match outcome {
        Outcome::Success(value) => {
            tracing::info!(
                "Task {name}[{id}] succeeded in {}s: {}",
                json::python_float_repr(runtime),
                pyrepr::repr(&value)
            );
            shared.stats.succeeded.fetch_add(1, Ordering::Relaxed);
            shared.session.settle(Settlement::Complete(lease));
        }
        Outcome::Failure { exc_type, message } => {
            tracing::error!("Task {name}[{id}] raised unexpected: {exc_type}({})", pyrepr::repr(&message.into()));
            shared.stats.failed.fetch_add(1, Ordering::Relaxed);
            shared.session.settle(Settlement::Complete(lease));
        }
        Outcome::Retry { eta, reason } => {
            let delay = (eta - Utc::now()).num_milliseconds().max(0);
            #[allow(clippy::cast_precision_loss)]
            let secs = delay as f64 / 1000.0;
            tracing::info!("Task {name}[{id}] retry: Retry in {secs}s: {reason}");
            shared.stats.retried.fetch_add(1, Ordering::Relaxed);
            let next = message.to_retry(eta);
            shared.session.settle(Settlement::Retry { lease, payload: next.payload, eta });
        }
        Outcome::Reject { reason } => {
            tracing::warn!("Task {name}[{id}] rejected: {reason}; moving it to dead_letter");
            shared.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
            shared.session.settle(Settlement::DeadLetter(DeadLetterParams {
                lease,
                reason_code: "rejected".into(),
                reason,
            }));
        }
        Outcome::Handled { state } => {
            let counter = match state {
                celeriac_protocol::TaskState::Success => Some(&shared.stats.succeeded),
                celeriac_protocol::TaskState::Failure => Some(&shared.stats.failed),
                celeriac_protocol::TaskState::Retry => Some(&shared.stats.retried),
                _ => None,
            };
            if let Some(counter) = counter {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            shared.session.settle(Settlement::Complete(lease));
        }
        Outcome::NotStarted => give_back_unstarted(shared, lease, &name, &id),
        Outcome::Requeue { reason } if redeliveries >= shared.config.max_redeliveries => {
            tracing::error!(
                "Task {name}[{id}] was requeued ({reason}) after {redeliveries} redeliveries; limit reached, moving it to dead_letter"
            );
            shared.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
            shared.session.settle(Settlement::DeadLetter(DeadLetterParams {
                lease,
                reason_code: "redeliveries_exhausted".into(),
                reason: format!(
                    "requeued {} times ({reason}); limit is {} redeliveries",
                    redeliveries + 1,
                    shared.config.max_redeliveries
                ),
            }));
        }
        Outcome::Requeue { reason } => {
            tracing::warn!("Task {name}[{id}] requeued: {reason}");
            shared.stats.released.fetch_add(1, Ordering::Relaxed);
            shared.session.settle(Settlement::Requeue(lease));
        }
    }
    // Only now may the next task start: its log lines follow this task's outcome.
    drop(run_slot);
}
