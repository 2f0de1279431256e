//! Pickles written by `celeriac_protocol::pickle` read back by a real CPython `pickle.loads`.
//!
//! Python is `$PYO3_PYTHON`, else the workspace's `.venv/bin/python`, else `python3`; the test
//! fails when none runs. Each case is a pickle and a Python expression for the value it must load
//! as; Python compares them strictly (same types all the way down, dict key order, `Decimal`
//! text, `datetime` offsets, NaN as NaN) and also runs `pickletools.dis` over the stream, which
//! rejects a malformed one (unbalanced marks, leftovers on the stack).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use celeriac_protocol::pickle::{dumps, dumps_exception};
use celeriac_protocol::{Map, Value};
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveTime, TimeZone as _};

const CHECKER: &str = r#"
import datetime, decimal, io, math, pickle, pickletools, sys, uuid

def same(v, e, path="v"):
    if type(v) is not type(e):
        raise AssertionError(f"{path}: type {type(v).__name__} != {type(e).__name__}: {v!r:.200} vs {e!r:.200}")
    if isinstance(v, (list, tuple)):
        assert len(v) == len(e), f"{path}: length {len(v)} != {len(e)}"
        for i, (a, b) in enumerate(zip(v, e)):
            same(a, b, f"{path}[{i}]")
    elif isinstance(v, dict):
        assert list(v) == list(e), f"{path}: keys {list(v)!r:.200} != {list(e)!r:.200}"
        for k in v:
            same(v[k], e[k], f"{path}[{k!r}]")
    elif isinstance(v, float):
        assert (math.isnan(v) and math.isnan(e)) or (v == e and math.copysign(1, v) == math.copysign(1, e)), f"{path}: {v!r} != {e!r}"
    elif isinstance(v, decimal.Decimal):
        assert str(v) == str(e), f"{path}: Decimal {str(v)!r} != {str(e)!r}"
    elif isinstance(v, (datetime.datetime, datetime.time)):
        assert v == e and v.tzinfo == e.tzinfo and v.utcoffset() == e.utcoffset(), f"{path}: {v!r} != {e!r}"
        assert v.isoformat() == e.isoformat(), f"{path}: {v.isoformat()} != {e.isoformat()}"
    else:
        assert v == e, f"{path}: {v!r:.200} != {e!r:.200}"

def depth(v):
    n = 0
    while isinstance(v, list) and v:
        v, n = v[0], n + 1
    return n

ok = 0
failed = 0
for line in sys.stdin:
    name, data_hex, expr_hex = line.rstrip("\n").split("\t")
    try:
        data = bytes.fromhex(data_hex)
        expr = bytes.fromhex(expr_hex).decode()
        assert data[:2] == b"\x80\x04" and data[-1:] == b".", "not a protocol 4 stream"
        pickletools.dis(data, out=io.StringIO())
        v = pickle.loads(data)
        scope = dict(datetime=datetime, decimal=decimal, uuid=uuid, math=math, v=v, depth=depth)
        if expr.startswith("assert "):
            exec(expr, scope)
        else:
            same(v, eval(expr, scope))
        ok += 1
    except Exception as exc:
        failed += 1
        print(f"FAIL {name}: {type(exc).__name__}: {exc}")
print(f"ok {ok} failed {failed}")
sys.exit(1 if failed else 0)
"#;

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("PYO3_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    if venv.exists() {
        return venv;
    }
    let venv = Path::new("/work/main/.venv/bin/python");
    if venv.exists() {
        return venv.to_path_buf();
    }
    PathBuf::from("python3")
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// Runs the checker over `(name, pickle, expected)` cases; panics with Python's report on failure.
fn check(cases: &[(String, Vec<u8>, String)]) {
    let python = python();
    let mut child = Command::new(&python)
        .args(["-c", CHECKER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("no Python to check pickles with ({}): {e}", python.display()));
    let mut stdin = child.stdin.take().unwrap();
    let input: String =
        cases.iter().map(|(name, data, expr)| format!("{name}\t{}\t{}\n", hex(data), hex(expr.as_bytes()))).collect();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "Python ({}) rejected pickles:\n{stdout}\n{stderr}", python.display());
    assert!(stdout.contains(&format!("ok {} failed 0", cases.len())), "unexpected checker output:\n{stdout}\n{stderr}");
}

fn tz(seconds: i32) -> FixedOffset {
    FixedOffset::east_opt(seconds).unwrap()
}

fn value_cases() -> Vec<(&'static str, Value, String)> {
    let s = |x: &str| Value::Str(x.to_owned());
    let big = |x: &str| Value::BigInt(x.to_owned());
    let dec = |x: &str| Value::Decimal(x.to_owned());
    let date = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap();
    let uuid = uuid::Uuid::parse_str("5b4b8c1e-2f6a-4c0e-9f0d-1a2b3c4d5e6f").unwrap();
    let mut map = Map::new();
    map.insert("z".into(), Value::Int(1));
    map.insert("a".into(), Value::List(vec![Value::Null, Value::Bool(false)]));
    map.insert("ü".into(), Value::Map(Map::new()));
    let mut big_map = Map::new();
    for i in 0..2500 {
        big_map.insert(format!("k{i}"), Value::Int(i));
    }
    let mut deep = Value::Int(7);
    for _ in 0..5000 {
        deep = Value::List(vec![deep]);
    }

    let mut cases: Vec<(&'static str, Value, String)> = vec![
        ("none", Value::Null, "None".into()),
        ("true", Value::Bool(true), "True".into()),
        ("false", Value::Bool(false), "False".into()),
        ("int0", Value::Int(0), "0".into()),
        ("int255", Value::Int(255), "255".into()),
        ("int256", Value::Int(256), "256".into()),
        ("int65535", Value::Int(65535), "65535".into()),
        ("int65536", Value::Int(65536), "65536".into()),
        ("int-1", Value::Int(-1), "-1".into()),
        ("int-129", Value::Int(-129), "-129".into()),
        ("i32max", Value::Int(i64::from(i32::MAX)), "2**31 - 1".into()),
        ("i32max+1", Value::Int(1 << 31), "2**31".into()),
        ("i32min", Value::Int(i64::from(i32::MIN)), "-2**31".into()),
        ("i32min-1", Value::Int(-(1 << 31) - 1), "-2**31 - 1".into()),
        ("i64max", Value::Int(i64::MAX), "2**63 - 1".into()),
        ("i64min", Value::Int(i64::MIN), "-2**63".into()),
        ("2**64", big("18446744073709551616"), "2**64".into()),
        ("-2**64", big("-18446744073709551616"), "-2**64".into()),
        ("2**100", big("1267650600228229401496703205376"), "2**100".into()),
        ("-2**100", big("-1267650600228229401496703205376"), "-2**100".into()),
        ("-2**100-1", big("-1267650600228229401496703205377"), "-2**100 - 1".into()),
        ("2**63", big("9223372036854775808"), "2**63".into()),
        ("-2**63-1", big("-9223372036854775809"), "-2**63 - 1".into()),
        ("bigint-small", big("-00042"), "-42".into()),
        ("bigint-minus-zero", big("-0"), "0".into()),
        ("10**700", Value::BigInt(format!("1{}", "0".repeat(700))), "10**700".into()),
        ("-10**700", Value::BigInt(format!("-1{}", "0".repeat(700))), "-10**700".into()),
        ("-2**2048", big(&num_2_pow_2048(true)), "-2**2048".into()),
        ("2**2048-ish", big(&num_2_pow_2048(false)), "2**2048".into()),
        ("bigint-malformed", big("12x"), "'12x'".into()),
        ("bigint-plus", big("+5"), "'+5'".into()),
        ("bigint-empty", big(""), "''".into()),
        ("float", Value::Float(1.5), "1.5".into()),
        ("float-neg-zero", Value::Float(-0.0), "-0.0".into()),
        ("float-tiny", Value::Float(5e-324), "5e-324".into()),
        ("float-max", Value::Float(f64::MAX), "1.7976931348623157e308".into()),
        ("nan", Value::Float(f64::NAN), "float('nan')".into()),
        ("inf", Value::Float(f64::INFINITY), "float('inf')".into()),
        ("-inf", Value::Float(f64::NEG_INFINITY), "float('-inf')".into()),
        ("str-empty", s(""), "''".into()),
        ("str", s("hello"), "'hello'".into()),
        ("str-unicode", s("héllo ✓ 🐍 \u{0} \n\t"), "'héllo ✓ 🐍 \\x00 \\n\\t'".into()),
        ("str-255", s(&"a".repeat(255)), "'a' * 255".into()),
        ("str-256", s(&"b".repeat(256)), "'b' * 256".into()),
        ("str-70000", s(&"é".repeat(70000)), "'é' * 70000".into()),
        ("bytes-empty", Value::Bytes(vec![]), "b''".into()),
        ("bytes", Value::Bytes(vec![0, 1, 0xff, b'.']), "b'\\x00\\x01\\xff.'".into()),
        ("bytes-300", Value::Bytes(vec![7; 300]), "b'\\x07' * 300".into()),
        ("bytes-70000", Value::Bytes(vec![0x80; 70000]), "b'\\x80' * 70000".into()),
        ("list-empty", Value::List(vec![]), "[]".into()),
        ("list", Value::List(vec![Value::Int(1), s("x"), Value::Null]), "[1, 'x', None]".into()),
        ("list-2500", Value::List((0..2500).map(Value::Int).collect()), "list(range(2500))".into()),
        ("map-empty", Value::Map(Map::new()), "{}".into()),
        ("map", Value::Map(map.clone()), "{'z': 1, 'a': [None, False], 'ü': {}}".into()),
        ("map-2500", Value::Map(big_map), "{f'k{i}': i for i in range(2500)}".into()),
        (
            "nested",
            Value::List(vec![Value::Map(map), Value::List(vec![Value::List(vec![big("-2"), Value::Float(f64::NAN)])])]),
            "[{'z': 1, 'a': [None, False], 'ü': {}}, [[-2, float('nan')]]]".into(),
        ),
        ("deep", deep, "assert depth(v) == 5000".into()),
        ("uuid", Value::Uuid(uuid), "uuid.UUID('5b4b8c1e-2f6a-4c0e-9f0d-1a2b3c4d5e6f')".into()),
        ("uuid-nil", Value::Uuid(uuid::Uuid::nil()), "uuid.UUID(int=0)".into()),
        ("decimal", dec("1.10"), "decimal.Decimal('1.10')".into()),
        ("decimal-neg-zero", dec("-0"), "decimal.Decimal('-0')".into()),
        ("decimal-nan", dec("NaN"), "decimal.Decimal('NaN')".into()),
        ("decimal-snan", dec("-sNaN7"), "assert str(v) == '-sNaN7' and v.is_snan()".into()),
        ("decimal-inf", dec("-Infinity"), "decimal.Decimal('-Infinity')".into()),
        ("decimal-exp", dec("1.5E+7"), "decimal.Decimal('1.5E+7')".into()),
        (
            "decimal-long",
            dec("123456789012345678901234567890.123456789"),
            "decimal.Decimal('123456789012345678901234567890.123456789')".into(),
        ),
        ("decimal-malformed", dec("1.2.3"), "'1.2.3'".into()),
        ("date", Value::Date(date(2024, 2, 29)), "datetime.date(2024, 2, 29)".into()),
        ("date-min", Value::Date(date(1, 1, 1)), "datetime.date.min".into()),
        ("date-max", Value::Date(date(9999, 12, 31)), "datetime.date.max".into()),
        ("date-year0", Value::Date(date(0, 6, 1)), "'0000-06-01'".into()),
        ("date-year10000", Value::Date(date(10000, 1, 1)), "'+10000-01-01'".into()),
        (
            "time",
            Value::Time(NaiveTime::from_hms_micro_opt(13, 4, 5, 60).unwrap()),
            "datetime.time(13, 4, 5, 60)".into(),
        ),
        ("time-midnight", Value::Time(NaiveTime::MIN), "datetime.time(0, 0)".into()),
        (
            "time-nanos",
            Value::Time(NaiveTime::from_hms_nano_opt(1, 2, 3, 123_456_789).unwrap()),
            "datetime.time(1, 2, 3, 123456)".into(),
        ),
        (
            "time-leap",
            Value::Time(NaiveTime::from_hms_nano_opt(23, 59, 59, 1_500_000_000).unwrap()),
            "datetime.time(23, 59, 59, 999999)".into(),
        ),
        (
            "naive-datetime",
            Value::NaiveDateTime(date(2023, 12, 31).and_hms_micro_opt(23, 59, 58, 999_999).unwrap()),
            "datetime.datetime(2023, 12, 31, 23, 59, 58, 999999)".into(),
        ),
        (
            "naive-datetime-leap",
            Value::NaiveDateTime(date(2016, 12, 31).and_hms_milli_opt(23, 59, 59, 1_000).unwrap()),
            "datetime.datetime(2016, 12, 31, 23, 59, 59, 999999)".into(),
        ),
        (
            "naive-datetime-year0",
            Value::NaiveDateTime(date(0, 1, 1).and_hms_opt(0, 0, 0).unwrap()),
            "'0000-01-01T00:00:00'".into(),
        ),
    ];
    let aware = [
        ("datetime-utc", 0, "datetime.timezone.utc"),
        ("datetime-plus-0530", 5 * 3600 + 1800, "datetime.timezone(datetime.timedelta(hours=5, minutes=30))"),
        ("datetime-minus-0800", -8 * 3600, "datetime.timezone(datetime.timedelta(hours=-8))"),
        ("datetime-minus-1s", -1, "datetime.timezone(datetime.timedelta(seconds=-1))"),
        ("datetime-plus-max", 86_399, "datetime.timezone(datetime.timedelta(seconds=86399))"),
        ("datetime-minus-max", -86_399, "datetime.timezone(datetime.timedelta(seconds=-86399))"),
    ];
    for (name, offset, py_tz) in aware {
        let dt = tz(offset).with_ymd_and_hms(2024, 3, 10, 2, 30, 15).unwrap() + chrono::Duration::microseconds(250);
        cases.push((
            name,
            Value::DateTime(dt),
            format!("datetime.datetime(2024, 3, 10, 2, 30, 15, 250, tzinfo={py_tz})"),
        ));
    }
    let year0: DateTime<FixedOffset> =
        DateTime::parse_from_rfc3339("0001-01-01T00:30:00Z").unwrap().with_timezone(&tz(-3600));
    cases.push(("datetime-local-year0", Value::DateTime(year0), "'0000-12-31T23:30:00-01:00'".into()));
    cases
}

/// `±2**2048` in decimal, computed here by doubling so the test does not trust the writer's parser.
fn num_2_pow_2048(negative: bool) -> String {
    let mut digits = vec![1u8]; // little-endian decimal digits
    for _ in 0..2048 {
        let mut carry = 0;
        for d in &mut digits {
            let v = *d * 2 + carry;
            *d = v % 10;
            carry = v / 10;
        }
        if carry > 0 {
            digits.push(carry);
        }
    }
    let text: String = digits.iter().rev().map(|d| char::from(b'0' + d)).collect();
    if negative {
        format!("-{text}")
    } else {
        text
    }
}

#[test]
fn python_loads_every_value() {
    let cases: Vec<(String, Vec<u8>, String)> =
        value_cases().into_iter().map(|(name, value, expr)| (name.to_owned(), dumps(&value), expr)).collect();
    // Every variant is covered.
    let kinds: std::collections::BTreeSet<&str> = value_cases().iter().map(|(_, v, _)| v.kind()).collect();
    assert_eq!(kinds.len(), 13, "{kinds:?}");
    check(&cases);
}

#[test]
fn python_loads_the_failure_dict() {
    let cases = vec![
        (
            "value-error".to_owned(),
            dumps_exception("ValueError", "builtins", &[Value::Str("bad".into()), Value::Int(3)]),
            "assert v == {'exc_type': 'ValueError', 'exc_message': ('bad', 3), 'exc_module': 'builtins'} \
             and list(v) == ['exc_type', 'exc_message', 'exc_module'] and type(v['exc_message']) is tuple"
                .to_owned(),
        ),
        (
            "no-args".to_owned(),
            dumps_exception("KeyError", "builtins", &[]),
            "{'exc_type': 'KeyError', 'exc_message': (), 'exc_module': 'builtins'}".to_owned(),
        ),
        (
            "one-arg".to_owned(),
            dumps_exception("MyError", "tasks.errors", &[Value::List(vec![Value::Null])]),
            "{'exc_type': 'MyError', 'exc_message': ([None],), 'exc_module': 'tasks.errors'}".to_owned(),
        ),
        (
            "three-args".to_owned(),
            dumps_exception("E", "m", &[Value::Int(1), Value::Float(f64::NAN), Value::Bytes(b"x".to_vec())]),
            "{'exc_type': 'E', 'exc_message': (1, float('nan'), b'x'), 'exc_module': 'm'}".to_owned(),
        ),
        (
            "many-args".to_owned(),
            dumps_exception("E", "m", &(0..1500).map(Value::Int).collect::<Vec<_>>()),
            "{'exc_type': 'E', 'exc_message': tuple(range(1500)), 'exc_module': 'm'}".to_owned(),
        ),
    ];
    check(&cases);
}
