//! Real SMTP clients nobody here wrote against `ringmx serve`: Python's smtplib, curl, swaks and
//! Postfix's smtp-source. Each delivered message must be in the spool, byte-exact.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::require_io_uring;
use crate::util::{assert_stored, require_tool, run_tool, spool_ls, swaks, Server, DOMAIN};

/// A message with CRLF line endings, a line that needs dot-stuffing and 8-bit text.
fn message(client: &str) -> Vec<u8> {
    format!(
        "From: <{client}@example.org>\r\nTo: <rcpt@{DOMAIN}>\r\nSubject: delivered by {client}\r\n\
         Message-ID: <{client}.1@example.org>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n\
         Hello from {client}.\r\n.leading dot survives\r\nGrüße\r\n"
    )
    .into_bytes()
}

fn write_message(dir: &Path, client: &str) -> (std::path::PathBuf, Vec<u8>) {
    let body = message(client);
    let path = dir.join(format!("{client}.eml"));
    std::fs::write(&path, &body).unwrap();
    (path, body)
}

fn assert_single_delivery(server: &Server, body: &[u8], subject: &str) {
    assert!(
        server.wait_log("accepted id=", Duration::from_secs(5)),
        "{}",
        server.log()
    );
    let ids = server.accepted_ids();
    assert_eq!(ids.len(), 1, "{}", server.log());
    assert_stored(&server.spool(), &ids[0], body);
    let ls = spool_ls(&server.spool());
    assert!(ls.contains(&ids[0]), "{ls}");
    assert!(ls.contains(subject), "{ls}");
}

#[test]
fn python_smtplib_delivers() {
    require_io_uring!();
    require_tool("/usr/bin/python3", "python3");
    let server = Server::start(&[]);
    let (path, body) = write_message(server.dir.path(), "smtplib");
    let script = r#"
import smtplib, sys
host, port, path, rcpt = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
data = open(path, 'rb').read()
with smtplib.SMTP(host, port, local_hostname='py.example.org', timeout=10) as s:
    code, _ = s.ehlo()
    assert code == 250, code
    assert s.has_extn('pipelining'), 'no PIPELINING'
    refused = s.sendmail('smtplib@example.org', [rcpt], data)
    assert not refused, refused
print('sent')
"#;
    let out = run_tool(
        Command::new("python3")
            .args(["-c", script, "127.0.0.1", &server.addr.port().to_string()])
            .arg(&path)
            .arg(format!("rcpt@{DOMAIN}")),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{out:?}\n{}", server.log());
    assert_single_delivery(&server, &body, "delivered by smtplib");
}

#[test]
fn curl_delivers() {
    require_io_uring!();
    require_tool("/usr/bin/curl", "curl");
    let server = Server::start(&[]);
    let (path, body) = write_message(server.dir.path(), "curl");
    let out = run_tool(
        Command::new("curl")
            .args(["-sS", "--max-time", "20"])
            .arg(format!("smtp://{}/curl.example.org", server.addr))
            .args(["--mail-from", "curl@example.org"])
            .args(["--mail-rcpt", &format!("rcpt@{DOMAIN}")])
            .arg("--upload-file")
            .arg(&path),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{out:?}\n{}", server.log());
    assert_single_delivery(&server, &body, "delivered by curl");
}

#[test]
fn swaks_delivers() {
    require_io_uring!();
    require_tool("/usr/bin/swaks", "swaks");
    let server = Server::start(&[]);
    // swaks always sends `<CRLF>.<CRLF>` after the data, so a file without its last CRLF is
    // delivered as exactly our message.
    let body = message("swaks");
    let path = server.dir.path().join("swaks.eml");
    std::fs::write(&path, &body[..body.len() - 2]).unwrap();
    swaks(&server, &path, &[]);
    assert_single_delivery(&server, &body, "delivered by swaks");
}

#[test]
fn postfix_smtp_source_2000_messages_in_20_sessions() {
    require_io_uring!();
    require_tool("/usr/sbin/smtp-source", "postfix");
    const MESSAGES: u64 = 2000;
    let server = Server::start(&[]);
    let out = run_tool(
        Command::new("/usr/sbin/smtp-source")
            .args(["-s", "20", "-m", &MESSAGES.to_string()])
            .args(["-f", "source@example.org", "-t", &format!("rcpt@{DOMAIN}")])
            .arg(server.addr.to_string()),
        Duration::from_secs(180),
    );
    assert!(out.status.success(), "{out:?}\n{}", server.log());
    let stats = server.stats_json();
    assert_eq!(
        stats["total"]["counters"]["messages_accepted"], MESSAGES,
        "{stats}"
    );
    let ids = server.accepted_ids();
    assert_eq!(ids.len() as u64, MESSAGES);
    let ls = spool_ls(&server.spool());
    let words: std::collections::HashSet<&str> = ls.split_whitespace().collect();
    let listed = ids.iter().filter(|id| words.contains(id.as_str())).count() as u64;
    assert_eq!(listed, MESSAGES, "messages missing from `spool ls`");
}
