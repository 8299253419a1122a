//! The foundation, end to end: the real `cachet` binary in front of a real
//! origin, with the real example plugins built from `plugins/`.

mod support;

use std::time::{Duration, Instant};
use support::client::{get, send};
use support::origin::{Origin, Reply};
use support::plugin;
use support::proxy::{Proxy, TenantSpec};

const CACHE: &str = "max_bytes = \"64MiB\"";

fn proxy_with(origin: &Origin, plugin_name: &str) -> Proxy {
    Proxy::start(
        CACHE,
        &[TenantSpec::new("site", origin.addr, &plugin(plugin_name))],
    )
}

#[test]
fn miss_then_hit_reaches_the_origin_once() {
    let origin = Origin::start(|_| Reply::ok("hello").header("Cache-Control", "max-age=60"));
    let proxy = proxy_with(&origin, "standard");

    let first = get(&proxy.url("/page"));
    assert_eq!(first.status, 200);
    assert_eq!(first.text(), "hello");
    assert!(
        first.cache_status().contains("fwd=miss"),
        "{}",
        first.cache_status()
    );
    assert!(
        first.cache_status().contains("stored"),
        "{}",
        first.cache_status()
    );

    let second = get(&proxy.url("/page"));
    assert_eq!(second.text(), "hello");
    assert!(
        second.cache_status().starts_with("cachet; hit"),
        "{}",
        second.cache_status()
    );
    assert_eq!(origin.hits_for("/page"), 1);
}

#[test]
fn no_store_and_private_are_never_stored() {
    let origin = Origin::start(|seen| match seen.url.as_str() {
        "/no-store" => Reply::ok("a").header("Cache-Control", "no-store, max-age=60"),
        _ => Reply::ok("b").header("Cache-Control", "private, max-age=60"),
    });
    let proxy = proxy_with(&origin, "standard");
    for path in ["/no-store", "/private"] {
        for _ in 0..3 {
            let resp = get(&proxy.url(path));
            assert_eq!(resp.status, 200);
            assert!(
                resp.cache_status().contains("fwd=miss"),
                "{}",
                resp.cache_status()
            );
            assert!(
                !resp.cache_status().contains("stored"),
                "{}",
                resp.cache_status()
            );
        }
        assert_eq!(
            origin.hits_for(path),
            3,
            "{path} must reach the origin every time"
        );
    }
}

#[test]
fn responses_without_freshness_are_not_stored() {
    let origin = Origin::start(|_| Reply::ok("no headers"));
    let proxy = proxy_with(&origin, "standard");
    get(&proxy.url("/plain"));
    get(&proxy.url("/plain"));
    assert_eq!(origin.hits_for("/plain"), 2);
}

#[test]
fn authorization_is_never_served_from_a_shared_entry() {
    let origin = Origin::start(|seen| {
        let who = seen
            .header("authorization")
            .unwrap_or("anonymous")
            .to_owned();
        Reply::ok(format!("for {who}")).header("Cache-Control", "max-age=60")
    });
    let proxy = proxy_with(&origin, "standard");

    // Fill the shared entry anonymously.
    assert_eq!(get(&proxy.url("/me")).text(), "for anonymous");
    assert_eq!(get(&proxy.url("/me")).text(), "for anonymous");
    assert_eq!(origin.hits_for("/me"), 1);

    let alice = send(
        "GET",
        &proxy.url("/me"),
        &[("Authorization", "Bearer alice")],
    );
    assert_eq!(alice.text(), "for Bearer alice");
    assert!(
        alice.cache_status().contains("fwd=bypass"),
        "{}",
        alice.cache_status()
    );
    let bob = send("GET", &proxy.url("/me"), &[("Authorization", "Bearer bob")]);
    assert_eq!(bob.text(), "for Bearer bob");
    assert_eq!(origin.hits_for("/me"), 3);
}

#[test]
fn head_is_answered_from_a_stored_get() {
    let origin = Origin::start(|_| Reply::ok("0123456789").header("Cache-Control", "max-age=60"));
    let proxy = proxy_with(&origin, "standard");

    assert_eq!(get(&proxy.url("/doc")).text(), "0123456789");
    let head = send("HEAD", &proxy.url("/doc"), &[]);
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), Some("10"));
    assert!(
        head.cache_status().contains("hit"),
        "{}",
        head.cache_status()
    );
    assert_eq!(origin.hits(), 1);
}

#[test]
fn static_assets_normalises_the_query_before_keying() {
    let origin = Origin::start(|seen| Reply::ok(format!("asset {}", seen.url)));
    let proxy = proxy_with(&origin, "static-assets");

    let first = get(&proxy.url("/app.css?utm_source=x&b=2&a=1&fbclid=z"));
    assert_eq!(first.status, 200);
    // No freshness from the origin: the plugin stores static assets for a day.
    assert!(
        first.cache_status().contains("stored"),
        "{}",
        first.cache_status()
    );

    for url in [
        "/app.css?a=1&b=2",
        "/app.css?gclid=q&b=2&a=1",
        "/app.css?b=2&utm_medium=m&a=1",
    ] {
        let resp = get(&proxy.url(url));
        assert!(
            resp.cache_status().contains("hit"),
            "{url}: {}",
            resp.cache_status()
        );
        assert_eq!(resp.text(), first.text());
    }
    assert_eq!(origin.hits(), 1);

    // A different remaining query is a different entry.
    get(&proxy.url("/app.css?a=1&b=3"));
    assert_eq!(origin.hits(), 2);

    // Cookies do not matter for static paths...
    let with_cookie = send("GET", &proxy.url("/app.css?a=1&b=2"), &[("Cookie", "id=1")]);
    assert!(
        with_cookie.cache_status().contains("hit"),
        "{}",
        with_cookie.cache_status()
    );
    // ...but make dynamic paths bypass.
    let dynamic = send("GET", &proxy.url("/account"), &[("Cookie", "id=1")]);
    assert!(
        dynamic.cache_status().contains("fwd=bypass"),
        "{}",
        dynamic.cache_status()
    );
    assert!(
        dynamic.cache_status().contains("cookie"),
        "{}",
        dynamic.cache_status()
    );
}

#[test]
fn static_assets_never_stores_what_the_origin_forbids() {
    let origin = Origin::start(|_| Reply::ok("x").header("Cache-Control", "no-store"));
    let proxy = proxy_with(&origin, "static-assets");
    get(&proxy.url("/logo.png"));
    get(&proxy.url("/logo.png"));
    assert_eq!(origin.hits(), 2);
}

#[test]
fn api_gateway_answers_admin_itself_and_bypasses_credentials() {
    let origin = Origin::start(|_| Reply::ok("api"));
    let proxy = proxy_with(&origin, "api-gateway");

    for path in ["/admin", "/admin/users?x=1"] {
        let resp = get(&proxy.url(path));
        assert_eq!(resp.status, 403, "{path}");
        assert!(
            resp.cache_status().contains("plugin"),
            "{}",
            resp.cache_status()
        );
    }
    assert_eq!(origin.hits(), 0, "403s must not reach the origin");

    // /api/ responses are stored 10 s even without origin freshness.
    get(&proxy.url("/api/items"));
    let hit = get(&proxy.url("/api/items"));
    assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
    assert_eq!(origin.hits_for("/api/items"), 1);

    let auth = send(
        "GET",
        &proxy.url("/api/items"),
        &[("Authorization", "Basic eDp5")],
    );
    assert!(
        auth.cache_status().contains("fwd=bypass"),
        "{}",
        auth.cache_status()
    );
    let session = send(
        "GET",
        &proxy.url("/api/items"),
        &[("Cookie", "theme=dark; session=abc")],
    );
    assert!(
        session.cache_status().contains("fwd=bypass"),
        "{}",
        session.cache_status()
    );
    assert!(
        session.cache_status().contains("cookie"),
        "{}",
        session.cache_status()
    );
    // An API key under its own name, and a session cookie of another name, are credentials
    // too: one user's answer is never another's (probe AA).
    for credential in [
        ("X-Api-Key", "k1"),
        ("Cookie", "connect.sid=s%3Aabc"),
        ("X-Remote-User", "alice"),
    ] {
        let resp = send("GET", &proxy.url("/api/items"), &[credential]);
        assert!(
            resp.cache_status().contains("fwd=bypass"),
            "{credential:?}: {}",
            resp.cache_status()
        );
    }
    assert_eq!(origin.hits_for("/api/items"), 6);
}

#[test]
fn concurrent_misses_for_one_key_reach_the_origin_once() {
    let origin = Origin::start(|_| {
        Reply::ok(vec![b'x'; 4096])
            .header("Cache-Control", "max-age=60")
            .delay(Duration::from_millis(300))
    });
    let proxy = proxy_with(&origin, "standard");
    let url = proxy.url("/cold");
    let clients: Vec<_> = (0..200)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || get(&url))
        })
        .collect();
    let mut statuses = std::collections::BTreeMap::new();
    for client in clients {
        let resp = client.join().expect("client thread");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body.len(), 4096);
        *statuses.entry(resp.cache_status().to_owned()).or_insert(0) += 1;
    }
    assert_eq!(
        origin.hits_for("/cold"),
        1,
        "{statuses:#?}\n{}",
        proxy.log()
    );
    // The waiting is visible to operators. Recorded in a request's logging phase, after its
    // client has the answer: wait (bounded) for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = get(&proxy.admin_url("/metrics")).text();
        let waits: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("cachet_cache_lock_wait_seconds_count"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if waits >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no lock waits recorded:\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_byte_budget_evicts_and_is_never_exceeded() {
    const BUDGET: u64 = 256 * 1024;
    let origin =
        Origin::start(|_| Reply::ok(vec![b'b'; 16 * 1024]).header("Cache-Control", "max-age=600"));
    let proxy = Proxy::start(
        &format!("max_bytes = \"{BUDGET}B\"\nmax_object_bytes = \"64KiB\""),
        &[TenantSpec::new("site", origin.addr, &plugin("standard"))],
    );
    for i in 0..64 {
        let resp = get(&proxy.url(&format!("/obj/{i}")));
        assert_eq!(resp.body.len(), 16 * 1024);
        let stored = proxy.stored_bytes();
        assert!(
            stored <= BUDGET,
            "stored {stored} > budget {BUDGET} after {i}"
        );
    }
    let status = proxy.status();
    assert!(
        status["cache"]["evictions"].as_u64().unwrap() > 0,
        "{status}"
    );
    assert!(proxy.stored_bytes() > BUDGET / 2, "{status}");
    // The oldest entry was evicted, the newest is still a hit.
    get(&proxy.url("/obj/0"));
    assert_eq!(origin.hits_for("/obj/0"), 2);
    assert!(get(&proxy.url("/obj/63")).cache_status().contains("hit"));
}

#[test]
fn unknown_hosts_get_a_4xx_and_tenants_are_routed_by_host() {
    let a = Origin::start(|_| Reply::ok("from a").header("Cache-Control", "max-age=60"));
    let b = Origin::start(|_| Reply::ok("from b").header("Cache-Control", "max-age=60"));
    let proxy = Proxy::start(
        CACHE,
        &[
            TenantSpec::new("a", a.addr, &plugin("standard")).hosts(&["a.test"]),
            TenantSpec::new("b", b.addr, &plugin("standard")).hosts(&["*.b.test"]),
        ],
    );
    let url = proxy.url("/same");
    assert_eq!(send("GET", &url, &[("Host", "a.test")]).text(), "from a");
    assert_eq!(
        send("GET", &url, &[("Host", "www.b.test:8080")]).text(),
        "from b"
    );
    // A fully qualified name (final dot) is the same host.
    assert_eq!(send("GET", &url, &[("Host", "a.test.")]).text(), "from a");
    let unknown = send("GET", &url, &[("Host", "c.test")]);
    assert_eq!(unknown.status, 421);
    // A name merely ending like a wildcard's domain is not under it.
    assert_eq!(send("GET", &url, &[("Host", "evilb.test")]).status, 421);
}
