//! Schema migrations: the numbered files in `migrations/`, applied in order, each recorded.

use tokio_postgres::types::Type;

use crate::{sql::Session, Error, Result, Store};

/// One migration file, compiled into the binary.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Version number (the file's numeric prefix).
    pub version: i32,
    /// The file's name without the prefix and extension.
    pub name: &'static str,
    /// The SQL.
    pub sql: &'static str,
}

/// All migrations, in order. The files in `migrations/` are the only source of the schema.
pub const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "queue", sql: include_str!("../../../migrations/0001_queue.sql") },
    Migration { version: 2, name: "claim_suspects", sql: include_str!("../../../migrations/0002_claim_suspects.sql") },
    Migration {
        version: 3,
        name: "worker_healthy_since",
        sql: include_str!("../../../migrations/0003_worker_healthy_since.sql"),
    },
    Migration { version: 4, name: "rate_limits", sql: include_str!("../../../migrations/0004_rate_limits.sql") },
    Migration { version: 5, name: "schedules", sql: include_str!("../../../migrations/0005_schedules.sql") },
    Migration { version: 6, name: "chords", sql: include_str!("../../../migrations/0006_chords.sql") },
    Migration { version: 7, name: "control", sql: include_str!("../../../migrations/0007_control.sql") },
    Migration { version: 8, name: "operations", sql: include_str!("../../../migrations/0008_operations.sql") },
    Migration { version: 9, name: "notify_queues", sql: include_str!("../../../migrations/0009_notify_queues.sql") },
    Migration { version: 10, name: "worker_kind", sql: include_str!("../../../migrations/0010_worker_kind.sql") },
];

/// What the runner itself creates before applying migrations.
const BOOTSTRAP_SQL: &str = "
    create schema if not exists celeriac;
    create table if not exists celeriac.schema_migration (
        version    integer     primary key,
        name       text        not null,
        checksum   text        not null,
        applied_at timestamptz not null default now()
    );";

/// A fixed advisory-lock key that serialises concurrent `migrate` runs ("celeriac" in ASCII).
const MIGRATE_LOCK_KEY: i64 = 0x6365_6c65_7269_6163;

/// What [`Store::migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MigrateReport {
    /// Versions applied by this call.
    pub applied: Vec<i32>,
    /// The schema version after the call.
    pub current: i32,
}

fn fnv1a(hash: u64, bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(hash, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

impl Migration {
    /// A stable hash of the migration's text (FNV-1a, hex), recorded when it is applied.
    #[must_use]
    pub fn checksum(&self) -> String {
        format!("{:016x}", fnv1a(FNV_OFFSET, self.sql.bytes()))
    }
}

/// A stable hash of the runner's own tables and all migrations' text (FNV-1a), used to key
/// test templates.
#[must_use]
pub fn migrations_fingerprint() -> u64 {
    MIGRATIONS
        .iter()
        .fold(fnv1a(FNV_OFFSET, BOOTSTRAP_SQL.bytes()), |h, m| fnv1a(h, m.sql.bytes().chain(m.version.to_le_bytes())))
}

impl Store {
    /// Creates or upgrades schema `celeriac`. Idempotent, and safe when several processes run it
    /// at once: everything happens in one transaction holding an advisory lock, so a second
    /// caller waits and then finds nothing left to do.
    ///
    /// # Errors
    /// Connection failures, or a migration the server rejects (nothing is applied then).
    pub async fn migrate(&self) -> Result<MigrateReport> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.rows(self.pooler, "select pg_advisory_xact_lock($1)", &[(&MIGRATE_LOCK_KEY, Type::INT8)]).await?;
        tx.batch_execute(BOOTSTRAP_SQL).await?;
        let rows = tx.rows(self.pooler, "select version, checksum from celeriac.schema_migration", &[]).await?;
        let done: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let mut report = MigrateReport::default();
        for m in MIGRATIONS {
            if let Some((_, checksum)) = done.iter().find(|(v, _)| *v == m.version) {
                if *checksum != m.checksum() {
                    return Err(Error::MigrationChanged { version: m.version, name: m.name.to_owned() });
                }
                continue;
            }
            tx.batch_execute(m.sql).await.map_err(Error::Postgres)?;
            tx.touch(
                self.pooler,
                "insert into celeriac.schema_migration (version, name, checksum) values ($1, $2, $3)",
                &[(&m.version, Type::INT4), (&m.name, Type::TEXT), (&m.checksum(), Type::TEXT)],
            )
            .await?;
            report.applied.push(m.version);
        }
        tx.commit().await?;
        report.current = MIGRATIONS.iter().map(|m| m.version).max().unwrap_or(0);
        if let Some(max_done) = done.iter().map(|(v, _)| *v).max() {
            report.current = report.current.max(max_done);
        }
        Ok(report)
    }
}
