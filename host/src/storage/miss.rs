//! Write side of a fill: streams the body to readers as it arrives, stores it when finished.

use super::entry::{Entry, SlotKey};
use super::index::Admission;
use super::meta::StoredMeta;
use super::stats::Counters;
use super::stream::{assemble, Chunk, StreamWriter, WriteStatus};
use super::MemoryStorage;
use async_trait::async_trait;
use bytes::Bytes;
use pingora_cache::storage::{streaming_write::U64WriteId, HandleMiss, MissFinishType};
use pingora_cache::CacheEntryKey;
use pingora_error::Result;
use std::sync::Arc;

/// Charged per received chunk against the object size limit, for its list node, so a body
/// sent in tiny chunks cannot pin far more memory than the limit says.
const CHUNK_OVERHEAD: usize = 96;

pub(super) struct Miss {
    storage: &'static MemoryStorage,
    lru_key: CacheEntryKey,
    slot: SlotKey,
    id: u64,
    tag: U64WriteId,
    meta: Arc<StoredMeta>,
    writer: StreamWriter,
    /// The body from its start, held only while it may still be stored.
    buffered: Option<Arc<Chunk>>,
    body_len: usize,
    /// Body bytes plus chunk overheads, checked against the maximum object size.
    charged: usize,
    /// The maximum object size of this write's partition.
    max_object: usize,
    /// What this write holds of the storage's budget for fills (`reserve_filling`): the
    /// body so far while it may be stored, then what its stream keeps for readers.
    reserved: usize,
    eof: bool,
    finished: bool,
}

impl Miss {
    pub(super) fn new(
        storage: &'static MemoryStorage,
        lru_key: CacheEntryKey,
        id: u64,
        meta: Arc<StoredMeta>,
        writer: StreamWriter,
        head: Arc<Chunk>,
    ) -> Self {
        let max_object = storage.max_object_size(&lru_key.key().user_tag);
        Self {
            max_object,
            storage,
            slot: SlotKey::of_compact(lru_key.key()),
            lru_key,
            id,
            tag: U64WriteId::from(id),
            meta,
            writer,
            buffered: Some(head),
            body_len: 0,
            charged: 0,
            reserved: 0,
            eof: false,
            finished: false,
        }
    }

    /// Whether the body is still buffered to be stored: not once it outgrew the object
    /// limit or the fills' budget was spent.
    pub(super) fn buffering(&self) -> bool {
        self.buffered.is_some()
    }

    fn partition(&self) -> &str {
        &self.lru_key.key().user_tag
    }

    /// Stops buffering a body that outgrew the limit. Readers already following it still get
    /// every chunk, so the client's response is unaffected, unless one falls more than the
    /// limit behind the origin (see `stream`); new lookups miss.
    fn give_up(&mut self) {
        self.buffered = None;
        self.writer.bound_lag(self.max_object);
        let mut index = self.storage.index.write();
        let write = index.take_write(self.partition(), &self.slot, self.id);
        index.count(self.partition(), Counters::rejected);
        drop(index);
        // Frees the chunks no reader needs any more, outside the lock.
        drop(write);
    }

    /// Brings this write's share of the fills' budget to what it holds now. When the budget
    /// is spent, a body being buffered stops being buffered (it will not be stored), and a
    /// stream not stored keeps at most `stream::PRESSED_LAG` for its readers (one further behind
    /// is cut off): fills whose clients left cannot each pin the usual 8 MiB lag floor.
    fn account(&mut self) {
        if self.buffered.is_some() {
            // The object limit is on the body, as the proxy checks `Content-Length` against
            // it before the fill; the per-chunk overhead counts against the fills' budget only
            // (a body just under the limit was buffered whole, then not stored, every time).
            if self.body_len <= self.max_object && self.hold(self.charged) {
                return;
            }
            self.give_up();
        }
        if !self.hold(self.writer.retained()) {
            self.writer.press_lag();
            self.hold_anyway(self.writer.retained());
        }
    }

    /// Makes this write's share `held` bytes; false (and unchanged) when taking more is
    /// beyond the budget.
    fn hold(&mut self, held: usize) -> bool {
        let storage = self.storage;
        if held > self.reserved && !storage.reserve_filling(self.partition(), held - self.reserved)
        {
            return false;
        }
        if held < self.reserved {
            storage.release_filling(self.partition(), self.reserved - held);
        }
        self.reserved = held;
        true
    }

    /// Makes this write's share `held` bytes, past the budget if need be.
    fn hold_anyway(&mut self, held: usize) {
        let storage = self.storage;
        if held > self.reserved {
            storage.force_filling(self.partition(), held - self.reserved);
        } else {
            storage.release_filling(self.partition(), self.reserved - held);
        }
        self.reserved = held;
    }

    fn release_reserved(&mut self) {
        let reserved = std::mem::take(&mut self.reserved);
        self.storage.release_filling(self.partition(), reserved);
    }
}

#[async_trait]
impl HandleMiss for Miss {
    async fn write_body(&mut self, data: Bytes, eof: bool) -> Result<()> {
        // Pingora never writes past the end; if it did, readers were already told the body
        // ended, so drop the data rather than fail the response.
        if self.eof {
            return Ok(());
        }
        if !data.is_empty() {
            self.body_len += data.len();
            self.charged = self.charged.saturating_add(data.len() + CHUNK_OVERHEAD);
            self.writer.push(data);
            // Over the object limit or the budget: never an error (with streaming writes the
            // client is served from this write, and pingora fails the response when a write
            // errors), just not stored.
            self.account();
        }
        if eof {
            self.eof = true;
            self.writer.close(WriteStatus::Done);
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        self.finished = true;
        // Everything has arrived: readers complete whether or not the body is stored.
        self.writer.close(WriteStatus::Done);
        // A body the origin sent without a length is stored with the length it turned out to
        // have (a failure to add it only leaves the entry as it was framed).
        let meta = match self.meta.with_length(self.body_len) {
            Ok(Some(framed)) => Arc::new(framed),
            _ => self.meta.clone(),
        };
        let entry = self.buffered.take().map(|head| {
            let body = assemble(&head, self.body_len);
            Arc::new(Entry::new(meta, body, self.lru_key.clone()))
        });
        // The entry is the index's to account for from here.
        self.release_reserved();
        let mut index = self.storage.index.write();
        let write = index.take_write(self.partition(), &self.slot, self.id);
        let mut stored = 0;
        if let (Some(entry), Some(false)) = (entry, write.as_ref().map(|w| w.cancelled)) {
            let weight = entry.weight;
            if index.insert(self.partition(), self.slot, entry) == Admission::Stored {
                stored = weight;
            }
        }
        drop(index);
        drop(write);
        Ok(MissFinishType::Created(stored))
    }

    fn streaming_write_tag(&self) -> Option<&[u8]> {
        Some(self.tag.as_bytes())
    }
}

impl Drop for Miss {
    /// A write dropped before `finish` failed upstream: readers that have not seen the end get
    /// an error instead of a truncated body, and the partial body is discarded.
    fn drop(&mut self) {
        self.release_reserved();
        if self.finished {
            return;
        }
        if !self.eof {
            self.writer.close(WriteStatus::Aborted);
        }
        let write = self
            .storage
            .index
            .write()
            .take_write(self.partition(), &self.slot, self.id);
        drop(write);
    }
}
