//! Variants under one key (RFC 9111 §4.1): the variance of a request is a hash of the values
//! of the request fields the stored response's `Vary` names. §4.1 allows only normalisation
//! "known to have identical semantics": the content-negotiation fields, lists of
//! case-insensitive tokens, share a variant whatever their case and spacing; every other
//! field (a cookie, an API key, a custom token) must match exactly, or one client could
//! fill the variant another is served.

use pingora::http::RequestHeader;
use pingora_cache::key::HashBinary;
use pingora_cache::{CacheMeta, VarianceBuilder};

/// Stands for an absent field, so "absent" and "empty" are different variants; no field value
/// can contain a NUL byte.
const ABSENT: &[u8] = b"\0absent";

/// The request's variance for `meta`, or None when the response does not vary.
/// `plugin_values` gives the tenant's plugin the chance to say how each
/// varying header compares (None: the default normalisation below).
pub fn variance(
    meta: &CacheMeta,
    req: &RequestHeader,
    plugin_values: impl FnOnce(&[String]) -> Vec<Option<String>>,
) -> Option<HashBinary> {
    let mut names: Vec<String> = super::list_field::elements(meta.headers(), http::header::VARY)
        .map(str::to_ascii_lowercase)
        .collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        return None;
    }
    let mut overrides = plugin_values(&names).into_iter();
    let mut builder = VarianceBuilder::new();
    for name in names {
        let value = match overrides.next().flatten() {
            // Marked so a plugin value never equals a default-normalised one.
            Some(v) => [b"\0plugin:".as_slice(), v.as_bytes()].concat(),
            None => request_value(req, &name),
        };
        builder.add_owned_name_value(name, value);
    }
    builder.finalize()
}

/// Fields whose values are comma-separated lists of case-insensitive tokens (RFC 9110
/// §12.5): their lines may be combined, and case and whitespace carry no meaning.
const TOKEN_LISTS: [&str; 4] = [
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
];

/// The value the variant is chosen by: for a token list, its elements normalised
/// ([`normalise_element`]) across its lines; for any other field, each line as sent (less the
/// surrounding whitespace a parser drops), lines kept apart by a byte no value can hold.
fn request_value(req: &RequestHeader, name: &str) -> Vec<u8> {
    let mut lines = req.headers.get_all(name).iter().peekable();
    if lines.peek().is_none() {
        return ABSENT.to_vec();
    }
    let mut out = Vec::new();
    if !TOKEN_LISTS.contains(&name) {
        for (i, line) in lines.enumerate() {
            if i > 0 {
                out.push(b'\n');
            }
            out.extend_from_slice(line.as_bytes().trim_ascii());
        }
        return out;
    }
    let elements = lines.flat_map(|line| split_outside_quotes(line.as_bytes()));
    for element in elements.map(<[u8]>::trim_ascii) {
        if element.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(b',');
        }
        normalise_element(element, &mut out);
    }
    out
}

/// A list's elements: split at commas, except inside a quoted string (`;x="a,b"`).
fn split_outside_quotes(line: &[u8]) -> Vec<&[u8]> {
    let mut elements = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, &byte) in line.iter().enumerate() {
        match byte {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                elements.push(&line[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    elements.push(&line[start..]);
    elements
}

/// One element with what carries no meaning removed (RFC 9110 §12.5.1): runs of whitespace
/// become one space, and the case of the token and of parameter names goes. Parameter values
/// and quoted strings are kept as sent: a media type's `profile=A` may not be `profile=a`.
fn normalise_element(element: &[u8], out: &mut Vec<u8>) {
    let (mut in_value, mut quoted, mut escaped, mut space) = (false, false, false, false);
    for &byte in element {
        if quoted {
            out.push(byte);
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => quoted = false,
                _ => {}
            }
            continue;
        }
        if byte.is_ascii_whitespace() {
            space = true;
            continue;
        }
        if std::mem::take(&mut space) {
            out.push(b' ');
        }
        match byte {
            b'"' => quoted = true,
            b';' => in_value = false,
            b'=' if !in_value => in_value = true,
            _ => {}
        }
        out.push(if in_value {
            byte
        } else {
            byte.to_ascii_lowercase()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn variance_default(meta: &CacheMeta, req: &RequestHeader) -> Option<HashBinary> {
        variance(meta, req, |names| vec![None; names.len()])
    }
    use pingora::http::ResponseHeader;
    use std::time::SystemTime;

    fn meta(vary: &str) -> CacheMeta {
        let mut r = ResponseHeader::build(200, None).expect("header");
        r.insert_header("vary", vary).expect("valid");
        let now = SystemTime::now();
        CacheMeta::new(now, now, 0, 0, r)
    }

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).expect("request");
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).expect("valid");
        }
        r
    }

    #[test]
    fn normalised_values_share_a_variant() {
        let m = meta("Accept-Encoding");
        assert_eq!(
            variance_default(&m, &req(&[("accept-encoding", "gzip,  BR")])),
            variance_default(&m, &req(&[("Accept-Encoding", " GZIP, br ")]))
        );
        assert_ne!(
            variance_default(&m, &req(&[("accept-encoding", "gzip")])),
            variance_default(&m, &req(&[("accept-encoding", "br")]))
        );
    }

    #[test]
    fn token_lists_share_a_variant_across_lines_and_spacing() {
        let m = meta("Accept-Language");
        let one = variance_default(&m, &req(&[("accept-language", "fr-CH,de;q=0.5")]));
        assert_eq!(
            one,
            variance_default(
                &m,
                &req(&[
                    ("accept-language", "FR-ch"),
                    ("accept-language", " de;q=0.5 ")
                ])
            )
        );
    }

    #[test]
    fn parameter_values_and_quoted_strings_keep_their_case_and_spacing() {
        let m = meta("Accept");
        let with = |value: &str| variance_default(&m, &req(&[("accept", value)]));
        let upper = with("application/vnd.x+json;profile=A");
        assert_eq!(upper, with("Application/VND.X+JSON;PROFILE=A"));
        assert_ne!(upper, with("application/vnd.x+json;profile=a"));
        // A quoted comma does not split the element, and quoted spaces are the value's.
        let quoted = with(r#"text/x;f="a, b""#);
        assert_ne!(quoted, with(r#"text/x;f="a,b""#));
        assert_ne!(quoted, with(r#"text/x;f="a,  b""#));
        assert_eq!(quoted, with(r#"TEXT/X;f="a, b""#));
    }

    #[test]
    fn other_fields_must_match_exactly() {
        for name in ["cookie", "x-api-key", "user-agent"] {
            let m = meta(name);
            let with = |headers: &[(&str, &str)]| variance_default(&m, &req(headers));
            let stored = with(&[(name, "theme=Dark; sid=Q29v")]);
            assert_eq!(stored, with(&[(name, " theme=Dark; sid=Q29v ")]), "{name}");
            assert_ne!(stored, with(&[(name, "theme=dark; sid=q29v")]), "{name}");
            assert_ne!(stored, with(&[(name, "theme=Dark;  sid=Q29v")]), "{name}");
            // Two lines are not the one line a list field would combine them into.
            assert_ne!(
                with(&[(name, "a=1"), (name, "b=2")]),
                with(&[(name, "a=1,b=2")]),
                "{name}"
            );
        }
    }

    #[test]
    fn absent_and_empty_differ_and_both_vary() {
        let m = meta("accept-language, accept-encoding");
        let absent = variance_default(&m, &req(&[]));
        assert!(absent.is_some());
        assert_ne!(
            absent,
            variance_default(&m, &req(&[("accept-language", "")]))
        );
    }

    #[test]
    fn no_vary_no_variance() {
        let mut r = ResponseHeader::build(200, None).expect("header");
        r.insert_header("cache-control", "max-age=1")
            .expect("valid");
        let now = SystemTime::now();
        let m = CacheMeta::new(now, now, 0, 0, r);
        assert_eq!(variance_default(&m, &req(&[("accept", "x")])), None);
    }
}
