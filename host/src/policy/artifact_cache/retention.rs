//! Keeping the artifact folder bounded. Each plugin file has a small list (`<tag>.versions`,
//! the tag hashing its path) of the artifacts it loaded last, newest first: the current version
//! and the previous ones a rollback would load. An artifact no list names is dropped, only the
//! [`MAX_PLUGIN_FILES`] most recently used lists are kept, and the least recently used artifacts
//! go while the folder is over its byte budget. Only files named as this cache names them are
//! ever removed: the folder may be one the operator also keeps other files in.

use super::{checksum_of, trust, ARTIFACT_EXTENSION};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Versions kept per plugin file: the current one and the previous ones a rollback would use.
pub const KEEP_PER_PLUGIN: usize = 3;
/// Plugin files whose versions are remembered (temporary copies come and go).
const MAX_PLUGIN_FILES: usize = 64;
const VERSIONS_EXTENSION: &str = "versions";
/// A temporary file older than this was left by a writer that died (a write takes well under
/// a second).
const ABANDONED_AFTER: Duration = Duration::from_secs(3600);

/// Records that `plugin` now runs the artifact `name`.
pub(super) fn remember(dir: &Path, plugin: &Path, name: &str) {
    let list = dir.join(format!("{}.{VERSIONS_EXTENSION}", plugin_tag(plugin)));
    let previous = std::fs::read_to_string(&list).unwrap_or_default();
    let mut names = vec![name];
    names.extend(previous.lines().filter(|l| !l.is_empty() && *l != name));
    names.truncate(KEEP_PER_PLUGIN);
    if let Err(e) = trust::write_private(&list, names.join("\n").as_bytes()) {
        tracing::warn!(list = %list.display(), "cannot record compiled plugin versions: {e}");
    }
}

/// Drops what no plugin's list names and what exceeds `max_bytes` (least recently used
/// first). `current` always stays.
pub(super) fn prune(dir: &Path, current: &Path, max_bytes: u64) {
    remove_abandoned_temporaries(dir);
    let mut kept_names = Vec::new();
    for (n, list) in newest_first(files_with(dir, VERSIONS_EXTENSION))
        .into_iter()
        .enumerate()
    {
        if n >= MAX_PLUGIN_FILES {
            let _ = std::fs::remove_file(&list.path);
            continue;
        }
        let names = std::fs::read_to_string(&list.path).unwrap_or_default();
        kept_names.extend(names.lines().map(str::to_owned));
    }
    let mut total = 0;
    for artifact in newest_first(files_with(dir, ARTIFACT_EXTENSION)) {
        let named = artifact
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| kept_names.iter().any(|k| k == n));
        let is_current = artifact.path == current;
        if !is_current && (!named || total + artifact.bytes > max_bytes) {
            let _ = std::fs::remove_file(&artifact.path);
            let _ = std::fs::remove_file(checksum_of(&artifact.path));
            tracing::debug!(artifact = %artifact.path.display(), "compiled plugin dropped from the cache");
            continue;
        }
        total += artifact.bytes;
    }
}

struct File {
    path: PathBuf,
    bytes: u64,
    used: SystemTime,
}

/// The folder's files with this extension whose names are ours: `<sha256>-<engine>.cwasm` and
/// `<tag>.versions`.
fn files_with(dir: &Path, extension: &str) -> Vec<File> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.strip_suffix(extension)
                .and_then(|stem| stem.strip_suffix('.'))
                .is_some_and(|stem| is_our_stem(stem, extension))
        })
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some(File {
                path: e.path(),
                bytes: meta.len(),
                used: meta.modified().ok()?,
            })
        })
        .collect()
}

/// `<64 hex>-<16 hex>` for an artifact, `<16 hex>` for a version list.
fn is_our_stem(stem: &str, extension: &str) -> bool {
    let hex = |text: &str, len: usize| {
        text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    if extension == VERSIONS_EXTENSION {
        return hex(stem, 16);
    }
    stem.split_once('-')
        .is_some_and(|(wasm, engine)| hex(wasm, 64) && hex(engine, 16))
}

/// Temporary files ([`trust::write_private`]) a crashed or killed writer left behind.
fn remove_abandoned_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let now = SystemTime::now();
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours = name.starts_with('.')
            && name.ends_with(trust::TEMPORARY_SUFFIX)
            && [ARTIFACT_EXTENSION, VERSIONS_EXTENSION]
                .iter()
                .any(|ext| name.contains(&format!(".{ext}")));
        let abandoned = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|at| now.duration_since(at).unwrap_or_default() > ABANDONED_AFTER);
        if ours && abandoned {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn newest_first(mut files: Vec<File>) -> Vec<File> {
    files.sort_by_key(|f| std::cmp::Reverse(f.used));
    files
}

/// Names a plugin file's version list.
fn plugin_tag(plugin: &Path) -> String {
    let path = plugin
        .canonicalize()
        .unwrap_or_else(|_| plugin.to_path_buf());
    let digest = Sha256::digest(path.as_os_str().as_encoded_bytes());
    hex::encode(&digest[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn age(path: &Path, by: Duration) {
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_modified(SystemTime::now() - by).unwrap();
    }

    /// A writer killed between creating its temporary file and renaming it leaves the file
    /// behind: it goes once it is clearly abandoned, while a write that may still be under
    /// way and files the cache did not name stay.
    #[test]
    fn temporary_files_a_dead_writer_left_are_removed_after_an_hour() {
        let dir = tempfile::tempdir().unwrap();
        let named = |name: &str| dir.path().join(name);
        let abandoned_artifact = named(&format!(
            ".{}-{}.cwasm.41.7.0.tmp",
            "a".repeat(64),
            "b".repeat(16)
        ));
        let abandoned_list = named(".0123456789abcdef.versions.41.7.1.tmp");
        let under_way = named(&format!(
            ".{}-{}.cwasm.42.9.0.tmp",
            "c".repeat(64),
            "d".repeat(16)
        ));
        let someone_elses = named(".notes.txt.tmp");
        for path in [
            &abandoned_artifact,
            &abandoned_list,
            &under_way,
            &someone_elses,
        ] {
            std::fs::write(path, b"partial").unwrap();
        }
        for path in [&abandoned_artifact, &abandoned_list, &someone_elses] {
            age(path, ABANDONED_AFTER + Duration::from_secs(60));
        }

        prune(dir.path(), &named("current.cwasm"), u64::MAX);

        assert!(!abandoned_artifact.exists(), "an abandoned artifact write");
        assert!(!abandoned_list.exists(), "an abandoned version list write");
        assert!(under_way.exists(), "a write that may still be under way");
        assert!(someone_elses.exists(), "a file the cache did not name");
    }
}
