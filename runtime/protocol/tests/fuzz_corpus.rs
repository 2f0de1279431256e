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
