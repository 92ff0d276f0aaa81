//! Thin wrappers over the few libc calls the server makes outside io_uring: CPU affinity,
//! resource limits, the host name, the spool's per-reactor lock, free disk space, space
//! reserved ahead of a file's end (the delivery journal), and a non-blocking peek at a socket
//! (the greet pause).
//!
//! A leaf module: it imports nothing from the crate, so every layer may use it. Each section
//! below is one concern with its own `unsafe` blocks and their safety notes; the functions keep
//! no state, never retry and never log (callers decide what a failure means), and return std
//! types so callers stay free of raw descriptors. It does not open sockets or rings, and does
//! not decide policy (how many reactors, what to warn about).

use std::fs::{File, OpenOptions};
use std::io;
use std::mem;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------------------------
// CPU affinity
// ---------------------------------------------------------------------------------------------

/// The CPU numbers in this process's affinity mask (`sched_getaffinity`), ascending. Falls back
/// to `0..n` from `available_parallelism` if the mask cannot be read. Never empty.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is a plain bit array; all-zero is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { mem::zeroed() };
    // SAFETY: pid 0 means this thread; we pass the real size of `set`, which the kernel fills.
    let rc = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) };
    if rc == 0 {
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            // SAFETY: `i` is below CPU_SETSIZE, the capacity of `set`.
            .filter(|&i| unsafe { libc::CPU_ISSET(i, &set) })
            .collect();
        if !cpus.is_empty() {
            return cpus;
        }
    }
    let n = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    (0..n).collect()
}

/// Pins the calling thread to `cpu` (`sched_setaffinity`). Best effort for callers: if the
/// kernel refuses (a cgroup cpuset changed under us, a seccomp filter), the thread stays where
/// it was.
///
/// # Errors
/// The `sched_setaffinity` error (e.g. `EINVAL` if the CPU is not allowed).
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: an all-zero cpu_set_t is the valid empty set.
    let mut set: libc::cpu_set_t = unsafe { mem::zeroed() };
    // SAFETY: `cpu` was checked to be below CPU_SETSIZE just above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; `set` is initialised and its size is passed.
    let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

// ---------------------------------------------------------------------------------------------
// Resource limits
// ---------------------------------------------------------------------------------------------

/// `getrlimit(resource)`, or `None` if it fails.
fn get_rlimit(resource: libc::__rlimit_resource_t) -> Option<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes into the struct we pass, which lives for the call.
    (unsafe { libc::getrlimit(resource, &mut lim) } == 0).then_some(lim)
}

/// The soft `RLIMIT_MEMLOCK` of this process in bytes (`u64::MAX` when unlimited; 64 KiB, the
/// historical default, when it cannot be read).
pub fn memlock_limit() -> u64 {
    match get_rlimit(libc::RLIMIT_MEMLOCK) {
        None => 64 * 1024,
        Some(lim) if lim.rlim_cur == libc::RLIM_INFINITY => u64::MAX,
        Some(lim) => lim.rlim_cur,
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit where it is lower, and returns the soft
/// limit in force afterwards (the old one if raising failed), or `None` if it cannot be read.
pub fn raise_nofile_limit() -> Option<u64> {
    let lim = get_rlimit(libc::RLIMIT_NOFILE)?;
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit with cur ≤ max.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Some(raised.rlim_cur);
        }
    }
    Some(lim.rlim_cur)
}

// ---------------------------------------------------------------------------------------------
// Host name
// ---------------------------------------------------------------------------------------------

/// The system's host name as the kernel has it (`gethostname`, which needs no /proc), or
/// `None` if it is unset, unreadable or not UTF-8. Not lower-cased or checked: callers do that.
pub fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is writable for its full length, which is what we pass.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..len]) {
        Ok(name) if rc == 0 && !name.trim().is_empty() => Some(name.trim().to_string()),
        _ => None,
    }
}

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
    let mut st = mem::MaybeUninit::<libc::statvfs>::uninit();
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

/// Allocates disk blocks for `len` bytes of `file` from `offset` without changing its size
/// (`fallocate(FALLOC_FL_KEEP_SIZE)`), so later writes there need no new space.
///
/// # Errors
/// The `fallocate` error (`ENOSPC`, or `EOPNOTSUPP` on a filesystem without it).
pub fn reserve(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::from_raw_os_error(libc::EFBIG));
    };
    // SAFETY: the descriptor is open for the call (borrowed from `file`); fallocate touches no
    // memory of ours.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, offset, len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Looks at what a socket has received without taking it and without waiting
/// (`recv(MSG_PEEK | MSG_DONTWAIT)`): `Ok(0)` if the peer closed, `Ok(n)` bytes copied into
/// `buf`, `Err` with [`io::ErrorKind::WouldBlock`] if nothing has arrived.
///
/// # Errors
/// The `recv` error, `WouldBlock` included.
pub fn peek_nonblocking(socket: &impl AsRawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a valid, writable region of `buf.len()` bytes and recv(2) writes at most
    // that many; a descriptor that is not (or no longer) a socket only makes recv fail.
    let n = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_cpus_is_sorted_and_non_empty() {
        let cpus = allowed_cpus();
        assert!(!cpus.is_empty());
        assert!(cpus.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn pinning_to_an_allowed_cpu_works_and_a_bogus_one_fails() {
        let cpus = allowed_cpus();
        let first = cpus[0];
        std::thread::spawn(move || {
            pin_current_thread(first).unwrap();
            assert_eq!(allowed_cpus(), vec![first]);
            assert!(pin_current_thread(usize::MAX).is_err());
        })
        .join()
        .unwrap();
    }

    #[test]
    fn limits_and_hostname_are_readable() {
        assert!(memlock_limit() > 0);
        let n = raise_nofile_limit().unwrap();
        assert!(n > 0);
        // Raising twice is idempotent.
        assert_eq!(raise_nofile_limit(), Some(n));
        let h = hostname().unwrap();
        assert!(!h.is_empty() && !h.contains('\0'));
    }

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
