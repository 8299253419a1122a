//! response_cache_filter: the host's guards, then the plugin's decision,
//! turned into pingora-cache's `RespCacheable`.

use super::ctx::RequestCtx;
use super::CachetProxy;
use crate::policy::{ResponseDecision, StoreDirective};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora_cache::cache_control::{CacheControl, InterpretCacheControl};
use pingora_cache::{CacheMeta, CacheMetaDefaults, NoCacheReason, RespCacheable};
use std::time::{Duration, SystemTime};

/// No heuristic freshness for now: a response without explicit freshness
/// (Cache-Control, Expires) or a plugin store decision is not stored.
fn no_default_freshness(_: http::StatusCode) -> Option<Duration> {
    None
}
static ORIGIN_DEFAULTS: CacheMetaDefaults = CacheMetaDefaults::new(
    no_default_freshness as fn(http::StatusCode) -> Option<Duration>,
    0,
    0,
);

pub(super) fn response_cache_filter(
    proxy: &CachetProxy,
    session: &Session,
    resp: &ResponseHeader,
    ctx: &mut RequestCtx,
) -> RespCacheable {
    let verdict = decide(proxy, session, resp, ctx);
    ctx.stored = matches!(verdict, RespCacheable::Cacheable(_));
    verdict
}

fn not_stored(ctx: &mut RequestCtx, reason: impl Into<String>) -> RespCacheable {
    ctx.not_stored = Some(reason.into());
    RespCacheable::Uncacheable(NoCacheReason::OriginNotCache)
}

fn decide(
    proxy: &CachetProxy,
    session: &Session,
    resp: &ResponseHeader,
    ctx: &mut RequestCtx,
) -> RespCacheable {
    if let Some(reason) = host_guard(resp) {
        return not_stored(ctx, reason);
    }
    // Known to be too large: say so now. (A chunked body that outgrows the
    // limit is still streamed to the client and simply not kept by storage.)
    if content_length(resp).is_some_and(|len| len > proxy.state.cache.max_object_bytes) {
        return not_stored(ctx, "larger than max_object_bytes");
    }
    let cc = CacheControl::from_resp_headers(resp);
    if let Some(cc) = &cc {
        // The plugin can change lifetimes but never share what the origin
        // said must not be shared or kept.
        if cc.no_store() {
            return not_stored(ctx, "origin sent no-store");
        }
        if cc.private() {
            return not_stored(ctx, "origin sent private");
        }
    }
    let Some(policy) = ctx.policy.clone() else {
        return not_stored(ctx, "no policy");
    };
    match policy.decide_response(session.req_header(), resp) {
        Ok(ResponseDecision::Store(directive)) => store_for(&directive, resp, cc.as_ref(), ctx),
        Ok(ResponseDecision::NoStore(reason)) => not_stored(ctx, reason),
        Ok(ResponseDecision::FollowOrigin) => {
            let verdict = pingora_cache::filters::resp_cacheable(
                cc.as_ref(),
                resp.clone(),
                false,
                &ORIGIN_DEFAULTS,
            );
            if !matches!(verdict, RespCacheable::Cacheable(_)) {
                ctx.not_stored = Some("origin gave no freshness".into());
            }
            verdict
        }
        Err(fault) => {
            let tenant = ctx.tenant.as_ref().map_or("-", |t| t.name());
            tracing::warn!(
                tenant,
                kind = fault.kind(),
                "plugin fault in on-response: {fault}"
            );
            let reason = format!("plugin fault: {}", fault.kind());
            ctx.fault = Some(fault);
            not_stored(ctx, reason)
        }
    }
}

fn content_length(resp: &ResponseHeader) -> Option<usize> {
    resp.headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Responses the host never stores, whatever the plugin says.
fn host_guard(resp: &ResponseHeader) -> Option<&'static str> {
    let status = resp.status.as_u16();
    if !storable_status(status) {
        return Some("status not storable");
    }
    if resp.headers.get_all(http::header::VARY).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii() == b"*")
    }) {
        return Some("origin sent Vary: *");
    }
    if resp.headers.contains_key(http::header::SET_COOKIE) {
        return Some("origin sent Set-Cookie");
    }
    None
}

/// Final statuses a cache can reuse (no partial content, no 304, no 1xx).
fn storable_status(status: u16) -> bool {
    (200..=599).contains(&status) && status != 206 && status != 304
}

fn store_for(
    directive: &StoreDirective,
    resp: &ResponseHeader,
    cc: Option<&CacheControl>,
    ctx: &mut RequestCtx,
) -> RespCacheable {
    let now = SystemTime::now();
    let mut header = resp.clone();
    if let Some(cc) = cc {
        cc.strip_private_headers(&mut header);
    }
    let fresh_until = now + directive.ttl;
    ctx.stored = true;
    RespCacheable::Cacheable(CacheMeta::new(
        fresh_until,
        now,
        directive
            .stale_while_revalidate
            .as_secs()
            .min(u32::MAX.into()) as u32,
        directive.stale_if_error.as_secs().min(u32::MAX.into()) as u32,
        header,
    ))
}
