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
            headers: header_lines(|| {
                pending
                    .fields_after(&request.headers)
                    .filter(|(name, _)| **name != http::header::CONNECTION)
            }),
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
            headers: header_lines(|| response.headers.iter()),
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
/// edit checks refuse them), so every line is one field. Built with plain
/// appends: this runs for every hook call. `fields` is walked twice: once to size the string, once to fill it.
fn header_lines<'h, I>(fields: impl Fn() -> I) -> String
where
    I: Iterator<Item = (&'h HeaderName, &'h HeaderValue)>,
{
    let size: usize = fields()
        .map(|(name, value)| name.as_str().len() + value.len() + 3)
        .sum();
    let mut lines = String::with_capacity(size);
    for (name, value) in fields() {
        lines.push_str(name.as_str());
        lines.push_str(": ");
        match std::str::from_utf8(value.as_bytes()) {
            Ok(text) => lines.push_str(text),
            Err(_) => lines.push_str(&String::from_utf8_lossy(value.as_bytes())),
        }
        lines.push('\n');
    }
    lines
}

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
