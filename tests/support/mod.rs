//! Shared pieces of the end-to-end tests: a real origin that counts what
//! reaches it, the real `cachet` binary with real plugins, and a real HTTP
//! client. Everything binds 127.0.0.1 and stops by itself.

#![allow(dead_code)]

pub mod client;
pub mod http2_client;
pub mod origin;
pub mod proxy;
pub mod raw;
pub mod redis;
pub mod tls;
pub mod wire;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Polls `done` for up to 10 s: for a state the proxy (or an origin) reaches in its own
/// time, which a busy machine may take long to reach. A fixed sleep in its place passes on an
/// idle machine and fails on a loaded one.
#[track_caller]
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "not within 10 s: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The first value of header `name` (any case) in a list of (name, value) pairs.
pub fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Parsed header fields as owned (name, value) pairs, values read lossily.
pub fn owned_headers(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| {
            (
                h.name.to_owned(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

/// `cachet_lean_hits_total` as the metrics listener on `metrics_port` reports it (0 before the
/// first lean hit, when the counter is not shown yet).
pub fn lean_hits_counted(metrics_port: u16) -> u64 {
    let text = client::get(&format!("http://127.0.0.1:{metrics_port}/metrics")).text();
    text.lines()
        .find_map(|l| l.strip_prefix("cachet_lean_hits_total "))
        .map_or(0, |v| v.trim().parse().expect("counter value"))
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

/// Builds the example plugins from `plugins/` once per test binary and
/// returns the folder holding `<name>.wasm`.
pub fn plugins_dir() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            run_build_script("plugins/build.sh");
            repo_root().join("plugins")
        })
        .clone()
}

/// Path of an example plugin, e.g. `plugin("standard")`. The Python example
/// is built (componentize-py, ~15 s) only by the tests that use it.
pub fn plugin(name: &str) -> PathBuf {
    if name == "static-assets-py" {
        static BUILT_PYTHON: OnceLock<()> = OnceLock::new();
        BUILT_PYTHON.get_or_init(|| run_build_script("plugins/static-assets-py/build.sh"));
    }
    let path = plugins_dir().join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "missing {}: build it with bash plugins/build.sh (the Python example: \
         bash plugins/static-assets-py/build.sh)",
        path.display()
    );
    path
}

/// Builds the hostile and broken test plugins in `tests/fixtures/plugins/`
/// once per test binary and returns the path of `<name>.wasm`.
pub fn fixture(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        run_build_script("tests/fixtures/plugins/build.sh");
        repo_root().join("tests/fixtures/plugins")
    });
    let path = dir.join(format!("{name}.wasm"));
    assert!(path.is_file(), "missing {}", path.display());
    path
}

/// Runs a plugin build script of the repository. Core modules are wrapped
/// into components by the `cachet` under test: the scripts' fallback, `cargo
/// run -p cachet`, unifies features differently from `cargo test --workspace`
/// and would rebuild pingora and wasmtime once more.
fn run_build_script(script: &str) {
    let status = std::process::Command::new("bash")
        .arg(repo_root().join(script))
        .env("CACHET", env!("CARGO_BIN_EXE_cachet"))
        .status()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    assert!(status.success(), "{script} failed");
}

/// The segment file of a disk tier (`[cache.disk] path`) where `needle` first
/// occurs, and its offset: for tests that damage a stored object.
pub fn find_in_segments(disk: &Path, needle: &[u8]) -> Option<(PathBuf, usize)> {
    for entry in std::fs::read_dir(disk.join("segments")).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) {
            return Some((path, at));
        }
    }
    None
}

/// A port on 127.0.0.1 that was free a moment ago, and never handed out
/// before in this test process.
///
/// The kernel may give a released port to the next `bind` to port 0. Tests run
/// in parallel threads, so without the record two proxies starting at once
/// could be told the same port, and one's requests reach the other (a
/// PURGE answered by another proxy's admin listener was seen in CI).
pub fn free_port() -> u16 {
    let listener = bind_unclaimed();
    listener.local_addr().expect("local address").port()
}

/// Ports handed out by [`free_port`] or bound by [`bind_unclaimed`] in this test process.
static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());

/// A listener on 127.0.0.1 whose port no [`free_port`] caller was told. The test origins
/// bind here: a port [`free_port`] released for a proxy that has not bound it yet could
/// otherwise go to an origin, and the proxy's requests reach that origin (a 200 without
/// `Cache-Status`, and an extra request at another test's origin, seen in CI).
pub fn bind_unclaimed() -> std::net::TcpListener {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local address").port();
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return listener;
        }
    }
}

/// A `/proc/PID/status` field of a process in KiB (`VmRSS:`, `VmHWM:` the peak).
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in {status}"))
}
