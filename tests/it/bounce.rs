//! Bounces (DSNs) and segment compaction with a real scripted next hop: aiosmtpd
//! (`tests/it/peers/nexthop.py`, Debian `python3-aiosmtpd`) on a free loopback port, refusing
//! recipients whose local part starts with `refuse` and capturing everything else. The sender's
//! domain `src.test` is routed to it too, so the DSNs land there; Python's `email` package
//! (`tests/it/peers/parse_dsn.py`) parses them. SMTPUTF8: passed on to the hop (which then
//! offers it), or, to `smtp-sink` (which does not), a 5.6.7 bounce that itself goes with
//! SMTPUTF8 to a non-ASCII sender.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::deliver::{dumps, free_port, queue, segments, send_with, Sink, SINK};
use crate::require_io_uring;
use crate::util::{require_tool, run_tool, spool_cat, Client, Server, DOMAIN, RINGMX};

/// Debian's interpreter, where `python3-aiosmtpd` installs.
const PYTHON: &str = "/usr/bin/python3";
const NEXTHOP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/peers/nexthop.py");
const PARSE_DSN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/peers/parse_dsn.py");
const WAIT: Duration = Duration::from_secs(30);

fn require_aiosmtpd() {
    require_tool(PYTHON, "python3");
    let ok = Command::new(PYTHON)
        .args(["-c", "import aiosmtpd.controller"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "aiosmtpd is missing: install the `python3-aiosmtpd` package"
    );
}

/// The scripted next hop (killed on drop).
struct Hop {
    child: Child,
    dir: PathBuf,
}

impl Hop {
    fn start(port: u16, dir: &Path) -> Self {
        Self::start_with(port, dir, &[])
    }

    /// With `["smtputf8"]`: offering SMTPUTF8.
    fn start_with(port: u16, dir: &Path, args: &[&str]) -> Self {
        let child = Command::new(PYTHON)
            .arg(NEXTHOP)
            .arg(port.to_string())
            .arg(dir)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the next hop did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            dir: dir.to_path_buf(),
        }
    }

    /// Every captured transaction: (envelope JSON, message file).
    fn got(&self) -> Vec<(serde_json::Value, PathBuf)> {
        let mut v: Vec<(serde_json::Value, PathBuf)> = std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                    .filter_map(|p| {
                        let env = std::fs::read(p.with_extension("json")).ok()?;
                        Some((serde_json::from_slice(&env).ok()?, p))
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by(|a, b| a.1.cmp(&b.1));
        v
    }

    /// The captured DSNs (envelope sender `<>`), parsed by Python's `email`.
    fn dsns(&self) -> Vec<(serde_json::Value, serde_json::Value)> {
        self.got()
            .into_iter()
            .filter(|(env, _)| env["from"] == "")
            .map(|(env, path)| (env, parse_dsn(&path)))
            .collect()
    }
}

impl Drop for Hop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_dsn(path: &Path) -> serde_json::Value {
    let out = run_tool(Command::new(PYTHON).arg(PARSE_DSN).arg(path), WAIT);
    assert!(
        out.status.success(),
        "parse_dsn: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A config file routing `example.test` to `local_port` and `src.test` to `sender_port`.
fn routes(dir: &Path, local_port: u16, sender_port: u16) -> PathBuf {
    let path = dir.join("routes.toml");
    std::fs::write(
        &path,
        format!(
            "[routes]\n\"{DOMAIN}\" = \"smtp:[127.0.0.1]:{local_port}\"\n\"src.test\" = \"smtp:[127.0.0.1]:{sender_port}\"\n"
        ),
    )
    .unwrap();
    path
}

/// One transaction from `from` to `to` (several RCPTs); asserts the 250.
fn send(server: &Server, from: &str, to: &[&str], body: &str) {
    let mut c = Client::greeted(server.addr);
    c.expect("EHLO client.test", 250);
    c.expect(&format!("MAIL FROM:<{from}>"), 250);
    for t in to {
        c.expect(&format!("RCPT TO:<{t}>"), 250);
    }
    c.expect("DATA", 354);
    c.send(body.as_bytes());
    c.send(b".\r\n");
    assert_eq!(c.reply().0, 250);
}

#[test]
fn a_refused_recipient_bounces_to_the_sender() {
    require_io_uring!();
    require_aiosmtpd();
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let hop = Hop::start(port, &tmp.path().join("hop"));
    let cfg = routes(tmp.path(), port, port);
    let server = Server::start(&[
        "--config",
        cfg.to_str().unwrap(),
        "--bounce-copy",
        "postmaster@src.test",
    ]);
    let ok = format!("ok@{DOMAIN}");
    let bad = format!("refuse-me@{DOMAIN}");
    send(
        &server,
        "alice@src.test",
        &[&ok, &bad],
        "From: Alice <alice@src.test>\r\nSubject: quarterly figures\r\nMessage-ID: <q1@src.test>\r\n\r\nthe figures\r\n",
    );
    let id = server.accepted_ids()[0].clone();
    wait_for("the message and its DSN at the next hop", || {
        hop.got().len() >= 2
    });
    let log = server.log_when("bounce dsn=", 1, WAIT);
    assert!(
        log.contains(&format!("delivery id={id}: bounce dsn=")),
        "{log}"
    );
    let got = hop.got();
    assert_eq!(got.len(), 2, "{got:?}");
    let dsns = hop.dsns();
    assert_eq!(dsns.len(), 1);
    let (env, d) = &dsns[0];
    // Envelope: from <>, to the sender and the --bounce-copy address.
    assert_eq!(
        env["to"],
        serde_json::json!(["alice@src.test", "postmaster@src.test"])
    );
    assert_eq!(d["defects"], serde_json::json!([]), "{d}");
    assert_eq!(
        d["from"],
        "Mail Delivery System <MAILER-DAEMON@mx.example.test>"
    );
    assert_eq!(d["subject"], "Undelivered Mail Returned to Sender");
    assert_eq!(d["auto_submitted"], "auto-replied");
    assert!(d["message_id"]
        .as_str()
        .unwrap()
        .ends_with("@mx.example.test>"));
    assert!(!d["date"].as_str().unwrap().is_empty());
    assert_eq!(d["content_type"], "multipart/report");
    assert_eq!(d["report_type"], "delivery-status");
    assert_eq!(
        d["parts"],
        serde_json::json!([
            "text/plain",
            "message/delivery-status",
            "text/rfc822-headers"
        ])
    );
    assert_eq!(d["per_message"]["reporting-mta"], "dns; mx.example.test");
    assert!(d["per_message"]["arrival-date"].as_str().is_some());
    // Only the refused recipient is reported.
    let r = d["per_rcpt"].as_array().unwrap();
    assert_eq!(r.len(), 1, "{d}");
    assert_eq!(r[0]["final-recipient"], format!("rfc822; {bad}"));
    assert_eq!(r[0]["action"], "failed");
    assert_eq!(r[0]["status"], "5.1.1");
    assert_eq!(r[0]["remote-mta"], "dns; 127.0.0.1");
    let diag = r[0]["diagnostic-code"].as_str().unwrap();
    assert!(
        diag.starts_with(&format!(
            "smtp; 550 5.1.1 <{bad}>: Recipient address rejected"
        )),
        "{diag}"
    );
    assert!(r[0]["last-attempt-date"].as_str().is_some());
    assert!(d["text"].as_str().unwrap().contains(&bad));
    let orig = d["original_headers"].as_str().unwrap();
    assert!(orig.contains("Subject: quarterly figures"), "{orig}");
    assert!(orig.contains("Message-ID: <q1@src.test>"), "{orig}");
    assert!(
        orig.contains(&format!("id {id}")),
        "our Received: line: {orig}"
    );
    assert!(!orig.contains("the figures"), "headers only");
    // The original went to the good recipient only; both messages are finished.
    let original = got
        .iter()
        .find(|(e, _)| e["from"] == "alice@src.test")
        .unwrap();
    assert_eq!(original.0["to"], serde_json::json!([ok]));
    wait_for("queue empty", || queue(&server.spool(), &["ls"]).is_empty());
    // The DSN's segment is an ordinary segment for the tools.
    let out = run_tool(
        Command::new(RINGMX)
            .args(["spool", "check", "--spool"])
            .arg(server.spool()),
        WAIT,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn no_dsn_for_a_null_sender_and_a_failed_dsn_is_dropped() {
    require_io_uring!();
    require_aiosmtpd();
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let hop = Hop::start(port, &tmp.path().join("hop"));
    let cfg = routes(tmp.path(), port, port);
    let server = Server::start(&["--config", cfg.to_str().unwrap()]);
    let bad = format!("refuse-a@{DOMAIN}");
    // A message from <> that fails: no DSN.
    send(&server, "", &[&bad], "Subject: from null\r\n\r\nx\r\n");
    let log = server.log_when("the sender is <>", 1, WAIT);
    assert!(
        log.contains("no DSN for 1 failed recipient(s): the sender is <>"),
        "{log}"
    );
    // A message whose sender refuses the DSN: the DSN fails and is dropped, not bounced.
    send(
        &server,
        "refuse-back@src.test",
        &[&bad],
        "Subject: two\r\n\r\ny\r\n",
    );
    let log = server.log_when("(a DSN that failed is dropped)", 1, WAIT);
    assert!(log.contains("(a DSN that failed is dropped)"), "{log}");
    wait_for("queue empty", || queue(&server.spool(), &["ls"]).is_empty());
    std::thread::sleep(Duration::from_millis(500));
    assert!(hop.got().is_empty(), "nothing accepted: {:?}", hop.got());
    assert_eq!(log.matches("bounce dsn=").count(), 1, "one DSN only: {log}");
}

#[test]
fn expiry_bounces_after_one_delay_warning() {
    require_io_uring!();
    require_aiosmtpd();
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let hop = Hop::start(port, &tmp.path().join("hop"));
    // The local domain's next hop is down for good (nothing listens there).
    let down = free_port();
    let cfg = routes(tmp.path(), down, port);
    let server = Server::start(&[
        "--config",
        cfg.to_str().unwrap(),
        "--retry-first",
        "1",
        "--retry-max",
        "1",
        "--delay-warning",
        "1",
        "--max-queue-lifetime",
        "4",
    ]);
    let to = format!("late@{DOMAIN}");
    send(
        &server,
        "bob@src.test",
        &[&to],
        "Subject: slow\r\n\r\nz\r\n",
    );
    wait_for("a delay warning and a bounce", || hop.dsns().len() >= 2);
    std::thread::sleep(Duration::from_millis(1500));
    let dsns = hop.dsns();
    assert_eq!(dsns.len(), 2, "one warning, one bounce: {dsns:?}");
    let actions: Vec<&str> = dsns
        .iter()
        .map(|(_, d)| d["per_rcpt"][0]["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["delayed", "failed"]);
    let (_, warn) = &dsns[0];
    assert_eq!(warn["subject"], "Delayed Mail (still being retried)");
    assert!(warn["per_rcpt"][0]["status"]
        .as_str()
        .unwrap()
        .starts_with("4."));
    let (env, fail) = &dsns[1];
    assert_eq!(env["to"], serde_json::json!(["bob@src.test"]));
    let r = &fail["per_rcpt"][0];
    assert_eq!(r["final-recipient"], format!("rfc822; {to}"));
    assert_eq!(r["status"], "5.4.7", "{fail}");
    // The last reply it got says why: the connection was refused.
    assert!(
        r["diagnostic-code"].as_str().unwrap().contains("4.4.1"),
        "{fail}"
    );
    wait_for("queue empty", || queue(&server.spool(), &["ls"]).is_empty());
}

#[test]
fn compaction_copies_deferred_messages_forward_and_deletes_old_segments() {
    require_io_uring!();
    require_aiosmtpd();
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let hop = Hop::start(port, &tmp.path().join("hop"));
    // `slow.test` goes to a port where nothing listens until the end of the test.
    let slow_port = free_port();
    let cfg = tmp.path().join("routes.toml");
    std::fs::write(
        &cfg,
        format!(
            "[routes]\n\"{DOMAIN}\" = \"smtp:[127.0.0.1]:{port}\"\n\"slow.test\" = \"smtp:[127.0.0.1]:{slow_port}\"\n"
        ),
    )
    .unwrap();
    let server = Server::start(&[
        "--config",
        cfg.to_str().unwrap(),
        "--domain",
        "slow.test",
        "--segment-size",
        "65536",
        "--compact-after",
        "1",
        "--retry-first",
        "2",
        "--retry-max",
        "2",
    ]);
    let filler = format!("{}\r\n", "x".repeat(98)).repeat(20);
    let n = 120;
    let mut slow = Vec::new();
    for i in 0..n {
        // Three early messages (in the first, soon sealed, segments) wait for slow.test.
        let to = if [3, 10, 17].contains(&i) {
            format!("u{i}@slow.test")
        } else {
            format!("u{i}@{DOMAIN}")
        };
        send(
            &server,
            "s@src.test",
            &[&to],
            &format!("Subject: m{i}\r\n\r\n{filler}\r\nline {i}\r\n"),
        );
        if to.ends_with("slow.test") {
            slow.push(server.accepted_ids()[i].clone());
        }
    }
    let stored: Vec<Vec<u8>> = slow
        .iter()
        .map(|id| spool_cat(&server.spool(), id))
        .collect();
    let before = segments(&server.spool());
    // Segments rolled (those with every message delivered may be deleted already).
    assert!(
        before.iter().any(|s| !s.ends_with("-00000001.seg")),
        "segments rolled: {before:?}"
    );
    wait_for("the others delivered", || hop.got().len() >= n - 3);
    // Each deferred message moves into a segment of the delivery thread's (reactor 1023).
    wait_for("the deferred messages copied forward", || {
        slow.iter()
            .all(|id| queue(&server.spool(), &["show", id]).contains("/1023-"))
    });
    let log = server.log_when("delivery: compacted segment", 1, WAIT);
    assert!(log.contains("delivery: compacted segment"), "{log}");
    // Every old segment is gone but each reactor's newest (still being written).
    wait_for("old segments deleted", || {
        let now = segments(&server.spool());
        let newest = |s: &String| {
            let reactor = s.split('-').next().unwrap();
            now.iter()
                .filter(|x| x.split('-').next() == Some(reactor))
                .max()
                == Some(s)
        };
        before.iter().all(|s| !now.contains(s) || newest(s))
    });
    // The deferred messages are still queued, deferred, byte-exact.
    let ls = queue(&server.spool(), &["ls", "--deferred"]);
    for (i, id) in slow.iter().enumerate() {
        assert!(ls.contains(id.as_str()), "{id} not in {ls}");
        assert_eq!(
            spool_cat(&server.spool(), id),
            stored[i],
            "the copy is byte-exact"
        );
        let shown = queue(&server.spool(), &["show", id]);
        assert!(shown.contains("deferred attempts="), "{shown}");
        assert!(shown.contains("copied forward by compaction"), "{shown}");
    }
    let check = run_tool(
        Command::new(RINGMX)
            .args(["spool", "check", "--spool"])
            .arg(server.spool()),
        WAIT,
    );
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    // The next hop comes up: each is delivered intact, once.
    let slow_hop = Hop::start(slow_port, &tmp.path().join("slow"));
    wait_for("the deferred ones delivered", || slow_hop.got().len() >= 3);
    std::thread::sleep(Duration::from_millis(500));
    let got = slow_hop.got();
    assert_eq!(got.len(), 3);
    for (i, id) in slow.iter().enumerate() {
        let hits: Vec<_> = got
            .iter()
            .filter(|(_, p)| std::fs::read(p).unwrap() == stored[i])
            .collect();
        assert_eq!(hits.len(), 1, "{id} delivered byte-exact once");
    }
    wait_for("queue empty", || queue(&server.spool(), &["ls"]).is_empty());
}

/// `ringmx queue bounce ID`: a deferred message fails now, its sender gets the DSN at once
/// (not after the queue lifetime), and the queue is empty; an unknown id is refused.
#[test]
fn queue_bounce_fails_a_deferred_message_now_with_a_dsn() {
    require_io_uring!();
    require_aiosmtpd();
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let hop = Hop::start(port, &tmp.path().join("hop"));
    let down = free_port();
    let cfg = routes(tmp.path(), down, port);
    let server = Server::start(&["--config", cfg.to_str().unwrap(), "--retry-first", "3600"]);
    let to = format!("stuck@{DOMAIN}");
    send(
        &server,
        "carol@src.test",
        &[&to],
        "Subject: stuck\r\n\r\nz\r\n",
    );
    let mut id = String::new();
    wait_for("the message deferred", || {
        let ls = queue(&server.spool(), &["ls", "--deferred", "--json"]);
        match ls.lines().next() {
            Some(l) => {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                id = v["id"].as_str().unwrap().to_string();
                true
            }
            None => false,
        }
    });
    assert!(hop.dsns().is_empty(), "no DSN before the bounce");
    let out = queue(&server.spool(), &["bounce", &id]);
    assert!(out.contains("1 recipient(s) failed"), "{out}");
    wait_for("the DSN", || !hop.dsns().is_empty());
    let dsns = hop.dsns();
    assert_eq!(dsns.len(), 1, "{dsns:?}");
    let (env, dsn) = &dsns[0];
    assert_eq!(env["to"], serde_json::json!(["carol@src.test"]));
    let r = &dsn["per_rcpt"][0];
    assert_eq!(r["action"], "failed");
    assert_eq!(r["status"], "5.0.0", "{dsn}");
    assert_eq!(r["final-recipient"], format!("rfc822; {to}"));
    wait_for("queue empty", || queue(&server.spool(), &["ls"]).is_empty());
    // Gone now: a second bounce is refused with the reason.
    let again = run_tool(
        Command::new(RINGMX)
            .args(["queue", "bounce", &id, "--spool"])
            .arg(server.spool()),
        Duration::from_secs(10),
    );
    assert_eq!(again.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("no message"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

/// RFC 6531: a message received with SMTPUTF8 goes on with `MAIL FROM:<…> SMTPUTF8` to a next
/// hop that offers it, addresses, UTF-8 header and 8-bit body unchanged.
#[test]
fn smtputf8_is_passed_on_to_a_next_hop_offering_it() {
    require_io_uring!();
    require_aiosmtpd();
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let hop = Hop::start_with(port, &tmp.path().join("hop"), &["smtputf8"]);
    let cfg = routes(tmp.path(), port, port);
    let server = Server::start(&["--config", cfg.to_str().unwrap()]);
    let from = "j\u{f6}rg@src.test";
    let to = format!("andr\u{e9}@{DOMAIN}");
    let body = "Subject: gr\u{fc}\u{df}e\r\n\r\nsch\u{f6}n\r\n";
    send_with(
        &server,
        from,
        "SMTPUTF8 BODY=8BITMIME",
        &to,
        body.as_bytes(),
    );
    wait_for("the message at the next hop", || hop.got().len() == 1);
    let got = hop.got();
    let (env, path) = &got[0];
    assert_eq!(env["from"], from);
    assert_eq!(env["to"], serde_json::json!([to]));
    let opts: Vec<&str> = env["mail_options"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_str().unwrap())
        .collect();
    assert!(opts.contains(&"SMTPUTF8"), "{opts:?}");
    assert!(opts.contains(&"BODY=8BITMIME"), "{opts:?}");
    let bytes = std::fs::read(path).unwrap();
    assert!(bytes.ends_with(body.as_bytes()), "bytes unchanged");
    wait_for("queue empty", || queue(&server.spool(), &["ls"]).is_empty());
    let log = server.log_when("status=sent", 1, WAIT);
    assert!(log.contains("status=sent"), "{log}");
}

/// RFC 6531 §3.2: a message that needs SMTPUTF8 (here a non-ASCII sender) is not sent to a next
/// hop without it (smtp-sink): its recipient fails with 5.6.7 and the sender gets a DSN, which
/// goes with `MAIL FROM:<> SMTPUTF8` (the sender's address is not ASCII) to the sender's next
/// hop, which offers SMTPUTF8. A message received with SMTPUTF8 that needs none of it (ASCII
/// envelope and header) goes to smtp-sink without the parameter.
#[test]
fn smtputf8_needed_but_not_offered_bounces_5_6_7_with_a_smtputf8_dsn() {
    require_io_uring!();
    require_aiosmtpd();
    require_tool(SINK, "postfix");
    let tmp = tempfile::tempdir().unwrap();
    let (sink_port, hop_port) = (free_port(), free_port());
    let dump = tmp.path().join("sink");
    let _sink = Sink::start(sink_port, &dump, &[]);
    let hop = Hop::start_with(hop_port, &tmp.path().join("hop"), &["smtputf8"]);
    let cfg = routes(tmp.path(), sink_port, hop_port);
    let server = Server::start(&["--config", cfg.to_str().unwrap()]);
    let from = "j\u{f6}rg@src.test";
    let to = format!("ok@{DOMAIN}");
    send_with(
        &server,
        from,
        "SMTPUTF8",
        &to,
        b"Subject: hello\r\n\r\nascii body\r\n",
    );
    send_with(
        &server,
        "s@src.test",
        "SMTPUTF8",
        &to,
        b"Subject: plain\r\n\r\nascii too\r\n",
    );
    let ids = server.accepted_ids();
    wait_for("the DSN at the sender's next hop", || hop.dsns().len() == 1);
    let log = server.log_when("status=failed", 1, WAIT);
    assert!(
        log.contains(&format!("delivery id={} to=<{to}>", ids[0]))
            && log.contains("dsn=5.6.7 status=failed"),
        "{log}"
    );
    let (env, d) = &hop.dsns()[0];
    assert_eq!(env["to"], serde_json::json!([from]));
    let opts = env["mail_options"].as_array().unwrap();
    assert!(opts.contains(&serde_json::json!("SMTPUTF8")), "{env}");
    let r = &d["per_rcpt"][0];
    assert_eq!(r["final-recipient"], format!("rfc822; {to}"));
    assert_eq!(r["action"], "failed");
    assert_eq!(r["status"], "5.6.7", "{d}");
    assert!(
        r["diagnostic-code"].as_str().unwrap().contains("SMTPUTF8"),
        "{d}"
    );
    // The one that needed nothing went to smtp-sink, without SMTPUTF8; the other never did.
    wait_for("the ASCII message at smtp-sink", || dumps(&dump).len() == 1);
    std::thread::sleep(Duration::from_millis(300));
    let got = dumps(&dump);
    assert_eq!(got.len(), 1);
    let text = String::from_utf8_lossy(&got[0]);
    assert!(text.contains(&format!("id {}", ids[1])), "{text}");
    let args = text
        .lines()
        .find_map(|l| l.strip_prefix("X-Mail-Args:"))
        .unwrap_or_default();
    assert!(!args.contains("SMTPUTF8"), "{args}");
    wait_for("queue empty", || queue(&server.spool(), &["ls"]).is_empty());
}
