//! A circuit breaker for plugins that keep hitting their CPU deadline.
//!
//! A looping plugin burns a worker thread for the whole deadline on every
//! request. On a small machine that starves every other tenant. After a few
//! consecutive timeouts the tenant's plugin is skipped for a cool-down (its
//! requests get the tenant's fault behaviour at once); the next call after
//! the cool-down is a trial that closes or re-opens the breaker.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Consecutive timeouts that open the breaker.
const TRIP_AFTER: u32 = 3;
/// How long an open breaker skips the plugin.
const COOL_DOWN: Duration = Duration::from_secs(2);

fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// The calls whose timeouts are counted apart. A plugin that overruns in `on-response` on
/// every request while its `on-request` succeeds must still trip the breaker: one count for
/// all hooks was reset by each success and never reached [`TRIP_AFTER`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Hook {
    /// Making an instance: the component's start-up and `configure`.
    Start,
    Request,
    Vary,
    Response,
    Deliver,
    Error,
}

const HOOKS: usize = 6;

#[derive(Default)]
pub(crate) struct Breaker {
    consecutive_timeouts: [AtomicU32; HOOKS],
    /// Milliseconds (process clock) until which the plugin is skipped.
    open_until_ms: AtomicU64,
}

impl Breaker {
    /// Whether calls are currently being skipped (every hook: the plugin is quarantined).
    pub(crate) fn is_open(&self) -> bool {
        now_ms() < self.open_until_ms.load(Ordering::Relaxed)
    }

    pub(crate) fn record_success(&self, hook: Hook) {
        let count = &self.consecutive_timeouts[hook as usize];
        if count.load(Ordering::Relaxed) != 0 {
            count.store(0, Ordering::Relaxed);
        }
    }

    pub(crate) fn record_timeout(&self, hook: Hook) {
        let counter = &self.consecutive_timeouts[hook as usize];
        let count = counter.fetch_add(1, Ordering::Relaxed) + 1;
        if count >= TRIP_AFTER {
            let until = now_ms() + COOL_DOWN.as_millis() as u64;
            self.open_until_ms.store(until, Ordering::Relaxed);
            // One trial call after the cool-down decides again.
            counter.store(TRIP_AFTER - 1, Ordering::Relaxed);
            tracing::warn!(
                cool_down_ms = COOL_DOWN.as_millis() as u64,
                "plugin keeps exceeding its deadline; skipping it for a while"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_timeouts_and_success_resets() {
        let b = Breaker::default();
        b.record_timeout(Hook::Request);
        b.record_timeout(Hook::Request);
        assert!(!b.is_open());
        b.record_success(Hook::Request);
        b.record_timeout(Hook::Request);
        b.record_timeout(Hook::Request);
        assert!(!b.is_open());
        b.record_timeout(Hook::Request);
        assert!(b.is_open());
    }

    #[test]
    fn a_hook_that_always_overruns_trips_it_between_successes_of_another() {
        let b = Breaker::default();
        for _ in 0..3 {
            assert!(!b.is_open());
            b.record_success(Hook::Request);
            b.record_timeout(Hook::Response);
        }
        assert!(b.is_open());
    }
}
