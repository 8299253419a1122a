//! The floor under any cache built on Pingora: a bare Pingora server that answers every request
//! from `request_filter` with a fixed body and the header fields a cachet hit carries. No
//! cache, no policy, no access log, no metrics. `tests/bench/compare.sh` measures it as the
//! `pingora-floor` row (`BENCH_ONLY=pingora-floor`) over HTTP/1.1, TLS and HTTP/2, so the
//! distance between it and `cachet-builtin` is what cachet adds, and the distance between it
//! and nginx or HAProxy is what Pingora costs before any caching is done.
//!
//! Run: `cargo run --release -p cachet --example pingora_floor -- THREADS LISTEN
//! [TLS_LISTEN CERT_PEM KEY_PEM]`. A path ending in `/64k` gets 64 KiB, any other 1 KiB.

use async_trait::async_trait;
use bytes::Bytes;
use http::header;
use pingora::http::ResponseHeader;
use pingora::listeners::tls::TlsSettings;
use pingora::prelude::HttpPeer;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;

struct Floor {
    small: Bytes,
    large: Bytes,
}

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> pingora::Result<bool> {
        let body = if session.req_header().uri.path().ends_with("/64k") {
            self.large.clone()
        } else {
            self.small.clone()
        };
        // The fields of a cachet hit on the benchmark's nginx origin, Date aside (Pingora's
        // HTTP/1 writer adds it, as it does for cachet).
        let mut head = ResponseHeader::build(200, Some(10))?;
        head.insert_header(header::CONTENT_TYPE, "application/octet-stream")?;
        head.insert_header(header::CONTENT_LENGTH, body.len())?;
        head.insert_header(header::LAST_MODIFIED, "Tue, 01 Dec 2026 00:00:00 GMT")?;
        head.insert_header(header::ETAG, "\"692c6e00-400\"")?;
        head.insert_header(header::CACHE_CONTROL, "public, max-age=3600")?;
        head.insert_header(header::AGE, 12)?;
        head.insert_header(header::ACCEPT_RANGES, "bytes")?;
        head.insert_header("cache-status", "cachet; hit; ttl=3588")?;
        session.write_response_header(Box::new(head), false).await?;
        session.write_response_body(Some(body), true).await?;
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<HttpPeer>> {
        // Every request is answered in `request_filter`.
        Err(pingora::Error::new_str("the floor has no upstream"))
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (threads, listen, tls) = match args.as_slice() {
        [threads, listen] => (threads, listen, None),
        [threads, listen, tls_listen, cert, key] => {
            (threads, listen, Some((tls_listen, cert, key)))
        }
        _ => anyhow::bail!("usage: pingora_floor THREADS LISTEN [TLS_LISTEN CERT_PEM KEY_PEM]"),
    };
    let run_files = std::env::temp_dir().join(format!("pingora-floor-{}", std::process::id()));
    let conf = ServerConf {
        threads: threads.parse()?,
        // A benchmark stops it with SIGTERM: no grace period to wait out.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        pid_file: run_files.with_extension("pid").display().to_string(),
        upgrade_sock: run_files.with_extension("sock").display().to_string(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let floor = Floor {
        small: Bytes::from(vec![b'x'; 1024]),
        large: Bytes::from(vec![b'x'; 64 * 1024]),
    };
    let mut service = pingora::proxy::http_proxy_service(&server.configuration, floor);
    service.add_tcp(listen);
    if let Some((tls_listen, cert, key)) = tls {
        let mut settings = TlsSettings::intermediate(cert, key)?;
        settings.enable_h2();
        service.add_tls_with_settings(tls_listen, None, settings);
    }
    server.add_service(service);
    server.run_forever()
}
