//! The HTTP/1.1 front (`host/src/front`), end to end over raw TCP against the real binary:
//! lean hits answered below Pingora's HTTP session, everything else handed to Pingora with
//! the bytes already read, and the connection coming back to the front afterwards. The
//! counter fixture answers `/count` itself with how many times its (reused) instance ran
//! `on-request`, which shows whether a request the front planned and handed over ran the
//! plugin once or twice.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use support::client::send;
use support::fixture;
use support::origin::{Origin, Reply};
use support::proxy::{Proxy, TenantSpec};
use support::wire::{exchange, parse_responses};

/// An origin that answers every URL with what it saw, cacheable for 10 minutes.
fn echo_origin() -> Origin {
    Origin::start(|seen| {
        Reply::ok(format!("origin saw {}", seen.url)).header("Cache-Control", "max-age=600")
    })
}

fn counter_proxy(origin: &Origin, cache: &str) -> Proxy {
    Proxy::start(
        cache,
        &[TenantSpec::new("counted", origin.addr, &fixture("counter"))
            .extra("[tenant.plugin_config]\ngreeting = \"hi\"\n")
            .limits("hook_timeout_ms = 250\ninstance_reuse = 1000")],
    )
}

/// `name` as the admin listener's metrics report it (0 before it is first counted).
fn counted(proxy: &Proxy, name: &str) -> u64 {
    let metrics = send("GET", &proxy.admin_url("/metrics"), &[]).text();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .map_or(0, |v| v.trim().parse().expect("counter value"))
}

fn get(path: &str, last: bool) -> String {
    let close = if last { "Connection: close\r\n" } else { "" };
    format!("GET {path} HTTP/1.1\r\nHost: site.test\r\n{close}\r\n")
}

/// One keep-alive connection, one request at a time.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open(port: u16) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    /// Sends `request` and reads one response (framed by its Content-Length).
    fn ask(&mut self, request: &str) -> support::wire::RawResp {
        self.stream.write_all(request.as_bytes()).expect("send");
        loop {
            let mut fields = [httparse::EMPTY_HEADER; 64];
            let mut head = httparse::Response::new(&mut fields);
            if let Ok(httparse::Status::Complete(len)) = head.parse(&self.buf) {
                let body: usize = head
                    .headers
                    .iter()
                    .find(|f| f.name.eq_ignore_ascii_case("content-length"))
                    .map(|f| {
                        std::str::from_utf8(f.value)
                            .expect("length")
                            .parse()
                            .expect("length")
                    })
                    .expect("a Content-Length");
                if self.buf.len() >= len + body {
                    let bytes: Vec<u8> = self.buf.drain(..len + body).collect();
                    return parse_responses(&bytes).remove(0);
                }
            }
            let mut chunk = [0u8; 8192];
            let n = self.stream.read(&mut chunk).expect("read");
            assert!(
                n > 0,
                "closed early: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[test]
fn the_front_answers_hits_and_gets_the_connection_back_after_each_handover() {
    let origin = echo_origin();
    let proxy = counter_proxy(&origin, "max_bytes = \"16MiB\"");
    let mut conn = Conn::open(proxy.port);
    let mut answers = Vec::new();
    for path in ["/a", "/a", "/count", "/b", "/a", "/count", "/a"] {
        let resp = conn.ask(&get(path, false));
        let status = resp.header("cache-status").unwrap_or("").to_string();
        answers.push((resp.text(), status));
    }
    let bodies: Vec<&str> = answers.iter().map(|(b, _)| b.as_str()).collect();
    assert_eq!(
        bodies,
        [
            "origin saw /a",
            "origin saw /a",
            "count=1 greeting=hi ballast=0\n",
            "origin saw /b",
            "origin saw /a",
            // Twice the plugin for one request would have made this 3 or 4.
            "count=2 greeting=hi ballast=0\n",
            "origin saw /a",
        ]
    );
    for (i, (_, status)) in answers.iter().enumerate() {
        match i {
            0 | 3 => assert!(status.contains("fwd=miss"), "{answers:?}"),
            1 | 4 | 6 => assert!(status.contains("; hit"), "{answers:?}"),
            _ => {}
        }
    }
    assert_eq!(origin.hits_for("/a"), 1);
    assert_eq!(origin.hits_for("/b"), 1);
    // Each hit after a miss or a plugin answer: the connection came back to the front.
    assert_eq!(counted(&proxy, "cachet_front_hits_total"), 3);
    // The two misses and the two plugin answers: planned once, finished by Pingora.
    assert_eq!(counted(&proxy, "cachet_front_handovers_total"), 4);
    // The last hit ends the connection when asked to.
    let last = conn.ask(&get("/a", true));
    assert_eq!(last.header("connection"), Some("close"));
    assert_eq!(counted(&proxy, "cachet_front_hits_total"), 4);
}

#[test]
fn pipelined_requests_through_front_and_pingora_are_answered_in_order() {
    let origin = echo_origin();
    let proxy = counter_proxy(&origin, "max_bytes = \"16MiB\"");
    let requests = [
        get("/a", false),
        get("/a", false),
        get("/count", false),
        get("/b", false),
        get("/a", false),
        get("/count", false),
        get("/a", true),
    ];
    // Twice: cold (the first request a miss) and warm (the first one a front hit).
    for round in 0..2 {
        let bytes = exchange(proxy.port, requests.concat().as_bytes());
        let bodies: Vec<String> = parse_responses(&bytes).iter().map(|r| r.text()).collect();
        let count = |n: usize| format!("count={} greeting=hi ballast=0\n", 2 * round + n);
        assert_eq!(
            bodies,
            [
                "origin saw /a".to_string(),
                "origin saw /a".into(),
                count(1),
                "origin saw /b".into(),
                "origin saw /a".into(),
                count(2),
                "origin saw /a".into(),
            ],
            "{}",
            String::from_utf8_lossy(&bytes)
        );
    }
    assert_eq!(origin.hits(), 2);
}

#[test]
fn a_head_that_arrives_in_pieces_is_answered_by_the_front() {
    let origin = echo_origin();
    let proxy = counter_proxy(&origin, "max_bytes = \"16MiB\"");
    exchange(proxy.port, get("/piece", true).as_bytes());
    let mut conn = TcpStream::connect(("127.0.0.1", proxy.port)).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    for piece in ["GET /pie", "ce HTTP/1.1\r\nHo", "st: site.test\r\n", "\r\n"] {
        conn.write_all(piece.as_bytes()).expect("send");
        std::thread::sleep(Duration::from_millis(50));
    }
    conn.write_all(get("/piece", true).as_bytes())
        .expect("send");
    let mut bytes = Vec::new();
    conn.read_to_end(&mut bytes).expect("read");
    let responses = parse_responses(&bytes);
    assert_eq!(responses.len(), 2, "{}", String::from_utf8_lossy(&bytes));
    for resp in &responses {
        assert_eq!(resp.text(), "origin saw /piece");
    }
    assert_eq!(origin.hits(), 1);
    assert_eq!(counted(&proxy, "cachet_front_hits_total"), 2);
}

#[test]
fn requests_the_front_does_not_read_are_pingoras_and_the_connection_comes_back() {
    let origin = echo_origin();
    let proxy = counter_proxy(&origin, "max_bytes = \"16MiB\"");
    exchange(proxy.port, get("/h", true).as_bytes());
    let mut conn = Conn::open(proxy.port);
    let mut asked = Vec::new();
    for request in [
        // A range and a conditional request: planned by the front, finished by Pingora.
        "GET /h HTTP/1.1\r\nHost: site.test\r\nRange: bytes=0-4\r\n\r\n".to_string(),
        "GET /h HTTP/1.1\r\nHost: site.test\r\nIf-None-Match: \"nope\"\r\n\r\n".to_string(),
        // A body and HTTP/1.0: read by Pingora from the bytes the front read.
        "GET /h HTTP/1.1\r\nHost: site.test\r\nContent-Length: 4\r\n\r\nbody".to_string(),
        "GET /h HTTP/1.0\r\nHost: site.test\r\nConnection: keep-alive\r\n\r\n".to_string(),
        get("/h", false),
    ] {
        let resp = conn.ask(&request);
        asked.push((resp.status, resp.text()));
    }
    assert_eq!(
        asked,
        [
            (206, "origi".into()),
            (200, "origin saw /h".into()),
            (200, "origin saw /h".into()),
            (200, "origin saw /h".into()),
            (200, "origin saw /h".to_string()),
        ]
    );
    // The GET with a body went to the origin (the key never covers a body); the last GET
    // was a hit the front answered once Pingora gave the connection back.
    assert_eq!(origin.hits_for("/h"), 2);
    assert_eq!(counted(&proxy, "cachet_front_hits_total"), 1);
    // The first miss, the range and the conditional request.
    assert_eq!(counted(&proxy, "cachet_front_handovers_total"), 3);
}

#[test]
fn with_lean_hits_off_every_request_takes_pingoras_full_path() {
    let origin = echo_origin();
    let proxy = counter_proxy(&origin, "max_bytes = \"16MiB\"\nlean_hits = false");
    let bytes = exchange(
        proxy.port,
        [get("/off", false), get("/off", false), get("/off", true)]
            .concat()
            .as_bytes(),
    );
    let responses = parse_responses(&bytes);
    assert_eq!(responses.len(), 3);
    assert!(responses[2]
        .header("cache-status")
        .unwrap_or("")
        .contains("hit"));
    assert_eq!(origin.hits(), 1);
    assert_eq!(counted(&proxy, "cachet_front_hits_total"), 0);
    assert_eq!(counted(&proxy, "cachet_lean_hits_total"), 0);
}

/// The response head with `Date`, `Age` and the `ttl` values masked (they move with the
/// clock).
fn masked_head(resp: &[u8]) -> String {
    let text = String::from_utf8_lossy(resp);
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    head.lines()
        .map(|line| match line.split_once(": ") {
            Some((name, _)) if name == "Date" || name == "Age" => format!("{name}: <masked>"),
            Some((name, value)) if name == "cache-status" => match value.split_once("ttl=") {
                Some((before, _)) => format!("{name}: {before}ttl=<masked>"),
                None => line.to_string(),
            },
            _ => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

#[test]
fn the_front_writes_a_hit_byte_for_byte_as_pingoras_writer_would() {
    // Fields the hit writer replaces in place (`date`, `accept-ranges`, in lowercase) or
    // keeps as sent, in an order the answer must keep.
    let origin = Origin::start(|seen| {
        Reply::ok(format!("origin saw {}", seen.url))
            .header("X-First", "a")
            .header(
                "date",
                &httpdate::fmt_http_date(std::time::SystemTime::now()),
            )
            .header("Cache-Control", "max-age=600")
            .header("accept-ranges", "none")
            .header("x-last", "z")
    });
    let proxy = counter_proxy(&origin, "max_bytes = \"16MiB\"");
    exchange(proxy.port, get("/same", true).as_bytes());
    let mut conn = Conn::open(proxy.port);
    let ask = |conn: &mut Conn, connection: &str| {
        let request =
            format!("GET /same HTTP/1.1\r\nHost: site.test\r\nConnection: {connection}\r\n\r\n");
        conn.stream.write_all(request.as_bytes()).expect("send");
        let mut bytes = Vec::new();
        while !bytes.ends_with(b"origin saw /same") {
            let mut chunk = [0u8; 4096];
            let n = conn.stream.read(&mut chunk).expect("read");
            assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&bytes));
            bytes.extend_from_slice(&chunk[..n]);
        }
        bytes
    };
    // The front writes the first; a `Connection` field it does not read sends the second
    // to Pingora, whose request phase answers it from the same stored copy (lean path).
    let front = ask(&mut conn, "keep-alive");
    assert_eq!(counted(&proxy, "cachet_front_hits_total"), 1);
    let pingora = ask(&mut conn, "keep-alive, X-Probe");
    assert_eq!(counted(&proxy, "cachet_front_hits_total"), 1);
    assert_eq!(counted(&proxy, "cachet_lean_hits_total"), 2);
    assert_eq!(masked_head(&front), masked_head(&pingora));
    assert!(
        masked_head(&front).starts_with(
            "HTTP/1.1 200 X\r\nContent-Type: text/plain\r\nx-first: a\r\nDate: <masked>\r\n\
             Cache-Control: max-age=600\r\nAccept-Ranges: bytes\r\nx-last: z\r\n\
             Content-Length: 16\r\nAge: <masked>\r\ncache-status: cachet; hit; ttl="
        ),
        "{}",
        masked_head(&front)
    );
    assert!(masked_head(&front).ends_with("\r\nConnection: keep-alive"));
    assert_eq!(origin.hits(), 1);
}

/// Sends `first`, waits, then streams `filler` bytes of a field value, and reads the answer.
fn long_head_answer(port: u16, first: &str, filler: usize) -> Vec<u8> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    conn.write_all(first.as_bytes()).expect("send");
    std::thread::sleep(Duration::from_millis(100));
    let rest = format!(
        " /x HTTP/1.1\r\nHost: site.test\r\nX-Long: {}",
        "a".repeat(filler)
    );
    // The proxy stops reading at its limit: the rest may not be taken.
    let _ = conn.write_all(rest.as_bytes());
    let mut bytes = Vec::new();
    let _ = conn.read_to_end(&mut bytes);
    bytes
}

#[test]
fn a_head_that_starts_like_the_http2_preface_is_bounded_like_any_other() {
    let origin = echo_origin();
    for h2c in [false, true] {
        let proxy = Proxy::start_with_server(
            &format!("max_request_head = \"16KiB\"\nh2c = {h2c}"),
            "max_bytes = \"16MiB\"",
            &[TenantSpec::new("site", origin.addr, &fixture("counter"))],
        );
        // `PRI` is how the HTTP/2 preface starts: the guard took it for HTTP/2 and stopped
        // bounding the head, and the front kept buffering it (hundreds of MiB).
        let answer = long_head_answer(proxy.port, "PRI", 1 << 20);
        assert!(
            answer.starts_with(b"HTTP/1.1 431 "),
            "h2c {h2c}: {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(200)])
        );
        let answer = long_head_answer(proxy.port, "GET", 1 << 20);
        assert!(answer.starts_with(b"HTTP/1.1 431 "), "h2c {h2c}");
    }
    assert_eq!(origin.hits(), 0);
}

#[test]
fn a_hit_that_ends_the_connection_reads_out_what_the_client_still_sent() {
    let origin = echo_origin();
    let proxy = counter_proxy(&origin, "max_bytes = \"16MiB\"");
    exchange(proxy.port, get("/linger", true).as_bytes());
    for _ in 0..3 {
        let mut conn = TcpStream::connect(("127.0.0.1", proxy.port)).expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut sent = get("/linger", true).into_bytes();
        // Requests after the last one are never answered, but must not reset the connection
        // before the client has read its answer (RFC 9112 §9.6).
        sent.extend(std::iter::repeat_n(b'x', 100_000));
        conn.write_all(&sent).expect("send");
        std::thread::sleep(Duration::from_millis(100));
        let mut bytes = Vec::new();
        conn.read_to_end(&mut bytes)
            .expect("an orderly close, not a reset");
        let responses = parse_responses(&bytes);
        assert_eq!(responses.len(), 1);
        assert_eq!(responses[0].text(), "origin saw /linger");
        assert_eq!(responses[0].header("connection"), Some("close"));
    }
    assert_eq!(counted(&proxy, "cachet_front_hits_total"), 3);
}

/// The answer to `head` sent in two writes, split after `split` bytes with a pause between.
fn answer_split(port: u16, head: &str, split: usize) -> Vec<u8> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    conn.set_nodelay(true).expect("nodelay");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    conn.write_all(&head.as_bytes()[..split]).expect("send");
    std::thread::sleep(Duration::from_millis(150));
    conn.write_all(&head.as_bytes()[split..]).expect("send");
    let mut bytes = Vec::new();
    let _ = conn.read_to_end(&mut bytes);
    bytes
}

#[test]
fn a_target_pingora_repairs_gets_one_answer_wherever_the_bytes_are_split() {
    let origin = echo_origin();
    let proxy = counter_proxy(&origin, "max_bytes = \"16MiB\"");
    let head = "GET /sp ace HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n";
    // Handed to Pingora with only `GET /sp ace` read, the request got a 400; whole, Pingora
    // percent-encodes the space and forwards it.
    for split in [
        head.len(),
        "GET /sp ace".len(),
        "GET /sp ace HTTP/1".len(),
        3,
    ] {
        let responses = parse_responses(&answer_split(proxy.port, head, split));
        assert_eq!(responses.len(), 1, "split at {split}");
        assert_eq!(responses[0].status, 200, "split at {split}");
        assert_eq!(
            responses[0].text(),
            "origin saw /sp%20ace",
            "split at {split}"
        );
    }
    assert_eq!(origin.hits_for("/sp%20ace"), 1);
}

/// What a client that trickles a head gets, and when: `request_line` and `Host`, then a field
/// every 150 ms (20 at most; a write fails once the head is refused), until the connection
/// ends (10 s at most).
fn trickled_head(port: u16, request_line: &str) -> (Vec<u8>, Duration) {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    conn.set_nodelay(true).expect("nodelay");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let began = std::time::Instant::now();
    conn.write_all(format!("{request_line}\r\nHost: site.test\r\n").as_bytes())
        .expect("send");
    for i in 0..20 {
        std::thread::sleep(Duration::from_millis(150));
        if conn.write_all(format!("X-{i}: 1\r\n").as_bytes()).is_err() {
            break;
        }
    }
    let mut bytes = Vec::new();
    let _ = conn.read_to_end(&mut bytes);
    (bytes, began.elapsed())
}

/// `[server] request_head_timeout`: a head trickled in a field at a time is answered 408
/// once the time is up, however steadily its bytes come (each read alone would wait 60 s);
/// a slow head that is whole in time and a connection idle between requests are not cut.
#[test]
fn a_head_not_whole_within_request_head_timeout_gets_408() {
    let origin = echo_origin();
    let proxy = Proxy::start_with_server(
        "request_head_timeout = \"1s\"",
        "max_bytes = \"16MiB\"",
        &[TenantSpec::new("site", origin.addr, &fixture("counter"))],
    );
    let (bytes, answered) = trickled_head(proxy.port, "GET /trickle HTTP/1.1");
    let responses = parse_responses(&bytes);
    assert_eq!(responses.len(), 1, "{:?}", String::from_utf8_lossy(&bytes));
    assert_eq!(responses[0].status, 408);
    assert!(
        answered >= Duration::from_millis(900) && answered < Duration::from_secs(4),
        "answered after {answered:?}"
    );
    assert_eq!(origin.hits(), 0);
    let metrics = send("GET", &proxy.admin_url("/metrics"), &[]).text();
    assert!(
        metrics.contains("cachet_connections_refused_total{reason=\"head_timeout\"} 1"),
        "{metrics}"
    );

    // A head with more fields than 128 (Pingora takes 256) is held to the same time.
    let mut conn = TcpStream::connect(("127.0.0.1", proxy.port)).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let fields: String = (0..200).map(|i| format!("X-{i}: 1\r\n")).collect();
    conn.write_all(format!("GET /many HTTP/1.1\r\nHost: site.test\r\n{fields}X-Last: ").as_bytes())
        .expect("send");
    let mut bytes = Vec::new();
    let _ = conn.read_to_end(&mut bytes);
    assert!(
        bytes.starts_with(b"HTTP/1.1 408 "),
        "{:?}",
        String::from_utf8_lossy(&bytes)
    );

    // Whole in time, though in pieces; then idle longer than the head timeout.
    let mut conn = Conn::open(proxy.port);
    conn.stream.set_nodelay(true).expect("nodelay");
    for piece in [
        "GET /slow-but-whole HTTP/1.1\r\n",
        "Host: site.test\r\n",
        "\r\n",
    ] {
        conn.stream.write_all(piece.as_bytes()).expect("send");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(conn.ask("").status, 200);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(conn.ask(&get("/slow-but-whole", false)).status, 200);

    // A stray empty line after a hit (RFC 9112 lets servers skip it) begins no head: the
    // connection idles past the head timeout and serves the next request (it was refused
    // 408 once the head timeout ran out), and a request after empty lines is answered.
    let hit = conn.ask(&format!("{}\r\n", get("/slow-but-whole", false)));
    assert_eq!(hit.status, 200);
    std::thread::sleep(Duration::from_millis(1500));
    let after = conn.ask(&format!("\r\n{}", get("/slow-but-whole", false)));
    assert_eq!(
        after.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&after.body)
    );
    assert_eq!(origin.hits(), 1);

    // Empty lines sent now and then are no way to hold a connection: from the second one
    // they count as a head begun, refused 408 when no head follows in time. (Each restarted
    // the 60 s idle wait: a line a minute held a connection slot for weeks.)
    let began = std::time::Instant::now();
    let mut refused = Vec::new();
    for _ in 0..10 {
        if conn.stream.write_all(b"\r\n").is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
        conn.stream
            .set_read_timeout(Some(Duration::from_millis(10)))
            .expect("timeout");
        let mut chunk = [0u8; 512];
        if let Ok(n) = std::io::Read::read(&mut conn.stream, &mut chunk) {
            refused.extend_from_slice(&chunk[..n]);
            if n == 0 || refused.ends_with(b"\n") {
                break;
            }
        }
    }
    let refused = String::from_utf8_lossy(&refused);
    assert!(refused.starts_with("HTTP/1.1 408"), "{refused:?}");
    assert!(
        began.elapsed() < Duration::from_secs(3),
        "{:?}",
        began.elapsed()
    );
}

/// A client that stops taking a response does not keep its connection: after
/// `client_write_timeout` without progress the connection is closed, for a hit the front
/// writes and for a response Pingora writes (here a miss streamed from the origin) alike.
#[test]
fn a_client_that_stops_reading_is_let_go_after_client_write_timeout() {
    const LEN: usize = 8 << 20;
    let origin =
        Origin::start(|_| Reply::ok(vec![b'x'; LEN]).header("Cache-Control", "max-age=600"));
    let proxy = Proxy::start_with_server(
        "client_write_timeout = \"1s\"",
        "",
        &[TenantSpec::new(
            "site",
            origin.addr,
            &support::plugin("standard"),
        )],
    );
    assert_eq!(send("GET", &proxy.url("/warm"), &[]).body.len(), LEN);
    let open = || proxy.connections_open();
    for path in ["/warm", "/cold"] {
        // No other client connection (the warm-up's, the last round's) is counted below.
        support::wait_until("earlier connections are closed", || open() == 0);
        let mut client = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
        // A small receive buffer, never read while the response is written.
        let size: libc::c_int = 16 * 1024;
        // SAFETY: a valid socket descriptor owned by `client`, and a c_int option value.
        let set = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&client),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(set, 0);
        write!(client, "GET {path} HTTP/1.1\r\nHost: site.test\r\n\r\n").unwrap();
        // Taken in, then let go by the proxy: no fixed wait a busy machine can outlast.
        support::wait_until("the connection is taken in", || open() == 1);
        support::wait_until("the stalled client is let go", || open() == 0);
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut got = Vec::new();
        let _ = client.read_to_end(&mut got);
        assert!(
            got.starts_with(b"HTTP/1.1 200 ") && got.len() < LEN,
            "{path}: {} bytes, the whole response was still sent",
            got.len()
        );
    }
}

/// A request whose head Pingora holds in part (it came in the same write as the request
/// before, which Pingora answered) is Pingora's to finish, whatever its bytes say: the
/// front never takes the connection back mid-message and reads a body as a request of its
/// own (request smuggling). The field below imitates the text the front once looked for.
#[test]
fn a_head_pingora_holds_in_part_is_finished_by_pingora_whatever_it_says() {
    let origin = echo_origin();
    let proxy = Proxy::start(
        "max_bytes = \"16MiB\"",
        &[TenantSpec::new("site", origin.addr, &fixture("counter")).hosts(&["site.test"])],
    );
    let body = "GET /smuggled HTTP/1.1\r\nHost: site.test\r\n\r\n";
    let mut conn = Conn::open(proxy.port);
    conn.stream.set_nodelay(true).expect("nodelay");
    let refused = conn.ask(&format!(
        "GET / HTTP/1.1\r\nHost: no-such-tenant\r\n\r\n\
         POST /p HTTP/1.1\r\nHost: site.test\r\nX-Note: pipelined_prefix: None\r\n\
         Content-Length: {}\r\n",
        body.len()
    ));
    assert_eq!(refused.status, 421);
    let posted = conn.ask(&format!("\r\n{body}"));
    assert_eq!(posted.text(), "origin saw /p");
    let after = conn.ask(&get("/after", true));
    assert_eq!(after.text(), "origin saw /after");
    let seen: Vec<(String, String, Vec<u8>)> = origin
        .seen()
        .into_iter()
        .map(|s| (s.method, s.url, s.body))
        .collect();
    assert_eq!(
        seen,
        [
            (
                "POST".to_string(),
                "/p".to_string(),
                body.as_bytes().to_vec()
            ),
            ("GET".into(), "/after".into(), Vec::new()),
        ]
    );
}

/// A head begun after a request Pingora answered (in the same write) is held to
/// `request_head_timeout` as any head: a client cannot keep its connection slot for ever
/// by sending the first byte of a next request and no more.
#[test]
fn a_head_begun_behind_a_request_pingora_answered_gets_408_in_time() {
    let origin = echo_origin();
    let proxy = Proxy::start_with_server(
        "request_head_timeout = \"1s\"",
        "max_bytes = \"16MiB\"",
        &[TenantSpec::new("site", origin.addr, &fixture("counter")).hosts(&["site.test"])],
    );
    for (what, first) in [
        ("refused", "GET / HTTP/1.1\r\nHost: no-such-tenant\r\n\r\n"),
        ("a miss", "GET /miss HTTP/1.1\r\nHost: site.test\r\n\r\n"),
    ] {
        let began = std::time::Instant::now();
        let mut conn = TcpStream::connect(("127.0.0.1", proxy.port)).expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(6)))
            .expect("timeout");
        conn.write_all(format!("{first}G").as_bytes())
            .expect("send");
        let mut bytes = Vec::new();
        let _ = conn.read_to_end(&mut bytes);
        let answered = began.elapsed();
        let responses = parse_responses(&bytes);
        assert_eq!(
            responses.iter().map(|r| r.status).collect::<Vec<_>>(),
            [if what == "refused" { 421 } else { 200 }, 408],
            "{what}: {:?}",
            String::from_utf8_lossy(&bytes)
        );
        assert!(
            answered >= Duration::from_millis(900) && answered < Duration::from_secs(4),
            "{what}: answered after {answered:?}"
        );
    }

    // A head the front leaves to Pingora at once (a target Pingora repairs), its fields
    // trickling in: each read alone would wait 60 s.
    let (bytes, answered) = trickled_head(proxy.port, "GET /sp ace HTTP/1.1");
    assert!(
        bytes.starts_with(b"HTTP/1.1 408 "),
        "{:?}",
        String::from_utf8_lossy(&bytes)
    );
    assert!(
        answered < Duration::from_secs(4),
        "answered after {answered:?}"
    );
    assert_eq!(origin.hits(), 1);
}

/// The bounds on a head end where the head does, for requests Pingora reads too: a body
/// larger than `max_request_head`, a body or an origin slower than `request_head_timeout`,
/// all on requests the front hands over at once (a POST, a `Connection` field naming more
/// than keep-alive), are served whole, with one answer each. (Bounding the head Pingora
/// reads on from the front's bytes once put the bound on what followed it: a 431 cut
/// uploads, a 408 was written into responses.)
#[test]
fn requests_handed_over_whole_are_not_held_to_head_bounds_after_their_head() {
    let origin = Origin::start(|seen| {
        let reply = Reply::ok(format!("{} {} {}", seen.method, seen.url, seen.body.len()));
        if seen.url.contains("slow") {
            reply.delay(Duration::from_millis(1500))
        } else {
            reply
        }
    });
    for lean in [true, false] {
        let proxy = Proxy::start_with_server(
            "request_head_timeout = \"1s\"\nmax_request_head = \"16KiB\"",
            &format!("max_bytes = \"16MiB\"\nlean_hits = {lean}"),
            &[TenantSpec::new("site", origin.addr, &fixture("counter"))],
        );
        let mut conn = Conn::open(proxy.port);
        conn.stream.set_nodelay(true).expect("nodelay");
        let upload = "u".repeat(100_000);
        let big = conn.ask(&format!(
            "POST /upload HTTP/1.1\r\nHost: site.test\r\nContent-Length: {}\r\n\r\n{upload}",
            upload.len()
        ));
        assert_eq!(big.text(), "POST /upload 100000", "lean_hits = {lean}");
        // A body that comes after the head timeout.
        conn.stream
            .write_all(b"POST /late HTTP/1.1\r\nHost: site.test\r\nContent-Length: 5\r\n\r\n")
            .expect("send");
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(
            conn.ask("hello").text(),
            "POST /late 5",
            "lean_hits = {lean}"
        );
        // An origin slower than the head timeout, for a GET the front hands over unplanned.
        let slow = conn
            .ask("GET /slow HTTP/1.1\r\nHost: site.test\r\nConnection: keep-alive, X-Note\r\n\r\n");
        assert_eq!(slow.text(), "GET /slow 0", "lean_hits = {lean}");
        // Nothing else came after those answers: the next request gets its own.
        assert_eq!(
            conn.ask(&get("/last", true)).text(),
            "GET /last 0",
            "lean_hits = {lean}"
        );
        assert!(
            conn.buf.is_empty(),
            "{:?}",
            String::from_utf8_lossy(&conn.buf)
        );
    }
}

/// A stray empty line after a request Pingora read (RFC 9112 §2.2 lets a server skip it)
/// begins no head: the connection idles past `request_head_timeout` and serves the next
/// request, as after a request the front answered. (Kept by Pingora, the line started a
/// head's clock, and the idle connection got a 408 nobody asked for.)
#[test]
fn an_empty_line_after_a_body_begins_no_head() {
    let origin = echo_origin();
    let proxy = Proxy::start_with_server(
        "request_head_timeout = \"1s\"",
        "max_bytes = \"16MiB\"",
        &[TenantSpec::new("site", origin.addr, &fixture("counter"))],
    );
    let mut conn = Conn::open(proxy.port);
    let posted =
        conn.ask("POST /p HTTP/1.1\r\nHost: site.test\r\nContent-Length: 3\r\n\r\nabc\r\n");
    assert_eq!(posted.text(), "origin saw /p");
    std::thread::sleep(Duration::from_millis(1500));
    let after = conn.ask(&get("/after", true));
    assert_eq!(after.status, 200, "{}", after.text());
    assert_eq!(after.text(), "origin saw /after");
}
