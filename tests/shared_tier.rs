//! The shared tier (`[cache.shared]`): two real cachet processes and one real `redis-server`
//! on a loopback port. What one node fetched the other serves; purges on either reach both
//! within a second; a Redis outage fails no request, and sharing resumes when Redis is back.

mod support;

use std::time::{Duration, Instant};
use support::client::{send, Resp};
use support::origin::{Origin, Reply};
use support::proxy::{Proxy, TenantSpec};
use support::redis::{Redis, RedisTls};
use support::tls::TestCa;
use support::{free_port, plugin};

const TOKEN: &str = "shared-tier-token";

/// Bodies name the path, the language and how many times the origin was asked.
fn origin() -> Origin {
    let asked = std::sync::Mutex::new(std::collections::HashMap::<String, usize>::new());
    Origin::start(move |seen| {
        let n = {
            let mut asked = asked.lock().unwrap();
            let n = asked.entry(seen.url.clone()).or_default();
            *n += 1;
            *n
        };
        let lang = seen.header("accept-language").unwrap_or("-");
        let mut reply = Reply::ok(format!("{} in {lang} #{n}", seen.url))
            .header("Cache-Control", "public, max-age=300");
        if seen.url == "/vary" {
            reply = reply.header("Vary", "Accept-Language");
        }
        if seen.url == "/tagged" {
            reply = reply.header("Surrogate-Key", "t1");
        }
        reply
    })
}

fn node(origin: &Origin, redis_port: u16) -> Proxy {
    let proxy = node_with(origin, &format!("url = \"redis://127.0.0.1:{redis_port}\""));
    wait_connected(&proxy, true);
    proxy
}

/// A node whose `[cache.shared]` table holds `shared` (the url and any TLS keys).
fn node_with(origin: &Origin, shared: &str) -> Proxy {
    node_with_op_timeout(origin, shared, "200ms")
}

fn node_with_op_timeout(origin: &Origin, shared: &str, op_timeout: &str) -> Proxy {
    Proxy::start_with_server(
        &format!("admin_token = \"{TOKEN}\""),
        &format!(
            "max_bytes = \"16MiB\"\n[cache.shared]\n{shared}\nkey_prefix = \"test:\"\nop_timeout = \"{op_timeout}\"\n[plugins]\nwatch = false"
        ),
        &[TenantSpec::new("site", origin.addr, &plugin("standard"))],
    )
}

fn shared_stats(proxy: &Proxy) -> serde_json::Value {
    let mut request = ureq::get(&proxy.admin_url("/status")).timeout(Duration::from_secs(5));
    request = request.set("Authorization", &format!("Bearer {TOKEN}"));
    let status: serde_json::Value =
        serde_json::from_str(&request.call().unwrap().into_string().unwrap()).unwrap();
    let tiers = status["cache"]["tiers"]
        .as_array()
        .expect("cache.tiers")
        .clone();
    assert_eq!(tiers.len(), 1, "{tiers:?}");
    assert_eq!(tiers[0]["name"], "l2-shared");
    tiers[0].clone()
}

/// The node's `/metrics` text.
fn metrics(proxy: &Proxy) -> String {
    ureq::get(&proxy.admin_url("/metrics"))
        .set("Authorization", &format!("Bearer {TOKEN}"))
        .call()
        .unwrap()
        .into_string()
        .unwrap()
}

/// A connected node on `redis` with `line` in its `[cache.shared]` table.
fn node_with_line(origin: &Origin, redis: &Redis, line: &str) -> Proxy {
    let proxy = node_with(
        origin,
        &format!("url = \"redis://127.0.0.1:{}\"\n{line}", redis.port),
    );
    wait_connected(&proxy, true);
    proxy
}

/// Waits until the node is (or is no longer) subscribed to the purge channel.
fn wait_connected(proxy: &Proxy, connected: bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while shared_stats(proxy)["connected"] != connected {
        assert!(
            Instant::now() < deadline,
            "connected never became {connected}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Waits until the node has written `writes` objects to Redis (its writer is off the path).
fn wait_writes(proxy: &Proxy, writes: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while shared_stats(proxy)["writes"].as_u64().unwrap_or(0) < writes {
        assert!(
            Instant::now() < deadline,
            "shared writes never reached {writes}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Both nodes are asked for the same site, as behind a load balancer (the standard plugin
/// keys by host, and each node listens on its own port).
const HOST: (&str, &str) = ("Host", "shared.test");

fn get(proxy: &Proxy, path: &str, extra: &[(&str, &str)]) -> Resp {
    let started = Instant::now();
    let mut headers = vec![HOST];
    headers.extend_from_slice(extra);
    let resp = send("GET", &proxy.url(path), &headers);
    assert_eq!(resp.status, 200, "{path}: {}", resp.text());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{path} took {:?}",
        started.elapsed()
    );
    resp
}

/// PURGE `path` with the admin token, whatever it answers.
fn send_purge(proxy: &Proxy, path: &str, extra: &[(&str, &str)]) -> Resp {
    let auth = format!("Bearer {TOKEN}");
    let mut headers = vec![HOST, ("Authorization", auth.as_str())];
    headers.extend_from_slice(extra);
    send("PURGE", &proxy.url(path), &headers)
}

fn purge(proxy: &Proxy, path: &str, extra: &[(&str, &str)]) {
    let resp = send_purge(proxy, path, extra);
    assert_eq!(resp.status, 200, "PURGE {path}: {}", resp.text());
}

/// Runs `during` with `redis` stopped (SIGSTOP: connections open, nothing answered) and
/// started again `stopped` after it stopped, whether or not `during` is over by then.
fn with_redis_stopped_for<T>(redis: &Redis, stopped: Duration, during: impl FnOnce() -> T) -> T {
    redis.pause();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(stopped);
            redis.resume();
        });
        during()
    })
}

fn is_shared_hit(resp: &Resp) -> bool {
    let status = resp.cache_status();
    status.starts_with("cachet; hit") && status.ends_with(r#"detail="l2-shared""#)
}

fn is_l1_hit(resp: &Resp) -> bool {
    resp.cache_status().starts_with("cachet; hit") && !resp.cache_status().contains("detail")
}

/// Asks `proxy` for `path` until the answer is no longer a hit; returns how long that took.
fn time_until_not_hit(proxy: &Proxy, path: &str) -> Duration {
    let started = Instant::now();
    loop {
        let resp = get(proxy, path, &[]);
        if !resp.cache_status().contains("; hit") {
            let took = started.elapsed();
            eprintln!("purge of {path} seen by the other node after {took:?}");
            return took;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{path} still a hit after 3 s: {}",
            resp.cache_status()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Fills `path` on `a`, has `b` serve it from the shared tier, and checks both now hold it.
fn share(a: &Proxy, b: &Proxy, origin: &Origin, path: &str) {
    let before = origin.hits();
    let writes = shared_stats(a)["writes"].as_u64().unwrap();
    let filled = get(a, path, &[]);
    assert!(
        filled.cache_status().contains("fwd=miss"),
        "{}",
        filled.cache_status()
    );
    wait_writes(a, writes + 1);
    let shared = get(b, path, &[]);
    assert!(
        is_shared_hit(&shared),
        "{path} on B: {}\nB's shared tier: {}\n{}",
        shared.cache_status(),
        shared_stats(b),
        b.log()
    );
    assert_eq!(shared.text(), filled.text());
    assert!(is_l1_hit(&get(b, path, &[])), "promoted into B's L1");
    assert!(is_l1_hit(&get(a, path, &[])));
    assert_eq!(
        origin.hits(),
        before + 1,
        "the origin was asked once for {path}"
    );
}

#[test]
fn two_nodes_share_objects_variants_and_purges() {
    let redis = Redis::start_fresh();
    let origin = origin();
    let a = node(&origin, redis.port);
    let b = node(&origin, redis.port);

    share(&a, &b, &origin, "/obj");

    // Variants are shared per variant.
    let en = [("Accept-Language", "en")];
    let fr = [("Accept-Language", "fr")];
    let en_a = get(&a, "/vary", &en);
    wait_writes(&a, 2);
    let en_b = get(&b, "/vary", &en);
    assert!(is_shared_hit(&en_b), "{}", en_b.cache_status());
    assert_eq!(en_b.text(), en_a.text());
    let fr_b = get(&b, "/vary", &fr);
    assert!(
        fr_b.cache_status().contains("fwd=miss"),
        "{}",
        fr_b.cache_status()
    );
    assert!(fr_b.text().contains("in fr"), "{}", fr_b.text());

    // A URL purge on B drops A's L1 copy within a second.
    purge(&b, "/obj", &[]);
    let took = time_until_not_hit(&a, "/obj");
    assert!(
        took < Duration::from_secs(1),
        "A dropped /obj after {took:?}"
    );
    assert_eq!(origin.hits_for("/obj"), 2);

    // A tag purge on A reaches B.
    share(&a, &b, &origin, "/tagged");
    purge(&a, "/", &[("Surrogate-Key", "t1")]);
    let took = time_until_not_hit(&b, "/tagged");
    assert!(
        took < Duration::from_secs(1),
        "B dropped /tagged after {took:?}"
    );
    assert_eq!(origin.hits_for("/tagged"), 2);

    // A soft purge on B makes A revalidate.
    share(&a, &b, &origin, "/soft");
    purge(&b, "/soft", &[("Cache-Purge-Soft", "1")]);
    let took = time_until_not_hit(&a, "/soft");
    assert!(
        took < Duration::from_secs(1),
        "A revalidated /soft after {took:?}"
    );
    assert_eq!(origin.hits_for("/soft"), 2);

    for stats in [shared_stats(&a), shared_stats(&b)] {
        assert_eq!(stats["errors"], 0, "{stats}");
    }
    assert!(shared_stats(&b)["hits"].as_u64().unwrap() >= 3);
}

/// A purge made on another node reaches every `Vary` variant this node holds in memory, as
/// a purge made here does (hard and soft). It reached only the copy without variance, and
/// the other node went on serving its variants as fresh hits.
#[test]
fn a_purge_from_another_node_reaches_every_variant() {
    let redis = Redis::start_fresh();
    let origin = origin();
    let a = node(&origin, redis.port);
    let b = node(&origin, redis.port);
    let langs = [[("Accept-Language", "en")], [("Accept-Language", "fr")]];
    for soft in [&[][..], &[("Cache-Purge-Soft", "1")][..]] {
        for lang in &langs {
            get(&a, "/vary", lang);
            let held = get(&a, "/vary", lang);
            assert!(is_l1_hit(&held), "{lang:?}: {}", held.cache_status());
        }
        purge(&b, "/vary", soft);
        for lang in &langs {
            let started = Instant::now();
            loop {
                let resp = get(&a, "/vary", lang);
                if !resp.cache_status().contains("; hit") {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(1),
                    "{lang:?} after the purge {soft:?}: {}",
                    resp.cache_status()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// A node with a disk tier in `dir` in front of the shared tier, not yet waited for.
fn disk_and_shared_node(origin: &Origin, redis_port: u16, dir: &std::path::Path) -> Proxy {
    Proxy::start_with_server(
        &format!("admin_token = \"{TOKEN}\""),
        &format!(
            "max_bytes = \"16MiB\"\n[cache.disk]\npath = {:?}\nmax_bytes = \"64MiB\"\n\
             [cache.shared]\nurl = \"redis://127.0.0.1:{redis_port}\"\nkey_prefix = \"test:\"\n\
             op_timeout = \"200ms\"\n[plugins]\nwatch = false",
            dir.display().to_string(),
        ),
        &[TenantSpec::new("site", origin.addr, &plugin("standard"))],
    )
}

/// Waits until a node with a disk and a shared tier listens for purges.
fn wait_both_tiers_connected(proxy: &Proxy) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !proxy.status()["cache"]["tiers"][1]["connected"]
        .as_bool()
        .unwrap_or(false)
    {
        assert!(Instant::now() < deadline, "never connected to Redis");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Waits until a node's disk tier has taken `writes` objects.
fn wait_disk_writes(proxy: &Proxy, writes: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.status()["cache"]["tiers"][0]["writes"]
        .as_u64()
        .unwrap_or(0)
        < writes
    {
        assert!(
            Instant::now() < deadline,
            "the disk tier never took {writes}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What another node purges is kept on this node's disk tier too: restarted while Redis had
/// lost its marks, the node served the purged copies from disk (probe U).
#[test]
fn purges_from_another_node_hold_on_this_nodes_disk_across_a_restart() {
    let redis = Redis::start_fresh();
    let origin = origin();
    let dir = tempfile::tempdir().unwrap();
    let disk_node = || {
        let proxy = disk_and_shared_node(&origin, redis.port, dir.path());
        wait_both_tiers_connected(&proxy);
        proxy
    };
    let mut c = disk_node();
    let a = node(&origin, redis.port);
    for path in ["/obj", "/tagged"] {
        assert!(get(&c, path, &[]).text().ends_with("#1"));
    }
    wait_disk_writes(&c, 2);
    // The URL purge last: C applies purges in the order they were made, and that one
    // removes /obj from its disk (counted), so both are kept once it shows. C is not asked
    // meanwhile, so its disk keeps the copies filled before them.
    purge(&a, "/", &[("Surrogate-Key", "t1")]);
    purge(&a, "/obj", &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.status()["cache"]["tiers"][0]["removed"]
        .as_u64()
        .unwrap_or(0)
        == 0
    {
        assert!(Instant::now() < deadline, "C never applied the purges");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(c.interrupt(), "C stopped cleanly:\n{}", c.log());
    let client = redis::Client::open(format!("redis://127.0.0.1:{}", redis.port)).unwrap();
    let mut conn = client.get_connection().unwrap();
    let _: () = redis::cmd("FLUSHALL").query(&mut conn).unwrap();
    let c = disk_node();
    for path in ["/obj", "/tagged"] {
        let resp = get(&c, path, &[]);
        assert!(
            resp.text().ends_with("#2"),
            "{path} purged on A, served by C after its restart: {} {}",
            resp.cache_status(),
            resp.text()
        );
    }
}

/// Purges made while a node was down reach the copies its L1 took before it first heard of
/// them: restarted while Redis answers nothing, the node serves a tag-purged object from its
/// disk (it cannot know better yet) and promotes it into L1; once it listens for purges,
/// that L1 copy goes too. (Marks read on the first connection touched only L2 copies, and
/// the L1 copy was served until it expired.)
#[test]
fn purges_made_while_a_node_was_down_reach_what_its_l1_took_before_it_heard_them() {
    let redis = Redis::start_fresh();
    let origin = origin();
    let dir = tempfile::tempdir().unwrap();
    let mut c = disk_and_shared_node(&origin, redis.port, dir.path());
    wait_both_tiers_connected(&c);
    let a = node(&origin, redis.port);
    assert!(get(&c, "/tagged", &[]).text().ends_with("#1"));
    wait_disk_writes(&c, 1);
    assert!(c.interrupt(), "C stopped cleanly:\n{}", c.log());
    purge(&a, "/", &[("Surrogate-Key", "t1")]);
    // Until C has started (it waits up to 2 s for its shared tier's record of which hosts
    // each tenant served) and served and promoted its disk copy, however long that takes.
    redis.pause();
    let c = {
        let c = disk_and_shared_node(&origin, redis.port, dir.path());
        let from_disk = get(&c, "/tagged", &[]);
        assert!(
            from_disk.cache_status().contains(r#"detail="l2-disk""#),
            "{}",
            from_disk.cache_status()
        );
        assert!(is_l1_hit(&get(&c, "/tagged", &[])), "promoted into L1");
        c
    };
    redis.resume();
    wait_both_tiers_connected(&c);
    let after = get(&c, "/tagged", &[]);
    assert!(
        after.text().ends_with("#2"),
        "purged while C was down, still served by C once it listens: {} {}",
        after.cache_status(),
        after.text()
    );
}

/// A Redis that keeps its connections open but answers nothing (here stopped by SIGSTOP) has
/// not taken a purge: PURGE answers 503 once the purge timeout passes, as when Redis is
/// down. It answered 200 at once, and the purge was lost for the other nodes if Redis came
/// back empty (probe U).
#[test]
fn a_purge_a_hung_redis_does_not_take_is_a_503() {
    let redis = Redis::start_fresh();
    let origin = origin();
    let a = node(&origin, redis.port);
    get(&a, "/obj", &[]);
    redis.pause();
    let started = Instant::now();
    let hung = send_purge(&a, "/obj", &[]);
    let waited = started.elapsed();
    redis.resume();
    assert_eq!(hung.status, 503, "{}", hung.text());
    assert!(hung.text().contains("l2-shared"), "{}", hung.text());
    assert!(waited < Duration::from_secs(3), "answered after {waited:?}");
    // Memory was purged all the same, and an answering Redis takes the next one.
    assert!(get(&a, "/obj", &[]).cache_status().contains("fwd=miss"));
    purge(&a, "/obj", &[]);
}

/// A purge may wait for Redis up to a second (it is on no client's path): a Redis that answers
/// after 400 ms, longer than the lookups' `op_timeout` (200 ms here), has taken the purge and
/// PURGE says 200. The connection's own response bound was `op_timeout` and cut it short: 503.
#[test]
fn a_purge_waits_for_a_slow_redis_longer_than_a_lookup_would() {
    let redis = Redis::start_fresh();
    let origin = origin();
    let a = node(&origin, redis.port);
    get(&a, "/obj", &[]);
    let (purged, waited) = with_redis_stopped_for(&redis, Duration::from_millis(400), || {
        let started = Instant::now();
        let purged = send_purge(&a, "/obj", &[]);
        (purged, started.elapsed())
    });
    assert_eq!(purged.status, 200, "after {waited:?}: {}", purged.text());
    assert!(
        waited >= Duration::from_millis(400),
        "answered after {waited:?}"
    );
    assert!(get(&a, "/obj", &[]).cache_status().contains("fwd=miss"));
}

/// An object write waits for a slow Redis as a purge does (it is on no client's path): a
/// Redis that answers the write 500 ms late, longer than `op_timeout` (200 ms here), still
/// stores the object, and the other node serves it from the shared tier. The write used to
/// fail at `op_timeout`, and the object was never shared.
#[test]
fn a_fill_is_shared_even_when_redis_takes_its_write_late() {
    let redis = Redis::start_fresh();
    let origin = origin();
    let a = node(&origin, redis.port);
    let b = node(&origin, redis.port);
    with_redis_stopped_for(&redis, Duration::from_millis(700), || {
        // The lookup gives up after op_timeout and the origin answers; the write then
        // waits for Redis.
        let filled = get(&a, "/late", &[]);
        assert!(
            filled.cache_status().contains("fwd=miss"),
            "{}",
            filled.cache_status()
        );
    });
    wait_writes(&a, 1);
    let stats = shared_stats(&a);
    assert_eq!(stats["timeouts"], 1, "the lookup's only: {stats}");
    assert_eq!(stats["errors"], 1, "{stats}");
    let shared = get(&b, "/late", &[]);
    assert!(
        shared.cache_status().ends_with(r#"detail="l2-shared""#),
        "{}",
        shared.cache_status()
    );
    assert_eq!(shared.text(), "/late in - #1");
    assert_eq!(origin.hits_for("/late"), 1);
}

/// Each tier has its own write queue: while Redis holds every write for up to a second, the
/// disk tier of the same node keeps storing fills as they come. With one queue for both, each
/// object waited for the write before it to give up on Redis.
#[test]
fn a_slow_redis_does_not_hold_up_the_disk_tiers_writes() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start_fresh();
    let origin = origin();
    let node = Proxy::start_with_server(
        &format!("admin_token = \"{TOKEN}\""),
        &format!(
            "max_bytes = \"16MiB\"\n[cache.disk]\npath = {:?}\nmax_bytes = \"64MiB\"\n\
             [cache.shared]\nurl = \"redis://127.0.0.1:{}\"\nkey_prefix = \"test:\"\n\
             op_timeout = \"100ms\"\n[plugins]\nwatch = false",
            dir.path().join("disk").display().to_string(),
            redis.port
        ),
        &[TenantSpec::new("site", origin.addr, &plugin("standard"))],
    );
    let tier = |name: &str| {
        let status = node.status();
        let tiers = status["cache"]["tiers"].as_array().unwrap().clone();
        tiers.into_iter().find(|t| t["name"] == name).unwrap()
    };
    while tier("l2-shared")["connected"] != true {
        std::thread::sleep(Duration::from_millis(25));
    }
    redis.pause();
    for i in 0..5 {
        get(&node, &format!("/fill-{i}"), &[]);
    }
    let filled = Instant::now();
    while tier("l2-disk")["writes"].as_u64().unwrap() < 5 {
        assert!(
            filled.elapsed() < Duration::from_secs(1),
            "disk writes held up: {}",
            tier("l2-disk")
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(tier("l2-shared")["writes"], 0, "Redis is still stopped");
    redis.resume();
}

/// A Redis that answers nothing: a lookup waits `op_timeout` at most and is served from the
/// origin; the node counts it as a timeout (not only as an error) and says so in its log.
#[test]
fn a_lookup_a_hung_redis_does_not_answer_is_a_counted_timeout_and_a_miss() {
    let redis = Redis::start_fresh();
    let origin = origin();
    let a = node(&origin, redis.port);
    assert_eq!(shared_stats(&a)["timeouts"], 0);
    redis.pause();
    let started = Instant::now();
    let resp = get(&a, "/hung", &[]);
    let waited = started.elapsed();
    let stats = shared_stats(&a);
    redis.resume();
    assert!(
        resp.cache_status().contains("fwd=miss"),
        "{}",
        resp.cache_status()
    );
    assert_eq!(resp.text(), "/hung in - #1");
    // op_timeout is 200 ms here: the lookup waited for it, and no longer than it.
    assert!(
        waited >= Duration::from_millis(200),
        "answered after {waited:?}"
    );
    assert!(waited < Duration::from_secs(1), "answered after {waited:?}");
    let timeouts = stats["timeouts"].as_u64().unwrap();
    assert!(timeouts >= 1, "{stats}");
    assert!(stats["errors"].as_u64().unwrap() >= timeouts, "{stats}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !a.log().contains("tier lookups failing") {
        assert!(Instant::now() < deadline, "no warning in:\n{}", a.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    a.assert_logged(&["no answer within 200ms"]);
}

#[test]
fn a_redis_outage_fails_no_request_and_sharing_resumes() {
    let redis = Redis::start_fresh();
    let origin = origin();
    let a = node(&origin, redis.port);
    let b = node(&origin, redis.port);
    share(&a, &b, &origin, "/before");

    let port = redis.kill();
    wait_connected(&a, false);
    // Both nodes keep answering: L1 hits, and misses straight from the origin.
    for proxy in [&a, &b] {
        for _ in 0..5 {
            assert!(is_l1_hit(&get(proxy, "/before", &[])));
        }
        for i in 0..5 {
            let resp = get(proxy, &format!("/during-{i}"), &[]);
            assert!(resp.text().starts_with(&format!("/during-{i}")));
        }
    }
    assert!(shared_stats(&a)["errors"].as_u64().unwrap() > 0);
    // A purge cannot reach the other node: applied here, and said to be not kept.
    let refused = send_purge(&a, "/before", &[]);
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(
        refused.text().contains("Redis is not reachable"),
        "{}",
        refused.text()
    );
    assert!(!is_l1_hit(&get(&a, "/before", &[])));

    // Redis is back on the same port (empty): both nodes reconnect by themselves.
    let _redis = Redis::start(port);
    wait_connected(&a, true);
    wait_connected(&b, true);
    share(&a, &b, &origin, "/after");
    purge(&b, "/after", &[]);
    let took = time_until_not_hit(&a, "/after");
    assert!(
        took < Duration::from_secs(1),
        "A dropped /after after {took:?}"
    );
}

/// A purge made while Redis is down answers 503, and is not lost: once Redis is back the node
/// sends it again, so a node that kept its copy in memory meanwhile drops it (before, that
/// node served its copy until it expired).
#[test]
fn a_purge_made_while_redis_was_down_reaches_the_other_node_when_it_is_back() {
    let redis = Redis::start_fresh();
    let origin = origin();
    let a = node(&origin, redis.port);
    let b = node(&origin, redis.port);
    share(&a, &b, &origin, "/outage");

    let port = redis.kill();
    wait_connected(&a, false);
    let refused = send_purge(&a, "/outage", &[]);
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(
        refused.text().contains("sends it again"),
        "{}",
        refused.text()
    );
    // One purge per key the URL is stored under (each scheme's), kept as its delivery fails.
    wait_stat_at_least(&a, "purges_to_resend", 1);
    assert!(is_l1_hit(&get(&b, "/outage", &[])), "B has not heard yet");

    let _redis = Redis::start(port);
    wait_connected(&a, true);
    wait_connected(&b, true);
    time_until_not_hit(&b, "/outage");
    wait_nothing_to_resend(&a);
    assert_eq!(shared_stats(&a)["purges_not_resent"], 0);
    a.assert_logged(&["purges made here that Redis had not taken"]);
    assert_eq!(origin.hits_for("/outage"), 2, "B asked the origin again");
}

/// A node cut off from Redis while the others still reach it (a partition): its purge times
/// out (503) and is sent again once its purge channel notices and reconnects. The copy in Redis
/// is deleted then, and the node that kept its connection drops its memory copy.
#[test]
fn a_purge_a_partitioned_node_made_is_sent_again_after_it_reconnects() {
    let redis = Redis::start_fresh();
    let relay = SilentCutRelay::start(redis.port);
    let origin = origin();
    let a = node(&origin, relay.port);
    let b = node(&origin, redis.port);
    share(&a, &b, &origin, "/split");

    relay.cut_every_connection();
    let refused = send_purge(&a, "/split", &[]);
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(
        refused.text().contains("sends it again"),
        "{}",
        refused.text()
    );
    assert!(is_l1_hit(&get(&b, "/split", &[])), "B has not heard yet");

    // A's channel pings every 5 s; an unanswered ping makes it connect again.
    let cut_at = Instant::now();
    while is_l1_hit(&get(&b, "/split", &[])) {
        assert!(
            cut_at.elapsed() < Duration::from_secs(20),
            "the purge never reached B\nA: {}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("purge reached B {:?} after the cut", cut_at.elapsed());
    wait_nothing_to_resend(&a);
    // The purged copy is gone from Redis too: a new node is not served it.
    let c = node(&origin, redis.port);
    let resp = get(&c, "/split", &[]);
    assert!(!resp.text().ends_with("#1"), "{}", resp.text());
}

/// Waits until the node holds no purge to send again: a delivery that failed after the
/// node sent what it held is sent at the purge channel's next ping, within 5 s.
fn wait_nothing_to_resend(proxy: &Proxy) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while shared_stats(proxy)["purges_to_resend"] != 0 {
        assert!(
            Instant::now() < deadline,
            "purges still wait: {}",
            shared_stats(proxy)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the shared tier's `field` in `/status` reads `least` or more.
fn wait_stat_at_least(proxy: &Proxy, field: &str, least: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while shared_stats(proxy)[field].as_u64().unwrap_or(0) < least {
        assert!(
            Instant::now() < deadline,
            "{field} never reached {least}: {}",
            shared_stats(proxy)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Redis restarted from a snapshot taken before a purge has the purged copy back and its
/// mark gone. A node that was listening writes the marks it holds back into the set when it
/// finds another instance, so a node started afterwards does not serve the purged copy from
/// the shared tier (it read the set without the mark, and did).
#[test]
fn marks_lost_by_a_redis_back_from_an_older_snapshot_are_written_back_for_later_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().display().to_string();
    let redis = Redis::start_fresh_with(&["--dir", &data_dir]);
    let origin = origin();
    let a = node(&origin, redis.port);
    let writes = shared_stats(&a)["writes"].as_u64().unwrap();
    assert!(get(&a, "/x", &[]).cache_status().contains("fwd=miss"));
    wait_writes(&a, writes + 1);
    let () = redis::cmd("SAVE").query(&mut redis_conn(&redis)).unwrap();
    purge(&a, "/x", &[]);

    // Back from the snapshot: the copy is there again, the mark is not.
    let port = redis.kill();
    wait_connected(&a, false);
    let redis = Redis::start_with(port, &["--dir", &data_dir]);
    wait_connected(&a, true);

    let c = node(&origin, redis.port);
    let resp = get(&c, "/x", &[]);
    assert!(
        !is_shared_hit(&resp),
        "purged on A, served by C from the restored Redis: {} {}\nA: {}",
        resp.cache_status(),
        resp.text(),
        a.log()
    );
    assert!(resp.text().ends_with("#2"), "{}", resp.text());
    assert_eq!(origin.hits_for("/x"), 2);
}

/// `rediss://`: two nodes trusting the test CA share an object through a TLS-only
/// `redis-server`; a node trusting another CA never talks to it, and still answers from the
/// origin (each failed lookup counted as an error).
#[test]
fn nodes_share_over_tls_and_a_wrong_ca_shares_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("cachet test redis CA");
    let (cert, key) = ca.leaf(&["127.0.0.1"]).write(dir.path(), "redis");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let wrong_file = dir.path().join("wrong-ca.pem");
    std::fs::write(&wrong_file, TestCa::new("some other CA").pem()).unwrap();
    let redis = Redis::start_tls(
        free_port(),
        &RedisTls {
            cert: &cert,
            key: &key,
            ca: &ca_file,
        },
    );
    let shared = |ca: &std::path::Path| {
        format!(
            "url = \"rediss://127.0.0.1:{}\"\nca = {:?}",
            redis.port,
            ca.display().to_string()
        )
    };
    let origin = origin();
    let a = node_with(&origin, &shared(&ca_file));
    let b = node_with(&origin, &shared(&ca_file));
    wait_connected(&a, true);
    wait_connected(&b, true);
    share(&a, &b, &origin, "/over-tls");
    // Purges travel over the same TLS connections.
    purge(&b, "/over-tls", &[]);
    let took = time_until_not_hit(&a, "/over-tls");
    assert!(took < Duration::from_secs(1), "A dropped it after {took:?}");
    assert_eq!(origin.hits_for("/over-tls"), 2);
    for stats in [shared_stats(&a), shared_stats(&b)] {
        assert_eq!(stats["errors"], 0, "{stats}");
    }

    share(&a, &b, &origin, "/shared-again");
    let c = node_with(&origin, &shared(&wrong_file));
    let resp = get(&c, "/shared-again", &[]);
    assert!(
        resp.cache_status().contains("fwd=miss"),
        "a node that cannot verify Redis must not share: {}",
        resp.cache_status()
    );
    assert!(resp.text().starts_with("/shared-again"), "{}", resp.text());
    assert_eq!(origin.hits_for("/shared-again"), 2);
    let stats = shared_stats(&c);
    assert_eq!(stats["connected"], false, "{stats}");
    assert_eq!(stats["hits"], 0, "{stats}");
    assert!(stats["errors"].as_u64().unwrap() > 0, "{stats}");
    let names_it = |log: &str| log.contains("certificate") || log.contains("Certificate");
    let log = c.log_until(names_it);
    assert!(
        names_it(&log),
        "the log names the certificate problem:\n{log}"
    );
}

/// A client certificate for `rediss://` is checked at load like a served one: a bad pair is
/// refused naming the key (`tls_cert` or `tls_key`) and line of the file at fault; a matching
/// pair passes.
#[test]
fn a_redis_client_certificate_is_checked_before_serving() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("cachet test client CA");
    let (cert, key) = ca.leaf(&["cachet.test"]).write(dir.path(), "client");
    let (_, other_key) = ca.leaf(&["cachet.test"]).write(dir.path(), "other");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a pem file\n").unwrap();
    let validate = |cert: &std::path::Path, key: &std::path::Path| {
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:1\"\n\n[cache.shared]\nurl = \"rediss://127.0.0.1:2\"\ntls_cert = {:?}\ntls_key = {:?}\n\n[[tenant]]\nname = \"site\"\nhosts = [\"*\"]\nupstream = \"127.0.0.1:9\"\nplugin = \"builtin:standard\"\n",
            cert.display().to_string(),
            key.display().to_string()
        );
        let path = dir.path().join("cachet.toml");
        std::fs::write(&path, config).unwrap();
        support::proxy::run_cachet(&["validate", "--config", path.to_str().unwrap()])
    };
    // Refused, naming the config key and line that point at the file at fault, and why.
    let refused = |cert: &std::path::Path, key: &std::path::Path, expected: [&str; 3]| {
        let (ok, out) = validate(cert, key);
        assert!(!ok, "{out}");
        assert!(
            expected.iter().all(|e| out.contains(e)),
            "{expected:?}: {out}"
        );
    };
    // A key from another pair; a certificate file with no certificate; a key file with no key.
    let (cert_at, key_at) = (
        "cachet.toml:6: key `cache.shared.tls_cert`",
        "cachet.toml:7: key `cache.shared.tls_key`",
    );
    refused(&cert, &other_key, [key_at, "other.key", "does not go with"]);
    refused(&garbage, &key, [cert_at, "garbage.pem", "no certificate"]);
    refused(
        &cert,
        &garbage,
        [key_at, "garbage.pem", "no PEM private key"],
    );
    let (ok, out) = validate(&cert, &key);
    assert!(ok, "{out}");
}

/// A value damaged in Redis (one byte of its body flipped, as a bad replica or a broken proxy
/// in between would) is a miss: the other node fetches the object again, never serves or
/// promotes the damaged bytes, counts the value as corrupt and removes it.
#[test]
fn a_value_damaged_in_redis_is_a_miss_and_never_served() {
    let redis = Redis::start_fresh();
    let origin = origin();
    let a = node(&origin, redis.port);
    let b = node(&origin, redis.port);
    let filled = get(&a, "/damaged", &[]);
    wait_writes(&a, 1);

    let client = redis::Client::open(format!("redis://127.0.0.1:{}", redis.port)).unwrap();
    let mut conn = client.get_connection().unwrap();
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS").arg("test:o:*").query(&mut conn).unwrap();
    let body = filled.text();
    let damaged = keys.iter().find_map(|key| {
        let value: Vec<u8> = redis::cmd("GET").arg(key).query(&mut conn).unwrap();
        let at = value
            .windows(body.len())
            .position(|w| w == body.as_bytes())?;
        let flipped = value[at + 3] ^ 0xff;
        let _: usize = redis::cmd("SETRANGE")
            .arg(key)
            .arg(at + 3)
            .arg(&[flipped][..])
            .query(&mut conn)
            .unwrap();
        Some(key.clone())
    });
    let damaged = damaged.expect("the object is in Redis");

    let resp = get(&b, "/damaged", &[]);
    assert!(
        resp.cache_status().contains("fwd=miss"),
        "{}",
        resp.cache_status()
    );
    assert_eq!(resp.text(), "/damaged in - #2");
    assert_eq!(origin.hits_for("/damaged"), 2);
    let stats = shared_stats(&b);
    assert!(stats["corrupt"].as_u64().unwrap() >= 1, "{stats}");
    b.assert_logged(&["corrupt object removed"]);
    // What B promoted into its L1 is the origin's answer, not the damaged copy.
    let again = get(&b, "/damaged", &[]);
    assert!(is_l1_hit(&again), "{}", again.cache_status());
    assert_eq!(again.text(), "/damaged in - #2");
    // B removed the damaged value and stored its own fill in its place (or removed that
    // too, if the delete happened to land after it).
    wait_writes(&b, 1);
    let value: Option<Vec<u8>> = redis::cmd("GET").arg(&damaged).query(&mut conn).unwrap();
    assert!(
        value
            .as_ref()
            .is_none_or(|v| v.ends_with(b"/damaged in - #2")),
        "{:?}",
        value.map(|v| String::from_utf8_lossy(&v).into_owned())
    );
}

/// A record says which object it was written for: `/x`'s value copied onto `/y`'s name in
/// Redis (a mix-up, or a hand with write access) is refused by a node that never held either,
/// counted as corrupt and answered from the origin, never with `/x`'s body.
#[test]
fn a_value_copied_onto_another_objects_name_is_never_served_for_it() {
    let redis = Redis::start_fresh();
    let origin = origin();
    let a = node(&origin, redis.port);
    let x = get(&a, "/x", &[]).text();
    get(&a, "/y", &[]);
    wait_writes(&a, 2);

    let client = redis::Client::open(format!("redis://127.0.0.1:{}", redis.port)).unwrap();
    let mut conn = client.get_connection().unwrap();
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS").arg("test:o:*").query(&mut conn).unwrap();
    let values: Vec<Vec<u8>> = keys
        .iter()
        .map(|key| redis::cmd("GET").arg(key).query(&mut conn).unwrap())
        .collect();
    let holding = |body: &str| {
        let at = values
            .iter()
            .position(|v| v.ends_with(body.as_bytes()))
            .unwrap_or_else(|| panic!("{body} is in Redis"));
        (&keys[at], &values[at])
    };
    let (_, x_value) = holding(&x);
    let (y_key, _) = holding("/y in - #1");
    let _: () = redis::cmd("SET")
        .arg(y_key)
        .arg(x_value)
        .query(&mut conn)
        .unwrap();

    let c = node(&origin, redis.port);
    let resp = get(&c, "/y", &[]);
    assert!(
        resp.cache_status().contains("fwd=miss"),
        "{}",
        resp.cache_status()
    );
    assert_eq!(resp.text(), "/y in - #2", "never /x's body");
    assert_eq!(origin.hits_for("/y"), 2);
    let stats = shared_stats(&c);
    assert_eq!(stats["corrupt"], 1, "{stats}");
    c.assert_logged(&["written for another key"]);
    // `/x`'s own copy is still shared.
    let resp = get(&c, "/x", &[]);
    assert!(is_shared_hit(&resp), "{}", resp.cache_status());
    assert_eq!(resp.text(), x);
}

/// A soft URL purge keeps the shared copy and makes it stale: a node that never held the
/// object in memory revalidates the copy from Redis with a conditional request, instead of
/// fetching it whole.
#[test]
fn a_soft_url_purge_keeps_the_shared_copy_for_revalidation() {
    let redis = Redis::start_fresh();
    let origin = Origin::validating();
    let a = node(&origin, redis.port);
    let b = node(&origin, redis.port);
    let filled = get(&a, "/soft-url", &[]);
    wait_writes(&a, 1);

    purge(&b, "/soft-url", &[("Cache-Purge-Soft", "1")]);
    let resp = get(&b, "/soft-url", &[]);
    assert!(
        resp.cache_status().contains("fwd=stale"),
        "revalidated, not a miss: {}",
        resp.cache_status()
    );
    assert_eq!(resp.text(), filled.text());
    let asked = origin.seen();
    assert_eq!(asked.len(), 2, "{asked:?}");
    assert_eq!(asked[1].header("if-none-match"), Some("\"v1\""));
    assert!(is_l1_hit(&get(&b, "/soft-url", &[])));
}

/// An object larger than the shared tier takes (`max_object_bytes`) is not written, and is
/// counted: operators see why a tier stays empty.
#[test]
fn an_object_larger_than_the_tier_takes_is_counted_not_written() {
    let redis = Redis::start_fresh();
    let origin = origin();
    let proxy = node_with_line(&origin, &redis, "max_object_bytes = \"100B\"");
    assert_eq!(get(&proxy, "/big", &[]).status, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    while shared_stats(&proxy)["too_large"] != 1 {
        assert!(Instant::now() < deadline, "{}", shared_stats(&proxy));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(shared_stats(&proxy)["writes"], 0);
    let metrics = metrics(&proxy);
    assert!(
        metrics.contains("cachet_cache_tier_too_large_total{tier=\"l2-shared\"} 1"),
        "{metrics}"
    );
}

/// `/status` gives what Redis holds, not what this node wrote: objects another node stored
/// count, and after a `FLUSHALL` the figures fall to what is left (they only grew before:
/// probe Z saw 15,192 objects and 725 MiB while Redis held 2,469 keys and 135 MiB).
#[test]
fn the_shared_tiers_figures_are_what_redis_holds() {
    let redis = Redis::start_fresh();
    let origin = origin();
    let (a, b) = (node(&origin, redis.port), node(&origin, redis.port));
    for i in 0..6 {
        get(&a, &format!("/sized/{i}"), &[]);
    }
    wait_writes(&a, 6);
    // B wrote nothing, yet sees A's objects (sampled every 5 s).
    let sees = |proxy: &Proxy, at_least: u64, at_most: u64| {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let stats = shared_stats(proxy);
            let objects = stats["objects"].as_u64().unwrap_or(0);
            if (at_least..=at_most).contains(&objects) {
                return stats;
            }
            assert!(
                Instant::now() < deadline,
                "objects never within {at_least}..={at_most}: {stats}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let before = sees(&b, 6, 1000);
    assert_eq!(before["writes"].as_u64(), Some(0), "{before}");
    assert!(before["stored_bytes"].as_u64().unwrap_or(0) > 0, "{before}");
    let client = redis::Client::open(format!("redis://127.0.0.1:{}", redis.port)).unwrap();
    let mut conn = client.get_connection().unwrap();
    let _: () = redis::cmd("FLUSHALL").query(&mut conn).unwrap();
    sees(&a, 0, 0);
}

/// A TCP relay in front of Redis whose connections made so far can be cut without a word:
/// their bytes are swallowed both ways and they stay open, as a NAT or firewall that drops an
/// idle flow leaves them. Connections made after the cut flow normally.
struct SilentCutRelay {
    port: u16,
    cut: std::sync::Arc<std::sync::Mutex<Vec<std::sync::Arc<std::sync::atomic::AtomicBool>>>>,
}

impl SilentCutRelay {
    fn start(redis_port: u16) -> Self {
        use std::sync::atomic::AtomicBool;
        use std::sync::{Arc, Mutex};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let flags = cut.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", redis_port)) else {
                    continue;
                };
                let flag = Arc::new(AtomicBool::new(false));
                flags.lock().unwrap().push(flag.clone());
                let (client2, server2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                Self::pump(client, server, flag.clone());
                Self::pump(server2, client2, flag);
            }
        });
        Self { port, cut }
    }

    fn pump(
        mut from: std::net::TcpStream,
        mut to: std::net::TcpStream,
        cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) {
        use std::io::{Read, Write};
        std::thread::spawn(move || {
            let mut buf = [0u8; 16 << 10];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if !cut.load(std::sync::atomic::Ordering::SeqCst)
                    && to.write_all(&buf[..n]).is_err()
                {
                    return;
                }
            }
        });
    }

    fn cut_every_connection(&self) {
        for flag in self.cut.lock().unwrap().iter() {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// A node whose purge channel is cut without a word notices (it pings the channel), connects
/// again and applies the purges it missed: it went on serving purged copies from its memory,
/// its status saying it was connected.
#[test]
fn a_purge_channel_cut_without_a_word_is_noticed_and_its_missed_purges_applied() {
    let redis = Redis::start_fresh();
    let relay = SilentCutRelay::start(redis.port);
    let origin = origin();
    let a = node(&origin, relay.port);
    let b = node(&origin, redis.port);
    assert!(get(&a, "/cut", &[]).cache_status().contains("fwd=miss"));
    assert!(is_l1_hit(&get(&a, "/cut", &[])));

    relay.cut_every_connection();
    purge(&b, "/cut", &[]);
    let cut_at = Instant::now();
    loop {
        let resp = get(&a, "/cut", &[]);
        if !resp.cache_status().contains("; hit") {
            break;
        }
        assert!(
            cut_at.elapsed() < Duration::from_secs(20),
            "the purge never reached the node whose channel was cut: {}\n{}",
            resp.cache_status(),
            a.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("purge applied {:?} after the cut", cut_at.elapsed());
}

/// A connection on which Redis stops answering while the peer stays there and acknowledges
/// (a proxy in front of Redis whose backend is gone) is replaced after a few unanswered
/// lookups, and sharing resumes. The connection manager reconnects only when its connection
/// fails, so every lookup on it timed out for as long as the node ran.
#[test]
fn a_connection_left_unanswered_is_replaced_and_sharing_resumes() {
    let redis = Redis::start_fresh();
    let relay = SilentCutRelay::start(redis.port);
    let origin = origin();
    let a = node(&origin, relay.port);
    let b = node(&origin, redis.port);
    share(&b, &a, &origin, "/before-the-cut");
    // A lookup connection is made per worker thread on its first lookup: make them all
    // before the cut, or a worker's first one, made after it, would read for A untouched.
    for i in 0..16 {
        get(&a, &format!("/warm/{i}"), &[]);
    }

    relay.cut_every_connection();
    let cut_at = Instant::now();
    for i in 0.. {
        let path = format!("/after-the-cut/{i}");
        let writes = shared_stats(&b)["writes"].as_u64().unwrap();
        get(&b, &path, &[]);
        wait_writes(&b, writes + 1);
        if is_shared_hit(&get(&a, &path, &[])) {
            break;
        }
        assert!(
            cut_at.elapsed() < Duration::from_secs(20),
            "A never read the shared tier again: {}\n{}",
            shared_stats(&a),
            a.log()
        );
    }
    eprintln!("sharing resumed {:?} after the cut", cut_at.elapsed());
    let stats = shared_stats(&a);
    assert!(stats["reconnects"].as_u64().unwrap_or(0) >= 1, "{stats}");
    assert!(stats["timeouts"].as_u64().unwrap_or(0) >= 3, "{stats}");
}

/// A Redis that answers no one (paused) keeps the node's connections: a new one would not
/// answer either. A replacement is taken only once it answers; swapped in unconnected, every
/// lookup waited for its handshake, which under a CPU short of time made more timeouts.
#[test]
fn a_redis_that_answers_no_one_keeps_the_connections_it_has() {
    let redis = Redis::start_fresh();
    let origin = origin();
    let a = node(&origin, redis.port);
    wait_connected(&a, true);
    get(&a, "/before", &[]);
    redis.pause();
    // Both workers' lookup connections leave 3 lookups in a row unanswered (200 ms each).
    for i in 0..10 {
        get(&a, &format!("/paused/{i}"), &[]);
    }
    // Longer than a replacement's wait for its `PING`.
    std::thread::sleep(Duration::from_millis(1500));
    let stats = shared_stats(&a);
    redis.resume();
    assert!(stats["timeouts"].as_u64().unwrap_or(0) >= 6, "{stats}");
    assert_eq!(stats["reconnects"], 0, "{stats}");
    wait_connected(&a, true);
    let b = node(&origin, redis.port);
    share(&b, &a, &origin, "/after");
}

fn redis_conn(redis: &Redis) -> redis::Connection {
    let client = redis::Client::open(format!("redis://127.0.0.1:{}", redis.port)).unwrap();
    client.get_connection().unwrap()
}

/// Closes every node's purge channel (`CLIENT KILL TYPE pubsub`): each reconnects and reads
/// the kept marks again.
fn cut_purge_channels(conn: &mut redis::Connection) {
    let _: redis::Value = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query(conn)
        .unwrap();
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// A purge set kept full by ordinary traffic (every POST leaves a mark) does not make a node
/// that reconnects distrust every older copy: it heard those purges, and only one it missed
/// while cut off could have been dropped from the set. Each reconnect deleted every L2 copy
/// older than the set's oldest mark, for every tenant, from Redis for all nodes.
#[test]
fn a_reconnect_with_a_full_purge_set_keeps_the_copies_it_has_no_reason_to_doubt() {
    let redis = Redis::start_fresh();
    let origin = origin();
    let a = node(&origin, redis.port);
    let b = node(&origin, redis.port);
    let writes = shared_stats(&a)["writes"].as_u64().unwrap();
    assert!(get(&a, "/kept", &[]).cache_status().contains("fwd=miss"));
    wait_writes(&a, writes + 1);

    // Another tenant's marks, made after the copy was written: the set is full.
    let mut conn = redis_conn(&redis);
    let at = now_ns();
    let mut fill = redis::pipe();
    for i in 0..65_536u32 {
        let mark = format!(
            r#"{{"target":{{"tag":{{"partition":"other","tag":"t{i}"}}}},"at":{at},"soft":false}}"#
        );
        fill.cmd("ZADD")
            .arg("test:purges")
            .arg(at)
            .arg(mark)
            .ignore();
    }
    let () = fill.query(&mut conn).unwrap();
    // Heard from since (each node pings its channel every 5 s), long enough for the marks
    // to be older than the 10 s a node allows for clocks when it reconnects: then the
    // channel drops.
    std::thread::sleep(Duration::from_secs(17));
    let listening = || b.log().matches("listening for purges").count();
    let before = listening();
    cut_purge_channels(&mut conn);
    // B has noticed and subscribed again (reading the kept marks).
    let deadline = Instant::now() + Duration::from_secs(15);
    while listening() == before {
        assert!(Instant::now() < deadline, "no reconnection:\n{}", b.log());
        std::thread::sleep(Duration::from_millis(25));
    }
    wait_connected(&b, true);

    let resp = get(&b, "/kept", &[]);
    assert!(
        is_shared_hit(&resp),
        "{}\n{}",
        resp.cache_status(),
        shared_stats(&b)
    );
    assert_eq!(origin.hits_for("/kept"), 1);
}

/// A purge message dated far ahead of the node's clock (from a node whose clock is ahead, or a
/// forged one) is applied as dated when it arrives: it removes the copies made before it, and
/// a copy made after is shared again. Dropped, as it was, the other nodes kept serving what it
/// purged; dated as it says, it would hide every copy of its target until then.
#[test]
fn a_purge_dated_far_ahead_applies_as_of_its_arrival() {
    let redis = Redis::start_fresh();
    let origin = origin();
    let a = node(&origin, redis.port);
    let b = node(&origin, redis.port);
    share(&a, &b, &origin, "/tagged");
    let ahead = now_ns() + 3_600_000_000_000;
    let purge = format!(
        r#"{{"node":"elsewhere","purge":{{"target":{{"tag":{{"partition":"site","tag":"t1"}}}},"at":{ahead},"soft":false}}}}"#
    );
    let _: i64 = redis::cmd("PUBLISH")
        .arg("test:purges")
        .arg(purge)
        .query(&mut redis_conn(&redis))
        .unwrap();
    // Each node dates the purge as of its own arrival: one that hears it only after B's new
    // copy is written dates it after that copy and, rightly by its clock, shadows it too (a
    // clean-clone CI run saw A's delivery lag so). So A hears it first: its copy goes.
    support::wait_until("A heard the purge and dropped its copy", || {
        a.status()["cache"]["objects"].as_u64() == Some(0)
    });
    time_until_not_hit(&b, "/tagged");
    // B fetched it again, and wrote the new copy: A is served that copy from the shared tier.
    wait_writes(&b, 1);
    let fetches = origin.hits_for("/tagged");
    // A heard the purge too (its L1 copy goes), as soon as B did or nearly.
    let started = Instant::now();
    let resp = loop {
        let resp = get(&a, "/tagged", &[]);
        if !is_l1_hit(&resp) || started.elapsed() > Duration::from_secs(10) {
            break resp;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        is_shared_hit(&resp),
        "a copy made after the purge: {}\n{}",
        resp.cache_status(),
        shared_stats(&a)
    );
    assert_eq!(origin.hits_for("/tagged"), fetches);
}

/// A mark kept in Redis dated far ahead (a node whose clock is ahead made it, or someone wrote
/// it by hand) is applied as of now when a node reads it, and written back dated so. Left
/// dated ahead, every reconnection of every node dated it now again and applied it again: a
/// tag's mark emptied the tag from memory at each one, until real time reached its date.
#[test]
fn a_kept_purge_mark_dated_far_ahead_is_applied_once_and_dated_now_in_redis() {
    let redis = Redis::start_fresh();
    let origin = origin();
    let a = node(&origin, redis.port);
    assert!(get(&a, "/tagged", &[]).cache_status().contains("fwd=miss"));
    wait_writes(&a, 1);
    let mut conn = redis_conn(&redis);
    let ahead = now_ns() + 86_400_000_000_000;
    let mark = format!(
        r#"{{"target":{{"tag":{{"partition":"site","tag":"t1"}}}},"at":{ahead},"soft":false}}"#
    );
    let _: i64 = redis::cmd("ZADD")
        .arg("test:purges")
        .arg(ahead)
        .arg(&mark)
        .query(&mut conn)
        .unwrap();
    // The node reads the kept marks when it connects again.
    let listening = || a.log().matches("listening for purges").count();
    let before = listening();
    cut_purge_channels(&mut conn);
    let deadline = Instant::now() + Duration::from_secs(15);
    while listening() == before {
        assert!(Instant::now() < deadline, "no reconnection:\n{}", a.log());
        std::thread::sleep(Duration::from_millis(25));
    }
    wait_connected(&a, true);
    let resp = get(&a, "/tagged", &[]);
    assert!(
        resp.cache_status().contains("fwd=miss"),
        "the mark removed the copy made before it: {}",
        resp.cache_status()
    );
    let kept: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg("test:purges")
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query(&mut conn)
        .unwrap();
    let now = now_ns() as f64;
    assert!(
        !kept.is_empty() && kept.iter().all(|(_, at)| *at <= now),
        "marks still dated ahead: {kept:?}"
    );
    assert!(!kept.iter().any(|(m, _)| *m == mark), "{kept:?}");
}

/// A member of `<prefix>purges` that is not UTF-8 (anyone who can write to Redis can add one)
/// is skipped, as a mark that does not parse is. It failed the whole read of the kept marks:
/// no node ever listened, every PURGE answered 503 and no purge reached another node.
#[test]
fn a_purge_mark_that_is_not_utf8_stops_no_node_from_hearing_purges() {
    let redis = Redis::start_fresh();
    let _: i64 = redis::cmd("ZADD")
        .arg("test:purges")
        .arg(now_ns())
        .arg(&b"\xff\xfe not a mark"[..])
        .query(&mut redis_conn(&redis))
        .unwrap();
    let origin = origin();
    let a = node(&origin, redis.port);
    let b = node(&origin, redis.port);
    share(&a, &b, &origin, "/obj");
    purge(&b, "/obj", &[]);
    time_until_not_hit(&a, "/obj");
}

/// Something other than a sorted set at `<prefix>purges` (another program wrote there) is
/// removed when a node reads the kept marks, so nodes listen and purges are kept again. It
/// failed every node's read of them for good (WRONGTYPE), and every purge's `ZADD`.
#[test]
fn a_purge_set_overwritten_with_another_type_is_replaced() {
    let redis = Redis::start_fresh();
    let origin = origin();
    let a = node(&origin, redis.port);
    let b = node(&origin, redis.port);
    let mut conn = redis_conn(&redis);
    let () = redis::cmd("SET")
        .arg("test:purges")
        .arg("not a set")
        .query(&mut conn)
        .unwrap();
    // Both nodes read the kept marks again when their channel comes back.
    cut_purge_channels(&mut conn);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let kind: String = redis::cmd("TYPE")
            .arg("test:purges")
            .query(&mut conn)
            .unwrap();
        if kind != "string" {
            break;
        }
        assert!(Instant::now() < deadline, "never replaced:\n{}", a.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_connected(&a, true);
    wait_connected(&b, true);
    share(&a, &b, &origin, "/obj");
    purge(&b, "/obj", &[]);
    time_until_not_hit(&a, "/obj");
    let kept: u64 = redis::cmd("ZCARD")
        .arg("test:purges")
        .query(&mut conn)
        .unwrap();
    assert!(kept >= 1, "the purge's mark is kept");
}

/// A node that does not listen for purges reads no copy from the shared tier: a tag purge
/// leaves the copy in Redis with only its mark to hide it, and a node that has not read the
/// marks served it. Here a Redis user without rights on channels keeps the node from ever
/// subscribing, as a Redis that came back after the node started does until it subscribes.
/// Once it may, it reads the kept marks and serves the copies they leave.
#[test]
fn a_node_not_listening_for_purges_reads_no_copy_from_the_shared_tier() {
    let deaf = [
        "--user",
        "deaf",
        "on",
        ">secret",
        "~*",
        "resetchannels",
        "+@all",
    ];
    let redis = Redis::start_fresh_with(&deaf);
    let origin = origin();
    let a = node(&origin, redis.port);
    get(&a, "/tagged", &[]);
    get(&a, "/later", &[]);
    wait_writes(&a, 2);
    purge(&a, "/", &[("Surrogate-Key", "t1")]);

    let b = node_with(
        &origin,
        &format!("url = \"redis://deaf:secret@127.0.0.1:{}\"", redis.port),
    );
    let resp = get(&b, "/tagged", &[]);
    assert!(
        resp.cache_status().contains("fwd=miss") && resp.text().ends_with("#2"),
        "a tag-purged copy served by a node that never read the marks: {} {}",
        resp.cache_status(),
        resp.text()
    );
    let stats = shared_stats(&b);
    assert_eq!(stats["connected"], false, "{stats}");
    assert_eq!(stats["hits"], 0, "{stats}");

    let _: redis::Value = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("deaf")
        .arg("allchannels")
        .query(&mut redis_conn(&redis))
        .unwrap();
    wait_connected(&b, true);
    let resp = get(&b, "/later", &[]);
    assert!(is_shared_hit(&resp), "{}", resp.cache_status());
    assert_eq!(origin.hits_for("/later"), 1);
}

/// A tenant name kept for another site (none of its hosts kept) serves none of the old site's
/// copies in Redis, though another node wrote them: with a key that does not name the host
/// (the `path-key` fixture) they matched the new site's requests.
#[test]
fn a_tenant_name_kept_for_another_site_serves_none_of_its_shared_copies() {
    let (old_site, new_site) = (site("old site"), site("new site"));
    let redis = Redis::start_fresh();
    let start = || {
        let proxy = node_for_site(&redis, &[("site", &old_site, "old.test")]);
        wait_connected(&proxy, true);
        proxy
    };
    let (a, b) = (start(), start());
    let old_host = [("Host", "old.test")];
    assert_eq!(send("GET", &a.url("/page"), &old_host).text(), "old site");
    wait_writes(&a, 1);
    assert!(is_shared_hit(&send("GET", &b.url("/page"), &old_host)));

    let config = b.dir.path().join("cachet.toml");
    let moved = std::fs::read_to_string(&config)
        .unwrap()
        .replace("old.test", "new.test")
        .replace(&old_site.addr.to_string(), &new_site.addr.to_string());
    std::fs::write(&config, moved).unwrap();
    let reloaded = ureq::post(&b.admin_url("/reload"))
        .set("Authorization", &format!("Bearer {TOKEN}"))
        .timeout(Duration::from_secs(30))
        .call()
        .unwrap();
    assert_eq!(reloaded.status(), 200);

    let answer = send("GET", &b.url("/page"), &[("Host", "new.test")]);
    assert_eq!(answer.text(), "new site", "{}", answer.cache_status());
    assert_eq!(new_site.hits_for("/page"), 1);
}

/// A node that revalidates a copy only the shared tier holds (a large object, read in chunks
/// and not yet in its memory) writes it back with the 304's headers only if it is still the
/// copy that was revalidated. Another node that fetched a newer version meanwhile (another
/// length, another ETag) had written it under the same key: the 304's headers went out with
/// that version's body, to every node.
#[test]
fn a_304_for_an_older_copy_is_not_written_over_a_newer_one() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    // Over 1 MiB: chunked in Redis. L1 takes up to 2 MiB (`max_bytes` / 8).
    const OLDER: usize = 5 << 18;
    const NEWER: usize = 7 << 18;
    let redis = Redis::start_fresh();
    let conditionals = AtomicUsize::new(0);
    let origin = Origin::start(move |seen| {
        if seen.header("if-none-match").is_none() {
            return Reply::ok(vec![b'1'; OLDER])
                .header("ETag", "\"v1\"")
                .header("Cache-Control", "public, max-age=1");
        }
        if conditionals.fetch_add(1, SeqCst) == 0 {
            // A's revalidation: answered after B has fetched the next version.
            return Reply::ok("")
                .status(304)
                .header("ETag", "\"v1\"")
                .header("Cache-Control", "public, max-age=300")
                .delay(Duration::from_millis(1200));
        }
        Reply::ok(vec![b'2'; NEWER])
            .header("ETag", "\"v2\"")
            .header("Cache-Control", "public, max-age=300")
    });
    let large = format!(
        "url = \"redis://127.0.0.1:{}\"\nmax_object_bytes = \"4MiB\"",
        redis.port
    );
    let [a, b, c] = [(); 3].map(|_| node_with(&origin, &large));
    for node in [&a, &b, &c] {
        wait_connected(node, true);
    }
    let writes = shared_stats(&b)["writes"].as_u64().unwrap();
    assert_eq!(get(&b, "/page", &[]).body.len(), OLDER);
    wait_writes(&b, writes + 1);
    std::thread::sleep(Duration::from_millis(1500));

    // A holds no copy of its own: it revalidates the shared one, and waits for the origin.
    let revalidating = {
        let a_url = a.url("/page");
        std::thread::spawn(move || send("GET", &a_url, &[HOST]))
    };
    // A's conditional request is at the origin (answered 1.2 s later).
    let deadline = Instant::now() + Duration::from_secs(10);
    while conditionals_seen(&origin) == 0 {
        assert!(Instant::now() < deadline, "A never revalidated");
        std::thread::sleep(Duration::from_millis(10));
    }
    let writes = shared_stats(&b)["writes"].as_u64().unwrap();
    let newer = get(&b, "/page", &[]);
    assert_eq!(newer.body, vec![b'2'; NEWER]);
    wait_writes(&b, writes + 1);
    let revalidated = revalidating.join().unwrap();
    assert_eq!(revalidated.header("etag"), Some("\"v1\""));
    assert_eq!(
        revalidated.body.len(),
        OLDER,
        "{}",
        revalidated.cache_status()
    );
    assert_eq!(conditionals_seen(&origin), 2);
    // Whatever A's refresh did has reached Redis.
    std::thread::sleep(Duration::from_millis(500));

    let shared = send("GET", &c.url("/page"), &[HOST]);
    assert!(is_shared_hit(&shared), "{}", shared.cache_status());
    assert_eq!(shared.header("etag"), Some("\"v2\""));
    assert_eq!(shared.header("content-length"), Some(&*NEWER.to_string()));
    assert!(
        shared.body == vec![b'2'; NEWER],
        "{} bytes",
        shared.body.len()
    );
}

fn conditionals_seen(origin: &Origin) -> usize {
    origin
        .seen()
        .iter()
        .filter(|seen| seen.header("if-none-match").is_some())
        .count()
}

/// A TCP relay to `redis` whose connections accepted after `slow` is set wait `delay` before
/// anything passes: a Redis slow to take new connections (a busy host, a proxy in between).
/// Returns its port and how many connections it accepted.
fn relay(
    redis: u16,
    slow: std::sync::Arc<std::sync::atomic::AtomicBool>,
    delay: Duration,
) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::Ordering::SeqCst;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = accepted.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            counted.fetch_add(1, SeqCst);
            let wait = slow.load(SeqCst).then_some(delay);
            std::thread::spawn(move || {
                if let Some(wait) = wait {
                    std::thread::sleep(wait);
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", redis)) else {
                    return;
                };
                let pump = |mut from: TcpStream, mut to: TcpStream| {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    })
                };
                pump(client.try_clone().unwrap(), server.try_clone().unwrap());
                pump(server, client);
            });
        }
    });
    (port, accepted)
}

/// A node's first lookups do not wait for a worker thread's own Redis connection to be made:
/// where Redis is slow to take new connections (longer than `op_timeout`), they go through the
/// tier's connection, made at start, and find what another node stored. They used to be
/// misses, each waiting out `op_timeout` on the handshake.
#[test]
fn a_nodes_first_lookups_do_not_wait_for_a_new_connection() {
    use std::sync::atomic::Ordering::SeqCst;
    let redis = Redis::start_fresh();
    let origin = origin();
    let a = node(&origin, redis.port);
    let slow = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (relayed, accepted) = relay(redis.port, slow.clone(), Duration::from_millis(600));
    let b = node_with(&origin, &format!("url = \"redis://127.0.0.1:{relayed}\""));
    wait_connected(&b, true);
    // The purge channel's connection and the tier's own are made; new ones are slow now.
    let deadline = Instant::now() + Duration::from_secs(10);
    while accepted.load(SeqCst) < 2 {
        assert!(Instant::now() < deadline, "node b never connected twice");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    slow.store(true, SeqCst);
    for i in 0..4 {
        get(&a, &format!("/first-{i}"), &[]);
    }
    wait_writes(&a, 4);
    for i in 0..4 {
        let resp = get(&b, &format!("/first-{i}"), &[]);
        assert!(is_shared_hit(&resp), "lookup {i}: {}", resp.cache_status());
    }
    assert_eq!(origin.hits_for("/first-0"), 1);
}

/// A TCP relay to `redis` that passes what a node sends at once and, while `late` is set,
/// delays what Redis sends back by `delay`: a node that hears of purges late (a slow link, a
/// busy subscriber). Returns its port and how many reads from Redis it has held back.
fn late_answers_relay(
    redis: u16,
    delay: Duration,
    late: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::Ordering::SeqCst;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = held.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            let Ok(server) = TcpStream::connect(("127.0.0.1", redis)) else {
                return;
            };
            let (mut to_server, mut from_server) =
                (server.try_clone().unwrap(), server.try_clone().unwrap());
            let mut to_client = client.try_clone().unwrap();
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut client, &mut to_server);
                let _ = to_server.shutdown(std::net::Shutdown::Both);
            });
            let (queue, due) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
            let (late, counted) = (late.clone(), counted.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 << 10];
                while let Ok(n) = from_server.read(&mut buf) {
                    let wait = if late.load(SeqCst) {
                        counted.fetch_add(1, SeqCst);
                        delay
                    } else {
                        Duration::ZERO
                    };
                    let chunk = (Instant::now() + wait, buf[..n].to_vec());
                    if n == 0 || queue.send(chunk).is_err() {
                        break;
                    }
                }
            });
            std::thread::spawn(move || {
                for (at, bytes) in due {
                    std::thread::sleep(at.saturating_duration_since(Instant::now()));
                    if to_client.write_all(&bytes).is_err() {
                        break;
                    }
                }
                let _ = to_client.shutdown(std::net::Shutdown::Both);
                let _ = server.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    (port, held)
}

/// A stop that comes while a hit waits for Redis: the answer, given during the drain, says
/// `Connection: close`, as every answer in a drain does. It said keep-alive, and the
/// connection was closed at the next wait under a client about to reuse it.
#[test]
fn a_hit_read_from_redis_through_a_stop_ends_its_connection() {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    let redis = Redis::start_fresh();
    let origin = origin();
    let a = node(&origin, redis.port);
    let late = std::sync::Arc::new(AtomicBool::new(false));
    // Well inside the largest `op_timeout` (1 s), so a busy machine does not make it a miss.
    let (relayed, held) = late_answers_relay(redis.port, Duration::from_millis(400), late.clone());
    let b = node_with_op_timeout(
        &origin,
        &format!("url = \"redis://127.0.0.1:{relayed}\""),
        "1s",
    );
    wait_connected(&b, true);
    get(&a, "/stopping", &[]);
    wait_writes(&a, 1);
    // B's lookup connection is made (its first lookup takes the tier's own meanwhile).
    let _ = get(&b, "/warm-up", &[]);

    late.store(true, SeqCst);
    let held_before = held.load(SeqCst);
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", b.port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    conn.write_all(b"GET /stopping HTTP/1.1\r\nHost: shared.test\r\n\r\n")
        .unwrap();
    // The stop comes once the hit waits for Redis: its answer is held back in the relay.
    let deadline = Instant::now() + Duration::from_secs(10);
    while held.load(SeqCst) == held_before {
        assert!(Instant::now() < deadline, "B's lookup never reached Redis");
        std::thread::sleep(Duration::from_millis(5));
    }
    b.terminate();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut chunk).expect("the answer");
        assert!(n > 0, "closed without an answer");
        answer.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(head.contains(r#"detail="l2-shared""#), "{head}");
    assert!(head.contains("connection: close"), "{head}");
}

/// A copy is as old as the request for it: a node whose fill was under way when another node
/// purged the URL, and which heard of the purge only after the answer came, does not share
/// that answer as newer than the purge. (Dated when its head arrived, it outdated the purge,
/// and every node served the purged answer from the shared tier.)
#[test]
fn a_fill_under_way_when_another_node_purged_is_not_shared_as_newer() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
    let redis = Redis::start_fresh();
    let asked = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = asked.clone();
    let origin = Origin::start(move |_| {
        let n = counted.fetch_add(1, SeqCst) + 1;
        let reply = Reply::ok(format!("answer #{n}")).header("Cache-Control", "max-age=300");
        // The first answer takes a while: the purge is made meanwhile.
        if n == 1 {
            reply.delay(Duration::from_millis(1000))
        } else {
            reply
        }
    });
    let late = std::sync::Arc::new(AtomicBool::new(false));
    // A hears of the purge this long after it was made: ample time for its write to land first.
    let (relayed, _) = late_answers_relay(redis.port, Duration::from_secs(10), late.clone());
    let a = node_with(&origin, &format!("url = \"redis://127.0.0.1:{relayed}\""));
    wait_connected(&a, true);
    let b = node(&origin, redis.port);
    late.store(true, SeqCst);
    let (filled, purged_at) = std::thread::scope(|scope| {
        let filling = scope.spawn(|| send("GET", &a.url("/late"), &[HOST]));
        // After A's lookup (its L2 read times out at op_timeout: Redis answers it late) and
        // the start of its fetch (at the origin, answered 1 s later), before the answer.
        let deadline = Instant::now() + Duration::from_secs(10);
        while asked.load(SeqCst) == 0 {
            assert!(
                Instant::now() < deadline,
                "A's fetch never reached the origin"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        purge(&b, "/late", &[]);
        let purged_at = Instant::now();
        (filling.join().unwrap(), purged_at)
    });
    assert_eq!(filled.text(), "answer #1");
    // A's write reaches Redis at once (only its acknowledgement comes late); the purge
    // reaches A later.
    let client = redis::Client::open(format!("redis://127.0.0.1:{}", redis.port)).unwrap();
    let mut conn = client.get_connection().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let names: Vec<Vec<u8>> = redis::cmd("KEYS").arg("test:o:*").query(&mut conn).unwrap();
        if !names.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "A never wrote its copy");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        purged_at.elapsed() < Duration::from_secs(9),
        "A may have heard of the purge: too slow to show the race"
    );
    let from_b = get(&b, "/late", &[]);
    assert_eq!(
        from_b.text(),
        "answer #2",
        "B served A's answer fetched before its purge: {}",
        from_b.cache_status()
    );
    assert_eq!(asked.load(SeqCst), 2);
}

/// A burst of purges faster than a node applies them is not held without bound (redis-rs's
/// own pub/sub queue has none): past `purge_backlog` messages the node drops what it holds,
/// counts it, and reads the kept purges again, so a purge in the burst still reaches its L1.
/// The node is stalled (SIGSTOP) while the burst is sent, so it reads it all at once after.
#[test]
fn a_burst_of_purges_beyond_the_backlog_is_dropped_and_read_again_from_the_kept_ones() {
    let redis = Redis::start_fresh();
    let origin = origin();
    let a = node_with_line(&origin, &redis, "purge_backlog = 16");
    let b = node(&origin, redis.port);
    share(&a, &b, &origin, "/burst");

    a.pause();
    let mut conn = redis_conn(&redis);
    let mut burst = redis::pipe();
    for i in 0..2_000u32 {
        let message = format!(
            r#"{{"node":"elsewhere","purge":{{"target":{{"tag":{{"partition":"other","tag":"t{i}"}}}},"at":{},"soft":false}}}}"#,
            now_ns()
        );
        burst
            .cmd("PUBLISH")
            .arg("test:purges")
            .arg(message)
            .ignore();
    }
    let () = burst.query(&mut conn).unwrap();
    purge(&b, "/burst", &[]);
    // Longer than the second a node allows for a purge to reach it.
    std::thread::sleep(Duration::from_millis(1500));
    a.resume();

    let deadline = Instant::now() + Duration::from_secs(10);
    while shared_stats(&a)["purges_fell_behind"].as_u64().unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "{}", a.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    a.assert_logged(&["more than 16 purges arrived"]);
    wait_connected(&a, true);
    let resp = get(&a, "/burst", &[]);
    assert!(
        resp.cache_status().contains("fwd=miss"),
        "the purge made during the burst did not reach A's L1: {}",
        resp.cache_status()
    );
    assert_eq!(origin.hits_for("/burst"), 2);
    let metrics = metrics(&a);
    assert!(
        metrics.contains("cachet_cache_tier_purges_fell_behind_total{tier=\"l2-shared\"} 1"),
        "{metrics}"
    );
}

/// A node started with a tenant name that now serves another site than the one its copies in
/// Redis were written for (a config changed across a restart, or rolled out node by node)
/// serves none of them: Redis keeps the hosts each name served beside the copies. A node
/// started for the same site is served them.
#[test]
fn a_node_started_with_a_tenant_name_for_another_site_serves_none_of_its_shared_copies() {
    let (old_site, new_site) = (site("old site"), site("new site"));
    let redis = Redis::start_fresh();
    let start = |origin: &Origin, host: &str| {
        let proxy = node_for_site(&redis, &[("site", origin, host)]);
        wait_connected(&proxy, true);
        proxy
    };
    let a = start(&old_site, "old.test");
    let old_host = [("Host", "old.test")];
    assert_eq!(send("GET", &a.url("/page"), &old_host).text(), "old site");
    wait_writes(&a, 1);
    let same_site = start(&old_site, "old.test");
    assert!(is_shared_hit(&send(
        "GET",
        &same_site.url("/page"),
        &old_host
    )));

    let moved = start(&new_site, "new.test");
    let answer = send("GET", &moved.url("/page"), &[("Host", "new.test")]);
    assert_eq!(answer.text(), "new site", "{}", answer.cache_status());
    assert_eq!(new_site.hits_for("/page"), 1);
}

/// A tenant name removed by a reload and added back for another site serves none of the old
/// site's shared copies (only a name kept through one reload was checked).
#[test]
fn a_tenant_name_removed_and_added_back_for_another_site_serves_none_of_its_shared_copies() {
    let (old_site, new_site) = (site("old site"), site("new site"));
    let redis = Redis::start_fresh();
    let proxy = node_for_site(
        &redis,
        &[
            ("other", &old_site, "other.test"),
            ("site", &old_site, "old.test"),
        ],
    );
    wait_connected(&proxy, true);
    assert_eq!(
        send("GET", &proxy.url("/page"), &[("Host", "old.test")]).text(),
        "old site"
    );
    wait_writes(&proxy, 1);

    let config = proxy.dir.path().join("cachet.toml");
    let both = std::fs::read_to_string(&config).unwrap();
    let site_block = both
        .find("[[tenant]]\nname = \"site\"")
        .expect("site's table");
    let reload_with = |text: &str| {
        std::fs::write(&config, text).unwrap();
        let reloaded = ureq::post(&proxy.admin_url("/reload"))
            .set("Authorization", &format!("Bearer {TOKEN}"))
            .timeout(Duration::from_secs(30))
            .call()
            .unwrap();
        assert_eq!(reloaded.status(), 200);
    };
    reload_with(&both[..site_block]);
    assert_eq!(proxy.status()["tenants"].as_array().unwrap().len(), 1);
    reload_with(
        &both
            .replace("old.test", "new.test")
            .replace(&old_site.addr.to_string(), &new_site.addr.to_string()),
    );

    let answer = send("GET", &proxy.url("/page"), &[("Host", "new.test")]);
    assert_eq!(answer.text(), "new site", "{}", answer.cache_status());
    assert_eq!(new_site.hits_for("/page"), 1);
}

/// A node with a shared tier and one tenant per `(name, origin, host)`, keyed by path alone
/// (the `path-key` fixture), as many plugins key.
fn node_for_site(redis: &Redis, tenants: &[(&str, &Origin, &str)]) -> Proxy {
    let tenants: Vec<TenantSpec> = tenants
        .iter()
        .map(|(name, origin, host)| {
            TenantSpec::new(name, origin.addr, &support::fixture("path-key")).hosts(&[host])
        })
        .collect();
    Proxy::start_with_server(
        &format!("admin_token = \"{TOKEN}\""),
        &format!(
            "max_bytes = \"16MiB\"\n[cache.shared]\nurl = \"redis://127.0.0.1:{}\"\nkey_prefix = \"test:\"\n[plugins]\nwatch = false",
            redis.port
        ),
        &tenants,
    )
}

/// An origin for a site whose every answer is `body`, fresh for ten minutes.
fn site(body: &'static str) -> Origin {
    Origin::start(move |_| Reply::ok(body).header("Cache-Control", "max-age=600"))
}

/// A Redis whose maxmemory-policy evicts any key (allkeys-*) may evict the purge marks, which
/// have no expiry, and bring purged copies back: no copy is read from it, with an error in
/// the log, until the policy spares keys without an expiry (volatile-*).
#[test]
fn a_redis_that_may_evict_the_purge_marks_serves_no_copy() {
    let redis = Redis::start_fresh_with(&["--maxmemory-policy", "allkeys-lru"]);
    let origin = origin();
    let a = node(&origin, redis.port);
    let b = node(&origin, redis.port);
    wait_connected(&a, true);
    wait_connected(&b, true);
    get(&a, "/evictable", &[]);
    wait_writes(&a, 1);
    let resp = get(&b, "/evictable", &[]);
    assert!(!is_shared_hit(&resp), "{}", resp.cache_status());
    assert_eq!(origin.hits_for("/evictable"), 2);
    b.assert_logged(&["maxmemory-policy is allkeys-"]);

    let _: redis::Value = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("volatile-lru")
        .query(&mut redis_conn(&redis))
        .unwrap();
    // Read again from the next sample of Redis's settings (every 5 s).
    let deadline = Instant::now() + Duration::from_secs(15);
    for i in 2.. {
        let path = format!("/again{i}");
        get(&a, &path, &[]);
        wait_writes(&a, i);
        let resp = get(&b, &path, &[]);
        if is_shared_hit(&resp) {
            break;
        }
        assert!(Instant::now() < deadline, "{}", resp.cache_status());
        std::thread::sleep(Duration::from_millis(300));
    }
}
