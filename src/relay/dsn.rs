//! Delivery status notifications (RFC 3464): the bounce a sender gets when recipients of its
//! message failed, or the warning when they have been deferred long (`--delay-warning`).
//! Pure: the message text is built from what the caller gives (no I/O, time passed in).
//!
//! The report is `multipart/report; report-type=delivery-status` (RFC 6522) with three parts:
//! a human-readable `text/plain`, the `message/delivery-status` fields (one per-message group,
//! one group per recipient) and the original message's header section as
//! `text/rfc822-headers`. It comes from `MAILER-DAEMON@<hostname>` with `Auto-Submitted:
//! auto-replied` (RFC 3834); the caller sends it with the null reverse-path `<>`, so a bounce
//! never bounces.
//!
//! Built by hand rather than with a MIME builder crate: every field is ours and ASCII, the
//! `message/delivery-status` syntax is not something `mail-builder` models, and the rules that
//! matter are few and checked here: CRLF line ends, no line over 998 bytes (header fields folded
//! at spaces near 78), remote replies and addresses made printable ASCII (other bytes become
//! `?` in replies, `\x{HEX}` in addresses, RFC 6533's `utf-8` address type), the original
//! headers sent as they are when they are 7-bit with short lines and otherwise base64-encoded.
//!
//! This module does not decide who gets a DSN, spool it or send it (that is the stage).

use std::time::SystemTime;

use base64::Engine;

use crate::spool::trace::rfc5322_date;

/// Longest remote reply quoted in a report (longer ones are cut).
pub const MAX_DIAGNOSTIC: usize = 900;
/// Most bytes of the original header section included.
pub const MAX_ORIGINAL_HEADERS: usize = 64 * 1024;
/// Header fields are folded at a space once a line reaches this length.
const FOLD_AT: usize = 78;
/// Hard line limit of RFC 5322 §2.1.1 (without CRLF).
pub const MAX_LINE: usize = 998;
/// Line length of base64 bodies.
const B64_LINE: usize = 76;

/// The subject of a bounce.
pub const SUBJECT_FAILED: &str = "Undelivered Mail Returned to Sender";
/// The subject of a delay warning.
pub const SUBJECT_DELAYED: &str = "Delayed Mail (still being retried)";

/// What the report says about a recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Failed for good (`Action: failed`).
    Failed,
    /// Still being retried (`Action: delayed`).
    Delayed,
}

/// One recipient in a report.
#[derive(Debug, Clone)]
pub struct RcptReport {
    /// The forward-path (without angle brackets).
    pub addr: String,
    /// Failed or delayed.
    pub action: Action,
    /// The RFC 3463 status, `5.1.1`.
    pub status: String,
    /// The host that gave the reply, if it came from one.
    pub remote_mta: Option<String>,
    /// The reply (`550 5.1.1 no such user`), if any.
    pub diagnostic: Option<String>,
    /// When it was last tried.
    pub last_attempt: Option<SystemTime>,
}

/// Everything a report is made of.
#[derive(Debug, Clone)]
pub struct Report<'a> {
    /// Our hostname (Reporting-MTA, From, Message-ID).
    pub hostname: &'a str,
    /// The original message's id (printed).
    pub original_id: &'a str,
    /// The original's reverse-path: the report's recipient.
    pub sender: &'a str,
    /// When the original arrived.
    pub arrival: SystemTime,
    /// The recipients reported (all of one action).
    pub rcpts: &'a [RcptReport],
    /// The first bytes of the original message (its header section is taken from them).
    pub original_head: &'a [u8],
    /// The report's own id (for its Message-ID and MIME boundary).
    pub report_id: &'a str,
    /// Now.
    pub now: SystemTime,
    /// For a delay warning: how long the message will still be retried, in hours.
    pub retry_hours: Option<u64>,
}

/// The report's bytes (RFC 5322, CRLF line ends, ASCII only).
pub fn build(r: &Report<'_>) -> Vec<u8> {
    let host = ascii_token(r.hostname);
    let delayed = r.rcpts.iter().all(|x| x.action == Action::Delayed) && !r.rcpts.is_empty();
    let headers = original_headers(r.original_head);
    let boundary = format!("{}.{}/{host}", r.report_id, unix_secs(r.now));
    let mut out = String::new();
    header(
        &mut out,
        "From",
        &format!("Mail Delivery System <MAILER-DAEMON@{host}>"),
    );
    header(&mut out, "To", &format!("<{}>", addr_text(r.sender)));
    header(
        &mut out,
        "Subject",
        if delayed {
            SUBJECT_DELAYED
        } else {
            SUBJECT_FAILED
        },
    );
    header(&mut out, "Date", &rfc5322_date(r.now));
    header(
        &mut out,
        "Message-ID",
        &format!("<{}.dsn@{host}>", r.report_id),
    );
    header(&mut out, "Auto-Submitted", "auto-replied");
    header(&mut out, "MIME-Version", "1.0");
    header(
        &mut out,
        "Content-Type",
        &format!("multipart/report; report-type=delivery-status; boundary=\"{boundary}\""),
    );
    header(&mut out, "Content-Transfer-Encoding", "7bit");
    out.push_str("\r\nThis is a MIME-encapsulated message.\r\n\r\n");

    // 1. For people.
    out.push_str(&format!("--{boundary}\r\n"));
    header(&mut out, "Content-Description", "Notification");
    header(&mut out, "Content-Type", "text/plain; charset=us-ascii");
    out.push_str("\r\n");
    let mut text = format!("This is the mail system at host {host}.\n\n");
    if delayed {
        text.push_str(&format!(
            "####################################################################\n\
             # THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #\n\
             ####################################################################\n\n\
             Your message could not be delivered to one or more recipients yet. \
             It will be retried{}.\n",
            r.retry_hours
                .map(|h| format!(" for {h} more hour(s)"))
                .unwrap_or_default()
        ));
    } else {
        text.push_str(
            "I'm sorry to have to inform you that your message could not be delivered \
             to one or more recipients. It's attached below.\n\n\
             For further assistance, please send mail to postmaster.\n\n\
             If you do so, please include this problem report. You can delete your own \
             text from the attached returned message.\n",
        );
    }
    text.push_str(&format!("\nThe message: {}\n", ascii_token(r.original_id)));
    for x in r.rcpts {
        let why = x
            .diagnostic
            .as_deref()
            .map_or_else(|| format!("status {}", x.status), printable);
        let via = x
            .remote_mta
            .as_deref()
            .map(|h| format!(" (host {} said)", ascii_token(h)))
            .unwrap_or_default();
        text.push_str(&format!("\n<{}>{via}: {why}\n", addr_text(&x.addr)));
    }
    for para in text.split('\n') {
        wrap(&mut out, para);
    }

    // 2. For machines.
    out.push_str(&format!("--{boundary}\r\n"));
    header(&mut out, "Content-Description", "Delivery report");
    header(&mut out, "Content-Type", "message/delivery-status");
    out.push_str("\r\n");
    header(&mut out, "Reporting-MTA", &format!("dns; {host}"));
    header(&mut out, "X-Ringmx-Queue-ID", &ascii_token(r.original_id));
    header(&mut out, "Arrival-Date", &rfc5322_date(r.arrival));
    for x in r.rcpts {
        out.push_str("\r\n");
        header(&mut out, "Final-Recipient", &final_recipient(&x.addr));
        header(
            &mut out,
            "Action",
            match x.action {
                Action::Failed => "failed",
                Action::Delayed => "delayed",
            },
        );
        header(&mut out, "Status", &status(&x.status, x.action));
        if let Some(h) = &x.remote_mta {
            header(&mut out, "Remote-MTA", &format!("dns; {}", ascii_token(h)));
        }
        if let Some(d) = &x.diagnostic {
            header(
                &mut out,
                "Diagnostic-Code",
                &format!("smtp; {}", printable(d)),
            );
        }
        if let Some(t) = x.last_attempt {
            header(&mut out, "Last-Attempt-Date", &rfc5322_date(t));
        }
    }
    out.push_str("\r\n");

    // 3. The original headers.
    out.push_str(&format!("--{boundary}\r\n"));
    header(
        &mut out,
        "Content-Description",
        "Undelivered Message Headers",
    );
    header(&mut out, "Content-Type", "text/rfc822-headers");
    let plain = headers.is_ascii()
        && headers.split(|&b| b == b'\n').all(|l| l.len() <= MAX_LINE)
        && !has_bare_cr_or_lf(headers)
        && memchr::memmem::find(headers, boundary.as_bytes()).is_none();
    if plain {
        out.push_str("\r\n");
        // ASCII checked above.
        out.push_str(&String::from_utf8_lossy(headers));
        if !headers.ends_with(b"\r\n") && !headers.is_empty() {
            out.push_str("\r\n");
        }
    } else {
        header(&mut out, "Content-Transfer-Encoding", "base64");
        out.push_str("\r\n");
        let b64 = base64::engine::general_purpose::STANDARD.encode(headers);
        for line in b64.as_bytes().chunks(B64_LINE) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push_str("\r\n");
        }
    }
    out.push_str(&format!("\r\n--{boundary}--\r\n"));
    out.into_bytes()
}

/// The header section of a message's first bytes (up to and including the empty line, at most
/// [`MAX_ORIGINAL_HEADERS`], cut after the last whole line).
pub fn original_headers(head: &[u8]) -> &[u8] {
    let head = &head[..head.len().min(MAX_ORIGINAL_HEADERS)];
    if let Some(i) = memchr::memmem::find(head, b"\r\n\r\n") {
        return &head[..i + 2];
    }
    if let Some(i) = memchr::memmem::find(head, b"\n\n") {
        return &head[..i + 1];
    }
    match memchr::memrchr(b'\n', head) {
        Some(i) => &head[..=i],
        None => &[],
    }
}

fn has_bare_cr_or_lf(b: &[u8]) -> bool {
    b.iter().enumerate().any(|(i, &c)| {
        (c == b'\n' && (i == 0 || b[i - 1] != b'\r'))
            || (c == b'\r' && b.get(i + 1) != Some(&b'\n'))
    })
}

/// The status for the action: a failed recipient gets a 5.x.x code (a 4.x.x one, the last
/// deferral of an expired recipient, becomes 5.x.x; RFC 3464 §2.3.3), a delayed one 4.x.x.
fn status(s: &str, action: Action) -> String {
    let valid = s.split('.').count() == 3
        && s.split('.')
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
    let rest = if valid { &s[1..] } else { ".0.0" };
    match action {
        Action::Failed => format!("5{rest}"),
        Action::Delayed => format!("4{rest}"),
    }
}

/// `rfc822; addr`, or RFC 6533's `utf-8; addr` with non-ASCII as `\x{HEX}`.
fn final_recipient(addr: &str) -> String {
    if addr.is_ascii() {
        format!("rfc822; {}", addr_text(addr))
    } else {
        format!("utf-8; {}", addr_text(addr))
    }
}

/// An address as printable ASCII: controls dropped, non-ASCII as `\x{HEX}` (RFC 6533).
fn addr_text(addr: &str) -> String {
    let mut s = String::new();
    for c in addr.chars() {
        if c.is_ascii_graphic() {
            s.push(c);
        } else if !c.is_ascii() {
            s.push_str(&format!("\\x{{{:X}}}", c as u32));
        }
    }
    s
}

/// A remote reply as printable ASCII on one line, at most [`MAX_DIAGNOSTIC`] bytes.
fn printable(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| match c {
            ' '..='~' => c,
            '\t' | '\r' | '\n' => ' ',
            _ => '?',
        })
        .collect();
    out.truncate(MAX_DIAGNOSTIC);
    out
}

/// A host name or id as a token: printable ASCII without spaces.
fn ascii_token(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect()
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Appends `name: value` folded at spaces (continuation lines start with a tab); no line
/// exceeds [`MAX_LINE`] (a word longer than that is cut: values here are bounded well below).
/// `value` is ASCII (every caller passes it through `addr_text`, `printable` or
/// `ascii_token`, or a literal), so cutting at a byte index is cutting at a character.
fn header(out: &mut String, name: &str, value: &str) {
    let mut line = format!("{name}:");
    let mut first = true;
    for word in value.split(' ').filter(|w| !w.is_empty()) {
        let word = &word[..word.len().min(MAX_LINE - 2)];
        if !first && line.len() + 1 + word.len() > FOLD_AT {
            out.push_str(&line);
            out.push_str("\r\n");
            line = format!("\t{word}");
        } else {
            line.push(' ');
            line.push_str(word);
        }
        first = false;
    }
    out.push_str(&line);
    out.push_str("\r\n");
}

/// Appends a paragraph of text wrapped at [`FOLD_AT`] columns (an empty one: an empty line).
fn wrap(out: &mut String, para: &str) {
    let mut line = String::new();
    for word in para.split(' ').filter(|w| !w.is_empty()) {
        let word = &word[..word.len().min(MAX_LINE)];
        if !line.is_empty() && line.len() + 1 + word.len() > FOLD_AT {
            out.push_str(&line);
            out.push_str("\r\n");
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    out.push_str(&line);
    out.push_str("\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::{MessageParser, MimeHeaders, PartType};
    use std::time::Duration;

    fn rcpt(addr: &str, action: Action, status: &str, diag: Option<&str>) -> RcptReport {
        RcptReport {
            addr: addr.into(),
            action,
            status: status.into(),
            remote_mta: Some("mail.example.org[192.0.2.7]".into()),
            diagnostic: diag.map(str::to_string),
            last_attempt: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_100)),
        }
    }

    fn report<'a>(rcpts: &'a [RcptReport], head: &'a [u8]) -> Report<'a> {
        Report {
            hostname: "mx.example.net",
            original_id: "01JDQ4R2S8K00",
            sender: "alice@example.com",
            arrival: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            rcpts,
            original_head: head,
            report_id: "01JDQ4R2S8K99",
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_200),
            retry_hours: None,
        }
    }

    fn lines_ok(b: &[u8]) {
        assert!(b.is_ascii());
        assert!(!has_bare_cr_or_lf(b), "CRLF only");
        for l in b.split(|&c| c == b'\n') {
            assert!(l.len() <= MAX_LINE + 1, "line of {} bytes", l.len());
        }
    }

    #[test]
    fn bounce_parses_with_mail_parser() {
        let long = format!(
            "550 5.1.1 <bob@example.org>: Recipient address rejected: caf\u{e9}\r\nnext {}",
            "x ".repeat(600)
        );
        let rcpts = [
            rcpt("bob@example.org", Action::Failed, "5.1.1", Some(&long)),
            rcpt("j\u{f6}rg@example.org", Action::Failed, "4.4.1", None),
        ];
        let head = b"Received: from x\r\n\tby y; date\r\nFrom: Alice <alice@example.com>\r\nSubject: hello\r\nMessage-ID: <m1@example.com>\r\n\r\nbody text\r\n";
        let b = build(&report(&rcpts, head));
        lines_ok(&b);
        let m = MessageParser::default().parse(&b).unwrap();
        assert_eq!(m.subject(), Some(SUBJECT_FAILED));
        assert_eq!(
            m.from().and_then(|a| a.first()).and_then(|a| a.address()),
            Some("MAILER-DAEMON@mx.example.net")
        );
        assert_eq!(
            m.header_raw("Auto-Submitted").map(str::trim),
            Some("auto-replied")
        );
        assert!(m.message_id().is_some() && m.date().is_some());
        let ct = m.content_type().unwrap();
        assert_eq!(ct.ctype(), "multipart");
        assert_eq!(ct.subtype(), Some("report"));
        assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
        let parts: Vec<_> = m.parts.iter().skip(1).collect();
        assert_eq!(parts.len(), 3);
        let types: Vec<String> = parts
            .iter()
            .map(|p| {
                let c = p.content_type().unwrap();
                format!("{}/{}", c.ctype(), c.subtype().unwrap_or(""))
            })
            .collect();
        assert_eq!(
            types,
            [
                "text/plain",
                "message/delivery-status",
                "text/rfc822-headers"
            ]
        );
        let text = match &parts[0].body {
            PartType::Text(t) => t.to_string(),
            other => panic!("{other:?}"),
        };
        assert!(
            text.contains("<bob@example.org> (host mail.example.org[192.0.2.7] said): 550 5.1.1")
        );
        let status = String::from_utf8_lossy(parts[1].contents()).into_owned();
        let unfolded = status.replace("\r\n\t", " ");
        assert!(
            unfolded.contains("Reporting-MTA: dns; mx.example.net\r\n"),
            "{status}"
        );
        assert!(unfolded.contains("Arrival-Date: "));
        assert!(unfolded.contains("Final-Recipient: rfc822; bob@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; mail.example.org[192.0.2.7]\r\nDiagnostic-Code: smtp; 550 5.1.1 <bob@example.org>: Recipient"));
        assert!(
            unfolded.contains("caf? next"),
            "non-ASCII and CRLF in replies sanitised"
        );
        assert!(unfolded.contains("Final-Recipient: utf-8; j\\x{F6}rg@example.org\r\nAction: failed\r\nStatus: 5.4.1\r\n"), "{status}");
        assert!(unfolded.contains("Last-Attempt-Date: "));
        let orig = String::from_utf8_lossy(parts[2].contents()).into_owned();
        assert!(
            orig.contains("Subject: hello\r\n") && orig.contains("Message-ID: <m1@example.com>")
        );
        assert!(!orig.contains("body text"), "headers only");
    }

    #[test]
    fn eight_bit_headers_go_base64_and_delays_say_delayed() {
        let rcpts = [rcpt(
            "bob@example.org",
            Action::Delayed,
            "4.4.1",
            Some("451 4.4.1 later"),
        )];
        let head = "Subject: gr\u{fc}\u{df}e\r\nFrom: a@b\r\n\r\nx".as_bytes();
        let mut r = report(&rcpts, head);
        r.retry_hours = Some(116);
        let b = build(&r);
        lines_ok(&b);
        let m = MessageParser::default().parse(&b).unwrap();
        assert_eq!(m.subject(), Some(SUBJECT_DELAYED));
        let parts: Vec<_> = m.parts.iter().skip(1).collect();
        let status = String::from_utf8_lossy(parts[1].contents()).into_owned();
        assert!(
            status.contains("Action: delayed\r\nStatus: 4.4.1\r\n"),
            "{status}"
        );
        assert_eq!(
            parts[2].contents(),
            "Subject: gr\u{fc}\u{df}e\r\nFrom: a@b\r\n".as_bytes()
        );
    }

    #[test]
    fn original_headers_stop_at_the_body_or_the_last_whole_line() {
        assert_eq!(original_headers(b"A: 1\r\n\r\nbody"), b"A: 1\r\n");
        assert_eq!(original_headers(b"A: 1\r\nB: 2"), b"A: 1\r\n");
        assert_eq!(original_headers(b"A: 1"), b"");
    }
}
