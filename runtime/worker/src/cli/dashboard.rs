//! `celeriac dashboard`: the web UI over the queue database (see [`crate::dashboard`]).

use clap::Args;
use tokio_util::sync::CancellationToken;

use super::{store, CliError};
use crate::dashboard::{self, DashboardConfig};

/// Access options, shared by `celeriac dashboard` and `celeriac worker --dashboard`.
#[derive(Debug, Args, Clone)]
pub struct DashboardAccess {
    /// Pages only: every action (pause, purge, revoke, redrive, …) is refused.
    #[arg(long, env = "CELERIAC_DASHBOARD_READ_ONLY")]
    pub read_only: bool,
    /// Require HTTP basic authentication with these credentials for every page but /healthz,
    /// /readyz and /metrics.
    #[arg(long, value_name = "USER:PASSWORD", env = "CELERIAC_DASHBOARD_BASIC_AUTH", hide_env_values = true)]
    pub basic_auth: Option<String>,
    /// Require this token (`Authorization: Bearer TOKEN`, or as the basic-auth password) for
    /// every page but /healthz, /readyz and /metrics.
    #[arg(long, value_name = "TOKEN", env = "CELERIAC_DASHBOARD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The result table shown on task pages, `[schema.]table` [default: celery_taskmeta, else
    /// django_celery_results_taskresult, when the queue database has it].
    #[arg(long, value_name = "TABLE")]
    pub result_table: Option<String>,
    /// The apps' control_exchange (revokes are broadcast on `<it>.pidbox`).
    #[arg(long, value_name = "NAME", default_value = "celery")]
    pub control_exchange: String,
}

impl DashboardAccess {
    /// The dashboard's configuration on `address`.
    pub(super) fn config(&self, address: std::net::SocketAddr) -> DashboardConfig {
        DashboardConfig {
            address,
            read_only: self.read_only,
            basic_auth: self.basic_auth.clone(),
            token: self.token.clone(),
            result_table: self.result_table.clone(),
            control_exchange: self.control_exchange.clone(),
        }
    }
}

/// `celeriac dashboard …`
#[derive(Debug, Args)]
pub struct DashboardArgs {
    /// The port.
    #[arg(long, short = 'p', default_value_t = 5555, env = "CELERIAC_DASHBOARD_PORT")]
    pub port: u16,
    /// The address to listen on (a non-loopback address needs --basic-auth, --token or
    /// --read-only).
    #[arg(long, default_value = "127.0.0.1", env = "CELERIAC_DASHBOARD_HOST")]
    pub host: std::net::IpAddr,
    /// Access.
    #[command(flatten)]
    pub access: DashboardAccess,
}

/// Serves the dashboard until SIGINT or SIGTERM.
pub(super) async fn run(url: &str, args: &DashboardArgs) -> Result<(), CliError> {
    let config = args.access.config(std::net::SocketAddr::new(args.host, args.port));
    let listener = dashboard::bind(&config).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(super::worker::handle_signals(shutdown.clone()));
    dashboard::serve(store(url, 8)?, config, listener, shutdown).await;
    Ok(())
}
