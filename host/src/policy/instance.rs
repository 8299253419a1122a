//! Plugin instances: creation with limits, typed hook calls, fault handling,
//! and a per-tenant pool that reuses instances only as far as configured.

use super::bindings::v2::cachet::policy::types::{self as raw, TestVector};
use super::bindings::{Hooks, RequestAnswer, ResponseAnswer};
use super::breaker::{Breaker, Hook};
use super::decision::{
    self, OriginFailure, RequestDecision, RequestPlan, ResponseDecision, ResponsePlan,
    SyntheticResponse,
};
use super::edits::{self, HeaderEdit};
use super::engine::PolicyEngine;
use super::heads::Setting;
use super::host_api::HostState;
use super::idle::Shelves;
use super::lanes::{Load, PluginLane};
use super::limits::PluginLimits;
use super::pending::PendingFields;
use super::plugin::{root_cause, LoadedPlugin};
use super::TenantContext;
use pingora::http::{RequestHeader, ResponseHeader};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::{Store, Trap};

/// Why a hook call failed. The instance involved is always discarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginFault {
    /// The hook ran past its deadline.
    Timeout,
    /// The guest asked for more memory than its limit.
    Memory,
    /// The guest trapped (panic, unreachable, bad memory access...).
    Trap(String),
    /// No instance could be created (pool full, start function failed).
    Instantiate(String),
    /// The guest returned something the host refuses (oversized key...).
    InvalidOutput(String),
    /// Skipped: the plugin kept exceeding its deadline (circuit breaker open).
    Quarantined,
    /// Not called: the plugin is heavy and no lane came free within its wait
    /// ([`super::lanes::lane_wait`]).
    NoLane,
}

impl PluginFault {
    /// A short stable name, for logs, metrics and `Cache-Status`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Memory => "memory",
            Self::Trap(_) => "trap",
            Self::Instantiate(_) => "instantiate",
            Self::InvalidOutput(_) => "invalid-output",
            Self::Quarantined => "quarantined",
            Self::NoLane => "no-lane",
        }
    }
}

impl fmt::Display for PluginFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout => write!(f, "plugin exceeded its CPU deadline"),
            Self::Memory => write!(f, "plugin exceeded its memory limit"),
            Self::Trap(msg) => write!(f, "plugin trapped: {msg}"),
            Self::Instantiate(msg) => write!(f, "plugin could not be instantiated: {msg}"),
            Self::InvalidOutput(msg) => write!(f, "plugin returned invalid output: {msg}"),
            Self::Quarantined => write!(f, "plugin skipped after repeated deadline overruns"),
            Self::NoLane => write!(f, "plugin skipped: no lane for heavy plugins came free"),
        }
    }
}

/// Makes one instance of `plugin` under the tenant's limits and settings, then drops it. A
/// plugin that cannot start within them (it needs more memory than `memory`, or traps while
/// starting with the tenant's settings) would fault on every request: it is refused at load
/// instead, with the reason. A deadline overrun does not refuse it: on a busy machine the
/// timing of one start decides that, and the breaker deals with a plugin that keeps overrunning.
pub fn check_starts_within_limits(
    engine: &PolicyEngine,
    plugin: &LoadedPlugin,
    tenant: &crate::config::TenantConfig,
) -> anyhow::Result<()> {
    let context = Arc::new(TenantContext {
        tenant: tenant.name.clone(),
        plugin_config: tenant.plugin_config.clone(),
    });
    match PolicyInstance::new(engine, plugin, context, &tenant.limits, None) {
        Ok(_) | Err(PluginFault::Timeout) => Ok(()),
        Err(fault) => Err(anyhow::anyhow!(
            "the plugin cannot start within tenant {:?}'s [tenant.limits]: {fault}",
            tenant.name
        )),
    }
}

/// One instance of a plugin in its own `Store`.
pub struct PolicyInstance {
    store: Store<HostState>,
    bindings: Hooks,
    uses: u32,
    /// The tenant whose settings `configure` was handed, to hand them again after a reset.
    configured: Option<Arc<TenantContext>>,
    /// Wakes on each deadline armed: guest code runs only under one.
    ticker: Arc<super::ticker::Ticker>,
    /// When every call must have ended, whatever time its hook has (load-time checks).
    until: Option<Instant>,
    _slot: Option<LiveSlot>,
}

/// `timeout`, cut short to what is left before `until`; `None` when nothing is left.
fn time_left(timeout: Duration, until: Option<Instant>) -> Option<Duration> {
    let timeout = match until {
        Some(until) => timeout.min(until.saturating_duration_since(Instant::now())),
        None => timeout,
    };
    (!timeout.is_zero()).then_some(timeout)
}

impl PolicyInstance {
    fn new(
        engine: &PolicyEngine,
        plugin: &LoadedPlugin,
        tenant: Arc<TenantContext>,
        limits: &PluginLimits,
        until: Option<Instant>,
    ) -> Result<Self, PluginFault> {
        let timeout = time_left(limits.hook_timeout, until).ok_or(PluginFault::Timeout)?;
        // Kept only when there is something to hand a 0.3.0 `configure`.
        let configured = (!tenant.plugin_config.is_empty()).then(|| tenant.clone());
        let mut store = Store::new(engine.engine(), HostState::new(tenant, limits.memory_bytes));
        store.limiter(|state| &mut state.limiter);
        store.set_hostcall_fuel(limits.copy_budget());
        let ticker = engine.ticker().clone();
        let ticks = super::ticker::Ticker::ticks(timeout);
        // The store's deadline first, then the ticker's record of it (see `Ticker::arm`).
        store.set_epoch_deadline(ticks);
        ticker.arm(ticks);
        store.epoch_deadline_trap();
        let instantiated = plugin.pre.instantiate(&mut store).and_then(|bindings| {
            if let Some(tenant) = &configured {
                bindings.configure(&mut store, &tenant_settings(tenant))?;
            }
            Ok(bindings)
        });
        match instantiated {
            Ok(bindings) => Ok(Self {
                store,
                bindings,
                uses: 0,
                configured,
                ticker,
                until,
                _slot: None,
            }),
            Err(e) => Err(match classify(&e, &store) {
                PluginFault::Trap(msg) => PluginFault::Instantiate(msg),
                other => other,
            }),
        }
    }

    /// Runs one hook with the request (and response) in scope and the
    /// deadline armed. Any error means the instance must not be used again.
    fn call<R>(
        &mut self,
        limits: &PluginLimits,
        request: Option<&RequestHeader>,
        response: Option<&ResponseHeader>,
        hook: impl FnOnce(&Hooks, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, PluginFault> {
        self.call_within(limits.hook_timeout, request, response, hook)
    }

    /// [`Self::call`] with `timeout` for its deadline (what is left of a hook's time when
    /// it is called several times for one request).
    fn call_within<R>(
        &mut self,
        timeout: Duration,
        request: Option<&RequestHeader>,
        response: Option<&ResponseHeader>,
        hook: impl FnOnce(&Hooks, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, PluginFault> {
        let timeout = time_left(timeout, self.until).ok_or(PluginFault::Timeout)?;
        // SAFETY: `request` and `response` are borrowed for this whole function, and `scoped`
        // empties the scope when it drops below, on every path, unwinding included: the
        // pointers are never read after the borrows end.
        unsafe { self.store.data_mut().scope.enter(request, response) };
        // A refusal an earlier call handled says nothing about how this one ends.
        self.store.data_mut().limiter.refused = false;
        let scoped = LeaveOnDrop(&mut self.store);
        let ticks = super::ticker::Ticker::ticks(timeout);
        scoped.0.set_epoch_deadline(ticks);
        self.ticker.arm(ticks);
        let result = hook(&self.bindings, &mut *scoped.0);
        drop(scoped);
        result.map_err(|e| classify(&e, &self.store))
    }

    /// Gives the instance back the state a new one would start with: memory and globals as
    /// instantiation left them (the reset the host wrote into the component), then the
    /// tenant's settings handed to `configure` again. False when that is not possible (no
    /// reset, grown memory): the instance must be dropped; likewise on a fault, which is
    /// returned for the breaker to count.
    fn reset_state(&mut self, limits: &PluginLimits) -> Result<bool, PluginFault> {
        if !self.bindings.can_reset() {
            return Ok(false);
        }
        let configured = self.configured.clone();
        let restored = self.call(limits, None, None, |hooks, store| {
            if !hooks.reset(store)? {
                return Ok(false);
            }
            if let Some(tenant) = &configured {
                hooks.configure(store, &tenant_settings(tenant))?;
            }
            Ok(true)
        });
        restored
    }

    /// The plan, and the key when the plugin gave one with a plan that
    /// edits nothing (0.3.0); otherwise `cache-key` is still to be called.
    fn on_request(
        &mut self,
        limits: &PluginLimits,
        request: &RequestHeader,
        pending: &PendingFields,
    ) -> Result<(RequestPlan, Option<Vec<String>>), PluginFault> {
        let answer = self.call(limits, Some(request), None, |hooks, store| {
            hooks.on_request(store, request, pending)
        })?;
        let (plan, key) = match answer {
            RequestAnswer::V1(v1) => (
                decision::request_decision_v1(v1, limits).map(RequestPlan::decision_only),
                None,
            ),
            RequestAnswer::V2(v2) => (decision::request_plan(v2, limits, request.uri.path()), None),
            RequestAnswer::V3(v2, key) => {
                (decision::request_plan(v2, limits, request.uri.path()), key)
            }
        };
        let plan = plan.map_err(PluginFault::InvalidOutput)?;
        // A key read from the unedited request must never name an edited one.
        let key = match key {
            Some(parts) if plan.edits.is_empty() && plan.decision == RequestDecision::Cache => {
                Some(
                    decision::key_parts(parts, limits, request_bytes(request))
                        .map_err(PluginFault::InvalidOutput)?,
                )
            }
            _ => None,
        };
        Ok((plan, key))
    }

    fn cache_key(
        &mut self,
        limits: &PluginLimits,
        request: &RequestHeader,
        pending: &PendingFields,
    ) -> Result<Vec<String>, PluginFault> {
        let parts = self.call(limits, Some(request), None, |hooks, store| {
            hooks.cache_key(store, request, pending)
        })?;
        decision::key_parts(parts, limits, request_bytes(request))
            .map_err(PluginFault::InvalidOutput)
    }

    fn on_response(
        &mut self,
        limits: &PluginLimits,
        request: &RequestHeader,
        response: &ResponseHeader,
    ) -> Result<ResponsePlan, PluginFault> {
        let answer = self.call(limits, Some(request), Some(response), |hooks, store| {
            hooks.on_response(store, request, response)
        })?;
        match answer {
            ResponseAnswer::V1(v1) => Ok(ResponsePlan {
                decision: decision::response_decision_v1(v1),
                edits: Vec::new(),
            }),
            ResponseAnswer::V2(v2) => {
                decision::response_plan(v2).map_err(PluginFault::InvalidOutput)
            }
        }
    }

    fn on_deliver(
        &mut self,
        limits: &PluginLimits,
        request: &RequestHeader,
        response: &ResponseHeader,
    ) -> Result<Vec<HeaderEdit>, PluginFault> {
        let raw = self.call(limits, Some(request), Some(response), |hooks, store| {
            hooks.on_deliver(store, request, response)
        })?;
        edits::header_edits(raw, "delivery").map_err(PluginFault::InvalidOutput)
    }

    fn on_error(
        &mut self,
        limits: &PluginLimits,
        request: &RequestHeader,
        failure: OriginFailure,
    ) -> Result<Option<SyntheticResponse>, PluginFault> {
        let failure = match failure {
            OriginFailure::Unreachable => raw::OriginFailure::Unreachable,
            OriginFailure::Timeout => raw::OriginFailure::Timeout,
            OriginFailure::Status(code) => raw::OriginFailure::Status(code),
        };
        let answer = self.call(limits, Some(request), None, |hooks, store| {
            hooks.on_error(store, request, failure)
        })?;
        answer
            .map(|r| decision::synthetic_response(r, limits))
            .transpose()
            .map_err(PluginFault::InvalidOutput)
    }

    fn vary_value(
        &mut self,
        limits: &PluginLimits,
        timeout: Duration,
        request: &RequestHeader,
        name: &str,
    ) -> Result<Option<String>, PluginFault> {
        let value = self.call_within(timeout, Some(request), None, |hooks, store| {
            hooks.vary_value(store, request, name)
        })?;
        match value {
            Some(v) if v.len() > limits.max_key_bytes => Err(PluginFault::InvalidOutput(format!(
                "vary value of {} bytes exceeds the limit of {}",
                v.len(),
                limits.max_key_bytes
            ))),
            other => Ok(other),
        }
    }

    fn self_test(&mut self, limits: &PluginLimits) -> Result<Vec<TestVector>, PluginFault> {
        self.bindings
            .check_types(&mut self.store)
            .map_err(|e| PluginFault::Instantiate(root_cause(&e)))?;
        self.call(limits, None, None, |hooks, store| hooks.self_test(store))
    }
}

/// The tenant's `[tenant.plugin_config]` entries, for a 0.3.0 `configure`.
fn tenant_settings(tenant: &TenantContext) -> Vec<Setting<'_>> {
    tenant
        .plugin_config
        .iter()
        .map(|(key, value)| Setting { key, value })
        .collect()
}

/// Empties a store's call scope when dropped, so a hook that returns early or unwinds never
/// leaves it pointing at headers whose borrow has ended.
struct LeaveOnDrop<'a>(&'a mut Store<HostState>);

impl Drop for LeaveOnDrop<'_> {
    fn drop(&mut self) {
        self.0.data_mut().scope.leave();
    }
}

fn classify(err: &wasmtime::Error, store: &Store<HostState>) -> PluginFault {
    if err.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return PluginFault::Timeout;
    }
    if store.data().limiter.refused {
        return PluginFault::Memory;
    }
    // wasmtime's words when a call would copy more than `PluginLimits::copy_budget`, looked
    // for in the whole chain (the text kept for the log is cut).
    let hostcalls_exhausted = err.chain().any(|cause| {
        cause
            .to_string()
            .contains("fuel allocated for hostcalls has been exhausted")
    });
    if hostcalls_exhausted {
        return PluginFault::InvalidOutput(format!(
            "the plugin handed back more than the {} bytes one call may copy",
            store.hostcall_fuel()
        ));
    }
    PluginFault::Trap(root_cause(err))
}

/// Most idle instances kept per plugin version (but at least one per thread's shelf,
/// `idle.rs`); more are simply dropped.
const MAX_IDLE_INSTANCES: usize = 32;

/// Requests one reset instance serves before it is replaced by a new one. The reset restores
/// everything the guest can change; the bound also renews what wasmtime keeps per store.
const MAX_RESETS_PER_INSTANCE: u32 = 10_000;

/// Counts a tenant's live instances; the slot is given back on drop.
struct LiveSlot(Arc<AtomicUsize>);

impl Drop for LiveSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The instances of one version of one tenant's plugin.
pub struct InstancePool {
    engine: PolicyEngine,
    plugin: Arc<LoadedPlugin>,
    tenant: Arc<TenantContext>,
    limits: PluginLimits,
    idle: Shelves<PolicyInstance>,
    /// When every call of a load-time check must have ended: see [`PolicyInstance::until`].
    until: Option<Instant>,
    live: Arc<AtomicUsize>,
    breaker: Breaker,
    /// How much CPU this tenant's plugin's `on-request` calls use (`lanes`), shared with the
    /// versions before and after this one.
    load: Arc<Load>,
    request_seconds: crate::metrics::ShardedHistogram,
    response_seconds: crate::metrics::ShardedHistogram,
    memory_growths: prometheus::IntCounter,
    instances_created: prometheus::IntCounter,
}

/// What `decide_request` found: the decision and, when the request may use
/// the cache, the plugin's key parts.
pub type RequestVerdict = (RequestDecision, Option<Vec<String>>);

/// What `plan_request` found: the verdict on the edited request, the backend
/// the plugin named, and whether it wants `on-deliver`.
#[derive(Debug)]
pub struct RequestOutcome {
    pub verdict: RequestVerdict,
    pub backend: Option<String>,
    pub deliver: bool,
    /// The request and pending fields as they were before the plugin's edits (only when it
    /// edited): a fault found after planning (an unknown backend) puts them back, so the
    /// fallback forwards the client's request, not one rewritten for a plan that failed.
    pub unedited: Option<Box<(RequestHeader, PendingFields)>>,
}

impl InstancePool {
    pub fn new(
        engine: PolicyEngine,
        plugin: Arc<LoadedPlugin>,
        tenant: Arc<TenantContext>,
        limits: PluginLimits,
    ) -> Self {
        Self::timed_as(engine, plugin, tenant, limits, ["request", "response"])
    }

    /// A pool for a tenant's shadow plugin: its own instances, breaker and hook timings.
    pub fn for_shadow(
        engine: PolicyEngine,
        plugin: Arc<LoadedPlugin>,
        tenant: Arc<TenantContext>,
        limits: PluginLimits,
    ) -> Self {
        let hooks = ["shadow-request", "shadow-response"];
        Self::timed_as(engine, plugin, tenant, limits, hooks)
    }

    fn timed_as(
        engine: PolicyEngine,
        plugin: Arc<LoadedPlugin>,
        tenant: Arc<TenantContext>,
        limits: PluginLimits,
        [request, response]: [&str; 2],
    ) -> Self {
        let request_seconds = crate::metrics::hook_histogram(&tenant.tenant, request);
        let response_seconds = crate::metrics::hook_histogram(&tenant.tenant, response);
        let memory_growths = crate::metrics::plugin_memory_growths(&tenant.tenant);
        let instances_created = crate::metrics::plugin_instances_created(&tenant.tenant);
        let load = engine.lanes().load_of(&tenant.tenant);
        Self {
            engine,
            plugin,
            tenant,
            limits,
            idle: Shelves::new(MAX_IDLE_INSTANCES),
            until: None,
            live: Arc::new(AtomicUsize::new(0)),
            breaker: Breaker::default(),
            load,
            request_seconds,
            response_seconds,
            memory_growths,
            instances_created,
        }
    }

    /// A throwaway pool for load-time checks of a plugin not yet shared, whose every call
    /// (instantiation included) ends by `until`: each gets what is left of the checks'
    /// time when that is less than its hook's.
    pub(crate) fn for_checks(
        engine: PolicyEngine,
        plugin: &LoadedPlugin,
        tenant: Arc<TenantContext>,
        limits: PluginLimits,
        until: Instant,
    ) -> Self {
        let plugin = Arc::new(LoadedPlugin {
            pre: plugin.pre.clone(),
            info: plugin.info.clone(),
            compiled_sha256: plugin.compiled_sha256.clone(),
        });
        Self {
            until: Some(until),
            ..Self::new(engine, plugin, tenant, limits)
        }
    }

    /// A new instance, if the tenant is under its instance limit.
    fn new_instance(&self) -> Result<PolicyInstance, PluginFault> {
        let slot = LiveSlot(self.live.clone());
        if self.live.fetch_add(1, Ordering::AcqRel) >= self.limits.max_instances {
            return Err(PluginFault::Instantiate(format!(
                "tenant has {} live plugin instances, its limit",
                self.limits.max_instances
            )));
        }
        let mut instance = PolicyInstance::new(
            &self.engine,
            &self.plugin,
            self.tenant.clone(),
            &self.limits,
            self.until,
        )?;
        instance._slot = Some(slot);
        self.instances_created.inc();
        Ok(instance)
    }

    /// The plugin's own test vectors, from a fresh instance.
    pub(crate) fn self_test_vectors(&self) -> Result<Vec<TestVector>, PluginFault> {
        PolicyInstance::new(
            &self.engine,
            &self.plugin,
            self.tenant.clone(),
            &self.limits,
            self.until,
        )?
        .self_test(&self.limits)
    }

    pub fn plugin(&self) -> &Arc<LoadedPlugin> {
        &self.plugin
    }

    pub fn limits(&self) -> &PluginLimits {
        &self.limits
    }

    /// Runs `on-request` and, when it says "cache", `cache-key` on one instance.
    /// A 0.2.0 plugin's request edits are applied to a copy first: the key is
    /// the one the edited request would get (shadows, explain, invalidation).
    pub fn decide_request(&self, request: &RequestHeader) -> Result<RequestVerdict, PluginFault> {
        self.decide_request_and_backend(request)
            .map(|(verdict, _)| verdict)
    }

    /// [`Self::decide_request`], with the backend the plugin named (unchecked).
    pub fn decide_request_and_backend(
        &self,
        request: &RequestHeader,
    ) -> Result<(RequestVerdict, Option<String>), PluginFault> {
        let _timer = self.request_seconds.start_timer();
        self.with_instance(Hook::Request, |instance, limits| {
            let none = PendingFields::none();
            let (plan, given_key) = instance.on_request(limits, request, none)?;
            let key = match plan.decision {
                RequestDecision::Cache if given_key.is_some() => given_key,
                RequestDecision::Cache if plan.edits.is_empty() => {
                    Some(instance.cache_key(limits, request, none)?)
                }
                RequestDecision::Cache => {
                    let mut edited = request.clone();
                    plan.edits
                        .apply(&mut edited)
                        .map_err(PluginFault::InvalidOutput)?;
                    Some(instance.cache_key(limits, &edited, none)?)
                }
                _ => None,
            };
            Ok(((plan.decision, key), plan.backend))
        })
    }

    /// When tenants share the proxy, the lane a heavy plugin's `on-request` call waits for,
    /// and the measure that judges the plugin: hold it across [`Self::plan_request`].
    /// No lane while the breaker is open: the call returns at once, without the plugin.
    /// A [`PluginFault::NoLane`] when none came free within the tenant's wait.
    pub(crate) async fn lane(&self, shared: bool) -> Result<PluginLane<'_>, PluginFault> {
        if !shared || self.breaker.is_open() {
            return Ok(PluginLane::default());
        }
        let wait = super::lanes::lane_wait(self.limits.hook_timeout);
        PluginLane::enter(&self.load, self.engine.lanes(), wait).await
    }

    /// Runs `on-request` on `request` with the `pending` fields written, applies
    /// its edits to `request` (what the origin is sent), then `cache-key` on
    /// the edited request when it says "cache".
    ///
    /// Edits are made to the request the plugin saw, so the pending fields are
    /// written first; a plan that edits nothing leaves them pending.
    pub fn plan_request(
        &self,
        request: &mut RequestHeader,
        pending: &mut PendingFields,
    ) -> Result<RequestOutcome, PluginFault> {
        let _timer = self.request_seconds.start_timer();
        self.with_instance(Hook::Request, |instance, limits| {
            let (plan, mut given_key) = instance.on_request(limits, request, pending)?;
            let edits =
                !matches!(plan.decision, RequestDecision::Respond(_)) && !plan.edits.is_empty();
            let unedited = edits.then(|| Box::new((request.clone(), pending.clone())));
            let mut edit_then_key = || {
                if edits {
                    pending.apply(request);
                    plan.edits
                        .apply(request)
                        .map_err(PluginFault::InvalidOutput)?;
                }
                match plan.decision {
                    // Given only with a plan that edits nothing: `request` is unchanged.
                    RequestDecision::Cache if given_key.is_some() => Ok(given_key.take()),
                    RequestDecision::Cache => {
                        Ok(Some(instance.cache_key(limits, request, pending)?))
                    }
                    _ => Ok(None),
                }
            };
            match edit_then_key() {
                Ok(key) => Ok(RequestOutcome {
                    verdict: (plan.decision, key),
                    backend: plan.backend,
                    deliver: plan.deliver,
                    unedited,
                }),
                // `cache-key` faulted on the edited request: the fallback gets the client's.
                Err(fault) => {
                    if let Some(unedited) = unedited {
                        (*request, *pending) = *unedited;
                    }
                    Err(fault)
                }
            }
        })
    }

    /// Runs `vary-value` for each header name the stored response varies on, all within one
    /// hook deadline: the names come from the origin's `Vary`, as many as it lists, and a
    /// deadline each would let one lookup hold a worker that many times over.
    pub fn vary_values(
        &self,
        request: &RequestHeader,
        names: &[String],
    ) -> Result<Vec<Option<String>>, PluginFault> {
        self.with_instance(Hook::Vary, |instance, limits| {
            let started = Instant::now();
            names
                .iter()
                .map(|name| {
                    let left = limits.hook_timeout.saturating_sub(started.elapsed());
                    if left.is_zero() {
                        return Err(PluginFault::Timeout);
                    }
                    instance.vary_value(limits, left, request, name)
                })
                .collect()
        })
    }

    /// Runs `on-response` for an origin response.
    pub fn decide_response(
        &self,
        request: &RequestHeader,
        response: &ResponseHeader,
    ) -> Result<ResponseDecision, PluginFault> {
        self.plan_response(request, response).map(|p| p.decision)
    }

    /// Runs `on-response`: the decision and the edits before storing.
    pub fn plan_response(
        &self,
        request: &RequestHeader,
        response: &ResponseHeader,
    ) -> Result<ResponsePlan, PluginFault> {
        let _timer = self.response_seconds.start_timer();
        self.with_instance(Hook::Response, |instance, limits| {
            instance.on_response(limits, request, response)
        })
    }

    /// Runs `on-deliver` for a response about to be sent to the client.
    pub fn deliver_edits(
        &self,
        request: &RequestHeader,
        response: &ResponseHeader,
    ) -> Result<Vec<HeaderEdit>, PluginFault> {
        self.with_instance(Hook::Deliver, |instance, limits| {
            instance.on_deliver(limits, request, response)
        })
    }

    /// Runs `on-error` after an origin failure with nothing stale to serve.
    pub fn error_answer(
        &self,
        request: &RequestHeader,
        failure: OriginFailure,
    ) -> Result<Option<SyntheticResponse>, PluginFault> {
        self.with_instance(Hook::Error, |instance, limits| {
            instance.on_error(limits, request, failure)
        })
    }

    fn with_instance<R>(
        &self,
        hook: Hook,
        work: impl FnOnce(&mut PolicyInstance, &PluginLimits) -> Result<R, PluginFault>,
    ) -> Result<R, PluginFault> {
        if self.breaker.is_open() {
            return Err(PluginFault::Quarantined);
        }
        let idle = self.idle.take();
        let mut instance = match idle {
            Some(instance) => instance,
            None => match self.new_instance() {
                Ok(instance) => {
                    self.breaker.record_success(Hook::Start);
                    instance
                }
                Err(fault) => {
                    if fault == PluginFault::Timeout {
                        self.breaker.record_timeout(Hook::Start);
                    }
                    return Err(fault);
                }
            },
        };
        // On a fault the instance is dropped here: a trapped instance may be
        // in any state, so it never serves another request.
        instance.uses += 1;
        let outcome = work(&mut instance, &self.limits);
        if std::mem::take(&mut instance.store.data_mut().limiter.grew) {
            self.memory_growths.inc();
        }
        let result = match outcome {
            Ok(result) => result,
            Err(fault) => {
                if fault == PluginFault::Timeout {
                    self.breaker.record_timeout(hook);
                }
                return Err(fault);
            }
        };
        // `instance_reuse = 1`: each request starts from a new instance's state, by a reset
        // where the plugin has one (right after the request: nothing of it lingers in an idle
        // instance), by a new instance otherwise.
        let (keep, reset_timed_out) = if self.limits.instance_reuse == 1 {
            if instance.uses >= MAX_RESETS_PER_INSTANCE {
                (false, false)
            } else {
                match instance.reset_state(&self.limits) {
                    Ok(reset) => (reset, false),
                    Err(fault) => (false, fault == PluginFault::Timeout),
                }
            }
        } else {
            (instance.uses < self.limits.instance_reuse, false)
        };
        // The reset (and `configure` after it) runs under a hook's deadline, as part of the
        // request's work: a plugin that spends that deadline after every answer is as slow
        // as one whose hook does, and its breaker counts it the same way.
        if reset_timed_out {
            self.breaker.record_timeout(hook);
        } else {
            self.breaker.record_success(hook);
        }
        if keep {
            self.idle.put_back(instance);
        }
        Ok(result)
    }
}

/// The bytes of a request's target and fields: what a cache key made from it can hold.
fn request_bytes(request: &RequestHeader) -> usize {
    let target = request.raw_path().len();
    let fields: usize = request
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    target + fields
}
