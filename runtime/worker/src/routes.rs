//! Celery's `task_routes`, as far as the worker evaluates them for the messages it publishes
//! itself (chain links, callbacks, errbacks, groups, chords, chord bodies): the queue of a
//! signature that names none. Celery's order: the signature's own `queue` (or `routing_key`),
//! the task's declared `queue` (`Task.apply_async`'s exec options), each router in turn
//! (`Router.route`), then `task_default_queue`.
//!
//! A router is a map (Celery's `MapRoute`): an exact task name first, then its patterns in
//! order. A pattern is a regular expression matched from the start of the name (`re.match`):
//! the app's own compiled ones, or Celery's `fnmatch.translate` of a key with `*` (so `proj.*`
//! is `(?s:proj\..*)\Z`, a whole-name match where `*` is any run of characters and `?` one).
//! The app's settings reader sends their source; Python's `\Z` is the `regex` crate's `\z`.
//! Routers given as functions or import paths are not evaluated here (the worker warns).

use std::collections::HashMap;

/// One pattern of a map router.
#[derive(Debug, Clone)]
struct RoutePattern {
    regex: regex::Regex,
    queue: String,
}

/// One map router: task name → queue, then patterns → queue.
#[derive(Debug, Clone, Default)]
pub struct RouteMap {
    exact: HashMap<String, String>,
    patterns: Vec<RoutePattern>,
}

impl RouteMap {
    /// A router of `exact` names and `patterns` (Python regular expressions, as Celery compiled
    /// them), each to a queue. Returns it with the patterns that could not be compiled here
    /// (left out), described.
    #[must_use]
    pub fn new(exact: HashMap<String, String>, patterns: &[(String, String)]) -> (RouteMap, Vec<String>) {
        let mut compiled = Vec::with_capacity(patterns.len());
        let mut refused = Vec::new();
        for (source, queue) in patterns {
            let translated = source.replace(r"\Z", r"\z");
            match regex::Regex::new(&format!("^(?:{translated})")) {
                Ok(regex) => compiled.push(RoutePattern { regex, queue: queue.clone() }),
                Err(e) => refused.push(format!("{source:?}: {e}")),
            }
        }
        (RouteMap { exact, patterns: compiled }, refused)
    }

    fn queue_for(&self, task: &str) -> Option<&str> {
        self.exact
            .get(task)
            .or_else(|| self.patterns.iter().find(|p| p.regex.is_match(task)).map(|p| &p.queue))
            .map(String::as_str)
    }
}

/// The app's `task_routes` routers, in order, and its tasks' own queues.
#[derive(Debug, Clone, Default)]
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
        self.maps.iter().find_map(|map| map.queue_for(task))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `fnmatch.translate` of each glob, as Python 3.11 gives it.
    fn globs(pairs: &[(&str, &str)]) -> RouteMap {
        let patterns: Vec<(String, String)> = pairs.iter().map(|(p, q)| ((*p).to_owned(), (*q).to_owned())).collect();
        let (map, refused) = RouteMap::new(HashMap::new(), &patterns);
        assert!(refused.is_empty(), "{refused:?}");
        map
    }

    #[test]
    fn celerys_fnmatch_patterns_match_whole_names() {
        let map = globs(&[(r"(?s:proj\..*)\Z", "proj"), (r"(?s:.*\.add)\Z", "adds"), (r"(?s:a.[bc].*)\Z", "abc")]);
        assert_eq!(map.queue_for("proj.tasks.add"), Some("proj"));
        assert_eq!(map.queue_for("proj."), Some("proj"), "a star matches nothing too");
        assert_eq!(map.queue_for("projX.mul"), None, "the dot is literal");
        assert_eq!(map.queue_for("other.add"), Some("adds"));
        assert_eq!(map.queue_for("other.adder"), None, "the whole name");
        assert_eq!(map.queue_for("axb.z"), Some("abc"));
        assert_eq!(map.queue_for("axd"), None);
    }

    #[test]
    fn an_exact_name_beats_patterns_the_first_router_wins_and_bad_patterns_are_reported() {
        let (first, _) = RouteMap::new(
            HashMap::from([("proj.special".to_owned(), "special".to_owned())]),
            &[(r"(?s:proj\..*)\Z".into(), "proj".into())],
        );
        // A regex key of the app's own: matched from the start only, as re.match does.
        let (second, refused) =
            RouteMap::new(HashMap::new(), &[(r"other\.".into(), "other".into()), (r"(?<=x)y".into(), "never".into())]);
        assert_eq!(refused.len(), 1, "look-behind is not supported here: {refused:?}");
        let mut routes = TaskRoutes { declared: HashMap::new(), maps: vec![first, second] };
        assert_eq!(routes.queue_for("proj.special"), Some("special"));
        assert_eq!(routes.queue_for("proj.add"), Some("proj"));
        assert_eq!(routes.queue_for("other.add"), Some("other"));
        assert_eq!(routes.queue_for("x.other.add"), None);
        assert_eq!(TaskRoutes::default().queue_for("x"), None);
        routes.declared.insert("proj.add".into(), "declared".into());
        assert_eq!(routes.queue_for("proj.add"), Some("declared"), "the task's own queue first");
    }
}
