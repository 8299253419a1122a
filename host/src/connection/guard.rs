//! Counting connections and wrapping their streams, in front of Pingora's HTTP app.

use super::GuardedStream;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
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
}

/// A `ServerApp` that admits at most `max_connections` streams at once and
/// bounds each one's request heads, then hands them to `inner`.
pub struct ConnectionGuard<A> {
    inner: Arc<A>,
    slots: Arc<Semaphore>,
    limits: ConnectionLimits,
    on_refused_head: Arc<dyn Fn() + Send + Sync>,
}

impl<A> ConnectionGuard<A> {
    pub fn new(inner: A, limits: ConnectionLimits) -> Self {
        Self {
            inner: Arc::new(inner),
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
            on_refused_head: Arc::new(|| crate::metrics::connection_refused("head_too_large")),
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
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            crate::metrics::connection_refused("max_connections");
            // Best effort: a client that does not read its answer is not waited for.
            let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(BUSY)).await;
            return None;
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
