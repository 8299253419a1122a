//! The plugin's `on-error` hook: when the origin fails (unreachable, timeout, 5xx) and nothing
//! stale can be served, a 0.2.0 plugin may answer with its own response instead of the host's
//! error. Its answer is checked like any synthetic response; a fault leaves the host's error.

use super::ctx::{RequestCtx, Route};
use super::respond::respond_synthetic;
use super::CachetProxy;
use crate::policy::{OriginFailure, SyntheticResponse};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType, Result};

/// In `upstream_response_filter`: an origin 5xx that stale-if-error cannot cover goes to the
/// plugin; when it answers, the exchange is turned into an error so pingora stops streaming the
/// origin's response and `fail_to_proxy` writes the plugin's instead.
pub(super) fn on_origin_status(
    proxy: &CachetProxy,
    session: &Session,
    resp: &ResponseHeader,
    ctx: &mut RequestCtx,
) -> Result<()> {
    let status = resp.status.as_u16();
    if !resp.status.is_server_error() || session.cache.can_serve_stale_error() {
        return Ok(());
    }
    if let Some(answer) = ask(proxy, session, ctx, OriginFailure::Status(status)) {
        ctx.error_answer = Some(answer);
        return Err(Error::create(
            ErrorType::HTTPStatus(status),
            ErrorSource::Upstream,
            Some("origin error answered by the plugin's on-error".into()),
            None,
        ));
    }
    Ok(())
}

/// In `fail_to_proxy`: writes the plugin's answer to this failure, if it has one. Returns the
/// status written.
pub(super) async fn answer(
    proxy: &CachetProxy,
    session: &mut Session,
    e: &Error,
    ctx: &mut RequestCtx,
) -> Option<u16> {
    // A forwarded interim response (103 Early Hints) leaves room for the final one.
    let final_written = session
        .response_written()
        .is_some_and(|written| !written.status.is_informational());
    if final_written || e.esource() != &ErrorSource::Upstream {
        return None;
    }
    let answer = match ctx.error_answer.take() {
        Some(answer) => answer,
        None => {
            let failure = match e.etype() {
                ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                    OriginFailure::Timeout
                }
                ErrorType::HTTPStatus(code) => OriginFailure::Status(*code),
                _ => OriginFailure::Unreachable,
            };
            ask(proxy, session, ctx, failure)?
        }
    };
    let status = answer.status;
    ctx.route = Route::Answered("origin failed, answered by plugin".into());
    // The connection closes after a failed exchange (`fail_to_proxy`): say so in the answer,
    // or a client that pipelined its next request waits for an answer that never comes.
    session.set_keepalive(None);
    match respond_synthetic(session, ctx, answer).await {
        Ok(()) => Some(status),
        Err(write) => {
            tracing::debug!("cannot send the plugin's error response: {write}");
            None
        }
    }
}

fn ask(
    proxy: &CachetProxy,
    session: &Session,
    ctx: &mut RequestCtx,
    failure: OriginFailure,
) -> Option<SyntheticResponse> {
    let policy = ctx.policy.clone()?;
    if !policy.implements_0_2() {
        return None;
    }
    match policy.error_answer(session.req_header(), failure) {
        Ok(answer) => answer,
        Err(fault) => {
            let tenant = ctx.tenant.as_ref().map_or("-", |t| t.name());
            tracing::warn!(
                tenant,
                kind = fault.kind(),
                "plugin fault in on-error: {fault}"
            );
            proxy.state.record_fault(tenant, &fault);
            ctx.fault = Some(fault);
            None
        }
    }
}
