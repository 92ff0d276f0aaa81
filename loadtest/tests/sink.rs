//! Runs the `smtp-source` binary against a tiny SMTP sink in this process, on 127.0.0.1:0, and
//! checks the counts, the exit status, the ack log and the stored bytes.
//!
//! The sink keeps every message it accepts (dot-unstuffed) so the test can compare it with
//! `smtp-source --render TOKEN`. Every socket has a read timeout, so nothing here can hang.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;
use common::json_report;

/// How the sink behaves.
#[derive(Clone, Copy, Default)]
struct Behaviour {
    /// Advertise PIPELINING.
    pipelining: bool,
    /// Answer the end of data of every Nth message with 451 (0: never).
    fail_every: u64,
    /// Close the connection instead of answering the Nth end of data (0: never).
    close_at: u64,
}

#[derive(Default)]
struct Seen {
    messages: Vec<Vec<u8>>,
    connections: u64,
    commands: Vec<String>,
}

struct Sink {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
}

fn start_sink(b: Behaviour) -> Sink {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let counter = Arc::new(AtomicU64::new(0));
    let s2 = Arc::clone(&seen);
    std::thread::spawn(move || {
        // Detached: it lives as long as the test process, blocked in accept().
        for conn in listener.incoming().flatten() {
            let seen = Arc::clone(&s2);
            let counter = Arc::clone(&counter);
            std::thread::spawn(move || serve(conn, b, &seen, &counter));
        }
    });
    Sink { addr, seen }
}

fn serve(conn: TcpStream, b: Behaviour, seen: &Mutex<Seen>, counter: &AtomicU64) {
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // One small write per reply: without this, Nagle holds the second reply of a pipelined
    // group until the client's delayed ACK (40 ms).
    conn.set_nodelay(true).expect("nodelay");
    seen.lock().expect("lock").connections += 1;
    let mut out = conn.try_clone().expect("clone");
    let mut r = BufReader::new(conn);
    let _ = out.write_all(b"220 sink.test ESMTP\r\n");
    let mut line = Vec::new();
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let cmd = String::from_utf8_lossy(&line).trim_end().to_string();
        let verb = cmd.split(' ').next().unwrap_or("").to_ascii_uppercase();
        seen.lock().expect("lock").commands.push(verb.clone());
        let reply: &[u8] = match verb.as_str() {
            "EHLO" if b.pipelining => b"250-sink.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
            "EHLO" => b"250-sink.test\r\n250 8BITMIME\r\n",
            "HELO" | "MAIL" | "RCPT" | "RSET" => b"250 ok\r\n",
            "QUIT" => {
                let _ = out.write_all(b"221 bye\r\n");
                return;
            }
            "DATA" => {
                let _ = out.write_all(b"354 go\r\n");
                let mut msg = Vec::new();
                loop {
                    line.clear();
                    match r.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    if line == b".\r\n" {
                        break;
                    }
                    let l = line.strip_prefix(b".").unwrap_or(&line);
                    msg.extend_from_slice(l);
                }
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                if b.close_at != 0 && n == b.close_at {
                    return;
                }
                if b.fail_every != 0 && n % b.fail_every == 0 {
                    b"451 try later\r\n"
                } else {
                    seen.lock().expect("lock").messages.push(msg);
                    b"250 queued\r\n"
                }
            }
            _ => b"500 what\r\n",
        };
        if out.write_all(reply).is_err() {
            return;
        }
    }
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_smtp-source")
}

fn temp(name: &str) -> PathBuf {
    // Cargo's scratch directory for this package's tests (under `target/`): ours alone, unlike a
    // shared /tmp where another user's leftover file of the same name could not be replaced.
    let p = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("smtp-source-it-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

fn run(args: &[&str]) -> (Output, serde_json::Value) {
    json_report(
        Command::new(bin())
            .args(args)
            .args([
                "--json",
                "--timeout",
                "10",
                "-M",
                "src.test",
                "-f",
                "s@src.test",
            ])
            .args(["-t", "r@sink.test"]),
    )
}

fn token_of(msg: &[u8]) -> String {
    let text = String::from_utf8_lossy(msg);
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("Message-ID: <"))
        .expect("Message-ID");
    id.split('@').next().expect("token").to_string()
}

fn check_run(sink: &Sink, args: &[&str], messages: u64, size: &str) {
    let log = temp(&format!("acks-{}", args.join("_").replace('/', "")));
    let m = messages.to_string();
    let mut all: Vec<&str> = vec!["-m", &m, "-l", size, "--ack-log"];
    let log_s = log.to_str().expect("utf-8 path");
    all.push(log_s);
    all.extend_from_slice(args);
    let target = sink.addr.to_string();
    all.push(&target);
    let (out, json) = run(&all);
    assert!(out.status.success(), "exit {:?}: {json}", out.status);
    assert_eq!(json["acked"], messages, "{json}");
    assert_eq!(json["failed"], 0);
    assert_eq!(json["latency_us"]["data_end"]["count"], messages);
    let acks = std::fs::read_to_string(&log).expect("ack log");
    let tokens: Vec<&str> = acks.lines().collect();
    assert_eq!(tokens.len() as u64, messages);
    assert_eq!(
        tokens.iter().collect::<HashSet<_>>().len(),
        tokens.len(),
        "unique"
    );
    let stored: Vec<Vec<u8>> = sink.seen.lock().expect("lock").messages.clone();
    let mut found = 0;
    for msg in &stored {
        let t = token_of(msg);
        if !tokens.contains(&t.as_str()) {
            continue; // another run's message on the same sink
        }
        found += 1;
        let render = Command::new(bin())
            .args([
                "--render",
                &t,
                "-l",
                size,
                "-M",
                "src.test",
                "-f",
                "s@src.test",
            ])
            .args(["-t", "r@sink.test"])
            .output()
            .expect("render");
        assert!(render.status.success());
        assert_eq!(render.stdout, *msg, "byte-exact after unstuffing");
        assert!(String::from_utf8_lossy(msg).contains(&format!("token {t}\r\n")));
    }
    assert_eq!(found, messages);
    let _ = std::fs::remove_file(&log);
}

#[test]
fn pipelined_reused_connections() {
    let sink = start_sink(Behaviour {
        pipelining: true,
        ..Behaviour::default()
    });
    check_run(&sink, &["-s", "4", "-d"], 60, "1024");
    let seen = sink.seen.lock().expect("lock");
    assert_eq!(seen.connections, 4);
    assert_eq!(seen.commands.iter().filter(|c| *c == "QUIT").count(), 4);
}

#[test]
fn lockstep_new_connection_per_message_big_messages() {
    let sink = start_sink(Behaviour::default());
    check_run(&sink, &["-s", "3", "-r", "2"], 9, "100000");
    let seen = sink.seen.lock().expect("lock");
    assert_eq!(seen.connections, 9);
    assert_eq!(seen.commands.iter().filter(|c| *c == "RCPT").count(), 18);
}

#[test]
fn no_pipelining_flag_and_threads() {
    let sink = start_sink(Behaviour {
        pipelining: true,
        ..Behaviour::default()
    });
    check_run(
        &sink,
        &["-s", "4", "-d", "--no-pipelining", "--threads", "2"],
        40,
        "0",
    );
}

#[test]
fn open_loop_rate_with_duration() {
    let sink = start_sink(Behaviour {
        pipelining: true,
        ..Behaviour::default()
    });
    let target = sink.addr.to_string();
    let (out, json) = run(&[
        "-s",
        "2",
        "-d",
        "--rate",
        "200",
        "--duration",
        "0.5",
        &target,
    ]);
    assert!(out.status.success(), "{json}");
    let acked = json["acked"].as_u64().expect("acked");
    // 200/s for 0.5 s is 100 messages; allow for scheduling slack.
    assert!((90..=101).contains(&acked), "{acked}");
    let elapsed = json["elapsed_s"].as_f64().expect("elapsed");
    assert!((0.45..3.0).contains(&elapsed), "{elapsed}");
}

#[test]
fn negative_replies_abort_without_a_and_are_counted_with_a() {
    let sink = start_sink(Behaviour {
        pipelining: true,
        fail_every: 5,
        ..Behaviour::default()
    });
    let target = sink.addr.to_string();
    let (out, json) = run(&["-s", "1", "-d", "-m", "20", "-A", &target]);
    assert!(!out.status.success(), "not all acked: exit 1");
    assert_eq!(json["acked"], 16);
    assert_eq!(json["failed_by_code"]["451"], 4);

    let sink = start_sink(Behaviour {
        pipelining: true,
        fail_every: 3,
        ..Behaviour::default()
    });
    let target = sink.addr.to_string();
    let (out, json) = run(&["-s", "1", "-d", "-m", "20", &target]);
    assert!(!out.status.success());
    assert_eq!(json["aborted"], true);
    assert_eq!(json["failed_by_code"]["451"], 1);
    assert!(json["acked"].as_u64().expect("acked") <= 3, "{json}");
}

#[test]
fn refused_and_closed_connections_are_clear_errors() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let target = format!("127.0.0.1:{port}");
    let (out, json) = run(&["-m", "3", &target]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json["acked"], 0);
    assert_eq!(json["connection_errors"]["refused"], 1);
    assert_eq!(json["first_error"], "connection refused");
    let text = Command::new(bin())
        .args(["-m", "1", &target])
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&text.stderr).contains("nothing delivered: connection refused"));

    let sink = start_sink(Behaviour {
        pipelining: true,
        close_at: 2,
        ..Behaviour::default()
    });
    let target = sink.addr.to_string();
    let (out, json) = run(&["-s", "1", "-d", "-m", "5", "-A", "--no-pipelining", &target]);
    assert!(!out.status.success());
    assert_eq!(json["acked"], 4, "{json}");
    assert_eq!(json["failed_by_code"]["closed"], 1);
    assert_eq!(json["connection_errors"]["closed"], 1);
    assert_eq!(json["connections"], 2);
}

#[test]
fn a_silent_server_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let target = listener.local_addr().expect("addr").to_string();
    // Accept and hold the connection open without a greeting, for longer than the timeout.
    std::thread::spawn(move || {
        let held: Vec<TcpStream> = listener.incoming().take(1).flatten().collect();
        std::thread::sleep(Duration::from_secs(5));
        drop(held);
    });
    let started = std::time::Instant::now();
    let out = Command::new(bin())
        .args(["-m", "2", "--timeout", "0.3", "--json", &target])
        .output()
        .expect("run");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json["connection_errors"]["timeout"], 1, "{json}");
    assert_eq!(json["failed_by_code"]["timeout"], 1);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded by --timeout"
    );
}
