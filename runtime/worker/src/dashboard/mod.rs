//! `celeriac dashboard` (and `celeriac worker --dashboard PORT`): a web UI over the queue
//! database. Pages are rendered on the server from the store's bounded queries (counts exact up
//! to a bound and estimated beyond it, keyset pagination, searches cut after a timeout), so
//! they stay fast with millions of rows.
//!
//! Access: bound to localhost unless told otherwise. With `--basic-auth` or `--token`, every
//! page but the probes and `/metrics` needs them; without, actions are allowed only on a
//! loopback address (a public address needs credentials or `--read-only`), and then only to a
//! loopback `Host` (against DNS rebinding). Actions are POSTs from the dashboard's own pages: a
//! request whose `Origin` or `Sec-Fetch-Site` says another site sent it is refused, and no page
//! may be framed by another (`X-Frame-Options`, CSP `frame-ancestors`).

mod html;
mod pages;

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    extract::{Request, State},
    http::{header, HeaderMap, Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
    Router,
};
use base64::Engine as _;
use celeriac_store::{QueueOverview, ResultTable, Store};
use tokio_util::sync::CancellationToken;

/// How the dashboard is served.
#[derive(Debug, Clone)]
pub struct DashboardConfig {
    /// Where to listen.
    pub address: SocketAddr,
    /// Refuse every action (pages only).
    pub read_only: bool,
    /// `user:password` for HTTP basic authentication.
    pub basic_auth: Option<String>,
    /// A bearer token (`Authorization: Bearer …`, or as the basic-auth password).
    pub token: Option<String>,
    /// The result table to read (`[schema.]table`); default `celery_taskmeta`, else
    /// django-celery-results' table, when the queue database has one.
    pub result_table: Option<String>,
    /// The apps' `control_exchange` (revokes are broadcast on `<it>.pidbox`).
    pub control_exchange: String,
}

/// Why the dashboard cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DashboardError {
    /// The address cannot be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A public address without credentials or read-only mode.
    #[error(
        "the dashboard on {0} would let anyone who reaches it pause queues and purge messages: give --basic-auth \
         USER:PASSWORD or --token TOKEN, or --read-only (or bind it to 127.0.0.1)"
    )]
    Unprotected(SocketAddr),
    /// `--basic-auth` without a colon.
    #[error("--basic-auth takes USER:PASSWORD")]
    BadBasicAuth,
}

/// What every handler shares.
pub(crate) struct Dashboard {
    store: Store,
    config: DashboardConfig,
    results: Option<ResultTable>,
    /// The overview's per-queue counts, and when they were read: reused for 2 s, so a page
    /// reloaded by several browsers does not count again.
    overview: tokio::sync::Mutex<Option<(Instant, Arc<Vec<QueueOverview>>)>>,
}

/// How long per-queue counts are reused.
const OVERVIEW_TTL: Duration = Duration::from_secs(2);

impl Dashboard {
    /// The per-queue counts, read again when older than [`OVERVIEW_TTL`].
    pub(crate) async fn queues(&self) -> celeriac_store::Result<Arc<Vec<QueueOverview>>> {
        let mut cached = self.overview.lock().await;
        if let Some((at, queues)) = cached.as_ref() {
            if at.elapsed() < OVERVIEW_TTL {
                return Ok(queues.clone());
            }
        }
        let names = self.store.queue_names().await?;
        let reads = names.iter().map(|name| self.store.queue_overview(name));
        let queues: Vec<QueueOverview> = futures_util::future::try_join_all(reads).await?;
        let queues = Arc::new(queues);
        *cached = Some((Instant::now(), queues.clone()));
        Ok(queues)
    }

    /// Forgets the cached counts (after an action changed them).
    pub(crate) async fn invalidate(&self) {
        *self.overview.lock().await = None;
    }
}

/// Binds the dashboard's address and checks its access settings.
///
/// # Errors
/// [`DashboardError`].
pub async fn bind(config: &DashboardConfig) -> Result<tokio::net::TcpListener, DashboardError> {
    if let Some(basic) = &config.basic_auth {
        if !basic.contains(':') {
            return Err(DashboardError::BadBasicAuth);
        }
    }
    let protected = config.read_only || config.basic_auth.is_some() || config.token.is_some();
    if !config.address.ip().is_loopback() && !protected {
        return Err(DashboardError::Unprotected(config.address));
    }
    tokio::net::TcpListener::bind(config.address)
        .await
        .map_err(|source| DashboardError::Bind { address: config.address, source })
}

/// Serves the dashboard on `listener` until `shutdown`.
pub async fn serve(
    store: Store,
    config: DashboardConfig,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) {
    let results = match store.result_table_find(config.result_table.as_deref()).await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!("dashboard: cannot look for a result table ({e}); task pages show no results");
            None
        }
    };
    let address = listener.local_addr().map_or_else(|_| config.address.to_string(), |a| a.to_string());
    tracing::info!(
        "dashboard: http://{address}/{}{}",
        if config.read_only { " (read-only)" } else { "" },
        results
            .as_ref()
            .map_or_else(|| ", no result table".to_owned(), |t| format!(", results from {}", t.qualified()))
    );
    let dashboard = Arc::new(Dashboard { store, config, results, overview: tokio::sync::Mutex::new(None) });
    let app = router(dashboard);
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await {
        tracing::error!("dashboard: the HTTP server stopped: {e}");
    }
}

fn router(dashboard: Arc<Dashboard>) -> Router {
    let guarded = Router::new()
        .route("/", get(pages::overview))
        .route("/queues", get(pages::queues))
        .route("/queues/{name}/pause", post(pages::queue_pause))
        .route("/queues/{name}/resume", post(pages::queue_resume))
        .route("/queues/{name}/purge", get(pages::queue_purge_form).post(pages::queue_purge))
        .route("/tasks", get(pages::tasks))
        .route("/tasks/{id}", get(pages::task))
        .route("/tasks/{id}/revoke", post(pages::task_revoke))
        .route("/tasks/{id}/retry", post(pages::task_retry))
        .route("/messages/{id}", get(pages::message))
        .route("/dead-letters", get(pages::dead_letters))
        .route("/dead-letters/redrive", post(pages::dead_letters_redrive))
        .route("/dead-letters/purge", post(pages::dead_letters_purge))
        .route("/dead-letters/{id}", get(pages::dead_letter))
        .route("/schedules", get(pages::schedules))
        .route("/schedules/{name}/{action}", post(pages::schedule_action))
        .route("/workers", get(pages::workers))
        .layer(axum::middleware::from_fn_with_state(dashboard.clone(), guard));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(pages::ready))
        .route("/metrics", get(pages::metrics))
        .merge(guarded)
        .layer(axum::middleware::map_response(protect))
        .with_state(dashboard)
}

/// Every response: never framed by another page (a click in a frame would be a same-origin
/// POST), no script, no resource from elsewhere, forms only to the dashboard itself.
async fn protect(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::X_FRAME_OPTIONS, header::HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, header::HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, header::HeaderValue::from_static("same-origin"));
    response
}

/// Access control for every page and action: credentials when configured, no actions in
/// read-only mode or from another site, none without credentials off loopback.
async fn guard(State(d): State<Arc<Dashboard>>, request: Request, next: Next) -> Response {
    let needs_credentials = d.config.basic_auth.is_some() || d.config.token.is_some();
    // Without credentials the dashboard trusts whoever reaches its loopback address; a page
    // elsewhere could reach it through a DNS name re-pointed at 127.0.0.1 (DNS rebinding), so
    // only a loopback Host is served then.
    if !needs_credentials && d.config.address.ip().is_loopback() && !loopback_host(request.headers()) {
        return (StatusCode::FORBIDDEN, pages::refusal("Refused: this dashboard answers only to localhost."))
            .into_response();
    }
    if needs_credentials && !authenticated(&d.config, request.headers()) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"celeriac\", charset=\"UTF-8\"")],
            "authentication required\n",
        )
            .into_response();
    }
    let action = request.method() == Method::POST;
    if action {
        if d.config.read_only {
            return (StatusCode::FORBIDDEN, pages::refusal("The dashboard is read-only: actions are off."))
                .into_response();
        }
        if cross_site(request.headers()) {
            return (StatusCode::FORBIDDEN, pages::refusal("Refused: the request came from another site."))
                .into_response();
        }
    }
    next.run(request).await
}

/// Whether the request carries the configured basic credentials or token.
fn authenticated(config: &DashboardConfig, headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    if let (Some(token), Some(given)) = (&config.token, value.strip_prefix("Bearer ")) {
        return same(given.trim().as_bytes(), token.as_bytes());
    }
    let Some(encoded) = value.strip_prefix("Basic ") else { return false };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else { return false };
    let Some(colon) = decoded.iter().position(|b| *b == b':') else { return false };
    let (_, password) = decoded.split_at(colon + 1);
    let basic_ok = config.basic_auth.as_ref().is_some_and(|b| same(&decoded, b.as_bytes()));
    let token_ok = config.token.as_ref().is_some_and(|t| same(password, t.as_bytes()));
    basic_ok || token_ok
}

/// Whether the request's `Host` names the loopback interface (`localhost`, `127.x.x.x`,
/// `[::1]`, with any port).
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else { return false };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Byte strings compared in time independent of where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether the browser says another site made this request (`Sec-Fetch-Site`, else an
/// `Origin` whose host is not the request's `Host`).
fn cross_site(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return !matches!(site, "same-origin" | "none");
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else { return false };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    origin == "null" || origin_host != host
}

/// A redirect after an action to `to`, with `message` shown there.
pub(crate) fn done(to: &str, message: &str) -> Response {
    let sep = if to.contains('?') { '&' } else { '?' };
    Redirect::to(&format!("{to}{sep}done={}", html::url(message))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> DashboardConfig {
        DashboardConfig {
            address: "127.0.0.1:0".parse().unwrap(),
            read_only: false,
            basic_auth: Some("admin:s3cret".into()),
            token: Some("tok".into()),
            result_table: None,
            control_exchange: "celery".into(),
        }
    }

    fn with(name: header::HeaderName, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, value.parse().unwrap());
        h
    }

    #[test]
    fn credentials_are_checked() {
        let basic = |s: &str| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(s));
        let c = config();
        assert!(authenticated(&c, &with(header::AUTHORIZATION, &basic("admin:s3cret"))));
        assert!(!authenticated(&c, &with(header::AUTHORIZATION, &basic("admin:wrong"))));
        assert!(authenticated(&c, &with(header::AUTHORIZATION, &basic("anyone:tok"))));
        assert!(authenticated(&c, &with(header::AUTHORIZATION, "Bearer tok")));
        assert!(!authenticated(&c, &with(header::AUTHORIZATION, "Bearer tok2")));
        assert!(!authenticated(&c, &HeaderMap::new()));
    }

    #[test]
    fn cross_site_posts_are_recognised() {
        assert!(cross_site(&with(header::HeaderName::from_static("sec-fetch-site"), "cross-site")));
        assert!(!cross_site(&with(header::HeaderName::from_static("sec-fetch-site"), "same-origin")));
        let mut h = with(header::ORIGIN, "http://evil.example");
        h.insert(header::HOST, "127.0.0.1:5555".parse().unwrap());
        assert!(cross_site(&h));
        let mut h = with(header::ORIGIN, "http://127.0.0.1:5555");
        h.insert(header::HOST, "127.0.0.1:5555".parse().unwrap());
        assert!(!cross_site(&h));
        assert!(!cross_site(&HeaderMap::new()));
    }

    #[test]
    fn only_a_loopback_host_is_trusted_without_credentials() {
        for host in ["localhost:5555", "127.0.0.1:5555", "[::1]:5555", "LOCALHOST", "127.0.0.2"] {
            assert!(loopback_host(&with(header::HOST, host)), "{host}");
        }
        for host in ["evil.example:5555", "evil.example", "10.0.0.1:5555", "[fe80::1]:80", "localhost.evil.example"] {
            assert!(!loopback_host(&with(header::HOST, host)), "{host}");
        }
        assert!(!loopback_host(&HeaderMap::new()));
    }

    #[tokio::test]
    async fn a_public_address_needs_credentials_or_read_only() {
        let open = DashboardConfig { address: "0.0.0.0:0".parse().unwrap(), basic_auth: None, token: None, ..config() };
        assert!(matches!(bind(&open).await, Err(DashboardError::Unprotected(_))));
        let read_only = DashboardConfig { read_only: true, ..open.clone() };
        assert!(bind(&read_only).await.is_ok());
        let bad = DashboardConfig { basic_auth: Some("nocolon".into()), ..config() };
        assert!(matches!(bind(&bad).await, Err(DashboardError::BadBasicAuth)));
    }
}
