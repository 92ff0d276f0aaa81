//! Abuse control at the door, against the real server: the recipient table (unknown, known and
//! `@domain` recipients, SIGHUP reload under load, a bad file, a 1,000,000-line table), the
//! per-client rate limits across two reactors (several 127.0.0.x client addresses), the greet
//! pause (a pregreet client is caught; swaks and Python's smtplib, which wait, pass), trusted
//! networks, and the refusal counters in the three stats formats.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::require_io_uring;
use crate::util::{require_tool, run_tool, swaks, Client, Server, DOMAIN};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn write_table(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A temporary directory for files the server reads (created before the server's own).
fn files() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn counter(server: &Server, name: &str) -> u64 {
    server.stats_json()["total"]["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name}"))
}

#[test]
fn unknown_recipients_are_refused_known_and_wildcard_ones_pass() {
    require_io_uring!();
    let files = files();
    let table = write_table(
        files.path(),
        "recipients",
        &format!("# test table\nKnown@{DOMAIN}\n\n@Other.Test\n"),
    );
    let server = Server::start(&[
        "--domain",
        "other.test",
        "--recipients",
        table.to_str().unwrap(),
    ]);
    assert!(server.log().contains("recipient table"), "{}", server.log());
    let mut c = Client::greeted(server.addr);
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<s@example.org>", 250);
    c.expect(&format!("RCPT TO:<known@{DOMAIN}>"), 250);
    c.expect(&format!("RCPT TO:<KNOWN@{}>", DOMAIN.to_uppercase()), 250);
    let text = c.expect(&format!("RCPT TO:<nobody@{DOMAIN}>"), 550);
    assert_eq!(
        text,
        format!("550 5.1.1 <nobody@{DOMAIN}>: Recipient address rejected: User unknown\r\n")
    );
    c.expect("RCPT TO:<anyone@other.test>", 250);
    c.expect(&format!("RCPT TO:<postmaster@{DOMAIN}>"), 250);
    c.expect("RCPT TO:<x@elsewhere.test>", 550);
    c.expect("DATA", 354);
    c.send(b"Subject: t\r\n\r\nhi\r\n.\r\n");
    assert_eq!(c.reply().0, 250);
    c.expect("QUIT", 221);
    let log = server.log_when("accepted id=", 1, Duration::from_secs(5));
    assert!(
        log.contains(&format!(
            "reject rcpt=<nobody@{DOMAIN}> from=<s@example.org> client=127.0.0.1 reason=unknown-user reply=550 5.1.1"
        )),
        "{log}"
    );
    assert!(log.contains("rcpts=4"), "{log}");
    assert_eq!(counter(&server, "refused_unknown_recipient"), 1);
}

#[test]
fn a_missing_or_bad_table_stops_the_start_and_check_config_names_the_line() {
    require_io_uring!();
    let files = files();
    let bad = write_table(
        files.path(),
        "bad",
        &format!("ok@{DOMAIN}\nnot an address\n"),
    );
    let out = run_tool(
        Command::new(crate::util::RINGMX)
            .args(["check-config", "--domain", DOMAIN, "--recipients"])
            .arg(&bad),
        Duration::from_secs(10),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("line 2"), "{err}");
    // The server does not start on it either, and says why in one line.
    let spool = files.path().join("spool");
    let out = run_tool(
        Command::new(crate::util::RINGMX)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--domain",
                DOMAIN,
                "--spool",
            ])
            .arg(&spool)
            .arg("--recipients")
            .arg(&bad),
        Duration::from_secs(20),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("recipient table") && err.contains("line 2") && !err.contains("ready:"),
        "{err}"
    );
    let missing = files.path().join("missing");
    let out = run_tool(
        Command::new(crate::util::RINGMX)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--domain",
                DOMAIN,
                "--spool",
            ])
            .arg(&spool)
            .arg("--recipients")
            .arg(&missing),
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("No such file"));
    let good = write_table(files.path(), "good", &format!("ok@{DOMAIN}\n@{DOMAIN}\n"));
    let out = run_tool(
        Command::new(crate::util::RINGMX)
            .args(["check-config", "--domain", DOMAIN, "--recipients"])
            .arg(&good),
        Duration::from_secs(10),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.contains("2 entries (1 @domain)"),
        "{err}"
    );
}

#[test]
fn sighup_reloads_the_table_under_load_and_a_bad_file_keeps_the_old_one() {
    require_io_uring!();
    let files = files();
    let path = write_table(
        files.path(),
        "recipients",
        &format!("load@{DOMAIN}\nold@{DOMAIN}\n"),
    );
    let server = Server::start(&["--recipients", path.to_str().unwrap()]);
    let addr = server.addr;
    // Load: 4 clients sending to an address present in every version of the table, each
    // message on a new connection (which takes the table in force).
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, sent) = (stop.clone(), sent.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let mut c = Client::greeted(addr);
                    c.expect("HELO load.test", 250);
                    let (code, text) = c.send_message(
                        "s@example.org",
                        &format!("load@{DOMAIN}"),
                        b"Subject: load\r\n\r\nx\r\n",
                    );
                    assert_eq!(code, 250, "{text}");
                    c.expect("QUIT", 221);
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let rcpt = |to: &str| {
        let mut c = Client::greeted(addr);
        c.expect("HELO probe.test", 250);
        c.expect("MAIL FROM:<s@example.org>", 250);
        let code = c.cmd(&format!("RCPT TO:<{to}>")).0;
        c.expect("QUIT", 221);
        code
    };
    assert_eq!(rcpt(&format!("old@{DOMAIN}")), 250);
    assert_eq!(rcpt(&format!("new@{DOMAIN}")), 550);

    // A session that began before the reload keeps its table.
    let mut before = Client::greeted(addr);
    before.expect("HELO before.test", 250);
    // Write the new table beside it and rename it in place, as an operator's tool would.
    let tmp = write_table(
        files.path(),
        "recipients.new",
        &format!("load@{DOMAIN}\nnew@{DOMAIN}\n"),
    );
    std::fs::rename(&tmp, &path).unwrap();
    server.signal(libc::SIGHUP);
    assert!(
        server.wait_log("SIGHUP: reloaded recipient table", Duration::from_secs(10)),
        "{}",
        server.log()
    );
    assert_eq!(rcpt(&format!("new@{DOMAIN}")), 250);
    assert_eq!(rcpt(&format!("old@{DOMAIN}")), 550);
    before.expect("MAIL FROM:<s@example.org>", 250);
    before.expect(&format!("RCPT TO:<old@{DOMAIN}>"), 250);
    before.expect(&format!("RCPT TO:<new@{DOMAIN}>"), 550);
    before.expect("QUIT", 221);

    // A broken file: logged, the table in force stays.
    std::fs::write(&path, "new@example.test\nbroken line here\n").unwrap();
    server.signal(libc::SIGHUP);
    let log = server.log_when("recipient table reload failed", 1, Duration::from_secs(10));
    assert!(
        log.contains("SIGHUP: recipient table reload failed, keeping the old table")
            && log.contains("line 2"),
        "{log}"
    );
    assert_eq!(rcpt(&format!("new@{DOMAIN}")), 250);
    assert_eq!(rcpt(&format!("old@{DOMAIN}")), 550);

    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("a load client failed");
    }
    let n = sent.load(Ordering::Relaxed);
    assert!(n > 0);
    assert_eq!(counter(&server, "messages_accepted"), n);
}

/// A 1,000,000-line table: the server loads it (time and memory are logged and printed here;
/// no timing assertion), the reported memory is the file's size plus 4 bytes per entry, and
/// lookups at the start, middle and end of the sorted table work.
#[test]
fn a_table_of_one_million_addresses() {
    require_io_uring!();
    const N: usize = 1_000_000;
    let files = files();
    let path = files.path().join("million");
    let mut text = String::with_capacity(N * 28);
    let mut entry_bytes = 0;
    for i in 0..N {
        let line = format!("user{i:07}@{DOMAIN}\n");
        entry_bytes += line.len() - 1;
        text.push_str(&line);
    }
    std::fs::File::create(&path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let bare = Server::start(&[]);
    let rss_bare = bare.rss_kib();
    drop(bare);
    let started = Instant::now();
    let server = Server::start(&["--recipients", path.to_str().unwrap()]);
    let start_ms = started.elapsed().as_millis();
    let rss = server.rss_kib();
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("recipient table") && l.contains("entries"))
        .unwrap_or_else(|| panic!("{log}"));
    // The file's bytes plus 4 per entry.
    let kib = (entry_bytes + N + N * 4).div_ceil(1024);
    assert!(
        line.contains(&format!("{N} entries (0 @domain), {kib} KiB")),
        "{line}"
    );
    eprintln!(
        "1M-entry table: {line}; server start {start_ms} ms; RSS {rss} KiB with it, {rss_bare} KiB without ({} KiB more)",
        rss.saturating_sub(rss_bare)
    );
    let mut c = Client::greeted(server.addr);
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<s@example.org>", 250);
    for i in [0, 1, N / 2, N - 1] {
        c.expect(&format!("RCPT TO:<User{i:07}@{DOMAIN}>"), 250);
    }
    c.expect(&format!("RCPT TO:<user{N}@{DOMAIN}>"), 550);
    c.expect(&format!("RCPT TO:<user{:07}x@{DOMAIN}>", N / 2), 550);
    c.expect("QUIT", 221);
}

/// Opens a connection from `src` and returns the greeting's code (220, or 421 from a limit).
fn greeting_code(server: &Server, src: IpAddr) -> u16 {
    let mut c = Client::connect_from(src, server.addr);
    let (code, _) = c.reply();
    if code == 220 {
        c.expect("QUIT", 221);
    }
    code
}

#[test]
fn a_fast_client_is_cut_at_its_connect_rate_across_reactors_others_are_not() {
    require_io_uring!();
    const RATE: usize = 20;
    let server = Server::start(&[
        "--max-connect-rate",
        &RATE.to_string(),
        "--trusted-networks",
        "127.0.0.4/32",
    ]);
    let fast = ip("127.0.0.2");
    let codes: Vec<u16> = (0..RATE + 10)
        .map(|_| greeting_code(&server, fast))
        .collect();
    assert_eq!(
        codes.iter().filter(|&&c| c == 220).count(),
        RATE,
        "{codes:?}"
    );
    assert!(codes[RATE..].iter().all(|&c| c == 421), "{codes:?}");
    // The admitted ones were spread over both reactors (SO_REUSEPORT), yet counted together.
    let log = server.log_when(" connect from=127.0.0.2:", RATE, Duration::from_secs(5));
    for r in 0..2 {
        assert!(
            log.lines()
                .any(|l| l.contains(" connect from=127.0.0.2:")
                    && l.ends_with(&format!("reactor={r}"))),
            "no connection on reactor {r}: {log}"
        );
    }
    // The refusals' log lines come from the log thread, maybe after the admissions were seen.
    let log = server.log_when(
        "reason=max-connect-rate reply=421",
        10,
        Duration::from_secs(5),
    );
    assert_eq!(
        log.matches("reason=max-connect-rate reply=421").count(),
        10,
        "{log}"
    );
    // Other clients are not affected; a trusted one has no limit at all.
    assert_eq!(greeting_code(&server, ip("127.0.0.3")), 220);
    for _ in 0..RATE + 5 {
        assert_eq!(greeting_code(&server, ip("127.0.0.4")), 220);
    }
    assert_eq!(counter(&server, "refused_connect_rate"), 10);
    let mut c = Client::connect_from(fast, server.addr);
    let (code, text) = c.reply();
    assert_eq!(code, 421);
    assert!(
        text.starts_with("421 4.7.0 mx.example.test Connection rate limit exceeded"),
        "{text}"
    );
    assert!(c.closed_within(Duration::from_secs(5)));
}

#[test]
fn message_and_recipient_rates_get_450_and_trusted_clients_are_exempt() {
    require_io_uring!();
    let server = Server::start(&[
        "--max-message-rate",
        "3",
        "--max-recipient-rate",
        "5",
        "--trusted-networks",
        "127.0.0.6",
    ]);
    let mut c = Client::connect_from(ip("127.0.0.5"), server.addr);
    assert_eq!(c.reply().0, 220);
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<s@example.org>", 250);
    for i in 0..5 {
        c.expect(&format!("RCPT TO:<r{i}@{DOMAIN}>"), 250);
    }
    let text = c.expect(&format!("RCPT TO:<r5@{DOMAIN}>"), 450);
    assert!(
        text.starts_with("450 4.7.1 Recipient rate limit exceeded"),
        "{text}"
    );
    c.expect("RSET", 250);
    c.expect("MAIL FROM:<s@example.org>", 250);
    c.expect("RSET", 250);
    c.expect("MAIL FROM:<s@example.org>", 250);
    c.expect("RSET", 250);
    let text = c.expect("MAIL FROM:<s@example.org>", 450);
    assert!(
        text.starts_with("450 4.7.1 Message rate limit exceeded"),
        "{text}"
    );
    c.expect("QUIT", 221);
    // The count is per client, over connections.
    let mut c = Client::connect_from(ip("127.0.0.5"), server.addr);
    assert_eq!(c.reply().0, 220);
    c.expect("HELO client.test", 250);
    c.expect("MAIL FROM:<s@example.org>", 450);
    c.expect("QUIT", 221);
    // A trusted client: no limits.
    let mut t = Client::connect_from(ip("127.0.0.6"), server.addr);
    assert_eq!(t.reply().0, 220);
    t.expect("HELO trusted.test", 250);
    for _ in 0..5 {
        t.expect("MAIL FROM:<s@example.org>", 250);
        for i in 0..8 {
            t.expect(&format!("RCPT TO:<r{i}@{DOMAIN}>"), 250);
        }
        t.expect("RSET", 250);
    }
    t.expect("QUIT", 221);
    assert_eq!(counter(&server, "refused_message_rate"), 2);
    assert_eq!(counter(&server, "refused_recipient_rate"), 1);
    let log = server.log_when("reason=recipient-rate", 1, Duration::from_secs(5));
    assert!(
        log.contains(
            "reject mail from=<s@example.org> client=127.0.0.5 reason=message-rate reply=450 4.7.1"
        ),
        "{log}"
    );
    assert!(
        log.contains("client=127.0.0.5 reason=recipient-rate reply=450 4.7.1"),
        "{log}"
    );
}

const PAUSE_SECS: u64 = 2;

#[test]
fn a_pregreet_client_is_caught_and_clients_that_wait_pass() {
    require_io_uring!();
    let pause = PAUSE_SECS.to_string();
    let server = Server::start(&["--greet-pause", &pause, "--trusted-networks", "127.0.0.9"]);

    // A bot: EHLO at once, without waiting for any greeting.
    let started = Instant::now();
    let mut bot = Client::connect_from(ip("127.0.0.7"), server.addr);
    bot.send(b"EHLO bot.test\r\n");
    let (code, text) = bot.reply();
    assert_eq!(code, 554, "{text}");
    assert!(
        text.starts_with("220-mx.example.test ESMTP ringmx\r\n554 5.5.1 mx.example.test Protocol error: talking out of turn"),
        "{text:?}"
    );
    assert!(started.elapsed() >= Duration::from_secs(PAUSE_SECS));
    assert!(bot.closed_within(Duration::from_secs(5)));
    // One that speaks right after the 220- line is a bot too.
    let mut eager = Client::connect_from(ip("127.0.0.7"), server.addr);
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(eager.stream.try_clone().unwrap()),
        &mut first,
    )
    .unwrap();
    assert_eq!(first, "220-mx.example.test ESMTP ringmx\r\n");
    eager.send(b"HELO eager.test\r\n");
    assert!(eager.closed_within(Duration::from_secs(10)));

    // A client that waits gets the whole greeting and is served.
    let started = Instant::now();
    let mut good = Client::connect_from(ip("127.0.0.8"), server.addr);
    let (code, text) = good.reply();
    assert_eq!(code, 220);
    assert_eq!(
        text,
        "220-mx.example.test ESMTP ringmx\r\n220 mx.example.test ESMTP ringmx\r\n"
    );
    assert!(started.elapsed() >= Duration::from_secs(PAUSE_SECS));
    good.expect("EHLO good.test", 250);
    good.expect("QUIT", 221);

    // A trusted client gets no pause.
    let started = Instant::now();
    let mut t = Client::connect_from(ip("127.0.0.9"), server.addr);
    let (code, text) = t.reply();
    assert_eq!(
        (code, text.as_str()),
        (220, "220 mx.example.test ESMTP ringmx\r\n")
    );
    assert!(started.elapsed() < Duration::from_secs(PAUSE_SECS));
    t.expect("QUIT", 221);

    let log = server.log_when("reason=pregreet", 2, Duration::from_secs(5));
    assert!(
        log.contains("reject from=127.0.0.7:")
            && log.contains("reason=pregreet reply=554 5.5.1 sent=\"EHLO bot.test..\""),
        "{log}"
    );
    assert!(log.contains("reason=pregreet messages=0"), "{log}");
    assert_eq!(counter(&server, "refused_pregreet"), 2);
    // All three formats.
    let text = server.stats(&[]);
    assert!(
        text.contains("connect-rate 0  message-rate 0  recipient-rate 0  pregreet 2"),
        "{text}"
    );
    let prom = server.stats(&["--prometheus"]);
    assert!(
        prom.contains("ringmx_refused_pregreet_total{reactor="),
        "{prom}"
    );
}

#[test]
fn swaks_and_smtplib_wait_out_the_greet_pause() {
    require_io_uring!();
    require_tool("/usr/bin/swaks", "swaks");
    require_tool("/usr/bin/python3", "python3");
    let server = Server::start(&["--greet-pause", &PAUSE_SECS.to_string()]);
    let data = server.dir.path().join("m.eml");
    std::fs::write(&data, "Subject: pause\r\n\r\nwaited").unwrap();
    swaks(&server, &data, &[]);
    let script = r#"
import smtplib, sys
with smtplib.SMTP(sys.argv[1], int(sys.argv[2]), local_hostname='py.example.org', timeout=20) as s:
    refused = s.sendmail('py@example.org', [sys.argv[3]], b'Subject: pause\r\n\r\nwaited\r\n')
    assert not refused, refused
print('sent')
"#;
    let out = run_tool(
        Command::new("python3")
            .args(["-c", script, "127.0.0.1", &server.addr.port().to_string()])
            .arg(format!("rcpt@{DOMAIN}")),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{out:?}\n{}", server.log());
    assert_eq!(counter(&server, "messages_accepted"), 2, "{}", server.log());
    assert_eq!(counter(&server, "refused_pregreet"), 0);
}

#[test]
fn a_shutdown_during_the_greet_pause_ends_it_with_220_then_421() {
    require_io_uring!();
    let mut server = Server::start(&["--greet-pause", "30"]);
    let mut c = Client::connect_from(ip("127.0.0.10"), server.addr);
    let mut first = String::new();
    let mut reader = std::io::BufReader::new(c.stream.try_clone().unwrap());
    std::io::BufRead::read_line(&mut reader, &mut first).unwrap();
    assert_eq!(first, "220-mx.example.test ESMTP ringmx\r\n");
    let started = Instant::now();
    server.signal(libc::SIGTERM);
    let mut rest = String::new();
    for _ in 0..2 {
        std::io::BufRead::read_line(&mut reader, &mut rest).unwrap();
    }
    assert!(
        rest.starts_with("220 mx.example.test ESMTP ringmx\r\n421 4.3.2 "),
        "{rest:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the pause was not cut short"
    );
    assert!(c.closed_within(Duration::from_secs(5)));
    assert!(server.wait_exit(Duration::from_secs(20)).success());
}
