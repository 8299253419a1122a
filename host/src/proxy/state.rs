//! State shared by every request: the tenant router (swappable as a whole on
//! config reload) and the cache backend.

use super::UncacheableKeys;
use crate::config::ForwardedHeaders;
use crate::policy::PluginFault;
use crate::storage::MemoryStorage;
use crate::tenant::TenantRouter;
use arc_swap::ArcSwap;
use pingora_cache::lock::CacheKeyLockImpl;
use std::time::Duration;

/// The cache machinery Pingora needs as `'static` references.
pub struct CacheBackend {
    pub storage: &'static MemoryStorage,
    pub lock: &'static CacheKeyLockImpl,
    /// URLs whose last response was not storable: they skip the lock (None: off).
    pub uncacheable: Option<&'static UncacheableKeys>,
    pub lock_timeout: Duration,
    pub max_object_bytes: usize,
}

pub struct ProxyState {
    pub router: ArcSwap<TenantRouter>,
    pub cache: CacheBackend,
    /// Write one log line per request.
    pub access_log: bool,
    /// Bearer token required by the admin API and by PURGE (None: none).
    pub admin_token: Option<String>,
    /// What the origin is told about the client (`[server] forwarded_headers`).
    pub forwarded_headers: ForwardedHeaders,
}

impl ProxyState {
    pub fn new(router: TenantRouter, cache: CacheBackend, access_log: bool) -> Self {
        Self {
            router: ArcSwap::from_pointee(router),
            cache,
            access_log,
            admin_token: None,
            forwarded_headers: ForwardedHeaders::default(),
        }
    }

    /// Whether an `Authorization` header value carries the admin token.
    /// Without a configured token, nothing is authorised by header alone.
    pub fn admin_authorized(&self, authorization: Option<&[u8]>) -> bool {
        let (Some(token), Some(value)) = (&self.admin_token, authorization) else {
            return false;
        };
        // The scheme is case-insensitive (RFC 9110 §11.1).
        let Some((scheme, presented)) = value.split_at_checked(7) else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case(b"bearer ") {
            return false;
        }
        // Compare without an early exit so timing does not leak the token.
        presented.len() == token.len()
            && presented
                .iter()
                .zip(token.as_bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    /// Counts a plugin fault for operators.
    pub fn record_fault(&self, tenant: &str, fault: &PluginFault) {
        crate::metrics::plugin_fault(tenant, fault.kind());
    }
}
