//! Thin wrappers over libc calls (file locks, filesystem space). Leaf module: imports nothing
//! from the crate.
//!
//! Each wrapper holds the one `unsafe` call and its safety argument, and returns std types, so
//! callers stay free of raw descriptors. Nothing here keeps state, retries or logs.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------------------------
// Spool: the per-reactor lock and free disk space.
// ---------------------------------------------------------------------------------------------

/// Why [`lock_reactor`] failed.
#[derive(Debug)]
pub enum LockError {
    /// The lock file could not be opened or created.
    Open(io::Error),
    /// The lock is held (another process writes this reactor's segments), or `flock` failed.
    Held {
        /// The lock file.
        path: PathBuf,
        /// The `flock` error (`EWOULDBLOCK` when held).
        source: io::Error,
    },
}

/// Takes an exclusive, non-blocking `flock` on `<dir>/.lock-<reactor>` (creating the file), so
/// two processes never write the same reactor's segments. The lock lasts as long as the
/// returned file is open.
///
/// # Errors
/// [`LockError::Open`] if the file cannot be opened, [`LockError::Held`] if the lock is taken.
pub fn lock_reactor(dir: &Path, reactor: u16) -> Result<File, LockError> {
    let path = dir.join(format!(".lock-{reactor}"));
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(LockError::Open)?;
    // SAFETY: flock takes a valid open descriptor (owned by `f`, alive for the call) and flags.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(LockError::Held {
            path,
            source: io::Error::last_os_error(),
        });
    }
    Ok(f)
}

/// Bytes available to unprivileged users on the filesystem holding the open file or directory
/// `fd`, if `fstatvfs` works.
pub fn free_bytes(fd: &impl AsRawFd) -> Option<u64> {
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: the descriptor is open for the call (owned by the caller's `fd`); fstatvfs writes
    // only into the struct we pass.
    let rc = unsafe { libc::fstatvfs(fd.as_raw_fd(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: fstatvfs returned 0, so it initialised the struct.
    let st = unsafe { st.assume_init() };
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reactor_lock_is_exclusive_per_reactor() {
        let dir = tempfile::tempdir().unwrap();
        let a = lock_reactor(dir.path(), 0).unwrap();
        assert!(matches!(
            lock_reactor(dir.path(), 0),
            Err(LockError::Held { ref path, .. }) if path.ends_with(".lock-0")
        ));
        assert!(lock_reactor(dir.path(), 1).is_ok());
        drop(a);
        assert!(lock_reactor(dir.path(), 0).is_ok());
        let missing = dir.path().join("missing");
        assert!(matches!(lock_reactor(&missing, 0), Err(LockError::Open(_))));
    }

    #[test]
    fn free_bytes_of_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let f = File::open(dir.path()).unwrap();
        assert!(free_bytes(&f).is_some());
    }
}
