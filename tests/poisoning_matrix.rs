//! A differential cache-poisoning hunt kept as a test.
//!
//! The origin answers every request with a digest of what reached it: the
//! method, the target and every header field it reads (all but `User-Agent`
//! and hop-by-hop fields), so two requests get different answers exactly when
//! the origin can tell them apart. It marks every answer cacheable for 5
//! minutes, varying on `Accept-Encoding`, and tags it for purging.
//!
//! For each pair of requests (A, B) in the table, under each plugin, each
//! `forwarded_headers` mode and each protocol, B is sent once on an empty
//! cache, and once right after A. Whatever the cache keeps, B's answer after A
//! must be the answer B gets alone: if the cache served B what it stored for
//! A while the origin answers them differently, A has poisoned B's entry.
//! Control pairs, requests the origin cannot tell apart, must share an entry,
//! so the hunt cannot pass by caching nothing.

mod support;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use support::http2_client::{self, H2Request};
use support::origin::{Origin, Reply, Seen};
use support::proxy::{Proxy, TenantSpec};
use support::tls::{client_config, https_request, TestCa};
use support::{plugin, raw};

const TOKEN: &str = "matrix-token";
/// The tag every answer carries: one admin purge empties the cache between runs.
const TAG: &str = "matrix";

/// The plugins under test: each gets a tenant whose hosts are `<name>.test`
/// and `www.<name>.test`.
fn plugins() -> Vec<(&'static str, PathBuf)> {
    vec![
        ("builtin", PathBuf::from("builtin:standard")),
        ("standard", plugin("standard")),
        ("static-assets", plugin("static-assets")),
        ("static-assets-py", plugin("static-assets-py")),
        ("api-gateway", plugin("api-gateway")),
        ("vcl-port", plugin("vcl-port")),
    ]
}

const MODES: &[&str] = &["replace", "append", "off"];

/// How a request reaches cachet.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Transport {
    H1,
    H2c,
    H1Tls,
    H2Tls,
}

impl Transport {
    fn is_h2(self) -> bool {
        matches!(self, Transport::H2c | Transport::H2Tls)
    }

    /// The same protocol over TLS.
    fn secure(self) -> Transport {
        match self {
            Transport::H1 | Transport::H1Tls => Transport::H1Tls,
            Transport::H2c | Transport::H2Tls => Transport::H2Tls,
        }
    }
}

/// One request of a pair. `{host}` in `host` and `target` stands for the
/// tenant's name (`standard.test`).
#[derive(Clone, Debug)]
struct Req {
    /// `None`: the run's protocol.
    transport: Option<Transport>,
    method: &'static str,
    target: String,
    host: String,
    headers: Vec<(String, String)>,
}

fn get(target: &str) -> Req {
    Req {
        transport: None,
        method: "GET",
        target: target.into(),
        host: "{host}".into(),
        headers: Vec::new(),
    }
}

impl Req {
    fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    fn host(mut self, host: &str) -> Self {
        self.host = host.into();
        self
    }

    fn method(mut self, method: &'static str) -> Self {
        self.method = method;
        self
    }

    fn over(mut self, transport: Transport) -> Self {
        self.transport = Some(transport);
        self
    }
}

struct Pair {
    name: String,
    a: Req,
    b: Req,
    /// The origin cannot tell A and B apart: B must be a hit on A's entry.
    shared: bool,
    /// Only for HTTP/1.1 (a target form HTTP/2 cannot carry).
    h1_only: bool,
    /// Only in these forwarding modes (empty: all).
    modes: &'static [&'static str],
    /// Only for these plugins (empty: all).
    plugins: &'static [&'static str],
}

fn pair(name: &str, a: Req, b: Req) -> Pair {
    Pair {
        name: name.into(),
        a,
        b,
        shared: false,
        h1_only: false,
        modes: &[],
        plugins: &[],
    }
}

fn control(name: &str, a: Req, b: Req) -> Pair {
    Pair {
        shared: true,
        ..pair(name, a, b)
    }
}

/// The request pairs, for one path of each kind the plugins treat apart.
fn pairs() -> Vec<Pair> {
    let mut pairs = Vec::new();
    for path in ["/page", "/static/app.css", "/api/items"] {
        let p = |suffix: &str| format!("{path}{suffix}");
        pairs.extend([
            control(&format!("{path}: the same request"), get(path), get(path)),
            control(
                &format!("{path}: another User-Agent"),
                get(path).header("User-Agent", "one"),
                get(path).header("User-Agent", "two"),
            ),
            pair(
                &format!("{path}: query values"),
                get(&p("?a=1")),
                get(&p("?a=2")),
            ),
            pair(
                &format!("{path}: query order"),
                get(&p("?a=1&b=2")),
                get(&p("?b=2&a=1")),
            ),
            pair(&format!("{path}: an empty query"), get(&p("?")), get(path)),
            pair(
                &format!("{path}: an encoded letter"),
                get(&path.replacen('a', "%61", 1)),
                get(path),
            ),
            pair(
                &format!("{path}: an encoded query"),
                get(&p("?a=%31")),
                get(&p("?a=1")),
            ),
            pair(
                &format!("{path}: case"),
                get(&path.to_uppercase()),
                get(path),
            ),
            pair(
                &format!("{path}: dot segments"),
                get(&format!("/x/..{path}")),
                get(path),
            ),
            pair(
                &format!("{path}: a doubled slash"),
                get(&format!("/{path}")),
                get(path),
            ),
            pair(
                &format!("{path}: HEAD first"),
                get(path).method("HEAD"),
                get(path),
            ),
            pair(
                &format!("{path}: another host of the tenant"),
                get(path).host("www.{host}"),
                get(path),
            ),
            pair(
                &format!("{path}: a port in Host"),
                get(path).host("{host}:80"),
                get(path),
            ),
            pair(
                &format!("{path}: a method override"),
                get(path).header("X-HTTP-Method-Override", "DELETE"),
                get(path),
            ),
            pair(
                &format!("{path}: an original URL"),
                get(path).header("X-Original-URL", "/other"),
                get(path),
            ),
            pair(
                &format!("{path}: HTTPS first"),
                get(path).over(Transport::H1Tls),
                get(path),
            ),
            pair(
                &format!("{path}: a proto claim"),
                get(path).header("X-Forwarded-Proto", "https"),
                get(path),
            ),
            pair(
                &format!("{path}: a Forwarded proto"),
                get(path).header("Forwarded", "proto=https"),
                get(path),
            ),
            pair(
                &format!("{path}: Authorization"),
                get(path).header("Authorization", "Bearer secret"),
                get(path),
            ),
            pair(
                &format!("{path}: Accept-Encoding"),
                get(path).header("Accept-Encoding", "gzip"),
                get(path),
            ),
            pair(
                &format!("{path}: a coding refused"),
                get(path).header("Accept-Encoding", "gzip;q=0"),
                get(path).header("Accept-Encoding", "gzip"),
            ),
            pair(
                &format!("{path}: any coding"),
                get(path).header("Accept-Encoding", "*"),
                get(path),
            ),
        ]);
        // Under "append" and "off" the claims are the front proxy's word, passed on unkeyed
        // (README: the front proxy must set or strip them); under "replace" they are dropped.
        pairs.push(Pair {
            modes: &["replace"],
            ..pair(
                &format!("{path}: a forwarded host claim"),
                get(path).header("X-Forwarded-Host", "evil.example"),
                get(path),
            )
        });
        pairs.extend(cookie_pairs(path));
        pairs.push(Pair {
            h1_only: true,
            ..pair(
                &format!("{path}: absolute form"),
                get(&format!("http://www.{{host}}{path}")),
                get(path),
            )
        });
        pairs.push(Pair {
            h1_only: true,
            ..pair(
                &format!("{path}: absolute form, https"),
                get(&format!("https://{{host}}{path}")),
                get(path),
            )
        });
    }
    // Both protocols, one entry: the origin is sent the same request.
    pairs.push(control(
        "HTTP/1.1 and HTTP/2 share",
        get("/page").over(Transport::H1),
        get("/page").over(Transport::H2c),
    ));
    for vary in [false, true] {
        let crumbs = get("/page")
            .over(Transport::H2c)
            .header("cookie", "lang=fr")
            .header("cookie", "lang=de");
        let one = get("/page")
            .over(Transport::H2c)
            .header("cookie", "lang=fr");
        pairs.push(cookie_pair(
            "HTTP/2 cookie crumbs",
            crumbs,
            one,
            vary,
            KEYS_LANG,
        ));
    }
    pairs
}

/// The request field that makes the origin add `Cookie` to its `Vary` (not part of its
/// answer, as `User-Agent`).
const VARY_COOKIE: &str = "x-matrix-vary-cookie";

/// Plugins documented to key on the `lang` cookie or keep cookies from a shared entry; the
/// others follow RFC 9111 and share what the origin does not say varies (no `Vary: Cookie`).
const KEYS_LANG: &[&str] = &["vcl-port", "static-assets", "static-assets-py"];
/// Plugins documented to pass (or strip) a session cookie.
const PASSES_SESSION: &[&str] = &[
    "vcl-port",
    "static-assets",
    "static-assets-py",
    "api-gateway",
];

/// Pairs told apart by a cookie, once with the origin silent about it (for the plugins
/// documented to handle that cookie) and once with `Vary: Cookie` (for every plugin).
fn cookie_pairs(path: &str) -> Vec<Pair> {
    let mut pairs = Vec::new();
    for vary in [false, true] {
        let with = |cookie: &str| get(path).header("Cookie", cookie);
        pairs.extend([
            cookie_pair(
                &format!("{path}: lang cookie"),
                with("lang=fr"),
                with("lang=de"),
                vary,
                KEYS_LANG,
            ),
            cookie_pair(
                &format!("{path}: a second lang cookie"),
                with("lang=fr; lang=de"),
                with("lang=fr"),
                vary,
                KEYS_LANG,
            ),
            cookie_pair(
                &format!("{path}: cookie case"),
                with("lang=Fr"),
                with("lang=fr"),
                vary,
                KEYS_LANG,
            ),
            cookie_pair(
                &format!("{path}: cookie spacing"),
                with("lang = fr"),
                with("lang=fr"),
                vary,
                KEYS_LANG,
            ),
            cookie_pair(
                &format!("{path}: a quoted cookie"),
                with("lang=\"fr\""),
                with("lang=fr"),
                vary,
                KEYS_LANG,
            ),
            cookie_pair(
                &format!("{path}: an empty lang cookie"),
                with("lang="),
                get(path),
                vary,
                KEYS_LANG,
            ),
            cookie_pair(
                &format!("{path}: a session cookie"),
                with("session=1"),
                get(path),
                vary,
                PASSES_SESSION,
            ),
        ]);
        // Spellings a lenient origin reads as `session` (ASP.NET ignores case, Python's
        // SimpleCookie splits on spaces, older Rack on commas and decodes names).
        for spelling in [
            "Session=1",
            "theme=dark session=1",
            "theme=dark, session=1",
            "%73ession=1",
        ] {
            pairs.push(cookie_pair(
                &format!("{path}: a session cookie spelled {spelling:?}"),
                with(spelling),
                get(path),
                vary,
                PASSES_SESSION,
            ));
        }
    }
    pairs
}

fn cookie_pair(name: &str, a: Req, b: Req, vary: bool, plugins: &'static [&'static str]) -> Pair {
    if vary {
        let name = format!("{name}, Vary: Cookie");
        return pair(
            &name,
            a.header(VARY_COOKIE, "1"),
            b.header(VARY_COOKIE, "1"),
        );
    }
    Pair {
        plugins,
        ..pair(name, a, b)
    }
}

/// The origin's answer: every field it reads, in a canonical order.
fn digest(seen: &Seen) -> String {
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut cookies: Vec<&str> = Vec::new();
    for (name, value) in &seen.headers {
        let name = name.to_ascii_lowercase();
        match name.as_str() {
            "user-agent" | "connection" | "keep-alive" | "te" | "content-length" | VARY_COOKIE => {}
            "cookie" => cookies.push(value),
            "host" => fields.push((name, value.to_ascii_lowercase())),
            "accept-encoding" => fields.push((name, codings(value))),
            _ => fields.push((name, value.clone())),
        }
    }
    if !cookies.is_empty() {
        // RFC 9113 §8.2.3: crumbs are one field to an HTTP/1.1 origin.
        fields.push(("cookie".into(), cookies.join("; ")));
    }
    // Stable: fields of one name keep their order.
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = format!("{} {}\n", seen.method, seen.url);
    for (name, value) in fields {
        let _ = writeln!(out, "{name}: {value}");
    }
    out
}

/// Accept-Encoding as the origin reads it: case, spaces, order and a weight
/// of 1 do not matter.
fn codings(value: &str) -> String {
    let mut codings: Vec<String> = value
        .split(',')
        .map(|c| {
            let c = c.trim().to_ascii_lowercase().replace(' ', "");
            for one in [";q=1.000", ";q=1.00", ";q=1.0", ";q=1"] {
                if let Some(coding) = c.strip_suffix(one) {
                    return coding.to_owned();
                }
            }
            c
        })
        .filter(|c| !c.is_empty())
        .collect();
    codings.sort();
    codings.join(",")
}

fn start_origin() -> Origin {
    Origin::start(|seen| {
        let kind = if seen.url.contains(".css") {
            "text/css"
        } else {
            "text/plain"
        };
        let vary = match seen.header(VARY_COOKIE) {
            Some(_) => "Accept-Encoding, Cookie",
            None => "Accept-Encoding",
        };
        let mut reply = Reply::ok(digest(seen))
            .header("Cache-Control", "max-age=300")
            .header("Vary", vary)
            .header("Surrogate-Key", TAG);
        reply.headers[0].1 = kind.into();
        reply
    })
}

/// One proxy in one forwarding mode, every plugin a tenant.
struct Setup {
    proxy: Proxy,
    tls: Arc<rustls::ClientConfig>,
    _certs: tempfile::TempDir,
}

impl Setup {
    fn start(mode: &str, origin: &Origin, ca: &TestCa) -> Self {
        let certs = tempfile::tempdir().unwrap();
        let names: Vec<String> = plugins()
            .iter()
            .flat_map(|(name, _)| [format!("{name}.test"), format!("www.{name}.test")])
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let (cert, key) = ca.leaf(&names).write(certs.path(), "site");
        let tenants: Vec<TenantSpec> = plugins()
            .iter()
            .map(|(name, path)| {
                let host = format!("{name}.test");
                let www = format!("www.{host}");
                TenantSpec::new(name, origin.addr, path).hosts(&[&host, &www])
            })
            .collect();
        let proxy = Proxy::start_with_server(
            &format!(
                "tls_listen = \"127.0.0.1:TLS_PORT\"\ntls_cert = {cert:?}\ntls_key = {key:?}\n\
                 h2c = true\nadmin_token = \"{TOKEN}\"\nforwarded_headers = \"{mode}\"\n\
                 access_log = false"
            ),
            "",
            &tenants,
        );
        Self {
            proxy,
            tls: client_config(&[ca], &[b"http/1.1"], true),
            _certs: certs,
        }
    }

    fn purge_all(&self) {
        let resp = support::client::send(
            "POST",
            &self.proxy.admin_url("/purge"),
            &[
                ("Authorization", &format!("Bearer {TOKEN}")),
                ("Surrogate-Key", TAG),
            ],
        );
        assert!(
            resp.status == 200 || resp.status == 404,
            "purge: {} {}",
            resp.status,
            resp.text()
        );
    }

    /// Sends `req` for tenant `tenant` over `run` (unless the request names its
    /// own protocol): (status, body, Cache-Status).
    fn send(&self, req: &Req, tenant: &str, run: Transport) -> (u16, String, String) {
        let tenant_host = format!("{tenant}.test");
        let host = req.host.replace("{host}", &tenant_host);
        let target = req.target.replace("{host}", &tenant_host);
        let headers: Vec<(&str, &str)> = req
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        // A request sent over TLS goes over the run's protocol, secured.
        let transport = match req.transport {
            Some(Transport::H1Tls) => run.secure(),
            Some(explicit) => explicit,
            None => run,
        };
        let sni = host.split(':').next().unwrap().to_owned();
        match transport {
            Transport::H1 => {
                let mut text = format!("{} {target} HTTP/1.1\r\nHost: {host}\r\n", req.method);
                for (n, v) in &headers {
                    let _ = write!(text, "{n}: {v}\r\n");
                }
                text.push_str("Connection: close\r\n\r\n");
                if req.method == "HEAD" {
                    // No body follows: read the head up to the close.
                    let bytes = support::wire::exchange(self.proxy.port, text.as_bytes());
                    let mut fields = [httparse::EMPTY_HEADER; 64];
                    let mut head = httparse::Response::new(&mut fields);
                    let length = match head.parse(&bytes) {
                        Ok(httparse::Status::Complete(length)) => length,
                        _ => panic!("HEAD answer: {:?}", String::from_utf8_lossy(&bytes)),
                    };
                    let headers = support::owned_headers(head.headers);
                    let status = support::find_header(&headers, "cache-status").unwrap_or("");
                    let rest = String::from_utf8_lossy(&bytes[length..]).into_owned();
                    return (head.code.unwrap_or(0), rest, status.to_owned());
                }
                let exchange = raw::exchange(self.proxy.port, text.as_bytes());
                let body = String::from_utf8_lossy(&exchange.body).into_owned();
                (
                    exchange.head.status,
                    body,
                    exchange.cache_status().to_owned(),
                )
            }
            Transport::H1Tls => {
                let tls_port = self.proxy.tls_port.expect("tls listener");
                let exchange = https_request(
                    tls_port,
                    self.tls.clone(),
                    &sni,
                    req.method,
                    &target,
                    &host,
                    &headers,
                )
                .expect("https request");
                let resp = exchange.response;
                (resp.status, resp.text(), resp.cache_status().to_owned())
            }
            Transport::H2c | Transport::H2Tls => {
                let request = [H2Request {
                    method: req.method,
                    path: &target,
                    headers: &headers,
                    body: None,
                }];
                let outcome = if transport == Transport::H2c {
                    http2_client::h2c(self.proxy.port, &host, &request)
                } else {
                    http2_client::h2_tls(
                        self.proxy.tls_port.expect("tls listener"),
                        self.h2_tls(),
                        &sni,
                        &host,
                        &request,
                    )
                }
                .expect("HTTP/2 exchange");
                let resp = &outcome.responses[0];
                (resp.status, resp.text(), resp.cache_status().to_owned())
            }
        }
    }

    fn h2_tls(&self) -> Arc<rustls::ClientConfig> {
        let mut config = (*self.tls).clone();
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }
}

#[test]
fn no_request_is_served_an_answer_the_origin_gives_another() {
    let origin = start_origin();
    let ca = TestCa::new("matrix CA");
    let pairs = pairs();
    let failures = std::thread::scope(|scope| {
        let runs: Vec<_> = MODES
            .iter()
            .map(|mode| {
                let (origin, ca, pairs) = (&origin, &ca, &pairs);
                scope.spawn(move || hunt(mode, origin, ca, pairs))
            })
            .collect();
        runs.into_iter()
            .flat_map(|run| run.join().expect("hunt thread"))
            .collect::<Vec<String>>()
    });
    assert!(
        failures.is_empty(),
        "{} of the matrix's cases failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// Whether B is a hit once A's fill (or B's own) has surely finished: an entry is completed
/// after its last body bytes went out, so on a loaded machine B, sent at once, can come first
/// (three matrices run at once, on two cores: a single look 300 ms later was once too soon).
fn shared_soon(setup: &Setup, pair: &Pair, tenant: &str, run: Transport) -> bool {
    (0..10).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(300));
        setup.send(&pair.b, tenant, run).2.contains("hit")
    })
}

/// Every pair under every plugin and protocol in one forwarding mode: the
/// failures, described.
fn hunt(mode: &str, origin: &Origin, ca: &TestCa, pairs: &[Pair]) -> Vec<String> {
    let setup = Setup::start(mode, origin, ca);
    let mut failures = Vec::new();
    for (tenant, _) in plugins() {
        for run in [Transport::H1, Transport::H2c] {
            for pair in pairs {
                if (pair.h1_only && run.is_h2())
                    || (!pair.modes.is_empty() && !pair.modes.contains(&mode))
                    || (!pair.plugins.is_empty() && !pair.plugins.contains(&tenant))
                {
                    continue;
                }
                setup.purge_all();
                let alone = setup.send(&pair.b, tenant, run);
                setup.purge_all();
                let first = setup.send(&pair.a, tenant, run);
                let after = setup.send(&pair.b, tenant, run);
                let case = format!("[{mode}, {tenant}, {run:?}] {}", pair.name);
                if (after.0, &after.1) != (alone.0, &alone.1) {
                    failures.push(format!(
                        "{case}: B after A differs from B alone\n  A = {:?}\n  B = {:?}\n  \
                         A's answer ({}, {}):\n{}\n  B alone ({}, {}):\n{}\n  B after A ({}, {}):\n{}",
                        pair.a, pair.b, first.0, first.2, first.1, alone.0, alone.2, alone.1,
                        after.0, after.2, after.1
                    ));
                } else if pair.shared
                    && !after.2.contains("hit")
                    && !shared_soon(&setup, pair, tenant, run)
                {
                    failures.push(format!(
                        "{case}: a control pair did not share an entry (B: {} {})",
                        after.0, after.2
                    ));
                }
            }
        }
    }
    failures
}
