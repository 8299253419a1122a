//! A real `redis-server` on a loopback port, plain or TLS, stopped by its PID when dropped.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    child: Child,
    pub port: u16,
}

/// The files a TLS `redis-server` needs: its certificate chain, key and the CA it trusts.
pub struct RedisTls<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
    pub ca: &'a Path,
}

impl Redis {
    /// Plain TCP on `port`.
    pub fn start(port: u16) -> Self {
        Self::spawn(port, &["--port", &port.to_string()])
    }

    /// Plain TCP on a free port. A port found free may be taken before the server binds it
    /// (by another test's outgoing connection): then another is tried.
    pub fn start_fresh() -> Self {
        Self::start_fresh_with(&[])
    }

    /// [`Self::start_fresh`] with more `redis-server` arguments.
    pub fn start_fresh_with(extra: &[&str]) -> Self {
        let mut tries = 0;
        loop {
            let port = super::free_port();
            let port_arg = port.to_string();
            let mut args = vec!["--port", port_arg.as_str()];
            args.extend_from_slice(extra);
            match Self::try_spawn(port, &args).and_then(Self::answers_itself) {
                Ok(redis) => return redis,
                Err(e) if tries < 3 => {
                    eprintln!("redis-server on {port}: {e}; trying another port");
                    tries += 1;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// Plain TCP on `port`, with more `redis-server` arguments (an ACL user, say).
    pub fn start_with(port: u16, extra: &[&str]) -> Self {
        let port_arg = port.to_string();
        let mut args = vec!["--port", port_arg.as_str()];
        args.extend_from_slice(extra);
        Self::spawn(port, &args)
    }

    /// TLS only on `port` (`--port 0` turns plain TCP off); clients need no certificate.
    pub fn start_tls(port: u16, tls: &RedisTls) -> Self {
        let path = |p: &Path| p.display().to_string();
        Self::spawn(
            port,
            &[
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--tls-cert-file",
                &path(tls.cert),
                "--tls-key-file",
                &path(tls.key),
                "--tls-ca-cert-file",
                &path(tls.ca),
                "--tls-auth-clients",
                "no",
            ],
        )
    }

    fn spawn(port: u16, args: &[&str]) -> Self {
        Self::try_spawn(port, args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The server listening on `port`, or why not (it exited: the port was taken, say).
    fn try_spawn(port: u16, args: &[&str]) -> Result<Self, String> {
        let mut child = Command::new("redis-server")
            .args(args)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/install-deps.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("redis-server {args:?} exited: {status}"));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("redis-server did not listen on {port}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self { child, port })
    }

    /// This server, if it is the one answering on its port: another one already listening
    /// there answers the connect while ours fails to bind and exits. (A server that does not
    /// say who it is, an ACL without `INFO`, is taken at its word.)
    fn answers_itself(mut self) -> Result<Self, String> {
        let ours = format!("process_id:{}", self.child.id());
        let client = redis::Client::open(format!("redis://127.0.0.1:{}", self.port))
            .map_err(|e| e.to_string())?;
        let info = client
            .get_connection_with_timeout(Duration::from_secs(5))
            .and_then(|mut conn| redis::cmd("INFO").arg("server").query::<String>(&mut conn));
        match info {
            Ok(info) if !info.lines().any(|line| line.trim() == ours) => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                Err(format!("another server answers on {}", self.port))
            }
            _ => Ok(self),
        }
    }

    /// Freezes the server (SIGSTOP by PID): its connections stay open and nothing is answered,
    /// a hung Redis rather than a dead one. [`Self::resume`] undoes it.
    pub fn pause(&self) {
        assert!(self.signal(libc::SIGSTOP), "SIGSTOP to redis-server");
    }

    pub fn resume(&self) {
        assert!(self.signal(libc::SIGCONT), "SIGCONT to redis-server");
    }

    fn signal(&self, signal: libc::c_int) -> bool {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) on the PID of a child this struct owns and has not reaped.
        unsafe { libc::kill(pid, signal) == 0 }
    }

    /// Stops the server now (SIGKILL by PID): an outage, not a shutdown.
    pub fn kill(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
