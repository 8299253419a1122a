//! How long a response may be served without revalidation (RFC 9111 §4.2), computed from the
//! directives cachet follows. pingora-cache's own calculation ignores `Age`, measures `Expires`
//! against the local clock and has no heuristic freshness, so cachet does its own.

use super::http_date;
use cachet_sdk::{CacheControl, ResponseDirectives};
use http::header::{AGE, DATE, EXPIRES, LAST_MODIFIED};
use http::HeaderMap;
use std::time::{Duration, SystemTime};

/// Share of the time since `Last-Modified` used as heuristic freshness (RFC 9111 §4.2.2).
const HEURISTIC_FRACTION: u32 = 10;
/// Upper bound of heuristic freshness.
const HEURISTIC_CAP: Duration = Duration::from_secs(86_400);
/// RFC 9111 §1.2.2: delta-seconds too large to represent count as 2^31.
const DELTA_SECONDS_CAP: u64 = 1 << 31;

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
/// A targeted field (RFC 9213 §2.2) replaces `Expires` and heuristic freshness too.
pub fn of(
    directives: Option<&ResponseDirectives>,
    status: u16,
    headers: &HeaderMap,
    now: SystemTime,
) -> Option<Freshness> {
    let cc = directives.map(|d| &d.cache_control);
    let targeted = directives.is_some_and(|d| d.field.is_targeted());
    let lifetime = match directive_lifetime(cc) {
        Some(lifetime) => lifetime,
        None if targeted => return None,
        None => expires_lifetime(headers, now).or_else(|| heuristic(status, headers, now))?,
    };
    let age = current_age(headers, now);
    let (stale_while_revalidate, stale_if_error) = stale_windows(cc);
    Some(Freshness {
        fresh_for: lifetime.saturating_sub(age),
        age,
        stale_while_revalidate,
        stale_if_error,
    })
}

/// `no-cache` (always stale), then `s-maxage`, `max-age`. A malformed value counts as already
/// expired rather than as absent, so it never makes a response fresher.
fn directive_lifetime(cc: Option<&CacheControl>) -> Option<Duration> {
    let cc = cc?;
    if cc.no_cache() {
        return Some(Duration::ZERO);
    }
    ["s-maxage", "max-age"]
        .into_iter()
        .find(|name| cc.has(name))
        .map(|name| cc.seconds(name).unwrap_or(Duration::ZERO))
}

/// `Expires` measured against the origin's `Date`; an invalid or repeated one means expired.
fn expires_lifetime(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let mut expires = headers.get_all(EXPIRES).iter();
    let first = expires.next()?;
    if expires.next().is_some() {
        return Some(Duration::ZERO);
    }
    let Some(expires) = http_date::parse(first) else {
        return Some(Duration::ZERO);
    };
    let base = headers.get(DATE).and_then(http_date::parse).unwrap_or(now);
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
    let modified = headers.get(LAST_MODIFIED).and_then(http_date::parse)?;
    let base = headers.get(DATE).and_then(http_date::parse).unwrap_or(now);
    let unchanged_for = base.duration_since(modified).unwrap_or(Duration::ZERO);
    Some((unchanged_for / HEURISTIC_FRACTION).min(HEURISTIC_CAP))
}

/// The larger of the origin's `Age` and the age implied by its `Date` (clock skew only ever
/// makes a response older, never younger).
fn current_age(headers: &HeaderMap, now: SystemTime) -> Duration {
    let stated = stated_age(headers).unwrap_or(Duration::ZERO);
    let apparent = headers
        .get(DATE)
        .and_then(http_date::parse)
        .and_then(|date| now.duration_since(date).ok())
        .unwrap_or(Duration::ZERO);
    stated.max(apparent)
}

/// `Age` as RFC 9111 §5.1 reads it: the first member of a list (`7200, 0` is 7200), and a
/// field whose first member is not a non-negative integer is ignored.
pub fn stated_age(headers: &HeaderMap) -> Option<Duration> {
    let first_line = headers.get(AGE)?.to_str().ok()?;
    let first = first_line.split(',').next()?.trim();
    if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // All digits, so a parse failure can only be overflow.
    let secs = first
        .parse::<u64>()
        .map_or(DELTA_SECONDS_CAP, |s| s.min(DELTA_SECONDS_CAP));
    Some(Duration::from_secs(secs))
}

/// Serve-stale windows the response allows; `must-revalidate`, `proxy-revalidate`, `no-cache`
/// and `s-maxage` (which implies `proxy-revalidate`) forbid serving stale at all.
pub fn stale_windows(cc: Option<&CacheControl>) -> (u32, u32) {
    let Some(cc) = cc else {
        return (0, 0);
    };
    if forbids_stale(cc) {
        return (0, 0);
    }
    let seconds = |v: Option<Duration>| v.map_or(0, |d| d.as_secs().min(u32::MAX.into()) as u32);
    (
        seconds(cc.stale_while_revalidate()),
        seconds(cc.stale_if_error()),
    )
}

/// Whether the origin forbids serving the response stale, whatever a plugin wants. A
/// `no-cache` response may not be reused without a successful validation (RFC 9111
/// §5.2.2.4), so no stale window applies to it either (§4.2.4).
pub fn forbids_stale(cc: &CacheControl) -> bool {
    // `s-maxage` implies `proxy-revalidate` for a shared cache (RFC 9111 §5.2.2.10).
    cc.must_revalidate() || cc.proxy_revalidate() || cc.no_cache() || cc.has("s-maxage")
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
        let directives = ResponseDirectives::select(|name| {
            map.get_all(name)
                .iter()
                .map(|v| v.to_str().expect("ascii").to_owned())
                .collect::<Vec<_>>()
        });
        of(directives.as_ref(), status, &map, now())
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
    fn age_lists_use_the_first_member_and_invalid_ages_are_ignored() {
        let cc = ("cache-control", "max-age=100");
        assert_eq!(secs(200, &[cc, ("age", "60, 0")]), Some(40));
        assert_eq!(secs(200, &[cc, ("age", "7200, 0")]), Some(0));
        assert_eq!(secs(200, &[cc, ("age", "30"), ("age", "90")]), Some(70));
        for invalid in ["-5", "1.5", "abc", "", ", 50", "0x10"] {
            assert_eq!(secs(200, &[cc, ("age", invalid)]), Some(100), "{invalid:?}");
        }
        assert_eq!(secs(200, &[cc, ("age", "99999999999999999999")]), Some(0));
    }

    #[test]
    fn obsolete_and_odd_case_dates_are_understood() {
        let in_a_minute = now() + Duration::from_secs(60);
        let date = httpdate::HttpDate::from(now()).to_string();
        let imf = httpdate::HttpDate::from(in_a_minute).to_string();
        // "Tue, 14 Nov 2023 22:14:20 GMT" -> RFC 850 and asctime spellings of the same instant.
        let (wday, rest) = imf.split_once(", ").expect("imf");
        let parts: Vec<&str> = rest.split(' ').collect();
        let long_day = match wday {
            "Mon" => "Monday",
            "Tue" => "Tuesday",
            "Wed" => "Wednesday",
            "Thu" => "Thursday",
            "Fri" => "Friday",
            "Sat" => "Saturday",
            _ => "Sunday",
        };
        let rfc850 = format!(
            "{long_day}, {}-{}-{} {} GMT",
            parts[0],
            parts[1],
            &parts[2][2..],
            parts[3]
        );
        let asctime = format!(
            "{wday} {} {:>2} {} {}",
            parts[1],
            parts[0].trim_start_matches('0'),
            parts[3],
            parts[2]
        );
        for expires in [
            rfc850.clone(),
            asctime,
            imf.to_lowercase(),
            rfc850.to_uppercase(),
        ] {
            assert_eq!(
                secs(200, &[("date", &date), ("expires", &expires)]),
                Some(60),
                "{expires:?}"
            );
        }
    }

    #[test]
    fn a_targeted_field_replaces_expires_and_heuristics() {
        let exp = later(300);
        let lm = ago(1000);
        assert_eq!(
            secs(200, &[("cdn-cache-control", "public"), ("expires", &exp)]),
            None
        );
        assert_eq!(
            secs(
                200,
                &[("cdn-cache-control", "public"), ("last-modified", &lm)]
            ),
            None
        );
        assert_eq!(
            secs(
                200,
                &[("cdn-cache-control", "max-age=5"), ("expires", &exp)]
            ),
            Some(5)
        );
        // An invalid targeted field is ignored: Expires applies again.
        assert_eq!(
            secs(
                200,
                &[("cdn-cache-control", "max-age=\"5\""), ("expires", &exp)]
            ),
            Some(300)
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

    /// What overrules a plugin's stale windows: `s-maxage` too (a plugin storing such a
    /// response with stale-while-revalidate was obeyed).
    #[test]
    fn s_maxage_forbids_stale_whatever_a_plugin_asks() {
        let forbids = |value: &str| forbids_stale(&CacheControl::parse(value));
        assert!(forbids("s-maxage=10"));
        assert!(forbids("max-age=10, must-revalidate"));
        assert!(!forbids("max-age=10, stale-while-revalidate=60"));
    }
}
