//! The batched completer: writes outcomes, fenced by the lease, with one error policy.
//!
//! - The database unreachable: the batch is kept and retried with [`Backoff`] (logged at every
//!   retry), until it is written or the session's close gives up on it.
//! - The database refuses the batch (a statement error): the outcomes are written one by one,
//!   and one the server refuses on its own is logged and dropped; its lease then runs out and
//!   the message is delivered again, so one bad outcome cannot block the others.
//! - An outcome whose lease was lost meanwhile is refused by the fence: logged, and the message
//!   is (or will be) delivered again.

use std::{sync::Arc, time::Duration};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{held::Held, SettledHook, Settlement};
use crate::{service::Service, Backoff, Finish, Lease, ResultTable, Store};

/// What the completer is asked.
pub(crate) enum Command {
    Settle(Settlement),
    /// Answered once everything sent before it is written.
    Flush(oneshot::Sender<()>),
}

/// Below this many outcomes, the completer waits [`GATHER`] for more before writing.
const GATHER_BELOW: usize = 32;
/// How long the completer gathers outcomes before writing a small batch.
const GATHER: Duration = Duration::from_millis(2);
/// Most outcomes written per round.
const MOST_PER_ROUND: usize = 2000;

/// Writes the outcomes handed to the session, in batches. On shutdown it writes what was
/// handed over before (still retrying while the database is unreachable) for at most
/// `write_for`, then abandons the rest (those leases run out; the messages run again).
pub(crate) struct Completer {
    pub(crate) store: Store,
    pub(crate) worker_id: Uuid,
    pub(crate) max_redeliveries: i32,
    pub(crate) result_table: Option<Arc<ResultTable>>,
    pub(crate) held: Arc<Held>,
    pub(crate) on_settled: Option<SettledHook>,
    pub(crate) commands: mpsc::UnboundedReceiver<Command>,
    pub(crate) write_for: Duration,
    /// Cancelled `write_for` after shutdown: pending outcomes are abandoned.
    pub(crate) give_up: CancellationToken,
}

impl Service for Completer {
    fn name(&self) -> &'static str {
        "completer"
    }

    fn stop_within(&self) -> Duration {
        // A statement stuck on a dead connection is not interrupted by `give_up`.
        self.write_for + Duration::from_secs(5)
    }

    async fn run(mut self, shutdown: CancellationToken) {
        let deadline = {
            let (shutdown, give_up, write_for) = (shutdown.clone(), self.give_up.clone(), self.write_for);
            tokio::spawn(async move {
                shutdown.cancelled().await;
                tokio::time::sleep(write_for).await;
                give_up.cancel();
            })
        };
        let mut received = Vec::new();
        loop {
            let open = tokio::select! {
                biased;
                n = self.commands.recv_many(&mut received, MOST_PER_ROUND) => n > 0,
                () = shutdown.cancelled() => false,
            };
            if !open {
                // Shutdown (or the session is gone): what was handed over before is written.
                while let Ok(command) = self.commands.try_recv() {
                    received.push(command);
                }
                self.round(&mut received, false).await;
                break;
            }
            if !self.round(&mut received, true).await {
                break;
            }
        }
        deadline.abort();
    }
}

impl Completer {
    /// Writes the settlements of `received` and answers its flushes. False when the session
    /// gave up.
    async fn round(&mut self, received: &mut Vec<Command>, gather: bool) -> bool {
        if received.is_empty() {
            return true;
        }
        // Under load outcomes arrive one by one; gathering them for a moment turns many
        // one-row statements into a few larger ones. The rows stay leased meanwhile, so this
        // delays only their deletion, not any task.
        if gather && received.len() < GATHER_BELOW {
            tokio::time::sleep(GATHER).await;
            while received.len() < MOST_PER_ROUND {
                match self.commands.try_recv() {
                    Ok(c) => received.push(c),
                    Err(_) => break,
                }
            }
        }
        let mut batch = Vec::with_capacity(received.len());
        let mut flushes = Vec::new();
        for command in received.drain(..) {
            match command {
                Command::Settle(s) => batch.push(s),
                Command::Flush(done) => flushes.push(done),
            }
        }
        if !self.write(&batch).await {
            return false;
        }
        for done in flushes {
            let _ = done.send(());
        }
        true
    }

    /// Writes `batch` under the module's error policy. False when the session gave up first.
    async fn write(&self, batch: &[Settlement]) -> bool {
        if batch.is_empty() {
            return true;
        }
        let started = std::time::Instant::now();
        let mut backoff = Backoff::new();
        let mut progress = WriteProgress::default();
        loop {
            match write_batch(
                &self.store,
                self.worker_id,
                self.max_redeliveries,
                self.result_table.as_deref(),
                batch,
                &mut progress,
            )
            .await
            {
                Ok(_) => break,
                Err(e) if !e.is_connection() => {
                    crate::note_database_error();
                    tracing::error!(error = %e, "the database refused a batch of outcomes; recording them one by one");
                    for item in batch {
                        // What the batch wrote already stays written.
                        let mut progress = progress.clone();
                        let one = std::slice::from_ref(item);
                        let Err(e) = write_batch(
                            &self.store,
                            self.worker_id,
                            self.max_redeliveries,
                            self.result_table.as_deref(),
                            one,
                            &mut progress,
                        )
                        .await
                        else {
                            continue;
                        };
                        // A result row the database refuses (a value too long for its column, a
                        // table altered since the worker started) must not make a finished task
                        // run again: the message is finished without it, as Celery acks a task
                        // whose result could not be stored.
                        if let Settlement::Finish(f) = item {
                            if f.result.is_some() && !e.is_connection() {
                                let without = Settlement::Finish(Box::new(Finish { result: None, ..(**f).clone() }));
                                let retried = write_batch(
                                    &self.store,
                                    self.worker_id,
                                    self.max_redeliveries,
                                    None,
                                    std::slice::from_ref(&without),
                                    &mut progress,
                                )
                                .await;
                                if retried.is_ok() {
                                    tracing::error!(error = %e, message_id = item.lease().id, "the database refused a task's result row; the task is finished without it");
                                    continue;
                                }
                            }
                        }
                        tracing::error!(error = %e, message_id = item.lease().id, "dropping an outcome the database refuses; the message will be delivered again");
                    }
                    break;
                }
                Err(e) => {
                    crate::note_database_error();
                    tracing::warn!(error = %e, pending = batch.len(), retry_in = ?backoff.peek(), "could not record outcomes; retrying");
                    if !backoff.wait(&self.give_up).await {
                        tracing::error!(
                            pending = batch.len(),
                            "gave up recording outcomes at shutdown; those messages run again after their lease"
                        );
                        return false;
                    }
                }
            }
        }
        written(&self.held, self.on_settled.as_ref(), batch, started.elapsed());
        true
    }
}

/// After `batch` was written (or refused by the fence) in `took`: its leases are no longer
/// held, and the hook hears of it.
pub(crate) fn written(held: &Held, on_settled: Option<&SettledHook>, batch: &[Settlement], took: std::time::Duration) {
    held.remove(batch.iter().map(Settlement::lease));
    if let Some(hook) = on_settled {
        hook(batch, took);
    }
}

/// Which kinds of a batch's outcomes are written already (a batch that failed half-way is
/// retried from there, so each lease's answer is read once).
#[derive(Debug, Default, Clone)]
pub(crate) struct WriteProgress {
    retries: bool,
    complete: bool,
    finish: bool,
    dead: bool,
    release: bool,
    requeue: bool,
    park: bool,
}

/// Logs the outcomes the database refused because their lease was lost meanwhile (another
/// worker has the message, or will: it runs again). `done` holds the ids written.
fn log_refused(what: &str, asked: &[Lease], done: &[i64]) {
    if done.len() < asked.len() {
        let refused: Vec<i64> = asked.iter().map(|l| l.id).filter(|id| !done.contains(id)).collect();
        tracing::warn!(
            ?refused,
            "{what} refused for {} message(s): their lease was lost (the database was unreachable for longer than \
             the lease, or the worker stalled); they are delivered again",
            refused.len()
        );
    }
}

/// Writes a batch, kind by kind (one statement per kind, one per retry). Returns how many of
/// the batch's leases were still held (written); the rest were refused by the fence.
pub(crate) async fn write_batch(
    store: &Store,
    worker_id: Uuid,
    max_redeliveries: i32,
    result_table: Option<&ResultTable>,
    batch: &[Settlement],
    progress: &mut WriteProgress,
) -> crate::Result<usize> {
    let mut complete = Vec::new();
    let mut finish = Vec::new();
    let mut release = Vec::new();
    let mut park = Vec::new();
    let mut requeue = Vec::new();
    let mut dead = Vec::new();
    let mut retries = Vec::new();
    for s in batch {
        match s {
            Settlement::Complete(l) => complete.push(*l),
            Settlement::Release(l) => release.push(*l),
            Settlement::Park { lease, task } => park.push((*lease, task.clone())),
            Settlement::Requeue(l) => requeue.push(*l),
            Settlement::DeadLetter(d) => dead.push(d.clone()),
            Settlement::Retry { lease, payload, eta } => retries.push((*lease, payload, *eta)),
            Settlement::Finish(f) => finish.push(&**f),
        }
    }
    let mut written = 0;
    if !progress.retries {
        for (lease, payload, eta) in retries {
            if store.message_retry(worker_id, lease, payload, eta).await? {
                written += 1;
            } else {
                log_refused("a retry was", &[lease], &[]);
            }
        }
        progress.retries = true;
    }
    if !progress.complete {
        let done = store.message_complete_many(worker_id, &complete).await?;
        log_refused("completion was", &complete, &done);
        written += done.len();
        progress.complete = true;
    }
    if !progress.finish {
        let done = store.message_finish_many(worker_id, result_table, &finish).await?;
        log_refused("completion was", &finish.iter().map(|f| f.lease).collect::<Vec<_>>(), &done);
        written += done.len();
        progress.finish = true;
    }
    if !progress.dead {
        let done = store.message_dead_letter_many(worker_id, &dead).await?;
        log_refused("moving to dead_letter was", &dead.iter().map(|d| d.lease).collect::<Vec<_>>(), &done);
        written += done.len();
        progress.dead = true;
    }
    if !progress.release {
        // Not logged: a lease given back unstarted may have run out already on purpose.
        written += store.message_release_many(worker_id, &release, false).await?.len();
        progress.release = true;
    }
    if !progress.park {
        let done = store.message_park_many(worker_id, &park).await?;
        log_refused("parking was", &park.iter().map(|(l, _)| *l).collect::<Vec<_>>(), &done);
        written += done.len();
        progress.park = true;
    }
    if !progress.requeue {
        let report = store.message_requeue_many(worker_id, &requeue, max_redeliveries).await?;
        for id in &report.dead_lettered {
            tracing::error!(message_id = id, "a requeued message exhausted its redeliveries; moved to dead_letter");
        }
        let done: Vec<i64> = report.requeued.iter().chain(&report.dead_lettered).copied().collect();
        log_refused("requeue was", &requeue, &done);
        written += done.len();
        progress.requeue = true;
    }
    Ok(written)
}
