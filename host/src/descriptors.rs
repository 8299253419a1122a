//! The process's file-descriptor limit, raised at start to what the config needs.
//!
//! Every client connection and every origin connection is a descriptor. Service managers
//! commonly start a process with a soft limit of 1024 (systemd's default), well under the
//! default `max_connections` of 4096: past it `accept` fails and Pingora pauses its accept
//! loop, so clients hang at connect while the proxy looks idle. As nginx
//! (`worker_rlimit_nofile`), HAProxy and Go's runtime do, cachet raises its soft limit to the
//! hard limit the administrator allows, and warns when even that is short.

use crate::config::Config;

/// Descriptors besides connections and the disk tier's files: listeners, the log, plugin and
/// config files, the reload watcher, Redis, the runtime's own.
const BESIDES_CONNECTIONS: u64 = 256;

/// Connections the admin listener, and the metrics listener, each take at most.
pub const CONNECTIONS_PER_ADMIN_LISTENER: usize = 64;

/// What a full load of this config holds open at once: every client connection, every
/// tenant's origin connections in use, the disk tier's files, the rest.
pub fn needed(config: &Config) -> u64 {
    let origins: u64 = config
        .tenants
        .iter()
        .map(|t| t.origin.max_connections as u64)
        .sum();
    config.server.max_connections as u64
        + origins
        + operator_connections(config)
        + disk_tier(config)
        + BESIDES_CONNECTIONS
}

fn disk_tier(config: &Config) -> u64 {
    let disk = config.cache.disk.as_ref();
    disk.map_or(0, crate::storage::tiers::disk_tier_descriptors)
}

/// What the admin and metrics listeners may hold, each at its own cap.
fn operator_connections(config: &Config) -> u64 {
    [config.server.admin, config.server.metrics]
        .iter()
        .flatten()
        .count() as u64
        * CONNECTIONS_PER_ADMIN_LISTENER as u64
}

/// Raises the soft limit to the hard one, and returns how many client connections to
/// accept at most: `server.max_connections`, or fewer when the limit cannot hold them with
/// an origin connection each (half the descriptors beyond [`BESIDES_CONNECTIONS`] and the
/// admin and metrics listeners' go to clients). Past a client cap, connections get cachet's 503; past the descriptor limit they
/// would get nothing (`accept` fails, and Pingora pauses accepting). A warning when the
/// limit is under [`needed`].
pub fn raise_limit(config: &Config) -> usize {
    let configured = config.server.max_connections;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return configured;
    }
    // An unlimited hard limit still stops at the kernel's per-process ceiling.
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<libc::rlim_t>().ok())
        .unwrap_or(libc::rlim_t::MAX);
    let target = limit.rlim_max.min(ceiling);
    if limit.rlim_cur < target {
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: a valid rlimit, within the hard limit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    let need = needed(config);
    if limit.rlim_cur >= need {
        return configured;
    }
    // The operator listeners keep their own caps, so their share is set aside first.
    let for_proxying = limit
        .rlim_cur
        .saturating_sub(BESIDES_CONNECTIONS + operator_connections(config) + disk_tier(config));
    let fits = usize::try_from(for_proxying / 2)
        .unwrap_or(usize::MAX)
        .max(1);
    let clients = configured.min(fits);
    tracing::warn!(
        "open-file limit {} is under the {need} descriptors this config may hold \
         (server.max_connections {configured} + each tenant's origin max_connections + \
         {CONNECTIONS_PER_ADMIN_LISTENER} per admin or metrics listener + the disk tier's \
         {disk} files + {BESIDES_CONNECTIONS}): accepting at most {clients} client connections (503 beyond); \
         raise the hard limit (LimitNOFILE=, ulimit -Hn) or lower max_connections",
        limit.rlim_cur,
        disk = disk_tier(config),
    );
    clients
}
