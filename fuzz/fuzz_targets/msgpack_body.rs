//! Fuzz target `msgpack_body`: see `checks::msgpack_body` for what is checked.

#![no_main]

#[path = "../checks/protocol.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::msgpack_body(data));
