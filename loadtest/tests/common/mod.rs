//! What the loadtest integration tests share: finding the `ringmx` binary of the same build,
//! checking that io_uring works here, and a scratch directory under Cargo's target tmp dir.
//!
//! Each test binary uses only some of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Whether this kernel lets us set up an io_uring instance (not refused by seccomp, by
/// `kernel.io_uring_disabled`, or for lack of locked memory).
pub(crate) fn io_uring_available() -> bool {
    // struct io_uring_params is 120 bytes; zeroed means "no flags".
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup reads and writes only the 120-byte params buffer we own; the fd it
    // returns is closed right away.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 8u32, params.as_mut_ptr()) };
    if fd < 0 {
        return false;
    }
    // SAFETY: fd is the descriptor io_uring_setup just returned to us.
    unsafe { libc::close(fd as libc::c_int) };
    true
}

/// The `smtp-source` binary under test.
pub(crate) fn source() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_smtp-source"))
}

/// The `ringmx` binary next to `smtp-source`, if it is built and io_uring works; otherwise
/// says why the test is skipped.
pub(crate) fn ringmx() -> Option<PathBuf> {
    let ringmx = source().with_file_name("ringmx");
    if !ringmx.exists() {
        eprintln!(
            "SKIPPED: {} is not built (cargo build --workspace --bins)",
            ringmx.display()
        );
        return None;
    }
    if !io_uring_available() {
        eprintln!("SKIPPED: io_uring is not available on this machine (io_uring_setup failed)");
        return None;
    }
    Some(ringmx)
}

/// A scratch directory of this test process under Cargo's target tmp dir, removed when dropped.
pub(crate) struct Scratch(pub(crate) PathBuf);

impl Scratch {
    /// `<CARGO_TARGET_TMPDIR>/<prefix>-<pid>-<name>`, emptied.
    pub(crate) fn new(prefix: &str, name: &str) -> Self {
        let p = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("{prefix}-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("scratch dir");
        Self(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `cmd` (an `smtp-source … --json` command line) and parses its JSON report; panics with
/// its output when the report is not JSON.
pub(crate) fn json_report(
    cmd: &mut std::process::Command,
) -> (std::process::Output, serde_json::Value) {
    let out = cmd.output().expect("run smtp-source");
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "bad JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, json)
}
