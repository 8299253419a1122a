//! Updating a stored response from the origin's 304 (RFC 9111 §4.3.4). pingora merges only
//! a few fields (Cache-Control, Expires, ETag, ...); cachet also needs `Age`, `Date`,
//! `Last-Modified`, its targeted field and purge tags, so it applies the rest of the 304.

use pingora::http::ResponseHeader;

/// Fields a 304 never updates: framing, connection handling, and `Vary` (pingora keeps the
/// stored variance across a 304).
fn kept_from_stored(name: &http::HeaderName) -> bool {
    use http::header::*;
    [
        CONNECTION,
        CONTENT_LENGTH,
        TRANSFER_ENCODING,
        TE,
        TRAILER,
        UPGRADE,
        VARY,
        CONTENT_ENCODING,
        CONTENT_RANGE,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// The stored header (as merged by pingora) updated with every other field of the 304.
pub fn merge(merged: &ResponseHeader, not_modified: &ResponseHeader) -> ResponseHeader {
    let mut out = merged.clone();
    let names: Vec<_> = not_modified
        .headers
        .keys()
        .filter(|name| !kept_from_stored(name))
        .cloned()
        .collect();
    for name in names {
        out.remove_header(&name);
        for value in not_modified.headers.get_all(&name) {
            // Names and values come from a parsed header, so appending cannot fail.
            let _ = out.append_header(name.clone(), value.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_fields_but_keeps_framing() {
        let mut stored = ResponseHeader::build(200, None).expect("header");
        stored.insert_header("content-length", "5").expect("valid");
        stored.insert_header("x-version", "1").expect("valid");
        stored.insert_header("vary", "accept").expect("valid");
        let mut nm = ResponseHeader::build(304, None).expect("header");
        nm.insert_header("content-length", "0").expect("valid");
        nm.insert_header("x-version", "2").expect("valid");
        nm.insert_header("age", "7").expect("valid");
        nm.insert_header("vary", "*").expect("valid");
        let out = merge(&stored, &nm);
        assert_eq!(out.status, 200);
        assert_eq!(out.headers["content-length"], "5");
        assert_eq!(out.headers["x-version"], "2");
        assert_eq!(out.headers["age"], "7");
        assert_eq!(out.headers["vary"], "accept");
    }
}
