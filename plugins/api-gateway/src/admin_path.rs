//! Recognises `/admin` and everything below it, however the path is spelled, and gives
//! the path as an origin resolves it for routing.
//!
//! Origins decode percent-escapes, collapse `//`, resolve `..` and often
//! ignore case, so a plain prefix test would let `/%61dmin`, `//admin` or
//! `/x/../admin` through. Windows and IIS-style origins also take `\` for `/`
//! and ignore a name's trailing dots and spaces (`/admin.`, `/admin%20`), and
//! some cut a name at a control byte (`/admin%00`). The path is normalised
//! the same way before the first segment is compared.

/// Whether the request path is `/admin` or below it, but not e.g. `/administrator`.
pub(crate) fn is_admin_path(path: &str) -> bool {
    normalized_segments(&percent_decode(path))
        .first()
        .is_some_and(|first| first.eq_ignore_ascii_case("admin"))
}

/// The path as the origin resolves it: decoded, `\` taken for `/`, dot segments resolved,
/// empty segments dropped (a trailing `/` kept). Routes and the micro-cache are chosen on
/// this form: on the raw text, `/api/../internal/x` would go to the API backend (which
/// serves its `/internal/x`) and be kept as an API answer.
pub(crate) fn canonical_path(path: &str) -> String {
    let decoded = percent_decode(path);
    let mut canonical = String::with_capacity(decoded.len() + 1);
    for segment in normalized_segments(&decoded) {
        canonical.push('/');
        canonical.push_str(segment);
    }
    if canonical.is_empty() || decoded.ends_with(['/', '\\']) {
        canonical.push('/');
    }
    canonical
}

/// Path segments after dropping empty and `.` segments, `;parameters`, and
/// resolving `..` (RFC 3986 §5.2.4).
fn normalized_segments(path: &str) -> Vec<&str> {
    let mut segments = Vec::new();
    for segment in path.split(['/', '\\']) {
        let segment = segment.split(';').next().unwrap_or(segment);
        let segment = segment.trim_end_matches(|c: char| c == ' ' || c.is_ascii_control());
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            // `admin.` names `admin`; a segment of dots alone names nothing.
            _ => match segment.trim_end_matches('.') {
                "" => {}
                name => segments.push(name),
            },
        }
    }
    segments
}

/// Decodes every valid `%XX`; invalid escapes and non-UTF-8 results are kept
/// lossily, which is enough for comparing against an ASCII name.
fn percent_decode(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes.get(i..i + 3) {
            Some([b'%', high, low]) => hex_digit(*high).zip(hex_digit(*low)),
            _ => None,
        };
        match escaped {
            Some((high, low)) => {
                decoded.push(high << 4 | low);
                i += 3;
            }
            None => {
                decoded.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

fn hex_digit(byte: u8) -> Option<u8> {
    char::from(byte).to_digit(16).map(|digit| digit as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_and_below() {
        for path in ["/admin", "/admin/", "/admin/users", "/admin/a/b?c"] {
            assert!(is_admin_path(path), "{path}");
        }
    }

    #[test]
    fn disguised_spellings_are_still_admin() {
        for path in [
            "/ADMIN",
            "/%61dmin",
            "/%2561dmin/..%2f..%2fadmin",
            "//admin",
            "/./admin",
            "/x/../admin",
            "/admin;jsessionid=1",
            "/%2Fadmin",
            "/\\admin",
            "/x\\..\\admin",
            "/x%5c..%5cadmin",
            "/admin%20",
            "/admin.",
            "/admin%00",
            "/admin%09/x",
            "/x/.. /admin",
        ] {
            assert!(is_admin_path(path), "{path}");
        }
    }

    #[test]
    fn other_paths_are_not_admin() {
        for path in [
            "/",
            "/administrator",
            "/admins",
            "/api/admin",
            "/admin.php",
            "/%zzadmin",
            "/x%",
        ] {
            assert!(!is_admin_path(path), "{path}");
        }
    }

    #[test]
    fn canonical_paths_resolve_what_an_origin_resolves() {
        assert_eq!(canonical_path("/api/items"), "/api/items");
        assert_eq!(canonical_path("/api/"), "/api/");
        assert_eq!(canonical_path("/"), "/");
        assert_eq!(
            canonical_path("/api/../internal/secret.txt"),
            "/internal/secret.txt"
        );
        assert_eq!(canonical_path("/api/%2e%2e/internal/x"), "/internal/x");
        assert_eq!(canonical_path("/x/../api/items"), "/api/items");
        assert_eq!(canonical_path("//api\\items"), "/api/items");
    }

    #[test]
    fn decoding_keeps_invalid_escapes() {
        assert_eq!(percent_decode("/a%20b%zz%+1%4"), "/a b%zz%+1%4");
    }
}
