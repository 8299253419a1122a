//! pingora-cache's `Storage` trait for [`TieredStorage`].

use super::super::backend::Revalidated;
use super::super::meta::StoredMeta;
use super::chunked_hit::{ChunkStream, Promotion};
use super::chunks::Plan;
use super::hit::TierHit;
use super::key::TierKey;
use super::lean::TierReadAhead;
use super::miss::TieredMiss;
use super::purges::{Purge, Target, Verdict};
use super::record::{self, Body, DecodeError};
use super::tier::{Tier, TierCounters};
use super::writer::Job;
use super::TieredStorage;
use async_trait::async_trait;
use bytes::Bytes;
use pingora_cache::key::CompactCacheKey;
use pingora_cache::storage::{
    HandleMiss, HitHandler, MissHandler, PurgeOutcome, PurgeTarget, PurgeType, Storage,
};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheEntryKey, CacheKey, CacheMeta};
use pingora_error::Result;
use std::any::Any;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

type Hit = Option<(CacheMeta, HitHandler)>;

/// A copy found in an L2 tier, ready to serve.
pub(super) struct Found<'a> {
    pub(super) meta: CacheMeta,
    pub(super) tier: &'a Arc<dyn Tier>,
    pub(super) body: FoundBody,
    /// What purge marks are judged by, again if the copy waits before it is used.
    pub(super) name: TierKey,
    pub(super) written_at: u64,
}

pub(super) enum FoundBody {
    Whole(Bytes),
    /// A chunked body whose chunks are all there, with chunk 0's data read and verified.
    Chunked {
        name: TierKey,
        plan: Plan,
        first: Bytes,
    },
}

impl TieredStorage {
    /// The first L2 copy of `key` the purge marks let through, with the tier holding it.
    /// Corrupt copies and copies a purge removed are deleted from their tier on the way; a
    /// chunked copy counts only when all its chunks are there and the first one checks out
    /// (nothing has been sent yet, so an incomplete one is simply a miss).
    pub(super) async fn find_in_tiers(&self, key: &CacheKey) -> Option<Found<'_>> {
        let name = TierKey::of(key);
        for tier in self.tiers.iter() {
            let counters = tier.counters();
            let value = match tier.get(&name).await {
                Ok(Some(value)) => value,
                Ok(None) => {
                    TierCounters::bump(&counters.misses);
                    continue;
                }
                Err(e) => {
                    TierCounters::bump(&counters.errors);
                    TierCounters::bump(&counters.misses);
                    // An outage fails every lookup: seen in the log, without flooding it.
                    if let Some(failures) = counters.read_failures.due(Instant::now()) {
                        tracing::warn!(
                            tier = tier.name(),
                            failures,
                            "tier lookups failing, served as misses ({failures} since the last warning): {e}"
                        );
                    }
                    continue;
                }
            };
            let mut found = match record::decode(value, &name, tier.key_check()) {
                Ok(found) => found,
                // Written by an earlier version: the fill that follows replaces it.
                Err(DecodeError::Outdated) => {
                    TierCounters::bump(&counters.misses);
                    tracing::debug!(tier = tier.name(), "outdated record format: a miss");
                    continue;
                }
                Err(DecodeError::Corrupt(e)) => {
                    TierCounters::bump(&counters.corrupt);
                    TierCounters::bump(&counters.errors);
                    TierCounters::bump(&counters.misses);
                    tracing::warn!(tier = tier.name(), "corrupt object removed: {e}");
                    tier.remove(&name);
                    continue;
                }
            };
            if !self.apply_purge_marks(&name, &mut found.meta, found.written_at) {
                TierCounters::bump(&counters.purged);
                TierCounters::bump(&counters.misses);
                tier.remove(&name);
                if let Body::Chunked(plan) = &found.body {
                    tier.remove_chunks(&plan.keys(&name));
                }
                continue;
            }
            let body = match found.body {
                Body::Whole(body) => FoundBody::Whole(body),
                Body::Chunked(plan) => match open_chunks(tier, &name, &plan).await {
                    Ok(first) => FoundBody::Chunked {
                        name: name.clone(),
                        plan,
                        first,
                    },
                    Err(ChunksUnusable::Broken(e)) => {
                        TierCounters::bump(&counters.errors);
                        TierCounters::bump(&counters.misses);
                        tracing::warn!(tier = tier.name(), "incomplete large object: {e}");
                        tier.remove(&name);
                        tier.remove_chunks(&plan.keys(&name));
                        continue;
                    }
                    // A timeout or a lost connection says nothing about the object: a miss
                    // this time, and the object stays for the next lookup (and other nodes).
                    Err(ChunksUnusable::Unanswered(e)) => {
                        TierCounters::bump(&counters.errors);
                        TierCounters::bump(&counters.misses);
                        tracing::warn!(tier = tier.name(), "large object not read: {e}");
                        continue;
                    }
                },
            };
            // Opening a large object took two more round trips: a purge meanwhile found
            // nothing in L1 and only left its mark, which the check above came too early for.
            if let FoundBody::Chunked { plan, .. } = &body {
                if !self.apply_purge_marks(&name, &mut found.meta, found.written_at) {
                    TierCounters::bump(&counters.purged);
                    TierCounters::bump(&counters.misses);
                    tier.remove(&name);
                    tier.remove_chunks(&plan.keys(&name));
                    continue;
                }
            }
            TierCounters::bump(&counters.hits);
            return Some(Found {
                meta: found.meta,
                tier,
                body,
                name,
                written_at: found.written_at,
            });
        }
        None
    }

    /// Applies the purges recorded since `found` was written: a soft purge's mark expires it
    /// (stale from then on, or from now when the mark is dated ahead: a node whose clock is
    /// ahead dates its soft purges up to a minute in this node's future, and the copies read
    /// from L2 were served fresh until then, while L1's were stale at once); false when a
    /// purge removed it.
    fn apply_purge_marks(&self, name: &TierKey, meta: &mut CacheMeta, written_at: u64) -> bool {
        let tags = super::super::tags::parse(meta.headers());
        match self.purges.verdict(name, &tags, written_at) {
            Verdict::Keep => true,
            Verdict::Expire(at) => {
                meta.expire_at(record::from_ns(at.min(record::now_ns())));
                true
            }
            Verdict::Gone => false,
        }
    }

    /// The stored meta for `key` and the tier holding it (`l1` or an L2 tier's name), without
    /// promoting or counting anything: for `cachet explain`.
    pub async fn peek(&self, key: &CacheKey) -> Result<Option<(CacheMeta, &'static str)>> {
        let span = pingora_cache::trace::Span::inactive();
        if let Some((meta, _)) = self.l1.lookup(key, &span.handle()).await? {
            return Ok(Some((meta, "l1")));
        }
        let name = TierKey::of(key);
        for tier in self.tiers.iter() {
            let Ok(Some(value)) = tier.get(&name).await else {
                continue;
            };
            let Ok(mut found) = record::decode(value, &name, tier.key_check()) else {
                continue;
            };
            // As a lookup would find it: a soft purge's mark makes the object stale.
            if !self.apply_purge_marks(&name, &mut found.meta, found.written_at) {
                continue;
            }
            return Ok(Some((found.meta, tier.name())));
        }
        Ok(None)
    }

    /// Marks a pingora purge target in the L2 tiers. A tier that cannot record it has counted
    /// and logged that: pingora's purge has no way to report it.
    fn mark_target(&self, key: &CompactCacheKey, soft: bool) {
        if self.tiers.is_empty() {
            return;
        }
        let _ = self.publish(Purge {
            target: Target::Key(TierKey::of_compact(key).to_hex()),
            at: record::now_ns(),
            soft,
        });
    }
}

#[async_trait]
impl Storage for TieredStorage {
    async fn lookup(&'static self, key: &CacheKey, trace: &SpanHandle) -> Result<Hit> {
        let hit = self.l1.lookup(key, trace).await?;
        if self.tiers.is_empty() {
            return Ok(hit);
        }
        if hit.is_some() {
            self.l1_hits.fetch_add(1, Relaxed);
            return Ok(hit);
        }
        // The lean hit path may have read L2 for this request already.
        let (found, stamp) = match TierReadAhead::take_for(key) {
            // Read before the lean path gave up: a purge since then must still remove it (or
            // expire it), or the copy would be promoted into an L1 already purged.
            Some((read_ahead, stamp)) => {
                let found = read_ahead.and_then(|mut found| {
                    let kept =
                        self.apply_purge_marks(&found.name, &mut found.meta, found.written_at);
                    kept.then_some(found)
                });
                (found, stamp)
            }
            None => {
                let stamp = self.l1.stamp_key(key);
                (self.find_in_tiers(key).await, stamp)
            }
        };
        let Some(Found {
            meta, tier, body, ..
        }) = found
        else {
            return Ok(None);
        };
        let hit = match body {
            FoundBody::Whole(body) => {
                if let Ok(stored) = StoredMeta::of_decoded(&meta) {
                    self.l1
                        .promote_stored(key, Arc::new(stored), body.clone(), &stamp);
                }
                TierHit::new(body, tier.name())
            }
            FoundBody::Chunked { name, plan, first } => {
                // Promoted once served whole, if L1 would take it at all.
                let promotion = Promotion::new(self.l1, key, &meta, plan.body_len, stamp);
                let stream = ChunkStream::new(tier.clone(), name, plan, first, promotion);
                TierHit::chunked(stream, tier.name())
            }
        };
        Ok(Some((meta, Box::new(hit))))
    }

    async fn lookup_streaming_write(
        &'static self,
        key: &CacheKey,
        streaming_write_tag: Option<&[u8]>,
        trace: &SpanHandle,
    ) -> Result<Hit> {
        // A tagged lookup follows one of L1's own writes.
        if streaming_write_tag.is_some() {
            return self
                .l1
                .lookup_streaming_write(key, streaming_write_tag, trace)
                .await;
        }
        self.lookup(key, trace).await
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        trace: &SpanHandle,
    ) -> Result<MissHandler> {
        if self.tiers.is_empty() {
            return self.l1.get_miss_handler(key, meta, trace).await;
        }
        // Watched from before L1's write is registered, so a purge from then on is seen when
        // the fill finishes; one since the fetch began has cancelled L1's write, and keeps the
        // copy out of the tiers as well (it is dated after that purge's mark).
        let watch = self.l1.watch_key(key);
        let l1_write = self.l1.start_write(key, meta)?;
        let purged = self.l1.purged_while_filling(key);
        let miss: Box<dyn HandleMiss + Send + Sync> = Box::new(TieredMiss::new(
            Box::new(l1_write),
            self,
            TierKey::of(key),
            watch,
            purged,
            meta,
            self.l1.max_object_size(&key.user_tag),
        ));
        Ok(miss)
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        purge_type: PurgeType,
        trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        if let Some(key) = target_key(&target) {
            self.mark_target(key, false);
        }
        self.l1.purge(target, purge_type, trace).await
    }

    async fn expire(
        &'static self,
        target: PurgeTarget<'_>,
        trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        if let Some(key) = target_key(&target) {
            self.mark_target(key, true);
        }
        self.l1.expire(target, trace).await
    }

    /// Updates L1 and queues the revalidated object for the L2 tiers (a fresh write there, so
    /// purge marks older than the revalidation no longer apply to it): L1's copy, or when L1
    /// holds none, the L2 copy that was revalidated.
    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let revalidated = self.l1.revalidated(key, meta)?;
        if !self.tiers.is_empty() {
            match revalidated {
                Revalidated::Updated => self.rewrite(key, record::written_at(meta)),
                Revalidated::Vanished => self.refresh_in_tiers(key, meta),
                // L1's newer object goes to the tiers from its own fill; a purged one stays
                // as the purge left it.
                Revalidated::Replaced | Revalidated::Purged => {}
            }
        }
        Ok(revalidated == Revalidated::Updated)
    }

    fn support_streaming_partial_write(&self) -> bool {
        true
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

impl TieredStorage {
    /// Queues L1's current copy of `key` for the L2 tiers, dated `written_at` (when the
    /// revalidation's fetch started).
    fn rewrite(&self, key: &CacheKey, written_at: u64) {
        let Some((meta, body)) = self.l1.stored(key) else {
            return;
        };
        let Some(mut job) = Job::revalidated(key, &meta) else {
            return;
        };
        job.written_at = written_at;
        if body.len() > self.max_value() {
            return;
        }
        job.body = vec![body];
        self.submit(job);
    }
}

/// Why a large object's chunks cannot serve this lookup.
enum ChunksUnusable {
    /// A chunk is missing or damaged: the object is removed.
    Broken(String),
    /// The tier did not answer in time or failed: the object may be whole and is kept.
    Unanswered(String),
}

/// Checks that every chunk of `plan` is stored and that the first one checks out; returns
/// chunk 0's verified data (the stream serves it as is and verifies every later chunk).
async fn open_chunks(
    tier: &Arc<dyn Tier>,
    name: &TierKey,
    plan: &Plan,
) -> Result<Bytes, ChunksUnusable> {
    let all = tier.contains_all(&plan.keys(name)).await;
    if !all.map_err(ChunksUnusable::Unanswered)? {
        return Err(ChunksUnusable::Broken("a chunk is missing".into()));
    }
    let first = tier.get_first_chunk(&plan.key(name, 0)).await;
    let Some(value) = first.map_err(ChunksUnusable::Unanswered)? else {
        return Err(ChunksUnusable::Broken("chunk 0 is missing".into()));
    };
    plan.verify(0, &value).map_err(ChunksUnusable::Broken)
}

fn target_key<'a>(target: &PurgeTarget<'a>) -> Option<&'a CompactCacheKey> {
    match *target {
        PurgeTarget::Active(key) | PurgeTarget::Exact(CacheEntryKey::KeyOnly(key)) => Some(key),
        PurgeTarget::Exact(CacheEntryKey::Identified { .. }) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::chunks;
    use super::super::LeanLookup;
    use super::*;
    use crate::storage::MemoryStorage;
    use pingora::http::ResponseHeader;
    use std::time::{Duration, SystemTime};

    /// Storage with a disk tier in `dir`, and that tier.
    fn on_disk(dir: &std::path::Path) -> (TieredStorage, Arc<dyn Tier>) {
        let l1: &'static MemoryStorage = Box::leak(Box::new(MemoryStorage::new(1 << 20, 1 << 20)));
        let config = super::super::disk_config(dir, 1 << 20, 8 << 20);
        let storage = TieredStorage::open(l1, &config).unwrap();
        let disk: Arc<dyn Tier> = storage.disk.clone().unwrap();
        (storage, disk)
    }

    /// A 200's meta, fresh from now for `lifetime`, serialized as tiers store it.
    fn fresh_for(lifetime: Duration) -> (Vec<u8>, Vec<u8>) {
        let now = SystemTime::now();
        let header = ResponseHeader::build(200, None).unwrap();
        let meta = CacheMeta::new(now + lifetime, now, 0, 0, header);
        meta.serialize().unwrap()
    }

    /// Objects an earlier version stored on disk, before records carried their key's digest
    /// ("CTR2" and the chunked "CTH1"), are hits after the upgrade: the disk tier vouches for
    /// the key of every value it returns.
    #[test]
    fn the_disk_tier_serves_objects_stored_before_the_key_digest() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, disk) = on_disk(dir.path());
        let (internal, header) = fresh_for(Duration::from_secs(60));
        let written_at = record::now_ns();
        let key = |path: &str| CacheKey::new(path.as_bytes().to_vec(), "site");
        let large: Bytes = (0..chunks::CHUNK_BYTES + 5).map(|i| i as u8).collect();

        let runtime = storage.runtime.as_ref().unwrap();
        runtime.block_on(async {
            let lifetime = Duration::from_secs(60);
            let whole = record::encode_unkeyed(&internal, &header, b"old body", written_at);
            let small = TierKey::of(&key("/small"));
            disk.put(&small, whole, lifetime).await.unwrap();

            let large_key = TierKey::of(&key("/large"));
            let mut hashes = Vec::new();
            for i in 0..chunks::count_for(large.len()) {
                let (chunk, hash) =
                    chunks::encode_chunk(std::slice::from_ref(&large), written_at, i);
                let name = large_key.chunk(written_at, i as u32);
                disk.put(&name, chunk, lifetime).await.unwrap();
                hashes.push(hash);
            }
            let head =
                chunks::encode_unkeyed_head(&internal, &header, large.len(), written_at, &hashes);
            disk.put(&large_key, head, lifetime).await.unwrap();

            let found = storage.find_in_tiers(&key("/small")).await;
            let Some(FoundBody::Whole(body)) = found.map(|f| f.body) else {
                panic!("the small object is a disk hit");
            };
            assert_eq!(&body[..], b"old body");
            let found = storage.find_in_tiers(&key("/large")).await;
            let Some(FoundBody::Chunked { plan, first, .. }) = found.map(|f| f.body) else {
                panic!("the large object is a disk hit");
            };
            assert_eq!(plan.body_len, large.len());
            assert_eq!(first, large.slice(..chunks::CHUNK_BYTES));
        });
        let stats = disk.stats();
        assert_eq!((stats.hits, stats.misses, stats.corrupt), (2, 0, 0));
    }

    /// A soft purge dated ahead (a node whose clock runs ahead made it) makes an L2 copy stale
    /// at once, as it does L1's: the copy was served fresh until the purge's date.
    #[test]
    fn a_soft_purge_dated_ahead_makes_an_l2_copy_stale_now() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, disk) = on_disk(dir.path());
        let (internal, header) = fresh_for(Duration::from_secs(300));
        let key = CacheKey::new(b"/soft".to_vec(), "site");
        let name = TierKey::of(&key);
        let runtime = storage.runtime.as_ref().unwrap();
        runtime.block_on(async {
            let record = record::encode_unkeyed(&internal, &header, b"body", record::now_ns());
            disk.put(&name, record, Duration::from_secs(300))
                .await
                .unwrap();
            storage.purges.record(&Purge {
                target: Target::Key(name.to_hex()),
                at: record::now_ns() + 30_000_000_000,
                soft: true,
            });
            let found = storage.find_in_tiers(&key).await.expect("the copy is kept");
            assert!(
                !found.meta.is_fresh(SystemTime::now()),
                "served fresh until the purge's date"
            );
        });
    }

    /// The lean path hands what it read from L2 to the full path, which may take it a while
    /// later: a purge in between must still remove the copy, not let it be promoted into the
    /// L1 the purge already cleared.
    #[test]
    fn a_purge_after_the_lean_paths_read_still_removes_the_copy() {
        let dir = tempfile::tempdir().unwrap();
        let l1: &'static MemoryStorage = Box::leak(Box::new(MemoryStorage::new(1 << 20, 1 << 20)));
        let config = super::super::disk_config(dir.path(), 1 << 20, 8 << 20);
        let storage: &'static TieredStorage =
            Box::leak(Box::new(TieredStorage::open(l1, &config).unwrap()));
        let disk: Arc<dyn Tier> = storage.disk.clone().unwrap();
        let now = SystemTime::now();
        // Stale: not a plain hit, so the lean path leaves it to the full path.
        let header = ResponseHeader::build(200, None).unwrap();
        let stale = CacheMeta::new(
            now - Duration::from_secs(1),
            now - Duration::from_secs(61),
            0,
            0,
            header,
        );
        let (internal, header) = stale.serialize().unwrap();
        let key = CacheKey::new(b"/purged".to_vec(), "site");
        let span = pingora_cache::trace::Span::inactive();
        let runtime = storage.runtime.as_ref().unwrap();
        runtime.block_on(async {
            let record = record::encode_unkeyed(&internal, &header, b"body", record::now_ns());
            let name = TierKey::of(&key);
            disk.put(&name, record, Duration::from_secs(60))
                .await
                .unwrap();
            let LeanLookup::FullPath(Some(read_ahead)) = storage.lean_lookup(&key, now).await
            else {
                panic!("the stale disk copy goes to the full path with the read");
            };
            storage.mark_target(&key.to_compact(), false);
            let mut looked_up = key.clone();
            read_ahead.attach(&mut looked_up);
            let hit = storage.lookup(&looked_up, &span.handle()).await.unwrap();
            assert!(hit.is_none(), "a purged copy was handed to the full path");
        });
    }
}
