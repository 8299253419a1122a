//! What the index holds per cache key: the stored object and any writes in flight.

use super::meta::StoredMeta;
use super::stream::StreamStart;
use bytes::Bytes;
use pingora_cache::key::{CacheHashKey, CompactCacheKey, HashBinary};
use pingora_cache::{CacheEntryKey, CacheKey};
use std::sync::Arc;

/// Weight of an entry beyond body and meta: index slot, key, `Arc`, LRU node, and the allocator's
/// headers and size-class rounding of every allocation an object makes. Measured with
/// `cargo bench -p cachet --bench memory`: at 256 B, RSS grew ~865 B per stored object beyond
/// the accounted weight; with this the overshoot stays fixed whatever the object count.
const ENTRY_OVERHEAD: usize = 1024;

/// Identifies an object inside its partition (the partition is the key's `user_tag`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct SlotKey {
    primary: HashBinary,
    variance: Option<HashBinary>,
}

impl SlotKey {
    pub(super) fn of(key: &CacheKey) -> Self {
        Self {
            primary: key.primary_bin(),
            variance: key.variance_bin(),
        }
    }

    pub(super) fn of_compact(key: &CompactCacheKey) -> Self {
        Self {
            primary: key.primary,
            variance: key.variance.as_deref().copied(),
        }
    }

    pub(super) fn primary(&self) -> HashBinary {
        self.primary
    }

    /// Whether this is one variant of a response stored per `Vary`.
    pub(super) fn is_variant(&self) -> bool {
        self.variance.is_some()
    }

    /// The key of the same primary key without a variance.
    pub(super) fn without_variance(&self) -> Self {
        Self {
            primary: self.primary,
            variance: None,
        }
    }
}

/// A complete stored object. Immutable: changes replace the whole `Arc`.
pub(super) struct Entry {
    pub(super) meta: Arc<StoredMeta>,
    /// The whole body in one buffer; hits hand out slices of it.
    pub(super) body: Bytes,
    /// This entry's identity in the LRU managers.
    pub(super) lru_key: CacheEntryKey,
    /// Bytes charged against the budgets.
    pub(super) weight: usize,
}

impl Entry {
    pub(super) fn new(meta: Arc<StoredMeta>, body: Bytes, lru_key: CacheEntryKey) -> Self {
        let weight = body.len() + meta.weight() + ENTRY_OVERHEAD;
        Self {
            meta,
            body,
            lru_key,
            weight,
        }
    }

    pub(super) fn with_meta(&self, meta: Arc<StoredMeta>) -> Self {
        Self::new(meta, self.body.clone(), self.lru_key.clone())
    }
}

/// A write in flight that readers can attach to and stream from.
pub(super) struct Pending {
    pub(super) id: u64,
    pub(super) meta: Arc<StoredMeta>,
    pub(super) start: StreamStart,
    /// Purged while writing: new lookups skip it and it will not be stored.
    pub(super) cancelled: bool,
}

#[derive(Default)]
pub(super) struct Slot {
    pub(super) complete: Option<Arc<Entry>>,
    pub(super) writes: Vec<Pending>,
}

impl Slot {
    pub(super) fn is_empty(&self) -> bool {
        self.complete.is_none() && self.writes.is_empty()
    }

    /// The write new readers should follow: the newest one still wanted.
    pub(super) fn live_write(&self) -> Option<&Pending> {
        self.writes.iter().rev().find(|w| !w.cancelled)
    }
}
