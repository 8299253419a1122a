//! Per-request cost of the plugin calls, per instance model.
//!
//! `cargo bench -p cachet --bench plugin_calls` (after `bash plugins/build.sh`).
//! Prints the mean and p50/p99 of `decide_request` (on-request + cache-key)
//! and `decide_response` for a fresh state per request (`instance_reuse = 1`:
//! a reset instance, or a new one for plugins the host cannot reset) and for
//! reused instances, measured with the real example plugins.
//!
//! Environment: `PLUGIN_CALLS_THREADS=N` calls from N threads at once on one
//! pool (the proxy's workers share it; figures are per thread);
//! `PLUGIN_CALLS_ITERATIONS=N` (default 20000); `PLUGIN_CALLS_ONLY=standard`
//! measures one plugin and `PLUGIN_CALLS_MODEL=fresh|reused` one instance
//! model, `PLUGIN_CALLS_POOL_INSTANCES=2` a smaller instance pool (short runs
//! under `valgrind --tool=callgrind`), `PLUGIN_CALLS_DIR=DIR` the plugins in DIR
//! instead of plugins/ (e.g. wasm32-wasip2 builds, to compare with the default
//! components that import no WASI). `PLUGIN_CALLS_EVICT_KIB=N` writes N KiB of
//! other memory before each timed call (not timed), as a proxy's own work
//! between two plugin calls does: the figures then say what a call costs when
//! its code and data are no longer in the caches.

use cachet::policy::{InstancePool, LoadedPlugin, PluginLimits, PolicyEngine, TenantContext};
use pingora::http::{RequestHeader, ResponseHeader};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn request() -> RequestHeader {
    let mut req = RequestHeader::build("GET", b"/static/app.css?utm_source=x&b=2&a=1", None)
        .expect("request");
    for (name, value) in [
        ("host", "www.example.test"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) bench"),
        ("accept", "text/css,*/*;q=0.1"),
        ("accept-encoding", "gzip, deflate, br"),
        ("accept-language", "en-US,en;q=0.5"),
        ("cookie", "theme=dark; id=12345"),
        ("referer", "https://www.example.test/"),
    ] {
        req.insert_header(name, value).expect("header");
    }
    req
}

fn response() -> ResponseHeader {
    let mut resp = ResponseHeader::build(200, None).expect("response");
    resp.insert_header("content-type", "text/css")
        .expect("header");
    resp.insert_header("content-length", "1024")
        .expect("header");
    resp
}

struct Stats {
    mean: Duration,
    p50: Duration,
    p99: Duration,
}

/// Memory written between calls, one byte per cache line, to push the call's
/// code and data out of the caches (`PLUGIN_CALLS_EVICT_KIB`).
struct Evictor(Vec<u8>);

impl Evictor {
    fn from_env() -> Self {
        Self(vec![0; env_number("PLUGIN_CALLS_EVICT_KIB", 0) << 10])
    }

    fn sweep(&mut self) {
        for line in self.0.chunks_mut(64) {
            line[0] = line[0].wrapping_add(1);
        }
        std::hint::black_box(&self.0);
    }
}

fn measure_one_thread(iterations: usize, f: &(impl Fn() + Sync)) -> Stats {
    for _ in 0..iterations.min(1000) {
        f();
    }
    let mut evictor = Evictor::from_env();
    let mut samples = Vec::with_capacity(iterations);
    let mut total = Duration::ZERO;
    for _ in 0..iterations {
        evictor.sweep();
        let t = Instant::now();
        f();
        let took = t.elapsed();
        total += took;
        samples.push(took);
    }
    samples.sort();
    Stats {
        mean: total / iterations as u32,
        p50: samples[iterations / 2],
        p99: samples[iterations * 99 / 100],
    }
}

/// Runs `f` on `threads` threads at once; the figures of the slowest thread.
fn measure(f: impl Fn() + Sync) -> Stats {
    let iterations = env_number("PLUGIN_CALLS_ITERATIONS", 20_000).max(1);
    let threads = env_number("PLUGIN_CALLS_THREADS", 1).max(1);
    std::thread::scope(|scope| {
        let runs: Vec<_> = (0..threads)
            .map(|_| scope.spawn(|| measure_one_thread(iterations, &f)))
            .collect();
        runs.into_iter()
            .map(|r| r.join().expect("bench thread"))
            .max_by_key(|s| s.mean)
            .expect("one thread at least")
    })
}

fn main() {
    let plugins = match std::env::var_os("PLUGIN_CALLS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins"),
    };
    // Valgrind cannot reserve the address space of a 64-instance pool.
    let pool_instances = env_number("PLUGIN_CALLS_POOL_INSTANCES", 64) as u32;
    let engine = PolicyEngine::new(pool_instances).expect("engine");
    let req = request();
    let resp = response();
    println!(
        "{:<16} {:<10} {:<16} {:>9} {:>9} {:>9}",
        "plugin", "instances", "call", "mean", "p50", "p99"
    );
    let only = std::env::var("PLUGIN_CALLS_ONLY").unwrap_or_default();
    let model_wanted = std::env::var("PLUGIN_CALLS_MODEL").unwrap_or_default();
    for name in ["standard", "static-assets", "api-gateway"] {
        if !only.is_empty() && only != name {
            continue;
        }
        let path = plugins.join(format!("{name}.wasm"));
        let plugin =
            Arc::new(LoadedPlugin::load(&engine, &path).expect("run plugins/build.sh first"));
        for (model, reuse) in [("fresh", 1), ("reused", u32::MAX)] {
            if !model_wanted.is_empty() && model_wanted != model {
                continue;
            }
            let limits = PluginLimits {
                instance_reuse: reuse,
                // This measures calls, not the deadline: a stall of the machine
                // past the default 10 ms would stop the whole run.
                hook_timeout: Duration::from_secs(1),
                ..PluginLimits::default()
            };
            let pool = InstancePool::new(
                engine.clone(),
                plugin.clone(),
                Arc::new(TenantContext::default()),
                limits,
            );
            let rows = [
                (
                    "request+key",
                    measure(|| {
                        pool.decide_request(&req).expect("decide_request");
                    }),
                ),
                (
                    "response",
                    measure(|| {
                        pool.decide_response(&req, &resp).expect("decide_response");
                    }),
                ),
            ];
            for (call, s) in rows {
                println!(
                    "{name:<16} {model:<10} {call:<16} {:>7.2}µs {:>7.2}µs {:>7.2}µs",
                    s.mean.as_secs_f64() * 1e6,
                    s.p50.as_secs_f64() * 1e6,
                    s.p99.as_secs_f64() * 1e6
                );
            }
        }
    }
}
