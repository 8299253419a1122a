//! Test-only invariant check: counters and LRUs agree with the stored objects.

use super::Index;
use pingora_cache::eviction::EvictionManager;

impl Index {
    /// Checks that counters and LRUs agree with the stored objects.
    pub(crate) fn assert_consistent(&self) {
        let (mut bytes, mut objects) = (0, 0);
        for part in self.partitions.values() {
            let entries: Vec<_> = part
                .slots
                .values()
                .filter_map(|s| s.complete.as_ref())
                .collect();
            let part_bytes: usize = entries.iter().map(|e| e.weight).sum();
            assert_eq!(part.counters.stored_bytes(), part_bytes as u64);
            assert_eq!(part.counters.objects(), entries.len() as u64);
            if let Some(lru) = &part.lru {
                assert_eq!(lru.total_size(), part_bytes);
                assert!(part_bytes <= lru.weight_limit());
            }
            assert!(entries.iter().all(|e| self.global.peek(&e.lru_key)));
            bytes += part_bytes;
            objects += entries.len();
        }
        assert_eq!(self.counters.stored_bytes(), bytes as u64);
        assert_eq!(self.counters.objects(), objects as u64);
        assert_eq!(self.global.total_size(), bytes);
        assert_eq!(self.global.total_items(), objects);
        assert!(bytes <= self.global.weight_limit());
    }
}
