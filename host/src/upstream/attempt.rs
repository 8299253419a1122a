//! One request's attempts at its origin: the total deadline, and the single
//! retry on a fresh connection after a failure on a reused one.

use crate::config::OriginConfig;
use pingora::prelude::HttpPeer;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result, RetryType};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Per-request state of the origin exchange (lives in the request context).
#[derive(Debug, Default)]
pub struct OriginAttempts {
    /// When `total_timeout` runs out (set at the first attempt).
    deadline: Option<Instant>,
    /// The one retry after a reused connection failed has been spent.
    retried_reused: bool,
    /// The next attempt must not take a pooled connection.
    fresh: bool,
    /// The upstream address of the current attempt.
    pub(super) current: Option<std::net::SocketAddr>,
    /// Upstreams of a pool whose connect failed for this request.
    pub(super) connect_failed: Vec<std::net::SocketAddr>,
}

impl OriginAttempts {
    /// Time left for the whole exchange (the first call starts the clock).
    pub(super) fn remaining(&mut self, origin: &OriginConfig, now: Instant) -> Duration {
        if self.deadline.is_none() {
            self.deadline = origin.total_timeout.map(|t| now + t);
        }
        self.deadline
            .map_or(Duration::MAX, |d| d.saturating_duration_since(now))
    }

    /// A fresh attempt gets a pool key of its own, so no pooled connection
    /// matches it, and its connection is not kept afterwards.
    pub(super) fn apply_fresh(&mut self, peer: &mut HttpPeer) {
        static FRESH_GROUPS: AtomicU64 = AtomicU64::new(1);
        if std::mem::take(&mut self.fresh) {
            peer.group_key = FRESH_GROUPS.fetch_add(1, Ordering::Relaxed) | 1 << 63;
            peer.options.idle_timeout = Some(Duration::ZERO);
        }
    }
}

/// Decides whether a failed origin exchange is tried again: once, on a fresh
/// connection, only if the failed one was reused and failed as a connection
/// the origin closed while idle does (closed or reset before any answer, as
/// Pingora marks such errors), the method is idempotent, the request body is
/// still held whole, and nothing has been sent to the client. A timeout is
/// never retried: the origin has the request and is slow, and asking again
/// would double its load and the client's wait.
pub fn after_error(
    origin: &OriginConfig,
    session: &Session,
    attempts: &mut OriginAttempts,
    mut e: Box<Error>,
    connection_reused: bool,
) -> Box<Error> {
    let dropped = matches!(e.retry, RetryType::ReusedOnly);
    let safe = connection_reused
        && dropped
        && origin.retry_reused
        && !attempts.retried_reused
        && session.req_header().method.is_idempotent()
        && !session.as_ref().retry_buffer_truncated()
        && session.response_written().is_none();
    e.set_retry(safe);
    if safe {
        attempts.retried_reused = true;
        attempts.fresh = true;
    }
    e
}

/// Fails the exchange once `total_timeout` is over (checked as the origin's
/// response arrives; a stall in between is bounded by `read_timeout`).
pub fn check_deadline(attempts: &OriginAttempts) -> Result<()> {
    match attempts.deadline {
        Some(deadline) if Instant::now() >= deadline => {
            Err(Error::explain(ErrorType::ReadTimedout, "origin total_timeout exceeded").into_up())
        }
        _ => Ok(()),
    }
}
