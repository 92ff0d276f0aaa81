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
//! then EHLO again with everything learnt in clear forgotten); MAIL FROM / RCPT TO / DATA sent
//! as one group when PIPELINING is offered (RFC 2920 §3.1), one by one otherwise; the body
//! dot-stuffed as it streams ([`Client::body`], [`Client::end_body`]), or, when the server
//! offers CHUNKING and PIPELINING, sent as pipelined `BDAT` chunks (RFC 3030) right behind the
//! RCPTs, without dot-stuffing, the last one `BDAT n LAST`; the reply after the end of data
//! (SMTP: one for the transaction; LMTP: one per accepted recipient, in RCPT order, after DATA's
//! dot or after BDAT LAST); RSET and QUIT; one [`RcptOutcome`] per recipient (2xx delivered, 4xx
//! deferred, 5xx failed, the reply kept). Several transactions may follow each other on one
//! connection.
//!
//! What it does not do: the TLS handshake itself and certificate checks (the driver's), BDAT
//! without PIPELINING (DATA then: every server seen offering CHUNKING offers PIPELINING too, and
//! unpipelined chunks would need a reply between chunks), AUTH, DSN parameters, and
//! 8BITMIME/SMTPUTF8 parameters on MAIL (the caller adds none).

use std::collections::VecDeque;
use std::fmt;

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

    /// Starts a transaction: MAIL FROM:<`from`> (with `SIZE=` when the server offers SIZE and
    /// `size` is known) and RCPT TO for each of `rcpts`, pipelined with DATA when the server
    /// offers PIPELINING.
    ///
    /// # Errors
    /// [`StartError`]: not ready, or no recipients.
    pub fn start(
        &mut self,
        from: &str,
        rcpts: &[String],
        size: Option<u64>,
        out: &mut Vec<u8>,
    ) -> Result<(), StartError> {
        if self.state != State::Ready {
            return Err(StartError::NotReady);
        }
        if rcpts.is_empty() {
            return Err(StartError::NoRecipients);
        }
        let mut mail = format!("MAIL FROM:<{from}>");
        if let (Some(_), Some(n)) = (self.ext.size, size) {
            mail.push_str(&format!(" SIZE={n}"));
        }
        command(out, &mail);
        self.expect.push_back(Expect::Mail);
        let mut t = Txn {
            rcpts: rcpts.to_vec(),
            outcomes: vec![None; rcpts.len()],
            bol: true,
            ..Txn::default()
        };
        if self.ext.pipelining {
            for (i, r) in rcpts.iter().enumerate() {
                command(out, &format!("RCPT TO:<{r}>"));
                self.expect.push_back(Expect::Rcpt(i));
            }
            t.next_rcpt = rcpts.len();
            t.data_sent = true;
            if self.ext.chunking {
                // RFC 3030 §4.2: BDAT chunks may follow the RCPTs at once; a chunk sent after
                // a refused MAIL or with no recipient accepted is refused and changes nothing.
                t.bdat = true;
                self.txn = Some(t);
                self.state = State::Body;
                self.events.push_back(Event::SendBody);
                return Ok(());
            }
            command(out, "DATA");
            self.expect.push_back(Expect::Data);
        }
        self.txn = Some(t);
        self.state = State::Transaction;
        Ok(())
    }

    /// Asks whether the server takes `rcpt` without sending mail: `MAIL FROM:<>`, `RCPT
    /// TO:<rcpt>`, `RSET` (pipelined when the server offers PIPELINING, else one by one).
    /// [`Event::Done`] then carries one outcome: the RCPT reply (or the MAIL reply, if MAIL was
    /// refused), `Delivered` meaning "would be accepted"; [`Event::Ready`] follows the reply to
    /// RSET, and the connection can probe again.
    ///
    /// # Errors
    /// [`StartError::NotReady`] when not ready.
    pub fn probe(&mut self, rcpt: &str, out: &mut Vec<u8>) -> Result<(), StartError> {
        if self.state != State::Ready {
            return Err(StartError::NotReady);
        }
        command(out, "MAIL FROM:<>");
        self.expect.push_back(Expect::Mail);
        let mut t = Txn {
            rcpts: vec![rcpt.to_owned()],
            outcomes: vec![None],
            probe: true,
            ..Txn::default()
        };
        if self.ext.pipelining {
            command(out, &format!("RCPT TO:<{rcpt}>"));
            self.expect.push_back(Expect::Rcpt(0));
            command(out, "RSET");
            self.expect.push_back(Expect::Rset);
            t.next_rcpt = 1;
            // Every command of the probe is out (`data_sent` means that here).
            t.data_sent = true;
        }
        self.txn = Some(t);
        self.state = State::Transaction;
        Ok(())
    }

    fn mail_reply(&mut self, reply: Reply, out: &mut Vec<u8>) {
        let Some(t) = self.txn.as_mut() else { return };
        if reply.class() != ReplyClass::Positive {
            t.mail_refused = Some(reply);
            if !t.data_sent {
                self.end_transaction(out);
            }
            return;
        }
        if !t.data_sent {
            self.send_next_rcpt(out);
        }
    }

    fn send_next_rcpt(&mut self, out: &mut Vec<u8>) {
        let Some(t) = self.txn.as_mut() else { return };
        if t.next_rcpt < t.rcpts.len() {
            command(out, &format!("RCPT TO:<{}>", t.rcpts[t.next_rcpt]));
            self.expect.push_back(Expect::Rcpt(t.next_rcpt));
            t.next_rcpt += 1;
        } else if t.probe || t.accepted.is_empty() {
            self.end_transaction(out);
        } else {
            command(out, "DATA");
            self.expect.push_back(Expect::Data);
            t.data_sent = true;
        }
    }

    fn rcpt_reply(&mut self, i: usize, reply: Reply, out: &mut Vec<u8>) {
        let Some(t) = self.txn.as_mut() else { return };
        if t.mail_refused.is_some() {
            // MAIL decides; RCPT replies after a refused MAIL (pipelined) say nothing new.
        } else if t.probe {
            t.outcomes[i] = Some(RcptOutcome {
                status: Status::of(&reply),
                reply,
            });
        } else if reply.class() == ReplyClass::Positive {
            t.accepted.push(i);
        } else {
            t.outcomes[i] = Some(RcptOutcome {
                status: Status::of(&reply),
                reply,
            });
        }
        if t.probe && t.data_sent {
            // Pipelined probe: RSET is already on its way; its reply makes us ready.
            if let Some(t) = self.txn.take() {
                self.events.push_back(Event::Done(finish(t)));
            }
        } else if !t.data_sent {
            self.send_next_rcpt(out);
        }
    }

    fn data_reply(&mut self, reply: Reply, out: &mut Vec<u8>) {
        let Some(t) = self.txn.as_mut() else { return };
        if reply.code == 354 {
            if t.mail_refused.is_some() || t.accepted.is_empty() {
                // RFC 2920 §3.1: a server should refuse DATA without a valid recipient; if
                // it did not, end the empty data at once; nothing can be delivered.
                t.empty_body = true;
                out.extend_from_slice(b".\r\n");
                self.expect.push_back(Expect::EndOfData(None));
                self.state = State::Transaction;
                return;
            }
            self.state = State::Body;
            self.events.push_back(Event::SendBody);
            return;
        }
        // DATA refused: it decides every recipient accepted at RCPT (a refused MAIL or
        // unaccepted recipients are decided by their own replies).
        if t.mail_refused.is_none() {
            for &i in &t.accepted {
                t.outcomes[i] = Some(RcptOutcome {
                    status: Status::of(&reply),
                    reply: reply.clone(),
                });
            }
        }
        self.end_transaction(out);
    }

    /// Streams body bytes (the stored message, CRLF line ends), dot-stuffed (RFC 5321
    /// §4.5.2), into `out`. Call after [`Event::SendBody`], any number of times.
    pub fn body(&mut self, mut bytes: &[u8], out: &mut Vec<u8>) {
        if self.state != State::Body {
            return;
        }
        let Some(t) = self.txn.as_mut() else { return };
        if bytes.is_empty() {
            return;
        }
        if t.bdat {
            command(out, &format!("BDAT {}", bytes.len()));
            out.extend_from_slice(bytes);
            self.expect.push_back(Expect::Bdat);
            return;
        }
        t.prev = if bytes.len() >= 2 {
            Some(bytes[bytes.len() - 2])
        } else {
            t.last
        };
        t.last = bytes.last().copied();
        out.reserve(bytes.len() + 8);
        while !bytes.is_empty() {
            if t.bol && bytes[0] == b'.' {
                out.push(b'.');
            }
            match memchr::memchr(b'\n', bytes) {
                Some(nl) => {
                    out.extend_from_slice(&bytes[..=nl]);
                    bytes = &bytes[nl + 1..];
                    t.bol = true;
                }
                None => {
                    out.extend_from_slice(bytes);
                    t.bol = false;
                    bytes = &[];
                }
            }
        }
    }

    /// Ends the body: a CRLF if it did not end with one, then `.` CRLF (with BDAT: `BDAT 0
    /// LAST`).
    pub fn end_body(&mut self, out: &mut Vec<u8>) {
        self.end_body_with(&[], out);
    }

    /// Sends `last`, the end of the body, and ends it: with DATA as [`Client::body`] then
    /// [`Client::end_body`]; with BDAT as one `BDAT n LAST` chunk (the message as it is, no
    /// CRLF added).
    pub fn end_body_with(&mut self, last: &[u8], out: &mut Vec<u8>) {
        if self.state != State::Body {
            return;
        }
        if self.txn.as_ref().is_some_and(|t| t.bdat) {
            command(out, &format!("BDAT {} LAST", last.len()));
            out.extend_from_slice(last);
            self.expect.push_back(Expect::BdatLast);
            self.state = State::Transaction;
            return;
        }
        self.body(last, out);
        let Some(t) = self.txn.as_mut() else { return };
        let ends_crlf = t.last.is_none() || (t.prev == Some(b'\r') && t.last == Some(b'\n'));
        if !ends_crlf {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        match self.protocol {
            Protocol::Smtp => self.expect.push_back(Expect::EndOfData(None)),
            Protocol::Lmtp => {
                for &i in &t.accepted {
                    self.expect.push_back(Expect::EndOfData(Some(i)));
                }
            }
        }
        self.state = State::Transaction;
    }

    fn bdat_reply(&mut self, reply: Reply) {
        let Some(t) = self.txn.as_mut() else { return };
        if reply.class() != ReplyClass::Positive && t.bdat_failed.is_none() {
            t.bdat_failed = Some(reply);
        }
    }

    fn bdat_last_reply(&mut self, reply: Reply, out: &mut Vec<u8>) {
        let Some(t) = self.txn.as_mut() else { return };
        let nothing_accepted = t.mail_refused.is_some() || t.accepted.is_empty();
        if reply.class() != ReplyClass::Positive && t.bdat_failed.is_none() && nothing_accepted {
            // The expected refusal of a transaction without a recipient: nothing to undo.
        } else if reply.class() != ReplyClass::Positive && t.bdat_failed.is_none() {
            t.bdat_failed = Some(reply.clone());
        }
        if nothing_accepted {
            t.empty_body = true;
            self.end_reply(None, &reply, out);
            return;
        }
        if let Some(failed) = t.bdat_failed.clone() {
            // A chunk was refused: the transaction failed as a whole (RFC 3030 §2), and an
            // LMTP server sends one reply for it, not one per recipient.
            for &i in &t.accepted {
                t.outcomes[i] = Some(RcptOutcome {
                    status: Status::of(&failed),
                    reply: failed.clone(),
                });
            }
            t.empty_body = true;
            self.end_reply(None, &reply, out);
            return;
        }
        match self.protocol {
            Protocol::Smtp => self.end_reply(None, &reply, out),
            Protocol::Lmtp => {
                let accepted = t.accepted.clone();
                // One reply per accepted recipient: this is the first; the others follow.
                for &i in accepted.iter().skip(1).rev() {
                    self.expect.push_front(Expect::EndOfData(Some(i)));
                }
                self.end_reply(accepted.first().copied(), &reply, out);
            }
        }
    }

    fn end_reply(&mut self, which: Option<usize>, reply: &Reply, out: &mut Vec<u8>) {
        let Some(t) = self.txn.as_mut() else { return };
        if t.empty_body {
            // Nothing was accepted: the outcomes are already decided.
        } else {
            let targets: Vec<usize> = match which {
                Some(i) => vec![i],
                None => t.accepted.clone(),
            };
            for i in targets {
                t.outcomes[i] = Some(RcptOutcome {
                    status: Status::of(reply),
                    reply: reply.clone(),
                });
            }
        }
        if !self
            .expect
            .iter()
            .any(|e| matches!(e, Expect::EndOfData(_)))
        {
            let failed_bdat = self.txn.as_ref().is_some_and(|t| t.bdat_failed.is_some());
            if failed_bdat {
                // After a refused chunk the server's state is not known: start over with RSET.
                self.end_transaction(out);
                return;
            }
            if let Some(t) = self.txn.take() {
                self.events.push_back(Event::Done(finish(t)));
            }
            self.ready();
        }
    }

    /// Ends a transaction that never reached the body (every reply to it has come): reports
    /// it and sends RSET.
    fn end_transaction(&mut self, out: &mut Vec<u8>) {
        let Some(t) = self.txn.take() else { return };
        self.events.push_back(Event::Done(finish(t)));
        command(out, "RSET");
        self.expect.push_back(Expect::Rset);
        self.state = State::Transaction;
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

fn finish(mut t: Txn) -> Vec<RcptOutcome> {
    if let Some(r) = t.mail_refused.take() {
        for o in &mut t.outcomes {
            *o = Some(RcptOutcome {
                status: Status::of(&r),
                reply: r.clone(),
            });
        }
    }
    t.outcomes
        .into_iter()
        .map(|o| {
            o.unwrap_or_else(|| RcptOutcome {
                status: Status::Deferred,
                reply: Reply::local(451, "4.3.0 no reply for this recipient"),
            })
        })
        .collect()
}

fn command(out: &mut Vec<u8>, line: &str) {
    out.extend_from_slice(line.as_bytes());
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rcpts(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_string()).collect()
    }

    /// Feeds `server` in pieces split at `splits`, collecting everything the client sent and
    /// every event; calls `on_event` so a test can react (start, body).
    fn run(
        c: &mut Client,
        server: &[u8],
        splits: &[usize],
        mut on_event: impl FnMut(&mut Client, &Event, &mut Vec<u8>),
    ) -> (Vec<u8>, Vec<Event>) {
        let mut out = Vec::new();
        let mut events = Vec::new();
        let mut at = 0;
        let mut cuts: Vec<usize> = splits.to_vec();
        cuts.push(server.len());
        // A real server answers only what was sent: hand the client one line (or the part
        // of it inside this piece) at a time and let the test react in between.
        for cut in cuts {
            for piece in server[at..cut].split_inclusive(|&b| b == b'\n') {
                c.feed(piece, &mut out);
                while let Some(e) = c.poll_event() {
                    on_event(c, &e, &mut out);
                    events.push(e);
                }
            }
            at = cut;
        }
        (out, events)
    }

    fn smtp_driver(body: &'static [u8]) -> impl FnMut(&mut Client, &Event, &mut Vec<u8>) {
        let mut started = false;
        move |c, e, out| match e {
            Event::Ready(_) if !started => {
                started = true;
                c.start("s@a.test", &rcpts(&["x@b.test", "y@b.test"]), Some(5), out)
                    .unwrap();
            }
            Event::Ready(_) => c.quit(out),
            Event::SendBody => {
                c.body(body, out);
                c.end_body(out);
            }
            _ => {}
        }
    }

    const PIPELINED: &[u8] = b"220 hop.test ESMTP\r\n\
        250-hop.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 STARTTLS\r\n\
        250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n450 4.2.0 <y@b.test>: mailbox busy\r\n354 go\r\n\
        250 2.0.0 Ok: queued as X\r\n221 2.0.0 Bye\r\n";

    /// Probes `a@b.test` then `c@b.test` on one connection, then quits.
    fn probe_driver() -> impl FnMut(&mut Client, &Event, &mut Vec<u8>) {
        let mut probes = ["a@b.test", "c@b.test"].into_iter();
        move |c, e, out| {
            if let Event::Ready(_) = e {
                match probes.next() {
                    Some(r) => c.probe(r, out).unwrap(),
                    None => c.quit(out),
                }
            }
        }
    }

    fn done_codes(events: &[Event]) -> Vec<(u16, Status)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Done(o) => Some((o[0].reply.code, o[0].status)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn probes_pipelined_and_one_by_one_reuse_the_connection() {
        let pipelined = b"220 x\r\n250-x\r\n250 PIPELINING\r\n\
            250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 Ok\r\n\
            250 2.1.0 Ok\r\n550 5.1.1 <c@b.test>: User unknown\r\n250 2.0.0 Ok\r\n221 bye\r\n";
        let lmtp = b"220 x\r\n250 x\r\n\
            250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 Ok\r\n\
            250 2.1.0 Ok\r\n451 4.3.0 try later\r\n250 2.0.0 Ok\r\n221 bye\r\n";
        let expect = "MAIL FROM:<>\r\nRCPT TO:<a@b.test>\r\nRSET\r\nMAIL FROM:<>\r\nRCPT TO:<c@b.test>\r\nRSET\r\nQUIT\r\n";
        for split in 0..=pipelined.len() {
            let mut c = Client::new(Protocol::Smtp, "mx");
            let (out, events) = run(&mut c, pipelined, &[split], probe_driver());
            assert_eq!(
                String::from_utf8_lossy(&out),
                format!("EHLO mx\r\n{expect}")
            );
            assert_eq!(
                done_codes(&events),
                [(250, Status::Delivered), (550, Status::Failed)]
            );
        }
        let mut c = Client::new(Protocol::Lmtp, "mx");
        let (out, events) = run(&mut c, lmtp, &[], probe_driver());
        assert_eq!(
            String::from_utf8_lossy(&out),
            format!("LHLO mx\r\n{expect}")
        );
        assert_eq!(
            done_codes(&events),
            [(250, Status::Delivered), (451, Status::Deferred)]
        );
        assert!(c.is_closed());
    }

    #[test]
    fn probe_with_refused_mail_reports_the_mail_reply() {
        let server = b"220 x\r\n250-x\r\n250 PIPELINING\r\n550 5.7.1 no null sender\r\n503 5.5.1 need MAIL\r\n250 Ok\r\n";
        let mut c = Client::new(Protocol::Smtp, "mx");
        let mut once = true;
        let (_, events) = run(&mut c, server, &[], |c, e, out| {
            if matches!(e, Event::Ready(_)) && std::mem::take(&mut once) {
                c.probe("a@b.test", out).unwrap();
            }
        });
        assert_eq!(done_codes(&events), [(550, Status::Failed)]);
        assert!(c.is_ready());
        assert_eq!(c.probe("x@y", &mut Vec::new()), Ok(()));
        assert_eq!(c.probe("x@y", &mut Vec::new()), Err(StartError::NotReady));
    }

    #[test]
    fn pipelined_transaction_at_every_split() {
        let expect_out = b"EHLO mx.test\r\nMAIL FROM:<s@a.test> SIZE=5\r\nRCPT TO:<x@b.test>\r\nRCPT TO:<y@b.test>\r\nDATA\r\n..hi\r\nyo\r\n.\r\nQUIT\r\n";
        for split in 0..=PIPELINED.len() {
            let mut c = Client::new(Protocol::Smtp, "mx.test");
            let (out, events) = run(&mut c, PIPELINED, &[split], smtp_driver(b".hi\r\nyo"));
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(expect_out),
                "split {split}"
            );
            let Event::Ready(ext) = &events[0] else {
                panic!("{events:?}")
            };
            assert_eq!(
                *ext,
                Extensions {
                    pipelining: true,
                    size: Some(1000),
                    chunking: false,
                    starttls: true,
                    eightbitmime: true,
                    smtputf8: true
                }
            );
            let done: Vec<_> = events
                .iter()
                .filter_map(|e| match e {
                    Event::Done(o) => Some(o.clone()),
                    _ => None,
                })
                .collect();
            assert_eq!(done.len(), 1);
            assert_eq!(done[0][0].status, Status::Delivered);
            assert_eq!(done[0][0].reply.to_string(), "250 2.0.0 Ok: queued as X");
            assert_eq!(done[0][1].status, Status::Deferred);
            assert_eq!(done[0][1].reply.dsn(), "4.2.0");
            assert!(matches!(events.last(), Some(Event::Closed(r)) if r.code == 221));
            assert!(c.is_closed());
        }
    }

    #[test]
    fn without_pipelining_commands_go_one_by_one_and_refused_rcpt_is_failed() {
        let server = b"220 hi\r\n250 hop\r\n250 ok\r\n550 5.1.1 no such user\r\n250 ok\r\n354 go\r\n250 ok\r\n";
        let mut c = Client::new(Protocol::Smtp, "mx.test");
        let mut out = Vec::new();
        let mut log = Vec::new();
        let mut started = false;
        // Feed one reply line at a time and record what the client sent after each.
        for line in server.split_inclusive(|&b| b == b'\n') {
            c.feed(line, &mut out);
            log.push(String::from_utf8_lossy(&out).into_owned());
            out.clear();
            while let Some(e) = c.poll_event() {
                match e {
                    Event::Ready(_) if !started => {
                        started = true;
                        c.start("", &rcpts(&["x@b", "y@b"]), Some(3), &mut out)
                            .unwrap();
                    }
                    Event::SendBody => {
                        c.body(b"abc\r\n", &mut out);
                        c.end_body(&mut out);
                    }
                    Event::Done(o) => {
                        assert_eq!(o[0].status, Status::Failed);
                        assert_eq!(o[0].reply.dsn(), "5.1.1");
                        assert_eq!(o[1].status, Status::Delivered);
                    }
                    _ => {}
                }
            }
            if !out.is_empty() {
                log.push(String::from_utf8_lossy(&out).into_owned());
                out.clear();
            }
        }
        let all: String = log.concat();
        // No SIZE= without the SIZE keyword; RCPT waits for MAIL's reply.
        assert_eq!(
            all,
            "EHLO mx.test\r\nMAIL FROM:<>\r\nRCPT TO:<x@b>\r\nRCPT TO:<y@b>\r\nDATA\r\nabc\r\n.\r\n"
        );
        assert!(c.is_ready());
    }

    #[test]
    fn lmtp_has_one_reply_per_accepted_recipient() {
        let server = b"220 lmtp\r\n250-lmtp\r\n250 PIPELINING\r\n250 ok\r\n250 ok\r\n550 5.1.1 unknown\r\n250 ok\r\n354 go\r\n250 2.0.0 <a> saved\r\n452 4.2.2 over quota\r\n";
        for split in 0..=server.len() {
            let mut c = Client::new(Protocol::Lmtp, "mx");
            let mut done = None;
            let (out, _) = run(&mut c, server, &[split], |c, e, out| match e {
                Event::Ready(_) if done.is_none() => {
                    c.start("s@x", &rcpts(&["a", "b", "c"]), None, out).unwrap();
                    done = Some(Vec::new());
                }
                Event::SendBody => {
                    c.body(b"m\r\n", out);
                    c.end_body(out);
                }
                Event::Done(o) => done = Some(o.clone()),
                _ => {}
            });
            assert!(String::from_utf8_lossy(&out).starts_with("LHLO mx\r\n"));
            let o = done.unwrap();
            assert_eq!(
                o.iter().map(|o| o.status).collect::<Vec<_>>(),
                [Status::Delivered, Status::Failed, Status::Deferred],
                "split {split}"
            );
            assert_eq!(o[2].reply.to_string(), "452 4.2.2 over quota");
        }
    }

    #[test]
    fn refused_mail_decides_every_recipient_and_rset_follows() {
        let server = b"220 x\r\n250-x\r\n250 PIPELINING\r\n451 4.3.0 try later\r\n503 5.5.1 no\r\n554 5.5.1 no valid recipients\r\n250 reset\r\n";
        let mut c = Client::new(Protocol::Smtp, "mx");
        let mut outcomes = None;
        let (out, events) = run(&mut c, server, &[], |c, e, out| match e {
            Event::Ready(_) if outcomes.is_none() => {
                c.start("s@x", &rcpts(&["a@y"]), None, out).unwrap();
                outcomes = Some(Vec::new());
            }
            Event::Done(o) => outcomes = Some(o.clone()),
            _ => {}
        });
        assert!(String::from_utf8_lossy(&out).ends_with("DATA\r\nRSET\r\n"));
        let o = outcomes.unwrap();
        assert_eq!(o[0].status, Status::Deferred);
        assert_eq!(o[0].reply.code, 451);
        assert!(matches!(events.last(), Some(Event::Ready(_))));
    }

    #[test]
    fn connection_lost_defers_the_undecided_and_closes() {
        let server = b"220 x\r\n250 x\r\n250 ok\r\n550 5.1.1 no\r\n250 ok\r\n354 go\r\n";
        let mut c = Client::new(Protocol::Smtp, "mx");
        let (_, _) = run(&mut c, server, &[], |c, e, out| match e {
            Event::Ready(_) => c.start("s@x", &rcpts(&["a@y", "b@y"]), None, out).unwrap(),
            Event::SendBody => c.body(b"partial", out),
            _ => {}
        });
        c.lose(&Reply::local(451, "4.4.2 lost connection"));
        let Some(Event::Done(o)) = c.poll_event() else {
            panic!()
        };
        assert_eq!(o[0].status, Status::Failed);
        assert_eq!(o[1].status, Status::Deferred);
        assert_eq!(o[1].reply.to_string(), "451 4.4.2 lost connection");
        assert!(matches!(c.poll_event(), Some(Event::Closed(_))));
        assert!(c.is_closed());
    }

    #[test]
    fn greeting_refused_421_and_garbage_close() {
        for (server, code) in [
            (&b"554 5.7.1 go away\r\n"[..], 554),
            (b"220 x\r\n421 4.3.2 shutting down\r\n", 421),
            (b"220 x\r\nhello there\r\n", 451),
        ] {
            let mut c = Client::new(Protocol::Smtp, "mx");
            let (_, events) = run(&mut c, server, &[], |_, _, _| {});
            assert!(
                matches!(events.last(), Some(Event::Closed(r)) if r.code == code),
                "{events:?}"
            );
        }
    }

    #[test]
    fn ehlo_refused_falls_back_to_helo() {
        let mut c = Client::new(Protocol::Smtp, "mx");
        let (out, events) = run(
            &mut c,
            b"220 x\r\n502 no ehlo\r\n250 hi\r\n",
            &[],
            |_, _, _| {},
        );
        assert_eq!(out, b"EHLO mx\r\nHELO mx\r\n");
        assert_eq!(events, [Event::Ready(Extensions::default())]);
    }

    #[test]
    fn dot_stuffing_across_chunks_and_final_crlf() {
        let body: &[u8] = b".a\r\n.\r\nb\r\n..c\r\nend";
        let want: &[u8] = b"..a\r\n..\r\nb\r\n...c\r\nend\r\n.\r\n";
        for split in 0..=body.len() {
            let mut c = Client::new(Protocol::Smtp, "mx");
            let mut out = Vec::new();
            c.feed(b"220 x\r\n250 x\r\n", &mut out);
            c.start("s", &rcpts(&["r"]), None, &mut out).unwrap();
            c.feed(b"250 ok\r\n250 ok\r\n354 go\r\n", &mut out);
            out.clear();
            c.body(&body[..split], &mut out);
            c.body(&body[split..], &mut out);
            c.end_body(&mut out);
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(want),
                "split {split}"
            );
        }
    }

    const STARTTLS_HOP: &[u8] =
        b"220 hop.test ESMTP\r\n250-hop.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n\
        220 2.0.0 go ahead\r\n250-hop.test\r\n250-PIPELINING\r\n250 SIZE 100\r\n\
        250 ok\r\n250 ok\r\n354 go\r\n250 2.0.0 queued\r\n";

    #[test]
    fn starttls_then_ehlo_again_forgetting_the_clear_text_extensions_at_every_split() {
        for split in 0..=STARTTLS_HOP.len() {
            let mut c = Client::new(Protocol::Smtp, "mx").with_tls(TlsPolicy::Required);
            let mut handshakes = 0;
            let mut started = false;
            let (out, events) = run(&mut c, STARTTLS_HOP, &[split], |c, e, out| match e {
                Event::StartTls => {
                    handshakes += 1;
                    c.tls_established(out);
                }
                Event::Ready(_) if !started => {
                    started = true;
                    c.start("s@x", &rcpts(&["a@y"]), Some(3), out).unwrap();
                }
                Event::SendBody => c.end_body_with(b"m\r\n", out),
                _ => {}
            });
            assert_eq!(handshakes, 1);
            assert_eq!(
                String::from_utf8_lossy(&out),
                "EHLO mx\r\nSTARTTLS\r\nEHLO mx\r\nMAIL FROM:<s@x> SIZE=3\r\nRCPT TO:<a@y>\r\nDATA\r\nm\r\n.\r\n",
                "split {split}"
            );
            let ready: Vec<_> = events
                .iter()
                .take_while(|e| !matches!(e, Event::Done(_)))
                .filter_map(|e| match e {
                    Event::Ready(x) => Some(x.clone()),
                    _ => None,
                })
                .collect();
            // One Ready, after TLS, with what the server said over TLS only.
            assert_eq!(ready.len(), 1);
            assert!(!ready[0].starttls && ready[0].size == Some(100));
            assert!(c.is_tls());
            assert!(events
                .iter()
                .any(|e| matches!(e, Event::Done(o) if o[0].status == Status::Delivered)));
        }
    }

    #[test]
    fn bytes_after_the_220_to_starttls_are_an_injection() {
        for tail in [&b"250 injected\r\n"[..], b"25", b"\r\n"] {
            let mut c = Client::new(Protocol::Smtp, "mx").with_tls(TlsPolicy::IfOffered);
            let mut out = Vec::new();
            c.feed(b"220 x\r\n250-x\r\n250 STARTTLS\r\n", &mut out);
            assert_eq!(out, b"EHLO mx\r\nSTARTTLS\r\n");
            let mut server = b"220 go ahead\r\n".to_vec();
            server.extend_from_slice(tail);
            c.feed(&server, &mut out);
            let events: Vec<_> = std::iter::from_fn(|| c.poll_event()).collect();
            assert!(
                matches!(&events[..], [Event::Closed(r)] if r.code == 451 && r.to_string().contains("after the 220")),
                "{events:?}"
            );
            assert!(c.is_closed() && !c.is_tls());
        }
        // Clear text fed between the 220 and the handshake is refused too.
        let mut c = Client::new(Protocol::Smtp, "mx").with_tls(TlsPolicy::IfOffered);
        let mut out = Vec::new();
        c.feed(b"220 x\r\n250-x\r\n250 STARTTLS\r\n220 go\r\n", &mut out);
        assert_eq!(c.poll_event(), Some(Event::StartTls));
        c.feed(b"250 late\r\n", &mut out);
        assert!(matches!(c.poll_event(), Some(Event::Closed(r)) if r.code == 451));
    }

    #[test]
    fn required_tls_without_starttls_quits_with_4_7_4() {
        for server in [
            &b"220 x\r\n250-x\r\n250 PIPELINING\r\n"[..],
            b"220 x\r\n250-x\r\n250 STARTTLS\r\n454 4.7.0 TLS not available\r\n",
            b"220 x\r\n502 5.5.1 no EHLO\r\n",
        ] {
            let mut c = Client::new(Protocol::Smtp, "mx").with_tls(TlsPolicy::Required);
            let (out, events) = run(&mut c, server, &[], |_, _, _| {});
            assert!(String::from_utf8_lossy(&out).ends_with("QUIT\r\n"));
            assert!(!String::from_utf8_lossy(&out).contains("HELO"));
            assert!(
                matches!(events.last(), Some(Event::Closed(r)) if r.code == 451 && r.dsn() == "4.7.4"),
                "{events:?}"
            );
        }
        // Opportunistic: a refusal or no offer leaves the session in clear, ready.
        for server in [
            &b"220 x\r\n250-x\r\n250 PIPELINING\r\n"[..],
            b"220 x\r\n250-x\r\n250 STARTTLS\r\n454 4.7.0 TLS not available\r\n",
        ] {
            let mut c = Client::new(Protocol::Smtp, "mx").with_tls(TlsPolicy::IfOffered);
            let (_, events) = run(&mut c, server, &[], |_, _, _| {});
            assert!(matches!(events.last(), Some(Event::Ready(_))), "{events:?}");
            assert!(!c.is_tls());
        }
        // Never: STARTTLS offered but not sent.
        let mut c = Client::new(Protocol::Smtp, "mx");
        let (out, _) = run(
            &mut c,
            b"220 x\r\n250-x\r\n250 STARTTLS\r\n",
            &[],
            |_, _, _| {},
        );
        assert_eq!(out, b"EHLO mx\r\n");
    }

    const CHUNKING: &[u8] = b"220 hop\r\n250-hop\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 SIZE\r\n\
        250 2.1.0 ok\r\n250 2.1.5 ok\r\n450 4.2.0 <y@b.test>: busy\r\n250 2.0.0 4 octets\r\n\
        250 2.0.0 queued as Y\r\n221 bye\r\n";

    #[test]
    fn bdat_pipelined_without_dot_stuffing_at_every_split() {
        for split in 0..=CHUNKING.len() {
            let mut c = Client::new(Protocol::Smtp, "mx");
            let mut started = false;
            let (out, events) = run(&mut c, CHUNKING, &[split], |c, e, out| match e {
                Event::Ready(_) if !started => {
                    started = true;
                    c.start("s@a", &rcpts(&["x@b.test", "y@b.test"]), Some(7), out)
                        .unwrap();
                }
                Event::Ready(_) => c.quit(out),
                Event::SendBody => {
                    c.body(b".hi\n", out);
                    c.end_body_with(b".\r\n", out);
                }
                _ => {}
            });
            assert_eq!(
                String::from_utf8_lossy(&out),
                "EHLO mx\r\nMAIL FROM:<s@a> SIZE=7\r\nRCPT TO:<x@b.test>\r\nRCPT TO:<y@b.test>\r\nBDAT 4\r\n.hi\nBDAT 3 LAST\r\n.\r\nQUIT\r\n",
                "split {split}"
            );
            let Some(Event::Done(o)) = events.iter().find(|e| matches!(e, Event::Done(_))) else {
                panic!("{events:?}")
            };
            assert_eq!(o[0].status, Status::Delivered);
            assert_eq!(o[0].reply.to_string(), "250 2.0.0 queued as Y");
            assert_eq!(o[1].status, Status::Deferred);
            assert!(matches!(events.last(), Some(Event::Closed(r)) if r.code == 221));
        }
    }

    #[test]
    fn lmtp_bdat_last_has_one_reply_per_accepted_recipient() {
        let server = b"220 lmtp\r\n250-lmtp\r\n250-PIPELINING\r\n250 CHUNKING\r\n250 ok\r\n250 ok\r\n550 5.1.1 unknown\r\n250 ok\r\n250 2.0.0 <a> saved\r\n452 4.2.2 over quota\r\n250 2.0.0 reset\r\n";
        for split in 0..=server.len() {
            let mut c = Client::new(Protocol::Lmtp, "mx");
            let mut done = None;
            let (out, events) = run(&mut c, server, &[split], |c, e, out| match e {
                Event::Ready(_) if done.is_none() => {
                    c.start("s@x", &rcpts(&["a", "b", "c"]), None, out).unwrap();
                    done = Some(Vec::new());
                }
                Event::SendBody => c.end_body_with(b"m\r\n", out),
                Event::Done(o) => done = Some(o.clone()),
                _ => {}
            });
            assert_eq!(
                String::from_utf8_lossy(&out),
                "LHLO mx\r\nMAIL FROM:<s@x>\r\nRCPT TO:<a>\r\nRCPT TO:<b>\r\nRCPT TO:<c>\r\nBDAT 3 LAST\r\nm\r\n"
            );
            let o = done.unwrap();
            assert_eq!(
                o.iter().map(|o| o.status).collect::<Vec<_>>(),
                [Status::Delivered, Status::Failed, Status::Deferred],
                "split {split}"
            );
            assert_eq!(o[2].reply.to_string(), "452 4.2.2 over quota");
            // The stray 250 after the last expected reply is a protocol error: it proves the
            // client expected exactly two replies after BDAT LAST.
            assert!(matches!(events.last(), Some(Event::Closed(r)) if r.code == 451));
        }
    }

    #[test]
    fn refused_chunk_decides_the_transaction_and_rset_follows() {
        let server = b"220 x\r\n250-x\r\n250-PIPELINING\r\n250 CHUNKING\r\n250 ok\r\n250 ok\r\n552 5.3.4 too big\r\n552 5.3.4 too big\r\n250 reset\r\n";
        let mut c = Client::new(Protocol::Smtp, "mx");
        let mut outcomes = None;
        let (out, events) = run(&mut c, server, &[], |c, e, out| match e {
            Event::Ready(_) if outcomes.is_none() => {
                c.start("s@x", &rcpts(&["a@y"]), None, out).unwrap();
                outcomes = Some(Vec::new());
            }
            Event::SendBody => {
                c.body(b"abc", out);
                c.end_body_with(b"def", out);
            }
            Event::Done(o) => outcomes = Some(o.clone()),
            _ => {}
        });
        assert!(String::from_utf8_lossy(&out).ends_with("BDAT 3 LAST\r\ndefRSET\r\n"));
        let o = outcomes.unwrap();
        assert_eq!(o[0].status, Status::Failed);
        assert_eq!(o[0].reply.dsn(), "5.3.4");
        assert!(matches!(events.last(), Some(Event::Ready(_))));
        // Every recipient refused: BDAT LAST's refusal changes nothing, no RSET needed.
        let server = b"220 x\r\n250-x\r\n250-PIPELINING\r\n250 CHUNKING\r\n250 ok\r\n550 5.1.1 no\r\n554 5.5.1 no valid recipients\r\n";
        let mut c = Client::new(Protocol::Smtp, "mx");
        let mut outcomes = None;
        let (out, events) = run(&mut c, server, &[], |c, e, out| match e {
            Event::Ready(_) if outcomes.is_none() => {
                c.start("s@x", &rcpts(&["a@y"]), None, out).unwrap();
                outcomes = Some(Vec::new());
            }
            Event::SendBody => c.end_body(out),
            Event::Done(o) => outcomes = Some(o.clone()),
            _ => {}
        });
        assert!(String::from_utf8_lossy(&out).ends_with("BDAT 0 LAST\r\n"));
        assert_eq!(outcomes.unwrap()[0].reply.dsn(), "5.1.1");
        assert!(matches!(events.last(), Some(Event::Ready(_))));
    }

    #[test]
    fn chunking_without_pipelining_uses_data() {
        let server = b"220 x\r\n250-x\r\n250 CHUNKING\r\n250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n";
        let mut c = Client::new(Protocol::Smtp, "mx");
        let mut started = false;
        let (out, _) = run(&mut c, server, &[], |c, e, out| match e {
            Event::Ready(_) if !started => {
                started = true;
                c.start("s@x", &rcpts(&["a@y"]), None, out).unwrap();
            }
            Event::SendBody => c.end_body_with(b".x\r\n", out),
            _ => {}
        });
        assert!(String::from_utf8_lossy(&out).ends_with("DATA\r\n..x\r\n.\r\n"));
    }

    #[test]
    fn reply_helpers() {
        let r = Reply {
            code: 550,
            lines: vec!["5.7.1 denied".into(), "more".into()],
        };
        assert_eq!(r.class(), ReplyClass::Permanent);
        assert_eq!(r.enhanced(), Some("5.7.1"));
        assert_eq!(r.to_string(), "550 5.7.1 denied more");
        assert_eq!(Reply::local(421, "busy").dsn(), "4.0.0");
        assert_eq!(Status::of(&Reply::local(250, "")), Status::Delivered);
    }
}
