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
}

impl RedisSize {
    /// Takes a sample: the key count (`DBSIZE`) and the text of `INFO memory`.
    pub(super) fn record(&self, keys: u64, info_memory: &str) {
        self.keys.store(keys, Relaxed);
        if let Some(bytes) = used_memory(info_memory) {
            self.used_bytes.store(bytes, Relaxed);
        }
        self.sampled.store(true, Relaxed);
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
    info.lines()
        .find_map(|line| line.trim_end().strip_prefix("used_memory:"))
        .and_then(|value| value.parse().ok())
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
