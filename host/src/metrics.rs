//! Prometheus counters for operators, registered once per process.

use once_cell::sync::Lazy;
use prometheus::{IntCounterVec, Opts};

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
            "Requests by tenant and cache status",
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

fn register(metric: prometheus::Result<IntCounterVec>) -> IntCounterVec {
    // The names and labels above are constants: failing here is a programming
    // error caught by the first test that touches metrics.
    let metric = metric.expect("valid metric definition");
    // A second registration (e.g. two proxies in one test process) is harmless.
    let _ = prometheus::register(Box::new(metric.clone()));
    metric
}

pub fn plugin_fault(tenant: &str, kind: &str) {
    PLUGIN_FAULTS.with_label_values(&[tenant, kind]).inc();
}

pub fn reload(tenant: &str, result: &str) {
    RELOADS.with_label_values(&[tenant, result]).inc();
}

pub fn request(tenant: &str, cache_status: &str) {
    REQUESTS.with_label_values(&[tenant, cache_status]).inc();
}

/// Every registered metric in the Prometheus text format.
pub fn render() -> String {
    use prometheus::Encoder;
    let mut out = Vec::new();
    let encoder = prometheus::TextEncoder::new();
    if encoder.encode(&prometheus::gather(), &mut out).is_err() {
        return String::new();
    }
    String::from_utf8(out).unwrap_or_default()
}
