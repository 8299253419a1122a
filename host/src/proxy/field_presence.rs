//! Whether a request carries any of a few fields, asked on every request (the lean hit's
//! "nothing but a plain GET", the fields that keep a request from the cache).
//!
//! `HeaderMap::contains_key` hashes the name for each lookup: ~100 instructions, ~20 of them
//! per hit (callgrind). A request has a handful of fields, and comparing two `HeaderName`s
//! costs a few instructions (a tag for the standard names, a length first for the others),
//! so a pass over the request's fields answers for all the names at once. Heads with many
//! fields are looked up name by name, which costs the same whatever their size.

use http::{HeaderMap, HeaderName};

/// Above this many distinct field names, a lookup per name costs less than a pass.
const MOST_NAMES_SCANNED: usize = 16;

/// The first of `names`, in their order, that `headers` carries.
pub(crate) fn first_present<'n>(
    headers: &HeaderMap,
    names: &'n [HeaderName],
) -> Option<&'n HeaderName> {
    if headers.keys_len() > MOST_NAMES_SCANNED {
        return names.iter().find(|name| headers.contains_key(*name));
    }
    names
        .iter()
        .find(|name| headers.keys().any(|carried| carried == *name))
}

/// Whether `headers` carries any of `names`.
pub(crate) fn any_present(headers: &HeaderMap, names: &[HeaderName]) -> bool {
    if headers.keys_len() > MOST_NAMES_SCANNED {
        return names.iter().any(|name| headers.contains_key(name));
    }
    headers.keys().any(|carried| names.contains(carried))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    const NAMES: [HeaderName; 3] = [
        header::RANGE,
        HeaderName::from_static("x-original-url"),
        header::IF_MATCH,
    ];

    fn headers(count: usize, extra: &[&'static str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for i in 0..count {
            map.append(
                HeaderName::try_from(format!("x-filler-{i}")).unwrap(),
                "v".parse().unwrap(),
            );
        }
        map.append(header::ACCEPT, "*/*".parse().unwrap());
        for name in extra {
            map.append(HeaderName::from_static(name), "v".parse().unwrap());
        }
        map
    }

    /// Small heads are scanned, large ones looked up: both give the same answers.
    #[test]
    fn a_pass_and_lookups_agree_on_small_and_large_heads() {
        for count in [0, 3, MOST_NAMES_SCANNED, MOST_NAMES_SCANNED + 5, 100] {
            let none = headers(count, &[]);
            assert!(!any_present(&none, &NAMES), "{count} fields");
            assert_eq!(first_present(&none, &NAMES), None);
            // Found in the names' order, not the request's.
            let both = headers(count, &["if-match", "x-original-url"]);
            assert!(any_present(&both, &NAMES));
            assert_eq!(first_present(&both, &NAMES), Some(&NAMES[1]));
            let range = headers(count, &["range"]);
            assert_eq!(first_present(&range, &NAMES), Some(&header::RANGE));
            // A longer name with the same start is another name.
            let longer = headers(count, &["x-original-url-2", "ranges"]);
            assert!(!any_present(&longer, &NAMES), "{count} fields");
        }
    }
}
