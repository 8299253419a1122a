//! Test vectors a policy declares about itself.
//!
//! The host runs every vector against a fresh plugin instance before a new
//! version may serve, and refuses the version on the first mismatch. Natively,
//! `testing::check_self_tests` runs the same vectors, so one list is both the
//! plugin's unit test and its deployment gate.
//!
//! A vector is built in stages so that it cannot be left half-specified: a
//! [`TestRequest`] only becomes a [`TestVector`] once its request expectation
//! is given, and a [`TestResponse`] only once its response expectation is.
//!
//! ```
//! use cachet_sdk::prelude::*;
//!
//! let vectors = vec![
//!     TestVector::get("http://example.com/a?b=1")
//!         .expect_cache()
//!         .expect_key(["example.com", "/a", "b=1"]),
//!     TestVector::post("http://example.com/form").expect_bypass(),
//!     TestVector::get("http://example.com/api/x")
//!         .expect_cache()
//!         .with_response(200, &[("cache-control", "max-age=5")])
//!         .expect_follow_origin(),
//! ];
//! assert_eq!(vectors[1].name(), "POST http://example.com/form");
//! ```

use std::time::Duration;

/// What `on-request` must decide for a vector's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedRequest {
    /// [`RequestDecision::Cache`](crate::RequestDecision::Cache).
    Cache,
    /// [`RequestDecision::Bypass`](crate::RequestDecision::Bypass), any reason.
    Bypass,
    /// [`RequestDecision::Respond`](crate::RequestDecision::Respond) with this status.
    Respond(u16),
}

/// What `on-response` must decide for a vector's response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedResponse {
    /// [`ResponseDecision::Store`](crate::ResponseDecision::Store) with this
    /// TTL, compared in whole seconds as the host counts it. Stale windows
    /// and tags are not compared.
    Store(Duration),
    /// [`ResponseDecision::FollowOrigin`](crate::ResponseDecision::FollowOrigin).
    FollowOrigin,
    /// [`ResponseDecision::NoStore`](crate::ResponseDecision::NoStore), any reason.
    NoStore,
    /// [`ResponseDecision::PassFor`](crate::ResponseDecision::PassFor) for
    /// this long, in whole seconds.
    PassFor(Duration),
}

/// The request a vector sends: method, URI and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestSpec {
    pub(crate) method: String,
    /// `http://host/path?query`, or `/path?query` with a `Host` header.
    pub(crate) uri: String,
    pub(crate) headers: Vec<(String, String)>,
}

/// The origin response a vector runs through `on-response`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResponseSpec {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) expect: ExpectedResponse,
}

/// One sample exchange and the decisions the policy must make for it.
/// Return a list of them from [`Policy::self_test`](crate::Policy::self_test).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestVector {
    pub(crate) name: Option<String>,
    pub(crate) request: RequestSpec,
    pub(crate) expect: ExpectedRequest,
    pub(crate) expect_key: Option<Vec<String>>,
    pub(crate) response: Option<ResponseSpec>,
}

/// A vector's request before its expected decision is given; finish it with
/// [`expect_cache`](Self::expect_cache), [`expect_bypass`](Self::expect_bypass)
/// or [`expect_respond`](Self::expect_respond).
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a request becomes a test vector only once an expectation is given"]
pub struct TestRequest {
    name: Option<String>,
    request: RequestSpec,
}

/// A vector whose origin response still lacks its expected decision; finish
/// it with [`expect_store`](Self::expect_store),
/// [`expect_follow_origin`](Self::expect_follow_origin) or
/// [`expect_no_store`](Self::expect_no_store).
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a response needs an expectation to become part of the vector"]
pub struct TestResponse {
    vector: TestVector,
    status: u16,
    headers: Vec<(String, String)>,
}

impl TestVector {
    /// Starts a vector for a request with this method and URI: an absolute
    /// URI (`http://host/path?query`) or `/path?query` with a `Host` header.
    pub fn request(method: impl Into<String>, uri: impl Into<String>) -> TestRequest {
        TestRequest {
            name: None,
            request: RequestSpec {
                method: method.into(),
                uri: uri.into(),
                headers: Vec::new(),
            },
        }
    }

    /// Starts a vector for a `GET` of `uri`.
    pub fn get(uri: impl Into<String>) -> TestRequest {
        Self::request("GET", uri)
    }

    /// Starts a vector for a `HEAD` of `uri`.
    pub fn head(uri: impl Into<String>) -> TestRequest {
        Self::request("HEAD", uri)
    }

    /// Starts a vector for a `POST` to `uri`.
    pub fn post(uri: impl Into<String>) -> TestRequest {
        Self::request("POST", uri)
    }

    /// The name the host reports on a mismatch: the one given with
    /// [`TestRequest::named`], else `"METHOD uri"` plus the response status.
    pub fn name(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        let RequestSpec { method, uri, .. } = &self.request;
        match &self.response {
            Some(response) => format!("{method} {uri} -> {}", response.status),
            None => format!("{method} {uri}"),
        }
    }

    /// The key parts [`Policy::cache_key`](crate::Policy::cache_key) must
    /// return for this request.
    ///
    /// # Panics
    ///
    /// Unless the vector expects [`ExpectedRequest::Cache`]: the host checks
    /// keys only for cached requests, so a key on any other vector would
    /// silently never be checked.
    pub fn expect_key<I>(mut self, parts: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        assert!(
            self.expect == ExpectedRequest::Cache,
            "test vector {:?}: expect_key needs expect_cache (keys of other requests are never checked)",
            self.name()
        );
        self.expect_key = Some(parts.into_iter().map(Into::into).collect());
        self
    }

    /// Adds an origin response with this status and headers, to run through
    /// [`Policy::on_response`](crate::Policy::on_response) with this request.
    pub fn with_response(self, status: u16, headers: &[(&str, &str)]) -> TestResponse {
        TestResponse {
            vector: self,
            status,
            headers: owned_headers(headers),
        }
    }

    /// What `on-request` must decide.
    pub fn expected_request(&self) -> ExpectedRequest {
        self.expect
    }

    /// The key `cache-key` must return, if one was given.
    pub fn expected_key(&self) -> Option<&[String]> {
        self.expect_key.as_deref()
    }

    /// What `on-response` must decide, if the vector has a response.
    pub fn expected_response(&self) -> Option<ExpectedResponse> {
        self.response.as_ref().map(|response| response.expect)
    }
}

impl TestRequest {
    /// Adds a request header line (repeat for multiple values).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.request.headers.push((name.into(), value.into()));
        self
    }

    /// Names the vector instead of the default `"METHOD uri"`.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// `on-request` must answer [`RequestDecision::Cache`](crate::RequestDecision::Cache).
    pub fn expect_cache(self) -> TestVector {
        self.expect(ExpectedRequest::Cache)
    }

    /// `on-request` must bypass the cache (for any reason).
    pub fn expect_bypass(self) -> TestVector {
        self.expect(ExpectedRequest::Bypass)
    }

    /// `on-request` must answer itself with this status.
    pub fn expect_respond(self, status: u16) -> TestVector {
        self.expect(ExpectedRequest::Respond(status))
    }

    fn expect(self, expect: ExpectedRequest) -> TestVector {
        TestVector {
            name: self.name,
            request: self.request,
            expect,
            expect_key: None,
            response: None,
        }
    }
}

impl TestResponse {
    /// `on-response` must store the response for `ttl` (whole seconds).
    pub fn expect_store(self, ttl: Duration) -> TestVector {
        self.expect(ExpectedResponse::Store(ttl))
    }

    /// `on-response` must leave the decision to the origin's headers.
    pub fn expect_follow_origin(self) -> TestVector {
        self.expect(ExpectedResponse::FollowOrigin)
    }

    /// `on-response` must refuse to store the response (for any reason).
    pub fn expect_no_store(self) -> TestVector {
        self.expect(ExpectedResponse::NoStore)
    }

    /// `on-response` must make the key uncacheable for `duration` (whole seconds).
    pub fn expect_pass_for(self, duration: Duration) -> TestVector {
        self.expect(ExpectedResponse::PassFor(duration))
    }

    fn expect(self, expect: ExpectedResponse) -> TestVector {
        TestVector {
            response: Some(ResponseSpec {
                status: self.status,
                headers: self.headers,
                expect,
            }),
            ..self.vector
        }
    }
}

fn owned_headers(headers: &[(&str, &str)]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_fills_every_field() {
        let vector = TestVector::get("/a?b=1")
            .header("Host", "example.com")
            .expect_cache()
            .expect_key(["example.com", "/a", "b=1"])
            .with_response(200, &[("Cache-Control", "public")])
            .expect_store(Duration::from_secs(10));
        assert_eq!(
            vector,
            TestVector {
                name: None,
                request: RequestSpec {
                    method: "GET".into(),
                    uri: "/a?b=1".into(),
                    headers: vec![("Host".into(), "example.com".into())],
                },
                expect: ExpectedRequest::Cache,
                expect_key: Some(vec!["example.com".into(), "/a".into(), "b=1".into()]),
                response: Some(ResponseSpec {
                    status: 200,
                    headers: vec![("Cache-Control".into(), "public".into())],
                    expect: ExpectedResponse::Store(Duration::from_secs(10)),
                }),
            }
        );
    }

    #[test]
    fn default_names_describe_the_exchange() {
        let plain = TestVector::head("http://example.com/").expect_cache();
        assert_eq!(plain.name(), "HEAD http://example.com/");
        let with_response = plain.with_response(404, &[]).expect_follow_origin();
        assert_eq!(with_response.name(), "HEAD http://example.com/ -> 404");
        let named = TestVector::post("/x").named("form posts").expect_bypass();
        assert_eq!(named.name(), "form posts");
    }

    #[test]
    fn accessors_report_the_expectations() {
        let vector = TestVector::get("/admin").expect_respond(403);
        assert_eq!(vector.expected_request(), ExpectedRequest::Respond(403));
        assert_eq!(vector.expected_key(), None);
        assert_eq!(vector.expected_response(), None);
        let vector = vector.with_response(200, &[]).expect_no_store();
        assert_eq!(vector.expected_response(), Some(ExpectedResponse::NoStore));
    }

    #[test]
    #[should_panic(expected = "expect_key needs expect_cache")]
    fn key_on_a_bypassed_request_is_refused() {
        let _ = TestVector::post("/x").expect_bypass().expect_key(["x"]);
    }
}
