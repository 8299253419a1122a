//! Tombstones written off the request threads.
//!
//! A removal (a URL purge, an expired or damaged copy, a large object's chunks) drops its keys
//! from the index at once, so lookups miss from then on, and hands the tombstones, which only
//! matter after a restart, to a thread of their own. Appending them takes the segment writer's
//! lock, which a large `put` holds for the length of its write: on a request thread, a purge
//! waited for it, and so did every other request that thread was serving.
//!
//! The queue is bounded ([`super::background`]). When it is full (its thread stuck behind a
//! slow disk), the caller writes its tombstones itself, as every removal did before: none is
//! ever dropped.

use super::super::tier::TierCounters;
use super::background::{Background, Refused, FLUSH_WAIT};
use super::segments::{SegmentStore, Tombstones};
use std::sync::Arc;

/// Batches waiting for the thread. Each is a few keys' tombstones, so this is a few hundred
/// KiB at most.
const QUEUE: usize = 1024;

/// Where removals leave their tombstones. Cloning it gives another handle on the same thread.
#[derive(Clone)]
pub(super) struct TombstoneWriter {
    batches: Background<Vec<u8>>,
    segments: Arc<SegmentStore>,
    counters: Arc<TierCounters>,
}

impl TombstoneWriter {
    /// Starts the thread that writes into `segments`; it ends when every handle is dropped.
    /// Failed writes are counted in `counters.errors` and logged.
    pub(super) fn start(
        segments: Arc<SegmentStore>,
        counters: Arc<TierCounters>,
    ) -> std::io::Result<Self> {
        let (store, thread_counters) = (segments.clone(), counters.clone());
        let batches = Background::start("cachet-disk-tomb", QUEUE, move |batch: Vec<u8>| {
            write_batch(&store, &thread_counters, &batch)
        })?;
        Ok(Self {
            batches,
            segments,
            counters,
        })
    }

    /// Queues `tombstones`, or writes them here when the queue is full.
    pub(super) fn write(&self, tombstones: Tombstones) {
        for batch in tombstones.batches {
            if let Err(Refused::Full(batch) | Refused::Stopped(batch)) =
                self.batches.try_queue(batch)
            {
                write_batch(&self.segments, &self.counters, &batch);
            }
        }
    }

    /// Blocks until every tombstone queued so far is written (shutdown), at most
    /// [`FLUSH_WAIT`], waiting for room in the queue included.
    pub(super) fn flush(&self) {
        if !self.batches.flush() {
            tracing::warn!(
                "disk tier: tombstones still queued after {FLUSH_WAIT:?}; purged objects may \
                 come back after the restart"
            );
        }
    }
}

fn write_batch(segments: &SegmentStore, counters: &TierCounters, batch: &[u8]) {
    if let Err(e) = segments.write_tombstones(batch) {
        TierCounters::bump(&counters.errors);
        tracing::warn!("disk tier: writing tombstones: {e}");
    }
}
