//! A fill with L2 tiers: L1's own write, plus the body kept (as shared `Bytes`, not copied)
//! so that the finished object can be queued for the L2 writer.

use super::key::TierKey;
use super::record;
use super::writer::Job;
use super::TieredStorage;
use crate::storage::KeyWatch;
use async_trait::async_trait;
use bytes::Bytes;
use pingora_cache::storage::{HandleMiss, MissFinishType, MissHandler};
use pingora_cache::CacheMeta;
use pingora_error::Result;
use std::time::SystemTime;

pub(crate) struct TieredMiss {
    l1: MissHandler,
    tiers: &'static TieredStorage,
    key: TierKey,
    /// pingora's serialization of the meta, taken when the fill started.
    meta: Option<(Vec<u8>, Vec<u8>)>,
    reason: Option<Box<str>>,
    /// The origin gave no `Content-Length`: the finished body's is added before storing.
    unframed: bool,
    /// The copy is worth keeping in L2 until then (`record::keep_until`).
    keep_until: SystemTime,
    tags: Box<[Box<str>]>,
    written_at: u64,
    /// Purges of the key since the fill began: a purge made on another node reaches this one
    /// through pub/sub, possibly after the origin's head came (so after `written_at`, and
    /// the purge's own mark in L2 does not outdate the copy); it cancels L1's write, and must
    /// keep the copy out of L2 as well.
    watch: KeyWatch,
    /// The body so far; `None` once it outgrew what may be stored.
    body: Option<Vec<Bytes>>,
    body_len: usize,
    /// The most body kept: the tiers' own limit, and the tenant's and the cache's
    /// `max_object_bytes` (a body without a length is only measured as it arrives).
    max_value: usize,
    eof: bool,
}

impl TieredMiss {
    pub(crate) fn new(
        l1: MissHandler,
        tiers: &'static TieredStorage,
        key: TierKey,
        watch: KeyWatch,
        meta: &CacheMeta,
        max_object: usize,
    ) -> Self {
        Self {
            l1,
            tiers,
            key,
            watch,
            meta: meta.serialize().ok(),
            reason: record::own_reason(meta),
            unframed: super::super::meta::needs_length(meta.response_header()),
            keep_until: record::keep_until(meta),
            tags: super::super::tags::parse(meta.headers()),
            written_at: record::now_ns(),
            body: Some(Vec::new()),
            body_len: 0,
            max_value: tiers.max_value().min(max_object),
            eof: false,
        }
    }
}

#[async_trait]
impl HandleMiss for TieredMiss {
    async fn write_body(&mut self, data: Bytes, eof: bool) -> Result<()> {
        if let Some(body) = &mut self.body {
            self.body_len += data.len();
            if self.body_len > self.max_value {
                self.body = None;
            } else if !data.is_empty() {
                body.push(data.clone());
            }
        }
        self.eof |= eof;
        self.l1.write_body(data, eof).await
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let Self {
            l1,
            tiers,
            key,
            meta,
            reason,
            unframed,
            keep_until,
            tags,
            written_at,
            body,
            body_len,
            watch,
            ..
        } = *self;
        let finished = l1.finish().await?;
        if watch.purged() {
            return Ok(finished);
        }
        let meta = match meta {
            // `finish` comes only after the whole body: its length is known.
            Some(bytes) if unframed => Some(with_length(bytes, body_len)),
            meta => meta,
        };
        let lifetime = keep_until.duration_since(SystemTime::now()).ok();
        // Encoding (and cutting large bodies into chunks) happens on the writer task.
        if let (Some((internal, header)), Some(body), Some(lifetime)) = (meta, body, lifetime) {
            tiers.submit(Job {
                key,
                internal,
                header,
                reason,
                body,
                lifetime,
                written_at,
                tags,
            });
        }
        Ok(finished)
    }

    fn streaming_write_tag(&self) -> Option<&[u8]> {
        self.l1.streaming_write_tag()
    }
}

/// The serialized meta with `Content-Length: body_len` added, as L1 stores it
/// (`StoredMeta::with_length`); unchanged if it cannot be re-encoded.
fn with_length((internal, header): (Vec<u8>, Vec<u8>), body_len: usize) -> (Vec<u8>, Vec<u8>) {
    let Ok(mut meta) = CacheMeta::deserialize(&internal, &header) else {
        return (internal, header);
    };
    let added = meta
        .response_header_mut()
        .insert_header(http::header::CONTENT_LENGTH, body_len);
    match added.and_then(|()| meta.serialize()) {
        Ok(framed) => framed,
        Err(_) => (internal, header),
    }
}
