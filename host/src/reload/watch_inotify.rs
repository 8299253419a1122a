//! Linux: the kernel delivers only events about the watched files. Each file
//! has a watch of its own (writes, attribute changes) and its folder a watch
//! for names appearing (create, rename onto it), so a file replaced by
//! rename or created later is seen, while writes to other files in the
//! folder (an access log, an editor's swap file) wake nobody.
//!
//! A file created under a watched name is read once its writer closes it, as a
//! file written in place is: read at its creation, a config cut after its
//! first tenant is valid and would be applied (`rm cachet.toml; cat new >
//! cachet.toml`, or `install`, which unlinks and writes anew).

use super::watcher::folder_of;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
/// How long a created file's close is waited for: its writer may have closed it before its
/// watch was added (a small copy takes microseconds), and no close would come then.
const CREATED_WAIT: Duration = Duration::from_secs(1);

pub(super) struct FileWatch {
    watches: Watches,
    table: Arc<Mutex<Table>>,
    created: Arc<Mutex<Created>>,
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
    /// A folder's watch → the folder.
    folder_paths: HashMap<WatchDescriptor, PathBuf>,
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

    fn watch_name(&mut self, wd: WatchDescriptor, folder: &Path, name: &OsStr, changes: PathBuf) {
        self.folder_paths
            .entry(wd.clone())
            .or_insert_with(|| folder.to_path_buf());
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

    /// The folder entry an event names.
    fn entry_of(&self, wd: &WatchDescriptor, name: Option<&OsStr>) -> Option<PathBuf> {
        Some(self.folder_paths.get(wd)?.join(name?))
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
        let mut created_watches = inotify.watches();
        let created: Arc<Mutex<Created>> = Arc::default();
        let waiting = created.clone();
        std::thread::Builder::new()
            .name("cachet-watch".into())
            .spawn(move || {
                let mut buffer = [0u8; 4096];
                loop {
                    let first_due = waiting.lock().first_due();
                    let next = match first_due {
                        None => inotify.read_events_blocking(&mut buffer),
                        Some(due) if readable_before(&inotify, due) => {
                            inotify.read_events(&mut buffer)
                        }
                        Some(_) => {
                            // No close came: the file was whole when its watch was added.
                            let paths = waiting.lock().take_due(Instant::now());
                            if !paths.is_empty() && changes.send(paths).is_err() {
                                return;
                            }
                            continue;
                        }
                    };
                    let events = match next {
                        Ok(events) => events,
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                            ) =>
                        {
                            continue
                        }
                        Err(e) => {
                            tracing::warn!("file watch stopped: {e}");
                            return;
                        }
                    };
                    let mut count = 0;
                    let mut paths = Vec::new();
                    {
                        let mut table = known.lock();
                        for event in events {
                            count += 1;
                            if event.mask.contains(EventMask::Q_OVERFLOW) {
                                // Events were lost: look at every file.
                                paths.extend(table.all_paths());
                            }
                            let changed = table.paths_of(&event.wd, event.name);
                            if changed.is_empty() {
                                continue;
                            }
                            if event.mask.contains(EventMask::CREATE) {
                                let entry = table.entry_of(&event.wd, event.name);
                                if let Some(entry) = entry.filter(|e| being_written(e)) {
                                    if let Ok(wd) = created_watches.add(&entry, FILE_EVENTS) {
                                        table.files.entry(wd).or_default().extend(changed.clone());
                                        let until = Instant::now() + CREATED_WAIT;
                                        waiting.lock().wait_for(changed, until);
                                        continue;
                                    }
                                }
                            }
                            waiting.lock().seen(&changed);
                            paths.extend(changed);
                        }
                    }
                    crate::metrics::watch_events(count);
                    if !paths.is_empty() && changes.send(paths).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Self {
            watches,
            table,
            created,
        })
    }

    /// Whether `path` is a file created since it was last read whose writer has not closed
    /// it yet: an event about its name from before (the old file's deletion, which also
    /// changes its attributes) must not have it read meanwhile.
    pub(super) fn awaiting_close(&self, path: &Path) -> bool {
        self.created.lock().holds(path)
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
                Ok(wd) => next.watch_name(wd, &folder, name, path.clone()),
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
                    next.watch_name(wd, &parent, link_name, file.clone());
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

/// Files created under a watched name, waiting for their writer to close them.
#[derive(Default)]
struct Created(Vec<(Vec<PathBuf>, Instant)>);

impl Created {
    fn wait_for(&mut self, paths: Vec<PathBuf>, until: Instant) {
        self.0.push((paths, until));
    }

    /// An event about these paths (their writer's close) ends the wait for them.
    fn seen(&mut self, paths: &[PathBuf]) {
        self.0
            .retain(|(waiting, _)| !waiting.iter().any(|p| paths.contains(p)));
    }

    fn holds(&self, path: &Path) -> bool {
        self.0
            .iter()
            .any(|(paths, _)| paths.iter().any(|p| p == path))
    }

    fn first_due(&self) -> Option<Instant> {
        self.0.iter().map(|(_, until)| *until).min()
    }

    fn take_due(&mut self, now: Instant) -> Vec<PathBuf> {
        let mut due = Vec::new();
        self.0.retain_mut(|(paths, until)| {
            let waiting = *until > now;
            if !waiting {
                due.append(paths);
            }
            waiting
        });
        due
    }
}

/// A regular file just created, which its writer may still be writing. Not a symlink (made
/// whole by one call), nor a second link to an existing file (`ln`: no writer, no close).
fn being_written(entry: &Path) -> bool {
    std::fs::symlink_metadata(entry).is_ok_and(|m| m.file_type().is_file() && m.nlink() == 1)
}

/// Whether the watch has events to read before `due`.
fn readable_before(inotify: &Inotify, due: Instant) -> bool {
    let wait = due.saturating_duration_since(Instant::now());
    // Rounded up, so the wait does not end just before `due` and spin.
    let millis = wait.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    let mut poll = libc::pollfd {
        fd: inotify.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd, owned by this frame, for a descriptor `inotify` keeps open.
    let ready = unsafe { libc::poll(&mut poll, 1, millis) };
    ready > 0
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
