//! Celery task messages: the kombu envelope, protocol-v2 headers and the `[args, kwargs, embed]`
//! body, decoded from stored bytes and encoded exactly as Celery 5.7 builds them.
//!
//! Layers (see `shared/reference/celery-compat.md` §1):
//!
//! ```text
//! envelope JSON {"body", "content-encoding", "content-type", "headers", "properties"}
//!  └ body = base64(compress?(serialize([args, kwargs, embed])))
//! ```
//!
//! Decoding keeps the envelope's maps as they were ([`Envelope`]) next to a typed view
//! ([`TaskHeaders`]), so a message that is retried or dead-lettered is re-published with every
//! header the producer set, including ones celeriac does not know.

use std::io::Read as _;

use base64::Engine as _;
use chrono::{DateTime, Duration, FixedOffset, Utc};

use crate::{
    error::{DecodeError, EncodeError},
    json,
    limits::{Budget, Limits},
    pyrepr::{args_repr, kwargs_repr, REPR_MAX_SIZE},
    value::{Map, Value},
};

/// `application/json`, Celery's default serializer.
pub const CONTENT_TYPE_JSON: &str = "application/json";
/// `application/x-msgpack`, kombu's `msgpack` serializer.
pub const CONTENT_TYPE_MSGPACK: &str = "application/x-msgpack";
/// The queue Celery publishes to when none is given.
pub const DEFAULT_QUEUE: &str = "celery";
/// The largest body celeriac inflates from a compressed message by default (64 MiB; see
/// [`Limits::max_inflated_body`]).
pub const MAX_INFLATED_BODY: u64 = crate::limits::DEFAULT_MAX_INFLATED_BODY;

/// The content types a worker deserializes (Celery's `accept_content`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accept {
    content_types: Vec<String>,
}

impl Default for Accept {
    /// Celery's default: JSON only.
    fn default() -> Self {
        Accept { content_types: vec![CONTENT_TYPE_JSON.to_owned()] }
    }
}

impl Accept {
    /// Builds an accept list from serializer names (`json`, `pickle`, `msgpack`, `yaml`) or
    /// content types, as Celery's `accept_content` setting takes them.
    #[must_use]
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(names: I) -> Self {
        let content_types = names
            .into_iter()
            .map(|n| match n.as_ref().trim() {
                "json" => CONTENT_TYPE_JSON.to_owned(),
                "pickle" => "application/x-python-serialize".to_owned(),
                "msgpack" => "application/x-msgpack".to_owned(),
                "yaml" => "application/x-yaml".to_owned(),
                other => other.to_owned(),
            })
            .collect();
        Accept { content_types }
    }

    /// Whether messages of `content_type` may be deserialized. Raw bytes and text
    /// (`application/data`, `application/text`) are always allowed, as in kombu.
    #[must_use]
    pub fn allows(&self, content_type: &str) -> bool {
        matches!(content_type, "application/data" | "application/text")
            || self.content_types.iter().any(|c| c == content_type)
    }

    /// The accepted content types.
    #[must_use]
    pub fn content_types(&self) -> &[String] {
        &self.content_types
    }
}

/// The transport envelope as kombu's virtual transports store it.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// The body text: base64 when `properties.body_encoding` is `base64` (always, from kombu).
    pub body: String,
    /// `content-type`, e.g. `application/json`.
    pub content_type: String,
    /// `content-encoding`, e.g. `utf-8` or `binary`.
    pub content_encoding: String,
    /// Message headers: Celery's task metadata plus user headers.
    pub headers: Map,
    /// Message properties (`correlation_id`, `delivery_info`, `priority`, `body_encoding`, …).
    pub properties: Map,
    /// Other top-level keys, e.g. `redelivered` on copies kombu restored.
    pub extra: Map,
}

impl Envelope {
    /// Parses envelope JSON, within the default [`Limits`].
    ///
    /// # Errors
    /// When the bytes are not a JSON object or a required key has the wrong type.
    pub fn parse(payload: &[u8]) -> Result<Envelope, DecodeError> {
        Envelope::parse_with_limits(payload, &Limits::default())
    }

    /// Parses envelope JSON whose decoded values take at most `limits.max_decoded_size` bytes.
    ///
    /// # Errors
    /// As [`Envelope::parse`], or [`DecodeError::TooLarge`].
    pub fn parse_with_limits(payload: &[u8], limits: &Limits) -> Result<Envelope, DecodeError> {
        let mut budget = Budget::new(limits.max_decoded_size);
        let value = json::from_slice_with_budget(payload, &mut budget).map_err(|e| {
            if budget.exceeded() {
                DecodeError::TooLarge { part: "envelope", problem: e.message }
            } else {
                DecodeError::EnvelopeJson(e)
            }
        })?;
        let Value::Map(mut map) = value else {
            return Err(DecodeError::field("envelope", format!("expected a JSON object, found {}", value.kind())));
        };
        let body = match map.shift_remove("body") {
            Some(Value::Str(s)) => s,
            Some(other) => {
                return Err(DecodeError::field("body", format!("expected a string, found {}", other.kind())))
            }
            None => return Err(DecodeError::field("body", "missing")),
        };
        let content_type = take_string(&mut map, "content-type")?.unwrap_or_else(|| CONTENT_TYPE_JSON.to_owned());
        let content_encoding = take_string(&mut map, "content-encoding")?.unwrap_or_else(|| "utf-8".to_owned());
        let headers = take_map(&mut map, "headers")?;
        let properties = take_map(&mut map, "properties")?;
        Ok(Envelope { body, content_type, content_encoding, headers, properties, extra: map })
    }

    /// [`Envelope::parse`], then refuses a content type `accept` does not allow (Celery's
    /// `ContentDisallowed`).
    ///
    /// # Errors
    /// As [`Envelope::parse`], or [`DecodeError::ContentDisallowed`].
    pub fn parse_accepted(payload: &[u8], accept: &Accept) -> Result<Envelope, DecodeError> {
        Envelope::parse_accepted_with_limits(payload, accept, &Limits::default())
    }

    fn parse_accepted_with_limits(payload: &[u8], accept: &Accept, limits: &Limits) -> Result<Envelope, DecodeError> {
        let envelope = Envelope::parse_with_limits(payload, limits)?;
        if !accept.allows(&envelope.content_type) {
            return Err(DecodeError::ContentDisallowed {
                content_type: envelope.content_type,
                accepted: accept.content_types.join(", "),
            });
        }
        Ok(envelope)
    }

    /// Encodes the envelope as kombu's SQL transport does (`json.dumps`).
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        self.clone().into_bytes()
    }

    /// [`Envelope::to_bytes`], consuming the envelope (no copies of its parts).
    #[must_use]
    pub fn into_bytes(self) -> Vec<u8> {
        let size_hint = self.body.len() + 1024;
        let mut map = Map::with_capacity(5 + self.extra.len());
        map.insert("body".into(), Value::Str(self.body));
        map.insert("content-encoding".into(), Value::Str(self.content_encoding));
        map.insert("content-type".into(), Value::Str(self.content_type));
        map.insert("headers".into(), Value::Map(self.headers));
        map.insert("properties".into(), Value::Map(self.properties));
        map.extend(self.extra);
        json::to_vec_with_capacity(&Value::Map(map), size_hint)
    }

    /// The serialized body bytes: base64-decoded when the body encoding says so, then
    /// decompressed per `headers.compression` (at most [`MAX_INFLATED_BODY`] bytes).
    ///
    /// # Errors
    /// Bad base64, an unknown compression, a corrupt compressed stream, or
    /// [`DecodeError::TooLarge`] for one that inflates beyond the limit.
    pub fn body_bytes(&self) -> Result<Vec<u8>, DecodeError> {
        self.body_bytes_with_limits(&Limits::default())
    }

    /// [`Envelope::body_bytes`], inflating at most `limits.max_inflated_body` bytes.
    ///
    /// # Errors
    /// As [`Envelope::body_bytes`].
    pub fn body_bytes_with_limits(&self, limits: &Limits) -> Result<Vec<u8>, DecodeError> {
        let encoding = self.properties.get("body_encoding").and_then(Value::as_str);
        let raw = match encoding {
            Some("base64") => base64::engine::general_purpose::STANDARD
                .decode(self.body.as_bytes())
                .map_err(|e| DecodeError::BodyBase64(e.to_string()))?,
            _ => self.body.as_bytes().to_vec(),
        };
        match self.headers.get("compression") {
            None | Some(Value::Null) => Ok(raw),
            Some(Value::Str(c)) => decompress(c, &raw, limits.max_inflated_body),
            Some(other) => {
                Err(DecodeError::field("headers.compression", format!("expected a string, found {}", other.kind())))
            }
        }
    }

    /// The deserialized body, for the content types celeriac decodes natively (JSON with
    /// kombu's markers, msgpack), within `limits`: the inflated size of a compressed body and
    /// the decoded size of the value tree are both bounded. Does not check the accept list.
    ///
    /// # Errors
    /// As [`Envelope::body_bytes_with_limits`]; [`DecodeError::BodyJson`] or a `body` field
    /// error for a malformed body; [`DecodeError::TooLarge`];
    /// [`DecodeError::UnsupportedContentType`] for other content types.
    pub fn decode_body(&self, limits: &Limits) -> Result<Value, DecodeError> {
        let too_large = |problem: String| DecodeError::TooLarge { part: "body", problem };
        let mut budget = Budget::new(limits.max_decoded_size);
        match self.content_type.as_str() {
            CONTENT_TYPE_JSON => json::from_slice_with_budget(&self.body_bytes_with_limits(limits)?, &mut budget)
                .map_err(|e| if budget.exceeded() { too_large(e.message) } else { DecodeError::BodyJson(e) }),
            CONTENT_TYPE_MSGPACK => {
                crate::msgpack::from_slice_with_budget(&self.body_bytes_with_limits(limits)?, &mut budget).map_err(
                    |e| {
                        if budget.exceeded() {
                            too_large(e)
                        } else {
                            DecodeError::field("body", format!("invalid msgpack: {e}"))
                        }
                    },
                )
            }
            _ => Err(DecodeError::UnsupportedContentType(self.content_type.clone())),
        }
    }
}

fn take_string(map: &mut Map, key: &str) -> Result<Option<String>, DecodeError> {
    match map.shift_remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Str(s)) => Ok(Some(s)),
        Some(other) => Err(DecodeError::field(key, format!("expected a string, found {}", other.kind()))),
    }
}

fn take_map(map: &mut Map, key: &str) -> Result<Map, DecodeError> {
    match map.shift_remove(key) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Map(m)) => Ok(m),
        Some(other) => Err(DecodeError::field(key, format!("expected an object, found {}", other.kind()))),
    }
}

fn decompress(compression: &str, raw: &[u8], max_inflated: u64) -> Result<Vec<u8>, DecodeError> {
    match compression {
        "application/x-gzip" | "gzip" | "zlib" => {
            let mut out = Vec::new();
            flate2::read::ZlibDecoder::new(raw)
                .take(max_inflated.saturating_add(1))
                .read_to_end(&mut out)
                .map_err(|e| DecodeError::Decompress(e.to_string()))?;
            if out.len() as u64 > max_inflated {
                return Err(DecodeError::TooLarge {
                    part: "body",
                    problem: format!("inflates beyond the limit of {max_inflated} bytes"),
                });
            }
            Ok(out)
        }
        other => Err(DecodeError::UnsupportedCompression(other.to_owned())),
    }
}

/// `timelimit` = `[hard, soft]` seconds, as on the wire (the protocol doc's order is wrong).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TimeLimit {
    /// Hard limit in seconds: the task is stopped.
    pub hard: Option<f64>,
    /// Soft limit in seconds: the task is told (Python: `SoftTimeLimitExceeded`).
    pub soft: Option<f64>,
}

/// The typed view of a task message's protocol-v2 headers.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TaskHeaders {
    /// Registered task name (the dispatch key).
    pub task: String,
    /// Task id (result key).
    pub id: String,
    /// Id of the first task of the workflow.
    pub root_id: Option<String>,
    /// Id of the task that published this one.
    pub parent_id: Option<String>,
    /// Group id, when part of a group or chord header.
    pub group: Option<String>,
    /// Position inside the group.
    pub group_index: Option<i64>,
    /// Display name override for logs.
    pub shadow: Option<String>,
    /// Not before this time.
    pub eta: Option<DateTime<Utc>>,
    /// Discard (as revoked) after this time.
    pub expires: Option<DateTime<Utc>>,
    /// How many times the task was retried.
    pub retries: i64,
    /// Time limits.
    pub timelimit: TimeLimit,
    /// Whether the producer asked not to store a result.
    pub ignore_result: bool,
    /// `repr()` of the args, for logs.
    pub argsrepr: Option<String>,
    /// `repr()` of the kwargs, for logs.
    pub kwargsrepr: Option<String>,
    /// `gen<pid>@<host>` of the producer.
    pub origin: Option<String>,
}

/// The `embed` part of the body: what to do after the task.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Embed {
    /// Signatures to apply with the result on success (`link`).
    pub callbacks: Value,
    /// Signatures to apply on failure (`link_error`).
    pub errbacks: Value,
    /// Remaining chain, in reverse order (a stack).
    pub chain: Value,
    /// Chord body, on chord header tasks.
    pub chord: Value,
}

/// Where the message was delivered from, as `task.request.delivery_info` shows it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeliveryInfo {
    /// Exchange (`""` for Celery's direct publishing).
    pub exchange: String,
    /// Routing key, i.e. the queue for direct publishing.
    pub routing_key: String,
    /// Message priority.
    pub priority: Option<i64>,
    /// Whether this is a redelivery of a message that may have run before.
    pub redelivered: bool,
}

/// Which Celery protocol the message used. v1 (and the hybrid form) are converted to the v2 view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolVersion {
    /// Metadata in the body dict (Celery 3, `task_protocol=1`).
    V1,
    /// Metadata in the headers (Celery 4+ default).
    V2,
}

/// A decoded task message.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskMessage {
    /// The envelope as stored (maps kept as they were).
    pub envelope: Envelope,
    /// The protocol the producer used.
    pub protocol: ProtocolVersion,
    /// The typed headers.
    pub headers: TaskHeaders,
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map,
    /// Callbacks, errbacks, chain and chord.
    pub embed: Embed,
    /// Delivery info (exchange, routing key, priority; `redelivered` is set by the store).
    pub delivery_info: DeliveryInfo,
}

impl TaskMessage {
    /// A message known only by its task id (a revoke names no more): no name, no arguments.
    #[must_use]
    pub fn bare(id: &str) -> TaskMessage {
        TaskMessage {
            envelope: Envelope {
                body: String::new(),
                content_type: CONTENT_TYPE_JSON.to_owned(),
                content_encoding: "utf-8".to_owned(),
                headers: Map::new(),
                properties: Map::new(),
                extra: Map::new(),
            },
            protocol: ProtocolVersion::V2,
            headers: TaskHeaders { id: id.to_owned(), ..TaskHeaders::default() },
            args: Vec::new(),
            kwargs: Map::new(),
            embed: Embed::default(),
            delivery_info: DeliveryInfo::default(),
        }
    }

    /// Decodes a stored envelope into a task, enforcing `accept`, within the default
    /// [`Limits`].
    ///
    /// # Errors
    /// A [`DecodeError`] naming the field at fault; never panics on any input.
    pub fn decode(payload: &[u8], accept: &Accept) -> Result<TaskMessage, DecodeError> {
        TaskMessage::decode_with_limits(payload, accept, &Limits::default())
    }

    /// [`TaskMessage::decode`] within `limits`: the envelope and the body each decode to at
    /// most `limits.max_decoded_size` bytes of values, and a compressed body inflates to at
    /// most `limits.max_inflated_body` bytes.
    ///
    /// # Errors
    /// As [`TaskMessage::decode`]; [`DecodeError::TooLarge`] beyond the limits.
    pub fn decode_with_limits(payload: &[u8], accept: &Accept, limits: &Limits) -> Result<TaskMessage, DecodeError> {
        let envelope = Envelope::parse_accepted_with_limits(payload, accept, limits)?;
        let body = envelope.decode_body(limits)?;
        let delivery_info = delivery_info(&envelope.properties)?;
        if envelope.headers.contains_key("task") {
            let headers = parse_headers(&envelope.headers)?;
            let (args, kwargs, embed) = parse_v2_body(body)?;
            Ok(TaskMessage { envelope, protocol: ProtocolVersion::V2, headers, args, kwargs, embed, delivery_info })
        } else {
            let Value::Map(body) = body else {
                return Err(DecodeError::field(
                    "headers.task",
                    format!("missing (and the body is a {}, not a protocol-1 task dict)", body.kind()),
                ));
            };
            // Protocol 1 / hybrid: metadata lives in the body; message headers override it.
            let mut merged = body;
            for (k, v) in &envelope.headers {
                merged.insert(k.clone(), v.clone());
            }
            if !merged.contains_key("task") {
                return Err(DecodeError::field(
                    "headers.task",
                    "missing (neither in the headers nor in a protocol-1 body)",
                ));
            }
            let headers = parse_headers(&merged)?;
            // The merged dict is dropped below: its parts move out, they are not copied.
            let args = match merged.swap_remove("args") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::List(l)) => l,
                Some(other) => {
                    return Err(DecodeError::field("body.args", format!("expected a list, found {}", other.kind())))
                }
            };
            let kwargs = match merged.swap_remove("kwargs") {
                None | Some(Value::Null) => Map::new(),
                Some(Value::Map(m)) => m,
                Some(other) => {
                    return Err(DecodeError::field(
                        "body.kwargs",
                        format!("expected an object, found {}", other.kind()),
                    ))
                }
            };
            let mut get = |k: &str| merged.swap_remove(k).unwrap_or(Value::Null);
            let embed = Embed {
                callbacks: get("callbacks"),
                errbacks: get("errbacks"),
                chain: get("chain"),
                chord: get("chord"),
            };
            Ok(TaskMessage { envelope, protocol: ProtocolVersion::V1, headers, args, kwargs, embed, delivery_info })
        }
    }

    /// Decodes the envelope and the protocol-2 headers of a stored message, enforcing
    /// `accept`, without decoding the body: `args`, `kwargs` and `embed` are left empty. For
    /// handlers that decode the body themselves (embedded Python tasks, whose bodies may be
    /// pickle or YAML, which celeriac does not decode). Protocol-1 messages, whose task name is
    /// in the body, are refused with the error [`TaskMessage::decode`] gives.
    ///
    /// # Errors
    /// A [`DecodeError`] naming the field at fault; never panics on any input.
    pub fn decode_head(payload: &[u8], accept: &Accept) -> Result<TaskMessage, DecodeError> {
        TaskMessage::decode_head_with_limits(payload, accept, &Limits::default())
    }

    /// [`TaskMessage::decode_head`] within `limits` (the envelope decodes to at most
    /// `limits.max_decoded_size` bytes of values).
    ///
    /// # Errors
    /// As [`TaskMessage::decode_head`]; [`DecodeError::TooLarge`] beyond the limits.
    pub fn decode_head_with_limits(
        payload: &[u8],
        accept: &Accept,
        limits: &Limits,
    ) -> Result<TaskMessage, DecodeError> {
        let envelope = Envelope::parse_accepted_with_limits(payload, accept, limits)?;
        if !envelope.headers.contains_key("task") {
            return Err(DecodeError::UnsupportedContentType(envelope.content_type));
        }
        let delivery_info = delivery_info(&envelope.properties)?;
        let headers = parse_headers(&envelope.headers)?;
        Ok(TaskMessage {
            envelope,
            protocol: ProtocolVersion::V2,
            headers,
            args: Vec::new(),
            kwargs: Map::new(),
            embed: Embed::default(),
            delivery_info,
        })
    }

    /// Decodes the body of a message read by [`TaskMessage::decode_head`] into `args`, `kwargs`
    /// and `embed`, from the envelope already parsed, within `limits`: `decode_head` when the
    /// message is claimed, `decode_body` when it is about to run, and the envelope is parsed
    /// once. The result equals [`TaskMessage::decode_with_limits`] of the same payload. On an
    /// error the message is left as it was.
    ///
    /// # Errors
    /// As [`Envelope::decode_body`] (`UnsupportedContentType` for pickle or YAML bodies), or a
    /// body that is not `[args, kwargs, embed]`.
    pub fn decode_body(&mut self, limits: &Limits) -> Result<(), DecodeError> {
        if self.protocol != ProtocolVersion::V2 {
            // Protocol 1 bodies are decoded whole by `decode`; nothing is left to read.
            return Ok(());
        }
        let (args, kwargs, embed) = parse_v2_body(self.envelope.decode_body(limits)?)?;
        (self.args, self.kwargs, self.embed) = (args, kwargs, embed);
        Ok(())
    }

    /// The name to show in logs: `shadow` if set, else the task name.
    #[must_use]
    pub fn display_name(&self) -> &str {
        self.headers.shadow.as_deref().unwrap_or(&self.headers.task)
    }

    /// Builds the message Celery's `Task.retry` would publish: same id, `retries + 1`, the new
    /// `eta`, `parent_id` = this task, every other header, property and the body kept.
    #[must_use]
    pub fn to_retry(&self, eta: DateTime<Utc>) -> EncodedTask {
        let mut envelope = self.envelope.clone();
        envelope.extra.shift_remove("redelivered");
        let h = &mut envelope.headers;
        h.insert("retries".into(), Value::Int(self.headers.retries.saturating_add(1)));
        h.insert("eta".into(), Value::Str(json::python_isoformat(&eta.fixed_offset())));
        h.insert("parent_id".into(), Value::Str(self.headers.id.clone()));
        envelope.properties.insert("delivery_tag".into(), Value::Str(uuid::Uuid::new_v4().to_string()));
        EncodedTask {
            payload: envelope.to_bytes(),
            task_id: self.headers.id.clone(),
            task_name: self.headers.task.clone(),
            queue: self.delivery_info.routing_key.clone(),
            priority: self.delivery_info.priority.unwrap_or(0),
            eta: Some(eta),
            expires: self.headers.expires,
        }
    }
}

fn delivery_info(properties: &Map) -> Result<DeliveryInfo, DecodeError> {
    let mut info = DeliveryInfo::default();
    match properties.get("delivery_info") {
        None | Some(Value::Null) => {}
        Some(Value::Map(m)) => {
            info.exchange = opt_str(m, "exchange", "properties.delivery_info.exchange")?.unwrap_or_default();
            info.routing_key = opt_str(m, "routing_key", "properties.delivery_info.routing_key")?.unwrap_or_default();
        }
        Some(other) => {
            return Err(DecodeError::field(
                "properties.delivery_info",
                format!("expected an object, found {}", other.kind()),
            ))
        }
    }
    info.priority = match properties.get("priority") {
        None | Some(Value::Null) => None,
        Some(Value::Int(p)) => Some(*p),
        Some(other) => {
            return Err(DecodeError::field(
                "properties.priority",
                format!("expected an integer, found {}", other.kind()),
            ))
        }
    };
    Ok(info)
}

fn opt_str(map: &Map, key: &str, path: &str) -> Result<Option<String>, DecodeError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Str(s)) => Ok(Some(s.clone())),
        Some(other) => Err(DecodeError::field(path, format!("expected a string, found {}", other.kind()))),
    }
}

fn opt_time(map: &Map, key: &str) -> Result<Option<DateTime<Utc>>, DecodeError> {
    let path = format!("headers.{key}");
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Str(s)) => parse_time_text(s)
            .map(Some)
            .ok_or_else(|| DecodeError::field(path, format!("not an ISO-8601 datetime: {s:?}"))),
        Some(Value::DateTime(dt)) => Ok(Some(dt.with_timezone(&Utc))),
        Some(Value::NaiveDateTime(dt)) => Ok(Some(dt.and_utc())),
        Some(other) => Err(DecodeError::field(path, format!("expected an ISO-8601 string, found {}", other.kind()))),
    }
}

/// Parses an `eta`/`expires` header; a missing offset means UTC (protocol v2).
fn parse_time_text(s: &str) -> Option<DateTime<Utc>> {
    match json::parse_datetime(s)? {
        Value::DateTime(dt) => Some(dt.with_timezone(&Utc)),
        Value::NaiveDateTime(dt) => Some(dt.and_utc()),
        _ => None,
    }
}

fn limit(value: Option<&Value>, path: &str) -> Result<Option<f64>, DecodeError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(f) if f.is_finite() && f >= 0.0 => Ok(Some(f)),
            _ => Err(DecodeError::field(
                path,
                format!("expected a non-negative number of seconds, found {}", json::to_string(v)),
            )),
        },
    }
}

impl TaskHeaders {
    /// Reads the typed view of protocol-v2 headers (without touching the body).
    ///
    /// # Errors
    /// A [`DecodeError`] naming the header at fault.
    pub fn parse(headers: &Map) -> Result<TaskHeaders, DecodeError> {
        parse_headers(headers)
    }
}

fn parse_headers(h: &Map) -> Result<TaskHeaders, DecodeError> {
    let task = match h.get("task") {
        Some(Value::Str(s)) if !s.is_empty() => s.clone(),
        Some(Value::Str(_)) => return Err(DecodeError::field("headers.task", "empty task name")),
        Some(other) => {
            return Err(DecodeError::field("headers.task", format!("expected a string, found {}", other.kind())))
        }
        None => return Err(DecodeError::field("headers.task", "missing")),
    };
    let id = match h.get("id") {
        Some(Value::Str(s)) if !s.is_empty() => s.clone(),
        Some(Value::Uuid(u)) => u.hyphenated().to_string(),
        Some(other) if !other.is_null() && other.as_str().is_none() => {
            return Err(DecodeError::field("headers.id", format!("expected a string, found {}", other.kind())))
        }
        _ => return Err(DecodeError::field("headers.id", "missing")),
    };
    let retries = match h.get("retries") {
        None | Some(Value::Null) => 0,
        Some(Value::Int(i)) if *i >= 0 => *i,
        Some(other) => {
            return Err(DecodeError::field(
                "headers.retries",
                format!("expected a non-negative integer, found {}", json::to_string(other)),
            ))
        }
    };
    let timelimit = match h.get("timelimit") {
        None | Some(Value::Null) => TimeLimit::default(),
        Some(Value::List(l)) if l.len() == 2 => TimeLimit {
            hard: limit(l.first(), "headers.timelimit[0]")?,
            soft: limit(l.get(1), "headers.timelimit[1]")?,
        },
        Some(other) => {
            return Err(DecodeError::field(
                "headers.timelimit",
                format!("expected [hard, soft], found {}", json::to_string(other)),
            ))
        }
    };
    let group_index = match h.get("group_index") {
        None | Some(Value::Null) => None,
        Some(Value::Int(i)) => Some(*i),
        Some(other) => {
            return Err(DecodeError::field(
                "headers.group_index",
                format!("expected an integer, found {}", other.kind()),
            ))
        }
    };
    let ignore_result = match h.get("ignore_result") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(DecodeError::field("headers.ignore_result", format!("expected a bool, found {}", other.kind())))
        }
    };
    Ok(TaskHeaders {
        task,
        id,
        root_id: opt_str(h, "root_id", "headers.root_id")?,
        parent_id: opt_str(h, "parent_id", "headers.parent_id")?,
        group: opt_str(h, "group", "headers.group")?,
        group_index,
        shadow: opt_str(h, "shadow", "headers.shadow")?,
        eta: opt_time(h, "eta")?,
        expires: opt_time(h, "expires")?,
        retries,
        timelimit,
        ignore_result,
        argsrepr: opt_str(h, "argsrepr", "headers.argsrepr")?,
        kwargsrepr: opt_str(h, "kwargsrepr", "headers.kwargsrepr")?,
        origin: opt_str(h, "origin", "headers.origin")?,
    })
}

fn parse_v2_body(body: Value) -> Result<(Vec<Value>, Map, Embed), DecodeError> {
    let Value::List(mut parts) = body else {
        return Err(DecodeError::field(
            "body",
            format!("expected a 3-element array [args, kwargs, embed], found {}", body.kind()),
        ));
    };
    if parts.len() != 3 {
        return Err(DecodeError::field(
            "body",
            format!("expected a 3-element array [args, kwargs, embed], found {} elements", parts.len()),
        ));
    }
    let embed_value = parts.pop().unwrap_or(Value::Null);
    let kwargs = match parts.pop() {
        Some(Value::Map(m)) => m,
        Some(Value::Null) => Map::new(),
        Some(other) => {
            return Err(DecodeError::field("body[1] (kwargs)", format!("expected an object, found {}", other.kind())))
        }
        None => Map::new(),
    };
    let args = match parts.pop() {
        Some(Value::List(l)) => l,
        Some(Value::Null) => Vec::new(),
        Some(other) => {
            return Err(DecodeError::field("body[0] (args)", format!("expected a list, found {}", other.kind())))
        }
        None => Vec::new(),
    };
    let embed = match embed_value {
        Value::Null => Embed::default(),
        Value::Map(mut m) => {
            let mut get = |k: &str| m.swap_remove(k).unwrap_or(Value::Null);
            Embed { callbacks: get("callbacks"), errbacks: get("errbacks"), chain: get("chain"), chord: get("chord") }
        }
        other => {
            return Err(DecodeError::field("body[2] (embed)", format!("expected an object, found {}", other.kind())))
        }
    };
    Ok((args, kwargs, embed))
}

/// The protocol-v2 headers Celery 5.7 writes, in its order; user headers follow them.
pub const V2_HEADERS: &[&str] = &[
    "lang",
    "task",
    "id",
    "shadow",
    "eta",
    "expires",
    "group",
    "group_index",
    "retries",
    "timelimit",
    "root_id",
    "parent_id",
    "argsrepr",
    "kwargsrepr",
    "origin",
    "ignore_result",
    "replaced_task_nesting",
    "stamped_headers",
    "stamps",
];

/// When a task expires: after a number of seconds from now, or at a time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Expires {
    /// Seconds from the time the message is built.
    After(f64),
    /// An absolute time (written with its own UTC offset, as Python's `isoformat` does).
    At(DateTime<FixedOffset>),
}

/// Options of one message, named as `Task.apply_async` names them.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskOptions {
    /// Task id; a new uuid4 when `None`.
    pub task_id: Option<String>,
    /// Queue (routing key); `celery` by default.
    pub queue: String,
    /// Run no earlier than this many seconds after the message is built.
    pub countdown: Option<f64>,
    /// Run no earlier than this time (written with its own UTC offset). Exclusive with
    /// `countdown`.
    pub eta: Option<DateTime<FixedOffset>>,
    /// Discard the task (as revoked) after this.
    pub expires: Option<Expires>,
    /// Message priority, 0–255 (higher runs first, as on RabbitMQ). Celery's virtual transports
    /// write 0 when none is given.
    pub priority: Option<i64>,
    /// Hard time limit in seconds.
    pub time_limit: Option<f64>,
    /// Soft time limit in seconds.
    pub soft_time_limit: Option<f64>,
    /// Do not store a result.
    pub ignore_result: bool,
    /// Display name override.
    pub shadow: Option<String>,
    /// Extra headers, merged into the message headers like `apply_async(headers=…)`.
    pub headers: Map,
    /// `retries` header.
    pub retries: i64,
    /// Id of the task publishing this one.
    pub parent_id: Option<String>,
    /// Id of the workflow's first task; the task's own id when `None`.
    pub root_id: Option<String>,
    /// The producer, `gen<pid>@<hostname>`.
    pub origin: String,
    /// `reply_to` property (the app's oid in Celery).
    pub reply_to: Option<String>,
    /// The `argsrepr` header, when the producer rendered it (Celery's
    /// `apply_async(argsrepr=…)`, or a binding that knows the caller's Python types); else
    /// Celery's `saferepr` of `args` as a tuple.
    pub argsrepr: Option<String>,
    /// The `kwargsrepr` header, likewise; else Celery's `saferepr` of `kwargs`.
    pub kwargsrepr: Option<String>,
    /// The body's canvas part (`callbacks`, `errbacks`, `chain`, `chord`): keys given here are
    /// written, the others are `null`.
    pub embed: Map,
}

impl Default for TaskOptions {
    fn default() -> Self {
        TaskOptions {
            task_id: None,
            queue: DEFAULT_QUEUE.to_owned(),
            countdown: None,
            eta: None,
            expires: None,
            priority: None,
            time_limit: None,
            soft_time_limit: None,
            ignore_result: false,
            shadow: None,
            headers: Map::new(),
            retries: 0,
            parent_id: None,
            root_id: None,
            origin: "celeriac".to_owned(),
            reply_to: None,
            argsrepr: None,
            kwargsrepr: None,
            embed: Map::new(),
        }
    }
}

/// An encoded message plus the columns the queue table indexes.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedTask {
    /// The envelope JSON, byte-for-byte what is stored.
    pub payload: Vec<u8>,
    /// Task id.
    pub task_id: String,
    /// Task name.
    pub task_name: String,
    /// Queue.
    pub queue: String,
    /// Priority.
    pub priority: i64,
    /// Not before.
    pub eta: Option<DateTime<Utc>>,
    /// Expiry.
    pub expires: Option<DateTime<Utc>>,
}

/// `N` random (version 4) UUIDs from one read of the OS's random source.
fn random_uuids<const N: usize>() -> [uuid::Uuid; N] {
    let mut bytes = [[0u8; 16]; N];
    if getrandom::fill(bytes.as_flattened_mut()).is_err() {
        return std::array::from_fn(|_| uuid::Uuid::new_v4());
    }
    bytes.map(|b| uuid::Builder::from_random_bytes(b).into_uuid())
}

fn number(seconds: f64) -> Value {
    #[allow(clippy::cast_possible_truncation)]
    if seconds.fract() == 0.0 && seconds.abs() < 1e15 {
        Value::Int(seconds as i64)
    } else {
        Value::Float(seconds)
    }
}

fn check_seconds(option: &'static str, v: Option<f64>) -> Result<(), EncodeError> {
    match v {
        Some(s) if !s.is_finite() || s < 0.0 => {
            Err(EncodeError::Option { option, problem: format!("must be a non-negative number of seconds, got {s}") })
        }
        _ => Ok(()),
    }
}

/// `now` plus `seconds` (a finite number), as Celery computes `now + timedelta(seconds=…)`: an
/// error where Python's would overflow (beyond `datetime.max`, the year 9999), never a panic.
fn seconds_from(now: DateTime<Utc>, option: &'static str, seconds: f64) -> Result<DateTime<Utc>, EncodeError> {
    const PYTHON_MAX_SECONDS: f64 = 253_402_300_800.0; // 10000-01-01T00:00:00Z
    let too_far = || EncodeError::Option {
        option,
        problem: format!("{seconds} seconds from now is out of range (beyond the year 9999, Python's datetime.max)"),
    };
    if seconds.abs() >= PYTHON_MAX_SECONDS {
        return Err(too_far());
    }
    #[allow(clippy::cast_possible_truncation)]
    let delta = Duration::microseconds((seconds * 1e6).round() as i64);
    now.checked_add_signed(delta)
        .filter(|t| t.timestamp() < 253_402_300_800 && t.timestamp() > -62_135_596_800)
        .ok_or_else(too_far)
}

/// Builds the message `Task.apply_async(args, kwargs, **options)` publishes with Celery 5.7
/// (protocol 2, JSON serializer, virtual-transport envelope), at time `now`.
///
/// # Errors
/// When an option is out of range (negative countdown, priority beyond 0–255, both `countdown`
/// and `eta`, an empty task name).
pub fn encode_task(
    name: &str,
    args: &[Value],
    kwargs: &Map,
    opts: &TaskOptions,
    now: DateTime<Utc>,
) -> Result<EncodedTask, EncodeError> {
    if name.is_empty() {
        return Err(EncodeError::Option { option: "name", problem: "task name must not be empty".into() });
    }
    if opts.countdown.is_some() && opts.eta.is_some() {
        return Err(EncodeError::Option {
            option: "countdown",
            problem: "give either countdown or eta, not both".into(),
        });
    }
    check_seconds("countdown", opts.countdown)?;
    check_seconds("time_limit", opts.time_limit)?;
    check_seconds("soft_time_limit", opts.soft_time_limit)?;
    if let Some(Expires::After(s)) = opts.expires {
        if !s.is_finite() {
            return Err(EncodeError::Option {
                option: "expires",
                problem: format!("must be a finite number of seconds, got {s}"),
            });
        }
    }
    if let Some(p) = opts.priority {
        if !(0..=255).contains(&p) {
            return Err(EncodeError::Option {
                option: "priority",
                problem: format!("must be between 0 and 255, got {p}"),
            });
        }
    }
    if opts.queue.is_empty() {
        return Err(EncodeError::Option { option: "queue", problem: "queue name must not be empty".into() });
    }
    // One system call for every random id of the message (task id, reply_to, delivery tag).
    let [random_id, random_reply_to, delivery_tag] = random_uuids();
    let task_id = opts.task_id.clone().unwrap_or_else(|| random_id.to_string());
    // Celery sets an eta only for a non-zero countdown (`if countdown:`).
    let eta: Option<DateTime<FixedOffset>> = match (opts.countdown, opts.eta) {
        (Some(c), _) if c != 0.0 => Some(seconds_from(now, "countdown", c)?.fixed_offset()),
        (Some(_), _) => None,
        (None, eta) => eta,
    };
    let expires: Option<DateTime<FixedOffset>> = match opts.expires {
        Some(Expires::After(s)) => Some(seconds_from(now, "expires", s)?.fixed_offset()),
        Some(Expires::At(t)) => Some(t),
        None => None,
    };

    let mut h = Map::with_capacity(20 + opts.headers.len());
    h.insert("lang".into(), "py".into());
    h.insert("task".into(), name.into());
    h.insert("id".into(), task_id.clone().into());
    h.insert("shadow".into(), opts.shadow.clone().map_or(Value::Null, Value::Str));
    h.insert("eta".into(), eta.map_or(Value::Null, |t| Value::Str(json::python_isoformat(&t))));
    h.insert("expires".into(), expires.map_or(Value::Null, |t| Value::Str(json::python_isoformat(&t))));
    h.insert("group".into(), Value::Null);
    h.insert("group_index".into(), Value::Null);
    h.insert("retries".into(), Value::Int(opts.retries));
    h.insert(
        "timelimit".into(),
        Value::List(vec![
            opts.time_limit.map_or(Value::Null, number),
            opts.soft_time_limit.map_or(Value::Null, number),
        ]),
    );
    h.insert("root_id".into(), opts.root_id.clone().unwrap_or_else(|| task_id.clone()).into());
    h.insert("parent_id".into(), opts.parent_id.clone().map_or(Value::Null, Value::Str));
    let argsrepr = opts.argsrepr.clone().unwrap_or_else(|| args_repr(args, REPR_MAX_SIZE));
    h.insert("argsrepr".into(), argsrepr.into());
    let kwargsrepr = opts.kwargsrepr.clone().unwrap_or_else(|| kwargs_repr(kwargs, REPR_MAX_SIZE));
    h.insert("kwargsrepr".into(), kwargsrepr.into());
    h.insert("origin".into(), opts.origin.clone().into());
    h.insert("ignore_result".into(), opts.ignore_result.into());
    h.insert("replaced_task_nesting".into(), Value::Int(0));
    h.insert("stamped_headers".into(), Value::Null);
    h.insert("stamps".into(), Value::Map(Map::new()));
    for (k, v) in &opts.headers {
        h.insert(k.clone(), v.clone());
    }

    let mut embed = Map::with_capacity(4);
    for key in ["callbacks", "errbacks", "chain", "chord"] {
        embed.insert(key.into(), opts.embed.get(key).cloned().unwrap_or(Value::Null));
    }
    let body = Value::List(vec![Value::List(args.to_vec()), Value::Map(kwargs.clone()), Value::Map(embed)]);
    let body_bytes = json::to_vec(&body);

    let priority = opts.priority.unwrap_or(0);
    let mut delivery_info = Map::with_capacity(2);
    delivery_info.insert("exchange".into(), "".into());
    delivery_info.insert("routing_key".into(), opts.queue.clone().into());
    let mut p = Map::with_capacity(8);
    p.insert("correlation_id".into(), task_id.clone().into());
    p.insert("reply_to".into(), opts.reply_to.clone().unwrap_or_else(|| random_reply_to.to_string()).into());
    p.insert("delivery_mode".into(), Value::Int(2));
    if let Some(exp) = expires {
        let ms = (exp.with_timezone(&Utc) - now).num_milliseconds().max(0);
        p.insert("expiration".into(), Value::Str(ms.to_string()));
    }
    p.insert("delivery_info".into(), Value::Map(delivery_info));
    p.insert("priority".into(), Value::Int(priority));
    p.insert("body_encoding".into(), "base64".into());
    p.insert("delivery_tag".into(), delivery_tag.to_string().into());

    let envelope = Envelope {
        body: base64::engine::general_purpose::STANDARD.encode(&body_bytes),
        content_type: CONTENT_TYPE_JSON.into(),
        content_encoding: "utf-8".into(),
        headers: h,
        properties: p,
        extra: Map::new(),
    };
    Ok(EncodedTask {
        payload: envelope.into_bytes(),
        task_id,
        task_name: name.to_owned(),
        queue: opts.queue.clone(),
        priority,
        eta: eta.map(|t| t.with_timezone(&Utc)),
        expires: expires.map(|t| t.with_timezone(&Utc)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-23T01:09:42.742135+00:00").unwrap().with_timezone(&Utc)
    }

    #[test]
    fn encodes_the_observed_celery_message() {
        let opts = TaskOptions {
            task_id: Some("aaaaaaaa-0000-0000-0000-000000000001".into()),
            countdown: Some(3.0),
            expires: Some(Expires::After(600.0)),
            priority: Some(5),
            origin: "gen8818@vm".into(),
            ..TaskOptions::default()
        };
        let enc = encode_task("tasks.add", &[Value::Int(2), Value::Int(2)], &Map::new(), &opts, now()).unwrap();
        let env = Envelope::parse(&enc.payload).unwrap();
        assert_eq!(
            env.body,
            "W1syLCAyXSwge30sIHsiY2FsbGJhY2tzIjogbnVsbCwgImVycmJhY2tzIjogbnVsbCwgImNoYWluIjogbnVsbCwgImNob3JkIjogbnVsbH1d"
        );
        assert_eq!(env.headers["eta"], Value::Str("2026-11-23T01:09:45.742135+00:00".into()));
        assert_eq!(env.headers["expires"], Value::Str("2026-11-23T01:19:42.742135+00:00".into()));
        assert_eq!(env.headers["argsrepr"], Value::Str("(2, 2)".into()));
        assert_eq!(env.properties["expiration"], Value::Str("600000".into()));
        let keys: Vec<_> = env.headers.keys().map(String::as_str).collect();
        assert_eq!(keys, V2_HEADERS);
        let msg = TaskMessage::decode(&enc.payload, &Accept::default()).unwrap();
        assert_eq!(msg.headers.task, "tasks.add");
        assert_eq!(msg.args, vec![Value::Int(2), Value::Int(2)]);
        assert_eq!(msg.delivery_info.routing_key, "celery");
        assert_eq!(msg.delivery_info.priority, Some(5));
        assert_eq!(enc.eta, msg.headers.eta);
    }

    #[test]
    fn rejects_bad_options() {
        let bad = [
            TaskOptions { priority: Some(256), ..TaskOptions::default() },
            TaskOptions { countdown: Some(-1.0), ..TaskOptions::default() },
            TaskOptions { countdown: Some(1e300), ..TaskOptions::default() },
            TaskOptions { countdown: Some(1e12), ..TaskOptions::default() },
            TaskOptions { expires: Some(Expires::After(1e300)), ..TaskOptions::default() },
            TaskOptions { expires: Some(Expires::After(-1e19)), ..TaskOptions::default() },
            TaskOptions { countdown: Some(1.0), eta: Some(now().fixed_offset()), ..TaskOptions::default() },
            TaskOptions { queue: String::new(), ..TaskOptions::default() },
        ];
        for opts in bad {
            assert!(encode_task("t", &[], &Map::new(), &opts, now()).is_err(), "{opts:?}");
        }
        assert!(encode_task("", &[], &Map::new(), &TaskOptions::default(), now()).is_err());
    }

    #[test]
    fn retry_keeps_headers_and_bumps_retries() {
        let mut opts = TaskOptions::default();
        opts.headers.insert("x-custom".into(), "v".into());
        let enc = encode_task("t", &[Value::Int(1)], &Map::new(), &opts, now()).unwrap();
        let msg = TaskMessage::decode(&enc.payload, &Accept::default()).unwrap();
        let eta = now() + Duration::seconds(5);
        let retry = msg.to_retry(eta);
        let again = TaskMessage::decode(&retry.payload, &Accept::default()).unwrap();
        assert_eq!(again.headers.retries, 1);
        assert_eq!(again.headers.eta, Some(eta));
        assert_eq!(again.headers.parent_id.as_deref(), Some(msg.headers.id.as_str()));
        assert_eq!(again.envelope.headers["x-custom"], Value::Str("v".into()));
        assert_eq!(again.envelope.body, msg.envelope.body);
    }

    #[test]
    fn decode_head_reads_headers_of_bodies_it_does_not_decode() {
        let pickle =
            br#"{"body": "gAROLg==", "content-type": "application/x-python-serialize", "content-encoding": "binary",
            "headers": {"task": "proj.tasks.t", "id": "abc", "retries": 2},
            "properties": {"body_encoding": "base64", "delivery_info": {"exchange": "", "routing_key": "q"}}}"#;
        let accept = Accept::new(["json", "pickle"]);
        assert!(matches!(TaskMessage::decode(pickle, &accept), Err(DecodeError::UnsupportedContentType(_))));
        let head = TaskMessage::decode_head(pickle, &accept).unwrap();
        assert_eq!(
            (head.headers.task.as_str(), head.headers.id.as_str(), head.headers.retries),
            ("proj.tasks.t", "abc", 2)
        );
        assert!(head.args.is_empty() && head.kwargs.is_empty());
        // Its body is left to the handler: decode_body refuses it and leaves the message as it was.
        let mut later = head.clone();
        assert!(matches!(later.decode_body(&Limits::default()), Err(DecodeError::UnsupportedContentType(_))));
        assert_eq!(later, head);
        // A JSON body decodes later, within the limits given then.
        let json = br#"{"body": "W1sxLCAyXSwge30sIHt9XQ==", "headers": {"task": "t", "id": "1"},
            "properties": {"body_encoding": "base64"}}"#;
        let mut head = TaskMessage::decode_head(json, &accept).unwrap();
        let tiny = Limits { max_decoded_size: 100, ..Limits::default() };
        assert!(matches!(head.decode_body(&tiny), Err(DecodeError::TooLarge { part: "body", .. })));
        assert!(head.args.is_empty());
        head.decode_body(&Limits::default()).unwrap();
        assert_eq!(head.args, [Value::Int(1), Value::Int(2)]);
        // The accept list still applies, and a protocol-1 message (task name in the body) is refused.
        assert!(matches!(
            TaskMessage::decode_head(pickle, &Accept::default()),
            Err(DecodeError::ContentDisallowed { .. })
        ));
        let v1 = br#"{"body": "gAROLg==", "content-type": "application/x-python-serialize", "headers": {},
            "properties": {"body_encoding": "base64"}}"#;
        assert!(TaskMessage::decode_head(v1, &accept).is_err());
    }

    #[test]
    fn decode_errors_name_the_field() {
        let cases: &[(&str, &str)] = &[
            ("not json", "envelope"),
            ("[1]", "envelope"),
            (r#"{"headers": {"task": "t", "id": "1"}, "properties": {"body_encoding": "base64"}}"#, "body: missing"),
            (
                r#"{"body": "!!!", "headers": {"task": "t", "id": "1"}, "properties": {"body_encoding": "base64"}}"#,
                "base64",
            ),
            (
                r#"{"body": "bm90IGpzb24=", "headers": {"task": "t", "id": "1"}, "properties": {"body_encoding": "base64"}}"#,
                "body: invalid JSON",
            ),
            (r#"{"body": "W10=", "headers": {"id": "1"}, "properties": {"body_encoding": "base64"}}"#, "headers.task"),
            (
                r#"{"body": "W10=", "headers": {"task": "t", "id": "1"}, "properties": {"body_encoding": "base64"}}"#,
                "3-element",
            ),
            (
                r#"{"body": "W10=", "content-type": "application/x-python-serialize", "headers": {"task": "t"}}"#,
                "disallowed",
            ),
            (r#"{"body": "[[], {}, {}]", "headers": {"task": 5, "id": "1"}}"#, "headers.task: expected a string"),
            (r#"{"body": "[[], {}, {}]", "headers": {"task": "t", "id": "1", "eta": "soon"}}"#, "headers.eta"),
            (r#"{"body": "[[], {}, {}]", "headers": {"task": "t", "id": "1", "timelimit": [1]}}"#, "headers.timelimit"),
            (r#"{"body": "[[], {}, {}]", "headers": {"task": "t", "id": "1", "retries": -1}}"#, "headers.retries"),
            (r#"{"body": "[1, {}, {}]", "headers": {"task": "t", "id": "1"}}"#, "body[0] (args)"),
            (
                r#"{"body": "[[], {}, {}]", "headers": {"task": "t", "id": "1", "compression": "application/x-bz2"}}"#,
                "unsupported compression",
            ),
            (
                r#"{"body": "[[], {}, {}]", "headers": {"task": "t", "id": "1"}, "properties": {"priority": "high"}}"#,
                "properties.priority",
            ),
        ];
        for (payload, expected) in cases {
            let err = TaskMessage::decode(payload.as_bytes(), &Accept::default()).unwrap_err();
            assert!(err.to_string().contains(expected), "{payload}: {err} (wanted {expected:?})");
        }
    }

    #[test]
    fn accepts_protocol_1_bodies() {
        let body = r#"{"task": "proj.add", "id": "0b7b", "args": [2, 2], "kwargs": {}, "retries": 0, "eta": null, "expires": null, "utc": true, "callbacks": null, "errbacks": null, "timelimit": [null, null], "taskset": null, "chord": null}"#;
        let payload = format!(
            r#"{{"body": {}, "content-type": "application/json", "headers": {{}}}}"#,
            json::to_string(&Value::Str(body.into()))
        );
        let msg = TaskMessage::decode(payload.as_bytes(), &Accept::default()).unwrap();
        assert_eq!(msg.protocol, ProtocolVersion::V1);
        assert_eq!(msg.headers.task, "proj.add");
        assert_eq!(msg.args.len(), 2);
    }
}
