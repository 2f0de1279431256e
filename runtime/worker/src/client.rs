//! Enqueueing from Rust.

use celeriac_protocol::{encode_task, Map, TaskOptions, Value};
use celeriac_store::{NewMessage, Store};
use chrono::Utc;

use crate::Error;

/// Sends tasks to the queue, building messages exactly as Celery's `apply_async` would.
#[derive(Debug, Clone)]
pub struct Client {
    store: Store,
}

/// Encodes one message as `apply_async` would at this moment, with `origin = gen<pid>@<host>`
/// unless the options name one; nothing is sent.
///
/// # Errors
/// [`Error::Encode`] for options out of range.
pub fn build_message(name: &str, args: &[Value], kwargs: &Map, options: &TaskOptions) -> Result<NewMessage, Error> {
    let mut options = options.clone();
    if options.origin == TaskOptions::default().origin {
        options.origin = format!("gen{}@{}", std::process::id(), crate::hostname());
    }
    Ok(encode_task(name, args, kwargs, &options, Utc::now())?.into())
}

impl Client {
    /// A client on `store`; messages carry `origin = gen<pid>@<host>` like Celery's.
    #[must_use]
    pub fn new(store: Store) -> Self {
        Client { store }
    }

    /// Encodes one message without sending it (see [`build_message`]).
    ///
    /// # Errors
    /// [`Error::Encode`] for options out of range.
    pub fn build(&self, name: &str, args: &[Value], kwargs: &Map, options: &TaskOptions) -> Result<NewMessage, Error> {
        build_message(name, args, kwargs, options)
    }

    /// Enqueues one task and returns its id.
    ///
    /// # Errors
    /// Encoding or database errors.
    pub async fn send_task(
        &self,
        name: &str,
        args: &[Value],
        kwargs: &Map,
        options: &TaskOptions,
    ) -> Result<String, Error> {
        let message = self.build(name, args, kwargs, options)?;
        self.store.message_insert(&message).await?;
        Ok(message.task_id.unwrap_or_default())
    }

    /// Enqueues many prepared messages in one transaction.
    ///
    /// # Errors
    /// Database errors (then nothing was enqueued).
    pub async fn send_many(&self, messages: &[NewMessage]) -> Result<u64, Error> {
        Ok(self.store.message_insert_many(messages).await?)
    }
}
