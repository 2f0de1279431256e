//! The leases a consumer holds, with what it knows of each.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard, PoisonError},
    time::Instant,
};

use crate::Lease;

/// What is known of one held lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Holding {
    attempt: i32,
    /// By when it has surely run out unless renewed: the claim or renewal was sent before the
    /// server computed `now() + lease`, so this local deadline is never later than the row's.
    valid_until: Instant,
    /// Claimed after a lost lease or a requeue (see `ClaimParams::suspects`).
    suspect: bool,
    /// Its outcome was handed to the completer and is not written yet: it ran, so it is never
    /// given back as unstarted.
    settling: bool,
}

/// The held leases, by row id (a consumer holds at most one attempt of a row).
#[derive(Debug, Default)]
pub(crate) struct Held(Mutex<HashMap<i64, Holding>>);

impl Held {
    fn map(&self) -> MutexGuard<'_, HashMap<i64, Holding>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn add(&self, leases: impl IntoIterator<Item = (Lease, bool)>, valid_until: Instant) {
        self.map().extend(
            leases
                .into_iter()
                .map(|(l, suspect)| (l.id, Holding { attempt: l.attempt, valid_until, suspect, settling: false })),
        );
    }

    /// Forgets `leases` (written, or abandoned): the heartbeat stops renewing them.
    pub(crate) fn remove(&self, leases: impl IntoIterator<Item = Lease>) {
        let mut map = self.map();
        for l in leases {
            if map.get(&l.id).is_some_and(|h| h.attempt == l.attempt) {
                map.remove(&l.id);
            }
        }
    }

    /// Marks `lease` as settling (its outcome is on its way to the database).
    pub(crate) fn settling(&self, lease: Lease) {
        if let Some(h) = self.map().get_mut(&lease.id).filter(|h| h.attempt == lease.attempt) {
            h.settling = true;
        }
    }

    /// Records that a renewal sent when the local deadline would have been `valid_until`
    /// renewed the leases of `ids`.
    pub(crate) fn renewed(&self, ids: &[i64], valid_until: Instant) {
        let mut map = self.map();
        for id in ids {
            if let Some(h) = map.get_mut(id) {
                h.valid_until = valid_until.max(h.valid_until);
            }
        }
    }

    /// Whether `lease` is held and may have run out (another consumer may have it by now).
    pub(crate) fn expired(&self, lease: Lease, now: Instant) -> bool {
        self.map().get(&lease.id).is_some_and(|h| h.attempt == lease.attempt && h.valid_until <= now)
    }

    pub(crate) fn holds_suspect(&self) -> bool {
        self.map().values().any(|h| h.suspect)
    }

    pub(crate) fn len(&self) -> usize {
        self.map().len()
    }

    pub(crate) fn leases(&self) -> Vec<Lease> {
        self.map().iter().map(|(&id, h)| Lease { id, attempt: h.attempt }).collect()
    }

    /// The held leases whose outcome has not been handed over (delivered or prefetched, not
    /// finished).
    pub(crate) fn idle(&self) -> Vec<Lease> {
        self.map().iter().filter(|(_, h)| !h.settling).map(|(&id, h)| Lease { id, attempt: h.attempt }).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn tracks_attempts_deadlines_and_settling() {
        let held = Held::default();
        let now = Instant::now();
        let (a, b) = (Lease { id: 1, attempt: 1 }, Lease { id: 2, attempt: 3 });
        held.add([(a, false), (b, true)], now + Duration::from_secs(5));
        assert!(held.holds_suspect());
        assert!(!held.expired(a, now));
        assert!(held.expired(a, now + Duration::from_secs(5)));
        held.renewed(&[1], now + Duration::from_secs(10));
        assert!(!held.expired(a, now + Duration::from_secs(6)));
        // A renewal never moves the deadline back.
        held.renewed(&[1], now);
        assert!(!held.expired(a, now + Duration::from_secs(6)));
        // Another attempt of the same row is not this lease.
        assert!(!held.expired(Lease { id: 2, attempt: 2 }, now + Duration::from_secs(60)));
        held.remove([Lease { id: 2, attempt: 2 }]);
        assert_eq!(held.len(), 2);
        held.settling(b);
        assert_eq!(held.idle(), vec![a]);
        held.remove([b]);
        assert!(!held.holds_suspect());
        assert_eq!(held.leases(), vec![a]);
    }
}
