//! `cachet serve --daemon`: the process detaches before it starts any thread, and the
//! command returns once the background process is ready to serve, or fails with it.
//!
//! Pingora's own daemon mode forks when the server starts running, after cachet has built
//! its runtime: a fork keeps only the thread that calls it, so the cache tiers' runtime, their
//! writers and the shared tier's purge subscriber were gone in the daemon (nothing reached
//! the disk or Redis, a purge waited for ever, a stop hung on the tiers). Detaching first
//! builds every thread in the process that runs them. The command still answers for the
//! config and the plugins: the background process tells it, over a pipe, once they loaded.

use anyhow::{bail, Context};
use std::io::{PipeReader, PipeWriter, Read, Write};
use std::path::{Path, PathBuf};

/// What the background process tells the command when it is ready.
const READY: &[u8] = b"ready";

/// The background process's end of the pipe to the command that started it.
pub struct Detached {
    to_command: Option<PipeWriter>,
}

impl Detached {
    /// Lets the command return with success: everything that can fail at start-up is done.
    pub fn ready(&mut self) {
        if let Some(mut pipe) = self.to_command.take() {
            // The command may be gone (killed): nothing to tell then.
            let _ = pipe.write_all(READY);
        }
    }
}

/// Detaches into a background process that writes its PID to `pid_file`, and returns in it.
/// The command's own process does not return: it exits once the background process says it
/// is ready (0), or ends without saying so (1).
///
/// Must run before any thread is started: only the calling thread survives the fork.
pub fn detach(pid_file: &Path) -> anyhow::Result<Detached> {
    let moved_aside = move_aside(pid_file);
    let (from_daemon, to_command) = std::io::pipe().context("making the start-up pipe")?;
    let daemonize = daemonix::Daemonize::new()
        // Like Pingora's: files made by the process are open to its group, not to others.
        .umask(0o007)
        .pid_file(pid_file)
        .stdout(daemonix::Stdio::keep())
        .stderr(daemonix::Stdio::keep());
    match daemonize.execute() {
        daemonix::Outcome::Parent(forked) => {
            drop(to_command);
            if forked.is_ok() && told_ready(from_daemon) {
                std::process::exit(0);
            }
            // The file names a process that is gone; the one still running is in `.old`.
            if let Some(old) = moved_aside {
                put_back(&old, pid_file);
            }
            forked.context("starting the background process")?;
            bail!("the background process stopped before it was ready (its error is above)");
        }
        daemonix::Outcome::Child(detached) => {
            drop(from_daemon);
            detached.with_context(|| format!("detaching (pid file {})", pid_file.display()))?;
            Ok(Detached {
                to_command: Some(to_command),
            })
        }
    }
}

/// Moves the pid file a running process locks (the one being upgraded) to `<name>.old`, as
/// Pingora does: the new process cannot lock the same file. Returns where it went.
fn move_aside(pid_file: &Path) -> Option<PathBuf> {
    if !pid_file.exists() {
        return None;
    }
    let mut old = pid_file.as_os_str().to_owned();
    old.push(".old");
    let old = PathBuf::from(old);
    match std::fs::rename(pid_file, &old) {
        Ok(()) => Some(old),
        Err(e) => {
            tracing::warn!(pid_file = %pid_file.display(), "cannot move the old pid file aside: {e}");
            None
        }
    }
}

/// Whether the background process said it is ready before it closed its end of the pipe
/// (it does when it exits).
fn told_ready(mut from_daemon: PipeReader) -> bool {
    let mut told = Vec::new();
    let _ = from_daemon.read_to_end(&mut told);
    told == READY
}

/// Gives `pid_file` back to the process it named before a start that failed.
fn put_back(old: &Path, pid_file: &Path) {
    if let Err(e) = std::fs::rename(old, pid_file) {
        tracing::warn!(pid_file = %pid_file.display(), "cannot put the old pid file back: {e}");
    }
}
