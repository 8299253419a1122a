//! A body being written, shared by one writer and any number of streaming readers.
//!
//! Chunks form a linked list of `Arc`s. Each reader holds the node it read last, and the body is
//! held from its head only while it may still be stored, so once a write stops being buffered
//! (oversize) the chunks behind the slowest reader are freed without any bookkeeping.
//!
//! A reader that stops reading (a client gone while pingora goes on filling, or one that reads
//! slower than the origin sends) would still pin every chunk after its position. So once a
//! write is no longer buffered, the writer lets go of the chunks more than a bound (the
//! maximum object size, at least [`LAG_FLOOR`]) behind the newest: a reader still there gets an
//! error instead of the rest of a body it fell too far behind on.
//!
//! The requesting client reads its own fill from here too, in the same task as the write:
//! pingora alternates at random between storing the next upstream batch and sending what is
//! stored, so even a client that keeps up is briefly behind by a few batches. A read takes
//! every chunk already there ([`READ_BATCH`] at most), and the bound never falls below the
//! floor, so only a reader that really stops keeping up is cut.

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use pingora_error::{Error, ErrorType, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// The least a reader may fall behind a fill that is not stored: several of pingora's
/// upstream batches (up to ~5 reads of 64 KiB each), so the requesting client is never cut
/// for the order pingora happens to run its two halves in.
pub(super) const LAG_FLOOR: usize = 8 << 20;

/// The most one read hands out when several chunks are waiting.
const READ_BATCH: usize = 1 << 20;

/// How far behind a fill not stored a reader may be once the fills in progress hold all the
/// memory they may: a reader that keeps up is a few of pingora's 64 KiB batches behind at
/// most, so only one that stopped (its client gone, or not reading) is cut off.
pub(super) const PRESSED_LAG: usize = READ_BATCH;

pub(super) struct Chunk {
    data: Bytes,
    next: ArcSwapOption<Chunk>,
    /// Set (before `next` is cleared) when the writer let go of the chunks after this one.
    cut: AtomicBool,
}

impl Chunk {
    fn new(data: Bytes) -> Arc<Self> {
        Arc::new(Self {
            data,
            next: ArcSwapOption::empty(),
            cut: AtomicBool::new(false),
        })
    }

    /// The chunks after this one.
    fn iter(&self) -> impl Iterator<Item = Bytes> {
        std::iter::successors(self.next.load_full(), |node| node.next.load_full())
            .map(|node| node.data.clone())
    }
}

impl Drop for Chunk {
    // Unlink iteratively: dropping a long chain recursively would overflow the stack.
    fn drop(&mut self) {
        let mut next = self.next.swap(None);
        while let Some(node) = next {
            next = Arc::into_inner(node).and_then(|node| node.next.swap(None));
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WriteStatus {
    Writing,
    Done,
    Aborted,
}

/// Appends chunks and announces them to readers.
pub(super) struct StreamWriter {
    tail: Arc<Chunk>,
    status: watch::Sender<WriteStatus>,
    /// The oldest chunk readers can still go on from, and the bytes after it up to the tail.
    trail: Arc<Chunk>,
    behind_trail: usize,
    /// Once set, the most bytes a reader may be behind the tail.
    lag_limit: Option<usize>,
}

/// Where new readers start: before the first chunk.
#[derive(Clone)]
pub(super) struct StreamStart {
    pub(super) head: Arc<Chunk>,
    status: watch::Receiver<WriteStatus>,
}

pub(super) fn stream() -> (StreamWriter, StreamStart) {
    // An empty sentinel, so "before the first chunk" is a node like any other.
    let head = Chunk::new(Bytes::new());
    let (status, rx) = watch::channel(WriteStatus::Writing);
    let writer = StreamWriter {
        tail: head.clone(),
        status,
        trail: head.clone(),
        behind_trail: 0,
        lag_limit: None,
    };
    (writer, StreamStart { head, status: rx })
}

impl StreamWriter {
    pub(super) fn push(&mut self, data: Bytes) {
        self.behind_trail += data.len();
        let node = Chunk::new(data);
        // Only this writer appends, so the tail's `next` is always still empty.
        self.tail.next.store(Some(node.clone()));
        self.tail = node;
        if let Some(limit) = self.lag_limit {
            self.let_go_beyond(limit);
        }
        // Bumps the version even though the value is unchanged, which wakes readers.
        self.status.send_replace(WriteStatus::Writing);
    }

    /// From now on, readers more than `limit` bytes behind the newest chunk are cut off (the
    /// body is no longer buffered for storing).
    pub(super) fn bound_lag(&mut self, limit: usize) {
        let limit = limit.max(LAG_FLOOR);
        self.lag_limit = Some(limit);
        self.let_go_beyond(limit);
    }

    /// Lets go of the chunks more than `limit` bytes behind the newest one. The newest is never
    /// let go, and does not count: a chunk larger than the bound (one upstream read of a big
    /// chunk) would otherwise cut off every reader, a caught-up one included, before it could
    /// read a byte of it.
    fn let_go_beyond(&mut self, limit: usize) {
        while self.behind_trail - self.tail.data.len() > limit {
            let Some(next) = self.trail.next.load_full() else {
                break;
            };
            self.behind_trail -= next.data.len();
            let passed = std::mem::replace(&mut self.trail, next);
            // A reader that finds `next` empty checks `cut`: set it first.
            passed.cut.store(true, Ordering::SeqCst);
            passed.next.store(None);
        }
    }

    /// Bytes kept for readers: from the oldest chunk a reader may still go on from to the
    /// newest (the whole body while no lag bound is set).
    pub(super) fn retained(&self) -> usize {
        self.behind_trail
    }

    /// Bounds the lag to [`PRESSED_LAG`] from now on, below the usual floor: for when the
    /// fills in progress hold all the memory they may.
    pub(super) fn press_lag(&mut self) {
        self.lag_limit = Some(PRESSED_LAG);
        self.let_go_beyond(PRESSED_LAG);
    }

    pub(super) fn close(&self, status: WriteStatus) {
        self.status.send_replace(status);
    }
}

impl StreamStart {
    pub(super) fn reader(&self) -> StreamReader {
        StreamReader {
            cur: self.head.clone(),
            status: self.status.clone(),
        }
    }
}

/// Concatenates a finished body into one exactly sized buffer. Copying once here means stored
/// bytes never pin larger upstream read buffers that the chunks may be slices of.
pub(super) fn assemble(head: &Chunk, len: usize) -> Bytes {
    let mut body = Vec::with_capacity(len);
    for data in head.iter() {
        body.extend_from_slice(&data);
    }
    Bytes::from(body)
}

pub(super) struct StreamReader {
    cur: Arc<Chunk>,
    status: watch::Receiver<WriteStatus>,
}

impl StreamReader {
    /// The current chunk and those already linked after it, up to [`READ_BATCH`] bytes, in
    /// one buffer (the chunk itself, uncopied, when it is the only one).
    fn take_waiting(&mut self) -> Bytes {
        let first = self.cur.data.clone();
        let Some(second) = self.cur.next.load_full() else {
            return first;
        };
        if first.len() + second.data.len() > READ_BATCH {
            return first;
        }
        let mut batch =
            bytes::BytesMut::with_capacity(READ_BATCH.min(first.len() * 4 + second.data.len()));
        batch.extend_from_slice(&first);
        let mut next = Some(second);
        while let Some(node) = next {
            if batch.len() + node.data.len() > READ_BATCH {
                break;
            }
            batch.extend_from_slice(&node.data);
            next = node.next.load_full();
            self.cur = node;
        }
        batch.freeze()
    }

    /// The next chunk, `None` at the end of a complete body, or an error if the write was
    /// abandoned: a reader must never mistake a truncated body for a whole one.
    pub(super) async fn next(&mut self) -> Result<Option<Bytes>> {
        loop {
            // Read the status before looking for a chunk: the writer links a chunk before it
            // bumps the status, so a chunk pushed after this read still wakes `changed()`.
            let status = *self.status.borrow_and_update();
            if let Some(next) = self.cur.next.load_full() {
                self.cur = next;
                return Ok(Some(self.take_waiting()));
            }
            if self.cur.cut.load(Ordering::SeqCst) {
                return Error::e_explain(
                    ErrorType::ReadError,
                    "reader fell more than the maximum object size behind a fill not stored",
                );
            }
            match status {
                WriteStatus::Done => return Ok(None),
                WriteStatus::Aborted => {
                    return Error::e_explain(ErrorType::ReadError, "cache fill aborted")
                }
                WriteStatus::Writing => {}
            }
            if self.status.changed().await.is_err() {
                // The writer is gone without closing; any last chunk was linked before that.
                if self.cur.next.load().is_none() {
                    return Error::e_explain(ErrorType::ReadError, "cache fill abandoned");
                }
            }
        }
    }
}
