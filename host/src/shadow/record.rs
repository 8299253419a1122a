//! What operators see of a shadow: counts per hook and result, and the last disagreeing
//! requests with both outputs. Only the method, host and path of a request are kept — never
//! its body, its query's values, and never a cookie or credential value (Authorization,
//! and fields named like `X-Api-Key`), even inside a cache key.

use super::compare::{Comparison, Outcome};
use super::HOOKS;
use aho_corasick::AhoCorasick;
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
            // The Host and the path are the request's own, not where a plugin put a secret.
            host: clip(&crate::policy::request_host(request)),
            path: clip(request.uri.path()),
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

/// The request's cookie values, credentials and query values, which a plugin may have copied
/// into a key or a reason: they are hidden before anything is kept. A query keeps its names
/// and their order (`a=[hidden]&b=[hidden]`): how two keys order or filter parameters is what
/// a disagreement is usually about.
///
/// Every search is one Aho-Corasick pass over the text for all secrets at once, and a
/// request with more than [`MAX_SECRETS`] of them has its texts hidden whole: a client
/// controls how many secrets there are and how long, and searching each alone made one
/// request with a few hundred cookies cost seconds of a worker.
struct Secrets {
    /// Cookie values and credentials, as they may be written ([`as_written`]).
    words: Option<AhoCorasick>,
    /// The query's `name=value` pairs, and the length of each name.
    pairs: Option<(AhoCorasick, Vec<usize>)>,
    /// The query's values.
    values: Vec<String>,
    /// More secrets than are searched for: nothing of the texts is kept.
    too_many: bool,
}

/// Whether a request field carries a credential by the usual naming (the SDK's rule; Cookie
/// and Authorization are read apart: their values have parts).
fn names_a_credential(name: &str) -> bool {
    name != "authorization" && name != "proxy-authorization" && cachet_sdk::names_a_credential(name)
}

const HIDDEN: &str = "[hidden]";
/// Most cookie values, credentials and query pairs searched for in a request's texts.
const MAX_SECRETS: usize = 256;
const ALL_HIDDEN: &str =
    "[hidden: the request carries too many cookie, credential or query values to check]";

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
        for (name, value) in &request.headers {
            if names_a_credential(name.as_str()) {
                values.push(String::from_utf8_lossy(value.as_bytes()).trim().to_owned());
            }
        }
        let mut words: Vec<String> = values.iter().flat_map(|v| as_written(v)).collect();
        words.retain(|v| !v.is_empty());
        words.sort();
        words.dedup();
        let mut pairs: Vec<(String, String)> = request
            .uri
            .query()
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter_map(|pair| pair.split_once('='))
            .filter(|(_, value)| !value.is_empty())
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect();
        pairs.sort();
        pairs.dedup();
        let too_many = words.len() + pairs.len() > MAX_SECRETS;
        let matcher = |patterns: Vec<String>| {
            (!too_many && !patterns.is_empty())
                .then(|| AhoCorasick::new(patterns).ok())
                .flatten()
        };
        let name_lengths = pairs.iter().map(|(name, _)| name.len()).collect();
        let pair_texts = pairs.iter().map(|(n, v)| format!("{n}={v}")).collect();
        Self {
            words: matcher(words),
            pairs: matcher(pair_texts).map(|m| (m, name_lengths)),
            values: pairs.into_iter().map(|(_, value)| value).collect(),
            too_many,
        }
    }

    /// Hides every quoted string (a key part, a reason) that holds a secret, whole, so neither
    /// the secret nor where it sat shows; between quoted strings, the secret alone. A secret
    /// counts only as a whole word: a one-letter cookie value does not hide every word with
    /// that letter.
    fn hide(&self, text: &str) -> String {
        if self.too_many {
            return ALL_HIDDEN.to_owned();
        }
        let text = self.hide_query_values(text);
        let mut out = String::with_capacity(text.len());
        let mut rest = text.as_str();
        while let Some(open) = rest.find('"') {
            out.push_str(&self.hide_words(&rest[..open]));
            let quoted = &rest[open..];
            let close = closing_quote(quoted).map_or(quoted.len(), |end| end + 1);
            let (string, after) = quoted.split_at(close);
            let inner = string.get(1..close - 1);
            let is_query_value = self.values.iter().any(|v| inner == Some(v.as_str()));
            if is_query_value || !word_ranges(self.words.as_ref(), string).is_empty() {
                out.push_str(&format!("\"{HIDDEN}\""));
            } else {
                out.push_str(string);
            }
            rest = after;
        }
        out.push_str(&self.hide_words(rest));
        out
    }

    /// `name=value` of the request's query becomes `name=[hidden]` wherever it appears.
    fn hide_query_values(&self, text: &str) -> String {
        let Some((matcher, name_lengths)) = &self.pairs else {
            return text.to_owned();
        };
        let values: Vec<(usize, usize)> = matcher
            .find_overlapping_iter(text)
            .filter(|m| is_word(text, m.start(), m.end()))
            .map(|m| {
                (
                    m.start() + name_lengths[m.pattern().as_usize()] + 1,
                    m.end(),
                )
            })
            .collect();
        replace_ranges(text, values)
    }

    fn hide_words(&self, text: &str) -> String {
        replace_ranges(text, word_ranges(self.words.as_ref(), text))
    }
}

/// Where any of `words` stands in `text` as a whole word.
fn word_ranges(words: Option<&AhoCorasick>, text: &str) -> Vec<(usize, usize)> {
    let Some(words) = words else {
        return Vec::new();
    };
    words
        .find_overlapping_iter(text)
        .filter(|m| is_word(text, m.start(), m.end()))
        .map(|m| (m.start(), m.end()))
        .collect()
}

/// `text` with each of `ranges` (overlapping ones merged) replaced by [`HIDDEN`].
fn replace_ranges(text: &str, mut ranges: Vec<(usize, usize)>) -> String {
    ranges.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut done = 0;
    for (start, end) in ranges {
        if end <= done {
            continue;
        }
        if start >= done {
            out.push_str(&text[done..start]);
            out.push_str(HIDDEN);
        }
        done = end;
    }
    out.push_str(&text[done..]);
    out
}

/// Whether `text[start..end]` has no letter or digit right before or after it.
fn is_word(text: &str, start: usize, end: usize) -> bool {
    let alnum = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    !alnum(text[..start].chars().next_back()) && !alnum(text[end..].chars().next())
}

/// The forms a secret may take in a kept text: as sent; without the double quotes a cookie
/// value may be wrapped in (RFC 6265 §4.1.1), as a cookie parser hands it to the plugin; and
/// each of those escaped as the Debug-quoted key parts spell it (`ab"cd` as `ab\"cd`).
fn as_written(secret: &str) -> Vec<String> {
    let unquoted = secret
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .filter(|s| !s.is_empty());
    let mut forms = Vec::with_capacity(4);
    for form in std::iter::once(secret).chain(unquoted) {
        let quoted = format!("{form:?}");
        let escaped = &quoted[1..quoted.len() - 1];
        if escaped != form {
            forms.push(escaped.to_owned());
        }
        forms.push(form.to_owned());
    }
    forms
}

/// Where the Debug-quoted string opening `text` (at its first byte) ends.
fn closing_quote(text: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in text.char_indices().skip(1) {
        match c {
            '\\' if !escaped => escaped = true,
            '"' if !escaped => return Some(i),
            _ => escaped = false,
        }
    }
    None
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
        req.insert_header("X-Api-Key", "apikey-456").unwrap();
        req.insert_header("X-Auth-Token", "authtok-789").unwrap();
        req.insert_header("Accept", "text/html").unwrap();
        let secrets = Secrets::of(&req);
        let hidden = secrets.hide(
            r#"cache, key ["/", "s3cr3t", "Bearer tok-123", "dark", "apikey-456", "authtok-789", "text/html"]"#,
        );
        assert!(!hidden.contains("s3cr3t"), "{hidden}");
        assert!(!hidden.contains("tok-123"), "{hidden}");
        assert!(!hidden.contains("apikey-456"), "{hidden}");
        assert!(!hidden.contains("authtok-789"), "{hidden}");
        assert!(hidden.contains("text/html"), "{hidden}");
        assert!(!hidden.contains("dark"), "{hidden}");
        assert!(hidden.contains("[hidden]"));
    }

    #[test]
    fn quoted_cookie_values_are_hidden_as_the_plugin_and_the_record_spell_them() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("Cookie", r#"lang="SECRETQUOTED"; theme=ab"cd"#)
            .unwrap();
        let secrets = Secrets::of(&req);
        // A cookie parser hands the plugin the value without its quotes; the record writes
        // key parts Debug-quoted, with a quote inside escaped.
        let kept = format!("{:?}", ["a.test", "lang=SECRETQUOTED", r#"theme=ab"cd"#]);
        let hidden = secrets.hide(&format!("cache, key {kept}"));
        assert!(!hidden.contains("SECRETQUOTED"), "{hidden}");
        assert!(!hidden.contains("ab"), "{hidden}");
        assert!(hidden.contains("a.test"), "{hidden}");
    }

    #[test]
    fn query_values_and_short_cookie_values_are_hidden_without_mangling_the_rest() {
        let mut req =
            RequestHeader::build("GET", b"/p?access_token=SECRET123&size=10", None).unwrap();
        req.insert_header("Cookie", "a=e").unwrap();
        let secrets = Secrets::of(&req);
        let hidden = secrets.hide(
            r#"cache, key ["qa.test", "/p", "access_token=SECRET123&size=10", "e"] reason e"#,
        );
        assert_eq!(
            hidden,
            r#"cache, key ["qa.test", "/p", "access_token=[hidden]&size=[hidden]", "[hidden]"] reason [hidden]"#
        );
        assert_eq!(
            secrets.hide(r#"["/p", "SECRET123", "size=10&access_token=SECRET123"]"#),
            r#"["/p", "[hidden]", "size=[hidden]&access_token=[hidden]"]"#
        );
        // A secret that is part of the marker itself does not loop.
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("Cookie", "x=hidden").unwrap();
        assert_eq!(
            Secrets::of(&req).hide("reason hidden hidden"),
            "reason [hidden] [hidden]"
        );
    }

    /// A client controls how many secrets there are and how long: hiding them is one pass
    /// per text, and a request with too many has its texts hidden whole. Searching each
    /// secret alone took seconds for a few hundred cookies against a long key.
    #[test]
    fn many_long_cookie_values_cost_one_pass() {
        let request = |cookies: usize| {
            let cookie: Vec<String> = (0..cookies)
                .map(|i| format!("{i}={}", "a".repeat(i + 1)))
                .collect();
            let path = format!("/{}", "a".repeat(3700));
            let mut req = RequestHeader::build("GET", path.as_bytes(), None).unwrap();
            req.insert_header("Cookie", cookie.join(";")).unwrap();
            (req, path)
        };
        let (req, path) = request(120);
        let started = std::time::Instant::now();
        let hidden = Secrets::of(&req).hide(&format!("cache, key [\"{path}\", \"aaaa\"]"));
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        // The long run of `a` is no cookie value as a word; the fourth cookie's value is.
        assert_eq!(hidden, format!("cache, key [\"{path}\", \"[hidden]\"]"));
        let (req, path) = request(340);
        assert_eq!(Secrets::of(&req).hide(&path), super::ALL_HIDDEN);
    }
}
