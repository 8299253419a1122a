//! Large bodies in the L2 tiers: a head record plus fixed-size chunks, so a hit streams
//! chunk by chunk instead of reading (and holding) the whole body first.
//!
//! Head: `[magic "CTH3" (4), key digest (8), written_at ns (8), internal len (4), header len
//! (4), body len (8), chunk size (4), chunk count (4), internal, header, xxh3 of each chunk (8
//! each), xxh3 of every byte before (8)]`. The key digest ([`TierKey::digest`]) names the key
//! the head was written under, as a whole record's does: a head copied onto another name is
//! refused. The last sum covers the head itself (its meta is served, and promoted into L1, as
//! the chunks are checked): a flipped bit in a header value or a freshness time is found.
//! "CTH2", the same without that sum, and "CTH1", also without the digest, are still read
//! from the disk tier, whose entries carry their own checksum (see [`super::record`]).
//! Chunk `i` is stored under [`TierKey::chunk`]`(written_at, i)` as `[magic "CTC1" (4),
//! written_at (8), index (4), data]`. A chunk is accepted only when its magic, write,
//! index, length and checksum all match the head: a chunk of another write, a truncated or
//! altered one is an error, never part of a body.
//!
//! Chunks are written before their head, so a reader that finds a head finds chunks that
//! were complete when it was written (unless a tier evicted or expired some since: checked
//! before anything is sent, see `storage.rs`).

use super::key::TierKey;
use bytes::{BufMut, Bytes, BytesMut};
use xxhash_rust::xxh3::xxh3_64;

pub(crate) const HEAD_MAGIC: &[u8; 4] = b"CTH3";
/// The version before the head's own sum.
pub(crate) const UNSUMMED_HEAD_MAGIC: &[u8; 4] = b"CTH2";
/// The version before the key digest.
pub(crate) const UNKEYED_HEAD_MAGIC: &[u8; 4] = b"CTH1";
/// The head's own sum, at its end.
const HEAD_SUM: usize = 8;
const CHUNK_MAGIC: &[u8; 4] = b"CTC1";
const HEAD_FIXED: usize = 4 + 8 + 8 + 4 + 4 + 8 + 4 + 4;
const CHUNK_FIXED: usize = 4 + 8 + 4;
/// Bytes per chunk: what one in-flight L2 hit holds (plus one chunk read ahead).
pub(crate) const CHUNK_BYTES: usize = 512 << 10;
/// Bodies up to this size stay one record, read in one call.
pub(crate) const SINGLE_MAX: usize = 1 << 20;
/// Most chunks a head may announce: 2 GiB in 512 KiB chunks, far above the largest object a
/// tier takes (64 MiB), so only a corrupt head reaches it.
const MAX_CHUNKS: usize = 1 << 12;

/// Where a chunked body's parts are and what they must hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) written_at: u64,
    pub(crate) body_len: usize,
    pub(crate) chunk_bytes: usize,
    pub(crate) hashes: Vec<u64>,
}

impl Plan {
    pub(crate) fn count(&self) -> usize {
        self.hashes.len()
    }

    /// The name of chunk `index` of the object named `key`.
    pub(crate) fn key(&self, key: &TierKey, index: usize) -> TierKey {
        key.chunk(self.written_at, index as u32)
    }

    /// Every chunk's name.
    pub(crate) fn keys(&self, key: &TierKey) -> Vec<TierKey> {
        (0..self.count()).map(|i| self.key(key, i)).collect()
    }

    /// The bytes chunk `index` holds.
    pub(crate) fn len_of(&self, index: usize) -> usize {
        let start = index * self.chunk_bytes;
        self.body_len.saturating_sub(start).min(self.chunk_bytes)
    }

    /// The data of a stored chunk, or why it cannot be part of this body.
    pub(crate) fn verify(&self, index: usize, value: &Bytes) -> Result<Bytes, String> {
        if value.len() < CHUNK_FIXED || &value[..4] != CHUNK_MAGIC {
            return Err(format!("chunk {index}: not a cachet chunk"));
        }
        let written_at = u64::from_be_bytes(value[4..12].try_into().unwrap_or_default());
        let at = u32::from_be_bytes(value[12..16].try_into().unwrap_or_default());
        if written_at != self.written_at || at as usize != index {
            return Err(format!("chunk {index}: belongs to another write"));
        }
        let data = value.slice(CHUNK_FIXED..);
        if data.len() != self.len_of(index) {
            return Err(format!(
                "chunk {index}: {} bytes, {} expected",
                data.len(),
                self.len_of(index)
            ));
        }
        if self.hashes.get(index) != Some(&xxh3_64(&data)) {
            return Err(format!("chunk {index}: checksum mismatch"));
        }
        Ok(data)
    }
}

/// How many chunks a body of `body_len` bytes takes.
pub(crate) fn count_for(body_len: usize) -> usize {
    body_len.div_ceil(CHUNK_BYTES)
}

/// Chunk `index` of `body` (given as the parts the fill produced) as stored, with the data's
/// checksum. Copies one chunk's bytes, no more.
pub(crate) fn encode_chunk(body: &[Bytes], written_at: u64, index: usize) -> (Bytes, u64) {
    let start = index * CHUNK_BYTES;
    let end = start + CHUNK_BYTES;
    let mut out = BytesMut::with_capacity(CHUNK_FIXED + CHUNK_BYTES);
    out.put_slice(CHUNK_MAGIC);
    out.put_u64(written_at);
    out.put_u32(index as u32);
    let mut at = 0;
    for part in body {
        let (part_start, part_end) = (at, at + part.len());
        at = part_end;
        if part_end <= start || part_start >= end {
            continue;
        }
        let from = start.saturating_sub(part_start);
        let to = (end - part_start).min(part.len());
        out.put_slice(&part[from..to]);
    }
    let hash = xxh3_64(&out[CHUNK_FIXED..]);
    (out.freeze(), hash)
}

/// The head of a chunked body stored under `key`; `None` when a length does not fit its field.
pub(crate) fn encode_head(
    key: &TierKey,
    internal: &[u8],
    header: &[u8],
    body_len: usize,
    written_at: u64,
    hashes: &[u64],
) -> Option<Bytes> {
    let mut out = BytesMut::with_capacity(
        HEAD_FIXED + internal.len() + header.len() + 8 * hashes.len() + HEAD_SUM,
    );
    out.put_slice(HEAD_MAGIC);
    out.put_u64(key.digest());
    out.put_u64(written_at);
    out.put_u32(u32::try_from(internal.len()).ok()?);
    out.put_u32(u32::try_from(header.len()).ok()?);
    out.put_u64(body_len as u64);
    out.put_u32(CHUNK_BYTES as u32);
    out.put_u32(u32::try_from(hashes.len()).ok()?);
    out.put_slice(internal);
    out.put_slice(header);
    for hash in hashes {
        out.put_u64(*hash);
    }
    let sum = xxh3_64(&out);
    out.put_u64(sum);
    Some(out.freeze())
}

/// A decoded head: the meta's two serialized parts and the plan.
pub(crate) struct Head<'a> {
    pub(crate) internal: &'a [u8],
    pub(crate) header: &'a [u8],
    pub(crate) plan: Plan,
}

/// Decodes a head, checking its sum and that every length adds up. With `digest_of`, a head
/// with the key digest, which must be that key's ("CTH3", or "CTH2" without the sum: the
/// caller takes that only from a tier that checks its values itself); without, a head of the
/// version before the digest, the same with every field 8 bytes earlier.
pub(crate) fn decode_head<'a>(
    value: &'a [u8],
    digest_of: Option<&TierKey>,
) -> Result<Head<'a>, String> {
    let value = match value.strip_prefix(HEAD_MAGIC) {
        Some(_) => {
            let Some(summed_len) = value.len().checked_sub(HEAD_SUM) else {
                return Err("not a cachet head".into());
            };
            let (summed, sum) = value.split_at(summed_len);
            if xxh3_64(summed).to_be_bytes() != sum {
                return Err("the head does not match its checksum".into());
            }
            summed
        }
        None => value,
    };
    let (magics, shift): (&[&[u8; 4]], usize) = match digest_of {
        Some(_) => (&[HEAD_MAGIC, UNSUMMED_HEAD_MAGIC], 0),
        None => (&[UNKEYED_HEAD_MAGIC], 8),
    };
    let fixed = HEAD_FIXED - shift;
    if value.len() < fixed || !magics.iter().any(|m| value[..4] == m[..]) {
        return Err("not a cachet head".into());
    }
    let u32_at =
        |at: usize| u32::from_be_bytes(value[at..at + 4].try_into().unwrap_or_default()) as usize;
    let u64_at = |at: usize| u64::from_be_bytes(value[at..at + 8].try_into().unwrap_or_default());
    if digest_of.is_some_and(|key| u64_at(4) != key.digest()) {
        return Err("head written for another key".into());
    }
    let written_at = u64_at(12 - shift);
    let (internal_len, header_len) = (u32_at(20 - shift), u32_at(24 - shift));
    let body_len = u64_at(28 - shift);
    let (chunk_bytes, count) = (u32_at(36 - shift), u32_at(40 - shift));
    let body_len = usize::try_from(body_len).map_err(|_| "body too long")?;
    // No chunk larger than this version writes: a chunk is read whole before it is checked.
    let chunk_size_ok = (1..=CHUNK_BYTES).contains(&chunk_bytes);
    if !chunk_size_ok || count > MAX_CHUNKS || body_len.div_ceil(chunk_bytes) != count {
        return Err(format!(
            "{count} chunks of {chunk_bytes} bytes cannot hold {body_len}"
        ));
    }
    let expected = fixed + internal_len + header_len + 8 * count;
    if expected != value.len() {
        return Err(format!(
            "head length mismatch: {} bytes stored, {expected} announced",
            value.len()
        ));
    }
    let meta_end = fixed + internal_len + header_len;
    let hashes = value[meta_end..]
        .chunks_exact(8)
        .map(|h| u64::from_be_bytes(h.try_into().unwrap_or_default()))
        .collect();
    Ok(Head {
        internal: &value[fixed..fixed + internal_len],
        header: &value[fixed + internal_len..meta_end],
        plan: Plan {
            written_at,
            body_len,
            chunk_bytes,
            hashes,
        },
    })
}

/// A head as the version before the key digest wrote it ("CTH1"): the disk tier still holds
/// such heads after an upgrade.
#[cfg(test)]
pub(super) fn encode_unkeyed_head(
    internal: &[u8],
    header: &[u8],
    body_len: usize,
    written_at: u64,
    hashes: &[u64],
) -> Bytes {
    let mut out = BytesMut::new();
    out.put_slice(b"CTH1");
    out.put_u64(written_at);
    out.put_u32(internal.len() as u32);
    out.put_u32(header.len() as u32);
    out.put_u64(body_len as u64);
    out.put_u32(CHUNK_BYTES as u32);
    out.put_u32(hashes.len() as u32);
    out.put_slice(internal);
    out.put_slice(header);
    for hash in hashes {
        out.put_u64(*hash);
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(len: usize) -> Vec<Bytes> {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        // Parts of odd sizes, so chunks straddle them.
        data.chunks(100_003).map(Bytes::copy_from_slice).collect()
    }

    fn name(path: &str) -> TierKey {
        TierKey::of(&pingora_cache::CacheKey::new(
            path.as_bytes().to_vec(),
            "site",
        ))
    }

    fn stored(body: &[Bytes], written_at: u64) -> (Bytes, Vec<Bytes>) {
        let len: usize = body.iter().map(Bytes::len).sum();
        let (chunks, hashes): (Vec<Bytes>, Vec<u64>) = (0..count_for(len))
            .map(|i| encode_chunk(body, written_at, i))
            .unzip();
        (
            encode_head(&name("/x"), b"in", b"hd", len, written_at, &hashes).unwrap(),
            chunks,
        )
    }

    #[test]
    fn chunks_rebuild_the_body() {
        let body = body(3 * CHUNK_BYTES + 12_345);
        let (head, chunks) = stored(&body, 9);
        let head = decode_head(&head, Some(&name("/x"))).unwrap();
        assert_eq!((head.internal, head.header), (&b"in"[..], &b"hd"[..]));
        assert_eq!(head.plan.count(), 4);
        let mut rebuilt = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            rebuilt.extend_from_slice(&head.plan.verify(i, chunk).unwrap());
        }
        assert_eq!(rebuilt, body.concat());
    }

    #[test]
    fn altered_truncated_or_foreign_chunks_are_refused() {
        let body = body(2 * CHUNK_BYTES + 1);
        let (head, chunks) = stored(&body, 9);
        let plan = decode_head(&head, Some(&name("/x"))).unwrap().plan;
        let mut altered = chunks[1].to_vec();
        altered[CHUNK_FIXED + 5] ^= 1;
        assert!(plan.verify(1, &Bytes::from(altered)).is_err());
        assert!(plan
            .verify(1, &chunks[1].slice(..chunks[1].len() - 1))
            .is_err());
        assert!(plan.verify(0, &chunks[1]).is_err(), "wrong index");
        let (_, other) = stored(&body, 10);
        assert!(plan.verify(1, &other[1]).is_err(), "another write");
        assert!(decode_head(&head[..head.len() - 1], Some(&name("/x"))).is_err());
    }

    /// The head's meta is served as it is read: a flipped bit in it (a header value, a
    /// freshness time) is found, not served.
    #[test]
    fn an_altered_head_is_refused() {
        let (head, _) = stored(&body(CHUNK_BYTES + 1), 9);
        let header_at = HEAD_FIXED + 2;
        let mut altered = head.to_vec();
        altered[header_at] ^= 1;
        let refused = decode_head(&altered, Some(&name("/x"))).err().unwrap();
        assert!(refused.contains("checksum"), "{refused}");
    }

    /// A head announcing chunks larger than any this version writes is refused before a chunk
    /// of that size is read.
    #[test]
    fn a_head_announcing_oversized_chunks_is_refused() {
        let unsummed = |chunk_bytes: u32| {
            let mut head = BytesMut::new();
            head.put_slice(UNSUMMED_HEAD_MAGIC);
            head.put_u64(name("/x").digest());
            head.put_u64(9);
            head.put_u32(0);
            head.put_u32(0);
            head.put_u64(u64::from(chunk_bytes));
            head.put_u32(chunk_bytes);
            head.put_u32(1);
            head.put_u64(7);
            head.freeze()
        };
        assert!(decode_head(&unsummed(CHUNK_BYTES as u32), Some(&name("/x"))).is_ok());
        assert!(decode_head(&unsummed(u32::MAX), Some(&name("/x"))).is_err());
    }

    #[test]
    fn a_head_is_refused_under_another_name() {
        let (head, _) = stored(&body(CHUNK_BYTES + 1), 9);
        assert!(decode_head(&head, Some(&name("/x"))).is_ok());
        let refused = decode_head(&head, Some(&name("/y"))).err().unwrap();
        assert!(refused.contains("another key"), "{refused}");
    }

    #[test]
    fn a_head_without_a_key_digest_reads_as_the_one_with_it() {
        let body = body(2 * CHUNK_BYTES + 3);
        let (keyed, _) = stored(&body, 9);
        let keyed = decode_head(&keyed, Some(&name("/x"))).unwrap();
        let (len, hashes) = (keyed.plan.body_len, &keyed.plan.hashes);
        let unkeyed = encode_unkeyed_head(b"in", b"hd", len, 9, hashes);
        let old = decode_head(&unkeyed, None).unwrap();
        assert_eq!((old.internal, old.header), (&b"in"[..], &b"hd"[..]));
        assert_eq!(old.plan, keyed.plan);
        // Each layout only as itself.
        assert!(decode_head(&unkeyed, Some(&name("/x"))).is_err());
        assert!(decode_head(&unkeyed[..unkeyed.len() - 1], None).is_err());
    }
}
