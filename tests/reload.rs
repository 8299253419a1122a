//! Hot reload with real files, the real watcher and real traffic.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::client::{get, send, try_send};
use support::origin::{Origin, Reply};
use support::plugin;
use support::proxy::{Proxy, TenantSpec};

/// Replaces `dest` atomically, the way deploy tools do (write, then rename).
fn install(src: &Path, dest: &Path) {
    let tmp = dest.with_extension("wasm.tmp");
    std::fs::copy(src, &tmp).expect("copy plugin");
    std::fs::rename(&tmp, dest).expect("rename plugin");
}

fn tenant_plugin(proxy: &Proxy) -> serde_json::Value {
    proxy.status()["tenants"][0]["plugin"].clone()
}

/// Sends requests from `threads` clients until stopped; counts failures.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    errors: Arc<parking_lot::Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(proxy: &Proxy, threads: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let threads = (0..threads)
            .map(|i| {
                let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
                let errors = errors.clone();
                let url = proxy.url(&format!("/load/{i}.css?utm_source=x&a=1"));
                std::thread::spawn(move || {
                    // Bounded: at most 60 s or until stopped.
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let result = match try_send("GET", &url, &[]) {
                            Ok(r) if r.status == 200 => Ok(()),
                            Ok(r) => Err(format!("status {} ({})", r.status, r.cache_status())),
                            Err(e) => Err(e),
                        };
                        sent.fetch_add(1, Ordering::Relaxed);
                        if let Err(e) = result {
                            failed.fetch_add(1, Ordering::Relaxed);
                            errors.lock().push(e);
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            sent,
            failed,
            errors,
            threads,
        }
    }

    /// Stops the load; returns (sent, failed, first errors).
    fn finish(self) -> (usize, usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("load thread");
        }
        let errors = self.errors.lock().iter().take(5).cloned().collect();
        (
            self.sent.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors,
        )
    }
}

fn start_with_copy(origin: &Origin, initial: &str) -> (Proxy, tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let live = dir.path().join("policy.wasm");
    install(&plugin(initial), &live);
    let proxy = Proxy::start(
        "max_bytes = \"64MiB\"",
        &[TenantSpec::new("site", origin.addr, &live)],
    );
    (proxy, dir, live)
}

/// True when the running policy is static-assets: it stores a static path
/// the origin gave no freshness for; standard does not.
fn static_assets_active(proxy: &Proxy, probe: &str) -> bool {
    get(&proxy.url(probe)).cache_status().contains("stored")
}

#[test]
fn swapping_a_plugin_changes_behaviour_within_a_second_without_failures() {
    let origin = Origin::start(|_| Reply::ok("body"));
    let (proxy, _dir, live) = start_with_copy(&origin, "standard");
    assert_eq!(tenant_plugin(&proxy)["generation"], 1);
    assert!(!static_assets_active(&proxy, "/before.css"));

    let load = Load::start(&proxy, 4);
    std::thread::sleep(Duration::from_millis(200));
    let swapped_at = Instant::now();
    install(&plugin("static-assets"), &live);
    let mut probe = 0;
    while !static_assets_active(&proxy, &format!("/probe-{probe}.css")) {
        probe += 1;
        assert!(
            swapped_at.elapsed() < Duration::from_secs(10),
            "policy did not switch within 10 s\n{}",
            proxy.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let switch = swapped_at.elapsed();
    // Within a second, but for the reload's own work (reading, compiling and checking the
    // plugin: `elapsed_ms` of its log line), which takes what CPU a loaded machine has left.
    let log = proxy.log_until(|log| log.contains("plugin swapped"));
    let work = log
        .lines()
        .find(|l| l.contains("plugin swapped"))
        .and_then(|l| l.split("elapsed_ms=").nth(1))
        .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or_else(|| panic!("no elapsed_ms in the swap's log line:\n{log}"));
    assert!(
        switch.saturating_sub(work) < Duration::from_secs(1),
        "policy switched {switch:?} after the file was replaced, {work:?} of it loading\n{log}"
    );
    std::thread::sleep(Duration::from_millis(200));
    let (sent, failed, errors) = load.finish();
    assert!(sent > 0);
    assert_eq!(
        failed,
        0,
        "{failed} of {sent} requests failed during the swap: {errors:?}\n{}",
        proxy.log()
    );
    assert_eq!(tenant_plugin(&proxy)["generation"], 2);
    eprintln!("policy switched {switch:?} after the file was replaced");

    // The utm_* normalisation is now in force.
    get(&proxy.url("/n.css?a=1&utm_source=x"));
    assert!(get(&proxy.url("/n.css?a=1")).cache_status().contains("hit"));
}

#[test]
fn twenty_alternating_swaps_under_load_lose_no_request() {
    let origin = Origin::start(|_| Reply::ok("body"));
    let (proxy, _dir, live) = start_with_copy(&origin, "standard");
    let load = Load::start(&proxy, 6);
    for i in 0..20 {
        let next = if i % 2 == 0 {
            "static-assets"
        } else {
            "standard"
        };
        install(&plugin(next), &live);
        // Wait until this version serves before the next swap.
        let deadline = Instant::now() + Duration::from_secs(5);
        while tenant_plugin(&proxy)["generation"] != i + 2 {
            assert!(
                Instant::now() < deadline,
                "swap {i} not applied: {}",
                tenant_plugin(&proxy)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let (sent, failed, errors) = load.finish();
    assert!(sent > 20);
    assert_eq!(
        failed,
        0,
        "{failed} of {sent} requests failed across 20 swaps: {errors:?}\n{}",
        proxy.log()
    );
}

/// Writes `bytes` over the live plugin and waits for the refusal to show.
fn expect_refused(proxy: &Proxy, live: &Path, bytes: &[u8], reason_part: &str) {
    let before = tenant_plugin(proxy);
    let tmp = live.with_extension("wasm.tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, live).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = tenant_plugin(proxy);
        let reason = now["last_refusal"]["reason"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        if reason.contains(reason_part) && now["last_refusal"] != before["last_refusal"] {
            assert_eq!(
                now["sha256"], before["sha256"],
                "old version must keep serving"
            );
            assert_eq!(now["generation"], before["generation"]);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no refusal containing {reason_part:?}: {now}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn broken_plugins_are_refused_and_the_old_version_keeps_serving() {
    let origin = Origin::start(|_| Reply::ok("body").header("Cache-Control", "max-age=60"));
    let (proxy, _dir, live) = start_with_copy(&origin, "standard");
    let good = std::fs::read(plugin("static-assets")).unwrap();

    expect_refused(
        &proxy,
        &live,
        b"garbage bytes, not wasm",
        "not a valid WebAssembly component",
    );
    expect_refused(
        &proxy,
        &live,
        &good[..good.len() / 3],
        "not a valid WebAssembly component",
    );
    // A core module, not a component.
    expect_refused(
        &proxy,
        &live,
        b"\0asm\x01\0\0\0",
        "not a valid WebAssembly component",
    );

    // Still the standard policy, still serving and caching.
    get(&proxy.url("/still"));
    assert!(get(&proxy.url("/still")).cache_status().contains("hit"));
    proxy.assert_logged(&["plugin refused"]);

    // A deleted file keeps the last good version.
    std::fs::remove_file(&live).unwrap();
    // Once the watcher has seen the deletion: its refusal shows.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tenant_plugin(&proxy)["last_refusal"]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("cannot read"))
    {
        assert!(
            Instant::now() < deadline,
            "the deleted file's refusal never showed: {}",
            tenant_plugin(&proxy)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(get(&proxy.url("/after-delete")).status, 200);
    assert_eq!(tenant_plugin(&proxy)["generation"], 1);

    // And a good file afterwards is taken, and the refusals it answers are gone.
    install(&plugin("static-assets"), &live);
    let deadline = Instant::now() + Duration::from_secs(5);
    while tenant_plugin(&proxy)["generation"] != 2 {
        assert!(Instant::now() < deadline, "{}", tenant_plugin(&proxy));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        tenant_plugin(&proxy)["last_refusal"].is_null(),
        "a refusal stays after a good version of the same file: {}",
        tenant_plugin(&proxy)
    );
}

#[test]
fn config_changes_apply_live_and_invalid_ones_are_refused_whole() {
    let a = Origin::start(|_| Reply::ok("from a"));
    let b = Origin::start(|_| Reply::ok("from b"));
    let proxy = Proxy::start(
        "max_bytes = \"64MiB\"",
        &[TenantSpec::new("a", a.addr, &plugin("standard")).hosts(&["a.test"])],
    );
    let config = proxy.dir.path().join("cachet.toml");
    let original = std::fs::read_to_string(&config).unwrap();
    let url = proxy.url("/x");
    assert_eq!(
        support::client::send("GET", &url, &[("Host", "b.test")]).status,
        421
    );

    let with_b = with_tenant_b(&original, &b);
    std::fs::write(&config, &with_b).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let resp = support::client::send("GET", &url, &[("Host", "b.test")]);
        if resp.status == 200 {
            assert_eq!(resp.text(), "from b");
            break;
        }
        assert!(Instant::now() < deadline, "tenant b never served");
        std::thread::sleep(Duration::from_millis(20));
    }

    // An invalid change is refused whole, with file, line and key.
    std::fs::write(
        &config,
        with_b.replace("hosts = [\"b.test\"]", "hosts = []"),
    )
    .unwrap();
    let refusal = config_refusal(&proxy);
    assert!(refusal.contains("cachet.toml:"), "{refusal}");
    assert!(refusal.contains("tenant.hosts"), "{refusal}");
    assert_eq!(
        support::client::send("GET", &url, &[("Host", "b.test")]).text(),
        "from b"
    );
    assert_eq!(
        support::client::send("GET", &url, &[("Host", "a.test")]).text(),
        "from a"
    );

    // The refused edit undone: the refusal no longer describes the file, and goes.
    let undo = || {
        std::fs::write(&config, &with_b).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !proxy.status()["config"]["last_refusal"].is_null() {
            assert!(
                Instant::now() < deadline,
                "the refusal of an undone edit stays"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    undo();

    // A plugin found broken only when loaded is refused at the line that names it.
    std::fs::write(proxy.dir.path().join("broken.wasm"), b"\0asm garbage").unwrap();
    let broken = format!(
        "{original}\n[[tenant]]\nname = \"b\"\nhosts = [\"b.test\"]\nupstream = \"{}\"\nplugin = \"broken.wasm\"\n",
        b.addr
    );
    std::fs::write(&config, &broken).unwrap();
    let refusal = config_refusal(&proxy);
    let line = broken
        .lines()
        .position(|l| l.contains("broken.wasm"))
        .unwrap()
        + 1;
    assert!(
        refusal.contains(&format!(
            "cachet.toml:{line}: key `tenant.plugin`: tenant \"b\": plugin refused"
        )),
        "{refusal}"
    );
    assert_eq!(
        support::client::send("GET", &url, &[("Host", "b.test")]).text(),
        "from b"
    );
    undo();
}

/// A config written in place in two writes with a pause between them is applied once, whole,
/// when its writer closes it: read between the writes, its first half (a valid config
/// without the second tenant) would have been applied and that tenant's hosts refused.
#[test]
fn a_config_written_in_place_is_applied_when_its_writer_closes_it() {
    config_written_in_two_halves(|config| {
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(config)
            .unwrap()
    });
}

/// A config file deleted and written anew (`install`, `rm` then `cat >`) is read once its
/// writer closes it, not when it appears: read then, its first half (a valid config with
/// tenant a alone) was applied, and tenant b went away until the rest came.
#[test]
fn a_config_created_anew_is_applied_when_its_writer_closes_it() {
    config_written_in_two_halves(|config| {
        std::fs::remove_file(config).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(config)
            .unwrap()
    });
}

/// Serves tenants a and b, then rewrites the config through the file `open` gives: tenant a
/// alone first, and after a pause tenant b with a second host. Tenant b must serve throughout,
/// and its second host once the file is closed.
fn config_written_in_two_halves(open: impl FnOnce(&Path) -> std::fs::File) {
    use std::io::Write;
    let a = Origin::start(|_| Reply::ok("from a"));
    let b = Origin::start(|_| Reply::ok("from b"));
    let proxy = Proxy::start(
        "max_bytes = \"64MiB\"",
        &[
            TenantSpec::new("a", a.addr, &plugin("standard")).hosts(&["a.test"]),
            TenantSpec::new("b", b.addr, &plugin("standard")).hosts(&["b.test"]),
        ],
    );
    let config = proxy.dir.path().join("cachet.toml");
    let original = std::fs::read_to_string(&config).unwrap();
    let second = original
        .find("\n[[tenant]]\nname = \"b\"")
        .expect("tenant b in the config");
    let (first_half, second_half) = original.split_at(second);
    let url = proxy.url("/x");
    let from_b = |host: &str| support::client::send("GET", &url, &[("Host", host)]);

    let mut file = open(&config);
    file.write_all(first_half.as_bytes()).unwrap();
    file.flush().unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        from_b("b.test").status,
        200,
        "the first half was applied\n{}",
        proxy.log()
    );
    let second_half =
        second_half.replace("hosts = [\"b.test\"]", "hosts = [\"b.test\", \"b2.test\"]");
    file.write_all(second_half.as_bytes()).unwrap();
    drop(file);
    let deadline = Instant::now() + Duration::from_secs(5);
    while from_b("b2.test").status != 200 {
        assert!(
            Instant::now() < deadline,
            "the whole file was never applied\n{}",
            proxy.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(from_b("b.test").text(), "from b");
}

/// Waits up to 5 s for `/status` to show a config refusal; its reason.
fn config_refusal(proxy: &Proxy) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let refusal = proxy.status()["config"]["last_refusal"]["reason"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        if !refusal.is_empty() {
            return refusal;
        }
        assert!(
            Instant::now() < deadline,
            "the config change was not refused"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `cachet_reload_watch_events_total` (0 before the first event, when it is not shown yet).
fn watch_events(metrics_port: u16) -> f64 {
    let text = get(&format!("http://127.0.0.1:{metrics_port}/metrics")).text();
    text.lines()
        .find_map(|l| l.strip_prefix("cachet_reload_watch_events_total "))
        .map_or(0.0, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("watch event counter {v:?}"))
        })
}

#[test]
fn logs_and_scratch_files_next_to_the_config_never_wake_the_watcher() {
    let origin = Origin::start(|_| Reply::ok("body").header("Cache-Control", "max-age=60"));
    let plugin_dir = tempfile::tempdir().expect("tempdir");
    let live = plugin_dir.path().join("policy.wasm");
    install(&plugin("standard"), &live);
    let metrics_port = support::free_port();
    // The proxy's stderr (access log on) goes to cachet.log beside its config.
    let proxy = Proxy::start_with_server(
        &format!("metrics = \"127.0.0.1:{metrics_port}\""),
        "max_bytes = \"64MiB\"",
        &[TenantSpec::new("site", origin.addr, &live)],
    );
    let config_dir = proxy.dir.path().to_path_buf();
    // What an editor and a build leave beside the files: created once here.
    let scratch = [
        config_dir.join(".cachet.toml.swp"),
        plugin_dir.path().join("build.log"),
    ];
    let created_before = watch_events(metrics_port);
    std::fs::create_dir(config_dir.join("target")).expect("mkdir target");
    for file in &scratch {
        std::fs::write(file, b"").expect("create scratch file");
    }
    // Their names appearing in watched folders are events (three): counted before the flood.
    let deadline = Instant::now() + Duration::from_secs(10);
    while watch_events(metrics_port) < created_before + 3.0 {
        assert!(
            Instant::now() < deadline,
            "the creations were never counted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = watch_events(metrics_port);
    let log_before = proxy.log().len();

    let load = Load::start(&proxy, 4);
    // 200 rounds of scratch writes at least, and on until the load has sent 100 requests
    // (a busy machine serves fewer meanwhile).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut writes = 0;
    while writes < 200 || load.sent.load(Ordering::Relaxed) < 100 {
        assert!(Instant::now() < deadline, "the load sent too few requests");
        for file in &scratch {
            let mut f = std::fs::OpenOptions::new().append(true).open(file).unwrap();
            std::io::Write::write_all(&mut f, format!("line {writes}\n").as_bytes()).unwrap();
        }
        std::fs::write(config_dir.join("target/out.o"), [writes as u8; 64]).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        writes += 1;
    }
    let (sent, failed, errors) = load.finish();
    assert_eq!(failed, 0, "{errors:?}");
    assert!(sent >= 100, "only {sent} requests in the flood");
    std::thread::sleep(Duration::from_millis(300));
    let log_grew = proxy
        .log_until(|log| log.len() - log_before > sent * 50)
        .len()
        - log_before;
    assert!(
        log_grew > sent * 50,
        "the access log grew by {log_grew} bytes"
    );
    assert_eq!(
        watch_events(metrics_port),
        before,
        "the watcher woke up during {sent} requests and {} scratch writes",
        writes * 3
    );

    // The watcher still sees the file it cares about, replaced by rename.
    install(&plugin("static-assets"), &live);
    let deadline = Instant::now() + Duration::from_secs(5);
    while tenant_plugin(&proxy)["generation"] != 2 {
        assert!(Instant::now() < deadline, "no reload\n{}", proxy.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(watch_events(metrics_port) > before);
}

/// Polls `check` for up to 5 s (the watcher applies a config within ~100 ms).
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not seen within 5 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A proxy serving tenant `a` (with a metrics listener), its config file, that config, and
/// the same config with tenant `b` (hosts `b.test`, on origin `b`) added.
struct AddableB {
    proxy: Proxy,
    metrics_port: u16,
    config: PathBuf,
    only_a: String,
    with_b: String,
}

/// `config` with tenant `b` added: hosts `b.test`, on origin `b`, the standard plugin.
fn with_tenant_b(config: &str, b: &Origin) -> String {
    format!(
        "{config}\n[[tenant]]\nname = \"b\"\nhosts = [\"b.test\"]\nupstream = \"{}\"\nplugin = {:?}\n",
        b.addr,
        plugin("standard").display().to_string()
    )
}

impl AddableB {
    fn start(a: &Origin, b: &Origin) -> Self {
        let metrics_port = support::free_port();
        let proxy = Proxy::start_with_server(
            &format!("metrics = \"127.0.0.1:{metrics_port}\""),
            "max_bytes = \"64MiB\"",
            &[TenantSpec::new("a", a.addr, &plugin("standard")).hosts(&["a.test"])],
        );
        let config = proxy.dir.path().join("cachet.toml");
        let only_a = std::fs::read_to_string(&config).unwrap();
        let with_b = with_tenant_b(&only_a, b);
        Self {
            proxy,
            metrics_port,
            config,
            only_a,
            with_b,
        }
    }

    /// Writes the config with tenant `b`; the watcher applies it.
    fn add_b(&self) {
        std::fs::write(&self.config, &self.with_b).unwrap();
    }

    /// Writes the config without tenant `b`; the watcher applies it.
    fn remove_b(&self) {
        std::fs::write(&self.config, &self.only_a).unwrap();
    }

    /// How many series in /metrics carry `tenant="b"`.
    fn b_series(&self) -> usize {
        let text = get(&format!("http://127.0.0.1:{}/metrics", self.metrics_port)).text();
        text.lines().filter(|l| l.contains("tenant=\"b\"")).count()
    }
}

/// A tenant removed by a reload takes its memory objects and its metric series with it: no
/// request can reach them, and left in place they held the global budget and showed under no
/// tenant until evicted, and renaming tenants grew /metrics for good (probe Z).
#[test]
fn a_removed_tenants_objects_leave_memory_with_it() {
    let a = Origin::start(|_| Reply::ok("from a").header("Cache-Control", "max-age=600"));
    let b = Origin::start(|_| Reply::ok(vec![b'b'; 4096]).header("Cache-Control", "max-age=600"));
    let setup = AddableB::start(&a, &b);
    let (proxy, b_series) = (&setup.proxy, || setup.b_series());
    setup.add_b();
    let b_get = |path: &str| support::client::send("GET", &proxy.url(path), &[("Host", "b.test")]);
    eventually("tenant b serving", || b_get("/warm").status == 200);
    support::client::send("GET", &proxy.url("/a"), &[("Host", "a.test")]);
    for i in 0..8 {
        b_get(&format!("/b/{i}"));
    }
    let cache = |proxy: &Proxy| proxy.status()["cache"].clone();
    assert_eq!(cache(proxy)["objects"].as_u64(), Some(10));
    assert!(cache(proxy)["stored_bytes"].as_u64().unwrap() > 8 * 4096);
    // Requests are counted after their responses: wait until b's show.
    eventually("b's series", || b_series() > 0);

    setup.remove_b();
    eventually("b's objects dropped", || {
        cache(proxy)["objects"].as_u64() == Some(1)
    });
    assert!(cache(proxy)["stored_bytes"].as_u64().unwrap() < 4096);
    // Nor does it keep series in /metrics: renaming tenants reload after reload grew it.
    assert_eq!(b_series(), 0);
    let a_hit = support::client::send("GET", &proxy.url("/a"), &[("Host", "a.test")]);
    assert!(
        a_hit.cache_status().contains("hit"),
        "{}",
        a_hit.cache_status()
    );

    // Added back, the tenant starts empty: its old objects were dropped, not hidden.
    setup.add_b();
    eventually("tenant b back", || b_get("/warm").status == 200);
    let again = b_get("/b/0");
    assert!(
        !again.cache_status().contains("hit"),
        "{}",
        again.cache_status()
    );
    assert_eq!(b.hits_for("/b/0"), 2);
}

/// A request in flight when its tenant is removed records its series after the reload
/// dropped them: they are dropped again once it is done, not kept for the life of the
/// process.
#[test]
fn a_removed_tenants_series_go_after_its_last_request() {
    let a = Origin::start(|_| Reply::ok("from a"));
    let b = Origin::start(|_| {
        std::thread::sleep(Duration::from_millis(1500));
        Reply::ok("slow b").header("Cache-Control", "max-age=600")
    });
    let setup = AddableB::start(&a, &b);
    let (proxy, b_series) = (&setup.proxy, || setup.b_series());
    setup.add_b();
    eventually("tenant b named", || {
        proxy.status()["tenants"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["name"] == "b"))
    });
    let url = proxy.url("/slow");
    let in_flight =
        std::thread::spawn(move || support::client::send("GET", &url, &[("Host", "b.test")]));
    // Removed while its request waits for the origin.
    eventually("the request at b's origin", || b.hits_for("/slow") == 1);
    setup.remove_b();
    eventually("tenant b removed", || {
        proxy.status()["tenants"]
            .as_array()
            .is_some_and(|t| t.iter().all(|t| t["name"] != "b"))
    });
    assert_eq!(in_flight.join().unwrap().status, 200);
    assert_eq!(b.hits_for("/slow"), 1);
    // Counted after its response, then forgotten with the tenant's last version.
    eventually("b's series gone", || b_series() == 0);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(b_series(), 0);
}

/// The sum of the series of metric `name` with `label`, from the admin listener's /metrics
/// (asked with `token`).
fn admin_metric(proxy: &Proxy, token: &str, name: &str, label: &str) -> f64 {
    let auth = format!("Bearer {token}");
    let metrics = send(
        "GET",
        &proxy.admin_url("/metrics"),
        &[("Authorization", &auth)],
    )
    .text();
    metrics
        .lines()
        .filter(|l| l.split([' ', '{']).next() == Some(name) && l.contains(label))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// Rewrites the config with tenants a and b under each other's names.
fn swap_names_a_and_b(proxy: &Proxy) {
    let config = proxy.dir.path().join("cachet.toml");
    let swapped = std::fs::read_to_string(&config)
        .unwrap()
        .replace("name = \"a\"", "name = \"swap\"")
        .replace("name = \"b\"", "name = \"a\"")
        .replace("name = \"swap\"", "name = \"b\"");
    std::fs::write(&config, swapped).unwrap();
}

/// Two tenants that swap names in one reload keep none of each other's objects: each name
/// now serves the other's hosts, and its old objects answered for hosts it no longer serves
/// (probe AB: all kept, counted under the wrong tenant).
#[test]
fn tenants_that_swap_names_keep_none_of_the_old_objects() {
    let origin = Origin::start(|seen| {
        Reply::ok(format!(
            "{} {}",
            seen.header("host").unwrap_or("-"),
            seen.url
        ))
        .header("Cache-Control", "max-age=600")
    });
    let proxy = Proxy::start(
        "max_bytes = \"64MiB\"",
        &[
            TenantSpec::new("a", origin.addr, &plugin("standard")).hosts(&["a.test"]),
            TenantSpec::new("b", origin.addr, &plugin("standard")).hosts(&["b.test"]),
        ],
    );
    for host in ["a.test", "b.test"] {
        for i in 0..3 {
            support::client::send("GET", &proxy.url(&format!("/{i}")), &[("Host", host)]);
        }
    }
    let objects = |proxy: &Proxy| proxy.status()["cache"]["objects"].as_u64();
    assert_eq!(objects(&proxy), Some(6));
    swap_names_a_and_b(&proxy);
    eventually("the swapped tenants' objects dropped", || {
        objects(&proxy) == Some(0)
    });
    let again = support::client::send("GET", &proxy.url("/0"), &[("Host", "a.test")]);
    assert_eq!(again.text(), "a.test /0");
    assert!(
        !again.cache_status().contains("hit"),
        "{}",
        again.cache_status()
    );
}

#[test]
fn cache_and_server_keys_apply_on_reload_and_restart_only_keys_are_named() {
    let origin =
        Origin::start(|_| Reply::ok(vec![b'x'; 4096]).header("Cache-Control", "max-age=600"));
    let proxy = Proxy::start(
        "max_bytes = \"64MiB\"",
        &[TenantSpec::new("site", origin.addr, &plugin("standard"))],
    );
    for i in 0..8 {
        get(&proxy.url(&format!("/before/{i}")));
    }
    let tenant_cache = |proxy: &Proxy| proxy.status()["tenants"][0]["cache"].clone();
    assert!(tenant_cache(&proxy)["stored_bytes"].as_u64().unwrap() > 8 * 4096);
    let access_lines = |proxy: &Proxy| proxy.log().matches("cachet::access").count();
    // The access log is written by a background writer in 10 ms batches.
    eventually("8 access lines", || access_lines(&proxy) >= 8);

    let config = proxy.dir.path().join("cachet.toml");
    let edited = std::fs::read_to_string(&config)
        .unwrap()
        .replace("threads = 2", "threads = 3\naccess_log = false")
        .replace("max_bytes = \"64MiB\"", "max_bytes = \"48MiB\"")
        .replace(
            "hook_timeout_ms = 250",
            "hook_timeout_ms = 250\ncache_quota = \"16KiB\"\nmax_object_bytes = \"1KiB\"",
        );
    std::fs::write(&config, edited).unwrap();

    // The tenant's quota applies at once (evicting down to it), the global
    // budget changes, and the smaller object limit stops new stores.
    eventually("the tenant quota", || {
        tenant_cache(&proxy)["quota_bytes"].as_u64() == Some(16 << 10)
    });
    assert!(tenant_cache(&proxy)["stored_bytes"].as_u64().unwrap() <= 16 << 10);
    assert_eq!(
        proxy.status()["cache"]["budget_bytes"].as_u64(),
        Some(48 << 20)
    );
    let logged_before = access_lines(&proxy);
    get(&proxy.url("/after"));
    let second = get(&proxy.url("/after"));
    assert!(
        !second.cache_status().contains("hit"),
        "{}",
        second.cache_status()
    );
    assert_eq!(origin.hits_for("/after"), 2);
    // access_log = false: the requests since wrote no access line (waiting
    // out the writer's batches, so a late line would be seen).
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(access_lines(&proxy), logged_before);
    // threads needs a restart: said so, by name, in the log and in the status.
    let says_restart = |l: &str| l.contains("restart") && l.contains("server.threads");
    let log = proxy.log_until(|log| log.lines().any(says_restart));
    assert!(log.lines().any(says_restart), "{log}");
    let status = proxy.status();
    assert_eq!(
        status["config"]["waiting_for_restart"],
        serde_json::json!(["server.threads"]),
        "{status}"
    );
    // Written back, nothing waits any more.
    let restored = std::fs::read_to_string(&config)
        .unwrap()
        .replace("threads = 3", "threads = 2");
    std::fs::write(&config, restored).unwrap();
    eventually("nothing waiting for a restart", || {
        proxy.status()["config"]["waiting_for_restart"] == serde_json::json!([])
    });
}

#[test]
fn the_admin_token_changes_on_reload() {
    let origin = Origin::start(|_| Reply::ok("x").header("Cache-Control", "max-age=600"));
    let proxy = Proxy::start(
        "",
        &[TenantSpec::new("site", origin.addr, &plugin("standard"))],
    );
    get(&proxy.url("/doc"));
    let purge = |headers: &[(&str, &str)]| try_send("PURGE", &proxy.url("/doc"), headers);
    assert_eq!(
        purge(&[]).unwrap().status,
        405,
        "PURGE without a token configured"
    );

    let config = proxy.dir.path().join("cachet.toml");
    let edited = std::fs::read_to_string(&config)
        .unwrap()
        .replace("threads = 2", "threads = 2\nadmin_token = \"fresh-token\"");
    std::fs::write(&config, edited).unwrap();
    eventually("the new admin token", || {
        purge(&[]).is_ok_and(|r| r.status == 401)
    });
    let purged = purge(&[("Authorization", "Bearer fresh-token")]).unwrap();
    assert_eq!(purged.status, 200, "{}", purged.text());
    let status = ureq::get(&proxy.admin_url("/status")).call();
    assert!(matches!(status, Err(ureq::Error::Status(401, _))));
}

/// A rotated admin token takes effect when its file changes, without a reload request: the
/// new token is accepted and the old one, possibly leaked, refused.
#[test]
fn a_rotated_admin_token_file_takes_effect_at_once() {
    let origin = Origin::start(|_| Reply::ok("ok"));
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("token.txt");
    std::fs::write(&token_file, "first-token\n").unwrap();
    let proxy = Proxy::start_with_server(
        &format!("admin_token_file = {:?}", token_file.display().to_string()),
        "",
        &[TenantSpec::new("site", origin.addr, &plugin("standard"))],
    );
    let status_with = |token: &str| match ureq::get(&proxy.admin_url("/status"))
        .set("Authorization", &format!("Bearer {token}"))
        .call()
    {
        Ok(resp) => resp.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(status_with("first-token"), 200);

    let aside = secrets.path().join("token.new");
    std::fs::write(&aside, "second-token\n").unwrap();
    std::fs::rename(&aside, &token_file).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while status_with("second-token") != 200 {
        assert!(
            Instant::now() < deadline,
            "the rotated token was not taken\n{}",
            proxy.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(status_with("first-token"), 401);

    // The config names another file holding the same token: that file is the one watched
    // from now on (the change was taken as none, and the old file stayed the watched one).
    let moved = secrets.path().join("moved.txt");
    std::fs::write(&moved, "second-token\n").unwrap();
    let config = proxy.dir.path().join("cachet.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let token_line = format!("{:?}", token_file.display().to_string());
    assert!(text.contains(&token_line));
    let switched = text.replace(&token_line, &format!("{:?}", moved.display().to_string()));
    let metric = |name: &str, label: &str| admin_metric(&proxy, "second-token", name, label);
    let applied = || metric("cachet_reloads_total", "result=\"config-applied\"");
    let before = applied();
    std::fs::write(&config, switched).unwrap();
    eventually("the config naming moved.txt applied", || applied() > before);
    // The watcher re-arms on the files it names right after applying it: from then on a
    // write in place to moved.txt (the same token) is an event it counts.
    let events = || metric("cachet_reload_watch_events_total", "");
    let before = events();
    eventually("moved.txt watched", || {
        std::fs::write(&moved, "second-token\n").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        events() > before
    });
    let aside = secrets.path().join("moved.new");
    std::fs::write(&aside, "third-token\n").unwrap();
    std::fs::rename(&aside, &moved).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while status_with("third-token") != 200 {
        assert!(
            Instant::now() < deadline,
            "a rotation of the newly named token file was not taken\n{}",
            proxy.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A reload that leaves the plugin unable to start within its tenant's new limits would
/// fault every request: it is refused whole, with the reason, and the old limits serve on.
#[test]
fn limits_the_plugin_cannot_start_within_are_refused_on_reload() {
    let origin = Origin::start(|_| Reply::ok("body").header("Cache-Control", "max-age=60"));
    let proxy = Proxy::start(
        "max_bytes = \"64MiB\"",
        &[TenantSpec::new("a", origin.addr, &plugin("standard"))],
    );
    let config = proxy.dir.path().join("cachet.toml");
    let original = std::fs::read_to_string(&config).unwrap();
    assert!(original.contains("[tenant.limits]\n"), "{original}");
    let starved = original.replace("[tenant.limits]\n", "[tenant.limits]\nmemory = \"1KiB\"\n");
    std::fs::write(&config, starved).unwrap();
    let refusal = config_refusal(&proxy);
    assert!(refusal.contains("cannot start within"), "{refusal}");
    get(&proxy.url("/still"));
    let hit = get(&proxy.url("/still"));
    assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
}

/// A reload may not leave an admin listener off loopback without a token. An edit moving
/// `admin` to loopback and dropping the token at once was accepted: the token went at once,
/// the listener stayed on all interfaces until a restart, and anyone reaching it had the
/// whole admin API (probe W).
#[test]
fn a_reload_cannot_drop_the_token_of_an_admin_listener_that_stays_exposed() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cachet.toml");
    let (listen, admin) = (support::free_port(), support::free_port());
    let write = |admin_line: String, token: &str| {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:{listen}\"\n{admin_line}\n{token}\nthreads = 1\n\n\
             [[tenant]]\nname = \"x\"\nhosts = [\"*\"]\nupstream = \"127.0.0.1:1\"\n\
             plugin = \"builtin:standard\"\n"
        );
        std::fs::write(&config, text).unwrap();
    };
    write(
        format!("admin = \"0.0.0.0:{admin}\""),
        "admin_token = \"exposed-admin-token\"",
    );
    let log_path = dir.path().join("cachet.log");
    let child = std::process::Command::new(support::proxy::cachet_bin())
        .args(["serve", "--config", config.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    // Stopped by its PID however the test ends.
    struct Running(std::process::Child);
    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let running = Running(child);
    let status = |token: Option<&str>| {
        let mut request =
            ureq::get(&format!("http://127.0.0.1:{admin}/status")).timeout(Duration::from_secs(5));
        if let Some(token) = token {
            request = request.set("Authorization", &format!("Bearer {token}"));
        }
        match request.call() {
            Ok(r) => r.status(),
            Err(ureq::Error::Status(code, _)) => code,
            Err(_) => 0,
        }
    };
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(None) != 401 {
        assert!(
            Instant::now() < deadline,
            "admin never answered:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    write(format!("admin = \"127.0.0.1:{admin}\""), "");
    // Read, whichever way it went (refused, or the token applied).
    eventually("the edit read", || {
        log().contains("stays on 0.0.0.0") || log().contains("server.admin_token")
    });
    let (anonymous, with_token) = (status(None), status(Some("exposed-admin-token")));
    drop(running);
    assert_eq!(anonymous, 401, "the admin API opened to anyone:\n{}", log());
    assert_eq!(with_token, 200, "{}", log());
    assert!(log().contains("stays on 0.0.0.0"), "{}", log());
}

/// A comment added above the tenants changes no tenant: nothing is rebuilt (a config
/// compared as text, line numbers included, rebuilt every tenant, and a plugin file of one
/// that had been refused refused the unrelated edit).
#[test]
fn a_comment_above_the_tenants_changes_no_tenant() {
    let origin = Origin::start(|_| Reply::ok("ok"));
    let proxy = Proxy::start(
        "",
        &[TenantSpec::new("site", origin.addr, &plugin("standard"))],
    );
    let applied = || {
        let metrics = support::client::send("GET", &proxy.admin_url("/metrics"), &[]).text();
        metrics
            .lines()
            .find(|l| {
                l.starts_with("cachet_reloads_total") && l.contains("result=\"config-applied\"")
            })
            .map_or(0.0, |l| {
                l.rsplit(' ').next().unwrap().parse::<f64>().unwrap()
            })
    };
    let before = applied();
    let config = proxy.dir.path().join("cachet.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("# moved every line down\n\n{text}")).unwrap();
    let reload = ureq::post(&proxy.admin_url("/reload")).call().unwrap();
    assert_eq!(reload.status(), 200);
    // The watcher may have looked too: neither found anything to apply.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(applied(), before, "{}", proxy.log());
}

/// A config that names a plugin not there yet is refused, and tried again when the plugin
/// arrives: deployed config first, artifacts second, it stayed refused until touched again.
#[test]
fn a_config_refused_for_a_missing_plugin_applies_when_the_plugin_arrives() {
    let a = Origin::start(|_| Reply::ok("from a"));
    let b = Origin::start(|_| Reply::ok("from b"));
    let proxy = Proxy::start(
        "",
        &[TenantSpec::new("a", a.addr, &plugin("standard")).hosts(&["a.test"])],
    );
    let config = proxy.dir.path().join("cachet.toml");
    let original = std::fs::read_to_string(&config).unwrap();
    let arriving = proxy.dir.path().join("b.wasm");
    let standard = format!("{:?}", plugin("standard").display().to_string());
    let with_b = with_tenant_b(&original, &b);
    let (head, tail) = with_b.split_at(original.len());
    let with_b = format!(
        "{head}{}",
        tail.replace(&standard, &format!("{:?}", arriving.display().to_string()))
    );
    std::fs::write(&config, with_b).unwrap();
    let refusal = config_refusal(&proxy);
    assert!(refusal.contains("b.wasm"), "{refusal}");

    install(&plugin("standard"), &arriving);
    let url = proxy.url("/x");
    eventually("tenant b serves once its plugin arrived", || {
        support::client::send("GET", &url, &[("Host", "b.test")]).status == 200
    });
    assert_eq!(
        support::client::send("GET", &url, &[("Host", "b.test")]).text(),
        "from b"
    );
}

/// The plugin instance pool is made at start and cannot grow: a reload that brings in more
/// plugins than it has room for is applied (the new tenants serve) and says so, naming the
/// restart that sizes the pool anew. Silent before, the pool then ran full under load and
/// requests of busy tenants got plugin faults with no word why.
#[test]
fn a_reload_beyond_the_plugin_pools_room_is_applied_with_a_warning() {
    let origin = Origin::start(|_| Reply::ok("served").header("Cache-Control", "max-age=60"));
    let proxy = Proxy::start(
        "",
        &[TenantSpec::new("t0", origin.addr, &plugin("standard")).hosts(&["t0.test"])],
    );
    let config = proxy.dir.path().join("cachet.toml");
    let mut grown = std::fs::read_to_string(&config).unwrap();
    // Two worker threads: 36 instances per plugin, twice over, and room for 8 plugins made
    // at start; 9 plugins need more.
    for i in 1..9 {
        grown.push_str(&format!(
            "\n[[tenant]]\nname = \"t{i}\"\nhosts = [\"t{i}.test\"]\nupstream = \"{}\"\nplugin = {:?}\n",
            origin.addr,
            plugin("standard").display().to_string()
        ));
    }
    std::fs::write(&config, grown).unwrap();
    eventually("the reload", || proxy.log().contains("config applied"));
    let resp = send("GET", &proxy.url("/page"), &[("Host", "t8.test")]);
    assert_eq!((resp.status, resp.text()), (200, "served".to_owned()));
    eventually("the warning", || {
        proxy
            .log()
            .contains("9 plugins (tenants' and shadows') need room for 648 plugin instances; the pool made at start has 576")
    });
}

/// A config written while the proxy starts (a deploy that restarts it and then writes the
/// new config), after it was read and before its watch existed, is applied once the proxy
/// serves: it was lost until something touched the file again. The start is held here by
/// a shared tier whose Redis does not answer (the check of its records waits up to 2 s).
#[test]
fn a_config_written_while_the_proxy_starts_is_applied() {
    let origin = Origin::start(|_| Reply::ok("x"));
    let unanswered = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let redis = unanswered.local_addr().unwrap();
    // Runs cachet (its PID stays the launcher's) after starting the edit in the background:
    // `$3` is the config path (`serve --config PATH`).
    let launcher = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        "(sleep 1; sed -i 's/\"before.test\"/\"after.test\"/' \"$3\") & exec \"$0\" \"$@\""
            .to_owned(),
    ];
    let proxy = Proxy::start_with_launcher(
        &launcher,
        "",
        &format!("max_bytes = \"16MiB\"\n[cache.shared]\nurl = \"redis://{redis}\""),
        &[TenantSpec::new("site", origin.addr, &plugin("standard")).hosts(&["before.test"])],
    );
    let config = std::fs::read_to_string(proxy.dir.path().join("cachet.toml")).unwrap();
    assert!(
        config.contains("after.test"),
        "the edit did not run: {config}"
    );
    eventually("the config written during the start is applied", || {
        let url = proxy.url("/");
        send("GET", &url, &[("Host", "after.test")]).status == 200
    });
    drop(unanswered);
}

/// A request of a tenant whose name a reload gives to another site, still waiting for an
/// origin turn when the reload lands, does not store what it fetches under that name: it
/// took its purge watch only after the old site's objects were dropped, and its answer was
/// stored for the new site.
#[test]
fn a_request_waiting_through_a_name_swap_stores_nothing_for_the_new_site() {
    let origin = Origin::start(|seen| {
        if seen.url == "/hold" {
            std::thread::sleep(Duration::from_millis(1500));
        }
        Reply::ok(seen.url.clone()).header("Cache-Control", "max-age=600")
    });
    let proxy = Proxy::start(
        "max_bytes = \"64MiB\"",
        &[
            TenantSpec::new("a", origin.addr, &plugin("standard"))
                .hosts(&["a.test"])
                .extra("[tenant.origin]\nmax_connections = 1"),
            TenantSpec::new("b", origin.addr, &plugin("standard")).hosts(&["b.test"]),
        ],
    );
    let send = |method: &'static str, path: &'static str| {
        let url = proxy.url(path);
        std::thread::spawn(move || support::client::send(method, &url, &[("Host", "a.test")]))
    };
    // Not a fill (a POST): no fill of the tenant is watched when the reload lands.
    let hold = send("POST", "/hold");
    eventually("/hold at the origin", || origin.hits_for("/hold") == 1);
    // Waits for the only origin turn, which /hold keeps for 1.5 s.
    let waiting = send("GET", "/waiting");
    // Its connection taken in (with /hold's), then a moment to read its head and queue: it
    // must be a's request before the swap.
    eventually("/waiting's connection", || proxy.connections_open() >= 2);
    std::thread::sleep(Duration::from_millis(300));
    swap_names_a_and_b(&proxy);
    eventually("the swap applied", || {
        proxy.status()["tenants"].as_array().is_some_and(|t| {
            t.iter()
                .any(|t| t["name"] == "a" && t["hosts"][0] == "b.test")
        })
    });
    assert_eq!(hold.join().unwrap().status, 200);
    assert_eq!(waiting.join().unwrap().text(), "/waiting");
    assert_eq!(
        proxy.status()["cache"]["objects"].as_u64(),
        Some(0),
        "the old site's answer was stored under the name that now serves b.test"
    );
}

/// While one tenant's plugin file holds a refused build (the last good one serving), an edit
/// of another tenant is applied: only changed tenants read their files again. Every tenant
/// was rebuilt, so the refused file refused the whole edit.
#[test]
fn an_edit_of_one_tenant_is_applied_while_another_tenants_plugin_file_is_refused() {
    let origin = Origin::start(|_| Reply::ok("body").header("Cache-Control", "max-age=60"));
    let dir = tempfile::tempdir().expect("tempdir");
    let live = dir.path().join("policy.wasm");
    install(&plugin("standard"), &live);
    let proxy = Proxy::start(
        "max_bytes = \"64MiB\"",
        &[
            TenantSpec::new("site", origin.addr, &live).hosts(&["site.test"]),
            TenantSpec::new("other", origin.addr, &plugin("standard")).hosts(&["other.test"]),
        ],
    );
    expect_refused(
        &proxy,
        &live,
        b"garbage bytes, not wasm",
        "not a valid WebAssembly component",
    );
    let config = proxy.dir.path().join("cachet.toml");
    let edited = std::fs::read_to_string(&config).unwrap().replace(
        "hosts = [\"other.test\"]",
        "hosts = [\"other.test\", \"other2.test\"]",
    );
    std::fs::write(&config, edited).unwrap();
    eventually("the edit of the other tenant is applied", || {
        send("GET", &proxy.url("/x"), &[("Host", "other2.test")]).status == 200
    });
    assert!(
        proxy.status()["config"]["last_refusal"].is_null(),
        "{}",
        proxy.status()["config"]
    );
    assert_eq!(
        send("GET", &proxy.url("/x"), &[("Host", "site.test")]).status,
        200,
        "the last good plugin serves"
    );
}
