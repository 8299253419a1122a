//! The WebAssembly policy layer: one engine, plugins loaded and checked off
//! the request path, instances with hard limits, and typed hook calls.

pub mod artifact_cache;
mod bindings;
mod breaker;
mod builtin;
mod call_scope;
pub mod componentize;
mod contained_panic;
mod decision;
mod edits;
mod engine;
mod heads;
mod host_api;
mod idle;
mod instance;
pub(crate) mod lanes;
mod layer;
mod limits;
mod pending;
mod plugin;
mod reset;
mod self_test;
mod ticker;
mod write_tracking;

pub use artifact_cache::ArtifactCache;
pub use builtin::BuiltinPolicy;
pub(crate) use decision::clean_reason;
pub use decision::{
    key_too_long, OriginFailure, RequestDecision, ResponseDecision, ResponsePlan, StoreDirective,
    SyntheticResponse,
};
pub use edits::{apply_to_response, reapply_to_response, HeaderEdit};
pub use engine::{PolicyEngine, MAX_GUEST_MEMORY};
pub use host_api::{request_host, request_host_ref};
pub use instance::{check_starts_within_limits, InstancePool, PluginFault, PolicyInstance};
pub use instance::{RequestOutcome, RequestVerdict};
pub use lanes::PluginLane;
pub use layer::{AddedFields, PolicyLayer};
pub use limits::PluginLimits;
pub use pending::PendingFields;
pub use plugin::{ImportCheck, LoadedPlugin, PluginInfo, ALLOWED_IMPORTS};

/// Identity and configuration a plugin sees through its `host` imports.
#[derive(Debug, Clone, Default)]
pub struct TenantContext {
    pub tenant: String,
    pub plugin_config: std::collections::BTreeMap<String, String>,
}
