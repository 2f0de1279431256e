//! Typed access to [`Value`]s through serde: `&Value` is a `serde::Deserializer`.
//!
//! Markers read as their natural Rust counterparts: datetimes, dates, times, uuids and decimals
//! as strings in Python's `isoformat`/text form (so `chrono::DateTime<Utc>`, `uuid::Uuid` and
//! `String` fields all work), bytes as byte buffers. Integers beyond 64 bits read into
//! `i128`/`u128` when they fit.

use serde::de::{
    self, value::BorrowedStrDeserializer, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor,
};

use crate::value::{marker_text, Map, Value};

/// A value that did not have the shape the Rust type expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Error(String);

impl de::Error for Error {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Error(msg.to_string())
    }
}

impl Value {
    /// Reads a typed Rust value out of this value (see [`crate::de`]).
    ///
    /// # Errors
    /// When the value does not have the shape `T` expects; the error names the mismatch.
    pub fn deserialize_into<T: de::DeserializeOwned>(&self) -> Result<T, Error> {
        T::deserialize(self)
    }
}

impl<'de> IntoDeserializer<'de, Error> for &'de Value {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

struct Seq<'de>(std::slice::Iter<'de, Value>);

impl<'de> SeqAccess<'de> for Seq<'de> {
    type Error = Error;
    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Error> {
        self.0.next().map(|v| seed.deserialize(v)).transpose()
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

struct Entries<'de> {
    iter: indexmap::map::Iter<'de, String, Value>,
    pending: Option<&'de Value>,
}

impl<'de> MapAccess<'de> for Entries<'de> {
    type Error = Error;
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        match self.iter.next() {
            Some((k, v)) => {
                self.pending = Some(v);
                seed.deserialize(BorrowedStrDeserializer::new(k)).map(Some)
            }
            None => Ok(None),
        }
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let value = self.pending.take().ok_or_else(|| Error("value requested before key".into()))?;
        seed.deserialize(value)
    }
}

fn map_access(map: &Map) -> Entries<'_> {
    Entries { iter: map.iter(), pending: None }
}

/// Reads positional args (a list) into `T` without copying them.
///
/// # Errors
/// When the args do not have the shape `T` expects.
pub fn from_args<T: de::DeserializeOwned>(args: &[Value]) -> Result<T, Error> {
    T::deserialize(de::value::SeqAccessDeserializer::new(Seq(args.iter())))
}

/// Reads keyword args (an object) into `T` without copying them.
///
/// # Errors
/// When the kwargs do not have the shape `T` expects.
pub fn from_kwargs<T: de::DeserializeOwned>(kwargs: &Map) -> Result<T, Error> {
    T::deserialize(de::value::MapAccessDeserializer::new(map_access(kwargs)))
}

impl<'de> de::Deserializer<'de> for &'de Value {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Int(i) => visitor.visit_i64(*i),
            Value::BigInt(s) => {
                if let Ok(i) = s.parse::<i128>() {
                    visitor.visit_i128(i)
                } else if let Ok(u) = s.parse::<u128>() {
                    visitor.visit_u128(u)
                } else {
                    Err(Error(format!("integer {s} does not fit in 128 bits")))
                }
            }
            Value::Float(f) => visitor.visit_f64(*f),
            Value::Str(s) | Value::Decimal(s) => visitor.visit_borrowed_str(s),
            Value::List(items) => visitor.visit_seq(Seq(items.iter())),
            Value::Map(map) => visitor.visit_map(map_access(map)),
            Value::DateTime(_) | Value::NaiveDateTime(_) | Value::Date(_) | Value::Time(_) => {
                visitor.visit_string(marker_text(self).unwrap_or_default())
            }
            Value::Uuid(u) => visitor.visit_string(u.hyphenated().to_string()),
            Value::Bytes(b) => visitor.visit_borrowed_bytes(b),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self {
            Value::Str(s) => visitor.visit_enum(s.as_str().into_deserializer()),
            Value::Map(map) if map.len() == 1 => {
                let (variant, value) = map.iter().next().ok_or_else(|| Error("empty enum object".into()))?;
                visitor.visit_enum(EnumAccess { variant, value })
            }
            other => Err(Error(format!("expected an enum (string or one-key object), found {}", other.kind()))),
        }
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self {
            Value::Str(s) => visitor.visit_borrowed_bytes(s.as_bytes()),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_bytes(visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        unit unit_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

struct EnumAccess<'de> {
    variant: &'de str,
    value: &'de Value,
}

impl<'de> de::EnumAccess<'de> for EnumAccess<'de> {
    type Error = Error;
    type Variant = VariantAccess<'de>;
    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self::Variant), Error> {
        let variant = seed.deserialize(BorrowedStrDeserializer::<Error>::new(self.variant))?;
        Ok((variant, VariantAccess(self.value)))
    }
}

struct VariantAccess<'de>(&'de Value);

impl<'de> de::VariantAccess<'de> for VariantAccess<'de> {
    type Error = Error;
    fn unit_variant(self) -> Result<(), Error> {
        Ok(())
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(self.0)
    }
    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_any(self.0, visitor)
    }
    fn struct_variant<V: Visitor<'de>>(self, _fields: &'static [&'static str], visitor: V) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_any(self.0, visitor)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use crate::{json::from_slice, Value};

    #[derive(Debug, Deserialize, PartialEq)]
    struct Order {
        id: u32,
        note: Option<String>,
        when: chrono::DateTime<chrono::Utc>,
        tags: Vec<String>,
    }

    #[test]
    fn reads_typed_values() {
        let v = from_slice(br#"[2, "x", 2.5, null, 18446744073709551616]"#).unwrap();
        let t: (i64, String, f64, Option<i32>, u128) = v.deserialize_into().unwrap();
        assert_eq!(t, (2, "x".into(), 2.5, None, 18_446_744_073_709_551_616));

        let v = from_slice(
            br#"{"id": 7, "note": null, "when": {"__type__": "datetime", "__value__": "2024-01-02T03:04:05+00:00"}, "tags": ["a"]}"#,
        )
        .unwrap();
        let order: Order = v.deserialize_into().unwrap();
        assert_eq!(order.id, 7);
        assert_eq!(order.when.to_rfc3339(), "2024-01-02T03:04:05+00:00");
    }

    #[test]
    fn mismatches_are_errors() {
        let v = from_slice(br#"["not a number"]"#).unwrap();
        let err = v.deserialize_into::<(i64,)>().unwrap_err();
        assert!(err.to_string().contains("invalid type"), "{err}");
        let v = Value::BigInt("1".repeat(60));
        assert!(v.deserialize_into::<u64>().is_err());
    }
}
