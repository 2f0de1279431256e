//! One shape for every background service of a worker (the lease session's heartbeat,
//! completer and rescuer, the wake-up listener, and those to come: leader election, the cron
//! tick, result cleanup, metrics), and a small [`Supervisor`] that starts them by name and stops
//! them in the reverse order.
//!
//! A service is a value holding its configuration and state. Continuous services implement
//! [`Service`] (`run(self, shutdown)`); periodic ones implement [`Periodic`] (a testable
//! `run_once`, and an interval) and run as [`Every`]`(service)`. Adding one to a worker is its
//! file plus one `services.start(…)` line where the worker starts the others.

use std::{fmt::Debug, future::Future, time::Duration};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A background service: runs until `shutdown` is cancelled, then returns promptly (within
/// [`Service::stop_within`]).
pub trait Service: Send + 'static {
    /// Its name in logs and in the supervisor.
    fn name(&self) -> &'static str;

    /// How long the supervisor waits for it to return once `shutdown` is cancelled before
    /// aborting it. Default: 5 s.
    fn stop_within(&self) -> Duration {
        Duration::from_secs(5)
    }

    /// Runs until `shutdown` is cancelled.
    fn run(self, shutdown: CancellationToken) -> impl Future<Output = ()> + Send;
}

/// A service that does one pass every [`Periodic::interval`] (the first at once).
pub trait Periodic: Send + 'static {
    /// What a pass reports.
    type Report: Debug + Send;

    /// Its name in logs and in the supervisor.
    fn name(&self) -> &'static str;

    /// Time between the starts of two passes.
    fn interval(&self) -> Duration;

    /// One pass. A failed pass is logged by [`Every`] and the next one runs on time.
    fn run_once(&mut self) -> impl Future<Output = crate::Result<Self::Report>> + Send;
}

/// Runs a [`Periodic`] service as a [`Service`]: a pass every interval (a late pass delays the
/// next rather than bunching them), failures logged at debug level (a periodic service logs
/// what matters itself).
///
/// At shutdown, a pass in flight is given [`PASS_GRACE`] to finish rather than dropped: a
/// statement already sent runs on the server anyway, and whoever stops the service must be able
/// to count on it being over (a heartbeat's upsert landing after the worker row's removal would
/// bring the row back).
#[derive(Debug)]
pub struct Every<P>(pub P);

/// How long a [`Periodic`] pass in flight at shutdown may take to finish.
pub const PASS_GRACE: Duration = Duration::from_secs(2);

impl<P: Periodic> Service for Every<P> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    async fn run(self, shutdown: CancellationToken) {
        let mut service = self.0;
        let name = service.name();
        let mut ticker = tokio::time::interval(service.interval());
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let pass = service.run_once();
            tokio::pin!(pass);
            let result = tokio::select! {
                result = &mut pass => result,
                () = shutdown.cancelled() => {
                    if tokio::time::timeout(PASS_GRACE, pass).await.is_err() {
                        tracing::debug!(service = name, "pass still running at shutdown; dropped");
                    }
                    return;
                }
            };
            if let Err(e) = result {
                crate::note_database_error();
                tracing::debug!(service = name, error = %e, "pass failed");
            }
        }
    }
}

struct Running {
    name: &'static str,
    stop: CancellationToken,
    stop_within: Duration,
    handle: JoinHandle<()>,
}

/// Starts services on the current tokio runtime and stops them, last started first.
#[derive(Default)]
pub struct Supervisor {
    running: Vec<Running>,
}

impl Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor").field("services", &self.names()).finish()
    }
}

impl Supervisor {
    /// Starts `service` on its own tokio task.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn start<S: Service>(&mut self, service: S) {
        let stop = CancellationToken::new();
        let (name, stop_within) = (service.name(), service.stop_within());
        let handle = tokio::spawn(service.run(stop.clone()));
        tracing::debug!(service = name, "started");
        self.running.push(Running { name, stop, stop_within, handle });
    }

    /// The names of the running services, in start order.
    #[must_use]
    pub fn names(&self) -> Vec<&'static str> {
        self.running.iter().map(|r| r.name).collect()
    }

    /// Stops every service, the last started first, each given its
    /// [`stop_within`](Service::stop_within) before it is aborted (and a warning logged).
    pub async fn stop(&mut self) {
        while let Some(mut service) = self.running.pop() {
            service.stop.cancel();
            if tokio::time::timeout(service.stop_within, &mut service.handle).await.is_err() {
                tracing::warn!(service = service.name, "did not stop within {:?}; aborted", service.stop_within);
                service.handle.abort();
            }
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        for service in &self.running {
            service.stop.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    struct Recorder {
        name: &'static str,
        log: Arc<Mutex<Vec<String>>>,
    }

    impl Service for Recorder {
        fn name(&self) -> &'static str {
            self.name
        }

        async fn run(self, shutdown: CancellationToken) {
            shutdown.cancelled().await;
            self.log.lock().unwrap().push(format!("stopped {}", self.name));
        }
    }

    struct Counter {
        passes: Arc<Mutex<u32>>,
    }

    impl Periodic for Counter {
        type Report = u32;

        fn name(&self) -> &'static str {
            "counter"
        }

        fn interval(&self) -> Duration {
            Duration::from_secs(1)
        }

        async fn run_once(&mut self) -> crate::Result<u32> {
            let mut passes = self.passes.lock().unwrap();
            *passes += 1;
            if *passes == 2 {
                return Err(crate::Error::Aborted);
            }
            Ok(*passes)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn starts_by_name_stops_in_reverse_and_runs_periodic_passes() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let passes = Arc::new(Mutex::new(0));
        let mut services = Supervisor::default();
        services.start(Recorder { name: "first", log: log.clone() });
        services.start(Every(Counter { passes: passes.clone() }));
        services.start(Recorder { name: "last", log: log.clone() });
        assert_eq!(services.names(), ["first", "counter", "last"]);
        tokio::time::sleep(Duration::from_millis(3500)).await;
        // Passes at 0, 1, 2 and 3 s; the failed second pass did not stop the service.
        assert_eq!(*passes.lock().unwrap(), 4);
        services.stop().await;
        assert_eq!(*log.lock().unwrap(), ["stopped last", "stopped first"]);
        assert!(services.names().is_empty());
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(*passes.lock().unwrap(), 4, "no pass after stop");
    }

    struct Stubborn;

    impl Service for Stubborn {
        fn name(&self) -> &'static str {
            "stubborn"
        }

        fn stop_within(&self) -> Duration {
            Duration::from_millis(100)
        }

        async fn run(self, _shutdown: CancellationToken) {
            std::future::pending::<()>().await;
        }
    }

    /// A pass that takes `pass_takes`, recording when it started and finished.
    struct Slow {
        pass_takes: Duration,
        log: Arc<Mutex<Vec<&'static str>>>,
    }

    impl Periodic for Slow {
        type Report = ();

        fn name(&self) -> &'static str {
            "slow"
        }

        fn interval(&self) -> Duration {
            Duration::from_secs(60)
        }

        async fn run_once(&mut self) -> crate::Result<()> {
            self.log.lock().unwrap().push("started");
            tokio::time::sleep(self.pass_takes).await;
            self.log.lock().unwrap().push("finished");
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_pass_in_flight_finishes_before_stop_returns_within_its_grace() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut services = Supervisor::default();
        services.start(Every(Slow { pass_takes: Duration::from_millis(500), log: log.clone() }));
        tokio::time::sleep(Duration::from_millis(100)).await;
        services.stop().await;
        assert_eq!(*log.lock().unwrap(), ["started", "finished"]);

        let log = Arc::new(Mutex::new(Vec::new()));
        services.start(Every(Slow { pass_takes: Duration::from_secs(3600), log: log.clone() }));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stopping = tokio::time::Instant::now();
        services.stop().await;
        assert_eq!(*log.lock().unwrap(), ["started"], "a pass past its grace is dropped");
        assert!(stopping.elapsed() <= PASS_GRACE + Duration::from_millis(10), "{:?}", stopping.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_service_that_does_not_stop_is_aborted() {
        let mut services = Supervisor::default();
        services.start(Stubborn);
        tokio::time::timeout(Duration::from_secs(1), services.stop()).await.expect("stop is bounded");
    }
}
