//! Whether a client's conditional request is answered 304 from a stored response.

use pingora::http::{RequestHeader, ResponseHeader};

/// Pingora's rule (RFC 9110 §13.2.2: `If-None-Match` first, weak comparison, then
/// `If-Modified-Since`), and `If-None-Match: *`, which matches any current representation
/// (§13.1.2) but which Pingora matches only against a stored `ETag`: a stored 200 without
/// one was sent whole.
pub fn not_modified(req: &RequestHeader, resp: &ResponseHeader) -> bool {
    let any_representation = resp.status == http::StatusCode::OK
        && matches!(req.method, http::Method::GET | http::Method::HEAD)
        && req
            .headers
            .get_all(http::header::IF_NONE_MATCH)
            .iter()
            .any(|value| value.as_bytes().trim_ascii() == b"*");
    any_representation
        || pingora::protocols::http::conditional_filter::not_modified_filter(req, resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, inm: Option<&str>) -> RequestHeader {
        let mut req = RequestHeader::build(method, b"/a", None).expect("request");
        if let Some(inm) = inm {
            req.insert_header("if-none-match", inm).expect("field");
        }
        req
    }

    fn stored(status: u16, etag: Option<&str>) -> ResponseHeader {
        let mut resp = ResponseHeader::build(status, None).expect("response");
        if let Some(etag) = etag {
            resp.insert_header("etag", etag).expect("field");
        }
        resp
    }

    #[test]
    fn a_star_matches_any_stored_200_tagged_or_not() {
        assert!(not_modified(&request("GET", Some("*")), &stored(200, None)));
        assert!(not_modified(
            &request("HEAD", Some(" * ")),
            &stored(200, Some("\"a\""))
        ));
        assert!(!not_modified(
            &request("GET", Some("*")),
            &stored(404, None)
        ));
        assert!(!not_modified(
            &request("POST", Some("*")),
            &stored(200, None)
        ));
        assert!(!not_modified(&request("GET", None), &stored(200, None)));
        assert!(!not_modified(
            &request("GET", Some("\"b\"")),
            &stored(200, Some("\"a\""))
        ));
        assert!(not_modified(
            &request("GET", Some("W/\"a\"")),
            &stored(200, Some("\"a\""))
        ));
    }
}
