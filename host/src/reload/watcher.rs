//! Watches the config file and every plugin file, through their parent
//! folders so that an atomic rename over a file is seen, and hands batches
//! of changed paths to the reloader.

use super::{same_file, Reloader};
use notify::{EventKind, RecursiveMode, Watcher};
use parking_lot::RwLock;
use std::collections::{BTreeSet, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Events closer together than this are one change (an editor's save or a
/// copy is several writes).
const DEBOUNCE: Duration = Duration::from_millis(40);
/// A batch is applied at most this long after its first event, however
/// busy the folder is.
const MAX_BATCH_DELAY: Duration = Duration::from_millis(200);

/// Starts the watcher thread. It lives as long as the process.
pub fn spawn_watcher(reloader: Arc<Reloader>) -> anyhow::Result<()> {
    let (events, rx) = mpsc::channel::<Vec<PathBuf>>();
    // File names worth a look: the watched folders also hold logs and
    // temporary files whose constant writes must not delay a reload.
    let names: Arc<RwLock<HashSet<OsString>>> = Arc::default();
    let relevant = names.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if matches!(event.kind, EventKind::Access(_)) {
            return;
        }
        let wanted = relevant.read();
        let paths: Vec<PathBuf> = event
            .paths
            .into_iter()
            .filter(|p| p.file_name().is_some_and(|n| wanted.contains(n)))
            .collect();
        if !paths.is_empty() {
            let _ = events.send(paths);
        }
    })?;
    let mut watched = BTreeSet::new();
    sync_watches(&mut watcher, &mut watched, &names, &reloader);

    reloader.set_watching();
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
                apply(&reloader, batch);
                sync_watches(&mut watcher, &mut watched, &names, &reloader);
            }
        })?;
    Ok(())
}

fn apply(reloader: &Reloader, batch: Vec<Vec<PathBuf>>) {
    let config = reloader.config_path();
    let plugins = reloader.plugin_paths();
    // The watched folders hold other files too (logs, temporary copies): only the config and
    // the plugins matter.
    let paths: Vec<PathBuf> = batch
        .into_iter()
        .flatten()
        .filter(|p| same_file(p, &config) || plugins.iter().any(|plugin| same_file(p, plugin)))
        .collect();
    if paths.is_empty() {
        return;
    }
    if paths.iter().any(|p| same_file(p, &config)) {
        reloader.reload_config();
    }
    reloader.reload_plugins(&paths);
}

/// Watches the folders of the config and of every plugin it names.
fn sync_watches(
    watcher: &mut notify::RecommendedWatcher,
    watched: &mut BTreeSet<PathBuf>,
    names: &RwLock<HashSet<OsString>>,
    reloader: &Reloader,
) {
    let files: Vec<PathBuf> = std::iter::once(reloader.config_path())
        .chain(reloader.plugin_paths())
        .collect();
    *names.write() = files
        .iter()
        .filter_map(|f| f.file_name().map(|n| n.to_os_string()))
        .collect();
    let wanted: BTreeSet<PathBuf> = files.iter().filter_map(|file| folder_of(file)).collect();
    for gone in watched.difference(&wanted) {
        let _ = watcher.unwatch(gone);
    }
    for new in wanted.difference(watched) {
        if let Err(e) = watcher.watch(new, RecursiveMode::NonRecursive) {
            tracing::warn!(folder = %new.display(), "cannot watch for plugin changes: {e}");
        }
    }
    *watched = wanted;
}

fn folder_of(file: &Path) -> Option<PathBuf> {
    let parent = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    parent.canonicalize().ok()
}
