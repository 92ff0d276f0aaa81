//! Start-up check that this process may use io_uring at all, with an error that names the cause
//! and the fix.
//!
//! io_uring can be switched off by the `kernel.io_uring_disabled` sysctl (Linux 6.6+), hidden by
//! a seccomp filter (Docker's default profile), missing from the kernel, or starved of locked
//! memory. The probe creates (and drops) an 8-entry ring; this module does not
//! test registered buffers, which the buffer pool checks and falls back from by itself.

use std::fmt;
use std::io;

/// Entries of the throw-away probe ring.
const PROBE_ENTRIES: u32 = 8;
/// The sysctl that can switch io_uring off.
const DISABLED_SYSCTL: &str = "/proc/sys/kernel/io_uring_disabled";

/// Why io_uring cannot be used.
#[derive(Debug)]
pub enum ProbeError {
    /// `kernel.io_uring_disabled = 2`: off for everyone.
    Disabled,
    /// `kernel.io_uring_disabled = 1`: only for members of `kernel.io_uring_group`.
    Restricted,
    /// EPERM without the sysctl: a seccomp filter (container runtime) forbids it.
    Forbidden,
    /// ENOSYS: the kernel has no io_uring (or a filter pretends so).
    NotSupported,
    /// ENOMEM: locked-memory limit too small even for a small ring (kernels before 5.12, and
    /// recent ones again, charge ring memory to `RLIMIT_MEMLOCK`).
    Memlock,
    /// Anything else.
    Other(io::Error),
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Disabled => write!(
                f,
                "io_uring is disabled (kernel.io_uring_disabled=2): run `sysctl -w kernel.io_uring_disabled=0` as root (and set it in /etc/sysctl.d to keep it)"
            ),
            Self::Restricted => write!(
                f,
                "io_uring is restricted to the group in kernel.io_uring_group (kernel.io_uring_disabled=1): run ringmx as a member of that group, or `sysctl -w kernel.io_uring_disabled=0`"
            ),
            Self::Forbidden => write!(
                f,
                "io_uring_setup is not permitted (EPERM), most likely by a seccomp filter such as Docker's default profile: allow io_uring_setup, io_uring_enter and io_uring_register (e.g. `docker run --security-opt seccomp=<profile>`)"
            ),
            Self::NotSupported => write!(
                f,
                "io_uring is not available (io_uring_setup: ENOSYS): ringmx needs Linux 5.11 or newer built with CONFIG_IO_URING, not hidden by a seccomp filter"
            ),
            Self::Memlock => write!(
                f,
                "io_uring_setup failed for lack of locked memory (ENOMEM): raise RLIMIT_MEMLOCK (`ulimit -l`, LimitMEMLOCK= in the systemd unit)"
            ),
            Self::Other(e) => write!(f, "io_uring_setup failed: {e}"),
        }
    }
}

impl std::error::Error for ProbeError {}

/// Creates a small ring to see whether io_uring works here.
///
/// # Errors
/// [`ProbeError`] naming the cause.
pub fn probe() -> Result<(), ProbeError> {
    match io_uring::IoUring::new(PROBE_ENTRIES) {
        Ok(_ring) => Ok(()),
        Err(e) => Err(classify(e, disabled_sysctl())),
    }
}

/// Maps an `io_uring_setup` (or runtime creation) error to its cause, given the value of
/// `kernel.io_uring_disabled` if the kernel has that sysctl.
pub fn classify(err: io::Error, disabled: Option<u8>) -> ProbeError {
    match err.raw_os_error() {
        Some(libc::EPERM) => match disabled {
            Some(2) => ProbeError::Disabled,
            Some(1) => ProbeError::Restricted,
            _ => ProbeError::Forbidden,
        },
        Some(libc::ENOSYS) => ProbeError::NotSupported,
        Some(libc::ENOMEM) => ProbeError::Memlock,
        _ => ProbeError::Other(err),
    }
}

/// The value of `kernel.io_uring_disabled`, if the kernel has it.
pub fn disabled_sysctl() -> Option<u8> {
    std::fs::read_to_string(DISABLED_SYSCTL)
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errno(n: i32) -> io::Error {
        io::Error::from_raw_os_error(n)
    }

    #[test]
    fn causes_are_named_with_their_fix() {
        let m = |e, d| classify(errno(e), d).to_string();
        assert!(m(libc::EPERM, Some(2)).contains("kernel.io_uring_disabled=2"));
        assert!(m(libc::EPERM, Some(2)).contains("sysctl -w kernel.io_uring_disabled=0"));
        assert!(m(libc::EPERM, Some(1)).contains("io_uring_group"));
        assert!(m(libc::EPERM, Some(0)).contains("seccomp"));
        assert!(m(libc::EPERM, None).contains("seccomp"));
        assert!(m(libc::ENOSYS, None).contains("5.11"));
        assert!(m(libc::ENOMEM, None).contains("RLIMIT_MEMLOCK"));
        assert!(m(libc::EINVAL, None).starts_with("io_uring_setup failed"));
        for e in [libc::EPERM, libc::ENOSYS, libc::ENOMEM, libc::EINVAL] {
            assert!(!m(e, Some(2)).contains('\n'));
        }
    }
}
