//! Rate limits: Celery's `rate_limit` per worker process, and fleet-wide limits in PostgreSQL.
//!
//! A limited task type has a per-worker bucket (Celery's token bucket of capacity 1, kept as the
//! time its next token is due), a fleet-wide one (tokens taken from the database's bucket in
//! batches and held here until used), or both. A message of that type runs when both give it a
//! token. A worker holds only the messages it may run within [`HOLD_AHEAD`]; it *parks* the rest
//! in the database (`Settlement::Park`): they leave the claims' way, so other task types keep
//! flowing, no lease is held for long and the prefetch window is not filled with waiting
//! messages. Each limited type has a *parked claimer* that takes parked messages back, oldest
//! first, as fast as the limits allow. While parked messages of a type may exist, newly claimed
//! ones of that type are parked behind them, which keeps each type in order.
//!
//! Limits come from the app (the registry's declared limits, written to `celeriac.rate_limit` at
//! start) and from operators (`celeriac rate-limit set`, which beats the app's); the worker reads
//! the table every [`POLL`], so a change applies within a second. `disable_rate_limits` (Celery's
//! `worker_disable_rate_limits`) turns the per-worker limits off; fleet-wide limits still apply.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::{Duration, Instant},
};

use celeriac_store::{ClaimParams, RateLimitRow, RateLimitScope, RateValue, TokenGrant};
use tokio::sync::{oneshot, Notify};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{claim::SuspectPermit, execute::execute, line::Turn, Shared};
use crate::registry::Registry;

/// A worker holds a limited type's messages that it may start within this long; it parks the
/// others.
pub(super) const HOLD_AHEAD: Duration = Duration::from_secs(1);
/// How often the worker reads `celeriac.rate_limit` (operators' changes apply within it).
const POLL: Duration = Duration::from_millis(500);
/// How often an idle parked claimer looks for messages other workers parked.
const PARKED_POLL: Duration = Duration::from_secs(1);
/// Most messages one parked claim takes.
const PARKED_BATCH: u32 = 64;
/// How long the parked claimer waits while the messages it took back have not started.
const BUSY_PAUSE: Duration = Duration::from_millis(20);

/// What the limits allow a task type, in tokens per second.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Limits {
    per_worker: Option<f64>,
    global: Option<f64>,
}

/// One limited task type's buckets.
#[derive(Debug)]
struct TypeState {
    limits: Limits,
    /// When the per-worker bucket's next token is due (its capacity is one token, as in Celery).
    next_token: Instant,
    /// When the last message of this type was let go (see [`RateLimits::fire`]).
    last_fired: Option<Instant>,
    /// Fleet-wide tokens taken from the database and not used yet.
    stock: u32,
    /// Admitted messages that have not started yet (waiting for their time or a run slot):
    /// the parked claimer takes no more while they are as many as it could admit.
    waiting: u32,
    /// Parked messages of this type may exist (this worker parked some, or another may have).
    parked: bool,
    /// Wakes the type's parked claimer.
    wake: Arc<Notify>,
    /// Stops the type's parked claimer.
    stop: CancellationToken,
}

/// What a message may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admission {
    /// Its type has no limit.
    Unlimited,
    /// Start: it has its tokens.
    Run,
    /// Start at this time: its tokens are reserved.
    At(Instant),
    /// Park it: it may not run within [`HOLD_AHEAD`].
    Park,
}

/// The worker's rate limits and their buckets.
#[derive(Debug)]
pub(super) struct RateLimits {
    /// Whether any type is limited (the fast path for unlimited workers).
    any: AtomicBool,
    types: Mutex<HashMap<String, TypeState>>,
    /// The app's limits, by task name.
    declared: BTreeMap<String, crate::DeclaredRateLimits>,
    /// Registered task names (only those are limited here).
    registered: Vec<String>,
    /// Per-worker limits off (`worker_disable_rate_limits`).
    per_worker_disabled: bool,
}

impl RateLimits {
    pub(super) fn new(registry: &Registry, per_worker_disabled: bool) -> RateLimits {
        let registered: Vec<String> = registry.names().into_iter().map(str::to_owned).collect();
        let declared = registered
            .iter()
            .map(|n| (n.clone(), registry.rate_limits(n)))
            .filter(|(_, d)| d.per_worker.is_some() || d.global.is_some())
            .collect();
        RateLimits {
            any: AtomicBool::new(false),
            types: Mutex::new(HashMap::new()),
            declared,
            registered,
            per_worker_disabled,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, TypeState>> {
        self.types.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Decides what a message of `task` may do now. `from_parked`: it was taken back by its
    /// type's parked claimer (it does not queue behind parked messages: it is one of them).
    pub(super) fn admit(&self, task: &str, from_parked: bool, now: Instant) -> Admission {
        if !self.any.load(Ordering::Relaxed) {
            return Admission::Unlimited;
        }
        let mut types = self.lock();
        let Some(t) = types.get_mut(task) else { return Admission::Unlimited };
        let park = |t: &mut TypeState| {
            t.parked = true;
            t.wake.notify_one();
            Admission::Park
        };
        if !from_parked && t.parked {
            return park(t);
        }
        if t.limits.global.is_some() && t.stock == 0 {
            return park(t);
        }
        let at = match t.limits.per_worker {
            Some(rate) => {
                let at = t.next_token.max(now);
                if at > now + HOLD_AHEAD {
                    return park(t);
                }
                t.next_token = at + spacing(rate);
                at
            }
            None => now,
        };
        if t.limits.global.is_some() {
            t.stock -= 1;
        }
        t.waiting += 1;
        if at <= now {
            Admission::Run
        } else {
            Admission::At(at)
        }
    }

    /// Lets a message admitted by the per-worker limit go at `now`, or says how much longer it
    /// must wait: starts of one type are never closer than the limit's interval, measured when
    /// they are let go, as Celery's bucket measures them (a reservation that woke late does not
    /// let the next one go early).
    pub(super) fn fire(&self, task: &str, now: Instant) -> Result<(), Duration> {
        if !self.any.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut types = self.lock();
        let Some(t) = types.get_mut(task) else { return Ok(()) };
        let Some(rate) = t.limits.per_worker else { return Ok(()) };
        if let Some(due) = t.last_fired.map(|last| last + spacing(rate)) {
            if due > now {
                return Err(due - now);
            }
        }
        t.last_fired = Some(now);
        t.next_token = t.next_token.max(now + spacing(rate));
        Ok(())
    }

    /// An admitted message of `task` started (or will not): see [`Admitted`].
    fn started(&self, task: &str) {
        if let Some(t) = self.lock().get_mut(task) {
            t.waiting = t.waiting.saturating_sub(1);
        }
    }

    /// How many more messages of `task` the parked claimer may take back now: as many as its
    /// per-worker limit admits within [`HOLD_AHEAD`] (at most [`PARKED_BATCH`]), less those
    /// admitted and not started yet; or how long to wait before asking again.
    fn room(&self, task: &str, now: Instant) -> Result<u32, Duration> {
        let types = self.lock();
        let Some(t) = types.get(task) else { return Err(POLL) };
        let fits = match t.limits.per_worker {
            None => PARKED_BATCH,
            Some(rate) => {
                let start = t.next_token.max(now);
                let horizon = now + HOLD_AHEAD;
                if start > horizon {
                    return Err(start - horizon);
                }
                let fits = ((horizon - start).as_secs_f64() / spacing(rate).as_secs_f64()).floor() + 1.0;
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let fits = (fits as u32).clamp(1, PARKED_BATCH);
                fits
            }
        };
        match fits.saturating_sub(t.waiting) {
            0 => Err(BUSY_PAUSE),
            room => Ok(room),
        }
    }

    /// Stops applying `task`'s fleet-wide limit until the next refresh (its row is gone).
    fn drop_global(&self, task: &str) {
        if let Some(t) = self.lock().get_mut(task) {
            t.limits.global = None;
        }
    }

    /// Whether `task`'s parked messages may exist (and sets it so).
    fn set_parked(&self, task: &str, parked: bool) {
        if let Some(t) = self.lock().get_mut(task) {
            t.parked = parked;
        }
    }

    /// The task types whose newly claimed messages are parked by the claim itself: those that
    /// may have parked messages (newer ones queue behind them).
    pub(super) fn parking(&self) -> Vec<String> {
        if !self.any.load(Ordering::Relaxed) {
            return Vec::new();
        }
        self.lock().iter().filter(|(_, t)| t.parked).map(|(name, _)| name.clone()).collect()
    }

    fn parked(&self, task: &str) -> bool {
        self.lock().get(task).is_some_and(|t| t.parked)
    }

    fn stock(&self, task: &str) -> u32 {
        self.lock().get(task).map_or(0, |t| t.stock)
    }

    fn add_stock(&self, task: &str, tokens: u32) -> bool {
        match self.lock().get_mut(task) {
            Some(t) if t.limits.global.is_some() => {
                t.stock = t.stock.saturating_add(tokens);
                true
            }
            _ => false,
        }
    }

    /// Takes back up to `tokens` unused fleet-wide tokens (to return them to the database).
    fn take_stock(&self, task: &str, tokens: u32) -> u32 {
        match self.lock().get_mut(task) {
            Some(t) => {
                let taken = t.stock.min(tokens);
                t.stock -= taken;
                taken
            }
            None => 0,
        }
    }

    fn global(&self, task: &str) -> bool {
        self.lock().get(task).is_some_and(|t| t.limits.global.is_some())
    }

    /// The limits of every registered task: the app's, overridden by the table's.
    fn resolve(&self, rows: &[RateLimitRow]) -> BTreeMap<String, Limits> {
        let by_key: HashMap<(&str, RateLimitScope), &RateLimitRow> =
            rows.iter().map(|r| ((r.task_name.as_str(), r.scope), r)).collect();
        let row = |name: &str, scope: RateLimitScope| by_key.get(&(name, scope)).copied();
        let positive = |v: Option<&RateValue>| v.map(|v| v.per_second).filter(|r| *r > 0.0 && r.is_finite());
        let mut limits = BTreeMap::new();
        for name in &self.registered {
            let declared = self.declared.get(name);
            let per_worker = if self.per_worker_disabled {
                None
            } else {
                match row(name, RateLimitScope::Worker).and_then(|r| r.set.as_ref()) {
                    Some(set) => positive(Some(set)),
                    None => declared.and_then(|d| d.per_worker.as_ref()).map(celeriac_protocol::Rate::per_second),
                }
            };
            // A fleet-wide limit is the table's bucket: the app's value applies once it is
            // declared there (at start, retried until it works).
            let global = row(name, RateLimitScope::Global).and_then(|r| positive(r.effective()));
            if per_worker.is_some() || global.is_some() {
                limits.insert(name.clone(), Limits { per_worker, global });
            }
        }
        limits
    }

    /// Applies resolved limits; returns the types that became limited (their claimers are to be
    /// started) and the fleet-wide tokens of types no longer limited that way (to give back).
    fn apply(&self, limits: &BTreeMap<String, Limits>) -> (Vec<String>, Vec<(String, u32)>) {
        let mut types = self.lock();
        let mut started = Vec::new();
        let mut give_back = Vec::new();
        types.retain(|name, t| {
            let keep = limits.contains_key(name);
            if !keep {
                t.stop.cancel();
                give_back.push((name.clone(), t.stock));
            }
            keep
        });
        for (name, new) in limits {
            match types.get_mut(name) {
                Some(t) => {
                    if t.limits != *new {
                        tracing::info!("rate limit of {name} is now {}", describe(*new));
                    }
                    if new.global.is_none() && t.stock > 0 {
                        give_back.push((name.clone(), std::mem::take(&mut t.stock)));
                    }
                    // A slower rate applies from the last start on.
                    if let (Some(rate), Some(last)) = (new.per_worker, t.last_fired) {
                        t.next_token = t.next_token.max(last + spacing(rate));
                    }
                    t.limits = *new;
                }
                None => {
                    tracing::info!("rate limit of {name}: {}", describe(*new));
                    types.insert(
                        name.clone(),
                        TypeState {
                            limits: *new,
                            next_token: Instant::now(),
                            last_fired: None,
                            stock: 0,
                            waiting: 0,
                            // Parked messages may be left from an earlier run.
                            parked: true,
                            wake: Arc::new(Notify::new()),
                            stop: CancellationToken::new(),
                        },
                    );
                    started.push(name.clone());
                }
            }
        }
        self.any.store(!types.is_empty(), Ordering::Relaxed);
        (started, give_back)
    }

    fn claimer(&self, task: &str) -> Option<(Arc<Notify>, CancellationToken)> {
        self.lock().get(task).map(|t| (t.wake.clone(), t.stop.clone()))
    }

    fn limited_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.lock().keys().cloned().collect();
        names.sort();
        names
    }

    /// The app's limits, as the registry declared them, by scope (to record in the table).
    fn declarations(&self) -> (Declared, Declared) {
        let value = |r: &celeriac_protocol::Rate| RateValue { spec: r.spec().to_owned(), per_second: r.per_second() };
        let per_worker =
            self.declared.iter().filter_map(|(n, d)| d.per_worker.as_ref().map(|r| (n.clone(), value(r)))).collect();
        let global =
            self.declared.iter().filter_map(|(n, d)| d.global.as_ref().map(|r| (n.clone(), value(r)))).collect();
        (per_worker, global)
    }
}

/// Task names and their limits, as declared.
type Declared = Vec<(String, RateValue)>;

/// The time between two starts of a type limited to `per_second` on one worker: the limit's
/// interval, plus 0.5 % of it (at most 2 ms) so that the starts the handlers see, which follow
/// their release by a moment of scheduling, are not closer than the interval either.
fn spacing(per_second: f64) -> Duration {
    let interval = interval(per_second);
    interval.saturating_add((interval / 200).min(Duration::from_millis(2)))
}

fn interval(per_second: f64) -> Duration {
    Duration::try_from_secs_f64(1.0 / per_second).unwrap_or(Duration::MAX)
}

fn describe(limits: Limits) -> String {
    let rate = |r: f64| format!("{r:.4}/s").replace(".0000/s", "/s");
    match (limits.per_worker, limits.global) {
        (Some(w), Some(g)) => format!("{} per worker, {} fleet-wide", rate(w), rate(g)),
        (Some(w), None) => format!("{} per worker", rate(w)),
        (None, Some(g)) => format!("{} fleet-wide", rate(g)),
        (None, None) => "none".to_owned(),
    }
}

/// A message admitted by a rate limit that has not started yet; dropping it (when the message
/// gets its run slot, or gives up) lets the parked claimer take back another.
pub(super) struct Admitted<'a> {
    limits: &'a RateLimits,
    task: String,
}

impl<'a> Admitted<'a> {
    /// The guard for an admission (none for an unlimited type or a parked message).
    pub(super) fn new(limits: &'a RateLimits, task: &str, admission: Admission) -> Option<Admitted<'a>> {
        matches!(admission, Admission::Run | Admission::At(_)).then(|| Admitted { limits, task: task.to_owned() })
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.limits.started(&self.task);
    }
}

/// Records the app's limits in the table (retried by [`refresh_loop`] until it works) and reads
/// the limits in force, before the worker claims anything.
pub(super) async fn start(shared: &Arc<Shared>, tracker: &TaskTracker) -> bool {
    let declared = declare(shared).await;
    refresh(shared, tracker, &mut None, true).await;
    declared
}

async fn declare(shared: &Shared) -> bool {
    let limits = &shared.rate_limits;
    let (per_worker, global) = limits.declarations();
    let store = &shared.store;
    let declared = async {
        store.rate_limit_declare(RateLimitScope::Worker, &per_worker, &limits.registered).await?;
        store.rate_limit_declare(RateLimitScope::Global, &global, &limits.registered).await
    };
    match declared.await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "rate limits: cannot record the app's limits in the database yet");
            false
        }
    }
}

/// Reads the table and applies what changed; starts and stops parked claimers; records the
/// limited task types in the worker's row when they changed (or `record` says so).
async fn refresh(shared: &Arc<Shared>, tracker: &TaskTracker, recorded: &mut Option<Vec<String>>, record: bool) {
    let rows = match shared.store.rate_limit_list().await {
        Ok(rows) => rows,
        Err(e) => {
            if recorded.is_none() {
                tracing::warn!(error = %e, "rate limits: cannot read celeriac.rate_limit; per-worker limits apply");
            } else {
                tracing::debug!(error = %e, "rate limits: cannot read celeriac.rate_limit");
                return;
            }
            Vec::new()
        }
    };
    let limits = &shared.rate_limits;
    let (started, give_back) = limits.apply(&limits.resolve(&rows));
    for name in started {
        tracker.spawn(parked_claimer(shared.clone(), tracker.clone(), name));
    }
    for (name, tokens) in give_back {
        if let Err(e) = shared.store.rate_limit_give_back(&name, tokens).await {
            tracing::debug!(error = %e, "rate limits: cannot give back {tokens} token(s) of {name}");
        }
    }
    let names = limits.limited_names();
    if record || recorded.as_ref() != Some(&names) {
        match shared.store.worker_set_rate_limited(shared.worker_id, &names).await {
            Ok(()) => *recorded = Some(names),
            Err(e) => tracing::debug!(error = %e, "rate limits: cannot record the limited task types"),
        }
    }
}

/// Keeps the limits up to date until the worker stops: declares the app's limits if that failed
/// at start, and records the limited task types in the worker's row again every
/// [`RECORD_AGAIN_EVERY`] polls (in case a heartbeat re-created the row after it was pruned).
/// Fleet-wide tokens still held at the end go back to the database.
pub(super) async fn refresh_loop(shared: Arc<Shared>, tracker: TaskTracker, mut declared: bool) {
    let mut recorded = None;
    for poll in 1_u64.. {
        tokio::select! {
            () = shared.stopping.cancelled() => break,
            () = tokio::time::sleep(POLL) => {}
        }
        if !declared {
            declared = declare(&shared).await;
        }
        refresh(&shared, &tracker, &mut recorded, poll % RECORD_AGAIN_EVERY == 0).await;
    }
    for name in shared.rate_limits.limited_names() {
        let spare = shared.rate_limits.take_stock(&name, u32::MAX);
        if spare > 0 {
            let _ = shared.store.rate_limit_give_back(&name, spare).await;
        }
    }
}

/// Polls between two recordings of the limited task types in the worker's row (a minute).
const RECORD_AGAIN_EVERY: u64 = 120;

/// A short random pause, so workers waiting for the same fleet-wide token do not all ask at the
/// same instant, nor the same one always first.
fn jitter() -> Duration {
    let r = uuid::Uuid::new_v4().as_u128();
    #[allow(clippy::cast_possible_truncation)]
    Duration::from_micros((r % 4_000) as u64)
}

/// Takes parked messages of `task` back as fast as its limits allow, until the type is no longer
/// limited or the worker stops.
async fn parked_claimer(shared: Arc<Shared>, tracker: TaskTracker, task: String) {
    let Some((wake, stop)) = shared.rate_limits.claimer(&task) else { return };
    let limits = &shared.rate_limits;
    // Waits `d`, or until a message of the type is parked if `wakeable`; false: stop.
    let pause = |d: Duration, wakeable: bool| {
        let (stop, stopping, wake) = (stop.clone(), shared.stopping.clone(), wake.clone());
        async move {
            tokio::select! {
                () = stop.cancelled() => false,
                () = stopping.cancelled() => false,
                () = wake.notified(), if wakeable => true,
                () = tokio::time::sleep(d) => true,
            }
        }
    };
    let mut backoff = celeriac_store::Backoff::new();
    loop {
        if stop.is_cancelled() || shared.stopping.is_cancelled() {
            return;
        }
        let mut want = match limits.room(&task, Instant::now()) {
            Ok(room) => room,
            Err(wait) => {
                if !pause(wait, false).await {
                    return;
                }
                continue;
            }
        };
        if !limits.parked(&task) {
            if !pause(PARKED_POLL, true).await {
                return;
            }
            if limits.parked(&task) {
                continue;
            }
            match shared.store.message_parked_exists(&task, &shared.queues()).await {
                Ok(true) => limits.set_parked(&task, true),
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "rate limits: cannot look for parked {task} messages");
                }
            }
            continue;
        }
        if limits.global(&task) {
            let free = limits.stock(&task);
            if free < want {
                match shared.store.rate_limit_acquire(&task, want - free).await {
                    Ok(TokenGrant::Unlimited) => {
                        // The bucket's row is gone (its limit was cleared): no fleet-wide limit
                        // until the next refresh says otherwise.
                        limits.drop_global(&task);
                        continue;
                    }
                    Ok(TokenGrant::Granted { granted, next_in, .. }) => {
                        backoff.reset();
                        if !limits.add_stock(&task, granted) {
                            let _ = shared.store.rate_limit_give_back(&task, granted).await;
                        }
                        if limits.stock(&task) == 0 {
                            if !pause(next_in.min(POLL) + jitter(), false).await {
                                return;
                            }
                            continue;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "rate limits: cannot take tokens of {task}; retrying with backoff");
                        if !backoff.wait(&shared.stopping).await {
                            return;
                        }
                        continue;
                    }
                }
                want = want.min(limits.stock(&task));
            }
        }
        let suspect = shared.suspect_slot.clone().try_acquire_owned().ok();
        let queues = shared.queues();
        let params = ClaimParams {
            worker_id: shared.worker_id,
            queues: &queues,
            limit: i64::from(want),
            lease_seconds: shared.config.lease.as_secs_f64(),
            after: None,
            suspects: i64::from(suspect.is_some()),
            park: &[],
        };
        let started = Instant::now();
        let claimed = match shared.store.message_claim_parked(&params, &task).await {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::warn!(error = %e, "rate limits: cannot claim parked {task} messages; retrying with backoff");
                if !backoff.wait(&shared.stopping).await {
                    return;
                }
                continue;
            }
        };
        backoff.reset();
        let got = u32::try_from(claimed.len()).unwrap_or(u32::MAX);
        shared.session.hold(&claimed, started);
        shared.stats.received.fetch_add(u64::from(got), Ordering::Relaxed);
        let mut suspect = suspect;
        let mut admitted = Vec::with_capacity(claimed.len());
        for message in claimed {
            let suspect = if message.redeliveries > 0 {
                suspect.take().map(|permit| SuspectPermit::new(permit, shared.wake.clone()))
            } else {
                None
            };
            // Each message signals once its rate limit decided (and, if it runs at once, once it
            // has a run slot): only then does the next claim know what room is left.
            let (decided, decision) = oneshot::channel();
            admitted.push(decision);
            let turn = Turn::Outside { _decided: decided };
            tracker.spawn(execute(shared.clone(), message, None, turn, suspect));
        }
        for decision in admitted {
            let _ = decision.await;
        }
        if got < want {
            // None left: newly claimed messages of this type may run at once again. Fleet-wide
            // tokens not promised to a message go back to the bucket.
            limits.set_parked(&task, false);
            let spare = limits.take_stock(&task, limits.stock(&task));
            if spare > 0 {
                if let Err(e) = shared.store.rate_limit_give_back(&task, spare).await {
                    tracing::debug!(error = %e, "rate limits: cannot give back {spare} token(s) of {task}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_worker: Option<f64>, global: Option<f64>) -> RateLimits {
        let mut registry = Registry::new();
        registry.register("t", |(): ()| async { Ok::<_, crate::TaskError>(()) });
        let limits = RateLimits::new(&registry, false);
        let mut resolved = BTreeMap::new();
        resolved.insert("t".to_owned(), Limits { per_worker, global });
        limits.apply(&resolved);
        limits.set_parked("t", false);
        limits
    }

    #[test]
    fn the_per_worker_bucket_spaces_starts_and_parks_beyond_the_horizon() {
        let l = limits(Some(3.0), None);
        let now = Instant::now();
        assert_eq!(l.admit("other", false, now), Admission::Unlimited);
        assert_eq!(l.admit("t", false, now), Admission::Run, "a full bucket: the first runs at once");
        assert_eq!(l.admit("t", false, now), Admission::At(now + spacing(3.0)));
        assert_eq!(l.admit("t", false, now), Admission::At(now + spacing(3.0) * 2));
        // The next start is due three intervals from now, just past the horizon.
        assert_eq!(l.room("t", now), Err(spacing(3.0) * 3 - HOLD_AHEAD));
        assert_eq!(l.admit("t", false, now), Admission::Park, "beyond a second away: parked");
        // Once parked, newer messages of the type queue behind the parked ones ...
        let later = now + Duration::from_secs(5);
        assert_eq!(l.admit("t", false, later), Admission::Park);
        // ... which the parked claimer takes back as the bucket allows, less those admitted
        // and not started yet.
        assert_eq!(l.room("t", later), Err(BUSY_PAUSE), "three admitted, none started");
        for _ in 0..3 {
            l.started("t");
        }
        assert_eq!(l.room("t", later), Ok(3));
        assert_eq!(l.admit("t", true, later), Admission::Run);
        assert_eq!(l.admit("t", true, later), Admission::At(later + spacing(3.0)));
        // One more fits within the second, but two are admitted and not started.
        assert_eq!(l.room("t", later), Err(BUSY_PAUSE));
        l.started("t");
        l.started("t");
        assert_eq!(l.room("t", later), Ok(1));
    }

    #[test]
    fn starts_are_let_go_one_interval_apart_even_after_a_late_wake() {
        let l = limits(Some(3.0), None);
        let now = Instant::now();
        assert_eq!(l.admit("t", false, now), Admission::Run);
        assert_eq!(l.fire("t", now), Ok(()));
        assert_eq!(l.admit("t", false, now), Admission::At(now + spacing(3.0)));
        assert_eq!(l.admit("t", false, now), Admission::At(now + spacing(3.0) * 2));
        // The second woke about 465 ms late: the third waits a whole interval after it.
        let late = now + Duration::from_millis(800);
        assert_eq!(l.fire("t", late), Ok(()));
        assert_eq!(l.fire("t", now + spacing(3.0) * 2), Err(late + spacing(3.0) - (now + spacing(3.0) * 2)));
        assert_eq!(l.fire("t", late + spacing(3.0)), Ok(()));
        assert_eq!(l.fire("other", now), Ok(()), "unlimited types are never held");
    }

    #[test]
    fn fleet_wide_limits_run_on_tokens_held() {
        let l = limits(None, Some(100.0));
        let now = Instant::now();
        assert_eq!(l.admit("t", false, now), Admission::Park, "no token held");
        assert!(l.add_stock("t", 2));
        assert_eq!(l.admit("t", true, now), Admission::Run);
        assert_eq!(l.admit("t", true, now), Admission::Run);
        assert_eq!(l.admit("t", true, now), Admission::Park);
        assert_eq!(l.room("t", now), Ok(PARKED_BATCH - 2));
        // Its row gone, the type runs unlimited until the next refresh.
        l.drop_global("t");
        assert_eq!(l.admit("t", true, now), Admission::Run);
    }

    #[test]
    fn the_table_overrides_the_app_and_disabling_keeps_fleet_wide_limits() {
        let mut registry = Registry::new();
        for name in ["a", "b", "c"] {
            registry.register(name, |(): ()| async { Ok::<_, crate::TaskError>(()) });
        }
        registry.rate_limit("a", "2/s").unwrap();
        registry.rate_limit("b", "10/m").unwrap().global_rate_limit("b", "100/m").unwrap();
        let row = |task: &str, scope, declared: Option<f64>, set: Option<f64>| RateLimitRow {
            task_name: task.into(),
            scope,
            declared: declared.map(|r| RateValue { spec: r.to_string(), per_second: r }),
            set: set.map(|r| RateValue { spec: r.to_string(), per_second: r }),
            updated_at: chrono::Utc::now(),
        };
        let l = RateLimits::new(&registry, false);
        // The app's per-worker limits apply without the table; its fleet-wide ones once their
        // bucket is in the table.
        let resolved = l.resolve(&[]);
        assert_eq!(resolved["a"], Limits { per_worker: Some(2.0), global: None });
        let b = resolved["b"];
        assert!((b.per_worker.unwrap() - 1.0 / 6.0).abs() < 1e-12 && b.global.is_none());
        assert!(!resolved.contains_key("c"));
        let rows = [
            row("a", RateLimitScope::Worker, Some(2.0), Some(0.0)),
            row("b", RateLimitScope::Global, Some(1.0), Some(5.0)),
            row("c", RateLimitScope::Global, None, Some(3.0)),
            row("unregistered", RateLimitScope::Global, None, Some(3.0)),
        ];
        let resolved = l.resolve(&rows);
        assert!(!resolved.contains_key("a"), "an operator's 0 lifts the app's limit");
        assert_eq!(resolved["b"].global, Some(5.0));
        assert_eq!(resolved["c"], Limits { per_worker: None, global: Some(3.0) });
        assert!(!resolved.contains_key("unregistered"));
        let disabled = RateLimits::new(&registry, true).resolve(&rows);
        assert_eq!(disabled["b"], Limits { per_worker: None, global: Some(5.0) });
        assert!(!disabled.contains_key("a"));
    }
}
