//! Linux: the kernel delivers only events about the watched files. Each file
//! has a watch of its own (writes, attribute changes) and its folder a watch
//! for names appearing (create, rename onto it), so a file replaced by
//! rename or created later is seen, while writes to other files in the
//! folder (an access log, an editor's swap file) wake nobody.

use super::watcher::folder_of;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::Arc;

// Not MODIFY: a file written in place in several writes would be read between two of
// them (a config cut after its first tenant is valid and would be applied). Its writer
// closing it (CLOSE_WRITE) says it is whole.
const FILE_EVENTS: WatchMask = WatchMask::CLOSE_WRITE
    .union(WatchMask::ATTRIB)
    .union(WatchMask::MOVE_SELF)
    .union(WatchMask::DELETE_SELF);
const FOLDER_EVENTS: WatchMask = WatchMask::CREATE
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::ONLYDIR);

pub(super) struct FileWatch {
    watches: Watches,
    table: Arc<Mutex<Table>>,
}

/// What each watch stands for.
#[derive(Default)]
struct Table {
    /// A file's own watch → the paths it was added for.
    files: HashMap<WatchDescriptor, Vec<PathBuf>>,
    /// A folder's watch → the names in it that matter, each with the watched files a new
    /// entry of that name changes: the file itself, or every file reached through it when
    /// it is a symlinked folder on their path (`live -> v1` swapped for `live -> v2`).
    folders: HashMap<WatchDescriptor, HashMap<OsString, Vec<PathBuf>>>,
}

impl Table {
    fn paths_of(&self, wd: &WatchDescriptor, name: Option<&OsStr>) -> Vec<PathBuf> {
        if let Some(paths) = self.files.get(wd) {
            return paths.clone();
        }
        match (self.folders.get(wd), name) {
            (Some(names), Some(name)) => names.get(name).cloned().unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    fn all_paths(&self) -> Vec<PathBuf> {
        let files = self.files.values().flatten().cloned();
        let named = self
            .folders
            .values()
            .flat_map(|names| names.values().flatten().cloned());
        files.chain(named).collect()
    }

    fn watch_name(&mut self, wd: WatchDescriptor, name: &OsStr, changes: PathBuf) {
        let changed = self
            .folders
            .entry(wd)
            .or_default()
            .entry(name.to_os_string())
            .or_default();
        if !changed.contains(&changes) {
            changed.push(changes);
        }
    }

    fn holds(&self, wd: &WatchDescriptor) -> bool {
        self.files.contains_key(wd) || self.folders.contains_key(wd)
    }
}

impl FileWatch {
    /// Starts the thread that reads the kernel's events and sends the
    /// changed paths to `changes`.
    pub(super) fn start(changes: Sender<Vec<PathBuf>>) -> anyhow::Result<Self> {
        let mut inotify = Inotify::init()?;
        let watches = inotify.watches();
        let table: Arc<Mutex<Table>> = Arc::default();
        let known = table.clone();
        std::thread::Builder::new()
            .name("cachet-watch".into())
            .spawn(move || {
                let mut buffer = [0u8; 4096];
                loop {
                    let events = match inotify.read_events_blocking(&mut buffer) {
                        Ok(events) => events,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            tracing::warn!("file watch stopped: {e}");
                            return;
                        }
                    };
                    let mut count = 0;
                    let mut paths = Vec::new();
                    {
                        let table = known.lock();
                        for event in events {
                            count += 1;
                            if event.mask.contains(EventMask::Q_OVERFLOW) {
                                // Events were lost: look at every file.
                                paths.extend(table.all_paths());
                            }
                            paths.extend(table.paths_of(&event.wd, event.name));
                        }
                    }
                    crate::metrics::watch_events(count);
                    if !paths.is_empty() && changes.send(paths).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Self { watches, table })
    }

    /// Watches exactly `files` (and their folders for names appearing). A
    /// file replaced since the last call gets a watch on its new inode.
    pub(super) fn sync(&mut self, files: &[PathBuf]) {
        let mut next = Table::default();
        for file in files {
            let (Some(folder), Some(name)) = (folder_of(file), file.file_name()) else {
                continue;
            };
            let path = folder.join(name);
            match self.watches.add(&folder, FOLDER_EVENTS) {
                Ok(wd) => next.watch_name(wd, name, path.clone()),
                Err(e) => {
                    tracing::warn!(folder = %folder.display(), "cannot watch for plugin changes: {e}");
                }
            }
            // A symlinked folder on the way is replaced by a rename in its own parent, which
            // the file's folder (the link's old target) never sees.
            for link in symlinked_folders(file) {
                let (Some(parent), Some(link_name)) = (folder_of(&link), link.file_name()) else {
                    continue;
                };
                // Named as configured: through the new link it is another file than `path`.
                if let Ok(wd) = self.watches.add(&parent, FOLDER_EVENTS) {
                    next.watch_name(wd, link_name, file.clone());
                }
            }
            // A missing file is seen through its folder when it appears.
            if let Ok(wd) = self.watches.add(&path, FILE_EVENTS) {
                next.files.entry(wd).or_default().push(path);
            }
        }
        let mut table = self.table.lock();
        let stale: Vec<WatchDescriptor> = table
            .files
            .keys()
            .chain(table.folders.keys())
            .filter(|wd| !next.holds(wd))
            .cloned()
            .collect();
        for wd in stale {
            // Fails harmlessly when the kernel already dropped it (file deleted).
            let _ = self.watches.remove(wd);
        }
        *table = next;
    }
}

/// The folders on `file`'s path, as written, that are symlinks.
fn symlinked_folders(file: &Path) -> Vec<PathBuf> {
    file.ancestors()
        .skip(1)
        .filter(|folder| !folder.as_os_str().is_empty())
        .filter(|folder| {
            std::fs::symlink_metadata(folder).is_ok_and(|m| m.file_type().is_symlink())
        })
        .map(Path::to_path_buf)
        .collect()
}
