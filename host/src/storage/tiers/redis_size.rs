//! What the shared tier's Redis database holds, for `/status` and the metrics: sampled in the
//! background (`DBSIZE` and `INFO memory`), never asked on a request's path.
//!
//! Why not count writes: a node sees only its own, not the other nodes', nor what Redis
//! expired, evicted or lost in a restart or a `FLUSHALL`. Counted, the figures only grew
//! (probe Z: 15,192 objects and 725 MiB reported while Redis held 2,469 keys and 135 MiB).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// How often the figures are sampled.
pub(super) const SAMPLE_EVERY: Duration = Duration::from_secs(5);

#[derive(Default)]
pub(super) struct RedisSize {
    keys: AtomicU64,
    used_bytes: AtomicU64,
    sampled: AtomicBool,
    /// Redis's `maxmemory-policy` may evict keys without an expiry (`allkeys-*`).
    evicts_any_key: AtomicBool,
}

impl RedisSize {
    /// Takes a sample: the key count (`DBSIZE`) and the text of `INFO memory`.
    /// Returns whether Redis now evicts keys without an expiry and did not at the last
    /// sample (`Some(true)`), or the reverse (`Some(false)`).
    pub(super) fn record(&self, keys: u64, info_memory: &str) -> Option<bool> {
        self.keys.store(keys, Relaxed);
        if let Some(bytes) = used_memory(info_memory) {
            self.used_bytes.store(bytes, Relaxed);
        }
        self.sampled.store(true, Relaxed);
        let evicts = info_field(info_memory, "maxmemory_policy")
            .is_some_and(|policy| policy.starts_with("allkeys-"));
        (self.evicts_any_key.swap(evicts, Relaxed) != evicts).then_some(evicts)
    }

    /// Whether Redis may evict keys that have no expiry, as the purge marks and the sites
    /// record: a purge whose mark is evicted is undone for every node that reads it later.
    pub(super) fn evicts_any_key(&self) -> bool {
        self.evicts_any_key.load(Relaxed)
    }

    /// Keys in the database (every node's objects and purge marks, and any other keys kept
    /// there); 0 until the first sample.
    pub(super) fn keys(&self) -> u64 {
        self.keys.load(Relaxed)
    }

    /// Bytes the Redis server uses (`used_memory`); 0 until the first sample.
    pub(super) fn used_bytes(&self) -> u64 {
        self.used_bytes.load(Relaxed)
    }
}

/// `used_memory` of an `INFO memory` answer (`used_memory:1234` on a line of its own).
fn used_memory(info: &str) -> Option<u64> {
    info_field(info, "used_memory").and_then(|value| value.parse().ok())
}

/// The value of `name` in an `INFO` answer (`name:value` on a line of its own).
fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        let (field, value) = line.trim_end().split_once(':')?;
        (field == name).then_some(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_memory_is_read_from_its_own_line() {
        let info =
            "# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\nused_memory_rss:2\r\n";
        assert_eq!(used_memory(info), Some(1 << 20));
        assert_eq!(used_memory("# Memory\r\n"), None);
        let size = RedisSize::default();
        size.record(7, info);
        assert_eq!((size.keys(), size.used_bytes()), (7, 1 << 20));
    }
}
