//! A private Postfix instance for tests that need a real MTA as the peer: its own
//! `config_directory`, `queue_directory` and `data_directory` in one temporary directory, its
//! smtpd on a free 127.0.0.1 port, no DNS, a log file instead of syslog. The system's Postfix
//! (`/etc/postfix`, `/var/spool/postfix`) is never configured, started or touched.
//!
//! Needs the `postfix` package (scripts/install-test-deps.sh installs it) and root: the master
//! starts as root and its daemons run as `mail_owner`.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::{reachable_tempdir, require_tool, run_tool};

/// The services the instance runs: Debian's master.cf, without chroot, with the public `smtp`
/// listener replaced by one on 127.0.0.1 (`{SMTPD}`) and nothing that delivers locally.
const MASTER_CF: &str = "\
{SMTPD}   inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
";

/// Whether a private Postfix can run here; prints why not (and the test then passes as
/// skipped) when it cannot. A missing `postfix` package is a failure, as for the other clients.
pub(crate) fn postfix_usable() -> bool {
    require_tool("/usr/sbin/postfix", "postfix");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: a private Postfix instance needs root (its master starts as root)");
        return false;
    }
    true
}

/// A running private Postfix; stopped (and its directory removed) when dropped, so a failing
/// test leaves no Postfix behind.
pub(crate) struct Postfix {
    /// Everything of the instance: `etc/`, `queue/`, `data/`, `maillog`.
    dir: tempfile::TempDir,
    /// Where its smtpd listens.
    pub(crate) smtpd: SocketAddr,
    running: bool,
}

impl Postfix {
    /// Configures and starts an instance that relays all mail to `relayhost` (an address on
    /// 127.0.0.1) with the extra `main.cf` lines `extra` (e.g. the TLS policy), in which
    /// `{DIR}` stands for the instance's directory. `setup` gets that directory before the
    /// start, to place files the daemons read (a CA file).
    pub(crate) fn start(relayhost: SocketAddr, extra: &str, setup: impl FnOnce(&Path)) -> Self {
        // Its daemons run as `postfix`: every directory above the instance must be searchable,
        // wherever the checkout lies.
        let dir = reachable_tempdir("ringmx-postfix.");
        let root = dir.path();
        let etc = root.join("etc");
        let queue = root.join("queue");
        let data = root.join("data");
        for d in [&etc, &queue, &data] {
            std::fs::create_dir(d).unwrap();
        }
        let chown = run_tool(
            Command::new("chown").arg("postfix:postfix").arg(&data),
            Duration::from_secs(10),
        );
        assert!(chown.status.success(), "chown data_directory: {chown:?}");
        setup(root);
        let smtpd = free_loopback_port();
        std::fs::write(
            etc.join("master.cf"),
            MASTER_CF.replace("{SMTPD}", &smtpd.to_string()),
        )
        .unwrap();
        let main_cf = format!(
            "\
# A private test instance: loopback only, no DNS, no local delivery.
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = relay.example.org
mydomain = example.org
myorigin = example.org
mydestination =
mynetworks = 127.0.0.0/8
relay_domains =
relayhost = [{relay_ip}]:{relay_port}
# No DNS at all: the next hop is an address, host names come from /etc/hosts only.
smtp_dns_support_level = disabled
smtp_host_lookup = native
smtpd_peername_lookup = no
# Headers pass through as the test sent them (no rewriting of local clients' headers).
local_header_rewrite_clients =
alias_maps =
alias_database =
local_recipient_maps =
biff = no
# No syslog here: postlogd writes this file.
maillog_file = {log}
maillog_file_prefixes = {root}
{extra}
",
            extra = extra.replace("{DIR}", &root.display().to_string()),
            queue = queue.display(),
            data = data.display(),
            relay_ip = relayhost.ip(),
            relay_port = relayhost.port(),
            log = root.join("maillog").display(),
            root = root.display(),
        );
        std::fs::write(etc.join("main.cf"), main_cf).unwrap();
        let mut pf = Self {
            dir,
            smtpd,
            running: false,
        };
        pf.postfix(&["set-permissions"]);
        pf.postfix(&["check"]);
        pf.running = true;
        pf.postfix(&["start"]);
        // The master binds the smtpd port itself: up once it accepts.
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(smtpd).is_err() {
            assert!(
                Instant::now() < deadline,
                "private postfix did not listen on {smtpd}; maillog:\n{}",
                pf.maillog()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        pf
    }

    /// The instance's directory.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn etc(&self) -> PathBuf {
        self.dir().join("etc")
    }

    /// Runs `postfix -c <etc> <args>`; panics with its output and the log when it fails.
    fn postfix(&self, args: &[&str]) {
        let out = run_tool(
            Command::new("/usr/sbin/postfix")
                .arg("-c")
                .arg(self.etc())
                .args(args),
            Duration::from_secs(30),
        );
        assert!(
            out.status.success(),
            "postfix {args:?} failed: {out:?}\nmaillog:\n{}",
            self.maillog()
        );
    }

    /// Its log so far.
    pub(crate) fn maillog(&self) -> String {
        std::fs::read_to_string(self.dir().join("maillog")).unwrap_or_default()
    }

    /// `postqueue -p`: what is still queued, and why.
    pub(crate) fn queue_listing(&self) -> String {
        let out = run_tool(
            Command::new("/usr/sbin/postqueue")
                .arg("-c")
                .arg(self.etc())
                .arg("-p"),
            Duration::from_secs(10),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The master's pid, from its lock file.
    fn master_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir().join("queue/pid/master.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        if !self.running {
            return;
        }
        let pid = self.master_pid();
        // `postfix stop` signals the master, which stops its daemons and exits; wait for it,
        // and kill it by pid if it lingers (or if `postfix stop` itself failed).
        let _ = Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(self.etc())
            .arg("stop")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let Some(pid) = pid else { return };
        // Gone, or a zombie no one has reaped yet (PID 1 of a container may not reap).
        let alive = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit(')')
                    .next()
                    .map(str::trim_start)
                    .map(|s| &s[..1])
                    != Some("Z")
            })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if alive() {
            // SAFETY: kill(2) on the pid of the master this instance started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Waits (at most 10 s) until `postfix`'s log has `n` lines with `needle` (postlogd writes it
/// asynchronously, after the peer has seen the session), then returns the log as it is; the
/// caller checks it.
pub(crate) fn maillog_when(postfix: &Postfix, needle: &str, n: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = postfix.maillog();
        if log.lines().filter(|l| l.contains(needle)).count() >= n || Instant::now() > deadline {
            return log;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A port on 127.0.0.1 that is free now (the kernel's pick, released at once).
pub(crate) fn free_loopback_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}
