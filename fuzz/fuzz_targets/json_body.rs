//! Fuzz target `json_body`: see `checks::json_body` for what is checked.

#![no_main]

#[path = "../checks/protocol.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::json_body(data));
