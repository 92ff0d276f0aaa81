//! Onward delivery to real next hops beyond `smtp-sink`: a private Postfix smtpd with STARTTLS
//! (verified against a test CA), aiosmtpd with a handler that defers one recipient or drops the
//! connection before its reply to the data, `smtp-sink` for `tls = "encrypt"` without
//! STARTTLS, and a private Dovecot LMTP receiving 1,000 messages from the load generator
//! (`smtp-source`, built from loadtest/). Every peer runs on 127.0.0.1 with its own files in a
//! temporary directory and is stopped by pid.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::deliver::{
    deferred_count, dumps, files, free_port, queue, segments, send, wait_for, Sink, SINK, WAIT,
};
use crate::postfix::{maillog_when, postfix_usable, Postfix};
use crate::require_io_uring;
use crate::tls::Ca;
use crate::util::{reachable_tempdir, require_tool, run_tool, Client, Server, DOMAIN, RINGMX};

/// Debian's python3 (where `python3-aiosmtpd` installs), not whatever `python3` is first in
/// `PATH`.
const PYTHON: &str = "/usr/bin/python3";
const DOVECOT: &str = "/usr/sbin/dovecot";

/// Writes a config file with one route for every domain and returns its path.
fn route_config(dir: &Path, route: &str) -> PathBuf {
    let path = dir.join("ringmx.toml");
    std::fs::write(&path, format!("[routes]\n\"*\" = {route}\n")).unwrap();
    path
}

#[test]
fn starttls_to_postfix_verified_against_the_route_ca() {
    require_io_uring!();
    require_tool(SINK, "postfix");
    if !postfix_usable() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // Postfix relays what it gets on to a sink, which keeps it with Postfix's Received line.
    let sink_port = free_port();
    let dump = tmp.path().join("dump");
    let _sink = Sink::start(sink_port, &dump, &[]);
    let ca = Ca::new();
    let postfix = Postfix::start(
        format!("127.0.0.1:{sink_port}").parse().unwrap(),
        "smtpd_tls_security_level = may\n\
         smtpd_tls_cert_file = {DIR}/hop.pem\n\
         smtpd_tls_key_file = {DIR}/hop.key\n\
         smtpd_tls_loglevel = 1\n",
        |dir| {
            let (cert, key, _) = ca.leaf(dir, "hop", &["relay.example.org", "127.0.0.1"], 30);
            // Postfix's smtpd runs as `postfix` and reads them after dropping privileges.
            for f in [&cert, &key] {
                let out = run_tool(
                    Command::new("chown").arg("postfix").arg(f),
                    Duration::from_secs(10),
                );
                assert!(out.status.success());
            }
        },
    );
    let ca_file = tmp.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    // Another CA, which did not sign the hop's certificate.
    let other_ca = tmp.path().join("other-ca.pem");
    std::fs::write(&other_ca, Ca::new().pem()).unwrap();
    let hop = format!("smtp:[127.0.0.1]:{}", postfix.smtpd.port());
    // DOMAIN: encrypt, verified; may.test: may without ca (unverified); wrong.test: encrypt
    // against the wrong CA (deferred).
    let config = tmp.path().join("ringmx.toml");
    std::fs::write(
        &config,
        format!(
            "[routes]\n\
             \"{DOMAIN}\" = {{ target = \"{hop}\", tls = \"encrypt\", ca = \"{}\" }}\n\
             \"may.test\" = \"{hop}\"\n\
             \"wrong.test\" = {{ target = \"{hop}\", tls = \"encrypt\", ca = \"{}\" }}\n",
            ca_file.display(),
            other_ca.display()
        ),
    )
    .unwrap();
    let server = Server::start(&[
        "--config",
        config.to_str().unwrap(),
        "--domain",
        "may.test",
        "--domain",
        "wrong.test",
    ]);
    send(&server, 3, &format!("tls@{DOMAIN}"));
    send(&server, 1, "opportunistic@may.test");
    send(&server, 1, "mitm@wrong.test");
    wait_for("4 messages through Postfix at the sink", || {
        dumps(&dump).len() >= 4
    });
    wait_for("the wrong CA's message deferred", || {
        deferred_count(&server.spool()) == 1
    });
    let wrong = server.accepted_ids()[4].clone();
    let shown = queue(&server.spool(), &["show", &wrong]);
    assert!(shown.contains("4.7.5"), "{shown}");
    assert!(shown.contains("invalid peer certificate"), "{shown}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(files(&dump).len(), 4, "nothing sent for wrong.test");
    for f in dumps(&dump) {
        let text = String::from_utf8_lossy(&f);
        // Postfix's Received line for our connection says ESMTPS (ESMTP over TLS).
        assert!(
            text.contains("by relay.example.org (Postfix) with ESMTPS"),
            "{text}"
        );
        assert!(text.contains("\n.leading dot"), "{text}");
    }
    // The delivery lines come from the log thread, maybe after the messages reached the sink.
    let log = server.log_when("status=sent", 4, WAIT);
    let line = |to: &str| {
        log.lines()
            .find(|l| l.contains(to) && l.contains("status=sent"))
            .unwrap_or_else(|| panic!("no delivery of {to}: {log}"))
    };
    let verified = line(&format!("to=<tls@{DOMAIN}>"));
    assert!(verified.contains("tls=TLSv1."), "{verified}");
    assert!(verified.contains("/verified"), "{verified}");
    let may = line("to=<opportunistic@may.test>");
    assert!(may.contains("tls=TLSv1."), "{may}");
    assert!(may.contains("/unverified"), "{may}");
    let maillog = maillog_when(&postfix, "TLS connection established from", 1);
    assert!(
        maillog.contains("TLS connection established from"),
        "{maillog}"
    );
}

#[test]
fn encrypt_to_a_hop_without_starttls_defers_and_sends_nothing() {
    require_io_uring!();
    require_tool(SINK, "postfix");
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let dump = tmp.path().join("dump");
    // smtp-sink offers no STARTTLS.
    let _sink = Sink::start(port, &dump, &[]);
    let config = route_config(
        tmp.path(),
        &format!("{{ target = \"smtp:[127.0.0.1]:{port}\", tls = \"encrypt\" }}"),
    );
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    send(&server, 2, &format!("e@{DOMAIN}"));
    assert!(server.wait_log("status=deferred", WAIT), "{}", server.log());
    wait_for("2 deferred in queue ls", || {
        deferred_count(&server.spool()) == 2
    });
    let id = server.accepted_ids()[0].clone();
    let shown = queue(&server.spool(), &["show", &id]);
    assert!(shown.contains("4.7.4"), "{shown}");
    assert!(shown.contains("does not offer STARTTLS"), "{shown}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        files(&dump).is_empty(),
        "nothing may reach the hop in clear"
    );
}

/// aiosmtpd with a handler: `busy` answers 450 to RCPT for `busy@…`; `drop-mid-data` closes
/// the first connection that sends a message in the middle of its data (after its first few
/// KiB), and behaves afterwards. Each accepted message is written to `DUMP/<n>.eml` behind an
/// `X-Rcpts:` line. aiosmtpd offers neither CHUNKING nor STARTTLS: the body goes with DATA.
const HOP_PY: &str = r#"
import os, sys, time
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

port, dump, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
state = {"dropped": 0, "n": 0}

class DroppingSMTP(SMTP):
    async def smtp_DATA(self, arg):
        if mode == "drop-mid-data" and state["dropped"] == 0 and self.envelope.rcpt_tos:
            state["dropped"] += 1
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            await self._reader.read(4096)
            self.transport.close()
            return
        await super().smtp_DATA(arg)

class HopController(Controller):
    def factory(self):
        return DroppingSMTP(self.handler, **self.SMTP_kwargs)

class Handler:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if mode == "busy" and address.startswith("busy@"):
            return "450 4.2.1 <%s>: mailbox busy, try later" % address
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        state["n"] += 1
        tmp = os.path.join(os.path.dirname(dump), "hop-%d.tmp" % state["n"])
        with open(tmp, "wb") as f:
            f.write(("X-Rcpts: %s\r\n" % ",".join(envelope.rcpt_tos)).encode())
            f.write(envelope.original_content)
        os.rename(tmp, os.path.join(dump, "%d.eml" % state["n"]))
        return "250 2.0.0 OK"

controller = HopController(Handler(), hostname="127.0.0.1", port=port)
controller.start()
print("ready", flush=True)
while True:
    time.sleep(3600)
"#;

/// The aiosmtpd hop (killed on drop).
struct AioHop(Child);

impl AioHop {
    fn start(dir: &Path, port: u16, dump: &Path, mode: &str) -> Self {
        require_tool(PYTHON, "python3");
        let ok = Command::new(PYTHON)
            .args(["-c", "import aiosmtpd"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "python3-aiosmtpd is missing: run scripts/install-test-deps.sh"
        );
        std::fs::create_dir_all(dump).unwrap();
        let script = dir.join("hop.py");
        std::fs::write(&script, HOP_PY).unwrap();
        let mut child = Command::new(PYTHON)
            .arg(&script)
            .arg(port.to_string())
            .arg(dump)
            .arg(mode)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let stdout = child.stdout.take().unwrap();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "aiosmtpd did not start");
        Self(child)
    }
}

impl Drop for AioHop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn one_recipient_deferred_and_one_delivered_in_the_same_message() {
    require_io_uring!();
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let dump = tmp.path().join("dump");
    let _hop = AioHop::start(tmp.path(), port, &dump, "busy");
    let route = format!("smtp:[127.0.0.1]:{port}");
    let server = Server::start(&["--relay-to", &route, "--retry-first", "60"]);
    let mut c = Client::greeted(server.addr);
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<s@src.test>", 250);
    c.expect(&format!("RCPT TO:<ok@{DOMAIN}>"), 250);
    c.expect(&format!("RCPT TO:<busy@{DOMAIN}>"), 250);
    c.expect("DATA", 354);
    c.send(b"Subject: two\r\n\r\nfor two\r\n.\r\n");
    assert_eq!(c.reply().0, 250);
    let id = server.accepted_ids()[0].clone();
    wait_for("the deliverable copy at the hop", || {
        files(&dump).len() == 1
    });
    wait_for("one deferred recipient", || {
        let shown = queue(&server.spool(), &["show", &id]);
        shown.contains("deferred") && shown.contains("delivered")
    });
    let shown = queue(&server.spool(), &["show", &id]);
    assert!(shown.contains("4.2.1"), "{shown}");
    assert!(shown.contains(&format!("busy@{DOMAIN}")), "{shown}");
    let got = files(&dump);
    let text = String::from_utf8_lossy(&got[0]);
    assert!(
        text.starts_with(&format!("X-Rcpts: ok@{DOMAIN}\r\n")),
        "{text}"
    );
    assert!(text.ends_with("\r\nfor two\r\n"), "{text}");
    assert_eq!(deferred_count(&server.spool()), 1);
    let log = server.log_when("status=sent", 1, WAIT);
    assert!(
        log.contains(&format!("to=<ok@{DOMAIN}>")) && log.contains("status=sent"),
        "{log}"
    );
}

#[test]
fn hop_closing_mid_data_defers_then_delivers_once() {
    require_io_uring!();
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let dump = tmp.path().join("dump");
    let _hop = AioHop::start(tmp.path(), port, &dump, "drop-mid-data");
    let route = format!("smtp:[127.0.0.1]:{port}");
    let server = Server::start(&[
        "--relay-to",
        &route,
        "--retry-first",
        "1",
        "--retry-max",
        "1",
    ]);
    // Big enough that the hop hangs up while the body is still coming (256 KiB).
    let line = "x".repeat(78);
    let mut body = String::from("Subject: big\r\n\r\n");
    for i in 0..3300 {
        body.push_str(&format!("{i:05} {line}\r\n"));
    }
    // Dot-stuffed as it goes over DATA here: stored and relayed as ".leading dot".
    body.push_str("..leading dot\r\nend\r\n");
    let mut c = Client::greeted(server.addr);
    c.expect("EHLO client.test", 250);
    let (code, _) = c.send_message("s@src.test", &format!("d@{DOMAIN}"), body.as_bytes());
    assert_eq!(code, 250);
    assert!(server.wait_log("status=deferred", WAIT), "{}", server.log());
    let log = server.log();
    assert!(
        log.contains("connection closed by")
            || log.contains("write to")
            || log.contains("read from"),
        "{log}"
    );
    wait_for("delivered on the retry", || files(&dump).len() == 1);
    wait_for("queue empty", || queue(&server.spool(), &["ls"]).is_empty());
    std::thread::sleep(Duration::from_millis(300));
    let got = files(&dump);
    assert_eq!(got.len(), 1, "once");
    let text = String::from_utf8_lossy(&got[0]);
    assert!(
        text.ends_with("\r\n.leading dot\r\nend\r\n"),
        "dot-unstuffed, whole"
    );
    assert!(text.contains("03299 xxx"));
}

/// A private Dovecot with only the LMTP service, on a 127.0.0.1 port, delivering to Maildirs
/// under its directory (stopped by pid on drop).
struct Dovecot {
    dir: tempfile::TempDir,
    port: u16,
    /// The master, in the foreground (`-F`): its pid is ours to stop.
    master: Child,
}

impl Dovecot {
    fn start() -> Self {
        // Dovecot's mail processes run as the mail user; as root that is Debian's `mail`
        // (uid 8: Dovecot refuses mail access as uid 0), so the directory must be reachable.
        let dir = reachable_tempdir("ringmx-dovecot.");
        let root = dir.path();
        let port = free_port();
        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let (uid, gid) = (uid.to_string(), gid.to_string());
        let as_root = uid == "0";
        let users = if as_root {
            // Debian's dovecot-core creates `dovecot` and `dovenull`; `mail` is a base user.
            "default_internal_user = dovecot\ndefault_internal_group = dovecot\n\
             default_login_user = dovenull\nmail_uid = mail\nmail_gid = mail\nfirst_valid_uid = 8\n"
                .to_string()
        } else {
            let user = std::env::var("USER").unwrap_or_else(|_| uid.clone());
            format!(
                "default_internal_user = {user}\ndefault_login_user = {user}\n\
                 mail_uid = {uid}\nmail_gid = {gid}\nfirst_valid_uid = {uid}\n"
            )
        };
        let r = root.display();
        let conf = format!(
            "# A private test instance: LMTP only, on 127.0.0.1, Maildirs in this directory.
base_dir = {r}/run
state_dir = {r}/state
log_path = {r}/dovecot.log
protocols = lmtp
ssl = no
listen = 127.0.0.1
{users}mail_location = maildir:{r}/mail/%n
# The message as it came, but for Dovecot's Return-Path.
lmtp_add_received_header = no
lmtp_hdr_delivery_address = none
userdb {{
  driver = static
  args = home={r}/mail/%n
}}
passdb {{
  driver = static
  args = nopassword=y
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port}
  }}
}}
service anvil {{
  chroot =
}}
service stats {{
  chroot =
}}
"
        );
        for d in ["run", "state", "mail"] {
            std::fs::create_dir(root.join(d)).unwrap();
        }
        if as_root {
            let out = run_tool(
                Command::new("chown")
                    .arg("mail:mail")
                    .arg(root.join("mail")),
                Duration::from_secs(10),
            );
            assert!(out.status.success());
        }
        std::fs::write(root.join("dovecot.conf"), conf).unwrap();
        let master = Command::new(DOVECOT)
            .arg("-F")
            .arg("-c")
            .arg(root.join("dovecot.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut d = Self { dir, port, master };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = d.master.try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "dovecot did not listen ({exited:?}): {}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }

    /// The delivered messages of `user`.
    fn new_mail(&self, user: &str) -> PathBuf {
        self.dir.path().join("mail").join(user).join("new")
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let Ok(pid) = i32::try_from(self.master.id()) else {
            return;
        };
        // SAFETY: kill(2) on the master this instance started; on SIGTERM it stops its
        // children and exits.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !matches!(self.master.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.master.kill();
        let _ = self.master.wait();
    }
}

#[test]
fn a_thousand_messages_into_dovecot_lmtp_byte_exact_once_each_then_segments_deleted() {
    require_io_uring!();
    require_tool(DOVECOT, "dovecot-core");
    require_tool("/usr/lib/dovecot/lmtp", "dovecot-lmtpd");
    let source = Path::new(RINGMX).with_file_name("smtp-source");
    assert!(
        source.exists(),
        "{} is missing: cargo build --release --workspace --bins",
        source.display()
    );
    let n = 1000;
    let dovecot = Dovecot::start();
    let tmp = tempfile::tempdir().unwrap();
    let route = format!("lmtp:[127.0.0.1]:{}", dovecot.port);
    let mut server = Server::start(&["--relay-to", &route]);
    let acks = tmp.path().join("acks");
    let shape = [
        "-l",
        "2000",
        "-f",
        "s@src.test",
        "-t",
        "box@example.test",
        "-M",
        "src.test",
    ];
    let target = server.addr.to_string();
    let out = run_tool(
        Command::new(&source)
            .args(["-s", "8", "-m", &n.to_string(), "-d"])
            .args(shape)
            .arg("--ack-log")
            .arg(&acks)
            .arg(&target),
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "smtp-source: {out:?}");
    let maildir = dovecot.new_mail("box");
    wait_for_long(
        "1000 messages in the Maildir",
        Duration::from_secs(120),
        || files(&maildir).len() >= n,
    );
    wait_for("queue empty", || queue(&server.spool(), &["ls"]).is_empty());
    std::thread::sleep(Duration::from_millis(300));
    // Each acknowledged message once, byte for byte behind the trace headers in front of it.
    let verify = run_tool(
        Command::new(&source)
            .arg("--verify-eml")
            .arg(&maildir)
            .arg("--ack-log")
            .arg(&acks)
            .args(shape)
            .arg(&target),
        Duration::from_secs(60),
    );
    let report = String::from_utf8_lossy(&verify.stdout).into_owned()
        + &String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "{report}");
    assert!(report.contains(&format!("{n} ok")), "{report}");
    // In front of the message: Dovecot's Return-Path, then our Received line, nothing else.
    for f in files(&maildir) {
        let text = String::from_utf8_lossy(&f);
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("Return-Path: <s@src.test>"), "{text}");
        assert!(
            lines
                .next()
                .is_some_and(|l| l.starts_with("Received: from ")),
            "{text}"
        );
    }
    assert_eq!(
        server.stats_json()["delivery"]["delivered"].as_u64(),
        Some(n as u64)
    );
    // Sealed by a clean stop, the segments go at the next start: everything in them is
    // delivered.
    let before = segments(&server.spool());
    assert!(!before.is_empty());
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(WAIT).success());
    let spool = server.spool();
    let mut again = Command::new(RINGMX)
        .args(["serve", "--listen", "127.0.0.1:0", "--domain", DOMAIN])
        .args(["--hostname", "mx.example.test", "--reactors", "2"])
        .args(["--relay-to", &route, "--spool"])
        .arg(&spool)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let gone = loop {
        let now = segments(&spool);
        if before.iter().all(|s| !now.contains(s)) {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = again.kill();
    let _ = again.wait();
    assert!(gone, "segments left: {:?}", segments(&spool));
    assert_eq!(files(&maildir).len(), n, "nothing delivered twice");
}

fn wait_for_long(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn check_config_refuses_an_unusable_route_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing-ca.pem");
    let garbage = tmp.path().join("garbage.pem");
    std::fs::write(&garbage, "no certificate here\n").unwrap();
    for (route, why) in [
        (
            format!(
                "{{ target = \"smtp:[127.0.0.1]:25\", tls = \"encrypt\", ca = \"{}\" }}",
                missing.display()
            ),
            "missing-ca.pem",
        ),
        (
            format!(
                "{{ target = \"smtp:[127.0.0.1]:25\", ca = \"{}\" }}",
                garbage.display()
            ),
            "no certificate",
        ),
        (
            "{ target = \"lmtp:unix:/run/lmtp\", tls = \"encrypt\" }".to_string(),
            "not a unix socket",
        ),
    ] {
        let config = route_config(tmp.path(), &route);
        let out = run_tool(
            Command::new(RINGMX)
                .args(["check-config", "--domain", DOMAIN, "--config"])
                .arg(&config)
                .arg("--spool")
                .arg(tmp.path().join("spool")),
            Duration::from_secs(10),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{route}");
        assert!(err.contains(why), "{route}: {err}");
    }
}

#[test]
fn may_without_ca_falls_back_to_clear_when_the_handshake_fails() {
    require_io_uring!();
    require_tool(SINK, "postfix");
    if !postfix_usable() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let sink_port = free_port();
    let dump = tmp.path().join("dump");
    let _sink = Sink::start(sink_port, &dump, &[]);
    let ca = Ca::new();
    // STARTTLS offered, but only with protocol versions rustls does not speak.
    let postfix = Postfix::start(
        format!("127.0.0.1:{sink_port}").parse().unwrap(),
        "smtpd_tls_security_level = may\n\
         smtpd_tls_cert_file = {DIR}/hop.pem\n\
         smtpd_tls_key_file = {DIR}/hop.key\n\
         smtpd_tls_protocols = !SSLv2, !SSLv3, !TLSv1.2, !TLSv1.3\n\
         smtpd_tls_mandatory_protocols = !SSLv2, !SSLv3, !TLSv1.2, !TLSv1.3\n",
        |dir| {
            let (cert, key, _) = ca.leaf(dir, "hop", &["relay.example.org", "127.0.0.1"], 30);
            for f in [&cert, &key] {
                let out = run_tool(
                    Command::new("chown").arg("postfix").arg(f),
                    Duration::from_secs(10),
                );
                assert!(out.status.success());
            }
        },
    );
    let route = format!("smtp:[127.0.0.1]:{}", postfix.smtpd.port());
    let server = Server::start(&["--relay-to", &route]);
    send(&server, 1, &format!("fallback@{DOMAIN}"));
    wait_for("the message in clear at the sink", || {
        dumps(&dump).len() == 1
    });
    let text = String::from_utf8_lossy(&dumps(&dump)[0]).into_owned();
    assert!(
        text.contains("by relay.example.org (Postfix) with ESMTP id"),
        "{text}"
    );
    let log = server.log_when("status=sent", 1, WAIT);
    assert!(log.contains("again in clear"), "{log}");
    assert!(log.contains("tls=none"), "{log}");
}
