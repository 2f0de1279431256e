//! `celeriac beat`: the scheduler alone (leader election and the tick), for those who want it
//! apart from the workers. With `-A`, the app's `beat_schedule` is synced into the database
//! first. Any number may run; one leads at a time and each slot fires once.

use std::time::Duration;

use celeriac_store::service::Supervisor;
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::{store, CliError};
use crate::scheduler::SchedulerConfig;

/// `celeriac beat` options.
#[derive(Debug, Args)]
pub struct BeatArgs {
    /// Log level: DEBUG, INFO, WARNING, ERROR, CRITICAL. WARNING by default, as for `celery
    /// beat`: `-l INFO` shows every schedule it sends.
    #[arg(short = 'l', long, default_value = "WARNING", env = "CELERY_BEAT_LOGLEVEL")]
    pub loglevel: String,
    /// Longest sleep between two looks at the schedule (Celery beat's --max-interval): how soon
    /// a new or edited schedule is noticed. Due schedules are fired on time regardless.
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    pub max_interval: f64,
    /// Seconds the leader's lease lasts without renewal; a dead leader is replaced within
    /// about this long.
    #[arg(long, default_value_t = 15.0, value_name = "SECONDS")]
    pub lease_seconds: f64,
    /// Python interpreter of the app (with -A) [default: $CELERIAC_PYTHON, else
    /// $VIRTUAL_ENV/bin/python, else python3 on PATH].
    #[arg(long, env = "CELERIAC_PYTHON", value_name = "PATH")]
    pub python: Option<String>,
    /// Celery's daemon options.
    #[command(flatten)]
    pub daemon: super::DaemonArgs,
}

pub(super) async fn run(url: &str, app: Option<&str>, quiet: bool, args: &BeatArgs) -> Result<(), CliError> {
    let secs = |flag: &'static str, v: f64| match Duration::try_from_secs_f64(v) {
        Ok(d) if v > 0.0 && d <= Duration::from_secs(86_400) => Ok(d),
        _ => Err(CliError::NotADuration { flag }),
    };
    let config = SchedulerConfig {
        max_sleep: secs("max-interval", args.max_interval)?,
        lease_ttl: secs("lease-seconds", args.lease_seconds)?,
        ..SchedulerConfig::default()
    };
    if !quiet {
        let logfile = args.daemon.logfile.as_ref().map(|p| p.display().to_string());
        let transport = celeriac_store::redact_url(url);
        println!("{}", super::banner::beat(&transport, app, logfile.as_deref(), &args.loglevel, args.max_interval));
    }
    let store = store(url, 3)?;
    if let Some(app) = app {
        sync(&store, app, args).await?;
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(super::worker::handle_signals(shutdown.clone()));
    let holder = uuid::Uuid::new_v4();
    let holder_name = format!("celeriac beat@{} pid {}", crate::hostname(), std::process::id());
    tracing::info!(holder = %holder, "beat: starting ({holder_name})");
    let mut services = Supervisor::default();
    crate::scheduler::start(&mut services, &store, holder, holder_name, config);
    shutdown.cancelled().await;
    services.stop().await;
    tracing::info!("beat: stopped");
    Ok(())
}

#[cfg(feature = "python")]
async fn sync(store: &celeriac_store::Store, app: &str, args: &BeatArgs) -> Result<(), CliError> {
    use crate::python::interp;
    let interpreter = interp::probe(&interp::choose(args.python.as_deref()))?;
    crate::scheduler::sync::sync_app_schedule(store, &interpreter, app, None).await?;
    Ok(())
}

#[cfg(not(feature = "python"))]
async fn sync(_store: &celeriac_store::Store, _app: &str, _args: &BeatArgs) -> Result<(), CliError> {
    Err(CliError::NoEmbeddedPython)
}
