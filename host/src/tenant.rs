//! Tenants: chosen by the host from the request's Host, never by a plugin.
//! Each has its own plugin (swappable), cache namespace and limits.

use crate::config::TenantConfig;
use crate::host_table::HostTable;
use crate::policy::{
    BuiltinPolicy, InstancePool, LoadedPlugin, PolicyEngine, PolicyLayer, TenantContext,
};
use crate::shadow::Shadow;
use crate::upstream::TenantUpstream;
use arc_swap::{ArcSwap, ArcSwapOption};
use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

/// A plugin version that was refused, and why.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub at: SystemTime,
    pub sha256: Option<String>,
    pub reason: String,
}

/// A tenant's refused plugin version and the file it was read from (the live or the
/// shadow plugin), so a later good version of that same file clears it.
#[derive(Debug, Clone)]
pub struct PluginRefusal {
    pub file: PathBuf,
    pub refusal: Refusal,
}

/// Where a tenant's policy comes from.
#[derive(Clone)]
pub enum PolicySource {
    Plugin(Arc<LoadedPlugin>),
    Builtin(BuiltinPolicy),
}

/// One tenant at run time.
pub struct Tenant {
    pub config: TenantConfig,
    /// The origin connection settings (TLS roots, and the pool when there is one).
    pub upstream: TenantUpstream,
    /// The current plugin version. A request takes a snapshot when it starts,
    /// so a swap never changes the policy under a request in flight.
    policy: ArcSwap<PolicyLayer>,
    context: Arc<TenantContext>,
    engine: PolicyEngine,
    /// Counts plugin versions loaded for this tenant (1 = the first).
    generation: AtomicU64,
    last_refusal: Mutex<Option<PluginRefusal>>,
    /// The candidate plugin run beside the live one, if any (`shadow_plugin`).
    shadow: ArcSwapOption<Shadow>,
    /// The live plugin is the promoted shadow (`cachet promote`): it comes from the
    /// `shadow_plugin` file, and there is no shadow until the config changes those files.
    promoted: AtomicBool,
    /// `cachet_requests_total` for this tenant, resolved once.
    pub requests: crate::metrics::RequestCounters,
    /// Tells this build of the tenant from every other in the process: a reload that
    /// changes its config builds a new one.
    build: u64,
}

/// The next [`Tenant::build`].
static NEXT_BUILD: AtomicU64 = AtomicU64::new(1);

impl Tenant {
    /// Builds the tenant around an already loaded plugin, as the first generation.
    pub fn new(engine: PolicyEngine, config: TenantConfig, source: PolicySource) -> Self {
        Self::with_history(engine, config, source, 1, None, None, false)
    }

    /// Builds a new version of a tenant (after a config change), keeping the
    /// plugin history operators see.
    pub fn with_history(
        engine: PolicyEngine,
        config: TenantConfig,
        source: PolicySource,
        generation: u64,
        last_refusal: Option<PluginRefusal>,
        shadow: Option<Arc<Shadow>>,
        promoted: bool,
    ) -> Self {
        let context = Arc::new(TenantContext {
            tenant: config.name.clone(),
            plugin_config: config.plugin_config.clone(),
        });
        let layer = match source {
            PolicySource::Plugin(plugin) => PolicyLayer::Wasm(InstancePool::new(
                engine.clone(),
                plugin,
                context.clone(),
                config.limits.clone(),
            )),
            PolicySource::Builtin(builtin) => PolicyLayer::Builtin(builtin),
        };
        Self {
            requests: crate::metrics::RequestCounters::new(&config.name),
            upstream: TenantUpstream::new(&config),
            config,
            policy: ArcSwap::from_pointee(layer),
            context,
            engine,
            generation: AtomicU64::new(generation),
            last_refusal: Mutex::new(last_refusal),
            shadow: ArcSwapOption::new(shadow),
            promoted: AtomicBool::new(promoted),
            build: NEXT_BUILD.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Which build of the tenant this is (see the field): work planned against one build
    /// (a key, a backend's index) is not carried out against another.
    pub fn build(&self) -> u64 {
        self.build
    }

    /// The generation of the plugin version new requests use.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn last_refusal(&self) -> Option<Refusal> {
        self.last_refusal.lock().as_ref().map(|r| r.refusal.clone())
    }

    /// The last refusal with the file it concerns, carried over when the config rebuilds
    /// the tenant.
    pub fn plugin_refusal(&self) -> Option<PluginRefusal> {
        self.last_refusal.lock().clone()
    }

    /// Remembers that a new version of `file` was refused (the old one stays).
    pub fn record_refusal(&self, file: &Path, refusal: Refusal) {
        *self.last_refusal.lock() = Some(PluginRefusal {
            file: file.to_path_buf(),
            refusal,
        });
    }

    /// Forgets a refusal of `file` once that file holds a version that serves (applied, or
    /// put back as it runs): a refusal of the other plugin file stays.
    pub fn clear_refusal_of(&self, file: &Path) {
        let mut last = self.last_refusal.lock();
        if last.as_ref().is_some_and(|r| r.file == file) {
            *last = None;
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The plugin version new requests use.
    pub fn policy(&self) -> Arc<PolicyLayer> {
        self.policy.load_full()
    }

    /// The shadow plugin, when one is configured (and not promoted).
    pub fn shadow(&self) -> Option<Arc<Shadow>> {
        self.shadow.load_full()
    }

    /// Replaces the shadow for requests that start from now on.
    pub fn set_shadow(&self, shadow: Option<Arc<Shadow>>) {
        self.shadow.store(shadow);
    }

    /// Whether the live plugin is a promoted shadow.
    pub fn promoted(&self) -> bool {
        self.promoted.load(Ordering::Acquire)
    }

    /// The file the live plugin is (re)loaded from: the shadow's file once promoted.
    pub fn live_plugin_path(&self) -> &Path {
        match &self.config.shadow {
            Some(shadow) if self.promoted() => &shadow.plugin,
            _ => &self.config.plugin,
        }
    }

    /// Makes the shadow's plugin the live one in a single swap, and drops the shadow.
    /// Requests in flight finish with the version they started with.
    pub fn promote(&self, plugin: Arc<LoadedPlugin>) {
        self.promoted.store(true, Ordering::Release);
        self.swap_plugin(plugin);
        self.shadow.store(None);
    }

    /// Makes `plugin` the version for every request that starts from now on.
    pub fn swap_plugin(&self, plugin: Arc<LoadedPlugin>) {
        let pool = InstancePool::new(
            self.engine.clone(),
            plugin,
            self.context.clone(),
            self.config.limits.clone(),
        );
        self.policy.store(Arc::new(PolicyLayer::Wasm(pool)));
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// Maps a request's host to its tenant by the rule of [`HostTable`].
#[derive(Default)]
pub struct TenantRouter {
    hosts: HostTable<Arc<Tenant>>,
    all: Vec<Arc<Tenant>>,
}

impl Drop for Tenant {
    fn drop(&mut self) {
        // The last request that held this version has recorded its series by now.
        crate::metrics::forget_tenant_if_gone(&self.config.name);
    }
}

impl TenantRouter {
    pub fn new(tenants: Vec<Arc<Tenant>>) -> Self {
        let hosts = HostTable::new(tenants.iter().flat_map(|tenant| {
            let hosts = tenant.config.hosts.iter();
            hosts.map(|host| (host.as_str(), tenant.clone()))
        }));
        Self {
            hosts,
            all: tenants,
        }
    }

    /// The tenant for a Host value (any port, and a fully qualified name's final dot, are
    /// ignored).
    pub fn route(&self, host: &str) -> Option<&Arc<Tenant>> {
        self.hosts.get(host)
    }

    pub fn tenants(&self) -> &[Arc<Tenant>] {
        &self.all
    }

    /// Whether `tenant`'s name still serves its site here: the tenant of that name keeps one
    /// of its hosts ([`keeps_its_site`]). A request planned against a version whose name has
    /// since gone to another site must not store under that name.
    pub fn still_serves_site_of(&self, tenant: &Tenant) -> bool {
        self.all.iter().any(|now| {
            now.name() == tenant.name() && keeps_its_site(&tenant.config.hosts, &now.config.hosts)
        })
    }
}

/// Whether a tenant's hosts `after` a change keep any of those `before` it. A name given only
/// other hosts (as when two tenants swap names) serves another site, and none of the old
/// site's objects may answer for it.
pub fn keeps_its_site(before: &[String], after: &[String]) -> bool {
    after.iter().any(|host| before.contains(host))
}

/// A pattern of `[[tenant]] hosts`: `*`, `*.` and a name (any name under it, not the name
/// itself), or a name: DNS labels, an IPv4 address, or a bracketed IPv6 address. No port: one
/// would never match, as routing ignores the request's.
pub fn is_host_pattern(pattern: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let name = pattern.strip_prefix("*.").unwrap_or(pattern);
    if let Some(literal) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        return pattern == name && literal.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// One spelling per host: an IPv6 literal in its shortest form (`[0::1]` is `[::1]`), as
/// the config's hosts are kept, so two tenants cannot claim one address under two spellings
/// and a request reaches the tenant however its client wrote the address.
pub fn canonical_host(host: &str) -> std::borrow::Cow<'_, str> {
    let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    match literal.and_then(|l| l.parse::<std::net::Ipv6Addr>().ok()) {
        Some(address) => format!("[{address}]").into(),
        None => host.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::{canonical_host, is_host_pattern};

    #[test]
    fn host_patterns_are_names_wildcards_over_names_or_the_catch_all() {
        for good in [
            "*",
            "shop.test",
            "*.shop.test",
            "localhost",
            "10.0.0.1",
            "[::1]",
            "a_b.test",
            "xn--bcher-kva.example",
        ] {
            assert!(is_host_pattern(good), "{good}");
        }
        for bad in [
            "*shop.test",
            "a*.test",
            "*.*.test",
            "shop.test:8080",
            "shop..test",
            "*.",
            "[::1]:80",
            "*.[::1]",
            "shop test",
            "shop/test",
        ] {
            assert!(!is_host_pattern(bad), "{bad}");
        }
    }

    #[test]
    fn an_ipv6_literal_has_one_spelling() {
        assert_eq!(canonical_host("[0:0::1]"), "[::1]");
        assert_eq!(canonical_host("[0:0:0:0:0:0:0:A]"), "[::a]");
        assert_eq!(canonical_host("shop.test"), "shop.test");
        assert_eq!(canonical_host("[not-an-address]"), "[not-an-address]");
    }
}
