//! Host-side decisions, validated from what a plugin returned.
//!
//! Nothing a plugin returns is trusted: sizes are capped and strings checked
//! here, once, before the proxy acts on them.

use super::bindings::{v1, v2};
use super::limits::PluginLimits;
use std::time::Duration;

/// Longest reason string kept from a plugin (it ends up in a response header).
const MAX_REASON_BYTES: usize = 200;
/// Most headers a synthetic response may carry.
const MAX_SYNTHETIC_HEADERS: usize = 64;

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
    /// Not stored; the key skips the cache (lookup and lock) for this long.
    PassFor(Duration),
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
    raw: v2::cachet::policy::types::RequestDecision,
    limits: &PluginLimits,
) -> Result<RequestDecision, String> {
    use v2::cachet::policy::types::RequestDecision as Raw;
    Ok(match raw {
        Raw::Cache => RequestDecision::Cache,
        Raw::Bypass(reason) => RequestDecision::Bypass(clean_reason(&reason)),
        Raw::Respond(resp) => RequestDecision::Respond(synthetic_response(resp, limits)?),
    })
}

/// A 0.1.0 decision in 0.2.0 terms (the variants are the same).
pub(crate) fn request_decision_v1(
    raw: v1::cachet::policy::types::RequestDecision,
    limits: &PluginLimits,
) -> Result<RequestDecision, String> {
    use v1::cachet::policy::types::RequestDecision as Raw;
    use v2::cachet::policy::types as new;
    request_decision(
        match raw {
            Raw::Cache => new::RequestDecision::Cache,
            Raw::Bypass(reason) => new::RequestDecision::Bypass(reason),
            Raw::Respond(r) => new::RequestDecision::Respond(new::SyntheticResponse {
                status: r.status,
                headers: r
                    .headers
                    .into_iter()
                    .map(|h| new::Header {
                        name: h.name,
                        value: h.value,
                    })
                    .collect(),
                body: r.body,
            }),
        },
        limits,
    )
}

pub(crate) fn synthetic_response(
    raw: v2::cachet::policy::types::SyntheticResponse,
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
    // As a plugin's header edits: a head no larger than a client could have sent.
    let head_bytes: usize = raw
        .headers
        .iter()
        .map(|h| h.name.len() + h.value.len())
        .sum();
    if head_bytes > crate::config::PINGORA_MAX_HEAD {
        return Err(format!(
            "synthetic response headers of {head_bytes} bytes exceed the limit of {}",
            crate::config::PINGORA_MAX_HEAD
        ));
    }
    let mut headers = Vec::with_capacity(raw.headers.len());
    for v2::cachet::policy::types::Header { name, value } in raw.headers {
        if is_framing_header(&name) {
            return Err(format!(
                "synthetic response header {name:?} is set by the host (framing or hop-by-hop)"
            ));
        }
        // Without the padding a field value may not have (RFC 9110 §5.5), as header edits:
        // HTTP/2 clients reset a stream whose response carries it.
        let value = value.trim_matches([' ', '\t']);
        if http::HeaderName::from_bytes(name.as_bytes()).is_err()
            || http::HeaderValue::from_str(value).is_err()
        {
            return Err(format!(
                "synthetic response header {name:?} is not valid HTTP"
            ));
        }
        headers.push((name, value.to_owned()));
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

pub(crate) fn response_decision(
    raw: v2::cachet::policy::types::ResponseDecision,
) -> ResponseDecision {
    use v2::cachet::policy::types::ResponseDecision as Raw;
    match raw {
        Raw::Store(d) => ResponseDecision::Store(StoreDirective {
            ttl: Duration::from_secs(d.ttl_seconds.into()),
            stale_while_revalidate: Duration::from_secs(d.stale_while_revalidate_seconds.into()),
            stale_if_error: Duration::from_secs(d.stale_if_error_seconds.into()),
            tags: store_tags(&d.tags),
        }),
        Raw::FollowOrigin => ResponseDecision::FollowOrigin,
        Raw::NoStore(reason) => ResponseDecision::NoStore(clean_reason(&reason)),
        Raw::PassFor(seconds) => ResponseDecision::PassFor(Duration::from_secs(seconds.into())),
    }
}

/// The plugin's tags one by one (split on whitespace), as listed up to one past what a
/// response may list, each kept whole up to one byte past what the index takes: the excess
/// stays for `storage::indexable_tags` to see, so the response is not stored. Dropped or cut,
/// the tags would be missing from the index, and their purges would miss the stored object.
/// Repeats stay too, for that check to count (it keeps each tag once).
fn store_tags(given: &[String]) -> Vec<String> {
    use crate::storage::tags::{MAX_TAGS_LISTED, MAX_TAG_BYTES};
    given
        .iter()
        .flat_map(|t| t.split_ascii_whitespace())
        .take(MAX_TAGS_LISTED + 1)
        .map(|tag| longer_than(tag, MAX_TAG_BYTES).to_owned())
        .collect()
}

/// `tag` cut after its first character boundary past `bytes`: still longer than `bytes` when
/// it was.
fn longer_than(tag: &str, bytes: usize) -> &str {
    let mut end = bytes + 1;
    while end < tag.len() && !tag.is_char_boundary(end) {
        end += 1;
    }
    &tag[..end.min(tag.len())]
}

/// A 0.1.0 decision in 0.2.0 terms (0.2.0 only adds `pass-for`).
pub(crate) fn response_decision_v1(
    raw: v1::cachet::policy::types::ResponseDecision,
) -> ResponseDecision {
    use v1::cachet::policy::types::ResponseDecision as Raw;
    use v2::cachet::policy::types as new;
    response_decision(match raw {
        Raw::Store(d) => new::ResponseDecision::Store(new::StoreDirective {
            ttl_seconds: d.ttl_seconds,
            stale_while_revalidate_seconds: d.stale_while_revalidate_seconds,
            stale_if_error_seconds: d.stale_if_error_seconds,
            tags: d.tags,
        }),
        Raw::FollowOrigin => new::ResponseDecision::FollowOrigin,
        Raw::NoStore(reason) => new::ResponseDecision::NoStore(reason),
    })
}

/// Room a key may take beyond the bytes of the request it is made from (separators, a
/// tenant's constant parts).
const KEY_ROOM: usize = 1024;

/// Checks the key parts against the tenant's limits. Too many parts, or more bytes than
/// `max_key_bytes` and than the request they were made from (`request_bytes`) holds, is the
/// plugin's doing: a fault. A key over `max_key_bytes` only because the client sent a long
/// URL or field is not: the request bypasses the cache ([`key_too_long`]).
pub(crate) fn key_parts(
    parts: Vec<String>,
    limits: &PluginLimits,
    request_bytes: usize,
) -> Result<Vec<String>, String> {
    if parts.len() > limits.max_key_parts {
        return Err(format!(
            "cache key has {} parts, limit {}",
            parts.len(),
            limits.max_key_parts
        ));
    }
    let total: usize = parts.iter().map(String::len).sum();
    if total > limits.max_key_bytes && total > request_bytes.saturating_add(KEY_ROOM) {
        return Err(format!(
            "cache key of {total} bytes exceeds the limit of {} and the request's own size",
            limits.max_key_bytes
        ));
    }
    Ok(parts)
}

/// Why a key is not used, when its parts add up to more than `max_key_bytes`.
pub fn key_too_long(parts: &[String], limits: &PluginLimits) -> Option<String> {
    let total: usize = parts.iter().map(String::len).sum();
    (total > limits.max_key_bytes).then(|| {
        format!(
            "cache key of {total} bytes is over max_key_bytes ({})",
            limits.max_key_bytes
        )
    })
}

/// Longest backend name a plugin may return.
const MAX_BACKEND_NAME: usize = 64;

/// Everything `on-request` decided (0.1.0 plugins only decide).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPlan {
    pub decision: RequestDecision,
    pub edits: super::edits::RequestEdits,
    /// A tenant backend by name, checked against the config by the proxy.
    pub backend: Option<String>,
    /// Whether `on-deliver` runs for this request's response.
    pub deliver: bool,
}

impl RequestPlan {
    pub(crate) fn decision_only(decision: RequestDecision) -> Self {
        Self {
            decision,
            edits: Default::default(),
            backend: None,
            deliver: false,
        }
    }
}

/// Everything `on-response` decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponsePlan {
    pub decision: ResponseDecision,
    /// Applied before the response is judged, stored and served.
    pub edits: Vec<super::edits::HeaderEdit>,
}

/// Why the origin gave no usable response (the `on-error` argument).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginFailure {
    Unreachable,
    Timeout,
    Status(u16),
}

/// `client_path`: the request path the plugin was shown.
pub(crate) fn request_plan(
    raw: v2::cachet::policy::types::RequestPlan,
    limits: &PluginLimits,
    client_path: &str,
) -> Result<RequestPlan, String> {
    let backend = match raw.backend {
        Some(name) if name.len() > MAX_BACKEND_NAME || name.is_empty() => {
            return Err(format!(
                "backend name of {} bytes (1-{MAX_BACKEND_NAME})",
                name.len()
            ))
        }
        other => other,
    };
    Ok(RequestPlan {
        decision: request_decision(raw.decision, limits)?,
        edits: super::edits::RequestEdits {
            headers: super::edits::request_header_edits(raw.edits)?,
            path_and_query: super::edits::path_and_query(raw.path_and_query, client_path)?,
        },
        backend,
        deliver: raw.deliver,
    })
}

pub(crate) fn response_plan(
    raw: v2::cachet::policy::types::ResponsePlan,
) -> Result<ResponsePlan, String> {
    Ok(ResponsePlan {
        decision: response_decision(raw.decision),
        edits: super::edits::header_edits(raw.edits, "response")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use v2::cachet::policy::types::{Header, SyntheticResponse as Raw};

    fn store(tags: Vec<String>) -> Vec<String> {
        use v2::cachet::policy::types::{ResponseDecision as Raw, StoreDirective as Given};
        let given = Given {
            ttl_seconds: 60,
            stale_while_revalidate_seconds: 0,
            stale_if_error_seconds: 0,
            tags,
        };
        match response_decision(Raw::Store(given)) {
            ResponseDecision::Store(directive) => directive.tags,
            other => panic!("not a store: {other:?}"),
        }
    }

    /// A plugin's 65th tag, or a tag over 200 bytes, was dropped or cut: the object was stored
    /// without it and its purge missed. Whatever the index cannot keep now reaches its check.
    #[test]
    fn tags_are_kept_whole_up_to_one_past_what_the_index_keeps() {
        use crate::storage::tags::MAX_TAGS_LISTED;
        let unindexable_tags = |list: &str| crate::storage::indexable_tags(list.split(' ')).err();
        let many: Vec<String> = (0..200).map(|i| format!("t{i}")).collect();
        let kept = store(many);
        assert_eq!(kept.len(), 200);
        assert!(unindexable_tags(&kept.join(" ")).is_some());
        let long = "a".repeat(230);
        assert_eq!(store(vec![long.clone()]), std::slice::from_ref(&long));
        assert_eq!(unindexable_tags(&long), None);
        let over = format!("{}é{}", "b".repeat(256), "c".repeat(5000));
        let cut = store(vec![over]);
        assert_eq!(cut[0].len(), 258);
        assert!(unindexable_tags(&cut[0]).is_some());
        // Characters the stored header cannot carry are kept for the index check to refuse.
        let accented = store(vec!["catégorie".into()]);
        assert_eq!(accented, ["catégorie"]);
        assert!(unindexable_tags(&accented[0]).is_some());
        // A tag with spaces is several tags; repeats are kept, up to one past what a response
        // may list, for the index check to refuse a longer list.
        assert_eq!(store(vec!["two tags".into()]), ["two", "tags"]);
        let mut repeated = vec!["same".to_string(); 5 * MAX_TAGS_LISTED];
        repeated.push("last".into());
        let kept = store(repeated);
        assert_eq!(kept.len(), MAX_TAGS_LISTED + 1);
        assert!(unindexable_tags(&kept.join(" ")).is_some());
    }

    fn answer(headers: Vec<Header>) -> Raw {
        Raw {
            status: 200,
            headers,
            body: b"ok".to_vec(),
        }
    }

    /// The headers of a synthetic answer are bounded in bytes, not only in number: 64 values
    /// of 1 MiB each were taken whole.
    #[test]
    fn a_synthetic_head_is_bounded_in_bytes() {
        let limits = PluginLimits::default();
        let header = |value: String| Header {
            name: "x-big".into(),
            value,
        };
        let large = vec![header("v".repeat(crate::config::PINGORA_MAX_HEAD / 2)); 3];
        let refused = synthetic_response(answer(large), &limits).unwrap_err();
        assert!(refused.contains("exceed the limit"), "{refused}");
        let fits = vec![header("v".repeat(1024)); 8];
        assert_eq!(
            synthetic_response(answer(fits), &limits)
                .unwrap()
                .headers
                .len(),
            8
        );
    }

    /// A synthetic answer's field values lose their padding, as edited ones do: HTTP/2
    /// clients refuse a padded value.
    #[test]
    fn a_synthetic_field_value_is_unpadded() {
        let padded = vec![Header {
            name: "x-a".into(),
            value: " \tv w\t ".into(),
        }];
        let answer = synthetic_response(answer(padded), &PluginLimits::default()).unwrap();
        assert_eq!(answer.headers, [("x-a".to_owned(), "v w".to_owned())]);
    }
}
