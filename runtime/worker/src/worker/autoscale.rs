//! Celery's `--autoscale MAX,MIN` (see [`crate::Autoscale`]): Celery's `Autoscaler._maybe_scale`
//! on the messages the worker holds, once a second.

use std::{
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use celeriac_store::service::Service;
use tokio_util::sync::CancellationToken;

use super::{control, Shared};
use crate::Autoscale;

/// How often the pool size is reconsidered.
const EVERY: Duration = Duration::from_secs(1);
/// Celery's `AUTOSCALE_KEEPALIVE`: no shrinking sooner than this after growing.
const KEEPALIVE: Duration = Duration::from_secs(30);

/// Grows and shrinks the pool between the limits.
pub(super) struct Autoscaler {
    pub(super) shared: Arc<Shared>,
    pub(super) limits: Autoscale,
}

impl Service for Autoscaler {
    fn name(&self) -> &'static str {
        "autoscaler"
    }

    async fn run(self, shutdown: CancellationToken) {
        let Autoscaler { shared, limits } = self;
        let mut grown_at = Instant::now();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(EVERY) => {}
            }
            // The size now: pool_grow/pool_shrink change it too, as they go through Celery's
            // autoscaler.
            let size = shared.pool_size.load(Ordering::Relaxed);
            let held = shared.control.held();
            let wanted = held.min(limits.max);
            if wanted > size {
                let n = wanted - size;
                match control::resize(&shared, true, n) {
                    Ok(n) => {
                        tracing::info!("Scaling up {n} processes.");
                        grown_at = Instant::now();
                    }
                    Err(why) => tracing::warn!("autoscale: cannot grow the pool: {why}"),
                }
                continue;
            }
            let wanted = held.max(limits.min).max(1);
            if wanted < size && grown_at.elapsed() > KEEPALIVE {
                let n = size - wanted;
                match control::resize(&shared, false, n) {
                    Ok(n) => tracing::info!("Scaling down {n} processes."),
                    Err(why) => tracing::warn!("autoscale: cannot shrink the pool: {why}"),
                }
            }
        }
    }
}
