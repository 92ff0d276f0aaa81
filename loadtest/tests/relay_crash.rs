//! `kill -9` during heavy onward delivery: ringmx relays to Postfix's `smtp-sink` (the next hop,
//! dumping every transaction to a file) while `smtp-source` loads it with an ack log; the server
//! is killed mid-run, restarted on the same spool, and left to drain its queue. Then:
//!
//! - every acknowledged token reached the next hop at least once (at-least-once delivery);
//! - every token that reached it more than once belongs to a message that was *in flight at the
//!   kill*: already at the next hop before the kill, yet still queued in the spool and the
//!   delivery journal as they were left by the kill (its Delivered record was not durable); and
//!   every such message is delivered again. So the duplicates are exactly the messages in
//!   flight at the kill, and a durably recorded delivery is never repeated.
//!
//! Why that bound and not a constant: the delivery thread makes a batch of outcomes durable
//! (one journal fdatasync) while the route's `concurrency` workers go on delivering, so the
//! messages delivered but not yet recorded at any instant are at most `concurrency` × (the
//! transactions one worker completes during one journal sync + 1). The test prints the counts.
//!
//! Loopback only, bounded in time (well under a minute). Skipped, with a message, like the other
//! loadtest tests, when `ringmx` is not built or io_uring is refused.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

const SINK: &str = "/usr/sbin/smtp-sink";
const DOMAIN: &str = "example.test";
/// The shape of every message (flags of smtp-source; `--render` needs the same).
const SHAPE: [&str; 8] = [
    "-M",
    "src.test",
    "-f",
    "sender@src.test",
    "-t",
    "rcpt@example.test",
    "-l",
    "2048",
];
/// Load: messages per second (open loop) and for how long, with this many sessions.
const RATE: &str = "1500";
const LOAD_SECS: &str = "4";
const SESSIONS: &str = "8";
/// When the server is killed, after the load starts.
const KILL_AFTER: Duration = Duration::from_millis(2000);
/// Until the kill the next hop answers each DATA after this many seconds (`smtp-sink -w`), so
/// delivery lags the load and the kill always finds it under way, however fast the machine:
/// with the route's 8 connections, about 8 messages a second reach it. After the kill a
/// prompt next hop takes over on the same port for the drain.
const SLOW_DATA_SECS: &str = "1";
/// Longest wait for a start, for the load to end, or for the queue to drain.
const WAIT: Duration = Duration::from_secs(20);

/// A child killed (SIGKILL) and reaped on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() == 0 }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn start_sink(port: u16, dump: &Path, data_delay: Option<&str>) -> Proc {
    std::fs::create_dir_all(dump).expect("dump dir");
    let mut cmd = Command::new(SINK);
    if is_root() {
        cmd.args(["-u", "root"]);
    }
    if let Some(d) = data_delay {
        cmd.args(["-w", d]);
    }
    let child = cmd
        .arg("-d")
        .arg(format!("{}/%Y%m%d%H%M%S.", dump.display()))
        .arg(format!("127.0.0.1:{port}"))
        .arg("256")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start smtp-sink");
    let sink = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "smtp-sink did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    sink
}

/// Starts `ringmx serve` on `spool` relaying to `sink_port`; returns it and its SMTP address.
fn start_ringmx(ringmx: &Path, spool: &Path, log: &Path, sink_port: u16) -> (Proc, String) {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    let start = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0) as usize;
    let child = Command::new(ringmx)
        .args(["serve", "--listen", "127.0.0.1:0", "--domain", DOMAIN])
        .args(["--hostname", "mx.example.test", "--reactors", "2"])
        .arg("--relay-to")
        .arg(format!("smtp:[127.0.0.1]:{sink_port}"))
        .arg("--spool")
        .arg(spool)
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .expect("start ringmx");
    let mut server = Proc(child);
    let deadline = Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let new = text.get(start..).unwrap_or("");
        if new.contains("ready:") {
            let addr = new
                .lines()
                .find_map(|l| l.split("listening on ").nth(1))
                .expect("a listening line")
                .trim()
                .to_string();
            return (server, addr);
        }
        if let Ok(Some(st)) = server.0.try_wait() {
            panic!("ringmx exited ({st}) during start-up:\n{new}");
        }
        assert!(Instant::now() < deadline, "ringmx did not start:\n{new}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One complete transaction at the sink: the load's token and ringmx's message id.
struct Arrival {
    token: String,
    id: String,
}

/// Every complete transaction dumped in `dir`. A transaction is complete when it ends with the
/// message's last line (`last`): one cut short by the kill is not a delivery.
fn arrivals(dir: &Path, last: &str) -> Vec<Arrival> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.filter_map(Result::ok) {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        // Two transactions in one second may draw the same file name: split them.
        for t in text.split("X-Client-Addr: ").filter(|t| !t.is_empty()) {
            let complete = t.trim_end().lines().last().map(str::trim_end) == Some(last);
            let token = t
                .lines()
                .find_map(|l| l.strip_prefix("token "))
                .map(|s| s.trim().to_string());
            let id = t.split("(ringmx) with ").nth(1).and_then(|r| {
                r.split_whitespace()
                    .skip_while(|w| *w != "id")
                    .nth(1)
                    .map(|s| s.trim_end_matches(';').to_string())
            });
            if let (true, Some(token), Some(id)) = (complete, token, id) {
                out.push(Arrival { token, id });
            }
        }
    }
    out
}

/// Ids of the messages queued in `spool` (read from disk: the server is down).
fn queued_ids(ringmx: &Path, spool: &Path) -> HashSet<String> {
    let out = Command::new(ringmx)
        .args(["queue", "ls", "--json", "--spool"])
        .arg(spool)
        .output()
        .expect("ringmx queue ls");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("queue ls JSON");
            v["id"].as_str().expect("an id").to_string()
        })
        .collect()
}

fn scratch_dir(name: &str) -> common::Scratch {
    common::Scratch::new("relay-crash", name)
}

#[test]
fn kill_9_during_delivery_loses_nothing_and_duplicates_only_in_flight() {
    let source = common::source();
    let Some(ringmx) = common::ringmx() else {
        return;
    };
    assert!(
        Path::new(SINK).exists(),
        "{SINK} is missing: install the `postfix` package (scripts/install-test-deps.sh does)"
    );
    let started = Instant::now();
    let scratch = scratch_dir("kill9");
    let dir: PathBuf = scratch.0.clone();
    let (spool, dump, log, ack) = (
        dir.join("spool"),
        dir.join("dump"),
        dir.join("server.log"),
        dir.join("ack.log"),
    );
    let sink_port = free_port();
    let slow_sink = start_sink(sink_port, &dump, Some(SLOW_DATA_SECS));
    let (mut server, addr) = start_ringmx(&ringmx, &spool, &log, sink_port);

    let mut load = Proc(
        Command::new(source)
            .args(SHAPE)
            .args([
                "-s",
                SESSIONS,
                "-d",
                "--rate",
                RATE,
                "--duration",
                LOAD_SECS,
            ])
            .args(["--timeout", "5", "--ack-log"])
            .arg(&ack)
            .arg(&addr)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start smtp-source"),
    );
    std::thread::sleep(KILL_AFTER);
    // kill -9: nothing is flushed, closed or recorded after this.
    server.0.kill().expect("kill -9 ringmx");
    let _ = server.0.wait();
    let deadline = Instant::now() + WAIT;
    while load.0.try_wait().expect("wait smtp-source").is_none() {
        assert!(Instant::now() < deadline, "smtp-source did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(load);

    let acked: HashSet<String> = std::fs::read_to_string(&ack)
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    assert!(
        !acked.is_empty(),
        "nothing acknowledged before the kill; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // The last line of every message (they all have one shape; the token is in the head).
    let any = acked.iter().next().cloned().unwrap_or_default();
    let rendered = Command::new(source)
        .args(SHAPE)
        .args(["--render", &any])
        .output()
        .expect("smtp-source --render");
    let rendered = String::from_utf8_lossy(&rendered.stdout);
    let last = rendered
        .trim_end()
        .lines()
        .last()
        .map(str::trim_end)
        .unwrap_or_default()
        .to_string();
    assert!(!last.is_empty(), "no rendered message");

    // The state at the kill: what the next hop had, what the spool says is still queued.
    std::thread::sleep(Duration::from_millis(300));
    let before = arrivals(&dump, &last);
    let queued_at_kill = queued_ids(&ringmx, &spool);
    let in_flight: HashSet<&str> = before
        .iter()
        .filter(|a| queued_at_kill.contains(&a.id))
        .map(|a| a.token.as_str())
        .collect();
    assert!(
        !before.is_empty() && !queued_at_kill.is_empty(),
        "the kill did not hit delivery in progress: {} at the next hop, {} queued",
        before.len(),
        queued_at_kill.len()
    );

    // A prompt next hop for the drain (the slow one's sessions die with it: they were ringmx's,
    // and ringmx is gone).
    drop(slow_sink);
    let _sink = start_sink(sink_port, &dump, None);
    // Restart on the same spool and let the queue drain.
    let (mut server, _) = start_ringmx(&ringmx, &spool, &log, sink_port);
    let deadline = Instant::now() + WAIT;
    loop {
        let out = Command::new(&ringmx)
            .args(["queue", "ls", "--spool"])
            .arg(&spool)
            .output()
            .expect("ringmx queue ls");
        if out.status.success() && out.stdout.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the queue did not drain after the restart:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    // SIGTERM: a clean stop (the sink's transactions are all complete by now).
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(server.0.id() as i32, libc::SIGTERM) };
    let _ = server.0.wait();

    let all = arrivals(&dump, &last);
    let mut count: HashMap<&str, usize> = HashMap::new();
    for a in &all {
        *count.entry(a.token.as_str()).or_default() += 1;
    }
    let lost: Vec<&String> = acked
        .iter()
        .filter(|t| !count.contains_key(t.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged message(s) never reached the next hop, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    let duplicated: Vec<&str> = count
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(t, _)| *t)
        .collect();
    let unjustified: Vec<&&str> = duplicated
        .iter()
        .filter(|t| !in_flight.contains(**t))
        .collect();
    eprintln!(
        "relay crash: {} acked, {} at the next hop before the kill, {} queued at the kill, \
         {} in flight (at the next hop and still queued), {} transactions in all, \
         {} duplicated, in {:.1} s",
        acked.len(),
        before.len(),
        queued_at_kill.len(),
        in_flight.len(),
        all.len(),
        duplicated.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        unjustified.is_empty(),
        "delivered again although its delivery was recorded before the kill: {unjustified:?}"
    );
    // And the other way round: a message in flight at the kill is still queued, so the restarted
    // server delivers it again. Duplicates are exactly the messages in flight at the kill.
    let duplicated: HashSet<&str> = duplicated.into_iter().collect();
    assert_eq!(duplicated, in_flight);
    assert!(started.elapsed() < Duration::from_secs(60));
}
