//! Recognises `/admin` and everything below it, however the path is spelled, and gives
//! the path as an origin resolves it for routing.
//!
//! Origins decode percent-escapes, collapse `//`, resolve `..` and often
//! ignore case, so a plain prefix test would let `/%61dmin`, `//admin` or
//! `/x/../admin` through. Windows and IIS-style origins also take `\` for `/`
//! and ignore a name's trailing dots and spaces (`/admin.`, `/admin%20`), and
//! some cut a name at a control byte (`/admin%00`) or at an NTFS stream name
//! (`/admin::$INDEX_ALLOCATION`). IIS also decodes `%u0061` and overlong UTF-8
//! (`%c1%a1`), and origins behind another decoding layer see `%2561` as `a`. The path
//! is normalised the same way before the first segment is compared.

/// Whether the request path is `/admin` or below it, but not e.g. `/administrator`: under
/// either reading of `..`, resolved (`/x/../admin`) or not, since origins that route on the
/// path as sent (Express, Flask behind gunicorn) take `/admin/../users` to their `/admin`.
pub(crate) fn is_admin_path(path: &str) -> bool {
    let decoded = fully_decoded(path);
    let admin = |segments: Vec<&str>| {
        segments
            .first()
            .is_some_and(|first| first.eq_ignore_ascii_case("admin"))
    };
    admin(normalized_segments(&decoded)) || admin(segments_as_sent(&decoded))
}

/// The first segment as an origin that leaves `..` in place reads it: each cut as
/// [`normalized_segments`] cuts it, empty and `.` ones dropped, `..` kept as a name.
fn segments_as_sent(path: &str) -> Vec<&str> {
    path.split(['/', '\\'])
        .map(name_of)
        .filter(|name| !matches!(*name, "" | "."))
        .take(1)
        .collect()
}

/// The path as the origin resolves it: decoded, `\` taken for `/`, dot segments resolved,
/// empty segments dropped (a trailing `/` kept). Routes and the micro-cache are chosen on
/// this form: on the raw text, `/api/../internal/x` would go to the API backend (which
/// serves its `/internal/x`) and be kept as an API answer.
pub(crate) fn canonical_path(path: &str) -> String {
    let decoded = fully_decoded(path);
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
        match name_of(segment) {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            name => segments.push(name),
        }
    }
    segments
}

/// The name a segment gives, as lenient origins read it: `.` and `..` as they are; else cut
/// at `;parameters` and NTFS streams (`name:stream`, `name::$DATA`), at a control byte
/// (`admin%00.json` is `admin`), and without trailing dots and spaces (Windows reads
/// `admin.`, `admin .` and `admin. .` as `admin`; dots and spaces alone name nothing: "").
fn name_of(segment: &str) -> &str {
    let segment = segment.split([';', ':']).next().unwrap_or(segment);
    let segment = segment
        .split(|c: char| c.is_ascii_control())
        .next()
        .unwrap_or(segment);
    match segment.trim_end_matches(' ') {
        dots @ ("." | "..") => dots,
        name => name.trim_end_matches(['.', ' ']),
    }
}

/// Decoding rounds at most: enough for any layering an origin stack plausibly has.
const DECODE_ROUNDS: usize = 4;

/// The path decoded again and again (`%2561` is `%61` is `a`) until nothing changes.
fn fully_decoded(path: &str) -> String {
    let mut decoded = path.to_owned();
    for _ in 0..DECODE_ROUNDS {
        let next = percent_decode(&decoded);
        if next == decoded {
            break;
        }
        decoded = next;
    }
    decoded
}

/// Decodes every valid `%XX` and IIS's `%uXXXX`, and reads overlong UTF-8 forms of ASCII
/// (`%c1%a1` is `a` to old IIS); invalid escapes and other non-UTF-8 results are kept
/// lossily, which is enough for comparing against an ASCII name.
fn percent_decode(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if let Some(unit) = iis_escape(&bytes[i..]) {
            let mut utf8 = [0; 4];
            decoded.extend_from_slice(unit.encode_utf8(&mut utf8).as_bytes());
            i += 6;
            continue;
        }
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
    String::from_utf8_lossy(&overlong_ascii_read(decoded)).into_owned()
}

/// `%uXXXX` at the start of `bytes`, as IIS decodes it.
fn iis_escape(bytes: &[u8]) -> Option<char> {
    match bytes.get(..6)? {
        [b'%', b'u' | b'U', digits @ ..] => {
            let value = digits
                .iter()
                .try_fold(0u32, |v, d| Some(v << 4 | u32::from(hex_digit(*d)?)))?;
            char::from_u32(value)
        }
        _ => None,
    }
}

/// Two-byte overlong encodings of ASCII (`C0`/`C1` and a continuation byte) replaced by
/// the ASCII byte they spell.
fn overlong_ascii_read(bytes: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1)) {
            (lead @ (0xc0 | 0xc1), Some(&next)) if next & 0xc0 == 0x80 => {
                out.push((lead & 0x1f) << 6 | (next & 0x3f));
                i += 2;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
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
            "/%u0061dmin/users",
            "/%U0041DMIN",
            "/admin::$INDEX_ALLOCATION/users",
            "/admin:stream",
            "/%2561dmin/users",
            "/%252561dmin",
            "/%c1%a1dmin/users",
            "/%c0%afadmin",
            // Any mix of trailing dots and spaces, and a name cut at a control byte.
            "/admin%20./users",
            "/admin.%20./x",
            "/admin.%20.%20",
            "/admin%00.json/x",
            // Read as sent by an origin that leaves `..` in place (Express routes these to
            // its `/admin`), though resolved they leave it.
            "/admin/../users",
            "/admin/%2e%2e/users",
            "/admin/..;/x",
            "/./admin/..",
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
            "/users/../x",
            "/../users",
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
