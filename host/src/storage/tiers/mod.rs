//! Cache tiers: L1 is the bounded [`MemoryStorage`]; optional L2 tiers behind it keep objects
//! on disk ([`disk`]) or share them between nodes ([`shared`]).
//!
//! [`TieredStorage`] is the `Storage` pingora is given. A lookup tries L1, then each L2 tier in
//! order (disk, then shared); a copy found in L2 is checked against the purge marks
//! ([`purges`]), promoted into L1 and served. A fill writes L1 as before, and hands the finished
//! object to a bounded queue whose task writes the L2 tiers ([`writer`]): no client waits for
//! an L2 write, and a full queue drops writes (counted). An L2 error is a miss, never a failed
//! request.
//!
//! Without L2 tiers every call goes straight to L1.

mod chunked_hit;
mod chunks;
mod disk;
pub(crate) mod head_frame;
mod hit;
mod key;
mod l1;
mod lean;
mod miss;
mod purge_channel;
mod purge_outbox;
mod purges;
mod record;
mod redis_conn;
mod redis_size;
mod refresh;
mod shared;
mod sites;
mod storage;
mod tier;
mod writer;

pub(crate) use disk::descriptors_held as disk_tier_descriptors;
pub use hit::tier_of;
pub use lean::{LeanLookup, TierReadAhead};
pub use record::FetchStarted;
pub use tier::TierStats;

use super::{MemoryStorage, StorageStats};
use crate::config::CacheConfig;
use anyhow::Context;
use key::TierKey;
use pingora_cache::CacheKey;
use purges::{Purge, PurgeLog, Target};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tier::Tier;
use writer::{Job, Writer};

/// A purge applied here (memory, this process's marks) that an L2 tier could not record: it
/// may not hold after a restart. Names the tiers and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotKept(pub String);

impl std::fmt::Display for NotKept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A purge applied here, whose way to the other nodes may still be under way.
#[must_use = "a PURGE waits for the purge to reach the other nodes (`confirmed`)"]
pub struct Purged {
    /// Objects (and writes) affected in memory, plus one per L2 tier that took the purge.
    pub affected: usize,
    under_way: Vec<(&'static str, tier::Delivery)>,
}

impl Purged {
    fn here(affected: usize) -> Self {
        Self {
            affected,
            under_way: Vec::new(),
        }
    }

    /// Nothing affected, nothing to wait for: where purges of several keys add up.
    pub fn none() -> Self {
        Self::here(0)
    }

    /// Both purges' effects and deliveries together.
    pub fn and(mut self, other: Purged) -> Self {
        self.affected += other.affected;
        self.under_way.extend(other.under_way);
        self
    }

    /// Waits until every tier that records the purge in the background (the shared tier,
    /// within its purge timeout; the disk tier, once its mark is written) says it did:
    /// [`NotKept`] naming those that did not, or did not answer within [`DELIVERY_WAIT`]. An
    /// operator's purge must not be reported done while Redis has not taken it (a Redis that
    /// accepts connections but does not answer looks connected).
    pub async fn confirmed(self) -> Result<usize, NotKept> {
        self.confirmed_within(DELIVERY_WAIT).await
    }

    async fn confirmed_within(self, wait: Duration) -> Result<usize, NotKept> {
        // One deadline for all: the deliveries are under way together.
        let deadline = tokio::time::Instant::now() + wait;
        let mut failed = Vec::new();
        for (tier, delivery) in self.under_way {
            match tokio::time::timeout_at(deadline, delivery).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => failed.push(format!("{tier}: {e}")),
                Ok(Err(_)) => failed.push(format!("{tier}: stopped before sending it")),
                Err(_) => failed.push(format!("{tier}: no answer within {wait:?}")),
            }
        }
        match failed.is_empty() {
            true => Ok(self.affected),
            false => Err(NotKept(failed.join("; "))),
        }
    }
}

/// How long a purge waits for the tiers recording it in the background
/// ([`Purged::confirmed`]). The disk tier answers once its mark is written, and a disk that
/// hangs (a dead network file system, a failing device) never does: a PURGE, or an admin
/// purge, would wait for it without end. Far longer than a healthy disk takes to append a
/// line.
const DELIVERY_WAIT: Duration = Duration::from_secs(10);
// The shared tier answers within its own purge timeout, which stays the shorter: what it
// reports is unchanged by this bound.
const _: () = assert!(shared::PURGE_TIMEOUT.as_millis() < DELIVERY_WAIT.as_millis());

/// A floor for every L2 copy of `partition` written until now.
fn partition_floor(partition: &str) -> Purge {
    Purge {
        target: Target::Partition(partition.to_owned()),
        at: record::now_ns(),
        soft: false,
    }
}

/// How long start and reload wait for the L2 tiers' record of which hosts each tenant
/// served ([`TieredStorage::check_sites`]): a Redis lookup takes milliseconds, a hung one
/// must not hold a reload up for long.
const SITES_CHECK_LIMIT: Duration = Duration::from_secs(2);
/// How long the check waits for the shared tier's purge channel: its floors count only once
/// the node listens (reading up to 65 536 kept purges first may take a second or two).
const SITES_CONNECT_WAIT: Duration = Duration::from_secs(5);

/// Waits up to [`SITES_CONNECT_WAIT`] for `tier` to connect before its record is checked: at
/// start the shared tier is still subscribing (reading the kept purges first), a purge it
/// sends meanwhile is reported as not kept, and the record would never be brought up to date.
async fn wait_until_connected(tier: &dyn Tier) {
    let connecting_since = std::time::Instant::now();
    while !tier.stats().connected && connecting_since.elapsed() < SITES_CONNECT_WAIT {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// L1 plus the configured L2 tiers. `Box::leak` it for `&'static`.
pub struct TieredStorage {
    l1: &'static MemoryStorage,
    tiers: Arc<[Arc<dyn Tier>]>,
    disk: Option<Arc<disk::DiskTier>>,
    purges: Arc<PurgeLog>,
    writer: Option<Writer>,
    /// Runs the tiers' I/O, flushing and writer tasks, apart from pingora's runtimes.
    runtime: Option<tokio::runtime::Runtime>,
    l1_hits: AtomicU64,
    /// Held by each check of which hosts each tenant served ([`Self::check_sites`]), with the
    /// hosts of the latest tenants it was given (at start or a reload): the check of a disk
    /// tier that opens late uses them.
    sites_check: tokio::sync::Mutex<sites::Sites>,
    /// Starts the watch for the disk tier's late opening, once.
    late_disk_check: std::sync::Once,
}

impl TieredStorage {
    /// L1 alone.
    pub fn memory_only(l1: &'static MemoryStorage) -> Self {
        Self {
            l1,
            tiers: Arc::new([]),
            disk: None,
            purges: Arc::default(),
            writer: None,
            runtime: None,
            l1_hits: AtomicU64::new(0),
            sites_check: tokio::sync::Mutex::default(),
            late_disk_check: std::sync::Once::new(),
        }
    }

    /// L1 and the L2 tiers `config` names. Opening the disk tier reads its index back from
    /// the files (objects stored by an earlier run are hits).
    pub fn open(l1: &'static MemoryStorage, config: &CacheConfig) -> anyhow::Result<Self> {
        if config.disk.is_none() && config.shared.is_none() {
            return Ok(Self::memory_only(l1));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cachet-tiers")
            .enable_all()
            .build()
            .context("starting the cache tiers' runtime")?;
        let purges = Arc::new(PurgeLog::default());
        let mut tiers: Vec<Arc<dyn Tier>> = Vec::new();
        let mut disk = None;
        if let Some(config) = &config.disk {
            let tier = disk::DiskTier::start(config, purges.clone(), l1)?;
            tiers.push(tier.clone());
            disk = Some(tier);
        }
        if let Some(config) = &config.shared {
            let remote = purge_channel::RemotePurges {
                l1,
                marks: purges.clone(),
                disk: disk.clone(),
            };
            tiers.push(shared::SharedTier::start(config, runtime.handle(), remote)?);
        }
        let tiers: Arc<[Arc<dyn Tier>]> = tiers.into();
        let writer = Writer::spawn(runtime.handle(), tiers.clone(), purges.clone());
        Ok(Self {
            l1,
            tiers,
            disk,
            purges,
            writer: Some(writer),
            runtime: Some(runtime),
            l1_hits: AtomicU64::new(0),
            sites_check: tokio::sync::Mutex::default(),
            late_disk_check: std::sync::Once::new(),
        })
    }

    /// The memory tier, for its limits.
    pub fn memory(&self) -> &'static MemoryStorage {
        self.l1
    }

    /// Usage of L1 (globally and per partition) and of each L2 tier.
    pub fn stats(&self) -> StorageStats {
        let mut stats = self.l1.stats();
        stats.l1_hits = self.l1_hits.load(Relaxed);
        stats.tiers = self.tiers.iter().map(|tier| tier.stats()).collect();
        stats
    }

    /// The object size limit for a partition (L1's).
    pub fn max_object_size(&self, partition: &str) -> usize {
        self.l1.max_object_size(partition)
    }

    /// The most a partition can keep: L1's budget for it ([`MemoryStorage::budget_of`])
    /// without L2 tiers; with them no budget bound, since a fill L1 cannot hold still goes
    /// to the tiers (each takes what fits its own `max_value`).
    pub fn budget_of(&self, partition: &str) -> usize {
        match self.tiers.is_empty() {
            true => self.l1.budget_of(partition),
            false => usize::MAX,
        }
    }

    /// See [`MemoryStorage::count_rejected_oversize`].
    pub fn count_rejected_oversize(&self, partition: &str) {
        self.l1.count_rejected_oversize(partition);
    }

    /// Whether `key` of `partition` may have been purged or invalidated after `since` (see
    /// [`MemoryStorage::purged_since`]); purges from other nodes count as they arrive.
    pub fn purged_since(
        &self,
        partition: &str,
        key: &pingora_cache::key::HashBinary,
        since: std::time::Instant,
    ) -> bool {
        self.l1.purged_since(partition, key, since)
    }

    /// See [`MemoryStorage::watch_fill`].
    pub fn watch_fill(
        &self,
        partition: &str,
        key: pingora_cache::key::HashBinary,
    ) -> crate::storage::FillWatch {
        self.l1.watch_fill(partition, key)
    }

    /// Removes what is stored under `key` in every tier. True when something may have been
    /// there (an L2 tier is not asked: a purge there leaves a mark instead). [`NotKept`] when
    /// an L2 tier could not record the purge; memory is purged all the same (so are the
    /// purges below).
    ///
    /// The mark comes first, then L1: a lookup that missed L1 after its purge must find the
    /// mark when it judges the L2 copy, or it promoted the purged copy back into L1. (One
    /// that judged before the mark began watching the key before the L1 purge, which stops
    /// its promotion.)
    pub fn purge_key(&self, key: &CacheKey) -> Result<Purged, NotKept> {
        let marked = self.mark_key(key, false);
        let found = self.l1.purge_key(key);
        Ok(Purged::here(usize::from(found)).and(marked?))
    }

    /// Marks what is stored under `key` stale in every tier (the mark first, as above).
    pub fn expire_key(&self, key: &CacheKey) -> Result<Purged, NotKept> {
        let marked = self.mark_key(key, true);
        let found = self.l1.expire_key(key);
        Ok(Purged::here(usize::from(found)).and(marked?))
    }

    /// Removes (or with `soft` expires) the partition's objects carrying any of `tags`, in
    /// every tier. Counts L1's objects, plus one per L2 tier that keeps the purge (an L2 tier
    /// cannot count what it holds).
    pub fn purge_tags(
        &self,
        partition: &str,
        tags: &[&str],
        soft: bool,
    ) -> Result<Purged, NotKept> {
        if self.tiers.is_empty() {
            return Ok(Purged::here(self.l1.purge_tags(partition, tags, soft)));
        }
        // The marks first, then L1 (see `purge_key`).
        let at = record::now_ns();
        let mut kept = Ok(Purged::here(self.tiers.len()));
        for tag in tags {
            let published = self.publish(Purge {
                target: Target::Tag {
                    partition: partition.to_owned(),
                    tag: (*tag).to_owned(),
                },
                at,
                soft,
            });
            // Every tag is published even after one failed.
            kept = match (kept, published) {
                (Ok(all), Ok(this)) => Ok(all.and(this)),
                (Err(e), _) | (Ok(_), Err(e)) => Err(e),
            };
        }
        let affected = self.l1.purge_tags(partition, tags, soft);
        kept.map(|kept| kept.and(Purged::here(affected)))
    }

    /// At start and at each reload, before the tenants serve: a tenant name whose L2 copies
    /// were written for other hosts (none in common with `now`'s, by the record each tier
    /// keeps: [`sites`]) gives them up, and every tier records what each name serves now.
    /// Waits for the tiers up to [`SITES_CHECK_LIMIT`]; past it the check goes on in the
    /// background. A disk tier whose folder another cachet still holds is checked against the
    /// latest tenants when it opens, and serves no lookup until then.
    pub fn check_sites(&'static self, tenants: &[crate::config::TenantConfig]) {
        let Some(runtime) = &self.runtime else {
            return;
        };
        let now: sites::Sites = tenants
            .iter()
            .map(|t| (t.name.clone(), t.hosts.clone()))
            .collect();
        let (done, finished) = std::sync::mpsc::channel();
        runtime.spawn(async move {
            self.reconcile_sites(now).await;
            let _ = done.send(());
        });
        if finished.recv_timeout(SITES_CHECK_LIMIT).is_err() {
            tracing::warn!(
                "the L2 tiers' record of which hosts each tenant served was not read within \
                 {SITES_CHECK_LIMIT:?}; the check goes on while the tenants serve (a name now \
                 serving another site may be served that site's L2 copies until it is done)"
            );
        }
    }

    async fn reconcile_sites(&'static self, now: sites::Sites) {
        // One check at a time: one a reload left running past the limit could otherwise
        // write an older record after a newer one.
        let mut latest = self.sites_check.lock().await;
        *latest = now;
        let now = &*latest;
        // Tier by tier, in lookup order: the disk's copies are checked at once, whatever
        // Redis does.
        for tier in self.tiers.iter() {
            if tier.sites_checked_on_open() {
                tracing::info!(
                    tier = tier.name(),
                    "not serving yet (another cachet held its folder): its record of which \
                     hosts each tenant served is checked against the latest tenants when it \
                     opens, before it serves"
                );
                continue;
            }
            wait_until_connected(tier.as_ref()).await;
            self.reconcile_tier_sites(tier.as_ref(), now).await;
        }
        self.check_disk_when_it_opens();
    }

    /// Once: if the disk tier waits for its folder, checks its record when it opens. Called
    /// holding `sites_check` after the latest tenants were put there, so the check finds them.
    fn check_disk_when_it_opens(&'static self) {
        let Some(disk) = &self.disk else {
            return;
        };
        if !disk.sites_checked_on_open() {
            return;
        }
        let disk = disk.clone();
        self.late_disk_check.call_once(move || {
            tokio::spawn(self.check_disk_once_open(disk));
        });
    }

    /// Waits for the disk tier's folder, then checks its record; says so if the check is held
    /// up (by another check waiting for Redis): the tier serves no lookup meanwhile.
    async fn check_disk_once_open(&'static self, disk: Arc<disk::DiskTier>) {
        if !disk.folder_opened().await {
            return;
        }
        let mut check = tokio::spawn(self.check_late_disk(disk));
        if tokio::time::timeout(SITES_CHECK_LIMIT, &mut check)
            .await
            .is_err()
        {
            tracing::warn!(
                "the disk tier opened, but its record of which hosts each tenant served was not \
                 checked within {SITES_CHECK_LIMIT:?}; it serves no lookup until it is"
            );
        }
    }

    /// Checks the record of the disk tier opened late against the latest tenants, then lets
    /// lookups read it (after a failed check too: the warning says what may be served).
    async fn check_late_disk(&'static self, disk: Arc<disk::DiskTier>) {
        let now = self.sites_check.lock().await;
        let checked = self.reconcile_tier_sites(disk.as_ref(), &now).await;
        disk.serve_lookups();
        match checked {
            true => tracing::info!(
                "the disk tier opened late: its record of which hosts each tenant served was \
                 checked against the tenants now; it serves lookups"
            ),
            false => tracing::warn!(
                "the disk tier opened late: its record of which hosts each tenant served could \
                 not be checked (see above); it serves lookups all the same"
            ),
        }
    }

    /// Checks one tier's record: a floor, kept by that tier, for each name it says served
    /// other hosts, then the record brought up to date. Whether all of it was done (a failure
    /// is logged).
    async fn reconcile_tier_sites(&self, tier: &dyn Tier, now: &sites::Sites) -> bool {
        // A record that cannot be read is not written either: writing it (after a Redis
        // lookup timed out) would replace what another site's name recorded there.
        let recorded = match tier.sites().await {
            Ok(recorded) => recorded,
            Err(e) => {
                tracing::warn!(
                    tier = tier.name(),
                    "cannot read which hosts each tenant name served: {e}; a name that served \
                     other hosts before may be served that site's copies from this tier"
                );
                return false;
            }
        };
        let mut all_kept = true;
        for name in sites::moved(&recorded, now) {
            let floor = partition_floor(&name);
            // This node's lookups in every tier heed it at once; the tier keeps it (and the
            // shared tier hands it to every node).
            self.purges.record(&floor);
            let dropped = self.l1.drop_partition(&name);
            let kept = match tier.publish(&floor) {
                Ok(delivery) => {
                    let under_way = delivery.map(|d| (tier.name(), d)).into_iter().collect();
                    Purged {
                        affected: 0,
                        under_way,
                    }
                    .confirmed()
                    .await
                    .map(drop)
                }
                Err(e) => Err(NotKept(e)),
            };
            match kept {
                Ok(()) => tracing::info!(
                    tenant = name.as_str(),
                    tier = tier.name(),
                    objects = dropped,
                    "tenant name served other hosts when its L2 copies were written: they are \
                     given up"
                ),
                // The record stays as it was: the next start or reload tries again.
                Err(e) => {
                    all_kept = false;
                    tracing::warn!(
                        tenant = name.as_str(),
                        tier = tier.name(),
                        "the old site's L2 copies may still be served: {e}"
                    );
                }
            }
        }
        if !all_kept {
            return false;
        }
        if let Err(e) = tier.record_sites(&recorded, now).await {
            tracing::warn!(
                tier = tier.name(),
                "cannot record which hosts each tenant serves: {e}"
            );
            return false;
        }
        true
    }

    /// Gives up every L2 copy of `partition` written until now: a floor kept by the disk tier
    /// and, through the shared tier, by every node (one that has not reloaded yet only misses
    /// the old site's copies early). L1 is emptied by the caller.
    pub fn forget_partition(&self, partition: &str) -> Result<(), NotKept> {
        if self.tiers.is_empty() {
            return Ok(());
        }
        self.publish(partition_floor(partition)).map(drop)
    }

    /// Shutdown: stores the objects still queued for the L2 tiers, then waits for the disk
    /// tier's buffered writes to reach its files. Gives up after `limit` (a tier that hangs
    /// must not hold the exit), saying so.
    pub fn close_within(&self, limit: Duration) {
        let Some(runtime) = &self.runtime else {
            return;
        };
        let closing = async {
            if let Some(writer) = &self.writer {
                writer.flush().await;
            }
            if let Some(disk) = &self.disk {
                disk.close().await;
            }
        };
        // The timer is made inside the runtime: it needs its time driver.
        let within_limit = runtime.block_on(async { tokio::time::timeout(limit, closing).await });
        if within_limit.is_err() {
            tracing::warn!(
                limit_ms = limit.as_millis() as u64,
                "cache tiers: queued writes did not finish within the shutdown limit; exiting without them"
            );
        }
    }

    /// Marks `key` in the L2 tiers: affects one "object" when there are any.
    fn mark_key(&self, key: &CacheKey, soft: bool) -> Result<Purged, NotKept> {
        if self.tiers.is_empty() {
            return Ok(Purged::here(0));
        }
        let mut published = self.publish(Purge {
            target: Target::Key(TierKey::of(key).to_hex()),
            at: record::now_ns(),
            soft,
        })?;
        published.affected = 1;
        Ok(published)
    }

    /// Records a purge made here and hands it to every tier to keep and spread.
    fn publish(&self, purge: Purge) -> Result<Purged, NotKept> {
        self.purges.record(&purge);
        let mut failed = Vec::new();
        let mut purged = Purged::here(0);
        for tier in self.tiers.iter() {
            match tier.publish(&purge) {
                Ok(Some(delivery)) => purged.under_way.push((tier.name(), delivery)),
                Ok(None) => {}
                Err(e) => failed.push(format!("{}: {e}", tier.name())),
            }
        }
        if failed.is_empty() {
            return Ok(purged);
        }
        Err(NotKept(failed.join("; ")))
    }

    fn max_value(&self) -> usize {
        self.tiers.iter().map(|t| t.max_value()).max().unwrap_or(0)
    }

    fn submit(&self, job: Job) {
        if let Some(writer) = &self.writer {
            writer.submit(job);
        }
    }
}

/// A cache with a disk tier of `disk_bytes` in `path` (unit tests of the tiers).
#[cfg(test)]
pub(super) fn disk_config(
    path: &std::path::Path,
    l1_bytes: usize,
    disk_bytes: usize,
) -> CacheConfig {
    CacheConfig {
        max_bytes: l1_bytes,
        max_object_bytes: l1_bytes,
        lock_timeout: Duration::from_secs(1),
        uncacheable_keys: 0,
        lean_hits: false,
        disk: Some(crate::config::DiskTierConfig {
            path: path.to_path_buf(),
            max_bytes: disk_bytes,
            max_objects: None,
        }),
        shared: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// A tier that never answers does not hold a purge for good (a disk that hangs holds the
    /// marks writer, and a PURGE waiting for it would wait without end). The other tiers'
    /// answers are reported with it.
    #[tokio::test]
    async fn a_tier_that_never_answers_a_purge_is_reported_after_the_wait() {
        let (_never, hung) = tokio::sync::oneshot::channel();
        let (failing, failed) = tokio::sync::oneshot::channel();
        failing.send(Err("refused".to_owned())).unwrap();
        let purged = Purged {
            affected: 1,
            under_way: vec![("l2-disk", hung), ("l2-shared", failed)],
        };
        let started = std::time::Instant::now();
        let wait = Duration::from_millis(50);
        let not_kept = purged.confirmed_within(wait).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(
            not_kept.0,
            "l2-disk: no answer within 50ms; l2-shared: refused"
        );
    }

    /// The tenant `shop` serving `host`, as a config gives it.
    fn shop_serving(host: &str) -> Vec<crate::config::TenantConfig> {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[[tenant]]\nname = \"shop\"\n\
             hosts = [\"{host}\"]\nupstream = \"127.0.0.1:1\"\nplugin = \"builtin:standard\"\n"
        );
        let path = std::env::temp_dir().join("cachet.toml");
        crate::config::parse(&path, &text)
            .expect("a valid config")
            .tenants
    }

    /// Holds the disk folder's lock, as another cachet running on it does.
    fn hold_folder(path: &std::path::Path) -> std::fs::File {
        std::fs::create_dir_all(path).unwrap();
        let lock = std::fs::File::create(path.join("lock")).unwrap();
        // SAFETY: flock on a descriptor `lock` owns.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
        lock
    }

    /// A disk tier that opens late (another cachet held its folder) serves no lookup until its
    /// record of sites is checked, then is checked against the latest tenants (a reload made
    /// while it waited): the start-up check could not read it, and nothing checked it after.
    #[test]
    fn a_disk_tier_opened_late_is_checked_against_the_latest_tenants_before_it_serves() {
        let dir = tempfile::tempdir().unwrap();
        let held = hold_folder(dir.path());
        // What the other cachet recorded: `shop` served `a.test`.
        std::fs::write(dir.path().join("sites.json"), r#"{"shop":["a.test"]}"#).unwrap();
        let l1: &'static MemoryStorage = Box::leak(Box::new(MemoryStorage::new(1 << 20, 1 << 20)));
        let config = disk_config(dir.path(), 1 << 20, 8 << 20);
        let storage: &'static TieredStorage =
            Box::leak(Box::new(TieredStorage::open(l1, &config).unwrap()));
        storage.check_sites(&shop_serving("a.test"));
        storage.check_sites(&shop_serving("b.test"));
        assert!(!storage.stats().tiers[0].connected, "the folder is held");

        // Held for longer than a check waits for a tier to connect: the folder opens after the
        // start's and the reload's checks are over.
        std::thread::sleep(SITES_CONNECT_WAIT + Duration::from_millis(500));
        drop(held);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !storage.stats().tiers[0].connected {
            assert!(std::time::Instant::now() < deadline, "never served lookups");
            std::thread::sleep(Duration::from_millis(10));
        }
        let recorded = std::fs::read_to_string(dir.path().join("sites.json")).unwrap();
        let recorded: sites::Sites = serde_json::from_str(&recorded).unwrap();
        assert_eq!(recorded["shop"], ["b.test"]);
        let old_copy = TierKey::of(&CacheKey::new(b"/page".to_vec(), "shop"));
        assert!(
            storage.purges.verdict(&old_copy, &[], 1) == purges::Verdict::Gone,
            "the old site's copies are given up"
        );
    }
}
