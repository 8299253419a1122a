//! The admin and metrics apps, telling their guarded streams where each request head ends.

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;

use crate::proxy::ProxyState;

/// A Pingora `ServeHttp` app on an operator listener. Such apps have no proxy phases to mark
/// heads (as the proxy's do), and the guard would count every byte of a keep-alive
/// connection as one head: a scraper's connection was refused with 431 after a few hundred
/// scrapes, and an explain body counted against the head budget.
pub struct OperatorApp<A> {
    app: A,
    state: Arc<ProxyState>,
}

impl<A> OperatorApp<A> {
    pub fn new(app: A, state: Arc<ProxyState>) -> Self {
        Self { app, state }
    }
}

#[async_trait]
impl<A: ServeHttp + Send + Sync> ServeHttp for OperatorApp<A> {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        // A purge or reload under way when the stop comes is answered before the exit.
        let _in_flight = self.state.drain.enter();
        // Pingora waits for ever on a client that does not read its answer: 64 such
        // connections (pipelined scrapes never read) held every slot of the listener.
        session.set_write_timeout(Some(self.state.client_write_timeout));
        if let Some(stream) = session.stream() {
            super::stream::head_read(stream);
        }
        let response = self.app.response(session).await;
        // A body left unread would be read as the next head (Pingora drains it to reuse
        // the connection): close instead; these are operators' tools, not a hot path.
        if !session.is_body_done() {
            session.set_keepalive(None);
        }
        if let Some(stream) = session.stream() {
            super::stream::request_answered(stream, 0);
        }
        response
    }
}
