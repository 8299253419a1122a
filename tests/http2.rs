//! HTTP/2 end to end: the real `cachet` binary reached by a real HTTP/2
//! client (the `h2` crate) over TLS with ALPN and as h2c on the plain
//! listener. The same caching scenarios run over HTTP/1.1, h2c and h2 over
//! TLS and must give the same answers, Cache-Status and origin counts.

mod support;

use std::sync::Arc;
use support::client::{send, Resp};
use support::http2_client::{h2_tls, h2c, H2Outcome, H2Request};
use support::origin::{Origin, Reply};
use support::plugin;
use support::proxy::{Proxy, TenantSpec};
use support::tls::{client_config, https_request, TestCa};

const TOKEN: &str = "h2-purge-token";
const SITE: &str = "site.test";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Protocol {
    Http1,
    H2c,
    H2Tls,
}

const PROTOCOLS: [Protocol; 3] = [Protocol::Http1, Protocol::H2c, Protocol::H2Tls];

/// cachet with h2c on its plain listener and a TLS listener, in front of an
/// origin that varies on Accept-Language and counts requests.
struct Setup {
    ca: TestCa,
    _certs: tempfile::TempDir,
    origin: Origin,
    proxy: Proxy,
}

impl Setup {
    fn start(server_extra: &str) -> Self {
        let ca = TestCa::new("h2 CA");
        let certs = tempfile::tempdir().unwrap();
        let (cert, key) = ca.leaf(&[SITE]).write(certs.path(), "site");
        let origin = Origin::start(|seen| {
            let lang = seen.header("accept-language").unwrap_or("none").to_owned();
            if seen.url.starts_with("/big") {
                // More than a stream's initial flow-control window (65,535 bytes).
                return Reply::ok(big_body(&seen.url)).header("Cache-Control", "max-age=60");
            }
            let cache_control = match seen.url.starts_with("/swr") {
                true => "max-age=3, stale-while-revalidate=60",
                false => "max-age=60",
            };
            let reply = Reply::ok(format!("{} {} {lang}", seen.method, seen.url))
                .header("Cache-Control", cache_control);
            if seen.url.contains("/vary") {
                reply.header("Vary", "Accept-Language")
            } else {
                reply
            }
        });
        let proxy = Proxy::start_with_server(
            &format!(
                "tls_listen = \"127.0.0.1:TLS_PORT\"\ntls_cert = {cert:?}\ntls_key = {key:?}\nadmin_token = \"{TOKEN}\"\n{server_extra}"
            ),
            "",
            &[TenantSpec::new("site", origin.addr, &plugin("standard")).hosts(&[SITE])],
        );
        Self {
            ca,
            _certs: certs,
            origin,
            proxy,
        }
    }

    fn tls_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        client_config(&[&self.ca], alpn, true)
    }

    /// Sends one request over `protocol` (a fresh connection each time).
    fn send(&self, protocol: Protocol, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
        let request = [H2Request {
            method,
            path,
            headers,
            body: None,
        }];
        let outcome = match protocol {
            Protocol::Http1 => {
                let mut all = vec![("Host", SITE)];
                all.extend_from_slice(headers);
                return send(method, &self.proxy.url(path), &all);
            }
            Protocol::H2c => h2c(self.proxy.port, SITE, &request),
            Protocol::H2Tls => {
                let port = self.proxy.tls_port.expect("TLS listener");
                h2_tls(port, self.tls_config(&[b"h2"]), SITE, SITE, &request)
            }
        };
        let mut outcome: H2Outcome = outcome
            .unwrap_or_else(|e| panic!("{protocol:?} {method} {path}: {e}\n{}", self.proxy.log()));
        outcome.responses.remove(0)
    }
    /// A TLS connection to the TLS listener offering only `h2` by ALPN; the handshake runs
    /// on its first read or write.
    fn h2_tls_stream(&self) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
        let name = rustls::pki_types::ServerName::try_from(SITE).unwrap();
        let conn = rustls::ClientConnection::new(self.tls_config(&[b"h2"]), name).unwrap();
        let port = self.proxy.tls_port.expect("TLS listener");
        let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        rustls::StreamOwned::new(conn, tcp)
    }

    /// Runs `client` on a runtime of its own, given a new plain TCP connection to the proxy
    /// (for tests that drive the `h2` crate directly).
    fn with_plain_connection<T, F>(&self, client: impl FnOnce(tokio::net::TcpStream) -> F) -> T
    where
        F: std::future::Future<Output = T>,
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.proxy.port))
                .await
                .unwrap();
            client(tcp).await
        })
    }
}

/// The body the origin sends for `/big...`: 200,000 bytes that name their path.
fn big_body(path: &str) -> Vec<u8> {
    path.bytes().cycle().take(200_000).collect()
}

/// `name` as the admin listener's metrics report it, summed over the series whose labels
/// include every one of `labels`.
fn metric(proxy: &Proxy, name: &str, labels: &[&str]) -> f64 {
    let token = format!("Bearer {TOKEN}");
    let metrics = send(
        "GET",
        &proxy.admin_url("/metrics"),
        &[("Authorization", &token)],
    );
    assert_eq!(metrics.status, 200, "{}", metrics.text());
    metrics
        .text()
        .lines()
        .filter(|l| {
            l.split([' ', '{']).next() == Some(name) && labels.iter().all(|x| l.contains(x))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// Cache-Status without its `ttl` (which counts down between requests).
fn status_form(resp: &Resp) -> String {
    resp.cache_status()
        .split(';')
        .map(str::trim)
        .filter(|p| !p.starts_with("ttl="))
        .collect::<Vec<_>>()
        .join("; ")
}

#[test]
fn a_miss_then_a_hit_reach_the_origin_once_over_every_protocol() {
    let setup = Setup::start("h2c = true");
    let mut forms = Vec::new();
    for protocol in PROTOCOLS {
        let path = format!("/same/{protocol:?}");
        let miss = setup.send(protocol, "GET", &path, &[]);
        let hit = setup.send(protocol, "GET", &path, &[]);
        assert_eq!(miss.status, 200, "{protocol:?}: {}", miss.text());
        assert_eq!(miss.text(), format!("GET {path} none"));
        assert_eq!(hit.text(), miss.text(), "{protocol:?}");
        assert!(
            hit.cache_status().contains("hit"),
            "{protocol:?}: {}",
            hit.cache_status()
        );
        assert_eq!(setup.origin.hits_for(&path), 1, "{protocol:?}");
        forms.push((protocol, status_form(&miss), status_form(&hit)));
    }
    // Every request reached the origin with the site's Host, whatever the client spoke.
    for seen in setup.origin.seen() {
        assert_eq!(seen.header("host"), Some(SITE), "{}", seen.url);
    }
    // One cache: an entry stored over HTTP/1.1 is a hit over HTTP/2 of the same scheme (same
    // key). HTTPS has its own entry: the origin is told the scheme.
    setup.send(Protocol::Http1, "GET", "/shared", &[]);
    let h2c = setup.send(Protocol::H2c, "GET", "/shared", &[]);
    assert!(h2c.cache_status().contains("hit"), "{}", h2c.cache_status());
    let tls = setup.send(Protocol::H2Tls, "GET", "/shared", &[]);
    assert!(
        tls.cache_status().contains("miss"),
        "{}",
        tls.cache_status()
    );
    assert_eq!(setup.origin.hits_for("/shared"), 2);
    for (protocol, miss, hit) in &forms[1..] {
        assert_eq!(
            (miss, hit),
            (&forms[0].1, &forms[0].2),
            "{protocol:?} differs from HTTP/1.1"
        );
    }
}

#[test]
fn vary_purge_and_a_plugin_bypass_behave_alike_over_every_protocol() {
    let setup = Setup::start("h2c = true");
    let auth = format!("Bearer {TOKEN}");
    let mut bypass_forms = Vec::new();
    for protocol in PROTOCOLS {
        // Vary: two variants stored side by side, each served from cache.
        let path = format!("/vary/{protocol:?}");
        let lang = |l: &str| setup.send(protocol, "GET", &path, &[("accept-language", l)]);
        assert_eq!(lang("en").text(), format!("GET {path} en"));
        assert_eq!(lang("fr").text(), format!("GET {path} fr"));
        let en = lang("en");
        assert_eq!(en.text(), format!("GET {path} en"), "{protocol:?}");
        assert!(
            en.cache_status().contains("hit"),
            "{protocol:?}: {}",
            en.cache_status()
        );
        assert_eq!(setup.origin.hits_for(&path), 2, "{protocol:?}");

        // Purge over the same protocol: the next request goes to the origin.
        let path = format!("/purge/{protocol:?}");
        setup.send(protocol, "GET", &path, &[]);
        let purged = setup.send(protocol, "PURGE", &path, &[("authorization", &auth)]);
        assert_eq!(purged.status, 200, "{protocol:?}: {}", purged.text());
        let again = setup.send(protocol, "GET", &path, &[]);
        assert!(
            again.cache_status().contains("fwd=miss"),
            "{protocol:?}: {}",
            again.cache_status()
        );
        assert_eq!(setup.origin.hits_for(&path), 2, "{protocol:?}");
        let refused = setup.send(protocol, "PURGE", &path, &[]);
        assert_eq!(refused.status, 401, "{protocol:?}: PURGE needs the token");

        // The plugin bypasses the cache for POST: every one reaches the origin.
        let path = format!("/post/{protocol:?}");
        let first = setup.send(protocol, "POST", &path, &[]);
        let second = setup.send(protocol, "POST", &path, &[]);
        assert_eq!(second.text(), format!("POST {path} none"));
        assert_eq!(setup.origin.hits_for(&path), 2, "{protocol:?}");
        assert_eq!(status_form(&first), status_form(&second));
        bypass_forms.push(status_form(&first));
    }
    assert!(
        bypass_forms[0].contains("fwd=bypass"),
        "{}",
        bypass_forms[0]
    );
    assert!(
        bypass_forms.iter().all(|f| f == &bypass_forms[0]),
        "the bypass reads the same over every protocol: {bypass_forms:?}"
    );
}

#[test]
fn alpn_offers_h2_and_http1_and_h2c_is_off_unless_configured() {
    let setup = Setup::start("");
    let port = setup.proxy.tls_port.unwrap();
    // A client offering both gets HTTP/2; one offering only HTTP/1.1 gets that.
    let both = h2_tls(
        port,
        setup.tls_config(&[b"h2", b"http/1.1"]),
        SITE,
        SITE,
        &[H2Request::get("/alpn")],
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", setup.proxy.log()));
    assert_eq!(both.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(both.responses[0].status, 200);
    let http1 = https_request(
        port,
        setup.tls_config(&[b"http/1.1"]),
        SITE,
        "GET",
        "/alpn",
        SITE,
        &[],
    )
    .unwrap();
    assert_eq!(http1.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(http1.response.status, 200);
    assert!(http1.response.cache_status().contains("hit"));

    // Without `h2c = true` the plain listener speaks HTTP/1.1 only.
    let refused = h2c(setup.proxy.port, SITE, &[H2Request::get("/alpn")]);
    assert!(
        refused.is_err(),
        "prior-knowledge HTTP/2 must fail without h2c"
    );
    assert_eq!(setup.origin.hits_for("/alpn"), 1);
}

#[test]
fn http2_connections_are_bounded_by_the_configured_streams_and_header_list() {
    let setup =
        Setup::start("h2c = true\nh2_max_concurrent_streams = 7\nh2_max_header_list = \"4KiB\"");
    let big = "x".repeat(6 * 1024);
    let requests = [
        H2Request::get("/bounded"),
        H2Request {
            method: "GET",
            path: "/too-big",
            headers: &[("x-padding", &big)],
            body: None,
        },
        H2Request::get("/bounded"),
    ];
    let port = setup.proxy.tls_port.unwrap();
    let outcomes = [
        ("h2c", h2c(setup.proxy.port, SITE, &requests)),
        (
            "h2",
            h2_tls(port, setup.tls_config(&[b"h2"]), SITE, SITE, &requests),
        ),
    ];
    for (name, outcome) in outcomes {
        let outcome = outcome.unwrap_or_else(|e| panic!("{name}: {e}\n{}", setup.proxy.log()));
        assert_eq!(
            outcome.peer_max_streams, 7,
            "{name}: announced stream limit"
        );
        let statuses: Vec<u16> = outcome.responses.iter().map(|r| r.status).collect();
        assert_eq!(
            statuses,
            [200, 431, 200],
            "{name}: the oversized head alone is refused"
        );
    }
    assert_eq!(setup.origin.hits_for("/too-big"), 0);
    assert_eq!(
        setup.origin.hits_for("/bounded"),
        2,
        "one fill per scheme (h2c, then h2 over TLS)"
    );
}

/// Paced "rapid reset" (CVE-2023-44487 class): streams reset a few ms after their head, each
/// a miss whose fill goes on for the cache. The h2 crate counted them closed, so one
/// connection limited to 100 streams kept 1024 origin exchanges busy (probe AG). A
/// connection's requests now count until their work ends: beyond twice its stream limit a
/// new stream is refused (REFUSED_STREAM) and the origin never sees more at once.
#[test]
fn streams_reset_at_a_steady_pace_keep_no_more_origin_work_than_the_stream_limit() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    // The resets' fills are held until the test has seen the refusal: still at work however
    // slowly the resets come.
    let released = Arc::new(AtomicBool::new(false));
    let origin = Origin::start({
        let (now, most, released) = (now.clone(), most.clone(), released.clone());
        move |seen| {
            let at_once = now.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(at_once, Ordering::SeqCst);
            if seen.url.starts_with("/reset-") {
                support::origin::hold_until_released(&released);
            }
            now.fetch_sub(1, Ordering::SeqCst);
            Reply::ok("filled").header("Cache-Control", "max-age=60")
        }
    });
    let proxy = Proxy::start_with_server(
        "h2c = true\nh2_max_concurrent_streams = 4",
        "max_bytes = \"64MiB\"",
        &[TenantSpec::new("site", origin.addr, &plugin("standard")).hosts(&[SITE])],
    );
    let paths: Vec<String> = (0..24).map(|i| format!("/reset-{i}")).collect();
    let last = support::http2_client::h2c_reset_each(
        proxy.port,
        SITE,
        &paths,
        std::time::Duration::from_millis(15),
        "/after",
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log()));
    // Every stream's fill was still at work: the next one was refused, not processed.
    let refused = last.expect_err("a stream beyond the limit is refused");
    assert!(
        refused.contains("REFUSED_STREAM") || refused.contains("refused"),
        "{refused}"
    );
    let at_most = most.load(Ordering::SeqCst);
    assert!(
        at_most <= 8,
        "{at_most} origin exchanges at once from one connection"
    );
    assert!(at_most >= 1, "the resets reached the origin at all");
    // Another client is served meanwhile, and the connection's fills went on for the cache.
    let other = h2c(proxy.port, SITE, &[H2Request::get("/other")]).expect("another connection");
    assert_eq!(other.responses[0].status, 200);
    released.store(true, Ordering::SeqCst);
    let stored = h2c(proxy.port, SITE, &[H2Request::get("/reset-0")]).expect("a later stream");
    assert_eq!(stored.responses[0].status, 200);
    assert!(
        stored.responses[0].cache_status().contains("hit"),
        "{}",
        stored.responses[0].cache_status()
    );
}

/// A HEAD answer and a 304 have no content (RFC 9110 §6.4.1). Over HTTP/2 a miss that is not
/// stored sent the origin's body after them in DATA frames, and clients reset the stream as
/// malformed (RFC 9113 §8.1.1; probe AN).
#[test]
fn head_answers_and_304s_carry_no_body_over_http2() {
    let origin = Origin::start(|_| {
        Reply::ok("a body the client did not ask for")
            .header("Cache-Control", "private, max-age=100")
            .header("ETag", "\"v1\"")
    });
    let proxy = Proxy::start_with_server(
        "h2c = true",
        "max_bytes = \"64MiB\"",
        &[TenantSpec::new("site", origin.addr, &plugin("standard")).hosts(&[SITE])],
    );
    let requests = [
        H2Request {
            method: "HEAD",
            path: "/private?head",
            headers: &[],
            body: None,
        },
        H2Request {
            method: "GET",
            path: "/private?conditional",
            headers: &[("if-none-match", "\"v1\"")],
            body: None,
        },
        H2Request::get("/private?whole"),
    ];
    let outcome = h2c(proxy.port, SITE, &requests).unwrap_or_else(|e| panic!("{e}"));
    let answers: Vec<(u16, usize)> = outcome
        .responses
        .iter()
        .map(|r| (r.status, r.body.len()))
        .collect();
    assert_eq!(answers, [(200, 0), (304, 0), (200, 33)]);
    assert_eq!(origin.hits(), 3, "private answers are not stored");
}

#[test]
fn an_idle_http2_connection_is_closed_after_h2_idle_timeout() {
    let setup = Setup::start("h2c = true\nh2_idle_timeout = \"400ms\"");
    let idle_for = setup.with_plain_connection(|tcp| async move {
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        let closed = tokio::spawn(async move {
            let _ = connection.await;
            std::time::Instant::now()
        });
        let request = http::Request::get(format!("http://{SITE}/idle"))
            .body(())
            .unwrap();
        let mut client = client.ready().await.unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        let mut body = response.await.unwrap().into_body();
        while body.data().await.is_some() {}
        let answered = std::time::Instant::now();
        // The client keeps its handle: only the server can end the connection.
        let closed = tokio::time::timeout(std::time::Duration::from_secs(10), closed)
            .await
            .expect("the server closes an idle HTTP/2 connection")
            .unwrap();
        drop(client);
        closed - answered
    });
    assert!(
        idle_for >= std::time::Duration::from_millis(300),
        "closed after {idle_for:?}, before the idle timeout"
    );
    assert_eq!(setup.origin.hits_for("/idle"), 1);
}

/// Reads from `conn` until the server closes it; how long that took (None: not within 5 s).
fn closed_within(conn: &mut impl std::io::Read) -> Option<std::time::Duration> {
    let started = std::time::Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            // Reset or a TLS alert: closed as well.
            Err(_) => return Some(started.elapsed()),
        }
    }
}

#[test]
fn an_http2_client_that_never_sends_its_preface_is_disconnected() {
    // A second, so that one timeout (a loaded machine's scheduling on top) and two are far
    // apart: at 400 ms, one had to come within 350 ms of its time.
    let setup = Setup::start("h2c = true\nh2_idle_timeout = \"1s\"");
    let slow = |d: Option<std::time::Duration>| {
        d.is_some_and(|d| d >= std::time::Duration::from_millis(750))
    };

    // ALPN settled on h2, then silence.
    let mut tls = setup.h2_tls_stream();
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).unwrap();
    }
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"h2"[..]));
    let took = closed_within(&mut tls);
    assert!(
        slow(took),
        "TLS + h2 without a preface: closed after {took:?}"
    );

    // ALPN settled on h2, then one byte of the preface and silence: the preface must be
    // whole in time, not merely started.
    let mut tls = setup.h2_tls_stream();
    std::io::Write::write_all(&mut tls, b"P").unwrap();
    std::io::Write::flush(&mut tls).unwrap();
    let took = closed_within(&mut tls);
    assert!(
        slow(took),
        "TLS + h2, one byte of the preface: closed after {took:?}"
    );

    // The plain listener with h2c: a connection that sends nothing.
    let mut plain = std::net::TcpStream::connect(("127.0.0.1", setup.proxy.port)).unwrap();
    plain
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let took = closed_within(&mut plain);
    assert!(
        slow(took),
        "h2c listener, silent client: closed after {took:?}"
    );
    // ... and after one h2_idle_timeout, not two (Pingora's own peek waited once more).
    assert!(
        took.is_some_and(|t| t < std::time::Duration::from_millis(1800)),
        "h2c listener, silent client: closed after {took:?}"
    );

    // Clients that do speak are served as before.
    assert_eq!(setup.send(Protocol::H2c, "GET", "/after", &[]).status, 200);
    assert_eq!(
        setup.send(Protocol::H2Tls, "GET", "/after", &[]).status,
        200
    );
}

/// An HTTP/2 request reaches the HTTP/1.1 origin, and the plugin, as its HTTP/1.1 form: its
/// `:authority` as Host and in the forwarding fields, its cookie fields joined into one
/// (RFC 9113 §8.2.3; browsers send each cookie as its own field over HTTP/2).
#[test]
fn an_http2_request_reaches_the_origin_in_its_http1_form() {
    let setup = Setup::start("h2c = true");
    for protocol in PROTOCOLS {
        let path = format!("/fields-{protocol:?}");
        let cookies = [("Cookie", "a=1; c=3"), ("Cookie", "b=2")];
        let one_field = [("Cookie", "a=1; c=3; b=2")];
        let sent: &[(&str, &str)] = if protocol == Protocol::Http1 {
            &one_field
        } else {
            &cookies
        };
        let resp = setup.send(protocol, "GET", &path, sent);
        assert_eq!(resp.status, 200, "{protocol:?}");
        let seen = setup
            .origin
            .seen()
            .into_iter()
            .find(|s| s.url == path)
            .unwrap_or_else(|| panic!("{protocol:?}: {path} never reached the origin"));
        let cookie: Vec<&str> = seen
            .headers
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case("cookie"))
            .map(|(_, value)| value.as_str())
            .collect();
        assert_eq!(cookie, ["a=1; c=3; b=2"], "{protocol:?}");
        assert_eq!(seen.header("host"), Some(SITE), "{protocol:?}");
        assert_eq!(seen.header("x-forwarded-host"), Some(SITE), "{protocol:?}");
        let forwarded = seen.header("forwarded").unwrap_or("");
        assert!(
            forwarded.contains(&format!("host={SITE}"))
                || forwarded.contains(&format!("host=\"{SITE}\"")),
            "{protocol:?}: {forwarded}"
        );
    }
}

/// An origin that records every byte each connection sends it (a raw recording, to see the
/// framing itself) and answers the first request on a connection once its chunked body ends.
fn recording_origin() -> (std::net::SocketAddr, Arc<parking_lot::Mutex<Vec<u8>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let wire = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let recorded = wire.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(4) {
            let Ok(mut conn) = conn else { return };
            let wire = recorded.clone();
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(std::time::Duration::from_millis(500)));
                let mut answered = false;
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = conn.read(&mut buf) {
                    seen.extend_from_slice(&buf[..n]);
                    wire.lock().extend_from_slice(&buf[..n]);
                    let head_end = seen.windows(4).position(|w| w == b"\r\n\r\n");
                    let body_ended =
                        head_end.is_some_and(|at| seen[at + 4..].ends_with(b"0\r\n\r\n"));
                    if body_ended && !answered {
                        answered = true;
                        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                    }
                }
            });
        }
    });
    (addr, wire)
}

/// An HTTP/2 body whose end comes in an empty DATA frame (how clients that stream a body end
/// it) reaches a chunked HTTP/1.1 origin with one last chunk. Two were sent: the origin read
/// the second as a new request, and its answer went to the next client whose request took
/// that pooled connection, and into the cache under that client's URL (probe Y: another
/// user's response, cookie and all, served and cached).
#[test]
fn an_http2_body_ending_in_an_empty_frame_is_ended_once_at_the_origin() {
    let (origin, wire) = recording_origin();
    let proxy = Proxy::start_with_server(
        "h2c = true",
        "",
        &[TenantSpec::new("site", origin, &plugin("standard")).hosts(&[SITE])],
    );
    let upload = H2Request {
        method: "POST",
        path: "/upload",
        headers: &[],
        body: Some(b""),
    };
    let outcome =
        h2c(proxy.port, SITE, &[upload]).unwrap_or_else(|e| panic!("{e}\n{}", proxy.log()));
    assert_eq!(outcome.responses[0].status, 200);
    // Whatever else the connection was going to carry has had time to arrive.
    std::thread::sleep(std::time::Duration::from_millis(700));
    let wire = wire.lock().clone();
    let text = String::from_utf8_lossy(&wire);
    let (head, body) = text.split_once("\r\n\r\n").expect("a request head");
    assert!(head.starts_with("POST /upload HTTP/1.1"), "{text}");
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{text}"
    );
    assert_eq!(body, "0\r\n\r\n", "the origin got more than one body end");
}

/// A field value with whitespace at either end is malformed in HTTP/2 (RFC 9113 §8.2.1): it
/// is a 400 and reaches no origin. Passed on, the origin got `fr ` while the Vary check, which
/// trims, stored its answer as the variant for `fr`.
#[test]
fn an_http2_value_padded_with_whitespace_is_a_bad_request() {
    let setup = Setup::start("h2c = true");
    for protocol in [Protocol::H2c, Protocol::H2Tls] {
        let refused = setup.send(protocol, "GET", "/vary-pad", &[("accept-language", "fr ")]);
        assert_eq!(refused.status, 400, "{protocol:?}");
        let plain = setup.send(protocol, "GET", "/vary-pad", &[("accept-language", "fr")]);
        assert_eq!(plain.status, 200, "{protocol:?}");
        assert_eq!(plain.text(), "GET /vary-pad fr", "{protocol:?}");
    }
    // One fetch per scheme (the key holds it); none for the refused requests.
    assert_eq!(setup.origin.hits(), 2);
}

/// A GET with a body is never answered from or stored in the cache (the key cannot cover the
/// body), over HTTP/2 too, where a body needs no length field.
#[test]
fn an_http2_get_with_a_body_bypasses_the_cache() {
    let setup = Setup::start("h2c = true");
    let with_body = H2Request {
        method: "GET",
        path: "/get-body",
        headers: &[],
        body: Some(b"hello"),
    };
    let outcome = h2c(setup.proxy.port, SITE, &[with_body])
        .unwrap_or_else(|e| panic!("{e}\n{}", setup.proxy.log()));
    let resp = &outcome.responses[0];
    assert_eq!(resp.status, 200);
    assert!(
        resp.cache_status().contains("fwd=bypass"),
        "{}",
        resp.cache_status()
    );
    // Nothing was stored for the URL (asked without reaching the origin).
    let stored = setup.send(
        Protocol::H2c,
        "GET",
        "/get-body",
        &[("cache-control", "only-if-cached")],
    );
    assert_eq!(stored.status, 504, "{}", stored.cache_status());
    assert_eq!(setup.origin.hits(), 1);
}

/// Pingora refreshes a stale-while-revalidate entry with a background request rebuilt as
/// HTTP/1 text from the client's head; an HTTP/2 head did not parse as one, so the refresh
/// never happened and the stale copy was served for the whole window. Over HTTP/2 the stale
/// copy is served at once, as over HTTP/1.1, and the refresh reaches the origin as the
/// request the plugin planned: its forwarding fields once, nothing of the hand-off.
#[test]
fn a_stale_entry_is_refreshed_in_the_background_over_http2_too() {
    let setup = Setup::start("h2c = true");
    for (round, protocol) in [Protocol::H2c, Protocol::H2Tls].into_iter().enumerate() {
        let path = format!("/swr/{protocol:?}");
        setup.send(protocol, "GET", &path, &[]);
        std::thread::sleep(std::time::Duration::from_millis(3300));
        let stale = setup.send(protocol, "GET", &path, &[]);
        assert!(
            stale.cache_status().contains("fwd=stale")
                && stale.cache_status().contains("stale-while-revalidate"),
            "{protocol:?}: {}",
            stale.cache_status()
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while setup.origin.hits_for(&path) < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "{protocol:?}: the stale entry was never refreshed\n{}",
                setup.proxy.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let refresh = setup
            .origin
            .seen()
            .into_iter()
            .rev()
            .find(|s| s.url == path)
            .unwrap();
        assert_eq!(refresh.header("via"), Some("1.1 cachet"), "{protocol:?}");
        assert_eq!(refresh.header("x-forwarded-for"), Some("127.0.0.1"));
        assert!(
            refresh
                .headers
                .iter()
                .all(|(n, _)| !n.eq_ignore_ascii_case("cachet-refresh")),
            "{:?}",
            refresh.headers
        );
        // The origin has answered; the refresh stores what it got in its own time (two
        // objects are written per round: the fill, then the refresh).
        let inserts = 2 * (round as u64 + 1);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while setup.proxy.status()["cache"]["inserts"].as_u64() != Some(inserts) {
            assert!(
                std::time::Instant::now() < deadline,
                "{protocol:?}: the refresh was never stored"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let after = setup.send(protocol, "GET", &path, &[]);
        assert!(
            after.cache_status().contains("hit"),
            "{protocol:?}: {}",
            after.cache_status()
        );
        assert_eq!(setup.origin.hits_for(&path), 2, "{protocol:?}");
    }
    // A client cannot hand a refresh its own key: the field is dropped from every request,
    // whichever front planned it.
    for protocol in PROTOCOLS {
        let path = format!("/forged/{protocol:?}");
        let forged = setup.send(protocol, "GET", &path, &[("cachet-refresh", "00:00:-")]);
        assert_eq!(forged.status, 200);
        let seen = setup
            .origin
            .seen()
            .into_iter()
            .find(|s| s.url == path)
            .unwrap();
        assert_eq!(seen.header("cachet-refresh"), None, "{protocol:?}");
    }
}

/// An HTTP/2 client that keeps its flow-control window at 0 does not hold its stream (and
/// so its connection) for ever: the response is given up after `client_write_timeout`, and
/// the connection, then idle, is closed.
#[test]
fn an_http2_client_that_takes_nothing_is_let_go_after_client_write_timeout() {
    let setup =
        Setup::start("h2c = true\nh2_idle_timeout = \"500ms\"\nclient_write_timeout = \"1s\"");
    let ended_after = setup.with_plain_connection(|tcp| async move {
        let (client, connection) = h2::client::Builder::new()
            .initial_window_size(0)
            .handshake::<_, bytes::Bytes>(tcp)
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let closed = tokio::spawn(async move {
            let _ = connection.await;
        });
        let request = http::Request::get(format!("http://{SITE}/stalled"))
            .body(())
            .unwrap();
        let mut client = client.ready().await.unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        let mut body = response.await.unwrap().into_body();
        // Never released: the window stays at 0, so no DATA can come.
        let data = tokio::time::timeout(std::time::Duration::from_secs(10), body.data())
            .await
            .expect("the server gives the stalled response up");
        assert!(
            !matches!(data, Some(Ok(ref bytes)) if !bytes.is_empty()),
            "{data:?}"
        );
        tokio::time::timeout(std::time::Duration::from_secs(10), closed)
            .await
            .expect("the server ends the connection")
            .unwrap();
        drop(client);
        started.elapsed()
    });
    assert!(
        ended_after >= std::time::Duration::from_millis(900)
            && ended_after < std::time::Duration::from_secs(6),
        "ended after {ended_after:?}"
    );
}

/// An HTTP/2 answer's Cache-Status and body (or what ended it early, as the body).
async fn read_answer(response: h2::client::ResponseFuture) -> (String, Vec<u8>) {
    let response = response.await.unwrap();
    let status = response
        .headers()
        .get("cache-status")
        .unwrap()
        .to_str()
        .unwrap();
    let status = status.to_owned();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let Ok(chunk) = chunk else {
            return (status, format!("{chunk:?}").into_bytes());
        };
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    (status, bytes)
}

/// Over HTTP/2 the front answers lean hits in the connection's own accept loop and hands
/// everything else to Pingora's proxy with the plan it made. Streams sent together, hits and
/// misses and bodies larger than a stream's flow-control window mixed, each get their own
/// answer, and the plugin runs once per request, handed over or not.
#[test]
fn http2_streams_sent_together_get_their_own_answers_and_one_plugin_run_each() {
    let setup = Setup::start("h2c = true");
    let stored = ["/mix/0", "/mix/1", "/mix/2", "/big/0"];
    for path in stored {
        assert_eq!(setup.send(Protocol::H2c, "GET", path, &[]).status, 200);
    }
    let hooks = |proxy: &Proxy| {
        let hook = "hook=\"request\"";
        metric(proxy, "cachet_plugin_hook_seconds_count", &[hook])
    };
    let front_hits = metric(&setup.proxy, "cachet_front_hits_total", &[]);
    let handovers = metric(&setup.proxy, "cachet_front_handovers_total", &[]);
    let hooks_before = hooks(&setup.proxy);

    // Every stored path twice and four new ones, all sent before any answer is read.
    let mut paths: Vec<String> = stored
        .iter()
        .chain(&stored)
        .map(|p| p.to_string())
        .collect();
    paths.extend((0..3).map(|i| format!("/mix/new-{i}")));
    paths.push("/big/new".into());
    let sent = paths.clone();
    let answers = setup.with_plain_connection(|tcp| async move {
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut pending = Vec::new();
        for path in &sent {
            let req = http::Request::builder()
                .uri(format!("http://{SITE}{path}"))
                .body(())
                .unwrap();
            let mut client = client.clone().ready().await.unwrap();
            let (response, _) = client.send_request(req, true).unwrap();
            pending.push(response);
        }
        // Read side by side, as a browser does: a client that reads one stream to its end
        // before the next leaves the connection's window to the others' unread bytes.
        let reading: Vec<_> = pending
            .into_iter()
            .map(|response| tokio::spawn(read_answer(response)))
            .collect();
        let mut answers = Vec::new();
        for read in reading {
            answers.push(read.await.unwrap());
        }
        driver.abort();
        answers
    });
    for (path, (status, body)) in paths.iter().zip(&answers) {
        let expected = match path.starts_with("/big") {
            true => big_body(path),
            false => format!("GET {path} none").into_bytes(),
        };
        assert!(
            body == &expected,
            "{path}: a body of {} bytes: {}\n{}",
            body.len(),
            String::from_utf8_lossy(&body[..body.len().min(200)]),
            setup.proxy.log()
        );
        let new = path.contains("new");
        assert_eq!(status.contains("hit"), !new, "{path}: {status}");
        assert_eq!(setup.origin.hits_for(path), 1, "{path}");
    }
    let proxy = &setup.proxy;
    let hits = metric(proxy, "cachet_front_hits_total", &[]) - front_hits;
    let planned = metric(proxy, "cachet_front_handovers_total", &[]) - handovers;
    assert_eq!(
        (hits, planned),
        (8.0, 4.0),
        "front hits and planned handovers"
    );
    assert_eq!(
        hooks(proxy) - hooks_before,
        paths.len() as f64,
        "on-request runs"
    );
}

/// The front's accept loop keeps Pingora's bound on malformed streams: requests whose Host
/// and `:authority` disagree are each answered 400, and the connection that sends 32 of them
/// is closed.
#[test]
fn a_connection_sending_malformed_streams_is_closed_at_the_32nd() {
    let setup = Setup::start("h2c = true");
    let (answered, closed) = setup.with_plain_connection(|tcp| async move {
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut answered = Vec::new();
        for i in 0..40 {
            let req = http::Request::builder()
                .uri(format!("http://{SITE}/malformed/{i}"))
                .header("host", "other.test")
                .body(())
                .unwrap();
            let Ok(mut ready) = client.clone().ready().await else {
                break;
            };
            let Ok((response, _)) = ready.send_request(req, true) else {
                break;
            };
            match response.await {
                Ok(response) => answered.push(response.status().as_u16()),
                Err(_) => break,
            }
        }
        let closed = tokio::time::timeout(std::time::Duration::from_secs(5), driver)
            .await
            .is_ok();
        (answered, closed)
    });
    assert_eq!(answered.len(), 31, "{answered:?}");
    assert!(answered.iter().all(|status| *status == 400), "{answered:?}");
    assert!(closed, "the connection stayed open");
    assert_eq!(setup.origin.hits(), 0);
}

/// With `h2c = true` the plain listener tells HTTP/2 from HTTP/1 by the first bytes; a
/// whole HTTP/1 request shorter than the 24-byte preface (HAProxy's default health check,
/// `OPTIONS / HTTP/1.0`, is 22) is answered at once. The peek used to wait for 24 bytes that
/// never came, lose the bytes when it gave up, and close the connection after 2 × 60 s.
#[test]
fn with_h2c_a_request_shorter_than_the_preface_is_answered_at_once() {
    let setup = Setup::start("h2c = true");
    for request in ["OPTIONS / HTTP/1.0\r\n\r\n", "GET / HTTP/1.0\r\n\r\n"] {
        assert!(request.len() < 24);
        let began = std::time::Instant::now();
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", setup.proxy.port)).unwrap();
        conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        std::io::Write::write_all(&mut conn, request.as_bytes()).unwrap();
        let mut answer = Vec::new();
        let _ = std::io::Read::read_to_end(&mut conn, &mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1."), "{request:?}: {answer:?}");
        assert!(
            began.elapsed() < std::time::Duration::from_secs(3),
            "{request:?} answered after {:?}",
            began.elapsed()
        );
    }
    // HTTP/2 with prior knowledge still works on the same listener.
    let h2c = setup.send(Protocol::H2c, "GET", "/after-short", &[]);
    assert_eq!(h2c.status, 200);
}

/// A client that closes its HTTP/2 connection while its request still runs at the origin
/// frees no connection slot until that work ends. The slot went with the socket, so one
/// client could open a new connection (a fresh slot and a fresh work bound) while the old
/// one's work still ran, and drive any amount of origin work through one slot at a time.
#[test]
fn a_closed_http2_connection_keeps_its_slot_until_its_work_ends() {
    use std::sync::atomic::{AtomicBool, Ordering};
    // The origin's work ends when the test says, not after a time a busy machine outlasts:
    // the check below comes while it still runs.
    let released = Arc::new(AtomicBool::new(false));
    let origin = Origin::start_held(released.clone(), |_| {
        Reply::ok("slow").header("Cache-Control", "max-age=60")
    });
    let proxy = Proxy::start_with_server(
        "h2c = true\nmax_connections = 1",
        "max_bytes = \"64MiB\"",
        &[TenantSpec::new("site", origin.addr, &plugin("standard")).hosts(&[SITE])],
    );
    support::http2_client::h2c_send_and_close(
        proxy.port,
        SITE,
        "/slow",
        std::time::Duration::from_millis(300),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while origin.hits_for("/slow") == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the request never reached the origin"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // A moment for the proxy to see the close: nothing to poll (the slot stays taken), and
    // the origin's work goes on however long it is.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let busy = support::client::try_send("GET", &proxy.url("/other"), &[("Host", SITE)]);
    released.store(true, Ordering::SeqCst);
    assert_eq!(
        busy.as_ref().map(|r| r.status).ok(),
        Some(503),
        "{:?}",
        busy.map(|r| r.text())
    );
    // Once the fill is done (stored: the cache kept working for the closed stream), the
    // slot is free again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let stored = loop {
        let resp = send("GET", &proxy.url("/slow"), &[("Host", SITE)]);
        if resp.status == 200 || std::time::Instant::now() > deadline {
            break resp;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(stored.status, 200, "{}", stored.text());
    assert!(
        stored.cache_status().contains("hit"),
        "{}",
        stored.cache_status()
    );
    assert_eq!(origin.hits_for("/slow"), 1);
}

/// A large hit taken slowly but steadily over HTTP/2 is served whole: each piece of it gets
/// `client_write_timeout`, as over HTTP/1.1. The whole body had to be taken within it, so a
/// client slower than size ÷ timeout had every hit of a large object cut off.
#[test]
fn a_large_hit_taken_slowly_over_http2_is_served_whole() {
    const SIZE: usize = 1536 * 1024;
    let origin =
        Origin::start(|_| Reply::ok(vec![b'z'; SIZE]).header("Cache-Control", "max-age=60"));
    let proxy = Proxy::start_with_server(
        "h2c = true\nclient_write_timeout = \"1s\"",
        "max_bytes = \"64MiB\"",
        &[TenantSpec::new("site", origin.addr, &plugin("standard")).hosts(&[SITE])],
    );
    let fill = send("GET", &proxy.url("/large"), &[("Host", SITE)]);
    assert_eq!(fill.body.len(), SIZE);
    let started = std::time::Instant::now();
    let (status, length) = support::http2_client::h2c_get_slowly(
        proxy.port,
        SITE,
        "/large",
        std::time::Duration::from_millis(25),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log()));
    let took = started.elapsed();
    assert_eq!((status, length), (200, SIZE), "after {took:?}");
    assert!(
        took > std::time::Duration::from_millis(1500),
        "{took:?}: not slow enough to prove it"
    );
    assert_eq!(origin.hits_for("/large"), 1);
}

/// A shutdown lets an HTTP/2 answer still leaving finish, then exits. (The connection now
/// counts for the drain until its GOAWAY exchange is done; this answer was whole before too,
/// its stream's count covering it: what it guards is the answer, not that change.)
#[test]
fn a_shutdown_lets_an_http2_answer_finish() {
    const SIZE: usize = 1024 * 1024;
    let origin =
        Origin::start(|_| Reply::ok(vec![b'q'; SIZE]).header("Cache-Control", "max-age=60"));
    let mut proxy = Proxy::start_with_server(
        "h2c = true\nshutdown_grace = \"10s\"",
        "max_bytes = \"64MiB\"",
        &[TenantSpec::new("site", origin.addr, &plugin("standard")).hosts(&[SITE])],
    );
    assert_eq!(
        send("GET", &proxy.url("/big"), &[("Host", SITE)])
            .body
            .len(),
        SIZE
    );
    let port = proxy.port;
    let reader = std::thread::spawn(move || {
        support::http2_client::h2c_get_slowly(
            port,
            SITE,
            "/big",
            std::time::Duration::from_millis(10),
        )
    });
    // The request has come (its plugin call is the second, after the fill's) before the
    // stop, however long a busy machine takes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while metric(
        &proxy,
        "cachet_plugin_hook_seconds_count",
        &["hook=\"request\"", "tenant=\"site\""],
    ) < 2.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the request never came\n{}",
            proxy.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let pid = proxy.pid().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    assert!(sent.is_ok_and(|s| s.success()));
    let got = reader.join().expect("reader thread");
    assert_eq!(got, Ok((200, SIZE)), "{}", proxy.log());
    let exited = proxy.wait_exit(std::time::Duration::from_secs(5));
    assert!(
        exited.is_some_and(|s| s.success()),
        "{exited:?}\n{}",
        proxy.log()
    );
}
