//! `[tenant.origin] max_connections`: how many exchanges with a tenant's origin run at once.
//!
//! Hits never reach the origin, but misses do, one connection each: a client sending URLs
//! that never repeat (a cache-busting query string) over many connections, or over HTTP/2
//! streams, would otherwise have cachet open as many origin connections as it has requests
//! in flight, flooding the origin and spending the proxy's file descriptors. Beyond the
//! limit a request waits its turn for `queue_timeout`, then gets a 503 (or a stale copy
//! where `stale-if-error` allows one), as HAProxy's server `maxconn` and Varnish's
//! `.max_connections` do. Each tenant has its own limit: one tenant's flood cannot take
//! another's turns.

use crate::config::OriginConfig;
use pingora::{Error, ErrorType};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a request was refused, as `Cache-Status` and the access log say.
pub const REFUSED_DETAIL: &str = "origin max_connections reached";

/// The turns at one tenant's origin, carried over to the tenant's next version on reload
/// ([`OriginLimit::inherit`]).
pub struct OriginLimit {
    turns: Arc<Semaphore>,
    max: usize,
}

/// A turn at the origin, held until the request ends (its connection is then back in the
/// pool or closed).
pub type OriginTurn = OwnedSemaphorePermit;

impl OriginLimit {
    pub fn new(origin: &OriginConfig) -> Self {
        Self {
            turns: Arc::new(Semaphore::new(origin.max_connections)),
            max: origin.max_connections,
        }
    }

    /// Takes over the turns of the version a reload replaces, when this one allows at least
    /// as many: requests at the origin through the old version still count, so a reload (of
    /// any tenant: every one is rebuilt) does not open a fresh set of turns beside them. A
    /// lowered limit starts afresh, and the two together may exceed it until the old
    /// requests end.
    pub fn inherit(&mut self, previous: &OriginLimit) {
        if self.max < previous.max {
            return;
        }
        previous.turns.add_permits(self.max - previous.max);
        self.turns = previous.turns.clone();
    }

    /// Takes a turn into `held` unless it holds one already (a retry keeps its turn), waiting
    /// at most `wait`. An error when no turn came in time (a 503 from the origin's side), or
    /// when `client_gone` resolves first (the client left: nobody waits for the answer).
    pub async fn admit(
        &self,
        held: &mut Option<OriginTurn>,
        wait: Duration,
        client_gone: impl std::future::Future<Output = ()>,
    ) -> std::result::Result<(), NoTurn> {
        if held.is_some() {
            return Ok(());
        }
        let turn = match self.turns.clone().try_acquire_owned() {
            Ok(turn) => turn,
            Err(_) if wait.is_zero() => return Err(NoTurn::Busy),
            Err(_) => {
                let queued = tokio::time::timeout(wait, self.turns.clone().acquire_owned());
                tokio::select! {
                    queued = queued => match queued {
                        Ok(Ok(turn)) => turn,
                        // Timed out (the semaphore is never closed).
                        _ => return Err(NoTurn::Busy),
                    },
                    () = client_gone => return Err(NoTurn::ClientGone),
                }
            }
        };
        *held = Some(turn);
        Ok(())
    }

    /// Exchanges with the origin in flight now.
    pub fn in_use(&self) -> usize {
        self.max.saturating_sub(self.turns.available_permits())
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

/// Why a request got no turn at its origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoTurn {
    /// Every turn stayed taken for as long as it could wait: a 503 from the origin's side.
    Busy,
    /// The client left while queued: nobody waits for the answer.
    ClientGone,
}

impl NoTurn {
    /// The error the proxy fails the request with.
    pub fn into_error(self) -> Box<Error> {
        match self {
            Self::Busy => Error::explain(ErrorType::HTTPStatus(503), REFUSED_DETAIL).into_up(),
            Self::ClientGone => Error::explain(
                ErrorType::ConnectionClosed,
                "the client left while queued for the origin",
            )
            .into_down(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::pending;

    fn limit(max: usize) -> OriginLimit {
        OriginLimit::new(&OriginConfig {
            max_connections: max,
            ..OriginConfig::default()
        })
    }

    #[tokio::test]
    async fn turns_beyond_the_limit_wait_then_are_refused() {
        let limit = limit(2);
        let (mut a, mut b, mut c) = (None, None, None);
        limit
            .admit(&mut a, Duration::ZERO, pending())
            .await
            .expect("first");
        limit
            .admit(&mut b, Duration::ZERO, pending())
            .await
            .expect("second");
        assert_eq!(limit.in_use(), 2);
        let e = limit
            .admit(&mut c, Duration::from_millis(20), pending())
            .await
            .expect_err("third waits, then is refused");
        assert_eq!(e, NoTurn::Busy);
        assert_eq!(*e.into_error().etype(), ErrorType::HTTPStatus(503));
        assert!(c.is_none());
        // A retry of a request that holds a turn takes no second one.
        limit
            .admit(&mut a, Duration::ZERO, pending())
            .await
            .expect("held");
        assert_eq!(limit.in_use(), 2);
    }

    #[tokio::test]
    async fn a_waiting_request_gets_the_turn_a_finished_one_leaves() {
        let limit = Arc::new(limit(1));
        let mut first = None;
        limit
            .admit(&mut first, Duration::ZERO, pending())
            .await
            .expect("first");
        let waiter = {
            let limit = limit.clone();
            tokio::spawn(async move {
                let mut turn = None;
                limit
                    .admit(&mut turn, Duration::from_secs(5), pending())
                    .await
                    .map(|_| turn.is_some())
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(first.take());
        assert!(waiter.await.expect("task").expect("admitted"));
    }

    #[tokio::test]
    async fn a_client_that_leaves_while_queued_takes_no_turn() {
        let limit = limit(1);
        let mut first = None;
        limit
            .admit(&mut first, Duration::ZERO, pending())
            .await
            .expect("first");
        let mut turn = None;
        let gone = tokio::time::sleep(Duration::from_millis(20));
        let e = limit
            .admit(&mut turn, Duration::from_secs(5), gone)
            .await
            .expect_err("left");
        assert_eq!(e, NoTurn::ClientGone);
        assert_eq!(*e.into_error().etype(), ErrorType::ConnectionClosed);
        assert!(turn.is_none());
        drop(first.take());
        assert_eq!(limit.in_use(), 0);
    }
}
