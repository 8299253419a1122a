//! Purges that came while a fill was fetching its response from the origin, so that response
//! is not stored: it may carry what the purge removed.
//!
//! Only keys with a fill in flight are remembered, each until its last fill ends. A purge of
//! a key nobody is fetching concerns no fill (one that starts later asks the origin after
//! it), so a flood of invalidating requests to new URLs holds nothing here. The log used to
//! remember every purged key, up to a bound, and count a purge of the whole tenant past it:
//! a flood of POSTs to unique URLs then kept every slow fill of the tenant out of the cache
//! (probe AG). A purge by tag names no single key and counts for every fill of the tenant in
//! flight.

use parking_lot::RwLock;
use pingora_cache::key::HashBinary;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

#[derive(Default)]
struct TenantFills {
    /// The last purge that may concern any key of the tenant.
    any: Option<Instant>,
    /// Keys being fetched: how many fills each has in flight, and its last purge since the
    /// oldest of them began.
    by_key: HashMap<HashBinary, Watched>,
}

struct Watched {
    fills: usize,
    purged: Option<Instant>,
    /// When the oldest watch of the key began.
    since: Instant,
}

#[derive(Default)]
pub(super) struct PurgeLog {
    tenants: HashMap<String, TenantFills>,
}

impl PurgeLog {
    /// A purge of `key` (every variant of it), or with `None` of what may be any key.
    fn note(&mut self, partition: &str, key: Option<HashBinary>) {
        let Some(tenant) = self.tenants.get_mut(partition) else {
            return;
        };
        let now = Instant::now();
        match key {
            None => tenant.any = Some(now),
            Some(key) => {
                if let Some(watched) = tenant.by_key.get_mut(&key) {
                    watched.purged = Some(now);
                }
            }
        }
    }

    fn note_every_partition(&mut self) {
        let now = Instant::now();
        for tenant in self.tenants.values_mut() {
            tenant.any = Some(now);
        }
    }

    fn watch(&mut self, partition: &str, key: HashBinary) {
        let tenant = match self.tenants.get_mut(partition) {
            Some(tenant) => tenant,
            None => self.tenants.entry(partition.to_owned()).or_default(),
        };
        tenant
            .by_key
            .entry(key)
            .or_insert_with(|| Watched {
                fills: 0,
                purged: None,
                since: Instant::now(),
            })
            .fills += 1;
    }

    /// Whether a purge that may concern `key` came since its oldest fill in flight began.
    fn purged_while_watched(&self, partition: &str, key: &HashBinary) -> bool {
        let Some(tenant) = self.tenants.get(partition) else {
            return false;
        };
        tenant.by_key.get(key).is_some_and(|watched| {
            watched.purged.is_some() || tenant.any.is_some_and(|at| at >= watched.since)
        })
    }

    fn unwatch(&mut self, partition: &str, key: &HashBinary) {
        let Some(tenant) = self.tenants.get_mut(partition) else {
            return;
        };
        if let Some(watched) = tenant.by_key.get_mut(key) {
            watched.fills -= 1;
            if watched.fills == 0 {
                tenant.by_key.remove(key);
            }
        }
        // With no fill in flight, no purge so far concerns anything to come.
        if tenant.by_key.is_empty() {
            self.tenants.remove(partition);
        }
    }

    /// Whether `key` of `partition` may have been purged at or after `since`.
    fn purged_since(&self, partition: &str, key: &HashBinary, since: Instant) -> bool {
        self.tenants.get(partition).is_some_and(|tenant| {
            tenant.any.is_some_and(|at| at >= since)
                || tenant
                    .by_key
                    .get(key)
                    .and_then(|watched| watched.purged)
                    .is_some_and(|at| at >= since)
        })
    }
}

/// The purge log of one memory storage, shared with the fills it watches.
#[derive(Default, Clone)]
pub(super) struct SharedPurgeLog(Arc<RwLock<PurgeLog>>);

impl SharedPurgeLog {
    pub(super) fn note(&self, partition: &str, key: Option<HashBinary>) {
        self.0.write().note(partition, key);
    }

    /// Notes a purge of what may be any key of any partition.
    pub(super) fn note_every_partition(&self) {
        self.0.write().note_every_partition();
    }

    /// Whether a purge that may concern `key` came since its oldest fill in flight began:
    /// checked again when the fill's write is registered, since a purge between the
    /// response's check and the registration found no write to cancel.
    pub(super) fn purged_while_watched(&self, partition: &str, key: &HashBinary) -> bool {
        self.0.read().purged_while_watched(partition, key)
    }

    pub(super) fn purged_since(&self, partition: &str, key: &HashBinary, since: Instant) -> bool {
        self.0.read().purged_since(partition, key, since)
    }

    /// Remembers purges of `key` until the returned watch is dropped. Take it before the
    /// request goes to the origin, and the fill's start time after.
    pub(super) fn watch(&self, partition: &str, key: HashBinary) -> FillWatch {
        self.0.write().watch(partition, key);
        FillWatch {
            log: self.clone(),
            partition: partition.to_owned(),
            key,
        }
    }

    /// Watches `key` from now on, for a fill's L2 write, which must not land after a purge
    /// that came meanwhile (an L2 hit's promotion, much shorter, uses purge stamps).
    pub(super) fn watch_key(&self, partition: &str, key: HashBinary) -> KeyWatch {
        KeyWatch {
            watch: self.watch(partition, key),
            since: Instant::now(),
        }
    }
}

/// Purges of one key from the moment it was taken (see [`SharedPurgeLog::watch_key`]).
pub struct KeyWatch {
    watch: FillWatch,
    since: Instant,
}

impl KeyWatch {
    /// Whether the key may have been purged since the watch was taken.
    pub fn purged(&self) -> bool {
        let FillWatch {
            log,
            partition,
            key,
        } = &self.watch;
        log.purged_since(partition, key, self.since)
    }
}

/// A fill in flight whose key's purges are remembered (see [`SharedPurgeLog::watch`]).
pub struct FillWatch {
    log: SharedPurgeLog,
    partition: String,
    key: HashBinary,
}

impl Drop for FillWatch {
    fn drop(&mut self) {
        self.log.0.write().unwatch(&self.partition, &self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_purge_concerns_the_fills_of_its_own_key_a_tag_purge_every_fill() {
        let log = SharedPurgeLog::default();
        let (a, b) = ([1; 16], [2; 16]);
        let watch_a = log.watch("site", a);
        let watch_b = log.watch("site", b);
        let started = Instant::now();
        log.note("site", Some(a));
        assert!(log.purged_since("site", &a, started));
        assert!(!log.purged_since("site", &b, started));
        assert!(!log.purged_since("other", &a, started));
        let later = Instant::now() + std::time::Duration::from_millis(1);
        assert!(!log.purged_since("site", &a, later));
        log.note("site", None);
        assert!(log.purged_since("site", &b, started));
        drop((watch_a, watch_b));
        assert!(
            log.0.read().tenants.is_empty(),
            "nothing kept once no fill is in flight"
        );
    }

    /// A flood of purges of keys nobody is fetching holds nothing and touches no fill
    /// (probe AG: past 4096 keys the log counted a purge of every key, so a POST flood kept
    /// every slow fill from being stored).
    #[test]
    fn purges_of_keys_nobody_fetches_are_not_kept() {
        let log = SharedPurgeLog::default();
        let slow = log.watch("site", [7; 16]);
        let started = Instant::now();
        for i in 0..100_000u32 {
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&i.to_le_bytes());
            log.note("site", Some(key));
        }
        assert!(!log.purged_since("site", &[7; 16], started));
        assert_eq!(log.0.read().tenants["site"].by_key.len(), 1);
        drop(slow);
    }

    /// Two fills of one key: the purge stays remembered until the last one ends.
    #[test]
    fn a_key_is_watched_until_its_last_fill_ends() {
        let log = SharedPurgeLog::default();
        let first = log.watch("site", [1; 16]);
        let second = log.watch("site", [1; 16]);
        let started = Instant::now();
        log.note("site", Some([1; 16]));
        drop(first);
        assert!(log.purged_since("site", &[1; 16], started));
        drop(second);
        assert!(!log.purged_since("site", &[1; 16], started));
    }
}
