//! The HTTP/2 front: the connection's own accept loop, below Pingora's HTTP session.
//!
//! Pingora runs every HTTP/2 stream as a task of its proxy: a session with its cache state
//! and downstream modules, the phases, a wake-up of the connection per response. A lean hit
//! needs none of it. Measured on the bare floor (`examples/front_floor.rs` against
//! `examples/pingora_floor.rs`, h2load 16 connections × 4 streams, a fixed 1 KiB answer):
//! 19–24 µs of CPU per response through Pingora's proxy, 15–20 from a task per stream over
//! the HTTP/2 session alone, 13–17 answered in the accept loop itself.
//!
//! So the front accepts the streams itself and serves each one as a future that is first
//! polled right there, in the accept loop: a plain GET planned as `request_filter` would
//! plan it (tenant, plugin, key) whose lean lookup finds a hit is written at once, and the
//! responses of the streams that arrived together leave in one flush. A stream that has to
//! wait (an L2 tier's read, the origin, a client's flow-control window) is spawned as its
//! own task from where it stopped, as Pingora would have run it. Anything else goes to
//! Pingora's proxy on its own task, with the plan made so far (`Handover` in the request's
//! extensions), so the plugin runs once.
//!
//! What Pingora's own accept loop guarantees is kept: a shutdown sends GOAWAY and the loop
//! goes on until the streams in flight are done; a connection with no stream in flight for
//! `h2_idle_timeout` is closed; a connection whose streams are rejected as malformed
//! (forbidden bytes in the target, conflicting lengths, an ambiguous authority) is closed at
//! the 32nd, Pingora's budget, which its public accept call does not count across calls.

use super::{Front, Handover};
use crate::proxy::{plan_head, ClientConn, HeadPlan, LeanResponse, RequestCtx};
use pingora::apps::HttpServerApp;
use pingora::http::RequestHeader;
use pingora::protocols::http::v2::server::{handshake, H2Accept, HttpSession};
use pingora::protocols::http::ServerSession;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::{Digest, Stream};
use pingora::proxy::ProxyHttp;
use pingora::server::ShutdownWatch;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::sync::Notify;

/// Malformed streams a connection may send before it is closed (Pingora's own bound).
const MALFORMED_BUDGET: usize = 32;

/// After a stop, how long a connection with no stream left stays for the GOAWAY exchange and
/// the tails of answers still in the `h2` crate's buffers.
const STOPPED_IDLE: Duration = Duration::from_secs(1);

/// What every stream of one connection needs to know about it.
#[derive(Clone)]
struct Connection {
    client: ClientConn,
    tls: Option<Arc<SslDigest>>,
    shutdown: ShutdownWatch,
    streams: Arc<InFlight>,
    /// The connection's slot (`max_connections`), held by every stream's task too: a
    /// client closing its connection while its requests still run at the origin frees no
    /// slot for a new connection (with a fresh `H2Work` bound) until that work ends.
    _slot: Option<Arc<crate::connection::ConnectionSlot>>,
}

impl Front {
    /// Serves an HTTP/2 connection (ALPN `h2`, or the h2c preface) until it ends.
    pub(super) async fn serve_h2(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) {
        let digest = Arc::new(Digest {
            ssl_digest: stream.get_ssl_digest(),
            timing_digest: stream.get_timing_digest(),
            proxy_digest: stream.get_proxy_digest(),
            socket_digest: stream.get_socket_digest(),
        });
        let connection = Connection {
            client: super::client_conn(
                digest.socket_digest.as_deref(),
                digest.ssl_digest.is_some(),
            ),
            tls: digest.ssl_digest.clone(),
            shutdown: shutdown.clone(),
            streams: Arc::default(),
            _slot: crate::connection::connection_slot(&stream),
        };
        // The connection counts as in flight for a shutdown: the drain waits for its GOAWAY
        // exchange and for the tails of its answers still in the `h2` crate's buffers (a
        // stream's own count ends once its body is queued, not sent), within the grace.
        let _draining_waits = self.cachet.state.drain.enter();
        let mut conn = match handshake(stream, self.proxy.h2_options()).await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::debug!("HTTP/2 handshake failed: {e}");
                return;
            }
        };
        let idle_timeout = self.proxy.server_options().and_then(|o| o.h2_idle_timeout);
        let mut stop = shutdown.clone();
        let mut stopping = *stop.borrow();
        if stopping {
            conn.graceful_shutdown();
        }
        let mut malformed = 0;
        loop {
            let accepted = if stopping {
                tokio::select! {
                    biased;
                    accepted = HttpSession::from_h2_conn(&mut conn, digest.clone()) => accepted,
                    // The `h2` crate ends the connection only once the client acknowledges
                    // the GOAWAY's ping: a silent or dead client held the exit for the whole
                    // shutdown grace.
                    () = connection.streams.idle_for(STOPPED_IDLE) => return,
                }
            } else {
                tokio::select! {
                    biased;
                    _ = stop.changed() => {
                        conn.graceful_shutdown();
                        stopping = true;
                        continue;
                    }
                    accepted = HttpSession::from_h2_conn(&mut conn, digest.clone()) => accepted,
                    () = connection.streams.idle_for(idle_timeout.unwrap_or_default()),
                        if idle_timeout.is_some() => return,
                }
            };
            match accepted {
                // A client that goes without closing HTTP/2 properly is common: not logged.
                Err(_) | Ok(None) => return,
                Ok(Some(H2Accept::Rejected)) => {
                    malformed += 1;
                    if malformed >= MALFORMED_BUDGET {
                        tracing::warn!(
                            "closing an HTTP/2 connection after {malformed} malformed requests"
                        );
                        return;
                    }
                }
                Ok(Some(H2Accept::Session(session))) => {
                    // Boxed where it is made, so it is copied once, into the box: every
                    // stream's future used to be copied twice (6.6 KB each time).
                    let task = Box::pin(self.clone().serve_stream(session, connection.clone()));
                    run_here_first(task).await;
                }
            }
        }
    }

    /// One stream, from its head to its end.
    async fn serve_stream(self: Arc<Self>, mut session: HttpSession, connection: Connection) {
        let _in_flight = connection.streams.enter();
        if self.answering(&connection.shutdown) && is_plain(&session) {
            let mut ctx = self.cachet.new_ctx();
            let state = &self.cachet.state;
            // Counted as request_filter counts it; a connection at its bound is refused there.
            if let Some(turn) = state
                .h2_work
                .enter(session.server_addr(), session.client_addr())
            {
                ctx.h2_work = Some(turn);
                let server_name = connection
                    .tls
                    .as_deref()
                    .and_then(crate::tls::digest_server_name);
                let head = session.req_header_mut();
                match plan_head(&self.cachet, head, connection.client, server_name, &mut ctx).await
                {
                    HeadPlan::Hit(hit) => return self.answer(&mut session, hit, &ctx).await,
                    HeadPlan::Planned(planned) => carry(head, Handover { ctx, planned }),
                    HeadPlan::Unplanned => {}
                }
            }
        }
        let session = ServerSession::new_http2(session);
        // Not boxed again: `#[async_trait]` already boxes Pingora's future (the stream's
        // future measured 3,768 bytes either way), so a second box is only an allocation.
        let _ = self
            .proxy
            .process_new_http(session, &connection.shutdown)
            .await;
    }

    /// Writes a lean hit on the stream and records it as the proxy's logging phase would.
    /// Borrows what the stream owns: a future holding its session and context by value
    /// measured 4.9 KB, copied as part of every stream's.
    async fn answer(&self, session: &mut HttpSession, hit: LeanResponse, ctx: &RequestCtx) {
        let status = hit.status();
        crate::metrics::front_hit();
        session.set_write_timeout(Some(self.cachet.state.client_write_timeout));
        let written = write_hit(session, hit).await;
        let error = written.as_ref().err().map(|e| e.to_string());
        if written.is_err() {
            // Never a half-written answer that looks whole.
            session.shutdown_with_reason(h2::Reason::INTERNAL_ERROR);
        }
        crate::proxy::record_request(&self.cachet.state, ctx, session.req_header(), status, error);
    }
}

/// A stored head that needs editing goes through the same general copy as Pingora's path.
async fn write_hit(session: &mut HttpSession, hit: LeanResponse) -> pingora::Result<()> {
    let (head, body) = match hit.h2_head() {
        Some(head) => (head, hit.body()),
        None => hit.into_parts()?,
    };
    session.write_response_header(head, false)?;
    // Each piece gets the whole write timeout (Pingora's bounds one call), as over HTTP/1.1.
    for (piece, last) in crate::proxy::timed_pieces(body) {
        session.write_body(piece, last).await?;
    }
    Ok(())
}

/// A GET that has ended with its head and carries no field about a body or the connection:
/// what the HTTP/1.1 front plans too.
fn is_plain(session: &HttpSession) -> bool {
    let head = session.req_header();
    head.method == http::Method::GET
        && session.is_body_empty()
        && ["content-length", "transfer-encoding", "expect", "upgrade"]
            .iter()
            .all(|name| !head.headers.contains_key(*name))
}

/// Polls `task` once here, in the connection's accept loop, and spawns what is left of it
/// when it has to wait. Most lean hits finish in that one poll: no task, no wake-up.
async fn run_here_first(mut task: Pin<Box<impl Future<Output = ()> + Send + 'static>>) {
    let finished = std::future::poll_fn(|cx| Poll::Ready(task.as_mut().poll(cx).is_ready())).await;
    if !finished {
        tokio::spawn(task);
    }
}

/// The plan of a stream handed to Pingora's proxy, which takes it back out in its first
/// phase (`take_handover`). A request's extensions are set in this process only: no client
/// can put one there.
#[derive(Clone)]
struct CarriedPlan(Arc<parking_lot::Mutex<Option<Handover>>>);

fn carry(head: &mut RequestHeader, handover: Handover) {
    let carried = CarriedPlan(Arc::new(parking_lot::Mutex::new(Some(handover))));
    head.extensions_mut().insert(carried);
}

/// The plan the HTTP/2 front made for this request, if it made one.
pub(crate) fn take_handover(head: &mut RequestHeader) -> Option<Handover> {
    head.extensions_mut()
        .remove::<CarriedPlan>()
        .and_then(|carried| carried.0.lock().take())
}

/// The streams of one connection in flight, for the idle timeout.
#[derive(Default)]
struct InFlight {
    count: AtomicUsize,
    none_left: Notify,
}

impl InFlight {
    fn enter(self: &Arc<Self>) -> StreamInFlight {
        self.count.fetch_add(1, Ordering::Relaxed);
        StreamInFlight(self.clone())
    }

    /// Resolves once no stream has been in flight for `idle`.
    async fn idle_for(&self, idle: Duration) {
        while self.count.load(Ordering::Relaxed) != 0 {
            self.none_left.notified().await;
        }
        tokio::time::sleep(idle).await;
    }
}

struct StreamInFlight(Arc<InFlight>);

impl Drop for StreamInFlight {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.none_left.notify_one();
        }
    }
}
