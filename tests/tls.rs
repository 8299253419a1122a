//! TLS termination end to end: the real `cachet` binary with certificates
//! made by the test (a CA and a leaf per tenant), a real rustls client that
//! checks which certificate each SNI got, the SNI/Host agreement (421), and
//! certificate files hot-reloaded or refused.

mod support;

use sha2::Digest;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::client::Resp;
use support::http2_client::{h2_tls, H2Request};
use support::origin::{Origin, Reply};
use support::plugin;
use support::proxy::{run_cachet, Proxy, TenantSpec};
use support::tls::{client_config, https_request, https_request_on, Leaf, TestCa, TlsExchange};

/// Three tenants behind one TLS listener: `alpha` (a.test, own certificate),
/// `beta` (*.b.test, own wildcard certificate), `gamma` (c.test, none: the
/// default certificate, which names default.test and c.test).
struct Sites {
    cas: [TestCa; 3],
    alpha: Leaf,
    beta: Leaf,
    default: Leaf,
    certs: tempfile::TempDir,
    origin: Origin,
    proxy: Proxy,
}

impl Sites {
    fn start() -> Self {
        Self::start_with("")
    }

    /// With `cache` lines (and tables after them, e.g. `[plugins]`).
    fn start_with(cache: &str) -> Self {
        let cas = [
            TestCa::new("alpha CA"),
            TestCa::new("beta CA"),
            TestCa::new("default CA"),
        ];
        let alpha = cas[0].leaf(&["a.test"]);
        let beta = cas[1].leaf(&["*.b.test"]);
        let default = cas[2].leaf(&["default.test", "c.test"]);
        let certs = tempfile::tempdir().unwrap();
        let (a_cert, a_key) = alpha.write(certs.path(), "alpha");
        let (b_cert, b_key) = beta.write(certs.path(), "beta");
        let (d_cert, d_key) = default.write(certs.path(), "default");
        // The origin says which Host reached it, so routing is visible.
        let origin = Origin::start(|seen| {
            let host = seen.header("host").unwrap_or("-").to_owned();
            Reply::ok(format!("{host} {}", seen.url)).header("Cache-Control", "max-age=60")
        });
        let pair = |cert: &Path, key: &Path| format!("tls_cert = {cert:?}\ntls_key = {key:?}");
        let proxy = Proxy::start_with_server(
            &format!(
                "tls_listen = \"127.0.0.1:TLS_PORT\"\n{}",
                pair(&d_cert, &d_key)
            ),
            cache,
            &[
                TenantSpec::new("alpha", origin.addr, &plugin("standard"))
                    .hosts(&["a.test"])
                    .extra(&pair(&a_cert, &a_key)),
                TenantSpec::new("beta", origin.addr, &plugin("standard"))
                    .hosts(&["*.b.test"])
                    .extra(&pair(&b_cert, &b_key)),
                TenantSpec::new("gamma", origin.addr, &plugin("standard")).hosts(&["c.test"]),
            ],
        );
        Self {
            cas,
            alpha,
            beta,
            default,
            certs,
            origin,
            proxy,
        }
    }

    fn tls_port(&self) -> u16 {
        self.proxy.tls_port.expect("TLS listener")
    }

    /// A client trusting the three CAs, speaking HTTP/1.1.
    fn config(&self, send_sni: bool) -> Arc<rustls::ClientConfig> {
        let cas: Vec<&TestCa> = self.cas.iter().collect();
        client_config(&cas, &[b"http/1.1"], send_sni)
    }

    /// GET `path` over TLS: SNI (and the name checked) `sni`, Host `host`.
    fn get(&self, sni: &str, host: &str, path: &str) -> TlsExchange {
        https_request(
            self.tls_port(),
            self.config(true),
            sni,
            "GET",
            path,
            host,
            &[],
        )
        .unwrap_or_else(|e| panic!("{sni}: {e}\n{}", self.proxy.log()))
    }

    /// GET without SNI; the certificate is checked for `name`.
    fn get_without_sni(&self, name: &str, host: &str, path: &str) -> TlsExchange {
        https_request(
            self.tls_port(),
            self.config(false),
            name,
            "GET",
            path,
            host,
            &[],
        )
        .unwrap_or_else(|e| panic!("no SNI: {e}\n{}", self.proxy.log()))
    }

    fn certificate_status(&self, which: &str) -> serde_json::Value {
        let status = self.proxy.status();
        status["tls"]["certificates"]
            .as_array()
            .expect("tls.certificates")
            .iter()
            .find(|c| c["certificate"] == which)
            .cloned()
            .unwrap_or_else(|| panic!("no certificate {which:?} in {status}"))
    }
}

fn assert_ok(resp: &Resp, body: &str) {
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.text(), body);
}

#[test]
fn each_sni_gets_its_tenants_certificate_and_other_names_the_default() {
    let sites = Sites::start();

    let a = sites.get("a.test", "a.test", "/one");
    assert_eq!(&a.served, sites.alpha.der(), "a.test: alpha's certificate");
    assert_ok(&a.response, "a.test /one");
    assert_eq!(a.alpn.as_deref(), Some(&b"http/1.1"[..]));

    let b = sites.get("www.b.test", "www.b.test", "/two");
    assert_eq!(
        &b.served,
        sites.beta.der(),
        "a name under *.b.test: beta's wildcard certificate"
    );
    assert_ok(&b.response, "www.b.test /two");

    let c = sites.get("c.test", "c.test", "/three");
    assert_eq!(
        &c.served,
        sites.default.der(),
        "a tenant without a certificate: the default one"
    );
    assert_ok(&c.response, "c.test /three");

    let none = sites.get_without_sni("default.test", "a.test", "/four");
    assert_eq!(&none.served, sites.default.der(), "no SNI: the default one");
    assert_ok(&none.response, "a.test /four");

    // Each tenant's certificate is in /status with its names.
    let alpha = sites.certificate_status("tenant alpha");
    assert_eq!(alpha["names"], serde_json::json!(["a.test"]));
    assert!(alpha["last_refusal"].is_null());
    let default = sites.certificate_status("default");
    assert_eq!(
        default["names"],
        serde_json::json!(["default.test", "c.test"])
    );
    assert_eq!(
        sites.proxy.status()["tls"]["certificates"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
}

#[test]
fn a_request_whose_sni_and_host_name_different_tenants_gets_421() {
    let sites = Sites::start();
    let hits = sites.origin.hits();

    let crossed = sites.get("a.test", "www.b.test", "/crossed");
    assert_eq!(crossed.response.status, 421, "{}", crossed.response.text());
    // A Host no tenant serves is refused as before.
    let unknown = sites.get("a.test", "nobody.test", "/crossed");
    assert_eq!(unknown.response.status, 421);
    assert_eq!(sites.origin.hits(), hits, "nothing reached the origin");

    // Same tenant: fine, with or without a port in Host (the default port is left out of
    // what the origin is sent, as of the key).
    assert_ok(
        &sites.get("a.test", "a.test:443", "/same").response,
        "a.test /same",
    );
    // Without SNI, Host alone routes.
    let by_host = sites.get_without_sni("default.test", "www.b.test", "/by-host");
    assert_ok(&by_host.response, "www.b.test /by-host");

    // The same check holds for HTTP/2 streams on the connection.
    let cas: Vec<&TestCa> = sites.cas.iter().collect();
    let h2 = client_config(&cas, &[b"h2"], true);
    let outcome = h2_tls(
        sites.tls_port(),
        h2,
        "a.test",
        "x.b.test",
        &[H2Request::get("/h2-crossed")],
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", sites.proxy.log()));
    assert_eq!(outcome.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(outcome.responses[0].status, 421);
    assert_eq!(sites.origin.hits_for("/h2-crossed"), 0);
}

/// Replaces `path` at once (write aside, rename), as deployment tools do.
fn replace(path: &Path, contents: &str) {
    let aside = path.with_extension("new");
    std::fs::write(&aside, contents).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

/// Polls `check` for up to 10 s.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("not within 10 s: {what}");
}

#[test]
fn certificate_files_are_hot_reloaded_and_a_bad_pair_is_refused() {
    let sites = Sites::start();
    let cert = sites.certs.path().join("alpha.crt");
    let key = sites.certs.path().join("alpha.key");

    // A renewed certificate: served from the next handshake on.
    let renewed = sites.cas[0].leaf(&["a.test"]);
    replace(&key, &renewed.key_pem);
    replace(&cert, &renewed.cert_pem);
    eventually("the renewed certificate is served", || {
        sites.get("a.test", "a.test", "/").served == *renewed.der()
    });
    let loaded_at = sites.certificate_status("tenant alpha")["loaded_at"].clone();

    // A broken certificate file: refused with the reason, the renewed one stays.
    replace(
        &cert,
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n",
    );
    eventually("the broken file is refused", || {
        !sites.certificate_status("tenant alpha")["last_refusal"].is_null()
    });
    let status = sites.certificate_status("tenant alpha");
    let reason = status["last_refusal"]["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(reason.contains("alpha.crt"), "{reason}");
    assert_eq!(
        status["loaded_at"], loaded_at,
        "the loaded certificate stays"
    );
    let served = sites.get("a.test", "a.test", "/still");
    assert_eq!(&served.served, renewed.der());
    assert_ok(&served.response, "a.test /still");

    // A chain whose second block is base64 but no certificate (a line lost from an
    // intermediate): rustls would send it as it is and every handshake would fail.
    let garbage_block =
        "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQoLDA0ODw==\n-----END CERTIFICATE-----\n";
    replace(&cert, &format!("{}{garbage_block}", renewed.cert_pem));
    let refused_keeping_the_loaded_pair = |reason: &str| {
        eventually(&format!("refused: {reason}"), || {
            sites.certificate_status("tenant alpha")["last_refusal"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains(reason))
        });
        assert_eq!(&sites.get("a.test", "a.test", "/").served, renewed.der());
    };
    refused_keeping_the_loaded_pair("of the chain does not parse");
    // A later block holding a certificate with bytes after it (two pasted together, the
    // lines between them lost): clients fail on the length (probe AK).
    let padded = [renewed.der().as_ref(), b"\x30\x03\x02\x01\x00"].concat();
    let pasted = format!("{}{}", renewed.cert_pem, support::tls::pem_block(&padded));
    replace(&cert, &pasted);
    refused_keeping_the_loaded_pair("bytes follow the certificate");

    // A certificate with another pair's key: refused as a mismatch.
    let other = sites.cas[0].leaf(&["a.test"]);
    replace(&cert, &other.cert_pem);
    eventually("the mismatched pair is refused", || {
        sites.certificate_status("tenant alpha")["last_refusal"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("does not go with"))
    });
    assert_eq!(&sites.get("a.test", "a.test", "/").served, renewed.der());
    sites.proxy.assert_logged(&["certificate refused"]);
    // `cachet status` shows each certificate and its refused reload.
    let config = sites.proxy.dir.path().join("cachet.toml");
    let (ok, out) = run_cachet(&["status", "--config", config.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(out.contains("certificate tenant alpha: a.test"), "{out}");
    assert!(out.contains("does not go with"), "{out}");

    // Failures are counted for alerting.
    let metrics = metrics_text(&sites.proxy);
    let refused = metrics
        .lines()
        .find(|l| {
            l.starts_with("cachet_tls_certificate_reloads_total")
                && l.contains("tenant alpha")
                && l.contains("refused")
        })
        .unwrap_or_else(|| panic!("no refusal counter in\n{metrics}"));
    let count: f64 = refused.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 2.0, "{refused}");

    // An expired certificate does not replace one that is valid: every handshake would fail.
    let expired = sites.cas[0].expired_leaf(&["a.test"]);
    replace(&key, &expired.key_pem);
    replace(&cert, &expired.cert_pem);
    eventually("the expired pair is refused", || {
        sites.certificate_status("tenant alpha")["last_refusal"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("expired"))
    });
    assert_eq!(&sites.get("a.test", "a.test", "/").served, renewed.der());

    // Nor does one that is not valid yet.
    let future = sites.cas[0].future_leaf(&["a.test"]);
    replace(&key, &future.key_pem);
    replace(&cert, &future.cert_pem);
    eventually("the pair not valid yet is refused", || {
        sites.certificate_status("tenant alpha")["last_refusal"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("not valid yet"))
    });
    assert_eq!(&sites.get("a.test", "a.test", "/").served, renewed.der());

    // The key put right: the pair loads again, and the refusal it answers is gone.
    replace(&cert, &other.cert_pem);
    replace(&key, &other.key_pem);
    eventually("the corrected pair is served", || {
        sites.get("a.test", "a.test", "/").served == *other.der()
    });
    let status = sites.certificate_status("tenant alpha");
    assert!(status["last_refusal"].is_null(), "{status}");

    // One valid from a minute ahead is served: clocks a minute apart are common, and a pair
    // refused for it was never tried again once valid (the renewal sat unused until the
    // serving certificate expired).
    let early = sites.cas[0].leaf_valid_in(&["a.test"], 60);
    replace(&key, &early.key_pem);
    replace(&cert, &early.cert_pem);
    // (Read from /status: a client whose clock agrees refuses it for that minute.)
    let early_sha256 = hex::encode(sha2::Sha256::digest(early.der().as_ref()));
    eventually("the pair valid in a minute is served", || {
        sites.certificate_status("tenant alpha")["sha256"] == early_sha256.as_str()
    });
}

#[test]
fn the_cache_serves_hits_over_the_tls_listener() {
    let sites = Sites::start();
    let first = sites.get("a.test", "a.test", "/cached");
    assert_ok(&first.response, "a.test /cached");
    let second = sites.get("a.test", "a.test", "/cached");
    assert_ok(&second.response, "a.test /cached");
    let status = second.response.header("cache-status").unwrap_or("");
    assert!(status.contains("hit"), "{status}");
    assert_eq!(sites.origin.hits_for("/cached"), 1);
}

/// A config whose `[server]` lines are `server` and whose one tenant has `tenant` lines.
fn write_config(dir: &Path, server: &str, tenant: &str) -> std::path::PathBuf {
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:1\"\n{server}\n\n[[tenant]]\nname = \"site\"\nhosts = [\"*\"]\nupstream = \"127.0.0.1:9\"\nplugin = \"builtin:standard\"\n{tenant}\n"
    );
    let path = dir.join("cachet.toml");
    std::fs::write(&path, config).unwrap();
    path
}

#[test]
fn bad_tls_settings_are_refused_before_serving_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("validate CA");
    let (cert, key) = ca.leaf(&["site.test"]).write(dir.path(), "site");
    let (_, other_key) = ca.leaf(&["site.test"]).write(dir.path(), "other");
    let validate = |server: &str, tenant: &str| {
        let path = write_config(dir.path(), server, tenant);
        run_cachet(&["validate", "--config", path.to_str().unwrap()])
    };
    let listen = "tls_listen = \"127.0.0.1:2\"";

    let (ok, out) = validate(&format!("{listen}\ntls_cert = {cert:?}"), "");
    assert!(!ok);
    assert!(
        out.contains("server.tls_cert") && out.contains("needs server.tls_key"),
        "{out}"
    );
    assert!(out.contains("cachet.toml:4"), "names the line: {out}");

    let (ok, out) = validate(listen, "");
    assert!(!ok);
    assert!(out.contains("server.tls_listen"), "{out}");
    assert!(
        out.contains("cachet.toml:3: key `server.tls_listen`"),
        "names the line: {out}"
    );

    // A port the kernel picks could not be told from the plain listener's: refused.
    let (ok, out) = validate(
        &format!("tls_listen = \"127.0.0.1:0\"\ntls_cert = {cert:?}\ntls_key = {key:?}"),
        "",
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("cachet.toml:3: key `server.tls_listen`") && out.contains("port 0"),
        "{out}"
    );

    let (ok, out) = validate("", &format!("tls_cert = {cert:?}\ntls_key = {key:?}"));
    assert!(!ok);
    assert!(out.contains("server.tls_listen is not set"), "{out}");
    assert!(
        out.contains(": key `tenant.tls_cert`") && !out.contains("cachet.toml: key"),
        "names the line: {out}"
    );

    let (ok, out) = validate(
        listen,
        "tls_cert = \"missing.crt\"\ntls_key = \"missing.key\"",
    );
    assert!(!ok);
    assert!(
        out.contains("tenant.tls_cert") && out.contains("no file"),
        "{out}"
    );

    let (ok, out) = validate(
        listen,
        &format!("tls_cert = {cert:?}\ntls_key = {other_key:?}"),
    );
    assert!(!ok);
    assert!(out.contains("does not go with"), "{out}");
    // At the line of the file at fault, found only when the pair is loaded.
    assert!(
        out.contains("cachet.toml:11: key `tenant.tls_key`"),
        "{out}"
    );
    // The refusal names the keys and the files.
    assert!(
        out.contains("tenant.tls_key") && out.contains(&other_key.display().to_string()),
        "{out}"
    );

    // A key written on one line (`echo $KEY > key.pem`) is refused without its bytes: the
    // PEM parser's error carried the whole key, into the log and `/status`.
    let pem = std::fs::read_to_string(&key).unwrap();
    let one_line = dir.path().join("one-line.key");
    std::fs::write(&one_line, pem.replace('\n', " ")).unwrap();
    let (ok, out) = validate(
        listen,
        &format!("tls_cert = {cert:?}\ntls_key = {one_line:?}"),
    );
    assert!(!ok);
    assert!(out.contains("no PEM private key"), "{out}");
    let body = pem.lines().find(|l| !l.starts_with("-----")).unwrap();
    let body_bytes = format!("{:?}", &body.as_bytes()[..8]);
    assert!(
        !out.contains(&body[..16]) && !out.contains(&body_bytes[1..body_bytes.len() - 1]),
        "the key's bytes are in the refusal: {out}"
    );

    let (ok, out) = validate("h2_max_concurrent_streams = 0", "");
    assert!(!ok);
    assert!(
        out.contains("server.h2_max_concurrent_streams") && out.contains("between 1 and"),
        "{out}"
    );
    let (ok, out) = validate("h2_max_header_list = \"2MiB\"", "");
    assert!(!ok);
    assert!(out.contains("server.h2_max_header_list"), "{out}");

    let (ok, out) = validate(listen, &format!("tls_cert = {cert:?}\ntls_key = {key:?}"));
    assert!(ok, "{out}");
}

#[test]
fn validate_warns_about_tenant_hosts_the_certificate_does_not_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("coverage CA");
    let (cert, key) = ca
        .leaf(&["site.test", "*.cdn.test"])
        .write(dir.path(), "site");
    let validate = |hosts: &str| {
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:1\"\ntls_listen = \"127.0.0.1:2\"\n\n[[tenant]]\nname = \"site\"\nhosts = [{hosts}]\nupstream = \"127.0.0.1:9\"\nplugin = \"builtin:standard\"\ntls_cert = {cert:?}\ntls_key = {key:?}\n"
        );
        let path = dir.path().join("cachet.toml");
        std::fs::write(&path, config).unwrap();
        run_cachet(&["validate", "--config", path.to_str().unwrap()])
    };

    let (ok, out) = validate(r#""site.test", "img.cdn.test", "other.test", "a.b.cdn.test""#);
    assert!(ok, "a warning, not a refusal: {out}");
    assert!(
        out.contains("warning: tenant \"site\"")
            && out.contains(
                "does not name other.test, a.b.cdn.test (it names site.test, *.cdn.test)"
            ),
        "{out}"
    );

    let (ok, out) = validate(r#""site.test", "img.cdn.test", "*""#);
    assert!(ok, "{out}");
    assert!(!out.contains("warning"), "every host is named: {out}");

    // An address gets the default certificate, never the tenant's own: clients send no
    // server name for it. Without a default one, its handshakes fail, named though it is.
    // (The same files, rewritten: `validate` reads them at each call.)
    ca.leaf(&["site.test", "127.0.0.1"])
        .write(dir.path(), "site");
    let (ok, out) = validate(r#""site.test", "127.0.0.1""#);
    assert!(ok, "{out}");
    assert!(
        out.contains("warning: tenant \"site\": no certificate is served for 127.0.0.1"),
        "{out}"
    );
}

fn rss_kib(pid: u32) -> u64 {
    support::proc_status_kib(pid, "VmRSS:")
}

#[test]
fn tls_and_http2_connections_hold_memory_bounded_by_configuration() {
    const CONNECTIONS: usize = 200;
    let ca = TestCa::new("memory CA");
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = ca.leaf(&["site.test"]).write(certs.path(), "site");
    let origin = Origin::start(|_| Reply::ok("x").header("Cache-Control", "max-age=60"));
    let proxy = Proxy::start_with_server(
        &format!(
            "tls_listen = \"127.0.0.1:TLS_PORT\"\ntls_cert = {cert:?}\ntls_key = {key:?}\nh2c = true\nmax_request_head = \"16KiB\"\nmax_connections = {}",
            2 * CONNECTIONS + 10
        ),
        "",
        &[TenantSpec::new("site", origin.addr, &plugin("standard")).hosts(&["site.test"])],
    );
    let tls_port = proxy.tls_port.unwrap();
    let config = client_config(&[&ca], &[b"http/1.1"], true);
    https_request(
        tls_port,
        config.clone(),
        "site.test",
        "GET",
        "/warm",
        "site.test",
        &[],
    )
    .unwrap();
    let before = rss_kib(proxy.pid());

    // TLS connections, each holding a head just under the limit.
    let pad = "p".repeat(15 << 10);
    let held: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let name = rustls::pki_types::ServerName::try_from("site.test").unwrap();
            let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
            let tcp = std::net::TcpStream::connect(("127.0.0.1", tls_port)).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let head = format!("GET / HTTP/1.1\r\nHost: site.test\r\nX-Pad: {pad}");
            std::io::Write::write_all(&mut tls, head.as_bytes()).unwrap();
            tls
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let tls_held = rss_kib(proxy.pid());
    let per_tls = tls_held.saturating_sub(before) / CONNECTIONS as u64;
    eprintln!("RSS {before} KiB -> {tls_held} KiB with {CONNECTIONS} TLS connections holding 15 KiB heads: {per_tls} KiB each");
    // Head buffers (at most twice the limit) plus per-connection state with
    // rustls' buffers (77-79 KiB measured in all with these heads).
    assert!(per_tls <= 2 * 16 + 64, "{per_tls} KiB per TLS connection");
    drop(held);
    // Gone before the next base is measured, however long a busy machine takes; then a
    // moment for the allocator to settle, as before.
    eventually("the TLS connections close", || {
        proxy.connections_open() == 0
    });
    std::thread::sleep(Duration::from_millis(500));

    // Idle HTTP/2 connections (one request answered on each, then nothing).
    let base = rss_kib(proxy.pid());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let h2_held = runtime.block_on(async {
        let mut held = Vec::new();
        for _ in 0..CONNECTIONS {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port))
                .await
                .unwrap();
            let (client, connection) = h2::client::handshake(tcp).await.unwrap();
            let driver = tokio::spawn(async move {
                let _ = connection.await;
            });
            let request = http::Request::get("http://site.test/warm")
                .body(())
                .unwrap();
            let mut client = client.ready().await.unwrap();
            let (response, _) = client.send_request(request, true).unwrap();
            let mut body = response.await.unwrap().into_body();
            while body.data().await.is_some() {}
            held.push((client, driver));
        }
        held
    });
    std::thread::sleep(Duration::from_millis(500));
    let h2_idle = rss_kib(proxy.pid());
    let per_h2 = h2_idle.saturating_sub(base) / CONNECTIONS as u64;
    eprintln!("RSS {base} KiB -> {h2_idle} KiB with {CONNECTIONS} idle h2c connections: {per_h2} KiB each");
    // 37-39 KiB measured.
    assert!(per_h2 <= 64, "{per_h2} KiB per idle HTTP/2 connection");
    drop(h2_held);
    drop(runtime);
    assert_eq!(
        origin.hits(),
        2,
        "one miss per scheme (over TLS, then h2c), then hits"
    );
}

#[test]
fn a_config_reload_adds_a_tenant_certificate_and_refuses_one_that_does_not_load() {
    let sites = Sites::start();
    assert_eq!(
        &sites.get("c.test", "c.test", "/").served,
        sites.default.der()
    );
    let config_path = sites.proxy.dir.path().join("cachet.toml");
    let original = std::fs::read_to_string(&config_path).unwrap();
    let with_cert = |cert: &Path, key: &Path| {
        original.replace(
            "name = \"gamma\"\n",
            &format!("name = \"gamma\"\ntls_cert = {cert:?}\ntls_key = {key:?}\n"),
        )
    };

    // gamma gets its own certificate by a config edit.
    let gamma = sites.cas[2].leaf(&["c.test"]);
    let (cert, key) = gamma.write(sites.certs.path(), "gamma");
    replace(&config_path, &with_cert(&cert, &key));
    eventually("gamma's certificate is served", || {
        sites.get("c.test", "c.test", "/").served == *gamma.der()
    });
    assert_eq!(
        sites.certificate_status("tenant gamma")["names"],
        serde_json::json!(["c.test"])
    );

    // A config naming a pair that does not load is refused whole: gamma keeps its certificate.
    let broken = sites.certs.path().join("broken.crt");
    std::fs::write(&broken, "not a certificate").unwrap();
    replace(&config_path, &with_cert(&broken, &key));
    eventually("the config is refused", || {
        !sites.proxy.status()["config"]["last_refusal"].is_null()
    });
    let reason = sites.proxy.status()["config"]["last_refusal"]["reason"].to_string();
    assert!(
        reason.contains("tenant gamma certificate refused") && reason.contains("broken.crt"),
        "{reason}"
    );
    assert_eq!(&sites.get("c.test", "c.test", "/").served, gamma.der());

    // A config without TLS at all is refused: the listener stays open until a restart, and
    // without certificates it would refuse every handshake.
    let without_tls: String = original
        .lines()
        .filter(|line| !line.starts_with("tls_"))
        .map(|line| format!("{line}\n"))
        .collect();
    replace(&config_path, &without_tls);
    eventually("the config without TLS is refused", || {
        let reason = sites.proxy.status()["config"]["last_refusal"]["reason"].to_string();
        reason.contains("server.tls_listen") && reason.contains("until a restart")
    });
    assert_eq!(&sites.get("c.test", "c.test", "/").served, gamma.der());
}

/// The expiry gauge follows the certificates that serve: a pair named by a config that is
/// refused is never reported, and the series of a certificate no longer configured goes.
#[test]
fn the_expiry_gauge_reports_only_certificates_that_serve() {
    let sites = Sites::start();
    let config_path = sites.proxy.dir.path().join("cachet.toml");
    let original = std::fs::read_to_string(&config_path).unwrap();
    let gauge = |certificate: &str| {
        let metrics = metrics_text(&sites.proxy);
        let series =
            format!("cachet_tls_certificate_not_after_seconds{{certificate=\"{certificate}\"}} ");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(series.as_str()))
            .map(|value| value.trim().parse::<i64>().unwrap())
    };
    let serving = gauge("tenant alpha").expect("alpha's certificate is reported");

    // alpha's pair is renewed (to one that ends in 2090) in a config that also names a
    // broken pair for gamma: the config is refused, alpha's old certificate keeps serving,
    // and the gauge keeps saying when that one ends.
    let renewed = sites.cas[0].leaf_until(&["a.test"], 2090);
    let (cert, key) = renewed.write(sites.certs.path(), "alpha-renewed");
    let broken = sites.certs.path().join("broken.crt");
    std::fs::write(&broken, "not a certificate").unwrap();
    let alpha_cert = sites.certs.path().join("alpha.crt");
    let alpha_key = sites.certs.path().join("alpha.key");
    assert!(original.contains(&format!("{alpha_cert:?}")), "{original}");
    let refused = original
        .replace(&format!("{alpha_cert:?}"), &format!("{cert:?}"))
        .replace(&format!("{alpha_key:?}"), &format!("{key:?}"))
        .replace(
            "name = \"gamma\"\n",
            &format!("name = \"gamma\"\ntls_cert = {broken:?}\ntls_key = {key:?}\n"),
        );
    replace(&config_path, &refused);
    eventually("the config is refused", || {
        !sites.proxy.status()["config"]["last_refusal"].is_null()
    });
    assert_eq!(
        &sites.get("a.test", "a.test", "/").served,
        sites.alpha.der()
    );
    assert_eq!(
        gauge("tenant alpha"),
        Some(serving),
        "a refused pair was reported"
    );

    // beta's own pair is dropped from the config: its series goes.
    assert!(gauge("tenant beta").is_some());
    let without_beta_pair: String = original
        .lines()
        .filter(|line| !line.contains("beta."))
        .map(|line| format!("{line}\n"))
        .collect();
    replace(&config_path, &without_beta_pair);
    eventually("beta's certificate is no longer reported", || {
        gauge("tenant beta").is_none()
    });
    assert_eq!(gauge("tenant alpha"), Some(serving));
    assert!(gauge("default").is_some());
}

#[test]
fn a_request_head_over_the_limit_is_refused_over_tls_as_over_plain_http() {
    let sites = Sites::start();
    let pad = "p".repeat(70 << 10);
    let big = https_request(
        sites.tls_port(),
        sites.config(true),
        "a.test",
        "GET",
        "/big-head",
        "a.test",
        &[("x-pad", &pad)],
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", sites.proxy.log()));
    assert_eq!(big.response.status, 431, "{}", big.response.text());
    assert_eq!(sites.origin.hits_for("/big-head"), 0);
}

#[test]
fn without_file_watching_a_reload_request_picks_up_renewed_certificates() {
    let sites = Sites::start_with("\n[plugins]\nwatch = false");
    let renewed = sites.cas[1].leaf(&["*.b.test"]);
    renewed.write(sites.certs.path(), "beta");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        &sites.get("x.b.test", "x.b.test", "/").served,
        sites.beta.der(),
        "not watched: the loaded certificate until asked"
    );
    let text = ureq::post(&sites.proxy.admin_url("/reload"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let status: serde_json::Value = serde_json::from_str(&text).unwrap();
    let beta = status["tls"]["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["certificate"] == "tenant beta")
        .cloned()
        .unwrap();
    assert!(beta["last_refusal"].is_null(), "{beta}");
    assert_eq!(
        &sites.get("x.b.test", "x.b.test", "/").served,
        renewed.der()
    );
}

/// Gives tenant gamma a certificate pair not written yet; waits for the config's refusal.
/// Returns the pair's paths (certificate, key).
fn name_a_pair_not_written_yet(sites: &Sites) -> (PathBuf, PathBuf) {
    let config_path = sites.proxy.dir.path().join("cachet.toml");
    let original = std::fs::read_to_string(&config_path).unwrap();
    let cert = sites.certs.path().join("gamma.crt");
    let key = sites.certs.path().join("gamma.key");
    replace(
        &config_path,
        &original.replace(
            "name = \"gamma\"\n",
            &format!("name = \"gamma\"\ntls_cert = {cert:?}\ntls_key = {key:?}\n"),
        ),
    );
    eventually("the config naming a missing pair is refused", || {
        !sites.proxy.status()["config"]["last_refusal"].is_null()
    });
    (cert, key)
}

/// A tenant whose certificate was missing when its config was first written (refused), then
/// applied by a reload request once the pair is in place: its files are watched from then
/// on, so a renewal in place is served. They were watched only after file events the watcher
/// handled itself, and the renewal went unseen until the certificate expired (probe AI).
#[test]
fn a_certificate_brought_in_by_a_reload_request_is_watched_for_renewals() {
    let sites = Sites::start();
    let (cert, key) = name_a_pair_not_written_yet(&sites);
    let first = sites.cas[2].leaf(&["c.test"]);
    first.write(sites.certs.path(), "gamma");
    let status: serde_json::Value = serde_json::from_str(
        &ureq::post(&sites.proxy.admin_url("/reload"))
            .call()
            .unwrap()
            .into_string()
            .unwrap(),
    )
    .unwrap();
    assert!(status["config"]["last_refusal"].is_null(), "{status}");
    assert_eq!(&sites.get("c.test", "c.test", "/").served, first.der());

    let renewed = sites.cas[2].leaf(&["c.test"]);
    replace(&key, &renewed.key_pem);
    replace(&cert, &renewed.cert_pem);
    eventually("the renewal in place is served", || {
        sites.get("c.test", "c.test", "/").served == *renewed.der()
    });
}

/// A config naming a pair not written yet is refused, and applied once the pair is written
/// (cert-manager writes it seconds after the config): no reload request is needed. The pair
/// was not watched, and the config stayed refused until something touched it.
#[test]
fn a_config_naming_a_certificate_not_written_yet_is_applied_once_it_is() {
    let sites = Sites::start();
    name_a_pair_not_written_yet(&sites);
    let leaf = sites.cas[2].leaf(&["c.test"]);
    leaf.write(sites.certs.path(), "gamma");
    eventually("the config is applied once the pair is written", || {
        sites.proxy.status()["config"]["last_refusal"].is_null()
    });
    assert_eq!(&sites.get("c.test", "c.test", "/").served, leaf.der());
}

/// Kubernetes mounts a Secret as `tls.crt -> ..data/tls.crt` with `..data -> ..<version>`,
/// and updates it by writing a new version folder, renaming a new `..data` link over the old
/// one and deleting the old folder. certbot renames a new link over `live/<name>/cert.pem`
/// (then `privkey.pem`). Both renewals are served without a reload request.
#[test]
fn certificates_renewed_by_swapping_symlinks_are_served() {
    use std::os::unix::fs::symlink;
    let ca = TestCa::new("swap CA");
    let files = tempfile::tempdir().unwrap();

    // Kubernetes layout, for a.test (the listener's default pair).
    let secret = files.path().join("secret");
    std::fs::create_dir(&secret).unwrap();
    let version = |name: &str, leaf: &Leaf| {
        let folder = secret.join(name);
        std::fs::create_dir(&folder).unwrap();
        leaf.write(&folder, "tls");
    };
    let k8s_first = ca.leaf(&["a.test"]);
    version("..v1", &k8s_first);
    symlink("..v1", secret.join("..data")).unwrap();
    symlink("..data/tls.crt", secret.join("tls.crt")).unwrap();
    symlink("..data/tls.key", secret.join("tls.key")).unwrap();

    // certbot layout, for b.test.
    let archive = files.path().join("archive");
    let live = files.path().join("live");
    std::fs::create_dir(&archive).unwrap();
    std::fs::create_dir(&live).unwrap();
    let certbot_first = ca.leaf(&["b.test"]);
    certbot_first.write(&archive, "1");
    symlink(archive.join("1.crt"), live.join("cert.pem")).unwrap();
    symlink(archive.join("1.key"), live.join("privkey.pem")).unwrap();

    let origin = Origin::start(|_| Reply::ok("ok"));
    let pair = |dir: &Path, cert: &str, key: &str| {
        format!(
            "tls_cert = {:?}\ntls_key = {:?}",
            dir.join(cert),
            dir.join(key)
        )
    };
    let proxy = Proxy::start_with_server(
        &format!(
            "tls_listen = \"127.0.0.1:TLS_PORT\"\n{}",
            pair(&secret, "tls.crt", "tls.key")
        ),
        "",
        &[
            TenantSpec::new("alpha", origin.addr, &plugin("standard")).hosts(&["a.test"]),
            TenantSpec::new("beta", origin.addr, &plugin("standard"))
                .hosts(&["b.test"])
                .extra(&pair(&live, "cert.pem", "privkey.pem")),
        ],
    );
    // The certificate `name` is served (a handshake that fails is an error).
    let handshake = |name: &str| {
        https_request(
            proxy.tls_port.expect("TLS listener"),
            client_config(&[&ca], &[b"http/1.1"], true),
            name,
            "GET",
            "/",
            name,
            &[],
        )
        .map(|r| r.served)
    };
    let served =
        |name: &str| handshake(name).unwrap_or_else(|e| panic!("{name}: {e}\n{}", proxy.log()));
    assert_eq!(&served("a.test"), k8s_first.der());
    assert_eq!(&served("b.test"), certbot_first.der());

    let k8s_second = ca.leaf(&["a.test"]);
    version("..v2", &k8s_second);
    symlink("..v2", secret.join("..data_tmp")).unwrap();
    std::fs::rename(secret.join("..data_tmp"), secret.join("..data")).unwrap();
    std::fs::remove_dir_all(secret.join("..v1")).unwrap();
    eventually("the Secret's new version is served", || {
        served("a.test") == *k8s_second.der()
    });

    let certbot_second = ca.leaf(&["b.test"]);
    certbot_second.write(&archive, "2");
    for (link, target) in [("privkey.pem", "2.key"), ("cert.pem", "2.crt")] {
        let aside = live.join(format!("{link}.new"));
        symlink(archive.join(target), &aside).unwrap();
        std::fs::rename(&aside, live.join(link)).unwrap();
    }
    eventually("certbot's renewal is served", || {
        served("b.test") == *certbot_second.der()
    });

    // A symlinked folder named in the config (`current -> v1`), swapped to `v2` with the
    // old version kept: nothing changes in `v1`, so only the link's own folder shows it.
    let releases = files.path().join("releases");
    std::fs::create_dir(&releases).unwrap();
    let release = |name: &str, leaf: &Leaf| {
        let folder = releases.join(name);
        std::fs::create_dir(&folder).unwrap();
        leaf.write(&folder, "c");
    };
    let current = releases.join("current");
    let first = ca.leaf(&["c.test"]);
    release("v1", &first);
    symlink("v1", &current).unwrap();
    let config = proxy.dir.path().join("cachet.toml");
    let with_gamma = format!(
        "{}\n[[tenant]]\nname = \"gamma\"\nhosts = [\"c.test\"]\nupstream = \"{}\"\nplugin = {:?}\n{}\n",
        std::fs::read_to_string(&config).unwrap(),
        origin.addr,
        plugin("standard").display().to_string(),
        pair(&current, "c.crt", "c.key")
    );
    std::fs::write(&config, with_gamma).unwrap();
    // Until the config is applied, c.test gets the default certificate: a failed handshake.
    eventually("the new tenant's certificate is served", || {
        handshake("c.test").ok().as_ref() == Some(first.der())
    });
    let second = ca.leaf(&["c.test"]);
    release("v2", &second);
    symlink("v2", releases.join("current.new")).unwrap();
    std::fs::rename(releases.join("current.new"), &current).unwrap();
    eventually("the swapped folder's certificate is served", || {
        served("c.test") == *second.der()
    });
}

/// The origin is told the scheme (`X-Forwarded-Proto`) and answers a plain request with a
/// redirect to HTTPS, as sites that force TLS do. Stored under a key without the scheme, that
/// redirect was served to HTTPS clients: a loop for everyone, set off by one plain request.
#[test]
fn http_and_https_requests_never_share_an_entry_and_a_purge_removes_both() {
    let ca = TestCa::new("scheme CA");
    let leaf = ca.leaf(&["a.test"]);
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = leaf.write(certs.path(), "a");
    let origin = Origin::start(|seen| {
        let reply = match seen.header("x-forwarded-proto") {
            Some("https") => Reply::ok(format!("page {}", seen.url)),
            _ => Reply::ok("moved")
                .status(301)
                .header("Location", &format!("https://a.test{}", seen.url)),
        };
        reply.header("Cache-Control", "max-age=300")
    });
    let proxy = Proxy::start_with_server(
        &format!(
            "tls_listen = \"127.0.0.1:TLS_PORT\"\ntls_cert = {cert:?}\ntls_key = {key:?}\nadmin_token = \"scheme-token\""
        ),
        "",
        &[TenantSpec::new("site", origin.addr, &plugin("standard")).hosts(&["a.test"])],
    );
    let plain = || support::client::send("GET", &proxy.url("/page"), &[("Host", "a.test")]);
    let https = || {
        let config = client_config(&[&ca], &[b"http/1.1"], true);
        let tls_port = proxy.tls_port.expect("TLS listener");
        https_request(tls_port, config, "a.test", "GET", "/page", "a.test", &[])
            .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log()))
            .response
    };

    assert_eq!(plain().status, 301);
    let secure = https();
    assert_ok(&secure, "page /page");
    assert_eq!(origin.hits_for("/page"), 2, "the HTTPS request was a miss");
    let again = https();
    assert_ok(&again, "page /page");
    assert!(again.header("cache-status").unwrap_or("").contains("hit"));
    assert_eq!(plain().status, 301);
    assert_eq!(origin.hits_for("/page"), 2, "each scheme has its entry");

    // One PURGE of the URL, over plain HTTP, removes both.
    let purged = support::client::send(
        "PURGE",
        &proxy.url("/page"),
        &[("Host", "a.test"), ("Authorization", "Bearer scheme-token")],
    );
    assert_eq!(purged.status, 200, "{}", purged.text());
    assert_ok(&https(), "page /page");
    assert_eq!(plain().status, 301);
    assert_eq!(origin.hits_for("/page"), 4, "both entries were purged");
}

/// A TLS connection holds its connection slot from the accept, through its handshake: clients
/// that connect and never finish a handshake count against `max_connections` (they were not
/// counted before the handshake was done, and Pingora waited 60 s for each), and each is let
/// go after `request_head_timeout`.
#[test]
fn connections_that_never_finish_a_tls_handshake_count_and_are_let_go() {
    let ca = TestCa::new("handshake CA");
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = ca.leaf(&["site.test"]).write(certs.path(), "site");
    let origin = Origin::start(|_| Reply::ok("x").header("Cache-Control", "max-age=60"));
    let proxy = Proxy::start_with_server(
        &format!(
            "tls_listen = \"127.0.0.1:TLS_PORT\"\ntls_cert = {cert:?}\ntls_key = {key:?}\nmax_connections = 3\nrequest_head_timeout = \"2s\""
        ),
        "",
        &[TenantSpec::new("site", origin.addr, &plugin("standard")).hosts(&["site.test"])],
    );
    let tls_port = proxy.tls_port.unwrap();
    let config = client_config(&[&ca], &[b"http/1.1"], true);
    let tls_get = |path: &str| {
        https_request(
            tls_port,
            config.clone(),
            "site.test",
            "GET",
            path,
            "site.test",
            &[],
        )
    };
    assert_eq!(tls_get("/before").unwrap().response.status, 200);
    // That client has closed its connection, so none holds a slot.
    eventually("the first connection is let go", || {
        proxy.connections_open() == 0
    });

    // Three clients connect to the TLS port and send nothing: once the proxy has taken them
    // in (a loaded machine may take a while), every slot is taken.
    let began = Instant::now();
    let mut stalled: Vec<std::net::TcpStream> = (0..3)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", tls_port)).unwrap())
        .collect();
    eventually("the three handshakes hold their slots", || {
        proxy.connections_open() == 3
    });
    let plain = support::client::send("GET", &proxy.url("/plain"), &[]);
    assert_eq!(
        plain.status,
        503,
        "no slot left for a plain request: {}",
        plain.text()
    );
    assert!(tls_get("/during").is_err(), "nor for a TLS one");

    // Each is closed once request_head_timeout passes without a finished handshake.
    for conn in &mut stalled {
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut rest = Vec::new();
        let closed = std::io::Read::read_to_end(conn, &mut rest);
        assert!(matches!(closed, Ok(0)), "{closed:?}");
    }
    let waited = began.elapsed();
    assert!(
        waited >= Duration::from_millis(1800) && waited < Duration::from_secs(6),
        "closed after {waited:?}"
    );
    assert_eq!(tls_get("/after").unwrap().response.status, 200);
    let metrics = metrics_text(&proxy);
    assert!(
        metrics.contains("cachet_connections_refused_total{reason=\"tls_handshake_timeout\"} 3"),
        "{metrics}"
    );
}

/// A TLS connection accepted just before a SIGTERM, whose client finishes its handshake and
/// sends its request after the stop, is answered (with `Connection: close`) before the process
/// exits. The handshake was not counted as in flight, so the process exited in the middle of
/// it and the client saw its connection reset.
#[test]
fn a_tls_handshake_under_way_at_the_stop_is_finished_and_its_request_answered() {
    let ca = TestCa::new("stop CA");
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = ca.leaf(&["site.test"]).write(certs.path(), "site");
    let origin = Origin::start(|_| Reply::ok("answered").header("Cache-Control", "max-age=60"));
    let mut proxy = Proxy::start_with_server(
        &format!(
            "tls_listen = \"127.0.0.1:TLS_PORT\"\ntls_cert = {cert:?}\ntls_key = {key:?}\nshutdown_grace = \"30s\""
        ),
        "",
        &[TenantSpec::new("site", origin.addr, &plugin("standard")).hosts(&["site.test"])],
    );
    // Only this client's connection is counted below, not the readiness probe's.
    eventually("the probe's connections close", || {
        proxy.connections_open() == 0
    });
    let tcp = std::net::TcpStream::connect(("127.0.0.1", proxy.tls_port.unwrap())).unwrap();
    // Accepted, its handshake waiting for the client's first message.
    eventually("the connection is accepted", || {
        proxy.connections_open() == 1
    });
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &proxy.pid().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    // The stop has begun before the handshake goes on.
    proxy.assert_logged(&["shutting down: draining requests in flight"]);

    let config = client_config(&[&ca], &[b"http/1.1"], true);
    let exchange = https_request_on(tcp, config, "site.test", "GET", "/late", "site.test", &[])
        .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log()));
    assert_ok(&exchange.response, "answered");
    assert_eq!(exchange.response.header("connection"), Some("close"));
    assert!(
        proxy.wait_exit(Duration::from_secs(3)).is_some(),
        "the process exits once the request is answered:\n{}",
        proxy.log()
    );
}

/// What the proxy's `/metrics` says now.
fn metrics_text(proxy: &Proxy) -> String {
    support::client::send("GET", &proxy.admin_url("/metrics"), &[]).text()
}
