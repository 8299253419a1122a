//! Purges the proxy asks for directly, outside pingora's `Storage` trait: by key for
//! invalidation after unsafe requests, and by tag.

use super::entry::SlotKey;
use super::index::Index;
use super::meta::StoredMeta;
use super::MemoryStorage;
use pingora_cache::key::CacheHashKey;
use pingora_cache::CacheKey;
use std::sync::Arc;
use std::time::SystemTime;

impl MemoryStorage {
    /// Removes the objects stored under `key`'s primary key (every `Vary` variant) and stops
    /// writes in flight for them from being stored (they may carry what is being
    /// invalidated). Returns whether anything was there.
    pub fn purge_key(&self, key: &CacheKey) -> bool {
        self.purge_variants(&key.user_tag, key.primary_bin(), &SlotKey::of(key), false)
    }

    /// Marks the objects stored under `key`'s primary key (every `Vary` variant) stale as of
    /// now, keeping them for revalidation. Writes in flight for them are not stored, as for a
    /// hard purge: they bring what is being purged, and stored they would be fresh. Returns
    /// whether anything was there.
    pub fn expire_key(&self, key: &CacheKey) -> bool {
        self.purge_variants(&key.user_tag, key.primary_bin(), &SlotKey::of(key), true)
    }

    /// Removes (or with `soft` expires) every `Vary` variant stored under `slot`'s primary
    /// key `primary`, and stops the writes in flight for them from being stored. Whether
    /// anything was there.
    pub(super) fn purge_variants(
        &self,
        partition: &str,
        primary: pingora_cache::key::HashBinary,
        slot: &SlotKey,
        soft: bool,
    ) -> bool {
        self.note_purge(partition, Some(primary));
        let mut index = self.index.write();
        let mut affected = false;
        let mut removed = Vec::new();
        for variant in index.all_variants(partition, slot) {
            affected |= index.cancel_writes(partition, &variant);
            if soft {
                affected |= expire(&mut index, partition, variant);
            } else {
                removed.extend(index.remove(partition, &variant));
            }
        }
        drop(index);
        // The entries' bodies are freed here, outside the lock.
        affected || !removed.is_empty()
    }

    /// Removes every object of `partition` carrying any of `tags`, or with `soft` marks them
    /// stale as of now (kept for revalidation). Writes in flight carrying them are not
    /// stored either, soft or not: what they bring is what is being purged. Returns how many
    /// objects (and writes) were affected.
    pub fn purge_tags(&self, partition: &str, tags: &[&str], soft: bool) -> usize {
        self.note_purge(partition, None);
        let mut index = self.index.write();
        let keys = index.tagged(partition, tags.iter().copied());
        let mut removed = Vec::new();
        let mut affected = index.cancel_tagged_writes(partition, tags);
        for key in keys {
            if !soft {
                if let Some(entry) = index.remove(partition, &key) {
                    removed.push(entry);
                    affected += 1;
                }
                continue;
            }
            if expire(&mut index, partition, key) {
                affected += 1;
            }
        }
        drop(index);
        drop(removed);
        affected
    }

    /// Empties every partition: for purges that may have been missed and cannot be named any
    /// more. Promotions and fills in flight for any partition are stopped too. Returns how
    /// many objects were removed.
    pub fn drop_everything(&self) -> usize {
        self.stamps.note_every_partition();
        self.purges.note_every_partition();
        let removed = self.index.write().drop_everything();
        removed.len()
    }

    /// Empties a partition whose tenant is gone: nothing can reach its objects any more, and
    /// they would hold the global budget until evicted. Writes in flight for it are not
    /// stored. Returns how many objects were removed.
    pub fn drop_partition(&self, partition: &str) -> usize {
        self.note_purge(partition, None);
        let removed = self.index.write().drop_partition(partition);
        // The entries' bodies are freed here, outside the lock.
        removed.len()
    }
}

/// Expires one stored object under the caller's write lock, so no update can undo it.
pub(super) fn expire(index: &mut Index, partition: &str, key: SlotKey) -> bool {
    let Some(entry) = index.complete(partition, &key) else {
        return false;
    };
    let Ok(mut meta) = entry.meta.to_meta() else {
        return false;
    };
    meta.expire_at(SystemTime::now());
    let Ok(meta) = StoredMeta::new(&meta) else {
        return false;
    };
    index.replace_meta(partition, key, Arc::new(meta))
}
