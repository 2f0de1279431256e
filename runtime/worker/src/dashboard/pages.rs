//! The dashboard's pages and actions.

use std::{collections::HashMap, fmt::Write as _, sync::Arc};

use axum::{
    extract::{Form, Path, Query, State},
    http::StatusCode,
    response::{Html, IntoResponse, Response},
};
use celeriac_protocol::{pidbox, pyrepr, DeadLetterReason, Envelope, Limits, TaskOptions};
use celeriac_store::{
    DeadLetterFilter, DeadLetterSearch, MessageFilter, MessageState, ResultSearch, Revocation, REVOKE_EXPIRES,
};
use chrono::{DateTime, Utc};

use super::{
    done,
    html::{age, button, chart, count, esc, group, page, table, time, url},
    Dashboard,
};

type D = State<Arc<Dashboard>>;
type Params = Query<HashMap<String, String>>;

/// Rows per page of a search.
const PAGE: i64 = 50;

/// A query parameter, when given and not blank.
fn param<'a>(q: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    q.get(name).map(|s| s.trim()).filter(|s| !s.is_empty())
}

/// The page frame around `body`, with the last action's message.
fn frame(d: &Dashboard, q: &HashMap<String, String>, title: &str, here: &str, body: &str) -> Response {
    Html(page(title, here, d.config.read_only, param(q, "done"), None, body)).into_response()
}

/// A store error as a page: 503 when the database did not answer, 404 for something that does
/// not exist (a schedule removed meanwhile), else 500 with the server's reason.
fn failed(e: &celeriac_store::Error) -> Response {
    let (status, what) = match e {
        e if e.is_connection() => (StatusCode::SERVICE_UNAVAILABLE, "The database did not answer"),
        celeriac_store::Error::NotFound(_) => (StatusCode::NOT_FOUND, "Not found"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "The database refused"),
    };
    let body = format!("<p class=\"error\">{what}: {}</p>", esc(&e.to_string()));
    (status, Html(page("Error", "", false, None, None, &body))).into_response()
}

/// The page a refused action gets.
pub(super) fn refusal(why: &str) -> Html<String> {
    Html(page("Refused", "", true, None, None, &format!("<p class=\"error\" id=\"refused\">{}</p>", esc(why))))
}

macro_rules! db {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return failed(&e),
        }
    };
}

fn queue_link(queue: &str) -> String {
    format!("<a href=\"/tasks?queue={}\">{}</a>", url(queue), esc(queue))
}

fn task_link(id: &str) -> String {
    format!("<a href=\"/tasks/{}\">{}</a>", url(id), esc(id))
}

/// `/`: per-queue counts, the throughput chart, workers alive, the busiest tasks.
pub(super) async fn overview(State(d): D, Query(q): Params) -> Response {
    let queues = db!(d.queues().await);
    let series = db!(d.store.task_count_series(60, None).await);
    let workers = db!(d.store.worker_list().await);
    let by_task = db!(d.store.task_count_by_task(60).await);
    let alive = workers.iter().filter(|w| w.heartbeat_age < 60.0).count();
    let mut body = format!(
        "<p id=\"workers-alive\">Workers alive: <strong>{alive}</strong> of {} registered · <a href=\"/workers\">workers</a></p>",
        workers.len()
    );
    body.push_str(&queue_table(&d, &queues, false));
    body.push_str(&chart(&series, 60, Utc::now()));
    let rows: Vec<Vec<String>> = by_task
        .iter()
        .take(15)
        .map(|(task, queue, [s, f, r, o])| {
            vec![
                format!(
                    "<a href=\"/tasks?name={}\">{}</a>",
                    url(task),
                    esc(if task.is_empty() { "(undecodable)" } else { task })
                ),
                esc(queue),
                group(*s),
                group(*f),
                group(*r),
                group(*o),
            ]
        })
        .collect();
    body.push_str("<h2>Busiest tasks, last hour</h2>");
    body.push_str(&table("tasks-by-name", &["task", "queue", "#succeeded", "#failed", "#retried", "#other"], &rows));
    Html(page("Overview", "/", d.config.read_only, param(&q, "done"), Some(10), &body)).into_response()
}

/// The per-queue table; with `actions`, the pause/resume/purge buttons.
fn queue_table(d: &Dashboard, queues: &[celeriac_store::QueueOverview], actions: bool) -> String {
    let ro = d.config.read_only;
    let rows: Vec<Vec<String>> = queues
        .iter()
        .map(|o| {
            let paused = o.paused.as_ref().map_or_else(String::new, |p| {
                format!(
                    "<span class=\"paused\">paused</span> since {}{}",
                    time(&p.paused_at),
                    p.reason.as_ref().map_or_else(String::new, |r| format!(" ({})", esc(r)))
                )
            });
            let mut row = vec![
                queue_link(&o.queue),
                count(o.ready),
                count(o.delayed),
                count(o.leased),
                count(o.rate_limited),
                format!("<a href=\"/dead-letters?queue={}\">{}</a>", url(&o.queue), count(o.dead_lettered)),
                o.oldest_ready_age.map_or_else(|| "—".to_owned(), age),
                paused,
            ];
            if actions {
                let path = format!("/queues/{}", url(&o.queue));
                let toggle = if o.paused.is_some() {
                    button(ro, &format!("{path}/resume"), "Resume", &[])
                } else {
                    button(ro, &format!("{path}/pause"), "Pause", &[])
                };
                let purge = if ro { String::new() } else { format!(" <a href=\"{path}/purge\">Purge…</a>") };
                row.push(format!("{toggle}{purge}"));
            }
            row
        })
        .collect();
    let mut headers =
        vec!["queue", "#ready", "#delayed", "#leased", "#rate limited", "#dead letters", "#oldest ready", "state"];
    if actions {
        headers.push("actions");
    }
    table("queues", &headers, &rows)
}

/// `/queues`.
pub(super) async fn queues(State(d): D, Query(q): Params) -> Response {
    let queues = db!(d.queues().await);
    let mut body = queue_table(&d, &queues, true);
    body.push_str(
        "<p class=\"muted\">A paused queue's messages wait: no worker (celeriac's or a Celery worker on the \
         transport) takes them until it is resumed. Counts above 10,000 are the planner's estimates (~).</p>",
    );
    frame(&d, &q, "Queues", "/queues", &body)
}

#[derive(serde::Deserialize)]
pub(super) struct ReasonForm {
    #[serde(default)]
    reason: String,
}

/// `POST /queues/{name}/pause`.
pub(super) async fn queue_pause(State(d): D, Path(name): Path<String>, Form(f): Form<ReasonForm>) -> Response {
    let reason = Some(f.reason.trim()).filter(|r| !r.is_empty());
    let newly = db!(d.store.queue_pause(&name, reason).await);
    d.invalidate().await;
    done("/queues", &if newly { format!("Paused {name}.") } else { format!("{name} was paused already.") })
}

/// `POST /queues/{name}/resume`.
pub(super) async fn queue_resume(State(d): D, Path(name): Path<String>) -> Response {
    let was = db!(d.store.queue_resume(&name).await);
    d.invalidate().await;
    done("/queues", &if was { format!("Resumed {name}.") } else { format!("{name} was not paused.") })
}

/// `GET /queues/{name}/purge`: the confirmation form.
pub(super) async fn queue_purge_form(State(d): D, Path(name): Path<String>, Query(q): Params) -> Response {
    let o = db!(d.store.queue_overview(&name).await);
    let body = format!(
        "<p>Purging deletes every message of <strong>{}</strong> that no worker holds: {} ready, {} delayed, {} \
         rate limited. Messages held by workers finish. This cannot be undone.</p>\
         <form method=\"post\" action=\"/queues/{}/purge\" id=\"purge\"><label>Type the queue's name to confirm: \
         <input name=\"confirm\" autocomplete=\"off\"></label> <button type=\"submit\">Purge</button></form>",
        esc(&name),
        count(o.ready),
        count(o.delayed),
        count(o.rate_limited),
        url(&name)
    );
    frame(&d, &q, &format!("Purge {name}"), "/queues", &body)
}

#[derive(serde::Deserialize)]
pub(super) struct ConfirmForm {
    #[serde(default)]
    confirm: String,
}

/// `POST /queues/{name}/purge`: only with the name typed in.
pub(super) async fn queue_purge(State(d): D, Path(name): Path<String>, Form(f): Form<ConfirmForm>) -> Response {
    if f.confirm != name {
        return done(&format!("/queues/{}/purge", url(&name)), "Not purged: the name typed did not match.");
    }
    let n = db!(d.store.message_purge(&name).await);
    d.invalidate().await;
    done("/queues", &format!("Purged {n} message(s) from {name}."))
}

/// `/tasks`: search queued messages and results.
pub(super) async fn tasks(State(d): D, Query(q): Params) -> Response {
    if let Some(id) = param(&q, "id") {
        return axum::response::Redirect::to(&format!("/tasks/{}", url(id))).into_response();
    }
    let state = param(&q, "state");
    let queued_state = state.and_then(MessageState::parse);
    let result_state = state.filter(|s| queued_state.is_none() && s.chars().all(|c| c.is_ascii_uppercase()));
    let since = param(&q, "since").and_then(parse_time);
    let until = param(&q, "until").and_then(parse_time);
    let mut body = search_form(&q);
    let filter = (state.is_none() || queued_state.is_some()).then(|| MessageFilter {
        queue: param(&q, "queue").map(str::to_owned),
        task_name: param(&q, "name").map(str::to_owned),
        task_id: None,
        state: queued_state,
        since,
        until,
    });
    let results_table = d.results.as_ref().filter(|_| state.is_none() || result_state.is_some());
    let result_search = ResultSearch {
        status: result_state.map(str::to_owned),
        name: param(&q, "name").map(str::to_owned),
        since,
        until,
    };
    let before = param(&q, "before").and_then(|s| s.parse().ok());
    let rbefore = param(&q, "rbefore").and_then(|s| s.parse().ok());
    // Both searches at once: a page waits for the slower, not for their sum.
    let (queued, results) = tokio::join!(
        async {
            match &filter {
                Some(f) => Some(d.store.message_search(f, before, PAGE).await),
                None => None,
            }
        },
        async {
            match results_table {
                Some(t) => Some(d.store.result_search(t, &result_search, rbefore, PAGE).await),
                None => None,
            }
        },
    );
    if let Some(queued) = queued {
        body.push_str("<h2>Queued</h2>");
        match db!(queued) {
            None => body.push_str(TIMED_OUT),
            Some(rows) => {
                let next =
                    (rows.len() == usize::try_from(PAGE).unwrap_or(50)).then(|| rows.last().map(|m| m.id)).flatten();
                let rows: Vec<Vec<String>> = rows
                    .iter()
                    .map(|m| {
                        vec![
                            format!("<a href=\"/messages/{}\">{}</a>", m.id, m.id),
                            m.task_id.as_deref().map_or_else(|| "—".into(), task_link),
                            esc(m.task_name.as_deref().unwrap_or("—")),
                            queue_link(&m.queue),
                            m.state.as_str().to_owned(),
                            esc(m.held_by.as_deref().unwrap_or("")),
                            time(&m.created_at),
                            time(&m.eta),
                            m.attempt.to_string(),
                            m.redeliveries.to_string(),
                        ]
                    })
                    .collect();
                body.push_str(&table(
                    "queued",
                    &[
                        "message",
                        "task id",
                        "task",
                        "queue",
                        "state",
                        "held by",
                        "enqueued",
                        "eta",
                        "#attempt",
                        "#redeliveries",
                    ],
                    &rows,
                ));
                if let Some(next) = next {
                    let _ = write!(
                        body,
                        "<p><a id=\"next-queued\" href=\"{}\">Older →</a></p>",
                        esc(&with(&q, "before", &next.to_string()))
                    );
                }
            }
        }
    }
    if let (Some(results), Some(table_)) = (results, results_table) {
        body.push_str(&format!("<h2>Results <span class=\"muted\">({})</span></h2>", esc(table_.qualified())));
        match db!(results) {
            None => body.push_str(TIMED_OUT),
            Some(rows) => {
                let next =
                    (rows.len() == usize::try_from(PAGE).unwrap_or(50)).then(|| rows.last().map(|r| r.0)).flatten();
                let rows: Vec<Vec<String>> = rows
                    .iter()
                    .map(|(_, json)| {
                        let r = ResultView::parse(json);
                        vec![
                            task_link(&r.task_id),
                            esc(&r.status),
                            esc(r.name.as_deref().unwrap_or("—")),
                            esc(r.date_done.as_deref().unwrap_or("")),
                            esc(r.worker.as_deref().unwrap_or("")),
                        ]
                    })
                    .collect();
                body.push_str(&table("results", &["task id", "state", "task", "done", "worker"], &rows));
                if let Some(next) = next {
                    let _ = write!(
                        body,
                        "<p><a id=\"next-results\" href=\"{}\">Older →</a></p>",
                        esc(&with(&q, "rbefore", &next.to_string()))
                    );
                }
            }
        }
    }
    frame(&d, &q, "Tasks", "/tasks", &body)
}

const TIMED_OUT: &str = "<p class=\"error\">The search took longer than 2 s and was stopped: narrow it (a queue, a \
                         task name, a state).</p>";

/// The current query with `name` set to `value`, as a `/tasks` URL.
fn with(q: &HashMap<String, String>, name: &str, value: &str) -> String {
    let mut pairs: Vec<(&str, &str)> = q
        .iter()
        .filter(|(k, v)| k.as_str() != name && k.as_str() != "done" && !v.is_empty())
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    pairs.push((name, value));
    pairs.sort_unstable();
    let query: Vec<String> = pairs.iter().map(|(k, v)| format!("{}={}", url(k), url(v))).collect();
    format!("/tasks?{}", query.join("&"))
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M").ok().map(|t| t.and_utc()))
        .or_else(|| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").ok().map(|t| t.and_utc()))
}

fn search_form(q: &HashMap<String, String>) -> String {
    let v = |name: &str| esc(q.get(name).map_or("", String::as_str));
    format!(
        "<form method=\"get\" action=\"/tasks\" id=\"search\">\
         <input name=\"id\" placeholder=\"task id\" size=\"38\" value=\"{}\"> \
         <input name=\"name\" placeholder=\"task name\" value=\"{}\"> \
         <input name=\"queue\" placeholder=\"queue\" size=\"10\" value=\"{}\"> \
         <input name=\"state\" placeholder=\"state\" size=\"12\" list=\"states\" value=\"{}\"> \
         <input name=\"since\" placeholder=\"since (UTC)\" size=\"16\" value=\"{}\"> \
         <input name=\"until\" placeholder=\"until (UTC)\" size=\"16\" value=\"{}\"> \
         <button type=\"submit\">Search</button>\
         <datalist id=\"states\"><option>ready<option>delayed<option>leased<option>rate_limited\
         <option>SUCCESS<option>FAILURE<option>RETRY<option>STARTED<option>REVOKED</datalist></form>\
         <p class=\"muted\">Queued messages are searched by queue, name, state (ready, delayed, leased, rate_limited) \
         and enqueue time; results by state (SUCCESS, FAILURE, …), name and time done. Newest first; times in \
         UTC, as 2026-12-01T18:05 or RFC 3339.</p>",
        v("id"),
        v("name"),
        v("queue"),
        v("state"),
        v("since"),
        v("until")
    )
}

/// A result row read from its JSON (either table layout).
#[derive(Default)]
struct ResultView {
    task_id: String,
    status: String,
    name: Option<String>,
    date_done: Option<String>,
    worker: Option<String>,
    traceback: Option<String>,
    result: Option<String>,
    args: Option<String>,
    kwargs: Option<String>,
    children: Option<String>,
    retries: Option<i64>,
    queue: Option<String>,
}

impl ResultView {
    fn parse(json: &str) -> ResultView {
        let Ok(serde_json::Value::Object(row)) = serde_json::from_str::<serde_json::Value>(json) else {
            return ResultView::default();
        };
        let text = |k: &str| row.get(k).and_then(serde_json::Value::as_str).map(str::to_owned);
        // bytea columns come as `\x…` hex: decoded as JSON or pickle, shown as Python would.
        let value = |k: &str| {
            let v = row.get(k)?;
            match v.as_str() {
                Some(hex) if hex.starts_with("\\x") => Some(decode_hex_value(&hex[2..])),
                Some(s) => Some(s.to_owned()),
                None if v.is_null() => None,
                None => Some(v.to_string()),
            }
        };
        ResultView {
            task_id: text("task_id").unwrap_or_default(),
            status: text("status").unwrap_or_default(),
            name: text("name").or_else(|| text("task_name")),
            date_done: text("date_done"),
            worker: text("worker"),
            traceback: text("traceback"),
            result: value("result"),
            args: value("args").or_else(|| value("task_args")),
            kwargs: value("kwargs").or_else(|| value("task_kwargs")),
            children: value("children").or_else(|| value("meta")),
            retries: row.get("retries").and_then(serde_json::Value::as_i64),
            queue: text("queue"),
        }
    }
}

/// The bytes of PostgreSQL's hex form of a `bytea` (after its `\x`).
fn hex_bytes(hex: &str) -> Option<Vec<u8>> {
    (0..hex.len() / 2).map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()).collect()
}

/// A `bytea` result column's value (JSON or pickle) as Python would print it.
fn decode_hex_value(hex: &str) -> String {
    match hex_bytes(hex) {
        None => hex.to_owned(),
        Some(bytes) => match crate::results::decode_value(&bytes) {
            Ok(v) => pyrepr::repr(&v),
            Err(why) => format!("({} bytes: {why})", bytes.len()),
        },
    }
}

/// The envelope as pretty JSON (its body left out) and the body decoded, as Python would print it.
fn envelope_html(payload: &[u8]) -> String {
    let mut out = String::new();
    match serde_json::from_slice::<serde_json::Value>(payload) {
        Ok(serde_json::Value::Object(mut env)) => {
            if let Some(body) = env.get_mut("body") {
                let len = body.as_str().map_or(0, str::len);
                *body = serde_json::Value::String(format!("({len} characters, decoded below)"));
            }
            let pretty = serde_json::to_string_pretty(&env).unwrap_or_default();
            let _ = write!(out, "<h3>Envelope</h3><pre id=\"envelope\">{}</pre>", esc(&pretty));
        }
        _ => {
            let _ = write!(
                out,
                "<h3>Envelope</h3><pre id=\"envelope\">{}</pre>",
                esc(&String::from_utf8_lossy(&payload[..payload.len().min(4096)]))
            );
        }
    }
    match Envelope::parse(payload).and_then(|e| e.decode_body(&Limits::default())) {
        Ok(body) => {
            let _ =
                write!(out, "<h3>Body (args, kwargs, embed)</h3><pre id=\"body\">{}</pre>", esc(&pyrepr::repr(&body)));
        }
        Err(e) => {
            let _ = write!(out, "<p class=\"error\">The body cannot be decoded: {}</p>", esc(&e.to_string()));
        }
    }
    out
}

/// The ids a message's headers name: (parent, root, group).
fn lineage(payload: &[u8]) -> Vec<(&'static str, String)> {
    let Ok(serde_json::Value::Object(env)) = serde_json::from_slice::<serde_json::Value>(payload) else {
        return Vec::new();
    };
    let Some(serde_json::Value::Object(headers)) = env.get("headers") else { return Vec::new() };
    ["parent_id", "root_id", "group"]
        .into_iter()
        .filter_map(|k| headers.get(k).and_then(serde_json::Value::as_str).map(|v| (k, v.to_owned())))
        .collect()
}

/// `/tasks/{id}`: everything the database holds of one task id.
pub(super) async fn task(State(d): D, Path(id): Path<String>, Query(q): Params) -> Response {
    let ro = d.config.read_only;
    let mut body = String::new();
    let mut found = false;
    let mut lineage_ids = Vec::new();
    let search = DeadLetterSearch { task_id: Some(id.clone()), ..Default::default() };
    let dead = db!(d.store.dead_letter_search(&search, None, 20).await).unwrap_or_default();
    let result = match &d.results {
        Some(results) => db!(d.store.result_row_json(results, &id).await),
        None => None,
    };
    // A task with a result or a dead letter has no message left but a delayed retry's: the
    // table is scanned for a ready or running one only when nothing else was found.
    let mut queued = db!(d.store.message_ids_of_task(&id, false).await);
    if queued.as_ref().is_some_and(Vec::is_empty) && dead.is_empty() && result.is_none() {
        queued = db!(d.store.message_ids_of_task(&id, true).await);
    }
    match &queued {
        None => body.push_str(TIMED_OUT),
        Some(ids) => {
            for message_id in ids {
                if let Some(m) = db!(d.store.message_get(*message_id).await) {
                    found = true;
                    let _ = write!(
                        body,
                        "<h2>Queued message {}</h2><table id=\"message\"><tr><th>task</th><td>{}</td></tr>\
                         <tr><th>queue</th><td>{}</td></tr><tr><th>state</th><td id=\"state\">{}</td></tr>\
                         <tr><th>held by</th><td>{}</td></tr><tr><th>attempt</th><td>{}</td></tr>\
                         <tr><th>redeliveries</th><td>{}</td></tr><tr><th>enqueued</th><td>{}</td></tr>\
                         <tr><th>eta</th><td>{}</td></tr><tr><th>expires</th><td>{}</td></tr></table>",
                        m.id,
                        esc(m.task_name.as_deref().unwrap_or("—")),
                        queue_link(&m.queue),
                        m.state.as_str(),
                        esc(m.held_by.as_deref().unwrap_or("")),
                        m.attempt,
                        m.redeliveries,
                        time(&m.created_at),
                        time(&m.eta),
                        m.expires.as_ref().map_or_else(|| "—".into(), time),
                    );
                    if let Some(payload) = &m.payload {
                        lineage_ids = lineage(payload);
                        body.push_str(&envelope_html(payload));
                    }
                }
            }
        }
    }
    for dl in &dead {
        found = true;
        let _ = write!(
            body,
            "<h2>Dead letter <a href=\"/dead-letters/{}\">{}</a></h2><p>[{}] {} · queue {} · {} attempt(s) · {}</p>",
            dl.id,
            dl.id,
            esc(&dl.reason_code),
            esc(&dl.reason),
            queue_link(&dl.queue),
            dl.attempt,
            time(&dl.failed_at)
        );
        if lineage_ids.is_empty() {
            lineage_ids = lineage(&dl.payload);
        }
        body.push_str(&envelope_html(&dl.payload));
    }
    if let Some(json) = &result {
        found = true;
        let r = ResultView::parse(json);
        let _ = write!(
                body,
                "<h2>Result</h2><table id=\"result\"><tr><th>state</th><td id=\"result-state\">{}</td></tr>\
                 <tr><th>task</th><td>{}</td></tr><tr><th>done</th><td>{}</td></tr>\
                 <tr><th>worker</th><td>{}</td></tr><tr><th>retries</th><td>{}</td></tr><tr><th>queue</th><td>{}</td></tr>\
                 <tr><th>args</th><td>{}</td></tr><tr><th>kwargs</th><td>{}</td></tr>\
                 <tr><th>children</th><td>{}</td></tr></table><h3>Value</h3><pre id=\"result-value\">{}</pre>",
                esc(&r.status),
                esc(r.name.as_deref().unwrap_or("—")),
                esc(r.date_done.as_deref().unwrap_or("—")),
                esc(r.worker.as_deref().unwrap_or("—")),
                r.retries.map_or_else(|| "—".into(), |n| n.to_string()),
                esc(r.queue.as_deref().unwrap_or("—")),
                esc(r.args.as_deref().unwrap_or("—")),
                esc(r.kwargs.as_deref().unwrap_or("—")),
                esc(r.children.as_deref().unwrap_or("—")),
                esc(r.result.as_deref().unwrap_or("None")),
            );
        if let Some(tb) = r.traceback.filter(|t| !t.is_empty()) {
            let _ = write!(body, "<h3>Traceback</h3><pre id=\"traceback\">{}</pre>", esc(&tb));
        }
    }
    if !lineage_ids.is_empty() {
        body.push_str("<h2>Lineage</h2><ul id=\"lineage\">");
        for (what, other) in &lineage_ids {
            let _ = write!(body, "<li>{what}: {}</li>", task_link(other));
        }
        body.push_str("</ul>");
    }
    if !found {
        body.push_str(
            "<p id=\"not-found\">Nothing of this task is in the database: not queued, not dead-lettered, and no \
             result stored (it may have run with its result ignored).</p>",
        );
    }
    let path = format!("/tasks/{}", url(&id));
    body.push_str("<p>");
    body.push_str(&button(ro, &format!("{path}/revoke"), "Revoke", &[]));
    body.push(' ');
    body.push_str(&button(ro, &format!("{path}/revoke"), "Revoke and terminate", &[("terminate", "1")]));
    if !dead.is_empty() {
        body.push(' ');
        body.push_str(&button(ro, &format!("{path}/retry"), "Retry (put the dead letter back in its queue)", &[]));
    } else if result.as_deref().is_some_and(|json| failed_call(json).is_ok()) {
        body.push(' ');
        body.push_str(&button(ro, &format!("{path}/retry"), "Retry (send it again, same id and arguments)", &[]));
    }
    body.push_str("</p>");
    let title = format!("Task {id}");
    frame(&d, &q, &title, "/tasks", &body)
}

#[derive(serde::Deserialize)]
pub(super) struct RevokeForm {
    #[serde(default)]
    terminate: String,
}

/// `POST /tasks/{id}/revoke`: recorded for good and broadcast, as `celeriac revoke`.
pub(super) async fn task_revoke(State(d): D, Path(id): Path<String>, Form(f): Form<RevokeForm>) -> Response {
    let terminate = !f.terminate.is_empty();
    let signal = terminate.then(|| "SIGTERM".to_owned());
    let revocation =
        Revocation { task_ids: vec![id.clone()], stamps: Vec::new(), terminate, signal, expires: REVOKE_EXPIRES };
    let exchange = pidbox::control_exchange(&d.config.control_exchange);
    let payload =
        pidbox::revoke_envelope(&exchange, std::slice::from_ref(&id), terminate, revocation.signal.as_deref());
    db!(d.store.broadcast_publish(&exchange, "", &payload, Some(&revocation)).await);
    done(&format!("/tasks/{}", url(&id)), &format!("Revoked {id}{}.", if terminate { " (terminate)" } else { "" }))
}

/// `POST /tasks/{id}/retry`: the task's dead letters go back to their queue; a task that
/// failed (its result row says FAILURE, with Celery's extended columns: name, args, kwargs,
/// queue) is sent again under the same id, so its `AsyncResult` sees the new run.
pub(super) async fn task_retry(State(d): D, Path(id): Path<String>) -> Response {
    let page = format!("/tasks/{}", url(&id));
    let search = DeadLetterSearch { task_id: Some(id.clone()), ..Default::default() };
    let dead = db!(d.store.dead_letter_search(&search, None, 100).await).unwrap_or_default();
    if !dead.is_empty() {
        let filter = DeadLetterFilter { ids: Some(dead.iter().map(|dl| dl.id).collect()), ..Default::default() };
        let n = db!(d.store.dead_letter_redrive(&filter).await);
        d.invalidate().await;
        return done(&page, &format!("Put {n} message(s) of {id} back in their queue."));
    }
    let Some(results) = &d.results else {
        return done(&page, "Nothing to retry: the task has no dead letter, and no result table is known.");
    };
    let Some(json) = db!(d.store.result_row_json(results, &id).await) else {
        return done(&page, "Nothing to retry: the task has no dead letter and no result.");
    };
    let call = match failed_call(&json) {
        Ok(call) => call,
        Err(why) => return done(&page, &format!("Cannot retry: {why}.")),
    };
    let options = TaskOptions { task_id: Some(id.clone()), queue: call.queue.clone(), ..TaskOptions::default() };
    let message = match celeriac_protocol::encode_task(&call.name, &call.args, &call.kwargs, &options, Utc::now()) {
        Ok(encoded) => celeriac_store::NewMessage::from(encoded),
        Err(e) => return done(&page, &format!("Cannot retry: {e}.")),
    };
    db!(d.store.message_insert(&message).await);
    d.invalidate().await;
    done(&page, &format!("Sent {}[{id}] again to {}.", call.name, call.queue))
}

/// What a failed task was called with, from its result row.
struct FailedCall {
    name: String,
    args: Vec<celeriac_protocol::Value>,
    kwargs: celeriac_protocol::Map,
    queue: String,
}

/// The call of a failed task from its result row's JSON: only a FAILURE with Celery's extended
/// columns (`result_extended`), whose args and kwargs are stored as values.
fn failed_call(json: &str) -> Result<FailedCall, String> {
    let Ok(serde_json::Value::Object(row)) = serde_json::from_str::<serde_json::Value>(json) else {
        return Err("its result row cannot be read".into());
    };
    let text = |k: &str| row.get(k).and_then(serde_json::Value::as_str);
    if text("status") != Some("FAILURE") {
        return Err(format!("it did not fail (state {})", text("status").unwrap_or("unknown")));
    }
    let Some(name) = text("name").filter(|n| !n.is_empty()) else {
        return Err("its result row has no task name and arguments (the app's result_extended is off)".into());
    };
    let value = |k: &str| -> Result<celeriac_protocol::Value, String> {
        let hex = text(k).and_then(|s| s.strip_prefix("\\x")).ok_or_else(|| format!("no {k} stored"))?;
        crate::results::decode_value(&hex_bytes(hex).ok_or_else(|| format!("{k} is not hex"))?)
    };
    let args = match value("args")? {
        celeriac_protocol::Value::List(items) => items,
        other => return Err(format!("args is a {}, not a list", other.kind())),
    };
    let kwargs = match value("kwargs")? {
        celeriac_protocol::Value::Map(map) => map,
        celeriac_protocol::Value::Null => celeriac_protocol::Map::new(),
        other => return Err(format!("kwargs is a {}, not a dict", other.kind())),
    };
    let queue = text("queue").filter(|q| !q.is_empty()).unwrap_or(celeriac_protocol::DEFAULT_QUEUE).to_owned();
    Ok(FailedCall { name: name.to_owned(), args, kwargs, queue })
}

/// `/messages/{id}`: one queued message.
pub(super) async fn message(State(d): D, Path(id): Path<i64>, Query(q): Params) -> Response {
    let Some(m) = db!(d.store.message_get(id).await) else {
        return frame(&d, &q, "Message", "/tasks", "<p id=\"not-found\">No such message (it may have run).</p>");
    };
    match &m.task_id {
        Some(task_id) => axum::response::Redirect::to(&format!("/tasks/{}", url(task_id))).into_response(),
        None => {
            let body = envelope_html(m.payload.as_deref().unwrap_or_default());
            frame(&d, &q, &format!("Message {id}"), "/tasks", &body)
        }
    }
}

/// The dead-letter filter a query or form names.
fn dead_search(q: &HashMap<String, String>) -> DeadLetterSearch {
    DeadLetterSearch {
        queue: param(q, "queue").map(str::to_owned),
        reason_code: param(q, "reason").map(str::to_owned),
        task_name: param(q, "task").map(str::to_owned),
        task_id: None,
    }
}

/// `/dead-letters`: filter, page, redrive or purge what the filter matches.
pub(super) async fn dead_letters(State(d): D, Query(q): Params) -> Response {
    let ro = d.config.read_only;
    let search = dead_search(&q);
    let before = param(&q, "before").and_then(|s| s.parse().ok());
    let reasons = db!(d.store.dead_letter_reasons().await)
        .unwrap_or_else(|| DeadLetterReason::codes().split(", ").map(str::to_owned).collect());
    let v = |name: &str| esc(q.get(name).map_or("", String::as_str));
    let mut options = String::from("<option value=\"\">any reason</option>");
    for r in &reasons {
        let selected = if param(&q, "reason") == Some(r.as_str()) { " selected" } else { "" };
        let _ = write!(options, "<option{selected}>{}</option>", esc(r));
    }
    let mut body = format!(
        "<form method=\"get\" action=\"/dead-letters\" id=\"filter\"><input name=\"queue\" placeholder=\"queue\" value=\"{}\"> \
         <select name=\"reason\">{options}</select> <input name=\"task\" placeholder=\"task name\" value=\"{}\"> \
         <button type=\"submit\">Filter</button></form>",
        v("queue"),
        v("task")
    );
    let fields: Vec<(&str, &str)> =
        ["queue", "reason", "task"].into_iter().filter_map(|k| param(&q, k).map(|v| (k, v))).collect();
    if !ro {
        let mut hidden = String::new();
        for (k, v) in &fields {
            let _ = write!(hidden, "<input type=\"hidden\" name=\"{k}\" value=\"{}\">", esc(v));
        }
        let scope = if fields.is_empty() {
            "every dead letter".to_owned()
        } else {
            "every dead letter this filter matches".to_owned()
        };
        let _ = write!(
            body,
            "<p><form class=\"inline\" method=\"post\" action=\"/dead-letters/redrive\" id=\"redrive\">{hidden}\
             <button type=\"submit\">Redrive {scope}</button></form> \
             <form class=\"inline\" method=\"post\" action=\"/dead-letters/purge\" id=\"purge\">{hidden}\
             <label><input type=\"checkbox\" name=\"confirm\" value=\"yes\"> I mean it</label> \
             <button type=\"submit\">Purge {scope}</button></form></p>"
        );
    }
    match db!(d.store.dead_letter_search(&search, before, PAGE).await) {
        None => body.push_str(TIMED_OUT),
        Some(rows) => {
            let next = (rows.len() == usize::try_from(PAGE).unwrap_or(50)).then(|| rows.last().map(|r| r.id)).flatten();
            let rows: Vec<Vec<String>> = rows
                .iter()
                .map(|dl| {
                    vec![
                        format!("<a href=\"/dead-letters/{}\">{}</a>", dl.id, dl.id),
                        time(&dl.failed_at),
                        esc(&dl.queue),
                        esc(dl.task_name.as_deref().unwrap_or("—")),
                        dl.task_id.as_deref().map_or_else(|| "—".into(), task_link),
                        esc(&dl.reason_code),
                        esc(&dl.reason),
                    ]
                })
                .collect();
            body.push_str(&table(
                "dead-letters",
                &["id", "failed", "queue", "task", "task id", "reason", "why"],
                &rows,
            ));
            if let Some(next) = next {
                let mut next_q = q.clone();
                next_q.insert("before".into(), next.to_string());
                let link = with(&next_q, "before", &next.to_string()).replacen("/tasks", "/dead-letters", 1);
                let _ = write!(body, "<p><a id=\"next\" href=\"{}\">Older →</a></p>", esc(&link));
            }
        }
    }
    frame(&d, &q, "Dead letters", "/dead-letters", &body)
}

/// The store filter of a redrive or purge form; `Err` for an unknown reason code.
fn dead_filter(form: &HashMap<String, String>) -> Result<DeadLetterFilter, String> {
    let reason_code = match param(form, "reason") {
        Some(code) => Some(code.parse::<DeadLetterReason>().map_err(|e| e.to_string())?),
        None => None,
    };
    let ids = match param(form, "id") {
        Some(id) => Some(vec![id.parse::<i64>().map_err(|_| format!("not a dead letter id: {id}"))?]),
        None => None,
    };
    Ok(DeadLetterFilter {
        ids,
        queue: param(form, "queue").map(str::to_owned),
        reason_code,
        task_name: param(form, "task").map(str::to_owned),
    })
}

/// Where to go back after a dead-letter action: the list with the same filter.
fn dead_page(form: &HashMap<String, String>) -> String {
    let query: Vec<String> = ["queue", "reason", "task"]
        .into_iter()
        .filter_map(|k| param(form, k).map(|v| format!("{k}={}", url(v))))
        .collect();
    if query.is_empty() {
        "/dead-letters".to_owned()
    } else {
        format!("/dead-letters?{}", query.join("&"))
    }
}

/// `POST /dead-letters/redrive`.
pub(super) async fn dead_letters_redrive(State(d): D, Form(form): Form<HashMap<String, String>>) -> Response {
    let filter = match dead_filter(&form) {
        Ok(f) => f,
        Err(why) => return done("/dead-letters", &why),
    };
    let n = db!(d.store.dead_letter_redrive(&filter).await);
    d.invalidate().await;
    done(&dead_page(&form), &format!("Put {n} dead letter(s) back in their queues."))
}

/// `POST /dead-letters/purge`: only with the box ticked.
pub(super) async fn dead_letters_purge(State(d): D, Form(form): Form<HashMap<String, String>>) -> Response {
    if param(&form, "confirm") != Some("yes") {
        return done(&dead_page(&form), "Not purged: tick \"I mean it\" first.");
    }
    let filter = match dead_filter(&form) {
        Ok(f) => f,
        Err(why) => return done("/dead-letters", &why),
    };
    let n = db!(d.store.dead_letter_purge(&filter).await);
    d.invalidate().await;
    done(&dead_page(&form), &format!("Deleted {n} dead letter(s)."))
}

/// `/dead-letters/{id}`.
pub(super) async fn dead_letter(State(d): D, Path(id): Path<i64>, Query(q): Params) -> Response {
    let Some(dl) = db!(d.store.dead_letter_get(id).await) else {
        return frame(&d, &q, "Dead letter", "/dead-letters", "<p id=\"not-found\">No such dead letter.</p>");
    };
    let mut body = format!(
        "<p>[{}] {} · queue {} · task {} {} · {} attempt(s) · {}</p>",
        esc(&dl.reason_code),
        esc(&dl.reason),
        esc(&dl.queue),
        esc(dl.task_name.as_deref().unwrap_or("—")),
        dl.task_id.as_deref().map_or_else(String::new, task_link),
        dl.attempt,
        time(&dl.failed_at)
    );
    body.push_str(&envelope_html(&dl.payload));
    let id_s = id.to_string();
    body.push_str(&button(d.config.read_only, "/dead-letters/redrive", "Redrive this one", &[("id", &id_s)]));
    frame(&d, &q, &format!("Dead letter {id}"), "/dead-letters", &body)
}

/// `/schedules`.
pub(super) async fn schedules(State(d): D, Query(q): Params) -> Response {
    let ro = d.config.read_only;
    let list = db!(d.store.schedule_list().await);
    let ramp = db!(d.store.schedule_ramp_get().await);
    let mut body = format!(
        "<p id=\"ramp\">Migration ramp: <strong>{ramp} %</strong> of the schedules fire from celeriac's ticker, \
         the others from Celery Beat (pins override).</p>"
    );
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            let path = format!("/schedules/{}", url(&s.definition.name));
            let state = match (s.enabled, s.paused) {
                (false, _) => format!("disabled: {}", esc(s.disabled_reason.as_deref().unwrap_or("—"))),
                (true, true) => format!(
                    "<span class=\"paused\">paused</span>{}",
                    s.paused_reason.as_ref().map_or_else(String::new, |r| format!(" ({})", esc(r)))
                ),
                (true, false) => "active".to_owned(),
            };
            let toggle = if s.paused {
                button(ro, &format!("{path}/resume"), "Resume", &[])
            } else {
                button(ro, &format!("{path}/pause"), "Pause", &[])
            };
            vec![
                esc(&s.definition.name),
                format!("<a href=\"/tasks?name={}\">{}</a>", url(&s.definition.task), esc(&s.definition.task)),
                esc(&crate::cli::schedule_timing(&s.definition)),
                format!(
                    "{}{}",
                    esc(&s.owner),
                    s.owner_pin.as_ref().map_or_else(String::new, |p| format!(" (pinned {})", esc(p)))
                ),
                state,
                s.next_run_at.as_ref().map_or_else(|| "—".into(), time),
                s.last_run_at.as_ref().map_or_else(|| "—".into(), time),
                s.last_task_id.as_deref().map_or_else(|| "—".into(), task_link),
                group(s.total_run_count),
                format!("{toggle} {}", button(ro, &format!("{path}/run"), "Run now", &[])),
            ]
        })
        .collect();
    body.push_str(&table(
        "schedules",
        &["name", "task", "when", "owner", "state", "next run", "last run", "last task", "#runs", "actions"],
        &rows,
    ));
    frame(&d, &q, "Schedules", "/schedules", &body)
}

/// `POST /schedules/{name}/{pause|resume|run}`.
pub(super) async fn schedule_action(State(d): D, Path((name, action)): Path<(String, String)>) -> Response {
    let message = match action.as_str() {
        "pause" => {
            db!(d.store.schedule_set_paused(&name, true, Some("paused from the dashboard")).await);
            format!("Paused {name}.")
        }
        "resume" => {
            db!(d.store.schedule_set_paused(&name, false, None).await);
            format!("Resumed {name}.")
        }
        "run" => {
            let build = |s: &celeriac_store::Schedule, slot| crate::scheduler::fire::build(s, slot, slot);
            let (_, message) = db!(d.store.schedule_run_now(&name, build).await);
            format!("Sent {name} now (task id {}).", message.task_id.as_deref().unwrap_or("?"))
        }
        other => return done("/schedules", &format!("No such action: {other}.")),
    };
    done("/schedules", &message)
}

/// `/workers`.
pub(super) async fn workers(State(d): D, Query(q): Params) -> Response {
    let list = db!(d.store.worker_list().await);
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|w| {
            vec![
                esc(&w.hostname),
                w.pid.to_string(),
                esc(&w.queues.join(", ")),
                w.concurrency.to_string(),
                age(w.heartbeat_age),
                group(w.held),
                time(&w.started_at),
            ]
        })
        .collect();
    let body = table(
        "workers",
        &["worker", "#pid", "queues", "#concurrency", "#heartbeat age", "#leases held", "started"],
        &rows,
    );
    frame(&d, &q, "Workers", "/workers", &body)
}

/// `/readyz`: the database answers and its schema is current.
pub(super) async fn ready(State(d): D) -> Response {
    let newest = celeriac_store::MIGRATIONS.iter().map(|m| m.version).max().unwrap_or(0);
    match tokio::time::timeout(std::time::Duration::from_secs(2), d.store.schema_version()).await {
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "database: no answer within 2 s\n".to_owned()).into_response(),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}\n")).into_response(),
        Ok(Ok(v)) if v < newest => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("schema: at migration {v}, this celeriac needs {newest} (run celeriac migrate)\n"),
        )
            .into_response(),
        Ok(Ok(_)) => "ready\n".into_response(),
    }
}

/// `/metrics`: the per-queue gauges (the same names as a worker's), from the cached counts.
pub(super) async fn metrics(State(d): D) -> Response {
    use prometheus_client::{
        encoding::EncodeLabelSet,
        metrics::{family::Family, gauge::Gauge},
        registry::Registry,
    };
    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct QueueLabels {
        queue: String,
    }
    let queues = db!(d.queues().await);
    let mut registry = Registry::default();
    let mut families = Vec::new();
    for (name, help) in [
        ("celeriac_queue_ready", "Messages ready to run, per queue (estimated above 10,000)"),
        ("celeriac_queue_delayed", "Messages waiting for their ETA, per queue"),
        ("celeriac_queue_leased", "Messages held by workers, per queue"),
        ("celeriac_queue_rate_limited", "Messages waiting for a rate limit's token, per queue"),
        ("celeriac_queue_dead_lettered", "Messages in dead_letter, per queue"),
        ("celeriac_queue_paused", "1 when the queue is paused"),
    ] {
        let family = Family::<QueueLabels, Gauge>::default();
        registry.register(name, help, family.clone());
        families.push(family);
    }
    let age = Family::<QueueLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    registry.register_with_unit(
        "celeriac_queue_oldest_ready_age",
        "Age of the oldest ready message, per queue",
        prometheus_client::registry::Unit::Seconds,
        age.clone(),
    );
    for o in queues.iter() {
        let labels = QueueLabels { queue: o.queue.clone() };
        let values = [
            o.ready.value,
            o.delayed.value,
            o.leased.value,
            o.rate_limited.value,
            o.dead_lettered.value,
            i64::from(o.paused.is_some()),
        ];
        for (family, value) in families.iter().zip(values) {
            family.get_or_create(&labels).set(value);
        }
        age.get_or_create(&labels).set(o.oldest_ready_age.unwrap_or(0.0));
    }
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], out).into_response()
}
