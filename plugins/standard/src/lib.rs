//! RFC 9111 defaults: `GET`/`HEAD` use the cache, other methods bypass it,
//! the key is host + path + query, and the host applies the origin's
//! caching headers. Every hook is the SDK default.

use cachet_sdk::{Policy, TestVector};

#[derive(Default)]
pub struct Standard;

impl Policy for Standard {
    fn self_test(&self) -> Vec<TestVector> {
        vec![
            TestVector::get("http://example.com/a?b=1&a=2")
                .expect_cache()
                .expect_key(["example.com", "/a", "b=1&a=2"])
                .with_response(200, &[("cache-control", "no-store")])
                .expect_follow_origin(),
            // An empty query is still a query: `/a?` and `/a` differ.
            TestVector::head("/a?")
                .header("Host", "Example.com")
                .expect_cache()
                .expect_key(["example.com", "/a", ""]),
            TestVector::post("http://example.com/form").expect_bypass(),
            // Methods are case-sensitive: `get` is not `GET`.
            TestVector::request("get", "http://example.com/").expect_bypass(),
        ]
    }
}

cachet_sdk::export_policy!(Standard);

#[cfg(test)]
mod tests {
    use super::*;
    use cachet_sdk::{testing, Request, RequestDecision, Response, ResponseDecision};

    #[test]
    fn self_test_vectors_pass() {
        testing::check_self_tests(&Standard);
    }

    #[test]
    fn get_and_head_use_the_cache() {
        for method in ["GET", "HEAD"] {
            let req = Request::builder()
                .method(method)
                .uri("http://example.com/")
                .build();
            assert_eq!(Standard.on_request(&req), RequestDecision::Cache);
        }
    }

    #[test]
    fn other_methods_bypass_with_reason() {
        for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
            let req = Request::builder()
                .method(method)
                .uri("http://example.com/")
                .build();
            assert_eq!(
                Standard.on_request(&req),
                RequestDecision::Bypass(format!("method {method}"))
            );
        }
    }

    #[test]
    fn key_is_host_path_and_query() {
        let req = Request::builder()
            .uri("http://example.com/a?b=1&a=2")
            .build();
        assert_eq!(Standard.cache_key(&req), ["example.com", "/a", "b=1&a=2"]);
        let req = Request::builder().uri("http://example.com/a").build();
        assert_eq!(Standard.cache_key(&req), ["example.com", "/a"]);
    }

    #[test]
    fn responses_follow_the_origin() {
        let req = Request::builder().uri("http://example.com/a").build();
        for cache_control in ["max-age=60", "no-store", "private"] {
            let resp = Response::builder()
                .header("cache-control", cache_control)
                .build();
            assert_eq!(
                Standard.on_response(&req, &resp),
                ResponseDecision::FollowOrigin
            );
        }
    }
}
