//! `cachet dev`: a plugin crate is rebuilt on every saved change and published where the
//! tenant's `plugin =` points; the running proxy hot-reloads each good build, and a build
//! that fails leaves the last good version serving. Real cargo, the real SDK, the real proxy.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::client::{send, Resp};
use support::origin::{Origin, Reply};
use support::proxy::{cachet_bin, run_cachet, Proxy, TenantSpec};

/// The first build compiles the SDK and wit-bindgen for the plugin: minutes on a
/// loaded 2-core machine. Later builds recompile the plugin crate only.
const FIRST_BUILD: Duration = Duration::from_secs(900);
const REBUILD: Duration = Duration::from_secs(300);

/// Stops `cachet dev` (by its PID) however the test ends.
struct DevLoop(Child);

impl Drop for DevLoop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn edit(file: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(file).expect("read source");
    assert!(text.contains(from), "{from:?} not in {}", file.display());
    std::fs::write(file, text.replace(from, to)).expect("write source");
}

#[test]
fn each_good_build_is_served_and_a_broken_one_keeps_the_last_good_version() {
    let dir = tempfile::tempdir().expect("temp dir");
    let crate_dir = dir.path().join("my-policy");
    // The SDK named, so that this holds wherever CARGO_TARGET_DIR put the build.
    let sdk = support::repo_root().join("guest-sdk");
    let (ok, out) = run_cachet(&[
        "new-plugin",
        "my-policy",
        "--dir",
        crate_dir.to_str().unwrap(),
        "--sdk",
        sdk.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let source = crate_dir.join("src/lib.rs");
    let published = dir.path().join("live/policy.wasm");
    let log_path = dir.path().join("dev.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let _dev = DevLoop(
        Command::new(cachet_bin())
            .arg("dev")
            .arg(&crate_dir)
            .arg("--out")
            .arg(&published)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("cachet dev"),
    );
    let dev_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    wait_for("the first build", FIRST_BUILD, || published.exists());

    let origin = Origin::start(|_| Reply::ok("page").header("Cache-Control", "max-age=60"));
    let proxy = Proxy::start(
        "max_bytes = \"16MiB\"",
        &[TenantSpec::new("dev", origin.addr, &published)],
    );
    let logged_in = || -> Resp { send("GET", &proxy.url("/page"), &[("Cookie", "session=1")]) };
    // The scaffolded policy bypasses the cache for a session cookie and says why.
    let first = logged_in();
    assert_eq!(first.status, 200);
    assert!(
        first.cache_status().contains("session cookie"),
        "{}",
        first.cache_status()
    );

    // A saved edit is rebuilt, published and hot-reloaded.
    edit(&source, "\"session cookie\"", "\"edited under cachet dev\"");
    wait_for("the edited policy to serve", REBUILD, || {
        logged_in()
            .cache_status()
            .contains("edited under cachet dev")
    });
    let good = std::fs::read(&published).expect("published component");

    // A source that does not compile is reported; nothing is published.
    let failures_before = dev_log().matches("not published").count();
    edit(&source, "fn on_request", "fn on_request(");
    wait_for("the failed build to be reported", REBUILD, || {
        dev_log().matches("not published").count() > failures_before
    });
    assert_eq!(std::fs::read(&published).expect("component"), good);
    let resp = logged_in();
    assert_eq!(resp.status, 200);
    assert!(
        resp.cache_status().contains("edited under cachet dev"),
        "{}\n{}",
        resp.cache_status(),
        dev_log()
    );
}
