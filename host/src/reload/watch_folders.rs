//! Platforms without inotify: watch the folders of the files (through the
//! `notify` crate) and drop events about other names in user space.

use super::watcher::folder_of;
use notify::{EventKind, RecursiveMode, Watcher};
use parking_lot::RwLock;
use std::collections::{BTreeSet, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::Arc;

pub(super) struct FileWatch {
    watcher: notify::RecommendedWatcher,
    folders: BTreeSet<PathBuf>,
    names: Arc<RwLock<HashSet<OsString>>>,
}

impl FileWatch {
    pub(super) fn start(changes: Sender<Vec<PathBuf>>) -> anyhow::Result<Self> {
        let names: Arc<RwLock<HashSet<OsString>>> = Arc::default();
        let wanted = names.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            crate::metrics::watch_events(1);
            if matches!(event.kind, EventKind::Access(_)) {
                return;
            }
            let wanted = wanted.read();
            let paths: Vec<PathBuf> = event
                .paths
                .into_iter()
                .filter(|p| p.file_name().is_some_and(|n| wanted.contains(n)))
                .collect();
            if !paths.is_empty() {
                let _ = changes.send(paths);
            }
        })?;
        Ok(Self {
            watcher,
            folders: BTreeSet::new(),
            names,
        })
    }

    /// Files are read as events come here (see the Linux watch for the wait for a close).
    pub(super) fn awaiting_close(&self, _path: &Path) -> bool {
        false
    }

    pub(super) fn sync(&mut self, files: &[PathBuf]) {
        *self.names.write() = files
            .iter()
            .filter_map(|f| f.file_name().map(|n| n.to_os_string()))
            .collect();
        let wanted: BTreeSet<PathBuf> = files.iter().filter_map(|f| folder_of(f)).collect();
        for gone in self.folders.difference(&wanted) {
            let _ = self.watcher.unwatch(gone);
        }
        for new in wanted.difference(&self.folders) {
            if let Err(e) = self.watcher.watch(new, RecursiveMode::NonRecursive) {
                tracing::warn!(folder = %new.display(), "cannot watch for plugin changes: {e}");
            }
        }
        self.folders = wanted;
    }
}
