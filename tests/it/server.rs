//! `ringmx serve` over real loopback sockets: byte-level SMTP edge cases, timeouts, limits,
//! many idle connections, shutdown, stats socket, command line.

use std::io::Write;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::require_io_uring;
use crate::util::{
    assert_stored, body_with_subject, raise_fd_limit, run_tool, spool_ls, Client, Server, DOMAIN,
    RINGMX,
};

fn rcpt() -> String {
    format!("rcpt@{DOMAIN}")
}

#[test]
fn pipelined_batch_one_byte_per_write() {
    require_io_uring!();
    let server = Server::start(&[]);
    let mut c = Client::greeted(server.addr);
    let batch = format!(
        "EHLO client.example.org\r\nMAIL FROM:<s@example.org>\r\nRCPT TO:<{}>\r\nDATA\r\n",
        rcpt()
    );
    for b in batch.as_bytes() {
        c.send(&[*b]);
    }
    let (code, ehlo) = c.reply();
    assert_eq!(code, 250, "{ehlo}");
    assert!(ehlo.contains("PIPELINING"), "{ehlo}");
    assert_eq!(c.reply().0, 250);
    assert_eq!(c.reply().0, 250);
    assert_eq!(c.reply().0, 354);
    let body = body_with_subject("one byte at a time", "..dot-stuffed line\r\nend");
    let mut wire = body.clone();
    wire.extend_from_slice(b".\r\n");
    for b in &wire {
        c.send(&[*b]);
    }
    let (code, text) = c.reply();
    assert_eq!(code, 250, "{text}");
    c.expect("QUIT", 221);
    let ids = server.accepted_ids();
    assert_eq!(ids.len(), 1, "{}", server.log());
    // Dot-stuffing undone: "..dot" is stored as ".dot".
    let stored = body_with_subject("one byte at a time", ".dot-stuffed line\r\nend");
    assert_stored(&server.spool(), &ids[0], &stored);
}

#[test]
fn terminator_split_four_ways() {
    require_io_uring!();
    let server = Server::start(&[]);
    let mut c = Client::greeted(server.addr);
    c.expect("EHLO client.example.org", 250);
    let term = b"\r\n.\r\n";
    let mut expected = Vec::new();
    for split in 1..=4 {
        c.expect("MAIL FROM:<s@example.org>", 250);
        c.expect(&format!("RCPT TO:<{}>", rcpt()), 250);
        c.expect("DATA", 354);
        let subject = format!("split {split}");
        let body = body_with_subject(&subject, "line");
        // The body ends with CRLF; the terminator's own CRLF is that one.
        let head = &body[..body.len() - 2];
        c.send(head);
        c.send(&term[..split]);
        std::thread::sleep(Duration::from_millis(100));
        c.send(&term[split..]);
        let (code, text) = c.reply();
        assert_eq!(code, 250, "split {split}: {text}");
        expected.push(body);
    }
    c.expect("QUIT", 221);
    let ids = server.accepted_ids();
    assert_eq!(ids.len(), 4, "{}", server.log());
    for (id, body) in ids.iter().zip(&expected) {
        assert_stored(&server.spool(), id, body);
    }
}

#[test]
fn smuggling_attempt_leaves_no_second_message() {
    require_io_uring!();
    let server = Server::start(&[]);
    let mut c = Client::greeted(server.addr);
    c.expect("EHLO client.example.org", 250);
    c.expect("MAIL FROM:<s@example.org>", 250);
    c.expect(&format!("RCPT TO:<{}>", rcpt()), 250);
    c.expect("DATA", 354);
    let attack = format!(
        "Subject: innocent\r\n\r\nhello\n.\r\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<victim@{DOMAIN}>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n.\r\n"
    );
    c.send(attack.as_bytes());
    let (code, text) = c.reply();
    assert!(
        (500..600).contains(&code),
        "a message with a bare LF must be refused, got {text}"
    );
    // Whatever the server does with the rest, nothing may be stored.
    let _ = c.cmd("QUIT");
    drop(c);
    std::thread::sleep(Duration::from_millis(200));
    assert!(server.accepted_ids().is_empty(), "{}", server.log());
    let ls = spool_ls(&server.spool());
    assert!(!ls.contains("smuggled") && !ls.contains("evil"), "{ls}");
    let stats = server.stats_json();
    assert_eq!(stats["total"]["counters"]["messages_accepted"], 0);
}

#[test]
fn idle_client_is_cut_at_idle_timeout_and_its_fd_closed() {
    require_io_uring!();
    let server = Server::start(&["--idle-timeout", "1"]);
    let baseline = server.socket_fds();
    // Before the silent client connects: its idle timer cannot have started earlier.
    let start = Instant::now();
    let mut silent = Client::greeted(server.addr);
    // A client dripping one byte at a time never finishes a command: cut off too.
    let mut drip = Client::greeted(server.addr);
    let dripping = Arc::new(AtomicBool::new(true));
    let drip_thread = {
        let mut s = drip.stream.try_clone().unwrap();
        let dripping = dripping.clone();
        std::thread::spawn(move || {
            for b in b"EHLO a-very-slow-client.example.org"
                .iter()
                .cycle()
                .take(40)
            {
                if !dripping.load(Ordering::SeqCst) || s.write_all(&[*b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    assert_eq!(server.socket_fds(), baseline + 2);
    let (code, text) = silent.reply();
    assert_eq!(code, 421, "{text}");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(4),
        "cut after {waited:?}"
    );
    assert!(silent.closed_within(Duration::from_secs(3)));
    let (code, text) = drip.reply();
    assert_eq!(code, 421, "dripping client: {text}");
    assert!(drip.closed_within(Duration::from_secs(3)));
    dripping.store(false, Ordering::SeqCst);
    drip_thread.join().unwrap();
    // The server's side of both sockets is really closed, not just shut down.
    let deadline = Instant::now() + Duration::from_secs(3);
    while server.socket_fds() > baseline && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        server.socket_fds(),
        baseline,
        "idle clients' fds still open"
    );
    let stats = server.stats_json();
    assert_eq!(stats["total"]["counters"]["sessions_timeout"], 2);
}

#[test]
fn two_thousand_idle_connections_get_220_in_bounded_memory() {
    require_io_uring!();
    const CONNECTIONS: usize = 2000;
    let limit = raise_fd_limit();
    if limit < (2 * CONNECTIONS + 200) as u64 {
        eprintln!(
            "SKIPPED: RLIMIT_NOFILE hard limit {limit} is too low for {CONNECTIONS} connections"
        );
        return;
    }
    let server = Server::start(&[]);
    let mut clients = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        clients.push(Client::connect(server.addr));
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let (code, text) = c.reply();
        assert_eq!(code, 220, "connection {i}: {text}");
    }
    let rss = server.rss_kib();
    assert!(
        rss < 256 * 1024,
        "server RSS {rss} KiB with {CONNECTIONS} idle connections"
    );
    let stats = server.stats_json();
    assert_eq!(
        stats["total"]["counters"]["connections_active"],
        CONNECTIONS as u64
    );
    eprintln!(
        "RSS with {CONNECTIONS} idle connections: {} MiB",
        rss / 1024
    );
    // They still work.
    clients[CONNECTIONS - 1].expect("EHLO last.example.org", 250);
    clients[0].expect("QUIT", 221);
}

#[test]
fn client_disconnecting_mid_data_leaves_nothing() {
    require_io_uring!();
    let server = Server::start(&[]);
    {
        let mut c = Client::greeted(server.addr);
        c.expect("EHLO client.example.org", 250);
        c.expect("MAIL FROM:<s@example.org>", 250);
        c.expect(&format!("RCPT TO:<{}>", rcpt()), 250);
        c.expect("DATA", 354);
        c.send(&body_with_subject("never finished", &"x".repeat(200_000)));
        c.send(b"\r\n.");
        // Dropped here: the connection closes one byte short of the terminator.
    }
    assert!(
        server.wait_log("aborted", Duration::from_secs(5)),
        "{}",
        server.log()
    );
    assert!(server.accepted_ids().is_empty());
    let ls = spool_ls(&server.spool());
    assert!(!ls.contains("never finished"), "{ls}");
    let stats = server.stats_json();
    assert_eq!(stats["total"]["counters"]["messages_aborted"], 1);
    assert_eq!(stats["total"]["counters"]["messages_accepted"], 0);
}

#[test]
fn connection_limits_answer_421() {
    require_io_uring!();
    let server = Server::start(&["--max-connections", "3", "--max-connections-per-ip", "2"]);
    let _a = Client::greeted(server.addr);
    let _b = Client::greeted(server.addr);
    let mut c = Client::connect(server.addr);
    let (code, text) = c.reply();
    assert_eq!(code, 421, "{text}");
    assert!(text.starts_with("421 4.7.0"), "{text}");
    assert!(c.closed_within(Duration::from_secs(3)));
    drop(_b);
    // The slot comes back once the server has seen the close.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut d = Client::connect(server.addr);
        let (code, _) = d.reply();
        if code == 220 {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let stats = server.stats_json();
    assert!(stats["total"]["counters"]["connections_refused_per_ip"].as_u64() >= Some(1));
    assert!(
        server.wait_log("reason=max-connections-per-ip", Duration::from_secs(10)),
        "{}",
        server.log()
    );
}

#[test]
fn total_connection_limit_answers_421() {
    require_io_uring!();
    let server = Server::start(&["--max-connections", "1"]);
    let _a = Client::greeted(server.addr);
    let mut b = Client::connect(server.addr);
    let (code, text) = b.reply();
    assert_eq!(code, 421, "{text}");
    assert!(text.starts_with("421 4.7.0"), "{text}");
    assert_eq!(
        server.stats_json()["total"]["counters"]["connections_refused_limit"],
        1
    );
}

#[test]
fn stats_socket_answers_text_json_and_prometheus() {
    require_io_uring!();
    let server = Server::start(&["--sync", "none"]);
    assert!(server.log().contains("--sync none"), "{}", server.log());
    let mut c = Client::greeted(server.addr);
    c.expect("EHLO client.example.org", 250);
    let (code, text) = c.send_message("s@example.org", &rcpt(), &body_with_subject("stats", "x"));
    assert_eq!(code, 250, "{text}");
    c.expect("QUIT", 221);
    let mode = std::fs::metadata(server.stats_path()).unwrap();
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    assert!(mode.file_type().is_socket());
    assert_eq!(mode.permissions().mode() & 0o777, 0o660);

    let text = server.stats(&[]);
    assert!(text.contains("sync none"), "{text}");
    assert!(text.contains("ack latency (us)"), "{text}");
    assert!(text.contains("reactor 1"), "{text}");
    let json = server.stats_json();
    assert_eq!(json["sync"], "none");
    assert_eq!(json["reactors"].as_array().unwrap().len(), 2);
    assert_eq!(json["total"]["counters"]["messages_accepted"], 1);
    assert_eq!(json["total"]["ack_latency_us"]["count"], 1);
    assert!(json["total"]["counters"]["replies_2xx"].as_u64() >= Some(4));
    let prom = server.stats(&["--prometheus"]);
    assert!(
        prom.contains("ringmx_messages_accepted_total{reactor="),
        "{prom}"
    );
    assert!(
        prom.contains("ringmx_ack_latency_seconds{reactor="),
        "{prom}"
    );
    assert!(prom.contains("sync=\"none\""), "{prom}");

    // Raw protocol: one request line, answer, close.
    let mut s = std::os::unix::net::UnixStream::connect(server.stats_path()).unwrap();
    s.write_all(b"json\n").unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut s, &mut out).unwrap();
    assert!(serde_json::from_str::<serde_json::Value>(&out).is_ok());
}

#[test]
fn sigterm_under_load_keeps_every_acknowledged_message() {
    require_io_uring!();
    const CLIENTS: usize = 8;
    let mut server = Server::start(&[]);
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for t in 0..CLIENTS {
        let addr = server.addr;
        let acked = acked.clone();
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            let mut n = 0;
            'outer: while !stop.load(Ordering::SeqCst) {
                let Ok(mut c) = Client::try_connect(addr) else {
                    break;
                };
                if !matches!(c.try_reply(), Ok((220, _)))
                    || c.try_send(b"EHLO load.example.org\r\n").is_err()
                {
                    break;
                }
                if !matches!(c.try_reply(), Ok((250, _))) {
                    break;
                }
                for _ in 0..20 {
                    let token = format!("token-{t}-{n}");
                    n += 1;
                    let envelope =
                        format!("MAIL FROM:<s@example.org>\r\nRCPT TO:<rcpt@{DOMAIN}>\r\nDATA\r\n");
                    if c.try_send(envelope.as_bytes()).is_err() {
                        break 'outer;
                    }
                    for _ in 0..3 {
                        match c.try_reply() {
                            Ok((250 | 354, _)) => {}
                            _ => break 'outer,
                        }
                    }
                    let mut body = body_with_subject(&token, &"load ".repeat(200));
                    body.extend_from_slice(b".\r\n");
                    if c.try_send(&body).is_err() {
                        break 'outer;
                    }
                    match c.try_reply() {
                        Ok((250, _)) => acked.lock().unwrap().push(token),
                        _ => break 'outer,
                    }
                }
                let _ = c.try_send(b"QUIT\r\n");
            }
        }));
    }
    // Under load: at least 1.5 s of it and more than 10 messages acknowledged (the later check)
    // before the signal, however slowly a loaded machine gets there (at most 20 s).
    let loading = Instant::now();
    while (loading.elapsed() < Duration::from_millis(1500) || acked.lock().unwrap().len() <= 10)
        && loading.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(30));
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(status.code(), Some(0), "{}", server.log());
    assert!(!server.stats_path().exists(), "stats socket left behind");
    let acked = acked.lock().unwrap();
    assert!(
        acked.len() > 10,
        "too little load: {} messages",
        acked.len()
    );
    let ls = spool_ls(&server.spool());
    for token in acked.iter() {
        assert!(
            ls.contains(token.as_str()),
            "acknowledged {token} missing from the spool"
        );
    }
    eprintln!(
        "{} acknowledged messages all found after SIGTERM",
        acked.len()
    );
}

#[test]
fn sigterm_sends_421_to_idle_sessions_and_exits_zero() {
    require_io_uring!();
    let mut server = Server::start(&[]);
    let mut c = Client::greeted(server.addr);
    c.expect("EHLO client.example.org", 250);
    server.signal(libc::SIGTERM);
    let (code, text) = c.reply();
    assert_eq!(code, 421, "{text}");
    assert!(text.starts_with("421 4.3.2"), "{text}");
    assert!(c.closed_within(Duration::from_secs(3)));
    assert_eq!(server.wait_exit(Duration::from_secs(15)).code(), Some(0));
}

#[test]
fn check_config_validates_files() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "domain = [\"example.test\"]\nmax-connections = 5\n").unwrap();
    let out = run_tool(
        Command::new(RINGMX)
            .args(["check-config", "--config"])
            .arg(&good),
        Duration::from_secs(10),
    );
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("max-connections=5"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "domain = [\"example.test\"]\nmax-conections = 5\n").unwrap();
    let out = run_tool(
        Command::new(RINGMX)
            .args(["check-config", "--config"])
            .arg(&bad),
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("ringmx: config file "), "{err}");
    assert!(err.contains("max-conections"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/ringmx.toml");
    let out = run_tool(
        Command::new(RINGMX).args(["check-config", "--config", example]),
        Duration::from_secs(10),
    );
    assert!(out.status.success(), "examples/ringmx.toml: {out:?}");
}

#[test]
fn serve_errors_are_one_line_and_exit_1() {
    // A port in use: one line naming the address, exit 1, no panic.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = run_tool(
        Command::new(RINGMX)
            .args(["serve", "--domain", DOMAIN, "--listen", &addr, "--spool"])
            .arg(dir.path().join("spool"))
            .env("RUST_LOG", "off"),
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    if super::util::io_uring_available() {
        assert!(err.contains(&addr), "{err}");
    } else {
        assert!(err.contains("io_uring"), "{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    let out = run_tool(
        Command::new(RINGMX).args(["serve"]).env("RUST_LOG", "off"),
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--domain"));
}

#[test]
fn listens_on_ipv4_and_ipv6_together() {
    require_io_uring!();
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("SKIPPED: no IPv6 loopback on this machine");
        return;
    }
    let server = Server::start(&["--listen", "[::1]:0"]);
    assert_eq!(server.addrs.len(), 2, "{}", server.log());
    assert!(server.addrs[1].is_ipv6());
    for addr in &server.addrs {
        let mut c = Client::greeted(*addr);
        c.expect("EHLO client.example.org", 250);
        c.expect("QUIT", 221);
    }
}

#[test]
fn notifies_systemd_ready_and_stopping() {
    require_io_uring!();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut server = Server::start_env(&[], &[("NOTIFY_SOCKET", path.as_os_str())]);
    let mut buf = [0u8; 256];
    // A recv with SO_RCVTIMEO is not restarted after a signal (signal(7)): retry EINTR.
    let recv = |buf: &mut [u8]| loop {
        match sock.recv(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            r => break r.unwrap_or_else(|e| panic!("no notification: {e}")),
        }
    };
    let n = recv(&mut buf);
    assert_eq!(&buf[..n], b"READY=1\n");
    server.signal(libc::SIGTERM);
    let n = recv(&mut buf);
    assert_eq!(&buf[..n], b"STOPPING=1\n", "{}", server.log());
    assert_eq!(server.wait_exit(Duration::from_secs(15)).code(), Some(0));
}

#[test]
fn a_message_over_max_hops_is_refused_with_554_5_4_6_and_not_stored() {
    require_io_uring!();
    let server = Server::start(&["--max-hops", "5"]);
    let body = |hops: usize| -> Vec<u8> {
        let mut b =
            b"Received: from a.test by b.test; Mon, 7 Dec 2026 10:00:00 +0000\r\n".repeat(hops);
        b.extend_from_slice(b"Subject: loop\r\n\r\nbody\r\n");
        b
    };
    let mut c = Client::greeted(server.addr);
    c.expect("EHLO client.test", 250);
    // 5 hops, then our own Received: makes 6 when it goes on: still taken.
    let (code, _) = c.send_message("s@src.test", &rcpt(), &body(5));
    assert_eq!(code, 250);
    let (code, text) = c.send_message("s@src.test", &rcpt(), &body(6));
    assert_eq!((code, text.trim_end()), (554, "554 5.4.6 Too many hops"));
    // BDAT too, counted across chunks.
    c.expect("MAIL FROM:<s@src.test>", 250);
    c.expect(&format!("RCPT TO:<{}>", rcpt()), 250);
    let b = body(6);
    let (x, y) = b.split_at(100);
    c.send(format!("BDAT {}\r\n", x.len()).as_bytes());
    c.send(x);
    assert_eq!(c.reply().0, 250);
    c.send(format!("BDAT {} LAST\r\n", y.len()).as_bytes());
    c.send(y);
    let (code, text) = c.reply();
    assert_eq!((code, text.trim_end()), (554, "554 5.4.6 Too many hops"));
    c.expect("QUIT", 221);
    assert_eq!(
        server.accepted_ids().len(),
        1,
        "only the 5-hop message is stored"
    );
    assert_eq!(spool_ls(&server.spool()).lines().count(), 1);
    let v = server.stats_json();
    assert_eq!(
        v["total"]["counters"]["messages_rejected_too_many_hops"].as_u64(),
        Some(2),
        "{v}"
    );
}
