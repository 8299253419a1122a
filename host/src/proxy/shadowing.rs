//! Where a tenant's shadow plugin runs: right after each live hook call, on the same request
//! (and response), its answer only compared and recorded. Without a shadow this is one
//! atomic load per request.

use super::ctx::RequestCtx;
use crate::policy::{PluginFault, RequestVerdict, ResponseDecision};
use crate::tenant::Tenant;
use pingora::http::{RequestHeader, ResponseHeader};
use std::sync::Arc;

/// Before the live `on-request`: samples the request, and keeps it as the client sent it
/// when it is in the sample. The live plugin's edits land on the request itself, and the
/// shadow is judged on what it would decide in the live plugin's place, not after it.
pub(super) fn sample(tenant: &Tenant, request: &RequestHeader, ctx: &mut RequestCtx) {
    let Some(shadow) = tenant.shadow() else {
        return;
    };
    if shadow.takes_request() {
        ctx.shadow = Some(shadow);
        ctx.shadow_request = Some(Box::new(request.clone()));
    }
}

/// After the live `on-request` (and `cache-key`), for a request in the sample: compares.
pub(super) fn on_request(tenant: &Arc<Tenant>, live: &RequestVerdict, ctx: &mut RequestCtx) {
    if let (Some(shadow), Some(request)) = (&ctx.shadow, &ctx.shadow_request) {
        let backends: Vec<&str> = tenant
            .config
            .backends
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        let live_backend = ctx.backend.and_then(|i| backends.get(i).copied());
        shadow.compare_request(tenant.name(), request, live, live_backend, &backends);
    }
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
    let request = ctx.shadow_request.as_deref().unwrap_or(request);
    shadow.compare_response(tenant.name(), request, response, live);
}
