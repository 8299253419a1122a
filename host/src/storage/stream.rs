//! A body being written, shared by one writer and any number of streaming readers.
//!
//! Chunks form a linked list of `Arc`s. Each reader holds the node it read last, and the body is
//! held from its head only while it may still be stored, so once a write stops being buffered
//! (oversize) the chunks behind the slowest reader are freed without any bookkeeping.

use bytes::Bytes;
use pingora_error::{Error, ErrorType, Result};
use std::sync::{Arc, OnceLock};
use tokio::sync::watch;

pub(super) struct Chunk {
    data: Bytes,
    next: OnceLock<Arc<Chunk>>,
}

impl Chunk {
    fn new(data: Bytes) -> Arc<Self> {
        Arc::new(Self {
            data,
            next: OnceLock::new(),
        })
    }

    /// The chunks after this one.
    fn iter(&self) -> impl Iterator<Item = &Bytes> {
        std::iter::successors(self.next.get(), |node| node.next.get()).map(|node| &node.data)
    }
}

impl Drop for Chunk {
    // Unlink iteratively: dropping a long chain recursively would overflow the stack.
    fn drop(&mut self) {
        let mut next = self.next.take();
        while let Some(node) = next {
            next = Arc::into_inner(node).and_then(|mut node| node.next.take());
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
    };
    (writer, StreamStart { head, status: rx })
}

impl StreamWriter {
    pub(super) fn push(&mut self, data: Bytes) {
        let node = Chunk::new(data);
        // Only this writer appends, so the tail's `next` is always still empty.
        let _ = self.tail.next.set(node.clone());
        self.tail = node;
        // Bumps the version even though the value is unchanged, which wakes readers.
        self.status.send_replace(WriteStatus::Writing);
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
        body.extend_from_slice(data);
    }
    Bytes::from(body)
}

pub(super) struct StreamReader {
    cur: Arc<Chunk>,
    status: watch::Receiver<WriteStatus>,
}

impl StreamReader {
    /// The next chunk, `None` at the end of a complete body, or an error if the write was
    /// abandoned: a reader must never mistake a truncated body for a whole one.
    pub(super) async fn next(&mut self) -> Result<Option<Bytes>> {
        loop {
            // Read the status before looking for a chunk: the writer links a chunk before it
            // bumps the status, so a chunk pushed after this read still wakes `changed()`.
            let status = *self.status.borrow_and_update();
            if let Some(next) = self.cur.next.get().cloned() {
                let data = next.data.clone();
                self.cur = next;
                return Ok(Some(data));
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
                if self.cur.next.get().is_none() {
                    return Error::e_explain(ErrorType::ReadError, "cache fill abandoned");
                }
            }
        }
    }
}
