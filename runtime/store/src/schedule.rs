//! Periodic schedules (migration 0005): the `schedule` table, its fire ledger
//! (`schedule_fire`), the tick that fires due rows, and the ramp between Celery Beat and
//! celeriac.
//!
//! The tick ([`Store::schedule_tick`]) is where exactly-once per slot comes from: one transaction
//! that checks the caller's lease term (`FOR SHARE` on the lease row, so a takeover waits for a
//! tick in flight and a stale leader's tick finds no row), locks the due rows it owns (`FOR
//! UPDATE SKIP LOCKED`), records every (schedule, slot) in the ledger (a second fire of a slot
//! is refused by its primary key), inserts the Celery messages of the recorded fires only, and
//! advances `next_run_at` (compare-and-set on the value it read). Any number of tickers may run
//! it; a crash anywhere rolls the whole fire back. What to fire is decided by the caller's
//! planner (a pure function of the row and the database's clock): this crate holds no schedule
//! arithmetic.

use chrono::{DateTime, Utc};
use tokio_postgres::{types::Type, Row};
use uuid::Uuid;

use crate::{message::NewMessage, sql::Session, Error, Result, Store};

/// When a schedule fires.
#[derive(Debug, Clone, PartialEq)]
pub enum When {
    /// Celery's crontab fields as given: minute, hour, day_of_week, day_of_month, month_of_year.
    Crontab([String; 5]),
    /// Every `seconds`; `relative`: slots on the interval's resolution (Celery's
    /// `schedule(relative=True)`).
    Interval {
        /// Seconds between slots (positive).
        seconds: f64,
        /// Slots on the interval's resolution.
        relative: bool,
    },
    /// Once, at this instant.
    Clocked(DateTime<Utc>),
    /// Celery's `solar(event, lat, lon)`, as JSON: kept for Beat, never fired by celeriac.
    Solar(String),
}

impl When {
    /// `crontab`, `interval`, `clocked` or `solar`.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            When::Crontab(_) => "crontab",
            When::Interval { .. } => "interval",
            When::Clocked(_) => "clocked",
            When::Solar(_) => "solar",
        }
    }
}

/// What a schedule fires and when: the part of a row a definition (the app's code, the
/// operator, django-celery-beat) writes.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleDefinition {
    /// Unique name (the `beat_schedule` key).
    pub name: String,
    /// Task name.
    pub task: String,
    /// Positional arguments, a JSON array.
    pub args_json: String,
    /// Keyword arguments, a JSON object.
    pub kwargs_json: String,
    /// `apply_async` options, a JSON object.
    pub options_json: String,
    /// When.
    pub when: When,
    /// IANA zone of a crontab.
    pub tz: String,
    /// Not before.
    pub start_at: Option<DateTime<Utc>>,
    /// Not after (the row is disabled then).
    pub end_at: Option<DateTime<Utc>>,
    /// Disable after the first fire.
    pub one_off: bool,
    /// `skip`, `latest` or `all`.
    pub catchup: String,
    /// Missed slots older than this are not fired (`None`: no limit).
    pub catchup_window_seconds: Option<f64>,
    /// At most this many missed slots fired by `all`.
    pub catchup_max: i32,
    /// `allow` or `skip`.
    pub overlap: String,
}

impl ScheduleDefinition {
    /// `task` on `when` under `name`, with no arguments or options, in UTC, and Beat's policies
    /// (catch-up `latest`, overlap `allow`; `catchup_max` 100).
    #[must_use]
    pub fn new(name: impl Into<String>, task: impl Into<String>, when: When) -> Self {
        ScheduleDefinition {
            name: name.into(),
            task: task.into(),
            args_json: "[]".into(),
            kwargs_json: "{}".into(),
            options_json: "{}".into(),
            when,
            tz: "UTC".into(),
            start_at: None,
            end_at: None,
            one_off: false,
            catchup: "latest".into(),
            catchup_window_seconds: None,
            catchup_max: 100,
            overlap: "allow".into(),
        }
    }
}

/// One row of `celeriac.schedule`.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// Row id.
    pub id: i64,
    /// The definition.
    pub definition: ScheduleDefinition,
    /// False when removed from the app's code, invalid or done.
    pub enabled: bool,
    /// Why it is disabled.
    pub disabled_reason: Option<String>,
    /// Paused by an operator.
    pub paused: bool,
    /// Why.
    pub paused_reason: Option<String>,
    /// `beat` or `celeriac`.
    pub owner: String,
    /// Pinned owner, overriding the ramp.
    pub owner_pin: Option<String>,
    /// Stable bucket of the name, 0–99.
    pub ramp_bucket: i16,
    /// `app`, `manual` or `django`.
    pub source: String,
    /// The next slot; `None`: the next tick records a baseline.
    pub next_run_at: Option<DateTime<Utc>>,
    /// The last slot fired.
    pub last_slot_at: Option<DateTime<Utc>>,
    /// When the last fire happened (the database's clock).
    pub last_run_at: Option<DateTime<Utc>>,
    /// The task id of the last fire.
    pub last_task_id: Option<String>,
    /// Fires so far.
    pub total_run_count: i64,
    /// When Celery Beat last sent it, as celeriac's Beat scheduler recorded it.
    pub last_beat_send_at: Option<DateTime<Utc>>,
    /// Bumped by every re-baselining change.
    pub spec_version: i32,
    /// Whether the message of the last fire is still queued or running.
    pub previous_pending: bool,
    /// Set by its last move back to Beat: celeriac's Beat scheduler classes send nothing before
    /// it (so a Beat send recorded since is at or after it).
    pub beat_from: Option<DateTime<Utc>>,
}

const SCHEDULE_COLUMNS: &str = "s.id, s.name, s.task, s.args::text, s.kwargs::text, s.options::text, s.kind, s.crontab,
    s.every_seconds, s.relative, s.clocked_at, s.solar::text, s.tz, s.start_at, s.end_at, s.one_off, s.catchup,
    s.catchup_window_seconds, s.catchup_max, s.overlap, s.enabled, s.disabled_reason, s.paused, s.paused_reason,
    s.owner, s.owner_pin, s.ramp_bucket, s.source, s.next_run_at, s.last_slot_at, s.last_run_at, s.last_task_id,
    s.total_run_count, s.last_beat_send_at, s.spec_version,
    (s.last_message_id is not null and exists (select 1 from celeriac.message m where m.id = s.last_message_id)),
    s.beat_from";

fn schedule_from_row(row: &Row) -> Schedule {
    let kind: String = row.get(6);
    let when = match kind.as_str() {
        "crontab" => {
            let fields: Vec<String> = row.get::<_, Option<Vec<String>>>(7).unwrap_or_default();
            let field = |i: usize| fields.get(i).cloned().unwrap_or_else(|| "*".to_owned());
            When::Crontab([field(0), field(1), field(2), field(3), field(4)])
        }
        "interval" => When::Interval { seconds: row.get::<_, Option<f64>>(8).unwrap_or(0.0), relative: row.get(9) },
        "clocked" => When::Clocked(row.get::<_, Option<DateTime<Utc>>>(10).unwrap_or(DateTime::UNIX_EPOCH)),
        _ => When::Solar(row.get::<_, Option<String>>(11).unwrap_or_default()),
    };
    Schedule {
        id: row.get(0),
        definition: ScheduleDefinition {
            name: row.get(1),
            task: row.get(2),
            args_json: row.get(3),
            kwargs_json: row.get(4),
            options_json: row.get(5),
            when,
            tz: row.get(12),
            start_at: row.get(13),
            end_at: row.get(14),
            one_off: row.get(15),
            catchup: row.get(16),
            catchup_window_seconds: row.get(17),
            catchup_max: row.get(18),
            overlap: row.get(19),
        },
        enabled: row.get(20),
        disabled_reason: row.get(21),
        paused: row.get(22),
        paused_reason: row.get(23),
        owner: row.get(24),
        owner_pin: row.get(25),
        ramp_bucket: row.get(26),
        source: row.get(27),
        next_run_at: row.get(28),
        last_slot_at: row.get(29),
        last_run_at: row.get(30),
        last_task_id: row.get(31),
        total_run_count: row.get(32),
        last_beat_send_at: row.get(33),
        spec_version: row.get(34),
        previous_pending: row.get(35),
        beat_from: row.get(36),
    }
}

/// The columns a definition writes, as statement parameters ($1..$19, in `DEFINITION_COLUMNS` order).
struct DefinitionParams<'a> {
    d: &'a ScheduleDefinition,
    crontab: Option<Vec<&'a str>>,
    every: Option<f64>,
    relative: bool,
    clocked: Option<DateTime<Utc>>,
    solar: Option<&'a str>,
    kind: &'static str,
}

impl<'a> DefinitionParams<'a> {
    fn new(d: &'a ScheduleDefinition) -> Self {
        let (mut crontab, mut every, mut relative, mut clocked, mut solar) = (None, None, false, None, None);
        match &d.when {
            When::Crontab(fields) => crontab = Some(fields.iter().map(String::as_str).collect()),
            When::Interval { seconds, relative: r } => (every, relative) = (Some(*seconds), *r),
            When::Clocked(at) => clocked = Some(*at),
            When::Solar(json) => solar = Some(json.as_str()),
        }
        DefinitionParams { d, crontab, every, relative, clocked, solar, kind: d.when.kind() }
    }

    fn params(&self) -> Vec<(&(dyn tokio_postgres::types::ToSql + Sync), Type)> {
        let d = self.d;
        let params: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 19] = [
            (&d.name, Type::TEXT),
            (&d.task, Type::TEXT),
            (&d.args_json, Type::TEXT),
            (&d.kwargs_json, Type::TEXT),
            (&d.options_json, Type::TEXT),
            (&self.kind, Type::TEXT),
            (&self.crontab, Type::TEXT_ARRAY),
            (&self.every, Type::FLOAT8),
            (&self.relative, Type::BOOL),
            (&self.clocked, Type::TIMESTAMPTZ),
            (&self.solar, Type::TEXT),
            (&d.tz, Type::TEXT),
            (&d.start_at, Type::TIMESTAMPTZ),
            (&d.end_at, Type::TIMESTAMPTZ),
            (&d.one_off, Type::BOOL),
            (&d.catchup, Type::TEXT),
            (&d.catchup_window_seconds, Type::FLOAT8),
            (&d.catchup_max, Type::INT4),
            (&d.overlap, Type::TEXT),
        ];
        params.to_vec()
    }
}

/// `$1..$19` of [`DefinitionParams`] as the values of the definition columns.
const DEFINITION_COLUMNS: &str =
    "name, task, args, kwargs, options, kind, crontab, every_seconds, relative, clocked_at,
    solar, tz, start_at, end_at, one_off, catchup, catchup_window_seconds, catchup_max, overlap";
const DEFINITION_VALUES: &str = "$1, $2, $3::text::jsonb, $4::text::jsonb, $5::text::jsonb, $6, $7, $8, $9, $10,
    $11::text::jsonb, $12, $13, $14, $15, $16, $17, $18, $19";

/// What [`Store::schedule_sync`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// New rows.
    pub added: u64,
    /// Rows whose definition changed (their next run is re-baselined when the timing changed).
    pub updated: u64,
    /// Rows of the same source no longer in the definitions, now disabled.
    pub disabled: u64,
}

/// The reason a synced row gets when its entry is gone from the app's code.
pub const REMOVED_FROM_APP: &str = "removed from the app's beat_schedule";
/// The reason an imported row gets when its django-celery-beat periodic task is gone.
pub const REMOVED_FROM_DJANGO: &str = "removed from django-celery-beat";

/// A fire the planner decided: the slot and the message.
#[derive(Debug, Clone)]
pub struct PlannedFire {
    /// The slot (the scheduled instant, not the time of firing).
    pub slot: DateTime<Utc>,
    /// The Celery message; its task id identifies the fire.
    pub message: NewMessage,
}

/// What the planner decided for one due row.
#[derive(Debug, Clone, Default)]
pub struct TickPlan {
    /// Slots to fire, oldest first (empty for a baseline or a skipped slot).
    pub fires: Vec<PlannedFire>,
    /// The new next run (`None` with `disable`).
    pub next_run_at: Option<DateTime<Utc>>,
    /// Disable the row with this reason (invalid spec, ended, one-off done).
    pub disable: Option<String>,
}

/// What one tick did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TickReport {
    /// The caller does not hold the lease (at this term): nothing was done.
    pub not_leader: bool,
    /// Rows examined.
    pub due: usize,
    /// Messages inserted.
    pub fired: usize,
    /// Rows that recorded a baseline or skipped their slots (no fire).
    pub quiet: usize,
    /// Rows disabled, with their names and reasons.
    pub disabled: Vec<(String, String)>,
    /// Slots refused by the ledger (already fired): a bug elsewhere, caught here.
    pub refused: usize,
    /// The database's clock at the tick.
    pub db_now: Option<DateTime<Utc>>,
    /// The earliest next run among the rows celeriac fires, after this tick.
    pub next_due: Option<DateTime<Utc>>,
    /// More rows were due than one batch holds.
    pub more: bool,
}

/// The holder of a lease at one term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTerm {
    /// The holder (a process id, random per process).
    pub holder: Uuid,
    /// Increases with every new holder.
    pub term: i64,
    /// When it runs out unless renewed.
    pub expires_at: DateTime<Utc>,
}

/// A lease row as operators see it.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseRow {
    /// Role.
    pub name: String,
    /// Holder id.
    pub holder: Uuid,
    /// Holder's display name (host name and pid).
    pub holder_name: String,
    /// Term.
    pub term: i64,
    /// Since when this holder has it.
    pub acquired_at: DateTime<Utc>,
    /// When it runs out.
    pub expires_at: DateTime<Utc>,
    /// Whether it is still valid (by the database's clock).
    pub valid: bool,
}

/// One row of django-celery-beat's `periodictask` with its schedule, as stored there.
#[derive(Debug, Clone, PartialEq)]
pub struct DjangoPeriodicTask {
    /// `name`.
    pub name: String,
    /// `task`.
    pub task: String,
    /// `args` (JSON text).
    pub args: String,
    /// `kwargs` (JSON text).
    pub kwargs: String,
    /// `queue`.
    pub queue: Option<String>,
    /// `exchange`.
    pub exchange: Option<String>,
    /// `routing_key`.
    pub routing_key: Option<String>,
    /// `headers` (JSON text).
    pub headers: String,
    /// `priority`.
    pub priority: Option<i32>,
    /// `expires`.
    pub expires: Option<DateTime<Utc>>,
    /// `expire_seconds`.
    pub expire_seconds: Option<i32>,
    /// `one_off`.
    pub one_off: bool,
    /// `start_time`.
    pub start_time: Option<DateTime<Utc>>,
    /// `enabled`.
    pub enabled: bool,
    /// The crontab's fields: minute, hour, day_of_week, day_of_month, month_of_year.
    pub crontab: Option<[String; 5]>,
    /// The crontab's time zone.
    pub timezone: Option<String>,
    /// The interval: every, period (`days`, `hours`, `minutes`, `seconds`, `microseconds`).
    pub interval: Option<(i32, String)>,
    /// The clocked time.
    pub clocked_time: Option<DateTime<Utc>>,
    /// The solar event, latitude, longitude.
    pub solar: Option<(String, f64, f64)>,
}

/// Test builds (feature `testing`): where [`Store::schedule_tick`] fails on purpose, and how.
#[cfg(feature = "testing")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TickFailpoint {
    /// After which statement.
    pub stage: TickStage,
    /// Panic (a bug) rather than fail with an error (a statement or connection failure).
    pub panic: bool,
}

/// The statement boundaries of a tick's transaction, in order.
#[cfg(feature = "testing")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TickStage {
    /// After the lease check that opens the transaction.
    Lease,
    /// After the due rows are locked.
    Rows,
    /// After the ledger and the messages are written.
    Fires,
    /// After the rows are advanced, before the commit.
    Advanced,
    /// After the commit, before the tick returns.
    Committed,
}

/// The lease the scheduler's leader holds.
pub const SCHEDULER_LEASE: &str = "scheduler";

/// The first statement of a tick: the lease check (a share lock on the lease row, held by the
/// tick's transaction), the database's clock, and the earliest due row.
const TICK_HEAD_SQL: &str = "
select now(),
       (select min(coalesce(s.next_run_at, now())) from celeriac.schedule s
        where s.owner = 'celeriac' and s.enabled and not s.paused and s.kind <> 'solar')
from celeriac.lease l
where l.name = $1 and l.holder = $2 and l.term = $3 and l.expires_at > clock_timestamp()
for share of l";

/// The same inside the tick's transaction, which must not outlive the lease: a ticker frozen
/// mid-tick (SIGSTOP, a paused VM) is cut off by the server after `$4` milliseconds idle or
/// per statement, releasing the lease row's share lock so another process can take over.
const TICK_BEGIN_SQL: &str = "
select now(), set_config('idle_in_transaction_session_timeout', $4, true), set_config('statement_timeout', $4, true)
from celeriac.lease l
where l.name = $1 and l.holder = $2 and l.term = $3 and l.expires_at > clock_timestamp()
for share of l";

impl Store {
    /// Writes `definitions` (from `source`: `app`, `manual` or `django`) by name: new names get
    /// a row owned by `owner_for_new` (`None`: celeriac, or, once a ramp is set, the owner the
    /// ramp gives their bucket) with the given ramp buckets; existing rows take the new
    /// definition (keeping owner, pause and run state; the trigger re-baselines a timing
    /// change). With `missing_reason` (e.g. [`REMOVED_FROM_APP`]), rows of `source` whose name
    /// is not among the definitions are disabled with that reason; a row disabled that way is
    /// enabled again when its entry comes back. All in one transaction.
    ///
    /// # Errors
    /// Connection errors; constraint violations for definitions the schema refuses.
    pub async fn schedule_sync(
        &self,
        definitions: &[(ScheduleDefinition, i16)],
        source: &str,
        owner_for_new: Option<&str>,
        missing_reason: Option<&str>,
    ) -> Result<SyncReport> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let mut report = SyncReport::default();
        let sql = format!(
            "insert into celeriac.schedule as s ({DEFINITION_COLUMNS}, source, owner, ramp_bucket)
             values ({DEFINITION_VALUES}, $20,
                     case when $6 = 'solar' then 'beat'
                          else coalesce($21, (select case when $22 < r.percent then 'celeriac' else 'beat' end
                                              from celeriac.schedule_ramp r where r.id = 1), 'celeriac') end,
                     $22)
             on conflict (name) do update set
                 task = excluded.task, args = excluded.args, kwargs = excluded.kwargs, options = excluded.options,
                 kind = excluded.kind, crontab = excluded.crontab, every_seconds = excluded.every_seconds,
                 relative = excluded.relative, clocked_at = excluded.clocked_at, solar = excluded.solar,
                 tz = excluded.tz, start_at = excluded.start_at, end_at = excluded.end_at, one_off = excluded.one_off,
                 catchup = excluded.catchup, catchup_window_seconds = excluded.catchup_window_seconds,
                 catchup_max = excluded.catchup_max, overlap = excluded.overlap, source = excluded.source,
                 enabled = s.enabled or coalesce(s.disabled_reason = $23, false)
                     or (excluded.kind, excluded.crontab, excluded.every_seconds, excluded.relative, excluded.clocked_at,
                         excluded.tz, excluded.start_at) is distinct from
                        (s.kind, s.crontab, s.every_seconds, s.relative, s.clocked_at, s.tz, s.start_at),
                 disabled_reason = case when s.enabled or coalesce(s.disabled_reason = $23, false)
                     or (excluded.kind, excluded.crontab, excluded.every_seconds, excluded.relative, excluded.clocked_at,
                         excluded.tz, excluded.start_at) is distinct from
                        (s.kind, s.crontab, s.every_seconds, s.relative, s.clocked_at, s.tz, s.start_at)
                     then null else s.disabled_reason end
             where (s.task, s.args, s.kwargs, s.options, s.kind, s.crontab, s.every_seconds, s.relative, s.clocked_at,
                    s.solar, s.tz, s.start_at, s.end_at, s.one_off, s.catchup, s.catchup_window_seconds, s.catchup_max,
                    s.overlap, s.source) is distinct from
                   (excluded.task, excluded.args, excluded.kwargs, excluded.options, excluded.kind, excluded.crontab,
                    excluded.every_seconds, excluded.relative, excluded.clocked_at, excluded.solar, excluded.tz,
                    excluded.start_at, excluded.end_at, excluded.one_off, excluded.catchup,
                    excluded.catchup_window_seconds, excluded.catchup_max, excluded.overlap, excluded.source)
                or (not s.enabled and coalesce(s.disabled_reason = $23, false))
             returning (xmax = 0)"
        );
        let stmt_sql = sql.as_str();
        for (definition, bucket) in definitions {
            let p = DefinitionParams::new(definition);
            let mut params = p.params();
            params.push((&source, Type::TEXT));
            params.push((&owner_for_new, Type::TEXT));
            params.push((bucket, Type::INT2));
            params.push((&missing_reason, Type::TEXT));
            for row in tx.rows(self.pooler, stmt_sql, &params).await? {
                if row.get::<_, bool>(0) {
                    report.added += 1;
                } else {
                    report.updated += 1;
                }
            }
        }
        if let Some(reason) = missing_reason {
            let names: Vec<&str> = definitions.iter().map(|(d, _)| d.name.as_str()).collect();
            report.disabled = tx
                .touch(
                    self.pooler,
                    "update celeriac.schedule set enabled = false, disabled_reason = $3
                     where source = $1 and enabled and not (name = any($2))",
                    &[(&source, Type::TEXT), (&names, Type::TEXT_ARRAY), (&reason, Type::TEXT)],
                )
                .await?;
        }
        tx.commit().await?;
        Ok(report)
    }

    /// Adds one schedule (source `manual`), owned by `owner`.
    ///
    /// # Errors
    /// [`Error::Exists`] if the name is taken; constraint violations; connection errors.
    pub async fn schedule_add(&self, definition: &ScheduleDefinition, owner: &str, ramp_bucket: i16) -> Result<i64> {
        let client = self.pool.get().await?;
        let p = DefinitionParams::new(definition);
        let mut params = p.params();
        params.push((&owner, Type::TEXT));
        params.push((&ramp_bucket, Type::INT2));
        let sql = format!(
            "insert into celeriac.schedule ({DEFINITION_COLUMNS}, owner, ramp_bucket, source)
             values ({DEFINITION_VALUES}, $20, $21, 'manual')
             on conflict (name) do nothing returning id"
        );
        let rows = client.rows(self.pooler, &sql, &params).await?;
        match rows.first() {
            Some(row) => Ok(row.get(0)),
            None => Err(Error::Exists(format!("schedule {:?}", definition.name))),
        }
    }

    /// Replaces the definition of the schedule `definition.name` (the trigger re-baselines a
    /// timing change).
    ///
    /// # Errors
    /// [`Error::NotFound`]; constraint violations; connection errors.
    pub async fn schedule_update(&self, definition: &ScheduleDefinition) -> Result<()> {
        let client = self.pool.get().await?;
        let p = DefinitionParams::new(definition);
        let params = p.params();
        let sql =
            format!("update celeriac.schedule set ({DEFINITION_COLUMNS}) = ({DEFINITION_VALUES}) where name = $1");
        match client.touch(self.pooler, &sql, &params).await? {
            0 => Err(Error::NotFound(format!("schedule {:?}", definition.name))),
            _ => Ok(()),
        }
    }

    /// Every schedule, by name.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn schedule_list(&self) -> Result<Vec<Schedule>> {
        let client = self.pool.get().await?;
        let sql = format!("select {SCHEDULE_COLUMNS} from celeriac.schedule s order by s.name");
        Ok(client.rows(self.pooler, &sql, &[]).await?.iter().map(schedule_from_row).collect())
    }

    /// The schedule named `name`.
    ///
    /// # Errors
    /// [`Error::NotFound`]; connection errors.
    pub async fn schedule_get(&self, name: &str) -> Result<Schedule> {
        let client = self.pool.get().await?;
        let sql = format!("select {SCHEDULE_COLUMNS} from celeriac.schedule s where s.name = $1");
        let rows = client.rows(self.pooler, &sql, &[(&name, Type::TEXT)]).await?;
        rows.first().map(schedule_from_row).ok_or_else(|| Error::NotFound(format!("schedule {name:?}")))
    }

    /// Enables (re-baselining it) or disables a schedule, with a reason when disabling.
    ///
    /// # Errors
    /// [`Error::NotFound`]; connection errors.
    pub async fn schedule_set_enabled(&self, name: &str, enabled: bool, reason: Option<&str>) -> Result<()> {
        self.schedule_touch(
            name,
            "update celeriac.schedule set enabled = $2, disabled_reason = case when $2 then null else $3 end
             where name = $1",
            enabled,
            reason,
        )
        .await
    }

    /// Pauses a schedule (with a reason) or resumes it (re-baselining it: a resumed schedule
    /// fires at its next slot, never a missed one at once).
    ///
    /// # Errors
    /// [`Error::NotFound`]; connection errors.
    pub async fn schedule_set_paused(&self, name: &str, paused: bool, reason: Option<&str>) -> Result<()> {
        self.schedule_touch(
            name,
            "update celeriac.schedule set paused = $2, paused_reason = case when $2 then $3 else null end
             where name = $1",
            paused,
            reason,
        )
        .await
    }

    async fn schedule_touch(&self, name: &str, sql: &str, flag: bool, reason: Option<&str>) -> Result<()> {
        let client = self.pool.get().await?;
        let n =
            client.touch(self.pooler, sql, &[(&name, Type::TEXT), (&flag, Type::BOOL), (&reason, Type::TEXT)]).await?;
        if n == 0 {
            return Err(Error::NotFound(format!("schedule {name:?}")));
        }
        Ok(())
    }

    /// Deletes a schedule (and its ledger rows).
    ///
    /// # Errors
    /// [`Error::NotFound`]; connection errors.
    pub async fn schedule_remove(&self, name: &str) -> Result<()> {
        let client = self.pool.get().await?;
        match client.touch(self.pooler, "delete from celeriac.schedule where name = $1", &[(&name, Type::TEXT)]).await?
        {
            0 => Err(Error::NotFound(format!("schedule {name:?}"))),
            _ => Ok(()),
        }
    }

    /// Fires a schedule now, outside its slots: the message is inserted and recorded in the
    /// ledger under the database's current time as its slot (term 0); the next run is not
    /// moved. `build` makes the message for that slot. Returns the slot.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Invalid`] when the message cannot be built; connection errors.
    pub async fn schedule_run_now(
        &self,
        name: &str,
        build: impl FnOnce(&Schedule, DateTime<Utc>) -> std::result::Result<NewMessage, String>,
    ) -> Result<(DateTime<Utc>, NewMessage)> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let sql =
            format!("select {SCHEDULE_COLUMNS}, now() from celeriac.schedule s where s.name = $1 for update of s");
        let rows = tx.rows(self.pooler, &sql, &[(&name, Type::TEXT)]).await?;
        let Some(row) = rows.first() else {
            return Err(Error::NotFound(format!("schedule {name:?}")));
        };
        let schedule = schedule_from_row(row);
        let slot: DateTime<Utc> = row.get(37);
        let message = build(&schedule, slot)
            .map_err(|e| Error::Invalid(format!("schedule {name:?}: cannot build the message: {e}")))?;
        let message_id: i64 = tx
            .row(
                self.pooler,
                "with fire as (insert into celeriac.schedule_fire (schedule_id, slot_at, task_id, term)
                               values ($1, $2, $3, 0))
                 insert into celeriac.message (queue, priority, eta, expires, task_name, task_id, payload)
                 values ($4, $5, coalesce($6, now()), $7, $8, $3, $9) returning id",
                &[
                    (&schedule.id, Type::INT8),
                    (&slot, Type::TIMESTAMPTZ),
                    (&message.task_id, Type::TEXT),
                    (&message.queue, Type::TEXT),
                    (&message.priority, Type::INT2),
                    (&message.eta, Type::TIMESTAMPTZ),
                    (&message.expires, Type::TIMESTAMPTZ),
                    (&message.task_name, Type::TEXT),
                    (&message.payload, Type::BYTEA),
                ],
            )
            .await?
            .get(0);
        tx.touch(
            self.pooler,
            "update celeriac.schedule set last_run_at = now(), total_run_count = total_run_count + 1,
                 last_task_id = $2, last_message_id = $3
             where id = $1",
            &[(&schedule.id, Type::INT8), (&message.task_id, Type::TEXT), (&message_id, Type::INT8)],
        )
        .await?;
        tx.commit().await?;
        Ok((slot, message))
    }

    /// One tick of the scheduler for the holder of [`SCHEDULER_LEASE`] at `term`: see the
    /// module documentation. Looks at most `batch` due rows; `plan` decides, per row, at the
    /// database's time, what to fire and the next run. When nothing is due this is one
    /// statement. The transaction is cut off by the server if it stalls for `timeout` (a
    /// frozen process must not hold the lease row's lock), and commits only while the lease is
    /// still valid.
    ///
    /// # Errors
    /// Connection errors, or [`Error::Conflict`] when a row changed under the tick (the whole
    /// tick is rolled back; nothing was fired).
    pub async fn schedule_tick(
        &self,
        holder: Uuid,
        term: i64,
        batch: i64,
        timeout: std::time::Duration,
        mut plan: impl FnMut(&Schedule, DateTime<Utc>) -> TickPlan,
    ) -> Result<TickReport> {
        let lease_params = [(&SCHEDULER_LEASE as _, Type::TEXT), (&holder as _, Type::UUID), (&term as _, Type::INT8)];
        let mut report = TickReport::default();
        // Nothing due: one statement, no transaction.
        {
            let client = self.pool.get().await?;
            let rows = client.rows(self.pooler, TICK_HEAD_SQL, &lease_params).await?;
            let Some(head) = rows.first() else {
                report.not_leader = true;
                return Ok(report);
            };
            let db_now: DateTime<Utc> = head.get(0);
            let next_due: Option<DateTime<Utc>> = head.get(1);
            report.db_now = Some(db_now);
            report.next_due = next_due;
            if next_due.is_none_or(|due| due > db_now) {
                return Ok(report);
            }
        }
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let limit_ms = timeout.as_millis().max(1).to_string();
        let begin_params = [
            (&SCHEDULER_LEASE as _, Type::TEXT),
            (&holder as _, Type::UUID),
            (&term as _, Type::INT8),
            (&limit_ms as _, Type::TEXT),
        ];
        let rows = tx.rows(self.pooler, TICK_BEGIN_SQL, &begin_params).await?;
        #[cfg(feature = "testing")]
        self.tick_failpoint_at(TickStage::Lease)?;
        let Some(head) = rows.first() else {
            report.not_leader = true;
            return Ok(report);
        };
        let db_now: DateTime<Utc> = head.get(0);
        report.db_now = Some(db_now);
        let sql = format!(
            "select {SCHEDULE_COLUMNS} from celeriac.schedule s
             where s.owner = 'celeriac' and s.enabled and not s.paused and s.kind <> 'solar'
               and (s.next_run_at is null or s.next_run_at <= $1)
             order by s.next_run_at nulls first, s.id
             limit $2
             for update of s skip locked"
        );
        let due: Vec<Schedule> = tx
            .rows(self.pooler, &sql, &[(&db_now, Type::TIMESTAMPTZ), (&batch, Type::INT8)])
            .await?
            .iter()
            .map(schedule_from_row)
            .collect();
        report.due = due.len();
        #[cfg(feature = "testing")]
        self.tick_failpoint_at(TickStage::Rows)?;
        report.more = i64::try_from(due.len()).unwrap_or(i64::MAX) >= batch;

        // Plan every row, then write the whole batch in three statements.
        let (mut fire_ids, mut fire_slots, mut fire_tasks) = (Vec::new(), Vec::new(), Vec::new());
        let mut messages: Vec<NewMessage> = Vec::new();
        let mut updates = Vec::with_capacity(due.len());
        for schedule in &due {
            let decided = plan(schedule, db_now);
            if let Some(reason) = &decided.disable {
                report.disabled.push((schedule.definition.name.clone(), reason.clone()));
            }
            if decided.fires.is_empty() {
                report.quiet += 1;
            }
            let last = decided.fires.last().map(|f| (f.slot, f.message.task_id.clone()));
            for fire in decided.fires {
                fire_ids.push(schedule.id);
                fire_slots.push(fire.slot);
                fire_tasks.push(fire.message.task_id.clone().unwrap_or_default());
                messages.push(fire.message);
            }
            updates.push((schedule, decided.next_run_at, decided.disable, last));
        }
        let mut fired_message: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
        if !messages.is_empty() {
            let queues: Vec<&str> = messages.iter().map(|m| m.queue.as_str()).collect();
            let priorities: Vec<i16> = messages.iter().map(|m| m.priority).collect();
            let etas: Vec<Option<DateTime<Utc>>> = messages.iter().map(|m| m.eta).collect();
            let expires: Vec<Option<DateTime<Utc>>> = messages.iter().map(|m| m.expires).collect();
            let names: Vec<Option<&str>> = messages.iter().map(|m| m.task_name.as_deref()).collect();
            let payloads: Vec<&[u8]> = messages.iter().map(|m| m.payload.as_slice()).collect();
            let rows = tx
                .rows(
                    self.pooler,
                    "with fire as (
                         insert into celeriac.schedule_fire (schedule_id, slot_at, task_id, term)
                         select f.id, f.slot, f.task_id, $4 from unnest($1::int8[], $2::timestamptz[], $3::text[])
                             as f(id, slot, task_id)
                         on conflict do nothing
                         returning task_id),
                     msg as (
                         insert into celeriac.message (queue, priority, eta, expires, task_name, task_id, payload)
                         select m.q, m.p, coalesce(m.e, now()), m.x, m.n, m.i, m.b
                         from unnest($5::text[], $6::int2[], $7::timestamptz[], $8::timestamptz[], $9::text[],
                                     $3::text[], $10::bytea[]) as m(q, p, e, x, n, i, b)
                         where m.i in (select task_id from fire)
                         returning id, task_id)
                     select task_id, id from msg",
                    &[
                        (&fire_ids, Type::INT8_ARRAY),
                        (&fire_slots, Type::TIMESTAMPTZ_ARRAY),
                        (&fire_tasks, Type::TEXT_ARRAY),
                        (&term, Type::INT8),
                        (&queues, Type::TEXT_ARRAY),
                        (&priorities, Type::INT2_ARRAY),
                        (&etas, Type::TIMESTAMPTZ_ARRAY),
                        (&expires, Type::TIMESTAMPTZ_ARRAY),
                        (&names, Type::TEXT_ARRAY),
                        (&payloads, Type::BYTEA_ARRAY),
                    ],
                )
                .await?;
            for row in &rows {
                fired_message.insert(row.get(0), row.get(1));
            }
            report.fired = fired_message.len();
            report.refused = messages.len() - fired_message.len();
        }
        #[cfg(feature = "testing")]
        self.tick_failpoint_at(TickStage::Fires)?;

        if !updates.is_empty() {
            let mut ids = Vec::with_capacity(updates.len());
            let mut old_next = Vec::with_capacity(updates.len());
            let mut versions = Vec::with_capacity(updates.len());
            let mut next = Vec::with_capacity(updates.len());
            let mut enabled = Vec::with_capacity(updates.len());
            let mut reasons: Vec<Option<String>> = Vec::with_capacity(updates.len());
            let mut last_slots = Vec::with_capacity(updates.len());
            let mut counts: Vec<i64> = Vec::with_capacity(updates.len());
            let mut task_ids: Vec<Option<String>> = Vec::with_capacity(updates.len());
            let mut message_ids: Vec<Option<i64>> = Vec::with_capacity(updates.len());
            // Fires the ledger recorded, per schedule.
            let mut fired_per_schedule: std::collections::HashMap<i64, i64> = std::collections::HashMap::new();
            for (id, task) in fire_ids.iter().zip(&fire_tasks) {
                if fired_message.contains_key(task.as_str()) {
                    *fired_per_schedule.entry(*id).or_default() += 1;
                }
            }
            for (schedule, next_run_at, disable, last) in updates {
                ids.push(schedule.id);
                old_next.push(schedule.next_run_at);
                versions.push(schedule.spec_version);
                next.push(if disable.is_some() { None } else { next_run_at });
                enabled.push(disable.is_none());
                reasons.push(disable);
                counts.push(fired_per_schedule.get(&schedule.id).copied().unwrap_or(0));
                let last = last.and_then(|(slot, task)| {
                    let task = task?;
                    let message = *fired_message.get(&task)?;
                    Some((slot, task, message))
                });
                last_slots.push(last.as_ref().map(|l| l.0));
                message_ids.push(last.as_ref().map(|l| l.2));
                task_ids.push(last.map(|l| l.1));
            }
            let updated = tx
                .touch(
                    self.pooler,
                    "update celeriac.schedule s
                     set next_run_at = u.next, enabled = u.enabled,
                         disabled_reason = coalesce(u.reason, s.disabled_reason),
                         last_slot_at = coalesce(u.last_slot, s.last_slot_at),
                         last_run_at = case when u.fired > 0 then now() else s.last_run_at end,
                         total_run_count = s.total_run_count + u.fired,
                         last_task_id = coalesce(u.task_id, s.last_task_id),
                         last_message_id = coalesce(u.message_id, s.last_message_id)
                     from unnest($1::int8[], $2::timestamptz[], $3::int4[], $4::timestamptz[], $5::bool[], $6::text[],
                                 $7::timestamptz[], $8::int8[], $9::text[], $10::int8[])
                         as u(id, old_next, version, next, enabled, reason, last_slot, fired, task_id, message_id)
                     where s.id = u.id and s.next_run_at is not distinct from u.old_next and s.spec_version = u.version
                       and exists (select 1 from celeriac.lease l where l.name = $11 and l.holder = $12 and l.term = $13
                                   and l.expires_at > clock_timestamp())",
                    &[
                        (&ids, Type::INT8_ARRAY),
                        (&old_next, Type::TIMESTAMPTZ_ARRAY),
                        (&versions, Type::INT4_ARRAY),
                        (&next, Type::TIMESTAMPTZ_ARRAY),
                        (&enabled, Type::BOOL_ARRAY),
                        (&reasons, Type::TEXT_ARRAY),
                        (&last_slots, Type::TIMESTAMPTZ_ARRAY),
                        (&counts, Type::INT8_ARRAY),
                        (&task_ids, Type::TEXT_ARRAY),
                        (&message_ids, Type::INT8_ARRAY),
                        (&SCHEDULER_LEASE, Type::TEXT),
                        (&holder, Type::UUID),
                        (&term, Type::INT8),
                    ],
                )
                .await?;
            if updated != ids.len() as u64 {
                // Rolled back when `tx` drops: nothing of this tick happened.
                return Err(Error::Conflict(format!(
                    "{} of {} schedule rows changed during the tick, or the lease ran out",
                    ids.len() as u64 - updated,
                    ids.len()
                )));
            }
        }
        #[cfg(feature = "testing")]
        self.tick_failpoint_at(TickStage::Advanced)?;
        let next_due: Option<DateTime<Utc>> = tx
            .row(
                self.pooler,
                "select min(coalesce(s.next_run_at, now())) from celeriac.schedule s
                 where s.owner = 'celeriac' and s.enabled and not s.paused and s.kind <> 'solar'",
                &[],
            )
            .await?
            .get(0);
        report.next_due = next_due;
        tx.commit().await?;
        #[cfg(feature = "testing")]
        self.tick_failpoint_at(TickStage::Committed)?;
        Ok(report)
    }

    /// Test builds: makes the next ticks of this store (and its clones) fail at `failpoint`
    /// (`None`: no more).
    #[cfg(feature = "testing")]
    pub fn testing_tick_failpoint(&self, failpoint: Option<TickFailpoint>) {
        *self.tick_failpoint.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = failpoint;
    }

    #[cfg(feature = "testing")]
    fn tick_failpoint_at(&self, stage: TickStage) -> Result<()> {
        let failpoint = *self.tick_failpoint.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match failpoint {
            Some(f) if f.stage == stage && f.panic => panic!("tick failpoint {stage:?}"),
            Some(f) if f.stage == stage => Err(Error::Invalid(format!("tick failpoint {stage:?}"))),
            _ => Ok(()),
        }
    }

    /// Deletes ledger rows fired before `before`, at most `limit` of them. Returns how many.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn schedule_fire_prune(&self, before: DateTime<Utc>, limit: i64) -> Result<u64> {
        let client = self.pool.get().await?;
        client
            .touch(
                self.pooler,
                "delete from celeriac.schedule_fire where ctid = any(array(
                     select ctid from celeriac.schedule_fire where fired_at < $1 limit $2))",
                &[(&before, Type::TIMESTAMPTZ), (&limit, Type::INT8)],
            )
            .await
    }

    /// django-celery-beat's periodic tasks with their schedules, as its tables hold them
    /// (`celeriac schedule import --django-celery-beat`). Empty when the tables do not exist.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn django_periodic_tasks(&self) -> Result<Vec<DjangoPeriodicTask>> {
        let client = self.pool.get().await?;
        let exists: bool = client
            .row(self.pooler, "select to_regclass('django_celery_beat_periodictask') is not null", &[])
            .await?
            .get(0);
        if !exists {
            return Ok(Vec::new());
        }
        let rows = client
            .rows(
                self.pooler,
                "select t.name, t.task, t.args, t.kwargs, t.queue, t.exchange, t.routing_key, t.headers, t.priority,
                        t.expires, t.expire_seconds, t.one_off, t.start_time, t.enabled,
                        c.minute, c.hour, c.day_of_week, c.day_of_month, c.month_of_year, c.timezone::text,
                        i.every, i.period, k.clocked_time,
                        so.event, so.latitude::float8, so.longitude::float8
                 from django_celery_beat_periodictask t
                 left join django_celery_beat_crontabschedule c on c.id = t.crontab_id
                 left join django_celery_beat_intervalschedule i on i.id = t.interval_id
                 left join django_celery_beat_clockedschedule k on k.id = t.clocked_id
                 left join django_celery_beat_solarschedule so on so.id = t.solar_id
                 order by t.name",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| DjangoPeriodicTask {
                name: r.get(0),
                task: r.get(1),
                args: r.get(2),
                kwargs: r.get(3),
                queue: r.get(4),
                exchange: r.get(5),
                routing_key: r.get(6),
                headers: r.get(7),
                priority: r.get(8),
                expires: r.get(9),
                expire_seconds: r.get(10),
                one_off: r.get(11),
                start_time: r.get(12),
                enabled: r.get(13),
                crontab: r
                    .get::<_, Option<String>>(14)
                    .map(|minute| [minute, r.get(15), r.get(16), r.get(17), r.get(18)]),
                timezone: r.get(19),
                interval: r.get::<_, Option<i32>>(20).map(|every| (every, r.get(21))),
                clocked_time: r.get(22),
                solar: r.get::<_, Option<String>>(23).map(|event| (event, r.get(24), r.get(25))),
            })
            .collect())
    }

    /// Follows the source's own enabled flags for rows Beat owns: `disabled` names (disabled in
    /// the source) are disabled with `reason`; `enabled` names disabled earlier for that same
    /// reason are enabled again. Rows celeriac owns are left alone (a flip to celeriac disables
    /// the source's row on purpose).
    ///
    /// # Errors
    /// Connection errors.
    pub async fn schedule_follow_source_enabled(
        &self,
        disabled: &[String],
        enabled: &[String],
        reason: &str,
    ) -> Result<()> {
        let client = self.pool.get().await?;
        client
            .touch(
                self.pooler,
                "update celeriac.schedule set enabled = false, disabled_reason = $2
                 where name = any($1) and owner = 'beat' and enabled",
                &[(&disabled, Type::TEXT_ARRAY), (&reason, Type::TEXT)],
            )
            .await?;
        client
            .touch(
                self.pooler,
                "update celeriac.schedule set enabled = true, disabled_reason = null
                 where name = any($1) and not enabled and disabled_reason = $2",
                &[(&enabled, Type::TEXT_ARRAY), (&reason, Type::TEXT)],
            )
            .await?;
        Ok(())
    }

    /// Deletes every schedule (their fires too) and the scheduler's lease (benchmarks, tests).
    ///
    /// # Errors
    /// Connection errors.
    pub async fn schedule_remove_all(&self) -> Result<u64> {
        let client = self.pool.get().await?;
        client
            .touch(self.pooler, "delete from celeriac.lease where name = $1", &[(&SCHEDULER_LEASE, Type::TEXT)])
            .await?;
        client.touch(self.pooler, "delete from celeriac.schedule", &[]).await
    }

    /// Makes every schedule due `seconds` from now, at one instant, which it returns
    /// (benchmarks).
    ///
    /// # Errors
    /// Connection errors.
    pub async fn schedule_all_due_in(&self, seconds: f64) -> Result<DateTime<Utc>> {
        let client = self.pool.get().await?;
        let row = client
            .row(
                self.pooler,
                "with t as (select date_trunc('second', now()) + $1 * interval '1 second' as at),
                      u as (update celeriac.schedule set next_run_at = (select at from t))
                 select at from t",
                &[(&seconds, Type::FLOAT8)],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Fires in the ledger, and the latest fire time.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn schedule_fire_count(&self) -> Result<(i64, Option<DateTime<Utc>>)> {
        let client = self.pool.get().await?;
        let row = client.row(self.pooler, "select count(*), max(fired_at) from celeriac.schedule_fire", &[]).await?;
        Ok((row.get(0), row.get(1)))
    }

    /// Transactions committed and rolled back in this database so far, by the server's
    /// statistics (reported by each backend within about a second): every statement outside an
    /// explicit transaction counts one.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn database_transactions(&self) -> Result<i64> {
        let client = self.pool.get().await?;
        let row = client
            .row(
                self.pooler,
                "select (xact_commit + xact_rollback)::int8 from pg_stat_database where datname = current_database()",
                &[],
            )
            .await?;
        Ok(row.get(0))
    }

    /// The ramp: the percentage of schedules (by [`Schedule::ramp_bucket`]) celeriac owns; 0
    /// until set.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn schedule_ramp_get(&self) -> Result<i16> {
        let client = self.pool.get().await?;
        let rows = client.rows(self.pooler, "select percent from celeriac.schedule_ramp where id = 1", &[]).await?;
        Ok(rows.first().map_or(0, |r| r.get(0)))
    }

    /// Records that a migration from Beat started (the ramp at 0 % unless already set), so
    /// entries new to the code go to Beat until ramped ([`Store::schedule_sync`]).
    ///
    /// # Errors
    /// Connection errors.
    pub async fn schedule_ramp_start(&self) -> Result<()> {
        let client = self.pool.get().await?;
        client
            .touch(
                self.pooler,
                "insert into celeriac.schedule_ramp (id, percent) values (1, 0) on conflict (id) do nothing",
                &[],
            )
            .await?;
        Ok(())
    }

    /// Sets the ramp percentage (0–100). Rows are moved by [`Store::schedule_flip`].
    ///
    /// # Errors
    /// Connection errors; a check violation outside 0–100.
    pub async fn schedule_ramp_set(&self, percent: i16) -> Result<()> {
        let client = self.pool.get().await?;
        client
            .touch(
                self.pooler,
                "insert into celeriac.schedule_ramp (id, percent) values (1, $1)
                 on conflict (id) do update set percent = excluded.percent, updated_at = now()",
                &[(&percent, Type::INT2)],
            )
            .await?;
        Ok(())
    }

    /// Pins a schedule to an owner (`beat` or `celeriac`), or unpins it (`None`: the ramp
    /// decides). The row moves with the next [`Store::schedule_flip`].
    ///
    /// # Errors
    /// [`Error::NotFound`]; connection errors.
    pub async fn schedule_pin(&self, name: &str, owner: Option<&str>) -> Result<()> {
        let client = self.pool.get().await?;
        let n = client
            .touch(
                self.pooler,
                "update celeriac.schedule set owner_pin = $2 where name = $1",
                &[(&name, Type::TEXT), (&owner, Type::TEXT)],
            )
            .await?;
        if n == 0 {
            return Err(Error::NotFound(format!("schedule {name:?}")));
        }
        Ok(())
    }

    /// The schedules whose owner is not the one the ramp and their pin say, with that owner:
    /// towards celeriac in ascending bucket order, then towards Beat in descending order. Solar
    /// rows stay with Beat; rows added with `schedule add` (source `manual`), which no Beat
    /// knows, stay with celeriac unless pinned.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn schedule_misplaced(&self) -> Result<Vec<(Schedule, String)>> {
        let client = self.pool.get().await?;
        let sql = format!(
            "select {SCHEDULE_COLUMNS}, t.target
             from celeriac.schedule s
             cross join lateral (select coalesce(s.owner_pin,
                 case when s.kind = 'solar' then 'beat'
                      when s.source = 'manual' then 'celeriac'
                      when s.ramp_bucket < coalesce((select percent from celeriac.schedule_ramp where id = 1), 0)
                      then 'celeriac' else 'beat' end) as target) t
             where t.target <> s.owner
             order by t.target = 'beat', case when t.target = 'celeriac' then s.ramp_bucket else -s.ramp_bucket end, s.name"
        );
        Ok(client.rows(self.pooler, &sql, &[]).await?.iter().map(|r| (schedule_from_row(r), r.get(37))).collect())
    }

    /// Moves one schedule to `to` (`beat` or `celeriac`) in one transaction, if `decide` (given
    /// the locked row and the database's clock) says it may move now: `Some(at)`. Towards
    /// celeriac, `at` is its next run (`None`: a baseline); towards Beat, the time before which
    /// celeriac's Beat scheduler classes refuse to send it (`beat_from`: the slot celeriac fired
    /// last is not sent again), and the next run is cleared.
    /// With django-celery-beat's tables in the database, its row of the same name is disabled
    /// (towards celeriac) or enabled with the last run celeriac made (towards Beat; only if the
    /// schedule is enabled and not paused), and its
    /// change tracker bumped, in the same transaction, so an unmodified Beat stops or resumes
    /// it. Returns whether the row moved.
    ///
    /// # Errors
    /// [`Error::NotFound`]; connection errors.
    pub async fn schedule_flip(
        &self,
        name: &str,
        to: &str,
        decide: impl FnOnce(&Schedule, DateTime<Utc>) -> Option<Option<DateTime<Utc>>>,
    ) -> Result<bool> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let sql =
            format!("select {SCHEDULE_COLUMNS}, now() from celeriac.schedule s where s.name = $1 for update of s");
        let rows = tx.rows(self.pooler, &sql, &[(&name, Type::TEXT)]).await?;
        let Some(row) = rows.first() else {
            return Err(Error::NotFound(format!("schedule {name:?}")));
        };
        let schedule = schedule_from_row(row);
        if schedule.owner == to {
            return Ok(false);
        }
        let now: DateTime<Utc> = row.get(37);
        let Some(at) = decide(&schedule, now) else {
            return Ok(false);
        };
        // Towards celeriac `at` is its next run; towards Beat, the time before which celeriac's
        // Beat scheduler classes send nothing.
        let (next_run_at, beat_from) = if to == "beat" { (None, at) } else { (at, None) };
        tx.touch(
            self.pooler,
            "update celeriac.schedule set owner = $2, owner_changed_at = now(), next_run_at = $3, beat_from = $4
             where id = $1",
            &[
                (&schedule.id, Type::INT8),
                (&to, Type::TEXT),
                (&next_run_at, Type::TIMESTAMPTZ),
                (&beat_from, Type::TIMESTAMPTZ),
            ],
        )
        .await?;
        let django = tx
            .row(self.pooler, "select to_regclass('django_celery_beat_periodictask') is not null", &[])
            .await?
            .get::<_, bool>(0);
        if django {
            // Towards Beat, the row is enabled only if the schedule fires at all (not disabled,
            // not paused): Beat must not start firing what celeriac held back.
            let enabled = to == "beat" && schedule.enabled && !schedule.paused;
            let changed = tx
                .touch(
                    self.pooler,
                    "update django_celery_beat_periodictask
                     set enabled = $2, date_changed = now(),
                         last_run_at = case when $2 then coalesce($3, last_run_at) else last_run_at end
                     where name = $1",
                    &[(&name, Type::TEXT), (&enabled, Type::BOOL), (&schedule.last_run_at, Type::TIMESTAMPTZ)],
                )
                .await?;
            if changed == 0 && schedule.source == "django" {
                return Err(Error::Invalid(format!(
                    "schedule {name:?} came from django-celery-beat, but its periodic task is gone: not moved \
                     (Beat could go on firing it)"
                )));
            }
            if changed > 0 {
                tx.touch(
                    self.pooler,
                    "insert into django_celery_beat_periodictasks (ident, last_update) values (1, now())
                     on conflict (ident) do update set last_update = now()",
                    &[],
                )
                .await?;
            }
        }
        tx.commit().await?;
        Ok(true)
    }

    /// What celeriac's Beat scheduler classes ask before Beat sends `name`: whether Beat owns
    /// it (`beat`; the send is recorded as `last_beat_send_at` in the same transaction, under
    /// the row's lock, so a flip to celeriac knows whether Beat sent the current slot),
    /// `celeriac` (Beat must skip it: celeriac fires it; with celeriac's next run, the slot
    /// celeriac has promised to fire, so Beat can keep its own entry in step and look again
    /// just after it, in case the schedule came back to Beat before celeriac fired it),
    /// `fenced` (back with Beat, but celeriac fired the slot Beat is due for: Beat skips it;
    /// with that slot, so Beat counts it as its own last run), or `unknown` (no such row: Beat
    /// keeps it).
    ///
    /// # Errors
    /// Connection errors.
    pub async fn schedule_beat_claim(&self, name: &str) -> Result<(&'static str, Option<DateTime<Utc>>)> {
        let client = self.pool.get().await?;
        let rows = client
            .rows(
                self.pooler,
                "with row as (select id, owner, next_run_at, last_slot_at,
                                     owner = 'beat' and coalesce(beat_from <= now(), true) as send
                              from celeriac.schedule where name = $1 for update),
                      sent as (update celeriac.schedule s set last_beat_send_at = now()
                               from row where s.id = row.id and row.send returning s.id)
                 select owner, next_run_at, send, last_slot_at from row",
                &[(&name, Type::TEXT)],
            )
            .await?;
        Ok(match rows.first() {
            Some(r) if r.get::<_, String>(0) == "celeriac" => ("celeriac", r.get(1)),
            // Back with Beat, but celeriac fired the slot Beat is due for: not again.
            Some(r) if !r.get::<_, bool>(2) => ("fenced", r.get(3)),
            Some(_) => ("beat", None),
            None => ("unknown", None),
        })
    }

    /// Takes the lease `name` for `holder` if it is free or ran out (a new term), or renews it
    /// if `holder` has it at `term`. `None`: someone else holds it.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn lease_acquire(
        &self,
        name: &str,
        holder: Uuid,
        holder_name: &str,
        ttl_seconds: f64,
    ) -> Result<Option<LeaseTerm>> {
        let client = self.pool.get().await?;
        let rows = client
            .rows(
                self.pooler,
                "insert into celeriac.lease as l (name, holder, holder_name, term, expires_at)
                 values ($1, $2, $3, 1, now() + $4 * interval '1 second')
                 on conflict (name) do update
                 set holder = excluded.holder, holder_name = excluded.holder_name, term = l.term + 1,
                     acquired_at = now(), expires_at = excluded.expires_at
                 where l.expires_at < now()
                 returning term, expires_at",
                &[(&name, Type::TEXT), (&holder, Type::UUID), (&holder_name, Type::TEXT), (&ttl_seconds, Type::FLOAT8)],
            )
            .await?;
        Ok(rows.first().map(|r| LeaseTerm { holder, term: r.get(0), expires_at: r.get(1) }))
    }

    /// Extends `holder`'s lease at `term` by `ttl_seconds` from now, if it has not run out.
    /// `None`: it ran out or was taken over.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn lease_renew(
        &self,
        name: &str,
        holder: Uuid,
        term: i64,
        ttl_seconds: f64,
    ) -> Result<Option<LeaseTerm>> {
        let client = self.pool.get().await?;
        let rows = client
            .rows(
                self.pooler,
                "update celeriac.lease set expires_at = now() + $4 * interval '1 second'
                 where name = $1 and holder = $2 and term = $3 and expires_at > now()
                 returning expires_at",
                &[(&name, Type::TEXT), (&holder, Type::UUID), (&term, Type::INT8), (&ttl_seconds, Type::FLOAT8)],
            )
            .await?;
        Ok(rows.first().map(|r| LeaseTerm { holder, term, expires_at: r.get(0) }))
    }

    /// Gives the lease up (it runs out now), so another process takes over at once.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn lease_release(&self, name: &str, holder: Uuid, term: i64) -> Result<bool> {
        let client = self.pool.get().await?;
        let n = client
            .touch(
                self.pooler,
                "update celeriac.lease set expires_at = now() where name = $1 and holder = $2 and term = $3",
                &[(&name, Type::TEXT), (&holder, Type::UUID), (&term, Type::INT8)],
            )
            .await?;
        Ok(n == 1)
    }

    /// The lease `name`, if anyone ever held it.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn lease_get(&self, name: &str) -> Result<Option<LeaseRow>> {
        let client = self.pool.get().await?;
        let rows = client
            .rows(
                self.pooler,
                "select name, holder, holder_name, term, acquired_at, expires_at, expires_at > now()
                 from celeriac.lease where name = $1",
                &[(&name, Type::TEXT)],
            )
            .await?;
        Ok(rows.first().map(|r| LeaseRow {
            name: r.get(0),
            holder: r.get(1),
            holder_name: r.get(2),
            term: r.get(3),
            acquired_at: r.get(4),
            expires_at: r.get(5),
            valid: r.get(6),
        }))
    }
}
