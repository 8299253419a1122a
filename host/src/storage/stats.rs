//! Operator-facing counters, kept as relaxed atomics so the hot path never blocks on them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A snapshot of [`super::MemoryStorage`] usage: the global numbers, then each partition's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageStats {
    /// The global byte budget.
    pub budget_bytes: u64,
    /// Bytes stored: bodies plus header and bookkeeping estimates. Never above the budget.
    pub stored_bytes: u64,
    /// Complete objects stored.
    pub objects: u64,
    /// Objects dropped to make room, since start.
    pub evictions: u64,
    /// Objects stored by completed writes, since start.
    pub inserts: u64,
    /// Writes not stored for exceeding the maximum object size or their budget, since start.
    pub rejected_oversize: u64,
    /// Per partition (tenant), sorted by name.
    pub partitions: Vec<PartitionStats>,
    /// Lookups L1 answered, since start (counted by [`super::TieredStorage`]).
    pub l1_hits: u64,
    /// The L2 tiers behind L1, in lookup order.
    pub tiers: Vec<super::TierStats>,
}

/// Usage of one partition, named by `CacheKey::user_tag`; fields as in [`StorageStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionStats {
    pub name: String,
    /// Its own budget inside the global one, if it has one.
    pub budget_bytes: Option<u64>,
    pub stored_bytes: u64,
    pub objects: u64,
    pub evictions: u64,
    pub inserts: u64,
    pub rejected_oversize: u64,
}

/// Live counters, one set globally and one per partition.
#[derive(Debug, Default)]
pub(super) struct Counters {
    stored_bytes: AtomicU64,
    objects: AtomicU64,
    evictions: AtomicU64,
    inserts: AtomicU64,
    rejected_oversize: AtomicU64,
}

impl Counters {
    pub(super) fn add(&self, weight: usize) {
        self.stored_bytes.fetch_add(weight as u64, Relaxed);
        self.objects.fetch_add(1, Relaxed);
    }

    pub(super) fn sub(&self, weight: usize) {
        self.stored_bytes.fetch_sub(weight as u64, Relaxed);
        self.objects.fetch_sub(1, Relaxed);
    }

    pub(super) fn evicted(&self) {
        self.evictions.fetch_add(1, Relaxed);
    }

    pub(super) fn inserted(&self) {
        self.inserts.fetch_add(1, Relaxed);
    }

    pub(super) fn rejected(&self) {
        self.rejected_oversize.fetch_add(1, Relaxed);
    }

    pub(super) fn stored_bytes(&self) -> u64 {
        self.stored_bytes.load(Relaxed)
    }

    pub(super) fn objects(&self) -> u64 {
        self.objects.load(Relaxed)
    }

    pub(super) fn global(&self, budget: usize, partitions: Vec<PartitionStats>) -> StorageStats {
        StorageStats {
            budget_bytes: budget as u64,
            stored_bytes: self.stored_bytes(),
            objects: self.objects(),
            evictions: self.evictions.load(Relaxed),
            inserts: self.inserts.load(Relaxed),
            rejected_oversize: self.rejected_oversize.load(Relaxed),
            partitions,
            l1_hits: 0,
            tiers: Vec::new(),
        }
    }

    pub(super) fn partition(&self, name: &str, budget: Option<usize>) -> PartitionStats {
        PartitionStats {
            name: name.to_owned(),
            budget_bytes: budget.map(|b| b as u64),
            stored_bytes: self.stored_bytes(),
            objects: self.objects(),
            evictions: self.evictions.load(Relaxed),
            inserts: self.inserts.load(Relaxed),
            rejected_oversize: self.rejected_oversize.load(Relaxed),
        }
    }
}
