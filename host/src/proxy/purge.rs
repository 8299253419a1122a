//! `PURGE` on the proxy listener, for operators holding the admin token:
//!
//! - `PURGE /path` removes what is stored for that URL (the keys the tenant's plugin computes
//!   for a GET of it, with the PURGE's cookies and without);
//! - with `Surrogate-Key: a b`, removes every entry of the tenant tagged `a` or `b` instead
//!   (tags come from the origin's `Surrogate-Key` and the plugin's store decision);
//! - with `Cache-Purge-Soft: 1`, marks the entries stale instead of removing them, so they are
//!   revalidated (and may still be served stale where the response allowed it).
//!
//! Answers 200 when something was purged, 404 when nothing was stored, 401 without the right
//! bearer token, 405 when no admin token is configured, 502 when the tenant's plugin faulted
//! while computing the key (nothing was purged), and 503 when the purge applies in memory but
//! a tier could not record it: the disk tier could not write it (it may not hold after a
//! restart) or Redis is unreachable (other nodes may keep their copies until Redis is back and
//! this node sends the purge again); the body says why.

use super::ctx::{RequestCtx, Route};
use super::directives::SURROGATE_KEY;
use super::CachetProxy;
use crate::storage::tiers::{NotKept, Purged};
use pingora::proxy::Session;
use pingora::Result;

/// The request header asking for a soft purge.
pub const SOFT_HEADER: &str = "cache-purge-soft";

pub fn is_purge(session: &Session) -> bool {
    session.req_header().method.as_str() == "PURGE"
}

/// Answers a PURGE; the tenant and its policy are already in `ctx`.
pub(super) async fn handle(
    proxy: &CachetProxy,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<()> {
    ctx.route = Route::Answered("purge".into());
    let (status, body) = purge(proxy, session, ctx).await;
    super::respond::respond_text(session, ctx, status, body).await
}

async fn purge(proxy: &CachetProxy, session: &Session, ctx: &mut RequestCtx) -> (u16, String) {
    let state = &proxy.state;
    if state.admin_token.load().is_none() {
        return (
            405,
            "PURGE needs server.admin_token to be configured\n".into(),
        );
    }
    let req = session.req_header();
    let authorization = req.headers.get(http::header::AUTHORIZATION);
    if !state.admin_authorized(authorization.map(|v| v.as_bytes())) {
        return (401, "PURGE needs the admin bearer token\n".into());
    }
    let (Some(tenant), Some(policy)) = (ctx.tenant.clone(), ctx.policy.clone()) else {
        return (404, "nothing stored\n".into());
    };
    let soft = req
        .headers
        .get(SOFT_HEADER)
        .is_some_and(|v| v.as_bytes().trim_ascii() == b"1");
    let storage = state.cache.storage;
    let purged = if let Some(tags) = tags(session) {
        let tags: Vec<&str> = tags.split_ascii_whitespace().collect();
        // No tag at all would be read as every object of the tenant: in-flight fills of all
        // of them were not stored. A blank or unreadable field is a mistake, said as one.
        if tags.is_empty() {
            return (
                400,
                "Surrogate-Key names no tag: give the tags to purge, or leave it out to purge the URL\n"
                    .into(),
            );
        }
        storage.purge_tags(tenant.name(), &tags, soft)
    } else {
        let keys = match super::invalidate::get_keys(tenant.name(), &policy, req, &ctx.told_scheme)
        {
            Ok(keys) if keys.is_empty() => {
                return (404, "this URL is not cached by the site's policy\n".into())
            }
            Ok(keys) => keys,
            Err(fault) => {
                tracing::warn!(
                    tenant = tenant.name(),
                    kind = fault.kind(),
                    "plugin fault while computing the key to purge: {fault}"
                );
                state.record_fault(tenant.name(), &fault);
                ctx.route = Route::Answered(format!("plugin fault: {}", fault.kind()));
                ctx.fault = Some(fault);
                return (
                    502,
                    "the site's cache policy failed while computing the key; nothing was purged\n"
                        .into(),
                );
            }
        };
        // A tier that could not record one key's purge makes the answer a 503; the other
        // keys are purged all the same.
        let mut purged = Ok(Purged::none());
        for key in keys {
            let key = super::cache_key::storage_key(key, tenant.name());
            let this = if soft {
                storage.expire_key(&key)
            } else {
                storage.purge_key(&key)
            };
            purged = purged.and_then(|all| this.map(|one| all.and(one)));
        }
        purged
    };
    // Reported done only once the other nodes can see it.
    match purged.map(Purged::confirmed) {
        Ok(confirmed) => match confirmed.await {
            Ok(0) => (404, "nothing stored\n".into()),
            Ok(_) => (200, "purged\n".into()),
            Err(not_kept) => (503, not_kept_text(&not_kept)),
        },
        Err(not_kept) => (503, not_kept_text(&not_kept)),
    }
}

/// What a 503 says of a purge a tier could not record: the operator must not take it for done.
pub(crate) fn not_kept_text(not_kept: &NotKept) -> String {
    format!(
        "purged in memory, but a tier could not record it, so it may not hold after a \
         restart or reach the other nodes: {not_kept}\n"
    )
}

/// The tags a `Surrogate-Key` field names (empty when it names none, or none readable);
/// `None` without the field.
fn tags(session: &Session) -> Option<String> {
    let mut lines = session
        .req_header()
        .headers
        .get_all(SURROGATE_KEY)
        .iter()
        .peekable();
    lines.peek()?;
    let values: Vec<&str> = lines.filter_map(|v| v.to_str().ok()).collect();
    Some(values.join(" "))
}
