//! RFC 9111 shared-cache semantics, CDN-Cache-Control and purge, end to end: the real
//! `cachet` binary with the `standard` plugin in front of an origin that sets exact headers
//! and counts what reaches it.

mod support;

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};
use support::client::{get, send, Resp};
use support::origin::{Origin, Reply, Seen};
use support::proxy::{Proxy, TenantSpec};
use support::{lean_hits_counted, plugin};

const CACHE: &str = "max_bytes = \"64MiB\"";
const TOKEN: &str = "purge-secret-token";

fn proxy_for(origin: &Origin) -> Proxy {
    Proxy::start(
        CACHE,
        &[TenantSpec::new("site", origin.addr, &plugin("standard"))],
    )
}

fn assert_status_has(resp: &Resp, needle: &str) {
    assert!(
        resp.cache_status().contains(needle),
        "Cache-Status {:?} lacks {needle:?}",
        resp.cache_status()
    );
}

fn with_auth(who: &str) -> [(&str, &str); 1] {
    [("Authorization", who)]
}

/// Objects the proxy has written to its cache so far (`/status` `cache.inserts`).
fn inserts(proxy: &Proxy) -> u64 {
    proxy.status()["cache"]["inserts"]
        .as_u64()
        .expect("cache.inserts")
}

/// Response heads a [`token_proxy_for`]-style proxy has had from the origin so far (each is
/// counted as it arrives, before its body).
fn origin_heads(proxy: &Proxy) -> u64 {
    send("GET", &proxy.admin_url("/metrics"), &with_auth(&bearer()))
        .text()
        .lines()
        .filter(|l| l.starts_with("cachet_origin_response_seconds_count{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

// ---------------------------------------------------------------- 1. shared-cache rules

#[test]
fn authorized_requests_are_served_only_from_shareable_entries() {
    let origin = Origin::start(|seen| {
        let cc = match seen.url.as_str() {
            "/public" => "public, max-age=60",
            "/s-maxage" => "s-maxage=60",
            "/must-revalidate" => "max-age=60, must-revalidate",
            _ => "max-age=60",
        };
        let who = seen.header("authorization").unwrap_or("anonymous");
        Reply::ok(format!("for {who}")).header("Cache-Control", cc)
    });
    let proxy = proxy_for(&origin);

    for path in ["/public", "/s-maxage", "/must-revalidate", "/plain"] {
        assert_eq!(get(&proxy.url(path)).text(), "for anonymous");
    }
    for path in ["/public", "/s-maxage", "/must-revalidate"] {
        let resp = send("GET", &proxy.url(path), &with_auth("Bearer alice"));
        assert_eq!(resp.text(), "for anonymous", "{path}");
        assert_status_has(&resp, "hit");
        assert_eq!(origin.hits_for(path), 1, "{path}");
    }
    let resp = send("GET", &proxy.url("/plain"), &with_auth("Bearer alice"));
    assert_eq!(resp.text(), "for Bearer alice");
    assert_status_has(&resp, "fwd=bypass");
    // Alice's answer was not stored over the shared one.
    assert_eq!(get(&proxy.url("/plain")).text(), "for anonymous");
    assert_eq!(origin.hits_for("/plain"), 2);
}

#[test]
fn responses_to_authorized_requests_are_stored_only_when_shareable() {
    let origin = Origin::start(|seen| {
        let cc = if seen.url == "/shared" {
            "s-maxage=60"
        } else {
            "max-age=60"
        };
        Reply::ok("data").header("Cache-Control", cc)
    });
    let proxy = proxy_for(&origin);
    for path in ["/shared", "/personal"] {
        send("GET", &proxy.url(path), &with_auth("Bearer alice"));
    }
    assert_status_has(&get(&proxy.url("/shared")), "hit");
    let personal = get(&proxy.url("/personal"));
    assert_status_has(&personal, "fwd=miss");
    assert_eq!(origin.hits_for("/shared"), 1);
    assert_eq!(origin.hits_for("/personal"), 2);
}

/// Once the origin's answer for a key is not storable, the key goes to the origin (the mark
/// Pingora keeps) on every path: plain GETs, answered by the lean hit path, were still
/// served the old copy while requests with any other header got the new answer.
#[test]
fn a_key_marked_uncacheable_is_not_served_its_old_copy_by_any_path() {
    let private_now = Arc::new(AtomicBool::new(false));
    let origin = Origin::start({
        let private_now = private_now.clone();
        move |_: &Seen| {
            if private_now.load(Ordering::SeqCst) {
                Reply::ok("v2").header("Cache-Control", "no-store")
            } else {
                Reply::ok("v1").header("Cache-Control", "max-age=60")
            }
        }
    });
    let proxy = proxy_for(&origin);
    assert_eq!(get(&proxy.url("/p")).text(), "v1");
    assert_status_has(&get(&proxy.url("/p")), "hit");
    private_now.store(true, Ordering::SeqCst);
    // An authorized request is not answered from a non-public entry: it goes to the origin,
    // whose `no-store` now marks the key.
    let refreshed = send("GET", &proxy.url("/p"), &with_auth("Bearer alice"));
    assert_eq!(refreshed.text(), "v2");
    for _ in 0..2 {
        let plain = get(&proxy.url("/p"));
        let ranged = send("GET", &proxy.url("/p"), &[("Range", "bytes=0-")]);
        assert_eq!(plain.text(), ranged.text(), "{}", plain.cache_status());
        assert_eq!(plain.text(), "v2", "{}", plain.cache_status());
    }
}

#[test]
fn private_and_unusable_responses_are_not_stored() {
    let origin = Origin::start(|seen| match seen.url.as_str() {
        "/private" => Reply::ok("p").header("Cache-Control", "private, max-age=60"),
        // Must always be revalidated, but there is nothing to revalidate with.
        "/no-cache" => Reply::ok("n").header("Cache-Control", "no-cache"),
        // Stale on arrival (invalid Expires), no validator.
        _ => Reply::ok("e").header("Expires", "0"),
    });
    let proxy = proxy_for(&origin);
    for path in ["/private", "/no-cache", "/expires"] {
        for _ in 0..2 {
            let resp = get(&proxy.url(path));
            assert_eq!(resp.status, 200);
            assert!(!resp.cache_status().contains("stored"), "{path}");
        }
        assert_eq!(origin.hits_for(path), 2, "{path}");
    }
}

// ---------------------------------------------------------------------- 2. freshness

#[test]
fn s_maxage_beats_max_age_beats_expires() {
    let origin = Origin::start(|seen| match seen.url.as_str() {
        "/s" => Reply::ok("s").header("Cache-Control", "max-age=0, s-maxage=60"),
        // Expires in the past is ignored when max-age is present.
        "/m" => Reply::ok("m")
            .header("Cache-Control", "max-age=60")
            .header("Expires", "Thu, 01 Jan 1970 00:00:00 GMT"),
        _ => Reply::ok("e").header(
            "Expires",
            &httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(60)),
        ),
    });
    let proxy = proxy_for(&origin);
    for path in ["/s", "/m", "/e"] {
        get(&proxy.url(path));
        assert_status_has(&get(&proxy.url(path)), "hit");
        assert_eq!(origin.hits_for(path), 1, "{path}");
    }
}

#[test]
fn upstream_age_reduces_freshness() {
    let origin = Origin::start(|seen| {
        // A long max-age, so `/young` stays fresh however slow the requests; `/aged` has
        // one second of it left.
        let reply = Reply::ok("x").header("Cache-Control", "max-age=30");
        if seen.url == "/aged" {
            reply.header("Age", "29")
        } else {
            reply
        }
    });
    let proxy = proxy_for(&origin);
    get(&proxy.url("/aged"));
    get(&proxy.url("/young"));
    sleep(Duration::from_millis(1500));
    assert_status_has(&get(&proxy.url("/aged")), "fwd=");
    assert_status_has(&get(&proxy.url("/young")), "hit");
    assert_eq!(origin.hits_for("/aged"), 2);
    assert_eq!(origin.hits_for("/young"), 1);
}

#[test]
fn unknown_directives_are_ignored() {
    let origin = Origin::start(|_| {
        Reply::ok("x").header("Cache-Control", "frobnicate, max-age=60, x-ext=\"a, b\"")
    });
    let proxy = proxy_for(&origin);
    get(&proxy.url("/u"));
    assert_status_has(&get(&proxy.url("/u")), "hit");
    assert_eq!(origin.hits(), 1);
}

#[test]
fn heuristic_freshness_needs_last_modified_and_a_default_cacheable_status() {
    let long_ago =
        httpdate::fmt_http_date(std::time::SystemTime::now() - Duration::from_secs(864_000));
    let origin = Origin::start(move |seen| {
        let status = if seen.url == "/found" { 302 } else { 200 };
        let reply = Reply::ok("x").status(status);
        if seen.url == "/bare" {
            reply
        } else {
            reply.header("Last-Modified", &long_ago)
        }
    });
    let proxy = proxy_for(&origin);
    for path in ["/old", "/found", "/bare"] {
        get(&proxy.url(path));
        get(&proxy.url(path));
    }
    assert_eq!(
        origin.hits_for("/old"),
        1,
        "200 + Last-Modified is heuristically fresh"
    );
    assert_eq!(
        origin.hits_for("/found"),
        2,
        "302 is not heuristically cacheable"
    );
    assert_eq!(
        origin.hits_for("/bare"),
        2,
        "no Last-Modified, no heuristic"
    );
}

/// An origin whose `/r` answers 304 to a matching `If-None-Match`, counting the 304s.
fn validating_origin(cc: &'static str, not_modified: Arc<AtomicUsize>) -> Origin {
    Origin::start(move |seen: &Seen| {
        if seen.header("if-none-match") == Some("\"v1\"") {
            not_modified.fetch_add(1, Ordering::SeqCst);
            return Reply::ok("")
                .status(304)
                .header("ETag", "\"v1\"")
                .header("Cache-Control", "max-age=60")
                .header("X-Version", "2");
        }
        Reply::ok("body v1")
            .header("Cache-Control", cc)
            .header("ETag", "\"v1\"")
            .header("X-Version", "1")
    })
}

/// A 304 whose updated response may not be stored (here: it sets a cookie) still reaches the
/// client whole: every field of the 304 over the stored ones (RFC 9111 §4.3.4).
#[test]
fn a_304_that_makes_the_response_unstorable_still_gives_the_client_all_its_fields() {
    let origin = Origin::start(|seen: &Seen| {
        if seen.header("if-none-match") == Some("\"v1\"") {
            return Reply::ok("")
                .status(304)
                .header("ETag", "\"v1\"")
                .header("Set-Cookie", "sid=2; Path=/")
                .header("X-Version", "2");
        }
        Reply::ok("body v1")
            .header("Cache-Control", "max-age=1")
            .header("ETag", "\"v1\"")
            .header("X-Version", "1")
    });
    let proxy = proxy_for(&origin);
    assert_eq!(get(&proxy.url("/c")).header("x-version"), Some("1"));
    sleep(Duration::from_millis(1100));
    let revalidated = get(&proxy.url("/c"));
    assert_eq!(revalidated.text(), "body v1");
    assert_eq!(
        revalidated.header("set-cookie"),
        Some("sid=2; Path=/"),
        "{:?}",
        revalidated.headers
    );
    assert_eq!(revalidated.header("x-version"), Some("2"));
    assert_eq!(origin.hits(), 2);
}

/// A 304 naming another strong validator than the stored response's does not update it
/// (RFC 9111 §4.3.4): the stored body is not kept fresh under the new tag, nor vouched for
/// by a 304 to a client holding that tag; the client that asked gets it marked no-cache (it
/// was not validated), and the next request fetches the URL whole.
#[test]
fn a_304_for_another_representation_does_not_update_the_stored_one() {
    let full = Arc::new(AtomicUsize::new(0));
    let origin = Origin::start({
        let full = full.clone();
        move |seen: &Seen| {
            if seen.header("if-none-match") == Some("\"v1\"") {
                return Reply::ok("")
                    .status(304)
                    .header("ETag", "\"other\"")
                    .header("Cache-Control", "max-age=3000")
                    .header("CDN-Cache-Control", "max-age=3000");
            }
            match full.fetch_add(1, Ordering::SeqCst) {
                0 => Reply::ok("body v1")
                    .header("Cache-Control", "max-age=1")
                    .header("ETag", "\"v1\""),
                _ => Reply::ok("body v2")
                    .header("Cache-Control", "max-age=3000")
                    .header("ETag", "\"v2\""),
            }
        }
    });
    let proxy = proxy_for(&origin);
    assert_eq!(get(&proxy.url("/m")).text(), "body v1");
    sleep(Duration::from_millis(1100));
    let revalidated = get(&proxy.url("/m"));
    assert_eq!(revalidated.text(), "body v1");
    assert_eq!(
        revalidated.header("etag"),
        None,
        "{:?}",
        revalidated.headers
    );
    // Not validated by the 304: not to be kept for its max-age=3000 by the client either.
    assert_eq!(revalidated.header("cache-control"), Some("no-cache"));
    assert_eq!(revalidated.header("cdn-cache-control"), None);
    let vouched = send("GET", &proxy.url("/m"), &[("If-None-Match", "\"other\"")]);
    assert!(
        !vouched.cache_status().contains("hit"),
        "{} {}",
        vouched.status,
        vouched.cache_status()
    );
    assert_eq!(vouched.text(), "body v2");
    let next = get(&proxy.url("/m"));
    assert_eq!(next.text(), "body v2");
    assert_eq!(next.header("etag"), Some("\"v2\""));
}

/// A plugin's delivery edits do not make the unvalidated body keepable again: vcl-port gives
/// static files `Cache-Control: public, max-age=86400` on delivery, and after a 304 naming
/// another representation the old body went out with it (probe AC).
#[test]
fn delivery_edits_do_not_undo_the_mark_on_an_unvalidated_body() {
    let full = Arc::new(AtomicUsize::new(0));
    let origin = Origin::start({
        let full = full.clone();
        move |seen: &Seen| {
            if seen.header("if-none-match").is_some() {
                return Reply::ok("").status(304).header("ETag", "\"other\"");
            }
            let n = full.fetch_add(1, Ordering::SeqCst) + 1;
            Reply::ok(format!("js v{n}")).header("ETag", &format!("\"v{n}\""))
        }
    });
    let proxy = Proxy::start_with_server(
        &format!("admin_token = \"{TOKEN}\""),
        CACHE,
        &[TenantSpec::new("site", origin.addr, &plugin("vcl-port"))],
    );
    let url = proxy.url("/app.js");
    assert_eq!(get(&url).text(), "js v1");
    let auth = bearer();
    let soft = send(
        "PURGE",
        &url,
        &[("Authorization", &auth), ("Cache-Purge-Soft", "1")],
    );
    assert_eq!(soft.status, 200, "{}", soft.text());
    let unvalidated = get(&url);
    assert_eq!(unvalidated.text(), "js v1");
    assert_eq!(
        unvalidated.header("cache-control"),
        Some("no-cache"),
        "{:?}",
        unvalidated.headers
    );
    assert_eq!(get(&url).text(), "js v2");
}

/// The same for a 304 whose validator is weak or a date (probe X): a weak tag must match by
/// weak comparison, and with no tag the 304's `Last-Modified` must be the stored one. The
/// stored body was kept fresh under the new validator, and each later revalidation with it
/// was confirmed, so the old body could be served for good.
#[test]
fn a_304_naming_another_weak_tag_or_date_does_not_update_the_stored_one() {
    // Per path: the stored validator, and the one the 304 names.
    type Field = (&'static str, &'static str);
    const CASES: [(&str, Field, Field); 3] = [
        ("/weak", ("ETag", "W/\"v1\""), ("ETag", "W/\"v2\"")),
        ("/strong-to-weak", ("ETag", "\"v1\""), ("ETag", "W/\"v2\"")),
        (
            "/dated",
            ("Last-Modified", "Wed, 01 Jan 2020 00:00:00 GMT"),
            ("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
        ),
    ];
    let full = Arc::new(parking_lot::Mutex::new(std::collections::HashMap::<
        String,
        usize,
    >::new()));
    let origin = Origin::start({
        let full = full.clone();
        move |seen: &Seen| {
            let (_, stored, named) = CASES.iter().find(|(p, ..)| *p == seen.url).expect("a case");
            let conditional = seen.header("if-none-match").is_some()
                || seen.header("if-modified-since").is_some();
            if conditional {
                return Reply::ok("")
                    .status(304)
                    .header(named.0, named.1)
                    .header("Cache-Control", "max-age=3000");
            }
            let mut full = full.lock();
            let count = full.entry(seen.url.clone()).or_default();
            *count += 1;
            match *count {
                1 => Reply::ok("body v1")
                    .header("Cache-Control", "max-age=1")
                    .header(stored.0, stored.1),
                _ => Reply::ok("body v2").header("Cache-Control", "max-age=3000"),
            }
        }
    });
    let proxy = proxy_for(&origin);
    for (path, ..) in CASES {
        assert_eq!(get(&proxy.url(path)).text(), "body v1", "{path}");
    }
    sleep(Duration::from_millis(1100));
    for (path, ..) in CASES {
        get(&proxy.url(path));
        let next = get(&proxy.url(path));
        assert_eq!(next.text(), "body v2", "{path}: {}", next.cache_status());
    }
}

/// A response that sets a cookie is never shared: in the current form and in RFC 2965's
/// obsolete `Set-Cookie2`, which some clients still take.
#[test]
fn a_response_that_sets_a_cookie_is_never_stored() {
    let origin = Origin::start(|seen: &Seen| {
        let reply = Reply::ok("personal").header("Cache-Control", "public, max-age=600");
        match seen.url.as_str() {
            "/v1" => reply.header("Set-Cookie", "sid=1"),
            _ => reply.header("Set-Cookie2", "sid=2; Version=1"),
        }
    });
    let proxy = proxy_for(&origin);
    for path in ["/v1", "/v2"] {
        for _ in 0..2 {
            let resp = get(&proxy.url(path));
            assert!(
                resp.cache_status().contains("Set-Cookie"),
                "{path}: {}",
                resp.cache_status()
            );
        }
        assert_eq!(origin.hits_for(path), 2, "{path}");
    }
}

#[test]
fn a_response_to_a_no_store_request_is_not_stored() {
    let origin = Origin::start(|_| Reply::ok("x").header("Cache-Control", "max-age=60"));
    let proxy = proxy_for(&origin);
    let first = send("GET", &proxy.url("/ns"), &[("Cache-Control", "no-store")]);
    assert!(
        !first.cache_status().contains("stored"),
        "{}",
        first.cache_status()
    );
    assert_status_has(&get(&proxy.url("/ns")), "fwd=miss");
    assert_eq!(origin.hits(), 2);
}

#[test]
fn no_cache_is_stored_but_always_revalidated() {
    let not_modified = Arc::new(AtomicUsize::new(0));
    let origin = Origin::start({
        let not_modified = not_modified.clone();
        move |seen: &Seen| {
            let reply = Reply::ok("body")
                .header("Cache-Control", "no-cache")
                .header("ETag", "\"v1\"");
            if seen.header("if-none-match") == Some("\"v1\"") {
                not_modified.fetch_add(1, Ordering::SeqCst);
                return reply.status(304);
            }
            reply
        }
    });
    let proxy = proxy_for(&origin);
    get(&proxy.url("/r"));
    for _ in 0..2 {
        let resp = get(&proxy.url("/r"));
        assert_eq!((resp.status, resp.text().as_str()), (200, "body"));
        assert_status_has(&resp, "fwd=stale");
    }
    assert_eq!(origin.hits(), 3, "every use goes to the origin");
    assert_eq!(not_modified.load(Ordering::SeqCst), 2, "as a revalidation");
}

// ----------------------------------------------------------- 3. conditional requests

#[test]
fn client_conditionals_are_answered_304_from_cache() {
    let modified = "Mon, 01 Jan 2024 00:00:00 GMT";
    let origin = Origin::start(move |_| {
        Reply::ok("body")
            .header("Cache-Control", "max-age=60")
            .header("ETag", "\"v1\"")
            .header("Last-Modified", modified)
    });
    let proxy = proxy_for(&origin);
    get(&proxy.url("/c"));
    let etag = send("GET", &proxy.url("/c"), &[("If-None-Match", "\"v1\"")]);
    assert_eq!(etag.status, 304);
    assert!(etag.body.is_empty());
    let date = send("GET", &proxy.url("/c"), &[("If-Modified-Since", modified)]);
    assert_eq!(date.status, 304);
    let other = send("GET", &proxy.url("/c"), &[("If-None-Match", "\"v0\"")]);
    assert_eq!((other.status, other.text().as_str()), (200, "body"));
    assert_eq!(origin.hits(), 1);
}

/// `If-Match` and `If-Unmodified-Since` are preconditions on the current representation,
/// which the cache never evaluated: Pingora drops them from the fill it sends, and a hit
/// ignored them, so `If-Match: "old"` got the 200 of `"new"` instead of a 412. Such a request
/// goes to the origin as sent, and its answer is not stored.
#[test]
fn if_match_and_if_unmodified_since_are_left_to_the_origin() {
    const MODIFIED: &str = "Mon, 01 Jan 2024 00:00:00 GMT";
    let origin = Origin::start(|seen: &Seen| {
        let mismatched = seen.header("if-match").is_some_and(|tag| tag != "\"new\"")
            || seen
                .header("if-unmodified-since")
                .is_some_and(|since| since != MODIFIED);
        if mismatched {
            return Reply::ok("precondition failed").status(412);
        }
        Reply::ok("body new")
            .header("Cache-Control", "max-age=60")
            .header("ETag", "\"new\"")
            .header("Last-Modified", MODIFIED)
    });
    let proxy = proxy_for(&origin);
    let url = proxy.url("/pre");
    // On a miss (the fill would drop the condition), then with the object stored.
    for stored in [false, true] {
        for condition in [
            ("If-Match", "\"old\""),
            ("If-Unmodified-Since", "Sun, 31 Dec 2023 00:00:00 GMT"),
        ] {
            let failed = send("GET", &url, &[condition]);
            assert_eq!(failed.status, 412, "{condition:?} stored={stored}");
            assert_eq!(failed.text(), "precondition failed");
            let last = origin.seen().pop().expect("the origin saw it");
            assert_eq!(last.header(condition.0), Some(condition.1));
        }
        assert_eq!(get(&url).text(), "body new");
    }
    // The matching condition is answered by the origin too, and nothing it sent replaced
    // the stored object.
    let matched = send("GET", &url, &[("If-Match", "\"new\"")]);
    assert_eq!((matched.status, matched.text().as_str()), (200, "body new"));
    assert_status_has(&get(&url), "hit");
    assert_eq!(origin.hits_for("/pre"), 6);
}

#[test]
fn revalidation_304_refreshes_the_stored_headers() {
    let not_modified = Arc::new(AtomicUsize::new(0));
    let origin = validating_origin("max-age=1", not_modified.clone());
    let proxy = proxy_for(&origin);
    assert_eq!(get(&proxy.url("/r")).header("x-version"), Some("1"));
    sleep(Duration::from_millis(2100));
    let revalidated = get(&proxy.url("/r"));
    assert_eq!(revalidated.text(), "body v1");
    assert_eq!(revalidated.header("x-version"), Some("2"));
    assert_eq!(not_modified.load(Ordering::SeqCst), 1);
    // The 304's max-age=60 now governs the stored response.
    let hit = get(&proxy.url("/r"));
    assert_status_has(&hit, "hit");
    assert_eq!(hit.header("x-version"), Some("2"));
    assert_eq!(origin.hits(), 2);
}

/// A 304 without `Date` is dated when it arrives (RFC 9110 §6.6.1). The stored 200's `Date`
/// stayed, so the refreshed entry's age counted from the first fetch: once that was older
/// than the 304's max-age, every request revalidated, for good.
#[test]
fn a_304_without_date_refreshes_the_entry_from_its_arrival() {
    let origin = Origin::start(|seen: &Seen| {
        if seen.header("if-none-match") == Some("\"v1\"") {
            return Reply::ok("")
                .status(304)
                .header("ETag", "\"v1\"")
                .header("Cache-Control", "max-age=60");
        }
        // Sent 100 s ago (an origin clock behind ours), fresh for about one more second.
        let date = httpdate::fmt_http_date(std::time::SystemTime::now() - Duration::from_secs(100));
        Reply::ok("body v1")
            .header("Date", &date)
            .header("Cache-Control", "max-age=101")
            .header("ETag", "\"v1\"")
    });
    let proxy = proxy_for(&origin);
    assert_eq!(get(&proxy.url("/d")).text(), "body v1");
    sleep(Duration::from_millis(1500));
    let revalidated = get(&proxy.url("/d"));
    assert_eq!(revalidated.text(), "body v1");
    assert_eq!(origin.hits(), 2);
    for _ in 0..2 {
        let hit = get(&proxy.url("/d"));
        assert_eq!(hit.text(), "body v1");
        assert_status_has(&hit, "hit");
    }
    assert_eq!(origin.hits(), 2);
}

/// Fields a 304's `Connection` names are the connection's, not the response's: they were
/// merged into the stored response (without the `Connection` that named them) and served to
/// every later client.
#[test]
fn fields_a_304_names_in_connection_are_neither_stored_nor_served() {
    let origin = Origin::start(|seen: &Seen| {
        if seen.header("if-none-match") == Some("\"v1\"") {
            return Reply::ok("")
                .status(304)
                .header("ETag", "\"v1\"")
                .header("Cache-Control", "max-age=60")
                .header("Connection", "X-Sess")
                .header("X-Sess", "abc");
        }
        Reply::ok("body v1")
            .header("Cache-Control", "max-age=1")
            .header("ETag", "\"v1\"")
    });
    let proxy = proxy_for(&origin);
    assert_eq!(get(&proxy.url("/h")).text(), "body v1");
    sleep(Duration::from_millis(1100));
    let revalidated = get(&proxy.url("/h"));
    assert_status_has(&revalidated, "fwd=stale");
    assert_eq!(
        revalidated.header("x-sess"),
        None,
        "{:?}",
        revalidated.headers
    );
    for _ in 0..2 {
        let hit = get(&proxy.url("/h"));
        assert_status_has(&hit, "hit");
        assert_eq!(hit.header("x-sess"), None, "{:?}", hit.headers);
    }
    assert_eq!(origin.hits(), 2);
}

// -------------------------------------------------------------------- 4. invalidation

#[test]
fn successful_unsafe_requests_invalidate_the_url_and_its_locations() {
    let origin = Origin::start(|seen| match (seen.method.as_str(), seen.url.as_str()) {
        ("GET", _) => Reply::ok(seen.url.clone()).header("Cache-Control", "max-age=60"),
        ("POST", "/items") => Reply::ok("created")
            .status(201)
            .header("Location", "/items/7"),
        ("PUT", "/fail") => Reply::ok("no").status(500),
        ("DELETE", _) => Reply::ok("gone").status(200).header(
            "Content-Location",
            &format!("http://{}/items/8", seen.header("host").unwrap_or("")),
        ),
        _ => Reply::ok("ok"),
    });
    let proxy = proxy_for(&origin);
    let paths = ["/items", "/items/7", "/items/8", "/items/9", "/fail"];
    for path in paths {
        get(&proxy.url(path));
    }
    assert_eq!(send("POST", &proxy.url("/items"), &[]).status, 201);
    assert_eq!(send("PUT", &proxy.url("/fail"), &[]).status, 500);
    assert_eq!(send("DELETE", &proxy.url("/items/9"), &[]).status, 200);
    for path in paths {
        get(&proxy.url(path));
    }
    for path in ["/items", "/items/7", "/items/8", "/items/9"] {
        assert_eq!(
            origin.hits_for(path),
            2 + usize::from(path == "/items" || path == "/items/9"),
            "{path}"
        );
    }
    // A failed PUT invalidates nothing: one GET fill, one PUT.
    assert_eq!(origin.hits_for("/fail"), 2);
}

// ------------------------------------------------------------------- 5. serving stale

#[test]
fn stale_while_revalidate_serves_stale_and_refreshes_in_background() {
    let version = Arc::new(AtomicUsize::new(0));
    let origin = Origin::start({
        let version = version.clone();
        move |_| {
            let v = version.fetch_add(1, Ordering::SeqCst);
            // The refresh is fresh for a minute: still fresh when asked for below, however
            // slow the machine.
            let max_age = if v == 0 { 1 } else { 60 };
            Reply::ok(format!("v{v}")).header(
                "Cache-Control",
                &format!("max-age={max_age}, stale-while-revalidate=30"),
            )
        }
    });
    let proxy = proxy_for(&origin);
    assert_eq!(get(&proxy.url("/swr")).text(), "v0");
    sleep(Duration::from_millis(2100));
    let stale = get(&proxy.url("/swr"));
    assert_eq!(stale.text(), "v0");
    assert_status_has(&stale, "fwd=stale");
    support::wait_until("the background refresh is stored", || inserts(&proxy) == 2);
    let fresh = get(&proxy.url("/swr"));
    assert_eq!(fresh.text(), "v1");
    assert_status_has(&fresh, "hit");
    assert_eq!(origin.hits(), 2);
}

/// A background revalidation that gets an answer the cache may not store (an error sent
/// with no-store) refreshes nothing, and leaves the stale entry serving for its window: the
/// URL is not remembered as uncacheable, so requests are neither sent through to the failing
/// origin nor answered with its error.
#[test]
fn a_failed_background_revalidation_leaves_the_stale_entry_serving() {
    let failing = Arc::new(AtomicBool::new(false));
    let origin = Origin::start({
        let failing = failing.clone();
        move |_| {
            if failing.load(Ordering::SeqCst) {
                return Reply::ok("down")
                    .status(500)
                    .header("Cache-Control", "no-store");
            }
            Reply::ok("good").header("Cache-Control", "max-age=1, stale-while-revalidate=30")
        }
    });
    let proxy = proxy_for(&origin);
    assert_eq!(get(&proxy.url("/swr-fail")).text(), "good");
    failing.store(true, Ordering::SeqCst);
    sleep(Duration::from_millis(2100));
    let first_stale = get(&proxy.url("/swr-fail"));
    assert_eq!(first_stale.text(), "good");
    // The background revalidation has ended before the entry is asked for again. It is
    // counted apart from clients' requests: its 500 is no client's miss.
    let counted = |outcome: &str| {
        proxy.counted(&format!(
            "cachet_requests_total{{cache_status=\"{outcome}\",tenant=\"site\"}}"
        ))
    };
    support::wait_until("the background revalidation ends", || {
        counted("refresh") == 1
    });
    assert_eq!(
        counted("miss"),
        1,
        "only the first fill was a client's miss"
    );
    // Its access-log line says so too.
    let log = proxy.log_until(|log| log.contains("cache=\"refresh\""));
    assert!(log.contains("status=500 cache=\"refresh\""), "{log}");
    for _ in 0..4 {
        let again = get(&proxy.url("/swr-fail"));
        assert_eq!((again.status, again.text().as_str()), (200, "good"));
        assert_status_has(&again, "fwd=stale");
    }
}

#[test]
fn stale_if_error_covers_5xx_but_not_must_revalidate() {
    let failing = Arc::new(AtomicBool::new(false));
    let origin = Origin::start({
        let failing = failing.clone();
        move |seen| {
            if failing.load(Ordering::SeqCst) {
                return Reply::ok("down").status(503);
            }
            let cc = if seen.url == "/strict" {
                "max-age=1, must-revalidate, stale-if-error=60"
            } else {
                "max-age=1, stale-if-error=60"
            };
            Reply::ok("good").header("Cache-Control", cc)
        }
    });
    let proxy = proxy_for(&origin);
    get(&proxy.url("/lenient"));
    get(&proxy.url("/strict"));
    failing.store(true, Ordering::SeqCst);
    sleep(Duration::from_millis(2100));
    let lenient = get(&proxy.url("/lenient"));
    assert_eq!((lenient.status, lenient.text().as_str()), (200, "good"));
    assert_status_has(&lenient, "fwd=stale");
    let strict = get(&proxy.url("/strict"));
    assert_eq!(strict.status, 503);
    assert_eq!(origin.hits(), 4);
}

/// `no-cache` forbids reuse without a successful validation (RFC 9111 §5.2.2.4): its
/// stale-while-revalidate and stale-if-error windows serve nothing stale.
#[test]
fn no_cache_is_never_served_stale() {
    let failing = Arc::new(AtomicBool::new(false));
    let version = Arc::new(AtomicUsize::new(0));
    let origin = Origin::start({
        let (failing, version) = (failing.clone(), version.clone());
        move |_| {
            if failing.load(Ordering::SeqCst) {
                return Reply::ok("down").status(503);
            }
            // A validator, so the response is stored; each validation gets a new version.
            let v = version.fetch_add(1, Ordering::SeqCst) + 1;
            Reply::ok(format!("v{v}"))
                .header(
                    "Cache-Control",
                    "no-cache, max-age=100, stale-while-revalidate=100, stale-if-error=100",
                )
                .header("ETag", &format!("\"{v}\""))
        }
    });
    let proxy = proxy_for(&origin);
    assert_eq!(get(&proxy.url("/nc")).text(), "v1");
    let second = get(&proxy.url("/nc"));
    assert_eq!(
        second.text(),
        "v2",
        "served stale: {}",
        second.cache_status()
    );
    failing.store(true, Ordering::SeqCst);
    let third = get(&proxy.url("/nc"));
    assert_eq!(third.status, 503, "served stale: {}", third.cache_status());
}

/// A stored response that may not be served stale, and whose origin is unreachable, is a
/// 504 Gateway Timeout (RFC 9111 §5.2.2.2), as from a disconnected cache.
#[test]
fn must_revalidate_with_the_origin_unreachable_is_a_gateway_timeout() {
    let origin = Origin::start(|_| {
        Reply::ok("good")
            .header("Cache-Control", "max-age=1, must-revalidate")
            .header("ETag", "\"v1\"")
            .header("Connection", "close")
    });
    let proxy = proxy_for(&origin);
    get(&proxy.url("/mr"));
    drop(origin);
    sleep(Duration::from_millis(2100));
    let resp = get(&proxy.url("/mr"));
    assert_eq!(resp.status, 504, "{}", resp.cache_status());
}

#[test]
fn stale_if_error_covers_an_unreachable_origin() {
    let origin = Origin::start(|_| {
        // No keep-alive, so nothing pooled outlives the origin.
        Reply::ok("good")
            .header("Cache-Control", "max-age=1, stale-if-error=60")
            .header("Connection", "close")
    });
    let proxy = proxy_for(&origin);
    get(&proxy.url("/x"));
    drop(origin);
    sleep(Duration::from_millis(2100));
    let resp = get(&proxy.url("/x"));
    assert_eq!((resp.status, resp.text().as_str()), (200, "good"));
    assert_status_has(&resp, "fwd=stale");
}

/// A failure one request can provoke with its own head (a 500, a gateway's 502 for a header
/// the app chokes on) makes no other client's request wait on the stale copy: the next one
/// goes to the origin (probes AE, AF: a client could keep a URL stale for everyone).
#[test]
fn a_failure_one_request_can_provoke_starts_no_pause_for_others() {
    let version = Arc::new(AtomicUsize::new(0));
    let origin = Origin::start({
        let version = version.clone();
        move |seen: &Seen| {
            if let Some(status) = seen.header("x-break") {
                return Reply::ok("broken").status(status.parse().unwrap());
            }
            let v = version.fetch_add(1, Ordering::SeqCst) + 1;
            Reply::ok(format!("v{v}")).header("Cache-Control", "max-age=1, stale-if-error=600")
        }
    });
    let proxy = proxy_for(&origin);
    let url = proxy.url("/provoked");
    assert_eq!(get(&url).text(), "v1");
    for (status, before, after) in [("500", "v1", "v2"), ("502", "v2", "v3")] {
        sleep(Duration::from_millis(1100));
        let provoked = send("GET", &url, &[("X-Break", status)]);
        assert_eq!(provoked.text(), before, "{status}");
        assert_eq!(get(&url).text(), after, "{status}");
    }
}

/// A client error one request provokes with its own head (here a 400 for a field the origin
/// refuses) sends the URL's requests past the cache lock for a second at most: then the next
/// clients' misses wait on one fill again, the origin answering once. Marked uncacheable, the
/// URL sent every request of theirs to the origin until one answer was stored.
#[test]
fn a_client_error_one_request_provokes_leaves_the_url_cacheable_for_others() {
    let origin = Origin::start(|seen: &Seen| {
        if seen.header("x-break").is_some() {
            return Reply::ok("bad request").status(400);
        }
        Reply::ok("good")
            .header("Cache-Control", "max-age=60")
            .delay(Duration::from_millis(400))
    });
    let proxy = proxy_for(&origin);
    let url = proxy.url("/refused-field");
    assert_eq!(send("GET", &url, &[("X-Break", "1")]).status, 400);
    sleep(Duration::from_millis(1100));
    let answers: Vec<Resp> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..2).map(|_| scope.spawn(|| get(&url))).collect();
        clients.into_iter().map(|c| c.join().unwrap()).collect()
    });
    for resp in &answers {
        assert_eq!((resp.status, resp.text().as_str()), (200, "good"));
    }
    assert_eq!(
        origin.hits_for("/refused-field"),
        2,
        "one 400, then one fill"
    );
}

// --------------------------------------------------------------------------- 6. Vary

/// `Connection: Vary` makes the origin's Vary this hop's alone; stored without it, the
/// response would answer every request: it is not stored.
#[test]
fn a_vary_named_in_connection_is_not_dropped_into_one_shared_entry() {
    let origin = Origin::start(|seen| {
        let cookie = seen.header("cookie").unwrap_or("none").to_owned();
        Reply::ok(format!("user {cookie}"))
            .header("Cache-Control", "max-age=60")
            .header("Vary", "Cookie")
            .header("Connection", "Vary")
    });
    let proxy = proxy_for(&origin);
    for user in ["u=alice", "u=bob", "u=alice"] {
        let resp = send("GET", &proxy.url("/cv"), &[("Cookie", user)]);
        assert_eq!(
            resp.text(),
            format!("user {user}"),
            "{}",
            resp.cache_status()
        );
    }
}

/// `no-cache="Vary"` lists a field a stored response cannot do without: stripped, the gzip
/// variant was stored as the one answer for every request and, always revalidated by date,
/// went to clients that never accepted gzip (here: asked for br). Such a response is not
/// stored.
#[test]
fn a_vary_listed_in_no_cache_is_not_dropped_into_one_shared_entry() {
    let origin = Origin::start(|seen| {
        let coding = seen
            .header("accept-encoding")
            .unwrap_or("identity")
            .to_owned();
        if seen.header("if-modified-since").is_some() {
            return Reply::ok("").status(304);
        }
        Reply::ok(format!("body in {coding}"))
            .header("Cache-Control", "max-age=60, no-cache=\"Vary\"")
            .header("Vary", "Accept-Encoding")
            .header("Last-Modified", "Wed, 01 Jan 2020 00:00:00 GMT")
    });
    let proxy = proxy_for(&origin);
    let first = send("GET", &proxy.url("/nv"), &[("Accept-Encoding", "gzip")]);
    assert_eq!(first.text(), "body in gzip");
    let plain = send("GET", &proxy.url("/nv"), &[("Accept-Encoding", "br")]);
    assert_eq!(plain.text(), "body in br", "{}", plain.cache_status());
    assert_eq!(origin.hits_for("/nv"), 2);
}

/// Fields `no-cache="..."` names are kept out of what is stored, not from the client whose
/// request fetched them: a miss is served from the stored head, so no client ever got them.
/// (Such a response is revalidated before each reuse, and a `private` one not stored.)
#[test]
fn fields_listed_in_no_cache_reach_the_client_that_fetched_them() {
    let origin = Origin::start(|_| {
        Reply::ok("page")
            .header("Cache-Control", "max-age=60, no-cache=\"X-Token, X-User\"")
            .header("X-Token", "t")
            .header("X-User", "u")
            .header("ETag", "\"a\"")
    });
    let proxy = proxy_for(&origin);
    for round in 0..2 {
        let resp = send("GET", &proxy.url("/listed"), &[]);
        assert_status_has(&resp, "stored");
        assert_eq!(resp.header("x-token"), Some("t"), "round {round}");
        assert_eq!(resp.header("x-user"), Some("u"), "round {round}");
    }
    assert_eq!(origin.hits_for("/listed"), 2);
}

/// One variant's fetch failing (a 503 with no freshness) marked the whole URL uncacheable:
/// Pingora keeps its marks by primary key, so the gzip variant stored a moment before was no
/// longer looked up, and every gzip client went to the origin.
#[test]
fn a_failure_on_one_variant_keeps_the_other_variants_served() {
    let origin = Origin::start(|seen| match seen.header("accept-encoding") {
        Some("br") => Reply::ok("down").status(503),
        coding => Reply::ok(format!("body in {}", coding.unwrap_or("identity")))
            .header("Cache-Control", "max-age=600")
            .header("Vary", "Accept-Encoding"),
    });
    let proxy = proxy_for(&origin);
    let coded = |coding: &str| send("GET", &proxy.url("/fv"), &[("Accept-Encoding", coding)]);
    assert_eq!(coded("gzip").text(), "body in gzip");
    assert_status_has(&coded("gzip"), "hit");
    assert_eq!(coded("br").status, 503);
    for _ in 0..2 {
        let gzip = coded("gzip");
        assert_eq!(gzip.text(), "body in gzip");
        assert_status_has(&gzip, "hit");
    }
    assert_eq!(origin.hits_for("/fv"), 2);
}

#[test]
fn vary_stores_variants_side_by_side() {
    let origin = Origin::start(|seen| {
        let lang = seen.header("accept-language").unwrap_or("none").to_owned();
        let reply = Reply::ok(lang).header("Cache-Control", "max-age=60");
        if seen.url == "/star" {
            reply.header("Vary", "*")
        } else {
            reply.header("Vary", "Accept-Language")
        }
    });
    let proxy = proxy_for(&origin);
    let lang = |l: &str| send("GET", &proxy.url("/v"), &[("Accept-Language", l)]);
    assert_eq!(lang("en").text(), "en");
    assert_eq!(lang("fr").text(), "fr");
    assert_eq!(get(&proxy.url("/v")).text(), "none");
    let en = lang("  EN ");
    assert_eq!(en.text(), "en", "normalised values share a variant");
    assert_status_has(&en, "hit");
    assert_eq!(lang("fr").text(), "fr");
    assert_eq!(get(&proxy.url("/v")).text(), "none");
    assert_eq!(origin.hits_for("/v"), 3);

    get(&proxy.url("/star"));
    get(&proxy.url("/star"));
    assert_eq!(
        origin.hits_for("/star"),
        2,
        "Vary: * is never served from cache"
    );
}

/// Only the content-negotiation fields are compared loosely: a cookie or a token that
/// differs in case is another variant, or one client could fill the variant others get.
#[test]
fn vary_on_a_cookie_or_a_token_compares_it_exactly() {
    let origin = Origin::start(|seen| {
        let cookie = seen.header("cookie").unwrap_or("-");
        let token = seen.header("x-api-key").unwrap_or("-");
        Reply::ok(format!("{cookie} {token}"))
            .header("Cache-Control", "max-age=60")
            .header("Vary", "Cookie, X-Api-Key")
    });
    let proxy = proxy_for(&origin);
    let fetch = |cookie: &str, token: &str| {
        send(
            "GET",
            &proxy.url("/v"),
            &[("Cookie", cookie), ("X-Api-Key", token)],
        )
    };
    assert_eq!(fetch("theme=Dark", "KeyA").text(), "theme=Dark KeyA");
    assert_status_has(&fetch("theme=Dark", "KeyA"), "hit");
    assert_eq!(fetch("theme=dark", "KeyA").text(), "theme=dark KeyA");
    assert_eq!(fetch("theme=Dark", "keya").text(), "theme=Dark keya");
    assert_eq!(origin.hits_for("/v"), 3);
}

// -------------------------------------------------------------- 7. CDN-Cache-Control

#[test]
fn targeted_cache_control_wins_and_only_cachets_own_stays_internal() {
    let origin = Origin::start(|seen| match seen.url.as_str() {
        "/cdn" => Reply::ok("a")
            .header("Cache-Control", "no-store")
            .header("CDN-Cache-Control", "max-age=60"),
        "/own" => Reply::ok("b")
            .header("Cache-Control", "max-age=60")
            .header("CDN-Cache-Control", "max-age=60")
            .header("Cachet-Cache-Control", "no-store"),
        _ => Reply::ok("c")
            .header("Cache-Control", "private")
            .header("Cachet-Cache-Control", "max-age=60"),
    });
    let proxy = proxy_for(&origin);
    for path in ["/cdn", "/own", "/mine"] {
        for _ in 0..2 {
            let resp = get(&proxy.url(path));
            // CDN-Cache-Control targets every CDN on the path: it goes on downstream.
            let cdn = (path != "/mine").then_some("max-age=60");
            assert_eq!(resp.header("cdn-cache-control"), cdn, "{path}");
            assert_eq!(resp.header("cachet-cache-control"), None, "{path}");
            assert!(resp.header("cache-control").is_some(), "{path}");
        }
    }
    assert_eq!(origin.hits_for("/cdn"), 1);
    assert_eq!(origin.hits_for("/own"), 2);
    assert_eq!(origin.hits_for("/mine"), 1);
}

// -------------------------------------------------------------------------- 8. purge

/// cachet with `server.admin_token` set.
fn token_proxy_for(origin: &Origin) -> Proxy {
    Proxy::start_with_server(
        &format!("admin_token = \"{TOKEN}\""),
        CACHE,
        &[TenantSpec::new("site", origin.addr, &plugin("standard"))],
    )
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

/// A purge (URL, tag or soft) or an invalidating POST that comes while the origin is still
/// preparing its answer keeps that answer from being stored: it may be what was purged. The
/// purge only reached fills whose head had arrived, and the older answer was stored fresh.
#[test]
fn a_purge_during_a_fetch_keeps_its_answer_from_being_stored() {
    let version = Arc::new(AtomicUsize::new(0));
    let released = Arc::new(AtomicBool::new(false));
    let origin = Origin::start({
        let (version, released) = (version.clone(), released.clone());
        move |seen| {
            if seen.method == "POST" {
                return Reply::ok("posted");
            }
            support::origin::hold_until_released(&released);
            let v = version.fetch_add(1, Ordering::SeqCst) + 1;
            Reply::ok(format!("v{v}"))
                .header("Cache-Control", "max-age=300")
                .header("Surrogate-Key", "t")
        }
    });
    let proxy = token_proxy_for(&origin);
    let auth = bearer();
    type Purge<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>);
    let purges: [Purge; 4] = [
        ("url", "PURGE", vec![("Authorization", auth.as_str())]),
        (
            "tag",
            "PURGE",
            vec![("Authorization", auth.as_str()), ("Surrogate-Key", "t")],
        ),
        (
            "soft",
            "PURGE",
            vec![("Authorization", auth.as_str()), ("Cache-Purge-Soft", "1")],
        ),
        ("post", "POST", vec![]),
    ];
    for (name, method, headers) in purges {
        let path = format!("/during-{name}");
        let url = proxy.url(&path);
        released.store(false, Ordering::SeqCst);
        let fetch = std::thread::spawn({
            let url = url.clone();
            move || get(&url)
        });
        // The origin holds the fetch until the purge is done.
        support::wait_until("the fetch reaches the origin", || {
            origin.hits_for(&path) == 1
        });
        send(method, &url, &headers);
        released.store(true, Ordering::SeqCst);
        let first = fetch.join().unwrap();
        assert_eq!(first.status, 200, "{name}");
        let next = get(&url);
        assert!(
            !next.cache_status().contains("hit"),
            "{name}: the answer fetched across the purge was stored: {} (first: {} {})",
            next.cache_status(),
            first.cache_status(),
            first.text()
        );
        assert_ne!(next.text(), first.text(), "{name}");
    }
}

/// An origin answering `v1`, `v2`, ... in turn, each storable for five minutes.
fn versioned_origin() -> Origin {
    let version = AtomicUsize::new(0);
    Origin::start(move |_| {
        let v = version.fetch_add(1, Ordering::SeqCst) + 1;
        Reply::ok(format!("v{v}")).header("Cache-Control", "max-age=300")
    })
}

/// `site.test:80` and `site.test.` are the site `site.test` (routing ignores the default port
/// and the dot): they share its cache entry, so a purge naming the site reaches a copy a
/// client fetched with either spelling. Each made its own key, which the purge never reached
/// (probe Z: old copies served after the purge). The origin is sent the one spelling too.
#[test]
fn a_purge_reaches_copies_fetched_with_the_default_port_or_a_trailing_dot() {
    let origin = versioned_origin();
    let proxy = token_proxy_for(&origin);
    let url = proxy.url("/spelled");
    let fetch = |host: &str| send("GET", &url, &[("Host", host)]);
    assert_eq!(fetch("site.test:80").text(), "v1");
    for host in [
        "site.test",
        "site.test.",
        "site.test..",
        "SITE.test:80",
        "site.test:080",
        "site.test:",
    ] {
        let again = fetch(host);
        assert_eq!(again.text(), "v1", "{host}");
        assert_status_has(&again, "hit");
    }
    assert!(origin
        .seen()
        .iter()
        .all(|s| s.header("host") == Some("site.test")));
    let auth = bearer();
    let purged = send(
        "PURGE",
        &url,
        &[("Host", "site.test"), ("Authorization", &auth)],
    );
    assert_eq!(purged.status, 200, "{}", purged.text());
    for host in ["site.test:80", "site.test."] {
        assert_eq!(fetch(host).text(), "v2", "{host}");
    }
}

/// Behind a proxy that terminates TLS and says so (`forwarded_headers = "append"`,
/// `X-Forwarded-Proto: https`), `Host: site.test:443` is the https site's default port: the
/// key's scheme decides which port is the default, not this hop's (probe AC: the entry was
/// its own, and the PURGE answered 404). A PURGE sent in plain HTTP for the site reaches it
/// too: a purge computes each scheme's key with that scheme's spelling.
#[test]
fn the_default_port_is_the_one_of_the_scheme_the_key_holds() {
    let origin = versioned_origin();
    let proxy = Proxy::start_with_server(
        &format!("admin_token = \"{TOKEN}\"\nforwarded_headers = \"append\""),
        CACHE,
        &[TenantSpec::new("site", origin.addr, &plugin("standard"))],
    );
    let url = proxy.url("/behind");
    let via_tls = |host: &str| {
        send(
            "GET",
            &url,
            &[("Host", host), ("X-Forwarded-Proto", "https")],
        )
    };
    assert_eq!(via_tls("site.test:443").text(), "v1");
    let same = via_tls("site.test");
    assert_eq!(same.text(), "v1");
    assert_status_has(&same, "hit");
    assert!(origin
        .seen()
        .iter()
        .all(|s| s.header("host") == Some("site.test")));
    // Port 80 is not https's default: another origin, another entry.
    assert_eq!(via_tls("site.test:80").text(), "v2");
    let auth = bearer();
    let purged = send(
        "PURGE",
        &url,
        &[("Host", "site.test:443"), ("Authorization", &auth)],
    );
    assert_eq!(purged.status, 200, "{}", purged.text());
    assert_eq!(via_tls("site.test").text(), "v3");
}

/// A soft purge that comes while a fill's body is still arriving stops it from being stored,
/// as a hard one does: the answer may be what was purged. It was stored fresh and the
/// PURGE answered 404 (nothing stored yet; probe U).
#[test]
fn a_soft_purge_while_the_body_arrives_keeps_it_from_being_stored() {
    let released = Arc::new(AtomicBool::new(false));
    let (addr, _) = half_sent_origin("", released.clone());
    let proxy = Proxy::start_with_server(
        &format!("admin_token = \"{TOKEN}\""),
        CACHE,
        &[TenantSpec::new("site", addr, &plugin("standard"))],
    );
    let url = proxy.url("/streaming");
    let fetch = std::thread::spawn({
        let url = url.clone();
        move || get(&url)
    });
    // The proxy has the origin's head; the body waits for the purge.
    support::wait_until("the origin's head arrives", || origin_heads(&proxy) == 1);
    let auth = bearer();
    let purge = send(
        "PURGE",
        &url,
        &[("Authorization", auth.as_str()), ("Cache-Purge-Soft", "1")],
    );
    assert_eq!(purge.status, 200, "the fill in flight was purged");
    released.store(true, Ordering::SeqCst);
    let first = fetch.join().unwrap();
    assert_eq!(first.status, 200);
    let next = get(&url);
    assert!(
        !next.cache_status().contains("hit"),
        "the answer fetched across the soft purge was stored: {}",
        next.cache_status()
    );
    assert_eq!(next.text(), "fetch-0002");
}

/// A purge or an invalidating request for another URL does not touch a fill in flight: with
/// one purge time per tenant, any client's POST anywhere kept every slow answer from being
/// stored (probe M), and a steady trickle of them kept the cache empty.
#[test]
fn a_purge_of_another_url_during_a_fetch_leaves_its_answer_stored() {
    let released = Arc::new(AtomicBool::new(false));
    let origin = Origin::start({
        let released = released.clone();
        move |seen| {
            if seen.method == "POST" {
                return Reply::ok("posted");
            }
            support::origin::hold_until_released(&released);
            Reply::ok(format!("for {}", seen.url)).header("Cache-Control", "max-age=300")
        }
    });
    let proxy = token_proxy_for(&origin);
    let auth = bearer();
    let headers: [(&str, Vec<(&str, &str)>); 2] = [
        ("PURGE", vec![("Authorization", auth.as_str())]),
        ("POST", vec![]),
    ];
    for (method, headers) in headers {
        let path = format!("/slow-{method}");
        let url = proxy.url(&path);
        released.store(false, Ordering::SeqCst);
        let fetch = std::thread::spawn({
            let url = url.clone();
            move || get(&url)
        });
        // The origin holds the fetch until the other request is done.
        support::wait_until("the fetch reaches the origin", || {
            origin.hits_for(&path) == 1
        });
        send(
            method,
            &proxy.url(&format!("/elsewhere-{method}")),
            &headers,
        );
        released.store(true, Ordering::SeqCst);
        let first = fetch.join().unwrap();
        assert!(
            first.cache_status().contains("stored"),
            "{method}: {}",
            first.cache_status()
        );
        assert_status_has(&get(&url), "hit");
    }
}

/// A flood of invalidating POSTs to URLs nobody is fetching keeps no fill from being stored.
/// The purge log remembered every purged key up to 4096 and counted a purge of the whole
/// tenant past them, so a client POSTing to new URLs kept every slow answer out of the cache
/// (probe AG). Only keys with a fill in flight are remembered now.
#[test]
fn a_flood_of_posts_to_new_urls_keeps_no_slow_fill_from_being_stored() {
    let release = Arc::new(AtomicBool::new(false));
    let origin = Origin::start({
        let release = release.clone();
        move |seen| {
            if seen.method == "POST" {
                return Reply::ok("posted");
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while !release.load(Ordering::SeqCst) && Instant::now() < deadline {
                sleep(Duration::from_millis(5));
            }
            Reply::ok("slow answer").header("Cache-Control", "max-age=300")
        }
    });
    let proxy = proxy_for(&origin);
    let url = proxy.url("/slow");
    let fetch = std::thread::spawn({
        let url = url.clone();
        move || get(&url)
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while origin.hits_for("/slow") == 0 && Instant::now() < deadline {
        sleep(Duration::from_millis(5));
    }
    // 4400 POSTs to new URLs, pipelined 100 to a connection, 44 connections at once (the
    // test origin answers each in ~40 ms).
    let port = proxy.port;
    let floods: Vec<_> = (0..44)
        .map(|thread| {
            std::thread::spawn(move || {
                let mut requests = String::new();
                for i in 0..100 {
                    let last = if i == 99 { "Connection: close\r\n" } else { "" };
                    requests.push_str(&format!(
                        "POST /flood-{thread}-{i} HTTP/1.1\r\nHost: site\r\n\
                         Content-Length: 0\r\n{last}\r\n"
                    ));
                }
                let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                conn.write_all(requests.as_bytes()).unwrap();
                let answers = support::wire::parse_responses(&support::wire::read_until_closed(
                    &mut conn,
                    Duration::from_secs(20),
                ));
                assert_eq!(answers.len(), 100);
                assert!(answers.iter().all(|a| a.status == 200));
            })
        })
        .collect();
    for flood in floods {
        flood.join().unwrap();
    }
    release.store(true, Ordering::SeqCst);
    let first = fetch.join().unwrap();
    assert_eq!(first.text(), "slow answer");
    assert!(
        first.cache_status().contains("stored"),
        "{}",
        first.cache_status()
    );
    assert_status_has(&get(&url), "hit");
    assert_eq!(origin.hits_for("/slow"), 1);
}

#[test]
fn purge_is_refused_without_a_configured_token() {
    let origin = Origin::start(|_| Reply::ok("x").header("Cache-Control", "max-age=60"));
    let proxy = proxy_for(&origin);
    get(&proxy.url("/p"));
    let resp = send("PURGE", &proxy.url("/p"), &with_auth("Bearer anything"));
    assert_eq!(resp.status, 405);
    assert_status_has(&get(&proxy.url("/p")), "hit");
    assert_eq!(origin.hits(), 1, "PURGE never reaches the origin");
}

#[test]
fn purge_removes_an_entry_for_the_admin_only() {
    let origin = Origin::start(|_| Reply::ok("x").header("Cache-Control", "max-age=60"));
    let proxy = token_proxy_for(&origin);
    get(&proxy.url("/p"));
    assert_eq!(send("PURGE", &proxy.url("/p"), &[]).status, 401);
    assert_eq!(
        send("PURGE", &proxy.url("/p"), &with_auth("Bearer wrong")).status,
        401
    );
    assert_status_has(&get(&proxy.url("/p")), "hit");
    let auth = bearer();
    assert_eq!(
        send("PURGE", &proxy.url("/p"), &with_auth(&auth)).status,
        200
    );
    assert_eq!(
        send("PURGE", &proxy.url("/p"), &with_auth(&auth)).status,
        404
    );
    assert_status_has(&get(&proxy.url("/p")), "fwd=miss");
    assert_eq!(origin.hits(), 2);
}

/// A URL purge reaches every variant a `Vary` response was stored under, hard or soft.
#[test]
fn purge_removes_every_variant_of_a_url() {
    let origin = Origin::start(|seen| {
        let lang = seen.header("accept-language").unwrap_or("none").to_owned();
        Reply::ok(lang)
            .header("Cache-Control", "max-age=60")
            .header("Vary", "Accept-Language")
    });
    let proxy = token_proxy_for(&origin);
    let lang = |l: &str| send("GET", &proxy.url("/v"), &[("Accept-Language", l)]);
    let auth = bearer();
    for soft in ["0", "1"] {
        for l in ["en", "fr", "de"] {
            lang(l);
        }
        assert_status_has(&lang("fr"), "hit");
        let purge = send(
            "PURGE",
            &proxy.url("/v"),
            &[("Authorization", auth.as_str()), ("Cache-Purge-Soft", soft)],
        );
        assert_eq!(purge.status, 200);
        for l in ["en", "fr", "de"] {
            let resp = lang(l);
            assert_eq!(resp.text(), l);
            assert!(
                !resp.cache_status().starts_with("cachet; hit"),
                "soft={soft}: the {l} variant was still a fresh hit: {}",
                resp.cache_status()
            );
        }
    }
}

#[test]
fn soft_purge_marks_stale_for_revalidation() {
    let not_modified = Arc::new(AtomicUsize::new(0));
    let origin = validating_origin("max-age=60", not_modified.clone());
    let proxy = token_proxy_for(&origin);
    get(&proxy.url("/r"));
    let auth = bearer();
    let purge = send(
        "PURGE",
        &proxy.url("/r"),
        &[("Authorization", auth.as_str()), ("Cache-Purge-Soft", "1")],
    );
    assert_eq!(purge.status, 200);
    let resp = get(&proxy.url("/r"));
    assert_eq!(resp.text(), "body v1");
    assert_eq!(
        not_modified.load(Ordering::SeqCst),
        1,
        "revalidated, not refetched"
    );
    assert_status_has(&get(&proxy.url("/r")), "hit");
    assert_eq!(origin.hits(), 2);
}

#[test]
fn purge_by_surrogate_key_removes_every_tagged_entry() {
    let origin = Origin::start(|seen| {
        let tags = match seen.url.as_str() {
            "/a" => "product-1 catalog",
            "/b" => "product-2 catalog",
            _ => "product-3",
        };
        Reply::ok("x")
            .header("Cache-Control", "max-age=60")
            .header("Surrogate-Key", tags)
    });
    let proxy = token_proxy_for(&origin);
    for path in ["/a", "/b", "/c"] {
        let resp = get(&proxy.url(path));
        assert_eq!(resp.header("surrogate-key"), None, "tags stay internal");
    }
    let auth = bearer();
    let purge = send(
        "PURGE",
        &proxy.url("/"),
        &[
            ("Authorization", auth.as_str()),
            ("Surrogate-Key", "product-1 product-2"),
        ],
    );
    assert_eq!(purge.status, 200);
    for path in ["/a", "/b", "/c"] {
        get(&proxy.url(path));
    }
    assert_eq!(origin.hits_for("/a"), 2);
    assert_eq!(origin.hits_for("/b"), 2);
    assert_eq!(origin.hits_for("/c"), 1);
    let none = send(
        "PURGE",
        &proxy.url("/"),
        &[
            ("Authorization", auth.as_str()),
            ("Surrogate-Key", "nothing"),
        ],
    );
    assert_eq!(none.status, 404);
    // A field naming no tag is a mistake, not "every object": refused, nothing touched.
    let blank = send(
        "PURGE",
        &proxy.url("/"),
        &[("Authorization", auth.as_str()), ("Surrogate-Key", "")],
    );
    assert_eq!(blank.status, 400, "{}", blank.text());
    get(&proxy.url("/c"));
    assert_eq!(origin.hits_for("/c"), 1);
}

/// A purge tag the index cannot keep (the 65th, or one over 256 bytes) would let its purge
/// miss the object: such a response is not stored at all, and says why. A list is read up to
/// its 1024th tag, repeats included (each tag read costs a comparison with every tag kept):
/// past that, the response is not stored either.
#[test]
fn a_response_with_more_purge_tags_than_the_index_keeps_is_not_stored() {
    let many: Vec<String> = (0..65).map(|i| format!("tag-{i}")).collect();
    let long = "x".repeat(257);
    let (many, long) = (many.join(" "), long.clone());
    let origin = Origin::start(move |seen| {
        let tags = match seen.url.as_str() {
            "/many" => many.clone(),
            "/long" => format!("short {long}"),
            "/repeated" => "tag-1 ".repeat(1025),
            // 1024 listed, two of them distinct.
            _ => format!("tag-1 tag-2 {}", "tag-2 ".repeat(1022)),
        };
        Reply::ok("x")
            .header("Cache-Control", "max-age=60")
            .header("Surrogate-Key", &tags)
    });
    let proxy = token_proxy_for(&origin);
    for path in ["/many", "/long", "/repeated", "/fine"] {
        let first = get(&proxy.url(path));
        let first = first.header("cache-status").unwrap_or_default().to_string();
        let second = get(&proxy.url(path));
        let second = second
            .header("cache-status")
            .unwrap_or_default()
            .to_string();
        if path == "/fine" {
            assert!(second.contains("; hit"), "{path}: {second}");
        } else {
            assert!(first.contains("purge tag"), "{path}: {first}");
            assert!(!second.contains("; hit"), "{path}: {second}");
        }
    }
    assert_eq!(origin.hits_for("/many"), 2);
    assert_eq!(origin.hits_for("/long"), 2);
    assert_eq!(origin.hits_for("/repeated"), 2);
    assert_eq!(origin.hits_for("/fine"), 1);
}

/// A `Surrogate-Key` line that is not visible ASCII (`product-1 catégorie`) was skipped whole:
/// the object was stored without `product-1`, and a purge of `product-1` missed it. A tag the
/// index cannot keep means the response is not stored, as for a tag over 256 bytes.
#[test]
fn a_response_with_a_purge_tag_that_is_not_ascii_is_not_stored() {
    let origin = Origin::start(|seen| {
        let reply = Reply::ok("x").header("Cache-Control", "max-age=60");
        match seen.url.as_str() {
            "/one-line" => reply.header("Surrogate-Key", "product-1 catégorie"),
            "/two-lines" => reply
                .header("Surrogate-Key", "product-1")
                .header("Surrogate-Key", "catégorie"),
            _ => reply.header("Surrogate-Key", "product-1"),
        }
    });
    let proxy = token_proxy_for(&origin);
    for path in ["/one-line", "/two-lines", "/fine"] {
        let first = get(&proxy.url(path));
        let first = first.header("cache-status").unwrap_or_default().to_string();
        if path != "/fine" {
            assert!(first.contains("purge tag"), "{path}: {first}");
        }
    }
    let auth = bearer();
    let purge = send(
        "PURGE",
        &proxy.url("/"),
        &[
            ("Authorization", auth.as_str()),
            ("Surrogate-Key", "product-1"),
        ],
    );
    assert_eq!(purge.status, 200, "{}", purge.text());
    for path in ["/one-line", "/two-lines", "/fine"] {
        let again = get(&proxy.url(path));
        let again = again.header("cache-status").unwrap_or_default().to_string();
        assert!(!again.contains("; hit"), "{path}: {again}");
    }
    assert_eq!(origin.hits_for("/one-line"), 2);
    assert_eq!(origin.hits_for("/two-lines"), 2);
    assert_eq!(origin.hits_for("/fine"), 2);
}

/// A tag purge that arrives while a response carrying the tag is still being fetched keeps
/// that response from being stored, as a URL purge does: it was stored and served as a hit
/// for its whole lifetime, the purge answered 404.
#[test]
fn a_tag_purge_stops_a_fill_in_flight_from_being_stored() {
    let released = Arc::new(AtomicBool::new(false));
    let (addr, fetches) = half_sent_origin("Surrogate-Key: slow-tag\r\n", released.clone());
    let proxy = Proxy::start_with_server(
        &format!("admin_token = \"{TOKEN}\""),
        CACHE,
        &[TenantSpec::new("site", addr, &plugin("standard"))],
    );
    let url = proxy.url("/slow");
    let filling = {
        let url = url.clone();
        std::thread::spawn(move || get(&url))
    };
    // The proxy has the origin's head, tag and all; the body waits for the purge.
    support::wait_until("the origin's head arrives", || origin_heads(&proxy) == 1);
    let auth = bearer();
    let purge = send(
        "PURGE",
        &proxy.url("/"),
        &[
            ("Authorization", auth.as_str()),
            ("Surrogate-Key", "slow-tag"),
        ],
    );
    assert_eq!(purge.status, 200, "{}", purge.text());
    released.store(true, Ordering::SeqCst);
    assert_eq!(filling.join().unwrap().text(), "fetch-0001");
    let after = get(&url);
    assert_eq!(after.text(), "fetch-0002", "{}", after.cache_status());
    assert_eq!(fetches.load(Ordering::SeqCst), 2);
}

/// An origin that answers `fetch-NNNN` (its count of requests), with `fields` in the head:
/// the head and `fetch` at once, the rest once `released` is set. A fill's body is still
/// arriving for as long as the test needs, not for a fixed time a busy machine can outlast.
/// Returns its address and the count.
fn half_sent_origin(
    fields: &'static str,
    released: Arc<AtomicBool>,
) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = support::bind_unclaimed();
    let addr = listener.local_addr().unwrap();
    let fetches = Arc::new(AtomicUsize::new(0));
    let counted = fetches.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let (counted, released) = (counted.clone(), released.clone());
            std::thread::spawn(move || {
                if support::wire::read_request_head(&mut conn).is_none() {
                    return;
                }
                let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
                let _ = conn.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: 10\r\nCache-Control: max-age=600\r\n\
                         {fields}Connection: close\r\n\r\nfetch"
                    )
                    .as_bytes(),
                );
                support::origin::hold_until_released(&released);
                let _ = conn.write_all(format!("-{n:04}").as_bytes());
            });
        }
    });
    (addr, fetches)
}

// -------------------------------------------------------------------------- 9. ranges

#[test]
fn range_requests_are_served_206_from_cache() {
    let origin = Origin::start(|_| Reply::ok("0123456789").header("Cache-Control", "max-age=60"));
    let proxy = proxy_for(&origin);
    get(&proxy.url("/r"));
    let part = send("GET", &proxy.url("/r"), &[("Range", "bytes=2-5")]);
    assert_eq!(part.status, 206);
    assert_eq!(part.text(), "2345");
    assert_eq!(part.header("content-range"), Some("bytes 2-5/10"));
    assert_eq!(origin.hits(), 1);
}

/// A range whose last position is before its first is invalid (RFC 9110 §14.1.1), and a
/// `Range` that is not valid is ignored: the whole representation, a 200. Pingora skipped
/// the spec as unsatisfiable and answered 416, on a miss and on a hit.
#[test]
fn an_invalid_range_is_ignored() {
    let origin = Origin::start(|_| Reply::ok("0123456789").header("Cache-Control", "max-age=60"));
    let proxy = proxy_for(&origin);
    for range in ["bytes=5-2", "bytes=0-1, 5-2"] {
        let miss = send(
            "GET",
            &proxy.url(&format!("/r?{}", range.len())),
            &[("Range", range)],
        );
        assert_eq!(
            (miss.status, miss.text().as_str()),
            (200, "0123456789"),
            "{range}"
        );
        let hit = send("GET", &proxy.url("/whole"), &[]);
        assert_eq!(hit.status, 200);
        let ranged = send("GET", &proxy.url("/whole"), &[("Range", range)]);
        assert_status_has(&ranged, "hit");
        assert_eq!(
            (ranged.status, ranged.text().as_str()),
            (200, "0123456789"),
            "{range}"
        );
        assert_eq!(ranged.header("content-range"), None, "{range}");
    }
}

#[test]
fn objects_over_the_tenant_limit_stream_through_unstored() {
    // 40 KiB bodies: one tenant allows 16 KiB objects, the other the global 1 MiB.
    let origin =
        Origin::start(|_| Reply::ok(vec![b'z'; 40 * 1024]).header("Cache-Control", "max-age=600"));
    let proxy = Proxy::start(
        "max_bytes = \"16MiB\"\nmax_object_bytes = \"1MiB\"",
        &[
            TenantSpec::new("small", origin.addr, &plugin("standard"))
                .hosts(&["small.test"])
                .limits("hook_timeout_ms = 250\nmax_object_bytes = \"16KiB\""),
            TenantSpec::new("big", origin.addr, &plugin("standard")).hosts(&["big.test"]),
        ],
    );
    let url = proxy.url("/large");
    for _ in 0..2 {
        let resp = send("GET", &url, &[("Host", "small.test")]);
        assert_eq!(
            resp.body.len(),
            40 * 1024,
            "the client still gets the whole body"
        );
        assert!(
            resp.cache_status().contains("max_object_bytes"),
            "{}",
            resp.cache_status()
        );
    }
    assert_eq!(origin.hits_for("/large"), 2);
    send("GET", &url, &[("Host", "big.test")]);
    assert!(send("GET", &url, &[("Host", "big.test")])
        .cache_status()
        .contains("hit"));
    assert_eq!(origin.hits_for("/large"), 3);
}

#[test]
fn the_plugin_normalises_a_varying_header_into_shared_variants() {
    // static-assets spells Accept-Encoding canonically: case, spaces, order and a weight
    // of 1 do not make a new variant; the set of codings does.
    let origin = Origin::start(|seen| {
        let ae = seen.header("accept-encoding").unwrap_or("none").to_owned();
        Reply::ok(format!("for {ae}"))
            .header("Cache-Control", "max-age=600")
            .header("Vary", "Accept-Encoding")
    });
    let proxy = Proxy::start(
        "max_bytes = \"16MiB\"",
        &[TenantSpec::new(
            "site",
            origin.addr,
            &plugin("static-assets"),
        )],
    );
    // Raw requests: the test's HTTP client would add an Accept-Encoding of its own.
    let with = |accept: Option<&str>| {
        let field = accept.map_or(String::new(), |a| format!("Accept-Encoding: {a}\r\n"));
        support::wire::one(
            proxy.port,
            &format!("GET /app.js HTTP/1.1\r\nHost: site.test\r\n{field}Connection: close\r\n\r\n"),
        )
    };
    let status =
        |resp: &support::wire::RawResp| resp.header("cache-status").unwrap_or("").to_owned();
    let first = with(Some("gzip, deflate, br"));
    assert_eq!(first.text(), "for gzip, deflate, br");
    // Spelled differently, the same codings: the same variant.
    let same = with(Some("BR;q=1.0, deflate ,GZIP"));
    assert!(status(&same).contains("hit"), "{}", status(&same));
    assert_eq!(same.text(), "for gzip, deflate, br");
    assert_eq!(origin.hits_for("/app.js"), 1);
    // Headers an origin may answer differently each get the origin's own answer, never
    // another's: "*" may be answered gzip where no header gets plain bytes, "br, gzip"
    // gzip where "br" alone gets plain bytes.
    for (accept, seen) in [
        (Some("*"), "*"),
        (None, "none"),
        (Some("br, gzip"), "br, gzip"),
        (Some("br"), "br"),
        (Some("gzip;q=0"), "gzip;q=0"),
        (Some("gzip"), "gzip"),
    ] {
        let resp = with(accept);
        assert_eq!(resp.text(), format!("for {seen}"), "{accept:?}");
        assert!(status(&with(accept)).contains("hit"), "{accept:?}");
    }
    assert_eq!(origin.hits_for("/app.js"), 7);
}

// ---------------------------------------------------------------- 8. the lean hit path

/// A hit's head and body as the client gets them, minus the fields that change with time.
fn hit_as_sent(port: u16, request: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let resp = support::wire::one(port, request);
    let mut fields: Vec<(String, String)> = resp
        .headers
        .iter()
        .filter(|(name, _)| !name.eq_ignore_ascii_case("date"))
        .map(|(name, value)| {
            let value = match name.to_ascii_lowercase().as_str() {
                // Seconds since the fill and freshness left may tick between the two proxies.
                "age" => "<age>".to_owned(),
                "cache-status" => value.split("; ttl=").next().unwrap_or("").to_owned(),
                _ => value.clone(),
            };
            (name.to_ascii_lowercase(), value)
        })
        .collect();
    fields.sort();
    (resp.status, fields, resp.body)
}

#[test]
fn lean_and_full_hits_answer_alike() {
    let origin = Origin::start(|seen| {
        Reply::ok(format!("body of {}", seen.url))
            .header("Cache-Control", "max-age=600")
            .header("ETag", "\"v1\"")
            .header("X-Origin-Field", "kept as sent")
            .header("Cachet-Cache-Control", "max-age=600")
    });
    let start = |lean: bool| {
        let metrics_port = support::free_port();
        let proxy = Proxy::start_with_server(
            &format!("metrics = \"127.0.0.1:{metrics_port}\""),
            &format!("{CACHE}\nlean_hits = {lean}"),
            &[TenantSpec::new("site", origin.addr, &plugin("standard"))],
        );
        (proxy, metrics_port)
    };
    let (lean, lean_metrics) = start(true);
    let (full, full_metrics) = start(false);
    let request = "GET /page?a=1 HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n";
    for proxy in [&lean, &full] {
        let miss = support::wire::one(proxy.port, request);
        assert!(miss
            .header("cache-status")
            .unwrap_or("")
            .contains("fwd=miss"));
    }
    let lean_hit = hit_as_sent(lean.port, request);
    let full_hit = hit_as_sent(full.port, request);
    assert_eq!(
        lean_hit, full_hit,
        "a lean hit differs from a full-path hit"
    );
    assert_eq!(lean_hit.2, b"body of /page?a=1");
    let (_, fields, _) = &lean_hit;
    let field = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(field("cache-status"), Some("cachet; hit"));
    assert_eq!(field("age"), Some("<age>"));
    assert_eq!(field("x-origin-field"), Some("kept as sent"));
    assert_eq!(
        field("cachet-cache-control"),
        None,
        "cachet's own field stays internal"
    );
    assert_eq!(lean_hits_counted(lean_metrics), 1);
    assert_eq!(lean_hits_counted(full_metrics), 0);

    // What the lean path leaves to the full path is still answered right, and not counted.
    let range = "GET /page?a=1 HTTP/1.1\r\nHost: site.test\r\nRange: bytes=0-3\r\nConnection: close\r\n\r\n";
    let partial = support::wire::one(lean.port, range);
    assert_eq!((partial.status, partial.text().as_str()), (206, "body"));
    let conditional = "GET /page?a=1 HTTP/1.1\r\nHost: site.test\r\nIf-None-Match: \"v1\"\r\nConnection: close\r\n\r\n";
    assert_eq!(support::wire::one(lean.port, conditional).status, 304);
    let head = "HEAD /page?a=1 HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n";
    assert!(support::wire::one(lean.port, head).body.is_empty());
    assert_eq!(lean_hits_counted(lean_metrics), 1);
    assert_eq!(
        origin.hits_for("/page?a=1"),
        2,
        "one fill per proxy, every other answer a hit"
    );
}

/// A request that finds its stored response stale and goes to the origin says `fwd=stale`
/// (RFC 9211 §2.2) whether the origin confirms the stored response (304) or sends a new one.
#[test]
fn a_stale_entry_forwarded_says_fwd_stale_whatever_the_origin_answers() {
    let fetches = Arc::new(AtomicUsize::new(0));
    let origin = Origin::start({
        let fetches = fetches.clone();
        move |seen: &Seen| {
            if seen.url == "/same" && seen.header("if-none-match") == Some("\"s1\"") {
                return Reply::ok("").status(304).header("ETag", "\"s1\"");
            }
            let n = fetches.fetch_add(1, Ordering::SeqCst);
            Reply::ok(format!("body {n}"))
                .header("Cache-Control", "max-age=1")
                .header(
                    "ETag",
                    if seen.url == "/same" {
                        "\"s1\""
                    } else {
                        "\"n\""
                    },
                )
        }
    });
    let proxy = proxy_for(&origin);
    for path in ["/new", "/same"] {
        let first = get(&proxy.url(path));
        assert_eq!(
            first.cache_status(),
            "cachet; fwd=miss; fwd-status=200; stored",
            "{path}"
        );
    }
    sleep(Duration::from_millis(1100));
    let replaced = send("GET", &proxy.url("/new"), &[]);
    assert_eq!(
        replaced.cache_status(),
        "cachet; fwd=stale; fwd-status=200; stored",
        "{:?}",
        replaced.headers
    );
    let confirmed = send("GET", &proxy.url("/same"), &[]);
    assert_eq!(
        confirmed.cache_status(),
        "cachet; fwd=stale; fwd-status=304; stored",
        "{:?}",
        confirmed.headers
    );
    assert_eq!(origin.hits(), 4);
}

/// A malformed directive list never hides a directive that forbids storing: a `;` where a
/// comma belongs, an unterminated quoted string, or a targeted field passed over for a
/// wrongly typed member (nginx and Varnish find `private` anywhere in the field too).
#[test]
fn malformed_directive_lists_never_hide_a_restriction() {
    let origin = Origin::start(|seen| {
        let reply = Reply::ok(format!("for {}", seen.url));
        match seen.url.as_str() {
            "/semicolon" => reply.header("Cache-Control", "max-age=300, private; must-revalidate"),
            "/quote" => reply.header("Cache-Control", "max-age=300, x=\"a, private"),
            "/targeted" => reply
                .header("Cache-Control", "public, max-age=300")
                .header("CDN-Cache-Control", "no-store, max-age=\"60\""),
            _ => reply.header("Cache-Control", "max-age=300"),
        }
    });
    let proxy = proxy_for(&origin);
    for path in ["/semicolon", "/quote", "/targeted"] {
        let first = get(&proxy.url(path));
        assert!(
            !first.cache_status().contains("stored"),
            "{path}: {}",
            first.cache_status()
        );
        let second = get(&proxy.url(path));
        assert!(
            !second.cache_status().contains("hit"),
            "{path}: {}",
            second.cache_status()
        );
        assert_eq!(origin.hits_for(path), 2, "{path}");
    }
    // The control: a well-formed list is stored.
    get(&proxy.url("/plain"));
    assert!(get(&proxy.url("/plain")).cache_status().contains("hit"));
}

/// A chunked body larger than `max_object_bytes` streams through unstored, whole, to the
/// client that asked for it, however fast the origin sends it (probe M: an origin writing
/// 200000 bytes in 7000-byte chunks at once got its client cut at 14000 bytes).
#[test]
fn a_fast_chunked_body_over_max_object_bytes_reaches_its_client_whole() {
    const CHUNK: usize = 7000;
    const CHUNKS: usize = 29;
    let origin = support::raw::RawOrigin::start(|_| {
        let mut answer =
            b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec();
        for i in 0..CHUNKS {
            answer.extend_from_slice(format!("{CHUNK:x}\r\n").as_bytes());
            answer.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, CHUNK));
            answer.extend_from_slice(b"\r\n");
        }
        answer.extend_from_slice(b"0\r\n\r\n");
        answer
    });
    let proxy = Proxy::start(
        "",
        &[TenantSpec::new("site", origin.addr, &plugin("standard"))
            .limits("hook_timeout_ms = 250\nmax_object_bytes = \"16KiB\"")],
    );
    for i in 0..5 {
        let path = format!("/large/{i}");
        let got = support::raw::get(proxy.port, &path, &[]);
        assert_eq!(got.head.status, 200, "{path}");
        assert_eq!(
            got.body.len(),
            CHUNK * CHUNKS,
            "{path}: {}",
            got.cache_status()
        );
        assert!(
            got.body[CHUNK * 28..].iter().all(|b| *b == b'a' + 2),
            "{path}"
        );
    }
    let log = proxy.log();
    assert!(!log.contains("fell more than"), "{log}");
}

/// `If-None-Match: *` matches any current representation (RFC 9110 §13.1.2): a stored 200
/// answers it 304 whether or not it has an `ETag` (it was sent whole without one).
#[test]
fn if_none_match_star_is_answered_304_from_any_stored_200() {
    let origin = Origin::start(|seen| {
        let reply = Reply::ok("body").header("Cache-Control", "max-age=300");
        if seen.url == "/tagged" {
            reply.header("ETag", "\"t\"")
        } else {
            reply
        }
    });
    let proxy = proxy_for(&origin);
    for path in ["/untagged", "/tagged"] {
        get(&proxy.url(path));
        let star = send("GET", &proxy.url(path), &[("If-None-Match", "*")]);
        assert_eq!(star.status, 304, "{path}: {}", star.cache_status());
        assert!(star.body.is_empty(), "{path}");
        let other = send("GET", &proxy.url(path), &[("If-None-Match", "\"other\"")]);
        assert_eq!(other.status, 200, "{path}");
    }
    assert_eq!(origin.hits(), 2);
}
