//! The lookup behind the proxy's lean hit path: a complete stored object that is fresh now and
//! does not vary, handed out without building a `CacheMeta` or a hit handler.

use super::entry::{Entry, SlotKey};
use super::index::Found;
use super::MemoryStorage;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora_cache::CacheKey;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A stored object that may answer a plain request as it is.
pub struct PlainHit {
    entry: Arc<Entry>,
}

impl PlainHit {
    /// The stored response header (fields as stored; the caller adds `Age` and the rest).
    pub fn header(&self) -> &ResponseHeader {
        self.entry.meta.header()
    }

    /// The whole body (shared, not copied).
    pub fn body(&self) -> Bytes {
        self.entry.body.clone()
    }

    /// The `Age` to send: time since the object was filled or last revalidated.
    pub fn age(&self, now: SystemTime) -> Duration {
        now.duration_since(self.entry.meta.epoch())
            .unwrap_or_default()
    }

    /// Freshness left, in whole seconds.
    pub fn ttl(&self, now: SystemTime) -> u64 {
        self.entry
            .meta
            .fresh_until()
            .duration_since(now)
            .map_or(0, |left| left.as_secs())
    }
}

impl MemoryStorage {
    /// The object stored under `key` if it can answer without pingora-cache's state machine:
    /// complete (no write in flight, which would be newer), fresh at `now`, and not varying.
    /// Counts an access for eviction exactly as a full lookup does.
    pub fn plain_hit(&self, key: &CacheKey, now: SystemTime) -> Option<PlainHit> {
        let slot = SlotKey::of(key);
        // An object refused here takes the full path, whose lookup counts it again: only its
        // place in the eviction order moves, as for any hit.
        let entry = match self.index.read().lookup(&key.user_tag, &slot)? {
            Found::Complete(entry) => entry,
            Found::Streaming(..) => return None,
        };
        // Same rule as pingora's `CacheMeta::is_fresh`.
        let fresh = entry.meta.fresh_until() >= now;
        (fresh && !entry.meta.varies()).then_some(PlainHit { entry })
    }
}
