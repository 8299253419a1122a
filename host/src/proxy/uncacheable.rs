//! URLs whose last response could not be stored (hit-for-miss): their requests skip the cache
//! lookup and the cache lock and go to the origin at once, instead of queueing behind a fill
//! that will never be stored.
//!
//! pingora-cache's `Predictor` keeps the marks: a bounded LRU of primary-key hashes (the
//! primary key holds the tenant, so tenants never share a mark). pingora consults it before the
//! lookup, marks a key when `response_cache_filter` answers `Uncacheable` for a request that was
//! not already bypassing, and clears the mark (and fills the cache for a GET 200) when a bypassed
//! request's response turns out cacheable.

use pingora_cache::predictor::Predictor;
use pingora_cache::NoCacheReason;

const SHARDS: usize = 16;

pub type UncacheableKeys = Predictor<SHARDS>;

/// The no-cache reason of a refusal that says nothing about the next request for the URL
/// (credentials on this request, a plugin fault, a partial or not-modified answer): pingora
/// releases the cache lock as for any uncacheable response, but the URL is not marked.
const THIS_REQUEST_ONLY: &str = "this request only";

/// A refusal that marks the URL: the next requests skip the cache lock.
pub fn marks_url() -> NoCacheReason {
    NoCacheReason::OriginNotCache
}

/// A refusal that leaves the URL's mark as it was.
pub fn this_request_only() -> NoCacheReason {
    NoCacheReason::Custom(THIS_REQUEST_ONLY)
}

/// The record, remembering about `capacity` URLs; None when `capacity` is 0 (off).
/// It lives as long as the process, as pingora requires.
pub(crate) fn remember_uncacheable(capacity: usize) -> Option<&'static UncacheableKeys> {
    if capacity == 0 {
        return None;
    }
    let predictor = Predictor::new(
        capacity.div_ceil(SHARDS),
        Some(|reason| reason == THIS_REQUEST_ONLY),
    );
    Some(Box::leak(Box::new(predictor)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_cache::predictor::CacheablePredictor;
    use pingora_cache::CacheKey;

    #[test]
    fn only_url_level_refusals_are_remembered_until_a_cacheable_answer() {
        let keys = remember_uncacheable(64).expect("on");
        let key = CacheKey::new(b"\x01a/page".to_vec(), "a");
        keys.mark_uncacheable(&key, this_request_only());
        assert!(keys.cacheable_prediction(&key), "request-specific refusal");
        keys.mark_uncacheable(&key, marks_url());
        assert!(!keys.cacheable_prediction(&key));
        let other_tenant = CacheKey::new(b"\x01b/page".to_vec(), "b");
        assert!(keys.cacheable_prediction(&other_tenant));
        keys.mark_cacheable(&key);
        assert!(keys.cacheable_prediction(&key));
    }

    #[test]
    fn zero_capacity_is_off() {
        assert!(remember_uncacheable(0).is_none());
    }
}
