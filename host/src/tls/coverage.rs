//! Whether each tenant's certificate names the hosts the tenant answers for. A host its
//! certificate does not name gets a handshake every client refuses; the operator should
//! hear that when the certificate loads, not from users.

use super::store::{CertOwner, CertSet};
use crate::config::Config;

/// One warning per tenant whose certificate (its own, or the default one it falls back to)
/// leaves some of its hosts unnamed. Empty without a TLS listener.
pub fn warnings(config: &Config, set: &CertSet) -> Vec<String> {
    if config.server.listener.tls_listen.is_none() {
        return Vec::new();
    }
    config
        .tenants
        .iter()
        .filter_map(|tenant| {
            let cert = set
                .get(&CertOwner::Tenant(tenant.name.clone()))
                .or_else(|| set.get(&CertOwner::Default))?;
            let missing: Vec<&str> = tenant
                .hosts
                .iter()
                .map(String::as_str)
                .filter(|host| !covers(&cert.names, host))
                .collect();
            (!missing.is_empty()).then(|| {
                format!(
                    "tenant {:?}: certificate {} does not name {} (it names {}); TLS clients asking for {} will refuse it",
                    tenant.name,
                    cert.paths.cert.display(),
                    missing.join(", "),
                    if cert.names.is_empty() { "nothing".to_owned() } else { cert.names.join(", ") },
                    if missing.len() == 1 { "that host" } else { "those hosts" },
                )
            })
        })
        .collect()
}

/// Whether a certificate with DNS and IP `names` is valid for a `[[tenant]] hosts` pattern.
/// The catch-all `*` is never reported: no certificate names every host. A `*.suffix`
/// pattern needs the same wildcard; a name needs itself or a wildcard one label up
/// (RFC 6125 §6.4.3: `*` stands for exactly one label).
fn covers(names: &[String], pattern: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let host = pattern
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(pattern);
    let one_label_up = host
        .split_once('.')
        .filter(|(label, _)| !label.is_empty() && *label != "*")
        .map(|(_, parent)| parent);
    names.iter().any(|name| {
        let name = name.trim_end_matches('.');
        name.eq_ignore_ascii_case(host)
            || name
                .strip_prefix("*.")
                .zip(one_label_up)
                .is_some_and(|(suffix, parent)| suffix.eq_ignore_ascii_case(parent))
    })
}

#[cfg(test)]
mod tests {
    use super::covers;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn exact_names_and_one_label_wildcards_cover() {
        let cert = names(&["shop.example", "*.shop.example", "127.0.0.1", "::1"]);
        for host in [
            "shop.example",
            "www.shop.example",
            "*.shop.example",
            "127.0.0.1",
            "[::1]",
            "*",
        ] {
            assert!(covers(&cert, host), "{host}");
        }
        for host in [
            "a.b.shop.example",
            "example",
            "other.example",
            "*.example",
            "10.0.0.1",
        ] {
            assert!(!covers(&cert, host), "{host}");
        }
    }

    #[test]
    fn a_wildcard_host_needs_the_wildcard_name() {
        assert!(!covers(&names(&["a.shop.example"]), "*.shop.example"));
        assert!(covers(&names(&["*.SHOP.example."]), "*.shop.example"));
    }
}
