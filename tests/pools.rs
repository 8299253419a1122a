//! Upstream pools: several origins per tenant, balanced, health-checked,
//! with failed connects retried on another origin.

mod support;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::client::try_send;
use support::plugin;
use support::proxy::{Proxy, TenantSpec};
use support::tls::TestCa;

/// An origin that answers every request with its name, can fail its health
/// endpoint on demand, and can be stopped (listener and connections closed)
/// and started again on the same port. Plain HTTP, or HTTPS with a
/// certificate made by the test.
struct NamedOrigin {
    name: &'static str,
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    /// Health check requests (`GET /healthz`) it answered.
    checks: Arc<AtomicUsize>,
    /// Connections it accepted.
    connections: Arc<AtomicUsize>,
    /// Its threads still running: the acceptor (holding the listener) and one per connection.
    running: Arc<AtomicUsize>,
    healthy: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    /// Which paths it served, for the consistent-hashing test.
    served: Arc<parking_lot::Mutex<Vec<String>>>,
    /// When set, the one site it serves by name: its health path answers 404 to any other
    /// `Host`, as a name-based server's default site would.
    site: Arc<parking_lot::Mutex<Option<String>>>,
}

impl NamedOrigin {
    fn start(name: &'static str) -> Self {
        Self::start_on(name, "127.0.0.1:0".parse().unwrap())
    }

    fn start_on(name: &'static str, addr: SocketAddr) -> Self {
        Self::start_with(name, addr, None)
    }

    /// An HTTPS origin presenting `cert` (every connection must complete a
    /// TLS handshake before its request is read).
    fn start_tls(
        name: &'static str,
        cert: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
    ) -> Self {
        let config = support::tls::server_config(cert);
        Self::start_with(name, "127.0.0.1:0".parse().unwrap(), Some(config))
    }

    fn start_with(
        name: &'static str,
        addr: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Self {
        let listener = TcpListener::bind(addr).expect("bind origin");
        let addr = listener.local_addr().unwrap();
        let origin = Self {
            name,
            addr,
            hits: Arc::default(),
            checks: Arc::default(),
            connections: Arc::default(),
            // The acceptor's.
            running: Arc::new(AtomicUsize::new(1)),
            healthy: Arc::new(AtomicBool::new(true)),
            stop: Arc::default(),
            served: Arc::default(),
            site: Arc::default(),
        };
        let counters = Counters {
            hits: origin.hits.clone(),
            checks: origin.checks.clone(),
            healthy: origin.healthy.clone(),
            stop: origin.stop.clone(),
            served: origin.served.clone(),
            site: origin.site.clone(),
        };
        let (connections, stop, running) = (
            origin.connections.clone(),
            origin.stop.clone(),
            origin.running.clone(),
        );
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                connections.fetch_add(1, Ordering::SeqCst);
                let _ = conn.set_read_timeout(Some(Duration::from_millis(50)));
                let (counters, tls, running) = (counters.clone(), tls.clone(), running.clone());
                running.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    match tls {
                        Some(config) => {
                            if let Ok(server) = rustls::ServerConnection::new(config) {
                                serve(rustls::StreamOwned::new(server, conn), name, &counters)
                            }
                        }
                        None => serve(conn, name, &counters),
                    }
                    running.fetch_sub(1, Ordering::SeqCst);
                });
            }
            drop(listener);
            running.fetch_sub(1, Ordering::SeqCst);
        });
        origin
    }

    /// Closes the listener and every connection: connects are refused.
    fn stop(self) -> SocketAddr {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        // Connection threads notice within their 50 ms read timeout, once scheduled: wait
        // until every thread has closed its socket, however busy the machine.
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.running.load(Ordering::SeqCst) > 0 {
            assert!(
                Instant::now() < deadline,
                "origin {} never stopped",
                self.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        self.addr
    }
}

/// What a [`NamedOrigin`]'s connections share.
#[derive(Clone)]
struct Counters {
    hits: Arc<AtomicUsize>,
    checks: Arc<AtomicUsize>,
    healthy: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    served: Arc<parking_lot::Mutex<Vec<String>>>,
    site: Arc<parking_lot::Mutex<Option<String>>>,
}

/// Serves one connection (its reads time out every 50 ms to notice `stop`).
fn serve(mut conn: impl Read + Write, name: &str, counters: &Counters) {
    let Counters {
        hits,
        checks,
        healthy,
        stop,
        served,
        site,
    } = counters;
    let mut buf = Vec::new();
    loop {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
                Err(_) => return,
            }
        }
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let path = head.split(' ').nth(1).unwrap_or("").to_owned();
        if path.starts_with("/crash") {
            // A query of death: the origin closes the connection on it, unanswered.
            hits.fetch_add(1, Ordering::SeqCst);
            return;
        }
        let host = head
            .lines()
            .find_map(|l| {
                l.strip_prefix("Host: ")
                    .or_else(|| l.strip_prefix("host: "))
            })
            .map(str::to_owned);
        let another_site = site
            .lock()
            .as_ref()
            .is_some_and(|site| host.as_ref() != Some(site));
        let (status, body) = if path == "/healthz" {
            checks.fetch_add(1, Ordering::SeqCst);
            if another_site {
                ("404 Not Found", "no such site".to_owned())
            } else if healthy.load(Ordering::SeqCst) {
                ("200 OK", "ok".to_owned())
            } else {
                ("503 Service Unavailable", "sick".to_owned())
            }
        } else {
            hits.fetch_add(1, Ordering::SeqCst);
            served.lock().push(path);
            ("200 OK", name.to_owned())
        };
        let reply = format!(
            "HTTP/1.1 {status}\r\nCache-Control: no-store\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if conn.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

fn pool_proxy(origins: &[SocketAddr], pool: &str) -> Proxy {
    let list: Vec<String> = origins.iter().map(|a| format!("\"{a}\"")).collect();
    Proxy::start(
        "",
        &[TenantSpec::new("site", origins[0], &plugin("standard"))
            .upstream_line(&format!("upstreams = [{}]", list.join(", ")))
            .extra(&format!("[tenant.pool]\n{pool}"))],
    )
}

/// Sends `count` GETs; returns (bodies by origin name, failures).
fn traffic(proxy: &Proxy, count: usize) -> (HashMap<String, usize>, Vec<String>) {
    let mut by_origin = HashMap::new();
    let mut failures = Vec::new();
    for i in 0..count {
        match try_send("GET", &proxy.url(&format!("/page/{i}")), &[]) {
            Ok(r) if r.status == 200 => *by_origin.entry(r.text()).or_insert(0) += 1,
            Ok(r) => failures.push(format!("{} {}", r.status, r.text())),
            Err(e) => failures.push(e),
        }
    }
    (by_origin, failures)
}

#[test]
fn a_stopped_upstream_costs_no_client_errors_and_gets_traffic_back_when_it_returns() {
    let a = NamedOrigin::start("a");
    let b = NamedOrigin::start("b");
    let proxy = pool_proxy(&[a.addr, b.addr], "health_interval = \"300ms\"");

    let (spread, failures) = traffic(&proxy, 20);
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(spread.get("a"), Some(&10), "round robin: {spread:?}");
    assert_eq!(spread.get("b"), Some(&10), "round robin: {spread:?}");

    // b goes away: a failed connect is retried on a at once, and after the
    // next check b is out of the rotation.
    let b_addr = b.stop();
    let (spread, failures) = traffic(&proxy, 20);
    assert!(failures.is_empty(), "{failures:?}\n{}", proxy.log());
    assert_eq!(spread.get("a"), Some(&20), "{spread:?}");
    // /status shows each upstream's verdict and when it was last checked.
    let health = |addr: SocketAddr| {
        let status = proxy.status();
        let pool = status["tenants"][0]["pool"].clone();
        assert!(pool["last_health_check"].as_u64().is_some(), "{pool}");
        pool["upstreams"]
            .as_array()
            .expect("pool.upstreams")
            .iter()
            .find(|u| u["address"] == addr.to_string())
            .map(|u| u["healthy"].clone())
            .unwrap_or_else(|| panic!("{addr} not in {pool}"))
    };
    wait_for("b failing its checks", || health(b_addr) == false);
    let (spread, failures) = traffic(&proxy, 20);
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(spread.get("a"), Some(&20), "{spread:?}");
    wait_for("the failed check logged", || {
        proxy.log().contains("failed its health check")
    });
    assert_eq!(health(b_addr), false);
    assert_eq!(health(a.addr), true);

    // b is back on the same port: traffic returns after a check.
    let b = NamedOrigin::start_on("b", b_addr);
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.hits.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "b never got traffic back");
        let (_, failures) = traffic(&proxy, 4);
        assert!(failures.is_empty(), "{failures:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (spread, _) = traffic(&proxy, 20);
    assert_eq!(spread.get("b"), Some(&10), "{spread:?}");
    assert_eq!(health(b_addr), true);
}

/// A refused connect means the origin got nothing: a POST is tried on another upstream too.
#[test]
fn a_post_whose_connect_is_refused_goes_to_another_upstream() {
    let a = NamedOrigin::start("a");
    let b = NamedOrigin::start("b");
    let proxy = pool_proxy(&[a.addr, b.addr], "health_interval = \"60s\"");
    b.stop();
    for i in 0..6 {
        let resp = try_send("POST", &proxy.url(&format!("/form/{i}")), &[]).unwrap();
        assert_eq!(
            (resp.status, resp.text()),
            (200, "a".to_owned()),
            "{}",
            proxy.log()
        );
    }
}

/// Upstreams that read a request (as an origin that then fails would) and close the
/// connection unanswered, counting the requests they were sent (a health check connects and
/// sends nothing).
fn dropping_upstreams(count: usize) -> (Vec<SocketAddr>, Arc<AtomicUsize>) {
    let requests = Arc::new(AtomicUsize::new(0));
    let addrs = (0..count)
        .map(|_| {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let requests = requests.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    let Ok(mut conn) = conn else { continue };
                    let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
                    if conn.read(&mut [0u8; 4096]).is_ok_and(|n| n > 0) {
                        requests.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
            addr
        })
        .collect();
    (addrs, requests)
}

/// An upstream that accepts connections and closes or resets them before answering passes a
/// bare connect check. It is set aside like one refusing connects, and a GET it dropped is
/// tried on another upstream: clients see no error. A POST it dropped may have been acted
/// on, so it is not sent again.
#[test]
fn an_upstream_that_drops_accepted_connections_costs_no_client_errors() {
    let a = NamedOrigin::start("a");
    let (droppers, dropped) = dropping_upstreams(1);
    let dropper_addr = droppers[0];
    // No health_path: the check is a connect, which the dropper passes.
    let proxy = pool_proxy(&[a.addr, dropper_addr], "health_interval = \"200ms\"");
    let (spread, failures) = traffic(&proxy, 20);
    assert!(failures.is_empty(), "{failures:?}\n{}", proxy.log());
    assert_eq!(spread.get("a"), Some(&20), "{spread:?}");
    assert!(
        dropped.load(Ordering::SeqCst) >= 1,
        "the dropper was never tried"
    );
    let before = dropped.load(Ordering::SeqCst);
    let mut posts = Vec::new();
    for i in 0..6 {
        posts.push(
            try_send("POST", &proxy.url(&format!("/form/{i}")), &[])
                .unwrap()
                .status,
        );
    }
    let dropped_posts = dropped.load(Ordering::SeqCst) - before;
    assert_eq!(
        posts.iter().filter(|&&s| s == 502).count(),
        dropped_posts,
        "a dropped POST is answered 502, never sent again: {posts:?}"
    );
}

/// Once every upstream of a pool has failed and is set aside, a request still tries one, but
/// only one: each request went through the whole pool again, waiting out a connect timeout
/// per member where they are unreachable, and sending the outage N times the load. Upstreams
/// that close connections unanswered are set aside after three in a row, and until then a
/// request they drop goes to two of them at most.
#[test]
fn a_pool_that_is_all_down_is_tried_once_per_request_not_member_by_member() {
    let (upstreams, requests) = dropping_upstreams(3);
    let proxy = pool_proxy(&upstreams, "health_interval = \"60s\"");
    // The first health round (bare connects, which these pass) is over before the traffic.
    first_health_round_over(&proxy);
    let sent = |path: &str| {
        let before = requests.load(Ordering::SeqCst);
        let status = try_send("GET", &proxy.url(path), &[]).unwrap().status;
        (status, requests.load(Ordering::SeqCst) - before)
    };
    // Nine drops set all three aside; each request makes one or two.
    let tries: Vec<_> = (0..12).map(|i| sent(&format!("/{i}"))).collect();
    assert!(tries.iter().all(|&(status, _)| status == 502), "{tries:?}");
    assert_eq!(tries[0].1, 2, "the first request goes on once: {tries:?}");
    assert!(
        tries.iter().all(|&(_, n)| (1..=2).contains(&n)),
        "{tries:?}"
    );
    assert_eq!(
        tries[9..].iter().map(|&(_, n)| n).collect::<Vec<_>>(),
        [1, 1, 1],
        "all set aside: one last try per request, then the 502: {tries:?}"
    );
}

/// A request every upstream closes the connection on (a query that crashes the origin) is
/// the request's doing, not the upstreams': replayed on every member, it set each aside, and
/// one such request per health interval kept the whole pool's traffic on one upstream. It
/// goes to two upstreams at most on fresh connections and sets none aside.
#[test]
fn a_request_every_upstream_drops_sets_none_of_them_aside() {
    let origins = [
        NamedOrigin::start("a"),
        NamedOrigin::start("b"),
        NamedOrigin::start("c"),
        NamedOrigin::start("d"),
    ];
    let addrs: Vec<SocketAddr> = origins.iter().map(|o| o.addr).collect();
    let proxy = pool_proxy(&addrs, "health_interval = \"60s\"");
    first_health_round_over(&proxy);
    let hits = || -> Vec<usize> {
        origins
            .iter()
            .map(|o| o.hits.load(Ordering::SeqCst))
            .collect()
    };
    for round in 0..2 {
        let before = hits();
        let crash = try_send("GET", &proxy.url(&format!("/crash/{round}")), &[]).unwrap();
        assert_eq!(crash.status, 502);
        let after = hits();
        let reached = before.iter().zip(&after).filter(|(b, a)| a > b).count();
        // Round 1 finds pooled connections: one closed on it is first sent again on a fresh
        // connection (a pooled one may have been closed while idle), to the pool's next
        // upstream, and that retry is not the request's move.
        let most = if round == 0 { 2 } else { 3 };
        assert!(
            (2..=most).contains(&reached),
            "round {round}: sent to {reached} upstreams: {before:?} {after:?}"
        );
        let (spread, failures) = traffic(&proxy, 8);
        assert!(failures.is_empty(), "{failures:?}\n{}", proxy.log());
        assert_eq!(spread.len(), 4, "round {round}: {spread:?}");
    }
    let status = proxy.status();
    let upstreams = status["tenants"][0]["pool"]["upstreams"]
        .as_array()
        .unwrap();
    assert_eq!(upstreams.len(), 4, "{status}");
    assert!(
        upstreams.iter().all(|u| u["set_aside"] == false),
        "{status}"
    );
}

/// With every upstream set aside after failed connects, requests still go to one; the one
/// that answers is back at once (it stayed marked until the next health check). `/status`
/// names the pool's upstreams, all of them.
#[test]
fn an_upstream_set_aside_is_back_when_it_answers() {
    let a = NamedOrigin::start("a");
    let b = NamedOrigin::start("b");
    let proxy = pool_proxy(&[a.addr, b.addr], "health_interval = \"60s\"");
    let status = proxy.status();
    assert_eq!(
        status["tenants"][0]["upstream"],
        format!("{}, {}", a.addr, b.addr),
        "{status}"
    );
    let (a_addr, b_addr) = (a.stop(), b.stop());
    let (_, failures) = traffic(&proxy, 2);
    assert_eq!(failures.len(), 2, "{failures:?}");
    let set_aside = |addr: SocketAddr| {
        proxy.status()["tenants"][0]["pool"]["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["address"] == addr.to_string())
            .map(|u| u["set_aside"] == true)
            .unwrap()
    };
    assert!(set_aside(a_addr) && set_aside(b_addr));
    let _a = NamedOrigin::start_on("a", a_addr);
    let _b = NamedOrigin::start_on("b", b_addr);
    let (spread, failures) = traffic(&proxy, 4);
    assert!(failures.is_empty(), "{failures:?}");
    for (name, addr) in [("a", a_addr), ("b", b_addr)] {
        if spread.contains_key(name) {
            assert!(!set_aside(addr), "{name} answered and is still set aside");
        }
    }
}

#[test]
fn an_http_health_check_takes_a_sick_upstream_out_and_puts_it_back() {
    let a = NamedOrigin::start("a");
    let b = NamedOrigin::start("b");
    let proxy = pool_proxy(
        &[a.addr, b.addr],
        "health_path = \"/healthz\"\nhealth_interval = \"200ms\"",
    );
    // b still serves, but says it is unwell: no traffic after a check.
    b.healthy.store(false, Ordering::SeqCst);
    let b_name = b.addr.to_string();
    let healthy = |name: &str| {
        pool_upstreams(&proxy)
            .into_iter()
            .any(|(address, healthy)| address == name && healthy)
    };
    wait_for("b failing its checks", || !healthy(&b_name));
    let before = b.hits.load(Ordering::SeqCst);
    let (spread, failures) = traffic(&proxy, 10);
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(spread.get("a"), Some(&10), "{spread:?}");
    assert_eq!(b.hits.load(Ordering::SeqCst), before);

    b.healthy.store(true, Ordering::SeqCst);
    wait_for("b passing its checks again", || healthy(&b_name));
    let (spread, _) = traffic(&proxy, 10);
    assert_eq!(spread.get("b"), Some(&5), "{spread:?}");
}

/// An origin that serves sites by name answers a health check for its default site, not the
/// tenant's: `health_host` names the site the checks ask for. Without it, each upstream's own
/// name is sent, and such origins all fail their checks.
#[test]
fn health_checks_ask_for_the_site_health_host_names() {
    let a = NamedOrigin::start("a");
    let b = NamedOrigin::start("b");
    for origin in [&a, &b] {
        *origin.site.lock() = Some("shop.example".into());
    }
    let checked_twice = |origins: [&NamedOrigin; 2], since: [usize; 2]| {
        origins
            .iter()
            .zip(since)
            .all(|(o, before)| o.checks.load(Ordering::SeqCst) >= before + 2)
    };
    let named = pool_proxy(
        &[a.addr, b.addr],
        "health_path = \"/healthz\"\nhealth_host = \"shop.example\"\nhealth_interval = \"200ms\"",
    );
    let since = [
        a.checks.load(Ordering::SeqCst),
        b.checks.load(Ordering::SeqCst),
    ];
    wait_for("two checks of each", || checked_twice([&a, &b], since));
    let upstreams = pool_upstreams(&named);
    assert!(
        upstreams.len() == 2 && upstreams.iter().all(|(_, healthy)| *healthy),
        "{upstreams:?}"
    );
    drop(named);
    let unnamed = pool_proxy(
        &[a.addr, b.addr],
        "health_path = \"/healthz\"\nhealth_interval = \"200ms\"",
    );
    wait_for("both judged unhealthy", || {
        let upstreams = pool_upstreams(&unnamed);
        upstreams.len() == 2 && upstreams.iter().all(|(_, healthy)| !*healthy)
    });
}

#[test]
fn consistent_hashing_sends_each_key_to_the_same_upstream() {
    let a = NamedOrigin::start("a");
    let b = NamedOrigin::start("b");
    let proxy = pool_proxy(&[a.addr, b.addr], "balance = \"consistent-hash\"");
    for _ in 0..3 {
        for i in 0..30 {
            let resp = try_send("GET", &proxy.url(&format!("/key/{i}")), &[]).unwrap();
            assert_eq!(resp.status, 200);
        }
    }
    let a_paths = a.served.lock().clone();
    let b_paths = b.served.lock().clone();
    // Each key went to one origin only, three times; both got a share.
    for path in &a_paths {
        assert!(!b_paths.contains(path), "{path} reached both origins");
        assert_eq!(a_paths.iter().filter(|p| *p == path).count(), 3);
    }
    assert!(!a_paths.is_empty() && !b_paths.is_empty());
    assert_eq!(a_paths.len() + b_paths.len(), 90);
    let _ = (a.name, b.name);
}

/// Each upstream of the pool's `/status` entry: (address, healthy).
fn pool_upstreams(proxy: &Proxy) -> Vec<(String, bool)> {
    let status = proxy.status();
    status["tenants"][0]["pool"]["upstreams"]
        .as_array()
        .expect("pool.upstreams")
        .iter()
        .map(|u| {
            (
                u["address"].as_str().unwrap_or_default().to_owned(),
                u["healthy"] == true,
            )
        })
        .collect()
}

/// Waits (up to 10 s) until the first round of health checks of the (first) tenant's pool
/// has ended: its verdicts (which lift set-asides made before it) are in.
fn first_health_round_over(proxy: &Proxy) {
    wait_for("the first health round", || {
        proxy.status()["tenants"][0]["pool"]["last_health_check"].is_u64()
    });
}

/// Waits (up to 10 s) until no tenant of `proxy` has an exchange with its origin in flight:
/// a request gives its origin turn back after its connection is back in the pool.
fn no_origin_exchange_in_flight(proxy: &Proxy) {
    wait_for("no origin exchange in flight", || {
        let status = proxy.status();
        let tenants = status["tenants"].as_array().expect("tenants");
        tenants.iter().all(|t| t["origin"]["in_flight"] == 0)
    });
}

/// Waits up to 10 s for `ready`, polling every 50 ms.
fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn health_checks_reach_https_upstreams_over_verified_tls() {
    let ca = TestCa::new("pool CA");
    let a = NamedOrigin::start_tls("a", ca.server_cert(&["127.0.0.1"]));
    let b = NamedOrigin::start_tls("b", ca.server_cert(&["127.0.0.1"]));
    // Serves, but with a certificate from a CA the tenant does not trust.
    let untrusted = TestCa::new("someone else's CA");
    let c = NamedOrigin::start_tls("c", untrusted.server_cert(&["127.0.0.1"]));
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("pool-ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let list: Vec<String> = [a.addr, b.addr, c.addr]
        .iter()
        .map(|addr| format!("\"https://{addr}\""))
        .collect();
    let proxy = Proxy::start(
        "",
        &[TenantSpec::new("site", a.addr, &plugin("standard"))
            .upstream_line(&format!("upstreams = [{}]", list.join(", ")))
            .extra(&format!(
                "upstream_ca = {:?}\n[tenant.pool]\nhealth_path = \"/healthz\"\nhealth_interval = \"200ms\"\nhealth_timeout = \"3s\"",
                ca_path.display().to_string()
            ))],
    );
    let healthy = |addr: SocketAddr| {
        pool_upstreams(&proxy)
            .into_iter()
            .find(|(address, _)| *address == addr.to_string())
            .unwrap_or_else(|| panic!("{addr} not in the pool"))
            .1
    };
    // The checks complete TLS handshakes and GET /healthz at a and b; c's
    // certificate is refused, so its check fails before any request.
    wait_for("checks at a and b", || {
        a.checks.load(Ordering::SeqCst) > 0 && b.checks.load(Ordering::SeqCst) > 0
    });
    wait_for("c taken out", || !healthy(c.addr));
    assert!(healthy(a.addr) && healthy(b.addr));
    assert_eq!(c.checks.load(Ordering::SeqCst), 0);
    let (spread, failures) = traffic(&proxy, 10);
    assert!(failures.is_empty(), "{failures:?}\n{}", proxy.log());
    assert_eq!(spread.get("a"), Some(&5), "{spread:?}");
    assert_eq!(spread.get("b"), Some(&5), "{spread:?}");

    // b answers its TLS check with 503: out after a check, back after one.
    b.healthy.store(false, Ordering::SeqCst);
    wait_for("b taken out", || !healthy(b.addr));
    let before = b.hits.load(Ordering::SeqCst);
    let (spread, failures) = traffic(&proxy, 10);
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(spread.get("a"), Some(&10), "{spread:?}");
    assert_eq!(b.hits.load(Ordering::SeqCst), before);
    b.healthy.store(true, Ordering::SeqCst);
    wait_for("b back", || healthy(b.addr));
    let (spread, _) = traffic(&proxy, 10);
    assert_eq!(spread.get("b"), Some(&5), "{spread:?}");
    assert_eq!(c.hits.load(Ordering::SeqCst), 0);
}

/// Starts cachet in a mount namespace of its own (`unshare`, util-linux)
/// where /etc/hosts is `hosts` and name lookups read files only (no DNS
/// query leaves the machine): the test renames addresses by rewriting
/// `hosts` in place, which the bind mount shows to cachet at once.
fn proxy_with_own_hosts_file(hosts: &std::path::Path, tenant: TenantSpec) -> Proxy {
    let nsswitch = hosts.with_file_name("nsswitch.conf");
    std::fs::write(&nsswitch, "hosts: files\n").unwrap();
    let script = format!(
        "mount --bind {:?} /etc/hosts && mount --bind {:?} /etc/nsswitch.conf && exec \"$0\" \"$@\"",
        hosts.display().to_string(),
        nsswitch.display().to_string()
    );
    let launcher: Vec<String> = [
        "unshare",
        "--user",
        "--map-root-user",
        "--mount",
        "sh",
        "-c",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([script])
    .collect();
    let probe = std::process::Command::new(&launcher[0])
        .args(&launcher[1..])
        .arg("true")
        .status();
    assert!(
        probe.is_ok_and(|s| s.success()),
        "this test needs unshare(1) (Debian util-linux) with user and mount namespaces"
    );
    Proxy::start_with_launcher(&launcher, "", "", &[tenant])
}

/// Three GETs one after another, each origin's answer (or the error): each finds the
/// previous one's connection back in cachet's pool, so only a new address opens a new
/// connection.
fn paced_traffic(proxy: &Proxy) -> Vec<String> {
    (0..3)
        .map(|i| {
            no_origin_exchange_in_flight(proxy);
            try_send("GET", &proxy.url(&format!("/paced/{i}")), &[])
                .map(|r| r.text())
                .unwrap_or_else(|e| e)
        })
        .collect()
}

#[test]
fn pool_names_are_resolved_again_every_resolve_interval() {
    let a = NamedOrigin::start("a");
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 origin.cachet.test\n").unwrap();
    let port = a.addr.port();
    let proxy = proxy_with_own_hosts_file(
        &hosts,
        TenantSpec::new("site", a.addr, &plugin("standard"))
            .upstream_line(&format!("upstreams = [\"origin.cachet.test:{port}\"]"))
            // One health check, at startup: afterwards only requests connect.
            .extra("[tenant.pool]\nresolve_interval = \"200ms\"\nhealth_interval = \"1h\""),
    );
    let addresses = || -> Vec<String> { pool_upstreams(&proxy).into_iter().map(|u| u.0).collect() };
    let paced_traffic = || paced_traffic(&proxy);
    assert_eq!(addresses(), [format!("127.0.0.1:{port}")]);
    // The startup check's connection, accepted before any request.
    wait_for("the startup check", || {
        proxy.status()["tenants"][0]["pool"]["last_health_check"].is_u64()
            && a.connections.load(Ordering::SeqCst) == 1
    });
    let connections = a.connections.load(Ordering::SeqCst);
    assert_eq!(paced_traffic(), ["a", "a", "a"], "{}", proxy.log());
    assert_eq!(a.connections.load(Ordering::SeqCst), connections + 1);
    let connections = connections + 1;

    // The name now gives the IPv4-mapped IPv6 form of the same loopback
    // address: another address to the pool, the same origin. The pool picks
    // it up and dials it: a new connection, the idle one to the old address
    // is not reused.
    std::fs::write(&hosts, "::ffff:127.0.0.1 origin.cachet.test\n").unwrap();
    let mapped = format!("[::ffff:127.0.0.1]:{port}");
    wait_for("the new address", || addresses() == [mapped.clone()]);
    assert_eq!(paced_traffic(), ["a", "a", "a"], "{}", proxy.log());
    assert_eq!(a.connections.load(Ordering::SeqCst), connections + 1);

    // The name stops resolving: the pool says so and keeps its address.
    std::fs::write(&hosts, "").unwrap();
    wait_for("a warning", || {
        proxy.log().contains("cannot re-resolve upstream")
    });
    assert_eq!(addresses(), [mapped]);
    let (spread, failures) = traffic(&proxy, 3);
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(spread.get("a"), Some(&3));
}

/// A single `upstream` given by name, outside any pool, is looked up again every
/// `[tenant.origin] resolve_interval` too (it was resolved once, at load, for good).
#[test]
fn a_single_upstream_name_is_resolved_again() {
    let a = NamedOrigin::start("a");
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 origin.cachet.test\n").unwrap();
    let port = a.addr.port();
    let proxy = proxy_with_own_hosts_file(
        &hosts,
        TenantSpec::new("site", a.addr, &plugin("standard"))
            .upstream_line(&format!("upstream = \"origin.cachet.test:{port}\""))
            .extra("[tenant.origin]\nresolve_interval = \"200ms\""),
    );
    let paced_traffic = || paced_traffic(&proxy);
    assert_eq!(paced_traffic(), ["a", "a", "a"], "{}", proxy.log());
    let connections = a.connections.load(Ordering::SeqCst);
    assert_eq!(connections, 1);

    // The name now gives another address of the same origin: it is dialled.
    std::fs::write(&hosts, "::ffff:127.0.0.1 origin.cachet.test\n").unwrap();
    wait_for("the new address", || {
        proxy.log().contains("upstream name re-resolved")
    });
    assert_eq!(paced_traffic(), ["a", "a", "a"], "{}", proxy.log());
    assert_eq!(a.connections.load(Ordering::SeqCst), connections + 1);

    // The name stops resolving: a warning, and the last address keeps serving.
    std::fs::write(&hosts, "").unwrap();
    wait_for("a warning", || {
        proxy.log().contains("cannot re-resolve upstream")
    });
    let (spread, failures) = traffic(&proxy, 3);
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(spread.get("a"), Some(&3));
}

/// One tenant's health check that hangs (an upstream that accepts and never answers, checked
/// with a long `health_timeout`) must not stop another tenant's checks: they keep their own
/// interval, and a sick upstream there is taken out as quickly as without the hanging one.
#[test]
fn a_hanging_health_check_does_not_hold_up_other_tenants_checks() {
    // Accepts connections (the kernel does) and never reads or answers them.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let ok = NamedOrigin::start("ok");
    let s = NamedOrigin::start("s");
    let t = NamedOrigin::start("t");
    let list = |addrs: &[SocketAddr]| {
        let quoted: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
        format!("upstreams = [{}]", quoted.join(", "))
    };
    let proxy = Proxy::start(
        "",
        &[
            TenantSpec::new("hanging", ok.addr, &plugin("standard"))
                .hosts(&["hanging.test"])
                .upstream_line(&list(&[silent_addr, ok.addr]))
                .extra(
                    "[tenant.pool]\nhealth_path = \"/healthz\"\nhealth_interval = \"1s\"\nhealth_timeout = \"8s\"",
                ),
            TenantSpec::new("busy", s.addr, &plugin("standard"))
                .hosts(&["busy.test"])
                .upstream_line(&list(&[s.addr, t.addr]))
                .extra("[tenant.pool]\nhealth_path = \"/healthz\"\nhealth_interval = \"200ms\""),
        ],
    );
    // The hanging tenant's first check has connected (taken here, never read) and hangs.
    silent.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let _hanging = loop {
        match silent.accept() {
            Ok((conn, _)) => break conn,
            Err(_) => {
                assert!(
                    Instant::now() < deadline,
                    "the hanging check never connected"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    let before = s.checks.load(Ordering::SeqCst);
    // A window of 3 s: at a 200 ms interval that is 15 checks, and 0 if they waited on the
    // hanging one (up to twice its 8 s health_timeout).
    std::thread::sleep(Duration::from_secs(3));
    let checked = s.checks.load(Ordering::SeqCst) - before;
    assert!(
        checked >= 5,
        "busy's upstream was checked {checked} times in 3 s at a 200 ms interval"
    );
    // A sick upstream of the busy tenant is out within a few of its intervals.
    t.healthy.store(false, Ordering::SeqCst);
    let sick_since = Instant::now();
    let busy_t_healthy = || {
        proxy.status()["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|tenant| tenant["name"] == "busy")
            .and_then(|tenant| tenant["pool"]["upstreams"].as_array().cloned())
            .unwrap()
            .iter()
            .any(|u| u["address"] == t.addr.to_string() && u["healthy"] == true)
    };
    wait_for("t taken out", || !busy_t_healthy());
    // A check or two (~300 ms), with slack for a busy machine; behind the hanging check it
    // would be 4 s or more.
    assert!(
        sick_since.elapsed() < Duration::from_millis(3000),
        "took {:?} to take a sick upstream out",
        sick_since.elapsed()
    );
    drop(silent);
}

/// A reload rebuilds a tenant's pool: an upstream its checks had taken out stays out in the
/// new pool until a check there passes it, rather than getting traffic until the first one.
#[test]
fn a_reload_keeps_a_failing_upstream_out() {
    let s = NamedOrigin::start("s");
    let t = NamedOrigin::start("t");
    let proxy = pool_proxy(
        &[s.addr, t.addr],
        "health_path = \"/healthz\"\nhealth_interval = \"200ms\"",
    );
    t.healthy.store(false, Ordering::SeqCst);
    wait_for("t taken out", || {
        pool_upstreams(&proxy)
            .iter()
            .any(|(addr, healthy)| *addr == t.addr.to_string() && !healthy)
    });
    let hits_before = t.hits.load(Ordering::SeqCst);
    let config = proxy.dir.path().join("cachet.toml");
    let original = std::fs::read_to_string(&config).unwrap();
    let edited = original.replace("health_interval = \"200ms\"", "health_interval = \"300ms\"");
    assert_ne!(original, edited);
    let applied_before = configs_applied(&proxy);
    std::fs::write(&config, edited).unwrap();
    // Traffic through the reload (seen applied, however long it takes) and, for 1 s after,
    // the new pool's first checks.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut applied_at: Option<Instant> = None;
    let (mut sent, mut sent_after) = (0, 0);
    while applied_at.is_none_or(|at| at.elapsed() < Duration::from_secs(1)) {
        assert!(Instant::now() < deadline, "no reload\n{}", proxy.log());
        let resp = try_send("GET", &proxy.url(&format!("/r/{sent}")), &[]).unwrap();
        assert_eq!((resp.status, resp.text()), (200, "s".to_owned()));
        sent += 1;
        match applied_at {
            Some(_) => sent_after += 1,
            None if configs_applied(&proxy) > applied_before => applied_at = Some(Instant::now()),
            None => {}
        }
    }
    proxy.assert_logged(&["config applied"]);
    assert!(
        sent_after >= 5,
        "only {sent_after} requests after the reload"
    );
    assert_eq!(t.hits.load(Ordering::SeqCst), hits_before);
}

/// `cachet_reloads_total{result="config-applied"}`: configs applied so far.
fn configs_applied(proxy: &Proxy) -> f64 {
    let metrics = support::client::send("GET", &proxy.admin_url("/metrics"), &[]).text();
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("cachet_reloads_total") && l.contains("result=\"config-applied\"")
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// A listener whose accept queue is full: the kernel drops new SYNs, so a connect to it
/// hangs until the connector gives up, as one to a host that is down does.
fn unanswering(addr: SocketAddr) -> (TcpListener, Vec<TcpStream>) {
    let listener = TcpListener::bind(addr).expect("bind the unanswering address");
    let mut held = Vec::new();
    for _ in 0..2000 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(conn) => held.push(conn),
            Err(_) => return (listener, held),
        }
    }
    panic!("the accept queue of {addr} never filled");
}

/// A single upstream name whose first address is down: the request that finds out waits out
/// its connect timeout and goes on to the next address, and later requests start there
/// instead of each waiting on the dead one again.
#[test]
fn a_dead_first_address_of_a_name_costs_one_connect_timeout_not_one_per_request() {
    let a = NamedOrigin::start_on("a", "127.0.0.2:0".parse().unwrap());
    let port = a.addr.port();
    let (_dead, _held) = unanswering(SocketAddr::from(([127, 0, 0, 1], port)));
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    // The resolver puts 127.0.0.1 first whatever the order here (the longest prefix it
    // shares with the source address).
    std::fs::write(
        &hosts,
        "127.0.0.1 origin.cachet.test\n127.0.0.2 origin.cachet.test\n",
    )
    .unwrap();
    let proxy = proxy_with_own_hosts_file(
        &hosts,
        TenantSpec::new("site", a.addr, &plugin("standard"))
            .upstream_line(&format!("upstream = \"origin.cachet.test:{port}\""))
            .extra("[tenant.origin]\nconnect_timeout = \"1500ms\""),
    );
    let timed = |i: usize| {
        let started = Instant::now();
        let answer = try_send("GET", &proxy.url(&format!("/dead-first/{i}")), &[])
            .map(|r| (r.status, r.text()));
        (answer, started.elapsed())
    };
    let (answer, took) = timed(0);
    assert_eq!(answer, Ok((200, "a".to_owned())), "{}", proxy.log());
    assert!(
        took >= Duration::from_millis(1500),
        "the first request took {took:?}: the name's first address was not the dead one"
    );
    for i in 1..4 {
        let (answer, took) = timed(i);
        assert_eq!(answer, Ok((200, "a".to_owned())), "{}", proxy.log());
        assert!(
            // Well below the connect timeout, so that a slow machine cannot fail it.
            took < Duration::from_millis(1000),
            "request {i} took {took:?}: it waited on the dead address again"
        );
    }
}
