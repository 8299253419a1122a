//! Purge tags: which stored objects carry which tag, per partition.
//!
//! Tags travel inside the stored response header ([`super::TAGS_HEADER`], space-separated), so
//! they follow the object through revalidations without any side channel; the proxy removes
//! that header before a response goes downstream.

use super::entry::{Entry, SlotKey};
use std::collections::{HashMap, HashSet};

/// Most tags kept per object; more would let one response bloat the index.
const MAX_TAGS: usize = 64;
/// Longest tag kept; longer ones are ignored.
const MAX_TAG_BYTES: usize = 256;

/// The tags a stored header carries.
pub(super) fn parse(headers: &http::HeaderMap) -> Box<[Box<str>]> {
    let mut tags: Vec<Box<str>> = Vec::new();
    for value in headers.get_all(super::TAGS_HEADER) {
        let Ok(value) = value.to_str() else { continue };
        for tag in value.split_ascii_whitespace() {
            if tags.len() >= MAX_TAGS {
                break;
            }
            if tag.len() <= MAX_TAG_BYTES && !tags.iter().any(|t| &**t == tag) {
                tags.push(tag.into());
            }
        }
    }
    tags.into_boxed_slice()
}

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
