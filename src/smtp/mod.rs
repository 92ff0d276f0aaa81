//! The SMTP protocol core (RFC 5321 + PIPELINING, SIZE, 8BITMIME, ENHANCEDSTATUSCODES, SMTPUTF8).
//!
//! Sans-IO: the driver hands it bytes and `now`; it returns how many bytes it consumed, appends
//! replies to an output buffer and hands body segments and end-of-message events to a
//! [`BodySink`]. It never touches sockets, files, clocks, runtimes or threads.
#![forbid(unsafe_code)]

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Everything the session needs to know about the server's policy. Built once, shared.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Our hostname, for the 220 greeting and the EHLO reply.
    pub hostname: String,
    /// Domains we accept mail for (compared case-insensitively, exact match).
    pub local_domains: Vec<String>,
    /// Largest message body we accept, in bytes (advertised as `SIZE n`).
    pub max_message_size: u64,
    /// Recipients per transaction; more get 452 4.5.3.
    pub max_recipients: usize,
    /// Errors before 421 4.7.0 and close.
    pub max_errors: u32,
    /// How long a client may take for one command line, or stay silent in DATA.
    pub idle_timeout: Duration,
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
    /// The server is shutting down (421 4.3.2 written).
    Shutdown,
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
    /// The session is over.
    Closed,
}

/// The envelope of the current transaction.
#[derive(Debug, Clone, Default)]
pub struct Envelope {
    /// The HELO/EHLO argument.
    pub helo: String,
    /// Whether the client greeted with EHLO.
    pub esmtp: bool,
    /// MAIL FROM reverse-path without angle brackets (empty for `<>`).
    pub mail_from: String,
    /// SIZE= declared by the client, if any.
    pub declared_size: Option<u64>,
    /// BODY=8BITMIME was given.
    pub body_8bitmime: bool,
    /// SMTPUTF8 was given.
    pub smtputf8: bool,
    /// Accepted forward-paths, without angle brackets.
    pub rcpts: Vec<String>,
}

/// Why a message body was refused (the session answers after the terminator).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Larger than the size limit: 552 5.3.4.
    TooBig,
    /// Bare CR or LF in the body: 550 5.6.11.
    BareLineEnding,
}

/// Where body bytes go. Implemented by the driver (it streams them to the spool).
pub trait BodySink {
    /// DATA was accepted (354 written): a message starts with this envelope.
    fn begin(&mut self, envelope: &Envelope);
    /// A piece of the body, dot-stuffing undone, in order.
    fn segment(&mut self, bytes: &[u8]);
    /// The terminator was seen. `Ok(())`: the driver must make the message durable and then call
    /// [`Session::handle_commit`]; `Err(r)`: the reply is already written, discard the message.
    fn end(&mut self, envelope: &Envelope, outcome: Result<(), Rejection>);
}

/// Why the driver could not make a message durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitError {
    /// No space left: 452 4.3.1.
    NoSpace,
    /// Any other I/O error: 451 4.3.0.
    Io,
}

/// One SMTP session's state machine.
#[derive(Debug)]
pub struct Session {
    config: Arc<SessionConfig>,
    client: IpAddr,
}

impl Session {
    /// A new session for a client that just connected.
    pub fn new(config: Arc<SessionConfig>, client: IpAddr, now: Instant) -> Self {
        let _ = now;
        Self { config, client }
    }

    /// Appends the 220 greeting.
    pub fn greeting(&mut self, out: &mut Vec<u8>) {
        let _ = (out, &self.config, self.client);
        todo!()
    }

    /// Handles the input; see the module docs for the consumed-bytes rule.
    pub fn handle_input(
        &mut self,
        now: Instant,
        input: &[u8],
        out: &mut Vec<u8>,
        sink: &mut impl BodySink,
    ) -> Result<usize, Closed> {
        let _ = (now, input, out, sink);
        todo!()
    }

    /// The driver's answer to [`BodySink::end`] with `Ok`: the message id, or why it failed.
    pub fn handle_commit(
        &mut self,
        now: Instant,
        result: Result<&str, CommitError>,
        out: &mut Vec<u8>,
    ) {
        let _ = (now, result, out);
        todo!()
    }

    /// The deadline passed: appends 421 4.4.2.
    pub fn handle_timeout(&mut self, out: &mut Vec<u8>) -> Closed {
        let _ = out;
        todo!()
    }

    /// The server is going down: appends 421 4.3.2.
    pub fn handle_shutdown(&mut self, out: &mut Vec<u8>) -> Closed {
        let _ = out;
        todo!()
    }

    /// What the session waits for.
    pub fn phase(&self) -> Phase {
        todo!()
    }

    /// When the driver must call [`Session::handle_timeout`] if no input arrives first.
    pub fn next_deadline(&self) -> Option<Instant> {
        todo!()
    }
}
