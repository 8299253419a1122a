//! A fresh plugin instance per request (the default) stays cheap only while
//! instances do not grow their linear memory: each growth costs the host two
//! page-protection changes (and TLB flushes on every core) when the pool slot
//! is reused. SDK policies allocate from an arena inside their initial memory;
//! `cachet_plugin_memory_growths_total` counts the instances that grew anyway.

mod support;

use support::client::send;
use support::origin::{Origin, Reply};
use support::proxy::{Proxy, TenantSpec};
use support::{fixture, plugin};

fn growths(proxy: &Proxy, tenant: &str) -> u64 {
    let metrics = send("GET", &proxy.admin_url("/metrics"), &[]).text();
    let series = format!("cachet_plugin_memory_growths_total{{tenant=\"{tenant}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series}series in:\n{metrics}"))
}

#[test]
fn sdk_policies_serve_from_their_initial_memory_and_larger_needs_still_grow() {
    let origin = Origin::start(|_| Reply::ok("body").header("Cache-Control", "max-age=600"));
    let proxy = Proxy::start(
        "max_bytes = \"16MiB\"",
        &[
            TenantSpec::new("standard", origin.addr, &plugin("standard")).hosts(&["std.test"]),
            TenantSpec::new("hungry", origin.addr, &fixture("alloc-bomb")).hosts(&["hungry.test"]),
            TenantSpec::new("vcl", origin.addr, &plugin("vcl-port")).hosts(&["vcl.test"]),
        ],
    );

    // Misses and hits alike, each on a fresh instance of the example policy.
    for round in 0..2 {
        for i in 0..20 {
            let resp = send(
                "GET",
                &proxy.url(&format!("/page/{i}")),
                &[("Host", "std.test")],
            );
            assert_eq!(resp.status, 200, "round {round}, /page/{i}");
        }
    }
    assert_eq!(origin.hits_for("/page/0"), 1);
    assert_eq!(growths(&proxy, "standard"), 0, "{}", proxy.log());

    // A browser's head (6 KiB of analytics cookies) through the example that
    // reads, filters and keys on cookies: still inside the initial memory.
    let cookies: Vec<String> = (0..150)
        .map(|i| format!("_ga_tracker_{i:03}=GA1.2.{:020}", i * 7919))
        .chain(["lang=de".to_owned()])
        .collect();
    let cookie = cookies.join("; ");
    assert!(cookie.len() > 6 * 1024, "{}", cookie.len());
    let user_agent = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)";
    for i in 0..3 {
        let resp = send(
            "GET",
            &proxy.url(&format!("/article/{i}")),
            &[
                ("Host", "vcl.test"),
                ("Cookie", &cookie),
                ("User-Agent", user_agent),
                ("Accept", "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"),
                ("Accept-Language", "de-DE,de;q=0.9,en;q=0.8"),
            ],
        );
        assert_eq!(resp.status, 200, "{}", proxy.log());
    }
    assert_eq!(growths(&proxy, "vcl"), 0, "{}", proxy.log());

    // A policy that needs more than the arena gets it from memory.grow and answers normally.
    let before = growths(&proxy, "hungry");
    for i in 0..3 {
        let resp = send(
            "GET",
            &proxy.url(&format!("/grow/{i}")),
            &[("Host", "hungry.test")],
        );
        assert_eq!(resp.status, 200, "{}", proxy.log());
        assert_eq!(resp.body, b"body");
    }
    assert_eq!(growths(&proxy, "hungry") - before, 3, "{}", proxy.log());
    // The same fixture on an ordinary path grows nothing.
    let resp = send("GET", &proxy.url("/plain"), &[("Host", "hungry.test")]);
    assert_eq!(resp.status, 200);
    assert_eq!(growths(&proxy, "hungry") - before, 3);
}
