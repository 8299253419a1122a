//! The `cachet` binary's memory allocator: mimalloc, which cut a cache hit's CPU by about a
//! tenth against glibc's malloc (measured with `tests/bench/compare.sh`). The library leaves
//! the choice to the program that embeds it.
//!
//! One option differs from mimalloc's default. By default mimalloc commits its arenas eagerly
//! where the OS overcommits (Linux); with transparent huge pages set to `always` (common, and
//! this project's test machines) the kernel then backs what is touched with 2 MiB pages, and a
//! slow client holding a half-sent head cost ~110 KiB instead of ~65 KiB, past the bound
//! `SECURITY.md` documents (`tests/security.rs` checks it). Committing on demand keeps it.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_arena_eager_commit` in mimalloc.h's `mi_option_e` (v3, the crate's default).
#[cfg(target_os = "linux")]
const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Sets the option before the first allocation reserves an arena: the loader runs
/// `.init_array` before `main` and before the Rust runtime allocates anything. (Linux only:
/// elsewhere transparent huge pages do not inflate eagerly committed arenas.)
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static CONFIGURE_BEFORE_MAIN: extern "C" fn() = configure;

#[cfg(target_os = "linux")]
extern "C" fn configure() {
    // SAFETY: sets a process-wide integer option; mimalloc reads options atomically.
    unsafe { libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0) };
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn arenas_are_committed_on_demand() {
        // SAFETY: reads a process-wide integer option.
        let eager = unsafe { libmimalloc_sys::mi_option_get(super::ARENA_EAGER_COMMIT) };
        assert_eq!(eager, 0);
    }
}
