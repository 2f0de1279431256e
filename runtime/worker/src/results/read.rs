//! Results read back (`celery.chord_unlock` joins its header's results): the bytes a backend
//! stores, decoded into [`Value`]s. Celery 5.7 and celeriac store JSON; Celery ≤ 5.6 (and
//! celeriac for 5.6 clients) store `celery_taskmeta.result` as pickle, read here for the plain
//! Python types pickle carries without classes (numbers, text, bytes, containers).

use celeriac_protocol::{json, Map, Value};

/// One task's stored state and its decoded result.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StoredResult {
    /// `SUCCESS`, `FAILURE`, …
    pub status: String,
    /// The result value (for failures, the exception dict), or why it cannot be read.
    pub value: Result<Value, String>,
}

impl StoredResult {
    /// Whether the task is done (Celery's `READY_STATES`).
    pub(crate) fn ready(&self) -> bool {
        matches!(self.status.as_str(), "SUCCESS" | "FAILURE" | "REVOKED")
    }
}

/// A value from the bytes of a result column: JSON, else pickle.
pub(crate) fn decode_value(bytes: &[u8]) -> Result<Value, String> {
    match json::from_slice(bytes) {
        Ok(v) => Ok(v),
        Err(_) if bytes.first() == Some(&0x80) => {
            let options = serde_pickle::DeOptions::new().decode_strings();
            let v = serde_pickle::value_from_slice(bytes, options).map_err(|e| format!("cannot unpickle: {e}"))?;
            from_pickle(v)
        }
        Err(e) => Err(format!("neither JSON nor pickle: {e}")),
    }
}

fn from_pickle(v: serde_pickle::Value) -> Result<Value, String> {
    use serde_pickle::Value as P;
    Ok(match v {
        P::None => Value::Null,
        P::Bool(b) => Value::Bool(b),
        P::I64(i) => Value::Int(i),
        P::Int(big) => Value::BigInt(big.to_string()),
        P::F64(f) => Value::Float(f),
        P::Bytes(b) => Value::Bytes(b),
        P::String(s) => Value::Str(s),
        P::List(items) | P::Tuple(items) => Value::List(items.into_iter().map(from_pickle).collect::<Result<_, _>>()?),
        P::Set(items) | P::FrozenSet(items) => {
            Value::List(items.into_iter().map(|k| from_pickle(hashable(k))).collect::<Result<_, _>>()?)
        }
        P::Dict(entries) => {
            let mut m = Map::with_capacity(entries.len());
            for (k, v) in entries {
                let key = match hashable(k) {
                    P::String(s) => s,
                    P::I64(i) => i.to_string(),
                    other => return Err(format!("a dict key that is not text: {other:?}")),
                };
                m.insert(key, from_pickle(v)?);
            }
            Value::Map(m)
        }
    })
}

fn hashable(k: serde_pickle::HashableValue) -> serde_pickle::Value {
    use serde_pickle::{HashableValue as H, Value as P};
    match k {
        H::None => P::None,
        H::Bool(b) => P::Bool(b),
        H::I64(i) => P::I64(i),
        H::Int(i) => P::Int(i),
        H::F64(f) => P::F64(f),
        H::Bytes(b) => P::Bytes(b),
        H::String(s) => P::String(s),
        H::Tuple(items) => P::Tuple(items.into_iter().map(hashable).collect()),
        H::FrozenSet(items) => P::FrozenSet(items),
    }
}

/// A key-value backend's meta dict (Redis): its status and result.
pub(crate) fn decode_meta(bytes: &[u8]) -> StoredResult {
    match json::from_slice(bytes) {
        Ok(Value::Map(mut m)) => StoredResult {
            status: m.get("status").and_then(Value::as_str).unwrap_or("PENDING").to_owned(),
            value: Ok(m.shift_remove("result").unwrap_or_default()),
        },
        Ok(_) => StoredResult { status: "PENDING".into(), value: Err("the meta is not a dict".into()) },
        Err(e) => StoredResult { status: "PENDING".into(), value: Err(format!("the meta is not JSON: {e}")) },
    }
}

/// A chord part recorded in Redis, `[1, task id, state, result]` (JSON): the task id and its
/// state.
pub(crate) fn decode_part(bytes: &[u8]) -> (String, StoredResult) {
    let unreadable = |why: String| ("?".to_owned(), StoredResult { status: "PENDING".into(), value: Err(why) });
    match json::from_slice(bytes) {
        Ok(Value::List(mut items)) if items.len() == 4 => {
            let result = items.pop().unwrap_or_default();
            let status = items.pop().and_then(|s| s.as_str().map(str::to_owned)).unwrap_or_else(|| "PENDING".into());
            let id = items.pop().and_then(|s| s.as_str().map(str::to_owned)).unwrap_or_else(|| "?".into());
            (id, StoredResult { status, value: Ok(result) })
        }
        Ok(_) => unreadable("a chord part that is not [1, id, state, result]".into()),
        Err(e) => unreadable(format!("a chord part that is not JSON: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use celeriac_protocol::pickle;

    use super::*;

    #[test]
    fn values_written_as_pickle_or_json_read_back() {
        let nested = Value::List(vec![Value::Int(1), Value::BigInt("1267650600228229401496703205376".into()), {
            let mut m = Map::new();
            m.insert("k".into(), Value::Str("v".into()));
            Value::Map(m)
        }]);
        assert_eq!(decode_value(&pickle::dumps(&nested)).unwrap(), nested);
        assert_eq!(decode_value(b"[1, 2]").unwrap(), Value::List(vec![Value::Int(1), Value::Int(2)]));
        assert!(decode_value(b"\x00nope").is_err());
        let failure = pickle::dumps_exception("ValueError", "builtins", &[Value::Str("bad".into())]);
        let Value::Map(m) = decode_value(&failure).unwrap() else { panic!() };
        assert_eq!(m["exc_message"], Value::List(vec![Value::Str("bad".into())]));
        let meta = decode_meta(br#"{"status": "SUCCESS", "result": 4}"#);
        assert!(meta.ready());
        assert_eq!(meta.value, Ok(Value::Int(4)));
    }
}
