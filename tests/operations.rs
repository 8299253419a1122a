//! What an operator touches: metrics, the admin API and its token, the
//! `cachet` subcommands, daemon mode, and `new-plugin`.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::client::{get, send};
use support::origin::{Origin, Reply};
use support::proxy::{cachet_bin, run_cachet, Proxy, TenantSpec};
use support::{free_port, plugin};

const TOKEN: &str = "s3cret-admin-token";

/// Kills a process we started (by PID) when the test ends, pass or fail.
struct KillOnDrop(u32);

/// Kills and reaps a child we spawned when the test ends, pass or fail.
struct ChildGuard(std::process::Child);

impl ChildGuard {
    fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .status();
    }
}

fn cachet(args: &[&str]) -> (bool, String) {
    run_cachet(args)
}

/// A proxy whose config carries an admin token and a metrics listener.
fn guarded_proxy(origin: &Origin) -> (Proxy, u16) {
    let metrics_port = free_port();
    let proxy = Proxy::start_with_server(
        &format!("admin_token = \"{TOKEN}\"\nmetrics = \"127.0.0.1:{metrics_port}\""),
        "max_bytes = \"64MiB\"",
        &[TenantSpec::new("site", origin.addr, &plugin("standard"))],
    );
    (proxy, metrics_port)
}

fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|label| l.contains(label)))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

#[test]
fn metrics_count_real_traffic() {
    let origin = Origin::start(|seen| match seen.url.as_str() {
        "/nostore" => Reply::ok("x").header("Cache-Control", "no-store"),
        _ => Reply::ok("x").header("Cache-Control", "max-age=60"),
    });
    let (proxy, metrics_port) = guarded_proxy(&origin);
    for _ in 0..5 {
        get(&proxy.url("/cached"));
    }
    for _ in 0..2 {
        get(&proxy.url("/nostore"));
    }
    send("POST", &proxy.url("/form"), &[]);
    // A request is counted in its logging phase, which runs after the client has the
    // response: wait (bounded) until all 8 are in before reading the figures.
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = get(&format!("http://127.0.0.1:{metrics_port}/metrics")).text();
        let counted = metric(&text, "cachet_requests_total", &["tenant=\"site\""]);
        if counted >= 8.0 || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let requests = |status: &str| {
        metric(
            &text,
            "cachet_requests_total",
            &["tenant=\"site\"", &format!("cache_status=\"{status}\"")],
        )
    };
    assert_eq!(requests("hit"), 4.0, "{text}");
    assert_eq!(requests("miss"), 3.0, "{text}");
    assert_eq!(requests("bypass"), 1.0, "{text}");
    // Every request ran on-request, plus one run to find the key the
    // successful POST invalidates. The example policy implements 0.3.0, whose
    // on-response sees every origin response to a cacheable request before the
    // host judges it (it may edit it): the miss of /cached and both /nostore.
    let hooks = |hook: &str| {
        metric(
            &text,
            "cachet_plugin_hook_seconds_count",
            &["tenant=\"site\"", &format!("hook=\"{hook}\"")],
        )
    };
    assert_eq!(hooks("request"), 9.0, "{text}");
    // One miss of /cached, two of /nostore, the POST: four origin requests.
    assert_eq!(
        metric(
            &text,
            "cachet_origin_response_seconds_count",
            &["tenant=\"site\""]
        ),
        4.0,
        "{text}"
    );
    assert_eq!(origin.hits(), 4);
    assert_eq!(hooks("response"), 3.0, "{text}");
    assert_eq!(
        metric(&text, "cachet_cache_objects", &["tenant=\"site\""]),
        1.0,
        "{text}"
    );
    assert!(
        metric(&text, "cachet_cache_stored_bytes", &["tenant=\"site\""]) > 0.0,
        "{text}"
    );
}

#[test]
fn the_admin_api_requires_the_token() {
    let origin = Origin::start(|_| Reply::ok("x"));
    let (proxy, _) = guarded_proxy(&origin);
    let status_url = proxy.admin_url("/status");
    let missing = send("GET", &status_url, &[]);
    assert_eq!(missing.status, 401);
    assert!(missing
        .header("www-authenticate")
        .is_some_and(|h| h.starts_with("Bearer")));
    assert_eq!(
        send("GET", &status_url, &[("Authorization", "Bearer wrong")]).status,
        401
    );
    assert_eq!(
        send("GET", &status_url, &[("Authorization", TOKEN)]).status,
        401
    );
    let ok = send(
        "GET",
        &status_url,
        &[("Authorization", &format!("Bearer {TOKEN}"))],
    );
    assert_eq!(ok.status, 200);
    let status: serde_json::Value = serde_json::from_slice(&ok.body).unwrap();
    assert_eq!(status["tenants"][0]["name"], "site");
    assert_eq!(status["tenants"][0]["plugin"]["generation"], 1);
    assert_eq!(
        status["tenants"][0]["plugin"]["sha256"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
}

/// Without a token, the admin API answers only tools on this machine: a web page a local
/// browser opens cannot make it reload, purge or promote (a form's POST carries `Origin`),
/// nor read it through a name it points at 127.0.0.1 (DNS rebinding: `Host` names it).
#[test]
fn without_a_token_the_admin_api_refuses_what_a_browser_sends_for_a_web_page() {
    let origin = Origin::start(|_| Reply::ok("x"));
    let proxy = Proxy::start(
        "",
        &[TenantSpec::new("site", origin.addr, &plugin("standard"))],
    );
    let status_url = proxy.admin_url("/status");
    let local = format!("localhost:{}", proxy.admin_port);
    assert_eq!(send("GET", &status_url, &[]).status, 200);
    assert_eq!(send("GET", &status_url, &[("Host", &local)]).status, 200);
    let rebound = send("GET", &status_url, &[("Host", "attacker.example")]);
    assert_eq!(rebound.status, 403, "{}", rebound.text());
    assert!(
        rebound.text().contains("attacker.example"),
        "{}",
        rebound.text()
    );
    for (method, path) in [("POST", "/reload"), ("POST", "/purge"), ("GET", "/status")] {
        let posted = send(
            method,
            &proxy.admin_url(path),
            &[
                ("Origin", "http://attacker.example"),
                ("Surrogate-Key", "t"),
            ],
        );
        assert_eq!(posted.status, 403, "{method} {path}: {}", posted.text());
    }
    // With a token, the token decides: a tool may reach the API under any name.
    let (guarded, metrics_port) = guarded_proxy(&origin);
    let auth = format!("Bearer {TOKEN}");
    let named = send(
        "GET",
        &guarded.admin_url("/status"),
        &[("Host", "admin.example"), ("Authorization", &auth)],
    );
    assert_eq!(named.status, 200);
    let wrong_method = send(
        "GET",
        &guarded.admin_url("/reload"),
        &[("Authorization", &auth)],
    );
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.header("allow"), Some("POST"));
    // The metrics listener, on loopback and without a token, is refused to a page as well.
    let metrics_url = format!("http://127.0.0.1:{metrics_port}/metrics");
    assert_eq!(send("GET", &metrics_url, &[]).status, 200);
    // It answers a scrape and nothing else.
    for method in ["POST", "DELETE", "PUT"] {
        let refused = send(method, &metrics_url, &[]);
        assert_eq!(refused.status, 405, "{method}: {}", refused.text());
        assert_eq!(refused.header("allow"), Some("GET"), "{method}");
        assert!(!refused.text().contains("cachet_"), "{}", refused.text());
    }
    for header in [("Host", "attacker.example"), ("Origin", "http://a.example")] {
        let refused = send("GET", &metrics_url, &[header]);
        assert_eq!(refused.status, 403, "{header:?}: {}", refused.text());
        assert!(!refused.text().contains("cachet_"), "{}", refused.text());
    }
}

#[test]
fn status_and_reload_subcommands_read_the_config() {
    let origin = Origin::start(|_| Reply::ok("x"));
    let (proxy, _) = guarded_proxy(&origin);
    let config = proxy.dir.path().join("cachet.toml");
    let (ok, out) = cachet(&["status", "--config", config.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(out.contains("tenant site"), "{out}");
    assert!(out.contains("generation 1"), "{out}");
    let (ok, out) = cachet(&["reload", "--config", config.to_str().unwrap()]);
    assert!(ok, "{out}");
    let (ok, out) = cachet(&["status", "--json", "--config", config.to_str().unwrap()]);
    assert!(ok, "{out}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["tenants"][0]["name"], "site");

    // A config naming a file that is no plugin is refused: `reload` says what and why, and
    // exits 1 (it said nothing and exited 0, so a script took the refusal for success).
    let junk = proxy.dir.path().join("junk.wasm");
    std::fs::write(&junk, b"not a component").unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    let standard = format!("{:?}", plugin("standard").display().to_string());
    assert!(text.contains(&standard), "{text}");
    let broken = text.replace(&standard, &format!("{:?}", junk.display().to_string()));
    std::fs::write(&config, broken).unwrap();
    let (ok, out) = cachet(&["reload", "--config", config.to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(out.contains("HTTP 409"), "{out}");
    assert!(out.contains("config: "), "{out}");
    assert!(out.contains("junk.wasm"), "{out}");
    assert!(
        get(&proxy.url("/still")).status == 200,
        "the old config keeps serving"
    );
}

#[test]
fn purge_through_the_cli_removes_the_entry() {
    let origin = Origin::start(|_| Reply::ok("x").header("Cache-Control", "max-age=600"));
    let (proxy, _) = guarded_proxy(&origin);
    get(&proxy.url("/doc"));
    assert!(get(&proxy.url("/doc")).cache_status().contains("hit"));
    let config = proxy.dir.path().join("cachet.toml");
    let target = format!("http://127.0.0.1:{}/doc", proxy.port);
    let (ok, out) = cachet(&["purge", "--config", config.to_str().unwrap(), &target]);
    assert!(ok, "{out}");
    assert!(get(&proxy.url("/doc")).cache_status().contains("fwd=miss"));
    assert_eq!(origin.hits_for("/doc"), 2);
}

/// A `cachet serve --daemon` started on a config with `server` lines added to `[server]` and
/// `tables` before the tenant, listening; stopped by the PID it wrote, however the test ends.
struct Daemon {
    port: u16,
    pid: u32,
    _stop: KillOnDrop,
    _dir: tempfile::TempDir,
}

fn start_daemon(origin: &Origin, server: &str, tables: &str) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("cachet.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nthreads = 1\npid_file = \"cachet.pid\"\nupgrade_sock = \"upgrade.sock\"\n{server}\n\n{tables}\n\n[[tenant]]\nname = \"d\"\nhosts = [\"*\"]\nupstream = \"{}\"\nplugin = {:?}\n",
            origin.addr,
            plugin("standard").display().to_string()
        ),
    )
    .unwrap();
    // The daemon keeps any inherited pipes open: give it none.
    let status = Command::new(cachet_bin())
        .args(["serve", "--daemon", "--config", config.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run cachet serve --daemon");
    let pid = written_pid(&dir.path().join("cachet.pid"));
    let daemon = Daemon {
        port,
        pid,
        _stop: KillOnDrop(pid),
        _dir: dir,
    };
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "daemon did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    daemon
}

#[test]
fn daemon_mode_writes_a_pid_file_and_serves() {
    let origin = Origin::start(|_| Reply::ok("from origin").header("Cache-Control", "max-age=60"));
    let daemon = start_daemon(&origin, "", "");
    let resp = get(&format!("http://127.0.0.1:{}/x", daemon.port));
    assert_eq!(resp.text(), "from origin");
}

/// The daemon's cache tiers run in the daemon: objects reach the disk tier, and SIGTERM ends
/// it within its grace. (Pingora's fork, after the tiers' threads had started, left the
/// daemon without them: nothing was written, and a stop hung on them.)
#[test]
fn a_daemon_writes_to_its_disk_tier_and_stops_on_sigterm() {
    let origin = Origin::start(|_| Reply::ok("from origin").header("Cache-Control", "max-age=60"));
    let admin = free_port();
    let daemon = start_daemon(
        &origin,
        &format!("admin = \"127.0.0.1:{admin}\"\nshutdown_grace = \"3s\""),
        "[cache.disk]\npath = \"disk\"\nmax_bytes = \"16MiB\"",
    );
    let (port, pid) = (daemon.port, daemon.pid);
    assert_eq!(
        get(&format!("http://127.0.0.1:{port}/x")).text(),
        "from origin"
    );

    let metrics_url = format!("http://127.0.0.1:{admin}/metrics");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = get(&metrics_url).text();
        if metric(
            &metrics,
            "cachet_cache_tier_writes_total",
            &["tier=\"l2-disk\""],
        ) >= 1.0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon wrote nothing to its disk tier:\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let sent = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(8);
    // SAFETY: signal 0 only asks whether the process exists.
    while unsafe { libc::kill(pid as i32, 0) } == 0 {
        assert!(
            Instant::now() < deadline,
            "the daemon still runs 8 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A daemon whose plugin cannot load fails the command that started it, as `serve` in the
/// foreground does, and leaves nothing running.
#[test]
fn a_daemon_that_cannot_start_fails_its_command() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let broken = dir.path().join("broken.wasm");
    std::fs::write(&broken, b"not a component").unwrap();
    let config = dir.path().join("cachet.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nthreads = 1\npid_file = \"cachet.pid\"\nupgrade_sock = \"upgrade.sock\"\n\n[[tenant]]\nname = \"d\"\nhosts = [\"*\"]\nupstream = \"127.0.0.1:1\"\nplugin = {:?}\n",
            broken.display().to_string()
        ),
    )
    .unwrap();
    let out = Command::new(cachet_bin())
        .args(["serve", "--daemon", "--config", config.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run cachet serve --daemon");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("broken.wasm"),
        "the reason is given: {stderr}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nothing listens"
    );
}

/// A daemon started to take over from a running one (`--upgrade`) that cannot start leaves
/// the pid file naming the running one: it was left naming the dead process, with the running
/// one's PID moved to `cachet.pid.old`.
#[test]
fn a_failed_upgrade_leaves_the_pid_file_naming_the_running_daemon() {
    let origin = Origin::start(|_| Reply::ok("from origin").header("Cache-Control", "max-age=60"));
    let daemon = start_daemon(&origin, "", "");
    let dir = daemon._dir.path();
    let config = dir.join("cachet.toml");
    let broken = dir.join("broken.wasm");
    std::fs::write(&broken, b"not a component").unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    let standard = format!("{:?}", plugin("standard").display().to_string());
    let with_broken = text.replace(&standard, &format!("{:?}", broken.display().to_string()));
    assert_ne!(text, with_broken);
    std::fs::write(&config, with_broken).unwrap();
    let out = Command::new(cachet_bin())
        .current_dir(dir)
        .args(["serve", "--daemon", "--upgrade", "--config", "cachet.toml"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run cachet serve --daemon --upgrade");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert_eq!(written_pid(&dir.join("cachet.pid")), daemon.pid);
    assert!(!dir.join("cachet.pid.old").exists());
    let resp = get(&format!("http://127.0.0.1:{}/x", daemon.port));
    assert_eq!(resp.text(), "from origin");
}

/// The PID a daemon writes into `pid_file`, once it is there.
fn written_pid(pid_file: &std::path::Path) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let written = std::fs::read_to_string(pid_file);
        if let Some(pid) = written.ok().and_then(|p| p.trim().parse().ok()) {
            return pid;
        }
        assert!(Instant::now() < deadline, "the daemon wrote no pid file");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `cachet-sdk` dependency line of a generated crate.
fn sdk_dependency(crate_dir: &std::path::Path) -> String {
    let manifest = std::fs::read_to_string(crate_dir.join("Cargo.toml")).expect("Cargo.toml");
    manifest
        .lines()
        .find(|l| l.starts_with("cachet-sdk"))
        .expect("cachet-sdk dependency")
        .to_owned()
}

/// Copies the cachet binary to `at` and runs the copy with `args`.
fn run_copy_of_cachet(at: &Path, args: &[&str]) -> std::process::Output {
    std::fs::create_dir_all(at.parent().unwrap()).unwrap();
    std::fs::copy(cachet_bin(), at).unwrap();
    // A process another test forks meanwhile holds the copy's write descriptor until it
    // execs, and running the copy fails with ETXTBSY until then: try again a little later.
    let mut tries = 0;
    loop {
        match Command::new(at).args(args).output() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other.expect("run the copied binary"),
        }
    }
}

#[test]
fn new_plugin_finds_the_sdk_from_where_the_binary_is_not_where_it_was_built() {
    let dir = tempfile::tempdir().unwrap();
    let sdk = support::repo_root()
        .join("guest-sdk")
        .canonicalize()
        .unwrap();

    // Run from a checkout: the checkout's SDK. A copy of the binary in a checkout of its own
    // (the SDK linked in), so that this holds wherever CARGO_TARGET_DIR put the build.
    let checkout = dir.path().join("checkout");
    std::fs::create_dir_all(checkout.join("target/debug")).unwrap();
    std::os::unix::fs::symlink(&sdk, checkout.join("guest-sdk")).unwrap();
    let here = dir.path().join("here");
    let out = run_copy_of_cachet(
        &checkout.join("target/debug/cachet"),
        &["new-plugin", "here", "--dir", here.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        sdk_dependency(&here).contains(sdk.to_str().unwrap()),
        "{}",
        sdk_dependency(&here)
    );

    // A copy of the binary outside any checkout: the published crate, no stale path.
    let moved = dir.path().join("moved");
    let out = run_copy_of_cachet(
        &dir.path().join("bin/cachet"),
        &["new-plugin", "moved", "--dir", moved.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dependency = sdk_dependency(&moved);
    assert!(!dependency.contains("path"), "{dependency}");
    assert!(
        dependency.contains(env!("CARGO_PKG_VERSION")),
        "{dependency}"
    );

    // --sdk names it explicitly, and must name an SDK.
    let flagged = dir.path().join("flagged");
    let (ok, out) = run_cachet(&[
        "new-plugin",
        "flagged",
        "--dir",
        flagged.to_str().unwrap(),
        "--sdk",
        sdk.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    assert!(sdk_dependency(&flagged).contains("path"));
    let (ok, out) = run_cachet(&[
        "new-plugin",
        "nope",
        "--dir",
        dir.path().join("nope").to_str().unwrap(),
        "--sdk",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!ok && out.contains("is not the cachet SDK"), "{out}");
}

#[test]
fn new_plugin_writes_a_crate_that_tests_green() {
    let dir = tempfile::tempdir().unwrap();
    let crate_dir = dir.path().join("my-policy");
    // The SDK named (finding it is the test above): this holds wherever the build is.
    let sdk = support::repo_root().join("guest-sdk");
    let new_plugin = [
        "new-plugin",
        "my-policy",
        "--dir",
        crate_dir.to_str().unwrap(),
        "--sdk",
        sdk.to_str().unwrap(),
    ];
    let (ok, out) = cachet(&new_plugin);
    assert!(ok, "{out}");
    let (ok, out) = cachet(&new_plugin);
    assert!(!ok && out.contains("already exists"), "{out}");
    let build_config = std::fs::read_to_string(crate_dir.join(".cargo/config.toml")).unwrap();
    assert!(build_config.contains("stack-size"), "{build_config}");
    let status = Command::new("cargo")
        .args(["test", "--quiet", "--manifest-path"])
        .arg(crate_dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", dir.path().join("target"))
        .status()
        .expect("cargo test");
    assert!(status.success(), "the generated plugin's tests fail");

    // `cachet build`: wasm32-unknown-unknown, wrapped into a component with no WASI
    // imports, loaded and self-tested as `serve` would. Run as `new-plugin` says to, with
    // folders relative to where the user is.
    let out_dir = dir.path().join("out");
    let build = || {
        Command::new(cachet_bin())
            .current_dir(dir.path())
            .args(["build", "my-policy", "--out-dir", "out"])
            .env("CARGO_TARGET_DIR", dir.path().join("target"))
            .output()
            .expect("cachet build")
    };
    let out = build();
    let text = String::from_utf8_lossy(&out.stdout);
    let errors = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}{errors}");
    assert!(!errors.contains("does not run LTO"), "{errors}");
    assert!(text.contains("self-test vectors: passed"), "{text}");
    let imports = text.lines().find(|l| l.contains("imports:")).unwrap_or("");
    assert!(imports.contains("cachet:policy/types@0.3.0"), "{text}");
    assert!(
        !imports.contains("wasi:"),
        "a policy built by cachet imports WASI: {text}"
    );
    let component = out_dir.join("my_policy.wasm");
    let (ok, out) = cachet(&["check", component.to_str().unwrap()]);
    assert!(ok, "{out}");

    // An rlib next to the cdylib turns Cargo's LTO off for the component: `cachet build`
    // still builds it, and says why it is slower.
    let manifest = crate_dir.join("Cargo.toml");
    let toml = std::fs::read_to_string(&manifest).unwrap();
    let with_rlib = toml.replace(
        r#"crate-type = ["cdylib"]"#,
        r#"crate-type = ["cdylib", "rlib"]"#,
    );
    assert_ne!(toml, with_rlib, "the scaffold names its crate type: {toml}");
    std::fs::write(&manifest, with_rlib).unwrap();
    let out = build();
    let errors = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{errors}");
    assert!(errors.contains("is also built as an rlib"), "{errors}");

    // A build that fails its self-test leaves the last good component where a proxy's next
    // start would load it.
    let good = std::fs::read(&component).unwrap();
    let lib = crate_dir.join("src/lib.rs");
    let source = std::fs::read_to_string(&lib).unwrap();
    let failing = source.replacen(".expect_cache()", ".expect_bypass()", 1);
    assert_ne!(
        source, failing,
        "the scaffold declares a cached vector: {source}"
    );
    std::fs::write(&lib, failing).unwrap();
    let out = build();
    let errors = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{errors}");
    assert!(errors.contains("failed its self-test"), "{errors}");
    assert_eq!(std::fs::read(&component).unwrap(), good);
}

#[test]
fn graceful_upgrade_hands_the_listeners_to_a_new_process() {
    let origin = Origin::start(|_| Reply::ok("up").header("Cache-Control", "max-age=60"));
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let config = dir.path().join("cachet.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin = \"127.0.0.1:{admin}\"\nthreads = 1\npid_file = \"cachet.pid\"\nupgrade_sock = \"upgrade.sock\"\n\n[[tenant]]\nname = \"u\"\nhosts = [\"*\"]\nupstream = \"{}\"\nplugin = {:?}\n",
            origin.addr,
            plugin("standard").display().to_string()
        ),
    )
    .unwrap();
    // As an operator runs it: from the config's folder, with a relative path to it.
    let serve = |extra: &[&str]| {
        let mut cmd = Command::new(cachet_bin());
        cmd.current_dir(dir.path())
            .args(["serve", "--config", "cachet.toml"])
            .args(extra)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        cmd
    };
    let serving_pid = || -> Option<u32> {
        let text = ureq::get(&format!("http://127.0.0.1:{admin}/status"))
            .call()
            .ok()?
            .into_string()
            .ok()?;
        serde_json::from_str::<serde_json::Value>(&text).ok()?["pid"]
            .as_u64()
            .map(|p| p as u32)
    };
    let old = ChildGuard(serve(&[]).spawn().expect("spawn cachet"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while serving_pid() != Some(old.id()) {
        assert!(Instant::now() < deadline, "first cachet did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get(&format!("http://127.0.0.1:{port}/a")).text(), "up");

    // The README's sequence: the daemon's parent returns once its plugins are compiled (the
    // slow part of a start), then SIGQUIT makes the old process hand the listeners over.
    let status = serve(&["--daemon", "--upgrade"])
        .status()
        .expect("run cachet serve --daemon --upgrade");
    // Written by the daemon itself, in the config's folder; stopped by that PID however the
    // test ends (a failed start included).
    let new_pid = written_pid(&dir.path().join("cachet.pid"));
    let _new = KillOnDrop(new_pid);
    assert!(status.success(), "the upgrading daemon did not start");
    assert_ne!(new_pid, old.id());
    assert!(Command::new("kill")
        .args(["-QUIT", &old.id().to_string()])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while serving_pid() != Some(new_pid) {
        assert!(Instant::now() < deadline, "new cachet did not take over");
        // Clients keep being served throughout.
        assert_eq!(get(&format!("http://127.0.0.1:{port}/a")).status, 200);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get(&format!("http://127.0.0.1:{port}/a")).text(), "up");
}

#[test]
fn the_access_log_is_written_in_the_background_and_flushed_on_shutdown() {
    let origin = Origin::start(|_| Reply::ok("x").header("Cache-Control", "max-age=60"));
    let (mut proxy, metrics_port) = guarded_proxy(&origin);
    const THREADS: usize = 4;
    const PER_THREAD: usize = 150;
    let clients: Vec<_> = (0..THREADS)
        .map(|t| {
            let url = proxy.url(&format!("/logged/{t}"));
            std::thread::spawn(move || {
                for _ in 0..PER_THREAD {
                    assert_eq!(get(&url).status, 200);
                }
            })
        })
        .collect();
    for client in clients {
        client.join().expect("client thread");
    }
    // The logging phase runs after the response: wait until it counted all.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = get(&format!("http://127.0.0.1:{metrics_port}/metrics")).text();
        let logged = metric(&text, "cachet_requests_total", &["tenant=\"site\""]);
        if logged as usize == THREADS * PER_THREAD || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Registered from the start, and nothing dropped at this rate.
    assert!(text.contains("cachet_access_log_dropped_total 0"), "{text}");

    // SIGINT right after the last response: queued lines still reach the file.
    assert!(proxy.interrupt(), "cachet exited with a failure");
    let log = proxy.log();
    let access_lines = log
        .lines()
        .filter(|l| l.contains("cachet::access") && l.contains("/logged/"))
        .count();
    assert_eq!(access_lines, THREADS * PER_THREAD, "{log}");
    assert_eq!(origin.hits(), THREADS);
}

/// `work_stealing = false`: one single-threaded runtime per worker thread. Connections
/// opened side by side are all served, fills and hits alike.
#[test]
fn without_work_stealing_every_connection_is_served() {
    let origin = Origin::start(|seen| {
        Reply::ok(format!("body of {}", seen.url)).header("Cache-Control", "max-age=60")
    });
    let proxy = Proxy::start_with_server(
        "work_stealing = false",
        "max_bytes = \"64MiB\"",
        &[TenantSpec::new("site", origin.addr, &plugin("standard"))],
    );
    proxy.assert_logged(&["no work stealing"]);
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let url = proxy.url(&format!("/item/{}", i % 4));
            std::thread::spawn(move || (0..10).map(|_| get(&url)).collect::<Vec<_>>())
        })
        .collect();
    for (i, client) in clients.into_iter().enumerate() {
        let answers = client.join().unwrap();
        for resp in &answers {
            assert_eq!(resp.status, 200);
            assert_eq!(resp.text(), format!("body of /item/{}", i % 4));
        }
        assert!(answers.last().unwrap().cache_status().contains("hit"));
    }
    for i in 0..4 {
        assert_eq!(origin.hits_for(&format!("/item/{i}")), 1, "{}", proxy.log());
    }
}

/// The soft open-file limit of a running process, and its hard limit.
fn open_file_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("open files line");
    let mut numbers = line["Max open files".len()..].split_whitespace();
    (
        numbers.next().unwrap().to_owned(),
        numbers.next().unwrap().to_owned(),
    )
}

/// Started with systemd's usual soft limit of 1024 (here 512) under a higher hard limit,
/// cachet takes the hard limit: the default max_connections alone needs 4096 descriptors.
/// Under a hard limit too low for its config, it says so at start.
#[test]
fn the_open_file_limit_is_raised_to_what_the_config_needs() {
    let origin = Origin::start(|_| Reply::ok("x"));
    let launch = |limit: &str| -> Vec<String> {
        let script = format!("ulimit {limit} && exec \"$@\"");
        ["sh", "-c", script.as_str(), "sh"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let tenant = || TenantSpec::new("site", origin.addr, &plugin("standard"));
    let proxy = Proxy::start_with_launcher(&launch("-S -n 512"), "", "", &[tenant()]);
    let (soft, hard) = open_file_limits(proxy.pid());
    assert_ne!(soft, "512", "{soft} {hard}");
    assert!(soft == hard || hard == "unlimited", "{soft} {hard}");
    assert_eq!(send("GET", &proxy.url("/"), &[]).status, 200);
    drop(proxy);

    let proxy = Proxy::start_with_launcher(&launch("-n 600"), "", "", &[tenant()]);
    assert_eq!(open_file_limits(proxy.pid()).0, "600");
    proxy.assert_logged(&[
        "open-file limit 600 is under the 5440 descriptors",
        // (600 - 256 - the admin listener's 64) / 2: the operator listeners' share is set
        // aside before clients and origins split the rest.
        "accepting at most 140 client connections",
    ]);
    assert_eq!(send("GET", &proxy.url("/"), &[]).status, 200);
    // More connections than descriptors: past the cap they get the 503 and are closed, so a
    // new client is still answered (past the descriptor limit it got nothing at all).
    let idle: Vec<_> = (0..650)
        .filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", proxy.port)).ok())
        .collect();
    let answered = support::client::try_send("GET", &proxy.url("/"), &[]);
    let status = answered.as_ref().map(|r| r.status);
    assert!(matches!(status, Ok(200) | Ok(503)), "{answered:?}");
    drop(idle);
}

/// The admin listener takes 64 connections at most: peers holding connections open on it
/// (it may face a network once a token is set, and the metrics listener never asks for one)
/// get a 503 past that, instead of taking the descriptors the proxy's clients need; once
/// they let go, it answers again.
#[test]
fn the_admin_listener_holds_a_bounded_number_of_connections() {
    let origin = Origin::start(|_| Reply::ok("x"));
    let proxy = Proxy::start(
        "",
        &[TenantSpec::new("site", origin.addr, &plugin("standard"))],
    );
    let mut held: Vec<std::net::TcpStream> = (0..64)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", proxy.admin_port)).unwrap())
        .collect();
    // Each answered once (and kept alive): the listener has taken every one in, however
    // long a busy machine takes to accept them.
    for conn in &mut held {
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        std::io::Write::write_all(conn, b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .unwrap();
    }
    for conn in &mut held {
        assert_eq!(read_one_response(conn).status, 200);
    }
    let mut extra = std::net::TcpStream::connect(("127.0.0.1", proxy.admin_port)).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut extra, &mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    while send("GET", &proxy.admin_url("/status"), &[]).status != 200 {
        assert!(
            Instant::now() < deadline,
            "the admin listener did not come back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The proxy itself was never short of a connection.
    assert_eq!(get(&proxy.url("/")).status, 200);
}

/// Reads one Content-Length framed response from `conn`.
fn read_one_response(conn: &mut std::net::TcpStream) -> support::wire::RawResp {
    use std::io::Read;
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(resp) = support::wire::parse_responses(&bytes).into_iter().next() {
            let length: usize = resp
                .header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if resp.body.len() == length {
                return resp;
            }
        }
        assert!(Instant::now() < deadline, "no whole response: {bytes:?}");
        match conn.read(&mut chunk) {
            Ok(0) => panic!("closed after {:?}", String::from_utf8_lossy(&bytes)),
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("read: {e} after {:?}", String::from_utf8_lossy(&bytes)),
        }
    }
}

/// The admin and metrics listeners bound each head, not each connection. Their heads were
/// counted together for as long as a connection lived: a scraper keeping its connection
/// was refused 431 once its scrapes' heads passed `max_request_head`. And a head may not
/// trickle in for ever (Pingora waits 60 s per read): one not whole within
/// `request_head_timeout` is refused 408, and an idle connection is closed then.
#[test]
fn operator_listeners_bound_each_head_in_size_and_time() {
    use std::io::{Read, Write};
    let origin = Origin::start(|_| Reply::ok("x"));
    let metrics_port = free_port();
    let proxy = Proxy::start_with_server(
        &format!(
            "metrics = \"127.0.0.1:{metrics_port}\"\nmax_request_head = \"2KiB\"\nrequest_head_timeout = \"1s\""
        ),
        "max_bytes = \"64MiB\"",
        &[TenantSpec::new("site", origin.addr, &plugin("standard"))],
    );
    let pad = "p".repeat(1000);
    for port in [metrics_port, proxy.admin_port] {
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // 20 heads of ~1 KiB: 10 times the budget of one.
        for i in 0..20 {
            write!(
                conn,
                "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: {pad}\r\n\r\n"
            )
            .unwrap();
            let resp = read_one_response(&mut conn);
            assert_eq!(
                resp.status,
                200,
                "request {i} on port {port}: {}",
                resp.text()
            );
        }

        // A head begun and left unfinished.
        let mut slow = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            .unwrap();
        let started = Instant::now();
        let answer = support::wire::read_until_closed(&mut slow, Duration::from_secs(5));
        let waited = started.elapsed();
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(waited < Duration::from_secs(3), "{waited:?}");

        // A connection that sends nothing is closed, without an answer.
        let mut idle = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let started = Instant::now();
        let mut byte = [0u8; 1];
        assert_eq!(idle.read(&mut byte).unwrap_or(0), 0);
        assert!(started.elapsed() < Duration::from_secs(3));
    }
    // Operators' refusals are counted apart from the proxy's clients.
    let text = get(&format!("http://127.0.0.1:{metrics_port}/metrics")).text();
    assert_eq!(
        metric(
            &text,
            "cachet_admin_connections_refused_total",
            &["reason=\"head_timeout\""]
        ),
        2.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "cachet_connections_refused_total", &[]),
        0.0,
        "{text}"
    );
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
/// Bytes of anonymous executable memory the kernel backs with 2 MiB pages in a process:
/// the code `cachet serve` moved there (wasmtime's compiled plugins are too small to get any).
fn code_on_huge_pages(pid: u32) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("smaps");
    let mut in_anonymous_code = false;
    let mut kib = 0;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if !first.ends_with(':') {
            // A mapping's header: range, permissions, offset, device, inode, then a path.
            let perms = fields.next().unwrap_or_default();
            in_anonymous_code = perms.contains('x') && fields.nth(3).is_none();
        } else if in_anonymous_code && first == "AnonHugePages:" {
            kib += fields
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    kib << 10
}

/// `cachet serve` copies its code onto 2 MiB pages before it starts (release builds, or
/// `CACHET_HUGE_TEXT=1`), at the same addresses: requests, a plugin's calls and the cache all
/// run from the moved code, and the kernel backs it with huge pages where transparent huge
/// pages are on. `CACHET_HUGE_TEXT=0` leaves the code where the file maps it.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[test]
fn the_code_moved_onto_huge_pages_serves_as_before() {
    let thp =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    let huge_pages_on = !thp.is_empty() && !thp.contains("[never]");
    let origin = Origin::start(|seen| {
        Reply::ok(format!("body of {}", seen.url)).header("Cache-Control", "max-age=60")
    });
    for setting in ["1", "0"] {
        let launcher = ["env".to_owned(), format!("CACHET_HUGE_TEXT={setting}")];
        let proxy = Proxy::start_with_launcher(
            &launcher,
            "",
            "",
            &[TenantSpec::new("site", origin.addr, &plugin("standard"))],
        );
        let url = proxy.url(&format!("/moved-{setting}"));
        let (first, second) = (get(&url), get(&url));
        assert_eq!(first.text(), format!("body of /moved-{setting}"));
        assert_eq!(second.text(), first.text());
        assert!(second.cache_status().contains("hit"), "{}", proxy.log());
        assert_eq!(origin.hits_for(&format!("/moved-{setting}")), 1);
        let on_huge_pages = code_on_huge_pages(proxy.pid());
        if setting == "1" && huge_pages_on {
            proxy.assert_logged(&["code on 2 MiB pages: "]);
            assert!(
                on_huge_pages >= 2 << 20,
                "{on_huge_pages} bytes\n{}",
                proxy.log()
            );
        } else {
            proxy.assert_logged(&["code on 4 KiB pages: "]);
            assert_eq!(on_huge_pages, 0, "{}", proxy.log());
        }
    }
}

/// `CACHET_INSTANCE_SLOTS` sizes the plugin pool by hand (for valgrind and `ulimit -v`,
/// `tests/bench/instructions.sh`): the pool reserves that much address space instead of
/// terabytes and the plugin still answers; a value that is no size is refused at start.
#[cfg(target_os = "linux")]
#[test]
fn a_pool_sized_by_hand_reserves_less_and_a_bad_size_is_refused() {
    let origin = Origin::start(|seen| {
        Reply::ok(format!("body of {}", seen.url)).header("Cache-Control", "max-age=60")
    });
    let reserved = |pid: u32| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmSize:")).unwrap();
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib << 10
    };
    let mut sizes = Vec::new();
    for launcher in [
        vec![],
        vec!["env".to_owned(), "CACHET_INSTANCE_SLOTS=2".to_owned()],
    ] {
        let proxy = Proxy::start_with_launcher(
            &launcher,
            "",
            "",
            &[TenantSpec::new("site", origin.addr, &plugin("standard"))],
        );
        let url = proxy.url(&format!("/pool-{}", launcher.len()));
        let (first, second) = (get(&url), get(&url));
        assert_eq!(first.status, 200, "{}", proxy.log());
        assert!(second.cache_status().contains("hit"), "{}", proxy.log());
        sizes.push(reserved(proxy.pid()));
    }
    // Two slots of two 4 GiB memories, against the default's hundreds.
    assert!(sizes[1] < 64 << 30, "{} bytes reserved", sizes[1]);
    assert!(sizes[0] > 16 * sizes[1], "{sizes:?}");

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cachet.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{}\"\nadmin = \"127.0.0.1:{}\"\n\n[[tenant]]\nname = \"x\"\nhosts = [\"*\"]\nupstream = \"127.0.0.1:1\"\nplugin = \"builtin:standard\"\n",
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    for bad in ["0", "lots"] {
        let out = Command::new(cachet_bin())
            .args(["serve", "--config", config.to_str().unwrap()])
            .env("CACHET_INSTANCE_SLOTS", bad)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad}: {err}");
        assert!(
            err.contains("CACHET_INSTANCE_SLOTS must be a whole number above 0"),
            "{bad}: {err}"
        );
    }
}
