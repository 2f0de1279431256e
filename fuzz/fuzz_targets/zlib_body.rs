//! Fuzz target `zlib_body`: see `checks::zlib_body` for what is checked.

#![no_main]

#[path = "../checks/protocol.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::zlib_body(data));
