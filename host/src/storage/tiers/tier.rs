//! What the tier layer needs from a second-level tier. Values are opaque encoded records
//! ([`super::record`]); a tier only stores, finds and forgets them, and keeps purge marks.

use super::key::TierKey;
use super::purges::Purge;
use super::record::KeyCheck;
use super::sites::Sites;
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// A failure that may repeat at every write (a full or vanished disk, Redis refusing writes)
/// is logged at most this often.
pub(crate) const WARN_EVERY: Duration = Duration::from_secs(10);

#[async_trait]
pub(crate) trait Tier: Send + Sync + 'static {
    /// The name `Cache-Status` and metrics use (`l2-disk`, `l2-shared`).
    fn name(&self) -> &'static str;

    /// Whether a value this tier returns for a key is known to have been stored under that
    /// very key ([`KeyCheck::Tier`]: the tier keeps each value's key and compares it on read),
    /// or only the record's own key digest says so ([`KeyCheck::Digest`]).
    fn key_check(&self) -> KeyCheck;

    /// The stored value, `Ok(None)` on a miss. Errors are counted by the caller and are misses.
    async fn get(&self, key: &TierKey) -> Result<Option<Bytes>, String>;

    /// A chunk of a large body, read while a client is already receiving it: a tier may wait
    /// longer than for a lookup (a failure now aborts a response rather than making a miss).
    async fn get_chunk(&self, key: &TierKey) -> Result<Option<Bytes>, String> {
        self.get(key).await
    }

    /// A large body's first chunk, read by the lookup before anything is answered: within a
    /// lookup's own bound, as [`Self::get`] (a client waits for it at the start of its request).
    async fn get_first_chunk(&self, key: &TierKey) -> Result<Option<Bytes>, String> {
        self.get(key).await
    }

    /// Whether every one of `keys` is stored (a chunked body's parts, checked before its
    /// head is sent).
    async fn contains_all(&self, keys: &[TierKey]) -> Result<bool, String>;

    /// Forgets the chunks of a body found incomplete or purged, without counting them as
    /// objects.
    fn remove_chunks(&self, keys: &[TierKey]);

    /// Stores a value that is worth keeping for `lifetime`. Runs on the tier writer, never on
    /// a client's request.
    async fn put(&self, key: &TierKey, value: Bytes, lifetime: Duration) -> Result<(), String>;

    /// Forgets a value (a corrupt one, or one a purge shadows).
    fn remove(&self, key: &TierKey);

    /// Keeps (and, for a shared tier, spreads) a purge made on this node. An error says the
    /// tier could not record it, so it may not hold after a restart (a tier that records it in
    /// the background counts and logs its failures itself, and hands back the [`Delivery`]).
    fn publish(&self, purge: &Purge) -> Result<Option<Delivery>, String>;

    /// Which hosts each tenant name served when its copies here were written
    /// ([`super::sites`]).
    async fn sites(&self) -> Result<Sites, String>;

    /// Whether the tier's record is left to the check made when the tier opens, not checked at
    /// start and reload: a disk tier whose folder another cachet held at start (a graceful
    /// upgrade) serves no lookup until that check is done
    /// ([`super::TieredStorage::check_sites`]).
    fn sites_checked_on_open(&self) -> bool {
        false
    }

    /// Records the hosts of `now`'s names over `recorded` (what [`Self::sites`] just read),
    /// keeping other names' (a name removed and added again later is checked against them).
    async fn record_sites(&self, recorded: &Sites, now: &Sites) -> Result<(), String>;

    /// Largest value worth storing here.
    fn max_value(&self) -> usize;

    /// The counters the tier layer bumps for this tier.
    fn counters(&self) -> &TierCounters;

    /// Live figures for `/status` and metrics.
    fn stats(&self) -> TierStats;
}

/// How a purge a tier records in the background fared (sent to Redis, or appended to the disk
/// tier's marks file): whether it was kept, or why not. A PURGE waits for it, within a bound
/// of its own (`Purged::confirmed`); an invalidation does not.
pub(crate) type Delivery = tokio::sync::oneshot::Receiver<Result<(), String>>;

/// A tier's figures; counters are since start.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TierStats {
    pub name: &'static str,
    /// Bytes the tier holds (for the disk tier: its files; for the shared tier: the memory
    /// the Redis server uses, sampled every 5 s).
    pub stored_bytes: u64,
    /// The byte budget, when the tier has one.
    pub budget_bytes: Option<u64>,
    /// Objects stored. The disk tier counts the values in its index (a large body's chunks
    /// each count), earlier runs' included. The shared tier gives the keys of its Redis
    /// database (`DBSIZE`, sampled every 5 s): every node's objects and chunks, the purge
    /// marks, and any other keys kept in that database.
    pub objects: u64,
    /// The cap on `objects`, when the tier has one (`[cache.disk] max_objects`).
    pub max_objects: Option<u64>,
    pub hits: u64,
    pub misses: u64,
    pub writes: u64,
    /// Objects removed (purged or found corrupt).
    pub removed: u64,
    /// Writes dropped because the writer's queue was full.
    pub dropped: u64,
    /// Objects not written because they are larger than the tier takes (its largest value).
    pub too_large: u64,
    /// Errors talking to the tier (timeouts, I/O, a refused value) and corrupt values.
    pub errors: u64,
    /// Of `errors`, operations the tier did not answer within its timeout (the shared tier's
    /// `op_timeout`): a slow or hung Redis, or, under a saturated CPU, a reply this process
    /// did not get to in time. A lookup that times out is served from the origin.
    pub timeouts: u64,
    /// Connections replaced because Redis left calls on them unanswered (the shared tier).
    pub reconnects: u64,
    /// Corrupt or undecodable values found and removed.
    pub corrupt: u64,
    /// Copies a purge mark shadowed when read.
    pub purged: u64,
    /// Whether the tier is reachable now. The shared tier: subscribed to the purge channel.
    /// The disk tier: serving lookups (its folder is this process's and, when it opened late,
    /// the record of which hosts each tenant served was checked).
    pub connected: bool,
    /// Times more purges came on the channel than `[cache.shared] purge_backlog` before this
    /// node could apply them, so it read the kept ones again (the shared tier).
    pub purges_fell_behind: u64,
    /// This node's purges Redis did not take, waiting to be sent again once it answers (the
    /// shared tier).
    pub purges_to_resend: u64,
    /// Of those, purges dropped because more than `[cache.shared] purge_backlog` waited: the
    /// other nodes never heard of them (the shared tier).
    pub purges_not_resent: u64,
}

/// The counters a tier layer keeps per tier.
#[derive(Debug, Default)]
pub(crate) struct TierCounters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) writes: AtomicU64,
    pub(crate) removed: AtomicU64,
    pub(crate) written_bytes: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) too_large: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) corrupt: AtomicU64,
    pub(crate) purged: AtomicU64,
    /// Failed writes, for their throttled warning.
    pub(crate) write_failures: Throttle,
    /// Failed lookups, for theirs.
    pub(crate) read_failures: Throttle,
}

/// Counts a recurring failure and says when it is worth a log line again.
#[derive(Debug, Default)]
pub(crate) struct Throttle(Mutex<Throttled>);

#[derive(Debug, Default)]
struct Throttled {
    logged_at: Option<Instant>,
    failures: u64,
}

impl Throttle {
    /// Counts a failure at `now`. Returns how many failures a line logged now stands for
    /// (this one and those left unlogged since the last line), or `None` within
    /// [`WARN_EVERY`] of the last line.
    pub(crate) fn due(&self, now: Instant) -> Option<u64> {
        let mut state = self.0.lock();
        state.failures += 1;
        if state
            .logged_at
            .is_some_and(|at| now.saturating_duration_since(at) < WARN_EVERY)
        {
            return None;
        }
        state.logged_at = Some(now);
        Some(std::mem::take(&mut state.failures))
    }
}

impl TierCounters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Fills the counter fields of `stats`.
    pub(crate) fn fill(&self, stats: &mut TierStats) {
        stats.hits = self.hits.load(Relaxed);
        stats.misses = self.misses.load(Relaxed);
        stats.writes = self.writes.load(Relaxed);
        stats.removed = self.removed.load(Relaxed);
        stats.objects = stats.writes.saturating_sub(stats.removed);
        stats.dropped = self.dropped.load(Relaxed);
        stats.too_large = self.too_large.load(Relaxed);
        stats.errors = self.errors.load(Relaxed);
        stats.timeouts = self.timeouts.load(Relaxed);
        stats.reconnects = self.reconnects.load(Relaxed);
        stats.corrupt = self.corrupt.load(Relaxed);
        stats.purged = self.purged.load(Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeating_failure_is_logged_once_per_period_with_its_count() {
        let throttle = Throttle::default();
        let start = Instant::now();
        assert_eq!(throttle.due(start), Some(1));
        assert_eq!(throttle.due(start + Duration::from_secs(1)), None);
        assert_eq!(throttle.due(start + Duration::from_secs(9)), None);
        assert_eq!(throttle.due(start + WARN_EVERY), Some(3));
        assert_eq!(throttle.due(start + WARN_EVERY * 3), Some(1));
    }
}
