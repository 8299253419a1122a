//! The lookup behind the proxy's lean hit path: a complete stored object that is fresh now and
//! does not vary, handed out without building a `CacheMeta` or a hit handler.

use super::entry::SlotKey;
use super::index::Found;
use super::meta::StoredMeta;
use super::MemoryStorage;
use crate::proxy::HeadShape;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora_cache::CacheKey;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A stored object that may answer a plain request as it is.
pub struct PlainHit {
    meta: Arc<StoredMeta>,
    body: Bytes,
    /// The L2 tier it was read from (`None`: L1).
    tier: Option<&'static str>,
}

impl PlainHit {
    /// A copy that is fresh at `now`, does not vary and states its length, else `None`.
    pub(super) fn of(
        meta: Arc<StoredMeta>,
        body: Bytes,
        tier: Option<&'static str>,
        now: SystemTime,
    ) -> Option<Self> {
        // Same rule as pingora's `CacheMeta::is_fresh`.
        let fresh = meta.fresh_until() >= now;
        let hit = Self { meta, body, tier };
        (fresh && !hit.shape().varies && hit.is_framed()).then_some(hit)
    }

    /// `header` and `body` as an object stored now, fresh for a minute (for tests elsewhere).
    #[cfg(test)]
    pub(crate) fn for_test(header: ResponseHeader, body: Bytes) -> Self {
        let now = SystemTime::now();
        let meta = pingora_cache::CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, header);
        let meta = Arc::new(StoredMeta::new(&meta).expect("a storable head"));
        Self::of(meta, body, None, now).expect("a fresh, framed, invariant object")
    }

    /// The stored response header (fields as stored; the caller adds `Age` and the rest).
    pub fn header(&self) -> &ResponseHeader {
        self.meta.header()
    }

    /// The whole body (shared, not copied).
    pub fn body(&self) -> Bytes {
        self.body.clone()
    }

    /// The L2 tier that held the copy (`None` for L1).
    pub fn tier(&self) -> Option<&'static str> {
        self.tier
    }

    /// What the lean path reads of the stored header.
    pub(crate) fn shape(&self) -> &HeadShape {
        self.meta.shape()
    }

    /// Whether the stored header states the body's length, so the response goes out as
    /// stored with no re-framing (`Content-Length` equal to the body, no `Transfer-Encoding`).
    fn is_framed(&self) -> bool {
        self.shape().stated_length() == Some(self.body.len() as u64)
    }

    /// The `Age` to send: time since the object was filled or last revalidated.
    pub fn age(&self, now: SystemTime) -> Duration {
        now.duration_since(self.meta.epoch()).unwrap_or_default()
    }

    /// Freshness left, in whole seconds.
    pub fn ttl(&self, now: SystemTime) -> u64 {
        self.meta
            .fresh_until()
            .duration_since(now)
            .map_or(0, |left| left.as_secs())
    }
}

/// What L1 holds for a key, as the lean hit path sees it.
pub(crate) enum L1Lookup {
    /// A copy that may answer a plain request as it is.
    Plain(PlainHit),
    /// Something the full path must handle: a write in flight, a stale, varying or
    /// unframed copy.
    Held,
    /// Nothing stored or being written.
    Absent,
}

impl MemoryStorage {
    /// What L1 holds under `key`: a copy that can answer without pingora-cache's state machine
    /// (complete, as no write is in flight, which would be newer; and plain at `now`, see
    /// [`PlainHit`]), something else, or nothing. Counts an access for eviction exactly as a
    /// full lookup does.
    pub(crate) fn lean_lookup(&self, key: &CacheKey, now: SystemTime) -> L1Lookup {
        let slot = SlotKey::of(key);
        // An object refused here takes the full path, whose lookup counts it again: only its
        // place in the eviction order moves, as for any hit.
        let entry = match self.index.read().lookup(&key.user_tag, &slot) {
            Some(Found::Complete(entry)) => entry,
            Some(Found::Streaming(..)) => return L1Lookup::Held,
            None => return L1Lookup::Absent,
        };
        match PlainHit::of(entry.meta.clone(), entry.body.clone(), None, now) {
            Some(hit) => L1Lookup::Plain(hit),
            None => L1Lookup::Held,
        }
    }
}
