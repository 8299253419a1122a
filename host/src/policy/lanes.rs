//! Plugin lanes: when tenants share the proxy, one whose plugin is slow runs its `on-request`
//! calls on at most all worker threads but one, so the others' requests always find a worker.
//!
//! Why: hook calls run on the worker threads, and a call under its deadline cannot be cut
//! short. A flood of one tenant's requests whose calls took 25 ms each kept both workers of a
//! 2-thread proxy busy, and another tenant's cache hits waited behind them: 69 ms median,
//! against ~1 ms. Waiting for a lane parks the request's task instead of holding a worker.
//!
//! Why only slow plugins: a call of a few microseconds is a small part of its request, and
//! holding others back by that long is no harm; a lane for it would cost every request a
//! permit, and two calls at once a wait. A plugin counts as slow when the shortest of its last
//! [`CALLS_PER_ESTIMATE`] calls took [`SLOW_CALL`] or more: the scheduler preempting a thread
//! can make a fast call look long, never a slow one look short.
//!
//! Why only when tenants share the proxy: a lone tenant would lose a worker for no one.
//! What it does not cover: `on-response`, `vary-value` and `on-deliver` run inside Pingora's
//! synchronous cache callbacks, where a request cannot wait for a lane.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit};

/// A plugin whose calls take this long or more is held to its lanes.
pub(crate) const SLOW_CALL: Duration = Duration::from_micros(100);

/// Calls whose shortest makes one estimate of a call's time.
const CALLS_PER_ESTIMATE: u32 = 8;

pub(crate) struct Lanes {
    lanes: Semaphore,
    /// The shortest call since the last estimate, in microseconds.
    shortest: AtomicU64,
    calls: AtomicU32,
    /// The last estimate of one call's time, in microseconds.
    estimate: AtomicU64,
}

impl Lanes {
    /// Lanes for a proxy of `workers` worker threads: all of them but one, and at least one.
    pub(crate) fn new(workers: usize) -> Self {
        Self {
            lanes: Semaphore::new(workers.saturating_sub(1).max(1)),
            shortest: AtomicU64::new(u64::MAX),
            calls: AtomicU32::new(0),
            estimate: AtomicU64::new(0),
        }
    }

    /// Waits for a lane when the plugin is slow and `shared` (other tenants share the
    /// proxy); the lane is held until the permit drops. `None`: go ahead without one.
    pub(crate) async fn enter(&self, shared: bool) -> Option<SemaphorePermit<'_>> {
        if !shared || !self.slow() {
            return None;
        }
        // The semaphore is never closed: `acquire` only fails on a closed one.
        self.lanes.acquire().await.ok()
    }

    fn slow(&self) -> bool {
        self.estimate.load(Relaxed) >= SLOW_CALL.as_micros() as u64
    }

    /// Counts one call that took `took`. Concurrent calls may blur a window's edges by a
    /// call; the estimate only needs to tell microseconds from milliseconds.
    pub(crate) fn record(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        // Read first: most calls are not the shortest, and a read shares the cache line.
        if micros < self.shortest.load(Relaxed) {
            self.shortest.fetch_min(micros, Relaxed);
        }
        if self.calls.fetch_add(1, Relaxed) % CALLS_PER_ESTIMATE == CALLS_PER_ESTIMATE - 1 {
            let shortest = self.shortest.swap(u64::MAX, Relaxed);
            self.estimate.store(shortest, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record_all(lanes: &Lanes, micros: &[u64]) {
        for &m in micros {
            lanes.record(Duration::from_micros(m));
        }
    }

    #[test]
    fn a_fast_plugin_preempted_now_and_then_is_not_slow() {
        let lanes = Lanes::new(2);
        record_all(&lanes, &[5, 6, 4000, 5, 7, 3000, 5, 6]);
        assert!(!lanes.slow());
    }

    #[test]
    fn a_plugin_becomes_slow_after_a_window_of_slow_calls_and_fast_again_after_one_fast_window() {
        let lanes = Lanes::new(2);
        record_all(&lanes, &[25_000; 7]);
        assert!(!lanes.slow(), "judged before a whole window");
        lanes.record(Duration::from_millis(25));
        assert!(lanes.slow());
        record_all(&lanes, &[10; 8]);
        assert!(!lanes.slow());
    }

    #[tokio::test]
    async fn a_slow_plugin_holds_all_lanes_but_one_worker_and_only_when_shared() {
        let lanes = Lanes::new(3);
        record_all(&lanes, &[1000; 8]);
        assert!(
            lanes.enter(false).await.is_none(),
            "a lone tenant waits for nothing"
        );
        let first = lanes.enter(true).await.expect("a lane");
        let second = lanes.enter(true).await.expect("a lane");
        let third = tokio::time::timeout(Duration::from_millis(50), lanes.enter(true)).await;
        assert!(third.is_err(), "a third call of 3 workers got a lane");
        drop(first);
        assert!(lanes.enter(true).await.is_some());
        drop(second);
        // A fast plugin takes no lane, however many run.
        let fast = Lanes::new(2);
        record_all(&fast, &[5; 8]);
        assert!(fast.enter(true).await.is_none());
    }
}
