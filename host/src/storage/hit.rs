//! Read side: serving a stored object, or streaming one still being written.

use super::stream::StreamReader;
use async_trait::async_trait;
use bytes::Bytes;
use pingora_cache::storage::{HandleHit, Storage};
use pingora_cache::trace::SpanHandle;
use pingora_cache::CacheKey;
use pingora_error::{Error, ErrorType, Result};
use std::any::Any;

/// Serves (a range of) a stored body as a slice of the stored buffer: no copy.
pub(super) struct CompleteHit {
    body: Bytes,
    start: usize,
    end: usize,
    done: bool,
}

impl CompleteHit {
    pub(super) fn new(body: Bytes) -> Self {
        let end = body.len();
        Self {
            body,
            start: 0,
            end,
            done: false,
        }
    }
}

#[async_trait]
impl HandleHit for CompleteHit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done || self.start >= self.end {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.start..self.end)))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    /// `end` is exclusive; an end past the body is clamped, as pingora expects. Each seek
    /// rewinds, so one handler serves every part of a multipart range.
    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let len = self.body.len();
        let end = end.map_or(len, |end| end.min(len));
        if start >= end {
            return Error::e_explain(
                ErrorType::InternalError,
                format!("seek {start}..{end} outside a body of {len} bytes"),
            );
        }
        (self.start, self.end, self.done) = (start, end, false);
        Ok(())
    }

    // The storage already counted this access when it looked the entry up.
    fn should_count_access(&self) -> bool {
        false
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// Follows a body as it is written; fails if the write is abandoned.
pub(super) struct StreamingHit {
    reader: StreamReader,
}

impl StreamingHit {
    pub(super) fn new(reader: StreamReader) -> Self {
        Self { reader }
    }
}

#[async_trait]
impl HandleHit for StreamingHit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        self.reader.next().await
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    /// Pingora checks `can_seek` (false) first; this only replaces the trait's `todo!()`.
    fn seek(&mut self, _start: usize, _end: Option<usize>) -> Result<()> {
        Error::e_explain(
            ErrorType::InternalError,
            "cannot seek a body still being written",
        )
    }

    // Not stored yet, so nothing to count.
    fn should_count_access(&self) -> bool {
        false
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}
