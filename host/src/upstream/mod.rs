//! Connections to a tenant's origin: the upstream to dial (one, or a pool),
//! TLS to it, its timeouts, and whether a failed attempt may be tried again.

mod attempt;
mod health;
mod limit;
mod names;
mod pool;
mod tls;

pub use attempt::{check_deadline, Direction, OriginAttempts};
pub use limit::NoTurn;
pub use limit::REFUSED_DETAIL as ORIGIN_BUSY_DETAIL;
pub use pool::{PoolHealth, UpstreamHealth};

use crate::config::{TenantConfig, UpstreamTarget};
use crate::proxy::ProxyState;
use pingora::prelude::HttpPeer;
use pingora::proxy::Session;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::{Error, ErrorType, Result};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A tenant's origin at run time (built with the tenant, rebuilt on reload).
pub struct TenantUpstream {
    tls: Arc<tls::OriginTls>,
    pool: Option<Arc<pool::Pool>>,
    /// Named upstreams outside the pool: [`SINGLE`] the tenant's one upstream (when it has
    /// no pool), then its `[tenant.backends]` in order.
    names: Arc<names::Names>,
    /// Pingora's pool key for this tenant's idle origin connections ([`connection_group`]).
    connection_group: u64,
    /// `[tenant.origin] max_connections`: the exchanges with the origin at once.
    limit: limit::OriginLimit,
}

/// Idle origin connections are pooled per tenant (and per set of TLS roots): HTTP/1.1 cannot
/// tell a late, unasked response from the answer to the next request, so one origin's stray
/// bytes could otherwise be read as another tenant's answer and stored under its key. Never
/// has bit 63 set, which marks a fresh attempt's group of its own (`attempt::apply_fresh`).
fn connection_group(tenant: &str, roots_group: u64) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (tenant, roots_group).hash(&mut hasher);
    hasher.finish() & !(1 << 63)
}

/// The index of the tenant's single upstream in [`TenantUpstream::names`].
const SINGLE: usize = 0;

impl TenantUpstream {
    pub fn new(config: &TenantConfig) -> Self {
        let tls = Arc::new(tls::OriginTls::new(config));
        let pool = config.pool.as_ref().map(|p| {
            Arc::new(pool::Pool::new(
                &config.name,
                &config.upstreams,
                p,
                tls.clone(),
            ))
        });
        let single = config.upstreams.first().filter(|_| pool.is_none());
        let backends = config.backends.iter().map(|(_, target)| Some(target));
        let interval = config.origin.resolve_interval;
        let names = Arc::new(names::Names::new(
            std::iter::once(single).chain(backends),
            interval,
        ));
        let connection_group = connection_group(&config.name, tls.roots_group());
        Self {
            tls,
            pool,
            names,
            connection_group,
            limit: limit::OriginLimit::new(&config.origin),
        }
    }

    /// Carries over from the version of this tenant's upstream a reload replaces what its
    /// health checks found (see [`pool::Pool::inherit_verdicts`]) and the origin turns in use
    /// (see [`limit::OriginLimit::inherit`]).
    pub fn inherit(&mut self, previous: &TenantUpstream) {
        if let (Some(pool), Some(old)) = (&self.pool, &previous.pool) {
            pool.inherit_verdicts(old);
        }
        self.limit.inherit(&previous.limit);
    }

    /// Waits for a turn at the origin (`max_connections`) until `queue_timeout` after the
    /// request `arrived` (time spent waiting on the cache lock counts: collapsed requests
    /// that become the fill one after another do not each wait anew) and within what is
    /// left of `total_timeout`; a 503 error when none came, and an error without one when
    /// `client_gone` resolves first.
    pub async fn admit(
        &self,
        config: &TenantConfig,
        attempts: &mut OriginAttempts,
        arrived: Instant,
        client_gone: impl std::future::Future<Output = ()>,
    ) -> std::result::Result<(), NoTurn> {
        let now = Instant::now();
        let left = attempts.remaining(&config.origin, now);
        let queue_left = config
            .origin
            .queue_timeout
            .saturating_sub(now.saturating_duration_since(arrived));
        let wait = queue_left.min(left);
        let admitted = self
            .limit
            .admit(&mut attempts.turn, wait, client_gone)
            .await;
        if admitted == Err(NoTurn::Busy) {
            crate::metrics::origin_refused(&config.name);
        }
        admitted
    }

    /// Exchanges with the origin in flight now, and the most allowed.
    pub fn origin_turns(&self) -> (usize, usize) {
        (self.limit.in_use(), self.limit.max())
    }

    /// The pool's upstreams and their health; None for a single upstream
    /// (it is not health-checked).
    pub fn health(&self, config: &TenantConfig) -> Option<PoolHealth> {
        Some(self.pool.as_ref()?.health(&config.upstreams))
    }

    /// The peer for the next attempt at this request's origin exchange: the
    /// `[tenant.backends]` entry the plugin picked, else the tenant's
    /// upstream (`key` picks one of a pool under consistent hashing).
    pub fn peer(
        &self,
        config: &TenantConfig,
        attempts: &mut OriginAttempts,
        key: &[u8],
        backend: Option<usize>,
    ) -> Result<Box<HttpPeer>> {
        attempts.in_pool = false;
        attempts.named = None;
        if let Some((index, (_, target))) = backend.and_then(|i| Some((i, config.backends.get(i)?)))
        {
            let named = SINGLE + 1 + index;
            let (addr, addresses) = self.names.address(named, target, &attempts.failed);
            attempts.addresses = addresses;
            attempts.named = Some(named);
            return self.peer_for(config, attempts, target, addr);
        }
        let Some(pool) = &self.pool else {
            let target = &config.upstreams[0];
            let (addr, addresses) = self.names.address(SINGLE, target, &attempts.failed);
            attempts.addresses = addresses;
            attempts.named = Some(SINGLE);
            return self.peer_for(config, attempts, target, addr);
        };
        let Some(selection) = pool.select(key, &attempts.failed) else {
            // The origin's failure, not cachet's: a 502, and a stale copy may be served.
            let e = Error::explain(ErrorType::ConnectNoRoute, "no upstream left to try");
            return Err(e.into_up());
        };
        let Some(&addr) = selection.backend.as_inet() else {
            return Error::e_explain(ErrorType::InternalError, "not an IP upstream");
        };
        attempts.in_pool = true;
        attempts.last_resort = selection.last_resort;
        self.peer_for(config, attempts, &config.upstreams[selection.index], addr)
    }

    fn peer_for(
        &self,
        config: &TenantConfig,
        attempts: &mut OriginAttempts,
        target: &UpstreamTarget,
        addr: SocketAddr,
    ) -> Result<Box<HttpPeer>> {
        let origin = &config.origin;
        let remaining = attempts.remaining(origin, Instant::now());
        if remaining.is_zero() {
            let e = Error::explain(
                ErrorType::ConnectTimedout,
                "origin total_timeout spent before connecting",
            );
            return Err(e.into_up());
        }
        attempts.current = Some(addr);
        attempts.connect_cut_short = remaining < origin.connect_timeout;
        let mut peer = HttpPeer::new(addr, target.tls, String::new());
        let options = &mut peer.options;
        options.connection_timeout = Some(origin.connect_timeout.min(remaining));
        options.total_connection_timeout = Some(origin.connect_timeout.min(remaining));
        let io_cap = if attempts.upgrade {
            Duration::MAX
        } else {
            remaining
        };
        options.read_timeout = Some(origin.read_timeout.min(io_cap));
        options.write_timeout = Some(origin.write_timeout.min(io_cap));
        options.idle_timeout = Some(origin.idle_timeout);
        // The fields a client's `Connection` nominates are removed before the plugin runs
        // (`proxy::request_fields`). Pingora removing them again here, after the plugin's
        // edits, would drop a field the plugin set and keyed on whenever a client named it:
        // the origin's answer to a request without it stored under the plugin's key.
        // Pingora still removes the hop-by-hop fields themselves, `Connection` among them.
        options
            .http_upstream_request_policy
            .strip_connection_nominated = false;
        if target.tls {
            self.tls.apply(&mut peer, target);
        }
        peer.group_key = self.connection_group;
        attempts.apply_fresh(&mut peer);
        Ok(Box::new(peer))
    }

    /// A connect failed. In a pool, that upstream is set aside until its next passing
    /// health check, and the request is tried on another one, whatever its method: nothing
    /// reached the origin or the client yet. Outside a pool, the next address of the name,
    /// where later requests start too.
    pub fn after_connect_failure(
        &self,
        session: &Session,
        attempts: &mut OriginAttempts,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let untouched =
            !session.as_ref().retry_buffer_truncated() && session.response_written().is_none();
        let timed_out = matches!(
            e.etype(),
            ErrorType::ConnectTimedout | ErrorType::TLSHandshakeTimedout
        );
        if attempts.connect_cut_short && timed_out {
            // The request's own `total_timeout` ran out while connecting: the upstream is not
            // set aside for it (a queue for origin turns that ate a request's time set healthy
            // upstreams aside), and there is no time left for another.
            e.set_retry(false);
            return e;
        }
        if attempts.in_pool {
            let retry = self.set_aside_failed(attempts) && untouched;
            e.set_retry(retry);
        } else if attempts.addresses > 1 {
            if let (Some(named), Some(addr)) = (attempts.named, attempts.current) {
                self.names.connect_failed(named, addr);
            }
            let retry = Self::next_address_left(attempts) && untouched;
            e.set_retry(retry);
        } else if self.pool.is_some() {
            // A plugin's backend in a pool tenant: a retry would dial the same address.
            e.set_retry(false);
        }
        // A single upstream with one address keeps Pingora's own decision.
        e
    }

    /// The origin exchange failed after the connect. A reused connection dropped before
    /// any answer is tried once more on a fresh one (`attempt::after_error`). In a pool, an
    /// upstream that accepted a fresh connection and closed or reset it before answering is
    /// set aside once it has done so a few times in a row (`Pool::dropped`), and a request
    /// that may be repeated is tried on one other upstream: its health check may be a bare
    /// connect, which such an upstream passes, so it would otherwise fail every request it
    /// is given. One other, not every one: the request may be what they all close on.
    pub fn after_error(
        &self,
        config: &TenantConfig,
        session: &Session,
        attempts: &mut OriginAttempts,
        e: Box<Error>,
        connection_reused: bool,
    ) -> Box<Error> {
        let dropped = attempt::dropped_before_answer(&e);
        let mut e = attempt::after_error(&config.origin, session, attempts, e, connection_reused);
        if connection_reused || !dropped {
            return e;
        }
        let retry = self.dropped_unanswered(attempts) && attempt::repeatable(session);
        e.set_retry(retry);
        e
    }

    /// The current attempt's upstream, in a pool, closed a fresh connection unanswered: it
    /// is counted against it; whether the request may go on to another upstream (once).
    fn dropped_unanswered(&self, attempts: &mut OriginAttempts) -> bool {
        let Some(pool) = self.failed_pool_member(attempts, pool::Pool::dropped) else {
            return false;
        };
        let first = !std::mem::replace(&mut attempts.moved_after_drop, true);
        first && !attempts.last_resort && attempts.failed.len() < pool.size()
    }

    /// When the current attempt went to a member of the tenant's pool: tells the pool of its
    /// failure with `tell`, notes the member as tried, and gives the pool.
    fn failed_pool_member(
        &self,
        attempts: &mut OriginAttempts,
        tell: fn(&pool::Pool, SocketAddr),
    ) -> Option<&pool::Pool> {
        let (Some(pool), Some(addr), true) = (&self.pool, attempts.current, attempts.in_pool)
        else {
            return None;
        };
        tell(pool, addr);
        attempts.failed.push(addr);
        Some(pool)
    }

    /// The origin answered this request (a response head arrived): in a pool, the upstream
    /// that answered is no longer set aside. (When every upstream is set aside, requests still
    /// go to one; its success ends what a failed connect started.)
    pub fn answered(&self, attempts: &OriginAttempts) {
        if let (Some(pool), Some(addr)) = (&self.pool, attempts.current) {
            pool.answered(addr);
        }
    }

    /// Outside a pool (a single upstream, a plugin's backend): whether the name has an
    /// address this request has not tried. A name's first address may be unreachable (an
    /// IPv6 one on a host without an IPv6 route) while the others answer.
    fn next_address_left(attempts: &mut OriginAttempts) -> bool {
        let Some(addr) = attempts.current else {
            return false;
        };
        if !attempts.failed.contains(&addr) {
            attempts.failed.push(addr);
        }
        attempts.failed.len() < attempts.addresses
    }

    /// Sets the current attempt's upstream aside in a pool; whether another one is left
    /// to try (false outside a pool, for a backend the plugin named: a retry would go to
    /// the same address, and after a last resort: nothing usable is left).
    fn set_aside_failed(&self, attempts: &mut OriginAttempts) -> bool {
        let Some(pool) = self.failed_pool_member(attempts, pool::Pool::set_aside) else {
            return false;
        };
        !attempts.last_resort && attempts.failed.len() < pool.size()
    }
}

/// The status a client gets when proxying fails (0: the client is gone):
/// Pingora's choice, with origin timeouts as 504 instead of 502.
pub fn failure_status(e: &Error) -> u16 {
    use pingora::ErrorSource;
    match (e.etype(), e.esource()) {
        (ErrorType::HTTPStatus(code), _) => *code,
        (
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout,
            ErrorSource::Upstream,
        ) => 504,
        (_, ErrorSource::Upstream) => 502,
        // The client stopped sending the body it announced (RFC 9110 §15.5.9).
        (ErrorType::ReadTimedout, ErrorSource::Downstream) => 408,
        (
            ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed,
            ErrorSource::Downstream,
        ) => 0,
        (_, ErrorSource::Downstream) => 400,
        (_, ErrorSource::Internal | ErrorSource::Unset) => 500,
    }
}

/// Runs every pool's health checks and DNS re-resolution as they fall due,
/// for the tenants of the running config (reloads included).
pub struct PoolMaintenance {
    pub state: Arc<ProxyState>,
}

/// How often due maintenance is looked for.
const MAINTENANCE_TICK: Duration = Duration::from_millis(100);

#[async_trait::async_trait]
impl BackgroundService for PoolMaintenance {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            // Each pass runs on its own task: a pool whose checks hang (an upstream that
            // never answers, up to its health_timeout) must not hold up the checks and
            // lookups of every other tenant. A pool or name set still busy with its last
            // pass skips this one (`maintain` holds per-pool locks, one for checks, one for lookups).
            let router = self.state.router.load_full();
            for tenant in router.tenants().iter() {
                let upstream = &tenant.upstream;
                if let Some(pool) = upstream.pool.as_ref().filter(|p| p.due()) {
                    let pool = pool.clone();
                    tokio::spawn(async move { pool.maintain().await });
                }
                if upstream.names.due() {
                    let names = upstream.names.clone();
                    tokio::spawn(async move { names.maintain().await });
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(MAINTENANCE_TICK) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{failure_status, OriginAttempts, TenantUpstream};
    use pingora::{Error, ErrorSource, ErrorType};
    use std::net::SocketAddr;

    fn status(etype: ErrorType, source: ErrorSource) -> u16 {
        failure_status(&Error::create(etype, source, None, None))
    }

    #[test]
    fn who_failed_decides_the_status() {
        assert_eq!(status(ErrorType::ReadTimedout, ErrorSource::Upstream), 504);
        assert_eq!(
            status(ErrorType::ConnectRefused, ErrorSource::Upstream),
            502
        );
        // A client that stops sending its body timed out, not the origin.
        assert_eq!(
            status(ErrorType::ReadTimedout, ErrorSource::Downstream),
            408
        );
        assert_eq!(
            status(ErrorType::InvalidHTTPHeader, ErrorSource::Downstream),
            400
        );
        assert_eq!(
            status(ErrorType::ConnectionClosed, ErrorSource::Downstream),
            0
        );
        assert_eq!(
            status(ErrorType::HTTPStatus(503), ErrorSource::Upstream),
            503
        );
    }

    /// A pool whose every upstream failed this request has none left to try: the origin
    /// failed, a 502 (and stale-if-error may serve), not cachet's own 500.
    #[test]
    fn a_pool_with_no_upstream_left_is_a_bad_gateway() {
        let (a, b): (SocketAddr, SocketAddr) = (
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        let config = super::pool::tests::tenant(&[a, b], "health_interval = \"1h\"");
        let upstream = TenantUpstream::new(&config);
        let mut attempts = OriginAttempts::default();
        attempts.failed = vec![a, b];
        let e = upstream
            .peer(&config, &mut attempts, b"/page", None)
            .expect_err("an upstream was left");
        assert_eq!(failure_status(&e), 502, "{e}");
    }
}
