//! Production in-memory cache storage for pingora-cache.
//!
//! - Bounded: every stored object is charged its body plus header and bookkeeping estimates
//!   against a global byte budget and, optionally, a budget for its partition (the tenant in
//!   `CacheKey::user_tag`). The storage owns its LRU eviction and evicts synchronously while
//!   storing, so stored bytes never exceed a budget. Give pingora no eviction manager
//!   (`HttpCache::enable(storage, None, ..)`), or it would track entries a second time.
//! - Hits copy no body bytes: a complete body is one buffer, and hits get slices of it, with
//!   seeking, so pingora serves single and multipart ranges from it.
//! - Streaming: readers arriving during a fill follow the body as it is written, and get an
//!   error if the fill is abandoned. A body over the maximum object size is not stored, and its
//!   readers (including the client that triggered the fill) are unaffected.
//!
//! Do not also call pingora's `HttpCache::set_max_file_size_bytes`: with streaming writes the
//! client is served from the fill, and pingora fails that response mid-body when a chunked
//! body crosses its limit. This storage enforces the limit without failing anyone.

mod backend;
mod entry;
mod fill_budget;
mod hit;
mod index;
mod internal_fields;
mod invalidate;
mod meta;
mod miss;
mod plain_hit;
mod purge_log;
mod purge_stamps;
mod stats;
mod stream;
pub(crate) mod tags;
#[cfg(test)]
mod tests;
pub mod tiers;

pub use plain_hit::PlainHit;
pub use purge_log::{FillWatch, KeyWatch};
pub use purge_stamps::PurgeStamp;
pub use stats::{PartitionStats, StorageStats};
pub(crate) use tags::indexable as indexable_tags;
pub use tiers::{FetchStarted, TierStats, TieredStorage};

/// Stored-header field holding an object's purge tags, space-separated. Internal: the proxy
/// writes it when storing and removes it before responses go downstream.
pub const TAGS_HEADER: &str = "cachet-tags";

use index::Index;
use parking_lot::RwLock;
use pingora_cache::key::HashBinary;
use stats::Counters;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// A bounded in-memory [`pingora_cache::storage::Storage`]. `Box::leak` it for `&'static`.
pub struct MemoryStorage {
    index: RwLock<Index>,
    /// Global counters, also readable without the lock.
    counters: Arc<Counters>,
    max_object_size: AtomicUsize,
    /// Tighter per-partition (tenant) limits on the object size.
    partition_max_object: RwLock<std::collections::HashMap<String, usize>>,
    next_write_id: AtomicU64,
    /// Purges of the keys being fetched: a response fetched from before one may carry what
    /// was purged (`purged_since`).
    purges: purge_log::SharedPurgeLog,
    /// The same purges, counted for L2 copies on their way into L1 (`stamp_key`).
    stamps: purge_stamps::PurgeStamps,
    /// Body bytes held by fills in progress, and their bound (the global budget, at least
    /// [`MIN_FILL_BUDGET`]): without it, fills whose clients left (Pingora finishes them for
    /// the cache) could hold `max_object_bytes` each, as many as the origin allows at once.
    fills: fill_budget::FillBudget,
}

/// The least the fills in progress may hold, whatever the memory tier's size: a small memory
/// tier in front of a disk or shared tier still fills (and stores there) many objects at once.
const MIN_FILL_BUDGET: usize = 64 << 20;

fn fill_budget(global_budget: usize) -> usize {
    global_budget.max(MIN_FILL_BUDGET)
}

impl MemoryStorage {
    /// A storage holding at most `global_budget` bytes, not storing bodies over
    /// `max_object_size` bytes.
    pub fn new(global_budget: usize, max_object_size: usize) -> Self {
        let counters = Arc::new(Counters::default());
        Self {
            index: RwLock::new(Index::new(global_budget, counters.clone())),
            counters,
            max_object_size: AtomicUsize::new(max_object_size),
            partition_max_object: RwLock::default(),
            next_write_id: AtomicU64::new(0),
            purges: Default::default(),
            stamps: Default::default(),
            fills: fill_budget::FillBudget::new(fill_budget(global_budget)),
        }
    }

    /// Takes `bytes` of the fills' budget for a body being buffered; false when it is spent
    /// (that fill stops buffering: it is not stored).
    pub(super) fn reserve_filling(&self, partition: &str, bytes: usize) -> bool {
        self.fills.reserve(partition, bytes)
    }

    /// Takes `bytes` of the fills' budget whether or not it is spent (one chunk a fill
    /// cannot do without).
    pub(super) fn force_filling(&self, partition: &str, bytes: usize) {
        self.fills.force(partition, bytes);
    }

    /// Gives back what [`Self::reserve_filling`] took: the fill ended, stored or not.
    pub(super) fn release_filling(&self, partition: &str, bytes: usize) {
        self.fills.release(partition, bytes);
    }

    /// Body bytes fills in progress hold now.
    pub fn filling_bytes(&self) -> usize {
        self.fills.held()
    }

    /// How many tenants share the fills' budget: with more than one, each tenant's fills hold
    /// at most half of it ([`fill_budget`]).
    pub fn set_tenant_count(&self, tenants: usize) {
        self.fills.set_tenants(tenants);
    }

    /// A budget for fills other than the global budget's (tests: a small one).
    #[cfg(test)]
    pub(crate) fn set_fill_budget(&self, bytes: usize) {
        self.fills.set_max(bytes);
    }

    /// Whether `key` (of `partition`) may have been purged or invalidated after `since`. A
    /// purge only reaches the writes already made (after the origin's head): a response the
    /// origin was still preparing when the purge came must not be stored either.
    pub fn purged_since(
        &self,
        partition: &str,
        key: &HashBinary,
        since: std::time::Instant,
    ) -> bool {
        self.purges.purged_since(partition, key, since)
    }

    /// Remembers purges of `key` (of `partition`) for [`Self::purged_since`] until the watch
    /// is dropped: take it before the request goes to the origin.
    pub fn watch_fill(&self, partition: &str, key: HashBinary) -> FillWatch {
        self.purges.watch(partition, key)
    }

    /// Purges of `key` from now on (see [`KeyWatch::purged`]).
    pub fn watch_key(&self, key: &pingora_cache::CacheKey) -> KeyWatch {
        use pingora_cache::key::CacheHashKey;
        self.purges.watch_key(&key.user_tag, key.primary_bin())
    }

    /// The purge counters of `key` now, for an L2 copy about to be read and promoted: see
    /// [`Self::maybe_purged_since`].
    pub fn stamp_key(&self, key: &pingora_cache::CacheKey) -> PurgeStamp {
        use pingora_cache::key::CacheHashKey;
        self.stamps.stamp(&key.user_tag, &key.primary_bin())
    }

    /// Whether the key `stamp` was taken for may have been purged since (now and then a purge
    /// of another key says so too).
    pub fn maybe_purged_since(&self, stamp: &PurgeStamp) -> bool {
        self.stamps.maybe_purged_since(stamp)
    }

    /// Notes a purge of `key` (every variant), or with `None` of what may be any key.
    fn note_purge(&self, partition: &str, key: Option<HashBinary>) {
        self.stamps.note(partition, key);
        self.purges.note(partition, key);
    }

    /// Stores no body over `bytes` for this partition (never more than the
    /// global maximum); `None` removes the partition's own limit.
    pub fn set_partition_max_object(&self, partition: &str, bytes: Option<usize>) {
        let mut limits = self.partition_max_object.write();
        match bytes {
            Some(bytes) => limits.insert(partition.to_owned(), bytes),
            None => limits.remove(partition),
        };
    }

    /// The object size limit for a partition.
    pub fn max_object_size(&self, partition: &str) -> usize {
        let global = self.max_object_size.load(Ordering::Relaxed);
        let own = self.partition_max_object.read().get(partition).copied();
        own.map_or(global, |own| own.min(global))
    }

    /// The most a partition can hold (its quota within the global budget): a body larger
    /// than this is never stored, whatever the object size limit.
    pub fn budget_of(&self, partition: &str) -> usize {
        self.index.read().budget_of(partition)
    }

    /// Counts a response not stored because its announced length is over a limit, as a
    /// write that outgrew one is counted.
    pub fn count_rejected_oversize(&self, partition: &str) {
        self.index.read().count(partition, Counters::rejected);
    }

    /// Changes the global maximum object size (for fills that start from now on).
    pub fn set_max_object_size(&self, bytes: usize) {
        self.max_object_size.store(bytes, Ordering::Relaxed);
    }

    /// Changes the global budget, evicting at once if it shrank.
    pub fn set_global_budget(&self, bytes: usize) {
        self.fills.set_max(fill_budget(bytes));
        self.index.write().set_global_budget(bytes);
    }

    /// Gives a partition its own budget inside the global one (evicting at once if it is now
    /// over it), or with `None` lets it use the global budget alone.
    pub fn set_partition_budget(&self, partition: &str, bytes: Option<usize>) {
        self.index.write().set_partition_budget(partition, bytes);
    }

    /// Current usage, globally and per partition.
    pub fn stats(&self) -> StorageStats {
        let index = self.index.read();
        let partitions = index.partition_stats();
        self.counters.global(index.budget(), partitions)
    }
}
