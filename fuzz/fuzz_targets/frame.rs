//! Fuzz target `frame`: the pool-child frame codec (`celeriac_pool::frame`, runtime/pool/src/frame.rs)
//! reading arbitrary bytes as the worker's and the child's side of the socket. Every frame that reads
//! can be written again and read back with the same raw bytes. The replay test is
//! `frames_replay_the_fuzz_corpus` in frame.rs.

#![no_main]

use celeriac_pool::frame::{self, FromChild, ToChild};

fn read_all<M>(data: &[u8])
where
    M: serde::Serialize + serde::de::DeserializeOwned,
{
    let mut r = std::io::Cursor::new(data);
    while let Ok(Some((meta, raw))) = frame::read_sync::<M>(&mut r) {
        let mut buf = Vec::new();
        frame::write_sync(&mut buf, &meta, &raw).expect("a frame that was read can be written");
        // (Metadata is compared by nothing finer: JSON floats need not read back bit for bit.)
        let again = frame::read_sync::<M>(&mut std::io::Cursor::new(buf));
        assert!(matches!(again, Ok(Some((_, ref raw_again))) if *raw_again == raw), "a written frame reads back");
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    read_all::<ToChild>(data);
    read_all::<FromChild>(data);
});
