//! The dashboard's HTML: escaping, the page frame, tables, forms and the throughput chart (an
//! inline SVG). Pages are rendered on the server; there is no script.

use std::fmt::Write as _;

use celeriac_store::{Count, MinuteCounts};
use chrono::{DateTime, Utc};

/// Text made safe for HTML element content and quoted attribute values.
pub(super) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A URL path segment or query value, percent-encoded.
pub(super) fn url(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A count: exact, or `~N` (estimated).
pub(super) fn count(c: Count) -> String {
    if c.exact {
        group(c.value)
    } else {
        format!("<span title=\"estimated by the planner\">~{}</span>", group(c.value))
    }
}

/// 1234567 as `1,234,567`.
pub(super) fn group(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// A time as `2026-12-01 18:05:03Z`.
pub(super) fn time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// Seconds as `4.2 s`, `3 min`, `2.5 h`.
pub(super) fn age(seconds: f64) -> String {
    if seconds < 90.0 {
        format!("{seconds:.1} s")
    } else if seconds < 5400.0 {
        format!("{:.0} min", seconds / 60.0)
    } else {
        format!("{:.1} h", seconds / 3600.0)
    }
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:0;color:#222}
nav{background:#2f4f3a;padding:8px 16px}nav a{color:#fff;margin-right:18px;text-decoration:none}
nav a.here{font-weight:bold;text-decoration:underline}main{padding:12px 16px}
table{border-collapse:collapse;margin:8px 0}td,th{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left}
td.n,th.n{text-align:right}pre{background:#f6f6f6;padding:8px;overflow:auto;max-height:30em}
form.inline{display:inline}.flash{background:#e8f4e8;padding:6px 10px}.error{background:#fbe9e9;padding:6px 10px}
.muted{color:#777}.paused{color:#a60}.ro{color:#a00}button{cursor:pointer}";

/// A whole page: the navigation (with `here` marked), a message if any, then `body`.
pub(super) fn page(
    title: &str,
    here: &str,
    read_only: bool,
    flash: Option<&str>,
    refresh: Option<u32>,
    body: &str,
) -> String {
    let mut nav = String::new();
    for (path, name) in [
        ("/", "Overview"),
        ("/queues", "Queues"),
        ("/tasks", "Tasks"),
        ("/dead-letters", "Dead letters"),
        ("/schedules", "Schedules"),
        ("/workers", "Workers"),
    ] {
        let class = if path == here { " class=\"here\"" } else { "" };
        let _ = write!(nav, "<a href=\"{path}\"{class}>{name}</a>");
    }
    let ro = if read_only { "<span class=\"ro\" style=\"color:#fcc\">read-only</span>" } else { "" };
    let flash = flash.map_or_else(String::new, |f| format!("<p class=\"flash\" id=\"flash\">{}</p>", esc(f)));
    let refresh = refresh.map_or_else(String::new, |s| format!("<meta http-equiv=\"refresh\" content=\"{s}\">"));
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">{refresh}<title>{} · celeriac</title>\
         <style>{STYLE}</style></head><body><nav><strong style=\"color:#cfe\">celeriac</strong> &nbsp; {nav}{ro}</nav>\
         <main><h1>{}</h1>{flash}{body}</main></body></html>",
        esc(title),
        esc(title)
    )
}

/// A table from a header row and body rows of ready HTML cells; numeric columns are those
/// whose header starts with `#` (the `#` is dropped).
pub(super) fn table(id: &str, headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!("<table id=\"{id}\"><thead><tr>");
    let numeric: Vec<bool> = headers.iter().map(|h| h.starts_with('#')).collect();
    for h in headers {
        let (class, h) = h.strip_prefix('#').map_or(("", *h), |h| (" class=\"n\"", h));
        let _ = write!(out, "<th{class}>{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for (i, cell) in row.iter().enumerate() {
            let class = if numeric.get(i).copied().unwrap_or(false) { " class=\"n\"" } else { "" };
            let _ = write!(out, "<td{class}>{cell}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    if rows.is_empty() {
        out.push_str("<p class=\"muted\">Nothing here.</p>");
    }
    out
}

/// A button that POSTs to `action` with `fields` (hidden), or nothing in read-only mode.
pub(super) fn button(read_only: bool, action: &str, label: &str, fields: &[(&str, &str)]) -> String {
    if read_only {
        return String::new();
    }
    let mut hidden = String::new();
    for (name, value) in fields {
        let _ = write!(hidden, "<input type=\"hidden\" name=\"{}\" value=\"{}\">", esc(name), esc(value));
    }
    format!(
        "<form class=\"inline\" method=\"post\" action=\"{}\">{hidden}<button type=\"submit\">{}</button></form>",
        esc(action),
        esc(label)
    )
}

/// The ended deliveries per minute as bars (succeeded above the line, failed below), with the
/// failure rate in the title.
pub(super) fn chart(series: &[MinuteCounts], minutes: i64, now: DateTime<Utc>) -> String {
    let (w, h, pad) = (720.0_f64, 160.0_f64, 30.0_f64);
    let top = series.iter().map(|m| m.succeeded.max(m.failed)).max().unwrap_or(0).max(1);
    #[allow(clippy::cast_precision_loss)]
    let scale = |n: i64| (n as f64) / (top as f64) * (h / 2.0 - 10.0);
    let step = (w - pad) / (minutes as f64);
    let mut bars = String::new();
    let start = now - chrono::Duration::minutes(minutes);
    for m in series {
        let offset = (m.minute - start).num_seconds() as f64 / 60.0;
        if offset < 0.0 {
            continue;
        }
        let x = pad + offset * step;
        let (s, f) = (scale(m.succeeded), scale(m.failed));
        let _ = write!(
            bars,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{s:.1}\" fill=\"#3a8a4f\"><title>{} succeeded {}</title></rect>\
             <rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{f:.1}\" fill=\"#c0392b\"><title>{} failed {}</title></rect>",
            h / 2.0 - s,
            (step - 1.0).max(1.0),
            m.minute.format("%H:%M"),
            m.succeeded,
            h / 2.0,
            (step - 1.0).max(1.0),
            m.minute.format("%H:%M"),
            m.failed,
        );
    }
    let (done, failed) = series.iter().fold((0i64, 0i64), |(d, f), m| (d + m.succeeded + m.failed, f + m.failed));
    #[allow(clippy::cast_precision_loss)]
    let rate = if done > 0 { format!("{:.1} %", 100.0 * failed as f64 / done as f64) } else { "—".into() };
    format!(
        "<figure id=\"throughput\"><figcaption>Tasks per minute, last {minutes} min: {} succeeded, {} failed \
         (failure rate {rate}); peak {} a minute</figcaption>\
         <svg width=\"{w}\" height=\"{h}\" role=\"img\" style=\"background:#fafafa;border:1px solid #ddd\">\
         <line x1=\"{pad}\" y1=\"{:.1}\" x2=\"{w}\" y2=\"{:.1}\" stroke=\"#999\"/>\
         <text x=\"2\" y=\"14\" font-size=\"10\">{top}</text><text x=\"2\" y=\"{:.1}\" font-size=\"10\">{top}</text>{bars}</svg></figure>",
        group(done - failed),
        group(failed),
        group(top),
        h / 2.0,
        h / 2.0,
        h - 4.0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_encoding() {
        assert_eq!(esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(url("a b/c?d=é"), "a%20b%2Fc%3Fd%3D%C3%A9");
        assert_eq!(group(1_234_567), "1,234,567");
        assert_eq!(group(-12), "-12");
        assert_eq!(
            count(Count { value: 200_000, exact: false }),
            "<span title=\"estimated by the planner\">~200,000</span>"
        );
    }
}
