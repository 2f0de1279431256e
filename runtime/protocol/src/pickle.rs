//! A pickle *writer* for [`Value`]: the bytes Python's `pickle.loads` reads back as the value.
//!
//! Celery's database result backend stores the `result` column of `celery_taskmeta` as a pickle
//! (SQLAlchemy `PickleType`) up to Celery 5.6, and 5.7 still falls back to `pickle.loads` when the
//! column starts with `0x80`. [`dumps`] writes a result value that way, [`dumps_exception`] the
//! `{"exc_type", "exc_message", "exc_module"}` dict Celery stores for a failure.
//!
//! The stream is protocol 4 (`PROTO 4` … `STOP`), without `FRAME` and without memo opcodes. Python
//! objects are rebuilt through their constructors (`STACK_GLOBAL` + `REDUCE`), so loading needs
//! only the standard library (`datetime`, `decimal`, `uuid`):
//!
//! | [`Value`] | Python |
//! |---|---|
//! | `Null`, `Bool`, `Int`, `BigInt`, `Float`, `Str`, `Bytes` | `None`, `bool`, `int`, `int`, `float`, `str`, `bytes` |
//! | `List`, `Map` | `list`, `dict` (keys in order) |
//! | `DateTime` | `datetime.datetime(…, tzinfo=datetime.timezone(datetime.timedelta(…)))` |
//! | `NaiveDateTime`, `Date`, `Time` | naive `datetime.datetime`, `datetime.date`, `datetime.time` |
//! | `Uuid`, `Decimal` | `uuid.UUID(text)`, `decimal.Decimal(text)` |
//!
//! Writing is total and iterative: every value, however deep, yields a pickle, with no panic and
//! no recursion. A few values Python cannot hold as the matching type are written as a `str`
//! instead (so the pickle still loads):
//!
//! - a `BigInt` whose text is not an optional `-` and ASCII digits, or has more than
//!   [`MAX_BIGINT_DIGITS`] significant digits (the text as it is);
//! - a `Decimal` whose text `decimal.Decimal` would refuse (the text as it is; only the ASCII
//!   syntax `kombu` writes is accepted: sign, digits, `.`, exponent, `Infinity`/`Inf`, `NaN`/`sNaN`
//!   with an optional payload, case-insensitively);
//! - a date or datetime whose year (local year, for an aware datetime) is outside Python's
//!   `1..=9999` (its ISO text, as in kombu's JSON markers).
//!
//! Sub-microsecond precision is dropped (Python keeps microseconds), and a leap second (chrono's
//! nanoseconds ≥ 10⁹) is written as `59.999999` seconds.

use chrono::{DateTime, Datelike, FixedOffset, NaiveTime, Timelike};

use crate::isoformat;
use crate::value::Value;

/// The longest `BigInt` (in significant decimal digits) written as an `int`; longer ones are
/// written as their text. Converting decimal text to binary is quadratic here, and Python itself
/// refuses to parse integers of more than 4300 digits by default.
pub const MAX_BIGINT_DIGITS: usize = 100_000;

/// Items per `APPENDS`/`SETITEMS` batch, as Python's pickler writes them.
const BATCH: usize = 1000;

mod op {
    pub const PROTO: u8 = 0x80;
    pub const STOP: u8 = b'.';
    pub const MARK: u8 = b'(';
    pub const NONE: u8 = b'N';
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const LONG1: u8 = 0x8a;
    pub const LONG4: u8 = 0x8b;
    pub const BINFLOAT: u8 = b'G';
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE: u8 = b'X';
    pub const BINUNICODE8: u8 = 0x8d;
    pub const SHORT_BINBYTES: u8 = b'C';
    pub const BINBYTES: u8 = b'B';
    pub const BINBYTES8: u8 = 0x8e;
    pub const EMPTY_LIST: u8 = b']';
    pub const APPENDS: u8 = b'e';
    pub const EMPTY_DICT: u8 = b'}';
    pub const SETITEMS: u8 = b'u';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const TUPLE: u8 = b't';
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const REDUCE: u8 = b'R';
}

/// Pickles `value` (protocol 4), as Python's `pickle.loads` reads it back.
///
/// See the [module documentation](self) for the mapping of each variant and the few values
/// written as a `str` instead.
///
/// ```
/// use celeriac_protocol::{pickle, Value};
///
/// assert_eq!(pickle::dumps(&Value::Int(4)), b"\x80\x04K\x04.");
/// ```
#[must_use]
pub fn dumps(value: &Value) -> Vec<u8> {
    let mut w = Writer::new();
    w.run(vec![Work::Value(value)]);
    w.finish()
}

/// Pickles the failure dict Celery's result backends store for an exception (when the result
/// serializer is not pickle): `{"exc_type": exc_type, "exc_message": tuple(args), "exc_module":
/// exc_module}`, keys in that order and `exc_message` a Python `tuple`.
///
/// ```
/// use celeriac_protocol::{pickle, Value};
///
/// let bytes = pickle::dumps_exception("ValueError", "builtins", &[Value::Str("bad".into())]);
/// assert!(bytes.starts_with(b"\x80\x04"));
/// ```
#[must_use]
pub fn dumps_exception(exc_type: &str, exc_module: &str, args: &[Value]) -> Vec<u8> {
    let mut w = Writer::new();
    w.run(vec![
        Work::Op(op::EMPTY_DICT),
        Work::Op(op::MARK),
        Work::Str("exc_type"),
        Work::Str(exc_type),
        Work::Str("exc_message"),
        Work::Tuple(args),
        Work::Str("exc_module"),
        Work::Str(exc_module),
        Work::Op(op::SETITEMS),
    ]);
    w.finish()
}

/// One step of the iterative writer.
enum Work<'a> {
    /// Write one opcode.
    Op(u8),
    /// Write a value.
    Value(&'a Value),
    /// Write a `str`.
    Str(&'a str),
    /// Write a tuple of these items.
    Tuple(&'a [Value]),
    /// Write the remaining list items, in `MARK … APPENDS` batches.
    ListItems(&'a [Value]),
    /// Write the remaining dict entries, in `MARK … SETITEMS` batches.
    MapItems(indexmap::map::Iter<'a, String, Value>),
}

struct Writer {
    out: Vec<u8>,
}

impl Writer {
    fn new() -> Writer {
        Writer { out: vec![op::PROTO, 4] }
    }

    fn finish(mut self) -> Vec<u8> {
        self.out.push(op::STOP);
        self.out
    }

    /// Writes `work` in order, using a heap stack instead of recursion.
    fn run<'a>(&mut self, mut work: Vec<Work<'a>>) {
        work.reverse();
        while let Some(item) = work.pop() {
            match item {
                Work::Op(code) => self.out.push(code),
                Work::Str(s) => self.str(s),
                Work::Value(v) => match v {
                    Value::List(items) => {
                        self.out.push(op::EMPTY_LIST);
                        work.push(Work::ListItems(items));
                    }
                    Value::Map(map) => {
                        self.out.push(op::EMPTY_DICT);
                        work.push(Work::MapItems(map.iter()));
                    }
                    leaf => self.leaf(leaf),
                },
                Work::Tuple(items) => {
                    let close = match items.len() {
                        0 => {
                            self.out.push(op::EMPTY_TUPLE);
                            continue;
                        }
                        1 => op::TUPLE1,
                        2 => op::TUPLE2,
                        3 => op::TUPLE3,
                        _ => {
                            self.out.push(op::MARK);
                            op::TUPLE
                        }
                    };
                    work.push(Work::Op(close));
                    work.extend(items.iter().rev().map(Work::Value));
                }
                Work::ListItems(items) => {
                    if items.is_empty() {
                        continue;
                    }
                    let (batch, rest) = items.split_at(items.len().min(BATCH));
                    work.push(Work::ListItems(rest));
                    work.push(Work::Op(op::APPENDS));
                    work.extend(batch.iter().rev().map(Work::Value));
                    self.out.push(op::MARK);
                }
                Work::MapItems(mut entries) => {
                    if entries.len() == 0 {
                        continue;
                    }
                    let batch: Vec<(&'a String, &'a Value)> = entries.by_ref().take(BATCH).collect();
                    work.push(Work::MapItems(entries));
                    work.push(Work::Op(op::SETITEMS));
                    for (k, v) in batch.into_iter().rev() {
                        work.push(Work::Value(v));
                        work.push(Work::Str(k));
                    }
                    self.out.push(op::MARK);
                }
            }
        }
    }

    /// Writes a value that holds no other values.
    fn leaf(&mut self, value: &Value) {
        match value {
            Value::Null => self.out.push(op::NONE),
            Value::Bool(true) => self.out.push(op::NEWTRUE),
            Value::Bool(false) => self.out.push(op::NEWFALSE),
            Value::Int(i) => self.int(*i),
            Value::BigInt(text) => self.big_int(text),
            Value::Float(f) => {
                self.out.push(op::BINFLOAT);
                self.out.extend_from_slice(&f.to_be_bytes());
            }
            Value::Str(s) => self.str(s),
            Value::Bytes(b) => self.bytes(b),
            Value::Decimal(text) if is_python_decimal(text) => {
                self.global("decimal", "Decimal");
                self.str(text);
                self.out.extend_from_slice(&[op::TUPLE1, op::REDUCE]);
            }
            Value::Decimal(text) => self.str(text),
            Value::Uuid(u) => {
                self.global("uuid", "UUID");
                self.str(&u.hyphenated().to_string());
                self.out.extend_from_slice(&[op::TUPLE1, op::REDUCE]);
            }
            Value::Date(d) if python_year(d.year()) => {
                self.global("datetime", "date");
                self.ints(&[d.year().into(), d.month().into(), d.day().into()]);
                self.out.extend_from_slice(&[op::TUPLE3, op::REDUCE]);
            }
            Value::Date(d) => self.str(&isoformat::date_isoformat(d)),
            Value::Time(t) => {
                self.global("datetime", "time");
                self.time_args(t);
                self.out.extend_from_slice(&[op::TUPLE, op::REDUCE]);
            }
            Value::NaiveDateTime(dt) if python_year(dt.year()) => {
                self.datetime_args(dt);
                self.out.extend_from_slice(&[op::TUPLE, op::REDUCE]);
            }
            Value::NaiveDateTime(dt) => self.str(&isoformat::naive_datetime_isoformat(dt)),
            // `Datelike`/`Timelike` on `DateTime` read the local fields (`naive_local` could panic).
            Value::DateTime(dt) if python_year(dt.year()) => self.aware_datetime(dt),
            Value::DateTime(dt) => self.str(&isoformat::python_isoformat(dt)),
            // Containers go through `run`; unreachable from there, but total all the same.
            Value::List(_) | Value::Map(_) => self.run(vec![Work::Value(value)]),
        }
    }

    /// The global `datetime.datetime`, `MARK`, and the arguments `y, mo, d, h, mi, s, us` of the
    /// local fields (the caller closes the tuple).
    fn datetime_args<T: Datelike + Timelike>(&mut self, dt: &T) {
        self.global("datetime", "datetime");
        self.out.push(op::MARK);
        self.ints(&[dt.year().into(), dt.month().into(), dt.day().into()]);
        self.ints(&time_fields(dt));
    }

    /// `datetime.datetime(y, mo, d, h, mi, s, us, datetime.timezone(datetime.timedelta(days, secs)))`.
    fn aware_datetime(&mut self, dt: &DateTime<FixedOffset>) {
        self.datetime_args(dt);
        let offset = i64::from(dt.offset().local_minus_utc());
        self.global("datetime", "timezone");
        self.global("datetime", "timedelta");
        // Normalised as Python's `timedelta` stores it: -3600 s is (-1 day, 82800 s).
        self.ints(&[offset.div_euclid(86_400), offset.rem_euclid(86_400)]);
        self.out.extend_from_slice(&[op::TUPLE2, op::REDUCE, op::TUPLE1, op::REDUCE]);
        self.out.extend_from_slice(&[op::TUPLE, op::REDUCE]);
    }

    /// `MARK h, m, s, us` (closed by the caller's `TUPLE`).
    fn time_args(&mut self, t: &NaiveTime) {
        self.out.push(op::MARK);
        self.ints(&time_fields(t));
    }

    /// `module.name` via `STACK_GLOBAL`.
    fn global(&mut self, module: &str, name: &str) {
        self.str(module);
        self.str(name);
        self.out.push(op::STACK_GLOBAL);
    }

    fn ints(&mut self, values: &[i64]) {
        for &i in values {
            self.int(i);
        }
    }

    /// An `int` the way Python's pickler picks the opcode.
    fn int(&mut self, i: i64) {
        if let Ok(b) = u8::try_from(i) {
            self.out.extend_from_slice(&[op::BININT1, b]);
        } else if let Ok(h) = u16::try_from(i) {
            self.out.push(op::BININT2);
            self.out.extend_from_slice(&h.to_le_bytes());
        } else if let Ok(w) = i32::try_from(i) {
            self.out.push(op::BININT);
            self.out.extend_from_slice(&w.to_le_bytes());
        } else {
            self.long(&long_bytes_i64(i));
        }
    }

    /// `LONG1`/`LONG4` of a two's-complement little-endian integer.
    fn long(&mut self, bytes: &[u8]) {
        if let Ok(n) = u8::try_from(bytes.len()) {
            self.out.extend_from_slice(&[op::LONG1, n]);
        } else {
            // A `BigInt` is capped far below 2³¹ bytes, so LONG4's signed length always fits.
            let n = i32::try_from(bytes.len()).unwrap_or(i32::MAX);
            self.out.push(op::LONG4);
            self.out.extend_from_slice(&n.to_le_bytes());
        }
        self.out.extend_from_slice(bytes);
    }

    fn big_int(&mut self, text: &str) {
        match parse_big_int(text) {
            Some(BigInt::Small(i)) => self.int(i),
            Some(BigInt::Large(bytes)) => self.long(&bytes),
            None => self.str(text),
        }
    }

    fn str(&mut self, s: &str) {
        self.sized(s.as_bytes(), op::SHORT_BINUNICODE, op::BINUNICODE, op::BINUNICODE8);
    }

    fn bytes(&mut self, b: &[u8]) {
        self.sized(b, op::SHORT_BINBYTES, op::BINBYTES, op::BINBYTES8);
    }

    /// A length-prefixed string: one-byte, four-byte or eight-byte length, whichever fits first.
    fn sized(&mut self, data: &[u8], short: u8, long: u8, huge: u8) {
        if let Ok(n) = u8::try_from(data.len()) {
            self.out.extend_from_slice(&[short, n]);
        } else if let Ok(n) = u32::try_from(data.len()) {
            self.out.push(long);
            self.out.extend_from_slice(&n.to_le_bytes());
        } else {
            let n = u64::try_from(data.len()).unwrap_or(u64::MAX);
            self.out.push(huge);
            self.out.extend_from_slice(&n.to_le_bytes());
        }
        self.out.extend_from_slice(data);
    }
}

/// Whether Python's `date`/`datetime` can hold this year.
fn python_year(year: i32) -> bool {
    (1..=9999).contains(&year)
}

/// `[hour, minute, second, microsecond]`, a leap second clamped to 999999 µs.
fn time_fields<T: Timelike>(t: &T) -> [i64; 4] {
    let micros = (t.nanosecond() / 1000).min(999_999);
    [t.hour().into(), t.minute().into(), t.second().into(), micros.into()]
}

/// Python's `encode_long`: two's complement, little-endian, in as few bytes as hold the sign.
fn long_bytes_i64(i: i64) -> Vec<u8> {
    let mut bytes = i.to_le_bytes().to_vec();
    trim_twos_complement(&mut bytes);
    bytes
}

/// Drops high bytes that only repeat the sign.
fn trim_twos_complement(bytes: &mut Vec<u8>) {
    while let [.., next, last] = bytes[..] {
        let redundant = (last == 0x00 && next & 0x80 == 0) || (last == 0xff && next & 0x80 != 0);
        if !redundant {
            break;
        }
        bytes.pop();
    }
}

/// A parsed `BigInt`.
#[derive(Debug, PartialEq)]
enum BigInt {
    /// Fits in an `i64` (written as Python writes such an `int`).
    Small(i64),
    /// Two's complement, little-endian, minimal length.
    Large(Vec<u8>),
}

/// Parses an optional `-` and ASCII digits; `None` for anything else or more than
/// [`MAX_BIGINT_DIGITS`] significant digits.
fn parse_big_int(text: &str) -> Option<BigInt> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = digits.trim_start_matches('0');
    if digits.len() > MAX_BIGINT_DIGITS {
        return None;
    }
    if digits.len() <= 19 {
        let magnitude: i128 = digits.parse().unwrap_or(0);
        let signed = if negative { -magnitude } else { magnitude };
        if let Ok(i) = i64::try_from(signed) {
            return Some(BigInt::Small(i));
        }
    }
    // Magnitude in base 2³² limbs, little-endian, nine decimal digits at a time.
    let mut limbs: Vec<u32> = Vec::with_capacity(digits.len() / 9 + 2);
    let head = digits.len() % 9;
    let chunks = std::iter::once(&digits[..head])
        .filter(|c| !c.is_empty())
        .chain(digits.as_bytes()[head..].chunks(9).map(|c| std::str::from_utf8(c).unwrap_or("0")));
    for chunk in chunks {
        let scale = 10u64.pow(u32::try_from(chunk.len()).unwrap_or(9));
        let mut carry: u64 = chunk.parse().unwrap_or(0);
        for limb in &mut limbs {
            let v = u64::from(*limb) * scale + carry;
            *limb = low_u32(v);
            carry = v >> 32;
        }
        if carry != 0 {
            limbs.push(low_u32(carry));
        }
    }
    let mut bytes: Vec<u8> = limbs.iter().flat_map(|l| l.to_le_bytes()).collect();
    bytes.push(0);
    if negative {
        // Two's complement: invert and add one.
        let mut carry = true;
        for b in &mut bytes {
            let (v, c) = (!*b).overflowing_add(u8::from(carry));
            *b = v;
            carry = c;
        }
    }
    trim_twos_complement(&mut bytes);
    Some(BigInt::Large(bytes))
}

/// The low 32 bits.
fn low_u32(v: u64) -> u32 {
    u32::try_from(v & 0xffff_ffff).unwrap_or(0)
}

/// Whether `decimal.Decimal(text)` accepts `text`, for the ASCII syntax (see the module docs).
fn is_python_decimal(text: &str) -> bool {
    let body = text.strip_prefix(['+', '-']).unwrap_or(text);
    let lower = body.to_ascii_lowercase();
    if lower == "inf" || lower == "infinity" {
        return true;
    }
    if let Some(payload) = lower.strip_prefix("nan").or_else(|| lower.strip_prefix("snan")) {
        return payload.bytes().all(|b| b.is_ascii_digit());
    }
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(at) => (&body[..at], Some(&body[at + 1..])),
        None => (body, None),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int_part.len() + frac_part.len() == 0 || !all_digits(int_part) || !all_digits(frac_part) {
        return false;
    }
    match exponent {
        None => true,
        Some(exp) => {
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            // libmpdec refuses exponents from about 10¹⁸ on; stay well inside.
            !digits.is_empty() && all_digits(digits) && digits.trim_start_matches('0').len() <= 17
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{NaiveDate, TimeZone as _, Utc};

    use super::*;
    use crate::value::Map;

    fn long_of(text: &str) -> Vec<u8> {
        match parse_big_int(text) {
            Some(BigInt::Large(b)) => b,
            Some(BigInt::Small(i)) => long_bytes_i64(i),
            None => panic!("not an integer: {text}"),
        }
    }

    #[test]
    fn small_ints() {
        assert_eq!(dumps(&Value::Int(4)), b"\x80\x04K\x04.");
        assert_eq!(dumps(&Value::Int(256)), b"\x80\x04M\x00\x01.");
        assert_eq!(dumps(&Value::Int(-1)), b"\x80\x04J\xff\xff\xff\xff.");
        assert_eq!(dumps(&Value::Int(1 << 31)), b"\x80\x04\x8a\x05\x00\x00\x00\x80\x00.");
        assert_eq!(dumps(&Value::Int(i64::MIN)), b"\x80\x04\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x80.");
        assert_eq!(dumps(&Value::BigInt("-0".into())), b"\x80\x04K\x00.");
    }

    #[test]
    fn long1_encoding() {
        assert_eq!(long_of("18446744073709551616"), b"\x00\x00\x00\x00\x00\x00\x00\x00\x01");
        assert_eq!(long_of("-1"), b"\xff");
        assert_eq!(long_of("-128"), b"\x80");
        assert_eq!(long_of("-129"), b"\x7f\xff");
        assert_eq!(long_of("255"), b"\xff\x00");
        assert_eq!(long_of("256"), b"\x00\x01");
        assert_eq!(long_of("-18446744073709551616"), b"\x00\x00\x00\x00\x00\x00\x00\x00\xff");
        assert_eq!(long_of("-9223372036854775809"), b"\xff\xff\xff\xff\xff\xff\xff\x7f\xff");
        assert_eq!(
            dumps(&Value::BigInt("18446744073709551616".into())),
            b"\x80\x04\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x01."
        );
    }

    #[test]
    fn long4_for_long_integers() {
        let text = format!("1{}", "0".repeat(700));
        let bytes = dumps(&Value::BigInt(text));
        assert_eq!(bytes[2], op::LONG4);
        let n = usize::try_from(u32::from_le_bytes([bytes[3], bytes[4], bytes[5], bytes[6]])).unwrap();
        assert_eq!(bytes.len(), 2 + 5 + n + 1);
    }

    #[test]
    fn malformed_big_ints_are_strings() {
        for text in ["", "-", "+1", "1.5", "--1", "12a", "١٢", " 1"] {
            let mut expected = vec![0x80, 4, op::SHORT_BINUNICODE, u8::try_from(text.len()).unwrap()];
            expected.extend_from_slice(text.as_bytes());
            expected.push(b'.');
            assert_eq!(dumps(&Value::BigInt(text.into())), expected, "{text:?}");
        }
        let huge = "9".repeat(MAX_BIGINT_DIGITS + 1);
        assert_eq!(dumps(&Value::BigInt(huge.clone()))[2], op::BINUNICODE);
        assert_eq!(dumps(&Value::BigInt(format!("000{}", &huge[1..])))[2], op::LONG4);
    }

    #[test]
    fn scalars_and_containers() {
        assert_eq!(dumps(&Value::Null), b"\x80\x04N.");
        assert_eq!(dumps(&Value::Bool(true)), b"\x80\x04\x88.");
        assert_eq!(dumps(&Value::Float(1.5)), b"\x80\x04G\x3f\xf8\x00\x00\x00\x00\x00\x00.");
        assert_eq!(dumps(&Value::Str("hi".into())), b"\x80\x04\x8c\x02hi.");
        assert_eq!(dumps(&Value::Bytes(vec![1, 2])), b"\x80\x04C\x02\x01\x02.");
        assert_eq!(dumps(&Value::List(vec![])), b"\x80\x04].");
        assert_eq!(dumps(&Value::List(vec![Value::Int(1), Value::Null])), b"\x80\x04](K\x01Ne.");
        let mut map = Map::new();
        map.insert("a".into(), Value::Int(1));
        assert_eq!(dumps(&Value::Map(map)), b"\x80\x04}(\x8c\x01aK\x01u.");
        assert_eq!(dumps(&Value::Map(Map::new())), b"\x80\x04}.");
    }

    #[test]
    fn batches_of_a_thousand() {
        let bytes = dumps(&Value::List(vec![Value::Null; 2500]));
        assert_eq!(bytes.iter().filter(|&&b| b == op::MARK).count(), 3);
        assert_eq!(bytes.iter().filter(|&&b| b == op::APPENDS).count(), 3);
    }

    #[test]
    fn decimal_syntax() {
        for ok in ["1.10", "-0", "NaN", "-sNaN12", "Infinity", "-inf", ".5", "5.", "1e5", "1E-7", "+3"] {
            assert!(is_python_decimal(ok), "{ok}");
        }
        for bad in ["", "-", ".", "e5", "1e", "1.2.3", "infinit", "nanx", "1e999999999999999999", " 1", "1_0"] {
            assert!(!is_python_decimal(bad), "{bad}");
        }
    }

    #[test]
    fn exception_dict() {
        let bytes = dumps_exception("E", "m", &[]);
        assert_eq!(bytes, b"\x80\x04}(\x8c\x08exc_type\x8c\x01E\x8c\x0bexc_message)\x8c\x0aexc_module\x8c\x01mu.");
    }

    #[test]
    fn deep_nesting_does_not_overflow() {
        let mut v = Value::Null;
        for _ in 0..200_000 {
            v = Value::List(vec![v]);
        }
        let bytes = dumps(&v);
        assert_eq!(bytes.len(), 2 + 200_000 * 3 + 1 + 1);
        // Dropping a value this deep would recurse; it is only test data.
        std::mem::forget(v);
    }

    #[test]
    fn out_of_range_dates_and_leap_seconds() {
        let date = NaiveDate::from_ymd_opt(0, 1, 1).unwrap();
        assert_eq!(dumps(&Value::Date(date)), b"\x80\x04\x8c\x0a0000-01-01.");
        let leap = NaiveTime::from_hms_nano_opt(23, 59, 59, 1_999_999_999).unwrap();
        assert_eq!(time_fields(&leap), [23, 59, 59, 999_999]);
        let east = FixedOffset::east_opt(3600).unwrap();
        let max = DateTime::<Utc>::MAX_UTC.with_timezone(&east);
        assert_eq!(dumps(&Value::DateTime(max))[2], op::SHORT_BINUNICODE);
        let west = FixedOffset::west_opt(3600).unwrap();
        let min = DateTime::<Utc>::MIN_UTC.with_timezone(&west);
        assert_eq!(dumps(&Value::DateTime(min))[2], op::SHORT_BINUNICODE);
        let year_one = Utc.with_ymd_and_hms(1, 1, 1, 0, 30, 0).unwrap().with_timezone(&west);
        assert_eq!(dumps(&Value::DateTime(year_one))[2], op::SHORT_BINUNICODE);
    }
}
