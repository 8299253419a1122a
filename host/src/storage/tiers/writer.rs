//! Writes to the L2 tiers, off every client's path: fills hand their finished objects to a
//! bounded queue and one task on the tier runtime stores them. A full queue drops the write
//! (counted per tier as `dropped`); the client never waits for a tier.

use super::key::TierKey;
use super::purges::{PurgeLog, Verdict};
use super::tier::{Tier, TierCounters};
use bytes::Bytes;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Objects waiting at most.
const QUEUE_JOBS: usize = 1024;
/// Bytes waiting at most: the queue holds whole bodies.
const QUEUE_BYTES: usize = 64 << 20;

/// One object to store in every tier it fits.
pub(crate) struct Job {
    pub(crate) key: TierKey,
    pub(crate) value: Bytes,
    pub(crate) lifetime: Duration,
    pub(crate) written_at: u64,
    pub(crate) tags: Box<[Box<str>]>,
}

pub(crate) struct Writer {
    queue: mpsc::Sender<Job>,
    queued_bytes: Arc<AtomicUsize>,
    tiers: Arc<[Arc<dyn Tier>]>,
}

impl Writer {
    pub(crate) fn spawn(
        runtime: &tokio::runtime::Handle,
        tiers: Arc<[Arc<dyn Tier>]>,
        purges: Arc<PurgeLog>,
    ) -> Self {
        let (queue, mut jobs) = mpsc::channel::<Job>(QUEUE_JOBS);
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let (task_tiers, task_bytes) = (tiers.clone(), queued_bytes.clone());
        runtime.spawn(async move {
            while let Some(job) = jobs.recv().await {
                store(&task_tiers, &purges, &job).await;
                task_bytes.fetch_sub(job.value.len(), Relaxed);
            }
        });
        Self {
            queue,
            queued_bytes,
            tiers,
        }
    }

    /// Queues `job`, or drops it when the queue is full.
    pub(crate) fn submit(&self, job: Job) {
        let len = job.value.len();
        let before = self.queued_bytes.fetch_add(len, Relaxed);
        let accepted = before + len <= QUEUE_BYTES && self.queue.try_send(job).is_ok();
        if !accepted {
            self.queued_bytes.fetch_sub(len, Relaxed);
            for tier in self.tiers.iter() {
                TierCounters::bump(&tier.counters().dropped);
            }
        }
    }
}

async fn store(tiers: &[Arc<dyn Tier>], purges: &PurgeLog, job: &Job) {
    // A purge that came after the fill started wins over the fill.
    if purges.verdict(&job.key, &job.tags, job.written_at) == Verdict::Gone {
        return;
    }
    for tier in tiers {
        if job.value.len() > tier.max_value() {
            continue;
        }
        let counters = tier.counters();
        match tier.put(&job.key, job.value.clone(), job.lifetime).await {
            Ok(()) => {
                TierCounters::bump(&counters.writes);
                counters
                    .written_bytes
                    .fetch_add(job.value.len() as u64, Relaxed);
            }
            Err(e) => {
                TierCounters::bump(&counters.errors);
                tracing::debug!(tier = tier.name(), "tier write failed: {e}");
            }
        }
    }
}
