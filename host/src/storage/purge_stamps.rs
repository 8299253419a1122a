//! Purge stamps: whether a key may have been purged while one of its L2 copies was on its way
//! into L1, answered with two atomic loads and no lock.
//!
//! Why: every L2 hit promotes its copy into L1, and the copy must not land after a purge that
//! came while it was read (that purge found nothing in L1 to remove). A registered watch
//! ([`super::purge_log`]) answers this exactly, but took the purge log's lock for writing
//! twice per L2 hit (to register the key and to forget it), and both workers of a busy proxy
//! met on that lock. Here every purge bumps a counter instead: one per stripe of keys for a
//! purge by key, one per stripe of partitions for a purge that may concern any key of its
//! partition (by tag, a dropped partition). A stamp remembers both counters of its key; a
//! change in either says "maybe purged". Keys or partitions sharing a stripe only cost a
//! promotion now and then (the copy is still served, and promoted by a later hit), never a
//! purge missed.
//!
//! Fills keep the exact watch: their window is a whole fetch, and a flood of invalidating
//! requests would bump the stripes often enough to keep slow fills out of the tiers.

use pingora_cache::key::HashBinary;
use std::sync::atomic::{AtomicU64, Ordering};

/// Stripes of keys: a flood of 100 000 purges a second bumps each about 25 times a second,
/// so a promotion taking 50 µs is given up about once in a thousand.
const KEY_STRIPES: usize = 4096;

/// Stripes of partitions (tag purges are rare: they need the admin token).
const PARTITION_STRIPES: usize = 64;

pub(super) struct PurgeStamps {
    keys: Box<[AtomicU64]>,
    partitions: Box<[AtomicU64]>,
}

/// The purge counters of one key when its L2 copy was about to be read.
#[derive(Debug, Clone, Copy)]
pub struct PurgeStamp {
    key_stripe: usize,
    partition_stripe: usize,
    key_purges: u64,
    partition_purges: u64,
}

impl Default for PurgeStamps {
    fn default() -> Self {
        let counters = |n| (0..n).map(|_| AtomicU64::new(0)).collect();
        Self {
            keys: counters(KEY_STRIPES),
            partitions: counters(PARTITION_STRIPES),
        }
    }
}

impl PurgeStamps {
    /// Counts a purge of `key` (every variant), or with `None` of what may be any key of the
    /// partition. Call it before the purge takes L1's index lock: a promotion checks the stamp
    /// under that lock, so either it sees this count or the purge comes after it and removes
    /// what it put there.
    pub(super) fn note(&self, partition: &str, key: Option<HashBinary>) {
        let counter = match key {
            Some(key) => &self.keys[key_stripe(&key)],
            None => &self.partitions[partition_stripe(partition)],
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }

    /// Counts a purge that may concern any key of any partition.
    pub(super) fn note_every_partition(&self) {
        for counter in self.partitions.iter() {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The counters of `key` (of `partition`) now.
    pub(super) fn stamp(&self, partition: &str, key: &HashBinary) -> PurgeStamp {
        let (key_stripe, partition_stripe) = (key_stripe(key), partition_stripe(partition));
        PurgeStamp {
            key_stripe,
            partition_stripe,
            key_purges: self.keys[key_stripe].load(Ordering::SeqCst),
            partition_purges: self.partitions[partition_stripe].load(Ordering::SeqCst),
        }
    }

    /// Whether a purge that may concern the stamped key came since the stamp was taken.
    pub(super) fn maybe_purged_since(&self, stamp: &PurgeStamp) -> bool {
        self.keys[stamp.key_stripe].load(Ordering::SeqCst) != stamp.key_purges
            || self.partitions[stamp.partition_stripe].load(Ordering::SeqCst)
                != stamp.partition_purges
    }
}

/// Keys are already hashes (blake2 of the primary key): their first bytes are uniform.
fn key_stripe(key: &HashBinary) -> usize {
    usize::from(u16::from_le_bytes([key[0], key[1]])) % KEY_STRIPES
}

/// FNV-1a of the name: partitions are few and their names short.
fn partition_stripe(partition: &str) -> usize {
    let hash = partition
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
    (hash % PARTITION_STRIPES as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_purge_of_the_key_or_of_its_whole_partition_shows_and_others_mostly_do_not() {
        let stamps = PurgeStamps::default();
        let (key, other) = ([1; 16], [2; 16]);
        let stamp = stamps.stamp("site", &key);
        assert!(!stamps.maybe_purged_since(&stamp));
        stamps.note("site", Some(other));
        stamps.note("elsewhere", None);
        assert!(
            !stamps.maybe_purged_since(&stamp),
            "a purge of another key or partition (not in the same stripe) showed"
        );
        stamps.note("site", Some(key));
        assert!(stamps.maybe_purged_since(&stamp));

        let stamp = stamps.stamp("site", &key);
        stamps.note("site", None);
        assert!(
            stamps.maybe_purged_since(&stamp),
            "a tag purge did not show"
        );
    }

    #[test]
    fn keys_spread_over_every_stripe() {
        let stripes: std::collections::HashSet<usize> = (0..=u16::MAX)
            .map(|i| {
                let mut key = [0u8; 16];
                key[..2].copy_from_slice(&i.to_le_bytes());
                key_stripe(&key)
            })
            .collect();
        assert_eq!(stripes.len(), KEY_STRIPES);
    }
}
