//! The epoch ticker behind plugin CPU deadlines: a thread that advances the engine's epoch
//! every [`EPOCH_TICK`] while some deadline armed in a store can still expire, and sleeps
//! otherwise.
//!
//! Why it sleeps: a tick is a thread wake-up. Under load on a native (`builtin:`) policy, or on
//! an idle proxy, nothing can overrun, and the ticker's 1000 wake-ups a second were about
//! 2.5% of the process's CPU. A deadline armed while it sleeps wakes it at once.
//!
//! Why no deadline is missed: the engine's epoch only moves here, first in the engine, then
//! in [`Ticker::epoch`], so the count read when arming is at most one behind the engine's.
//! A store's deadline is set first (the engine's epoch then, plus `ticks`), then armed:
//! arming records `count + ticks + 1` in [`Ticker::latest_deadline`], at or past the epoch
//! at which the store traps, however many ticks came between the two. (Armed first, two
//! ticks in between put the store's deadline past the record, and the ticker slept short
//! of it: a looping plugin was never stopped.) The ticker sleeps only while its count has reached every
//! recorded deadline, and it checks that after saying it sleeps: an arming in between either
//! is seen by that check or sees it asleep and wakes it (both sides use sequentially
//! consistent operations on two variables).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::Thread;
use std::time::Duration;
use wasmtime::Engine;

/// Period of the epoch ticker; hook deadlines are counted in these ticks.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(1);

/// How long a sleeping ticker waits before looking at its stop flag again.
const IDLE_WAKE: Duration = Duration::from_secs(1);

#[derive(Default)]
pub(crate) struct Ticker {
    /// Ticks made (the engine's epoch, or one less while a tick is being made).
    epoch: AtomicU64,
    /// The furthest epoch any armed deadline expires at.
    latest_deadline: AtomicU64,
    /// False while the ticker sleeps: the next arming must wake it.
    awake: AtomicBool,
    thread: parking_lot::Mutex<Option<Thread>>,
    stop: AtomicBool,
}

impl Ticker {
    /// Ticks that make up `timeout`, plus one because the next tick may come right after
    /// the deadline is set.
    pub(crate) fn ticks(timeout: Duration) -> u64 {
        let ticks = timeout.as_micros().div_ceil(EPOCH_TICK.as_micros());
        u64::try_from(ticks).unwrap_or(u64::MAX / 2) + 1
    }

    /// Records a deadline `ticks` from now, just set in a store, and wakes the ticker if it
    /// sleeps.
    pub(crate) fn arm(&self, ticks: u64) {
        let deadline = self
            .epoch
            .load(SeqCst)
            .saturating_add(ticks)
            .saturating_add(1);
        // Read first: calls armed in the same tick (nearly all of them under load) find the
        // record already there, and a read leaves the line shared between the workers' cores
        // where a `fetch_max` always writes it. A record already at or past this deadline
        // was written by an arming that then checked whether the ticker slept.
        if self.latest_deadline.load(SeqCst) < deadline {
            self.latest_deadline.fetch_max(deadline, SeqCst);
        }
        if !self.awake.load(SeqCst) {
            if let Some(thread) = self.thread.lock().as_ref() {
                thread.unpark();
            }
        }
    }

    /// Starts the ticker thread in this process (again after a fork: threads do not survive one).
    pub(crate) fn spawn(self: &Arc<Self>, engine: Engine) -> std::io::Result<()> {
        let ticker = self.clone();
        let handle = std::thread::Builder::new()
            .name("cachet-epoch".into())
            .spawn(move || ticker.run(&engine))?;
        *self.thread.lock() = Some(handle.thread().clone());
        Ok(())
    }

    pub(crate) fn stop(&self) {
        self.stop.store(true, SeqCst);
        if let Some(thread) = self.thread.lock().as_ref() {
            thread.unpark();
        }
    }

    fn run(&self, engine: &Engine) {
        self.awake.store(true, SeqCst);
        while !self.stop.load(SeqCst) {
            if self.epoch.load(SeqCst) >= self.latest_deadline.load(SeqCst) {
                self.awake.store(false, SeqCst);
                if self.epoch.load(SeqCst) >= self.latest_deadline.load(SeqCst) {
                    std::thread::park_timeout(IDLE_WAKE);
                }
                self.awake.store(true, SeqCst);
                continue;
            }
            std::thread::sleep(EPOCH_TICK);
            engine.increment_epoch();
            self.epoch.fetch_add(1, SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// However many ticks come between setting a store's deadline and arming it, the
    /// ticker's record reaches the store's deadline. (The engine's epoch is counted here:
    /// wasmtime does not show it.)
    #[test]
    fn an_armed_deadline_is_at_or_past_the_stores_whatever_ticks_come_between() {
        let ticker = Ticker::default();
        let mut engine_epoch = 0;
        let ticks = 5;
        // Whole ticks between setting the store's deadline and arming it.
        let store_deadline = engine_epoch + ticks;
        for _ in 0..3 {
            engine_epoch += 1;
            ticker.epoch.fetch_add(1, SeqCst);
        }
        ticker.arm(ticks);
        assert!(ticker.latest_deadline.load(SeqCst) >= store_deadline);
        // Armed mid-tick: the engine has moved, the ticker's count not yet.
        engine_epoch += 1;
        let store_deadline = engine_epoch + ticks;
        ticker.arm(ticks);
        assert!(ticker.latest_deadline.load(SeqCst) >= store_deadline);
    }

    #[test]
    fn it_ticks_only_while_a_deadline_is_pending() {
        let engine = Engine::default();
        let ticker = Arc::new(Ticker::default());
        ticker.spawn(engine).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(ticker.epoch.load(SeqCst), 0, "ticked with nothing armed");
        ticker.arm(5);
        let started = std::time::Instant::now();
        while ticker.epoch.load(SeqCst) < 6 {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "never reached the deadline"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(30));
        let stopped_at = ticker.epoch.load(SeqCst);
        assert!(
            stopped_at <= 7,
            "kept ticking past the deadline: {stopped_at}"
        );
        ticker.stop();
    }
}
