//! Only bytes this user wrote may reach `Component::deserialize` (it runs them as native code):
//! the folder is created mode 0700 and files mode 0600, and a folder or artifact that another
//! user could have written (group- or world-writable, or owned by someone else) is not trusted.
//!
//! The folder's own mode is not enough: whoever can write a folder above it can swap it for
//! another between the check and a read, or plant symlinks in it. So every folder on its
//! resolved path must be this user's or root's and closed to others (or sticky, as `/tmp` is),
//! files are opened without following a symlink, and the checks are made on the open file.

use std::fs::{DirBuilder, File, Metadata, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The suffix of a file being written; [`super::retention`] clears ones a crash left.
pub(super) const TEMPORARY_SUFFIX: &str = ".tmp";

/// Creates `dir` (mode 0700) or checks that only this user can write to it and to every folder
/// above it; returns its resolved path, which later lookups use.
pub(super) fn prepare_folder(dir: &Path) -> Result<PathBuf, String> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create it: {e}"))?;
    let resolved = dir
        .canonicalize()
        .map_err(|e| format!("cannot resolve it: {e}"))?;
    let meta = std::fs::metadata(&resolved).map_err(|e| format!("cannot read it: {e}"))?;
    only_we_can_write(&meta).map_err(|why| format!("the folder {why}"))?;
    for parent in resolved.ancestors().skip(1) {
        let meta = std::fs::metadata(parent)
            .map_err(|e| format!("cannot read {}: {e}", parent.display()))?;
        no_one_else_can_replace(&meta)
            .map_err(|why| format!("the folder above it, {}, {why}", parent.display()))?;
    }
    Ok(resolved)
}

/// Refuses files and folders another user could have written.
pub(super) fn only_we_can_write(meta: &Metadata) -> Result<(), String> {
    let me = effective_uid();
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

/// A folder above the cache: others must not be able to rename what is in it. Root's and this
/// user's folders closed to others qualify, and so does a sticky one (`/tmp`), where only an
/// entry's owner may rename it.
fn no_one_else_can_replace(meta: &Metadata) -> Result<(), String> {
    let owner = meta.uid();
    if owner != 0 && owner != effective_uid() {
        return Err(format!(
            "is owned by uid {owner}, neither root nor this user"
        ));
    }
    let mode = meta.mode() & 0o7777;
    let sticky = mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !sticky {
        return Err(format!(
            "is writable by group or others (mode {mode:04o}), so what is in it can be replaced"
        ));
    }
    Ok(())
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The whole file, if it is a regular file (not a symlink) that only this user can write; the
/// checks are made on the open file, so a file swapped after them is never the one read.
pub(super) fn read_private(path: &Path) -> Result<Vec<u8>, String> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot be opened: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot be read: {e}"))?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    only_we_can_write(&meta)?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.read_to_end(&mut bytes)
        .map_err(|e| format!("cannot be read: {e}"))?;
    Ok(bytes)
}

/// Writes to a new temporary file (mode 0600, a name no other writer uses, never through a
/// symlink) in the same folder, then renames it over `path`; the temporary file goes on error.
pub(super) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temporary_name(path);
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut file: File| file.write_all(bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// `.<name>.<pid>.<nanos>.<n>.tmp`: two processes with the same pid (containers sharing the
/// folder) or two writes in one process never share it.
fn temporary_name(path: &Path) -> PathBuf {
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map_or_else(|| "artifact".into(), |n| n.to_string_lossy().into_owned());
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let n = WRITES.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(
        ".{name}.{}.{nanos}.{n}{TEMPORARY_SUFFIX}",
        std::process::id()
    ))
}
