//! The SMTP protocol core (RFC 5321 + PIPELINING, SIZE, 8BITMIME, ENHANCEDSTATUSCODES, SMTPUTF8,
//! CHUNKING).
//!
//! Sans-IO: the driver hands it bytes and `now`; it returns how many bytes it consumed, appends
//! replies to an output buffer and hands body segments and end-of-message events to a
//! [`BodySink`]. It never touches sockets, files, clocks, runtimes or threads, so every
//! transcript and every byte split can be tested without a server.
//!
//! It does **not** make messages durable (the driver does, then calls
//! [`Session::handle_commit`]), does not time anything itself (it says when via
//! [`Session::next_deadline`]), does not offer AUTH or BINARYMIME, and does not relay:
//! recipients are accepted only for [`SessionConfig::local_domains`]. STARTTLS (RFC 3207) is
//! decided here (when it is offered and allowed, the `220 2.0.0`, the state reset after the
//! handshake, see [`Session::tls_started`]); the handshake and the encryption are the driver's.
//!
//! # Layout
//! - [`session`](Session): the state machine and the driver contract.
//! - `command`: one command line → a `Command` or a `CommandError` (which maps to a reply).
//! - `envelope`: reverse-/forward-path and parameter syntax, the relay check.
//! - `reply`: reply texts with enhanced status codes (RFC 3463) and their encoding.
//! - `bare_lf`: the opt-in `normalize` policy for bare LF ([`BareLf`]).
//! - [`client`]: the outbound side: a sans-IO SMTP/LMTP client for delivery to a next hop.
//! - `bdat`: CHUNKING (RFC 3030): BDAT arguments, chunk accounting, the line-ending check of
//!   chunk content.
//! - `hops`: the `Received:` count of a message's header (`--max-hops`, 554 5.4.6).
//! - `recipients`: the recipient table ([`RecipientTable`]: parsing, allocation-free lookup).
//! - `policy`: what the driver hands a session per connection ([`Policy`]: the table snapshot,
//!   the [`RateCheck`] for MAIL and RCPT), set with [`Session::set_policy`].
//!
//! # Flow
//!
//! ```text
//!   new() + greeting() ──► 220
//!          │
//!          ▼
//!   ┌─► Phase::Command ◄──────────────────────────────────────────────┐
//!   │      │ handle_input: every complete line, in order (RFC 2920)   │
//!   │      │   EHLO/HELO/MAIL/RCPT/RSET/NOOP/VRFY/HELP → reply        │
//!   │      │   over-long line → discarded as it arrives, 500 5.5.6    │
//!   │      │   QUIT → 221, Err(Closed::Quit)                          │
//!   │      │   HTTP request line → 221 2.7.0, Err(Closed::NotSmtp)    │
//!   │      │   N errors → 421 4.7.0, Err(Closed::TooManyErrors)       │
//!   │      │ STARTTLS → 220, Phase::StartTls: nothing more consumed;  │
//!   │      │   the driver drops what it holds, runs the handshake,    │
//!   │      │   then tls_started() → back here, HELO/EHLO forgotten    │
//!   │      │ DATA (MAIL + RCPT given) → 354, sink.begin(envelope)     │
//!   │      ▼                                                          │
//!   │   Phase::Data: bytes → DataScanner → sink.segment(unstuffed)    │
//!   │      │ <CRLF>.<CRLF>                                            │
//!   │      ├── bare CR/LF seen → sink.end(Err), 550 5.6.0 ────────────┤
//!   │      ├── over the size limit → sink.end(Err), 552 5.3.4 ────────┘
//!   │      └── fine → sink.end(Ok); handle_input returns here
//!   │   BDAT n [LAST] (Phase::Data while its n octets come): octets → sink.segment as sent;
//!   │      non-LAST → 250 2.0.0 <n> octets received; LAST → sink.end(Ok) as above
//!   │      ▼
//!   │   (RCPT verified with the next hop: Phase::AwaitingVerdict, nothing consumed until
//!   │    handle_verdict → 250 / 550 5.1.1 / 450 4.1.1; then handle_input again)
//!   │   Phase::AwaitingCommit (no 250 yet: the driver makes it durable)
//!   │      │ handle_commit(Ok(id)) → 250 2.0.0 Ok queued as <id>
//!   │      │ handle_commit(Err(_)) → 452 4.3.1 / 451 4.3.0
//!   └──────┘ then the driver calls handle_input with the bytes it still holds
//!
//!   any phase: handle_timeout → 421 4.4.2, handle_shutdown → 421 4.3.2 ──► Phase::Closed
//! ```
#![forbid(unsafe_code)]

mod bare_lf;
mod bdat;
pub mod client;
mod command;
mod envelope;
mod hops;
mod policy;
mod recipients;
mod reply;
mod session;

pub use policy::{Policy, Rate, RateCheck, Verdict, VerifyCheck};
pub use recipients::{RecipientTable, TableError, MAX_RECIPIENT_TABLE_BYTES};
pub use session::Session;

use std::time::Duration;

/// Longest command line, CRLF included (RFC 5321 §4.5.3.1.4). A longer line gets 500 5.5.6 and
/// is discarded as it arrives, never buffered.
pub const MAX_COMMAND_LINE: usize = 512;
/// Longest local part of a mailbox (RFC 5321 §4.5.3.1.1).
pub const MAX_LOCAL_PART: usize = 64;
/// Longest domain (RFC 5321 §4.5.3.1.2).
pub const MAX_DOMAIN: usize = 255;
/// Longest reverse- or forward-path, angle brackets included (RFC 5321 §4.5.3.1.3).
pub const MAX_PATH: usize = 256;
/// Default recipients per transaction: the minimum RFC 5321 §4.5.3.1.8 requires servers to take.
pub const DEFAULT_MAX_RECIPIENTS: usize = 100;
/// Default largest message body, in bytes after dot-unstuffing: 35 MiB, a common MX limit.
/// `ringmx serve --max-message-size` defaults to this.
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 35 * 1024 * 1024;
/// Default number of error replies since the last accepted message before 421 4.7.0 and close:
/// Postfix's `smtpd_hard_error_limit`. `ringmx serve --max-errors` defaults to this.
pub const DEFAULT_MAX_ERRORS: u32 = 20;
/// Default number of NOOP, RSET, VRFY and HELP commands a client may send between two accepted
/// messages before each further one also counts as an error (Postfix's
/// `smtpd_junk_command_limit`), so a client cannot hold a connection forever with keep-alives.
pub const DEFAULT_MAX_JUNK_COMMANDS: u32 = 100;
/// Default time a client gets for the whole TLS handshake after `220 2.0.0 Ready to start TLS`.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default [`SessionConfig::max_hops`]: Postfix's `hopcount_limit`.
pub const DEFAULT_MAX_HOPS: u32 = 50;
/// Default time a client gets for one command line or between two reads of a body: the five
/// minutes of RFC 5321 §4.5.3.2.7 (server timeout while waiting for the next command).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Everything the session needs to know about the server's policy. Built once, shared.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Our hostname, for the 220 greeting and the EHLO reply.
    pub hostname: String,
    /// Domains we accept mail for (compared case-insensitively, exact match).
    pub local_domains: Vec<String>,
    /// Largest message body we accept, in bytes after dot-unstuffing (advertised as `SIZE n`).
    /// Keep it above 0: `SIZE 0` means "no fixed limit" to clients (RFC 1870 §4).
    pub max_message_size: u64,
    /// Recipients per transaction; more get 452 4.5.3.
    pub max_recipients: usize,
    /// Error replies since the last accepted message before 421 4.7.0 and close: the Nth
    /// error reply is followed by the 421. 0 turns the cap off.
    pub max_errors: u32,
    /// NOOP/RSET/VRFY/HELP commands allowed between two accepted messages before each further
    /// one counts as an error (its reply is unchanged). 0 turns the limit off.
    pub max_junk_commands: u32,
    /// `Received:` header fields a message may carry; one with more is refused at its end
    /// with `554 5.4.6 Too many hops` (a mail loop). 0 turns the check off.
    pub max_hops: u32,
    /// How long a client may take for one command line, or stay silent in DATA.
    pub idle_timeout: Duration,
    /// How long a whole message body may take, from the 354 to the terminator, however
    /// steadily the bytes come: without it a client dripping one byte per `idle_timeout` holds
    /// its connection forever. `None` (the default here) sets no such limit; `ringmx serve`
    /// sets one (`--data-timeout`).
    pub data_timeout: Option<Duration>,
    /// What to do with a bare LF (an LF without its CR) in a command line or a body.
    pub bare_lf: BareLf,
    /// The driver can do TLS (certificates are configured): STARTTLS is offered in the EHLO
    /// reply until TLS is active, and accepted. Without it STARTTLS gets 502 5.5.1.
    pub starttls: bool,
    /// How long the driver gives the TLS handshake after the 220 of STARTTLS
    /// ([`Session::next_deadline`] in [`Phase::StartTls`]).
    pub tls_handshake_timeout: Duration,
}

/// The policy for bare LF (RFC 5321 §2.3.8: lines end in CRLF only). Bare CR is refused under
/// both; only `<CRLF>.<CRLF>` ever ends a message under both, so neither lets a smuggled
/// message through (CVE-2023-51764 and relatives).
///
/// The variants' docs are also the `--bare-lf` help; [`BareLf::name`] is the one spelling used
/// on the command line, in the config file and in logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum BareLf {
    /// Refuse: 500 5.5.2 for a command line, 550 5.6.0 for a body (after its terminator).
    #[default]
    Reject,
    /// Accept LF-terminated command lines, and store a body's bare LFs as CRLF (a `.` right
    /// after one is dropped as dot-stuffing), as Postfix's `smtpd_forbid_bare_newline =
    /// normalize` does: for old scripts that send `\n` line endings (`curl -T` without
    /// `--crlf`, Python's `smtplib.sendmail` given bytes).
    Normalize,
}

impl BareLf {
    /// Every policy.
    pub const ALL: [Self; 2] = [Self::Reject, Self::Normalize];

    /// `reject` / `normalize`: the flag value, the config-file value and the log spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::Reject => "reject",
            Self::Normalize => "normalize",
        }
    }

    /// The policy called `name` (exactly as [`BareLf::name`] spells it).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}

impl SessionConfig {
    /// A configuration with the default limits ([`DEFAULT_MAX_MESSAGE_SIZE`],
    /// [`DEFAULT_MAX_RECIPIENTS`], [`DEFAULT_MAX_ERRORS`], [`DEFAULT_MAX_JUNK_COMMANDS`],
    /// [`DEFAULT_IDLE_TIMEOUT`]) and no
    /// whole-message deadline; bare LF is refused.
    pub fn new(hostname: impl Into<String>, local_domains: Vec<String>) -> Self {
        Self {
            hostname: hostname.into(),
            local_domains,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_recipients: DEFAULT_MAX_RECIPIENTS,
            max_errors: DEFAULT_MAX_ERRORS,
            max_junk_commands: DEFAULT_MAX_JUNK_COMMANDS,
            max_hops: DEFAULT_MAX_HOPS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            data_timeout: None,
            bare_lf: BareLf::Reject,
            starttls: false,
            tls_handshake_timeout: DEFAULT_TLS_HANDSHAKE_TIMEOUT,
        }
    }

    /// Whether `domain` is one of ours: ASCII case-insensitive, exact (no suffix, subdomain or
    /// trailing-dot matching).
    pub fn is_local_domain(&self, domain: &str) -> bool {
        self.local_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
    }
}

/// Why a session ended. After an `Err(Closed)` the driver writes what is in `out`, then closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The client sent QUIT (221 written).
    Quit,
    /// Too many errors (421 4.7.0 written).
    TooManyErrors,
    /// The client was too slow (421 4.4.2 written).
    Timeout,
    /// The client spoke another protocol: an HTTP request line such as `GET / HTTP/1.1`
    /// (221 2.7.0 written, as Postfix does; a browser or proxy must not get to chat with us).
    NotSmtp,
    /// The server is shutting down (421 4.3.2 written).
    Shutdown,
    /// A BDAT line whose size could not be parsed: the octets after it can no longer be told
    /// from commands (501 5.5.4 written).
    Unframeable,
}

/// What the session is waiting for, so the driver can pick a timeout (RFC 5321 §4.5.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for a command line.
    Command,
    /// Receiving a message body.
    Data,
    /// A message has ended; waiting for the driver's [`Session::handle_commit`].
    AwaitingCommit,
    /// A RCPT waits for the driver's [`Session::handle_verdict`] (recipient verification,
    /// [`Policy::verify`]); the address is [`Session::awaiting_verdict`]. Nothing is consumed
    /// until then, so pipelined commands behind it are answered after it, in order.
    AwaitingVerdict,
    /// `220 2.0.0 Ready to start TLS` was written: the driver must discard every byte it holds
    /// (they arrived before the handshake: CVE-2011-0411), run the TLS handshake, then call
    /// [`Session::tls_started`]. Nothing is consumed until then.
    StartTls,
    /// The session is over.
    Closed,
}

/// The envelope of the current transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    /// The HELO/EHLO argument.
    pub helo: String,
    /// Whether the client greeted with EHLO.
    pub esmtp: bool,
    /// MAIL FROM reverse-path without angle brackets or source route (empty for `<>`).
    pub mail_from: String,
    /// SIZE= declared by the client, if any.
    pub declared_size: Option<u64>,
    /// BODY=8BITMIME was given.
    pub body_8bitmime: bool,
    /// SMTPUTF8 was given.
    pub smtputf8: bool,
    /// Accepted forward-paths, without angle brackets, as the client wrote them; the
    /// domain-less `<Postmaster>` gets the first local domain (`Postmaster@example.org`).
    pub rcpts: Vec<String>,
    /// The TLS in use since STARTTLS ([`Session::tls_started`]); kept for the whole session.
    pub tls: Option<TlsInfo>,
}

/// What the driver tells the session about a completed TLS handshake, for the `Received:`
/// header (RFC 3848 `ESMTPS`, and the version and cipher as Postfix writes them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// The protocol version, `TLSv1.2` or `TLSv1.3`.
    pub version: String,
    /// The IANA cipher suite name, e.g. `TLS_AES_256_GCM_SHA384`.
    pub cipher: String,
    /// The symmetric key length in bits (128 or 256).
    pub bits: u16,
}

/// Why a message body was refused (the session answers after the terminator).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Larger than the size limit: 552 5.3.4.
    TooBig,
    /// Bare CR or LF in the body: 550 5.6.0.
    BareLineEnding,
    /// More `Received:` fields than [`SessionConfig::max_hops`]: 554 5.4.6.
    TooManyHops,
    /// A BDAT message discarded before its LAST chunk: by RSET, HELO/EHLO, or a bad BDAT line
    /// (whose reply is the one written).
    Discarded,
}

impl Rejection {
    /// A short name for log lines (`too-big`, `bare-line-ending`, `too-many-hops`,
    /// `discarded`).
    pub fn name(self) -> &'static str {
        match self {
            Self::TooBig => "too-big",
            Self::TooManyHops => "too-many-hops",
            Self::BareLineEnding => "bare-line-ending",
            Self::Discarded => "discarded",
        }
    }
}

/// Why a recipient was refused by policy (rather than for its syntax), for the driver's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecipientRefusal {
    /// Not one of our domains: 550 5.7.1 (we do not relay).
    Relay,
    /// A source route (`<@a:u@b>`): 550 5.7.1.
    SourceRoute,
    /// A non-ASCII address in a transaction without SMTPUTF8: 553 5.6.7.
    NeedsSmtputf8,
    /// Not in the recipient table ([`Policy::recipients`]): 550 5.1.1.
    UnknownUser,
    /// The client is over its recipient rate ([`Policy::rates`]): 450 4.7.1.
    RateLimited,
    /// The next hop refused it when asked ([`Policy::verify`]): 550 5.1.1.
    VerifyRefused,
    /// The next hop could not say in time ([`Policy::verify`]): 450 4.1.1.
    Unverified,
    /// The client is listed by DNSBLs ([`Session::block_recipients`]): 554 5.7.1.
    Dnsbl,
}

impl RecipientRefusal {
    /// A short name for log lines (`relay-denied`, `source-route`, `needs-smtputf8`,
    /// `unknown-user`, `recipient-rate`, `verify-refused`, `unverified`, `dnsbl`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Relay => "relay-denied",
            Self::SourceRoute => "source-route",
            Self::NeedsSmtputf8 => "needs-smtputf8",
            Self::UnknownUser => "unknown-user",
            Self::RateLimited => "recipient-rate",
            Self::VerifyRefused => "verify-refused",
            Self::Unverified => "unverified",
            Self::Dnsbl => "dnsbl",
        }
    }

    /// The reply code and enhanced status code the client got.
    pub fn reply(self) -> (u16, &'static str) {
        match self {
            Self::Relay | Self::SourceRoute => (550, "5.7.1"),
            Self::NeedsSmtputf8 => (553, "5.6.7"),
            Self::UnknownUser | Self::VerifyRefused => (550, "5.1.1"),
            Self::RateLimited => (450, "4.7.1"),
            Self::Unverified => (450, "4.1.1"),
            Self::Dnsbl => (554, "5.7.1"),
        }
    }
}

/// Where body bytes go, plus the few session events a postmaster wants logged. Implemented by
/// the driver (it streams bodies to the spool).
pub trait BodySink {
    /// DATA was accepted (354 written), or the first stored BDAT chunk began: a message starts
    /// with this envelope.
    fn begin(&mut self, envelope: &Envelope);
    /// A piece of the body in order: dot-stuffing undone (DATA), or chunk content as sent
    /// (BDAT). Once the body is over the size limit no more pieces come; `end` then says
    /// [`Rejection::TooBig`].
    fn segment(&mut self, bytes: &[u8]);
    /// The message ended: the DATA terminator or the last BDAT chunk was seen, or it was refused
    /// or discarded. `Ok(())`: the driver must make the message durable and then call
    /// [`Session::handle_commit`]; `Err(r)`: discard the message (its reply, if any, is
    /// written). `handle_input` returns right after an `end`, so the driver can settle the
    /// message before the next one begins.
    fn end(&mut self, envelope: &Envelope, outcome: Result<(), Rejection>);
    /// RCPT `address` (as written, without angle brackets) was refused for `why`; the reply is
    /// already written. For the log only; does nothing by default.
    fn recipient_refused(&mut self, envelope: &Envelope, address: &str, why: RecipientRefusal) {
        let _ = (envelope, address, why);
    }
    /// MAIL from `from` (as written, without angle brackets; empty for `<>`) got 450 4.7.1: the
    /// client is over its message rate ([`Policy::rates`]). For the log and statistics only;
    /// does nothing by default.
    fn message_rate_limited(&mut self, from: &str) {
        let _ = from;
    }
}

/// Replies written, by class (the first digit of the code, RFC 5321 §4.2.1), for statistics.
/// The session keeps one ([`Session::take_replies`]); a multi-line reply counts once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplyTally {
    /// 2xx: positive completion.
    pub c2xx: u64,
    /// 3xx: positive intermediate (354).
    pub c3xx: u64,
    /// 4xx: transient negative.
    pub c4xx: u64,
    /// 5xx: permanent negative.
    pub c5xx: u64,
}

impl ReplyTally {
    /// Counts one reply with `code`.
    pub fn record(&mut self, code: u16) {
        match code / 100 {
            2 => self.c2xx += 1,
            3 => self.c3xx += 1,
            4 => self.c4xx += 1,
            5 => self.c5xx += 1,
            _ => {}
        }
    }

    /// Adds `other` class by class.
    pub fn add(&mut self, other: Self) {
        self.c2xx += other.c2xx;
        self.c3xx += other.c3xx;
        self.c4xx += other.c4xx;
        self.c5xx += other.c5xx;
    }
}

/// Appends the reply to a connection refused by a connection limit before any session exists,
/// `421 4.7.0 <hostname> Too many connections, try again later` (RFC 3463 4.7.0: other
/// security or policy status), and returns it tallied.
pub fn refuse_connection(out: &mut Vec<u8>, hostname: &str) -> ReplyTally {
    let mut out = reply::Out::new(out);
    reply::TOO_MANY_CONNECTIONS.encode_with_host(&mut out, hostname);
    out.tally
}

/// Appends the reply to a connection refused by `--max-connect-rate`,
/// `421 4.7.0 <hostname> Connection rate limit exceeded, try again later`, and returns it tallied.
pub fn refuse_connection_rate(out: &mut Vec<u8>, hostname: &str) -> ReplyTally {
    let mut out = reply::Out::new(out);
    reply::CONNECT_RATE.encode_with_host(&mut out, hostname);
    out.tally
}

/// Appends the first line of a greeting held back by a greet pause, `220-<hostname> ESMTP
/// ringmx` (the final `220 ` line is [`Session::greeting`]). Not tallied: it completes no reply.
pub fn greeting_first_line(out: &mut Vec<u8>, hostname: &str) {
    reply::encode_greeting_first_line(&mut reply::Out::new(out), hostname);
}

/// Appends the reply to a client that spoke before the greeting was over,
/// `554 5.5.1 <hostname> Protocol error: talking out of turn`, and returns it tallied. The
/// driver closes the connection after it.
pub fn refuse_pregreet(out: &mut Vec<u8>, hostname: &str) -> ReplyTally {
    let mut out = reply::Out::new(out);
    reply::PREGREET.encode_with_host(&mut out, hostname);
    out.tally
}

/// Why the driver could not make a message durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitError {
    /// No space left: 452 4.3.1.
    NoSpace,
    /// Any other I/O error: 451 4.3.0.
    Io,
}
