//! A real HTTP/1.1 origin on 127.0.0.1 that answers from a handler and counts
//! every request that reaches it.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the origin saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// The request body (by Content-Length, or decoded from chunks).
    pub body: Vec<u8>,
    /// Which connection it came on: 1 for the origin's first, counting up.
    pub connection: usize,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        super::find_header(&self.headers, name)
    }
}

/// The origin's answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub delay: Duration,
    /// How long the second half of the body waits after the head and the first half.
    pub body_pause: Duration,
}

impl Reply {
    pub fn ok(body: impl Into<Vec<u8>>) -> Self {
        Self {
            status: 200,
            headers: vec![("Content-Type".into(), "text/plain".into())],
            body: body.into(),
            delay: Duration::ZERO,
            body_pause: Duration::ZERO,
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

    /// Sends the head and the body's first half at once, the rest after `pause`: a fill
    /// whose body is still arriving.
    pub fn body_pause(mut self, pause: Duration) -> Self {
        self.body_pause = pause;
        self
    }
}

type Handler = dyn Fn(&Seen) -> Reply + Send + Sync;

/// Counters shared by the origin's connection threads.
#[derive(Default)]
struct Counts {
    total: AtomicUsize,
    connections: AtomicUsize,
    by_url: Mutex<HashMap<String, usize>>,
    seen: Mutex<Vec<Seen>>,
}

/// Holds an origin's answer until `released` is set (30 s at most): the test, not the
/// machine's speed, decides how long a fetch stays in flight.
pub fn hold_until_released(released: &AtomicBool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !released.load(Ordering::SeqCst) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub struct Origin {
    pub addr: SocketAddr,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Origin {
    /// An origin whose objects (`<url> v1`, public for 5 minutes) carry `ETag: "v1"`, and that
    /// answers 304 to a request holding it: revalidations show as conditional requests.
    pub fn validating() -> Self {
        Self::start(|seen| {
            if seen.header("if-none-match") == Some("\"v1\"") {
                return Reply::ok("")
                    .status(304)
                    .header("ETag", "\"v1\"")
                    .header("Cache-Control", "public, max-age=300");
            }
            Reply::ok(format!("{} v1", seen.url))
                .header("ETag", "\"v1\"")
                .header("Cache-Control", "public, max-age=300")
        })
    }

    /// An origin that holds every answer until `released` is set
    /// ([`hold_until_released`]), then answers as `handler` says.
    pub fn start_held(
        released: Arc<AtomicBool>,
        handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> Self {
        Self::start(move |seen| {
            hold_until_released(&released);
            handler(seen)
        })
    }

    /// Starts an origin whose replies come from `handler`: HTTP/1.1 with
    /// keep-alive, a thread per connection (the proxy keeps a small pool).
    pub fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        let listener = super::bind_unclaimed();
        let addr = listener.local_addr().expect("origin address");
        let handler: Arc<Handler> = Arc::new(handler);
        let counts = Arc::new(Counts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (counts, stop) = (counts.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (handler, counts) = (handler.clone(), counts.clone());
                    std::thread::spawn(move || serve_connection(conn, &*handler, &counts));
                }
            })
        };
        Self {
            addr,
            counts,
            stop,
            acceptor: Some(acceptor),
        }
    }

    /// Requests that reached the origin so far.
    pub fn hits(&self) -> usize {
        self.counts.total.load(Ordering::SeqCst)
    }

    /// Requests that reached the origin for one URL (path and query).
    pub fn hits_for(&self, url: &str) -> usize {
        self.counts.by_url.lock().get(url).copied().unwrap_or(0)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.counts.seen.lock().clone()
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the acceptor so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// Longest request head the origin accepts.
const MAX_HEAD: usize = 64 * 1024;
/// Largest chunk of a request body the origin accepts.
const MAX_CHUNK: usize = 64 << 20;

fn serve_connection(mut conn: TcpStream, handler: &Handler, counts: &Counts) {
    let connection = counts.connections.fetch_add(1, Ordering::SeqCst) + 1;
    // Idle keep-alive connections end on their own.
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = Vec::with_capacity(4096);
    loop {
        let Some((mut seen, head_len, body_len, close)) = read_request(&mut conn, &mut buf) else {
            return;
        };
        seen.connection = connection;
        buf.drain(..head_len + body_len);
        counts.total.fetch_add(1, Ordering::SeqCst);
        *counts.by_url.lock().entry(seen.url.clone()).or_insert(0) += 1;
        counts.seen.lock().push(seen.clone());
        let reply = handler(&seen);
        if !reply.delay.is_zero() {
            std::thread::sleep(reply.delay);
        }
        if write_reply(&mut conn, &reply, seen.method == "HEAD").is_err() || close {
            return;
        }
    }
}

/// Reads one request: (what was seen, head length, body length, close after).
fn read_request(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(Seen, usize, usize, bool)> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(head_len)) = req.parse(buf) {
            let headers = super::owned_headers(req.headers);
            let mut seen = Seen {
                method: req.method.unwrap_or("").to_owned(),
                url: req.path.unwrap_or("").to_owned(),
                headers,
                body: Vec::new(),
                connection: 0,
            };
            let close = seen
                .header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"));
            let chunked = seen
                .header("transfer-encoding")
                .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
            if chunked {
                // Read whole, so the next request on the connection starts where it should.
                let (body, body_len) = loop {
                    match dechunk(&buf[head_len..]) {
                        Some(Ok(done)) => break done,
                        Some(Err(())) => return None,
                        None => read_more(conn, buf)?,
                    }
                };
                seen.body = body;
                return Some((seen, head_len, body_len, close));
            }
            let body_len: usize = seen
                .header("content-length")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < head_len + body_len {
                read_more(conn, buf)?;
            }
            seen.body = buf[head_len..head_len + body_len].to_vec();
            return Some((seen, head_len, body_len, close));
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        read_more(conn, buf)?;
    }
}

/// A chunked body at the start of `bytes`: `None` while it is incomplete, `Err` when it is
/// malformed, else the decoded body and how many bytes it took (trailers included).
#[allow(clippy::type_complexity)]
fn dechunk(bytes: &[u8]) -> Option<Result<(Vec<u8>, usize), ()>> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let line_end = at + bytes[at..].windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&bytes[at..line_end]).map_err(drop);
        let size_text = match size_text {
            Ok(text) => text.split(';').next().unwrap_or("").trim(),
            Err(()) => return Some(Err(())),
        };
        // A size past any body a test sends is malformed (and cannot overflow below).
        let size = match usize::from_str_radix(size_text, 16) {
            Ok(size) if size <= MAX_CHUNK => size,
            _ => return Some(Err(())),
        };
        at = line_end + 2;
        if size == 0 {
            // Trailer fields, then the blank line.
            loop {
                let end = at + bytes[at..].windows(2).position(|w| w == b"\r\n")?;
                let blank = end == at;
                at = end + 2;
                if blank {
                    return Some(Ok((body, at)));
                }
            }
        }
        if bytes.len() < at + size + 2 {
            return None;
        }
        body.extend_from_slice(&bytes[at..at + size]);
        if &bytes[at + size..at + size + 2] != b"\r\n" {
            return Some(Err(()));
        }
        at += size + 2;
    }
}

fn read_more(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 8192];
    match conn.read(&mut chunk) {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

fn write_reply(conn: &mut TcpStream, reply: &Reply, head_only: bool) -> std::io::Result<()> {
    let mut out = format!("HTTP/1.1 {} X\r\n", reply.status).into_bytes();
    for (name, value) in &reply.headers {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", reply.body.len()).as_bytes());
    if head_only {
        return conn.write_all(&out);
    }
    let (first, rest) = reply.body.split_at(reply.body.len() / 2);
    out.extend_from_slice(first);
    conn.write_all(&out)?;
    if !reply.body_pause.is_zero() {
        conn.flush()?;
        std::thread::sleep(reply.body_pause);
    }
    conn.write_all(rest)
}
