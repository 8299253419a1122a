//! The checks the host makes on a policy's edits, natively: an edit the host refuses makes
//! the hook a plugin fault (and a self-test vector a refused version), so a native test
//! must see the refusal too, not pass on an edit that never happens.

use crate::{HeaderEdit, HeaderEdits, Request, RequestEdits};

/// Most header edits one hook may return.
const MAX_EDITS: usize = 64;
/// Most bytes of names and values one hook's edits may carry, and the longest path and
/// query: the largest request head the host takes from a client.
const MAX_EDIT_BYTES: usize = 1_048_575;

/// Longest backend name a policy may pick.
const MAX_BACKEND_NAME: usize = 64;

/// Fields the host writes itself: framing, hop-by-hop and `Host`.
const HOST_WRITTEN: [&str; 9] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "host",
];

/// Request fields that say the scheme and host the cache key holds: no request edit may
/// touch them.
const KEYED_FORWARDING: [&str; 7] = [
    "forwarded",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-ssl",
    "x-forwarded-scheme",
    "front-end-https",
    "x-url-scheme",
];

/// Request fields never forwarded to the origin: they may be removed, not set.
const NEVER_FORWARDED: [&str; 3] = [
    "proxy-authorization",
    "proxy-authenticate",
    "http2-settings",
];

/// Why the host would refuse `edits` made to `req` in `edit_request`, or `None` when it
/// takes them.
///
/// ```
/// use cachet_sdk::prelude::*;
/// use cachet_sdk::testing::request_edits_refusal;
///
/// let req = Request::builder().uri("http://example.com/a").build();
/// let mut edits = RequestEdits::default();
/// edits.set_header("x-variant", "b");
/// assert_eq!(request_edits_refusal(&req, &edits), None);
/// edits.set_header("x-forwarded-proto", "https");
/// assert!(request_edits_refusal(&req, &edits).is_some());
/// ```
pub fn request_edits_refusal(req: &Request, edits: &RequestEdits) -> Option<String> {
    if let Some(refusal) = header_edits_refusal(&edits.headers, "request") {
        return Some(refusal);
    }
    for edit in edits.headers.as_slice() {
        let (HeaderEdit::Set(name, _) | HeaderEdit::Append(name, _) | HeaderEdit::Remove(name)) =
            edit;
        let name = name.to_ascii_lowercase();
        if KEYED_FORWARDING.contains(&name.as_str()) {
            return Some(format!(
                "request edit of {name:?} refused: the host says the scheme and host the key \
                 holds"
            ));
        }
        if let HeaderEdit::Set(..) | HeaderEdit::Append(..) = edit {
            if NEVER_FORWARDED.contains(&name.as_str()) {
                return Some(format!(
                    "request edit of {name:?} refused: the origin is never sent it"
                ));
            }
            if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Some(format!(
                    "request edit of {name:?} refused: a name with other than letters, digits \
                     and '-'"
                ));
            }
        }
    }
    if let Some(name) = &edits.backend {
        if name.is_empty() || name.len() > MAX_BACKEND_NAME {
            return Some(format!(
                "backend name of {} bytes (1-{MAX_BACKEND_NAME})",
                name.len()
            ));
        }
    }
    edits
        .path_and_query
        .as_deref()
        .and_then(|target| path_refusal(target, &req.path()))
}

/// Why the host would refuse `edits` to a response (`edit_response`, `on_deliver`), or
/// `None` when it takes them.
pub fn response_edits_refusal(edits: &HeaderEdits) -> Option<String> {
    header_edits_refusal(edits, "response")
}

fn header_edits_refusal(edits: &HeaderEdits, what: &str) -> Option<String> {
    let edits = edits.as_slice();
    if edits.len() > MAX_EDITS {
        return Some(format!("{} {what} edits, limit {MAX_EDITS}", edits.len()));
    }
    let mut bytes = 0;
    for edit in edits {
        let (name, value) = match edit {
            HeaderEdit::Set(name, value) | HeaderEdit::Append(name, value) => (name, Some(value)),
            HeaderEdit::Remove(name) => (name, None),
        };
        bytes += name.len() + value.map_or(0, String::len);
        if bytes > MAX_EDIT_BYTES {
            return Some(format!("{what} edits exceed {MAX_EDIT_BYTES} bytes in all"));
        }
        let trimmed = name.trim().to_ascii_lowercase();
        if HOST_WRITTEN.contains(&trimmed.as_str()) {
            return Some(format!(
                "{what} edit of {name:?} refused: the host writes framing, hop-by-hop and Host \
                 fields"
            ));
        }
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Some(format!("{what} edit: {name:?} is not a valid header name"));
        }
        // The host takes a value as a recipient reads it, trimmed.
        if let Some(value) = value {
            if http::HeaderValue::from_str(value.trim_matches([' ', '\t'])).is_err() {
                return Some(format!("{what} edit: value of {name} is not valid HTTP"));
            }
        }
    }
    None
}

/// Why the host would refuse `target` as the origin's path and query for a request whose
/// path was `client_path`.
fn path_refusal(target: &str, client_path: &str) -> Option<String> {
    if target.len() > MAX_EDIT_BYTES {
        return Some(format!(
            "path of {} bytes exceeds the limit of {MAX_EDIT_BYTES}",
            target.len()
        ));
    }
    // Some origins read `//host/path` (or `/\host/path`) as a host: taken only where the
    // client's own path was so.
    let network = |path: &str| path.starts_with("//") || path.starts_with("/\\");
    let network_path = network(target) && !network(client_path);
    let plain = target.bytes().all(|b| b.is_ascii_graphic());
    if !target.starts_with('/') || network_path || target.contains('#') || !plain {
        return Some(format!(
            "path {target:?} is not in origin-form (\"/path?query\")"
        ));
    }
    match target.parse::<http::uri::PathAndQuery>() {
        Ok(parsed) if parsed.as_str() == target => None,
        _ => Some(format!("path {target:?} is not a valid request target")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_with(edit: impl FnOnce(&mut RequestEdits)) -> Option<String> {
        let req = Request::builder().uri("http://example.com/a").build();
        let mut edits = RequestEdits::default();
        edit(&mut edits);
        request_edits_refusal(&req, &edits)
    }

    #[test]
    fn what_the_host_refuses_is_refused() {
        for refused in [
            request_with(|e| {
                e.set_header("Content-Length", "1");
            }),
            request_with(|e| {
                e.set_header("Host", "evil.example");
            }),
            request_with(|e| {
                e.remove_header("transfer-encoding");
            }),
            request_with(|e| {
                e.set_header("X-A", "a\r\nInjected: yes");
            }),
            request_with(|e| {
                e.set_header("Bad Name", "x");
            }),
            request_with(|e| {
                e.set_header("x_under", "x");
            }),
            request_with(|e| {
                e.remove_header("Forwarded");
            }),
            request_with(|e| {
                e.set_header("Proxy-Authorization", "x");
            }),
            request_with(|e| {
                e.set_header("x-a", "a\u{7f}");
            }),
            request_with(|e| {
                e.rewrite_path("//evil.example/");
            }),
            request_with(|e| {
                e.rewrite_path("relative");
            }),
            request_with(|e| {
                e.rewrite_path("/a b");
            }),
            request_with(|e| {
                for i in 0..=MAX_EDITS {
                    e.set_header(format!("x-{i}"), "1");
                }
            }),
        ] {
            assert!(refused.is_some());
        }
    }

    #[test]
    fn a_backend_name_is_one_to_64_bytes() {
        assert!(request_with(|e| {
            e.backend("");
        })
        .is_some());
        assert!(request_with(|e| {
            e.backend("b".repeat(65));
        })
        .is_some());
        assert_eq!(
            request_with(|e| {
                e.backend("b".repeat(64));
            }),
            None
        );
    }

    #[test]
    fn what_the_host_takes_is_taken() {
        assert_eq!(
            request_with(|e| {
                e.set_header("X-Variant", " b ");
            }),
            None
        );
        assert_eq!(
            request_with(|e| {
                e.remove_header("proxy-authorization");
            }),
            None
        );
        assert_eq!(
            request_with(|e| {
                e.rewrite_path("/b?c=1");
            }),
            None
        );
        assert_eq!(
            request_with(|e| {
                e.set_header("cookie", "v".repeat(16 << 10));
            }),
            None
        );
        let mut response = HeaderEdits::new();
        response.set("x_cache_tag", "a").remove("set-cookie");
        assert_eq!(response_edits_refusal(&response), None);
        response.set("Transfer-Encoding", "chunked");
        assert!(response_edits_refusal(&response).is_some());
    }
}
