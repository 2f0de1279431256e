//! `celeriac revoke ID…`: Celery's `app.control.revoke`, recorded for good.

use std::time::Duration;

use celeriac_protocol::pidbox;
use celeriac_store::{Revocation, REVOKE_EXPIRES};
use clap::Args;

use super::{store, CliError};

/// `celeriac revoke …`
#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// Task ids to revoke.
    #[arg(required = true)]
    pub ids: Vec<String>,
    /// Also kill the tasks that are running (prefork children get the signal; Rust handlers
    /// are stopped where they await).
    #[arg(long, short = 't')]
    pub terminate: bool,
    /// The signal for --terminate (name or number).
    #[arg(long, short = 's', default_value = "SIGTERM")]
    pub signal: String,
    /// How long the revocation lasts, in seconds (after the message's ETA for a task queued
    /// further ahead). Default: Celery's REVOKE_EXPIRES, 10800.
    #[arg(long)]
    pub expires: Option<f64>,
    /// The app's `control_exchange`: workers listen on `<it>.pidbox`.
    #[arg(long, default_value = "celery")]
    pub control_exchange: String,
}

/// Records the revocation and broadcasts Celery's `revoke` command.
pub(super) async fn run(url: &str, args: RevokeArgs) -> Result<(), CliError> {
    let expires = match args.expires {
        None => REVOKE_EXPIRES,
        Some(s) => Duration::try_from_secs_f64(s)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or(CliError::NotADuration { flag: "expires" })?,
    };
    let signal = args.terminate.then(|| args.signal.clone());
    let revocation =
        Revocation { task_ids: args.ids.clone(), stamps: Vec::new(), terminate: args.terminate, signal, expires };
    let exchange = pidbox::control_exchange(&args.control_exchange);
    let payload = pidbox::revoke_envelope(&exchange, &args.ids, args.terminate, revocation.signal.as_deref());
    store(url, 1)?.broadcast_publish(&exchange, "", &payload, Some(&revocation)).await?;
    for id in &args.ids {
        println!("{id} revoked{}", if args.terminate { " (terminate)" } else { "" });
    }
    Ok(())
}
