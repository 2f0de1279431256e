//! Celery's Redis result backend (`redis://`): the meta dict under `celery-task-meta-<id>`,
//! stored with `SETEX` (`result_expires`) and published on the key's channel, which
//! `AsyncResult.get()` subscribes to — one pipeline, as Celery's `RedisBackend._set` does.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::sync::Mutex;

/// A connection to the result Redis, reopened after an error.
pub(crate) struct RedisResults {
    client: redis::Client,
    connection: Mutex<Option<MultiplexedConnection>>,
    /// `result_backend_transport_options['global_keyprefix']` + `celery-task-meta-`.
    task_prefix: String,
    expires: Option<Duration>,
}

impl std::fmt::Debug for RedisResults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisResults").field("task_prefix", &self.task_prefix).finish_non_exhaustive()
    }
}

impl RedisResults {
    /// A backend for `url` (`redis://[:password@]host:port/db` or `unix://`). Connects lazily.
    pub(crate) fn new(url: &str, global_keyprefix: Option<&str>, expires: Option<Duration>) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("cannot read the Redis URL: {e}"))?;
        let mut task_prefix = String::new();
        if let Some(p) = global_keyprefix.filter(|p| !p.is_empty()) {
            task_prefix.push_str(p);
            if !p.ends_with([':', '_', '-', '.']) {
                task_prefix.push('_');
            }
        }
        task_prefix.push_str("celery-task-meta-");
        Ok(RedisResults { client, connection: Mutex::new(None), task_prefix, expires })
    }

    async fn connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        let mut slot = self.connection.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = self.client.get_multiplexed_async_connection().await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// The key of a task's meta.
    pub(crate) fn key(&self, task_id: &str) -> String {
        format!("{}{task_id}", self.task_prefix)
    }

    /// Stores `meta` for `task_id` and publishes it.
    pub(crate) async fn store(&self, task_id: &str, meta: &[u8]) -> redis::RedisResult<()> {
        let key = self.key(task_id);
        let mut pipe = redis::pipe();
        match self.expires.map(|d| d.as_secs().max(1)) {
            Some(secs) => pipe.cmd("SETEX").arg(&key).arg(secs).arg(meta).ignore(),
            None => pipe.cmd("SET").arg(&key).arg(meta).ignore(),
        };
        pipe.cmd("PUBLISH").arg(&key).arg(meta).ignore();
        let mut connection = self.connection().await?;
        let result = pipe.query_async::<()>(&mut connection).await;
        if result.is_err() {
            // Reconnect for the next write.
            *self.connection.lock().await = None;
        }
        result
    }

    /// The stored metas of `task_ids`, in that order.
    pub(crate) async fn get_many(&self, task_ids: &[String]) -> redis::RedisResult<Vec<Option<Vec<u8>>>> {
        if task_ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = task_ids.iter().map(|id| self.key(id)).collect();
        let mut connection = self.connection().await?;
        let result = redis::cmd("MGET").arg(&keys).query_async(&mut connection).await;
        if result.is_err() {
            *self.connection.lock().await = None;
        }
        result
    }
}
