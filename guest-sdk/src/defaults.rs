//! The behaviour of [`Policy`](crate::Policy)'s default hooks, callable from
//! your own hooks so that you only special-case what you need.

use crate::{Request, RequestDecision};

/// Whether requests with this method may be served from the cache by default.
/// Methods are case-sensitive (RFC 9110 §9.1), so `get` is not `GET`.
pub fn is_cacheable_method(method: &str) -> bool {
    matches!(method, "GET" | "HEAD")
}

/// `GET` and `HEAD` use the cache; any other method bypasses it with the
/// reason `"method <METHOD>"`.
pub fn on_request(req: &Request) -> RequestDecision {
    let method = req.method();
    if is_cacheable_method(&method) {
        RequestDecision::Cache
    } else {
        RequestDecision::Bypass(format!("method {method}"))
    }
}

/// `[host, path]`, plus the raw query when the URI has one (even an empty
/// one: `/a?` and `/a` are different URIs).
pub fn cache_key(req: &Request) -> Vec<String> {
    let mut parts = vec![req.host(), req.path()];
    parts.extend(req.query());
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_methods_use_the_cache() {
        for method in ["GET", "HEAD"] {
            let req = Request::builder().method(method).build();
            assert_eq!(on_request(&req), RequestDecision::Cache);
        }
    }

    #[test]
    fn other_methods_bypass_with_the_method_in_the_reason() {
        let req = Request::builder().method("POST").build();
        assert_eq!(on_request(&req), RequestDecision::bypass("method POST"));
        let req = Request::builder().method("get").build();
        assert_eq!(on_request(&req), RequestDecision::bypass("method get"));
    }

    #[test]
    fn key_is_host_path_and_query_when_present() {
        let req = Request::builder().uri("http://Example.com/a/b?x=1").build();
        assert_eq!(cache_key(&req), ["example.com", "/a/b", "x=1"]);
        let req = Request::builder().uri("http://example.com/a/b").build();
        assert_eq!(cache_key(&req), ["example.com", "/a/b"]);
        let req = Request::builder().uri("http://example.com/a/b?").build();
        assert_eq!(cache_key(&req), ["example.com", "/a/b", ""]);
    }
}
