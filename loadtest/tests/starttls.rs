//! `smtp-source --starttls` against the real `ringmx serve` of the same build, on 127.0.0.1:0,
//! with a test CA and certificate made by `openssl` here: messages delivered over TLS are stored
//! byte for byte (checked with `--verify-eml`) and traced as ESMTPS; a wrong name and a server
//! without STARTTLS fail instead of falling back to plaintext.
//!
//! Skipped (with a message) like the crash test when the `ringmx` binary is not built or the
//! kernel refuses io_uring.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

mod common;
use common::{json_report, ringmx, source, Scratch};

const DOMAIN: &str = "example.test";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (the openssl package) must be installed");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

/// A test CA (`ca.pem`) and a certificate for `mx.example.test` it signed (`mx.pem`, `mx.key`).
fn make_certs(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=test CA",
    ]);
    openssl(dir, &ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "mx.key",
        "-out",
        "mx.csr",
        "-subj",
        "/CN=mx.example.test",
    ]);
    openssl(dir, &csr);
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:mx.example.test\n").expect("ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "mx.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            "2",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "mx.pem",
        ],
    );
}

/// A running `ringmx serve`, killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
    spool: PathBuf,
    /// The server's log lines after start-up.
    log: mpsc::Receiver<String>,
}

impl Server {
    fn start(ringmx: &Path, dir: &Path, extra: &[&str]) -> Self {
        let spool = dir.join(format!("spool{}", extra.len()));
        let mut child = Command::new(ringmx)
            .args(["serve", "--listen", "127.0.0.1:0", "--domain", DOMAIN])
            .args(["--hostname", "mx.example.test", "--reactors", "2"])
            .arg("--spool")
            .arg(&spool)
            .args(extra)
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ringmx");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let mut addr = None;
        let mut log = String::new();
        loop {
            let Ok(line) = rx.recv_timeout(Duration::from_secs(20)) else {
                let _ = child.kill();
                panic!("ringmx did not start:\n{log}");
            };
            log.push_str(&line);
            log.push('\n');
            if let Some(a) = line.split("listening on ").nth(1) {
                addr = Some(a.trim().parse().expect("address"));
            }
            if line.contains("ready:") {
                break;
            }
        }
        Self {
            child,
            addr: addr.expect("a listening line"),
            spool,
            log: rx,
        }
    }

    /// Waits (at most 10 s) until the log has `n` lines containing `needle` since the last
    /// call; returns every line read meanwhile.
    fn log_until(&self, needle: &str, n: usize) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut lines = String::new();
        let mut seen = 0;
        while seen < n {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let Ok(line) = self.log.recv_timeout(left) else {
                break;
            };
            seen += usize::from(line.contains(needle));
            lines.push_str(&line);
            lines.push('\n');
        }
        lines
    }

    fn stats(&self, ringmx: &Path) -> serde_json::Value {
        let out = Command::new(ringmx)
            .args(["stats", "--json", "--stats"])
            .arg(self.spool.join("stats.sock"))
            .output()
            .expect("ringmx stats");
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).expect("stats JSON")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const SHAPE: [&str; 6] = [
    "-M",
    "src.test",
    "-f",
    "sender@src.test",
    "-t",
    "rcpt@example.test",
];

fn smtp_source(args: &[&str], target: SocketAddr) -> (Output, serde_json::Value) {
    json_report(
        Command::new(source())
            .args(args)
            .args(SHAPE)
            .args(["--json", "--timeout", "10"])
            .arg(target.to_string()),
    )
}

#[test]
fn starttls_delivers_over_tls_and_never_falls_back() {
    let Some(ringmx) = ringmx() else { return };
    let dir = Scratch::new("starttls", "deliver");
    let d = &dir.0;
    make_certs(d);
    let cert = d.join("mx.pem").display().to_string();
    let key = d.join("mx.key").display().to_string();
    let ca = d.join("ca.pem").display().to_string();
    let server = Server::start(&ringmx, d, &["--tls-cert", &cert, "--tls-key", &key]);

    // Reused connections, certificate checked against the test CA.
    let acks = d.join("acks").display().to_string();
    let (out, json) = smtp_source(
        &[
            "-s",
            "4",
            "-m",
            "200",
            "-d",
            "-l",
            "3000",
            "--starttls",
            "--tls-ca",
            &ca,
            "--tls-name",
            "mx.example.test",
            "--ack-log",
            &acks,
        ],
        server.addr,
    );
    assert!(out.status.success(), "{json}");
    assert_eq!(json["acked"], 200, "{json}");
    assert_eq!(json["tls_handshakes"], 4, "{json}");
    // One connection (and handshake) per message, certificate checks off.
    let (out, json) = smtp_source(
        &[
            "-s",
            "2",
            "-m",
            "20",
            "--starttls",
            "--tls-insecure",
            "-l",
            "3000",
            "--ack-log",
            &acks,
        ],
        server.addr,
    );
    assert!(out.status.success(), "{json}");
    assert_eq!(json["acked"], 20, "{json}");
    assert_eq!(json["tls_handshakes"], 20, "{json}");
    let stats = server.stats(&ringmx);
    let c = &stats["total"]["counters"];
    assert_eq!(c["tls_handshakes"], 24, "{stats}");
    // X25519, not the P-384 that ring's provider lists first (and that costs ~1 ms a handshake).
    let log = server.log_until("starttls from=", 24);
    assert_eq!(log.matches("starttls from=").count(), 24, "{log}");
    assert_eq!(log.matches(" kx=X25519 ").count(), 24, "{log}");
    assert_eq!(c["tls_sessions_v13"], 24, "{stats}");
    assert_eq!(c["messages_accepted"], 220, "{stats}");

    // Every acknowledged message is stored byte for byte, traced as ESMTPS.
    let eml = d.join("eml");
    let out = Command::new(&ringmx)
        .args(["spool", "export", "--spool"])
        .arg(&server.spool)
        .arg("--eml")
        .arg(&eml)
        .output()
        .expect("spool export");
    assert!(out.status.success(), "{out:?}");
    let out = Command::new(source())
        .arg("--verify-eml")
        .arg(&eml)
        .args(["--ack-log", &acks, "-l", "3000"])
        .args(SHAPE)
        .output()
        .expect("verify");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let first = std::fs::read_dir(&eml)
        .expect("eml dir")
        .filter_map(Result::ok)
        .find(|e| e.path().extension().is_some_and(|x| x == "eml"))
        .expect("an exported message");
    let text = std::fs::read_to_string(first.path()).expect("eml");
    assert!(text.contains(" with ESMTPS id "), "{text}");
    assert!(text.contains("(using TLSv1.3 with cipher"), "{text}");

    // A name the certificate does not carry fails the handshake: nothing goes in clear.
    let (out, json) = smtp_source(
        &["--starttls", "--tls-ca", &ca, "--tls-name", "other.test"],
        server.addr,
    );
    assert!(!out.status.success(), "{json}");
    assert_eq!(json["acked"], 0, "{json}");
    assert_eq!(json["failed_by_code"]["tls"], 1, "{json}");
    assert!(
        json["first_error"]
            .as_str()
            .is_some_and(|e| e.contains("certificate")),
        "{json}"
    );

    // A server without certificates answers STARTTLS 502: the run fails, never falls back.
    let plain = Server::start(&ringmx, d, &[]);
    let (out, json) = smtp_source(&["--starttls", "--tls-insecure"], plain.addr);
    assert!(!out.status.success(), "{json}");
    assert_eq!(json["acked"], 0, "{json}");
    assert_eq!(
        plain.stats(&ringmx)["total"]["counters"]["messages_accepted"],
        0
    );
}

#[test]
fn starttls_flags_are_checked() {
    for (args, why) in [
        (&["--starttls"][..], "--tls-ca FILE or --tls-insecure"),
        (&["--tls-insecure"][..], "need --starttls"),
        (
            &["--starttls", "--tls-ca", "/nonexistent/ca.pem"][..],
            "--tls-ca /nonexistent/ca.pem",
        ),
    ] {
        let out = Command::new(source())
            .args(args)
            .arg("127.0.0.1:9")
            .output()
            .expect("run smtp-source");
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{args:?}: {err}");
    }
}
