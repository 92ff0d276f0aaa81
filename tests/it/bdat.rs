//! CHUNKING (RFC 3030) over loopback: BDAT chunks pipelined and split across writes reach the
//! spool byte-exact; refused chunks are read and discarded; Python's smtplib sends raw BDAT.

use std::process::Command;
use std::time::Duration;

use crate::require_io_uring;
use crate::util::{assert_stored, require_tool, run_tool, Client, Server, DOMAIN};

/// A body with lines starting with `.`, a 998-octet line, 8-bit text and `<CRLF>.<CRLF>` inside
/// (BDAT content is not dot-stuffed, so none of it is special).
fn varied_body(len: usize) -> Vec<u8> {
    let mut b = format!("From: <c@example.org>\r\nTo: <r@{DOMAIN}>\r\nSubject: chunks\r\n\r\n")
        .into_bytes();
    b.extend_from_slice(b".leading dot\r\n..two dots\r\n.\r\nGr\xc3\xbc\xc3\x9fe\r\n");
    b.extend(std::iter::repeat_n(b'x', 998));
    b.extend_from_slice(b"\r\n");
    let mut i = 0u32;
    while b.len() + 80 < len {
        b.extend_from_slice(format!("line {i:08} {}\r\n", "abcdefgh".repeat(7)).as_bytes());
        i += 1;
    }
    b
}

#[test]
fn bdat_chunks_split_across_writes_are_stored_byte_exact() {
    require_io_uring!();
    let server = Server::start(&["--max-message-size", "4194304"]);
    let body = varied_body(2 * 1024 * 1024);
    let mut c = Client::greeted(server.addr);
    let ehlo = c.expect("EHLO c.example.org", 250);
    assert!(ehlo.contains("250-CHUNKING\r\n"), "{ehlo}");
    // MAIL, RCPT and every chunk pipelined; each chunk written in uneven pieces, the command
    // line of the next chunk glued to the tail of the previous one.
    let chunks: Vec<&[u8]> = body.chunks(300_001).collect();
    let mut wire = format!("MAIL FROM:<c@example.org>\r\nRCPT TO:<r@{DOMAIN}>\r\n").into_bytes();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = if i + 1 == chunks.len() { " LAST" } else { "" };
        wire.extend_from_slice(format!("BDAT {}{last}\r\n", chunk.len()).as_bytes());
        wire.extend_from_slice(chunk);
    }
    for piece in wire.chunks(65_521) {
        c.send(piece);
    }
    assert_eq!(c.reply().0, 250);
    assert_eq!(c.reply().0, 250);
    for chunk in &chunks[..chunks.len() - 1] {
        let (code, text) = c.reply();
        assert_eq!(
            (code, text),
            (
                250,
                format!("250 2.0.0 {} octets received\r\n", chunk.len())
            )
        );
    }
    let (code, text) = c.reply();
    assert_eq!(code, 250, "{text}");
    let id = text.trim_end().rsplit(' ').next().unwrap().to_owned();
    assert_stored(&server.spool(), &id, &body);
    // BDAT 0 LAST: an empty message.
    c.send(b"MAIL FROM:<>\r\nRCPT TO:<postmaster>\r\nBDAT 0 LAST\r\n");
    assert_eq!(c.reply().0, 250);
    assert_eq!(c.reply().0, 250);
    let (code, text) = c.reply();
    assert_eq!(code, 250, "{text}");
    let empty = text.trim_end().rsplit(' ').next().unwrap().to_owned();
    assert_stored(&server.spool(), &empty, b"");
    c.expect("QUIT", 221);
}

#[test]
fn refused_and_discarded_bdat_messages_store_nothing() {
    require_io_uring!();
    let server = Server::start(&["--max-message-size", "1000"]);
    let mut c = Client::greeted(server.addr);
    c.expect("EHLO c.example.org", 250);
    // No MAIL: the chunk is read and discarded, then 503.
    c.send(b"BDAT 5\r\nNOOP\n");
    assert!(c.reply().1.starts_with("503 5.5.1"));
    // Over the size limit: the remaining chunks are read and discarded, LAST gets 552.
    let big = vec![b'y'; 700];
    let mut wire = format!("MAIL FROM:<a@example.org>\r\nRCPT TO:<r@{DOMAIN}>\r\n").into_bytes();
    for last in ["", "", " LAST"] {
        wire.extend_from_slice(format!("BDAT 700{last}\r\n").as_bytes());
        wire.extend_from_slice(&big);
    }
    c.send(&wire);
    let got: Vec<String> = (0..5).map(|_| c.reply().1).collect();
    assert!(
        got[2].starts_with("250 2.0.0 700 octets received"),
        "{got:?}"
    );
    assert!(got[3].starts_with("552 5.3.4"), "{got:?}");
    assert!(got[4].starts_with("552 5.3.4"), "{got:?}");
    // RSET discards a partial message; DATA after BDAT is refused.
    c.send(
        format!(
            "MAIL FROM:<a@example.org>\r\nRCPT TO:<r@{DOMAIN}>\r\nBDAT 3\r\nabcDATA\r\nRSET\r\n"
        )
        .as_bytes(),
    );
    let got: Vec<String> = (0..5).map(|_| c.reply().1).collect();
    assert!(got[2].starts_with("250 2.0.0 3 octets received"), "{got:?}");
    assert!(got[3].starts_with("503 5.5.1"), "{got:?}");
    assert!(got[4].starts_with("250 2.0.0 Ok"), "{got:?}");
    // A bare LF in a chunk: 550 5.6.0, as in DATA.
    c.send(
        format!("MAIL FROM:<a@example.org>\r\nRCPT TO:<r@{DOMAIN}>\r\nBDAT 4 LAST\r\na\nb\n")
            .as_bytes(),
    );
    let got: Vec<String> = (0..3).map(|_| c.reply().1).collect();
    assert!(got[2].starts_with("550 5.6.0"), "{got:?}");
    // An unparseable size: 501 and the connection closes.
    c.send(b"BDAT many\r\n");
    assert!(c.reply().1.starts_with("501 5.5.4"));
    assert!(c.closed_within(Duration::from_secs(5)));
    assert!(
        server.wait_log("reason=bad-bdat", Duration::from_secs(5)),
        "{}",
        server.log()
    );
    assert!(server.accepted_ids().is_empty(), "{}", server.log());
    let log = server.log();
    assert!(log.contains("reason=too-big"), "{log}");
    assert!(log.contains("reason=discarded"), "{log}");
    assert!(log.contains("reason=bare-line-ending"), "{log}");
}

#[test]
fn python_smtplib_sends_raw_bdat() {
    require_io_uring!();
    require_tool("/usr/bin/python3", "python3");
    let server = Server::start(&[]);
    let body = varied_body(100 * 1024);
    let path = server.dir.path().join("m.eml");
    std::fs::write(&path, &body).unwrap();
    let script = r#"
import smtplib, sys
host, port, path, rcpt = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
data = open(path, 'rb').read()
with smtplib.SMTP(host, port, local_hostname='py.example.org', timeout=10) as s:
    s.ehlo()
    assert s.has_extn('chunking'), 'no CHUNKING'
    assert s.mail('py@example.org')[0] == 250
    assert s.rcpt(rcpt)[0] == 250
    half = len(data) // 2
    for chunk, last in ((data[:half], ''), (data[half:], ' LAST')):
        s.putcmd('BDAT %d%s' % (len(chunk), last))
        s.send(chunk)
        code, msg = s.getreply()
        assert code == 250, (code, msg)
    print(msg.decode())
"#;
    let out = run_tool(
        Command::new("python3")
            .args(["-c", script, "127.0.0.1", &server.addr.port().to_string()])
            .arg(&path)
            .arg(format!("rcpt@{DOMAIN}")),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{out:?}\n{}", server.log());
    let ids = server.accepted_ids();
    assert_eq!(ids.len(), 1, "{}", server.log());
    assert!(String::from_utf8_lossy(&out.stdout).contains(&ids[0]));
    assert_stored(&server.spool(), &ids[0], &body);
}
