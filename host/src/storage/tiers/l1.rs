//! What the tier layer asks of L1 beyond pingora's `Storage` trait: taking in a copy found in
//! L2, reading a stored object back for an L2 rewrite, and applying purges named by their
//! compact key (as other nodes send them).

use super::super::entry::{Entry, SlotKey};
use super::super::meta::StoredMeta;
use super::super::MemoryStorage;
use bytes::Bytes;
use pingora_cache::key::CompactCacheKey;
use pingora_cache::{CacheEntryKey, CacheKey, CacheMeta};
use std::sync::Arc;

impl MemoryStorage {
    /// Stores a copy read from an L2 tier, unless L1 meanwhile has the key (stored or being
    /// written: either is newer) or the body is over the partition's object limit.
    pub(crate) fn promote(&self, key: &CacheKey, meta: &CacheMeta, body: Bytes) -> bool {
        let Ok(meta) = StoredMeta::new(meta) else {
            return false;
        };
        self.promote_stored(key, Arc::new(meta), body)
    }

    /// [`Self::promote`] for a meta already in L1's form.
    pub(in crate::storage) fn promote_stored(
        &self,
        key: &CacheKey,
        meta: Arc<StoredMeta>,
        body: Bytes,
    ) -> bool {
        if body.len() > self.max_object_size(&key.user_tag) {
            return false;
        }
        let slot = SlotKey::of(key);
        let lru_key = CacheEntryKey::key_only(key.to_compact());
        let entry = Arc::new(Entry::new(meta, body, lru_key));
        let mut index = self.index.write();
        if index.lookup(&key.user_tag, &slot).is_some() {
            return false;
        }
        index.insert(&key.user_tag, slot, entry) == super::super::index::Admission::Stored
    }

    /// The stored object's meta and body.
    pub(crate) fn stored(&self, key: &CacheKey) -> Option<(CacheMeta, Bytes)> {
        let entry = self
            .index
            .read()
            .complete(&key.user_tag, &SlotKey::of(key))
            .cloned()?;
        Some((entry.meta.to_meta().ok()?, entry.body.clone()))
    }

    /// Applies to L1 a purge made by another process (another node, or the process this one
    /// took over from in a graceful upgrade).
    pub(crate) fn apply_purge(&self, purge: &super::purges::Purge) {
        use super::purges::Target;
        match &purge.target {
            Target::Key(hex) => {
                if let Some(key) = super::key::TierKey::from_hex(hex).and_then(|k| k.to_compact()) {
                    self.purge_compact(&key, purge.soft);
                }
            }
            Target::Tag { partition, tag } => {
                self.purge_tags(partition, &[tag.as_str()], purge.soft);
            }
            // Only ever made from marks a node dropped: they shadow L2 copies, not L1's.
            Target::Partition(_) => {}
        }
    }

    /// Removes (or with `soft` expires) what is stored under a key named by its compact form
    /// (as another node's purge names it), every `Vary` variant of it, as a purge made here
    /// does: the key named only the slot without variance, and the variants stayed.
    pub(crate) fn purge_compact(&self, key: &CompactCacheKey, soft: bool) -> bool {
        let slot = SlotKey::of_compact(key);
        self.purge_variants(&key.user_tag, key.primary, &slot, soft)
    }
}
