//! Counting connections and wrapping their streams, in front of Pingora's HTTP app.

use super::per_peer::PeerCap;
use super::{ConnectionSlot, GuardedStream};
use crate::shutdown::Drain;
use pingora::apps::ServerApp;
use pingora::listeners::tls::Acceptor;
use pingora::protocols::l4::stream::Stream as TcpStream;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

/// What a client gets when every connection slot is taken.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Length: 25\r\n\
Retry-After: 1\r\n\
Connection: close\r\n\
\r\n\
too many open connections";

/// The bounds `[server]` configures for client connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open client connections at most (`max_connections`).
    pub max_connections: usize,
    /// Bytes of one request head at most (`max_request_head`).
    pub max_request_head: usize,
    /// How long an HTTP/2 client may take to start its preface (`h2_idle_timeout`).
    pub h2_preface_timeout: Duration,
    /// The plain listener takes HTTP/2 without TLS (`h2c`): a connection that opens with
    /// the HTTP/2 preface is framed, not read as heads.
    pub h2c: bool,
    /// How long a request head may take (`request_head_timeout`), where the stream bounds
    /// it (see [`ListenerRole`]); a TLS handshake too: a client has that long to present its
    /// request, the handshake included.
    pub head_timeout: Duration,
    /// Whose connections these are.
    pub role: ListenerRole,
}

/// Whose connections a listener takes: which metrics count them, and who bounds how long a
/// request head may take (`head_timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerRole {
    /// The proxy's listeners, counted in `cachet_connections_*`. The front and the proxy
    /// phases mark where each head ends. The front bounds the time of each head it reads;
    /// the stream bounds that of a head Pingora reads on from bytes it already holds.
    Clients,
    /// The admin and metrics listeners (Pingora's plain HTTP apps, run in an
    /// [`super::OperatorApp`] that marks where heads end), counted apart from the proxy's
    /// clients (`cachet_admin_connections_refused_total`): a scraper must not look like
    /// client load. Pingora gives such apps 60 s per read, so a client sending a byte now
    /// and then would hold a slot for ever: each head, the idle wait before it included,
    /// must be whole within `head_timeout`.
    Operators,
}

impl ListenerRole {
    /// Counts a connection refused for `reason`.
    pub(crate) fn refused(self, reason: &str) {
        match self {
            Self::Clients => crate::metrics::connection_refused(reason),
            Self::Operators => crate::metrics::admin_connection_refused(reason),
        }
    }
}

/// A `ServerApp` that admits at most `max_connections` streams at once and
/// bounds each one's request heads, then hands them to `inner`.
pub struct ConnectionGuard<A> {
    inner: Arc<A>,
    slots: Arc<Semaphore>,
    limits: ConnectionLimits,
    /// The TLS listener's address, and TLS terminated here for the connections it accepts
    /// once they hold their slot. (Pingora's TLS listener does the handshake before the app
    /// sees the connection, for up to 60 s, uncounted: connections that never finished it
    /// were bounded by nothing.)
    tls: Option<(SocketAddr, Arc<Acceptor>)>,
    /// Counts handshakes under way as requests in flight: a stop waits for them (a client
    /// whose connection was accepted before the stop gets its answer, not a reset).
    drain: Option<Arc<Drain>>,
    /// On an operator listener: the connections each peer address holds.
    peers: Option<Arc<PeerCap>>,
}

impl<A> ConnectionGuard<A> {
    pub fn new(inner: A, limits: ConnectionLimits) -> Self {
        Self {
            inner: Arc::new(inner),
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
            tls: None,
            drain: None,
            peers: (limits.role == ListenerRole::Operators).then(Arc::default),
        }
    }

    /// Connections accepted on `listen` (added to the service as a plain TCP listener)
    /// are TLS, terminated with `acceptor`; `drain` counts the handshakes.
    pub fn with_tls(mut self, listen: SocketAddr, acceptor: Acceptor, drain: Arc<Drain>) -> Self {
        self.tls = Some((listen, Arc::new(acceptor)));
        self.drain = Some(drain);
        self
    }

    /// The acceptor when `stream` came in on the TLS listener.
    fn tls_for(&self, stream: &Stream) -> Option<Arc<Acceptor>> {
        let (listen, acceptor) = self.tls.as_ref()?;
        let digest = stream.get_socket_digest()?;
        let local = *digest.local_addr()?.as_inet()?;
        accepted_on(*listen, local).then(|| acceptor.clone())
    }

    /// The TLS stream over `stream`, or `None` (counted) when the handshake fails or is
    /// not done within `head_timeout`.
    async fn handshake(&self, acceptor: &Acceptor, stream: Stream) -> Option<Stream> {
        // The listener is plain TCP: its streams are Pingora's L4 streams.
        let tcp = *stream.into_any().downcast::<TcpStream>().ok()?;
        let _in_flight = self.drain.as_ref().map(|drain| drain.enter());
        let handshake = acceptor.tls_handshake(tcp);
        match tokio::time::timeout(self.limits.head_timeout, handshake).await {
            Ok(Ok(tls)) => Some(Box::new(tls)),
            Ok(Err(e)) => {
                self.limits.role.refused("tls_handshake");
                tracing::debug!("TLS handshake failed: {e}");
                None
            }
            Err(_) => {
                self.limits.role.refused("tls_handshake_timeout");
                None
            }
        }
    }
}

#[async_trait::async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for ConnectionGuard<A> {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let tls = self.tls_for(&stream);
        let peer = stream
            .get_socket_digest()
            .and_then(|digest| Some(digest.peer_addr()?.as_inet()?.ip()));
        let peer_slot = match (&self.peers, peer) {
            (Some(peers), Some(peer)) => peers.take(peer).ok_or("per_peer"),
            _ => Ok(None),
        };
        let slots = peer_slot.and_then(|peer_slot| {
            let slot = self.slots.clone().try_acquire_owned();
            let slot = slot.map_err(|_| "max_connections")?;
            Ok((ConnectionSlot::taken(slot, self.limits.role), peer_slot))
        });
        let (slot, peer_slot) = match slots {
            Ok(slots) => slots,
            Err(reason) => {
                self.limits.role.refused(reason);
                // Best effort: a client that does not read its answer is not waited for. (A
                // TLS client would read it as a broken handshake: it is just closed.)
                if tls.is_none() {
                    let busy = stream.write_all(BUSY);
                    let _ = tokio::time::timeout(Duration::from_secs(1), busy).await;
                }
                return None;
            }
        };
        let stream = match tls {
            Some(acceptor) => self.handshake(&acceptor, stream).await?,
            None => stream,
        };
        let guarded = GuardedStream::new(stream, &self.limits, slot, peer_slot);
        self.inner.process_new(Box::new(guarded), shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

/// Whether a connection to `local` came in on a listener bound to `listen`: the same port, and
/// the same address or, for an unspecified one, the same family (a plain listener on
/// `[::1]:8443` beside a TLS one on `0.0.0.0:8443` is not TLS; an IPv4 client of a dual-stack
/// `[::]` listener has an IPv4-mapped IPv6 address).
fn accepted_on(listen: SocketAddr, local: SocketAddr) -> bool {
    let same_address = match listen.ip().is_unspecified() {
        true => listen.is_ipv4() == local.is_ipv4(),
        false => local.ip() == listen.ip(),
    };
    local.port() == listen.port() && same_address
}

#[cfg(test)]
mod tests {
    use super::{accepted_on, BUSY};
    use std::net::SocketAddr;

    #[test]
    fn busy_answer_is_framed_correctly() {
        let text = std::str::from_utf8(BUSY).expect("ascii");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
    }

    #[test]
    fn a_connection_is_on_the_listener_of_its_port_and_address_family() {
        let at = |text: &str| text.parse::<SocketAddr>().unwrap();
        assert!(accepted_on(at("0.0.0.0:8443"), at("127.0.0.1:8443")));
        assert!(accepted_on(at("127.0.0.1:8443"), at("127.0.0.1:8443")));
        assert!(!accepted_on(at("127.0.0.1:8443"), at("127.0.0.2:8443")));
        assert!(!accepted_on(at("0.0.0.0:8443"), at("127.0.0.1:8080")));
        assert!(!accepted_on(at("0.0.0.0:8443"), at("[::1]:8443")));
        assert!(accepted_on(at("[::]:8443"), at("[::ffff:127.0.0.1]:8443")));
        assert!(!accepted_on(at("[::]:8443"), at("127.0.0.1:8443")));
    }
}
