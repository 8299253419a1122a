//! The certificates the TLS listener serves: the default one and each
//! tenant's, swapped whole so a handshake sees one consistent set. A pair
//! that fails to load never replaces the running one: the refusal is kept
//! with its reason for `/status`, and counted.

use super::certificate::{LoadedCert, PairBytes, PairError, PairFile};
use crate::config::{CertPaths, Config};
use crate::reload::Outcome;
use crate::tenant::Refusal;
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Whose certificate: `[server]`'s default or a tenant's.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum CertOwner {
    Default,
    Tenant(String),
}

impl fmt::Display for CertOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => write!(f, "default"),
            Self::Tenant(name) => write!(f, "tenant {name}"),
        }
    }
}

/// One consistent set of loaded certificates.
#[derive(Debug, Default, Clone)]
pub struct CertSet {
    certs: BTreeMap<CertOwner, Arc<LoadedCert>>,
}

impl CertSet {
    pub fn get(&self, owner: &CertOwner) -> Option<&Arc<LoadedCert>> {
        self.certs.get(owner)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&CertOwner, &Arc<LoadedCert>)> {
        self.certs.iter()
    }
}

/// The running certificates and the last refusal of each.
#[derive(Default)]
pub struct CertStore {
    current: ArcSwap<CertSet>,
    refusals: Mutex<BTreeMap<CertOwner, Refusal>>,
}

/// Why a configured pair was refused: at the config line of the file at fault, naming both
/// keys and files.
fn refused(owner: &CertOwner, paths: &CertPaths, error: &PairError) -> String {
    let table = match owner {
        CertOwner::Default => "server",
        CertOwner::Tenant(_) => "tenant",
    };
    let place = match error.file {
        PairFile::Cert => &paths.cert_at,
        PairFile::Key => &paths.key_at,
    };
    place
        .error(format!(
            "{owner} certificate refused ({table}.tls_cert = {}, {table}.tls_key = {}): {error}",
            paths.cert.display(),
            paths.key.display()
        ))
        .to_string()
}

/// Which pair each owner is configured with.
fn configured(config: &Config) -> Vec<(CertOwner, CertPaths)> {
    let default = config
        .server
        .listener
        .default_cert
        .clone()
        .map(|paths| (CertOwner::Default, paths));
    let tenants = config.tenants.iter().filter_map(|t| {
        let paths = t.tls_cert.clone()?;
        Some((CertOwner::Tenant(t.name.clone()), paths))
    });
    default.into_iter().chain(tenants).collect()
}

impl CertStore {
    /// Loads every configured pair; any failure stops the start.
    pub fn load(config: &Config) -> anyhow::Result<Self> {
        let mut certs = BTreeMap::new();
        for (owner, paths) in configured(config) {
            let loaded = LoadedCert::load(&paths)
                .map_err(|e| anyhow::anyhow!("{}", refused(&owner, &paths, &e)))?;
            announce(&owner, &loaded);
            certs.insert(owner, Arc::new(loaded));
        }
        Ok(Self {
            current: ArcSwap::from_pointee(CertSet { certs }),
            refusals: Mutex::default(),
        })
    }

    pub fn current(&self) -> arc_swap::Guard<Arc<CertSet>> {
        self.current.load()
    }

    /// Every certificate and key file in use (the reload watcher watches them).
    pub fn paths(&self) -> Vec<PathBuf> {
        self.current
            .load()
            .iter()
            .flat_map(|(_, c)| [c.paths.cert.clone(), c.paths.key.clone()])
            .collect()
    }

    pub fn refusals(&self) -> BTreeMap<CertOwner, Refusal> {
        self.refusals.lock().clone()
    }

    /// The set a new config asks for. A pair it names anew must load (else the
    /// config is refused with the reason); a running pair whose files went bad
    /// keeps serving, refused as a file reload would be.
    pub fn prepare(&self, config: &Config) -> Result<CertSet, String> {
        let running = self.current.load_full();
        let mut certs = BTreeMap::new();
        for (owner, paths) in configured(config) {
            let loaded = match running.get(&owner).filter(|c| c.paths == paths) {
                Some(old) => {
                    // Whatever the outcome, the running set now holds the pair to keep.
                    self.refresh(&owner, old);
                    let current = self.current.load();
                    current.get(&owner).cloned().unwrap_or_else(|| old.clone())
                }
                None => {
                    let loaded =
                        LoadedCert::load(&paths).map_err(|e| refused(&owner, &paths, &e))?;
                    if let Some(why) = running
                        .get(&owner)
                        .and_then(|old| expired_over(old, &loaded))
                    {
                        return Err(format!("{owner}: {why}"));
                    }
                    // Announced by `install`: the config may still be refused.
                    Arc::new(loaded)
                }
            };
            certs.insert(owner, loaded);
        }
        Ok(CertSet { certs })
    }

    /// Serves `set` from the next handshake on (after a config reload).
    pub fn install(&self, set: CertSet) {
        let running = self.current.load_full();
        // A refusal stays only while the pair it concerns still serves: an owner gone, or
        // given a pair that loaded since, has nothing refused any more.
        self.refusals.lock().retain(|owner, _| {
            match (set.certs.get(owner), running.certs.get(owner)) {
                (Some(next), Some(now)) => Arc::ptr_eq(next, now),
                _ => false,
            }
        });
        // The expiry gauge follows what serves: a pair new in `set` from now on, and an
        // owner gone (or its pair) no longer.
        for (owner, cert) in set.iter() {
            if !running.get(owner).is_some_and(|now| Arc::ptr_eq(now, cert)) {
                announce(owner, cert);
            }
        }
        for (owner, _) in running.iter() {
            if set.get(owner).is_none() {
                crate::metrics::forget_certificate(&owner.to_string());
            }
        }
        self.current.store(Arc::new(set));
    }

    /// Re-reads every pair that has a file in `changed`.
    pub fn reload_files(&self, changed: &[PathBuf]) -> Vec<(String, Outcome)> {
        let touched = |path: &Path| changed.iter().any(|c| crate::reload::same_file(c, path));
        let running = self.current.load_full();
        running
            .iter()
            .filter(|(_, c)| touched(&c.paths.cert) || touched(&c.paths.key))
            .map(|(owner, old)| (format!("{owner} certificate"), self.refresh(owner, old)))
            .collect()
    }

    /// Loads `old`'s files again and swaps the result in when it differs and passes.
    fn refresh(&self, owner: &CertOwner, old: &LoadedCert) -> Outcome {
        let bytes = match PairBytes::read(&old.paths) {
            Ok(bytes) => bytes,
            Err(e) => return self.refuse(owner, e.reason),
        };
        if bytes.sha256() == old.files_sha256 {
            // The files hold the pair that serves again (a refused edit undone).
            self.refusals.lock().remove(owner);
            return Outcome::Unchanged;
        }
        match LoadedCert::from_bytes(&old.paths, &bytes) {
            Ok(loaded) => {
                if let Some(why) = expired_over(old, &loaded) {
                    return self.refuse(owner, why);
                }
                self.refusals.lock().remove(owner);
                announce(owner, &loaded);
                crate::metrics::certificate_reload(&owner.to_string(), "applied");
                let mut next = (**self.current.load()).clone();
                next.certs.insert(owner.clone(), Arc::new(loaded));
                self.current.store(Arc::new(next));
                Outcome::Applied
            }
            Err(e) => self.refuse(owner, e.reason),
        }
    }

    fn refuse(&self, owner: &CertOwner, reason: String) -> Outcome {
        tracing::warn!(
            certificate = %owner,
            "certificate refused, the loaded one keeps serving: {reason}"
        );
        crate::metrics::certificate_reload(&owner.to_string(), "refused");
        let refusal = Refusal {
            at: SystemTime::now(),
            sha256: None,
            reason: reason.clone(),
        };
        self.refusals.lock().insert(owner.clone(), refusal);
        Outcome::Refused(reason)
    }
}

/// How far ahead a new pair's validity may begin and it still replaces a valid one. Issuers
/// that do not backdate sign pairs valid from the second they are made, and clocks differ:
/// refused, such a renewal was never tried again (nothing but a file event re-reads it) and
/// sat unused until the serving certificate expired. Clients whose clock is behind refuse it
/// for those seconds at most.
const NOT_BEFORE_SKEW: Duration = Duration::from_secs(300);

/// Why `new` may not replace `old`: it has expired, or is not valid for more than
/// [`NOT_BEFORE_SKEW`] yet, while `old` is valid (clients would refuse every handshake that
/// now succeeds). None when it may.
fn expired_over(old: &LoadedCert, new: &LoadedCert) -> Option<String> {
    if old.expired() || old.not_yet_valid() {
        return None;
    }
    let file = new.paths.cert.display();
    if new.expired() {
        return Some(format!(
            "{file} expired (not after {}, unix time) while the certificate serving now has not: it keeps serving",
            new.not_after
        ));
    }
    new.valid_only_after(NOT_BEFORE_SKEW).then(|| {
        format!(
            "{file} is not valid yet (not before {}, unix time) while the certificate serving now is: it keeps serving",
            new.not_before
        )
    })
}

fn announce(owner: &CertOwner, cert: &LoadedCert) {
    crate::metrics::certificate_expiry(&owner.to_string(), cert.not_after);
    if cert.expired() {
        tracing::warn!(certificate = %owner, names = cert.names.join(" "), "certificate has expired; clients will refuse it");
    } else if cert.not_yet_valid() {
        tracing::warn!(certificate = %owner, names = cert.names.join(" "), "certificate is not valid yet; clients will refuse it");
    }
    tracing::info!(
        certificate = %owner,
        file = %cert.paths.cert.display(),
        names = cert.names.join(" "),
        sha256 = cert.fingerprint,
        not_after = cert.not_after,
        "certificate loaded"
    );
}
