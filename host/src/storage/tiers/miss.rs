//! A fill with L2 tiers: L1's own write, plus the body kept (as shared `Bytes`, not copied)
//! so that the finished object can be queued for the L2 writer. The body is kept only while
//! L1's write buffers it too: L1's budget for bodies on their way in bounds both, and a fill
//! L1 stopped buffering (that budget spent, or the body over the object limit) holds no
//! copy for L2 either.

use super::key::TierKey;
use super::record;
use super::writer::Job;
use super::TieredStorage;
use crate::storage::miss::Miss;
use crate::storage::KeyWatch;
use async_trait::async_trait;
use bytes::Bytes;
use pingora_cache::storage::{HandleMiss, MissFinishType};
use pingora_cache::CacheMeta;
use pingora_error::Result;
use std::time::SystemTime;

pub(crate) struct TieredMiss {
    l1: Box<Miss>,
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
    /// A purge came after the fetch began and before the fill was registered.
    purged_before: bool,
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
        l1: Box<Miss>,
        tiers: &'static TieredStorage,
        key: TierKey,
        watch: KeyWatch,
        purged_before: bool,
        meta: &CacheMeta,
        max_object: usize,
    ) -> Self {
        Self {
            l1,
            tiers,
            key,
            watch,
            purged_before,
            meta: meta.serialize().ok(),
            reason: record::own_reason(meta),
            unframed: super::super::meta::needs_length(meta.response_header()),
            keep_until: record::keep_until(meta),
            tags: super::super::tags::parse(meta.headers()),
            written_at: record::written_at(meta),
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
        self.body_len += data.len();
        if let Some(body) = &mut self.body {
            if !data.is_empty() {
                body.push(data.clone());
            }
        }
        self.eof |= eof;
        let written = self.l1.write_body(data, eof).await;
        if self.body_len > self.max_value || !self.l1.buffering() {
            self.body = None;
        }
        written
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
            purged_before,
            ..
        } = *self;
        let finished = l1.finish().await?;
        if purged_before || watch.purged() {
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

#[cfg(test)]
mod tests {
    use super::super::TieredStorage;
    use crate::storage::MemoryStorage;
    use bytes::Bytes;
    use pingora::http::ResponseHeader;
    use pingora_cache::storage::Storage;
    use pingora_cache::trace::Span;
    use pingora_cache::{CacheKey, CacheMeta};
    use std::time::{Duration, SystemTime};

    /// Two fills of 1.5 MiB with a 2 MiB budget for bodies on their way in: L1 stops
    /// buffering the second, and so does its copy for the disk tier (it held the whole body
    /// past any budget); the first reaches the disk.
    #[test]
    fn a_fill_l1_stops_buffering_keeps_no_copy_for_the_l2_tiers() {
        let dir = tempfile::tempdir().unwrap();
        let l1: &'static MemoryStorage = Box::leak(Box::new(MemoryStorage::new(64 << 20, 8 << 20)));
        l1.set_fill_budget(2 << 20);
        let config = super::super::disk_config(dir.path(), 64 << 20, 64 << 20);
        let storage: &'static TieredStorage =
            Box::leak(Box::new(TieredStorage::open(l1, &config).unwrap()));
        let now = SystemTime::now();
        let mut header = ResponseHeader::build(200, None).unwrap();
        header.insert_header("Content-Length", 3 << 19).unwrap();
        let meta = CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, header);
        let key = |path: &str| CacheKey::new(path.as_bytes().to_vec(), "site");
        let piece = Bytes::from(vec![7u8; 256 << 10]);

        let runtime = storage.runtime.as_ref().unwrap();
        runtime.block_on(async {
            let span = Span::inactive().handle();
            let mut first = storage
                .get_miss_handler(&key("/first"), &meta, &span)
                .await
                .unwrap();
            let mut second = storage
                .get_miss_handler(&key("/second"), &meta, &span)
                .await
                .unwrap();
            for i in 0..6 {
                first.write_body(piece.clone(), i == 5).await.unwrap();
            }
            for i in 0..6 {
                second.write_body(piece.clone(), i == 5).await.unwrap();
            }
            first.finish().await.unwrap();
            second.finish().await.unwrap();
            storage.writer.as_ref().unwrap().flush().await;
            let first = storage.find_in_tiers(&key("/first")).await;
            assert!(first.is_some(), "the fill within the budget is on disk");
            let second = storage.find_in_tiers(&key("/second")).await;
            assert!(second.is_none(), "the fill over the budget is not");
        });
        assert_eq!(l1.filling_bytes(), 0);
    }

    /// A purge after the proxy's "purged while fetched" check but before the fill's write is
    /// registered: L1 cancels the write (the purge log still has it), and the L2 tiers take
    /// no copy either. Their copy was dated after the purge, so its mark did not hide it.
    #[test]
    fn a_purge_before_the_fill_registers_keeps_it_out_of_the_l2_tiers_too() {
        use pingora_cache::key::CacheHashKey;
        let dir = tempfile::tempdir().unwrap();
        let l1: &'static MemoryStorage = Box::leak(Box::new(MemoryStorage::new(64 << 20, 8 << 20)));
        let config = super::super::disk_config(dir.path(), 64 << 20, 64 << 20);
        let storage: &'static TieredStorage =
            Box::leak(Box::new(TieredStorage::open(l1, &config).unwrap()));
        let now = SystemTime::now();
        let mut header = ResponseHeader::build(200, None).unwrap();
        header.insert_header("Content-Length", 5).unwrap();
        let meta = CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, header);
        let key = CacheKey::new(b"/raced".to_vec(), "site");

        let runtime = storage.runtime.as_ref().unwrap();
        runtime.block_on(async {
            // Taken by the proxy before it asks the origin.
            let fill = storage.watch_fill("site", key.primary_bin());
            let purged = storage.purge_key(&key).unwrap();
            purged.confirmed().await.unwrap();
            let span = Span::inactive().handle();
            let mut miss = storage.get_miss_handler(&key, &meta, &span).await.unwrap();
            miss.write_body(Bytes::from_static(b"stale"), true)
                .await
                .unwrap();
            miss.finish().await.unwrap();
            drop(fill);
            storage.writer.as_ref().unwrap().flush().await;
            assert!(storage.l1.lookup(&key, &span).await.unwrap().is_none());
            assert!(
                storage.find_in_tiers(&key).await.is_none(),
                "the purged fill reached the disk tier"
            );
        });
    }
}
