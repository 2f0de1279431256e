//! Bodies serialized with `msgpack` (kombu's `application/x-msgpack`: `packb(use_bin_type=True)`),
//! read into [`Value`]s. Nesting is bounded by [`crate::json::MAX_DEPTH`], as for JSON, and the
//! decoded size by a [`Budget`]: lengths in the input are never trusted for allocation, so a
//! header claiming four billion elements costs nothing until the elements are there.

use crate::{
    json::MAX_DEPTH,
    limits::Budget,
    value::{Map, Value},
};

/// Reads one msgpack document, within the default [`Budget`].
///
/// # Errors
/// A description of what is malformed or not representable (extension types, non-string keys
/// other than integers, invalid UTF-8 in strings, trailing bytes), or of the limit crossed.
pub fn from_slice(bytes: &[u8]) -> Result<Value, String> {
    from_slice_with_budget(bytes, &mut Budget::default())
}

/// Reads one msgpack document, charging what it builds to `budget`.
///
/// # Errors
/// As [`from_slice`]; when the document is abandoned because it crossed the budget's limit,
/// [`Budget::exceeded`] is true afterwards.
pub fn from_slice_with_budget(bytes: &[u8], budget: &mut Budget) -> Result<Value, String> {
    let mut reader = Reader { input: bytes, pos: 0, budget };
    let value = reader.value(0)?;
    let rest = bytes.len() - reader.pos;
    if rest != 0 {
        return Err(format!("{rest} trailing bytes after the msgpack document"));
    }
    Ok(value)
}

struct Reader<'a, 'b> {
    input: &'a [u8],
    pos: usize,
    budget: &'b mut Budget,
}

impl<'a> Reader<'a, '_> {
    fn charge(&mut self, bytes: usize) -> Result<(), String> {
        if self.budget.charge(bytes) {
            Ok(())
        } else {
            Err(format!("decoded size exceeds the limit of {} bytes", self.budget.limit()))
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let input = self.input;
        let end = self.pos.checked_add(n).filter(|&end| end <= input.len()).ok_or_else(|| {
            format!("unexpected end of input: {n} bytes wanted at byte {}, {} left", self.pos, input.len() - self.pos)
        })?;
        let bytes = &input[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let bytes = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    /// A big-endian length of `N` bytes.
    fn len<const N: usize>(&mut self) -> Result<usize, String> {
        let bytes = self.array::<N>()?;
        let len = bytes.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        usize::try_from(len).map_err(|_| format!("length {len} does not fit in memory"))
    }

    fn string(&mut self, len: usize, what: &str) -> Result<String, String> {
        let bytes = self.take(len)?;
        self.charge(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} is not valid UTF-8"))
    }

    fn binary(&mut self, len: usize) -> Result<Value, String> {
        let bytes = self.take(len)?;
        self.charge(len)?;
        Ok(Value::Bytes(bytes.to_vec()))
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err(format!("nesting deeper than {MAX_DEPTH} levels"));
        }
        self.charge(Budget::NODE)?;
        // Only containers recurse; everything else is read in `scalar`, so that the frame of
        // each nesting level stays small.
        let marker = self.u8()?;
        let container = match marker {
            0x80..=0x8f => Some((false, usize::from(marker & 0x0f))),
            0x90..=0x9f => Some((true, usize::from(marker & 0x0f))),
            0xdc => Some((true, self.len::<2>()?)),
            0xdd => Some((true, self.len::<4>()?)),
            0xde => Some((false, self.len::<2>()?)),
            0xdf => Some((false, self.len::<4>()?)),
            _ => None,
        };
        match container {
            Some((true, len)) => self.list(len, depth),
            Some((false, len)) => self.map(len, depth),
            None => self.scalar(marker),
        }
    }

    #[inline(never)]
    fn scalar(&mut self, marker: u8) -> Result<Value, String> {
        Ok(match marker {
            0x00..=0x7f => Value::Int(i64::from(marker)),
            0xa0..=0xbf => Value::Str(self.string(usize::from(marker & 0x1f), "string")?),
            0xc0 => Value::Null,
            0xc2 => Value::Bool(false),
            0xc3 => Value::Bool(true),
            0xc4 => {
                let len = self.len::<1>()?;
                self.binary(len)?
            }
            0xc5 => {
                let len = self.len::<2>()?;
                self.binary(len)?
            }
            0xc6 => {
                let len = self.len::<4>()?;
                self.binary(len)?
            }
            0xc7..=0xc9 | 0xd4..=0xd8 => {
                let len = match marker {
                    0xc7 => self.len::<1>()?,
                    0xc8 => self.len::<2>()?,
                    0xc9 => self.len::<4>()?,
                    _ => 1 << (marker - 0xd4),
                };
                let kind = i8::from_be_bytes(self.array::<1>()?);
                self.take(len)?;
                return Err(format!("msgpack extension type {kind} is not supported"));
            }
            0xca => Value::Float(f64::from(f32::from_be_bytes(self.array()?))),
            0xcb => Value::Float(f64::from_be_bytes(self.array()?)),
            0xcc => Value::Int(i64::from(self.u8()?)),
            0xcd => Value::Int(i64::from(u16::from_be_bytes(self.array()?))),
            0xce => Value::Int(i64::from(u32::from_be_bytes(self.array()?))),
            0xcf => {
                let v = u64::from_be_bytes(self.array()?);
                match i64::try_from(v) {
                    Ok(i) => Value::Int(i),
                    Err(_) => {
                        let text = v.to_string();
                        self.charge(text.len())?;
                        Value::BigInt(text)
                    }
                }
            }
            0xd0 => Value::Int(i64::from(i8::from_be_bytes(self.array()?))),
            0xd1 => Value::Int(i64::from(i16::from_be_bytes(self.array()?))),
            0xd2 => Value::Int(i64::from(i32::from_be_bytes(self.array()?))),
            0xd3 => Value::Int(i64::from_be_bytes(self.array()?)),
            0xd9 => {
                let len = self.len::<1>()?;
                Value::Str(self.string(len, "string")?)
            }
            0xda => {
                let len = self.len::<2>()?;
                Value::Str(self.string(len, "string")?)
            }
            0xdb => {
                let len = self.len::<4>()?;
                Value::Str(self.string(len, "string")?)
            }
            0xe0..=0xff => Value::Int(i64::from(i8::from_be_bytes([marker]))),
            // 0xc1 is reserved; containers are read by `value`.
            _ => return Err(format!("unexpected msgpack marker {marker:#04x} at byte {}", self.pos - 1)),
        })
    }

    fn list(&mut self, len: usize, depth: usize) -> Result<Value, String> {
        // Grows as elements arrive: the declared length is not trusted.
        let mut items = Vec::new();
        for _ in 0..len {
            items.push(self.value(depth + 1)?);
        }
        Ok(Value::List(items))
    }

    fn map(&mut self, len: usize, depth: usize) -> Result<Value, String> {
        let mut map = Map::new();
        for _ in 0..len {
            self.charge(Budget::ENTRY)?;
            // Python dicts with integer keys come back with string keys from JSON too.
            let key = match self.value(depth + 1)? {
                Value::Str(s) => s,
                Value::Int(i) => i.to_string(),
                Value::BigInt(s) => s,
                other => return Err(format!("map key of unsupported type {}", other.kind())),
            };
            let value = self.value(depth + 1)?;
            map.insert(key, value);
        }
        Ok(Value::Map(map))
    }
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

    #[test]
    fn reads_every_marker() {
        let cases: &[(&[u8], &str)] = &[
            (&[0x7f], "127"),
            (&[0xe0], "-32"),
            (&[0xc2, 0xc3], ""),
            (&[0xcc, 0xff], "255"),
            (&[0xcd, 0x01, 0x00], "256"),
            (&[0xce, 0x00, 0x01, 0x00, 0x00], "65536"),
            (&[0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], "18446744073709551615"),
            (&[0xd0, 0x80], "-128"),
            (&[0xd1, 0x80, 0x00], "-32768"),
            (&[0xd2, 0x80, 0x00, 0x00, 0x00], "-2147483648"),
            (&[0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0], "-9223372036854775808"),
            (&[0xca, 0x3f, 0xc0, 0x00, 0x00], "1.5"),
            (&[0xcb, 0x40, 0x04, 0, 0, 0, 0, 0, 0], "2.5"),
            (&[0xd9, 0x01, b'x'], "\"x\""),
            (&[0xda, 0x00, 0x01, b'x'], "\"x\""),
            (&[0xdb, 0x00, 0x00, 0x00, 0x01, b'x'], "\"x\""),
            (&[0xc4, 0x01, 0xff], r#"{"__type__": "base64", "__value__": "/w=="}"#),
            (&[0xc5, 0x00, 0x01, b'a'], r#"{"__type__": "bytes", "__value__": "a"}"#),
            (&[0xc6, 0x00, 0x00, 0x00, 0x00], r#"{"__type__": "bytes", "__value__": ""}"#),
            (&[0xdc, 0x00, 0x02, 0x01, 0xc0], "[1, null]"),
            (&[0xdd, 0x00, 0x00, 0x00, 0x01, 0x01], "[1]"),
            (&[0xde, 0x00, 0x01, 0x05, 0xc3], r#"{"5": true}"#),
            (&[0xdf, 0x00, 0x00, 0x00, 0x01, 0xa1, b'k', 0x90], r#"{"k": []}"#),
        ];
        for (bytes, expected) in cases {
            match from_slice(bytes) {
                Ok(v) => assert_eq!(crate::json::to_string(&v), *expected, "{bytes:02x?}"),
                Err(e) => assert!(expected.is_empty(), "{bytes:02x?}: {e}"),
            }
        }
        assert_eq!(from_slice(&[0xc3]).unwrap(), Value::Bool(true));
        for bad in [
            &[0xc1][..],
            &[0xd4, 0x01, 0x00],
            &[0xc7, 0x01, 0x01, 0x00],
            &[0xa1, 0xff],
            &[0x81, 0xc0, 0xc0],
            &[0x81, 0xa1, 0xff, 0xc0],
            &[0xdb, 0xff, 0xff, 0xff, 0xff],
            &[0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0],
        ] {
            assert!(from_slice(bad).is_err(), "accepted {bad:02x?}");
        }
    }

    #[test]
    fn declared_lengths_are_not_trusted_and_size_is_budgeted() {
        // A map32 header claiming 4 billion entries, then one: an error, without allocating.
        let mut budget = Budget::default();
        assert!(from_slice_with_budget(&[0xdf, 0xff, 0xff, 0xff, 0xff, 0x01, 0x01], &mut budget).is_err());
        assert!(!budget.exceeded());
        // 1000 nils are 1000 values: within 100 KB, not within 10 KB.
        let mut bytes = vec![0xdc, 0x03, 0xe8];
        bytes.resize(3 + 1000, 0xc0);
        assert!(from_slice_with_budget(&bytes, &mut Budget::new(100_000)).is_ok());
        let mut budget = Budget::new(10_000);
        let err = from_slice_with_budget(&bytes, &mut budget).unwrap_err();
        assert!(budget.exceeded() && err.contains("exceeds the limit"), "{err}");
    }
}
