//! The messages we send: tokens, the canonical message for a token, its dot-stuffed wire form,
//! and the pre-rendered [`Template`] that lets the sender patch only the token per message.
//!
//! Everything in a message is a function of the token and the run's settings (sizes, addresses,
//! subject), so a checker can re-render any acknowledged message and compare it byte for byte
//! with what a server stored. This module does no I/O.

use std::fmt::Write as _;

/// Length of a filler line's text, like Postfix's smtp-source (79 characters plus the line end).
pub(crate) const LINE_TEXT: usize = 79;

/// The digits of the message counter in a token (fixed, so every token of a run has one width).
const INDEX_DIGITS: usize = 10;

/// The settings that, with the token, determine a message's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Shape {
    /// Envelope sender and `From:` address.
    pub(crate) from: String,
    /// Recipient address (`To:`; envelope recipients derive from it, see [`Shape::recipient`]).
    pub(crate) to: String,
    /// Number of envelope recipients per message.
    pub(crate) recipients: u32,
    /// HELO name, also the domain of the Message-ID.
    pub(crate) helo: String,
    /// `Subject:` header, if any.
    pub(crate) subject: Option<String>,
    /// Body size in bytes (canonical form, CRLF counted as two bytes).
    pub(crate) size: usize,
}

impl Shape {
    /// The `n`th envelope recipient (0-based). With one recipient it is `to`; with several, like
    /// Postfix's smtp-source, a number is put in front: `1r@x`, `2r@x`, …
    pub(crate) fn recipient(&self, n: u32) -> String {
        if self.recipients <= 1 {
            self.to.clone()
        } else {
            format!("{}{}", n + 1, self.to)
        }
    }
}

/// A run's identity: unique across runs (start time, process id, sub-second nonce), shared by
/// every token of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RunId {
    /// Unix time of the start, seconds; the `Date:` header of every message.
    pub(crate) secs: u64,
    text: String,
}

impl RunId {
    /// A run id from the start time (unix seconds and nanoseconds) and the process id.
    pub(crate) fn new(secs: u64, nanos: u32, pid: u32) -> Self {
        Self {
            secs,
            text: format!("{secs:x}-{pid:x}-{:05x}", nanos >> 12),
        }
    }

    /// The token of message `index` of this run: `<secs hex>-<pid hex>-<nonce hex>.<index>`.
    pub(crate) fn token(&self, index: u64) -> String {
        format!("{}.{index:0width$}", self.text, width = INDEX_DIGITS)
    }
}

/// Reads the unix start time back out of a token (for the `Date:` header when re-rendering).
pub(crate) fn token_secs(token: &str) -> Option<u64> {
    let hex = token.split('-').next()?;
    u64::from_str_radix(hex, 16).ok()
}

/// Whether `s` has the shape of a token (so a checker does not trust arbitrary Message-IDs).
pub(crate) fn is_token(s: &str) -> bool {
    let Some((run, index)) = s.rsplit_once('.') else {
        return false;
    };
    let parts: Vec<&str> = run.split('-').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_hexdigit()))
        && index.len() == INDEX_DIGITS
        && index.bytes().all(|b| b.is_ascii_digit())
}

/// The canonical message (what a server should store: CRLF lines, no dot-stuffing, no
/// terminator) for `token`.
///
/// Headers: From, To, Date (from the token's start time), Message-ID `<token@helo>`, Subject if
/// set. Body: a line with the token, a line that starts with a dot (so a server that forgets to
/// undo dot-stuffing is caught), then 79-character filler lines, `size` bytes in all (one byte
/// less when `size` leaves exactly one byte over). A body never is shorter than its token line.
pub(crate) fn render(shape: &Shape, token: &str) -> Vec<u8> {
    let secs = token_secs(token).unwrap_or(0);
    let mut h = String::with_capacity(256);
    // Writing to a String cannot fail.
    let _ = write!(
        h,
        "From: <{}>\r\nTo: <{}>\r\nDate: {}\r\nMessage-ID: <{}@{}>\r\n",
        shape.from,
        shape.to,
        rfc5322_date(secs),
        token,
        shape.helo
    );
    if let Some(s) = &shape.subject {
        let _ = write!(h, "Subject: {s}\r\n");
    }
    h.push_str("\r\n");
    let mut out = h.into_bytes();
    out.reserve(shape.size + 100);
    let first = format!("token {token}\r\n");
    let mut left = shape.size.saturating_sub(first.len());
    out.extend_from_slice(first.as_bytes());
    let dot_line = b".leading dot, sent as '..' on the wire\r\n";
    if left >= dot_line.len() + 2 || left == dot_line.len() {
        out.extend_from_slice(dot_line);
        left -= dot_line.len();
    }
    let mut n = 0usize;
    while left >= 2 {
        let mut take = LINE_TEXT.min(left - 2);
        if left - take - 2 == 1 && take > 0 {
            take -= 1;
        }
        // Lines start with a letter that cycles so a misplaced block shows up in a compare.
        let lead = b'a' + (n % 26) as u8;
        if take > 0 {
            out.push(lead);
            out.resize(out.len() + take - 1, b'X');
        }
        out.extend_from_slice(b"\r\n");
        left -= take + 2;
        n += 1;
    }
    out
}

/// The SMTP DATA form of a canonical message: every line that starts with '.' gets another '.'
/// in front (RFC 5321 §4.5.2), lines end with CRLF, then the `.` CRLF terminator.
///
/// A bare LF in the input becomes CRLF; a message that does not end with a line end gets one.
pub(crate) fn stuff(canonical: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(canonical.len() + canonical.len() / 64 + 5);
    let mut at_line_start = true;
    for (i, &b) in canonical.iter().enumerate() {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        if b == b'\n' && (i == 0 || canonical[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !at_line_start {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// One run's pre-rendered message and envelope commands. The message is split in a small `head`
/// (headers and the token line, patched per message) and a large shared `tail`: for DATA in its
/// dot-stuffed form with the terminator, for BDAT (`--bdat`) as it is, the chunk's content.
#[derive(Debug)]
pub(crate) struct Template {
    /// Wire bytes from the first header to the end of the body's token line.
    pub(crate) head: Vec<u8>,
    /// Where the token sits in `head` (Message-ID, body line).
    pub(crate) token_at: [usize; 2],
    /// Byte length of a token of this run.
    pub(crate) token_len: usize,
    /// Wire bytes after `head`: up to and including the `.` CRLF terminator (DATA), or to the
    /// end of the message (BDAT).
    pub(crate) tail: Vec<u8>,
    /// Whether messages go as `BDAT <n> LAST` (RFC 3030) instead of DATA.
    pub(crate) bdat: bool,
    /// `BDAT <n> LAST` CRLF, `n` the message size (every token of a run has one length).
    pub(crate) bdat_cmd: Vec<u8>,
    /// `MAIL FROM:<…>` CRLF.
    pub(crate) mail: Vec<u8>,
    /// One `RCPT TO:<…>` CRLF per recipient.
    pub(crate) rcpts: Vec<Vec<u8>>,
    /// `MAIL`, every `RCPT` and `DATA` (or the `BDAT` line, its chunk following): one
    /// pipelined group (RFC 2920).
    pub(crate) group: Vec<u8>,
    /// `EHLO name` CRLF.
    pub(crate) ehlo: Vec<u8>,
    /// `HELO name` CRLF.
    pub(crate) helo: Vec<u8>,
    /// Canonical message size in bytes (what a server stores, before any trace header).
    pub(crate) message_len: usize,
}

/// `DATA` CRLF.
pub(crate) const DATA: &[u8] = b"DATA\r\n";
/// `RSET` CRLF.
pub(crate) const RSET: &[u8] = b"RSET\r\n";
/// `QUIT` CRLF.
pub(crate) const QUIT: &[u8] = b"QUIT\r\n";
/// `STARTTLS` CRLF.
pub(crate) const STARTTLS: &[u8] = b"STARTTLS\r\n";

impl Template {
    /// Renders the run's message once (with the token of message 0) and finds the token in it;
    /// `bdat` sends it with `BDAT <n> LAST` instead of DATA.
    pub(crate) fn new(shape: &Shape, run: &RunId, bdat: bool) -> Self {
        let token = run.token(0);
        let canonical = render(shape, &token);
        let wire = if bdat {
            canonical.clone()
        } else {
            stuff(&canonical)
        };
        let bdat_cmd = format!("BDAT {} LAST\r\n", canonical.len()).into_bytes();
        let mid = find(&wire, token.as_bytes(), 0).unwrap_or(0);
        let body = find(&wire, token.as_bytes(), mid + 1).unwrap_or(mid);
        // The head ends after the token line of the body.
        let head_end = find(&wire, b"\r\n", body).map_or(wire.len(), |p| p + 2);
        let mail = format!("MAIL FROM:<{}>\r\n", shape.from).into_bytes();
        let rcpts: Vec<Vec<u8>> = (0..shape.recipients.max(1))
            .map(|n| format!("RCPT TO:<{}>\r\n", shape.recipient(n)).into_bytes())
            .collect();
        let mut group = mail.clone();
        for r in &rcpts {
            group.extend_from_slice(r);
        }
        group.extend_from_slice(if bdat { &bdat_cmd } else { DATA });
        Self {
            head: wire[..head_end].to_vec(),
            token_at: [mid, body],
            token_len: token.len(),
            tail: wire[head_end..].to_vec(),
            bdat,
            bdat_cmd,
            mail,
            rcpts,
            group,
            ehlo: format!("EHLO {}\r\n", shape.helo).into_bytes(),
            helo: format!("HELO {}\r\n", shape.helo).into_bytes(),
            message_len: canonical.len(),
        }
    }

    /// Writes `token` (same length as the template's) into a copy of `head`.
    #[cfg(test)]
    pub(crate) fn patch(&self, head: &mut [u8], token: &[u8]) {
        for &at in &self.token_at {
            head[at..at + self.token_len].copy_from_slice(token);
        }
    }

    /// Bytes on the wire per message (head + tail, terminator included; for BDAT the chunk).
    #[cfg(test)]
    pub(crate) fn wire_len(&self) -> usize {
        self.head.len() + self.tail.len()
    }
}

/// Writes the token of message `index` into `out` (which has the run's token length) without
/// allocating: the run prefix stays, only the last [`INDEX_DIGITS`] digits change.
pub(crate) fn write_index(out: &mut [u8], index: u64) {
    let mut v = index;
    for b in out.iter_mut().rev().take(INDEX_DIGITS) {
        *b = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// `Thu, 26 Nov 2026 07:18:53 +0000` for a unix time (RFC 5322 §3.3), UTC.
pub(crate) fn rfc5322_date(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        DAYS[(days % 7) as usize],
        d,
        MONTHS[(m - 1) as usize],
        y,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Year, month (1-12), day (1-31) of a day count since 1970-01-01 (the proleptic Gregorian
/// calendar, computed by 400-year eras).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(size: usize) -> Shape {
        Shape {
            from: "s@bench.test".into(),
            to: "r@bench.test".into(),
            recipients: 1,
            helo: "bench.test".into(),
            subject: Some("hello".into()),
            size,
        }
    }

    fn run() -> RunId {
        RunId::new(1_795_677_533, 123_456_789, 4242)
    }

    fn body(msg: &[u8]) -> &[u8] {
        let at = find(msg, b"\r\n\r\n", 0).expect("header end") + 4;
        &msg[at..]
    }

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_795_677_533),
            "Thu, 26 Nov 2026 07:18:53 +0000"
        );
    }

    #[test]
    fn tokens_have_fixed_width_and_round_trip_the_time() {
        let r = run();
        let (a, b) = (r.token(0), r.token(9_999_999_999));
        assert_eq!(a.len(), b.len());
        assert!(is_token(&a) && is_token(&b), "{a} {b}");
        assert_eq!(token_secs(&a), Some(1_795_677_533));
        assert!(!is_token("abc.123"));
        assert!(!is_token("6a-1-2.12345678901"));
        let mut t = a.clone().into_bytes();
        write_index(&mut t, 1234);
        assert_eq!(t, r.token(1234).into_bytes());
    }

    #[test]
    fn body_has_the_requested_size_and_line_shape() {
        for size in [0, 1, 40, 100, 200, 1024, 4096, 4097, 4098, 102_400] {
            let msg = render(&shape(size), &run().token(7));
            let b = body(&msg);
            let token_line = format!("token {}\r\n", run().token(7));
            assert!(b.starts_with(token_line.as_bytes()));
            if size >= token_line.len() {
                assert!(
                    b.len() == size || b.len() + 1 == size,
                    "size {size} got {}",
                    b.len()
                );
            } else {
                assert_eq!(b.len(), token_line.len());
            }
            for line in b.split(|&c| c == b'\n') {
                assert!(line.len() <= LINE_TEXT + 1);
            }
            assert!(b.ends_with(b"\r\n"));
            assert_eq!(b.iter().filter(|&&c| c == b'\n').count(), {
                b.windows(2).filter(|w| w == b"\r\n").count()
            });
        }
    }

    #[test]
    fn render_is_deterministic_per_token_and_carries_the_message_id() {
        let s = shape(1024);
        let a = render(&s, &run().token(5));
        assert_eq!(a, render(&s, &run().token(5)));
        assert_ne!(a, render(&s, &run().token(6)));
        let id = format!("Message-ID: <{}@bench.test>\r\n", run().token(5));
        assert!(find(&a, id.as_bytes(), 0).is_some());
        assert!(find(&a, b"Subject: hello\r\n", 0).is_some());
        assert!(find(&a, b"Date: Thu, 26 Nov 2026 07:18:53 +0000\r\n", 0).is_some());
    }

    #[test]
    fn stuffing_doubles_leading_dots_and_terminates() {
        assert_eq!(
            stuff(b"a\r\n.b\r\n..c\r\nd.e\r\n"),
            b"a\r\n..b\r\n...c\r\nd.e\r\n.\r\n"
        );
        assert_eq!(stuff(b".\r\n"), b"..\r\n.\r\n");
        assert_eq!(stuff(b"x\n.y"), b"x\r\n..y\r\n.\r\n");
        assert_eq!(stuff(b""), b".\r\n");
        let msg = render(&shape(1024), &run().token(1));
        let wire = stuff(&msg);
        assert!(find(&wire, b"\r\n..leading dot", 0).is_some());
        assert_eq!(wire.len(), msg.len() + 1 + 3);
    }

    #[test]
    fn template_patch_equals_a_fresh_render() {
        let mut s = shape(4096);
        s.recipients = 3;
        let r = run();
        let t = Template::new(&s, &r, false);
        assert_eq!(
            t.group,
            b"MAIL FROM:<s@bench.test>\r\nRCPT TO:<1r@bench.test>\r\nRCPT TO:<2r@bench.test>\r\n\
              RCPT TO:<3r@bench.test>\r\nDATA\r\n"
        );
        let mut head = t.head.clone();
        let mut tok = r.token(0).into_bytes();
        write_index(&mut tok, 98_765);
        t.patch(&mut head, &tok);
        let wire = [head.as_slice(), &t.tail].concat();
        assert_eq!(wire, stuff(&render(&s, &r.token(98_765))));
        assert!(t.head.len() < 300, "head stays small: {}", t.head.len());
        assert_eq!(t.wire_len(), wire.len());
    }

    #[test]
    fn bdat_template_sends_the_message_as_it_is() {
        let s = shape(4096);
        let r = run();
        let t = Template::new(&s, &r, true);
        let msg = render(&s, &r.token(42));
        let cmd = format!("BDAT {} LAST\r\n", msg.len());
        assert_eq!(t.bdat_cmd, cmd.as_bytes());
        assert_eq!(
            t.group,
            [
                b"MAIL FROM:<s@bench.test>\r\nRCPT TO:<r@bench.test>\r\n",
                cmd.as_bytes()
            ]
            .concat()
        );
        let mut head = t.head.clone();
        let mut tok = r.token(0).into_bytes();
        write_index(&mut tok, 42);
        t.patch(&mut head, &tok);
        assert_eq!(
            [head.as_slice(), &t.tail].concat(),
            msg,
            "no dot-stuffing, no terminator"
        );
        assert_eq!(t.message_len, msg.len());
    }
}
