//! The `message` table: enqueue, claim, renew, complete, retry, release, dead-letter, rescue.
//!
//! Durability: enqueues commit synchronously (an acknowledged enqueue survives a PostgreSQL
//! crash). Every state change after that (claim, completion, retry, release, dead-letter,
//! rescue, lease renewal) commits asynchronously via `celeriac.relaxed_commit()`, like a
//! RabbitMQ ack: a PostgreSQL *crash* (not a restart) can undo the last few hundred
//! milliseconds of them, which redelivers those messages (at-least-once); nothing is lost.

use std::{borrow::Cow, sync::LazyLock};

use celeriac_protocol::{DeadLetterReason, EncodedTask, Value};
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_postgres::types::Type;
use uuid::Uuid;

use crate::{
    rate_limit::PARKED_SQL,
    sql::{Param, Pooler, Session},
    Error, Result, Store,
};

/// A message to enqueue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewMessage {
    /// Queue name (the routing key).
    pub queue: String,
    /// Priority; higher runs first.
    pub priority: i16,
    /// Not before; `None` means now.
    pub eta: Option<DateTime<Utc>>,
    /// Expiry time, if any.
    pub expires: Option<DateTime<Utc>>,
    /// Task name from the headers (`None` if the envelope could not be read).
    pub task_name: Option<String>,
    /// Task id from the headers.
    pub task_id: Option<String>,
    /// The envelope bytes, stored as they are.
    pub payload: Vec<u8>,
}

impl From<EncodedTask> for NewMessage {
    fn from(t: EncodedTask) -> Self {
        NewMessage {
            queue: t.queue,
            priority: i16::try_from(t.priority).unwrap_or(i16::MAX),
            eta: t.eta,
            expires: t.expires,
            task_name: Some(t.task_name),
            task_id: Some(t.task_id),
            payload: t.payload,
        }
    }
}

impl NewMessage {
    /// A row for an envelope written by any Celery producer, stored unchanged: the queue,
    /// priority, eta, expiry, task name and id columns are read from it. An envelope that cannot
    /// be read is still a row (queue from `delivery_info` if readable, else `celery`), so the
    /// worker dead-letters it with its reason instead of it being lost at enqueue.
    #[must_use]
    pub fn from_envelope(payload: Vec<u8>) -> NewMessage {
        let mut row = NewMessage {
            queue: celeriac_protocol::message::DEFAULT_QUEUE.into(),
            priority: 0,
            eta: None,
            expires: None,
            task_name: None,
            task_id: None,
            payload,
        };
        if let Ok(env) = celeriac_protocol::Envelope::parse(&row.payload) {
            if let Some(q) = env
                .properties
                .get("delivery_info")
                .and_then(Value::as_map)
                .and_then(|d| d.get("routing_key"))
                .and_then(Value::as_str)
                .filter(|q| !q.is_empty())
            {
                q.clone_into(&mut row.queue);
            }
            if let Some(p) = env.properties.get("priority").and_then(Value::as_i64) {
                row.priority = i16::try_from(p.clamp(0, 255)).unwrap_or(0);
            }
            if let Ok(headers) = celeriac_protocol::TaskHeaders::parse(&env.headers) {
                row.eta = headers.eta;
                row.expires = headers.expires;
                row.task_name = Some(headers.task);
                row.task_id = Some(headers.id);
            }
        }
        row
    }
}

/// Identifies one claim of one message: completion and retry only act while both still match,
/// and only for the worker holding the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lease {
    /// Row id.
    pub id: i64,
    /// The attempt this claim was.
    pub attempt: i32,
}

/// A claimed message.
#[derive(Debug, Clone)]
pub struct ClaimedMessage {
    /// The lease this claim holds.
    pub lease: Lease,
    /// Queue it came from.
    pub queue: String,
    /// Priority.
    pub priority: i16,
    /// Its eta (the time it became ready).
    pub eta: DateTime<Utc>,
    /// Whether an earlier holder's lease ran out (the task may have started before).
    pub redelivered: bool,
    /// Times its lease ran out so far.
    pub redeliveries: i32,
    /// The envelope bytes.
    pub payload: Vec<u8>,
    /// When it was enqueued.
    pub created_at: DateTime<Utc>,
    /// Parked by the claim itself ([`ClaimParams::park`]): not leased, nothing to settle.
    pub parked: bool,
    /// Its task id is revoked (`celeriac.revoked`): the worker stores REVOKED instead of
    /// running it.
    pub revoked: bool,
}

/// A position in a queue's claim order (priority desc, eta, id): the last row claimed there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimCursor {
    /// Priority of the row.
    pub priority: i16,
    /// Its eta.
    pub eta: DateTime<Utc>,
    /// Its id.
    pub id: i64,
}

impl ClaimCursor {
    /// Whether `other` comes after `self` in claim order.
    #[must_use]
    pub fn is_before(&self, other: &ClaimCursor) -> bool {
        (std::cmp::Reverse(self.priority), self.eta, self.id) < (std::cmp::Reverse(other.priority), other.eta, other.id)
    }
}

/// Parameters of [`Store::message_claim`].
#[derive(Debug, Clone)]
pub struct ClaimParams<'a> {
    /// The claiming worker.
    pub worker_id: Uuid,
    /// Queues to claim from.
    pub queues: &'a [String],
    /// At most this many messages.
    pub limit: i64,
    /// Lease length in seconds.
    pub lease_seconds: f64,
    /// With one cursor per queue (same order as `queues`), claim only rows after the cursor at
    /// its priority: cheap on a long queue, but blind to rows before it (higher priority, or
    /// released and late-committed rows), so callers alternate with full claims.
    pub after: Option<&'a [ClaimCursor]>,
    /// At most this many of the claimed rows may be suspects: messages that came back after a
    /// lost lease or a requeue (`redeliveries > 0`). A consumer passes 1 while it holds no
    /// suspect and 0 while it does, so a message that kills its worker is never claimed
    /// together with another suspect (see `migrations/0002_claim_suspects.sql`).
    pub suspects: i64,
    /// Task names whose messages the claim parks instead of leasing (their rate limit queues
    /// new messages behind parked ones, see `migrations/0004_rate_limits.sql`): they come back
    /// with [`ClaimedMessage::parked`] set, count towards `limit` and need no settling.
    pub park: &'a [String],
}

/// One message to move to `dead_letter`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterParams {
    /// The lease held on it.
    pub lease: Lease,
    /// Why (stored as its code in `reason_code`).
    pub reason_code: DeadLetterReason,
    /// Human-readable reason.
    pub reason: String,
}

/// What one [`Store::message_rescue`] pass did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RescueReport {
    /// Messages made ready again, marked redelivered.
    pub rescued: u64,
    /// Messages dead-lettered for exhausting their redeliveries.
    pub dead_lettered: u64,
    /// Those messages: every worker that held them died (Celery's `WorkerLostError`).
    pub lost: Vec<LostMessage>,
}

/// A message dead-lettered because each worker that held it died before it finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostMessage {
    /// Its queue.
    pub queue: String,
    /// The envelope, as the producer wrote it.
    pub payload: Vec<u8>,
    /// How many times its lease ran out.
    pub redeliveries: i32,
}

/// How long a rescuer's heartbeats must have been succeeding before it frees leases whose
/// holder has no `worker` row (see [`Store::message_rescue`]): the default worker retention.
pub const ORPHAN_AFTER_HEALTHY_SECONDS: f64 = 600.0;

/// What [`Store::message_requeue_many`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequeueReport {
    /// Ids of the messages put back in their queue.
    pub requeued: Vec<i64>,
    /// Ids of the messages moved to `dead_letter` (`redeliveries_exhausted`).
    pub dead_lettered: Vec<i64>,
}

/// The claim statement around its choice of rows: lease them, bump the attempt, return them;
/// rows of the task names in `$5` are parked instead (same attempt, see [`ClaimParams::park`]).
/// Fresh rows (`redeliveries = 0`) come from each queue's head, or after its cursor
/// (`condition`); at most `$<suspects>` suspects (rows that came back after a lost lease, see
/// `migrations/0002_claim_suspects.sql`) come from the head of all queues together. Paused queues
/// (`queue_paused`, see `migrations/0008_operations.sql`) give nothing. The outer
/// `= any(array(…))` keeps the plan a primary-key lookup even as a generic plan.
fn claim_sql(queues: &str, condition: &str, suspects: u8) -> String {
    format!(
        "update celeriac.message t
         set leased_by = case when t.task_name = any($5::text[]) then {PARKED_SQL} else $3 end,
             lease_expires = case when t.task_name = any($5::text[]) then 'infinity'
                                  else now() + make_interval(secs => $4) end,
             attempt = t.attempt + (t.task_name = any($5::text[]) is not true)::int
         where t.id = any(array(
             select c.id
             from (
                 select m.id, m.priority, m.eta
                 from {queues}
                 cross join lateral (
                     select id, priority, eta
                     from celeriac.message
                     where queue = q.name and leased_by is null and redeliveries = 0 and eta <= now() {condition}
                       and not exists (select from celeriac.queue_paused p where p.queue = q.name)
                     order by priority desc, eta, id
                     limit $2
                     for update skip locked
                 ) m
                 union all
                 select s.id, s.priority, s.eta
                 from (
                     select x.id, x.priority, x.eta
                     from unnest($1::text[]) as sq(name)
                     cross join lateral (
                         select id, priority, eta
                         from celeriac.message
                         where queue = sq.name and leased_by is null and redeliveries > 0 and eta <= now()
                       and not exists (select from celeriac.queue_paused p where p.queue = sq.name)
                         order by priority desc, eta, id
                         limit ${suspects}
                         for update skip locked
                     ) x
                     order by x.priority desc, x.eta, x.id
                     limit ${suspects}
                 ) s
             ) c
             order by c.priority desc, c.eta, c.id
             limit $2))
           and celeriac.relaxed_commit()
         returning {CLAIMED_COLUMNS}"
    )
}

/// What a claim returns, read by [`claimed_from_row`]. The revocation check is a scalar
/// subquery, one primary-key probe per claimed row: an `exists` would let the planner hash the
/// whole `revoked` table for every claim instead.
pub(crate) const CLAIMED_COLUMNS: &str =
    "t.id, t.attempt, t.queue, t.priority, t.eta, t.redelivered, t.redeliveries, t.payload, \
     t.created_at, t.leased_by = '00000000-0000-0000-0000-000000000000'::uuid, \
     coalesce((select r.expires_at > now() from celeriac.revoked r where r.task_id = t.task_id), false)";

/// A claimed row, from [`CLAIMED_COLUMNS`].
pub(crate) fn claimed_from_row(r: &tokio_postgres::Row) -> ClaimedMessage {
    ClaimedMessage {
        lease: Lease { id: r.get(0), attempt: r.get(1) },
        queue: r.get(2),
        priority: r.get(3),
        eta: r.get(4),
        redelivered: r.get(5),
        redeliveries: r.get(6),
        payload: r.get(7),
        created_at: r.get(8),
        parked: r.get(9),
        revoked: r.get(10),
    }
}

/// Full claim: the head of each queue's ready rows, in (priority desc, eta, id) order.
static CLAIM_SQL: LazyLock<String> = LazyLock::new(|| claim_sql("unnest($1::text[]) as q(name)", "", 6));

/// Keyset claim: ready rows after a cursor, at the cursor's priority. The index range starts
/// at the cursor, so it does not walk the entries of rows already claimed (dead until vacuum).
static CLAIM_AFTER_SQL: LazyLock<String> = LazyLock::new(|| {
    claim_sql(
        "unnest($1::text[], $6::int2[], $7::timestamptz[], $8::int8[]) as q(name, priority, eta, id)",
        "and priority = q.priority and (eta, id) > (q.eta, q.id)",
        9,
    )
});

const INSERT_ONE_SQL: &str = "insert into celeriac.message (queue, priority, eta, expires, task_name, task_id, payload)
     values ($1, $2, coalesce($3, now()), $4, $5, $6, $7) returning id";

const INSERT_ONE_RELAXED_SQL: &str =
    "insert into celeriac.message (queue, priority, eta, expires, task_name, task_id, payload)
     select $1, $2, coalesce($3, now()), $4, $5, $6, $7 where celeriac.relaxed_commit() returning id";

/// How an enqueue commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// The commit returns once the message is on disk: it survives a PostgreSQL crash.
    #[default]
    Synchronous,
    /// `synchronous_commit = off` for that transaction: the commit returns before the WAL is
    /// flushed (within `wal_writer_delay`, 200 ms by default). A PostgreSQL crash (not a
    /// restart, not a client crash) can lose the last such enqueues, as RabbitMQ can lose
    /// messages published without confirms.
    Relaxed,
}

const INSERT_MANY_SQL: &str = "
insert into celeriac.message (queue, priority, eta, expires, task_name, task_id, payload)
select q, p, coalesce(e, now()), x, n, i, b
from unnest($1::text[], $2::int2[], $3::timestamptz[], $4::timestamptz[], $5::text[], $6::text[], $7::bytea[])
    as u(q, p, e, x, n, i, b)";

/// The single-row enqueue for a DB-API driver on the application's own connection (psycopg 3,
/// psycopg2, SQLAlchemy's `exec_driver_sql`, Django's cursor), so the message commits or rolls
/// back with the application's transaction. Seven positional `%s` parameters: queue, priority,
/// eta (ISO 8601 text or NULL for now), expires (ISO 8601 text or NULL), task name, task id,
/// envelope bytes.
pub const MESSAGE_INSERT_DBAPI_SQL: &str = "insert into celeriac.message \
(queue, priority, eta, expires, task_name, task_id, payload) \
values (%s, %s, coalesce(%s::timestamptz, now()), %s::timestamptz, %s, %s, %s)";

/// One step of [`Store::message_insert_stream`].
#[derive(Debug)]
pub enum InsertBatch {
    /// Messages to insert.
    Rows(Vec<NewMessage>),
    /// Commit everything sent so far.
    Commit,
}

/// Messages to insert as column arrays for `unnest` (queue, priority, eta, expires, task name,
/// task id, envelope), in that parameter order.
pub(crate) struct MessageColumns<'a> {
    queues: Vec<Cow<'a, str>>,
    priorities: Vec<i16>,
    etas: Vec<Option<DateTime<Utc>>>,
    expires: Vec<Option<DateTime<Utc>>>,
    names: Vec<Option<Cow<'a, str>>>,
    ids: Vec<Option<Cow<'a, str>>>,
    payloads: Vec<&'a [u8]>,
}

impl<'a> MessageColumns<'a> {
    pub(crate) fn of(msgs: &[&'a NewMessage]) -> Self {
        MessageColumns {
            queues: msgs.iter().map(|m| pg_text(&m.queue)).collect(),
            priorities: msgs.iter().map(|m| m.priority).collect(),
            etas: msgs.iter().map(|m| m.eta).collect(),
            expires: msgs.iter().map(|m| m.expires).collect(),
            names: msgs.iter().map(|m| m.task_name.as_deref().map(pg_text)).collect(),
            ids: msgs.iter().map(|m| m.task_id.as_deref().map(pg_text)).collect(),
            payloads: msgs.iter().map(|m| m.payload.as_slice()).collect(),
        }
    }

    /// The seven parameters, typed as `INSERT_MANY_SQL` declares them.
    pub(crate) fn params(&self) -> [Param<'_>; 7] {
        [
            (&self.queues as _, Type::TEXT_ARRAY),
            (&self.priorities as _, Type::INT2_ARRAY),
            (&self.etas as _, Type::TIMESTAMPTZ_ARRAY),
            (&self.expires as _, Type::TIMESTAMPTZ_ARRAY),
            (&self.names as _, Type::TEXT_ARRAY),
            (&self.ids as _, Type::TEXT_ARRAY),
            (&self.payloads as _, Type::BYTEA_ARRAY),
        ]
    }
}

async fn insert_chunk(tx: &deadpool_postgres::Transaction<'_>, pooler: Pooler, chunk: &[NewMessage]) -> Result<u64> {
    let rows: Vec<&NewMessage> = chunk.iter().collect();
    let columns = MessageColumns::of(&rows);
    tx.touch(pooler, INSERT_MANY_SQL, &columns.params()).await
}

const DEAD_LETTER_COLUMNS: &str =
    "message_id, queue, priority, task_name, task_id, payload, reason_code, reason, attempt, redeliveries, enqueued_at";

impl Store {
    /// Enqueues one message, committed synchronously, and returns its row id.
    ///
    /// # Errors
    /// Connection errors; [`Error::SchemaMissing`] before `migrate`.
    pub async fn message_insert(&self, msg: &NewMessage) -> Result<i64> {
        self.message_insert_with(msg, Durability::Synchronous).await
    }

    /// Enqueues one message with the given commit durability and returns its row id.
    ///
    /// # Errors
    /// Connection errors; [`Error::SchemaMissing`] before `migrate`.
    pub async fn message_insert_with(&self, msg: &NewMessage, durability: Durability) -> Result<i64> {
        let client = self.pool.get().await?;
        let sql = match durability {
            Durability::Synchronous => INSERT_ONE_SQL,
            Durability::Relaxed => INSERT_ONE_RELAXED_SQL,
        };
        let (queue, name, id) =
            (pg_text(&msg.queue), msg.task_name.as_deref().map(pg_text), msg.task_id.as_deref().map(pg_text));
        let params = [
            (&queue as _, Type::TEXT),
            (&msg.priority as _, Type::INT2),
            (&msg.eta as _, Type::TIMESTAMPTZ),
            (&msg.expires as _, Type::TIMESTAMPTZ),
            (&name as _, Type::TEXT),
            (&id as _, Type::TEXT),
            (&msg.payload as _, Type::BYTEA),
        ];
        Ok(client.row(self.pooler, sql, &params).await?.get(0))
    }

    /// Enqueues many messages with one multi-row statement per chunk of 5,000, all in one
    /// transaction (all or nothing), waking listeners once per statement.
    ///
    /// # Errors
    /// Connection errors; nothing is enqueued then.
    pub async fn message_insert_many(&self, msgs: &[NewMessage]) -> Result<u64> {
        if msgs.is_empty() {
            return Ok(0);
        }
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let mut total = 0;
        for chunk in msgs.chunks(5000) {
            total += insert_chunk(&tx, self.pooler, chunk).await?;
        }
        tx.commit().await?;
        Ok(total)
    }

    /// Enqueues batches as they arrive, in one transaction that commits when
    /// [`InsertBatch::Commit`] arrives (and rolls back if the sender goes away first), so a
    /// producer can encode the next batch while this one is written. Returns how many
    /// messages were enqueued.
    ///
    /// # Errors
    /// Connection errors, or [`Error::Aborted`] when the sender closed without committing;
    /// nothing is enqueued then. Batches sent after an error are dropped.
    pub async fn message_insert_stream(
        &self,
        mut batches: mpsc::UnboundedReceiver<InsertBatch>,
        durability: Durability,
    ) -> Result<u64> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        if durability == Durability::Relaxed {
            tx.batch_execute("set local synchronous_commit = off").await.map_err(Error::from_pg)?;
        }
        let mut total = 0;
        while let Some(batch) = batches.recv().await {
            match batch {
                InsertBatch::Rows(rows) => {
                    for chunk in rows.chunks(5000) {
                        total += insert_chunk(&tx, self.pooler, chunk).await?;
                    }
                }
                InsertBatch::Commit => {
                    tx.commit().await?;
                    return Ok(total);
                }
            }
        }
        Err(Error::Aborted)
    }

    /// Claims up to `limit` ready messages from `queues` in one statement, leasing them to
    /// `worker_id`. Rows other claimers hold are skipped, never waited for.
    ///
    /// # Errors
    /// Connection errors; on error nothing was claimed, or the claim will expire unseen and
    /// the rows come back after their lease.
    pub async fn message_claim(&self, params: &ClaimParams<'_>) -> Result<Vec<ClaimedMessage>> {
        let client = self.pool.get().await?;
        let common = [
            (&params.queues as _, Type::TEXT_ARRAY),
            (&params.limit as _, Type::INT8),
            (&params.worker_id as _, Type::UUID),
            (&params.lease_seconds as _, Type::FLOAT8),
            (&params.park as _, Type::TEXT_ARRAY),
        ];
        let rows = match params.after {
            None => {
                let suspects = [(&params.suspects as _, Type::INT8)];
                client.rows(self.pooler, &CLAIM_SQL, &[&common[..], &suspects].concat()).await?
            }
            Some(cursors) => {
                let priorities: Vec<i16> = cursors.iter().map(|c| c.priority).collect();
                let etas: Vec<DateTime<Utc>> = cursors.iter().map(|c| c.eta).collect();
                let ids: Vec<i64> = cursors.iter().map(|c| c.id).collect();
                let after = [
                    (&priorities as _, Type::INT2_ARRAY),
                    (&etas as _, Type::TIMESTAMPTZ_ARRAY),
                    (&ids as _, Type::INT8_ARRAY),
                    (&params.suspects as _, Type::INT8),
                ];
                client.rows(self.pooler, &CLAIM_AFTER_SQL, &[&common[..], &after].concat()).await?
            }
        };
        let mut claimed: Vec<ClaimedMessage> = rows.iter().map(claimed_from_row).collect();
        claimed.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.eta.cmp(&b.eta)).then(a.lease.id.cmp(&b.lease.id)));
        Ok(claimed)
    }

    /// Deletes finished messages (success or final failure), fenced by lease. Returns the ids of
    /// the rows deleted: those still held by `worker_id` at that attempt. A lease missing from
    /// the answer was lost (the message is, or will be, delivered again).
    ///
    /// # Errors
    /// Connection errors; the caller keeps the batch and tries again.
    pub async fn message_complete_many(&self, worker_id: Uuid, leases: &[Lease]) -> Result<Vec<i64>> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let (ids, attempts) = split(leases);
        let client = self.pool.get().await?;
        let rows = client
            .rows(
                self.pooler,
                "delete from celeriac.message m
                 using unnest($1::int8[], $2::int4[]) as c(id, attempt)
                 where m.id = c.id and m.attempt = c.attempt and m.leased_by is not distinct from $3 and celeriac.relaxed_commit()
                 returning m.id",
                &lease_params(&ids, &attempts, &worker_id),
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Gives leases back without counting a redelivery: the rows are ready again at once.
    /// `mark_redelivered` is false for messages that were claimed but never started (shutdown,
    /// a lease that ran out before the task started). Returns the ids of the rows freed (those
    /// still held at that attempt).
    ///
    /// # Errors
    /// Connection errors; the leases then simply expire.
    pub async fn message_release_many(
        &self,
        worker_id: Uuid,
        leases: &[Lease],
        mark_redelivered: bool,
    ) -> Result<Vec<i64>> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let (ids, attempts) = split(leases);
        let client = self.pool.get().await?;
        let params = [&lease_params(&ids, &attempts, &worker_id)[..], &[(&mark_redelivered as _, Type::BOOL)]].concat();
        let released: Vec<i64> = client
            .rows(
                self.pooler,
                "update celeriac.message m
                 set leased_by = null, lease_expires = null, redelivered = m.redelivered or $4
                 from unnest($1::int8[], $2::int4[]) as c(id, attempt)
                 where m.id = c.id and m.attempt = c.attempt and m.leased_by is not distinct from $3 and celeriac.relaxed_commit()
                 returning m.id",
                &params,
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !released.is_empty() {
            client.rows(self.pooler, "select pg_notify($1, '*')", &[(&crate::NOTIFY_CHANNEL, Type::TEXT)]).await?;
        }
        Ok(released)
    }

    /// Puts leased messages back in their queue to run again after they ran (Celery's
    /// `Reject(requeue=True)`, `reject_on_worker_lost`), marked redelivered, counting the
    /// redelivery (`redeliveries + 1`) as a lost lease does: a message already requeued or
    /// rescued `max_redeliveries` times moves to `dead_letter` (`redeliveries_exhausted`)
    /// instead, so a task that always requeues itself cannot loop forever. Fenced by the lease.
    ///
    /// # Errors
    /// Connection errors; the leases then simply expire.
    pub async fn message_requeue_many(
        &self,
        worker_id: Uuid,
        leases: &[Lease],
        max_redeliveries: i32,
    ) -> Result<RequeueReport> {
        if leases.is_empty() {
            return Ok(RequeueReport::default());
        }
        let (ids, attempts) = split(leases);
        let client = self.pool.get().await?;
        let bury = bury_exhausted_sql(
            "held",
            "$4",
            "requeued %s times (rejected with requeue, or its worker was lost); limit is %s redeliveries",
        );
        let sql = format!(
            "with held as (
                 select m.id from celeriac.message m
                 join unnest($1::int8[], $2::int4[]) as c(id, attempt) on m.id = c.id and m.attempt = c.attempt
                 where m.leased_by is not distinct from $3
                 for update of m
             ), {bury}, requeued as (
                 update celeriac.message m
                 set leased_by = null, lease_expires = null, redelivered = true, redeliveries = m.redeliveries + 1
                 from held h
                 where m.id = h.id and m.redeliveries < $4 and celeriac.relaxed_commit()
                 returning m.id
             ), woken as (
                 select pg_notify('celeriac_message', '*') from (select 1 from requeued limit 1) r
             )
             select array(select id from requeued), array(select message_id from buried), (select count(*) from woken)"
        );
        let params = [&lease_params(&ids, &attempts, &worker_id)[..], &[(&max_redeliveries as _, Type::INT4)]].concat();
        let row = client.row(self.pooler, &sql, &params).await?;
        Ok(RequeueReport { requeued: row.get(0), dead_lettered: row.get(1) })
    }

    /// Re-schedules a message for another run (Celery's `Task.retry`): replaces its envelope,
    /// sets the new `eta` and frees the lease. The retry is a new message in Celery's terms: its
    /// redeliveries start over. Returns false if the lease was lost meanwhile.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn message_retry(
        &self,
        worker_id: Uuid,
        lease: Lease,
        payload: &[u8],
        eta: DateTime<Utc>,
    ) -> Result<bool> {
        let client = self.pool.get().await?;
        let n = client
            .touch(
                self.pooler,
                "update celeriac.message
                 set payload = $4, eta = $5, leased_by = null, lease_expires = null, redelivered = false,
                     redeliveries = 0
                 where id = $1 and attempt = $2 and leased_by is not distinct from $3 and celeriac.relaxed_commit()",
                &[
                    (&lease.id, Type::INT8),
                    (&lease.attempt, Type::INT4),
                    (&worker_id, Type::UUID),
                    (&payload, Type::BYTEA),
                    (&eta, Type::TIMESTAMPTZ),
                ],
            )
            .await?;
        Ok(n == 1)
    }

    /// Moves held messages to `dead_letter` with their reasons, in one statement. Returns the
    /// ids of the messages moved (those still held at that attempt).
    ///
    /// # Errors
    /// Connection errors; the caller keeps the batch and tries again.
    pub async fn message_dead_letter_many(&self, worker_id: Uuid, items: &[DeadLetterParams]) -> Result<Vec<i64>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = items.iter().map(|i| i.lease.id).collect();
        let attempts: Vec<i32> = items.iter().map(|i| i.lease.attempt).collect();
        let codes: Vec<&str> = items.iter().map(|i| i.reason_code.as_str()).collect();
        let reasons: Vec<Cow<'_, str>> = items.iter().map(|i| pg_text(&i.reason)).collect();
        let client = self.pool.get().await?;
        let sql = format!(
            "with gone as (
                 delete from celeriac.message m
                 using unnest($1::int8[], $2::int4[], $3::text[], $4::text[]) as c(id, attempt, code, reason)
                 where m.id = c.id and m.attempt = c.attempt and m.leased_by is not distinct from $5 and celeriac.relaxed_commit()
                 returning m.*, c.code, c.reason
             )
             insert into celeriac.dead_letter ({DEAD_LETTER_COLUMNS})
             select id, queue, priority, task_name, task_id, payload, code, reason, attempt, redeliveries, created_at from gone
             returning message_id"
        );
        let params = [
            (&ids as _, Type::INT8_ARRAY),
            (&attempts as _, Type::INT4_ARRAY),
            (&codes as _, Type::TEXT_ARRAY),
            (&reasons as _, Type::TEXT_ARRAY),
            (&worker_id as _, Type::UUID),
        ];
        let rows = client.rows(self.pooler, &sql, &params).await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Frees messages whose worker stopped heartbeating: each becomes ready again with
    /// `redelivered = true`, unless it already had `max_redeliveries` redeliveries, in which case
    /// it moves to `dead_letter` (`redeliveries_exhausted`).
    ///
    /// A worker is dead when its heartbeat is older than its lease. `healthy_seconds` says how
    /// long the caller's own heartbeats have been succeeding without interruption: only workers
    /// whose lease is at most that long are judged, so after an outage that every worker went
    /// through, nobody is declared dead before it had the chance to heartbeat again. With the
    /// `rescuer`'s worker id, that health is also taken from its row when the statement runs
    /// (the lesser of the two): its last heartbeat within its lease, and since when its
    /// heartbeats have come without a gap (`healthy_since`) — a statement queued by a pooler
    /// through an outage then judges by what holds when it runs.
    ///
    /// A normal pass looks at dead workers' messages (and removes those workers' rows). A
    /// `full_scan` pass looks at every expired lease and also frees leases whose holder is gone
    /// (no worker row, judged only when `healthy_seconds` is at least
    /// [`ORPHAN_AFTER_HEALTHY_SECONDS`]) or alive but no longer renewing them (a claim whose
    /// reply was lost); it
    /// walks the whole lease index, so run it rarely. Safe to run in any number of processes at
    /// once (`SKIP LOCKED`).
    ///
    /// # Errors
    /// Connection errors.
    pub async fn message_rescue(
        &self,
        rescuer: Option<Uuid>,
        max_redeliveries: i32,
        full_scan: bool,
        healthy_seconds: f64,
    ) -> Result<RescueReport> {
        let client = self.pool.get().await?;
        let candidates = if full_scan {
            "select m.id from celeriac.message m
             left join celeriac.worker w on w.id = m.leased_by
             where m.leased_by is not null and m.lease_expires < now()
               and ((w.id is null and $3 and (select healthy from me) >= $5)
                    or m.lease_expires < w.heartbeat_at
                    or w.id = any(array(select id from dead)))
             for update of m skip locked"
        } else {
            "select m.id from celeriac.message m
             where m.leased_by = any(array(select id from dead)) and m.lease_expires < now()
             for update of m skip locked"
        };
        let bury = bury_exhausted_sql(
            "expired",
            "$1",
            "lease expired %s times without the task finishing (its worker died each time); limit is %s redeliveries",
        );
        let sql = format!(
            "with me as (
                 -- The rescuer's own health as the server sees it now (migration 0003): 0 unless
                 -- its last heartbeat is within its lease. Without a rescuer row: the caller's.
                 select coalesce(
                     (select case when heartbeat_at >= now() - make_interval(secs => lease_seconds)
                                  then least($2, extract(epoch from now() - healthy_since)::float8)
                                  else 0 end
                      from celeriac.worker where id = $4),
                     case when $4 is null then $2 else 0 end) as healthy
             ), dead as (
                 select id from celeriac.worker
                 where heartbeat_at < now() - make_interval(secs => lease_seconds)
                   and lease_seconds <= (select healthy from me)
             ), expired as (
                 {candidates}
             ), {bury}, rescued as (
                 update celeriac.message m
                 set leased_by = null, lease_expires = null, redelivered = true, redeliveries = m.redeliveries + 1
                 from expired e
                 where m.id = e.id and m.redeliveries < $1 and celeriac.relaxed_commit()
                 returning m.queue
             ), woken as (
                 select pg_notify('celeriac_message', '*') from (select 1 from rescued limit 1) r
             ), forgotten as (
                 -- A dead worker whose leases have all run out is gone for good.
                 delete from celeriac.worker w using dead d
                 where w.id = d.id
                   and not exists (select 1 from celeriac.message m where m.leased_by = w.id and m.lease_expires >= now())
                 returning 1
             )
             select (select count(*) from rescued), (select count(*) from buried), (select count(*) from woken),
                    (select count(*) from forgotten),
                    (select coalesce(array_agg(queue order by message_id), '{{}}') from buried),
                    (select coalesce(array_agg(payload order by message_id), '{{}}') from buried),
                    (select coalesce(array_agg(redeliveries order by message_id), '{{}}') from buried)"
        );
        // A lease whose holder has no row: the holder re-registers with its next heartbeat if it
        // is alive, so such a lease is only judged by a rescuer healthy for longer than any
        // worker's row is kept without a heartbeat (rows are pruned after that).
        let judge_orphans = healthy_seconds >= ORPHAN_AFTER_HEALTHY_SECONDS;
        let params = [
            (&max_redeliveries as _, Type::INT4),
            (&healthy_seconds as _, Type::FLOAT8),
            (&judge_orphans as _, Type::BOOL),
            (&rescuer as _, Type::UUID),
            (&ORPHAN_AFTER_HEALTHY_SECONDS as _, Type::FLOAT8),
        ];
        let row = client.row(self.pooler, &sql, &params).await?;
        let rescued: i64 = row.get(0);
        let dead: i64 = row.get(1);
        let (queues, payloads, redeliveries): (Vec<String>, Vec<Vec<u8>>, Vec<i32>) =
            (row.get(4), row.get(5), row.get(6));
        let lost = queues
            .into_iter()
            .zip(payloads)
            .zip(redeliveries)
            .map(|((queue, payload), redeliveries)| LostMessage { queue, payload, redeliveries })
            .collect();
        Ok(RescueReport { rescued: rescued.unsigned_abs(), dead_lettered: dead.unsigned_abs(), lost })
    }
}

impl Store {
    /// Deletes every message of `queue` that no worker holds (parked ones included). Returns
    /// how many.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn message_purge(&self, queue: &str) -> Result<u64> {
        let client = self.pool.get().await?;
        client
            .touch(
                self.pooler,
                &format!(
                    "delete from celeriac.message
                     where queue = $1 and (leased_by is null or leased_by = {})",
                    crate::rate_limit::PARKED_SQL
                ),
                &[(&queue, Type::TEXT)],
            )
            .await
    }
}

/// PostgreSQL text cannot hold NUL characters; wire-derived strings (queue and task names,
/// reasons quoting them) get U+FFFD in their place instead of failing the statement.
pub(crate) fn pg_text(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

/// The `poison` and `buried` CTEs shared by rescue and requeue: of the rows `source` names (a
/// CTE with an `id` column), those with at least `max` (a parameter) redeliveries move to
/// `dead_letter` as `redeliveries_exhausted`, with `reason` formatted from the redeliveries
/// and the limit. `buried` returns the moved messages' ids.
fn bury_exhausted_sql(source: &str, max: &str, reason: &str) -> String {
    let code = DeadLetterReason::RedeliveriesExhausted.as_str();
    format!(
        "poison as (
             delete from celeriac.message m using {source} s
             where m.id = s.id and m.redeliveries >= {max} and celeriac.relaxed_commit()
             returning m.*
         ), buried as (
             insert into celeriac.dead_letter ({DEAD_LETTER_COLUMNS})
             select id, queue, priority, task_name, task_id, payload, '{code}',
                    format('{reason}', redeliveries + 1, {max}::int4),
                    attempt, redeliveries + 1, created_at
             from poison
             returning message_id, queue, payload, redeliveries
         )"
    )
}

/// Ids and attempts of `leases`, as the statements' two arrays.
pub(crate) fn split(leases: &[Lease]) -> (Vec<i64>, Vec<i32>) {
    leases.iter().map(|l| (l.id, l.attempt)).unzip()
}

/// `$1` ids, `$2` attempts, `$3` the holder: the lease fence of every settling statement.
fn lease_params<'a>(ids: &'a Vec<i64>, attempts: &'a Vec<i32>, worker_id: &'a Uuid) -> [Param<'a>; 3] {
    [(ids, Type::INT8_ARRAY), (attempts, Type::INT4_ARRAY), (worker_id, Type::UUID)]
}
