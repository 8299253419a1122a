//! Serving a chunked L2 body ([`super::chunks`]) as the client reads it: one chunk in hand
//! and the next one read ahead, so memory per hit is bounded by the chunk size and the first
//! bytes leave before the rest is read.
//!
//! A chunk that is missing, altered or from another write fails the read: pingora then
//! closes the connection without ending the body, so a client never takes a short body for
//! a complete one. The object is removed from the tier on the way (not when the tier merely
//! failed to answer: that says nothing about the object).

use super::super::{KeyWatch, MemoryStorage};
use super::chunks::Plan;
use super::key::TierKey;
use super::tier::{Tier, TierCounters};
use bytes::{Bytes, BytesMut};
use pingora_cache::{CacheKey, CacheMeta};
use pingora_error::{Error, ErrorType, Result};
use std::sync::Arc;
use tokio::task::JoinHandle;

type Read = JoinHandle<Result<Option<Bytes>, String>>;

/// A copy to put into L1 once the whole body has gone out in order.
pub(crate) struct Promotion {
    l1: &'static MemoryStorage,
    key: CacheKey,
    /// pingora's serialization of the meta (`CacheMeta` is not `Clone`).
    meta: (Vec<u8>, Vec<u8>),
    parts: Vec<Bytes>,
    /// Purges of the key from here on are remembered: one that comes while the body streams
    /// (seconds for a large one) finds nothing in L1 to remove, so the copy must not be put
    /// there afterwards, as a fill's response is not stored after a purge.
    watch: KeyWatch,
}

impl Promotion {
    pub(crate) fn new(
        l1: &'static MemoryStorage,
        key: &CacheKey,
        meta: &CacheMeta,
    ) -> Option<Self> {
        let meta = meta.serialize().ok()?;
        Some(Self {
            watch: l1.watch_key(key),
            l1,
            key: key.clone(),
            meta,
            parts: Vec::new(),
        })
    }
}

pub(crate) struct ChunkStream {
    tier: Arc<dyn Tier>,
    key: TierKey,
    plan: Plan,
    /// Chunk 0's data, read and verified during the lookup (before anything was sent).
    first: Option<Bytes>,
    /// The next byte to send and the end of the range (exclusive).
    pos: usize,
    end: usize,
    /// A read of chunk `.0` under way.
    ahead: Option<(usize, Read)>,
    /// Set while the body is served whole and in order, and fits L1.
    promotion: Option<Promotion>,
}

impl ChunkStream {
    pub(crate) fn new(
        tier: Arc<dyn Tier>,
        key: TierKey,
        plan: Plan,
        first: Bytes,
        promotion: Option<Promotion>,
    ) -> Self {
        let end = plan.body_len;
        Self {
            tier,
            key,
            plan,
            first: Some(first),
            pos: 0,
            end,
            ahead: None,
            promotion,
        }
    }

    pub(crate) async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.pos >= self.end {
            self.promote();
            return Ok(None);
        }
        let index = self.pos / self.plan.chunk_bytes;
        let chunk = self.chunk(index).await?;
        let base = index * self.plan.chunk_bytes;
        let (from, to) = (self.pos - base, (self.end - base).min(chunk.len()));
        if let Some(promotion) = &mut self.promotion {
            promotion.parts.push(chunk.clone());
        }
        self.pos = base + to;
        if self.pos < self.end {
            self.read_ahead(index + 1);
        }
        Ok(Some(chunk.slice(from..to)))
    }

    /// `end` is exclusive and clamped, as for an L1 hit. A range is not promoted.
    pub(crate) fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let len = self.plan.body_len;
        let end = end.map_or(len, |end| end.min(len));
        if start >= end {
            return Error::e_explain(
                ErrorType::InternalError,
                format!("seek {start}..{end} outside a body of {len} bytes"),
            );
        }
        (self.pos, self.end) = (start, end);
        self.promotion = None;
        Ok(())
    }

    /// Chunk `index`, checked against the head; a failure removes the object.
    async fn chunk(&mut self, index: usize) -> Result<Bytes> {
        if index == 0 {
            if let Some(first) = self.first.take() {
                return Ok(first);
            }
        }
        let ahead = match self.ahead.take() {
            Some((at, read)) if at == index => Some(read),
            Some((_, read)) => {
                read.abort();
                None
            }
            None => None,
        };
        let read = match ahead {
            Some(read) => read
                .await
                .unwrap_or_else(|e| Err(format!("chunk read task: {e}"))),
            None => self.tier.get_chunk(&self.plan.key(&self.key, index)).await,
        };
        match read {
            Ok(Some(value)) => self
                .plan
                .verify(index, &value)
                .or_else(|e| self.fail(e, Removal::Remove)),
            Ok(None) => self.fail(format!("chunk {index} is gone"), Removal::Remove),
            // The tier did not answer (a timeout, a lost connection): the object may well be
            // whole, and removing it would take it from every node sharing the tier.
            Err(e) => self.fail(format!("chunk {index}: {e}"), Removal::Keep),
        }
    }

    fn read_ahead(&mut self, index: usize) {
        if index >= self.plan.count() || self.ahead.as_ref().is_some_and(|(at, _)| *at == index) {
            return;
        }
        let (tier, name) = (self.tier.clone(), self.plan.key(&self.key, index));
        let read = tokio::spawn(async move { tier.get_chunk(&name).await });
        if let Some((_, stale)) = self.ahead.replace((index, read)) {
            stale.abort();
        }
    }

    /// Counts and logs a chunk that failed, removes the object when the chunk is known to be
    /// gone or damaged, and fails the response.
    fn fail(&mut self, why: String, removal: Removal) -> Result<Bytes> {
        let counters = self.tier.counters();
        TierCounters::bump(&counters.errors);
        match removal {
            Removal::Remove => {
                TierCounters::bump(&counters.corrupt);
                tracing::warn!(
                    tier = self.tier.name(),
                    "large object aborted mid-response and removed: {why}"
                );
                self.tier.remove(&self.key);
                self.tier.remove_chunks(&self.plan.keys(&self.key));
            }
            Removal::Keep => tracing::warn!(
                tier = self.tier.name(),
                "large object aborted mid-response (the tier did not answer; kept): {why}"
            ),
        }
        self.promotion = None;
        Error::e_explain(
            ErrorType::InternalError,
            format!("L2 body incomplete: {why}"),
        )
    }

    /// Puts the body into L1 once every chunk went out in order.
    fn promote(&mut self) {
        let Some(promotion) = self.promotion.take() else {
            return;
        };
        if promotion.watch.purged() {
            return;
        }
        let mut body = BytesMut::with_capacity(self.plan.body_len);
        for part in &promotion.parts {
            body.extend_from_slice(part);
        }
        let (internal, header) = &promotion.meta;
        if let (true, Ok(meta)) = (
            body.len() == self.plan.body_len,
            CacheMeta::deserialize(internal, header),
        ) {
            promotion.l1.promote(&promotion.key, &meta, body.freeze());
        }
    }
}

/// What a failed chunk says about the stored object.
enum Removal {
    /// Missing or damaged: removed, so no later lookup finds it.
    Remove,
    /// The tier did not answer: the object is left as it is.
    Keep,
}

impl Drop for ChunkStream {
    fn drop(&mut self) {
        if let Some((_, read)) = self.ahead.take() {
            read.abort();
        }
    }
}
