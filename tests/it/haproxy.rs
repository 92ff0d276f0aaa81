//! The PROXY protocol from a real balancer: a private HAProxy (Debian's `haproxy`, `mode tcp`,
//! in the foreground as a child of the test, configured in a temporary directory, listening on
//! a free loopback port) in front of ringmx started with `--proxy-protocol-from 127.0.0.1/32`.
//! Clients connect to HAProxy from several 127.0.0.x source addresses; ringmx must see those
//! addresses, not HAProxy's, in `Received:`, its logs and its per-IP limit. HAProxy's own SMTP
//! health check (`option smtpchk`, with `check-send-proxy`) is served without errors.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::require_io_uring;
use crate::util::{body_with_subject, require_tool, spool_cat, Client, Server, DOMAIN};

const HAPROXY: &str = "/usr/sbin/haproxy";
/// Longest wait for HAProxy to listen and mark ringmx UP.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// How HAProxy announces the client to ringmx.
#[derive(Debug, Clone, Copy)]
enum Header {
    /// `send-proxy`: the v1 text line.
    V1,
    /// `send-proxy-v2`: the v2 binary header.
    V2,
}

impl Header {
    fn keyword(self) -> &'static str {
        match self {
            Self::V1 => "send-proxy",
            Self::V2 => "send-proxy-v2",
        }
    }

    fn log_name(self) -> &'static str {
        match self {
            Self::V1 => "header=v1",
            Self::V2 => "header=v2",
        }
    }
}

/// A private HAProxy, killed by its pid when dropped.
struct Haproxy {
    child: Option<Child>,
    /// Holds the configuration and the stats socket.
    dir: tempfile::TempDir,
    /// Where it listens.
    addr: SocketAddr,
    /// What it wrote to stderr (its log, warnings).
    log: Arc<Mutex<String>>,
}

impl Haproxy {
    /// Starts HAProxy in front of `backend`, with `header` on relayed connections and on its
    /// health checks, and waits until it has marked the backend UP.
    fn start(backend: SocketAddr, header: Header) -> Self {
        require_tool(HAPROXY, "haproxy");
        // A free port found by binding port 0 may be taken again before HAProxy binds it:
        // then HAProxy exits at once, and we try another.
        let mut last_log = String::new();
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let cfg = dir.path().join("haproxy.cfg");
            std::fs::write(&cfg, config(addr, backend, header, dir.path())).unwrap();
            let mut child = Command::new(HAPROXY)
                .arg("-f")
                .arg(&cfg)
                .arg("-db")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {HAPROXY}: {e}"));
            let log = Arc::new(Mutex::new(String::new()));
            let mut stderr = child.stderr.take().unwrap();
            {
                let log = log.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = stderr.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        log.lock()
                            .unwrap()
                            .push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                });
            }
            let mut hp = Self {
                child: Some(child),
                dir,
                addr,
                log,
            };
            match hp.wait_up() {
                Ok(()) => return hp,
                Err(why) => last_log = format!("{why}; HAProxy's output:\n{}", hp.log()),
            }
        }
        panic!("HAProxy did not start: {last_log}");
    }

    /// Waits until HAProxy answers on its stats socket with the backend UP; an error when it
    /// exits or the time is up.
    fn wait_up(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return Err(format!("HAProxy exited: {st}"));
            }
            // The stats socket answers only once every listener is bound. (No test connection
            // to the frontend: ringmx would count it as a client that left without QUIT.)
            if self.server_stat().is_some_and(|s| s["status"] == "UP") {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("backend not UP within {START_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("haproxy.sock")
    }

    /// The row of `show stat` for the ringmx server, by column name; `None` if HAProxy does
    /// not answer (yet).
    fn server_stat(&self) -> Option<std::collections::HashMap<String, String>> {
        let mut s = UnixStream::connect(self.socket()).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(b"show stat\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let mut lines = text.lines();
        let names: Vec<&str> = lines.next()?.strip_prefix("# ")?.split(',').collect();
        let row = lines.find(|l| l.starts_with("mx,ringmx,"))?;
        Some(
            names
                .iter()
                .zip(row.split(','))
                .map(|(n, v)| ((*n).to_owned(), v.to_owned()))
                .collect(),
        )
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // By pid: this child only.
            // SAFETY: plain kill(2) on our own child, not yet reaped.
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The configuration: one TCP frontend on `listen`, one backend server (ringmx at `backend`)
/// with the PROXY header on relayed connections and on `option smtpchk` health checks
/// (`check-send-proxy`) every 200 ms; the stats socket and the pid file in `dir`. A check may
/// take up to 10 s once connected (`timeout check`; without it a check slower than `inter`,
/// which a loaded machine can cause, fails), and one failed check does not mark ringmx DOWN.
fn config(listen: SocketAddr, backend: SocketAddr, header: Header, dir: &Path) -> String {
    let sock = dir.join("haproxy.sock");
    let send = header.keyword();
    format!(
        "global
    nbthread 1
    stats socket {sock} mode 600 level admin
    log stderr format raw local0 info
defaults
    mode tcp
    log global
    option tcplog
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend smtp
    bind {listen}
    default_backend mx
backend mx
    option smtpchk
    timeout check 10s
    server ringmx {backend} {send} check check-send-proxy inter 200ms rise 1 fall 3
",
        sock = sock.display(),
    )
}

fn counter(server: &Server, name: &str) -> u64 {
    server.stats_json()["total"]["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name}"))
}

/// The loopback address 127.0.0.`n`.
fn lo(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// Connects to HAProxy from `src` and expects ringmx's greeting through it.
fn via(hp: &Haproxy, src: IpAddr) -> Client {
    let mut c = Client::connect_from(src, hp.addr);
    let (code, text) = c.reply();
    assert_eq!(code, 220, "greeting through HAProxy: {text}");
    c
}

/// The queue id at the end of a `250 2.0.0 Ok queued as <id>` reply.
fn queued_id(text: &str) -> String {
    text.trim_end().rsplit(' ').next().unwrap().to_owned()
}

/// Waits until ringmx has served at least `n` HAProxy health checks (sessions from HAProxy's
/// own address that ended); the server's log so far.
fn wait_checks(server: &Server, hp: &Haproxy, n: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = server.log();
        let checks = log
            .lines()
            .filter(|l| l.contains("disconnect from=127.0.0.1:"))
            .count();
        if checks >= n {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "fewer than {n} health checks served in 10 s; ringmx log:\n{log}\nHAProxy:\n{}",
            hp.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Several clients from 127.0.0.2..=5 send through HAProxy (one with BDAT); ringmx stores and
/// logs their own addresses and serves the health checks, and a direct connection from a
/// client that is not the balancer gets 500 for a PROXY line.
fn relays_with_original_addresses(header: Header) {
    let server = Server::start(&["--proxy-protocol-from", "127.0.0.1/32"]);
    let hp = Haproxy::start(server.addr, header);
    let mut sent = Vec::new();
    for n in 2..=5u8 {
        let mut c = via(&hp, lo(n));
        let local = c.stream.local_addr().unwrap();
        let helo = format!("client{n}.example");
        let ehlo = c.expect(&format!("EHLO {helo}"), 250);
        assert!(ehlo.contains("CHUNKING"), "{ehlo}");
        let body = body_with_subject(&format!("from 127.0.0.{n} via {header:?}"), "relayed");
        let (code, text) = if n == 5 {
            c.expect("MAIL FROM:<a@example.org>", 250);
            c.expect(&format!("RCPT TO:<r@{DOMAIN}>"), 250);
            c.send(format!("BDAT {} LAST\r\n", body.len()).as_bytes());
            c.send(&body);
            c.reply()
        } else {
            c.send_message("a@example.org", &format!("r@{DOMAIN}"), &body)
        };
        assert_eq!(code, 250, "{text}");
        c.expect("QUIT", 221);
        sent.push((n, local, helo, queued_id(&text), body));
    }
    // Not through the balancer: 127.0.0.2 is not in --proxy-protocol-from, so its PROXY line
    // is an unknown command.
    let mut direct = Client::connect_from(lo(2), server.addr);
    assert_eq!(direct.reply().0, 220);
    let (code, text) = direct.cmd("PROXY TCP4 192.0.2.1 127.0.0.1 1 25");
    assert_eq!(code, 500, "{text}");
    direct.expect("QUIT", 221);

    let log = wait_checks(&server, &hp, 3);
    for (n, local, helo, id, body) in &sent {
        let stored = spool_cat(&server.spool(), id);
        let text = String::from_utf8_lossy(&stored);
        let trace = format!("Received: from {helo} ([127.0.0.{n}])\r\n");
        assert!(
            text.starts_with(&trace),
            "{trace:?} not at the start of\n{text}"
        );
        assert!(stored.ends_with(body), "message {id} is not byte-exact");
        for needle in [
            format!("client={local} {}", header.log_name()),
            format!("connect from={local} "),
            format!("accepted id={id} "),
        ] {
            assert!(log.contains(&needle), "{needle:?} not in the log:\n{log}");
        }
        let accepted = log
            .lines()
            .find(|l| l.contains(&format!("accepted id={id} ")))
            .unwrap();
        assert!(
            accepted.ends_with(&format!("client=127.0.0.{n}")),
            "{accepted}"
        );
    }
    // Every relayed and every health-check connection came from HAProxy itself.
    let headers = log.lines().filter(|l| l.contains("proxy from=")).count();
    let from_balancer = log
        .lines()
        .filter(|l| l.contains("proxy from=127.0.0.1:"))
        .count();
    assert_eq!(headers, from_balancer, "{log}");
    assert_health_checks_served(&server, &hp, &log, header);
}

/// HAProxy's health checks were served as ordinary sessions ended by QUIT: HAProxy counts no
/// failed check, ringmx no failed header, no error reply and no session ended otherwise.
fn assert_health_checks_served(server: &Server, hp: &Haproxy, log: &str, header: Header) {
    let stat = hp.server_stat().expect("HAProxy stats");
    assert_eq!(stat["status"], "UP", "{stat:?}");
    assert_eq!(stat["check_status"], "L7OK", "{stat:?}");
    assert_eq!(stat["chkfail"], "0", "{stat:?}");
    assert_eq!(stat["chkdown"], "0", "{stat:?}");
    for line in log.lines().filter(|l| l.contains("from=127.0.0.1:")) {
        if line.contains("disconnect ") {
            assert!(line.contains(" reason=quit "), "{line}");
        }
        if line.contains("proxy from=") {
            assert!(line.contains(header.log_name()), "{line}");
        }
    }
    for name in [
        "connections_proxy_failed",
        "sessions_timeout",
        "sessions_too_many_errors",
        "sessions_disconnected",
        "sessions_io_error",
        "replies_4xx",
        "messages_aborted",
    ] {
        assert_eq!(counter(server, name), 0, "{name}; log:\n{log}");
    }
    // The only 5xx is the untrusted PROXY line.
    assert_eq!(counter(server, "replies_5xx"), 1, "{log}");
}

#[test]
fn haproxy_send_proxy_v1_relays_sessions_with_the_original_client_addresses() {
    require_io_uring!();
    relays_with_original_addresses(Header::V1);
}

#[test]
fn haproxy_send_proxy_v2_relays_sessions_with_the_original_client_addresses() {
    require_io_uring!();
    relays_with_original_addresses(Header::V2);
}

#[test]
fn haproxy_per_ip_limit_applies_to_the_original_client_address() {
    require_io_uring!();
    let server = Server::start(&[
        "--proxy-protocol-from",
        "127.0.0.1/32",
        "--max-connections-per-ip",
        "1",
    ]);
    let hp = Haproxy::start(server.addr, Header::V2);
    // 127.0.0.2 holds its one connection; all of them arrive from HAProxy's 127.0.0.1.
    let mut first = via(&hp, lo(2));
    first.expect("EHLO first.example", 250);
    let mut second = Client::connect_from(lo(2), hp.addr);
    let (code, text) = second.reply();
    assert_eq!(code, 421, "second connection from 127.0.0.2: {text}");
    assert!(second.closed_within(Duration::from_secs(5)));
    // Another client behind the same balancer is admitted and delivers.
    let mut other = via(&hp, lo(3));
    other.expect("EHLO other.example", 250);
    let body = body_with_subject("per-ip", "admitted");
    let (code, text) = other.send_message("a@example.org", &format!("r@{DOMAIN}"), &body);
    assert_eq!(code, 250, "{text}");
    other.expect("QUIT", 221);
    // So is the balancer's own health check, while 127.0.0.2 still holds its connection.
    wait_checks(&server, &hp, 3);
    first.expect("NOOP", 250);
    first.expect("QUIT", 221);
    assert_eq!(counter(&server, "connections_refused_per_ip"), 1);
    let log = server.log_when("reason=max-connections-per-ip", 1, Duration::from_secs(5));
    assert!(
        log.contains("reject from=127.0.0.2:") && log.contains("reason=max-connections-per-ip"),
        "{log}"
    );
    let stat = hp.server_stat().expect("HAProxy stats");
    assert_eq!(stat["status"], "UP", "{stat:?}");
    assert_eq!(stat["chkfail"], "0", "{stat:?}");
}
