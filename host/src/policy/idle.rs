//! The idle instances of one plugin version, kept near the thread that used them last.
//!
//! Why not one shared stack: the proxy's worker threads then take the lock and write the
//! stack's cache lines on every call, each in turn, and hand the same instance back and
//! forth, so its store and linear memory (all of it written by each reset) move from one
//! core's cache to the other's. Each thread takes first from its own shelf, under a lock
//! the other threads rarely touch; a thread whose shelf is empty borrows from another's
//! before a new instance is made.

use crate::thread_index::{shard_count, thread_index};
use parking_lot::Mutex;

/// Idle items on shelves, one shelf per thread (threads share shelves past their number).
pub(crate) struct Shelves<T> {
    shelves: Box<[Mutex<Vec<T>>]>,
    per_shelf: usize,
}

impl<T> Shelves<T> {
    /// A shelf per core, holding at most `max_idle` items in all (at least one per shelf).
    pub(crate) fn new(max_idle: usize) -> Self {
        Self::with_shelves(shard_count(), max_idle)
    }

    fn with_shelves(count: usize, max_idle: usize) -> Self {
        Self {
            shelves: (0..count).map(|_| Mutex::new(Vec::new())).collect(),
            per_shelf: (max_idle / count).max(1),
        }
    }

    /// The item this thread put back last, or else one from another thread's shelf.
    pub(crate) fn take(&self) -> Option<T> {
        self.take_from(self.home())
    }

    fn take_from(&self, home: usize) -> Option<T> {
        if let Some(item) = self.shelves[home].lock().pop() {
            return Some(item);
        }
        let count = self.shelves.len();
        (1..count).find_map(|step| self.shelves[(home + step) % count].lock().pop())
    }

    /// Keeps `item` on this thread's shelf; drops it when the shelf is full.
    pub(crate) fn put_back(&self, item: T) {
        self.put_back_to(self.home(), item)
    }

    fn put_back_to(&self, home: usize, item: T) {
        let mut shelf = self.shelves[home].lock();
        if shelf.len() < self.per_shelf {
            shelf.push(item);
        }
    }

    /// This thread's shelf.
    fn home(&self) -> usize {
        thread_index() % self.shelves.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_takes_back_its_own_before_what_others_put_back_since() {
        let shelves = Shelves::with_shelves(4, 32);
        shelves.put_back_to(1, "mine");
        shelves.put_back_to(2, "the other thread's, put back later");
        assert_eq!(shelves.take_from(1), Some("mine"));
        // An empty shelf borrows from another thread's rather than leave it idle.
        assert_eq!(
            shelves.take_from(1),
            Some("the other thread's, put back later")
        );
        assert_eq!(shelves.take_from(1), None);
    }

    #[test]
    fn the_bound_holds_for_all_shelves_together() {
        let shelves = Shelves::with_shelves(4, 8);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for n in 0..10 {
                        shelves.put_back(n);
                    }
                });
            }
        });
        let mut kept = 0;
        while shelves.take().is_some() {
            kept += 1;
        }
        assert!((1..=8).contains(&kept), "{kept} kept");
    }
}
