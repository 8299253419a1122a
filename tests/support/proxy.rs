//! The real `cachet` binary, started on free loopback ports with a config
//! written for the test, and killed (by its PID) when the test ends.

use super::free_port;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One `[[tenant]]` of the generated config.
#[derive(Debug, Clone)]
pub struct TenantSpec {
    pub name: String,
    pub hosts: Vec<String>,
    pub upstream: SocketAddr,
    pub plugin: PathBuf,
    /// Extra TOML lines appended inside the tenant table.
    pub extra: String,
    /// Lines of the tenant's `[tenant.limits]` table.
    pub limits: String,
    /// Replaces the `upstream = "ADDR"` line (an https:// upstream, a pool).
    pub upstream_line: Option<String>,
}

impl TenantSpec {
    pub fn new(name: &str, upstream: SocketAddr, plugin: &Path) -> Self {
        Self {
            name: name.into(),
            hosts: vec!["*".into()],
            upstream,
            plugin: plugin.to_path_buf(),
            extra: String::new(),
            // Test machines are small and busy: a generous deadline keeps
            // well-behaved plugins from timing out under scheduler delays.
            // Tests about deadlines set their own.
            limits: "hook_timeout_ms = 250".into(),
            upstream_line: None,
        }
    }

    /// Writes `line` (e.g. `upstream = "https://..."` or `upstreams = [...]`)
    /// instead of `upstream = "ADDR"`.
    pub fn upstream_line(mut self, line: &str) -> Self {
        self.upstream_line = Some(line.into());
        self
    }

    pub fn limits(mut self, toml: &str) -> Self {
        self.limits = toml.into();
        self
    }

    pub fn hosts(mut self, hosts: &[&str]) -> Self {
        self.hosts = hosts.iter().map(|h| h.to_string()).collect();
        self
    }

    pub fn extra(mut self, toml: &str) -> Self {
        self.extra = toml.into();
        self
    }
}

pub struct Proxy {
    child: Child,
    /// Whether the config watches files (`[plugins] watch`); readiness waits for the watcher.
    watches: bool,
    pub port: u16,
    pub admin_port: u16,
    /// The TLS listener's port, when the `[server]` lines say `tls_listen = "127.0.0.1:TLS_PORT"`.
    pub tls_port: Option<u16>,
    pub dir: tempfile::TempDir,
    admin_token: Option<String>,
}

/// The binary under test.
pub fn cachet_bin() -> &'static str {
    env!("CARGO_BIN_EXE_cachet")
}

/// Runs `cachet ARGS` to completion: (succeeded, stdout + stderr).
pub fn run_cachet<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (bool, String) {
    let out = Command::new(cachet_bin())
        .args(args)
        .output()
        .expect("run cachet");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

impl Proxy {
    /// Starts cachet with `[cache]` lines `cache` and the given tenants. `cache` may go on
    /// with more tables (e.g. `[plugins]`).
    pub fn start(cache: &str, tenants: &[TenantSpec]) -> Self {
        Self::start_with_server("", cache, tenants)
    }

    /// Like [`Proxy::start`], with extra `[server]` lines.
    pub fn start_with_server(server: &str, cache: &str, tenants: &[TenantSpec]) -> Self {
        Self::start_with_launcher(&[], server, cache, tenants)
    }

    /// Like [`Proxy::start_with_server`], with cachet run as the last
    /// argument of `launcher` (a program that execs it, so the PID stays
    /// cachet's), e.g. in namespaces of its own.
    pub fn start_with_launcher(
        launcher: &[String],
        server: &str,
        cache: &str,
        tenants: &[TenantSpec],
    ) -> Self {
        let mut last_log = String::new();
        // A port picked free can be taken before cachet binds it: retry.
        for _ in 0..3 {
            match Self::try_start(launcher, server, cache, tenants) {
                Ok(proxy) => return proxy,
                Err(log) => last_log = log,
            }
        }
        panic!("cachet did not start:\n{last_log}");
    }

    fn try_start(
        launcher: &[String],
        server: &str,
        cache: &str,
        tenants: &[TenantSpec],
    ) -> Result<Self, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let admin_port = free_port();
        let tls_port = server.contains("TLS_PORT").then(free_port);
        let server = &match tls_port {
            Some(p) => server.replace("TLS_PORT", &p.to_string()),
            None => server.to_owned(),
        };
        // CACHET_TEST_LEAN_HITS=off runs a suite with every hit on pingora-cache's full path.
        let lean = match std::env::var("CACHET_TEST_LEAN_HITS").as_deref() {
            Ok("off") if !cache.contains("lean_hits") => "lean_hits = false\n",
            _ => "",
        };
        let mut config = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin = \"127.0.0.1:{admin_port}\"\nthreads = 2\n{server}\n\n[cache]\n{lean}{cache}\n"
        );
        for t in tenants {
            let hosts: Vec<String> = t.hosts.iter().map(|h| format!("{h:?}")).collect();
            let upstream = t
                .upstream_line
                .clone()
                .unwrap_or_else(|| format!("upstream = \"{}\"", t.upstream));
            let _ = write!(
                config,
                "\n[[tenant]]\nname = {:?}\nhosts = [{}]\n{upstream}\nplugin = {:?}\n{}\n[tenant.limits]\n{}\n",
                t.name,
                hosts.join(", "),
                t.plugin.display().to_string(),
                t.extra,
                t.limits
            );
        }
        let config_path = dir.path().join("cachet.toml");
        std::fs::write(&config_path, config).expect("write config");
        let log = std::fs::File::create(dir.path().join("cachet.log")).expect("log file");
        let mut command = match launcher.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(cachet_bin());
                command
            }
            None => Command::new(cachet_bin()),
        };
        let child = command
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .env(
                "CACHET_LOG",
                std::env::var("CACHET_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn cachet");
        let admin_token = server
            .lines()
            .find_map(|l| l.trim().strip_prefix("admin_token = "))
            .map(|v| v.trim_matches('"').to_owned())
            .or_else(|| {
                // As it is when cachet starts: a test that rotates it asks with its own.
                let file = server
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("admin_token_file = "))?;
                let token = std::fs::read_to_string(file.trim_matches('"')).ok()?;
                Some(token.trim().to_owned())
            });
        let mut proxy = Self {
            child,
            watches: !cache.contains("watch = false"),
            port,
            admin_port,
            tls_port,
            dir,
            admin_token,
        };
        proxy
            .wait_ready()
            .map_err(|e| format!("{e}\n{}", proxy.log()))?;
        Ok(proxy)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("cachet exited early with {status}"));
            }
            let listening = std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && self
                    .tls_port
                    .is_none_or(|p| std::net::TcpStream::connect(("127.0.0.1", p)).is_ok());
            // Ready when serving and, unless `watch = false`, watching its
            // files (hot-reload tests change them right away).
            let ready = self
                .try_status()
                .is_some_and(|s| !self.watches || s["config"]["watching"] == true);
            if listening && ready {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err("cachet did not become ready in 60 s".into())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    fn try_status(&self) -> Option<serde_json::Value> {
        let mut request = ureq::get(&self.admin_url("/status")).timeout(Duration::from_secs(2));
        if let Some(token) = &self.admin_token {
            request = request.set("Authorization", &format!("Bearer {token}"));
        }
        let text = request.call().ok()?.into_string().ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The admin `/status` document.
    pub fn status(&self) -> serde_json::Value {
        self.try_status().expect("GET /status")
    }

    /// The value of `series` (a metric's name and labels, as `/metrics` writes them) on the
    /// admin listener now: 0 before it is first counted.
    pub fn counted(&self, series: &str) -> u64 {
        let mut request = ureq::get(&self.admin_url("/metrics")).timeout(Duration::from_secs(5));
        if let Some(token) = &self.admin_token {
            request = request.set("Authorization", &format!("Bearer {token}"));
        }
        let text = request
            .call()
            .expect("GET /metrics")
            .into_string()
            .expect("metrics text");
        let prefix = format!("{series} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0, |v| v.trim().parse::<f64>().expect("metric value") as u64)
    }

    /// Client connections the proxy holds now: open, or in their TLS handshake.
    pub fn connections_open(&self) -> u64 {
        self.counted("cachet_connections_open")
    }

    /// Stored bytes as the storage reports them.
    pub fn stored_bytes(&self) -> u64 {
        self.status()["cache"]["stored_bytes"]
            .as_u64()
            .expect("cache.stored_bytes")
    }

    /// The process id of the running cachet.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Freezes cachet (SIGSTOP by its PID): a node stalled, its connections open.
    /// [`Self::resume`] undoes it.
    pub fn pause(&self) {
        assert!(self.signal(libc::SIGSTOP), "SIGSTOP to cachet");
    }

    pub fn resume(&self) {
        assert!(self.signal(libc::SIGCONT), "SIGCONT to cachet");
    }

    /// Sends SIGTERM (a drain, then the exit) without waiting.
    pub fn terminate(&self) {
        assert!(self.signal(libc::SIGTERM), "SIGTERM to cachet");
    }

    fn signal(&self, signal: libc::c_int) -> bool {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) on the PID of a child this struct owns and has not reaped.
        unsafe { libc::kill(pid, signal) == 0 }
    }

    /// Stops cachet now (by its PID) and waits for it to exit.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGINT (Pingora's fast shutdown) and waits up to 20 s for cachet
    /// to exit; returns whether it exited successfully.
    pub fn interrupt(&mut self) -> bool {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-INT", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -INT {pid}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("cachet did not exit within 20 s of SIGINT");
    }

    /// Waits up to `within` for the process to exit; its status if it did.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything cachet logged so far. Lines are written by a background thread that gathers
    /// them for 10 ms: wait out a batch first, so a line logged before this call is in it.
    pub fn log(&self) -> String {
        std::thread::sleep(Duration::from_millis(40));
        self.read_log()
    }

    /// The log once `done` holds for it, or after 10 s: lines must appear, but the background
    /// thread that writes them can lag on a busy machine. Returns the last log read, so the
    /// caller's assertion fails with all of it.
    pub fn log_until(&self, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.read_log();
            if done(&log) || Instant::now() >= deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (up to 10 s, as `log_until`) for the log to hold every one of `expected`, then
    /// asserts each, naming the one missing; returns the log for further checks.
    #[track_caller]
    pub fn assert_logged(&self, expected: &[&str]) -> String {
        let log = self.log_until(|log| expected.iter().all(|text| log.contains(text)));
        for text in expected {
            assert!(log.contains(text), "the log lacks {text:?}:\n{log}");
        }
        log
    }

    fn read_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("cachet.log")).unwrap_or_default()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
