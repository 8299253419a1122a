//! The floor under cachet's HTTP/1.1 front (`host/src/front`): a Pingora server whose
//! connection handler reads each request head itself (httparse, as Pingora's parser does)
//! and writes a fixed 1 KiB answer carrying the fields a cachet hit carries, head and body in
//! one write. No Pingora HTTP session, cache, policy, access log or metrics. Next to
//! `pingora_floor` (the same answer from Pingora's `request_filter`) it measures what
//! Pingora's HTTP/1 session costs per request; the front skips that cost for lean hits.
//!
//! With a TLS listener it also answers HTTP/2 (ALPN `h2`) from its own accept loop, as
//! cachet's HTTP/2 front does: each stream inline, or from a task per stream over Pingora's
//! HTTP/2 session when `FLOOR_H2_SPAWN` is set (what Pingora's proxy adds is then the
//! distance to `pingora_floor` over HTTP/2).
//!
//! Run: `cargo run --release -p cachet --example front_floor -- THREADS LISTEN [TLS_LISTEN
//! CERT_PEM KEY_PEM]`, then load it with wrk over keep-alive connections, or with h2load.

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use pingora::apps::ServerApp;
use pingora::http::ResponseHeader;
use pingora::listeners::tls::TlsSettings;
use pingora::protocols::http::v2::server::{handshake, H2Accept, HttpSession};
use pingora::protocols::{Digest, Stream, ALPN};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{Server, ShutdownWatch};
use pingora::services::listening::Service;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The answer's fields but `Date` (written per response, from Pingora's cached clock).
const FIELDS: &str = "HTTP/1.1 200 OK\r\n\
Content-Type: application/octet-stream\r\n\
Content-Length: 1024\r\n\
Last-Modified: Tue, 01 Dec 2026 00:00:00 GMT\r\n\
ETag: \"692c6e00-400\"\r\n\
Cache-Control: public, max-age=3600\r\n\
Age: 12\r\n\
Accept-Ranges: bytes\r\n\
Cache-Status: cachet; hit; ttl=3588\r\n\
Connection: keep-alive\r\n";

struct FrontFloor {
    body: Vec<u8>,
}

impl FrontFloor {
    fn answer(&self) -> BytesMut {
        let mut out = BytesMut::with_capacity(FIELDS.len() + 64 + self.body.len());
        out.put_slice(FIELDS.as_bytes());
        out.put_slice(b"Date: ");
        out.put_slice(pingora::protocols::http::date::get_cached_date().as_bytes());
        out.put_slice(b"\r\n\r\n");
        out.put_slice(&self.body);
        out
    }
}

impl FrontFloor {
    /// HTTP/2: the connection's own accept loop answers each stream, inline
    /// (`FLOOR_H2_SPAWN` unset) or from a task per stream as Pingora does.
    async fn serve_h2(self: &Arc<Self>, stream: Stream) {
        let digest = Arc::new(Digest {
            ssl_digest: stream.get_ssl_digest(),
            timing_digest: stream.get_timing_digest(),
            proxy_digest: stream.get_proxy_digest(),
            socket_digest: stream.get_socket_digest(),
        });
        let Ok(mut conn) = handshake(stream, None).await else {
            return;
        };
        let spawn = std::env::var_os("FLOOR_H2_SPAWN").is_some();
        let body = Bytes::from(self.body.clone());
        while let Ok(Some(accepted)) = HttpSession::from_h2_conn(&mut conn, digest.clone()).await {
            let H2Accept::Session(mut session) = accepted else {
                continue;
            };
            let body = body.clone();
            if spawn {
                tokio::spawn(async move {
                    let _ = answer_h2(&mut session, body).await;
                });
            } else {
                let _ = answer_h2_inline(&mut session, body);
            }
        }
    }
}

fn h2_head() -> Box<ResponseHeader> {
    let mut head = ResponseHeader::build(200, Some(10)).unwrap();
    for (name, value) in [
        ("content-type", "application/octet-stream"),
        ("content-length", "1024"),
        ("last-modified", "Tue, 01 Dec 2026 00:00:00 GMT"),
        ("etag", "\"692c6e00-400\""),
        ("cache-control", "public, max-age=3600"),
        ("age", "12"),
        ("accept-ranges", "bytes"),
        ("cache-status", "cachet; hit; ttl=3588"),
    ] {
        head.insert_header(name, value).unwrap();
    }
    Box::new(head)
}

async fn answer_h2(session: &mut HttpSession, body: Bytes) -> pingora::Result<()> {
    session.write_response_header(h2_head(), false)?;
    session.write_body(body, true).await
}

fn answer_h2_inline(session: &mut HttpSession, body: Bytes) -> pingora::Result<()> {
    session.write_response_header(h2_head(), false)?;
    if let Some(mut writer) = session.take_response_body_writer() {
        let _ = writer.send_data(body, true);
    }
    Ok(())
}

#[async_trait]
impl ServerApp for FrontFloor {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        _shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            self.serve_h2(stream).await;
            return None;
        }
        let mut buf = BytesMut::with_capacity(2048);
        loop {
            let used = loop {
                let mut fields = [httparse::EMPTY_HEADER; 64];
                let mut head = httparse::Request::new(&mut fields);
                match head.parse(&buf) {
                    Ok(httparse::Status::Complete(used)) => break used,
                    Ok(httparse::Status::Partial) => {}
                    Err(_) => return None,
                }
                match stream.read_buf(&mut buf).await {
                    Ok(read) if read > 0 => {}
                    _ => return None,
                }
            };
            let _ = buf.split_to(used);
            let answer = self.answer();
            if stream.write_all(&answer).await.is_err() || stream.flush().await.is_err() {
                return None;
            }
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (threads, listen, tls) = match args.as_slice() {
        [threads, listen] => (threads, listen, None),
        [threads, listen, tls_listen, cert, key] => {
            (threads, listen, Some((tls_listen, cert, key)))
        }
        _ => anyhow::bail!("usage: front_floor THREADS LISTEN [TLS_LISTEN CERT_PEM KEY_PEM]"),
    };
    let run_files = std::env::temp_dir().join(format!("front-floor-{}", std::process::id()));
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
    let floor = FrontFloor {
        body: vec![b'x'; 1024],
    };
    let mut service = Service::new("front floor".into(), floor);
    service.add_tcp(listen);
    if let Some((tls_listen, cert, key)) = tls {
        let mut settings = TlsSettings::intermediate(cert, key)?;
        settings.enable_h2();
        service.add_tls_with_settings(tls_listen, None, settings);
    }
    server.add_service(service);
    server.run_forever()
}
