//! The lean hit path across tiers. With nothing in L1 for a plain request, L2 is read here,
//! once: a whole copy that is fresh, does not vary and states its length is promoted into L1
//! and served as a plain hit, exactly as the full path would serve it. Anything else found
//! (stale, soft-purged, varying, chunked) or nothing at all goes to pingora-cache's full path
//! together with what was read ([`TierReadAhead`], carried in the cache key), so a miss costs
//! one L2 round trip, not two, and every tier counter counts the lookup once.

use super::super::meta::StoredMeta;
use super::super::plain_hit::{L1Lookup, PlainHit};
use super::super::PurgeStamp;
use super::storage::{Found, FoundBody};
use super::TieredStorage;
use parking_lot::Mutex;
use pingora_cache::CacheKey;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::SystemTime;

/// What the lean path found for a key.
pub enum LeanLookup {
    /// A copy to serve as it is, from L1 or promoted from an L2 tier.
    Hit(PlainHit),
    /// The full path serves this request; with the L2 read already made, when one was.
    FullPath(Option<TierReadAhead>),
}

/// An L2 read the lean path made for a key (`None` inside: no tier had a copy), handed to the
/// full path's first lookup of the same primary key.
#[derive(Clone)]
pub struct TierReadAhead(Arc<Mutex<Option<ReadAhead>>>);

/// The copy found (if any), and the purges of its key since before it was read.
type ReadAhead = (Option<Found<'static>>, PurgeStamp);

impl TierReadAhead {
    /// Rides along with the key pingora-cache looks up (its extensions are never stored).
    pub fn attach(self, key: &mut CacheKey) {
        key.extensions.insert(self);
    }

    /// The read, once, for a lookup of the primary key; a variant's lookup reads L2 itself.
    pub(super) fn take_for(key: &CacheKey) -> Option<ReadAhead> {
        if key.get_variance_key().is_some() {
            return None;
        }
        key.extensions.get::<Self>()?.0.lock().take()
    }
}

impl TieredStorage {
    /// The lean path's lookup: a plain L1 hit; else, when L1 holds nothing for the key, a plain
    /// copy from an L2 tier (promoted into L1); else the full path.
    pub async fn lean_lookup(&'static self, key: &CacheKey, now: SystemTime) -> LeanLookup {
        match self.l1.lean_lookup(key, now) {
            L1Lookup::Plain(hit) => {
                if !self.tiers.is_empty() {
                    self.l1_hits.fetch_add(1, Relaxed);
                }
                return LeanLookup::Hit(hit);
            }
            // A write in flight or a stale copy in L1 is the full path's to handle: it never
            // reaches L2 for them either.
            L1Lookup::Held => return LeanLookup::FullPath(None),
            L1Lookup::Absent if self.tiers.is_empty() => return LeanLookup::FullPath(None),
            L1Lookup::Absent => {}
        }
        let stamp = self.l1.stamp_key(key);
        let found = match self.find_in_tiers(key).await {
            Some(found) => match self.promote_plain(key, found, now, &stamp) {
                Ok(hit) => return LeanLookup::Hit(hit),
                Err(found) => Some(*found),
            },
            None => None,
        };
        LeanLookup::FullPath(Some(TierReadAhead(Arc::new(Mutex::new(Some((
            found, stamp,
        )))))))
    }

    /// A plain hit made of an L2 copy, promoted into L1 as the full path promotes (served even
    /// when L1 does not take it, as the full path serves it). A copy that is not a plain hit
    /// comes back whole, for the full path.
    fn promote_plain<'a>(
        &self,
        key: &CacheKey,
        mut found: Found<'a>,
        now: SystemTime,
        stamp: &PurgeStamp,
    ) -> Result<PlainHit, Box<Found<'a>>> {
        let FoundBody::Whole(body) = &found.body else {
            return Err(Box::new(found));
        };
        let body = body.clone();
        // The decoded meta is dropped once L1 has its own: its header moves there.
        let Ok(meta) = StoredMeta::taking_header(&mut found.meta) else {
            return Err(Box::new(found));
        };
        let meta = Arc::new(meta);
        let Some(hit) = PlainHit::of(meta.clone(), body.clone(), Some(found.tier.name()), now)
        else {
            *found.meta.response_header_mut() = meta.header().clone();
            return Err(Box::new(found));
        };
        self.l1.promote_stored(key, meta, body, stamp);
        Ok(hit)
    }
}
