//! Purges the proxy asks for directly, outside pingora's `Storage` trait: by key for
//! invalidation after unsafe requests, and by tag.

use super::entry::SlotKey;
use super::index::Index;
use super::meta::StoredMeta;
use super::MemoryStorage;
use pingora_cache::CacheKey;
use std::sync::Arc;
use std::time::SystemTime;

impl MemoryStorage {
    /// Removes the object stored under `key` and stops writes in flight for it from being
    /// stored (they may carry what is being invalidated). Returns whether anything was there.
    pub fn purge_key(&self, key: &CacheKey) -> bool {
        let slot = SlotKey::of(key);
        let mut index = self.index.write();
        let removed = index.remove(&key.user_tag, &slot);
        let cancelled = index.cancel_writes(&key.user_tag, &slot);
        drop(index);
        // The entry's body is freed here, outside the lock.
        removed.is_some() || cancelled
    }

    /// Marks the object stored under `key` stale as of now, keeping it for revalidation.
    /// Returns whether it was there.
    pub fn expire_key(&self, key: &CacheKey) -> bool {
        let slot = SlotKey::of(key);
        let mut index = self.index.write();
        expire(&mut index, &key.user_tag, slot)
    }

    /// Removes every object of `partition` carrying any of `tags`, or with `soft` marks them
    /// stale as of now (kept for revalidation). Returns how many objects were affected.
    pub fn purge_tags(&self, partition: &str, tags: &[&str], soft: bool) -> usize {
        let mut index = self.index.write();
        let keys = index.tagged(partition, tags.iter().copied());
        let mut removed = Vec::new();
        let mut affected = 0;
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
