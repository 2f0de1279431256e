//! Celery's `task_routes`, as far as the worker evaluates them for the messages it publishes
//! itself (chain links, callbacks, errbacks, groups, chords, chord bodies): the queue of a
//! signature that names none. Celery's order: the signature's own `queue` (or `routing_key`),
//! the task's declared `queue` (`Task.apply_async`'s exec options), each router in turn
//! (`Router.route`), then `task_default_queue`.
//!
//! A router is a map (Celery's `MapRoute`): an exact task name first, then its glob patterns in
//! order. A pattern is Celery's `glob_to_re`: `*` is one or more characters, everything else is
//! literal, and the match is anchored at the start only (`re.match`), so `"proj.*"` routes
//! `"proj.tasks.add"`. Routers given as functions, import paths or compiled regular expressions
//! are not evaluated here (the app's settings reader reports them, and the worker warns).

use std::collections::HashMap;

/// One map router: task name → queue, then glob patterns → queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteMap {
    /// Exact task names.
    pub exact: HashMap<String, String>,
    /// Glob patterns (with `*`), in the app's order.
    pub patterns: Vec<(String, String)>,
}

/// The app's `task_routes` routers, in order, and its tasks' own queues.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskRoutes {
    /// Task name → the `queue` the app's task declares (`@app.task(queue=…)`), which beats the
    /// routers, as in Celery's `Task.apply_async`.
    pub declared: HashMap<String, String>,
    /// The routers.
    pub maps: Vec<RouteMap>,
}

impl TaskRoutes {
    /// The queue the routes give `task`, if any.
    #[must_use]
    pub fn queue_for(&self, task: &str) -> Option<&str> {
        if let Some(queue) = self.declared.get(task) {
            return Some(queue);
        }
        self.maps.iter().find_map(|map| {
            map.exact
                .get(task)
                .or_else(|| map.patterns.iter().find(|(glob, _)| glob_matches(glob, task)).map(|(_, q)| q))
                .map(String::as_str)
        })
    }
}

/// Celery's `re.match(glob_to_re(glob), name)`: `*` matches one or more characters, the rest
/// literally, from the start of `name` (its end is free).
fn glob_matches(glob: &str, name: &str) -> bool {
    let mut parts = glob.split('*');
    let Some(mut rest) = parts.next().and_then(|first| name.strip_prefix(first)) else {
        return false;
    };
    for part in parts {
        // The star before `part`: at least one character.
        let mut chars = rest.chars();
        if chars.next().is_none() {
            return false;
        }
        rest = chars.as_str();
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_as_celerys_glob_to_re() {
        assert!(glob_matches("proj.*", "proj.tasks.add"));
        assert!(!glob_matches("proj.*", "proj."), "a star is at least one character");
        assert!(!glob_matches("proj.*", "projX.add"), "the dot is literal");
        assert!(glob_matches("*.add", "proj.add"));
        assert!(glob_matches("*.add", "proj.adder"), "anchored at the start only");
        assert!(!glob_matches("*.add", ".add"));
        assert!(glob_matches("a*b*c", "a1b2c"));
        assert!(!glob_matches("a*b*c", "abc"));
        assert!(glob_matches("a**c", "a12c"));
        assert!(!glob_matches("a**c", "a1c"));
        assert!(glob_matches("exact", "exact.more"));
        assert!(glob_matches("ž*", "žluť"));
    }

    #[test]
    fn an_exact_name_beats_patterns_and_the_first_router_wins() {
        let first = RouteMap {
            exact: HashMap::from([("proj.special".to_owned(), "special".to_owned())]),
            patterns: vec![("proj.*".into(), "proj".into()), ("proj.special*".into(), "never".into())],
        };
        let second = RouteMap {
            exact: HashMap::from([("other.add".to_owned(), "other".to_owned())]),
            patterns: vec![("*".into(), "catch-all".into())],
        };
        let mut routes = TaskRoutes { declared: HashMap::new(), maps: vec![first, second] };
        assert_eq!(routes.queue_for("proj.special"), Some("special"));
        assert_eq!(routes.queue_for("proj.add"), Some("proj"));
        assert_eq!(routes.queue_for("other.add"), Some("other"));
        assert_eq!(routes.queue_for("x"), Some("catch-all"));
        assert_eq!(TaskRoutes::default().queue_for("x"), None);
        routes.declared.insert("proj.add".into(), "declared".into());
        assert_eq!(routes.queue_for("proj.add"), Some("declared"), "the task's own queue first");
    }
}
