//! What an attacker tries first, end to end: raw bytes over TCP to the real
//! `cachet` binary with the real example plugins, in front of an origin that
//! records everything it receives. Each test checks what the client got, what
//! the origin saw, and that nothing wrong was stored.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::client::{get, send};
use support::origin::{Origin, Reply, Seen};
use support::proxy::{Proxy, TenantSpec};
use support::wire::{exchange, one, parse_responses, read_until_closed};
use support::{plugin, proc_status_kib};

const CACHE: &str = "max_bytes = \"64MiB\"";
const TOKEN: &str = "security-test-token";

/// An origin that answers every URL with what it saw, cacheable for 10 minutes.
fn echo_origin() -> Origin {
    Origin::start(|seen| {
        Reply::ok(format!("origin saw {} {}", seen.method, seen.url))
            .header("Cache-Control", "max-age=600")
    })
}

fn standard_proxy(origin: &Origin) -> Proxy {
    Proxy::start_with_server(
        &format!("admin_token = \"{TOKEN}\""),
        CACHE,
        &[TenantSpec::new("site", origin.addr, &plugin("standard"))],
    )
}

fn cache_status(resp: &support::wire::RawResp) -> &str {
    resp.header("cache-status").unwrap_or("")
}

// ------------------------------------------------------------ request targets

#[test]
fn targets_that_are_not_paths_are_refused_and_never_stored() {
    let origin = echo_origin();
    let proxy = standard_proxy(&origin);
    for target in [
        "evil-target?cc=max-age%3D600",
        "p.test:80",
        "x:/admin",
        "ftp://site.test/",
    ] {
        let resp = one(
            proxy.port,
            &format!("GET {target} HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n"),
        );
        assert_eq!(resp.status, 400, "GET {target}: {resp:?}");
    }
    assert_eq!(origin.hits(), 0, "a refused target reached the origin");

    // The site's `/` is the origin's `/`, fetched once and then a hit.
    let first = get(&proxy.url("/"));
    assert_eq!(first.text(), "origin saw GET /");
    assert!(first.cache_status().contains("fwd=miss"), "{first:?}");
    let second = get(&proxy.url("/"));
    assert_eq!(second.text(), "origin saw GET /");
    assert!(second.cache_status().contains("hit"), "{second:?}");
    assert_eq!(origin.hits(), 1);
}

#[test]
fn absolute_urls_reach_the_origin_as_the_path_the_plugin_saw() {
    let origin = echo_origin();
    let proxy = standard_proxy(&origin);
    let resp = one(
        proxy.port,
        "GET http://site.test/abs?q=1 HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.text(), "origin saw GET /abs?q=1");
    assert_eq!(origin.seen()[0].url, "/abs?q=1");
    // Same key as the origin-form request: the second one is a hit.
    let again = one(
        proxy.port,
        "GET /abs?q=1 HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n",
    );
    assert!(cache_status(&again).contains("hit"), "{again:?}");
    assert_eq!(origin.hits(), 1);
}

#[test]
fn a_plugin_block_cannot_be_walked_around_with_the_target_form() {
    let origin = echo_origin();
    let proxy = Proxy::start(
        CACHE,
        &[TenantSpec::new("api", origin.addr, &plugin("api-gateway"))],
    );
    for target in [
        "/admin",
        "http://site.test/admin",
        "x:/admin",
        "/x/../admin",
        // Spellings Windows- and IIS-style origins read as /admin.
        "/\\admin",
        "/x%5c..%5cadmin",
        "/admin%20",
        "/admin.",
        "/admin%00",
    ] {
        let resp = one(
            proxy.port,
            &format!("GET {target} HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n"),
        );
        assert!(
            resp.status == 403 || resp.status == 400,
            "GET {target} got {resp:?}"
        );
    }
    assert_eq!(origin.hits(), 0, "{:?}", origin.seen());
}

// ------------------------------------------------------------ bodies on GET and HEAD

#[test]
fn get_and_head_bodies_never_decide_a_stored_entry() {
    let origin = Origin::start(|seen| {
        let body = String::from_utf8_lossy(&seen.body).into_owned();
        Reply::ok(format!("{} {} body={body}", seen.method, seen.url))
            .header("Cache-Control", "max-age=600")
    });
    let proxy = standard_proxy(&origin);
    let poisoned = one(
        proxy.port,
        "GET /g HTTP/1.1\r\nHost: site.test\r\nContent-Length: 4\r\nConnection: close\r\n\r\nevil",
    );
    assert_eq!(poisoned.text(), "GET /g body=evil");
    assert!(
        cache_status(&poisoned).contains("fwd=bypass"),
        "{poisoned:?}"
    );
    let head = one(
        proxy.port,
        "HEAD /g HTTP/1.1\r\nHost: site.test\r\nContent-Length: 4\r\nConnection: close\r\n\r\nevil",
    );
    assert!(cache_status(&head).contains("fwd=bypass"), "{head:?}");

    let clean = get(&proxy.url("/g"));
    assert_eq!(clean.text(), "GET /g body=");
    assert!(clean.cache_status().contains("fwd=miss"), "{clean:?}");
    assert_eq!(get(&proxy.url("/g")).text(), "GET /g body=");
    assert_eq!(origin.hits_for("/g"), 3);
}

// ------------------------------------------------------------ bounded heads and connections

/// The standard policy in front of `origin`, each request head at most `limit`.
fn head_limited_proxy(origin: &Origin, limit: &str) -> Proxy {
    Proxy::start_with_server(
        &format!("max_request_head = \"{limit}\""),
        CACHE,
        &[TenantSpec::new("site", origin.addr, &plugin("standard"))],
    )
}

#[test]
fn heads_over_the_limit_get_431_and_under_it_are_served() {
    let origin = echo_origin();
    let proxy = head_limited_proxy(&origin, "8KiB");
    let big = "a".repeat(12 * 1024);
    let bytes = exchange(
        proxy.port,
        format!("GET /big HTTP/1.1\r\nHost: site.test\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    );
    let resp = parse_responses(&bytes);
    assert_eq!(resp.len(), 1, "{:?}", String::from_utf8_lossy(&bytes));
    assert_eq!(resp[0].status, 431);

    let fits = "a".repeat(6 * 1024);
    let resp = one(
        proxy.port,
        &format!(
            "GET /fits HTTP/1.1\r\nHost: site.test\r\nX-Fits: {fits}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(resp.status, 200);
    // The limit applies to each head of a kept-alive connection, not to the connection.
    let mut conn = TcpStream::connect(("127.0.0.1", proxy.port)).expect("connect");
    let request = format!("GET /k HTTP/1.1\r\nHost: site.test\r\nX-Fits: {fits}\r\n\r\n");
    conn.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let mut all = Vec::new();
    for i in 0..3 {
        conn.write_all(request.as_bytes()).expect("send");
        if i == 2 {
            conn.write_all(b"GET /k HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n")
                .expect("send");
            all.extend(read_until_closed(&mut conn, Duration::from_secs(10)));
        } else {
            // Answered before the next is sent, however long that takes: no head is read
            // together with another.
            read_answers(&mut conn, &mut all, i + 1);
        }
    }
    let statuses: Vec<u16> = parse_responses(&all).iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 200, 200]);
    assert_eq!(origin.hits_for("/big"), 0);
}

/// Reads from `conn` into `all` until it holds `count` whole responses (10 s at most).
fn read_answers(conn: &mut TcpStream, all: &mut Vec<u8>, count: usize) {
    let wanted = count - parse_responses(all).len();
    let whole = |bytes: &[u8]| {
        let answers = parse_responses(bytes);
        answers.len() >= wanted
            && answers.last().is_some_and(|last| {
                last.header("content-length").and_then(|v| v.parse().ok()) == Some(last.body.len())
            })
    };
    all.extend(support::wire::read_until(
        conn,
        Duration::from_secs(10),
        whole,
    ));
}

/// A request with a body pipelined behind another: once the first is answered, its end and
/// the second's head were signalled with no read between them, and the guard applied them
/// in the wrong order, counting the body as a head and cutting it with a 431 (the origin
/// got part of the POST). Over the front (a hit first) and over Pingora (a miss first).
#[test]
fn a_body_pipelined_behind_a_request_is_not_counted_as_a_head() {
    let origin = Origin::start(|seen| {
        Reply::ok(format!("{} {} {}", seen.method, seen.url, seen.body.len()))
            .header("Cache-Control", "max-age=600")
    });
    let proxy = head_limited_proxy(&origin, "4KiB");
    let warm = one(
        proxy.port,
        "GET /hit HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(warm.status, 200);
    let body = vec![b'b'; 64 * 1024];
    for first in ["/hit", "/miss"] {
        let mut sent = format!(
            "GET {first} HTTP/1.1\r\nHost: site.test\r\n\r\n\
             POST /post HTTP/1.1\r\nHost: site.test\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        sent.extend_from_slice(&body);
        let answers = parse_responses(&exchange(proxy.port, &sent));
        let got: Vec<(u16, String)> = answers.iter().map(|r| (r.status, r.text())).collect();
        assert_eq!(
            got,
            [
                (200, format!("GET {first} 0")),
                (200, format!("POST /post {}", body.len()))
            ],
            "after {first}"
        );
    }
    assert_eq!(origin.hits_for("/post"), 2);
}

/// A head sent in the same write as the request before it: the bytes of it read with that
/// request count toward its limit (the guard gave it a whole new budget after the first was
/// answered, so a 1.7 KiB head passed a 1 KiB limit).
#[test]
fn a_head_pipelined_behind_a_hit_is_held_to_the_limit() {
    let origin = echo_origin();
    let proxy = head_limited_proxy(&origin, "1KiB");
    let warm = one(
        proxy.port,
        "GET /hit HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(warm.status, 200);
    let sent = format!(
        "GET /hit HTTP/1.1\r\nHost: site.test\r\n\r\n\
         GET /long HTTP/1.1\r\nHost: site.test\r\nX-Long: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(1700)
    );
    let answers = parse_responses(&exchange(proxy.port, sent.as_bytes()));
    let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 431]);
    assert_eq!(origin.hits_for("/long"), 0);
}

/// What Pingora reads past a chunked body (it reads one 64 KiB at a time) becomes the start
/// of the next head, which the guard never counts: a 12 KiB head behind a chunked POST
/// passed a 4 KiB limit. Reads past a head are capped at the limit now, so such a head
/// exceeds it by less than the limit at most.
#[test]
fn a_head_pipelined_behind_a_chunked_body_is_held_to_the_limit() {
    // Answers once the body has come (it does not read chunked bodies itself): answered
    // earlier, the POST's connection would end with it.
    let origin = Origin::start(|seen| {
        Reply::ok(format!("origin saw {} {}", seen.method, seen.url))
            .delay(Duration::from_millis(700))
    });
    let proxy = head_limited_proxy(&origin, "4KiB");
    let mut conn = TcpStream::connect(("127.0.0.1", proxy.port)).expect("connect");
    conn.set_nodelay(true).expect("nodelay");
    conn.write_all(
        b"POST /chunked HTTP/1.1\r\nHost: site.test\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .expect("send");
    // The POST's head has been read alone (the plugin ran on it) before the rest is sent.
    support::wait_until("the POST's head is read", || {
        proxy.counted("cachet_plugin_hook_seconds_count{hook=\"request\",tenant=\"site\"}") == 1
    });
    let rest = format!(
        "5\r\nhello\r\n0\r\n\r\nGET /long HTTP/1.1\r\nHost: site.test\r\nX-Long: {}\r\n\
         Connection: close\r\n\r\n",
        "a".repeat(12 * 1024)
    );
    // The proxy stops reading at the limit: the rest may not be taken.
    let _ = conn.write_all(rest.as_bytes());
    let bytes = read_until_closed(&mut conn, Duration::from_secs(5));
    let statuses: Vec<u16> = parse_responses(&bytes).iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [200, 431],
        "{:?}\n{}",
        String::from_utf8_lossy(&bytes),
        proxy.log()
    );
    assert_eq!(origin.hits_for("/chunked"), 1);
    assert_eq!(origin.hits_for("/long"), 0);
}

fn rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS:")
}

/// A cacheable body sent without a length goes on filling after its client is gone (pingora
/// keeps reading for the cache). Once it is over the maximum object size it will not be
/// stored, and the client's abandoned position in it may not hold it either: memory stays
/// within that bound however long the body is.
#[test]
fn a_fill_outliving_its_client_holds_no_more_than_the_maximum_object_size() {
    const TOTAL: usize = 192 << 20;
    const CHUNK: usize = 64 << 10;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let origin_addr = listener.local_addr().unwrap();
    let (sent_tx, sent_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("cachet connects");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            std::io::Read::read_exact(&mut conn, &mut byte).expect("request head");
            head.push(byte[0]);
        }
        let data = vec![b'x'; CHUNK];
        let mut out =
            b"HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec();
        let mut sent = 0;
        let result = (|| {
            conn.write_all(&out)?;
            while sent < TOTAL {
                out.clear();
                out.extend_from_slice(format!("{CHUNK:x}\r\n").as_bytes());
                out.extend_from_slice(&data);
                out.extend_from_slice(b"\r\n");
                conn.write_all(&out)?;
                sent += CHUNK;
            }
            conn.write_all(b"0\r\n\r\n")
        })();
        let _ = sent_tx.send((sent, result.is_ok()));
    });
    let proxy = Proxy::start(
        "max_bytes = \"64MiB\"\nmax_object_bytes = \"4MiB\"",
        &[TenantSpec::new("site", origin_addr, &plugin("standard"))],
    );
    let before = proc_status_kib(proxy.pid(), "VmHWM:");

    // The client reads the start of the body, then goes away.
    let mut client = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    client
        .write_all(b"GET /endless HTTP/1.1\r\nHost: site.test\r\n\r\n")
        .unwrap();
    let mut start = [0u8; 16 << 10];
    std::io::Read::read_exact(&mut client, &mut start).unwrap();
    drop(client);

    let (sent, complete) = sent_rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the origin finished sending");
    assert!(complete && sent == TOTAL, "the fill read the whole body");
    let grew_mib = proc_status_kib(proxy.pid(), "VmHWM:").saturating_sub(before) / 1024;
    assert!(
        grew_mib < 96,
        "peak memory grew {grew_mib} MiB for a {} MiB body nobody reads",
        TOTAL >> 20
    );
}

/// Opens `count` connections that each send `head_bytes` of a head and never finish it.
fn hold_partial_heads(port: u16, count: usize, head_bytes: usize) -> Vec<TcpStream> {
    let partial = format!(
        "GET / HTTP/1.1\r\nHost: site.test\r\nX-Pad: {}",
        "p".repeat(head_bytes - 40)
    );
    (0..count)
        .map(|_| {
            let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            conn.set_write_timeout(Some(Duration::from_millis(200)))
                .expect("timeout");
            // Past the limit the proxy stops reading: the rest stays in socket buffers.
            let _ = conn.write_all(partial.as_bytes());
            conn
        })
        .collect()
}

#[test]
fn half_sent_heads_hold_memory_bounded_by_configuration() {
    // CACHET_TEST_FLOOD=2000 measures a bigger flood by hand.
    let connections: usize = std::env::var("CACHET_TEST_FLOOD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    const MAX_HEAD: usize = 16 << 10;
    // Head buffers (at most twice the limit, as they grow by doubling) plus
    // per-connection state (~43 KiB measured for an idle connection).
    let bound = connections as u64 * (2 * (MAX_HEAD as u64 >> 10) + 48);
    let origin = echo_origin();
    // Each flood gets a proxy of its own: pages the allocator keeps from one flood would
    // be reused by the next and hide what it holds.
    let flood = |head_bytes: usize, what: &str| {
        let proxy = Proxy::start_with_server(
            &format!(
                "max_request_head = \"16KiB\"\nmax_connections = {}",
                connections + 10
            ),
            CACHE,
            &[TenantSpec::new("site", origin.addr, &plugin("standard"))],
        );
        assert_eq!(get(&proxy.url("/warm")).status, 200);
        let before = rss_kib(proxy.pid());
        let held = hold_partial_heads(proxy.port, connections, head_bytes);
        // Measured once the proxy has taken every one in (holding it, or refusing it once it
        // read up to the limit), however long a busy machine takes; then, as before, a moment
        // for the last heads to be read in.
        let series = if head_bytes < MAX_HEAD {
            "cachet_connections_open"
        } else {
            "cachet_connections_refused_total{reason=\"head_too_large\"}"
        };
        support::wait_until("the flood is taken in", || {
            proxy.counted(series) >= connections as u64
        });
        std::thread::sleep(Duration::from_millis(500));
        let holding = rss_kib(proxy.pid());
        let grown = holding.saturating_sub(before);
        eprintln!(
            "RSS {before} KiB -> {holding} KiB with {connections} {what} (bound +{bound} KiB)"
        );
        assert!(
            grown <= bound,
            "{what}: RSS grew {grown} KiB, bound {bound} KiB"
        );
        (proxy, held)
    };

    // Heads just under the limit are held, as a slow client's would be.
    drop(flood(MAX_HEAD - 1024, "held 15 KiB heads"));

    // Heads over the limit are refused, and hold no more than those under it.
    let (proxy, mut over) = flood(4 * MAX_HEAD, "heads over the limit");
    for conn in over.iter_mut().take(20) {
        let bytes = read_until_closed(conn, Duration::from_secs(2));
        assert!(
            bytes.starts_with(b"HTTP/1.1 431"),
            "{:?}",
            String::from_utf8_lossy(&bytes)
        );
    }
    assert_eq!(get(&proxy.url("/warm")).status, 200, "still serving");
}

#[test]
fn connections_beyond_the_limit_are_refused_with_503() {
    let origin = echo_origin();
    let proxy = Proxy::start_with_server(
        "max_connections = 8",
        CACHE,
        &[TenantSpec::new("site", origin.addr, &plugin("standard"))],
    );
    let open = || proxy.connections_open();
    // The readiness probe's connections may linger a moment: wait for them to close.
    support::wait_until("the probe's connections close", || open() == 0);
    let idle: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(("127.0.0.1", proxy.port)).expect("connect"))
        .collect();
    support::wait_until("the proxy takes the 8 in", || open() == 8);
    let refused = one(
        proxy.port,
        "GET / HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(refused.status, 503, "{refused:?}");
    drop(idle);
    support::wait_until("the 8 are let go", || open() == 0);
    let served = one(
        proxy.port,
        "GET / HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(served.status, 200, "{served:?}");
}

// ------------------------------------------------------------ unsafe methods

fn two_tenants(origin: &Origin, extra_a: &str) -> Proxy {
    Proxy::start_with_server(
        &format!("admin_token = \"{TOKEN}\""),
        CACHE,
        &[
            TenantSpec::new("a", origin.addr, &plugin("standard"))
                .hosts(&["a.test", "other.test"])
                .extra(extra_a),
            TenantSpec::new("b", origin.addr, &plugin("standard")).hosts(&["b.test"]),
        ],
    )
}

fn get_host(proxy: &Proxy, host: &str, path: &str) -> support::client::Resp {
    send("GET", &proxy.url(path), &[("Host", host)])
}

fn is_hit(resp: &support::client::Resp) -> bool {
    resp.cache_status().contains("hit")
}

#[test]
fn unsafe_methods_invalidate_only_their_own_tenant_and_host() {
    let origin = Origin::start(|seen| match seen.method.as_str() {
        "POST" if seen.url == "/x" => Reply::ok("posted")
            .header("Location", "http://other.test/y")
            .header("Content-Location", "/z"),
        _ => Reply::ok(format!("{} {}", seen.method, seen.url))
            .header("Cache-Control", "max-age=600"),
    });
    let proxy = two_tenants(&origin, "");
    for (host, path) in [
        ("a.test", "/x"),
        ("b.test", "/x"),
        ("other.test", "/y"),
        ("a.test", "/z"),
    ] {
        get_host(&proxy, host, path);
        assert!(
            is_hit(&get_host(&proxy, host, path)),
            "{host}{path} not stored"
        );
    }
    let posted = send("POST", &proxy.url("/x"), &[("Host", "a.test")]);
    assert_eq!(posted.text(), "posted");
    assert!(
        !is_hit(&get_host(&proxy, "a.test", "/x")),
        "a.test/x survived its POST"
    );
    assert!(
        !is_hit(&get_host(&proxy, "a.test", "/z")),
        "same-host Content-Location kept"
    );
    assert!(
        is_hit(&get_host(&proxy, "b.test", "/x")),
        "POST crossed tenants"
    );
    assert!(
        is_hit(&get_host(&proxy, "other.test", "/y")),
        "Location to another host followed"
    );
}

#[test]
fn a_tenant_can_turn_invalidation_off() {
    let origin = Origin::start(|seen| {
        Reply::ok(format!("{} {}", seen.method, seen.url)).header("Cache-Control", "max-age=600")
    });
    let proxy = two_tenants(&origin, "invalidate_on_unsafe = false");
    get_host(&proxy, "a.test", "/x");
    get_host(&proxy, "b.test", "/x");
    for method in ["POST", "FROB"] {
        assert_eq!(
            send(method, &proxy.url("/x"), &[("Host", "a.test")]).status,
            200
        );
        assert_eq!(
            send(method, &proxy.url("/x"), &[("Host", "b.test")]).status,
            200
        );
    }
    assert!(
        is_hit(&get_host(&proxy, "a.test", "/x")),
        "invalidate_on_unsafe = false ignored"
    );
    assert!(
        !is_hit(&get_host(&proxy, "b.test", "/x")),
        "default tenant did not invalidate"
    );
}

// ------------------------------------------------------------ message parsing

#[test]
fn pipelined_requests_are_answered_in_order() {
    let origin = echo_origin();
    let proxy = standard_proxy(&origin);
    let bytes = exchange(
        proxy.port,
        b"GET /one HTTP/1.1\r\nHost: site.test\r\n\r\n\
          GET /two HTTP/1.1\r\nHost: site.test\r\n\r\n\
          GET /one HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n",
    );
    let bodies: Vec<String> = parse_responses(&bytes).iter().map(|r| r.text()).collect();
    assert_eq!(
        bodies,
        [
            "origin saw GET /one",
            "origin saw GET /two",
            "origin saw GET /one"
        ]
    );
    assert_eq!(origin.hits(), 2, "the third was a hit");
}

#[test]
fn bare_line_feeds_in_a_head_are_refused() {
    let origin = echo_origin();
    let proxy = standard_proxy(&origin);
    let resp = one(
        proxy.port,
        "GET /lf HTTP/1.1\r\nHost: site.test\r\nX-A: 1\nX-B: 2\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(resp.status, 400, "{resp:?}");
    // Obsolete line folding is refused by the parser itself.
    let folded = one(
        proxy.port,
        "GET /fold HTTP/1.1\r\nHost: site.test\r\nX-A: 1\r\n 2\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(folded.status, 400, "{folded:?}");
    assert_eq!(origin.hits(), 0, "{:?}", origin.seen());
}

#[test]
fn hosts_and_content_lengths_that_frame_ambiguously_are_refused() {
    let origin = echo_origin();
    let proxy = standard_proxy(&origin);
    for head in [
        "GET /h HTTP/1.1\r\nConnection: close\r\n\r\n",
        // HTTP/1.0 may leave Host out, but the tenant is chosen by it and the origin needs it.
        "GET /h HTTP/1.0\r\n\r\n",
        "GET /h HTTP/1.1\r\nHost: site.test:99999\r\nConnection: close\r\n\r\n",
        "GET /h HTTP/1.1\r\nHost: site.test/evil\r\nConnection: close\r\n\r\n",
        "GET /h HTTP/1.1\r\nHost: site.test:abc\r\nConnection: close\r\n\r\n",
        "GET /h HTTP/1.1\r\nHost: a, b\r\nConnection: close\r\n\r\n",
        "GET /h HTTP/1.1\r\nHost: \r\nConnection: close\r\n\r\n",
        "GET /h HTTP/1.1\r\nHost: site.test\r\nConnection: close, Host\r\n\r\n",
        "POST /h HTTP/1.1\r\nHost: site.test\r\nContent-Length: 3, 4\r\nConnection: close\r\n\r\nabcd",
        // Pingora reads `+3` as 3; an origin reading it as no length would take the body for
        // the next request on the connection.
        "POST /h HTTP/1.1\r\nHost: site.test\r\nContent-Length: +3\r\nConnection: close\r\n\r\nabc",
    ] {
        let resp = one(proxy.port, head);
        assert_eq!(resp.status, 400, "{head:?}: {resp:?}");
    }
    assert_eq!(origin.hits(), 0, "{:?}", origin.seen());
    // Repeats that agree, and a length with leading zeros, reach the origin as the plain
    // number.
    for (at, length) in ["3, 3", "003"].into_iter().enumerate() {
        let resp = one(
            proxy.port,
            &format!(
                "POST /h HTTP/1.1\r\nHost: site.test\r\nContent-Length: {length}\r\nConnection: close\r\n\r\nabc"
            ),
        );
        assert_eq!(resp.status, 200, "{length}: {resp:?}");
        let seen = origin.seen();
        let lengths: Vec<&str> = seen[at]
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(lengths, ["3"], "{length}");
        assert_eq!(seen[at].body, b"abc", "{length}");
    }
}

/// A field the client's `Connection` header nominates never reaches the origin, so it must not
/// choose the stored variant either: otherwise a client stores the origin's answer for "no
/// such field" under any value of it, for everybody.
#[test]
fn a_field_the_connection_header_nominates_does_not_choose_a_variant() {
    let origin = Origin::start(|seen| {
        Reply::ok(format!("x-a={}", seen.header("x-a").unwrap_or("none")))
            .header("Cache-Control", "max-age=600")
            .header("Vary", "X-A")
    });
    let proxy = standard_proxy(&origin);
    let poisoning = send(
        "GET",
        &proxy.url("/varies"),
        &[("Connection", "X-A"), ("X-A", "2")],
    );
    assert_eq!(poisoning.text(), "x-a=none");
    let victim = send("GET", &proxy.url("/varies"), &[("X-A", "2")]);
    assert_eq!(victim.text(), "x-a=2", "{}", victim.cache_status());
    assert_eq!(origin.hits(), 2);
    // Without the field, the first answer is the right one.
    let plain = send("GET", &proxy.url("/varies"), &[]);
    assert_eq!(plain.text(), "x-a=none");
    assert!(
        plain.cache_status().contains("hit"),
        "{}",
        plain.cache_status()
    );
}

/// A client's long URL makes a key over `max_key_bytes`: the request bypasses the cache, for
/// a plugin as for the native policy, and no plugin fault is recorded (any client could raise
/// that metric, or get a 502 where `on_plugin_error = "error"`).
#[test]
fn a_key_too_long_for_the_limit_bypasses_the_cache_without_a_fault() {
    let origin = echo_origin();
    for policy in [plugin("standard"), PathBuf::from("builtin:standard")] {
        let proxy = Proxy::start_with_server(
            &format!("admin_token = \"{TOKEN}\""),
            CACHE,
            &[TenantSpec::new("site", origin.addr, &policy).extra("on_plugin_error = \"error\"")],
        );
        let long = format!("/long?q={}", "x".repeat(5000));
        for _ in 0..2 {
            let resp = send("GET", &proxy.url(&long), &[]);
            assert_eq!(resp.status, 200, "{policy:?}: {}", resp.text());
            assert!(
                resp.cache_status().contains("fwd=bypass")
                    && resp.cache_status().contains("over max_key_bytes"),
                "{policy:?}: {}",
                resp.cache_status()
            );
        }
        let metrics = send("GET", &proxy.admin_url("/metrics"), &[]).text();
        assert!(
            !metrics
                .lines()
                .any(|l| l.starts_with("cachet_plugin_faults_total") && !l.ends_with(" 0")),
            "{policy:?}: {metrics}"
        );
    }
    assert_eq!(origin.hits_for(&format!("/long?q={}", "x".repeat(5000))), 4);
}

#[test]
fn the_authorization_scheme_is_case_insensitive() {
    let origin = echo_origin();
    let proxy = standard_proxy(&origin);
    get(&proxy.url("/p"));
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let resp = send(
            "PURGE",
            &proxy.url("/p"),
            &[("Authorization", &format!("{scheme} {TOKEN}"))],
        );
        assert_ne!(resp.status, 401, "{scheme} refused");
    }
    let wrong = send(
        "PURGE",
        &proxy.url("/p"),
        &[("Authorization", "bearer nope")],
    );
    assert_eq!(wrong.status, 401);
}

// ------------------------------------------------------------ forwarding headers

fn forwarding_seen(mode: Option<&str>, policy: &Path) -> support::origin::Seen {
    let origin = echo_origin();
    let server = mode.map_or(String::new(), |m| format!("forwarded_headers = \"{m}\""));
    let proxy = Proxy::start_with_server(
        &server,
        CACHE,
        &[TenantSpec::new("site", origin.addr, policy)],
    );
    let resp = send(
        "GET",
        &proxy.url("/fwd"),
        &[
            ("Host", "site.test"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("Forwarded", "for=6.6.6.6"),
            ("X-Forwarded-Scheme", "http"),
            ("X-Forwarded-Prefix", "/evil"),
            ("X-Real-IP", "6.6.6.6"),
        ],
    );
    assert_eq!(resp.status, 200);
    origin.seen().pop().expect("origin saw the request")
}

/// A plugin reads the forwarding fields, so they are set before it runs; a native policy gets
/// them only once the request needs the origin (a lean hit never builds them). The origin sees
/// the same fields either way.
#[test]
fn forwarding_headers_replace_append_or_off() {
    for policy in [plugin("standard"), PathBuf::from("builtin:standard")] {
        let replaced = forwarding_seen(None, &policy);
        assert_eq!(replaced.header("x-forwarded-for"), Some("127.0.0.1"));
        assert_eq!(
            replaced.header("forwarded"),
            Some("for=127.0.0.1;proto=http;host=\"site.test\"")
        );
        assert_eq!(replaced.header("x-forwarded-proto"), Some("http"));
        assert_eq!(replaced.header("x-forwarded-host"), Some("site.test"));
        assert_eq!(replaced.header("via"), Some("1.1 cachet"));
        // The rest of the family is the proxy's word too, and no key holds it.
        for claim in ["x-forwarded-scheme", "x-forwarded-prefix", "x-real-ip"] {
            assert_eq!(replaced.header(claim), None, "{claim}");
        }

        let appended = forwarding_seen(Some("append"), &policy);
        assert_eq!(
            appended.header("x-forwarded-for"),
            Some("6.6.6.6, 127.0.0.1")
        );
        assert_eq!(
            appended.header("forwarded"),
            Some("for=6.6.6.6, for=127.0.0.1;proto=http;host=\"site.test\"")
        );

        assert_eq!(appended.header("x-forwarded-prefix"), Some("/evil"));

        let untouched = forwarding_seen(Some("off"), &policy);
        assert_eq!(untouched.header("x-forwarded-for"), Some("6.6.6.6"));
        assert_eq!(untouched.header("x-real-ip"), Some("6.6.6.6"));
        assert_eq!(untouched.header("via"), None);
    }
}

/// CGI, WSGI, PHP and Rack servers read a field name with `-` and `_` alike (both become
/// `HTTP_X_FORWARDED_HOST`, RFC 3875 §4.1.18), and lighttpd maps every character but
/// letters and digits to `_`. An origin like that is modelled here: it builds its links from
/// `X-Forwarded-Host` under any such spelling and honours a method override under any. The
/// other spellings passed unkeyed: one request stored `evil.test` links and a DELETE's answer
/// for everybody (probes AH, AK). They are dropped before the plugin, the key or the origin
/// sees them, on the front's hits and on Pingora's path, unless
/// `unusual_field_names = "keep"`.
#[test]
fn unusual_spellings_of_fields_never_reach_a_cgi_style_origin() {
    let cgi_origin = || {
        Origin::start(|seen| {
            let cgi = |name: &str| {
                seen.headers
                    .iter()
                    .rev()
                    .find(|(n, _)| {
                        let lighttpd = |c: char| if c.is_ascii_alphanumeric() { c } else { '-' };
                        n.chars()
                            .map(lighttpd)
                            .collect::<String>()
                            .eq_ignore_ascii_case(name)
                    })
                    .map(|(_, v)| v.as_str())
            };
            let host = cgi("x-forwarded-host").unwrap_or("-");
            let method = cgi("x-http-method-override").unwrap_or(&seen.method);
            Reply::ok(format!("{method} <a href='http://{host}/login'>"))
                .header("Cache-Control", "max-age=300")
        })
    };
    let attack = [
        ("X_Forwarded_Host", "evil.test"),
        ("X.HTTP.Method.Override", "DELETE"),
        ("X~Forwarded~Host", "evil.test"),
        ("Accept_Encoding", "gzip"),
    ];
    for policy in [plugin("standard"), PathBuf::from("builtin:standard")] {
        let origin = cgi_origin();
        let proxy = Proxy::start(CACHE, &[TenantSpec::new("site", origin.addr, &policy)]);
        let host = [("Host", "site.test")];
        let with_attack: Vec<(&str, &str)> = host.iter().chain(&attack).copied().collect();
        let first = send("GET", &proxy.url("/page"), &with_attack);
        assert_eq!(first.status, 200);
        let innocent = send("GET", &proxy.url("/page"), &host);
        assert_eq!(
            innocent.text(),
            "GET <a href='http://site.test/login'>",
            "{policy:?}"
        );
        // A hit answered by the front drops them too before the plugin reads the head.
        send("GET", &proxy.url("/page"), &with_attack);
        for seen in origin.seen() {
            let usual = |name: &str| name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            assert!(
                seen.headers.iter().all(|(name, _)| usual(name)),
                "{policy:?}: {:?}",
                seen.headers
            );
        }
        assert_eq!(origin.hits_for("/page"), 1);
    }

    // Kept on request: for origins that never map names to variables.
    let origin = cgi_origin();
    let proxy = Proxy::start_with_server(
        "unusual_field_names = \"keep\"",
        CACHE,
        &[TenantSpec::new("site", origin.addr, &plugin("standard"))],
    );
    let kept = send(
        "GET",
        &proxy.url("/kept"),
        &[("Host", "site.test"), ("X_Custom", "1")],
    );
    assert_eq!(kept.status, 200);
    let seen = origin.seen().pop().expect("origin saw the request");
    assert_eq!(seen.header("x_custom"), Some("1"));
}

/// Behind a trusted proxy ("append") or with the fields left alone ("off"), the origin is
/// told the scheme the client claims: HTTP and HTTPS users of the proxy in front keep
/// apart (a site redirecting plain requests to HTTPS would otherwise loop them all), and a
/// PURGE removes both.
#[test]
fn the_scheme_a_trusted_proxy_claims_keeps_entries_apart() {
    let origin = Origin::start(|seen| {
        let reply = match seen.header("x-forwarded-proto") {
            Some("https") => Reply::ok("page"),
            _ => Reply::ok("moved").status(301),
        };
        reply.header("Cache-Control", "max-age=600")
    });
    for mode in ["append", "off"] {
        let proxy = Proxy::start_with_server(
            &format!("forwarded_headers = \"{mode}\"\nadmin_token = \"{TOKEN}\""),
            CACHE,
            &[TenantSpec::new("site", origin.addr, &plugin("standard"))],
        );
        let path = format!("/{mode}");
        let get = |proto: &str| {
            send(
                "GET",
                &proxy.url(&path),
                &[("Host", "site.test"), ("X-Forwarded-Proto", proto)],
            )
        };
        assert_eq!(get("http").status, 301, "{mode}");
        assert_eq!(
            get("https").status,
            200,
            "{mode}: the redirect was served to HTTPS"
        );
        assert!(get("https").cache_status().contains("hit"), "{mode}");
        assert_eq!(get("http").status, 301, "{mode}");
        assert_eq!(origin.hits_for(&path), 2, "{mode}");
        let auth = format!("Bearer {TOKEN}");
        let purged = send(
            "PURGE",
            &proxy.url(&path),
            &[("Host", "site.test"), ("Authorization", &auth)],
        );
        assert_eq!(purged.status, 200, "{mode}");
        assert_eq!(get("https").status, 200);
        assert_eq!(get("http").status, 301);
        assert_eq!(
            origin.hits_for(&path),
            4,
            "{mode}: both entries were purged"
        );
        // Claims the origin reads as plain http though a lenient reading sees https: another
        // case, empty (a TLS front proxy's line after it), not ASCII. Their redirect is
        // stored apart from the https page.
        for (i, claim) in ["HTTPS", "", "\u{e9}"].into_iter().enumerate() {
            let path = format!("/{mode}-claim{i}");
            let get = |proto: &[u8]| {
                let mut head = format!("GET {path} HTTP/1.1\r\nHost: site.test\r\n").into_bytes();
                head.extend_from_slice(b"X-Forwarded-Proto: ");
                head.extend_from_slice(proto);
                head.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
                String::from_utf8_lossy(&exchange(proxy.port, &head)).into_owned()
            };
            let first = get(claim.as_bytes());
            assert!(
                first.starts_with("HTTP/1.1 301"),
                "{mode} {claim:?}: {first}"
            );
            let https = get(b"https");
            assert!(
                https.starts_with("HTTP/1.1 200"),
                "{mode} {claim:?}: the redirect was served to HTTPS: {https}"
            );
        }
    }
}

/// Behind a proxy that terminates TLS and speaks one forwarding convention, "append" adds no
/// contradicting claim in the other: an origin that reads `Forwarded` first (Rack 3, Falcon)
/// or `X-Forwarded-Proto` first (Django) still sees HTTPS, so its redirect for plain
/// requests is never stored under the HTTPS key the front proxy's claim gives.
#[test]
fn append_does_not_contradict_the_scheme_the_proxy_in_front_claims() {
    let forwarded_proto = |seen: &Seen| {
        let forwarded = seen.header("forwarded")?;
        let first = forwarded.split(',').next()?;
        first
            .split(';')
            .find_map(|pair| pair.trim().strip_prefix("proto="))
            .map(str::to_owned)
    };
    let forwarded_first = Origin::start(move |seen| {
        let proto = forwarded_proto(seen).or(seen.header("x-forwarded-proto").map(Into::into));
        https_or_redirect(proto.as_deref())
    });
    let x_first = Origin::start(move |seen| {
        let proto = seen.header("x-forwarded-proto").map(Into::into);
        https_or_redirect(proto.or_else(|| forwarded_proto(seen)).as_deref())
    });
    let x_claims = [
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-For", "192.0.2.1"),
    ];
    let forwarded_claim = [("Forwarded", "for=192.0.2.1;proto=https")];
    for (origin, claims) in [
        (&forwarded_first, &x_claims[..]),
        (&x_first, &forwarded_claim[..]),
    ] {
        let proxy = Proxy::start_with_server(
            "forwarded_headers = \"append\"",
            CACHE,
            &[TenantSpec::new("site", origin.addr, &plugin("standard"))],
        );
        let mut headers = vec![("Host", "site.test")];
        headers.extend_from_slice(claims);
        let page = send("GET", &proxy.url("/page"), &headers);
        assert_eq!(
            page.status, 200,
            "{claims:?}: the origin took it for plain HTTP"
        );
    }
}

/// Behind a TLS front that says `X-Forwarded-Proto: https`, a client adds its own
/// `Forwarded: proto=http`. An origin that reads `Forwarded` first (Spring, Reactor Netty,
/// Rack 3) answers its redirect to HTTPS; keyed by `X-Forwarded-Proto` alone, that redirect
/// was stored under the plain HTTPS key and served to every HTTPS client, a loop (probe AO).
/// The key names every reading the fields allow.
#[test]
fn a_forwarded_claim_beside_x_forwarded_proto_keeps_its_own_entry() {
    let spring_like = Origin::start(|seen| {
        // Spring's pattern search: the first `proto=` anywhere in `Forwarded`.
        let proto = match seen.header("forwarded") {
            Some(forwarded) => forwarded.split("proto=").nth(1).map(|rest| {
                rest.trim_start_matches('"')
                    .split([';', ',', '"'])
                    .next()
                    .unwrap_or("")
                    .to_owned()
            }),
            None => seen.header("x-forwarded-proto").map(Into::into),
        };
        https_or_redirect(proto.as_deref())
    });
    for mode in ["append", "off"] {
        let proxy = Proxy::start_with_server(
            &format!("forwarded_headers = \"{mode}\""),
            CACHE,
            &[TenantSpec::new(
                "site",
                spring_like.addr,
                &plugin("standard"),
            )],
        );
        let front = [("Host", "site.test"), ("X-Forwarded-Proto", "https")];
        let mut attack = front.to_vec();
        attack.push(("Forwarded", "for=192.0.2.1;proto=http"));
        let path = format!("/page-{mode}");
        assert_eq!(
            send("GET", &proxy.url(&path), &attack).status,
            301,
            "{mode}"
        );
        let innocent = send("GET", &proxy.url(&path), &front);
        assert_eq!(
            (innocent.status, innocent.text().as_str()),
            (200, "page"),
            "{mode}: {}",
            innocent.cache_status()
        );
    }
}

fn https_or_redirect(proto: Option<&str>) -> Reply {
    let reply = match proto {
        Some("https") => Reply::ok("page"),
        _ => Reply::ok("moved").status(301),
    };
    reply.header("Cache-Control", "max-age=600")
}

/// A field that makes some frameworks treat a GET as another method or another path is in no
/// key: such a request goes to the origin without the cache, so its answer is never stored
/// for the URL (nor a stored answer served to it).
#[test]
fn requests_that_override_their_method_or_target_never_use_the_cache() {
    let origin = Origin::start(|seen| {
        let method = seen
            .header("x-http-method-override")
            .unwrap_or(&seen.method);
        let path = seen.header("x-original-url").unwrap_or(&seen.url);
        Reply::ok(format!("{method} {path}")).header("Cache-Control", "max-age=600")
    });
    for policy in [plugin("standard"), PathBuf::from("builtin:standard")] {
        let proxy = Proxy::start(CACHE, &[TenantSpec::new("site", origin.addr, &policy)]);
        let get = |extra: &[(&str, &str)]| {
            let mut headers = vec![("Host", "site.test")];
            headers.extend_from_slice(extra);
            send("GET", &proxy.url("/page"), &headers)
        };
        for field in [
            ("X-HTTP-Method-Override", "DELETE"),
            ("X-Original-URL", "/admin"),
        ] {
            let overridden = get(&[field]);
            assert!(
                overridden.cache_status().contains("fwd=bypass"),
                "{}",
                overridden.cache_status()
            );
        }
        assert_eq!(
            get(&[]).text(),
            "GET /page",
            "nothing overridden was stored"
        );
        assert!(get(&[]).cache_status().contains("hit"));
        assert_ne!(get(&[("X-Original-URL", "/admin")]).text(), "GET /page");
    }
}

/// A 0.3.0 plugin is shown the forwarding fields before they are written: a request sent
/// on after the plugin failed (`on_plugin_error = "bypass"`) still gets them.
#[test]
fn a_request_bypassed_after_a_plugin_fault_gets_the_forwarding_fields() {
    let origin = echo_origin();
    let proxy = Proxy::start(
        CACHE,
        &[
            TenantSpec::new("site", origin.addr, &support::fixture("panic"))
                .extra("on_plugin_error = \"bypass\""),
        ],
    );
    let resp = send(
        "GET",
        &proxy.url("/panic/request"),
        &[("Host", "site.test"), ("X-Forwarded-For", "6.6.6.6")],
    );
    assert_eq!(resp.status, 200);
    assert!(
        resp.cache_status().contains("plugin fault"),
        "{}",
        resp.cache_status()
    );
    let seen = origin.seen().pop().expect("the origin got the request");
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-host"), Some("site.test"));
    assert_eq!(seen.header("via"), Some("1.1 cachet"));
}

/// The refresh behind a stale-while-revalidate hit is rebuilt by Pingora from the client's
/// own head: it must reach the origin with the same forwarding fields as a foreground fetch,
/// the client's claims replaced (it carried none of cachet's, and the client's as sent).
#[test]
fn a_background_revalidation_carries_the_forwarding_fields() {
    let origin = Origin::start(|seen| {
        Reply::ok(format!("origin saw {}", seen.url))
            .header("Cache-Control", "max-age=1, stale-while-revalidate=30")
    });
    for policy in [plugin("standard"), PathBuf::from("builtin:standard")] {
        let proxy = Proxy::start(CACHE, &[TenantSpec::new("site", origin.addr, &policy)]);
        let path = format!("/swr-{}", origin.hits());
        let spoofed = [
            ("Host", "site.test"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("Forwarded", "for=6.6.6.6"),
        ];
        assert_eq!(send("GET", &proxy.url(&path), &spoofed).status, 200);
        let before = origin.hits_for(&path);
        std::thread::sleep(Duration::from_millis(2100));
        let stale = send("GET", &proxy.url(&path), &spoofed);
        assert!(
            stale.cache_status().contains("fwd=stale"),
            "{}",
            stale.cache_status()
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while origin.hits_for(&path) == before {
            assert!(
                std::time::Instant::now() < deadline,
                "no background refresh"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let refresh = origin.seen().pop().expect("the refresh reached the origin");
        assert_eq!(refresh.url, path);
        assert_eq!(
            refresh.header("x-forwarded-for"),
            Some("127.0.0.1"),
            "{policy:?}"
        );
        assert_eq!(
            refresh.header("forwarded"),
            Some("for=127.0.0.1;proto=http;host=\"site.test\""),
            "{policy:?}"
        );
        assert_eq!(refresh.header("x-forwarded-host"), Some("site.test"));
        assert_eq!(refresh.header("via"), Some("1.1 cachet"));
    }
}

/// A plugin reads the head as text. Bytes that are not UTF-8 (legal obs-text in HTTP/1.1)
/// would reach it as U+FFFD while the origin got them as sent: requests the origin answers
/// differently (`lang=fr\xe9`, `lang=fr\xe8`) would share one cache entry. They are refused.
#[test]
fn field_values_that_are_not_text_are_refused_before_any_key_is_made() {
    let origin = Origin::start(|seen| {
        let cookie = seen.header("cookie").unwrap_or_default();
        Reply::ok(format!("origin saw cookie {cookie:?}")).header("Cache-Control", "max-age=600")
    });
    let proxy = Proxy::start(
        CACHE,
        &[TenantSpec::new("site", origin.addr, &plugin("vcl-port"))],
    );
    for byte in [0xe9u8, 0xe8, 0xff] {
        let mut head = b"GET /news HTTP/1.1\r\nHost: site.test\r\nCookie: lang=fr".to_vec();
        head.push(byte);
        head.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
        let answers = parse_responses(&exchange(proxy.port, &head));
        assert_eq!(answers.len(), 1, "{byte:#x}");
        assert_eq!(answers[0].status, 400, "{byte:#x}: {:?}", answers[0]);
    }
    assert_eq!(origin.hits(), 0, "{:?}", origin.seen());
    // The same value written as UTF-8 is text: served, and keyed on what the origin saw.
    let utf8 = one(
        proxy.port,
        "GET /news HTTP/1.1\r\nHost: site.test\r\nCookie: lang=fr\u{e9}\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(utf8.status, 200, "{utf8:?}");
    assert_eq!(origin.hits(), 1);
}

/// Pingora's own log lines about a failed request name its method, path and host, never its
/// query: tokens and passwords in a query were written to the log on every origin failure.
#[test]
fn origin_failures_log_no_query() {
    let dead: std::net::SocketAddr = format!("127.0.0.1:{}", support::free_port())
        .parse()
        .unwrap();
    let proxy = Proxy::start(CACHE, &[TenantSpec::new("site", dead, &plugin("standard"))]);
    let resp = send(
        "GET",
        &proxy.url("/login?password=hunter2&token=ZZSECRET"),
        &[("Host", "site.test")],
    );
    assert_eq!(resp.status, 502);
    let log = proxy.assert_logged(&["GET /login"]);
    assert!(
        !log.contains("hunter2") && !log.contains("ZZSECRET"),
        "{log}"
    );
}

/// The other fields some frameworks take the scheme from (`X-Forwarded-Scheme`,
/// `X-Forwarded-Ssl`: Rack; `Front-End-Https`; `X-Url-Scheme`) never reach the origin unseen
/// by the key: "replace" drops a client's, "append" and "off" give a request carrying one its
/// own entry. A client's `X-Forwarded-Scheme: http` used to store the origin's redirect to
/// https under the plain entry, a redirect loop for every other client.
#[test]
fn other_scheme_fields_are_dropped_or_keyed() {
    let rack_like = Origin::start(|seen| {
        let told = seen
            .header("x-forwarded-scheme")
            .or(seen.header("x-url-scheme"))
            .or(seen
                .header("front-end-https")
                .map(|v| if v == "on" { "https" } else { "http" }))
            .or(seen
                .header("x-forwarded-ssl")
                .map(|v| if v == "on" { "https" } else { "http" }))
            .or(seen.header("x-forwarded-proto"));
        https_or_redirect(told)
    });
    let attacks = [
        ("X-Forwarded-Scheme", "http"),
        ("X-Url-Scheme", "http"),
        ("Front-End-Https", "off"),
        ("X-Forwarded-Ssl", "off"),
    ];
    for mode in ["replace", "append", "off"] {
        let proxy = Proxy::start_with_server(
            &format!("forwarded_headers = \"{mode}\""),
            CACHE,
            &[TenantSpec::new("site", rack_like.addr, &plugin("standard"))],
        );
        for (i, attack) in attacks.iter().enumerate() {
            let path = format!("/page-{mode}-{i}");
            // What a TLS front in front of cachet says (under "replace" cachet's own hop
            // is plain HTTP: its answer is the redirect either way, and must be the same).
            let front = [("Host", "site.test"), ("X-Forwarded-Proto", "https")];
            let mut with_attack = front.to_vec();
            with_attack.push(*attack);
            let attacked = send("GET", &proxy.url(&path), &with_attack);
            let innocent = send("GET", &proxy.url(&path), &front);
            let direct = match mode {
                "replace" => 301,
                _ => 200,
            };
            assert_eq!(
                innocent.status,
                direct,
                "{mode} {attack:?}: {} (attack answered {})",
                innocent.cache_status(),
                attacked.status
            );
            if mode == "replace" {
                assert_eq!(attacked.status, 301, "{mode} {attack:?}");
                let last = rack_like.seen().pop().expect("the origin was asked");
                assert!(
                    last.header(attack.0).is_none(),
                    "{mode}: {attack:?} reached the origin"
                );
            }
        }
    }
}
