//! The client-side protocol settings Pingora takes: the TLS listener's
//! settings (certificate by SNI, ALPN h2 and http/1.1, the SNI kept on the
//! connection) and the HTTP/2 bounds of every listener.

use super::resolver::SniResolver;
use super::server_name::RecordServerName;
use super::store::CertStore;
use crate::config::ListenerConfig;
use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::protocols::http::v2::server::H2Options;
use std::sync::Arc;

/// Settings of the TLS listener: HTTP/2 preferred by ALPN, HTTP/1.1 allowed.
pub fn tls_settings(certificates: Arc<CertStore>) -> anyhow::Result<TlsSettings> {
    let mut settings = TlsSettings::with_callbacks(Box::new(RecordServerName))
        .map_err(|e| anyhow::anyhow!("TLS listener settings: {e}"))?;
    settings.set_cert_resolver(Arc::new(SniResolver { certificates }));
    settings.enable_h2();
    Ok(settings)
}

/// What one HTTP/2 connection may hold: open streams, and each request's
/// decoded header list (the HTTP/2 counterpart of `max_request_head`).
pub fn h2_options(config: &ListenerConfig) -> H2Options {
    let mut options = H2Options::default();
    options.max_concurrent_streams(config.h2_max_concurrent_streams);
    options.max_header_list_size(config.h2_max_header_list);
    options
}

/// Cleartext HTTP/2 (prior knowledge) on the plain listener when `h2c = true`;
/// idle HTTP/2 connections closed as idle HTTP/1.1 ones are, so they do not
/// hold a connection slot for ever.
pub fn server_options(config: &ListenerConfig) -> HttpServerOptions {
    let mut options = HttpServerOptions::default();
    options.h2c = config.h2c;
    options.h2_idle_timeout = Some(config.h2_idle_timeout);
    options
}
