//! Static assets: tracking parameters never split the cache (and the origin
//! is sent the same normalised query the key holds), analytics cookies never
//! reach the origin, static files without origin freshness are kept for a
//! day, and a static file's cookies are noise: stripped from the request and
//! its `Set-Cookie` from the stored response, so it can be shared.

mod encoding;
mod static_path;
mod tracking;

use std::time::Duration;

use cachet_sdk::{
    defaults, HeaderEdits, Policy, Request, RequestDecision, RequestEdits, Response,
    ResponseDecision, TestVector,
};

use static_path::is_static_path;

/// How long a static file is kept when the origin gave no freshness.
const STATIC_TTL: Duration = Duration::from_secs(86_400);

#[derive(Default)]
pub struct StaticAssets;

impl Policy for StaticAssets {
    fn on_request(&self, req: &Request) -> RequestDecision {
        let decision = defaults::on_request(req);
        if decision != RequestDecision::Cache {
            return decision;
        }
        // Static files are the same for everyone, so their cookies are noise;
        // elsewhere a cookie other than an analytics one may personalise the page.
        if !is_static_path(&req.path()) && has_own_cookie(req) {
            return RequestDecision::bypass("cookie on dynamic path");
        }
        RequestDecision::Cache
    }

    fn edit_request(&self, req: &Request, edits: &mut RequestEdits) {
        if is_static_path(&req.path()) {
            edits.remove_header("cookie");
        } else {
            edits.keep_cookies(req, |name| !tracking::is_tracking_cookie(name));
        }
        // The origin gets the query the key holds: no tracking parameters, sorted, and no
        // `?` at all when nothing is left (the key then has no query part either).
        let normalized = tracking::normalized_query(req.query_params()).to_string();
        let wanted = (!normalized.is_empty()).then_some(normalized);
        if req.query() != wanted {
            let target = match wanted {
                Some(query) => format!("{}?{query}", req.path()),
                None => req.path(),
            };
            edits.rewrite_path(target);
        }
    }

    fn cache_key(&self, req: &Request) -> Vec<String> {
        let mut parts = vec![req.host(), req.path()];
        let query = tracking::normalized_query(req.query_params());
        if !query.is_empty() {
            parts.push(query.to_string());
        }
        parts
    }

    fn on_response(&self, req: &Request, resp: &Response) -> ResponseDecision {
        if !is_static_path(&req.path()) {
            return ResponseDecision::FollowOrigin;
        }
        let cache_control = resp.cache_control();
        if cache_control.no_store() {
            return ResponseDecision::no_store("origin sent no-store");
        }
        if cache_control.private() {
            return ResponseDecision::no_store("origin sent private");
        }
        // Only fill in missing freshness. An origin that asked for
        // revalidation (no-cache) keeps RFC 9111 handling. A Set-Cookie does
        // not matter: `edit_response` strips it before the host judges.
        let origin_decides =
            resp.status() != 200 || resp.has_explicit_freshness() || cache_control.no_cache();
        if origin_decides {
            return ResponseDecision::FollowOrigin;
        }
        ResponseDecision::store(STATIC_TTL)
    }

    /// A static file is the same for everyone: a cookie it sets would be
    /// handed to every visitor, and keeps the host from storing it.
    fn edit_response(&self, req: &Request, _resp: &Response, edits: &mut HeaderEdits) {
        if is_static_path(&req.path()) {
            edits.remove("set-cookie");
        }
    }

    /// Origins vary static files on Accept-Encoding; the same header spelled
    /// differently (case, spaces, order) shares one variant.
    fn vary_value(&self, req: &Request, name: &str) -> Option<String> {
        (name == "accept-encoding").then(|| encoding::canonical(&req.header_all("accept-encoding")))
    }

    fn self_test(&self) -> Vec<TestVector> {
        vec![
            TestVector::get("http://example.com/a.css?utm_source=x&b=1&a=2")
                .expect_cache()
                .expect_key(["example.com", "/a.css", "a=2&b=1"]),
            TestVector::get("http://example.com/app.JS")
                .header("Cookie", "session=abc")
                .expect_cache(),
            TestVector::get("http://example.com/account")
                .header("Cookie", "session=abc")
                .expect_bypass(),
            TestVector::get("http://example.com/img/logo.png")
                .expect_cache()
                .with_response(200, &[("content-type", "image/png")])
                .expect_store(STATIC_TTL),
            TestVector::get("http://example.com/site.css")
                .expect_cache()
                .with_response(200, &[("cache-control", "max-age=60")])
                .expect_follow_origin(),
            TestVector::get("http://example.com/site.css")
                .expect_cache()
                .with_response(200, &[("cache-control", "private")])
                .expect_no_store(),
            // A targeted field governs (RFC 9213): its lifetime is the origin's word, and
            // Cache-Control's no-store is not meant for CDNs.
            TestVector::get("http://example.com/site.css")
                .expect_cache()
                .with_response(
                    200,
                    &[
                        ("cache-control", "no-store"),
                        ("cdn-cache-control", "max-age=60"),
                    ],
                )
                .expect_follow_origin(),
        ]
    }
}

/// Whether the request carries a cookie other than an analytics one.
fn has_own_cookie(req: &Request) -> bool {
    req.header_all("cookie")
        .iter()
        .flat_map(|line| line.split(';'))
        .filter_map(|pair| pair.split_once('='))
        .any(|(name, _)| !tracking::is_tracking_cookie(name.trim()))
}

cachet_sdk::export_policy!(StaticAssets);

#[cfg(test)]
mod tests {
    use super::*;
    use cachet_sdk::testing;

    #[test]
    fn self_test_vectors_pass() {
        testing::check_self_tests(&StaticAssets);
    }

    fn get(uri: &str) -> Request {
        Request::builder().uri(uri).build()
    }

    fn get_with_cookie(uri: &str) -> Request {
        Request::builder()
            .uri(uri)
            .header("Cookie", "session=abc")
            .build()
    }

    fn ok_with(headers: &[(&str, &str)]) -> Response {
        headers
            .iter()
            .fold(Response::builder(), |builder, (name, value)| {
                builder.header(*name, *value)
            })
            .build()
    }

    #[test]
    fn tracking_parameters_and_order_do_not_split_the_key() {
        let tracked = get("http://example.com/a?utm_source=x&b=2&a=1");
        let clean = get("http://example.com/a?a=1&b=2");
        assert_eq!(
            StaticAssets.cache_key(&tracked),
            StaticAssets.cache_key(&clean)
        );
        assert_eq!(
            StaticAssets.cache_key(&clean),
            ["example.com", "/a", "a=1&b=2"]
        );
    }

    #[test]
    fn query_of_only_tracking_parameters_keys_like_no_query() {
        let tracked = get("http://example.com/a?utm_campaign=y&fbclid=1&gclid=2");
        assert_eq!(StaticAssets.cache_key(&tracked), ["example.com", "/a"]);
        assert_eq!(
            StaticAssets.cache_key(&get("http://example.com/a")),
            ["example.com", "/a"]
        );
    }

    #[test]
    fn cookie_is_ignored_on_static_paths() {
        let req = get_with_cookie("http://example.com/app.JS?v=3");
        assert_eq!(StaticAssets.on_request(&req), RequestDecision::Cache);
        assert_eq!(
            StaticAssets.cache_key(&req),
            ["example.com", "/app.JS", "v=3"]
        );
    }

    #[test]
    fn cookie_on_dynamic_path_bypasses() {
        let req = get_with_cookie("http://example.com/account");
        assert_eq!(
            StaticAssets.on_request(&req),
            RequestDecision::bypass("cookie on dynamic path")
        );
        assert_eq!(
            StaticAssets.on_request(&get("http://example.com/account")),
            RequestDecision::Cache
        );
    }

    #[test]
    fn unsafe_methods_bypass_even_for_static_paths() {
        let req = Request::builder()
            .method("POST")
            .uri("http://example.com/a.css")
            .build();
        assert_eq!(
            StaticAssets.on_request(&req),
            RequestDecision::bypass("method POST")
        );
    }

    #[test]
    fn static_200_without_freshness_is_kept_a_day() {
        let req = get("http://example.com/img/logo.png");
        let resp = ok_with(&[("Content-Type", "image/png"), ("Cache-Control", "public")]);
        assert_eq!(
            StaticAssets.on_response(&req, &resp),
            ResponseDecision::store(Duration::from_secs(86_400))
        );
    }

    #[test]
    fn origin_freshness_is_followed() {
        let req = get("http://example.com/site.css");
        for header in [
            ("Cache-Control", "max-age=60"),
            ("Cache-Control", "s-maxage=60"),
            ("Expires", "Thu, 01 Jan 2099 00:00:00 GMT"),
        ] {
            let resp = ok_with(&[header]);
            assert_eq!(
                StaticAssets.on_response(&req, &resp),
                ResponseDecision::FollowOrigin
            );
        }
    }

    #[test]
    fn targeted_fields_govern_freshness() {
        let req = get("http://example.com/site.css");
        for headers in [
            &[("CDN-Cache-Control", "max-age=1")][..],
            &[
                ("Cache-Control", "max-age=86400"),
                ("CDN-Cache-Control", "max-age=1"),
            ],
            &[
                ("Cache-Control", "no-store"),
                ("Cachet-Cache-Control", "max-age=60"),
            ],
        ] {
            assert_eq!(
                StaticAssets.on_response(&req, &ok_with(headers)),
                ResponseDecision::FollowOrigin,
                "{headers:?}"
            );
        }
        // An invalid targeted field is ignored: Cache-Control's no-store applies.
        let resp = ok_with(&[
            ("Cache-Control", "no-store"),
            ("CDN-Cache-Control", "max-age=x"),
        ]);
        assert_eq!(
            StaticAssets.on_response(&req, &resp),
            ResponseDecision::no_store("origin sent no-store")
        );
    }

    #[test]
    fn no_store_and_private_are_never_stored() {
        let req = get("http://example.com/site.css");
        let resp = ok_with(&[("Cache-Control", "max-age=60, no-store")]);
        assert_eq!(
            StaticAssets.on_response(&req, &resp),
            ResponseDecision::no_store("origin sent no-store")
        );
        let resp = ok_with(&[("Cache-Control", "private")]);
        assert_eq!(
            StaticAssets.on_response(&req, &resp),
            ResponseDecision::no_store("origin sent private")
        );
    }

    #[test]
    fn non_200_revalidate_and_set_cookie_follow_the_origin() {
        let req = get("http://example.com/site.css");
        let not_found = Response::builder().status(404).build();
        assert_eq!(
            StaticAssets.on_response(&req, &not_found),
            ResponseDecision::FollowOrigin
        );
        let resp = ok_with(&[("Cache-Control", "no-cache")]);
        assert_eq!(
            StaticAssets.on_response(&req, &resp),
            ResponseDecision::FollowOrigin
        );
    }

    #[test]
    fn a_static_files_set_cookie_is_stripped_so_it_is_stored() {
        let req = get("http://example.com/site.css");
        let resp = ok_with(&[("Set-Cookie", "a=1")]);
        assert_eq!(
            StaticAssets.on_response(&req, &resp),
            ResponseDecision::store(Duration::from_secs(86_400))
        );
        let mut edits = HeaderEdits::new();
        StaticAssets.edit_response(&req, &resp, &mut edits);
        assert!(edits
            .applied_to(&[("Set-Cookie".into(), "a=1".into())])
            .is_empty());
        let mut edits = HeaderEdits::new();
        StaticAssets.edit_response(&get("http://example.com/account"), &resp, &mut edits);
        assert!(edits.is_empty(), "dynamic pages keep their cookies");
    }

    #[test]
    fn analytics_cookies_never_reach_the_origin_nor_force_a_bypass() {
        let req = Request::builder()
            .uri("http://example.com/page")
            .header("Cookie", "_ga=GA1.1; _gid=2")
            .build();
        assert_eq!(StaticAssets.on_request(&req), RequestDecision::Cache);
        let mut edits = RequestEdits::default();
        StaticAssets.edit_request(&req, &mut edits);
        assert_eq!(req.edited(&edits).header("cookie"), None);

        let req = Request::builder()
            .uri("http://example.com/page")
            .header("Cookie", "_ga=GA1.1; session=abc")
            .build();
        assert_eq!(
            StaticAssets.on_request(&req),
            RequestDecision::bypass("cookie on dynamic path")
        );
        let mut edits = RequestEdits::default();
        StaticAssets.edit_request(&req, &mut edits);
        assert_eq!(
            req.edited(&edits).header("cookie").as_deref(),
            Some("session=abc")
        );
    }

    #[test]
    fn the_origin_gets_the_query_the_key_holds() {
        let req = get_with_cookie("http://example.com/app.js?utm_source=x&v=3&a=1");
        let mut edits = RequestEdits::default();
        StaticAssets.edit_request(&req, &mut edits);
        let edited = req.edited(&edits);
        assert_eq!(edited.query().as_deref(), Some("a=1&v=3"));
        assert_eq!(edited.header("cookie"), None, "static files get no cookies");
        assert_eq!(
            StaticAssets.cache_key(&edited),
            StaticAssets.cache_key(&req)
        );
        // Already normalised: nothing to rewrite (a background refresh changes nothing).
        let mut again = RequestEdits::default();
        StaticAssets.edit_request(&edited, &mut again);
        assert_eq!(again.path_and_query, None);
        // An empty query keys like none, so the origin gets none.
        for target in ["http://example.com/p?", "http://example.com/p?&&"] {
            let mut edits = RequestEdits::default();
            StaticAssets.edit_request(&get(target), &mut edits);
            assert_eq!(edits.path_and_query.as_deref(), Some("/p"), "{target}");
        }
    }

    #[test]
    fn dynamic_paths_follow_the_origin() {
        let req = get("http://example.com/index.html");
        assert_eq!(
            StaticAssets.on_response(&req, &ok_with(&[])),
            ResponseDecision::FollowOrigin
        );
    }
}
