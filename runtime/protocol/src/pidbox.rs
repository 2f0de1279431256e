//! kombu's process mailbox ("pidbox"): the messages behind Celery's remote control
//! (`app.control`, `celery inspect|control`), the replies to them, and Celery's events, in the
//! virtual-transport envelope. Parsing is total: a malformed command is an error, never a panic.

use base64::Engine as _;

use crate::{json, message::Envelope, DecodeError, Limits, Map, Value};

/// The mailbox exchange of Celery's remote control: `<control_exchange>.pidbox` (a fanout).
#[must_use]
pub fn control_exchange(namespace: &str) -> String {
    format!("{namespace}.pidbox")
}

/// The exchange replies are published to: `reply.<control_exchange>.pidbox` (direct, keyed by
/// the caller's reply queue).
#[must_use]
pub fn reply_exchange(namespace: &str) -> String {
    format!("reply.{namespace}.pidbox")
}

/// A remote-control command, as `Mailbox._publish` sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlCommand {
    /// The command (`ping`, `revoke`, `active`, …).
    pub method: String,
    /// Its keyword arguments.
    pub arguments: Map,
    /// Only these node names run it (none: every node).
    pub destination: Option<Vec<String>>,
    /// Or the nodes whose name matches `pattern` with `matcher` (`glob` or `pcre`).
    pub pattern: Option<(String, String)>,
    /// Where to reply (exchange, routing key); none for a cast.
    pub reply_to: Option<(String, String)>,
    /// The reply's `ticket` header.
    pub ticket: Option<String>,
    /// The sender's Lamport clock (`clock` header).
    pub clock: i64,
}

fn text(map: &Map, key: &str) -> Option<String> {
    map.get(key).and_then(Value::as_str).map(str::to_owned)
}

impl ControlCommand {
    /// Parses a command from a stored envelope (JSON body, as kombu's pidbox always sends).
    ///
    /// # Errors
    /// A malformed envelope or body, a body that is not JSON, or one without a `method`.
    pub fn parse(payload: &[u8]) -> Result<ControlCommand, DecodeError> {
        let envelope = Envelope::parse(payload)?;
        let clock = envelope.headers.get("clock").and_then(Value::as_i64).unwrap_or(0);
        let body = envelope.decode_body(&Limits::default())?;
        let Value::Map(body) = body else {
            return Err(DecodeError::field("body", "a control command is a JSON object"));
        };
        let method = text(&body, "method").ok_or_else(|| DecodeError::field("body.method", "missing"))?;
        let arguments = match body.get("arguments") {
            Some(Value::Map(m)) => m.clone(),
            _ => Map::new(),
        };
        let destination = match body.get("destination") {
            Some(Value::List(items)) => Some(items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()),
            Some(Value::Str(one)) => Some(vec![one.clone()]),
            _ => None,
        };
        let pattern = match (text(&body, "pattern"), text(&body, "matcher")) {
            (Some(p), Some(m)) => Some((p, m)),
            _ => None,
        };
        let reply_to = match body.get("reply_to") {
            Some(Value::Map(r)) => match (text(r, "exchange"), text(r, "routing_key")) {
                (Some(e), Some(k)) => Some((e, k)),
                _ => None,
            },
            _ => None,
        };
        Ok(ControlCommand { method, arguments, destination, pattern, reply_to, ticket: text(&body, "ticket"), clock })
    }

    /// Whether the node named `hostname` runs this command (kombu's `Node.handle_message`):
    /// named in `destination`, or matching `pattern`, or every node when neither is given.
    #[must_use]
    pub fn addressed_to(&self, hostname: &str) -> bool {
        match (&self.destination, &self.pattern) {
            (Some(d), _) if !d.is_empty() => d.iter().any(|n| n == hostname),
            (_, Some((pattern, matcher))) => match matcher.as_str() {
                "glob" => glob_match(pattern.as_bytes(), hostname.as_bytes()),
                // `pcre` patterns need a regex engine; the worker matches them.
                _ => false,
            },
            _ => true,
        }
    }
}

/// fnmatch-style matching (`*`, `?`, `[...]`), as kombu's `glob` matcher.
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while n < name.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some(p);
                    mark = n;
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    n += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class_match(&pattern[p..], name[n]) {
                        if matched {
                            p += next;
                            n += 1;
                            continue;
                        }
                    } else if name[n] == b'[' {
                        p += 1;
                        n += 1;
                        continue;
                    }
                }
                c if c == name[n] => {
                    p += 1;
                    n += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some(s) => {
                p = s + 1;
                mark += 1;
                n = mark;
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches one byte against a `[...]` class at the start of `pattern`: whether it matched and
/// the class's length; `None` when the class is not closed.
fn class_match(pattern: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(pattern.get(i), Some(b'!'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < pattern.len() {
        if pattern[i] == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']' {
            matched |= (pattern[i]..=pattern[i + 2]).contains(&c);
            i += 3;
        } else {
            matched |= pattern[i] == c;
            i += 1;
        }
    }
    None
}

/// A unique delivery tag in UUID form without a system call per message: a random prefix
/// drawn once per process, then a counter.
fn delivery_tag() -> String {
    static PREFIX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| uuid::Uuid::new_v4().as_u64_pair().0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    uuid::Uuid::from_u64_pair(prefix, n).to_string()
}

/// A kombu virtual-transport envelope around a JSON `body`, as kombu publishes it to `exchange`
/// with `routing_key` (base64 body, `application/json`). `delivery_mode` 1 is transient (events,
/// replies), 2 persistent.
#[must_use]
pub fn envelope(exchange: &str, routing_key: &str, body: &Value, headers: Map, delivery_mode: i64) -> Vec<u8> {
    let body = base64::engine::general_purpose::STANDARD.encode(json::to_vec(body));
    let mut delivery_info = Map::with_capacity(2);
    delivery_info.insert("exchange".into(), exchange.into());
    delivery_info.insert("routing_key".into(), routing_key.into());
    let mut properties = Map::with_capacity(5);
    properties.insert("delivery_mode".into(), Value::Int(delivery_mode));
    properties.insert("delivery_info".into(), Value::Map(delivery_info));
    properties.insert("priority".into(), Value::Int(0));
    properties.insert("body_encoding".into(), "base64".into());
    properties.insert("delivery_tag".into(), delivery_tag().into());
    Envelope {
        body,
        content_type: crate::CONTENT_TYPE_JSON.to_owned(),
        content_encoding: "utf-8".to_owned(),
        headers,
        properties,
        extra: Map::new(),
    }
    .into_bytes()
}

/// The envelope of a control command as `Mailbox._publish` sends it (no reply requested).
#[must_use]
pub fn command_envelope(exchange: &str, method: &str, arguments: Map, destination: Option<&[String]>) -> Vec<u8> {
    call_envelope(exchange, method, arguments, destination, None)
}

/// The envelope of a control command that asks for replies on `reply` (exchange, routing key,
/// ticket), as `Mailbox._broadcast(reply=True)` sends it.
#[must_use]
pub fn call_envelope(
    exchange: &str,
    method: &str,
    arguments: Map,
    destination: Option<&[String]>,
    reply: Option<(&str, &str, &str)>,
) -> Vec<u8> {
    let mut body = Map::with_capacity(7);
    body.insert("method".into(), method.into());
    body.insert("arguments".into(), Value::Map(arguments));
    body.insert(
        "destination".into(),
        destination.map_or(Value::Null, |d| Value::List(d.iter().map(|n| n.as_str().into()).collect())),
    );
    body.insert("pattern".into(), Value::Null);
    body.insert("matcher".into(), Value::Null);
    if let Some((exchange, routing_key, ticket)) = reply {
        body.insert("ticket".into(), ticket.into());
        let mut reply_to = Map::with_capacity(2);
        reply_to.insert("exchange".into(), exchange.into());
        reply_to.insert("routing_key".into(), routing_key.into());
        body.insert("reply_to".into(), Value::Map(reply_to));
    }
    let mut headers = Map::with_capacity(2);
    headers.insert("clock".into(), Value::Int(1));
    headers.insert("expires".into(), Value::Int(0));
    envelope(exchange, "", &Value::Map(body), headers, 2)
}

/// The envelope of Celery's `revoke` command (`app.control.revoke(ids, terminate, signal)`).
#[must_use]
pub fn revoke_envelope(exchange: &str, task_ids: &[String], terminate: bool, signal: Option<&str>) -> Vec<u8> {
    let mut arguments = Map::with_capacity(3);
    arguments.insert("task_id".into(), Value::List(task_ids.iter().map(|id| id.as_str().into()).collect()));
    arguments.insert("terminate".into(), Value::Bool(terminate));
    arguments.insert("signal".into(), signal.map_or(Value::Null, Into::into));
    command_envelope(exchange, "revoke", arguments, None)
}

/// The envelope of one node's reply, `{hostname: reply}`, as `Mailbox._publish_reply` sends it.
#[must_use]
pub fn reply_envelope(
    exchange: &str,
    routing_key: &str,
    hostname: &str,
    reply: Value,
    ticket: &str,
    clock: i64,
) -> Vec<u8> {
    let mut body = Map::with_capacity(1);
    body.insert(hostname.into(), reply);
    let mut headers = Map::with_capacity(2);
    headers.insert("ticket".into(), ticket.into());
    headers.insert("clock".into(), Value::Int(clock));
    envelope(exchange, routing_key, &Value::Map(body), headers, 1)
}

/// The envelope of an event, as Celery's `EventDispatcher` publishes it: routed by its type
/// with `-` as `.` (`task-succeeded` → `task.succeeded`), header `hostname`.
#[must_use]
pub fn event_envelope(exchange: &str, event: Map, hostname: &str) -> Vec<u8> {
    let routing_key = event.get("type").and_then(Value::as_str).unwrap_or("").replace('-', ".");
    events_envelope(exchange, &routing_key, &json::to_vec(&Value::Map(event)), hostname)
}

/// The envelope of events already encoded as JSON: one event (a JSON object), or a batch (a
/// JSON array of them) routed `<group>.multi`, as Celery's dispatcher flushes its buffered
/// `task` group (`celery events` and Flower take a list body as that many events).
#[must_use]
pub fn events_envelope(exchange: &str, routing_key: &str, body_json: &[u8], hostname: &str) -> Vec<u8> {
    // The document `envelope` builds, written straight out: events are the hot path of `-E`.
    let body = base64::engine::general_purpose::STANDARD.encode(body_json);
    let text = |s: &str| json::to_string(&Value::Str(s.to_owned()));
    let mut out = String::with_capacity(body.len() + 320);
    out.push_str("{\"body\": \"");
    out.push_str(&body);
    out.push_str(
        "\", \"content-encoding\": \"utf-8\", \"content-type\": \"application/json\", \"headers\": {\"hostname\": ",
    );
    out.push_str(&text(hostname));
    out.push_str("}, \"properties\": {\"delivery_mode\": 1, \"delivery_info\": {\"exchange\": ");
    out.push_str(&text(exchange));
    out.push_str(", \"routing_key\": ");
    out.push_str(&text(routing_key));
    out.push_str("}, \"priority\": 0, \"body_encoding\": \"base64\", \"delivery_tag\": \"");
    out.push_str(&delivery_tag());
    out.push_str("\"}}");
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_and_address_nodes() {
        let mut args = Map::new();
        args.insert("task_id".into(), "abc".into());
        let payload = command_envelope("celery.pidbox", "revoke", args, Some(&["w1@h".to_owned()]));
        let c = ControlCommand::parse(&payload).unwrap();
        assert_eq!(c.method, "revoke");
        assert_eq!(c.arguments.get("task_id").and_then(Value::as_str), Some("abc"));
        assert!(c.addressed_to("w1@h"));
        assert!(!c.addressed_to("w2@h"));
        assert_eq!(c.reply_to, None);
        let everyone = ControlCommand { destination: None, ..c.clone() };
        assert!(everyone.addressed_to("w2@h"));
        let glob = ControlCommand { destination: None, pattern: Some(("w[0-9]@*".into(), "glob".into())), ..c };
        assert!(glob.addressed_to("w2@h"));
        assert!(!glob.addressed_to("x2@h"));
    }

    #[test]
    fn bad_commands_are_errors_not_panics() {
        for payload in [&b""[..], b"{}", br#"{"body": "!!", "properties": {"body_encoding": "base64"}}"#, b"[1]"] {
            assert!(ControlCommand::parse(payload).is_err());
        }
        let no_method = envelope("x", "", &Value::Map(Map::new()), Map::new(), 1);
        assert!(ControlCommand::parse(&no_method).is_err());
    }

    #[test]
    fn events_are_the_envelopes_kombu_would_write() {
        let mut event = Map::new();
        event.insert("hostname".into(), "w\"1@h".into());
        event.insert("type".into(), "task-succeeded".into());
        let fast = Envelope::parse(&event_envelope("celeryev", event.clone(), "w\"1@h")).unwrap();
        let mut headers = Map::new();
        headers.insert("hostname".into(), "w\"1@h".into());
        let slow = Envelope::parse(&envelope("celeryev", "task.succeeded", &Value::Map(event), headers, 1)).unwrap();
        let tag = |e: &Envelope| e.properties.get("delivery_tag").cloned();
        assert_ne!(tag(&fast), tag(&slow));
        let without_tag = |mut e: Envelope| {
            e.properties.shift_remove("delivery_tag");
            e
        };
        assert_eq!(without_tag(fast), without_tag(slow));

        let batch = Envelope::parse(&events_envelope("celeryev", "task.multi", b"[{\"a\": 1}, {}]", "h")).unwrap();
        let info = batch.properties.get("delivery_info").and_then(Value::as_map).unwrap();
        assert_eq!(info.get("routing_key").and_then(Value::as_str), Some("task.multi"));
        let events = batch.decode_body(&crate::Limits::default()).unwrap();
        assert_eq!(events.as_list().map(<[Value]>::len), Some(2));
    }

    #[test]
    fn glob_matches_like_fnmatch() {
        for (p, n, m) in [
            ("*", "a", true),
            ("a*c", "abbc", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("[!x]b", "ab", true),
            ("[!a]b", "ab", false),
            ("[", "[", true),
            ("celery@*", "celery@host", true),
        ] {
            assert_eq!(glob_match(p.as_bytes(), n.as_bytes()), m, "{p} {n}");
        }
    }
}
