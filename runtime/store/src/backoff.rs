//! The one retry pace for a database that is unreachable: 100 ms, doubling to 5 s.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Exponential backoff between retries of a statement that failed for want of a connection:
/// 100 ms, doubling to at most 5 s, back to 100 ms after a success ([`Backoff::reset`]).
#[derive(Debug, Clone)]
pub struct Backoff(Duration);

const FIRST: Duration = Duration::from_millis(100);
const MOST: Duration = Duration::from_secs(5);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(FIRST)
    }
}

impl Backoff {
    /// A backoff at its first, shortest pause.
    #[must_use]
    pub fn new() -> Self {
        Backoff::default()
    }

    /// The next pause.
    #[must_use]
    pub fn peek(&self) -> Duration {
        self.0
    }

    /// Back to the shortest pause (after a success).
    pub fn reset(&mut self) {
        self.0 = FIRST;
    }

    /// Sleeps the next pause and doubles it; false if `cancel` fired first.
    pub async fn wait(&mut self, cancel: &CancellationToken) -> bool {
        let pause = self.0;
        self.0 = (self.0 * 2).min(MOST);
        tokio::select! {
            () = cancel.cancelled() => false,
            () = tokio::time::sleep(pause) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn doubles_to_five_seconds_and_resets() {
        let mut backoff = Backoff::new();
        let never = CancellationToken::new();
        let mut pauses = Vec::new();
        for _ in 0..8 {
            pauses.push(backoff.peek());
            assert!(backoff.wait(&never).await);
        }
        let ms: Vec<u128> = pauses.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        backoff.reset();
        assert_eq!(backoff.peek(), FIRST);
        let cancelled = CancellationToken::new();
        cancelled.cancel();
        assert!(!backoff.wait(&cancelled).await);
    }
}
