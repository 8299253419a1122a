//! Tests for the storage, driven through pingora's `Storage` trait as the proxy drives it.

mod eviction;
mod hits;
mod purge;
mod streaming;

use super::MemoryStorage;
use pingora::http::ResponseHeader;
use pingora_cache::storage::{HitHandler, MissHandler, Storage};
use pingora_cache::trace::{Span, SpanHandle};
use pingora_cache::{CacheKey, CacheMeta};
use std::time::{Duration, SystemTime};

fn storage(budget: usize, max_object_size: usize) -> &'static MemoryStorage {
    Box::leak(Box::new(MemoryStorage::new(budget, max_object_size)))
}

fn span() -> SpanHandle {
    Span::inactive().handle()
}

fn key(path: &str, tenant: &str) -> CacheKey {
    CacheKey::new(path, tenant)
}

/// A meta fresh for an hour, with a few headers and serve-stale windows. Built without the
/// original name case, as the storage keeps it, so stored and served metas compare exactly.
fn meta() -> CacheMeta {
    let mut header = ResponseHeader::build_no_case(200, None).unwrap();
    header.append_header("content-type", "text/plain").unwrap();
    header.append_header("X-Mixed-Case", "kept").unwrap();
    let now = SystemTime::now();
    CacheMeta::new(now + Duration::from_secs(3600), now, 60, 120, header)
}

async fn miss(s: &'static MemoryStorage, key: &CacheKey) -> MissHandler {
    s.get_miss_handler(key, &meta(), &span()).await.unwrap()
}

/// Writes `body` in chunks of at most `chunk` bytes and finishes the write.
async fn put_chunked(s: &'static MemoryStorage, key: &CacheKey, body: &[u8], chunk: usize) {
    let mut handler = miss(s, key).await;
    for part in body.chunks(chunk.max(1)) {
        handler
            .write_body(part.to_vec().into(), false)
            .await
            .unwrap();
    }
    handler.write_body(Default::default(), true).await.unwrap();
    handler.finish().await.unwrap();
}

async fn put(s: &'static MemoryStorage, key: &CacheKey, body: &[u8]) {
    put_chunked(s, key, body, 4096).await;
}

async fn get(s: &'static MemoryStorage, key: &CacheKey) -> Option<(CacheMeta, HitHandler)> {
    s.lookup(key, &span()).await.unwrap()
}

/// Reads a hit to its end.
async fn read_all(hit: &mut HitHandler) -> pingora_error::Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(data) = hit.read_body().await? {
        body.extend_from_slice(&data);
    }
    Ok(body)
}

async fn body_of(s: &'static MemoryStorage, key: &CacheKey) -> Option<Vec<u8>> {
    let (_, mut hit) = get(s, key).await?;
    Some(read_all(&mut hit).await.unwrap())
}

/// Deterministic pseudo-random bytes.
fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}
