//! Runs the `cachet` binary's machine code from 2 MiB pages where the kernel offers them.
//!
//! Why: the binary carries ~30 MB of code (Pingora, wasmtime, rustls...), and one request
//! runs code spread over hundreds of its 4 KiB pages. Each page needs its own TLB entry; on
//! a virtual machine a TLB miss walks two page tables. The text is copied once at start into
//! anonymous memory advised for transparent huge pages and moved over the original
//! addresses, so every address stays what it was (symbols, backtraces and function pointers
//! are unchanged) and a few dozen entries cover the code.
//!
//! Only the part of the text between 2 MiB boundaries moves; the edges keep 4 KiB pages.
//! It costs the moved bytes as private memory (the page cache no longer shares them) and a
//! copy at start (the log line says how long it took). It is skipped where transparent huge
//! pages are off. `CACHET_HUGE_TEXT=0` turns it off (e.g. for `perf`, which names functions
//! by their file mapping and sees moved code as anonymous) and `=1` on; by default it is on
//! in release builds only: nobody measures a debug build, and the test suite starts hundreds.
//! It must run before any other thread starts: nothing may execute the text while it moves.

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod linux {
    const HUGE_PAGE: usize = 2 << 20;

    /// What moving the text came to, for the startup log.
    pub enum Outcome {
        /// `huge` of the `bytes` moved sit on 2 MiB pages (the kernel may find fewer free).
        Moved {
            bytes: usize,
            huge: usize,
            took: std::time::Duration,
        },
        Skipped(&'static str),
        Failed(String),
    }

    pub fn move_text() -> Outcome {
        match std::env::var("CACHET_HUGE_TEXT").as_deref() {
            Ok("0") => return Outcome::Skipped("CACHET_HUGE_TEXT=0"),
            Ok("1") => {}
            _ if cfg!(debug_assertions) => return Outcome::Skipped("a debug build"),
            _ => {}
        }
        match std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled") {
            Ok(mode) if mode.contains("[never]") => {
                return Outcome::Skipped("transparent huge pages are off")
            }
            Ok(_) => {}
            Err(_) => return Outcome::Skipped("no transparent huge pages"),
        }
        let Some((start, end)) = text_range() else {
            return Outcome::Skipped("the text mapping was not found");
        };
        let from = start.next_multiple_of(HUGE_PAGE);
        let to = end - end % HUGE_PAGE;
        if to <= from {
            return Outcome::Skipped("the text spans no whole 2 MiB page");
        }
        let started = std::time::Instant::now();
        // SAFETY: [from, to) is this binary's own readable code, no other thread runs yet,
        // and the bytes put back at the same addresses are those very bytes.
        match unsafe { move_range(from, to - from) } {
            Ok(()) => Outcome::Moved {
                bytes: to - from,
                huge: huge_bytes_at(from).unwrap_or(0),
                took: started.elapsed(),
            },
            Err(error) => Outcome::Failed(error),
        }
    }

    /// The executable mapping of the running binary's own file.
    fn text_range() -> Option<(usize, usize)> {
        let exe = std::fs::read_link("/proc/self/exe").ok()?;
        let exe = exe.to_str()?;
        let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
        maps.lines().find_map(|line| {
            // The path is the last field and may hold spaces.
            if !line.ends_with(exe) {
                return None;
            }
            let mut fields = line.split_whitespace();
            let (start, end) = fields.next()?.split_once('-')?;
            if !fields.next()?.contains('x') {
                return None;
            }
            Some((
                usize::from_str_radix(start, 16).ok()?,
                usize::from_str_radix(end, 16).ok()?,
            ))
        })
    }

    /// How much of the mapping that starts at `start` the kernel backs with huge pages.
    fn huge_bytes_at(start: usize) -> Option<usize> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let header = format!("{start:x}-");
        let mut lines = smaps.lines().skip_while(|line| !line.starts_with(&header));
        lines.next()?;
        let kib = lines
            .take_while(|line| {
                line.split_whitespace()
                    .next()
                    .is_some_and(|f| f.ends_with(':'))
            })
            .find_map(|line| line.strip_prefix("AnonHugePages:"))?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse::<usize>()
            .ok()?;
        Some(kib << 10)
    }

    unsafe fn move_range(from: usize, len: usize) -> Result<(), String> {
        let os_error = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
        // Room for an aligned copy: huge pages are made only where both ends are aligned.
        let room = libc::mmap(
            std::ptr::null_mut(),
            len + HUGE_PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if room == libc::MAP_FAILED {
            return Err(os_error("mmap"));
        }
        let room = room as usize;
        let copy = room.next_multiple_of(HUGE_PAGE);
        let (head, tail) = (copy - room, room + len + HUGE_PAGE - (copy + len));
        if head > 0 {
            libc::munmap(room as *mut libc::c_void, head);
        }
        if tail > 0 {
            libc::munmap((copy + len) as *mut libc::c_void, tail);
        }
        let copy_ptr = copy as *mut libc::c_void;
        if libc::madvise(copy_ptr, len, libc::MADV_HUGEPAGE) != 0 {
            let error = os_error("madvise");
            libc::munmap(copy_ptr, len);
            return Err(error);
        }
        std::ptr::copy_nonoverlapping(from as *const u8, copy as *mut u8, len);
        if libc::mprotect(copy_ptr, len, libc::PROT_READ | libc::PROT_EXEC) != 0 {
            let error = os_error("mprotect");
            libc::munmap(copy_ptr, len);
            return Err(error);
        }
        let moved = libc::mremap(
            copy_ptr,
            len,
            len,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            from as *mut libc::c_void,
        );
        if moved == libc::MAP_FAILED {
            let error = os_error("mremap");
            libc::munmap(copy_ptr, len);
            return Err(error);
        }
        Ok(())
    }
}

/// Moves the text (see the module's comment) and says what came of it on stderr's log
/// once logging is up: returns the line to log.
pub fn move_text_to_huge_pages() -> Option<String> {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    {
        use linux::Outcome;
        Some(match linux::move_text() {
            Outcome::Moved { bytes, huge, took } => format!(
                "code on 2 MiB pages: {} MiB of the {} MiB moved, in {} ms",
                huge >> 20,
                bytes >> 20,
                took.as_millis()
            ),
            Outcome::Skipped(why) => format!("code on 4 KiB pages: {why}"),
            Outcome::Failed(error) => format!("code on 4 KiB pages: moving it failed: {error}"),
        })
    }
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    None
}
