//! `celeriac migrate`: creates or upgrades schema `celeriac`.

use super::{store, CliError};

/// Applies the pending migrations and says where the schema stands.
pub(super) async fn run(url: &str) -> Result<(), CliError> {
    let report = store(url, 1)?.migrate().await?;
    if report.applied.is_empty() {
        println!("schema celeriac is up to date (version {})", report.current);
    } else {
        println!("applied migrations {:?}; schema celeriac is at version {}", report.applied, report.current);
    }
    Ok(())
}
