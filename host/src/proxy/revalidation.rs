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

/// Whether a 304 validates another representation than the stored one: its strong `ETag`
/// differs from the stored strong `ETag` (RFC 9111 §4.3.4). Without an entity tag on either
/// side the 304 is taken to select the stored response, as the conditional asked for it.
pub fn names_another_representation(
    stored: &http::HeaderMap,
    not_modified: &ResponseHeader,
) -> bool {
    let strong = |headers: &http::HeaderMap| {
        let tag = headers.get(http::header::ETAG)?.as_bytes();
        (!tag.starts_with(b"W/")).then_some(tag.to_vec())
    };
    match (strong(stored), strong(&not_modified.headers)) {
        (Some(stored), Some(new)) => stored != new,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_304_with_another_strong_tag_names_another_representation() {
        let mut stored = http::HeaderMap::new();
        stored.insert("etag", "\"v1\"".parse().expect("valid"));
        let with_tag = |tag: &str| {
            let mut nm = ResponseHeader::build(304, None).expect("header");
            nm.insert_header("etag", tag).expect("valid");
            nm
        };
        assert!(!names_another_representation(&stored, &with_tag("\"v1\"")));
        assert!(names_another_representation(&stored, &with_tag("\"v2\"")));
        assert!(!names_another_representation(
            &stored,
            &with_tag("W/\"v2\"")
        ));
        let untagged = ResponseHeader::build(304, None).expect("header");
        assert!(!names_another_representation(&stored, &untagged));
    }

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
