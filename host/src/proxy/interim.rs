//! Interim responses (`102 Processing`, `103 Early Hints`) on their way to the client.
//!
//! pingora 0.9.1 reads the origin's header tasks in batches (`process_upstream_tasks` in
//! pingora-proxy's proxy_h1.rs) and, once the final header of a cacheable response switches
//! the request to serving from the cache fill, drops the whole batch: a 103 that arrives
//! together with its 200 never reaches the client. cachet writes each interim response
//! itself as soon as it is seen, then tells pingora's HTTP/1 writer to skip interim
//! responses, so none is lost and none is sent twice. (Over HTTP/2 pingora never sends them.)

use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

/// Sends `header` to the client now if it is an interim response cachet forwards itself.
/// `100 Continue` stays pingora's (it answers `Expect`), and `101` is a final response.
/// An HTTP/1.0 client never gets one (RFC 9110 §15.2).
pub async fn forward_now(session: &mut Session, header: &ResponseHeader) -> Result<()> {
    if !(102..200).contains(&header.status.as_u16()) {
        return Ok(());
    }
    // A revalidation whose stale copy may be served if the origin fails: a hint written now
    // would start the response, and the stale copy could no longer be sent in its place
    // (probe AD: a 103 then a reset got a 504, a 103 then a 503 the origin's 503). Hints are
    // an optimisation; this one is dropped.
    let stale_to_fall_back_on = session.cache.can_serve_stale_error();
    if session.req_header().version < http::Version::HTTP_11 || stale_to_fall_back_on {
        session.downstream_session.set_ignore_info_resp(true);
        return Ok(());
    }
    session.downstream_session.set_ignore_info_resp(false);
    let written = session.write_response_header_ref(header, false).await;
    session.downstream_session.set_ignore_info_resp(true);
    written
}
