//! Keys whose revalidation just failed while their stale copy could be served
//! (`stale-if-error`). The requests queued on the cache lock behind that fill each took their
//! turn at the failing origin and waited out its timeout; past the lock timeout Pingora turned
//! the cache off for the rest, who got 504s while the stale copy was there to serve (probe AD:
//! 3 of 10 clients got it). For [`HOLD`] after a failure, a request that finds such a key
//! stale is served the stale copy as it is, taking no cache lock ([`RecentFailures::holds`]);
//! one that got past that check as the failure was recorded fails at once at the origin
//! instead, and so gets the stale copy too. The next request after the hold asks the origin
//! again.
//!
//! What may start a hold, so that no client can keep others on a stale copy (probes AE,
//! AF): the failure of the fill others queue behind (the lock writer), of one variant (the
//! key with its variance), and only a failure to reach the origin at all (no connection, no
//! handshake). Those come before any byte of the request is sent, so no request head can
//! cause them; a timeout, a reset or a 5xx can be one request's own doing (a header the
//! origin chokes on) and starts none. Never a request this memo itself stopped, which would
//! renew the hold for ever.

use parking_lot::Mutex;
use pingora::ErrorType;
use pingora_cache::key::CacheHashKey;
use pingora_cache::{CacheMeta, HttpCache};
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

/// How long a failure answers for the origin: long enough for the queue behind one failed
/// fill to drain, short enough that a recovered origin is asked again within seconds.
const HOLD: Duration = Duration::from_secs(2);
const SHARDS: usize = 8;
/// Keys remembered per shard; when full of live failures a new one is not kept (its requests
/// then go to the origin as before).
const MAX_PER_SHARD: usize = 1024;

/// The error a request stopped by the memo fails with: served stale, and not a failure of
/// the origin's (it starts no hold).
pub const MEMO_ERROR: ErrorType =
    ErrorType::Custom("the origin failed to revalidate this moments ago");

/// Whether an origin failure is an outage no request could have caused: the origin could not
/// be reached (refused, timed out, no route, TLS handshake). A read timeout, a reset or a 5xx
/// may answer one request's own head.
pub fn is_outage(error: &ErrorType) -> bool {
    matches!(
        error,
        ErrorType::ConnectTimedout
            | ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError
            | ErrorType::ConnectProxyFailure
            | ErrorType::TLSHandshakeFailure
            | ErrorType::TLSHandshakeTimedout
            | ErrorType::InvalidCert
            | ErrorType::HandshakeError
    )
}

/// A failure is remembered under the key with its variance (another `Vary` variant may be
/// answered fine); the key holds the tenant.
pub fn key_of(key: &pingora_cache::CacheKey) -> u128 {
    u128::from_be_bytes(key.combined_bin())
}

#[derive(Default)]
pub struct RecentFailures {
    shards: [Mutex<HashMap<u128, Instant>>; SHARDS],
}

impl RecentFailures {
    fn shard(&self, key: u128) -> &Mutex<HashMap<u128, Instant>> {
        &self.shards[(key % SHARDS as u128) as usize]
    }

    /// The origin failed to revalidate `key` (a primary key hash) just now.
    pub fn record(&self, key: u128) {
        let mut failures = self.shard(key).lock();
        if failures.len() >= MAX_PER_SHARD && !failures.contains_key(&key) {
            failures.retain(|_, at| at.elapsed() < HOLD);
            if failures.len() >= MAX_PER_SHARD {
                return;
            }
        }
        failures.insert(key, Instant::now());
    }

    /// Whether the stale `meta` the request in `cache` found is served as it is: it may be
    /// served on error, and the origin failed to revalidate it within the last [`HOLD`].
    pub fn holds(&self, cache: &HttpCache, meta: &CacheMeta) -> bool {
        meta.serve_stale_if_error(SystemTime::now())
            && cache
                .maybe_cache_key()
                .is_some_and(|key| self.failed_recently(key_of(key)))
    }

    /// Whether the origin failed to revalidate `key` within the last [`HOLD`].
    pub fn failed_recently(&self, key: u128) -> bool {
        let mut failures = self.shard(key).lock();
        match failures.get(&key) {
            Some(at) if at.elapsed() < HOLD => true,
            Some(_) => {
                failures.remove(&key);
                false
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_outages_start_a_hold() {
        assert!(is_outage(&ErrorType::ConnectRefused));
        assert!(is_outage(&ErrorType::ConnectTimedout));
        // What one request's own head may provoke.
        assert!(!is_outage(&ErrorType::ReadTimedout));
        assert!(!is_outage(&ErrorType::ConnectionClosed));
        assert!(!is_outage(&ErrorType::HTTPStatus(502)));
        assert!(!is_outage(&ErrorType::HTTPStatus(500)));
        assert!(!is_outage(&MEMO_ERROR));
    }

    #[test]
    fn a_failure_answers_for_its_key_for_a_while() {
        let failures = RecentFailures::default();
        failures.record(7);
        assert!(failures.failed_recently(7));
        assert!(!failures.failed_recently(8));
        failures.shards[(7 % SHARDS as u128) as usize]
            .lock()
            .insert(7, Instant::now() - HOLD);
        assert!(!failures.failed_recently(7));
    }
}
