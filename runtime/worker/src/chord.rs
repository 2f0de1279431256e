//! `celery.chord_unlock`, run by the worker itself (no Python needed): how chords complete with
//! Celery's database result backend (`db+postgresql://`), whose `apply_chord` publishes this task
//! before the header tasks, and with any backend for the chords Rust handlers publish.
//! (django-db and Redis count their producers' chords as each header task finishes:
//! `worker/chords.rs`.)
//!
//! The message (`shared/reference/celery-compat.md` §5.1) carries the group id, the body's
//! signature, and the header's result tuples in group order. Each run reads the header's states:
//! while one is not ready, the task is retried after `interval` (1 s by default; Celery's
//! `result_chord_retry_interval`) — a retry is a re-scheduled row, not a held worker slot. Once
//! all are ready:
//! - all succeeded: the body is published with the list of results prepended to its args,
//!   with the unlock's completion, in one transaction, so it is published exactly once;
//! - one failed (or was revoked): the body is stored as `FAILURE` with
//!   `ChordError('Dependency <id> raised <exc>')` and its errbacks are published.
//!
//! With `-A`, the app's own `celery.chord_unlock` (Celery's code in the Python pool) runs
//! instead.

use celeriac_protocol::{pyrepr, TaskMessage, Value};

use crate::results::StoredResult;

/// The task name.
pub(crate) const CHORD_UNLOCK: &str = "celery.chord_unlock";

/// What `celery.chord_unlock`'s message asks.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Unlock {
    /// The body's signature.
    pub body: Value,
    /// The header's task ids, in group order (a nested group's members in its place).
    pub members: Vec<String>,
    /// Where nested groups are among `members` (their results join as lists).
    pub shape: Vec<Shape>,
    /// Seconds between checks.
    pub interval: f64,
    /// Checks allowed (`None`: forever, Celery's default).
    pub max_retries: Option<i64>,
}

/// Reads the unlock's arguments.
///
/// # Errors
/// What is wrong with the message, for the body's failure and the log.
pub(crate) fn parse(message: &TaskMessage) -> Result<Unlock, String> {
    let body = message.args.get(1).cloned().ok_or("no body signature (second argument)")?;
    if body.as_map().is_none() {
        return Err("the body is not a signature".into());
    }
    let kwargs = &message.kwargs;
    let result = kwargs.get("result").and_then(Value::as_list).ok_or("no header results (the result keyword)")?;
    let mut members = Vec::with_capacity(result.len());
    let shape = result.iter().map(|tuple| member_shape(tuple, &mut members, 0)).collect::<Result<_, _>>()?;
    let interval = kwargs.get("interval").and_then(Value::as_f64).filter(|i| i.is_finite() && *i >= 0.0).unwrap_or(1.0);
    let max_retries = kwargs.get("max_retries").and_then(Value::as_i64);
    Ok(Unlock { body, members, shape, interval, max_retries })
}

/// A header member: one task, or a group (its own members, joined as a list of their results).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Shape {
    /// A task: one of [`Unlock::members`].
    Task,
    /// A nested group.
    Group(Vec<Shape>),
}

/// How deep nested groups are read (deeper: refused, not a stack overflow).
const MOST_NESTED: usize = 32;

/// Reads one result tuple (`[[id, parent], children]`), appending its task ids to `members`.
fn member_shape(tuple: &Value, members: &mut Vec<String>, depth: usize) -> Result<Shape, String> {
    let (Some(head), children) = (tuple.as_list().and_then(|t| t.first()), tuple.as_list().and_then(|t| t.get(1)))
    else {
        return Err(format!("a header result that is not a result tuple: {}", pyrepr::repr(tuple)));
    };
    if let Some(Value::List(children)) = children {
        if depth >= MOST_NESTED {
            return Err("header groups nested too deep".into());
        }
        let shape = children.iter().map(|c| member_shape(c, members, depth + 1)).collect::<Result<_, _>>()?;
        return Ok(Shape::Group(shape));
    }
    let id = head.as_list().and_then(|h| h.first()).and_then(Value::as_str).ok_or("a header result without an id")?;
    members.push(id.to_owned());
    Ok(Shape::Task)
}

/// The members' results (`flat`, in [`Unlock::members`] order) nested as `shape` says: what
/// Celery's `GroupResult.join` returns for a header holding groups.
pub(crate) fn nest(shape: &[Shape], flat: Vec<Value>) -> Vec<Value> {
    fn take(shape: &[Shape], flat: &mut std::vec::IntoIter<Value>) -> Vec<Value> {
        shape
            .iter()
            .map(|s| match s {
                Shape::Task => flat.next().unwrap_or_default(),
                Shape::Group(inner) => Value::List(take(inner, flat)),
            })
            .collect()
    }
    take(shape, &mut flat.into_iter())
}

/// What the header's states mean for the body.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Join {
    /// Some member is not done: check again later.
    Waiting,
    /// Every member succeeded: their results, in group order.
    Ready(Vec<Value>),
    /// A member failed: the body fails with this `ChordError` message.
    Failed(String),
}

/// Joins the header's states (`None`: nothing stored yet).
pub(crate) fn join(members: &[String], states: &[Option<StoredResult>]) -> Join {
    if states.iter().any(|s| !s.as_ref().is_some_and(StoredResult::ready)) {
        return Join::Waiting;
    }
    let mut results = Vec::with_capacity(states.len());
    for (id, state) in members.iter().zip(states.iter().flatten()) {
        match (state.status.as_str(), &state.value) {
            ("SUCCESS", Ok(v)) => results.push(v.clone()),
            ("SUCCESS", Err(e)) => {
                return Join::Failed(format!("Dependency {id} stored a result celeriac cannot read: {e}"))
            }
            (_, value) => return Join::Failed(format!("Dependency {id} raised {}", exception_repr(value))),
        }
    }
    Join::Ready(results)
}

/// `ValueError('bad')` from a stored exception dict.
fn exception_repr(value: &Result<Value, String>) -> String {
    let Ok(Value::Map(m)) = value else { return "an exception celeriac cannot read".into() };
    let exc_type = m.get("exc_type").and_then(Value::as_str).unwrap_or("Exception");
    let args: Vec<String> = match m.get("exc_message") {
        Some(Value::List(args)) => args.iter().map(pyrepr::repr).collect(),
        Some(other) => vec![pyrepr::repr(other)],
        None => Vec::new(),
    };
    format!("{exc_type}({})", args.join(", "))
}

#[cfg(test)]
mod tests {
    use celeriac_protocol::{Accept, Map, TaskMessage};

    use super::*;

    fn golden() -> TaskMessage {
        let envelope =
            include_bytes!("../../protocol/tests/fixtures/celery-5.7/chord_of_two_chord_unlock.envelope.json");
        TaskMessage::decode(envelope, &Accept::default()).unwrap()
    }

    fn stored(status: &str, value: Value) -> Option<StoredResult> {
        Some(StoredResult { status: status.into(), value: Ok(value) })
    }

    #[test]
    fn celerys_chord_unlock_message_is_read_and_joined() {
        let unlock = parse(&golden()).unwrap();
        assert_eq!(unlock.members, ["aaaaaaaa-0000-0000-0000-000000000022", "aaaaaaaa-0000-0000-0000-000000000023"]);
        assert_eq!(unlock.interval, 1.0);
        assert_eq!(unlock.max_retries, None);
        assert_eq!(unlock.body.as_map().unwrap()["task"], Value::Str("tasks.tsum".into()));

        assert_eq!(unlock.shape, [Shape::Task, Shape::Task]);
        let m = &unlock.members;
        assert_eq!(join(m, &[stored("SUCCESS", Value::Int(1)), None]), Join::Waiting);
        assert_eq!(join(m, &[stored("SUCCESS", Value::Int(1)), stored("STARTED", Value::Null)]), Join::Waiting);
        assert_eq!(
            join(m, &[stored("SUCCESS", Value::Int(1)), stored("SUCCESS", Value::Int(2))]),
            Join::Ready(vec![Value::Int(1), Value::Int(2)])
        );
        let mut exc = Map::new();
        exc.insert("exc_type".into(), Value::Str("ValueError".into()));
        exc.insert("exc_message".into(), Value::List(vec![Value::Str("bad".into())]));
        assert_eq!(
            join(m, &[stored("FAILURE", Value::Map(exc)), stored("SUCCESS", Value::Int(2))]),
            Join::Failed("Dependency aaaaaaaa-0000-0000-0000-000000000022 raised ValueError('bad')".into())
        );
    }

    #[test]
    fn nested_groups_in_a_header_are_read_and_joined_as_lists() {
        let tuple = |id: &str| Value::List(vec![Value::List(vec![Value::Str(id.into()), Value::Null]), Value::Null]);
        let group = |id: &str, members: Vec<Value>| {
            Value::List(vec![Value::List(vec![Value::Str(id.into()), Value::Null]), Value::List(members)])
        };
        let header = [tuple("a"), group("g", vec![tuple("b"), group("h", vec![tuple("c")])]), tuple("d")];
        let mut members = Vec::new();
        let shape: Vec<Shape> = header.iter().map(|t| member_shape(t, &mut members, 0).unwrap()).collect();
        assert_eq!(members, ["a", "b", "c", "d"]);
        let flat = vec![Value::Int(1), Value::Int(2), Value::Int(3), Value::Int(4)];
        assert_eq!(
            nest(&shape, flat),
            vec![Value::Int(1), Value::List(vec![Value::Int(2), Value::List(vec![Value::Int(3)])]), Value::Int(4)]
        );
        let mut deep = tuple("x");
        for _ in 0..40 {
            deep = group("g", vec![deep]);
        }
        assert!(member_shape(&deep, &mut Vec::new(), 0).is_err());
    }
}
