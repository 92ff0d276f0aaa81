//! The SMTP session state machine: bytes and `now` in; replies, body segments and
//! end-of-message events out.
//!
//! It does no I/O and reads no clock; see [`Session`] for the contract with the driver.
//!
//! This file holds the type, the driver contract, the input loop (the DATA body's hot path
//! included), the command dispatch and the error count. The handlers of a transaction's
//! commands are in `mail_rcpt` (MAIL, RCPT) and `message` (BDAT chunks, the end of a message).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use memchr::memchr;

use super::bare_lf::LfNormalizer;
use super::bdat::{Chunk, Disposition, Transfer};
use super::command::{self, Command};
use super::hops::HopCounter;
use super::reply::{self, Out, Reply};
use super::{
    BareLf, BodySink, Closed, CommitError, Envelope, Phase, Policy, Rejection, ReplyTally,
    SessionConfig, TlsInfo, Verdict, MAX_COMMAND_LINE,
};
use crate::data::DataScanner;

mod mail_rcpt;
mod message;

/// One SMTP session's state machine (RFC 5321 server side, with PIPELINING, SIZE, 8BITMIME,
/// ENHANCEDSTATUSCODES, SMTPUTF8 and CHUNKING).
///
/// # Call order
/// 1. [`Session::new`], then [`Session::greeting`]; write `out` to the client.
/// 2. Whenever bytes arrive: [`Session::handle_input`] with **all** bytes not yet consumed
///    (what was left over last time, then the new bytes). Write `out` once it returns.
/// 3. If [`Session::phase`] is [`Phase::AwaitingCommit`] (the sink got
///    [`BodySink::end`] with `Ok`): make the message durable, then call
///    [`Session::handle_commit`], write `out`, and call `handle_input` again with the bytes
///    still held (they may already hold the next commands). No `handle_input` in between.
/// 4. If [`Session::phase`] is [`Phase::AwaitingVerdict`] (a RCPT whose recipient the
///    [`Policy::verify`] check wants verified; nothing after that line was consumed): find the
///    verdict for [`Session::awaiting_verdict`] (the driver may write `out` meanwhile), call
///    [`Session::handle_verdict`], write `out`, then call `handle_input` again with the bytes
///    still held. No `handle_input` in between; there is no session deadline meanwhile (the
///    driver bounds the wait).
/// 5. If [`Session::next_deadline`] passes before more bytes arrive: [`Session::handle_timeout`].
///    To stop the server: [`Session::handle_shutdown`]. Both return the [`Closed`] reason.
/// 6. If [`Session::phase`] is [`Phase::StartTls`] after `handle_input` (STARTTLS accepted,
///    `220 2.0.0 Ready to start TLS` in `out`): write `out`, **discard** every unconsumed byte
///    (those after the STARTTLS line, and anything that arrives before the handshake starts:
///    CVE-2011-0411 command injection), run the TLS handshake within
///    [`Session::next_deadline`], then call [`Session::tls_started`] and from then on feed
///    decrypted bytes. If the handshake fails or times out, close without a reply (no
///    `handle_timeout`: a plaintext 421 would be garbage to a TLS client).
/// 7. On `Err(Closed)` from any call: write what is in `out`, then close the connection. A
///    message begun with [`BodySink::begin`] but never ended (timeout or shutdown in DATA) must
///    be discarded by the driver.
///
/// # Consumed bytes
/// `handle_input` returns how many bytes from the start of `input` it consumed. The driver drops
/// them and keeps the rest, to be passed again (at the front) with the next bytes.
/// - Every complete command line in `input` is handled, in order, and its reply appended to
///   `out` (PIPELINING, RFC 2920), so one write answers a whole batch.
/// - A partial command line at the end is not consumed. It is always shorter than
///   [`MAX_COMMAND_LINE`]: once a line reaches that length without a
///   LF it is consumed and discarded as it comes, and answered with 500 5.5.6 at its end, so the
///   driver never holds more than `MAX_COMMAND_LINE - 1` unconsumed bytes.
/// - In DATA every byte is consumed (body bytes go to [`BodySink::segment`]) up to and
///   including the terminator `<CRLF>.<CRLF>`. If the message is fine, `handle_input` returns
///   right after the terminator without a reply ([`Phase::AwaitingCommit`]); a refused
///   message (bare CR/LF: 550 5.6.0, too big: 552 5.3.4) is answered at once and the
///   following commands are handled in the next call.
/// - `BDAT <n> [LAST]` (RFC 3030): the next `n` octets are consumed as content, exactly, in
///   [`Phase::Data`], and go to [`BodySink::segment`] as sent (no dot-stuffing, no
///   terminator). A chunk that is refused (no MAIL or RCPT: 503 5.5.1; over the size limit:
///   552 5.3.4; a bad argument after the size: 501 5.5.4; a transaction already failed) is read
///   and discarded all the same, and answered after its last octet. A non-LAST chunk gets
///   `250 2.0.0 <n> octets received`; a LAST chunk ends the message like the DATA terminator.
///   A BDAT line whose size cannot be parsed gets 501 5.5.4 and closes the session
///   ([`Closed::Unframeable`]). DATA after BDAT in one transaction gets 503 5.5.1; RSET and
///   HELO/EHLO discard a partial BDAT message, MAIL after a failed one starts afresh.
/// - After every [`BodySink::end`], `handle_input` returns (having consumed what it handled),
///   so the driver settles that message before another begins; it calls again with the rest.
/// - In [`Phase::AwaitingCommit`] and [`Phase::AwaitingVerdict`] nothing is consumed (`Ok(0)`).
///
/// # Lines
/// A command line ends at LF. Only CRLF is a valid ending: a line ended by a bare LF, or
/// holding a CR anywhere else, gets 500 5.5.2 and is not run (SMTP smuggling defence).
/// Under [`BareLf::Normalize`] a line ended by a bare LF is run as if it ended in CRLF, and a
/// body's bare LFs are stored as CRLF instead of refusing the message; a bare CR is refused
/// either way.
///
/// # Errors and closing
/// Every 4xx/5xx reply to the client's input counts as an error, except 452 4.5.3 (too many
/// recipients: the client is expected to send the rest in another transaction) and the
/// driver's commit failures. So does every NOOP, RSET, VRFY or HELP beyond
/// [`SessionConfig::max_junk_commands`] since the last accepted message (keep-alive loops).
/// The [`SessionConfig::max_errors`]th error since the last accepted message is followed by
/// 421 4.7.0 and `Err(Closed::TooManyErrors)`: a connection reused for many messages, each
/// with a refused recipient or two, is not cut off. Bytes after the command that closed the session
/// are ignored.
///
/// # Timeouts
/// [`Session::next_deadline`] is [`SessionConfig::idle_timeout`] after the start of the
/// current command line (when the previous one ended, or the session or the last message
/// began), so a client that drips a line one byte at a time is still cut off; in DATA it is
/// `idle_timeout` after the last body bytes arrived, but never later than
/// [`SessionConfig::data_timeout`] after the DATA command (so a body dripping in forever is
/// cut off too). There is none while awaiting a commit.
///
/// # Choices a postmaster may want to know
/// - Paths must be in angle brackets; a source route is dropped from a reverse-path and
///   refused (550 5.7.1) in a forward-path.
/// - A non-ASCII address without SMTPUTF8 gets 553 5.6.7 (RFC 6531 §3.7.4.1); bytes that are
///   not UTF-8 at all get 501 5.5.4.
/// - DATA without an accepted RCPT gets 503 5.5.1 (RFC 5321 §3.3 allows 503 or 554).
/// - An HTTP request line (`GET / HTTP/1.1`, `POST …`, `CONNECT …`) gets 221 2.7.0 and
///   the session closes ([`Closed::NotSmtp`]), as Postfix does: replying 500 to every header
///   line would only keep a browser or proxy talking.
/// - ESMTP parameters are also accepted after HELO.
/// - STARTTLS needs no EHLO first (RFC 3207 does not ask for one), but is refused inside a
///   transaction (503 5.5.1), with an argument (501 5.5.4), and once TLS is active (503 5.5.1).
#[derive(Debug)]
pub struct Session {
    /// The server's policy, shared by all sessions.
    config: Arc<SessionConfig>,
    /// The client's address (for the driver's logs and trace header).
    client: IpAddr,
    /// Where the state machine stands.
    state: State,
    /// HELO/EHLO and the current transaction.
    envelope: Envelope,
    /// HELO or EHLO was accepted.
    greeted: bool,
    /// MAIL was accepted and the transaction not yet ended.
    in_transaction: bool,
    /// Error replies so far (see the type docs).
    errors: u32,
    /// NOOP/RSET/VRFY/HELP since the session began or the last accepted message.
    junk: u32,
    /// We are inside an over-long command line, dropping bytes up to its LF.
    discarding: bool,
    /// Command phase: when the current command line started. Data phase: last body input.
    last_progress: Instant,
    /// Replies appended since the driver last took them.
    replies: ReplyTally,
    /// The BDAT chunks of the current transaction, from its first BDAT.
    bdat: Option<Transfer>,
    /// The sink just got an `end`: return from `handle_input` before going on.
    yield_now: bool,
    /// This connection's recipient table and rate limits ([`Session::set_policy`]).
    policy: Policy,
    /// The DNSBL zone the client is blocked by ([`Session::block_recipients`]).
    blocked_by: Option<String>,
}

#[derive(Debug)]
enum State {
    Command,
    Data(DataState),
    /// Reading the octets of a BDAT chunk.
    Chunk(Chunk),
    AwaitingCommit,
    /// A RCPT for this address waits for [`Session::handle_verdict`].
    AwaitingVerdict(String),
    StartTls,
    Closed(Closed),
}

/// The body being received.
#[derive(Debug)]
struct DataState {
    /// Finds the terminator, undoes dot-stuffing, notes bare CR/LF.
    scanner: DataScanner,
    /// Body bytes so far (after unstuffing), saturating.
    size: u64,
    /// Over the size limit: no more segments go to the sink.
    too_big: bool,
    /// When the whole body must be in ([`SessionConfig::data_timeout`] after the 354).
    deadline: Option<Instant>,
    /// Rewrites bare LF under [`BareLf::Normalize`]; `None` under [`BareLf::Reject`].
    normalizer: Option<LfNormalizer>,
    /// Counts the `Received:` fields of the header.
    hops: HopCounter,
}

impl Session {
    /// A new session for a client that just connected; `now` starts the first command timeout.
    pub fn new(config: Arc<SessionConfig>, client: IpAddr, now: Instant) -> Self {
        Self {
            config,
            client,
            state: State::Command,
            envelope: Envelope::default(),
            greeted: false,
            in_transaction: false,
            errors: 0,
            junk: 0,
            discarding: false,
            last_progress: now,
            replies: ReplyTally::default(),
            bdat: None,
            yield_now: false,
            policy: Policy::default(),
            blocked_by: None,
        }
    }

    /// Sets this session's recipient table and rate limits (by default: none). Call it before
    /// the first input. With a table, RCPT for a local domain must match an entry (or be the
    /// postmaster) or gets `550 5.1.1`; with rate limits, a MAIL or RCPT over the client's rate
    /// gets `450 4.7.1`. Every MAIL and every syntactically valid RCPT is counted against the
    /// rate (accepted or not, as Postfix counts), at the time its line was read.
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// The client is listed by DNSBLs (the driver's lookups, done while the client was being
    /// greeted): from now on every RCPT gets `554 5.7.1 Service unavailable; client [ip]
    /// blocked using ZONE` (at RCPT rather than at connect, so the log shows sender and
    /// recipient, as Postfix's `reject_rbl_client` does).
    pub fn block_recipients(&mut self, zone: &str) {
        self.blocked_by = Some(zone.to_string());
    }

    /// Appends the 220 greeting: `220 <hostname> ESMTP ringmx`.
    pub fn greeting(&mut self, out: &mut Vec<u8>) {
        let mut out = Out::new(out);
        reply::encode_greeting(&mut out, &self.config.hostname);
        self.replies.add(out.tally);
    }

    /// The replies appended since the last call, by class; resets the tally. The driver calls
    /// it when it writes the replies out, for its statistics.
    pub fn take_replies(&mut self) -> ReplyTally {
        std::mem::take(&mut self.replies)
    }

    /// Handles bytes from the client; see the type docs for the consumed-bytes rule.
    ///
    /// # Errors
    /// `Err(Closed)` when the session is over (QUIT, too many errors, or it was already
    /// closed); the replies in `out` must still be written.
    pub fn handle_input(
        &mut self,
        now: Instant,
        input: &[u8],
        out: &mut Vec<u8>,
        sink: &mut impl BodySink,
    ) -> Result<usize, Closed> {
        let mut out = Out::new(out);
        let res = self.input(now, input, &mut out, sink);
        self.replies.add(out.tally);
        res
    }

    /// [`Session::handle_input`] with its replies tallied.
    fn input(
        &mut self,
        now: Instant,
        input: &[u8],
        out: &mut Out<'_>,
        sink: &mut impl BodySink,
    ) -> Result<usize, Closed> {
        let mut pos = 0;
        loop {
            match self.state {
                State::Closed(reason) => return Err(reason),
                State::AwaitingCommit | State::AwaitingVerdict(_) | State::StartTls => {
                    return Ok(pos)
                }
                State::Data(ref mut data) => {
                    if pos == input.len() {
                        return Ok(pos);
                    }
                    self.last_progress = now;
                    let max = self.config.max_message_size;
                    let DataState {
                        scanner,
                        size,
                        too_big,
                        normalizer,
                        hops,
                        ..
                    } = data;
                    let mut push = |piece: &[u8]| {
                        if *too_big {
                            return;
                        }
                        *size = size.saturating_add(piece.len() as u64);
                        if *size > max {
                            *too_big = true;
                        } else {
                            hops.feed(piece);
                            sink.segment(piece);
                        }
                    };
                    let scan = scanner.scan(&input[pos..], |segment| match normalizer {
                        Some(n) => n.feed(segment, &mut push),
                        None => push(segment),
                    });
                    pos += scan.consumed;
                    if !scan.complete {
                        return Ok(pos);
                    }
                    let refused = match normalizer {
                        Some(_) => scanner.saw_bare_cr(),
                        None => scanner.saw_bare_line_ending(),
                    };
                    let outcome = if refused {
                        Err(Rejection::BareLineEnding)
                    } else if *too_big {
                        Err(Rejection::TooBig)
                    } else if hops.over() {
                        Err(Rejection::TooManyHops)
                    } else {
                        Ok(())
                    };
                    self.end_message(now, outcome, out, sink)?;
                    if std::mem::take(&mut self.yield_now) {
                        return Ok(pos);
                    }
                }
                State::Chunk(ref mut chunk) => {
                    if chunk.remaining > 0 {
                        if pos == input.len() {
                            return Ok(pos);
                        }
                        self.last_progress = now;
                        let take = usize::try_from(chunk.remaining)
                            .unwrap_or(usize::MAX)
                            .min(input.len() - pos);
                        let piece = &input[pos..pos + take];
                        pos += take;
                        chunk.remaining -= take as u64;
                        if chunk.disposition == Disposition::Store {
                            if let Some(t) = self.bdat.as_mut() {
                                let hops = &mut t.hops;
                                t.lines.feed(piece, &mut |p: &[u8]| {
                                    hops.feed(p);
                                    sink.segment(p);
                                });
                            }
                        }
                        if chunk.remaining > 0 {
                            return Ok(pos);
                        }
                    }
                    self.end_chunk(now, out, sink)?;
                    if std::mem::take(&mut self.yield_now) {
                        return Ok(pos);
                    }
                }
                State::Command if pos == input.len() => return Ok(pos),
                State::Command if self.discarding => match memchr(b'\n', &input[pos..]) {
                    None => return Ok(input.len()),
                    Some(lf) => {
                        pos += lf + 1;
                        self.discarding = false;
                        self.last_progress = now;
                        self.fail(out, reply::LINE_TOO_LONG)?;
                    }
                },
                State::Command => {
                    let rest = &input[pos..];
                    let window = &rest[..rest.len().min(MAX_COMMAND_LINE)];
                    match memchr(b'\n', window) {
                        Some(lf) => {
                            pos += lf + 1;
                            self.last_progress = now;
                            self.handle_line(&rest[..lf], out, sink)?;
                            if std::mem::take(&mut self.yield_now) {
                                return Ok(pos);
                            }
                        }
                        // MAX_COMMAND_LINE bytes and no LF: whatever comes, the line is too
                        // long. Discard from here on (the next round looks for its end).
                        None if rest.len() >= MAX_COMMAND_LINE => self.discarding = true,
                        None => return Ok(pos),
                    }
                }
            }
        }
    }

    /// The driver's answer to [`BodySink::end`] with `Ok`: the message id, or why it failed.
    /// Appends `250 2.0.0 Ok queued as <id>`, 452 4.3.1 or 451 4.3.0 and ends the transaction.
    /// Does nothing unless the session is in [`Phase::AwaitingCommit`].
    pub fn handle_commit(
        &mut self,
        now: Instant,
        result: Result<&str, CommitError>,
        out: &mut Vec<u8>,
    ) {
        if !matches!(self.state, State::AwaitingCommit) {
            return;
        }
        let mut out = Out::new(out);
        match result {
            Ok(id) => {
                reply::QUEUED.encode_with_arg(&mut out, id);
                self.junk = 0;
                self.errors = 0;
            }
            Err(CommitError::NoSpace) => reply::COMMIT_NO_SPACE.encode(&mut out),
            Err(CommitError::Io) => reply::COMMIT_IO.encode(&mut out),
        }
        self.replies.add(out.tally);
        self.reset_transaction();
        self.state = State::Command;
        self.last_progress = now;
    }

    /// The RCPT address waiting for a verdict ([`Phase::AwaitingVerdict`]), as the client wrote
    /// it; `None` in any other phase.
    pub fn awaiting_verdict(&self) -> Option<&str> {
        match &self.state {
            State::AwaitingVerdict(a) => Some(a),
            _ => None,
        }
    }

    /// The driver's answer for the RCPT in [`Phase::AwaitingVerdict`]: appends `250 2.1.5 Ok`
    /// (the recipient joins the envelope), `550 5.1.1 … User unknown` or `450 4.1.1 …
    /// unverified address: try again later` (both count as errors), and goes back to reading
    /// commands; `now` starts the next command timeout. Does nothing in any other phase.
    ///
    /// # Errors
    /// `Err(Closed::TooManyErrors)` when this refusal was the last error allowed (421 4.7.0
    /// appended after it).
    pub fn handle_verdict(
        &mut self,
        now: Instant,
        verdict: Verdict,
        out: &mut Vec<u8>,
    ) -> Result<(), Closed> {
        let State::AwaitingVerdict(address) = std::mem::replace(&mut self.state, State::Command)
        else {
            return Ok(());
        };
        self.last_progress = now;
        let mut out = Out::new(out);
        let res = match verdict {
            Verdict::Accepted => {
                self.envelope.rcpts.push(address);
                reply::RCPT_OK.encode(&mut out);
                Ok(())
            }
            Verdict::Refused => {
                reply::encode_unknown_user(&mut out, &address);
                self.count_error(&mut out)
            }
            Verdict::Unverified => {
                reply::encode_unverified(&mut out, &address);
                self.count_error(&mut out)
            }
        };
        self.replies.add(out.tally);
        res
    }

    /// The deadline passed: appends `421 4.4.2 <hostname> …` and closes. If the session was
    /// already closed, appends nothing and returns the earlier reason.
    pub fn handle_timeout(&mut self, out: &mut Vec<u8>) -> Closed {
        self.close_tallied(out, reply::TIMEOUT, Closed::Timeout)
    }

    /// The server is going down: appends `421 4.3.2 <hostname> …` and closes. If the session
    /// was already closed, appends nothing and returns the earlier reason.
    pub fn handle_shutdown(&mut self, out: &mut Vec<u8>) -> Closed {
        self.close_tallied(out, reply::SHUTDOWN, Closed::Shutdown)
    }

    /// [`Session::close_with`] on the caller's buffer, tallying the reply.
    fn close_tallied(&mut self, out: &mut Vec<u8>, r: Reply, reason: Closed) -> Closed {
        let mut out = Out::new(out);
        let closed = self.close_with(&mut out, r, reason);
        self.replies.add(out.tally);
        closed
    }

    /// What the session waits for.
    pub fn phase(&self) -> Phase {
        match self.state {
            State::Command => Phase::Command,
            State::Data(_) | State::Chunk(_) => Phase::Data,
            State::AwaitingCommit => Phase::AwaitingCommit,
            State::AwaitingVerdict(_) => Phase::AwaitingVerdict,
            State::StartTls => Phase::StartTls,
            State::Closed(_) => Phase::Closed,
        }
    }

    /// When the driver must call [`Session::handle_timeout`] if no input arrives first; `None`
    /// while awaiting a commit, once closed, or if the timeout is too large to represent. In
    /// [`Phase::StartTls`] it is when the handshake must be over
    /// ([`SessionConfig::tls_handshake_timeout`] after the STARTTLS line); the driver then
    /// closes without calling `handle_timeout`.
    pub fn next_deadline(&self) -> Option<Instant> {
        let idle = self.last_progress.checked_add(self.config.idle_timeout);
        match &self.state {
            State::Command => idle,
            State::Data(DataState { deadline, .. }) | State::Chunk(Chunk { deadline, .. }) => {
                match (idle, *deadline) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            State::StartTls => self
                .last_progress
                .checked_add(self.config.tls_handshake_timeout),
            State::AwaitingCommit | State::AwaitingVerdict(_) | State::Closed(_) => None,
        }
    }

    /// The driver finished the TLS handshake that STARTTLS announced. The session goes back to
    /// its state right after the greeting (RFC 3207 §4.2): HELO/EHLO and any transaction are
    /// forgotten, so the client must send EHLO again (MAIL first gets 503 5.5.1); STARTTLS is no
    /// longer offered, and messages are traced as `ESMTPS` with `info`. The error and junk
    /// counts carry over. `now` starts the next command timeout. Does nothing unless the session
    /// is in [`Phase::StartTls`].
    pub fn tls_started(&mut self, now: Instant, info: TlsInfo) {
        if !matches!(self.state, State::StartTls) {
            return;
        }
        self.envelope = Envelope {
            tls: Some(info),
            ..Envelope::default()
        };
        self.greeted = false;
        self.in_transaction = false;
        self.discarding = false;
        self.state = State::Command;
        self.last_progress = now;
    }

    /// The client's address, as given to [`Session::new`].
    pub fn client(&self) -> IpAddr {
        self.client
    }

    /// HELO/EHLO and the current transaction (the message's envelope while in DATA or
    /// awaiting a commit).
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// One complete line, without its LF.
    fn handle_line(
        &mut self,
        line: &[u8],
        out: &mut Out<'_>,
        sink: &mut impl BodySink,
    ) -> Result<(), Closed> {
        let line = match line.strip_suffix(b"\r") {
            Some(line) => line,
            None if self.config.bare_lf == BareLf::Normalize => line,
            None => return self.fail(out, reply::BARE_LINE_ENDING),
        };
        if memchr(b'\r', line).is_some() {
            return self.fail(out, reply::BARE_LINE_ENDING);
        }
        match command::parse(line) {
            Ok(command) => self.handle_command(command, out, sink),
            Err(command::CommandError::NotSmtp) => {
                Err(self.close_with(out, reply::NOT_SMTP, Closed::NotSmtp))
            }
            Err(command::CommandError::Unframeable) => {
                // The octets after this line can no longer be told from commands.
                reply::BDAT_SYNTAX.encode(out);
                self.state = State::Closed(Closed::Unframeable);
                Err(Closed::Unframeable)
            }
            Err(e) => self.fail(out, e.reply()),
        }
    }

    fn handle_command(
        &mut self,
        command: Command<'_>,
        out: &mut Out<'_>,
        sink: &mut impl BodySink,
    ) -> Result<(), Closed> {
        match command {
            Command::Ehlo(name) => {
                self.discard_bdat(sink);
                self.greet(name, true);
                let starttls = self.config.starttls && self.envelope.tls.is_none();
                reply::encode_ehlo(
                    out,
                    &self.config.hostname,
                    self.config.max_message_size,
                    starttls,
                );
            }
            Command::Helo(name) => {
                self.discard_bdat(sink);
                self.greet(name, false);
                reply::encode_helo(out, &self.config.hostname);
            }
            Command::Mail { path, params } => return self.handle_mail(path, params, out, sink),
            Command::Rcpt { path } => return self.handle_rcpt(path, out, sink),
            Command::Data => {
                if !self.in_transaction {
                    return self.fail(out, reply::NEED_MAIL);
                }
                if self.envelope.rcpts.is_empty() {
                    return self.fail(out, reply::NEED_RCPT);
                }
                if self.bdat.is_some() {
                    return self.fail(out, reply::DATA_AFTER_BDAT);
                }
                reply::DATA_GO_AHEAD.encode(out);
                // `last_progress` is the time this DATA line was read.
                let deadline = self
                    .config
                    .data_timeout
                    .and_then(|t| self.last_progress.checked_add(t));
                self.state = State::Data(DataState {
                    scanner: DataScanner::new(),
                    size: 0,
                    too_big: false,
                    deadline,
                    normalizer: (self.config.bare_lf == BareLf::Normalize)
                        .then(LfNormalizer::default),
                    hops: HopCounter::new(self.config.max_hops),
                });
                sink.begin(&self.envelope);
            }
            Command::Bdat { size, ending } => self.handle_bdat(size, ending, sink),
            Command::Rset => {
                self.discard_bdat(sink);
                self.reset_transaction();
                reply::OK.encode(out);
                return self.junk_command(out);
            }
            Command::Noop => {
                reply::OK.encode(out);
                return self.junk_command(out);
            }
            Command::Vrfy => {
                reply::VRFY_CANNOT.encode(out);
                return self.junk_command(out);
            }
            Command::Help => {
                reply::HELP.encode(out);
                return self.junk_command(out);
            }
            Command::StartTls { args } => {
                if !self.config.starttls {
                    return self.fail(out, command::CommandError::NotImplemented.reply());
                }
                if self.envelope.tls.is_some() {
                    return self.fail(out, reply::TLS_ACTIVE);
                }
                if args {
                    return self.fail(out, reply::TLS_SYNTAX);
                }
                if self.in_transaction {
                    return self.fail(out, reply::TLS_IN_TRANSACTION);
                }
                reply::TLS_READY.encode(out);
                // `last_progress` is the time this line was read: the handshake deadline.
                self.state = State::StartTls;
            }
            Command::Quit => {
                reply::BYE.encode(out);
                self.state = State::Closed(Closed::Quit);
                return Err(Closed::Quit);
            }
        }
        Ok(())
    }

    /// HELO/EHLO: a new greeting ends any transaction (RFC 5321 §4.1.4).
    fn greet(&mut self, name: &str, esmtp: bool) {
        self.reset_transaction();
        self.greeted = true;
        self.envelope.helo.clear();
        self.envelope.helo.push_str(name);
        self.envelope.esmtp = esmtp;
    }

    /// Ends the transaction; HELO/EHLO stays.
    fn reset_transaction(&mut self) {
        self.in_transaction = false;
        self.bdat = None;
        let e = &mut self.envelope;
        e.mail_from.clear();
        e.declared_size = None;
        e.body_8bitmime = false;
        e.smtputf8 = false;
        e.rcpts.clear();
    }

    /// Appends an error reply and counts it; the last one allowed closes the session.
    fn fail(&mut self, out: &mut Out<'_>, r: Reply) -> Result<(), Closed> {
        debug_assert!(r.is_error(), "{r:?} is not an error reply");
        r.encode(out);
        self.count_error(out)
    }

    /// Counts a NOOP/RSET/VRFY/HELP (its reply already written); past
    /// [`SessionConfig::max_junk_commands`] it also counts as an error.
    fn junk_command(&mut self, out: &mut Out<'_>) -> Result<(), Closed> {
        self.junk = self.junk.saturating_add(1);
        let limit = self.config.max_junk_commands;
        if limit != 0 && self.junk > limit {
            return self.count_error(out);
        }
        Ok(())
    }

    /// Counts one error; the last one allowed appends 421 4.7.0 and closes the session.
    fn count_error(&mut self, out: &mut Out<'_>) -> Result<(), Closed> {
        self.errors = self.errors.saturating_add(1);
        if self.config.max_errors != 0 && self.errors >= self.config.max_errors {
            return Err(self.close_with(out, reply::TOO_MANY_ERRORS, Closed::TooManyErrors));
        }
        Ok(())
    }

    fn close_with(&mut self, out: &mut Out<'_>, r: Reply, reason: Closed) -> Closed {
        if let State::Closed(earlier) = self.state {
            return earlier;
        }
        r.encode_with_host(out, &self.config.hostname);
        self.state = State::Closed(reason);
        self.discarding = false;
        reason
    }
}

#[cfg(test)]
mod tests;
