//! The admin listener (loopback by default): `GET /status` as JSON,
//! `GET /metrics` in the Prometheus text format, `POST /reload`, and
//! `POST /purge` with a `Surrogate-Key` header to purge tags in every tenant,
//! `POST /promote?tenant=NAME` to make a tenant's shadow plugin live, and
//! `POST /explain` to dry-run a request (JSON body, see [`crate::proxy::ExplainQuery`]).

use crate::proxy::directives::SURROGATE_KEY;
use crate::proxy::purge::SOFT_HEADER;
use crate::proxy::{ExplainQuery, ProxyState};
use crate::reload::{Outcome, Reloader};
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
                            "contract": plugin.contract_version(),
                            "fresh_state": info.state_reset.describe(),
                            "last_refusal": refusal_json(tenant.last_refusal()),
                        })
                    }
                    None => json!({ "builtin": tenant.config.plugin, "generation": tenant.generation() }),
                };
                json!({
                    "name": tenant.name(),
                    "hosts": tenant.config.hosts,
                    "upstream": tenant.config.upstream_name,
                    "pool": pool_json(tenant),
                    "origin": origin_json(tenant),
                    "plugin": plugin,
                    "promoted": tenant.promoted(),
                    "shadow": shadow_json(tenant),
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
                "waiting_for_restart": self.reloader.waiting_for_restart(),
            },
            "tenants": tenants,
            "tls": tls_json(&self.reloader),
            "cache": {
                "max_bytes": stats.budget_bytes,
                "budget_bytes": stats.budget_bytes,
                "stored_bytes": stats.stored_bytes,
                "objects": stats.objects,
                "evictions": stats.evictions,
                "inserts": stats.inserts,
                "rejected_oversize": stats.rejected_oversize,
                // Counted only where L2 tiers exist: without them every hit is L1's.
                "l1_hits": (!stats.tiers.is_empty()).then_some(stats.l1_hits),
                // The L2 tiers in lookup order (empty without [cache.disk] / [cache.shared]).
                "tiers": stats.tiers,
            },
        })
    }
}

/// A tenant's exchanges with its origin in flight, against `max_connections`.
fn origin_json(tenant: &crate::tenant::Tenant) -> serde_json::Value {
    let (in_flight, max) = tenant.upstream.origin_turns();
    json!({
        "in_flight": in_flight,
        "max_connections": max,
        "refused": crate::metrics::origin_refused_total(tenant.name()),
    })
}

/// A tenant's upstream pool: each address, healthy or not, and the last check.
fn pool_json(tenant: &crate::tenant::Tenant) -> serde_json::Value {
    let Some(health) = tenant.upstream.health(&tenant.config) else {
        return serde_json::Value::Null;
    };
    let upstreams: Vec<_> = health
        .upstreams
        .iter()
        .map(|u| {
            json!({
                "upstream": u.upstream,
                "address": u.address,
                "healthy": u.healthy,
                "set_aside": u.set_aside,
            })
        })
        .collect();
    json!({
        "last_health_check": health.last_check.map(unix_seconds),
        "upstreams": upstreams,
    })
}

/// The TLS listener's certificates: what each serves and its last refused reload.
fn tls_json(reloader: &Reloader) -> serde_json::Value {
    let store = reloader.certificates();
    let mut refusals = store.refusals();
    let current = store.current();
    let certificates: Vec<serde_json::Value> = current
        .iter()
        .map(|(owner, cert)| {
            json!({
                "certificate": owner.to_string(),
                "cert": cert.paths.cert,
                "key": cert.paths.key,
                "sha256": cert.fingerprint,
                "names": cert.names,
                "not_after": cert.not_after,
                "expired": cert.expired(),
                "loaded_at": unix_seconds(cert.loaded_at),
                "last_refusal": refusal_json(refusals.remove(owner)),
            })
        })
        .collect();
    let listen = reloader.config().server.listener.tls_listen;
    json!({ "listen": listen, "certificates": certificates })
}

/// A tenant's shadow plugin and how its answers compared with the live plugin's.
fn shadow_json(tenant: &crate::tenant::Tenant) -> serde_json::Value {
    let Some(shadow) = tenant.shadow() else {
        return serde_json::Value::Null;
    };
    let info = &shadow.plugin().info;
    let mut doc = shadow.record().to_json();
    doc["path"] = json!(info.path);
    doc["sha256"] = json!(info.sha256);
    doc["sample"] = json!(shadow.sample());
    doc["loaded_at"] = json!(unix_seconds(info.loaded_at));
    doc
}

/// Without a token the admin listener is on loopback, open to the tools of this machine, but
/// a browser on it can be made to send requests there too: by any web page (a form's POST
/// needs no preflight), and by one whose name it points at 127.0.0.1 (DNS rebinding), which
/// can then read the answers. Those requests carry an `Origin`, or name another host: why
/// `req` is refused, or `None` (a tool's request; one with no `Host` is no browser's).
fn through_a_browser(req: &pingora::http::RequestHeader) -> Option<String> {
    if req.headers.contains_key(http::header::ORIGIN) {
        return Some("the request carries Origin (a web page's)".into());
    }
    let host = req.headers.get(http::header::HOST)?;
    let named = host.to_str().ok().filter(|host| names_this_machine(host));
    named.is_none().then(|| {
        format!(
            "Host {:?} names no loopback address",
            String::from_utf8_lossy(host.as_bytes())
        )
    })
}

/// Whether a `Host` value is `localhost` or a loopback address, with or without a port.
fn names_this_machine(host: &str) -> bool {
    let is_port = |port: &str| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
    let name = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split_once(']').and_then(|(name, rest)| {
            (rest.is_empty() || rest.strip_prefix(':').is_some_and(is_port)).then_some(name)
        }),
        None => Some(match host.rsplit_once(':') {
            Some((name, port)) if is_port(port) => name,
            _ => host,
        }),
    };
    name.is_some_and(|name| {
        name.eq_ignore_ascii_case("localhost")
            || name
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    })
}

/// A sha256 as `cachet status` shows it (12 hex digits) or longer, up to the whole of one.
pub fn is_sha256_prefix(hex: &str) -> bool {
    (12..=64).contains(&hex.len()) && hex.bytes().all(|b| b.is_ascii_hexdigit())
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

/// 405 with the `Allow` field RFC 9110 §15.5.6 asks for: the one method `path` answers.
fn method_not_allowed(path: &str) -> Response<Vec<u8>> {
    let allowed = match path {
        "/reload" | "/purge" | "/promote" | "/explain" => "POST",
        _ => "GET",
    };
    let mut response = text_reply(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    response
        .headers_mut()
        .insert(http::header::ALLOW, http::HeaderValue::from_static(allowed));
    response
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
        if self.state.admin_token.load().is_none() {
            if let Some(refused) = through_a_browser(req) {
                return text_reply(
                    StatusCode::FORBIDDEN,
                    &format!(
                        "with no admin_token, the admin API answers only tools on this machine \
                         (Host a loopback address or localhost, no Origin): {refused}\n"
                    ),
                );
            }
        } else {
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
                    Ok(refused) if refused.is_empty() => json_reply(&self.status()),
                    // A script must tell "applied" from "refused": the running versions
                    // keep serving, and the answer names what was refused and why.
                    Ok(refused) => text_reply(
                        StatusCode::CONFLICT,
                        &format!(
                            "refused, the running versions keep serving:\n{}\n",
                            refused.join("\n")
                        ),
                    ),
                    Err(e) => text_reply(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &format!("reload failed: {e}\n"),
                    ),
                }
            }
            ("POST", "/purge") => purge_tags(&self.state, &req.headers).await,
            ("POST", "/promote") => self.promote(req.uri.query()).await,
            ("POST", "/explain") => self.explain(session).await,
            (
                _,
                path @ ("/status" | "/cache" | "/metrics" | "/reload" | "/purge" | "/promote"
                | "/explain"),
            ) => method_not_allowed(path),
            _ => text_reply(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

/// Largest `POST /explain` body read.
const MAX_EXPLAIN_BODY: usize = 64 << 10;

impl AdminApp {
    /// `POST /promote?tenant=NAME[&sha256=HEX]`: the shadow goes live after the checks of a
    /// reload (only if it is still the version `sha256` names, when given).
    async fn promote(&self, query: Option<&str>) -> Response<Vec<u8>> {
        let param = |name: &str| {
            query
                .unwrap_or("")
                .split('&')
                .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
                .map(str::to_owned)
        };
        let tenant = param("tenant").unwrap_or_default();
        let expected_sha256 = param("sha256");
        if expected_sha256
            .as_deref()
            .is_some_and(|hex| !is_sha256_prefix(hex))
        {
            return text_reply(
                StatusCode::BAD_REQUEST,
                "sha256= takes the shadow's sha256 in hex, at least its first 12 digits\n",
            );
        }
        if tenant.is_empty() {
            return text_reply(StatusCode::BAD_REQUEST, "POST /promote?tenant=NAME\n");
        }
        if !self
            .reloader
            .config()
            .tenants
            .iter()
            .any(|t| t.name == tenant)
        {
            return text_reply(
                StatusCode::NOT_FOUND,
                &format!("no tenant named {tenant:?}\n"),
            );
        }
        let reloader = self.reloader.clone();
        // The checks run the plugin's self-tests: keep them off the async workers.
        let done = tokio::task::spawn_blocking(move || {
            reloader.promote(&tenant, expected_sha256.as_deref())
        })
        .await;
        match done {
            Ok(Outcome::Applied) => json_reply(&self.status()),
            Ok(Outcome::Refused(reason)) => {
                text_reply(StatusCode::CONFLICT, &format!("{reason}\n"))
            }
            Ok(Outcome::Unchanged) => json_reply(&self.status()),
            Err(e) => text_reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("promote failed: {e}\n"),
            ),
        }
    }

    /// `POST /explain`: the dry run of one request, as JSON.
    async fn explain(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) if body.len() + chunk.len() <= MAX_EXPLAIN_BODY => {
                    body.extend_from_slice(&chunk)
                }
                Ok(Some(_)) => {
                    return text_reply(StatusCode::PAYLOAD_TOO_LARGE, "explain body over 64KiB\n")
                }
                Ok(None) => break,
                Err(e) => {
                    return text_reply(StatusCode::BAD_REQUEST, &format!("cannot read body: {e}\n"))
                }
            }
        }
        let query: ExplainQuery = match serde_json::from_slice(&body) {
            Ok(query) => query,
            Err(e) => {
                return text_reply(
                    StatusCode::BAD_REQUEST,
                    &format!(
                    "POST /explain wants {{\"url\": ..., \"headers\": [\"Name: value\"]}}: {e}\n"
                ),
                )
            }
        };
        match crate::proxy::explain(&self.state, &query).await {
            Ok(doc) => json_reply(&doc),
            Err(reason) => text_reply(StatusCode::BAD_REQUEST, &format!("{reason}\n")),
        }
    }
}

/// Removes (or with `Cache-Purge-Soft: 1` marks stale) every entry, in every tenant, tagged with
/// any of the `Surrogate-Key` header's tags.
async fn purge_tags(state: &ProxyState, headers: &http::HeaderMap) -> Response<Vec<u8>> {
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
    // Every tenant is purged, even after a tier failed to record one of them.
    let results: Vec<_> = state
        .router
        .load()
        .tenants()
        .iter()
        .map(|tenant| state.cache.storage.purge_tags(tenant.name(), &tags, soft))
        .collect();
    // Reported done only once the other nodes can see it.
    let mut purged = 0;
    let mut not_kept = None;
    for result in results {
        match result {
            Ok(receipt) => match receipt.confirmed().await {
                Ok(affected) => purged += affected,
                Err(e) => not_kept = Some(e),
            },
            Err(e) => not_kept = Some(e),
        }
    }
    if let Some(not_kept) = not_kept {
        let text = crate::proxy::purge::not_kept_text(&not_kept);
        return text_reply(StatusCode::SERVICE_UNAVAILABLE, &text);
    }
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

/// The metrics listener: `GET /metrics` only (other methods 405), no token (bind it to loopback
/// or a scrape network).
pub struct MetricsApp {
    pub state: Arc<ProxyState>,
}

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        // On loopback the listener is this machine's, and a local browser must not read it
        // for a web page (DNS rebinding), as the admin API without a token. On a scrape
        // network the scraper names the listener by its address or its own name.
        let on_loopback = session
            .server_addr()
            .and_then(|addr| addr.as_inet())
            .is_some_and(|addr| addr.ip().is_loopback());
        let refused = on_loopback
            .then(|| through_a_browser(session.req_header()))
            .flatten();
        if let Some(refused) = refused {
            return text_reply(
                StatusCode::FORBIDDEN,
                &format!(
                    "a metrics listener on loopback answers only tools on this machine \
                     (Host a loopback address or localhost, no Origin): {refused}\n"
                ),
            );
        }
        let req = session.req_header();
        match (req.method.as_str(), req.uri.path()) {
            ("GET", "/metrics") => metrics_reply(&self.state),
            // As on the admin listener: a scrape reads, and nothing else is answered as one.
            (_, path @ "/metrics") => method_not_allowed(path),
            _ => text_reply(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_names_are_this_machine() {
        for host in [
            "127.0.0.1",
            "127.0.0.1:9090",
            "127.8.9.1:1",
            "localhost",
            "LocalHost:9090",
            "[::1]",
            "[::1]:9090",
        ] {
            assert!(names_this_machine(host), "{host}");
        }
        for host in [
            "attacker.example",
            "attacker.example:9090",
            "localhost.attacker.example",
            "10.0.0.1:9090",
            "[::1]x",
            "[::1]:",
            "[2001:db8::1]:9090",
            "::1",
            "",
        ] {
            assert!(!names_this_machine(host), "{host}");
        }
    }
}
