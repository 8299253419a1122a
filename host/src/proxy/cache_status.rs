//! The `Cache-Status` response header (RFC 9211), naming the plugin's reason
//! whenever the plugin chose not to use or fill the cache.

use super::ctx::{RequestCtx, Route};
use pingora_cache::{CachePhase, HttpCache};
use std::fmt::Write;
use std::time::SystemTime;

/// The header's name.
pub const HEADER: &str = "cache-status";

/// The cache's name in the header.
const CACHE_NAME: &str = "cachet";

pub fn value(cache: &HttpCache, ctx: &RequestCtx, origin_status: u16) -> String {
    let mut v = String::from(CACHE_NAME);
    match &ctx.route {
        Route::Answered(detail) => {
            push_detail(&mut v, detail);
            return v;
        }
        Route::Bypass(reason) => {
            v.push_str("; fwd=bypass");
            push_detail(&mut v, reason);
            return v;
        }
        Route::Undecided | Route::Cache => {}
    }
    if ctx.unshared_hit {
        // A stored response exists but may not answer an authorized request.
        let _ = write!(v, "; fwd=bypass; fwd-status={origin_status}");
        push_stored(&mut v, ctx);
        if !ctx.stored && ctx.not_stored.is_none() {
            push_detail(&mut v, "authorized request");
        }
        return v;
    }
    match cache.phase() {
        CachePhase::Hit => {
            v.push_str("; hit");
            push_ttl(&mut v, cache);
        }
        CachePhase::StaleUpdating => {
            v.push_str("; fwd=stale");
            push_ttl(&mut v, cache);
            push_detail(&mut v, "stale-while-revalidate");
        }
        CachePhase::Stale => {
            v.push_str("; fwd=stale");
            push_ttl(&mut v, cache);
            push_detail(&mut v, "stale-if-error");
        }
        CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => {
            let _ = write!(v, "; fwd=stale; fwd-status={origin_status}");
            push_stored(&mut v, ctx);
        }
        CachePhase::Miss | CachePhase::Expired => {
            let _ = write!(v, "; fwd=miss; fwd-status={origin_status}");
            push_stored(&mut v, ctx);
        }
        // The response was judged not storable: it is still a miss.
        CachePhase::Disabled(_) if ctx.not_stored.is_some() => {
            let _ = write!(v, "; fwd=miss; fwd-status={origin_status}");
            push_stored(&mut v, ctx);
        }
        CachePhase::Disabled(reason) => {
            v.push_str("; fwd=bypass");
            push_detail(&mut v, reason.as_str());
        }
        CachePhase::Bypass => {
            let _ = write!(v, "; fwd=bypass; fwd-status={origin_status}");
            push_stored(&mut v, ctx);
        }
        CachePhase::Uninit | CachePhase::CacheKey => {
            v.push_str("; fwd=uri-miss");
        }
    }
    v
}

/// The short outcome name used by metrics and the access log.
pub fn kind(cache: &HttpCache, ctx: &RequestCtx) -> &'static str {
    match &ctx.route {
        Route::Answered(_) if ctx.fault.is_some() => "error",
        Route::Answered(_) => "answered",
        Route::Bypass(_) => "bypass",
        Route::Undecided | Route::Cache if ctx.unshared_hit => "bypass",
        Route::Undecided | Route::Cache => match cache.phase() {
            CachePhase::Hit => "hit",
            CachePhase::Stale | CachePhase::StaleUpdating => "stale",
            CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => "revalidated",
            CachePhase::Disabled(_) if ctx.not_stored.is_none() => "bypass",
            _ => "miss",
        },
    }
}

fn push_stored(v: &mut String, ctx: &RequestCtx) {
    if ctx.stored {
        v.push_str("; stored");
    } else if let Some(reason) = &ctx.not_stored {
        push_detail(v, reason);
    }
}

fn push_ttl(v: &mut String, cache: &HttpCache) {
    if let Some(meta) = cache.maybe_cache_meta() {
        let now = SystemTime::now();
        let ttl = match meta.fresh_until().duration_since(now) {
            Ok(left) => left.as_secs() as i64,
            Err(past) => -(past.duration().as_secs() as i64),
        };
        let _ = write!(v, "; ttl={ttl}");
    }
}

/// Appends `; detail="..."`, escaped as an RFC 8941 string.
fn push_detail(v: &mut String, detail: &str) {
    v.push_str("; detail=\"");
    for c in detail.chars().filter(|c| c.is_ascii_graphic() || *c == ' ') {
        if c == '"' || c == '\\' {
            v.push('\\');
        }
        v.push(c);
    }
    v.push('"');
}
