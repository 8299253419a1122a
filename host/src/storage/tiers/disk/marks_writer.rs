//! Purge marks appended off the request threads.
//!
//! Every purge is a line of `purges.jsonl` ([`super::marks_file`]), and purges are made on
//! request threads: every successful POST, PUT or DELETE invalidates its URL. The line was
//! written on that thread, so a disk slow to take writes (dirty-page throttling holds a
//! `write` for seconds) held it, and every request it was serving, as long. Now a thread of
//! its own appends the lines, in the order the purges were queued, and answers each purge's
//! [`Delivery`] once its line is written or failed: a PURGE waits for that answer, an
//! invalidation does not.
//!
//! The queue is bounded. When it is full (its thread stuck behind the disk), a purge is
//! refused, not written on the request thread: the caller reports it not recorded.

use super::super::purges::Purge;
use super::super::tier::{Delivery, Throttle, TierCounters};
use super::marks_file::MarksJournal;
use super::segments::SegmentStore;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Purges waiting for the thread. A line is a few hundred bytes, so this holds a flood of
/// POSTs through a disk stalled for seconds in a megabyte or two.
pub(super) const QUEUE: usize = 4096;

/// How long shutdown waits for the queued marks to be written.
const FLUSH_WAIT: Duration = Duration::from_secs(10);

/// Where purges leave their marks. Dropping it ends the thread once the queue is written.
pub(super) struct MarksWriter {
    jobs: SyncSender<Job>,
    counters: Arc<TierCounters>,
    /// Purges refused because the queue was full, for their throttled warning.
    refused: Throttle,
    /// The file the thread appends to: tests hold its lock to stall the thread, or replace
    /// it to make appends fail.
    #[cfg(test)]
    pub(super) journal: Arc<MarksJournal>,
}

enum Job {
    Append {
        purge: Purge,
        answer: oneshot::Sender<Result<(), String>>,
    },
    /// Answered once every mark queued before it is written.
    Flush(mpsc::Sender<()>),
}

impl MarksWriter {
    /// Starts the thread that appends to `journal`. A failed append is counted in
    /// `counters.errors` and logged; a hard purge of one key then removes that key from
    /// `segments` for good (see [`append`]).
    pub(super) fn start(
        journal: MarksJournal,
        segments: Arc<SegmentStore>,
        counters: Arc<TierCounters>,
    ) -> std::io::Result<Self> {
        let (jobs, queued) = mpsc::sync_channel(QUEUE);
        let journal = Arc::new(journal);
        let writer = Self {
            jobs,
            counters: counters.clone(),
            refused: Throttle::default(),
            #[cfg(test)]
            journal: journal.clone(),
        };
        // The thread holds no handle on its own queue (which would keep it running forever).
        std::thread::Builder::new()
            .name("cachet-disk-marks".into())
            .spawn(move || run(&journal, &segments, &counters, queued))?;
        Ok(writer)
    }

    /// Queues `purge`; the delivery answers once its line is written. Never waits: when the
    /// queue is full the purge is refused, counted and logged.
    pub(super) fn append(&self, purge: Purge) -> Result<Delivery, String> {
        let (answer, delivery) = oneshot::channel();
        let refused = match self.jobs.try_send(Job::Append { purge, answer }) {
            Ok(()) => return Ok(delivery),
            Err(TrySendError::Full(_)) => {
                format!("the disk is not keeping up ({QUEUE} purges waiting)")
            }
            Err(TrySendError::Disconnected(_)) => "its writer has stopped".to_owned(),
        };
        TierCounters::bump(&self.counters.errors);
        if let Some(refusals) = self.refused.due(Instant::now()) {
            tracing::warn!("disk tier: cannot record {refusals} purge(s): {refused}");
        }
        Err(format!("cannot record the purge: {refused}"))
    }

    /// Queues `purge`, waiting for room: for callers on no request thread that hand over
    /// marks in bulk (the kept marks another node's purges left in Redis, up to 65 536 at a
    /// reconnect; the purges made while the folder opened), which the bounded queue refused
    /// past its 4096th. They wrote each mark themselves before this thread existed.
    pub(super) fn append_waiting(&self, purge: Purge) -> Result<Delivery, String> {
        let (answer, delivery) = oneshot::channel();
        match self.jobs.send(Job::Append { purge, answer }) {
            Ok(()) => Ok(delivery),
            Err(_) => {
                TierCounters::bump(&self.counters.errors);
                Err("cannot record the purge: its writer has stopped".to_owned())
            }
        }
    }

    /// Blocks until every mark queued so far is written (shutdown), at most [`FLUSH_WAIT`],
    /// waiting for room in the queue included.
    pub(super) fn flush(&self) {
        let deadline = Instant::now() + FLUSH_WAIT;
        let (done, answered) = mpsc::channel();
        let mut job = Job::Flush(done);
        let written = loop {
            match self.jobs.try_send(job) {
                Ok(()) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    break answered.recv_timeout(left).is_ok();
                }
                Err(TrySendError::Disconnected(_)) => break true,
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    job = back;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(TrySendError::Full(_)) => break false,
            }
        };
        if !written {
            tracing::warn!(
                "disk tier: purge marks still queued after {FLUSH_WAIT:?}; what they purged may \
                 be read from the disk again after the restart"
            );
        }
    }
}

fn run(
    journal: &MarksJournal,
    segments: &SegmentStore,
    counters: &TierCounters,
    queued: Receiver<Job>,
) {
    for job in queued {
        match job {
            Job::Append { purge, answer } => {
                let appended = append(journal, segments, counters, &purge);
                // Nobody may be waiting (an invalidation): that is fine.
                let _ = answer.send(appended);
            }
            Job::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// Appends one mark. On failure, a hard purge of one key removes that key again, its
/// tombstone written here: the purge dropped it from the index when it was made, but a copy
/// stored under it since (a fill that checked the marks just before the purge) would
/// otherwise come back after a restart, with no mark to hide it. Its variants, stored under
/// keys of their own, only the mark covers: the purge is reported failed.
fn append(
    journal: &MarksJournal,
    segments: &SegmentStore,
    counters: &TierCounters,
    purge: &Purge,
) -> Result<(), String> {
    let Err(e) = journal.append(purge) else {
        return Ok(());
    };
    TierCounters::bump(&counters.errors);
    tracing::warn!("disk tier: cannot record a purge: {e:#}");
    if let Some(key) = super::removed_key(purge) {
        match segments.remove(key.as_bytes()) {
            Ok(true) => TierCounters::bump(&counters.removed),
            Ok(false) => {}
            Err(e) => {
                TierCounters::bump(&counters.errors);
                tracing::warn!("disk tier: removing an object: {e}");
            }
        }
    }
    Err(format!("cannot record the purge: {e:#}"))
}
