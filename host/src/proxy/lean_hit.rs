//! The lean hit path: a plain GET whose stored response is fresh, complete and does not vary is
//! answered in `request_filter` (from memory, or from an L2 tier when memory holds nothing for
//! the key) without pingora-cache's state machine (cache phases, lock checks, the hit handler
//! and a second header copy). Anything else — a range, a conditional, `Authorization`, request
//! cache directives, HEAD, a stale or varying entry, a fill in flight, a framing the stored
//! header does not state — takes the full path, which the HTTP caching and tier tests cover
//! with this path on and off (`[cache] lean_hits`).

use super::ctx::RequestCtx;
use super::CachetProxy;
use crate::storage::tiers::LeanLookup;
use bytes::Bytes;
use http::header;
use http::Method;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

/// Request fields that change what a stored response may answer with: each one sends the
/// request down the full path.
const FULL_PATH_FIELDS: [header::HeaderName; 9] = [
    header::RANGE,
    header::IF_RANGE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::AUTHORIZATION,
    header::CACHE_CONTROL,
    header::PRAGMA,
];

/// A response the lean path found: the stored head made ready for the client (`Age`,
/// `Cache-Status`, hop-by-hop fields dropped) and the stored body.
pub(crate) struct LeanResponse {
    pub head: Box<ResponseHeader>,
    pub body: Bytes,
}

/// Answers the request from storage if it qualifies; `Ok(true)` once a response is written.
pub(super) async fn try_serve(
    proxy: &CachetProxy,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> pingora::Result<bool> {
    if session.is_subrequest() {
        return Ok(false);
    }
    let Some(hit) = lookup(proxy, session.req_header(), ctx).await? else {
        return Ok(false);
    };
    session.write_response_header(hit.head, false).await?;
    session.write_response_body(Some(hit.body), true).await?;
    Ok(true)
}

/// The lean answer to `req` if it qualifies and storage holds one. A lookup that found
/// nothing to answer with leaves what it read from the L2 tiers in `ctx` for the full path.
pub(super) async fn lookup(
    proxy: &CachetProxy,
    req: &RequestHeader,
    ctx: &mut RequestCtx,
) -> pingora::Result<Option<LeanResponse>> {
    if !proxy.state.lean_hits.load(Ordering::Relaxed) || !is_plain(req) {
        return Ok(None);
    }
    let Some(tenant) = &ctx.tenant else {
        return Ok(None);
    };
    let now = SystemTime::now();
    let key = super::cache_key::storage_key(ctx.key.clone(), tenant.name());
    let hit = match proxy.state.cache.storage.lean_lookup(&key, now).await {
        LeanLookup::Hit(hit) => hit,
        LeanLookup::FullPath(read_ahead) => {
            ctx.tier_read_ahead = read_ahead;
            return Ok(None);
        }
    };
    let body = hit.body();
    let stored = hit.header();
    let mut response = Box::new(stored.clone());
    // As pingora's hit path: stored heads go out as HTTP/1.1, with the time since the fill.
    response.set_version(http::Version::HTTP_11);
    response.insert_header(header::AGE, hit.age(now).as_secs())?;
    // As pingora's range filter does for a 200 with a length: ranges may be asked for later.
    if response.status == http::StatusCode::OK {
        response.insert_header(header::ACCEPT_RANGES, "bytes")?;
    }
    super::hop_by_hop::strip_for_downstream(&mut response);
    super::directives::strip_downstream(&mut response);
    ctx.tier = hit.tier();
    let status = super::cache_status::hit_value(ctx, hit.ttl(now));
    super::cache_status::append_member(&mut response, status)?;
    ctx.outcome = "hit";
    crate::metrics::lean_hit();
    Ok(Some(LeanResponse {
        head: response,
        body,
    }))
}

/// A GET with nothing that asks for more than the stored response as it is.
fn is_plain(req: &RequestHeader) -> bool {
    req.method == Method::GET
        && FULL_PATH_FIELDS
            .iter()
            .all(|name| !req.headers.contains_key(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, fields: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build(method, b"/a", None).expect("request");
        for (name, value) in fields {
            req.append_header(name.to_string(), *value).expect("field");
        }
        req
    }

    #[test]
    fn only_plain_gets_take_the_lean_path() {
        assert!(is_plain(&request("GET", &[("accept", "*/*")])));
        assert!(!is_plain(&request("HEAD", &[])));
        assert!(!is_plain(&request("POST", &[])));
        for field in [
            "range",
            "if-range",
            "if-none-match",
            "if-modified-since",
            "if-match",
            "if-unmodified-since",
            "authorization",
            "cache-control",
            "pragma",
        ] {
            assert!(!is_plain(&request("GET", &[(field, "x")])), "{field}");
        }
    }
}
