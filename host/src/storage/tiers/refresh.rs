//! Revalidation of an object only the L2 tiers hold (L1 never took it, evicted it, or this
//! node restarted): the origin's 304 refreshes the meta, and the L2 copy is written again
//! with it. Otherwise the copy stays stale in L2 and every request for it asks the origin
//! again, until the object is fetched whole.

use super::chunks::Plan;
use super::key::TierKey;
use super::storage::FoundBody;
use super::tier::Tier;
use super::writer::Job;
use super::TieredStorage;
use bytes::Bytes;
use pingora_cache::{CacheKey, CacheMeta};
use std::sync::Arc;

impl TieredStorage {
    /// Queues `key`'s L2 copy, read back from the tier holding it, for the L2 tiers with the
    /// revalidated `meta`. The read happens off the client's path, on the tiers' runtime; a
    /// body that cannot be read whole, or that L1's budget for bodies on their way in cannot
    /// cover while it is held, is left as it is (stale: the next request revalidates it).
    pub(super) fn refresh_in_tiers(&'static self, key: &CacheKey, meta: &CacheMeta) {
        let Some(runtime) = &self.runtime else {
            return;
        };
        let Some(mut job) = Job::revalidated(key, meta) else {
            return;
        };
        let key = key.clone();
        // pingora keeps the looked-up meta's `created` in the revalidated one; every fill
        // gets its own.
        let revalidated = meta.created();
        runtime.spawn(async move {
            let Some(found) = self.find_in_tiers(&key).await else {
                return;
            };
            // Another fill (this node's, or another node's through the shared tier) replaced
            // the copy while the origin was asked: the 304's headers (length, coding,
            // validators) describe the one before, not this body.
            if found.meta.created() != revalidated {
                return;
            }
            let body_len = match &found.body {
                FoundBody::Whole(body) => body.len(),
                FoundBody::Chunked { plan, .. } => plan.body_len,
            };
            if body_len > self.max_value() || !self.l1.reserve_filling(&key.user_tag, body_len) {
                return;
            }
            let body = match found.body {
                FoundBody::Whole(body) => Some(vec![body]),
                FoundBody::Chunked { name, plan, first } => {
                    read_chunks(found.tier, &name, &plan, first).await
                }
            };
            if let Some(body) = body {
                job.body = body;
                self.submit(job);
            }
            // The queue has its own bound for what it holds.
            self.l1.release_filling(&key.user_tag, body_len);
        });
    }
}

/// Every chunk of a chunked body, each checked against its head; `None` if one is missing,
/// damaged or not answered (a hit reading it would remove a damaged object: this read is
/// only a refresh, and leaves that to the next hit).
async fn read_chunks(
    tier: &Arc<dyn Tier>,
    name: &TierKey,
    plan: &Plan,
    first: Bytes,
) -> Option<Vec<Bytes>> {
    let mut parts = Vec::with_capacity(plan.count());
    parts.push(first);
    for index in 1..plan.count() {
        let value = tier.get_chunk(&plan.key(name, index)).await.ok()??;
        parts.push(plan.verify(index, &value).ok()?);
    }
    Some(parts)
}
