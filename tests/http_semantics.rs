//! HTTP semantics a shared cache is judged on, end to end through the real `cachet` binary
//! and real origins: hop-by-hop fields, `Age` lists, targeted cache-control fields
//! (RFC 9213), interim responses, obsolete date formats, `Cache-Status` as a list, and the
//! example plugins reading the same directives as the host.

mod support;

use std::io::{Read, Write};
use std::thread::sleep;
use std::time::{Duration, SystemTime};
use support::client::{get, Resp};
use support::origin::{Origin, Reply};
use support::plugin;
use support::proxy::{Proxy, TenantSpec};
use support::raw::{self, RawOrigin};

const CACHE: &str = "max_bytes = \"64MiB\"";

fn proxy_with(origin: std::net::SocketAddr, plugin_name: &str, extra: &str) -> Proxy {
    Proxy::start(
        CACHE,
        &[TenantSpec::new("site", origin, &plugin(plugin_name)).extra(extra)],
    )
}

fn assert_status_has(cache_status: &str, needle: &str) {
    assert!(
        cache_status.contains(needle),
        "Cache-Status {cache_status:?} lacks {needle:?}"
    );
}

fn status_of(resp: &Resp) -> &str {
    resp.cache_status()
}

// ------------------------------------------------------------------ hop-by-hop fields

/// Every field a response may carry that describes only the origin's connection.
const HOP_BY_HOP: [&str; 8] = [
    "x-hop",
    "x-also-hop",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "connection",
];

#[test]
fn hop_by_hop_fields_are_neither_stored_nor_served() {
    let origin = Origin::start(|_| {
        Reply::ok("body")
            .header("Cache-Control", "max-age=60")
            .header("Connection", "X-Hop, x-also-hop")
            .header("X-Hop", "secret")
            .header("X-Also-Hop", "secret")
            .header("Keep-Alive", "timeout=5, max=100")
            .header("Proxy-Connection", "keep-alive")
            .header("TE", "trailers")
            .header("Trailer", "X-Checksum")
            .header("Upgrade", "h2c")
            .header("X-End-To-End", "kept")
    });
    let proxy = proxy_with(origin.addr, "standard", "");
    let miss = raw::get(proxy.port, "/h", &[]);
    let hit = raw::get(proxy.port, "/h", &[]);
    assert_status_has(miss.cache_status(), "stored");
    assert_status_has(hit.cache_status(), "hit");
    assert_eq!(origin.hits(), 1);
    for (which, exchange) in [("miss", &miss), ("hit", &hit)] {
        assert_eq!(exchange.body, b"body", "{which}");
        assert_eq!(
            exchange.head.header("x-end-to-end"),
            Some("kept"),
            "{which}"
        );
        for name in HOP_BY_HOP {
            let values = exchange.head.all(name);
            // Pingora writes its own `Connection` for the client's connection.
            let own = name == "connection" && values.iter().all(|v| *v == "close");
            assert!(
                values.is_empty() || own,
                "{which} carries {name}: {values:?}"
            );
        }
    }
}

/// Stored entries no longer carry the origin's `Transfer-Encoding`: a hit must still be
/// framed (pingora chunks a stored body that has no `Content-Length`), exactly once.
#[test]
fn a_chunked_origin_response_is_framed_once_on_miss_and_hit() {
    let origin = RawOrigin::start(|_| {
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nTransfer-Encoding: chunked\r\n\
          Connection: close\r\n\r\n4\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\n"
            .to_vec()
    });
    let proxy = proxy_with(origin.addr, "standard", "");
    let miss = raw::get(proxy.port, "/c", &[]);
    let hit = raw::get(proxy.port, "/c", &[]);
    assert_status_has(hit.cache_status(), "hit");
    assert_eq!(origin.requests(), 1);
    for exchange in [&miss, &hit] {
        assert_eq!(exchange.body, b"abcdefg");
        // Exactly one framing for this hop: never the origin's and pingora's side by side.
        let framing = exchange.head.all("transfer-encoding").len()
            + exchange.head.all("content-length").len();
        assert_eq!(framing, 1, "{:?}", exchange.head.headers);
    }
}

/// A status code outside 100-599 is not HTTP a client can be given (RFC 9110 §15): a 502.
#[test]
fn a_status_outside_the_http_range_is_a_bad_gateway() {
    let origin = RawOrigin::start(|_| {
        b"HTTP/1.1 999 Weird\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".to_vec()
    });
    let proxy = proxy_with(origin.addr, "standard", "");
    assert_eq!(raw::get(proxy.port, "/weird", &[]).head.status, 502);
}

/// An origin may switch protocols only when asked to (RFC 9110 §15.2.2): a 101 to a request
/// without `Upgrade` is a broken answer (502), never relayed with the origin's raw bytes.
#[test]
fn an_unasked_switch_of_protocols_is_a_bad_gateway() {
    let origin = RawOrigin::start(|_| {
        b"HTTP/1.1 101 Switching Protocols
Upgrade: x-other
Connection: Upgrade

          HTTP/1.1 200 OK
Content-Length: 5

raw!!"
            .to_vec()
    });
    let proxy = proxy_with(origin.addr, "standard", "");
    let exchange = raw::get(proxy.port, "/switch", &[]);
    assert!(exchange.interim.is_empty(), "{:?}", exchange.interim);
    assert_eq!(exchange.head.status, 502, "{:?}", exchange.head);
}

/// A body the origin sent without a length is stored with the length it turned out to have:
/// hits state it, and a range is answered from the stored response as for any other.
#[test]
fn a_body_sent_without_a_length_is_stored_with_one_and_serves_ranges() {
    for framing in ["Transfer-Encoding: chunked\r\n", "Connection: close\r\n"] {
        let head = format!("HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n{framing}\r\n");
        let chunked = framing.starts_with("Transfer");
        let origin = RawOrigin::start(move |_| {
            let mut bytes = head.clone().into_bytes();
            if chunked {
                bytes.extend_from_slice(b"4\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\n");
            } else {
                bytes.extend_from_slice(b"abcdefg");
            }
            bytes
        });
        let proxy = proxy_with(origin.addr, "standard", "");
        let miss = raw::get(proxy.port, "/unframed", &[]);
        assert_eq!(miss.body, b"abcdefg", "{framing}");
        let hit = raw::get(proxy.port, "/unframed", &[]);
        assert_status_has(hit.cache_status(), "hit");
        assert_eq!(hit.head.header("content-length"), Some("7"), "{framing}");
        assert!(hit.head.header("transfer-encoding").is_none(), "{framing}");
        assert_eq!(hit.body, b"abcdefg");
        let range = raw::get(proxy.port, "/unframed", &[("Range", "bytes=2-4")]);
        assert_eq!(range.head.status, 206, "{framing}: {:?}", range.head);
        assert_eq!(range.body, b"cde", "{framing}");
        assert_eq!(range.head.header("content-range"), Some("bytes 2-4/7"));
        assert_eq!(origin.requests(), 1, "{framing}");
    }
}

// ------------------------------------------------------------------------------- Age

#[test]
fn an_age_list_uses_its_first_member_and_an_invalid_age_is_ignored() {
    let origin = Origin::start(|seen| {
        let age = match seen.url.as_str() {
            // First member 7200 > max-age: stale on arrival, nothing to revalidate with.
            "/old" => "7200, 0",
            // First member 10: fresh, although a later member is far older.
            "/young" => "10, 99999",
            "/negative" => "-5",
            _ => "soon",
        };
        Reply::ok("x")
            .header("Cache-Control", "max-age=3600")
            .header("Age", age)
    });
    let proxy = proxy_with(origin.addr, "standard", "");
    for path in ["/old", "/young", "/negative", "/word"] {
        let miss = get(&proxy.url(path));
        // Stored or not, the miss passes the origin's Age on (RFC 9111 §5.1).
        assert!(miss.header("age").is_some(), "{path}: {:?}", miss.headers);
    }
    let young = get(&proxy.url("/young"));
    assert_status_has(status_of(&young), "hit");
    let age: u64 = young
        .header("age")
        .expect("Age on a hit")
        .parse()
        .expect("number");
    assert!((10..15).contains(&age), "Age {age}");
    assert_status_has(status_of(&get(&proxy.url("/old"))), "fwd=miss");
    for path in ["/negative", "/word"] {
        let resp = get(&proxy.url(path));
        assert_status_has(status_of(&resp), "hit");
        let age: u64 = resp.header("age").expect("Age").parse().expect("number");
        assert!(age < 5, "{path}: invalid Age counted as {age}");
    }
    assert_eq!(origin.hits_for("/old"), 2);
    assert_eq!(origin.hits_for("/young"), 1);
}

// ------------------------------------------------------------------ targeted fields

#[test]
fn cdn_cache_control_goes_downstream_and_cachets_own_field_does_not() {
    let origin = Origin::start(|_| {
        Reply::ok("t")
            .header("Cache-Control", "no-store")
            .header("CDN-Cache-Control", "max-age=60")
            .header("Cachet-Cache-Control", "max-age=60")
    });
    let proxy = proxy_with(origin.addr, "standard", "");
    for _ in 0..2 {
        let resp = get(&proxy.url("/t"));
        assert_eq!(resp.header("cdn-cache-control"), Some("max-age=60"));
        assert_eq!(resp.header("cache-control"), Some("no-store"));
        assert_eq!(resp.header("cachet-cache-control"), None);
    }
    assert_eq!(origin.hits(), 1);
}

#[test]
fn an_invalid_targeted_field_is_ignored_for_the_next_in_precedence() {
    let origin = Origin::start(|seen| match seen.url.as_str() {
        // A string where an integer belongs: Cache-Control applies (no-store).
        "/typed" => Reply::ok("a")
            .header("Cache-Control", "no-store")
            .header("CDN-Cache-Control", "max-age=\"60\""),
        // Not a structured dictionary: CDN-Cache-Control applies (stored).
        "/syntax" => Reply::ok("b")
            .header("Cache-Control", "no-store")
            .header("Cachet-Cache-Control", "Max-Age=60")
            .header("CDN-Cache-Control", "max-age=60"),
        // Valid own field beats the CDN one.
        _ => Reply::ok("c")
            .header("Cache-Control", "max-age=60")
            .header("CDN-Cache-Control", "max-age=60")
            .header("Cachet-Cache-Control", "no-store"),
    });
    let proxy = proxy_with(origin.addr, "standard", "");
    for path in ["/typed", "/syntax", "/own"] {
        get(&proxy.url(path));
        get(&proxy.url(path));
    }
    assert_eq!(origin.hits_for("/typed"), 2);
    assert_eq!(origin.hits_for("/syntax"), 1);
    assert_eq!(origin.hits_for("/own"), 2);
}

#[test]
fn a_targeted_field_switches_off_expires_and_heuristic_freshness() {
    let in_an_hour = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3600));
    let long_ago = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(864_000));
    let origin = Origin::start(move |seen| match seen.url.as_str() {
        "/expires" => Reply::ok("e")
            .header("Expires", &in_an_hour)
            .header("CDN-Cache-Control", "public"),
        "/heuristic" => Reply::ok("h")
            .header("Last-Modified", &long_ago)
            .header("CDN-Cache-Control", "public"),
        // Control: the same Expires without a targeted field is stored.
        _ => Reply::ok("c").header("Expires", &in_an_hour),
    });
    let proxy = proxy_with(origin.addr, "standard", "");
    for path in ["/expires", "/heuristic", "/control"] {
        get(&proxy.url(path));
        get(&proxy.url(path));
    }
    assert_eq!(origin.hits_for("/expires"), 2);
    assert_eq!(origin.hits_for("/heuristic"), 2);
    assert_eq!(origin.hits_for("/control"), 1);
}

// ---------------------------------------------------------------- interim responses

#[test]
fn interim_responses_reach_the_client_without_leaking_into_the_final_one() {
    let origin = RawOrigin::start(|_| {
        b"HTTP/1.1 102 Processing\r\n\r\n\
          HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\nX-Hint: 1\r\n\
          Surrogate-Key: internal\r\nCachet-Cache-Control: max-age=5\r\n\r\n\
          HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 2\r\n\
          Connection: close\r\n\r\nok"
            .to_vec()
    });
    let proxy = proxy_with(origin.addr, "standard", "");
    let first = raw::get(proxy.port, "/hints", &[]);
    let statuses: Vec<u16> = first.interim.iter().map(|h| h.status).collect();
    // Each exactly once, although pingora drops them when they arrive with a cacheable 200.
    assert_eq!(statuses, [102, 103]);
    let hints = first.interim.iter().find(|h| h.status == 103).expect("103");
    assert_eq!(hints.header("link"), Some("</style.css>; rel=preload"));
    assert_eq!(hints.header("cache-status"), None, "1xx is not labelled");
    // Fields meant for cachet alone stay inside, on an interim response too.
    assert_eq!(hints.header("surrogate-key"), None);
    assert_eq!(hints.header("cachet-cache-control"), None);
    assert_eq!(first.head.status, 200);
    assert_eq!(first.body, b"ok");
    assert_eq!(first.head.header("link"), None);
    assert_eq!(first.head.header("x-hint"), None);
    assert_status_has(first.cache_status(), "stored");
    let hit = raw::get(proxy.port, "/hints", &[]);
    assert_status_has(hit.cache_status(), "hit");
    assert!(hit.interim.is_empty());
    assert_eq!(hit.head.header("link"), None);
    assert_eq!(origin.requests(), 1);
    // A request that bypasses the cache gets them once too.
    let bypassed = raw::request(proxy.port, "POST", "/hints", &[("Content-Length", "0")]);
    let statuses: Vec<u16> = bypassed.interim.iter().map(|h| h.status).collect();
    assert_eq!(statuses, [102, 103]);
    assert_eq!(bypassed.head.header("link"), None);
    assert_eq!(bypassed.body, b"ok");
    // HTTP/1.0 clients never get interim responses (RFC 9110 §15.2).
    let old_client = raw::exchange(
        proxy.port,
        b"POST /hints HTTP/1.0\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(old_client.interim.is_empty(), "{:?}", old_client.interim);
    assert_eq!(old_client.body, b"ok");
}

/// An early hint before an origin failure does not cost the stale copy `stale-if-error`
/// allows: written at once, it started the response, and the origin's 503 went to the client
/// instead (probe AD). A revalidation that could fall back on the stale copy drops its hints.
#[test]
fn an_early_hint_before_a_failure_leaves_the_stale_copy_to_serve() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let calls = Arc::new(AtomicUsize::new(0));
    let origin = RawOrigin::start({
        let calls = calls.clone();
        move |_| match calls.fetch_add(1, Ordering::SeqCst) {
            0 => b"HTTP/1.1 200 OK\r\nCache-Control: max-age=1, stale-if-error=60\r\n\
                   Content-Length: 4\r\nConnection: close\r\n\r\ngood"
                .to_vec(),
            _ => b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n\
                   HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\
                   Connection: close\r\n\r\ndown"
                .to_vec(),
        }
    });
    let proxy = proxy_with(origin.addr, "standard", "");
    assert_eq!(raw::get(proxy.port, "/hinted", &[]).body, b"good");
    sleep(Duration::from_millis(1100));
    let stale = raw::get(proxy.port, "/hinted", &[]);
    assert_eq!(
        (stale.head.status, stale.body.as_slice()),
        (200, &b"good"[..])
    );
    assert!(stale.interim.is_empty(), "{:?}", stale.interim);
    assert_status_has(stale.cache_status(), "fwd=stale");
}

/// A body without a length goes to an HTTP/1.0 client close-delimited: it cannot read chunked
/// framing (RFC 9112 §6.1), on a miss or on a hit. The connection ends with such a body, so
/// a client that asked to keep it alive is told `Connection: close` (it was told
/// `keep-alive` and then the connection closed: its next request would be lost; probe AH).
#[test]
fn an_http10_client_gets_a_body_without_a_length_close_delimited() {
    let origin = RawOrigin::start(|_| {
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nTransfer-Encoding: chunked\r\n\
          Connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            .to_vec()
    });
    let proxy = proxy_with(origin.addr, "standard", "");
    for round in ["miss", "hit"] {
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // The miss asks to keep the connection alive; the hit, with its stored length,
        // would keep it, so it does not ask.
        let keep_alive = if round == "miss" {
            "Connection: keep-alive\r\n"
        } else {
            ""
        };
        let request = format!(
            "GET /old HTTP/1.0\r\nHost: 127.0.0.1:{}\r\n{keep_alive}\r\n",
            proxy.port
        );
        conn.write_all(request.as_bytes()).unwrap();
        let mut bytes = Vec::new();
        conn.read_to_end(&mut bytes).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        let (head, body) = text.split_once("\r\n\r\n").expect("a head");
        assert!(
            !head.to_ascii_lowercase().contains("transfer-encoding"),
            "{round}: {head}"
        );
        assert_eq!(body, "hello world", "{round}: {head}");
        if round == "miss" {
            assert!(
                head.to_ascii_lowercase().contains("connection: close"),
                "{head}"
            );
        }
        assert_status_has(
            head.lines()
                .find_map(|l| l.strip_prefix("cache-status: "))
                .unwrap_or(""),
            if round == "hit" { "hit" } else { "fwd=miss" },
        );
    }
    // The stored response has the length the body turned out to have: an HTTP/1.1 client's
    // hit states it.
    let framed = raw::get(proxy.port, "/old", &[]);
    assert_eq!(framed.head.header("content-length"), Some("11"));
    assert_eq!(framed.body, b"hello world");
    assert_eq!(origin.requests(), 1, "{}", framed.cache_status());
}

/// A proxy sends its own HTTP version (RFC 9110 §6.2): an HTTP/1.0 origin's status line is
/// not passed on to HTTP/1.1 clients, stored or not (probe AH: bypassed and unstored answers
/// went out as `HTTP/1.0 200 OK`).
#[test]
fn an_http10_origin_s_version_is_not_passed_on() {
    let origin = RawOrigin::start(|head| {
        let cache_control = if head.contains("/kept") {
            "max-age=60"
        } else {
            "no-store"
        };
        format!("HTTP/1.0 200 OK\r\nCache-Control: {cache_control}\r\nContent-Length: 2\r\n\r\nok")
            .into_bytes()
    });
    let proxy = proxy_with(origin.addr, "standard", "");
    for (method, path) in [
        ("GET", "/unstored"),
        ("POST", "/bypassed"),
        ("GET", "/kept"),
    ] {
        let answer = raw::request(proxy.port, method, path, &[("Content-Length", "0")]);
        assert_eq!(answer.head.status, 200, "{method} {path}");
        assert_eq!(answer.head.version, "HTTP/1.1", "{method} {path}");
        assert_eq!(answer.body, b"ok");
    }
}

/// Ranges Pingora's filter answered wrongly get the whole representation (RFC 9110 §14.2: a
/// server may ignore `Range`): `bytes=-0` got `Content-Range: bytes 20-19/20` and a broken
/// connection, an empty body `bytes 0-18446744073709551615/0`, a suffix too large for a
/// number a 416, and HEAD a 206 (probe AN). Plain ranges are still answered with parts.
#[test]
fn ranges_the_cache_cannot_answer_with_parts_get_the_whole_body() {
    let origin = Origin::start(|seen| {
        let body = if seen.url == "/empty" {
            ""
        } else {
            "twenty bytes of text"
        };
        Reply::ok(body).header("Cache-Control", "max-age=60")
    });
    let proxy = proxy_with(origin.addr, "standard", "");
    assert_eq!(
        raw::get(proxy.port, "/twenty", &[]).body,
        b"twenty bytes of text"
    );
    raw::get(proxy.port, "/empty", &[]);
    for range in ["bytes=-0", "bytes=0-1,-0", "bytes=-99999999999999999999"] {
        // Pipelined behind it, a second request shows the connection still reads right.
        let request = format!(
            "GET /twenty HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nRange: {range}\r\n\r\n\
             GET /twenty HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n",
            port = proxy.port
        );
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        conn.write_all(request.as_bytes()).unwrap();
        let mut bytes = Vec::new();
        let _ = conn.read_to_end(&mut bytes);
        let answers = support::wire::parse_responses(&bytes);
        let seen: Vec<(u16, String)> = answers.iter().map(|a| (a.status, a.text())).collect();
        let whole = (200, "twenty bytes of text".to_owned());
        assert_eq!(seen, [whole.clone(), whole], "{range}");
    }
    // `Range` is no list: two fields are no range set, not the first one's.
    let twice = raw::get(
        proxy.port,
        "/twenty",
        &[("Range", "bytes=0-1"), ("Range", "bytes=2-3")],
    );
    assert_eq!(
        (twice.head.status, twice.body.as_slice()),
        (200, &b"twenty bytes of text"[..])
    );
    let empty = raw::get(proxy.port, "/empty", &[("Range", "bytes=-1")]);
    assert_eq!((empty.head.status, empty.body.len()), (200, 0));
    assert!(empty.head.header("content-range").is_none());
    let head = support::wire::exchange(
        proxy.port,
        format!(
            "HEAD /twenty HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nRange: bytes=0-3\r\n\
             Connection: close\r\n\r\n",
            proxy.port
        )
        .as_bytes(),
    );
    assert!(
        head.starts_with(b"HTTP/1.1 200 "),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let part = raw::get(proxy.port, "/twenty", &[("Range", "bytes=-4")]);
    assert_eq!(
        (part.head.status, part.body.as_slice()),
        (206, &b"text"[..])
    );
    assert_eq!(part.head.header("content-range"), Some("bytes 16-19/20"));
    assert_eq!(origin.hits(), 2);
}

// ------------------------------------------------------------------------ dates

/// `Sun, 06 Nov 1994 08:49:37 GMT` in the RFC 850 and asctime forms.
fn obsolete_forms(t: SystemTime) -> (String, String) {
    let imf = httpdate::fmt_http_date(t);
    let (wday, rest) = imf.split_once(", ").expect("imf");
    let p: Vec<&str> = rest.split(' ').collect();
    let long = [
        ("Mon", "Monday"),
        ("Tue", "Tuesday"),
        ("Wed", "Wednesday"),
        ("Thu", "Thursday"),
        ("Fri", "Friday"),
        ("Sat", "Saturday"),
        ("Sun", "Sunday"),
    ]
    .iter()
    .find(|(s, _)| *s == wday)
    .expect("weekday")
    .1;
    let rfc850 = format!("{long}, {}-{}-{} {} GMT", p[0], p[1], &p[2][2..], p[3]);
    let day = p[0].trim_start_matches('0');
    let asctime = format!("{wday} {} {day:>2} {} {}", p[1], p[3], p[2]);
    (rfc850, asctime)
}

#[test]
fn obsolete_and_odd_case_dates_are_parsed() {
    let (rfc850, asctime) = obsolete_forms(SystemTime::now() + Duration::from_secs(3600));
    let (old850, _) = obsolete_forms(SystemTime::now() - Duration::from_secs(864_000));
    let lower =
        httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3600)).to_lowercase();
    let origin = Origin::start(move |seen| match seen.url.as_str() {
        "/rfc850" => Reply::ok("a").header("Expires", &rfc850),
        "/asctime" => Reply::ok("b").header("Expires", &asctime),
        "/lower" => Reply::ok("c").header("Expires", &lower),
        // A two-digit year at most 50 years ahead is in this century (RFC 9110 §5.6.7).
        "/rfc850-2075" => Reply::ok("f").header("Expires", "Wednesday, 06-Nov-75 08:49:37 GMT"),
        // Heuristic freshness from an RFC 850 Last-Modified, in upper case.
        _ => Reply::ok("d").header("Last-Modified", &old850.to_uppercase()),
    });
    let proxy = proxy_with(origin.addr, "standard", "");
    for path in ["/rfc850", "/asctime", "/lower", "/rfc850-2075", "/modified"] {
        get(&proxy.url(path));
        let again = get(&proxy.url(path));
        assert_status_has(status_of(&again), "hit");
        assert_eq!(origin.hits_for(path), 1, "{path}");
    }
}

// ----------------------------------------------------------------- Cache-Status

#[test]
fn cache_status_is_appended_to_an_upstream_caches_member() {
    let origin = Origin::start(|_| {
        Reply::ok("x")
            .header("Cache-Control", "max-age=60")
            .header("Cache-Status", "edge-a; hit; ttl=30")
    });
    let proxy = proxy_with(origin.addr, "standard", "");
    let miss = get(&proxy.url("/s"));
    assert!(
        miss.cache_status()
            .starts_with("edge-a; hit; ttl=30, cachet; fwd=miss; fwd-status=200; stored"),
        "{}",
        miss.cache_status()
    );
    let hit = get(&proxy.url("/s"));
    assert!(
        hit.cache_status()
            .starts_with("edge-a; hit; ttl=30, cachet; hit"),
        "{}",
        hit.cache_status()
    );
    assert_eq!(
        hit.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("cache-status"))
            .count(),
        1
    );
}

#[test]
fn requests_that_waited_on_another_fill_say_collapsed() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    // The fill is held until every waiter has come, not for a time a busy machine outlasts.
    let released = Arc::new(AtomicBool::new(false));
    let origin = Origin::start_held(released.clone(), |_| {
        Reply::ok("slow").header("Cache-Control", "max-age=60")
    });
    let proxy = proxy_with(origin.addr, "standard", "");
    let url = proxy.url("/slow");
    let first = {
        let url = url.clone();
        std::thread::spawn(move || get(&url))
    };
    // The first request's fill holds the cache lock.
    support::wait_until("the fill reaches the origin", || origin.hits() == 1);
    let waiters: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || get(&url))
        })
        .collect();
    // Each waiter has been through the plugin, on its way to the lock.
    support::wait_until("the waiters are planned", || {
        proxy.counted("cachet_plugin_hook_seconds_count{hook=\"request\",tenant=\"site\"}") == 5
    });
    // From the plugin to the lock is a lookup: a moment, with room for a busy machine.
    sleep(Duration::from_millis(200));
    released.store(true, Ordering::SeqCst);
    let first = first.join().expect("first");
    assert_status_has(status_of(&first), "fwd=miss");
    assert!(!status_of(&first).contains("collapsed"));
    for waiter in waiters {
        let resp = waiter.join().expect("waiter");
        assert_eq!(resp.text(), "slow");
        assert_status_has(status_of(&resp), "hit");
        assert_status_has(status_of(&resp), "collapsed");
    }
    assert_eq!(origin.hits(), 1);
    // A plain later hit did not wait on anything.
    assert!(!status_of(&get(&url)).contains("collapsed"));
}

#[test]
fn the_cache_key_is_shown_only_in_debug_mode() {
    let origin = Origin::start(|_| Reply::ok("k").header("Cache-Control", "max-age=60"));
    let debug = proxy_with(origin.addr, "standard", "cache_status_key = true");
    let plain = proxy_with(origin.addr, "standard", "");
    let resp = get(&debug.url("/k?q=1"));
    let expected = format!("key=\"site http 127.0.0.1:{} /k q=1\"", debug.port);
    assert_status_has(status_of(&resp), &expected);
    assert!(!status_of(&get(&plain.url("/k?q=1"))).contains("key="));
}

// ------------------------------------------------- plugins read the same directives

#[test]
fn plugins_store_for_the_cdn_cache_control_lifetime() {
    let origin = Origin::start(|seen| match seen.url.as_str() {
        "/both.css" => Reply::ok("both")
            .header("Cache-Control", "max-age=86400")
            .header("CDN-Cache-Control", "max-age=2"),
        // Without a targeted field, static-assets would keep this a day.
        _ => Reply::ok("cdn-only").header("CDN-Cache-Control", "max-age=2"),
    });
    let proxy = proxy_with(origin.addr, "static-assets", "");
    for path in ["/both.css", "/cdn-only.css"] {
        get(&proxy.url(path));
        assert_status_has(status_of(&get(&proxy.url(path))), "hit");
    }
    // Past the 2 s (not 1 s: a stalled machine must not make the first hit stale already).
    sleep(Duration::from_millis(2100));
    for path in ["/both.css", "/cdn-only.css"] {
        let resp = get(&proxy.url(path));
        assert_status_has(status_of(&resp), "fwd=");
        assert_eq!(origin.hits_for(path), 2, "{path}");
    }
}

#[test]
fn plugins_follow_a_targeted_field_over_cache_control_no_store() {
    let origin = Origin::start(|_| {
        Reply::ok("shared")
            .header("Cache-Control", "no-store")
            .header("CDN-Cache-Control", "max-age=60")
    });
    let proxy = proxy_with(origin.addr, "static-assets", "");
    get(&proxy.url("/app.js"));
    assert_status_has(status_of(&get(&proxy.url("/app.js"))), "hit");
    assert_eq!(origin.hits(), 1);
}

// ------------------------------------------------------------------------- ranges

/// Why no 206 is ever stored: a range miss is filled with the whole object (the `Range` is
/// not forwarded), and that complete entry answers every later range.
#[test]
fn a_range_miss_fills_the_whole_object_for_later_ranges() {
    let origin = Origin::start(|seen| {
        let range = seen.header("range").unwrap_or("none").to_owned();
        Reply::ok("0123456789")
            .header("Cache-Control", "max-age=60")
            .header("X-Range-Seen", &range)
    });
    let proxy = proxy_with(origin.addr, "standard", "");
    let first = support::client::send("GET", &proxy.url("/r"), &[("Range", "bytes=0-1")]);
    assert_eq!(first.status, 206);
    assert_eq!(first.text(), "01");
    assert_eq!(first.header("x-range-seen"), Some("none"));
    // The origin answered the whole: fwd-status is its status, not the client's 206.
    assert_status_has(status_of(&first), "fwd-status=200");
    // The client had its two bytes before the fill was stored: on a busy machine the next
    // request could come first. The claim here is what a later range gets once it is stored.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while proxy.status()["cache"]["objects"].as_u64() != Some(1) {
        assert!(
            std::time::Instant::now() < deadline,
            "the fill was never stored"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let later = support::client::send("GET", &proxy.url("/r"), &[("Range", "bytes=5-7")]);
    assert_eq!(later.status, 206);
    assert_eq!(later.text(), "567");
    assert_eq!(later.header("content-range"), Some("bytes 5-7/10"));
    assert_status_has(status_of(&later), "hit");
    assert_eq!(origin.hits(), 1);
}

// ------------------------------------------------------------------- message framing

/// Pingora decodes `chunked` and no other coding: a body also coded `gzip` would be passed
/// on and stored as if plain. Both orders are refused with a 502, and nothing is stored.
#[test]
fn an_origin_transfer_coding_other_than_chunked_is_a_502_and_never_stored() {
    for coding in ["gzip, chunked", "chunked, gzip"] {
        let head = format!(
            "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nTransfer-Encoding: {coding}\r\n\r\n"
        );
        let origin = RawOrigin::start(move |_| {
            let mut bytes = head.clone().into_bytes();
            bytes.extend_from_slice(b"4\r\nhell\r\n0\r\n\r\n");
            bytes
        });
        let proxy = proxy_with(origin.addr, "standard", "");
        for _ in 0..2 {
            let answer = raw::get(proxy.port, "/coded", &[]);
            assert_eq!(answer.head.status, 502, "{coding}: {:?}", answer.head);
            assert_ne!(answer.body, b"hell", "{coding}");
            assert!(answer.head.header("server").is_none(), "{coding}");
            // A miss that got no usable answer, not a request the cache chose to skip.
            assert_status_has(answer.cache_status(), "fwd=miss");
        }
        assert_eq!(origin.requests(), 2, "{coding}: nothing may be stored");
    }
}

/// A client's body in a coding other than chunked would reach the origin with the coding
/// dropped from its framing: 501 (RFC 9112 §6.1), and the origin sees nothing.
#[test]
fn a_request_transfer_coding_other_than_chunked_is_a_501() {
    let origin = Origin::start(|_| Reply::ok("ok"));
    let proxy = proxy_with(origin.addr, "standard", "");
    let answer = raw::exchange(
        proxy.port,
        b"POST /upload HTTP/1.1\r\nHost: site.test\r\nTransfer-Encoding: gzip, chunked\r\n\
          Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    assert_eq!(answer.head.status, 501, "{:?}", answer.head);
    assert_eq!(origin.hits(), 0);
}

/// A 204 has no content and must not claim a length (RFC 9110 §8.6); repeated agreeing
/// lengths are passed on and stored as one value, so ranges can be served from it.
#[test]
fn origin_lengths_reach_clients_and_the_cache_in_one_unambiguous_form() {
    let origin = RawOrigin::start(|head| {
        if head.starts_with("GET /empty ") {
            b"HTTP/1.1 204 No Content\r\nCache-Control: max-age=60\r\nContent-Length: 5\r\n\r\n"
                .to_vec()
        } else if head.starts_with("GET /signed ") {
            b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: +5\r\n\r\n01234"
                .to_vec()
        } else {
            b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 5, 5\r\n\r\n01234"
                .to_vec()
        }
    });
    let proxy = proxy_with(origin.addr, "standard", "");
    for which in ["miss", "hit"] {
        let empty = raw::get(proxy.port, "/empty", &[]);
        assert_eq!(empty.head.status, 204, "{which}");
        assert!(
            empty.head.all("content-length").is_empty(),
            "{which}: {:?}",
            empty.head
        );
        assert!(empty.body.is_empty(), "{which}");

        let listed = raw::get(proxy.port, "/listed", &[]);
        assert_eq!(listed.head.all("content-length"), ["5"], "{which}");
        assert_eq!(listed.body, b"01234", "{which}");
    }
    let range = raw::get(proxy.port, "/listed", &[("Range", "bytes=1-2")]);
    assert_eq!(range.head.status, 206, "{:?}", range.head);
    assert_eq!(range.body, b"12");
    assert_eq!(origin.requests(), 2, "both were stored");
    // `+5` is no length (digits only): a client reading it otherwise would frame the body
    // differently from cachet. Refused, and not stored.
    for _ in 0..2 {
        let signed = raw::get(proxy.port, "/signed", &[]);
        assert_eq!(signed.head.status, 502, "{:?}", signed.head);
    }
    assert_eq!(origin.requests(), 4, "the refused answer was not stored");
}

// ------------------------------------------------------------------ request directives

/// RFC 9111 §5.2.1.7: a stored response or a 504, and the origin is never asked.
#[test]
fn only_if_cached_gets_a_stored_response_or_a_504() {
    let origin = Origin::start(|_| Reply::ok("fresh").header("Cache-Control", "max-age=60"));
    let proxy = proxy_with(origin.addr, "standard", "");
    let only = [("Cache-Control", "max-age=10, only-if-cached")];

    let not_stored = raw::get(proxy.port, "/o", &only);
    assert_eq!(not_stored.head.status, 504, "{:?}", not_stored.head);
    assert_eq!(origin.hits(), 0);

    let fill = raw::get(proxy.port, "/o", &[]);
    assert_eq!(fill.body, b"fresh");
    let stored = raw::get(proxy.port, "/o", &only);
    assert_eq!(stored.head.status, 200);
    assert_eq!(stored.body, b"fresh");
    assert_status_has(stored.cache_status(), "hit");

    let post = raw::request(proxy.port, "POST", "/o", &only);
    assert_eq!(post.head.status, 504);
    assert_eq!(
        origin.hits(),
        1,
        "only the plain request reached the origin"
    );
}

/// A stale-while-revalidate entry is a stored response `only-if-cached` may get; the refresh
/// behind it is the cache's own request and reaches the origin without the directive (an
/// origin that is a cache itself would answer it 504).
#[test]
fn only_if_cached_on_a_stale_entry_gets_it_and_the_refresh_drops_the_directive() {
    let origin = Origin::start(|seen| {
        let directives = seen.header("cache-control").unwrap_or("none").to_owned();
        Reply::ok(format!("saw {directives}"))
            .header("Cache-Control", "max-age=1, stale-while-revalidate=60")
    });
    let proxy = proxy_with(origin.addr, "standard", "");
    assert_eq!(raw::get(proxy.port, "/s", &[]).body, b"saw none");
    std::thread::sleep(Duration::from_millis(1300));
    let only = [("Cache-Control", "max-age=10, only-if-cached")];
    let stale = raw::get(proxy.port, "/s", &only);
    assert_eq!(stale.head.status, 200, "{:?}", stale.head);
    assert_status_has(stale.cache_status(), "stale-while-revalidate");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while origin.hits() < 2 {
        assert!(std::time::Instant::now() < deadline, "never refreshed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let refresh = origin.seen().pop().unwrap();
    assert_eq!(refresh.header("cache-control"), Some("max-age=10"));
}

/// A weak entity tag never matches in If-Range (RFC 9110 §13.1.5): the whole
/// representation, not the range, even when the tag equals the stored one.
#[test]
fn a_weak_if_range_gets_the_whole_representation() {
    let origin = Origin::start(|_| {
        Reply::ok("0123456789")
            .header("Cache-Control", "max-age=60")
            .header("ETag", "W/\"v1\"")
    });
    let proxy = proxy_with(origin.addr, "standard", "");
    let weak = [("Range", "bytes=0-3"), ("If-Range", "W/\"v1\"")];
    for which in ["miss", "hit"] {
        let whole = raw::get(proxy.port, "/w", &weak);
        assert_eq!(whole.head.status, 200, "{which}: {:?}", whole.head);
        assert_eq!(whole.body, b"0123456789", "{which}");
    }
    let plain_range = raw::get(proxy.port, "/w", &[("Range", "bytes=0-3")]);
    assert_eq!(plain_range.head.status, 206);
    assert_eq!(plain_range.body, b"0123");
    assert_eq!(origin.hits(), 1);
}

/// An `If-Range` date holds only against a strong `Last-Modified`, one a second or more before
/// the response's `Date` (RFC 9110 §13.1.5, §8.8.2.2): modified the second it was sent, the
/// response gets the whole representation, not the range. A HEAD gets the `Accept-Ranges` its
/// GET has (§9.3.2).
#[test]
fn an_if_range_date_needs_a_strong_last_modified_and_a_head_says_it_accepts_ranges() {
    let sent = std::sync::Arc::new(parking_lot::Mutex::new(String::new()));
    let origin = Origin::start({
        let sent = sent.clone();
        move |_| {
            let now = httpdate::fmt_http_date(SystemTime::now());
            *sent.lock() = now.clone();
            Reply::ok("0123456789")
                .header("Cache-Control", "max-age=60")
                .header("Date", &now)
                .header("Last-Modified", &now)
        }
    });
    let proxy = proxy_with(origin.addr, "standard", "");
    let stored = raw::get(proxy.port, "/d", &[]);
    assert_eq!(stored.head.status, 200);
    let date = sent.lock().clone();
    let conditional = [("Range", "bytes=0-3"), ("If-Range", date.as_str())];
    let whole = raw::get(proxy.port, "/d", &conditional);
    assert_eq!(whole.head.status, 200, "{:?}", whole.head);
    assert_eq!(whole.body, b"0123456789");
    let plain_range = raw::get(proxy.port, "/d", &[("Range", "bytes=0-3")]);
    assert_eq!(plain_range.head.status, 206);
    let get = raw::get(proxy.port, "/d", &[]);
    let head = support::client::send("HEAD", &proxy.url("/d"), &[]);
    assert_eq!(head.status, 200);
    assert_status_has(head.cache_status(), "hit");
    assert_eq!(get.head.header("accept-ranges"), Some("bytes"));
    assert_eq!(
        head.header("accept-ranges"),
        Some("bytes"),
        "{:?}",
        head.headers
    );
    assert_eq!(origin.hits(), 1);
}

/// RFC 9112 §3.2: an HTTP/1.1 request without Host is a 400 even with a URL as its target.
#[test]
fn an_http11_url_target_without_host_is_refused() {
    let origin = Origin::start(|_| Reply::ok("ok"));
    let proxy = proxy_with(origin.addr, "standard", "");
    let answer = raw::exchange(
        proxy.port,
        b"GET http://site.test/x HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(answer.head.status, 400, "{:?}", answer.head);
    assert_eq!(origin.hits(), 0);
}

// ------------------------------------------------------------------------ half-close

/// Shutting down the sending side after a complete request is not an abort: the client
/// still reads the answer, on a miss from a slow origin as on a hit.
#[test]
fn a_client_that_half_closes_after_its_request_still_gets_the_answer() {
    let origin = Origin::start(|_| {
        Reply::ok("slow body")
            .header("Cache-Control", "max-age=60")
            .delay(Duration::from_millis(300))
    });
    let proxy = proxy_with(origin.addr, "standard", "");
    for which in ["miss", "hit"] {
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        conn.write_all(b"GET /half HTTP/1.1\r\nHost: site.test\r\n\r\n")
            .unwrap();
        conn.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = Vec::new();
        let _ = conn.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{which}: {answer:?}");
        assert!(answer.ends_with("slow body"), "{which}: {answer:?}");
    }
    assert_eq!(origin.hits(), 1);
}
