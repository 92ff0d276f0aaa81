//! Onward delivery with real next hops on loopback: Postfix's `smtp-sink` as the SMTP (and
//! LMTP) next hop, started by each test on a free port and killed by pid.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::require_io_uring;
use crate::util::{require_tool, run_tool, Client, Server, DOMAIN, RINGMX};

const SINK: &str = "/usr/sbin/smtp-sink";
const WAIT: Duration = Duration::from_secs(20);

/// A free loopback port (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `smtp-sink` on `port`, dumping each transaction into `dump` (killed on drop).
struct Sink(Child);

impl Sink {
    fn start(port: u16, dump: &Path, extra: &[&str]) -> Self {
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
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "smtp-sink did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self(child)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nix_is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() == 0 }
}

fn files(dir: &Path) -> Vec<Vec<u8>> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| std::fs::read(e.path()).ok())
                .collect()
        })
        .unwrap_or_default()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn queue(spool: &Path, args: &[&str]) -> String {
    let out = run_tool(
        Command::new(RINGMX)
            .arg("queue")
            .args(args)
            .arg("--spool")
            .arg(spool),
        Duration::from_secs(10),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn send(server: &Server, n: usize, to: &str) {
    for i in 0..n {
        let mut c = Client::greeted(server.addr);
        c.expect("EHLO client.test", 250);
        let body = format!("Subject: m{i}\r\n\r\nbody {i}\r\n..leading dot\r\n");
        let (code, _) = c.send_message("s@src.test", to, body.as_bytes());
        assert_eq!(code, 250);
    }
}

fn segments(spool: &Path) -> Vec<String> {
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
    wait_for("every message at the sink", || files(&dump).len() >= n);
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
    assert_eq!(queue(&server.spool(), &["ls"]), "");
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
        queue(&server.spool(), &["ls", "--deferred"])
            .lines()
            .count()
            == 3
    });
    let id = server.accepted_ids()[0].clone();
    let shown = queue(&server.spool(), &["show", &id]);
    assert!(shown.contains("deferred attempts="), "{shown}");
    assert!(shown.contains("4.4.1"), "{shown}");
    let _sink = Sink::start(port, &dump, &[]);
    wait_for("delivered after the retry", || files(&dump).len() >= 3);
    wait_for("queue empty", || queue(&server.spool(), &["ls"]).is_empty());
    assert!(server.log().contains("status=sent"));
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
    assert!(server.log().contains("5.1.1") || server.log().contains("dsn=5."));
    assert_eq!(server.stats_json()["delivery"]["failed"].as_u64(), Some(2));
}

#[test]
fn lmtp_next_hop() {
    require_io_uring!();
    require_tool(SINK, "postfix");
    let port = free_port();
    let tmp = tempfile::tempdir().unwrap();
    let dump = tmp.path().join("dump");
    let _sink = Sink::start(port, &dump, &["-L"]);
    let route = format!("lmtp:[127.0.0.1]:{port}");
    let server = Server::start(&["--relay-to", &route]);
    send(&server, 5, &format!("c@{DOMAIN}"));
    wait_for("5 at the LMTP sink", || files(&dump).len() >= 5);
    wait_for("queue empty", || queue(&server.spool(), &["ls"]).is_empty());
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
