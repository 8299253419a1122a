//! The floor under cachet's HTTP/1.1 front (`host/src/front`): a Pingora server whose
//! connection handler reads each request head itself (httparse, as Pingora's parser does)
//! and writes a fixed 1 KiB answer carrying the fields a cachet hit carries, head and body in
//! one write. No Pingora HTTP session, cache, policy, access log or metrics. Next to
//! `pingora_floor` (the same answer from Pingora's `request_filter`) it measures what
//! Pingora's HTTP/1 session costs per request; the front skips that cost for lean hits.
//!
//! Run: `cargo run --release -p cachet --example front_floor -- THREADS LISTEN`, then load
//! it with wrk over keep-alive connections (plain HTTP/1.1 only).

use async_trait::async_trait;
use bytes::{BufMut, BytesMut};
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
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

#[async_trait]
impl ServerApp for FrontFloor {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        _shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
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
    let [threads, listen] = args.as_slice() else {
        anyhow::bail!("usage: front_floor THREADS LISTEN");
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
    server.add_service(service);
    server.run_forever()
}
