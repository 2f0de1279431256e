//! The start line: claimed messages waiting for a run slot, in the order the claim statement
//! takes them (priority, highest first, then eta, then id), across all the claims the worker
//! holds.
//!
//! Only the message at the head of the line asks for a run slot; the next one's turn comes
//! when it has one, or leaves the line without running (discarded, parked, waiting for its rate
//! limit, given back). A message joins when its claim comes back, not when the claim is issued:
//! two claims are in flight while the queue is busy and the server may run the later one first,
//! which then takes the higher-priority rows (the earlier one skips them, locked). Ordering by
//! the claim's own key, the worker starts them first whichever claim brought them, so the start
//! order is the queue's order within what the worker holds, as Celery's is within its prefetched
//! messages (RabbitMQ delivers the highest priority first).

use std::{
    cmp::Reverse,
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError},
};

use celeriac_store::ClaimedMessage;
use chrono::{DateTime, Utc};
use tokio::sync::oneshot;

/// Where a message stands in the line: the claim statement's order, then the order it joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    priority: Reverse<i16>,
    eta: DateTime<Utc>,
    id: i64,
    joined: u64,
}

/// What a waiting message is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Go {
    /// Its turn: it is at the head of the line.
    Start,
    /// The window shrank and it waits beyond it: back to the queue.
    GiveBack,
}

/// See the module docs.
#[derive(Default)]
pub(super) struct Line {
    state: Mutex<LineState>,
}

#[derive(Default)]
struct LineState {
    joined: u64,
    /// Messages that have left the line (started, or will not run now), ever.
    departures: u64,
    /// The message whose turn it is (it asks for a run slot), if any.
    head: Option<Key>,
    /// The others, each with the way to tell it.
    waiting: BTreeMap<Key, oneshot::Sender<Go>>,
}

impl LineState {
    /// Gives the turn to the first waiting message if no one has it.
    fn advance(&mut self) {
        while self.head.is_none() {
            let Some((key, go)) = self.waiting.pop_first() else { return };
            if go.send(Go::Start).is_ok() {
                self.head = Some(key);
            }
        }
    }
}

impl Line {
    fn state(&self) -> std::sync::MutexGuard<'_, LineState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Puts a claimed message in line; it waits for its turn with [`Turn::wait`].
    pub(super) fn join(self: &Arc<Self>, message: &ClaimedMessage) -> Turn {
        let (tell, go) = oneshot::channel();
        let mut state = self.state();
        state.joined += 1;
        let key =
            Key { priority: Reverse(message.priority), eta: message.eta, id: message.lease.id, joined: state.joined };
        state.waiting.insert(key, tell);
        state.advance();
        drop(state);
        Turn::InLine(Place { line: self.clone(), key, go: Some(go) })
    }

    /// Messages in line, the head included.
    pub(super) fn len(&self) -> usize {
        self.census().0
    }

    /// Messages in line, and how many have left it ever (read together for the window's
    /// growth, `Window::claim_returned`).
    pub(super) fn census(&self) -> (usize, u64) {
        let state = self.state();
        (state.waiting.len() + usize::from(state.head.is_some()), state.departures)
    }

    /// Sends the last `n` waiting messages (never the head) back to the queue; returns how many.
    pub(super) fn give_back(&self, n: usize) -> usize {
        let mut state = self.state();
        let mut sent = 0;
        while sent < n {
            let Some((_, go)) = state.waiting.pop_last() else { break };
            sent += usize::from(go.send(Go::GiveBack).is_ok());
        }
        sent
    }

    fn leave(&self, key: Key) {
        let mut state = self.state();
        state.departures += 1;
        if state.head == Some(key) {
            state.head = None;
        } else {
            state.waiting.remove(&key);
        }
        state.advance();
    }
}

/// A message's place in the line; dropping it, on any path (it has a run slot, or will not
/// run now), lets the next one go.
pub(super) struct Place {
    line: Arc<Line>,
    key: Key,
    go: Option<oneshot::Receiver<Go>>,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.line.leave(self.key);
    }
}

/// What a message holds until it starts (or will not run now); dropping it lets the next one
/// go.
pub(super) enum Turn {
    /// Its place in the line.
    InLine(Place),
    /// A parked message taken back starts outside the line, at once; its claim waits for this
    /// to be dropped (it has a run slot, or will not run now).
    Outside { _decided: oneshot::Sender<()> },
}

impl Turn {
    /// Waits until the message is at the head of the line; `false` when it is to go back to
    /// the queue instead (the window shrank and it waits beyond it). It then has left the line.
    pub(super) async fn wait(&mut self) -> bool {
        let Turn::InLine(Place { go, .. }) = self else { return true };
        let Some(go) = go.take() else { return true };
        // An error cannot happen (the line tells or gives back every message it drops): go.
        go.await.unwrap_or(Go::Start) == Go::Start
    }
}

#[cfg(test)]
mod tests {
    use celeriac_store::Lease;

    use super::*;

    fn message(priority: i16, id: i64) -> ClaimedMessage {
        let eta = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap();
        ClaimedMessage {
            lease: Lease { id, attempt: 1 },
            queue: "celery".into(),
            priority,
            eta,
            redelivered: false,
            redeliveries: 0,
            payload: Vec::new(),
            created_at: eta,
            parked: false,
            revoked: false,
        }
    }

    fn line() -> Arc<Line> {
        Arc::new(Line::default())
    }

    /// Whether `turn` is told to go (start or go back) without waiting.
    fn told(turn: &mut Turn) -> Option<Go> {
        let Turn::InLine(place) = turn else { return None };
        place.go.as_mut()?.try_recv().ok()
    }

    #[test]
    fn messages_start_in_the_claims_order_whichever_claim_brought_them() {
        let line = line();
        // A claim of low priorities comes back first; the head's turn came already.
        let mut low: Vec<Turn> = [(2, 30), (1, 31), (0, 32)].map(|(p, id)| line.join(&message(p, id))).into();
        assert_eq!(told(&mut low[0]), Some(Go::Start));
        // Then the claim with higher ones: they go before the rest of the first claim.
        let mut high: Vec<Turn> = [(12, 20), (10, 21)].map(|(p, id)| line.join(&message(p, id))).into();
        assert_eq!(line.len(), 5);
        assert_eq!(told(&mut high[0]), None, "the head keeps its turn");
        drop(low.remove(0));
        assert_eq!(told(&mut high[0]), Some(Go::Start));
        assert_eq!((told(&mut high[1]), told(&mut low[0])), (None, None));
        drop(high.remove(0));
        assert_eq!(told(&mut high[0]), Some(Go::Start));
        drop(high.remove(0));
        assert_eq!(told(&mut low[0]), Some(Go::Start));
        // One that leaves before its turn (discarded, parked) passes nothing on.
        drop(low.remove(1));
        assert_eq!(line.len(), 1);
        drop(low.remove(0));
        assert_eq!(line.census(), (0, 5), "five left the line");
        // Equal keys go in the order they joined.
        let mut same: Vec<Turn> = (0..3).map(|_| line.join(&message(5, 7))).collect();
        assert_eq!(told(&mut same[0]), Some(Go::Start));
        drop(same.remove(0));
        assert_eq!((told(&mut same[0]), told(&mut same[1])), (Some(Go::Start), None));
    }

    #[test]
    fn give_back_takes_the_last_in_line_and_never_the_head() {
        let line = line();
        let mut turns: Vec<Turn> = (0..5).map(|i| line.join(&message(0, i))).collect();
        assert_eq!(line.give_back(2), 2);
        assert_eq!(line.len(), 3);
        assert_eq!((told(&mut turns[3]), told(&mut turns[4])), (Some(Go::GiveBack), Some(Go::GiveBack)));
        assert_eq!(line.give_back(10), 2, "the head stays");
        assert_eq!(told(&mut turns[0]), Some(Go::Start));
        assert_eq!(line.len(), 1);
        drop(turns);
        assert_eq!(line.len(), 0);
    }

    #[tokio::test]
    async fn a_parked_message_tells_its_claim_when_it_goes() {
        let (decided, mut decision) = oneshot::channel::<()>();
        let mut turn = Turn::Outside { _decided: decided };
        assert!(turn.wait().await, "outside the line: no wait");
        assert_eq!(decision.try_recv(), Err(oneshot::error::TryRecvError::Empty), "not yet");
        drop(turn);
        // The claim waits on the channel: its sender gone, the wait ends.
        assert_eq!(decision.try_recv(), Err(oneshot::error::TryRecvError::Closed));
    }
}
