//! Purge tags as a stored object carries them (the index of who carries which tag is
//! `index::tag_index`).
//!
//! Tags travel inside the stored response header ([`super::TAGS_HEADER`], space-separated), so
//! they follow the object through revalidations without any side channel; the proxy removes
//! that header before a response goes downstream.

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
