//! Onward delivery with real next hops on loopback: Postfix's `smtp-sink` as the SMTP (and
//! LMTP) next hop, started by each test on a free port and killed by pid. Also `ringmx queue
//! retry|delete` through the running server's control socket, and `BODY=8BITMIME` passed on
//! (smtp-sink's `X-Mail-Args:`) or bounced with 5.6.3 (smtp-sink -8).

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::require_io_uring;
use crate::util::{require_tool, run_tool, Client, Server, DOMAIN, RINGMX};

pub(crate) const SINK: &str = "/usr/sbin/smtp-sink";
pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// A free loopback port (bound, then released).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `smtp-sink` on `port`, dumping each transaction into `dump` (killed on drop).
pub(crate) struct Sink(Child);

impl Sink {
    pub(crate) fn start(port: u16, dump: &Path, extra: &[&str]) -> Self {
        std::fs::create_dir_all(dump).unwrap();
        let mut cmd = Command::new(SINK);
        if nix_is_root() {
            cmd.args(["-u", "root"]);
        }
        let child = cmd
            .args(extra)
            .arg("-d")
            .arg(format!("{}/%Y%m%d%H%M%S.", dump.display()))
            .arg(format!("127.0.0.1:{port}"))
            .arg("100")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut sink = Self(child);
        wait_sink_listening(&mut sink.0, Ipv4Addr::LOCALHOST, port);
        sink
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until the smtp-sink `child` itself listens on `ip:port` (a connect alone could reach
/// another test's listener on a port taken meanwhile, while this one died on its bind);
/// panics if it exits first or is not up within 5 s (the caller kills it on drop).
pub(crate) fn wait_sink_listening(child: &mut Child, ip: Ipv4Addr, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "smtp-sink for {ip}:{port} exited at start ({status}); \
                 the port was probably taken by another test meanwhile"
            );
        }
        if listens_on(child.id(), ip, port) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "smtp-sink did not listen on {ip}:{port} within 5 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether process `pid` holds a TCP socket listening on `ip:port`: a listening row for that
/// address in `/proc/net/tcp` whose socket inode is one of the process's fds.
pub(crate) fn listens_on(pid: u32, ip: Ipv4Addr, port: u16) -> bool {
    // The kernel prints the address as the raw 32-bit word and the port in host order.
    let local = format!("{:08X}:{port:04X}", u32::from_ne_bytes(ip.octets()));
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let sockets: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|row| {
            let f: Vec<&str> = row.split_whitespace().collect();
            // Columns: sl, local, remote, state (0A: LISTEN), queues, timer, retransmits,
            // uid, timeout, inode.
            (f.get(1) == Some(&local.as_str()) && f.get(3) == Some(&"0A"))
                .then(|| format!("socket:[{}]", f.get(9).unwrap_or(&"")))
        })
        .collect();
    if sockets.is_empty() {
        return false;
    }
    std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
        fds.filter_map(Result::ok).any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| sockets.iter().any(|s| target.as_os_str() == s.as_str()))
        })
    })
}

/// A next hop (smtp-sink with `sink_flags`, dumping into `<tmp>/dump`) and a server relaying
/// everything to it over `proto` (`smtp` or `lmtp`).
struct Relayed {
    // Dropped last: the dump lives in it.
    _tmp: tempfile::TempDir,
    dump: std::path::PathBuf,
    _sink: Sink,
    server: Server,
}

fn relayed(proto: &str, sink_flags: &[&str]) -> Relayed {
    let port = free_port();
    let tmp = tempfile::tempdir().unwrap();
    let dump = tmp.path().join("dump");
    let sink = Sink::start(port, &dump, sink_flags);
    let route = format!("{proto}:[127.0.0.1]:{port}");
    let server = Server::start(&["--relay-to", &route]);
    Relayed {
        _tmp: tmp,
        dump,
        _sink: sink,
        server,
    }
}

pub(crate) fn nix_is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() == 0 }
}

pub(crate) fn files(dir: &Path) -> Vec<Vec<u8>> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| std::fs::read(e.path()).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The smtp-sink dumps in `dir` that are written to the end. smtp-sink creates a dump file when
/// a transaction starts and writes it through a buffer, so a file can exist empty, or cut at a
/// buffer boundary, for a moment; it ends every transaction with an empty line.
pub(crate) fn dumps(dir: &Path) -> Vec<Vec<u8>> {
    files(dir)
        .into_iter()
        .filter(|f| f.ends_with(b"\n\n"))
        .collect()
}

pub(crate) fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn queue_output(spool: &Path, args: &[&str]) -> std::process::Output {
    run_tool(
        Command::new(RINGMX)
            .arg("queue")
            .args(args)
            .arg("--spool")
            .arg(spool),
        Duration::from_secs(10),
    )
}

/// How many messages `ringmx queue ls --deferred` lists.
pub(crate) fn deferred_count(spool: &Path) -> usize {
    queue(spool, &["ls", "--deferred"]).lines().count()
}

pub(crate) fn queue(spool: &Path, args: &[&str]) -> String {
    let out = queue_output(spool, args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub(crate) fn send(server: &Server, n: usize, to: &str) {
    for i in 0..n {
        let mut c = Client::greeted(server.addr);
        c.expect("EHLO client.test", 250);
        let body = format!("Subject: m{i}\r\n\r\nbody {i}\r\n..leading dot\r\n");
        let (code, _) = c.send_message("s@src.test", to, body.as_bytes());
        assert_eq!(code, 250);
    }
}

pub(crate) fn segments(spool: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(spool)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    v.sort();
    v
}

#[test]
fn relays_each_message_exactly_once_and_deletes_finished_segments() {
    require_io_uring!();
    require_tool(SINK, "postfix");
    let port = free_port();
    let tmp = tempfile::tempdir().unwrap();
    let dump = tmp.path().join("dump");
    let _sink = Sink::start(port, &dump, &[]);
    let route = format!("smtp:[127.0.0.1]:{port}");
    let mut server = Server::start(&["--relay-to", &route]);
    let n = 30;
    send(&server, n, &format!("rcpt@{DOMAIN}"));
    let ids = server.accepted_ids();
    assert_eq!(ids.len(), n);
    wait_for("every message at the sink", || dumps(&dump).len() >= n);
    std::thread::sleep(Duration::from_millis(300));
    let got = files(&dump);
    assert_eq!(got.len(), n, "no duplicates");
    for id in &ids {
        let needle = format!("id {id}");
        let hits = got
            .iter()
            .filter(|f| memchr::memmem::find(f, needle.as_bytes()).is_some())
            .count();
        assert_eq!(hits, 1, "message {id} arrived {hits} times");
    }
    // Dot-stuffing survives the trip.
    assert!(got
        .iter()
        .all(|f| memchr::memmem::find(f, b"\n.leading dot").is_some()));
    wait_for("delivered counter", || {
        server.stats_json()["delivery"]["delivered"].as_u64() == Some(n as u64)
    });
    // One accept-to-delivered latency per delivered recipient, and at least one attempt.
    let d = &server.stats_json()["delivery"];
    assert_eq!(
        d["delivered_latency_us"]["count"].as_u64(),
        Some(n as u64),
        "{d}"
    );
    assert!(d["delivered_latency_us"]["p50"].as_u64() > Some(0), "{d}");
    assert!(d["attempt_us"]["count"].as_u64() >= Some(1), "{d}");
    wait_for("queue empty", || queue(&server.spool(), &["ls"]).is_empty());
    // After a clean stop the old segments are sealed; the next start deletes them.
    let before = segments(&server.spool());
    assert!(!before.is_empty());
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(WAIT).success());
    let spool = server.spool();
    let out = run_tool(
        Command::new(RINGMX)
            .args(["spool", "check", "--spool"])
            .arg(&spool),
        Duration::from_secs(10),
    );
    assert!(out.status.success());
    let mut restarted = Command::new(RINGMX)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--domain",
            DOMAIN,
            "--reactors",
            "2",
        ])
        .args([
            "--hostname",
            "mx.example.test",
            "--relay-to",
            &route,
            "--spool",
        ])
        .arg(&spool)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deleted = {
        let deadline = Instant::now() + WAIT;
        loop {
            let now = segments(&spool);
            if before.iter().all(|s| !now.contains(s)) {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let _ = restarted.kill();
    let _ = restarted.wait();
    assert!(deleted, "old segments still there: {:?}", segments(&spool));
    assert_eq!(
        files(&dump).len(),
        n,
        "nothing delivered twice after the restart"
    );
}

#[test]
fn next_hop_down_then_up_defers_then_delivers() {
    require_io_uring!();
    require_tool(SINK, "postfix");
    let port = free_port();
    let tmp = tempfile::tempdir().unwrap();
    let dump = tmp.path().join("dump");
    let route = format!("smtp:[127.0.0.1]:{port}");
    let server = Server::start(&[
        "--relay-to",
        &route,
        "--retry-first",
        "1",
        "--retry-max",
        "1",
    ]);
    send(&server, 3, &format!("a@{DOMAIN}"));
    assert!(server.wait_log("status=deferred", WAIT), "{}", server.log());
    wait_for("3 deferred in queue ls", || {
        deferred_count(&server.spool()) == 3
    });
    let id = server.accepted_ids()[0].clone();
    let shown = queue(&server.spool(), &["show", &id]);
    assert!(shown.contains("deferred attempts="), "{shown}");
    assert!(shown.contains("4.4.1"), "{shown}");
    let _sink = Sink::start(port, &dump, &[]);
    wait_for("delivered after the retry", || dumps(&dump).len() >= 3);
    wait_for("queue empty", || queue(&server.spool(), &["ls"]).is_empty());
    assert!(server.wait_log("status=sent", WAIT), "{}", server.log());
}

#[test]
fn permanent_refusal_fails_and_bounces() {
    require_io_uring!();
    require_tool(SINK, "postfix");
    let port = free_port();
    let tmp = tempfile::tempdir().unwrap();
    let _sink = Sink::start(port, &tmp.path().join("dump"), &["-f", "RCPT"]);
    let route = format!("smtp:[127.0.0.1]:{port}");
    let server = Server::start(&["--relay-to", &route]);
    send(&server, 2, &format!("b@{DOMAIN}"));
    assert!(server.wait_log("status=failed", WAIT), "{}", server.log());
    // The failed messages leave the queue; their DSNs to s@src.test take their place (no
    // route for src.test here: they wait, deferred). tests/it/bounce.rs follows DSNs further.
    wait_for("2 DSNs in queue ls", || {
        queue(&server.spool(), &["ls"])
            .lines()
            .filter(|l| l.contains("\t<>\t<s@src.test>="))
            .count()
            == 2
    });
    assert_eq!(queue(&server.spool(), &["ls", "--failed"]), "");
    let ids = server.accepted_ids();
    for id in &ids {
        assert!(!queue(&server.spool(), &["ls"]).contains(id.as_str()));
    }
    let log = server.log_when("dsn=5.", 1, WAIT);
    assert!(log.contains("5.1.1") || log.contains("dsn=5."), "{log}");
    assert_eq!(server.stats_json()["delivery"]["failed"].as_u64(), Some(2));
}

#[test]
fn postmaster_without_a_domain_is_delivered_as_the_first_domains() {
    // RFC 5321 §4.5.1: mail to <Postmaster> must arrive; it is routed as postmaster of our
    // first --domain, over the route the operator set for that domain.
    require_io_uring!();
    require_tool(SINK, "postfix");
    let r = relayed("smtp", &[]);
    send(&r.server, 1, "Postmaster");
    wait_for("the message at the sink", || dumps(&r.dump).len() == 1);
    let text = String::from_utf8_lossy(&dumps(&r.dump)[0]).into_owned();
    assert!(
        text.contains(&format!("X-Rcpt-Args: <Postmaster@{DOMAIN}>")),
        "{text}"
    );
    wait_for("queue empty", || {
        queue(&r.server.spool(), &["ls"]).is_empty()
    });
}

#[test]
fn lmtp_next_hop() {
    require_io_uring!();
    require_tool(SINK, "postfix");
    let r = relayed("lmtp", &["-L"]);
    send(&r.server, 5, &format!("c@{DOMAIN}"));
    wait_for("5 at the LMTP sink", || dumps(&r.dump).len() >= 5);
    wait_for("queue empty", || {
        queue(&r.server.spool(), &["ls"]).is_empty()
    });
}

#[test]
fn without_routes_nothing_is_delivered_or_deleted() {
    require_io_uring!();
    let server = Server::start(&[]);
    send(&server, 2, &format!("d@{DOMAIN}"));
    std::thread::sleep(Duration::from_millis(300));
    assert!(server.stats_json().get("delivery").is_none());
    assert!(!server.spool().join("delivery.journal").exists());
    assert!(!server.log().contains("delivery"));
}

/// How many sink dumps carry ringmx's message id `id` (in its Received: header).
fn arrived(dump: &Path, id: &str) -> usize {
    let needle = format!("id {id}");
    dumps(dump)
        .iter()
        .filter(|f| memchr::memmem::find(f, needle.as_bytes()).is_some())
        .count()
}

/// Sends `n` messages over one connection (so one reactor, one segment, stores them all).
fn send_one_connection(server: &Server, n: usize, to: &str) {
    let mut c = Client::greeted(server.addr);
    c.expect("EHLO client.test", 250);
    for i in 0..n {
        let body = format!("Subject: m{i}\r\n\r\nbody {i}\r\n");
        let (code, _) = c.send_message("s@src.test", to, body.as_bytes());
        assert_eq!(code, 250);
    }
}

/// The flags of a server whose next hop is on `port` and that would wait an hour between tries.
fn long_backoff(route: &str) -> Vec<&str> {
    vec![
        "--relay-to",
        route,
        "--retry-first",
        "3600",
        "--retry-max",
        "3600",
    ]
}

#[test]
fn queue_retry_delivers_a_deferred_message_now() {
    require_io_uring!();
    require_tool(SINK, "postfix");
    let port = free_port();
    let tmp = tempfile::tempdir().unwrap();
    let dump = tmp.path().join("dump");
    let route = format!("smtp:[127.0.0.1]:{port}");
    let server = Server::start(&long_backoff(&route));
    let spool = server.spool();
    send(&server, 3, &format!("r@{DOMAIN}"));
    wait_for("3 deferred", || {
        queue(&spool, &["ls", "--deferred"]).lines().count() == 3
    });
    let ids = server.accepted_ids();
    let _sink = Sink::start(port, &dump, &[]);
    // The hop is up, but the backoff (an hour) holds them.
    std::thread::sleep(Duration::from_millis(500));
    assert!(files(&dump).is_empty(), "delivered before any retry");

    let t = Instant::now();
    let out = queue(&spool, &["retry", &ids[0]]);
    assert_eq!(out, format!("{}: 1 recipient(s) due now\n", ids[0]));
    wait_for("the retried message at the sink", || {
        arrived(&dump, &ids[0]) == 1
    });
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    wait_for("it leaves the queue", || {
        queue(&spool, &["ls"]).lines().count() == 2
    });
    let left = queue(&spool, &["ls"]);
    assert!(!left.contains(&ids[0]), "{left}");
    assert_eq!(arrived(&dump, &ids[1]) + arrived(&dump, &ids[2]), 0);
    assert!(server.wait_log(&format!("delivery id={} retry requested", ids[0]), WAIT));

    let out = queue(&spool, &["retry", "--all"]);
    assert_eq!(out, "2 recipient(s) due now\n");
    wait_for("every message at the sink", || dumps(&dump).len() == 3);
    wait_for("queue empty", || queue(&spool, &["ls"]).is_empty());
    for id in &ids {
        assert_eq!(arrived(&dump, id), 1, "{id}");
    }
    // Nothing left: `retry --all` touches nothing.
    assert_eq!(
        queue(&spool, &["retry", "--all"]),
        "0 recipient(s) due now\n"
    );
}

#[test]
fn queue_delete_is_durable_and_the_message_is_never_delivered() {
    require_io_uring!();
    require_tool(SINK, "postfix");
    let port = free_port();
    let tmp = tempfile::tempdir().unwrap();
    let dump = tmp.path().join("dump");
    let route = format!("smtp:[127.0.0.1]:{port}");
    let flags = long_backoff(&route);
    let mut server = Server::start(&flags);
    // Both in one segment: the deleted message's segment stays (pinned by the other), so the
    // record of the deletion must survive the journal's compaction at each restart.
    send_one_connection(&server, 2, &format!("x@{DOMAIN}"));
    wait_for("2 deferred", || deferred_count(&server.spool()) == 2);
    let ids = server.accepted_ids();
    let (gone, kept) = (&ids[0], &ids[1]);
    let out = queue(&server.spool(), &["delete", gone]);
    assert_eq!(
        out,
        format!("{gone}: deleted (1 recipient(s) not delivered)\n")
    );
    assert!(server.wait_log(&format!("delivery id={gone} deleted by the operator"), WAIT));
    let ls = queue(&server.spool(), &["ls"]);
    assert_eq!(ls.lines().count(), 1, "{ls}");
    assert!(ls.starts_with(kept.as_str()), "{ls}");
    // Gone for the server too.
    let out = queue_output(&server.spool(), &["retry", gone]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("ringmx queue: no message {gone} in the queue\n")
    );
    // Two restarts (each compacts the journal), then the hop comes up and everything is retried.
    for _ in 0..2 {
        server.signal(libc::SIGTERM);
        assert!(server.wait_exit(WAIT).success());
        server = server.restart(&flags);
        let ls = queue(&server.spool(), &["ls"]);
        assert_eq!(ls.lines().count(), 1, "after a restart: {ls}");
        assert!(ls.starts_with(kept.as_str()), "{ls}");
    }
    let _sink = Sink::start(port, &dump, &[]);
    assert_eq!(
        queue(&server.spool(), &["retry", "--all"]),
        "1 recipient(s) due now\n"
    );
    wait_for("the kept message at the sink", || arrived(&dump, kept) == 1);
    wait_for("queue empty", || queue(&server.spool(), &["ls"]).is_empty());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(arrived(&dump, gone), 0, "the deleted message was delivered");
    assert_eq!(files(&dump).len(), 1);
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(WAIT).success());
    let out = run_tool(
        Command::new(RINGMX)
            .args(["spool", "check", "--spool"])
            .arg(server.spool()),
        Duration::from_secs(10),
    );
    assert!(out.status.success(), "{out:?}");
    let report = String::from_utf8_lossy(&out.stdout);
    let journal = report
        .lines()
        .find(|l| l.starts_with("delivery.journal"))
        .unwrap_or_else(|| panic!("no journal line: {report}"));
    assert!(journal.contains("\tdeleted 1"), "{journal}");
    assert!(!journal.contains("torn tail"), "{journal}");
}

#[test]
fn queue_retry_and_delete_errors() {
    use std::os::unix::fs::PermissionsExt;
    require_io_uring!();
    let port = free_port();
    let route = format!("smtp:[127.0.0.1]:{port}");
    let mut server = Server::start(&long_backoff(&route));
    let spool = server.spool();
    let sock = spool.join("control.sock");
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    send(&server, 1, &format!("e@{DOMAIN}"));
    let id = server.accepted_ids()[0].clone();
    // A well-formed id that is not queued: the real one with its last character changed.
    let mut unknown = id.clone();
    let last = if id.ends_with('0') { "2" } else { "0" };
    unknown.replace_range(id.len() - 1.., last);
    for cmd in ["retry", "delete"] {
        let out = queue_output(&spool, &[cmd, &unknown]);
        assert_eq!(out.status.code(), Some(1), "{cmd}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!("ringmx queue: no message {unknown} in the queue\n")
        );
        let out = queue_output(&spool, &[cmd, "nonsense"]);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("\"nonsense\" is not a message id"),
            "{out:?}"
        );
    }
    // Neither an id nor --all, or both: a usage error.
    assert_eq!(queue_output(&spool, &["retry"]).status.code(), Some(2));
    assert_eq!(
        queue_output(&spool, &["retry", &id, "--all"]).status.code(),
        Some(2)
    );

    // The server stops: the socket goes, retry and delete say so; ls and show still work.
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(WAIT).success());
    assert!(!sock.exists());
    let not_running = |args: &[&str]| {
        let out = queue_output(&spool, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with("ringmx queue: the server is not running"),
            "{err}"
        );
    };
    not_running(&["retry", "--all"]);
    not_running(&["delete", &id]);
    assert_eq!(queue(&spool, &["ls"]).lines().count(), 1);
    assert!(queue(&spool, &["show", &id]).contains(&id));
    // A socket file left behind by a crash (nobody listening): refused, same answer.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    not_running(&["retry", &id]);
}

/// Two MX hosts that each send `loop.test` to the other (a routing loop between two servers):
/// every hop adds a `Received:` field, so after `--max-hops` the receiving side refuses the
/// message with 554 5.4.6 at the end of data, the sending side fails it, and the sender gets
/// one DSN. The loop dies after a bounded number of hops, not a storm.
#[test]
fn a_routing_loop_between_two_hosts_ends_with_554_5_4_6_and_one_dsn() {
    require_io_uring!();
    require_tool(SINK, "postfix");
    let tmp = tempfile::tempdir().unwrap();
    let (pa, pb, sink_port) = (free_port(), free_port(), free_port());
    let bounces = tmp.path().join("bounces");
    let _sink = Sink::start(sink_port, &bounces, &[]);
    let config = |name: &str, other: u16| {
        let path = tmp.path().join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "[routes]\n\"loop.test\" = \"smtp:[127.0.0.1]:{other}\"\n\"src.test\" = \"smtp:[127.0.0.1]:{sink_port}\"\n"
            ),
        )
        .unwrap();
        path
    };
    let (ca, cb) = (config("a", pb), config("b", pa));
    let hops = "10";
    let listen_a = format!("127.0.0.1:{pa}");
    let listen_b = format!("127.0.0.1:{pb}");
    let a = Server::start(&[
        "--listen",
        &listen_a,
        "--domain",
        "loop.test",
        "--max-hops",
        hops,
        "--config",
        ca.to_str().unwrap(),
    ]);
    let b = Server::start(&[
        "--listen",
        &listen_b,
        "--domain",
        "loop.test",
        "--max-hops",
        hops,
        "--config",
        cb.to_str().unwrap(),
    ]);
    send(&a, 1, "user@loop.test");
    let deadline = Instant::now() + WAIT;
    while dumps(&bounces).is_empty() {
        assert!(
            Instant::now() < deadline,
            "no DSN; A:\n{}\nB:\n{}",
            a.log(),
            b.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Let any second bounce arrive before counting.
    std::thread::sleep(Duration::from_secs(1));
    let dsns = dumps(&bounces);
    assert_eq!(dsns.len(), 1, "one DSN for one looping message");
    let dsn = String::from_utf8_lossy(&dsns[0]);
    assert!(dsn.contains("report-type=delivery-status"), "{dsn}");
    assert!(dsn.contains("5.4.6"), "{dsn}");
    // About `hops` transfers in all, counted from both logs' sent lines.
    let sent = |s: &Server| s.log().matches("status=sent").count();
    let total = sent(&a) + sent(&b);
    assert!(
        (5..=12).contains(&total),
        "{total} transfers before the loop was cut (max-hops {hops})"
    );
    wait_for("both queues empty", || {
        queue(&a.spool(), &["ls"]).is_empty() && queue(&b.spool(), &["ls"]).is_empty()
    });
}

/// One transaction with MAIL parameters `params` (`BODY=8BITMIME`, `SMTPUTF8`); asserts the
/// 250.
pub(crate) fn send_with(server: &Server, from: &str, params: &str, to: &str, body: &[u8]) {
    let mut c = Client::greeted(server.addr);
    c.expect("EHLO client.test", 250);
    c.expect(&format!("MAIL FROM:<{from}> {params}"), 250);
    c.expect(&format!("RCPT TO:<{to}>"), 250);
    c.expect("DATA", 354);
    c.send(body);
    c.send(b".\r\n");
    assert_eq!(c.reply().0, 250);
}

/// The `X-Mail-Args:` line of the smtp-sink dump of ringmx's message `id`.
fn mail_args(dump: &Path, id: &str) -> String {
    let needle = format!("id {id}");
    let files = dumps(dump);
    let f = files
        .iter()
        .find(|f| memchr::memmem::find(f, needle.as_bytes()).is_some())
        .unwrap_or_else(|| panic!("{id} not at the sink"));
    let text = String::from_utf8_lossy(f);
    text.lines()
        .find_map(|l| l.strip_prefix("X-Mail-Args:"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// RFC 6152: `BODY=8BITMIME` goes on to a next hop offering 8BITMIME; to one without it
/// (smtp-sink -8) a message declared 8BITMIME with 8-bit content fails with 5.6.3 (no
/// conversion) and its sender gets a DSN, while one declared 8BITMIME that is all 7-bit goes
/// without `BODY=`. Over LMTP (LHLO keywords) the same.
#[test]
fn body_8bitmime_is_passed_on_or_the_message_bounces_5_6_3() {
    require_io_uring!();
    require_tool(SINK, "postfix");
    let eight = "Subject: menu\r\n\r\ncaf\u{e9} cr\u{e8}me br\u{fb}l\u{e9}e\r\n".as_bytes();
    let seven = b"Subject: menu\r\n\r\ntea\r\n";
    for (proto, sink_flags) in [("smtp", &[][..]), ("lmtp", &["-L"][..])] {
        // Offered: the parameter goes on, the bytes unchanged.
        let r = relayed(proto, sink_flags);
        send_with(
            &r.server,
            "s@src.test",
            "BODY=8BITMIME",
            &format!("a@{DOMAIN}"),
            eight,
        );
        let id = r.server.accepted_ids()[0].clone();
        wait_for("the message at the sink", || arrived(&r.dump, &id) == 1);
        let args = mail_args(&r.dump, &id);
        assert!(args.contains("BODY=8BITMIME"), "{proto}: {args}");
        let got = &dumps(&r.dump)[0];
        let line = "caf\u{e9} cr\u{e8}me br\u{fb}l\u{e9}e".as_bytes();
        assert!(
            memchr::memmem::find(got, line).is_some(),
            "8-bit bytes unchanged: {}",
            String::from_utf8_lossy(got)
        );

        // Not offered: 5.6.3 for the 8-bit one, the 7-bit one goes without BODY=.
        let mut flags = vec!["-8"];
        flags.extend_from_slice(sink_flags);
        let Relayed {
            _tmp,
            dump,
            _sink,
            server,
        } = relayed(proto, &flags);
        send_with(
            &server,
            "s@src.test",
            "BODY=8BITMIME",
            &format!("a@{DOMAIN}"),
            eight,
        );
        send_with(
            &server,
            "s@src.test",
            "BODY=8BITMIME",
            &format!("b@{DOMAIN}"),
            seven,
        );
        let ids = server.accepted_ids();
        let log = server.log_when("status=failed", 1, WAIT);
        assert!(
            log.contains(&format!("delivery id={} to=<a@{DOMAIN}>", ids[0]))
                && log.contains("dsn=5.6.3 status=failed"),
            "{log}"
        );
        wait_for("the 7-bit message at the sink", || {
            arrived(&dump, &ids[1]) == 1
        });
        let args = mail_args(&dump, &ids[1]);
        assert!(!args.contains("BODY"), "{proto}: {args}");
        assert_eq!(arrived(&dump, &ids[0]), 0, "the 8-bit one is not sent");
        // Its sender gets a DSN (no route for src.test here: it waits in the queue).
        wait_for("the DSN in the queue", || {
            queue(&server.spool(), &["ls"]).contains("\t<>\t<s@src.test>=")
        });
    }
}
