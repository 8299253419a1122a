//! Fields some frameworks read to override a request's method or target (Symfony,
//! Laravel, IIS URL Rewrite, many API gateways): to such an origin, `GET /` with
//! `X-HTTP-Method-Override: DELETE` or `X-Original-URL: /admin` is another request than
//! its cache key says, and its answer would be stored for everyone who asks for `/`. No
//! key holds these fields, so a request carrying one never uses the cache; it still
//! reaches the origin as sent.

use pingora::http::RequestHeader;

const OVERRIDE_FIELDS: [&str; 5] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
];

/// The first override field `req` carries.
pub fn present(req: &RequestHeader) -> Option<&'static str> {
    OVERRIDE_FIELDS
        .into_iter()
        .find(|name| req.headers.contains_key(*name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_override_fields_in_any_case() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        assert_eq!(present(&req), None);
        req.insert_header("X-Original-URL", "/admin").unwrap();
        assert_eq!(present(&req), Some("x-original-url"));
    }
}
