//! What each protocol fuzz target checks for one input. Shared, as source, by the fuzz targets
//! (`fuzz/fuzz_targets/*.rs`) and by the corpus replay test that plain `cargo test` runs
//! (`runtime/protocol/tests/fuzz_corpus.rs`), so the corpus is replayed through exactly the
//! calls the fuzzer made.
//!
//! Properties: no panic; whatever decodes is bounded (its value trees within the decode
//! [`Limits`], and for uncompressed input within a constant factor of the input); what decodes
//! re-encodes to bytes that decode again; the msgpack reader agrees with `rmpv`.

#![allow(dead_code)]

use base64::Engine as _;
use celeriac_protocol::{json, msgpack, pyrepr, Accept, Budget, Envelope, Limits, Map, TaskMessage, Value};

/// Heap bytes a decoded value occupies, counted as [`Budget`] counts them.
pub fn tree_size(value: &Value) -> usize {
    Budget::NODE
        + match value {
            Value::Str(s) | Value::BigInt(s) | Value::Decimal(s) => s.len(),
            Value::Bytes(b) => b.len(),
            Value::List(items) => items.iter().map(tree_size).sum(),
            Value::Map(map) => map_size(map),
            _ => 0,
        }
}

fn map_size(map: &Map) -> usize {
    map.iter().map(|(k, v)| Budget::ENTRY + k.len() + tree_size(v)).sum()
}

/// The most one input byte may decode to: a one-byte msgpack value in a map entry with a
/// one-byte key (two bytes: an entry and two values), or `[]` inside a list in JSON.
const MAX_BYTES_PER_INPUT_BYTE: usize = Budget::NODE + Budget::ENTRY;

fn assert_bounded(what: &str, size: usize, input_len: usize, limit: usize) {
    assert!(size <= limit, "{what}: decoded to {size} bytes, over the limit of {limit}");
    assert!(
        size <= MAX_BYTES_PER_INPUT_BYTE * input_len + Budget::NODE,
        "{what}: {input_len} input bytes decoded to {size} bytes"
    );
}

fn envelope_size(env: &Envelope) -> usize {
    env.body.len() + map_size(&env.headers) + map_size(&env.properties) + map_size(&env.extra)
}

/// `envelope`: a stored message through `TaskMessage::decode`, `decode_head` and
/// `Envelope::parse`, as the worker reads it (json and msgpack accepted, pickle for the head).
pub fn envelope(data: &[u8]) {
    let limits = Limits::default();
    let accept = Accept::new(["json", "msgpack", "pickle"]);
    let decoded = TaskMessage::decode(data, &accept);
    let head = TaskMessage::decode_head(data, &accept);
    let parsed = Envelope::parse(data);
    if let Ok(env) = &parsed {
        assert_bounded("envelope", envelope_size(env), data.len(), limits.max_decoded_size);
    }
    let Ok(msg) = decoded else { return };
    assert!(parsed.is_ok(), "a message decodes but its envelope does not parse");
    let body: usize = msg.args.iter().map(tree_size).sum::<usize>()
        + map_size(&msg.kwargs)
        + [&msg.embed.callbacks, &msg.embed.errbacks, &msg.embed.chain, &msg.embed.chord]
            .into_iter()
            .map(tree_size)
            .sum::<usize>();
    if msg.envelope.headers.get("compression").is_none_or(Value::is_null) {
        // Protocol 1 copies the headers into the task dict; protocol 2 bodies are the body.
        assert_bounded("body", body, data.len() * 2, limits.max_decoded_size);
    } else {
        assert!(body <= limits.max_decoded_size, "body: decoded to {body} bytes");
    }
    if msg.protocol == celeriac_protocol::ProtocolVersion::V2 {
        let head = head.expect("the head of a decodable protocol-2 message decodes");
        assert_eq!(head.headers, msg.headers);
    }
    // What decoded can be logged, re-encoded and retried, and the retry decodes again.
    let _ = pyrepr::args_repr(&msg.args, pyrepr::REPR_MAX_SIZE);
    let _ = pyrepr::kwargs_repr(&msg.kwargs, pyrepr::REPR_MAX_SIZE);
    let retry = msg.to_retry(chrono::DateTime::from_timestamp(1_800_000_000, 0).expect("a valid time"));
    let again = TaskMessage::decode(&retry.payload, &accept).expect("a retry of a decodable message decodes");
    assert_eq!(again.headers.retries, msg.headers.retries.saturating_add(1));
    assert_eq!(again.args.len(), msg.args.len());
}

/// `json_body`: kombu JSON through `json::from_slice_with_budget`; what decodes re-encodes
/// (`json::to_vec`) to text that decodes and re-encodes to the same text.
pub fn json_body(data: &[u8]) {
    let mut budget = Budget::default();
    let Ok(value) = json::from_slice_with_budget(data, &mut budget) else { return };
    assert_bounded("json", tree_size(&value), data.len(), budget.limit());
    assert!(tree_size(&value) <= budget.used(), "the budget counted less than was built");
    let text = json::to_vec(&value);
    let again = json::from_slice(&text)
        .unwrap_or_else(|e| panic!("re-encoded JSON does not decode ({e}): {}", String::from_utf8_lossy(&text)));
    assert_eq!(
        String::from_utf8_lossy(&json::to_vec(&again)),
        String::from_utf8_lossy(&text),
        "re-encoding is not stable"
    );
}

/// `msgpack_body`: msgpack through `msgpack::from_slice_with_budget`, compared with `rmpv`.
pub fn msgpack_body(data: &[u8]) {
    let mut budget = Budget::default();
    let ours = msgpack::from_slice_with_budget(data, &mut budget);
    if let Ok(value) = &ours {
        assert_bounded("msgpack", tree_size(value), data.len(), budget.limit());
    }
    match (&ours, rmpv_reference(data)) {
        (Ok(a), Ok(b)) => assert_eq!(json::to_string(a), json::to_string(&b), "msgpack reader disagrees with rmpv"),
        (Err(_), Err(_)) => {}
        // Differences by design: the reserved marker 0xc1 (rmpv reads it as nil, Python's
        // msgpack refuses it), and the nesting limit (ours is lower).
        (Err(e), Ok(_)) if e.contains("0xc1") || e.contains("nesting") => {}
        (a, b) => panic!("msgpack reader: {a:?}, rmpv: {b:?}"),
    }
}

/// rmpv with the conversion celeriac used before it had its own reader.
fn rmpv_reference(bytes: &[u8]) -> Result<Value, String> {
    fn convert(value: rmpv::Value) -> Result<Value, String> {
        Ok(match value {
            rmpv::Value::Nil => Value::Null,
            rmpv::Value::Boolean(b) => Value::Bool(b),
            rmpv::Value::Integer(i) => match (i.as_i64(), i.as_u64()) {
                (Some(v), _) => Value::Int(v),
                (None, Some(v)) => Value::BigInt(v.to_string()),
                (None, None) => return Err("integer out of range".into()),
            },
            rmpv::Value::F32(f) => Value::Float(f64::from(f)),
            rmpv::Value::F64(f) => Value::Float(f),
            rmpv::Value::String(s) => Value::Str(s.into_str().ok_or("string is not valid UTF-8")?),
            rmpv::Value::Binary(b) => Value::Bytes(b),
            rmpv::Value::Array(items) => Value::List(items.into_iter().map(convert).collect::<Result<_, _>>()?),
            rmpv::Value::Map(entries) => {
                let mut map = Map::new();
                for (k, v) in entries {
                    let key = match k {
                        rmpv::Value::String(s) => s.into_str().ok_or("map key is not valid UTF-8")?,
                        rmpv::Value::Integer(i) => i.to_string(),
                        other => return Err(format!("map key of unsupported type {other:?}")),
                    };
                    map.insert(key, convert(v)?);
                }
                Value::Map(map)
            }
            rmpv::Value::Ext(kind, _) => return Err(format!("extension type {kind}")),
        })
    }
    let mut reader = bytes;
    // Deeper than ours, so anything ours accepts is within rmpv's limit.
    let value = rmpv::decode::read_value_with_max_depth(&mut reader, 2 * json::MAX_DEPTH).map_err(|e| e.to_string())?;
    if !reader.is_empty() {
        return Err("trailing bytes".into());
    }
    convert(value)
}

/// `zlib_body`: a compressed body through `Envelope::decode_body`, under limits taken from the
/// input so that both limits are crossed with small inputs.
///
/// Byte 0: bit 0 = msgpack (else JSON), bit 1 = the rest is the body to compress (else the rest
/// is the compressed stream itself, so corrupt and truncated streams are tried too); byte 1 and
/// byte 2: the limits (`max_inflated_body` 1 KiB–32 MiB, `max_decoded_size` 1 KiB–32 MiB).
pub fn zlib_body(data: &[u8]) {
    let [flags, inflated, decoded, rest @ ..] = data else { return };
    let limits = Limits { max_inflated_body: 1024 << (inflated % 16), max_decoded_size: 1024 << (decoded % 16) };
    let stream = if flags & 2 != 0 {
        use std::io::Write as _;
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(rest).expect("compressing into memory");
        enc.finish().expect("compressing into memory")
    } else {
        rest.to_vec()
    };
    let mut headers = Map::new();
    headers.insert("compression".into(), Value::Str("application/x-gzip".into()));
    let mut properties = Map::new();
    properties.insert("body_encoding".into(), Value::Str("base64".into()));
    let envelope = Envelope {
        body: base64::engine::general_purpose::STANDARD.encode(&stream),
        content_type: if flags & 1 != 0 { "application/x-msgpack" } else { "application/json" }.into(),
        content_encoding: "binary".into(),
        headers,
        properties,
        extra: Map::new(),
    };
    match envelope.body_bytes_with_limits(&limits) {
        Ok(body) => assert!(body.len() as u64 <= limits.max_inflated_body, "inflated {} bytes", body.len()),
        Err(e) => assert!(matches!(e.reason_code().as_str(), "too_large" | "undecodable"), "{e}"),
    }
    if let Ok(value) = envelope.decode_body(&limits) {
        let size = tree_size(&value);
        assert!(size <= limits.max_decoded_size, "decoded to {size} bytes over {limits:?}");
    }
}
