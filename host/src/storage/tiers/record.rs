//! An object as the L2 tiers keep it: one value holding pingora's own serialization of the
//! meta (freshness, stale windows, variance, the header with its purge tags; the header
//! re-framed uncompressed by [`super::head_frame`]) and the body.
//! Bodies over [`chunks::SINGLE_MAX`] are stored as a head and chunks instead ([`chunks`]).
//!
//! `[magic "CTR3" (4), key digest (8), written_at ns (8), internal len (4), header len (4),
//! body len (8), crc32 (4), internal, header, body]`. The CRC-32 covers every other byte of the
//! value, so a flipped bit anywhere is found, as the disk tier's entries and the chunks of large
//! bodies are; the lengths are checked too. A record read from the disk tier, whose entry
//! checksum covers the same bytes and was checked by the read, is not summed a second time. The key digest ([`TierKey::digest`]) names the key
//! the record was written under: Redis keys are only names, and a value copied onto another
//! object's (or tenant's) name must not be served there. A value that does not check out, or
//! was written for another key, is [`DecodeError::Corrupt`], which the tier layer counts, treats
//! as a miss and removes. A record of another version is [`DecodeError::Outdated`]: a miss the
//! next fill replaces ("CTR1" had no checksum). The version before the key digest ("CTR2",
//! and the chunked head "CTH1": the same layout without it) is still read from a tier that
//! checks each value's key itself ([`KeyCheck::Tier`], the disk tier), so objects stored
//! before an upgrade stay hits there; from Redis it is Outdated.

use super::super::internal_fields::InternalFields;
use super::super::meta;
use super::chunks::{self, Plan};
use super::head_frame;
use super::key::TierKey;
use bytes::{BufMut, Bytes, BytesMut};
use pingora_cache::CacheMeta;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MAGIC: &[u8; 4] = b"CTR3";
/// The version before the key digest: the same layout without it.
const UNKEYED_MAGIC: &[u8; 4] = b"CTR2";
/// What every version's magic starts with, a whole record's or a chunked head's.
const FAMILIES: [&[u8; 3]; 2] = [b"CTR", b"CTH"];
/// Where the checksum is: after the lengths, before the data.
const CRC_AT: usize = 4 + 8 + 8 + 4 + 4 + 8;
const FIXED: usize = CRC_AT + 4;

/// A decoded object.
pub(crate) struct Record {
    pub(crate) meta: CacheMeta,
    pub(crate) body: Body,
    /// When the fill that produced it started (ns since the epoch): purges recorded later win.
    pub(crate) written_at: u64,
}

/// Why a stored value is not an object to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// A record of another format version: a miss, not damage.
    Outdated,
    /// Truncated, altered or not a cachet object at all.
    Corrupt(String),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Outdated => f.write_str("a record of another format version"),
            Self::Corrupt(why) => f.write_str(why),
        }
    }
}

/// What makes sure a value read under a key was written for that key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyCheck {
    /// The tier: it keeps each value's key and checksum and checks both on every read (the
    /// disk tier), so the record's own checksum is not computed again. Records of the version
    /// before the key digest are read too.
    Tier,
    /// The record's key digest alone (Redis, whose keys are only names).
    Digest,
}

/// Where a decoded object's body is.
pub(crate) enum Body {
    /// In the value itself (a slice of it).
    Whole(Bytes),
    /// In chunks, read as the client reads.
    Chunked(Plan),
}

/// Encodes a meta pingora already serialized (`CacheMeta::serialize`) and a body.
pub(crate) fn encode_parts(
    key: &TierKey,
    internal: &[u8],
    header: &[u8],
    body: &[Bytes],
    written_at: u64,
) -> Option<Bytes> {
    let body_len: usize = body.iter().map(Bytes::len).sum();
    let mut out = BytesMut::with_capacity(FIXED + internal.len() + header.len() + body_len);
    out.put_slice(MAGIC);
    out.put_u64(key.digest());
    out.put_u64(written_at);
    out.put_u32(u32::try_from(internal.len()).ok()?);
    out.put_u32(u32::try_from(header.len()).ok()?);
    out.put_u64(body_len as u64);
    out.put_u32(0);
    out.put_slice(internal);
    out.put_slice(header);
    for chunk in body {
        out.put_slice(chunk);
    }
    let crc = checksum(&out, CRC_AT);
    out[CRC_AT..FIXED].copy_from_slice(&crc.to_be_bytes());
    Some(out.freeze())
}

/// The CRC-32 of a record's bytes but its checksum field, which is at `crc_at`.
fn checksum(value: &[u8], crc_at: usize) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&value[..crc_at]);
    hasher.update(&value[crc_at + 4..]);
    hasher.finalize()
}

/// Decodes the value stored under `key`: a whole object (the body a slice of `value`, not a
/// copy) or the head of a chunked one. `check` says whether the tier it comes from vouches
/// for its key: only then are records without a key digest read.
pub(crate) fn decode(value: Bytes, key: &TierKey, check: KeyCheck) -> Result<Record, DecodeError> {
    let magic = value.get(..4).unwrap_or_default();
    // `Some(key)`: the layout with the key digest, which must be `key`'s.
    let digest_of = match magic {
        m if m == chunks::HEAD_MAGIC || m == MAGIC => Some(key),
        // A head without its own sum: the tier's checksum covers it.
        m if check == KeyCheck::Tier && m == chunks::UNSUMMED_HEAD_MAGIC => Some(key),
        m if check == KeyCheck::Tier && (m == chunks::UNKEYED_HEAD_MAGIC || m == UNKEYED_MAGIC) => {
            None
        }
        // Older versions, and newer ones (nodes mid-upgrade share one Redis): a miss, not
        // damage.
        m if m.len() == 4 && FAMILIES.iter().any(|f| m.starts_with(*f)) => {
            return Err(DecodeError::Outdated)
        }
        _ => return Err(DecodeError::Corrupt("not a cachet object".into())),
    };
    if magic.starts_with(b"CTH") {
        let head = chunks::decode_head(&value, digest_of).map_err(DecodeError::Corrupt)?;
        let meta = decode_meta(&value, head.internal, head.header).map_err(DecodeError::Corrupt)?;
        return Ok(Record {
            meta,
            written_at: head.plan.written_at,
            body: Body::Chunked(head.plan),
        });
    }
    decode_whole(value, digest_of, check)
}

/// A whole record; `digest_of` as for [`chunks::decode_head`]. The layout without the digest
/// is the same with every field 8 bytes earlier. The checksum is checked unless the tier
/// checked its own over the same bytes (a second pass was ~2 % of a 64 KiB disk hit).
fn decode_whole(
    value: Bytes,
    digest_of: Option<&TierKey>,
    check: KeyCheck,
) -> Result<Record, DecodeError> {
    let corrupt = |why: String| Err(DecodeError::Corrupt(why));
    let shift = if digest_of.is_some() { 0 } else { 8 };
    let (crc_at, fixed) = (CRC_AT - shift, FIXED - shift);
    if value.len() < fixed {
        return corrupt("not a cachet object".into());
    }
    let u32_at = |at: usize| u32::from_be_bytes(value[at..at + 4].try_into().unwrap_or_default());
    let u64_at = |at: usize| u64::from_be_bytes(value[at..at + 8].try_into().unwrap_or_default());
    let written_at = u64_at(12 - shift);
    let internal_len = u32_at(20 - shift) as usize;
    let header_len = u32_at(24 - shift) as usize;
    let body_len = u64_at(28 - shift);
    let expected = (fixed as u64)
        .saturating_add(internal_len as u64)
        .saturating_add(header_len as u64)
        .saturating_add(body_len);
    if expected != value.len() as u64 {
        return corrupt(format!(
            "length mismatch: {} bytes stored, {expected} announced",
            value.len()
        ));
    }
    if check == KeyCheck::Digest && checksum(&value, crc_at) != u32_at(crc_at) {
        return corrupt("checksum mismatch".into());
    }
    if digest_of.is_some_and(|key| u64_at(4) != key.digest()) {
        return corrupt("written for another key".into());
    }
    let internal = &value[fixed..fixed + internal_len];
    let header = &value[fixed + internal_len..fixed + internal_len + header_len];
    let meta = decode_meta(&value, internal, header).map_err(DecodeError::Corrupt)?;
    let body = Body::Whole(value.slice(fixed + internal_len + header_len..));
    Ok(Record {
        meta,
        body,
        written_at,
    })
}

/// The meta of a record: `internal` and `header` are slices of `value`. The header is read
/// in place when it is a head the writer re-framed ([`head_frame::parse`]), else by pingora;
/// either way it ends up in the form L1 keeps ([`meta::detach_header`]). The internal fields
/// of a meta never revalidated are read without pingora's decoder ([`InternalFields`]).
fn decode_meta(value: &Bytes, internal: &[u8], header: &[u8]) -> Result<CacheMeta, String> {
    let error = |e: Box<pingora_error::Error>| format!("meta: {e}");
    if let Some(parsed) = head_frame::parse(&value.slice_ref(header)) {
        if let Some(fields) = InternalFields::read(internal) {
            return Ok(fields.into_meta(parsed));
        }
        return meta::meta_with_header(internal, parsed).map_err(error);
    }
    let mut meta = CacheMeta::deserialize(internal, header).map_err(error)?;
    meta::detach_header(&mut meta).map_err(error)?;
    Ok(meta)
}

/// The response's reason phrase when it is not its status code's canonical one: pingora's
/// serialization of the head writes the canonical one ([`head_frame::uncompressed`] puts this
/// one back).
pub(crate) fn own_reason(meta: &CacheMeta) -> Option<Box<str>> {
    let header = meta.response_header();
    let reason = header.get_reason_phrase()?;
    (Some(reason) != header.status.canonical_reason()).then(|| reason.into())
}

/// When the origin was asked for the response a meta describes, noted by the proxy in the
/// meta's extensions. A copy is dated by it in the L2 tiers, not by when its head arrived: a
/// purge another node made while the origin answered, which this node had not heard of yet,
/// then covers it. (Dated at its head, the copy outdated that purge, and every node kept
/// serving the answer the purge was meant to remove.)
#[derive(Debug, Clone, Copy)]
pub struct FetchStarted(pub SystemTime);

/// The date in the L2 tiers of the copy `meta` describes: when its fetch started, or now.
pub(crate) fn written_at(meta: &CacheMeta) -> u64 {
    meta.extensions()
        .get::<FetchStarted>()
        .map_or_else(now_ns, |started| to_ns(started.0))
}

/// Nanoseconds since the epoch, the clock purges and records are compared on.
pub(crate) fn now_ns() -> u64 {
    to_ns(SystemTime::now())
}

pub(crate) fn to_ns(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos().min(u64::MAX as u128) as u64)
}

pub(crate) fn from_ns(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

/// A copy past its freshness and stale windows that names a validator (`ETag`,
/// `Last-Modified`) is still worth a revalidation, a 304 instead of the whole body again (L1
/// keeps stale entries until evicted): it is kept as long again as it was fresh, within
/// these bounds.
const REVALIDATE_AT_LEAST: Duration = Duration::from_secs(60);
const REVALIDATE_AT_MOST: Duration = Duration::from_secs(24 * 3600);

/// Until when an L2 copy is worth keeping: its freshness and both stale windows, and then a
/// while for revalidation when it names a validator.
pub(crate) fn keep_until(meta: &CacheMeta) -> SystemTime {
    let stale = meta
        .stale_while_revalidate_sec()
        .max(meta.stale_if_error_sec());
    let until = meta.fresh_until() + Duration::from_secs(stale.into());
    let headers = meta.headers();
    if !headers.contains_key(http::header::ETAG)
        && !headers.contains_key(http::header::LAST_MODIFIED)
    {
        return until;
    }
    let fresh_for = meta
        .fresh_until()
        .duration_since(meta.updated())
        .unwrap_or_default();
    until + fresh_for.clamp(REVALIDATE_AT_LEAST, REVALIDATE_AT_MOST)
}

/// How long from now an L2 copy is worth keeping ([`keep_until`]). `None` when nothing is
/// left.
pub(crate) fn lifetime(meta: &CacheMeta) -> Option<Duration> {
    keep_until(meta)
        .duration_since(SystemTime::now())
        .ok()
        .filter(|d| !d.is_zero())
}

#[cfg(test)]
fn encode(meta: &CacheMeta, body: &[Bytes], written_at: u64) -> Option<Bytes> {
    let (internal, header) = meta.serialize().ok()?;
    encode_parts(&tests::name("/x"), &internal, &header, body, written_at)
}

/// A record as the version before the key digest wrote it ("CTR2"): the disk tier still holds
/// such records after an upgrade.
#[cfg(test)]
pub(super) fn encode_unkeyed(
    internal: &[u8],
    header: &[u8],
    body: &[u8],
    written_at: u64,
) -> Bytes {
    let mut out = BytesMut::new();
    out.put_slice(b"CTR2");
    out.put_u64(written_at);
    out.put_u32(internal.len() as u32);
    out.put_u32(header.len() as u32);
    out.put_u64(body.len() as u64);
    out.put_u32(0);
    out.put_slice(internal);
    out.put_slice(header);
    out.put_slice(body);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out[..28]);
    crc.update(&out[32..]);
    out[28..32].copy_from_slice(&crc.finalize().to_be_bytes());
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::http::ResponseHeader;

    /// The name of `path` in tenant `site`.
    pub(super) fn name(path: &str) -> TierKey {
        TierKey::of(&pingora_cache::CacheKey::new(
            path.as_bytes().to_vec(),
            "site",
        ))
    }

    fn meta() -> CacheMeta {
        let mut header = ResponseHeader::build(200, None).unwrap();
        header.insert_header("cachet-tags", "a b").unwrap();
        let now = SystemTime::now();
        CacheMeta::new(now + Duration::from_secs(60), now, 5, 10, header)
    }

    #[test]
    fn round_trips_meta_body_and_time() {
        let body = [Bytes::from_static(b"hello "), Bytes::from_static(b"world")];
        let value = encode(&meta(), &body, 42).unwrap();
        let record = decode(value, &name("/x"), KeyCheck::Digest).unwrap();
        let Body::Whole(whole) = &record.body else {
            panic!("a small body is stored whole");
        };
        assert_eq!(&whole[..], b"hello world");
        assert_eq!(record.written_at, 42);
        assert_eq!(record.meta.stale_if_error_sec(), 10);
        assert_eq!(record.meta.headers().get("cachet-tags").unwrap(), "a b");
    }

    #[test]
    fn compressed_and_reframed_heads_decode_to_the_same_meta() {
        let mut original = meta();
        original
            .response_header_mut()
            .append_header("X-Up", "1")
            .unwrap();
        let (internal, compressed) = original.serialize().unwrap();
        let reframed = head_frame::uncompressed(&compressed, None).unwrap();
        let body = [Bytes::from_static(b"body")];
        let decode_with = |header: &[u8]| {
            let value = encode_parts(&name("/x"), &internal, header, &body, 7).unwrap();
            decode(value, &name("/x"), KeyCheck::Digest).unwrap().meta
        };
        let (old, new) = (decode_with(&compressed), decode_with(&reframed));
        for meta in [&old, &new] {
            assert_eq!(meta.fresh_until(), original.fresh_until());
            assert_eq!(meta.created(), original.created());
            assert_eq!(meta.stale_while_revalidate_sec(), 5);
            let mut wire = Vec::new();
            meta.response_header().header_to_h1_wire(&mut wire);
            // Both end up in L1's form: names lowercase, as every hit sends them.
            assert_eq!(wire, b"cachet-tags: a b\r\nx-up: 1\r\n");
        }
    }

    #[test]
    fn truncated_or_altered_values_are_refused() {
        let value = encode(&meta(), &[Bytes::from_static(b"body")], 1).unwrap();
        let corrupt = |value: Vec<u8>| {
            matches!(
                decode(Bytes::from(value), &name("/x"), KeyCheck::Digest),
                Err(DecodeError::Corrupt(_))
            )
        };
        assert!(corrupt(value[..value.len() - 1].to_vec()));
        let mut longer = value.to_vec();
        longer.push(0);
        assert!(corrupt(longer));
        let mut wrong = value.to_vec();
        wrong[0] = b'X';
        assert!(corrupt(wrong));
    }

    #[test]
    fn any_flipped_bit_is_found() {
        let value = encode(&meta(), &[Bytes::from_static(b"some body")], 1).unwrap();
        for at in 4..value.len() {
            for bit in 0..8 {
                let mut damaged = value.to_vec();
                damaged[at] ^= 1 << bit;
                let decoded = decode(Bytes::from(damaged), &name("/x"), KeyCheck::Digest);
                assert!(
                    matches!(decoded, Err(DecodeError::Corrupt(_))),
                    "byte {at} bit {bit}"
                );
            }
        }
    }

    /// A chunked head of the version without its own sum is read from the disk tier, whose
    /// entries carry a checksum, and is an outdated miss from Redis.
    #[test]
    fn a_head_without_its_own_sum_is_read_only_from_a_tier_that_checks_it() {
        let (internal, header) = meta().serialize().unwrap();
        let head = super::chunks::encode_head(&name("/x"), &internal, &header, 1, 1, &[7]).unwrap();
        // The same head as the version before wrote it: "CTH2", no trailing sum.
        let mut unsummed = head[..head.len() - 8].to_vec();
        unsummed[..4].copy_from_slice(chunks::UNSUMMED_HEAD_MAGIC);
        let unsummed = Bytes::from(unsummed);
        assert!(decode(head, &name("/x"), KeyCheck::Digest).is_ok());
        assert!(decode(unsummed.clone(), &name("/x"), KeyCheck::Tier).is_ok());
        assert_eq!(
            decode(unsummed, &name("/x"), KeyCheck::Digest).err(),
            Some(DecodeError::Outdated)
        );
    }

    #[test]
    fn a_record_of_the_unchecked_format_is_outdated_not_corrupt() {
        // "CTR1": the same fields without the checksum.
        let (internal, header) = meta().serialize().unwrap();
        let mut old = BytesMut::new();
        old.put_slice(b"CTR1");
        old.put_u64(1);
        old.put_u32(internal.len() as u32);
        old.put_u32(header.len() as u32);
        old.put_u64(4);
        old.put_slice(&internal);
        old.put_slice(&header);
        old.put_slice(b"body");
        let old = old.freeze();
        for check in [KeyCheck::Digest, KeyCheck::Tier] {
            assert_eq!(
                decode(old.clone(), &name("/x"), check).err(),
                Some(DecodeError::Outdated)
            );
            // Newer versions too (nodes mid-upgrade).
            for magic in [b"CTR4", b"CTH4"] {
                let mut newer = encode(&meta(), &[], 1).unwrap().to_vec();
                newer[..4].copy_from_slice(magic);
                let decoded = decode(Bytes::from(newer), &name("/x"), check);
                assert_eq!(decoded.err(), Some(DecodeError::Outdated));
            }
            assert!(matches!(
                decode(Bytes::from_static(b"CT"), &name("/x"), check),
                Err(DecodeError::Corrupt(_))
            ));
        }
    }

    /// "CTR2" and "CTH1" (no key digest) are what the disk tier held before the upgrade that
    /// brought the digest: still objects there, a miss from Redis.
    #[test]
    fn records_without_a_key_digest_are_read_only_from_a_tier_that_checks_keys() {
        let (internal, header) = meta().serialize().unwrap();
        let whole = encode_unkeyed(&internal, &header, b"old body", 3);
        let body_len = chunks::CHUNK_BYTES + 1;
        let head = chunks::encode_unkeyed_head(&internal, &header, body_len, 4, &[7, 8]);
        for value in [&whole, &head] {
            let decoded = decode(value.clone(), &name("/x"), KeyCheck::Digest);
            assert_eq!(decoded.err(), Some(DecodeError::Outdated));
        }

        let record = decode(whole, &name("/x"), KeyCheck::Tier).unwrap();
        let Body::Whole(body) = &record.body else {
            panic!("stored whole");
        };
        assert_eq!(&body[..], b"old body");
        assert_eq!(record.written_at, 3);
        assert_eq!(record.meta.headers().get("cachet-tags").unwrap(), "a b");

        let record = decode(head, &name("/x"), KeyCheck::Tier).unwrap();
        let Body::Chunked(plan) = &record.body else {
            panic!("stored in chunks");
        };
        assert_eq!((plan.written_at, plan.body_len), (4, body_len));
        assert_eq!(plan.hashes, [7, 8]);
        assert_eq!(record.meta.stale_if_error_sec(), 10);
    }

    #[test]
    fn a_record_without_a_key_digest_is_still_checked_for_its_lengths() {
        let (internal, header) = meta().serialize().unwrap();
        let value = encode_unkeyed(&internal, &header, b"old body", 3);
        let corrupt = |value: &[u8]| {
            matches!(
                decode(Bytes::copy_from_slice(value), &name("/x"), KeyCheck::Tier),
                Err(DecodeError::Corrupt(_))
            )
        };
        assert!(corrupt(&value[..value.len() - 1]));
        // The three lengths (after magic and time): any flipped bit announces another size.
        for at in 12..28 {
            for bit in 0..8 {
                let mut damaged = value.to_vec();
                damaged[at] ^= 1 << bit;
                assert!(corrupt(&damaged), "byte {at} bit {bit}");
            }
        }
    }

    /// The disk tier checks every byte of a value with its entry's own checksum before the
    /// record is decoded, so the record's is computed again only for a tier that does not.
    #[test]
    fn the_records_checksum_is_left_to_a_tier_that_checks_its_bytes() {
        let value = encode(&meta(), &[Bytes::from_static(b"some body")], 1).unwrap();
        let mut wrong_sum = value.to_vec();
        wrong_sum[CRC_AT] ^= 1;
        let wrong_sum = Bytes::from(wrong_sum);
        assert!(matches!(
            decode(wrong_sum.clone(), &name("/x"), KeyCheck::Digest),
            Err(DecodeError::Corrupt(_))
        ));
        assert!(decode(wrong_sum, &name("/x"), KeyCheck::Tier).is_ok());
    }

    #[test]
    fn a_record_under_another_name_is_corrupt() {
        let value = encode(&meta(), &[Bytes::from_static(b"body of /x")], 1).unwrap();
        let other_tenant = TierKey::of(&pingora_cache::CacheKey::new(b"/x".to_vec(), "other"));
        // A tier that checks keys itself never meets this, but the digest holds there too.
        for check in [KeyCheck::Digest, KeyCheck::Tier] {
            assert!(decode(value.clone(), &name("/x"), check).is_ok());
            for key in [name("/y"), other_tenant.clone()] {
                let decoded = decode(value.clone(), &key, check);
                assert_eq!(
                    decoded.err(),
                    Some(DecodeError::Corrupt("written for another key".into()))
                );
            }
        }
    }

    #[test]
    fn lifetime_covers_the_stale_windows() {
        let life = lifetime(&meta()).unwrap();
        assert!(life > Duration::from_secs(65) && life <= Duration::from_secs(70));
    }

    #[test]
    fn a_copy_with_a_validator_is_kept_for_revalidation() {
        let now = SystemTime::now();
        let with = |name: &str, fresh: u64| {
            let mut header = ResponseHeader::build(200, None).unwrap();
            header.insert_header(name.to_owned(), "\"v\"").unwrap();
            CacheMeta::new(now + Duration::from_secs(fresh), now, 0, 0, header)
        };
        // As long again as it was fresh.
        let life = lifetime(&with("etag", 600)).unwrap();
        assert!(life > Duration::from_secs(1190) && life <= Duration::from_secs(1200));
        // A response with no freshness (`no-cache`) is kept a minute for revalidation,
        // where without a validator it is not worth keeping at all.
        let life = lifetime(&with("etag", 0)).unwrap();
        assert!(life > Duration::from_secs(55) && life <= Duration::from_secs(60));
        assert_eq!(lifetime(&with("x-other", 0)), None);
    }
}
