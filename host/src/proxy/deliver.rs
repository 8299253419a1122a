//! The last edits before a response reaches the client, hits included: the plugin's edits to
//! the origin response it fetched (so a field removed before storing is never served either),
//! then `on-deliver` when the plugin asked for it. A fault in `on-deliver` leaves the response
//! as it was.

use super::ctx::RequestCtx;
use super::CachetProxy;
use crate::policy::apply_to_response;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

/// The plugin's edits to the origin response, on the head this request serves, before the
/// host strips what clients never see (so a field the plugin set that is the cache's own,
/// `Surrogate-Key` say, is stripped too). Not on a head served from what this request stored
/// (its fill, or its revalidation): the edits are already in it, and applying them again
/// would append every appended value twice.
pub(super) fn apply_origin_edits(session: &Session, resp: &mut ResponseHeader, ctx: &RequestCtx) {
    use pingora_cache::CachePhase;
    let from_store = matches!(
        session.cache.phase(),
        CachePhase::Miss | CachePhase::Revalidated
    );
    if !ctx.response_edits.is_empty() && !from_store {
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
