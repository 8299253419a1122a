//! The policy a tenant runs: a WebAssembly plugin (its pool of instances) or
//! a builtin. The proxy only ever talks to this type.

use super::builtin::BuiltinPolicy;
use super::decision::ResponseDecision;
use super::instance::{InstancePool, PluginFault, RequestVerdict};
use super::plugin::LoadedPlugin;
use pingora::http::{RequestHeader, ResponseHeader};
use std::sync::Arc;

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
