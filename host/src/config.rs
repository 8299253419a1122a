//! The TOML configuration: schema, defaults, and validation with errors that
//! name the file, the line and the key.

mod duration;
mod listener;
mod origin;
mod size;
mod tiers;
mod upstream;

pub use listener::{serves_no_certificate, CertPaths, ListenerConfig};
pub use origin::OriginConfig;
pub use tiers::{ClientCert, DiskTierConfig, SharedTierConfig};
pub use upstream::{Balance, PoolConfig, UpstreamTarget, UpstreamTls};

use crate::policy::PluginLimits;
use duration::DurationValue;
use serde::Deserialize;
use size::SizeValue;
use std::collections::BTreeMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// A configuration error, located in its file.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub key: Option<String>,
    pub message: String,
    /// A file the config names that is not there (yet): its arrival retries the config.
    pub missing_file: Option<PathBuf>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// This error, caused by `path` not being there (or not readable): the watcher watches
    /// it, and its arrival retries the config without a reload request.
    pub(crate) fn until_written(mut self, path: PathBuf) -> Self {
        self.missing_file = Some(path);
        self
    }
}

/// Where a key naming a file is written, so a problem found only when the file is loaded
/// (a plugin that does not compile, a certificate that does not parse) names the line too.
/// Equal to every other place: moving a line changes no setting.
#[derive(Debug, Clone, Default)]
pub struct KeyPlace {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub key: String,
}

impl KeyPlace {
    /// `problem` as a config error at this key.
    pub fn error(&self, problem: impl fmt::Display) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line: self.line,
            key: Some(self.key.clone()),
            message: problem.to_string(),
            missing_file: None,
        }
    }
}

impl PartialEq for KeyPlace {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for KeyPlace {}

impl std::hash::Hash for KeyPlace {
    fn hash<H: std::hash::Hasher>(&self, _: &mut H) {}
}

// ---- The file as written -------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    #[serde(default)]
    cache: RawCache,
    #[serde(default)]
    plugins: RawPlugins,
    #[serde(rename = "tenant", default)]
    tenants: Vec<RawTenant>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPlugins {
    watch: Option<bool>,
    artifact_cache_dir: Option<String>,
    artifact_cache_max_bytes: Option<SizeValue>,
    heavy_call: Option<Spanned<DurationValue>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Spanned<String>,
    threads: Option<Spanned<usize>>,
    work_stealing: Option<bool>,
    admin: Option<Spanned<String>>,
    metrics: Option<Spanned<String>>,
    admin_token: Option<Spanned<String>>,
    admin_token_file: Option<Spanned<String>>,
    access_log: Option<bool>,
    pid_file: Option<String>,
    upgrade_sock: Option<String>,
    max_request_head: Option<Spanned<SizeValue>>,
    request_head_timeout: Option<Spanned<DurationValue>>,
    client_write_timeout: Option<Spanned<DurationValue>>,
    max_connections: Option<Spanned<usize>>,
    #[serde(default)]
    forwarded_headers: ForwardedHeaders,
    #[serde(default)]
    unusual_field_names: UnusualFieldNames,
    shutdown_grace: Option<Spanned<DurationValue>>,
    tls_listen: Option<Spanned<String>>,
    tls_cert: Option<Spanned<String>>,
    tls_key: Option<Spanned<String>>,
    h2c: Option<bool>,
    h2_max_concurrent_streams: Option<Spanned<u32>>,
    h2_max_header_list: Option<Spanned<SizeValue>>,
    h2_idle_timeout: Option<Spanned<DurationValue>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCache {
    max_bytes: Option<Spanned<SizeValue>>,
    max_object_bytes: Option<Spanned<SizeValue>>,
    uncacheable_keys: Option<Spanned<usize>>,
    lean_hits: Option<bool>,
    lock_timeout: Option<Spanned<DurationValue>>,
    lock_timeout_ms: Option<Spanned<u64>>,
    disk: Option<tiers::RawDisk>,
    shared: Option<tiers::RawShared>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    name: Spanned<String>,
    hosts: Spanned<Vec<String>>,
    upstream: Option<Spanned<String>>,
    upstreams: Option<Spanned<Vec<Spanned<String>>>>,
    upstream_ca: Option<Spanned<String>>,
    tls_verify: Option<bool>,
    pool: Option<Spanned<upstream::RawPool>>,
    /// This tenant's certificate on the TLS listener, chosen by SNI.
    tls_cert: Option<Spanned<String>>,
    tls_key: Option<Spanned<String>>,
    /// Upstreams a 0.2.0 plugin may pick by name.
    #[serde(default)]
    backends: BTreeMap<String, Spanned<String>>,
    plugin: Spanned<String>,
    /// A second plugin that sees live traffic but decides nothing (shadow rollout).
    shadow_plugin: Option<Spanned<String>>,
    shadow_sample: Option<Spanned<f64>>,
    #[serde(default)]
    on_plugin_error: OnPluginError,
    invalidate_on_unsafe: Option<bool>,
    /// Debug mode: `Cache-Status` shows the cache key.
    #[serde(default)]
    cache_status_key: bool,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    plugin_config: BTreeMap<String, String>,
    #[serde(default)]
    origin: origin::RawOrigin,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    memory: Option<Spanned<SizeValue>>,
    hook_timeout: Option<Spanned<DurationValue>>,
    hook_timeout_ms: Option<Spanned<u64>>,
    max_key_bytes: Option<Spanned<usize>>,
    max_key_parts: Option<Spanned<usize>>,
    max_synthetic_body: Option<SizeValue>,
    instance_reuse: Option<Spanned<u32>>,
    max_instances: Option<Spanned<usize>>,
    cache_quota: Option<Spanned<SizeValue>>,
    max_object_bytes: Option<Spanned<SizeValue>>,
}

/// Most worker threads `[server] threads` may ask for.
const MAX_THREADS: usize = 1024;

// ---- The validated configuration -----------------------------------------

/// What a request gets when its tenant's plugin faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnPluginError {
    /// Proxy to the origin without caching.
    #[default]
    Bypass,
    /// Answer 502 with a `Cache-Status` detail naming the fault.
    Error,
}

/// What cachet tells the origin about the client (`[server] forwarded_headers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ForwardedHeaders {
    /// Drop what the client sent in `Forwarded` / `X-Forwarded-*` and set them
    /// from the connection: right for a proxy at the edge, where a client could
    /// otherwise claim any address.
    #[default]
    Replace,
    /// Keep what the client (a trusted proxy in front) sent and append this hop.
    Append,
    /// Forward the client's fields untouched and add none.
    Off,
}

/// What becomes of request fields whose names hold anything but letters, digits and `-`
/// (`[server] unusual_field_names`). CGI, WSGI, PHP and Rack servers read `X_Forwarded_Host`
/// as `X-Forwarded-Host` (both are `HTTP_X_FORWARDED_HOST`, RFC 3875 §4.1.18), lighttpd and
/// old Apache map every other character to `_` as well (`X.Original.URL`), so a client could
/// pass every field the proxy drops, bypasses on or varies on under another spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UnusualFieldNames {
    /// Removed before the plugin, the key or the origin sees the request (nginx's default,
    /// `ignore_invalid_headers`).
    #[default]
    Drop,
    /// Passed on like any field: only for origins that never map names to variables.
    Keep,
}

/// Largest request head Pingora itself reads (its `MAX_HEADER_SIZE`).
pub const PINGORA_MAX_HEAD: usize = 1_048_575;

/// Longest tenant name. The name is the partition of the tenant's objects in every tier and
/// in the purge marks nodes send each other: a mark naming a longer one is dropped as no
/// node's, so a longer name would let other nodes' purges of it be dropped.
pub const MAX_TENANT_NAME_BYTES: usize = 255;

/// Why an admin token could never be presented, if so: a client sends it as `Bearer <token>`
/// in one header line, trimmed, so it must be visible ASCII without spaces.
pub fn unsendable_token(token: &str) -> Option<&'static str> {
    if token.is_empty() {
        return Some("must not be empty or blank");
    }
    match token.bytes().all(|b| b.is_ascii_graphic()) {
        true => None,
        false => {
            Some("must be visible ASCII without spaces or line breaks (it is sent in a header)")
        }
    }
}

/// Settings that are valid but probably not what was meant: `validate` prints them, and
/// `serve` and every reload log them.
pub fn warnings(config: &Config) -> Vec<String> {
    let quotas = config.tenants.iter().filter_map(|t| {
        let quota = t.cache_quota?;
        (quota > config.cache.max_bytes).then(|| {
            format!(
                "tenant {:?}: tenant.limits.cache_quota ({quota} bytes) is above cache.max_bytes ({} bytes): it never limits the tenant",
                t.name, config.cache.max_bytes
            )
        })
    });
    quotas.chain(short_admin_token(&config.server)).collect()
}

/// Fewer characters than this make an admin token that trying can find: the admin API and
/// PURGE answer every attempt, with no lockout.
const SHORT_ADMIN_TOKEN: usize = 16;

/// A warning for an admin token short enough to guess by trying.
fn short_admin_token(server: &ServerConfig) -> Option<String> {
    let length = server.admin_token.as_deref()?.chars().count();
    let key = match server.admin_token_file {
        Some(_) => "server.admin_token_file",
        None => "server.admin_token",
    };
    (length < SHORT_ADMIN_TOKEN).then(|| {
        format!(
            "{key}: the admin token has {length} characters: one that short can be found by trying (the admin API and PURGE answer every attempt); use {SHORT_ADMIN_TOKEN} or more random ones, such as `openssl rand -hex 32` prints"
        )
    })
}

/// Most URLs remembered as not storable, per tenant: the record is a table each tenant fills.
const MAX_UNCACHEABLE_KEYS: usize = 1 << 20;

/// Two listeners on one address (or one on all interfaces and one on a single interface,
/// same port): `serve` could not bind the second. Port 0 (the kernel picks) never clashes.
fn listener_named_twice(server: &ServerConfig) -> Option<(&'static str, &'static str, SocketAddr)> {
    let listeners = [
        ("server.listen", Some(server.listen)),
        ("server.tls_listen", server.listener.tls_listen),
        ("server.admin", server.admin),
        ("server.metrics", server.metrics),
    ];
    let clash = |a: SocketAddr, b: SocketAddr| {
        a.port() == b.port()
            && a.port() != 0
            && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
    };
    for (i, (first, a)) in listeners.iter().enumerate() {
        for (second, b) in &listeners[i + 1..] {
            if let (Some(a), Some(b)) = (a, b) {
                if clash(*a, *b) {
                    return Some((first, second, *b));
                }
            }
        }
    }
    None
}

/// Whether the admin listener is off loopback with no token: anyone who reaches it could
/// reload, purge and promote. Checked on every config, and on a reload against the address
/// the listener really keeps until a restart.
pub fn admin_exposed_without_token(server: &ServerConfig) -> bool {
    server.admin.is_some_and(|a| !a.ip().is_loopback()) && server.admin_token.is_none()
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from (relative paths in it resolve against its folder).
    pub source: PathBuf,
    pub server: ServerConfig,
    pub cache: CacheConfig,
    pub plugins: PluginsConfig,
    pub tenants: Vec<TenantConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginsConfig {
    /// Watch the config and plugin files and apply changes live.
    pub watch: bool,
    /// Where compiled plugins are kept between runs; None disables the cache.
    pub artifact_cache_dir: Option<PathBuf>,
    /// Byte budget of that folder (each plugin also keeps only its latest few versions).
    pub artifact_cache_max_bytes: u64,
    /// CPU time per `on-request` call, on average, from which a plugin is heavy: when tenants
    /// share the proxy, heavy plugins' calls share all workers but one (`policy::lanes`).
    pub heavy_call: Duration,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub threads: usize,
    /// Pingora's work-stealing runtime (true), or one single-threaded runtime per worker
    /// thread, each connection staying on the thread that accepted it (false).
    pub work_stealing: bool,
    pub admin: Option<SocketAddr>,
    /// Prometheus `GET /metrics` listener.
    pub metrics: Option<SocketAddr>,
    /// Bearer token the admin API and PURGE require (None: no token).
    pub admin_token: Option<String>,
    /// The file `admin_token` was read from: watched like the config, so a rotated token
    /// takes effect without a reload request.
    pub admin_token_file: Option<PathBuf>,
    /// One log line per request (target `cachet::access`).
    pub access_log: bool,
    pub pid_file: PathBuf,
    pub upgrade_sock: PathBuf,
    /// Bytes a client may send as one request head (431 beyond).
    pub max_request_head: usize,
    /// How long an HTTP/1.x request head may take once its first bytes came (408 beyond).
    pub request_head_timeout: Duration,
    /// How long a response may wait for the client to take its next bytes (the connection
    /// is closed beyond): a client that stops reading does not keep its slot.
    pub client_write_timeout: Duration,
    /// Client connections open at once (503 beyond).
    pub max_connections: usize,
    pub forwarded_headers: ForwardedHeaders,
    pub unusual_field_names: UnusualFieldNames,
    /// How long SIGTERM/SIGINT wait for requests in flight before exiting.
    pub shutdown_grace: Duration,
    /// TLS termination and HTTP/2.
    pub listener: ListenerConfig,
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub max_bytes: usize,
    pub max_object_bytes: usize,
    pub lock_timeout: Duration,
    /// How many URLs whose last response was not storable are remembered, so their requests
    /// skip the cache lock (0: none).
    pub uncacheable_keys: usize,
    /// Fresh plain GET hits skip pingora-cache's state machine (see `proxy/lean_hit.rs`).
    pub lean_hits: bool,
    /// `[cache.disk]`: the persistent L2 tier.
    pub disk: Option<DiskTierConfig>,
    /// `[cache.shared]`: the L2 tier shared with other nodes.
    pub shared: Option<SharedTierConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TenantConfig {
    pub name: String,
    pub hosts: Vec<String>,
    /// The first address of the first upstream.
    pub upstream: SocketAddr,
    /// The upstream as written; a pool's, comma-separated.
    pub upstream_name: String,
    /// Every upstream (one unless `upstreams` lists several).
    pub upstreams: Vec<UpstreamTarget>,
    /// Set when `upstreams = [...]`: balanced, health-checked, re-resolved.
    pub pool: Option<PoolConfig>,
    pub upstream_tls: UpstreamTls,
    /// This tenant's certificate on the TLS listener (SNI matching its hosts).
    pub tls_cert: Option<CertPaths>,
    /// `[tenant.backends]`: upstreams a plugin picks by name (sorted by name).
    pub backends: Vec<(String, UpstreamTarget)>,
    /// The plugin file (for a builtin policy, its name as written).
    pub plugin: PathBuf,
    /// Where `plugin` is written.
    pub plugin_at: KeyPlace,
    /// Set when `plugin = "builtin:NAME"`.
    pub builtin: Option<crate::policy::BuiltinPolicy>,
    /// `shadow_plugin` / `shadow_sample`: a candidate plugin run beside the live one.
    pub shadow: Option<ShadowConfig>,
    pub on_plugin_error: OnPluginError,
    /// A successful unsafe request (POST, PUT, ...) removes what is stored for its URL.
    pub invalidate_on_unsafe: bool,
    /// Debug mode: `Cache-Status` carries `key="..."` with the cache key.
    pub cache_status_key: bool,
    pub limits: PluginLimits,
    /// This tenant's own byte budget inside the global cache budget.
    pub cache_quota: Option<usize>,
    /// This tenant's own (smaller) maximum object size.
    pub max_object_bytes: Option<usize>,
    pub plugin_config: BTreeMap<String, String>,
    /// Timeouts and retries towards the origin.
    pub origin: OriginConfig,
}

/// Long enough for ordinary responses to finish, short enough for container
/// runtimes that kill after 10 s.
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// A request head may take this long once its first bytes came (a slow client cannot hold
/// a connection slot by trickling one); `MAX_CLIENT_TIMEOUT` at most.
const DEFAULT_HEAD_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_CLIENT_TIMEOUT: Duration = Duration::from_secs(3600);
/// `[server] client_write_timeout` by default (nginx's `send_timeout`); at most an hour.
const DEFAULT_CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// A shadow plugin: run on a sample of live requests, compared, never obeyed.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowConfig {
    pub plugin: PathBuf,
    /// Where `shadow_plugin` is written.
    pub plugin_at: KeyPlace,
    /// Share of requests the shadow sees, 0.0 to 1.0.
    pub sample: f64,
}

/// Reads and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text =
        crate::file_read::read_text(path, crate::file_read::TEXT_MAX).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: None,
            key: None,
            message: format!("cannot read: {e}"),
            missing_file: None,
        })?;
    parse(path, &text)
}

/// Validates configuration text as if read from `path`.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let located = Locator { path, text };
    let raw: RawConfig = toml::from_str(text).map_err(|e| located.toml_error(&e))?;
    let base = path.parent().unwrap_or(Path::new("."));

    let max_request_head = match &raw.server.max_request_head {
        Some(b) if !(1024..=PINGORA_MAX_HEAD as u64).contains(&b.get_ref().as_u64()) => {
            return Err(located.at(
                b.span(),
                "server.max_request_head",
                "must be between 1KiB and 1MiB - 1 byte (Pingora's own limit)",
            ))
        }
        Some(b) => b.get_ref().as_u64() as usize,
        None => 64 << 10,
    };
    let server = ServerConfig {
        listen: located.socket_addr("server.listen", &raw.server.listen)?,
        threads: match located.positive(
            &raw.server.threads,
            "server.threads",
            std::thread::available_parallelism().map_or(1, |n| n.get()),
        )? {
            // Each thread is a runtime with its own stack: a typo of 100000 would not start.
            n if n > MAX_THREADS => {
                let span = raw
                    .server
                    .threads
                    .as_ref()
                    .map(|t| t.span())
                    .unwrap_or_default();
                return Err(located.at(
                    span,
                    "server.threads",
                    format!("must be at most {MAX_THREADS}"),
                ));
            }
            n => n,
        },
        work_stealing: raw.server.work_stealing.unwrap_or(true),
        admin: match &raw.server.admin {
            Some(a) => Some(located.socket_addr("server.admin", a)?),
            None => None,
        },
        metrics: match &raw.server.metrics {
            Some(a) => Some(located.socket_addr("server.metrics", a)?),
            None => None,
        },
        admin_token: match (&raw.server.admin_token, &raw.server.admin_token_file) {
            (Some(_), Some(f)) => {
                return Err(located.at(
                    f.span(),
                    "server.admin_token_file",
                    "set admin_token or admin_token_file, not both",
                ))
            }
            (Some(token), None) => Some(token.get_ref().clone()),
            (None, Some(file)) => {
                let path = base.join(file.get_ref());
                let token = crate::file_read::read_text(&path, crate::file_read::TEXT_MAX)
                    .map_err(|e| {
                        located
                            .at(
                                file.span(),
                                "server.admin_token_file",
                                format!("cannot read {}: {e}", path.display()),
                            )
                            .until_written(path.clone())
                    })?;
                Some(token.trim().to_owned())
            }
            (None, None) => None,
        },
        admin_token_file: raw
            .server
            .admin_token_file
            .as_ref()
            .map(|file| base.join(file.get_ref())),
        access_log: raw.server.access_log.unwrap_or(true),
        pid_file: raw.server.pid_file.map_or_else(
            || crate::runtime_files::default_folder().join("cachet.pid"),
            |p| base.join(p),
        ),
        upgrade_sock: raw.server.upgrade_sock.map_or_else(
            || crate::runtime_files::default_folder().join("cachet_upgrade.sock"),
            |p| base.join(p),
        ),
        max_request_head,
        request_head_timeout: located.client_timeout(
            "server.request_head_timeout",
            &raw.server.request_head_timeout,
            DEFAULT_HEAD_TIMEOUT,
        )?,
        client_write_timeout: located.client_timeout(
            "server.client_write_timeout",
            &raw.server.client_write_timeout,
            DEFAULT_CLIENT_WRITE_TIMEOUT,
        )?,
        max_connections: located.positive(
            &raw.server.max_connections,
            "server.max_connections",
            4096,
        )?,
        forwarded_headers: raw.server.forwarded_headers,
        unusual_field_names: raw.server.unusual_field_names,
        shutdown_grace: match &raw.server.shutdown_grace {
            Some(v) => match located.duration("server.shutdown_grace", v)? {
                d if d > crate::shutdown::MAX_GRACE => {
                    return Err(located.at(v.span(), "server.shutdown_grace", "must be at most 1h"))
                }
                d => d,
            },
            None => DEFAULT_SHUTDOWN_GRACE,
        },
        listener: located.listener(
            base,
            listener::RawListener {
                tls_listen: &raw.server.tls_listen,
                tls_cert: &raw.server.tls_cert,
                tls_key: &raw.server.tls_key,
                h2c: raw.server.h2c,
                h2_max_concurrent_streams: &raw.server.h2_max_concurrent_streams,
                h2_max_header_list: &raw.server.h2_max_header_list,
                h2_idle_timeout: &raw.server.h2_idle_timeout,
            },
            max_request_head,
        )?,
    };
    // A token no client can send (blank, spaces, a line break: header values are trimmed
    // and end at a line) would lock everyone out, and a line break would print it in the
    // CLI's error: refused like none.
    if let Some(reason) = server.admin_token.as_deref().and_then(unsendable_token) {
        let (key, span) = match (&raw.server.admin_token_file, &raw.server.admin_token) {
            (Some(file), _) => ("server.admin_token_file", file.span()),
            (None, Some(token)) => ("server.admin_token", token.span()),
            (None, None) => ("server.admin_token", 0..0),
        };
        return Err(located.at(span, key, reason));
    }
    if let Some((first, second, addr)) = listener_named_twice(&server) {
        let written = match second {
            "server.listen" => Some(&raw.server.listen),
            "server.tls_listen" => raw.server.tls_listen.as_ref(),
            "server.admin" => raw.server.admin.as_ref(),
            _ => raw.server.metrics.as_ref(),
        };
        let message = format!("{addr} is also {first}: each listener needs its own address");
        return Err(match written {
            Some(value) => located.at(value.span(), second, message),
            None => ConfigError {
                file: path.to_path_buf(),
                line: None,
                key: Some(second.into()),
                message,
                missing_file: None,
            },
        });
    }
    if admin_exposed_without_token(&server) {
        let line = raw
            .server
            .admin
            .as_ref()
            .map(|a| located.line_of(a.span().start));
        return Err(ConfigError {
            file: path.to_path_buf(),
            line,
            key: Some("server.admin".into()),
            message: "an admin listener off loopback needs server.admin_token".into(),
            missing_file: None,
        });
    }

    let max_bytes = raw
        .cache
        .max_bytes
        .as_ref()
        .map_or(256 << 20, |b| b.get_ref().as_u64() as usize);
    let max_object_bytes = match &raw.cache.max_object_bytes {
        Some(b) if b.get_ref().as_u64() as usize > max_bytes => {
            return Err(located.at(
                b.span(),
                "cache.max_object_bytes",
                "must not exceed cache.max_bytes",
            ))
        }
        Some(b) => b.get_ref().as_u64() as usize,
        None => (max_bytes / 8).clamp(1, 64 << 20),
    };
    if let Some(b) = &raw.cache.max_bytes {
        if b.get_ref().as_u64() < 1024 {
            return Err(located.at(b.span(), "cache.max_bytes", "must be at least 1KiB"));
        }
    }
    let cache = CacheConfig {
        max_bytes,
        max_object_bytes,
        uncacheable_keys: match &raw.cache.uncacheable_keys {
            Some(n) if *n.get_ref() > MAX_UNCACHEABLE_KEYS => {
                return Err(located.at(
                    n.span(),
                    "cache.uncacheable_keys",
                    format!("must be at most {MAX_UNCACHEABLE_KEYS} (per tenant)"),
                ))
            }
            Some(n) => *n.get_ref(),
            None => 16_384,
        },
        lean_hits: raw.cache.lean_hits.unwrap_or(true),
        lock_timeout: match located.duration_or_ms(
            "cache.lock_timeout",
            &raw.cache.lock_timeout,
            &raw.cache.lock_timeout_ms,
        )? {
            // At 0 a miss would wait for no fill: every concurrent miss goes to the origin.
            Some((d, span)) if d < Duration::from_millis(1) => {
                let key = match raw.cache.lock_timeout_ms {
                    Some(_) => "cache.lock_timeout_ms",
                    None => "cache.lock_timeout",
                };
                return Err(located.at(span, key, "must be at least 1ms"));
            }
            Some((d, _)) => d,
            None => Duration::from_secs(5),
        },
        disk: located.disk_tier(base, raw.cache.disk)?,
        shared: located.shared_tier(base, raw.cache.shared)?,
    };

    if raw.tenants.is_empty() {
        return Err(ConfigError {
            file: path.to_path_buf(),
            line: None,
            key: Some("tenant".into()),
            message: "at least one [[tenant]] is required".into(),
            missing_file: None,
        });
    }
    let mut tenants: Vec<TenantConfig> = Vec::with_capacity(raw.tenants.len());
    for t in raw.tenants {
        tenants.push(located.tenant(base, t, &tenants, cache.max_object_bytes)?);
    }
    let tls_listen_line = raw
        .server
        .tls_listen
        .as_ref()
        .map(|a| located.line_of(a.span().start));
    listener::check_tls_pairing(path, &server.listener, tls_listen_line, &tenants)?;
    let plugins = PluginsConfig {
        watch: raw.plugins.watch.unwrap_or(true),
        artifact_cache_dir: match raw.plugins.artifact_cache_dir.as_deref() {
            Some("") | Some("off") => None,
            Some(dir) => Some(base.join(dir)),
            None => crate::policy::artifact_cache::default_dir(),
        },
        artifact_cache_max_bytes: raw
            .plugins
            .artifact_cache_max_bytes
            .map_or(crate::policy::artifact_cache::DEFAULT_MAX_BYTES, |b| {
                b.as_u64()
            }),
        heavy_call: match &raw.plugins.heavy_call {
            Some(v) => match located.duration("plugins.heavy_call", v)? {
                d if d.is_zero() || d > crate::policy::lanes::MAX_HEAVY_CALL => {
                    return Err(located.at(
                        v.span(),
                        "plugins.heavy_call",
                        "must be more than 0 and at most 1s",
                    ))
                }
                d => d,
            },
            None => crate::policy::lanes::HEAVY_CALL,
        },
    };
    Ok(Config {
        source: path.to_path_buf(),
        server,
        cache,
        plugins,
        tenants,
    })
}

/// Turns byte spans into file/line errors.
struct Locator<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Locator<'_> {
    fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    /// Where the value at `span` is written, as `key`.
    fn place(&self, span: std::ops::Range<usize>, key: &str) -> KeyPlace {
        KeyPlace {
            file: self.path.to_path_buf(),
            line: Some(self.line_of(span.start)),
            key: key.to_owned(),
        }
    }

    fn at(
        &self,
        span: std::ops::Range<usize>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.path.to_path_buf(),
            line: Some(self.line_of(span.start)),
            key: Some(key.to_owned()),
            message: message.into(),
            missing_file: None,
        }
    }

    /// A TOML syntax or type error: the key is read from the offending line.
    fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let line = e.span().map(|s| self.line_of(s.start));
        let text = line.and_then(|n| self.text.lines().nth(n - 1));
        let key = line.zip(text).and_then(|(n, text)| {
            let (key, _) = text.split_once('=')?;
            // `"admin_token" = …` names the key `admin_token`.
            let key = key.trim().trim_matches(|c| c == '"' || c == '\'');
            // Named in full, as the other errors name keys: `cache.max_bytes`, not `max_bytes`.
            Some(match self.table_above(n) {
                Some(table) => format!("{table}.{key}"),
                None => key.to_owned(),
            })
        });
        let mut message = e.message().trim().to_owned();
        // A table without a field it needs is reported at the table's header, where no key
        // can be read: the key is the field in that table, and the name serde quotes is a
        // key, not a value to keep out.
        if let Some(field) = missing_field(&message) {
            let table = line
                .filter(|_| text.is_some_and(|t| t.trim_start().starts_with('[')))
                .and_then(|n| self.table_above(n + 1));
            let key = match table {
                Some(table) => format!("{table}.{field}"),
                None => field.to_owned(),
            };
            return ConfigError {
                file: self.path.to_path_buf(),
                line,
                key: Some(key),
                message,
                missing_file: None,
            };
        }
        // serde quotes the value it refused (`invalid type: integer `8412…``): for a secret
        // that is the secret, on its way to the log, `/status` and `cachet status`. The key
        // read from the line is a guess: an inline table (`server = { admin_token = … }`) or
        // a value over several lines hides which key it is, so any line that may hold a
        // secret, or whose key is unknown, loses its quoted values too.
        let may_hold_a_secret = match (key.as_deref(), text) {
            (Some(key), Some(text)) => holds_a_secret(key) || mentions_a_secret(text),
            _ => true,
        };
        if may_hold_a_secret {
            message = without_quoted_values(&message);
        }
        ConfigError {
            file: self.path.to_path_buf(),
            line,
            key,
            message,
            missing_file: None,
        }
    }

    /// The table (`cache`, `tenant.limits`) whose header is the last one before line `n`.
    fn table_above(&self, n: usize) -> Option<String> {
        self.text
            .lines()
            .take(n - 1)
            .filter_map(|line| {
                let header = line.trim().strip_prefix('[')?;
                let header = header.strip_prefix('[').unwrap_or(header);
                let name = header.split(']').next()?.trim();
                Some(name.replace(' ', ""))
            })
            .last()
    }

    /// A count that must be at least 1, or `default` when absent.
    fn positive<T>(
        &self,
        value: &Option<Spanned<T>>,
        key: &str,
        default: T,
    ) -> Result<T, ConfigError>
    where
        T: Copy + PartialEq + From<u8>,
    {
        match value {
            Some(v) if *v.get_ref() == T::from(0) => {
                Err(self.at(v.span(), key, "must be at least 1"))
            }
            Some(v) => Ok(*v.get_ref()),
            None => Ok(default),
        }
    }

    fn duration(&self, key: &str, value: &Spanned<DurationValue>) -> Result<Duration, ConfigError> {
        value
            .get_ref()
            .to_duration()
            .map_err(|e| self.at(value.span(), key, e))
    }

    /// A wait on a client (`default` when unset): more than 0, at most an hour.
    fn client_timeout(
        &self,
        key: &str,
        value: &Option<Spanned<DurationValue>>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let Some(value) = value else {
            return Ok(default);
        };
        match self.duration(key, value)? {
            d if d.is_zero() || d > MAX_CLIENT_TIMEOUT => {
                Err(self.at(value.span(), key, "must be more than 0 and at most 1h"))
            }
            d => Ok(d),
        }
    }

    /// A time written as `KEY = "10s"` or, the older form, `KEY_ms = 10000`
    /// (one of the two, not both).
    fn duration_or_ms(
        &self,
        key: &str,
        text: &Option<Spanned<DurationValue>>,
        ms: &Option<Spanned<u64>>,
    ) -> Result<Option<(Duration, std::ops::Range<usize>)>, ConfigError> {
        match (text, ms) {
            (Some(_), Some(ms)) => Err(self.at(
                ms.span(),
                &format!("{key}_ms"),
                format!("set {key} or {key}_ms, not both"),
            )),
            (Some(text), None) => Ok(Some((self.duration(key, text)?, text.span()))),
            (None, Some(ms)) if *ms.get_ref() > MAX_MS => Err(self.at(
                ms.span(),
                &format!("{key}_ms"),
                format!("{} is longer than the maximum of 7 days", ms.get_ref()),
            )),
            (None, Some(ms)) => Ok(Some((Duration::from_millis(*ms.get_ref()), ms.span()))),
            (None, None) => Ok(None),
        }
    }

    fn socket_addr(&self, key: &str, value: &Spanned<String>) -> Result<SocketAddr, ConfigError> {
        let text = value.get_ref();
        text.to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| {
                self.at(
                    value.span(),
                    key,
                    format!("{text:?} is not a host:port address"),
                )
            })
    }

    /// `shadow_plugin` must name a component file (a builtin has nothing to roll out);
    /// `shadow_sample` is a share and needs a shadow to apply to.
    fn shadow(
        &self,
        base: &Path,
        plugin: &Option<Spanned<String>>,
        sample: &Option<Spanned<f64>>,
    ) -> Result<Option<ShadowConfig>, ConfigError> {
        let share = match sample {
            Some(s) if !(0.0..=1.0).contains(s.get_ref()) => {
                return Err(self.at(
                    s.span(),
                    "tenant.shadow_sample",
                    "must be between 0.0 and 1.0",
                ))
            }
            Some(s) => *s.get_ref(),
            None => 1.0,
        };
        let Some(plugin) = plugin else {
            return match sample {
                Some(s) => Err(self.at(
                    s.span(),
                    "tenant.shadow_sample",
                    "needs shadow_plugin in the same tenant",
                )),
                None => Ok(None),
            };
        };
        if plugin.get_ref().starts_with("builtin:") {
            return Err(self.at(
                plugin.span(),
                "tenant.shadow_plugin",
                "must be a plugin file (.wasm), not a builtin",
            ));
        }
        let path = base.join(plugin.get_ref());
        if !path.is_file() {
            let missing = format!("no plugin file at {}", path.display());
            return Err(self
                .at(plugin.span(), "tenant.shadow_plugin", missing)
                .until_written(path));
        }
        Ok(Some(ShadowConfig {
            plugin: path,
            plugin_at: self.place(plugin.span(), "tenant.shadow_plugin"),
            sample: share,
        }))
    }

    fn tenant(
        &self,
        base: &Path,
        t: RawTenant,
        earlier: &[TenantConfig],
        cache_max_object_bytes: usize,
    ) -> Result<TenantConfig, ConfigError> {
        let name = t.name.get_ref().trim().to_owned();
        let valid_name = !name.is_empty()
            && name.len() <= MAX_TENANT_NAME_BYTES
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
        if !valid_name {
            return Err(self.at(
                t.name.span(),
                "tenant.name",
                "must be 1-255 bytes of letters, digits, '-', '_' or '.'",
            ));
        }
        if earlier.iter().any(|e| e.name == name) {
            return Err(self.at(
                t.name.span(),
                "tenant.name",
                format!("duplicate tenant {name:?}"),
            ));
        }
        let hosts: Vec<String> = t
            .hosts
            .get_ref()
            .iter()
            .map(|h| {
                let host = without_final_dot(h.trim()).to_ascii_lowercase();
                crate::tenant::canonical_host(&host).into_owned()
            })
            .collect();
        if hosts.is_empty() || hosts.iter().any(String::is_empty) {
            return Err(self.at(
                t.hosts.span(),
                "tenant.hosts",
                "must list at least one non-empty host (\"*\" matches any)",
            ));
        }
        if let Some(bad) = hosts.iter().find(|h| !crate::tenant::is_host_pattern(h)) {
            return Err(self.at(
                t.hosts.span(),
                "tenant.hosts",
                format!(
                    "{bad:?} is not a host name (without a port), \"*.\" followed by one, or \"*\""
                ),
            ));
        }
        for host in &hosts {
            if let Some(other) = earlier.iter().find(|e| e.hosts.contains(host)) {
                return Err(self.at(
                    t.hosts.span(),
                    "tenant.hosts",
                    format!("host {host:?} already belongs to tenant {:?}", other.name),
                ));
            }
        }
        let upstreams = self.upstreams(
            base,
            upstream::RawUpstream {
                tenant_name: t.name.span(),
                upstream: &t.upstream,
                upstreams: &t.upstreams,
                upstream_ca: &t.upstream_ca,
                tls_verify: t.tls_verify,
                pool: &t.pool,
            },
        )?;
        let builtin = match crate::policy::BuiltinPolicy::from_config(t.plugin.get_ref()) {
            Some(Ok(builtin)) => Some(builtin),
            Some(Err(e)) => return Err(self.at(t.plugin.span(), "tenant.plugin", e)),
            None => None,
        };
        let plugin = match builtin {
            Some(b) => PathBuf::from(b.name()),
            None => base.join(t.plugin.get_ref()),
        };
        if builtin.is_none() && !plugin.is_file() {
            let missing = format!("no plugin file at {}", plugin.display());
            return Err(self
                .at(t.plugin.span(), "tenant.plugin", missing)
                .until_written(plugin));
        }
        let shadow = self.shadow(base, &t.shadow_plugin, &t.shadow_sample)?;
        let defaults = PluginLimits::default();
        let limits = PluginLimits {
            memory_bytes: match &t.limits.memory {
                Some(m) if m.get_ref().as_u64() as usize > crate::policy::MAX_GUEST_MEMORY => {
                    return Err(self.at(m.span(), "tenant.limits.memory", "must not exceed 256MiB"))
                }
                Some(m) => m.get_ref().as_u64() as usize,
                None => defaults.memory_bytes,
            },
            hook_timeout: match self.duration_or_ms(
                "tenant.limits.hook_timeout",
                &t.limits.hook_timeout,
                &t.limits.hook_timeout_ms,
            )? {
                Some((d, span)) if d < Duration::from_millis(1) => {
                    // Named as written: the old integer key, or the duration.
                    let key = match t.limits.hook_timeout_ms {
                        Some(_) => "tenant.limits.hook_timeout_ms",
                        None => "tenant.limits.hook_timeout",
                    };
                    return Err(self.at(span, key, "must be at least 1ms"));
                }
                Some((d, _)) => d,
                None => defaults.hook_timeout,
            },
            // A key needs a part and a byte: at 0 every request would fault.
            max_key_bytes: self.positive(
                &t.limits.max_key_bytes,
                "tenant.limits.max_key_bytes",
                defaults.max_key_bytes,
            )?,
            max_key_parts: self.positive(
                &t.limits.max_key_parts,
                "tenant.limits.max_key_parts",
                defaults.max_key_parts,
            )?,
            max_synthetic_body_bytes: t
                .limits
                .max_synthetic_body
                .map_or(defaults.max_synthetic_body_bytes, |b| b.as_u64() as usize),
            instance_reuse: self.positive(
                &t.limits.instance_reuse,
                "tenant.limits.instance_reuse",
                defaults.instance_reuse,
            )?,
            max_instances: self.positive(
                &t.limits.max_instances,
                "tenant.limits.max_instances",
                defaults.max_instances,
            )?,
        };
        let cache_quota = match &t.limits.cache_quota {
            Some(q) if q.get_ref().as_u64() < 1024 => {
                return Err(self.at(
                    q.span(),
                    "tenant.limits.cache_quota",
                    "must be at least 1KiB",
                ))
            }
            Some(q) => Some(q.get_ref().as_u64() as usize),
            None => None,
        };
        let max_object_bytes = match &t.limits.max_object_bytes {
            Some(b) if b.get_ref().as_u64() > cache_max_object_bytes as u64 => {
                return Err(self.at(
                    b.span(),
                    "tenant.limits.max_object_bytes",
                    format!(
                        "must not exceed cache.max_object_bytes ({cache_max_object_bytes} bytes)"
                    ),
                ))
            }
            Some(b) => Some(b.get_ref().as_u64() as usize),
            None => None,
        };
        Ok(TenantConfig {
            name,
            hosts,
            upstream: upstreams.targets[0].addrs[0],
            upstream_name: upstreams
                .targets
                .iter()
                .map(|t| t.written.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            upstreams: upstreams.targets,
            pool: upstreams.pool,
            upstream_tls: upstreams.tls,
            tls_cert: self.cert_paths(base, "tenant", &t.tls_cert, &t.tls_key)?,
            backends: self.backends(&t.backends)?,
            plugin,
            plugin_at: self.place(t.plugin.span(), "tenant.plugin"),
            builtin,
            shadow,
            on_plugin_error: t.on_plugin_error,
            invalidate_on_unsafe: t.invalidate_on_unsafe.unwrap_or(true),
            cache_status_key: t.cache_status_key,
            limits,
            cache_quota,
            max_object_bytes,
            plugin_config: t.plugin_config,
            origin: self.origin(&t.origin)?,
        })
    }
}

/// The longest `_ms` duration, as the text form's: 7 days.
const MAX_MS: u64 = 7 * 24 * 3600 * 1000;

/// A fully qualified name's one final dot names the same host (`shop.test.`). Only one, and
/// not the dot of `*.`: `"*."` and `"shop.test.."` stay as written and are refused, where
/// stripping every dot turned `"*."` into the catch-all `"*"`.
fn without_final_dot(host: &str) -> &str {
    match host.strip_suffix('.') {
        Some(name) if name != "*" && !name.ends_with('.') => name,
        _ => host,
    }
}

/// Keys whose values are secrets, kept out of error messages.
fn holds_a_secret(key: &str) -> bool {
    matches!(
        key,
        "server.admin_token" | "cache.shared.password" | "cache.shared.url"
    )
}

/// Whether a config line may hold a secret under another key than the one read from it (an
/// inline table: `server = { admin_token = … }`, `shared = { password = … }`).
fn mentions_a_secret(line: &str) -> bool {
    line.contains('{')
        || ["admin_token", "password", "url"]
            .iter()
            .any(|name| line.contains(name))
}

/// The field serde says a table lacks (`missing field `hosts``).
fn missing_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("missing field `")?;
    let (field, after) = rest.split_once('`')?;
    after.is_empty().then_some(field)
}

/// `message` with every `quoted` value serde put in it left out.
fn without_quoted_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for (i, part) in message.split('`').enumerate() {
        // Odd parts lie between a pair of backquotes.
        if i % 2 == 0 {
            out.push_str(part);
        }
    }
    out.replace("  ", " ").replace(" ,", ",")
}
