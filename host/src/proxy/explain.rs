//! `cachet explain`: the steps a request would go through, dry-run inside the running proxy —
//! tenant routing, the live plugin's `on-request` and `cache-key`, the storage lookup and the
//! stored entry's freshness. Nothing is sent to an origin and nothing is stored.

use super::{cache_key, shared, ProxyState};
use crate::policy::{AddedFields, PluginFault, RequestDecision};
use pingora::http::RequestHeader;
use pingora_cache::predictor::CacheablePredictor;
use pingora_cache::CacheMeta;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::{Duration, SystemTime};

/// Most request headers an explain request may carry.
const MAX_HEADERS: usize = 100;

/// What to explain: a URL as clients request it, and the request headers to add.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainQuery {
    pub url: String,
    #[serde(default)]
    pub method: Option<String>,
    /// `Name: value` lines, as given to `cachet explain -H`.
    #[serde(default)]
    pub headers: Vec<String>,
}

/// The client the explained request comes from, for its forwarding fields: an explanation
/// has none of its own.
const EXPLAINED_CLIENT: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// The explanation as a JSON document: `steps` in order (each a step name and what it found),
/// and the main findings as fields (`tenant`, `decision`, `key`, `entry`, `verdict`).
pub async fn explain(state: &ProxyState, query: &ExplainQuery) -> Result<Value, String> {
    let request = build_request(query, state.unusual_field_names)?;
    let only_if_cached = super::only_if_cached::requested(&request);
    let mut doc = explain_request(state, query, request).await?;
    if only_if_cached {
        only_stored(&mut doc);
    }
    Ok(doc)
}

/// `Cache-Control: only-if-cached` (RFC 9111 §5.2.1.7): where the request would have gone to
/// the origin, the proxy answers 504 instead (`only_if_cached::allow_origin`).
fn only_stored(doc: &mut Value) {
    let verdict = doc["verdict"].as_str().unwrap_or_default();
    let served = ["hit", "stale hit", "answered", "plugin fault"]
        .iter()
        .any(|served| verdict.starts_with(served));
    if !served {
        doc["verdict"] = json!(format!(
            "answered 504 by the host: only-if-cached, and the request would go to the \
             origin ({verdict})"
        ));
    }
}

async fn explain_request(
    state: &ProxyState,
    query: &ExplainQuery,
    request: RequestHeader,
) -> Result<Value, String> {
    let mut steps = Steps::default();
    let host = crate::policy::request_host(&request);
    let router = state.router.load_full();
    let Some(tenant) = router.route(&host) else {
        steps.add(
            "route",
            format!("no tenant serves host {host:?}: answered 421"),
        );
        return Ok(steps.finish(json!({ "tenant": null, "verdict": "no tenant" })));
    };
    steps.add(
        "route",
        format!(
            "host {host:?} -> tenant {} (hosts {:?})",
            tenant.name(),
            tenant.config.hosts
        ),
    );
    let policy = tenant.policy();
    // As the proxy plans it: the forwarding fields of a client at this address (shown to
    // the plugin as the proxy shows them), the plugin's edits applied (the key and the
    // origin see the edited request), its backend checked.
    let mut request = request;
    // build_request accepted only http and https URLs.
    let https = query
        .url
        .trim_start()
        .get(..6)
        .is_some_and(|s| s.eq_ignore_ascii_case("https:"));
    let mode = state.forwarded_headers;
    let told_scheme = super::forwarded::settle_client_claims(mode, &mut request, https);
    super::request_fields::canonical_host(&mut request, &told_scheme);
    if !super::framing::only_chunked(&request.headers) {
        let verdict = "answered 501 by the host: a transfer coding other than chunked";
        steps.add("host rules", verdict.into());
        return Ok(steps.finish(json!({ "tenant": tenant.name(), "verdict": verdict })));
    }
    let hop = super::forwarded::Hop {
        client: EXPLAINED_CLIENT,
        tls: https,
    };
    let mut pending = super::forwarded::fields(mode, &request, &hop);
    if !pending.is_empty() {
        steps.add(
            "forwarding",
            format!("fields as for a client at {EXPLAINED_CLIENT} (forwarded_headers = {mode:?})"),
        );
    }
    if policy.reads_added_fields() == AddedFields::ReadFromTheRequest {
        std::mem::take(&mut pending).apply(&mut request);
    }
    let original_target = request.uri.clone();
    let planned = policy
        .plan_request(&mut request, &mut pending)
        .and_then(|outcome| {
            let unknown = outcome
                .backend
                .as_ref()
                .filter(|name| !tenant.config.backends.iter().any(|(n, _)| n == *name));
            match unknown {
                Some(name) => Err(PluginFault::InvalidOutput(format!(
                    "backend {name:?} is not one of the tenant's [tenant.backends]"
                ))),
                None => Ok(outcome),
            }
        });
    let (decision, parts) = match planned {
        Ok(outcome) => {
            if let Some(backend) = &outcome.backend {
                steps.add(
                    "backend",
                    format!("the plugin sends it to backend {backend:?}"),
                );
            }
            if request.uri != original_target {
                steps.add("edits", format!("the origin is sent {}", request.uri));
            }
            outcome.verdict
        }
        Err(fault) => {
            steps.add("on-request", format!("plugin fault: {fault}"));
            let verdict = format!(
                "plugin fault: the tenant's on_plugin_error ({:?}) applies",
                tenant.config.on_plugin_error
            );
            return Ok(steps.finish(json!({ "tenant": tenant.name(), "verdict": verdict })));
        }
    };
    let common = |decision: &str, key: Option<String>| json!({ "tenant": tenant.name(), "decision": decision, "key": key });
    let parts = match decision {
        RequestDecision::Cache => parts.unwrap_or_default(),
        RequestDecision::Bypass(reason) => {
            steps.add("on-request", format!("bypass ({reason})"));
            let mut doc = common("bypass", None);
            doc["verdict"] = json!(format!("sent to the origin without the cache: {reason}"));
            return Ok(steps.finish(doc));
        }
        RequestDecision::Respond(resp) => {
            steps.add("on-request", format!("respond {}", resp.status));
            let mut doc = common("respond", None);
            doc["verdict"] = json!(format!("answered by the plugin with {}", resp.status));
            return Ok(steps.finish(doc));
        }
    };
    steps.add("on-request", "cache".into());
    let key = cache_key::primary_key(tenant.name(), &told_scheme, &parts);
    let described = cache_key::describe(&key);
    steps.add("cache-key", format!("{parts:?} -> key {described:?}"));
    let mut doc = common("cache", Some(described));
    let too_long = || crate::policy::key_too_long(&parts, &tenant.config.limits);
    if let Some(reason) = super::request::host_rules(&request, false).or_else(too_long) {
        let verdict = format!("{reason}: sent to the origin without the cache");
        steps.add("host rules", verdict.clone());
        doc["verdict"] = json!(verdict);
        return Ok(steps.finish(doc));
    }

    let cache_key = cache_key::storage_key(key, tenant.name());
    // Marked uncacheable (hit-for-miss), or passed by the plugin (hit-for-pass): the proxy
    // skips the lookup, whatever is stored.
    if state
        .cache
        .uncacheable
        .is_some_and(|records| !records.of(tenant.name()).cacheable_prediction(&cache_key))
    {
        let verdict = "pass: the URL's last response could not be stored, or the plugin \
                       passes it for a while (hit-for-pass); the request goes to the origin \
                       without a lookup, and a storable answer ends the mark";
        steps.add("uncacheable mark", "set".into());
        doc["verdict"] = json!(verdict);
        return Ok(steps.finish(doc));
    }
    let found = state
        .cache
        .storage
        .peek(&cache_key)
        .await
        .map_err(|e| format!("storage lookup failed: {e}"))?;
    let Some((meta, tier)) = found else {
        steps.add("lookup", "no entry for this key".into());
        doc["entry"] = Value::Null;
        doc["verdict"] =
            json!("miss: no entry, the request would go to the origin and may be stored");
        return Ok(steps.finish(doc));
    };
    let entry = Entry::of(&meta, SystemTime::now());
    steps.add(
        "lookup",
        format!(
            "entry found: status {}, age {}s, ttl {}s (tier {tier})",
            entry.status, entry.age, entry.ttl
        ),
    );
    steps.add("freshness", entry.freshness_text());
    let verdict = if shared::may_serve(&request, meta.response_header()) {
        entry.verdict()
    } else {
        "not served: the request carries Authorization and the stored response is not \
         explicitly shareable (public, s-maxage or must-revalidate); it would go to the origin"
            .to_owned()
    };
    doc["entry"] = entry.to_json();
    doc["verdict"] = json!(verdict);
    Ok(steps.finish(doc))
}

/// The request the proxy would see for the URL and headers.
fn build_request(
    query: &ExplainQuery,
    field_names: crate::config::UnusualFieldNames,
) -> Result<RequestHeader, String> {
    let uri: http::Uri = query
        .url
        .parse()
        .map_err(|e| format!("{:?} is not a URL: {e}", query.url))?;
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{:?}: give an absolute URL (http://host/path)", query.url))?;
    // What the proxy refuses is not explained as if it were served.
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!(
            "{:?}: the proxy serves http(s) URLs only",
            query.url
        ));
    }
    crate::proxy::refuse_userinfo(&uri, &query.url)?;
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let method = query.method.as_deref().unwrap_or("GET");
    if method.eq_ignore_ascii_case("PURGE") {
        return Err("a PURGE is not looked up in the cache: it removes what is stored".into());
    }
    let mut request = RequestHeader::build(method, target.as_bytes(), None)
        .map_err(|e| format!("cannot build the request: {e}"))?;
    request
        .insert_header(http::header::HOST, authority.as_str())
        .map_err(|e| format!("bad host: {e}"))?;
    if query.headers.len() > MAX_HEADERS {
        return Err(format!("at most {MAX_HEADERS} headers"));
    }
    for line in &query.headers {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("header {line:?} is not `Name: value`"))?;
        let name = http::HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("header name in {line:?} is not valid"))?;
        let value = http::HeaderValue::from_str(value.trim())
            .map_err(|_| format!("header value in {line:?} is not valid"))?;
        // A given Host replaces the URL's; other names add a field.
        let added = if name == http::header::HOST {
            request.insert_header(name, value)
        } else {
            request.append_header(name, value).map(|_| ())
        };
        added.map_err(|e| format!("header {line:?}: {e}"))?;
    }
    super::request_fields::sanitize(&mut request, field_names)
        .map_err(|why| format!("the proxy would refuse this request (400): {why}"))?;
    Ok(request)
}

#[derive(Default)]
struct Steps(Vec<Value>);

impl Steps {
    fn add(&mut self, step: &str, detail: String) {
        self.0.push(json!({ "step": step, "detail": detail }));
    }

    fn finish(self, mut doc: Value) -> Value {
        doc["steps"] = Value::Array(self.0);
        doc
    }
}

/// A stored entry's timing, in whole seconds as `Age` and `Cache-Status` count them.
struct Entry {
    status: u16,
    /// Seconds since the response was generated (the `Age` a hit would carry).
    age: u64,
    /// Freshness lifetime, counted from the same origin.
    ttl: u64,
    /// Whether the entry is within its freshness lifetime (a soft purge ends it at once).
    fresh: bool,
    /// Whole seconds past the end of freshness (0 while fresh).
    stale_for: u64,
    stale_while_revalidate: u32,
    stale_if_error: u32,
    has_validator: bool,
}

impl Entry {
    fn of(meta: &CacheMeta, now: SystemTime) -> Self {
        let since = |from: SystemTime, to: SystemTime| {
            to.duration_since(from).unwrap_or(Duration::ZERO).as_secs()
        };
        let header = meta.response_header();
        let fresh = meta.is_fresh(now);
        Self {
            status: header.status.as_u16(),
            age: since(meta.created(), now),
            ttl: since(meta.created(), meta.fresh_until()),
            fresh,
            stale_for: if fresh {
                0
            } else {
                since(meta.fresh_until(), now)
            },
            stale_while_revalidate: meta.stale_while_revalidate_sec(),
            stale_if_error: meta.stale_if_error_sec(),
            has_validator: header.headers.contains_key(http::header::ETAG)
                || header.headers.contains_key(http::header::LAST_MODIFIED),
        }
    }

    /// Whole seconds stale compare with the windows as the exact time does: `< window`.
    fn state(&self) -> &'static str {
        if self.fresh {
            "fresh"
        } else if self.stale_for < u64::from(self.stale_while_revalidate) {
            "stale-while-revalidate"
        } else if self.stale_for < u64::from(self.stale_if_error) {
            "stale-if-error"
        } else {
            "expired"
        }
    }

    fn freshness_text(&self) -> String {
        match self.state() {
            "fresh" => format!(
                "fresh: {}s of {}s left",
                self.ttl.saturating_sub(self.age),
                self.ttl
            ),
            state => format!(
                "{state}: stale for {}s (stale-while-revalidate {}s, stale-if-error {}s)",
                self.stale_for, self.stale_while_revalidate, self.stale_if_error
            ),
        }
    }

    fn verdict(&self) -> String {
        let fetch = if self.has_validator {
            "revalidated with the origin (conditional request: the stored validator)"
        } else {
            "fetched again from the origin (no validator to revalidate with)"
        };
        match self.state() {
            "fresh" => "hit: served fresh from the cache".to_owned(),
            "stale-while-revalidate" => format!(
                "stale hit: served stale within stale-while-revalidate while it is {fetch} in the background"
            ),
            "stale-if-error" => format!(
                "miss: {fetch}; served stale only if the origin fails (stale-if-error)"
            ),
            _ => format!("miss: expired and past its stale windows; {fetch}"),
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "status": self.status,
            "age_s": self.age,
            "ttl_s": self.ttl,
            "stale_for_s": self.stale_for,
            "stale_while_revalidate_s": self.stale_while_revalidate,
            "stale_if_error_s": self.stale_if_error,
            "has_validator": self.has_validator,
            "state": self.state(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Entry;

    fn stale(stale_for: u64, swr: u32, sie: u32) -> &'static str {
        let entry = Entry {
            status: 200,
            age: 0,
            ttl: 0,
            fresh: false,
            stale_for,
            stale_while_revalidate: swr,
            stale_if_error: sie,
            has_validator: false,
        };
        entry.state()
    }

    #[test]
    fn an_entry_stale_for_under_a_second_is_not_fresh() {
        // A soft purge ends freshness now: zero whole seconds stale, still stale.
        assert_eq!(stale(0, 0, 0), "expired");
        assert_eq!(stale(0, 5, 0), "stale-while-revalidate");
    }

    #[test]
    fn whole_seconds_compare_with_the_windows_as_the_exact_time_does() {
        // 29.x s stale is inside a 30 s window; 30.x s is past it.
        assert_eq!(stale(29, 30, 0), "stale-while-revalidate");
        assert_eq!(stale(30, 30, 60), "stale-if-error");
        assert_eq!(stale(60, 30, 60), "expired");
    }
}
