//! Shared-cache rules for requests carrying `Authorization` (RFC 9111 §3.5): such a request
//! may only be answered from, or fill, an entry whose response explicitly allows sharing.

use cachet_sdk::CacheControl;
use pingora::http::{RequestHeader, ResponseHeader};

pub fn authorized(req: &RequestHeader) -> bool {
    req.headers.contains_key(http::header::AUTHORIZATION)
}

/// Whether directives allow sharing a response to an authorized request: `public`,
/// `s-maxage` or `must-revalidate`.
pub fn allows_authorized(cc: Option<&CacheControl>) -> bool {
    cc.is_some_and(|cc| cc.public() || cc.has("s-maxage") || cc.must_revalidate())
}

/// Whether a stored response may answer this request.
pub fn may_serve(req: &RequestHeader, stored: &ResponseHeader) -> bool {
    !authorized(req)
        || allows_authorized(
            super::directives::effective(stored)
                .as_ref()
                .map(|d| &d.cache_control),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(cc: &str) -> ResponseHeader {
        let mut r = ResponseHeader::build(200, None).expect("header");
        r.insert_header("cache-control", cc).expect("valid");
        r
    }

    #[test]
    fn only_explicitly_shareable_entries_answer_authorized_requests() {
        let mut req = RequestHeader::build("GET", b"/", None).expect("request");
        assert!(may_serve(&req, &stored("max-age=60")));
        req.insert_header("authorization", "Bearer x")
            .expect("valid");
        assert!(!may_serve(&req, &stored("max-age=60")));
        for cc in [
            "public, max-age=60",
            "s-maxage=60",
            "max-age=60, must-revalidate",
        ] {
            assert!(may_serve(&req, &stored(cc)), "{cc}");
        }
    }
}
