//! `[server]` keys of the client side beyond the plain listener: TLS
//! termination (`tls_listen`, `tls_cert`/`tls_key`, and a tenant's own
//! `tls_cert`/`tls_key` chosen by SNI) and HTTP/2 (`h2c` and its bounds).

use super::duration::DurationValue;
use super::size::SizeValue;
use super::{ConfigError, KeyPlace, Locator, PINGORA_MAX_HEAD};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// A certificate chain and its private key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Where `tls_cert` and `tls_key` are written.
    pub cert_at: KeyPlace,
    pub key_at: KeyPlace,
}

/// How the client side speaks TLS and HTTP/2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Address of the TLS listener (HTTP/1.1 and HTTP/2 by ALPN).
    pub tls_listen: Option<SocketAddr>,
    /// The certificate served when no tenant's certificate matches the SNI
    /// (or the client sent none).
    pub default_cert: Option<CertPaths>,
    /// Cleartext HTTP/2 (prior knowledge) on the plain listener.
    pub h2c: bool,
    /// Streams one HTTP/2 connection may have open at once.
    pub h2_max_concurrent_streams: u32,
    /// Bytes of one HTTP/2 request's decoded header list (the HTTP/2 twin of
    /// `max_request_head`).
    pub h2_max_header_list: u32,
    /// An HTTP/2 connection with no stream open is closed after this long.
    pub h2_idle_timeout: Duration,
}

/// Pingora's own default (`default_h2_options`), kept.
const DEFAULT_H2_STREAMS: u32 = 100;
/// More streams than this per connection buys a client nothing a second connection would not.
const MAX_H2_STREAMS: u32 = 1000;
/// As long as Pingora keeps an idle HTTP/1.1 keep-alive connection.
const DEFAULT_H2_IDLE: Duration = Duration::from_secs(60);

/// The `[server]` keys as written.
pub(super) struct RawListener<'a> {
    pub tls_listen: &'a Option<Spanned<String>>,
    pub tls_cert: &'a Option<Spanned<String>>,
    pub tls_key: &'a Option<Spanned<String>>,
    pub h2c: Option<bool>,
    pub h2_max_concurrent_streams: &'a Option<Spanned<u32>>,
    pub h2_max_header_list: &'a Option<Spanned<SizeValue>>,
    pub h2_idle_timeout: &'a Option<Spanned<DurationValue>>,
}

impl Locator<'_> {
    pub(super) fn listener(
        &self,
        base: &Path,
        raw: RawListener<'_>,
        max_request_head: usize,
    ) -> Result<ListenerConfig, ConfigError> {
        let tls_listen = match raw.tls_listen {
            Some(a) => Some(self.socket_addr("server.tls_listen", a)?),
            None => None,
        };
        // Connections are told apart by the port they arrived on: with a port the kernel
        // picks, none would match, and the TLS listener would answer in plain text.
        if let (Some(addr), Some(raw)) = (tls_listen, raw.tls_listen) {
            if addr.port() == 0 {
                return Err(self.at(
                    raw.span(),
                    "server.tls_listen",
                    "give a fixed port: port 0 is not supported for the TLS listener",
                ));
            }
        }
        let default_cert = self.cert_paths(base, "server", raw.tls_cert, raw.tls_key)?;
        let h2_max_concurrent_streams = match raw.h2_max_concurrent_streams {
            Some(n) if !(1..=MAX_H2_STREAMS).contains(n.get_ref()) => {
                return Err(self.at(
                    n.span(),
                    "server.h2_max_concurrent_streams",
                    format!("must be between 1 and {MAX_H2_STREAMS}"),
                ))
            }
            Some(n) => *n.get_ref(),
            None => DEFAULT_H2_STREAMS,
        };
        let h2_max_header_list = match raw.h2_max_header_list {
            Some(b) if !(1024..=PINGORA_MAX_HEAD as u64).contains(&b.get_ref().as_u64()) => {
                return Err(self.at(
                    b.span(),
                    "server.h2_max_header_list",
                    "must be between 1KiB and 1MiB - 1 byte",
                ))
            }
            Some(b) => b.get_ref().as_u64() as u32,
            None => max_request_head as u32,
        };
        let h2_idle_timeout = match raw.h2_idle_timeout {
            Some(v) => match self.duration("server.h2_idle_timeout", v)? {
                Duration::ZERO => {
                    return Err(self.at(v.span(), "server.h2_idle_timeout", "must be more than 0"))
                }
                d => d,
            },
            None => DEFAULT_H2_IDLE,
        };
        Ok(ListenerConfig {
            tls_listen,
            default_cert,
            h2c: raw.h2c.unwrap_or(false),
            h2_max_concurrent_streams,
            h2_max_header_list,
            h2_idle_timeout,
        })
    }

    /// `tls_cert` and `tls_key` of `table` (`server` or `tenant`): both or neither,
    /// each an existing file (its contents are checked when the certificate is loaded).
    pub(super) fn cert_paths(
        &self,
        base: &Path,
        table: &str,
        cert: &Option<Spanned<String>>,
        key: &Option<Spanned<String>>,
    ) -> Result<Option<CertPaths>, ConfigError> {
        let (cert, key) = match (cert, key) {
            (None, None) => return Ok(None),
            (Some(c), None) => {
                return Err(self.at(
                    c.span(),
                    &format!("{table}.tls_cert"),
                    format!("needs {table}.tls_key (the certificate's private key)"),
                ))
            }
            (None, Some(k)) => {
                return Err(self.at(
                    k.span(),
                    &format!("{table}.tls_key"),
                    format!("needs {table}.tls_cert (the certificate chain)"),
                ))
            }
            (Some(c), Some(k)) => (c, k),
        };
        let file = |value: &Spanned<String>, name: &str| {
            let path = base.join(value.get_ref());
            if path.is_file() {
                Ok(path)
            } else {
                let missing = format!("no file at {}", path.display());
                Err(self
                    .at(value.span(), &format!("{table}.{name}"), missing)
                    .until_written(path))
            }
        };
        Ok(Some(CertPaths {
            cert: file(cert, "tls_cert")?,
            key: file(key, "tls_key")?,
            cert_at: self.place(cert.span(), &format!("{table}.tls_cert")),
            key_at: self.place(key.span(), &format!("{table}.tls_key")),
        }))
    }
}

/// Whether the TLS listener would have no certificate to serve: no default one, and no
/// tenant's. Checked on every config, and on a reload against the listener that really stays
/// open until a restart.
pub fn serves_no_certificate(listener: &ListenerConfig, tenants: &[super::TenantConfig]) -> bool {
    listener.default_cert.is_none() && tenants.iter().all(|t| t.tls_cert.is_none())
}

/// A certificate somewhere needs a TLS listener, and a TLS listener needs a certificate.
/// `tls_listen_line`: where `server.tls_listen` is written.
pub(super) fn check_tls_pairing(
    path: &Path,
    listener: &ListenerConfig,
    tls_listen_line: Option<usize>,
    tenants: &[super::TenantConfig],
) -> Result<(), ConfigError> {
    let error = |line: Option<usize>, key: &str, message: String| ConfigError {
        file: path.to_path_buf(),
        line,
        key: Some(key.into()),
        message,
        missing_file: None,
    };
    let with_cert = tenants.iter().find(|t| t.tls_cert.is_some());
    match (listener.tls_listen, with_cert) {
        (None, Some(tenant)) => Err(error(
            tenant.tls_cert.as_ref().and_then(|c| c.cert_at.line),
            "tenant.tls_cert",
            format!(
                "tenant {:?} has a certificate but server.tls_listen is not set",
                tenant.name
            ),
        )),
        (None, None) if listener.default_cert.is_some() => Err(error(
            listener.default_cert.as_ref().and_then(|c| c.cert_at.line),
            "server.tls_cert",
            "a certificate without server.tls_listen would serve nothing".into(),
        )),
        (Some(_), _) if serves_no_certificate(listener, tenants) => Err(error(
            tls_listen_line,
            "server.tls_listen",
            "needs server.tls_cert and server.tls_key, or a tenant's tls_cert and tls_key".into(),
        )),
        _ => Ok(()),
    }
}
