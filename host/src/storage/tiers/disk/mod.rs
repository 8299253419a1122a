//! The disk tier: objects in segment files under `[cache.disk] path` ([`segments`]), bounded
//! by `max_bytes`, recovered when cachet starts again on the same path.
//!
//! Every entry carries a checksum, and one whose bytes do not match (a truncated or corrupted
//! file) is a miss and is removed; records are checked again when decoded. A removal writes a
//! tombstone so the object does not come back after a restart, from a thread of its own
//! ([`tombstones`]). Purge marks are kept next to the segments in `purges.jsonl`
//! ([`marks_file`]), appended from a thread of their own too ([`marks_writer`]).
//!
//! One process owns the folder at a time (an exclusive `flock` on `path/lock`). During a
//! graceful upgrade the new process starts while the old one drains: it runs without the disk
//! tier until the old process exits and releases the lock, then opens it, and serves lookups
//! from it once the storage has checked its record of which hosts each tenant served
//! (`super::sites`) against the tenants now.

mod background;
mod entry;
mod marks_file;
mod marks_writer;
mod segments;
mod tombstones;

use super::key::TierKey;
use super::purges::{floors_of, Purge, PurgeLog, Target, MAX_MARKS};
use super::record::KeyCheck;
use super::sites::Sites;
use super::tier::{Delivery, Tier, TierCounters, TierStats};
use crate::config::DiskTierConfig;
use crate::storage::MemoryStorage;
use anyhow::Context;
use async_trait::async_trait;
use bytes::Bytes;
use marks_file::MarksJournal;
use marks_writer::MarksWriter;
use parking_lot::Mutex;
use segments::{Limits, ReadError, SegmentStore};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tombstones::TombstoneWriter;

/// Largest segment: a segment is the unit the tier evicts, and bounds the largest entry.
const MAX_SEGMENT: usize = 16 << 20;
/// Smallest segment worth having.
const MIN_SEGMENT: usize = 1 << 20;
/// Segments the budget is split into at least, so eviction frees a small share at a time.
const MIN_SEGMENTS: usize = 8;
/// Room an entry needs in its segment beyond the value: its header and the key.
const ENTRY_ROOM: usize = 4096;
/// How long a lookup waits for a read the page cache cannot serve. A disk that stops
/// answering (a hung network file system, a failing device) made every L1 miss wait for it
/// without end; now such a lookup is a miss, served from the next tier or the origin, and
/// counted as a timeout. Generous: a healthy disk answers a segment read in milliseconds.
const READ_LIMIT: Duration = Duration::from_secs(1);
/// The same for a chunk of a response under way: failing it cuts the response short, so a
/// slow disk (a busy or throttled volume) gets longer.
const CHUNK_READ_LIMIT: Duration = Duration::from_secs(5);
/// Which hosts each tenant name served (`super::sites`), in the tier's folder.
const SITES_FILE: &str = "sites.json";

pub(crate) struct DiskTier {
    config: DiskTierConfig,
    max_value: usize,
    /// Set once this process owns the folder.
    store: OnceLock<Store>,
    /// Whether lookups read the store: at once when the folder was free at start; when it
    /// opened late, once the storage has checked the record of which hosts each tenant name
    /// served against the tenants now ([`Self::serve_lookups`]), since the other process may
    /// have written a name's copies for another site.
    serving: AtomicBool,
    /// Turns true when the wait for the folder is over, opened or given up
    /// ([`Self::folder_opened`]).
    waited: tokio::sync::watch::Sender<bool>,
    /// Purges made before the store was open, written to its marks file when it opens.
    pending_marks: Mutex<WaitingMarks>,
    counters: Arc<TierCounters>,
}

/// Purges made while another process holds the folder (a graceful upgrade's overlap, up to
/// its shutdown grace). Every successful unsafe request makes one, so they are bounded as the
/// marks file is: past [`MAX_MARKS`] the oldest are folded into their partitions' floors.
#[derive(Default)]
struct WaitingMarks {
    /// What the folded ones said, per partition ([`floors_of`]).
    floors: Vec<Purge>,
    marks: VecDeque<Purge>,
    /// Why the folder could not be opened: purges can no longer be recorded.
    gave_up: Option<String>,
}

impl WaitingMarks {
    fn push(&mut self, purge: Purge) {
        self.marks.push_back(purge);
        if self.marks.len() > MAX_MARKS {
            // A quarter at a time, so a flood does not fold at every purge.
            let oldest = self.marks.drain(..MAX_MARKS / 4);
            self.floors = floors_of(self.floors.drain(..).chain(oldest));
        }
    }

    /// Purges held, floors included.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.floors.len() + self.marks.len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every purge held, oldest (the floors) first.
    fn take(&mut self) -> Vec<Purge> {
        let mut taken = std::mem::take(&mut self.floors);
        taken.extend(self.marks.drain(..));
        taken
    }

    /// Puts back `taken` (by [`Self::take`]) that could not be written, before the newer.
    fn put_back(&mut self, taken: Vec<Purge>) {
        let newer = self.take();
        for purge in taken.into_iter().chain(newer) {
            self.push(purge);
        }
    }
}

struct Store {
    segments: Arc<SegmentStore>,
    marks: Arc<MarksWriter>,
    tombstones: TombstoneWriter,
    /// Held for the life of the process: the folder's exclusive lock.
    _lock: File,
}

impl DiskTier {
    /// The value stored under `key`, read within `limit` (a timeout is counted).
    async fn read_within(&self, key: &TierKey, limit: Duration) -> Result<Option<Bytes>, String> {
        let Some(store) = self.lookup_store() else {
            return Ok(None);
        };
        let read = tokio::time::timeout(limit, store.segments.get(key.as_bytes()));
        let Ok(read) = read.await else {
            TierCounters::bump(&self.counters.timeouts);
            return Err(format!("the disk did not answer within {limit:?}"));
        };
        match read {
            Ok(value) => Ok(value),
            Err(ReadError::Corrupt(tombstones)) => {
                // The index has forgotten it already; the tombstone keeps it so.
                TierCounters::bump(&self.counters.corrupt);
                TierCounters::bump(&self.counters.removed);
                store.tombstones.write(tombstones);
                tracing::warn!("disk tier: corrupt object removed");
                Err("a stored entry failed its checksum".into())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Opens the store now if the folder is free; otherwise opens it from a background thread
    /// as soon as the process holding it exits. The marks of earlier runs go into `marks`;
    /// those the other process made while this one waited (a graceful upgrade's overlap)
    /// also go to `l1`, which may have filled the objects from the origin meanwhile.
    pub(crate) fn start(
        config: &DiskTierConfig,
        marks: Arc<PurgeLog>,
        l1: &'static MemoryStorage,
    ) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(&config.path)
            .with_context(|| format!("creating the disk tier at {}", config.path.display()))?;
        let lock_path = config.path.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        let segment = segment_size(config.max_bytes);
        let tier = Arc::new(Self {
            config: config.clone(),
            max_value: segment.saturating_sub(ENTRY_ROOM),
            store: OnceLock::new(),
            serving: AtomicBool::new(false),
            waited: tokio::sync::watch::Sender::new(false),
            pending_marks: Mutex::default(),
            counters: Arc::default(),
        });
        if flock(&lock, libc::LOCK_EX | libc::LOCK_NB) {
            tier.open(lock, &marks, None)?;
            // The start-up check reads its record before the tenants serve.
            tier.serving.store(true, Ordering::Release);
            tier.waited.send_replace(true);
            return Ok(tier);
        }
        let waiting_since = super::record::now_ns();
        tracing::warn!(
            path = %config.path.display(),
            "the disk tier is in use by another cachet (a graceful upgrade?): it opens when that process exits"
        );
        let waiting = tier.clone();
        std::thread::Builder::new()
            .name("cachet-disk-wait".into())
            .spawn(move || {
                let opened = if flock(&lock, libc::LOCK_EX) {
                    waiting.open(lock, &marks, Some((l1, waiting_since)))
                } else {
                    Err(std::io::Error::last_os_error()).context("cannot lock its folder")
                };
                match opened {
                    Ok(()) => tracing::info!(
                        "disk tier opened; it serves lookups once its record of which hosts \
                         each tenant served is checked"
                    ),
                    Err(e) => waiting.give_up(&e),
                }
                waiting.waited.send_replace(true);
            })
            .context("starting the disk tier's waiting thread")?;
        Ok(tier)
    }

    /// Waits until the wait for the folder is over (at once when it was free at start):
    /// whether this process owns it.
    pub(crate) async fn folder_opened(&self) -> bool {
        let mut waited = self.waited.subscribe();
        // The tier holds the sender: the wait ends only when `waited` turns true.
        let _ = waited.wait_for(|over| *over).await;
        self.store.get().is_some()
    }

    /// Lets lookups read the store, now that the storage has checked (or tried to check) its
    /// record of which hosts each tenant served. Nothing to read before the folder is open.
    pub(crate) fn serve_lookups(&self) {
        if self.store.get().is_some() {
            self.serving.store(true, Ordering::Release);
        }
    }

    /// The store, for a lookup: none until the tier serves lookups (see `serving`).
    fn lookup_store(&self) -> Option<&Store> {
        match self.serving.load(Ordering::Acquire) {
            true => self.store.get(),
            false => None,
        }
    }

    /// The folder will not be opened: from now on a purge is reported not recorded (PURGE
    /// answers 503), and those made while waiting are dropped and logged as lost (they were
    /// held, and kept growing, for the life of the process, while PURGE answered 200).
    fn give_up(&self, error: &anyhow::Error) {
        let lost = {
            let mut pending = self.pending_marks.lock();
            pending.gave_up = Some(format!("{error:#}"));
            pending.take().len()
        };
        tracing::error!("disk tier: {error:#}; running without it");
        if lost > 0 {
            tracing::error!(
                "disk tier: {lost} purge mark(s) made while waiting for the folder are lost: \
                 what they purged may be read from the disk again at the next start"
            );
        }
    }

    /// Opens the segments and the marks file, holding `lock`. After a wait (`late`: L1 and
    /// when the wait began), the marks written since are applied to L1 too.
    fn open(
        &self,
        lock: File,
        marks: &PurgeLog,
        late: Option<(&'static MemoryStorage, u64)>,
    ) -> anyhow::Result<()> {
        remove_block_store(&self.config.path)?;
        let dir = self.config.path.join("segments");
        let segments = SegmentStore::open(&dir, limits(&self.config))
            .with_context(|| format!("opening the disk tier's segments in {}", dir.display()))?;
        let path = self.config.path.join("purges.jsonl");
        // This process's own purges while it waited (applied to L1 when made); back in the
        // queue if they cannot be written, to be reported lost.
        let pending = self.pending_marks.lock().take();
        let (journal, read) = match MarksJournal::open(path, &pending) {
            Ok(opened) => opened,
            Err(e) => {
                self.pending_marks.lock().put_back(pending);
                return Err(e);
            }
        };
        if let Some((l1, since)) = late {
            for purge in read.iter().filter(|purge| purge.at >= since) {
                l1.apply_purge(purge);
            }
        }
        for mark in read.iter().chain(&pending) {
            marks.record(mark);
        }
        let segments = Arc::new(segments);
        let tombstones = TombstoneWriter::start(segments.clone(), self.counters.clone())
            .context("starting the disk tier's tombstone writer")?;
        let marks_writer = MarksWriter::start(journal, segments.clone(), self.counters.clone())
            .context("starting the disk tier's marks writer")?;
        let store = Store {
            segments,
            marks: Arc::new(marks_writer),
            tombstones,
            _lock: lock,
        };
        // Set under the lock `publish` checks for the store with, and the late marks queued
        // before it is let go (see `adopt_late_marks`).
        let mut pending = self.pending_marks.lock();
        if self.store.set(store).is_err() {
            anyhow::bail!("the disk tier was opened twice");
        }
        self.adopt_late_marks(&mut pending, marks);
        Ok(())
    }

    /// Queues the marks of the purges made while the folder was being opened: they found no
    /// store yet and waited with the others, but after those were taken. (They were held in
    /// memory only, and the objects they purged came back from the disk after the next
    /// restart.) Called with `pending_marks` held since the store was set: `publish` checks
    /// for the store under that lock, so once the store is set no purge can be left there,
    /// and every purge that finds the store is queued after these.
    fn adopt_late_marks(&self, pending: &mut WaitingMarks, marks: &PurgeLog) {
        let Some(store) = self.store.get() else {
            return;
        };
        for purge in pending.take() {
            marks.record(&purge);
            // On the folder's waiting thread: it waits for room rather than lose any (those
            // purges were reported kept). A failed append is counted and logged by the writer.
            let _ = store.marks.append_waiting(purge);
        }
    }

    /// Keeps a purge another node made (heard on the purge channel or read from the marks
    /// kept in Redis). On the shared tier's subscriber, not a request thread: it waits for
    /// room in the marks queue, since a reconnect hands over up to 65 536 marks at once.
    pub(crate) fn keep_remote(&self, purge: &Purge) {
        let _ = self.record_purge(purge, Queueing::Wait);
    }

    /// Records `purge`: its URL's entry dropped at once (a hard purge of one key), its mark
    /// queued for the marks writer, or held until the folder opens.
    fn record_purge(&self, purge: &Purge, queueing: Queueing) -> Result<Option<Delivery>, String> {
        let store = {
            // Checked under the lock `open` takes the waiting purges with (`adopt_late_marks`).
            let mut pending = self.pending_marks.lock();
            match (self.store.get(), &pending.gave_up) {
                (Some(store), _) => store,
                (None, Some(error)) => {
                    TierCounters::bump(&self.counters.errors);
                    return Err(format!(
                        "cannot record the purge: the folder did not open: {error}"
                    ));
                }
                (None, None) => {
                    pending.push(purge.clone());
                    return Ok(None);
                }
            }
        };
        // Lookups miss from now on, whatever becomes of the mark: the URL's own entry is
        // dropped from the index, its tombstone queued (its variants, stored under keys of
        // their own, only the mark covers).
        if let Some(key) = removed_key(purge) {
            self.remove_queued(store, &[key.as_bytes()]);
        }
        // Appended on the marks writer's thread ([`marks_writer`]); the delivery says how it
        // went. From a request thread, refused at once when the disk is not keeping up.
        match queueing {
            Queueing::Refuse => store.marks.append(purge.clone()).map(Some),
            Queueing::Wait => store.marks.append_waiting(purge.clone()).map(Some),
        }
    }

    /// Removes `keys` now and leaves their tombstones to the tombstone writer
    /// ([`tombstones`]), so a request thread never waits for the segment writer's lock.
    fn remove_queued(&self, store: &Store, keys: &[&[u8]]) {
        let tombstones = store.segments.forget_all(keys);
        self.counters.removed.fetch_add(
            tombstones.count as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        store.tombstones.write(tombstones);
    }

    /// Writes what the page cache holds for the tier to the disk (shutdown).
    pub(crate) async fn close(&self) {
        let Some(store) = self.store.get() else {
            return;
        };
        let (segments, tombstones) = (store.segments.clone(), store.tombstones.clone());
        let marks = store.marks.clone();
        // The marks first: without them, what they purged comes back after the restart.
        // Each flush waits a bounded time and logs what it left.
        let written = move || {
            marks.flush();
            tombstones.flush();
            segments.sync()
        };
        match tokio::task::spawn_blocking(written).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("closing the disk tier: {e}"),
            Err(e) => tracing::warn!("closing the disk tier: {e}"),
        }
    }
}

#[async_trait]
impl Tier for DiskTier {
    fn name(&self) -> &'static str {
        "l2-disk"
    }

    /// Every entry carries its key, checked on read (`entry.rs`).
    fn key_check(&self) -> KeyCheck {
        KeyCheck::Tier
    }

    async fn get(&self, key: &TierKey) -> Result<Option<Bytes>, String> {
        self.read_within(key, READ_LIMIT).await
    }

    async fn get_chunk(&self, key: &TierKey) -> Result<Option<Bytes>, String> {
        self.read_within(key, CHUNK_READ_LIMIT).await
    }

    async fn contains_all(&self, keys: &[TierKey]) -> Result<bool, String> {
        let Some(store) = self.lookup_store() else {
            return Ok(false);
        };
        Ok(keys
            .iter()
            .all(|key| store.segments.contains(key.as_bytes())))
    }

    fn remove_chunks(&self, keys: &[TierKey]) {
        if let Some(store) = self.store.get() {
            let keys: Vec<&[u8]> = keys.iter().map(TierKey::as_bytes).collect();
            self.remove_queued(store, &keys);
        }
    }

    async fn put(&self, key: &TierKey, value: Bytes, _lifetime: Duration) -> Result<(), String> {
        let Some(store) = self.store.get() else {
            return Err("not open yet (another process holds the folder)".into());
        };
        if value.len() > self.max_value {
            return Err(format!("{} bytes do not fit a segment", value.len()));
        }
        let (segments, key) = (store.segments.clone(), key.clone());
        tokio::task::spawn_blocking(move || segments.put(key.as_bytes(), &value))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("writing a segment: {e}"))
    }

    fn remove(&self, key: &TierKey) {
        if let Some(store) = self.store.get() {
            self.remove_queued(store, &[key.as_bytes()]);
        }
    }

    fn publish(&self, purge: &Purge) -> Result<Option<Delivery>, String> {
        self.record_purge(purge, Queueing::Refuse)
    }

    async fn sites(&self) -> Result<Sites, String> {
        // The folder belongs to this process once it is open: before (a graceful upgrade's
        // overlap) another cachet keeps its record, and a floor made now would only be held in
        // memory until then.
        if self.store.get().is_none() {
            return Err("the folder is still held by another cachet".into());
        }
        let path = self.config.path.join(SITES_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Sites::new()),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        match serde_json::from_slice(&bytes) {
            Ok(sites) => Ok(sites),
            // Set aside, not read again at every start: a new record begins.
            Err(e) => {
                let aside = path.with_extension("json.damaged");
                let _ = std::fs::rename(&path, &aside);
                tracing::warn!(
                    "disk tier: {}: {e}; set aside as {}, a new record begins",
                    path.display(),
                    aside.display()
                );
                Ok(Sites::new())
            }
        }
    }

    /// Until the storage has checked the record of a folder opened late (or still waited for).
    fn sites_checked_on_open(&self) -> bool {
        !self.serving.load(Ordering::Acquire)
    }

    async fn record_sites(&self, recorded: &Sites, now: &Sites) -> Result<(), String> {
        let mut all = recorded.clone();
        all.extend(
            now.iter()
                .map(|(name, hosts)| (name.clone(), hosts.clone())),
        );
        let json = serde_json::to_vec_pretty(&all).map_err(|e| e.to_string())?;
        // Written whole, then renamed over the record: a crash leaves the old one or the new.
        let path = self.config.path.join(SITES_FILE);
        let written = path.with_extension("json.new");
        let write = || -> std::io::Result<()> {
            let mut file = File::create(&written)?;
            std::io::Write::write_all(&mut file, &json)?;
            file.sync_all()?;
            std::fs::rename(&written, &path)
        };
        write().map_err(|e| format!("{}: {e}", path.display()))
    }

    fn max_value(&self) -> usize {
        self.max_value
    }

    fn counters(&self) -> &TierCounters {
        &self.counters
    }

    fn stats(&self) -> TierStats {
        let store = self.store.get();
        let mut stats = TierStats {
            name: self.name(),
            stored_bytes: store.map_or(0, |s| s.segments.stored_bytes()),
            budget_bytes: Some(self.config.max_bytes as u64),
            max_objects: self.config.max_objects,
            connected: self.serving.load(Ordering::Acquire),
            ..TierStats::default()
        };
        self.counters.fill(&mut stats);
        if let Some(store) = store {
            stats.objects = store.segments.entries() as u64;
        }
        stats
    }
}

/// What a purge does when the marks queue is full.
#[derive(Clone, Copy)]
enum Queueing {
    /// Refused at once: a request thread never waits for the disk.
    Refuse,
    /// Waits for room: a thread of the tiers' own, handing over marks in bulk.
    Wait,
}

/// The key a hard purge of one URL removes. A soft one keeps the copy: its mark makes it
/// stale, to be revalidated.
fn removed_key(purge: &Purge) -> Option<TierKey> {
    match (&purge.target, purge.soft) {
        (Target::Key(hex), false) => TierKey::from_hex(hex),
        _ => None,
    }
}

fn limits(config: &DiskTierConfig) -> Limits {
    Limits {
        segment_bytes: segment_size(config.max_bytes) as u64,
        max_bytes: config.max_bytes as u64,
        max_values: config.max_objects.unwrap_or(u64::MAX),
    }
}

/// Descriptors a disk tier of `config` holds open at most: its segment files, the marks file
/// and the lock.
pub(crate) fn descriptors_held(config: &DiskTierConfig) -> u64 {
    limits(config).most_segments() + 2
}

fn segment_size(max_bytes: usize) -> usize {
    (max_bytes / MIN_SEGMENTS).clamp(MIN_SEGMENT, MAX_SEGMENT)
}

/// Deletes the block store an earlier cachet kept in `path/blocks` (foyer's format): its
/// objects are fetched again.
fn remove_block_store(path: &Path) -> anyhow::Result<()> {
    let blocks = path.join("blocks");
    if blocks.is_dir() {
        tracing::info!(
            "disk tier: removing {}, the store of an earlier version",
            blocks.display()
        );
        std::fs::remove_dir_all(&blocks)
            .with_context(|| format!("removing {}", blocks.display()))?;
    }
    Ok(())
}

fn flock(file: &File, operation: libc::c_int) -> bool {
    // SAFETY: flock on a descriptor this File owns; no memory is shared with the call.
    unsafe { libc::flock(file.as_raw_fd(), operation) == 0 }
}

#[cfg(test)]
mod tests {
    use super::marks_writer::QUEUE;
    use super::*;

    #[test]
    fn an_earlier_versions_block_store_is_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("blocks")).unwrap();
        std::fs::write(dir.path().join("blocks/0"), b"old").unwrap();
        std::fs::write(dir.path().join("purges.jsonl"), b"").unwrap();
        remove_block_store(dir.path()).unwrap();
        assert!(!dir.path().join("blocks").exists());
        assert!(dir.path().join("purges.jsonl").exists());
        remove_block_store(dir.path()).unwrap();
    }

    fn small_config(path: &Path) -> DiskTierConfig {
        DiskTierConfig {
            path: path.to_path_buf(),
            max_bytes: 8 << 20,
            max_objects: None,
        }
    }

    fn memory() -> &'static MemoryStorage {
        Box::leak(Box::new(MemoryStorage::new(8 << 20, 1 << 20)))
    }

    /// In a graceful upgrade the new process opens the disk tier once the old one has exited.
    /// What the old one purged meanwhile reaches the new one's memory, which may have filled
    /// the object from the origin before the purge: it kept serving it (probe U).
    #[test]
    fn purges_made_while_waiting_for_the_folder_reach_memory() {
        let dir = tempfile::tempdir().unwrap();
        let config = small_config(dir.path());
        let old = DiskTier::start(&config, Arc::default(), memory()).unwrap();
        let l1 = memory();
        let new = DiskTier::start(&config, Arc::default(), l1).unwrap();
        assert!(new.store.get().is_none(), "the folder is the old process's");
        let now = std::time::SystemTime::now();
        let header = pingora::http::ResponseHeader::build(200, None).unwrap();
        let meta = pingora_cache::CacheMeta::new(
            now + std::time::Duration::from_secs(3600),
            now,
            0,
            0,
            header,
        );
        let filled = pingora_cache::CacheKey::new(b"/a".to_vec(), "site");
        let other = pingora_cache::CacheKey::new(b"/b".to_vec(), "site");
        for key in [&filled, &other] {
            assert!(l1.promote(key, &meta, Bytes::from_static(b"v1"), &l1.stamp_key(key)));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
        let purge = Purge {
            target: Target::Key(TierKey::of(&filled).to_hex()),
            at: super::super::record::now_ns(),
            soft: false,
        };
        let delivery = old
            .publish(&purge)
            .unwrap()
            .expect("the folder is the old's");
        assert_eq!(delivery.blocking_recv(), Ok(Ok(())), "its mark is written");
        drop(old);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while new.store.get().is_none() {
            assert!(std::time::Instant::now() < deadline, "never opened");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(l1.stored(&filled).is_none(), "purged by the old process");
        assert!(l1.stored(&other).is_some());
    }

    /// A purge made while the folder was being opened found no store and waited, after the
    /// waiting ones had been taken: it is written once the store is set, so it holds after a
    /// restart (it was kept in memory only).
    #[test]
    fn a_purge_made_while_the_folder_opens_is_written_to_the_marks_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = small_config(dir.path());
        let tier = DiskTier::start(&config, Arc::default(), memory()).unwrap();
        let purge = Purge {
            target: Target::Key(
                TierKey::of(&pingora_cache::CacheKey::new(b"/a".to_vec(), "s")).to_hex(),
            ),
            at: super::super::record::now_ns(),
            soft: false,
        };
        let marks = PurgeLog::default();
        {
            // As `publish` leaves it when it looked just before the store was set.
            let mut pending = tier.pending_marks.lock();
            pending.push(purge.clone());
            tier.adopt_late_marks(&mut pending, &marks);
            assert!(pending.is_empty());
        }
        tier.store.get().unwrap().marks.flush();
        drop(tier);
        let read = marks_file::read_marks(&[dir.path().join("purges.jsonl").as_path()]).unwrap();
        assert!(
            read.iter().any(|p| p.at == purge.at),
            "{} marks on disk",
            read.len()
        );
    }

    /// A purge of `/{i}` in `site`, made now.
    fn purge_of(i: usize) -> Purge {
        let key = pingora_cache::CacheKey::new(format!("/{i}").into_bytes(), "site");
        Purge {
            target: Target::Key(TierKey::of(&key).to_hex()),
            at: super::super::record::now_ns(),
            soft: false,
        }
    }

    /// Purges made while another process holds the folder are bounded: a flood of POSTs
    /// during a graceful upgrade's overlap grew them without end.
    #[test]
    fn purges_made_while_waiting_for_the_folder_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let config = small_config(dir.path());
        let holder = DiskTier::start(&config, Arc::default(), memory()).unwrap();
        let waiting = DiskTier::start(&config, Arc::default(), memory()).unwrap();
        for i in 0..200_000 {
            assert!(waiting.publish(&purge_of(i)).is_ok());
        }
        let held = waiting.pending_marks.lock().len();
        assert!(held <= MAX_MARKS + 2, "{held} purges held");
        drop(holder);
    }

    /// When the folder cannot be opened once the other process lets go of it, a purge is
    /// reported not recorded (PURGE answers 503): it answered 200, and the purges were held
    /// for the life of the process.
    #[test]
    fn purges_are_refused_once_the_folder_failed_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let config = small_config(dir.path());
        let holder = DiskTier::start(&config, Arc::default(), memory()).unwrap();
        let waiting = DiskTier::start(&config, Arc::default(), memory()).unwrap();
        assert!(
            waiting.publish(&purge_of(0)).is_ok(),
            "queued while it waits"
        );
        // The marks file cannot be read or replaced.
        let marks = dir.path().join("purges.jsonl");
        std::fs::remove_file(&marks).unwrap();
        std::fs::create_dir(&marks).unwrap();
        std::fs::write(marks.join("inside"), b"x").unwrap();
        drop(holder);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while waiting.publish(&purge_of(1)).is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "purges still accepted"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(waiting.store.get().is_none());
        let err = waiting.publish(&purge_of(2)).unwrap_err();
        assert!(err.contains("purges.jsonl"), "{err}");
        assert!(
            waiting.pending_marks.lock().is_empty(),
            "dropped, logged lost"
        );
    }

    /// A tier opened in `config`'s folder, with one object stored on disk under the key returned.
    fn holding_one_object(config: &DiskTierConfig) -> (Arc<DiskTier>, TierKey) {
        let tier = DiskTier::start(config, Arc::default(), memory()).unwrap();
        let key = TierKey::of(&pingora_cache::CacheKey::new(b"/a".to_vec(), "site"));
        let store = tier.store.get().unwrap();
        store.segments.put(key.as_bytes(), b"value").unwrap();
        (tier, key)
    }

    /// Publishes `purge` and waits for the tier's answer: its mark written, or why not.
    fn publish_and_wait(tier: &DiskTier, purge: &Purge) -> Result<(), String> {
        match tier.publish(purge)? {
            Some(delivery) => delivery.blocking_recv().expect("the marks writer answers"),
            None => Ok(()),
        }
    }

    /// A purge the tier cannot record is reported, unless a tombstone alone keeps it. The
    /// mark is written on the marks writer's thread: the failure comes through the delivery.
    #[test]
    fn a_purge_that_cannot_be_recorded_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let config = small_config(dir.path());
        let (tier, key) = holding_one_object(&config);
        let store = tier.store.get().unwrap();
        // The marks file now refuses writes (opened read-only).
        let path = dir.path().join("purges.jsonl");
        store.marks.journal.file.lock().file = File::open(&path).unwrap();
        let purge = |target, soft| Purge {
            target,
            at: 1,
            soft,
        };

        // The URL's entry is removed for good, but its variants would come back after a
        // restart: reported failed.
        let url = purge(Target::Key(key.to_hex()), false);
        assert!(
            publish_and_wait(&tier, &url).is_err(),
            "only a mark keeps its variants"
        );
        assert!(!store.segments.contains(key.as_bytes()));
        let soft_url = purge(Target::Key(key.to_hex()), true);
        assert!(
            publish_and_wait(&tier, &soft_url).is_err(),
            "only a mark keeps it"
        );
        let tag = Target::Tag {
            partition: "site".into(),
            tag: "t".into(),
        };
        let err = publish_and_wait(&tier, &purge(tag, false)).unwrap_err();
        assert!(err.contains("cannot record the purge"), "{err}");
        let stats = tier.stats();
        assert_eq!((stats.errors, stats.removed), (3, 1), "{stats:?}");
    }

    /// Holds the marks file for `held` from when this returns, as a `write` the disk does
    /// not finish holds the marks writer; the thread ends when it lets go.
    fn stall_marks_writer(tier: &DiskTier, held: Duration) -> std::thread::JoinHandle<()> {
        let journal = tier.store.get().unwrap().marks.journal.clone();
        let (holding, holds) = std::sync::mpsc::channel();
        let holder = std::thread::spawn(move || {
            let _file = journal.file.lock();
            holding.send(()).unwrap();
            std::thread::sleep(held);
        });
        holds.recv().unwrap();
        holder
    }

    /// A purge of `tag` in `site`, made now.
    fn tag_purge(tag: usize) -> Purge {
        Purge {
            target: Target::Tag {
                partition: "site".into(),
                tag: format!("t{tag}"),
            },
            at: super::super::record::now_ns(),
            soft: false,
        }
    }

    /// A purge does not wait for its mark to be written: a disk slow to take writes held the
    /// request thread that made it, and every request that thread served. Once the queue is
    /// full a purge is refused at once, not written on the caller's thread; the URL's entry
    /// is gone all the same. The marks writer is held up here by the marks file's lock, as a
    /// `write` the disk does not finish holds it.
    #[test]
    fn a_purge_does_not_wait_for_its_mark_to_be_written() {
        let dir = tempfile::tempdir().unwrap();
        let config = small_config(dir.path());
        let (tier, first) = holding_one_object(&config);
        let store = tier.store.get().unwrap();
        let second = TierKey::of(&pingora_cache::CacheKey::new(b"/b".to_vec(), "site"));
        store.segments.put(second.as_bytes(), b"value").unwrap();
        let url = |key: &TierKey| Purge {
            target: Target::Key(key.to_hex()),
            at: super::super::record::now_ns(),
            soft: false,
        };
        let held = store.marks.journal.file.lock();

        let (published, answer) = std::sync::mpsc::channel();
        let purging = tier.clone();
        let (first_url, second_url) = (url(&first), url(&second));
        std::thread::spawn(move || {
            let mut deliveries = vec![purging.publish(&first_url)];
            while deliveries.last().is_some_and(Result::is_ok) && deliveries.len() <= 2 * QUEUE {
                deliveries.push(purging.publish(&tag_purge(deliveries.len())));
            }
            let refused_url = purging.publish(&second_url);
            let _ = published.send((deliveries, refused_url));
        });
        let (mut deliveries, refused_url) = answer
            .recv_timeout(Duration::from_secs(5))
            .expect("a purge waited for its mark to be written");
        assert!(!store.segments.contains(first.as_bytes()), "gone at once");

        let refusal = deliveries.pop().unwrap().unwrap_err();
        assert!(refusal.contains("not keeping up"), "{refusal}");
        // The one the thread is stuck on, and a full queue (or only that, if the thread had
        // not taken the first yet).
        let queued = deliveries.len();
        assert!((QUEUE..=QUEUE + 1).contains(&queued), "{queued} queued");
        assert!(refused_url.is_err(), "refused too");
        assert!(
            !store.segments.contains(second.as_bytes()),
            "removed from the index though its mark was refused"
        );
        assert_eq!(tier.stats().errors, 2);

        drop(held);
        for delivery in deliveries {
            let delivery = delivery.unwrap().expect("the folder is open");
            assert_eq!(delivery.blocking_recv(), Ok(Ok(())));
        }
        let path = dir.path().join("purges.jsonl");
        assert_eq!(marks_file::read_marks(&[&path]).unwrap().len(), queued);
    }

    /// The marks still queued when the tier closes (the disk slow to take them) are written
    /// before it lets go of the folder, so the next start reads them back: left in the queue,
    /// they were lost with the process, and what they purged came back from the disk.
    #[tokio::test]
    async fn marks_queued_when_the_tier_closes_are_read_back_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let config = small_config(dir.path());
        let tier = DiskTier::start(&config, Arc::default(), memory()).unwrap();
        // The disk takes no mark until a moment after the tier begins to close.
        let holder = stall_marks_writer(&tier, Duration::from_millis(300));
        let purges: Vec<Purge> = (0..100).map(purge_of).collect();
        for purge in &purges {
            // Not waited for, as an invalidation's.
            assert!(tier.publish(purge).unwrap().is_some());
        }
        tier.close().await;
        drop(tier);

        let marks = Arc::new(PurgeLog::default());
        let _again = DiskTier::start(&config, marks.clone(), memory()).unwrap();
        for purge in &purges {
            let Target::Key(hex) = &purge.target else {
                unreachable!("purges of URLs")
            };
            let key = TierKey::from_hex(hex).unwrap();
            assert_eq!(
                marks.verdict(&key, &[], purge.at - 1),
                super::super::purges::Verdict::Gone,
                "a mark queued at the close was lost"
            );
        }
        holder.join().unwrap();
    }

    /// Other nodes' purges come in bulk (a reconnect reads up to 65 536 kept marks): past the
    /// marks queue's bound they wait for room, where a request thread's purge is refused, and
    /// every one of them is on disk for the next start.
    #[tokio::test]
    async fn marks_kept_for_other_nodes_in_bulk_all_reach_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let config = small_config(dir.path());
        let tier = DiskTier::start(&config, Arc::default(), memory()).unwrap();
        // The disk takes no mark for a moment: the queue fills.
        let holder = stall_marks_writer(&tier, Duration::from_millis(300));
        let purges: Vec<Purge> = (0..QUEUE + 500).map(purge_of).collect();
        for purge in &purges {
            tier.keep_remote(purge);
        }
        assert_eq!(tier.counters.errors.load(Ordering::Relaxed), 0);
        tier.close().await;
        drop(tier);
        holder.join().unwrap();

        let marks = Arc::new(PurgeLog::default());
        let _again = DiskTier::start(&config, marks.clone(), memory()).unwrap();
        let lost = purges
            .iter()
            .filter(|purge| {
                let Target::Key(hex) = &purge.target else {
                    unreachable!("purges of URLs")
                };
                let key = TierKey::from_hex(hex).unwrap();
                marks.verdict(&key, &[], purge.at - 1) != super::super::purges::Verdict::Gone
            })
            .count();
        assert_eq!(lost, 0, "marks of other nodes' purges lost");
    }

    /// A purge does not wait for the segment writer, which a large `put` holds for the length
    /// of its write: the object is gone at once, its tombstone is written after, and a restart
    /// keeps it gone.
    #[tokio::test]
    async fn a_purge_does_not_wait_for_a_write_in_progress() {
        let dir = tempfile::tempdir().unwrap();
        let config = small_config(dir.path());
        let (tier, key) = holding_one_object(&config);
        let store = tier.store.get().unwrap();
        let purge = Purge {
            target: Target::Key(key.to_hex()),
            at: super::super::record::now_ns(),
            soft: false,
        };
        let writing = store.segments.hold_writer();
        let (published, answer) = std::sync::mpsc::channel();
        let purging = tier.clone();
        std::thread::spawn(move || {
            let _ = published.send(purging.publish(&purge).is_ok());
        });
        let answered = answer.recv_timeout(Duration::from_secs(2));
        assert_eq!(answered, Ok(true), "the purge waited for the writer");
        assert!(!store.segments.contains(key.as_bytes()), "gone at once");
        drop(writing);
        tier.close().await;
        assert_eq!((tier.stats().removed, tier.stats().errors), (1, 0));
        drop(tier);

        let again = DiskTier::start(&config, Arc::default(), memory()).unwrap();
        let segments = &again.store.get().expect("the folder is free").segments;
        assert!(
            !segments.contains(key.as_bytes()),
            "its tombstone was written"
        );
    }

    /// A read the disk does not answer in time is a miss and a counted timeout, not a wait
    /// without end. The blocking pool's one thread is held here, as a hung device holds the
    /// threads its reads run on, and the page cache is emptied, so the read must go there.
    #[test]
    fn a_read_the_disk_does_not_answer_in_time_is_a_counted_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let config = small_config(dir.path());
        let (tier, key) = holding_one_object(&config);
        tier.store.get().unwrap().segments.sync().unwrap();
        for entry in std::fs::read_dir(dir.path().join("segments")).unwrap() {
            let file = File::open(entry.unwrap().path()).unwrap();
            // SAFETY: fadvise on a descriptor `file` owns, for the whole file.
            let advised =
                unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            assert_eq!(advised, 0);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .max_blocking_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (release, held) = std::sync::mpsc::channel::<()>();
            let holding = tokio::task::spawn_blocking(move || held.recv());
            let started = std::time::Instant::now();
            let read = tier.get(&key).await;
            let waited = started.elapsed();
            assert!(read.is_err(), "{read:?}");
            assert!(
                waited >= READ_LIMIT && waited < 3 * READ_LIMIT,
                "{waited:?}"
            );
            release.send(()).unwrap();
            holding.await.unwrap().unwrap();
        });
        assert_eq!(tier.stats().timeouts, 1);
    }

    #[test]
    fn segments_split_the_budget_within_their_bounds() {
        assert_eq!(segment_size(8 << 20), MIN_SEGMENT);
        assert_eq!(segment_size(80 << 20), 10 << 20);
        assert_eq!(segment_size(10 << 30), MAX_SEGMENT);
    }
}
