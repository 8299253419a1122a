//! What the tier layer asks of L1 beyond pingora's `Storage` trait: taking in a copy found in
//! L2, reading a stored object back for an L2 rewrite, and applying purges named by their
//! compact key (as other nodes send them).

use super::super::entry::{Entry, SlotKey};
use super::super::meta::StoredMeta;
use super::super::{MemoryStorage, PurgeStamp};
use bytes::Bytes;
use pingora_cache::key::CompactCacheKey;
use pingora_cache::{CacheEntryKey, CacheKey, CacheMeta};
use std::sync::Arc;

impl MemoryStorage {
    /// Stores a copy read from an L2 tier, unless L1 meanwhile has the key (stored or being
    /// written: either is newer), the body is over the partition's object limit, or the key
    /// may have been purged since `stamp` was taken (before the copy was read).
    pub(crate) fn promote(
        &self,
        key: &CacheKey,
        meta: &CacheMeta,
        body: Bytes,
        stamp: &PurgeStamp,
    ) -> bool {
        let Ok(meta) = StoredMeta::new(meta) else {
            return false;
        };
        self.promote_stored(key, Arc::new(meta), body, stamp)
    }

    /// [`Self::promote`] for a meta already in L1's form.
    pub(in crate::storage) fn promote_stored(
        &self,
        key: &CacheKey,
        meta: Arc<StoredMeta>,
        body: Bytes,
        stamp: &PurgeStamp,
    ) -> bool {
        if body.len() > self.max_object_size(&key.user_tag) {
            return false;
        }
        let slot = SlotKey::of(key);
        let lru_key = CacheEntryKey::key_only(key.to_compact());
        let entry = Arc::new(Entry::new(meta, body, lru_key));
        let mut index = self.index.write();
        // Looked at under the index lock: a purge notes itself before it takes the lock to
        // remove, so one that came after this look removes the copy inserted below. Without
        // the stamp, a purge between the copy's mark check and here found nothing in L1 to
        // remove, and the copy it purged was put there afterwards.
        if index.lookup(&key.user_tag, &slot).is_some() || self.maybe_purged_since(stamp) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::http::ResponseHeader;
    use std::time::{Duration, SystemTime};

    /// A purge between an L2 copy's read (and its mark check) and its promotion finds nothing
    /// in L1 to remove: the promotion must see it, or the purged copy is served from L1.
    #[test]
    fn a_copy_purged_after_it_was_read_is_not_promoted() {
        let l1 = MemoryStorage::new(1 << 20, 1 << 20);
        let now = SystemTime::now();
        let header = ResponseHeader::build_no_case(200, None).unwrap();
        let meta = CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, header);
        let key = CacheKey::new("/read", "site");

        let stamp = l1.stamp_key(&key);
        assert!(!l1.purge_key(&key), "L1 held nothing yet");
        assert!(!l1.promote(&key, &meta, Bytes::from_static(b"old"), &stamp));
        assert!(l1.stored(&key).is_none());

        // A copy read after the purge is promoted.
        let stamp = l1.stamp_key(&key);
        assert!(l1.promote(&key, &meta, Bytes::from_static(b"new"), &stamp));
        assert_eq!(l1.stored(&key).unwrap().1, Bytes::from_static(b"new"));
    }
}
