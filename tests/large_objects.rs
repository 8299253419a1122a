//! Large bodies in the L2 tiers: stored as a head and 512 KiB chunks, served as the client
//! reads (first byte before the whole body is read from the tier), byte-identical from the
//! shared tier (a real `redis-server`) and from the disk tier after a restart; a damaged
//! chunk is never served as a complete body. Real cachet processes and a real origin.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};
use support::origin::{Origin, Reply};
use support::proxy::{Proxy, TenantSpec};
use support::redis::Redis;
use support::{find_in_segments, free_port, plugin};

const TOKEN: &str = "large-objects-token";
const BIG: usize = 6 << 20;

/// Bytes that never repeat a 64-byte window, so a slice of them is found once on disk.
fn big_body() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..BIG)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn origin(body: Vec<u8>) -> Origin {
    Origin::start(move |_| Reply::ok(body.clone()).header("Cache-Control", "public, max-age=300"))
}

/// A node with an 8 MiB object limit in L1 (so 6 MiB is cached), a disk tier in `disk` and,
/// with `redis`, the shared tier.
fn node(origin: &Origin, disk: &Path, redis: Option<u16>) -> Proxy {
    node_with_url(
        origin,
        disk,
        redis.map(|port| format!("redis://127.0.0.1:{port}")),
    )
}

/// [`node`] with the shared tier at `url` (a Redis user in it, say), once it listens for
/// purges (until then it reads nothing from the shared tier).
fn node_with_url(origin: &Origin, disk: &Path, url: Option<String>) -> Proxy {
    let shared = url.as_ref().map_or(String::new(), |url| {
        format!("[cache.shared]\nurl = \"{url}\"\nmax_object_bytes = \"16MiB\"\nop_timeout = \"500ms\"\n")
    });
    let proxy = Proxy::start_with_server(
        &format!("admin_token = \"{TOKEN}\""),
        &format!(
            "max_bytes = \"64MiB\"\nmax_object_bytes = \"8MiB\"\n[cache.disk]\npath = {:?}\nmax_bytes = \"64MiB\"\n{shared}[plugins]\nwatch = false",
            disk.display().to_string()
        ),
        &[TenantSpec::new("site", origin.addr, &plugin("standard"))],
    );
    if url.is_some() {
        let deadline = Instant::now() + Duration::from_secs(15);
        while tier(&proxy, "l2-shared")["connected"] != true {
            assert!(Instant::now() < deadline, "never listened for purges");
            std::thread::sleep(Duration::from_millis(25));
        }
    }
    proxy
}

fn tier(proxy: &Proxy, name: &str) -> serde_json::Value {
    let status = proxy.status();
    status["cache"]["tiers"]
        .as_array()
        .expect("cache.tiers")
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no tier {name}: {status}"))
        .clone()
}

fn wait_writes(proxy: &Proxy, name: &str, writes: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tier(proxy, name)["writes"].as_u64().unwrap_or(0) < writes {
        assert!(
            Instant::now() < deadline,
            "{name} writes never reached {writes}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a raw HTTP/1.1 GET got: the head, the body bytes that came before the server closed,
/// and when the first byte and the last one arrived.
struct Got {
    head: String,
    body: Vec<u8>,
    first_byte: Duration,
    all: Duration,
}

impl Got {
    fn content_length(&self) -> Option<usize> {
        self.head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
    }

    fn cache_status(&self) -> &str {
        self.head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("cache-status:"))
            .unwrap_or("")
    }

    /// A 200 whose body is as long as its Content-Length says.
    fn is_complete(&self) -> bool {
        self.head.starts_with("HTTP/1.1 200") && self.content_length() == Some(self.body.len())
    }
}

fn raw_get(proxy: &Proxy, path: &str) -> Got {
    let addr = proxy
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let mut stream = TcpStream::connect(&addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let started = Instant::now();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: big.test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut bytes = Vec::new();
    let mut buf = vec![0; 64 << 10];
    let mut first_byte = None;
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                first_byte.get_or_insert_with(|| started.elapsed());
                bytes.extend_from_slice(&buf[..n]);
            }
        }
    }
    let all = started.elapsed();
    let split = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    Got {
        head: String::from_utf8_lossy(&bytes[..split]).into_owned(),
        body: bytes[split..].to_vec(),
        first_byte: first_byte.unwrap_or(all),
        all,
    }
}

#[test]
fn a_large_object_streams_from_the_shared_tier_and_from_disk_after_a_restart() {
    let body = big_body();
    let origin = origin(body.clone());
    let redis = Redis::start_fresh();
    let dir = tempfile::tempdir().unwrap();
    let mut a = node(&origin, &dir.path().join("a"), Some(redis.port));
    let b = node(&origin, &dir.path().join("b"), Some(redis.port));

    let filled = raw_get(&a, "/big");
    assert!(
        filled.is_complete() && filled.body == body,
        "{}",
        filled.head
    );
    assert!(
        filled.cache_status().contains("fwd=miss"),
        "{}",
        filled.head
    );
    wait_writes(&a, "l2-shared", 1);
    wait_writes(&a, "l2-disk", 1);

    let shared = raw_get(&b, "/big");
    assert!(
        shared.cache_status().ends_with(r#"detail="l2-shared""#),
        "{}\n{}",
        shared.head,
        b.log()
    );
    assert!(shared.is_complete(), "{}", shared.head);
    assert!(shared.body == body, "byte-identical from the shared tier");
    eprintln!(
        "6 MiB L2 hit from redis: first byte after {:?}, whole body after {:?}",
        shared.first_byte, shared.all
    );
    // Served whole and in order, it was promoted into B's L1.
    let promoted = raw_get(&b, "/big");
    assert!(promoted.is_complete() && promoted.body == body);
    assert!(
        promoted.cache_status().contains("hit") && !promoted.cache_status().contains("detail"),
        "{}",
        promoted.head
    );
    eprintln!(
        "the same 6 MiB from L1: first byte after {:?}, whole body after {:?}",
        promoted.first_byte, promoted.all
    );

    assert!(a.interrupt(), "{}", a.log());
    let a = node(&origin, &dir.path().join("a"), Some(redis.port));
    let from_disk = raw_get(&a, "/big");
    assert!(
        from_disk.cache_status().ends_with(r#"detail="l2-disk""#),
        "{}",
        from_disk.head
    );
    assert!(
        from_disk.is_complete() && from_disk.body == body,
        "byte-identical from disk"
    );
    eprintln!(
        "6 MiB L2 hit from disk: first byte after {:?}, whole body after {:?}",
        from_disk.first_byte, from_disk.all
    );
    assert_eq!(origin.hits(), 1, "the origin was asked once");
    for (proxy, name) in [(&a, "l2-disk"), (&b, "l2-shared")] {
        let stats = tier(proxy, name);
        assert_eq!(stats["errors"], 0, "{stats}");
        assert_eq!(stats["corrupt"], 0, "{stats}");
    }
}

/// A shared-tier call that fails (here a Redis user refused `EXISTS` and `SET`) says nothing
/// about the object: that lookup is a miss, and the object stays whole for every other node.
/// (A failed chunk check used to remove it as incomplete, from Redis, for all nodes.)
#[test]
fn a_chunk_check_the_shared_tier_fails_leaves_the_object_for_other_nodes() {
    let body = big_body();
    let origin = origin(body.clone());
    let port = free_port();
    let limited_user = [
        "--user", "limited", "on", ">secret", "~*", "&*", "+@all", "-exists", "-set",
    ];
    let redis = Redis::start_with(port, &limited_user);
    let dir = tempfile::tempdir().unwrap();
    let a = node(&origin, &dir.path().join("a"), Some(redis.port));
    assert!(raw_get(&a, "/big").is_complete());
    wait_writes(&a, "l2-shared", 1);

    let url = format!("redis://limited:secret@127.0.0.1:{port}");
    let limited = node_with_url(&origin, &dir.path().join("b"), Some(url));
    let refused = raw_get(&limited, "/big");
    assert!(
        refused.is_complete() && refused.body == body,
        "{}",
        refused.head
    );
    assert!(
        refused.cache_status().contains("fwd=miss"),
        "{}",
        refused.head
    );
    let stats = tier(&limited, "l2-shared");
    assert!(stats["errors"].as_u64().unwrap() >= 1, "{stats}");
    assert_eq!(origin.hits(), 2);

    let c = node(&origin, &dir.path().join("c"), Some(redis.port));
    let shared = raw_get(&c, "/big");
    assert!(
        shared.cache_status().ends_with(r#"detail="l2-shared""#),
        "{}\nthe limited node's log:\n{}",
        shared.head,
        limited.log()
    );
    assert!(shared.is_complete() && shared.body == body);
    assert_eq!(origin.hits(), 2, "what A stored was still whole in Redis");
}

/// A purge that comes while a large object streams from L2 finds nothing in L1 to remove:
/// the copy must not be put into L1 when the stream ends (it used to be, and was then served
/// as an L1 hit until it expired).
#[test]
fn a_purge_while_a_large_object_streams_from_l2_keeps_it_out_of_l1() {
    let body = big_body();
    let origin = origin(body.clone());
    let redis = Redis::start_fresh();
    let dir = tempfile::tempdir().unwrap();
    let a = node(&origin, &dir.path().join("a"), Some(redis.port));
    assert!(raw_get(&a, "/big").is_complete());
    wait_writes(&a, "l2-shared", 1);
    let b = node(&origin, &dir.path().join("b"), Some(redis.port));

    // A client that reads slowly: a small receive buffer, and a pause once the body started,
    // so B is still sending (from the shared tier) when the purge comes.
    let addr = b
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let mut slow = TcpStream::connect(&addr).unwrap();
    let small: libc::c_int = 16 << 10;
    // SAFETY: setsockopt(2) on this open socket with a pointer to a live c_int.
    let set = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&slow),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            std::ptr::addr_of!(small).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "SO_RCVBUF");
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        slow,
        "GET /big HTTP/1.1\r\nHost: big.test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut got = vec![0; 16 << 10];
    let mut received = slow.read(&mut got).unwrap();
    std::thread::sleep(Duration::from_millis(300));

    let auth = format!("Bearer {TOKEN}");
    let purged = support::client::send(
        "PURGE",
        &b.url("/big"),
        &[("Host", "big.test"), ("Authorization", auth.as_str())],
    );
    assert_eq!(purged.status, 200, "{}", purged.text());
    // The response under way goes on to its end.
    let mut rest = Vec::new();
    slow.read_to_end(&mut rest).unwrap();
    received += rest.len();
    assert!(received > BIG, "the stream was cut short: {received} bytes");

    let after = raw_get(&b, "/big");
    assert!(after.is_complete() && after.body == body, "{}", after.head);
    assert!(
        after.cache_status().contains("fwd=miss"),
        "purged, yet served from B's memory: {}",
        after.head
    );
    assert_eq!(origin.hits(), 2);
}

#[test]
fn a_damaged_chunk_is_never_served_as_a_complete_body() {
    let body = big_body();
    let origin = origin(body.clone());
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    let mut first = node(&origin, &disk, None);
    assert!(raw_get(&first, "/big").is_complete());
    wait_writes(&first, "l2-disk", 1);
    assert!(first.interrupt(), "{}", first.log());

    // Damage a chunk in the middle (chunk 6 of 12): the head and chunk 0 are intact, so the
    // response starts, and must then be cut off.
    let middle = 3 << 20;
    let (file, at) =
        find_in_segments(&disk, &body[middle..middle + 64]).expect("the body is on disk");
    let mut bytes = std::fs::read(&file).unwrap();
    for b in &mut bytes[at..at + 16] {
        *b ^= 0x5a;
    }
    std::fs::write(&file, bytes).unwrap();

    let second = node(&origin, &disk, None);
    let damaged = raw_get(&second, "/big");
    assert!(
        !damaged.is_complete(),
        "a damaged chunk must not give a complete 200: {} ({} body bytes)\nfirst node:\n{}\nsecond node:\n{}",
        damaged.head,
        damaged.body.len(),
        first.log(),
        second.log()
    );
    assert!(damaged.body.len() < BIG, "{}", damaged.body.len());
    eprintln!(
        "damaged chunk: {} of {BIG} bytes sent, then the connection closed ({})",
        damaged.body.len(),
        damaged.cache_status()
    );
    let stats = tier(&second, "l2-disk");
    assert!(stats["corrupt"].as_u64().unwrap() >= 1, "{stats}");
    // The object was removed: the next request goes to the origin and is complete.
    let again = raw_get(&second, "/big");
    assert!(again.is_complete() && again.body == body, "{}", again.head);
    assert!(again.cache_status().contains("fwd=miss"), "{}", again.head);
    assert_eq!(origin.hits(), 2);
}

/// A large object revalidated from an L2 tier (after a restart L1 holds none of it) is
/// written back there with the refreshed meta: fresh in the tier from then on, across a
/// restart too. It used to stay stale on disk (L1's copy alone was refreshed, and the copy
/// promoted into L1 carried the stale meta), so the origin was asked again on each restart
/// or eviction, or on every request while L1 could not take it.
#[test]
fn a_large_object_revalidated_from_disk_is_fresh_there_afterwards() {
    let body = big_body();
    let served = body.clone();
    let origin = Origin::start(move |seen| {
        if seen.header("if-none-match") == Some("\"v1\"") {
            return Reply::ok("")
                .status(304)
                .header("ETag", "\"v1\"")
                .header("Cache-Control", "public, max-age=300");
        }
        Reply::ok(served.clone())
            .header("ETag", "\"v1\"")
            .header("Cache-Control", "public, max-age=1")
    });
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    let mut proxy = node(&origin, &disk, None);
    assert!(raw_get(&proxy, "/big").is_complete());
    wait_writes(&proxy, "l2-disk", 1);
    assert!(proxy.interrupt(), "{}", proxy.log());
    // Stale from here on (max-age=1).
    std::thread::sleep(Duration::from_millis(1200));

    let mut proxy = node(&origin, &disk, None);
    let revalidated = raw_get(&proxy, "/big");
    assert!(
        revalidated.is_complete() && revalidated.body == body,
        "{}",
        revalidated.head
    );
    assert!(
        revalidated
            .cache_status()
            .contains("fwd=stale; fwd-status=304"),
        "{}",
        revalidated.head
    );
    wait_writes(&proxy, "l2-disk", 1);
    let fresh = raw_get(&proxy, "/big");
    assert!(
        fresh.cache_status().contains("hit")
            && fresh.cache_status().ends_with(r#"detail="l2-disk""#),
        "fresh on disk, not revalidated again: {}",
        fresh.head
    );
    assert!(fresh.is_complete() && fresh.body == body);
    assert!(proxy.interrupt(), "{}", proxy.log());

    let proxy = node(&origin, &disk, None);
    let after_restart = raw_get(&proxy, "/big");
    assert!(
        after_restart.cache_status().contains("hit")
            && after_restart
                .cache_status()
                .ends_with(r#"detail="l2-disk""#),
        "{}",
        after_restart.head
    );
    assert!(after_restart.is_complete() && after_restart.body == body);
    assert_eq!(origin.hits(), 2, "one fill, one revalidation");
    let stats = tier(&proxy, "l2-disk");
    assert_eq!(stats["corrupt"], 0, "{stats}");
}
