//! Python `repr()` of [`Value`]s, for the `argsrepr`/`kwargsrepr` headers and for log lines
//! that read like Celery's.

use std::fmt::Write as _;

use crate::{
    json::{marker_text, python_float_repr},
    value::{Map, Value},
};

/// Celery's default `argsrepr_maxsize`/`kwargsrepr_maxsize`.
pub const REPR_MAX_SIZE: usize = 1024;

/// `repr(tuple(args))`, truncated to `max` characters the way `saferepr` ends a long repr.
#[must_use]
pub fn args_repr(args: &[Value], max: usize) -> String {
    let mut out = String::from("(");
    for (i, v) in args.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_repr(&mut out, v, 1);
    }
    if args.len() == 1 {
        out.push(',');
    }
    out.push(')');
    truncate(out, max)
}

/// `repr(kwargs)`, truncated like [`args_repr`].
#[must_use]
pub fn kwargs_repr(kwargs: &Map, max: usize) -> String {
    let mut out = String::new();
    write_map(&mut out, kwargs, 0);
    truncate(out, max)
}

/// `repr(value)`.
#[must_use]
pub fn repr(value: &Value) -> String {
    let mut out = String::new();
    write_repr(&mut out, value, 0);
    out
}

/// Containers nested this deep are shown as `[...]`/`{...}`, as Celery's `saferepr` does.
const MAX_LEVELS: usize = 3;

fn truncate(s: String, max: usize) -> String {
    if s.chars().count() <= max {
        return s;
    }
    let mut cut: String = s.chars().take(max.saturating_sub(3)).collect();
    cut.push_str("...");
    cut
}

fn write_str_repr(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    out.push(quote);
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

fn write_map(out: &mut String, map: &Map, depth: usize) {
    if depth >= MAX_LEVELS {
        out.push_str("{...}");
        return;
    }
    out.push('{');
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_str_repr(out, k);
        out.push_str(": ");
        write_repr(out, v, depth + 1);
    }
    out.push('}');
}

fn write_repr(out: &mut String, value: &Value, depth: usize) {
    match value {
        Value::Null => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::BigInt(s) => out.push_str(s),
        Value::Float(f) => out.push_str(&python_float_repr(*f)),
        Value::Str(s) => write_str_repr(out, s),
        Value::List(_) if depth >= MAX_LEVELS => out.push_str("[...]"),
        Value::List(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(out, v, depth + 1);
            }
            out.push(']');
        }
        Value::Map(map) => write_map(out, map, depth),
        Value::DateTime(_) | Value::NaiveDateTime(_) => {
            let _ = write!(out, "datetime.datetime.fromisoformat('{}')", marker_text(value).unwrap_or_default());
        }
        Value::Date(_) => {
            let _ = write!(out, "datetime.date.fromisoformat('{}')", marker_text(value).unwrap_or_default());
        }
        Value::Time(_) => {
            let _ = write!(out, "datetime.time.fromisoformat('{}')", marker_text(value).unwrap_or_default());
        }
        Value::Uuid(u) => {
            let _ = write!(out, "UUID('{}')", u.hyphenated());
        }
        Value::Decimal(s) => {
            let _ = write!(out, "Decimal('{s}')");
        }
        Value::Bytes(b) => {
            out.push_str("b'");
            for &byte in b {
                match byte {
                    b'\\' => out.push_str("\\\\"),
                    b'\'' => out.push_str("\\'"),
                    b'\n' => out.push_str("\\n"),
                    b'\r' => out.push_str("\\r"),
                    b'\t' => out.push_str("\\t"),
                    0x20..=0x7e => out.push(char::from(byte)),
                    _ => {
                        let _ = write!(out, "\\x{byte:02x}");
                    }
                }
            }
            out.push('\'');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::from_slice;

    #[test]
    fn matches_python_repr() {
        let args = from_slice(br#"[2, "it's", "x", 1.0, null, true, [1], {"a": "b\n"}]"#).unwrap();
        assert_eq!(
            args_repr(args.as_list().unwrap(), REPR_MAX_SIZE),
            r#"(2, "it's", 'x', 1.0, None, True, [1], {'a': 'b\n'})"#
        );
        assert_eq!(args_repr(&[Value::Int(1)], REPR_MAX_SIZE), "(1,)");
        assert_eq!(args_repr(&[], REPR_MAX_SIZE), "()");
        assert_eq!(kwargs_repr(&Map::new(), REPR_MAX_SIZE), "{}");
        let long = args_repr(&[Value::Str("x".repeat(2000))], REPR_MAX_SIZE);
        assert_eq!(long.chars().count(), REPR_MAX_SIZE);
        assert!(long.ends_with("..."));
    }
}
