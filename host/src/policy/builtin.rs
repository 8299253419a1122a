//! Policies compiled into the host. `builtin:standard` decides exactly what
//! `plugins/standard` decides; it exists as the baseline that measures what
//! the WebAssembly layer costs, and for deployments that want no plugin.

use super::decision::{RequestDecision, ResponseDecision};
use super::host_api::request_host;
use super::instance::RequestVerdict;
use pingora::http::RequestHeader;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuiltinPolicy {
    /// RFC 9111 defaults: GET/HEAD cached, key = host + path + query.
    Standard,
}

impl BuiltinPolicy {
    /// Parses the `plugin = "builtin:NAME"` form of the config.
    pub fn from_config(value: &str) -> Option<Result<Self, String>> {
        let name = value.strip_prefix("builtin:")?;
        Some(match name {
            "standard" => Ok(Self::Standard),
            other => Err(format!(
                "unknown builtin policy {other:?} (known: standard)"
            )),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Standard => "builtin:standard",
        }
    }

    pub fn decide_request(self, req: &RequestHeader) -> RequestVerdict {
        match self {
            Self::Standard => {
                let method = req.method.as_str();
                if method != "GET" && method != "HEAD" {
                    return (RequestDecision::Bypass(format!("method {method}")), None);
                }
                let mut key = vec![request_host(req), req.uri.path().to_owned()];
                key.extend(req.uri.query().map(str::to_owned));
                (RequestDecision::Cache, Some(key))
            }
        }
    }

    pub fn decide_response(self) -> ResponseDecision {
        match self {
            Self::Standard => ResponseDecision::FollowOrigin,
        }
    }
}
