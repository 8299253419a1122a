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

/// Cookies set by analytics scripts for themselves; the origin never reads them.
pub(crate) fn is_tracking_cookie(name: &str) -> bool {
    const PREFIXES: [&str; 7] = ["_ga", "_gid", "_gcl_", "_fbp", "_fbc", "__utm", "_hj"];
    PREFIXES.iter().any(|prefix| name.starts_with(prefix))
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
