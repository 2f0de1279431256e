//! The exception hierarchy (`celeriac.CeleriacError` and subclasses) and how Rust errors map
//! onto it.

use pyo3::{create_exception, exceptions::PyException, prelude::*};

create_exception!(celeriac, CeleriacError, PyException, "Base class of every error celeriac raises.");
create_exception!(
    celeriac,
    EncodeError,
    CeleriacError,
    "A task could not be encoded: a value the serializer cannot carry, an unknown serializer, or an option out \
     of range. Raised before anything is written."
);
create_exception!(
    celeriac,
    DatabaseError,
    CeleriacError,
    "PostgreSQL failed or refused a statement (the message names the server's reason and SQLSTATE)."
);
create_exception!(
    celeriac,
    ConnectError,
    DatabaseError,
    "The database could not be reached (refused, timed out, bad URL or credentials)."
);
create_exception!(
    celeriac,
    SchemaMissingError,
    DatabaseError,
    "celeriac's tables are not in this database: run `celeriac migrate` (or `Client.migrate()`)."
);
create_exception!(celeriac, EnqueueError, DatabaseError, "An enqueue failed; nothing of it was written.");

/// Adds the exception classes to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("CeleriacError", py.get_type::<CeleriacError>())?;
    m.add("EncodeError", py.get_type::<EncodeError>())?;
    m.add("DatabaseError", py.get_type::<DatabaseError>())?;
    m.add("ConnectError", py.get_type::<ConnectError>())?;
    m.add("SchemaMissingError", py.get_type::<SchemaMissingError>())?;
    m.add("EnqueueError", py.get_type::<EnqueueError>())?;
    Ok(())
}

/// What the failed call was doing, which picks the class for errors the server raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Doing {
    /// Inserting messages.
    Enqueue,
    /// Anything else (migrate, claim, ack, stats).
    Other,
}

/// Maps a store error to the hierarchy; `target` (the URL without its password) leads
/// connection errors.
pub fn store_error(error: &celeriac_store::Error, target: &str, doing: Doing) -> PyErr {
    use celeriac_store::Error;
    match error {
        Error::SchemaMissing(_) => SchemaMissingError::new_err(format!(
            "{error} (database {target}; from Python: celeriac.Client(url).migrate())"
        )),
        Error::Config(_) => ConnectError::new_err(format!("{error} ({target})")),
        e if e.is_connection() => ConnectError::new_err(format!("cannot reach PostgreSQL at {target}: {error}")),
        _ if doing == Doing::Enqueue => EnqueueError::new_err(error.to_string()),
        _ => DatabaseError::new_err(error.to_string()),
    }
}

/// The URL without its password (or any other option), for messages.
pub fn redact(url: &str) -> String {
    celeriac_store::redact_url(url)
}
