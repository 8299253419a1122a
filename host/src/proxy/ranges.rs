//! Which `Range` requests are answered with parts (RFC 9110 §14). Pingora's range filter
//! answered `bytes=-0` on a stored 200 with `Content-Range: bytes 20-19/20` and then broke the
//! connection, underflowed on an empty body (`bytes 0-18446744073709551615/0`), sent fewer
//! bytes than a multipart answer's `Content-Length` said, turned a suffix too large for a
//! number into a 416, and ranged HEAD answers (probe AN). A server may ignore `Range`
//! (§14.2): such requests get the whole representation, a 200.

use super::http_date;
use http::header::{ACCEPT_RANGES, CONTENT_LENGTH, DATE, IF_RANGE, LAST_MODIFIED, RANGE};
use pingora::http::{RequestHeader, ResponseHeader};
use std::time::Duration;

/// Whether Pingora's range filter may answer `req` with parts of `resp`: a GET (§14.2: range
/// handling is defined for GET only), a representation that is not empty, and a `bytes` range
/// set whose every spec is a pair of numbers that fit, in order, with no zero-length suffix
/// (`-0`).
pub(super) fn may_answer_with_parts(req: &RequestHeader, resp: &ResponseHeader) -> bool {
    if req.method != http::Method::GET {
        return false;
    }
    let mut fields = req.headers.get_all(RANGE).iter();
    let Some(range) = fields.next() else {
        return true;
    };
    // `Range` is no list: two fields are no range set (Pingora answered with the first).
    if fields.next().is_some() {
        return false;
    }
    let Ok(range) = range.to_str() else {
        return false;
    };
    let not_empty = resp
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|length| length > 0);
    not_empty && specs_are_plain(range) && if_range_date_may_hold(req, resp)
}

/// The whole representation, with `Accept-Ranges` as Pingora gives a 200 it could have
/// answered in parts: a HEAD then gets the fields its GET would (RFC 9110 §9.3.2).
pub(super) fn whole(resp: &mut ResponseHeader) {
    let length = resp
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok());
    if resp.status == http::StatusCode::OK && length.is_some_and(|v| v.parse::<u64>().is_ok()) {
        let _ = resp.insert_header(ACCEPT_RANGES, "bytes");
    }
}

/// An `If-Range` date holds only against a strong `Last-Modified`, one at least a second
/// before the response's `Date` (RFC 9110 §13.1.5, §8.8.2.2): Pingora compares the date with
/// `Last-Modified` alone, and answered with parts of a response that may have changed twice
/// within that second. (A weak entity tag was dropped with the range on arrival; a strong one
/// is Pingora's to compare.)
fn if_range_date_may_hold(req: &RequestHeader, resp: &ResponseHeader) -> bool {
    let Some(if_range) = req.headers.get(IF_RANGE) else {
        return true;
    };
    if if_range.as_bytes().trim_ascii_start().starts_with(b"\"") {
        return true;
    }
    let time = |name| resp.headers.get(name).and_then(http_date::parse);
    let (Some(last_modified), Some(date)) = (time(LAST_MODIFIED), time(DATE)) else {
        return false;
    };
    date.duration_since(last_modified)
        .is_ok_and(|before| before >= Duration::from_secs(1))
}

/// `bytes=` followed by specs whose numbers fit in 64 bits, whose suffixes are not empty and
/// whose last positions are not before their first.
fn specs_are_plain(range: &str) -> bool {
    let Some((unit, specs)) = range.split_once('=') else {
        return false;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return false;
    }
    specs
        .split(',')
        .map(str::trim)
        .filter(|spec| !spec.is_empty())
        .all(|spec| {
            let Some((first, last)) = spec.split_once('-') else {
                return false;
            };
            let number = |text: &str| text.trim().parse::<u64>().ok();
            match (first.trim().is_empty(), last.trim().is_empty()) {
                (true, false) => number(last).is_some_and(|suffix| suffix > 0),
                (false, true) => number(first).is_some(),
                // RFC 9110 §14.1.1: `5-2` is invalid, so the Range is ignored (Pingora
                // skipped it as unsatisfiable: a 416, or the other specs' parts).
                (false, false) => number(first)
                    .zip(number(last))
                    .is_some_and(|(first, last)| first <= last),
                (true, true) => false,
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(method: &str, range: &str, length: &str) -> (RequestHeader, ResponseHeader) {
        let mut req = RequestHeader::build(method, b"/", None).unwrap();
        req.insert_header("range", range).unwrap();
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("content-length", length).unwrap();
        (req, resp)
    }

    #[test]
    fn only_plain_ranges_of_a_get_on_a_body_are_answered_with_parts() {
        for range in [
            "bytes=0-9",
            "bytes=5-",
            "bytes=-5",
            "bytes=0-1, 4-5",
            "BYTES=0-0",
            "bytes=3-3",
        ] {
            let (req, resp) = exchange("GET", range, "20");
            assert!(may_answer_with_parts(&req, &resp), "{range}");
        }
        for range in [
            "bytes=-0",
            "bytes=0-1,-0",
            "bytes=-99999999999999999999",
            "bytes=0-99999999999999999999",
            "bytes=5-2",
            "bytes=0-1, 5-2",
            "items=0-1",
            "bytes=-",
            "bytes",
        ] {
            let (req, resp) = exchange("GET", range, "20");
            assert!(!may_answer_with_parts(&req, &resp), "{range}");
        }
        let (req, resp) = exchange("GET", "bytes=-1", "0");
        assert!(!may_answer_with_parts(&req, &resp), "an empty body");
        let (req, resp) = exchange("HEAD", "bytes=0-1", "20");
        assert!(!may_answer_with_parts(&req, &resp), "HEAD");
        let (mut req, resp) = exchange("GET", "bytes=0-1", "20");
        req.append_header("range", "bytes=2-3").unwrap();
        assert!(!may_answer_with_parts(&req, &resp), "two Range fields");
    }

    #[test]
    fn an_if_range_date_holds_only_against_a_strong_last_modified() {
        let (mut req, mut resp) = exchange("GET", "bytes=0-3", "20");
        let modified = "Tue, 01 Dec 2026 10:00:00 GMT";
        req.insert_header("if-range", modified).unwrap();
        resp.insert_header("last-modified", modified).unwrap();
        resp.insert_header("date", modified).unwrap();
        assert!(
            !may_answer_with_parts(&req, &resp),
            "modified the second it was sent"
        );
        resp.insert_header("date", "Tue, 01 Dec 2026 10:00:01 GMT")
            .unwrap();
        assert!(may_answer_with_parts(&req, &resp), "a second later: strong");
        resp.remove_header("date");
        assert!(!may_answer_with_parts(&req, &resp), "no Date to tell");
        // An entity tag is Pingora's to compare.
        req.insert_header("if-range", "\"v1\"").unwrap();
        assert!(may_answer_with_parts(&req, &resp));
    }

    #[test]
    fn the_whole_representation_says_it_accepts_ranges_when_it_could_have_parts() {
        let (_, mut resp) = exchange("HEAD", "bytes=0-3", "20");
        whole(&mut resp);
        assert_eq!(resp.headers["accept-ranges"], "bytes");
        let (_, mut chunked) = exchange("HEAD", "bytes=0-3", "20");
        chunked.remove_header("content-length");
        whole(&mut chunked);
        assert!(chunked.headers.get("accept-ranges").is_none());
    }
}
