//! Serving a chunked L2 body ([`super::chunks`]) as the client reads it: one chunk in hand
//! and the next one read ahead, so memory per hit is bounded by the chunk size and the first
//! bytes leave before the rest is read.
//!
//! A chunk that is missing, altered or from another write fails the read: pingora then
//! closes the connection without ending the body, so a client never takes a short body for
//! a complete one. The object is removed from the tier on the way (not when the tier merely
//! failed to answer: that says nothing about the object).

use super::super::{MemoryStorage, PurgeStamp};
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
    /// The key's purge counters from before the copy was read: a purge that comes while the
    /// body streams (seconds for a large one) finds nothing in L1 to remove, so the copy must
    /// not be put there afterwards, as a fill's response is not stored after a purge.
    stamp: PurgeStamp,
    /// The body's bytes, taken from L1's budget for bodies on their way in (the one fills
    /// take from) while the parts are held.
    reserved: usize,
}

impl Promotion {
    /// `None` when L1 would not keep a body of `body_len` for the key's tenant, or when the
    /// bodies on their way into L1 already hold its whole budget for them: every hit of a
    /// large object would otherwise hold a copy of it outside any bound until it ends. `None`
    /// too for a stale copy: it is being revalidated (or served stale meanwhile), and
    /// the revalidation writes the refreshed object to the L2 tiers, from where the next hit
    /// promotes it; promoted now, it would carry the stale meta into L1, revalidated again.
    pub(crate) fn new(
        l1: &'static MemoryStorage,
        key: &CacheKey,
        meta: &CacheMeta,
        body_len: usize,
        stamp: PurgeStamp,
    ) -> Option<Self> {
        let tenant = &key.user_tag;
        if !meta.is_fresh(std::time::SystemTime::now()) {
            return None;
        }
        if body_len > l1.max_object_size(tenant) || body_len > l1.budget_of(tenant) {
            return None;
        }
        let meta = meta.serialize().ok()?;
        if !l1.reserve_filling(tenant, body_len) {
            return None;
        }
        Some(Self {
            stamp,
            l1,
            key: key.clone(),
            meta,
            parts: Vec::new(),
            reserved: body_len,
        })
    }
}

impl Drop for Promotion {
    fn drop(&mut self) {
        self.l1.release_filling(&self.key.user_tag, self.reserved);
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
        let mut body = BytesMut::with_capacity(self.plan.body_len);
        for part in &promotion.parts {
            body.extend_from_slice(part);
        }
        let (internal, header) = &promotion.meta;
        if let (true, Ok(meta)) = (
            body.len() == self.plan.body_len,
            CacheMeta::deserialize(internal, header),
        ) {
            promotion
                .l1
                .promote(&promotion.key, &meta, body.freeze(), &promotion.stamp);
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

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::http::ResponseHeader;
    use std::time::{Duration, SystemTime};

    fn meta() -> CacheMeta {
        let header = ResponseHeader::build_no_case(200, None).unwrap();
        let now = SystemTime::now();
        CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, header)
    }

    #[test]
    fn promotions_in_flight_hold_no_more_than_l1s_budget_for_bodies_on_their_way() {
        let l1: &'static MemoryStorage = Box::leak(Box::new(MemoryStorage::new(64 << 20, 8 << 20)));
        l1.set_fill_budget(10 << 20);
        let (a, b) = (CacheKey::new("/a", "site"), CacheKey::new("/b", "site"));
        let first =
            Promotion::new(l1, &a, &meta(), 6 << 20, l1.stamp_key(&a)).expect("within the budget");
        assert_eq!(l1.filling_bytes(), 6 << 20);
        // A second 6 MiB body would go past 10 MiB: that hit streams without promotion.
        assert!(Promotion::new(l1, &b, &meta(), 6 << 20, l1.stamp_key(&b)).is_none());
        assert!(Promotion::new(l1, &b, &meta(), 4 << 20, l1.stamp_key(&b)).is_some());
        assert_eq!(
            l1.filling_bytes(),
            6 << 20,
            "a refused or ended one holds nothing"
        );
        drop(first);
        assert_eq!(l1.filling_bytes(), 0);
        assert!(Promotion::new(l1, &b, &meta(), 6 << 20, l1.stamp_key(&b)).is_some());
        // Over L1's object limit, or over the tenant's share: never promoted, nothing held.
        assert!(Promotion::new(l1, &b, &meta(), 9 << 20, l1.stamp_key(&b)).is_none());
        l1.set_partition_budget("site", Some(5 << 20));
        assert!(Promotion::new(l1, &b, &meta(), 6 << 20, l1.stamp_key(&b)).is_none());
        assert_eq!(l1.filling_bytes(), 0);
    }
}
