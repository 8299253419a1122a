//! URLs whose last response could not be stored (hit-for-miss): their requests skip the cache
//! lookup and the cache lock and go to the origin at once, instead of queueing behind a fill
//! that will never be stored.
//!
//! pingora-cache's `Predictor` keeps the marks: a bounded LRU of primary-key hashes, one per
//! tenant ([`TenantsUncacheable`]), so no tenant can push out another's marks. pingora consults it before the
//! lookup, marks a key when `response_cache_filter` answers `Uncacheable` for a request that was
//! not already bypassing, and clears the mark (and fills the cache for a GET 200) when a bypassed
//! request's response turns out cacheable.
//!
//! A plugin's `pass-for(N)` (Varnish's hit-for-pass) is a mark with an end: kept beside the
//! predictor's, in as many entries, and dropped when it expires or the key turns cacheable.

use parking_lot::{Mutex, RwLock};
use pingora_cache::key::CacheHashKey;
use pingora_cache::predictor::{CacheablePredictor, Predictor};
use pingora_cache::{CacheKey, NoCacheReason};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const SHARDS: usize = 16;

/// The keys that skip the cache: the predictor's marks and the plugins' timed passes.
pub struct UncacheableKeys {
    marks: Predictor<SHARDS>,
    passes: [Mutex<HashMap<u128, Instant>>; SHARDS],
    /// Set by the first pass: until a plugin asks for one, lookups take no lock.
    any_pass: AtomicBool,
    shard_capacity: usize,
}

impl UncacheableKeys {
    fn clear_passes(&self) {
        for shard in &self.passes {
            shard.lock().clear();
        }
        self.any_pass.store(false, Ordering::Relaxed);
    }

    fn shard(&self, hash: u128) -> &Mutex<HashMap<u128, Instant>> {
        &self.passes[(hash % SHARDS as u128) as usize]
    }

    /// Requests for `key` go straight to the origin for `duration`. When the shard is full of
    /// live passes the new one is not kept: the bound holds, the key merely waits on the lock.
    pub fn pass_for(&self, key: &CacheKey, duration: Duration) {
        let hash = u128::from_be_bytes(key.primary_bin());
        let now = Instant::now();
        self.any_pass.store(true, Ordering::Relaxed);
        let mut passes = self.shard(hash).lock();
        if passes.len() >= self.shard_capacity && !passes.contains_key(&hash) {
            passes.retain(|_, until| *until > now);
            if passes.len() >= self.shard_capacity {
                return;
            }
        }
        passes.insert(hash, now + duration);
    }

    fn passing(&self, key: &CacheKey) -> bool {
        if !self.any_pass.load(Ordering::Relaxed) {
            return false;
        }
        let hash = u128::from_be_bytes(key.primary_bin());
        let mut passes = self.shard(hash).lock();
        match passes.get(&hash) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                passes.remove(&hash);
                false
            }
            None => false,
        }
    }
}

impl CacheablePredictor for UncacheableKeys {
    fn cacheable_prediction(&self, key: &CacheKey) -> bool {
        !self.passing(key) && self.marks.cacheable_prediction(key)
    }

    fn predicted_uncacheable_reason(&self, key: &CacheKey) -> Option<NoCacheReason> {
        if self.passing(key) {
            return Some(this_request_only());
        }
        self.marks.predicted_uncacheable_reason(key)
    }

    fn mark_cacheable(&self, key: &CacheKey) -> bool {
        let hash = u128::from_be_bytes(key.primary_bin());
        let passed = self.shard(hash).lock().remove(&hash).is_some();
        self.marks.mark_cacheable(key) || passed
    }

    fn mark_uncacheable(&self, key: &CacheKey, reason: NoCacheReason) -> Option<bool> {
        self.marks.mark_uncacheable(key, reason)
    }
}

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

/// Each tenant's record of keys that skip the cache. One table for all would let one tenant
/// (its clients, or its plugin's `pass-for`) fill it and push out every other tenant's marks,
/// sending their misses back to queueing on the cache lock.
pub struct TenantsUncacheable {
    capacity: usize,
    by_tenant: RwLock<HashMap<Box<str>, &'static UncacheableKeys>>,
    /// Records of tenants gone in a reload, for the next new tenant name.
    spare: Mutex<Vec<&'static UncacheableKeys>>,
}

impl TenantsUncacheable {
    /// `tenant`'s record, made on its first request (or a gone tenant's, reused). Records
    /// live as long as the process, as pingora requires of a predictor.
    pub fn of(&self, tenant: &str) -> &'static UncacheableKeys {
        if let Some(keys) = self.by_tenant.read().get(tenant) {
            return keys;
        }
        let mut by_tenant = self.by_tenant.write();
        by_tenant.entry(tenant.into()).or_insert_with(|| {
            self.spare
                .lock()
                .pop()
                .unwrap_or_else(|| new_record(self.capacity))
        })
    }

    /// Gives up the record of a tenant gone in a reload, so that renaming tenants reload
    /// after reload does not make a new one each time. The next tenant to take it finds the
    /// old marks, which name keys of the gone tenant (the key holds the tenant) and so can
    /// never match its own: they only age out of the table.
    pub fn retire(&self, tenant: &str) {
        if let Some(record) = self.by_tenant.write().remove(tenant) {
            // Passes, unlike marks, do not age out while they run (a plugin may ask for
            // years): left in, they would fill the next tenant's shards and its own passes
            // would be dropped.
            record.clear_passes();
            self.spare.lock().push(record);
        }
    }
}

/// The records, each remembering about `capacity` URLs of its tenant; None when `capacity`
/// is 0 (off).
pub(crate) fn remember_uncacheable(capacity: usize) -> Option<&'static TenantsUncacheable> {
    if capacity == 0 {
        return None;
    }
    Some(Box::leak(Box::new(TenantsUncacheable {
        capacity,
        by_tenant: RwLock::new(HashMap::new()),
        spare: Mutex::new(Vec::new()),
    })))
}

fn new_record(capacity: usize) -> &'static UncacheableKeys {
    let shard_capacity = capacity.div_ceil(SHARDS);
    let marks = Predictor::new(shard_capacity, Some(|reason| reason == THIS_REQUEST_ONLY));
    Box::leak(Box::new(UncacheableKeys {
        marks,
        passes: Default::default(),
        any_pass: AtomicBool::new(false),
        shard_capacity,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Renaming tenants reload after reload reuses the gone tenants' records (each was a
    /// table of its own, leaked for good: ~240 KiB per name at the default size).
    #[test]
    fn a_gone_tenants_record_goes_to_the_next_new_tenant() {
        let tenants = remember_uncacheable(64).expect("on");
        let first = tenants.of("a") as *const UncacheableKeys;
        tenants.retire("a");
        assert!(std::ptr::eq(tenants.of("b"), first));
        assert!(!std::ptr::eq(tenants.of("c"), first));
        // A name served again after it went gets a record again.
        assert!(!std::ptr::eq(tenants.of("a"), first));
    }

    /// A gone tenant's live passes (a plugin may ask for years) do not go with its record:
    /// they would fill the next tenant's shards, and that tenant's own passes be dropped.
    #[test]
    fn a_record_passed_on_has_room_for_the_next_tenants_passes() {
        let tenants = remember_uncacheable(16).expect("on");
        for i in 0..1000u32 {
            let key = CacheKey::new(i.to_be_bytes().to_vec(), "gone");
            tenants
                .of("gone")
                .pass_for(&key, Duration::from_secs(u32::MAX.into()));
        }
        tenants.retire("gone");
        let next = tenants.of("next");
        let key = CacheKey::new(b"\x01next/account".to_vec(), "next");
        next.pass_for(&key, Duration::from_secs(60));
        assert!(
            !next.cacheable_prediction(&key),
            "the new tenant's pass was dropped"
        );
    }

    #[test]
    fn only_url_level_refusals_are_remembered_until_a_cacheable_answer() {
        let keys = remember_uncacheable(64).expect("on").of("a");
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
    fn a_pass_lasts_its_duration_and_ends_when_the_key_turns_cacheable() {
        let keys = remember_uncacheable(64).expect("on").of("a");
        let key = CacheKey::new(b"\x01a/account".to_vec(), "a");
        keys.pass_for(&key, Duration::from_millis(50));
        assert!(!keys.cacheable_prediction(&key));
        std::thread::sleep(Duration::from_millis(80));
        assert!(keys.cacheable_prediction(&key), "expired");
        keys.pass_for(&key, Duration::from_secs(60));
        assert!(keys.mark_cacheable(&key));
        assert!(keys.cacheable_prediction(&key), "cleared");
    }

    #[test]
    fn passes_are_bounded() {
        let keys = remember_uncacheable(16).expect("on").of("t");
        for i in 0..1000u32 {
            keys.pass_for(
                &CacheKey::new(i.to_be_bytes().to_vec(), "t"),
                Duration::from_secs(60),
            );
        }
        let kept: usize = keys.passes.iter().map(|s| s.lock().len()).sum();
        assert!(kept <= 16, "{kept}");
    }

    #[test]
    fn one_tenant_filling_its_record_leaves_another_s_marks() {
        let records = remember_uncacheable(16).expect("on");
        let victim = CacheKey::new(b"\x01v/pass".to_vec(), "v");
        records.of("v").pass_for(&victim, Duration::from_secs(60));
        records.of("v").mark_uncacheable(&victim, marks_url());
        for i in 0..1000u32 {
            let key = CacheKey::new(i.to_be_bytes().to_vec(), "a");
            records.of("a").pass_for(&key, Duration::from_secs(60));
            records.of("a").mark_uncacheable(&key, marks_url());
        }
        assert!(records.of("v").passing(&victim));
        assert!(!records.of("v").marks.cacheable_prediction(&victim));
        assert!(std::ptr::eq(records.of("v"), records.of("v")));
    }

    #[test]
    fn zero_capacity_is_off() {
        assert!(remember_uncacheable(0).is_none());
    }
}
