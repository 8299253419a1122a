//! Each request starts from a new instance's state (`instance_reuse = 1`, the default), and
//! for SDK-built policies without a new instance: the host writes a reset into the component
//! and restores the instance's memory and globals after every request. The `counter` fixture
//! counts requests in a static; the real `cachet` binary serves it.

mod support;

use support::client::{get, send};
use support::fixture;
use support::origin::{Origin, Reply};
use support::proxy::{Proxy, TenantSpec};

const SETTINGS: &str = "[tenant.plugin_config]\ngreeting = \"hi\"\n";

fn counter_proxy(origin: &Origin, limits: &str) -> Proxy {
    Proxy::start(
        "max_bytes = \"16MiB\"",
        &[TenantSpec::new("counted", origin.addr, &fixture("counter"))
            .extra(SETTINGS)
            .limits(limits)],
    )
}

fn instances_created(proxy: &Proxy) -> u64 {
    let metrics = send("GET", &proxy.admin_url("/metrics"), &[]).text();
    let series = "cachet_plugin_instances_created_total{tenant=\"counted\"} ";
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series}series in:\n{metrics}"))
}

#[test]
fn every_request_sees_a_new_instances_state_from_a_reset_instance() {
    let origin = Origin::start(|_| Reply::ok("origin"));
    let proxy = counter_proxy(&origin, "hook_timeout_ms = 250");
    let plugin = &proxy.status()["tenants"][0]["plugin"];
    assert_eq!(plugin["fresh_state"], "reset between requests", "{plugin}");

    for _ in 0..20 {
        let resp = get(&proxy.url("/count"));
        assert_eq!(resp.status, 200);
        // The counter starts at zero every time, and `configure` saw the settings again.
        assert_eq!(resp.text(), "count=1 greeting=hi ballast=0\n");
    }
    // One client, one request at a time: one instance served all twenty.
    assert_eq!(instances_created(&proxy), 1);

    // A request whose instance grew its memory cannot be reset: that instance is replaced,
    // and the next request still starts afresh.
    let grown = get(&proxy.url("/grow"));
    assert_eq!(grown.text(), "count=1 greeting=hi ballast=262144\n");
    let after = get(&proxy.url("/count"));
    assert_eq!(after.text(), "count=1 greeting=hi ballast=0\n");
    assert_eq!(instances_created(&proxy), 2);
    assert_eq!(origin.hits(), 0);
    assert!(!proxy.log().contains("plugin fault"), "{}", proxy.log());
    // The fixture's writes are followed: its reset rewrites only the blocks it wrote.
    assert!(!proxy.log().contains("not tracked"), "{}", proxy.log());
}

#[test]
fn reused_instances_keep_their_state_when_the_tenant_asks_for_it() {
    // The control: the same fixture with instance reuse on shows its counter climbing, so
    // the test above would see a reset that failed to restore the memory.
    let origin = Origin::start(|_| Reply::ok("origin"));
    let proxy = counter_proxy(&origin, "hook_timeout_ms = 250\ninstance_reuse = 1000");
    let counts: Vec<String> = (0..3).map(|_| get(&proxy.url("/count")).text()).collect();
    assert_eq!(
        counts,
        [
            "count=1 greeting=hi ballast=0\n",
            "count=2 greeting=hi ballast=0\n",
            "count=3 greeting=hi ballast=0\n"
        ]
    );
    assert_eq!(instances_created(&proxy), 1);
}

#[test]
fn components_the_host_cannot_reset_get_a_new_instance_per_request() {
    // Built for wasm32-wasip2: the component holds the WASI adapter's modules beside the
    // policy's, state the reset would not cover.
    let origin = Origin::start(|_| Reply::ok("origin").header("Cache-Control", "max-age=60"));
    let proxy = Proxy::start(
        "max_bytes = \"16MiB\"",
        &[TenantSpec::new(
            "counted",
            origin.addr,
            &fixture("policy-0-3"),
        )],
    );
    let plugin = &proxy.status()["tenants"][0]["plugin"];
    let fresh_state = plugin["fresh_state"].as_str().unwrap_or_default();
    assert!(
        fresh_state.starts_with("new instance per request ("),
        "{plugin}"
    );
    for _ in 0..3 {
        assert_eq!(get(&proxy.url("/plain/a")).status, 200);
    }
    // A miss (on-request, then on-response) and two hits: a new instance for each call.
    assert_eq!(instances_created(&proxy), 4);
}
