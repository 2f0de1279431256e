//! Per-minute counts of ended deliveries, by queue and task, written to `celeriac.task_count`
//! for the dashboard's charts: the worker adds up in memory and one upsert every
//! [`FLUSH_EVERY`] carries them (kept for the next flush when no connection can be had; dropped,
//! never doubled, when a write fails after it was sent).

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
    time::Duration,
};

use celeriac_store::{service::Service, TaskCountDelta};
use tokio_util::sync::CancellationToken;

use super::metrics::Ended;

/// How often a worker writes its counts.
const FLUSH_EVERY: Duration = Duration::from_secs(5);
/// How long counts are kept.
const KEEP: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often a worker deletes counts older than [`KEEP`].
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Counts by queue, then task: succeeded, failed, retried, other.
#[derive(Default)]
pub(super) struct TaskCounts {
    by_queue: Mutex<HashMap<String, HashMap<String, [i64; 4]>>>,
}

impl TaskCounts {
    /// Counts one delivery of `task` from `queue` that ended so.
    pub(super) fn add(&self, queue: &str, task: &str, ended: Ended) {
        let column = match ended {
            Ended::Succeeded => 0,
            Ended::Failed => 1,
            Ended::Retried => 2,
            Ended::Revoked | Ended::Rejected => 3,
        };
        self.add_to(queue, task, column);
    }

    /// Counts one message of `task` from `queue` dead-lettered before it ran.
    pub(super) fn dead_lettered(&self, queue: &str, task: &str) {
        self.add_to(queue, task, 3);
    }

    fn add_to(&self, queue: &str, task: &str, column: usize) {
        let mut by_queue = self.by_queue.lock().unwrap_or_else(PoisonError::into_inner);
        let tasks = match by_queue.get_mut(queue) {
            Some(tasks) => tasks,
            None => by_queue.entry(queue.to_owned()).or_default(),
        };
        match tasks.get_mut(task) {
            Some(counts) => counts[column] += 1,
            None => tasks.entry(task.to_owned()).or_default()[column] += 1,
        }
    }

    /// Everything counted since the last call.
    fn take(&self) -> Vec<TaskCountDelta> {
        let by_queue = std::mem::take(&mut *self.by_queue.lock().unwrap_or_else(PoisonError::into_inner));
        by_queue
            .into_iter()
            .flat_map(|(queue, tasks)| {
                tasks.into_iter().map(move |(task_name, [succeeded, failed, retried, other])| TaskCountDelta {
                    queue: queue.clone(),
                    task_name,
                    succeeded,
                    failed,
                    retried,
                    other,
                })
            })
            .collect()
    }

    /// Puts counts that could not be written back, to go with the next flush.
    fn restore(&self, deltas: Vec<TaskCountDelta>) {
        let mut by_queue = self.by_queue.lock().unwrap_or_else(PoisonError::into_inner);
        for d in deltas {
            let counts = by_queue.entry(d.queue).or_default().entry(d.task_name).or_default();
            for (slot, n) in counts.iter_mut().zip([d.succeeded, d.failed, d.retried, d.other]) {
                *slot += n;
            }
        }
    }
}

/// Writes the worker's counts every [`FLUSH_EVERY`], and once more at shutdown.
pub(super) struct TaskCountService {
    pub(super) shared: std::sync::Arc<super::Shared>,
}

impl TaskCountService {
    async fn flush(&self) {
        let deltas = self.shared.task_counts.take();
        if deltas.is_empty() {
            return;
        }
        match self.shared.store.task_count_add(&deltas).await {
            Ok(()) => {}
            // No connection: nothing was sent, the counts go with the next flush.
            Err(e @ celeriac_store::Error::Pool(_)) => {
                tracing::debug!("task counts: not written this time ({e}); kept for the next");
                self.shared.task_counts.restore(deltas);
            }
            // Sent, and maybe committed: dropped rather than counted twice.
            Err(e) => tracing::debug!("task counts: {e}; these counts are dropped"),
        }
    }
}

impl Service for TaskCountService {
    fn name(&self) -> &'static str {
        "task counts"
    }

    async fn run(self, shutdown: CancellationToken) {
        let mut last_prune = tokio::time::Instant::now() - PRUNE_EVERY;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(FLUSH_EVERY) => {}
            }
            self.flush().await;
            if last_prune.elapsed() >= PRUNE_EVERY {
                last_prune = tokio::time::Instant::now();
                if let Err(e) = self.shared.store.task_count_prune(KEEP).await {
                    tracing::debug!("task counts: pruning failed: {e}");
                }
            }
        }
        self.flush().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_taken_once_and_restored_when_unwritten() {
        let counts = TaskCounts::default();
        counts.add("q", "t.a", Ended::Succeeded);
        counts.add("q", "t.a", Ended::Failed);
        counts.add("q", "t.a", Ended::Succeeded);
        counts.dead_lettered("q", "t.b");
        let mut taken = counts.take();
        taken.sort_by(|a, b| a.task_name.cmp(&b.task_name));
        assert_eq!((taken[0].succeeded, taken[0].failed, taken[1].other), (2, 1, 1));
        assert!(counts.take().is_empty());
        counts.add("q", "t.a", Ended::Retried);
        counts.restore(taken);
        let again = counts.take();
        let a = again.iter().find(|d| d.task_name == "t.a").unwrap();
        assert_eq!((a.succeeded, a.failed, a.retried), (2, 1, 1));
    }
}
