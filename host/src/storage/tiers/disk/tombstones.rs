//! Tombstones written off the request threads.
//!
//! A removal (a URL purge, an expired or damaged copy, a large object's chunks) drops its keys
//! from the index at once, so lookups miss from then on, and hands the tombstones, which only
//! matter after a restart, to a thread of their own. Appending them takes the segment writer's
//! lock, which a large `put` holds for the length of its write: on a request thread, a purge
//! waited for it, and so did every other request that thread was serving.
//!
//! The queue is bounded. When it is full (its thread stuck behind a slow disk), the caller
//! writes its tombstones itself, as every removal did before: none is ever dropped.

use super::super::tier::TierCounters;
use super::segments::{SegmentStore, Tombstones};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

/// Batches waiting for the thread. Each is a few keys' tombstones, so this is a few hundred
/// KiB at most.
const QUEUE: usize = 1024;

/// How long shutdown waits for the queued tombstones to be written.
const FLUSH_WAIT: Duration = Duration::from_secs(10);

/// Where removals leave their tombstones. Cloning it gives another handle on the same thread.
#[derive(Clone)]
pub(super) struct TombstoneWriter {
    jobs: SyncSender<Job>,
    segments: Arc<SegmentStore>,
    counters: Arc<TierCounters>,
}

enum Job {
    Write(Vec<u8>),
    /// Answered once every batch queued before it is written.
    Flush(mpsc::Sender<()>),
}

impl TombstoneWriter {
    /// Starts the thread that writes into `segments`; it ends when every handle is dropped.
    /// Failed writes are counted in `counters.errors` and logged.
    pub(super) fn start(
        segments: Arc<SegmentStore>,
        counters: Arc<TierCounters>,
    ) -> std::io::Result<Self> {
        let (jobs, queued) = mpsc::sync_channel(QUEUE);
        let writer = Self {
            jobs,
            segments,
            counters,
        };
        // The thread holds the store and the counters, not a handle on its own queue (which
        // would keep it running forever).
        let (segments, counters) = (writer.segments.clone(), writer.counters.clone());
        std::thread::Builder::new()
            .name("cachet-disk-tomb".into())
            .spawn(move || run(&segments, &counters, queued))?;
        Ok(writer)
    }

    /// Queues `tombstones`, or writes them here when the queue is full.
    pub(super) fn write(&self, tombstones: Tombstones) {
        for batch in tombstones.batches {
            let Err(refused) = self.jobs.try_send(Job::Write(batch)) else {
                continue;
            };
            let (TrySendError::Full(job) | TrySendError::Disconnected(job)) = refused;
            if let Job::Write(batch) = job {
                write_batch(&self.segments, &self.counters, &batch);
            }
        }
    }

    /// Blocks until every tombstone queued so far is written (shutdown), at most
    /// [`FLUSH_WAIT`].
    pub(super) fn flush(&self) {
        let (done, answered) = mpsc::channel();
        if self.jobs.send(Job::Flush(done)).is_err() {
            return;
        }
        if answered.recv_timeout(FLUSH_WAIT).is_err() {
            tracing::warn!(
                "disk tier: tombstones still queued after {FLUSH_WAIT:?}; purged objects may come back after the restart"
            );
        }
    }
}

fn run(segments: &SegmentStore, counters: &TierCounters, queued: Receiver<Job>) {
    for job in queued {
        match job {
            Job::Write(batch) => write_batch(segments, counters, &batch),
            Job::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

fn write_batch(segments: &SegmentStore, counters: &TierCounters, batch: &[u8]) {
    if let Err(e) = segments.write_tombstones(batch) {
        TierCounters::bump(&counters.errors);
        tracing::warn!("disk tier: writing tombstones: {e}");
    }
}
