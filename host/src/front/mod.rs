//! The front: the proxy's connection handler, below Pingora's HTTP session. This module
//! serves HTTP/1.1; `h2` serves HTTP/2 connections the same way, stream by stream.
//!
//! Pingora's HTTP/1 session costs about 11 µs of CPU per request before and after any
//! caching is done (a bare Pingora server answering a fixed body from `request_filter`
//! measured 17–19 µs per request, the same answer from a `ServerApp` that reads heads
//! itself 7 µs). A cache hit does not need most of it, so the front reads each request head
//! on a connection itself and, for a plain HTTP/1.1 GET (`head.rs`), plans it as
//! `request_filter` would (tenant, plugin, key) and answers a lean hit directly: one write
//! for head and body.
//!
//! Everything else goes to Pingora with the bytes read so far as its pipelined prefix:
//! connections of another protocol (ALPN) whole; requests the front does not read,
//! unplanned; requests it planned but could not answer, with their plan (`Handover`,
//! delivered to `CachetProxy::on_connection_reuse`), so the plugin runs once. When Pingora
//! hands the connection back holding no bytes of a next request, the front reads again.

mod h2;
mod head;
mod reply;

pub(crate) use h2::take_handover;

use crate::connection::H2_PREFACE;
use crate::proxy::{plan_front, CachetProxy, ClientConn, FrontStep, Planned, RequestCtx};
use crate::shutdown::InFlightGuard;
use bytes::BytesMut;
use head::Head;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{SocketDigest, Stream, ALPN};
use pingora::proxy::{HttpProxy, ProxyHttp};
use pingora::server::ShutdownWatch;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// How long a connection may wait for its next request head, as Pingora waits for the first.
const IDLE: Duration = Duration::from_secs(60);

/// How long a connection idle at the stop still looks for a request its client sent just
/// before it (the stop and the bytes can wake the connection together).
const LAST_LOOK: Duration = Duration::from_millis(250);

/// The front, wrapping the proxy's Pingora app.
pub struct Front {
    proxy: Arc<HttpProxy<CachetProxy>>,
    cachet: CachetProxy,
    /// `[server] max_request_head`: the connection guard stops reading a head there; the
    /// front's buffer also holds at most one pipelined head beyond the one it reads.
    max_head: usize,
    /// `[server] request_head_timeout`: how long a head may take once its first bytes came.
    head_timeout: Duration,
}

/// How a connection is served.
enum Protocol {
    /// By the HTTP/1.1 front.
    Http1,
    /// By the HTTP/2 front (`h2`).
    Http2,
    /// By Pingora alone.
    Pingora,
    /// Not at all: the connection ended, or sent neither a head nor the h2c preface within
    /// `h2_idle_timeout`, before it could be told (Pingora would wait as long again).
    Gone,
}

/// A request the front planned, carried to the proxy's phases.
pub struct Handover {
    pub(crate) ctx: RequestCtx,
    pub(crate) planned: Box<Planned>,
}

impl Front {
    pub fn new(
        proxy: HttpProxy<CachetProxy>,
        cachet: CachetProxy,
        max_head: usize,
        head_timeout: Duration,
    ) -> Self {
        Self {
            proxy: Arc::new(proxy),
            cachet,
            max_head,
            head_timeout,
        }
    }

    /// Which protocol the connection speaks, as Pingora would decide it; a connection that
    /// cannot be told apart (a stream that cannot peek) is left to Pingora whole.
    async fn protocol(&self, stream: &mut Stream, shutdown: &ShutdownWatch) -> Protocol {
        match stream.selected_alpn_proto() {
            Some(ALPN::H2) => return Protocol::Http2,
            Some(ALPN::Custom(_)) => return Protocol::Pingora,
            _ => {}
        }
        let options = self.proxy.server_options();
        if options.is_some_and(|o| o.force_custom) {
            return Protocol::Pingora;
        }
        if stream.get_ssl_digest().is_some() || !options.is_some_and(|o| o.h2c) {
            return Protocol::Http1;
        }
        let mut start = [0u8; H2_PREFACE.len()];
        let mut stop = shutdown.clone();
        // The peek waits only while no byte has come. A stop then gets a last look, counted
        // as in flight, as an idle HTTP/1.1 connection gets: uncounted, a connection accepted
        // just before the stop was reset by the exit with its first request on the way.
        let peeked = tokio::select! {
            biased;
            peeked = stream.try_peek(&mut start) => peeked,
            () = stopping(&mut stop) => {
                let _looking = self.cachet.state.drain.enter();
                match tokio::time::timeout(LAST_LOOK, stream.try_peek(&mut start)).await {
                    Ok(peeked) => peeked,
                    Err(_) => return Protocol::Gone,
                }
            }
        };
        match peeked {
            Ok(true) if start == *H2_PREFACE => Protocol::Http2,
            Ok(true) => Protocol::Http1,
            Ok(false) => Protocol::Pingora,
            Err(_) => Protocol::Gone,
        }
    }

    /// Whether the front answers requests now: not while stopping (Pingora ends each
    /// connection after its request) nor with `[cache] lean_hits = false`.
    fn answering(&self, shutdown: &ShutdownWatch) -> bool {
        !self.stopping(shutdown) && self.cachet.state.lean_hits.load(Ordering::Relaxed)
    }

    /// Whether the process is stopping: answers given from now on end their connection.
    fn stopping(&self, shutdown: &ShutdownWatch) -> bool {
        *shutdown.borrow() || self.cachet.state.drain.draining()
    }

    /// Pingora serves requests on the connection, starting with `prefix`, until it hands the
    /// connection back holding no bytes of a next request (`Some`) or ends it (`None`).
    async fn hand_over(
        &self,
        stream: Stream,
        prefix: BytesMut,
        planned: Option<Handover>,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let mut session = ServerSession::new_http1(stream);
        session.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
        if !prefix.is_empty() {
            session.set_pipelined_prefix(prefix);
        }
        if let Some(planned) = planned {
            session.set_connection_user_context(Some(Box::new(planned)));
        }
        let mut served = self.proxy.process_new_http(session, shutdown).await;
        loop {
            let (stream, settings) = served?.consume();
            match settings {
                Some(settings) if !holds_no_head_begun(&settings) => {
                    // Pingora reads on from the start of a head it holds: that head gets
                    // `request_head_timeout`, and each read no more than the idle wait
                    // (Pingora's keep-alive wait after a request is unbounded).
                    crate::connection::head_held(&stream);
                    let mut session = ServerSession::new_http1(stream);
                    settings.apply_to_session(&mut session);
                    if session.get_keepalive() == Some(0) {
                        // No shorter than the head's own time, so that the 408 comes first.
                        let wait = IDLE.max(self.head_timeout).as_secs_f64().ceil() as u64;
                        session.set_keepalive(Some(wait));
                    }
                    served = self.proxy.process_new_http(session, shutdown).await;
                }
                _ => return Some(stream),
            }
        }
    }

    /// Reads until `buf` starts with a whole head, or with one Pingora must read; `None`
    /// when the connection ends instead: closed, idle too long, stopping while idle, or
    /// refused (a head too large, or not whole within `head_timeout`).
    ///
    /// From its first byte, a head counts as a request in flight (`arriving`): a stop that
    /// comes while it is partly read waits for it to be answered, as for any request.
    async fn next_head(
        &self,
        stream: &mut Stream,
        buf: &mut BytesMut,
        stop: &mut ShutdownWatch,
        arriving: &mut Option<InFlightGuard>,
    ) -> Option<Head> {
        // When the front first waited for more of this head: it must be whole
        // `head_timeout` later, however slowly its bytes trickle in.
        let mut head_started = None;
        loop {
            let idle = no_head_begun(buf);
            if !idle && arriving.is_none() {
                *arriving = Some(self.cachet.state.drain.enter());
            }
            match head::read(buf) {
                Head::Partial if buf.len() >= 2 * self.max_head => {
                    // The guard answers 431 first; this bounds the buffer whatever it does.
                    let _ = reply::refuse(stream, crate::connection::TOO_LARGE).await;
                    return None;
                }
                Head::Partial => {}
                head => return Some(head),
            }
            let wait = if idle {
                IDLE
            } else {
                let started = *head_started.get_or_insert_with(Instant::now);
                self.head_timeout.saturating_sub(started.elapsed())
            };
            let read = tokio::time::timeout(wait, stream.read_buf(buf));
            let read = if idle {
                // Idle between requests: a stop closes the connection, as Pingora does.
                let read = tokio::select! {
                    // A request that came before the stop is read and answered (with
                    // `Connection: close`), not reset by closing over it.
                    biased;
                    read = read => Some(read),
                    () = stopping(stop) => None,
                };
                match read {
                    Some(read) => read,
                    None if self.last_look(stream, buf, arriving).await => continue,
                    None => return None,
                }
            } else {
                read.await
            };
            match read {
                Ok(Ok(read)) if read > 0 => {}
                Err(_) if !idle => {
                    crate::metrics::connection_refused("head_timeout");
                    if reply::refuse(stream, crate::connection::HEAD_TIMED_OUT)
                        .await
                        .is_ok()
                    {
                        reply::close(stream).await;
                    }
                    return None;
                }
                // Closed, failed or idle too long: the connection ends, as with Pingora.
                _ => return None,
            }
        }
    }

    /// Whether a client sent bytes just before the stop, which the runtime had not yet told
    /// this connection about when the stop woke it (closing over them would reset the
    /// connection and lose the request). The look counts as a request in flight, so the
    /// drain waits for it; bytes found keep counting as the head arriving.
    async fn last_look(
        &self,
        stream: &mut Stream,
        buf: &mut BytesMut,
        arriving: &mut Option<InFlightGuard>,
    ) -> bool {
        let looking = self.cachet.state.drain.enter();
        match tokio::time::timeout(LAST_LOOK, stream.read_buf(buf)).await {
            Ok(Ok(read)) if read > 0 => {
                *arriving = Some(looking);
                true
            }
            _ => false,
        }
    }
}

/// The client's side of a connection, as the forwarding fields need it.
fn client_conn(socket: Option<&SocketDigest>, tls: bool) -> ClientConn {
    let client = socket.and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
    ClientConn { client, tls }
}

/// Whether `buf` holds nothing but (the start of) empty lines. Any other stray byte, such
/// as a CR not followed by LF, makes the head one Pingora reads and refuses.
/// Whether `buf` holds no head begun: nothing, or one empty line (a client's stray CRLF
/// after its last request, which RFC 9112 §2.2 lets a server skip). More empty lines start
/// a head's clock: a client sending one now and then would otherwise hold its connection
/// idle for ever, never reaching `request_head_timeout`.
fn no_head_begun(buf: &[u8]) -> bool {
    matches!(buf, b"" | b"\n" | b"\r" | b"\r\n")
}

/// Resolves once the server is stopping (never, should the watch's sender be gone).
async fn stopping(watch: &mut ShutdownWatch) {
    if watch.wait_for(|stopping| *stopping).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Whether Pingora kept no head begun past the request it served: no bytes, or one empty
/// line (a stray CRLF after a body, which RFC 9112 §2.2 lets a server skip, as the front
/// does: kept, it started a head's clock on an idle connection). Pingora 0.9 has no
/// accessor for those bytes, so its `Debug` form says. The client's bytes can spell any
/// text, but that form prints kept bytes as a byte string (`Some(b"...")`, quotes inside
/// escaped): the field is read where its name first appears, after fields that hold no
/// quote (numbers, flags, `Any { .. }`), and only forms that end the string where these do
/// are believed. Should the form change, connections stay with Pingora once handed over
/// (slower, never wrong: a test pins the form).
fn holds_no_head_begun(settings: &HttpPersistentSettings) -> bool {
    let form = format!("{settings:?}");
    let Some((before, kept)) = form.split_once("pipelined_prefix: ") else {
        return false;
    };
    !before.contains('"')
        && ["None, ", r#"Some(b"\r\n"), "#, r#"Some(b"\n"), "#]
            .iter()
            .any(|nothing| kept.starts_with(nothing))
}

#[async_trait::async_trait]
impl ServerApp for Front {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        match self.protocol(&mut stream, shutdown).await {
            Protocol::Http1 => {}
            Protocol::Http2 => {
                self.serve_h2(stream, shutdown).await;
                return None;
            }
            Protocol::Pingora => return self.proxy.process_new(stream, shutdown).await,
            Protocol::Gone => return None,
        }
        let tls = stream.get_ssl_digest();
        let conn = client_conn(stream.get_socket_digest().as_deref(), tls.is_some());
        let server_name = tls.as_deref().and_then(crate::tls::digest_server_name);
        let mut buf = BytesMut::with_capacity(2048);
        let mut stop = shutdown.clone();
        // Counts the head being read as a request in flight until its own context does.
        let mut arriving = None;
        loop {
            let head = self
                .next_head(&mut stream, &mut buf, &mut stop, &mut arriving)
                .await?;
            let (request, len, close) = match head {
                Head::Plain {
                    request,
                    len,
                    close,
                } if self.answering(shutdown) => (request, len, close),
                _ => {
                    // Pingora counts it once it has read it (its context), at once.
                    arriving = None;
                    // The head may not be whole (one Pingora repairs is handed over as
                    // soon as that is known): Pingora reads the rest in `head_timeout`.
                    crate::connection::head_held(&stream);
                    stream = self.hand_over(stream, buf.split(), None, shutdown).await?;
                    continue;
                }
            };
            let mut ctx = self.cachet.new_ctx();
            arriving = None;
            match plan_front(&self.cachet, request, len, conn, server_name, &mut ctx).await {
                FrontStep::Hit(hit, request) => {
                    let _ = buf.split_to(len);
                    crate::connection::request_answered(&stream, buf.len());
                    let status = hit.status();
                    // Counted before the client can read the answer and look at the metrics.
                    crate::metrics::front_hit();
                    // A stop that came while the plan waited (an L2 read, a plugin lane):
                    // the answer says the connection ends, as every answer in a drain does.
                    let close = close || self.stopping(shutdown);
                    let timeout = self.cachet.state.client_write_timeout;
                    let written = reply::write(&mut stream, hit, close, timeout).await;
                    let error = written.as_ref().err().map(|e| e.to_string());
                    crate::proxy::record_request(&self.cachet.state, &ctx, &request, status, error);
                    if written.is_err() {
                        return None;
                    }
                    if close {
                        reply::close(&mut stream).await;
                        return None;
                    }
                }
                FrontStep::HandOver(planned) => {
                    let planned = planned.map(|planned| Handover { ctx, planned });
                    stream = self
                        .hand_over(stream, buf.split(), planned, shutdown)
                        .await?;
                }
            }
        }
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    /// Settings as Pingora hands them back, holding `kept` (None: nothing).
    fn settings_keeping(kept: Option<&[u8]>) -> HttpPersistentSettings {
        let session = ServerSession::new_http1(Box::new(std::io::Cursor::new(Vec::<u8>::new())));
        let mut settings = HttpPersistentSettings::for_session(&session);
        if let Some(kept) = kept {
            settings.set_pipelined_prefix(BytesMut::from(kept));
        }
        settings
    }

    #[test]
    fn pingora_says_whether_it_kept_a_head_begun() {
        assert!(holds_no_head_begun(&settings_keeping(None)));
        assert!(holds_no_head_begun(&settings_keeping(Some(b"\r\n"))));
        assert!(holds_no_head_begun(&settings_keeping(Some(b"\n"))));
        for begun in [&b"GET / HTTP/1.1\r\n"[..], b"\r", b"\r\n\r\n", b"\r\nG"] {
            assert!(
                !holds_no_head_begun(&settings_keeping(Some(begun))),
                "{begun:?}"
            );
        }
    }

    /// Bytes a client sent cannot make the form read as holding nothing, quoted or not.
    #[test]
    fn bytes_kept_are_seen_whatever_they_spell() {
        for kept in [
            &b"POST / HTTP/1.1\r\nX: pipelined_prefix: None\r\n"[..],
            b"X: pipelined_prefix: None, pipelining_enabled: true }",
            b"X: \", pipelined_prefix: None, ",
            b"\\r\\n\"), ",
            b"\", pipelined_prefix: Some(b\"\\r\\n\"), ",
            b"",
        ] {
            assert!(
                !holds_no_head_begun(&settings_keeping(Some(kept))),
                "{kept:?}"
            );
        }
    }
}
