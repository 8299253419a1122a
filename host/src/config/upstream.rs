//! Where a tenant's origin is: `upstream = "host:port"` (or `http://`,
//! `https://`), or a pool `upstreams = [...]` with `[tenant.pool]` settings,
//! and how TLS to it is verified (`upstream_ca`, `tls_verify`).

use super::duration::DurationValue;
use super::{ConfigError, Locator};
use serde::Deserialize;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use toml::Spanned;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPool {
    balance: Option<Spanned<String>>,
    health_path: Option<Spanned<String>>,
    health_host: Option<Spanned<String>>,
    health_interval: Option<Spanned<DurationValue>>,
    health_timeout: Option<Spanned<DurationValue>>,
    resolve_interval: Option<Spanned<DurationValue>>,
}

/// One origin server as written, with the addresses its name had when the
/// config was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTarget {
    /// As written, e.g. `https://origin.example:443`.
    pub written: String,
    pub tls: bool,
    /// The host part: the TLS server name (SNI and certificate check).
    pub host: String,
    pub port: u16,
    pub addrs: Vec<SocketAddr>,
}

/// How the origin's certificate is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// Verify the chain and the name (default); `tls_verify = false` turns both off.
    pub verify: bool,
    /// DER certificates of `upstream_ca` (trusted instead of the system's).
    pub ca: Option<Arc<Vec<Vec<u8>>>>,
}

/// How requests are spread over several upstreams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    /// Consistent hashing on the cache key: each origin keeps a stable share of keys.
    ConsistentHash,
}

/// `[tenant.pool]`: balancing, active health checks and DNS re-resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    pub balance: Balance,
    /// `GET` this path and expect a 2xx; `None`: a TCP (and TLS) connect is the check.
    pub health_path: Option<String>,
    /// The `Host` of that `GET`; `None`: each upstream's own name (and port). An origin that
    /// serves sites by name may answer its default one otherwise.
    pub health_host: Option<String>,
    pub health_interval: Duration,
    pub health_timeout: Duration,
    pub resolve_interval: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            balance: Balance::RoundRobin,
            health_path: None,
            health_host: None,
            health_interval: Duration::from_secs(2),
            health_timeout: Duration::from_secs(1),
            resolve_interval: Duration::from_secs(30),
        }
    }
}

/// The tenant's upstream keys as written.
pub(super) struct RawUpstream<'a> {
    /// Where the tenant's `name` is written: the place to point at when no upstream is.
    pub tenant_name: std::ops::Range<usize>,
    pub upstream: &'a Option<Spanned<String>>,
    pub upstreams: &'a Option<Spanned<Vec<Spanned<String>>>>,
    pub upstream_ca: &'a Option<Spanned<String>>,
    pub tls_verify: Option<bool>,
    pub pool: &'a Option<Spanned<RawPool>>,
}

/// The validated upstream keys.
pub(super) struct Upstreams {
    pub targets: Vec<UpstreamTarget>,
    pub pool: Option<PoolConfig>,
    pub tls: UpstreamTls,
}

impl Locator<'_> {
    /// `[tenant.backends]`: `name = "host:port"` entries, each checked like `upstream`.
    pub(super) fn backends(
        &self,
        raw: &std::collections::BTreeMap<String, Spanned<String>>,
    ) -> Result<Vec<(String, UpstreamTarget)>, ConfigError> {
        raw.iter()
            .map(|(name, value)| {
                let key = format!("tenant.backends.{name}");
                let valid = !name.is_empty()
                    && name.len() <= 64
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
                if !valid {
                    return Err(self.at(
                        value.span(),
                        &key,
                        "a backend name has 1-64 letters, digits, '-' or '_'",
                    ));
                }
                Ok((name.clone(), self.target(&key, value)?))
            })
            .collect()
    }

    pub(super) fn upstreams(
        &self,
        base: &Path,
        raw: RawUpstream<'_>,
    ) -> Result<Upstreams, ConfigError> {
        let (targets, pool) = match (raw.upstream, raw.upstreams) {
            (Some(_), Some(list)) => {
                return Err(self.at(
                    list.span(),
                    "tenant.upstreams",
                    "set upstream or upstreams, not both",
                ))
            }
            (Some(one), None) => {
                if let Some(pool) = raw.pool {
                    return Err(self.at(
                        pool.span(),
                        "tenant.pool",
                        "a pool needs upstreams = [...]",
                    ));
                }
                (vec![self.target("tenant.upstream", one)?], None)
            }
            (None, Some(list)) => {
                if list.get_ref().is_empty() {
                    return Err(self.at(list.span(), "tenant.upstreams", "must not be empty"));
                }
                let targets = list
                    .get_ref()
                    .iter()
                    .map(|t| self.target("tenant.upstreams", t))
                    .collect::<Result<Vec<_>, _>>()?;
                // A repeat would silently double that upstream's share of the traffic.
                for (i, target) in targets.iter().enumerate() {
                    if targets[..i].iter().any(|t| t.written == target.written) {
                        return Err(self.at(
                            list.get_ref()[i].span(),
                            "tenant.upstreams",
                            format!("{:?} is listed twice", target.written),
                        ));
                    }
                    // The pool knows its upstreams by address: two names on one address
                    // would be one upstream, dialled with the first one's TLS name only.
                    let shared = targets[..i].iter().find_map(|t| {
                        let addr = t.addrs.iter().find(|a| target.addrs.contains(a))?;
                        Some((t, addr))
                    });
                    if let Some((first, addr)) = shared {
                        return Err(self.at(
                            list.get_ref()[i].span(),
                            "tenant.upstreams",
                            format!(
                                "{:?} and {:?} both resolve to {addr}: a pool balances over \
                                 addresses, so they would be one upstream (the second never \
                                 dialled with its own name); route by name with \
                                 [tenant.backends] instead",
                                first.written, target.written
                            ),
                        ));
                    }
                }
                let pool = match raw.pool {
                    Some(pool) => self.pool(pool.get_ref())?,
                    None => PoolConfig::default(),
                };
                (targets, Some(pool))
            }
            (None, None) => {
                return Err(self.at(
                    raw.tenant_name.clone(),
                    "tenant.upstream",
                    "each [[tenant]] needs upstream = \"host:port\" or upstreams = [...]",
                ))
            }
        };
        let ca = match raw.upstream_ca {
            Some(path) => Some(Arc::new(
                self.ca_file(base, "tenant.upstream_ca", path)?.ders,
            )),
            None => None,
        };
        Ok(Upstreams {
            targets,
            pool,
            tls: UpstreamTls {
                verify: raw.tls_verify.unwrap_or(true),
                ca,
            },
        })
    }

    /// `host:port`, `http://host:port` or `https://host:port` (port defaults
    /// to 80 / 443 with a scheme).
    fn target(&self, key: &str, value: &Spanned<String>) -> Result<UpstreamTarget, ConfigError> {
        let written = value.get_ref().trim();
        let bad = |why: &str| self.at(value.span(), key, format!("{written:?}: {why}"));
        let (tls, rest, default_port) = if let Some(rest) = written.strip_prefix("https://") {
            (true, rest, Some(443))
        } else if let Some(rest) = written.strip_prefix("http://") {
            (false, rest, Some(80))
        } else if written.contains("://") {
            return Err(bad("the scheme must be http:// or https://"));
        } else {
            (false, written, None)
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if let Some((_, host)) = rest.rsplit_once('@') {
            // Not echoed: what comes before '@' is a credential.
            return Err(self.at(
                value.span(),
                key,
                format!("an upstream cannot carry a user or password (\"…@{host}\"): cachet never sends them to the origin"),
            ));
        }
        if rest.contains('/') {
            return Err(bad("an upstream is host:port, without a path"));
        }
        // The last ':' separates the port unless it is inside a bare IPv6 address.
        let split = rest
            .rsplit_once(':')
            .filter(|(h, _)| !h.contains(':') || (h.starts_with('[') && h.ends_with(']')));
        let (host, port) = match split {
            Some((host, port)) => {
                let port = match port.parse::<u64>() {
                    Ok(port @ 1..=65535) => port as u16,
                    Ok(_) => return Err(bad("the port must be between 1 and 65535")),
                    Err(_) => return Err(bad("the port is not a number")),
                };
                (host, port)
            }
            None => match default_port {
                Some(port) => (rest, port),
                None => return Err(bad("is not a host:port address")),
            },
        };
        if host.is_empty() {
            return Err(bad("the host is missing"));
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = (host, port)
            .to_socket_addrs()
            .map_err(|e| bad(&format!("cannot resolve: {e}")))?
            .collect();
        if addrs.is_empty() {
            return Err(bad("resolves to no address"));
        }
        Ok(UpstreamTarget {
            written: written.to_owned(),
            tls,
            host: host.to_owned(),
            port,
            addrs,
        })
    }

    fn pool(&self, raw: &RawPool) -> Result<PoolConfig, ConfigError> {
        let defaults = PoolConfig::default();
        let balance = match &raw.balance {
            None => defaults.balance,
            Some(b) => match b.get_ref().as_str() {
                "round-robin" => Balance::RoundRobin,
                "consistent-hash" => Balance::ConsistentHash,
                other => {
                    return Err(self.at(
                        b.span(),
                        "tenant.pool.balance",
                        format!("{other:?}: use \"round-robin\" or \"consistent-hash\""),
                    ))
                }
            },
        };
        let health_path = match &raw.health_path {
            Some(p) if !p.get_ref().starts_with('/') => {
                return Err(self.at(p.span(), "tenant.pool.health_path", "must start with /"))
            }
            Some(p)
                if p.get_ref().parse::<http::uri::PathAndQuery>().is_err()
                    || p.get_ref().contains([' ', '#']) =>
            {
                return Err(self.at(
                    p.span(),
                    "tenant.pool.health_path",
                    "is not a request path (no spaces or fragment; escape them as %20)",
                ))
            }
            Some(p) => Some(p.get_ref().clone()),
            None => None,
        };
        let health_host = match &raw.health_host {
            Some(h) if !crate::proxy::request_fields::is_authority(h.get_ref().as_bytes()) => {
                return Err(self.at(
                    h.span(),
                    "tenant.pool.health_host",
                    "is not a host name, with an optional :port",
                ))
            }
            Some(h) => Some(h.get_ref().clone()),
            None => None,
        };
        let positive = |key: &str, value: &Option<Spanned<DurationValue>>, default| match value {
            Some(v) => match self.duration(key, v)? {
                d if d < Duration::from_millis(10) => {
                    Err(self.at(v.span(), key, "must be at least 10ms"))
                }
                d => Ok(d),
            },
            None => Ok(default),
        };
        Ok(PoolConfig {
            balance,
            health_path,
            health_host,
            health_interval: positive(
                "tenant.pool.health_interval",
                &raw.health_interval,
                defaults.health_interval,
            )?,
            health_timeout: positive(
                "tenant.pool.health_timeout",
                &raw.health_timeout,
                defaults.health_timeout,
            )?,
            resolve_interval: positive(
                "tenant.pool.resolve_interval",
                &raw.resolve_interval,
                defaults.resolve_interval,
            )?,
        })
    }

    /// Reads PEM certificates for `key` (`tenant.upstream_ca`, `cache.shared.ca`); each
    /// must parse as X.509.
    pub(super) fn ca_file(
        &self,
        base: &Path,
        key: &str,
        value: &Spanned<String>,
    ) -> Result<CaFile, ConfigError> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::CertificateDer;
        let path = base.join(value.get_ref());
        let pem = crate::file_read::read(&path, crate::file_read::TEXT_MAX).map_err(|e| {
            self.at(
                value.span(),
                key,
                format!("cannot read {}: {e}", path.display()),
            )
            .until_written(path.clone())
        })?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .map(|c| c.map(|c| c.to_vec()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                let problem = crate::tls::certificate::pem_problem(&e);
                self.at(value.span(), key, format!("{}: {problem}", path.display()))
            })?;
        if certs.is_empty() {
            return Err(self.at(
                value.span(),
                key,
                format!("{} holds no PEM certificate", path.display()),
            ));
        }
        if let Some(bad) = certs
            .iter()
            .position(|der| x509_parser::parse_x509_certificate(der).is_err())
        {
            return Err(self.at(
                value.span(),
                key,
                format!(
                    "{}: certificate {} is not valid X.509",
                    path.display(),
                    bad + 1
                ),
            ));
        }
        Ok(CaFile { pem, ders: certs })
    }
}

/// A CA file as read and checked: the PEM text and each certificate's DER.
pub(super) struct CaFile {
    pub(super) pem: Vec<u8>,
    pub(super) ders: Vec<Vec<u8>>,
}
