//! The certificates the TLS listener serves: the default one and each
//! tenant's, swapped whole so a handshake sees one consistent set. A pair
//! that fails to load never replaces the running one: the refusal is kept
//! with its reason for `/status`, and counted.

use super::certificate::{LoadedCert, PairBytes, PairError, PairFile};
use super::coverage::{covers, is_ip_literal};
use crate::config::{CertPaths, Config};
use crate::host_table::HostTable;
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

/// One consistent set of loaded certificates, with the tenants' hosts of the config it was
/// loaded for: a handshake during a reload finds a name's owner and the owner's pair in one
/// snapshot (looked up in the tenant router, a name just moved to another tenant could be
/// served that tenant's old certificate, or none).
#[derive(Debug, Default, Clone)]
pub struct CertSet {
    certs: BTreeMap<CertOwner, Arc<LoadedCert>>,
    owners: Arc<HostTable<CertOwner>>,
    /// The hosts whose handshakes each pair serves: a tenant's names on its own pair, IP
    /// addresses (no SNI) and the hosts of tenants without one on the default.
    served: Arc<BTreeMap<CertOwner, Vec<String>>>,
}

impl CertSet {
    fn new(config: &Config, certs: BTreeMap<CertOwner, Arc<LoadedCert>>) -> Self {
        let owners = config.tenants.iter().flat_map(|tenant| {
            let owner = CertOwner::Tenant(tenant.name.clone());
            tenant
                .hosts
                .iter()
                .map(move |host| (host.as_str(), owner.clone()))
        });
        let served = hosts_served(config, |owner| certs.contains_key(owner));
        Self {
            certs,
            owners: Arc::new(HostTable::new(owners)),
            served: Arc::new(served),
        }
    }

    /// The pair for a handshake that asked for `server_name`: the tenant the name routes to
    /// (exactly as a Host header would) serves its own; any other name, or none, gets the
    /// default one.
    pub fn for_server_name(&self, server_name: Option<&str>) -> Option<&Arc<LoadedCert>> {
        let owner = server_name.and_then(|name| self.owners.get(&name.to_ascii_lowercase()));
        owner
            .and_then(|owner| self.certs.get(owner))
            .or_else(|| self.certs.get(&CertOwner::Default))
    }

    pub fn get(&self, owner: &CertOwner) -> Option<&Arc<LoadedCert>> {
        self.certs.get(owner)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&CertOwner, &Arc<LoadedCert>)> {
        self.certs.iter()
    }
}

/// Which pair serves each host of `config`'s tenants, `has_own` saying which owners have a
/// pair of their own: a tenant's names its own, IP addresses (clients send no SNI for one,
/// RFC 6066 §3) and the hosts of tenants without one the default.
fn hosts_served(
    config: &Config,
    has_own: impl Fn(&CertOwner) -> bool,
) -> BTreeMap<CertOwner, Vec<String>> {
    let mut served: BTreeMap<CertOwner, Vec<String>> = BTreeMap::new();
    for tenant in &config.tenants {
        let own = CertOwner::Tenant(tenant.name.clone());
        let has_own = has_own(&own);
        for host in &tenant.hosts {
            let owner = serving_owner(&own, has_own, host);
            served.entry(owner).or_default().push(host.clone());
        }
    }
    served
}

/// The owner whose pair a handshake for `host`, a host of tenant `own`, gets.
pub(super) fn serving_owner(own: &CertOwner, has_own: bool, host: &str) -> CertOwner {
    match has_own && !is_ip_literal(host) {
        true => own.clone(),
        false => CertOwner::Default,
    }
}

/// Why `new` may not replace `old` as the pair serving `hosts`: it leaves out hosts `old`
/// names, whose handshakes every client would then refuse (a renewal for the wrong names,
/// two tenants' files swapped). None when it may.
fn names_dropped(
    hosts: Option<&Vec<String>>,
    old: &LoadedCert,
    new: &LoadedCert,
) -> Option<String> {
    let dropped: Vec<&str> = hosts?
        .iter()
        .filter(|host| covers(&old.names, host) && !covers(&new.names, host))
        .map(String::as_str)
        .collect();
    (!dropped.is_empty()).then(|| {
        format!(
            "{} does not name {} (it names {}), which the certificate serving now does: it keeps serving",
            new.paths.cert.display(),
            dropped.join(", "),
            if new.names.is_empty() { "nothing".to_owned() } else { new.names.join(", ") },
        )
    })
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
            current: ArcSwap::from_pointee(CertSet::new(config, certs)),
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
        let configured = configured(config);
        let has_own = |owner: &CertOwner| configured.iter().any(|(o, _)| o == owner);
        let served = hosts_served(config, has_own);
        let mut certs = BTreeMap::new();
        for (owner, paths) in &configured {
            let hosts = served.get(owner);
            let loaded = match running.get(owner).filter(|c| c.paths == *paths) {
                // Renewed files are judged by the hosts the new config has the pair serve:
                // a renewal that drops a host the new config drops too is taken.
                Some(old) => match self.reread(owner, old) {
                    Ok(None) => old.clone(),
                    // Announced, and its refusal dropped, by `install`.
                    Ok(Some(new)) => match names_dropped(hosts, old, &new) {
                        None => Arc::new(new),
                        Some(why) => {
                            self.refuse(owner, why);
                            old.clone()
                        }
                    },
                    Err(why) => {
                        self.refuse(owner, why);
                        old.clone()
                    }
                },
                None => {
                    let loaded = LoadedCert::load(paths).map_err(|e| refused(owner, paths, &e))?;
                    if let Some(old) = running.get(owner) {
                        let why = expired_over(old, &loaded)
                            .or_else(|| names_dropped(hosts, old, &loaded));
                        if let Some(why) = why {
                            return Err(format!("{owner}: {why}"));
                        }
                    }
                    // Announced by `install`: the config may still be refused.
                    Arc::new(loaded)
                }
            };
            certs.insert(owner.clone(), loaded);
        }
        Ok(CertSet::new(config, certs))
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

    /// Loads `old`'s files again and swaps the result in when it differs and passes, judged
    /// by the hosts the running config has it serve.
    fn refresh(&self, owner: &CertOwner, old: &LoadedCert) -> Outcome {
        let renewed = self.reread(owner, old).and_then(|renewed| {
            let Some(new) = renewed else {
                return Ok(None);
            };
            let current = self.current.load();
            match names_dropped(current.served.get(owner), old, &new) {
                Some(why) => Err(why),
                None => Ok(Some(new)),
            }
        });
        match renewed {
            Ok(None) => Outcome::Unchanged,
            Ok(Some(new)) => {
                self.refusals.lock().remove(owner);
                announce(owner, &new);
                crate::metrics::certificate_reload(&owner.to_string(), "applied");
                let mut next = (**self.current.load()).clone();
                next.certs.insert(owner.clone(), Arc::new(new));
                self.current.store(Arc::new(next));
                Outcome::Applied
            }
            Err(why) => self.refuse(owner, why),
        }
    }

    /// `old`'s files read again: the pair they hold when it differs and loads, valid where
    /// `old` is; `None` when they hold `old` again (a refused edit undone: its refusal goes).
    fn reread(&self, owner: &CertOwner, old: &LoadedCert) -> Result<Option<LoadedCert>, String> {
        let bytes = PairBytes::read(&old.paths).map_err(|e| e.reason)?;
        if bytes.sha256() == old.files_sha256 {
            self.refusals.lock().remove(owner);
            return Ok(None);
        }
        let loaded = LoadedCert::from_bytes(&old.paths, &bytes).map_err(|e| e.reason)?;
        match expired_over(old, &loaded) {
            Some(why) => Err(why),
            None => Ok(Some(loaded)),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed pair for `name`, written as `<name>.pem` and `<name>.key`.
    fn pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        write_pair(&cert, &key, &[name]);
        (cert, key)
    }

    fn write_pair(cert: &Path, key: &Path, names: &[&str]) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let made = rcgen::generate_simple_self_signed(names).unwrap();
        std::fs::write(cert, made.cert.pem()).unwrap();
        std::fs::write(key, made.signing_key.serialize_pem()).unwrap();
    }

    /// Tenants `a` and `b` with the hosts given and a certificate each.
    fn config(dir: &Path, a_host: &str, b_host: &str) -> Config {
        let (a_cert, a_key) = pair(dir, "a.test");
        let (b_cert, b_key) = pair(dir, "b.test");
        let tenant = |name: &str, host: &str, cert: &Path, key: &Path| {
            format!(
                "[[tenant]]\nname = \"{name}\"\nhosts = [\"{host}\"]\nupstream = \"127.0.0.1:9\"\n\
                 plugin = \"builtin:standard\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
                cert.display(),
                key.display()
            )
        };
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:1\"\ntls_listen = \"127.0.0.1:2\"\n\n{}\n{}",
            tenant("a", a_host, &a_cert, &a_key),
            tenant("b", b_host, &b_cert, &b_key)
        );
        crate::config::parse(&dir.join("cachet.toml"), &text).unwrap()
    }

    fn served(set: &CertSet, name: &str) -> Option<Vec<String>> {
        set.for_server_name(Some(name)).map(|c| c.names.clone())
    }

    /// A set answers a name by the hosts of the config it was loaded for, not by whatever
    /// router serves meanwhile: a reload that moves a host to another tenant changes the
    /// certificate for it only when the new set is installed, in one step.
    #[test]
    fn a_certificate_set_routes_names_by_its_own_config() {
        let dir = tempfile::tempdir().unwrap();
        let store = CertStore::load(&config(dir.path(), "shop.test", "blog.test")).unwrap();
        let swapped = store
            .prepare(&config(dir.path(), "blog.test", "*.test"))
            .unwrap();
        let a = Some(vec!["a.test".to_owned()]);
        let b = Some(vec!["b.test".to_owned()]);
        assert_eq!(served(&store.current(), "shop.test"), a);
        assert_eq!(served(&store.current(), "blog.test:443"), b);
        // No default pair: a name no tenant has gets nothing.
        assert_eq!(served(&store.current(), "other.test"), None);
        assert_eq!(store.current().for_server_name(None).map(|_| ()), None);
        // Prepared, the new set already answers by its config; the running one is unchanged.
        assert_eq!(served(&swapped, "blog.test"), a);
        assert_eq!(served(&swapped, "shop.test"), b);
        assert_eq!(served(&store.current(), "shop.test"), a);
        store.install(swapped);
        assert_eq!(served(&store.current(), "SHOP.test."), b);
        assert_eq!(served(&store.current(), "blog.test"), a);
    }

    /// A pair that stops naming a host its tenant serves (a renewal for the wrong names, two
    /// tenants' files swapped) is refused, from its files as from a config, and the pair
    /// serving now keeps serving; one that names the same hosts and more replaces it.
    #[test]
    fn a_pair_that_drops_a_host_the_serving_one_names_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = CertStore::load(&config(dir.path(), "a.test", "b.test")).unwrap();
        let (cert, key) = (dir.path().join("a.test.pem"), dir.path().join("a.test.key"));
        write_pair(&cert, &key, &["other.example"]);
        let outcome = store.reload_files(std::slice::from_ref(&cert));
        let [(_, Outcome::Refused(why))] = outcome.as_slice() else {
            panic!("{outcome:?}");
        };
        assert!(why.contains("does not name a.test"), "{why}");
        assert_eq!(
            served(&store.current(), "a.test"),
            Some(vec!["a.test".to_owned()])
        );
        assert!(store
            .refusals()
            .contains_key(&CertOwner::Tenant("a".into())));

        // From a config that names other files for the tenant: refused with the reason.
        let (swapped_cert, swapped_key) = (dir.path().join("s.pem"), dir.path().join("s.key"));
        write_pair(&swapped_cert, &swapped_key, &["b.test"]);
        let mut swapped = config(dir.path(), "a.test", "b.test");
        let paths = swapped.tenants[0].tls_cert.as_mut().unwrap();
        (paths.cert, paths.key) = (swapped_cert, swapped_key);
        let refused = store.prepare(&swapped).unwrap_err();
        assert!(refused.contains("does not name a.test"), "{refused}");

        write_pair(&cert, &key, &["a.test", "www.a.test"]);
        let outcome = store.reload_files(std::slice::from_ref(&cert));
        assert!(
            matches!(outcome.as_slice(), [(_, Outcome::Applied)]),
            "{outcome:?}"
        );
        let names = Some(vec!["a.test".to_owned(), "www.a.test".to_owned()]);
        assert_eq!(served(&store.current(), "a.test"), names);
    }

    /// A renewal that leaves out a host is refused while the config serves that host, and
    /// taken by the reload of a config that drops the host too: refused again there, it
    /// never served, and the old pair ran out.
    #[test]
    fn a_renewal_dropping_a_host_is_taken_with_the_config_that_drops_it() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("a.pem"), dir.path().join("a.key"));
        write_pair(&cert, &key, &["a.test", "old.test"]);
        let config = |hosts: &str| {
            let text = format!(
                "[server]\nlisten = \"127.0.0.1:1\"\ntls_listen = \"127.0.0.1:2\"\n\n\
                 [[tenant]]\nname = \"a\"\nhosts = [{hosts}]\nupstream = \"127.0.0.1:9\"\n\
                 plugin = \"builtin:standard\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
                cert.display(),
                key.display()
            );
            crate::config::parse(&dir.path().join("cachet.toml"), &text).unwrap()
        };
        let store = CertStore::load(&config("\"a.test\", \"old.test\"")).unwrap();
        write_pair(&cert, &key, &["a.test"]);
        let outcome = store.reload_files(std::slice::from_ref(&cert));
        assert!(
            matches!(outcome.as_slice(), [(_, Outcome::Refused(_))]),
            "{outcome:?}"
        );
        let both = Some(vec!["a.test".to_owned(), "old.test".to_owned()]);
        assert_eq!(served(&store.current(), "a.test"), both);

        // A config that keeps old.test keeps the old pair, refused again.
        let kept = store.prepare(&config("\"a.test\", \"old.test\"")).unwrap();
        assert_eq!(served(&kept, "a.test"), both);
        let new = store.prepare(&config("\"a.test\"")).unwrap();
        assert_eq!(served(&new, "a.test"), Some(vec!["a.test".to_owned()]));
        assert_eq!(
            served(&store.current(), "a.test"),
            both,
            "not before it is installed"
        );
        store.install(new);
        assert_eq!(
            served(&store.current(), "a.test"),
            Some(vec!["a.test".to_owned()])
        );
        assert!(store.refusals().is_empty(), "{:?}", store.refusals());
    }
}
