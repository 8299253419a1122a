//! The connections to origins: timeouts and retries from the config, and
//! TLS to origins with certificate authorities made by the test.

mod support;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::client::{send, try_send};
use support::origin::{Origin, Reply};
use support::plugin;
use support::proxy::{Proxy, TenantSpec};
use support::tls::TestCa;

/// An origin whose keep-alive connections go stale: each connection answers
/// its first request (keeping the connection open) and closes without a
/// word when a second request arrives on it, as an origin does when its idle
/// timeout fires just as the proxy reuses the connection. A first request is
/// answered only once `together` connections are open (or after 10 s), so that
/// requests sent at once each hold a connection of their own on any machine.
struct StaleKeepAliveOrigin {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    /// Every request line received, answered or not.
    requests: Arc<parking_lot::Mutex<Vec<String>>>,
}

impl StaleKeepAliveOrigin {
    fn start(together: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let (conns, reqs) = (connections.clone(), requests.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let n = conns.fetch_add(1, Ordering::SeqCst) + 1;
                let (conns, reqs) = (conns.clone(), reqs.clone());
                std::thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                    let Some(first) = read_head(&mut conn) else {
                        return;
                    };
                    reqs.lock().push(first);
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while conns.load(Ordering::SeqCst) < together && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    let body = format!("connection {n}");
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if conn.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                    if let Some(second) = read_head(&mut conn) {
                        reqs.lock().push(second);
                    }
                    // Dropped: closed without an answer.
                });
            }
        });
        Self {
            addr,
            connections,
            requests,
        }
    }

    fn requests_for(&self, line_start: &str) -> usize {
        self.requests
            .lock()
            .iter()
            .filter(|l| l.starts_with(line_start))
            .count()
    }
}

/// Reads one request head (and its small body); returns the request line.
fn read_head(conn: &mut impl Read) -> Option<String> {
    read_whole_head(conn).map(|head| head.lines().next().unwrap_or_default().to_owned())
}

/// Reads one request (head and any `Content-Length` body) and returns its whole head.
fn read_whole_head(conn: &mut impl Read) -> Option<String> {
    let head = support::wire::read_request_head(conn)?;
    let head = String::from_utf8_lossy(&head).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    conn.read_exact(&mut body).ok()?;
    Some(head)
}

/// Pingora returns an origin connection to its pool only after the client has its answer; a
/// request sent at once may open a new connection instead. Tests about reuse wait for it: a
/// request gives its origin turn back (`in_flight` in /status) after its connection is pooled.
fn let_the_connection_return_to_the_pool(proxy: &Proxy) {
    no_origin_exchange_in_flight(proxy);
}

/// Waits (up to 10 s) until no tenant of `proxy` has an exchange with its origin in flight.
fn no_origin_exchange_in_flight(proxy: &Proxy) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = proxy.status();
        let tenants = status["tenants"].as_array().expect("tenants");
        if tenants.iter().all(|t| t["origin"]["in_flight"] == 0) {
            return;
        }
        assert!(Instant::now() < deadline, "still at the origin: {status}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn proxy_for(upstream: SocketAddr, origin_table: &str) -> Proxy {
    Proxy::start(
        "",
        &[TenantSpec::new("site", upstream, &plugin("standard"))
            .extra(&format!("[tenant.origin]\n{origin_table}"))],
    )
}

#[test]
fn a_request_failing_on_a_reused_connection_is_retried_once_on_a_fresh_one() {
    let origin = StaleKeepAliveOrigin::start(2);
    let proxy = proxy_for(origin.addr, "");
    // Two requests at once leave two idle, soon stale, pooled connections.
    let warm: Vec<_> = ["/warm1", "/warm2"]
        .iter()
        .map(|path| {
            let url = proxy.url(path);
            std::thread::spawn(move || try_send("GET", &url, &[]))
        })
        .collect();
    for client in warm {
        assert_eq!(client.join().unwrap().unwrap().status, 200);
    }
    assert_eq!(origin.connections.load(Ordering::SeqCst), 2);
    let_the_connection_return_to_the_pool(&proxy);

    // The GET lands on a stale connection and is retried once, on a new
    // connection rather than the other stale one.
    let resp = send("GET", &proxy.url("/page"), &[]);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.text(), "connection 3");
    assert_eq!(origin.requests_for("GET /page "), 2);
    assert_eq!(origin.connections.load(Ordering::SeqCst), 3);

    // A POST on the other stale connection is not retried: the origin may
    // have acted on it. The client gets the failure, the origin saw it once.
    let resp = send("POST", &proxy.url("/form"), &[]);
    assert_eq!(resp.status, 502, "{}", resp.text());
    assert_eq!(origin.requests_for("POST /form "), 1);
}

/// An origin that answers the first request on each connection and, on the second, sends a
/// cacheable head and half the body after `head_delay`, then closes.
fn start_cutting_origin(
    head_delay: Duration,
) -> (SocketAddr, Arc<parking_lot::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let seen = requests.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let seen = seen.clone();
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                let Some(first) = read_head(&mut conn) else {
                    return;
                };
                seen.lock().push(first);
                let reply =
                    "HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 2\r\n\r\nok";
                if conn.write_all(reply.as_bytes()).is_err() {
                    return;
                }
                let Some(second) = read_head(&mut conn) else {
                    return;
                };
                seen.lock().push(second);
                std::thread::sleep(head_delay);
                let head = "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 200000\r\n\r\n";
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(&[b'x'; 100_000]);
                // Dropped: the body is cut off.
            });
        }
    });
    (addr, requests)
}

/// A body cut off on a reused connection is not asked for again: the origin has answered, and
/// the cache fill it started (here for a client that left before the head) is abandoned.
#[test]
fn a_body_cut_off_on_a_reused_connection_is_not_retried() {
    let (addr, requests) = start_cutting_origin(Duration::from_millis(500));
    let proxy = proxy_for(addr, "");
    assert_eq!(send("GET", &proxy.url("/warm"), &[]).text(), "ok");
    let_the_connection_return_to_the_pool(&proxy);
    // The client leaves before the head arrives; the fill goes on without it.
    let url = proxy.url("/cut");
    let target = url.trim_start_matches("http://");
    let (authority, path) = target.split_once('/').unwrap();
    let mut client = TcpStream::connect(authority).unwrap();
    write!(client, "GET /{path} HTTP/1.1\r\nHost: {authority}\r\n\r\n").unwrap();
    let cut = || {
        requests
            .lock()
            .iter()
            .filter(|l| l.starts_with("GET /cut "))
            .count()
    };
    // Leaves once the request is at the origin (which answers 500 ms later), not before.
    let deadline = Instant::now() + Duration::from_secs(10);
    while cut() == 0 {
        assert!(Instant::now() < deadline, "/cut never reached the origin");
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(client);
    // The request has ended (the cut seen, any retry made) once its origin turn is back.
    no_origin_exchange_in_flight(&proxy);
    let cut = cut();
    assert_eq!(cut, 1, "{:?}", requests.lock());
    let log = proxy.log();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn read_and_total_timeouts_come_from_the_config() {
    let origin = Origin::start(|seen| match seen.url.as_str() {
        "/slow" => Reply::ok("late").delay(Duration::from_secs(3)),
        _ => Reply::ok("on time"),
    });
    let timed = |origin_table: &str| {
        let proxy = proxy_for(origin.addr, origin_table);
        assert_eq!(send("GET", &proxy.url("/quick"), &[]).text(), "on time");
        let started = Instant::now();
        let resp = send("GET", &proxy.url("/slow"), &[]);
        // cachet's own error answer is labelled like every response.
        assert!(
            resp.cache_status().starts_with("cachet; fwd="),
            "{:?}",
            resp.cache_status()
        );
        (resp.status, started.elapsed())
    };
    let (status, took) = timed("read_timeout = \"300ms\"");
    assert_eq!(status, 504);
    assert!(took < Duration::from_millis(2500), "{took:?}");
    // `/slow` went out on the connection `/quick` left in the pool, and was not sent again
    // after the timeout: the origin had it and was slow, not gone.
    assert_eq!(origin.hits_for("/slow"), 1);
    let (status, took) = timed("read_timeout = \"10s\"\ntotal_timeout = \"400ms\"");
    assert_eq!(status, 504);
    assert!(took < Duration::from_millis(2500), "{took:?}");
}

/// `total_timeout` holds while a request body goes to an origin that reads it slowly:
/// each write then finishes within `write_timeout`, so only the whole exchange's deadline
/// can end it (a 20 MB upload to an origin reading 1.3 MB/s took its full ~16 s).
#[test]
fn total_timeout_ends_an_upload_the_origin_reads_slowly() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = listener.local_addr().unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let counted = received.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let counted = counted.clone();
            std::thread::spawn(move || {
                let mut chunk = [0u8; 64 * 1024];
                // Reads at most 64 KiB every 50 ms, and never answers.
                while let Ok(n) = conn.read(&mut chunk) {
                    if n == 0 {
                        return;
                    }
                    counted.fetch_add(n, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
        }
    });
    let proxy = Proxy::start(
        "",
        &[
            TenantSpec::new("site", origin, std::path::Path::new("builtin:standard")).extra(
                "[tenant.origin]\nread_timeout = \"5s\"\nwrite_timeout = \"5s\"\ntotal_timeout = \"2s\"",
            ),
        ],
    );
    let body_len = 20 << 20;
    let mut client = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut uploader = client.try_clone().unwrap();
    let started = Instant::now();
    std::thread::spawn(move || {
        let head = format!(
            "POST /upload HTTP/1.1\r\nHost: site.test\r\nContent-Length: {body_len}\r\n\r\n"
        );
        let _ = uploader.write_all(head.as_bytes());
        let _ = uploader.write_all(&vec![b'x'; body_len]);
    });
    let mut answer = [0u8; 1024];
    let n = client.read(&mut answer).unwrap_or(0);
    let took = started.elapsed();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(
        answer.starts_with("HTTP/1.1 504 "),
        "{answer:?} after {took:?}"
    );
    assert!(took < Duration::from_secs(6), "answered after {took:?}");
    assert!(received.load(Ordering::SeqCst) < body_len);
}

/// `total_timeout` bounds waiting on the origin, and a body going into the cache is read at
/// the pace of the client that asked first: one slow client made a prompt origin miss the
/// deadline, the fill was cut, and a fast client reading the same fill as it was stored got
/// the same truncated 200. Now both get the whole body, and the origin was asked once.
#[test]
fn a_slow_client_does_not_cut_a_fill_at_total_timeout() {
    const SIZE: usize = 8 << 20;
    let body: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    let served = body.clone();
    let origin = Origin::start(move |_| {
        Reply::ok(served.clone()).header("Cache-Control", "public, max-age=300")
    });
    let proxy = Proxy::start(
        "max_bytes = \"64MiB\"\nmax_object_bytes = \"16MiB\"",
        &[TenantSpec::new("site", origin.addr, &plugin("standard"))
            .extra("[tenant.origin]\ntotal_timeout = \"1s\"")],
    );
    let request = "GET /big HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n";
    // Reads what its 16 KiB receive buffer holds (the kernel doubles it) every 20 ms: ~5 s
    // for the body.
    let slow = {
        let mut client = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
        let small: libc::c_int = 16 << 10;
        // SAFETY: setsockopt(2) on this open socket with a pointer to a live c_int.
        let set = unsafe {
            libc::setsockopt(
                client.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                std::ptr::addr_of!(small).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(set, 0, "SO_RCVBUF");
        client.write_all(request.as_bytes()).unwrap();
        std::thread::spawn(move || {
            client
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            let (mut got, mut chunk) = (Vec::new(), vec![0u8; 64 << 10]);
            while let Ok(n @ 1..) = client.read(&mut chunk) {
                got.extend_from_slice(&chunk[..n]);
                std::thread::sleep(Duration::from_millis(20));
            }
            got
        })
    };
    // The fast client comes once the slow one's fill is under way.
    let deadline = Instant::now() + Duration::from_secs(10);
    while origin.hits() == 0 {
        assert!(
            Instant::now() < deadline,
            "the slow client's miss never reached the origin"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut fast = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    fast.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    fast.write_all(request.as_bytes()).unwrap();
    let mut fast_got = Vec::new();
    let _ = fast.read_to_end(&mut fast_got);
    let slow_got = slow.join().unwrap();
    for (who, got) in [("fast", &fast_got), ("slow", &slow_got)] {
        let end = got
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a head")
            + 4;
        let head = String::from_utf8_lossy(&got[..end]);
        assert!(head.starts_with("HTTP/1.1 200 "), "{who}: {head}");
        assert!(
            got[end..] == body[..],
            "{who}: {} of {SIZE} body bytes\n{}",
            got.len() - end,
            proxy.log()
        );
    }
    assert_eq!(origin.hits(), 1);
}

/// A listener that never completes a handshake: its accept queue (backlog
/// 0) is filled by the test and never drained, so the kernel drops further
/// SYNs and a connect to it hangs until the connecting side gives up.
struct Blackhole {
    addr: SocketAddr,
    _listener: TcpListener,
    _queued: Vec<TcpStream>,
}

impl Blackhole {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // Listening again on a listening socket sets its backlog.
        // SAFETY: a valid socket descriptor owned by `listener`.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
        let mut queued = Vec::new();
        for _ in 0..8 {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                Ok(conn) => queued.push(conn),
                // The queue is full: connects now hang.
                Err(_) => {
                    return Self {
                        addr,
                        _listener: listener,
                        _queued: queued,
                    }
                }
            }
        }
        panic!("8 connects to a backlog-0 listener succeeded: no way to make a blackhole here");
    }
}

#[test]
fn a_connect_that_gets_no_answer_gives_up_after_connect_timeout() {
    let blackhole = Blackhole::start();
    let timed = |connect_timeout: &str| {
        let proxy = proxy_for(
            blackhole.addr,
            &format!("connect_timeout = {connect_timeout:?}"),
        );
        let started = Instant::now();
        let resp = send("GET", &proxy.url("/x"), &[]);
        (resp.status, started.elapsed(), proxy.log())
    };
    // The default (5 s) would be far longer than either bound.
    let (status, took, log) = timed("300ms");
    assert_eq!(status, 504, "{log}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1450),
        "{took:?}"
    );
    let (status, took, log) = timed("1500ms");
    assert_eq!(status, 504, "{log}");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(4),
        "{took:?}"
    );
}

/// Every client queued on the cache lock behind a revalidation that cannot reach the origin
/// gets the stale copy `stale-if-error` allows. Each took its turn at the origin and waited
/// out the connect timeout, and past the lock timeout the rest got 504s (probe AD). A failure
/// to reach the origin now answers for its key for 2 s; then the origin is asked again, even
/// under steady traffic (probe AE: the pause renewed itself).
#[test]
fn clients_queued_behind_an_unreachable_origin_get_the_stale_copy_and_it_is_asked_again_soon() {
    let origin = Origin::start(|_| {
        Reply::ok("good").header("Cache-Control", "max-age=1, stale-if-error=600")
    });
    let blackhole = Blackhole::start();
    let proxy = proxy_for(origin.addr, "connect_timeout = \"1s\"");
    let url = proxy.url("/queued");
    assert_eq!(send("GET", &url, &[]).text(), "good");
    let config = proxy.dir.path().join("cachet.toml");
    let healthy = std::fs::read_to_string(&config).unwrap();
    let upstream_is = |addr: SocketAddr| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while proxy.status()["tenants"][0]["upstream"] != addr.to_string() {
            assert!(
                Instant::now() < deadline,
                "the reload to {addr} never applied"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    std::fs::write(
        &config,
        healthy.replace(&origin.addr.to_string(), &blackhole.addr.to_string()),
    )
    .unwrap();
    upstream_is(blackhole.addr);
    std::thread::sleep(Duration::from_millis(1100));
    let started = Instant::now();
    // More clients than Pingora lets a request wait on the lock (`max_lock_retries`): each
    // must be served the stale copy, not handed the lock in turn.
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || send("GET", &url, &[]))
        })
        .collect();
    for client in clients {
        let resp = client.join().unwrap();
        assert_eq!(
            (resp.status, resp.text().as_str()),
            (200, "good"),
            "{}",
            resp.cache_status()
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // The origin back: under steady traffic it is asked again once the pause is over.
    std::fs::write(&config, &healthy).unwrap();
    upstream_is(origin.addr);
    let before = origin.hits();
    let back = Instant::now();
    while origin.hits() == before {
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "the origin was never asked again"
        );
        send("GET", &url, &[]);
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A keep-alive origin that counts the connections it accepted and those
/// its peer closed, and notes the `Host` of each request per connection.
struct ConnectionCountingOrigin {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    hosts_by_connection: Arc<Mutex<Vec<Vec<String>>>>,
}

impl ConnectionCountingOrigin {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let hosts_by_connection = Arc::new(Mutex::new(Vec::new()));
        let (acc, clo, hosts) = (
            accepted.clone(),
            closed.clone(),
            hosts_by_connection.clone(),
        );
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                acc.fetch_add(1, Ordering::SeqCst);
                let clo = clo.clone();
                let hosts = hosts.clone();
                let connection = {
                    let mut hosts = hosts.lock().unwrap();
                    hosts.push(Vec::new());
                    hosts.len() - 1
                };
                std::thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
                    while let Some(head) = read_whole_head(&mut conn) {
                        let host = head
                            .lines()
                            .find_map(|l| {
                                let (name, value) = l.split_once(':')?;
                                name.eq_ignore_ascii_case("host")
                                    .then(|| value.trim().to_owned())
                            })
                            .unwrap_or_default();
                        hosts.lock().unwrap()[connection].push(host);
                        let reply = "HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 6\r\n\r\nserved";
                        if conn.write_all(reply.as_bytes()).is_err() {
                            return;
                        }
                    }
                    clo.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            addr,
            accepted,
            closed,
            hosts_by_connection,
        }
    }
}

/// `idle_timeout = "0s"` keeps no origin connection, even for requests back to back.
#[test]
fn idle_timeout_zero_keeps_no_origin_connection() {
    let origin = ConnectionCountingOrigin::start();
    let proxy = proxy_for(origin.addr, "idle_timeout = \"0s\"");
    for i in 0..5 {
        assert_eq!(
            send("GET", &proxy.url(&format!("/{i}")), &[]).text(),
            "served"
        );
    }
    assert_eq!(origin.accepted.load(Ordering::SeqCst), 5);
}

/// Idle origin connections are pooled per tenant: a late, unasked response on one tenant's
/// connection can never be read as another tenant's answer and stored under its key.
#[test]
fn tenants_on_one_origin_do_not_share_its_connections() {
    let origin = ConnectionCountingOrigin::start();
    let proxy = Proxy::start(
        "",
        &[
            TenantSpec::new("a", origin.addr, &plugin("standard")).hosts(&["a.test"]),
            TenantSpec::new("b", origin.addr, &plugin("standard")).hosts(&["b.test"]),
        ],
    );
    for round in 0..3 {
        for host in ["a.test", "b.test"] {
            let resp = send("GET", &proxy.url(&format!("/{round}")), &[("Host", host)]);
            assert_eq!(resp.text(), "served");
            let_the_connection_return_to_the_pool(&proxy);
        }
    }
    let hosts_by_connection = origin.hosts_by_connection.lock().unwrap().clone();
    for hosts in &hosts_by_connection {
        assert!(
            hosts.iter().all(|host| host == &hosts[0]),
            "one origin connection carried two tenants' requests: {hosts_by_connection:?}"
        );
    }
    // Connections were kept and reused, so the check above had something to catch.
    assert!(
        hosts_by_connection.iter().any(|hosts| hosts.len() >= 2),
        "no origin connection was reused: {hosts_by_connection:?}"
    );
    assert!(hosts_by_connection.iter().flatten().any(|h| h == "a.test"));
    assert!(hosts_by_connection.iter().flatten().any(|h| h == "b.test"));
}

#[test]
fn an_idle_origin_connection_is_closed_after_idle_timeout() {
    // Kept for 10 s: a request 700 ms later reuses the connection.
    let origin = ConnectionCountingOrigin::start();
    let proxy = proxy_for(origin.addr, "idle_timeout = \"10s\"");
    assert_eq!(send("GET", &proxy.url("/a"), &[]).text(), "served");
    let_the_connection_return_to_the_pool(&proxy);
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(send("GET", &proxy.url("/b"), &[]).text(), "served");
    assert_eq!(origin.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(origin.closed.load(Ordering::SeqCst), 0);

    // Kept for 300 ms: the origin sees cachet close the idle connection
    // then (not at once), and the next request opens a new one.
    let origin = ConnectionCountingOrigin::start();
    let proxy = proxy_for(origin.addr, "idle_timeout = \"300ms\"");
    assert_eq!(send("GET", &proxy.url("/a"), &[]).text(), "served");
    let answered = Instant::now();
    while origin.closed.load(Ordering::SeqCst) == 0 {
        assert!(
            answered.elapsed() < Duration::from_secs(10),
            "the idle connection was not closed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let closed_after = answered.elapsed();
    // Measured on the client side: the idle timer may start a little earlier.
    assert!(
        closed_after >= Duration::from_millis(150),
        "{closed_after:?}"
    );
    assert_eq!(send("GET", &proxy.url("/b"), &[]).text(), "served");
    assert_eq!(origin.accepted.load(Ordering::SeqCst), 2);
}

/// An HTTPS origin on 127.0.0.1 (rustls), recording the server name each
/// connection asked for.
struct TlsOrigin {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    server_names: Arc<parking_lot::Mutex<Vec<Option<String>>>>,
}

impl TlsOrigin {
    fn start(cert: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)) -> Self {
        let config = support::tls::server_config(cert);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let server_names = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let (reqs, names) = (requests.clone(), server_names.clone());
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { return };
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
                let (config, reqs, names) = (config.clone(), reqs.clone(), names.clone());
                std::thread::spawn(move || {
                    let conn = rustls::ServerConnection::new(config).unwrap();
                    let mut tls = rustls::StreamOwned::new(conn, tcp);
                    while read_head(&mut tls).is_some() {
                        if reqs.fetch_add(1, Ordering::SeqCst) == 0 || names.lock().is_empty() {
                            names.lock().push(tls.conn.server_name().map(str::to_owned));
                        }
                        let body = "sent over tls";
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if tls.write_all(reply.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            requests,
            server_names,
        }
    }
}

/// A proxy whose tenant's upstream line is `upstream_line`, with extra tenant lines.
fn proxy_with_upstream(upstream_line: &str, tenant_lines: &str) -> Proxy {
    // The address is not used: the upstream line replaces it.
    let unused: SocketAddr = "127.0.0.1:9".parse().unwrap();
    Proxy::start(
        "",
        &[TenantSpec::new("site", unused, &plugin("standard"))
            .upstream_line(upstream_line)
            .extra(tenant_lines)],
    )
}

fn write_ca(proxy_dir: &std::path::Path, ca: &TestCa) -> String {
    let path = proxy_dir.join("origin-ca.pem");
    std::fs::write(&path, ca.pem()).unwrap();
    path.display().to_string()
}

#[test]
fn an_https_origin_is_verified_against_the_tenants_ca_with_its_name_as_sni() {
    let first = std::net::ToSocketAddrs::to_socket_addrs(&("localhost", 0u16))
        .ok()
        .and_then(|mut addrs| addrs.next())
        .expect("localhost resolves");
    assert_eq!(
        first.ip().to_string(),
        "127.0.0.1",
        "this test needs localhost to resolve to 127.0.0.1 first"
    );
    let ca = TestCa::new("cachet test CA");
    let origin = TlsOrigin::start(ca.server_cert(&["localhost"]));
    let dir = tempfile::tempdir().unwrap();
    let ca_path = write_ca(dir.path(), &ca);
    let proxy = proxy_with_upstream(
        &format!("upstream = \"https://localhost:{}\"", origin.addr.port()),
        &format!("upstream_ca = {ca_path:?}"),
    );
    let resp = send("GET", &proxy.url("/secure"), &[]);
    assert_eq!(resp.status, 200, "{}\n{}", resp.text(), proxy.log());
    assert_eq!(resp.text(), "sent over tls");
    assert_eq!(origin.requests.load(Ordering::SeqCst), 1);
    assert_eq!(
        origin
            .server_names
            .lock()
            .first()
            .cloned()
            .flatten()
            .as_deref(),
        Some("localhost")
    );
    // Cached like any response.
    assert!(send("GET", &proxy.url("/secure"), &[])
        .cache_status()
        .contains("hit"));
    assert_eq!(origin.requests.load(Ordering::SeqCst), 1);
}

#[test]
fn an_origin_certificate_the_tenant_does_not_trust_is_refused() {
    let trusted = TestCa::new("trusted CA");
    let stranger = TestCa::new("someone else's CA");
    let dir = tempfile::tempdir().unwrap();
    let ca_path = write_ca(dir.path(), &trusted);

    // Signed by a CA the tenant does not trust.
    let impostor = TlsOrigin::start(stranger.server_cert(&["127.0.0.1"]));
    let proxy = proxy_with_upstream(
        &format!("upstream = \"https://127.0.0.1:{}\"", impostor.addr.port()),
        &format!("upstream_ca = {ca_path:?}"),
    );
    let resp = send("GET", &proxy.url("/x"), &[]);
    assert_eq!(resp.status, 502, "{}", resp.text());
    assert_eq!(impostor.requests.load(Ordering::SeqCst), 0);

    // Trusted CA, but issued for another name.
    let wrong_name = TlsOrigin::start(trusted.server_cert(&["other.example"]));
    let proxy = proxy_with_upstream(
        &format!(
            "upstream = \"https://127.0.0.1:{}\"",
            wrong_name.addr.port()
        ),
        &format!("upstream_ca = {ca_path:?}"),
    );
    let resp = send("GET", &proxy.url("/x"), &[]);
    assert_eq!(resp.status, 502, "{}", resp.text());
    assert_eq!(wrong_name.requests.load(Ordering::SeqCst), 0);

    // The same origin with its IP in the certificate is accepted.
    let right = TlsOrigin::start(trusted.server_cert(&["127.0.0.1"]));
    let proxy = proxy_with_upstream(
        &format!("upstream = \"https://127.0.0.1:{}\"", right.addr.port()),
        &format!("upstream_ca = {ca_path:?}"),
    );
    assert_eq!(send("GET", &proxy.url("/x"), &[]).text(), "sent over tls");
}

/// Two tenants reach one HTTPS origin, each trusting its own CA: a connection the first tenant's
/// CA accepted is never handed to the second, whose CA refuses that origin.
#[test]
fn an_origin_connection_verified_for_one_tenant_is_not_reused_for_a_tenant_with_other_roots() {
    let origin_ca = TestCa::new("the origin's CA");
    let other_ca = TestCa::new("another CA");
    let origin = TlsOrigin::start(origin_ca.server_cert(&["127.0.0.1"]));
    let dir = tempfile::tempdir().unwrap();
    let (origin_ca_path, other_ca_path) = (
        dir.path().join("origin-ca.pem"),
        dir.path().join("other-ca.pem"),
    );
    std::fs::write(&origin_ca_path, origin_ca.pem()).unwrap();
    std::fs::write(&other_ca_path, other_ca.pem()).unwrap();
    let unused: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let upstream = format!("upstream = \"https://127.0.0.1:{}\"", origin.addr.port());
    let tenant = |name: &str, host: &str, ca: &std::path::Path| {
        TenantSpec::new(name, unused, &plugin("standard"))
            .hosts(&[host])
            .upstream_line(&upstream)
            .extra(&format!("upstream_ca = {:?}", ca.display().to_string()))
    };
    let proxy = Proxy::start(
        "",
        &[
            tenant("trusting", "trusting.test", &origin_ca_path),
            tenant("strict", "strict.test", &other_ca_path),
        ],
    );
    for round in 0..3 {
        let trusted = send(
            "GET",
            &proxy.url(&format!("/t{round}")),
            &[("Host", "trusting.test")],
        );
        assert_eq!(trusted.status, 200, "{}", trusted.text());
        // The trusting tenant's connection now idles in the pool.
        let_the_connection_return_to_the_pool(&proxy);
        let refused = send(
            "GET",
            &proxy.url(&format!("/s{round}")),
            &[("Host", "strict.test")],
        );
        assert_eq!(refused.status, 502, "round {round}: {}", refused.text());
    }
    assert_eq!(origin.requests.load(Ordering::SeqCst), 3);
}

#[test]
fn tls_verify_false_connects_anyway_and_warns_at_startup() {
    let stranger = TestCa::new("unverified CA");
    let origin = TlsOrigin::start(stranger.server_cert(&["nobody.example"]));
    let proxy = proxy_with_upstream(
        &format!("upstream = \"https://127.0.0.1:{}\"", origin.addr.port()),
        "tls_verify = false",
    );
    assert_eq!(send("GET", &proxy.url("/x"), &[]).text(), "sent over tls");
    let warns = |l: &str| l.contains("WARN") && l.contains("tls_verify = false");
    let log = proxy.log_until(|log| log.lines().any(warns));
    assert!(log.lines().any(warns), "{log}");
}

#[test]
fn an_upstream_ca_that_cannot_take_effect_is_named_at_startup() {
    let ca = TestCa::new("unused CA");
    let dir = tempfile::tempdir().unwrap();
    let ca_path = write_ca(dir.path(), &ca);
    let plain = proxy_with_upstream(
        "upstream = \"http://127.0.0.1:9\"",
        &format!("upstream_ca = {ca_path:?}"),
    );
    let unverified = proxy_with_upstream(
        "upstream = \"https://127.0.0.1:9\"",
        &format!("upstream_ca = {ca_path:?}\ntls_verify = false"),
    );
    // A plugin-chosen backend over https takes the origin TLS settings: the CA is used, and
    // turning checks off for it is warned about like for an upstream.
    let backend_only = proxy_with_upstream(
        "upstream = \"http://127.0.0.1:9\"",
        &format!("upstream_ca = {ca_path:?}\n[tenant.backends]\napi = \"https://127.0.0.1:9\""),
    );
    let backend_unverified = proxy_with_upstream(
        "upstream = \"http://127.0.0.1:9\"",
        "tls_verify = false\n[tenant.backends]\napi = \"https://127.0.0.1:9\"",
    );
    for (proxy, says) in [
        (&plain, "no upstream or backend is https"),
        (&unverified, "not checked at all"),
        (
            &backend_unverified,
            "tls_verify = false: origin certificates are not checked",
        ),
    ] {
        let warns = |l: &str| l.contains("WARN") && l.contains(says);
        let log = proxy.log_until(|log| log.lines().any(warns));
        assert!(log.lines().any(warns), "{log}");
    }
    let log = backend_only.log();
    assert!(!log.contains("it is not used"), "{log}");
}

/// An origin that holds every request for `hold` before answering, and records how many
/// it held at once at most.
struct HoldingOrigin {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    most_at_once: Arc<AtomicUsize>,
}

impl HoldingOrigin {
    fn start(hold: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let most_at_once = Arc::new(AtomicUsize::new(0));
        let now = Arc::new(AtomicUsize::new(0));
        let (reqs, most) = (requests.clone(), most_at_once.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let (reqs, most, now) = (reqs.clone(), most.clone(), now.clone());
                std::thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                    while read_head(&mut conn).is_some() {
                        reqs.fetch_add(1, Ordering::SeqCst);
                        let held = now.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(held, Ordering::SeqCst);
                        std::thread::sleep(hold);
                        now.fetch_sub(1, Ordering::SeqCst);
                        let reply = "HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 4\r\n\r\nheld";
                        if conn.write_all(reply.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            requests,
            most_at_once,
        }
    }
}

/// Waits (up to 10 s) until `origin` has received at least `n` requests.
fn wait_for_origin_requests(origin: &HoldingOrigin, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while origin.requests.load(Ordering::SeqCst) < n {
        assert!(
            Instant::now() < deadline,
            "fewer than {n} requests at the origin"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends a GET for each path at once, each on its own connection.
fn concurrent_gets(proxy: &Proxy, paths: &[String], host: &str) -> Vec<support::client::Resp> {
    let threads: Vec<_> = paths
        .iter()
        .map(|path| {
            let url = proxy.url(path);
            let host = host.to_owned();
            std::thread::spawn(move || send("GET", &url, &[("Host", host.as_str())]))
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn misses_beyond_max_connections_wait_for_a_turn_at_the_origin() {
    let origin = HoldingOrigin::start(Duration::from_millis(300));
    let proxy = proxy_for(origin.addr, "max_connections = 2\nqueue_timeout = \"10s\"");
    let paths: Vec<String> = (0..6).map(|i| format!("/new/{i}")).collect();
    let started = Instant::now();
    let answers = concurrent_gets(&proxy, &paths, "site.test");
    for resp in &answers {
        assert_eq!(
            (resp.status, resp.text().as_str()),
            (200, "held"),
            "{resp:?}"
        );
    }
    assert_eq!(origin.requests.load(Ordering::SeqCst), 6);
    assert_eq!(origin.most_at_once.load(Ordering::SeqCst), 2);
    // Three rounds of two.
    assert!(
        started.elapsed() >= Duration::from_millis(850),
        "{:?}",
        started.elapsed()
    );
    // A turn is given back when the request's task ends, just after its client has the
    // answer: on a loaded machine the status may be read in between.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut status = proxy.status();
    while status["tenants"][0]["origin"]["in_flight"] != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        status = proxy.status();
    }
    let tenant = &status["tenants"][0]["origin"];
    assert_eq!(tenant["max_connections"], 2, "{status}");
    assert_eq!(tenant["in_flight"], 0, "{status}");
    assert_eq!(tenant["refused"], 0, "{status}");
}

/// Tenant `site.test` with one origin turn (queued for 200 ms at most) and tenant
/// `other.test` with the default, both in front of `origin`.
fn one_turn_site_and_other(origin: &HoldingOrigin) -> Proxy {
    Proxy::start(
        "",
        &[
            TenantSpec::new("site", origin.addr, &plugin("standard"))
                .hosts(&["site.test"])
                .extra("[tenant.origin]\nmax_connections = 1\nqueue_timeout = \"200ms\""),
            TenantSpec::new("other", origin.addr, &plugin("standard")).hosts(&["other.test"]),
        ],
    )
}

/// A reload refused by a later tenant leaves a running tenant's origin limit as it was: the
/// raised limit of the refused config was added to the turns the running version still used
/// (and again on each refused attempt), while its status kept the old limit.
#[test]
fn a_refused_reload_does_not_raise_a_running_tenants_origin_limit() {
    let origin = HoldingOrigin::start(Duration::from_millis(1500));
    let plugins = tempfile::tempdir().unwrap();
    let other_plugin = plugins.path().join("other.wasm");
    std::fs::copy(plugin("standard"), &other_plugin).unwrap();
    std::fs::write(plugins.path().join("broken.wasm"), b"not a component").unwrap();
    let proxy = Proxy::start(
        "",
        &[
            TenantSpec::new("site", origin.addr, &plugin("standard"))
                .hosts(&["site.test"])
                .extra("[tenant.origin]\nmax_connections = 1\nqueue_timeout = \"200ms\""),
            TenantSpec::new("other", origin.addr, &other_plugin).hosts(&["other.test"]),
        ],
    );
    let config = proxy.dir.path().join("cachet.toml");
    let original = std::fs::read_to_string(&config).unwrap();
    let refused = original
        .replace("max_connections = 1", "max_connections = 5")
        .replace("other.wasm", "broken.wasm");
    assert_ne!(refused, original);
    std::fs::write(&config, refused).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.status()["config"]["last_refusal"]["reason"].is_null() {
        assert!(Instant::now() < deadline, "the config was not refused");
        std::thread::sleep(Duration::from_millis(20));
    }

    let paths: Vec<String> = (0..3).map(|i| format!("/after-refusal/{i}")).collect();
    let statuses: Vec<u16> = concurrent_gets(&proxy, &paths, "site.test")
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "one turn at the origin, as configured before the refused change: {statuses:?}"
    );
    assert_eq!(origin.most_at_once.load(Ordering::SeqCst), 1);
}

#[test]
fn a_miss_that_finds_no_turn_within_queue_timeout_is_a_503_and_other_tenants_go_on() {
    let origin = HoldingOrigin::start(Duration::from_millis(1500));
    let proxy = one_turn_site_and_other(&origin);
    let paths: Vec<String> = (0..3).map(|i| format!("/flood/{i}")).collect();
    let site = std::thread::scope(|scope| {
        let site = scope.spawn(|| concurrent_gets(&proxy, &paths, "site.test"));
        // The other tenant's origin turns are its own: it is answered while `site` queues.
        wait_for_origin_requests(&origin, 1);
        let other = send("GET", &proxy.url("/other"), &[("Host", "other.test")]);
        assert_eq!((other.status, other.text().as_str()), (200, "held"));
        site.join().unwrap()
    });
    // `other` was at the origin while `site` held its only turn (seen at the origin, not
    // timed at the client: the origin holds each request 1.5 s).
    assert_eq!(origin.most_at_once.load(Ordering::SeqCst), 2);
    let statuses: Vec<u16> = site.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 503).count(),
        2,
        "{statuses:?}"
    );
    for refused in site.iter().filter(|r| r.status == 503) {
        assert_eq!(
            refused.cache_status(),
            "cachet; fwd=miss; detail=\"origin max_connections reached\"",
            "{refused:?}"
        );
    }
    // The refused requests never reached the origin: one from `site`, one from `other`.
    assert_eq!(origin.requests.load(Ordering::SeqCst), 2);
    let status = proxy.status();
    assert_eq!(status["tenants"][0]["origin"]["refused"], 2, "{status}");
    assert_eq!(status["tenants"][1]["origin"]["refused"], 0, "{status}");
}

/// A reload (here another tenant's hosts, but every tenant is rebuilt) keeps the origin
/// turns in use: a request at the origin through the replaced config still holds its turn.
/// Each reload gave every tenant a fresh set, so reloads during a flood let
/// `max_connections` through again each time.
#[test]
fn a_reload_keeps_the_origin_turns_in_use() {
    // Held long enough for a reload and a second request on a slow machine.
    let origin = HoldingOrigin::start(Duration::from_secs(5));
    let proxy = one_turn_site_and_other(&origin);
    let site = |path: &str| send("GET", &proxy.url(path), &[("Host", "site.test")]);
    std::thread::scope(|scope| {
        let held = scope.spawn(|| site("/held"));
        wait_for_origin_requests(&origin, 1);
        let config = proxy.dir.path().join("cachet.toml");
        let text = std::fs::read_to_string(&config).unwrap();
        let edited = text.replace(
            "hosts = [\"other.test\"]",
            "hosts = [\"other.test\", \"other2.test\"]",
        );
        assert_ne!(text, edited, "{text}");
        std::fs::write(&config, edited).unwrap();
        let reload = ureq::post(&proxy.admin_url("/reload")).call().unwrap();
        assert_eq!(reload.status(), 200);
        let second = site("/second");
        assert_eq!(second.status, 503, "{}", second.cache_status());
        assert_eq!(held.join().unwrap().status, 200);
    });
    assert_eq!(
        site("/third").status,
        200,
        "the turn is back once the request ends"
    );
}

/// Requests for one URL wait on the cache lock and become the fill one after another when
/// each is refused a turn: the wait for a turn ends `queue_timeout` after the request
/// arrived, so none waits a multiple of it (probe N: three collapsed requests waited 3, 6 and
/// 9 s under a 3 s queue_timeout).
#[test]
fn collapsed_requests_refused_a_turn_wait_queue_timeout_at_most() {
    // Held past the longest wait allowed below, so every waiter is refused.
    let origin = HoldingOrigin::start(Duration::from_secs(5));
    let proxy = proxy_for(origin.addr, "max_connections = 1\nqueue_timeout = \"2s\"");
    let holder = std::thread::spawn({
        let url = proxy.url("/hold");
        move || send("GET", &url, &[]).status
    });
    wait_for_origin_requests(&origin, 1);
    let started = Instant::now();
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let url = proxy.url("/collapsed");
            std::thread::spawn(move || (send("GET", &url, &[]), Instant::now()))
        })
        .collect();
    // A refused request on a route of its own (a POST bypasses the cache) says why too. Sent
    // with the waiters, so that it too is refused well before the holder's turn ends.
    let post = std::thread::spawn({
        let url = proxy.url("/form");
        move || send("POST", &url, &[])
    });
    for waiter in waiters {
        let (resp, done) = waiter.join().unwrap();
        assert_eq!(resp.status, 503, "{}", resp.cache_status());
        let waited = done.duration_since(started);
        // One queue_timeout (2 s) and slack for a slow machine; a second would be 4 s.
        assert!(waited < Duration::from_millis(3500), "waited {waited:?}");
    }
    let post = post.join().unwrap();
    assert_eq!(post.status, 503);
    assert!(
        post.cache_status()
            .contains("detail=\"origin max_connections reached\""),
        "{}",
        post.cache_status()
    );
    assert_eq!(holder.join().unwrap(), 200);
    assert_eq!(origin.requests.load(Ordering::SeqCst), 1);
}

/// An HTTP/2 request whose client resets the stream while it waits for a turn never
/// reaches the origin (probe N: it was sent on when a turn came, for nobody).
#[test]
fn a_request_reset_while_queued_never_reaches_the_origin() {
    let origin = HoldingOrigin::start(Duration::from_millis(1500));
    let proxy = Proxy::start_with_server(
        "h2c = true",
        "",
        &[TenantSpec::new("site", origin.addr, &plugin("standard"))
            .extra("[tenant.origin]\nmax_connections = 1\nqueue_timeout = \"10s\"")],
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port))
            .await
            .unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let request = |path: &str| {
            http::Request::builder()
                .uri(format!("http://site.test{path}"))
                .body(())
                .unwrap()
        };
        let mut sender = client.ready().await.unwrap();
        let (held, _) = sender.send_request(request("/held"), true).unwrap();
        // `/held` has the only turn once it is at the origin.
        let deadline = Instant::now() + Duration::from_secs(10);
        while origin.requests.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "/held never reached the origin");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut sender = sender.ready().await.unwrap();
        let (queued, mut queued_stream) = sender.send_request(request("/queued"), true).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        queued_stream.send_reset(h2::Reason::CANCEL);
        drop(queued);
        assert_eq!(held.await.unwrap().status(), 200);
        // Time for a request still queued to take the freed turn.
        tokio::time::sleep(Duration::from_millis(500)).await;
    });
    assert_eq!(origin.requests.load(Ordering::SeqCst), 1);
    // The turn is given back when `/held`'s task ends, just after its client has the answer.
    no_origin_exchange_in_flight(&proxy);
}

/// An origin that answers a WebSocket upgrade with 101 and then echoes, and any other
/// request (with its Content-Length body) with a short uncacheable 200 on a kept-alive
/// connection. It records, for each upgrade, how many requests its connection had served.
struct UpgradeOrigin {
    addr: SocketAddr,
    upgrades_after: Arc<parking_lot::Mutex<Vec<usize>>>,
}

impl UpgradeOrigin {
    fn start() -> Self {
        Self::start_answering_plain_requests("no-store")
    }

    /// Answers requests that ask for no upgrade with `Cache-Control: <cache_control>`.
    fn start_answering_plain_requests(cache_control: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let upgrades_after = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let record = upgrades_after.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let record = record.clone();
                std::thread::spawn(move || Self::serve(conn, &record, cache_control));
            }
        });
        Self {
            addr,
            upgrades_after,
        }
    }

    /// An upgrade request as RFC 9110 §7.8 has it: `Upgrade: websocket`, and `upgrade`
    /// among the `Connection` options (`head` is lower-cased).
    fn asks_for_websocket(head: &str) -> bool {
        let connection_upgrade = head
            .lines()
            .filter_map(|l| l.strip_prefix("connection:"))
            .flat_map(|v| v.split(','))
            .any(|option| option.trim() == "upgrade");
        head.contains("upgrade: websocket") && connection_upgrade
    }

    fn serve(mut conn: TcpStream, record: &parking_lot::Mutex<Vec<usize>>, cache_control: &str) {
        let mut buf = Vec::new();
        for served in 0.. {
            let head_end = loop {
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break end + 4;
                }
                let mut chunk = [0u8; 4096];
                match conn.read(&mut chunk) {
                    Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                    _ => return,
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
            buf.drain(..head_end);
            if Self::asks_for_websocket(&head) {
                record.lock().push(served);
                // As an origin a network away answers: on loopback, within microseconds,
                // Pingora's race (below) can end even a tunnel on a new connection.
                std::thread::sleep(Duration::from_millis(20));
                let _ = conn.write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                );
                let _ = conn.write_all(&buf);
                let mut chunk = [0u8; 4096];
                while let Ok(n) = conn.read(&mut chunk) {
                    if n == 0 || conn.write_all(&chunk[..n]).is_err() {
                        break;
                    }
                }
                return;
            }
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse().unwrap_or(0));
            while buf.len() < length {
                let mut chunk = [0u8; 4096];
                match conn.read(&mut chunk) {
                    Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                    _ => return,
                }
            }
            buf.drain(..length);
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nCache-Control: {cache_control}\r\n\r\nok"
            );
            if conn.write_all(answer.as_bytes()).is_err() {
                return;
            }
        }
    }
}

/// Reads from `conn` until `buf` ends with `end`.
fn read_until_suffix(conn: &mut TcpStream, end: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    while !buf.ends_with(end) {
        let mut chunk = [0u8; 4096];
        let n = conn.read(&mut chunk).expect("read");
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
    buf
}

/// `Upgrade` without the `upgrade` connection option is no upgrade request (RFC 9110 §7.8):
/// a proxy in front forwards it as an ordinary field and sends the next request on the same
/// connection. It is not forwarded, and an origin that would switch anyway never sees it:
/// the client gets an ordinary answer, not a tunnel.
#[test]
fn an_upgrade_field_without_the_connection_option_opens_no_tunnel() {
    let origin = UpgradeOrigin::start();
    let proxy = Proxy::start(
        "max_bytes = \"16MiB\"",
        &[TenantSpec::new("site", origin.addr, &plugin("standard"))],
    );
    let mut conn = TcpStream::connect(("127.0.0.1", proxy.port)).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    conn.write_all(
        b"GET /ws HTTP/1.1\r\nHost: site.test\r\nUpgrade: websocket\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .expect("send");
    let answer = read_until_suffix(&mut conn, b"\r\n\r\nok");
    assert!(
        answer.starts_with(b"HTTP/1.1 200 "),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        origin.upgrades_after.lock().is_empty(),
        "the origin was asked to switch"
    );
}

/// A WebSocket upgrade after another request on the same client connection: the origin
/// connection that request used was pooled, answered the upgrade at once, and Pingora 0.9
/// then ended a few tunnels in a hundred right after the 101 (cloudflare/pingora#946: the
/// 101 read before the request's own empty body ends the tunnel). Every upgrade takes a new
/// origin connection now, and every tunnel carries its bytes.
#[test]
fn a_websocket_upgrade_takes_a_new_origin_connection_and_its_tunnel_stays_open() {
    let origin = UpgradeOrigin::start();
    let proxy = Proxy::start(
        "max_bytes = \"16MiB\"",
        &[TenantSpec::new("site", origin.addr, &plugin("standard"))],
    );
    let upgrade =
        b"GET /ws HTTP/1.1\r\nHost: site.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    for round in 0..30 {
        let mut conn = TcpStream::connect(("127.0.0.1", proxy.port)).expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        conn.write_all(b"POST /p HTTP/1.1\r\nHost: site.test\r\nContent-Length: 3\r\n\r\nabc")
            .expect("send");
        read_until_suffix(&mut conn, b"\r\n\r\nok");
        conn.write_all(upgrade).expect("send");
        let head = read_until_suffix(&mut conn, b"\r\n\r\n");
        assert!(head.starts_with(b"HTTP/1.1 101 "), "round {round}");
        let frame = [b'x'; 100];
        conn.write_all(&frame).expect("send");
        let mut echoed = [0u8; 100];
        conn.read_exact(&mut echoed)
            .unwrap_or_else(|e| panic!("round {round}: the tunnel ended: {e}"));
        assert_eq!(echoed, frame, "round {round}");
    }
    let upgrades_after = origin.upgrades_after.lock().clone();
    assert_eq!(
        upgrades_after,
        vec![0; 30],
        "requests served before each upgrade"
    );
}

/// A WebSocket upgrade goes to the origin even when a plain GET of its URL is stored: the
/// stored 200 was served in its place (on the lean path and on pingora-cache's), so one
/// plain GET, anyone's, broke the URL's WebSockets until the copy expired.
#[test]
fn a_websocket_upgrade_is_never_answered_from_the_cache() {
    let origin = UpgradeOrigin::start_answering_plain_requests("public, max-age=600");
    let proxy = Proxy::start(
        "max_bytes = \"16MiB\"",
        &[TenantSpec::new("site", origin.addr, &plugin("standard"))],
    );
    // With the Host the upgrade sends: a key apart would prove nothing.
    let plain_get = || {
        let mut conn = TcpStream::connect(("127.0.0.1", proxy.port)).expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        conn.write_all(b"GET /ws HTTP/1.1\r\nHost: site.test\r\n\r\n")
            .expect("send");
        String::from_utf8_lossy(&read_until_suffix(&mut conn, b"\r\n\r\nok")).into_owned()
    };
    plain_get();
    let stored = plain_get().to_ascii_lowercase();
    assert!(stored.contains("cache-status: cachet; hit"), "{stored}");
    let mut conn = open_websocket(&proxy);
    assert_tunnel_echoes(&mut conn);
    assert_eq!(
        origin.upgrades_after.lock().len(),
        1,
        "upgrades at the origin"
    );
}

/// Opens a WebSocket tunnel through `proxy` on a new client connection: the 101's head has
/// been read when it returns.
fn open_websocket(proxy: &Proxy) -> TcpStream {
    let mut conn = TcpStream::connect(("127.0.0.1", proxy.port)).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    conn.write_all(
        b"GET /ws HTTP/1.1\r\nHost: site.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .expect("send");
    let head = read_until_suffix(&mut conn, b"\r\n\r\n");
    assert!(
        head.starts_with(b"HTTP/1.1 101 "),
        "{}",
        String::from_utf8_lossy(&head)
    );
    conn
}

/// Sends a frame's worth of bytes into an open tunnel and expects them echoed back.
fn assert_tunnel_echoes(conn: &mut TcpStream) {
    let frame = [b'x'; 100];
    conn.write_all(&frame).expect("send");
    let mut echoed = [0u8; 100];
    conn.read_exact(&mut echoed)
        .unwrap_or_else(|e| panic!("the tunnel ended: {e}"));
    assert_eq!(echoed, frame);
}

/// `idle_timeout = "0s"` asks the origin to close each connection, but not an upgrade's:
/// `Connection: close` in place of `Connection: Upgrade` is no upgrade request, and every
/// WebSocket of such a tenant was refused.
#[test]
fn idle_timeout_zero_still_lets_a_websocket_upgrade_through() {
    let origin = UpgradeOrigin::start();
    let proxy = proxy_for(origin.addr, "idle_timeout = \"0s\"");
    let mut conn = open_websocket(&proxy);
    assert_tunnel_echoes(&mut conn);
}

/// `total_timeout` bounds an exchange with the origin, not the WebSocket its 101 opens:
/// Pingora runs the body filters on a tunnel's bytes, which checked the deadline, and
/// every tunnel was cut at `total_timeout`.
#[test]
fn total_timeout_does_not_end_a_websocket_tunnel() {
    let origin = UpgradeOrigin::start();
    let proxy = proxy_for(origin.addr, "total_timeout = \"1s\"");
    let mut conn = open_websocket(&proxy);
    assert_tunnel_echoes(&mut conn);
    std::thread::sleep(Duration::from_millis(1500));
    assert_tunnel_echoes(&mut conn);
}
