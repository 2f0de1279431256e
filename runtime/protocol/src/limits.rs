//! Bounds on what decoding one message may allocate.
//!
//! A stored message is untrusted input, and the decoded form of a few bytes can be much larger
//! than the bytes: a ~65 KB zlib stream inflates to 64 MiB, and every one-byte msgpack `nil` or
//! two-byte JSON `0,` becomes a 72-byte [`Value`]. [`Limits`] caps both steps, so decoding a
//! message never needs more than about `max_inflated_body + 2 × max_decoded_size` bytes (plus
//! the input and the growth slack of vectors), whatever the message says. A message beyond them
//! is refused with [`crate::DecodeError::TooLarge`] (`reason_code()` = `too_large`).
//!
//! Nesting depth is bounded separately, and not configurable: [`crate::json::MAX_DEPTH`] levels
//! for JSON and msgpack alike, so deep documents never overflow the stack.

use crate::value::Value;

/// Default [`Limits::max_inflated_body`]: 64 MiB.
pub const DEFAULT_MAX_INFLATED_BODY: u64 = 64 * 1024 * 1024;
/// Default [`Limits::max_decoded_size`]: 64 MiB (about 900,000 values).
pub const DEFAULT_MAX_DECODED_SIZE: usize = 64 * 1024 * 1024;

/// How much decoding one message may produce.
///
/// The defaults are generous for Celery messages (RabbitMQ 4 refuses messages over 16 MiB) and
/// keep a worker that decodes many messages at once within a predictable amount of memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most bytes a compressed body may inflate to.
    pub max_inflated_body: u64,
    /// The most bytes one decoded value tree may take (the envelope, and the body, each), as
    /// counted by [`Budget`].
    pub max_decoded_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_inflated_body: DEFAULT_MAX_INFLATED_BODY, max_decoded_size: DEFAULT_MAX_DECODED_SIZE }
    }
}

/// The running size of one value tree being decoded, checked against a limit.
///
/// Each value costs [`Budget::NODE`] bytes (the size of a [`Value`]), each object entry
/// [`Budget::ENTRY`] more (its key and index), and strings, byte strings and big integers their
/// length. That is what the tree occupies on the heap, up to the spare capacity of growing
/// vectors (at most as much again). Decoders charge a value before they build it, so an
/// oversized document is abandoned as soon as it crosses the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    limit: usize,
    used: usize,
    exceeded: bool,
}

impl Budget {
    /// The cost of one value.
    pub const NODE: usize = std::mem::size_of::<Value>();
    /// The extra cost of one object entry: the key's `String` plus the map's hash and index.
    pub const ENTRY: usize = std::mem::size_of::<String>() + 2 * std::mem::size_of::<usize>();

    /// A budget of `limit` bytes.
    #[must_use]
    pub fn new(limit: usize) -> Budget {
        Budget { limit, used: 0, exceeded: false }
    }

    /// Adds `bytes`; `false` (and [`Budget::exceeded`] from now on) when that crosses the limit.
    pub(crate) fn charge(&mut self, bytes: usize) -> bool {
        self.used = self.used.saturating_add(bytes);
        if self.used > self.limit {
            self.exceeded = true;
        }
        !self.exceeded
    }

    /// Bytes counted so far.
    #[must_use]
    pub fn used(&self) -> usize {
        self.used
    }

    /// The limit.
    #[must_use]
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Whether decoding stopped because the limit was crossed.
    #[must_use]
    pub fn exceeded(&self) -> bool {
        self.exceeded
    }
}

impl Default for Budget {
    /// A budget of [`DEFAULT_MAX_DECODED_SIZE`].
    fn default() -> Self {
        Budget::new(DEFAULT_MAX_DECODED_SIZE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_stops_at_the_limit_and_stays_exceeded() {
        let mut b = Budget::new(100);
        assert!(b.charge(60));
        assert!(b.charge(40));
        assert!(!b.exceeded());
        assert!(!b.charge(1));
        assert!(b.exceeded());
        assert!(!b.charge(0), "once exceeded, always exceeded");
        assert!(!Budget::new(0).charge(usize::MAX));
    }
}
