//! The primary cache key: `[format version, tenant, scheme, plugin parts...]`, each
//! length-prefixed. pingora-cache hashes only the primary bytes, so the
//! prefixes are what keep tenants and part boundaries from colliding
//! (`["ab", "c"]` and `["a", "bc"]` are different keys).
//!
//! The scheme is the host's part, as in nginx's default key: the origin is told it
//! (`X-Forwarded-Proto`, `Forwarded: proto=`) and may answer differently, e.g. a redirect to
//! HTTPS for a plain request, which must never be served to an HTTPS client. It is the
//! scheme the origin is told, which behind a trusted proxy is that proxy's claim.

use pingora_cache::key::CacheHashKey;
use pingora_cache::CacheKey;

/// Bump when the layout changes, so old entries can never be read as new ones.
const KEY_FORMAT_VERSION: &str = "cachet-key-2";

/// The schemes a client may reach cachet by: a purge removes the entries of each.
pub const SCHEMES: [&str; 2] = ["http", "https"];

/// The scheme of this hop.
pub fn hop_scheme(tls: bool) -> &'static str {
    SCHEMES[usize::from(tls)]
}

/// `scheme` is the scheme the origin is told ([`super::forwarded::told_scheme`]).
pub fn primary_key(tenant: &str, scheme: &str, parts: &[String]) -> Vec<u8> {
    let len: usize =
        parts.iter().map(|p| p.len() + 4).sum::<usize>() + tenant.len() + scheme.len() + 32;
    let mut key = Vec::with_capacity(len);
    for part in [KEY_FORMAT_VERSION, tenant, scheme]
        .into_iter()
        .chain(parts.iter().map(String::as_str))
    {
        // Parts are capped far below 4 GiB by the tenant's key limits.
        key.extend_from_slice(&(part.len() as u32).to_be_bytes());
        key.extend_from_slice(part.as_bytes());
    }
    key
}

/// pingora-cache's key for a primary key of `tenant`, its hash computed once: storage, the
/// L2 tiers and eviction all ask for it, and each would otherwise hash the key again.
pub fn storage_key(primary: Vec<u8>, tenant: &str) -> CacheKey {
    let mut key = CacheKey::new(primary, tenant);
    let hash = key.primary_bin();
    key.set_primary_bin_override(hash);
    key
}

/// The key for people (`Cache-Status` `key` in debug mode): the tenant, the scheme and the
/// plugin's parts, space-separated, with `%`, spaces and non-printable bytes percent-encoded so the
/// boundaries stay visible.
pub fn describe(key: &[u8]) -> String {
    let mut parts = Vec::new();
    let mut rest = key;
    while let Some((len, tail)) = rest.split_first_chunk::<4>() {
        let len = u32::from_be_bytes(*len) as usize;
        let Some((part, tail)) = tail.split_at_checked(len) else {
            break;
        };
        parts.push(part);
        rest = tail;
    }
    // The first part is the format version, the same for every key.
    parts
        .iter()
        .skip(1)
        .map(|part| {
            part.iter()
                .map(|&b| match b {
                    b'%' | b' ' => format!("%{b:02X}"),
                    _ if b.is_ascii_graphic() => (b as char).to_string(),
                    _ => format!("%{b:02X}"),
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::describe;

    fn primary_key(tenant: &str, parts: &[String]) -> Vec<u8> {
        super::primary_key(tenant, "http", parts)
    }

    #[test]
    fn described_keys_show_tenant_scheme_and_parts() {
        let key = primary_key("site", &parts(&["example.com", "/a b", "q=1%2"]));
        assert_eq!(describe(&key), "site http example.com /a%20b q=1%252");
        assert_eq!(describe(&primary_key("t", &parts(&[""]))), "t http ");
    }

    #[test]
    fn schemes_never_share_keys() {
        let parts = parts(&["example.com", "/"]);
        assert_ne!(
            super::primary_key("t", "http", &parts),
            super::primary_key("t", "https", &parts)
        );
    }

    fn parts(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn part_boundaries_matter() {
        assert_ne!(
            primary_key("t", &parts(&["ab", "c"])),
            primary_key("t", &parts(&["a", "bc"]))
        );
    }

    #[test]
    fn tenants_never_share_keys() {
        assert_ne!(
            primary_key("a", &parts(&["x"])),
            primary_key("b", &parts(&["x"]))
        );
        // A tenant name cannot smuggle a part boundary.
        assert_ne!(
            primary_key("a", &parts(&["bx"])),
            primary_key("ab", &parts(&["x"]))
        );
    }
}
