//! The elements of a comma-separated list field (RFC 9110 §5.6.1) across all its lines:
//! `Vary`, `Connection`, `Cache-Control`, `X-Forwarded-Proto`... Values that are not text
//! and empty elements are skipped; each element is trimmed.

use http::header::AsHeaderName;
use http::HeaderMap;

pub(super) fn elements<K: AsHeaderName>(
    headers: &HeaderMap,
    name: K,
) -> impl Iterator<Item = &str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|element| !element.is_empty())
}

#[cfg(test)]
mod tests {
    use super::elements;
    use http::{HeaderMap, HeaderValue};

    #[test]
    fn elements_of_every_line_trimmed_without_empty_ones() {
        let mut headers = HeaderMap::new();
        headers.append("vary", HeaderValue::from_static(" Accept ,, Cookie"));
        headers.append("vary", HeaderValue::from_static("x-a,"));
        let found: Vec<&str> = elements(&headers, "vary").collect();
        assert_eq!(found, ["Accept", "Cookie", "x-a"]);
        assert_eq!(elements(&headers, "connection").count(), 0);
    }
}
