//! Reading the files an operator names (the config, the admin token, certificates, CA
//! bundles, plugins) with a bound, and only when they are regular files.
//!
//! Read plainly, `/dev/zero` grew memory until the process ran out, and a FIFO blocked the
//! read for ever: a reload holding the reload lock then hung every later reload (watcher,
//! SIGHUP, admin).

use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The config, the token, a certificate or a CA bundle: far below this.
pub const TEXT_MAX: u64 = 16 << 20;
/// A plugin: the largest shipped (a Python interpreter inside) is about 18 MiB.
pub const PLUGIN_MAX: u64 = 256 << 20;

/// The whole of `path`, which must be a regular file of at most `max` bytes.
pub fn read(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    // Non-blocking, so opening a FIFO does not wait for a writer; a regular file reads
    // as it would otherwise.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let found = file.metadata()?;
    if !found.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    if found.len() > max {
        return Err(too_large(max));
    }
    let mut bytes = Vec::with_capacity(found.len() as usize);
    // Bounded again: the file may grow while it is read.
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(too_large(max));
    }
    Ok(bytes)
}

/// [`read`] as UTF-8 text.
pub fn read_text(path: &Path, max: u64) -> io::Result<String> {
    String::from_utf8(read(path, max)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

fn too_large(max: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("larger than {} MiB", max >> 20),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_bound_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, b"s3cret").unwrap();
        assert_eq!(read_text(&file, 64).unwrap(), "s3cret");
        assert!(read(&file, 3)
            .unwrap_err()
            .to_string()
            .contains("larger than"));
        let fifo = dir.path().join("fifo");
        let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        let refused = read(&fifo, 64).unwrap_err();
        assert!(
            refused.to_string().contains("not a regular file"),
            "{refused}"
        );
        assert!(read(Path::new("/dev/zero"), 64).is_err());
        assert!(read(dir.path(), 64).is_err());
    }
}
