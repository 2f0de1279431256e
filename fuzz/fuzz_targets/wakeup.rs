//! Fuzz target `wakeup`: LISTEN payloads through `celeriac_store::Wakeup::parse` (the replay test
//! is `wakeup_parse_replays_the_fuzz_corpus` in runtime/store/src/listener.rs).

#![no_main]

use celeriac_store::Wakeup;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // A notification payload is text (PostgreSQL hands it over as a string).
    let Ok(payload) = std::str::from_utf8(data) else { return };
    match Wakeup::parse(payload) {
        Wakeup::Any => {}
        Wakeup::Queues(queues) => {
            assert!(queues.iter().map(String::len).sum::<usize>() <= payload.len(), "names longer than the payload");
            assert!(Wakeup::Queues(queues.clone()).concerns(&queues) || queues.is_empty());
        }
    }
});
