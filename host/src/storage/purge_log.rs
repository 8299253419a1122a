//! When each tenant's URLs were last purged or invalidated, so a response fetched from before
//! then is not stored: it may carry what the purge removed.
//!
//! Kept per primary key, not per tenant: with one time per tenant, any client's POST to any
//! URL (an invalidating request) stopped every fill then in flight from being stored, and a
//! steady trickle of them kept slow responses out of the cache for good. A purge by tag
//! names no single key and still counts for every fill of the tenant, and so does any purge
//! once a tenant has more recent purges than the log keeps.

use pingora_cache::key::HashBinary;
use std::collections::HashMap;
use std::time::Instant;

/// Keys remembered per tenant; past it the log forgets them and counts one tenant-wide purge.
const KEYS_KEPT: usize = 4096;

#[derive(Default)]
struct TenantPurges {
    /// The last purge that may concern any key of the tenant.
    any: Option<Instant>,
    by_key: HashMap<HashBinary, Instant>,
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
        match key {
            None => tenant.any = Some(now),
            Some(_) if tenant.by_key.len() >= KEYS_KEPT => {
                tenant.by_key.clear();
                tenant.any = Some(now);
            }
            Some(key) => {
                tenant.by_key.insert(key, now);
            }
        }
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

    #[test]
    fn past_the_keys_kept_every_key_counts_as_purged() {
        let mut log = PurgeLog::default();
        let started = Instant::now();
        for i in 0..=KEYS_KEPT as u32 {
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&i.to_le_bytes());
            log.note("site", Some(key));
        }
        assert!(log.purged_since("site", &[9; 16], started));
        assert!(log.tenants["site"].by_key.len() <= KEYS_KEPT);
    }
}
