//! Checks a plugin must pass before it may serve: it instantiates under the
//! default limits, and every test vector it declares gets the decisions the
//! plugin expects. Refusing a version here keeps the running one serving.

use super::bindings::v2::cachet::policy::types::{
    ExpectedRequest, ExpectedResponse, Header, TestRequest, TestResponse, TestVector,
};
use super::decision::{RequestDecision, ResponseDecision};
use super::engine::PolicyEngine;
use super::instance::InstancePool;
use super::limits::PluginLimits;
use super::plugin::LoadedPlugin;
use super::TenantContext;
use pingora::http::{RequestHeader, ResponseHeader};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// More vectors than this is a plugin trying to stall the reload.
const MAX_VECTORS: usize = 256;

/// The CPU deadline of each hook during checks. The self-test judges what a
/// plugin decides, not how fast: a busy machine must not turn a correct plugin
/// into a refused reload (the serving deadline, default 10 ms, applies once it
/// serves), while a looping one is still stopped.
const CHECK_HOOK_TIMEOUT: Duration = Duration::from_secs(1);

/// The whole self-test, from asking for the vectors to the last one's answer, may take this
/// long; a plugin past it is refused. Every hook call is cut short at it, not only checked
/// between vectors: a vector's calls could otherwise run a second each past it while a
/// reload waits.
const CHECK_BUDGET: Duration = Duration::from_secs(5);

pub(crate) fn run(engine: &PolicyEngine, plugin: &LoadedPlugin) -> anyhow::Result<()> {
    let path = plugin.info.path.display();
    let began = Instant::now();
    let until = began + CHECK_BUDGET;
    // How long it ran says whether it was stopped at the budget or well past it.
    let over_budget = || {
        format!(
            "the self-test took longer than {CHECK_BUDGET:?} (stopped after {:.2?})",
            began.elapsed()
        )
    };
    let pool = InstancePool::for_checks(
        engine.clone(),
        plugin,
        // Checks are counted apart from any tenant's traffic.
        Arc::new(TenantContext {
            tenant: "(self-test)".into(),
            ..TenantContext::default()
        }),
        PluginLimits {
            hook_timeout: CHECK_HOOK_TIMEOUT,
            ..PluginLimits::default()
        },
        until,
    );
    let vectors = pool.self_test_vectors().map_err(|fault| {
        let why = match Instant::now() >= until {
            true => over_budget(),
            false => fault.to_string(),
        };
        anyhow::anyhow!("{path}: self-test could not run: {why}")
    })?;
    if vectors.len() > MAX_VECTORS {
        anyhow::bail!(
            "{path}: declares {} self-test vectors, limit {MAX_VECTORS}",
            vectors.len()
        );
    }
    let mut failures = Vec::new();
    for vector in &vectors {
        match check_vector(&pool, vector) {
            Ok(()) => {}
            // A call cut short at the budget is the budget's failure, not the vector's.
            Err(_) if Instant::now() >= until => {
                failures.push(over_budget());
                break;
            }
            Err(e) => failures.push(format!("{:?}: {e}", vector.name)),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{path}: self-test failed: {}", failures.join("; "))
    }
}

fn check_vector(pool: &InstancePool, vector: &TestVector) -> Result<(), String> {
    let mut request = build_request(&vector.request)?;
    // Planned as a live request is: the edits applied, the key read from the edited request,
    // and `on-response` then given the edited one (it was given the unedited one, so a plugin
    // that rewrote a path and judged responses by it passed here and decided otherwise live).
    let mut pending = super::pending::PendingFields::default();
    let (decision, key) = pool
        .plan_request(&mut request, &mut pending)
        .map_err(|fault| format!("on-request: {fault}"))?
        .verdict;
    let matches = match (&vector.expect, &decision) {
        (ExpectedRequest::Cache, RequestDecision::Cache) => true,
        (ExpectedRequest::Bypass, RequestDecision::Bypass(_)) => true,
        (ExpectedRequest::Respond(status), RequestDecision::Respond(r)) => r.status == *status,
        _ => false,
    };
    if !matches {
        return Err(format!(
            "expected {:?}, plugin decided {decision:?}",
            vector.expect
        ));
    }
    if let (Some(expected), Some(key)) = (&vector.expect_key, &key) {
        if expected != key {
            return Err(format!(
                "expected key {expected:?}, plugin returned {key:?}"
            ));
        }
    }
    if let Some(test_response) = &vector.response {
        check_response(pool, &request, test_response)?;
    }
    Ok(())
}

fn check_response(
    pool: &InstancePool,
    request: &RequestHeader,
    t: &TestResponse,
) -> Result<(), String> {
    let response = build_response(t)?;
    let decision = pool
        .decide_response(request, &response)
        .map_err(|fault| format!("on-response: {fault}"))?;
    let matches = match (&t.expect, &decision) {
        (ExpectedResponse::Store(ttl), ResponseDecision::Store(d)) => {
            d.ttl.as_secs() == u64::from(*ttl)
        }
        (ExpectedResponse::FollowOrigin, ResponseDecision::FollowOrigin) => true,
        (ExpectedResponse::NoStore, ResponseDecision::NoStore(_)) => true,
        (ExpectedResponse::PassFor(secs), ResponseDecision::PassFor(d)) => {
            d.as_secs() == u64::from(*secs)
        }
        _ => false,
    };
    if matches {
        Ok(())
    } else {
        Err(format!(
            "expected response {:?}, plugin decided {decision:?}",
            t.expect
        ))
    }
}

fn build_request(t: &TestRequest) -> Result<RequestHeader, String> {
    let uri: http::Uri = t
        .uri
        .parse()
        .map_err(|e| format!("bad uri {:?}: {e}", t.uri))?;
    // The SDK's own run refuses it alike.
    crate::proxy::refuse_userinfo(&uri, &t.uri)?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut req = RequestHeader::build(t.method.as_str(), path.as_bytes(), None)
        .map_err(|e| format!("bad request line: {e}"))?;
    if let Some(authority) = uri.authority() {
        req.insert_header(http::header::HOST, authority.as_str())
            .map_err(|e| format!("bad host: {e}"))?;
    }
    add_headers(&t.headers, |name, value| {
        req.append_header(name, value).map(drop)
    })?;
    // Spelled as a live request's is before any plugin sees it (and as the SDK's own run
    // spells it): `shop.test:80` is `shop.test`.
    crate::proxy::request_fields::canonical_host(&mut req, uri.scheme_str().unwrap_or("http"));
    Ok(req)
}

fn build_response(t: &TestResponse) -> Result<ResponseHeader, String> {
    let mut resp = ResponseHeader::build(t.status, None).map_err(|e| format!("bad status: {e}"))?;
    add_headers(&t.headers, |name, value| {
        resp.append_header(name, value).map(drop)
    })?;
    Ok(resp)
}

fn add_headers(
    headers: &[Header],
    mut add: impl FnMut(String, String) -> pingora::Result<()>,
) -> Result<(), String> {
    for h in headers {
        add(h.name.clone(), h.value.clone())
            .map_err(|e| format!("bad header {:?}: {e}", h.name))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str) -> TestRequest {
        TestRequest {
            method: "GET".into(),
            uri: uri.into(),
            headers: Vec::new(),
        }
    }

    #[test]
    fn a_vector_naming_user_information_is_refused_not_run() {
        let refused = build_request(&request("http://user@example.com/a")).unwrap_err();
        assert!(refused.contains("user information"), "{refused}");
        let req = build_request(&request("http://example.com/a@b")).unwrap();
        assert_eq!(req.headers["host"], "example.com");
        assert_eq!(req.uri.path(), "/a@b");
    }

    /// A vector's host is what a live request's would be, and what the SDK's native run shows
    /// the policy: a key checked green by `cargo test` is the key checked at load.
    #[test]
    fn a_vectors_host_is_spelled_as_live_and_as_the_sdk_spells_it() {
        for uri in [
            "http://Shop.Test:80/a",
            "https://shop.test.:443/a",
            "https://shop.test:80/a",
            "http://shop.test:0080/a",
            "http://shop.test:8080/a",
            "http://[::1]:80/a",
        ] {
            let req = build_request(&request(uri)).unwrap();
            let sdk = cachet_sdk::Request::builder().uri(uri).build();
            assert_eq!(
                super::super::host_api::request_host(&req),
                sdk.host(),
                "{uri}"
            );
        }
        let req = build_request(&request("http://Shop.Test:80/a")).unwrap();
        assert_eq!(req.headers["host"], "shop.test");
    }
}
