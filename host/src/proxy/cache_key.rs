//! The primary cache key: `[format version, tenant, plugin parts...]`, each
//! length-prefixed. pingora-cache hashes only the primary bytes, so the
//! prefixes are what keep tenants and part boundaries from colliding
//! (`["ab", "c"]` and `["a", "bc"]` are different keys).

/// Bump when the layout changes, so old entries can never be read as new ones.
const KEY_FORMAT_VERSION: &str = "cachet-key-1";

pub fn primary_key(tenant: &str, parts: &[String]) -> Vec<u8> {
    let len: usize = parts.iter().map(|p| p.len() + 4).sum::<usize>() + tenant.len() + 32;
    let mut key = Vec::with_capacity(len);
    for part in [KEY_FORMAT_VERSION, tenant]
        .into_iter()
        .chain(parts.iter().map(String::as_str))
    {
        // Parts are capped far below 4 GiB by the tenant's key limits.
        key.extend_from_slice(&(part.len() as u32).to_be_bytes());
        key.extend_from_slice(part.as_bytes());
    }
    key
}

#[cfg(test)]
mod tests {
    use super::primary_key;

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
