//! The policy a tenant runs: a WebAssembly plugin (its pool of instances) or
//! a builtin. The proxy only ever talks to this type.

use super::builtin::BuiltinPolicy;
use super::decision::{OriginFailure, ResponseDecision, ResponsePlan, SyntheticResponse};
use super::edits::HeaderEdit;
use super::instance::{InstancePool, PluginFault, RequestOutcome, RequestVerdict};
use super::lanes::PluginLane;
use super::pending::PendingFields;
use super::plugin::LoadedPlugin;
use pingora::http::{RequestHeader, ResponseHeader};
use std::sync::Arc;

/// When a policy reads the fields the host adds to a request on its way to the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddedFields {
    /// A builtin policy: they are written only once the request needs the origin.
    NeverRead,
    /// A 0.1.0 or 0.2.0 plugin reads the request through host calls: they are
    /// written before it runs.
    ReadFromTheRequest,
    /// A 0.3.0 plugin receives the request as a value: it is shown them as
    /// pending, and they are written once the request needs the origin.
    ReadAsPending,
}

// One per tenant and plugin version, held in an `Arc`: a pool's ~200 bytes beside a native
// policy's none cost nothing, and boxing it would change what embedders build.
#[allow(clippy::large_enum_variant)]
pub enum PolicyLayer {
    Wasm(InstancePool),
    Builtin(BuiltinPolicy),
}

impl PolicyLayer {
    /// `on-request`, then `cache-key` when the request may use the cache.
    pub fn decide_request(&self, request: &RequestHeader) -> Result<RequestVerdict, PluginFault> {
        match self {
            Self::Wasm(pool) => pool.decide_request(request),
            Self::Builtin(builtin) => Ok(builtin.decide_request(request)),
        }
    }

    /// When other tenants share the proxy (`shared`) and this plugin is heavy, waits for one
    /// of the worker threads heavy plugins' `on-request` calls may hold (`policy::lanes`):
    /// hold the result across [`Self::plan_request`], whose CPU time it may measure for the
    /// plugin's judgement. A native policy never waits. A [`PluginFault::NoLane`] when the
    /// wait ran out.
    pub async fn lane(&self, shared: bool) -> Result<PluginLane<'_>, PluginFault> {
        match self {
            Self::Wasm(pool) => pool.lane(shared).await,
            Self::Builtin(_) => Ok(PluginLane::default()),
        }
    }

    /// `on-request` with its edits applied to `request` (what the origin is
    /// sent), then `cache-key` on the edited request. The plugin sees the
    /// `pending` fields as written; they stay pending unless it edits.
    pub fn plan_request(
        &self,
        request: &mut RequestHeader,
        pending: &mut PendingFields,
    ) -> Result<RequestOutcome, PluginFault> {
        match self {
            Self::Wasm(pool) => pool.plan_request(request, pending),
            Self::Builtin(builtin) => Ok(RequestOutcome {
                verdict: builtin.decide_request(request),
                backend: None,
                deliver: false,
                unedited: None,
            }),
        }
    }

    /// `on-response` with its edits before storing.
    pub fn plan_response(
        &self,
        request: &RequestHeader,
        response: &ResponseHeader,
    ) -> Result<ResponsePlan, PluginFault> {
        match self {
            Self::Wasm(pool) => pool.plan_response(request, response),
            Self::Builtin(builtin) => Ok(ResponsePlan {
                decision: builtin.decide_response(),
                edits: Vec::new(),
            }),
        }
    }

    /// `on-deliver`: edits to the response the client gets.
    pub fn deliver_edits(
        &self,
        request: &RequestHeader,
        response: &ResponseHeader,
    ) -> Result<Vec<HeaderEdit>, PluginFault> {
        match self {
            Self::Wasm(pool) => pool.deliver_edits(request, response),
            Self::Builtin(_) => Ok(Vec::new()),
        }
    }

    /// `on-error`: the plugin's own answer to an origin failure, if any.
    pub fn error_answer(
        &self,
        request: &RequestHeader,
        failure: OriginFailure,
    ) -> Result<Option<SyntheticResponse>, PluginFault> {
        match self {
            Self::Wasm(pool) => pool.error_answer(request, failure),
            Self::Builtin(_) => Ok(None),
        }
    }

    /// How the policy reads the fields the host adds to the request (`X-Forwarded-*`,
    /// `Forwarded`, `Via`), and so when they must exist.
    pub fn reads_added_fields(&self) -> AddedFields {
        match self.plugin().map(|p| p.contract_version()) {
            None => AddedFields::NeverRead,
            Some("0.1.0" | "0.2.0") => AddedFields::ReadFromTheRequest,
            Some(_) => AddedFields::ReadAsPending,
        }
    }

    /// Whether the plugin implements 0.2.0, whose `on-response` may edit the
    /// response before the host's guards judge it.
    pub fn implements_0_2(&self) -> bool {
        self.plugin()
            .is_some_and(|p| p.contract_version() != "0.1.0")
    }

    /// `on-response` for an origin response.
    pub fn decide_response(
        &self,
        request: &RequestHeader,
        response: &ResponseHeader,
    ) -> Result<ResponseDecision, PluginFault> {
        match self {
            Self::Wasm(pool) => pool.decide_response(request, response),
            Self::Builtin(builtin) => Ok(builtin.decide_response()),
        }
    }

    /// The plugin's comparison values for the request headers a stored
    /// response varies on (None each: the host's default).
    pub fn vary_values(
        &self,
        request: &RequestHeader,
        names: &[String],
    ) -> Result<Vec<Option<String>>, PluginFault> {
        match self {
            Self::Wasm(pool) => pool.vary_values(request, names),
            Self::Builtin(_) => Ok(vec![None; names.len()]),
        }
    }

    /// The loaded plugin, for a WebAssembly policy.
    pub fn plugin(&self) -> Option<&Arc<LoadedPlugin>> {
        match self {
            Self::Wasm(pool) => Some(pool.plugin()),
            Self::Builtin(_) => None,
        }
    }

    /// The sha256 of the running plugin (None for builtins).
    pub fn sha256(&self) -> Option<&str> {
        self.plugin().map(|p| p.info.sha256.as_str())
    }
}
