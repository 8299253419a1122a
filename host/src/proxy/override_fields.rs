//! Fields some frameworks read to override a request's method or target (Symfony,
//! Laravel, IIS URL Rewrite, many API gateways): to such an origin, `GET /` with
//! `X-HTTP-Method-Override: DELETE` or `X-Original-URL: /admin` is another request than
//! its cache key says, and its answer would be stored for everyone who asks for `/`. No
//! key holds these fields, so a request carrying one never uses the cache; it still
//! reaches the origin as sent.

use http::HeaderName;
use pingora::http::RequestHeader;

/// As `HeaderName`s, so every request's check compares the names without parsing them again.
static OVERRIDE_FIELDS: [HeaderName; 5] = [
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
];

/// The first override field `req` carries.
pub fn present(req: &RequestHeader) -> Option<&'static HeaderName> {
    super::field_presence::first_present(&req.headers, &OVERRIDE_FIELDS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_override_fields_in_any_case() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        assert_eq!(present(&req), None);
        req.insert_header("X-Original-URL", "/admin").unwrap();
        assert_eq!(
            present(&req).map(HeaderName::as_str),
            Some("x-original-url")
        );
    }
}
