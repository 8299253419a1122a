//! The disk tier: objects in a foyer block store under `[cache.disk] path`, bounded by
//! `max_bytes`, recovered when cachet starts again on the same path.
//!
//! foyer checksums every entry and drops one whose bytes do not match (a truncated or
//! corrupted file is a miss, and the entry is removed from its index); records are checked
//! again when decoded. Deletions are written to foyer's tombstone log so a removed object does
//! not come back after a restart. Purge marks are kept next to the blocks in `purges.jsonl`.

use super::key::TierKey;
use super::purges::{Purge, MAX_MARKS};
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
use std::path::{Path, PathBuf};
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

pub(crate) struct DiskTier {
    cache: HybridCache<Vec<u8>, Bytes>,
    blocks: PathBuf,
    budget: u64,
    max_value: usize,
    marks_file: Mutex<File>,
    counters: TierCounters,
}

impl DiskTier {
    /// Opens (or creates) the store and reads back its purge marks. Runs on `runtime`, whose
    /// threads then do foyer's flushing and reclaiming.
    pub(crate) fn open(
        config: &DiskTierConfig,
        runtime: &tokio::runtime::Handle,
    ) -> anyhow::Result<(Self, Vec<Purge>)> {
        let blocks = config.path.join("blocks");
        std::fs::create_dir_all(&blocks)
            .with_context(|| format!("creating the disk tier at {}", blocks.display()))?;
        let block = (config.max_bytes / MIN_BLOCKS).clamp(MIN_BLOCK, MAX_BLOCK);
        let device = FsDeviceBuilder::new(&blocks)
            .with_capacity(config.max_bytes)
            .build()
            .context("opening the disk tier's device")?;
        let engine = BlockEngineConfig::new(device)
            .with_block_size(block)
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
        let marks_path = config.path.join("purges.jsonl");
        let marks = read_marks(&marks_path)?;
        let marks_file = rewrite_marks(&marks_path, &marks)?;
        let tier = Self {
            cache,
            blocks,
            budget: config.max_bytes as u64,
            max_value: block.saturating_sub(ENTRY_ROOM),
            marks_file: Mutex::new(marks_file),
            counters: TierCounters::default(),
        };
        Ok((tier, marks))
    }

    /// Waits for queued writes to reach the files (graceful shutdown).
    pub(crate) async fn close(&self) {
        if let Err(e) = self.cache.close().await {
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
        match self.cache.storage().load(key.as_bytes()).await {
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

    async fn put(&self, key: &TierKey, value: Bytes, _lifetime: Duration) -> Result<(), String> {
        if value.len() > self.max_value {
            return Err(format!("{} bytes do not fit a block", value.len()));
        }
        // The returned handle is dropped at once, which hands the entry to the flusher.
        self.cache
            .storage_writer(key.as_bytes().to_vec())
            .force()
            .insert(value);
        Ok(())
    }

    fn remove(&self, key: &TierKey) {
        if self.cache.contains(key.as_bytes()) {
            TierCounters::bump(&self.counters.removed);
        }
        self.cache.remove(key.as_bytes());
    }

    fn publish(&self, purge: &Purge) {
        if let Purge {
            target: super::purges::Target::Key(hex),
            ..
        } = purge
        {
            if let Some(key) = TierKey::from_hex(hex) {
                self.remove(&key);
            }
        }
        let Ok(mut line) = serde_json::to_string(purge) else {
            return;
        };
        line.push('\n');
        if let Err(e) = self.marks_file.lock().write_all(line.as_bytes()) {
            TierCounters::bump(&self.counters.errors);
            tracing::warn!("disk tier: cannot record a purge: {e}");
        }
    }

    fn max_value(&self) -> usize {
        self.max_value
    }

    fn counters(&self) -> &TierCounters {
        &self.counters
    }

    fn stats(&self) -> TierStats {
        let mut stats = TierStats {
            name: self.name(),
            stored_bytes: allocated_bytes(&self.blocks),
            budget_bytes: Some(self.budget),
            connected: true,
            ..TierStats::default()
        };
        self.counters.fill(&mut stats);
        stats
    }
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

/// The purge marks kept from earlier runs; unreadable lines are skipped.
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

/// Writes the kept marks afresh (dropping the excess) and opens the file for appending.
fn rewrite_marks(path: &Path, marks: &[Purge]) -> anyhow::Result<File> {
    let temp = path.with_extension("jsonl.new");
    let mut out = String::new();
    for mark in marks {
        if let Ok(line) = serde_json::to_string(mark) {
            out.push_str(&line);
            out.push('\n');
        }
    }
    std::fs::write(&temp, out).with_context(|| format!("writing {}", temp.display()))?;
    std::fs::rename(&temp, path).with_context(|| format!("replacing {}", path.display()))?;
    OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}
