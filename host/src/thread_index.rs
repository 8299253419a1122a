//! A small number per thread, for state kept apart per thread (a shelf of idle plugin
//! instances, a shard of a histogram) so that the proxy's worker threads do not write the
//! same cache lines on every request.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// This thread's number: given out in turn the first time a thread asks, so the worker
/// threads of a proxy get different ones.
pub(crate) fn thread_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
    }
    INDEX.with(|index| {
        index.get().unwrap_or_else(|| {
            let given = NEXT.fetch_add(1, Ordering::Relaxed);
            index.set(Some(given));
            given
        })
    })
}

/// How many shards to keep for state split by [`thread_index`]: one per core the process
/// may use, so that worker threads (one per core or fewer) rarely share one.
pub(crate) fn shard_count() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_get_different_numbers_and_keep_theirs() {
        let mine = thread_index();
        let others: Vec<usize> = (0..4)
            .map(|_| std::thread::spawn(thread_index).join().unwrap())
            .collect();
        assert_eq!(thread_index(), mine);
        let mut all = others.clone();
        all.push(mine);
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 5, "{others:?} and {mine}");
    }
}
