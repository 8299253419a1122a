//! One entry of a segment file: a value stored under a key, or a tombstone that says the key
//! was removed (so a restart does not bring it back).
//!
//! `[magic (4), kind (1), reserved (3), key len (4), value len (4), crc32 (4), key, value]`,
//! little-endian. The checksum covers the kind, both lengths, the key and the value: a flipped
//! bit anywhere in them makes the entry unreadable, and it is never served.

/// Marks the start of every entry.
pub(crate) const MAGIC: &[u8; 4] = b"CSG1";
/// Bytes before the key.
pub(crate) const HEADER: usize = 4 + 1 + 3 + 4 + 4 + 4;
/// Longest key an entry may carry: a tier key is a tenant name (at most 64 KiB) and two
/// hashes. A bound, so a damaged length is found before it is trusted.
pub(crate) const MAX_KEY: usize = 3 + u16::MAX as usize + 64;

/// What an entry says about its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Value = 1,
    Tombstone = 2,
}

/// An entry's header, read before the rest of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) kind: Kind,
    pub(crate) key_len: usize,
    pub(crate) value_len: usize,
    crc: u32,
}

impl Header {
    /// Bytes of the whole entry.
    pub(crate) fn entry_len(&self) -> usize {
        HEADER + self.key_len + self.value_len
    }

    /// The header at the start of `bytes`, if it is one (the rest is not checked here).
    pub(crate) fn parse(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; HEADER] = bytes.get(..HEADER)?.try_into().ok()?;
        if &bytes[..4] != MAGIC || bytes[5..8] != [0, 0, 0] {
            return None;
        }
        let kind = match bytes[4] {
            1 => Kind::Value,
            2 => Kind::Tombstone,
            _ => return None,
        };
        let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let key_len = word(8) as usize;
        let value_len = word(12) as usize;
        // No entry is larger than a segment: a length past that is damage (or a foreign
        // file), never a read of that size.
        let too_long = key_len + value_len > super::MAX_SEGMENT;
        if key_len == 0
            || key_len > MAX_KEY
            || too_long
            || (kind == Kind::Tombstone && value_len != 0)
        {
            return None;
        }
        Some(Self {
            kind,
            key_len,
            value_len,
            crc: word(16),
        })
    }

    /// Whether `entry` (the whole entry this header starts) is intact and stored under `key`.
    pub(crate) fn check(&self, entry: &[u8], key: &[u8]) -> bool {
        entry.len() == self.entry_len()
            && &entry[HEADER..HEADER + self.key_len] == key
            && checksum(self.kind, &entry[HEADER..]) == self.crc
    }

    /// A checksum to feed this entry's key and value in pieces, so an entry can be checked
    /// without holding it whole.
    pub(crate) fn checker(&self) -> Checker {
        Checker {
            hasher: checksum_start(self.kind, self.key_len + self.value_len),
            expected: self.crc,
        }
    }
}

/// The checksum of an entry read in pieces ([`Header::checker`]).
pub(crate) struct Checker {
    hasher: crc32fast::Hasher,
    expected: u32,
}

impl Checker {
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
    }

    /// Whether the key and value fed match the header's checksum.
    pub(crate) fn matches(self) -> bool {
        self.hasher.finalize() == self.expected
    }
}

/// Encodes an entry (`value` empty for a tombstone).
pub(crate) fn encode(kind: Kind, key: &[u8], value: &[u8]) -> Vec<u8> {
    debug_assert!(!key.is_empty() && key.len() <= MAX_KEY);
    let key_len = u32::try_from(key.len()).expect("keys are short");
    let value_len = u32::try_from(value.len()).expect("values fit a segment");
    let mut out = Vec::with_capacity(HEADER + key.len() + value.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[kind as u8, 0, 0, 0]);
    out.extend_from_slice(&key_len.to_le_bytes());
    out.extend_from_slice(&value_len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    let crc = checksum(kind, &out[HEADER..]);
    out[16..20].copy_from_slice(&crc.to_le_bytes());
    out
}

/// The checksum of an entry's kind and of its key and value (`rest`); the lengths are
/// implied by `rest`'s length and the key, which the reader compares.
fn checksum(kind: Kind, rest: &[u8]) -> u32 {
    let mut hasher = checksum_start(kind, rest.len());
    hasher.update(rest);
    hasher.finalize()
}

/// The checksum of an entry's kind and length, to be fed its key and value.
fn checksum_start(kind: Kind, rest_len: usize) -> crc32fast::Hasher {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&[kind as u8]);
    hasher.update(&(rest_len as u64).to_le_bytes());
    hasher
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_reads_back_under_its_key() {
        let entry = encode(Kind::Value, b"key", b"value");
        let header = Header::parse(&entry).expect("header");
        assert_eq!(header.kind, Kind::Value);
        assert_eq!((header.key_len, header.value_len), (3, 5));
        assert_eq!(header.entry_len(), entry.len());
        assert!(header.check(&entry, b"key"));
        assert!(!header.check(&entry, b"kez"), "another key");
    }

    #[test]
    fn any_flipped_bit_after_the_header_is_found() {
        let entry = encode(Kind::Value, b"key", b"some value");
        let header = Header::parse(&entry).unwrap();
        for at in HEADER..entry.len() {
            for bit in 0..8 {
                let mut damaged = entry.clone();
                damaged[at] ^= 1 << bit;
                assert!(!header.check(&damaged, b"key"), "byte {at} bit {bit}");
            }
        }
    }

    #[test]
    fn a_short_or_foreign_header_is_refused() {
        let entry = encode(Kind::Tombstone, b"key", b"");
        assert_eq!(Header::parse(&entry).unwrap().kind, Kind::Tombstone);
        assert!(Header::parse(&entry[..HEADER - 1]).is_none());
        let mut foreign = entry.clone();
        foreign[0] = b'X';
        assert!(Header::parse(&foreign).is_none());
        let mut kind = entry.clone();
        kind[4] = 9;
        assert!(Header::parse(&kind).is_none());
        let mut empty_key = encode(Kind::Value, b"k", b"v");
        empty_key[8..12].copy_from_slice(&0u32.to_le_bytes());
        assert!(Header::parse(&empty_key).is_none());
    }

    /// A header announcing more than a segment holds (a foreign or damaged file) is refused
    /// before anything of that size is read.
    #[test]
    fn a_header_announcing_more_than_a_segment_is_refused() {
        let mut entry = encode(Kind::Value, b"key", b"v");
        let fits = (super::super::MAX_SEGMENT - 3) as u32;
        entry[12..16].copy_from_slice(&fits.to_le_bytes());
        assert!(Header::parse(&entry).is_some());
        entry[12..16].copy_from_slice(&(fits + 1).to_le_bytes());
        assert!(Header::parse(&entry).is_none());
        entry[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Header::parse(&entry).is_none());
    }

    #[test]
    fn an_entry_fed_in_pieces_checks_as_a_whole_one() {
        let entry = encode(Kind::Value, b"key", b"a value in pieces");
        let header = Header::parse(&entry).unwrap();
        let mut checker = header.checker();
        for piece in entry[HEADER..].chunks(5) {
            checker.update(piece);
        }
        assert!(checker.matches());
        let mut damaged = header.checker();
        damaged.update(&entry[HEADER..entry.len() - 1]);
        damaged.update(b"X");
        assert!(!damaged.matches());
    }

    #[test]
    fn a_truncated_entry_does_not_check() {
        let entry = encode(Kind::Value, b"key", b"value");
        let header = Header::parse(&entry).unwrap();
        assert!(!header.check(&entry[..entry.len() - 1], b"key"));
    }
}
