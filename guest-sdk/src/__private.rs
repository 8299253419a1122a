//! Glue between the generated component bindings and the SDK's own types.
//! Used by `export_policy!`; not part of the public API.

use std::mem::ManuallyDrop;
use std::ops::Deref;

use crate::decision::whole_seconds;
use crate::log::Level;
use crate::self_test::{RequestSpec, ResponseSpec};
use crate::{
    ExpectedRequest, ExpectedResponse, HeaderEdit, HeaderEdits, OriginFailure, Policy, Request,
    RequestDecision, RequestEdits, Response, ResponseDecision, StoreDirective, SyntheticResponse,
    TestVector,
};

pub mod bindings {
    wit_bindgen::generate!({
        // `wit` links to the repository's `wit/` so the packaged crate carries the contract;
        // the SDK builds plugins for cachet:policy@0.2.0.
        path: "wit/v0.2",
        world: "policy",
        // Plugin crates invoke the export macro, so it must be visible to them.
        pub_export_macro: true,
        export_macro_name: "export_world",
        default_bindings_module: "cachet_sdk::__private::bindings",
    });
}

use bindings::cachet::policy::{host, types};

/// The generated trait `export_policy!` implements on its adapter type.
pub use bindings::Guest;
pub use bindings::{
    HeaderEdit as HostHeaderEdit, OriginFailure as HostOriginFailure, Request as HostRequest,
    RequestPlan as HostRequestPlan, Response as HostResponse, ResponsePlan as HostResponsePlan,
    SyntheticResponse as HostSyntheticResponse, TestVector as HostTestVector,
};

/// A second, non-owning view of a request handle the host lent for one call.
///
/// The generated glue owns the handle and releases the borrow when the call
/// returns; this view must never drop it too, hence `ManuallyDrop`. It is only
/// reachable through `&Request`, so it cannot outlive the call.
#[derive(Debug)]
pub struct BorrowedRequest(ManuallyDrop<types::Request>);

/// The response counterpart of [`BorrowedRequest`].
#[derive(Debug)]
pub struct BorrowedResponse(ManuallyDrop<types::Response>);

impl Deref for BorrowedRequest {
    type Target = types::Request;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Deref for BorrowedResponse {
    type Target = types::Response;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

fn view_request(host: &types::Request) -> Request {
    // SAFETY: the handle stays valid for the whole hook call and the view is
    // never dropped as a resource (see `BorrowedRequest`).
    let alias = unsafe { types::Request::from_handle(host.handle()) };
    Request::from_host(BorrowedRequest(ManuallyDrop::new(alias)))
}

fn view_response(host: &types::Response) -> Response {
    // SAFETY: as in `view_request`.
    let alias = unsafe { types::Response::from_handle(host.handle()) };
    Response::from_host(BorrowedResponse(ManuallyDrop::new(alias)))
}

pub fn on_request<P: Policy>(policy: &P, req: &HostRequest) -> HostRequestPlan {
    let req = view_request(req);
    let decision = policy.on_request(&req);
    let mut edits = RequestEdits::default();
    policy.edit_request(&req, &mut edits);
    HostRequestPlan {
        decision: decision.into(),
        edits: host_edits(edits.headers),
        path_and_query: edits.path_and_query,
        backend: edits.backend,
        deliver: edits.deliver,
    }
}

pub fn cache_key<P: Policy>(policy: &P, req: &HostRequest) -> Vec<String> {
    policy.cache_key(&view_request(req))
}

pub fn on_response<P: Policy>(
    policy: &P,
    req: &HostRequest,
    resp: &HostResponse,
) -> HostResponsePlan {
    let (req, resp) = (view_request(req), view_response(resp));
    let decision = policy.on_response(&req, &resp);
    let mut edits = HeaderEdits::new();
    policy.edit_response(&req, &resp, &mut edits);
    HostResponsePlan {
        decision: decision.into(),
        edits: host_edits(edits),
    }
}

pub fn on_deliver<P: Policy>(
    policy: &P,
    req: &HostRequest,
    resp: &HostResponse,
) -> Vec<HostHeaderEdit> {
    let mut edits = HeaderEdits::new();
    policy.on_deliver(&view_request(req), &view_response(resp), &mut edits);
    host_edits(edits)
}

pub fn on_error<P: Policy>(
    policy: &P,
    req: &HostRequest,
    failure: HostOriginFailure,
) -> Option<HostSyntheticResponse> {
    let failure = match failure {
        HostOriginFailure::Unreachable => OriginFailure::Unreachable,
        HostOriginFailure::Timeout => OriginFailure::Timeout,
        HostOriginFailure::Status(code) => OriginFailure::Status(code),
    };
    policy.on_error(&view_request(req), failure).map(Into::into)
}

fn host_edits(edits: HeaderEdits) -> Vec<HostHeaderEdit> {
    edits
        .into_vec()
        .into_iter()
        .map(|edit| match edit {
            HeaderEdit::Set(name, value) => HostHeaderEdit::Set(types::Header { name, value }),
            HeaderEdit::Append(name, value) => {
                HostHeaderEdit::Append(types::Header { name, value })
            }
            HeaderEdit::Remove(name) => HostHeaderEdit::Remove(name),
        })
        .collect()
}

pub fn vary_value<P: Policy>(policy: &P, req: &HostRequest, name: String) -> Option<String> {
    policy.vary_value(&view_request(req), &name)
}

pub fn self_test<P: Policy>(policy: &P) -> Vec<HostTestVector> {
    policy.self_test().into_iter().map(Into::into).collect()
}

pub(crate) fn host_log(level: Level, message: &str) {
    let level = match level {
        Level::Trace => types::LogLevel::Trace,
        Level::Debug => types::LogLevel::Debug,
        Level::Info => types::LogLevel::Info,
        Level::Warn => types::LogLevel::Warn,
        Level::Error => types::LogLevel::Error,
    };
    host::log(level, message);
}

pub(crate) fn host_config(key: &str) -> Option<String> {
    host::config(key)
}

impl From<RequestDecision> for types::RequestDecision {
    fn from(decision: RequestDecision) -> Self {
        match decision {
            RequestDecision::Cache => Self::Cache,
            RequestDecision::Bypass(reason) => Self::Bypass(reason),
            RequestDecision::Respond(response) => Self::Respond(response.into()),
        }
    }
}

impl From<SyntheticResponse> for types::SyntheticResponse {
    fn from(response: SyntheticResponse) -> Self {
        Self {
            status: response.status,
            headers: host_headers(response.headers),
            body: response.body,
        }
    }
}

impl From<ResponseDecision> for types::ResponseDecision {
    fn from(decision: ResponseDecision) -> Self {
        match decision {
            ResponseDecision::Store(directive) => Self::Store(directive.into()),
            ResponseDecision::FollowOrigin => Self::FollowOrigin,
            ResponseDecision::NoStore(reason) => Self::NoStore(reason),
            ResponseDecision::PassFor(duration) => Self::PassFor(whole_seconds(duration)),
        }
    }
}

impl From<StoreDirective> for types::StoreDirective {
    fn from(directive: StoreDirective) -> Self {
        Self {
            ttl_seconds: whole_seconds(directive.ttl),
            stale_while_revalidate_seconds: whole_seconds(directive.stale_while_revalidate),
            stale_if_error_seconds: whole_seconds(directive.stale_if_error),
            tags: directive.tags,
        }
    }
}

impl From<TestVector> for types::TestVector {
    fn from(vector: TestVector) -> Self {
        Self {
            // Computed before the fields move: the default name uses them.
            name: vector.name(),
            request: vector.request.into(),
            expect: vector.expect.into(),
            expect_key: vector.expect_key,
            response: vector.response.map(Into::into),
        }
    }
}

impl From<RequestSpec> for types::TestRequest {
    fn from(request: RequestSpec) -> Self {
        Self {
            method: request.method,
            uri: request.uri,
            headers: host_headers(request.headers),
        }
    }
}

impl From<ResponseSpec> for types::TestResponse {
    fn from(response: ResponseSpec) -> Self {
        Self {
            status: response.status,
            headers: host_headers(response.headers),
            expect: response.expect.into(),
        }
    }
}

impl From<ExpectedRequest> for types::ExpectedRequest {
    fn from(expect: ExpectedRequest) -> Self {
        match expect {
            ExpectedRequest::Cache => Self::Cache,
            ExpectedRequest::Bypass => Self::Bypass,
            ExpectedRequest::Respond(status) => Self::Respond(status),
        }
    }
}

impl From<ExpectedResponse> for types::ExpectedResponse {
    fn from(expect: ExpectedResponse) -> Self {
        match expect {
            ExpectedResponse::Store(ttl) => Self::Store(whole_seconds(ttl)),
            ExpectedResponse::FollowOrigin => Self::FollowOrigin,
            ExpectedResponse::NoStore => Self::NoStore,
            ExpectedResponse::PassFor(duration) => Self::PassFor(whole_seconds(duration)),
        }
    }
}

fn host_headers(headers: Vec<(String, String)>) -> Vec<types::Header> {
    headers
        .into_iter()
        .map(|(name, value)| types::Header { name, value })
        .collect()
}
