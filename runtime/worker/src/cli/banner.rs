//! The start-up banner `celery worker` prints to standard output whatever the log level (unless
//! `-q`): the node, the platform, the app, the queue and result backends (passwords masked), the
//! concurrency, whether task events are sent, the queues consumed and, at `-l INFO` or lower, the
//! tasks. Same layout as Celery's, so what people and scripts look for is where they expect it.

use std::fmt::Write as _;

/// Celery's logo, one piece per line of the banner's top.
const ARTLINES: [&str; 12] = [
    " --------------",
    "--- ***** -----",
    "-- ******* ----",
    "- *** --- * ---",
    "- ** ----------",
    "- ** ----------",
    "- ** ----------",
    "- ** ----------",
    "- *** --- * ---",
    "-- ******* ----",
    "--- ***** -----",
    " --------------",
];

/// One queue as Celery's `[queues]` section shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct QueueLine {
    pub name: String,
    pub exchange: String,
    pub exchange_type: String,
    pub routing_key: String,
}

impl QueueLine {
    /// A queue the app does not declare: Celery creates it with an exchange of its name.
    pub fn undeclared(name: &str) -> Self {
        QueueLine {
            name: name.to_owned(),
            exchange: name.to_owned(),
            exchange_type: "direct".to_owned(),
            routing_key: name.to_owned(),
        }
    }
}

/// What the banner shows.
#[derive(Debug, Clone)]
pub(super) struct Banner {
    /// The worker's node name (`celery@host`).
    pub hostname: String,
    /// The Celery version of the app's interpreter (none without `-A`).
    pub celery: Option<String>,
    /// Python's `platform.platform()` (or the kernel's, without `-A`).
    pub platform: String,
    /// Local time at start, to the second.
    pub timestamp: String,
    /// The app as Celery shows it (`proj:0x7f…`), or what runs without one.
    pub app: String,
    /// The queue database, password masked.
    pub transport: String,
    /// The result backend, password masked (`disabled://` for none).
    pub results: String,
    /// `2 (prefork)`, `{min=1, max=4} (prefork)`.
    pub concurrency: String,
    /// `task-*` events are sent (`-E`).
    pub task_events: bool,
    /// The queues consumed.
    pub queues: Vec<QueueLine>,
    /// The tasks this worker runs, when the level shows them (`-l INFO` or lower).
    pub tasks: Option<Vec<String>>,
}

impl Banner {
    /// The text `celery worker` prints: art beside the first twelve lines, the rest indented
    /// under it, then the `[tasks]` section if any.
    pub fn render(&self) -> String {
        let version = match &self.celery {
            Some(celery) => format!("v{} (celeriac; Celery {celery})", env!("CARGO_PKG_VERSION")),
            None => format!("v{} (celeriac)", env!("CARGO_PKG_VERSION")),
        };
        let events = if self.task_events { "ON" } else { "OFF (enable -E to monitor tasks in this worker)" };
        let mut queues = self.queues.clone();
        queues.sort_by(|a, b| a.name.cmp(&b.name));
        let queues: Vec<String> = queues
            .iter()
            .map(|q| format!(".> {:<16} exchange={}({}) key={}", q.name, q.exchange, q.exchange_type, q.routing_key))
            .collect();
        let body = format!(
            "{} {version}\n\n{} {}\n\n[config]\n.> app:         {}\n.> transport:   {}\n.> results:     {}\n\
             .> concurrency: {}\n.> task events: {events}\n\n[queues]\n{}\n",
            self.hostname,
            self.platform,
            self.timestamp,
            self.app,
            self.transport,
            self.results,
            self.concurrency,
            queues.join("\n"),
        );
        let mut out = String::from(" \n");
        for (i, line) in body.lines().enumerate() {
            match ARTLINES.get(i) {
                Some(art) => {
                    let _ = writeln!(out, "{art} {line}");
                }
                None => {
                    let _ = writeln!(out, "{:16}{line}", "");
                }
            }
        }
        if let Some(tasks) = &self.tasks {
            out.push_str("\n[tasks]\n");
            for task in tasks {
                let _ = writeln!(out, "  . {task}");
            }
        }
        out
    }
}

/// The tasks listed at this log level, as Celery lists them: none above INFO; at INFO, all but
/// Celery's own (`celery.*`); at DEBUG, all. Sorted.
pub(super) fn listed_tasks(loglevel: &str, names: &[&str]) -> Option<Vec<String>> {
    let level = loglevel.to_ascii_uppercase();
    let builtins = match level.as_str() {
        "DEBUG" => true,
        "INFO" => false,
        _ => return None,
    };
    let mut tasks: Vec<String> =
        names.iter().filter(|n| builtins || !n.starts_with("celery.")).map(|n| (*n).to_owned()).collect();
    tasks.sort_unstable();
    Some(tasks)
}

/// The platform as Python's `platform.platform()` names it on Linux, from the kernel alone.
pub(super) fn kernel_platform() -> String {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("Linux-{}-{}", release.trim(), std::env::consts::ARCH)
}

/// What `celery beat` prints as it starts (unless `-q`), for `celeriac beat`.
pub(super) fn beat(
    transport: &str,
    app: Option<&str>,
    logfile: Option<&str>,
    loglevel: &str,
    max_interval: f64,
) -> String {
    let seconds = if max_interval.fract() == 0.0 { format!("{max_interval:.0}") } else { max_interval.to_string() };
    format!(
        "celeriac beat v{} is starting.\n__    -    ... __   -        _\nLocalTime -> {}\nConfiguration ->\n    \
         . broker -> {transport}\n    . loader -> {}\n    . scheduler -> celeriac (the schedule table; one leader at a time)\n    \
         . logfile -> {}@%{}\n    . maxinterval -> {} ({seconds}s)",
        env!("CARGO_PKG_VERSION"),
        now(),
        app.map_or_else(|| "none (no -A)".to_owned(), |app| format!("the app {app}")),
        logfile.unwrap_or("[stderr]"),
        loglevel.to_ascii_uppercase(),
        humanize_seconds(max_interval),
    )
}

/// Celery's `humanize_seconds`: the largest unit the span reaches, to two decimals (`now` under
/// a second).
fn humanize_seconds(seconds: f64) -> String {
    let seconds = (seconds * 100.0).round() / 100.0;
    for (unit, size) in [("day", 86_400.0), ("hour", 3_600.0), ("minute", 60.0), ("second", 1.0)] {
        if seconds >= size {
            let n = seconds / size;
            return format!("{n:.2} {unit}{}", if n == 1.0 { "" } else { "s" });
        }
    }
    "now".to_owned()
}

/// Local time, to the second, as Celery prints it.
pub(super) fn now() -> String {
    chrono::Local::now().format("%Y-%m-%d %H:%M:%S").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn banner() -> Banner {
        Banner {
            hostname: "celery@box".into(),
            celery: Some("5.7.0".into()),
            platform: "Linux-6.1-x86_64-with-glibc2.36".into(),
            timestamp: "2026-12-04 01:00:00".into(),
            app: "proj:0x7f00".into(),
            transport: "postgresql://me@db:5432/q".into(),
            results: "disabled://".into(),
            concurrency: "2 (prefork)".into(),
            task_events: false,
            queues: vec![QueueLine::undeclared("low"), QueueLine::undeclared("celery")],
            tasks: None,
        }
    }

    #[test]
    fn the_banner_has_celerys_layout() {
        let text = banner().render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], " ");
        assert_eq!(
            lines[1],
            format!(" -------------- celery@box v{} (celeriac; Celery 5.7.0)", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(lines[3], "-- ******* ---- Linux-6.1-x86_64-with-glibc2.36 2026-12-04 01:00:00");
        assert_eq!(lines[5], "- ** ---------- [config]");
        assert_eq!(lines[6], "- ** ---------- .> app:         proj:0x7f00");
        assert_eq!(lines[7], "- ** ---------- .> transport:   postgresql://me@db:5432/q");
        assert_eq!(lines[9], "- *** --- * --- .> concurrency: 2 (prefork)");
        assert_eq!(lines[10], "-- ******* ---- .> task events: OFF (enable -E to monitor tasks in this worker)");
        assert_eq!(lines[12], " -------------- [queues]");
        // Sorted by name; past the art, indented as Celery indents.
        assert_eq!(lines[13], "                .> celery           exchange=celery(direct) key=celery");
        assert_eq!(lines[14], "                .> low              exchange=low(direct) key=low");
        assert!(!text.contains("[tasks]"));
    }

    #[test]
    fn the_beat_banner_has_celerys_layout() {
        let text = beat("postgresql://me@db:5432/q", Some("proj"), None, "warning", 5.0);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], format!("celeriac beat v{} is starting.", env!("CARGO_PKG_VERSION")));
        assert_eq!(lines[1], "__    -    ... __   -        _");
        assert!(lines[2].starts_with("LocalTime -> "), "{text}");
        assert_eq!(lines[3], "Configuration ->");
        assert_eq!(lines[4], "    . broker -> postgresql://me@db:5432/q");
        assert_eq!(lines[7], "    . logfile -> [stderr]@%WARNING");
        assert_eq!(lines[8], "    . maxinterval -> 5.00 seconds (5s)");
        assert_eq!(humanize_seconds(300.0), "5.00 minutes");
        assert_eq!(humanize_seconds(1.0), "1.00 second");
        assert_eq!(humanize_seconds(0.5), "now");
        assert!(
            beat("x", None, Some("/var/log/b.log"), "INFO", 0.5).ends_with("@%INFO\n    . maxinterval -> now (0.5s)")
        );
    }

    #[test]
    fn tasks_are_listed_at_info_and_builtins_at_debug() {
        let names = ["proj.b", "celery.chord_unlock", "proj.a"];
        assert_eq!(listed_tasks("WARNING", &names), None);
        assert_eq!(listed_tasks("info", &names), Some(vec!["proj.a".into(), "proj.b".into()]));
        assert_eq!(listed_tasks("DEBUG", &names).map(|t| t.len()), Some(3));
        let text = Banner { tasks: listed_tasks("INFO", &names), task_events: true, ..banner() }.render();
        assert!(text.contains(".> task events: ON\n"), "{text}");
        assert!(text.ends_with("\n[tasks]\n  . proj.a\n  . proj.b\n"), "{text}");
    }
}
