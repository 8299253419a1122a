//! The plugin's heap: a bump arena inside the module's initial memory first,
//! `memory.grow` only beyond it.
//!
//! Why an arena: the host runs a fresh instance per request by default. Rust's
//! standard allocator takes every byte it hands out from `memory.grow`, so each
//! instance grew its memory at its first allocation, and the host had to change
//! page protections twice per request (make the grown pages accessible, then
//! hide them again for the next instance in that slot). In a multithreaded
//! proxy each of those changes interrupts the other cores to flush their TLBs.
//! A request's allocations fit in [`ARENA_BYTES`], which is part of the memory
//! the instance starts with, so the usual request grows nothing. A policy that
//! needs more still gets it: allocations the arena cannot hold come from
//! `memory.grow` (a `talc` allocator), up to the tenant's memory limit.
//!
//! Why bump: a hook call allocates a handful of blocks (the request's strings,
//! the key, the answer) and frees them all by the time the host has read the
//! answer; with a fresh instance per request the host then puts the whole
//! memory back as it was anyway. A general-purpose allocator's bins and free
//! lists bought nothing there and cost ~230 instructions an allocation and
//! ~120 a free (callgrind, standard policy); a bump costs a few dozen. How
//! freed space comes back is `bump.rs`'s: the top comes down, a few freed
//! blocks are reused once the arena is full, and everything made since
//! `configure` goes at once when the last of it is freed. A policy that keeps
//! blocks from one call to the next (a memo, a lazily built table) holds the
//! top up; with reused instances the arena then fills over a few calls and
//! later blocks come from grown memory, as every block did before.
//!
//! A plugin that wants its own allocator turns off the SDK's default
//! `arena-allocator` feature.

use crate::bump::Bump;
use core::alloc::{GlobalAlloc, Layout};
use core::mem::MaybeUninit;
use talc::wasm::WasmDynamicTalc;

/// The arena's size: a request's headers, key parts and decision take a few
/// KiB (a browser head with 13 KiB of cookies still fits). With the 32 KiB
/// stack of `plugins/.cargo/config.toml` and up to ~7 KiB of static data, a
/// policy's memory is one 64 KiB page. The host resets what a request wrote
/// of an instance's memory between requests, so a fresh instance costs less
/// the fewer pages it starts with. A policy with more static data simply
/// starts with two pages.
pub const ARENA_BYTES: usize = 24 * 1024;

static mut ARENA: [MaybeUninit<u8>; ARENA_BYTES] = [MaybeUninit::uninit(); ARENA_BYTES];

/// The arena first, `memory.grow` after it.
pub struct ArenaThenGrow {
    arena: Bump,
    grown: WasmDynamicTalc,
}

// SAFETY: a plugin is single-threaded WebAssembly (`wasm32-unknown-unknown`
// without the atomics feature): the arena's cells are never touched from two
// threads.
unsafe impl Sync for ArenaThenGrow {}

impl ArenaThenGrow {
    /// The allocator over the SDK's static arena.
    ///
    /// # Safety
    /// At most one value may exist (it owns the static arena); the SDK makes
    /// exactly one, as the global allocator.
    pub const unsafe fn new() -> Self {
        Self {
            arena: Bump::new(ARENA_BYTES),
            grown: talc::wasm::new_wasm_dynamic_allocator(),
        }
    }

    fn start() -> usize {
        (&raw const ARENA) as usize
    }
}

// SAFETY: arena blocks are disjoint ranges of the static arena, aligned as
// asked and handed out once until freed (`Bump`); everything else is
// `talc`'s, which upholds `GlobalAlloc` itself. Blocks are told apart by
// their address.
unsafe impl GlobalAlloc for ArenaThenGrow {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match self.arena.take(Self::start(), layout) {
            Some(offset) => (Self::start() + offset) as *mut u8,
            None => unsafe { self.grown.alloc(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match self.arena.offset_of(Self::start(), ptr as usize) {
            Some(offset) => self.arena.release(offset, layout.size()),
            None => unsafe { self.grown.dealloc(ptr, layout) },
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Some(offset) = self.arena.offset_of(Self::start(), ptr as usize) else {
            return unsafe { self.grown.realloc(ptr, layout, new_size) };
        };
        if self.arena.resize_in_place(offset, layout.size(), new_size) {
            return ptr;
        }
        // SAFETY: `layout.align()` is a valid alignment and `new_size` was
        // checked by the caller (`GlobalAlloc::realloc`'s contract).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let moved = unsafe { self.alloc(new_layout) };
        if !moved.is_null() {
            unsafe {
                core::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
            }
            self.arena.release(offset, layout.size());
        }
        moved
    }
}

#[global_allocator]
// SAFETY: the one instance.
static ALLOCATOR: ArenaThenGrow = unsafe { ArenaThenGrow::new() };

/// Called once `configure` has stored the tenant's settings: they live as long
/// as the instance, so what follows starts above them.
pub(crate) fn settle() {
    ALLOCATOR.arena.settle();
}
