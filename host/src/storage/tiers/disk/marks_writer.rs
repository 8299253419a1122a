//! Purge marks appended off the request threads.
//!
//! Every purge is a line of `purges.jsonl` ([`super::marks_file`]), and purges are made on
//! request threads: every successful POST, PUT or DELETE invalidates its URL. The line was
//! written on that thread, so a disk slow to take writes (dirty-page throttling holds a
//! `write` for seconds) held it, and every request it was serving, as long. Now a thread of
//! its own appends the lines, in the order the purges were queued, syncs the file once it has
//! caught up with the queue, and then answers each purge's [`Delivery`]: a PURGE waits for
//! that answer, an invalidation does not.
//!
//! The queue is bounded ([`super::background`]). When it is full (its thread stuck behind the
//! disk), a purge made on a request thread is refused, not written there: the caller reports
//! it not recorded. Marks handed over in bulk off the request threads wait for room instead
//! ([`MarksWriter::append_waiting`]).

use super::super::purges::Purge;
use super::super::tier::{Delivery, Throttle, TierCounters};
use super::background::{Background, Refused, Worker, FLUSH_WAIT};
use super::marks_file::MarksJournal;
use super::segments::SegmentStore;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::oneshot;

/// Purges waiting for the thread. A line is a few hundred bytes, so this holds a flood of
/// POSTs through a disk stalled for seconds in a megabyte or two.
pub(super) const QUEUE: usize = 4096;

/// Why a purge could not be queued because the thread is gone.
const STOPPED: &str = "its writer has stopped";

/// How a purge's append went, told to whoever waits for it.
type Answer = oneshot::Sender<Result<(), String>>;

/// A purge to append, and who hears how it went.
type Job = (Purge, Answer);

/// Where purges leave their marks. Dropping it ends the thread once the queue is written.
pub(super) struct MarksWriter {
    jobs: Background<Job>,
    counters: Arc<TierCounters>,
    /// Purges refused because the queue was full, for their throttled warning.
    refused: Throttle,
    /// The file the thread appends to: tests hold its lock to stall the thread, or replace
    /// it to make appends fail.
    #[cfg(test)]
    pub(super) journal: Arc<MarksJournal>,
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
        let journal = Arc::new(journal);
        let appender = Appender {
            journal: journal.clone(),
            segments,
            counters: counters.clone(),
            unsynced: Vec::new(),
        };
        let jobs = Background::start("cachet-disk-marks", QUEUE, appender)?;
        Ok(Self {
            jobs,
            counters,
            refused: Throttle::default(),
            #[cfg(test)]
            journal,
        })
    }

    /// Queues `purge`; the delivery answers once its line is written. Never waits: when the
    /// queue is full the purge is refused, counted and logged.
    pub(super) fn append(&self, purge: Purge) -> Result<Delivery, String> {
        let (answer, delivery) = oneshot::channel();
        let refused = match self.jobs.try_queue((purge, answer)) {
            Ok(()) => return Ok(delivery),
            Err(Refused::Full(_)) => {
                format!("the disk is not keeping up ({QUEUE} purges waiting)")
            }
            Err(Refused::Stopped(_)) => STOPPED.to_owned(),
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
        match self.jobs.queue_waiting((purge, answer)) {
            Ok(()) => Ok(delivery),
            Err(_) => {
                TierCounters::bump(&self.counters.errors);
                Err(format!("cannot record the purge: {STOPPED}"))
            }
        }
    }

    /// Blocks until every mark queued so far is written (shutdown), at most
    /// [`FLUSH_WAIT`], waiting for room in the queue included.
    pub(super) fn flush(&self) {
        if !self.jobs.flush() {
            tracing::warn!(
                "disk tier: purge marks still queued after {FLUSH_WAIT:?}; what they purged may \
                 be read from the disk again after the restart"
            );
        }
    }
}

/// The thread's work: each mark appended in turn; once the queue is empty, the file synced
/// and the purges answered. A PURGE answered kept is kept through a power loss too, and a run
/// of purges costs one sync, not one each.
struct Appender {
    journal: Arc<MarksJournal>,
    segments: Arc<SegmentStore>,
    counters: Arc<TierCounters>,
    /// Purges appended since the last sync, with how their append went.
    unsynced: Vec<(Purge, Answer, Result<(), String>)>,
}

impl Worker<Job> for Appender {
    fn work(&mut self, (purge, answer): Job) {
        let appended = append(&self.journal, &self.segments, &self.counters, &purge);
        self.unsynced.push((purge, answer, appended));
    }

    fn caught_up(&mut self) {
        if self.unsynced.is_empty() {
            return;
        }
        let synced = self.journal.sync().map_err(|e| {
            TierCounters::bump(&self.counters.errors);
            tracing::warn!("disk tier: cannot sync the purge marks: {e:#}");
            format!("cannot record the purge: {e:#}")
        });
        for (purge, answer, appended) in self.unsynced.drain(..) {
            if appended.is_ok() && synced.is_err() {
                remove_unmarked(&self.segments, &self.counters, &purge);
            }
            // Nobody may be waiting (an invalidation): that is fine.
            let _ = answer.send(appended.and(synced.clone()));
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
    remove_unmarked(segments, counters, purge);
    Err(format!("cannot record the purge: {e:#}"))
}

/// A hard purge of one key whose mark may not last (not appended, or not synced) removes
/// the key again, its tombstone written here: see [`append`].
fn remove_unmarked(segments: &SegmentStore, counters: &TierCounters, purge: &Purge) {
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
}
