//! Python values to celeriac-protocol values, as kombu's JSON serializer sees them.
//!
//! The rules are `json.dumps(obj, cls=kombu.utils.json.JSONEncoder)`'s: dicts (keys str, int,
//! float, bool or None), lists and tuples, str, int (any size), float (NaN and the infinities
//! included), bool and None natively; then, in kombu's order, an object's `__json__()`, Django's
//! lazy strings, datetime, date, time, Decimal, UUID and bytes as `__type__` markers. Anything
//! else is an error naming where in the value it sits, raised before anything is written.

use celeriac_protocol::{json, Map, Value};
use pyo3::{
    prelude::*,
    sync::PyOnceLock,
    types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple, PyType},
};

/// Deeper than this is almost surely a cycle; Python's own encoder stops at its recursion limit.
const MAX_DEPTH: usize = 200;

/// Why a value cannot be encoded, and where (`args[1]["when"]`).
#[derive(Debug)]
pub struct ConvertError {
    path: Vec<String>,
    problem: String,
}

impl ConvertError {
    fn new(problem: impl Into<String>) -> Self {
        ConvertError { path: Vec::new(), problem: problem.into() }
    }

    fn at(mut self, segment: String) -> Self {
        self.path.push(segment);
        self
    }

    /// The message, led by the path from `root` (e.g. `args[0]: …`).
    pub fn describe(&self, root: &str) -> String {
        let mut path = root.to_owned();
        for segment in self.path.iter().rev() {
            path.push_str(segment);
        }
        format!("{path}: {}", self.problem)
    }
}

/// The classes kombu's encoder checks with `isinstance`, looked up once per interpreter.
struct Types {
    datetime: Py<PyType>,
    date: Py<PyType>,
    time: Py<PyType>,
    decimal: Py<PyType>,
    uuid: Py<PyType>,
    django_promise: Option<Py<PyType>>,
}

static TYPES: PyOnceLock<Types> = PyOnceLock::new();

fn types(py: Python<'_>) -> PyResult<&Types> {
    TYPES.get_or_try_init(py, || {
        let class = |module: &str, name: &str| -> PyResult<Py<PyType>> {
            Ok(py.import(module)?.getattr(name)?.cast_into::<PyType>()?.unbind())
        };
        // Only if Django is already loaded: importing it here would be a side effect.
        let django_promise = match py.import("sys")?.getattr("modules")?.get_item("django.utils.functional") {
            Ok(module) => Some(module.getattr("Promise")?.cast_into::<PyType>()?.unbind()),
            Err(_) => None,
        };
        Ok(Types {
            datetime: class("datetime", "datetime")?,
            date: class("datetime", "date")?,
            time: class("datetime", "time")?,
            decimal: class("decimal", "Decimal")?,
            uuid: class("uuid", "UUID")?,
            django_promise,
        })
    })
}

/// Converts `obj` for the JSON serializer.
///
/// # Errors
/// A [`ConvertError`] for values JSON cannot carry; a Python error raised while converting (by
/// a `__json__` method, say) is returned as such.
pub fn to_value(obj: &Bound<'_, PyAny>) -> PyResult<Result<Value, ConvertError>> {
    let types = types(obj.py())?;
    convert(obj, types, 0)
}

/// A sequence (list or tuple) of positional arguments.
///
/// # Errors
/// As [`to_value`]; a non-sequence is a [`ConvertError`].
pub fn to_args(obj: &Bound<'_, PyAny>) -> PyResult<Result<Vec<Value>, ConvertError>> {
    if obj.is_none() {
        return Ok(Ok(Vec::new()));
    }
    if obj.is_instance_of::<PyString>() || obj.is_instance_of::<PyDict>() {
        return Ok(Err(ConvertError::new(format!("must be a list or tuple, not {}", type_name(obj)))));
    }
    match to_value(obj)? {
        Ok(Value::List(items)) => Ok(Ok(items)),
        Ok(_) => Ok(Err(ConvertError::new(format!("must be a list or tuple, not {}", type_name(obj))))),
        Err(e) => Ok(Err(e)),
    }
}

/// A mapping with string keys (keyword arguments, headers).
///
/// # Errors
/// As [`to_value`]; a non-dict is a [`ConvertError`].
pub fn to_map(obj: &Bound<'_, PyAny>) -> PyResult<Result<Map, ConvertError>> {
    if obj.is_none() {
        return Ok(Ok(Map::new()));
    }
    if !obj.is_instance_of::<PyDict>() {
        return Ok(Err(ConvertError::new(format!("must be a dict, not {}", type_name(obj)))));
    }
    match to_value(obj)? {
        Ok(Value::Map(map)) => Ok(Ok(map)),
        Ok(_) => Ok(Err(ConvertError::new(format!("must be a dict, not {}", type_name(obj))))),
        Err(e) => Ok(Err(e)),
    }
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type().name().map_or_else(|_| "?".to_owned(), |n| n.to_string())
}

fn convert(obj: &Bound<'_, PyAny>, types: &Types, depth: usize) -> PyResult<Result<Value, ConvertError>> {
    if depth > MAX_DEPTH {
        return Ok(Err(ConvertError::new(format!("nested more than {MAX_DEPTH} levels deep (a cycle?)"))));
    }
    let py = obj.py();
    // JSON's own types first, exactly as json.dumps checks them (subclasses included).
    if obj.is_none() {
        return Ok(Ok(Value::Null));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Ok(Value::Str(s.to_cow()?.into_owned())));
    }
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(Ok(Value::Bool(b.is_true())));
    }
    if obj.is_instance_of::<PyInt>() {
        return Ok(Ok(match obj.extract::<i64>() {
            Ok(i) => Value::Int(i),
            // int.__repr__, not the subclass's __str__ (json.dumps does the same).
            Err(_) => Value::BigInt(py.get_type::<PyInt>().call_method1("__repr__", (obj,))?.extract::<String>()?),
        }));
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        return Ok(Ok(Value::Float(f.value())));
    }
    if let Ok(dict) = obj.cast::<PyDict>() {
        let mut map = Map::with_capacity(dict.len());
        for (key, item) in dict.iter() {
            let key = match dict_key(&key)? {
                Ok(k) => k,
                Err(e) => return Ok(Err(e)),
            };
            match convert(&item, types, depth + 1)? {
                Ok(v) => {
                    map.insert(key, v);
                }
                Err(e) => return Ok(Err(e.at(format!("[{}]", json::to_string(&Value::Str(key)))))),
            }
        }
        return Ok(Ok(Value::Map(map)));
    }
    if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
        let mut items = Vec::with_capacity(obj.len()?);
        for (i, item) in obj.try_iter()?.enumerate() {
            match convert(&item?, types, depth + 1)? {
                Ok(v) => items.push(v),
                Err(e) => return Ok(Err(e.at(format!("[{i}]")))),
            }
        }
        return Ok(Ok(Value::List(items)));
    }
    // kombu's JSONEncoder.default, in its order.
    if let Ok(reducer) = obj.getattr("__json__") {
        let reduced = reducer.call0()?;
        return convert(&reduced, types, depth + 1);
    }
    if let Some(promise) = &types.django_promise {
        if obj.is_instance(promise.bind(py))? {
            return Ok(Ok(Value::Str(obj.str()?.to_cow()?.into_owned())));
        }
    }
    if obj.is_instance(types.datetime.bind(py))? {
        let text: String = obj.call_method0("isoformat")?.extract()?;
        return Ok(json::parse_datetime(&text)
            .ok_or_else(|| ConvertError::new(format!("datetime {text:?} has a UTC offset with seconds"))));
    }
    if obj.is_instance(types.date.bind(py))? {
        let text: String = obj.call_method0("isoformat")?.extract()?;
        return Ok(chrono::NaiveDate::parse_from_str(&text, "%Y-%m-%d")
            .map(Value::Date)
            .map_err(|_| ConvertError::new(format!("date {text:?} is outside years 1-9999"))));
    }
    if obj.is_instance(types.time.bind(py))? {
        if !obj.getattr("tzinfo")?.is_none() {
            return Ok(Err(ConvertError::new(
                "a time with a tzinfo is not supported by celeriac's codec yet; send a datetime, or the time \
                 without tzinfo",
            )));
        }
        let text: String = obj.call_method0("isoformat")?.extract()?;
        return Ok(chrono::NaiveTime::parse_from_str(&text, "%H:%M:%S%.f")
            .map(Value::Time)
            .map_err(|_| ConvertError::new(format!("time {text:?} could not be read"))));
    }
    if obj.is_instance(types.decimal.bind(py))? {
        return Ok(Ok(Value::Decimal(obj.str()?.to_cow()?.into_owned())));
    }
    if obj.is_instance(types.uuid.bind(py))? {
        let hex: String = obj.getattr("hex")?.extract()?;
        return Ok(uuid::Uuid::parse_str(&hex)
            .map(Value::Uuid)
            .map_err(|_| ConvertError::new(format!("UUID {hex:?} could not be read"))));
    }
    if let Ok(bytes) = obj.cast::<PyBytes>() {
        return Ok(Ok(Value::Bytes(bytes.as_bytes().to_vec())));
    }
    Ok(Err(ConvertError::new(format!("Object of type {} is not JSON serializable", type_name(obj)))))
}

/// A dict key as `json.dumps` writes it.
fn dict_key(key: &Bound<'_, PyAny>) -> PyResult<Result<String, ConvertError>> {
    if let Ok(s) = key.cast::<PyString>() {
        return Ok(Ok(s.to_cow()?.into_owned()));
    }
    if let Ok(b) = key.cast::<PyBool>() {
        return Ok(Ok(if b.is_true() { "true" } else { "false" }.to_owned()));
    }
    if key.is_none() {
        return Ok(Ok("null".to_owned()));
    }
    if key.is_instance_of::<PyInt>() {
        return Ok(Ok(key.py().get_type::<PyInt>().call_method1("__repr__", (key,))?.extract()?));
    }
    if let Ok(f) = key.cast::<PyFloat>() {
        let v = f.value();
        return Ok(Ok(if v.is_nan() {
            "NaN".to_owned()
        } else if v.is_infinite() {
            if v > 0.0 { "Infinity" } else { "-Infinity" }.to_owned()
        } else {
            json::python_float_repr(v)
        }));
    }
    Ok(Err(ConvertError::new(format!("keys must be str, int, float, bool or None, not {}", type_name(key)))))
}

/// The value when it is made only of exact `str`, `int`, `float`, `bool`, `None`, `list` and
/// `dict` with `str` keys: then the codec's `argsrepr`/`kwargsrepr` equal Celery's `saferepr`
/// of it. `None` otherwise (the caller takes the general path).
pub fn plain_value(obj: &Bound<'_, PyAny>, depth: usize) -> PyResult<Option<Value>> {
    if depth > MAX_DEPTH {
        return Ok(None);
    }
    if obj.is_none() {
        return Ok(Some(Value::Null));
    }
    if obj.is_exact_instance_of::<PyString>() {
        return Ok(Some(Value::Str(obj.cast::<PyString>()?.to_cow()?.into_owned())));
    }
    if obj.is_exact_instance_of::<PyBool>() {
        return Ok(Some(Value::Bool(obj.is_truthy()?)));
    }
    if obj.is_exact_instance_of::<PyInt>() {
        return Ok(obj.extract::<i64>().ok().map(Value::Int));
    }
    if obj.is_exact_instance_of::<PyFloat>() {
        return Ok(Some(Value::Float(obj.cast::<PyFloat>()?.value())));
    }
    if obj.is_exact_instance_of::<PyList>() {
        return plain_items(obj, depth).map(|items| items.map(Value::List));
    }
    if obj.is_exact_instance_of::<PyDict>() {
        let dict = obj.cast::<PyDict>()?;
        let mut map = Map::with_capacity(dict.len());
        for (key, item) in dict.iter() {
            if !key.is_exact_instance_of::<PyString>() {
                return Ok(None);
            }
            let Some(value) = plain_value(&item, depth + 1)? else { return Ok(None) };
            map.insert(key.cast::<PyString>()?.to_cow()?.into_owned(), value);
        }
        return Ok(Some(Value::Map(map)));
    }
    Ok(None)
}

/// The items of a list or tuple, each [`plain_value`], or `None`.
pub fn plain_items(obj: &Bound<'_, PyAny>, depth: usize) -> PyResult<Option<Vec<Value>>> {
    let mut items = Vec::with_capacity(obj.len()?);
    for item in obj.try_iter()? {
        match plain_value(&item?, depth + 1)? {
            Some(v) => items.push(v),
            None => return Ok(None),
        }
    }
    Ok(Some(items))
}
