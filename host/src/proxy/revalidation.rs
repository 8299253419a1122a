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

/// Dates a 304 sent without `Date` with the time it arrived (RFC 9110 §6.6.1). Merged
/// without one, the stored response kept its first `Date`, and its age counted from the
/// first fetch: older than the 304's lifetime, it was stale again at once, on every
/// revalidation.
pub fn date_if_undated(not_modified: &mut ResponseHeader) {
    if !not_modified.headers.contains_key(http::header::DATE) {
        let now = httpdate::fmt_http_date(std::time::SystemTime::now());
        // An HTTP-date is a valid field value.
        let _ = not_modified.insert_header(http::header::DATE, now);
    }
}

/// A stored body served after a 304 that vouched for another representation, not for it:
/// it goes out once, with nothing that lets the client or a cache after it keep it. Pingora
/// merged the 304's `ETag`, `Expires`, `Cache-Control`, `CDN-Cache-Control` and `Cache-Tag`
/// into it, and a plugin's delivery edits may have set freshness again.
pub fn mark_unvalidated(response: &mut ResponseHeader) {
    for merged in ["etag", "expires", "cdn-cache-control", "cache-tag"] {
        response.remove_header(merged);
    }
    let _ = response.insert_header(http::header::CACHE_CONTROL, "no-cache");
}

/// Whether a 304 selects another representation than the stored one, which it must then
/// not update (RFC 9111 §4.3.4). Its validators must be the stored response's: a strong
/// `ETag` the same strong tag; a weak one the same tag by weak comparison; with no `ETag`, a
/// `Last-Modified` the same time. A 304 with neither is taken to select the stored response,
/// as the conditional asked for it.
pub fn names_another_representation(
    stored: &http::HeaderMap,
    not_modified: &ResponseHeader,
) -> bool {
    let named = &not_modified.headers;
    // `ETag` names one representation: two fields are no validator of the stored one.
    if named.get_all(http::header::ETAG).iter().nth(1).is_some() {
        return true;
    }
    if let Some(new) = named.get(http::header::ETAG) {
        let Some(old) = stored.get(http::header::ETAG) else {
            return true;
        };
        let (new, old) = (new.as_bytes().trim_ascii(), old.as_bytes().trim_ascii());
        return match new.strip_prefix(b"W/") {
            // A strong validator updates only a response stored with that strong validator.
            None => new != old,
            Some(new_tag) => new_tag != old.strip_prefix(b"W/").unwrap_or(old),
        };
    }
    match named.get(http::header::LAST_MODIFIED) {
        Some(new) => {
            let old = stored.get(http::header::LAST_MODIFIED);
            let same_time = match (
                old.and_then(super::http_date::parse),
                super::http_date::parse(new),
            ) {
                (Some(old), Some(new)) => old == new,
                _ => old.is_some_and(|old| old.as_bytes() == new.as_bytes()),
            };
            !same_time
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn not_modified(fields: &[(&str, &str)]) -> ResponseHeader {
        let mut nm = ResponseHeader::build(304, None).expect("header");
        for (name, value) in fields {
            nm.append_header(name.to_string(), *value).expect("valid");
        }
        nm
    }

    fn stored(fields: &[(&str, &str)]) -> http::HeaderMap {
        not_modified(fields).headers.clone()
    }

    #[test]
    fn a_304_updates_only_the_response_its_validators_name() {
        let strong = stored(&[("etag", "\"v1\"")]);
        let weak = stored(&[("etag", "W/\"v1\"")]);
        let other = |nm: &[(&str, &str)], s: &http::HeaderMap| {
            names_another_representation(s, &not_modified(nm))
        };
        // Strong: the same strong tag only.
        assert!(!other(&[("etag", "\"v1\"")], &strong));
        assert!(other(&[("etag", "\"v2\"")], &strong));
        assert!(other(&[("etag", "\"v1\"")], &weak));
        // Weak: the same tag by weak comparison.
        assert!(!other(&[("etag", "W/\"v1\"")], &weak));
        assert!(!other(&[("etag", "W/\"v1\"")], &strong));
        assert!(other(&[("etag", "W/\"v2\"")], &weak));
        assert!(other(&[("etag", "W/\"v2\"")], &strong));
        // Two tags are not the stored one's, whichever comes first.
        assert!(other(&[("etag", "\"v1\""), ("etag", "\"v2\"")], &strong));
        // A tag where none was stored names something else.
        assert!(other(&[("etag", "W/\"v1\"")], &stored(&[])));
        // No tag: Last-Modified must be the same time, however it is written.
        let dated = stored(&[("last-modified", "Wed, 01 Jan 2020 00:00:00 GMT")]);
        assert!(!other(
            &[("last-modified", "Wed, 01 Jan 2020 00:00:00 GMT")],
            &dated
        ));
        assert!(!other(
            &[("last-modified", "Wednesday, 01-Jan-20 00:00:00 GMT")],
            &dated
        ));
        assert!(other(
            &[("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT")],
            &dated
        ));
        assert!(other(
            &[("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT")],
            &strong
        ));
        // No validator at all: the stored response the conditional asked about.
        assert!(!other(&[], &strong));
        assert!(!other(&[], &stored(&[])));
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
