//! A real HTTP origin on 127.0.0.1 that answers from a handler and counts
//! every request that reaches it.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// What the origin saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The origin's answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub delay: Duration,
}

impl Reply {
    pub fn ok(body: impl Into<Vec<u8>>) -> Self {
        Self {
            status: 200,
            headers: vec![("Content-Type".into(), "text/plain".into())],
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    pub fn status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

type Handler = dyn Fn(&Seen) -> Reply + Send + Sync;

pub struct Origin {
    pub addr: SocketAddr,
    server: Arc<tiny_http::Server>,
    total: Arc<AtomicUsize>,
    by_url: Arc<Mutex<HashMap<String, usize>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    workers: Vec<JoinHandle<()>>,
}

impl Origin {
    /// Starts an origin whose replies come from `handler`.
    pub fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind origin"));
        let addr = server.server_addr().to_ip().expect("origin listens on IP");
        let handler: Arc<Handler> = Arc::new(handler);
        let total = Arc::new(AtomicUsize::new(0));
        let by_url = Arc::new(Mutex::new(HashMap::new()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        // Enough workers that slow replies do not serialise concurrent tests.
        let workers = (0..16)
            .map(|_| {
                let server = server.clone();
                let handler = handler.clone();
                let total = total.clone();
                let by_url = by_url.clone();
                let seen = seen.clone();
                std::thread::spawn(move || {
                    while let Ok(request) = server.recv() {
                        let request_seen = Seen {
                            method: request.method().to_string(),
                            url: request.url().to_string(),
                            headers: request
                                .headers()
                                .iter()
                                .map(|h| (h.field.to_string(), h.value.to_string()))
                                .collect(),
                        };
                        total.fetch_add(1, Ordering::SeqCst);
                        *by_url.lock().entry(request_seen.url.clone()).or_insert(0) += 1;
                        seen.lock().push(request_seen.clone());
                        let reply = handler(&request_seen);
                        if !reply.delay.is_zero() {
                            std::thread::sleep(reply.delay);
                        }
                        let mut response = tiny_http::Response::new(
                            tiny_http::StatusCode(reply.status),
                            Vec::new(),
                            Cursor::new(reply.body.clone()),
                            Some(reply.body.len()),
                            None,
                        );
                        for (name, value) in &reply.headers {
                            if let Ok(h) =
                                tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes())
                            {
                                response.add_header(h);
                            }
                        }
                        let _ = request.respond(response);
                    }
                })
            })
            .collect();
        Self {
            addr,
            server,
            total,
            by_url,
            seen,
            workers,
        }
    }

    /// Requests that reached the origin so far.
    pub fn hits(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }

    /// Requests that reached the origin for one URL (path and query).
    pub fn hits_for(&self, url: &str) -> usize {
        self.by_url.lock().get(url).copied().unwrap_or(0)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.server.unblock();
        // Each worker blocks in recv(); unblock wakes one at a time.
        for _ in 1..self.workers.len() {
            self.server.unblock();
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}
