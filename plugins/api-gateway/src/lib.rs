//! API gateway: `/admin` is refused at the edge, per-user requests skip the
//! cache, `/api/` responses are micro-cached, and each path prefix can go to
//! its own backend (plugin config `backends = "/api/=api, /media/=media"`,
//! names from the tenant's `[tenant.backends]`).

mod admin_path;
mod backend_routes;
mod status;

use std::time::Duration;

use cachet_sdk::{
    config, defaults, names_a_credential, Policy, Request, RequestDecision, RequestEdits, Response,
    ResponseDecision, StoreDirective, SyntheticResponse, TestVector,
};

use admin_path::{canonical_path, is_admin_path};
use backend_routes::BackendRoutes;

const API_PREFIX: &str = "/api/";
/// Short enough that clients barely notice, long enough to absorb bursts.
const API_TTL: Duration = Duration::from_secs(10);
const API_STALE_WHILE_REVALIDATE: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct ApiGateway {
    routes: BackendRoutes,
}

impl ApiGateway {
    /// Reads the prefix routes from the tenant's plugin config.
    pub fn from_config() -> Self {
        Self {
            routes: BackendRoutes::parse(&config("backends").unwrap_or_default()),
        }
    }
}

impl Policy for ApiGateway {
    fn on_request(&self, req: &Request) -> RequestDecision {
        if is_admin_path(&req.path()) {
            return RequestDecision::Respond(SyntheticResponse::text(403, "forbidden\n"));
        }
        let decision = defaults::on_request(req);
        if decision != RequestDecision::Cache {
            return decision;
        }
        // Per-user answers must never be shared. An API knows its caller by a credential
        // field under any of many names (`Authorization`, `X-Api-Key`, `X-Auth-Token`, ...)
        // or by a cookie of any name (`connect.sid`, `sessionid`, ...): only a request with
        // neither is anonymous.
        if req.has_header("cookie") {
            return RequestDecision::bypass("cookie");
        }
        if let Some(name) = req
            .header_names()
            .into_iter()
            .find(|n| names_a_credential(n))
        {
            return RequestDecision::bypass(format!("credential field {name}"));
        }
        RequestDecision::Cache
    }

    fn edit_request(&self, req: &Request, edits: &mut RequestEdits) {
        if let Some(backend) = self.routes.backend_for(&canonical_path(&req.path())) {
            edits.backend(backend);
        }
    }

    fn on_response(&self, req: &Request, resp: &Response) -> ResponseDecision {
        if !canonical_path(&req.path()).starts_with(API_PREFIX) {
            return ResponseDecision::FollowOrigin;
        }
        let cache_control = resp.cache_control();
        if cache_control.no_store() {
            return ResponseDecision::no_store("origin sent no-store");
        }
        if cache_control.private() {
            return ResponseDecision::no_store("origin sent private");
        }
        // The micro-cache is for answers the origin said nothing about. One that says how
        // long it stays fresh (max-age=0 included) or that it must be revalidated each time
        // (no-cache) is kept as it says.
        let explicit = cache_control.no_cache()
            || cache_control.max_age().is_some()
            || cache_control.s_maxage().is_some()
            || resp.has_header("expires");
        if explicit {
            return ResponseDecision::FollowOrigin;
        }
        // Micro-caching a 5xx or a cookie-setting response would spread one
        // client's outcome to everyone; leave those to RFC 9111.
        if !status::is_cacheable_by_default(resp.status()) || resp.has_header("set-cookie") {
            return ResponseDecision::FollowOrigin;
        }
        StoreDirective::new(API_TTL)
            .with_stale_while_revalidate(API_STALE_WHILE_REVALIDATE)
            .into()
    }

    fn self_test(&self) -> Vec<TestVector> {
        vec![
            TestVector::get("http://example.com/admin").expect_respond(403),
            TestVector::post("http://example.com/x/../%61dmin/users").expect_respond(403),
            TestVector::get("http://example.com/administrator").expect_cache(),
            TestVector::get("http://example.com/api/me")
                .header("Authorization", "Bearer t")
                .expect_bypass(),
            TestVector::get("http://example.com/api/me")
                .header("Cookie", "theme=dark Session=alice")
                .expect_bypass(),
            TestVector::get("http://example.com/api/me")
                .header("Cookie", "connect.sid=s%3Aabc")
                .expect_bypass(),
            TestVector::get("http://example.com/api/me")
                .header("X-Api-Key", "k1")
                .expect_bypass(),
            TestVector::get("http://example.com/api/items")
                .expect_cache()
                .with_response(200, &[("cache-control", "no-cache")])
                .expect_follow_origin(),
            TestVector::get("http://example.com/api/items?page=2")
                .expect_cache()
                .expect_key(["example.com", "/api/items", "page=2"])
                .with_response(200, &[("content-type", "application/json")])
                .expect_store(API_TTL),
            TestVector::get("http://example.com/api/items")
                .expect_cache()
                .with_response(200, &[("cache-control", "private")])
                .expect_no_store(),
        ]
    }
}

cachet_sdk::export_policy!(ApiGateway, ApiGateway::from_config());

#[cfg(test)]
mod tests {
    use super::*;
    use cachet_sdk::testing;

    #[test]
    fn path_prefixes_pick_backends() {
        let gateway = ApiGateway {
            routes: BackendRoutes::parse("/api/=api, /media/=media"),
        };
        let mut edits = RequestEdits::default();
        gateway.edit_request(&get("http://example.com/api/items"), &mut edits);
        assert_eq!(edits.backend.as_deref(), Some("api"));
        let mut edits = RequestEdits::default();
        gateway.edit_request(&get("http://example.com/about"), &mut edits);
        assert_eq!(edits.backend, None);
        // Routed as the origin resolves the path, not by its raw text.
        for (uri, backend) in [
            ("http://example.com/api/../internal/secret.txt", None),
            ("http://example.com/api/%2e%2e/internal/secret.txt", None),
            ("http://example.com/x/../api/items", Some("api")),
        ] {
            let mut edits = RequestEdits::default();
            gateway.edit_request(&get(uri), &mut edits);
            assert_eq!(edits.backend.as_deref(), backend, "{uri}");
        }
    }

    #[test]
    fn self_test_vectors_pass() {
        testing::check_self_tests(&ApiGateway::default());
    }

    fn get(uri: &str) -> Request {
        Request::builder().uri(uri).build()
    }

    fn micro_cached() -> ResponseDecision {
        ResponseDecision::Store(StoreDirective {
            ttl: Duration::from_secs(10),
            stale_while_revalidate: Duration::from_secs(60),
            stale_if_error: Duration::ZERO,
            tags: Vec::new(),
        })
    }

    #[test]
    fn admin_and_below_are_forbidden_by_the_plugin() {
        for uri in [
            "http://example.com/admin",
            "http://example.com/admin/users?x=1",
        ] {
            let RequestDecision::Respond(resp) = ApiGateway::default().on_request(&get(uri)) else {
                panic!("{uri} was not answered by the plugin");
            };
            assert_eq!(resp.status, 403);
            assert_eq!(
                resp.headers,
                [("content-type".into(), "text/plain; charset=utf-8".into())]
            );
            assert_eq!(resp.body, b"forbidden\n");
        }
    }

    #[test]
    fn admin_block_applies_to_every_method() {
        let req = Request::builder()
            .method("POST")
            .uri("http://example.com/admin/x")
            .build();
        assert!(matches!(
            ApiGateway::default().on_request(&req),
            RequestDecision::Respond(_)
        ));
    }

    #[test]
    fn lookalike_paths_are_not_admin() {
        for uri in [
            "http://example.com/administrator",
            "http://example.com/api/admin",
        ] {
            assert_eq!(
                ApiGateway::default().on_request(&get(uri)),
                RequestDecision::Cache,
                "{uri}"
            );
        }
    }

    #[test]
    fn per_user_requests_bypass_with_distinct_reasons() {
        let with = |name: &str, value: &str| {
            let req = Request::builder()
                .uri("http://example.com/api/me")
                .header(name, value)
                .build();
            ApiGateway::default().on_request(&req)
        };
        for (name, value, reason) in [
            (
                "Authorization",
                "Bearer t",
                "credential field authorization",
            ),
            ("X-Api-Key", "k1", "credential field x-api-key"),
            ("X-Auth-Token", "t1", "credential field x-auth-token"),
            ("X-Session-Id", "s1", "credential field x-session-id"),
            ("Cookie", "theme=dark; session=s1", "cookie"),
            ("Cookie", "connect.sid=s%3Aabc", "cookie"),
            ("Cookie", "sessionid=abc", "cookie"),
            (
                "X-Forwarded-User",
                "alice",
                "credential field x-forwarded-user",
            ),
            (
                "X-Ms-Client-Principal",
                "e30=",
                "credential field x-ms-client-principal",
            ),
            ("Cookie2", "$Version=1", "credential field cookie2"),
        ] {
            assert_eq!(with(name, value), RequestDecision::bypass(reason), "{name}");
        }
    }

    /// Any cookie may name the caller (`connect.sid`, `sid`, `sessionid`, ...): only a request
    /// without one is anonymous.
    #[test]
    fn only_requests_without_credentials_or_cookies_are_cached() {
        let plain = Request::builder()
            .uri("http://example.com/api/items")
            .header("Accept", "application/json")
            .header("Accept-Language", "en")
            .build();
        assert_eq!(
            ApiGateway::default().on_request(&plain),
            RequestDecision::Cache
        );
    }

    #[test]
    fn non_get_head_bypass() {
        let req = Request::builder()
            .method("DELETE")
            .uri("http://example.com/api/items/1")
            .build();
        assert_eq!(
            ApiGateway::default().on_request(&req),
            RequestDecision::bypass("method DELETE")
        );
        let req = Request::builder()
            .method("HEAD")
            .uri("http://example.com/api/items")
            .build();
        assert_eq!(
            ApiGateway::default().on_request(&req),
            RequestDecision::Cache
        );
    }

    #[test]
    fn api_responses_are_micro_cached() {
        let req = get("http://example.com/api/items?page=2");
        let plain = Response::builder().build();
        assert_eq!(
            ApiGateway::default().on_response(&req, &plain),
            micro_cached()
        );
        // Only answers the origin said nothing about: its own freshness (max-age=0
        // included), no-cache or Expires is followed.
        for (name, value) in [
            ("Cache-Control", "max-age=3600"),
            ("Cache-Control", "max-age=0"),
            ("Cache-Control", "s-maxage=5"),
            // Malformed: stale at once to the proxy, so not micro-cached for a second.
            ("Cache-Control", "max-age=1h"),
            ("Cache-Control", "s-maxage"),
            ("Cache-Control", "no-cache"),
            ("Expires", "Thu, 01 Jan 1970 00:00:00 GMT"),
        ] {
            let said = Response::builder().header(name, value).build();
            assert_eq!(
                ApiGateway::default().on_response(&req, &said),
                ResponseDecision::FollowOrigin,
                "{name}: {value}"
            );
        }
        let not_found = Response::builder().status(404).build();
        assert_eq!(
            ApiGateway::default().on_response(&req, &not_found),
            micro_cached()
        );
    }

    #[test]
    fn api_responses_the_origin_forbids_are_not_stored() {
        let req = get("http://example.com/api/items");
        let no_store = Response::builder()
            .header("Cache-Control", "no-store")
            .build();
        assert_eq!(
            ApiGateway::default().on_response(&req, &no_store),
            ResponseDecision::no_store("origin sent no-store")
        );
        let private = Response::builder()
            .header("cache-control", "private, max-age=60")
            .build();
        assert_eq!(
            ApiGateway::default().on_response(&req, &private),
            ResponseDecision::no_store("origin sent private")
        );
    }

    #[test]
    fn errors_and_cookie_setting_api_responses_follow_the_origin() {
        let req = get("http://example.com/api/items");
        for resp in [
            Response::builder().status(500).build(),
            Response::builder().status(503).build(),
            Response::builder().header("Set-Cookie", "a=1").build(),
        ] {
            assert_eq!(
                ApiGateway::default().on_response(&req, &resp),
                ResponseDecision::FollowOrigin
            );
        }
    }

    #[test]
    fn other_paths_follow_the_origin() {
        let resp = Response::builder().build();
        for uri in [
            "http://example.com/",
            "http://example.com/api",
            "http://example.com/apix/1",
        ] {
            assert_eq!(
                ApiGateway::default().on_response(&get(uri), &resp),
                ResponseDecision::FollowOrigin
            );
        }
    }
}
