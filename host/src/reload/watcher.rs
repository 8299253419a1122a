//! Watches the config file, every plugin file and every TLS certificate and
//! key file, and hands batches of
//! changed paths to the reloader. Which events reach this thread is the
//! platform module's job (`FileWatch`).

#[cfg(not(target_os = "linux"))]
use super::watch_folders::FileWatch;
#[cfg(target_os = "linux")]
use super::watch_inotify::FileWatch;
use super::{same_file, Reloader};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Events closer together than this are one change (an editor's save or a
/// copy is several writes).
const DEBOUNCE: Duration = Duration::from_millis(40);
/// A batch is applied at most this long after its first event, however
/// busy the files are.
const MAX_BATCH_DELAY: Duration = Duration::from_millis(200);

/// Starts the watcher thread. It lives as long as the process.
pub fn spawn_watcher(reloader: Arc<Reloader>) -> anyhow::Result<()> {
    let (events, rx) = mpsc::channel::<Vec<PathBuf>>();
    let mut files = FileWatch::start(events.clone())?;
    files.sync(&watched_files(&reloader));
    // The config, plugins and certificates were read while the proxy started, before these
    // watches existed: a file written meanwhile (a deploy writing the new plugin as the
    // proxy restarts) is looked at once now, before the proxy says it is watching (a write
    // from then on is the watches' to see, and read once its writer closes the file). An
    // unchanged file is a no-op.
    apply(&reloader, vec![watched_files(&reloader)]);
    files.sync(&watched_files(&reloader));

    reloader.set_watching(events.clone());
    std::thread::Builder::new()
        .name("cachet-reload".into())
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut batch = vec![first];
                let started = Instant::now();
                while started.elapsed() < MAX_BATCH_DELAY {
                    match rx.recv_timeout(DEBOUNCE) {
                        Ok(more) => batch.push(more),
                        Err(_) => break,
                    }
                }
                // Re-arm first (a file replaced by rename is a new inode), so
                // a write after the reload reads the file is not missed.
                files.sync(&watched_files(&reloader));
                if batch.iter().all(Vec::is_empty) {
                    // A re-arm after a reload done elsewhere: a plugin or certificate
                    // it read may have changed before its watch existed, so each is
                    // looked at again (an unchanged one is a no-op).
                    let certificates = reloader.certificates().paths();
                    batch = vec![reloader
                        .plugin_paths()
                        .into_iter()
                        .chain(certificates)
                        .collect()];
                }
                // A file created anew since is read once its writer closes it.
                for paths in &mut batch {
                    paths.retain(|path| !files.awaiting_close(path));
                }
                apply(&reloader, batch);
                // The config may name other plugins now.
                files.sync(&watched_files(&reloader));
            }
        })?;
    Ok(())
}

fn watched_files(reloader: &Reloader) -> Vec<PathBuf> {
    std::iter::once(reloader.config_path())
        .chain(reloader.token_file())
        .chain(reloader.plugin_paths())
        .chain(reloader.certificates().paths())
        .chain(reloader.refused_config_files())
        .collect()
}

fn apply(reloader: &Reloader, batch: Vec<Vec<PathBuf>>) {
    let config = reloader.config_path();
    // The token file is part of the config: a change to it re-reads the config.
    let token = reloader.token_file();
    // So is a file a refused config names: it may be what the config lacked.
    let waited_for = reloader.refused_config_files();
    let is_config = |p: &PathBuf| {
        same_file(p, &config)
            || token.as_ref().is_some_and(|t| same_file(p, t))
            || waited_for.iter().any(|w| same_file(p, w))
    };
    let plugins = reloader.plugin_paths();
    let certificates = reloader.certificates().paths();
    // Names that only look alike (another folder's file of the same name)
    // are dropped here.
    let paths: Vec<PathBuf> = batch
        .into_iter()
        .flatten()
        .filter(|p| {
            is_config(p)
                || plugins
                    .iter()
                    .chain(&certificates)
                    .any(|known| same_file(p, known))
        })
        .collect();
    if paths.is_empty() {
        return;
    }
    if paths.iter().any(is_config) {
        reloader.reload_config();
    }
    reloader.reload_plugins(&paths);
    reloader.reload_certificates(&paths);
}

/// The canonical folder of a file (symlinks resolved, as the kernel reports).
pub(super) fn folder_of(file: &Path) -> Option<PathBuf> {
    let parent = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    parent.canonicalize().ok()
}
