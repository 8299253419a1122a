//! Process lifecycle and operations, end to end with the real `cachet` binary: SIGHUP without
//! the file watcher, plugin faults outside on-request, the compiled-plugin cache on disk, the
//! demo, tag purges from the command line, start-up lines and the set-up script.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::client::{get, send, Resp};
use support::origin::{Origin, Reply};
use support::proxy::{cachet_bin, run_cachet, Proxy, TenantSpec};
use support::{fixture, free_port, plugin, repo_root};

const TOKEN: &str = "lifecycle-admin-token";

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

/// Polls `check` every 50 ms for up to 20 s.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

fn plugin_sha(proxy: &Proxy) -> String {
    proxy.status()["tenants"][0]["plugin"]["sha256"]
        .as_str()
        .expect("plugin sha256")
        .to_owned()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Replaces `path` atomically (write a sibling, rename over it), as a deploy would.
fn replace_file(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).expect("write plugin copy");
    std::fs::rename(&tmp, path).expect("rename over the plugin");
}

/// The sum of a metric's samples carrying all `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|label| l.contains(label)))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

fn trap_faults(proxy: &Proxy) -> f64 {
    let text = send(
        "GET",
        &proxy.admin_url("/metrics"),
        &[("Authorization", &bearer())],
    )
    .text();
    metric(
        &text,
        "cachet_plugin_faults_total",
        &["tenant=\"bad\"", "kind=\"trap\""],
    )
}

// ------------------------------------------------------------------------ SIGHUP, watch off

#[test]
fn sighup_without_the_watcher_reloads_and_keeps_running() {
    let origin = Origin::start(|_| Reply::ok("x").header("Cache-Control", "max-age=60"));
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.wasm");
    std::fs::copy(plugin("standard"), &policy).unwrap();
    let mut proxy = Proxy::start(
        "max_bytes = \"64MiB\"\n\n[plugins]\nwatch = false",
        &[TenantSpec::new("site", origin.addr, &policy)],
    );
    let before = plugin_sha(&proxy);

    let replacement = std::fs::read(plugin("static-assets")).unwrap();
    replace_file(&policy, &replacement);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        plugin_sha(&proxy),
        before,
        "watch = false: no reload on change"
    );

    let hup = Command::new("kill")
        .args(["-HUP", &proxy.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let expected = sha256_hex(&replacement);
    eventually("the SIGHUP reload", || {
        proxy.is_running() && plugin_sha(&proxy) == expected
    });
    assert!(proxy.is_running(), "{}", proxy.log());
    assert_eq!(get(&proxy.url("/page")).status, 200);
    proxy.assert_logged(&["SIGHUP"]);
}

// ------------------------------------------------------------- faults outside on-request

fn panic_tenant(origin: &Origin) -> Proxy {
    Proxy::start_with_server(
        &format!("admin_token = \"{TOKEN}\""),
        "max_bytes = \"64MiB\"",
        &[TenantSpec::new("bad", origin.addr, &fixture("panic"))
            .extra("on_plugin_error = \"bypass\"")],
    )
}

#[test]
fn on_response_faults_are_counted() {
    let origin = Origin::start(|_| Reply::ok("x").header("Cache-Control", "max-age=60"));
    let proxy = panic_tenant(&origin);
    for _ in 0..2 {
        let resp = get(&proxy.url("/panic/response"));
        assert_eq!(resp.status, 200);
        assert!(resp.cache_status().contains("plugin fault: trap"));
    }
    assert_eq!(trap_faults(&proxy), 2.0);
}

#[test]
fn a_plugin_fault_while_purging_is_an_error_not_a_miss() {
    let origin = Origin::start(|_| Reply::ok("x").header("Cache-Control", "max-age=60"));
    let proxy = panic_tenant(&origin);
    let auth = bearer();
    let resp: Resp = send(
        "PURGE",
        &proxy.url("/panic/key"),
        &[("Authorization", &auth)],
    );
    assert_eq!(resp.status, 502, "{}", resp.text());
    assert!(resp.text().contains("policy failed"), "{}", resp.text());
    assert!(!resp.text().contains("not cached"), "{}", resp.text());
    assert!(
        resp.cache_status().contains("plugin fault: trap"),
        "{}",
        resp.cache_status()
    );
    assert_eq!(trap_faults(&proxy), 1.0);

    // A successful POST invalidates the URL: a fault computing its key is logged and counted.
    let post = send("POST", &proxy.url("/panic/key"), &[]);
    assert_eq!(post.status, 200);
    assert_eq!(origin.hits_for("/panic/key"), 1);
    assert_eq!(trap_faults(&proxy), 2.0);
    proxy.assert_logged(&["plugin fault while invalidating after POST"]);
}

// ------------------------------------------------------------------ compiled-plugin cache

/// A copy of `wasm` with a custom section `name`: the same policy, different bytes (so a
/// different sha256 and a new artifact).
fn with_custom_section(wasm: &[u8], name: &str) -> Vec<u8> {
    fn leb128(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let mut content = Vec::new();
    leb128(name.len(), &mut content);
    content.extend_from_slice(name.as_bytes());
    let mut out = wasm.to_vec();
    out.push(0);
    leb128(content.len(), &mut out);
    out.extend_from_slice(&content);
    out
}

fn artifacts_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .collect()
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn the_compiled_plugin_cache_is_private_bounded_and_trusted_only_when_private() {
    let origin = Origin::start(|_| Reply::ok("x"));
    let dir = tempfile::tempdir().unwrap();
    let artifacts = dir.path().join("artifacts");
    let policy = dir.path().join("policy.wasm");
    // A component the host compiles as it is (built for wasm32-wasip2, so it gets no state
    // reset written in): a custom section makes each version compile to other code. An SDK
    // component is wrapped anew from its core module, and versions differing only in a
    // component-level section share one artifact.
    let original = std::fs::read(fixture("policy-0-3")).unwrap();
    std::fs::write(&policy, &original).unwrap();
    let settings = format!(
        "max_bytes = \"64MiB\"\n\n[plugins]\nartifact_cache_dir = {:?}",
        artifacts.display().to_string()
    );
    let tenants = [TenantSpec::new("site", origin.addr, &policy)];
    let from_cache =
        |proxy: &Proxy| proxy.status()["tenants"][0]["plugin"]["from_artifact_cache"] == true;

    let mut proxy = Proxy::start(&settings, &tenants);
    assert!(!from_cache(&proxy));
    assert_eq!(mode_of(&artifacts), 0o700);
    // Four more versions, each compiled and written by a hot reload.
    let mut current = original.clone();
    for n in 1..=4 {
        current = with_custom_section(&original, &format!("version-{n}"));
        replace_file(&policy, &current);
        let expected = sha256_hex(&current);
        eventually("the reload", || plugin_sha(&proxy) == expected);
    }
    assert_eq!(artifacts_in(&artifacts).len(), 3, "current + previous two");
    proxy.stop();

    // A folder others can write is not read: compile instead, and say why.
    set_mode(&artifacts, 0o775);
    let mut proxy = Proxy::start(&settings, &tenants);
    assert!(!from_cache(&proxy));
    proxy.assert_logged(&[
        "not using the compiled plugin cache",
        "writable by group or others",
    ]);
    proxy.stop();

    // The same artifacts in a private folder are used.
    set_mode(&artifacts, 0o700);
    let proxy = Proxy::start(&settings, &tenants);
    assert!(from_cache(&proxy), "{}", proxy.log());
    assert_eq!(plugin_sha(&proxy), sha256_hex(&current));
}

// ----------------------------------------------------------------------------------- demo

/// Kills and reaps a child we spawned when the test ends, pass or fail.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn every_page_the_demo_index_links_to_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (port, admin, demo) = (free_port(), free_port(), free_port());
    let example = std::fs::read_to_string(repo_root().join("examples/cachet.toml")).unwrap();
    // The example config, on free ports, with its plugin path made absolute.
    let config = example
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"))
        .replace("127.0.0.1:9090", &format!("127.0.0.1:{admin}"))
        .replace("127.0.0.1:8000", &format!("127.0.0.1:{demo}"))
        .replace(
            "\"../plugins/static-assets.wasm\"",
            &format!("{:?}", plugin("static-assets").display().to_string()),
        );
    let config_path = dir.path().join("cachet.toml");
    std::fs::write(&config_path, config).unwrap();
    let _cachet = ChildGuard(
        Command::new(cachet_bin())
            .args(["serve", "--config", config_path.to_str().unwrap()])
            .args(["--demo-origin", &format!("127.0.0.1:{demo}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    eventually("the demo", || {
        support::client::try_send("GET", &url("/"), &[]).is_ok_and(|r| r.status == 200)
    });
    let index = get(&url("/")).text();
    let links: Vec<&str> = index
        .split("href=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert!(links.len() >= 4, "{index}");
    for link in links {
        let resp = get(&url(link));
        assert_eq!(resp.status, 200, "{link} (promised by the index)");
    }
}

// ------------------------------------------------------------------------- purge by tag

#[test]
fn purge_by_tag_needs_no_url_and_reaches_every_tenant() {
    let origin = Origin::start(|seen| {
        Reply::ok("x")
            .header("Cache-Control", "max-age=600")
            .header(
                "Surrogate-Key",
                if seen.url == "/other" {
                    "other"
                } else {
                    "news"
                },
            )
    });
    let proxy = Proxy::start_with_server(
        &format!("admin_token = \"{TOKEN}\""),
        "max_bytes = \"64MiB\"",
        &[
            TenantSpec::new("a", origin.addr, &plugin("standard")).hosts(&["a.test"]),
            TenantSpec::new("b", origin.addr, &plugin("standard")).hosts(&["b.test"]),
        ],
    );
    let fetch = |host: &str, path: &str| send("GET", &proxy.url(path), &[("Host", host)]);
    for (host, path) in [
        ("a.test", "/story"),
        ("b.test", "/story"),
        ("a.test", "/other"),
    ] {
        fetch(host, path);
        assert!(fetch(host, path).cache_status().contains("hit"));
    }
    let config = proxy.dir.path().join("cachet.toml");
    let (ok, out) = run_cachet(&[
        "purge",
        "--config",
        config.to_str().unwrap(),
        "--tag",
        "news",
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("purged 2"), "{out}");
    assert!(fetch("a.test", "/story")
        .cache_status()
        .contains("fwd=miss"));
    assert!(fetch("b.test", "/story")
        .cache_status()
        .contains("fwd=miss"));
    assert!(fetch("a.test", "/other").cache_status().contains("hit"));

    let (ok, out) = run_cachet(&["purge", "--config", config.to_str().unwrap()]);
    assert!(!ok, "neither a URL nor a tag: {out}");
}

// ------------------------------------------------------------------------- start-up lines

#[test]
fn start_up_names_each_listener_and_tenant() {
    let origin = Origin::start(|_| Reply::ok("x"));
    let proxy = Proxy::start(
        "max_bytes = \"64MiB\"",
        &[
            TenantSpec::new("site", origin.addr, &plugin("standard"))
                .hosts(&["www.example.test", "*.example.test"]),
            TenantSpec::new("native", origin.addr, Path::new("builtin:standard"))
                .hosts(&["native.test"]),
        ],
    );
    let sha = sha256_hex(&std::fs::read(plugin("standard")).unwrap());
    let expected = [
        format!("listening on 127.0.0.1:{} (proxy", proxy.port),
        format!("listening on 127.0.0.1:{} (admin", proxy.admin_port),
        format!(
            "tenant \"site\": hosts www.example.test *.example.test -> {}, plugin {} sha256 {}",
            origin.addr,
            plugin("standard").display(),
            &sha[..12]
        ),
        format!(
            "tenant \"native\": hosts native.test -> {}, policy builtin:standard",
            origin.addr
        ),
    ];
    let log = proxy.assert_logged(&expected.each_ref().map(String::as_str));
    for line in expected {
        assert_eq!(
            log.lines().filter(|l| l.contains(&line)).count(),
            1,
            "{line:?} once in:\n{log}"
        );
    }
}

// ------------------------------------------------------------------------- set-up script

/// A folder of links to the tools the set-up script may run, without cmake, pkg-config,
/// apt-get or sudo: what a fresh machine without root looks like to it.
fn bare_path(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir(&bin).unwrap();
    for tool in [
        "bash", "cargo", "rustc", "rustup", "sed", "awk", "sort", "head", "grep", "id", "dirname",
        "cat",
    ] {
        let found = Command::new("bash")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .unwrap();
        let path = String::from_utf8(found.stdout).unwrap();
        if !path.trim().is_empty() {
            std::os::unix::fs::symlink(path.trim(), bin.join(tool)).unwrap();
        }
    }
    bin
}

#[test]
fn the_set_up_script_names_what_to_install_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let bin = bare_path(dir.path());
    let out = Command::new(bin.join("bash"))
        .arg(repo_root().join("scripts/install-deps.sh"))
        .env("PATH", &bin)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("install cmake pkg-config"),
        "names the packages: {stderr}"
    );
}
