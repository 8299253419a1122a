//! A hit served from an L2 tier: a small body is in memory (promoted into L1 as well), a
//! large one streams chunk by chunk ([`super::chunked_hit`]); the handler names the tier so
//! the proxy can say which one answered.

use super::super::hit::CompleteHit;
use super::chunked_hit::ChunkStream;
use async_trait::async_trait;
use bytes::Bytes;
use pingora_cache::storage::{HandleHit, HitHandler, Storage};
use pingora_cache::trace::SpanHandle;
use pingora_cache::CacheKey;
use pingora_error::Result;
use std::any::Any;

pub(crate) struct TierHit {
    body: Source,
    tier: &'static str,
}

enum Source {
    Memory(CompleteHit),
    Chunks(Box<ChunkStream>),
}

impl TierHit {
    pub(crate) fn new(body: Bytes, tier: &'static str) -> Self {
        Self {
            body: Source::Memory(CompleteHit::new(body)),
            tier,
        }
    }

    pub(crate) fn chunked(body: ChunkStream, tier: &'static str) -> Self {
        Self {
            body: Source::Chunks(Box::new(body)),
            tier,
        }
    }
}

/// The L2 tier that answered, when `hit` came from one (`None` for an L1 hit).
pub fn tier_of(hit: &HitHandler) -> Option<&'static str> {
    hit.as_any().downcast_ref::<TierHit>().map(|hit| hit.tier)
}

#[async_trait]
impl HandleHit for TierHit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        match &mut self.body {
            Source::Memory(body) => body.read_body().await,
            Source::Chunks(body) => body.read_body().await,
        }
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        match &mut self.body {
            Source::Memory(body) => body.seek(start, end),
            Source::Chunks(body) => body.seek(start, end),
        }
    }

    // Promotion into L1 already counted the access.
    fn should_count_access(&self) -> bool {
        false
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}
