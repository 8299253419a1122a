//! request_filter: route to a tenant, ask its plugin, and answer directly
//! when the plugin (or the host's own guards) say so.

use super::ctx::{RequestCtx, Route};
use super::CachetProxy;
use crate::config::OnPluginError;
use crate::policy::{PluginFault, RequestDecision, SyntheticResponse};
use bytes::Bytes;
use http::Method;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

/// Returns true when a response has been written and the request is done.
pub(super) async fn request_filter(
    proxy: &CachetProxy,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<bool> {
    let host = crate::policy::request_host(session.req_header());
    let tenant = proxy.state.router.load().route(&host).cloned();
    let Some(tenant) = tenant else {
        ctx.route = Route::Answered("no tenant for this host".into());
        respond_text(session, ctx, 421, "no tenant is configured for this host\n").await?;
        return Ok(true);
    };
    let policy = tenant.policy();
    ctx.tenant = Some(tenant.clone());
    ctx.policy = Some(policy.clone());
    if super::purge::is_purge(session) {
        super::purge::handle(proxy, session, ctx).await?;
        return Ok(true);
    }
    ctx.invalidates = super::invalidate::is_unsafe(&session.req_header().method);
    let verdict = policy.decide_request(session.req_header());

    match verdict {
        Ok((RequestDecision::Cache, Some(parts))) => {
            ctx.route = match host_guard(session) {
                Some(reason) => Route::Bypass(reason),
                None => {
                    ctx.key = super::cache_key::primary_key(tenant.name(), &parts);
                    Route::Cache
                }
            };
        }
        Ok((RequestDecision::Cache, None)) => unreachable_key(ctx),
        Ok((RequestDecision::Bypass(reason), _)) => ctx.route = Route::Bypass(reason),
        Ok((RequestDecision::Respond(resp), _)) => {
            ctx.route = Route::Answered("answered by plugin".into());
            respond_synthetic(session, ctx, resp).await?;
            return Ok(true);
        }
        Err(fault) => return on_fault(proxy, session, ctx, fault).await,
    }
    Ok(false)
}

fn unreachable_key(ctx: &mut RequestCtx) {
    // decide_request always returns a key with "cache"; stay safe anyway.
    ctx.route = Route::Bypass("plugin returned no cache key".into());
}

/// Host rules a plugin cannot override.
fn host_guard(session: &Session) -> Option<String> {
    let req = session.req_header();
    if req.method != Method::GET && req.method != Method::HEAD {
        return Some(format!("method {} is not cacheable", req.method));
    }
    // Requests with Authorization use the cache, under the shared-cache rules
    // applied on hit (shared.rs) and when storing (response.rs).
    None
}

/// Applies the tenant's `on_plugin_error` after a fault in `on-request`.
pub(super) async fn on_fault(
    proxy: &CachetProxy,
    session: &mut Session,
    ctx: &mut RequestCtx,
    fault: PluginFault,
) -> Result<bool> {
    let tenant = ctx.tenant.as_ref().map_or("-", |t| t.name());
    tracing::warn!(tenant, kind = fault.kind(), "plugin fault: {fault}");
    proxy.state.record_fault(tenant, &fault);
    let detail = format!("plugin fault: {}", fault.kind());
    let mode = ctx
        .tenant
        .as_ref()
        .map_or(OnPluginError::Error, |t| t.config.on_plugin_error);
    ctx.fault = Some(fault);
    match mode {
        OnPluginError::Bypass => {
            ctx.route = Route::Bypass(detail);
            Ok(false)
        }
        OnPluginError::Error => {
            ctx.route = Route::Answered(detail);
            respond_text(session, ctx, 502, "the cache policy of this site failed\n").await?;
            Ok(true)
        }
    }
}

async fn respond_synthetic(
    session: &mut Session,
    ctx: &mut RequestCtx,
    resp: SyntheticResponse,
) -> Result<()> {
    let mut header = ResponseHeader::build(resp.status, Some(resp.headers.len() + 2))?;
    for (name, value) in resp.headers {
        header.append_header(name, value)?;
    }
    header.insert_header(http::header::CONTENT_LENGTH, resp.body.len())?;
    write_response(session, ctx, header, resp.body).await
}

pub(super) async fn respond_text(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: u16,
    body: &'static str,
) -> Result<()> {
    let mut header = ResponseHeader::build(status, Some(3))?;
    header.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    header.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    write_response(session, ctx, header, Bytes::from_static(body.as_bytes())).await
}

/// Writes a complete response; the body is omitted for HEAD. Pingora does not
/// run `response_filter` for responses written here, so `Cache-Status` is
/// added directly.
async fn write_response(
    session: &mut Session,
    ctx: &mut RequestCtx,
    mut header: ResponseHeader,
    body: Bytes,
) -> Result<()> {
    let status = super::cache_status::value(&session.cache, ctx, header.status.as_u16());
    ctx.outcome = super::cache_status::kind(&session.cache, ctx);
    header.insert_header(super::cache_status::HEADER, status)?;
    let is_head = session.req_header().method == Method::HEAD;
    session
        .write_response_header(Box::new(header), is_head || body.is_empty())
        .await?;
    if !is_head && !body.is_empty() {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}
