//! Celery's Redis result backend (`redis://`): the meta dict under `celery-task-meta-<id>`,
//! stored with `SETEX` (`result_expires`) and published on the key's channel, which
//! `AsyncResult.get()` subscribes to — one pipeline, as Celery's `RedisBackend._set` does.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::sync::Mutex;

/// One header task's part of a Redis-counted chord, in one script: unless the chord is done
/// already (`.c` = `done`), record the part once per (task id, index) (`.d`) in `.j` (a sorted
/// set by index, or a list), refresh the keys' expiry, and when the parts reach the chord's size
/// (`.s`, plus `.t`) take the dispatch claim (`.c`, set if absent, with a timeout). Returns
/// `{parts, diff, size, claimed}`, or `{-1, 0, 0, 0}` for a chord already done. The keys and
/// their meaning are those of Celery 5.7's Redis backend, so Python and Rust header tasks count
/// together.
const CHORD_PART: &str = r"
local parts, diff_key, size_key, seen_key, group_key, claim_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local task_id, encoded, sorted, index = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local ttl, group_ttl, claim_ttl, token = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
if redis.call('GET', claim_key) == 'done' then
    return {-1, 0, 0, 0}
end
local seen = task_id .. ':' .. index
if redis.call('SISMEMBER', seen_key, seen) == 0 then
    if sorted == '1' then
        redis.call('ZADD', parts, index, encoded)
    else
        redis.call('RPUSH', parts, encoded)
    end
    redis.call('SADD', seen_key, seen)
end
local count
if sorted == '1' then
    count = redis.call('ZCARD', parts)
else
    count = redis.call('LLEN', parts)
end
if ttl > 0 then
    redis.call('EXPIRE', parts, ttl)
    redis.call('EXPIRE', diff_key, ttl)
    redis.call('EXPIRE', size_key, ttl)
    redis.call('EXPIRE', seen_key, ttl)
    if group_ttl > 0 then
        redis.call('EXPIRE', group_key, group_ttl)
    end
end
local diff = redis.call('GET', diff_key)
local size = redis.call('GET', size_key)
local claimed = 0
if size and count == tonumber(size) + tonumber(diff or 0) then
    if redis.call('SET', claim_key, token, 'NX', 'EX', claim_ttl) then
        claimed = 1
    end
end
return {count, diff, size, claimed}
";

/// After the body is published: while the claim is still ours, drop the chord's keys and mark it
/// done (so a late duplicate of a header task cannot count it again).
const CHORD_DONE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return 0
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
redis.call('SET', KEYS[1], 'done', 'EX', tonumber(ARGV[2]))
return 1
";

/// Extends the dispatch claim while it is ours, or takes it again if it ran out while the
/// chord is still there.
const CHORD_CLAIM_EXTEND: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
    return redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
end
if not holder and redis.call('EXISTS', KEYS[2]) == 1 then
    if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', tonumber(ARGV[2])) then
        return 1
    end
end
return 0
";

/// Stores a task's meta and publishes it, unless a `SUCCESS` is stored already (Celery 5.7
/// ignores any write after `SUCCESS`). KEYS[1] the key; ARGV: the meta, the seconds to keep it
/// (0: forever).
const STORE: &str = r#"
local current = redis.call('GET', KEYS[1])
if current and string.find(current, '"status": "SUCCESS"', 1, true) then
    return 0
end
local ttl = tonumber(ARGV[2])
if ttl > 0 then
    redis.call('SETEX', KEYS[1], ttl, ARGV[1])
else
    redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"#;

/// How long a dispatch claim lasts (Celery's, with its default `result_chord_join_timeout`).
const CLAIM_SECONDS: u64 = 10;

/// A chord whose last header part this task recorded, with the dispatch claim held.
#[derive(Debug)]
pub(crate) struct ChordClaim {
    /// The parts as recorded: Celery's `[1, task id, state, result]`, JSON-encoded, in order.
    pub parts: Vec<Vec<u8>>,
    token: String,
    group_id: String,
}

impl ChordClaim {
    /// The chord's group id.
    pub(crate) fn group_id(&self) -> &str {
        &self.group_id
    }
}

/// The client for a Celery Redis backend URL. For `rediss://` (or `redis://` with the app's
/// `redis_backend_use_ssl`), Celery's `ssl_cert_reqs`, `ssl_ca_certs`, `ssl_certfile` and
/// `ssl_keyfile` query parameters (over `ssl`, `redis_backend_use_ssl`) become rustls settings:
/// the server's certificate verified against the CA file (else the system's roots) unless
/// `ssl_cert_reqs` is `none`, and a client certificate (its key from `ssl_keyfile`, else from
/// the certificate file). rustls always checks the server's name (redis-py only from 6.0).
fn client(url: &str, ssl: &super::RedisSsl) -> Result<redis::Client, String> {
    // Celery's `redis_backend_use_ssl` makes a `redis://` backend use TLS too.
    let tls_url;
    let url = match url.strip_prefix("redis://") {
        Some(rest) if *ssl != super::RedisSsl::default() => {
            tls_url = format!("rediss://{rest}");
            tls_url.as_str()
        }
        _ => url,
    };
    if !url.starts_with("rediss://") {
        return redis::Client::open(url).map_err(|e| format!("cannot read the Redis URL: {e}"));
    }
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut ssl = ssl.clone();
    let mut kept = Vec::new();
    // As kombu's `parse_qsl`: `+` is a space, and empty values are left out.
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()).filter(|(_, v)| !v.is_empty()) {
        let value = value.into_owned();
        match key.as_ref() {
            "ssl_cert_reqs" => ssl.cert_reqs = Some(value),
            "ssl_ca_certs" => ssl.ca_certs = Some(value),
            "ssl_certfile" => ssl.certfile = Some(value),
            "ssl_keyfile" => ssl.keyfile = Some(value),
            _ => kept.push((key.into_owned(), value)),
        }
    }
    let verify = match ssl.cert_reqs.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("required" | "cert_required" | "optional" | "cert_optional") => true,
        Some("none" | "cert_none") => false,
        Some(other) => {
            return Err(format!(
                "ssl_cert_reqs={other}: Celery's values are CERT_REQUIRED, CERT_OPTIONAL and CERT_NONE"
            ))
        }
    };
    let mut url = base.to_owned();
    if !kept.is_empty() {
        url.push('?');
        url.push_str(&url::form_urlencoded::Serializer::new(String::new()).extend_pairs(kept).finish());
    }
    if !verify {
        // redis-rs's way to skip the server certificate's verification.
        url.push_str("#insecure");
    }
    let read =
        |what: &str, path: &str| std::fs::read(path).map_err(|e| format!("cannot read the Redis {what} {path}: {e}"));
    let client_tls = match (&ssl.certfile, &ssl.keyfile) {
        // Python's `load_cert_chain(certfile)` reads the key from the certificate file too.
        (Some(cert), key) => Some(redis::ClientTlsConfig {
            client_cert: read("client certificate", cert)?,
            client_key: read("client key", key.as_ref().unwrap_or(cert))?,
        }),
        (None, None) => None,
        (None, Some(_)) => return Err("ssl_keyfile needs ssl_certfile".into()),
    };
    let root_cert = ssl.ca_certs.as_deref().map(|path| read("CA certificates", path)).transpose()?;
    let info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
        .map_err(|e| format!("cannot read the Redis URL: {e}"))?;
    redis::Client::build_with_tls(info, redis::TlsCertificates { client_tls, root_cert })
        .map_err(|e| format!("cannot set up TLS to Redis: {e}"))
}

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
    /// A backend for `url` (`redis://[:password@]host:port/db`, `rediss://…` with `ssl`
    /// and Celery's `ssl_*` query parameters, or `unix://`). Connects lazily.
    pub(crate) fn new(
        url: &str,
        global_keyprefix: Option<&str>,
        expires: Option<Duration>,
        ssl: &super::RedisSsl,
    ) -> Result<Self, String> {
        let client = client(url, ssl)?;
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

    /// Stores `meta` for `task_id` and publishes it (`SETEX` + `PUBLISH`, as Celery's
    /// `RedisBackend._set`), unless a `SUCCESS` is stored already.
    pub(crate) async fn store(&self, task_id: &str, meta: &[u8]) -> redis::RedisResult<()> {
        let key = self.key(task_id);
        let ttl = self.expires.map_or(0, |d| d.as_secs().max(1));
        let mut connection = self.connection().await?;
        let result = redis::Script::new(STORE).key(&key).arg(meta).arg(ttl).invoke_async::<i64>(&mut connection).await;
        if result.is_err() {
            // Reconnect for the next write.
            *self.connection.lock().await = None;
        }
        result.map(drop)
    }

    /// See [`CHORD_CLAIM_EXTEND`].
    pub(crate) async fn chord_claim_extend(&self, claim: &ChordClaim) -> redis::RedisResult<bool> {
        let g = &claim.group_id;
        let mut connection = self.connection().await?;
        let held: i64 = redis::Script::new(CHORD_CLAIM_EXTEND)
            .key(self.group_key(g, ".c"))
            .key(self.group_key(g, ".s"))
            .arg(&claim.token)
            .arg(CLAIM_SECONDS * 3)
            .invoke_async(&mut connection)
            .await?;
        Ok(held == 1)
    }

    fn group_key(&self, group_id: &str, suffix: &str) -> String {
        let global = self.task_prefix.strip_suffix("celery-task-meta-").unwrap_or_default();
        format!("{global}celery-taskset-meta-{group_id}{suffix}")
    }

    /// Records a header task's part of a chord counted in Redis (see [`CHORD_PART`]); returns the
    /// claim when this part completed the chord.
    pub(crate) async fn chord_part(
        &self,
        group_id: &str,
        task_id: &str,
        index: Option<i64>,
        encoded: &[u8],
        sorted: bool,
    ) -> redis::RedisResult<Option<ChordClaim>> {
        let keys: Vec<String> =
            [".j", ".t", ".s", ".d", "", ".c"].iter().map(|suffix| self.group_key(group_id, suffix)).collect();
        let ttl = self.expires.map_or(0, |d| d.as_secs());
        let token = uuid::Uuid::new_v4().simple().to_string();
        let index = index.map_or_else(|| "+inf".to_owned(), |i| i.to_string());
        let mut connection = self.connection().await?;
        let script = redis::Script::new(CHORD_PART);
        let mut call = script.prepare_invoke();
        for key in &keys {
            call.key(key);
        }
        call.arg(task_id).arg(encoded).arg(if sorted { "1" } else { "0" }).arg(&index);
        call.arg(ttl).arg(ttl).arg(CLAIM_SECONDS).arg(&token);
        let result: redis::RedisResult<(i64, Option<i64>, Option<i64>, i64)> = call.invoke_async(&mut connection).await;
        let (count, diff, size, claimed) = match result {
            Ok(r) => r,
            Err(e) => {
                *self.connection.lock().await = None;
                return Err(e);
            }
        };
        let Some(size) = size.filter(|_| count >= 0 && claimed == 1) else { return Ok(None) };
        if count != size + diff.unwrap_or(0) {
            return Ok(None);
        }
        let parts: Vec<Vec<u8>> = if sorted {
            redis::cmd("ZRANGE").arg(&keys[0]).arg(0).arg(-1).query_async(&mut connection).await?
        } else {
            redis::cmd("LRANGE").arg(&keys[0]).arg(0).arg(-1).query_async(&mut connection).await?
        };
        Ok(Some(ChordClaim { parts, token, group_id: group_id.to_owned() }))
    }

    /// After the body is published: releases the claim, drops the chord's keys, marks it done.
    pub(crate) async fn chord_done(&self, claim: &ChordClaim) -> redis::RedisResult<bool> {
        let g = &claim.group_id;
        let keys = [".c", ".j", ".t", ".s", ".d"].map(|suffix| self.group_key(g, suffix));
        let mut connection = self.connection().await?;
        let script = redis::Script::new(CHORD_DONE);
        let mut call = script.prepare_invoke();
        for key in &keys {
            call.key(key);
        }
        call.arg(&claim.token).arg((CLAIM_SECONDS * 4).max(300));
        let done: i64 = call.invoke_async(&mut connection).await?;
        Ok(done == 1)
    }

    /// After a failed chord (its body failed with ChordError): drops the size, so a late
    /// duplicate of a header task does not fail it again.
    pub(crate) async fn chord_failed(&self, group_id: &str) -> redis::RedisResult<()> {
        let mut connection = self.connection().await?;
        redis::cmd("DEL").arg(self.group_key(group_id, ".s")).query_async(&mut connection).await
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
