//! Purge tags: which stored objects carry which tag, per partition. Kept in step with the
//! stored objects by the index.

use crate::storage::entry::{Entry, SlotKey};
use std::collections::{HashMap, HashSet};

/// Tag → stored objects carrying it. Kept in step with the stored objects by the index.
#[derive(Default)]
pub(super) struct TagIndex {
    by_tag: HashMap<Box<str>, HashSet<SlotKey>>,
}

impl TagIndex {
    pub(super) fn add(&mut self, key: SlotKey, entry: &Entry) {
        for tag in entry.meta.tags() {
            self.by_tag.entry(tag.clone()).or_default().insert(key);
        }
    }

    pub(super) fn remove(&mut self, key: &SlotKey, entry: &Entry) {
        for tag in entry.meta.tags() {
            if let Some(keys) = self.by_tag.get_mut(tag) {
                keys.remove(key);
                if keys.is_empty() {
                    self.by_tag.remove(tag);
                }
            }
        }
    }

    /// Objects carrying any of `tags`, each once.
    pub(super) fn tagged<'a>(&self, tags: impl IntoIterator<Item = &'a str>) -> Vec<SlotKey> {
        let mut found = HashSet::new();
        for tag in tags {
            if let Some(keys) = self.by_tag.get(tag) {
                found.extend(keys.iter().copied());
            }
        }
        found.into_iter().collect()
    }
}
