//! The disk tier's store: entries appended to segment files under `path/segments`, an index in
//! memory that is read back from the files when cachet starts, and whole segments evicted,
//! oldest first, when the byte budget is spent.
//!
//! A lookup reads its entry on the calling thread when the page cache holds it (`preadv2` with
//! `RWF_NOWAIT`, which fails instead of waiting for the disk) and hands the read to tokio's
//! blocking pool only when it does not. foyer, which the tier used before, handed every read to
//! that pool; the round trip between threads was a fifth of a disk hit's CPU
//! (docs/scale-out.md has the numbers).
//!
//! The index keeps a keyed hash of each key, not the key: the entry on disk carries its key,
//! and a read checks it (with the entry's checksum) before anything is served.

use super::entry::{self, Header, Kind, HEADER, MAGIC};
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::hash::BuildHasher;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Bytes the recovery scan reads at a time; values are skipped, not read.
const SCAN_BUFFER: usize = 1 << 20;

pub(crate) struct SegmentStore {
    dir: PathBuf,
    limits: Limits,
    /// Values one segment holds at most: its share of `limits.max_values`, so that the
    /// segments the byte budget keeps hold no more values than that in all.
    values_per_segment: usize,
    /// Segment files kept at most ([`Limits::most_segments`]): each holds a descriptor.
    most_segments: usize,
    hasher: RandomState,
    index: RwLock<Index>,
    writer: Mutex<Active>,
    /// Reads the page cache could not answer, running or queued on the blocking pool: a read
    /// that times out keeps its thread, so a hung disk would pile them up without end.
    disk_reads: Arc<Semaphore>,
}

/// Reads that may wait for the disk at once; past them a lookup is a miss at once.
const MAX_DISK_READS: usize = 64;

/// How large the store may grow.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Largest segment file; a value must fit one with its entry header and key.
    pub segment_bytes: u64,
    /// Bytes all segments may take, the one being written counted as full.
    pub max_bytes: u64,
    /// Values all segments may hold (each costs the index ~40 bytes of memory).
    pub max_values: u64,
}

impl Limits {
    /// Segment files the store keeps at most, each open for as long as it is kept: the
    /// segments the byte budget holds, as many again part-filled (every start begins a
    /// segment of its own), and the one being written. Past it the oldest are evicted, as past
    /// the budget: segments a run left part-filled took no more of the budget's bytes, and
    /// many restarts left more segments open than descriptors allowed.
    pub(crate) fn most_segments(&self) -> u64 {
        2 * self.segments_in_budget() + 1
    }

    fn segments_in_budget(&self) -> u64 {
        (self.max_bytes / self.segment_bytes).max(1)
    }
}

/// Where each key's newest entry is, and which keys each segment holds.
#[derive(Default)]
struct Index {
    entries: HashMap<u64, Loc>,
    segments: BTreeMap<u64, Segment>,
}

/// 16 bytes: the index holds one per stored value. Segments are at most 16 MiB, so offsets
/// and lengths fit 32 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loc {
    segment: u64,
    offset: u32,
    len: u32,
}

struct Segment {
    file: Arc<File>,
    /// Hashes of the keys written to it, to drop them from the index when it is evicted.
    keys: Vec<u64>,
    bytes: u64,
}

/// The segment being appended to.
struct Active {
    id: u64,
    file: Arc<File>,
    end: u64,
    /// Values written to it.
    values: usize,
}

/// Tombstones of keys already dropped from the index ([`SegmentStore::forget_all`]), in
/// batches of whole entries, each written with one append.
#[derive(Debug, Default)]
pub(crate) struct Tombstones {
    pub(crate) batches: Vec<Vec<u8>>,
    /// Keys they are for.
    pub(crate) count: usize,
}

/// Why a stored entry could not be returned.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The entry's bytes do not check out. It has been dropped from the index; its tombstone
    /// is the caller's to write.
    Corrupt(Tombstones),
    Io(io::Error),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Corrupt(_) => f.write_str("a stored entry failed its checksum"),
            Self::Io(e) => write!(f, "reading a segment: {e}"),
        }
    }
}

impl SegmentStore {
    /// Opens the segments in `dir` (made if missing), reading their entries back into the
    /// index. A damaged entry is skipped, and the whole ones after it in its segment only
    /// remove their keys ([`recover`]); an unfinished tail of a segment (a crash mid-write, a
    /// truncated file) is cut off.
    pub(crate) fn open(dir: &Path, limits: Limits) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let hasher = RandomState::new();
        let mut index = Index::default();
        let mut ids = segment_ids(dir)?;
        // Past the files kept (with room for this run's), the oldest go before any is opened:
        // a folder holding more than the descriptors allow could not be opened to evict them.
        let kept = usize::try_from(limits.most_segments() - 1).unwrap_or(usize::MAX);
        let excess = ids.len().saturating_sub(kept);
        for id in ids.drain(..excess) {
            std::fs::remove_file(segment_path(dir, id))?;
        }
        for id in ids {
            let path = segment_path(dir, id);
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let (keys, bytes) = recover(&file, id, &hasher, &mut index.entries)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            // A run that wrote nothing left its segment empty (or only a cut-off entry):
            // kept, every start added one more file and descriptor.
            if file.metadata()?.len() == 0 {
                drop(file);
                std::fs::remove_file(&path)?;
                continue;
            }
            index.segments.insert(
                id,
                Segment {
                    file: Arc::new(file),
                    keys,
                    bytes,
                },
            );
        }
        // A new segment for this run's writes: the last one may end in a cut-off entry.
        let id = index.segments.keys().next_back().map_or(0, |last| last + 1);
        let active = create_segment(dir, id)?;
        index.segments.insert(
            id,
            Segment {
                file: active.file.clone(),
                keys: Vec::new(),
                bytes: 0,
            },
        );
        let values_per_segment = (limits.max_values / limits.segments_in_budget()).max(1);
        let store = Self {
            dir: dir.to_path_buf(),
            limits,
            values_per_segment: usize::try_from(values_per_segment).unwrap_or(usize::MAX),
            most_segments: usize::try_from(limits.most_segments()).unwrap_or(usize::MAX),
            hasher,
            index: RwLock::new(index),
            writer: Mutex::new(active),
            disk_reads: Arc::new(Semaphore::new(MAX_DISK_READS)),
        };
        // A smaller budget than the last run's takes effect now.
        store.evict(id)?;
        Ok(store)
    }

    /// The value stored under `key`, `Ok(None)` when there is none.
    pub(crate) async fn get(&self, key: &[u8]) -> Result<Option<Bytes>, ReadError> {
        let hash = self.hasher.hash_one(key);
        let (loc, file) = {
            let index = self.index.read();
            let Some(&loc) = index.entries.get(&hash) else {
                return Ok(None);
            };
            let Some(segment) = index.segments.get(&loc.segment) else {
                return Ok(None);
            };
            (loc, segment.file.clone())
        };
        let read = read_at(file, loc.offset.into(), loc.len as usize, &self.disk_reads);
        let entry = match read.await {
            Ok(entry) => entry,
            // The file is shorter than the index says: cut by something other than cachet.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Vec::new(),
            Err(e) => return Err(ReadError::Io(e)),
        };
        match Header::parse(&entry).filter(|h| h.kind == Kind::Value) {
            Some(header) if header.check(&entry, key) => {
                let value_at = HEADER + header.key_len;
                Ok(Some(Bytes::from(entry).slice(value_at..)))
            }
            // Damaged, or (with a chance of one in 2^64 per pair of keys) another key whose
            // hash took the slot: either way it is not served, and forgotten.
            _ => Err(ReadError::Corrupt(self.forget(hash, loc, key))),
        }
    }

    /// Whether the index has an entry for `key` (not read, so not checked).
    pub(crate) fn contains(&self, key: &[u8]) -> bool {
        let hash = self.hasher.hash_one(key);
        self.index.read().entries.contains_key(&hash)
    }

    /// Stores `value` under `key`, replacing what was there. Blocking file I/O: call it off
    /// the request threads.
    pub(crate) fn put(&self, key: &[u8], value: &[u8]) -> io::Result<()> {
        let bytes = entry::encode(Kind::Value, key, value);
        let hash = self.hasher.hash_one(key);
        self.write(&bytes, 1, |index, loc| {
            index.entries.insert(hash, loc);
            if let Some(segment) = index.segments.get_mut(&loc.segment) {
                segment.keys.push(hash);
            }
        })
    }

    /// Forgets `key`, and writes a tombstone so a restart does not bring it back. `Ok(false)`
    /// when nothing was stored under it.
    pub(crate) fn remove(&self, key: &[u8]) -> io::Result<bool> {
        Ok(self.remove_all(&[key])? == 1)
    }

    /// Forgets every one of `keys` that is stored and writes their tombstones on this thread.
    /// Returns how many were stored.
    pub(crate) fn remove_all(&self, keys: &[&[u8]]) -> io::Result<usize> {
        let forgotten = self.forget_all(keys);
        for batch in &forgotten.batches {
            self.write_tombstones(batch)?;
        }
        Ok(forgotten.count)
    }

    /// Drops every one of `keys` that is stored from the index, so that lookups miss from now
    /// on, and returns their tombstones for [`Self::write_tombstones`]: until those are
    /// written, a restart would bring the keys back. Takes the index lock only, never the
    /// writer's, which a large `put` holds for the length of its write.
    ///
    /// A value stored again under one of `keys` before its tombstone is written stays served,
    /// but a restart forgets it too (the tombstone lands after it): a miss, never a stale hit.
    pub(crate) fn forget_all(&self, keys: &[&[u8]]) -> Tombstones {
        let hashes: Vec<u64> = keys.iter().map(|key| self.hasher.hash_one(key)).collect();
        let stored: Vec<&[u8]> = {
            let mut index = self.index.write();
            keys.iter()
                .zip(hashes)
                .filter(|(_, hash)| index.entries.remove(hash).is_some())
                .map(|(key, _)| *key)
                .collect()
        };
        let mut tombstones = Tombstones {
            batches: Vec::new(),
            count: stored.len(),
        };
        let mut batch = Vec::new();
        for key in stored {
            batch.extend_from_slice(&entry::encode(Kind::Tombstone, key, &[]));
            // A batch stays well within a segment, whatever the keys' length.
            if batch.len() as u64 >= self.limits.segment_bytes / 4 {
                tombstones.batches.push(std::mem::take(&mut batch));
            }
        }
        if !batch.is_empty() {
            tombstones.batches.push(batch);
        }
        tombstones
    }

    /// Appends one batch of [`Tombstones`] (whole tombstone entries).
    pub(crate) fn write_tombstones(&self, batch: &[u8]) -> io::Result<()> {
        self.write(batch, 0, |_, _| ())
    }

    /// Holds the writer's lock, as a `put` does while it writes.
    #[cfg(test)]
    pub(crate) fn hold_writer(&self) -> impl Sized + '_ {
        self.writer.lock()
    }

    /// Appends `bytes` (whole entries, `values` of them values), then lets `apply` bring the
    /// index up to date with where they went, under the same locks so readers never see one
    /// without the other.
    fn write<R>(
        &self,
        bytes: &[u8],
        values: usize,
        apply: impl FnOnce(&mut Index, Loc) -> R,
    ) -> io::Result<R> {
        let mut active = self.writer.lock();
        let loc = self.append(&mut active, bytes, values)?;
        let mut index = self.index.write();
        let result = apply(&mut index, loc);
        if let Some(segment) = index.segments.get_mut(&loc.segment) {
            segment.bytes = active.end;
        }
        Ok(result)
    }

    /// Writes what the page cache holds for the segment being written to the disk.
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.writer.lock().file.sync_data()
    }

    /// Bytes of every segment, as written.
    pub(crate) fn stored_bytes(&self) -> u64 {
        self.index.read().segments.values().map(|s| s.bytes).sum()
    }

    /// Entries the index holds.
    pub(crate) fn entries(&self) -> usize {
        self.index.read().entries.len()
    }

    /// Drops an entry found damaged from the index, unless a newer one took its key
    /// meanwhile, and returns its tombstone (none then).
    fn forget(&self, hash: u64, loc: Loc, key: &[u8]) -> Tombstones {
        let mut index = self.index.write();
        if index.entries.get(&hash) != Some(&loc) {
            return Tombstones::default();
        }
        index.entries.remove(&hash);
        drop(index);
        Tombstones {
            batches: vec![entry::encode(Kind::Tombstone, key, &[])],
            count: 1,
        }
    }

    /// Appends entries to the active segment, starting a new segment first when they would
    /// not fit its bytes or its share of the values.
    fn append(&self, active: &mut Active, bytes: &[u8], values: usize) -> io::Result<Loc> {
        let len = bytes.len() as u64;
        if len > self.limits.segment_bytes {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{len} bytes do not fit a segment"),
            ));
        }
        if active.end + len > self.limits.segment_bytes
            || active.values + values > self.values_per_segment
        {
            self.roll(active)?;
        }
        let (Ok(offset), Ok(len32)) = (u32::try_from(active.end), u32::try_from(len)) else {
            return Err(io::Error::other("segments are larger than 4 GiB"));
        };
        if let Err(e) = active.file.write_all_at(bytes, active.end) {
            // A failed write (a full disk) may leave part of the entry behind `end`, and the
            // next, shorter entry would overwrite only its start: after a restart, the search
            // past the remains could take an entry forged inside them (a cached body holding
            // one) for a real one. So the remains go; if even that fails, the segment is left.
            if active.file.set_len(active.end).is_err() {
                self.roll(active)?;
            }
            return Err(e);
        }
        let loc = Loc {
            segment: active.id,
            offset,
            len: len32,
        };
        active.end += len;
        active.values += values;
        Ok(loc)
    }

    /// Starts the next segment and evicts the oldest ones beyond the budget. The finished
    /// segment is flushed to the disk, so a power loss costs at most the segment being written.
    fn roll(&self, active: &mut Active) -> io::Result<()> {
        sync_in_background(active.file.clone());
        let next = create_segment(&self.dir, active.id + 1)?;
        self.index.write().segments.insert(
            next.id,
            Segment {
                file: next.file.clone(),
                keys: Vec::new(),
                bytes: 0,
            },
        );
        *active = next;
        self.evict(active.id)
    }

    /// Drops whole segments, oldest first, until the others and a full `active` fit the
    /// budget: its bytes, and its values (each value written counts, even one replaced since).
    /// The files are unlinked after the index lets go of them, outside its lock: every lookup
    /// takes that lock, and a slow disk held them all for the unlinks. Every one is tried
    /// and the first failure returned: the index has let go of them all, and a file left
    /// behind counted for nothing against the budget and was read back at the next start.
    fn evict(&self, active: u64) -> io::Result<()> {
        let mut first_error = None;
        for id in self.forget_oldest(active) {
            // Readers holding the file finish their read: an unlinked file stays readable.
            match std::fs::remove_file(segment_path(&self.dir, id)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    first_error.get_or_insert(e);
                }
                _ => {}
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// [`Self::evict`]'s segments, gone from the index: their ids, oldest first.
    fn forget_oldest(&self, active: u64) -> Vec<u64> {
        let mut doomed = Vec::new();
        let mut index = self.index.write();
        loop {
            let (sealed_bytes, sealed_values) = index
                .segments
                .iter()
                .filter(|(&id, _)| id != active)
                .fold((0u64, 0u64), |(bytes, values), (_, s)| {
                    (bytes + s.bytes, values + s.keys.len() as u64)
                });
            let full_active_values = self.values_per_segment as u64;
            if sealed_bytes + self.limits.segment_bytes <= self.limits.max_bytes
                && sealed_values.saturating_add(full_active_values) <= self.limits.max_values
                && index.segments.len() <= self.most_segments
            {
                return doomed;
            }
            let Some((&oldest, _)) = index.segments.iter().find(|(&id, _)| id != active) else {
                return doomed;
            };
            let segment = index.segments.remove(&oldest).expect("found above");
            for hash in segment.keys {
                if index
                    .entries
                    .get(&hash)
                    .is_some_and(|loc| loc.segment == oldest)
                {
                    index.entries.remove(&hash);
                }
            }
            doomed.push(oldest);
        }
    }
}

/// Flushes a finished segment to the disk on tokio's blocking pool: a tombstone written on a
/// request's thread may start a segment, and that request must not wait for the disk. Outside
/// a runtime (tools, tests) it flushes here.
fn sync_in_background(file: Arc<File>) {
    let sync = move || {
        if let Err(e) = file.sync_data() {
            tracing::warn!("disk tier: flushing a finished segment: {e}");
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(sync)),
        Err(_) => sync(),
    }
}

/// Reads `len` bytes at `offset`: on this thread when the page cache has them, else on the
/// blocking pool, holding one of `disk_reads` (none free: an error at once).
async fn read_at(
    file: Arc<File>,
    offset: u64,
    len: usize,
    disk_reads: &Arc<Semaphore>,
) -> io::Result<Vec<u8>> {
    if let Some(buf) = read_cached(&file, offset, len) {
        return Ok(buf);
    }
    let Ok(permit) = disk_reads.clone().try_acquire_owned() else {
        return Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            "too many reads are waiting for the disk",
        ));
    };
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    })
    .await
    .map_err(io::Error::other)?
}

/// The `len` bytes at `offset`, read from the page cache without waiting for the disk; `None`
/// when any of them is not cached (or the file system cannot tell), and the caller reads them
/// the blocking way. The buffer is not zeroed first: the kernel fills all of it or it is not
/// used (zeroing was ~4 % of a 64 KiB disk hit's CPU).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn read_cached(file: &File, offset: u64, len: usize) -> Option<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let offset = libc::off_t::try_from(offset).ok()?;
    let mut buf = Vec::<u8>::with_capacity(len);
    let iov = libc::iovec {
        iov_base: buf.spare_capacity_mut().as_mut_ptr().cast(),
        iov_len: len,
    };
    // SAFETY: `iov` describes `buf`'s `len` bytes of spare capacity, owned here for the call;
    // the kernel writes at most `len` bytes into it.
    let read = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
    if usize::try_from(read) != Ok(len) {
        return None;
    }
    // SAFETY: the kernel wrote all `len` bytes, so they are initialized.
    unsafe { buf.set_len(len) };
    Some(buf)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn read_cached(_file: &File, _offset: u64, _len: usize) -> Option<Vec<u8>> {
    None
}

/// Reads a segment's entries into `entries` (tombstones remove). Past an entry that is not
/// whole (a damaged header, a length beyond the file) the scan resumes at the next entry that
/// checks out ([`Resync`]), but from there on every entry of the segment only removes its key:
/// the damaged entry's end is unknown, so what follows may lie inside its body, where a client
/// can have had a whole entry cached, checksum and all, naming any key. Tombstones still hold,
/// and a value there is a miss, never a forged hit (it was newer than any copy it removes).
/// The file is cut only after the last whole entry, when nothing valid follows it (a crash
/// mid-write). Returns the keys it added and the segment's length.
fn recover(
    file: &File,
    id: u64,
    hasher: &RandomState,
    entries: &mut HashMap<u64, Loc>,
) -> io::Result<(Vec<u64>, u64)> {
    // Offsets and lengths in the index are 32 bits; this store never writes more.
    let file_len = file.metadata()?.len().min(u32::MAX.into());
    let mut reader = BufReader::with_capacity(SCAN_BUFFER, file);
    let mut resync = Resync::new(file, file_len);
    let mut keys = Vec::new();
    let mut offset = 0u64;
    // The last entry read: where it starts, and its key's hash when it is a value.
    let mut last: Option<(u64, Option<u64>)> = None;
    // Damage was found: the entries after it only remove.
    let mut past_damage = false;
    let mut end = 0u64;
    let mut header = [0u8; HEADER];
    let mut key = Vec::new();
    while offset < file_len {
        let parsed = match reader.read_exact(&mut header) {
            Ok(()) => Header::parse(&header),
            // A header cut off by a crash: the tail goes.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        };
        // An entry running past the end was cut off by a crash: the tail goes, and is never
        // searched. Its body may hold anything a client had cached, a forged entry included.
        if parsed.is_some_and(|h| offset + h.entry_len() as u64 > file_len) {
            break;
        }
        let Some(parsed) = parsed else {
            // Damage. An entry before that checks out ends here, so the search starts here.
            // One that does not is the damaged one (a flipped length bit leads here): it is
            // forgotten, and the search starts just after its start. A search never starts
            // inside an entry known to be whole: its body may hold a forged entry.
            let from = match last {
                Some((start, value)) if !resync.checks_out(start)? => {
                    if let Some(hash) = value {
                        if entries
                            .get(&hash)
                            .is_some_and(|loc| u64::from(loc.offset) == start)
                        {
                            entries.remove(&hash);
                        }
                        keys.retain(|k| *k != hash);
                    }
                    start + 1
                }
                _ => offset + 1,
            };
            let Some(next) = resync.next_entry(from)? else {
                break;
            };
            tracing::warn!(
                "disk tier: segment {id:016x}: damaged bytes from {} to {next} skipped",
                from - 1
            );
            offset = next;
            last = None;
            past_damage = true;
            reader.seek(SeekFrom::Start(next))?;
            continue;
        };
        let len = parsed.entry_len() as u64;
        key.resize(parsed.key_len, 0);
        reader.read_exact(&mut key)?;
        reader.seek_relative(parsed.value_len as i64)?;
        let hash = hasher.hash_one(&key);
        let indexed = parsed.kind == Kind::Value && !past_damage;
        last = Some((offset, indexed.then_some(hash)));
        match parsed.kind {
            Kind::Value if indexed => {
                let loc = Loc {
                    segment: id,
                    // Within `file_len`, so within 32 bits.
                    offset: offset as u32,
                    len: len as u32,
                };
                entries.insert(hash, loc);
                keys.push(hash);
            }
            Kind::Value | Kind::Tombstone => {
                entries.remove(&hash);
            }
        }
        offset += len;
        end = offset;
    }
    if end < file.metadata()?.len() {
        file.set_len(end)?;
    }
    Ok((keys, end))
}

/// Finds where whole entries resume after one that is not. The magic alone proves nothing (a
/// body may hold those bytes, even a header that parses), so a candidate must parse, lie
/// within the file and match its checksum, read in pieces. (A body made to hold a whole entry,
/// checksum and all, would pass: a CRC is no defence against a forger, only against damage.)
struct Resync<'a> {
    file: &'a File,
    len: u64,
    /// Bytes it may still read checking candidates: a body full of lookalike headers cannot
    /// make a start-up read the segment over and over. Real entries take one read each.
    budget: u64,
}

impl<'a> Resync<'a> {
    fn new(file: &'a File, len: u64) -> Self {
        Self {
            file,
            len,
            budget: len.saturating_mul(2),
        }
    }

    /// The offset of the first entry at or after `from` that checks out; `None` when there
    /// is none (a torn tail) or the budget is spent.
    fn next_entry(&mut self, from: u64) -> io::Result<Option<u64>> {
        let mut window = vec![0u8; SCAN_BUFFER.min(self.len as usize)];
        let mut at = from;
        while at + HEADER as u64 <= self.len {
            let n = window.len().min((self.len - at) as usize);
            self.file.read_exact_at(&mut window[..n], at)?;
            let found = window[..n].windows(MAGIC.len()).enumerate();
            for (i, _) in found.filter(|(_, w)| w == MAGIC) {
                let candidate = at + i as u64;
                if self.checks_out(candidate)? {
                    return Ok(Some(candidate));
                }
                if self.budget == 0 {
                    return Ok(None);
                }
            }
            if at + n as u64 >= self.len {
                break;
            }
            // Windows overlap, so a magic across their boundary is seen.
            at += (n - (MAGIC.len() - 1)) as u64;
        }
        Ok(None)
    }

    /// Whether a whole, intact entry starts at `at`.
    fn checks_out(&mut self, at: u64) -> io::Result<bool> {
        let mut header = [0u8; HEADER];
        if at + HEADER as u64 > self.len {
            return Ok(false);
        }
        self.file.read_exact_at(&mut header, at)?;
        let Some(parsed) = Header::parse(&header) else {
            return Ok(false);
        };
        let rest = (parsed.entry_len() - HEADER) as u64;
        if at + HEADER as u64 + rest > self.len {
            return Ok(false);
        }
        if rest > self.budget {
            self.budget = 0;
            return Ok(false);
        }
        self.budget -= rest;
        let mut checker = parsed.checker();
        let mut piece = vec![0u8; (rest as usize).min(64 << 10)];
        let mut read = 0;
        while read < rest {
            let n = piece.len().min((rest - read) as usize);
            self.file
                .read_exact_at(&mut piece[..n], at + HEADER as u64 + read)?;
            checker.update(&piece[..n]);
            read += n as u64;
        }
        Ok(checker.matches())
    }
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.seg"))
}

/// The ids of the segment files in `dir`, oldest first; other files are left alone.
fn segment_ids(dir: &Path) -> io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else {
            continue;
        };
        if let Ok(id) = u64::from_str_radix(stem, 16) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

fn create_segment(dir: &Path, id: u64) -> io::Result<Active> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(segment_path(dir, id))?;
    Ok(Active {
        id,
        file: Arc::new(file),
        end: 0,
        values: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEGMENT: u64 = 4096;

    fn value(n: usize, fill: u8) -> Vec<u8> {
        vec![fill; n]
    }

    /// Limits of `segments` segments, with no bound on values but the bytes.
    fn segments(segments: u64) -> Limits {
        Limits {
            segment_bytes: SEGMENT,
            max_bytes: segments * SEGMENT,
            max_values: u64::MAX,
        }
    }

    /// A store in `dir` with room for 16 segments.
    fn roomy(dir: &Path) -> SegmentStore {
        SegmentStore::open(dir, segments(16)).unwrap()
    }

    #[tokio::test]
    async fn values_read_back_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = roomy(dir.path());
        store.put(b"a", &value(100, 1)).unwrap();
        store.put(b"b", &value(200, 2)).unwrap();
        store.put(b"a", &value(50, 3)).unwrap();
        assert_eq!(store.get(b"a").await.unwrap().unwrap(), value(50, 3));
        assert_eq!(store.get(b"b").await.unwrap().unwrap(), value(200, 2));
        assert!(store.get(b"c").await.unwrap().is_none());
        assert!(store.remove(b"b").unwrap());
        assert!(!store.remove(b"b").unwrap());
        store.sync().unwrap();
        drop(store);

        let again = roomy(dir.path());
        assert_eq!(again.get(b"a").await.unwrap().unwrap(), value(50, 3));
        assert!(
            again.get(b"b").await.unwrap().is_none(),
            "the tombstone holds"
        );
        assert!(again.contains(b"a") && !again.contains(b"b"));
        assert_eq!(again.entries(), 1);
    }

    #[tokio::test]
    async fn the_oldest_segments_go_when_the_budget_is_spent() {
        let dir = tempfile::tempdir().unwrap();
        let store = SegmentStore::open(dir.path(), segments(4)).unwrap();
        for i in 0..40u32 {
            store.put(&i.to_be_bytes(), &value(1000, i as u8)).unwrap();
        }
        assert!(
            store.stored_bytes() <= 4 * SEGMENT,
            "{}",
            store.stored_bytes()
        );
        assert!(segment_ids(dir.path()).unwrap().len() <= 4);
        assert!(store.get(&0u32.to_be_bytes()).await.unwrap().is_none());
        let newest = store.get(&39u32.to_be_bytes()).await.unwrap().unwrap();
        assert_eq!(newest, value(1000, 39));
        // Only what the files still hold is indexed.
        let kept = store.entries();
        assert!(kept > 0 && kept < 40, "{kept}");
        let mut found = 0;
        for i in 0..40u32 {
            found += usize::from(store.get(&i.to_be_bytes()).await.unwrap().is_some());
        }
        assert_eq!(found, kept);
        assert!(store.put(b"big", &value(SEGMENT as usize, 0)).is_err());
    }

    #[tokio::test]
    async fn the_oldest_segments_go_when_the_cap_on_values_is_reached() {
        let dir = tempfile::tempdir().unwrap();
        // Room for 16 segments by bytes, but 64 values: 4 per segment.
        let capped = |max_values| Limits {
            max_values,
            ..segments(16)
        };
        let store = SegmentStore::open(dir.path(), capped(64)).unwrap();
        for i in 0..200u32 {
            store.put(&i.to_be_bytes(), &value(10, i as u8)).unwrap();
        }
        let kept = store.entries();
        assert!((32..=64).contains(&kept), "{kept}");
        assert!(store.get(&0u32.to_be_bytes()).await.unwrap().is_none());
        assert_eq!(
            store.get(&199u32.to_be_bytes()).await.unwrap().unwrap(),
            value(10, 199)
        );
        drop(store);

        // A smaller cap applies as the store opens.
        let smaller = SegmentStore::open(dir.path(), capped(16)).unwrap();
        let kept = smaller.entries();
        assert!(kept <= 16 && kept > 0, "{kept}");
        assert_eq!(
            smaller.get(&199u32.to_be_bytes()).await.unwrap().unwrap(),
            value(10, 199)
        );
    }

    /// A segment that cannot be unlinked does not keep the others evicted with it on the
    /// disk: they were left there, beyond the budget, and read back at the next start.
    #[test]
    fn every_evicted_segment_is_unlinked_though_one_cannot_be() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = roomy(dir.path());
        for i in 0..40u32 {
            store.put(&i.to_be_bytes(), &value(1000, i as u8)).unwrap();
        }
        let active = store.writer.lock().id;
        assert!(active >= 8, "{active} segments written");
        // The oldest made undeletable: a directory that is not empty in its place.
        let oldest = segment_path(dir.path(), 0);
        std::fs::remove_file(&oldest).unwrap();
        std::fs::create_dir(&oldest).unwrap();
        std::fs::write(oldest.join("inside"), b"x").unwrap();

        store.limits.max_bytes = 4 * SEGMENT;
        assert!(store.evict(active).is_err(), "the failure is reported");
        // The undeletable one, and the newest three and the active one the budget keeps.
        let left = segment_ids(dir.path()).unwrap();
        assert_eq!(left, [0, active - 3, active - 2, active - 1, active]);
    }

    #[tokio::test]
    async fn a_damaged_entry_is_never_returned_and_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = roomy(dir.path());
        store.put(b"key", b"the stored value").unwrap();
        store.put(b"next", b"another value").unwrap();
        let path = segment_path(dir.path(), 0);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.windows(6).position(|w| w == b"stored").unwrap();
        bytes[at] ^= 0x20;
        std::fs::write(&path, bytes).unwrap();

        let Err(ReadError::Corrupt(tombstones)) = store.get(b"key").await else {
            panic!("a damaged entry was read");
        };
        assert_eq!(tombstones.count, 1);
        for batch in &tombstones.batches {
            store.write_tombstones(batch).unwrap();
        }
        assert!(!store.contains(b"key"));
        assert!(store.get(b"key").await.unwrap().is_none());
        assert_eq!(
            store.get(b"next").await.unwrap().unwrap(),
            &b"another value"[..]
        );
        drop(store);
        let again = roomy(dir.path());
        assert!(!again.contains(b"key"), "its tombstone was written");
        assert!(again.contains(b"next"));
    }

    #[tokio::test]
    async fn a_cut_off_tail_is_dropped_and_what_precedes_it_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = roomy(dir.path());
        store.put(b"first", &value(300, 1)).unwrap();
        store.put(b"second", &value(300, 2)).unwrap();
        drop(store);
        let path = segment_path(dir.path(), 0);
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 10)
            .unwrap();

        let again = roomy(dir.path());
        assert_eq!(again.get(b"first").await.unwrap().unwrap(), value(300, 1));
        assert!(again.get(b"second").await.unwrap().is_none());
        let first_len = (HEADER + 5 + 300) as u64;
        assert_eq!(std::fs::metadata(&path).unwrap().len(), first_len, "cut");
    }

    /// Stores `count` values of 100 bytes (entries of 123 bytes, so no damaged length lands
    /// on another entry's start) in one segment; returns their keys and the segment's path.
    fn stored(dir: &Path, count: u8) -> (Vec<Vec<u8>>, PathBuf) {
        let store = roomy(dir);
        let keys: Vec<Vec<u8>> = (0..count).map(|i| vec![b'k', i]).collect();
        for (i, key) in keys.iter().enumerate() {
            store.put(key, &value(100, i as u8)).unwrap();
        }
        (keys, segment_path(dir, 0))
    }

    /// Flips `mask` into byte `at` of the segment file.
    fn damage(path: &Path, at: usize, mask: u8) {
        let mut bytes = std::fs::read(path).unwrap();
        bytes[at] ^= mask;
        std::fs::write(path, bytes).unwrap();
    }

    /// A damaged header costs its entry, and the values after it in its segment (they may lie
    /// inside its body): misses, never another key's value.
    #[tokio::test]
    async fn a_damaged_header_costs_its_entry_and_those_after_it() {
        const ENTRY: usize = HEADER + 2 + 100;
        for at in 0..HEADER {
            for mask in [0x01, 0x80, 0xff] {
                let dir = tempfile::tempdir().unwrap();
                let (keys, path) = stored(dir.path(), 10);
                let len = std::fs::metadata(&path).unwrap().len();
                damage(&path, 3 * ENTRY + at, mask);
                // A length made to run past the end reads as an entry a crash cut off: the
                // tail goes (misses), since searching inside it could find a forged entry.
                let bytes = std::fs::read(&path).unwrap();
                let parsed = Header::parse(&bytes[3 * ENTRY..]);
                let overruns = parsed.is_some_and(|h| (3 * ENTRY + h.entry_len()) as u64 > len);
                // Only its checksum hit: the scan goes on from the entry's true end.
                let ends_where_it_did = parsed.is_some_and(|h| h.entry_len() == ENTRY);

                let again = roomy(dir.path());
                let what = format!("byte {at} ^ {mask:#x}");
                for (i, key) in keys.iter().enumerate() {
                    let read = again.get(key).await;
                    if i == 3 || (i > 3 && !ends_where_it_did) {
                        assert!(!matches!(read, Ok(Some(_))), "{what}: {i} served");
                    } else {
                        assert_eq!(read.unwrap(), Some(value(100, i as u8).into()), "{what}");
                    }
                }
                let kept = std::fs::metadata(&path).unwrap().len();
                let expected = if overruns { 3 * ENTRY as u64 } else { len };
                assert_eq!(kept, expected, "{what}");
            }
        }
    }

    #[tokio::test]
    async fn the_magic_inside_a_body_is_not_taken_for_an_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = roomy(dir.path());
        // A body holding a header that parses and fits the file, and one whole entry whose
        // checksum is wrong.
        let mut lookalike = entry::encode(Kind::Value, b"fake", b"fake value");
        lookalike[HEADER] = b'F';
        let mut body = b"CSG1 at the start; ".to_vec();
        body.extend_from_slice(&lookalike);
        body.extend_from_slice(&entry::encode(Kind::Value, b"long", &[0; 200])[..HEADER]);
        store.put(b"first", b"v").unwrap();
        store.put(b"holder", &body).unwrap();
        store.put(b"after", b"kept").unwrap();
        drop(store);
        let path = segment_path(dir.path(), 0);
        let holder_at = HEADER + b"first".len() + 1;
        damage(&path, holder_at, 0xff);

        let again = roomy(dir.path());
        assert!(!again.contains(b"holder"));
        assert!(!again.contains(b"fake") && !again.contains(b"Fake"));
        assert!(!again.contains(b"long"));
        assert_eq!(again.get(b"first").await.unwrap().unwrap(), &b"v"[..]);
        assert!(
            !again.contains(b"after"),
            "past the damage: it may lie inside it"
        );
        assert_eq!(again.entries(), 1);
    }

    /// A whole entry, checksum and all, inside a body whose entry lost its first bytes (a
    /// power loss zeroing a page) is not indexed: a client choosing what was cached could name
    /// any key in it (another tenant's), written at any time, and it was served after a
    /// restart.
    #[tokio::test]
    async fn an_entry_forged_inside_a_damaged_body_is_not_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let store = roomy(dir.path());
        let mut body = b"padding ".to_vec();
        body.extend_from_slice(&entry::encode(Kind::Value, b"victim", b"forged"));
        body.extend_from_slice(b" and more");
        store.put(b"first", b"v").unwrap();
        store.put(b"victim", b"genuine").unwrap();
        store.put(b"carrier", &body).unwrap();
        drop(store);
        let path = segment_path(dir.path(), 0);
        let carrier_at = 2 * HEADER + b"first".len() + 1 + b"victim".len() + b"genuine".len();
        let mut bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[carrier_at..carrier_at + 4], MAGIC);
        bytes[carrier_at..carrier_at + HEADER].fill(0);
        std::fs::write(&path, &bytes).unwrap();

        let again = roomy(dir.path());
        let victim = again.get(b"victim").await.unwrap();
        assert_ne!(victim.as_deref(), Some(&b"forged"[..]));
        assert!(!again.contains(b"carrier"));
        assert_eq!(again.get(b"first").await.unwrap().unwrap(), &b"v"[..]);
    }

    /// A search after damage never starts inside an entry known to be whole, nor inside one
    /// a crash cut off: a body may hold a whole entry, checksum and all, made by whoever chose
    /// what was cached. After a torn header at the end, the search started inside the last
    /// whole entry, and the entry hidden in its body was indexed (and served) under the key
    /// it named (probe V).
    #[tokio::test]
    async fn an_entry_hidden_in_a_body_is_never_taken_after_a_crash() {
        for torn_carrier in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let store = roomy(dir.path());
            store.put(b"victim", b"genuine").unwrap();
            let mut body = b"padding ".to_vec();
            body.extend_from_slice(&entry::encode(Kind::Value, b"victim", b"forged"));
            body.extend_from_slice(b" and more");
            store.put(b"carrier", &body).unwrap();
            drop(store);
            let path = segment_path(dir.path(), 0);
            let mut bytes = std::fs::read(&path).unwrap();
            match torn_carrier {
                // The carrier itself cut off by the crash.
                true => bytes.truncate(bytes.len() - 3),
                // A next entry's header cut off by the crash.
                false => bytes.extend_from_slice(&entry::encode(Kind::Value, b"next", b"x")[..10]),
            }
            std::fs::write(&path, &bytes).unwrap();

            let again = roomy(dir.path());
            let what = format!("carrier torn: {torn_carrier}");
            let victim = again.get(b"victim").await.unwrap().unwrap();
            assert_eq!(victim, &b"genuine"[..], "{what}");
            assert_eq!(again.contains(b"carrier"), !torn_carrier, "{what}");
        }
    }

    /// After a damaged entry, a tombstone still removes its key, and so does a value (newer
    /// than the copy before it, it is not served itself).
    #[tokio::test]
    async fn a_tombstone_after_a_damaged_entry_still_holds() {
        let dir = tempfile::tempdir().unwrap();
        let store = roomy(dir.path());
        store.put(b"gone", b"old").unwrap();
        store.put(b"redone", b"old").unwrap();
        store.put(b"damaged", b"x").unwrap();
        assert!(store.remove(b"gone").unwrap());
        store.put(b"redone", b"new").unwrap();
        drop(store);
        let damaged_at = 2 * HEADER + b"gone".len() + b"redone".len() + 6;
        damage(&segment_path(dir.path(), 0), damaged_at, 0xff);

        let again = roomy(dir.path());
        assert!(!again.contains(b"gone"), "the tombstone was read");
        assert!(!again.contains(b"damaged"));
        assert!(!again.contains(b"redone"), "its older copy is not served");
    }

    #[tokio::test]
    async fn a_read_the_page_cache_cannot_answer_goes_to_the_blocking_pool() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        let pattern: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &pattern).unwrap();
        let file = File::open(&path).unwrap();
        file.sync_all().unwrap();
        // SAFETY: advice about a descriptor this test owns; no memory is passed.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        // ext4 (this machine's) drops the clean pages, so the non-blocking read fails and the
        // read takes the blocking pool; file systems that keep them answer from the cache.
        let cached = read_cached(&file, 4096, 1000);
        // With every disk read taken, one that must wait for the disk fails at once (here,
        // where the pages are dropped; a file system that keeps them answers from them).
        let none_free = Arc::new(Semaphore::new(0));
        // SAFETY: as above.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        let file = Arc::new(file);
        match read_at(file.clone(), 4096, 1000, &none_free).await {
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{e}"),
            Ok(bytes) => assert_eq!(bytes, pattern[4096..5096]),
        }
        let reads = Arc::new(Semaphore::new(1));
        let bytes = read_at(file, 4096, 1000, &reads).await.unwrap();
        assert_eq!(bytes, pattern[4096..5096], "cached: {}", cached.is_some());
        assert_eq!(reads.available_permits(), 1, "the read's permit is back");
        if let Some(probe) = cached {
            assert_eq!(probe, pattern[4096..5096]);
        }
        // A read past the end of the file is not a cached read, and nothing of it is used.
        let file = File::open(&path).unwrap();
        assert!(read_cached(&file, 65000, 1000).is_none());
    }

    #[tokio::test]
    async fn keys_removed_together_stay_removed_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = roomy(dir.path());
        for key in [&b"c0"[..], b"c1", b"c2", b"kept"] {
            store.put(key, key).unwrap();
        }
        let keys: [&[u8]; 4] = [b"c0", b"c1", b"c2", b"never stored"];
        assert_eq!(store.remove_all(&keys).unwrap(), 3);
        assert_eq!(
            store.remove_all(&keys).unwrap(),
            0,
            "nothing left to remove"
        );
        drop(store);
        let again = roomy(dir.path());
        assert!(!again.contains(b"c0") && !again.contains(b"c1") && !again.contains(b"c2"));
        assert_eq!(again.get(b"kept").await.unwrap().unwrap(), &b"kept"[..]);

        // More tombstones than a segment holds go in several writes.
        let many: Vec<Vec<u8>> = (0..200u32).map(|i| i.to_be_bytes().repeat(8)).collect();
        for key in &many {
            again.put(key, b"v").unwrap();
        }
        let keys: Vec<&[u8]> = many.iter().map(Vec::as_slice).collect();
        assert_eq!(again.remove_all(&keys).unwrap(), 200);
        assert!(keys.iter().all(|key| !again.contains(key)));
    }

    #[tokio::test]
    async fn files_that_are_not_segments_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
        let store = roomy(dir.path());
        store.put(b"k", b"v").unwrap();
        assert_eq!(store.get(b"k").await.unwrap().unwrap(), &b"v"[..]);
        assert!(dir.path().join("notes.txt").exists());
    }

    fn segment_files(dir: &Path) -> usize {
        segment_ids(dir).unwrap().len()
    }

    /// A start that writes nothing leaves no file behind, and starts that each write a
    /// little keep at most [`Limits::most_segments`] files: every start used to add a segment,
    /// each holding a descriptor, until cachet could not open them all and did not start.
    #[tokio::test]
    async fn restarts_leave_at_most_the_segments_the_limits_allow() {
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..5 {
            drop(roomy(dir.path()));
        }
        assert_eq!(
            segment_files(dir.path()),
            1,
            "one empty segment, this run's"
        );

        let limits = segments(4);
        for i in 0..20u8 {
            let store = SegmentStore::open(dir.path(), limits).unwrap();
            store.put(&[i], &value(10, i)).unwrap();
            store.sync().unwrap();
        }
        let store = SegmentStore::open(dir.path(), limits).unwrap();
        let most = usize::try_from(limits.most_segments()).unwrap();
        assert_eq!(segment_files(dir.path()), most);
        // The newest runs' values are still there; the oldest went with their segments.
        assert_eq!(store.get(&[19]).await.unwrap().unwrap(), value(10, 19));
        assert!(store.get(&[0]).await.unwrap().is_none());
        // A folder past it (kept under larger limits) is brought back before it is opened.
        drop(store);
        for i in 20..40u8 {
            let store = SegmentStore::open(dir.path(), segments(16)).unwrap();
            store.put(&[i], &value(10, i)).unwrap();
            store.sync().unwrap();
        }
        assert!(segment_files(dir.path()) > 2 * most);
        let store = SegmentStore::open(dir.path(), limits).unwrap();
        assert_eq!(segment_files(dir.path()), most);
        assert_eq!(store.get(&[39]).await.unwrap().unwrap(), value(10, 39));
        assert!(store.get(&[20]).await.unwrap().is_none());
    }
}
