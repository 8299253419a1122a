//! The disk tier: objects in a foyer block store under `[cache.disk] path`, bounded by
//! `max_bytes`, recovered when cachet starts again on the same path.
//!
//! foyer checksums every entry and drops one whose bytes do not match (a truncated or
//! corrupted file is a miss, and the entry is removed from its index); records are checked
//! again when decoded. Deletions are written to foyer's tombstone log so a removed object does
//! not come back after a restart. Purge marks are kept next to the blocks in `purges.jsonl`.
//!
//! One process owns the folder at a time (an exclusive `flock` on `path/lock`). During a
//! graceful upgrade the new process starts while the old one drains: it runs without the disk
//! tier until the old process exits and releases the lock, then opens it.

use super::key::TierKey;
use super::purges::{Purge, PurgeLog, Target, MAX_MARKS};
use super::tier::{Tier, TierCounters, TierStats};
use crate::config::DiskTierConfig;
use anyhow::Context;
use async_trait::async_trait;
use bytes::Bytes;
use foyer::{
    BlockEngineConfig, DeviceBuilder, FsDeviceBuilder, HybridCache, HybridCacheBuilder,
    HybridCachePolicy, Load, RecoverMode,
};
use parking_lot::Mutex;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Largest foyer block: a block is the unit foyer evicts, and bounds the largest entry.
const MAX_BLOCK: usize = 16 << 20;
/// Smallest block worth having.
const MIN_BLOCK: usize = 1 << 20;
/// Blocks the budget is split into at least, so eviction frees a small share at a time.
const MIN_BLOCKS: usize = 8;
/// Room an entry needs in its block beyond the value: foyer's entry header and the key.
const ENTRY_ROOM: usize = 4096;
/// foyer's own memory layer only passes writes through (cachet's L1 is the memory tier).
const FOYER_MEMORY: usize = 1 << 20;
/// foyer silently drops what is submitted while more than 16 MiB (its default
/// `submit_queue_size_threshold`) wait for its flushers. The writer waits for them after
/// every this many bytes instead, so a backlog stays in cachet's bounded queue, where a
/// dropped write is counted. Half the threshold leaves room for one more value (≤ 1 MiB).
const FLUSH_EVERY: usize = 8 << 20;

pub(crate) struct DiskTier {
    config: DiskTierConfig,
    max_value: usize,
    /// Set once this process owns the folder.
    store: OnceLock<Store>,
    /// Purges made before the store was open, written to its marks file when it opens.
    pending_marks: Mutex<Vec<Purge>>,
    counters: TierCounters,
    /// Bytes handed to foyer since its flushers last caught up (see [`FLUSH_EVERY`]).
    unflushed: AtomicUsize,
}

struct Store {
    cache: HybridCache<Vec<u8>, Bytes>,
    blocks: PathBuf,
    marks: Mutex<MarksFile>,
    /// Held for the life of the process: the folder's exclusive lock.
    _lock: File,
}

struct MarksFile {
    path: PathBuf,
    file: File,
    lines: usize,
}

impl DiskTier {
    /// Opens the store now if the folder is free; otherwise opens it from a background thread
    /// as soon as the process holding it exits. The marks of earlier runs go into `marks`.
    pub(crate) fn start(
        config: &DiskTierConfig,
        runtime: &tokio::runtime::Handle,
        marks: Arc<PurgeLog>,
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
        let block = block_size(config.max_bytes);
        let tier = Arc::new(Self {
            config: config.clone(),
            max_value: block.saturating_sub(ENTRY_ROOM),
            store: OnceLock::new(),
            pending_marks: Mutex::default(),
            counters: TierCounters::default(),
            unflushed: AtomicUsize::new(0),
        });
        if flock(&lock, libc::LOCK_EX | libc::LOCK_NB) {
            tier.open(lock, runtime, &marks)?;
            return Ok(tier);
        }
        tracing::warn!(
            path = %config.path.display(),
            "the disk tier is in use by another cachet (a graceful upgrade?): it opens when that process exits"
        );
        let (waiting, runtime) = (tier.clone(), runtime.clone());
        std::thread::Builder::new()
            .name("cachet-disk-wait".into())
            .spawn(move || {
                if !flock(&lock, libc::LOCK_EX) {
                    tracing::error!("disk tier: cannot lock its folder; running without it");
                    return;
                }
                match waiting.open(lock, &runtime, &marks) {
                    Ok(()) => tracing::info!("disk tier opened"),
                    Err(e) => tracing::error!("disk tier: {e:#}; running without it"),
                }
            })
            .context("starting the disk tier's waiting thread")?;
        Ok(tier)
    }

    /// Opens the block store and the marks file, holding `lock`.
    fn open(
        &self,
        lock: File,
        runtime: &tokio::runtime::Handle,
        marks: &PurgeLog,
    ) -> anyhow::Result<()> {
        let blocks = self.config.path.join("blocks");
        std::fs::create_dir_all(&blocks)
            .with_context(|| format!("creating {}", blocks.display()))?;
        let device = FsDeviceBuilder::new(&blocks)
            .with_capacity(self.config.max_bytes)
            .build()
            .context("opening the disk tier's device")?;
        let engine = BlockEngineConfig::new(device)
            .with_block_size(block_size(self.config.max_bytes))
            .with_tombstone_log(true);
        let cache = runtime
            .block_on(
                HybridCacheBuilder::new()
                    .with_name("cachet-disk")
                    // Writes are phantom entries: dropping the handle hands them to the
                    // disk once (writing on insertion as well would write them twice).
                    .with_policy(HybridCachePolicy::WriteOnEviction)
                    .memory(FOYER_MEMORY)
                    .with_weighter(|key: &Vec<u8>, value: &Bytes| key.len() + value.len())
                    .storage()
                    .with_engine_config(engine)
                    .with_recover_mode(RecoverMode::Quiet)
                    .with_spawner(runtime.clone().into())
                    .build(),
            )
            .context("opening the disk tier's block store")?;
        let path = self.config.path.join("purges.jsonl");
        let mut kept = read_marks(&path)?;
        kept.append(&mut self.pending_marks.lock());
        for mark in &kept {
            marks.record(mark);
        }
        let file = rewrite_marks(&path, &kept)?;
        let store = Store {
            cache,
            blocks,
            marks: Mutex::new(MarksFile {
                path,
                file,
                lines: kept.len(),
            }),
            _lock: lock,
        };
        if self.store.set(store).is_err() {
            anyhow::bail!("the disk tier was opened twice");
        }
        Ok(())
    }

    /// Waits for buffered writes to reach the files (shutdown).
    pub(crate) async fn close(&self) {
        let Some(store) = self.store.get() else {
            return;
        };
        if let Err(e) = store.cache.close().await {
            tracing::warn!("closing the disk tier: {e}");
        }
    }
}

#[async_trait]
impl Tier for DiskTier {
    fn name(&self) -> &'static str {
        "l2-disk"
    }

    async fn get(&self, key: &TierKey) -> Result<Option<Bytes>, String> {
        let Some(store) = self.store.get() else {
            return Ok(None);
        };
        match store.cache.storage().load(key.as_bytes()).await {
            Ok(Load::Entry { value, .. }) => Ok(Some(value)),
            Ok(Load::Piece { piece, .. }) => Ok(Some(piece.value().clone())),
            Ok(Load::Miss) | Ok(Load::Throttled) => Ok(None),
            Err(e) => {
                // An entry that cannot be read is as good as corrupt: forget it.
                self.remove(key);
                Err(e.to_string())
            }
        }
    }

    async fn contains_all(&self, keys: &[TierKey]) -> Result<bool, String> {
        let Some(store) = self.store.get() else {
            return Ok(false);
        };
        Ok(keys.iter().all(|key| store.cache.contains(key.as_bytes())))
    }

    fn remove_chunks(&self, keys: &[TierKey]) {
        if let Some(store) = self.store.get() {
            for key in keys {
                store.cache.remove(key.as_bytes());
            }
        }
    }

    async fn put(&self, key: &TierKey, value: Bytes, _lifetime: Duration) -> Result<(), String> {
        let Some(store) = self.store.get() else {
            return Err("not open yet (another process holds the folder)".into());
        };
        if value.len() > self.max_value {
            return Err(format!("{} bytes do not fit a block", value.len()));
        }
        let len = value.len();
        // The returned handle is dropped at once, which hands the entry to the flusher.
        store
            .cache
            .storage_writer(key.as_bytes().to_vec())
            .force()
            .insert(value);
        if self.unflushed.fetch_add(len, Relaxed) + len >= FLUSH_EVERY {
            self.unflushed.store(0, Relaxed);
            store.cache.storage().wait().await;
        }
        Ok(())
    }

    fn remove(&self, key: &TierKey) {
        let Some(store) = self.store.get() else {
            return;
        };
        if store.cache.contains(key.as_bytes()) {
            TierCounters::bump(&self.counters.removed);
        }
        store.cache.remove(key.as_bytes());
    }

    fn publish(&self, purge: &Purge) {
        let Some(store) = self.store.get() else {
            self.pending_marks.lock().push(purge.clone());
            return;
        };
        if let Target::Key(hex) = &purge.target {
            if let Some(key) = TierKey::from_hex(hex) {
                self.remove(&key);
            }
        }
        if let Err(e) = store.marks.lock().append(purge) {
            TierCounters::bump(&self.counters.errors);
            tracing::warn!("disk tier: cannot record a purge: {e:#}");
        }
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
            stored_bytes: store.map_or(0, |s| allocated_bytes(&s.blocks)),
            budget_bytes: Some(self.config.max_bytes as u64),
            connected: store.is_some(),
            ..TierStats::default()
        };
        self.counters.fill(&mut stats);
        stats
    }
}

impl MarksFile {
    /// Appends one mark; past twice the kept number, rewrites the file with the newest.
    fn append(&mut self, purge: &Purge) -> anyhow::Result<()> {
        let mut line = serde_json::to_string(purge)?;
        line.push('\n');
        self.file.write_all(line.as_bytes())?;
        self.lines += 1;
        if self.lines > 2 * MAX_MARKS {
            let kept = read_marks(&self.path)?;
            self.file = rewrite_marks(&self.path, &kept)?;
            self.lines = kept.len();
        }
        Ok(())
    }
}

fn block_size(max_bytes: usize) -> usize {
    (max_bytes / MIN_BLOCKS).clamp(MIN_BLOCK, MAX_BLOCK)
}

fn flock(file: &File, operation: libc::c_int) -> bool {
    // SAFETY: flock on a descriptor this File owns; no memory is shared with the call.
    unsafe { libc::flock(file.as_raw_fd(), operation) == 0 }
}

/// Bytes the tier's files occupy on disk.
fn allocated_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

/// The newest purge marks kept from earlier runs; unreadable lines are skipped.
fn read_marks(path: &Path) -> anyhow::Result<Vec<Purge>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut marks: Vec<Purge> = BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| serde_json::from_str(&line).ok())
        .collect();
    let excess = marks.len().saturating_sub(MAX_MARKS);
    marks.drain(..excess);
    Ok(marks)
}

/// Writes `marks` afresh and opens the file for appending.
fn rewrite_marks(path: &Path, marks: &[Purge]) -> anyhow::Result<File> {
    let temp = path.with_extension("jsonl.new");
    let mut out = String::new();
    for mark in marks {
        out.push_str(&serde_json::to_string(mark)?);
        out.push('\n');
    }
    std::fs::write(&temp, out).with_context(|| format!("writing {}", temp.display()))?;
    std::fs::rename(&temp, path).with_context(|| format!("replacing {}", path.display()))?;
    OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}
