//! Host-side decisions, validated from what a plugin returned.
//!
//! Nothing a plugin returns is trusted: sizes are capped and strings checked
//! here, once, before the proxy acts on them.

use super::bindings;
use super::limits::PluginLimits;
use std::time::Duration;

/// Longest reason string kept from a plugin (it ends up in a response header).
const MAX_REASON_BYTES: usize = 200;
/// Most headers a synthetic response may carry.
const MAX_SYNTHETIC_HEADERS: usize = 64;
/// Most tags a store decision may carry.
const MAX_TAGS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestDecision {
    Cache,
    Bypass(String),
    Respond(SyntheticResponse),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntheticResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: bytes::Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseDecision {
    Store(StoreDirective),
    FollowOrigin,
    NoStore(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreDirective {
    pub ttl: Duration,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    pub tags: Vec<String>,
}

/// Keeps a reason printable and short enough for a `Cache-Status` detail.
pub(crate) fn clean_reason(reason: &str) -> String {
    reason
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(MAX_REASON_BYTES)
        .collect()
}

pub(crate) fn request_decision(
    raw: bindings::RequestDecision,
    limits: &PluginLimits,
) -> Result<RequestDecision, String> {
    Ok(match raw {
        bindings::RequestDecision::Cache => RequestDecision::Cache,
        bindings::RequestDecision::Bypass(reason) => RequestDecision::Bypass(clean_reason(&reason)),
        bindings::RequestDecision::Respond(resp) => {
            RequestDecision::Respond(synthetic_response(resp, limits)?)
        }
    })
}

fn synthetic_response(
    raw: bindings::SyntheticResponse,
    limits: &PluginLimits,
) -> Result<SyntheticResponse, String> {
    if !(200..=599).contains(&raw.status) {
        return Err(format!(
            "synthetic response status {} out of range 200-599",
            raw.status
        ));
    }
    if raw.body.len() > limits.max_synthetic_body_bytes {
        return Err(format!(
            "synthetic response body of {} bytes exceeds the limit of {}",
            raw.body.len(),
            limits.max_synthetic_body_bytes
        ));
    }
    if raw.headers.len() > MAX_SYNTHETIC_HEADERS {
        return Err(format!(
            "synthetic response has {} headers, limit {MAX_SYNTHETIC_HEADERS}",
            raw.headers.len()
        ));
    }
    let mut headers = Vec::with_capacity(raw.headers.len());
    for bindings::Header { name, value } in raw.headers {
        if is_framing_header(&name) {
            return Err(format!(
                "synthetic response header {name:?} is set by the host (framing or hop-by-hop)"
            ));
        }
        if http::HeaderName::from_bytes(name.as_bytes()).is_err()
            || http::HeaderValue::from_str(&value).is_err()
        {
            return Err(format!(
                "synthetic response header {name:?} is not valid HTTP"
            ));
        }
        headers.push((name, value));
    }
    Ok(SyntheticResponse {
        status: raw.status,
        headers,
        body: bytes::Bytes::from(raw.body),
    })
}

/// Headers that describe the message's framing or a single hop: the host
/// writes them from the body it sends, a plugin may not.
pub(crate) fn is_framing_header(name: &str) -> bool {
    const FRAMING: [&str; 8] = [
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
    ];
    FRAMING.iter().any(|f| name.trim().eq_ignore_ascii_case(f))
}

pub(crate) fn response_decision(raw: bindings::ResponseDecision) -> ResponseDecision {
    match raw {
        bindings::ResponseDecision::Store(d) => ResponseDecision::Store(StoreDirective {
            ttl: Duration::from_secs(d.ttl_seconds.into()),
            stale_while_revalidate: Duration::from_secs(d.stale_while_revalidate_seconds.into()),
            stale_if_error: Duration::from_secs(d.stale_if_error_seconds.into()),
            tags: d
                .tags
                .into_iter()
                .take(MAX_TAGS)
                .map(|t| clean_reason(&t))
                .collect(),
        }),
        bindings::ResponseDecision::FollowOrigin => ResponseDecision::FollowOrigin,
        bindings::ResponseDecision::NoStore(reason) => {
            ResponseDecision::NoStore(clean_reason(&reason))
        }
    }
}

/// Checks the key parts against the tenant's limits.
pub(crate) fn key_parts(parts: Vec<String>, limits: &PluginLimits) -> Result<Vec<String>, String> {
    if parts.len() > limits.max_key_parts {
        return Err(format!(
            "cache key has {} parts, limit {}",
            parts.len(),
            limits.max_key_parts
        ));
    }
    let total: usize = parts.iter().map(String::len).sum();
    if total > limits.max_key_bytes {
        return Err(format!(
            "cache key of {total} bytes exceeds the limit of {}",
            limits.max_key_bytes
        ));
    }
    Ok(parts)
}
