//! The store's error type.

use tokio_postgres::error::SqlState;

/// An error talking to PostgreSQL.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database URL could not be parsed.
    #[error("invalid database URL: {0}")]
    Config(String),
    /// No connection could be taken from the pool (the server is down or unreachable).
    #[error("could not get a database connection: {}", describe_pool(.0))]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A statement failed.
    #[error("database error: {}", describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// A migration that was applied to this database differs from the one in this build.
    #[error("migration {version} ({name}) was changed after it was applied to this database; schema celeriac does not match this build")]
    MigrationChanged {
        /// Its version.
        version: i32,
        /// Its name.
        name: String,
    },
    /// The `celeriac` schema or one of its tables does not exist.
    #[error(
        "the celeriac schema is missing or outdated in this database ({0}); run `celeriac migrate --database-url …`"
    )]
    SchemaMissing(String),
    /// A streamed insert ended without a commit; nothing of it was written.
    #[error("the enqueue was abandoned before it committed; nothing was written")]
    Aborted,
    /// A statement that returns one row returned another number of rows.
    #[error("a statement expected to return one row returned {0}")]
    UnexpectedRows(usize),
    /// The named thing does not exist (e.g. `schedule "nightly"`).
    #[error("no such {0}")]
    NotFound(String),
    /// The named thing exists already.
    #[error("{0} exists already")]
    Exists(String),
    /// A request the store cannot carry out as given (nothing was written).
    #[error("{0}")]
    Invalid(String),
    /// Rows changed under a transaction that needed them unchanged; it was rolled back.
    #[error("conflict: {0}; nothing was written")]
    Conflict(String),
}

impl Error {
    /// Whether the error came from a lost or refused connection (worth retrying after a pause),
    /// as opposed to a statement the server rejected.
    #[must_use]
    pub fn is_connection(&self) -> bool {
        match self {
            Error::Pool(_) => true,
            Error::Postgres(e) => {
                e.is_closed()
                    || e.as_db_error().is_none()
                    || e.code().is_some_and(|c| {
                        c.code().starts_with("08")
                            || *c == SqlState::ADMIN_SHUTDOWN
                            || *c == SqlState::CRASH_SHUTDOWN
                            || *c == SqlState::CANNOT_CONNECT_NOW
                    })
            }
            Error::Config(_)
            | Error::SchemaMissing(_)
            | Error::MigrationChanged { .. }
            | Error::Aborted
            | Error::UnexpectedRows(_)
            | Error::NotFound(_)
            | Error::Exists(_)
            | Error::Invalid(_)
            | Error::Conflict(_) => false,
        }
    }

    /// Whether a statement was cancelled by its `statement_timeout` (or a cancel request).
    #[must_use]
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Postgres(e) if e.code() == Some(&SqlState::QUERY_CANCELED))
    }

    /// Turns "relation/schema does not exist" into [`Error::SchemaMissing`].
    pub(crate) fn from_pg(e: tokio_postgres::Error) -> Self {
        match e.code() {
            Some(c)
                if *c == SqlState::UNDEFINED_TABLE
                    || *c == SqlState::INVALID_SCHEMA_NAME
                    || *c == SqlState::UNDEFINED_FUNCTION =>
            {
                Error::SchemaMissing(e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_owned()))
            }
            _ => Error::Postgres(e),
        }
    }
}

/// The pool's error, with the server's reason when a new connection was refused (deadpool's
/// own message stops at "db error").
fn describe_pool(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(pg) => describe(pg),
        deadpool_postgres::PoolError::PostCreateHook(deadpool_postgres::HookError::Backend(pg)) => describe(pg),
        other => other.to_string(),
    }
}

/// The server's message with its SQLSTATE, or the client-side error.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {} (SQLSTATE {})", db.severity(), db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// The store's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
