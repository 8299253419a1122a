//! The stored objects and writes in flight, per partition and key. Every change happens under
//! the storage's lock; budget enforcement lives in [`budget`].

mod budget;
#[cfg(test)]
mod check;
mod slots;
mod tag_index;

use super::entry::{Entry, Pending, Slot, SlotKey};
use super::meta::StoredMeta;
use super::stats::{Counters, PartitionStats};
use super::stream::StreamStart;
use pingora_cache::eviction::{lru::Manager, EvictionManager};
use slots::Slots;
use std::collections::HashMap;
use std::sync::Arc;
use tag_index::TagIndex;

/// One shard keeps eviction in exact LRU order (a sharded manager evicts from a random shard);
/// admissions are serialized by the index lock anyway.
const LRU_SHARDS: usize = 1;
/// Initial LRU table size; it grows on demand.
const LRU_CAPACITY: usize = 1024;

type Lru = Manager<LRU_SHARDS>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admission {
    Stored,
    /// Larger than the global budget or its partition's budget.
    TooBig,
    /// Another stored entry has the same 64-bit LRU hash; storing it would corrupt accounting.
    Collision,
}

/// What a lookup found for a key.
pub(super) enum Found {
    Complete(Arc<Entry>),
    Streaming(Arc<StoredMeta>, StreamStart),
}

pub(super) struct Index {
    global: Lru,
    counters: Arc<Counters>,
    /// Keyed by `CacheKey::user_tag`; never removed, so per-tenant counters keep counting.
    partitions: HashMap<Box<str>, Partition>,
}

#[derive(Default)]
struct Partition {
    slots: Slots,
    /// Present when the partition has its own budget inside the global one.
    lru: Option<Lru>,
    counters: Counters,
    tags: TagIndex,
    /// Slots with writes in flight, and how many: a tag purge cancels the ones carrying its
    /// tags without walking every slot.
    writing: HashMap<SlotKey, usize>,
}

impl Index {
    pub(super) fn new(budget: usize, counters: Arc<Counters>) -> Self {
        Self {
            global: Lru::with_capacity(budget, LRU_CAPACITY),
            counters,
            partitions: HashMap::new(),
        }
    }

    pub(super) fn budget(&self) -> usize {
        self.global.weight_limit()
    }

    /// The most a partition can hold: its own budget within the global one.
    pub(super) fn budget_of(&self, partition: &str) -> usize {
        let own = self.partitions.get(partition).and_then(|p| p.lru.as_ref());
        own.map_or(self.budget(), |lru| lru.weight_limit().min(self.budget()))
    }

    /// Finds what to serve for a key, preferring a write in flight (it is newer than any
    /// stored object), and counts an access to a stored one.
    pub(super) fn lookup(&self, partition: &str, key: &SlotKey) -> Option<Found> {
        let part = self.partitions.get(partition)?;
        let slot = part.slots.get(key)?;
        if let Some(write) = slot.live_write() {
            return Some(Found::Streaming(write.meta.clone(), write.start.clone()));
        }
        let entry = slot.complete.as_ref()?;
        // Under the lock the entry is still tracked; the manager would admit an untracked
        // entry without evicting anything.
        let fresh_until = entry.meta.fresh_until();
        self.global
            .access(&entry.lru_key, entry.weight, fresh_until);
        if let Some(lru) = &part.lru {
            lru.access(&entry.lru_key, entry.weight, fresh_until);
        }
        Some(Found::Complete(entry.clone()))
    }

    /// Finds one specific write in flight, even if it was purged meanwhile.
    pub(super) fn find_write(
        &self,
        partition: &str,
        key: &SlotKey,
        id: u64,
    ) -> Option<(Arc<StoredMeta>, StreamStart)> {
        let slot = self.partitions.get(partition)?.slots.get(key)?;
        let write = slot.writes.iter().find(|w| w.id == id)?;
        Some((write.meta.clone(), write.start.clone()))
    }

    pub(super) fn complete(&self, partition: &str, key: &SlotKey) -> Option<&Arc<Entry>> {
        self.partitions
            .get(partition)?
            .slots
            .get(key)?
            .complete
            .as_ref()
    }

    pub(super) fn add_write(&mut self, partition: &str, key: SlotKey, write: Pending) {
        let part = partition_mut(&mut self.partitions, partition);
        part.slots.get_or_insert(key).writes.push(write);
        *part.writing.entry(key).or_default() += 1;
    }

    pub(super) fn take_write(
        &mut self,
        partition: &str,
        key: &SlotKey,
        id: u64,
    ) -> Option<Pending> {
        let part = self.partitions.get_mut(partition)?;
        let slot = part.slots.get_mut(key)?;
        let position = slot.writes.iter().position(|w| w.id == id)?;
        let write = slot.writes.remove(position);
        if slot.is_empty() {
            part.slots.remove(key);
        }
        if let Some(count) = part.writing.get_mut(key) {
            *count -= 1;
            if *count == 0 {
                part.writing.remove(key);
            }
        }
        Some(write)
    }

    /// Stops the partition's writes in flight that carry any of `tags` (known from their
    /// response head) from being stored or found; returns how many.
    pub(super) fn cancel_tagged_writes(&mut self, partition: &str, tags: &[&str]) -> usize {
        let Some(part) = self.partitions.get_mut(partition) else {
            return 0;
        };
        let mut cancelled = 0;
        for key in part.writing.keys() {
            let Some(slot) = part.slots.get_mut(key) else {
                continue;
            };
            for write in slot.writes.iter_mut().filter(|w| !w.cancelled) {
                if write.meta.tags().iter().any(|t| tags.contains(&&**t)) {
                    write.cancelled = true;
                    cancelled += 1;
                }
            }
        }
        cancelled
    }

    /// Stops the key's writes in flight from being stored or found; returns whether any were.
    pub(super) fn cancel_writes(&mut self, partition: &str, key: &SlotKey) -> bool {
        let Some(slot) = self.slot_mut(partition, key) else {
            return false;
        };
        let mut cancelled = false;
        for write in slot.writes.iter_mut().filter(|w| !w.cancelled) {
            write.cancelled = true;
            cancelled = true;
        }
        cancelled
    }

    /// The keys of every slot sharing `key`'s primary key (every stored `Vary` variant).
    pub(super) fn all_variants(&self, partition: &str, key: &SlotKey) -> Vec<SlotKey> {
        self.partitions
            .get(partition)
            .map(|part| part.slots.all_variants(key))
            .unwrap_or_default()
    }

    /// Bumps a counter globally and for the partition; atomics, so a read lock is enough.
    pub(super) fn count(&self, partition: &str, counter: fn(&Counters)) {
        counter(&self.counters);
        if let Some(part) = self.partitions.get(partition) {
            counter(&part.counters);
        }
    }

    /// Removes the key's stored object (not an eviction: purges and replacements).
    pub(super) fn remove(&mut self, partition: &str, key: &SlotKey) -> Option<Arc<Entry>> {
        let part = self.partitions.get_mut(partition)?;
        let slot = part.slots.get_mut(key)?;
        let entry = slot.complete.take()?;
        if slot.is_empty() {
            part.slots.remove(key);
        }
        part.tags.remove(key, &entry);
        part.counters.sub(entry.weight);
        self.counters.sub(entry.weight);
        self.untrack(&entry.lru_key);
        Some(entry)
    }

    /// [`Self::drop_partition`] for every partition.
    pub(super) fn drop_everything(&mut self) -> Vec<Arc<Entry>> {
        let partitions: Vec<Box<str>> = self.partitions.keys().cloned().collect();
        partitions
            .iter()
            .flat_map(|partition| self.drop_partition(partition))
            .collect()
    }

    /// Removes every object the partition holds and stops its writes in flight from being
    /// stored; the partition itself goes once no write of it is left. Returns the removed
    /// entries (for the caller to free outside the lock).
    pub(super) fn drop_partition(&mut self, partition: &str) -> Vec<Arc<Entry>> {
        let Some(part) = self.partitions.get(partition) else {
            return Vec::new();
        };
        let keys: Vec<SlotKey> = part.slots.keys().copied().collect();
        let mut removed = Vec::new();
        for key in keys {
            self.cancel_writes(partition, &key);
            removed.extend(self.remove(partition, &key));
        }
        if self
            .partitions
            .get(partition)
            .is_some_and(|part| part.slots.is_empty())
        {
            self.partitions.remove(partition);
        }
        removed
    }

    /// The partition's stored objects carrying any of `tags`.
    pub(super) fn tagged<'a>(
        &self,
        partition: &str,
        tags: impl IntoIterator<Item = &'a str>,
    ) -> Vec<SlotKey> {
        self.partitions
            .get(partition)
            .map(|part| part.tags.tagged(tags))
            .unwrap_or_default()
    }

    /// Per-partition usage, sorted by name.
    pub(super) fn partition_stats(&self) -> Vec<PartitionStats> {
        let mut stats: Vec<_> = self
            .partitions
            .iter()
            .map(|(name, part)| {
                let budget = part.lru.as_ref().map(|lru| lru.weight_limit());
                part.counters.partition(name, budget)
            })
            .collect();
        stats.sort_by(|a, b| a.name.cmp(&b.name));
        stats
    }

    fn slot_mut(&mut self, partition: &str, key: &SlotKey) -> Option<&mut Slot> {
        self.partitions.get_mut(partition)?.slots.get_mut(key)
    }
}

/// The partition named `name`, made if it is new (its name is copied only then: a lookup by
/// `&str` allocates nothing).
fn partition_mut<'a>(
    partitions: &'a mut HashMap<Box<str>, Partition>,
    name: &str,
) -> &'a mut Partition {
    if !partitions.contains_key(name) {
        partitions.insert(name.into(), Partition::default());
    }
    partitions.get_mut(name).expect("inserted above")
}
