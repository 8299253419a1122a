//! One certificate chain and its private key, read from PEM files and checked
//! before anything serves them: a chain, a key rustls can sign with, and the
//! key matching the leaf certificate.

use crate::config::CertPaths;
use rustls::crypto::ring::default_provider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A loaded certificate: what rustls serves, and what `/status` shows.
#[derive(Debug)]
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    pub paths: CertPaths,
    /// SHA-256 of the leaf certificate (DER), as `openssl x509 -fingerprint -sha256` shows it.
    pub fingerprint: String,
    /// Of both files' bytes: tells an unchanged pair from a replaced one.
    pub(super) files_sha256: String,
    /// The leaf's DNS names (subjectAltName).
    pub names: Vec<String>,
    /// The leaf's notBefore and notAfter, seconds since the epoch.
    pub not_before: i64,
    pub not_after: i64,
    pub loaded_at: SystemTime,
}

/// Which file of a pair a problem is in, so a config error can name the key that points at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairFile {
    Cert,
    Key,
}

/// What is wrong with a pair, and in which of its two files.
#[derive(Debug)]
pub struct PairError {
    pub file: PairFile,
    pub reason: String,
}

impl PairError {
    fn cert(reason: String) -> Self {
        Self {
            file: PairFile::Cert,
            reason,
        }
    }

    fn key(reason: String) -> Self {
        Self {
            file: PairFile::Key,
            reason,
        }
    }
}

impl std::fmt::Display for PairError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// The two files' contents, read once so the hash and the parse see the same bytes.
pub(super) struct PairBytes {
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl PairBytes {
    pub(super) fn read(paths: &CertPaths) -> Result<Self, PairError> {
        let read = |path: &std::path::Path| {
            crate::file_read::read(path, crate::file_read::TEXT_MAX)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
        };
        Ok(Self {
            cert: read(&paths.cert).map_err(PairError::cert)?,
            key: read(&paths.key).map_err(PairError::key)?,
        })
    }

    pub(super) fn sha256(&self) -> String {
        let mut hash = Sha256::new();
        hash.update((self.cert.len() as u64).to_be_bytes());
        hash.update(&self.cert);
        hash.update(&self.key);
        hex::encode(hash.finalize())
    }
}

impl LoadedCert {
    /// Reads and checks the pair at `paths`; the error says what is wrong with which file.
    pub fn load(paths: &CertPaths) -> Result<Self, PairError> {
        Self::from_bytes(paths, &PairBytes::read(paths)?)
    }

    pub(super) fn from_bytes(paths: &CertPaths, bytes: &PairBytes) -> Result<Self, PairError> {
        let cert_file = paths.cert.display();
        let key_file = paths.key.display();
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes.cert)
            .collect::<Result<_, _>>()
            .map_err(|e| {
                PairError::cert(format!(
                    "{cert_file}: not a PEM certificate chain: {}",
                    pem_problem(&e)
                ))
            })?;
        let Some(leaf) = chain.first() else {
            return Err(PairError::cert(format!(
                "{cert_file}: no certificate in the file"
            )));
        };
        let key = PrivateKeyDer::from_pem_slice(&bytes.key).map_err(|e| {
            PairError::key(format!(
                "{key_file}: no PEM private key: {}",
                pem_problem(&e)
            ))
        })?;
        let (names, not_before, not_after) =
            describe(leaf).map_err(|e| PairError::cert(format!("{cert_file}: {e}")))?;
        // rustls sends the rest of the chain as it is: a block that is not a certificate
        // (a line lost from an intermediate) would fail every client's handshake (probe AI).
        // Bytes after a certificate (two pasted together, junk) fail clients the same way.
        for (at, cert) in chain.iter().enumerate().skip(1) {
            let parsed = x509_parser::parse_x509_certificate(cert.as_ref())
                .map_err(|e| e.to_string())
                .and_then(|(rest, _)| match rest.is_empty() {
                    true => Ok(()),
                    false => Err(format!("{} bytes follow the certificate", rest.len())),
                });
            parsed.map_err(|e| {
                PairError::cert(format!(
                    "{cert_file}: certificate {} of the chain does not parse: {e}",
                    at + 1
                ))
            })?;
        }
        let fingerprint = hex::encode(Sha256::digest(leaf.as_ref()));
        let files_sha256 = bytes.sha256();
        let certified = CertifiedKey::from_der(chain, key, &default_provider())
            .map_err(|e| PairError::key(format!("{key_file} does not go with {cert_file}: {e}")))?;
        Ok(Self {
            key: Arc::new(certified),
            paths: paths.clone(),
            fingerprint,
            files_sha256,
            names,
            not_before,
            not_after,
            loaded_at: SystemTime::now(),
        })
    }

    /// Whether the leaf's validity has ended.
    pub fn expired(&self) -> bool {
        self.not_after < unix_now()
    }

    /// Whether the leaf's validity has not begun yet.
    pub fn not_yet_valid(&self) -> bool {
        self.not_before > unix_now()
    }

    /// Whether the leaf's validity begins more than `skew` from now.
    pub(super) fn valid_only_after(&self, skew: Duration) -> bool {
        self.not_before > unix_now().saturating_add(skew.as_secs() as i64)
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Reads a certificate pair a client presents (the shared tier's mutual TLS) and checks it
/// exactly as a served pair is checked, the key matching the leaf included; returns both files'
/// PEM bytes.
pub fn read_checked_pair(paths: &CertPaths) -> Result<(Vec<u8>, Vec<u8>), PairError> {
    let bytes = PairBytes::read(paths)?;
    LoadedCert::from_bytes(paths, &bytes)?;
    Ok((bytes.cert, bytes.key))
}

/// What is wrong with a PEM file, in words of our own: the parser's errors carry the file's
/// bytes (a key pasted on one line, as `echo $KEY > key.pem` writes it, came back whole in
/// a "missing section end marker" error, into the log and `/status`).
pub(crate) fn pem_problem(error: &rustls_pki_types::pem::Error) -> &'static str {
    use rustls_pki_types::pem::Error;
    match error {
        Error::MissingSectionEnd { .. } => {
            "a PEM section has no END line (cut short, or written on one line)"
        }
        Error::IllegalSectionStart { .. } => "a PEM BEGIN line is malformed",
        Error::Base64Decode(_) => "a PEM section is not valid base64",
        Error::Io(_) => "the file could not be read",
        Error::NoItemsFound => "no PEM section of the kind expected",
        Error::SectionTooLarge => "a PEM section is too large",
        _ => "the file is not valid PEM",
    }
}

/// The leaf's DNS names, notBefore and notAfter.
fn describe(leaf: &CertificateDer<'_>) -> Result<(Vec<String>, i64, i64), String> {
    let (rest, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("the first certificate does not parse: {e}"))?;
    if !rest.is_empty() {
        return Err(format!(
            "the first certificate does not parse: {} bytes follow it",
            rest.len()
        ));
    }
    let names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_string()),
                    x509_parser::extensions::GeneralName::IPAddress(ip) => {
                        ip_text(ip).map(|ip| ip.to_string())
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let validity = cert.validity();
    Ok((
        names,
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}

fn ip_text(bytes: &[u8]) -> Option<std::net::IpAddr> {
    match bytes.len() {
        4 => Some(<[u8; 4]>::try_from(bytes).ok()?.into()),
        16 => Some(<[u8; 16]>::try_from(bytes).ok()?.into()),
        _ => None,
    }
}
