//! What operators read and change beside the workers (the dashboard, `celeriac queue`): paused
//! queues, per-queue counts that stay cheap on millions of rows (exact up to a bound, else the
//! planner's estimate), task counts per minute, and keyset-paginated searches of messages and
//! dead letters. Nothing here runs `count(*)` over a whole big table or pages with `OFFSET`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::types::Type;

use crate::{rate_limit::PARKED_SQL, sql::Session, Error, Result, Store};

/// A queue no claim takes messages from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PausedQueue {
    /// The queue.
    pub queue: String,
    /// Since when.
    pub paused_at: DateTime<Utc>,
    /// The database role that paused it.
    pub paused_by: String,
    /// Why, as the operator said.
    pub reason: Option<String>,
}

/// A number of rows: counted, or the planner's estimate where counting would take too long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Count {
    /// How many.
    pub value: i64,
    /// Counted (true), or estimated (false).
    pub exact: bool,
}

/// Counts above this are estimated (the count stops there).
pub const COUNT_BOUND: i64 = 10_000;
/// How long one bounded count may take before the estimate is used instead.
const COUNT_TIMEOUT: Duration = Duration::from_millis(150);
/// How long a search may run before it is cut (and the page says so).
pub const SEARCH_TIMEOUT: Duration = Duration::from_secs(2);

/// One queue, as the dashboard's overview shows it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QueueOverview {
    /// The queue.
    pub queue: String,
    /// Ready to run now.
    pub ready: Count,
    /// Waiting for their ETA.
    pub delayed: Count,
    /// Held by workers (running or reserved).
    pub leased: Count,
    /// Waiting for a rate limit's token.
    pub rate_limited: Count,
    /// In `dead_letter`.
    pub dead_lettered: Count,
    /// Age in seconds of the oldest ready message.
    pub oldest_ready_age: Option<f64>,
    /// Set when the queue is paused.
    pub paused: Option<PausedQueue>,
}

/// Deliveries that ended, per queue and task: what a worker adds to `task_count`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskCountDelta {
    /// The queue.
    pub queue: String,
    /// The task name.
    pub task_name: String,
    /// Succeeded.
    pub succeeded: i64,
    /// Failed.
    pub failed: i64,
    /// Asked for a retry.
    pub retried: i64,
    /// Revoked, rejected or dead-lettered.
    pub other: i64,
}

/// The ended deliveries of one minute (every queue and task, or one of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MinuteCounts {
    /// The minute.
    pub minute: DateTime<Utc>,
    /// Succeeded.
    pub succeeded: i64,
    /// Failed.
    pub failed: i64,
    /// Asked for a retry.
    pub retried: i64,
    /// Revoked, rejected or dead-lettered.
    pub other: i64,
}

/// Where a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageState {
    /// Ready to run now.
    Ready,
    /// Waiting for its ETA.
    Delayed,
    /// Held by a worker.
    Leased,
    /// Waiting for a rate limit's token.
    RateLimited,
}

impl MessageState {
    /// The name in URLs and on the page.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            MessageState::Ready => "ready",
            MessageState::Delayed => "delayed",
            MessageState::Leased => "leased",
            MessageState::RateLimited => "rate_limited",
        }
    }

    /// The state named `s`.
    #[must_use]
    pub fn parse(s: &str) -> Option<MessageState> {
        [MessageState::Ready, MessageState::Delayed, MessageState::Leased, MessageState::RateLimited]
            .into_iter()
            .find(|state| state.as_str() == s)
    }
}

/// Which queued messages a search returns; every given condition must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageFilter {
    /// Only this queue.
    pub queue: Option<String>,
    /// Only this task name.
    pub task_name: Option<String>,
    /// Only this task id.
    pub task_id: Option<String>,
    /// Only messages in this state.
    pub state: Option<MessageState>,
    /// Enqueued at or after.
    pub since: Option<DateTime<Utc>>,
    /// Enqueued before.
    pub until: Option<DateTime<Utc>>,
}

/// A queued message (its envelope only when read alone).
#[derive(Debug, Clone, PartialEq)]
pub struct MessageRow {
    /// Row id.
    pub id: i64,
    /// Queue.
    pub queue: String,
    /// Task name, when the envelope named one.
    pub task_name: Option<String>,
    /// Task id, likewise.
    pub task_id: Option<String>,
    /// Priority.
    pub priority: i16,
    /// Due at.
    pub eta: DateTime<Utc>,
    /// Expires at.
    pub expires: Option<DateTime<Utc>>,
    /// Enqueued at.
    pub created_at: DateTime<Utc>,
    /// Where it is.
    pub state: MessageState,
    /// The worker holding it (its name, or its id when it has no row).
    pub held_by: Option<String>,
    /// Until when.
    pub lease_expires: Option<DateTime<Utc>>,
    /// Claims so far.
    pub attempt: i32,
    /// Times its lease ran out.
    pub redeliveries: i32,
    /// The envelope ([`Store::message_get`] only).
    pub payload: Option<Vec<u8>>,
}

/// Which dead letters a search returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterSearch {
    /// Only this queue.
    pub queue: Option<String>,
    /// Only this reason code.
    pub reason_code: Option<String>,
    /// Only this task name.
    pub task_name: Option<String>,
    /// Only this task id.
    pub task_id: Option<String>,
}

/// Which result rows a search returns; every given condition must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResultSearch {
    /// Only this state (`SUCCESS`, `FAILURE`, …).
    pub status: Option<String>,
    /// Only this task name.
    pub name: Option<String>,
    /// Done at or after.
    pub since: Option<DateTime<Utc>>,
    /// Done before.
    pub until: Option<DateTime<Utc>>,
}

/// The leading columns of [`MessageRow`], as `MESSAGE_COLUMNS` selects them from `m`.
const MESSAGE_COLUMNS: &str = "m.id, m.queue, m.task_name, m.task_id, m.priority, m.eta, m.expires, m.created_at,
     case when m.leased_by is null and m.eta <= now() then 'ready'
          when m.leased_by is null then 'delayed'
          when m.leased_by = '00000000-0000-0000-0000-000000000000'::uuid then 'rate_limited'
          else 'leased' end,
     case when m.leased_by is not null and m.leased_by <> '00000000-0000-0000-0000-000000000000'::uuid
          then coalesce((select w.hostname from celeriac.worker w where w.id = m.leased_by), m.leased_by::text) end,
     case when m.lease_expires <> 'infinity' then m.lease_expires end, m.attempt, m.redeliveries";

fn message_from_row(r: &tokio_postgres::Row, payload: bool) -> MessageRow {
    MessageRow {
        id: r.get(0),
        queue: r.get(1),
        task_name: r.get(2),
        task_id: r.get(3),
        priority: r.get(4),
        eta: r.get(5),
        expires: r.get(6),
        created_at: r.get(7),
        state: MessageState::parse(r.get(8)).unwrap_or(MessageState::Leased),
        held_by: r.get(9),
        lease_expires: r.get(10),
        attempt: r.get(11),
        redeliveries: r.get(12),
        payload: payload.then(|| r.get(13)),
    }
}

/// The rows each count of [`QueueOverview`] counts, in its field order; `{q}` stands for the
/// queue (`$1` in the count, `%L` in the estimate's copy). Ready and delayed messages are
/// counted per priority (`{by_priority}`): each priority's rows are one range of the claim index
/// (queue, priority, eta), so counting the few delayed messages of a queue of millions of ready
/// ones does not walk the ready ones.
const COUNTED: [&str; 5] = [
    "{by_priority} and m.eta <= now()",
    "{by_priority} and m.eta > now()",
    "select 1 from celeriac.message where leased_by is not null and leased_by <> {PARKED} and queue = {q}",
    "select 1 from celeriac.message where leased_by = {PARKED} and queue = {q}",
    "select 1 from celeriac.dead_letter where queue = {q}",
];

/// A queue's priorities with unleased messages, found by skipping through the claim index.
const PRIORITIES: &str = "with recursive p(priority) as (
         (select priority from celeriac.message where queue = {q} and leased_by is null
          order by priority desc limit 1)
         union all
         select (select m.priority from celeriac.message m
                 where m.queue = {q} and m.leased_by is null and m.priority < p.priority
                 order by m.priority desc limit 1)
         from p where p.priority is not null
     )";

impl Store {
    /// Pauses `queue`: no claim takes its messages until [`Store::queue_resume`]. Returns false
    /// when it was paused already (its reason is then left as it was).
    ///
    /// # Errors
    /// Connection errors.
    pub async fn queue_pause(&self, queue: &str, reason: Option<&str>) -> Result<bool> {
        let client = self.pool.get().await?;
        let n = client
            .touch(
                self.pooler,
                "insert into celeriac.queue_paused (queue, reason) values ($1, $2) on conflict (queue) do nothing",
                &[(&queue, Type::TEXT), (&reason, Type::TEXT)],
            )
            .await?;
        Ok(n == 1)
    }

    /// Resumes `queue`, waking its workers. Returns false when it was not paused.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn queue_resume(&self, queue: &str) -> Result<bool> {
        let client = self.pool.get().await?;
        let n = client
            .touch(self.pooler, "delete from celeriac.queue_paused where queue = $1", &[(&queue, Type::TEXT)])
            .await?;
        Ok(n == 1)
    }

    /// The paused queues, by name.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn queue_paused_list(&self) -> Result<Vec<PausedQueue>> {
        let client = self.pool.get().await?;
        let rows = client
            .rows(
                self.pooler,
                "select queue, paused_at, paused_by, reason from celeriac.queue_paused order by queue",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| PausedQueue { queue: r.get(0), paused_at: r.get(1), paused_by: r.get(2), reason: r.get(3) })
            .collect())
    }

    /// Every queue the database knows of: with messages or dead letters, paused, or consumed
    /// by a registered worker. Found by skipping through the indexes, one probe per queue; of
    /// the held (leased or parked) messages only the first 100,000 are looked at, so a queue
    /// whose every message is held beyond those may be missing.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn queue_names(&self) -> Result<Vec<String>> {
        let client = self.pool.get().await?;
        let rows = client
            .rows(
                self.pooler,
                "with recursive ready(queue) as (
                     (select queue from celeriac.message where leased_by is null order by queue limit 1)
                     union all
                     select (select m.queue from celeriac.message m
                             where m.leased_by is null and m.queue > r.queue order by m.queue limit 1)
                     from ready r where r.queue is not null
                 ), dead(queue) as (
                     (select queue from celeriac.dead_letter order by queue limit 1)
                     union all
                     select (select d.queue from celeriac.dead_letter d where d.queue > x.queue order by d.queue limit 1)
                     from dead x where x.queue is not null
                 )
                 select queue from ready where queue is not null
                 union select queue from dead where queue is not null
                 union select distinct queue from (
                     select queue from celeriac.message where leased_by is not null limit 100000) held
                 union select queue from celeriac.queue_paused
                 union select unnest(queues) from celeriac.worker
                 order by 1",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// One queue's counts: each exact up to [`COUNT_BOUND`] rows and within 150 ms, else the
    /// planner's estimate (marked so).
    ///
    /// # Errors
    /// Connection errors.
    pub async fn queue_overview(&self, queue: &str) -> Result<QueueOverview> {
        let mut counts = [Count::default(); 5];
        for (slot, query) in counts.iter_mut().zip(COUNTED) {
            *slot = self.bounded_count(query, queue).await?;
        }
        let [ready, delayed, leased, rate_limited, dead_lettered] = counts;
        let client = self.pool.get().await?;
        // The oldest ready message: the head of each priority's range of the claim index.
        let oldest = client
            .row(
                self.pooler,
                "with recursive p(priority) as (
                     (select priority from celeriac.message where queue = $1 and leased_by is null
                      order by priority desc limit 1)
                     union all
                     select (select m.priority from celeriac.message m
                             where m.queue = $1 and m.leased_by is null and m.priority < p.priority
                             order by m.priority desc limit 1)
                     from p where p.priority is not null
                 )
                 select extract(epoch from now() - min((
                     select m.eta from celeriac.message m
                     where m.queue = $1 and m.leased_by is null and m.priority = p.priority and m.eta <= now()
                     order by m.eta limit 1)))::float8
                 from p where p.priority is not null",
                &[(&queue, Type::TEXT)],
            )
            .await?
            .get(0);
        let paused = client
            .rows(
                self.pooler,
                "select queue, paused_at, paused_by, reason from celeriac.queue_paused where queue = $1",
                &[(&queue, Type::TEXT)],
            )
            .await?
            .first()
            .map(|r| PausedQueue { queue: r.get(0), paused_at: r.get(1), paused_by: r.get(2), reason: r.get(3) });
        Ok(QueueOverview {
            queue: queue.to_owned(),
            ready,
            delayed,
            leased,
            rate_limited,
            dead_lettered,
            oldest_ready_age: oldest,
            paused,
        })
    }

    /// Counts the rows of `query` (with `{q}` for the queue) up to [`COUNT_BOUND`] within
    /// [`COUNT_TIMEOUT`]; past either, asks the planner.
    async fn bounded_count(&self, query: &str, queue: &str) -> Result<Count> {
        let limit = COUNT_BOUND + 1;
        let (count_sql, estimate) = match query.strip_prefix("{by_priority}") {
            Some(condition) => (
                format!(
                    "{PRIORITIES} select count(*) from (
                         select 1 from p cross join lateral (
                             select 1 from celeriac.message m
                             where m.queue = {{q}} and m.leased_by is null and m.priority = p.priority {condition}
                             limit {limit}) x
                         where p.priority is not null limit {limit}) s"
                ),
                format!("select 1 from celeriac.message m where m.queue = {{q}} and m.leased_by is null {condition}"),
            ),
            None => (format!("select count(*) from ({query} limit {limit}) s"), query.to_owned()),
        };
        let estimate = estimate.replace("{PARKED}", PARKED_SQL);
        let mut client = self.pool.get().await?;
        let counted: Result<i64> = async {
            let tx = client.transaction().await.map_err(Error::from_pg)?;
            let timeout = COUNT_TIMEOUT.as_millis().to_string();
            tx.row(self.pooler, "select set_config('statement_timeout', $1, true)", &[(&timeout, Type::TEXT)]).await?;
            let sql = count_sql.replace("{PARKED}", PARKED_SQL).replace("{q}", "$1");
            let n: i64 = tx.row(self.pooler, &sql, &[(&queue, Type::TEXT)]).await?.get(0);
            tx.commit().await.map_err(Error::from_pg)?;
            Ok(n)
        }
        .await;
        match counted {
            Ok(n) if n <= COUNT_BOUND => return Ok(Count { value: n, exact: true }),
            Ok(_) => {}
            Err(e) if e.is_timeout() => {}
            Err(e) => return Err(e),
        }
        let estimate: i64 = client
            .row(
                self.pooler,
                "select celeriac.plan_rows(format($1, $2::text))",
                &[(&estimate.replace("{q}", "%L"), Type::TEXT), (&queue, Type::TEXT)],
            )
            .await?
            .get(0);
        Ok(Count { value: estimate.max(COUNT_BOUND + 1), exact: false })
    }

    /// Adds a worker's counts of ended deliveries to the current minute.
    ///
    /// # Errors
    /// Connection errors (nothing was added).
    pub async fn task_count_add(&self, deltas: &[TaskCountDelta]) -> Result<()> {
        if deltas.is_empty() {
            return Ok(());
        }
        let client = self.pool.get().await?;
        let queues: Vec<&str> = deltas.iter().map(|d| d.queue.as_str()).collect();
        let names: Vec<&str> = deltas.iter().map(|d| d.task_name.as_str()).collect();
        let column = |f: fn(&TaskCountDelta) -> i64| deltas.iter().map(f).collect::<Vec<i64>>();
        let (succeeded, failed, retried, other) =
            (column(|d| d.succeeded), column(|d| d.failed), column(|d| d.retried), column(|d| d.other));
        client
            .touch(
                self.pooler,
                "insert into celeriac.task_count as t (minute, queue, task_name, succeeded, failed, retried, other)
                 select date_trunc('minute', now()), q, n, s, f, r, o
                 from unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::int8[], $6::int8[]) as u(q, n, s, f, r, o)
                 order by q, n
                 on conflict (minute, queue, task_name) do update
                 set succeeded = t.succeeded + excluded.succeeded, failed = t.failed + excluded.failed,
                     retried = t.retried + excluded.retried, other = t.other + excluded.other",
                &[
                    (&queues, Type::TEXT_ARRAY),
                    (&names, Type::TEXT_ARRAY),
                    (&succeeded, Type::INT8_ARRAY),
                    (&failed, Type::INT8_ARRAY),
                    (&retried, Type::INT8_ARRAY),
                    (&other, Type::INT8_ARRAY),
                ],
            )
            .await?;
        Ok(())
    }

    /// Deletes the counts of minutes older than `age`. Returns how many rows.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn task_count_prune(&self, age: Duration) -> Result<u64> {
        let client = self.pool.get().await?;
        let seconds = age.as_secs_f64();
        client
            .touch(
                self.pooler,
                "delete from celeriac.task_count where minute < now() - make_interval(secs => $1)",
                &[(&seconds, Type::FLOAT8)],
            )
            .await
    }

    /// Ended deliveries per minute over the last `minutes` minutes (of `queue` only, when
    /// given), oldest first; minutes without any are left out.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn task_count_series(&self, minutes: i32, queue: Option<&str>) -> Result<Vec<MinuteCounts>> {
        let client = self.pool.get().await?;
        let rows = client
            .rows(
                self.pooler,
                "select minute, sum(succeeded)::int8, sum(failed)::int8, sum(retried)::int8, sum(other)::int8
                 from celeriac.task_count
                 where minute >= date_trunc('minute', now()) - make_interval(mins => $1)
                   and ($2::text is null or queue = $2)
                 group by minute order by minute",
                &[(&minutes, Type::INT4), (&queue, Type::TEXT)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| MinuteCounts {
                minute: r.get(0),
                succeeded: r.get(1),
                failed: r.get(2),
                retried: r.get(3),
                other: r.get(4),
            })
            .collect())
    }

    /// Ended deliveries per task over the last `minutes` minutes, busiest first:
    /// `(task, queue, succeeded, failed, retried, other)`.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn task_count_by_task(&self, minutes: i32) -> Result<Vec<(String, String, [i64; 4])>> {
        let client = self.pool.get().await?;
        let rows = client
            .rows(
                self.pooler,
                "select task_name, queue, sum(succeeded)::int8, sum(failed)::int8, sum(retried)::int8, sum(other)::int8
                 from celeriac.task_count
                 where minute >= date_trunc('minute', now()) - make_interval(mins => $1)
                 group by task_name, queue
                 order by sum(succeeded + failed + retried + other) desc, 1, 2 limit 100",
                &[(&minutes, Type::INT4)],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), [r.get(2), r.get(3), r.get(4), r.get(5)])).collect())
    }

    /// Queued messages matching `filter`, newest first, `limit` of them with ids below
    /// `before` (the last id of the previous page). Cut after [`SEARCH_TIMEOUT`]:
    /// `Ok(None)` then.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn message_search(
        &self,
        filter: &MessageFilter,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Option<Vec<MessageRow>>> {
        let state = filter.state.map(MessageState::as_str);
        let sql = format!(
            "select {MESSAGE_COLUMNS} from celeriac.message m
             where m.id < coalesce($1::int8, 9223372036854775807)
               and ($2::text is null or m.queue = $2)
               and ($3::text is null or m.task_name = $3)
               and ($4::text is null or m.task_id = $4)
               and ($5::text is null or case $5
                    when 'ready' then m.leased_by is null and m.eta <= now()
                    when 'delayed' then m.leased_by is null and m.eta > now()
                    when 'rate_limited' then m.leased_by = {PARKED_SQL}
                    else m.leased_by is not null and m.leased_by <> {PARKED_SQL} end)
               and ($6::timestamptz is null or m.created_at >= $6)
               and ($7::timestamptz is null or m.created_at < $7)
             order by m.id desc limit $8"
        );
        let params: [crate::sql::Param<'_>; 8] = [
            (&before, Type::INT8),
            (&filter.queue, Type::TEXT),
            (&filter.task_name, Type::TEXT),
            (&filter.task_id, Type::TEXT),
            (&state, Type::TEXT),
            (&filter.since, Type::TIMESTAMPTZ),
            (&filter.until, Type::TIMESTAMPTZ),
            (&limit, Type::INT8),
        ];
        let rows = self.rows_within(SEARCH_TIMEOUT, &sql, &params).await?;
        Ok(rows.map(|rows| rows.iter().map(|r| message_from_row(r, false)).collect()))
    }

    /// A queued message with its envelope.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn message_get(&self, id: i64) -> Result<Option<MessageRow>> {
        let client = self.pool.get().await?;
        let rows = client
            .rows(
                self.pooler,
                &format!("select {MESSAGE_COLUMNS}, m.payload from celeriac.message m where m.id = $1"),
                &[(&id, Type::INT8)],
            )
            .await?;
        Ok(rows.first().map(|r| message_from_row(r, true)))
    }

    /// The ids of the queued messages of `task_id`: delayed ones (and retries waiting for
    /// their countdown) through their index; with `scan`, the others too, by a scan of the
    /// table cut after [`SEARCH_TIMEOUT`] (`Ok(None)` then). A task whose result is stored has
    /// no message left but a retry's, so callers scan only when they found nothing else.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn message_ids_of_task(&self, task_id: &str, scan: bool) -> Result<Option<Vec<i64>>> {
        let sql = if scan {
            "select id from celeriac.message where task_id = $1 and eta > created_at
             union select id from celeriac.message where task_id = $1 order by 1"
        } else {
            "select id from celeriac.message where task_id = $1 and eta > created_at order by 1"
        };
        let rows = self.rows_within(SEARCH_TIMEOUT, sql, &[(&task_id, Type::TEXT)]).await?;
        Ok(rows.map(|rows| rows.iter().map(|r| r.get(0)).collect()))
    }

    /// Deletes one queued message no worker holds (a revoked task, a purge of one). Returns
    /// whether it was deleted.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn message_delete_unheld(&self, id: i64) -> Result<bool> {
        let client = self.pool.get().await?;
        let n = client
            .touch(
                self.pooler,
                &format!(
                    "delete from celeriac.message where id = $1 and (leased_by is null or leased_by = {PARKED_SQL})"
                ),
                &[(&id, Type::INT8)],
            )
            .await?;
        Ok(n == 1)
    }

    /// Dead letters matching `search`, newest first, `limit` of them with ids below `before`.
    /// Cut after [`SEARCH_TIMEOUT`]: `Ok(None)` then.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn dead_letter_search(
        &self,
        search: &DeadLetterSearch,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Option<Vec<crate::DeadLetter>>> {
        let rows = self
            .rows_within(
                SEARCH_TIMEOUT,
                "select id, queue, task_name, task_id, reason_code, reason, payload, attempt, failed_at
                 from celeriac.dead_letter
                 where id < coalesce($1::int8, 9223372036854775807)
                   and ($2::text is null or queue = $2)
                   and ($3::text is null or reason_code = $3)
                   and ($4::text is null or task_name = $4)
                   and ($5::text is null or task_id = $5)
                 order by id desc limit $6",
                &[
                    (&before, Type::INT8),
                    (&search.queue, Type::TEXT),
                    (&search.reason_code, Type::TEXT),
                    (&search.task_name, Type::TEXT),
                    (&search.task_id, Type::TEXT),
                    (&limit, Type::INT8),
                ],
            )
            .await?;
        Ok(rows.map(|rows| rows.iter().map(crate::dead_letter::from_row).collect()))
    }

    /// A dead letter by row id.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn dead_letter_get(&self, id: i64) -> Result<Option<crate::DeadLetter>> {
        let client = self.pool.get().await?;
        let rows = client
            .rows(
                self.pooler,
                "select id, queue, task_name, task_id, reason_code, reason, payload, attempt, failed_at
                 from celeriac.dead_letter where id = $1",
                &[(&id, Type::INT8)],
            )
            .await?;
        Ok(rows.first().map(crate::dead_letter::from_row))
    }

    /// The reason codes present among dead letters (a skip scan would need an index; the table
    /// is read up to [`SEARCH_TIMEOUT`], else the known codes are offered).
    ///
    /// # Errors
    /// Connection errors.
    pub async fn dead_letter_reasons(&self) -> Result<Option<Vec<String>>> {
        let rows = self
            .rows_within(SEARCH_TIMEOUT, "select distinct reason_code from celeriac.dead_letter order by 1", &[])
            .await?;
        Ok(rows.map(|rows| rows.iter().map(|r| r.get(0)).collect()))
    }

    /// The rows of `sql`, or `None` when it ran longer than `timeout`.
    async fn rows_within(
        &self,
        timeout: Duration,
        sql: &str,
        params: &[crate::sql::Param<'_>],
    ) -> Result<Option<Vec<tokio_postgres::Row>>> {
        let mut client = self.pool.get().await?;
        let result: Result<Vec<tokio_postgres::Row>> = async {
            let tx = client.transaction().await.map_err(Error::from_pg)?;
            let ms = timeout.as_millis().to_string();
            tx.row(self.pooler, "select set_config('statement_timeout', $1, true)", &[(&ms, Type::TEXT)]).await?;
            let rows = tx.rows(self.pooler, sql, params).await?;
            tx.commit().await.map_err(Error::from_pg)?;
            Ok(rows)
        }
        .await;
        match result {
            Ok(rows) => Ok(Some(rows)),
            Err(e) if e.is_timeout() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl Store {
    /// The result table's row of `task_id`, as the JSON text of the whole row (`to_jsonb`:
    /// every column of either layout by its own name; `bytea` as `\x…` hex).
    ///
    /// # Errors
    /// Connection errors.
    pub async fn result_row_json(&self, table: &crate::ResultTable, task_id: &str) -> Result<Option<String>> {
        let client = self.pool.get().await?;
        let sql = format!("select to_jsonb(t)::text from {} t where t.task_id = $1", table.qualified());
        let rows = client.rows(self.pooler, &sql, &[(&task_id, Type::TEXT)]).await?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    /// Result rows matching `search`, newest (highest id) first, `limit` of them with ids
    /// below `before`, as the JSON text of each row (the task name needs Celery's extended
    /// columns or django-celery-results). Cut after [`SEARCH_TIMEOUT`]: `Ok(None)` then.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn result_search(
        &self,
        table: &crate::ResultTable,
        search: &ResultSearch,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Option<Vec<(i64, String)>>> {
        let (name, done) = match table.kind() {
            crate::ResultTableKind::Django => ("t.task_name", "t.date_done"),
            // Celery's date_done is a naive UTC timestamp; without result_extended, no name.
            crate::ResultTableKind::Celery if table.extended() => ("t.name", "(t.date_done at time zone 'UTC')"),
            crate::ResultTableKind::Celery => ("null::text", "(t.date_done at time zone 'UTC')"),
        };
        let sql = format!(
            "select t.id::int8, to_jsonb(t)::text from {} t
             where t.id < coalesce($1::int8, 9223372036854775807)
               and ($2::text is null or t.status = $2)
               and ($3::text is null or {name} = $3)
               and ($4::timestamptz is null or {done} >= $4)
               and ($5::timestamptz is null or {done} < $5)
             order by t.id desc limit $6",
            table.qualified()
        );
        let rows = self
            .rows_within(
                SEARCH_TIMEOUT,
                &sql,
                &[
                    (&before, Type::INT8),
                    (&search.status, Type::TEXT),
                    (&search.name, Type::TEXT),
                    (&search.since, Type::TIMESTAMPTZ),
                    (&search.until, Type::TIMESTAMPTZ),
                    (&limit, Type::INT8),
                ],
            )
            .await?;
        Ok(rows.map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect()))
    }

    /// The result table to show beside the queue, when the queue database has one: Celery's
    /// `table` (default `celery_taskmeta`), else django-celery-results'. Never creates one.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn result_table_find(&self, table: Option<&str>) -> Result<Option<crate::ResultTable>> {
        let mut celery = crate::ResultTableConfig::celery();
        celery.create = false;
        if let Some(name) = table {
            match name.split_once('.') {
                Some((schema, name)) => {
                    celery.schema = Some(schema.to_owned());
                    name.clone_into(&mut celery.table);
                }
                None => name.clone_into(&mut celery.table),
            }
        }
        for config in [celery, crate::ResultTableConfig::django()] {
            match self.result_table_open(&config).await {
                Ok(t) => return Ok(Some(t)),
                Err(Error::Config(_) | Error::NotFound(_) | Error::SchemaMissing(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }
}
