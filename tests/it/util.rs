//! Test harness: start the real `ringmx` binary on 127.0.0.1 port 0 with a temporary spool,
//! speak SMTP to it over plain sockets, run external tools with a time limit, read the spool
//! back through `ringmx spool`.
//!
//! Every server is a child process killed when its [`Server`] is dropped; every wait is bounded.

#![allow(dead_code)] // each test module uses a different part of the harness

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// The binary under test.
pub(crate) const RINGMX: &str = env!("CARGO_BIN_EXE_ringmx");
/// The domain every test server accepts mail for.
pub(crate) const DOMAIN: &str = "example.test";
/// Longest a server may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Default socket read timeout of test clients.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether this kernel lets us use io_uring (the server refuses to start otherwise).
pub(crate) fn io_uring_available() -> bool {
    io_uring::IoUring::new(8).is_ok()
}

/// Returns from the test (passing it) with a message when io_uring is unavailable.
#[macro_export]
macro_rules! require_io_uring {
    () => {
        if !$crate::util::io_uring_available() {
            eprintln!("SKIPPED: io_uring is not available on this machine (io_uring_setup failed)");
            return;
        }
    };
}

/// Raises this process's soft fd limit to the hard limit; returns the new soft limit.
pub(crate) fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit struct.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: `lim` is valid with cur == max.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    lim.rlim_cur
}

/// How long the server's log must stay quiet before [`Server::log`] returns it.
const LOG_SETTLE: Duration = Duration::from_millis(25);
/// Longest [`Server::log`] waits for the log to settle.
const LOG_SETTLE_MAX: Duration = Duration::from_millis(500);

/// A running `ringmx serve`.
pub(crate) struct Server {
    child: Option<Child>,
    /// The temporary directory holding the spool (kept alive with the server).
    pub(crate) dir: tempfile::TempDir,
    /// Where it listens (the first `--listen`).
    pub(crate) addr: SocketAddr,
    /// Every address it listens on, in `--listen` order.
    pub(crate) addrs: Vec<SocketAddr>,
    /// Everything it logged so far.
    log: Arc<Mutex<Vec<String>>>,
    /// Set once the log reader has seen the end of the server's stderr.
    log_done: Arc<AtomicBool>,
}

impl Server {
    /// Starts a server with 2 reactors, `--sync group`, and `extra` flags.
    pub(crate) fn start(extra: &[&str]) -> Self {
        Self::start_env(extra, &[])
    }

    /// Like [`Server::start`], with extra environment variables.
    pub(crate) fn start_env(extra: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Self {
        Self::start_custom(extra, env, |_| {})
    }

    /// Like [`Server::start_env`]; `customize` may change the command before it is spawned
    /// (e.g. a `pre_exec` hook that lowers a resource limit).
    pub(crate) fn start_custom(
        extra: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
        customize: impl FnOnce(&mut Command),
    ) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), extra, env, customize)
    }

    /// Stops this server (kill, if it still runs) and starts another on the same spool with
    /// `extra` flags.
    pub(crate) fn restart(mut self, extra: &[&str]) -> Self {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        Self::start_in(dir, extra, &[], |_| {})
    }

    fn start_in(
        dir: tempfile::TempDir,
        extra: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
        customize: impl FnOnce(&mut Command),
    ) -> Self {
        let spool = dir.path().join("spool");
        let mut cmd = Command::new(RINGMX);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--domain", DOMAIN])
            .args(["--hostname", "mx.example.test", "--reactors", "2"])
            .arg("--spool")
            .arg(&spool)
            .args(extra)
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        customize(&mut cmd);
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log_done = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        {
            let log = log.clone();
            let log_done = log_done.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let _ = tx.send(line.clone());
                    log.lock().unwrap().push(line);
                }
                log_done.store(true, Ordering::SeqCst);
            });
        }
        let deadline = Instant::now() + START_TIMEOUT;
        let mut addrs = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(a) = line.split("listening on ").nth(1) {
                        addrs.push(a.trim().parse().unwrap());
                    }
                    if line.contains("ready:") {
                        break;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "server did not start; log:\n{}",
                        log.lock().unwrap().join("\n")
                    );
                }
            }
        }
        Self {
            child: Some(child),
            dir,
            addr: *addrs.first().expect("ready without a listening line"),
            addrs,
            log,
            log_done,
        }
    }

    /// The spool directory.
    pub(crate) fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    /// The stats socket.
    pub(crate) fn stats_path(&self) -> PathBuf {
        self.spool().join("stats.sock")
    }

    /// The server's pid.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Its log so far, once it has settled: the server logs through a writer thread and this
    /// side reads stderr on another, so a line for something a client already saw may still be
    /// on its way. Waits until no line has come for [`LOG_SETTLE`] (at most [`LOG_SETTLE_MAX`]
    /// in all, or less once the server has exited).
    pub(crate) fn log(&self) -> String {
        let deadline = Instant::now() + LOG_SETTLE_MAX;
        let mut seen = self.log.lock().unwrap().len();
        while Instant::now() < deadline && !self.log_done.load(Ordering::SeqCst) {
            std::thread::sleep(LOG_SETTLE);
            let now = self.log.lock().unwrap().len();
            if now == seen {
                break;
            }
            seen = now;
        }
        self.log_now()
    }

    /// Its log so far, without waiting (for polling loops).
    fn log_now(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits until a log line contains `needle`.
    pub(crate) fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        self.log_when(needle, 1, timeout).contains(needle)
    }

    /// Waits until `needle` occurs at least `n` times in the log (the thread reading the
    /// server's stderr may lag behind a client that already has its reply), then returns the
    /// log as it is; the caller checks it.
    pub(crate) fn log_when(&self, needle: &str, n: usize, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log_now();
            if log.matches(needle).count() >= n || Instant::now() >= deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Message ids from its `accepted id=…` log lines.
    ///
    /// The server writes that line to stderr before the 250 goes out, but the thread reading
    /// stderr may lag behind a client that already has its reply; so this first waits (at most
    /// 5 s) until the log holds as many lines as the server's `messages_accepted` counter, or,
    /// once the server has exited, until its stderr is read to the end.
    pub(crate) fn accepted_ids(&self) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let running = self.child.is_some();
        let want = if running {
            self.accepted_counter()
        } else {
            None
        };
        while Instant::now() < deadline {
            let caught_up = match want {
                Some(n) => self.count_log("accepted id=") >= n,
                None => self.log_done.load(Ordering::SeqCst) || running,
            };
            if caught_up {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| l.split("accepted id=").nth(1))
            .map(|rest| rest.split_whitespace().next().unwrap().to_string())
            .collect()
    }

    /// Log lines containing `needle`.
    fn count_log(&self, needle: &str) -> u64 {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count() as u64
    }

    /// `messages_accepted` from the stats socket, if the server answers.
    fn accepted_counter(&self) -> Option<u64> {
        let mut s = std::os::unix::net::UnixStream::connect(self.stats_path()).ok()?;
        s.set_read_timeout(Some(IO_TIMEOUT)).ok()?;
        s.write_all(b"json\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["total"]["counters"]["messages_accepted"].as_u64()
    }

    /// Sends `sig` to the server.
    pub(crate) fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    /// Waits for the server to exit (killing it after `timeout`).
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "server did not exit within {timeout:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Open file descriptors of the server that are sockets.
    pub(crate) fn socket_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| {
                        std::fs::read_link(e.path())
                            .map(|t| t.to_string_lossy().starts_with("socket:"))
                            .unwrap_or(false)
                    })
                    .count()
            })
            .unwrap_or(0)
    }

    /// Resident memory of the server in KiB.
    pub(crate) fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    /// `ringmx stats --stats <socket> <args>` output.
    pub(crate) fn stats(&self, args: &[&str]) -> String {
        let out = run_tool(
            Command::new(RINGMX)
                .arg("stats")
                .arg("--stats")
                .arg(self.stats_path())
                .args(args),
            Duration::from_secs(10),
        );
        assert!(out.status.success(), "ringmx stats failed: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    /// The stats as JSON.
    pub(crate) fn stats_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stats(&["--json"])).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `Command::spawn` that retries while the program is "text file busy" (`ETXTBSY`): right after
/// a test writes an executable (a copy of the binary), a child that another test thread forked
/// meanwhile may still hold the copy's write descriptor until it execs.
trait SpawnRetrying {
    fn spawn_retrying_busy(&mut self) -> std::io::Result<Child>;
}

impl SpawnRetrying for Command {
    fn spawn_retrying_busy(&mut self) -> std::io::Result<Child> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.spawn() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                res => return res,
            }
        }
    }
}

/// A new directory that every user can reach, holding a copy of the binary under test, for
/// tests that run the server as an unprivileged user. The checkout (and so `target/`) may lie
/// under a directory only its owner can enter, such as a home directory at mode 0700, so the
/// binary at [`RINGMX`] may be out of that user's reach. Removed when dropped.
pub(crate) struct Reachable {
    /// The directory (a [`reachable_tempdir`]).
    pub(crate) dir: tempfile::TempDir,
    /// A copy of the binary under test in `dir`, mode 0755.
    pub(crate) bin: PathBuf,
}

impl Reachable {
    pub(crate) fn new() -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = reachable_tempdir("ringmx-reachable.");
        let bin = dir.path().join("ringmx");
        // A copy, not a hard link: the build's own file may be private (umask 077).
        std::fs::copy(RINGMX, &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self { dir, bin }
    }
}

/// A new temporary directory (mode 0755) that every user can reach: under the first of
/// `$TMPDIR`, `/tmp`, `/var/tmp` and `/dev/shm` that every user can search all the way down.
/// Removed when dropped.
pub(crate) fn reachable_tempdir(prefix: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let base = [
        std::env::temp_dir(),
        "/tmp".into(),
        "/var/tmp".into(),
        "/dev/shm".into(),
    ]
    .into_iter()
    .find(|d| searchable_by_all(d))
    .expect("no temporary directory that every user can reach");
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(base)
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Whether `dir` and every directory above it may be searched by any user.
fn searchable_by_all(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Ok(dir) = dir.canonicalize() else {
        return false;
    };
    dir.ancestors().all(|d| {
        std::fs::metadata(d).is_ok_and(|m| m.is_dir() && m.permissions().mode() & 0o001 != 0)
    })
}

/// Sends the message in `data` (without its final CRLF: swaks adds one) to `server` with
/// swaks, as `swaks.example.org`, with `extra` options (`--tls`), and asserts that it succeeded.
pub(crate) fn swaks(server: &Server, data: &Path, extra: &[&str]) {
    let out = run_tool(
        Command::new("swaks")
            .args(["--server", "127.0.0.1"])
            .args(["--port", &server.addr.port().to_string()])
            .args(["--helo", "swaks.example.org"])
            .args(extra)
            .args(["--from", "swaks@example.org"])
            .args(["--to", &format!("rcpt@{DOMAIN}")])
            .args(["--timeout", "20"])
            .arg("--data")
            .arg(data),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "{}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
}

/// Runs `cmd`, killing it after `timeout`; returns its output.
pub(crate) fn run_tool(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn_retrying_busy()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

/// Requires an external program; fails with an install hint if it is missing.
pub(crate) fn require_tool(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: install the `{package}` package (.ci/run does)"
    );
}

/// `ringmx spool ls` output for `spool`.
pub(crate) fn spool_ls(spool: &Path) -> String {
    let out = run_tool(
        Command::new(RINGMX)
            .args(["spool", "ls", "--spool"])
            .arg(spool),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "spool ls failed: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// `ringmx spool cat ID` output (the stored RFC 5322 message).
pub(crate) fn spool_cat(spool: &Path, id: &str) -> Vec<u8> {
    let out = run_tool(
        Command::new(RINGMX)
            .args(["spool", "cat", "--spool"])
            .arg(spool)
            .arg(id),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "spool cat {id} failed: {out:?}");
    out.stdout
}

/// Asserts the stored message `id` is our `Received:` header followed by exactly `body`.
pub(crate) fn assert_stored(spool: &Path, id: &str, body: &[u8]) {
    assert_stored_bytes(id, &spool_cat(spool, id), body);
}

/// Asserts `stored` (message `id` as `ringmx spool cat` prints it) is `Received:` headers
/// followed by exactly `body`.
pub(crate) fn assert_stored_bytes(id: &str, stored: &[u8], body: &[u8]) {
    assert!(
        stored.starts_with(b"Received:"),
        "message {id} does not start with our trace header: {:?}",
        String::from_utf8_lossy(&stored[..stored.len().min(200)])
    );
    assert!(
        stored.ends_with(body),
        "message {id} is not byte-exact.\nstored:\n{}\nexpected tail:\n{}",
        String::from_utf8_lossy(stored),
        String::from_utf8_lossy(body)
    );
    // Nothing but the Received: header (and its folded lines) precedes the body.
    let header_len = stored.len() - body.len();
    let header = &stored[..header_len];
    for line in header.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        assert!(
            line.starts_with(b"Received:") || line.starts_with(b" ") || line.starts_with(b"\t"),
            "unexpected line before the body: {:?}",
            String::from_utf8_lossy(line)
        );
    }
}

/// A minimal SMTP client over a blocking socket.
pub(crate) struct Client {
    /// The socket.
    pub(crate) stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    /// Connects (without reading the greeting).
    pub(crate) fn connect(addr: SocketAddr) -> Self {
        Self::try_connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"))
    }

    /// Connects, returning the error instead of panicking.
    pub(crate) fn try_connect(addr: SocketAddr) -> std::io::Result<Self> {
        Self::wrap(TcpStream::connect_timeout(&addr, IO_TIMEOUT)?)
    }

    /// Connects from the local address `src` (port chosen by the kernel), e.g. `127.0.0.2`:
    /// every 127.0.0.0/8 address is local on Linux, so tests can play several clients.
    pub(crate) fn connect_from(src: std::net::IpAddr, addr: SocketAddr) -> Self {
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .unwrap();
        sock.bind(&SocketAddr::new(src, 0).into())
            .unwrap_or_else(|e| panic!("bind {src}: {e}"));
        sock.connect_timeout(&addr.into(), IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect {addr} from {src}: {e}"));
        Self::wrap(sock.into()).unwrap()
    }

    fn wrap(stream: TcpStream) -> std::io::Result<Self> {
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Self { stream, reader })
    }

    /// Sends raw bytes, returning the error instead of panicking.
    pub(crate) fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Connects and expects the 220 greeting.
    pub(crate) fn greeted(addr: SocketAddr) -> Self {
        let mut c = Self::connect(addr);
        let (code, text) = c.reply();
        assert_eq!(code, 220, "greeting: {text}");
        c
    }

    /// Reads one (possibly multi-line) reply: its code and all its text.
    pub(crate) fn reply(&mut self) -> (u16, String) {
        self.try_reply()
            .unwrap_or_else(|e| panic!("no reply from server: {e}"))
    }

    /// Like [`Client::reply`], but returns an error on EOF or timeout.
    pub(crate) fn try_reply(&mut self) -> std::io::Result<(u16, String)> {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line)?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("connection closed after {text:?}"),
                ));
            }
            text.push_str(&line);
            assert!(line.ends_with("\r\n"), "reply line without CRLF: {line:?}");
            assert!(line.len() >= 5, "short reply line: {line:?}");
            if line.as_bytes()[3] == b' ' {
                let code = line[..3].parse().unwrap();
                return Ok((code, text));
            }
        }
    }

    /// Sends raw bytes.
    pub(crate) fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Sends one command line (CRLF added) and returns the reply.
    pub(crate) fn cmd(&mut self, line: &str) -> (u16, String) {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// Sends a command and asserts the reply code.
    pub(crate) fn expect(&mut self, line: &str, code: u16) -> String {
        let (c, text) = self.cmd(line);
        assert_eq!(c, code, "{line} → {text}");
        text
    }

    /// EHLO, MAIL, RCPT, DATA, body (already dot-stuffed, without terminator), terminator.
    /// Returns the final reply.
    pub(crate) fn send_message(&mut self, from: &str, to: &str, body: &[u8]) -> (u16, String) {
        self.expect(&format!("MAIL FROM:<{from}>"), 250);
        self.expect(&format!("RCPT TO:<{to}>"), 250);
        self.expect("DATA", 354);
        self.send(body);
        self.send(b".\r\n");
        self.reply()
    }

    /// Waits for the server to close the connection: true if it did within `timeout`
    /// (whatever it sent before the close is discarded).
    pub(crate) fn closed_within(&mut self, timeout: Duration) -> bool {
        closed_within(&self.stream, &mut self.reader, timeout)
    }
}

/// Waits for the peer to close `stream`, reading through `reader` (a reader of `stream`, e.g. a
/// `BufReader` over a clone, so nothing it buffered is missed): true if the peer closed or reset
/// it within `timeout`; whatever the peer sent before is discarded. A read interrupted by a
/// signal is retried (a read with `SO_RCVTIMEO` is not restarted, signal(7)); any other error,
/// or the timeout, is reported on stderr and gives false.
pub(crate) fn closed_within(stream: &TcpStream, reader: &mut impl Read, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            eprintln!("closed_within: still open after {timeout:?}");
            return false;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match reader.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                eprintln!("closed_within: read failed: {e}");
                return false;
            }
        }
    }
}

/// A message body with CRLF line endings and a unique Subject.
pub(crate) fn body_with_subject(subject: &str, text: &str) -> Vec<u8> {
    format!(
        "From: <sender@example.org>\r\nTo: <rcpt@{DOMAIN}>\r\nSubject: {subject}\r\n\r\n{text}\r\n"
    )
    .into_bytes()
}
