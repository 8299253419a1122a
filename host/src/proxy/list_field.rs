//! The elements of a comma-separated list field (RFC 9110 §5.6.1) across all its lines:
//! `Vary`, `Connection`, `Cache-Control`, `X-Forwarded-Proto`... Values that are not text
//! and empty elements are skipped; each element is trimmed.

use http::header::AsHeaderName;
use http::HeaderMap;

pub(super) fn elements<K: AsHeaderName>(
    headers: &HeaderMap,
    name: K,
) -> impl Iterator<Item = &str> {
    trimmed(lines(headers, name).flat_map(|v| v.split(',')))
}

/// Like [`elements`], for fields whose elements may hold quoted strings (RFC 9110 §5.6.4),
/// such as `Forwarded`: a comma inside quotes does not end an element.
pub(super) fn quoted_elements<K: AsHeaderName>(
    headers: &HeaderMap,
    name: K,
) -> impl Iterator<Item = &str> {
    trimmed(lines(headers, name).flat_map(|v| split_unquoted(v, ',')))
}

/// The field's lines that are text.
fn lines<K: AsHeaderName>(headers: &HeaderMap, name: K) -> impl Iterator<Item = &str> {
    headers.get_all(name).iter().filter_map(|v| v.to_str().ok())
}

fn trimmed<'a>(elements: impl Iterator<Item = &'a str>) -> impl Iterator<Item = &'a str> {
    elements
        .map(str::trim)
        .filter(|element| !element.is_empty())
}

/// `text` split at each `separator` outside a quoted string; a backslash inside quotes
/// escapes the next character (so `"a\";b"` is one quoted string).
pub(super) fn split_unquoted(text: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (at, c) in text.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == separator && !quoted => {
                parts.push(&text[start..at]);
                start = at + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::{elements, quoted_elements, split_unquoted};
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

    #[test]
    fn separators_inside_quoted_strings_do_not_split() {
        assert_eq!(
            split_unquoted(r#"for=x;host="a;proto=https";proto=http"#, ';'),
            ["for=x", r#"host="a;proto=https""#, "proto=http"]
        );
        assert_eq!(
            split_unquoted(r#"host="a\";proto=https";by=y"#, ';'),
            [r#"host="a\";proto=https""#, "by=y"]
        );
        let mut headers = HeaderMap::new();
        headers.append(
            "forwarded",
            HeaderValue::from_static(r#"for="x,proto=https", for=y"#),
        );
        let found: Vec<&str> = quoted_elements(&headers, "forwarded").collect();
        assert_eq!(found, [r#"for="x,proto=https""#, "for=y"]);
    }
}
