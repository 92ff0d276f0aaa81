//! A private Dovecot LMTP server for tests that need a real mailbox server as the next hop: its
//! own configuration, `base_dir` (where its unix socket lives), state and log in one temporary
//! directory, LMTP on a free 127.0.0.1 port and on `<dir>/run/lmtp`, users from a passwd-file.
//! The system's Dovecot (`/etc/dovecot`) is never configured, started or touched.
//!
//! Needs the `dovecot-core` and `dovecot-lmtpd` packages (scripts/install-test-deps.sh installs
//! them) and root: the master starts as root and looks users up as root.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::postfix::free_loopback_port;
use crate::util::{reachable_tempdir, require_tool};

/// Whether a private Dovecot can run here; prints why not (the test then passes as skipped)
/// when it cannot. Missing packages are a failure, as for the other peers.
pub(crate) fn dovecot_usable() -> bool {
    require_tool("/usr/sbin/dovecot", "dovecot-core");
    require_tool("/usr/lib/dovecot/lmtp", "dovecot-lmtpd");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: a private Dovecot instance needs root (its master starts as root)");
        return false;
    }
    true
}

/// A running private Dovecot (LMTP only); killed by its pid when dropped.
pub(crate) struct Dovecot {
    dir: tempfile::TempDir,
    child: Child,
    /// Its LMTP TCP listener.
    pub(crate) port: u16,
}

impl Dovecot {
    /// Starts an instance whose users are `users` (full addresses); everyone else is unknown.
    pub(crate) fn start(users: &[&str]) -> Self {
        let dir = reachable_tempdir("ringmx-dovecot.");
        let root = dir.path();
        for d in ["run", "state", "mail"] {
            std::fs::create_dir(root.join(d)).unwrap();
        }
        let passwd: String = users
            .iter()
            .map(|u| format!("{u}:{{PLAIN}}unused::::::\n"))
            .collect();
        std::fs::write(root.join("users"), passwd).unwrap();
        let port = free_loopback_port().port();
        let conf = format!(
            "\
# A private test instance: LMTP only, loopback only.
protocols = lmtp
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
ssl = no
first_valid_uid = 1
mail_location = maildir:{root}/mail/%u
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port}
  }}
}}
passdb {{
  driver = passwd-file
  args = {root}/users
}}
userdb {{
  driver = passwd-file
  args = {root}/users
  default_fields = uid=mail gid=mail home={root}/mail/%u
}}
",
            root = root.display()
        );
        let conf_path = root.join("dovecot.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new("/usr/sbin/dovecot")
            .arg("-F")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let dv = Self { dir, child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !dv.socket().exists() || std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "private dovecot did not listen on 127.0.0.1:{port}; log:\n{}",
                dv.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        dv
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Its LMTP unix socket.
    pub(crate) fn socket(&self) -> PathBuf {
        self.root().join("run/lmtp")
    }

    /// Its log so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.root().join("dovecot.log")).unwrap_or_default()
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of the master this instance started (not reaped yet).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
