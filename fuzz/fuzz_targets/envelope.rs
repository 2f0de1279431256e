//! Fuzz target `envelope`: see `checks::envelope` for what is checked.

#![no_main]

#[path = "../checks/protocol.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::envelope(data));
