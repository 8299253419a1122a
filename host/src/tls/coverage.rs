//! Whether each tenant's certificate names the hosts the tenant answers for. A host its
//! certificate does not name gets a handshake every client refuses; the operator should
//! hear that when the certificate loads, not from users.

use super::certificate::LoadedCert;
use super::store::{serving_owner, CertOwner, CertSet};
use crate::config::Config;
use std::sync::Arc;

/// One warning per tenant and certificate (its own, or the default one it falls back to)
/// that leaves some of its hosts unnamed, and one per tenant with hosts no certificate is
/// served for. An IP-literal host is served the default certificate whatever the tenant has:
/// clients send no SNI for an address (RFC 6066 §3), so the tenant's own is never chosen.
/// Empty without a TLS listener.
pub fn warnings(config: &Config, set: &CertSet) -> Vec<String> {
    if config.server.listener.tls_listen.is_none() {
        return Vec::new();
    }
    let mut warnings = Vec::new();
    for tenant in &config.tenants {
        let own = CertOwner::Tenant(tenant.name.clone());
        let has_own = set.get(&own).is_some();
        // Hosts by the certificate their handshakes get (`None`: no certificate at all).
        let mut served: Vec<(Option<&Arc<LoadedCert>>, Vec<&str>)> = Vec::new();
        for host in &tenant.hosts {
            let cert = set.get(&serving_owner(&own, has_own, host));
            if cert.is_some_and(|cert| covers(&cert.names, host)) {
                continue;
            }
            match served
                .iter_mut()
                .find(|(c, _)| c.map(Arc::as_ptr) == cert.map(Arc::as_ptr))
            {
                Some((_, hosts)) => hosts.push(host),
                None => served.push((cert, vec![host])),
            }
        }
        for (cert, missing) in served {
            let those = if missing.len() == 1 {
                "that host"
            } else {
                "those hosts"
            };
            warnings.push(match cert {
                Some(cert) => format!(
                    "tenant {:?}: certificate {} does not name {} (it names {}); TLS clients asking for {those} will refuse it",
                    tenant.name,
                    cert.paths.cert.display(),
                    missing.join(", "),
                    if cert.names.is_empty() { "nothing".to_owned() } else { cert.names.join(", ") },
                ),
                None => format!(
                    "tenant {:?}: no certificate is served for {} ([server] tls_cert, which is not set, answers tenants without tls_cert and clients that send no server name, as for an IP address); TLS handshakes for {those} will fail",
                    tenant.name,
                    missing.join(", "),
                ),
            });
        }
    }
    warnings
}

/// An IPv4 address or a bracketed IPv6 one, as `hosts` holds them.
pub(super) fn is_ip_literal(host: &str) -> bool {
    bare_host(host).parse::<std::net::IpAddr>().is_ok()
}

/// A `hosts` entry without the brackets of an IPv6 address.
fn bare_host(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// Whether a certificate with DNS and IP `names` is valid for a `[[tenant]] hosts` pattern.
/// The catch-all `*` is never reported: no certificate names every host. A `*.suffix`
/// pattern needs the same wildcard; a name needs itself or a wildcard one label up
/// (RFC 6125 §6.4.3: `*` stands for exactly one label).
pub(super) fn covers(names: &[String], pattern: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let host = bare_host(pattern);
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
