//! Budget enforcement: admitting entries to the LRUs and evicting what they give up.
//!
//! Each entry is tracked by the global LRU and, if its partition has a budget, by the
//! partition's LRU too; whichever LRU evicts, the entry leaves both. Victims are subtracted
//! before a newcomer is added, so stored bytes never exceed a budget, even briefly.

use super::super::entry::{Entry, SlotKey};
use super::super::meta::StoredMeta;
use super::super::stats::Counters;
use super::{partition_mut, Admission, Index, Lru, LRU_CAPACITY};
use pingora_cache::eviction::EvictionManager;
use pingora_cache::CacheEntryKey;
use std::sync::Arc;

impl Index {
    /// Stores a freshly written object, counting the outcome.
    pub(crate) fn insert(&mut self, partition: &str, key: SlotKey, entry: Arc<Entry>) -> Admission {
        let admission = self.store(partition, key, entry);
        match admission {
            Admission::Stored => self.count(partition, Counters::inserted),
            Admission::TooBig => self.count(partition, Counters::rejected),
            Admission::Collision => {}
        }
        admission
    }

    /// Stores `entry` as the key's object, replacing the current one and evicting others.
    fn store(&mut self, partition: &str, key: SlotKey, entry: Arc<Entry>) -> Admission {
        // Release what this replaces first, so it never counts against the newcomer (a
        // newcomer that is rejected still supersedes it).
        self.remove(partition, &key);
        let (weight, fresh_until) = (entry.weight, entry.meta.fresh_until());
        let part = partition_mut(&mut self.partitions, partition);
        let part_limit = part.lru.as_ref().map(|lru| lru.weight_limit());
        if weight > self.global.weight_limit() || part_limit.is_some_and(|limit| weight > limit) {
            return Admission::TooBig;
        }
        if self.global.peek(&entry.lru_key) {
            return Admission::Collision;
        }
        // Partition first: its victims leave the global LRU before that one picks its own.
        let victims = part
            .lru
            .as_ref()
            .map(|lru| lru.admit(entry.lru_key.clone(), weight, fresh_until))
            .unwrap_or_default();
        let mut evicted_self = self.evict_all(victims, &entry.lru_key);
        if !evicted_self {
            let victims = self
                .global
                .admit(entry.lru_key.clone(), weight, fresh_until);
            evicted_self = self.evict_all(victims, &entry.lru_key);
        }
        if evicted_self {
            self.untrack(&entry.lru_key);
            return Admission::TooBig;
        }
        let part = partition_mut(&mut self.partitions, partition);
        part.counters.add(weight);
        part.tags.add(key, &entry);
        part.slots.get_or_insert(key).complete = Some(entry);
        self.counters.add(weight);
        Admission::Stored
    }

    /// Swaps in new meta for the stored object, keeping its body; false if the object is gone
    /// or no longer fits.
    pub(crate) fn replace_meta(
        &mut self,
        partition: &str,
        key: SlotKey,
        meta: Arc<StoredMeta>,
    ) -> bool {
        let Some(old) = self.complete(partition, &key).cloned() else {
            return false;
        };
        let new = Arc::new(old.with_meta(meta));
        if new.weight != old.weight {
            return self.store(partition, key, new) == Admission::Stored;
        }
        // Same charge: swap in place, keeping its LRU position (a revalidation may change
        // the tags).
        if let Some(part) = self.partitions.get_mut(partition) {
            part.tags.remove(&key, &old);
            part.tags.add(key, &new);
            if let Some(slot) = part.slots.get_mut(&key) {
                slot.complete = Some(new);
            }
        }
        true
    }

    pub(crate) fn set_global_budget(&mut self, budget: usize) {
        self.global.set_weight_limit(budget);
        self.shrink(None);
    }

    pub(crate) fn set_partition_budget(&mut self, name: &str, budget: Option<usize>) {
        let part = partition_mut(&mut self.partitions, name);
        let Some(budget) = budget else {
            part.lru = None;
            return;
        };
        match &part.lru {
            Some(lru) => lru.set_weight_limit(budget),
            None => {
                // Track what the partition already holds, unlimited so nothing is evicted
                // mid-way. Their relative recency is unknown, so they start in arbitrary order.
                let lru = Lru::with_capacity(usize::MAX, LRU_CAPACITY);
                for entry in part
                    .slots
                    .values()
                    .filter_map(|slot| slot.complete.as_ref())
                {
                    lru.admit(
                        entry.lru_key.clone(),
                        entry.weight,
                        entry.meta.fresh_until(),
                    );
                }
                lru.set_weight_limit(budget);
                part.lru = Some(lru);
            }
        }
        self.shrink(Some(name));
    }

    /// Evicts the given LRU victims; returns whether `newcomer` was among them.
    fn evict_all(&mut self, victims: Vec<CacheEntryKey>, newcomer: &CacheEntryKey) -> bool {
        let mut evicted_newcomer = false;
        for victim in victims {
            if victim == *newcomer {
                evicted_newcomer = true;
            } else {
                self.evict(&victim);
            }
        }
        evicted_newcomer
    }

    /// Drops an entry an LRU chose, from the index and from every LRU.
    fn evict(&mut self, victim: &CacheEntryKey) {
        let key = victim.key();
        if self
            .remove(&key.user_tag, &SlotKey::of_compact(key))
            .is_none()
        {
            // Not in the index: still untrack it, so no LRU keeps a phantom weight.
            self.untrack(victim);
            return;
        }
        self.count(&key.user_tag, Counters::evicted);
    }

    pub(super) fn untrack(&self, entry: &CacheEntryKey) {
        self.global.remove(entry.into());
        let part = self.partitions.get(&*entry.key().user_tag);
        if let Some(lru) = part.and_then(|part| part.lru.as_ref()) {
            lru.remove(entry.into());
        }
    }

    /// Evicts least recently used entries until an LRU (a partition's, or the global one when
    /// `None`) is within its limit again, after its budget shrank.
    fn shrink(&mut self, partition: Option<&str>) {
        loop {
            let lru = match partition {
                None => &self.global,
                Some(name) => match self.partitions.get(name).and_then(|p| p.lru.as_ref()) {
                    Some(lru) => lru,
                    None => return,
                },
            };
            if lru.total_size() <= lru.weight_limit() {
                return;
            }
            let Some(victim) = (0..lru.shards()).find_map(|shard| lru.peek_lru(shard)) else {
                return;
            };
            // Progress is guaranteed: eviction untracks the victim from every LRU.
            self.evict(&victim);
        }
    }
}
