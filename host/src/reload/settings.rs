//! Which configuration keys a reload applies live and which need a restart.
//!
//! Every `[server]`, `[cache]` and `[plugins]` key is sorted here, field by
//! field with exhaustive patterns: a new key does not compile until it is
//! sorted into one group or the other. A tenant whose settings changed is rebuilt whole on
//! reload, the others go on as they run (see `Reloader::apply_config`); their storage limits
//! are applied here.

use crate::config::{
    CacheConfig, Config, ListenerConfig, PluginsConfig, ServerConfig, TenantConfig,
};
use crate::proxy::ProxyState;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// `new` with the restart-only keys of `old`, which keep running until a
/// restart, and the names of those that differ (each named in a warning too).
pub(super) fn keep_restart_only(old: &Config, mut new: Config) -> (Config, Vec<&'static str>) {
    let mut pending = Vec::new();
    let mut keep = |name: &'static str, differs: bool| {
        if differs {
            pending.push(name);
        }
        differs
    };

    let ServerConfig {
        listen,
        threads,
        work_stealing,
        admin,
        metrics,
        pid_file,
        upgrade_sock,
        max_request_head,
        request_head_timeout,
        client_write_timeout,
        max_connections,
        forwarded_headers,
        unusual_field_names,
        admin_token: _,
        admin_token_file: _,
        access_log: _,
        shutdown_grace: _,
        listener,
    } = &old.server;
    let s = &mut new.server;
    if keep("server.listen", s.listen != *listen) {
        s.listen = *listen;
    }
    if keep("server.threads", s.threads != *threads) {
        s.threads = *threads;
    }
    if keep("server.work_stealing", s.work_stealing != *work_stealing) {
        s.work_stealing = *work_stealing;
    }
    if keep("server.admin", s.admin != *admin) {
        s.admin = *admin;
    }
    if keep("server.metrics", s.metrics != *metrics) {
        s.metrics = *metrics;
    }
    if keep("server.pid_file", s.pid_file != *pid_file) {
        s.pid_file = pid_file.clone();
    }
    if keep("server.upgrade_sock", s.upgrade_sock != *upgrade_sock) {
        s.upgrade_sock = upgrade_sock.clone();
    }
    if keep(
        "server.max_request_head",
        s.max_request_head != *max_request_head,
    ) {
        s.max_request_head = *max_request_head;
    }
    if keep(
        "server.request_head_timeout",
        s.request_head_timeout != *request_head_timeout,
    ) {
        s.request_head_timeout = *request_head_timeout;
    }
    if keep(
        "server.client_write_timeout",
        s.client_write_timeout != *client_write_timeout,
    ) {
        s.client_write_timeout = *client_write_timeout;
    }
    if keep(
        "server.max_connections",
        s.max_connections != *max_connections,
    ) {
        s.max_connections = *max_connections;
    }
    if keep(
        "server.forwarded_headers",
        s.forwarded_headers != *forwarded_headers,
    ) {
        s.forwarded_headers = *forwarded_headers;
    }
    if keep(
        "server.unusual_field_names",
        s.unusual_field_names != *unusual_field_names,
    ) {
        s.unusual_field_names = *unusual_field_names;
    }
    // Listeners and the HTTP/2 settings are fixed when the listeners are built;
    // the default certificate is reloaded like a tenant's.
    let ListenerConfig {
        tls_listen,
        h2c,
        h2_max_concurrent_streams,
        h2_max_header_list,
        h2_idle_timeout,
        default_cert: _,
    } = listener;
    let l = &mut s.listener;
    if keep("server.tls_listen", l.tls_listen != *tls_listen) {
        l.tls_listen = *tls_listen;
    }
    if keep("server.h2c", l.h2c != *h2c) {
        l.h2c = *h2c;
    }
    if keep(
        "server.h2_max_concurrent_streams",
        l.h2_max_concurrent_streams != *h2_max_concurrent_streams,
    ) {
        l.h2_max_concurrent_streams = *h2_max_concurrent_streams;
    }
    if keep(
        "server.h2_max_header_list",
        l.h2_max_header_list != *h2_max_header_list,
    ) {
        l.h2_max_header_list = *h2_max_header_list;
    }
    if keep(
        "server.h2_idle_timeout",
        l.h2_idle_timeout != *h2_idle_timeout,
    ) {
        l.h2_idle_timeout = *h2_idle_timeout;
    }

    let CacheConfig {
        lock_timeout,
        uncacheable_keys,
        disk,
        shared,
        max_bytes: _,
        max_object_bytes: _,
        lean_hits: _,
    } = &old.cache;
    // The L2 tiers are opened (and their files or connections set up) at start.
    if keep("cache.disk", new.cache.disk != *disk) {
        new.cache.disk = disk.clone();
    }
    if keep("cache.shared", new.cache.shared != *shared) {
        new.cache.shared = shared.clone();
    }
    // The cache lock's age timeout is fixed when the lock is built.
    if keep(
        "cache.lock_timeout",
        new.cache.lock_timeout != *lock_timeout,
    ) {
        new.cache.lock_timeout = *lock_timeout;
    }
    // The table of uncacheable URLs is sized when the proxy starts.
    if keep(
        "cache.uncacheable_keys",
        new.cache.uncacheable_keys != *uncacheable_keys,
    ) {
        new.cache.uncacheable_keys = *uncacheable_keys;
    }

    let PluginsConfig {
        watch,
        artifact_cache_dir,
        artifact_cache_max_bytes,
        heavy_call,
    } = &old.plugins;
    if keep("plugins.watch", new.plugins.watch != *watch) {
        new.plugins.watch = *watch;
    }
    if keep(
        "plugins.artifact_cache_dir",
        new.plugins.artifact_cache_dir != *artifact_cache_dir,
    ) {
        new.plugins.artifact_cache_dir = artifact_cache_dir.clone();
    }
    if keep(
        "plugins.artifact_cache_max_bytes",
        new.plugins.artifact_cache_max_bytes != *artifact_cache_max_bytes,
    ) {
        new.plugins.artifact_cache_max_bytes = *artifact_cache_max_bytes;
    }
    if keep("plugins.heavy_call", new.plugins.heavy_call != *heavy_call) {
        new.plugins.heavy_call = *heavy_call;
    }

    if !pending.is_empty() {
        tracing::warn!(
            keys = pending.join(", "),
            "changed keys take effect after a restart (or a graceful upgrade); the running values stay"
        );
    }
    (new, pending)
}

/// The live keys whose value changed.
pub(super) fn live_changed(old: &Config, new: &Config) -> Vec<&'static str> {
    let (o, n) = (&old.server, &new.server);
    let (oc, nc) = (&old.cache, &new.cache);
    [
        ("server.admin_token", o.admin_token != n.admin_token),
        // The same token from another file: the new file is the one watched for rotations
        // from now on (kept as unchanged, the old file stayed watched and the new one not).
        (
            "server.admin_token_file",
            o.admin_token_file != n.admin_token_file,
        ),
        ("server.access_log", o.access_log != n.access_log),
        (
            "server.shutdown_grace",
            o.shutdown_grace != n.shutdown_grace,
        ),
        (
            "server.tls_cert",
            o.listener.default_cert != n.listener.default_cert,
        ),
        ("cache.max_bytes", oc.max_bytes != nc.max_bytes),
        (
            "cache.max_object_bytes",
            oc.max_object_bytes != nc.max_object_bytes,
        ),
        ("cache.lean_hits", oc.lean_hits != nc.lean_hits),
    ]
    .into_iter()
    .filter_map(|(name, changed)| changed.then_some(name))
    .collect()
}

/// The tenants whose name serves another site in `new` than in `old`: (before, after).
pub(super) fn moved_sites<'a>(
    old: &'a Config,
    new: &'a Config,
) -> impl Iterator<Item = (&'a TenantConfig, &'a TenantConfig)> {
    old.tenants.iter().filter_map(|before| {
        let after = new.tenants.iter().find(|n| n.name == before.name)?;
        (!crate::tenant::keeps_its_site(&before.hosts, &after.hosts)).then_some((before, after))
    })
}

/// Puts the live keys of `new` into the running proxy, and every tenant's
/// storage limits (a removed tenant's limits and memory objects are dropped).
pub(super) fn apply_live(state: &ProxyState, old: &Config, new: &Config) {
    let server = &new.server;
    state
        .admin_token
        .store(server.admin_token.clone().map(Arc::new));
    state.access_log.store(server.access_log, Ordering::Relaxed);
    state
        .lean_hits
        .store(new.cache.lean_hits, Ordering::Relaxed);
    state.drain.set_grace(server.shutdown_grace);

    for warning in crate::config::warnings(new) {
        tracing::warn!("{warning}");
    }
    let storage = state.cache.storage.memory();
    storage.set_max_object_size(new.cache.max_object_bytes);
    if old.cache.max_bytes != new.cache.max_bytes {
        storage.set_global_budget(new.cache.max_bytes);
    }
    // A name kept for another site (none of its hosts kept, as when two tenants swap names)
    // keeps none of the old site's objects, in any tier: they answer for hosts it no longer
    // serves (a key without the host, as many plugins make, matches the new site's requests).
    // The tiers' floor first, then L1 (as every purge orders them): a lookup that missed L1
    // after its drop, and judged its L2 copy before the floor, promoted the old site's copy
    // back into L1.
    for (before, after) in moved_sites(old, new) {
        if let Err(e) = state.cache.storage.forget_partition(&before.name) {
            tracing::warn!(
                tenant = after.name,
                "the old site's L2 copies may still be served: {e}"
            );
        }
        let dropped = storage.drop_partition(&before.name);
        tracing::info!(
            tenant = after.name,
            objects = dropped,
            "tenant now serves other hosts: its objects dropped from memory and the L2 tiers"
        );
    }
    for tenant in &new.tenants {
        storage.set_partition_budget(&tenant.name, tenant.cache_quota);
        storage.set_partition_max_object(&tenant.name, tenant.max_object_bytes);
    }
    storage.set_tenant_count(new.tenants.len());
    crate::metrics::set_live_tenants(new.tenants.iter().map(|t| t.name.as_str()));
    for gone in old
        .tenants
        .iter()
        .filter(|t| !new.tenants.iter().any(|n| n.name == t.name))
    {
        storage.set_partition_budget(&gone.name, None);
        storage.set_partition_max_object(&gone.name, None);
        // No request reaches a removed tenant's objects; they would hold the global budget
        // (and show under no tenant in /status) until evicted. Its disk and shared copies
        // stay: those tiers evict by their own budgets, and a tenant added back finds them.
        let dropped = storage.drop_partition(&gone.name);
        if let Some(uncacheable) = state.cache.uncacheable {
            uncacheable.retire(&gone.name);
        }
        crate::metrics::forget_tenant(&gone.name);
        tracing::info!(
            tenant = gone.name,
            objects = dropped,
            "tenant removed: its objects dropped from memory"
        );
    }
}
