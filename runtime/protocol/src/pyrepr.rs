//! The `argsrepr`/`kwargsrepr` text Celery writes, and Python-style `repr()` for log lines.
//!
//! Celery builds those headers with `celery.utils.saferepr.saferepr(value, maxlen=1024)`, a
//! streaming repr that differs from `repr()`: strings are written as `'…'` with only `'`
//! escaped; containers nested three levels deep print as `[...]`/`{...}`; and when the length
//! budget runs out, the text being written is cut with `...`, `, ...` follows, and the brackets
//! still open are closed. This module reproduces that output for kombu's value model.

use std::fmt::Write as _;

use chrono::{Datelike, FixedOffset, NaiveDate, NaiveTime, Timelike};

use crate::{
    json::python_float_repr,
    value::{Map, Value},
};

/// Celery's default `argsrepr_maxsize`/`kwargsrepr_maxsize`.
pub const REPR_MAX_SIZE: usize = 1024;

/// Containers this deep print as `[...]`/`{...}` (saferepr's `maxlevels`).
const MAX_LEVELS: usize = 3;

/// One token of the streaming repr.
enum Token {
    /// Opening bracket: never truncated.
    Open(&'static str),
    /// Closing bracket: never truncated, and emitted for open containers after a cut.
    Close(&'static str),
    /// `", "` or `": "`: dropped after a cut.
    Sep(&'static str),
    /// A string or bytes value, quoted when written.
    Quoted(Quoted),
    /// Any other value's text (numbers, `None`, elided containers, object reprs).
    Text(String),
}

enum Quoted {
    Str(String),
    Bytes(Vec<u8>),
}

/// `saferepr(tuple(args), maxlen)`, as in the `argsrepr` header.
#[must_use]
pub fn args_repr(args: &[Value], maxlen: usize) -> String {
    let mut tokens = Vec::new();
    tokens.push(Token::Open("("));
    for (i, v) in args.iter().enumerate() {
        if i > 0 {
            tokens.push(Token::Sep(", "));
        }
        tokenize(v, 1, &mut tokens);
    }
    tokens.push(Token::Close(if args.len() == 1 { ",)" } else { ")" }));
    render(&tokens, Some(maxlen))
}

/// `saferepr(kwargs, maxlen)`, as in the `kwargsrepr` header.
#[must_use]
pub fn kwargs_repr(kwargs: &Map, maxlen: usize) -> String {
    let mut tokens = Vec::new();
    tokenize_map(kwargs, 0, &mut tokens);
    render(&tokens, Some(maxlen))
}

/// `saferepr(value)` without a length limit, for log lines (`succeeded in 0.01s: 42`).
#[must_use]
pub fn repr(value: &Value) -> String {
    let mut tokens = Vec::new();
    tokenize(value, 0, &mut tokens);
    render(&tokens, None)
}

fn tokenize_map(map: &Map, level: usize, out: &mut Vec<Token>) {
    if level >= MAX_LEVELS {
        out.push(Token::Text("{...}".into()));
        return;
    }
    out.push(Token::Open("{"));
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 {
            out.push(Token::Sep(", "));
        }
        out.push(Token::Quoted(Quoted::Str(k.clone())));
        out.push(Token::Sep(": "));
        tokenize(v, level + 1, out);
    }
    out.push(Token::Close("}"));
}

fn tokenize(value: &Value, level: usize, out: &mut Vec<Token>) {
    match value {
        Value::List(_) if level >= MAX_LEVELS => out.push(Token::Text("[...]".into())),
        Value::List(items) => {
            out.push(Token::Open("["));
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(Token::Sep(", "));
                }
                tokenize(v, level + 1, out);
            }
            out.push(Token::Close("]"));
        }
        Value::Map(map) => tokenize_map(map, level, out),
        Value::Str(s) => out.push(Token::Quoted(Quoted::Str(s.clone()))),
        Value::Bytes(b) => out.push(Token::Quoted(Quoted::Bytes(b.clone()))),
        other => out.push(Token::Text(object_repr(other))),
    }
}

/// `repr()` of a scalar or marker value, as Python prints the decoded object.
fn object_repr(value: &Value) -> String {
    match value {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Int(i) => i.to_string(),
        Value::BigInt(s) | Value::Str(s) => s.clone(),
        Value::Float(f) => python_float_repr(*f),
        Value::DateTime(dt) => {
            let mut out = String::from("datetime.datetime(");
            push_date(&mut out, dt.date_naive());
            push_time_fields(&mut out, dt.time(), true);
            let _ = write!(out, ", tzinfo={})", timezone_repr(*dt.offset()));
            out
        }
        Value::NaiveDateTime(dt) => {
            let mut out = String::from("datetime.datetime(");
            push_date(&mut out, dt.date());
            push_time_fields(&mut out, dt.time(), true);
            out.push(')');
            out
        }
        Value::Date(d) => {
            let mut out = String::from("datetime.date(");
            push_date(&mut out, *d);
            out.push(')');
            out
        }
        Value::Time(t) => {
            let mut out = String::from("datetime.time(");
            let _ = write!(out, "{}, {}", t.hour(), t.minute());
            push_time_fields(&mut out, *t, false);
            out.push(')');
            out
        }
        Value::Uuid(u) => format!("UUID('{}')", u.hyphenated()),
        Value::Decimal(s) => format!("Decimal('{s}')"),
        Value::List(_) | Value::Map(_) | Value::Bytes(_) => String::new(),
    }
}

fn push_date(out: &mut String, d: NaiveDate) {
    let _ = write!(out, "{}, {}, {}", d.year(), d.month(), d.day());
}

/// `, h, m[, s[, us]]` for datetimes (`with_hm`), or `[, s[, us]]` after `h, m` for times:
/// Python drops trailing zero seconds and microseconds.
fn push_time_fields(out: &mut String, t: NaiveTime, with_hm: bool) {
    if with_hm {
        let _ = write!(out, ", {}, {}", t.hour(), t.minute());
    }
    let micros = t.nanosecond() / 1000 % 1_000_000;
    if t.second() != 0 || micros != 0 {
        let _ = write!(out, ", {}", t.second());
    }
    if micros != 0 {
        let _ = write!(out, ", {micros}");
    }
}

fn timezone_repr(offset: FixedOffset) -> String {
    match offset.local_minus_utc() {
        0 => "datetime.timezone.utc".into(),
        secs => format!("datetime.timezone(datetime.timedelta({}))", timedelta_args(secs)),
    }
}

/// `timedelta.__repr__` arguments for whole seconds (negative offsets carry negative days).
fn timedelta_args(secs: i32) -> String {
    let days = secs.div_euclid(86_400);
    let rest = secs.rem_euclid(86_400);
    match (days, rest) {
        (0, s) => format!("seconds={s}"),
        (d, 0) => format!("days={d}"),
        (d, s) => format!("days={d}, seconds={s}"),
    }
}

/// Celery's `truncate`: cut at `maxlen` characters, back to the last space, and add `...`.
fn truncate(s: &str, maxlen: Option<usize>) -> String {
    match maxlen {
        Some(max) if max > 0 && s.chars().count() >= max => {
            let head: String = s.chars().take(max).collect();
            let head = head.rsplit_once(' ').map_or(head.as_str(), |(before, _)| before);
            format!("{head}...")
        }
        _ => s.to_owned(),
    }
}

fn quoted(q: &Quoted, maxlen: Option<usize>) -> String {
    match q {
        Quoted::Str(s) => format!("'{}'", truncate(s, maxlen).replace('\'', "\\'")),
        Quoted::Bytes(b) => {
            let (chunk, ellipsis) = match maxlen {
                Some(max) if max > 0 && b.len() > max => (&b[..max], "..."),
                _ => (&b[..], ""),
            };
            let text = match std::str::from_utf8(chunk) {
                Ok(s) => s.to_owned(),
                Err(_) => chunk.iter().fold(String::new(), |mut acc, byte| {
                    let _ = write!(acc, "{byte:02x}");
                    acc
                }),
            };
            format!("b'{text}{ellipsis}'")
        }
    }
}

fn render(tokens: &[Token], maxlen: Option<usize>) -> String {
    let mut out = String::new();
    let mut budget = maxlen.map(|m| i64::try_from(m).unwrap_or(i64::MAX));
    for (i, token) in tokens.iter().enumerate() {
        if budget.is_some_and(|b| b <= 0) {
            // The cut value was the last of its container: just close it (closers are free).
            if let Token::Close(s) = token {
                out.push_str(s);
                continue;
            }
            out.push_str(", ...");
            // Close the containers still open at the cut, not those that would open later.
            let mut depth = 0i32;
            for rest in &tokens[i..] {
                match rest {
                    Token::Open(..) => depth += 1,
                    Token::Close(s) => {
                        depth -= 1;
                        if depth < 0 {
                            depth = 0;
                            out.push_str(s);
                        }
                    }
                    _ => {}
                }
            }
            return out;
        }
        let remaining = budget.map(|b| usize::try_from(b).unwrap_or(0));
        let text = match token {
            Token::Open(s) | Token::Close(s) | Token::Sep(s) => (*s).to_owned(),
            Token::Quoted(q) => quoted(q, remaining),
            Token::Text(s) => truncate(s, remaining),
        };
        if let Some(b) = budget.as_mut() {
            *b -= i64::try_from(text.chars().count()).unwrap_or(i64::MAX);
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::from_slice;

    fn args(text: &str) -> Vec<Value> {
        from_slice(text.as_bytes()).unwrap().as_list().unwrap().to_vec()
    }

    #[test]
    fn strings_are_quoted_like_saferepr() {
        let a = args(r#"[2, "it's", "a\"b", "tab\there", 1.0, null, true, [1], {"a": "b"}]"#);
        assert_eq!(
            args_repr(&a, REPR_MAX_SIZE),
            "(2, 'it\\'s', 'a\"b', 'tab\there', 1.0, None, True, [1], {'a': 'b'})"
        );
        assert_eq!(args_repr(&[Value::Int(1)], REPR_MAX_SIZE), "(1,)");
        assert_eq!(args_repr(&[], REPR_MAX_SIZE), "()");
        assert_eq!(kwargs_repr(&Map::new(), REPR_MAX_SIZE), "{}");
    }

    #[test]
    fn deep_nesting_is_elided() {
        let a = args(r#"[[1, [2, [3, {"deep": 1}]], {"a": {"b": {"c": []}}}]]"#);
        assert_eq!(args_repr(&a, REPR_MAX_SIZE), "([1, [2, [...]], {'a': {...}}],)");
    }

    #[test]
    fn long_values_are_cut_and_brackets_closed() {
        // Expected values printed by Celery 5.7's saferepr(…, 1024).
        let long = "x".repeat(2000);
        let out = args_repr(&[Value::Str(long)], REPR_MAX_SIZE);
        assert_eq!(out, format!("('{}...',)", "x".repeat(1023)));
        let range: Vec<Value> = (0..500).map(Value::Int).collect();
        let out = args_repr(&range, REPR_MAX_SIZE);
        assert!(out.ends_with(", 225, 226..., ...)"), "{out}");
        let pairs: Vec<Value> = (0..200).map(|i| Value::List(vec![Value::Int(i), "ab".into()])).collect();
        let out = args_repr(&pairs, REPR_MAX_SIZE);
        assert!(out.ends_with("4, 'ab'], [85, 'ab'], [, ...])"), "{out}");
        let kwargs: Map = (0..40).map(|i| (format!("k{i:02}"), Value::Str("v".repeat(50)))).collect();
        let out = kwargs_repr(&kwargs, REPR_MAX_SIZE);
        assert!(out.ends_with("vvvvvvvvvvvvvvvvvvvv...', ...}"), "{out}");
        let out = args_repr(&[Value::Str("a b c d e f ".repeat(200))], REPR_MAX_SIZE);
        assert!(out.ends_with(" b c d e f a b c d e f a...',)"), "{out}");
        let out = args_repr(&[Value::Str("x".repeat(1020)), "yy".into(), Value::Int(3)], REPR_MAX_SIZE);
        assert_eq!(out, format!("('{}', , ...)", "x".repeat(1020)));
    }

    #[test]
    fn objects_repr_like_python() {
        let a = args(concat!(
            r#"[{"__type__": "datetime", "__value__": "2024-01-02T03:04:05.678901+00:00"}, "#,
            r#"{"__type__": "datetime", "__value__": "2024-01-02T03:04:05"}, "#,
            r#"{"__type__": "date", "__value__": "2024-01-02"}, {"__type__": "time", "__value__": "03:04:05.000123"}, "#,
            r#"{"__type__": "uuid", "__value__": {"hex": "12345678123456781234567812345678"}}, "#,
            r#"{"__type__": "decimal", "__value__": "3.14"}, {"__type__": "bytes", "__value__": "abc"}, "#,
            r#"{"__type__": "base64", "__value__": "AP9oaQ=="}, "#,
            r#"{"__type__": "datetime", "__value__": "2024-01-02T03:04:00+02:00"}]"#
        ));
        assert_eq!(
            args_repr(&a, REPR_MAX_SIZE),
            "(datetime.datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.timezone.utc), \
             datetime.datetime(2024, 1, 2, 3, 4, 5), datetime.date(2024, 1, 2), datetime.time(3, 4, 5, 123), \
             UUID('12345678-1234-5678-1234-567812345678'), Decimal('3.14'), b'abc', b'00ff6869', \
             datetime.datetime(2024, 1, 2, 3, 4, tzinfo=datetime.timezone(datetime.timedelta(seconds=7200))))"
        );
    }
}
