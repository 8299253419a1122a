//! The fields that frame a message's body (RFC 9112 §6), checked the same way whichever side
//! sent them: a body framed one way when read and described another way when stored or
//! passed on is a corrupt cache entry or a desynchronised connection.
//!
//! Pingora decodes `chunked` and nothing else. A message whose `Transfer-Encoding` lists any
//! other coding (`gzip, chunked`) would have its chunks decoded and the other coding dropped
//! without a trace: the bytes stay gzip while no field says so. Such a message is refused.

use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;
use pingora::http::ResponseHeader;

/// Whether `Transfer-Encoding` is absent or names exactly one coding, `chunked`: the only
/// framing cachet reads and writes.
pub fn only_chunked(headers: &HeaderMap) -> bool {
    let mut codings = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty());
    match codings.next() {
        None => !headers.contains_key(header::TRANSFER_ENCODING),
        Some(first) => first.eq_ignore_ascii_case(b"chunked") && codings.next().is_none(),
    }
}

/// The one length that repeated `Content-Length` values (lines or a comma-separated list)
/// agree on, to replace them with (RFC 9110 §8.6), or a single value written otherwise than
/// as its plain number (`007`); `None` when there is at most one value written so, nothing to
/// fold. Values that disagree or are not digits only are an error: Pingora reads `+5` as 5,
/// and a peer that read it otherwise (as no length, or refused it) would frame the body
/// differently from cachet on the same connection.
pub fn folded_content_length(headers: &HeaderMap) -> Result<Option<u64>, &'static str> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    let plain =
        |v: &[u8]| !v.is_empty() && v.iter().all(u8::is_ascii_digit) && (v == b"0" || v[0] != b'0');
    if values.next().is_none() && plain(first.as_bytes()) {
        return Ok(None);
    }
    let mut length: Option<u64> = None;
    for part in headers
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
    {
        let parsed = std::str::from_utf8(part.trim_ascii())
            .ok()
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse::<u64>().ok())
            .ok_or("a Content-Length value is not a number")?;
        if length.is_some_and(|l| l != parsed) {
            return Err("Content-Length values disagree");
        }
        length = Some(parsed);
    }
    Ok(length)
}

/// Whether HTTP allows this status to carry content (RFC 9110 §6.4.1): not an interim
/// response, a 204 or a 304.
pub(crate) fn status_has_content(status: StatusCode) -> bool {
    !(status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED)
}

/// Checks an origin's response head before it is stored or relayed, and writes its framing
/// fields in the one form a client reads unambiguously. The error says why it is refused.
pub fn check_origin_response(resp: &mut ResponseHeader) -> Result<(), &'static str> {
    // RFC 9110 §15: a status code is three digits from 100 to 599; anything else (600, 999)
    // is not HTTP that a client can be given.
    if !(100..=599).contains(&resp.status.as_u16()) {
        return Err("the origin's status code is outside 100-599");
    }
    if !only_chunked(&resp.headers) {
        return Err("the origin used a transfer coding other than chunked");
    }
    // A 204 or an interim response has no content and must not claim a length (§8.6):
    // a client that believed it would wait for bytes that never come. A 304 keeps its field:
    // it may state the length of the representation it validates.
    if resp.status == StatusCode::NO_CONTENT || resp.status.is_informational() {
        resp.remove_header(&header::CONTENT_LENGTH);
        return Ok(());
    }
    if let Some(length) = folded_content_length(&resp.headers)? {
        resp.insert_header(header::CONTENT_LENGTH, HeaderValue::from(length))
            .map_err(|_| "a Content-Length value is not a number")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(fields: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in fields {
            map.append(
                header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn response(status: u16, fields: &[(&str, &str)]) -> ResponseHeader {
        let mut resp = ResponseHeader::build(status, None).unwrap();
        for (name, value) in fields {
            resp.append_header(name.to_string(), *value).unwrap();
        }
        resp
    }

    #[test]
    fn statuses_without_content() {
        for status in [204, 304, 100, 103] {
            assert!(
                !status_has_content(StatusCode::from_u16(status).unwrap()),
                "{status}"
            );
        }
        for status in [200, 206, 404, 500, 503] {
            assert!(
                status_has_content(StatusCode::from_u16(status).unwrap()),
                "{status}"
            );
        }
    }

    #[test]
    fn chunked_alone_is_the_only_transfer_coding_read() {
        for ok in [&[][..], &["chunked"], &["Chunked"], &[" chunked "]] {
            let fields: Vec<_> = ok.iter().map(|v| ("transfer-encoding", *v)).collect();
            assert!(only_chunked(&headers(&fields)), "{ok:?}");
        }
        for refused in [
            &["gzip, chunked"][..],
            &["gzip", "chunked"],
            &["chunked, gzip"],
            &["chunked, chunked"],
            &["identity"],
            &[""],
            &[","],
        ] {
            let fields: Vec<_> = refused.iter().map(|v| ("transfer-encoding", *v)).collect();
            assert!(!only_chunked(&headers(&fields)), "{refused:?}");
        }
    }

    #[test]
    fn agreeing_lengths_fold_and_disagreeing_ones_are_errors() {
        assert_eq!(folded_content_length(&headers(&[])), Ok(None));
        let one = headers(&[("content-length", "5")]);
        assert_eq!(folded_content_length(&one), Ok(None));
        let list = headers(&[("content-length", "5, 5")]);
        assert_eq!(folded_content_length(&list), Ok(Some(5)));
        let padded = headers(&[("content-length", "007")]);
        assert_eq!(folded_content_length(&padded), Ok(Some(7)));
        let zero = headers(&[("content-length", "0")]);
        assert_eq!(folded_content_length(&zero), Ok(None));
        let lines = headers(&[("content-length", "5"), ("content-length", "5")]);
        assert_eq!(folded_content_length(&lines), Ok(Some(5)));
        for bad in [
            &["3, 4"][..],
            &["3", "4"],
            &["3, x"],
            &["3,"],
            &["-3", "-3"],
            &["+3"],
            &["-3"],
            &["3x"],
            &["0x3"],
            &[""],
        ] {
            let fields: Vec<_> = bad.iter().map(|v| ("content-length", *v)).collect();
            assert!(folded_content_length(&headers(&fields)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn origin_responses_are_framed_one_way() {
        let mut gzip = response(200, &[("transfer-encoding", "gzip, chunked")]);
        assert!(check_origin_response(&mut gzip).is_err());

        let mut no_content = response(204, &[("content-length", "5"), ("x-kept", "1")]);
        assert_eq!(check_origin_response(&mut no_content), Ok(()));
        assert!(no_content.headers.get("content-length").is_none());
        assert_eq!(no_content.headers["x-kept"], "1");

        let mut repeated = response(200, &[("content-length", "5, 5")]);
        assert_eq!(check_origin_response(&mut repeated), Ok(()));
        let lengths: Vec<_> = repeated.headers.get_all("content-length").iter().collect();
        assert_eq!(lengths, ["5"]);

        let mut plain = response(200, &[("content-length", "7")]);
        assert_eq!(check_origin_response(&mut plain), Ok(()));
        assert_eq!(plain.headers["content-length"], "7");
    }
}
