//! pingora-cache's `Storage` trait for [`TieredStorage`].

use super::hit::TierHit;
use super::key::TierKey;
use super::miss::TieredMiss;
use super::purges::{Purge, Target, Verdict};
use super::record::{self, Record};
use super::tier::{Tier, TierCounters};
use super::TieredStorage;
use async_trait::async_trait;
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

type Hit = Option<(CacheMeta, HitHandler)>;

impl TieredStorage {
    /// The first L2 copy of `key` the purge marks let through, with the tier holding it.
    /// Corrupt copies and copies a purge removed are deleted from their tier on the way.
    async fn find_in_tiers(&self, key: &CacheKey) -> Option<(Record, &Arc<dyn Tier>)> {
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
                    tracing::debug!(tier = tier.name(), "tier read failed: {e}");
                    continue;
                }
            };
            let mut found = match record::decode(value) {
                Ok(found) => found,
                Err(e) => {
                    TierCounters::bump(&counters.corrupt);
                    TierCounters::bump(&counters.errors);
                    TierCounters::bump(&counters.misses);
                    tracing::warn!(tier = tier.name(), "corrupt object removed: {e}");
                    tier.remove(&name);
                    continue;
                }
            };
            let tags = super::super::tags::parse(found.meta.headers());
            match self.purges.verdict(&name, &tags, found.written_at) {
                Verdict::Keep => {}
                Verdict::Expire(at) => found.meta.expire_at(record::from_ns(at)),
                Verdict::Gone => {
                    TierCounters::bump(&counters.purged);
                    TierCounters::bump(&counters.misses);
                    tier.remove(&name);
                    continue;
                }
            }
            TierCounters::bump(&counters.hits);
            return Some((found, tier));
        }
        None
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
            let Ok(found) = record::decode(value) else {
                continue;
            };
            let tags = super::super::tags::parse(found.meta.headers());
            if self.purges.verdict(&name, &tags, found.written_at) != Verdict::Gone {
                return Ok(Some((found.meta, tier.name())));
            }
        }
        Ok(None)
    }

    /// Marks a pingora purge target in the L2 tiers.
    fn mark_target(&self, key: &CompactCacheKey, soft: bool) {
        if self.tiers.is_empty() {
            return;
        }
        self.publish(Purge {
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
        let Some((found, tier)) = self.find_in_tiers(key).await else {
            return Ok(None);
        };
        self.l1.promote(key, &found.meta, found.body.clone());
        Ok(Some((
            found.meta,
            Box::new(TierHit::new(found.body, tier.name())),
        )))
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
        let l1 = self.l1.get_miss_handler(key, meta, trace).await?;
        if self.tiers.is_empty() {
            return Ok(l1);
        }
        let miss: Box<dyn HandleMiss + Send + Sync> =
            Box::new(TieredMiss::new(l1, self, TierKey::of(key), meta));
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
    /// purge marks older than the revalidation no longer apply to it).
    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        trace: &SpanHandle,
    ) -> Result<bool> {
        let updated = self.l1.update_meta(key, meta, trace).await?;
        if updated && !self.tiers.is_empty() {
            self.rewrite(key);
        }
        Ok(updated)
    }

    fn support_streaming_partial_write(&self) -> bool {
        true
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

impl TieredStorage {
    /// Queues L1's current copy of `key` for the L2 tiers.
    fn rewrite(&self, key: &CacheKey) {
        let Some((meta, body)) = self.l1.stored(key) else {
            return;
        };
        let Some(lifetime) = record::lifetime(&meta) else {
            return;
        };
        let written_at = record::now_ns();
        if body.len() > self.max_value() {
            return;
        }
        let Some(value) = record::encode(&meta, &[body], written_at) else {
            return;
        };
        self.submit(super::writer::Job {
            key: TierKey::of(key),
            value,
            lifetime,
            written_at,
            tags: super::super::tags::parse(meta.headers()),
        });
    }
}

fn target_key<'a>(target: &PurgeTarget<'a>) -> Option<&'a CompactCacheKey> {
    match *target {
        PurgeTarget::Active(key) | PurgeTarget::Exact(CacheEntryKey::KeyOnly(key)) => Some(key),
        PurgeTarget::Exact(CacheEntryKey::Identified { .. }) => None,
    }
}
