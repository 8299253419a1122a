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
        self.note_purge(&key.user_tag, Some(key.primary_bin()));
        let mut index = self.index.write();
        let mut removed = Vec::new();
        let mut cancelled = false;
        for slot in index.all_variants(&key.user_tag, &SlotKey::of(key)) {
            removed.extend(index.remove(&key.user_tag, &slot));
            cancelled |= index.cancel_writes(&key.user_tag, &slot);
        }
        drop(index);
        // The entries' bodies are freed here, outside the lock.
        !removed.is_empty() || cancelled
    }

    /// Marks the objects stored under `key`'s primary key (every `Vary` variant) stale as of
    /// now, keeping them for revalidation. Returns whether any was there.
    pub fn expire_key(&self, key: &CacheKey) -> bool {
        self.note_purge(&key.user_tag, Some(key.primary_bin()));
        let mut index = self.index.write();
        let mut expired = false;
        for slot in index.all_variants(&key.user_tag, &SlotKey::of(key)) {
            expired |= expire(&mut index, &key.user_tag, slot);
        }
        expired
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
