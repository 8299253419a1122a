//! Which cache directives govern cachet (RFC 9213 targeted fields), and which headers are
//! cachet's own business and never go downstream.

use pingora::http::ResponseHeader;
use pingora_cache::cache_control::CacheControl;

/// Targeted at cachet alone; wins over everything else.
pub const CACHET_CACHE_CONTROL: &str = "cachet-cache-control";
/// Targeted at any CDN (RFC 9213); wins over `Cache-Control`.
pub const CDN_CACHE_CONTROL: &str = "cdn-cache-control";
/// Purge tags from the origin, space-separated (the Fastly/Akamai convention).
pub const SURROGATE_KEY: &str = "surrogate-key";

/// The directives cachet follows: the most specific field present. When a targeted field is
/// present the less specific ones are ignored entirely (RFC 9213 §2.1).
pub fn effective(resp: &ResponseHeader) -> Option<CacheControl> {
    [CACHET_CACHE_CONTROL, CDN_CACHE_CONTROL, "cache-control"]
        .into_iter()
        .find(|name| resp.headers.contains_key(*name))
        .and_then(|name| CacheControl::from_resp_headers_named(name, resp))
}

/// Removes what only cachet should see: the targeted fields, purge tags and the stored tag
/// list. `Cache-Control` itself is for the client and stays.
pub fn strip_downstream(resp: &mut ResponseHeader) {
    for name in [
        CACHET_CACHE_CONTROL,
        CDN_CACHE_CONTROL,
        SURROGATE_KEY,
        crate::storage::TAGS_HEADER,
    ] {
        resp.remove_header(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(200, None).expect("header");
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).expect("valid header");
        }
        r
    }

    fn max_age(headers: &[(&str, &str)]) -> Option<u32> {
        effective(&resp(headers)).and_then(|cc| cc.max_age().ok().flatten())
    }

    #[test]
    fn most_specific_field_wins() {
        let cc = ("Cache-Control", "max-age=1");
        let cdn = ("CDN-Cache-Control", "max-age=2");
        let own = ("Cachet-Cache-Control", "max-age=3");
        assert_eq!(max_age(&[cc]), Some(1));
        assert_eq!(max_age(&[cc, cdn]), Some(2));
        assert_eq!(max_age(&[cc, cdn, own]), Some(3));
        assert_eq!(max_age(&[own, cc]), Some(3));
    }

    #[test]
    fn targeted_field_replaces_cache_control_entirely() {
        let r = resp(&[
            ("Cache-Control", "private, no-store"),
            ("CDN-Cache-Control", "max-age=60"),
        ]);
        let cc = effective(&r).expect("parsed");
        assert!(!cc.private() && !cc.no_store());
    }

    #[test]
    fn internal_headers_are_stripped() {
        let mut r = resp(&[
            ("Cache-Control", "max-age=1"),
            ("CDN-Cache-Control", "max-age=2"),
            ("Cachet-Cache-Control", "max-age=3"),
            ("Surrogate-Key", "a b"),
            (crate::storage::TAGS_HEADER, "a b"),
        ]);
        strip_downstream(&mut r);
        let names: Vec<_> = r.headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["cache-control"]);
    }
}
