//! The last edits before a response reaches the client, hits included: the plugin's edits to
//! the origin response it fetched (so a field removed before storing is never served either),
//! then `on-deliver` when the plugin asked for it. A fault in `on-deliver` leaves the response
//! as it was.

use super::ctx::RequestCtx;
use super::CachetProxy;
use crate::policy::{apply_to_response, reapply_to_response};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

/// The plugin's edits to the origin response, on the head this request serves, before the
/// host strips what clients never see (so a field the plugin set that is the cache's own,
/// `Surrogate-Key` say, is stripped too). A head served from what the cache stored (this
/// request's fill, a stale entry's refetch, a revalidation, stored or not) holds them
/// already, with the 304's fields merged in after them: they are reapplied, which restores
/// what a merged 304 undid and appends nothing twice.
pub(super) fn apply_origin_edits(session: &Session, resp: &mut ResponseHeader, ctx: &RequestCtx) {
    use pingora_cache::CachePhase;
    if ctx.response_edits.is_empty() {
        return;
    }
    let from_store = matches!(
        session.cache.phase(),
        CachePhase::Miss
            | CachePhase::Expired
            | CachePhase::Revalidated
            | CachePhase::RevalidatedNoCache(_)
    );
    if from_store {
        reapply_to_response(&ctx.response_edits, resp);
    } else {
        apply_to_response(&ctx.response_edits, resp);
    }
}

/// `on-deliver`, when the plugin asked for it.
pub(super) fn apply(
    proxy: &CachetProxy,
    session: &Session,
    resp: &mut ResponseHeader,
    ctx: &mut RequestCtx,
) {
    if !ctx.deliver {
        return;
    }
    let Some(policy) = ctx.policy.clone() else {
        return;
    };
    match policy.deliver_edits(session.req_header(), resp) {
        Ok(edits) => apply_to_response(&edits, resp),
        Err(fault) => {
            let tenant = ctx.tenant.as_ref().map_or("-", |t| t.name());
            tracing::warn!(
                tenant,
                kind = fault.kind(),
                "plugin fault in on-deliver: {fault}"
            );
            proxy.state.record_fault(tenant, &fault);
            ctx.fault = Some(fault);
        }
    }
}
