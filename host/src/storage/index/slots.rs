//! A partition's slots by key, and the variants stored for each primary key: a response with
//! `Vary` is stored once per variant, and a purge or an invalidation by URL must reach every
//! one of them, not only the slot without a variance.

use super::super::entry::{Slot, SlotKey};
use pingora_cache::key::HashBinary;
use std::collections::HashMap;

#[derive(Default)]
pub(super) struct Slots {
    by_key: HashMap<SlotKey, Slot>,
    /// Keys with a variance, by their primary key.
    variants: HashMap<HashBinary, Vec<SlotKey>>,
}

impl Slots {
    pub(super) fn get(&self, key: &SlotKey) -> Option<&Slot> {
        self.by_key.get(key)
    }

    pub(super) fn get_mut(&mut self, key: &SlotKey) -> Option<&mut Slot> {
        self.by_key.get_mut(key)
    }

    /// The key's slot, made empty if it had none.
    pub(super) fn get_or_insert(&mut self, key: SlotKey) -> &mut Slot {
        let variants = &mut self.variants;
        self.by_key.entry(key).or_insert_with(|| {
            if key.is_variant() {
                variants.entry(key.primary()).or_default().push(key);
            }
            Slot::default()
        })
    }

    pub(super) fn remove(&mut self, key: &SlotKey) -> Option<Slot> {
        let slot = self.by_key.remove(key)?;
        if key.is_variant() {
            if let Some(keys) = self.variants.get_mut(&key.primary()) {
                keys.retain(|k| k != key);
                if keys.is_empty() {
                    self.variants.remove(&key.primary());
                }
            }
        }
        Some(slot)
    }

    /// Every key with a slot that shares `key`'s primary key: the one without a variance and
    /// every variant.
    pub(super) fn all_variants(&self, key: &SlotKey) -> Vec<SlotKey> {
        let plain = key.without_variance();
        let variants = self.variants.get(&key.primary()).into_iter().flatten();
        std::iter::once(&plain)
            .chain(variants)
            .filter(|k| self.by_key.contains_key(k))
            .copied()
            .collect()
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = &SlotKey> {
        self.by_key.keys()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &Slot> {
        self.by_key.values()
    }
}
