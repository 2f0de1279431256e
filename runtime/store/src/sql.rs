//! How statements reach the server, and the one connection option celeriac reads itself.
//!
//! Every statement of the store runs through [`Session`] with its parameter types declared next
//! to its values ([`Param`]). Behind a plain PostgreSQL (or a session-mode pooler) a statement is
//! prepared once per connection and cached, and the claim runs as a generic plan. Behind a
//! transaction-mode pooler (PgBouncer `pool_mode = transaction`, pgcat, Supavisor, RDS Proxy) a
//! connection's session state does not survive from one transaction to the next, so named
//! prepared statements, `LISTEN` and `SET` are out: every statement goes as one unnamed
//! Parse/Bind/Execute (one round trip, as a cached statement), wake-ups come from polling.

use tokio_postgres::{
    types::{ToSql, Type},
    Row,
};

use crate::{Error, Result};

/// What sits between celeriac and PostgreSQL, as far as session state is concerned. Set with
/// the connection string's `pooler` option (`?pooler=transaction` in a URL, `pooler=transaction`
/// in key=value form), which celeriac reads and removes before connecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pooler {
    /// PostgreSQL itself, or a pooler that keeps one server session per client connection
    /// (PgBouncer `pool_mode = session`): prepared statements are cached, `LISTEN` works.
    #[default]
    Session,
    /// A pooler that may hand each transaction a different server session: no session state
    /// is used (unnamed statements only, no `LISTEN`; workers poll).
    Transaction,
}

impl std::str::FromStr for Pooler {
    type Err = Error;

    fn from_str(s: &str) -> Result<Pooler> {
        match s {
            "session" | "none" => Ok(Pooler::Session),
            "transaction" => Ok(Pooler::Transaction),
            other => Err(Error::Config(format!("pooler={other}: expected pooler=transaction or pooler=session"))),
        }
    }
}

/// The connection string without celeriac's own options, and the pooler it names.
///
/// # Errors
/// [`Error::Config`] for a `pooler` value other than `transaction` or `session`.
pub(crate) fn take_pooler_option(url: &str) -> Result<(String, Pooler)> {
    let mut pooler = Pooler::Session;
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_owned(), pooler));
        };
        let mut kept = Vec::new();
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("pooler", value)) => pooler = value.parse()?,
                _ => kept.push(pair),
            }
        }
        let rest = if kept.is_empty() { String::new() } else { format!("?{}", kept.join("&")) };
        return Ok((format!("{base}{rest}"), pooler));
    }
    // key=value form: `pooler=…` is one whitespace-separated word (its values need no quotes).
    let mut kept = Vec::new();
    for word in url.split_whitespace() {
        match word.strip_prefix("pooler=") {
            Some(value) => pooler = value.trim_matches('\'').parse()?,
            None => kept.push(word),
        }
    }
    if pooler == Pooler::Session && !url.split_whitespace().any(|w| w.starts_with("pooler=")) {
        return Ok((url.to_owned(), pooler));
    }
    Ok((kept.join(" "), pooler))
}

/// One statement parameter: its value and its PostgreSQL type. The type is sent with the
/// statement, so the server never has to infer it (it cannot for an unnamed statement sent
/// with its values) and a value of the wrong Rust type fails here, in every mode alike.
pub(crate) type Param<'a> = (&'a (dyn ToSql + Sync), Type);

/// A connection statements can run on: a pooled client or a transaction on one.
pub(crate) trait Session {
    /// Runs `sql` and returns its rows.
    async fn rows(&self, pooler: Pooler, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>>;
    /// Runs `sql` and returns how many rows it touched.
    async fn touch(&self, pooler: Pooler, sql: &str, params: &[Param<'_>]) -> Result<u64>;
    /// Runs `sql`, which returns exactly one row.
    async fn row(&self, pooler: Pooler, sql: &str, params: &[Param<'_>]) -> Result<Row> {
        let mut rows = self.rows(pooler, sql, params).await?;
        match rows.len() {
            1 => Ok(rows.remove(0)),
            n => Err(Error::UnexpectedRows(n)),
        }
    }
}

fn split<'p>(params: &'p [Param<'_>]) -> (Vec<Type>, Vec<&'p (dyn ToSql + Sync)>) {
    params.iter().map(|(value, ty)| (ty.clone(), *value)).unzip()
}

/// [`Session`] for deadpool's client and transaction, which share method names but no trait
/// covering both the statement cache and unnamed statements.
macro_rules! session {
    ($ty:ty) => {
        impl Session for $ty {
            async fn rows(&self, pooler: Pooler, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>> {
                match pooler {
                    Pooler::Session => {
                        let (types, values) = split(params);
                        let stmt = self.prepare_typed_cached(sql, &types).await.map_err(Error::from_pg)?;
                        self.query(&stmt, &values).await.map_err(Error::from_pg)
                    }
                    Pooler::Transaction => self.query_typed(sql, params).await.map_err(Error::from_pg),
                }
            }

            async fn touch(&self, pooler: Pooler, sql: &str, params: &[Param<'_>]) -> Result<u64> {
                match pooler {
                    Pooler::Session => {
                        let (types, values) = split(params);
                        let stmt = self.prepare_typed_cached(sql, &types).await.map_err(Error::from_pg)?;
                        self.execute(&stmt, &values).await.map_err(Error::from_pg)
                    }
                    Pooler::Transaction => self.execute_typed(sql, params).await.map_err(Error::from_pg),
                }
            }
        }
    };
}

session!(deadpool_postgres::Client);
session!(deadpool_postgres::Transaction<'_>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pooler_option_is_read_and_removed() {
        let cases = [
            ("postgresql://u@h/db", "postgresql://u@h/db", Pooler::Session),
            ("postgresql://u@h/db?pooler=transaction", "postgresql://u@h/db", Pooler::Transaction),
            (
                "postgres://u:p@h:6432/db?sslmode=disable&pooler=transaction&application_name=x",
                "postgres://u:p@h:6432/db?sslmode=disable&application_name=x",
                Pooler::Transaction,
            ),
            ("postgresql://h/db?pooler=session", "postgresql://h/db", Pooler::Session),
            ("host=h dbname=db pooler=transaction user=u", "host=h dbname=db user=u", Pooler::Transaction),
            ("host=h  dbname=db", "host=h  dbname=db", Pooler::Session),
        ];
        for (url, rest, pooler) in cases {
            assert_eq!(take_pooler_option(url).unwrap(), (rest.to_owned(), pooler), "{url}");
        }
        assert!(take_pooler_option("postgresql://h/db?pooler=statement").is_err());
        assert!(take_pooler_option("host=h pooler=yes").is_err());
    }
}
