//! Which statuses may be cached without explicit freshness (RFC 9110 §15.1),
//! minus 206: a partial body must not be stored as if it were the whole.

pub(crate) fn is_cacheable_by_default(status: u16) -> bool {
    matches!(
        status,
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_and_permanent_answers_only() {
        assert!(is_cacheable_by_default(200));
        assert!(is_cacheable_by_default(404));
        for status in [201, 206, 302, 304, 400, 401, 403, 429, 500, 502, 503] {
            assert!(!is_cacheable_by_default(status), "{status}");
        }
    }
}
