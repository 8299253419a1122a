//! Hot-reload latency: time from a plugin file being replaced (atomic rename)
//! to the new policy answering, over ≥ 50 swaps under continuous load, and
//! the requests lost meanwhile.
//!
//! `cargo bench -p cachet --bench reload_latency` (release build; builds the
//! example plugins; loopback only; bounded in count and time).

#[path = "../../tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::client::try_send;
use support::origin::{Origin, Reply};
use support::plugin;
use support::proxy::{Proxy, TenantSpec};

const SWAPS: usize = 60;
const LOAD_THREADS: usize = 4;

fn main() {
    let origin = Origin::start(|_| Reply::ok("body"));
    let dir = tempfile::tempdir().expect("tempdir");
    let live = dir.path().join("policy.wasm");
    let install = |name: &str| {
        let tmp = live.with_extension("wasm.tmp");
        std::fs::copy(plugin(name), &tmp).expect("copy");
        std::fs::rename(&tmp, &live).expect("rename");
    };
    install("standard");
    let proxy = Proxy::start(
        "max_bytes = \"64MiB\"",
        &[TenantSpec::new("site", origin.addr, &live).limits("")],
    );

    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load: Vec<_> = (0..LOAD_THREADS)
        .map(|i| {
            let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
            let url = proxy.url(&format!("/load/{i}.css"));
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(300);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let ok = matches!(try_send("GET", &url, &[]), Ok(r) if r.status == 200);
                    sent.fetch_add(1, Ordering::Relaxed);
                    if !ok {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();

    let mut latencies = Vec::with_capacity(SWAPS);
    for swap in 0..SWAPS {
        // static-assets stores a static path the origin gave no freshness
        // for; standard does not: a fresh probe URL tells them apart.
        let (next, stores) = if swap % 2 == 0 {
            ("static-assets", true)
        } else {
            ("standard", false)
        };
        let started = Instant::now();
        install(next);
        let mut probe = 0;
        loop {
            let url = proxy.url(&format!("/probe/{swap}/{probe}.css"));
            if let Ok(r) = try_send("GET", &url, &[]) {
                if r.cache_status().contains("stored") == stores {
                    break;
                }
            }
            probe += 1;
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "swap {swap} never took effect"
            );
        }
        latencies.push(started.elapsed());
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        let _ = t.join();
    }

    latencies.sort();
    let pct = |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)];
    println!("swaps: {SWAPS} (alternating standard <-> static-assets, atomic rename)");
    println!(
        "write -> new policy answering: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        pct(50).as_secs_f64() * 1e3,
        pct(99).as_secs_f64() * 1e3,
        latencies[latencies.len() - 1].as_secs_f64() * 1e3
    );
    println!(
        "requests under load during the swaps: {} sent, {} failed",
        sent.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
}
