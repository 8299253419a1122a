//! Query and cookie normalisation, so marketing links and analytics cookies
//! neither split the cache nor reach the origin.

use cachet_sdk::{Query, QueryParam};

/// Parameters added by ad and analytics links; the origin ignores them.
fn is_tracking_parameter(param: &QueryParam) -> bool {
    let name = param.name();
    let has_utm_prefix = name
        .get(..4)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("utm_"));
    has_utm_prefix || name.eq_ignore_ascii_case("fbclid") || name.eq_ignore_ascii_case("gclid")
}

/// Cookies set by analytics scripts for themselves; the origin never reads them. Names are
/// matched whole or up to their `_` suffix (`_ga`, `_ga_XYZ`): a bare `_ga` prefix would take
/// an application's own `_gallery_session` for analytics and drop it.
pub(crate) fn is_tracking_cookie(name: &str) -> bool {
    const NAMES: [&str; 5] = ["_ga", "_gid", "_gat", "_fbp", "_fbc"];
    const PREFIXES: [&str; 6] = ["_ga_", "_gat_", "_gac_", "_gcl_", "__utm", "_hj"];
    NAMES.contains(&name) || PREFIXES.iter().any(|prefix| name.starts_with(prefix))
}

/// Drops tracking parameters and sorts the rest by name.
pub(crate) fn normalized_query(mut query: Query) -> Query {
    query.retain(|param| !is_tracking_parameter(param));
    query.sort_by_name();
    query
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalize(raw: &str) -> String {
        normalized_query(Query::parse(raw)).to_string()
    }

    #[test]
    fn analytics_cookies_but_not_lookalike_names() {
        for name in [
            "_ga",
            "_ga_ABC123",
            "_gid",
            "_gat",
            "_gcl_au",
            "__utmz",
            "_hjid",
        ] {
            assert!(is_tracking_cookie(name), "{name}");
        }
        for name in ["_gallery_session", "_gateway", "_gidx", "session"] {
            assert!(!is_tracking_cookie(name), "{name}");
        }
    }

    #[test]
    fn strips_tracking_and_sorts() {
        assert_eq!(normalize("utm_source=x&b=2&a=1"), "a=1&b=2");
        assert_eq!(normalize("UTM_Medium=m&fbclid=f&GCLID=g&q=%20x"), "q=%20x");
    }

    #[test]
    fn analytics_cookies_are_tracking() {
        for name in [
            "_ga",
            "_ga_ABC123",
            "_gid",
            "_gcl_au",
            "_fbp",
            "__utma",
            "_hjSession_1",
        ] {
            assert!(is_tracking_cookie(name), "{name}");
        }
        for name in ["session", "lang", "ga", "cart_gid"] {
            assert!(!is_tracking_cookie(name), "{name}");
        }
    }

    #[test]
    fn keeps_lookalikes() {
        assert_eq!(
            normalize("utm=1&utmx=2&fbclid2=3"),
            "fbclid2=3&utm=1&utmx=2"
        );
    }
}
