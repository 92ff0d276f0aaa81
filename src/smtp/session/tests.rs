//! Transcript tests for the session: `C:` lines go in, `S:` lines must come out, with no
//! sockets and a fake `now`. A small driver plays the server's part (keeps unconsumed bytes,
//! answers commits) and a recording sink keeps what the spool would have seen.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::smtp::{
    BareLf, BodySink, Closed, CommitError, Envelope, Phase, RecipientRefusal, Rejection, Session,
    SessionConfig, Verdict, DEFAULT_MAX_RECIPIENTS, MAX_COMMAND_LINE, MAX_LOCAL_PART,
};

// ---- harness --------------------------------------------------------------------------------

/// One message as the sink saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Message {
    envelope: Envelope,
    body: Vec<u8>,
    outcome: Option<Result<(), Rejection>>,
}

/// Records begin/segment/end and checks they come in a sane order.
#[derive(Debug, Default)]
struct RecordingSink {
    messages: Vec<Message>,
    segment_calls: usize,
    /// Recipients reported as refused by policy.
    refused: Vec<(String, RecipientRefusal)>,
}

impl BodySink for RecordingSink {
    fn begin(&mut self, envelope: &Envelope) {
        assert!(
            self.messages.last().is_none_or(|m| m.outcome.is_some()),
            "begin while a message is open"
        );
        assert!(!envelope.rcpts.is_empty(), "begin without recipients");
        self.messages.push(Message {
            envelope: envelope.clone(),
            body: Vec::new(),
            outcome: None,
        });
    }

    fn segment(&mut self, bytes: &[u8]) {
        let m = self.messages.last_mut().expect("segment before begin");
        assert!(m.outcome.is_none(), "segment after end");
        m.body.extend_from_slice(bytes);
        self.segment_calls += 1;
    }

    fn end(&mut self, envelope: &Envelope, outcome: Result<(), Rejection>) {
        let m = self.messages.last_mut().expect("end before begin");
        assert!(m.outcome.is_none(), "end twice");
        assert_eq!(&m.envelope, envelope, "envelope changed during DATA");
        m.outcome = Some(outcome);
    }

    fn recipient_refused(&mut self, envelope: &Envelope, address: &str, why: RecipientRefusal) {
        assert!(
            self.messages.last().is_none_or(|m| m.outcome.is_some()),
            "a refusal during DATA"
        );
        let _ = envelope;
        self.refused.push((address.to_owned(), why));
    }
}

/// Plays the io_uring driver: holds unconsumed bytes, commits messages, collects replies.
struct Driver {
    session: Session,
    sink: RecordingSink,
    out: Vec<u8>,
    pending: Vec<u8>,
    now: Instant,
    closed: Option<Closed>,
    /// Commit results to hand out, in order; when empty, `Ok("Q<n>")`.
    commits: VecDeque<Result<String, CommitError>>,
    committed: usize,
    /// Bytes dropped after a STARTTLS line.
    discarded: usize,
    /// Verdicts to hand out for RCPTs that wait for one, in order; when empty, `Accepted`.
    verdicts: VecDeque<Verdict>,
    /// The addresses that waited for a verdict, in order.
    asked: Vec<String>,
}

impl Driver {
    fn new(config: SessionConfig) -> Self {
        let now = Instant::now();
        let mut session = Session::new(
            Arc::new(config),
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
            now,
        );
        let mut out = Vec::new();
        session.greeting(&mut out);
        Self {
            session,
            sink: RecordingSink::default(),
            out,
            pending: Vec::new(),
            now,
            closed: None,
            commits: VecDeque::new(),
            committed: 0,
            discarded: 0,
            verdicts: VecDeque::new(),
            asked: Vec::new(),
        }
    }

    /// Bytes arrive from the client.
    fn feed(&mut self, bytes: &[u8]) {
        if self.closed.is_some() {
            return; // the connection is gone
        }
        self.pending.extend_from_slice(bytes);
        loop {
            let r =
                self.session
                    .handle_input(self.now, &self.pending, &mut self.out, &mut self.sink);
            match r {
                Err(c) => {
                    assert_eq!(self.session.phase(), Phase::Closed);
                    self.closed = Some(c);
                    self.pending.clear();
                    return;
                }
                Ok(n) => {
                    assert!(n <= self.pending.len());
                    self.pending.drain(..n);
                    let phase = self.session.phase();
                    if phase == Phase::AwaitingVerdict {
                        assert!(self.session.next_deadline().is_none());
                        let address = self.session.awaiting_verdict().expect("an address");
                        self.asked.push(address.to_owned());
                        let v = self.verdicts.pop_front().unwrap_or(Verdict::Accepted);
                        if let Err(c) = self.session.handle_verdict(self.now, v, &mut self.out) {
                            self.closed = Some(c);
                            self.pending.clear();
                            return;
                        }
                        continue;
                    }
                    if phase != Phase::AwaitingCommit && n > 0 && !self.pending.is_empty() {
                        continue; // returned after a message ended: settle it, go on
                    }
                    match phase {
                        Phase::AwaitingCommit => self.commit(),
                        Phase::Command => {
                            assert!(self.pending.len() < MAX_COMMAND_LINE, "driver buffers");
                            return;
                        }
                        Phase::Data => {
                            assert!(self.pending.is_empty(), "DATA must consume all");
                            return;
                        }
                        Phase::StartTls => {
                            // The driver discards what it holds (CVE-2011-0411); the tests
                            // call `tls_started` themselves.
                            self.discarded += self.pending.len();
                            self.pending.clear();
                            return;
                        }
                        Phase::Closed => unreachable!("closed without Err"),
                        Phase::AwaitingVerdict => unreachable!("handled above"),
                    }
                }
            }
        }
    }

    fn commit(&mut self) {
        let last = self.sink.messages.last().expect("commit without message");
        assert_eq!(last.outcome, Some(Ok(())));
        // Nothing may have been written between the 354 and the end of the body (with BDAT
        // the replies to the commands before the LAST chunk may still be waiting here).
        let text = out_text(&self.out);
        assert!(
            self.out.is_empty()
                || text.ends_with("354 End data with <CR><LF>.<CR><LF>\r\n")
                || text.ends_with(" octets received\r\n")
                || text.ends_with(" Ok\r\n"),
            "a reply before the commit: {text:?}"
        );
        self.committed += 1;
        let result = self
            .commits
            .pop_front()
            .unwrap_or_else(|| Ok(format!("Q{}", self.committed)));
        self.session
            .handle_commit(self.now, result.as_deref().map_err(|e| *e), &mut self.out);
        assert_eq!(self.session.phase(), Phase::Command);
    }

    /// The reply lines written since the last call, each checked to end in CRLF.
    fn take_lines(&mut self) -> Vec<String> {
        let text = out_text(&std::mem::take(&mut self.out));
        assert!(text.is_empty() || text.ends_with("\r\n"), "{text:?}");
        let lines: Vec<String> = text.split_terminator("\r\n").map(str::to_owned).collect();
        for l in &lines {
            assert!(!l.contains(['\r', '\n']), "bare line ending in reply {l:?}");
            assert!(l.len() >= 3 && l.as_bytes()[..3].iter().all(u8::is_ascii_digit));
        }
        lines
    }
}

fn out_text(out: &[u8]) -> String {
    String::from_utf8(out.to_vec()).expect("replies are UTF-8")
}

/// `\r`, `\n`, `\0`, `\xHH` and `\\` in a transcript's client lines.
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut v = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            match b[i + 1] {
                b'r' => v.push(b'\r'),
                b'n' => v.push(b'\n'),
                b'0' => v.push(0),
                b'\\' => v.push(b'\\'),
                b'x' => {
                    let hex = std::str::from_utf8(&b[i + 2..i + 4]).unwrap();
                    v.push(u8::from_str_radix(hex, 16).unwrap());
                    i += 2;
                }
                other => panic!("bad escape \\{}", other as char),
            }
            i += 2;
        } else {
            v.push(b[i]);
            i += 1;
        }
    }
    v
}

/// Runs a transcript. `C: text` sends `text` + CRLF, `C| text` sends `text` alone (escapes
/// allowed in both); consecutive client lines go in one read (a pipelined batch). Each `S:`
/// line must be the start of the next reply line. `CLOSED: Reason` checks the session ended.
/// At the end no reply may be left unchecked.
fn run(config: SessionConfig, script: &str) -> Driver {
    run_with(Driver::new(config), script)
}

/// [`run`] on a driver set up by the caller (e.g. with a [`crate::smtp::Policy`]).
fn run_with(mut d: Driver, script: &str) -> Driver {
    let mut batch = Vec::new();
    let mut replies: VecDeque<String> = VecDeque::new();
    for (n, raw) in script.lines().enumerate() {
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(c) = line.strip_prefix("C: ") {
            batch.extend(unescape(c));
            batch.extend_from_slice(b"\r\n");
            continue;
        }
        if line == "C:" {
            batch.extend_from_slice(b"\r\n");
            continue;
        }
        if let Some(c) = line.strip_prefix("C| ") {
            batch.extend(unescape(c));
            continue;
        }
        if !batch.is_empty() {
            d.feed(&std::mem::take(&mut batch));
        }
        replies.extend(d.take_lines());
        if let Some(s) = line.strip_prefix("S: ") {
            let got = replies
                .pop_front()
                .unwrap_or_else(|| panic!("line {}: expected {s:?}, got no reply", n + 1));
            assert!(
                got.starts_with(s),
                "line {}: expected {s:?}, got {got:?}",
                n + 1
            );
        } else if let Some(reason) = line.strip_prefix("CLOSED: ") {
            assert_eq!(format!("{:?}", d.closed), format!("Some({reason})"));
        } else {
            panic!("line {}: bad transcript line {line:?}", n + 1);
        }
    }
    if !batch.is_empty() {
        d.feed(&batch);
    }
    replies.extend(d.take_lines());
    assert!(replies.is_empty(), "unchecked replies: {replies:?}");
    d
}

fn config() -> SessionConfig {
    let mut c = SessionConfig::new("mx.test", vec!["local.test".into(), "Example.ORG".into()]);
    c.max_message_size = 1000;
    c
}

fn no_cap() -> SessionConfig {
    let mut c = config();
    c.max_errors = 0;
    c
}

const GREETED: &str = "
    S: 220 mx.test ESMTP ringmx
    C: EHLO client.test
    S: 250-mx.test
    S: 250-PIPELINING
    S: 250-SIZE 1000
    S: 250-8BITMIME
    S: 250-ENHANCEDSTATUSCODES
    S: 250-CHUNKING
    S: 250 SMTPUTF8
";

fn greeted(script: &str) -> String {
    format!("{GREETED}{script}")
}

// ---- greeting, EHLO, HELO -------------------------------------------------------------------

#[test]
fn greeting_names_the_host_without_enhanced_code() {
    let mut d = Driver::new(config());
    assert_eq!(d.take_lines(), ["220 mx.test ESMTP ringmx"]);
    assert_eq!(d.session.phase(), Phase::Command);
}

#[test]
fn ehlo_is_multi_line_and_helo_single_line() {
    let d = run(
        config(),
        &greeted(
            "
        C: HELO other.test
        S: 250 mx.test
        C: ehlo third.test
        S: 250-mx.test
        S: 250-PIPELINING
        S: 250-SIZE 1000
        S: 250-8BITMIME
        S: 250-ENHANCEDSTATUSCODES
        S: 250-CHUNKING
        S: 250 SMTPUTF8
        ",
        ),
    );
    assert_eq!(d.session.envelope().helo, "third.test");
    assert!(d.session.envelope().esmtp);
    let d = run(config(), "S: 220\nC: HELO plain.test\nS: 250 mx.test");
    assert_eq!(d.session.envelope().helo, "plain.test");
    assert!(!d.session.envelope().esmtp);
}

#[test]
fn helo_and_ehlo_need_an_argument() {
    run(
        config(),
        "S: 220
         C: EHLO
         S: 501 5.5.4 Syntax: EHLO hostname
         C: HELO
         S: 501 5.5.4 Syntax: HELO hostname
         C: MAIL FROM:<a@b.test>
         S: 503 5.5.1 Send HELO/EHLO first",
    );
}

// ---- a whole transaction --------------------------------------------------------------------

#[test]
fn a_message_is_queued_only_after_commit() {
    let d = run(
        config(),
        &greeted(
            r"
        C: MAIL FROM:<alice@sender.test> SIZE=20 BODY=8BITMIME
        S: 250 2.1.0 Ok
        C: RCPT TO:<bob@local.test>
        S: 250 2.1.5 Ok
        C: RCPT TO:<carol@EXAMPLE.org>
        S: 250 2.1.5 Ok
        C: DATA
        S: 354 End data with <CR><LF>.<CR><LF>
        C: Subject: hi
        C:
        C: hello
        C: .
        S: 250 2.0.0 Ok queued as Q1
        C: QUIT
        S: 221 2.0.0 Bye
        CLOSED: Quit
        ",
        ),
    );
    assert_eq!(d.sink.messages.len(), 1);
    let m = &d.sink.messages[0];
    assert_eq!(m.body, b"Subject: hi\r\n\r\nhello\r\n");
    assert_eq!(m.outcome, Some(Ok(())));
    assert_eq!(
        m.envelope,
        Envelope {
            helo: "client.test".into(),
            esmtp: true,
            mail_from: "alice@sender.test".into(),
            declared_size: Some(20),
            body_8bitmime: true,
            smtputf8: false,
            rcpts: vec!["bob@local.test".into(), "carol@EXAMPLE.org".into()],
            tls: None,
        }
    );
}

#[test]
fn the_session_waits_for_the_commit_and_writes_no_250_itself() {
    let now = Instant::now();
    let mut s = Session::new(Arc::new(config()), IpAddr::V4(Ipv4Addr::LOCALHOST), now);
    let mut out = Vec::new();
    let mut sink = RecordingSink::default();
    let input: &[u8] =
        b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@local.test>\r\nDATA\r\nbody\r\n.\r\nNOOP\r\n";
    let n = s.handle_input(now, input, &mut out, &mut sink).unwrap();
    assert_eq!(&input[n..], b"NOOP\r\n", "stops right after the terminator");
    assert_eq!(s.phase(), Phase::AwaitingCommit);
    assert_eq!(s.next_deadline(), None);
    assert!(out_text(&out).ends_with("354 End data with <CR><LF>.<CR><LF>\r\n"));
    assert_eq!(sink.messages[0].outcome, Some(Ok(())));
    // More input before the commit is not consumed and answers nothing.
    let before = out.len();
    assert_eq!(s.handle_input(now, &input[n..], &mut out, &mut sink), Ok(0));
    assert_eq!(out.len(), before);
    // The commit writes the 250, then the rest is handled.
    s.handle_commit(now, Ok("ABC123"), &mut out);
    assert!(out_text(&out)
        .ends_with("354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok queued as ABC123\r\n"));
    assert_eq!(s.phase(), Phase::Command);
    assert_eq!(s.envelope().rcpts.len(), 0, "transaction ended");
    assert_eq!(s.handle_input(now, &input[n..], &mut out, &mut sink), Ok(6));
    assert!(out_text(&out).ends_with("queued as ABC123\r\n250 2.0.0 Ok\r\n"));
}

#[test]
fn commit_failures_are_452_and_451_and_the_session_goes_on() {
    let mut d = Driver::new(config());
    d.commits.push_back(Err(CommitError::NoSpace));
    d.commits.push_back(Err(CommitError::Io));
    let msg = b"MAIL FROM:<>\r\nRCPT TO:<a@local.test>\r\nDATA\r\nx\r\n.\r\n";
    d.feed(b"EHLO c\r\n");
    d.take_lines();
    for _ in 0..3 {
        d.feed(msg);
    }
    let lines = d.take_lines();
    let finals: Vec<&str> = lines
        .iter()
        .map(String::as_str)
        .filter(|l| !l.starts_with("250 2.1") && !l.starts_with("354"))
        .collect();
    assert_eq!(
        finals,
        [
            "452 4.3.1 Insufficient system storage",
            "451 4.3.0 Local error in processing, try again later",
            "250 2.0.0 Ok queued as Q3",
        ]
    );
    assert_eq!(d.closed, None);
}

#[test]
fn handle_commit_outside_awaiting_commit_does_nothing() {
    let mut d = Driver::new(config());
    d.take_lines();
    d.session.handle_commit(d.now, Ok("X"), &mut d.out);
    d.session
        .handle_commit(d.now, Err(CommitError::Io), &mut d.out);
    assert!(d.out.is_empty());
    assert_eq!(d.session.phase(), Phase::Command);
}

#[test]
fn several_messages_in_one_session_keep_their_own_envelopes() {
    let d = run(
        config(),
        &greeted(
            "
        C: MAIL FROM:<a@s.test>
        C: RCPT TO:<one@local.test>
        C: DATA
        S: 250 2.1.0
        S: 250 2.1.5
        S: 354
        C: first
        C: .
        C: MAIL FROM:<b@s.test>
        C: RCPT TO:<two@local.test>
        C: RCPT TO:<three@local.test>
        C: DATA
        S: 250 2.0.0 Ok queued as Q1
        S: 250 2.1.0
        S: 250 2.1.5
        S: 250 2.1.5
        S: 354
        C: second
        C: .
        S: 250 2.0.0 Ok queued as Q2
        ",
        ),
    );
    let m = &d.sink.messages;
    assert_eq!(m.len(), 2);
    assert_eq!(m[0].envelope.rcpts, ["one@local.test"]);
    assert_eq!(m[1].envelope.rcpts, ["two@local.test", "three@local.test"]);
    assert_eq!(m[1].envelope.mail_from, "b@s.test");
    assert_eq!(m[0].body, b"first\r\n");
    assert_eq!(m[1].body, b"second\r\n");
}

// ---- sequence errors ------------------------------------------------------------------------

#[test]
fn sequence_errors_are_503() {
    run(
        config(),
        &greeted(
            "
        C: RCPT TO:<a@local.test>
        S: 503 5.5.1 Need MAIL command
        C: DATA
        S: 503 5.5.1 Need MAIL command
        C: MAIL FROM:<a@s.test>
        S: 250 2.1.0
        C: MAIL FROM:<a@s.test>
        S: 503 5.5.1 Nested MAIL command
        C: DATA
        S: 503 5.5.1 Need RCPT command
        C: RCPT TO:<nobody@remote.test>
        S: 550 5.7.1
        C: DATA
        S: 503 5.5.1 Need RCPT command
        C: RCPT TO:<a@local.test>
        S: 250 2.1.5
        ",
        ),
    );
}

#[test]
fn rset_ends_the_transaction_but_keeps_the_greeting() {
    let d = run(
        config(),
        &greeted(
            "
        C: MAIL FROM:<a@s.test>
        C: RCPT TO:<a@local.test>
        C: RSET
        C: RCPT TO:<a@local.test>
        C: MAIL FROM:<b@s.test>
        C: RSET x
        S: 250 2.1.0
        S: 250 2.1.5
        S: 250 2.0.0 Ok
        S: 503 5.5.1 Need MAIL command
        S: 250 2.1.0
        S: 501 5.5.4 Syntax: RSET
        ",
        ),
    );
    assert_eq!(d.session.envelope().mail_from, "b@s.test");
    assert!(d.session.envelope().rcpts.is_empty());
    assert_eq!(d.session.envelope().helo, "client.test");
}

#[test]
fn ehlo_in_the_middle_of_a_transaction_resets_it() {
    run(
        config(),
        &greeted(
            "
        C: MAIL FROM:<a@s.test>
        C: RCPT TO:<a@local.test>
        C: EHLO again.test
        C: DATA
        C: RCPT TO:<a@local.test>
        C: MAIL FROM:<a@s.test>
        S: 250 2.1.0
        S: 250 2.1.5
        S: 250-mx.test
        S: 250-PIPELINING
        S: 250-SIZE
        S: 250-8BITMIME
        S: 250-ENHANCEDSTATUSCODES
        S: 250-CHUNKING
        S: 250 SMTPUTF8
        S: 503 5.5.1 Need MAIL command
        S: 503 5.5.1 Need MAIL command
        S: 250 2.1.0
        ",
        ),
    );
}

// ---- the other commands ---------------------------------------------------------------------

#[test]
fn noop_vrfy_help_and_quit() {
    let d = run(
        config(),
        "
        S: 220
        C: NOOP
        S: 250 2.0.0 Ok
        C: noop with some argument
        S: 250 2.0.0 Ok
        C: VRFY postmaster
        S: 252 2.5.0 Cannot VRFY user
        C: VRFY
        S: 501 5.5.4 Syntax: VRFY address
        C: HELP
        S: 214 2.0.0 Commands:
        C: QuIt
        C: NOOP
        S: 221 2.0.0 Bye
        CLOSED: Quit
        ",
    );
    assert_eq!(d.session.next_deadline(), None);
}

#[test]
fn after_quit_the_session_stays_closed() {
    let mut d = run(config(), "S: 220\nC: QUIT\nS: 221\nCLOSED: Quit");
    let mut out = Vec::new();
    let r = d
        .session
        .handle_input(d.now, b"NOOP\r\n", &mut out, &mut d.sink);
    assert_eq!(r, Err(Closed::Quit));
    assert_eq!(d.session.handle_timeout(&mut out), Closed::Quit);
    assert_eq!(d.session.handle_shutdown(&mut out), Closed::Quit);
    assert!(out.is_empty());
}

#[test]
fn verbs_are_case_insensitive_and_unknown_ones_are_500() {
    run(
        no_cap(),
        "
        S: 220
        C: eHlO c.test
        S: 250-mx.test
        S: 250-PIPELINING
        S: 250-SIZE
        S: 250-8BITMIME
        S: 250-ENHANCEDSTATUSCODES
        S: 250-CHUNKING
        S: 250 SMTPUTF8
        C: mail from:<a@s.test>
        S: 250 2.1.0
        C: rCpT tO:<x@local.test>
        S: 250 2.1.5
        C: RsEt
        S: 250 2.0.0
        C: XYZZY
        S: 500 5.5.2 Command unrecognized
        C: GETX / HTTP/1.1
        S: 500 5.5.2
        C:
        S: 500 5.5.2
        C:  NOOP
        S: 500 5.5.2
        C: MAILFROM:<a@s.test>
        S: 500 5.5.2
        ",
    );
}

#[test]
fn an_http_request_gets_221_and_the_session_closes_at_once() {
    for (request, after) in [
        ("GET / HTTP/1.1", "Host: mx.test"),
        ("POST /submit HTTP/1.1", "Content-Length: 5"),
        ("CONNECT mx.test:25 HTTP/1.1", "Host: mx.test:25"),
        ("PRI * HTTP/2.0", ""),
    ] {
        // As the first line, and in the middle of a transaction (which it abandons).
        for before in ["", "C: EHLO c.test\nC: MAIL FROM:<a@s.test>\n"] {
            let script = format!(
                "S: 220
                 {before}
                 C: {request}
                 C: {after}
                 C: NOOP"
            );
            let mut d = Driver::new(no_cap());
            let mut input = Vec::new();
            for line in script.lines().filter_map(|l| l.trim().strip_prefix("C: ")) {
                input.extend_from_slice(line.as_bytes());
                input.extend_from_slice(b"\r\n");
            }
            d.feed(&input);
            let lines = d.take_lines();
            assert_eq!(
                lines.last().map(String::as_str),
                Some("221 2.7.0 mx.test This is an SMTP server, not HTTP; closing connection"),
                "{request:?} after {before:?}: {lines:?}"
            );
            assert!(
                !lines.iter().any(|l| l.starts_with('5')),
                "nothing after the request line is answered: {lines:?}"
            );
            assert_eq!(d.closed, Some(Closed::NotSmtp));
            assert_eq!(d.session.phase(), Phase::Closed);
            assert!(d.sink.messages.is_empty());
        }
    }
}

#[test]
fn extensions_we_do_not_offer_are_502() {
    run(
        no_cap(),
        &greeted(
            "
        C: STARTTLS
        S: 502 5.5.1
        C: AUTH PLAIN AGFAYg==
        S: 502 5.5.1
        C: EXPN staff
        S: 502 5.5.1
        C: ETRN local.test
        S: 502 5.5.1
        ",
        ),
    );
}

// ---- MAIL FROM ------------------------------------------------------------------------------

#[test]
fn null_reverse_path_and_lenient_spacing() {
    let d = run(
        config(),
        &greeted(
            "
        C: MAIL FROM:<>
        S: 250 2.1.0
        C: RCPT TO:<a@local.test>
        S: 250 2.1.5
        C: RSET
        S: 250
        C: MAIL FROM:   <x@s.test>   SIZE=10   
        S: 250 2.1.0
        ",
        ),
    );
    assert_eq!(d.session.envelope().mail_from, "x@s.test");
    assert_eq!(d.session.envelope().declared_size, Some(10));
}

#[test]
fn mail_parameters() {
    let d = run(
        no_cap(),
        &greeted(
            "
        C: MAIL FROM:<a@s.test> SIZE=1001
        S: 552 5.3.4 Message size exceeds fixed maximum message size
        C: MAIL FROM:<a@s.test> SIZE=99999999999999999999
        S: 552 5.3.4
        C: MAIL FROM:<a@s.test> FOO=BAR
        S: 555 5.5.4 Unsupported parameter
        C: MAIL FROM:<a@s.test> BODY=BINARYMIME
        S: 555 5.5.4
        C: MAIL FROM:<a@s.test> BODY=9BIT=
        S: 501 5.5.4
        C: MAIL FROM:<a@s.test> SIZE=ten
        S: 501 5.5.4 Bad parameter
        C: MAIL FROM:<a@s.test> SIZE=1 SIZE=2
        S: 501 5.5.4
        C: MAIL FROM:<a@s.test> SMTPUTF8=1
        S: 501 5.5.4
        C: MAIL FROM:<a@s.test> size=1000 body=7bit smtputf8
        S: 250 2.1.0
        ",
        ),
    );
    let e = d.session.envelope();
    assert_eq!(e.declared_size, Some(1000));
    assert!(!e.body_8bitmime);
    assert!(e.smtputf8);
}

#[test]
fn source_route_is_dropped_from_mail_and_refused_in_rcpt() {
    let d = run(
        config(),
        &greeted(
            "
        C: MAIL FROM:<@relay.test,@r2.test:a@s.test>
        S: 250 2.1.0
        C: RCPT TO:<@local.test:b@local.test>
        S: 550 5.7.1 Source routes are not accepted
        C: RCPT TO:<@local.test:b@remote.test>
        S: 550 5.7.1
        ",
        ),
    );
    assert_eq!(d.session.envelope().mail_from, "a@s.test");
    assert!(d.session.envelope().rcpts.is_empty());
}

// ---- RCPT TO and relay control --------------------------------------------------------------

#[test]
fn postmaster_without_domain_in_any_case() {
    let d = run(
        config(),
        &greeted(
            "
        C: MAIL FROM:<>
        C: RCPT TO:<Postmaster>
        C: RCPT TO:<postmaster>
        C: RCPT TO:<POSTMASTER>
        C: RCPT TO:<postmaster@remote.test>
        C: RCPT TO:<postmaster@local.test>
        S: 250 2.1.0
        S: 250 2.1.5
        S: 250 2.1.5
        S: 250 2.1.5
        S: 550 5.7.1
        S: 250 2.1.5
        ",
        ),
    );
    assert_eq!(
        d.session.envelope().rcpts,
        [
            "Postmaster@local.test",
            "postmaster@local.test",
            "POSTMASTER@local.test",
            "postmaster@local.test"
        ]
    );
}

#[test]
fn relay_tricks_are_refused_with_550_5_7_1() {
    let tricks = [
        "user@remote.test",
        "user@notlocal.test",        // suffix match
        "user@local.test.evil.test", // prefix match
        "user@sub.local.test",       // subdomain
        "user@local.test.",          // trailing dot
        "user@remote.test@local.test",
        "user@local.test@remote.test",
        "user@[127.0.0.1]",
        "user@[IPv6:::1]",
        "\"user@remote.test\"@remote.test",
        "user%local.test@remote.test",
        "user@example.org.",
        "user@xexample.org",
    ];
    for t in tricks {
        let script = greeted(&format!(
            "C: MAIL FROM:<a@s.test>\nS: 250\nC: RCPT TO:<{t}>\nS: 550 5.7.1 Relay access denied"
        ));
        let d = run(config(), &script);
        assert!(d.session.envelope().rcpts.is_empty(), "{t}");
    }
}

#[test]
fn policy_refusals_are_reported_to_the_sink_for_the_log() {
    let d = run(
        config(),
        &greeted(
            "
        C: MAIL FROM:<a@s.test>
        C: RCPT TO:<u@remote.test>
        C: RCPT TO:<@local.test:b@local.test>
        C: RCPT TO:<jörg@local.test>
        C: RCPT TO:<u@local.test>
        C: RCPT TO:<bad syntax@local.test>
        S: 250 2.1.0
        S: 550 5.7.1 Relay access denied
        S: 550 5.7.1 Source routes
        S: 553 5.6.7
        S: 250 2.1.5
        S: 501 5.1.3
        ",
        ),
    );
    assert_eq!(
        d.sink.refused,
        [
            ("u@remote.test".to_owned(), RecipientRefusal::Relay),
            ("b@local.test".to_owned(), RecipientRefusal::SourceRoute),
            (
                "jörg@local.test".to_owned(),
                RecipientRefusal::NeedsSmtputf8
            ),
        ],
        "policy refusals only, not syntax errors or accepted recipients"
    );
    for (_, why) in &d.sink.refused {
        let (code, status) = why.reply();
        assert!(code >= 550 && status.starts_with('5'), "{why:?}");
    }
    assert_eq!(RecipientRefusal::Relay.name(), "relay-denied");
}

#[test]
fn local_parts_are_kept_literally_and_domains_match_in_any_case() {
    let d = run(
        config(),
        &greeted(
            r#"
        C: MAIL FROM:<a@s.test>
        C: RCPT TO:<user%remote.test@local.test>
        C: RCPT TO:<"user@remote.test"@local.test>
        C: RCPT TO:<"with space"@LOCAL.TEST>
        C: RCPT TO:<x@example.org>
        C: RCPT TO:<first.last+tag@Local.Test>
        S: 250 2.1.0
        S: 250 2.1.5
        S: 250 2.1.5
        S: 250 2.1.5
        S: 250 2.1.5
        S: 250 2.1.5
        "#,
        ),
    );
    assert_eq!(
        d.session.envelope().rcpts,
        [
            "user%remote.test@local.test",
            "\"user@remote.test\"@local.test",
            "\"with space\"@LOCAL.TEST",
            "x@example.org",
            "first.last+tag@Local.Test",
        ]
    );
}

#[test]
fn rcpt_parameters_are_555() {
    run(
        config(),
        &greeted(
            "
        C: MAIL FROM:<a@s.test>
        C: RCPT TO:<a@local.test> NOTIFY=NEVER
        C: RCPT TO:<a@local.test> ORCPT=rfc822;a@local.test
        S: 250 2.1.0
        S: 555 5.5.4
        S: 555 5.5.4
        ",
        ),
    );
}

#[test]
fn syntax_errors_are_501() {
    run(
        no_cap(),
        &greeted(
            r"
        C: MAIL FROM <a@s.test>
        S: 501 5.5.4 Syntax: MAIL FROM:<address>
        C: MAIL FROM:<a@s.test
        S: 501 5.1.7 Unbalanced
        C: MAIL FROM:a@s.test
        S: 501 5.1.7 Address must be in angle brackets
        C: MAIL FROM:<a@s.test>>
        S: 501 5.5.4
        C: MAIL FROM:<a@bad..domain>
        S: 501 5.1.7 Bad domain
        C: MAIL FROM:<a\0@s.test>
        S: 501 5.5.4 NUL byte
        C: MAIL FROM:<a@s.test>
        S: 250 2.1.0
        C: RCPT TO
        S: 501 5.5.4 Syntax: RCPT TO:<address>
        C: RCPT TO:
        S: 501 5.1.3 Missing address
        C: RCPT TO:<>
        S: 501 5.1.3 Empty recipient address
        C: RCPT TO:<a@local.test
        S: 501 5.1.3 Unbalanced
        C: RCPT TO:<<a@local.test>
        S: 501 5.1.3 Bad local part
        C: RCPT TO:<a..b@local.test>
        S: 501 5.1.3
        C: RCPT TO:<user>
        S: 501 5.1.3 Address must include a domain
        C: RCPT TO:<\0>
        S: 501 5.5.4 NUL byte
        C: DATA now
        S: 501 5.5.4 Syntax: DATA
        ",
        ),
    );
}

#[test]
fn non_ascii_addresses_need_smtputf8() {
    let d = run(
        no_cap(),
        &greeted(
            "
        C: MAIL FROM:<josé@s.test>
        S: 553 5.6.7 Non-ASCII address requires SMTPUTF8
        C: MAIL FROM:<a@s.test>
        S: 250 2.1.0
        C: RCPT TO:<zoë@local.test>
        S: 553 5.6.7
        C: RSET
        S: 250
        C: MAIL FROM:<josé@bücher.test> SMTPUTF8
        S: 250 2.1.0
        C: RCPT TO:<zoë@local.test>
        S: 250 2.1.5
        C: RCPT TO:<\\xff@local.test>
        S: 501 5.5.4 Invalid UTF-8
        ",
        ),
    );
    assert_eq!(d.session.envelope().mail_from, "josé@bücher.test");
    assert_eq!(d.session.envelope().rcpts, ["zoë@local.test"]);
}

// ---- limits ---------------------------------------------------------------------------------

#[test]
fn command_line_of_exactly_512_octets_is_fine_513_is_not() {
    // "NOOP " + padding + CRLF
    let ok = format!("NOOP {}", "x".repeat(MAX_COMMAND_LINE - 5 - 2));
    let long = format!("NOOP {}", "x".repeat(MAX_COMMAND_LINE - 5 - 1));
    assert_eq!(ok.len() + 2, 512);
    run(
        config(),
        &format!("S: 220\nC: {ok}\nS: 250 2.0.0\nC: {long}\nS: 500 5.5.6 Line too long\nC: NOOP\nS: 250 2.0.0"),
    );
}

#[test]
fn a_partial_line_is_kept_up_to_511_octets_and_dropped_at_512() {
    let mut d = Driver::new(config());
    d.take_lines();
    // 510 octets + CR: still possibly a valid 512-octet line, so the driver keeps it.
    let mut line = format!("NOOP {}", "x".repeat(MAX_COMMAND_LINE - 5 - 2)).into_bytes();
    line.push(b'\r');
    d.feed(&line);
    assert_eq!(d.pending.len(), MAX_COMMAND_LINE - 1);
    d.feed(b"\n");
    assert_eq!(d.take_lines(), ["250 2.0.0 Ok"]);
    // 512 octets and no LF: already too long, consumed at once.
    d.feed(&[b'y'; MAX_COMMAND_LINE]);
    assert!(d.pending.is_empty());
    assert!(d.take_lines().is_empty());
    d.feed(b"\r\nNOOP\r\n");
    assert_eq!(d.take_lines(), ["500 5.5.6 Line too long", "250 2.0.0 Ok"]);
}

#[test]
fn an_overlong_line_is_consumed_as_it_arrives_and_answered_at_its_end() {
    let mut d = Driver::new(config());
    d.take_lines();
    d.feed(b"MAIL FROM:<");
    for _ in 0..100 {
        d.feed(&[b'a'; 1000]);
        assert!(d.pending.len() < MAX_COMMAND_LINE);
        assert!(d.take_lines().is_empty(), "no reply before the line ends");
    }
    d.feed(b"@s.test>\r\nEHLO c\r\nMAIL FROM:<a@s.test>\r\n");
    let lines = d.take_lines();
    assert_eq!(lines[0], "500 5.5.6 Line too long");
    assert_eq!(lines[1], "250-mx.test");
    assert_eq!(lines.last().map(String::as_str), Some("250 2.1.0 Ok"));
    // The tail of the long line ("@s.test>") was not run as a command either.
    assert_eq!(lines.len(), 9);
}

#[test]
fn an_overlong_line_in_one_read_with_a_cr_inside() {
    let mut input = vec![b'z'; 600];
    input[300] = b'\r'; // a CR in the middle does not end anything
    input.extend_from_slice(b"\nNOOP\r\n");
    let mut d = Driver::new(config());
    d.take_lines();
    d.feed(&input);
    assert_eq!(d.take_lines(), ["500 5.5.6 Line too long", "250 2.0.0 Ok"]);
}

#[test]
fn the_error_count_starts_again_after_each_accepted_message() {
    // Postfix's smtpd_hard_error_limit counts errors "without delivering mail": a connection
    // reused for many messages, each with a refused recipient or two, is not cut off.
    let mut c = config();
    c.max_errors = 3;
    let one = "
        C: MAIL FROM:<a@s.test>
        S: 250 2.1.0
        C: RCPT TO:<x@remote.test>
        S: 550 5.7.1
        C: RCPT TO:<y@remote.test>
        S: 550 5.7.1
        C: RCPT TO:<b@local.test>
        S: 250 2.1.5
        C: DATA
        S: 354
        C: hi
        C: .
        S: 250 2.0.0 Ok queued as";
    let d = run(
        c,
        &greeted(&format!(
            "{one}{one}{one}
        C: RCPT TO:<z@remote.test>
        S: 503 5.5.1
        C: NOOP x
        S: 250 2.0.0
        C: FOO
        S: 500 5.5.2
        C: BAR
        S: 500 5.5.2
        S: 421 4.7.0 mx.test Too many errors
        CLOSED: TooManyErrors
        "
        )),
    );
    assert_eq!(d.sink.messages.len(), 3);
}

#[test]
fn overlong_lines_count_as_errors() {
    let mut c = config();
    c.max_errors = 3;
    let long = "x".repeat(1000);
    run(
        c,
        &format!(
            "S: 220\nC: {long}\nC: {long}\nC: {long}\nC: NOOP\n\
             S: 500 5.5.6\nS: 500 5.5.6\nS: 500 5.5.6\n\
             S: 421 4.7.0 mx.test Too many errors\nCLOSED: TooManyErrors"
        ),
    );
}

#[test]
fn bare_lf_or_cr_in_a_command_line_is_500_and_not_run() {
    let d = run(
        no_cap(),
        &greeted(
            r"
        C| MAIL FROM:<a@s.test>\n
        S: 500 5.5.2 Bare CR or LF in command line
        C: MAIL FROM:<a@s.test>\rRCPT TO:<b@local.test>
        S: 500 5.5.2
        C: RCPT TO:<b@local.test>
        S: 503 5.5.1
        C| NOOP\r\r\n
        S: 500 5.5.2
        C| \n
        S: 500 5.5.2
        C: MAIL FROM:<a@s.test>
        S: 250 2.1.0
        ",
        ),
    );
    assert!(d.session.envelope().rcpts.is_empty());
}

#[test]
fn local_part_and_path_limits() {
    let local_ok = "a".repeat(MAX_LOCAL_PART);
    let local_long = "a".repeat(MAX_LOCAL_PART + 1);
    // A 257-octet path: "<" + 64 + "@" + 190 + ">", domain of labels of 60.
    let domain: String = (0..190)
        .map(|i| if i % 61 == 60 { '.' } else { 'd' })
        .collect();
    let path_long = format!("<{local_ok}@{domain}>");
    assert_eq!(path_long.len(), 257);
    let path_ok = format!("<{local_ok}@{}>", &domain[1..]);
    run(
        config(),
        &greeted(&format!(
            "C: MAIL FROM:{path_long}\nS: 501 5.1.7 Path too long\n\
             C: MAIL FROM:{path_ok}\nS: 250 2.1.0\n\
             C: RCPT TO:<{local_long}@local.test>\nS: 501 5.1.3 Local part too long\n\
             C: RCPT TO:<{local_ok}@local.test>\nS: 250 2.1.5"
        )),
    );
}

#[test]
fn recipients_over_the_limit_get_452_and_do_not_count_as_errors() {
    let mut c = config();
    c.max_recipients = 3;
    c.max_errors = 2;
    let d = run(
        c,
        &greeted(
            "
        C: MAIL FROM:<a@s.test>
        C: RCPT TO:<r1@local.test>
        C: RCPT TO:<r2@local.test>
        C: RCPT TO:<r3@local.test>
        C: RCPT TO:<r4@local.test>
        C: RCPT TO:<r5@local.test>
        C: RCPT TO:<r6@local.test>
        C: DATA
        S: 250 2.1.0
        S: 250 2.1.5
        S: 250 2.1.5
        S: 250 2.1.5
        S: 452 4.5.3 Too many recipients
        S: 452 4.5.3
        S: 452 4.5.3
        S: 354
        C: .
        S: 250 2.0.0 Ok queued as Q1
        ",
        ),
    );
    assert_eq!(d.sink.messages[0].envelope.rcpts.len(), 3);
    assert_eq!(d.closed, None);
}

#[test]
fn at_least_100_recipients_by_default() {
    let c = SessionConfig::new("mx.test", vec!["local.test".into()]);
    assert_eq!(c.max_recipients, DEFAULT_MAX_RECIPIENTS);
    let mut d = Driver::new(c);
    let mut batch = String::from("EHLO c\r\nMAIL FROM:<>\r\n");
    for i in 0..=100 {
        batch.push_str(&format!("RCPT TO:<r{i}@local.test>\r\n"));
    }
    d.feed(batch.as_bytes());
    let lines = d.take_lines();
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("250 2.1.5")).count(),
        100
    );
    assert_eq!(
        lines.last().map(String::as_str),
        Some("452 4.5.3 Too many recipients")
    );
}

#[test]
fn a_body_of_exactly_the_limit_is_accepted_one_more_byte_is_552() {
    // 1000 bytes of body: 9 lines of 100 + CRLF (102) = 918, plus an 80-byte line + CRLF.
    let mut body = Vec::new();
    for _ in 0..9 {
        body.extend_from_slice(&[b'a'; 100]);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(&[b'b'; 80]);
    body.extend_from_slice(b"\r\n");
    assert_eq!(body.len(), 1000);
    let head = b"MAIL FROM:<a@s.test>\r\nRCPT TO:<a@local.test>\r\nDATA\r\n";
    let mut d = Driver::new(config());
    d.feed(b"EHLO c\r\n");
    d.feed(head);
    d.feed(&body);
    d.feed(b".\r\n");
    d.feed(head);
    d.feed(b"x");
    d.feed(&body);
    d.feed(b".\r\nNOOP\r\n");
    let lines = d.take_lines();
    let tail: Vec<&str> = lines
        .iter()
        .rev()
        .take(3)
        .rev()
        .map(String::as_str)
        .collect();
    assert_eq!(
        tail,
        [
            "354 End data with <CR><LF>.<CR><LF>",
            "552 5.3.4 Message size exceeds fixed maximum message size",
            "250 2.0.0 Ok",
        ]
    );
    let m = &d.sink.messages;
    assert_eq!(m.len(), 2);
    assert_eq!(m[0].outcome, Some(Ok(())));
    assert_eq!(m[0].body, body);
    assert_eq!(m[1].outcome, Some(Err(Rejection::TooBig)));
    assert!(m[1].body.len() <= 1000, "segments stop at the limit");
    assert_eq!(d.committed, 1);
    assert_eq!(d.session.phase(), Phase::Command);
}

#[test]
fn a_huge_body_is_streamed_and_refused_without_buffering() {
    let mut d = Driver::new(config());
    d.feed(b"EHLO c\r\nMAIL FROM:<a@s.test>\r\nRCPT TO:<a@local.test>\r\nDATA\r\n");
    let chunk =
        b"0123456789012345678901234567890123456789012345678901234567890123456789\r\n".repeat(50);
    for _ in 0..200 {
        d.feed(&chunk);
        assert!(d.pending.is_empty());
    }
    let calls = d.sink.segment_calls;
    d.feed(&chunk);
    assert_eq!(
        d.sink.segment_calls, calls,
        "no segments once over the limit"
    );
    d.feed(b".\r\n");
    assert!(d.take_lines().last().unwrap().starts_with("552 5.3.4"));
    assert_eq!(d.sink.messages[0].outcome, Some(Err(Rejection::TooBig)));
}

#[test]
fn the_error_cap_closes_with_421_and_ignores_the_rest() {
    let mut c = config();
    c.max_errors = 3;
    let d = run(
        c,
        "
        S: 220
        C: FOO
        C: NOOP
        C: BAR
        C: MAIL FROM:<a@s.test>
        C: NOOP
        C: NOOP
        S: 500 5.5.2
        S: 250 2.0.0
        S: 500 5.5.2
        S: 503 5.5.1
        S: 421 4.7.0 mx.test Too many errors, closing connection
        CLOSED: TooManyErrors
        ",
    );
    assert_eq!(d.session.phase(), Phase::Closed);
}

#[test]
fn refused_bodies_count_towards_the_error_cap() {
    let mut c = config();
    c.max_errors = 1;
    run(
        c,
        &greeted(
            r"
        C: MAIL FROM:<a@s.test>
        C: RCPT TO:<a@local.test>
        C: DATA
        C| bare\nline\r\n.\r\n
        S: 250 2.1.0
        S: 250 2.1.5
        S: 354
        S: 550 5.6.0
        S: 421 4.7.0
        CLOSED: TooManyErrors
        ",
        ),
    );
}

// ---- pipelining and DATA --------------------------------------------------------------------

/// A batch with two messages (one dot-stuffed), commands after each terminator, and QUIT.
const BATCH: &[u8] = b"EHLO c.test\r\nMAIL FROM:<a@s.test>\r\nRCPT TO:<x@local.test>\r\n\
RCPT TO:<y@remote.test>\r\nRCPT TO:<z@local.test>\r\nDATA\r\nline 1\r\n..dot\r\n.\r\n\
MAIL FROM:<>\r\nRCPT TO:<Postmaster>\r\nDATA\r\n.\r\nNOOP\r\nQUIT\r\n";

const BATCH_REPLIES: &str = "220 mx.test ESMTP ringmx\r\n250-mx.test\r\n250-PIPELINING\r\n\
250-SIZE 1000\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250 SMTPUTF8\r\n250 2.1.0 Ok\r\n\
250 2.1.5 Ok\r\n550 5.7.1 Relay access denied\r\n250 2.1.5 Ok\r\n\
354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok queued as Q1\r\n250 2.1.0 Ok\r\n\
250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok queued as Q2\r\n\
250 2.0.0 Ok\r\n221 2.0.0 Bye\r\n";

/// Feeds `input` in the given pieces; returns replies, messages and how it ended.
fn outcome(input: &[u8], cuts: &[usize]) -> (String, Vec<Message>, Option<Closed>) {
    outcome_with(config(), input, cuts)
}

fn outcome_with(
    config: SessionConfig,
    input: &[u8],
    cuts: &[usize],
) -> (String, Vec<Message>, Option<Closed>) {
    let mut d = Driver::new(config);
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
        d.feed(&input[start..cut]);
        start = cut;
    }
    (out_text(&d.out), d.sink.messages, d.closed)
}

#[test]
fn a_pipelined_batch_is_answered_in_order_in_one_go() {
    let (out, messages, closed) = outcome(BATCH, &[]);
    assert_eq!(out, BATCH_REPLIES);
    assert_eq!(closed, Some(Closed::Quit));
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0].body, b"line 1\r\n.dot\r\n");
    assert_eq!(messages[0].envelope.rcpts, ["x@local.test", "z@local.test"]);
    assert_eq!(messages[1].body, b"");
    assert_eq!(messages[1].envelope.rcpts, ["Postmaster@local.test"]);
}

#[test]
fn a_batch_split_at_every_byte_gives_the_same_result() {
    let whole = outcome(BATCH, &[]);
    for i in 0..=BATCH.len() {
        assert_eq!(outcome(BATCH, &[i]), whole, "split at {i}");
    }
}

#[test]
fn a_batch_split_at_every_pair_of_bytes_gives_the_same_result() {
    let whole = outcome(BATCH, &[]);
    for i in 0..=BATCH.len() {
        for j in i..=BATCH.len() {
            assert_eq!(outcome(BATCH, &[i, j]), whole, "split at {i} and {j}");
        }
    }
}

#[test]
fn a_batch_fed_one_byte_at_a_time_gives_the_same_result() {
    let cuts: Vec<usize> = (1..BATCH.len()).collect();
    assert_eq!(outcome(BATCH, &cuts), outcome(BATCH, &[]));
}

#[test]
fn body_lines_are_never_run_as_commands() {
    let d = run(
        config(),
        &greeted(
            "
        C: MAIL FROM:<a@s.test>
        C: RCPT TO:<a@local.test>
        C: DATA
        S: 250 2.1.0
        S: 250 2.1.5
        S: 354
        C: QUIT
        C: RSET
        C: MAIL FROM:<evil@s.test>
        C: RCPT TO:<victim@local.test>
        C: DATA
        C: ..
        C: .
        S: 250 2.0.0 Ok queued as Q1
        ",
        ),
    );
    assert_eq!(d.sink.messages.len(), 1);
    assert_eq!(
        d.sink.messages[0].body,
        b"QUIT\r\nRSET\r\nMAIL FROM:<evil@s.test>\r\nRCPT TO:<victim@local.test>\r\nDATA\r\n.\r\n"
    );
    assert_eq!(d.closed, None);
}

#[test]
fn bytes_after_the_terminator_in_the_same_read_are_the_next_commands() {
    let mut d = Driver::new(config());
    d.feed(b"EHLO c\r\nMAIL FROM:<a@s.test>\r\nRCPT TO:<a@local.test>\r\nDATA\r\n");
    d.take_lines();
    d.feed(b"hi\r\n.\r\nMAIL FROM:<b@s.test>\r\nRCPT TO:<b@local.test>\r\nNOOP");
    assert_eq!(
        d.take_lines(),
        ["250 2.0.0 Ok queued as Q1", "250 2.1.0 Ok", "250 2.1.5 Ok"]
    );
    assert_eq!(d.pending, b"NOOP", "the partial command is kept");
    d.feed(b"\r\n");
    assert_eq!(d.take_lines(), ["250 2.0.0 Ok"]);
}

#[test]
fn a_refused_body_is_answered_and_the_next_commands_run_in_the_same_read() {
    let d = run(
        config(),
        &greeted(
            r"
        C: MAIL FROM:<a@s.test>
        C: RCPT TO:<a@local.test>
        C: DATA
        C| one\ntwo\r\n.\r\nMAIL FROM:<b@s.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\nok\r\n.\r\n
        S: 250 2.1.0
        S: 250 2.1.5
        S: 354
        S: 550 5.6.0 Bare CR or LF in message body
        S: 250 2.1.0
        S: 250 2.1.5
        S: 354
        S: 250 2.0.0 Ok queued as Q1
        ",
        ),
    );
    let m = &d.sink.messages;
    assert_eq!(m.len(), 2);
    assert_eq!(m[0].outcome, Some(Err(Rejection::BareLineEnding)));
    assert_eq!(m[1].outcome, Some(Ok(())));
    assert_eq!(m[1].envelope.mail_from, "b@s.test");
}

// ---- SMTP smuggling -------------------------------------------------------------------------

/// A message whose body tries to end early with `fake_end` and then inject a second message.
fn smuggle(fake_end: &[u8]) -> Vec<u8> {
    let mut v =
        b"EHLO c\r\nMAIL FROM:<a@s.test>\r\nRCPT TO:<a@local.test>\r\nDATA\r\nhello".to_vec();
    v.extend_from_slice(fake_end);
    v.extend_from_slice(
        b"MAIL FROM:<evil@s.test>\r\nRCPT TO:<victim@local.test>\r\nDATA\r\nsmuggled\r\n.\r\nQUIT\r\n",
    );
    v
}

#[test]
fn smuggling_variants_leave_exactly_one_message() {
    let variants: [(&[u8], Result<(), Rejection>); 7] = [
        (b"\n.\n", Err(Rejection::BareLineEnding)),
        (b"\n.\r\n", Err(Rejection::BareLineEnding)),
        (b"\r\n.\n", Err(Rejection::BareLineEnding)),
        (b"\r.\r", Err(Rejection::BareLineEnding)),
        (b"\r\n.\r", Err(Rejection::BareLineEnding)),
        (b"\n.\r", Err(Rejection::BareLineEnding)),
        (b"\r\n. \r\n", Ok(())),
    ];
    for (fake_end, want) in variants {
        let input = smuggle(fake_end);
        let whole = outcome(&input, &[]);
        let (out, messages, closed) = &whole;
        let name = String::from_utf8_lossy(fake_end);
        assert_eq!(messages.len(), 1, "{name:?}");
        let m = &messages[0];
        assert_eq!(m.outcome, Some(want), "{name:?}");
        assert_eq!(m.envelope.rcpts, ["a@local.test"], "{name:?}");
        assert!(m.body.starts_with(b"hello"));
        assert!(m.body.ends_with(
            b"MAIL FROM:<evil@s.test>\r\nRCPT TO:<victim@local.test>\r\nDATA\r\nsmuggled\r\n"
        ));
        let final_reply = match want {
            Ok(()) => "250 2.0.0 Ok queued as Q1\r\n",
            Err(_) => "550 5.6.0 Bare CR or LF in message body, message refused\r\n",
        };
        let expected = format!(
            "220 mx.test ESMTP ringmx\r\n250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n\
             250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250 SMTPUTF8\r\n250 2.1.0 Ok\r\n\
             250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n{final_reply}221 2.0.0 Bye\r\n"
        );
        assert_eq!(out, &expected, "{name:?}");
        assert_eq!(*closed, Some(Closed::Quit));
        for i in 0..=input.len() {
            assert_eq!(outcome(&input, &[i]), whole, "{name:?} split at {i}");
        }
    }
}

#[test]
fn smuggled_text_is_the_body_byte_for_byte() {
    let (_, messages, _) = outcome(&smuggle(b"\n.\r\n"), &[]);
    assert_eq!(
        messages[0].body,
        b"hello\n.\r\nMAIL FROM:<evil@s.test>\r\nRCPT TO:<victim@local.test>\r\nDATA\r\nsmuggled\r\n"
    );
}

#[test]
fn keep_alive_loops_count_as_errors_past_the_junk_limit() {
    let mut c = config();
    c.max_junk_commands = 3;
    c.max_errors = 3;
    // Three free, then each NOOP/RSET/VRFY/HELP is answered as usual but counts as an error.
    let d = run(
        c.clone(),
        "S: 220
         C: NOOP
         C: RSET
         C: VRFY x
         C: HELP
         C: NOOP
         C: NOOP
         C: NOOP
         S: 250 2.0.0
         S: 250 2.0.0
         S: 252 2.5.0
         S: 214 2.0.0
         S: 250 2.0.0
         S: 250 2.0.0
         S: 421 4.7.0 mx.test Too many errors
         CLOSED: TooManyErrors",
    );
    assert_eq!(d.committed, 0);
    // An accepted message starts the count again.
    let mut script = String::from("S: 220\nC: EHLO c\n");
    for _ in 0..3 {
        script.push_str("C: NOOP\n");
    }
    script.push_str("C: MAIL FROM:<>\nC: RCPT TO:<a@local.test>\nC: DATA\nC: x\nC: .\n");
    for _ in 0..3 {
        script.push_str("C: RSET\n");
    }
    script.push_str("C: QUIT\n");
    let mut d = Driver::new(c);
    let mut input = Vec::new();
    for line in script.lines().filter_map(|l| l.strip_prefix("C: ")) {
        input.extend_from_slice(line.as_bytes());
        input.extend_from_slice(b"\r\n");
    }
    d.feed(&input);
    let lines = d.take_lines();
    assert_eq!(d.closed, Some(Closed::Quit), "{lines:?}");
    assert!(!lines.iter().any(|l| l.starts_with("421")), "{lines:?}");
    assert_eq!(d.committed, 1);
}

// ---- the `normalize` policy for bare LF ----------------------------------------------------

fn normalizing() -> SessionConfig {
    let mut c = config();
    c.bare_lf = BareLf::Normalize;
    c
}

/// Whether every LF in `body` is the LF of a CRLF.
fn all_crlf(body: &[u8]) -> bool {
    body.iter()
        .enumerate()
        .all(|(i, &b)| b != b'\n' || (i > 0 && body[i - 1] == b'\r'))
}

#[test]
fn normalize_still_ends_messages_only_at_crlf_dot_crlf() {
    let injected: &[u8] =
        b"MAIL FROM:<evil@s.test>\r\nRCPT TO:<victim@local.test>\r\nDATA\r\nsmuggled\r\n";
    /// (fake terminator, outcome, stored body before the injected text)
    type Variant = (&'static [u8], Result<(), Rejection>, &'static [u8]);
    let variants: [Variant; 7] = [
        (b"\n.\n", Ok(()), b"hello\r\n\r\n"),
        (b"\n.\r\n", Ok(()), b"hello\r\n\r\n"),
        (b"\r\n.\n", Ok(()), b"hello\r\n\r\n"),
        (b"\r.\r", Err(Rejection::BareLineEnding), b""),
        (b"\r\n.\r", Err(Rejection::BareLineEnding), b""),
        (b"\n.\r", Err(Rejection::BareLineEnding), b""),
        (b"\r\n. \r\n", Ok(()), b"hello\r\n \r\n"),
    ];
    for (fake_end, want, head) in variants {
        let input = smuggle(fake_end);
        let whole = outcome_with(normalizing(), &input, &[]);
        let (out, messages, closed) = &whole;
        let name = String::from_utf8_lossy(fake_end);
        assert_eq!(messages.len(), 1, "{name:?}: one message, never two");
        let m = &messages[0];
        assert_eq!(m.outcome, Some(want), "{name:?}");
        assert_eq!(*closed, Some(Closed::Quit), "{name:?}");
        if want.is_ok() {
            let mut body = head.to_vec();
            body.extend_from_slice(injected);
            assert_eq!(m.body, body, "{name:?}: the injected text is content");
            assert!(all_crlf(&m.body), "{name:?}");
            assert!(out.contains("250 2.0.0 Ok queued as Q1\r\n221"), "{out}");
        } else {
            assert!(
                out.contains("550 5.6.0 "),
                "{name:?}: bare CR is refused: {out}"
            );
        }
        for i in 0..=input.len() {
            assert_eq!(
                outcome_with(normalizing(), &input, &[i]),
                whole,
                "{name:?} split at {i}"
            );
        }
    }
}

#[test]
fn normalize_reads_lf_commands_and_stores_lf_bodies_as_crlf() {
    // What `curl -T file` (LF lines, no --crlf) and smtplib.sendmail(bytes) send.
    let input: &[u8] = b"EHLO c\nMAIL FROM:<a@s.test>\nRCPT TO:<a@local.test>\nDATA\n\
        Subject: lf\n\n..stuffed\n.unstuffed\nlast\n\r\n.\r\nNOOP\rX\r\nQUIT\n";
    let whole = outcome_with(normalizing(), input, &[]);
    let (out, messages, closed) = &whole;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].outcome, Some(Ok(())));
    assert_eq!(
        messages[0].body,
        b"Subject: lf\r\n\r\n.stuffed\r\nunstuffed\r\nlast\r\n\r\n"
    );
    assert!(out.ends_with(
        "354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok queued as Q1\r\n\
         500 5.5.2 Bare CR or LF in command line\r\n221 2.0.0 Bye\r\n"
    ));
    assert_eq!(*closed, Some(Closed::Quit));
    for i in 0..=input.len() {
        assert_eq!(
            outcome_with(normalizing(), input, &[i]),
            whole,
            "split at {i}"
        );
    }
    // The default refuses the same input.
    let (out, messages, _) = outcome(input, &[]);
    assert!(messages.is_empty(), "no DATA under reject");
    assert!(
        out.contains("500 5.5.2 Bare CR or LF in command line"),
        "{out}"
    );
}

#[test]
fn normalize_counts_the_size_after_rewriting() {
    // The limit is 1000: 250 bare-LF lines are 500 bytes on the wire and 750 once stored.
    let head = b"EHLO c\r\nMAIL FROM:<a@s.test>\r\nRCPT TO:<a@local.test>\r\nDATA\r\n";
    let mut lines = b"x\n".repeat(250);
    lines.extend(std::iter::repeat_n(b'y', 248));
    lines.extend_from_slice(b"\r\n");
    let message = |extra: &[u8]| {
        let mut v = head.to_vec();
        v.extend_from_slice(extra);
        v.extend_from_slice(&lines);
        v.extend_from_slice(b".\r\n");
        v
    };
    let (_, m, _) = outcome_with(normalizing(), &message(b""), &[]);
    assert_eq!(m[0].outcome, Some(Ok(())));
    assert_eq!(m[0].body.len(), 1000, "exactly at the limit once rewritten");
    let (out, m, _) = outcome_with(normalizing(), &message(b"z\n"), &[]);
    assert_eq!(m[0].outcome, Some(Err(Rejection::TooBig)), "{out}");
    assert!(out.contains("552 5.3.4"), "{out}");
}

// ---- timeouts and shutdown ------------------------------------------------------------------

#[test]
fn a_client_dripping_bytes_does_not_move_the_deadline() {
    let mut d = Driver::new(config());
    let t0 = d.now;
    let idle = Duration::from_secs(300);
    assert_eq!(d.session.next_deadline(), Some(t0 + idle));
    for (i, b) in b"NOOP".iter().enumerate() {
        d.now = t0 + Duration::from_secs(60 * (i as u64 + 1));
        d.feed(&[*b]);
        assert_eq!(d.session.next_deadline(), Some(t0 + idle), "byte {i}");
    }
    // The line completes at t0 + 290s: the next command's time starts now.
    d.now = t0 + Duration::from_secs(290);
    d.feed(b"\r\n");
    assert_eq!(d.session.next_deadline(), Some(d.now + idle));
    // A long line dripping in does not move it either.
    let t1 = d.now;
    for i in 0..10 {
        d.now = t1 + Duration::from_secs(i * 20);
        d.feed(&[b'x'; 100]);
    }
    assert_eq!(d.session.next_deadline(), Some(t1 + idle));
}

#[test]
fn in_data_the_deadline_follows_the_last_input() {
    let mut d = Driver::new(config());
    let t0 = d.now;
    let idle = Duration::from_secs(300);
    d.feed(b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@local.test>\r\nDATA\r\n");
    assert_eq!(d.session.phase(), Phase::Data);
    for i in 1..=5 {
        d.now = t0 + Duration::from_secs(200 * i);
        d.feed(b"x");
        assert_eq!(d.session.next_deadline(), Some(d.now + idle));
    }
    d.now += Duration::from_secs(1);
    d.feed(b"\r\n.\r\n");
    assert_eq!(
        d.session.next_deadline(),
        Some(d.now + idle),
        "after the commit"
    );
}

#[test]
fn data_timeout_bounds_the_whole_body_however_steadily_it_drips() {
    let mut c = config();
    c.data_timeout = Some(Duration::from_secs(600));
    let mut d = Driver::new(c);
    let idle = Duration::from_secs(300);
    d.now += Duration::from_secs(10);
    d.feed(b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@local.test>\r\nDATA\r\n");
    let data_at = d.now;
    assert_eq!(d.session.phase(), Phase::Data);
    assert_eq!(d.session.next_deadline(), Some(data_at + idle));
    // A byte every 200 s keeps the idle deadline moving, but not past DATA + 600 s.
    for i in 1..=5u64 {
        d.now = data_at + Duration::from_secs(200 * i);
        d.feed(b"x");
        let want = (d.now + idle).min(data_at + Duration::from_secs(600));
        assert_eq!(d.session.next_deadline(), Some(want), "after {i} bytes");
    }
    let mut out = Vec::new();
    assert_eq!(d.session.handle_timeout(&mut out), Closed::Timeout);
    assert!(
        out_text(&out).starts_with("421 4.4.2 "),
        "{}",
        out_text(&out)
    );
    assert_eq!(d.sink.messages[0].outcome, None, "the message never ended");

    // The deadline belongs to one body: the next message gets its own.
    let mut c = config();
    c.data_timeout = Some(Duration::from_secs(60));
    let mut d = Driver::new(c);
    d.feed(b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@local.test>\r\nDATA\r\nx\r\n.\r\n");
    d.now += Duration::from_secs(100);
    d.feed(b"MAIL FROM:<>\r\nRCPT TO:<a@local.test>\r\nDATA\r\n");
    assert_eq!(
        d.session.next_deadline(),
        Some(d.now + Duration::from_secs(60))
    );
    // Back in the command phase only the idle timeout applies.
    d.feed(b"y\r\n.\r\n");
    assert_eq!(d.session.next_deadline(), Some(d.now + idle));
    assert_eq!(d.committed, 2);
}

#[test]
fn timeout_writes_421_4_4_2_and_closes() {
    for phase_input in [
        &b""[..],
        b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@local.test>\r\nDATA\r\nhalf a bo",
    ] {
        let mut d = Driver::new(config());
        d.feed(phase_input);
        d.take_lines();
        let mut out = Vec::new();
        assert_eq!(d.session.handle_timeout(&mut out), Closed::Timeout);
        assert_eq!(
            out_text(&out),
            "421 4.4.2 mx.test Timeout exceeded, closing connection\r\n"
        );
        assert_eq!(d.session.phase(), Phase::Closed);
        assert_eq!(d.session.next_deadline(), None);
        let mut more = Vec::new();
        assert_eq!(
            d.session
                .handle_input(d.now, b"NOOP\r\n", &mut more, &mut d.sink),
            Err(Closed::Timeout)
        );
        assert!(more.is_empty());
    }
}

#[test]
fn shutdown_writes_421_4_3_2() {
    let mut d = Driver::new(config());
    d.take_lines();
    let mut out = Vec::new();
    assert_eq!(d.session.handle_shutdown(&mut out), Closed::Shutdown);
    assert_eq!(
        out_text(&out),
        "421 4.3.2 mx.test Service shutting down, closing connection\r\n"
    );
    let written = out.len();
    assert_eq!(d.session.handle_timeout(&mut out), Closed::Shutdown);
    assert_eq!(out.len(), written, "nothing more written");
}

#[test]
fn a_huge_idle_timeout_means_no_deadline_rather_than_a_panic() {
    let mut c = config();
    c.idle_timeout = Duration::MAX;
    let d = Driver::new(c);
    assert_eq!(d.session.next_deadline(), None);
}

// ---- STARTTLS (RFC 3207) --------------------------------------------------------------------

fn tls_config() -> SessionConfig {
    let mut c = config();
    c.starttls = true;
    c
}

fn tls_info() -> crate::smtp::TlsInfo {
    crate::smtp::TlsInfo {
        version: "TLSv1.3".into(),
        cipher: "TLS_AES_256_GCM_SHA384".into(),
        bits: 256,
    }
}

const EHLO_TLS: &str = "
    C: EHLO client.test
    S: 250-mx.test
    S: 250-PIPELINING
    S: 250-SIZE 1000
    S: 250-8BITMIME
    S: 250-ENHANCEDSTATUSCODES
    S: 250-CHUNKING
    S: 250-STARTTLS
    S: 250 SMTPUTF8
";

#[test]
fn starttls_is_not_offered_without_certificates() {
    run(
        config(),
        &greeted(
            "C: STARTTLS
             S: 502 5.5.1 Command not implemented",
        ),
    );
}

#[test]
fn starttls_is_offered_and_answered_220_then_nothing_is_consumed() {
    let d = run(
        tls_config(),
        &format!(
            "S: 220 mx.test ESMTP ringmx
             {EHLO_TLS}
             C: STARTTLS
             S: 220 2.0.0 Ready to start TLS"
        ),
    );
    assert_eq!(d.session.phase(), Phase::StartTls);
    assert_eq!(
        d.session.next_deadline(),
        Some(d.now + crate::smtp::DEFAULT_TLS_HANDSHAKE_TIMEOUT)
    );
    let mut d = d;
    let mut out = Vec::new();
    let n = d
        .session
        .handle_input(d.now, b"EHLO x\r\n", &mut out, &mut d.sink);
    assert_eq!(n, Ok(0));
    assert!(out.is_empty());
}

#[test]
fn bytes_after_starttls_are_never_run_and_the_state_is_reset() {
    // CVE-2011-0411: the MAIL arrives in the same read as STARTTLS.
    let mut d = run(
        tls_config(),
        &format!(
            "S: 220 mx.test ESMTP ringmx
             {EHLO_TLS}
             C: STARTTLS
             C: MAIL FROM:<x@y.test>
             S: 220 2.0.0 Ready to start TLS"
        ),
    );
    assert_eq!(d.discarded, "MAIL FROM:<x@y.test>\r\n".len());
    assert_eq!(d.session.phase(), Phase::StartTls);
    let later = d.now + Duration::from_secs(3);
    d.session.tls_started(later, tls_info());
    assert_eq!(d.session.phase(), Phase::Command);
    assert_eq!(
        d.session.next_deadline(),
        Some(later + crate::smtp::DEFAULT_IDLE_TIMEOUT)
    );
    assert_eq!(d.session.envelope().helo, "");
    assert_eq!(d.session.envelope().tls, Some(tls_info()));
    d.feed(b"MAIL FROM:<a@b.test>\r\n");
    assert_eq!(d.take_lines(), ["503 5.5.1 Send HELO/EHLO first"]);
    d.feed(b"EHLO again.test\r\n");
    let ehlo = d.take_lines();
    assert!(!ehlo.iter().any(|l| l.contains("STARTTLS")), "{ehlo:?}");
    d.feed(b"STARTTLS\r\n");
    assert_eq!(d.take_lines(), ["503 5.5.1 TLS already active"]);
    d.feed(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<u@local.test>\r\nDATA\r\nhi\r\n.\r\n");
    assert_eq!(
        d.take_lines(),
        [
            "250 2.1.0 Ok",
            "250 2.1.5 Ok",
            "354 End data with <CR><LF>.<CR><LF>",
            "250 2.0.0 Ok queued as Q1"
        ]
    );
    assert_eq!(d.sink.messages[0].envelope.tls, Some(tls_info()));
    assert_eq!(d.sink.messages[0].envelope.helo, "again.test");
}

#[test]
fn starttls_with_an_argument_or_in_a_transaction_is_refused() {
    let d = run(
        tls_config(),
        &format!(
            "S: 220 mx.test ESMTP ringmx
             {EHLO_TLS}
             C: STARTTLS now
             S: 501 5.5.4 Syntax: STARTTLS
             C: MAIL FROM:<a@b.test>
             S: 250 2.1.0 Ok
             C: STARTTLS
             S: 503 5.5.1 STARTTLS not allowed in a mail transaction
             C: RSET
             S: 250 2.0.0 Ok
             C: starttls
             S: 220 2.0.0 Ready to start TLS"
        ),
    );
    assert_eq!(d.session.phase(), Phase::StartTls);
}

#[test]
fn tls_started_does_nothing_outside_starttls() {
    let mut d = run(tls_config(), &format!("S: 220\n{EHLO_TLS}"));
    d.session.tls_started(d.now, tls_info());
    assert_eq!(d.session.envelope().tls, None);
    assert_eq!(d.session.envelope().helo, "client.test");
}

/// Replies, messages and discarded byte count for `before` (up to and including the STARTTLS
/// exchange, cut at `cut1`), the handshake, then `after` cut at `cut2`.
fn tls_outcome(
    before: &[u8],
    cut1: usize,
    after: &[u8],
    cut2: usize,
) -> (String, Vec<Message>, usize) {
    let mut d = Driver::new(tls_config());
    d.feed(&before[..cut1]);
    d.feed(&before[cut1..]);
    assert_eq!(d.session.phase(), Phase::StartTls);
    d.session.tls_started(d.now, tls_info());
    d.feed(&after[..cut2]);
    d.feed(&after[cut2..]);
    (out_text(&d.out), d.sink.messages, d.discarded)
}

#[test]
fn a_starttls_session_split_at_every_byte_gives_the_same_result() {
    let before: &[u8] =
        b"EHLO c.test\r\nSTARTTLS\r\nMAIL FROM:<x@y.test>\r\nRCPT TO:<u@local.test>\r\n";
    let after: &[u8] = b"MAIL FROM:<a@b.test>\r\nEHLO c.test\r\nMAIL FROM:<a@b.test>\r\n\
        RCPT TO:<u@local.test>\r\nDATA\r\nSubject: s\r\n\r\nbody\r\n.\r\nQUIT\r\n";
    let whole = tls_outcome(before, before.len(), after, after.len());
    assert_eq!(whole.1.len(), 1);
    assert_eq!(whole.1[0].body, b"Subject: s\r\n\r\nbody\r\n");
    assert_eq!(whole.1[0].envelope.tls, Some(tls_info()));
    assert!(whole
        .0
        .contains("220 2.0.0 Ready to start TLS\r\n503 5.5.1 Send HELO/EHLO first"));
    let injected = before.len() - b"EHLO c.test\r\nSTARTTLS\r\n".len();
    assert_eq!(whole.2, injected);
    for i in 0..=before.len() {
        let (out, messages, discarded) = tls_outcome(before, i, after, after.len());
        assert_eq!((&out, &messages), (&whole.0, &whole.1), "split at {i}");
        // Bytes in the read after the one that completed STARTTLS are discarded too.
        assert!(discarded <= injected, "split at {i}");
    }
    for j in 0..=after.len() {
        assert_eq!(
            tls_outcome(before, before.len(), after, j),
            whole,
            "split at {j}"
        );
    }
}

// ---- BDAT (CHUNKING, RFC 3030) --------------------------------------------------------------

/// Every BDAT rule in one pipelined session (the size limit is 20 here).
const BDAT_BATCH: &[u8] = b"EHLO c\r\n\
BDAT 3\r\nabc\
MAIL FROM:<a@s.test>\r\n\
BDAT 4 LAST\r\nRSET\
RCPT TO:<x@local.test>\r\n\
BDAT 7\r\nline1\r\n\
BDAT 9\r\n.dot\r\nQUI\
BDAT 3 LAST\r\nT\r\n\
MAIL FROM:<b@s.test>\r\nRCPT TO:<Postmaster>\r\nBDAT 0 LAST\r\n\
MAIL FROM:<c@s.test>\r\nRCPT TO:<y@local.test>\r\n\
BDAT 15\r\nxxxxxxxxxxxxxxx\
BDAT 15\r\nyyyyyyyyyyyyyyy\
BDAT 2 LAST\r\nzz\
MAIL FROM:<d@s.test>\r\nRCPT TO:<z@local.test>\r\nBDAT 3\r\nabcDATA\r\nRSET\r\n\
MAIL FROM:<e@s.test>\r\nRCPT TO:<z@local.test>\r\nBDAT 5\r\na\nb\r\nBDAT 2 LAST\r\nxx\
MAIL FROM:<f@s.test>\r\nRCPT TO:<z@local.test>\r\nBDAT 2 XYZ\r\nhiBDAT 1 LAST\r\nx\
MAIL FROM:<g@s.test>\r\nRCPT TO:<z@local.test>\r\nBDAT 3\r\nab\rBDAT 5 LAST\r\n\ncd\r\n\
QUIT\r\n";

const BDAT_REPLIES: &[&str] = &[
    "220 mx.test ESMTP ringmx",
    "250-mx.test",
    "250-PIPELINING",
    "250-SIZE 20",
    "250-8BITMIME",
    "250-ENHANCEDSTATUSCODES",
    "250-CHUNKING",
    "250 SMTPUTF8",
    "503 5.5.1 Need MAIL command",
    "250 2.1.0 Ok",
    "503 5.5.1 Need RCPT command",
    "250 2.1.5 Ok",
    "250 2.0.0 7 octets received",
    "250 2.0.0 9 octets received",
    "250 2.0.0 Ok queued as Q1",
    "250 2.1.0 Ok",
    "250 2.1.5 Ok",
    "250 2.0.0 Ok queued as Q2",
    "250 2.1.0 Ok",
    "250 2.1.5 Ok",
    "250 2.0.0 15 octets received",
    "552 5.3.4 Message size exceeds fixed maximum message size",
    "552 5.3.4 Message size exceeds fixed maximum message size",
    "250 2.1.0 Ok",
    "250 2.1.5 Ok",
    "250 2.0.0 3 octets received",
    "503 5.5.1 DATA not allowed after BDAT in one transaction",
    "250 2.0.0 Ok",
    "250 2.1.0 Ok",
    "250 2.1.5 Ok",
    "550 5.6.0 Bare CR or LF in message body, message refused",
    "550 5.6.0 Bare CR or LF in message body, message refused",
    "250 2.1.0 Ok",
    "250 2.1.5 Ok",
    "501 5.5.4 Syntax: BDAT size [LAST]",
    "503 5.5.1 Transaction failed, send RSET or MAIL",
    "250 2.1.0 Ok",
    "250 2.1.5 Ok",
    "250 2.0.0 3 octets received",
    "250 2.0.0 Ok queued as Q3",
    "221 2.0.0 Bye",
];

fn bdat_config() -> SessionConfig {
    let mut c = config();
    c.max_message_size = 20;
    c
}

fn bdat_outcome(input: &[u8], cuts: &[usize]) -> (String, Vec<Message>, Option<Closed>) {
    outcome_with(bdat_config(), input, cuts)
}

#[test]
fn bdat_rules_in_one_pipelined_session() {
    let (out, m, closed) = bdat_outcome(BDAT_BATCH, &[]);
    let lines: Vec<&str> = out.split_terminator("\r\n").collect();
    assert_eq!(lines, BDAT_REPLIES);
    assert_eq!(closed, Some(Closed::Quit));
    type Seen<'a> = (&'a str, &'a [u8], Option<Result<(), Rejection>>);
    let got: Vec<Seen<'_>> = m
        .iter()
        .map(|m| (m.envelope.mail_from.as_str(), &m.body[..], m.outcome))
        .collect();
    assert_eq!(
        got,
        [
            ("a@s.test", &b"line1\r\n.dot\r\nQUIT\r\n"[..], Some(Ok(()))),
            ("b@s.test", b"", Some(Ok(()))),
            ("c@s.test", b"xxxxxxxxxxxxxxx", Some(Err(Rejection::TooBig))),
            ("d@s.test", b"abc", Some(Err(Rejection::Discarded))),
            (
                "e@s.test",
                b"a\nb\r\n",
                Some(Err(Rejection::BareLineEnding))
            ),
            ("g@s.test", b"ab\r\ncd\r\n", Some(Ok(()))),
        ]
    );
    // Six errors were counted (the repeated refusals of a failed transaction are not).
    let mut c = bdat_config();
    c.max_errors = 7;
    let (out, _, closed) = outcome_with(c, BDAT_BATCH, &[]);
    assert_eq!(closed, Some(Closed::Quit), "{out}");
}

#[test]
fn bdat_session_split_at_every_byte_gives_the_same_result() {
    let whole = bdat_outcome(BDAT_BATCH, &[]);
    for i in 0..=BDAT_BATCH.len() {
        assert_eq!(bdat_outcome(BDAT_BATCH, &[i]), whole, "split at {i}");
    }
    let cuts: Vec<usize> = (1..BDAT_BATCH.len()).collect();
    assert_eq!(bdat_outcome(BDAT_BATCH, &cuts), whole, "one byte at a time");
}

#[test]
fn bdat_chunks_split_at_every_pair_of_bytes() {
    let input: &[u8] = b"EHLO c\r\nMAIL FROM:<a@s.test>\r\nRCPT TO:<x@local.test>\r\n\
BDAT 4\r\nab\r\nBDAT 8 LAST\r\nBDAT 1\r\nMAIL FROM:<b@s.test>\r\nRCPT TO:<x@local.test>\r\n\
BDAT 30 LAST\r\n012345678901234567890123456789RSET\r\n";
    let whole = bdat_outcome(input, &[]);
    assert!(
        whole.0.ends_with(
            "250 2.0.0 4 octets received\r\n250 2.0.0 Ok queued as Q1\r\n250 2.1.0 Ok\r\n\
             250 2.1.5 Ok\r\n552 5.3.4 Message size exceeds fixed maximum message size\r\n\
             250 2.0.0 Ok\r\n"
        ),
        "{}",
        whole.0
    );
    assert_eq!(whole.1[0].body, b"ab\r\nBDAT 1\r\n");
    for i in 0..=input.len() {
        for j in i..=input.len() {
            assert_eq!(bdat_outcome(input, &[i, j]), whole, "split at {i} and {j}");
        }
    }
}

#[test]
fn bdat_queued_only_after_commit_and_commit_failures_answered() {
    let mut d = Driver::new(config());
    d.commits.push_back(Err(CommitError::NoSpace));
    d.feed(b"EHLO c\r\nMAIL FROM:<a@s.test>\r\nRCPT TO:<x@local.test>\r\nBDAT 2 LAST\r\nhi");
    let lines = d.take_lines();
    assert_eq!(
        lines.last().map(String::as_str),
        Some("452 4.3.1 Insufficient system storage")
    );
    d.feed(b"MAIL FROM:<a@s.test>\r\nRCPT TO:<x@local.test>\r\nBDAT 2 LAST\r\nhi");
    assert_eq!(
        d.take_lines(),
        ["250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.0.0 Ok queued as Q2"]
    );
    // Without the driver's commit the session writes nothing.
    let cfg = Arc::new(config());
    let now = Instant::now();
    let mut s = Session::new(cfg, IpAddr::V4(Ipv4Addr::LOCALHOST), now);
    let mut out = Vec::new();
    let mut sink = RecordingSink::default();
    let input =
        b"EHLO c\r\nMAIL FROM:<a@s.test>\r\nRCPT TO:<x@local.test>\r\nBDAT 2 LAST\r\nhiNOOP\r\n";
    let n = s.handle_input(now, input, &mut out, &mut sink).unwrap();
    assert_eq!(&input[n..], b"NOOP\r\n");
    assert_eq!(s.phase(), Phase::AwaitingCommit);
    assert!(!out_text(&out).contains("queued"));
}

#[test]
fn bdat_unparseable_size_is_501_and_closes() {
    for line in [
        "BDAT",
        "BDAT x LAST",
        "BDAT -1",
        "BDAT 99999999999999999999999",
    ] {
        run(
            config(),
            &greeted(&format!(
                "
            C: MAIL FROM:<a@s.test>
            C: RCPT TO:<x@local.test>
            C: {line}
            C: NOOP
            S: 250 2.1.0
            S: 250 2.1.5
            S: 501 5.5.4 Syntax: BDAT size [LAST]
            CLOSED: Unframeable
            "
            )),
        );
    }
}

#[test]
fn bdat_huge_declared_chunk_streams_and_is_refused_without_storing() {
    let mut d = Driver::new(config());
    d.feed(b"EHLO c\r\nMAIL FROM:<a@s.test>\r\nRCPT TO:<x@local.test>\r\nBDAT 18446744073709551615 LAST\r\n");
    d.take_lines();
    for _ in 0..100 {
        d.feed(&[b'.'; 10_000]);
        assert!(d.pending.is_empty());
        assert!(d.take_lines().is_empty());
    }
    assert_eq!(d.session.phase(), Phase::Data);
    assert_eq!(d.sink.messages[0].outcome, Some(Err(Rejection::TooBig)));
    assert!(d.sink.messages[0].body.is_empty());
}

#[test]
fn bdat_normalize_rewrites_bare_lf_but_refuses_bare_cr() {
    let d = run(
        normalizing(),
        &greeted(
            r"
        C: MAIL FROM:<a@s.test>
        C: RCPT TO:<x@local.test>
        C| BDAT 4\r\na\n.b
        C| BDAT 2 LAST\r\n\n.
        S: 250 2.1.0
        S: 250 2.1.5
        S: 250 2.0.0 4 octets received
        S: 250 2.0.0 Ok queued as Q1
        C: MAIL FROM:<a@s.test>
        C: RCPT TO:<x@local.test>
        C| BDAT 3 LAST\r\na\rb
        S: 250 2.1.0
        S: 250 2.1.5
        S: 550 5.6.0
        ",
        ),
    );
    assert_eq!(d.sink.messages[0].body, b"a\r\n.b\r\n.");
}

#[test]
fn bdat_ehlo_discards_a_partial_message_and_timeouts_apply_in_chunks() {
    let mut d = run(
        config(),
        &greeted(
            r"
        C: MAIL FROM:<a@s.test>
        C: RCPT TO:<x@local.test>
        C| BDAT 2\r\nhi
        S: 250 2.1.0
        S: 250 2.1.5
        S: 250 2.0.0 2 octets received
        C: HELO again
        S: 250 mx.test
        C| BDAT 1 LAST\r\nx
        S: 503 5.5.1 Need MAIL
        ",
        ),
    );
    assert_eq!(d.sink.messages[0].outcome, Some(Err(Rejection::Discarded)));
    d.feed(b"MAIL FROM:<a@s.test>\r\nRCPT TO:<x@local.test>\r\nBDAT 10\r\nabc");
    assert_eq!(d.session.phase(), Phase::Data);
    let idle = d.session.next_deadline().expect("a deadline in a chunk");
    assert!(idle > d.now);
    let mut out = Vec::new();
    assert_eq!(d.session.handle_timeout(&mut out), Closed::Timeout);
}

// ---- recipient table and rate limits (Policy) ------------------------------------------------

/// A driver whose session has `policy`; its greeting is already taken by `run_with`.
fn with_policy(config: SessionConfig, policy: crate::smtp::Policy) -> Driver {
    let mut d = Driver::new(config);
    d.session.set_policy(policy);
    d
}

fn table(text: &str) -> Arc<crate::smtp::RecipientTable> {
    Arc::new(crate::smtp::RecipientTable::parse(text.as_bytes()).unwrap())
}

#[test]
fn unknown_recipients_get_550_5_1_1_and_known_and_wildcard_ones_pass() {
    let policy = crate::smtp::Policy {
        recipients: Some(table("alice@local.test\n@example.org\n")),
        rates: None,
        verify: None,
    };
    let d = run_with(
        with_policy(config(), policy),
        &greeted(
            "
        C: MAIL FROM:<a@s.test>
        C: RCPT TO:<Alice@LOCAL.test>
        C: RCPT TO:<bob@local.test>
        C: RCPT TO:<anyone@EXAMPLE.org>
        C: RCPT TO:<PostMaster@local.test>
        C: RCPT TO:<Postmaster>
        C: RCPT TO:<bob@remote.test>
        C: DATA
        S: 250 2.1.0
        S: 250 2.1.5
        S: 550 5.1.1 <bob@local.test>: Recipient address rejected: User unknown
        S: 250 2.1.5
        S: 250 2.1.5
        S: 250 2.1.5
        S: 550 5.7.1 Relay access denied
        S: 354
        C: hi
        C: .
        S: 250 2.0.0 Ok queued as Q1
        ",
        ),
    );
    assert_eq!(
        d.sink.messages[0].envelope.rcpts,
        [
            "Alice@LOCAL.test",
            "anyone@EXAMPLE.org",
            "PostMaster@local.test",
            "Postmaster@local.test"
        ]
    );
    assert_eq!(
        d.sink.refused,
        [
            ("bob@local.test".to_owned(), RecipientRefusal::UnknownUser),
            ("bob@remote.test".to_owned(), RecipientRefusal::Relay),
        ]
    );
    assert_eq!(RecipientRefusal::UnknownUser.reply(), (550, "5.1.1"));
}

#[test]
fn unknown_recipients_count_as_errors() {
    let policy = crate::smtp::Policy {
        recipients: Some(table("# nobody\n")),
        rates: None,
        verify: None,
    };
    let mut c = config();
    c.max_errors = 3;
    run_with(
        with_policy(c, policy),
        &greeted(
            "
        C: MAIL FROM:<a@s.test>
        C: RCPT TO:<a@local.test>
        C: RCPT TO:<b@local.test>
        C: RCPT TO:<c@local.test>
        S: 250 2.1.0
        S: 550 5.1.1 <a@local.test>
        S: 550 5.1.1 <b@local.test>
        S: 550 5.1.1 <c@local.test>
        S: 421 4.7.0 mx.test Too many errors
        CLOSED: TooManyErrors
        ",
        ),
    );
}

/// Allows `limit` of each kind, and records what it was asked.
#[derive(Debug)]
struct Budget {
    limit: usize,
    asked: std::sync::Mutex<Vec<crate::smtp::Rate>>,
}

impl crate::smtp::RateCheck for Budget {
    fn allow(&self, what: crate::smtp::Rate, _: IpAddr, _: Instant) -> bool {
        let mut asked = self.asked.lock().unwrap();
        let before = asked.iter().filter(|w| **w == what).count();
        asked.push(what);
        before < self.limit
    }
}

#[test]
fn over_the_rate_mail_and_rcpt_get_450_4_7_1() {
    use crate::smtp::Rate;
    let budget = Arc::new(Budget {
        limit: 2,
        asked: std::sync::Mutex::new(Vec::new()),
    });
    let policy = crate::smtp::Policy {
        recipients: None,
        rates: Some(budget.clone()),
        verify: None,
    };
    let d = run_with(
        with_policy(config(), policy),
        &greeted(
            "
        C: MAIL FROM:<a@s.test>
        C: RCPT TO:<a@local.test>
        C: RCPT TO:<b@remote.test>
        C: RCPT TO:<c@local.test>
        C: RSET
        C: MAIL FROM:<a@s.test>
        C: RSET
        C: MAIL FROM:<a@s.test>
        C: MAIL FROM:<a@s.test
        S: 250 2.1.0
        S: 250 2.1.5
        S: 550 5.7.1 Relay access denied
        S: 450 4.7.1 Recipient rate limit exceeded
        S: 250 2.0.0
        S: 250 2.1.0
        S: 250 2.0.0
        S: 450 4.7.1 Message rate limit exceeded
        S: 501 5.1.7
        ",
        ),
    );
    assert_eq!(
        *budget.asked.lock().unwrap(),
        [
            Rate::Message,
            Rate::Recipient,
            Rate::Recipient,
            Rate::Recipient,
            Rate::Message,
            Rate::Message
        ],
        "every MAIL and valid RCPT is counted, a syntax error is not"
    );
    assert_eq!(
        d.sink.refused[1],
        ("c@local.test".to_owned(), RecipientRefusal::RateLimited)
    );
}

// ---- recipient verification (Policy::verify) ------------------------------------------------

/// Verifies every address of `example.org` (one route verifies, the other does not).
#[derive(Debug)]
struct VerifyExampleOrg;

impl crate::smtp::VerifyCheck for VerifyExampleOrg {
    fn wants_verdict(&self, address: &str) -> bool {
        address.to_ascii_lowercase().ends_with("@example.org")
    }
}

#[test]
fn verified_recipients_wait_for_their_verdict_and_pipelined_replies_stay_in_order() {
    let policy = crate::smtp::Policy {
        recipients: Some(table(
            "listed@example.org\n@example.org\nalice@local.test\n",
        )),
        rates: None,
        verify: Some(Arc::new(VerifyExampleOrg)),
    };
    let mut d = with_policy(no_cap(), policy);
    d.verdicts = VecDeque::from([Verdict::Accepted, Verdict::Refused, Verdict::Unverified]);
    let d = run_with(
        d,
        &greeted(
            "
        C: MAIL FROM:<a@s.test>
        C: RCPT TO:<known@example.org>
        C: RCPT TO:<alice@local.test>
        C: RCPT TO:<gone@example.org>
        C: RCPT TO:<Listed@example.org>
        C: RCPT TO:<postmaster@example.org>
        C: RCPT TO:<later@example.org>
        C: DATA
        S: 250 2.1.0
        S: 250 2.1.5
        S: 250 2.1.5
        S: 550 5.1.1 <gone@example.org>: Recipient address rejected: User unknown
        S: 250 2.1.5
        S: 250 2.1.5
        S: 450 4.1.1 <later@example.org>: Recipient address rejected: unverified address: try again later
        S: 354
        C: hi
        C: .
        S: 250 2.0.0 Ok queued as Q1
        ",
        ),
    );
    // Listed addresses and postmaster are decided by the table; only the rest is asked.
    assert_eq!(
        d.asked,
        ["known@example.org", "gone@example.org", "later@example.org"]
    );
    assert_eq!(
        d.sink.messages[0].envelope.rcpts,
        [
            "known@example.org",
            "alice@local.test",
            "Listed@example.org",
            "postmaster@example.org"
        ]
    );
}

#[test]
fn verify_refusals_count_as_errors_and_the_last_closes() {
    let policy = crate::smtp::Policy {
        recipients: None,
        rates: None,
        verify: Some(Arc::new(VerifyExampleOrg)),
    };
    let mut c = config();
    c.max_errors = 2;
    let mut d = with_policy(c, policy);
    d.verdicts = VecDeque::from([Verdict::Refused, Verdict::Unverified, Verdict::Accepted]);
    let d = run_with(
        d,
        &greeted(
            "
        C: MAIL FROM:<a@s.test>
        C: RCPT TO:<a@example.org>
        C: RCPT TO:<b@example.org>
        C: RCPT TO:<c@example.org>
        S: 250 2.1.0
        S: 550 5.1.1
        S: 450 4.1.1
        S: 421 4.7.0
        ",
        ),
    );
    assert_eq!(d.closed, Some(Closed::TooManyErrors));
    assert_eq!(d.asked, ["a@example.org", "b@example.org"]);
}

// ---- hop count (--max-hops) -----------------------------------------------------------------

#[test]
fn more_received_fields_than_max_hops_is_554_5_4_6_with_data_and_bdat() {
    let mut c = config();
    c.max_hops = 3;
    let header = |n: usize| -> Vec<u8> {
        let mut h = b"Received: from a by b\r\n".repeat(n);
        h.extend_from_slice(b"Subject: loop\r\n\r\nReceived: in the body\r\n");
        h
    };
    let head = b"MAIL FROM:<a@s.test>\r\nRCPT TO:<a@local.test>\r\nDATA\r\n";
    let mut d = Driver::new(c.clone());
    d.feed(b"EHLO c\r\n");
    d.feed(head);
    d.feed(&header(3));
    d.feed(b".\r\n");
    d.feed(head);
    // Split inside a field name: counted all the same.
    let four = header(4);
    d.feed(&four[..30]);
    d.feed(&four[30..]);
    d.feed(b".\r\nNOOP\r\n");
    let lines = d.take_lines();
    let tail: Vec<&str> = lines
        .iter()
        .rev()
        .take(2)
        .rev()
        .map(String::as_str)
        .collect();
    assert_eq!(tail, ["554 5.4.6 Too many hops", "250 2.0.0 Ok"]);
    let m = &d.sink.messages;
    assert_eq!(m.len(), 2);
    assert_eq!(m[0].outcome, Some(Ok(())), "3 hops are fine");
    assert_eq!(m[1].outcome, Some(Err(Rejection::TooManyHops)));
    assert_eq!(d.committed, 1, "the looping message is not stored");

    // BDAT: counted across chunks, refused at LAST.
    let mut d = Driver::new(c);
    d.feed(b"EHLO c\r\nMAIL FROM:<a@s.test>\r\nRCPT TO:<a@local.test>\r\n");
    let body = header(4);
    let (a, b) = body.split_at(40);
    d.feed(format!("BDAT {}\r\n", a.len()).as_bytes());
    d.feed(a);
    d.feed(format!("BDAT {} LAST\r\n", b.len()).as_bytes());
    d.feed(b);
    let lines = d.take_lines();
    assert_eq!(
        lines.last().map(String::as_str),
        Some("554 5.4.6 Too many hops")
    );
    assert_eq!(
        d.sink.messages[0].outcome,
        Some(Err(Rejection::TooManyHops))
    );
    assert_eq!(d.committed, 0);
    assert_eq!(d.session.phase(), Phase::Command);
}

#[test]
fn a_client_blocked_by_a_dnsbl_gets_554_5_7_1_at_every_rcpt() {
    let mut d = Driver::new(config());
    d.feed(b"EHLO c\r\n");
    d.session.block_recipients("bl.test");
    d.feed(b"MAIL FROM:<a@s.test>\r\nRCPT TO:<a@local.test>\r\nRCPT TO:<postmaster>\r\nDATA\r\n");
    let lines = d.take_lines();
    let tail: Vec<&str> = lines
        .iter()
        .rev()
        .take(4)
        .rev()
        .map(String::as_str)
        .collect();
    assert_eq!(
        tail,
        [
            "250 2.1.0 Ok",
            "554 5.7.1 Service unavailable; client [192.0.2.7] blocked using bl.test",
            "554 5.7.1 Service unavailable; client [192.0.2.7] blocked using bl.test",
            "503 5.5.1 Need RCPT command",
        ]
    );
    assert_eq!(
        d.sink.refused,
        [
            ("a@local.test".to_string(), RecipientRefusal::Dnsbl),
            ("postmaster".to_string(), RecipientRefusal::Dnsbl),
        ]
    );
    assert!(d.sink.messages.is_empty());
}
