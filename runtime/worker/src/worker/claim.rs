//! Claiming: one claim statement for as many messages as there are free prefetch slots, two
//! in flight while the queue is busy, keyset cursors between full claims, at most one suspect
//! held; the claimed messages join the start line (line.rs).

use std::{
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use celeriac_store::{Backoff, ClaimCursor, ClaimParams, ClaimedMessage};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;

use super::{execute::execute, Shared};

/// Where the next claim starts. Under load most claims continue from the last row claimed in
/// each queue (a keyset cursor), which keeps their cost flat however many rows were consumed
/// before; every [`FULL_CLAIM_EVERY`] claims or [`FULL_CLAIM_INTERVAL`], and whenever a cursor
/// claim comes back short, a full claim from the head of each queue picks up what a cursor
/// cannot see: newly arrived higher-priority rows, released or rescued rows, rows whose
/// producer committed late.
#[derive(Debug)]
pub(super) struct ClaimState {
    cursors: Vec<Option<ClaimCursor>>,
    since_full: u32,
    last_full: Instant,
    force_full: bool,
    /// Bumped when the queues change (`add_consumer`, `cancel_consumer`): a claim issued before
    /// does not move the new cursors.
    generation: u64,
}

/// Cursor claims between two full claims, at most.
const FULL_CLAIM_EVERY: u32 = 8;
/// Longest time between two full claims while the queue is busy.
const FULL_CLAIM_INTERVAL: Duration = Duration::from_millis(100);

impl ClaimState {
    pub(super) fn new(queues: usize) -> Self {
        ClaimState {
            cursors: vec![None; queues],
            since_full: 0,
            last_full: Instant::now(),
            force_full: true,
            generation: 0,
        }
    }

    /// Starts over for a new list of `queues` queues.
    pub(super) fn reset(&mut self, queues: usize) {
        let generation = self.generation + 1;
        *self = ClaimState { generation, ..ClaimState::new(queues) };
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

/// The one suspect a worker may hold (a message that came back after a lost lease or a requeue;
/// see `migrations/0002_claim_suspects.sql`): taken by the claim that brought it, held until its
/// outcome is handed to the completer, then the claim loop is woken to take the next.
pub(super) struct SuspectPermit {
    _permit: OwnedSemaphorePermit,
    wake: Arc<Notify>,
}

impl SuspectPermit {
    pub(super) fn new(permit: OwnedSemaphorePermit, wake: Arc<Notify>) -> SuspectPermit {
        SuspectPermit { _permit: permit, wake }
    }
}

impl Drop for SuspectPermit {
    fn drop(&mut self) {
        self.wake.notify_one();
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

/// Outcomes queued for the completer beyond which the worker stops claiming until it catches up
/// (a few of its write rounds).
const MOST_UNWRITTEN: usize = 4096;

pub(super) async fn claim_loop(shared: &Arc<Shared>, tracker: &TaskTracker) {
    let config = &shared.config;
    let concurrency = config.autoscale.map_or(config.concurrency, |a| a.max.max(config.concurrency));
    let slots = shared.window.slots().clone();
    let tickets = Arc::new(Semaphore::new(CLAIMS_IN_FLIGHT));
    let mut pending: Vec<tokio::sync::oneshot::Receiver<ClaimResult>> = Vec::new();
    let mut backoff = Backoff::new();
    let mut busy = false;
    loop {
        // A shrink wakes the wait for permits below: the batch it waits for may no longer fit.
        let shrunk = shared.window.shrunk.notified();
        tokio::pin!(shrunk);
        shrunk.as_mut().enable();
        // When the queue is busy, claim in batches to save round trips, but never let execution
        // slots idle for it: wait for at most the prefetched part of the window to free up.
        // When it is idle, claim as soon as one slot is free.
        shared.window.settle_shrink();
        let window = shared.window.size();
        let batch_floor = (window / 2).min(window.saturating_sub(concurrency)).max(1);
        let most_held = window + MOST_UNWRITTEN;
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
        // Outcomes not yet written keep their leases held; past a bound, claiming waits for
        // the completer, so a completer that falls behind (a slow database) is not buried
        // under ever more work and every held lease keeps being renewed.
        while shared.session.held_count() > most_held {
            tokio::select! {
                biased;
                () = shared.stopping.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
        }
        let want_at_least = if busy { batch_floor } else { 1 };
        let mut permits = tokio::select! {
            biased;
            () = shared.stopping.cancelled() => return,
            p = slots.clone().acquire_many_owned(u32::try_from(want_at_least).unwrap_or(1)) => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            () = &mut shrunk => continue,
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
        let Some(permits) = shared.window.pay_owed(permits) else { continue };
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
    // The queues and their cursors, read together (the queues change under this lock).
    let (queues, cursors, generation) = match shared.claim_state.lock() {
        Ok(mut s) => (shared.queues(), s.next(), s.generation),
        Err(_) => (shared.queues(), None, u64::MAX),
    };
    // Suspects are looked for by full claims only (every 100 ms at most under load): cursor
    // claims, the bulk of a busy queue's claims, skip that part of the statement.
    let mut suspect = if cursors.is_none() { shared.suspect_slot.clone().try_acquire_owned().ok() } else { None };
    let park = shared.rate_limits.parking();
    let params = ClaimParams {
        worker_id: shared.worker_id,
        queues: &queues,
        limit: i64::try_from(want).unwrap_or(i64::MAX),
        lease_seconds: shared.config.lease.as_secs_f64(),
        after: cursors.as_deref(),
        suspects: i64::from(suspect.is_some()),
        park: &park,
    };
    let started = Instant::now();
    let result = shared.store.message_claim(&params).await;
    shared.stats.claims.fetch_add(1, Ordering::Relaxed);
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    shared.stats.claim_micros.fetch_add(micros, Ordering::Relaxed);
    if let Some(metrics) = &shared.metrics {
        metrics.claimed(started.elapsed());
    }
    let claimed = match result {
        Ok(c) => c,
        Err(e) => {
            celeriac_store::note_database_error();
            tracing::warn!(error = %e, "worker: claim failed; retrying with backoff");
            let _ = done.send(ClaimResult::Failed);
            return;
        }
    };
    let got = claimed.len();
    let full_claim = cursors.is_none();
    // Before this claim's messages join the line: did the worker wait on this claim? Only a
    // claim of one priority counts: two claims in flight can split rows of mixed priorities
    // between them, and the one with the lower rows may come back first, so a grown window
    // (bigger claims) would let lower priorities start further ahead of higher ones than
    // Celery's prefetch count does (`docs/delivery.md`, "Priority").
    let one_priority = claimed.windows(2).all(|pair| pair[0].priority == pair[1].priority);
    let (waiting, departures) = shared.line.census();
    let idle = shared.run_slots.available_permits() > 0;
    shared.window.claim_returned(got == want && one_priority, idle, waiting, departures);
    if let Ok(mut state) =
        shared.claim_state.lock().map_err(drop).and_then(|s| if s.generation == generation { Ok(s) } else { Err(()) })
    {
        state.advance(&queues, &claimed);
        // A short cursor claim only means this priority ran dry after the cursor: look at
        // the whole queue next time.
        if got < want && !full_claim {
            state.force_full = true;
        }
    }
    // Messages the claim parked (their type's rate limit queues them behind parked ones) are
    // not held: only their place in the queue moved the cursors.
    let (parked, claimed): (Vec<ClaimedMessage>, Vec<ClaimedMessage>) = claimed.into_iter().partition(|m| m.parked);
    shared.stats.parked.fetch_add(parked.len() as u64, Ordering::Relaxed);
    shared.session.hold(&claimed, started);
    shared.stats.received.fetch_add(claimed.len() as u64, Ordering::Relaxed);
    // Each message waits in the start line for its turn to ask for a run slot.
    for message in claimed {
        let Some(slot) = permits.split(1) else { break };
        let turn = shared.line.join(&message);
        let suspect = if message.redeliveries > 0 {
            suspect.take().map(|permit| SuspectPermit { _permit: permit, wake: shared.wake.clone() })
        } else {
            None
        };
        tracker.spawn(execute(shared.clone(), message, Some(slot), turn, suspect));
    }
    let _ = done.send(if got == want || !full_claim { ClaimResult::Full } else { ClaimResult::Short });
}

#[cfg(test)]
mod tests {
    use celeriac_store::Lease;
    use chrono::{DateTime, Utc};

    use super::*;

    fn claimed(queue: &str, priority: i16, id: i64, redeliveries: i32) -> ClaimedMessage {
        let eta = DateTime::<Utc>::from_timestamp(1_700_000_000 + id, 0).unwrap();
        ClaimedMessage {
            lease: Lease { id, attempt: 1 },
            queue: queue.into(),
            priority,
            eta,
            redelivered: redeliveries > 0,
            redeliveries,
            payload: Vec::new(),
            created_at: eta,
            parked: false,
            revoked: false,
        }
    }

    #[test]
    fn cursor_claims_follow_full_claims_until_one_is_due() {
        let queues = vec!["a".to_owned(), "b".to_owned()];
        let mut state = ClaimState::new(2);
        assert_eq!(state.next(), None, "the first claim is a full one");
        // A cursor claim needs a cursor in every queue.
        state.advance(&queues, &[claimed("a", 0, 1, 0)]);
        assert_eq!(state.next(), None);
        // Suspects do not move the cursor; a later row does, an earlier one does not.
        state.advance(&queues, &[claimed("b", 0, 5, 0), claimed("a", 0, 9, 3), claimed("a", 0, 3, 0)]);
        state.advance(&queues, &[claimed("a", 0, 2, 0)]);
        let cursors = state.next().expect("a cursor claim");
        assert_eq!(cursors.iter().map(|c| c.id).collect::<Vec<_>>(), [3, 5]);
        for _ in 1..FULL_CLAIM_EVERY {
            assert!(state.next().is_some() || state.last_full.elapsed() >= FULL_CLAIM_INTERVAL);
        }
        state.since_full = FULL_CLAIM_EVERY;
        assert_eq!(state.next(), None, "a full claim every {FULL_CLAIM_EVERY} claims");
        state.force_full = true;
        assert_eq!(state.next(), None, "and whenever one is forced");
        assert!(state.next().is_some());
    }
}
