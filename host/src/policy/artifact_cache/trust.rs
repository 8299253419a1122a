//! Only bytes this user wrote may reach `Component::deserialize` (it runs them as native code):
//! the folder is created mode 0700 and files mode 0600, and a folder or artifact that another
//! user could have written (group- or world-writable, or owned by someone else) is not trusted.

use std::fs::{DirBuilder, Metadata, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Creates `dir` (mode 0700) or checks that only this user can write to it.
pub(super) fn prepare_folder(dir: &Path) -> Result<(), String> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create it: {e}"))?;
    let meta = std::fs::metadata(dir).map_err(|e| format!("cannot read it: {e}"))?;
    only_we_can_write(&meta).map_err(|why| format!("the folder {why}"))
}

/// Refuses files and folders another user could have written.
pub(super) fn only_we_can_write(meta: &Metadata) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(format!(
            "is owned by uid {}, not by this user (uid {me})",
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(format!(
            "is writable by group or others (mode {mode:04o}; chmod go-w to trust it)"
        ));
    }
    Ok(())
}

/// Writes to a temporary file (mode 0600) in the same folder, then renames over `path`.
pub(super) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    drop(file);
    std::fs::rename(&tmp, path)
}
