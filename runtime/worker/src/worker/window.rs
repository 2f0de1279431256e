//! The prefetch window: how many messages the worker may hold between claiming them and handing
//! their outcomes to the completer.
//!
//! It starts at Celery's count, `concurrency × (prefetch_multiplier + 1)` (the reserved ones
//! plus the running ones), and stays there while tasks take longer than a claim's round trip:
//! then the reserved messages are still waiting when the next claim comes back. Only when a
//! claim that filled up comes back to a worker that has started messages since the previous
//! claim came back and now has nothing left to start and a run slot idle (it ran out of work
//! waiting for the database, not for its tasks) does the window double, up to [`GROWTH`]
//! times Celery's count (at most [`MOST`], never below Celery's count). When the head of the
//! start line (line.rs) has waited [`SLOW_START`] for a run slot (its tasks, not a claim on
//! its way, held it up), it halves again, down to Celery's count; while the worker then holds
//! more than the smaller window, reserved messages beyond it go back to the queue (the last in
//! line first), so a worker whose tasks turned slow does not sit on what other
//! workers could run. So a reserved message starts within a few round trips
//! (milliseconds) as in Celery; without the growth, Rust handlers at `-c 2` ran at the pace of
//! claim round trips of 5 messages (`docs/delivery.md`, "Prefetch"). `--fixed-prefetch` keeps
//! Celery's count. `pool_grow`/`pool_shrink` change Celery's count by the processes' share
//! (their run slots and what they reserve), as Celery changes its prefetch count.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How many times Celery's count the window may grow to.
pub(super) const GROWTH: usize = 16;
/// The most messages the window grows to (unless Celery's count is more).
pub(super) const MOST: usize = 1024;
/// A message that waits this long for its turn, behind busy run slots, shrinks the window.
pub(super) const SLOW_START: Duration = Duration::from_millis(50);

/// See the module docs.
pub(super) struct Window {
    /// One permit per message the window still has room for.
    slots: Arc<Semaphore>,
    /// Whether the window grows beyond Celery's count (`--fixed-prefetch` says no).
    adaptive: bool,
    /// The sizes, changed together.
    sizes: Mutex<Sizes>,
    /// The line's departures when the last claim came back.
    departures_seen: AtomicU64,
    /// Signalled when the window shrinks (the claim loop may wait for more permits than the
    /// smaller window will ever have free).
    pub(super) shrunk: tokio::sync::Notify,
}

/// A [`Window`]'s sizes, in messages.
struct Sizes {
    /// The current size.
    size: usize,
    /// The permits still to take out of circulation after a shrink (they were held by messages
    /// when it shrank).
    owed: usize,
    /// Celery's count: the window never shrinks below it. `pool_grow`/`pool_shrink` change it.
    base: usize,
    /// The window never grows beyond it.
    most: usize,
    /// Of the window, the part taken by the messages running (the rest may wait).
    running: usize,
}

impl Sizes {
    /// The most a window of `base` messages grows to.
    fn most(base: usize, adaptive: bool) -> usize {
        if adaptive {
            (base * GROWTH).min(MOST).max(base)
        } else {
            base
        }
    }
}

impl Window {
    /// A window of `base` messages, of which `running` run at once, that grows to
    /// `base × GROWTH` (at most [`MOST`]) when `adaptive`, and stays at `base` otherwise.
    pub(super) fn new(base: usize, running: usize, adaptive: bool) -> Window {
        let base = base.max(1);
        Window {
            slots: Arc::new(Semaphore::new(base)),
            adaptive,
            sizes: Mutex::new(Sizes { size: base, owed: 0, base, most: Sizes::most(base, adaptive), running }),
            departures_seen: AtomicU64::new(0),
            shrunk: tokio::sync::Notify::new(),
        }
    }

    /// Whether the window may grow beyond Celery's count.
    pub(super) fn adaptive(&self) -> bool {
        self.adaptive
    }

    /// The permits: one per message held, from its claim until its outcome is handed over.
    pub(super) fn slots(&self) -> &Arc<Semaphore> {
        &self.slots
    }

    fn sizes(&self) -> std::sync::MutexGuard<'_, Sizes> {
        self.sizes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The window's size now.
    pub(super) fn size(&self) -> usize {
        self.sizes().size
    }

    /// Takes out of circulation the permits a shrink could not take at once (before the claim
    /// loop asks for more).
    pub(super) fn settle_shrink(&self) {
        let mut sizes = self.sizes();
        if sizes.owed > 0 {
            sizes.owed -= self.slots.forget_permits(sizes.owed);
        }
    }

    /// Takes `permit`, of a message given back, out of circulation if a shrink still owes one
    /// (so the next [`Window::excess`] sees the worker hold one message less).
    pub(super) fn repay(&self, permit: Option<OwnedSemaphorePermit>) {
        let Some(permit) = permit else { return };
        let mut sizes = self.sizes();
        if sizes.owed > 0 {
            sizes.owed -= permit.num_permits().min(sizes.owed);
            permit.forget();
        }
    }

    /// Takes what a shrink still owes out of `permits` the claim loop just acquired (a permit
    /// given back goes to the waiting claim loop first, before [`Window::settle_shrink`] can
    /// take it); `None` when none are left to claim with.
    pub(super) fn pay_owed(&self, mut permits: OwnedSemaphorePermit) -> Option<OwnedSemaphorePermit> {
        let mut sizes = self.sizes();
        let pay = sizes.owed.min(permits.num_permits());
        if pay > 0 {
            sizes.owed -= pay;
            if pay == permits.num_permits() {
                permits.forget();
                return None;
            }
            if let Some(owed) = permits.split(pay) {
                owed.forget();
            }
        }
        Some(permits)
    }

    /// A claim that filled up came back to a worker with `waiting` messages in line, whose line
    /// has seen `departures` messages leave ever: when some left since the previous claim came
    /// back, and none waits now and it has `idle_run_slots`, it ran out of work waiting on the
    /// database, and the window doubles. (A worker that has run nothing since, as at start,
    /// proves nothing about how fast its tasks are.)
    pub(super) fn claim_returned(&self, filled: bool, idle_run_slots: bool, waiting: usize, departures: u64) {
        let ran = self.departures_seen.swap(departures, Ordering::Relaxed) != departures;
        if !filled || !idle_run_slots || !ran || waiting > 0 {
            return;
        }
        let sizes = self.sizes();
        let grown = (sizes.size * 2).min(sizes.most);
        self.resize_to(sizes, grown);
    }

    /// The head of the line waited [`SLOW_START`] for a run slot (the tasks, not a claim on its
    /// way, hold the line up): the window halves (not below Celery's count).
    pub(super) fn slow_start(&self) {
        let sizes = self.sizes();
        let shrunk = (sizes.size / 2).max(sizes.base);
        self.resize_to(sizes, shrunk);
    }

    /// The pool grew or shrank by `running` run slots (`pool_grow`/`pool_shrink`): Celery's
    /// count, and the window with it, changes by `messages`, those slots and what they reserve,
    /// as Celery's prefetch count changes by the processes' reservations.
    pub(super) fn pool_resized(&self, grow: bool, messages: usize, running: usize) {
        let mut sizes = self.sizes();
        let size = if grow {
            sizes.base += messages;
            sizes.running += running;
            sizes.size + messages
        } else {
            let messages = messages.min(sizes.base - 1);
            sizes.base -= messages;
            sizes.running = sizes.running.saturating_sub(running);
            sizes.size.saturating_sub(messages)
        };
        sizes.most = Sizes::most(sizes.base, self.adaptive);
        let size = size.clamp(sizes.base, sizes.most);
        self.resize_to(sizes, size);
    }

    /// Makes the window `size` messages: permits added (less what a shrink still owes), or
    /// taken out of circulation (those held now are owed).
    fn resize_to(&self, mut sizes: std::sync::MutexGuard<'_, Sizes>, size: usize) {
        if size >= sizes.size {
            let added = size - sizes.size;
            sizes.size = size;
            let owed = added.min(sizes.owed);
            sizes.owed -= owed;
            self.slots.add_permits(added - owed);
            return;
        }
        let removed = sizes.size - size;
        sizes.size = size;
        let taken = self.slots.forget_permits(removed);
        sizes.owed += removed - taken;
        drop(sizes);
        self.shrunk.notify_waiters();
    }

    /// Of `waiting` messages in line (the head included), how many to give back: while the
    /// worker holds more than its window since a shrink, those further back than the window
    /// leaves room for (the window less the messages running), at most as many as it owes.
    pub(super) fn excess(&self, waiting: usize) -> usize {
        let sizes = self.sizes();
        let room = sizes.size.saturating_sub(sizes.running).max(1);
        waiting.saturating_sub(room).min(sizes.owed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full claim comes back after the worker ran what it had (one more departure).
    fn starve(window: &Window, departures: &mut u64) {
        *departures += 1;
        window.claim_returned(true, true, 0, *departures);
    }

    #[test]
    fn grows_only_when_the_worker_waited_on_a_full_claim_and_shrinks_back() {
        let window = Window::new(10, 2, true);
        assert_eq!((window.size(), window.slots().available_permits()), (10, 10));
        // Nothing run since the last claim came back (as at start), a short claim, a busy run
        // slot, or a reserved message left: not starved.
        window.claim_returned(true, true, 0, 0);
        window.claim_returned(false, true, 0, 1);
        window.claim_returned(true, false, 0, 2);
        window.claim_returned(true, true, 1, 3);
        assert_eq!(window.size(), 10);
        window.claim_returned(true, true, 0, 4);
        let mut departures = 4;
        assert_eq!((window.size(), window.slots().available_permits()), (20, 20));
        for _ in 0..10 {
            starve(&window, &mut departures);
        }
        assert_eq!((window.size(), window.slots().available_permits()), (160, 160), "at most 16 × Celery's count");

        // Shrinking while messages hold permits: what is free goes at once, the rest later.
        let held = window.slots().clone().try_acquire_many_owned(150).unwrap();
        window.slow_start();
        assert_eq!((window.size(), window.slots().available_permits()), (80, 0));
        drop(held);
        assert_eq!(window.slots().available_permits(), 150);
        window.settle_shrink();
        assert_eq!(window.slots().available_permits(), 80);
        for _ in 0..5 {
            window.slow_start();
        }
        assert_eq!((window.size(), window.slots().available_permits()), (10, 10), "never below Celery's count");

        // Growing again first cancels what a shrink still owed.
        starve(&window, &mut departures);
        let held = window.slots().clone().try_acquire_many_owned(20).unwrap();
        window.slow_start();
        assert_eq!((window.size(), window.slots().available_permits()), (10, 0));
        starve(&window, &mut departures);
        assert_eq!((window.size(), window.slots().available_permits()), (20, 0));
        drop(held);
        window.settle_shrink();
        assert_eq!(window.slots().available_permits(), 20);
    }

    #[test]
    fn what_a_shrink_owes_is_taken_from_the_next_permits_acquired() {
        let window = Window::new(10, 2, true);
        let mut departures = 0;
        starve(&window, &mut departures);
        let held = window.slots().clone().try_acquire_many_owned(20).unwrap();
        window.slow_start();
        assert_eq!((window.size(), window.slots().available_permits()), (10, 0));
        drop(held);
        let mut acquired = window.slots().clone().try_acquire_many_owned(4).unwrap();
        assert!(window.pay_owed(acquired).is_none(), "all 4 were owed");
        acquired = window.slots().clone().try_acquire_many_owned(16).unwrap();
        let left = window.pay_owed(acquired).expect("6 were owed, 10 are left");
        assert_eq!(left.num_permits(), 10);
        drop(left);
        window.settle_shrink();
        assert_eq!(window.slots().available_permits(), 10);
    }

    #[test]
    fn the_excess_is_what_waits_beyond_the_room_while_a_shrink_is_owed() {
        let window = Window::new(10, 2, true);
        let mut departures = 0;
        starve(&window, &mut departures);
        let mut held = window.slots().clone().try_acquire_many_owned(20).unwrap();
        assert_eq!(window.excess(20), 0, "no shrink: the worker holds no more than its window");
        window.slow_start();
        // A window of 10 with 2 running leaves room for 8 waiting, the head included; 10 owed.
        assert_eq!(window.excess(20), 10);
        assert_eq!(window.excess(15), 7);
        // Each message given back repays the shrink; once it is repaid, none is in excess.
        for _ in 0..9 {
            window.repay(held.split(1));
        }
        assert_eq!(window.excess(11), 1);
        window.repay(held.split(1));
        assert_eq!(window.excess(10), 0);
        assert_eq!(window.slots().available_permits(), 0);
        drop(held);
        assert_eq!(window.slots().available_permits(), 10);
    }

    #[test]
    fn growing_the_pool_raises_celerys_count_and_shrinking_lowers_it() {
        // -c 2, prefetch multiplier 4: 10 messages, 2 of them running.
        let window = Window::new(10, 2, true);
        window.pool_resized(true, 5, 1);
        assert_eq!((window.size(), window.slots().available_permits()), (15, 15));
        // Halving never goes below the new count.
        window.slow_start();
        assert_eq!(window.size(), 15);
        let mut departures = 0;
        starve(&window, &mut departures);
        assert_eq!(window.size(), 30);
        // Shrinking by a process: the window loses its messages; held ones are owed.
        let held = window.slots().clone().try_acquire_many_owned(30).unwrap();
        window.pool_resized(false, 5, 1);
        assert_eq!((window.size(), window.slots().available_permits()), (25, 0));
        // 25 messages with 2 running leave room for 23 waiting; 5 are owed.
        assert_eq!(window.excess(28), 5);
        drop(held);
        window.settle_shrink();
        assert_eq!(window.slots().available_permits(), 25);
        for _ in 0..3 {
            window.slow_start();
        }
        assert_eq!(window.size(), 10, "back to -c 2's count");
        // Never below one message, however much is asked.
        window.pool_resized(false, 100, 100);
        assert_eq!((window.size(), window.slots().available_permits()), (1, 1));
    }

    #[test]
    fn a_fixed_window_follows_the_pool() {
        let window = Window::new(10, 2, false);
        window.pool_resized(true, 5, 1);
        let mut departures = 0;
        starve(&window, &mut departures);
        assert_eq!((window.size(), window.slots().available_permits()), (15, 15));
        window.pool_resized(false, 5, 1);
        assert_eq!((window.size(), window.slots().available_permits()), (10, 10));
    }

    #[test]
    fn a_fixed_window_keeps_celerys_count() {
        let window = Window::new(10, 2, false);
        let mut departures = 0;
        starve(&window, &mut departures);
        assert_eq!((window.size(), window.slots().available_permits()), (10, 10));
    }
}
