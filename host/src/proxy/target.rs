//! The request as the plugin, the cache key and the origin all see it.
//!
//! Pingora keeps a request target that is not origin-form (`/path`) verbatim
//! for the wire while `uri` holds only `/` (or the URL's path), so anything
//! read from `uri` (the plugin's path, the cache key) could differ from what
//! the origin is sent. Here every accepted request is brought to origin-form
//! before any policy runs; targets that have no origin-form are refused.

use pingora::http::authority::{is_http_family_scheme, raw_target_authority, RawTargetAuthority};
use pingora::http::RequestHeader;

/// Refuses a URL naming user information (`http://user@host/`), as the proxy answers such a
/// request 400: explaining it or running it as a plugin's test vector would describe no
/// request a policy ever sees.
pub fn refuse_userinfo(uri: &http::Uri, written: &str) -> Result<(), String> {
    match uri.authority() {
        Some(authority) if authority.as_str().contains('@') => Err(format!(
            "{written:?}: the proxy refuses user information in a URL (400), so no policy sees \
             such a request"
        )),
        _ => Ok(()),
    }
}

/// Rewrites an absolute-form `http(s)://host/path` target to `/path` (with
/// `Host` from the URL, which Pingora has already checked against any `Host`
/// sent) and refuses every other form but `*` for OPTIONS. The error says why.
pub fn to_origin_form(req: &mut RequestHeader) -> Result<(), &'static str> {
    if !req.raw_path_is_utf8() {
        return Err("the request target is not valid UTF-8");
    }
    let raw = req.raw_path();
    if raw.first() == Some(&b'/') {
        return Ok(());
    }
    if raw == b"*" {
        return if req.method == http::Method::OPTIONS {
            Ok(())
        } else {
            Err("only OPTIONS may use the asterisk target")
        };
    }
    let RawTargetAuthority::Absolute {
        scheme, authority, ..
    } = raw_target_authority(raw)
    else {
        return Err("the request target must be a path or an http(s) URL");
    };
    if !is_http_family_scheme(scheme) || authority.is_empty() {
        return Err("the request target must be a path or an http(s) URL");
    }
    let authority = http::HeaderValue::from_bytes(authority)
        .map_err(|_| "the request target's authority is not a valid host")?;
    // Pingora put the URL's path (anchored at `/`) into `uri`: forward exactly that.
    let path = req
        .uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned());
    req.set_raw_path(path.as_bytes())
        .map_err(|_| "the request target's path is not valid")?;
    // HTTP/1.1 requires `Host` even with a URL (RFC 9112 §3.2): left missing, it is refused
    // with the other Host errors. HTTP/1.0 gets it from the URL.
    if !req.headers.contains_key(http::header::HOST) && req.version < http::Version::HTTP_11 {
        req.insert_header(http::header::HOST, authority)
            .map_err(|_| "the request target's authority is not a valid host")?;
    }
    Ok(())
}

/// Whether the request head used a bare LF as a line end. Pingora's parser
/// accepts it, so `A: x\nB: y` becomes two fields here while a peer that only
/// honours CRLF sees one: refused rather than forwarded ambiguously.
pub fn has_bare_lf(raw_head: &[u8]) -> bool {
    raw_head
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || raw_head[i - 1] != b'\r'))
}

/// Whether the request says it carries a body.
pub fn has_body(req: &RequestHeader) -> bool {
    req.headers.contains_key(http::header::TRANSFER_ENCODING)
        || req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes().trim_ascii() != b"0")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(method: &str, raw: &str) -> (Result<(), &'static str>, RequestHeader) {
        let mut req = RequestHeader::build(method, raw.as_bytes(), None).expect("request");
        (to_origin_form(&mut req), req)
    }

    #[test]
    fn origin_form_is_kept() {
        let (ok, req) = target("GET", "/a/b?c=d");
        assert_eq!(ok, Ok(()));
        assert_eq!(req.raw_path(), b"/a/b?c=d");
    }

    #[test]
    fn absolute_form_becomes_origin_form() {
        let (ok, req) = target("GET", "http://Example.com/x?y=1");
        assert_eq!(ok, Ok(()));
        assert_eq!(req.raw_path(), b"/x?y=1");
        assert_eq!(req.uri.path(), "/x");
        assert!(
            req.headers.get("host").is_none(),
            "HTTP/1.1 gets no Host made up"
        );
        let mut http10 = RequestHeader::build("GET", b"http://Example.com/x?y=1", None).unwrap();
        http10.set_version(http::Version::HTTP_10);
        assert_eq!(to_origin_form(&mut http10), Ok(()));
        assert_eq!(http10.raw_path(), b"/x?y=1");
        assert_eq!(http10.headers["host"], "Example.com");
        let (ok, req) = target("GET", "http://example.com");
        assert_eq!(ok, Ok(()));
        assert_eq!(req.raw_path(), b"/");
    }

    #[test]
    fn other_forms_are_refused() {
        for raw in [
            "evil-target?cc=max-age%3D600",
            "p.test:80",
            "x:/admin",
            "mailto:a@b",
            "ftp://example.com/admin",
        ] {
            assert!(target("GET", raw).0.is_err(), "{raw} accepted");
        }
        assert!(target("GET", "*").0.is_err());
        assert_eq!(target("OPTIONS", "*").0, Ok(()));
    }

    #[test]
    fn bare_line_feeds() {
        assert!(!has_bare_lf(b"GET / HTTP/1.1\r\nA: b\r\n\r\n"));
        assert!(has_bare_lf(b"GET / HTTP/1.1\r\nA: b\nC: d\r\n\r\n"));
        assert!(has_bare_lf(b"GET / HTTP/1.1\n\n"));
    }
}
