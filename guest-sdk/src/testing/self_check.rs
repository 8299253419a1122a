//! Runs a policy's own test vectors natively, judging them as the host does.

use crate::decision::whole_seconds;
use crate::self_test::{RequestSpec, ResponseSpec};
use crate::{
    ExpectedRequest, ExpectedResponse, Policy, Request, RequestDecision, Response,
    ResponseDecision, TestVector,
};

/// Runs every vector of `policy.self_test()` through its hooks and returns
/// one readable line per mismatch (empty when all pass).
///
/// As on the host, vectors see an empty tenant config: values set with
/// [`set_config`](super::set_config) are hidden while they run and restored
/// afterwards.
pub fn self_test_failures<P: Policy + ?Sized>(policy: &P) -> Vec<String> {
    failures_of(policy, &policy.self_test())
}

/// Why a vector whose URI names user information cannot be run (the host says the same).
const USERINFO_REFUSED: &str =
    "the proxy refuses user information in a URL (400), so no policy sees such a request";

fn failures_of<P: Policy + ?Sized>(policy: &P, vectors: &[TestVector]) -> Vec<String> {
    super::without_config(|| {
        vectors
            .iter()
            .enumerate()
            .flat_map(|(index, vector)| {
                check_vector(policy, vector)
                    .into_iter()
                    .map(move |problem| format!("#{index} {:?}: {problem}", vector.name()))
            })
            .collect()
    })
}

/// Asserts that `policy` declares at least one test vector and that every
/// one passes; returns how many were checked.
///
/// ```
/// use cachet_sdk::prelude::*;
///
/// struct Simple;
///
/// impl Policy for Simple {
///     fn self_test(&self) -> Vec<TestVector> {
///         vec![
///             TestVector::get("http://example.com/a")
///                 .expect_cache()
///                 .expect_key(["example.com", "/a"]),
///             TestVector::post("http://example.com/a").expect_bypass(),
///         ]
///     }
/// }
///
/// assert_eq!(cachet_sdk::testing::check_self_tests(&Simple), 2);
/// ```
///
/// # Panics
///
/// If the policy declares no vectors, or any vector fails; the message lists
/// every mismatch.
#[track_caller]
pub fn check_self_tests<P: Policy + ?Sized>(policy: &P) -> usize {
    let vectors = policy.self_test();
    let count = vectors.len();
    assert!(count > 0, "the policy declares no self-test vectors");
    let failures = failures_of(policy, &vectors);
    assert!(
        failures.is_empty(),
        "{} of {count} self-test vector(s) failed:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
    count
}

fn check_vector<P: Policy + ?Sized>(policy: &P, vector: &TestVector) -> Vec<String> {
    if crate::uri::has_userinfo(&vector.request.uri) {
        // The host refuses such a vector too: what it would test never happens.
        return vec![USERINFO_REFUSED.to_owned()];
    }
    let req = build_request(&vector.request);
    let mut problems = Vec::new();
    let decision = policy.on_request(&req);
    if !request_matches(vector.expect, &decision) {
        problems.push(format!(
            "on-request: expected {}, got {}",
            describe_expected_request(vector.expect),
            describe_request_decision(&decision)
        ));
    }
    // Like the host: the key is read from the request as edited, and `on-response` is given
    // the edited request, as the origin was sent it.
    let mut edits = crate::RequestEdits::default();
    policy.edit_request(&req, &mut edits);
    // An edit the host refuses is a fault there: nothing after it runs.
    if let Some(refusal) = super::request_edits_refusal(&req, &edits) {
        problems.push(format!("edit-request: {refusal}"));
        return problems;
    }
    let edited = req.edited(&edits);
    if let (ExpectedRequest::Cache, Some(expected)) = (vector.expect, &vector.expect_key) {
        let key = policy.cache_key(&edited);
        if key != *expected {
            problems.push(format!("cache-key: expected {expected:?}, got {key:?}"));
        }
    }
    if let Some(spec) = &vector.response {
        let response = build_response(spec);
        let mut response_edits = crate::HeaderEdits::new();
        policy.edit_response(&edited, &response, &mut response_edits);
        if let Some(refusal) = super::response_edits_refusal(&response_edits) {
            problems.push(format!("edit-response: {refusal}"));
            return problems;
        }
        let decision = policy.on_response(&edited, &response);
        if !response_matches(spec.expect, &decision) {
            problems.push(format!(
                "on-response: expected {}, got {}",
                describe_expected_response(spec.expect),
                describe_response_decision(&decision)
            ));
        }
    }
    problems
}

fn build_request(spec: &RequestSpec) -> Request {
    spec.headers
        .iter()
        .fold(
            Request::builder().method(&spec.method).uri(&spec.uri),
            |builder, (name, value)| builder.header(name, value),
        )
        .build()
}

fn build_response(spec: &ResponseSpec) -> Response {
    spec.headers
        .iter()
        .fold(
            Response::builder().status(spec.status),
            |builder, (name, value)| builder.header(name, value),
        )
        .build()
}

fn request_matches(expected: ExpectedRequest, actual: &RequestDecision) -> bool {
    match (expected, actual) {
        (ExpectedRequest::Cache, RequestDecision::Cache) => true,
        (ExpectedRequest::Bypass, RequestDecision::Bypass(_)) => true,
        (ExpectedRequest::Respond(status), RequestDecision::Respond(resp)) => resp.status == status,
        _ => false,
    }
}

/// TTLs compare in whole seconds, the unit the host receives.
fn response_matches(expected: ExpectedResponse, actual: &ResponseDecision) -> bool {
    match (expected, actual) {
        (ExpectedResponse::Store(ttl), ResponseDecision::Store(directive)) => {
            whole_seconds(ttl) == whole_seconds(directive.ttl)
        }
        (ExpectedResponse::FollowOrigin, ResponseDecision::FollowOrigin) => true,
        (ExpectedResponse::NoStore, ResponseDecision::NoStore(_)) => true,
        (ExpectedResponse::PassFor(want), ResponseDecision::PassFor(got)) => {
            whole_seconds(want) == whole_seconds(*got)
        }
        _ => false,
    }
}

fn describe_expected_request(expected: ExpectedRequest) -> String {
    match expected {
        ExpectedRequest::Cache => "cache".to_owned(),
        ExpectedRequest::Bypass => "bypass".to_owned(),
        ExpectedRequest::Respond(status) => format!("respond {status}"),
    }
}

fn describe_request_decision(actual: &RequestDecision) -> String {
    match actual {
        RequestDecision::Cache => "cache".to_owned(),
        RequestDecision::Bypass(reason) => format!("bypass ({reason:?})"),
        RequestDecision::Respond(resp) => format!("respond {}", resp.status),
    }
}

fn describe_expected_response(expected: ExpectedResponse) -> String {
    match expected {
        ExpectedResponse::Store(ttl) => format!("store {}s", whole_seconds(ttl)),
        ExpectedResponse::FollowOrigin => "follow-origin".to_owned(),
        ExpectedResponse::NoStore => "no-store".to_owned(),
        ExpectedResponse::PassFor(d) => format!("pass-for {}s", whole_seconds(d)),
    }
}

fn describe_response_decision(actual: &ResponseDecision) -> String {
    match actual {
        ResponseDecision::Store(directive) => format!("store {}s", whole_seconds(directive.ttl)),
        ResponseDecision::FollowOrigin => "follow-origin".to_owned(),
        ResponseDecision::NoStore(reason) => format!("no-store ({reason:?})"),
        ResponseDecision::PassFor(d) => format!("pass-for {}s", whole_seconds(*d)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config, defaults, testing};
    use std::time::Duration;

    /// Caches everything except `/private`, keys on the path only, and
    /// stores for the tenant's `ttl` (default 10 s).
    struct Sample(Vec<TestVector>);

    impl Policy for Sample {
        fn on_request(&self, req: &Request) -> RequestDecision {
            match req.path().as_str() {
                "/private" => RequestDecision::bypass("private"),
                "/teapot" => RequestDecision::respond(418, "short and stout"),
                _ => defaults::on_request(req),
            }
        }

        fn cache_key(&self, req: &Request) -> Vec<String> {
            vec![req.path()]
        }

        fn on_response(&self, _req: &Request, resp: &Response) -> ResponseDecision {
            if resp.status() != 200 {
                return ResponseDecision::no_store("not 200");
            }
            let ttl = config("ttl").and_then(|v| v.parse().ok()).unwrap_or(10);
            ResponseDecision::store(Duration::from_millis(ttl * 1000 + 999))
        }

        fn self_test(&self) -> Vec<TestVector> {
            self.0.clone()
        }
    }

    #[test]
    fn matching_vectors_pass() {
        let sample = Sample(vec![
            TestVector::get("/a?x=1")
                .header("Host", "example.com")
                .expect_cache()
                .expect_key(["/a"])
                .with_response(200, &[])
                .expect_store(Duration::from_secs(10)),
            TestVector::get("/private").expect_bypass(),
            TestVector::get("/teapot").expect_respond(418),
            TestVector::get("/b")
                .expect_cache()
                .with_response(500, &[])
                .expect_no_store(),
        ]);
        assert_eq!(check_self_tests(&sample), 4);
    }

    #[test]
    fn every_mismatch_is_reported_with_its_vector() {
        let sample = Sample(vec![
            TestVector::get("/private").expect_cache(),
            TestVector::get("/a")
                .named("key and ttl")
                .expect_cache()
                .expect_key(["/b"])
                .with_response(200, &[])
                .expect_store(Duration::from_secs(60)),
            TestVector::get("/teapot").expect_respond(200),
            TestVector::post("/a")
                .expect_bypass()
                .with_response(404, &[])
                .expect_follow_origin(),
        ]);
        assert_eq!(
            self_test_failures(&sample),
            [
                r#"#0 "GET /private": on-request: expected cache, got bypass ("private")"#,
                r#"#1 "key and ttl": cache-key: expected ["/b"], got ["/a"]"#,
                r#"#1 "key and ttl": on-response: expected store 60s, got store 10s"#,
                r#"#2 "GET /teapot": on-request: expected respond 200, got respond 418"#,
                r#"#3 "POST /a -> 404": on-response: expected follow-origin, got no-store ("not 200")"#,
            ]
        );
    }

    #[test]
    fn a_vector_with_user_information_is_refused() {
        let sample = Sample(vec![
            TestVector::get("http://user@example.com/a").expect_cache()
        ]);
        assert_eq!(
            self_test_failures(&sample),
            [format!(
                r#"#0 "GET http://user@example.com/a": {USERINFO_REFUSED}"#
            )]
        );
    }

    #[test]
    #[should_panic(expected = "1 of 1 self-test vector(s) failed")]
    fn check_panics_on_a_mismatch() {
        check_self_tests(&Sample(vec![TestVector::get("/private").expect_cache()]));
    }

    #[test]
    #[should_panic(expected = "declares no self-test vectors")]
    fn check_panics_without_vectors() {
        check_self_tests(&Sample(Vec::new()));
    }

    #[test]
    fn config_is_hidden_during_the_run_and_restored() {
        testing::set_config("ttl", "60");
        let sample = Sample(vec![TestVector::get("/a")
            .expect_cache()
            .with_response(200, &[])
            .expect_store(Duration::from_secs(10))]);
        assert!(self_test_failures(&sample).is_empty());
        assert_eq!(config("ttl").as_deref(), Some("60"));
    }

    /// `on-response` is given the request as edited, as it is live: a policy that rewrites
    /// `/v1/...` to `/...` and stores only what it did not rewrite sees `/a`, not `/v1/a`.
    #[test]
    fn on_response_sees_the_edited_request() {
        struct Rewriting;
        impl Policy for Rewriting {
            fn edit_request(&self, req: &Request, edits: &mut crate::RequestEdits) {
                if let Some(rest) = req.path().strip_prefix("/v1") {
                    edits.rewrite_path(rest.to_owned());
                }
            }
            fn on_response(&self, req: &Request, _resp: &Response) -> ResponseDecision {
                match req.path().starts_with("/v1") {
                    true => ResponseDecision::no_store("not rewritten"),
                    false => ResponseDecision::store(Duration::from_secs(5)),
                }
            }
            fn self_test(&self) -> Vec<TestVector> {
                vec![TestVector::get("http://example.com/v1/a")
                    .expect_cache()
                    .expect_key(["example.com", "/a"])
                    .with_response(200, &[])
                    .expect_store(Duration::from_secs(5))]
            }
        }
        assert_eq!(self_test_failures(&Rewriting), Vec::<String>::new());
    }

    /// An edit the host refuses makes the hook a fault there, and the version is refused
    /// when loaded: natively the vector fails too, naming the edit.
    #[test]
    fn an_edit_the_host_refuses_fails_the_vector() {
        struct SchemeSetting;
        impl Policy for SchemeSetting {
            fn edit_request(&self, _req: &Request, edits: &mut crate::RequestEdits) {
                edits.set_header("X-Forwarded-Proto", "https");
            }
            fn self_test(&self) -> Vec<TestVector> {
                vec![TestVector::get("http://example.com/a").expect_cache()]
            }
        }
        let failures = self_test_failures(&SchemeSetting);
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(failures[0].contains("edit-request"), "{failures:?}");
        assert!(failures[0].contains("x-forwarded-proto"), "{failures:?}");

        struct FramingResponse;
        impl Policy for FramingResponse {
            fn edit_response(
                &self,
                _req: &Request,
                _resp: &Response,
                edits: &mut crate::HeaderEdits,
            ) {
                edits.set("Content-Length", "0");
            }
            fn self_test(&self) -> Vec<TestVector> {
                vec![TestVector::get("http://example.com/a")
                    .expect_cache()
                    .with_response(200, &[])
                    .expect_follow_origin()]
            }
        }
        let failures = self_test_failures(&FramingResponse);
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(failures[0].contains("edit-response"), "{failures:?}");
    }
}
