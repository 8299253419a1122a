//! Assembling a running proxy from a validated configuration.

use crate::admin::AdminApp;
use crate::config::{Config, KeyPlace, TenantConfig};
use crate::connection::{ConnectionGuard, ConnectionLimits, ListenerRole, OperatorApp};
use crate::policy::{ArtifactCache, LoadedPlugin, PolicyEngine};
use crate::proxy::{CacheBackend, CachetProxy, ProxyState};
use crate::reload::{spawn_watcher, Hangups, Reloader};
use crate::shadow::Shadow;
use crate::shutdown::{BeforeExit, DrainOnSignal};
use crate::storage::{MemoryStorage, TieredStorage};
use crate::tenant::{PolicySource, Tenant, TenantRouter};
use anyhow::Context;
use arc_swap::ArcSwapOption;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::ShutdownWatch;
use pingora::server::{RunArgs, Server};
use pingora::services::background::{background_service, BackgroundService};
use pingora_cache::lock::{CacheKeyLockImpl, CacheLock};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Tenants the engine's pool has room for at least, whatever the config at start holds:
/// the pool cannot grow later, and tenants are added by reloads.
const TENANT_ROOM: u32 = 8;

/// Live plugin instances the engine's pool has room for (all tenants): per tenant, one in use
/// per worker thread and as many idle, its idle instances, twice over while a reload's new
/// versions start next to the old ones. Each slot reserves address space (8 GiB of it: two
/// memories of 4 GiB), none of it resident, hence the ceiling.
pub(crate) fn instance_slots(config: &Config) -> u32 {
    let per_pool = config.server.threads as u32 * 2 + 32;
    let pools = plugin_pools(config).max(TENANT_ROOM);
    per_pool
        .saturating_mul(pools)
        .saturating_mul(2)
        .clamp(256, 4096)
}

/// `CACHET_INSTANCE_SLOTS`: the pool's room set by hand, for tools that cannot give a process
/// the terabytes of address space the computed room reserves (valgrind, `ulimit -v`;
/// `tests/bench/instructions.sh`). Busy tenants may then find the pool full (plugin fault
/// "instantiate").
fn slots_from_environment() -> anyhow::Result<Option<u32>> {
    let Some(value) = std::env::var_os("CACHET_INSTANCE_SLOTS") else {
        return Ok(None);
    };
    match value.to_str().and_then(|v| v.parse::<u32>().ok()) {
        Some(slots) if slots > 0 => Ok(Some(slots)),
        _ => anyhow::bail!("CACHET_INSTANCE_SLOTS must be a whole number above 0, not {value:?}"),
    }
}

/// The instance pools `config` runs: one per tenant with a plugin file, one per shadow plugin.
fn plugin_pools(config: &Config) -> u32 {
    let pools = config
        .tenants
        .iter()
        .map(|t| usize::from(t.builtin.is_none()) + usize::from(t.shadow.is_some()))
        .sum::<usize>();
    u32::try_from(pools).unwrap_or(u32::MAX)
}

/// A warning when `config` (brought in by a reload) needs more plugin instances than the pool
/// made at start has room for: busy tenants may then find it full, which their plugins report
/// as an `instantiate` fault (`on_plugin_error` applies), until a restart sizes it anew.
pub(crate) fn instance_room_warning(config: &Config, engine: &PolicyEngine) -> Option<String> {
    let needed = instance_slots(config);
    (needed > engine.max_instances()).then(|| {
        format!(
            "{} plugins (tenants' and shadows') need room for {needed} plugin instances; the \
             pool made at start has {}: under load some requests may find it full (plugin \
             fault \"instantiate\") until cachet is restarted",
            plugin_pools(config),
            engine.max_instances()
        )
    })
}

/// Everything a running proxy is made of.
pub struct Runtime {
    pub engine: PolicyEngine,
    pub state: Arc<ProxyState>,
    pub reloader: Arc<Reloader>,
    /// The TLS listener's certificates (empty without one).
    pub certificates: Arc<crate::tls::CertStore>,
}

/// Loads every tenant's plugin (checked exactly as a reload would) and builds
/// the shared proxy state.
pub fn build_runtime(config: &Config) -> anyhow::Result<Runtime> {
    let slots = match slots_from_environment()? {
        Some(slots) => slots,
        None => instance_slots(config),
    };
    let engine = PolicyEngine::new(slots).context("starting the WebAssembly engine")?;
    engine.set_worker_threads(config.server.threads);
    engine.set_heavy_call(config.plugins.heavy_call);
    let artifacts = config.plugins.artifact_cache_dir.clone().map(|dir| {
        ArtifactCache::new(
            dir,
            engine.engine(),
            config.plugins.artifact_cache_max_bytes,
        )
    });
    let mut tenants = Vec::with_capacity(config.tenants.len());
    for tenant in &config.tenants {
        let source = load_policy(&engine, tenant, artifacts.as_ref())?;
        let shadow = load_shadow(&engine, tenant, artifacts.as_ref())?;
        let running = Tenant::new(engine.clone(), tenant.clone(), source);
        running.set_shadow(shadow);
        tenants.push(Arc::new(running));
    }
    // Pingora wants the storage and the lock as `'static`: they live as long
    // as the process.
    let memory: &'static MemoryStorage = Box::leak(Box::new(MemoryStorage::new(
        config.cache.max_bytes,
        config.cache.max_object_bytes,
    )));
    for warning in crate::config::warnings(config) {
        tracing::warn!("{warning}");
    }
    for tenant in &config.tenants {
        memory.set_partition_budget(&tenant.name, tenant.cache_quota);
        memory.set_partition_max_object(&tenant.name, tenant.max_object_bytes);
    }
    memory.set_tenant_count(config.tenants.len());
    let storage: &'static TieredStorage = Box::leak(Box::new(
        TieredStorage::open(memory, &config.cache).context("opening the cache tiers")?,
    ));
    storage.check_sites(&config.tenants);
    let lock: &'static CacheLock = Box::leak(CacheLock::new_boxed(config.cache.lock_timeout));
    let lock: &'static CacheKeyLockImpl = lock;
    let cache = CacheBackend {
        storage,
        lock,
        uncacheable: crate::proxy::remember_uncacheable(config.cache.uncacheable_keys),
        lock_timeout: config.cache.lock_timeout,
        max_object_bytes: config.cache.max_object_bytes,
    };
    crate::metrics::set_live_tenants(config.tenants.iter().map(|t| t.name.as_str()));
    let mut state = ProxyState::new(TenantRouter::new(tenants), cache, config.server.access_log);
    state.admin_token = ArcSwapOption::from_pointee(config.server.admin_token.clone());
    state.forwarded_headers = config.server.forwarded_headers;
    state.unusual_field_names = config.server.unusual_field_names;
    // Twice the streams: a stream the client saw end may still be logging when the client
    // opens the next, and a browser at its stream limit must not be refused for it.
    state.h2_work = crate::connection::H2Work::new(
        config
            .server
            .listener
            .h2_max_concurrent_streams
            .saturating_mul(2),
    );
    state.client_write_timeout = config.server.client_write_timeout;
    state.lean_hits = AtomicBool::new(config.cache.lean_hits);
    state.drain.set_grace(config.server.shutdown_grace);
    let state = Arc::new(state);
    let certificates = Arc::new(crate::tls::CertStore::load(config)?);
    for warning in crate::tls::coverage::warnings(config, &certificates.current()) {
        tracing::warn!("{warning}");
    }
    let reloader = Arc::new(Reloader::new(
        engine.clone(),
        state.clone(),
        config.clone(),
        artifacts,
        certificates.clone(),
    ));
    Ok(Runtime {
        engine,
        state,
        reloader,
        certificates,
    })
}

/// Loads and checks a tenant's policy as configured.
pub fn load_policy(
    engine: &PolicyEngine,
    tenant: &TenantConfig,
    artifacts: Option<&ArtifactCache>,
) -> anyhow::Result<PolicySource> {
    if let Some(builtin) = tenant.builtin {
        tracing::info!(
            tenant = tenant.name,
            policy = builtin.name(),
            "builtin policy"
        );
        return Ok(PolicySource::Builtin(builtin));
    }
    let refused = |e: anyhow::Error| plugin_refused(&tenant.plugin_at, &tenant.name, "plugin", e);
    let plugin = LoadedPlugin::load_cached(engine, &tenant.plugin, artifacts).map_err(refused)?;
    plugin.run_self_tests(engine).map_err(refused)?;
    crate::policy::check_starts_within_limits(engine, &plugin, tenant).map_err(refused)?;
    plugin.keep_artifact(artifacts);
    tracing::info!(
        tenant = tenant.name,
        plugin = %tenant.plugin.display(),
        sha256 = plugin.info.sha256,
        compile_ms = plugin.info.compile_time.as_millis() as u64,
        from_artifact_cache = plugin.info.from_artifact_cache,
        fresh_state = %plugin.info.state_reset.describe(),
        "plugin loaded"
    );
    Ok(PolicySource::Plugin(Arc::new(plugin)))
}

/// A plugin that failed to load, as the config error it is: at the file, line and key that
/// name the plugin.
pub fn plugin_refused(
    place: &KeyPlace,
    tenant: &str,
    what: &str,
    error: anyhow::Error,
) -> anyhow::Error {
    place
        .error(format!("tenant {tenant:?}: {what} refused: {error:#}"))
        .into()
}

/// Loads and checks a tenant's shadow plugin, if it names one, exactly as its plugin.
pub fn load_shadow(
    engine: &PolicyEngine,
    tenant: &TenantConfig,
    artifacts: Option<&ArtifactCache>,
) -> anyhow::Result<Option<Arc<Shadow>>> {
    let Some(config) = &tenant.shadow else {
        return Ok(None);
    };
    let refused = |e| plugin_refused(&config.plugin_at, &tenant.name, "shadow plugin", e);
    let plugin = LoadedPlugin::load_cached(engine, &config.plugin, artifacts).map_err(refused)?;
    plugin.run_self_tests(engine).map_err(refused)?;
    plugin.keep_artifact(artifacts);
    tracing::info!(
        tenant = tenant.name,
        plugin = %config.plugin.display(),
        sha256 = plugin.info.sha256,
        sample = config.sample,
        "shadow plugin loaded"
    );
    let shadow = Shadow::new(
        engine.clone(),
        tenant,
        config,
        Arc::new(plugin),
        Arc::default(),
    );
    Ok(Some(Arc::new(shadow)))
}

/// The bounds of the admin and metrics listeners: a few connections each (a scraper, an
/// operator's tools), so peers on them cannot take the descriptors the proxy's clients and
/// origins need, and heads bounded as the proxy's are.
fn admin_limits(config: &Config) -> ConnectionLimits {
    ConnectionLimits {
        max_connections: crate::descriptors::CONNECTIONS_PER_ADMIN_LISTENER,
        max_request_head: config.server.max_request_head,
        h2_preface_timeout: config.server.listener.h2_idle_timeout,
        h2c: false,
        head_timeout: config.server.request_head_timeout,
        role: ListenerRole::Operators,
    }
}

/// Starts, once the server runs, the threads a running proxy needs: the epoch ticker,
/// SIGHUP handling and the file watcher.
struct ProcessThreads {
    engine: PolicyEngine,
    reloader: Arc<Reloader>,
    hangups: parking_lot::Mutex<Option<Hangups>>,
    watch: bool,
}

#[async_trait::async_trait]
impl BackgroundService for ProcessThreads {
    async fn start(&self, _shutdown: ShutdownWatch) {
        if let Err(e) = crate::log_writer::start() {
            tracing::error!("cannot start the log writer, logging synchronously: {e}");
        }
        if let Err(e) = self.engine.ensure_epoch_ticker() {
            tracing::error!("cannot start the plugin deadline ticker: {e:#}");
            crate::log_writer::flush();
            std::process::exit(1);
        }
        if let Some(hangups) = self.hangups.lock().take() {
            if let Err(e) = hangups.spawn(self.reloader.clone()) {
                tracing::error!("cannot start the SIGHUP thread: {e}");
            }
        }
        if self.watch {
            match spawn_watcher(self.reloader.clone()) {
                Ok(()) => tracing::info!("watching the config and plugin files for changes"),
                Err(e) => tracing::error!("cannot watch files for hot reload: {e:#}"),
            }
        }
    }
}

/// Fails when an address cachet is to listen on is taken (or named twice). Pingora, finding
/// one taken, retries for half a minute and then stops only the service that failed: the
/// process would run on without its proxy or admin listener, looking healthy to a
/// supervisor. Not for an upgrade, whose listeners come from the running process.
fn check_addresses_free(
    config: &Config,
    demo_origin: Option<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    let addresses = [
        ("server.listen", Some(config.server.listen)),
        ("server.tls_listen", config.server.listener.tls_listen),
        ("server.admin", config.server.admin),
        ("server.metrics", config.server.metrics),
        ("the demo origin", demo_origin),
    ];
    // Held until every address is tried, so one named twice is found too.
    let mut held = Vec::with_capacity(addresses.len());
    for (key, addr) in addresses {
        let Some(addr) = addr else { continue };
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("cannot listen on {addr} ({key})"))?;
        held.push(listener);
    }
    Ok(())
}

/// Options of `cachet serve` that Pingora acts on.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    pub daemon: bool,
    pub upgrade: bool,
    /// Also run the built-in demo origin on this address.
    pub demo_origin: Option<std::net::SocketAddr>,
}

/// Runs the proxy until it is told to stop. Never returns on success.
pub fn serve(config: Config, options: ServeOptions) -> anyhow::Result<()> {
    // First of all: from now on a SIGHUP is a reload request, never fatal.
    let hangups = Hangups::catch().context("installing the SIGHUP handler")?;
    let client_connections = crate::descriptors::raise_limit(&config);
    if !options.upgrade {
        check_addresses_free(&config, options.demo_origin)?;
    }
    crate::runtime_files::prepare(&config.server)?;
    // Before any thread starts: a fork keeps only the thread that makes it.
    let mut detached = match options.daemon {
        true => Some(crate::daemon::detach(&config.server.pid_file)?),
        false => None,
    };
    let runtime = build_runtime(&config)?;
    let state = runtime.state.clone();

    let (grace_period, runtime_shutdown) = crate::shutdown::PINGORA_GRACE_SECONDS;
    let conf = ServerConf {
        threads: config.server.threads,
        work_stealing: config.server.work_stealing,
        grace_period_seconds: Some(grace_period),
        graceful_shutdown_timeout_seconds: Some(runtime_shutdown),
        // Detached already, by `crate::daemon`.
        daemon: false,
        pid_file: config.server.pid_file.display().to_string(),
        upgrade_sock: config.server.upgrade_sock.display().to_string(),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: options.upgrade,
        daemon: false,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    // Listeners inherited in a graceful upgrade are received by a service that runs once the
    // server runs, after the daemon's command has returned: received before,
    // `cachet serve --daemon --upgrade` would wait for sockets the old process sends only
    // after the `kill -QUIT` that follows the command.
    let listeners_received = server.bootstrap_as_a_service();

    let mut app =
        pingora::proxy::http_proxy(&server.configuration, CachetProxy::new(state.clone()));
    app.server_options = Some(crate::tls::listener::server_options(
        &config.server.listener,
    ));
    app.h2_options = Some(crate::tls::listener::h2_options(&config.server.listener));
    let limits = ConnectionLimits {
        max_connections: client_connections,
        max_request_head: config.server.max_request_head,
        h2_preface_timeout: config.server.listener.h2_idle_timeout,
        h2c: config.server.listener.h2c,
        head_timeout: config.server.request_head_timeout,
        role: ListenerRole::Clients,
    };
    let mut guard = ConnectionGuard::new(
        crate::front::Front::new(
            app,
            CachetProxy::new(state.clone()),
            config.server.max_request_head,
            config.server.request_head_timeout,
        ),
        limits,
    );
    if let Some(addr) = config.server.listener.tls_listen {
        // The same app and the same connection slots: a TLS connection holds its slot from
        // the accept, through its handshake, which the guard does itself.
        let settings = crate::tls::listener::tls_settings(runtime.certificates.clone())?;
        guard = guard.with_tls(addr, settings.build(), state.drain.clone());
    }
    let mut proxy = pingora::services::listening::Service::new("cachet proxy".into(), guard);
    proxy.add_tcp(&config.server.listen.to_string());
    if let Some(addr) = config.server.listener.tls_listen {
        proxy.add_tcp(&addr.to_string());
    }
    server
        .add_service(proxy)
        .add_dependency(&listeners_received);

    server.add_service(background_service(
        "cachet upstream pools",
        crate::upstream::PoolMaintenance {
            state: state.clone(),
        },
    ));
    server.add_service(background_service(
        "cachet threads",
        ProcessThreads {
            engine: runtime.engine.clone(),
            reloader: runtime.reloader.clone(),
            hangups: parking_lot::Mutex::new(Some(hangups)),
            watch: config.plugins.watch,
        },
    ));

    if let Some(admin) = config.server.admin {
        let mut service = pingora::services::listening::Service::new(
            "cachet admin".into(),
            ConnectionGuard::new(
                OperatorApp::new(
                    AdminApp {
                        state: state.clone(),
                        reloader: runtime.reloader.clone(),
                    },
                    state.clone(),
                ),
                admin_limits(&config),
            ),
        );
        service.add_tcp(&admin.to_string());
        server
            .add_service(service)
            .add_dependency(&listeners_received);
    }

    if let Some(metrics) = config.server.metrics {
        let mut service = pingora::services::listening::Service::new(
            "cachet metrics".into(),
            ConnectionGuard::new(
                OperatorApp::new(
                    crate::admin::MetricsApp {
                        state: state.clone(),
                    },
                    state.clone(),
                ),
                admin_limits(&config),
            ),
        );
        service.add_tcp(&metrics.to_string());
        server
            .add_service(service)
            .add_dependency(&listeners_received);
    }

    if let Some(addr) = options.demo_origin {
        let mut service = pingora::services::listening::Service::new(
            "cachet demo origin".into(),
            crate::demo_origin::DemoOrigin::default(),
        );
        service.add_tcp(&addr.to_string());
        server
            .add_service(service)
            .add_dependency(&listeners_received);
    }

    announce(&config, &state, options.demo_origin);
    // Objects queued for the L2 tiers are stored before exit, within what the stop leaves.
    let storage = state.cache.storage;
    let before_exit: BeforeExit = Arc::new(move |left| storage.close_within(left));
    let signals = DrainOnSignal::new(
        state.drain.clone(),
        server.watch_execution_phase(),
        before_exit.clone(),
    );
    if let Some(detached) = &mut detached {
        detached.ready();
    }
    server.run(RunArgs {
        shutdown_signal: Box::new(signals),
    });
    // Reached when Pingora shut down without a drain (its fast shutdown).
    before_exit(state.drain.grace());
    crate::log_writer::flush();
    std::process::exit(0)
}

/// One line per listener and per tenant, so what runs is visible without `/status`.
fn announce(config: &Config, state: &ProxyState, demo_origin: Option<std::net::SocketAddr>) {
    let server = &config.server;
    tracing::info!(
        "listening on {} (proxy, {} threads{}{})",
        server.listen,
        server.threads,
        if server.work_stealing {
            ""
        } else {
            ", no work stealing"
        },
        if server.listener.h2c { ", h2c" } else { "" }
    );
    let listeners = [
        (
            server.listener.tls_listen,
            "proxy over TLS, ALPN h2 and http/1.1",
        ),
        (server.admin, "admin: /status, /metrics, /reload, /purge"),
        (server.metrics, "metrics"),
        (demo_origin, "demo origin"),
    ];
    for (addr, what) in listeners
        .into_iter()
        .filter_map(|(addr, what)| Some((addr?, what)))
    {
        tracing::info!("listening on {addr} ({what})");
    }
    for tenant in state.router.load().tenants() {
        let config = &tenant.config;
        let plugin = match tenant.policy().plugin() {
            Some(plugin) => format!(
                "plugin {} sha256 {}",
                plugin.info.path.display(),
                &plugin.info.sha256[..12]
            ),
            None => format!("policy {}", config.plugin.display()),
        };
        tracing::info!(
            "tenant {:?}: hosts {} -> {}, {plugin}",
            tenant.name(),
            config.hosts.join(" "),
            config.upstream_name
        );
    }
}
