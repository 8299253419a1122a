//! The response head as the L2 tiers keep it: pingora serializes a cached head as a
//! zstd-compressed HTTP/1 head, and decoding that costs a hit several microseconds of
//! entropy-table setup for a few hundred bytes. Off the request path, the writer re-frames it
//! as a zstd frame of raw (stored) blocks (RFC 8878 §3.1.1.2, Block_Type 0): still exactly
//! what `CacheMeta::deserialize` reads, and records written either way decode alike.

/// pingora's header buffer (`pingora-header-serde`): no head it wrote is larger.
const MAX_HEAD: usize = 128 << 10;
/// Largest block a frame may hold (RFC 8878 §3.1.1.2.4, `Block_Maximum_Size`).
const MAX_BLOCK: usize = 128 << 10;
const MAGIC: [u8; 4] = 0xFD2F_B528_u32.to_le_bytes();
/// Frame header descriptor: a 4-byte content size (`Frame_Content_Size_Flag` 2) and a single
/// segment (no window descriptor); no checksum, no dictionary.
const DESCRIPTOR: u8 = 0b1010_0000;

/// `compressed` (a zstd frame) again, as a frame of raw blocks; `None` when it does not
/// decompress to a head pingora could have written.
pub(crate) fn uncompressed(compressed: &[u8]) -> Option<Vec<u8>> {
    let head = zstd::bulk::decompress(compressed, MAX_HEAD).ok()?;
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
            let framed = uncompressed(&compressed).expect("reframe");
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
        assert!(uncompressed(b"HTTP/1.1 200 OK\r\n\r\n").is_none());
        let (_, compressed) = meta(0).serialize().expect("serialize");
        assert!(uncompressed(&compressed[..compressed.len() - 3]).is_none());
    }

    #[test]
    fn block_headers_follow_the_format() {
        // 300 bytes, last block: (300 << 3) | 1 = 2401 = 0x000961.
        assert_eq!(block_header(300, true), [0x61, 0x09, 0x00]);
        assert_eq!(block_header(MAX_BLOCK, false), [0x00, 0x00, 0x10]);
    }
}
