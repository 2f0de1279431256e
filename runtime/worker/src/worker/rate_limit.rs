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
use tokio::sync::Notify;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{claim::SuspectPermit, execute::execute, Shared};
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
    /// Parked messages of this type may exist (this worker parked some, or another may have).
    parked: bool,
    /// Wakes the type's parked claimer.
    wake: Arc<Notify>,
    /// Stops the type's parked claimer.
    stop: CancellationToken,
}

/// What a message of a limited type may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admission {
    /// Start (it has its tokens, or its type has no limit).
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
            return Admission::Run;
        }
        let mut types = self.lock();
        let Some(t) = types.get_mut(task) else { return Admission::Run };
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
                t.next_token = at + interval(rate);
                at
            }
            None => now,
        };
        if t.limits.global.is_some() {
            t.stock -= 1;
        }
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
        let mut types = self.lock();
        let Some(t) = types.get_mut(task) else { return Ok(()) };
        let Some(rate) = t.limits.per_worker else { return Ok(()) };
        if let Some(due) = t.last_fired.map(|last| last + interval(rate)) {
            if due > now {
                return Err(due - now);
            }
        }
        t.last_fired = Some(now);
        t.next_token = t.next_token.max(now + interval(rate));
        Ok(())
    }

    /// How many messages of `task` could be admitted within [`HOLD_AHEAD`] by its per-worker
    /// limit (at most [`PARKED_BATCH`]), or how long until one could.
    fn room(&self, task: &str, now: Instant) -> Result<u32, Duration> {
        let types = self.lock();
        let Some(t) = types.get(task) else { return Err(POLL) };
        let Some(rate) = t.limits.per_worker else { return Ok(PARKED_BATCH) };
        let start = t.next_token.max(now);
        let horizon = now + HOLD_AHEAD;
        if start > horizon {
            return Err(start - horizon);
        }
        let fits = ((horizon - start).as_secs_f64() * rate).floor() + 1.0;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Ok((fits as u32).clamp(1, PARKED_BATCH))
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
        let row = |name: &str, scope: RateLimitScope| rows.iter().find(|r| r.task_name == name && r.scope == scope);
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
            // The table holds the app's fleet-wide limit once declared; before (the database
            // was unreachable at start) the app's own value applies.
            let global = match row(name, RateLimitScope::Global) {
                Some(r) => positive(r.effective()),
                None => declared.and_then(|d| d.global.as_ref()).map(celeriac_protocol::Rate::per_second),
            };
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

/// Records the app's limits in the table and reads the limits in force, before the worker
/// claims anything. A database error leaves the app's own limits in force.
pub(super) async fn start(shared: &Arc<Shared>, tracker: &TaskTracker) {
    let limits = &shared.rate_limits;
    let (per_worker, global) = limits.declarations();
    let store = &shared.store;
    let declared = async {
        store.rate_limit_declare(RateLimitScope::Worker, &per_worker, &limits.registered).await?;
        store.rate_limit_declare(RateLimitScope::Global, &global, &limits.registered).await
    };
    if let Err(e) = declared.await {
        tracing::warn!(error = %e, "rate limits: cannot record the app's limits in the database");
    }
    refresh(shared, tracker, &mut None, true).await;
}

/// Reads the table and applies what changed; starts and stops parked claimers; records the
/// limited task types in the worker's row when they changed (or `record` says so).
async fn refresh(shared: &Arc<Shared>, tracker: &TaskTracker, recorded: &mut Option<Vec<String>>, record: bool) {
    let rows = match shared.store.rate_limit_list().await {
        Ok(rows) => rows,
        Err(e) => {
            if recorded.is_none() {
                tracing::warn!(error = %e, "rate limits: cannot read celeriac.rate_limit; the app's limits apply");
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

/// Keeps the limits up to date until the worker stops. The limited task types are recorded in
/// the worker's row again every [`RECORD_AGAIN_EVERY`] polls, in case the row was re-created
/// by a heartbeat after being pruned.
pub(super) async fn refresh_loop(shared: Arc<Shared>, tracker: TaskTracker) {
    let mut recorded = None;
    for poll in 1_u64.. {
        tokio::select! {
            () = shared.stopping.cancelled() => return,
            () = tokio::time::sleep(POLL) => {}
        }
        refresh(&shared, &tracker, &mut recorded, poll % RECORD_AGAIN_EVERY == 0).await;
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
        let room = match limits.room(&task, Instant::now()) {
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
            match shared.store.message_parked_exists(&task, &shared.config.queues).await {
                Ok(true) => limits.set_parked(&task, true),
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "rate limits: cannot look for parked {task} messages");
                }
            }
            continue;
        }
        let mut want = room;
        if limits.global(&task) {
            let stock = limits.stock(&task);
            if stock < want {
                match shared.store.rate_limit_acquire(&task, want - stock).await {
                    Ok(TokenGrant::Unlimited) => {}
                    Ok(TokenGrant::Granted { granted, next_in, .. }) => {
                        backoff.reset();
                        let held = limits.add_stock(&task, granted);
                        if !held {
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
                want = want.min(limits.stock(&task).max(1));
            }
        }
        let suspect = shared.suspect_slot.clone().try_acquire_owned().ok();
        let params = ClaimParams {
            worker_id: shared.worker_id,
            queues: &shared.config.queues,
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
        for message in claimed {
            let suspect = if message.redeliveries > 0 {
                suspect.take().map(|permit| SuspectPermit::new(permit, shared.wake.clone()))
            } else {
                None
            };
            tracker.spawn(execute(shared.clone(), message, None, None, suspect));
        }
        if got < want {
            // None left: newly claimed messages of this type may run at once again. Fleet-wide
            // tokens beyond what the claimed ones use go back to the bucket.
            limits.set_parked(&task, false);
            let spare = limits.take_stock(&task, limits.stock(&task).saturating_sub(got));
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
        let l = limits(Some(2.0), None);
        let now = Instant::now();
        assert_eq!(l.admit("other", false, now), Admission::Run, "unlimited types run");
        assert_eq!(l.admit("t", false, now), Admission::Run, "a full bucket: the first runs at once");
        assert_eq!(l.admit("t", false, now), Admission::At(now + Duration::from_millis(500)));
        assert_eq!(l.admit("t", false, now), Admission::At(now + Duration::from_millis(1000)));
        assert_eq!(l.room("t", now), Err(Duration::from_millis(500)));
        assert_eq!(l.admit("t", false, now), Admission::Park, "1.5 s away: parked");
        // Once parked, newer messages of the type queue behind the parked ones ...
        let later = now + Duration::from_secs(5);
        assert_eq!(l.admit("t", false, later), Admission::Park);
        // ... which the parked claimer takes back as the bucket allows.
        assert_eq!(l.room("t", later), Ok(3));
        assert_eq!(l.admit("t", true, later), Admission::Run);
        assert_eq!(l.admit("t", true, later), Admission::At(later + Duration::from_millis(500)));
    }

    #[test]
    fn starts_are_let_go_one_interval_apart_even_after_a_late_wake() {
        let l = limits(Some(2.0), None);
        let now = Instant::now();
        assert_eq!(l.admit("t", false, now), Admission::Run);
        assert_eq!(l.fire("t", now), Ok(()));
        assert_eq!(l.admit("t", false, now), Admission::At(now + Duration::from_millis(500)));
        assert_eq!(l.admit("t", false, now), Admission::At(now + Duration::from_millis(1000)));
        // The second woke 300 ms late: the third waits a whole interval after it.
        assert_eq!(l.fire("t", now + Duration::from_millis(800)), Ok(()));
        assert_eq!(l.fire("t", now + Duration::from_millis(1000)), Err(Duration::from_millis(300)));
        assert_eq!(l.fire("t", now + Duration::from_millis(1300)), Ok(()));
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
        assert_eq!(l.room("t", now), Ok(PARKED_BATCH));
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
        let resolved = l.resolve(&[]);
        assert_eq!(resolved["a"], Limits { per_worker: Some(2.0), global: None });
        let b = resolved["b"];
        assert!((b.per_worker.unwrap() - 1.0 / 6.0).abs() < 1e-12 && (b.global.unwrap() - 100.0 / 60.0).abs() < 1e-12);
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
