//! What operators see of a shadow: counts per hook and result, and the last disagreeing
//! requests with both outputs. Only the method, host and path of a request are kept — never
//! its body, its query, and never a cookie or credential value, even inside a cache key.

use super::compare::{Comparison, Outcome};
use super::HOOKS;
use parking_lot::Mutex;
use pingora::http::RequestHeader;
use serde_json::json;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// How many disagreeing (or faulting) requests are kept.
pub const KEPT_DISAGREEMENTS: usize = 32;
/// Longest path or output text kept.
const MAX_TEXT: usize = 512;

const RESULTS: [&str; 3] = ["agree", "disagree", "fault"];

/// One request on which the shadow answered differently (or faulted).
#[derive(Debug, Clone)]
pub struct Disagreement {
    pub at: SystemTime,
    pub hook: &'static str,
    pub result: &'static str,
    pub method: String,
    pub host: String,
    pub path: String,
    pub live: String,
    pub shadow: String,
}

/// Counts per hook and result, and the last [`KEPT_DISAGREEMENTS`] disagreements.
#[derive(Default)]
pub struct ShadowRecord {
    counts: [[AtomicU64; 3]; 3],
    recent: Mutex<VecDeque<Disagreement>>,
}

impl ShadowRecord {
    pub(super) fn note(&self, tenant: &str, request: &RequestHeader, outcome: Outcome) {
        let (result, texts) = match outcome.result {
            Comparison::Agree => (0, None),
            Comparison::Disagree(live, shadow) => (1, Some((live, shadow))),
            Comparison::Fault(live, fault) => (2, Some((live, format!("fault: {fault}")))),
        };
        let hook = HOOKS.iter().position(|h| *h == outcome.hook).unwrap_or(0);
        self.counts[hook][result].fetch_add(1, Ordering::Relaxed);
        crate::metrics::shadow_decision(tenant, HOOKS[hook], RESULTS[result]);
        let Some((live, shadow)) = texts else { return };
        let secrets = Secrets::of(request);
        let entry = Disagreement {
            at: SystemTime::now(),
            hook: HOOKS[hook],
            result: RESULTS[result],
            method: request.method.as_str().to_owned(),
            host: clip(&secrets.hide(&crate::policy::request_host(request))),
            path: clip(&secrets.hide(request.uri.path())),
            live: clip(&secrets.hide(&live)),
            shadow: clip(&secrets.hide(&shadow)),
        };
        let mut recent = self.recent.lock();
        if recent.len() == KEPT_DISAGREEMENTS {
            recent.pop_front();
        }
        recent.push_back(entry);
    }

    /// How many comparisons of `hook` ended in `result` (agree, disagree, fault).
    pub fn count(&self, hook: &str, result: &str) -> u64 {
        let hook = HOOKS.iter().position(|h| *h == hook);
        let result = RESULTS.iter().position(|r| *r == result);
        match (hook, result) {
            (Some(h), Some(r)) => self.counts[h][r].load(Ordering::Relaxed),
            _ => 0,
        }
    }

    /// The last disagreements, oldest first.
    pub fn recent(&self) -> Vec<Disagreement> {
        self.recent.lock().iter().cloned().collect()
    }

    /// The `/status` form: counts per hook, and the recent disagreements.
    pub fn to_json(&self) -> serde_json::Value {
        let hooks: serde_json::Map<String, serde_json::Value> = HOOKS
            .iter()
            .map(|hook| {
                let counts: serde_json::Map<String, serde_json::Value> = RESULTS
                    .iter()
                    .map(|r| ((*r).to_owned(), json!(self.count(hook, r))))
                    .collect();
                ((*hook).to_owned(), counts.into())
            })
            .collect();
        let recent: Vec<_> = self
            .recent()
            .iter()
            .map(|d| {
                json!({
                    "at": d.at.duration_since(UNIX_EPOCH).map_or(0, |t| t.as_secs()),
                    "hook": d.hook,
                    "result": d.result,
                    "method": d.method,
                    "host": d.host,
                    "path": d.path,
                    "live": d.live,
                    "shadow": d.shadow,
                })
            })
            .collect();
        json!({ "hooks": hooks, "recent_disagreements": recent })
    }
}

fn clip(text: &str) -> String {
    text.chars().take(MAX_TEXT).collect()
}

/// The request's cookie values and credentials, which a plugin may have copied into a key
/// or a reason: they are replaced before anything is kept.
struct Secrets(Vec<String>);

const HIDDEN: &str = "[hidden]";

impl Secrets {
    fn of(request: &RequestHeader) -> Self {
        let mut values = Vec::new();
        for value in request.headers.get_all(http::header::COOKIE) {
            let text = String::from_utf8_lossy(value.as_bytes());
            for pair in text.split(';') {
                let value = pair.split_once('=').map_or(pair, |(_, v)| v).trim();
                values.push(value.to_owned());
            }
            values.push(text.trim().to_owned());
        }
        for name in [
            http::header::AUTHORIZATION,
            http::header::PROXY_AUTHORIZATION,
        ] {
            for value in request.headers.get_all(name) {
                let text = String::from_utf8_lossy(value.as_bytes()).trim().to_owned();
                if let Some((_, credentials)) = text.split_once(' ') {
                    values.push(credentials.trim().to_owned());
                }
                values.push(text);
            }
        }
        values.retain(|v| !v.is_empty());
        // Longest first, so a whole header goes before the pieces it contains.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        Self(values)
    }

    fn hide(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for secret in &self.0 {
            out = out.replace(secret.as_str(), HIDDEN);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::Secrets;
    use pingora::http::RequestHeader;

    #[test]
    fn cookie_and_credential_values_are_hidden() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("Cookie", "session=s3cr3t; theme=dark")
            .unwrap();
        req.insert_header("Authorization", "Bearer tok-123")
            .unwrap();
        let secrets = Secrets::of(&req);
        let hidden = secrets.hide(r#"cache, key ["/", "s3cr3t", "Bearer tok-123", "dark"]"#);
        assert!(!hidden.contains("s3cr3t"), "{hidden}");
        assert!(!hidden.contains("tok-123"), "{hidden}");
        assert!(!hidden.contains("dark"), "{hidden}");
        assert!(hidden.contains("[hidden]"));
    }
}
