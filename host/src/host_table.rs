//! Host names to values by the patterns of `[[tenant]] hosts`: exact names first, then
//! `*.suffix` wildcards (longest first), then the `*` catch-all. The tenant router and the
//! TLS certificate set each keep one, built from the same config, so a handshake picks its
//! certificate by exactly the rule a request's Host is routed by.

use crate::tenant::canonical_host;
use std::collections::HashMap;

#[derive(Debug, Clone)]
pub struct HostTable<T> {
    exact: HashMap<String, T>,
    wildcard: Vec<(String, T)>,
    catch_all: Option<T>,
}

impl<T> Default for HostTable<T> {
    fn default() -> Self {
        Self {
            exact: HashMap::new(),
            wildcard: Vec::new(),
            catch_all: None,
        }
    }
}

impl<T> HostTable<T> {
    /// A table of `(pattern, value)` pairs; a later pattern equal to an earlier one wins
    /// (config checks refuse two tenants with one host before this is built).
    pub fn new<'a>(entries: impl IntoIterator<Item = (&'a str, T)>) -> Self {
        let mut table = Self::default();
        for (pattern, value) in entries {
            if pattern == "*" {
                table.catch_all = Some(value);
            } else if let Some(suffix) = pattern.strip_prefix('*') {
                table.wildcard.push((suffix.to_owned(), value));
            } else {
                table.exact.insert(pattern.to_owned(), value);
            }
        }
        table
            .wildcard
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        table
    }

    /// The value for a Host value or server name (any port, and a fully qualified name's
    /// final dot, are ignored).
    pub fn get(&self, host: &str) -> Option<&T> {
        let name = strip_port(host);
        let name = name.strip_suffix('.').unwrap_or(name);
        let name = canonical_host(name);
        let name = name.as_ref();
        if let Some(value) = self.exact.get(name) {
            return Some(value);
        }
        self.wildcard
            .iter()
            .find(|(suffix, _)| name.ends_with(suffix.as_str()) && name.len() > suffix.len())
            .map(|(_, value)| value)
            .or(self.catch_all.as_ref())
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // IPv6 literal: keep the brackets, drop what follows "]".
        return host
            .split_once(']')
            .map_or(host, |(h, _)| &host[..h.len() + 1]);
    }
    host.rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map_or(host, |(name, _)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_ignored_for_routing() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
    }

    #[test]
    fn exact_names_win_over_the_longest_wildcard_over_the_catch_all() {
        let table = HostTable::new([
            ("*", "any"),
            ("*.test", "test"),
            ("*.shop.test", "shop"),
            ("www.shop.test", "www"),
        ]);
        assert_eq!(table.get("www.shop.test:8443"), Some(&"www"));
        assert_eq!(table.get("cdn.shop.test."), Some(&"shop"));
        assert_eq!(table.get("blog.test"), Some(&"test"));
        // A wildcard covers names under it, not the name itself.
        assert_eq!(table.get("shop.test"), Some(&"test"));
        assert_eq!(table.get("other.example"), Some(&"any"));
        let no_catch_all = HostTable::new([("[::1]", 1)]);
        assert_eq!(no_catch_all.get("[0::1]:80"), Some(&1));
        assert_eq!(no_catch_all.get("other.example"), None);
    }
}
