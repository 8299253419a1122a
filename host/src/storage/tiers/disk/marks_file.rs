//! The disk tier's purge marks on disk (`purges.jsonl`): one JSON line per purge, appended as
//! purges are made, read back when the tier opens, and cut to one mark per target within
//! [`MAX_MARKS`] (as the purge log in memory keeps them) once the file holds twice that.
//!
//! The cut reads, parses and rewrites megabytes. It runs on a thread of its own while purges
//! go on being appended: purges are made on request threads (every successful POST is one),
//! and the cut used to hold one of them, and every purge waiting for the file, for tens of
//! milliseconds. The lines being cut are first set aside under another name
//! (`purges.jsonl.cutting`), read before the file itself when the tier opens, so a crash
//! during the cut loses no mark.

use super::super::purges::{floors_of, Purge, Target, MAX_MARKS};
use anyhow::Context;
use parking_lot::Mutex;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The marks file of an open disk tier.
pub(super) struct MarksJournal {
    pub(super) file: Arc<Mutex<MarksFile>>,
}

pub(super) struct MarksFile {
    path: PathBuf,
    pub(super) file: File,
    lines: usize,
    /// Past this many lines the file is cut.
    cut_past: usize,
    /// A cut is under way on its thread.
    cutting: bool,
}

impl MarksJournal {
    /// Reads the marks `path` holds (after the lines set aside for a cut that did not finish)
    /// and returns them; the file is written afresh with them and `more` after them, within
    /// [`MAX_MARKS`] as `within_bound` keeps them.
    pub(super) fn open(path: PathBuf, more: &[Purge]) -> anyhow::Result<(Self, Vec<Purge>)> {
        Self::open_cutting_past(path, more, 2 * MAX_MARKS)
    }

    fn open_cutting_past(
        path: PathBuf,
        more: &[Purge],
        cut_past: usize,
    ) -> anyhow::Result<(Self, Vec<Purge>)> {
        let aside = set_aside_path(&path);
        let read = read_marks(&[&aside, &path])?;
        let kept = within_bound([&read[..], more].concat());
        let file = rewrite_marks(&path, &kept, &[])?;
        remove_if_there(&aside)?;
        let journal = Self {
            file: Arc::new(Mutex::new(MarksFile {
                path,
                file,
                lines: kept.len(),
                cut_past,
                cutting: false,
            })),
        };
        Ok((journal, read))
    }

    /// Appends one mark; past the bound, starts a cut on a thread of its own.
    pub(super) fn append(&self, purge: &Purge) -> anyhow::Result<()> {
        let mut line = serde_json::to_string(purge)?;
        line.push('\n');
        let mut marks = self.file.lock();
        let before = marks.file.metadata()?.len();
        if let Err(e) = marks.file.write_all(line.as_bytes()) {
            // A line cut short (a full disk) would run into the next one, which then failed to
            // parse when the tier opened: that purge, reported kept, was lost.
            let _ = marks.file.set_len(before);
            return Err(e.into());
        }
        marks.lines += 1;
        if marks.lines > marks.cut_past && !marks.cutting {
            marks.set_aside()?;
            marks.cutting = true;
            let file = self.file.clone();
            let started = std::thread::Builder::new()
                .name("cachet-marks-cut".into())
                .spawn(move || cut(&file));
            if let Err(e) = started {
                marks.cutting = false;
                return Err(e).context("starting the purge marks' cut");
            }
        }
        Ok(())
    }

    /// Makes the lines appended so far durable (those set aside for a cut were synced when
    /// set aside).
    pub(super) fn sync(&self) -> anyhow::Result<()> {
        let marks = self.file.lock();
        marks
            .file
            .sync_data()
            .with_context(|| format!("syncing {}", marks.path.display()))
    }

    #[cfg(test)]
    fn cutting(&self) -> bool {
        self.file.lock().cutting
    }
}

impl MarksFile {
    /// Moves the lines so far aside for a cut, and appends from now on to a new file. Lines
    /// still aside from a cut that failed stay there, and the file goes on growing: the next
    /// cut takes both.
    fn set_aside(&mut self) -> anyhow::Result<()> {
        let aside = set_aside_path(&self.path);
        if aside.exists() {
            return Ok(());
        }
        // Synced before: appends go to the new file from now on, and only it is synced.
        self.file
            .sync_data()
            .with_context(|| format!("syncing {}", self.path.display()))?;
        std::fs::rename(&self.path, &aside)
            .with_context(|| format!("moving {} aside", self.path.display()))?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        self.lines = 0;
        Ok(())
    }
}

/// The cut: the lines set aside, read and cut without the lock; then, under it, written back
/// followed by what was appended meanwhile.
fn cut(file: &Mutex<MarksFile>) {
    let (path, aside) = {
        let marks = file.lock();
        (marks.path.clone(), set_aside_path(&marks.path))
    };
    let outcome = read_marks(&[&aside]).and_then(|kept| {
        let mut marks = file.lock();
        let mut since = Vec::new();
        File::open(&path)
            .and_then(|mut current| current.read_to_end(&mut since))
            .with_context(|| format!("reading {}", path.display()))?;
        let appended = since.iter().filter(|&&b| b == b'\n').count();
        marks.file = rewrite_marks(&path, &kept, &since)?;
        marks.lines = kept.len() + appended;
        remove_if_there(&aside)
    });
    let mut marks = file.lock();
    marks.cutting = false;
    if let Err(e) = outcome {
        // Tried again once as many lines more have come, not at every append.
        marks.lines = 0;
        tracing::warn!("disk tier: cannot cut its purge marks: {e:#}");
    }
}

fn set_aside_path(path: &Path) -> PathBuf {
    path.with_extension("jsonl.cutting")
}

fn remove_if_there(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// The purge marks the files hold, read in order and kept within [`MAX_MARKS`] as
/// `within_bound` keeps them. A missing file holds none. An unreadable line (damaged, cut off by a
/// crash, not UTF-8) is skipped alone: lines are split as bytes, so one bad byte cannot end
/// the reading and lose every mark after it.
pub(super) fn read_marks(paths: &[&Path]) -> anyhow::Result<Vec<Purge>> {
    let mut marks = Vec::new();
    for path in paths {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let mut skipped = 0usize;
        for line in BufReader::new(file).split(b'\n') {
            let line = line.with_context(|| format!("reading {}", path.display()))?;
            if line.trim_ascii().is_empty() {
                continue;
            }
            match serde_json::from_slice::<Purge>(&line) {
                Ok(mark) => marks.push(mark),
                Err(_) => skipped += 1,
            }
        }
        if skipped > 0 {
            tracing::warn!(
                "disk tier: skipped {skipped} unreadable line(s) of {}",
                path.display()
            );
        }
    }
    Ok(within_bound(marks))
}

/// What `marks` say, within [`MAX_MARKS`], much as the purge log in memory holds them: one
/// line per target and kind (hard, soft), at the latest time any line said (a URL POSTed a million times
/// is one mark, not a million lines pushing out every other); past the bound, the oldest marks
/// of the partition holding the most become its floor ([`floors_of`]), so one busy tenant's
/// purges never floor another tenant's copies. A purged copy never returns.
fn within_bound(marks: Vec<Purge>) -> Vec<Purge> {
    // In the order each target was first seen, each at its latest time.
    let mut merged: Vec<Purge> = Vec::new();
    let mut index: HashMap<(Target, bool), usize> = HashMap::new();
    for purge in marks {
        match index.entry((purge.target.clone(), purge.soft)) {
            Entry::Occupied(seen) => {
                let kept = &mut merged[*seen.get()];
                kept.at = kept.at.max(purge.at);
            }
            Entry::Vacant(new) => {
                new.insert(merged.len());
                merged.push(purge);
            }
        }
    }
    let (floors, targets): (Vec<Purge>, Vec<Purge>) = merged
        .into_iter()
        .partition(|purge| matches!(purge.target, Target::Partition(_)));
    let excess = targets.len().saturating_sub(MAX_MARKS);
    let (mut kept, dropped) = drop_from_the_fullest(targets, excess);
    kept.sort_by_key(|purge| purge.at);
    let mut bounded = floors_of(floors.into_iter().chain(dropped));
    bounded.append(&mut kept);
    bounded
}

/// Drops `count` of `marks`, each the oldest of the partition holding the most at the time:
/// (what is kept, what was dropped).
fn drop_from_the_fullest(marks: Vec<Purge>, count: usize) -> (Vec<Purge>, Vec<Purge>) {
    if count == 0 {
        return (marks, Vec::new());
    }
    let mut by_partition: HashMap<String, Vec<Purge>> = HashMap::new();
    for purge in marks {
        let partition = purge.target.partition().unwrap_or_default();
        by_partition.entry(partition).or_default().push(purge);
    }
    for marks in by_partition.values_mut() {
        // Newest first: the oldest is popped.
        marks.sort_by_key(|purge| std::cmp::Reverse(purge.at));
    }
    let mut fullest: BinaryHeap<(usize, String)> = by_partition
        .iter()
        .map(|(partition, marks)| (marks.len(), partition.clone()))
        .collect();
    let mut dropped = Vec::with_capacity(count);
    while dropped.len() < count {
        let Some((held, partition)) = fullest.pop() else {
            break;
        };
        if let Some(oldest) = by_partition.get_mut(&partition).and_then(Vec::pop) {
            dropped.push(oldest);
        }
        if held > 1 {
            fullest.push((held - 1, partition));
        }
    }
    (by_partition.into_values().flatten().collect(), dropped)
}

/// Writes `marks` and then the lines `after` afresh, on disk before they replace the file
/// (a crash must not leave it empty), and opens the file for appending.
pub(super) fn rewrite_marks(path: &Path, marks: &[Purge], after: &[u8]) -> anyhow::Result<File> {
    let temp = path.with_extension("jsonl.new");
    let mut out = String::new();
    for mark in marks {
        out.push_str(&serde_json::to_string(mark)?);
        out.push('\n');
    }
    let written = File::create(&temp).and_then(|mut file| {
        file.write_all(out.as_bytes())?;
        file.write_all(after)?;
        file.sync_all()
    });
    written.with_context(|| format!("writing {}", temp.display()))?;
    std::fs::rename(&temp, path).with_context(|| format!("replacing {}", path.display()))?;
    OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::super::super::key::TierKey;
    use super::super::super::purges::{PurgeLog, Verdict};
    use super::*;
    use std::time::{Duration, Instant};

    fn tag_mark(partition: &str, tag: String, at: u64) -> Purge {
        Purge {
            target: Target::Tag {
                partition: partition.into(),
                tag,
            },
            at,
            soft: false,
        }
    }

    #[test]
    fn an_unreadable_mark_loses_only_its_own_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("purges.jsonl");
        let mark = |tag: &str, at| tag_mark("site", tag.into(), at);
        let line = |purge: &Purge| serde_json::to_string(purge).unwrap().into_bytes();
        let mut bytes = Vec::new();
        for (i, bad) in [
            line(&mark("a", 1)),
            // Not UTF-8: a byte of the tag replaced by 0xff.
            line(&mark("b", 2))
                .into_iter()
                .map(|b| if b == b'b' { 0xff } else { b })
                .collect(),
            b"{\"target\": not json".to_vec(),
            line(&mark("c", 3)),
            // Cut off by a crash mid-append.
            line(&mark("d", 4))[..20].to_vec(),
        ]
        .into_iter()
        .enumerate()
        {
            bytes.extend_from_slice(&bad);
            bytes.push(b'\n');
            if i == 2 {
                bytes.push(b'\n');
            }
        }
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(
            read_marks(&[&path]).unwrap(),
            vec![mark("a", 1), mark("c", 3)]
        );
    }

    /// Marks beyond the bound leave floors behind, in the partition holding the most: after a
    /// restart, what its oldest purged stays purged, though their lines are gone, and the
    /// quiet partition's copies are judged by its own marks alone.
    #[test]
    fn marks_beyond_the_bound_leave_floors_behind_in_the_fullest_partition() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("purges.jsonl");
        let mut lines = String::new();
        lines.push_str(&serde_json::to_string(&tag_mark("quiet", "t".into(), 10)).unwrap());
        lines.push('\n');
        for i in 0..MAX_MARKS as u64 {
            let mark = tag_mark("flood", format!("f{i}"), 20 + i);
            lines.push_str(&serde_json::to_string(&mark).unwrap());
            lines.push('\n');
        }
        std::fs::write(&path, lines).unwrap();
        let kept = read_marks(&[&path]).unwrap();
        let floor = Purge {
            target: Target::Partition("flood".into()),
            at: 20,
            soft: false,
        };
        assert_eq!(kept[0], floor);
        assert_eq!(kept[1], tag_mark("quiet", "t".into(), 10));
        assert_eq!(kept.len(), MAX_MARKS + 1);
        let log = PurgeLog::default();
        for mark in &kept {
            log.record(mark);
        }
        let copy =
            |partition: &str| TierKey::of(&pingora_cache::CacheKey::new(b"/a".to_vec(), partition));
        let tagged = |tag: &str| -> Vec<Box<str>> { vec![tag.into()] };
        assert_eq!(
            log.verdict(&copy("flood"), &tagged("f0"), 19),
            Verdict::Gone
        );
        assert_eq!(log.verdict(&copy("flood"), &[], 21), Verdict::Keep);
        assert_eq!(log.verdict(&copy("quiet"), &tagged("t"), 9), Verdict::Gone);
        assert_eq!(log.verdict(&copy("quiet"), &[], 9), Verdict::Keep);
        // Rewritten, the floor is a line like any other and is read back.
        rewrite_marks(&path, &kept, &[]).unwrap();
        assert_eq!(read_marks(&[&path]).unwrap(), kept);
    }

    /// One target purged again and again (every POST to one URL) is one mark at its latest
    /// time: its lines never push out another tenant's marks, nor floor the tenant's copies.
    #[test]
    fn repeated_marks_of_one_target_are_one_mark() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("purges.jsonl");
        let mut lines = String::new();
        let other = tag_mark("other", "t".into(), 1);
        lines.push_str(&serde_json::to_string(&other).unwrap());
        lines.push('\n');
        let key = TierKey::of(&pingora_cache::CacheKey::new(b"/api".to_vec(), "busy"));
        let posted = |at| Purge {
            target: Target::Key(key.to_hex()),
            at,
            soft: false,
        };
        for at in 0..2 * MAX_MARKS as u64 {
            lines.push_str(&serde_json::to_string(&posted(10 + at)).unwrap());
            lines.push('\n');
        }
        std::fs::write(&path, lines).unwrap();
        let latest = posted(10 + 2 * MAX_MARKS as u64 - 1);
        assert_eq!(read_marks(&[&path]).unwrap(), vec![other, latest]);
    }

    /// The cut runs beside the appends: every mark appended while it ran is in the file it
    /// leaves, after the newest of those it cut.
    #[test]
    fn marks_appended_during_a_cut_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("purges.jsonl");
        let (journal, _) = MarksJournal::open_cutting_past(path.clone(), &[], 8).unwrap();
        let mark = |i: u64| tag_mark("site", format!("t{i}"), i);
        for i in 0..200 {
            journal.append(&mark(i)).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while journal.cutting() {
            assert!(Instant::now() < deadline, "the cut never ended");
            std::thread::sleep(Duration::from_millis(5));
        }
        let kept = read_marks(&[&path]).unwrap();
        assert_eq!(kept, (0..200).map(mark).collect::<Vec<_>>());
        assert!(!set_aside_path(&path).exists());
    }

    /// The marks written when the tier opens are bounded like those read: the purges made
    /// while another process held the folder came after the file's own, all of them.
    #[test]
    fn marks_written_at_open_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("purges.jsonl");
        let old: Vec<Purge> = (0..10)
            .map(|i| tag_mark("old", format!("t{i}"), i))
            .collect();
        rewrite_marks(&path, &old, &[]).unwrap();
        let made: Vec<Purge> = (0..MAX_MARKS as u64)
            .map(|i| tag_mark("site", format!("m{i}"), 100 + i))
            .collect();
        let (journal, read) = MarksJournal::open(path.clone(), &made).unwrap();
        assert_eq!(read, old);
        // The ten over the bound come from the partition holding the most, its oldest.
        let floor = Purge {
            target: Target::Partition("site".into()),
            at: 109,
            soft: false,
        };
        let mut expected = vec![floor];
        expected.extend(old);
        expected.extend(made.into_iter().skip(10));
        assert_eq!(journal.file.lock().lines, expected.len());
        let lines = std::fs::read(&path).unwrap();
        assert_eq!(
            lines.iter().filter(|&&b| b == b'\n').count(),
            expected.len()
        );
        assert_eq!(read_marks(&[&path]).unwrap(), expected);
    }

    /// Lines set aside for a cut that a crash interrupted are read when the tier opens, before
    /// the file's own (newer) lines.
    #[test]
    fn marks_set_aside_for_an_unfinished_cut_are_read_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("purges.jsonl");
        let line = |i: u64| serde_json::to_string(&tag_mark("site", format!("t{i}"), i)).unwrap();
        std::fs::write(set_aside_path(&path), format!("{}\n{}\n", line(1), line(2))).unwrap();
        std::fs::write(&path, format!("{}\n", line(3))).unwrap();
        let mark = |i: u64| tag_mark("site", format!("t{i}"), i);
        let (_, read) = MarksJournal::open(path.clone(), &[mark(4)]).unwrap();
        assert_eq!(read, (1..=3).map(mark).collect::<Vec<_>>());
        assert_eq!(
            read_marks(&[&path]).unwrap(),
            (1..=4).map(mark).collect::<Vec<_>>()
        );
        assert!(!set_aside_path(&path).exists());
    }
}
