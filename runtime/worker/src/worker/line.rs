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

use super::window::{Reserved, Window};

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
pub(super) struct Line {
    state: Mutex<LineState>,
    window: Arc<Window>,
}

#[derive(Default)]
struct LineState {
    joined: u64,
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
    /// An empty line whose messages count as reserved in `window` while they wait.
    pub(super) fn new(window: Arc<Window>) -> Line {
        Line { state: Mutex::new(LineState::default()), window }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LineState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Puts a claimed message in line; it waits for its turn with [`Turn::wait`].
    pub(super) fn join(self: &Arc<Self>, message: &ClaimedMessage) -> Turn {
        let reserved = self.window.reserve();
        let (tell, go) = oneshot::channel();
        let mut state = self.state();
        state.joined += 1;
        let key =
            Key { priority: Reverse(message.priority), eta: message.eta, id: message.lease.id, joined: state.joined };
        state.waiting.insert(key, tell);
        state.advance();
        drop(state);
        Turn { place: Some(Place { line: self.clone(), key, go: Some(go), _reserved: reserved }), decided: None }
    }

    /// Messages in line, the head included.
    pub(super) fn len(&self) -> usize {
        let state = self.state();
        state.waiting.len() + usize::from(state.head.is_some())
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
struct Place {
    line: Arc<Line>,
    key: Key,
    go: Option<oneshot::Receiver<Go>>,
    /// Counts the message as reserved in the prefetch window while it is in line.
    _reserved: Reserved,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.line.leave(self.key);
    }
}

/// What a message holds until it starts: its place in the line, and for a parked message taken
/// back (which starts at once, outside the line) the signal its claim waits for.
pub(super) struct Turn {
    place: Option<Place>,
    decided: Option<oneshot::Sender<()>>,
}

impl Turn {
    /// A turn outside the line, for a parked message taken back: `decided` is told (or
    /// dropped) once the message has a run slot or will not run now.
    pub(super) fn outside(decided: oneshot::Sender<()>) -> Turn {
        Turn { place: None, decided: Some(decided) }
    }

    /// Waits until the message is at the head of the line; `false` when it is to go back to
    /// the queue instead (the window shrank and it waits beyond it). It then has left the line.
    pub(super) async fn wait(&mut self) -> bool {
        let Some(go) = self.place.as_mut().and_then(|p| p.go.take()) else { return true };
        // An error cannot happen (the line tells or gives back every message it drops): go.
        go.await.unwrap_or(Go::Start) == Go::Start
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        // The place first: the next message's turn comes before the claim hears of this one.
        drop(self.place.take());
        if let Some(decided) = self.decided.take() {
            let _ = decided.send(());
        }
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
        Arc::new(Line::new(Arc::new(Window::new(10, 2, true))))
    }

    /// Whether `turn` is told to go (start or go back) without waiting.
    fn told(turn: &mut Turn) -> Option<Go> {
        turn.place.as_mut()?.go.as_mut()?.try_recv().ok()
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
        assert_eq!(line.len(), 0);
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
        let (decided, decision) = oneshot::channel();
        let mut turn = Turn::outside(decided);
        assert!(turn.wait().await, "outside the line: no wait");
        drop(turn);
        assert!(decision.await.is_ok());
    }
}
