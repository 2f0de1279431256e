//! JSON as Python's `json` module and kombu write and read it.
//!
//! Reading is lenient the way `json.loads` is: integers of any size, bare `NaN`, `Infinity` and
//! `-Infinity`, and kombu's `{"__type__", "__value__"}` markers turned into typed [`Value`]s. It
//! never panics: nesting is bounded, the decoded size is bounded by a [`Budget`] (64 MiB by
//! default), and every error carries the byte offset.
//!
//! Writing matches `json.dumps` with its defaults (`ensure_ascii=True`, separators `", "` and
//! `": "`, `repr()` floats, bare `NaN`), which is what Celery puts on the wire, so a body that
//! celeriac encodes is byte-identical to the one Python would have produced.

use std::fmt::Write as _;

use base64::Engine as _;
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime};

pub use crate::{isoformat::python_isoformat, value::marker_text};
use crate::{
    limits::Budget,
    value::{Map, Value},
};

/// The deepest nesting accepted on input; deeper documents are rejected, never overflow the stack.
pub const MAX_DEPTH: usize = 512;

/// A JSON document that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid JSON at byte {offset}: {message}")]
pub struct JsonError {
    /// Byte offset into the input where reading failed.
    pub offset: usize,
    /// What was wrong there.
    pub message: String,
}

/// Reads one JSON document (kombu flavour) from `input`, within the default [`Budget`].
///
/// # Errors
/// [`JsonError`] for malformed input, trailing data, nesting deeper than [`MAX_DEPTH`], or a
/// document that decodes to more than [`crate::limits::DEFAULT_MAX_DECODED_SIZE`] bytes.
pub fn from_slice(input: &[u8]) -> Result<Value, JsonError> {
    from_slice_with_budget(input, &mut Budget::default())
}

/// Reads one JSON document (kombu flavour) from `input`, charging what it builds to `budget`.
///
/// # Errors
/// As [`from_slice`]; when the document is abandoned because it crossed the budget's limit,
/// [`Budget::exceeded`] is true afterwards.
pub fn from_slice_with_budget(input: &[u8], budget: &mut Budget) -> Result<Value, JsonError> {
    let mut reader = Reader { input, pos: 0, budget };
    reader.skip_ws();
    let value = reader.value(0)?;
    reader.skip_ws();
    if reader.pos != input.len() {
        return Err(reader.error("trailing data after the JSON document"));
    }
    Ok(value)
}

/// Writes `value` exactly as Python's `json.dumps(value)` (kombu's encoder) would.
#[must_use]
pub fn to_vec(value: &Value) -> Vec<u8> {
    to_vec_with_capacity(value, 128)
}

/// [`to_vec`] into a buffer of `capacity` bytes to start with.
#[must_use]
pub fn to_vec_with_capacity(value: &Value, capacity: usize) -> Vec<u8> {
    let mut out = String::with_capacity(capacity);
    write_value(&mut out, value);
    out.into_bytes()
}

/// Writes `value` as [`to_vec`] does, into a `String`.
#[must_use]
pub fn to_string(value: &Value) -> String {
    let mut out = String::with_capacity(128);
    write_value(&mut out, value);
    out
}

struct Reader<'a, 'b> {
    input: &'a [u8],
    pos: usize,
    budget: &'b mut Budget,
}

impl Reader<'_, '_> {
    fn error(&self, message: impl Into<String>) -> JsonError {
        JsonError { offset: self.pos, message: message.into() }
    }

    /// Charges `bytes` to the budget; an error once it is exhausted.
    fn charge(&mut self, bytes: usize) -> Result<(), JsonError> {
        if self.budget.charge(bytes) {
            Ok(())
        } else {
            Err(self.error(format!("decoded size exceeds the limit of {} bytes", self.budget.limit())))
        }
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn eat_literal(&mut self, literal: &str) -> bool {
        if self.input[self.pos..].starts_with(literal.as_bytes()) {
            self.pos += literal.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, JsonError> {
        if depth > MAX_DEPTH {
            return Err(self.error(format!("nesting deeper than {MAX_DEPTH} levels")));
        }
        self.charge(Budget::NODE)?;
        match self.peek() {
            None => Err(self.error("unexpected end of input")),
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => self.string().map(Value::Str),
            Some(b't') if self.eat_literal("true") => Ok(Value::Bool(true)),
            Some(b'f') if self.eat_literal("false") => Ok(Value::Bool(false)),
            Some(b'n') if self.eat_literal("null") => Ok(Value::Null),
            Some(b'N') if self.eat_literal("NaN") => Ok(Value::Float(f64::NAN)),
            Some(b'I') if self.eat_literal("Infinity") => Ok(Value::Float(f64::INFINITY)),
            Some(b'-') if self.eat_literal("-Infinity") => Ok(Value::Float(f64::NEG_INFINITY)),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(other) => Err(self.error(format!("unexpected character {:?}", char::from(other)))),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, JsonError> {
        self.pos += 1;
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Value::Map(Map::new()));
        }
        // The entries are gathered first, so the map is built at its final size in one go.
        let mut entries: Vec<(String, Value)> = Vec::new();
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(self.error("expected a string key"));
            }
            let key = self.string()?;
            self.charge(Budget::ENTRY)?;
            self.skip_ws();
            if self.peek() != Some(b':') {
                return Err(self.error("expected ':' after an object key"));
            }
            self.pos += 1;
            self.skip_ws();
            let value = self.value(depth + 1)?;
            entries.push((key, value));
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    // Python keeps the last of duplicate keys, in the first key's position:
                    // `IndexMap::insert` does the same.
                    let mut map = Map::with_capacity(entries.len());
                    for (key, value) in entries {
                        map.insert(key, value);
                    }
                    return Ok(decode_marker(map));
                }
                _ => return Err(self.error("expected ',' or '}' in an object")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, JsonError> {
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Value::List(items));
        }
        loop {
            self.skip_ws();
            items.push(self.value(depth + 1)?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Value::List(items));
                }
                _ => return Err(self.error("expected ',' or ']' in an array")),
            }
        }
    }

    fn number(&mut self) -> Result<Value, JsonError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                while let Some(b'0'..=b'9') = self.peek() {
                    self.pos += 1;
                }
            }
            _ => return Err(self.error("expected a digit")),
        }
        let mut is_float = false;
        if self.peek() == Some(b'.') {
            is_float = true;
            self.pos += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.error("expected a digit after '.'"));
            }
            while let Some(b'0'..=b'9') = self.peek() {
                self.pos += 1;
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            is_float = true;
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.error("expected a digit in the exponent"));
            }
            while let Some(b'0'..=b'9') = self.peek() {
                self.pos += 1;
            }
        }
        // The slice holds only ASCII digits, signs, '.', 'e'.
        let text = std::str::from_utf8(&self.input[start..self.pos]).unwrap_or_default();
        if is_float {
            text.parse::<f64>()
                .map(Value::Float)
                .map_err(|e| JsonError { offset: start, message: format!("bad number {text:?}: {e}") })
        } else if let Ok(i) = text.parse::<i64>() {
            Ok(Value::Int(i))
        } else {
            self.charge(text.len())?;
            Ok(Value::BigInt(text.to_owned()))
        }
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let digits = self.input.get(self.pos..self.pos + 4).ok_or_else(|| self.error("truncated \\u escape"))?;
        let text = std::str::from_utf8(digits).map_err(|_| self.error("bad \\u escape"))?;
        let code = u32::from_str_radix(text, 16).map_err(|_| self.error("bad \\u escape"))?;
        self.pos += 4;
        Ok(code)
    }

    fn string(&mut self) -> Result<String, JsonError> {
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            // Runs of plain bytes are copied whole: a string without escapes (nearly every
            // string of an envelope, and its long base64 body) is one allocation of its size.
            let run = self.input[self.pos..].iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20);
            let end = run.map_or(self.input.len(), |n| self.pos + n);
            out.extend_from_slice(&self.input[self.pos..end]);
            self.pos = end;
            let Some(byte) = self.peek() else {
                return Err(self.error("unterminated string"));
            };
            self.pos += 1;
            match byte {
                b'"' => break,
                b'\\' => {
                    let Some(esc) = self.peek() else {
                        return Err(self.error("unterminated escape"));
                    };
                    self.pos += 1;
                    let ch = match esc {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.unicode_escape()?,
                        other => return Err(self.error(format!("bad escape \\{}", char::from(other)))),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                // Python's json.loads(strict=True) rejects raw control characters in strings.
                _ => return Err(self.error("control character in a string")),
            }
        }
        self.charge(out.len())?;
        String::from_utf8(out).map_err(|_| self.error("string is not valid UTF-8"))
    }

    fn unicode_escape(&mut self) -> Result<char, JsonError> {
        let first = self.hex4()?;
        if (0xD800..0xDC00).contains(&first) && self.input[self.pos..].starts_with(b"\\u") {
            let save = self.pos;
            self.pos += 2;
            let second = self.hex4()?;
            if (0xDC00..0xE000).contains(&second) {
                let code = 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00);
                return Ok(char::from_u32(code).unwrap_or('\u{FFFD}'));
            }
            self.pos = save;
        }
        // A lone surrogate is legal for Python but not for a Rust string.
        Ok(char::from_u32(first).unwrap_or('\u{FFFD}'))
    }
}

/// Turns an object with exactly the keys `__type__` and `__value__` into a typed value, as
/// kombu's `object_hook` does. Values that do not parse, and unknown types, stay plain objects
/// (kombu would raise; keeping the object loses nothing).
fn decode_marker(map: Map) -> Value {
    if map.len() != 2 {
        return Value::Map(map);
    }
    let (Some(Value::Str(kind)), Some(value)) = (map.get("__type__"), map.get("__value__")) else {
        return Value::Map(map);
    };
    let decoded = match (kind.as_str(), value) {
        ("datetime", Value::Str(s)) => parse_datetime(s),
        ("date", Value::Str(s)) => NaiveDate::parse_from_str(s, "%Y-%m-%d").ok().map(Value::Date),
        ("time", Value::Str(s)) => parse_time(s).map(Value::Time),
        ("uuid", Value::Map(m)) => {
            m.get("hex").and_then(Value::as_str).and_then(|h| uuid::Uuid::parse_str(h).ok()).map(Value::Uuid)
        }
        ("uuid", Value::Str(s)) => uuid::Uuid::parse_str(s).ok().map(Value::Uuid),
        ("decimal", Value::Str(s)) => Some(Value::Decimal(s.clone())),
        ("bytes", Value::Str(s)) => Some(Value::Bytes(s.as_bytes().to_vec())),
        ("base64", Value::Str(s)) => base64::engine::general_purpose::STANDARD.decode(s).ok().map(Value::Bytes),
        _ => None,
    };
    decoded.unwrap_or(Value::Map(map))
}

/// Parses a Python `datetime.isoformat()` string (aware or naive).
#[must_use]
pub fn parse_datetime(s: &str) -> Option<Value> {
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Some(Value::DateTime(dt));
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f%:z", "%Y-%m-%d %H:%M:%S%.f%:z", "%Y-%m-%dT%H:%M%:z"] {
        if let Ok(dt) = DateTime::parse_from_str(s, fmt) {
            return Some(Value::DateTime(dt));
        }
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M"] {
        if let Ok(dt) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(Value::NaiveDateTime(dt));
        }
    }
    None
}

fn parse_time(s: &str) -> Option<NaiveTime> {
    NaiveTime::parse_from_str(s, "%H:%M:%S%.f").or_else(|_| NaiveTime::parse_from_str(s, "%H:%M")).ok()
}

/// `repr(f)` of a finite Python float: the shortest round-tripping digits, fixed notation for
/// decimal exponents in `-4..16`, otherwise `d.ddde±XX`.
#[must_use]
pub fn python_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "-1.2345e-7", "1e16", "0e0".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    if (-4..16).contains(&exp) {
        let n = i32::try_from(digits.len()).unwrap_or(i32::MAX);
        if exp < 0 {
            out.push_str("0.");
            for _ in 0..(-exp - 1) {
                out.push('0');
            }
            out.push_str(&digits);
        } else if exp + 1 >= n {
            out.push_str(&digits);
            for _ in 0..(exp + 1 - n) {
                out.push('0');
            }
            out.push_str(".0");
        } else {
            let split = usize::try_from(exp + 1).unwrap_or(0);
            out.push_str(&digits[..split]);
            out.push('.');
            out.push_str(&digits[split..]);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
    out
}

fn write_str(out: &mut String, s: &str) {
    out.push('"');
    let mut rest = s;
    while !rest.is_empty() {
        // Copy the longest run that needs no escaping in one go.
        let plain =
            rest.bytes().position(|b| !matches!(b, b' '..=b'~') || b == b'"' || b == b'\\').unwrap_or(rest.len());
        out.push_str(&rest[..plain]);
        rest = &rest[plain..];
        let Some(ch) = rest.chars().next() else { break };
        rest = &rest[ch.len_utf8()..];
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            _ => {
                let mut units = [0u16; 2];
                for unit in ch.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

fn write_marker(out: &mut String, kind: &str, value: &Value) {
    out.push_str("{\"__type__\": ");
    write_str(out, kind);
    out.push_str(", \"__value__\": ");
    write_value(out, value);
    out.push('}');
}

fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::BigInt(s) => out.push_str(s),
        Value::Float(f) if f.is_nan() => out.push_str("NaN"),
        Value::Float(f) if f.is_infinite() => out.push_str(if *f > 0.0 { "Infinity" } else { "-Infinity" }),
        Value::Float(f) => out.push_str(&python_float_repr(*f)),
        Value::Str(s) => write_str(out, s),
        Value::List(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Map(map) => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_str(out, k);
                out.push_str(": ");
                write_value(out, v);
            }
            out.push('}');
        }
        Value::DateTime(_) | Value::NaiveDateTime(_) => {
            write_marker(out, "datetime", &Value::Str(marker_text(value).unwrap_or_default()));
        }
        Value::Date(_) => write_marker(out, "date", &Value::Str(marker_text(value).unwrap_or_default())),
        Value::Time(_) => write_marker(out, "time", &Value::Str(marker_text(value).unwrap_or_default())),
        Value::Uuid(u) => {
            let mut inner = Map::new();
            inner.insert("hex".into(), Value::Str(u.simple().to_string()));
            write_marker(out, "uuid", &Value::Map(inner));
        }
        Value::Decimal(s) => write_marker(out, "decimal", &Value::Str(s.clone())),
        Value::Bytes(b) => match std::str::from_utf8(b) {
            Ok(s) => write_marker(out, "bytes", &Value::Str(s.to_owned())),
            Err(_) => write_marker(out, "base64", &Value::Str(base64::engine::general_purpose::STANDARD.encode(b))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(text: &str) {
        let value = from_slice(text.as_bytes()).unwrap();
        assert_eq!(to_string(&value), text, "round trip of {text}");
    }

    #[test]
    fn writes_python_layout() {
        roundtrip(r#"[[2, 2], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]"#);
        roundtrip(r#"{"a": [1, 2.5, -3, true, false, null], "b": "\u00fc\u65e5\ud83d\ude00", "c": "q\"\\\n"}"#);
    }

    #[test]
    fn big_ints_and_non_finite_floats() {
        roundtrip("[18446744073709551616, -1180591620717411303424, NaN, Infinity, -Infinity]");
        let v = from_slice(b"[9223372036854775807, 9223372036854775808]").unwrap();
        assert_eq!(v, Value::List(vec![Value::Int(i64::MAX), Value::BigInt("9223372036854775808".into())]));
    }

    #[test]
    fn float_repr_matches_python() {
        for (f, expected) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (-0.0, "-0.0"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (123_456.789, "123456.789"),
            (1.234_567_890_123_456_8e17, "1.2345678901234568e+17"),
            (2.5e300, "2.5e+300"),
        ] {
            assert_eq!(python_float_repr(f), expected, "repr of {f:e}");
        }
    }

    #[test]
    fn markers_decode_and_reencode() {
        let text = concat!(
            r#"[{"__type__": "datetime", "__value__": "2024-01-02T03:04:05.678901+00:00"}, "#,
            r#"{"__type__": "datetime", "__value__": "2024-01-02T03:04:05"}, "#,
            r#"{"__type__": "date", "__value__": "2024-01-02"}, "#,
            r#"{"__type__": "time", "__value__": "03:04:05.000123"}, "#,
            r#"{"__type__": "uuid", "__value__": {"hex": "12345678123456781234567812345678"}}, "#,
            r#"{"__type__": "decimal", "__value__": "3.14"}, "#,
            r#"{"__type__": "bytes", "__value__": "abc"}, "#,
            r#"{"__type__": "base64", "__value__": "AP9oaQ=="}]"#
        );
        let value = from_slice(text.as_bytes()).unwrap();
        let kinds: Vec<_> = value.as_list().unwrap().iter().map(Value::kind).collect();
        assert_eq!(kinds, ["datetime", "datetime", "date", "time", "uuid", "decimal", "bytes", "bytes"]);
        assert_eq!(to_string(&value), text);
    }

    #[test]
    fn unknown_or_bad_markers_stay_objects() {
        roundtrip(r#"{"__type__": "frobnicate", "__value__": 1}"#);
        roundtrip(r#"{"__type__": "datetime", "__value__": "not a date"}"#);
        let v = from_slice(br#"{"__type__": "date", "__value__": "2024-01-02", "x": 1}"#).unwrap();
        assert_eq!(v.kind(), "object");
    }

    #[test]
    fn rejects_bad_input_without_panicking() {
        for bad in [
            &b""[..],
            b"[",
            b"{",
            b"{\"a\"",
            b"{\"a\":}",
            b"[1,]",
            b"tru",
            b"\"abc",
            b"\"\\x\"",
            b"01x",
            b"-",
            b"1.",
            b"1e",
            b"[1] x",
            b"\"\\ud800\\u12\"",
            b"{1: 2}",
            b"\xff",
            b"\"\xff\"",
            b"nul",
            b"Inf",
        ] {
            assert!(from_slice(bad).is_err(), "accepted {:?}", String::from_utf8_lossy(bad));
        }
        let deep = "[".repeat(MAX_DEPTH + 2);
        let err = from_slice(deep.as_bytes()).unwrap_err();
        assert!(err.message.contains("nesting"), "{err}");
    }

    #[test]
    fn surrogates() {
        let v = from_slice(br#""\ud83d\ude00 \ud800""#).unwrap();
        assert_eq!(v, Value::Str("\u{1F600} \u{FFFD}".into()));
    }

    #[test]
    fn duplicate_keys_keep_the_last_value_in_the_first_place() {
        // As Python's json.loads('{"a": 1, "b": 2, "a": 3}') == {'a': 3, 'b': 2}.
        let Value::Map(map) = from_slice(br#"{"a": 1, "b": 2, "a": 3}"#).unwrap() else { panic!("not a map") };
        assert_eq!(map.into_iter().collect::<Vec<_>>(), [("a".into(), Value::Int(3)), ("b".into(), Value::Int(2))]);
    }

    #[test]
    fn strings_copy_plain_runs_around_escapes() {
        let v = from_slice(br#"["plain", "", "a\"b\\c\n", "\u00e9t\u00e9 caf\u00e9", "tail\t", "\/lead"]"#).unwrap();
        let expected = ["plain", "", "a\"b\\c\n", "\u{e9}t\u{e9} caf\u{e9}", "tail\t", "/lead"];
        assert_eq!(v, Value::List(expected.iter().map(|s| Value::Str((*s).into())).collect()));
        let long = format!("\"{}\"", "QUJD".repeat(10_000));
        assert_eq!(from_slice(long.as_bytes()).unwrap(), Value::Str("QUJD".repeat(10_000)));
        // A raw control character is refused wherever it sits in a run, and reported there.
        let err = from_slice(b"\"abc\ndef\"").unwrap_err();
        assert_eq!((err.offset, err.message.as_str()), (5, "control character in a string"));
        let err = from_slice(b"\"a\\nb\x01\"").unwrap_err();
        assert_eq!(err.offset, 6);
    }
}
