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

/// Marks kept at most; the oldest go first. A mark older than every copy it could shadow is
/// useless, so this only needs to cover the longest-lived objects purged since.
pub(crate) const MAX_MARKS: usize = 65_536;

/// What a purge names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Target {
    /// One object (hex of its [`TierKey`]).
    Key(String),
    /// Every object of a partition carrying the tag.
    Tag { partition: String, tag: String },
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

#[derive(Default)]
struct Marks {
    by_target: HashMap<Target, Mark>,
    order: VecDeque<Target>,
}

#[derive(Default)]
pub(crate) struct PurgeLog {
    marks: Mutex<Marks>,
    /// Lets lookups skip the lock while nothing was ever purged.
    any: AtomicBool,
}

impl PurgeLog {
    pub(crate) fn record(&self, purge: &Purge) {
        let mut marks = self.marks.lock();
        let fresh = !marks.by_target.contains_key(&purge.target);
        let mark = marks.by_target.entry(purge.target.clone()).or_default();
        let slot = if purge.soft {
            &mut mark.soft
        } else {
            &mut mark.hard
        };
        *slot = Some(slot.map_or(purge.at, |t| t.max(purge.at)));
        if fresh {
            marks.order.push_back(purge.target.clone());
            while marks.order.len() > MAX_MARKS {
                if let Some(old) = marks.order.pop_front() {
                    marks.by_target.remove(&old);
                }
            }
        }
        self.any.store(true, Relaxed);
    }

    /// Judges a copy named `key`, carrying `tags`, written at `written_at`.
    pub(crate) fn verdict(&self, key: &TierKey, tags: &[Box<str>], written_at: u64) -> Verdict {
        if !self.any.load(Relaxed) {
            return Verdict::Keep;
        }
        let partition = key.partition().unwrap_or_default();
        let marks = self.marks.lock();
        let mut names = vec![Target::Key(key.to_hex())];
        // A purge by URL marks the primary key; it covers every variant stored under it.
        names.extend(key.without_variance().map(|k| Target::Key(k.to_hex())));
        names.extend(tags.iter().map(|tag| Target::Tag {
            partition: partition.to_owned(),
            tag: tag.to_string(),
        }));
        let mut verdict = Verdict::Keep;
        for name in &names {
            let Some(mark) = marks.by_target.get(name) else {
                continue;
            };
            if mark.hard.is_some_and(|at| at >= written_at) {
                return Verdict::Gone;
            }
            if let Some(at) = mark.soft.filter(|at| *at >= written_at) {
                verdict = match verdict {
                    Verdict::Expire(earlier) => Verdict::Expire(earlier.min(at)),
                    _ => Verdict::Expire(at),
                };
            }
        }
        verdict
    }
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
