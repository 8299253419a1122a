//! Purge tags as a stored object carries them (the index of who carries which tag is
//! `index::tag_index`).
//!
//! Tags travel inside the stored response header ([`super::TAGS_HEADER`], space-separated), so
//! they follow the object through revalidations without any side channel; the proxy removes
//! that header before a response goes downstream.

/// Most tags kept per object; more would let one response bloat the index.
pub(crate) const MAX_TAGS: usize = 64;
/// Longest tag kept; longer ones are ignored.
pub(crate) const MAX_TAG_BYTES: usize = 256;

/// Most tags a response may list, repeats included; a longer list is not read to its end, and
/// the response is not stored. Each tag listed is compared with those kept (up to 64), and a
/// plugin may hand back megabytes of tags: millions of repeats held a worker for a third of a
/// second.
pub(crate) const MAX_TAGS_LISTED: usize = 1024;

/// The distinct tags of a response's list, in the order listed, when the index can keep them
/// all; otherwise why not. A tag left out of the index would let its purge miss the object,
/// so such a response is not stored.
pub(crate) fn indexable<'a>(
    listed: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<&'a str>, &'static str> {
    let mut kept: Vec<&str> = Vec::new();
    for (n, tag) in listed.into_iter().enumerate() {
        if n == MAX_TAGS_LISTED {
            return Err("more than 1024 purge tags (Surrogate-Key) listed, repeats included");
        }
        // Nothing else travels in the stored header that `parse` reads back.
        if !tag.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("a purge tag (Surrogate-Key) that is not visible ASCII");
        }
        if tag.len() > MAX_TAG_BYTES {
            return Err("a purge tag (Surrogate-Key) longer than 256 bytes");
        }
        if !kept.contains(&tag) {
            if kept.len() == MAX_TAGS {
                return Err("more than 64 purge tags (Surrogate-Key)");
            }
            kept.push(tag);
        }
    }
    Ok(kept)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_a_stored_object_may_carry_are_exactly_those_the_index_keeps() {
        let many = |n: usize| {
            (0..n)
                .map(|i| format!("t{i}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let unindexable = |list: &str| indexable(list.split_ascii_whitespace()).err();
        assert_eq!(unindexable(&many(64)), None);
        // Repeats count once, as the index keeps them.
        let repeated = format!("{} t0 t1", many(64));
        assert_eq!(
            indexable(repeated.split_ascii_whitespace()).unwrap().len(),
            64
        );
        assert!(unindexable(&many(65)).is_some());
        assert_eq!(unindexable(&"a".repeat(256)), None);
        assert!(unindexable(&format!("x {}", "a".repeat(257))).is_some());
        assert!(unindexable("product-1 cat\u{e9}gorie").is_some());
        assert!(unindexable("product-1 \u{1}").is_some());
        // A list is read up to its 1024th tag, repeats included.
        assert_eq!(unindexable(&"t ".repeat(MAX_TAGS_LISTED)), None);
        assert!(unindexable(&"t ".repeat(MAX_TAGS_LISTED + 1)).is_some());
        // Whatever passes is kept whole by `parse`.
        let mut headers = http::HeaderMap::new();
        headers.insert(super::super::TAGS_HEADER, many(64).parse().unwrap());
        assert_eq!(parse(&headers).len(), 64);
    }
}
