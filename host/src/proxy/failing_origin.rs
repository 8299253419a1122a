//! Keys whose revalidation just failed while their stale copy could be served
//! (`stale-if-error`). The requests queued on the cache lock behind that fill each took their
//! turn at the failing origin and waited out its timeout; past the lock timeout Pingora turned
//! the cache off for the rest, who got 504s while the stale copy was there to serve (probe AD:
//! 3 of 10 clients got it). For [`HOLD`] after a failure, a request that would revalidate such
//! a key fails at once instead, and so gets the stale copy; the next one after that asks the
//! origin again.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a failure answers for the origin: long enough for the queue behind one failed
/// fill to drain, short enough that a recovered origin is asked again within seconds.
const HOLD: Duration = Duration::from_secs(2);
const SHARDS: usize = 8;
/// Keys remembered per shard; when full of live failures a new one is not kept (its requests
/// then go to the origin as before).
const MAX_PER_SHARD: usize = 1024;

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
