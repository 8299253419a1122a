//! How long a response may be served without revalidation (RFC 9111 §4.2), computed from the
//! directives cachet follows. pingora-cache's own calculation ignores `Age`, measures `Expires`
//! against the local clock and has no heuristic freshness, so cachet does its own.

use http::header::{AGE, DATE, EXPIRES, LAST_MODIFIED};
use http::HeaderMap;
use pingora_cache::cache_control::CacheControl;
use std::time::{Duration, SystemTime};

/// Share of the time since `Last-Modified` used as heuristic freshness (RFC 9111 §4.2.2).
const HEURISTIC_FRACTION: u32 = 10;
/// Upper bound of heuristic freshness.
const HEURISTIC_CAP: Duration = Duration::from_secs(86_400);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// Remaining freshness from now; zero means stale on arrival.
    pub fresh_for: Duration,
    /// How old the response already was on arrival (RFC 9111 §4.2.3).
    pub age: Duration,
    pub stale_while_revalidate: u32,
    pub stale_if_error: u32,
}

/// The response's freshness, or None when it states none and no heuristic applies.
pub fn of(
    cc: Option<&CacheControl>,
    status: u16,
    headers: &HeaderMap,
    now: SystemTime,
) -> Option<Freshness> {
    let lifetime =
        explicit_lifetime(cc, headers, now).or_else(|| heuristic(status, headers, now))?;
    let age = current_age(headers, now);
    let (stale_while_revalidate, stale_if_error) = stale_windows(cc);
    Some(Freshness {
        fresh_for: lifetime.saturating_sub(age),
        age,
        stale_while_revalidate,
        stale_if_error,
    })
}

/// `no-cache` (always stale), then `s-maxage`, `max-age`, `Expires`. A malformed value counts
/// as already expired rather than as absent, so it never makes a response fresher.
fn explicit_lifetime(
    cc: Option<&CacheControl>,
    headers: &HeaderMap,
    now: SystemTime,
) -> Option<Duration> {
    if let Some(cc) = cc {
        if cc.no_cache() {
            return Some(Duration::ZERO);
        }
        for seconds in [cc.s_maxage(), cc.max_age()] {
            match seconds {
                Ok(Some(s)) => return Some(Duration::from_secs(s.into())),
                Ok(None) => {}
                Err(_) => return Some(Duration::ZERO),
            }
        }
    }
    let mut expires = headers.get_all(EXPIRES).iter();
    let first = expires.next()?;
    if expires.next().is_some() {
        return Some(Duration::ZERO);
    }
    let Some(expires) = http_date(first) else {
        return Some(Duration::ZERO);
    };
    let base = headers.get(DATE).and_then(http_date).unwrap_or(now);
    Some(expires.duration_since(base).unwrap_or(Duration::ZERO))
}

/// Statuses cacheable by default (RFC 9110 §15.1), the only ones given heuristic freshness.
fn heuristically_cacheable(status: u16) -> bool {
    matches!(
        status,
        200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

fn heuristic(status: u16, headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if !heuristically_cacheable(status) {
        return None;
    }
    let modified = headers.get(LAST_MODIFIED).and_then(http_date)?;
    let base = headers.get(DATE).and_then(http_date).unwrap_or(now);
    let unchanged_for = base.duration_since(modified).unwrap_or(Duration::ZERO);
    Some((unchanged_for / HEURISTIC_FRACTION).min(HEURISTIC_CAP))
}

/// The larger of the origin's `Age` and the age implied by its `Date` (clock skew only ever
/// makes a response older, never younger).
fn current_age(headers: &HeaderMap, now: SystemTime) -> Duration {
    let stated = headers
        .get(AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    let apparent = headers
        .get(DATE)
        .and_then(http_date)
        .and_then(|date| now.duration_since(date).ok())
        .unwrap_or(Duration::ZERO);
    stated.max(apparent)
}

/// Serve-stale windows the response allows; `must-revalidate`, `proxy-revalidate` and
/// `s-maxage` (which implies `proxy-revalidate`) forbid serving stale at all.
pub fn stale_windows(cc: Option<&CacheControl>) -> (u32, u32) {
    let Some(cc) = cc else {
        return (0, 0);
    };
    if forbids_stale(cc) || cc.has_key("s-maxage") {
        return (0, 0);
    }
    let seconds = |v: pingora::Result<Option<u32>>| v.ok().flatten().unwrap_or(0);
    (
        seconds(cc.stale_while_revalidate()),
        seconds(cc.stale_if_error()),
    )
}

/// Whether the origin forbids serving the response stale, whatever a plugin wants.
pub fn forbids_stale(cc: &CacheControl) -> bool {
    cc.must_revalidate() || cc.proxy_revalidate()
}

fn http_date(value: &http::HeaderValue) -> Option<SystemTime> {
    let text = value.to_str().ok()?;
    text.trim()
        .parse::<httpdate::HttpDate>()
        .ok()
        .map(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;
    use httpdate::fmt_http_date;

    const NOW_SECS: u64 = 1_700_000_000;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(NOW_SECS)
    }

    fn ago(secs: u64) -> String {
        fmt_http_date(now() - Duration::from_secs(secs))
    }

    fn later(secs: u64) -> String {
        fmt_http_date(now() + Duration::from_secs(secs))
    }

    fn fresh(status: u16, headers: &[(&str, &str)]) -> Option<Freshness> {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(
                http::HeaderName::from_bytes(n.as_bytes()).expect("name"),
                http::HeaderValue::from_str(v).expect("value"),
            );
        }
        let cc = CacheControl::from_headers_named("cache-control", &map);
        of(cc.as_ref(), status, &map, now())
    }

    fn secs(status: u16, headers: &[(&str, &str)]) -> Option<u64> {
        fresh(status, headers).map(|f| f.fresh_for.as_secs())
    }

    #[test]
    fn s_maxage_over_max_age_over_expires() {
        let exp = later(300);
        let both = [
            ("cache-control", "max-age=10, s-maxage=20"),
            ("expires", &exp),
        ];
        assert_eq!(secs(200, &both), Some(20));
        assert_eq!(
            secs(200, &[("cache-control", "max-age=10"), ("expires", &exp)]),
            Some(10)
        );
        assert_eq!(secs(200, &[("expires", &exp)]), Some(300));
    }

    #[test]
    fn invalid_or_repeated_expires_is_stale() {
        assert_eq!(secs(200, &[("expires", "0")]), Some(0));
        let exp = later(300);
        assert_eq!(secs(200, &[("expires", &exp), ("expires", &exp)]), Some(0));
    }

    #[test]
    fn expires_is_measured_from_the_origin_date() {
        // The origin's clock is 100 s behind: Expires - Date is what counts.
        let date = ago(100);
        let exp = fmt_http_date(now() - Duration::from_secs(100) + Duration::from_secs(60));
        let f = fresh(200, &[("date", &date), ("expires", &exp)]).expect("fresh");
        // ...and the apparent age (100 s) uses it all up.
        assert_eq!(f.fresh_for, Duration::ZERO);
    }

    #[test]
    fn age_reduces_freshness() {
        assert_eq!(
            secs(200, &[("cache-control", "max-age=60"), ("age", "45")]),
            Some(15)
        );
        assert_eq!(
            secs(200, &[("cache-control", "max-age=60"), ("age", "90")]),
            Some(0)
        );
    }

    #[test]
    fn no_cache_is_stored_stale() {
        assert_eq!(
            secs(200, &[("cache-control", "no-cache, max-age=60")]),
            Some(0)
        );
    }

    #[test]
    fn unknown_directives_are_ignored() {
        assert_eq!(
            secs(200, &[("cache-control", "frobnicate, max-age=30, x=\"y\"")]),
            Some(30)
        );
    }

    #[test]
    fn heuristic_only_for_default_cacheable_statuses() {
        let lm = ago(1000);
        assert_eq!(secs(200, &[("last-modified", &lm)]), Some(100));
        assert_eq!(secs(404, &[("last-modified", &lm)]), Some(100));
        assert_eq!(secs(302, &[("last-modified", &lm)]), None);
        assert_eq!(secs(500, &[("last-modified", &lm)]), None);
        assert_eq!(secs(200, &[]), None);
        let old = ago(100 * 86_400);
        assert_eq!(secs(200, &[("last-modified", &old)]), Some(86_400));
    }

    #[test]
    fn revalidation_directives_forbid_stale() {
        let windows = |cc: &str| {
            let f = fresh(200, &[("cache-control", cc)]).expect("fresh");
            (f.stale_while_revalidate, f.stale_if_error)
        };
        assert_eq!(
            windows("max-age=1, stale-while-revalidate=5, stale-if-error=7"),
            (5, 7)
        );
        assert_eq!(
            windows("max-age=1, must-revalidate, stale-while-revalidate=5"),
            (0, 0)
        );
        assert_eq!(
            windows("max-age=1, proxy-revalidate, stale-if-error=5"),
            (0, 0)
        );
        assert_eq!(windows("s-maxage=1, stale-if-error=5"), (0, 0));
    }
}
