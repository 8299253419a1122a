//! Plugin lanes: when tenants share the proxy, the `on-request` calls of heavy plugins (all
//! tenants' together) run on at most all worker threads but one, so requests whose plugin is
//! light, or native, always find a worker.
//!
//! Why: hook calls run on the worker threads, and a call under its deadline cannot be cut
//! short. A flood of one tenant's requests whose calls took 25 ms each kept both workers of a
//! 2-thread proxy busy, and another tenant's cache hits waited behind them: 69 ms median,
//! against ~0.4 ms with lanes. Waiting for a lane parks the request's task; it holds no worker.
//!
//! Heavy is judged by the CPU time of its calls (what a request's `on-request` takes: the
//! hook, `cache-key`, and the instance's start or reset): a plugin whose calls use
//! `[plugins] heavy_call` ([`HEAVY_CALL`] by default) of CPU or more on average over a window
//! of [`SAMPLES_PER_JUDGEMENT`] calls measured (one call in [`SAMPLE_ONE_IN`], at random), and
//! for [`HEAVY_HOLD`] after that. The judgement is the tenant's ([`Lanes::load_of`]): every
//! version of its plugin, and every version of its config, goes on from it (a reload that
//! started each one light let a heavy plugin take every worker until judged again).
//! CPU time, not wall time: under load the
//! scheduler preempts threads mid-call, and a 5 µs call preempted for milliseconds counted as a
//! slow one. An average, not the shortest call: a plugin mixing a few fast calls among slow
//! ones passed as fast. Not a share of the workers' time: held to fewer lanes, a heavy plugin's
//! share fell, it was judged light and took every worker again. Sampled: reading a thread's
//! CPU clock is a system call (~0.2 µs). A light plugin takes no lane: a permit per request,
//! and a wait whenever two calls meet, would cost every request for no one's benefit.
//!
//! Only when tenants share the proxy: a lone tenant would lose a worker for no one, and its
//! calls are not even measured.

use super::instance::PluginFault;
use parking_lot::Mutex;
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, SemaphorePermit};

/// A plugin whose `on-request` calls use this much CPU or more on average is heavy, unless
/// `[plugins] heavy_call` says otherwise.
pub(crate) const HEAVY_CALL: Duration = Duration::from_micros(100);

/// The most `[plugins] heavy_call` may be: a call that long already holds a worker for a
/// noticeable time.
pub(crate) const MAX_HEAVY_CALL: Duration = Duration::from_secs(1);

/// One call in this many has its CPU time measured.
const SAMPLE_ONE_IN: u32 = 4;

/// Measured calls whose average judges the plugin.
const SAMPLES_PER_JUDGEMENT: u32 = 8;

/// How long a plugin judged heavy stays so after its last heavy window.
pub(crate) const HEAVY_HOLD: Duration = Duration::from_secs(10);

/// How many of its tenant's `hook_timeout`s a heavy plugin's call waits for a lane. Each
/// call holding one ends within about that long, so this is a queue several calls deep
/// per lane; a request behind a longer flood gets its tenant's `on_plugin_error`.
const LANE_WAIT_HOOK_TIMEOUTS: u32 = 4;

/// The longest a heavy plugin's call waits for a lane, for a tenant with `hook_timeout`.
pub(crate) fn lane_wait(hook_timeout: Duration) -> Duration {
    hook_timeout.saturating_mul(LANE_WAIT_HOOK_TIMEOUTS)
}

/// The engine's lanes, which heavy plugins' calls share (all tenants together), and what
/// heavy means.
pub(crate) struct Lanes {
    /// The proxy's worker threads, which plugin calls run on: there are one fewer lanes.
    workers: AtomicUsize,
    /// CPU nanoseconds per call from which a plugin is heavy.
    heavy_call: AtomicU64,
    /// Made on first use, once the number of workers is known.
    semaphore: OnceLock<Semaphore>,
    /// Each tenant's load, by name, while some version of its plugin holds it.
    loads: Mutex<HashMap<String, Weak<Load>>>,
}

impl Lanes {
    pub(crate) fn new(workers: usize) -> Self {
        Self {
            workers: AtomicUsize::new(workers),
            heavy_call: AtomicU64::new(nanos(HEAVY_CALL)),
            semaphore: OnceLock::new(),
            loads: Mutex::default(),
        }
    }

    /// How heavy `tenant`'s plugin is: the same judgement for every version of its plugin
    /// and of its config that is alive at once. Forgotten once none is.
    pub(crate) fn load_of(&self, tenant: &str) -> Arc<Load> {
        let mut loads = self.loads.lock();
        if let Some(load) = loads.get(tenant).and_then(Weak::upgrade) {
            return load;
        }
        // Tenants that went away leave their entries behind: swept as new ones come.
        loads.retain(|_, load| load.strong_count() > 0);
        let load = Arc::new(Load::new(tenant));
        loads.insert(tenant.to_owned(), Arc::downgrade(&load));
        load
    }

    /// Takes effect if told before the first lane is asked for.
    pub(crate) fn set_workers(&self, workers: usize) {
        self.workers.store(workers, Relaxed);
    }

    /// Kept within 1 µs..=[`MAX_HEAVY_CALL`] (zero would make every call heavy).
    pub(crate) fn set_heavy_call(&self, heavy_call: Duration) {
        let heavy_call = heavy_call.clamp(Duration::from_micros(1), MAX_HEAVY_CALL);
        self.heavy_call.store(nanos(heavy_call), Relaxed);
    }

    fn heavy_call(&self) -> Duration {
        Duration::from_nanos(self.heavy_call.load(Relaxed))
    }

    /// All workers but one.
    fn semaphore(&self) -> &Semaphore {
        self.semaphore
            .get_or_init(|| Semaphore::new(self.workers.load(Relaxed).saturating_sub(1).max(1)))
    }

    /// Waits up to `wait` for a lane: a flood of heavy calls must not hold a request (of its
    /// tenant, or of another heavy one) for as long as the queue before it takes.
    async fn take(&self, wait: Duration) -> Result<SemaphorePermit<'_>, PluginFault> {
        match tokio::time::timeout(wait, self.semaphore().acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed: `acquire` only fails on a closed one.
            Ok(Err(_)) | Err(_) => Err(PluginFault::NoLane),
        }
    }
}

/// How heavy one tenant's plugin is: kept across its versions (a new file must not start
/// light and take every worker for its first calls).
pub(crate) struct Load {
    tenant: String,
    /// CPU nanoseconds of the calls measured in the current window.
    measured: AtomicU64,
    samples: AtomicU32,
    /// Until when the plugin counts as heavy, in nanoseconds since [`base`] (0: not yet).
    heavy_until: AtomicU64,
}

/// The instant `heavy_until` is counted from.
fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

fn now() -> u64 {
    nanos(base().elapsed())
}

impl Load {
    pub(crate) fn new(tenant: &str) -> Self {
        Self {
            tenant: tenant.to_owned(),
            measured: AtomicU64::new(0),
            samples: AtomicU32::new(0),
            heavy_until: AtomicU64::new(0),
        }
    }

    pub(crate) fn heavy(&self) -> bool {
        now() < self.heavy_until.load(Relaxed)
    }

    /// Counts one measured call's CPU time. The plugin is heavy as soon as the calls measured
    /// in a window of [`SAMPLES_PER_JUDGEMENT`] add up to their number of `heavy_call`s,
    /// and stays so for [`HEAVY_HOLD`] after the last such window: a few fast calls do not
    /// make it light again. Concurrent calls may blur a window's edge by a call. Returns
    /// whether this call is the one that judged the plugin heavy (and warned).
    pub(crate) fn record(&self, cpu: Duration, heavy_call: Duration) -> bool {
        let mut newly_heavy = false;
        let measured = self.measured.fetch_add(nanos(cpu), Relaxed) + nanos(cpu);
        if measured >= nanos(heavy_call).saturating_mul(u64::from(SAMPLES_PER_JUDGEMENT)) {
            // One swap both extends the hold and tells whether it had run out, so of two
            // calls judging the plugin heavy at once only one warns.
            let judged_at = now();
            let held_until = self
                .heavy_until
                .swap(judged_at.saturating_add(nanos(HEAVY_HOLD)), Relaxed);
            if held_until <= judged_at {
                newly_heavy = true;
                tracing::warn!(
                    tenant = self.tenant,
                    "the tenant's plugin is heavy (its calls use {heavy_call:?} of CPU or more \
                     each on average): its on-request calls share the lanes of heavy plugins \
                     for at least {HEAVY_HOLD:?}"
                );
            }
        }
        if self.samples.fetch_add(1, Relaxed) % SAMPLES_PER_JUDGEMENT == SAMPLES_PER_JUDGEMENT - 1 {
            self.measured.store(0, Relaxed);
        }
        newly_heavy
    }
}

/// The CPU time this thread has used: unlike wall time, it leaves out time preempted.
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write to; the clock is one Linux always has.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(now.tv_sec).unwrap_or(0),
        u32::try_from(now.tv_nsec).unwrap_or(0),
    )
}

/// Whether to measure this call: one in [`SAMPLE_ONE_IN`], at random (xorshift per thread),
/// so a plugin cannot line its slow calls up with the unmeasured ones.
fn sample() -> bool {
    thread_local! {
        static STATE: Cell<u32> = const { Cell::new(0) };
    }
    STATE.with(|state| {
        let mut x = state.get();
        if x == 0 {
            // Seeded from the clock and the thread's stack: any nonzero start will do.
            let seed = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.subsec_nanos());
            x = (seed ^ (state as *const _ as usize as u32)) | 1;
        }
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        state.set(x);
        x % SAMPLE_ONE_IN == 0
    })
}

/// What a request holds while its policy's `on-request` runs, when tenants share the proxy:
/// a lane when the plugin is heavy, and now and then the measure of the call's CPU time,
/// counted to the plugin when it drops. Hold it across the synchronous call only: the CPU
/// clock read is the thread's.
#[derive(Default)]
pub struct PluginLane<'a> {
    measured: Option<Measure<'a>>,
    _permit: Option<SemaphorePermit<'a>>,
}

/// A call being measured: counted to `load` when it ends.
struct Measure<'a> {
    load: &'a Load,
    heavy_call: Duration,
    started: Duration,
}

impl<'a> PluginLane<'a> {
    /// Waits up to `wait` for one of `lanes` when `load` is heavy, a
    /// [`PluginFault::NoLane`] when none came; measures the call now and then.
    pub(crate) async fn enter(
        load: &'a Load,
        lanes: &'a Lanes,
        wait: Duration,
    ) -> Result<PluginLane<'a>, PluginFault> {
        let permit = match load.heavy() {
            true => Some(lanes.take(wait).await?),
            false => None,
        };
        Ok(PluginLane {
            measured: sample().then(|| Measure {
                load,
                heavy_call: lanes.heavy_call(),
                started: thread_cpu_time(),
            }),
            _permit: permit,
        })
    }
}

impl Drop for PluginLane<'_> {
    fn drop(&mut self) {
        if let Some(m) = &self.measured {
            let cpu = thread_cpu_time().saturating_sub(m.started);
            m.load.record(cpu, m.heavy_call);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record_all(load: &Load, micros: &[u64]) {
        for &m in micros {
            load.record(Duration::from_micros(m), HEAVY_CALL);
        }
    }

    #[test]
    fn a_plugin_is_heavy_once_a_window_of_its_calls_averages_the_limit_and_stays_so() {
        let load = Load::new("t");
        record_all(&load, &[5; 80]);
        assert!(!load.heavy());
        // Seven fast calls for each slow one: heavy all the same, as soon as it shows.
        record_all(&load, &[2, 2, 2, 25_000]);
        assert!(load.heavy());
        // A batch of fast calls does not make it light again...
        record_all(&load, &[5; 80]);
        assert!(load.heavy());
        // ...the hold running out does.
        load.heavy_until.store(now(), Relaxed);
        assert!(!load.heavy());
        record_all(&load, &[5; 80]);
        assert!(!load.heavy());
    }

    #[test]
    fn calls_judging_a_plugin_heavy_at_once_warn_once() {
        for _ in 0..50 {
            let load = Load::new("t");
            let start = std::sync::Barrier::new(8);
            let warned: usize = std::thread::scope(|s| {
                let calls: Vec<_> = (0..8)
                    .map(|_| {
                        s.spawn(|| {
                            start.wait();
                            load.record(Duration::from_millis(25), HEAVY_CALL)
                        })
                    })
                    .collect();
                calls
                    .into_iter()
                    .map(|c| usize::from(c.join().unwrap()))
                    .sum()
            });
            assert_eq!(warned, 1);
            assert!(load.heavy());
        }
    }

    #[test]
    fn heavy_is_what_the_config_says() {
        let load = Load::new("t");
        let two_ms = Duration::from_millis(2);
        for _ in 0..80 {
            load.record(Duration::from_micros(900), two_ms);
        }
        assert!(
            !load.heavy(),
            "900 µs calls are light when heavy_call is 2 ms"
        );
        for _ in 0..8 {
            load.record(Duration::from_micros(2_100), two_ms);
        }
        assert!(load.heavy());
    }

    #[test]
    fn a_tenant_keeps_one_judgement_while_any_version_of_it_lives() {
        let lanes = Lanes::new(2);
        let first = lanes.load_of("a");
        first.heavy_until.store(u64::MAX, Relaxed);
        let second = lanes.load_of("a");
        assert!(second.heavy(), "a new version started light");
        assert!(!lanes.load_of("b").heavy());
        drop((first, second));
        assert!(
            !lanes.load_of("a").heavy(),
            "a tenant gone and back kept its judgement"
        );
        assert_eq!(
            lanes.loads.lock().len(),
            1,
            "the entries of gone tenants stay"
        );
    }

    #[test]
    fn heavy_call_is_kept_above_zero() {
        let lanes = Lanes::new(2);
        lanes.set_heavy_call(Duration::ZERO);
        assert_eq!(lanes.heavy_call(), Duration::from_micros(1));
        lanes.set_heavy_call(Duration::from_secs(5));
        assert_eq!(lanes.heavy_call(), MAX_HEAVY_CALL);
    }

    #[test]
    fn cpu_time_leaves_out_time_asleep_and_counts_time_spinning() {
        let started = thread_cpu_time();
        std::thread::sleep(Duration::from_millis(50));
        assert!(thread_cpu_time().saturating_sub(started) < Duration::from_millis(20));
        // Spun until the clock shows it (on a loaded machine, 30 ms of wall time may hold
        // less CPU time), within a bound.
        let spin = std::time::Instant::now();
        while thread_cpu_time().saturating_sub(started) < Duration::from_millis(30) {
            assert!(
                spin.elapsed() < Duration::from_secs(10),
                "the CPU clock stood still"
            );
            std::hint::spin_loop();
        }
    }

    #[test]
    fn about_one_call_in_four_is_measured() {
        let measured = (0..4000).filter(|_| sample()).count();
        assert!((700..1300).contains(&measured), "{measured} of 4000");
    }

    #[tokio::test]
    async fn heavy_calls_hold_all_workers_but_one_and_light_ones_none() {
        let lanes = Lanes::new(3);
        let heavy = Load::new("heavy");
        heavy.heavy_until.store(u64::MAX, Relaxed);
        let wait = Duration::from_secs(5);
        let first = PluginLane::enter(&heavy, &lanes, wait).await.unwrap();
        let second = PluginLane::enter(&heavy, &lanes, wait).await.unwrap();
        let third = tokio::time::timeout(
            Duration::from_millis(50),
            PluginLane::enter(&heavy, &lanes, wait),
        )
        .await;
        assert!(third.is_err(), "a third heavy call of 3 workers got a lane");
        drop(first);
        let _third = PluginLane::enter(&heavy, &lanes, wait).await.unwrap();
        // A light plugin's calls wait for nothing, whatever the heavy ones hold.
        let light = Load::new("light");
        let lane = tokio::time::timeout(
            Duration::from_millis(50),
            PluginLane::enter(&light, &lanes, wait),
        )
        .await;
        assert!(matches!(lane, Ok(Ok(_))));
        drop(second);
    }

    #[tokio::test]
    async fn a_heavy_call_that_finds_no_lane_within_its_wait_is_a_fault() {
        let lanes = Lanes::new(2);
        let heavy = Load::new("heavy");
        heavy.heavy_until.store(u64::MAX, Relaxed);
        let _held = PluginLane::enter(&heavy, &lanes, Duration::from_secs(5))
            .await
            .unwrap();
        let queued = PluginLane::enter(&heavy, &lanes, Duration::from_millis(50)).await;
        assert!(matches!(queued, Err(PluginFault::NoLane)));
    }

    #[test]
    fn the_wait_for_a_lane_is_a_few_hook_timeouts() {
        assert_eq!(
            lane_wait(Duration::from_millis(10)),
            Duration::from_millis(40)
        );
    }
}
