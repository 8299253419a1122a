//! Where a tenant's shadow plugin runs: right after each live hook call, on the same request
//! (and response), its answer only compared and recorded. Without a shadow this is one
//! atomic load per request.

use super::ctx::RequestCtx;
use crate::policy::{PluginFault, RequestVerdict, ResponseDecision};
use crate::tenant::Tenant;
use pingora::http::{RequestHeader, ResponseHeader};
use std::sync::Arc;

/// After the live `on-request` (and `cache-key`): samples the request and compares.
pub(super) fn on_request(
    tenant: &Arc<Tenant>,
    request: &RequestHeader,
    live: &RequestVerdict,
    ctx: &mut RequestCtx,
) {
    let Some(shadow) = tenant.shadow() else {
        return;
    };
    if !shadow.takes_request() {
        return;
    }
    shadow.compare_request(tenant.name(), request, live);
    ctx.shadow = Some(shadow);
}

/// After the live `on-response`, for a request in the shadow's sample.
pub(super) fn on_response(
    request: &RequestHeader,
    response: &ResponseHeader,
    live: &Result<ResponseDecision, PluginFault>,
    ctx: &RequestCtx,
) {
    let (Some(shadow), Some(tenant)) = (&ctx.shadow, &ctx.tenant) else {
        return;
    };
    shadow.compare_response(tenant.name(), request, response, live);
}
