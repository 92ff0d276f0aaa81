//! Which CPUs this process may use (`sched_getaffinity`) and pinning a reactor thread to one
//! (`sched_setaffinity`).
//!
//! Pinning is best effort: if the kernel refuses (a cgroup cpuset changed under us, a seccomp
//! filter), the reactor runs unpinned and says so in the log. Nothing here allocates per call
//! beyond the returned list.

use std::io;
use std::mem;

/// The CPU numbers in this process's affinity mask, ascending. Falls back to `0..n` from
/// `available_parallelism` if the mask cannot be read.
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

/// Pins the calling thread to `cpu`.
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
}
