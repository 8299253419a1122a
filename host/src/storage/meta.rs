//! How a [`CacheMeta`] is kept so that a hit can hand out its own copy cheaply.
//!
//! `CacheMeta` is not `Clone`, and a full `CacheMeta::deserialize` zstd-decodes the header
//! (~3 µs). Instead we keep an owned copy and rebuild a new one per hit from its accessors and a
//! header clone (~0.4 µs). The public constructor can only reproduce metas whose `updated` and
//! `provenance` equal `created` (every first fill); for the others (revalidated or refreshed
//! entries) we also keep the msgpack-encoded internal fields and decode just those (~0.8 µs).

use crate::proxy::HeadShape;
use http::HeaderValue;
use pingora::http::ResponseHeader;
use pingora_cache::CacheMeta;
use pingora_error::{ErrorType, OrErr, Result};
use std::sync::OnceLock;
use std::time::SystemTime;

/// Weight of everything but the header fields: internal fields, the box and the struct.
const META_OVERHEAD: usize = 256;
/// Weight of one header field beyond its name and value: its `HeaderMap` entry and index slot and
/// the separate allocation each value gets when stored (see [`detached_copy`]).
const FIELD_OVERHEAD: usize = 128;
/// Weight of one purge tag beyond its field's bytes: its own copy here and the tag index's
/// (two allocations of its length), the index's map entry and set of objects. Measured: 64
/// distinct 256-byte tags per object cost ~880 bytes each beyond the header.
const TAG_OVERHEAD: usize = 384;

pub(super) struct StoredMeta {
    /// Owns the response header and the freshness fields.
    template: CacheMeta,
    /// Purge tags, read once from [`super::TAGS_HEADER`].
    tags: Box<[Box<str>]>,
    /// Encoded internal fields, only for metas the constructor cannot reproduce.
    internal: Option<Box<[u8]>>,
    /// What `Age` counts from (the last fill or revalidation, or an override): kept because
    /// the template's own is `created` whenever `internal` is set.
    epoch: SystemTime,
    /// What the lean hit path reads of the header (whether it varies among them), read once
    /// here.
    shape: HeadShape,
    weight: usize,
}

impl StoredMeta {
    pub(super) fn new(meta: &CacheMeta) -> Result<Self> {
        Self::with_header(meta, detached_copy(meta.response_header())?)
    }

    /// [`Self::new`] for a meta an L2 tier's record decoded ([`detach_header`] made its
    /// header): its header is kept as it is, not copied again.
    pub(crate) fn of_decoded(meta: &CacheMeta) -> Result<Self> {
        Self::with_header(meta, meta.response_header().clone())
    }

    /// [`Self::of_decoded`] for a decoded meta that is not used again: its header moves here,
    /// and `meta` is left a header without fields ([`Self::header`] has it).
    pub(crate) fn taking_header(meta: &mut CacheMeta) -> Result<Self> {
        let internal = internal_unless_rebuilt(meta)?;
        let fieldless = ResponseHeader::build_no_case(200, Some(0))?;
        let header = std::mem::replace(meta.response_header_mut(), fieldless);
        Ok(Self::assemble(meta, header, internal))
    }

    fn with_header(meta: &CacheMeta, header: ResponseHeader) -> Result<Self> {
        Ok(Self::assemble(meta, header, internal_unless_rebuilt(meta)?))
    }

    /// The stored meta of `meta`'s internal fields and `header` (which may not be `meta`'s
    /// own any more: every field of the header is read from `header`).
    fn assemble(meta: &CacheMeta, header: ResponseHeader, internal: Option<Box<[u8]>>) -> Self {
        let fields: usize = header
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + FIELD_OVERHEAD)
            .sum();
        let tags = super::tags::parse(&header.headers);
        let tag_weight: usize = tags.iter().map(|t| 2 * t.len() + TAG_OVERHEAD).sum();
        Self {
            shape: HeadShape::of(&header, meta.variance().is_some()),
            template: rebuild(meta, header),
            tags,
            internal,
            epoch: meta.epoch(),
            weight: fields + tag_weight + META_OVERHEAD,
        }
    }

    /// The stored meta with `Content-Length: body_len`, when the origin framed the body
    /// without one (chunked or close-delimited): with a length, a hit can answer a `Range`
    /// and take the lean path. `None` when it has a length already, or its status no content.
    pub(super) fn with_length(&self, body_len: usize) -> Result<Option<Self>> {
        let header = self.template.response_header();
        if !needs_length(header) {
            return Ok(None);
        }
        let mut header = header.clone();
        header.insert_header(http::header::CONTENT_LENGTH, body_len)?;
        let added = "content-length".len() + body_len.to_string().len() + FIELD_OVERHEAD;
        Ok(Some(Self {
            shape: HeadShape::of(&header, self.template.variance().is_some()),
            template: rebuild(&self.template, header),
            tags: self.tags.clone(),
            internal: self.internal.clone(),
            epoch: self.epoch,
            weight: self.weight + added,
        }))
    }

    /// A fresh `CacheMeta` equal to the stored one (extensions are not kept, as pingora allows).
    pub(super) fn to_meta(&self) -> Result<CacheMeta> {
        let Some(internal) = &self.internal else {
            return Ok(rebuild(
                &self.template,
                self.template.response_header().clone(),
            ));
        };
        meta_with_header(internal, self.template.response_header().clone())
    }

    /// When the fill that made this object started (kept through revalidations): which
    /// object a revalidation was about.
    pub(super) fn created(&self) -> SystemTime {
        self.template.created()
    }

    pub(super) fn fresh_until(&self) -> SystemTime {
        self.template.fresh_until()
    }

    /// The stored response header, as every hit starts from it.
    pub(super) fn header(&self) -> &ResponseHeader {
        self.template.response_header()
    }

    pub(super) fn epoch(&self) -> SystemTime {
        self.epoch
    }

    pub(super) fn shape(&self) -> &HeadShape {
        &self.shape
    }

    pub(super) fn tags(&self) -> &[Box<str>] {
        &self.tags
    }

    /// Estimated bytes held; fixed for a given header so freshness edits never change it.
    pub(super) fn weight(&self) -> usize {
        self.weight
    }
}

/// Whether a stored header lacks the `Content-Length` its body could have: a status with
/// content (not 1xx, 204 or 304) and no length field.
pub(crate) fn needs_length(header: &ResponseHeader) -> bool {
    crate::proxy::status_has_content(header.status)
        && !header.headers.contains_key(http::header::CONTENT_LENGTH)
}

fn rebuilds_exactly(meta: &CacheMeta) -> bool {
    meta.updated() == meta.created() && meta.provenance() == meta.created()
}

/// The encoded internal fields, for a meta the public constructor cannot reproduce.
fn internal_unless_rebuilt(meta: &CacheMeta) -> Result<Option<Box<[u8]>>> {
    if rebuilds_exactly(meta) {
        return Ok(None);
    }
    Ok(Some(meta.serialize()?.0.into_boxed_slice()))
}

/// Copy with `header` through the public constructor, which sets `updated` and `provenance` to
/// `created`.
fn rebuild(meta: &CacheMeta, header: ResponseHeader) -> CacheMeta {
    let mut copy = CacheMeta::new(
        meta.fresh_until(),
        meta.created(),
        meta.stale_while_revalidate_sec(),
        meta.stale_if_error_sec(),
        header,
    );
    if let Some(variance) = meta.variance() {
        copy.set_variance(variance);
    }
    if let Some(epoch) = meta.epoch_override() {
        copy.set_epoch_override(epoch);
    }
    copy
}

/// A copy of the header for keeping, detached from the buffers it was parsed from.
///
/// Pingora parses a response header without copying: every value is a slice of one read buffer
/// of at least 4 KiB. A plain clone would keep that whole buffer alive as long as the entry, far
/// more than the entry's weight says (RSS reached 3.8x the budget with 1 KiB objects; see
/// `cargo bench -p cachet --bench memory`), so each value gets its own bytes here.
///
/// The copy also leaves out pingora's second map with the original spelling of field names:
/// every hit clones the stored header twice and writes it once, and without that map each does
/// about half the work. Field names go out lowercase, which HTTP allows (and HTTP/2 requires).
fn detached_copy(header: &ResponseHeader) -> Result<ResponseHeader> {
    let mut copy = ResponseHeader::build_no_case(header.status, Some(header.headers.len()))?;
    copy.set_version(header.version);
    copy.set_reason_phrase(header.get_reason_phrase())?;
    for (name, value) in &header.headers {
        let mut owned = HeaderValue::from_bytes(value.as_bytes())
            .or_err(ErrorType::InvalidHTTPHeader, "stored header value")?;
        owned.set_sensitive(value.is_sensitive());
        copy.append_header(name.clone(), owned)?;
    }
    Ok(copy)
}

/// `CacheMeta::deserialize` of the encoded internal fields, with `header` as its header.
pub(crate) fn meta_with_header(internal: &[u8], header: ResponseHeader) -> Result<CacheMeta> {
    let mut meta = CacheMeta::deserialize(internal, empty_header()?)?;
    *meta.response_header_mut() = header;
    Ok(meta)
}

/// Gives `meta` a header as [`detached_copy`] makes it: for a meta `CacheMeta::deserialize`
/// decoded from a stored head, so every decoded meta of an L2 tier has the same form.
pub(crate) fn detach_header(meta: &mut CacheMeta) -> Result<()> {
    *meta.response_header_mut() = detached_copy(meta.response_header())?;
    Ok(())
}

/// A serialized header without fields: `CacheMeta::deserialize` always decodes a header, and
/// decoding this tiny one before swapping in the real header is far cheaper than the real one.
static EMPTY_HEADER: OnceLock<Box<[u8]>> = OnceLock::new();

fn empty_header() -> Result<&'static [u8]> {
    if let Some(blob) = EMPTY_HEADER.get() {
        return Ok(blob);
    }
    let header = ResponseHeader::build_no_case(200, Some(0))?;
    let epoch = SystemTime::UNIX_EPOCH;
    let (_, compressed) = CacheMeta::new(epoch, epoch, 0, 0, header).serialize()?;
    // Stored, not compressed: decoding it then skips zstd's table set-up.
    let blob = super::tiers::head_frame::uncompressed(&compressed, None).unwrap_or(compressed);
    Ok(EMPTY_HEADER.get_or_init(|| blob.into_boxed_slice()))
}
