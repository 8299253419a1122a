//! The bound on body bytes held by fills in progress (bodies being buffered to be stored, and
//! L2 copies on their way into L1), shared by every tenant, with each tenant's share bounded.
//!
//! Without a share, one tenant whose origin trickles a few bodies near `max_object_bytes`
//! holds the whole budget: every other tenant's fills are then not stored (their origins take
//! the load) and their slow readers get the short lag. With more than one tenant, a tenant's
//! fills hold at most half the budget, so at least half is always there for the others.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

pub(super) struct FillBudget {
    /// Bytes held by every fill.
    held: AtomicUsize,
    max: AtomicUsize,
    /// Bytes held by each tenant's fills (only tenants holding some).
    by_partition: Mutex<HashMap<String, usize>>,
    /// Tenants configured: a lone tenant may use the whole budget.
    tenants: AtomicUsize,
}

impl FillBudget {
    pub(super) fn new(max: usize) -> Self {
        Self {
            held: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
            by_partition: Mutex::default(),
            tenants: AtomicUsize::new(1),
        }
    }

    /// The most one tenant's fills may hold.
    fn share(&self) -> usize {
        let max = self.max.load(Ordering::Relaxed);
        if self.tenants.load(Ordering::Relaxed) > 1 {
            max / 2
        } else {
            max
        }
    }

    /// Takes `bytes` for a fill of `partition`; false when the budget or the tenant's share is
    /// spent (that fill stops buffering: it is not stored).
    pub(super) fn reserve(&self, partition: &str, bytes: usize) -> bool {
        let mut by_partition = self.by_partition.lock();
        let own = by_partition.get(partition).copied().unwrap_or(0);
        if own.saturating_add(bytes) > self.share() {
            return false;
        }
        let max = self.max.load(Ordering::Relaxed);
        let taken = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|&total| total <= max)
            })
            .is_ok();
        if taken {
            *by_partition.entry(partition.to_owned()).or_default() += bytes;
        }
        taken
    }

    /// Takes `bytes` whether or not the budget is spent (one chunk a fill cannot do without).
    pub(super) fn force(&self, partition: &str, bytes: usize) {
        *self
            .by_partition
            .lock()
            .entry(partition.to_owned())
            .or_default() += bytes;
        self.held.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Gives back what [`Self::reserve`] or [`Self::force`] took.
    pub(super) fn release(&self, partition: &str, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let mut by_partition = self.by_partition.lock();
        if let Some(own) = by_partition.get_mut(partition) {
            *own = own.saturating_sub(bytes);
            if *own == 0 {
                by_partition.remove(partition);
            }
        }
        self.held.fetch_sub(bytes, Ordering::AcqRel);
    }

    pub(super) fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    pub(super) fn set_max(&self, bytes: usize) {
        self.max.store(bytes, Ordering::Relaxed);
    }

    pub(super) fn set_tenants(&self, count: usize) {
        self.tenants.store(count, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_tenant_of_several_holds_at_most_half() {
        let budget = FillBudget::new(100);
        assert!(budget.reserve("alone", 100), "a lone tenant has it all");
        budget.release("alone", 100);

        budget.set_tenants(2);
        assert!(budget.reserve("greedy", 50));
        assert!(!budget.reserve("greedy", 1), "past its half");
        assert!(budget.reserve("other", 50), "the other half is there");
        assert!(!budget.reserve("third", 1), "the whole budget is spent");
        budget.release("greedy", 50);
        assert!(budget.reserve("third", 10));
        assert_eq!(budget.held(), 60);
        budget.force("greedy", 70);
        assert_eq!(budget.held(), 130);
        budget.release("greedy", 70);
        budget.release("other", 50);
        budget.release("third", 10);
        assert_eq!(budget.held(), 0);
        assert!(budget.by_partition.lock().is_empty());
    }
}
