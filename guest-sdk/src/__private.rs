//! Glue between the generated component bindings and the SDK's own types.
//! Used by `export_policy!`; not part of the public API.

use std::cell::RefCell;

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
        // the SDK builds plugins for cachet:policy@0.3.0.
        path: "wit/v0.3",
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
    HeaderEdit as HostHeaderEdit, OriginFailure as HostOriginFailure,
    RequestAnswer as HostRequestAnswer, RequestHead as HostRequestHead,
    ResponseHead as HostResponseHead, ResponsePlan as HostResponsePlan, Setting as HostSetting,
    SyntheticResponse as HostSyntheticResponse, TestVector as HostTestVector,
};

std::thread_local! {
    /// The tenant's settings, as `configure` handed them to this instance.
    static SETTINGS: RefCell<Vec<HostSetting>> = const { RefCell::new(Vec::new()) };
}

pub fn configure(settings: Vec<HostSetting>) {
    SETTINGS.with(|current| *current.borrow_mut() = settings);
    // The settings stay for the instance's life: the arena's top returns above them.
    #[cfg(feature = "arena-allocator")]
    crate::allocator::settle();
}

pub(crate) fn host_config(key: &str) -> Option<String> {
    SETTINGS.with(|settings| {
        settings
            .borrow()
            .iter()
            .find(|setting| setting.key == key)
            .map(|setting| setting.value.clone())
    })
}

/// `on-request`, and the key too when the plan leaves the request as it is:
/// the host then skips the `cache-key` call.
pub fn on_request<P: Policy>(policy: &P, req: HostRequestHead) -> HostRequestAnswer {
    let req = Request::from_head(req);
    let decision = policy.on_request(&req);
    let mut edits = RequestEdits::default();
    policy.edit_request(&req, &mut edits);
    // The host uses a key given here only for a request left as it is, by the
    // rule of its `RequestEdits::is_empty` (a backend or `on-deliver` leaves the
    // request as it is); otherwise it calls `cache-key` on the edited one.
    let cache = matches!(decision, RequestDecision::Cache);
    let unedited = edits.headers.is_empty() && edits.path_and_query.is_none();
    let key = (cache && unedited).then(|| policy.cache_key(&req));
    HostRequestAnswer {
        plan: types::RequestPlan {
            decision: decision.into(),
            edits: host_edits(edits.headers),
            path_and_query: edits.path_and_query,
            backend: edits.backend,
            deliver: edits.deliver,
        },
        key,
    }
}

pub fn cache_key<P: Policy>(policy: &P, req: HostRequestHead) -> Vec<String> {
    policy.cache_key(&Request::from_head(req))
}

pub fn on_response<P: Policy>(
    policy: &P,
    req: HostRequestHead,
    resp: HostResponseHead,
) -> HostResponsePlan {
    let (req, resp) = (Request::from_head(req), Response::from_head(resp));
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
    req: HostRequestHead,
    resp: HostResponseHead,
) -> Vec<HostHeaderEdit> {
    let mut edits = HeaderEdits::new();
    policy.on_deliver(
        &Request::from_head(req),
        &Response::from_head(resp),
        &mut edits,
    );
    host_edits(edits)
}

pub fn on_error<P: Policy>(
    policy: &P,
    req: HostRequestHead,
    failure: HostOriginFailure,
) -> Option<HostSyntheticResponse> {
    let failure = match failure {
        HostOriginFailure::Unreachable => OriginFailure::Unreachable,
        HostOriginFailure::Timeout => OriginFailure::Timeout,
        HostOriginFailure::Status(code) => OriginFailure::Status(code),
    };
    policy
        .on_error(&Request::from_head(req), failure)
        .map(Into::into)
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

pub fn vary_value<P: Policy>(policy: &P, req: HostRequestHead, name: String) -> Option<String> {
    policy.vary_value(&Request::from_head(req), &name)
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
