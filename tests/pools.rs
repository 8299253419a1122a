//! Upstream pools: several origins per tenant, balanced, health-checked,
//! with failed connects retried on another origin.

mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::client::try_send;
use support::plugin;
use support::proxy::{Proxy, TenantSpec};

/// An origin that answers every request with its name, can fail its health
/// endpoint on demand, and can be stopped (listener and connections closed)
/// and started again on the same port.
struct NamedOrigin {
    name: &'static str,
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    healthy: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    /// Which paths it served, for the consistent-hashing test.
    served: Arc<parking_lot::Mutex<Vec<String>>>,
}

impl NamedOrigin {
    fn start(name: &'static str) -> Self {
        Self::start_on(name, "127.0.0.1:0".parse().unwrap())
    }

    fn start_on(name: &'static str, addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).expect("bind origin");
        let addr = listener.local_addr().unwrap();
        let origin = Self {
            name,
            addr,
            hits: Arc::default(),
            healthy: Arc::new(AtomicBool::new(true)),
            stop: Arc::default(),
            served: Arc::default(),
        };
        let (hits, healthy, stop, served) = (
            origin.hits.clone(),
            origin.healthy.clone(),
            origin.stop.clone(),
            origin.served.clone(),
        );
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (hits, healthy, stop, served) =
                    (hits.clone(), healthy.clone(), stop.clone(), served.clone());
                std::thread::spawn(move || serve(conn, name, &hits, &healthy, &stop, &served));
            }
        });
        origin
    }

    /// Closes the listener and every connection: connects are refused.
    fn stop(self) -> SocketAddr {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        // Connection threads notice within their 50 ms read timeout.
        std::thread::sleep(Duration::from_millis(200));
        self.addr
    }
}

fn serve(
    mut conn: TcpStream,
    name: &str,
    hits: &AtomicUsize,
    healthy: &AtomicBool,
    stop: &AtomicBool,
    served: &parking_lot::Mutex<Vec<String>>,
) {
    let _ = conn.set_read_timeout(Some(Duration::from_millis(50)));
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
        let (status, body) = if path == "/healthz" {
            if healthy.load(Ordering::SeqCst) {
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
    std::thread::sleep(Duration::from_millis(700));
    let (spread, failures) = traffic(&proxy, 20);
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(spread.get("a"), Some(&20), "{spread:?}");
    assert!(proxy.log().contains("failed its health check"));
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
    std::thread::sleep(Duration::from_millis(600));
    let before = b.hits.load(Ordering::SeqCst);
    let (spread, failures) = traffic(&proxy, 10);
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(spread.get("a"), Some(&10), "{spread:?}");
    assert_eq!(b.hits.load(Ordering::SeqCst), before);

    b.healthy.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(600));
    let (spread, _) = traffic(&proxy, 10);
    assert_eq!(spread.get("b"), Some(&5), "{spread:?}");
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
