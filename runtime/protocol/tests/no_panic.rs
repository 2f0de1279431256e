//! Decoding never panics: thousands of deterministic mutations of the golden Celery messages
//! (byte flips, truncations, splices, type swaps in headers and body) each either decode or
//! return a `DecodeError`. Whatever decodes also survives re-encoding, retry building and
//! `argsrepr`.

use std::{fs, path::PathBuf};

use base64::Engine as _;
use celeriac_protocol::{json, pyrepr, Accept, Envelope, TaskMessage, Value};

/// xorshift64*: a tiny deterministic generator, so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % (n.max(1) as u64)).unwrap_or(0)
    }
}

fn fixtures() -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/celery-5.7");
    let mut out: Vec<Vec<u8>> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let path = e.unwrap().path();
            path.to_str()?.ends_with(".envelope.json").then(|| fs::read(&path).unwrap())
        })
        .collect();
    out.sort();
    out
}

const TOKENS: &[&str] = &[
    "null",
    "true",
    "[]",
    "{}",
    "\"\"",
    "-1",
    "1e999",
    "NaN",
    "-Infinity",
    "18446744073709551616",
    "0.5",
    "\"\\ud800\"",
    "[[[[[[[[[[",
    "{\"__type__\": \"datetime\", \"__value__\": \"x\"}",
    "\"\u{0}\"",
    "9999999999999999999999",
];

fn check(payload: &[u8], accept: &Accept) {
    if let Ok(msg) = TaskMessage::decode(payload, accept) {
        let _ = json::to_vec(&Value::List(msg.args.clone()));
        let _ = pyrepr::args_repr(&msg.args, pyrepr::REPR_MAX_SIZE);
        let _ = pyrepr::kwargs_repr(&msg.kwargs, pyrepr::REPR_MAX_SIZE);
        let retry = msg.to_retry(chrono::Utc::now());
        let again = TaskMessage::decode(&retry.payload, accept).expect("a retry of a decodable message decodes");
        assert_eq!(again.headers.retries, msg.headers.retries.saturating_add(1));
    }
}

#[test]
fn mutated_envelopes_never_panic() {
    let accept = Accept::new(["json", "pickle", "msgpack"]);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for original in fixtures() {
        for _ in 0..400 {
            let mut bytes = original.clone();
            match rng.below(4) {
                0 => {
                    for _ in 0..=rng.below(4) {
                        let i = rng.below(bytes.len());
                        bytes[i] = u8::try_from(rng.next() & 0xff).unwrap_or(0);
                    }
                }
                1 => bytes.truncate(rng.below(bytes.len())),
                2 => {
                    let i = rng.below(bytes.len());
                    let token = TOKENS[rng.below(TOKENS.len())];
                    bytes.splice(i..i, token.bytes());
                }
                _ => {
                    let (a, b) = (rng.below(bytes.len()), rng.below(bytes.len()));
                    let (lo, hi) = (a.min(b), a.max(b));
                    bytes.drain(lo..hi);
                }
            }
            check(&bytes, &accept);
        }
    }
}

#[test]
fn swapped_field_types_never_panic() {
    let accept = Accept::default();
    let mut rng = Rng(42);
    for original in fixtures() {
        let Ok(envelope) = Envelope::parse(&original) else { continue };
        let keys: Vec<String> = envelope.headers.keys().cloned().collect();
        let prop_keys: Vec<String> = envelope.properties.keys().cloned().collect();
        for _ in 0..200 {
            let mut env = envelope.clone();
            let token = json::from_slice(TOKENS[rng.below(TOKENS.len())].as_bytes()).unwrap_or(Value::Null);
            match rng.below(3) {
                0 if !keys.is_empty() => {
                    env.headers.insert(keys[rng.below(keys.len())].clone(), token);
                }
                1 if !prop_keys.is_empty() => {
                    env.properties.insert(prop_keys[rng.below(prop_keys.len())].clone(), token);
                }
                _ => {
                    // A body of the right encoding but a random shape.
                    let body = format!(
                        "[{}, {}, {}]",
                        TOKENS[rng.below(TOKENS.len())],
                        TOKENS[rng.below(TOKENS.len())],
                        TOKENS[rng.below(TOKENS.len())]
                    );
                    env.body = base64::engine::general_purpose::STANDARD.encode(body);
                }
            }
            check(&env.to_bytes(), &accept);
        }
    }
}

#[test]
fn deepest_accepted_nesting_fits_a_default_thread_stack() {
    // Rust and tokio threads get 2 MiB of stack; the deepest documents either decoder accepts,
    // in a full message decode (envelope, then body), and their drop, must fit in it even
    // unoptimized. One level deeper is an error, never an overflow.
    let depth = json::MAX_DEPTH;
    let run = move || {
        let accept = Accept::new(["json", "msgpack"]);
        let lists = format!("[{}1{}, {{}}, {{}}]", "[".repeat(depth - 1), "]".repeat(depth - 1));
        let maps = format!("[[{}1{}], {{}}, {{}}]", "{\"a\": ".repeat(depth - 2), "}".repeat(depth - 2));
        let msgpack_lists: Vec<u8> =
            [0x93].into_iter().chain(std::iter::repeat_n(0x91, depth - 1)).chain([0x01, 0x80, 0x80]).collect();
        let msgpack_maps: Vec<u8> = [0x93, 0x91]
            .into_iter()
            .chain(std::iter::repeat_n([0x81, 0xa1, b'a'], depth - 2).flatten())
            .chain([0x01, 0x80, 0x80])
            .collect();
        for (body, content_type) in [
            (lists.as_bytes(), "application/json"),
            (maps.as_bytes(), "application/json"),
            (&msgpack_lists[..], "application/x-msgpack"),
            (&msgpack_maps[..], "application/x-msgpack"),
        ] {
            let payload = format!(
                r#"{{"body": "{}", "content-type": "{content_type}", "headers": {{"task": "t", "id": "1"}}, "properties": {{"body_encoding": "base64"}}}}"#,
                base64::engine::general_purpose::STANDARD.encode(body)
            );
            let msg = TaskMessage::decode(payload.as_bytes(), &accept);
            assert!(msg.is_ok(), "{content_type}: {msg:?}");
        }
        let too_deep = format!("{}1{}", "[".repeat(depth + 1), "]".repeat(depth + 1));
        assert!(json::from_slice(too_deep.as_bytes()).is_err());
        let too_deep: Vec<u8> = std::iter::repeat_n(0x91, depth + 1).chain([0x01]).collect();
        assert!(celeriac_protocol::msgpack::from_slice(&too_deep).is_err());
    };
    std::thread::Builder::new().stack_size(2 << 20).spawn(run).unwrap().join().unwrap();
}
