//! Bodies serialized with `msgpack` (kombu's `application/x-msgpack`: `packb(use_bin_type=True)`),
//! read into [`Value`]s. Nesting is bounded by [`crate::json::MAX_DEPTH`], as for JSON.

use crate::value::{Map, Value};

/// Reads one msgpack document.
///
/// # Errors
/// A description of what is malformed or not representable (extension types, non-string keys
/// other than integers, invalid UTF-8 in strings, trailing bytes).
pub fn from_slice(bytes: &[u8]) -> Result<Value, String> {
    let mut reader = bytes;
    let value =
        rmpv::decode::read_value_with_max_depth(&mut reader, crate::json::MAX_DEPTH).map_err(|e| e.to_string())?;
    if !reader.is_empty() {
        return Err(format!("{} trailing bytes after the msgpack document", reader.len()));
    }
    convert(value)
}

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
            let mut map = Map::with_capacity(entries.len());
            for (k, v) in entries {
                // Python dicts with integer keys come back with string keys from JSON too.
                let key = match k {
                    rmpv::Value::String(s) => s.into_str().ok_or("map key is not valid UTF-8")?,
                    rmpv::Value::Integer(i) => i.to_string(),
                    other => return Err(format!("map key of unsupported type {other:?}")),
                };
                map.insert(key, convert(v)?);
            }
            Value::Map(map)
        }
        rmpv::Value::Ext(kind, _) => return Err(format!("msgpack extension type {kind} is not supported")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kombu_msgpack_bodies() {
        // packb([[2, 2], {}, {"callbacks": None}], use_bin_type=True)
        let bytes =
            [0x93, 0x92, 0x02, 0x02, 0x80, 0x81, 0xa9, b'c', b'a', b'l', b'l', b'b', b'a', b'c', b'k', b's', 0xc0];
        let v = from_slice(&bytes).unwrap();
        assert_eq!(crate::json::to_string(&v), r#"[[2, 2], {}, {"callbacks": null}]"#);
        assert!(from_slice(&[0x92, 0x01]).is_err(), "truncated");
        assert!(from_slice(&[0x01, 0x02]).is_err(), "trailing bytes");
        let deep: Vec<u8> = std::iter::repeat_n(0x91, 100_000).chain([0x01]).collect();
        assert!(from_slice(&deep).is_err(), "nesting is bounded");
    }
}
