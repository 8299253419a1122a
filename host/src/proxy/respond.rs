//! Responses cachet writes itself (plugin answers, errors, PURGE results).
//! Pingora does not run `response_filter` for them, so `Cache-Status` is added here.

use super::ctx::RequestCtx;
use crate::policy::SyntheticResponse;
use bytes::Bytes;
use http::Method;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

/// A plugin's synthetic answer. The plugin's headers were checked when the
/// decision was read (no framing or hop-by-hop fields): the host frames it.
pub(super) async fn respond_synthetic(
    session: &mut Session,
    ctx: &mut RequestCtx,
    resp: SyntheticResponse,
) -> Result<()> {
    let mut header = ResponseHeader::build(resp.status, Some(resp.headers.len() + 2))?;
    for (name, value) in resp.headers {
        header.append_header(name, value)?;
    }
    write_response(session, ctx, header, resp.body).await
}

/// A short plain-text answer.
pub(super) async fn respond_text(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: u16,
    body: impl Into<Bytes>,
) -> Result<()> {
    let mut header = ResponseHeader::build(status, Some(3))?;
    header.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    write_response(session, ctx, header, body.into()).await
}

/// Writes a complete response with its framing: `Content-Length` from the
/// body, no body where HTTP forbids one (204, 304) or for HEAD.
async fn write_response(
    session: &mut Session,
    ctx: &mut RequestCtx,
    mut header: ResponseHeader,
    body: Bytes,
) -> Result<()> {
    let status = header.status.as_u16();
    let body = if super::framing::status_has_content(header.status) {
        header.insert_header(http::header::CONTENT_LENGTH, body.len())?;
        body
    } else {
        Bytes::new()
    };
    let cache_status =
        super::cache_status::value(&session.cache, ctx, ctx.origin_status.unwrap_or(status));
    ctx.outcome = super::cache_status::kind(&session.cache, ctx);
    header.insert_header(super::cache_status::HEADER, cache_status)?;
    let send_body = !body.is_empty() && session.req_header().method != Method::HEAD;
    session
        .write_response_header(Box::new(header), !send_body)
        .await?;
    if send_body {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}
