//! The admin listener (loopback by default): `GET /status` as JSON,
//! `GET /metrics` in the Prometheus text format, `POST /reload`, and
//! `POST /purge` with a `Surrogate-Key` header to purge tags in every tenant.

use crate::proxy::directives::SURROGATE_KEY;
use crate::proxy::purge::SOFT_HEADER;
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
            "pid": std::process::id(),
            "config": {
                "path": self.reloader.config_path(),
                "watching": self.reloader.watching(),
                "last_refusal": refusal_json(self.reloader.last_config_refusal()),
            },
            "tenants": tenants,
            "cache": {
                "max_bytes": stats.budget_bytes,
                "budget_bytes": stats.budget_bytes,
                "stored_bytes": stats.stored_bytes,
                "objects": stats.objects,
                "evictions": stats.evictions,
                "inserts": stats.inserts,
                "rejected_oversize": stats.rejected_oversize,
            },
        })
    }
}

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut builder = Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len());
    if status == StatusCode::UNAUTHORIZED {
        builder = builder.header(
            http::header::WWW_AUTHENTICATE,
            "Bearer realm=\"cachet admin\"",
        );
    }
    builder.body(body).unwrap_or_default()
}

fn json_reply(value: &serde_json::Value) -> Response<Vec<u8>> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    reply(StatusCode::OK, "application/json", body)
}

fn text_reply(status: StatusCode, text: &str) -> Response<Vec<u8>> {
    reply(
        status,
        "text/plain; charset=utf-8",
        text.as_bytes().to_vec(),
    )
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        // With a token configured, every admin endpoint requires it.
        if self.state.admin_token.load().is_some() {
            let presented = req
                .headers
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes());
            if !self.state.admin_authorized(presented) {
                return text_reply(StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n");
            }
        }
        let method = req.method.clone();
        match (method.as_str(), req.uri.path()) {
            ("GET", "/status") => json_reply(&self.status()),
            ("GET", "/cache") => json_reply(&self.status()["cache"]),
            ("GET", "/metrics") => metrics_reply(&self.state),
            ("POST", "/reload") => {
                let reloader = self.reloader.clone();
                // Reloading compiles plugins: keep it off the async workers.
                let done = tokio::task::spawn_blocking(move || reloader.check_everything()).await;
                match done {
                    Ok(()) => json_reply(&self.status()),
                    Err(e) => text_reply(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &format!("reload failed: {e}\n"),
                    ),
                }
            }
            ("POST", "/purge") => purge_tags(&self.state, &req.headers),
            (_, "/status" | "/cache" | "/metrics" | "/reload" | "/purge") => {
                text_reply(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            _ => text_reply(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

/// Removes (or with `Cache-Purge-Soft: 1` marks stale) every entry, in every tenant, tagged with
/// any of the `Surrogate-Key` header's tags.
fn purge_tags(state: &ProxyState, headers: &http::HeaderMap) -> Response<Vec<u8>> {
    let tags: Vec<&str> = headers
        .get_all(SURROGATE_KEY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(str::split_ascii_whitespace)
        .collect();
    if tags.is_empty() {
        return text_reply(
            StatusCode::BAD_REQUEST,
            "POST /purge needs a Surrogate-Key header naming the tags\n",
        );
    }
    let soft = headers
        .get(SOFT_HEADER)
        .is_some_and(|v| v.as_bytes().trim_ascii() == b"1");
    let purged: usize = state
        .router
        .load()
        .tenants()
        .iter()
        .map(|tenant| state.cache.storage.purge_tags(tenant.name(), &tags, soft))
        .sum();
    if purged == 0 {
        return text_reply(StatusCode::NOT_FOUND, "nothing stored\n");
    }
    text_reply(StatusCode::OK, &format!("purged {purged}\n"))
}

fn metrics_reply(state: &ProxyState) -> Response<Vec<u8>> {
    let text = crate::metrics::render(&state.cache.storage.stats());
    reply(
        StatusCode::OK,
        "text/plain; version=0.0.4",
        text.into_bytes(),
    )
}

/// The metrics listener: `GET /metrics` only, no token (bind it to loopback
/// or a scrape network).
pub struct MetricsApp {
    pub state: Arc<ProxyState>,
}

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        match session.req_header().uri.path() {
            "/metrics" => metrics_reply(&self.state),
            _ => text_reply(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}
