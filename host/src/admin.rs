//! The admin listener (loopback by default): `GET /status` as JSON and
//! `GET /metrics` in the Prometheus text format.

use crate::proxy::ProxyState;
use crate::reload::Reloader;
use crate::tenant::Refusal;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

pub struct AdminApp {
    pub state: Arc<ProxyState>,
    pub reloader: Arc<Reloader>,
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn refusal_json(r: Option<Refusal>) -> serde_json::Value {
    r.map_or(
        serde_json::Value::Null,
        |r| json!({ "at": unix_seconds(r.at), "sha256": r.sha256, "reason": r.reason }),
    )
}

impl AdminApp {
    /// The status document: each tenant with its loaded plugin, and the cache.
    pub fn status(&self) -> serde_json::Value {
        let router = self.state.router.load();
        let stats = self.state.cache.storage.stats();
        let tenants: Vec<_> = router
            .tenants()
            .iter()
            .map(|tenant| {
                let policy = tenant.policy();
                let plugin = match policy.plugin() {
                    Some(plugin) => {
                        let info = &plugin.info;
                        json!({
                            "path": info.path,
                            "sha256": info.sha256,
                            "generation": tenant.generation(),
                            "size_bytes": info.size_bytes,
                            "compile_ms": info.compile_time.as_secs_f64() * 1000.0,
                            "from_artifact_cache": info.from_artifact_cache,
                            "loaded_at": unix_seconds(info.loaded_at),
                            "imports": info.imports,
                            "last_refusal": refusal_json(tenant.last_refusal()),
                        })
                    }
                    None => json!({ "builtin": tenant.config.plugin, "generation": tenant.generation() }),
                };
                json!({
                    "name": tenant.name(),
                    "hosts": tenant.config.hosts,
                    "upstream": tenant.config.upstream_name,
                    "plugin": plugin,
                    "cache": stats.partitions.iter().find(|p| p.name == tenant.name()).map(|p| json!({
                        "quota_bytes": p.budget_bytes,
                        "stored_bytes": p.stored_bytes,
                        "objects": p.objects,
                        "evictions": p.evictions,
                    })),
                })
            })
            .collect();
        json!({
            "config": {
                "path": self.reloader.config_path(),
                "watching": self.reloader.watching(),
                "last_refusal": refusal_json(self.reloader.last_config_refusal()),
            },
            "tenants": tenants,
            "cache": {
                "max_bytes": stats.budget_bytes,
                "stored_bytes": stats.stored_bytes,
                "objects": stats.objects,
                "evictions": stats.evictions,
                "inserts": stats.inserts,
                "rejected_oversize": stats.rejected_oversize,
            },
        })
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_owned();
        let (status, content_type, body) = match path.as_str() {
            "/status" => (
                StatusCode::OK,
                "application/json",
                serde_json::to_vec_pretty(&self.status()).unwrap_or_default(),
            ),
            "/metrics" => (
                StatusCode::OK,
                "text/plain; version=0.0.4",
                crate::metrics::render().into_bytes(),
            ),
            _ => (StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec()),
        };
        Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, content_type)
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(body)
            .unwrap_or_default()
    }
}
