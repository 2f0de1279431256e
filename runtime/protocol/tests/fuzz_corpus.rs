//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`: seeds from the golden messages,
//! and every input that once crashed or exhausted memory) through exactly the checks the fuzz
//! targets run (`fuzz/checks/protocol.rs`): no panic, decoded values within the limits and
//! within a constant factor of the input, re-encodings that decode. `scripts/fuzz` does the
//! fuzzing itself.

use std::path::PathBuf;

#[path = "../../../fuzz/checks/protocol.rs"]
mod checks;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target);
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no corpus in {}", dir.display());
    // The fuzzer runs on the main thread (8 MiB of stack); so does this, whatever the harness.
    std::thread::Builder::new()
        .stack_size(8 << 20)
        .spawn(move || {
            for path in inputs {
                let data = std::fs::read(&path).unwrap();
                if let Err(e) = std::panic::catch_unwind(|| check(&data)) {
                    let why = e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()));
                    panic!("{}: {}", path.display(), why.unwrap_or_default());
                }
            }
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn envelope() {
    replay("envelope", checks::envelope);
}

#[test]
fn json_body() {
    replay("json_body", checks::json_body);
}

#[test]
fn msgpack_body() {
    replay("msgpack_body", checks::msgpack_body);
}

#[test]
fn zlib_body() {
    replay("zlib_body", checks::zlib_body);
}

/// The msgpack check on 20,000 mutations of one document (the corpus holds few).
#[test]
fn msgpack_agrees_with_rmpv_on_mutated_documents() {
    // packb([[1, -2, 3.5, "s", b"\xff", None, True, 2**64 - 1], {"k": {1: [-40000]}}, {"chain": None}])
    let seed: &[u8] = &[
        0x93, 0x98, 0x01, 0xfe, 0xcb, 0x40, 0x0c, 0, 0, 0, 0, 0, 0, 0xa1, b's', 0xc4, 0x01, 0xff, 0xc0, 0xc3, 0xcf,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x81, 0xa1, b'k', 0x81, 0x01, 0x91, 0xd2, 0xff, 0xff, 0x63,
        0xc0, 0x81, 0xa5, b'c', b'h', b'a', b'i', b'n', 0xc0,
    ];
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        usize::try_from(state % 1_000_003).unwrap_or(0)
    };
    let mut agreed = 0;
    for _ in 0..20_000 {
        let mut bytes = seed.to_vec();
        for _ in 0..=next() % 3 {
            let i = next() % bytes.len();
            match next() % 3 {
                0 => bytes[i] = u8::try_from(next() % 256).unwrap_or(0),
                1 => bytes.truncate(i.max(1)),
                _ => bytes.insert(i, u8::try_from(next() % 256).unwrap_or(0)),
            }
        }
        // The fuzz target's check: bounded, and the same result as rmpv.
        checks::msgpack_body(&bytes);
        agreed += usize::from(celeriac_protocol::msgpack::from_slice(&bytes).is_ok());
    }
    assert!(agreed > 1000, "too few mutations decode: {agreed}");
}
