//! Rate limits: the `rate_limit` table (fleet-wide token buckets, operators' overrides, the
//! apps' declared limits) and the parked messages that wait for a token (migration 0004).
//!
//! A worker parks a message it may not run soon ([`Store::message_park_many`]): the row stays
//! in the database, held by [`PARKED`], out of every claim's way; workers that limit its task
//! type take parked rows back as fast as their limits allow ([`Store::message_claim_parked`]).
//! A fleet-wide limit is one token bucket per task name, refilled by time: workers take tokens
//! in batches ([`Store::rate_limit_acquire`]), so a busy limited task costs one statement per
//! batch, not per task.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::types::Type;
use uuid::Uuid;

use crate::{
    message::{claimed_from_row, CLAIMED_COLUMNS},
    sql::Session,
    ClaimParams, ClaimedMessage, Lease, Result, Store,
};

/// The holder of parked messages: no worker has this id, so no heartbeat renews, completes or
/// rescues them, and their lease (`infinity`) never runs out.
pub const PARKED: Uuid = Uuid::nil();

/// [`PARKED`] as SQL. Statements name it literally, never as a parameter: only then can a
/// generic plan use the parked-row indexes, whose predicate is `leased_by =` this value.
pub(crate) const PARKED_SQL: &str = "'00000000-0000-0000-0000-000000000000'::uuid";

/// Where a rate limit applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateLimitScope {
    /// One token bucket in the database for every worker together.
    Global,
    /// Each worker process on its own, as Celery's `rate_limit`.
    Worker,
}

impl RateLimitScope {
    /// The stored text: `global` or `worker`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            RateLimitScope::Global => "global",
            RateLimitScope::Worker => "worker",
        }
    }

    fn from_stored(s: &str) -> RateLimitScope {
        if s == "global" {
            RateLimitScope::Global
        } else {
            RateLimitScope::Worker
        }
    }
}

/// A limit as written (`"100/m"`) and its rate in tokens per second (0: no limit).
#[derive(Debug, Clone, PartialEq)]
pub struct RateValue {
    /// As written.
    pub spec: String,
    /// Tokens per second; 0 means no limit.
    pub per_second: f64,
}

/// One row of `celeriac.rate_limit`, with the number of messages of its task parked now.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitRow {
    /// Task name.
    pub task_name: String,
    /// Scope.
    pub scope: RateLimitScope,
    /// The app's value, as the last worker to start with the app declared it.
    pub declared: Option<RateValue>,
    /// The operator's value, which beats the app's.
    pub set: Option<RateValue>,
    /// When the row last changed.
    pub updated_at: DateTime<Utc>,
}

impl RateLimitRow {
    /// The value in force: the operator's if set, else the app's. `None`, or a rate of 0, is no
    /// limit.
    #[must_use]
    pub fn effective(&self) -> Option<&RateValue> {
        self.set.as_ref().or(self.declared.as_ref())
    }
}

/// What [`Store::rate_limit_acquire`] granted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TokenGrant {
    /// The task has no fleet-wide limit (no row, or a rate of 0).
    Unlimited,
    /// `granted` tokens (possibly 0); a next token is due in `next_in` at the current rate.
    Granted {
        /// Tokens taken.
        granted: u32,
        /// Time until the bucket holds a whole token again.
        next_in: Duration,
        /// The bucket's rate, in tokens per second.
        per_second: f64,
    },
}

/// A fleet-wide bucket holds at most this many seconds of tokens (at least one token): the
/// largest burst after an idle spell, and the largest batch one request takes.
pub const GLOBAL_BURST_SECONDS: f64 = 0.2;

/// The bucket's capacity at `per_second`.
#[must_use]
pub fn global_burst(per_second: f64) -> f64 {
    (per_second * GLOBAL_BURST_SECONDS).max(1.0)
}

/// [`global_burst`] in SQL, of the rate expression `rate`.
fn burst_sql(rate: &str) -> String {
    format!("greatest(1, {rate} * {GLOBAL_BURST_SECONDS})")
}

/// A row's rate in force, in SQL: the operator's, else the app's (0: no limit).
const RATE_SQL: &str = "coalesce(set_per_second, declared_per_second, 0)";

const RATE_LIMIT_COLUMNS: &str =
    "task_name, scope, declared, declared_per_second, set_value, set_per_second, updated_at";

fn rate_limit_from_row(r: &tokio_postgres::Row) -> RateLimitRow {
    let value = |spec: Option<String>, per_second: Option<f64>| match (spec, per_second) {
        (Some(spec), Some(per_second)) => Some(RateValue { spec, per_second }),
        _ => None,
    };
    RateLimitRow {
        task_name: r.get(0),
        scope: RateLimitScope::from_stored(r.get(1)),
        declared: value(r.get(2), r.get(3)),
        set: value(r.get(4), r.get(5)),
        updated_at: r.get(6),
    }
}

impl Store {
    /// Every rate limit the database knows, by task name and scope.
    ///
    /// # Errors
    /// Connection errors; [`crate::Error::SchemaMissing`] before `migrate`.
    pub async fn rate_limit_list(&self) -> Result<Vec<RateLimitRow>> {
        let client = self.pool.get().await?;
        let rows = client
            .rows(
                self.pooler,
                &format!("select {RATE_LIMIT_COLUMNS} from celeriac.rate_limit order by task_name, scope"),
                &[],
            )
            .await?;
        Ok(rows.iter().map(rate_limit_from_row).collect())
    }

    /// Sets the operator's limit for `task_name` in `scope` (a rate of 0: no limit, whatever the
    /// app declares). Workers apply it within their next poll (half a second).
    ///
    /// # Errors
    /// Connection errors.
    pub async fn rate_limit_set(&self, task_name: &str, scope: RateLimitScope, value: &RateValue) -> Result<()> {
        let client = self.pool.get().await?;
        let burst = global_burst(value.per_second);
        client
            .touch(
                self.pooler,
                "insert into celeriac.rate_limit as r (task_name, scope, set_value, set_per_second, tokens)
                 values ($1, $2, $3, $4, $5)
                 on conflict (task_name, scope) do update
                 set set_value = excluded.set_value, set_per_second = excluded.set_per_second, updated_at = now()",
                &[
                    (&task_name, Type::TEXT),
                    (&scope.as_str(), Type::TEXT),
                    (&value.spec, Type::TEXT),
                    (&value.per_second, Type::FLOAT8),
                    (&burst, Type::FLOAT8),
                ],
            )
            .await?;
        Ok(())
    }

    /// Removes the operator's limit for `task_name` in `scope`: the app's applies again (or
    /// none). Returns whether there was one.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn rate_limit_clear(&self, task_name: &str, scope: RateLimitScope) -> Result<bool> {
        let client = self.pool.get().await?;
        let rows = client
            .rows(
                self.pooler,
                "with gone as (
                     delete from celeriac.rate_limit
                     where task_name = $1 and scope = $2 and set_value is not null and declared is null
                     returning 1
                 ), cleared as (
                     update celeriac.rate_limit set set_value = null, set_per_second = null, updated_at = now()
                     where task_name = $1 and scope = $2 and set_value is not null and declared is not null
                     returning 1
                 )
                 select 1 from gone union all select 1 from cleared",
                &[(&task_name, Type::TEXT), (&scope.as_str(), Type::TEXT)],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    /// Records the limits an app declares in `scope` (a worker does at start): `declared` holds
    /// `(task name, value)`; the declared value of every other task in `known` (the app's tasks)
    /// is removed, so a limit dropped from the code stops applying. Tasks the app does not know
    /// are left alone; operators' values are never touched.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn rate_limit_declare(
        &self,
        scope: RateLimitScope,
        declared: &[(String, RateValue)],
        known: &[String],
    ) -> Result<()> {
        let names: Vec<&str> = declared.iter().map(|(n, _)| n.as_str()).collect();
        let specs: Vec<&str> = declared.iter().map(|(_, v)| v.spec.as_str()).collect();
        let rates: Vec<f64> = declared.iter().map(|(_, v)| v.per_second).collect();
        let client = self.pool.get().await?;
        client
            .touch(
                self.pooler,
                &format!(
                    "with declared as (
                         insert into celeriac.rate_limit as r (task_name, scope, declared, declared_per_second, tokens)
                         select d.name, $1, d.spec, d.rate, {burst}
                         from unnest($2::text[], $3::text[], $4::float8[]) as d(name, spec, rate)
                         on conflict (task_name, scope) do update
                         set declared = excluded.declared, declared_per_second = excluded.declared_per_second,
                             updated_at = now()
                         where r.declared is distinct from excluded.declared
                     ), dropped as (
                         update celeriac.rate_limit set declared = null, declared_per_second = null, updated_at = now()
                         where scope = $1 and task_name = any($5::text[]) and not task_name = any($2::text[])
                           and declared is not null and set_value is not null
                     )
                     delete from celeriac.rate_limit
                     where scope = $1 and task_name = any($5::text[]) and not task_name = any($2::text[])
                       and set_value is null",
                    burst = burst_sql("d.rate")
                ),
                &[
                    (&scope.as_str(), Type::TEXT),
                    (&names, Type::TEXT_ARRAY),
                    (&specs, Type::TEXT_ARRAY),
                    (&rates, Type::FLOAT8_ARRAY),
                    (&known, Type::TEXT_ARRAY),
                ],
            )
            .await?;
        Ok(())
    }

    /// Takes up to `want` tokens from `task_name`'s fleet-wide bucket (refilled at its rate
    /// since the last take, holding at most [`global_burst`] tokens). One statement; the row
    /// lock makes concurrent takers queue, so no token is granted twice.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn rate_limit_acquire(&self, task_name: &str, want: u32) -> Result<TokenGrant> {
        let client = self.pool.get().await?;
        let want = i64::from(want);
        let rows = client
            .rows(
                self.pooler,
                &format!(
                    "with level as (
                         select r.task_name, r.scope, rate,
                                least({burst},
                                      r.tokens + rate * greatest(0, extract(epoch from now() - r.refilled_at)::float8)) as avail
                         from celeriac.rate_limit r,
                              lateral (select {RATE_SQL} as rate) x
                         where r.task_name = $1 and r.scope = 'global' and rate > 0
                         for update of r
                     )
                     update celeriac.rate_limit r
                     set tokens = l.avail - least($2, floor(l.avail)), refilled_at = greatest(r.refilled_at, now())
                     from level l
                     where r.task_name = l.task_name and r.scope = l.scope
                     returning least($2, floor(l.avail))::int8, l.avail, l.rate",
                    burst = burst_sql("rate")
                ),
                &[(&task_name, Type::TEXT), (&want, Type::INT8)],
            )
            .await?;
        let Some(row) = rows.first() else { return Ok(TokenGrant::Unlimited) };
        let granted: i64 = row.get(0);
        let avail: f64 = row.get(1);
        let per_second: f64 = row.get(2);
        #[allow(clippy::cast_precision_loss)]
        let left = avail - granted as f64;
        let next_in = Duration::try_from_secs_f64(((1.0 - left) / per_second).max(0.0)).unwrap_or(Duration::MAX);
        Ok(TokenGrant::Granted { granted: u32::try_from(granted.max(0)).unwrap_or(u32::MAX), next_in, per_second })
    }

    /// Puts `tokens` taken but not used back in `task_name`'s fleet-wide bucket (never above its
    /// capacity).
    ///
    /// # Errors
    /// Connection errors.
    pub async fn rate_limit_give_back(&self, task_name: &str, tokens: u32) -> Result<()> {
        if tokens == 0 {
            return Ok(());
        }
        let client = self.pool.get().await?;
        let tokens = f64::from(tokens);
        client
            .touch(
                self.pooler,
                &format!(
                    "update celeriac.rate_limit
                     set tokens = least({burst},
                                        tokens + $2)
                     where task_name = $1 and scope = 'global'",
                    burst = burst_sql(RATE_SQL)
                ),
                &[(&task_name, Type::TEXT), (&tokens, Type::FLOAT8)],
            )
            .await?;
        Ok(())
    }

    /// Parks held messages, each with the task name it was parked under (recorded where the row
    /// has none, e.g. a protocol-1 message): they leave the claims' way until a worker that
    /// limits their task takes them back (see the module docs). Fenced by the lease; returns
    /// the ids parked.
    ///
    /// # Errors
    /// Connection errors; the leases then simply expire and the messages are claimed again.
    pub async fn message_park_many(&self, worker_id: Uuid, parks: &[(Lease, String)]) -> Result<Vec<i64>> {
        if parks.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = parks.iter().map(|(l, _)| l.id).collect();
        let attempts: Vec<i32> = parks.iter().map(|(l, _)| l.attempt).collect();
        let names: Vec<&str> = parks.iter().map(|(_, n)| n.as_str()).collect();
        let client = self.pool.get().await?;
        let rows = client
            .rows(
                self.pooler,
                &format!(
                    "update celeriac.message m
                     set leased_by = {PARKED_SQL}, lease_expires = 'infinity', task_name = coalesce(m.task_name, c.name)
                     from unnest($1::int8[], $2::int4[], $4::text[]) as c(id, attempt, name)
                     where m.id = c.id and m.attempt = c.attempt and m.leased_by is not distinct from $3 and celeriac.relaxed_commit()
                     returning m.id"
                ),
                &[
                    (&ids, Type::INT8_ARRAY),
                    (&attempts, Type::INT4_ARRAY),
                    (&worker_id, Type::UUID),
                    (&names, Type::TEXT_ARRAY),
                ],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Claims up to `limit` parked messages of `task_name` in `queues`, oldest first (priority
    /// desc, eta, id), leasing them to `worker_id` as [`Store::message_claim`] does, with at most
    /// `suspects` suspects among them (see [`crate::ClaimParams::suspects`]).
    ///
    /// # Errors
    /// Connection errors; on error nothing was claimed, or the claim expires unseen and the rows
    /// come back after their lease.
    pub async fn message_claim_parked(&self, params: &ClaimParams<'_>, task_name: &str) -> Result<Vec<ClaimedMessage>> {
        let client = self.pool.get().await?;
        let rows = client
            .rows(
                self.pooler,
                &format!(
                    "update celeriac.message t
                     set leased_by = $3, lease_expires = now() + make_interval(secs => $4), attempt = t.attempt + 1
                     where t.id = any(array(
                         select c.id from (
                             select f.id, f.priority, f.eta
                             from unnest($1::text[]) as q(name)
                             cross join lateral (
                                 select id, priority, eta from celeriac.message
                                 where task_name = $5 and queue = q.name and leased_by = {PARKED_SQL} and redeliveries = 0
                                   and not exists (select from celeriac.queue_paused p where p.queue = q.name)
                                 order by priority desc, eta, id
                                 limit $2
                                 for update skip locked) f
                             union all
                             select s.id, s.priority, s.eta from (
                                 select x.id, x.priority, x.eta
                                 from unnest($1::text[]) as sq(name)
                                 cross join lateral (
                                     select id, priority, eta from celeriac.message
                                     where task_name = $5 and queue = sq.name and leased_by = {PARKED_SQL}
                                       and redeliveries > 0
                                       and not exists (select from celeriac.queue_paused p where p.queue = sq.name)
                                     order by priority desc, eta, id
                                     limit $6
                                     for update skip locked) x
                                 order by x.priority desc, x.eta, x.id
                                 limit $6) s
                         ) c
                         order by c.priority desc, c.eta, c.id
                         limit $2))
                       and celeriac.relaxed_commit()
                     returning {CLAIMED_COLUMNS}"
                ),
                &[
                    (&params.queues, Type::TEXT_ARRAY),
                    (&params.limit, Type::INT8),
                    (&params.worker_id, Type::UUID),
                    (&params.lease_seconds, Type::FLOAT8),
                    (&task_name, Type::TEXT),
                    (&params.suspects, Type::INT8),
                ],
            )
            .await?;
        let mut claimed: Vec<ClaimedMessage> = rows.iter().map(claimed_from_row).collect();
        claimed.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.eta.cmp(&b.eta)).then(a.lease.id.cmp(&b.lease.id)));
        Ok(claimed)
    }

    /// Whether messages of `task_name` are parked in `queues`.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn message_parked_exists(&self, task_name: &str, queues: &[String]) -> Result<bool> {
        let client = self.pool.get().await?;
        let row = client
            .row(
                self.pooler,
                &format!(
                    "select exists (
                         select 1 from celeriac.message
                         where task_name = $1 and leased_by = {PARKED_SQL} and queue = any($2::text[]))"
                ),
                &[(&task_name, Type::TEXT), (&queues, Type::TEXT_ARRAY)],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Parked messages per task name (all queues).
    ///
    /// # Errors
    /// Connection errors.
    pub async fn message_parked_counts(&self) -> Result<Vec<(String, i64)>> {
        let client = self.pool.get().await?;
        let rows = client
            .rows(
                self.pooler,
                &format!(
                    "select task_name, count(*) from celeriac.message where leased_by = {PARKED_SQL}
                     group by task_name order by 1"
                ),
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Returns to their queue the parked messages of each task type and queue that no live
    /// worker consuming that queue limits any more (the last one stopped, or its limit was
    /// removed), so they do not wait forever. Returns how many. The (task, queue) pairs are
    /// found by a skip scan of the parked index, so the cost follows the number of pairs, plus
    /// the rows moved.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn message_unpark_unlimited(&self) -> Result<u64> {
        let client = self.pool.get().await?;
        let row = client
            .row(
                self.pooler,
                &format!(
                    "with recursive pairs(name, queue) as (
                     (select task_name, queue from celeriac.message where leased_by = {PARKED_SQL}
                      order by task_name, queue limit 1)
                     union all
                     select p.next[1], p.next[2] from (
                         select (select array[m.task_name, m.queue] from celeriac.message m
                                 where m.leased_by = {PARKED_SQL} and (m.task_name, m.queue) > (n.name, n.queue)
                                 order by m.task_name, m.queue limit 1) as next
                         from pairs n) p
                     where p.next is not null
                 ), orphaned as (
                     select name, queue from pairs
                     where not exists (
                         select 1 from celeriac.worker w
                         where name = any(w.rate_limited) and queue = any(w.queues)
                           and w.heartbeat_at >= now() - make_interval(secs => w.lease_seconds))
                 ), moved as (
                     update celeriac.message m set leased_by = null, lease_expires = null
                     from orphaned o
                     where m.leased_by = {PARKED_SQL} and m.task_name = o.name and m.queue = o.queue
                       and celeriac.relaxed_commit()
                     returning 1
                 ), woken as (
                     select pg_notify($1, '*') from (select 1 from moved limit 1) x
                 )
             select (select count(*) from moved), (select count(*) from woken)"
                ),
                &[(&crate::NOTIFY_CHANNEL, Type::TEXT)],
            )
            .await?;
        let moved: i64 = row.get(0);
        Ok(moved.unsigned_abs())
    }
}
