//! Which tenant backend serves a path: the plugin config's `backends` lists
//! `PREFIX=NAME` pairs (comma-separated), e.g. `/api/=api, /media/=media`,
//! each NAME one of the tenant's `[tenant.backends]`. The longest matching
//! prefix wins; no match (or no config) keeps the tenant's `upstream`.

/// Prefix routes, longest prefix first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct BackendRoutes {
    routes: Vec<(String, String)>,
}

impl BackendRoutes {
    /// Parses `PREFIX=NAME, ...`; malformed entries are skipped.
    pub(crate) fn parse(config: &str) -> Self {
        let mut routes: Vec<(String, String)> = config
            .split(',')
            .filter_map(|entry| entry.split_once('='))
            .map(|(prefix, name)| (prefix.trim().to_owned(), name.trim().to_owned()))
            .filter(|(prefix, name)| prefix.starts_with('/') && !name.is_empty())
            .collect();
        routes.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        Self { routes }
    }

    /// The backend for `path`, if a prefix matches.
    pub(crate) fn backend_for(&self, path: &str) -> Option<&str> {
        self.routes
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map(|(_, name)| name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins_and_unmatched_paths_keep_the_upstream() {
        let routes = BackendRoutes::parse("/api/=api, /api/v2/=api-v2 ,junk, /media/=media");
        assert_eq!(routes.backend_for("/api/items"), Some("api"));
        assert_eq!(routes.backend_for("/api/v2/items"), Some("api-v2"));
        assert_eq!(routes.backend_for("/media/a.png"), Some("media"));
        assert_eq!(routes.backend_for("/"), None);
        assert_eq!(BackendRoutes::parse("").backend_for("/api/x"), None);
    }
}
