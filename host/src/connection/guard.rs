//! Counting connections and wrapping their streams, in front of Pingora's HTTP app.

use super::GuardedStream;
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
    /// How long a TLS handshake may take (`request_head_timeout`: a client has that long
    /// to present its request, the handshake included).
    pub tls_handshake_timeout: Duration,
}

/// A `ServerApp` that admits at most `max_connections` streams at once and
/// bounds each one's request heads, then hands them to `inner`.
pub struct ConnectionGuard<A> {
    inner: Arc<A>,
    slots: Arc<Semaphore>,
    limits: ConnectionLimits,
    on_refused_head: Arc<dyn Fn() + Send + Sync>,
    /// The TLS listener's address, and TLS terminated here for the connections it accepts
    /// once they hold their slot. (Pingora's TLS listener does the handshake before the app
    /// sees the connection, for up to 60 s, uncounted: connections that never finished it
    /// were bounded by nothing.)
    tls: Option<(SocketAddr, Arc<Acceptor>)>,
}

impl<A> ConnectionGuard<A> {
    pub fn new(inner: A, limits: ConnectionLimits) -> Self {
        Self {
            inner: Arc::new(inner),
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
            on_refused_head: Arc::new(|| crate::metrics::connection_refused("head_too_large")),
            tls: None,
        }
    }

    /// Connections accepted on `listen` (added to the service as a plain TCP listener)
    /// are TLS, terminated with `acceptor`.
    pub fn with_tls(mut self, listen: SocketAddr, acceptor: Acceptor) -> Self {
        self.tls = Some((listen, Arc::new(acceptor)));
        self
    }

    /// The acceptor when `stream` came in on the TLS listener.
    fn tls_for(&self, stream: &Stream) -> Option<Arc<Acceptor>> {
        let (listen, acceptor) = self.tls.as_ref()?;
        let digest = stream.get_socket_digest()?;
        let local = *digest.local_addr()?.as_inet()?;
        let on_listener = local.port() == listen.port()
            && (listen.ip().is_unspecified() || local.ip() == listen.ip());
        on_listener.then(|| acceptor.clone())
    }

    /// The TLS stream over `stream`, or `None` (counted) when the handshake fails or is
    /// not done within `tls_handshake_timeout`.
    async fn handshake(&self, acceptor: &Acceptor, stream: Stream) -> Option<Stream> {
        // The listener is plain TCP: its streams are Pingora's L4 streams.
        let tcp = *stream.into_any().downcast::<TcpStream>().ok()?;
        let handshake = acceptor.tls_handshake(tcp);
        match tokio::time::timeout(self.limits.tls_handshake_timeout, handshake).await {
            Ok(Ok(tls)) => Some(Box::new(tls)),
            Ok(Err(e)) => {
                crate::metrics::connection_refused("tls_handshake");
                tracing::debug!("TLS handshake failed: {e}");
                None
            }
            Err(_) => {
                crate::metrics::connection_refused("tls_handshake_timeout");
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
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            crate::metrics::connection_refused("max_connections");
            // Best effort: a client that does not read its answer is not waited for. (A TLS
            // client would read it as a broken handshake: it is just closed.)
            if tls.is_none() {
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(BUSY)).await;
            }
            return None;
        };
        let stream = match tls {
            Some(acceptor) => self.handshake(&acceptor, stream).await?,
            None => stream,
        };
        let guarded = GuardedStream::new(
            stream,
            self.limits.max_request_head,
            slot,
            self.on_refused_head.clone(),
            self.limits.h2_preface_timeout,
            self.limits.h2c,
        );
        self.inner.process_new(Box::new(guarded), shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

#[cfg(test)]
mod tests {
    use super::BUSY;

    #[test]
    fn busy_answer_is_framed_correctly() {
        let text = std::str::from_utf8(BUSY).expect("ascii");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
    }
}
