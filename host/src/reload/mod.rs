//! Hot reload: plugins and the config change live, off the request path.
//!
//! A changed plugin is compiled (or loaded from the artifact cache), checked
//! (imports, world, self-test vectors) and only then swapped in; requests in
//! flight keep the version they started with. Anything that fails keeps the
//! running version and is recorded as a refusal with its reason.

mod hangup;
mod settings;
#[cfg(not(target_os = "linux"))]
mod watch_folders;
#[cfg(target_os = "linux")]
mod watch_inotify;
mod watcher;

pub use hangup::Hangups;
pub use watcher::spawn_watcher;

use crate::config::{self, Config, TenantConfig};
use crate::policy::{ArtifactCache, LoadedPlugin, PolicyEngine};
use crate::proxy::ProxyState;
use crate::shadow::Shadow;
use crate::tenant::{PolicySource, Refusal, Tenant, TenantRouter};
use crate::tls::CertStore;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Instant, SystemTime};

/// What happened to one reload attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The new version serves from now on.
    Applied,
    /// The bytes (or the config) did not change.
    Unchanged,
    /// Refused; the running version stays.
    Refused(String),
}

pub struct Reloader {
    engine: PolicyEngine,
    state: Arc<ProxyState>,
    artifacts: Option<ArtifactCache>,
    /// The running configuration.
    config: Mutex<Config>,
    /// Reloads run one at a time (watcher, SIGHUP, admin).
    serial: Mutex<()>,
    last_config_refusal: Mutex<Option<Refusal>>,
    /// The files a refused config names (plugins, certificates, the token): one of them
    /// arriving or changing may be what it lacked, so the config is tried again then. (A
    /// config written before the plugin it names stayed refused until touched again.)
    refused_config_files: Mutex<Vec<PathBuf>>,
    /// The restart-only keys the applied file changes: their running values stay until a
    /// restart, which `/status` says (a log line alone is easily missed).
    waiting_for_restart: Mutex<Vec<&'static str>>,
    /// Set once the file watcher is running.
    watching: AtomicBool,
    /// Tells the watcher to watch the files of the configuration now applied (an empty
    /// batch): a reload the watcher did not start may name files it has no watch on.
    rearm: Mutex<Option<mpsc::Sender<Vec<PathBuf>>>>,
    /// The TLS listener's certificates, reloaded with their files and the config.
    certificates: Arc<CertStore>,
}

impl Reloader {
    pub fn new(
        engine: PolicyEngine,
        state: Arc<ProxyState>,
        config: Config,
        artifacts: Option<ArtifactCache>,
        certificates: Arc<CertStore>,
    ) -> Self {
        Self {
            engine,
            state,
            artifacts,
            config: Mutex::new(config),
            serial: Mutex::new(()),
            last_config_refusal: Mutex::new(None),
            refused_config_files: Mutex::new(Vec::new()),
            waiting_for_restart: Mutex::new(Vec::new()),
            watching: AtomicBool::new(false),
            rearm: Mutex::new(None),
            certificates,
        }
    }

    pub fn certificates(&self) -> &Arc<CertStore> {
        &self.certificates
    }

    /// Re-reads every certificate with a file in `changed`; a pair that fails
    /// is refused and the loaded one keeps serving.
    pub fn reload_certificates(&self, changed: &[PathBuf]) -> Vec<(String, Outcome)> {
        let _serial = self.serial.lock();
        let outcomes = self.certificates.reload_files(changed);
        if outcomes.iter().any(|(_, o)| matches!(o, Outcome::Applied)) {
            warn_uncovered_hosts(&self.config(), &self.certificates.current());
        }
        outcomes
    }

    pub fn config(&self) -> Config {
        self.config.lock().clone()
    }

    pub fn config_path(&self) -> PathBuf {
        self.config.lock().source.clone()
    }

    /// The file the admin token is read from, when the config names one.
    pub fn token_file(&self) -> Option<PathBuf> {
        self.config.lock().server.admin_token_file.clone()
    }

    /// What [`Self::refused_config_files`] holds: files whose change retries the config.
    pub fn refused_config_files(&self) -> Vec<PathBuf> {
        self.refused_config_files.lock().clone()
    }

    /// The plugin files the running config names, shadows included.
    pub fn plugin_paths(&self) -> Vec<PathBuf> {
        self.config
            .lock()
            .tenants
            .iter()
            .flat_map(|t| std::iter::once(&t.plugin).chain(t.shadow.as_ref().map(|s| &s.plugin)))
            .cloned()
            .collect()
    }

    /// Whether file changes are being watched (false until the watcher runs,
    /// and when `[plugins] watch = false`).
    pub fn watching(&self) -> bool {
        self.watching.load(Ordering::Acquire)
    }

    pub(crate) fn set_watching(&self, rearm: mpsc::Sender<Vec<PathBuf>>) {
        *self.rearm.lock() = Some(rearm);
        self.watching.store(true, Ordering::Release);
    }

    /// Has the watcher watch the files the running configuration names (after a reload
    /// by SIGHUP or the admin API, which may have brought in a tenant's certificate or
    /// plugin: without this its later renewals went unseen, probe AI).
    fn rearm_watches(&self) {
        if let Some(rearm) = self.rearm.lock().as_ref() {
            let _ = rearm.send(Vec::new());
        }
    }

    pub fn last_config_refusal(&self) -> Option<Refusal> {
        self.last_config_refusal.lock().clone()
    }

    /// The keys the config file changes that take effect only at a restart.
    pub fn waiting_for_restart(&self) -> Vec<&'static str> {
        self.waiting_for_restart.lock().clone()
    }

    /// Loads and checks a plugin file without swapping it in.
    fn load_checked(&self, path: &Path, bytes: &[u8]) -> anyhow::Result<LoadedPlugin> {
        let plugin = LoadedPlugin::from_bytes(&self.engine, path, bytes, self.artifacts.as_ref())?;
        plugin.run_self_tests(&self.engine)?;
        plugin.keep_artifact(self.artifacts.as_ref());
        Ok(plugin)
    }

    /// Re-reads the plugin (and shadow plugin) of every tenant whose file is in `changed`.
    pub fn reload_plugins(&self, changed: &[PathBuf]) -> Vec<(String, Outcome)> {
        let _serial = self.serial.lock();
        let router = self.state.router.load_full();
        let touched = |path: &Path| changed.iter().any(|c| same_file(c, path));
        let mut outcomes: Vec<(String, Outcome)> = router
            .tenants()
            .iter()
            .filter(|t| t.policy().plugin().is_some())
            .filter(|t| touched(t.live_plugin_path()))
            .map(|t| (t.name().to_owned(), self.reload_tenant_plugin(t)))
            .collect();
        for tenant in router.tenants() {
            let Some(shadow) = tenant.shadow() else {
                continue;
            };
            if touched(&shadow.plugin().info.path) {
                let outcome = self.reload_tenant_shadow(tenant, &shadow);
                outcomes.push((format!("{} (shadow)", tenant.name()), outcome));
            }
        }
        outcomes
    }

    /// A changed shadow file: checked like a live plugin, then shadowing from the next request
    /// with its comparisons counted afresh.
    fn reload_tenant_shadow(&self, tenant: &Tenant, running: &Shadow) -> Outcome {
        let Some(config) = &tenant.config.shadow else {
            return Outcome::Unchanged;
        };
        let path = &config.plugin;
        let bytes = match crate::file_read::read(path, crate::file_read::PLUGIN_MAX) {
            Ok(bytes) => bytes,
            Err(e) => {
                let reason = format!(
                    "shadow plugin: cannot read {}: {e}; keeping the loaded version",
                    path.display()
                );
                return self.refuse(tenant, path, None, reason);
            }
        };
        let sha256 = hex::encode(Sha256::digest(&bytes));
        if running.plugin().info.sha256 == sha256 {
            tenant.clear_refusal_of(path);
            return Outcome::Unchanged;
        }
        match self.load_checked(path, &bytes) {
            Ok(plugin) => {
                let shadow = Shadow::new(
                    self.engine.clone(),
                    &tenant.config,
                    config,
                    Arc::new(plugin),
                    Arc::default(),
                );
                tenant.set_shadow(Some(Arc::new(shadow)));
                tenant.clear_refusal_of(path);
                crate::metrics::reload(tenant.name(), "shadow-applied");
                tracing::info!(tenant = tenant.name(), plugin = %path.display(), sha256, "shadow plugin swapped");
                Outcome::Applied
            }
            Err(e) => self.refuse(tenant, path, Some(sha256), format!("shadow plugin: {e:#}")),
        }
    }

    /// `cachet promote`: the tenant's shadow becomes its live plugin in one swap, after the
    /// checks a reload makes (the file still holds the version that was shadowed, and it
    /// passes its self-test vectors again). The shadow is gone afterwards.
    pub fn promote(&self, name: &str, expected_sha256: Option<&str>) -> Outcome {
        let _serial = self.serial.lock();
        let router = self.state.router.load_full();
        let Some(tenant) = router.tenants().iter().find(|t| t.name() == name) else {
            return Outcome::Refused(format!("no tenant named {name:?}"));
        };
        let Some(shadow) = tenant.shadow() else {
            return Outcome::Refused(format!("tenant {name:?} has no shadow plugin to promote"));
        };
        let plugin = shadow.plugin().clone();
        let path = plugin.info.path.clone();
        // The operator judged one version by its counts: a reload since may have put another in
        // its place, whose counts are barely begun.
        if let Some(expected) = expected_sha256 {
            if !plugin
                .info
                .sha256
                .starts_with(&expected.to_ascii_lowercase())
            {
                return Outcome::Refused(format!(
                    "promote: the shadow plugin of tenant {name:?} is now sha256 {}, not {expected}; \
                     judge its counts (cachet status) before promoting it",
                    plugin.info.sha256
                ));
            }
        }
        let sha256 = match crate::file_read::read(&path, crate::file_read::PLUGIN_MAX) {
            Ok(bytes) => hex::encode(Sha256::digest(&bytes)),
            Err(e) => {
                let reason = format!("promote: cannot read {}: {e}", path.display());
                return self.refuse(tenant, &path, None, reason);
            }
        };
        if sha256 != plugin.info.sha256 {
            let reason = format!(
                "promote: {} changed since it was loaded as the shadow (shadowed sha256 {}); \
                 let the reload pick it up and compare again first",
                path.display(),
                plugin.info.sha256
            );
            return self.refuse(tenant, &path, Some(sha256), reason);
        }
        if let Err(e) = plugin.run_self_tests(&self.engine) {
            return self.refuse(tenant, &path, Some(sha256), format!("promote: {e:#}"));
        }
        // As for any plugin going live: it must start within the tenant's limits, with the
        // tenant's settings (a shadow is only recorded, so nothing checked that yet).
        if let Err(e) =
            crate::policy::check_starts_within_limits(&self.engine, &plugin, &tenant.config)
        {
            return self.refuse(tenant, &path, Some(sha256), format!("promote: {e:#}"));
        }
        tenant.promote(plugin);
        tenant.clear_refusal_of(&path);
        crate::metrics::reload(name, "promoted");
        tracing::info!(
            tenant = name,
            plugin = %path.display(),
            sha256,
            generation = tenant.generation(),
            "shadow plugin promoted to live"
        );
        Outcome::Applied
    }

    fn reload_tenant_plugin(&self, tenant: &Tenant) -> Outcome {
        let path = tenant.live_plugin_path();
        let started = Instant::now();
        let bytes = match crate::file_read::read(path, crate::file_read::PLUGIN_MAX) {
            Ok(bytes) => bytes,
            Err(e) => {
                // Deleted or unreadable: keep serving the last good version.
                let reason = format!(
                    "cannot read {}: {e}; keeping the loaded version",
                    path.display()
                );
                return self.refuse(tenant, path, None, reason);
            }
        };
        let sha256 = hex::encode(Sha256::digest(&bytes));
        if tenant.policy().sha256() == Some(sha256.as_str()) {
            tenant.clear_refusal_of(path);
            return Outcome::Unchanged;
        }
        let checked = self.load_checked(path, &bytes).and_then(|plugin| {
            crate::policy::check_starts_within_limits(&self.engine, &plugin, &tenant.config)?;
            Ok(plugin)
        });
        match checked {
            Ok(plugin) => {
                tenant.swap_plugin(Arc::new(plugin));
                tenant.clear_refusal_of(path);
                crate::metrics::reload(tenant.name(), "applied");
                tracing::info!(
                    tenant = tenant.name(),
                    plugin = %path.display(),
                    sha256,
                    generation = tenant.generation(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "plugin swapped"
                );
                Outcome::Applied
            }
            Err(e) => self.refuse(tenant, path, Some(sha256), format!("{e:#}")),
        }
    }

    fn refuse(
        &self,
        tenant: &Tenant,
        file: &Path,
        sha256: Option<String>,
        reason: String,
    ) -> Outcome {
        tracing::warn!(
            tenant = tenant.name(),
            "plugin refused, previous version keeps serving: {reason}"
        );
        crate::metrics::reload(tenant.name(), "refused");
        tenant.record_refusal(
            file,
            Refusal {
                at: SystemTime::now(),
                sha256,
                reason: reason.clone(),
            },
        );
        Outcome::Refused(reason)
    }

    /// Re-reads the config file and applies it whole, or refuses it whole.
    pub fn reload_config(&self) -> Outcome {
        let _serial = self.serial.lock();
        let path = self.config_path();
        let (outcome, named) = match config::load(&path) {
            Ok(new) => {
                let named = files_named(&new);
                (self.apply_config(new), named)
            }
            Err(e) => {
                let missing = e.missing_file.clone().into_iter().collect();
                (Outcome::Refused(e.to_string()), missing)
            }
        };
        *self.refused_config_files.lock() = match outcome {
            Outcome::Refused(_) => named,
            Outcome::Applied | Outcome::Unchanged => Vec::new(),
        };
        match &outcome {
            Outcome::Refused(reason) => {
                tracing::warn!(config = %path.display(), "config refused, running config stays: {reason}");
                crate::metrics::reload("-", "config-refused");
                *self.last_config_refusal.lock() = Some(Refusal {
                    at: SystemTime::now(),
                    sha256: None,
                    reason: reason.clone(),
                });
            }
            Outcome::Applied => {
                crate::metrics::reload("-", "config-applied");
                tracing::info!(config = %path.display(), "config applied");
                // The refusal described a version of the file that is gone.
                *self.last_config_refusal.lock() = None;
            }
            // The file says what runs again (a refused edit undone).
            Outcome::Unchanged => *self.last_config_refusal.lock() = None,
        }
        outcome
    }

    /// Applies every setting that can change live; names the ones that need a
    /// restart (their running values stay, and the warning repeats on each
    /// reload until they match again).
    fn apply_config(&self, new: Config) -> Outcome {
        let old = self.config();
        let (new, waiting) = settings::keep_restart_only(&old, new);
        let outcome = self.apply_settled(&old, new);
        if !matches!(outcome, Outcome::Refused(_)) {
            *self.waiting_for_restart.lock() = waiting;
        }
        outcome
    }

    /// [`Self::apply_config`] once the restart-only keys are the running ones.
    fn apply_settled(&self, old: &Config, new: Config) -> Outcome {
        // The file may move the admin listener to loopback and drop the token at once: the
        // token goes now, the listener only at a restart, so check what would really run.
        if crate::config::admin_exposed_without_token(&new.server) {
            return Outcome::Refused(format!(
                "server.admin: the admin listener stays on {} until a restart, and off \
                 loopback it needs server.admin_token",
                new.server.admin.map_or_else(String::new, |a| a.to_string())
            ));
        }
        // Likewise the TLS listener: it stays open until a restart, so a file that drops it
        // with every certificate would leave it refusing every handshake.
        let listener = &new.server.listener;
        if let (Some(listen), true) = (
            listener.tls_listen,
            crate::config::serves_no_certificate(listener, &new.tenants),
        ) {
            return Outcome::Refused(format!(
                "server.tls_listen: the TLS listener stays on {listen} until a restart, and \
                 needs server.tls_cert and server.tls_key, or a tenant's, until then"
            ));
        }
        let tenants_changed = !old
            .tenants
            .iter()
            .map(tenant_fingerprint)
            .eq(new.tenants.iter().map(tenant_fingerprint));
        let live_changed = settings::live_changed(old, &new);
        if !tenants_changed && live_changed.is_empty() {
            return Outcome::Unchanged;
        }
        let certificates = match self.certificates.prepare(&new) {
            Ok(set) => set,
            Err(reason) => return Outcome::Refused(reason),
        };
        warn_uncovered_hosts(&new, &certificates);
        if tenants_changed {
            let router = self.state.router.load_full();
            let mut built = Vec::with_capacity(new.tenants.len());
            for tenant in &new.tenants {
                let running = router.tenants().iter().find(|t| t.name() == tenant.name);
                // An unchanged tenant goes on as it runs: warm instances, circuit breakers
                // and all, and its files are not read again (a refused build of its plugin
                // waiting in the folder refused every edit of the other tenants, and a
                // plugin quarantined for looping was called again).
                let unchanged =
                    running.filter(|r| tenant_fingerprint(&r.config) == tenant_fingerprint(tenant));
                match unchanged {
                    Some(running) => built.push(TenantVersion::Running(running.clone())),
                    None => match self.tenant_version(running.map(|t| &**t), tenant) {
                        Ok(t) => built.push(TenantVersion::New(Box::new(t))),
                        Err(e) => return Outcome::Refused(format!("{e:#}")),
                    },
                }
            }
            // Only once every tenant is built: taking over touches what the running version
            // holds (a raised origin limit adds turns to the semaphore it still uses), and a
            // config refused by a later tenant must leave the running ones as they were.
            let tenants = built
                .into_iter()
                .map(|built| match built {
                    TenantVersion::New(mut tenant) => {
                        let running = router.tenants().iter().find(|t| t.name() == tenant.name());
                        if let Some(old) = running {
                            tenant.upstream.inherit(&old.upstream);
                        }
                        Arc::new(*tenant)
                    }
                    TenantVersion::Running(running) => running,
                })
                .collect();
            // Before the new tenants serve: a name back for another site must not find the
            // old site's L2 copies.
            self.state.cache.storage.check_sites(&new.tenants);
            // Nor its objects in memory: emptied before the swap as well as in `apply_live`
            // after it (which also drops what old requests stored meanwhile), or a new site's
            // first requests found the old site's objects.
            for (before, _) in settings::moved_sites(old, &new) {
                self.state
                    .cache
                    .storage
                    .memory()
                    .drop_partition(&before.name);
            }
            self.state
                .router
                .store(Arc::new(TenantRouter::new(tenants)));
        }
        self.certificates.install(certificates);
        settings::apply_live(&self.state, old, &new);
        if let Some(warning) = crate::server::instance_room_warning(&new, &self.engine) {
            tracing::warn!("{warning}");
        }
        if !live_changed.is_empty() {
            tracing::info!(keys = live_changed.join(", "), "settings applied");
        }
        *self.config.lock() = new;
        Outcome::Applied
    }

    /// The new version of one tenant, before it takes over what the running one (`running`,
    /// the tenant of that name now serving) knows: its running plugin is reused when the
    /// file is unchanged, so editing a host list recompiles nothing. A promoted shadow stays
    /// live while the config names the same plugin and shadow files. (It takes over the
    /// running version's origin turns once the whole config is built: see `apply_config`.)
    fn tenant_version(
        &self,
        running: Option<&Tenant>,
        config: &TenantConfig,
    ) -> anyhow::Result<Tenant> {
        let (generation, last_refusal) =
            running.map_or((1, None), |old| (old.generation(), old.plugin_refusal()));
        let promoted = running.is_some_and(|old| {
            let shadow_file = |c: &TenantConfig| c.shadow.as_ref().map(|s| s.plugin.clone());
            old.promoted()
                && old.config.plugin == config.plugin
                && shadow_file(&old.config) == shadow_file(config)
        });
        let shadow = match promoted {
            true => None,
            false => self.shadow_for(config, running)?,
        };
        let (live_path, live_at, what) = match (&config.shadow, promoted) {
            (Some(shadow), true) => (&shadow.plugin, &shadow.plugin_at, "promoted shadow plugin"),
            _ => (&config.plugin, &config.plugin_at, "plugin"),
        };
        let refused = |e| crate::server::plugin_refused(live_at, &config.name, what, e);
        let history = |source, generation| {
            Tenant::with_history(
                self.engine.clone(),
                config.clone(),
                source,
                generation,
                last_refusal.clone(),
                shadow.clone(),
                promoted,
            )
        };
        if let (Some(builtin), false) = (config.builtin, promoted) {
            return Ok(history(PolicySource::Builtin(builtin), generation));
        }
        let bytes = crate::file_read::read(live_path, crate::file_read::PLUGIN_MAX)
            .map_err(|e| refused(anyhow::anyhow!("cannot read {}: {e}", live_path.display())))?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        if let Some(plugin) = running.and_then(|old| old.policy().plugin().cloned()) {
            if plugin.info.sha256 == sha256 {
                // The limits or settings may have changed.
                crate::policy::check_starts_within_limits(&self.engine, &plugin, config)
                    .map_err(refused)?;
                return Ok(history(PolicySource::Plugin(plugin), generation));
            }
        }
        let plugin = Arc::new(self.load_checked(live_path, &bytes).map_err(refused)?);
        crate::policy::check_starts_within_limits(&self.engine, &plugin, config)
            .map_err(refused)?;
        let next = if running.is_some() { generation + 1 } else { 1 };
        Ok(history(PolicySource::Plugin(plugin), next))
    }

    /// The shadow a rebuilt tenant runs: the running one (and its comparisons) when the file
    /// is unchanged, else the file loaded and checked like a live plugin.
    fn shadow_for(
        &self,
        config: &TenantConfig,
        running: Option<&Tenant>,
    ) -> anyhow::Result<Option<Arc<Shadow>>> {
        let Some(shadow) = &config.shadow else {
            return Ok(None);
        };
        let refused =
            |e| crate::server::plugin_refused(&shadow.plugin_at, &config.name, "shadow plugin", e);
        let bytes =
            crate::file_read::read(&shadow.plugin, crate::file_read::PLUGIN_MAX).map_err(|e| {
                refused(anyhow::anyhow!(
                    "cannot read {}: {e}",
                    shadow.plugin.display()
                ))
            })?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let previous = running
            .and_then(Tenant::shadow)
            .filter(|s| s.plugin().info.sha256 == sha256);
        let (plugin, record) = match previous {
            Some(previous) => (previous.plugin().clone(), previous.record().clone()),
            None => {
                let plugin = self.load_checked(&shadow.plugin, &bytes).map_err(refused)?;
                (Arc::new(plugin), Arc::default())
            }
        };
        let shadow = Shadow::new(self.engine.clone(), config, shadow, plugin, record);
        Ok(Some(Arc::new(shadow)))
    }

    /// SIGHUP and `POST /reload`: check the config, every plugin and every certificate.
    /// Returns what was refused (each naming the config, plugin or certificate and why):
    /// empty when everything now serves as its files say.
    pub fn check_everything(&self) -> Vec<String> {
        let config_outcome = self.reload_config();
        let plugins = self.plugin_paths();
        let plugin_outcomes = self.reload_plugins(&plugins);
        let certificate_outcomes = self.reload_certificates(&self.certificates.paths());
        tracing::info!(
            ?config_outcome,
            ?plugin_outcomes,
            ?certificate_outcomes,
            "reload check done"
        );
        self.rearm_watches();
        let config = std::iter::once(("config".to_owned(), config_outcome));
        let named = |kind: &'static str| move |(name, outcome)| (format!("{kind} {name}"), outcome);
        config
            .chain(plugin_outcomes.into_iter().map(named("plugin")))
            .chain(certificate_outcomes.into_iter().map(named("certificate")))
            .filter_map(|(what, outcome)| match outcome {
                Outcome::Refused(reason) => Some(format!("{what}: {reason}")),
                Outcome::Applied | Outcome::Unchanged => None,
            })
            .collect()
    }
}

/// What a config reload serves a tenant with.
enum TenantVersion {
    /// Built for the new config.
    New(Box<Tenant>),
    /// The running one, whose configuration did not change.
    Running(Arc<Tenant>),
}

/// A tenant's configuration as far as a change of it matters: every setting, compared as
/// the config types compare them (where a key is written is not a setting), without the
/// addresses names had when the file was read (the running tenant looks its names up again
/// itself). Compared as text, a comment added above a tenant or a name answering with
/// rotating addresses was a change of every tenant: all rebuilt, warm instances lost, and a
/// refused plugin file of one tenant refusing an unrelated edit.
fn tenant_fingerprint(t: &TenantConfig) -> TenantConfig {
    let mut t = t.clone();
    t.upstream = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
    let targets = t
        .upstreams
        .iter_mut()
        .chain(t.backends.iter_mut().map(|(_, b)| b));
    for target in targets {
        target.addrs.clear();
    }
    t
}

/// The files `config` names besides itself: plugins (not builtins), shadows, certificates
/// and the token file.
fn files_named(config: &Config) -> Vec<PathBuf> {
    let tenants = config.tenants.iter().flat_map(|t| {
        let plugin = t.builtin.is_none().then(|| t.plugin.clone());
        let shadow = t.shadow.as_ref().map(|s| s.plugin.clone());
        let cert = t
            .tls_cert
            .iter()
            .flat_map(|c| [c.cert.clone(), c.key.clone()]);
        plugin.into_iter().chain(shadow).chain(cert)
    });
    let server = &config.server;
    let default_cert = server.listener.default_cert.iter();
    tenants
        .chain(default_cert.flat_map(|c| [c.cert.clone(), c.key.clone()]))
        .chain(server.admin_token_file.clone())
        .collect()
}

/// Two paths name the same file (watch events carry absolute paths, the
/// config may hold relative ones).
pub(crate) fn same_file(a: &Path, b: &Path) -> bool {
    if a == b {
        return true;
    }
    let absolute = |p: &Path| -> Option<PathBuf> {
        let parent = p
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Some(parent.canonicalize().ok()?.join(p.file_name()?))
    };
    matches!((absolute(a), absolute(b)), (Some(x), Some(y)) if x == y)
}

/// Logs the tenant hosts a certificate about to serve does not name.
fn warn_uncovered_hosts(config: &Config, certificates: &crate::tls::CertSet) {
    for warning in crate::tls::coverage::warnings(config, certificates) {
        tracing::warn!("{warning}");
    }
}
