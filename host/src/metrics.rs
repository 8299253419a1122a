//! Prometheus counters for operators, registered once per process.

use crate::storage::StorageStats;
use once_cell::sync::Lazy;
use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
};
use std::fmt::Write as _;

mod sharded_histogram;
pub use sharded_histogram::{
    sharded_histogram_vec, HistogramTimer, ShardedHistogram, ShardedHistogramVec,
};

static PLUGIN_FAULTS: Lazy<IntCounterVec> = Lazy::new(|| {
    register(IntCounterVec::new(
        Opts::new(
            "cachet_plugin_faults_total",
            "Plugin hook calls that faulted",
        ),
        &["tenant", "kind"],
    ))
});

static REQUESTS: Lazy<IntCounterVec> = Lazy::new(|| {
    register(IntCounterVec::new(
        Opts::new(
            "cachet_requests_total",
            "Requests by tenant and cache status; refresh counts background revalidations (stale-while-revalidate), which no client made",
        ),
        &["tenant", "cache_status"],
    ))
});

static RELOADS: Lazy<IntCounterVec> = Lazy::new(|| {
    register(IntCounterVec::new(
        Opts::new(
            "cachet_reloads_total",
            "Plugin and config reloads by result",
        ),
        &["tenant", "result"],
    ))
});

static HOOK_SECONDS: Lazy<ShardedHistogramVec> = Lazy::new(|| {
    let opts = HistogramOpts::new(
        "cachet_plugin_hook_seconds",
        "Duration of plugin hook calls (instantiation included when fresh)",
    )
    .buckets(vec![
        1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 5e-3, 1e-2, 5e-2,
    ]);
    register(sharded_histogram_vec(opts, &["tenant", "hook"]))
});

static ORIGIN_SECONDS: Lazy<HistogramVec> = Lazy::new(|| {
    let opts = HistogramOpts::new(
        "cachet_origin_response_seconds",
        "Time from choosing the origin to its response header, by tenant and status class",
    )
    .buckets(vec![1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]);
    register(HistogramVec::new(opts, &["tenant", "status"]))
});

static LOCK_WAIT_SECONDS: Lazy<HistogramVec> = Lazy::new(|| {
    let opts = HistogramOpts::new(
        "cachet_cache_lock_wait_seconds",
        "Time requests waited for another request's fill of the same key",
    )
    .buckets(vec![1e-4, 1e-3, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]);
    register(HistogramVec::new(opts, &["tenant"]))
});

static SHADOW_DECISIONS: Lazy<IntCounterVec> = Lazy::new(|| {
    register(IntCounterVec::new(
        Opts::new(
            "cachet_shadow_decisions_total",
            "Shadow plugin answers compared with the live plugin's, by hook and result (agree, disagree, fault)",
        ),
        &["tenant", "hook", "result"],
    ))
});

static CONNECTIONS_REFUSED: Lazy<IntCounterVec> = Lazy::new(|| {
    register(IntCounterVec::new(
        Opts::new(
            "cachet_connections_refused_total",
            "Client connections refused: max_connections reached (503), a request head over max_request_head (431) or not whole within request_head_timeout (408), a TLS handshake that failed or was not done within request_head_timeout",
        ),
        &["reason"],
    ))
});

static ADMIN_CONNECTIONS_REFUSED: Lazy<IntCounterVec> = Lazy::new(|| {
    register(IntCounterVec::new(
        Opts::new(
            "cachet_admin_connections_refused_total",
            "Connections refused on the admin and metrics listeners, by the reasons of cachet_connections_refused_total",
        ),
        &["reason"],
    ))
});

/// A connection to the admin or metrics listener refused, by reason (those of
/// [`connection_refused`]).
pub fn admin_connection_refused(reason: &str) {
    ADMIN_CONNECTIONS_REFUSED.with_label_values(&[reason]).inc();
}

static CONNECTIONS_OPEN: Lazy<IntGauge> = Lazy::new(|| {
    register(IntGauge::new(
        "cachet_connections_open",
        "Client connections holding one of max_connections now (the proxy's listeners), those still in their TLS handshake included",
    ))
});

/// A client connection refused, by reason (`max_connections`, `head_too_large`,
/// `head_timeout`, `tls_handshake`, `tls_handshake_timeout`).
pub fn connection_refused(reason: &str) {
    CONNECTIONS_REFUSED.with_label_values(&[reason]).inc();
}

/// A client connection opened (+1) or closed (-1).
pub fn connections_open(delta: i64) {
    CONNECTIONS_OPEN.add(delta);
}

static ORIGIN_REFUSED: Lazy<IntCounterVec> = Lazy::new(|| {
    register(IntCounterVec::new(
        Opts::new(
            "cachet_origin_refused_total",
            "Requests refused (503, or stale where allowed) because the tenant's origin had max_connections exchanges in flight for queue_timeout",
        ),
        &["tenant"],
    ))
});

/// A request that found no turn at its tenant's origin in time.
pub fn origin_refused(tenant: &str) {
    ORIGIN_REFUSED.with_label_values(&[tenant]).inc();
}

/// Requests of `tenant` refused that way since the process started.
pub fn origin_refused_total(tenant: &str) -> u64 {
    ORIGIN_REFUSED.with_label_values(&[tenant]).get()
}

static LOG_LINES_DROPPED: Lazy<IntCounter> = Lazy::new(|| {
    register(IntCounter::new(
        "cachet_access_log_dropped_total",
        "Log lines dropped because the background log writer fell behind",
    ))
});

static WATCH_EVENTS: Lazy<IntCounter> = Lazy::new(|| {
    register(IntCounter::new(
        "cachet_reload_watch_events_total",
        "File-system events delivered to the reload watcher (the kernel filters out unrelated files)",
    ))
});

static LEAN_HITS: Lazy<IntCounter> = Lazy::new(|| {
    register(IntCounter::new(
        "cachet_lean_hits_total",
        "Fresh plain GET hits answered on the lean path (the rest of the hits take pingora-cache's full path)",
    ))
});

/// A hit answered on the lean path.
pub fn lean_hit() {
    LEAN_HITS.inc();
}

static FRONT_HITS: Lazy<IntCounter> = Lazy::new(|| {
    register(IntCounter::new(
        "cachet_front_hits_total",
        "Lean hits the front answered itself (HTTP/1.1 and HTTP/2), below Pingora's HTTP session",
    ))
});

static FRONT_HANDOVERS: Lazy<IntCounter> = Lazy::new(|| {
    register(IntCounter::new(
        "cachet_front_handovers_total",
        "Requests the front planned (plugin run, no lean hit) and handed to Pingora",
    ))
});

/// A lean hit the front answered.
pub fn front_hit() {
    FRONT_HITS.inc();
}

/// A request the front planned and Pingora carried on with.
pub fn front_handover() {
    FRONT_HANDOVERS.inc();
}

/// An origin response (its count is the number of origin requests).
pub fn origin_response(tenant: &str, status: u16, elapsed: std::time::Duration) {
    let class = match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    ORIGIN_SECONDS
        .with_label_values(&[tenant, class])
        .observe(elapsed.as_secs_f64());
}

/// A request that waited on the cache lock (request coalescing).
pub fn lock_wait(tenant: &str, waited: std::time::Duration) {
    LOCK_WAIT_SECONDS
        .with_label_values(&[tenant])
        .observe(waited.as_secs_f64());
}

fn register<M>(metric: prometheus::Result<M>) -> M
where
    M: prometheus::core::Collector + Clone + 'static,
{
    // The names and labels above are constants: failing here is a programming
    // error caught by the first test that touches metrics.
    let metric = metric.expect("valid metric definition");
    // A second registration (e.g. two proxies in one test process) is harmless.
    let _ = prometheus::register(Box::new(metric.clone()));
    metric
}

static PLUGIN_MEMORY_GROWTHS: Lazy<IntCounterVec> = Lazy::new(|| {
    register(IntCounterVec::new(
        Opts::new(
            "cachet_plugin_memory_growths_total",
            "Plugin instances whose linear memory grew past its initial size (each growth \
             costs page-protection changes when the instance's pool slot is reused)",
        ),
        &["tenant"],
    ))
});

/// The memory-growth counter of one tenant; resolve once, count per instance.
pub fn plugin_memory_growths(tenant: &str) -> IntCounter {
    PLUGIN_MEMORY_GROWTHS.with_label_values(&[tenant])
}

static PLUGIN_INSTANCES_CREATED: Lazy<IntCounterVec> = Lazy::new(|| {
    register(IntCounterVec::new(
        Opts::new(
            "cachet_plugin_instances_created_total",
            "Plugin instances created to serve requests (with instance_reuse = 1, one per \
             request unless the host can reset the plugin's instances between requests)",
        ),
        &["tenant"],
    ))
});

/// The instance counter of one tenant; resolve once, count per instance.
pub fn plugin_instances_created(tenant: &str) -> IntCounter {
    PLUGIN_INSTANCES_CREATED.with_label_values(&[tenant])
}

/// The histogram for one tenant's hook; resolve once, observe per call.
pub fn hook_histogram(tenant: &str, hook: &str) -> ShardedHistogram {
    HOOK_SECONDS.with_label_values(&[tenant, hook])
}

pub fn plugin_fault(tenant: &str, kind: &str) {
    PLUGIN_FAULTS.with_label_values(&[tenant, kind]).inc();
}

/// One comparison of a shadow plugin's answer with the live one.
pub fn shadow_decision(tenant: &str, hook: &str, result: &str) {
    SHADOW_DECISIONS
        .with_label_values(&[tenant, hook, result])
        .inc();
}

static CERTIFICATE_RELOADS: Lazy<IntCounterVec> = Lazy::new(|| {
    register(IntCounterVec::new(
        Opts::new(
            "cachet_tls_certificate_reloads_total",
            "TLS certificate file reloads by certificate and result (applied, refused)",
        ),
        &["certificate", "result"],
    ))
});

static CERTIFICATE_EXPIRY: Lazy<IntGaugeVec> = Lazy::new(|| {
    register(IntGaugeVec::new(
        Opts::new(
            "cachet_tls_certificate_not_after_seconds",
            "notAfter of each loaded TLS certificate, seconds since the epoch",
        ),
        &["certificate"],
    ))
});

/// A certificate no longer configured: its series go, so that no alert watches the expiry
/// of a certificate nothing serves.
pub fn forget_certificate(certificate: &str) {
    forget_labelled(&CERTIFICATE_EXPIRY, "certificate", certificate);
    forget_labelled(&CERTIFICATE_RELOADS, "certificate", certificate);
}

/// A certificate's files were reloaded (`applied`) or refused (`refused`).
pub fn certificate_reload(certificate: &str, result: &str) {
    CERTIFICATE_RELOADS
        .with_label_values(&[certificate, result])
        .inc();
}

/// A certificate was loaded: its notAfter.
pub fn certificate_expiry(certificate: &str, not_after: i64) {
    CERTIFICATE_EXPIRY
        .with_label_values(&[certificate])
        .set(not_after);
}

pub fn reload(tenant: &str, result: &str) {
    RELOADS.with_label_values(&[tenant, result]).inc();
}

/// Log lines the background writer could not take (0 registers the metric).
pub fn log_lines_dropped(lines: u64) {
    LOG_LINES_DROPPED.inc_by(lines);
}

pub fn log_lines_dropped_total() -> u64 {
    LOG_LINES_DROPPED.get()
}

/// One file-system event woke the reload watcher (0 registers the metric).
pub fn watch_events(events: u64) {
    WATCH_EVENTS.inc_by(events);
}

/// The tenants the running config names, once a server has set them (a library user's
/// tenants are never forgotten): see [`forget_tenant_if_gone`].
static LIVE_TENANTS: Lazy<parking_lot::RwLock<Option<std::collections::HashSet<String>>>> =
    Lazy::new(Default::default);

/// The running config's tenants are `names` (at start and after each applied reload).
pub fn set_live_tenants<'a>(names: impl IntoIterator<Item = &'a str>) {
    let names = names.into_iter().map(str::to_owned).collect();
    *LIVE_TENANTS.write() = Some(names);
}

/// Called as the last holder lets a tenant's run-time state go: when the config no longer
/// names it, its series are dropped again. A request in flight at the reload that removed
/// it held that state, and recorded its own series after the reload dropped them: they
/// stayed in /metrics for the life of the process.
pub fn forget_tenant_if_gone(tenant: &str) {
    let gone = LIVE_TENANTS
        .read()
        .as_ref()
        .is_some_and(|live| !live.contains(tenant));
    if gone {
        forget_tenant(tenant);
    }
}

/// Drops every series labelled with `tenant`, gone in a reload: a renamed tenant would
/// otherwise leave its series in /metrics for the life of the process.
pub fn forget_tenant(tenant: &str) {
    forget_in(&PLUGIN_FAULTS, tenant);
    forget_in(&REQUESTS, tenant);
    forget_in(&RELOADS, tenant);
    forget_in(&HOOK_SECONDS, tenant);
    forget_in(&ORIGIN_SECONDS, tenant);
    forget_in(&LOCK_WAIT_SECONDS, tenant);
    forget_in(&SHADOW_DECISIONS, tenant);
    forget_in(&ORIGIN_REFUSED, tenant);
    forget_in(&PLUGIN_MEMORY_GROWTHS, tenant);
    forget_in(&PLUGIN_INSTANCES_CREATED, tenant);
}

fn forget_in<T: prometheus::core::MetricVecBuilder>(
    vec: &prometheus::core::MetricVec<T>,
    tenant: &str,
) {
    forget_labelled(vec, "tenant", tenant);
}

/// Removes every series of `vec` whose label `name` is `value`.
fn forget_labelled<T: prometheus::core::MetricVecBuilder>(
    vec: &prometheus::core::MetricVec<T>,
    name: &str,
    value: &str,
) {
    use prometheus::core::Collector;
    for family in vec.collect() {
        for metric in family.get_metric() {
            let labels: std::collections::HashMap<&str, &str> = metric
                .get_label()
                .iter()
                .map(|pair| (pair.name(), pair.value()))
                .collect();
            if labels.get(name) == Some(&value) {
                let _ = vec.remove(&labels);
            }
        }
    }
}

pub fn request(tenant: &str, cache_status: &str) {
    REQUESTS.with_label_values(&[tenant, cache_status]).inc();
}

/// Every `cache_status` a request is counted under (`proxy::cache_status`), and `refresh`
/// for a background revalidation (no client's request).
const REQUEST_OUTCOMES: [&str; 8] = [
    "hit",
    "miss",
    "stale",
    "revalidated",
    "bypass",
    "answered",
    "error",
    "refresh",
];

/// One tenant's request counters, resolved when the tenant is built: counting a request is
/// then one atomic add, not a label hash and a lock on the shared vector.
pub struct RequestCounters {
    tenant: String,
    by_outcome: [IntCounter; REQUEST_OUTCOMES.len()],
}

impl RequestCounters {
    pub fn new(tenant: &str) -> Self {
        Self {
            tenant: tenant.to_owned(),
            by_outcome: REQUEST_OUTCOMES
                .map(|outcome| REQUESTS.with_label_values(&[tenant, outcome])),
        }
    }

    pub fn count(&self, outcome: &str) {
        match REQUEST_OUTCOMES.iter().position(|known| *known == outcome) {
            Some(index) => self.by_outcome[index].inc(),
            None => request(&self.tenant, outcome),
        }
    }
}

/// Every registered metric in the Prometheus text format, plus the cache's
/// own figures read from the storage at scrape time.
pub fn render(cache: &StorageStats) -> String {
    use prometheus::Encoder;
    let mut out = Vec::new();
    let encoder = prometheus::TextEncoder::new();
    if encoder.encode(&prometheus::gather(), &mut out).is_err() {
        out.clear();
    }
    let mut text = String::from_utf8(out).unwrap_or_default();
    render_cache(&mut text, cache);
    render_tiers(&mut text, cache);
    text
}

/// Per-tier figures: lookups answered by L1 and by each L2 tier, and each L2 tier's usage.
fn render_tiers(out: &mut String, cache: &StorageStats) {
    if cache.tiers.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "# HELP cachet_cache_tier_hits_total Lookups answered by each cache tier\n# TYPE cachet_cache_tier_hits_total counter\ncachet_cache_tier_hits_total{{tier=\"l1\"}} {}",
        cache.l1_hits
    );
    for t in &cache.tiers {
        let _ = writeln!(
            out,
            "cachet_cache_tier_hits_total{{tier=\"{}\"}} {}",
            t.name, t.hits
        );
    }
    type Field = fn(&crate::storage::TierStats) -> u64;
    let families: [(&str, &str, &str, Field); 14] = [
        (
            "cachet_cache_tier_misses_total",
            "counter",
            "Lookups an L2 tier could not answer",
            |t| t.misses,
        ),
        (
            "cachet_cache_tier_writes_total",
            "counter",
            "Objects written to an L2 tier",
            |t| t.writes,
        ),
        (
            "cachet_cache_tier_dropped_total",
            "counter",
            "L2 writes dropped because the write queue was full",
            |t| t.dropped,
        ),
        (
            "cachet_cache_tier_too_large_total",
            "counter",
            "Objects not written to an L2 tier because they are larger than it takes",
            |t| t.too_large,
        ),
        (
            "cachet_cache_tier_errors_total",
            "counter",
            "Failed L2 operations (timeouts, I/O, corrupt objects)",
            |t| t.errors,
        ),
        (
            "cachet_cache_tier_timeouts_total",
            "counter",
            "L2 operations not answered within the tier's timeout (counted in errors too)",
            |t| t.timeouts,
        ),
        (
            "cachet_cache_tier_reconnects_total",
            "counter",
            "Connections to an L2 tier replaced because calls on them went unanswered",
            |t| t.reconnects,
        ),
        (
            "cachet_cache_tier_corrupt_total",
            "counter",
            "Corrupt objects found in an L2 tier and removed",
            |t| t.corrupt,
        ),
        (
            "cachet_cache_tier_purged_total",
            "counter",
            "L2 copies dropped on read because a purge covered them",
            |t| t.purged,
        ),
        (
            "cachet_cache_tier_purges_fell_behind_total",
            "counter",
            "Times purges came faster than this node applied them, past [cache.shared] purge_backlog (it read the kept purges again)",
            |t| t.purges_fell_behind,
        ),
        (
            "cachet_cache_tier_purges_not_resent_total",
            "counter",
            "This node's purges Redis did not take and that were dropped, past [cache.shared] purge_backlog waiting, before Redis came back",
            |t| t.purges_not_resent,
        ),
        (
            "cachet_cache_tier_stored_bytes",
            "gauge",
            "Bytes an L2 tier holds (disk: its files; shared: the Redis server's used_memory)",
            |t| t.stored_bytes,
        ),
        (
            "cachet_cache_tier_objects",
            "gauge",
            "Objects in an L2 tier (disk: its index; shared: keys in the Redis database)",
            |t| t.objects,
        ),
        (
            "cachet_cache_tier_purges_to_resend",
            "gauge",
            "This node's purges Redis did not take, waiting to be sent again",
            |t| t.purges_to_resend,
        ),
    ];
    for (name, kind, help, field) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for t in &cache.tiers {
            let _ = writeln!(out, "{name}{{tier=\"{}\"}} {}", t.name, field(t));
        }
    }
}

fn render_cache(out: &mut String, cache: &StorageStats) {
    type Field = fn(&crate::storage::PartitionStats) -> u64;
    let families: [(&str, &str, &str, Field); 5] = [
        (
            "cachet_cache_stored_bytes",
            "gauge",
            "Bytes stored (headers and bodies)",
            |p| p.stored_bytes,
        ),
        ("cachet_cache_objects", "gauge", "Objects stored", |p| {
            p.objects
        }),
        (
            "cachet_cache_evictions_total",
            "counter",
            "Objects evicted to stay within a byte budget",
            |p| p.evictions,
        ),
        (
            "cachet_cache_inserts_total",
            "counter",
            "Objects written to the cache",
            |p| p.inserts,
        ),
        (
            "cachet_cache_rejected_oversize_total",
            "counter",
            "Responses too large to store",
            |p| p.rejected_oversize,
        ),
    ];
    for (name, kind, help, per_tenant) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for p in &cache.partitions {
            let _ = writeln!(out, "{name}{{tenant=\"{}\"}} {}", p.name, per_tenant(p));
        }
    }
    let _ = writeln!(
        out,
        "# HELP cachet_cache_budget_bytes Byte budget of the cache\n# TYPE cachet_cache_budget_bytes gauge\ncachet_cache_budget_bytes {}",
        cache.budget_bytes
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counted(tenant: &str, outcome: &str) -> u64 {
        REQUESTS.with_label_values(&[tenant, outcome]).get()
    }

    #[test]
    fn resolved_counters_count_in_the_shared_series() {
        let counters = RequestCounters::new("resolved-test");
        for outcome in REQUEST_OUTCOMES {
            let before = counted("resolved-test", outcome);
            counters.count(outcome);
            assert_eq!(counted("resolved-test", outcome), before + 1, "{outcome}");
        }
        // An outcome outside the list is still counted, under its own label.
        counters.count("not-listed");
        assert_eq!(counted("resolved-test", "not-listed"), 1);
    }
}
