//! Encoded messages: built by celeriac-protocol's `encode_task` (the codec the worker decodes
//! with), or read from an envelope another producer (kombu) wrote.

use celeriac_protocol::{encode_task as protocol_encode, json, Expires, TaskOptions, Value};
use celeriac_store::NewMessage;
use chrono::{DateTime, FixedOffset, Utc};
use pyo3::{
    prelude::*,
    sync::PyOnceLock,
    types::{PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple},
};

use crate::{
    convert::{self, ConvertError},
    errors::EncodeError,
};

/// One message ready to enqueue: the envelope bytes plus the columns the queue table indexes.
#[pyclass(name = "Message", module = "celeriac._native", frozen)]
#[derive(Debug, Clone)]
pub struct Message {
    pub(crate) row: NewMessage,
}

/// `(queue, priority, eta, expires, task_name, task_id, payload)`.
type DbapiParams<'a, 'py> =
    (&'a str, i16, Option<String>, Option<String>, Option<&'a str>, Option<&'a str>, Bound<'py, PyBytes>);

fn iso(t: Option<DateTime<Utc>>) -> Option<String> {
    t.map(|t| json::python_isoformat(&t.fixed_offset()))
}

#[pymethods]
impl Message {
    /// The task id (`headers.id`), or None for an envelope that could not be read.
    #[getter]
    fn task_id(&self) -> Option<&str> {
        self.row.task_id.as_deref()
    }

    /// The task name (`headers.task`), or None for an envelope that could not be read.
    #[getter]
    fn task_name(&self) -> Option<&str> {
        self.row.task_name.as_deref()
    }

    /// The queue it goes to.
    #[getter]
    fn queue(&self) -> &str {
        &self.row.queue
    }

    /// Its priority (higher runs first).
    #[getter]
    fn priority(&self) -> i16 {
        self.row.priority
    }

    /// Not before this time (ISO 8601, UTC), or None for "now".
    #[getter]
    fn eta(&self) -> Option<String> {
        iso(self.row.eta)
    }

    /// Discarded as revoked after this time (ISO 8601, UTC), or None.
    #[getter]
    fn expires(&self) -> Option<String> {
        iso(self.row.expires)
    }

    /// The envelope, byte for byte what is stored and what a worker decodes.
    #[getter]
    fn payload<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.row.payload)
    }

    /// The seven parameters of `MESSAGE_INSERT_SQL`, for a DB-API cursor.
    fn dbapi_params<'py>(&self, py: Python<'py>) -> DbapiParams<'_, 'py> {
        (
            &self.row.queue,
            self.row.priority,
            self.eta(),
            self.expires(),
            self.row.task_name.as_deref(),
            self.row.task_id.as_deref(),
            self.payload(py),
        )
    }

    fn __repr__(&self) -> String {
        format!(
            "<Message {} {} queue={:?}>",
            self.row.task_name.as_deref().unwrap_or("?"),
            self.row.task_id.as_deref().unwrap_or("?"),
            self.row.queue
        )
    }
}

fn encode_error(what: &str, e: &ConvertError) -> PyErr {
    EncodeError::new_err(e.describe(what))
}

/// A Python exception raised while reading a value (a failing `__json__`, a lone surrogate)
/// becomes an EncodeError that names it.
fn wrap(what: &str, e: PyErr, py: Python<'_>) -> PyErr {
    let err = EncodeError::new_err(format!("{what}: {e}"));
    err.set_cause(py, Some(e));
    err
}

/// Python's datetime as an aware time; naive means UTC (Celery's protocol says so).
fn aware(what: &str, obj: &Bound<'_, PyAny>) -> PyResult<DateTime<FixedOffset>> {
    let py = obj.py();
    match convert::to_value(obj).map_err(|e| wrap(what, e, py))? {
        Ok(Value::DateTime(t)) => Ok(t),
        Ok(Value::NaiveDateTime(t)) => Ok(t.and_utc().fixed_offset()),
        Ok(other) => Err(EncodeError::new_err(format!("{what} must be a datetime, not {}", other.kind()))),
        Err(e) => Err(encode_error(what, &e)),
    }
}

fn seconds(what: &str, obj: &Bound<'_, PyAny>) -> PyResult<f64> {
    if obj.is_instance_of::<PyInt>() || obj.is_instance_of::<PyFloat>() {
        obj.extract::<f64>()
    } else {
        Err(EncodeError::new_err(format!(
            "{what} must be a number of seconds, not {}",
            obj.get_type().name().map_or_else(|_| "?".to_owned(), |n| n.to_string())
        )))
    }
}

/// Encodes one task message exactly as Celery's `apply_async` would (protocol 2, JSON body,
/// virtual-transport envelope). Raises `EncodeError` for anything it cannot encode; nothing is
/// sent.
#[pyfunction]
#[pyo3(signature = (
    name, args=None, kwargs=None, *, queue="celery", countdown=None, eta=None, expires=None, priority=None,
    task_id=None, headers=None, time_limit=None, soft_time_limit=None, ignore_result=false, shadow=None,
    retries=0, parent_id=None, root_id=None, origin="celeriac", reply_to=None, serializer="json"
))]
#[allow(clippy::too_many_arguments)]
pub fn encode_task(
    py: Python<'_>,
    name: &str,
    args: Option<&Bound<'_, PyAny>>,
    kwargs: Option<&Bound<'_, PyAny>>,
    queue: &str,
    countdown: Option<&Bound<'_, PyAny>>,
    eta: Option<&Bound<'_, PyAny>>,
    expires: Option<&Bound<'_, PyAny>>,
    priority: Option<i64>,
    task_id: Option<String>,
    headers: Option<&Bound<'_, PyAny>>,
    time_limit: Option<&Bound<'_, PyAny>>,
    soft_time_limit: Option<&Bound<'_, PyAny>>,
    ignore_result: bool,
    shadow: Option<String>,
    retries: i64,
    parent_id: Option<String>,
    root_id: Option<String>,
    origin: &str,
    reply_to: Option<String>,
    serializer: &str,
) -> PyResult<Message> {
    if serializer != "json" {
        return Err(EncodeError::new_err(format!(
            "unknown or unsupported serializer {serializer:?}: celeriac encodes messages with \"json\" \
             (kombu's JSON, with its datetime/UUID/Decimal/bytes markers)"
        )));
    }
    let Call { args, kwargs, reprs } = call(py, args, kwargs)?;
    let (argsrepr, kwargsrepr) = reprs.unzip();
    let headers = match headers {
        None => celeriac_protocol::Map::new(),
        Some(h) => convert::to_map(h).map_err(|e| wrap("headers", e, py))?.map_err(|e| encode_error("headers", &e))?,
    };
    let expires = match expires {
        None => None,
        Some(x) if x.is_none() => None,
        Some(x) if x.is_instance_of::<PyInt>() || x.is_instance_of::<PyFloat>() => {
            Some(Expires::After(seconds("expires", x)?))
        }
        Some(x) => Some(Expires::At(aware("expires", x)?)),
    };
    let optional_seconds = |what: &str, v: Option<&Bound<'_, PyAny>>| -> PyResult<Option<f64>> {
        match v {
            Some(v) if !v.is_none() => seconds(what, v).map(Some),
            _ => Ok(None),
        }
    };
    let options = TaskOptions {
        task_id,
        queue: queue.to_owned(),
        countdown: optional_seconds("countdown", countdown)?,
        eta: match eta {
            Some(e) if !e.is_none() => Some(aware("eta", e)?),
            _ => None,
        },
        expires,
        priority,
        time_limit: optional_seconds("time_limit", time_limit)?,
        soft_time_limit: optional_seconds("soft_time_limit", soft_time_limit)?,
        ignore_result,
        shadow,
        headers,
        retries,
        parent_id,
        root_id,
        origin: origin.to_owned(),
        reply_to,
        argsrepr,
        kwargsrepr,
        embed: celeriac_protocol::Map::new(),
    };
    let encoded =
        protocol_encode(name, &args, &kwargs, &options, Utc::now()).map_err(|e| EncodeError::new_err(e.to_string()))?;
    Ok(Message { row: encoded.into() })
}

/// A message for an envelope another producer wrote (kombu's virtual-transport JSON), stored
/// unchanged. The queue, priority, eta, expiry, task name and id are read from it; an envelope
/// that cannot be read is still stored (queue `celery` unless `delivery_info` names one) so the
/// worker dead-letters it with its reason rather than it being lost here.
/// `queue`, when given, is where it goes regardless of its `delivery_info` (kombu resolves
/// exchange bindings before it hands a message to a transport).
#[pyfunction]
#[pyo3(signature = (payload, queue=None))]
pub fn message_from_envelope(payload: &[u8], queue: Option<String>) -> Message {
    let mut row = NewMessage::from_envelope(payload.to_vec());
    if let Some(queue) = queue.filter(|q| !q.is_empty()) {
        row.queue = queue;
    }
    Message { row }
}

/// Encodes the simple items of `send_many` in one call: a tuple `(name,)`, `(name, args)` or
/// `(name, args, kwargs)` whose args is a tuple and whose values are plain (see
/// `convert::plain_value`), with default options. Returns, per item, its message, or None for
/// anything else (options, other types, values the general path must check or render), which
/// the caller encodes one by one with `encode_task`.
#[pyfunction]
pub fn encode_simple(
    items: &Bound<'_, PyList>,
    origin: &str,
    reply_to: Option<String>,
) -> PyResult<Vec<Option<Message>>> {
    let options = TaskOptions { origin: origin.to_owned(), reply_to, ..TaskOptions::default() };
    let now = Utc::now();
    let mut out = Vec::with_capacity(items.len());
    for item in items.iter() {
        out.push(simple(&item)?.and_then(|(name, args, kwargs)| {
            protocol_encode(&name, &args, &kwargs, &options, now).ok().map(|e| Message { row: e.into() })
        }));
    }
    Ok(out)
}

type Simple = (String, Vec<Value>, celeriac_protocol::Map);

fn simple(item: &Bound<'_, PyAny>) -> PyResult<Option<Simple>> {
    if !item.is_exact_instance_of::<PyTuple>() {
        return Ok(None);
    }
    let item = item.cast::<PyTuple>()?;
    if item.is_empty() || item.len() > 3 {
        return Ok(None);
    }
    let name = item.get_item(0)?;
    if !name.is_exact_instance_of::<PyString>() {
        return Ok(None);
    }
    let Some((args, kwargs)) = plain_call(item.get_item(1).ok().as_ref(), item.get_item(2).ok().as_ref())? else {
        return Ok(None);
    };
    Ok(Some((name.cast::<PyString>()?.to_cow()?.into_owned(), args, kwargs)))
}

/// A task's arguments as the codec takes them, plus `(argsrepr, kwargsrepr)` when the codec's
/// own rendering (from the JSON values) would differ from Celery's.
struct Call {
    args: Vec<Value>,
    kwargs: celeriac_protocol::Map,
    reprs: Option<(String, String)>,
}

/// Converts `args` and `kwargs`. Plain ones (see [`plain_call`]) the codec renders exactly as
/// Celery's `saferepr`; for any other, the codec cannot tell a tuple from a list or `1` from
/// `"1"` as a key, so the reprs come from Celery's `saferepr` when Celery is installed.
fn call(py: Python<'_>, args: Option<&Bound<'_, PyAny>>, kwargs: Option<&Bound<'_, PyAny>>) -> PyResult<Call> {
    if let Some((args, kwargs)) = plain_call(args, kwargs)? {
        return Ok(Call { args, kwargs, reprs: None });
    }
    let converted_args = match args {
        None => Vec::new(),
        Some(a) => convert::to_args(a).map_err(|e| wrap("args", e, py))?.map_err(|e| encode_error("args", &e))?,
    };
    let converted_kwargs = match kwargs {
        None => celeriac_protocol::Map::new(),
        Some(k) => convert::to_map(k).map_err(|e| wrap("kwargs", e, py))?.map_err(|e| encode_error("kwargs", &e))?,
    };
    let reprs = match celery_saferepr(py) {
        Some(saferepr) => {
            let empty_args = PyTuple::empty(py).into_any();
            let empty_kwargs = PyDict::new(py).into_any();
            let render = |value: Option<&Bound<'_, PyAny>>, empty: &Bound<'_, PyAny>| -> PyResult<String> {
                let value = value.filter(|v| !v.is_none()).unwrap_or(empty);
                saferepr.bind(py).call1((value, REPR_MAX_SIZE))?.extract()
            };
            Some((render(args, &empty_args)?, render(kwargs, &empty_kwargs)?))
        }
        None => None,
    };
    Ok(Call { args: converted_args, kwargs: converted_kwargs, reprs })
}

/// `(args, kwargs)` when args is None or an exact tuple and both are made only of plain values
/// (`convert::plain_value`); `None` otherwise.
fn plain_call(
    args: Option<&Bound<'_, PyAny>>,
    kwargs: Option<&Bound<'_, PyAny>>,
) -> PyResult<Option<(Vec<Value>, celeriac_protocol::Map)>> {
    let args = match args {
        None => Vec::new(),
        Some(a) if a.is_none() => Vec::new(),
        Some(a) if a.is_exact_instance_of::<PyTuple>() => match convert::plain_items(a, 0)? {
            Some(items) => items,
            None => return Ok(None),
        },
        Some(_) => return Ok(None),
    };
    let kwargs = match kwargs {
        None => celeriac_protocol::Map::new(),
        Some(k) if k.is_none() => celeriac_protocol::Map::new(),
        Some(k) => match convert::plain_value(k, 0)? {
            Some(Value::Map(map)) => map,
            _ => return Ok(None),
        },
    };
    Ok(Some((args, kwargs)))
}

/// Celery's task protocol 2 `argsrepr_maxsize` / `kwargsrepr_maxsize`.
const REPR_MAX_SIZE: usize = 1024;

static SAFEREPR: PyOnceLock<Option<Py<PyAny>>> = PyOnceLock::new();

/// `celery.utils.saferepr.saferepr`, or None when Celery cannot be imported.
fn celery_saferepr(py: Python<'_>) -> Option<&Py<PyAny>> {
    SAFEREPR
        .get_or_init(py, || {
            py.import("celery.utils.saferepr").and_then(|m| m.getattr("saferepr")).ok().map(Bound::unbind)
        })
        .as_ref()
}
