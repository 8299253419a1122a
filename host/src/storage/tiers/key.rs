//! How an object is named in the second-level tiers: its partition (tenant) and the two
//! hashes pingora keys it by, so Vary variants and tenants never share a name.

use pingora_cache::key::{CacheHashKey, CompactCacheKey, HashBinary};
use pingora_cache::CacheKey;

/// Bytes in one of pingora's key hashes.
const KEY_SIZE: usize = std::mem::size_of::<HashBinary>();
/// Format byte, so a change of layout never reads an old name as a new one.
const VERSION: u8 = 1;

/// The bytes naming one stored object in every L2 tier.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct TierKey(Vec<u8>);

impl TierKey {
    pub(crate) fn of(key: &CacheKey) -> Self {
        Self::build(
            &key.user_tag,
            &key.primary_bin(),
            key.variance_bin().as_ref(),
        )
    }

    pub(crate) fn of_compact(key: &CompactCacheKey) -> Self {
        Self::build(&key.user_tag, &key.primary, key.variance.as_deref())
    }

    /// `[version, partition length (2 bytes), partition, primary, variance?]`: the length
    /// prefix keeps partition names from running into the hashes.
    fn build(partition: &str, primary: &HashBinary, variance: Option<&HashBinary>) -> Self {
        let mut bytes = Vec::with_capacity(3 + partition.len() + 2 * KEY_SIZE);
        bytes.push(VERSION);
        let len = partition.len().min(u16::MAX as usize);
        bytes.extend_from_slice(&(len as u16).to_be_bytes());
        bytes.extend_from_slice(&partition.as_bytes()[..len]);
        bytes.extend_from_slice(primary);
        if let Some(variance) = variance {
            bytes.extend_from_slice(variance);
        }
        Self(bytes)
    }

    /// The inverse of [`Self::of_compact`], for names received from other nodes.
    pub(crate) fn to_compact(&self) -> Option<CompactCacheKey> {
        let (&version, rest) = self.0.split_first()?;
        if version != VERSION || rest.len() < 2 {
            return None;
        }
        let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
        let rest = &rest[2..];
        let partition = std::str::from_utf8(rest.get(..len)?).ok()?;
        let hashes = &rest[len..];
        let primary: HashBinary = hashes.get(..KEY_SIZE)?.try_into().ok()?;
        let variance = match hashes.len() {
            n if n == KEY_SIZE => None,
            n if n == 2 * KEY_SIZE => Some(Box::new(hashes[KEY_SIZE..].try_into().ok()?)),
            _ => return None,
        };
        Some(CompactCacheKey {
            primary,
            variance,
            user_tag: partition.into(),
        })
    }

    /// For a `Vary` variant, the name of its primary key alone: the name a purge by URL
    /// marks, which reaches every variant.
    pub(crate) fn without_variance(&self) -> Option<Self> {
        let len = u16::from_be_bytes([*self.0.get(1)?, *self.0.get(2)?]) as usize;
        let primary_end = 3 + len + KEY_SIZE;
        (self.0.len() == primary_end + KEY_SIZE).then(|| Self(self.0[..primary_end].to_vec()))
    }

    pub(crate) fn partition(&self) -> Option<&str> {
        let len = u16::from_be_bytes([*self.0.get(1)?, *self.0.get(2)?]) as usize;
        std::str::from_utf8(self.0.get(3..3 + len)?).ok()
    }

    /// The name of chunk `index` of the copy written at `written_at` (see `chunks`): the
    /// object's name, a separator and both numbers. Never a valid object name (its length
    /// does not add up), so it cannot collide with one.
    pub(crate) fn chunk(&self, written_at: u64, index: u32) -> Self {
        let mut bytes = Vec::with_capacity(self.0.len() + 13);
        bytes.extend_from_slice(&self.0);
        bytes.push(b'#');
        bytes.extend_from_slice(&written_at.to_be_bytes());
        bytes.extend_from_slice(&index.to_be_bytes());
        Self(bytes)
    }

    /// The longest name of an object in a partition of `partition_bytes`.
    pub(crate) const fn max_len(partition_bytes: usize) -> usize {
        3 + partition_bytes + 2 * KEY_SIZE
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// What a stored record carries to say which name it was written under: a value copied
    /// to another name (a mix-up, or another tenant's name) no longer matches.
    pub(crate) fn digest(&self) -> u64 {
        xxhash_rust::xxh3::xxh3_64(&self.0)
    }

    pub(crate) fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }

    pub(crate) fn from_hex(text: &str) -> Option<Self> {
        hex::decode(text).ok().map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_with_and_without_variance() {
        let mut key = CacheKey::new(b"/a".to_vec(), "site");
        let plain = TierKey::of(&key);
        assert_eq!(plain.to_compact(), Some(key.to_compact()));
        assert_eq!(plain.partition(), Some("site"));
        key.set_variance_key([7; KEY_SIZE]);
        let variant = TierKey::of(&key);
        assert_ne!(plain, variant);
        assert_eq!(variant.to_compact(), Some(key.to_compact()));
        assert_eq!(TierKey::from_hex(&variant.to_hex()), Some(variant.clone()));
        assert_eq!(variant.without_variance(), Some(plain.clone()));
        assert_eq!(plain.without_variance(), None);
    }

    #[test]
    fn tenants_never_share_a_name() {
        let a = TierKey::of(&CacheKey::new(b"/x".to_vec(), "a"));
        let b = TierKey::of(&CacheKey::new(b"/x".to_vec(), "b"));
        assert_ne!(a, b);
    }
}
