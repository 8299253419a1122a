//! Damaged requests against the real proxy, as a broken or hostile client sends them.
//!
//! A fixed-seed generator takes valid requests (plain, conditional and ranged GETs, HEAD,
//! bodies framed by length and by chunks, pipelined pairs) and damages each a few times:
//! bytes replaced, inserted or cut, a tricky field added or repeated, another method,
//! target or version, a bare CR or LF, a cut-off end. Each goes on a connection of its own,
//! half-closed once sent, through the default configuration (the standard plugin, a fresh
//! instance per request), then through its native twin, to a real origin that answers with
//! what reached it.
//!
//! Whatever cachet makes of them:
//! - every answer is an HTTP/1.x response, and none is a 500: no input is an internal error;
//! - the process lives on and logs no panic;
//! - nothing one of them stored is served for another request: afterwards each URL and
//!   host the origin was asked for is requested cleanly, and the answer must be the one the
//!   origin gives that URL and host.
//!
//! Over HTTP/2 (h2c) a real client refuses to send damaged bytes, so the second hunt mixes
//! what a client may send: authorities, paths, methods, bodies and fields (forwarding,
//! conditionals, ranges, cache directives, credentials, framing fields HTTP/2 forbids), with
//! the same three checks.
//!
//! `CACHET_MUTATION_SEED` and `CACHET_MUTATION_CASES` run another or a longer hunt; a
//! failure names the seed and the case.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::http2_client::{h2c, H2Request};
use support::origin::{Origin, Reply};
use support::proxy::{Proxy, TenantSpec};
use support::{plugin, wire};

const DEFAULT_SEED: u64 = 0x005e_edca_c4e7;
const DEFAULT_CASES: usize = 1500;
/// Connections at once: enough to interleave fills and hits of the same URLs.
const CLIENTS: usize = 6;
/// URLs the seeds spread over, so damaged and intact requests meet on the same entries.
const URLS: u64 = 24;
const SITE: &str = "fuzz.test";

/// xorshift64*: reproducible from the seed alone, no crate needed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T: ?Sized>(&mut self, from: &[&'a T]) -> &'a T {
        from[self.below(from.len())]
    }
}

/// The intact requests the damage starts from; `n` picks the URL.
fn intact(n: u64) -> Vec<Vec<u8>> {
    [
        format!("GET /p/{n}?q=1 HTTP/1.1\r\nHost: {SITE}\r\nAccept: */*\r\n\r\n"),
        format!("GET /p/{n} HTTP/1.1\r\nHost: {SITE}\r\nIf-None-Match: \"x\"\r\nCookie: lang=fr\r\n\r\n"),
        format!("GET /p/{n} HTTP/1.1\r\nHost: Fuzz.Test:80\r\nRange: bytes=0-3\r\n\r\n"),
        format!("HEAD /p/{n} HTTP/1.1\r\nHost: {SITE}\r\n\r\n"),
        format!("POST /p/{n} HTTP/1.1\r\nHost: {SITE}\r\nContent-Length: 5\r\n\r\nhello"),
        format!(
            "POST /p/{n} HTTP/1.1\r\nHost: {SITE}\r\nTransfer-Encoding: chunked\r\n\r\n\
             5\r\nhello\r\n0\r\n\r\n"
        ),
        format!(
            "GET /a/{n} HTTP/1.1\r\nHost: {SITE}\r\n\r\nGET /b/{n} HTTP/1.1\r\nHost: {SITE}\r\n\r\n"
        ),
        format!("GET /p/{n} HTTP/1.0\r\nHost: {SITE}\r\nConnection: keep-alive\r\n\r\n"),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}

const BYTES: &[u8] = b"\0\r\n \t:/?#%,;\"\x7f\x80\xffa";
const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "PURGE", "OPTIONS", "get", "GeT", "TRACE", "CONNECT",
    "G\tET", "BREW", "",
];
const TARGETS: &[&str] = &[
    "/p/{n}",
    "/p/{n}?a=1&b=2",
    "/p/{n}?b=2&a=1",
    "/p/{n}#frag",
    "/p/%2e%2e/{n}",
    "/p/../{n}",
    "//p/{n}",
    "http://other.test/p/{n}",
    "http://fuzz.test:80/p/{n}",
    "https://fuzz.test/p/{n}",
    "*",
    "p/{n}",
    "/p/{n} x",
    "/p/\u{e9}{n}",
    "/P/{n}",
    "/p/{n}/",
    "/p/{n}?",
    "/p/{n}%00",
    "/p/{n}?q=%zz",
];
const VERSIONS: &[&str] = &[
    "HTTP/1.1",
    "HTTP/1.0",
    "HTTP/1.2",
    "HTTP/2.0",
    "HTTP/0.9",
    "http/1.1",
    "HTTP/11",
    "HTTP/1.1 ",
    "",
];
const FIELDS: &[&str] = &[
    "Transfer-Encoding: chunked",
    "Transfer-Encoding: gzip, chunked",
    "Transfer-Encoding : chunked",
    "Content-Length: 5",
    "Content-Length: 0",
    "Content-Length: 5, 5",
    "Content-Length: -1",
    "Content-Length: 99999999999999999999",
    "Host: other.test",
    "Host: ",
    "Host: fuzz.test, other.test",
    "X-Forwarded-Host: other.test",
    "X-Forwarded-Proto: https",
    "Forwarded: proto=https;host=other.test",
    "Connection: close",
    "Connection: keep-alive, Upgrade",
    "Upgrade: h2c",
    "Expect: 100-continue",
    "Range: bytes=0-1",
    "Range: bytes=5-",
    "Range: bytes=9-2",
    "If-None-Match: *",
    "If-Modified-Since: Thu, 01 Jan 2099 00:00:00 GMT",
    "Cache-Control: no-store",
    "Cache-Control: only-if-cached",
    "Cache-Control: max-age=0",
    "Pragma: no-cache",
    "Authorization: Bearer t",
    "Cookie: session=1",
    "Accept-Encoding: gzip",
    "Accept-Language: fr",
    " folded continuation",
    "NoColon",
    "Bad Name: x",
    "X-Nul: a\0b",
    "X-Ctl: a\x7fb",
    "X-Utf8: \u{e9}",
    "X-HTTP-Method-Override: PURGE",
    "Max-Forwards: 0",
    "TE: trailers",
];

/// `line` with `{n}` replaced.
fn with_n(line: &str, n: u64) -> Vec<u8> {
    line.replace("{n}", &n.to_string()).into_bytes()
}

/// Where the request line's parts end: (method end, target end, line end).
fn request_line(req: &[u8]) -> Option<(usize, usize, usize)> {
    let line_end = req.windows(2).position(|w| w == b"\r\n")?;
    let method_end = req[..line_end].iter().position(|&b| b == b' ')?;
    let target_end = method_end
        + 1
        + req[method_end + 1..line_end]
            .iter()
            .position(|&b| b == b' ')?;
    Some((method_end, target_end, line_end))
}

/// Damages `req` one to three times.
fn damage(rng: &mut Rng, mut req: Vec<u8>, n: u64) -> Vec<u8> {
    for _ in 0..1 + rng.below(3) {
        if req.is_empty() {
            break;
        }
        let at = rng.below(req.len());
        match rng.below(10) {
            0 => req[at] = BYTES[rng.below(BYTES.len())],
            1 => req.insert(at, BYTES[rng.below(BYTES.len())]),
            2 => {
                let end = (at + 1 + rng.below(8)).min(req.len());
                req.drain(at..end);
            }
            3 => {
                let field = match rng.below(12) {
                    0 => format!("X-Long: {}", "a".repeat(9000)).into_bytes(),
                    _ => rng.pick(FIELDS).as_bytes().to_vec(),
                };
                if let Some((.., line_end)) = request_line(&req) {
                    let mut line = field;
                    line.extend_from_slice(b"\r\n");
                    req.splice(line_end + 2..line_end + 2, line);
                }
            }
            4 => {
                if let Some((method_end, ..)) = request_line(&req) {
                    req.splice(..method_end, rng.pick(METHODS).bytes());
                }
            }
            5 => {
                if let Some((method_end, target_end, _)) = request_line(&req) {
                    req.splice(method_end + 1..target_end, with_n(rng.pick(TARGETS), n));
                }
            }
            6 => {
                if let Some((_, target_end, line_end)) = request_line(&req) {
                    req.splice(target_end + 1..line_end, rng.pick(VERSIONS).bytes());
                }
            }
            7 => {
                let crlfs: Vec<usize> = (0..req.len().saturating_sub(1))
                    .filter(|&i| &req[i..i + 2] == b"\r\n")
                    .collect();
                if !crlfs.is_empty() {
                    let i = crlfs[rng.below(crlfs.len())];
                    // A bare LF or a bare CR where CRLF belongs.
                    req.remove(i + rng.below(2));
                }
            }
            8 => {
                let lines: Vec<(usize, usize)> = line_spans(&req);
                if lines.len() > 1 {
                    let (start, end) = lines[1 + rng.below(lines.len() - 1)];
                    let copy = req[start..end].to_vec();
                    req.splice(end..end, copy);
                }
            }
            _ => req.truncate(at),
        }
    }
    req
}

/// Each head line's span, its CRLF included, up to the blank line.
fn line_spans(req: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start = 0;
    while let Some(len) = req[start..].windows(2).position(|w| w == b"\r\n") {
        if len == 0 {
            break;
        }
        spans.push((start, start + len + 2));
        start += len + 2;
    }
    spans
}

/// What came back for one damaged request.
struct Outcome {
    request: Vec<u8>,
    /// The first answer's status; `None` when the connection closed without one.
    status: Option<u16>,
    answer: Vec<u8>,
}

fn send(port: u16, request: &[u8]) -> Outcome {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect to cachet");
    conn.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    conn.set_write_timeout(Some(Duration::from_secs(2)))
        .expect("write timeout");
    // cachet may refuse and close before reading all of it: not a failure of the case.
    let _ = conn.write_all(request);
    let _ = conn.shutdown(Shutdown::Write);
    let answer = wire::read_until_closed(&mut conn, Duration::from_secs(8));
    let status = status_of(&answer);
    Outcome {
        request: request.to_vec(),
        status,
        answer,
    }
}

/// The status of the response `answer` starts with, if it starts with one.
fn status_of(answer: &[u8]) -> Option<u16> {
    let rest = answer
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| answer.strip_prefix(b"HTTP/1.0 "))?;
    let code = std::str::from_utf8(rest.get(..3)?).ok()?;
    code.parse().ok()
}

fn show(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(600)]).into_owned();
    format!("{text:?}")
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn damaged_requests_get_proper_answers_and_poison_nothing() {
    for policy in policies() {
        damaged_hunt(&policy);
    }
}

fn damaged_hunt(policy: &Path) {
    let seed: u64 = env_or("CACHET_MUTATION_SEED", DEFAULT_SEED);
    let cases: usize = env_or("CACHET_MUTATION_CASES", DEFAULT_CASES);
    let origin = echo_origin();
    let proxy = start_proxy(&origin, policy, "");

    let started = Instant::now();
    let port = proxy.port;
    let outcomes = from_clients(seed, 0x9e37_79b9_7f4a_7c15, cases, move |rng| {
        let n = rng.below(URLS as usize) as u64;
        let seeds = intact(n);
        let request = seeds[rng.below(seeds.len())].clone();
        // One in eight goes intact, so entries get stored between damaged ones.
        let request = match rng.below(8) {
            0 => request,
            _ => damage(rng, request, n),
        };
        send(port, &request)
    });
    let took = started.elapsed();

    let mut statuses: BTreeMap<Option<u16>, usize> = BTreeMap::new();
    for outcome in &outcomes {
        *statuses.entry(outcome.status).or_default() += 1;
    }
    eprintln!(
        "{}, seed {seed:#x}: {cases} requests in {took:?}, statuses {statuses:?}",
        policy.display()
    );
    for outcome in &outcomes {
        assert!(
            outcome.answer.is_empty() || outcome.status.is_some(),
            "seed {seed:#x}: not an HTTP/1.x answer to {}: {}",
            show(&outcome.request),
            show(&outcome.answer)
        );
        assert_ne!(
            outcome.status,
            Some(500),
            "seed {seed:#x}: an internal error for {}: {}",
            show(&outcome.request),
            show(&outcome.answer)
        );
    }
    // Most of them still reached the origin or the cache: the hunt is not all refusals.
    let answered_ok = statuses.get(&Some(200)).copied().unwrap_or(0);
    assert!(answered_ok * 4 > cases, "{statuses:?}");

    answers_stay_with_their_requests(&origin, &proxy, seed);
    still_whole(proxy, seed);
}

const H2_AUTHORITIES: &[&str] = &[
    "fuzz.test",
    "FUZZ.test",
    "fuzz.test:80",
    "fuzz.test.",
    "other.test",
    "fuzz.test:8080",
];
const H2_PATHS: &[&str] = &[
    "/p/{n}",
    "/p/{n}?a=1&b=2",
    "/p/{n}?b=2&a=1",
    "/p/%2e%2e/{n}",
    "/p/../{n}",
    "//p/{n}",
    "/P/{n}",
    "/p/{n}/",
    "/p/{n}?",
    "/p/{n}?q=%zz",
    "/p/%70/{n}",
];
const H2_METHODS: &[&str] = &[
    "GET", "GET", "GET", "HEAD", "POST", "DELETE", "PURGE", "OPTIONS",
];
const H2_FIELDS: &[(&str, &str)] = &[
    ("host", "other.test"),
    ("host", "fuzz.test"),
    ("host", "fuzz.test, other.test"),
    ("x-forwarded-host", "other.test"),
    ("x-forwarded-proto", "https"),
    ("forwarded", "proto=https;host=other.test"),
    ("cookie", "session=1"),
    ("authorization", "Bearer t"),
    ("accept-encoding", "gzip"),
    ("accept-language", "fr"),
    ("cache-control", "no-store"),
    ("cache-control", "max-age=0"),
    ("cache-control", "only-if-cached"),
    ("pragma", "no-cache"),
    ("range", "bytes=0-1"),
    ("range", "bytes=9-2"),
    ("if-none-match", "*"),
    ("if-modified-since", "Thu, 01 Jan 2099 00:00:00 GMT"),
    ("content-length", "5"),
    ("content-length", "0"),
    ("te", "trailers"),
    ("te", "gzip"),
    ("x-http-method-override", "PURGE"),
    ("max-forwards", "0"),
];

#[test]
fn http2_requests_of_every_mix_get_proper_answers_and_poison_nothing() {
    for policy in policies() {
        http2_hunt(&policy);
    }
}

fn http2_hunt(policy: &Path) {
    let seed: u64 = env_or("CACHET_MUTATION_SEED", DEFAULT_SEED);
    let cases: usize = env_or("CACHET_MUTATION_CASES", DEFAULT_CASES) / 2;
    let origin = echo_origin();
    let proxy = start_proxy(&origin, policy, "h2c = true");
    let port = proxy.port;
    let outcomes = from_clients(seed, 0xd1b5_4a32_d192_ed03, cases, move |rng| {
        let n = rng.below(URLS as usize) as u64;
        let method = rng.pick(H2_METHODS);
        let authority = rng.pick(H2_AUTHORITIES);
        let path = String::from_utf8(with_n(rng.pick(H2_PATHS), n)).unwrap();
        let fields: Vec<(&str, &str)> = (0..rng.below(4))
            .map(|_| H2_FIELDS[rng.below(H2_FIELDS.len())])
            .collect();
        let body = (rng.below(6) == 0).then_some(&b"hello"[..]);
        let request = H2Request {
            method,
            path: &path,
            headers: &fields,
            body,
        };
        let case = format!("{method} {authority}{path} {fields:?} body {body:?}");
        // A stream the server resets (a malformed request) is an answer too.
        let status = h2c(port, authority, &[request])
            .ok()
            .map(|outcome| outcome.responses[0].status);
        (case, status)
    });
    let mut statuses: BTreeMap<Option<u16>, usize> = BTreeMap::new();
    for (case, status) in &outcomes {
        *statuses.entry(*status).or_default() += 1;
        assert_ne!(
            *status,
            Some(500),
            "seed {seed:#x}: an internal error for {case}"
        );
    }
    eprintln!(
        "{}, seed {seed:#x}: {cases} HTTP/2 requests, statuses {statuses:?}",
        policy.display()
    );
    let answered_ok = statuses.get(&Some(200)).copied().unwrap_or(0);
    assert!(answered_ok * 4 > cases, "{statuses:?}");
    answers_stay_with_their_requests(&origin, &proxy, seed);
    still_whole(proxy, seed);
}

/// `cases` outcomes of `case`, made by [`CLIENTS`] threads at once, each from its own
/// generator (the seed mixed with `salt` and the thread's number).
fn from_clients<T: Send + 'static>(
    seed: u64,
    salt: u64,
    cases: usize,
    case: impl Fn(&mut Rng) -> T + Copy + Send + 'static,
) -> Vec<T> {
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            std::thread::spawn(move || {
                let mut rng = Rng(seed ^ (client as u64 + 1).wrapping_mul(salt));
                (client..cases)
                    .step_by(CLIENTS)
                    .map(|_| case(&mut rng))
                    .collect::<Vec<T>>()
            })
        })
        .collect();
    clients
        .into_iter()
        .flat_map(|c| c.join().expect("client thread"))
        .collect()
}

/// An origin whose answer names exactly what reached it, storable for 5 minutes.
fn echo_origin() -> Origin {
    Origin::start(|seen| {
        let host = seen.header("host").unwrap_or("-");
        Reply::ok(format!("{} {} host={host}", seen.method, seen.url))
            .header("Cache-Control", "public, max-age=300")
    })
}

/// The policies hunted under: the standard plugin in the default configuration (a fresh
/// instance per request), and its native twin, whose key is built by other code.
fn policies() -> [PathBuf; 2] {
    [plugin("standard"), PathBuf::from("builtin:standard")]
}

/// cachet with `policy` for every host, and `server` lines.
fn start_proxy(origin: &Origin, policy: &Path, server: &str) -> Proxy {
    Proxy::start_with_server(server, "", &[TenantSpec::new("fuzz", origin.addr, policy)])
}

/// Every URL and host the origin was asked for with a GET, requested cleanly now, gets the
/// answer for itself, whether stored or fetched; most come from the cache, so the stored
/// answers are what is compared.
fn answers_stay_with_their_requests(origin: &Origin, proxy: &Proxy, seed: u64) {
    let asked: BTreeSet<(String, String)> = origin
        .seen()
        .into_iter()
        .filter(|seen| seen.method == "GET")
        .filter_map(|seen| Some((seen.url.clone(), seen.header("host")?.to_owned())))
        .filter(|(url, host)| {
            let printable = |s: &str| s.bytes().all(|b| (0x21..0x7f).contains(&b));
            url.starts_with('/') && printable(url) && printable(host)
        })
        .collect();
    assert!(asked.len() >= URLS as usize, "{asked:?}");
    let mut served_stored = 0;
    for (url, host) in &asked {
        let clean = format!("GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let resp = wire::one(proxy.port, &clean);
        assert_eq!(
            (resp.status, resp.text()),
            (200, format!("GET {url} host={host}")),
            "seed {seed:#x}: {clean:?} was answered {:?}",
            resp.headers
        );
        served_stored += usize::from(
            resp.header("cache-status")
                .is_some_and(|s| s.contains("hit")),
        );
    }
    // Most answers compared were stored ones, filled by the damaged requests or beside them.
    eprintln!(
        "{served_stored} of {} clean requests answered from the cache",
        asked.len()
    );
    assert!(
        served_stored * 2 > asked.len(),
        "{served_stored} of {}",
        asked.len()
    );
}

/// The process logged no panic and still runs.
fn still_whole(mut proxy: Proxy, seed: u64) {
    let log = proxy.log();
    assert!(!log.contains("panicked"), "seed {seed:#x}:\n{log}");
    assert!(proxy.is_running(), "{}", proxy.log());
}
