//! Tombstones written off the request threads.
//!
//! A removal (a URL purge, an expired or damaged copy, a large object's chunks) drops its keys
//! from the index at once, so lookups miss from then on, and hands the tombstones, which only
//! matter after a restart, to a thread of their own. Appending them takes the segment writer's
//! lock, which a large `put` holds for the length of its write: on a request thread, a purge
//! waited for it, and so did every other request that thread was serving.
//!
//! The queue is bounded ([`super::background`]). When it is full (its thread stuck behind a
//! slow disk), a batch is dropped, counted in the tier's errors and logged: the caller used to
//! write it itself, and a request thread then waited for the disk after all. A tombstone lost
//! this way costs no purge, only bytes: a purged key's copy is hidden by its purge mark
//! (written by the marks writer, which refuses rather than drops); a copy removed as damaged
//! fails its checksum again, one removed for its site is checked again when the tier opens,
//! and a replaced one is shadowed by its newer entry; chunks of a removed object take room
//! until their segment is evicted.

use super::super::tier::{Throttle, TierCounters};
use super::background::{Background, Refused, FLUSH_WAIT};
use super::segments::{SegmentStore, Tombstones};
use std::sync::Arc;
use std::time::Instant;

/// Batches waiting for the thread. Each is a few keys' tombstones, so this is a few hundred
/// KiB at most.
const QUEUE: usize = 1024;

/// Where removals leave their tombstones. Cloning it gives another handle on the same thread.
#[derive(Clone)]
pub(super) struct TombstoneWriter {
    batches: Background<Vec<u8>>,
    segments: Arc<SegmentStore>,
    counters: Arc<TierCounters>,
    /// Batches dropped for want of room, for their throttled warning.
    dropped: Arc<Throttle>,
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
            dropped: Arc::default(),
        })
    }

    /// Queues `tombstones`; drops (counts and logs) those the full queue has no room for.
    pub(super) fn write(&self, tombstones: Tombstones) {
        for batch in tombstones.batches {
            match self.batches.try_queue(batch) {
                Ok(()) => {}
                Err(Refused::Full(_)) => {
                    TierCounters::bump(&self.counters.errors);
                    if let Some(dropped) = self.dropped.due(Instant::now()) {
                        tracing::warn!(
                            "disk tier: dropped {dropped} batch(es) of tombstones, the disk not                              keeping up ({QUEUE} waiting); their objects may take room after a                              restart until evicted"
                        );
                    }
                }
                // The thread has ended (it panicked): nothing else writes them.
                Err(Refused::Stopped(batch)) => write_batch(&self.segments, &self.counters, &batch),
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

#[cfg(test)]
mod tests {
    use super::super::segments::Limits;
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Duration;

    /// With the disk stalled (the segment writer's lock held, as a long write holds it) and the
    /// queue full, a removal returns at once, its tombstones dropped and counted: it used to
    /// write them itself, and the request thread waited for the disk.
    #[test]
    fn a_full_queue_drops_tombstones_and_never_waits_for_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            segment_bytes: 1 << 20,
            max_bytes: 16 << 20,
            max_values: u64::MAX,
        };
        let segments = Arc::new(SegmentStore::open(dir.path(), limits).unwrap());
        let counters = Arc::new(TierCounters::default());
        let writer = TombstoneWriter::start(segments.clone(), counters.clone()).unwrap();
        let keys: Vec<Vec<u8>> = (0..QUEUE as u32 + 8)
            .map(|i| i.to_be_bytes().to_vec())
            .collect();
        for key in &keys {
            segments.put(key, b"v").unwrap();
        }
        let stalled = segments.hold_writer();
        let (done, finished) = std::sync::mpsc::channel();
        let removing = {
            let (segments, writer) = (segments.clone(), writer.clone());
            std::thread::spawn(move || {
                for key in &keys {
                    writer.write(segments.forget_all(&[key]));
                }
                let _ = done.send(());
            })
        };
        let waited = finished.recv_timeout(Duration::from_secs(10));
        assert!(waited.is_ok(), "a removal waited for the stalled disk");
        // One batch taken by the thread (waiting for the lock), QUEUE queued, the rest dropped.
        assert!(counters.errors.load(Relaxed) >= 7, "{:?}", counters.errors);
        drop(stalled);
        removing.join().unwrap();
        writer.flush();
    }
}
