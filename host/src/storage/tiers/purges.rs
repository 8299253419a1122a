//! Purges as the L2 tiers see them: marks that shadow older copies.
//!
//! A purge cannot enumerate a disk or a Redis tier (neither has a tag index), so it leaves a
//! mark instead: "objects of this partition carrying tag T, or named K, written before time
//! t are gone" (or, soft, "are stale as of t"). A copy read from a tier is checked against
//! the marks before it is served or promoted. The same marks travel to other nodes and are
//! kept by the tiers that persist, so a purge holds across restarts and nodes.

use super::key::TierKey;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

/// Marks kept at most. Past that the oldest mark of the partition with the most goes, and
/// what it said is folded into that partition's floor ("every copy written before t is
/// gone"), so a dropped mark never brings a purged copy back: it costs copies of the
/// partition that flooded the log instead (every request with an unsafe method leaves a
/// mark, and any client can send those).
pub(crate) const MAX_MARKS: usize = 65_536;

/// Partitions with a floor of their own, at most. Marks from other nodes can name any
/// partition, and each dropped or floored one kept its floor for good. Past the bound a new
/// partition's floor is taken by every partition instead (`floor_all`): it hides every copy
/// it would have hidden, and costs the other partitions' older L2 copies, never a purge.
const MAX_FLOORS: usize = MAX_MARKS;

/// What a purge names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Target {
    /// One object (hex of its [`TierKey`]).
    Key(String),
    /// Every object of a partition carrying the tag.
    Tag { partition: String, tag: String },
    /// Every object of a partition: what is left of its marks dropped to keep the log
    /// bounded (a floor).
    Partition(String),
}

impl Target {
    /// Whether a node could have made this target: a tag no longer than a stored object's
    /// tags may be, a partition no longer than a tenant's name (a key no longer than the
    /// name of an object in one). Any other shadows no copy (none carries such a tag or
    /// name), and from another node it would be held in memory at any length.
    pub(crate) fn could_be_made(&self) -> bool {
        use crate::config::MAX_TENANT_NAME_BYTES as MAX_PARTITION;
        match self {
            // The length first: the hex is decoded to read the partition.
            Self::Key(hex) => {
                hex.len() <= 2 * TierKey::max_len(MAX_PARTITION)
                    && TierKey::from_hex(hex)
                        .and_then(|key| key.partition().map(str::len))
                        .is_some_and(|len| len <= MAX_PARTITION)
            }
            Self::Tag { partition, tag } => {
                partition.len() <= MAX_PARTITION && tag.len() <= crate::storage::tags::MAX_TAG_BYTES
            }
            Self::Partition(partition) => partition.len() <= MAX_PARTITION,
        }
    }

    /// The partition the target is in (none for a key that does not parse).
    pub(crate) fn partition(&self) -> Option<String> {
        match self {
            Self::Key(hex) => Some(TierKey::from_hex(hex)?.partition()?.to_owned()),
            Self::Tag { partition, .. } | Self::Partition(partition) => Some(partition.clone()),
        }
    }
}

/// One purge, as recorded, persisted and broadcast.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Purge {
    pub(crate) target: Target,
    /// Nanoseconds since the epoch.
    pub(crate) at: u64,
    /// Marks stale instead of removing.
    pub(crate) soft: bool,
}

/// What the marks say about a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Keep,
    /// Serve it only as stale as of this time (ns).
    Expire(u64),
    Gone,
}

#[derive(Default, Clone, Copy)]
struct Mark {
    hard: Option<u64>,
    soft: Option<u64>,
}

impl Mark {
    /// Raises the hard or soft time to `at`; whether it moved.
    fn raise(&mut self, soft: bool, at: u64) -> bool {
        let slot = if soft { &mut self.soft } else { &mut self.hard };
        let moved = slot.is_none_or(|t| t < at);
        *slot = Some(slot.map_or(at, |t| t.max(at)));
        moved
    }

    /// Takes in everything `other` says; whether anything moved.
    fn absorb(&mut self, other: Mark) -> bool {
        let hard = other.hard.is_some_and(|at| self.raise(false, at));
        let soft = other.soft.is_some_and(|at| self.raise(true, at));
        hard || soft
    }

    /// The purges that make this mark on `target`: a hard one, a soft one, or both.
    fn as_purges(self, target: Target) -> impl Iterator<Item = Purge> {
        [(false, self.hard), (true, self.soft)]
            .into_iter()
            .filter_map(move |(soft, at)| {
                Some(Purge {
                    target: target.clone(),
                    at: at?,
                    soft,
                })
            })
    }

    /// What this mark says about a copy written at `written_at`.
    fn judge(&self, written_at: u64) -> Verdict {
        if self.hard.is_some_and(|at| at >= written_at) {
            return Verdict::Gone;
        }
        match self.soft.filter(|at| *at >= written_at) {
            Some(at) => Verdict::Expire(at),
            None => Verdict::Keep,
        }
    }
}

#[derive(Default)]
struct Marks {
    by_target: HashMap<Target, Mark>,
    /// Each partition's marks, oldest first.
    order: HashMap<String, VecDeque<Target>>,
    /// Marks in `order`, all partitions together.
    len: usize,
    /// Per partition, what the marks dropped to stay within [`MAX_MARKS`] said.
    floors: HashMap<String, Mark>,
    /// For every partition: a shared tier's kept marks were cut before this node read them,
    /// or a floor came for a partition past [`MAX_FLOORS`].
    floor_all: Mark,
    /// The log said `floors` is full.
    floors_full_said: bool,
}

impl Marks {
    /// Drops the oldest mark of the partition with the most, into that partition's floor.
    fn drop_one(&mut self) {
        let Some((partition, order)) = self.order.iter_mut().max_by_key(|(_, o)| o.len()) else {
            return;
        };
        let partition = partition.clone();
        let oldest = order.pop_front();
        if order.is_empty() {
            self.order.remove(&partition);
        }
        let Some(target) = oldest else {
            return;
        };
        self.len -= 1;
        if let Some(mark) = self.by_target.remove(&target) {
            self.raise_floor(partition, mark);
        }
    }

    /// Raises `partition`'s floor by `mark` (past [`MAX_FLOORS`] partitions, a new one's goes
    /// to every partition); whether it moved.
    fn raise_floor(&mut self, partition: String, mark: Mark) -> bool {
        let floor = if self.floors.len() < MAX_FLOORS || self.floors.contains_key(&partition) {
            self.floors.entry(partition).or_default()
        } else {
            if !self.floors_full_said {
                tracing::warn!(
                    "purge marks: {MAX_FLOORS} partitions have a floor; a floor for another \
                     applies to every partition (older L2 copies of every tenant are fetched again)"
                );
                self.floors_full_said = true;
            }
            &mut self.floor_all
        };
        floor.absorb(mark)
    }
}

#[derive(Default)]
pub(crate) struct PurgeLog {
    marks: Mutex<Marks>,
    /// Lets lookups skip the lock while nothing was ever purged.
    any: AtomicBool,
}

impl PurgeLog {
    /// Takes in a purge. Whether it said anything new (a new mark, or a later time).
    pub(crate) fn record(&self, purge: &Purge) -> bool {
        self.any.store(true, Relaxed);
        let Some(partition) = purge.target.partition() else {
            return false;
        };
        let mut marks = self.marks.lock();
        if let Target::Partition(_) = purge.target {
            let mut mark = Mark::default();
            mark.raise(purge.soft, purge.at);
            return marks.raise_floor(partition, mark);
        }
        let fresh = !marks.by_target.contains_key(&purge.target);
        let mark = marks.by_target.entry(purge.target.clone()).or_default();
        let moved = mark.raise(purge.soft, purge.at);
        if fresh {
            marks
                .order
                .entry(partition)
                .or_default()
                .push_back(purge.target.clone());
            marks.len += 1;
            while marks.len > MAX_MARKS {
                marks.drop_one();
            }
        }
        moved
    }

    /// Every copy of every partition written before `at` is gone: the shared tier's kept
    /// marks were cut to their newest [`MAX_MARKS`] before this node read them, and a cut
    /// mark was at most as recent as the oldest kept one.
    pub(crate) fn forget_before(&self, at: u64) {
        self.any.store(true, Relaxed);
        self.marks.lock().floor_all.raise(false, at);
    }

    /// The marks held, as the purges that make them again: each target's hard and soft
    /// mark, and each partition's floor as a mark on the whole partition; the newest
    /// [`MAX_MARKS`] of them, since a set cut to its newest keeps no more. The floor for every
    /// partition (`floor_all`) is left out: no mark names every partition, and a reader
    /// that finds a full set raises its own from the oldest mark kept.
    pub(crate) fn held(&self) -> Vec<Purge> {
        let marks = self.marks.lock();
        let targets = marks
            .by_target
            .iter()
            .map(|(target, mark)| (target.clone(), *mark));
        let floors = marks
            .floors
            .iter()
            .map(|(partition, floor)| (Target::Partition(partition.clone()), *floor));
        let mut held: Vec<Purge> = targets
            .chain(floors)
            .flat_map(|(target, mark)| mark.as_purges(target))
            .collect();
        if held.len() > MAX_MARKS {
            held.select_nth_unstable_by_key(MAX_MARKS, |purge| std::cmp::Reverse(purge.at));
            held.truncate(MAX_MARKS);
        }
        held
    }

    /// Judges a copy named `key`, carrying `tags`, written at `written_at`.
    pub(crate) fn verdict(&self, key: &TierKey, tags: &[Box<str>], written_at: u64) -> Verdict {
        if !self.any.load(Relaxed) {
            return Verdict::Keep;
        }
        let partition = key.partition().unwrap_or_default();
        let marks = self.marks.lock();
        let mut floor = marks.floor_all;
        if let Some(partition_floor) = marks.floors.get(partition) {
            floor.absorb(*partition_floor);
        }
        let mut verdict = floor.judge(written_at);
        if verdict == Verdict::Gone {
            return verdict;
        }
        let mut names = vec![Target::Key(key.to_hex())];
        // A purge by URL marks the primary key; it covers every variant stored under it.
        names.extend(key.without_variance().map(|k| Target::Key(k.to_hex())));
        names.extend(tags.iter().map(|tag| Target::Tag {
            partition: partition.to_owned(),
            tag: tag.to_string(),
        }));
        for name in &names {
            let Some(mark) = marks.by_target.get(name) else {
                continue;
            };
            verdict = match (verdict, mark.judge(written_at)) {
                (_, Verdict::Gone) => return Verdict::Gone,
                (Verdict::Expire(a), Verdict::Expire(b)) => Verdict::Expire(a.min(b)),
                (Verdict::Keep, other) => other,
                (kept, Verdict::Keep) => kept,
                (Verdict::Gone, _) => unreachable!("returned above"),
            };
        }
        verdict
    }
}

/// `dropped` marks (the oldest, cut from a bounded file) as floors: per partition, one hard
/// and one soft mark on the whole partition at the latest time each said.
pub(crate) fn floors_of(dropped: impl IntoIterator<Item = Purge>) -> Vec<Purge> {
    let mut floors: HashMap<String, Mark> = HashMap::new();
    for purge in dropped {
        if let Some(partition) = purge.target.partition() {
            floors
                .entry(partition)
                .or_default()
                .raise(purge.soft, purge.at);
        }
    }
    floors
        .into_iter()
        .flat_map(|(partition, mark)| mark.as_purges(Target::Partition(partition)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_cache::CacheKey;

    fn key() -> TierKey {
        TierKey::of(&CacheKey::new(b"/a".to_vec(), "site"))
    }

    fn tag(name: &str, at: u64, soft: bool) -> Purge {
        Purge {
            target: Target::Tag {
                partition: "site".into(),
                tag: name.into(),
            },
            at,
            soft,
        }
    }

    #[test]
    fn marks_shadow_only_older_copies_of_their_partition() {
        let log = PurgeLog::default();
        let tags: Vec<Box<str>> = vec!["t".into()];
        assert_eq!(log.verdict(&key(), &tags, 5), Verdict::Keep);
        log.record(&tag("t", 10, false));
        assert_eq!(log.verdict(&key(), &tags, 5), Verdict::Gone);
        assert_eq!(log.verdict(&key(), &tags, 11), Verdict::Keep);
        assert_eq!(log.verdict(&key(), &[], 5), Verdict::Keep);
        let other = TierKey::of(&CacheKey::new(b"/a".to_vec(), "other"));
        assert_eq!(log.verdict(&other, &tags, 5), Verdict::Keep);
    }

    #[test]
    fn soft_marks_expire_and_hard_marks_win() {
        let log = PurgeLog::default();
        let tags: Vec<Box<str>> = vec!["t".into()];
        log.record(&tag("t", 10, true));
        assert_eq!(log.verdict(&key(), &tags, 5), Verdict::Expire(10));
        log.record(&Purge {
            target: Target::Key(key().to_hex()),
            at: 8,
            soft: false,
        });
        assert_eq!(log.verdict(&key(), &tags, 5), Verdict::Gone);
        assert_eq!(log.verdict(&key(), &tags, 9), Verdict::Expire(10));
    }

    fn url(path: &str, partition: &str) -> TierKey {
        TierKey::of(&CacheKey::new(path.as_bytes().to_vec(), partition))
    }

    /// Every request with an unsafe method leaves a mark: a client flooding one partition
    /// with them pushes out that partition's own marks, whose copies stay gone.
    #[test]
    fn a_flooding_partition_loses_its_own_marks_and_never_brings_a_copy_back() {
        let log = PurgeLog::default();
        let tags: Vec<Box<str>> = vec!["t".into()];
        log.record(&tag("t", 10, false));
        for i in 0..MAX_MARKS as u64 + 10 {
            log.record(&Purge {
                target: Target::Key(url(&format!("/p{i}"), "flood").to_hex()),
                at: 20 + i,
                soft: false,
            });
        }
        // The quiet partition's tag purge holds.
        assert_eq!(log.verdict(&key(), &tags, 5), Verdict::Gone);
        assert_eq!(log.verdict(&key(), &tags, 11), Verdict::Keep);
        // The flood's eleven oldest marks went into its floor (the last of them at 30).
        assert_eq!(log.verdict(&url("/p0", "flood"), &[], 25), Verdict::Gone);
        assert_eq!(log.verdict(&url("/other", "flood"), &[], 30), Verdict::Gone);
        assert_eq!(log.verdict(&url("/other", "flood"), &[], 31), Verdict::Keep);
        assert_eq!(log.verdict(&url("/other", "site"), &[], 25), Verdict::Keep);
    }

    #[test]
    fn marks_cut_from_a_file_or_a_shared_tier_leave_floors() {
        let log = PurgeLog::default();
        let dropped = [
            tag("t", 10, false),
            tag("u", 12, true),
            Purge {
                target: Target::Key(url("/x", "other").to_hex()),
                at: 7,
                soft: false,
            },
        ];
        for floor in floors_of(dropped) {
            assert!(log.record(&floor));
        }
        assert_eq!(log.verdict(&url("/any", "site"), &[], 9), Verdict::Gone);
        assert_eq!(
            log.verdict(&url("/any", "site"), &[], 11),
            Verdict::Expire(12)
        );
        assert_eq!(log.verdict(&url("/any", "site"), &[], 13), Verdict::Keep);
        assert_eq!(log.verdict(&url("/y", "other"), &[], 7), Verdict::Gone);
        assert_eq!(log.verdict(&url("/y", "other"), &[], 8), Verdict::Keep);
        log.forget_before(100);
        assert_eq!(log.verdict(&url("/y", "other"), &[], 99), Verdict::Gone);
        assert_eq!(log.verdict(&url("/y", "third"), &[], 101), Verdict::Keep);
    }

    /// Floors can come from other nodes for any partition, and each stayed for good. Past
    /// [`MAX_FLOORS`] a new partition's floor is every partition's: what it hides stays
    /// hidden, and the map stops growing.
    #[test]
    fn floors_past_their_bound_apply_to_every_partition() {
        let floor = |partition: &str, at: u64| Purge {
            target: Target::Partition(partition.into()),
            at,
            soft: false,
        };
        let log = PurgeLog::default();
        for i in 0..MAX_FLOORS {
            log.record(&floor(&format!("p{i}"), 10));
        }
        assert!(log.record(&floor("late", 20)));
        assert_eq!(log.marks.lock().floors.len(), MAX_FLOORS);
        assert_eq!(log.verdict(&url("/a", "late"), &[], 15), Verdict::Gone);
        assert_eq!(log.verdict(&url("/a", "late"), &[], 21), Verdict::Keep);
        // The cost: every partition's copies written before it.
        assert_eq!(log.verdict(&url("/a", "site"), &[], 15), Verdict::Gone);
        assert_eq!(log.verdict(&url("/a", "site"), &[], 21), Verdict::Keep);
        // A partition with a floor of its own still raises it alone.
        assert!(log.record(&floor("p0", 30)));
        assert_eq!(log.verdict(&url("/a", "p0"), &[], 25), Verdict::Gone);
        assert_eq!(log.verdict(&url("/a", "p1"), &[], 25), Verdict::Keep);

        // Marks dropped from a partition with no floor yet go the same way.
        for i in 0..MAX_MARKS as u64 + 1 {
            log.record(&Purge {
                target: Target::Key(url(&format!("/f{i}"), "flood").to_hex()),
                at: 40 + i,
                soft: false,
            });
        }
        assert_eq!(log.marks.lock().floors.len(), MAX_FLOORS);
        assert_eq!(log.verdict(&url("/other", "flood"), &[], 40), Verdict::Gone);
        assert_eq!(log.verdict(&url("/a", "site"), &[], 40), Verdict::Gone);
        assert_eq!(log.verdict(&url("/a", "site"), &[], 41), Verdict::Keep);
    }

    /// No mark a node makes is dropped as too long: the longest tenant name the config takes
    /// (one byte more is refused), the longest tag a stored object carries, a `Vary`
    /// variant's key.
    #[test]
    fn every_mark_of_a_tenant_the_config_takes_could_be_made() {
        use crate::config::MAX_TENANT_NAME_BYTES;
        let config = |name: &str| {
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n\n[[tenant]]\nname = \"{name}\"\nhosts = [\"*\"]\n\
                 upstream = \"127.0.0.1:1\"\nplugin = \"builtin:standard\"\n"
            )
        };
        let path = std::env::temp_dir().join("cachet.toml");
        let longest = "n".repeat(MAX_TENANT_NAME_BYTES);
        assert!(crate::config::parse(&path, &config(&longest)).is_ok());
        assert!(crate::config::parse(&path, &config(&format!("{longest}n"))).is_err());
        let mut varying = CacheKey::new(b"/a".to_vec(), longest.as_str());
        varying.set_variance_key([3; 16]);
        for target in [
            Target::Key(TierKey::of(&varying).to_hex()),
            Target::Tag {
                partition: longest.clone(),
                tag: "t".repeat(crate::storage::tags::MAX_TAG_BYTES),
            },
            Target::Partition(longest.clone()),
        ] {
            assert!(target.could_be_made(), "{target:?}");
        }
    }

    /// What a log holds, as purges, makes the same marks in another log: hard and soft marks
    /// of one target both, and floors as marks on their partition. The floor for every
    /// partition has no mark form and is not among them.
    #[test]
    fn the_marks_held_make_the_same_marks_again() {
        let log = PurgeLog::default();
        let on_url = Purge {
            target: Target::Key(url("/x", "other").to_hex()),
            at: 7,
            soft: false,
        };
        let floor = Purge {
            target: Target::Partition("floored".into()),
            at: 9,
            soft: false,
        };
        let made = [tag("t", 10, false), tag("t", 12, true), on_url, floor];
        for purge in &made {
            log.record(purge);
        }
        log.forget_before(5);
        let mut held = log.held();
        held.sort_by_key(|purge| purge.at);
        let mut expected = made.to_vec();
        expected.sort_by_key(|purge| purge.at);
        assert_eq!(held, expected);

        let again = PurgeLog::default();
        for purge in &held {
            again.record(purge);
        }
        let tags: Vec<Box<str>> = vec!["t".into()];
        assert_eq!(again.verdict(&key(), &tags, 9), Verdict::Gone);
        assert_eq!(again.verdict(&key(), &tags, 11), Verdict::Expire(12));
        assert_eq!(again.verdict(&url("/x", "other"), &[], 6), Verdict::Gone);
        assert_eq!(
            again.verdict(&url("/any", "floored"), &[], 8),
            Verdict::Gone
        );
        assert_eq!(again.verdict(&url("/any", "site"), &[], 4), Verdict::Keep);
    }

    /// A log holds up to [`MAX_MARKS`] marks and its floors besides; what it hands back is
    /// its newest [`MAX_MARKS`] (a set cut to that keeps no more).
    #[test]
    fn the_marks_held_are_the_newest_max_marks() {
        let log = PurgeLog::default();
        for i in 0..MAX_MARKS as u64 + 10 {
            log.record(&Purge {
                target: Target::Key(url(&format!("/p{i}"), "flood").to_hex()),
                at: 20 + i,
                soft: false,
            });
        }
        // The ten oldest went into the flood's floor, dated 29: the oldest of all.
        let held = log.held();
        assert_eq!(held.len(), MAX_MARKS);
        assert_eq!(held.iter().map(|purge| purge.at).min(), Some(30));
    }

    #[test]
    fn a_mark_on_a_url_covers_every_variant_stored_under_it() {
        let log = PurgeLog::default();
        let mut varying = CacheKey::new(b"/a".to_vec(), "site");
        varying.set_variance_key([3; 16]);
        let variant = TierKey::of(&varying);
        assert_eq!(log.verdict(&variant, &[], 5), Verdict::Keep);
        log.record(&Purge {
            target: Target::Key(key().to_hex()),
            at: 10,
            soft: true,
        });
        assert_eq!(log.verdict(&variant, &[], 5), Verdict::Expire(10));
        assert_eq!(log.verdict(&variant, &[], 11), Verdict::Keep);
    }
}
