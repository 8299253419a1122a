//! The request and response heads a 0.3.0 hook receives as values.
//!
//! Built from the proxy's own header structs for each call, so the plugin sees
//! exactly what the origin is sent. Each string costs the guest one call into
//! its allocator: the headers travel as one string, one field per line.

use super::bindings::v2::cachet::policy::types::RequestPlan;
use super::host_api::request_host;
use super::pending::PendingFields;
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use wasmtime::component::{ComponentType, Lift, Lower};

/// `cachet:policy/types@0.3.0` `request-head`.
#[derive(ComponentType, Lower)]
#[component(record)]
pub(crate) struct RequestHead<'a> {
    method: &'a str,
    host: String,
    path: &'a str,
    query: Option<&'a str>,
    headers: String,
}

impl<'a> RequestHead<'a> {
    /// `request` as the origin will get it, with the `pending` fields written. The
    /// client's `Connection` is left out: it describes the client's connection, and the
    /// origin is never sent it (Pingora writes its own for an upgrade).
    pub(crate) fn of(request: &'a RequestHeader, pending: &PendingFields) -> Self {
        Self {
            method: request.method.as_str(),
            host: request_host(request),
            path: request.uri.path(),
            query: request.uri.query(),
            headers: header_lines(
                pending
                    .fields_after(&request.headers)
                    .filter(|(name, _)| **name != http::header::CONNECTION),
            ),
        }
    }

    /// `request` with nothing pending: after `request_filter`, every field the
    /// origin gets is written.
    pub(crate) fn as_is(request: &'a RequestHeader) -> Self {
        Self::of(request, PendingFields::none())
    }
}

/// `cachet:policy/types@0.3.0` `response-head`.
#[derive(ComponentType, Lower)]
#[component(record)]
pub(crate) struct ResponseHead {
    status: u16,
    headers: String,
}

impl ResponseHead {
    pub(crate) fn of(response: &ResponseHeader) -> Self {
        Self {
            status: response.status.as_u16(),
            headers: header_lines(response.headers.iter()),
        }
    }
}

/// `cachet:policy/types@0.3.0` `setting`: one `[tenant.plugin_config]` entry.
#[derive(ComponentType, Lower)]
#[component(record)]
pub(crate) struct Setting<'a> {
    pub key: &'a str,
    pub value: &'a str,
}

/// `cachet:policy/types@0.3.0` `request-answer`, its plan in 0.2.0's type
/// (0.3.0 declares the same record).
#[derive(ComponentType, Lift)]
#[component(record)]
pub(crate) struct RequestAnswerV3 {
    pub plan: RequestPlan,
    pub key: Option<Vec<String>>,
}

/// "name: value\n" for every field; names are already lower-case in an
/// `http::HeaderMap`. Values cannot hold a line break (the parser and the
/// edit checks refuse them), so every line is one field. This runs for every
/// hook call: one pass over the fields with plain appends, and one UTF-8 check
/// of the whole text rather than one per value. A value that is not UTF-8
/// (obs-text) is shown with U+FFFD in place of each bad sequence; the line
/// breaks around it are ASCII, so the whole text's lossy reading is each
/// value's.
fn header_lines<'h>(fields: impl Iterator<Item = (&'h HeaderName, &'h HeaderValue)>) -> String {
    // Room for a small head: most requests' lines fit without the buffer growing.
    let mut lines = Vec::with_capacity(HEAD_LINES_CAPACITY);
    for (name, value) in fields {
        lines.extend_from_slice(name.as_str().as_bytes());
        lines.extend_from_slice(b": ");
        lines.extend_from_slice(value.as_bytes());
        lines.push(b'\n');
    }
    match String::from_utf8(lines) {
        Ok(text) => text,
        Err(not_utf8) => String::from_utf8_lossy(not_utf8.as_bytes()).into_owned(),
    }
}

/// What [`header_lines`] reserves before it writes.
const HEAD_LINES_CAPACITY: usize = 512;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_become_one_line_per_field_with_lower_case_names() {
        let mut req = RequestHeader::build("GET", b"/a?b=1", None).unwrap();
        req.insert_header("Host", "Example.COM").unwrap();
        req.append_header("Accept", "text/html").unwrap();
        req.append_header("accept", "*/*").unwrap();
        req.insert_header("X-Odd", &b"caf\xe9"[..]).unwrap();
        // The client's Connection is never the origin's: not shown.
        req.insert_header("Connection", "keep-alive").unwrap();
        let head = RequestHead::as_is(&req);
        assert_eq!(head.method, "GET");
        assert_eq!(head.host, "example.com");
        assert_eq!((head.path, head.query), ("/a", Some("b=1")));
        assert_eq!(
            head.headers,
            "host: Example.COM\naccept: text/html\naccept: */*\nx-odd: caf\u{fffd}\n"
        );
    }

    /// The whole text is checked at once; a bad byte is replaced where it is, as if each
    /// value had been read alone, and nothing around it changes.
    #[test]
    fn values_that_are_not_utf8_are_shown_value_by_value() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        let values: [&[u8]; 4] = [
            b"a\xe2\x82",
            b"\xff\xfeb",
            "\u{e9}t\u{e9}".as_bytes(),
            b"c\xc3",
        ];
        for (i, value) in values.iter().enumerate() {
            req.append_header(format!("x-{i}"), *value).unwrap();
        }
        let expected: String = values
            .iter()
            .enumerate()
            .map(|(i, v)| format!("x-{i}: {}\n", String::from_utf8_lossy(v)))
            .collect();
        assert_eq!(RequestHead::as_is(&req).headers, expected);
        assert_eq!(expected.matches('\u{fffd}').count(), 4);
    }

    #[test]
    fn the_head_shows_pending_fields_as_written() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("host", "a.test").unwrap();
        req.append_header("via", "1.0 lb").unwrap();
        let mut pending = PendingFields::default();
        pending.set(
            HeaderName::from_static("via"),
            HeaderValue::from_static("1.0 lb, 1.1 cachet"),
        );
        pending.set(
            HeaderName::from_static("x-forwarded-for"),
            HeaderValue::from_static("192.0.2.7"),
        );
        let head = RequestHead::of(&req, &pending);
        assert_eq!(
            head.headers,
            "host: a.test\nvia: 1.0 lb, 1.1 cachet\nx-forwarded-for: 192.0.2.7\n"
        );
        // Shown, not written.
        assert_eq!(req.headers.get("via").unwrap(), "1.0 lb");
        assert!(req.headers.get("x-forwarded-for").is_none());
    }
}
