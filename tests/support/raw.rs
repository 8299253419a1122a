//! Raw HTTP/1.1 on 127.0.0.1 for tests where the exact bytes matter: an origin that writes
//! exactly the bytes a test gives it, and a client that reads every response head (interim
//! ones included) as sent.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// One response head as it came off the wire.
#[derive(Debug, Clone)]
pub struct Head {
    /// The status line's version, e.g. "HTTP/1.1".
    pub version: String,
    pub status: u16,
    /// The status line's reason phrase, as sent (may be empty).
    pub reason: String,
    /// Header lines in order, names as sent.
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        super::find_header(&self.headers, name)
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A complete exchange: interim (1xx) heads, then the final head and its decoded body.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub interim: Vec<Head>,
    pub head: Head,
    pub body: Vec<u8>,
}

impl Exchange {
    /// The `Cache-Status` header, or "" when absent.
    pub fn cache_status(&self) -> &str {
        self.head.header("cache-status").unwrap_or("")
    }
}

/// Sends `GET path` on a fresh connection to `port` with extra header lines and reads the
/// whole answer (Content-Length or chunked bodies).
pub fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> Exchange {
    request(port, "GET", path, headers)
}

/// Like [`get`] with any method (no request body).
pub fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> Exchange {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
    for (n, v) in headers {
        request.push_str(&format!("{n}: {v}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    exchange(port, request.as_bytes())
}

/// Sends `request` exactly as given and reads the answer.
pub fn exchange(port: u16, request: &[u8]) -> Exchange {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    conn.write_all(request).expect("send request");
    let mut reader = Reader {
        conn,
        buf: Vec::new(),
    };
    let mut interim = Vec::new();
    loop {
        let head = reader.head();
        if (100..200).contains(&head.status) {
            interim.push(head);
            continue;
        }
        let body = reader.body(&head);
        return Exchange {
            interim,
            head,
            body,
        };
    }
}

struct Reader {
    conn: TcpStream,
    buf: Vec<u8>,
}

impl Reader {
    fn fill(&mut self) {
        let mut chunk = [0u8; 8192];
        let n = self.conn.read(&mut chunk).expect("read");
        assert!(
            n > 0,
            "connection closed early; got {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        self.buf.extend_from_slice(&chunk[..n]);
    }

    fn line(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 2);
                return line;
            }
            self.fill();
        }
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            self.fill();
        }
        self.buf.drain(..n).collect()
    }

    fn head(&mut self) -> Head {
        let status_line = self.line();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let line = self.line();
            if line.is_empty() {
                let mut parts = status_line.splitn(3, ' ');
                let version = parts.next().unwrap_or("").to_owned();
                let reason = parts.nth(1).unwrap_or("").to_owned();
                return Head {
                    version,
                    status,
                    reason,
                    headers,
                };
            }
            let (name, value) = line.split_once(':').expect("header line");
            headers.push((name.to_owned(), value.trim().to_owned()));
        }
    }

    fn body(&mut self, head: &Head) -> Vec<u8> {
        if head
            .header("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
        {
            let mut body = Vec::new();
            loop {
                let size_line = self.line();
                let size =
                    usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                        .unwrap_or_else(|_| panic!("bad chunk size {size_line:?}"));
                if size == 0 {
                    // Trailer section, then the empty line.
                    while !self.line().is_empty() {}
                    return body;
                }
                body.extend(self.take(size));
                assert_eq!(self.line(), "", "chunk not followed by CRLF");
            }
        }
        let len: usize = head
            .header("content-length")
            .map(|v| v.parse().expect("content-length"))
            .unwrap_or(0);
        self.take(len)
    }
}

/// An origin that answers every request with bytes the test chose and closes the
/// connection; it counts the requests it read.
pub struct RawOrigin {
    pub addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl RawOrigin {
    /// `answer(request_head)` gives the exact bytes written back.
    pub fn start(answer: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static) -> Self {
        let listener = super::bind_unclaimed();
        let addr = listener.local_addr().expect("address");
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let answer = Arc::new(answer);
        let acceptor = {
            let (requests, stop) = (requests.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(mut conn) = conn else { continue };
                    let (answer, requests) = (answer.clone(), requests.clone());
                    std::thread::spawn(move || {
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                        let mut head = Vec::new();
                        let mut chunk = [0u8; 4096];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match conn.read(&mut chunk) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&chunk[..n]),
                            }
                            if head.len() > 64 * 1024 {
                                return;
                            }
                        }
                        requests.fetch_add(1, Ordering::SeqCst);
                        let bytes = answer(&String::from_utf8_lossy(&head));
                        let _ = conn.write_all(&bytes);
                        let _ = conn.flush();
                        let _ = conn.shutdown(std::net::Shutdown::Write);
                        // Let the proxy read everything before the socket goes away.
                        let _ = conn.read(&mut chunk);
                    });
                }
            })
        };
        Self {
            addr,
            requests,
            stop,
            acceptor: Some(acceptor),
        }
    }

    /// Requests read so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}
