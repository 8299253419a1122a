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
    /// Whether the current attempt went to a member of the tenant's pool (not to a
    /// `[tenant.backends]` entry the plugin picked, which has nowhere else to go).
    pub(super) in_pool: bool,
    /// Upstreams of a pool that failed this request: the connect failed, or a fresh
    /// connection was closed before any answer. The next attempt goes elsewhere.
    pub(super) failed: Vec<std::net::SocketAddr>,
    /// The current attempt went to an upstream that is down or set aside, because no other
    /// was left: if it fails too, the request stops trying.
    pub(super) last_resort: bool,
    /// An upstream of the pool closed a fresh connection on this request unanswered, and the
    /// request went on to another: it does not go on again. (A reused connection closed is
    /// not counted: the origin may have closed it while it was idle, which says nothing
    /// about the request.)
    pub(super) moved_after_drop: bool,
    /// Outside a pool: which of the tenant's named targets the current attempt went to.
    pub(super) named: Option<usize>,
    /// Outside a pool: how many addresses the current attempt's name had (`failed` then
    /// holds those this request could not connect to).
    pub(super) addresses: usize,
    /// This request's turn at the origin (`max_connections`), held until the request ends.
    pub(super) turn: Option<super::limit::OriginTurn>,
    /// The current attempt's connect had less time than `connect_timeout`: what was left of
    /// `total_timeout`. Its timing out says nothing about the upstream.
    pub(super) connect_cut_short: bool,
    /// The request asks to upgrade: its connection may become a tunnel, whose reads and
    /// writes `total_timeout` does not cap.
    pub(super) upgrade: bool,
    /// The origin switched protocols (101): the exchange became a tunnel, which
    /// `total_timeout` does not bound.
    tunneled: bool,
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

    /// An HTTP/1 upgrade request:
    /// - its attempts take a new connection of their own: Pingora 0.9 ends a tunnel as soon
    ///   as it starts when the origin's 101 is read before the upgrade request's own empty
    ///   body went through (cloudflare/pingora#946), which a pooled connection's quick
    ///   answer made happen to a few upgrades in a hundred; a new connection's handshake
    ///   puts the body first (an upgraded connection is never pooled again anyway);
    /// - that connection's read and write timeouts are the tenant's own, not capped at what
    ///   is left of `total_timeout`: they stay the tunnel's for its whole life, and a
    ///   WebSocket quiet for the rest of `total_timeout` was cut.
    pub(crate) fn asks_to_upgrade(&mut self) {
        self.fresh = true;
        self.upgrade = true;
    }

    /// The origin accepted an upgrade: `total_timeout` bounds an exchange, and a tunnel (a
    /// WebSocket) lasts as long as its two ends keep it open. Pingora runs the body filters
    /// on its bytes, which checked the deadline and cut every tunnel at it.
    pub(crate) fn became_tunnel(&mut self) {
        self.tunneled = true;
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

/// Decides whether a failed origin exchange is tried again, on a fresh connection to the
/// same upstream: once, only if the failed connection was reused and failed as one the
/// origin closed while idle does (closed or reset before any answer, as Pingora marks such
/// errors), the request may be repeated (see [`repeatable`]). A timeout is never retried:
/// the origin has the request and is slow, and asking again would double its load and the
/// client's wait. (A pool also moves on to another upstream: `TenantUpstream::after_error`.)
pub(super) fn after_error(
    origin: &OriginConfig,
    session: &Session,
    attempts: &mut OriginAttempts,
    mut e: Box<Error>,
    connection_reused: bool,
) -> Box<Error> {
    let safe = connection_reused
        && dropped_before_answer(&e)
        && origin.retry_reused
        && !attempts.retried_reused
        && repeatable(session);
    e.set_retry(safe);
    if safe {
        attempts.retried_reused = true;
        attempts.fresh = true;
    }
    e
}

/// Whether the connection was closed or reset before any byte of an answer (Pingora marks
/// such an error as worth a retry when the connection was a reused one).
pub(super) fn dropped_before_answer(e: &Error) -> bool {
    matches!(e.retry, RetryType::ReusedOnly)
}

/// Whether a request the origin may have received can be sent again: an idempotent
/// method (RFC 9110 §9.2.2), its body still held whole, nothing sent to the client yet.
pub(super) fn repeatable(session: &Session) -> bool {
    session.req_header().method.is_idempotent()
        && !session.as_ref().retry_buffer_truncated()
        && session.response_written().is_none()
}

/// Fails the exchange once `total_timeout` is over. Checked as each piece of the request
/// body goes to the origin and as each piece of its response arrives: a stall in between
/// is bounded by `write_timeout` or `read_timeout` (Pingora fixes those per connection).
pub fn check_deadline(attempts: &OriginAttempts, what: Direction) -> Result<()> {
    match attempts.deadline {
        Some(deadline) if !attempts.tunneled && Instant::now() >= deadline => {
            let etype = match what {
                Direction::Sending => ErrorType::WriteTimedout,
                Direction::Receiving => ErrorType::ReadTimedout,
            };
            Err(Error::explain(etype, "origin total_timeout exceeded").into_up())
        }
        _ => Ok(()),
    }
}

/// Which way the exchange was moving when its deadline was checked.
#[derive(Debug, Clone, Copy)]
pub enum Direction {
    /// The request body, to the origin.
    Sending,
    /// The response, from the origin.
    Receiving,
}
