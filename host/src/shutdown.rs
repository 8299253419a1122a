//! Shutdown that drains: SIGTERM and SIGINT close the listeners, let the
//! requests in flight finish, and end the process as soon as none is left
//! or when `[server] shutdown_grace` is over. SIGQUIT first hands the
//! listeners to a new process (graceful upgrade), then drains the same way.
//!
//! Pingora 0.9.1 on its own sleeps the whole grace period after SIGTERM even
//! when nothing is in flight (300 s by default), then cancels whatever still
//! runs; on SIGINT it cancels requests mid-response. cachet keeps Pingora's
//! sequence (stop accepting, close idle keep-alive connections, hand over
//! sockets on upgrade) and watches its own count of requests to end the
//! grace period early.

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::server::{ExecutionPhase, ShutdownSignal, ShutdownSignalWatch};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::broadcast;

/// How often the drain checks whether the last request finished.
const DRAIN_POLL: Duration = Duration::from_millis(10);

/// What a shutdown waits for: the requests being served right now (each
/// holds an [`InFlightGuard`]), and for how long at most (reloadable).
#[derive(Default)]
pub struct Drain {
    in_flight: AtomicUsize,
    grace_nanos: AtomicU64,
    /// A stop signal came: responses from now on close their connection.
    draining: AtomicBool,
}

impl Drain {
    /// Whether the process is stopping: a response should say `Connection: close`, since
    /// the connection is closed after it (a client reusing it would find it gone).
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Counts one request until the guard is dropped.
    pub fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(self.clone())
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    pub fn grace(&self) -> Duration {
        Duration::from_nanos(self.grace_nanos.load(Ordering::Acquire))
    }

    pub fn set_grace(&self, grace: Duration) {
        let nanos = u64::try_from(grace.as_nanos()).unwrap_or(u64::MAX);
        self.grace_nanos.store(nanos, Ordering::Release);
    }
}

/// One request in flight; dropped when the request (response included) is done.
pub struct InFlightGuard(Arc<Drain>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Pingora's shutdown signal source, replaced so that SIGINT drains like
/// SIGTERM and the process ends once drained.
pub struct DrainOnSignal {
    drain: Arc<Drain>,
    /// Taken by the first signal: the drain waits on it for Pingora to have
    /// stopped the listeners.
    phases: Mutex<Option<broadcast::Receiver<ExecutionPhase>>>,
    before_exit: BeforeExit,
}

/// What must be finished after the last request and before the process
/// ends (objects queued for the cache tiers), within the time it is given. A second
/// signal skips it.
pub type BeforeExit = Arc<dyn Fn(Duration) + Send + Sync>;

/// The least time the cache tiers' queued writes get at a stop, when the requests in
/// flight took all of `shutdown_grace`.
const LEAST_FOR_TIERS: Duration = Duration::from_secs(1);

impl DrainOnSignal {
    /// `phases` comes from `Server::watch_execution_phase`.
    pub fn new(
        drain: Arc<Drain>,
        phases: broadcast::Receiver<ExecutionPhase>,
        before_exit: BeforeExit,
    ) -> Self {
        Self {
            drain,
            phases: Mutex::new(Some(phases)),
            before_exit,
        }
    }
}

#[async_trait]
impl ShutdownSignalWatch for DrainOnSignal {
    async fn recv(&self) -> ShutdownSignal {
        let install = |kind| signal(kind).expect("install a signal handler");
        let mut quit = install(SignalKind::quit());
        let mut terminate = install(SignalKind::terminate());
        let mut interrupt = install(SignalKind::interrupt());
        let (name, kind) = tokio::select! {
            _ = quit.recv() => ("SIGQUIT", ShutdownSignal::GracefulUpgrade),
            _ = terminate.recv() => ("SIGTERM", ShutdownSignal::GracefulTerminate),
            _ = interrupt.recv() => ("SIGINT", ShutdownSignal::GracefulTerminate),
        };
        self.drain.draining.store(true, Ordering::Relaxed);
        tracing::info!(
            signal = name,
            in_flight = self.drain.in_flight(),
            grace_ms = self.drain.grace().as_millis() as u64,
            "shutting down: draining requests in flight"
        );
        if let Some(phases) = self.phases.lock().take() {
            let (drain, before_exit) = (self.drain.clone(), self.before_exit.clone());
            std::thread::Builder::new()
                .name("cachet-drain".into())
                .spawn(move || drain_then_exit(phases, &drain, &*before_exit))
                .expect("spawn the drain thread");
        }
        // A second signal means "now": the operator does not want to wait.
        tokio::spawn(async move {
            tokio::select! {
                _ = terminate.recv() => {},
                _ = interrupt.recv() => {},
            }
            tracing::warn!("second shutdown signal: exiting without waiting");
            exit();
        });
        kind
    }
}

/// Waits for Pingora to stop accepting (its grace period starts once the
/// listeners are closed), then, when no request is left or the grace is over,
/// runs `before_exit` and exits. Returns without exiting if Pingora shuts down
/// without a grace period (a failed upgrade hand-over ends in its fast
/// shutdown).
fn drain_then_exit(
    mut phases: broadcast::Receiver<ExecutionPhase>,
    drain: &Drain,
    before_exit: &(dyn Fn(Duration) + Send + Sync),
) {
    loop {
        match phases.blocking_recv() {
            Ok(ExecutionPhase::ShutdownGracePeriod) => break,
            Ok(ExecutionPhase::ShutdownRuntimes | ExecutionPhase::Terminated) => return,
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
    let deadline = Instant::now() + drain.grace();
    // Nothing in flight at two looks in a row: work passes from one count to the next
    // (a finished TLS handshake to the connection's last look for a request) on another
    // thread, and one look could fall in between.
    let mut quiet_looks = 0;
    loop {
        let left = drain.in_flight();
        quiet_looks = if left == 0 { quiet_looks + 1 } else { 0 };
        if quiet_looks == 2 {
            tracing::info!("no request in flight: exiting");
            break;
        }
        if Instant::now() >= deadline {
            if left > 0 {
                tracing::warn!(
                    in_flight = left,
                    "shutdown grace period over with requests still in flight: exiting"
                );
            }
            break;
        }
        std::thread::sleep(DRAIN_POLL);
    }
    // The tiers' writes get what is left of the grace (at least a second), not another
    // whole grace: a container runtime kills a process some seconds after its SIGTERM
    // (Docker and Kubernetes: 10 s and 30 s by default), and a stalled tier made the exit
    // take twice the grace.
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(LEAST_FOR_TIERS);
    // A panic here would end only this thread and leave the process running with its
    // listeners closed: exit whatever happens.
    let finish = std::panic::AssertUnwindSafe(|| before_exit(left));
    if std::panic::catch_unwind(finish).is_err() {
        tracing::error!("shutdown: finishing the cache tiers' writes failed; exiting without them");
    }
    exit();
}

/// Ends the process once the queued access-log lines are written.
fn exit() -> ! {
    crate::log_writer::flush();
    std::process::exit(0)
}

/// The longest `shutdown_grace` the config accepts.
pub const MAX_GRACE: Duration = Duration::from_secs(3600);

/// Pingora's own timers, a backstop behind the drain: its grace sleep ends
/// after the longest grace a reload may set (the drain exits before), then
/// runtimes get a second to stop.
pub const PINGORA_GRACE_SECONDS: (u64, u64) = (MAX_GRACE.as_secs() + 1, 1);
