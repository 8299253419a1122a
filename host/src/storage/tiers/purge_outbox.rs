//! Purges this node made that Redis did not take, kept to be sent again.
//!
//! A PURGE made while Redis is unreachable applies on this node and answers 503, but the
//! other nodes never heard of it: a node that kept its connection (a partition between this
//! node and Redis) or that reconnected before this one went on serving the purged copy from
//! its memory until it expired, and the copy stayed in Redis. The purge channel sends what is
//! kept here again once it listens (and at each of its pings while anything is left), the
//! mark dated as when the purge was made, so it removes only copies made before it.
//!
//! At most `[cache.shared] purge_backlog` purges are kept; past that the oldest is dropped
//! and counted (`purges_not_resent`).

use super::purges::Purge;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

pub(crate) struct PurgeOutbox {
    waiting: Mutex<VecDeque<Purge>>,
    limit: usize,
    /// Purges dropped to stay within `limit`: never sent.
    dropped: AtomicU64,
}

impl PurgeOutbox {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            waiting: Mutex::new(VecDeque::new()),
            limit: limit.max(1),
            dropped: AtomicU64::new(0),
        }
    }

    /// Keeps a purge Redis did not take, after those kept before it.
    pub(crate) fn keep(&self, purge: Purge) {
        let mut waiting = self.lock();
        waiting.push_back(purge);
        self.trim(&mut waiting);
    }

    /// Everything kept, oldest first; the outbox is left empty.
    pub(crate) fn take(&self) -> Vec<Purge> {
        self.lock().drain(..).collect()
    }

    /// Puts back purges [`Self::take`] handed out and that could not be sent, before any kept
    /// since (they are older).
    pub(crate) fn put_back(&self, unsent: Vec<Purge>) {
        let mut waiting = self.lock();
        for purge in unsent.into_iter().rev() {
            waiting.push_front(purge);
        }
        self.trim(&mut waiting);
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    fn trim(&self, waiting: &mut VecDeque<Purge>) {
        let over = waiting.len().saturating_sub(self.limit);
        if over == 0 {
            return;
        }
        waiting.drain(..over);
        let before = self.dropped.fetch_add(over as u64, Relaxed);
        // Once per thousand, so a long outage under a purging script does not flood the log.
        if before / 1000 != (before + over as u64) / 1000 || before == 0 {
            tracing::warn!(
                "shared tier: more than {} purges wait for Redis to come back \
                 (purge_backlog); the oldest are dropped and will not reach the other nodes \
                 ({} so far)",
                self.limit,
                before + over as u64
            );
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Purge>> {
        // A panic while holding the lock leaves a queue that is still whole.
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::tiers::purges::Target;

    fn purge(at: u64) -> Purge {
        Purge {
            target: Target::Key(format!("{at:040x}")),
            soft: false,
            at,
        }
    }

    fn dates(purges: &[Purge]) -> Vec<u64> {
        purges.iter().map(|p| p.at).collect()
    }

    #[test]
    fn what_is_put_back_goes_before_what_came_meanwhile() {
        let outbox = PurgeOutbox::new(10);
        outbox.keep(purge(1));
        outbox.keep(purge(2));
        let taken = outbox.take();
        assert_eq!(outbox.len(), 0);
        outbox.keep(purge(3));
        outbox.put_back(taken);
        assert_eq!(dates(&outbox.take()), [1, 2, 3]);
    }

    #[test]
    fn past_the_limit_the_oldest_are_dropped_and_counted() {
        let outbox = PurgeOutbox::new(2);
        for at in 1..=5 {
            outbox.keep(purge(at));
        }
        assert_eq!(outbox.dropped(), 3);
        let taken = outbox.take();
        assert_eq!(dates(&taken), [4, 5]);
        outbox.keep(purge(6));
        outbox.put_back(taken);
        assert_eq!(dates(&outbox.take()), [5, 6]);
        assert_eq!(outbox.dropped(), 4);
    }
}
