//! Chooses the certificate for a handshake from its SNI: the tenant the name
//! routes to (exactly as a Host header would: exact names, `*.suffix`
//! wildcards, the `*` catch-all) serves its own certificate; any other name,
//! or none, gets the default one.

use super::store::CertStore;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::Arc;

pub struct SniResolver {
    pub(super) certificates: Arc<CertStore>,
}

impl ResolvesServerCert for SniResolver {
    /// None aborts the handshake: there is nothing to serve for this name.
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let set = self.certificates.current();
        set.for_server_name(hello.server_name())
            .map(|c| c.key.clone())
    }
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SniResolver")
    }
}
