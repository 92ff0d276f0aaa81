//! `smtp-source --bdat` and `--proxy v1|v2` against the real ringmx server of the same build on
//! 127.0.0.1:0 (started with `--proxy-protocol-from 127.0.0.1/32`): every acknowledged message
//! is exported from the spool and checked byte for byte with `--verify-eml`, and the server's
//! log names the source addresses the PROXY headers claimed.
//!
//! Like `crash.rs`, the test passes with a message when the `ringmx` binary is not built
//! (`cargo test -p loadtest` alone) or the kernel refuses io_uring.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;
use common::{json_report, ringmx, source, Scratch};

/// Longest a server may take to start, a run to finish, a server to stop.
const LIMIT: Duration = Duration::from_secs(120);

/// A running `ringmx serve`, killed when dropped.
struct Ringmx {
    bin: PathBuf,
    child: Option<Child>,
    port: u16,
    spool: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
}

impl Ringmx {
    fn start(bin: PathBuf, dir: &Path) -> Self {
        let spool = dir.join("spool");
        let mut child = Command::new(&bin)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--domain",
                "example.test",
            ])
            .args(["--hostname", "mx.example.test", "--reactors", "2"])
            .args(["--proxy-protocol-from", "127.0.0.1/32"])
            .arg("--spool")
            .arg(&spool)
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run ringmx");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let _ = tx.send(line.clone());
                    log.lock().expect("lock").push(line);
                }
            });
        }
        let mut port = None;
        loop {
            match rx.recv_timeout(LIMIT) {
                Ok(line) => {
                    if let Some(a) = line.split("listening on 127.0.0.1:").nth(1) {
                        port = a.trim().parse().ok();
                    }
                    if line.contains("ready:") {
                        break;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("ringmx did not start: {:?}", log.lock().expect("lock"));
                }
            }
        }
        Self {
            bin,
            child: Some(child),
            port: port.expect("a listening line"),
            spool,
            log,
        }
    }

    fn target(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGTERM, then waits for the exit; returns the whole log.
    fn stop(&mut self) -> String {
        let mut child = self.child.take().expect("running");
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let started = std::time::Instant::now();
        while child.try_wait().expect("wait").is_none() {
            if started.elapsed() > LIMIT {
                let _ = child.kill();
                panic!("ringmx did not stop");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Give the log reader the last lines.
        std::thread::sleep(Duration::from_millis(100));
        self.log.lock().expect("lock").join("\n")
    }

    /// `ringmx spool export --eml DIR` (after [`Ringmx::stop`]).
    fn export(&self, dir: &Path) {
        let out = Command::new(&self.bin)
            .args(["spool", "export", "--spool"])
            .arg(&self.spool)
            .arg("--eml")
            .arg(dir)
            .output()
            .expect("ringmx spool export");
        assert!(out.status.success(), "export: {out:?}");
    }
}

impl Drop for Ringmx {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The message shape flags of every run (and of its `--verify-eml`).
const SHAPE: [&str; 6] = ["-M", "src.test", "-f", "s@src.test", "-t", "r@example.test"];

fn smtp_source(args: &[&str]) -> (Output, serde_json::Value) {
    json_report(
        Command::new(source())
            .args(args)
            .args(SHAPE)
            .args(["--json", "--timeout", "30"]),
    )
}

/// Runs `args` with an ack log against `server`; every message must be acknowledged.
fn deliver(server: &Ringmx, acks: &Path, messages: u64, size: &str, args: &[&str]) {
    let m = messages.to_string();
    let target = server.target();
    let mut all = vec!["-m", &m, "-l", size, "--ack-log"];
    all.push(acks.to_str().expect("utf-8 path"));
    all.extend_from_slice(args);
    all.push(&target);
    let (out, json) = smtp_source(&all);
    assert!(out.status.success(), "exit {:?}: {json}", out.status);
    assert_eq!(json["acked"], messages, "{json}");
    assert_eq!(json["failed"], 0, "{json}");
    assert_eq!(json["bdat"], true, "{json}");
}

/// Every acknowledged message of `acks` (size `size`) is in `eml` exactly once, byte for byte.
fn verify(eml: &Path, acks: &Path, size: &str, messages: u64) {
    let (out, json) = smtp_source(&[
        "--verify-eml",
        eml.to_str().expect("utf-8 path"),
        "--ack-log",
        acks.to_str().expect("utf-8 path"),
        "-l",
        size,
    ]);
    assert!(out.status.success(), "verify: {json}");
    let text = json.to_string();
    assert!(text.contains(&format!("\"acked\":{messages}")), "{text}");
}

#[test]
fn bdat_with_proxy_headers_is_stored_byte_exact_under_the_claimed_addresses() {
    let Some(bin) = ringmx() else { return };
    let dir = Scratch::new("smtp-source-ringmx", "bdat-proxy");
    let mut server = Ringmx::start(bin, &dir.0);
    // Pipelined BDAT, reused connections, 100 KiB, a v2 header from a new 192.0.2.0/24
    // address per connection.
    let big = dir.0.join("acks-big");
    deliver(
        &server,
        &big,
        200,
        "102400",
        &["-s", "4", "-d", "--bdat", "--proxy", "v2"],
    );
    let varying = dir.0.join("acks-varying");
    deliver(
        &server,
        &varying,
        40,
        "1024",
        &[
            "-s",
            "4",
            "--bdat",
            "--proxy",
            "v2",
            "--proxy-source",
            "203.0.113.0/29",
        ],
    );
    // BDAT after RCPT's reply (no pipelining), a connection per message, a v1 header with one
    // fixed address.
    let fixed = dir.0.join("acks-fixed");
    deliver(
        &server,
        &fixed,
        30,
        "4096",
        &[
            "-s",
            "3",
            "--no-pipelining",
            "--bdat",
            "--proxy",
            "v1",
            "--proxy-source",
            "198.51.100.7:4242",
        ],
    );
    let log = server.stop();
    let eml = dir.0.join("eml");
    server.export(&eml);
    verify(&eml, &big, "102400", 200);
    verify(&eml, &varying, "1024", 40);
    verify(&eml, &fixed, "4096", 30);

    // The server took the claimed addresses: 4 connections from 192.0.2.1-4 (default source),
    // 40 from 203.0.113.1-6, 30 from 198.51.100.7:4242.
    let proxied: Vec<&str> = log.lines().filter(|l| l.contains(" proxy from=")).collect();
    assert_eq!(proxied.len(), 4 + 40 + 30, "{log}");
    assert!(proxied.iter().all(|l| l.contains("proxy from=127.0.0.1:")));
    let v1 = proxied.iter().filter(|l| l.ends_with("header=v1")).count();
    assert_eq!(v1, 30, "{log}");
    assert_eq!(
        log.matches("client=198.51.100.7:4242 header=v1").count(),
        30,
        "{log}"
    );
    for n in 1..=4 {
        assert!(
            log.contains(&format!("client=192.0.2.{n}:")),
            "192.0.2.{n} not in {log}"
        );
    }
    for n in 1..=6 {
        assert!(
            log.contains(&format!("client=203.0.113.{n}:")),
            "203.0.113.{n} not in {log}"
        );
    }
    let accepted: Vec<&str> = log.lines().filter(|l| l.contains("accepted id=")).collect();
    assert_eq!(accepted.len(), 270);
    assert!(
        accepted.iter().all(|l| l.ends_with("client=198.51.100.7")
            || l.contains("client=192.0.2.")
            || l.contains("client=203.0.113.")),
        "{log}"
    );
    // And the Received: headers in the export carry them too.
    let mut traced = 0;
    for e in std::fs::read_dir(&eml).expect("eml dir") {
        let path = e.expect("entry").path();
        if path.extension().is_none_or(|x| x != "eml") {
            continue; // the export's own progress file
        }
        let text = std::fs::read_to_string(&path).expect("eml");
        let first = text.lines().next().unwrap_or("");
        assert!(
            first.starts_with("Received: from src.test ([192.0.2.")
                || first.starts_with("Received: from src.test ([203.0.113.")
                || first == "Received: from src.test ([198.51.100.7])",
            "{first}"
        );
        traced += 1;
    }
    assert_eq!(traced, 270);
}
