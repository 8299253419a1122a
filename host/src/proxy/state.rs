//! State shared by every request: the tenant router (swappable as a whole on
//! config reload) and the cache backend.

use super::TenantsUncacheable;
use crate::config::{ForwardedHeaders, UnusualFieldNames};
use crate::policy::PluginFault;
use crate::shutdown::Drain;
use crate::storage::TieredStorage;
use crate::tenant::TenantRouter;
use arc_swap::{ArcSwap, ArcSwapOption};
use pingora_cache::lock::CacheKeyLockImpl;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// The cache machinery Pingora needs as `'static` references.
pub struct CacheBackend {
    /// L1 memory and any L2 tiers (`[cache.disk]`, `[cache.shared]`).
    pub storage: &'static TieredStorage,
    pub lock: &'static CacheKeyLockImpl,
    /// URLs whose last response was not storable: they skip the lock (None: off).
    pub uncacheable: Option<&'static TenantsUncacheable>,
    pub lock_timeout: Duration,
    pub max_object_bytes: usize,
}

pub struct ProxyState {
    pub router: ArcSwap<TenantRouter>,
    pub cache: CacheBackend,
    /// Write one log line per request (reloadable).
    pub access_log: AtomicBool,
    /// Answer fresh plain GET hits on the lean path (`[cache] lean_hits`, reloadable).
    pub lean_hits: AtomicBool,
    /// Bearer token required by the admin API and by PURGE (None: none; reloadable).
    pub admin_token: ArcSwapOption<String>,
    /// What the origin is told about the client (`[server] forwarded_headers`).
    pub forwarded_headers: ForwardedHeaders,
    /// Request fields named with an underscore: dropped or kept (`[server] unusual_field_names`).
    pub unusual_field_names: UnusualFieldNames,
    /// Requests being served, which a graceful shutdown waits for.
    pub drain: Arc<Drain>,
    /// `[server] client_write_timeout`: longest wait for a client to take response bytes.
    pub client_write_timeout: std::time::Duration,
    /// Keys whose stale copy was just served because the origin failed to revalidate them.
    pub recent_failures: super::failing_origin::RecentFailures,
    /// Each HTTP/2 connection's requests at work, reset streams included.
    pub h2_work: Arc<crate::connection::H2Work>,
}

impl ProxyState {
    pub fn new(router: TenantRouter, cache: CacheBackend, access_log: bool) -> Self {
        Self {
            router: ArcSwap::from_pointee(router),
            cache,
            access_log: AtomicBool::new(access_log),
            lean_hits: AtomicBool::new(true),
            admin_token: ArcSwapOption::empty(),
            forwarded_headers: ForwardedHeaders::default(),
            unusual_field_names: UnusualFieldNames::default(),
            drain: Arc::default(),
            client_write_timeout: std::time::Duration::from_secs(60),
            recent_failures: Default::default(),
            h2_work: crate::connection::H2Work::new(200),
        }
    }

    /// Whether an `Authorization` header value carries the admin token.
    /// Without a configured token, nothing is authorised by header alone.
    pub fn admin_authorized(&self, authorization: Option<&[u8]>) -> bool {
        let token = self.admin_token.load();
        let (Some(token), Some(value)) = (token.as_deref(), authorization) else {
            return false;
        };
        // The scheme is case-insensitive (RFC 9110 §11.1).
        let Some((scheme, presented)) = value.split_at_checked(7) else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case(b"bearer ") {
            return false;
        }
        // Digests compared without an early exit: timing tells neither the token nor its
        // length (a length check first told the length).
        use sha2::{Digest, Sha256};
        let (presented, token) = (Sha256::digest(presented), Sha256::digest(token.as_bytes()));
        presented
            .iter()
            .zip(token.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    /// Counts a plugin fault for operators.
    pub fn record_fault(&self, tenant: &str, fault: &PluginFault) {
        crate::metrics::plugin_fault(tenant, fault.kind());
    }
}
