//! Shadow rollout: a candidate plugin sees a sample of live requests beside the
//! tenant's live plugin. Its answers are compared with the live ones and
//! recorded; they never decide anything about the request.
//!
//! The shadow has its own instance pool (own instances, deadline and circuit
//! breaker), so a shadow that faults or loops costs a request at most its own
//! hook deadline, and after a few overruns nothing at all while its breaker is open.

mod compare;
mod record;

pub use record::{Disagreement, ShadowRecord};

use crate::config::{ShadowConfig, TenantConfig};
use crate::policy::{
    InstancePool, LoadedPlugin, PluginFault, PolicyEngine, RequestVerdict, ResponseDecision,
    TenantContext,
};
use pingora::http::{RequestHeader, ResponseHeader};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The hooks whose answers are compared, as named in metrics and `/status`.
pub const HOOKS: [&str; 3] = ["on-request", "cache-key", "on-response"];

/// A loaded shadow plugin of one tenant and what it has been seen to do.
pub struct Shadow {
    pool: InstancePool,
    sample: f64,
    /// Requests offered to the sampler, for an exact share without a random source.
    offered: AtomicU64,
    record: Arc<ShadowRecord>,
}

impl Shadow {
    /// A shadow for `tenant`, under the tenant's limits in a pool of its own. `record` carries
    /// the comparisons over from the previous version of the tenant when the plugin is the same.
    pub fn new(
        engine: PolicyEngine,
        tenant: &TenantConfig,
        config: &ShadowConfig,
        plugin: Arc<LoadedPlugin>,
        record: Arc<ShadowRecord>,
    ) -> Self {
        let context = Arc::new(TenantContext {
            tenant: tenant.name.clone(),
            plugin_config: tenant.plugin_config.clone(),
        });
        Self {
            pool: InstancePool::for_shadow(engine, plugin, context, tenant.limits.clone()),
            sample: config.sample,
            offered: AtomicU64::new(0),
            record,
        }
    }

    pub fn plugin(&self) -> &Arc<LoadedPlugin> {
        self.pool.plugin()
    }

    pub fn sample(&self) -> f64 {
        self.sample
    }

    pub fn record(&self) -> &Arc<ShadowRecord> {
        &self.record
    }

    /// Whether this request is in the sample: exactly `sample` of all requests, spread evenly.
    pub fn takes_request(&self) -> bool {
        if self.sample >= 1.0 {
            return true;
        }
        if self.sample <= 0.0 {
            return false;
        }
        let n = self.offered.fetch_add(1, Ordering::Relaxed) as f64;
        ((n + 1.0) * self.sample).floor() > (n * self.sample).floor()
    }

    /// Runs the shadow's `on-request` and `cache-key` on the request the live plugin saw and
    /// records how its answers compare with the live `verdict`.
    /// `live_backend` is the live plugin's backend, `backends` the tenant's: a shadow naming
    /// another is a disagreement, one naming none of them a fault (it would fault live).
    pub fn compare_request(
        &self,
        tenant: &str,
        request: &RequestHeader,
        live: &RequestVerdict,
        live_backend: Option<&str>,
        backends: &[&str],
    ) {
        let shadow = self.pool.decide_request_and_backend(request);
        for outcome in compare::request((live, live_backend), &shadow, backends) {
            self.record.note(tenant, request, outcome);
        }
    }

    /// Runs the shadow's `on-response` on the origin response the live plugin judged.
    pub fn compare_response(
        &self,
        tenant: &str,
        request: &RequestHeader,
        response: &ResponseHeader,
        live: &Result<ResponseDecision, PluginFault>,
    ) {
        // A live fault leaves nothing to compare with.
        let Ok(live) = live else { return };
        let shadow = self.pool.decide_response(request, response);
        let outcome = compare::response(live, &shadow);
        self.record.note(tenant, request, outcome);
    }
}
