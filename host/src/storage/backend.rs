//! pingora-cache's `Storage` trait for [`MemoryStorage`].

use super::entry::{Pending, SlotKey};
use super::hit::{CompleteHit, StreamingHit};
use super::index::Found;
use super::meta::StoredMeta;
use super::miss::Miss;
use super::stream;
use super::MemoryStorage;
use async_trait::async_trait;
use pingora_cache::key::{CacheHashKey, CompactCacheKey};
use pingora_cache::storage::streaming_write::U64WriteId;
use pingora_cache::storage::{
    HitHandler, MissHandler, PurgeOutcome, PurgeTarget, PurgeType, Storage,
};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheEntryKey, CacheKey, CacheMeta};
use pingora_error::Result;
use std::any::Any;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::SystemTime;

type Hit = Option<(CacheMeta, HitHandler)>;

#[async_trait]
impl Storage for MemoryStorage {
    async fn lookup(&'static self, key: &CacheKey, _trace: &SpanHandle) -> Result<Hit> {
        let slot = SlotKey::of(key);
        let found = self.index.read().lookup(&key.user_tag, &slot);
        // Copying the meta happens outside the lock.
        match found {
            None => Ok(None),
            Some(Found::Complete(entry)) => {
                let hit = CompleteHit::new(entry.body.clone());
                Ok(Some((entry.meta.to_meta()?, Box::new(hit))))
            }
            Some(Found::Streaming(meta, start)) => {
                let hit = StreamingHit::new(start.reader());
                Ok(Some((meta.to_meta()?, Box::new(hit))))
            }
        }
    }

    async fn lookup_streaming_write(
        &'static self,
        key: &CacheKey,
        streaming_write_tag: Option<&[u8]>,
        trace: &SpanHandle,
    ) -> Result<Hit> {
        let Some(tag) = streaming_write_tag else {
            return self.lookup(key, trace).await;
        };
        let Ok(id) = U64WriteId::try_from(tag) else {
            return Ok(None);
        };
        let slot = SlotKey::of(key);
        let write = self
            .index
            .read()
            .find_write(&key.user_tag, &slot, id.into());
        let Some((meta, start)) = write else {
            return Ok(None);
        };
        Ok(Some((
            meta.to_meta()?,
            Box::new(StreamingHit::new(start.reader())),
        )))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        Ok(Box::new(self.start_write(key, meta)?))
    }

    /// Removes the stored object. An active purge also stops writes in flight for the key from
    /// being stored, since they may carry what the purge meant to drop.
    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let Some(key) = target_key(target) else {
            return Ok(PurgeOutcome::NotFound);
        };
        let slot = SlotKey::of_compact(key);
        let mut index = self.index.write();
        let removed = index.remove(&key.user_tag, &slot);
        // An exact target names the stored entry only, not writes in flight.
        let cancelled =
            matches!(target, PurgeTarget::Active(_)) && index.cancel_writes(&key.user_tag, &slot);
        drop(index);
        Ok(match (removed, cancelled) {
            (None, false) => PurgeOutcome::NotFound,
            _ => PurgeOutcome::Purged(None),
        })
    }

    /// Marks the stored object stale as of now, keeping its body for revalidation. Writes in
    /// flight are left alone: they carry a fresh response.
    async fn expire(
        &'static self,
        target: PurgeTarget<'_>,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let Some(key) = target_key(target) else {
            return Ok(PurgeOutcome::NotFound);
        };
        let slot = SlotKey::of_compact(key);
        // One write lock for the read-modify-write, so a concurrent update cannot undo it.
        let mut index = self.index.write();
        let Some(entry) = index.complete(&key.user_tag, &slot) else {
            return Ok(PurgeOutcome::NotFound);
        };
        let mut meta = entry.meta.to_meta()?;
        meta.expire_at(SystemTime::now());
        let meta = Arc::new(StoredMeta::new(&meta)?);
        Ok(if index.replace_meta(&key.user_tag, slot, meta) {
            PurgeOutcome::Expired
        } else {
            PurgeOutcome::Purged(None)
        })
    }

    /// Ok(false) when the object vanished (evicted or purged) during revalidation, or was
    /// replaced by another ([`MemoryStorage::revalidated`]).
    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        Ok(self.revalidated(key, meta)? == Revalidated::Updated)
    }

    fn support_streaming_partial_write(&self) -> bool {
        true
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

/// What became of a revalidation's new meta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Revalidated {
    /// The object revalidated takes it.
    Updated,
    /// The object is gone (evicted or purged).
    Vanished,
    /// Another object now has the key (a fill that finished meanwhile): the 304 was about the
    /// one before, and its headers (length, coding, validators) do not describe this body.
    Replaced,
    /// A purge came while the origin was asked: nothing is freshened, here or in the tiers.
    Purged,
}

impl MemoryStorage {
    /// Gives the stored object `meta` from a revalidation, if it is still the object that was
    /// revalidated: pingora keeps the looked-up meta's `created` in the new one, and every fill
    /// gets its own.
    pub(crate) fn revalidated(&self, key: &CacheKey, meta: &CacheMeta) -> Result<Revalidated> {
        let stored = Arc::new(StoredMeta::new(meta)?);
        let slot = SlotKey::of(key);
        let mut index = self.index.write();
        // A purge (a soft one expires the object) since the revalidation began: its 304 must
        // not freshen what the purge meant to end. Checked under the index lock: a purge
        // notes itself before it takes the lock, so it is either seen here or applied after
        // this update. Checked before the lock, a soft purge that came in between expired
        // the object, and this update made it fresh again.
        if self.purged_while_filling(key) {
            return Ok(Revalidated::Purged);
        }
        match index.complete(&key.user_tag, &slot) {
            None => return Ok(Revalidated::Vanished),
            Some(entry) if entry.meta.created() != meta.created() => {
                return Ok(Revalidated::Replaced)
            }
            Some(_) => {}
        }
        Ok(if index.replace_meta(&key.user_tag, slot, stored) {
            Revalidated::Updated
        } else {
            Revalidated::Vanished
        })
    }

    /// Starts a fill of `key`: a write in flight that lookups follow until it is stored.
    /// Whether `key` was purged since the proxy began fetching it (its fill watch).
    pub(super) fn purged_while_filling(&self, key: &CacheKey) -> bool {
        self.purges
            .purged_while_watched(&key.user_tag, &key.primary_bin())
    }

    pub(super) fn start_write(&'static self, key: &CacheKey, meta: &CacheMeta) -> Result<Miss> {
        let meta = Arc::new(StoredMeta::new(meta)?);
        let lru_key = CacheEntryKey::key_only(key.to_compact());
        let id = self.next_write_id.fetch_add(1, Relaxed);
        let (writer, start) = stream::stream();
        let head = start.head.clone();
        let write = Pending {
            id,
            meta: meta.clone(),
            start,
            cancelled: false,
        };
        let slot = SlotKey::of_compact(lru_key.key());
        self.index.write().add_write(&key.user_tag, slot, write);
        // A purge between the proxy's "purged while fetched" check and the line above found
        // no write to cancel: the log still has it (a purge notes itself before cancelling).
        if self.purged_while_filling(key) {
            self.index.write().cancel_writes(&key.user_tag, &slot);
        }
        Ok(Miss::new(self, lru_key, id, meta, writer, head))
    }
}

/// The key a purge or expiry targets. This storage never assigns entry IDs, so a target naming
/// one matches nothing.
fn target_key<'a>(target: PurgeTarget<'a>) -> Option<&'a CompactCacheKey> {
    match target {
        PurgeTarget::Active(key) | PurgeTarget::Exact(CacheEntryKey::KeyOnly(key)) => Some(key),
        PurgeTarget::Exact(CacheEntryKey::Identified { .. }) => None,
    }
}
