//! The handler registry: task name → Rust handler.

use std::{collections::HashMap, future::Future, pin::Pin, sync::Arc};

use celeriac_protocol::{Rate, RateError, Value};
use chrono::Utc;
use serde::{de::DeserializeOwned, Serialize};

use crate::task::{Outcome, Request, TaskError};

/// A boxed handler future.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// Something that runs a task. Implemented for closures by [`Registry::register_raw`]; the typed
/// forms wrap a closure in argument decoding and error mapping.
pub trait Handler: Send + Sync + 'static {
    /// Runs one delivery.
    fn call(&self, request: Request) -> HandlerFuture;

    /// Whether the handler applies expiry and time limits itself and logs its own outcome
    /// (embedded Python tasks, which run through Celery's worker code). If false (the default),
    /// the worker discards expired messages, enforces the hard time limit and logs outcomes.
    fn manages_execution(&self) -> bool {
        false
    }
}

impl<F, Fut> Handler for F
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    fn call(&self, request: Request) -> HandlerFuture {
        Box::pin(self(request))
    }
}

/// Task name → handler. Build one, register handlers, hand it to a [`crate::Worker`].
///
/// ```
/// use celeriac::{Registry, TaskError};
///
/// let mut registry = Registry::new();
/// registry.register("tasks.add", |(a, b): (i64, i64)| async move { Ok::<_, TaskError>(a + b) });
/// assert!(registry.contains("tasks.add"));
/// ```
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<String, Arc<dyn Handler>>,
    rate_limits: HashMap<String, DeclaredRateLimits>,
}

/// The rate limits a task declares (Celery's `rate_limit`, and celeriac's fleet-wide one).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeclaredRateLimits {
    /// Per worker process, as Celery enforces `rate_limit`.
    pub per_worker: Option<Rate>,
    /// Across every worker on the database (a token bucket in PostgreSQL).
    pub global: Option<Rate>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self.handlers.keys().collect();
        names.sort();
        f.debug_struct("Registry").field("tasks", &names).finish()
    }
}

fn outcome_of<R: Serialize>(result: Result<R, TaskError>, retries: i64) -> Outcome {
    match result {
        Ok(value) => match Value::from_serialize(&value) {
            Ok(v) => Outcome::Success(v),
            Err(e) => Outcome::failure("EncodeError", format!("the task's return value cannot be serialized: {e}")),
        },
        Err(e) => e.into_outcome(retries, Utc::now()),
    }
}

/// Keyword arguments of a handler that takes none: only an empty object deserializes.
struct NoKwargs;

impl<'de> serde::Deserialize<'de> for NoKwargs {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = NoKwargs;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("no keyword arguments")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(self, mut map: M) -> Result<NoKwargs, M::Error> {
                let mut names = Vec::new();
                while let Some((name, _)) = map.next_entry::<String, serde::de::IgnoredAny>()? {
                    names.push(name);
                }
                if names.is_empty() {
                    Ok(NoKwargs)
                } else {
                    Err(serde::de::Error::custom(format!("got unexpected keyword arguments: {}", names.join(", "))))
                }
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// The positional args as `A`, or the `TypeError` failure Python would raise.
fn typed_args<A: DeserializeOwned>(task: &str, req: &Request) -> Result<A, Outcome> {
    celeriac_protocol::de::from_args(req.args())
        .map_err(|e| Outcome::failure("TypeError", format!("{task}() arguments do not match: {e}")))
}

impl Registry {
    /// An empty registry.
    #[must_use]
    pub fn new() -> Self {
        Registry::default()
    }

    /// A registry with Celery's built-in tasks a worker must answer: `celery.ping` → `"pong"`,
    /// and `celery.accumulate` (returns its args, or `args[index]` with the `index` keyword).
    /// `celery.chord_unlock` and `celery.backend_cleanup` are run by the worker itself (they
    /// need its result backend), unless a handler of that name is registered (with `-A`, the
    /// app's own).
    #[must_use]
    pub fn with_builtins() -> Self {
        let mut r = Registry::new();
        r.register("celery.ping", |_args: Vec<Value>| async { Ok::<_, TaskError>("pong") });
        r.register_raw("celery.accumulate", |req: Request| async move {
            match req.kwargs().get("index") {
                None | Some(Value::Null) => Outcome::Success(Value::List(req.args().to_vec())),
                Some(Value::Int(i)) => {
                    let len = i64::try_from(req.args().len()).unwrap_or(i64::MAX);
                    let at = if *i < 0 { *i + len } else { *i };
                    match usize::try_from(at).ok().and_then(|at| req.args().get(at)) {
                        Some(v) => Outcome::Success(v.clone()),
                        None => Outcome::failure("IndexError", "tuple index out of range"),
                    }
                }
                Some(_) => Outcome::failure("TypeError", "tuple indices must be integers or slices"),
            }
        });
        r
    }

    /// Registers a handler taking the positional args as `A` (a tuple, a `Vec`, or any
    /// `Deserialize` type reading a list). Keyword arguments are refused with a `TypeError`
    /// failure, as Python would for a function without them. Args that do not fit `A` fail
    /// the task with `TypeError`.
    pub fn register<A, R, F, Fut>(&mut self, name: &str, f: F) -> &mut Self
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, TaskError>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.register_with_kwargs(name, move |args: A, _: NoKwargs| f(args))
    }

    /// Registers a handler taking positional args as `A` and keyword args as `K` (e.g. a
    /// `#[derive(Deserialize)]` struct with optional fields).
    pub fn register_with_kwargs<A, K, R, F, Fut>(&mut self, name: &str, f: F) -> &mut Self
    where
        A: DeserializeOwned + Send + 'static,
        K: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(A, K) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, TaskError>> + Send + 'static,
    {
        let f = Arc::new(f);
        let task = name.to_owned();
        self.register_raw(name, move |req: Request| {
            let f = f.clone();
            let task = task.clone();
            async move {
                let args: A = match typed_args(&task, &req) {
                    Ok(a) => a,
                    Err(failure) => return failure,
                };
                let kwargs: K = match celeriac_protocol::de::from_kwargs(req.kwargs()) {
                    Ok(k) => k,
                    Err(e) => {
                        return Outcome::failure("TypeError", format!("{task}() keyword arguments do not match: {e}"))
                    }
                };
                outcome_of(f(args, kwargs).await, req.retries())
            }
        })
    }

    /// Registers a handler that gets the whole [`Request`] (id, retries, headers, delivery info)
    /// and returns an [`Outcome`] itself.
    pub fn register_raw<H: Handler>(&mut self, name: &str, handler: H) -> &mut Self {
        self.handlers.insert(name.to_owned(), Arc::new(handler));
        self
    }

    /// The handler for `name`.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<Arc<dyn Handler>> {
        self.handlers.get(name).cloned()
    }

    /// Whether `name` has a handler.
    #[must_use]
    pub fn contains(&self, name: &str) -> bool {
        self.handlers.contains_key(name)
    }

    /// Limits `name` to `rate` per worker process, as Celery's `rate_limit` task option does
    /// (`"10/s"`, `"100/m"`, `"1000/h"`, a bare number per second; `"0"` or `""` for none).
    /// Messages waiting for a token stay in the database, not in the worker.
    ///
    /// # Errors
    /// [`RateError`] if `rate` is not a rate.
    pub fn rate_limit(&mut self, name: &str, rate: &str) -> Result<&mut Self, RateError> {
        self.rate_limits.entry(name.to_owned()).or_default().per_worker = Rate::parse(rate)?;
        Ok(self)
    }

    /// Limits `name` to `rate` across every worker on the database (a token bucket in
    /// PostgreSQL; an operator's `celeriac rate-limit set` overrides it). Same syntax as
    /// [`Registry::rate_limit`].
    ///
    /// # Errors
    /// [`RateError`] if `rate` is not a rate.
    pub fn global_rate_limit(&mut self, name: &str, rate: &str) -> Result<&mut Self, RateError> {
        self.rate_limits.entry(name.to_owned()).or_default().global = Rate::parse(rate)?;
        Ok(self)
    }

    /// The limits declared for `name` (none if it declares none).
    #[must_use]
    pub fn rate_limits(&self, name: &str) -> DeclaredRateLimits {
        self.rate_limits.get(name).cloned().unwrap_or_default()
    }

    /// Registered task names, sorted.
    #[must_use]
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.handlers.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}
