//! Chooses the certificate for a handshake from its SNI: the tenant the name
//! routes to (exactly as a Host header would: exact names, `*.suffix`
//! wildcards, the `*` catch-all) serves its own certificate; any other name,
//! or none, gets the default one.

use super::store::{CertOwner, CertStore};
use crate::proxy::ProxyState;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::Arc;

pub struct SniResolver {
    pub(super) certificates: Arc<CertStore>,
    pub(super) state: Arc<ProxyState>,
}

impl SniResolver {
    /// The certificate for a handshake that asked for `server_name`.
    pub fn certificate_for(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let set = self.certificates.current();
        let tenant_cert = server_name.and_then(|name| {
            let router = self.state.router.load();
            let tenant = router.route(&name.to_ascii_lowercase())?;
            set.get(&CertOwner::Tenant(tenant.name().to_owned()))
                .map(|c| c.key.clone())
        });
        // None aborts the handshake: there is nothing to serve for this name.
        tenant_cert.or_else(|| set.get(&CertOwner::Default).map(|c| c.key.clone()))
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.certificate_for(hello.server_name())
    }
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SniResolver")
    }
}
