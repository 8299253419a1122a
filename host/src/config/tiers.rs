//! `[cache.disk]` and `[cache.shared]`: the L2 cache tiers (see `storage::tiers`).

use super::duration::DurationValue;
use super::size::SizeValue;
use super::{ConfigError, Locator};
use crate::tls::certificate::PairFile;
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// Smallest disk budget: the tier splits it into at least 8 segments of at least 1 MiB.
const MIN_DISK_BYTES: u64 = 8 << 20;
const DEFAULT_DISK_BYTES: u64 = 1 << 30;
/// Fewest objects a disk tier may be limited to: it evicts whole segments, so a smaller cap
/// would leave a few objects per segment.
const MIN_DISK_OBJECTS: i64 = 1024;
const DEFAULT_SHARED_MAX_OBJECT: u64 = 1 << 20;
/// Redis refuses values over 512 MiB; bodies that large belong on disk anyway.
const MAX_SHARED_OBJECT: u64 = 64 << 20;
const DEFAULT_OP_TIMEOUT: Duration = Duration::from_millis(5);
/// A shared-tier operation may delay a miss by this much at most.
const MAX_OP_TIMEOUT: Duration = Duration::from_secs(1);
/// A purge message is a few hundred bytes: 10,000 held is a few MiB, and a burst of purges
/// that large is applied within about a second.
const DEFAULT_PURGE_BACKLOG: usize = 10_000;
const MAX_PURGE_BACKLOG: i64 = 1_000_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDisk {
    path: Spanned<String>,
    max_bytes: Option<Spanned<SizeValue>>,
    max_objects: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShared {
    url: Spanned<String>,
    password: Option<String>,
    key_prefix: Option<String>,
    max_object_bytes: Option<Spanned<SizeValue>>,
    op_timeout: Option<Spanned<DurationValue>>,
    purge_backlog: Option<Spanned<i64>>,
    /// PEM CA certificates trusted for `rediss://` instead of the system's.
    ca: Option<Spanned<String>>,
    /// A client certificate chain and its key, for servers that ask for one.
    tls_cert: Option<Spanned<String>>,
    tls_key: Option<Spanned<String>>,
}

/// The disk tier: segment files in `path`, at most `max_bytes` on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskTierConfig {
    pub path: PathBuf,
    pub max_bytes: usize,
    /// Objects the tier keeps at most: its index in memory costs ~40 bytes each, so this
    /// bounds the memory a tier of many small objects takes. `None`: the byte budget alone.
    pub max_objects: Option<u64>,
}

/// The shared tier: a Redis (or Valkey) server several cachet nodes use.
#[derive(Clone, PartialEq, Eq)]
pub struct SharedTierConfig {
    /// `redis://host:port[/db]`, or `rediss://` for TLS (the certificate is always verified).
    pub url: String,
    /// Overrides a password in the URL.
    pub password: Option<String>,
    /// Put before every key cachet writes, so several clusters can share one server.
    pub key_prefix: String,
    /// Bodies (with their headers) larger than this are not shared.
    pub max_object_bytes: usize,
    /// Longest a lookup waits for Redis (writes, purges and chunks under way wait up to 1 s).
    pub op_timeout: Duration,
    /// Purge messages received and not yet applied that a node holds at most; past that it
    /// stops listening and reads the kept purges again (see `tiers::purge_channel`).
    pub purge_backlog: usize,
    /// PEM roots trusted instead of the system's (`rediss://` only).
    pub ca_pem: Option<Vec<u8>>,
    /// PEM certificate chain and private key presented to the server (`rediss://` only).
    pub client_cert: Option<ClientCert>,
}

/// A client certificate for TLS to Redis, as PEM; the key never reaches a log.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl fmt::Debug for SharedTierConfig {
    // The password stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedTierConfig")
            .field("url", &without_userinfo(&self.url))
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .field("key_prefix", &self.key_prefix)
            .field("max_object_bytes", &self.max_object_bytes)
            .field("op_timeout", &self.op_timeout)
            .field("purge_backlog", &self.purge_backlog)
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<set>"))
            .field("client_cert", &self.client_cert.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// `url` with what comes before an `@` in its authority (a user and password) shown as `***`.
/// The authority is taken to end at the first `/` after the scheme, not at `?` or `#`: a
/// password may hold those (a `#` in one is a common reason the URL is refused), so the last
/// `@` before the path is the one that ends the userinfo.
fn without_userinfo(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) if scheme.is_empty() => format!("***{}", &rest[at..]),
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => url.to_owned(),
    }
}

impl Locator<'_> {
    pub(super) fn disk_tier(
        &self,
        base: &Path,
        raw: Option<RawDisk>,
    ) -> Result<Option<DiskTierConfig>, ConfigError> {
        let Some(raw) = raw else {
            return Ok(None);
        };
        if raw.path.get_ref().trim().is_empty() {
            return Err(self.at(raw.path.span(), "cache.disk.path", "must name a folder"));
        }
        let max_bytes = match &raw.max_bytes {
            Some(b) if b.get_ref().as_u64() < MIN_DISK_BYTES => {
                return Err(self.at(b.span(), "cache.disk.max_bytes", "must be at least 8MiB"))
            }
            Some(b) => b.get_ref().as_u64(),
            None => DEFAULT_DISK_BYTES,
        };
        let max_objects = match &raw.max_objects {
            Some(n) if *n.get_ref() < MIN_DISK_OBJECTS => {
                return Err(self.at(
                    n.span(),
                    "cache.disk.max_objects",
                    format!("must be at least {MIN_DISK_OBJECTS}"),
                ))
            }
            Some(n) => Some(*n.get_ref() as u64),
            None => None,
        };
        let path = base.join(raw.path.get_ref());
        if let Err(why) = can_be_a_folder(&path) {
            return Err(self.at(raw.path.span(), "cache.disk.path", why));
        }
        Ok(Some(DiskTierConfig {
            path,
            max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
            max_objects,
        }))
    }

    pub(super) fn shared_tier(
        &self,
        base: &Path,
        raw: Option<RawShared>,
    ) -> Result<Option<SharedTierConfig>, ConfigError> {
        let Some(raw) = raw else {
            return Ok(None);
        };
        let url = raw.url.get_ref().trim();
        let tls = url.starts_with("rediss://");
        // Errors name the URL without its user and password: they reach the log, `/status`
        // and `cachet status`.
        let shown = without_userinfo(url);
        if !tls && !url.starts_with("redis://") {
            return Err(self.at(
                raw.url.span(),
                "cache.shared.url",
                format!("{shown:?} is not a redis:// or rediss:// URL"),
            ));
        }
        // The redis crate reads `#insecure` as "skip certificate checks": never offered.
        if url.contains('#') {
            return Err(self.at(
                raw.url.span(),
                "cache.shared.url",
                format!("{shown:?}: a URL fragment is not accepted (TLS is always verified)"),
            ));
        }
        let (ca_pem, client_cert) = self.shared_tls(base, tls, &raw)?;
        let max_object_bytes = match &raw.max_object_bytes {
            Some(b) if b.get_ref().as_u64() > MAX_SHARED_OBJECT => {
                return Err(self.at(
                    b.span(),
                    "cache.shared.max_object_bytes",
                    "must be at most 64MiB (larger bodies belong in the disk tier)",
                ))
            }
            Some(b) => b.get_ref().as_u64(),
            None => DEFAULT_SHARED_MAX_OBJECT,
        };
        let op_timeout = match &raw.op_timeout {
            Some(t) => {
                let d = self.duration("cache.shared.op_timeout", t)?;
                if d.is_zero() || d > MAX_OP_TIMEOUT {
                    return Err(self.at(
                        t.span(),
                        "cache.shared.op_timeout",
                        "must be between 1ms and 1s",
                    ));
                }
                d
            }
            None => DEFAULT_OP_TIMEOUT,
        };
        let purge_backlog = match &raw.purge_backlog {
            Some(n) if !(1..=MAX_PURGE_BACKLOG).contains(n.get_ref()) => {
                return Err(self.at(
                    n.span(),
                    "cache.shared.purge_backlog",
                    format!("must be between 1 and {MAX_PURGE_BACKLOG}"),
                ))
            }
            Some(n) => *n.get_ref() as usize,
            None => DEFAULT_PURGE_BACKLOG,
        };
        Ok(Some(SharedTierConfig {
            url: url.to_owned(),
            password: raw.password,
            key_prefix: raw.key_prefix.unwrap_or_else(|| "cachet:".to_owned()),
            max_object_bytes: max_object_bytes as usize,
            op_timeout,
            purge_backlog,
            ca_pem,
            client_cert,
        }))
    }

    /// `ca`, `tls_cert` and `tls_key` of `[cache.shared]`: only with `rediss://`; read and
    /// parsed here so a bad file is reported with its key and line.
    fn shared_tls(
        &self,
        base: &Path,
        tls: bool,
        raw: &RawShared,
    ) -> Result<(Option<Vec<u8>>, Option<ClientCert>), ConfigError> {
        if !tls {
            for (key, value) in [
                ("cache.shared.ca", &raw.ca),
                ("cache.shared.tls_cert", &raw.tls_cert),
                ("cache.shared.tls_key", &raw.tls_key),
            ] {
                if let Some(value) = value {
                    return Err(self.at(value.span(), key, "needs a rediss:// url"));
                }
            }
            return Ok((None, None));
        }
        let ca_pem = match &raw.ca {
            Some(path) => Some(self.ca_file(base, "cache.shared.ca", path)?.pem),
            None => None,
        };
        let paths = self.cert_paths(base, "cache.shared", &raw.tls_cert, &raw.tls_key)?;
        let (Some(paths), Some(cert), Some(key)) = (paths, &raw.tls_cert, &raw.tls_key) else {
            return Ok((ca_pem, None));
        };
        // Checked as a served certificate is: a chain, a usable key, the key matching the leaf;
        // the error points at the key whose file is at fault.
        let (cert_pem, key_pem) =
            crate::tls::certificate::read_checked_pair(&paths).map_err(|e| match e.file {
                PairFile::Cert => self.at(cert.span(), "cache.shared.tls_cert", e.reason),
                PairFile::Key => self.at(key.span(), "cache.shared.tls_key", e.reason),
            })?;
        Ok((ca_pem, Some(ClientCert { cert_pem, key_pem })))
    }
}

/// Whether `path` is a folder, or one could be made there: its nearest existing ancestor is a
/// folder. (`serve` creates what is missing; `validate` creates nothing but says the same.)
fn can_be_a_folder(path: &Path) -> Result<(), String> {
    let mut at = path;
    loop {
        match std::fs::metadata(at) {
            Ok(meta) if meta.is_dir() => return Ok(()),
            Ok(_) => return Err(format!("{} is not a folder", at.display())),
            // Not there, or a file in the way further up: look at the parent.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                match at.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() => at = parent,
                    _ => return Ok(()),
                }
            }
            Err(e) => return Err(format!("{}: {e}", at.display())),
        }
    }
}
