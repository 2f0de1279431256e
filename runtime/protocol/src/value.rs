//! [`Value`]: the data model of a Celery message body as kombu's JSON serializer sees it.
//!
//! Python values travel as JSON with a few extensions that plain JSON libraries reject or lose:
//! integers beyond 64 bits, bare `NaN`/`Infinity`, and kombu's typed markers
//! `{"__type__": T, "__value__": V}` for datetime, date, time, uuid, decimal and bytes. `Value`
//! keeps all of them, and keeps map key order, so a message re-encoded by celeriac reads exactly as
//! the one Python wrote.
//!
//! Typed access goes through serde: `Value` implements `Deserializer` (see [`crate::de`]), so a
//! handler's `(i64, String)` or `#[derive(Deserialize)]` struct is read straight from the args.

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime};
use indexmap::IndexMap;

use crate::isoformat;

/// An ordered string-keyed map, as a Python `dict` decoded from JSON.
pub type Map = IndexMap<String, Value>;

/// One value of a Celery message (args, kwargs, headers, embed) in kombu's JSON model.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Value {
    /// `null` / `None`.
    #[default]
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer that fits in 64 bits.
    Int(i64),
    /// An integer beyond 64 bits, as its decimal digits with an optional leading `-`.
    BigInt(String),
    /// A float, including NaN and the infinities (written bare, as Python does).
    Float(f64),
    /// A string.
    Str(String),
    /// A list (Python tuples arrive as lists).
    List(Vec<Value>),
    /// An object with string keys, in wire order.
    Map(Map),
    /// kombu `datetime` marker with a UTC offset.
    DateTime(DateTime<FixedOffset>),
    /// kombu `datetime` marker without an offset (a naive Python datetime).
    NaiveDateTime(NaiveDateTime),
    /// kombu `date` marker.
    Date(NaiveDate),
    /// kombu `time` marker (naive).
    Time(NaiveTime),
    /// kombu `uuid` marker.
    Uuid(uuid::Uuid),
    /// kombu `decimal` marker, as the decimal's text (`Decimal(str)` reads it back).
    Decimal(String),
    /// kombu `bytes` (valid UTF-8) or `base64` marker.
    Bytes(Vec<u8>),
}

impl Value {
    /// The name of this value's kind, for error messages (`"list"`, `"string"`, …).
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "integer",
            Value::Float(_) => "float",
            Value::Str(_) => "string",
            Value::List(_) => "list",
            Value::Map(_) => "object",
            Value::DateTime(_) | Value::NaiveDateTime(_) => "datetime",
            Value::Date(_) => "date",
            Value::Time(_) => "time",
            Value::Uuid(_) => "uuid",
            Value::Decimal(_) => "decimal",
            Value::Bytes(_) => "bytes",
        }
    }

    /// The string, if this is a string.
    #[must_use]
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is an integer within 64 bits.
    #[must_use]
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The number as a float, if this is an integer or a float.
    #[must_use]
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            #[allow(clippy::cast_precision_loss)]
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            Value::BigInt(s) => s.parse().ok(),
            _ => None,
        }
    }

    /// The boolean, if this is a boolean.
    #[must_use]
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The map, if this is an object.
    #[must_use]
    pub fn as_map(&self) -> Option<&Map> {
        match self {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The items, if this is a list.
    #[must_use]
    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(l) => Some(l),
            _ => None,
        }
    }

    /// Whether this is `null`.
    #[must_use]
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// Builds a `Value` from any serde-serializable Rust value.
    ///
    /// Goes through `serde_json`, so integers above `u64::MAX` and non-finite floats are not
    /// representable this way (they become an error and `null` respectively); construct those
    /// variants directly.
    ///
    /// # Errors
    /// When `value`'s `Serialize` implementation fails (e.g. a map with non-string keys).
    pub fn from_serialize<T: serde::Serialize + ?Sized>(value: &T) -> Result<Value, serde_json::Error> {
        serde_json::to_value(value).map(Value::from)
    }
}

/// The `__value__` text of a datetime/date/time marker (Python's `isoformat()`), or `None` for
/// other values.
#[must_use]
pub fn marker_text(value: &Value) -> Option<String> {
    match value {
        Value::DateTime(dt) => Some(isoformat::python_isoformat(dt)),
        Value::NaiveDateTime(dt) => Some(isoformat::naive_datetime_isoformat(dt)),
        Value::Date(d) => Some(isoformat::date_isoformat(d)),
        Value::Time(t) => Some(isoformat::time_isoformat(t)),
        _ => None,
    }
}

impl From<serde_json::Value> for Value {
    fn from(v: serde_json::Value) -> Self {
        match v {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(b),
            serde_json::Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Value::Int(i)
                } else if let Some(u) = n.as_u64() {
                    Value::BigInt(u.to_string())
                } else {
                    Value::Float(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            serde_json::Value::String(s) => Value::Str(s),
            serde_json::Value::Array(a) => Value::List(a.into_iter().map(Value::from).collect()),
            serde_json::Value::Object(o) => Value::Map(o.into_iter().map(|(k, v)| (k, Value::from(v))).collect()),
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl From<f64> for Value {
    fn from(f: f64) -> Self {
        Value::Float(f)
    }
}

impl From<Vec<Value>> for Value {
    fn from(l: Vec<Value>) -> Self {
        Value::List(l)
    }
}

impl From<Map> for Value {
    fn from(m: Map) -> Self {
        Value::Map(m)
    }
}

impl serde::Serialize for Value {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self {
            Value::Null => serializer.serialize_none(),
            Value::Bool(b) => serializer.serialize_bool(*b),
            Value::Int(i) => serializer.serialize_i64(*i),
            Value::BigInt(s) => {
                if let Ok(i) = s.parse::<i128>() {
                    serializer.serialize_i128(i)
                } else if let Ok(u) = s.parse::<u128>() {
                    serializer.serialize_u128(u)
                } else {
                    serializer.serialize_str(s)
                }
            }
            Value::Float(f) => serializer.serialize_f64(*f),
            Value::Str(s) | Value::Decimal(s) => serializer.serialize_str(s),
            Value::List(l) => {
                let mut seq = serializer.serialize_seq(Some(l.len()))?;
                for item in l {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Value::Map(m) => {
                let mut map = serializer.serialize_map(Some(m.len()))?;
                for (k, v) in m {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
            Value::DateTime(_) | Value::NaiveDateTime(_) | Value::Date(_) | Value::Time(_) => {
                serializer.serialize_str(&marker_text(self).unwrap_or_default())
            }
            Value::Uuid(u) => serializer.serialize_str(&u.hyphenated().to_string()),
            Value::Bytes(b) => serializer.serialize_bytes(b),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> serde::de::Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or_else(|_| Value::BigInt(v.to_string()), Value::Int))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or_else(|_| Value::BigInt(v.to_string()), Value::Int))
    }
    fn visit_u128<E>(self, v: u128) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or_else(|_| Value::BigInt(v.to_string()), Value::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Bytes(v.to_vec()))
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        serde::Deserialize::deserialize(d)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::List(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some((k, v)) = access.next_entry::<String, Value>()? {
            map.insert(k, v);
        }
        Ok(Value::Map(map))
    }
}
