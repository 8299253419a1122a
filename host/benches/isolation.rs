//! Multi-tenant isolation under load: cache-hit throughput of a well-behaved
//! tenant alone, then while a second tenant's plugin loops on every request.
//!
//! `cargo bench -p cachet --bench isolation` (release; needs `wrk`, e.g.
//! `apt-get install wrk`; loopback only; about 30 s).

#[path = "../../tests/support/mod.rs"]
mod support;

use std::process::Command;
use support::client::send;
use support::origin::{Origin, Reply};
use support::proxy::{Proxy, TenantSpec};
use support::{fixture, plugin};

const SECONDS: u32 = 10;

/// Runs wrk against `url` with a Host header; returns requests/s.
fn wrk(url: &str, host: &str, connections: u32, seconds: u32) -> f64 {
    let out = Command::new("wrk")
        .args(["-t1", &format!("-c{connections}"), &format!("-d{seconds}s")])
        .args(["-H", &format!("Host: {host}"), url])
        .output()
        .expect("wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk output:\n{text}"))
}

fn main() {
    let good_origin =
        Origin::start(|_| Reply::ok(vec![b'x'; 1024]).header("Cache-Control", "max-age=3600"));
    let bad_origin = Origin::start(|_| Reply::ok("bad"));
    let proxy = Proxy::start_with_server(
        "access_log = false",
        "max_bytes = \"64MiB\"",
        &[
            TenantSpec::new("good", good_origin.addr, &plugin("standard"))
                .hosts(&["good.test"])
                .limits("instance_reuse = 1000000"),
            TenantSpec::new("bad", bad_origin.addr, &fixture("loop-forever"))
                .hosts(&["bad.test"])
                .extra("on_plugin_error = \"error\"")
                .limits("hook_timeout_ms = 10"),
            // The same traffic to a well-behaved tenant: separates what the
            // loop costs from what the second tenant's request volume costs.
            TenantSpec::new("calm", bad_origin.addr, &fixture("loop-forever"))
                .hosts(&["calm.test"])
                .limits("instance_reuse = 1000000"),
        ],
    );
    let good_url = proxy.url("/page");
    send("GET", &good_url, &[("Host", "good.test")]);
    assert!(send("GET", &good_url, &[("Host", "good.test")])
        .cache_status()
        .contains("hit"));

    let alone = wrk(&good_url, "good.test", 32, SECONDS);

    // `loop-forever` behaves like `standard` off its /loop/ paths.
    let calm_url = proxy.url("/calm");
    send("GET", &calm_url, &[("Host", "calm.test")]);
    let calm = std::thread::spawn(move || wrk(&calm_url, "calm.test", 16, SECONDS + 2));
    std::thread::sleep(std::time::Duration::from_secs(1));
    let beside_calm = wrk(&good_url, "good.test", 32, SECONDS);
    let calm_rate = calm.join().expect("calm wrk");

    let bad_url = proxy.url("/loop/request");
    let attacker = std::thread::spawn(move || wrk(&bad_url, "bad.test", 16, SECONDS + 2));
    std::thread::sleep(std::time::Duration::from_secs(1));
    let shared = wrk(&good_url, "good.test", 32, SECONDS);
    let bad_rate = attacker.join().expect("attacker wrk");

    println!("good tenant hits alone:                      {alone:>10.0} req/s");
    println!(
        "good tenant hits, other tenant well-behaved: {beside_calm:>10.0} req/s (other: {calm_rate:.0} req/s)"
    );
    println!(
        "good tenant hits, other tenant looping:      {shared:>10.0} req/s (other: {bad_rate:.0} req/s)"
    );
    println!(
        "ratio looping / alone:                       {:>10.2}",
        shared / alone
    );
    println!(
        "ratio looping / well-behaved neighbour:      {:>10.2}",
        shared / beside_calm
    );
    let faults = send("GET", &proxy.admin_url("/metrics"), &[]).text();
    for line in faults
        .lines()
        .filter(|l| l.starts_with("cachet_plugin_faults_total"))
    {
        println!("{line}");
    }
}
