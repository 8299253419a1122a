//! The one wasmtime `Engine` of the process and the linker every plugin is
//! instantiated against.

use super::bindings::{v1, v2, v3};
use super::host_api::HostState;
use super::lanes::Lanes;
use super::ticker::Ticker;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// Guest memory kept mapped across slot reuse (reset with memset; beyond it,
/// pages are given back with madvise, which interrupts every core to flush
/// TLBs). An SDK policy starts with 128 KiB and grows nothing (its heap is an
/// arena in that memory: guest-sdk/src/allocator.rs); the margin is for
/// policies built otherwise. Measured with 1 MiB-stack guests: 1 MiB → 0.20×,
/// 4 MiB → 0.35× origin-direct hit throughput with a fresh instance per
/// request; 8 MiB no better.
const KEEP_RESIDENT_BYTES: usize = 4 << 20;

/// Core instances one plugin instance may create.
const CORE_INSTANCES_PER_PLUGIN: u32 = 64;

/// Linear memories one plugin instance may hold (every plugin built here has one; the pool
/// has room for two per instance on average). Without a cap, a component of many core
/// modules each with its own memory takes as many pool slots, and as many times its
/// tenant's memory limit, as it has modules.
const MEMORIES_PER_PLUGIN: u32 = 2;

/// Tables one plugin instance may hold (componentize-py's 38 core modules hold two).
const TABLES_PER_PLUGIN: u32 = 8;

/// Upper bound of guest memory any tenant may configure; the pool reserves
/// slots of this size.
pub const MAX_GUEST_MEMORY: usize = 256 << 20;

/// Shared compilation and instantiation machinery. Cheap to clone.
#[derive(Clone)]
pub struct PolicyEngine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    engine: Engine,
    /// Live plugin instances the pool has room for (fixed for the process's life).
    max_instances: u32,
    linker: Linker<HostState>,
    ticker: Arc<Ticker>,
    /// The process that runs the ticker thread: after a daemon fork the
    /// child has no threads and must start its own.
    ticker_pid: AtomicU32,
    /// The lanes heavy plugins' `on-request` calls share.
    lanes: Lanes,
}

impl Drop for EngineInner {
    fn drop(&mut self) {
        self.ticker.stop();
    }
}

impl PolicyEngine {
    /// Builds the engine with a pooling allocator sized for `max_instances`
    /// live plugin instances (all tenants together).
    pub fn new(max_instances: u32) -> anyhow::Result<Self> {
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(max_instances)
            // A Rust component is a handful of core modules (program, WASI
            // adapter, shims); a componentize-py one instantiates dozens
            // (libc, libpython, its runtime, a stub per WASI interface: 38
            // for plugins/static-assets-py). Only a count: nothing is
            // reserved per core instance.
            .total_core_instances(max_instances.saturating_mul(CORE_INSTANCES_PER_PLUGIN))
            .max_core_instances_per_component(CORE_INSTANCES_PER_PLUGIN)
            .max_memories_per_component(MEMORIES_PER_PLUGIN)
            .max_tables_per_component(TABLES_PER_PLUGIN)
            .total_memories(max_instances.saturating_mul(2))
            .total_tables(max_instances.saturating_mul(4))
            .max_memory_size(MAX_GUEST_MEMORY)
            // A fresh instance per request recycles a pool slot per request.
            // Resetting the first pages with memset instead of madvise keeps
            // them mapped: no page faults on the next instance and no
            // TLB-shootdown IPIs across worker threads.
            .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
            .table_keep_resident(64 << 10)
            // Bounds what stays resident: at most this many idle slots keep
            // their pages (16 × 4 MiB); colder slots are decommitted.
            .max_unused_warm_slots(16);

        let mut config = Config::new();
        config
            .epoch_interruption(true)
            // Sync calls only: this keeps a component call at ~0.3 µs.
            .concurrency_support(false)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .memory_init_cow(true);
        // `CACHET_PERF_MAP=1`: name compiled plugin code in /tmp/perf-PID.map, where perf
        // (and tests/bench/instructions.sh, for callgrind) look for JIT code's names.
        if std::env::var_os("CACHET_PERF_MAP").is_some_and(|v| v == "1") {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).map_err(anyhow::Error::from)?;

        let mut linker = Linker::new(&engine);
        // Every contract version: a component imports one of them.
        v1::Policy::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .map_err(anyhow::Error::from)?;
        v2::Policy::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .map_err(anyhow::Error::from)?;
        v3::Policy::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .map_err(anyhow::Error::from)?;
        // The Rust standard library of a wasm32-wasip2 guest imports WASI
        // interfaces even when the policy never uses them. They are linked
        // against an empty context; the load-time allow-list decides which
        // of them a plugin may import at all.
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(anyhow::Error::from)?;
        deny_blocking_wasi(&mut linker)?;

        let this = Self {
            inner: Arc::new(EngineInner {
                engine,
                max_instances,
                linker,
                ticker: Arc::default(),
                ticker_pid: AtomicU32::new(0),
                lanes: Lanes::new(std::thread::available_parallelism().map_or(1, usize::from)),
            }),
        };
        this.ensure_epoch_ticker()?;
        Ok(this)
    }

    /// Starts the epoch ticker in this process unless it already runs here.
    /// Call again after a fork (daemon mode): hook deadlines depend on it.
    pub fn ensure_epoch_ticker(&self) -> anyhow::Result<()> {
        let pid = std::process::id();
        if self.inner.ticker_pid.swap(pid, Ordering::AcqRel) != pid {
            self.inner.ticker.spawn(self.inner.engine.clone())?;
        }
        Ok(())
    }

    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Tells the engine how many worker threads run plugin calls (the machine's cores until
    /// told): heavy plugins' calls are held to all of them but one (see `lanes`). Call before
    /// serving: the lanes are made on first use.
    pub fn set_worker_threads(&self, threads: usize) {
        self.inner.lanes.set_workers(threads);
    }

    /// How much CPU a plugin's `on-request` calls must use on average for the plugin to be
    /// heavy (`[plugins] heavy_call`; see `lanes`).
    pub fn set_heavy_call(&self, heavy_call: Duration) {
        self.inner.lanes.set_heavy_call(heavy_call);
    }

    pub(crate) fn lanes(&self) -> &Lanes {
        &self.inner.lanes
    }

    /// Live plugin instances the pool was sized for at start (all tenants together).
    pub fn max_instances(&self) -> u32 {
        self.inner.max_instances
    }

    pub(crate) fn linker(&self) -> &Linker<HostState> {
        &self.inner.linker
    }

    /// The ticker a store's deadline is armed with ([`Ticker::arm`]).
    pub(crate) fn ticker(&self) -> &Arc<Ticker> {
        &self.inner.ticker
    }
}

/// The WASI version wasmtime-wasi 48 implements; plugins importing any
/// 0.2.x up to it resolve to these definitions.
const WASI_VERSION: &str = "0.2.12";

/// wasmtime-wasi's synchronous stdio and poll implementations block on a
/// Tokio runtime, which panics inside Pingora's async workers: a plugin that
/// printed (a Rust panic message does) would take the whole proxy down.
/// Policies get no stdio and nothing to wait on, so these entry points trap
/// instead; without a stream handle, no other stream function is reachable.
/// The clock's subscriptions trap too: there is nothing to wait on them with.
fn deny_blocking_wasi(linker: &mut Linker<HostState>) -> anyhow::Result<()> {
    const DENIED: &[(&str, &[&str])] = &[
        ("wasi:cli/stdin", &["get-stdin"]),
        ("wasi:cli/stdout", &["get-stdout"]),
        ("wasi:cli/stderr", &["get-stderr"]),
        (
            "wasi:io/poll",
            &["poll", "[method]pollable.block", "[method]pollable.ready"],
        ),
        // Nothing to wait on, and each subscription is a host resource that would pile up
        // in a reused instance's table, outside its memory limit.
        (
            "wasi:clocks/monotonic-clock",
            &["subscribe-duration", "subscribe-instant"],
        ),
    ];
    linker.allow_shadowing(true);
    for (interface, functions) in DENIED {
        let mut instance = linker
            .instance(&format!("{interface}@{WASI_VERSION}"))
            .map_err(anyhow::Error::from)?;
        for function in *functions {
            let message = format!(
                "policy called {interface}#{function}: stdio and blocking waits are not \
                 available to policies (log through the host instead)"
            );
            instance
                .func_new(function, move |_, _, _, _| {
                    Err(wasmtime::format_err!("{message}"))
                })
                .map_err(anyhow::Error::from)?;
        }
    }
    linker.allow_shadowing(false);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::limits::MemoryLimiter;
    use wasmtime::component::{Component, Linker};
    use wasmtime::Store;

    /// A component of `modules` core modules, each with a memory of `pages` pages.
    fn memories(modules: usize, pages: u32) -> Vec<u8> {
        let instances: String = (0..modules)
            .map(|i| {
                format!("(core module $m{i} (memory {pages})) (core instance (instantiate $m{i}))")
            })
            .collect();
        wat::parse_str(format!("(component {instances})")).expect("valid component")
    }

    fn instantiate(engine: &PolicyEngine, wasm: &[u8], max_bytes: usize) -> wasmtime::Result<()> {
        let component = Component::new(engine.engine(), wasm)?;
        let limiter = MemoryLimiter {
            max_bytes,
            refused: false,
            grew: false,
            held: 0,
        };
        let mut store = Store::new(engine.engine(), limiter);
        store.limiter(|limiter| limiter);
        Linker::new(engine.engine()).instantiate(&mut store, &component)?;
        Ok(())
    }

    /// A plugin cannot multiply its pool slots and its memory limit by bringing a memory
    /// per core module: the tenant's limit holds for all its memories together, and a
    /// component with more memories than a plugin needs does not instantiate.
    #[test]
    fn a_plugins_memories_count_together_and_are_few() {
        let engine = PolicyEngine::new(8).unwrap();
        let page = 64 << 10;
        instantiate(&engine, &memories(2, 1), 2 * page).expect("two one-page memories fit");
        let over = instantiate(&engine, &memories(2, 1), page + page / 2);
        assert!(over.is_err(), "two pages over a 1.5-page limit");
        let many = instantiate(&engine, &memories(3, 1), 16 * page);
        assert!(many.is_err(), "three memories in one plugin");
    }
}
