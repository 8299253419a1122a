//! The disk tier (`[cache.disk]`): objects outlive the process, keep their variants, tenants,
//! tags, soft purges and freshness, and a damaged stored object is a miss, never served.
//! Real cachet processes, a real origin, real files.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};
use support::client::send;
use support::origin::{Origin, Reply};
use support::proxy::{run_cachet, Proxy, TenantSpec};
use support::{find_in_segments, lean_hits_counted, plugin};

const TOKEN: &str = "disk-tier-token";

/// An origin whose bodies name the path, the tenant's host, the language and how many times
/// it was asked, so a stale or foreign copy is visible in the body.
fn origin() -> Origin {
    let asked = std::sync::Mutex::new(std::collections::HashMap::<String, usize>::new());
    Origin::start(move |seen| {
        let host = seen.header("host").unwrap_or("-").to_owned();
        let n = {
            let mut asked = asked.lock().unwrap();
            let n = asked.entry(format!("{host}{}", seen.url)).or_default();
            *n += 1;
            *n
        };
        let lang = seen.header("accept-language").unwrap_or("-");
        // `/large/...` bodies are big enough that the disk needs a moment to take them.
        let repeat = if seen.url.starts_with("/large/") {
            28000
        } else {
            20
        };
        let body = format!("{} for {host} in {lang} #{n} ", seen.url).repeat(repeat);
        let max_age = if seen.url == "/short" { 1 } else { 300 };
        let mut reply =
            Reply::ok(body).header("Cache-Control", &format!("public, max-age={max_age}"));
        if seen.url == "/vary" {
            reply = reply.header("Vary", "Accept-Language");
        }
        if seen.url == "/tagged" {
            reply = reply.header("Surrogate-Key", "t1");
        }
        reply
    })
}

fn start(origin: &Origin, disk: &Path) -> Proxy {
    start_with(origin, disk, "", "")
}

fn start_with(origin: &Origin, disk: &Path, server: &str, cache: &str) -> Proxy {
    start_with_limits(origin, disk, server, cache, "max_bytes = \"64MiB\"")
}

/// `disk_limits`: the `[cache.disk]` keys besides `path`.
fn start_with_limits(
    origin: &Origin,
    disk: &Path,
    server: &str,
    cache: &str,
    disk_limits: &str,
) -> Proxy {
    Proxy::start_with_server(
        &format!("admin_token = \"{TOKEN}\"\n{server}"),
        &format!(
            "max_bytes = \"16MiB\"\n{cache}\n[cache.disk]\npath = {:?}\n{disk_limits}\n[plugins]\nwatch = false",
            disk.display().to_string()
        ),
        &[
            TenantSpec::new("one", origin.addr, &plugin("standard")).hosts(&["one.test"]),
            TenantSpec::new("two", origin.addr, &plugin("standard")).hosts(&["two.test"]),
        ],
    )
}

fn get(proxy: &Proxy, host: &str, path: &str, extra: &[(&str, &str)]) -> support::client::Resp {
    let mut headers = vec![("Host", host)];
    headers.extend_from_slice(extra);
    let resp = send("GET", &proxy.url(path), &headers);
    assert_eq!(resp.status, 200, "{host}{path}: {}", resp.text());
    resp
}

fn disk_stats(proxy: &Proxy) -> serde_json::Value {
    let status = proxy.status();
    let tiers = status["cache"]["tiers"].as_array().expect("cache.tiers");
    assert_eq!(tiers.len(), 1, "{tiers:?}");
    assert_eq!(tiers[0]["name"], "l2-disk");
    tiers[0].clone()
}

/// Waits until the disk tier has taken `writes` objects (its writer runs off the request).
fn wait_writes(proxy: &Proxy, writes: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = disk_stats(proxy);
        if stats["writes"].as_u64().unwrap_or(0) >= writes {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "disk writes never reached {writes}: {stats}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops cachet by its PID (SIGINT: drain, flush the disk tier, exit).
fn stop(proxy: &mut Proxy) {
    assert!(
        proxy.interrupt(),
        "cachet exited with an error:\n{}",
        proxy.log()
    );
}

fn purge(proxy: &Proxy, host: &str, path: &str, extra: &[(&str, &str)]) -> u16 {
    let auth = format!("Bearer {TOKEN}");
    let mut headers = vec![("Host", host), ("Authorization", auth.as_str())];
    headers.extend_from_slice(extra);
    send("PURGE", &proxy.url(path), &headers).status
}

#[test]
fn objects_survive_a_restart_with_variants_tenants_tags_and_freshness() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    let origin = origin();
    let mut first = start(&origin, &disk);
    let en = [("Accept-Language", "en")];
    let fr = [("Accept-Language", "fr")];
    let mut bodies = Vec::new();
    for (host, path, extra) in [
        ("one.test", "/a", &[][..]),
        ("two.test", "/a", &[][..]),
        ("one.test", "/vary", &en[..]),
        ("one.test", "/vary", &fr[..]),
        ("one.test", "/tagged", &[][..]),
        ("one.test", "/soft", &[][..]),
        ("one.test", "/short", &[][..]),
    ] {
        let resp = get(&first, host, path, extra);
        assert!(
            resp.cache_status().contains("fwd=miss"),
            "{}",
            resp.cache_status()
        );
        bodies.push(resp.text());
    }
    assert_eq!(origin.hits(), 7);
    wait_writes(&first, 7);
    // A tag purge before the restart must hold after it.
    assert_eq!(
        purge(&first, "one.test", "/", &[("Surrogate-Key", "t1")]),
        200
    );
    stop(&mut first);

    let second = start(&origin, &disk);
    assert_eq!(
        disk_stats(&second)["objects"],
        7,
        "the index is read back from the files"
    );
    let from_disk = |host, path, extra: &[(&str, &str)], body: &str| {
        let resp = get(&second, host, path, extra);
        assert!(
            resp.cache_status().starts_with("cachet; hit; ttl=")
                && resp.cache_status().ends_with(r#"; detail="l2-disk""#),
            "{host}{path}: {}",
            resp.cache_status()
        );
        assert_eq!(resp.text(), body, "{host}{path}");
        // Promoted: the next hit is L1's, with no detail.
        let again = get(&second, host, path, extra);
        assert!(
            again.cache_status().starts_with("cachet; hit")
                && !again.cache_status().contains("detail"),
            "{}",
            again.cache_status()
        );
        assert_eq!(again.text(), body);
    };
    from_disk("one.test", "/a", &[], &bodies[0]);
    from_disk("two.test", "/a", &[], &bodies[1]);
    assert_ne!(bodies[0], bodies[1], "each tenant has its own object");
    from_disk("one.test", "/vary", &en, &bodies[2]);
    from_disk("one.test", "/vary", &fr, &bodies[3]);
    assert_eq!(origin.hits(), 7, "every hit above came from disk");

    // Purged by tag before the restart: a miss now.
    let tagged = get(&second, "one.test", "/tagged", &[]);
    assert!(
        tagged.cache_status().contains("fwd=miss"),
        "{}",
        tagged.cache_status()
    );
    assert!(tagged.text().contains("#2"), "{}", tagged.text());

    // Expired on disk (max-age=1): it goes to the origin, not served as fresh.
    std::thread::sleep(Duration::from_millis(1100));
    let short = get(&second, "one.test", "/short", &[]);
    assert!(
        !short.cache_status().contains("hit"),
        "{}",
        short.cache_status()
    );
    assert!(short.text().contains("#2"), "{}", short.text());

    // A soft purge on this run covers the copy on disk: revalidated with the origin.
    assert_eq!(
        purge(&second, "one.test", "/soft", &[("Cache-Purge-Soft", "1")]),
        200
    );
    let soft = get(&second, "one.test", "/soft", &[]);
    assert!(
        !soft.cache_status().contains("; hit"),
        "{}",
        soft.cache_status()
    );
    assert_eq!(origin.hits_for("/soft"), 2);
    assert_eq!(origin.hits(), 10);

    let stats = disk_stats(&second);
    assert!(stats["hits"].as_u64().unwrap() >= 4, "{stats}");
    assert!(stats["stored_bytes"].as_u64().unwrap() > 0, "{stats}");
    assert_eq!(stats["errors"], 0, "{stats}");
}

/// pingora's serialization of a head writes the code's canonical reason phrase; a hit from
/// the disk tier still answers with the origin's own, as the fill and L1's hits did.
#[test]
fn a_hit_from_disk_keeps_the_origins_reason_phrase() {
    let origin = support::raw::RawOrigin::start(|head| {
        let (status, body) = if head.starts_with("GET /gone ") {
            ("404 Gone Fishing", "nope!")
        } else {
            ("200 Fine By Me", "fine!")
        };
        format!(
            "HTTP/1.1 {status}\r\nCache-Control: public, max-age=300\r\nContent-Length: 5\r\n\r\n{body}"
        )
        .into_bytes()
    });
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    let start = || {
        Proxy::start_with_server(
            &format!("admin_token = \"{TOKEN}\""),
            &format!(
                "max_bytes = \"16MiB\"\n[cache.disk]\npath = {:?}\nmax_bytes = \"64MiB\"\n[plugins]\nwatch = false",
                disk.display().to_string()
            ),
            &[TenantSpec::new("one", origin.addr, &plugin("standard")).hosts(&["one.test"])],
        )
    };
    let paths = [("/fine", 200, "Fine By Me"), ("/gone", 404, "Gone Fishing")];
    let get = |proxy: &Proxy, path: &str| {
        let request = format!("GET {path} HTTP/1.1\r\nHost: one.test\r\nConnection: close\r\n\r\n");
        support::raw::exchange(proxy.port, request.as_bytes())
    };
    let mut first = start();
    for (path, status, reason) in paths {
        let fill = get(&first, path);
        assert_eq!(
            (fill.head.status, fill.head.reason.as_str()),
            (status, reason)
        );
        assert!(
            fill.cache_status().contains("fwd=miss"),
            "{}",
            fill.cache_status()
        );
    }
    wait_writes(&first, 2);
    stop(&mut first);

    let second = start();
    for (path, status, reason) in paths {
        let from_disk = get(&second, path);
        assert!(
            from_disk.cache_status().ends_with(r#"; detail="l2-disk""#),
            "{path}: {}",
            from_disk.cache_status()
        );
        assert_eq!(from_disk.head.status, status, "{path}");
        assert_eq!(from_disk.head.reason, reason, "{path}");
        assert_eq!(from_disk.body.len(), 5, "{path}");
    }
    assert_eq!(origin.requests(), 2, "the hits came from disk");
}

/// The tier keeps to its byte budget: the oldest objects make room for new ones, and after a
/// restart what was evicted is a miss while the newest objects are still disk hits.
#[test]
fn the_disk_tier_keeps_to_its_budget_by_dropping_the_oldest_objects() {
    const OBJECTS: usize = 24;
    const BUDGET: u64 = 8 << 20;
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    let origin = origin();
    // ~870 KB bodies: each fills most of a 1 MiB segment, so the budget holds at most 8.
    let mut first = start_with_limits(&origin, &disk, "", "", "max_bytes = \"8MiB\"");
    for i in 0..OBJECTS {
        get(&first, "one.test", &format!("/large/{i:02}"), &[]);
    }
    wait_writes(&first, OBJECTS as u64);
    let stats = disk_stats(&first);
    assert_eq!(stats["budget_bytes"], BUDGET, "{stats}");
    assert!(stats["stored_bytes"].as_u64().unwrap() <= BUDGET, "{stats}");
    stop(&mut first);
    let on_disk: u64 = std::fs::read_dir(disk.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(on_disk <= BUDGET, "{on_disk} bytes of segments");

    let second = start_with_limits(&origin, &disk, "", "", "max_bytes = \"8MiB\"");
    let kept = disk_stats(&second)["objects"].as_u64().unwrap();
    assert!((1..=8).contains(&kept), "{kept} objects kept");
    let newest = get(
        &second,
        "one.test",
        &format!("/large/{:02}", OBJECTS - 1),
        &[],
    );
    assert!(
        newest.cache_status().ends_with(r#"; detail="l2-disk""#),
        "{}",
        newest.cache_status()
    );
    let oldest = get(&second, "one.test", "/large/00", &[]);
    assert!(
        oldest.cache_status().contains("fwd=miss"),
        "{}",
        oldest.cache_status()
    );
    assert_eq!(origin.hits(), OBJECTS + 1);
}

/// With `max_objects` the tier keeps no more objects than that, however small they are, and
/// drops the oldest first.
#[test]
fn the_disk_tier_keeps_to_its_cap_on_objects() {
    const OBJECTS: usize = 2500;
    const CAP: u64 = 1024;
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    let origin = origin();
    let limits = format!("max_bytes = \"8MiB\"\nmax_objects = {CAP}");
    let mut first = start_with_limits(&origin, &disk, "", "", &limits);
    for i in 0..OBJECTS {
        get(&first, "one.test", &format!("/small/{i:04}"), &[]);
    }
    wait_writes(&first, OBJECTS as u64);
    let stats = disk_stats(&first);
    assert_eq!(stats["max_objects"], CAP, "{stats}");
    let kept = stats["objects"].as_u64().unwrap();
    assert!((CAP / 2..=CAP).contains(&kept), "{stats}");
    // Far below the byte budget: the cap, not the bytes, is what dropped objects.
    assert!(stats["stored_bytes"].as_u64().unwrap() < 4 << 20, "{stats}");
    stop(&mut first);

    let second = start_with_limits(&origin, &disk, "", "", &limits);
    // Opening makes room for a full segment of new objects, as it does for bytes.
    let reopened = disk_stats(&second)["objects"].as_u64().unwrap();
    assert!((CAP / 2..=kept).contains(&reopened), "{reopened} of {kept}");
    let newest = get(
        &second,
        "one.test",
        &format!("/small/{:04}", OBJECTS - 1),
        &[],
    );
    assert!(
        newest.cache_status().ends_with(r#"; detail="l2-disk""#),
        "{}",
        newest.cache_status()
    );
    let oldest = get(&second, "one.test", "/small/0000", &[]);
    assert!(
        oldest.cache_status().contains("fwd=miss"),
        "{}",
        oldest.cache_status()
    );
    assert_eq!(origin.hits(), OBJECTS + 1);
}

/// A stop right after the fills loses none of them: the objects still queued for the disk
/// tier, and those in its write buffers, reach the files before the process exits.
#[test]
fn a_stop_right_after_fills_keeps_every_object() {
    const OBJECTS: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    let origin = origin();
    let mut first = start(&origin, &disk);
    // All at once, so their writes queue up together.
    let bodies: Vec<String> = std::thread::scope(|s| {
        let fills: Vec<_> = (0..OBJECTS)
            .map(|i| {
                let first = &first;
                s.spawn(move || get(first, "one.test", &format!("/large/{i}"), &[]).text())
            })
            .collect();
        fills.into_iter().map(|f| f.join().unwrap()).collect()
    });
    assert!(bodies[0].len() > 200 << 10, "{}", bodies[0].len());
    // No wait for the writes: the stop itself must finish them.
    stop(&mut first);

    let second = start(&origin, &disk);
    for (i, body) in bodies.iter().enumerate() {
        let resp = get(&second, "one.test", &format!("/large/{i}"), &[]);
        assert!(
            resp.cache_status().ends_with(r#"; detail="l2-disk""#),
            "/large/{i} after the restart: {}\n{}",
            resp.cache_status(),
            second.log()
        );
        assert_eq!(&resp.text(), body, "/large/{i}");
    }
    assert_eq!(origin.hits(), OBJECTS);
}

fn tier_count(proxy: &Proxy, field: &str) -> u64 {
    disk_stats(proxy)[field].as_u64().expect("tier counter")
}

/// With nothing in memory, the lean hit path reads the disk tier itself and serves a plain
/// fresh copy from it; whatever it cannot serve (a varying copy, nothing at all) goes to the
/// full path with what was read, so every request reads the tier exactly once.
#[test]
fn a_request_reads_the_disk_tier_once_on_the_lean_path() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    let origin = origin();
    let mut first = start(&origin, &disk);
    let en = [("Accept-Language", "en")];
    let plain = get(&first, "one.test", "/a", &[]).text();
    let varying = get(&first, "one.test", "/vary", &en).text();
    wait_writes(&first, 2);
    stop(&mut first);

    let metrics_port = support::free_port();
    let second = start_with(
        &origin,
        &disk,
        &format!("metrics = \"127.0.0.1:{metrics_port}\""),
        "lean_hits = true",
    );
    let (hits, misses) = (tier_count(&second, "hits"), tier_count(&second, "misses"));

    let resp = get(&second, "one.test", "/a", &[]);
    assert!(
        resp.cache_status().ends_with(r#"; detail="l2-disk""#),
        "{}",
        resp.cache_status()
    );
    assert_eq!(resp.text(), plain);
    assert_eq!(
        lean_hits_counted(metrics_port),
        1,
        "served by the lean path"
    );
    assert_eq!(tier_count(&second, "hits"), hits + 1);

    // A varying copy is the full path's to serve: from the read the lean path made.
    let resp = get(&second, "one.test", "/vary", &en);
    assert!(
        resp.cache_status().ends_with(r#"; detail="l2-disk""#),
        "{}",
        resp.cache_status()
    );
    assert_eq!(resp.text(), varying);
    assert_eq!(lean_hits_counted(metrics_port), 1);
    assert_eq!(
        tier_count(&second, "hits"),
        hits + 2,
        "one read per request"
    );

    // Nothing anywhere: one tier miss, then the origin.
    let resp = get(&second, "one.test", "/new", &[]);
    assert!(
        resp.cache_status().contains("fwd=miss"),
        "{}",
        resp.cache_status()
    );
    assert_eq!(
        tier_count(&second, "misses"),
        misses + 1,
        "one read per request"
    );
    assert_eq!(origin.hits_for("/new"), 1);
    assert_eq!(origin.hits(), 3);
}

/// A graceful upgrade starts the new process while the old one still runs: the new one
/// serves without the disk tier until the old one exits, then opens it, and what the old one
/// stored is a hit.
#[test]
fn a_second_process_waits_for_the_folder_and_then_opens_it() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    let origin = origin();
    let mut old = start(&origin, &disk);
    get(&old, "one.test", "/early", &[]);
    let stored = get(&old, "one.test", "/later", &[]).text();
    wait_writes(&old, 2);

    let new = start(&origin, &disk);
    assert_eq!(
        disk_stats(&new)["connected"],
        false,
        "the old process holds the folder"
    );
    let early = get(&new, "one.test", "/early", &[]);
    assert!(
        early.cache_status().contains("fwd=miss"),
        "{}",
        early.cache_status()
    );
    assert_eq!(origin.hits(), 3);

    stop(&mut old);
    wait_connected(&new);
    let later = get(&new, "one.test", "/later", &[]);
    assert!(
        later.cache_status().ends_with(r#"detail="l2-disk""#),
        "{}",
        later.cache_status()
    );
    assert_eq!(later.text(), stored);
    assert_eq!(origin.hits(), 3);
}

/// Waits until the disk tier serves lookups (a process that waited for its folder).
fn wait_connected(proxy: &Proxy) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while disk_stats(proxy)["connected"] != true {
        assert!(
            Instant::now() < deadline,
            "the disk tier never opened:\n{}",
            proxy.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Fills `/victim`, stops cachet, damages the stored copy with `damage`, starts again and
/// checks the damaged object is a miss answered by the origin.
fn damaged_copy_is_a_miss(damage: impl Fn(&Path, usize)) {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    let origin = origin();
    let mut first = start(&origin, &disk);
    let stored = get(&first, "one.test", "/victim", &[]).text();
    wait_writes(&first, 1);
    stop(&mut first);

    let (file, at) = find_in_segments(&disk, stored.as_bytes()).expect("the body is on disk");
    damage(&file, at);

    let second = start(&origin, &disk);
    let resp = get(&second, "one.test", "/victim", &[]);
    assert!(
        resp.cache_status().contains("fwd=miss"),
        "{}",
        resp.cache_status()
    );
    assert!(
        resp.text().contains("#2"),
        "the origin's new copy: {}",
        resp.text()
    );
    assert_eq!(origin.hits(), 2);
    // The damaged entry is gone from the index: asking again finds L1's new copy, and the
    // tier reports no hit for the damaged one.
    let again = get(&second, "one.test", "/victim", &[]);
    assert_eq!(again.text(), resp.text());
    assert_eq!(disk_stats(&second)["hits"], 0);
}

#[test]
fn a_corrupted_object_is_a_miss_and_never_served() {
    damaged_copy_is_a_miss(|file, at| {
        let mut bytes = std::fs::read(file).unwrap();
        for b in &mut bytes[at + 10..at + 20] {
            *b ^= 0x5a;
        }
        std::fs::write(file, bytes).unwrap();
    });
}

#[test]
fn a_truncated_object_is_a_miss_and_never_served() {
    damaged_copy_is_a_miss(|file, at| {
        let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
        f.set_len((at + 40) as u64).unwrap();
    });
}

/// One byte of one entry's header damaged while cachet was stopped costs that object and the
/// later ones of its segment, and no other: past a header that cannot be read, the entry's
/// length is unknown, and what looks like an entry after it may lie inside its body, where a
/// client could have had a whole forged entry cached (naming another tenant's key). Those
/// entries only remove their keys; the earlier ones, and the other segments, are kept.
#[test]
fn a_damaged_entry_header_costs_its_object_and_the_later_ones_of_its_segment() {
    const OBJECTS: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    let origin = origin();
    let mut first = start(&origin, &disk);
    let bodies: Vec<String> = (0..OBJECTS)
        .map(|i| get(&first, "one.test", &format!("/obj/{i}"), &[]).text())
        .collect();
    wait_writes(&first, OBJECTS as u64);
    stop(&mut first);

    // The segment's entries: `[magic (4), kind, reserved (3), key len (4), value len (4),
    // crc (4), key, value]`. The second one is damaged, in its magic.
    let (file, _) = find_in_segments(&disk, bodies[0].as_bytes()).expect("on disk");
    let mut bytes = std::fs::read(&file).unwrap();
    let entry_len = |at: usize| {
        let word = |from: usize| u32::from_le_bytes(bytes[from..from + 4].try_into().unwrap());
        20 + word(at + 8) as usize + word(at + 12) as usize
    };
    let second = entry_len(0);
    assert_eq!(&bytes[second..second + 4], b"CSG1");
    bytes[second + 1] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    let lost: Vec<usize> = (0..OBJECTS)
        .filter(|&i| {
            let (in_file, at) = find_in_segments(&disk, bodies[i].as_bytes()).unwrap();
            in_file == file && at >= second
        })
        .collect();
    assert!(!lost.is_empty() && lost.len() < OBJECTS, "{lost:?}");

    let restarted = start(&origin, &disk);
    assert_eq!(disk_stats(&restarted)["objects"], OBJECTS - lost.len());
    for (i, body) in bodies.iter().enumerate().filter(|(i, _)| !lost.contains(i)) {
        let resp = get(&restarted, "one.test", &format!("/obj/{i}"), &[]);
        assert!(
            resp.cache_status().ends_with(r#"; detail="l2-disk""#),
            "/obj/{i} after the restart: {}",
            resp.cache_status()
        );
        assert_eq!(&resp.text(), body, "/obj/{i}");
    }
    assert_eq!(origin.hits(), OBJECTS, "only the fills reached the origin");
    for &i in &lost {
        let resp = get(&restarted, "one.test", &format!("/obj/{i}"), &[]);
        assert!(
            resp.cache_status().contains("fwd=miss"),
            "/obj/{i}: {}",
            resp.cache_status()
        );
        assert_ne!(&resp.text(), &bodies[i], "the origin's new copy");
    }
    assert_eq!(origin.hits(), OBJECTS + lost.len());
    assert_eq!(
        std::fs::metadata(&file).unwrap().len(),
        bytes.len() as u64,
        "the segment was not cut"
    );
}

/// A soft URL purge of an object only on disk (after a restart) keeps the copy and makes it
/// stale: the next request revalidates it with a conditional request, as for a copy in
/// memory, instead of fetching it whole.
#[test]
fn a_soft_url_purge_keeps_the_disk_copy_for_revalidation() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    let origin = Origin::validating();
    let mut first = start(&origin, &disk);
    let stored = get(&first, "one.test", "/soft-url", &[]).text();
    wait_writes(&first, 1);
    stop(&mut first);

    let second = start(&origin, &disk);
    assert_eq!(
        purge(
            &second,
            "one.test",
            "/soft-url",
            &[("Cache-Purge-Soft", "1")]
        ),
        200
    );
    // `cachet explain` reads the disk copy as the next request will: expired (no stale
    // window), not fresh.
    let config = second.dir.path().join("cachet.toml").display().to_string();
    let url = second.url("/soft-url");
    let args = [
        "explain",
        "--config",
        &config,
        "--json",
        "-H",
        "Host: one.test",
        &url,
    ];
    let (ok, json) = run_cachet(&args);
    assert!(ok, "{json}");
    let explained: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(explained["entry"]["state"], "expired", "{explained:#}");
    let resp = get(&second, "one.test", "/soft-url", &[]);
    assert!(
        resp.cache_status().contains("fwd=stale"),
        "revalidated, not a miss: {}",
        resp.cache_status()
    );
    assert_eq!(resp.text(), stored);
    let asked = origin.seen();
    assert_eq!(asked.len(), 2, "{asked:?}");
    assert_eq!(asked[1].header("if-none-match"), Some("\"v1\""));
    assert!(get(&second, "one.test", "/soft-url", &[])
        .cache_status()
        .starts_with("cachet; hit"));
    assert_eq!(disk_stats(&second)["removed"], 0);
}

/// A body the origin sent chunked is written to disk with the length it turned out to have:
/// after a restart its disk hit states it and answers a range.
#[test]
fn a_chunked_body_is_kept_on_disk_with_its_length() {
    let origin = support::raw::RawOrigin::start(|_| {
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=300\r\nTransfer-Encoding: chunked\r\n\r\n\
          4\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\n"
            .to_vec()
    });
    let disk = tempfile::tempdir().unwrap();
    let launch = || {
        Proxy::start_with_server(
            "",
            &format!(
                "max_bytes = \"16MiB\"\n[cache.disk]\npath = {:?}\nmax_bytes = \"64MiB\"\n[plugins]\nwatch = false",
                disk.path().display().to_string()
            ),
            &[TenantSpec::new("one", origin.addr, &plugin("standard")).hosts(&["one.test"])],
        )
    };
    let mut proxy = launch();
    assert_eq!(get(&proxy, "one.test", "/chunked", &[]).text(), "abcdefg");
    wait_writes(&proxy, 1);
    stop(&mut proxy);

    let proxy = launch();
    let range = send(
        "GET",
        &proxy.url("/chunked"),
        &[("Host", "one.test"), ("Range", "bytes=1-3")],
    );
    assert_eq!(range.status, 206, "{}", range.cache_status());
    assert_eq!(range.text(), "bcd");
    assert!(
        range.cache_status().contains("l2-disk"),
        "{}",
        range.cache_status()
    );
    let whole = get(&proxy, "one.test", "/chunked", &[]);
    assert_eq!(whole.header("content-length"), Some("7"));
    assert_eq!(origin.requests(), 1);
}

/// An object larger than the tenant's share of memory (`cache_quota`) is still kept by the
/// disk tier behind it, and served from there: it is not refused as too large for the cache.
#[test]
fn an_object_larger_than_the_memory_quota_is_kept_on_disk() {
    let origin = origin();
    let disk = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_with_server(
        &format!("admin_token = \"{TOKEN}\""),
        &format!(
            "max_bytes = \"16MiB\"\nmax_object_bytes = \"2MiB\"\n[cache.disk]\npath = {:?}\nmax_bytes = \"64MiB\"\n[plugins]\nwatch = false",
            disk.path().display().to_string()
        ),
        &[TenantSpec::new("one", origin.addr, &plugin("standard"))
            .hosts(&["one.test"])
            .limits("cache_quota = \"256KiB\"")],
    );
    let first = get(&proxy, "one.test", "/large/a", &[]);
    assert!(first.body.len() > 256 * 1024, "{}", first.body.len());
    assert!(
        first.cache_status().contains("stored"),
        "{}",
        first.cache_status()
    );
    wait_writes(&proxy, 1);
    let second = get(&proxy, "one.test", "/large/a", &[]);
    assert_eq!(second.body, first.body);
    assert!(
        second.cache_status().contains("l2-disk"),
        "{}",
        second.cache_status()
    );
}

/// A body without a length over the tenant's `max_object_bytes` is not stored in a tier
/// either (probe M: the disk and shared tiers took chunked bodies L1 refused, and served
/// them as hits), while a small one is.
#[test]
fn a_chunked_body_over_max_object_bytes_is_not_stored_in_the_tier() {
    let origin = support::raw::RawOrigin::start(|head| {
        let size = if head.starts_with("GET /big") {
            20_000
        } else {
            2_000
        };
        let mut answer =
            b"HTTP/1.1 200 OK\r\nCache-Control: max-age=300\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec();
        for _ in 0..size / 1000 {
            answer.extend_from_slice(b"3e8\r\n");
            answer.extend(std::iter::repeat_n(b'x', 1000));
            answer.extend_from_slice(b"\r\n");
        }
        answer.extend_from_slice(b"0\r\n\r\n");
        answer
    });
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_with_server(
        &format!("admin_token = \"{TOKEN}\""),
        &format!(
            "max_bytes = \"16MiB\"\n[cache.disk]\npath = {:?}\nmax_bytes = \"64MiB\"\n[plugins]\nwatch = false",
            dir.path().join("disk").display().to_string()
        ),
        &[TenantSpec::new("one", origin.addr, &plugin("standard"))
            .limits("hook_timeout_ms = 250\nmax_object_bytes = \"16KiB\"")],
    );
    let big = send("GET", &proxy.url("/big"), &[]);
    assert_eq!(big.body.len(), 20_000);
    let small = send("GET", &proxy.url("/small"), &[]);
    assert_eq!(small.body.len(), 2_000);
    wait_writes(&proxy, 1);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(disk_stats(&proxy)["writes"], 1, "only the small body");
    let again = send("GET", &proxy.url("/big"), &[]);
    assert!(
        !again.cache_status().contains("hit"),
        "{}",
        again.cache_status()
    );
    assert_eq!(origin.requests(), 3);
}

/// A response with no freshness but a validator (`no-cache` with an `ETag`) reaches the disk
/// tier and is revalidated from there, as from memory: it was never sent to a tier, so after
/// a restart (or an L1 eviction) the origin sent it whole again (probe M).
#[test]
fn a_no_cache_response_with_a_validator_is_revalidated_from_the_disk_tier() {
    let origin = Origin::start(|seen| {
        if seen.header("if-none-match") == Some("\"e\"") {
            return Reply::ok("").status(304).header("ETag", "\"e\"");
        }
        Reply::ok("x".repeat(2000))
            .header("Cache-Control", "no-cache")
            .header("ETag", "\"e\"")
    });
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    let mut first = start(&origin, &disk);
    get(&first, "one.test", "/nc", &[]);
    wait_writes(&first, 1);
    stop(&mut first);
    let second = start(&origin, &disk);
    let again = get(&second, "one.test", "/nc", &[]);
    assert_eq!(again.body.len(), 2000);
    assert_eq!(
        again.cache_status(),
        "cachet; fwd=stale; fwd-status=304; stored",
        "{:?}",
        again.headers
    );
    assert_eq!(origin.hits(), 2);
}

/// A tenant name kept for another site (none of its hosts kept) serves none of the old site's
/// disk copies: with a key that does not name the host (the `path-key` fixture), they matched
/// the new site's requests once memory had dropped its own.
#[test]
fn a_tenant_name_kept_for_another_site_serves_none_of_its_disk_copies() {
    let (old_site, new_site) = (site("old site"), site("new site"));
    let disk = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_with_server(
        &format!("admin_token = \"{TOKEN}\""),
        &format!(
            "max_bytes = \"16MiB\"\n[cache.disk]\npath = {:?}\nmax_bytes = \"64MiB\"",
            disk.path().display().to_string()
        ),
        &[
            TenantSpec::new("site", old_site.addr, &support::fixture("path-key"))
                .hosts(&["old.test"]),
        ],
    );
    assert_eq!(get(&proxy, "old.test", "/page", &[]).text(), "old site");
    wait_writes(&proxy, 1);

    let config = proxy.dir.path().join("cachet.toml");
    let moved = std::fs::read_to_string(&config)
        .unwrap()
        .replace("old.test", "new.test")
        .replace(&old_site.addr.to_string(), &new_site.addr.to_string());
    std::fs::write(&config, moved).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.status()["tenants"][0]["hosts"] != serde_json::json!(["new.test"]) {
        assert!(Instant::now() < deadline, "the config was never applied");
        std::thread::sleep(Duration::from_millis(20));
    }

    let answer = get(&proxy, "new.test", "/page", &[]);
    assert_eq!(answer.text(), "new site", "{}", answer.cache_status());
    assert_eq!(new_site.hits_for("/page"), 1);
}

/// The same across a restart: a tenant name that comes back for another site serves none of
/// the disk copies written for the old one (the disk tier keeps the hosts each name served),
/// while a restart for the same site serves them.
#[test]
fn a_tenant_name_back_for_another_site_after_a_restart_serves_none_of_its_disk_copies() {
    let (old_site, new_site) = (site("old site"), site("new site"));
    let disk = tempfile::tempdir().unwrap();
    let start = |origin: &Origin, host: &str| start_shop(origin, disk.path(), host);
    let mut proxy = start(&old_site, "old.test");
    assert_eq!(get(&proxy, "old.test", "/page", &[]).text(), "old site");
    wait_writes(&proxy, 1);
    proxy.stop();

    let mut proxy = start(&old_site, "old.test");
    let again = get(&proxy, "old.test", "/page", &[]);
    assert_eq!(again.text(), "old site");
    assert!(
        again.cache_status().contains("; hit"),
        "{}",
        again.cache_status()
    );
    assert_eq!(old_site.hits_for("/page"), 1);
    proxy.stop();

    let proxy = start(&new_site, "new.test");
    let answer = get(&proxy, "new.test", "/page", &[]);
    assert_eq!(answer.text(), "new site", "{}", answer.cache_status());
    assert_eq!(new_site.hits_for("/page"), 1);
}

/// An origin for a site whose every answer is `body`, fresh for ten minutes.
fn site(body: &'static str) -> Origin {
    Origin::start(move |_| Reply::ok(body).header("Cache-Control", "max-age=600"))
}

/// A graceful upgrade whose new config gives a tenant name other hosts: the new process opens
/// the disk tier once the old one exits, and checks its record of which hosts each name served
/// before any lookup reads it. It was checked only at start, while the old process still held
/// the folder, so the old site's copies were served to the new site as soon as it opened.
#[test]
fn a_tenant_name_moved_by_a_graceful_upgrade_serves_none_of_its_disk_copies() {
    let (old_site, new_site) = (site("old site"), site("new site"));
    let disk = tempfile::tempdir().unwrap();
    let mut old = start_shop(&old_site, disk.path(), "a.test");
    assert_eq!(get(&old, "a.test", "/page", &[]).text(), "old site");
    wait_writes(&old, 1);

    let new = start_shop(&new_site, disk.path(), "b.test");
    assert_eq!(
        disk_stats(&new)["connected"],
        false,
        "the old process holds the folder"
    );
    // The old process drains for longer than the start-up check waits for a tier to
    // connect (5 s): the folder opens after that check is over.
    std::thread::sleep(Duration::from_secs(6));
    stop(&mut old);
    wait_connected(&new);

    let answer = get(&new, "b.test", "/page", &[]);
    assert_eq!(answer.text(), "new site", "{}", answer.cache_status());
    assert_eq!(new_site.hits_for("/page"), 1);
    assert_eq!(old_site.hits_for("/page"), 1);
}

/// cachet with a disk tier in `disk` and one tenant, `shop`, serving `host` from `origin`
/// with a key that leaves the host out (the `path-key` fixture).
fn start_shop(origin: &Origin, disk: &Path, host: &str) -> Proxy {
    Proxy::start_with_server(
        &format!("admin_token = \"{TOKEN}\""),
        &format!(
            "max_bytes = \"16MiB\"\n[cache.disk]\npath = {:?}\nmax_bytes = \"64MiB\"",
            disk.display().to_string()
        ),
        &[TenantSpec::new("shop", origin.addr, &support::fixture("path-key")).hosts(&[host])],
    )
}
