//! A raw HTTP/1.1 client over TCP for byte-exact requests (malformed targets,
//! pipelining, oversized heads): it sends
//! exactly what it is given and parses every response that comes back.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Reads a request head byte by byte, through its blank line (a raw origin's side of the
/// exchange); `None` when the peer closed or the read failed first.
pub fn read_request_head(conn: &mut impl Read) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte).ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(head)
}

/// One parsed response.
#[derive(Debug, Clone)]
pub struct RawResp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResp {
    pub fn header(&self, name: &str) -> Option<&str> {
        super::find_header(&self.headers, name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `request` as is and reads until the server closes (or 10 s pass).
pub fn exchange(port: u16, request: &[u8]) -> Vec<u8> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect to cachet");
    conn.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    conn.write_all(request).expect("send request");
    read_until_closed(&mut conn, Duration::from_secs(10))
}

/// Reads what arrives until end of stream or `limit`.
pub fn read_until_closed(conn: &mut TcpStream, limit: Duration) -> Vec<u8> {
    read_until(conn, limit, |_| false)
}

/// Reads what arrives until `enough` says what was read is enough, end of stream or `limit`.
pub fn read_until(
    conn: &mut TcpStream,
    limit: Duration,
    enough: impl Fn(&[u8]) -> bool,
) -> Vec<u8> {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    while !enough(&out) && Instant::now() < deadline {
        match conn.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => break,
        }
    }
    out
}

/// Every complete response in `bytes` (Content-Length framed, or without a
/// body for HEAD-like answers), in order.
pub fn parse_responses(mut bytes: &[u8]) -> Vec<RawResp> {
    let mut out = Vec::new();
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(head_len)) = resp.parse(bytes) else {
            return out;
        };
        let headers = super::owned_headers(resp.headers);
        let length: usize = super::find_header(&headers, "content-length")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let end = (head_len + length).min(bytes.len());
        out.push(RawResp {
            status: resp.code.unwrap_or(0),
            headers,
            body: bytes[head_len..end].to_vec(),
        });
        bytes = &bytes[end..];
    }
}

/// Sends one request and returns its single response.
pub fn one(port: u16, request: &str) -> RawResp {
    let bytes = exchange(port, request.as_bytes());
    parse_responses(&bytes)
        .into_iter()
        .next()
        .unwrap_or_else(|| {
            panic!(
                "no response to {request:?}: {:?}",
                String::from_utf8_lossy(&bytes)
            )
        })
}
