//! SMTP replies: the fixed texts the session sends and how they go on the wire.
//!
//! Every 2xx, 4xx and 5xx reply carries an enhanced status code (RFC 3463, RFC 2034), except
//! where RFC 2034 §3 says it must not: the 220 greeting and the positive replies to HELO and
//! EHLO (their lines are the EHLO keywords). 3xx replies (354) have no enhanced code either;
//! RFC 3463 defines classes 2, 4 and 5 only.
//!
//! This module does not decide which reply to send (the session does), and never allocates:
//! replies are appended to the caller's buffer. Text that comes from outside (the configured
//! hostname, the driver's queue id) is sanitised so it can never break a reply line.

use super::ReplyTally;

/// Where the session's replies go during one call: the caller's buffer, plus a tally of the
/// complete replies appended (counted when their last line is written), so the driver can count
/// replies by class without parsing the bytes again.
pub(crate) struct Out<'a> {
    buf: &'a mut Vec<u8>,
    /// Replies appended through this `Out`.
    pub(crate) tally: ReplyTally,
}

impl<'a> Out<'a> {
    /// Appends to `buf`; the tally starts at zero.
    pub(crate) fn new(buf: &'a mut Vec<u8>) -> Self {
        Self {
            buf,
            tally: ReplyTally::default(),
        }
    }

    fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    fn push(&mut self, b: u8) {
        self.buf.push(b);
    }

    fn extend(&mut self, bytes: impl IntoIterator<Item = u8>) {
        self.buf.extend(bytes);
    }
}

/// One single-line reply with a fixed text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reply {
    /// The three-digit reply code (RFC 5321 §4.2).
    pub(crate) code: u16,
    /// The enhanced status code (RFC 3463), e.g. `"5.5.1"`; empty for none.
    pub(crate) status: &'static str,
    /// The human-readable text.
    pub(crate) text: &'static str,
}

impl Reply {
    /// A reply line.
    pub(crate) const fn new(code: u16, status: &'static str, text: &'static str) -> Self {
        Self { code, status, text }
    }

    /// Whether this reply tells the client something failed (4xx or 5xx).
    pub(crate) fn is_error(self) -> bool {
        self.code >= 400
    }

    /// Appends `code status text CRLF`.
    pub(crate) fn encode(self, out: &mut Out<'_>) {
        self.encode_prefix(out);
        out.extend_from_slice(self.text.as_bytes());
        out.extend_from_slice(b"\r\n");
    }

    /// Appends `code status host text CRLF`: the form RFC 5321 §3.8 wants for 421.
    pub(crate) fn encode_with_host(self, out: &mut Out<'_>, host: &str) {
        self.encode_prefix(out);
        push_sanitized(out, host);
        out.push(b' ');
        out.extend_from_slice(self.text.as_bytes());
        out.extend_from_slice(b"\r\n");
    }

    /// Appends `code status text<arg> CRLF` (e.g. "Ok queued as " + id).
    pub(crate) fn encode_with_arg(self, out: &mut Out<'_>, arg: &str) {
        self.encode_prefix(out);
        out.extend_from_slice(self.text.as_bytes());
        push_sanitized(out, arg);
        out.extend_from_slice(b"\r\n");
    }

    fn encode_prefix(self, out: &mut Out<'_>) {
        push_code(out, self.code, b' ');
        if !self.status.is_empty() {
            out.extend_from_slice(self.status.as_bytes());
            out.push(b' ');
        }
    }
}

/// Appends a three-digit code and a separator (`' '` for a last line, `'-'` otherwise).
/// A last line completes a reply, which is tallied.
fn push_code(out: &mut Out<'_>, code: u16, sep: u8) {
    if sep == b' ' {
        out.tally.record(code);
    }
    let digit = |n: u16| b'0' + (n % 10) as u8;
    out.extend_from_slice(&[digit(code / 100), digit(code / 10), digit(code), sep]);
}

/// Appends `n` in decimal without allocating.
fn push_decimal(out: &mut Out<'_>, mut n: u64) {
    let mut digits = [0u8; 20]; // u64::MAX has 20 digits
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends `text`, with every control byte (including CR and LF) replaced by `?`, so that text
/// we did not write ourselves can never end a reply line early or inject one.
fn push_sanitized(out: &mut Out<'_>, text: &str) {
    out.extend(
        text.bytes()
            .map(|b| if b < 0x20 || b == 0x7f { b'?' } else { b }),
    );
}

/// The 220 greeting (RFC 5321 §4.2; no enhanced code, RFC 2034 §3).
pub(crate) fn encode_greeting(out: &mut Out<'_>, host: &str) {
    push_code(out, 220, b' ');
    push_sanitized(out, host);
    out.extend_from_slice(b" ESMTP ringmx\r\n");
}

/// The first line of a greeting held back by a greet pause: `220-<host> ESMTP ringmx`.
pub(crate) fn encode_greeting_first_line(out: &mut Out<'_>, host: &str) {
    push_code(out, 220, b'-');
    push_sanitized(out, host);
    out.extend_from_slice(b" ESMTP ringmx\r\n");
}

/// 550 to a recipient not in the recipient table, as Postfix words it:
/// `550 5.1.1 <addr>: Recipient address rejected: User unknown` (RFC 3463 5.1.1: bad
/// destination mailbox address).
pub(crate) fn encode_unknown_user(out: &mut Out<'_>, address: &str) {
    push_code(out, 550, b' ');
    out.extend_from_slice(b"5.1.1 <");
    push_sanitized(out, address);
    out.extend_from_slice(b">: Recipient address rejected: User unknown\r\n");
}

/// 450 to a recipient whose next hop could not say in time whether it exists (recipient
/// verification, a probe that timed out or got 4xx), as Postfix words it:
/// `450 4.1.1 <addr>: Recipient address rejected: unverified address: try again later`.
pub(crate) fn encode_unverified(out: &mut Out<'_>, address: &str) {
    push_code(out, 450, b' ');
    out.extend_from_slice(b"4.1.1 <");
    push_sanitized(out, address);
    out.extend_from_slice(
        b">: Recipient address rejected: unverified address: try again later\r\n",
    );
}

/// 554 to every recipient of a client listed by DNSBLs (at or over `--dnsbl-threshold`), as
/// Postfix words it: `554 5.7.1 Service unavailable; client [ip] blocked using ZONE`.
pub(crate) fn encode_dnsbl(out: &mut Out<'_>, client: std::net::IpAddr, zone: &str) {
    push_code(out, 554, b' ');
    out.extend_from_slice(b"5.7.1 Service unavailable; client [");
    push_sanitized(out, &client.to_string());
    out.extend_from_slice(b"] blocked using ");
    push_sanitized(out, zone);
    out.extend_from_slice(b"\r\n");
}

/// The positive reply to HELO.
pub(crate) fn encode_helo(out: &mut Out<'_>, host: &str) {
    push_code(out, 250, b' ');
    push_sanitized(out, host);
    out.extend_from_slice(b"\r\n");
}

/// The multi-line positive reply to EHLO, listing the extensions we offer.
pub(crate) fn encode_ehlo(out: &mut Out<'_>, host: &str, max_size: u64, starttls: bool) {
    push_code(out, 250, b'-');
    push_sanitized(out, host);
    out.extend_from_slice(b"\r\n250-PIPELINING\r\n250-SIZE ");
    push_decimal(out, max_size);
    out.extend_from_slice(b"\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n");
    if starttls {
        out.extend_from_slice(b"250-STARTTLS\r\n");
    }
    push_code(out, 250, b' ');
    out.extend_from_slice(b"SMTPUTF8\r\n");
}

// ---- the fixed replies, grouped by command --------------------------------------------------

/// 250 to a generic successful command (RSET, NOOP).
pub(crate) const OK: Reply = Reply::new(250, "2.0.0", "Ok");
/// 250 to MAIL.
pub(crate) const MAIL_OK: Reply = Reply::new(250, "2.1.0", "Ok");
/// 250 to RCPT.
pub(crate) const RCPT_OK: Reply = Reply::new(250, "2.1.5", "Ok");
/// 354 to DATA (no enhanced code: 3xx).
pub(crate) const DATA_GO_AHEAD: Reply = Reply::new(354, "", "End data with <CR><LF>.<CR><LF>");
/// 250 after the driver made a message durable; the queue id follows the text.
pub(crate) const QUEUED: Reply = Reply::new(250, "2.0.0", "Ok queued as ");
/// 221 to QUIT.
/// RFC 3207 §4: the client starts the TLS handshake after this line.
pub(crate) const TLS_READY: Reply = Reply::new(220, "2.0.0", "Ready to start TLS");
/// STARTTLS with an argument (RFC 3207 §4: "501 Syntax error (no parameters allowed)").
pub(crate) const TLS_SYNTAX: Reply = Reply::new(501, "5.5.4", "Syntax: STARTTLS");
/// STARTTLS when TLS is already active (RFC 3207 §4.2: a second STARTTLS is an error).
pub(crate) const TLS_ACTIVE: Reply = Reply::new(503, "5.5.1", "TLS already active");
/// STARTTLS between MAIL and the end of the transaction.
pub(crate) const TLS_IN_TRANSACTION: Reply =
    Reply::new(503, "5.5.1", "STARTTLS not allowed in a mail transaction");
pub(crate) const BYE: Reply = Reply::new(221, "2.0.0", "Bye");
/// 252 to VRFY (RFC 5321 §3.5.3: we do not confirm addresses).
pub(crate) const VRFY_CANNOT: Reply = Reply::new(
    252,
    "2.5.0",
    "Cannot VRFY user, but will accept message and attempt delivery",
);
/// 214 to HELP.
pub(crate) const HELP: Reply = Reply::new(
    214,
    "2.0.0",
    "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP",
);

/// 503: MAIL before HELO/EHLO.
pub(crate) const NEED_HELO: Reply = Reply::new(503, "5.5.1", "Send HELO/EHLO first");
/// 503: MAIL inside a transaction.
pub(crate) const NESTED_MAIL: Reply = Reply::new(503, "5.5.1", "Nested MAIL command");
/// 503: RCPT or DATA without MAIL.
pub(crate) const NEED_MAIL: Reply = Reply::new(503, "5.5.1", "Need MAIL command");
/// 503: DATA without an accepted RCPT (RFC 5321 §3.3 allows 503 or 554; we say 503).
pub(crate) const NEED_RCPT: Reply = Reply::new(503, "5.5.1", "Need RCPT command");

/// 500: a line longer than [`crate::smtp::MAX_COMMAND_LINE`].
pub(crate) const LINE_TOO_LONG: Reply = Reply::new(500, "5.5.6", "Line too long");
/// 500: a command line ended by a bare LF, or holding a bare CR.
pub(crate) const BARE_LINE_ENDING: Reply =
    Reply::new(500, "5.5.2", "Bare CR or LF in command line");

/// 452: more recipients than [`crate::smtp::SessionConfig::max_recipients`].
pub(crate) const TOO_MANY_RCPTS: Reply = Reply::new(452, "4.5.3", "Too many recipients");
/// 550: a recipient outside our domains.
pub(crate) const RELAY_DENIED: Reply = Reply::new(550, "5.7.1", "Relay access denied");
/// 450 to MAIL: the client is over `--max-message-rate` (RFC 3463 4.7.1: delivery not
/// authorized, here for now).
pub(crate) const MESSAGE_RATE: Reply =
    Reply::new(450, "4.7.1", "Message rate limit exceeded, try again later");
/// 450 to RCPT: the client is over `--max-recipient-rate`.
pub(crate) const RECIPIENT_RATE: Reply = Reply::new(
    450,
    "4.7.1",
    "Recipient rate limit exceeded, try again later",
);
/// 550: a forward-path with a source route (RFC 5321 §3.6.1 allows refusing them).
pub(crate) const SOURCE_ROUTE_DENIED: Reply =
    Reply::new(550, "5.7.1", "Source routes are not accepted");
/// 553: a non-ASCII address without SMTPUTF8 (RFC 6531 §3.7.4.1).
pub(crate) const NEED_SMTPUTF8: Reply =
    Reply::new(553, "5.6.7", "Non-ASCII address requires SMTPUTF8");
/// 552: SIZE= or the body over the limit.
pub(crate) const TOO_BIG: Reply = Reply::new(
    552,
    "5.3.4",
    "Message size exceeds fixed maximum message size",
);
/// 550 after the terminator: the body held a bare CR or LF (SMTP smuggling defence). X.6.0
/// ("other or undefined media error", RFC 3463 §3.7): the content is at fault, and the
/// registry (RFC 5248) has no more specific code for broken line endings.
pub(crate) const BODY_BARE_LINE_ENDING: Reply = Reply::new(
    550,
    "5.6.0",
    "Bare CR or LF in message body, message refused",
);

/// 554 after the terminator: more `Received:` fields than allowed, a mail loop (RFC 5321
/// §6.3; RFC 3463 X.4.6 "routing loop detected").
pub(crate) const TOO_MANY_HOPS: Reply = Reply::new(554, "5.4.6", "Too many hops");

/// 452 after DATA: the driver ran out of space.
pub(crate) const COMMIT_NO_SPACE: Reply = Reply::new(452, "4.3.1", "Insufficient system storage");
/// 451 after DATA: the driver hit an I/O error.
pub(crate) const COMMIT_IO: Reply =
    Reply::new(451, "4.3.0", "Local error in processing, try again later");

/// 250 after a BDAT chunk that is not the last: `250 2.0.0 <n> octets received`.
pub(crate) fn encode_chunk_received(out: &mut Out<'_>, octets: u64) {
    push_code(out, 250, b' ');
    out.extend_from_slice(b"2.0.0 ");
    push_decimal(out, octets);
    out.extend_from_slice(b" octets received\r\n");
}
/// 501 to a BDAT line: a size that cannot be parsed (then close), or a bad argument after it.
pub(crate) const BDAT_SYNTAX: Reply = Reply::new(501, "5.5.4", "Syntax: BDAT size [LAST]");
/// 503 to DATA in a transaction that already sent BDAT chunks (RFC 3030 §2).
pub(crate) const DATA_AFTER_BDAT: Reply = Reply::new(
    503,
    "5.5.1",
    "DATA not allowed after BDAT in one transaction",
);
/// 503 to a chunk of a transaction whose message was discarded by a bad BDAT line.
pub(crate) const BDAT_FAILED: Reply =
    Reply::new(503, "5.5.1", "Transaction failed, send RSET or MAIL");

/// 221 to an HTTP request line, then close (sent with our hostname). Postfix answers these
/// `221 2.7.0` too: a closing reply, with the policy class of RFC 3463 §3.8.
pub(crate) const NOT_SMTP: Reply = Reply::new(
    221,
    "2.7.0",
    "This is an SMTP server, not HTTP; closing connection",
);
/// 421 after too many errors (sent with our hostname).
pub(crate) const TOO_MANY_ERRORS: Reply =
    Reply::new(421, "4.7.0", "Too many errors, closing connection");
/// 421 after a timeout (sent with our hostname).
pub(crate) const TIMEOUT: Reply = Reply::new(421, "4.4.2", "Timeout exceeded, closing connection");
/// 421 to a connection over a connection limit (sent with our hostname).
pub(crate) const TOO_MANY_CONNECTIONS: Reply =
    Reply::new(421, "4.7.0", "Too many connections, try again later");
/// 421 to a connection over `--max-connect-rate` (sent with our hostname).
pub(crate) const CONNECT_RATE: Reply = Reply::new(
    421,
    "4.7.0",
    "Connection rate limit exceeded, try again later",
);
/// 554 to a client that sent something before the final greeting line (it did not wait for
/// the server: a bot talking out of turn; sent with our hostname, then close).
pub(crate) const PREGREET: Reply = Reply::new(554, "5.5.1", "Protocol error: talking out of turn");
/// 421 on shutdown (sent with our hostname).
pub(crate) const SHUTDOWN: Reply =
    Reply::new(421, "4.3.2", "Service shutting down, closing connection");

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: impl FnOnce(&mut Out<'_>)) -> String {
        let mut out = Vec::new();
        f(&mut Out::new(&mut out));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn every_complete_reply_is_tallied_once() {
        let mut buf = Vec::new();
        let mut out = Out::new(&mut buf);
        encode_greeting(&mut out, "mx.test");
        encode_ehlo(&mut out, "mx.test", 1000, false);
        encode_helo(&mut out, "mx.test");
        DATA_GO_AHEAD.encode(&mut out);
        TIMEOUT.encode_with_host(&mut out, "mx.test");
        TOO_BIG.encode(&mut out);
        QUEUED.encode_with_arg(&mut out, "ABC");
        let t = out.tally;
        assert_eq!((t.c2xx, t.c3xx, t.c4xx, t.c5xx), (4, 1, 1, 1));
    }

    #[test]
    fn encodes_code_status_text_crlf() {
        assert_eq!(text(|o| MAIL_OK.encode(o)), "250 2.1.0 Ok\r\n");
        assert_eq!(
            text(|o| DATA_GO_AHEAD.encode(o)),
            "354 End data with <CR><LF>.<CR><LF>\r\n"
        );
        assert_eq!(
            text(|o| TIMEOUT.encode_with_host(o, "mx.test")),
            "421 4.4.2 mx.test Timeout exceeded, closing connection\r\n"
        );
        assert_eq!(
            text(|o| QUEUED.encode_with_arg(o, "ABC")),
            "250 2.0.0 Ok queued as ABC\r\n"
        );
        assert!(TOO_BIG.is_error() && !OK.is_error() && !DATA_GO_AHEAD.is_error());
    }

    #[test]
    fn outside_text_cannot_inject_lines() {
        assert_eq!(
            text(|o| QUEUED.encode_with_arg(o, "id\r\n250 fake")),
            "250 2.0.0 Ok queued as id??250 fake\r\n"
        );
        assert_eq!(
            text(|o| encode_greeting(o, "a\nb")),
            "220 a?b ESMTP ringmx\r\n"
        );
    }

    #[test]
    fn ehlo_lists_every_extension_and_ends_with_a_space_line() {
        let t = text(|o| encode_ehlo(o, "mx.test", 1000, false));
        assert_eq!(
            t,
            "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n\
             250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250 SMTPUTF8\r\n"
        );
        assert_eq!(text(|o| encode_helo(o, "mx.test")), "250 mx.test\r\n");
        for n in [0, 7, 10, 52_428_800, u64::MAX] {
            assert_eq!(text(|o| push_decimal(o, n)), n.to_string());
        }
    }
}
