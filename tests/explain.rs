//! `cachet explain` end to end: the running proxy dry-runs a URL — tenant, plugin decision,
//! key, stored entry and its freshness — and the origin sees nothing of it.

mod support;

use support::client::send;
use support::origin::{Origin, Reply};
use support::plugin;
use support::proxy::{run_cachet, Proxy, TenantSpec};

fn explain(proxy: &Proxy, args: &[&str]) -> (bool, String) {
    let config = proxy.dir.path().join("cachet.toml").display().to_string();
    let mut all = vec!["explain", "--config", config.as_str()];
    all.extend_from_slice(args);
    run_cachet(&all)
}

#[test]
fn explains_a_stored_url_and_a_missing_one_without_asking_the_origin() {
    let origin = Origin::start(|seen| match seen.url.as_str() {
        "/aging" => Reply::ok("aging")
            .header("Cache-Control", "max-age=1, stale-while-revalidate=30")
            .header("ETag", "\"v1\""),
        _ => Reply::ok("stored").header("Cache-Control", "max-age=60"),
    });
    let proxy = Proxy::start(
        "",
        &[TenantSpec::new("site", origin.addr, &plugin("standard")).hosts(&["127.0.0.1"])],
    );
    assert_eq!(send("GET", &proxy.url("/stored"), &[]).status, 200);
    assert_eq!(send("GET", &proxy.url("/aging"), &[]).status, 200);
    assert_eq!(origin.hits(), 2);

    let stored = proxy.url("/stored");
    let (ok, out) = explain(&proxy, &[&stored]);
    assert!(ok, "{out}");
    assert!(out.contains("-> tenant site"), "{out}");
    assert!(out.contains("on-request: cache"), "{out}");
    let host = format!("127.0.0.1:{}", proxy.port);
    assert!(
        out.contains(&format!("key \"site http {host} /stored\"")),
        "{out}"
    );
    assert!(out.contains("entry found: status 200"), "{out}");
    assert!(out.contains("ttl 60s"), "{out}");
    assert!(out.contains("freshness:  fresh: "), "{out}");
    assert!(
        out.contains("result:     hit: served fresh from the cache"),
        "{out}"
    );

    let (ok, json) = explain(&proxy, &["--json", &stored]);
    assert!(ok, "{json}");
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(doc["tenant"], "site");
    assert_eq!(doc["decision"], "cache");
    assert_eq!(doc["entry"]["state"], "fresh");
    assert_eq!(doc["entry"]["ttl_s"], 60);
    assert!(doc["entry"]["age_s"].as_u64().unwrap() <= 60, "{doc:#}");

    let (ok, out) = explain(&proxy, &[&proxy.url("/never-requested")]);
    assert!(ok, "{out}");
    assert!(out.contains("lookup:     no entry for this key"), "{out}");
    assert!(out.contains("miss: no entry"), "{out}");
    // only-if-cached: the proxy answers 504 where it would go to the origin (probe AL), and
    // a stored fresh response is still a hit.
    let only_stored = ["-H", "Cache-Control: only-if-cached"];
    let missing = proxy.url("/never-requested");
    let (ok, out) = explain(&proxy, &[only_stored[0], only_stored[1], &missing]);
    assert!(ok, "{out}");
    assert!(
        out.contains("answered 504 by the host: only-if-cached"),
        "{out}"
    );
    let (ok, out) = explain(&proxy, &[only_stored[0], only_stored[1], &stored]);
    assert!(ok, "{out}");
    assert!(out.contains("hit: served fresh"), "{out}");

    // Past its max-age, inside stale-while-revalidate, with a validator.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (ok, json) = explain(&proxy, &["--json", &proxy.url("/aging")]);
    assert!(ok, "{json}");
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(doc["entry"]["state"], "stale-while-revalidate", "{doc:#}");
    assert_eq!(doc["entry"]["stale_while_revalidate_s"], 30);
    assert_eq!(doc["entry"]["has_validator"], true);
    let verdict = doc["verdict"].as_str().unwrap();
    assert!(
        verdict.contains("served stale") && verdict.contains("revalidated"),
        "{verdict}"
    );

    // Explaining asked the origin nothing, and stored nothing new.
    assert_eq!(origin.hits(), 2);
    assert_eq!(origin.hits_for("/never-requested"), 0);
    assert_eq!(proxy.status()["cache"]["objects"], 2);
}

#[test]
fn explains_routing_and_plugin_decisions_from_the_given_headers() {
    let origin = Origin::start(|_| Reply::ok("x").header("Cache-Control", "max-age=60"));
    let proxy = Proxy::start(
        "",
        &[
            TenantSpec::new("assets", origin.addr, &plugin("static-assets"))
                .hosts(&["static.example"]),
        ],
    );
    let url = proxy.url("/account");
    // The Host given with -H routes; a cookie on a dynamic path makes static-assets bypass.
    let (ok, out) = explain(
        &proxy,
        &[
            "-H",
            "Host: static.example",
            "-H",
            "Cookie: session=1",
            &url,
        ],
    );
    assert!(ok, "{out}");
    assert!(out.contains("-> tenant assets"), "{out}");
    assert!(out.contains("bypass (cookie on dynamic path)"), "{out}");

    let (ok, out) = explain(&proxy, &["-H", "Host: other.example", &url]);
    assert!(ok, "{out}");
    assert!(
        out.contains("no tenant serves host \"other.example\""),
        "{out}"
    );

    let (ok, out) = explain(&proxy, &["-H", "no colon here", &url]);
    assert!(!ok);
    assert!(out.contains("is not `Name: value`"), "{out}");

    // What the proxy would refuse is refused, not explained as served.
    let userinfo = url.replace("http://", "http://user:pw@");
    let (ok, out) = explain(&proxy, &["-H", "Host: static.example", &userinfo]);
    assert!(!ok, "{out}");
    assert!(out.contains("user information"), "{out}");
    let (ok, out) = explain(&proxy, &[&url.replace("http://", "ftp://")]);
    assert!(!ok, "{out}");
    assert!(out.contains("http(s) URLs only"), "{out}");

    // The host's own rules apply as in the proxy: a GET with a body, a coding other than
    // chunked, a key over max_key_bytes.
    let page = proxy.url("/app.css");
    let host = ["-H", "Host: static.example"];
    let (ok, out) = explain(
        &proxy,
        &[&host[..], &["-H", "Content-Length: 5", &page]].concat(),
    );
    assert!(ok, "{out}");
    assert!(out.contains("GET with a body"), "{out}");
    let coded = ["-H", "Transfer-Encoding: gzip, chunked", &page];
    let (ok, out) = explain(&proxy, &[&host[..], &coded].concat());
    assert!(ok, "{out}");
    assert!(out.contains("answered 501 by the host"), "{out}");
    let long = format!("{page}?q={}", "x".repeat(5000));
    let (ok, out) = explain(&proxy, &[&host[..], &[long.as_str()]].concat());
    assert!(ok, "{out}");
    assert!(out.contains("max_key_bytes"), "{out}");
    assert_eq!(origin.hits(), 0);
}

/// A URL whose last response could not be stored skips the lookup in the proxy (hit-for-miss):
/// explain says so, instead of "miss, may be stored" as if it would wait on the cache.
#[test]
fn explains_a_url_marked_uncacheable() {
    let origin = Origin::start(|_| Reply::ok("x").header("Cache-Control", "no-store"));
    let proxy = Proxy::start(
        "",
        &[TenantSpec::new("site", origin.addr, &plugin("standard")).hosts(&["127.0.0.1"])],
    );
    let url = proxy.url("/never");
    let (ok, out) = explain(&proxy, &[&url]);
    assert!(ok, "{out}");
    assert!(out.contains("miss: no entry"), "{out}");
    assert_eq!(send("GET", &url, &[]).status, 200);
    let (ok, out) = explain(&proxy, &[&url]);
    assert!(ok, "{out}");
    assert!(
        out.contains("pass: the URL's last response could not be stored"),
        "{out}"
    );
    assert_eq!(origin.hits(), 1);
}

/// Explain plans the request as the proxy does: the backend the plugin names is shown, and
/// one the tenant does not have is the plugin fault the proxy answers 502 for, not a miss.
#[test]
fn explains_the_backend_a_plugin_picks_and_refuses_an_unknown_one() {
    let origin = Origin::start(|_| Reply::ok("x").header("Cache-Control", "max-age=60"));
    let proxy = Proxy::start(
        "",
        &[TenantSpec::new("api", origin.addr, &plugin("api-gateway"))
            .hosts(&["127.0.0.1"])
            .extra(&format!(
                "on_plugin_error = \"error\"\n[tenant.backends]\napi = \"{}\"\n[tenant.plugin_config]\nbackends = \"/api/=api, /gone/=nosuch\"",
                origin.addr
            ))],
    );
    let (ok, out) = explain(&proxy, &[&proxy.url("/api/items")]);
    assert!(ok, "{out}");
    assert!(out.contains("backend \"api\""), "{out}");
    let unknown = proxy.url("/gone/x");
    let (ok, out) = explain(&proxy, &[&unknown]);
    assert!(ok, "{out}");
    assert!(out.contains("plugin fault"), "{out}");
    assert!(
        out.contains("\"nosuch\" is not one of the tenant's"),
        "{out}"
    );
    // The proxy agrees: the same request is the tenant's on_plugin_error (502).
    assert_eq!(send("GET", &unknown, &[]).status, 502);
    assert_eq!(origin.hits(), 0);
}

/// A 0.3.0 plugin is shown the forwarding fields the proxy adds; explain shows them too (as
/// for a client on the loopback), so a plugin that reads them is explained as it runs.
#[test]
fn explains_a_plugin_that_reads_the_forwarding_fields_as_the_proxy_runs_it() {
    let origin = Origin::start(|_| Reply::ok("x").header("Cache-Control", "max-age=60"));
    let proxy = Proxy::start(
        "",
        &[
            TenantSpec::new("site", origin.addr, &support::fixture("policy-0-3"))
                .hosts(&["127.0.0.1"]),
        ],
    );
    for path in ["/fields-key/a", "/edit-fields/a"] {
        let url = proxy.url(path);
        let live = send("GET", &url, &[]);
        assert!(
            live.cache_status().contains("stored"),
            "{path}: {}",
            live.cache_status()
        );
        let (ok, out) = explain(&proxy, &[&url]);
        assert!(ok, "{out}");
        assert!(!out.contains("fault"), "{path}: {out}");
        assert!(
            out.contains("forwarding: fields as for a client at 127.0.0.1"),
            "{out}"
        );
        assert!(
            out.contains("hit: served fresh from the cache"),
            "{path}: {out}"
        );
    }
}
