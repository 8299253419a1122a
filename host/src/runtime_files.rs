//! Where the process keeps its PID file and its graceful-upgrade socket when the config does
//! not say: a folder of the user's own in the temporary folder, `cachet-<uid>`, made private.
//!
//! The upgrade socket is trusted with the listening sockets: Pingora connects to whatever
//! listens at its path and sends them there. Directly in a shared `/tmp`, any local user
//! could listen at the path first and receive a site's port 80 and 443 (the sticky bit also
//! kept cachet from removing their socket). In a folder only this user can enter, nobody
//! else can.

use anyhow::bail;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::config::ServerConfig;

/// The folder the defaults of `[server] pid_file` and `upgrade_sock` are in.
pub fn default_folder() -> PathBuf {
    // SAFETY: geteuid cannot fail and touches no memory.
    let uid = unsafe { libc::geteuid() };
    std::env::temp_dir().join(format!("cachet-{uid}"))
}

/// Makes the default folder, if a default is in use, or checks the one found there: a
/// folder (not a link) of this user's that no one else can enter.
pub fn prepare(server: &ServerConfig) -> anyhow::Result<()> {
    let folder = default_folder();
    let in_use = [&server.pid_file, &server.upgrade_sock]
        .iter()
        .any(|path| path.parent() == Some(folder.as_path()));
    if in_use {
        check_private(&folder)?;
    }
    Ok(())
}

fn check_private(folder: &Path) -> anyhow::Result<()> {
    let made = std::fs::DirBuilder::new().mode(0o700).create(folder);
    if let Err(e) = made {
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            bail!(
                "cannot make {} for the pid file and upgrade socket: {e} \
                 (or set [server] pid_file and upgrade_sock)",
                folder.display()
            );
        }
    }
    let found = std::fs::symlink_metadata(folder)?;
    // SAFETY: as above.
    let uid = unsafe { libc::geteuid() };
    let problem = if !found.is_dir() {
        Some("it is not a folder".to_owned())
    } else if found.uid() != uid {
        Some(format!(
            "it belongs to uid {}, not to this user",
            found.uid()
        ))
    } else if found.mode() & 0o077 != 0 {
        Some(format!(
            "others can use it (mode {:o})",
            found.mode() & 0o777
        ))
    } else {
        None
    };
    if let Some(problem) = problem {
        bail!(
            "{} cannot hold the upgrade socket: {problem}; remove it or set \
             [server] pid_file and upgrade_sock",
            folder.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_folder_others_can_use_or_a_link_is_refused_and_a_missing_one_made_private() {
        let dir = tempfile::tempdir().unwrap();
        let made = dir.path().join("made");
        check_private(&made).unwrap();
        let mode = std::fs::metadata(&made).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);

        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let refused = check_private(&open).unwrap_err().to_string();
        assert!(refused.contains("others can use it"), "{refused}");

        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&made, &link).unwrap();
        let refused = check_private(&link).unwrap_err().to_string();
        assert!(refused.contains("not a folder"), "{refused}");
    }
}
