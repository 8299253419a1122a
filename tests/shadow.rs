//! Shadow rollout end to end: a tenant's `shadow_plugin` sees live traffic beside the live
//! plugin, through the real `cachet` binary, real plugins and a real counting origin. Its
//! answers are counted and listed, never obeyed; `cachet promote` makes it live.

mod support;

use std::time::{Duration, Instant};
use support::client::{send, Resp};
use support::origin::{Origin, Reply};
use support::proxy::{run_cachet, Proxy, TenantSpec};
use support::{fixture, plugin};

/// `/img/...` comes without freshness information (the static-assets policy stores it a day,
/// the standard one follows the origin and does not store); everything else is fresh a minute.
fn origin() -> Origin {
    Origin::start(|seen| {
        let reply = Reply::ok(format!("body of {}", seen.url));
        if seen.url.starts_with("/img/") {
            reply
        } else {
            reply.header("Cache-Control", "max-age=60")
        }
    })
}

fn tenant_with_shadow(origin: &Origin, shadow: &std::path::Path) -> TenantSpec {
    TenantSpec::new("site", origin.addr, &plugin("standard")).extra(&format!(
        "shadow_plugin = {:?}",
        shadow.display().to_string()
    ))
}

/// Replaces the shadow file atomically with `replacement` (as a deploy would) and waits
/// until the running shadow is that version.
fn replace_shadow(proxy: &Proxy, shadow: &std::path::Path, replacement: &std::path::Path) {
    let shadow_sha = || proxy.status()["tenants"][0]["shadow"]["sha256"].clone();
    let before = shadow_sha();
    let name = shadow.file_name().unwrap().to_string_lossy();
    let staging = shadow.with_file_name(format!(".{name}.tmp"));
    std::fs::copy(replacement, &staging).unwrap();
    std::fs::rename(&staging, shadow).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while shadow_sha() == before {
        assert!(
            Instant::now() < deadline,
            "shadow not reloaded\n{}",
            proxy.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn config_path(proxy: &Proxy) -> String {
    proxy.dir.path().join("cachet.toml").display().to_string()
}

/// The requests both policies see: one where they agree on everything, one per hook where
/// standard (live) and static-assets (shadow) answer differently.
fn traffic(proxy: &Proxy) -> Vec<Resp> {
    vec![
        send("GET", &proxy.url("/plain"), &[]),
        // Keys: standard keeps the query as sent, static-assets sorts it.
        send("GET", &proxy.url("/a.css?b=1&a=2"), &[]),
        // on-request: static-assets bypasses a dynamic path with a cookie, standard caches.
        send(
            "GET",
            &proxy.url("/page"),
            &[("Cookie", "session=s3cr3t-cookie-value")],
        ),
        // on-response: static-assets stores a static path a day, standard follows the origin.
        send("GET", &proxy.url("/img/logo.png"), &[]),
    ]
}

#[test]
fn agreements_and_disagreements_are_counted_per_hook_and_listed() {
    let origin = origin();
    let proxy = Proxy::start("", &[tenant_with_shadow(&origin, &plugin("static-assets"))]);
    for resp in traffic(&proxy) {
        assert_eq!(resp.status, 200, "{}", resp.text());
    }

    let status = proxy.status();
    let shadow = &status["tenants"][0]["shadow"];
    assert_eq!(shadow["sample"], 1.0, "{shadow:#}");
    let count = |hook: &str, result: &str| shadow["hooks"][hook][result].as_u64().unwrap();
    assert_eq!(count("on-request", "agree"), 3, "{shadow:#}");
    assert_eq!(count("on-request", "disagree"), 1, "{shadow:#}");
    assert_eq!(count("cache-key", "agree"), 2, "{shadow:#}");
    assert_eq!(count("cache-key", "disagree"), 1, "{shadow:#}");
    // /page was not sent to the origin by the shadow's choice: the live plugin cached it, so
    // its response is compared too.
    assert_eq!(count("on-response", "agree"), 3, "{shadow:#}");
    assert_eq!(count("on-response", "disagree"), 1, "{shadow:#}");
    for hook in ["on-request", "cache-key", "on-response"] {
        assert_eq!(count(hook, "fault"), 0, "{shadow:#}");
    }

    let recent = shadow["recent_disagreements"].as_array().unwrap();
    assert_eq!(recent.len(), 3, "{shadow:#}");
    let find = |hook: &str| recent.iter().find(|d| d["hook"] == hook).unwrap();
    let key = find("cache-key");
    assert_eq!(key["method"], "GET");
    assert_eq!(key["path"], "/a.css");
    // Query values are never kept; names and their order are.
    assert!(
        key["live"]
            .as_str()
            .unwrap()
            .contains("b=[hidden]&a=[hidden]"),
        "{key}"
    );
    assert!(
        key["shadow"]
            .as_str()
            .unwrap()
            .contains("a=[hidden]&b=[hidden]"),
        "{key}"
    );
    let request = find("on-request");
    assert_eq!(request["path"], "/page");
    assert!(
        request["live"].as_str().unwrap().starts_with("cache"),
        "{request}"
    );
    assert_eq!(request["shadow"], "bypass (cookie on dynamic path)");
    let response = find("on-response");
    assert_eq!(response["path"], "/img/logo.png");
    assert_eq!(response["live"], "follow-origin");
    assert!(
        response["shadow"]
            .as_str()
            .unwrap()
            .starts_with("store ttl=86400s"),
        "{response}"
    );
    // Never a cookie value, in status or metrics.
    let text = status.to_string();
    assert!(!text.contains("s3cr3t"), "{text}");

    let metrics = ureq::get(&proxy.admin_url("/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let metric = |hook: &str, result: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("cachet_shadow_decisions_total{")
                    && l.contains(&format!("hook=\"{hook}\""))
                    && l.contains(&format!("result=\"{result}\""))
                    && l.contains("tenant=\"site\"")
            })
            .and_then(|l| l.rsplit(' ').next())
            .map(|v| v.to_owned())
    };
    assert_eq!(
        metric("cache-key", "disagree").as_deref(),
        Some("1"),
        "{metrics}"
    );
    assert_eq!(
        metric("on-request", "agree").as_deref(),
        Some("3"),
        "{metrics}"
    );

    let (ok, out) = run_cachet(&["status", "--config", &config_path(&proxy)]);
    assert!(ok, "{out}");
    assert!(
        out.contains("cache-key: 2 agree, 1 disagree, 0 fault"),
        "{out}"
    );
    let page = format!("on-request disagree GET 127.0.0.1:{}/page", proxy.port);
    assert!(out.contains(&page), "{out}");
}

/// The same requests against a proxy with and without a shadow: same statuses, bodies and
/// cache outcomes, and the origin sees exactly the same requests.
#[test]
fn the_shadow_never_changes_what_clients_get_or_what_the_origin_sees() {
    let plain_origin = origin();
    let plain = Proxy::start(
        "",
        &[TenantSpec::new(
            "site",
            plain_origin.addr,
            &plugin("standard"),
        )],
    );
    let shadowed_origin = origin();
    let shadowed = Proxy::start(
        "",
        &[tenant_with_shadow(
            &shadowed_origin,
            &plugin("static-assets"),
        )],
    );
    // Twice each: the second round is answered from the cache where the live plugin stored.
    let rounds = |proxy: &Proxy| {
        let mut all = traffic(proxy);
        all.extend(traffic(proxy));
        all
    };
    let without = rounds(&plain);
    let with = rounds(&shadowed);
    for (a, b) in without.iter().zip(&with) {
        assert_eq!(a.status, b.status);
        assert_eq!(a.body, b.body);
        // The outcome (hit, miss, ...), not the remaining ttl, which moves with the clock.
        let outcome = |r: &Resp| r.cache_status().split(';').take(2).collect::<String>();
        assert_eq!(
            outcome(a),
            outcome(b),
            "{} / {}",
            a.cache_status(),
            b.cache_status()
        );
    }
    for url in ["/plain", "/a.css?b=1&a=2", "/page", "/img/logo.png"] {
        assert_eq!(
            plain_origin.hits_for(url),
            shadowed_origin.hits_for(url),
            "{url}"
        );
    }
    assert_eq!(plain_origin.hits(), shadowed_origin.hits());
    // /img/logo.png is not stored by the live plugin: it reached the origin both times,
    // although the shadow would have stored it.
    assert_eq!(shadowed_origin.hits_for("/img/logo.png"), 2);
    assert_eq!(shadowed_origin.hits(), 5);
}

#[test]
fn a_panicking_shadow_is_counted_as_a_fault_and_live_responses_are_intact() {
    let origin = origin();
    let proxy = Proxy::start("", &[tenant_with_shadow(&origin, &fixture("panic"))]);
    for path in ["/panic/request/a", "/panic/key/b", "/panic/response/c"] {
        for _ in 0..2 {
            let resp = send("GET", &proxy.url(path), &[]);
            assert_eq!(resp.status, 200);
            assert_eq!(resp.text(), format!("body of {path}"));
        }
        // Stored by the live plugin and served from the cache the second time.
        assert_eq!(origin.hits_for(path), 1, "{path}");
    }
    let status = proxy.status();
    let shadow = &status["tenants"][0]["shadow"];
    let count = |hook: &str, result: &str| shadow["hooks"][hook][result].as_u64().unwrap();
    // on-request and cache-key run in one call: a panic in either is an on-request fault.
    assert_eq!(count("on-request", "fault"), 4, "{shadow:#}");
    assert_eq!(count("on-request", "agree"), 2, "{shadow:#}");
    // on-response runs on the three misses; the shadow panicked on /panic/response/c only.
    assert_eq!(count("on-response", "fault"), 1, "{shadow:#}");
    assert_eq!(count("on-response", "agree"), 2, "{shadow:#}");
    let recent = shadow["recent_disagreements"].as_array().unwrap();
    assert!(recent.iter().all(|d| d["result"] == "fault"), "{shadow:#}");
    assert!(
        recent[0]["shadow"].as_str().unwrap().contains("trapped"),
        "{shadow:#}"
    );
    // The live plugin never faulted.
    assert_eq!(status["tenants"][0]["plugin"]["generation"], 1);
    let metrics = ureq::get(&proxy.admin_url("/metrics")).call().unwrap();
    let metrics = metrics.into_string().unwrap();
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("cachet_plugin_faults_total{") && l.contains("\"site\"")),
        "shadow faults are not live plugin faults:\n{metrics}"
    );
}

#[test]
fn a_looping_shadow_costs_at_most_its_deadline_then_nothing() {
    let origin = origin();
    let tenant =
        tenant_with_shadow(&origin, &fixture("loop-forever")).limits("hook_timeout_ms = 50");
    let proxy = Proxy::start("", &[tenant]);
    let started = Instant::now();
    for _ in 0..8 {
        let resp = send("GET", &proxy.url("/loop/request/a"), &[]);
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), "body of /loop/request/a");
    }
    // The live plugin stored the page: one origin request, then hits.
    assert_eq!(origin.hits(), 1);
    // Each hit runs only on-request: three overruns of 50 ms in a row open the shadow's own
    // breaker, and the remaining requests skip it. A generous bound for a busy machine.
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    let status = proxy.status();
    let shadow = &status["tenants"][0]["shadow"];
    assert_eq!(shadow["hooks"]["on-request"]["fault"], 8, "{shadow:#}");
    let kinds: Vec<&str> = shadow["recent_disagreements"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["shadow"].as_str())
        .collect();
    assert!(
        kinds
            .iter()
            .any(|k| k.contains("exceeded its CPU deadline")),
        "{kinds:?}"
    );
    assert!(
        kinds.iter().any(|k| k.contains("skipped")),
        "{kinds:?}\n{}",
        proxy.log()
    );
    // The live plugin was never quarantined or faulted.
    assert!(!proxy.log().contains("plugin fault:"), "{}", proxy.log());
}

#[test]
fn promote_makes_the_shadow_live_at_once_and_status_shows_it() {
    let origin = origin();
    let static_assets = plugin("static-assets");
    let proxy = Proxy::start("", &[tenant_with_shadow(&origin, &static_assets)]);
    let cookie = [("Cookie", "session=abc")];
    // Live standard: a dynamic page with a cookie is cached.
    send("GET", &proxy.url("/before"), &cookie);
    send("GET", &proxy.url("/before"), &cookie);
    assert_eq!(origin.hits_for("/before"), 1);

    // Traffic keeps flowing while the shadow is promoted: no request fails.
    let url = proxy.url("/plain");
    let during = std::thread::spawn(move || {
        (0..100)
            .map(|_| send("GET", &url, &[]).status)
            .collect::<Vec<u16>>()
    });
    let (ok, out) = run_cachet(&["promote", "--config", &config_path(&proxy), "site"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("promoted the shadow plugin of tenant site"),
        "{out}"
    );
    let statuses = during.join().unwrap();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");

    let status = proxy.status();
    let tenant = &status["tenants"][0];
    assert_eq!(tenant["promoted"], true);
    assert!(tenant["shadow"].is_null(), "{tenant:#}");
    assert_eq!(
        tenant["plugin"]["path"],
        static_assets.display().to_string()
    );
    assert_eq!(tenant["plugin"]["generation"], 2);
    // Live static-assets: the same kind of request now bypasses the cache.
    send("GET", &proxy.url("/after"), &cookie);
    send("GET", &proxy.url("/after"), &cookie);
    assert_eq!(origin.hits_for("/after"), 2);

    // Nothing left to promote.
    let (ok, out) = run_cachet(&["promote", "--config", &config_path(&proxy), "site"]);
    assert!(!ok);
    assert!(out.contains("has no shadow plugin"), "{out}");
    // A tenant the config does not name is not found, not a conflict.
    let (ok, out) = run_cachet(&["promote", "--config", &config_path(&proxy), "nosuch"]);
    assert!(!ok);
    assert!(
        out.contains("404") && out.contains("no tenant named"),
        "{out}"
    );
}

#[test]
fn promote_refuses_a_shadow_file_changed_since_it_was_loaded() {
    let origin = origin();
    let dir = tempfile::tempdir().unwrap();
    let shadow = dir.path().join("candidate.wasm");
    std::fs::copy(plugin("static-assets"), &shadow).unwrap();
    let proxy = Proxy::start(
        "[plugins]\nwatch = false",
        &[tenant_with_shadow(&origin, &shadow)],
    );
    // Not watched: the running shadow stays the version that was compared.
    std::fs::copy(plugin("api-gateway"), &shadow).unwrap();
    let (ok, out) = run_cachet(&["promote", "--config", &config_path(&proxy), "site"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("changed since it was loaded as the shadow"),
        "{out}"
    );
    let tenant = &proxy.status()["tenants"][0];
    assert_eq!(tenant["promoted"], false);
    assert_eq!(
        tenant["plugin"]["path"],
        plugin("standard").display().to_string()
    );
    assert!(!tenant["shadow"].is_null());
}

/// The operator judged one version of the shadow by its counts; a deploy reloaded since put
/// another in its place. `--sha256` promotes only the version judged.
#[test]
fn promote_with_a_sha256_refuses_a_shadow_replaced_since_it_was_judged() {
    let origin = origin();
    let dir = tempfile::tempdir().unwrap();
    let shadow = dir.path().join("candidate.wasm");
    std::fs::copy(plugin("static-assets"), &shadow).unwrap();
    let proxy = Proxy::start("", &[tenant_with_shadow(&origin, &shadow)]);
    let shadow_sha = |proxy: &Proxy| {
        proxy.status()["tenants"][0]["shadow"]["sha256"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let judged = shadow_sha(&proxy);
    replace_shadow(&proxy, &shadow, &plugin("api-gateway"));
    let config = config_path(&proxy);
    let promote =
        |sha256: &str| run_cachet(&["promote", "--config", &config, "site", "--sha256", sha256]);

    let (ok, out) = promote(&judged[..12]);
    assert!(!ok, "{out}");
    assert!(out.contains(&format!("not {}", &judged[..12])), "{out}");
    assert_eq!(proxy.status()["tenants"][0]["promoted"], false);
    let (ok, out) = promote("not-a-sha");
    assert!(!ok && out.contains("--sha256 takes"), "{out}");

    let (ok, out) = promote(&shadow_sha(&proxy));
    assert!(ok, "{out}");
    let tenant = &proxy.status()["tenants"][0];
    assert_eq!(tenant["promoted"], true);
    assert_eq!(tenant["plugin"]["path"], shadow.display().to_string());
}

#[test]
fn a_sample_of_zero_never_runs_the_shadow() {
    let origin = origin();
    let tenant = tenant_with_shadow(&origin, &fixture("panic")).extra(&format!(
        "shadow_plugin = {:?}\nshadow_sample = 0.0",
        fixture("panic").display().to_string()
    ));
    let proxy = Proxy::start("", &[tenant]);
    for _ in 0..3 {
        assert_eq!(send("GET", &proxy.url("/panic/request/x"), &[]).status, 200);
    }
    let shadow = &proxy.status()["tenants"][0]["shadow"];
    assert_eq!(shadow["sample"], 0.0);
    for hook in ["on-request", "cache-key", "on-response"] {
        for result in ["agree", "disagree", "fault"] {
            assert_eq!(shadow["hooks"][hook][result], 0, "{shadow:#}");
        }
    }
}

#[test]
fn shadow_keys_are_checked_like_plugin_keys() {
    let origin = origin();
    let cases = [
        (
            "shadow_sample = 1.5",
            "shadow_sample",
            "between 0.0 and 1.0",
        ),
        (
            "shadow_sample = 0.5",
            "shadow_sample",
            "needs shadow_plugin",
        ),
        (
            "shadow_plugin = \"missing.wasm\"",
            "shadow_plugin",
            "no plugin file",
        ),
        (
            "shadow_plugin = \"builtin:standard\"",
            "shadow_plugin",
            "not a builtin",
        ),
    ];
    for (line, key, message) in cases {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("cachet.toml");
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[[tenant]]\nname = \"site\"\nhosts = [\"*\"]\nupstream = \"{}\"\nplugin = {:?}\n{line}\n",
            origin.addr,
            plugin("standard").display().to_string()
        );
        std::fs::write(&config, text).unwrap();
        let (ok, out) = run_cachet(&["validate", "--config", config.to_str().unwrap()]);
        assert!(!ok, "{line}: {out}");
        assert!(out.contains(":9: key `tenant."), "{line}: {out}");
        assert!(out.contains(key) && out.contains(message), "{line}: {out}");
    }
    // A shadow whose self-tests fail is refused like a plugin.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cachet.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[[tenant]]\nname = \"site\"\nhosts = [\"*\"]\nupstream = \"{}\"\nplugin = {:?}\nshadow_plugin = {:?}\n",
        origin.addr,
        plugin("standard").display().to_string(),
        fixture("self-test-fails").display().to_string()
    );
    std::fs::write(&config, text).unwrap();
    let (ok, out) = run_cachet(&["validate", "--config", config.to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(out.contains("shadow plugin"), "{out}");
}

#[test]
fn a_changed_shadow_file_is_hot_reloaded_and_compared_afresh() {
    let origin = origin();
    let dir = tempfile::tempdir().unwrap();
    let shadow = dir.path().join("candidate.wasm");
    std::fs::copy(plugin("static-assets"), &shadow).unwrap();
    let proxy = Proxy::start("", &[tenant_with_shadow(&origin, &shadow)]);
    send("GET", &proxy.url("/a.css?b=1&a=2"), &[]);
    let first = proxy.status()["tenants"][0].clone();
    assert_eq!(
        first["shadow"]["hooks"]["cache-key"]["disagree"], 1,
        "{first:#}"
    );

    // Replace the candidate with the same plugin as the live one.
    replace_shadow(&proxy, &shadow, &plugin("standard"));
    assert_eq!(
        proxy.status()["tenants"][0]["shadow"]["sha256"],
        first["plugin"]["sha256"]
    );
    // A new version starts a new comparison; the live plugin did not change.
    send("GET", &proxy.url("/a.css?b=1&a=2"), &[]);
    let tenant = proxy.status()["tenants"][0].clone();
    assert_eq!(tenant["plugin"]["generation"], 1);
    assert_eq!(
        tenant["shadow"]["hooks"]["cache-key"]["agree"], 1,
        "{tenant:#}"
    );
    assert_eq!(
        tenant["shadow"]["hooks"]["cache-key"]["disagree"], 0,
        "{tenant:#}"
    );
    assert_eq!(
        tenant["shadow"]["recent_disagreements"],
        serde_json::json!([])
    );
}

/// Cookie values are hidden in the kept disagreements however the plugin received them:
/// vcl-port keys pages on the `lang` cookie, whose quotes (`lang="..."`) the SDK's cookie
/// parser removes, and a quote inside a value is escaped in the record.
#[test]
fn quoted_cookie_values_never_reach_the_kept_disagreements() {
    let origin = origin();
    let proxy = Proxy::start("", &[tenant_with_shadow(&origin, &plugin("vcl-port"))]);
    for cookie in [r#"lang="SECRETQUOTED""#, r#"lang=ab"SECRETINSIDE"#] {
        let resp = send("GET", &proxy.url("/news"), &[("Cookie", cookie)]);
        assert_eq!(resp.status, 200);
    }
    let status = proxy.status();
    let recent = &status["tenants"][0]["shadow"]["recent_disagreements"];
    let keys: Vec<_> = recent
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["hook"] == "cache-key")
        .collect();
    assert_eq!(keys.len(), 2, "{recent:#}");
    let text = recent.to_string();
    assert!(!text.contains("SECRETQUOTED"), "{text}");
    assert!(!text.contains("SECRETINSIDE"), "{text}");
    assert!(text.contains("[hidden]"), "{text}");
}

/// The shadow decides on the request as the client sent it, not as the live plugin edited it:
/// static-assets (live) drops `utm_*` and sends the origin the cleaned query, and standard
/// (shadow) would key the query as sent. Shown the edited request, it agreed.
#[test]
fn the_shadow_judges_the_request_as_the_client_sent_it() {
    let origin = origin();
    let tenant = TenantSpec::new("site", origin.addr, &plugin("static-assets")).extra(&format!(
        "shadow_plugin = {:?}",
        plugin("standard").display().to_string()
    ));
    let proxy = Proxy::start("", &[tenant]);
    let resp = send("GET", &proxy.url("/a.css?utm_source=news&b=1"), &[]);
    assert_eq!(resp.status, 200);
    assert_eq!(origin.seen()[0].url, "/a.css?b=1", "the live plugin's edit");
    let status = proxy.status();
    let hooks = &status["tenants"][0]["shadow"]["hooks"];
    assert_eq!(hooks["cache-key"]["disagree"], 1, "{hooks:#}");
}

/// The backend a shadow names is judged as the live plugin's is: one that is none of the
/// tenant's `[tenant.backends]` is a fault (live, it would fail every such request), and
/// another one than the live plugin's is a disagreement. Both counted as agreeing, so a
/// shadow that would fault on promotion looked safe (probe AL).
#[test]
fn a_shadow_s_backend_is_checked_and_compared_like_the_live_plugin_s() {
    let origin = origin();
    let counts = |backend_route: &str| {
        let tenant = TenantSpec::new("site", origin.addr, &plugin("standard")).extra(&format!(
            "shadow_plugin = {:?}\n[tenant.backends]\napi = \"{}\"\n\
             [tenant.plugin_config]\nbackends = \"/api/={backend_route}\"",
            plugin("api-gateway").display().to_string(),
            origin.addr
        ));
        let proxy = Proxy::start("", &[tenant]);
        let resp = send("GET", &proxy.url("/api/items"), &[]);
        assert_eq!(resp.status, 200, "the shadow never changes the answer");
        let status = proxy.status();
        let shadow = status["tenants"][0]["shadow"].clone();
        let count = |result: &str| shadow["hooks"]["on-request"][result].as_u64().unwrap();
        (count("agree"), count("disagree"), count("fault"), shadow)
    };
    let (agree, disagree, fault, shadow) = counts("ghost");
    assert_eq!((agree, disagree, fault), (0, 0, 1), "{shadow:#}");
    let (agree, disagree, fault, shadow) = counts("api");
    assert_eq!((agree, disagree, fault), (0, 1, 0), "{shadow:#}");
    let recent = shadow["recent_disagreements"].to_string();
    assert!(recent.contains("backend"), "{recent}");
}

/// Promoting runs the checks every plugin going live gets: a shadow that cannot start
/// within the tenant's memory limit (static-assets-py's initial memory is far over 4 MiB)
/// is refused, and the live plugin keeps serving. It used to be made live, and every
/// request then failed.
#[test]
fn promote_refuses_a_shadow_that_cannot_start_within_the_tenants_limits() {
    let origin = origin();
    let proxy = Proxy::start(
        "",
        &[tenant_with_shadow(&origin, &plugin("static-assets-py")).limits("memory = \"4MiB\"")],
    );
    assert_eq!(send("GET", &proxy.url("/before"), &[]).status, 200);
    let (ok, out) = run_cachet(&["promote", "--config", &config_path(&proxy), "site"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("cannot start within") && out.contains("memory"),
        "{out}"
    );
    let tenant = &proxy.status()["tenants"][0];
    assert_eq!(tenant["promoted"], false, "{tenant:#}");
    assert_eq!(
        tenant["plugin"]["path"],
        plugin("standard").display().to_string()
    );
    assert_eq!(send("GET", &proxy.url("/after"), &[]).status, 200);
}
