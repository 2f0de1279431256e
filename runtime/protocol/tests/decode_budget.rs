//! Decoding is bounded in memory: a small message (a ~65 KB zlib body, a few MB of plain JSON or
//! msgpack) that would expand to gigabytes of `Value`s is refused with a `too_large` error, and
//! the decoder never allocates more than a few hundred MiB on the way (with the default
//! `Limits`: 64 MiB inflated, 64 MiB of values).
//!
//! A counting global allocator measures the peak of live heap bytes, and refuses any allocation
//! that would take this test binary past 1 GiB (an abort then fails the test instead of the
//! machine running out of memory). The cases run in one test function, one after the other, so
//! the peak belongs to the case being measured.

#![allow(unsafe_code)]

use std::{
    alloc::{GlobalAlloc, Layout, System},
    io::Write as _,
    sync::atomic::{AtomicUsize, Ordering},
};

use base64::Engine as _;
use celeriac_protocol::{Accept, Budget, DecodeError, Limits, TaskMessage};

const HARD_CAP: usize = 1 << 30;
/// What decoding one message may peak at (inflated body, value tree, growth slack).
const PEAK_BUDGET: usize = 256 << 20;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        if live > HARD_CAP {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            return std::ptr::null_mut();
        }
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: same layout contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            let grow = new_size - layout.size();
            let live = LIVE.fetch_add(grow, Ordering::Relaxed) + grow;
            if live > HARD_CAP {
                LIVE.fetch_sub(grow, Ordering::Relaxed);
                return std::ptr::null_mut();
            }
            PEAK.fetch_max(live, Ordering::Relaxed);
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        // SAFETY: `ptr` came from `System.alloc` with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn zlib(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn envelope(body: &[u8], content_type: &str, compressed: bool) -> Vec<u8> {
    let body = base64::engine::general_purpose::STANDARD.encode(body);
    let compression = if compressed { r#", "compression": "application/x-gzip""# } else { "" };
    format!(
        r#"{{"body": "{body}", "content-encoding": "utf-8", "content-type": "{content_type}",
        "headers": {{"lang": "py", "task": "bomb", "id": "1"{compression}}},
        "properties": {{"body_encoding": "base64", "delivery_info": {{"exchange": "", "routing_key": "celery"}}}}}}"#
    )
    .into_bytes()
}

/// Decodes `payload` and returns the result and the peak of live heap bytes while decoding.
fn decode_peak(payload: &[u8], limits: &Limits) -> (Result<TaskMessage, DecodeError>, usize) {
    let accept = Accept::new(["json", "msgpack"]);
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let result = TaskMessage::decode_with_limits(payload, &accept, limits);
    let peak = PEAK.load(Ordering::Relaxed) - base;
    (result, peak)
}

fn assert_refused(label: &str, payload: &[u8], limits: &Limits, peak_budget: usize) -> DecodeError {
    let (result, peak) = decode_peak(payload, limits);
    let err = match result {
        Ok(msg) => panic!("{label}: decoded {} args instead of refusing", msg.args.len()),
        Err(e) => e,
    };
    assert_eq!(err.reason_code().as_str(), "too_large", "{label}: {err}");
    assert!(peak < peak_budget, "{label}: decoding peaked at {} MiB", peak >> 20);
    err
}

#[test]
fn oversized_trees_are_refused_within_a_memory_budget() {
    let default = Limits::default();
    // The defect: 64 MiB of `[0,0,0,…]` deflates to ~65 KB and decoded to 32 M `Value`s
    // (gigabytes). Now: refused once the values pass 64 MiB.
    let mut json = b"[[".to_vec();
    json.extend_from_slice(&b"0,".repeat((63 << 20) / 2));
    json.extend_from_slice(b"0], {}, {}]");
    let compressed = zlib(&json);
    drop(json);
    assert!(compressed.len() < 100_000, "the bomb is small: {} bytes", compressed.len());
    let payload = envelope(&compressed, "application/json", true);
    let err = assert_refused("zlib JSON list bomb", &payload, &default, PEAK_BUDGET);
    assert!(err.to_string().starts_with("body: too large: decoded size exceeds the limit of 67108864 bytes"), "{err}");

    // msgpack: an array32 of 8 M nils (8 MiB, 8 KB compressed) was 8 M × (rmpv + celeriac) values.
    let n: u32 = 8 << 20;
    let mut msgpack = vec![0x93, 0xdd];
    msgpack.extend_from_slice(&n.to_be_bytes());
    msgpack.resize(msgpack.len() + n as usize, 0xc0);
    msgpack.extend_from_slice(&[0x80, 0x80]);
    let compressed = zlib(&msgpack);
    drop(msgpack);
    let payload = envelope(&compressed, "application/x-msgpack", true);
    assert_refused("zlib msgpack nil bomb", &payload, &default, PEAK_BUDGET);
    // The plain `decode` (what the worker calls) has the same default limits.
    let err = TaskMessage::decode(&payload, &Accept::new(["msgpack"])).unwrap_err();
    assert_eq!(err.reason_code().as_str(), "too_large");

    // Uncompressed: 6 MB of `[],` is 2 M lists, far more memory than the message.
    let mut json = b"[[".to_vec();
    json.extend_from_slice(&b"[],".repeat(2 << 20));
    json.extend_from_slice(b"[]], {}, {}]");
    assert_refused("plain JSON of empty lists", &envelope(&json, "application/json", false), &default, PEAK_BUDGET);

    // A body that inflates beyond the inflate limit is too large, not corrupt.
    let small = Limits { max_inflated_body: 1 << 20, ..Limits::default() };
    let compressed = zlib(&vec![b' '; 2 << 20]);
    let err =
        assert_refused("inflates beyond the limit", &envelope(&compressed, "application/json", true), &small, 8 << 20);
    assert_eq!(err.to_string(), "body: too large: inflates beyond the limit of 1048576 bytes");
}

#[test]
fn limits_are_configurable_and_count_the_envelope_too() {
    let body = br#"[["a long string argument, repeated"], {}, {}]"#;
    let payload = envelope(body, "application/json", false);
    let accept = Accept::default();
    assert!(TaskMessage::decode_with_limits(&payload, &accept, &Limits::default()).is_ok());
    let tiny = Limits { max_decoded_size: 1024, ..Limits::default() };
    let err = TaskMessage::decode_with_limits(&payload, &accept, &tiny).unwrap_err();
    assert!(matches!(err, DecodeError::TooLarge { part: "envelope", .. }), "{err}");
    assert!(TaskMessage::decode_head_with_limits(&payload, &accept, &tiny).is_err());
    // Enough for the envelope, not for the body (which compresses well).
    let long_body = format!(r#"[["{}"], {{}}, {{}}]"#, "x".repeat(100_000));
    let payload = envelope(&zlib(long_body.as_bytes()), "application/json", true);
    let mut budget = Budget::new(usize::MAX);
    celeriac_protocol::json::from_slice_with_budget(&payload, &mut budget).unwrap();
    assert!(budget.used() < 10_000 && !budget.exceeded(), "{budget:?}");
    let envelope_only = Limits { max_decoded_size: budget.used(), ..Limits::default() };
    let err = TaskMessage::decode_with_limits(&payload, &accept, &envelope_only).unwrap_err();
    assert!(matches!(err, DecodeError::TooLarge { part: "body", .. }), "{err}");
    let enough = Limits { max_decoded_size: 200_000, ..Limits::default() };
    assert!(TaskMessage::decode_with_limits(&payload, &accept, &enough).is_ok());
}
