//! Writes to the L2 tiers, off every client's path: fills hand their finished objects to a
//! bounded queue per tier, and each tier's task on the tier runtime stores them. A full queue
//! drops the write (counted per tier as `dropped`); the client never waits for a tier, and
//! no tier waits for another. Encoding happens
//! here too: a large body is cut into chunks one at a time ([`super::chunks`]), written
//! before the head that makes them visible.

use super::chunks;
use super::head_frame;
use super::key::TierKey;
use super::purges::{PurgeLog, Verdict};
use super::record;
use super::tier::{Tier, TierCounters};
use bytes::Bytes;
use pingora_cache::{CacheKey, CacheMeta};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Objects waiting at most.
const QUEUE_JOBS: usize = 1024;
/// Bytes waiting at most: the queue holds whole bodies.
const QUEUE_BYTES: usize = 64 << 20;

/// Chunks outlive their head by this much in a tier that expires values: a response that
/// starts with the head's last moment still streams every chunk (a 64 MiB body read at
/// 1 MB/s takes a minute). With a few seconds, such responses were cut off mid-body, and the
/// object counted corrupt and removed.
const CHUNK_GRACE: Duration = Duration::from_secs(300);

/// One object to store in every tier it fits.
pub(crate) struct Job {
    pub(crate) key: TierKey,
    /// pingora's serialization of the meta (`CacheMeta::serialize`).
    pub(crate) internal: Vec<u8>,
    pub(crate) header: Vec<u8>,
    /// The origin's reason phrase when it is not the status code's canonical one (pingora's
    /// serialization of `header` drops it).
    pub(crate) reason: Option<Box<str>>,
    /// The body as the fill produced it (shared buffers, not copies).
    pub(crate) body: Vec<Bytes>,
    pub(crate) lifetime: Duration,
    pub(crate) written_at: u64,
    pub(crate) tags: Box<[Box<str>]>,
}

impl Job {
    /// The job that stores `key` again with a revalidated `meta`, written as of now (purges
    /// from now on win over it); its body still to be set. `None` when nothing of the
    /// object's lifetime is left or the meta cannot be serialized.
    pub(crate) fn revalidated(key: &CacheKey, meta: &CacheMeta) -> Option<Self> {
        let lifetime = record::lifetime(meta)?;
        let (internal, header) = meta.serialize().ok()?;
        Some(Self {
            key: TierKey::of(key),
            internal,
            header,
            reason: record::own_reason(meta),
            body: Vec::new(),
            lifetime,
            written_at: record::written_at(meta),
            tags: super::super::tags::parse(meta.headers()),
        })
    }

    fn body_len(&self) -> usize {
        self.body.iter().map(Bytes::len).sum()
    }

    /// What the object weighs in a tier (and in the queue).
    pub(crate) fn size(&self) -> usize {
        self.body_len() + self.internal.len() + self.header.len()
    }
}

/// What a tier's writer task is handed: an object, or a request to report once everything
/// queued before it is stored.
enum Message {
    Store(Arc<Job>),
    Flush(oneshot::Sender<()>),
}

/// One task and one bounded queue per tier: a tier that is slow to take writes (a Redis
/// under load waits up to a second per write) holds up its own queue, not the others'.
pub(crate) struct Writer {
    lanes: Vec<Lane>,
}

struct Lane {
    tier: Arc<dyn Tier>,
    queue: mpsc::Sender<Message>,
    /// Bytes of the objects waiting in this queue (an object queued for two tiers is held
    /// once in memory and counted in both).
    queued_bytes: Arc<AtomicUsize>,
}

impl Writer {
    pub(crate) fn spawn(
        runtime: &tokio::runtime::Handle,
        tiers: Arc<[Arc<dyn Tier>]>,
        purges: Arc<PurgeLog>,
    ) -> Self {
        let lanes = tiers
            .iter()
            .map(|tier| Lane::spawn(runtime, tier.clone(), purges.clone()))
            .collect();
        Self { lanes }
    }

    /// Queues `job` for every tier, or drops it for a tier whose queue is full.
    pub(crate) fn submit(&self, job: Job) {
        let job = Arc::new(job);
        for lane in &self.lanes {
            lane.submit(&job);
        }
    }

    /// Returns once every object queued before the call has been handed to its tiers
    /// (shutdown: nothing a client was served is left in the queues).
    pub(crate) async fn flush(&self) {
        let flushes = self.lanes.iter().map(Lane::flush);
        futures::future::join_all(flushes).await;
    }
}

impl Lane {
    fn spawn(runtime: &tokio::runtime::Handle, tier: Arc<dyn Tier>, purges: Arc<PurgeLog>) -> Self {
        let (queue, mut messages) = mpsc::channel::<Message>(QUEUE_JOBS);
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let (task_tier, task_bytes) = (tier.clone(), queued_bytes.clone());
        runtime.spawn(async move {
            while let Some(message) = messages.recv().await {
                match message {
                    Message::Store(job) => {
                        store(&task_tier, &purges, &job).await;
                        task_bytes.fetch_sub(job.size(), Relaxed);
                    }
                    Message::Flush(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        Self {
            tier,
            queue,
            queued_bytes,
        }
    }

    fn submit(&self, job: &Arc<Job>) {
        let len = job.size();
        let before = self.queued_bytes.fetch_add(len, Relaxed);
        let accepted =
            before + len <= QUEUE_BYTES && self.queue.try_send(Message::Store(job.clone())).is_ok();
        if !accepted {
            self.queued_bytes.fetch_sub(len, Relaxed);
            TierCounters::bump(&self.tier.counters().dropped);
        }
    }

    async fn flush(&self) {
        let (done, stored) = oneshot::channel();
        if self.queue.send(Message::Flush(done)).await.is_ok() {
            let _ = stored.await;
        }
    }
}

async fn store(tier: &Arc<dyn Tier>, purges: &PurgeLog, job: &Job) {
    // A purge that came after the fill started wins over the fill.
    if purges.verdict(&job.key, &job.tags, job.written_at) == Verdict::Gone {
        return;
    }
    let size = job.size();
    if size > tier.max_value() {
        TierCounters::bump(&tier.counters().too_large);
        return;
    }
    // Stored uncompressed, so a hit does not pay for zstd (pingora compressed the head).
    let reframed = head_frame::uncompressed(&job.header, job.reason.as_deref());
    let header = reframed.as_deref().unwrap_or(&job.header);
    let started = std::time::Instant::now();
    let head = if job.body_len() <= chunks::SINGLE_MAX {
        record::encode_parts(&job.key, &job.internal, header, &job.body, job.written_at)
    } else {
        store_chunks(tier, job, header).await
    };
    let Some(head) = head else {
        return;
    };
    // The chunks took a while (up to a second each): a purge meanwhile wins, and the head
    // lives no longer than the object would have from the fill, so never past its chunks.
    if purges.verdict(&job.key, &job.tags, job.written_at) == Verdict::Gone {
        return;
    }
    let lifetime = job.lifetime.saturating_sub(started.elapsed());
    if lifetime.is_zero() {
        return;
    }
    let counters = tier.counters();
    match tier.put(&job.key, head, lifetime).await {
        Ok(()) => {
            TierCounters::bump(&counters.writes);
            counters.written_bytes.fetch_add(size as u64, Relaxed);
        }
        Err(e) => write_failed(tier.as_ref(), &e),
    }
}

/// Writes a large body's chunks to `tier`, one chunk in memory at a time. Returns the head to
/// write after them, or `None` when a chunk failed: the tier then gets no head, so its stray
/// chunks are never named and expire or are evicted.
async fn store_chunks(tier: &Arc<dyn Tier>, job: &Job, header: &[u8]) -> Option<Bytes> {
    let body_len = job.body_len();
    let count = chunks::count_for(body_len);
    let mut hashes = Vec::with_capacity(count);
    for index in 0..count {
        let (chunk, hash) = chunks::encode_chunk(&job.body, job.written_at, index);
        hashes.push(hash);
        let name = job.key.chunk(job.written_at, index as u32);
        if let Err(e) = tier.put(&name, chunk, job.lifetime + CHUNK_GRACE).await {
            write_failed(tier.as_ref(), &e);
            return None;
        }
    }
    chunks::encode_head(
        &job.key,
        &job.internal,
        header,
        body_len,
        job.written_at,
        &hashes,
    )
}

/// Counts a failed write in the tier's `errors` and warns, at most once per
/// [`super::tier::WARN_EVERY`]: a full or vanished disk fails every write, and must be seen
/// without flooding the log.
fn write_failed(tier: &dyn Tier, error: &str) {
    TierCounters::bump(&tier.counters().errors);
    if let Some(failures) = tier.counters().write_failures.due(Instant::now()) {
        tracing::warn!(
            tier = tier.name(),
            failures,
            "tier writes failing ({failures} since the last warning): {error}"
        );
    }
}
