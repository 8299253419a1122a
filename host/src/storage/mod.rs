// TEMPORARY compile placeholder until the real storage module lands (same session).
use async_trait::async_trait;
use pingora_cache::key::CacheKey;
use pingora_cache::meta::CacheMeta;
use pingora_cache::storage::{
    HitHandler, MissHandler, PurgeOutcome, PurgeTarget, PurgeType, Storage,
};
use pingora_cache::trace::SpanHandle;
use pingora_cache::MemCache;
use pingora_error::Result;

pub struct StorageStats {
    pub budget_bytes: usize,
    pub stored_bytes: usize,
    pub objects: usize,
    pub evictions: u64,
    pub inserts: u64,
    pub rejected_oversize: u64,
}

pub struct MemoryStorage {
    inner: &'static MemCache,
    budget: usize,
}
impl MemoryStorage {
    pub fn new(budget: usize, _max_object: usize) -> Self {
        Self {
            inner: Box::leak(Box::new(MemCache::new())),
            budget,
        }
    }
    pub fn stats(&self) -> StorageStats {
        StorageStats {
            budget_bytes: self.budget,
            stored_bytes: 0,
            objects: 0,
            evictions: 0,
            inserts: 0,
            rejected_oversize: 0,
        }
    }
}
#[async_trait]
impl Storage for MemoryStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        self.inner.lookup(key, trace).await
    }
    async fn lookup_streaming_write(
        &'static self,
        key: &CacheKey,
        tag: Option<&[u8]>,
        trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        self.inner.lookup_streaming_write(key, tag, trace).await
    }
    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        trace: &SpanHandle,
    ) -> Result<MissHandler> {
        self.inner.get_miss_handler(key, meta, trace).await
    }
    async fn purge(
        &'static self,
        t: PurgeTarget<'_>,
        p: PurgeType,
        trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        self.inner.purge(t, p, trace).await
    }
    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        trace: &SpanHandle,
    ) -> Result<bool> {
        self.inner.update_meta(key, meta, trace).await
    }
    fn support_streaming_partial_write(&self) -> bool {
        true
    }
    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync + 'static) {
        self
    }
}
