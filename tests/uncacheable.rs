//! Hit-for-miss: once a URL's response could not be stored, concurrent requests for it go to
//! the origin side by side instead of queueing on the cache lock; a later storable response
//! clears the mark. The real `cachet` binary, the real `standard` plugin, a slow counting origin.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::client::{get, send, Resp};
use support::origin::{Origin, Reply};
use support::plugin;
use support::proxy::{Proxy, TenantSpec};

const ORIGIN_DELAY: Duration = Duration::from_millis(500);
const CONCURRENT: usize = 20;

fn assert_status_has(resp: &Resp, needle: &str) {
    assert!(
        resp.cache_status().contains(needle),
        "Cache-Status {:?} lacks {needle:?}",
        resp.cache_status()
    );
}

/// Sends `CONCURRENT` GETs for `path` at once; returns how long the last one took.
fn burst(proxy: &Proxy, path: &str, headers: &'static [(&'static str, &'static str)]) -> Duration {
    let url = proxy.url(path);
    let started = Instant::now();
    let clients: Vec<_> = (0..CONCURRENT)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || send("GET", &url, headers))
        })
        .collect();
    for client in clients {
        assert_eq!(client.join().expect("client thread").status, 200);
    }
    started.elapsed()
}

/// How a burst reaches the origin: while `gathering`, each request is held there until
/// `CONCURRENT` have come, so requests sent side by side are seen side by side however slow
/// the machine; `most` is the most it held at once.
#[derive(Default)]
struct Gather {
    gathering: AtomicBool,
    now: AtomicUsize,
    most: AtomicUsize,
}

/// `/no-store` and `/private` answer uncacheable until `storable` is set, then `max-age=60`,
/// after `ORIGIN_DELAY` or as `gather` holds them.
fn slow_origin(storable: Arc<AtomicBool>, gather: Arc<Gather>) -> Origin {
    Origin::start(move |seen| {
        let cache_control = if storable.load(Ordering::SeqCst) {
            "max-age=60"
        } else if seen.url == "/private" {
            "private, max-age=60"
        } else {
            "no-store"
        };
        let reply = Reply::ok("body").header("Cache-Control", cache_control);
        if !gather.gathering.load(Ordering::SeqCst) {
            return reply.delay(ORIGIN_DELAY);
        }
        let at_once = gather.now.fetch_add(1, Ordering::SeqCst) + 1;
        gather.most.fetch_max(at_once, Ordering::SeqCst);
        // At most 2 s, under the cache lock's 5 s timeout: requests queued on the lock stay
        // queued until this answer.
        let deadline = Instant::now() + Duration::from_secs(2);
        while gather.most.load(Ordering::SeqCst) < CONCURRENT && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        gather.now.fetch_sub(1, Ordering::SeqCst);
        reply
    })
}

#[test]
fn uncacheable_urls_skip_the_cache_lock_until_a_storable_answer() {
    let storable = Arc::new(AtomicBool::new(false));
    let gather = Arc::new(Gather::default());
    let origin = slow_origin(storable.clone(), gather.clone());
    let proxy = Proxy::start(
        "max_bytes = \"64MiB\"",
        &[TenantSpec::new("site", origin.addr, &plugin("standard"))],
    );
    for path in ["/no-store", "/private"] {
        assert_status_has(&get(&proxy.url(path)), "fwd=miss");
        gather.most.store(0, Ordering::SeqCst);
        gather.gathering.store(true, Ordering::SeqCst);
        let took = burst(&proxy, path, &[]);
        gather.gathering.store(false, Ordering::SeqCst);
        eprintln!("{path}: {CONCURRENT} concurrent requests took {took:?}");
        // Queued on the lock, one request (a fill that is never stored) would reach the
        // origin first and everyone else after its answer.
        let most = gather.most.load(Ordering::SeqCst);
        assert_eq!(
            most, CONCURRENT,
            "{path}: at most {most} of {CONCURRENT} concurrent requests at the origin at once"
        );
        assert_eq!(origin.hits_for(path), 1 + CONCURRENT, "{path}");
    }

    storable.store(true, Ordering::SeqCst);
    for path in ["/no-store", "/private"] {
        // The first storable answer clears the mark and is stored; the next request is a hit.
        assert_status_has(&get(&proxy.url(path)), "stored");
        assert_status_has(&get(&proxy.url(path)), "hit");
        assert_eq!(origin.hits_for(path), 2 + CONCURRENT, "{path}");
    }
}

#[test]
fn a_refusal_particular_to_one_request_does_not_mark_the_url() {
    // Shareable for anonymous requests, not for authorized ones (no `public`).
    let origin = Origin::start(|_| {
        Reply::ok("body")
            .header("Cache-Control", "max-age=60")
            .delay(ORIGIN_DELAY)
    });
    let proxy = Proxy::start(
        "max_bytes = \"64MiB\"",
        &[TenantSpec::new("site", origin.addr, &plugin("standard"))],
    );
    let authorized = send(
        "GET",
        &proxy.url("/shared"),
        &[("Authorization", "Bearer alice")],
    );
    assert_status_has(&authorized, "authorized request and response not public");
    // Anonymous requests still coalesce into one fill, then hit.
    burst(&proxy, "/shared", &[]);
    assert_eq!(origin.hits_for("/shared"), 2);
    assert_status_has(&get(&proxy.url("/shared")), "hit");
}

#[test]
fn the_record_can_be_turned_off() {
    let origin = slow_origin(Arc::new(AtomicBool::new(false)), Arc::default());
    let proxy = Proxy::start(
        "max_bytes = \"64MiB\"\nuncacheable_keys = 0",
        &[TenantSpec::new("site", origin.addr, &plugin("standard"))],
    );
    get(&proxy.url("/no-store"));
    // Without the record every burst queues behind one fill again.
    let took = burst(&proxy, "/no-store", &[]);
    eprintln!("record off: {CONCURRENT} concurrent requests took {took:?}");
    assert!(took >= 2 * ORIGIN_DELAY, "{took:?}");
    assert_eq!(origin.hits_for("/no-store"), 1 + CONCURRENT);
}

/// A request with credentials takes no cache lock: anonymous requests for the URL that arrive
/// while it is answered coalesce on their own fill. They queued behind it, and its answer
/// (not shareable) made every one of them give up the lock and go to the origin.
#[test]
fn a_request_with_credentials_does_not_hold_others_behind_its_fetch() {
    let arrived = Arc::new(AtomicUsize::new(0));
    let origin = Origin::start({
        let arrived = arrived.clone();
        move |seen| {
            arrived.fetch_add(1, Ordering::SeqCst);
            if seen.header("authorization").is_some() {
                // Answered once the anonymous fill has come too, however slow the machine (3 s
                // at most, under the cache lock's 5 s timeout): queued behind this request's
                // fetch, it would not come before this answer.
                let deadline = Instant::now() + Duration::from_secs(3);
                while arrived.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            Reply::ok("page")
                .header("Cache-Control", "max-age=60")
                .delay(Duration::from_millis(500))
        }
    });
    let proxy = Proxy::start(
        "max_bytes = \"64MiB\"",
        &[TenantSpec::new("site", origin.addr, &plugin("standard"))],
    );
    let url = proxy.url("/shared");
    let authorized = std::thread::spawn({
        let url = url.clone();
        move || send("GET", &url, &[("Authorization", "Bearer zz")])
    });
    // At the origin before the anonymous requests come.
    support::wait_until("the authorized request reaches the origin", || {
        origin.hits() == 1
    });
    let anonymous: Vec<_> = (0..5)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || get(&url))
        })
        .collect();
    assert_eq!(authorized.join().unwrap().status, 200);
    for request in anonymous {
        assert_eq!(request.join().unwrap().text(), "page");
    }
    // The authorized fetch, and one fill the anonymous requests shared.
    assert_eq!(origin.hits(), 2);
}
