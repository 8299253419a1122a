//! TLS to origins: the server name (SNI and the name checked in the
//! certificate) is the upstream's host; verification is on unless the
//! tenant says `tls_verify = false`; `upstream_ca` replaces the system roots.

use crate::config::{TenantConfig, UpstreamTarget};
use pingora::prelude::HttpPeer;
use pingora::protocols::tls::CaType;
use pingora::utils::tls::{parse_x509, WrappedX509};
use std::sync::Arc;

pub(super) struct OriginTls {
    verify: bool,
    /// The tenant's own roots, parsed once (the config checked they parse).
    ca: Option<Arc<CaType>>,
    /// Keeps pooled connections verified against other roots away from this tenant: Pingora's
    /// pool key covers the address, SNI and verify flags but not the roots, so without it a
    /// connection one tenant's CA accepted would serve a tenant whose CA refuses that origin.
    /// 0 (shared) for the system roots; the same for tenants with the same roots.
    pool_group: u64,
}

impl OriginTls {
    pub(super) fn new(config: &TenantConfig) -> Self {
        let tls = &config.upstream_tls;
        // A plugin-chosen backend is an origin too: its connections take these settings.
        let uses_tls = config
            .upstreams
            .iter()
            .chain(config.backends.iter().map(|(_, target)| target))
            .any(|t| t.tls);
        if uses_tls && !tls.verify {
            tracing::warn!(
                tenant = config.name,
                "tls_verify = false: origin certificates are not checked; anyone on the path can impersonate the origin"
            );
        }
        // Settings that take no effect are named, so nobody believes they protect anything.
        if tls.ca.is_some() && !uses_tls {
            tracing::warn!(
                tenant = config.name,
                "upstream_ca is set but no upstream or backend is https://: it is not used"
            );
        } else if tls.ca.is_some() && !tls.verify {
            tracing::warn!(
                tenant = config.name,
                "upstream_ca is set with tls_verify = false: certificates are not checked at all"
            );
        }
        let ca = tls.ca.as_ref().map(|ders| {
            let certs: Vec<WrappedX509> = ders
                .iter()
                .map(|der| WrappedX509::new(der.clone(), parse_x509))
                .collect();
            Arc::<CaType>::from(certs)
        });
        Self {
            verify: tls.verify,
            ca,
            pool_group: tls.ca.as_deref().map_or(0, |ders| roots_group(ders)),
        }
    }

    pub(super) fn apply(&self, peer: &mut HttpPeer, target: &UpstreamTarget) {
        // Pingora skips every check when the server name is empty: never leave it so.
        peer.sni = target.host.clone();
        peer.options.verify_cert = self.verify;
        peer.options.verify_hostname = self.verify;
        peer.options.ca = self.ca.clone();
    }

    /// The pool group of these roots (0 for the system roots).
    pub(super) fn roots_group(&self) -> u64 {
        self.pool_group
    }
}

/// A pool group for a set of roots (DER certificates): equal sets, equal groups; never 0.
fn roots_group(ders: &[Vec<u8>]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    ders.hash(&mut hasher);
    hasher.finish().max(1)
}
