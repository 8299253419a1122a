//! When each tenant's URLs were last purged or invalidated, so a response fetched from before
//! then is not stored: it may carry what the purge removed.
//!
//! Kept per primary key, not per tenant: with one time per tenant, any client's POST to any
//! URL (an invalidating request) stopped every fill then in flight from being stored, and a
//! steady trickle of them kept slow responses out of the cache for good. A purge by tag
//! names no single key and still counts for every fill of the tenant, and so does any purge
//! that came before the oldest purge the log still holds, once it holds as many as it keeps.

use pingora_cache::key::HashBinary;
use std::collections::HashMap;
use std::time::Instant;

/// Keys remembered per tenant; past it the log forgets the older half, and counts a purge of
/// every key at the newest time it forgot (only fills older than that are affected).
const KEYS_KEPT: usize = 4096;

#[derive(Default)]
struct TenantPurges {
    /// The last purge that may concern any key of the tenant.
    any: Option<Instant>,
    by_key: HashMap<HashBinary, Instant>,
}

impl TenantPurges {
    /// Drops the older half of the keys; a fill that began before the newest time dropped
    /// counts as purged (it may have been one of them).
    fn forget_older_half(&mut self) {
        let mut times: Vec<Instant> = self.by_key.values().copied().collect();
        let middle = times.len() / 2;
        let (_, cutoff, _) = times.select_nth_unstable(middle);
        let cutoff = *cutoff;
        self.by_key.retain(|_, at| *at > cutoff);
        self.any = self.any.max(Some(cutoff));
    }
}

#[derive(Default)]
pub(super) struct PurgeLog {
    tenants: HashMap<String, TenantPurges>,
}

impl PurgeLog {
    /// A purge of `key` (every variant of it), or with `None` of what may be any key.
    pub(super) fn note(&mut self, partition: &str, key: Option<HashBinary>) {
        let now = Instant::now();
        let tenant = match self.tenants.get_mut(partition) {
            Some(tenant) => tenant,
            None => self.tenants.entry(partition.to_owned()).or_default(),
        };
        let Some(key) = key else {
            tenant.any = Some(now);
            return;
        };
        if tenant.by_key.len() >= KEYS_KEPT && !tenant.by_key.contains_key(&key) {
            tenant.forget_older_half();
        }
        tenant.by_key.insert(key, now);
    }

    /// Whether `key` of `partition` may have been purged at or after `since`.
    pub(super) fn purged_since(&self, partition: &str, key: &HashBinary, since: Instant) -> bool {
        self.tenants.get(partition).is_some_and(|tenant| {
            tenant.any.is_some_and(|at| at >= since)
                || tenant.by_key.get(key).is_some_and(|at| *at >= since)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_purge_concerns_its_own_key_a_tag_purge_every_key() {
        let mut log = PurgeLog::default();
        let started = Instant::now();
        let (a, b) = ([1; 16], [2; 16]);
        log.note("site", Some(a));
        assert!(log.purged_since("site", &a, started));
        assert!(!log.purged_since("site", &b, started));
        assert!(!log.purged_since("other", &a, started));
        let later = Instant::now();
        assert!(!log.purged_since("site", &a, later + std::time::Duration::from_millis(1)));
        log.note("site", None);
        assert!(log.purged_since("site", &b, started));
    }

    fn key(i: u32) -> HashBinary {
        let mut key = [0u8; 16];
        key[..4].copy_from_slice(&i.to_le_bytes());
        key
    }

    /// Past the keys kept, only fills older than the purges forgotten count as purged
    /// (probe N: forgetting everything stopped every fill in flight once per 4096 purges).
    #[test]
    fn past_the_keys_kept_only_older_fills_count_as_purged() {
        let mut log = PurgeLog::default();
        let before_all = Instant::now();
        for i in 0..KEYS_KEPT as u32 {
            log.note("site", Some(key(i)));
        }
        // The same key again is an update, not a new one.
        log.note("site", Some(key(0)));
        assert!(log.tenants["site"].any.is_none());
        std::thread::sleep(std::time::Duration::from_millis(2));
        let after_all = Instant::now();
        log.note("site", Some(key(KEYS_KEPT as u32)));
        assert!(log.tenants["site"].by_key.len() <= KEYS_KEPT / 2 + 2);
        assert!(log.purged_since("site", &[9; 16], before_all));
        assert!(!log.purged_since("site", &[9; 16], after_all));
        assert!(log.purged_since("site", &key(KEYS_KEPT as u32), after_all));
    }
}
