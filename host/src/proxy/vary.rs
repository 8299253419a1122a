//! Variants under one key (RFC 9111 §4.1): the variance of a request is a hash of the values
//! of the request fields the stored response's `Vary` names, lightly normalised so trivial
//! spelling differences share a variant.

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
    let mut names: Vec<String> = meta
        .headers()
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
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

/// All of the field's lines joined, lower-cased and with whitespace runs collapsed.
fn request_value(req: &RequestHeader, name: &str) -> Vec<u8> {
    let mut lines = req.headers.get_all(name).iter().peekable();
    if lines.peek().is_none() {
        return ABSENT.to_vec();
    }
    let mut out = Vec::new();
    for (i, line) in lines.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        for word in line.as_bytes().split(u8::is_ascii_whitespace) {
            if word.is_empty() {
                continue;
            }
            if !out.is_empty() && !out.ends_with(b",") {
                out.push(b' ');
            }
            out.extend(word.iter().map(u8::to_ascii_lowercase));
        }
    }
    out
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
