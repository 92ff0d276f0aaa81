//! The sans-IO SMTP/LMTP client: the outbound side of a connection to a next hop.
//!
//! Bytes in ([`Client::feed`]), commands out (appended to the caller's buffer) and events out
//! ([`Client::poll_event`]). It does no I/O, keeps no clock and spawns nothing, so every
//! transcript and every byte split is testable without a socket; the driver (`relay`) owns the
//! socket, the timeouts and the message bytes.
//!
//! What it does: greeting; EHLO (LHLO for LMTP, RFC 2033) with a fallback to HELO when an SMTP
//! server refuses EHLO with 5xx; multi-line replies; the EHLO keywords PIPELINING, SIZE (with
//! its limit), CHUNKING, STARTTLS, 8BITMIME, SMTPUTF8; the STARTTLS hand-off (RFC 3207, by
//! [`TlsPolicy`]: the command, [`Event::StartTls`] on its 220 so the driver wraps the socket,
//! then EHLO again with everything learnt in clear forgotten); the MAIL parameters of the
//! message's envelope as received ([`MailParams`]: `SIZE=`, `BODY=8BITMIME`, `SMTPUTF8`, each
//! when the server offers its keyword) and the refusal to send what the server cannot take
//! (below); MAIL FROM / RCPT TO / DATA sent
//! as one group when PIPELINING is offered (RFC 2920 §3.1), one by one otherwise; the body
//! dot-stuffed as it streams ([`Client::body`], [`Client::end_body`]), or, when the server
//! offers CHUNKING and PIPELINING, sent as pipelined `BDAT` chunks (RFC 3030) right behind the
//! RCPTs, without dot-stuffing, the last one `BDAT n LAST`; the reply after the end of data
//! (SMTP: one for the transaction; LMTP: one per accepted recipient, in RCPT order, after DATA's
//! dot or after BDAT LAST); RSET and QUIT; one [`RcptOutcome`] per recipient (2xx delivered, 4xx
//! deferred, 5xx failed, the reply kept). Several transactions may follow each other on one
//! connection.
//!
//! A message the server cannot take is not sent: nothing goes out, every recipient fails at
//! once with a local 5xx reply (so the stage bounces it) and the connection stays ready.
//! - Received with `SMTPUTF8` and needing it (a non-ASCII reverse-path or recipient of this
//!   transaction, or a non-ASCII octet in the header section), to a server without SMTPUTF8:
//!   `554 5.6.7` (RFC 6531 §3.2: no internationalized address or header to such a server; no
//!   downgrade). One received with `SMTPUTF8` that needs none of it goes without the
//!   parameter, as Postfix does: the flag alone asks for nothing the server lacks. A probe ([`Client::probe`]) of a non-ASCII recipient sends `MAIL FROM:<> SMTPUTF8`,
//!   or, to a server without SMTPUTF8, is answered `553 5.6.7` without sending anything.
//! - Received with `BODY=8BITMIME` and holding an octet above 127, to a server without 8BITMIME:
//!   `554 5.6.3` (RFC 6152 §3 says convert or bounce; there is no conversion to
//!   quoted-printable here). The check is the message's bytes, not only the declaration: a
//!   message declared 8BITMIME that is all ASCII is valid 7-bit content and goes without
//!   `BODY=`. A message not declared 8BITMIME is sent as it is, 8-bit or not, as before
//!   (declaring 8-bit content was its client's duty, RFC 6152 §3).
//!
//! What it does not do: the TLS handshake itself and certificate checks (the driver's), BDAT
//! without PIPELINING (DATA then: every server seen offering CHUNKING offers PIPELINING too, and
//! unpipelined chunks would need a reply between chunks), AUTH, DSN parameters, BINARYMIME, and
//! converting 8-bit content or downgrading SMTPUTF8 for a server that lacks the extension.
//!
//! This file has the public types and the connection: the greeting, EHLO/LHLO, STARTTLS,
//! reading replies and matching each to the command it answers, QUIT, a lost connection. One
//! transaction, from MAIL to the outcome of each recipient (the body and BDAT included), is in
//! `transaction`.

use std::collections::VecDeque;
use std::fmt;

mod transaction;

use transaction::finish;

/// Longest reply line accepted (RFC 5321 §4.5.3.1.5 says 512 with the CRLF; servers exceed it).
pub const MAX_REPLY_LINE: usize = 4096;
/// Most lines in one multi-line reply (an EHLO reply has one per extension).
pub const MAX_REPLY_LINES: usize = 256;

/// SMTP (RFC 5321) or LMTP (RFC 2033).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// EHLO, one reply after the end of data.
    Smtp,
    /// LHLO, one reply per accepted recipient after the end of data.
    Lmtp,
}

/// A server reply: the code and each line's text (without the code and separator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// The text of each line.
    pub lines: Vec<String>,
}

/// Whether the client asks for STARTTLS (the route's TLS policy, as the client sees it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsPolicy {
    /// Never sends STARTTLS.
    #[default]
    Never,
    /// STARTTLS when the server offers it; in clear otherwise (or when the server refuses it).
    IfOffered,
    /// STARTTLS or nothing: a server that does not offer it or refuses it gets QUIT, and the
    /// connection ends with a 4.7.4 reply (so its recipients are deferred).
    Required,
}

/// What a reply code means for a recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyClass {
    /// 2xx.
    Positive,
    /// 3xx (354).
    Intermediate,
    /// 4xx: try again later.
    Transient,
    /// 5xx (and anything unknown): do not try again.
    Permanent,
}

impl Reply {
    /// A reply made up locally (a lost connection, a timeout), with a 4xx code so it defers.
    pub fn local(code: u16, text: impl Into<String>) -> Self {
        Self {
            code,
            lines: vec![text.into()],
        }
    }

    /// The class of the code.
    pub fn class(&self) -> ReplyClass {
        match self.code / 100 {
            2 => ReplyClass::Positive,
            3 => ReplyClass::Intermediate,
            4 => ReplyClass::Transient,
            _ => ReplyClass::Permanent,
        }
    }

    /// The enhanced status code (RFC 3463) at the start of the first line, if any: `5.1.1`.
    pub fn enhanced(&self) -> Option<&str> {
        let first = self.lines.first()?;
        let word = first.split(' ').next()?;
        let mut parts = word.split('.');
        let class = parts.next()?;
        let ok = matches!(class, "2" | "4" | "5")
            && parts.clone().count() == 2
            && parts
                .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
        ok.then_some(word)
    }

    /// The DSN status: the enhanced code, or `X.0.0` from the code's class.
    pub fn dsn(&self) -> String {
        self.enhanced().map_or_else(
            || format!("{}.0.0", (self.code / 100).clamp(2, 5)),
            str::to_string,
        )
    }
}

impl fmt::Display for Reply {
    /// `250 2.0.0 Ok`: the code and the lines joined by spaces (one log line).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        for l in &self.lines {
            write!(f, " {l}")?;
        }
        Ok(())
    }
}

/// The EHLO (LHLO) keywords this client uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    /// RFC 2920.
    pub pipelining: bool,
    /// RFC 1870: `Some(limit)` (0: no limit given).
    pub size: Option<u64>,
    /// RFC 3030 (BDAT is used when PIPELINING is offered too).
    pub chunking: bool,
    /// RFC 3207.
    pub starttls: bool,
    /// RFC 6152.
    pub eightbitmime: bool,
    /// RFC 6531.
    pub smtputf8: bool,
}

impl Extensions {
    fn parse(reply: &Reply) -> Self {
        let mut e = Self::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(kw) = words.next() else { continue };
            match kw.to_ascii_uppercase().as_str() {
                "PIPELINING" => e.pipelining = true,
                "SIZE" => e.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "CHUNKING" => e.chunking = true,
                "STARTTLS" => e.starttls = true,
                "8BITMIME" => e.eightbitmime = true,
                "SMTPUTF8" => e.smtputf8 = true,
                _ => {}
            }
        }
        e
    }
}

/// What MAIL FROM says about a message and what the message needs: its envelope's flags as it
/// was received and what its bytes hold ([`MailParams::new`]). See the module docs for what is
/// sent, and refused, with which server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MailParams {
    /// Its size in octets, for `SIZE=` (RFC 1870) when the server offers SIZE.
    pub size: Option<u64>,
    /// Received with `BODY=8BITMIME` (RFC 6152).
    pub body_8bitmime: bool,
    /// Received with `SMTPUTF8` (RFC 6531).
    pub smtputf8: bool,
    /// An octet of the message (header section or body) is above 127.
    pub eight_bit: bool,
    /// An octet of its header section is above 127 (UTF-8 header fields, RFC 6532).
    pub eight_bit_header: bool,
}

impl MailParams {
    /// The parameters of `message` (the bytes to send: header section, empty line, body),
    /// received with `BODY=8BITMIME` and `SMTPUTF8` as the flags say. One pass over the bytes
    /// for octets above 127 (the caller holds them to send them anyway).
    pub fn new(message: &[u8], body_8bitmime: bool, smtputf8: bool) -> Self {
        let head = if message.starts_with(b"\r\n") {
            0
        } else {
            memchr::memmem::find(message, b"\r\n\r\n").map_or(message.len(), |i| i + 2)
        };
        let eight_bit_header = !message[..head].is_ascii();
        Self {
            size: Some(message.len() as u64),
            body_8bitmime,
            smtputf8,
            eight_bit: eight_bit_header || !message[head..].is_ascii(),
            eight_bit_header,
        }
    }
}

/// What became of one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// 2xx after the end of data: the next hop has it.
    Delivered,
    /// 4xx, or the connection failed: try again later.
    Deferred,
    /// 5xx: do not try again.
    Failed,
}

impl Status {
    /// `sent` / `deferred` / `failed`, as the log says it (Postfix's `status=`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Delivered => "sent",
            Self::Deferred => "deferred",
            Self::Failed => "failed",
        }
    }

    fn of(reply: &Reply) -> Self {
        match reply.class() {
            ReplyClass::Positive => Self::Delivered,
            ReplyClass::Transient => Self::Deferred,
            ReplyClass::Intermediate | ReplyClass::Permanent => Self::Failed,
        }
    }
}

/// The outcome of one recipient of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptOutcome {
    /// Delivered, deferred or failed.
    pub status: Status,
    /// The reply that decided it.
    pub reply: Reply,
}

/// What the driver must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Greeting and EHLO/LHLO done: a transaction may start ([`Client::start`]).
    Ready(Extensions),
    /// The server answered STARTTLS with 220 and sent nothing after it: run the TLS handshake
    /// on the socket, then call [`Client::tls_established`] (or [`Client::lose`] if it fails).
    /// Nothing may be fed before that.
    StartTls,
    /// The server answered DATA with 354: stream the body with [`Client::body`], then
    /// [`Client::end_body`].
    SendBody,
    /// The transaction is over; one outcome per recipient, in the order given to `start`.
    Done(Vec<RcptOutcome>),
    /// The connection is no longer usable (greeting or EHLO refused, 421, a protocol error,
    /// the reply to QUIT): close it. A transaction in progress was reported by `Done` first.
    Closed(Reply),
}

/// Why [`Client::start`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartError {
    /// Not ready: before [`Event::Ready`], during a transaction, or closed.
    NotReady,
    /// No recipients.
    NoRecipients,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    Mail,
    Rcpt(usize),
    Data,
    /// A BDAT chunk that is not the last.
    Bdat,
    /// BDAT LAST (LMTP: the first of the per-recipient replies; the others follow as
    /// `EndOfData`).
    BdatLast,
    /// SMTP: the transaction; LMTP: the recipient with this index.
    EndOfData(Option<usize>),
    Rset,
    Quit,
}

impl Expect {
    /// The reply to the end of a body (`.` or `BDAT LAST`).
    fn ends_body(self) -> bool {
        matches!(self, Self::EndOfData(_) | Self::BdatLast)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Opening,
    /// STARTTLS got its 220: waiting for the driver's handshake.
    Handshake,
    Ready,
    Transaction,
    Body,
    Closed,
}

#[derive(Debug, Default)]
struct Txn {
    rcpts: Vec<String>,
    outcomes: Vec<Option<RcptOutcome>>,
    /// Recipients the server accepted at RCPT, in order.
    accepted: Vec<usize>,
    /// MAIL was refused: its reply decides every recipient.
    mail_refused: Option<Reply>,
    /// RCPTs not yet sent (without PIPELINING).
    next_rcpt: usize,
    /// DATA sent (or, with BDAT, the RCPTs pipelined: nothing more is sent before the body).
    data_sent: bool,
    /// The body goes in BDAT chunks.
    bdat: bool,
    /// The first BDAT reply that was not 2xx: it decides the accepted recipients.
    bdat_failed: Option<Reply>,
    /// Body with no recipient accepted (a server that said 354 anyway): send only the dot.
    empty_body: bool,
    /// Dot-stuffing state: the next body byte starts a line.
    bol: bool,
    /// The last body byte sent (for the final CRLF).
    last: Option<u8>,
    /// The one before it.
    prev: Option<u8>,
    /// A recipient probe ([`Client::probe`]): no DATA; every RCPT reply is the outcome.
    probe: bool,
}

/// The client state machine of one connection. See the module docs.
#[derive(Debug)]
pub struct Client {
    protocol: Protocol,
    helo: String,
    state: State,
    expect: VecDeque<Expect>,
    events: VecDeque<Event>,
    ext: Extensions,
    tls: TlsPolicy,
    /// STARTTLS done: the connection is encrypted.
    tls_active: bool,
    /// The 220 to STARTTLS was read; [`Event::StartTls`] is announced once the rest of the
    /// input is known to be empty.
    tls_announce: bool,
    txn: Option<Txn>,
    /// Lines of the reply being read.
    lines: Vec<String>,
    /// A partial line held between feeds.
    partial: Vec<u8>,
    /// The connection was lost after the end of a body, before its reply: the server may
    /// have taken the message.
    lost_after_data: bool,
}

impl Client {
    /// A client that waits for the greeting, then sends EHLO (LHLO) `helo`.
    pub fn new(protocol: Protocol, helo: impl Into<String>) -> Self {
        Self {
            protocol,
            helo: helo.into(),
            state: State::Opening,
            expect: VecDeque::from([Expect::Greeting]),
            events: VecDeque::new(),
            ext: Extensions::default(),
            tls: TlsPolicy::Never,
            tls_active: false,
            tls_announce: false,
            txn: None,
            lines: Vec::new(),
            partial: Vec::new(),
            lost_after_data: false,
        }
    }

    /// Sets the STARTTLS policy (before the first [`Client::feed`]).
    #[must_use]
    pub fn with_tls(mut self, tls: TlsPolicy) -> Self {
        self.tls = tls;
        self
    }

    /// Whether STARTTLS succeeded on this connection.
    pub fn is_tls(&self) -> bool {
        self.tls_active
    }

    /// The extensions the server offered (empty before [`Event::Ready`]).
    pub fn extensions(&self) -> &Extensions {
        &self.ext
    }

    /// Whether the connection is closed (no more commands).
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Whether the reply awaited next is the one to the end of a body (`.` or `BDAT LAST`),
    /// which a server may take 10 minutes to give (RFC 5321 §4.5.3.2.6).
    pub fn awaiting_end_of_data(&self) -> bool {
        self.expect.front().is_some_and(|e| e.ends_body())
    }

    /// Whether the connection was lost ([`Client::lose`]) after a body was ended and before
    /// its reply: the message is deferred, but the server may have taken it, so trying
    /// another host now could deliver it twice.
    pub fn lost_after_data(&self) -> bool {
        self.lost_after_data
    }

    /// Whether a transaction may start now.
    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Consumes server bytes; appends the commands they lead to to `out`. Every byte is
    /// consumed (a partial line is kept until the next call).
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        if self.state == State::Handshake {
            // Cleartext after the 220 to STARTTLS, fed before the handshake.
            if !input.is_empty() {
                self.protocol_error("data after the 220 to STARTTLS");
            }
            return;
        }
        while !input.is_empty() && !matches!(self.state, State::Closed | State::Handshake) {
            let Some(nl) = memchr::memchr(b'\n', input) else {
                self.partial.extend_from_slice(input);
                if self.partial.len() > MAX_REPLY_LINE {
                    self.protocol_error("reply line too long");
                }
                return;
            };
            self.partial.extend_from_slice(&input[..nl]);
            input = &input[nl + 1..];
            let mut line = std::mem::take(&mut self.partial);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.len() > MAX_REPLY_LINE {
                self.protocol_error("reply line too long");
                return;
            }
            self.line(&line, out);
        }
        if self.tls_announce {
            self.tls_announce = false;
            if input.is_empty() && self.partial.is_empty() && self.lines.is_empty() {
                self.events.push_back(Event::StartTls);
            } else {
                // Bytes behind the 220 were sent in clear before the handshake and would be
                // read as if they came over TLS (CVE-2011-0411, response injection).
                self.protocol_error("data after the 220 to STARTTLS (response injection?)");
            }
        }
    }

    /// The TLS handshake after [`Event::StartTls`] succeeded: sends EHLO (LHLO) again; what
    /// was learnt in clear (the extensions) is forgotten. [`Event::Ready`] follows.
    pub fn tls_established(&mut self, out: &mut Vec<u8>) {
        if self.state != State::Handshake {
            return;
        }
        self.tls_active = true;
        self.ext = Extensions::default();
        self.state = State::Opening;
        self.send_ehlo(out);
    }

    fn send_ehlo(&mut self, out: &mut Vec<u8>) {
        let verb = match self.protocol {
            Protocol::Smtp => "EHLO",
            Protocol::Lmtp => "LHLO",
        };
        command(out, &format!("{verb} {}", self.helo));
        self.expect.push_back(Expect::Ehlo);
    }

    /// After EHLO: STARTTLS when the policy asks for it, else ready.
    fn after_ehlo(&mut self, out: &mut Vec<u8>) {
        if self.tls_active || self.tls == TlsPolicy::Never {
            self.ready();
        } else if self.ext.starttls {
            command(out, "STARTTLS");
            self.expect.push_back(Expect::StartTls);
        } else if self.tls == TlsPolicy::Required {
            self.quit_after(
                Reply::local(
                    451,
                    "4.7.4 TLS is required (tls = encrypt) but the next hop does not offer STARTTLS; nothing sent",
                ),
                out,
            );
        } else {
            self.ready();
        }
    }

    fn starttls_reply(&mut self, reply: Reply, out: &mut Vec<u8>) {
        if reply.code == 220 {
            self.state = State::Handshake;
            self.tls_announce = true;
        } else if self.tls == TlsPolicy::Required {
            self.quit_after(
                Reply::local(
                    451,
                    format!("4.7.4 TLS is required (tls = encrypt) but the next hop refused STARTTLS: {reply}"),
                ),
                out,
            );
        } else {
            // Opportunistic: in clear, as before the refusal (RFC 3207 §4 leaves the
            // session in its pre-STARTTLS state).
            self.ready();
        }
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<u8>) {
        let code = line
            .get(..3)
            .filter(|c| c.iter().all(u8::is_ascii_digit) && (b'2'..=b'5').contains(&c[0]))
            .map(|c| c.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0')));
        let sep = line.get(3).copied();
        let (Some(code), Some(b' ' | b'-') | None) = (code, sep) else {
            self.protocol_error("malformed reply line");
            return;
        };
        let text = String::from_utf8_lossy(line.get(4..).unwrap_or_default()).into_owned();
        self.lines.push(text);
        if sep == Some(b'-') {
            if self.lines.len() > MAX_REPLY_LINES {
                self.protocol_error("reply has too many lines");
            }
            return;
        }
        let reply = Reply {
            code,
            lines: std::mem::take(&mut self.lines),
        };
        self.reply(reply, out);
    }

    fn protocol_error(&mut self, why: &str) {
        self.lose(&Reply::local(451, format!("4.5.0 protocol error: {why}")));
    }

    /// The connection failed (closed by the server, a timeout, an I/O error): a transaction in
    /// progress ends with `why` for every recipient not yet decided, then [`Event::Closed`].
    pub fn lose(&mut self, why: &Reply) {
        if self.state == State::Closed {
            return;
        }
        self.lost_after_data = self.expect.iter().any(|e| e.ends_body());
        if let Some(mut t) = self.txn.take() {
            for o in &mut t.outcomes {
                if o.is_none() {
                    *o = Some(RcptOutcome {
                        status: Status::Deferred,
                        reply: why.clone(),
                    });
                }
            }
            self.events.push_back(Event::Done(finish(t)));
        }
        self.state = State::Closed;
        self.expect.clear();
        self.events.push_back(Event::Closed(why.clone()));
    }

    fn reply(&mut self, reply: Reply, out: &mut Vec<u8>) {
        let Some(expect) = self.expect.pop_front() else {
            // A reply nobody asked for; 421 is allowed at any time (RFC 5321 §3.8).
            let r = if reply.code == 421 {
                reply
            } else {
                Reply::local(451, "4.5.0 protocol error: unexpected reply")
            };
            self.lose(&r);
            return;
        };
        if reply.code == 421 && expect != Expect::Quit {
            self.lose(&reply);
            return;
        }
        match expect {
            Expect::Greeting => {
                if reply.class() == ReplyClass::Positive {
                    self.send_ehlo(out);
                } else {
                    self.quit_after(reply, out);
                }
            }
            Expect::Ehlo => {
                if reply.class() == ReplyClass::Positive {
                    self.ext = Extensions::parse(&reply);
                    self.after_ehlo(out);
                } else if self.protocol == Protocol::Smtp
                    && reply.class() == ReplyClass::Permanent
                    && self.tls != TlsPolicy::Required
                    && !self.tls_active
                {
                    command(out, &format!("HELO {}", self.helo));
                    self.expect.push_back(Expect::Helo);
                } else if self.tls == TlsPolicy::Required && !self.tls_active {
                    // HELO has no STARTTLS.
                    self.quit_after(
                        Reply::local(
                            451,
                            format!("4.7.4 TLS is required (tls = encrypt) but the next hop refused EHLO: {reply}"),
                        ),
                        out,
                    );
                } else {
                    self.quit_after(reply, out);
                }
            }
            Expect::Helo => {
                if reply.class() == ReplyClass::Positive {
                    self.ext = Extensions::default();
                    self.ready();
                } else {
                    self.quit_after(reply, out);
                }
            }
            Expect::StartTls => self.starttls_reply(reply, out),
            Expect::Mail => self.mail_reply(reply, out),
            Expect::Rcpt(i) => self.rcpt_reply(i, reply, out),
            Expect::Data => self.data_reply(reply, out),
            Expect::Bdat => self.bdat_reply(reply),
            Expect::BdatLast => self.bdat_last_reply(reply, out),
            Expect::EndOfData(which) => self.end_reply(which, &reply, out),
            Expect::Rset => {
                if reply.class() == ReplyClass::Positive {
                    self.ready();
                } else {
                    self.quit_after(reply, out);
                }
            }
            Expect::Quit => {
                self.state = State::Closed;
                self.expect.clear();
                self.events.push_back(Event::Closed(reply));
            }
        }
    }

    fn ready(&mut self) {
        self.state = State::Ready;
        self.events.push_back(Event::Ready(self.ext.clone()));
    }

    /// Sends QUIT because of `reply`; the connection ends with `Closed(reply)`.
    fn quit_after(&mut self, reply: Reply, out: &mut Vec<u8>) {
        command(out, "QUIT");
        self.state = State::Closed;
        self.expect.clear();
        self.events.push_back(Event::Closed(reply));
    }

    /// Sends QUIT (when ready); the connection then ends with [`Event::Closed`].
    pub fn quit(&mut self, out: &mut Vec<u8>) {
        if self.state == State::Ready {
            command(out, "QUIT");
            self.expect.push_back(Expect::Quit);
            self.state = State::Transaction;
        }
    }
}

fn command(out: &mut Vec<u8>, line: &str) {
    out.extend_from_slice(line.as_bytes());
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests;
