//! The response head as the L2 tiers keep it: pingora serializes a cached head as a
//! zstd-compressed HTTP/1 head, and decoding that costs a hit several microseconds of
//! entropy-table setup for a few hundred bytes. Off the request path, the writer re-frames it
//! as a zstd frame of raw (stored) blocks (RFC 8878 §3.1.1.2, Block_Type 0): still exactly
//! what `CacheMeta::deserialize` reads, and records written either way decode alike.
//!
//! A hit reads such a head back with [`parse`]: the fields point into the stored value (no copy,
//! no zstd pass, no second map of spellings), where `CacheMeta::deserialize` copies every name
//! and value. Anything else (an older compressed head, a head it cannot parse) is left to
//! `CacheMeta::deserialize`.
//!
//! pingora's serialization writes every status line with the status code's canonical reason
//! phrase; the writer puts the origin's own phrase back ([`uncompressed`]'s `reason`) and
//! [`parse`] keeps it, so a hit from L2 answers `404 Gone Fishing` as the fill did.

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::http::ResponseHeader;

/// pingora's header buffer (`pingora-header-serde`): no head it wrote is larger.
const MAX_HEAD: usize = 128 << 10;
/// Largest block a frame may hold (RFC 8878 §3.1.1.2.4, `Block_Maximum_Size`).
const MAX_BLOCK: usize = 128 << 10;
const MAGIC: [u8; 4] = 0xFD2F_B528_u32.to_le_bytes();
/// Frame header descriptor: a 4-byte content size (`Frame_Content_Size_Flag` 2) and a single
/// segment (no window descriptor); no checksum, no dictionary.
const DESCRIPTOR: u8 = 0b1010_0000;

/// `compressed` (a zstd frame) again, as a frame of raw blocks, with `reason` as its status
/// line's reason phrase when given (a phrase a status line cannot carry is left out); `None`
/// when it does not decompress to a head pingora could have written.
pub(crate) fn uncompressed(compressed: &[u8], reason: Option<&str>) -> Option<Vec<u8>> {
    let mut head = zstd::bulk::decompress(compressed, MAX_HEAD).ok()?;
    if let Some(reason) = reason.filter(|r| is_reason_phrase(r.as_bytes())) {
        head = with_reason(&head, reason.as_bytes())?;
    }
    let mut frame = Vec::with_capacity(head.len() + 16);
    frame.extend_from_slice(&MAGIC);
    frame.push(DESCRIPTOR);
    frame.extend_from_slice(&u32::try_from(head.len()).ok()?.to_le_bytes());
    let mut blocks = head.chunks(MAX_BLOCK).peekable();
    if blocks.peek().is_none() {
        frame.extend_from_slice(&block_header(0, true));
    }
    while let Some(block) = blocks.next() {
        frame.extend_from_slice(&block_header(block.len(), blocks.peek().is_none()));
        frame.extend_from_slice(block);
    }
    Some(frame)
}

/// `reason-phrase = 1*( HTAB / SP / VCHAR / obs-text )` (RFC 9112 §4): nothing that could end
/// the status line.
fn is_reason_phrase(reason: &[u8]) -> bool {
    !reason.is_empty()
        && reason
            .iter()
            .all(|&b| b == b'\t' || b == b' ' || (b'!'..=b'~').contains(&b) || b >= 0x80)
}

/// `head` with its status line's reason phrase replaced: the line is `HTTP/1.x NNN phrase`,
/// so the phrase starts after the 13 bytes of version, code and spaces.
fn with_reason(head: &[u8], reason: &[u8]) -> Option<Vec<u8>> {
    const PREFIX: usize = b"HTTP/1.1 200 ".len();
    let line_end = head.windows(2).position(|w| w == b"\r\n")?;
    if line_end < PREFIX - 1 {
        return None;
    }
    let prefix = head.get(..PREFIX - 1)?;
    let mut out = Vec::with_capacity(head.len() + reason.len());
    out.extend_from_slice(prefix);
    out.push(b' ');
    out.extend_from_slice(reason);
    out.extend_from_slice(&head[line_end..]);
    Some(out)
}

/// Fields a head may have for [`parse`]; a head with more takes pingora's own path.
const PARSED_FIELDS: usize = 64;

/// The response head a frame of raw blocks holds, as pingora's header decoding builds it
/// (same parser leniency), with names kept lowercase only. `None` when `frame` is not a frame
/// [`uncompressed`] writes, its head does not parse, or a value is one pingora would rewrite.
pub(crate) fn parse(frame: &Bytes) -> Option<ResponseHeader> {
    let head = raw_content(frame)?;
    let mut fields = [httparse::EMPTY_HEADER; PARSED_FIELDS];
    let mut response = httparse::Response::new(&mut fields);
    let mut parser = httparse::ParserConfig::default();
    parser.allow_spaces_after_header_name_in_responses(true);
    parser.allow_obsolete_multiline_headers_in_responses(true);
    let parsed = parser.parse_response(&mut response, &head).ok()?;
    if !parsed.is_complete() {
        return None;
    }
    let mut header =
        ResponseHeader::build_no_case(response.code?, Some(response.headers.len())).ok()?;
    // The canonical phrase is not stored again (`set_reason_phrase` keeps only another one).
    header.set_reason_phrase(response.reason).ok()?;
    for field in response.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes()).ok()?;
        // Checked: a value pingora would have to normalize (an obs-fold) or that is not a
        // valid field value at all (a damaged record) is left to pingora's decoding.
        let value = HeaderValue::from_maybe_shared(head.slice_ref(field.value)).ok()?;
        header.append_header(name, value).ok()?;
    }
    Some(header)
}

/// The content of a frame of one raw block, as a slice of `frame`. [`uncompressed`] writes
/// one block for every head pingora can write (`MAX_HEAD` is `MAX_BLOCK`).
fn raw_content(frame: &Bytes) -> Option<Bytes> {
    let rest = frame.strip_prefix(&MAGIC)?.strip_prefix(&[DESCRIPTOR])?;
    let (size, rest) = rest.split_first_chunk::<4>()?;
    let (block, rest) = rest.split_first_chunk::<3>()?;
    let size = u32::from_le_bytes(*size) as usize;
    let block = u32::from_le_bytes([block[0], block[1], block[2], 0]);
    let (last, block_type, len) = (block & 1 == 1, (block >> 1) & 3, (block >> 3) as usize);
    if !last || block_type != 0 || len != size || rest.len() != len {
        return None;
    }
    Some(frame.slice_ref(rest))
}

/// `Last_Block` (bit 0), `Block_Type` raw (bits 1–2: 0) and `Block_Size` (bits 3–23),
/// little-endian.
fn block_header(len: usize, last: bool) -> [u8; 3] {
    let value = ((len as u32) << 3) | u32::from(last);
    let bytes = value.to_le_bytes();
    [bytes[0], bytes[1], bytes[2]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::http::ResponseHeader;
    use pingora_cache::CacheMeta;
    use std::time::{Duration, SystemTime};

    fn meta(extra: usize) -> CacheMeta {
        let mut header = ResponseHeader::build(200, None).expect("header");
        header.append_header("Content-Type", "text/plain").unwrap();
        header.append_header("X-Case-Kept", "yes").unwrap();
        header.append_header("X-Big", "v".repeat(extra)).unwrap();
        let now = SystemTime::now();
        CacheMeta::new(now + Duration::from_secs(60), now, 5, 10, header)
    }

    fn wire(meta: &CacheMeta) -> Vec<u8> {
        let mut wire = Vec::new();
        meta.response_header().header_to_h1_wire(&mut wire);
        wire
    }

    #[test]
    fn the_reframed_head_deserializes_to_the_same_meta() {
        for extra in [0, 200, 100 << 10] {
            let original = meta(extra);
            let (internal, compressed) = original.serialize().expect("serialize");
            let framed = uncompressed(&compressed, None).expect("reframe");
            // Raw blocks: the head's bytes are in the frame as they are.
            assert!(framed.len() > wire(&original).len(), "{extra}");
            let decoded = CacheMeta::deserialize(&internal, &framed).expect("deserialize");
            assert_eq!(wire(&decoded), wire(&original), "{extra}");
            assert_eq!(decoded.response_header().status, 200);
            assert_eq!(decoded.fresh_until(), original.fresh_until());
            assert_eq!(decoded.updated(), original.updated());
            assert_eq!(decoded.stale_if_error_sec(), 10);
        }
    }

    #[test]
    fn what_is_not_a_zstd_frame_is_refused() {
        assert!(uncompressed(b"HTTP/1.1 200 OK\r\n\r\n", None).is_none());
        let (_, compressed) = meta(0).serialize().expect("serialize");
        assert!(uncompressed(&compressed[..compressed.len() - 3], None).is_none());
    }

    /// Each field as (name, value), in order.
    fn fields(header: &ResponseHeader) -> Vec<(String, Vec<u8>)> {
        let fields = header.headers.iter();
        fields
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    /// A frame of raw blocks holding `wire`, made the way the writer makes one.
    fn frame_of(wire: &[u8]) -> Bytes {
        let compressed = zstd::bulk::compress(wire, 3).expect("compress");
        Bytes::from(uncompressed(&compressed, None).expect("reframe"))
    }

    #[test]
    fn a_parsed_head_has_the_fields_pingora_decodes_and_points_into_the_frame() {
        for extra in [0, 200, 100 << 10] {
            let mut original = meta(extra);
            let header = original.response_header_mut();
            header.append_header("Set-Cookie", "a=1").unwrap();
            header.append_header("set-cookie", "b=2").unwrap();
            header.set_status(404).unwrap();
            let (internal, compressed) = original.serialize().expect("serialize");
            let frame = Bytes::from(uncompressed(&compressed, None).expect("reframe"));
            let parsed = parse(&frame).expect("a reframed head parses");
            let decoded = CacheMeta::deserialize(&internal, &frame).expect("deserialize");
            assert_eq!(parsed.status, 404);
            assert_eq!(parsed.version, decoded.response_header().version);
            assert_eq!(
                fields(&parsed),
                fields(decoded.response_header()),
                "{extra}"
            );
            let frame_bytes = frame.as_ptr_range();
            for (_, value) in parsed.headers.iter().filter(|(_, v)| !v.is_empty()) {
                assert!(
                    frame_bytes.contains(&value.as_bytes().as_ptr()),
                    "copied, not sliced"
                );
            }
        }
    }

    #[test]
    fn spaced_names_parse_as_pingora_reads_them() {
        let frame = frame_of(b"HTTP/1.1 200 OK\r\nX-Spaced : c\r\nX-Tab: a\tb\r\n\r\n");
        let parsed = parse(&frame).expect("parses");
        let (internal, _) = meta(0).serialize().expect("serialize");
        let decoded = CacheMeta::deserialize(&internal, &frame).expect("deserialize");
        assert_eq!(fields(&parsed), fields(decoded.response_header()));
        assert_eq!(parsed.headers.get("x-spaced").unwrap(), "c");
    }

    #[test]
    fn what_parse_does_not_read_is_left_to_pingora() {
        let (_, compressed) = meta(0).serialize().expect("serialize");
        // A compressed head (records written before re-framing).
        assert!(parse(&Bytes::from(compressed.clone())).is_none());
        // A frame with more fields than parse reads.
        let mut wire = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=PARSED_FIELDS {
            wire.extend_from_slice(format!("x-{i}: {i}\r\n").as_bytes());
        }
        wire.extend_from_slice(b"\r\n");
        assert!(parse(&frame_of(&wire)).is_none());
        // Truncated, or with bytes after its block.
        let frame = frame_of(b"HTTP/1.1 200 OK\r\n\r\n");
        assert!(parse(&frame.slice(..frame.len() - 1)).is_none());
        let mut longer = frame.to_vec();
        longer.push(0);
        assert!(parse(&Bytes::from(longer)).is_none());
        // Values pingora rewrites (an obs-fold) or that no field may carry (a control byte).
        assert!(parse(&frame_of(b"HTTP/1.1 200 OK\r\nx-a: 1\r\n  2\r\n\r\n")).is_none());
        assert!(parse(&frame_of(b"HTTP/1.1 200 OK\r\nx-a: 1\x01\r\n\r\n")).is_none());
        // A head cut short inside its block.
        assert!(parse(&frame_of(b"HTTP/1.1 200 OK\r\nx-a: 1\r\n")).is_none());
    }

    #[test]
    fn the_origins_reason_phrase_is_kept_and_one_that_could_end_the_line_is_not() {
        let mut original = meta(0);
        original.response_header_mut().set_status(404).unwrap();
        let (internal, compressed) = original.serialize().expect("serialize");
        let frame = Bytes::from(uncompressed(&compressed, Some("Gone Fishing")).unwrap());
        let parsed = parse(&frame).expect("parses");
        assert_eq!(parsed.status, 404);
        assert_eq!(parsed.get_reason_phrase(), Some("Gone Fishing"));
        let decoded = CacheMeta::deserialize(&internal, &frame).expect("pingora reads it too");
        assert_eq!(fields(&parsed), fields(decoded.response_header()));
        // Without a phrase of its own, the canonical one.
        let plain = Bytes::from(uncompressed(&compressed, None).unwrap());
        assert_eq!(
            parse(&plain).unwrap().get_reason_phrase(),
            Some("Not Found")
        );
        // A phrase with a line break (or none at all) is not written into the status line.
        for bad in ["Gone\r\nX-Injected: 1", ""] {
            let frame = Bytes::from(uncompressed(&compressed, Some(bad)).unwrap());
            let parsed = parse(&frame).expect("parses");
            assert_eq!(parsed.get_reason_phrase(), Some("Not Found"), "{bad:?}");
            assert!(parsed.headers.get("x-injected").is_none());
        }
    }

    #[test]
    fn block_headers_follow_the_format() {
        // 300 bytes, last block: (300 << 3) | 1 = 2401 = 0x000961.
        assert_eq!(block_header(300, true), [0x61, 0x09, 0x00]);
        assert_eq!(block_header(MAX_BLOCK, false), [0x00, 0x00, 0x10]);
    }
}
