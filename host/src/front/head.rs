//! Reading a request head the front may answer itself.
//!
//! The front takes only the simplest HTTP/1.1 requests: a GET in origin-form, with no body,
//! no framing field and nothing that changes how the connection goes on. Anything else,
//! including a head `httparse` refuses (Pingora may still repair its request line), is
//! handed to Pingora's own parser untouched. Both parse with `httparse`'s defaults, so a head
//! the front reads is the head Pingora would read.

use bytes::{Bytes, BytesMut};
use http::header::HeaderValue;
use pingora::http::RequestHeader;
use std::mem::MaybeUninit;
use std::ops::Range;

/// Fields one head may have: as many as Pingora's parser takes (`MAX_HEADERS`), so every
/// head Pingora would read whole is read whole here, under `request_head_timeout`.
const MAX_FIELDS: usize = 256;

/// What the buffered bytes hold.
pub(super) enum Head {
    /// Not a whole head yet.
    Partial,
    /// A head the front takes: the request, how many bytes of the buffer it used, and
    /// whether the client asked to end the connection after it (`Connection: close`).
    Plain {
        request: Box<RequestHeader>,
        len: usize,
        close: bool,
    },
    /// Pingora's to read.
    Other,
}

/// Reads the head at the start of `buf` without consuming it.
pub(super) fn read(buf: &BytesMut) -> Head {
    // Left uninitialised: `httparse` writes the fields it returns (no 8 KiB to zero first).
    let mut fields = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_FIELDS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match parsed.parse_with_uninit_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(httparse::Error::Token | httparse::Error::Version) if request_line_unfinished(buf) => {
            return Head::Partial
        }
        Err(_) => return Head::Other,
    };
    if parsed.method != Some("GET")
        || parsed.version != Some(1)
        || !parsed.path.is_some_and(|p| p.starts_with('/'))
        || crate::proxy::has_bare_lf(&buf[..len])
        || !parsed
            .headers
            .iter()
            .all(|f| leaves_framing_alone(f.name, f.value))
        // Pingora reads only the first of several `Connection` fields.
        || parsed
            .headers
            .iter()
            .filter(|f| f.name.eq_ignore_ascii_case("connection"))
            .count()
            > 1
    {
        return Head::Other;
    }
    // Offsets into the head, so the request can share its bytes once `parsed` lets go.
    let base = buf.as_ptr() as usize;
    let span = |s: &[u8]| (s.as_ptr() as usize - base)..(s.as_ptr() as usize - base + s.len());
    let path = span(parsed.path.unwrap_or("/").as_bytes());
    let spans = parsed
        .headers
        .iter()
        .map(|f| (span(f.name.as_bytes()), span(f.value)));
    let close = parsed.headers.iter().any(|f| {
        f.name.eq_ignore_ascii_case("connection") && f.value.eq_ignore_ascii_case(b"close")
    });
    let raw = Bytes::copy_from_slice(&buf[..len]);
    match build(&raw, path, parsed.headers.len(), spans) {
        Some(request) => Head::Plain {
            request,
            len,
            close,
        },
        None => Head::Other,
    }
}

/// The request as Pingora's parser builds it: names keep their case. `spans` (name, value)
/// are offsets into `raw`, walked once (no list of them is kept: this runs for every head).
fn build(
    raw: &Bytes,
    path: Range<usize>,
    count: usize,
    spans: impl Iterator<Item = (Range<usize>, Range<usize>)>,
) -> Option<Box<RequestHeader>> {
    let mut request = Box::new(RequestHeader::build("GET", &raw[path], Some(count)).ok()?);
    request.set_version(http::Version::HTTP_11);
    for (name, value) in spans {
        let value = HeaderValue::from_maybe_shared(raw.slice(value)).ok()?;
        request.append_header(raw.slice(name), value).ok()?;
    }
    Some(request)
}

/// Whether `buf` starts as a request line (a method and a space) that has not ended yet.
/// Pingora repairs a target with spaces or controls in it (it percent-encodes them) only
/// when it sees the line's ` HTTP/x`; handed over earlier, the same request gets a 400 or a
/// 200 depending on where the client's bytes were split. The front waits for the whole line
/// (the guard's `max_request_head` bounds it) so the answer does not depend on the split.
fn request_line_unfinished(buf: &[u8]) -> bool {
    let method = buf
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
        .count();
    method > 0 && buf.get(method) == Some(&b' ') && !buf.contains(&b'\n')
}

/// A field that leaves the request without a body and the connection simple: framing
/// (`Content-Length`, `Transfer-Encoding`), `Expect`, `Upgrade` and any `Connection` but
/// a lone `keep-alive` or `close` send the request to Pingora (as does more than one
/// `Connection` field).
fn leaves_framing_alone(name: &str, value: &[u8]) -> bool {
    let is = |known: &str| name.eq_ignore_ascii_case(known);
    if is("connection") {
        return value.eq_ignore_ascii_case(b"keep-alive") || value.eq_ignore_ascii_case(b"close");
    }
    !(is("content-length") || is("transfer-encoding") || is("expect") || is("upgrade"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Head {
        read(&BytesMut::from(text.as_bytes()))
    }

    fn is_plain(text: &str) -> bool {
        matches!(head(text), Head::Plain { .. })
    }

    #[test]
    fn a_plain_get_is_read_with_its_fields_in_their_case() {
        let text = "GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nX-Thing: 1\r\n\r\nGET /next";
        let Head::Plain {
            request,
            len,
            close,
        } = head(text)
        else {
            panic!("not plain");
        };
        assert!(!close);
        assert_eq!(len, text.find("GET /next").expect("next"));
        assert_eq!(request.uri, "/a?b=1");
        assert_eq!(request.headers["host"], "example.com");
        let mut wire = Vec::new();
        request.header_to_h1_wire(&mut wire);
        assert_eq!(wire, b"Host: example.com\r\nX-Thing: 1\r\n");
    }

    #[test]
    fn a_head_cut_short_waits_for_more() {
        assert!(matches!(head("GET /a HTTP/1.1\r\nHost: a"), Head::Partial));
    }

    #[test]
    fn anything_but_a_plain_http11_get_goes_to_pingora() {
        for text in [
            "HEAD / HTTP/1.1\r\nHost: a\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\nX: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
            "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: close, Host\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n",
        ] {
            assert!(!is_plain(text), "{text:?}");
        }
        assert!(is_plain(
            "GET / HTTP/1.1\r\nHost: a\r\nconnection: Keep-Alive\r\n\r\n"
        ));
    }

    #[test]
    fn a_request_line_pingora_may_repair_is_waited_for_to_its_end() {
        assert!(matches!(head("GET /a b"), Head::Partial));
        assert!(matches!(head("GET /a b HTTP/1.1\r"), Head::Partial));
        assert!(matches!(head("GET /a b HTTP/1.1\r\n"), Head::Other));
        // Not a request line at all (a TLS ClientHello on a plain port): Pingora's at once.
        assert!(matches!(
            read(&BytesMut::from(&b"\x16\x03\x01\x02\x00\x01"[..])),
            Head::Other
        ));
    }

    #[test]
    fn connection_close_is_read_as_the_last_request() {
        let text = "GET / HTTP/1.1\r\nHost: a\r\nConnection: Close\r\n\r\n";
        assert!(matches!(head(text), Head::Plain { close: true, .. }));
    }

    #[test]
    fn more_fields_than_the_front_reads_go_to_pingora() {
        let mut text = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
        for i in 0..MAX_FIELDS {
            text.push_str(&format!("X-{i}: 1\r\n"));
        }
        text.push_str("\r\n");
        assert!(!is_plain(&text));
    }
}
