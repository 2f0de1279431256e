//! Task results in the tables Celery clients read: Celery's database backend
//! (`celery_taskmeta`, SQLAlchemy's `DatabaseBackend`) and django-celery-results
//! (`django_celery_results_taskresult`).
//!
//! The rows are written as those backends write them (see `shared/reference/celery-compat.md`
//! §5.1–5.2): one row per task id, created on the first state stored and updated by the next,
//! and never changed once `SUCCESS` is stored (Celery 5.7's rule). Values arrive encoded
//! (the caller knows the client's serializer); this module only knows the tables.
//!
//! Table and schema names come from the app's settings (`database_table_names`,
//! `database_table_schemas`), so they are identifiers in the statement text, quoted, never
//! values; everything else is a parameter.
//!
//! Two ways to write: [`Store::result_store_many`] on its own (a result database other than the
//! queue's, or a state stored before the task ends, such as `STARTED`), and
//! [`Store::message_finish_many`], which deletes finished messages and stores their results
//! and follow-up messages (callbacks, the next link of a chain) in one statement, so a result
//! is stored exactly when its message is gone.

use std::borrow::Cow;

use chrono::{DateTime, NaiveDateTime, Utc};
use tokio_postgres::types::Type;
use uuid::Uuid;

use crate::{
    message::{pg_text, split, MessageColumns, NewMessage},
    sql::{Param, Session},
    Error, Lease, Result, Store,
};

/// Which result table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResultTableKind {
    /// Celery's `DatabaseBackend` (`db+postgresql://`): `result` and the extended `args` and
    /// `kwargs` are `bytea`, `date_done` a naive UTC timestamp, ids from `task_id_sequence`.
    Celery,
    /// django-celery-results (`django-db`): text columns, identity ids, `date_created`.
    Django,
}

/// Where results go, as the app configures it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultTableConfig {
    /// Which table layout.
    pub kind: ResultTableKind,
    /// The task table (Celery: `database_table_names['task']`, default `celery_taskmeta`).
    pub table: String,
    /// Its schema (`database_table_schemas['task']`); `None`: the connection's current schema.
    pub schema: Option<String>,
    /// Celery only: create the table and its sequences when the app has not (Celery's
    /// `database_create_tables_at_setup`, on by default).
    pub create: bool,
}

impl ResultTableConfig {
    /// Celery's default table, `celery_taskmeta`, created when missing.
    #[must_use]
    pub fn celery() -> Self {
        ResultTableConfig { kind: ResultTableKind::Celery, table: "celery_taskmeta".into(), schema: None, create: true }
    }

    /// django-celery-results' table (created by the Django project's migrations, never here).
    #[must_use]
    pub fn django() -> Self {
        ResultTableConfig {
            kind: ResultTableKind::Django,
            table: "django_celery_results_taskresult".into(),
            schema: None,
            create: false,
        }
    }
}

/// A result table found (or created) in the database, with the statements that write it.
#[derive(Debug, Clone)]
pub struct ResultTable {
    kind: ResultTableKind,
    /// The quoted, schema-qualified table name.
    qualified: String,
    /// Celery: the `result_extended` columns exist (`name`, `args`, `kwargs`, `worker`,
    /// `retries`, `queue`).
    extended: bool,
    /// The columns written, their values' `unnest` types, and the upsert's `set` list.
    columns: Vec<(&'static str, &'static str)>,
    set_list: String,
    sequence: String,
    /// django-celery-results' columns that older versions lack: `date_created` (2.0),
    /// `date_started` (2.5).
    django_dates: (bool, bool),
}

/// One state of one task, encoded for the table (see the module docs).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResultRow {
    /// The task id.
    pub task_id: String,
    /// `SUCCESS`, `FAILURE`, `RETRY`, `STARTED`, `REVOKED` or a custom state.
    pub status: String,
    /// The encoded value (Celery: the column's bytes; Django: UTF-8 JSON text).
    pub result: Option<Vec<u8>>,
    /// The traceback text, for failures.
    pub traceback: Option<String>,
    /// When the task finished (`None` for `STARTED`).
    pub date_done: Option<DateTime<Utc>>,
    /// Celery 5.7's `children` column: the encoded list of child result tuples.
    pub children: Option<Vec<u8>>,
    /// Task name (extended results; Django's `task_name`).
    pub name: Option<String>,
    /// Encoded args (Celery extended: serializer bytes; Django: JSON text of the argsrepr).
    pub args: Option<Vec<u8>>,
    /// Encoded kwargs, likewise.
    pub kwargs: Option<Vec<u8>>,
    /// The worker's hostname.
    pub worker: Option<String>,
    /// Retries so far.
    pub retries: Option<i32>,
    /// The queue (routing key) it was delivered from.
    pub queue: Option<String>,
    /// Django: `meta` (JSON text, e.g. `{"children": []}`).
    pub meta: Option<String>,
    /// Django: django-celery-beat's `periodic_task_name` header.
    pub periodic_task_name: Option<String>,
    /// Django: `content_type` and `content_encoding` of `result`.
    pub content_type: Option<String>,
}

/// `"name"` with inner quotes doubled: an identifier that is exactly `name`.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('\0', "").replace('"', "\"\""))
}

/// `'text'` with inner quotes doubled.
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\0', "").replace('\'', "''"))
}

fn naive(t: Option<DateTime<Utc>>) -> Option<NaiveDateTime> {
    t.map(|t| t.naive_utc())
}

fn text(bytes: Option<&Vec<u8>>) -> Option<Cow<'_, str>> {
    bytes.map(|b| String::from_utf8_lossy(b)).map(|s| match s {
        Cow::Borrowed(s) => pg_text(s),
        Cow::Owned(s) => Cow::Owned(pg_text(&s).into_owned()),
    })
}

/// The rows of `batch`, one per task id (the last state wins: one statement cannot upsert a
/// row twice).
fn last_per_task<'a, T>(batch: impl IntoIterator<Item = (T, &'a ResultRow)>) -> Vec<(T, &'a ResultRow)> {
    let mut out: Vec<(T, &'a ResultRow)> = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for (key, row) in batch {
        if let Some(&i) = seen.get(row.task_id.as_str()) {
            out[i] = (key, row);
        } else {
            seen.insert(row.task_id.as_str(), out.len());
            out.push((key, row));
        }
    }
    out
}

/// Column vectors of a batch of rows, in [`ResultTable::columns`] order.
struct Columns<'a> {
    task_id: Vec<Cow<'a, str>>,
    status: Vec<Cow<'a, str>>,
    result_bytes: Vec<Option<&'a [u8]>>,
    result_text: Vec<Option<Cow<'a, str>>>,
    date_done_naive: Vec<Option<NaiveDateTime>>,
    date_done: Vec<Option<DateTime<Utc>>>,
    traceback: Vec<Option<Cow<'a, str>>>,
    children: Vec<Option<&'a [u8]>>,
    name: Vec<Option<Cow<'a, str>>>,
    args_bytes: Vec<Option<&'a [u8]>>,
    kwargs_bytes: Vec<Option<&'a [u8]>>,
    args_text: Vec<Option<Cow<'a, str>>>,
    kwargs_text: Vec<Option<Cow<'a, str>>>,
    worker: Vec<Option<Cow<'a, str>>>,
    retries: Vec<Option<i32>>,
    queue: Vec<Option<Cow<'a, str>>>,
    meta: Vec<Option<Cow<'a, str>>>,
    periodic: Vec<Option<Cow<'a, str>>>,
    content_type: Vec<Cow<'a, str>>,
}

impl<'a> Columns<'a> {
    fn of(rows: &[&'a ResultRow]) -> Columns<'a> {
        let opt = |s: &'a Option<String>| s.as_deref().map(pg_text);
        Columns {
            task_id: rows.iter().map(|r| pg_text(&r.task_id)).collect(),
            status: rows.iter().map(|r| pg_text(&r.status)).collect(),
            result_bytes: rows.iter().map(|r| r.result.as_deref()).collect(),
            result_text: rows.iter().map(|r| text(r.result.as_ref())).collect(),
            date_done_naive: rows.iter().map(|r| naive(r.date_done)).collect(),
            date_done: rows.iter().map(|r| r.date_done).collect(),
            traceback: rows.iter().map(|r| opt(&r.traceback)).collect(),
            children: rows.iter().map(|r| r.children.as_deref()).collect(),
            name: rows.iter().map(|r| opt(&r.name)).collect(),
            args_bytes: rows.iter().map(|r| r.args.as_deref()).collect(),
            kwargs_bytes: rows.iter().map(|r| r.kwargs.as_deref()).collect(),
            args_text: rows.iter().map(|r| text(r.args.as_ref())).collect(),
            kwargs_text: rows.iter().map(|r| text(r.kwargs.as_ref())).collect(),
            worker: rows.iter().map(|r| opt(&r.worker)).collect(),
            retries: rows.iter().map(|r| r.retries).collect(),
            queue: rows.iter().map(|r| opt(&r.queue)).collect(),
            meta: rows.iter().map(|r| opt(&r.meta)).collect(),
            periodic: rows.iter().map(|r| opt(&r.periodic_task_name)).collect(),
            content_type: rows
                .iter()
                .map(|r| pg_text(r.content_type.as_deref().unwrap_or("application/json")))
                .collect(),
        }
    }

    /// The parameter for column `name`.
    fn param(&self, name: &str) -> Param<'_> {
        match name {
            "task_id" => (&self.task_id, Type::TEXT_ARRAY),
            "status" => (&self.status, Type::TEXT_ARRAY),
            "result_bytes" => (&self.result_bytes, Type::BYTEA_ARRAY),
            "result_text" => (&self.result_text, Type::TEXT_ARRAY),
            "date_done_naive" => (&self.date_done_naive, Type::TIMESTAMP_ARRAY),
            "date_done" => (&self.date_done, Type::TIMESTAMPTZ_ARRAY),
            "traceback" => (&self.traceback, Type::TEXT_ARRAY),
            "children" => (&self.children, Type::BYTEA_ARRAY),
            "name" => (&self.name, Type::TEXT_ARRAY),
            "args_bytes" => (&self.args_bytes, Type::BYTEA_ARRAY),
            "kwargs_bytes" => (&self.kwargs_bytes, Type::BYTEA_ARRAY),
            "args_text" => (&self.args_text, Type::TEXT_ARRAY),
            "kwargs_text" => (&self.kwargs_text, Type::TEXT_ARRAY),
            "worker" => (&self.worker, Type::TEXT_ARRAY),
            "retries" => (&self.retries, Type::INT4_ARRAY),
            "queue" => (&self.queue, Type::TEXT_ARRAY),
            "meta" => (&self.meta, Type::TEXT_ARRAY),
            "periodic" => (&self.periodic, Type::TEXT_ARRAY),
            _ => (&self.content_type, Type::TEXT_ARRAY),
        }
    }
}

impl ResultTable {
    /// The columns written (table column, source vector) in parameter order.
    fn layout(kind: &ResultTableKind, extended: bool, children: bool) -> Vec<(&'static str, &'static str)> {
        match kind {
            ResultTableKind::Celery => {
                let mut c = vec![
                    ("task_id", "task_id"),
                    ("status", "status"),
                    ("result", "result_bytes"),
                    ("date_done", "date_done_naive"),
                    ("traceback", "traceback"),
                ];
                if children {
                    c.push(("children", "children"));
                }
                if extended {
                    c.extend([
                        ("name", "name"),
                        ("args", "args_bytes"),
                        ("kwargs", "kwargs_bytes"),
                        ("worker", "worker"),
                        ("retries", "retries"),
                        ("queue", "queue"),
                    ]);
                }
                c
            }
            ResultTableKind::Django => vec![
                ("task_id", "task_id"),
                ("status", "status"),
                ("result", "result_text"),
                ("date_done", "date_done"),
                ("traceback", "traceback"),
                ("meta", "meta"),
                ("task_args", "args_text"),
                ("task_kwargs", "kwargs_text"),
                ("task_name", "name"),
                ("worker", "worker"),
                ("periodic_task_name", "periodic"),
                ("content_type", "content_type"),
            ],
        }
    }

    fn sql_type(source: &str) -> &'static str {
        match source {
            "result_bytes" | "children" | "args_bytes" | "kwargs_bytes" => "bytea",
            "date_done_naive" => "timestamp",
            "date_done" => "timestamptz",
            "retries" => "int4",
            _ => "text",
        }
    }

    /// Whether the extended (`result_extended`) columns are written.
    #[must_use]
    pub fn extended(&self) -> bool {
        self.extended
    }

    /// Which layout.
    #[must_use]
    pub fn kind(&self) -> &ResultTableKind {
        &self.kind
    }

    /// The quoted, schema-qualified table name.
    #[must_use]
    pub fn qualified(&self) -> &str {
        &self.qualified
    }

    /// The upsert of the rows `unnest`ed from parameters `$first…`. With `key` (the message id's
    /// alias and type), each row carries its message's id first, and only rows of messages the
    /// statement's `done` deleted are stored, the last per task id.
    fn upsert_sql(&self, first: usize, key: Option<(&str, &str)>) -> String {
        let mut unnest_args = Vec::new();
        let mut aliases = Vec::new();
        let mut n = first;
        if let Some((alias, ty)) = key {
            unnest_args.push(format!("${n}::{ty}[]"));
            aliases.push(alias.to_owned());
            n += 1;
        }
        for (i, (_, source)) in self.columns.iter().enumerate() {
            unnest_args.push(format!("${n}::{}[]", Self::sql_type(source)));
            aliases.push(format!("c{i}"));
            n += 1;
        }
        let names: Vec<String> = self.columns.iter().map(|(c, _)| quote_ident(c)).collect();
        let values: Vec<String> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, (column, _))| match (&self.kind, *column) {
                // Django's `date_done` is `auto_now`: set by every save.
                (ResultTableKind::Django, "date_done") => format!("coalesce(u.c{i}, now())"),
                _ => format!("u.c{i}"),
            })
            .collect();
        let task_id = self.columns.iter().position(|(c, _)| *c == "task_id").unwrap_or(0);
        // Keyed by message: only the rows of messages deleted, and of those the last per task id
        // (an upsert may not touch a row twice), whichever of a task's messages lost its lease.
        let source = if key.is_some() {
            format!(
                "(select distinct on (k.c{task_id}) k.* from unnest({args}) with ordinality as k({aliases}, ord)
                  join done on done.id = k.mid order by k.c{task_id}, k.ord desc) as u",
                args = unnest_args.join(", "),
                aliases = aliases.join(", "),
            )
        } else {
            format!("unnest({}) as u({})", unnest_args.join(", "), aliases.join(", "))
        };
        let (id_col, id_value, extra_cols, extra_values) = match self.kind {
            ResultTableKind::Celery => {
                ("id, ", format!("nextval({}::regclass), ", quote_literal(&self.sequence)), "", "")
            }
            ResultTableKind::Django => {
                let (created, started) = self.django_dates;
                (
                    "",
                    String::new(),
                    match (created, started) {
                        (true, true) => ", content_encoding, date_created, date_started",
                        (true, false) => ", content_encoding, date_created",
                        (false, true) => ", content_encoding, date_started",
                        (false, false) => ", content_encoding",
                    },
                    match (created, started) {
                        (true, true) => ", 'utf-8', now(), case when u.c1 = 'STARTED' then now() end",
                        (true, false) => ", 'utf-8', now()",
                        (false, true) => ", 'utf-8', case when u.c1 = 'STARTED' then now() end",
                        (false, false) => ", 'utf-8'",
                    },
                )
            }
        };
        format!(
            "insert into {table} as t ({id_col}{names}{extra_cols})
             select {id_value}{values}{extra_values}
             from {source}
             on conflict (task_id) do update set {set}
             where t.status is distinct from 'SUCCESS'",
            table = self.qualified,
            names = names.join(", "),
            values = values.join(", "),
            set = self.set_list,
        )
    }
}

impl Store {
    /// Finds (or, for Celery's table when `create` is set, creates) the result table `config`
    /// names, and which optional columns it has.
    ///
    /// # Errors
    /// [`Error::Config`] when the table is missing and may not be created (django-celery-results:
    /// run the Django project's migrations); connection errors.
    pub async fn result_table_open(&self, config: &ResultTableConfig) -> Result<ResultTable> {
        let mut client = self.pool.get().await?;
        let schema: String = match &config.schema {
            Some(s) => s.clone(),
            None => client.row(self.pooler, "select current_schema()::text", &[]).await?.get(0),
        };
        let qualified = format!("{}.{}", quote_ident(&schema), quote_ident(&config.table));
        let sequence = format!("{}.{}", quote_ident(&schema), quote_ident("task_id_sequence"));
        let exists: bool =
            client.row(self.pooler, "select to_regclass($1) is not null", &[(&qualified, Type::TEXT)]).await?.get(0);
        if !exists {
            if config.kind != ResultTableKind::Celery || !config.create {
                return Err(Error::Config(format!(
                    "the result table {qualified} does not exist{}",
                    if config.kind == ResultTableKind::Django {
                        " (run the Django project's migrations: manage.py migrate django_celery_results)"
                    } else {
                        " (database_create_tables_at_setup is off)"
                    }
                )));
            }
            let tx = client.transaction().await?;
            // Two workers starting at once: one creates, the other waits and finds it.
            tx.touch(self.pooler, "select pg_advisory_xact_lock(hashtext('celeriac.result_table_create'))", &[])
                .await?;
            let group = format!("{}.{}", quote_ident(&schema), quote_ident("taskset_id_sequence"));
            let index = quote_ident(&format!("ix_{}_date_done", config.table));
            let ddl = format!(
                "create schema if not exists {schema_q};
                 create sequence if not exists {sequence};
                 create sequence if not exists {group};
                 create table if not exists {qualified} (
                     id integer not null primary key,
                     task_id varchar(155) unique,
                     status varchar(50),
                     result bytea,
                     date_done timestamp without time zone,
                     traceback text,
                     children bytea,
                     name varchar(155),
                     args bytea,
                     kwargs bytea,
                     worker varchar(155),
                     retries integer,
                     queue varchar(155),
                     stamps bytea);
                 create index if not exists {index} on {qualified} (date_done)",
                schema_q = quote_ident(&schema),
            );
            tx.batch_execute(&ddl).await.map_err(Error::from_pg)?;
            tx.commit().await.map_err(Error::from_pg)?;
            tracing::info!("created the result table {qualified}");
        }
        let rows = client
            .rows(
                self.pooler,
                "select column_name::text from information_schema.columns where table_schema = $1 and table_name = $2",
                &[(&schema, Type::TEXT), (&config.table, Type::TEXT)],
            )
            .await?;
        let present: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        let has_sequence: bool =
            client.row(self.pooler, "select to_regclass($1) is not null", &[(&sequence, Type::TEXT)]).await?.get(0);
        let has = |c: &str| present.iter().any(|p| p == c);
        let extended = ["name", "args", "kwargs", "worker", "retries", "queue"].iter().all(|c| has(c));
        let children = has("children");
        let columns = ResultTable::layout(&config.kind, extended, children);
        if let Some((missing, _)) = columns.iter().find(|(c, _)| !has(c)) {
            return Err(Error::Config(format!("the result table {qualified} has no column {missing}")));
        }
        let django_dates = (has("date_created"), has("date_started"));
        let set_list = columns
            .iter()
            .filter(|(c, _)| *c != "task_id")
            .map(|(c, _)| format!("{0} = excluded.{0}", quote_ident(c)))
            .chain(
                (config.kind == ResultTableKind::Django && django_dates.1)
                    .then(|| "date_started = coalesce(t.date_started, excluded.date_started)".to_owned()),
            )
            .collect::<Vec<_>>()
            .join(", ");
        if config.kind == ResultTableKind::Celery && !has_sequence {
            return Err(Error::Config(format!(
                "the result table {qualified} has no sequence {sequence} for its ids (Celery's task_id_sequence)"
            )));
        }
        Ok(ResultTable { kind: config.kind.clone(), qualified, extended, columns, set_list, sequence, django_dates })
    }

    /// Stores `rows` (one statement; the last row of a task id wins). A task whose `SUCCESS` is
    /// stored keeps it.
    ///
    /// # Errors
    /// Connection errors; the statement's own errors (a value too long for a `varchar`).
    pub async fn result_store_many(&self, table: &ResultTable, rows: &[ResultRow]) -> Result<u64> {
        if rows.is_empty() {
            return Ok(0);
        }
        let rows: Vec<&ResultRow> = last_per_task(rows.iter().map(|r| ((), r))).into_iter().map(|(_, r)| r).collect();
        let columns = Columns::of(&rows);
        let params: Vec<Param<'_>> = table.columns.iter().map(|(_, source)| columns.param(source)).collect();
        let client = self.pool.get().await?;
        client.touch(self.pooler, &table.upsert_sql(1, None), &params).await
    }

    /// The stored states of `task_ids` and their result bytes (Django: the text's bytes), in
    /// the order asked; `None` for a task with no row (Celery's `PENDING`).
    ///
    /// # Errors
    /// Connection errors.
    pub async fn result_get_many(
        &self,
        table: &ResultTable,
        task_ids: &[String],
    ) -> Result<Vec<Option<(String, Option<Vec<u8>>)>>> {
        let client = self.pool.get().await?;
        let value = match table.kind {
            ResultTableKind::Celery => "result",
            ResultTableKind::Django => "convert_to(result, 'UTF8')",
        };
        let sql = format!(
            "select task_id::text, status::text, {value} from {} where task_id = any($1::text[])",
            table.qualified
        );
        let rows = client.rows(self.pooler, &sql, &[(&task_ids, Type::TEXT_ARRAY)]).await?;
        let mut found: std::collections::HashMap<String, (String, Option<Vec<u8>>)> =
            rows.iter().map(|r| (r.get(0), (r.get(1), r.get(2)))).collect();
        Ok(task_ids.iter().map(|id| found.remove(id)).collect())
    }

    /// Deletes the results finished more than `older_than_seconds` ago (Celery's
    /// `backend_cleanup` with `result_expires`), in batches of 10,000 rows, each its own
    /// statement. Returns how many were deleted.
    ///
    /// # Errors
    /// Connection errors (what was deleted before stays deleted).
    pub async fn result_cleanup(&self, table: &ResultTable, older_than_seconds: f64) -> Result<u64> {
        let cutoff = match table.kind {
            // Celery's `date_done` is naive UTC.
            ResultTableKind::Celery => "(now() at time zone 'utc') - make_interval(secs => $1)",
            ResultTableKind::Django => "now() - make_interval(secs => $1)",
        };
        let sql = format!(
            "delete from {t} where ctid = any(array(select ctid from {t} where date_done < {cutoff} limit 10000))",
            t = table.qualified
        );
        let client = self.pool.get().await?;
        let mut total = 0;
        loop {
            let n = client.touch(self.pooler, &sql, &[(&older_than_seconds, Type::FLOAT8)]).await?;
            total += n;
            if n < 10_000 {
                return Ok(total);
            }
        }
    }

    /// Makes `table` (Celery's result table, on the queue database) count chords: puts the
    /// trigger `celeriac_chord_count` on it unless it has it, and records `queues` as queues whose
    /// `celery.chord_unlock` messages wait parked until their header's results are stored,
    /// instead of polling (see `migrations/0006_chords.sql`). Returns whether the trigger was
    /// created now.
    ///
    /// # Errors
    /// [`Error::Config`] for a django-celery-results table (its chords are counted by
    /// `ChordCounter`); the database's refusal (the table belongs to another role); connection
    /// errors.
    pub async fn chord_counting_install(&self, table: &ResultTable, queues: &[String]) -> Result<bool> {
        if table.kind != ResultTableKind::Celery {
            return Err(Error::Config("chords are counted in Celery's result table only".into()));
        }
        let client = self.pool.get().await?;
        let exists = "select exists (select 1 from pg_trigger
                                     where tgrelid = $1::text::regclass and tgname = 'celeriac_chord_count')";
        let params = [(&table.qualified as _, Type::TEXT)];
        let mut created = false;
        let has: bool = client.row(self.pooler, exists, &params).await?.get(0);
        if !has {
            let create = format!(
                "create trigger celeriac_chord_count
                 after insert or update of status on {} for each row
                 when (new.status in ('SUCCESS', 'FAILURE', 'REVOKED'))
                 execute function celeriac.chord_member_ready()",
                table.qualified
            );
            match client.touch(self.pooler, &create, &[]).await {
                Ok(_) => created = true,
                Err(e) => {
                    // Another worker may have created it meanwhile.
                    let has: bool = client.row(self.pooler, exists, &params).await?.get(0);
                    if !has {
                        return Err(e);
                    }
                }
            }
        }
        client
            .touch(
                self.pooler,
                "insert into celeriac.chord_counting_queue (queue) select unnest($1::text[])
                 on conflict (queue) do update set updated_at = now()",
                &[(&queues, Type::TEXT_ARRAY)],
            )
            .await?;
        Ok(created)
    }

    /// One header task's part of a chord counted by django-celery-results (`ChordCounter`, in
    /// the result table's schema): decrements the count under a row lock, and deletes the row
    /// when this was the last part. Returns the header's result tuples (the `sub_tasks` JSON)
    /// when this part completed the chord; `None` otherwise, or when there is no counter.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn django_chord_part(&self, table: &ResultTable, group_id: &str) -> Result<Option<String>> {
        let counter = match table.qualified.rsplit_once('.') {
            Some((schema, _)) => format!("{schema}.{}", quote_ident("django_celery_results_chordcounter")),
            None => quote_ident("django_celery_results_chordcounter"),
        };
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let rows = tx
            .rows(
                self.pooler,
                &format!("select count, sub_tasks from {counter} where group_id = $1 for update"),
                &[(&group_id, Type::TEXT)],
            )
            .await?;
        let Some(row) = rows.first() else {
            tracing::warn!("Can't find ChordCounter for Group {group_id}");
            return Ok(None);
        };
        let (count, sub_tasks): (i32, String) = (row.get(0), row.get(1));
        let done = if count <= 1 {
            tx.touch(self.pooler, &format!("delete from {counter} where group_id = $1"), &[(&group_id, Type::TEXT)])
                .await?;
            Some(sub_tasks)
        } else {
            tx.touch(
                self.pooler,
                &format!("update {counter} set count = count - 1 where group_id = $1"),
                &[(&group_id, Type::TEXT)],
            )
            .await?;
            None
        };
        tx.commit().await.map_err(Error::from_pg)?;
        Ok(done)
    }

    /// How many rows the table has (an exact count: for tests and benchmarks).
    ///
    /// # Errors
    /// Connection errors.
    pub async fn result_count(&self, table: &ResultTable) -> Result<i64> {
        let client = self.pool.get().await?;
        Ok(client.row(self.pooler, &format!("select count(*) from {}", table.qualified), &[]).await?.get(0))
    }

    /// The stored state of `task_id` and its result bytes (Django: the text's bytes), if any.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn result_get(&self, table: &ResultTable, task_id: &str) -> Result<Option<(String, Option<Vec<u8>>)>> {
        let client = self.pool.get().await?;
        let sql = match table.kind {
            ResultTableKind::Celery => {
                format!("select status::text, result from {} where task_id = $1", table.qualified)
            }
            ResultTableKind::Django => {
                format!("select status::text, convert_to(result, 'UTF8') from {} where task_id = $1", table.qualified)
            }
        };
        let rows = client.rows(self.pooler, &sql, &[(&task_id, Type::TEXT)]).await?;
        Ok(rows.first().map(|r| (r.get(0), r.get(1))))
    }

    /// Finishes held messages: deletes each (fenced by its lease), and for those deleted stores
    /// its result row in `table` and inserts its follow-up messages, all in one statement.
    /// Returns the ids of the messages finished; the others' leases were lost (nothing of theirs
    /// is written: they run again).
    ///
    /// # Errors
    /// Connection errors; the caller keeps the batch and tries again.
    pub async fn message_finish_many(
        &self,
        worker_id: Uuid,
        table: Option<&ResultTable>,
        items: &[&Finish],
    ) -> Result<Vec<i64>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let leases: Vec<Lease> = items.iter().map(|f| f.lease).collect();
        let (ids, attempts) = split(&leases);
        let mut params: Vec<Param<'_>> =
            vec![(&ids, Type::INT8_ARRAY), (&attempts, Type::INT4_ARRAY), (&worker_id, Type::UUID)];
        let mut sql = String::from(
            "with done as (
                 delete from celeriac.message m
                 using unnest($1::int8[], $2::int4[]) as c(id, attempt)
                 where m.id = c.id and m.attempt = c.attempt and m.leased_by is not distinct from $3 and celeriac.relaxed_commit()
                 returning m.id)",
        );
        // Two rows of one task id are narrowed to one in the statement, among the messages it
        // deletes.
        let keyed: Vec<(i64, &ResultRow)> = match table {
            Some(_) => items.iter().filter_map(|f| Some((f.lease.id, f.result.as_ref()?))).collect(),
            None => Vec::new(),
        };
        let result_ids: Vec<i64> = keyed.iter().map(|(id, _)| *id).collect();
        let result_rows: Vec<&ResultRow> = keyed.iter().map(|(_, r)| *r).collect();
        let columns = Columns::of(&result_rows);
        if let (Some(table), false) = (table, result_rows.is_empty()) {
            let first = params.len() + 1;
            params.push((&result_ids, Type::INT8_ARRAY));
            params.extend(table.columns.iter().map(|(_, source)| columns.param(source)));
            sql.push_str(&format!(", results as ({})", table.upsert_sql(first, Some(("mid", "int8")))));
        }
        let published: Vec<(i64, &NewMessage)> =
            items.iter().flat_map(|f| f.publish.iter().map(move |m| (f.lease.id, m))).collect();
        let p_parent: Vec<i64> = published.iter().map(|(id, _)| *id).collect();
        let p_rows: Vec<&NewMessage> = published.iter().map(|(_, m)| *m).collect();
        let p_columns = MessageColumns::of(&p_rows);
        if !published.is_empty() {
            let n = params.len();
            params.push((&p_parent, Type::INT8_ARRAY));
            params.extend(p_columns.params());
            sql.push_str(&format!(
                ", published as (
                     insert into celeriac.message (queue, priority, eta, expires, task_name, task_id, payload)
                     select p.q, p.p, coalesce(p.e, now()), p.x, p.n, p.i, p.b
                     from unnest(${}::int8[], ${}::text[], ${}::int2[], ${}::timestamptz[], ${}::timestamptz[],
                                 ${}::text[], ${}::text[], ${}::bytea[]) as p(mid, q, p, e, x, n, i, b)
                     join done on done.id = p.mid)",
                n + 1,
                n + 2,
                n + 3,
                n + 4,
                n + 5,
                n + 6,
                n + 7,
                n + 8
            ));
        }
        sql.push_str(" select id from done");
        let client = self.pool.get().await?;
        let rows = client.rows(self.pooler, &sql, &params).await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

/// A finished message: its lease, the result row to store with its deletion, and the messages
/// it publishes (callbacks, the next task of a chain), inserted only if the deletion happens.
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    /// The lease held.
    pub lease: Lease,
    /// The result to store in the queue database's result table, if any.
    pub result: Option<ResultRow>,
    /// Messages to enqueue with the completion.
    pub publish: Vec<NewMessage>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_and_the_last_state_of_a_task_wins() {
        assert_eq!(quote_ident("celery_taskmeta"), "\"celery_taskmeta\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_literal("\"s\".\"it's\""), "'\"s\".\"it''s\"'");
        let row =
            |id: &str, status: &str| ResultRow { task_id: id.into(), status: status.into(), ..ResultRow::default() };
        let rows = [row("a", "STARTED"), row("b", "SUCCESS"), row("a", "SUCCESS")];
        let last = last_per_task(rows.iter().enumerate());
        assert_eq!(
            last.iter().map(|(i, r)| (*i, r.status.as_str())).collect::<Vec<_>>(),
            [(2, "SUCCESS"), (1, "SUCCESS")]
        );
    }
}
