//! The bookkeeping of the plugin's bump arena (`allocator.rs`), apart from the
//! memory it hands out so that it is tested natively.
//!
//! Blocks are taken from the top. Space comes back without a general free list:
//! - freeing the block at the top lowers the top;
//! - a block freed below the top is remembered (up to [`HOLES`] of them) and
//!   handed out again once the top has reached the arena's end: a policy that
//!   makes and drops many temporaries while one block stays live (a large
//!   cookie parsed field by field) still fits;
//! - once no block made since the last [`Bump::settle`] is live, the top goes
//!   back to where it was then.

use core::alloc::Layout;
use core::cell::Cell;

/// Freed blocks below the top that are remembered; more are lost until the top
/// comes down past them.
const HOLES: usize = 16;

/// A bump arena over `len` bytes at address `start` (the arena's memory is the
/// caller's: this only says which offsets are in use).
pub(crate) struct Bump {
    /// Offset of the first free byte.
    top: Cell<usize>,
    /// Offset the top returns to once `live` is zero (set by [`Bump::settle`]).
    base: Cell<usize>,
    /// Blocks at or above `base` not yet freed.
    live: Cell<usize>,
    /// Freed blocks below the top, as `(offset, end)`; the first `hole_count` are.
    holes: [Cell<(usize, usize)>; HOLES],
    hole_count: Cell<usize>,
    len: usize,
}

impl Bump {
    pub(crate) const fn new(len: usize) -> Self {
        Self {
            top: Cell::new(0),
            base: Cell::new(0),
            live: Cell::new(0),
            holes: [const { Cell::new((0, 0)) }; HOLES],
            hole_count: Cell::new(0),
            len,
        }
    }

    /// The offset of a new block of `layout` in an arena that starts at address
    /// `start`, or `None` when it does not fit.
    pub(crate) fn take(&self, start: usize, layout: Layout) -> Option<usize> {
        let offset = Self::aligned(start, self.top.get(), layout);
        let offset = if offset <= self.len && self.len - offset >= layout.size() {
            self.top.set(offset + layout.size());
            offset
        } else {
            self.take_hole(start, layout)?
        };
        self.live.set(self.live.get() + 1);
        Some(offset)
    }

    /// `offset` rounded up so that `start + offset` is aligned for `layout`.
    fn aligned(start: usize, offset: usize, layout: Layout) -> usize {
        // Alignments are powers of two. `start + len` fits in the address space, and
        // so does an offset rounded up: the arena ends below the last page.
        ((start + offset + layout.align() - 1) & !(layout.align() - 1)) - start
    }

    /// The first remembered hole `layout` fits in, its front taken.
    fn take_hole(&self, start: usize, layout: Layout) -> Option<usize> {
        let count = self.hole_count.get();
        for hole in &self.holes[..count] {
            let (from, end) = hole.get();
            let offset = Self::aligned(start, from, layout);
            if offset <= end && end - offset >= layout.size() {
                if end - offset == layout.size() {
                    hole.set(self.holes[count - 1].get());
                    self.hole_count.set(count - 1);
                } else {
                    hole.set((offset + layout.size(), end));
                }
                return Some(offset);
            }
        }
        None
    }

    /// The arena offset of `address`, if it lies in the arena at `start`.
    pub(crate) fn offset_of(&self, start: usize, address: usize) -> Option<usize> {
        let offset = address.wrapping_sub(start);
        (offset < self.len).then_some(offset)
    }

    /// Gives back the block at `offset` of `size` bytes.
    pub(crate) fn release(&self, offset: usize, size: usize) {
        if offset < self.base.get() {
            // Made before the last settle: it stays where it is.
            return;
        }
        let live = self.live.get() - 1;
        self.live.set(live);
        if live == 0 {
            self.top.set(self.base.get());
            self.hole_count.set(0);
        } else if offset + size == self.top.get() {
            // Holes right below stay holes: merging them costs a search on every free.
            self.top.set(offset);
        } else if self.hole_count.get() < HOLES {
            let count = self.hole_count.get();
            self.holes[count].set((offset, offset + size));
            self.hole_count.set(count + 1);
        }
    }

    /// Resizes the block at `offset` from `size` to `new_size` bytes where it
    /// is, which only the top block can: false when it cannot.
    pub(crate) fn resize_in_place(&self, offset: usize, size: usize, new_size: usize) -> bool {
        let at_top = offset >= self.base.get() && offset + size == self.top.get();
        if !at_top || self.len - offset < new_size {
            return false;
        }
        self.top.set(offset + new_size);
        true
    }

    /// Counts every block made so far as permanent: the top comes back to
    /// here, not below, once the blocks made after it are freed.
    pub(crate) fn settle(&self) {
        self.base.set(self.top.get());
        self.live.set(0);
        self.hole_count.set(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: usize = 0x1_0000;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn blocks_are_aligned_disjoint_and_within_the_arena() {
        let bump = Bump::new(256);
        let a = bump.take(START, layout(3, 1)).unwrap();
        let b = bump.take(START, layout(8, 8)).unwrap();
        let c = bump.take(START, layout(16, 16)).unwrap();
        assert_eq!((a, b, c), (0, 8, 16));
        assert_eq!(bump.take(START, layout(240, 1)), None, "past the end");
        assert_eq!(
            bump.take(START, layout(224, 1)),
            Some(32),
            "exactly to the end"
        );
        assert_eq!(bump.take(START, layout(1, 1)), None, "full");
        // An arena that itself starts unaligned still aligns its blocks.
        let odd = Bump::new(64);
        let offset = odd.take(START + 4, layout(8, 8)).unwrap();
        assert_eq!((START + 4 + offset) % 8, 0);
    }

    #[test]
    fn freeing_every_block_returns_the_top_to_the_start() {
        let bump = Bump::new(128);
        let a = bump.take(START, layout(40, 8)).unwrap();
        let b = bump.take(START, layout(40, 8)).unwrap();
        bump.release(a, 40);
        // `b` is live: its bytes must not be handed out again.
        assert_eq!(bump.take(START, layout(8, 8)), Some(80));
        bump.release(80, 8);
        bump.release(b, 40);
        assert_eq!(bump.take(START, layout(128, 8)), Some(0), "all of it again");
    }

    #[test]
    fn the_top_block_is_given_back_and_resized_where_it_is() {
        let bump = Bump::new(128);
        let a = bump.take(START, layout(16, 8)).unwrap();
        let b = bump.take(START, layout(16, 8)).unwrap();
        assert!(!bump.resize_in_place(a, 16, 32), "not the top block");
        assert!(bump.resize_in_place(b, 16, 64));
        assert!(!bump.resize_in_place(b, 64, 200), "past the end");
        bump.release(b, 64);
        assert_eq!(
            bump.take(START, layout(8, 8)),
            Some(16),
            "the top came down"
        );
    }

    #[test]
    fn blocks_made_before_a_settle_stay_put() {
        let bump = Bump::new(128);
        let settings = bump.take(START, layout(24, 8)).unwrap();
        bump.settle();
        let request = bump.take(START, layout(16, 8)).unwrap();
        assert_eq!(request, 24);
        bump.release(request, 16);
        assert_eq!(
            bump.take(START, layout(8, 8)),
            Some(24),
            "back to the settle"
        );
        bump.release(24, 8);
        // Freeing a settled block neither counts against later ones nor lowers the top
        // into bytes a live block might hold.
        bump.release(settings, 24);
        let kept = bump.take(START, layout(8, 8)).unwrap();
        let next = bump.take(START, layout(8, 8)).unwrap();
        assert_eq!((kept, next), (24, 32));
        assert!(
            !bump.resize_in_place(settings, 24, 8),
            "settled blocks stay"
        );
        bump.release(next, 8);
        assert_eq!(
            bump.take(START, layout(8, 8)),
            Some(32),
            "`kept` is still live"
        );
    }

    #[test]
    fn a_full_arena_hands_out_freed_blocks_again() {
        let bump = Bump::new(64);
        let kept = bump.take(START, layout(8, 8)).unwrap();
        let temp = bump.take(START, layout(32, 8)).unwrap();
        let last = bump.take(START, layout(24, 8)).unwrap();
        assert_eq!((kept, temp, last), (0, 8, 40));
        assert_eq!(bump.take(START, layout(8, 8)), None, "full, nothing freed");
        bump.release(temp, 32);
        // The hole's front, then what is left of it, then nothing.
        assert_eq!(bump.take(START, layout(16, 8)), Some(8));
        assert_eq!(
            bump.take(START, layout(16, 16)),
            None,
            "24 aligned to 16 leaves 8 bytes"
        );
        assert_eq!(
            bump.take(START, layout(16, 8)),
            Some(24),
            "the rest, exactly"
        );
        assert_eq!(bump.take(START, layout(1, 1)), None);
        let _ = last;
    }

    #[test]
    fn a_hole_below_the_top_is_used_once_the_arena_is_full() {
        let bump = Bump::new(48);
        let kept = bump.take(START, layout(8, 8)).unwrap();
        let a = bump.take(START, layout(16, 8)).unwrap();
        let b = bump.take(START, layout(16, 8)).unwrap();
        bump.release(a, 16);
        bump.release(b, 16);
        // `kept` is live: the top came down to `a`'s end, `a` stays a hole.
        assert_eq!(bump.take(START, layout(24, 8)), Some(24));
        assert_eq!(bump.take(START, layout(16, 8)), Some(8), "the hole");
        let _ = kept;
    }

    /// Whatever the order of frees, no byte of a live block is handed out twice.
    #[test]
    fn live_blocks_never_overlap() {
        let bump = Bump::new(512);
        let mut live: Vec<(usize, usize)> = Vec::new();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let roll = next();
            if roll % 3 == 0 && !live.is_empty() {
                let (offset, size) = live.swap_remove((roll as usize / 3) % live.len());
                bump.release(offset, size);
            } else {
                let size = 1 + (next() % 48) as usize;
                let align = 1 << (next() % 4);
                if let Some(offset) = bump.take(START, layout(size, align)) {
                    assert_eq!((START + offset) % align, 0);
                    assert!(offset + size <= 512);
                    for &(o, s) in &live {
                        assert!(offset + size <= o || o + s <= offset, "overlap");
                    }
                    live.push((offset, size));
                }
            }
        }
    }

    #[test]
    fn addresses_outside_the_arena_are_not_its_own() {
        let bump = Bump::new(64);
        assert_eq!(bump.offset_of(START, START + 63), Some(63));
        assert_eq!(bump.offset_of(START, START + 64), None);
        assert_eq!(bump.offset_of(START, START - 1), None);
    }
}
