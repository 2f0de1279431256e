//! LISTEN/NOTIFY wake-ups on a dedicated connection, reconnecting with backoff.
//!
//! Notifications are hints: a worker that misses one (the connection dropped, PgBouncer in
//! transaction mode, a notification of a queue it does not consume) still polls. After each
//! (re)connect the listener reports a wake-up for every queue, since anything enqueued while it
//! was disconnected went unannounced.

use std::{future::Future, time::Duration};

use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;

use crate::service::Service;

/// The channel the insert trigger notifies.
pub const NOTIFY_CHANNEL: &str = "celeriac_message";
/// The channel `broadcast` inserts notify, naming exchanges (same payload format).
pub const BROADCAST_CHANNEL: &str = "celeriac_broadcast";

/// A parsed notification payload: which queues got ready messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wakeup {
    /// Some queue may have work (a reconnect, a rescue, or too many queues to list).
    Any,
    /// These queues got ready messages.
    Queues(Vec<String>),
}

impl Wakeup {
    /// Parses a `celeriac_message` payload: `*`, or a JSON array of queue names. Anything
    /// else counts as [`Wakeup::Any`] (a spurious wake-up only costs one claim).
    #[must_use]
    pub fn parse(payload: &str) -> Wakeup {
        match celeriac_protocol::json::from_slice(payload.as_bytes()) {
            Ok(celeriac_protocol::Value::List(items)) => {
                let names: Option<Vec<String>> = items.iter().map(|v| v.as_str().map(str::to_owned)).collect();
                names.map_or(Wakeup::Any, Wakeup::Queues)
            }
            _ => Wakeup::Any,
        }
    }

    /// Whether a worker consuming `queues` should look for work.
    #[must_use]
    pub fn concerns(&self, queues: &[String]) -> bool {
        match self {
            Wakeup::Any => true,
            Wakeup::Queues(q) => q.iter().any(|name| queues.contains(name)),
        }
    }
}

/// Receives wake-ups from `NOTIFY celeriac_message` (queues with new messages), or from
/// `NOTIFY celeriac_broadcast` (exchanges with new broadcasts). Created by
/// [`crate::Store::listener`] and [`crate::Store::broadcast_listener`].
#[derive(Debug, Clone)]
pub struct Listener {
    config: tokio_postgres::Config,
    max_backoff: Duration,
    /// False behind a transaction-mode pooler, where `LISTEN` cannot work.
    enabled: bool,
    /// [`NOTIFY_CHANNEL`] or [`BROADCAST_CHANNEL`].
    channel: &'static str,
}

impl Listener {
    pub(crate) fn new(config: tokio_postgres::Config, enabled: bool, channel: &'static str) -> Self {
        Listener { config, max_backoff: Duration::from_secs(5), enabled, channel }
    }

    /// Listens until `shutdown` resolves, calling `on_wakeup` for each notification and once
    /// after every successful (re)connect with [`Wakeup::Any`]. Connection failures are logged
    /// and retried with exponential backoff (100 ms doubling to 5 s). Behind a transaction-mode
    /// pooler ([`crate::Pooler::Transaction`]) it only waits for `shutdown`.
    pub async fn run<F, S>(self, on_wakeup: F, shutdown: S)
    where
        F: Fn(Wakeup) + Send + Sync,
        S: Future<Output = ()>,
    {
        if !self.enabled {
            tracing::info!("pooler=transaction: no LISTEN through a transaction-mode pooler; finding work by polling");
            return shutdown.await;
        }
        tokio::pin!(shutdown);
        let mut backoff = Duration::from_millis(100);
        loop {
            let session = self.session(&on_wakeup, &mut backoff);
            tokio::select! {
                () = &mut shutdown => return,
                result = session => {
                    if let Err(e) = result {
                        tracing::warn!(error = %e, retry_in = ?backoff, "notification listener lost its connection");
                    }
                }
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(self.max_backoff);
        }
    }

    async fn session<F: Fn(Wakeup)>(&self, on_wakeup: &F, backoff: &mut Duration) -> Result<(), tokio_postgres::Error> {
        let (client, mut connection) = self.config.connect(NoTls).await?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(n))) => {
                        if tx.send(n.payload().to_owned()).is_err() {
                            return Ok(());
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e),
                    None => return Ok(()),
                }
            }
        });
        client.batch_execute(&format!("listen {}", self.channel)).await?;
        *backoff = Duration::from_millis(100);
        on_wakeup(Wakeup::Any);
        while let Some(payload) = rx.recv().await {
            on_wakeup(Wakeup::parse(&payload));
        }
        drop(client);
        match driver.await {
            Ok(Err(e)) => Err(e),
            _ => Ok(()),
        }
    }
}

/// A [`Listener`] run as a [`Service`], calling `on_wakeup` for each wake-up.
pub struct Listening<F> {
    listener: Listener,
    on_wakeup: F,
}

impl Listener {
    /// This listener as a service that calls `on_wakeup` for each wake-up.
    #[must_use]
    pub fn service<F: Fn(Wakeup) + Send + Sync + 'static>(self, on_wakeup: F) -> Listening<F> {
        Listening { listener: self, on_wakeup }
    }
}

impl<F: Fn(Wakeup) + Send + Sync + 'static> Service for Listening<F> {
    fn name(&self) -> &'static str {
        "listener"
    }

    async fn run(self, shutdown: CancellationToken) {
        self.listener.run(self.on_wakeup, shutdown.cancelled_owned()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the `wakeup` fuzz target checks for one payload (fuzz/fuzz_targets/wakeup.rs).
    fn check(payload: &str) -> Wakeup {
        let wakeup = Wakeup::parse(payload);
        if let Wakeup::Queues(queues) = &wakeup {
            assert!(queues.iter().map(String::len).sum::<usize>() <= payload.len(), "names longer than the payload");
            assert!(wakeup.concerns(queues) || queues.is_empty());
        }
        wakeup
    }

    #[test]
    fn parses_queue_lists_and_treats_anything_else_as_any() {
        assert_eq!(check("*"), Wakeup::Any);
        assert_eq!(check(r#"["a", "b\u00fc"]"#), Wakeup::Queues(vec!["a".into(), "b\u{fc}".into()]));
        assert_eq!(check("[]"), Wakeup::Queues(Vec::new()));
        for other in ["", "[1]", r#"["a", null]"#, "{}", "[", "\"a\"", &"[".repeat(10_000)] {
            assert_eq!(check(other), Wakeup::Any, "{other:?}");
        }
        assert!(!check(r#"["a"]"#).concerns(&["b".into()]));
    }

    #[test]
    fn wakeup_parse_replays_the_fuzz_corpus() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/wakeup");
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            if let Ok(payload) = std::str::from_utf8(&data) {
                check(payload);
            }
            count += 1;
        }
        assert!(count >= 3, "the corpus in {} has {count} inputs", dir.display());
    }
}
