//! Whether a client's conditional request is answered 304 from a stored response.

use pingora::http::{RequestHeader, ResponseHeader};

/// Pingora's rule (RFC 9110 §13.2.2: `If-None-Match` first, weak comparison, then
/// `If-Modified-Since`), and `If-None-Match: *`, which matches any current representation
/// (§13.1.2) but which Pingora matches only against a stored `ETag`: a stored 200 without
/// one was sent whole.
///
/// And for `If-Modified-Since` alone, two cases Pingora does not judge (RFC 9111 §4.3.2,
/// RFC 9110 §13.1.3): a stored response without `Last-Modified` is compared by its `Date`
/// (Pingora sent it whole), and a request with the field more than once has it ignored
/// (Pingora read the first).
pub fn not_modified(req: &RequestHeader, resp: &ResponseHeader) -> bool {
    use http::header::{DATE, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
    let ok_get = resp.status == http::StatusCode::OK
        && matches!(req.method, http::Method::GET | http::Method::HEAD);
    let any_representation = ok_get
        && req
            .headers
            .get_all(IF_NONE_MATCH)
            .iter()
            .any(|value| value.as_bytes().trim_ascii() == b"*");
    if any_representation {
        return true;
    }
    if !req.headers.contains_key(IF_NONE_MATCH) {
        let mut since = req.headers.get_all(IF_MODIFIED_SINCE).iter();
        match (since.next(), since.next()) {
            (Some(_), Some(_)) => return false,
            (Some(since), None) if ok_get && !resp.headers.contains_key(LAST_MODIFIED) => {
                let since = super::http_date::parse(since);
                let date = resp.headers.get(DATE).and_then(super::http_date::parse);
                return since.zip(date).is_some_and(|(since, date)| since >= date);
            }
            _ => {}
        }
    }
    pingora::protocols::http::conditional_filter::not_modified_filter(req, resp)
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

    #[test]
    fn if_modified_since_falls_back_to_the_date_and_is_ignored_when_repeated() {
        let since = |dates: &[&str]| {
            let mut req = request("GET", None);
            for date in dates {
                req.append_header("if-modified-since", *date)
                    .expect("field");
            }
            req
        };
        let (earlier, sent, later) = (
            "Tue, 01 Dec 2026 09:00:00 GMT",
            "Tue, 01 Dec 2026 10:00:00 GMT",
            "Tue, 01 Dec 2026 11:00:00 GMT",
        );
        let mut dated = stored(200, Some("W/\"v1\""));
        dated.insert_header("date", sent).expect("field");
        assert!(not_modified(&since(&[sent]), &dated));
        assert!(not_modified(&since(&[later]), &dated));
        assert!(!not_modified(&since(&[earlier]), &dated));
        assert!(!not_modified(&since(&[later, later]), &dated), "repeated");
        // With Last-Modified, Pingora's comparison against it.
        dated.insert_header("last-modified", later).expect("field");
        assert!(!not_modified(&since(&[sent]), &dated));
        assert!(not_modified(&since(&[later]), &dated));
        assert!(!not_modified(&since(&[later, later]), &dated), "repeated");
    }
}
