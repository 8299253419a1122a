//! A typical Varnish VCL, ported to a cachet policy. Each hook names the VCL
//! subroutine it replaces (plugins/README.md has the full mapping):
//!
//! ```vcl
//! sub vcl_recv {
//!     if (req.url ~ "\.(css|js|png|...)$") { unset req.http.Cookie; }
//!     else { # keep only session and lang
//!         set req.http.Cookie = regsuball(req.http.Cookie, ...); }
//!     if (req.http.Cookie ~ "session=") { return (pass); }
//! }
//! sub vcl_backend_response {
//!     if (bereq.url ~ "\.(css|js|png|...)$") {
//!         unset beresp.http.Set-Cookie; set beresp.ttl = 7d; }
//!     elsif (beresp.http.Set-Cookie) {
//!         set beresp.uncacheable = true; set beresp.ttl = 120s; return (deliver); }
//!     set beresp.grace = 6h;
//! }
//! sub vcl_deliver { set resp.http.Cache-Control = "public, max-age=..."; unset resp.http.X-Powered-By; }
//! sub vcl_backend_error { synthetic(std.fileread("/etc/varnish/503.html")); return (deliver); }
//! ```

mod cookies;
mod static_files;

use cachet_sdk::prelude::*;
use static_files::is_static;

/// Static files are fingerprinted: keep them a week.
const STATIC_TTL: Duration = Duration::from_secs(7 * 86_400);
/// How long the browser keeps a static file.
const STATIC_BROWSER_MAX_AGE: &str = "public, max-age=86400";
/// Pages without freshness from the origin are kept this long.
const PAGE_TTL: Duration = Duration::from_secs(120);
/// Grace: a stale page is served while one request refreshes it...
const GRACE: Duration = Duration::from_secs(6 * 3600);
/// ...and for a day while the origin is down.
const STALE_IF_ERROR: Duration = Duration::from_secs(86_400);
/// Hit-for-pass after a response that sets a cookie.
const HIT_FOR_PASS: Duration = Duration::from_secs(120);

/// The page served when the origin is down and nothing stale is left.
const ERROR_PAGE: &str = "<!doctype html>\n<title>Back soon</title>\n<h1>We'll be right back</h1>\n<p>The site is being updated. Please try again in a minute.</p>\n";

#[derive(Default)]
pub struct VclPort;

impl Policy for VclPort {
    /// `vcl_recv`'s decision: logged-in users pass.
    fn on_request(&self, req: &Request) -> RequestDecision {
        let decision = defaults::on_request(req);
        if decision != RequestDecision::Cache {
            return decision;
        }
        // In any spelling a lenient origin reads as `session` (`Session=`, after a space):
        // the session cookie itself is dropped below, so such a request would be cached
        // anonymously while the origin could still see a login in another cookie's value.
        if !is_static(&req.path()) && req.may_carry_cookie("session") {
            return RequestDecision::bypass("logged-in user");
        }
        RequestDecision::Cache
    }

    /// `vcl_recv`'s clean-up: static files get no cookies, pages keep only
    /// the ones the origin reads; every response gets `vcl_deliver`.
    fn edit_request(&self, req: &Request, edits: &mut RequestEdits) {
        if is_static(&req.path()) {
            edits.remove_header("cookie");
        } else {
            edits.keep_cookies(req, cookies::is_kept);
        }
        edits.edit_delivery();
    }

    /// `vcl_hash`: host and URL, plus the language cookie on pages (the
    /// cookie the edited request still carries).
    fn cache_key(&self, req: &Request) -> Vec<String> {
        let mut key = defaults::cache_key(req);
        if !is_static(&req.path()) {
            // `lang=` (empty) and no `lang` are different pages to an origin that falls back
            // to a default language only when the cookie is missing.
            key.push(match req.cookie("lang") {
                Some(lang) => format!("lang={lang}"),
                None => "no lang".to_owned(),
            });
        }
        key
    }

    /// `vcl_backend_response`: TTLs, grace, hit-for-pass.
    fn on_response(&self, req: &Request, resp: &Response) -> ResponseDecision {
        let cache_control = resp.cache_control();
        if cache_control.no_store() || cache_control.private() {
            return ResponseDecision::no_store("origin forbids sharing");
        }
        // builtin.vcl makes these uncacheable too (for static files as well): an answer that
        // must be revalidated on each use, or is stale at once, is not for grace to serve.
        let stale_at_once = cache_control
            .s_maxage()
            .or_else(|| cache_control.max_age())
            .is_some_and(|ttl| ttl.is_zero());
        if cache_control.no_cache() || stale_at_once {
            return ResponseDecision::no_store("origin wants each use revalidated");
        }
        if is_static(&req.path()) {
            return if resp.status() == 200 {
                StoreDirective::new(STATIC_TTL).into()
            } else {
                ResponseDecision::FollowOrigin
            };
        }
        if resp.has_header("set-cookie") {
            return ResponseDecision::pass_for(HIT_FOR_PASS);
        }
        if resp.status() != 200 {
            return ResponseDecision::FollowOrigin;
        }
        let origin_ttl = cache_control.s_maxage().or_else(|| cache_control.max_age());
        if origin_ttl.is_none() && resp.has_header("expires") {
            // Freshness from a date (perhaps already past): the host reads it as RFC 9111
            // says, where the page default would keep a page the origin says is stale.
            return ResponseDecision::FollowOrigin;
        }
        let ttl = match origin_ttl {
            // As Varnish does: the origin's lifetime counts from when the response was made,
            // and an `Age` says how much of it a cache before us has used already.
            Some(lifetime) => lifetime.saturating_sub(resp.age().unwrap_or_default()),
            None => PAGE_TTL,
        };
        if ttl.is_zero() {
            return ResponseDecision::no_store("stale on arrival");
        }
        StoreDirective::new(ttl)
            .with_stale_while_revalidate(GRACE)
            .with_stale_if_error(STALE_IF_ERROR)
            .into()
    }

    /// `unset beresp.http.Set-Cookie` on static files, before storing.
    fn edit_response(&self, req: &Request, _resp: &Response, edits: &mut HeaderEdits) {
        if is_static(&req.path()) {
            edits.remove("set-cookie");
        }
    }

    /// `vcl_deliver`: the browser's Cache-Control, apart from the cache's
    /// TTL, and no server fingerprint. What the origin said must not be kept
    /// or shared (`no-store`, `private`) reaches the browser as it said it (the
    /// VCL's blanket `set` turned a user's `private` avatar into a week of
    /// `public` and a page's `no-store` into `no-cache`), and only a 200 asset
    /// is made public: a 404 kept for a week would outlive the fix.
    fn on_deliver(&self, req: &Request, resp: &Response, edits: &mut HeaderEdits) {
        edits.remove("x-powered-by");
        let cache_control = resp.cache_control();
        if cache_control.no_store() || cache_control.private() {
            return;
        }
        if is_static(&req.path()) && resp.status() == 200 {
            edits.set("cache-control", STATIC_BROWSER_MAX_AGE);
        } else {
            edits.set("cache-control", "no-cache");
        }
    }

    /// `vcl_backend_error`: a branded 503 page instead of the proxy's error.
    fn on_error(&self, _req: &Request, _failure: OriginFailure) -> Option<SyntheticResponse> {
        Some(
            SyntheticResponse::new(503)
                .with_header("content-type", "text/html; charset=utf-8")
                .with_header("retry-after", "60")
                .with_header("cache-control", "no-store")
                .with_body(ERROR_PAGE),
        )
    }

    fn self_test(&self) -> Vec<TestVector> {
        vec![
            TestVector::get("http://example.com/app.js")
                .header("Cookie", "session=abc; _ga=1")
                .expect_cache()
                .expect_key(["example.com", "/app.js"])
                .with_response(200, &[("set-cookie", "tracking=1")])
                .expect_store(STATIC_TTL),
            TestVector::get("http://example.com/news")
                .header("Cookie", "_ga=1; lang=fr")
                .expect_cache()
                .expect_key(["example.com", "/news", "lang=fr"])
                .with_response(200, &[])
                .expect_store(PAGE_TTL),
            TestVector::get("http://example.com/account")
                .header("Cookie", "session=abc")
                .expect_bypass(),
            TestVector::get("http://example.com/account")
                .header("Cookie", "lang=fr Session=abc")
                .expect_bypass(),
            TestVector::get("http://example.com/news")
                .header("Cookie", "lang=")
                .expect_cache()
                .expect_key(["example.com", "/news", "lang="]),
            TestVector::get("http://example.com/news")
                .expect_cache()
                .expect_key(["example.com", "/news", "no lang"]),
            TestVector::get("http://example.com/login")
                .expect_cache()
                .with_response(200, &[("set-cookie", "session=new")])
                .expect_pass_for(HIT_FOR_PASS),
            TestVector::get("http://example.com/news")
                .expect_cache()
                .with_response(200, &[("cache-control", "no-cache")])
                .expect_no_store(),
            TestVector::get("http://example.com/news")
                .expect_cache()
                .with_response(200, &[("cache-control", "public, max-age=0")])
                .expect_no_store(),
            TestVector::get("http://example.com/app.js")
                .expect_cache()
                .with_response(200, &[("cache-control", "no-cache")])
                .expect_no_store(),
            TestVector::get("http://example.com/news")
                .expect_cache()
                .with_response(200, &[("expires", "Thu, 01 Jan 1970 00:00:00 GMT")])
                .expect_follow_origin(),
        ]
    }
}

cachet_sdk::export_policy!(VclPort);

#[cfg(test)]
mod tests {
    use super::*;
    use cachet_sdk::testing;

    #[test]
    fn self_test_vectors_pass() {
        testing::check_self_tests(&VclPort);
    }

    fn edited(req: &Request) -> Request {
        let mut edits = RequestEdits::default();
        VclPort.edit_request(req, &mut edits);
        assert!(edits.deliver, "vcl_deliver runs for every response");
        req.edited(&edits)
    }

    #[test]
    fn cookies_are_normalised_before_key_and_origin() {
        let page = Request::builder()
            .uri("http://example.com/news")
            .header("Cookie", "_ga=1; lang=fr; ab_test=b")
            .build();
        let page = edited(&page);
        assert_eq!(page.header("cookie").as_deref(), Some("lang=fr"));
        assert_eq!(
            VclPort.cache_key(&page),
            ["example.com", "/news", "lang=fr"]
        );

        let asset = Request::builder()
            .uri("http://example.com/site.css")
            .header("Cookie", "session=abc")
            .build();
        assert_eq!(VclPort.on_request(&asset), RequestDecision::Cache);
        assert_eq!(edited(&asset).header("cookie"), None);
    }

    #[test]
    fn pages_get_grace_and_the_origins_ttl() {
        let req = Request::builder().uri("http://example.com/news").build();
        let resp = Response::builder()
            .header("Cache-Control", "max-age=30")
            .build();
        assert_eq!(
            VclPort.on_response(&req, &resp),
            StoreDirective::new(Duration::from_secs(30))
                .with_stale_while_revalidate(GRACE)
                .with_stale_if_error(STALE_IF_ERROR)
                .into()
        );
        let private = Response::builder()
            .header("Cache-Control", "private")
            .build();
        assert_eq!(
            VclPort.on_response(&req, &private),
            ResponseDecision::no_store("origin forbids sharing")
        );
    }

    #[test]
    fn a_pages_ttl_is_what_its_age_leaves_of_the_origins_lifetime() {
        let req = Request::builder().uri("http://example.com/news").build();
        let aged = |age: &str, cache_control: &str| {
            let resp = Response::builder()
                .header("Cache-Control", cache_control)
                .header("Age", age)
                .build();
            VclPort.on_response(&req, &resp)
        };
        assert_eq!(
            aged("3000", "max-age=3600"),
            StoreDirective::new(Duration::from_secs(600))
                .with_stale_while_revalidate(GRACE)
                .with_stale_if_error(STALE_IF_ERROR)
                .into()
        );
        let spent = ResponseDecision::no_store("stale on arrival");
        assert_eq!(aged("3600", "max-age=3600"), spent);
        assert_eq!(aged("9000", "s-maxage=60, max-age=99999"), spent);
        // Malformed is stale at once, as the proxy reads it, not the page default.
        assert_eq!(
            aged("0", "max-age=1h"),
            ResponseDecision::no_store("origin wants each use revalidated")
        );
    }

    #[test]
    fn delivery_sets_browser_caching_and_hides_the_server() {
        let asset = Request::builder().uri("http://example.com/a.png").build();
        let resp = Response::builder().build();
        let mut edits = HeaderEdits::new();
        VclPort.on_deliver(&asset, &resp, &mut edits);
        let headers = edits.applied_to(&[
            ("Cache-Control".into(), "max-age=604800".into()),
            ("X-Powered-By".into(), "PHP".into()),
        ]);
        assert_eq!(
            headers,
            [(
                "cache-control".to_string(),
                STATIC_BROWSER_MAX_AGE.to_string()
            )]
        );
    }

    #[test]
    fn delivery_keeps_what_the_origin_said_must_not_be_kept_or_shared() {
        let asset = Request::builder()
            .uri("http://example.com/avatar.png")
            .build();
        for origin in ["private, max-age=60", "no-store"] {
            let resp = Response::builder().header("cache-control", origin).build();
            let mut edits = HeaderEdits::new();
            VclPort.on_deliver(&asset, &resp, &mut edits);
            let headers = edits.applied_to(&[("Cache-Control".into(), origin.into())]);
            assert_eq!(headers, [("Cache-Control".to_string(), origin.to_string())]);
        }
        let missing = Response::builder().status(404).build();
        let mut edits = HeaderEdits::new();
        VclPort.on_deliver(&asset, &missing, &mut edits);
        let headers = edits.applied_to(&[]);
        assert_eq!(
            headers,
            [("cache-control".to_string(), "no-cache".to_string())]
        );
    }

    #[test]
    fn the_origin_down_gets_the_branded_page() {
        let req = Request::builder().uri("http://example.com/").build();
        let page = VclPort
            .on_error(&req, OriginFailure::Unreachable)
            .expect("a page");
        assert_eq!(page.status, 503);
        assert_eq!(page.body, ERROR_PAGE.as_bytes());
    }
}
