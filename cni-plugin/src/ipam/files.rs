//! The store's files, opened so that nothing in the directory can block a
//! call: non-blocking, without following symlinks, regular files only.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Most bytes read from a reservation or cursor file: a container ID, a
/// newline and an interface name fit with room to spare.
const MAX_ENTRY_BYTES: u64 = 4096;

/// Opens `path` without blocking (a FIFO opens at once, or fails with
/// `ENXIO` for writing), without following a final symlink (`ELOOP`) unless
/// `follow`, and fails with `InvalidInput` unless it is a regular file.
pub fn open_regular(path: &Path, opts: &mut OpenOptions, follow: bool) -> std::io::Result<File> {
    let nofollow = if follow { 0 } else { libc::O_NOFOLLOW };
    let f = opts
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | nofollow)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::new(
            ErrorKind::InvalidInput,
            "is not a regular file",
        ));
    }
    Ok(f)
}

/// The first `max` bytes of the regular file `path`, read without
/// blocking (see [`open_regular`]).
pub fn read_regular(path: &Path, max: u64, follow: bool) -> std::io::Result<Vec<u8>> {
    let f = open_regular(path, OpenOptions::new().read(true), follow)?;
    let mut out = Vec::new();
    f.take(max).read_to_end(&mut out)?;
    Ok(out)
}

/// A file of the store: never through a symlink.
pub(super) fn open_in_store(path: &Path, opts: &mut OpenOptions) -> std::io::Result<File> {
    open_regular(path, opts, false)
}

pub(super) fn read_small(path: &Path) -> std::io::Result<Vec<u8>> {
    read_regular(path, MAX_ENTRY_BYTES, false)
}

/// Removes `path`, whatever it is (a directory with what is in it too);
/// gone already is fine.
pub(super) fn remove_any(path: &Path) -> std::io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let removed = if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match removed {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
