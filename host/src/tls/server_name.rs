//! The SNI a TLS connection was opened with, kept on the connection (in
//! Pingora's TLS digest) so every request on it, HTTP/1.1 or HTTP/2, can be
//! checked against its Host: a client must not reach one tenant through a
//! connection authenticated with another tenant's certificate.

use crate::tenant::TenantRouter;
use async_trait::async_trait;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::proxy::Session;
use std::any::Any;
use std::sync::Arc;

/// The name a client sent in its TLS ClientHello (lowercased).
#[derive(Debug)]
struct ServerName(String);

/// Records each handshake's SNI on its connection.
pub struct RecordServerName;

#[async_trait]
impl TlsAccept for RecordServerName {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        let name = tls.server_name()?.to_ascii_lowercase();
        Some(Arc::new(ServerName(name)))
    }
}

/// The SNI of the connection `session` arrived on, if it is TLS and sent one.
pub fn server_name(session: &Session) -> Option<&str> {
    digest_server_name(session.digest()?.ssl_digest.as_ref()?)
}

/// The SNI recorded in a TLS connection's digest.
pub fn digest_server_name(digest: &SslDigest) -> Option<&str> {
    digest.extension.get::<ServerName>().map(|n| n.0.as_str())
}

/// Whether a request for `tenant` must be refused with 421 because its
/// connection's SNI routes elsewhere (or nowhere). Without SNI, Host decides.
pub fn misdirected(session: &Session, router: &TenantRouter, tenant: &str) -> bool {
    misdirected_name(server_name(session), router, tenant)
}

/// [`misdirected`] for a connection's SNI as the front reads it.
pub fn misdirected_name(sni: Option<&str>, router: &TenantRouter, tenant: &str) -> bool {
    sni.is_some_and(|sni| router.route(sni).map(|t| t.name()) != Some(tenant))
}
