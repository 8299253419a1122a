//! The plugin's heap: a fixed arena inside the module's initial memory first,
//! `memory.grow` only beyond it.
//!
//! Why: the host runs a fresh instance per request by default. Rust's standard
//! allocator takes every byte it hands out from `memory.grow`, so each instance
//! grew its memory at its first allocation, and the host had to change page
//! protections twice per request (make the grown pages accessible, then hide
//! them again for the next instance in that slot). In a multithreaded proxy each
//! of those changes interrupts the other cores to flush their TLBs. A request's
//! allocations fit in [`ARENA_BYTES`], which is part of the memory the instance
//! starts with, so the usual request grows nothing. A policy that needs more
//! still gets it: allocations the arena cannot hold come from `memory.grow`, up
//! to the tenant's memory limit.
//!
//! Both halves are `talc` allocators (its single-threaded WebAssembly cells).
//! A plugin that wants its own allocator turns off the SDK's default
//! `arena-allocator` feature.

use core::alloc::{GlobalAlloc, Layout};
use core::mem::MaybeUninit;
use talc::wasm::{WasmArenaTalc, WasmDynamicTalc};

/// The arena's size: a request's headers, key parts and decision take a few
/// KiB (a browser head with 13 KiB of cookies still fits). With the 32 KiB
/// stack of `plugins/.cargo/config.toml` and up to ~7 KiB of static data, a
/// policy's memory is one 64 KiB page. The host resets all of an instance's
/// memory between requests, so every byte here costs every request: a fresh
/// instance cost ~15 % less at two pages than at three, and ~8 % less again
/// at one. A policy with more static data simply starts with two pages.
pub const ARENA_BYTES: usize = 24 * 1024;

static mut ARENA: [MaybeUninit<u8>; ARENA_BYTES] = [MaybeUninit::uninit(); ARENA_BYTES];

/// The arena first, `memory.grow` after it.
pub struct ArenaThenGrow {
    arena: WasmArenaTalc,
    grown: WasmDynamicTalc,
}

impl ArenaThenGrow {
    /// The allocator over the SDK's static arena.
    ///
    /// # Safety
    /// At most one value may exist (it owns the static arena); the SDK makes
    /// exactly one, as the global allocator.
    pub const unsafe fn new() -> Self {
        Self {
            // SAFETY: the arena is used by nothing but this allocator.
            arena: unsafe { talc::wasm::new_wasm_arena_allocator(&raw mut ARENA) },
            grown: talc::wasm::new_wasm_dynamic_allocator(),
        }
    }

    fn in_arena(ptr: *mut u8) -> bool {
        let start = (&raw const ARENA) as usize;
        (start..start + ARENA_BYTES).contains(&(ptr as usize))
    }
}

// SAFETY: every block is freed (and resized) by the allocator that made it,
// told apart by its address; both allocators uphold `GlobalAlloc` themselves.
unsafe impl GlobalAlloc for ArenaThenGrow {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { self.arena.alloc(layout) };
        if !ptr.is_null() {
            return ptr;
        }
        unsafe { self.grown.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if Self::in_arena(ptr) {
            unsafe { self.arena.dealloc(ptr, layout) }
        } else {
            unsafe { self.grown.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !Self::in_arena(ptr) {
            return unsafe { self.grown.realloc(ptr, layout, new_size) };
        }
        let resized = unsafe { self.arena.realloc(ptr, layout, new_size) };
        if !resized.is_null() {
            return resized;
        }
        // The arena is full: move the block to grown memory.
        // SAFETY: `layout.align()` is a valid alignment and `new_size` was
        // checked by the caller (`GlobalAlloc::realloc`'s contract).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let moved = unsafe { self.grown.alloc(new_layout) };
        if !moved.is_null() {
            unsafe {
                core::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                self.arena.dealloc(ptr, layout);
            }
        }
        moved
    }
}

#[global_allocator]
// SAFETY: the one instance.
static ALLOCATOR: ArenaThenGrow = unsafe { ArenaThenGrow::new() };
