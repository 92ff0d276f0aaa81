//! The connection driver: moves bytes between one client socket, its sans-IO [`Session`] and
//! the reactor's spool writer.
//!
//! The loop, per read: read (bounded by the session's deadline and the server's stop state) →
//! [`Session::handle_input`] on the unconsumed bytes → stream body segments into the message
//! writer (`push`, then one `flush().await`) → at the end of a message `commit().await` (the
//! group fsync) → [`Session::handle_commit`] → write every reply of the batch with one
//! `write_all`. The 250 for a message is therefore written only after its commit resolved
//! (docs/design.md, invariant 1), and replies to pipelined commands go out in one send (invariant 6).
//!
//! Consumed-bytes rule: bytes the session did not consume stay in `pending` and are fed again,
//! in front of the next read's bytes. When `pending` is empty the session reads straight out of
//! the read buffer, so bulk DATA is never copied here; only a partial line is kept. The session
//! discards over-long lines itself, so `pending` stays below one command line plus one read;
//! [`MAX_PENDING`] is a backstop that closes the connection if that promise is ever broken.
//!
//! Deadlines: each connection arms its [`Deadline`] cell before every read (the session's
//! deadline) and write (the idle timeout); the reactor's coarse sweep ([`super::deadline`])
//! wakes it once the deadline has passed. No per-I/O timer is registered.
//!
//! tokio-uring traps handled here: a read raced against the deadline or the stop signal is
//! dropped while still in flight, so every such path ends with `shutdown(Both)`, which completes
//! the read and lets the fd close; writes carry a deadline too and end the same way.
//!
//! STARTTLS: when the session enters [`Phase::StartTls`] (its 220 written), `drive` discards
//! every byte still held after the STARTTLS line and counts them (CVE-2011-0411: they were sent
//! before the handshake and must never run); `start_tls` then runs the handshake with rustls
//! over the same reads and writes, under the session's deadline (`--tls-handshake-timeout`),
//! and calls [`Session::tls_started`]. From then on reads go through
//! [`TlsConn::decrypt`](super::tls::TlsConn::decrypt) before `feed`, and `write_out`
//! encrypts the batch. A connection without TLS takes exactly the plaintext path (one `Option`
//! test per read and write; no copy). A failed or timed-out handshake closes the connection
//! like an idle client, `shutdown(Both)` included.
//!
//! Greet pause (`--greet-pause`, not for trusted clients): `220-` is written, the connection
//! sleeps (no read in flight, no buffer held), then peeks at the socket without blocking; a
//! client that sent anything gets `554 5.5.1` and is closed (`pregreet`), else the final
//! `220 ` line follows. A tokio-uring read raced against the pause would stay in flight after
//! it and swallow the client's first command, hence the peek.
//!
//! Recipient verification: when the session waits for a RCPT verdict
//! ([`Phase::AwaitingVerdict`]), `drive` asks the verifier thread
//! ([`crate::relay::verify`]) over a channel and awaits the answer on a oneshot (other
//! connections of the reactor run meanwhile), then hands it to [`Session::handle_verdict`].
//! The session consumed nothing after that RCPT, so pipelined commands behind it are answered
//! after it, in order.
//!
//! # Files
//! - this file: the read sizes, the entry points ([`serve`], [`serve_from`], [`refuse`]), the
//!   per-connection state (`Conn`), its setup and the main loop (buffer choice, the stop state,
//!   the dispatch of each read), and the `421` close on shutdown.
//! - `input`: one read raced against the deadline and the stop state, the consumed-bytes rule
//!   (`feed`) and the run of the session over the input (`drive`).
//! - `output`: writing a batch of replies, plaintext or sealed, under the idle timeout.
//! - `message`: the message path into the spool: the body sink, the flush after each batch,
//!   the commit or abort, and the result handed to the session (so its 250 follows the commit).
//! - `starttls`: the handshake after the 220 of STARTTLS, and decrypting reads afterwards.
//! - `abuse`: the greet pause, the wait for the DNSBL verdict, recipient verification.
//! - `end`: how a connection ended, and the abort, shutdown, counters and log line at its end.
//!
//! This module does not parse SMTP, decide replies or know the spool format.

use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::time::Instant;

use tokio::sync::watch;
use tokio_uring::net::TcpStream;

use super::deadline::Deadline;
use super::limit::{ConnPermit, Refusal};
use super::reactor::Reactor;
use super::shutdown::{Stop, TrackGuard};
use super::tls::TlsConn;
use crate::buffers::Buf;
use crate::smtp::{Phase, Session};
use crate::stats::ReactorStats;

mod abuse;
mod end;
mod input;
mod message;
mod output;
mod starttls;

use end::End;
use input::ReadEvent;
use message::SpoolSink;
use output::write_deadline;

/// Read size while waiting for commands: a small heap buffer per connection, so thousands of
/// idle sessions stay cheap and never hold a registered buffer while the client thinks.
pub const COMMAND_READ_SIZE: usize = 4 * 1024;
/// Read size during DATA when the pool's registered read buffers are all in use (a registered
/// read buffer is [`crate::buffers::DEFAULT_READ_BUF_SIZE`]).
pub const DATA_READ_SIZE: usize = 64 * 1024;
/// A read that brought at least this much means a body is streaming in: the following DATA
/// reads of that message take large buffers. Until then (the first read after the 354, a
/// client dripping its body) the small command buffer is used, so slow clients hold neither a
/// registered buffer nor [`DATA_READ_SIZE`] of heap while the server waits for them.
pub const BULK_READ: usize = COMMAND_READ_SIZE;
/// Most unconsumed input kept between reads. The session consumes or discards every complete
/// line and caps a partial one at the RFC 5321 §4.5.3.1.4 limit (512) or the text-line limit
/// (1000), so anything near this is a broken promise, answered by closing the connection.
pub const MAX_PENDING: usize = DATA_READ_SIZE + 4 * 1024;
/// Bytes of a pregreet client's early input looked at (and logged, made printable).
pub const PREGREET_PEEK: usize = 64;

/// Serves one admitted connection until it ends; logs and counts the outcome.
pub async fn serve(
    r: Rc<Reactor>,
    stream: TcpStream,
    peer: SocketAddr,
    permit: ConnPermit,
    track: TrackGuard,
) {
    serve_from(r, stream, peer, Vec::new(), permit, track).await;
}

/// [`serve`] for a client at `peer` (from a PROXY header, see [`super::proxy`]) that already
/// sent `early` (bytes after the header): they are the session's first input.
pub async fn serve_from(
    r: Rc<Reactor>,
    stream: TcpStream,
    peer: SocketAddr,
    early: Vec<u8>,
    permit: ConnPermit,
    track: TrackGuard,
) {
    let _ = stream.set_nodelay(true);
    tracing::info!("connect from={peer} reactor={}", r.index);
    let mut conn = Conn::new(&r, stream, peer);
    conn.pending = early;
    let end = conn.run().await;
    conn.finish(end).await;
    drop(permit);
    drop(track);
}

/// Answers a connection over a limit with `421 4.7.0` and closes it.
pub async fn refuse(
    r: Rc<Reactor>,
    stream: TcpStream,
    peer: SocketAddr,
    why: Refusal,
    track: TrackGuard,
) {
    tracing::info!("reject from={peer} reason={} reply=421", why.name());
    let mut reply = Vec::with_capacity(64);
    r.stats.replies(match why {
        Refusal::ConnectRate => crate::smtp::refuse_connection_rate(&mut reply, &r.hostname),
        Refusal::Total | Refusal::PerIp => crate::smtp::refuse_connection(&mut reply, &r.hostname),
    });
    let deadline = r.deadlines.register();
    let _ = deadline
        .within(write_deadline(r.idle_timeout), stream.write_all(reply))
        .await;
    let _ = stream.shutdown(Shutdown::Both);
    drop(track);
}

struct Conn<'r> {
    r: &'r Reactor,
    stream: TcpStream,
    peer: SocketAddr,
    session: Session,
    /// Replies of the current batch.
    out: Vec<u8>,
    /// Input the session has not consumed yet.
    pending: Vec<u8>,
    sink: SpoolSink<'r>,
    /// The deadline of the read or write in progress, checked by the reactor's sweep.
    deadline: Rc<Deadline>,
    stop: watch::Receiver<Stop>,
    /// False once the stop sender is gone (nothing left to watch).
    watch_stop: bool,
    started: Instant,
    /// TLS after STARTTLS; `None` on the plaintext path.
    tls: Option<Box<TlsConn>>,
    messages: u64,
    rejected: u64,
    bytes_in: u64,
    /// The client is in `--trusted-networks`: no greet pause, no rate limits, no DNSBL.
    trusted: bool,
    /// The DNSBL lookups sent at connect, until their verdict is in.
    dnsbl: Option<super::dnsbl::Check>,
}

impl<'r> Conn<'r> {
    fn new(r: &'r Reactor, stream: TcpStream, peer: SocketAddr) -> Self {
        let now = Instant::now();
        let trusted = r.abuse.is_trusted(peer.ip());
        let mut session = Session::new(r.session_config.clone(), peer.ip(), now);
        session.set_policy(r.abuse.policy(trusted));
        // Sent now, answered while the client is greeted; awaited before its first command.
        let dnsbl = match &r.abuse.dnsbl {
            Some(d) if !trusted => Some(d.start(peer.ip())),
            _ => None,
        };
        Self {
            dnsbl,
            r,
            stream,
            peer,
            session,
            out: Vec::with_capacity(512),
            pending: Vec::new(),
            sink: SpoolSink::new(&r.spool, &r.stats, peer.ip()),
            deadline: r.deadlines.register(),
            stop: r.stop.clone(),
            watch_stop: true,
            started: now,
            tls: None,
            messages: 0,
            rejected: 0,
            bytes_in: 0,
            trusted,
        }
    }

    async fn run(&mut self) -> End {
        if !self.trusted && !self.r.abuse.greet_pause.is_zero() {
            if let Err(end) = self.greet_pause().await {
                return end;
            }
        }
        self.session.greeting(&mut self.out);
        if let Err(end) = self.write_out().await {
            return end;
        }
        // Bytes that came with a PROXY header are the first input.
        if !self.pending.is_empty() {
            let early = std::mem::take(&mut self.pending);
            if let Err(end) = self.feed(&early).await {
                return end;
            }
        }
        // Reused for every command-phase read, and for DATA reads until the body streams in;
        // then DATA reads take pooled (registered) buffers, or large heap ones.
        let mut command_buf = Some(Buf::heap(COMMAND_READ_SIZE));
        let mut streaming = false;
        loop {
            if self.session.phase() == Phase::StartTls {
                if let Err(end) = self.start_tls().await {
                    return end;
                }
                continue;
            }
            let stop = *self.stop.borrow();
            let phase = self.session.phase();
            if stop == Stop::Now || (stop == Stop::Draining && phase == Phase::Command) {
                return self.close_for_shutdown().await;
            }
            if phase != Phase::Data {
                streaming = false;
            }
            let buf = if streaming {
                self.r
                    .pool
                    .read_buf()
                    .unwrap_or_else(|| Buf::heap(DATA_READ_SIZE))
            } else {
                command_buf
                    .take()
                    .unwrap_or_else(|| Buf::heap(COMMAND_READ_SIZE))
            };
            match self.read(buf).await {
                ReadEvent::Done(Ok(0), _) => return End::Eof,
                ReadEvent::Done(Ok(n), b) => {
                    // Once a body streams in, it keeps the large buffers until its end.
                    streaming |= n >= BULK_READ;
                    self.bytes_in += n as u64;
                    ReactorStats::add(&self.r.stats.counters.bytes_received, n as u64);
                    // Valid bytes are b[..n] (a reused registered buffer may be longer).
                    let fed = match self.tls {
                        None => self.feed(&b[..n]).await,
                        Some(_) => self.feed_tls(&b[..n]).await,
                    };
                    if let Err(end) = fed {
                        return end;
                    }
                    if !b.is_fixed() && b.capacity() == COMMAND_READ_SIZE {
                        command_buf = Some(b);
                    }
                }
                ReadEvent::Done(Err(e), _) => return End::Io(e),
                ReadEvent::Timeout => {
                    let closed = self.session.handle_timeout(&mut self.out);
                    let _ = self.write_out().await;
                    return End::Closed(closed);
                }
                ReadEvent::Stop => return self.close_for_shutdown().await,
            }
        }
    }

    async fn close_for_shutdown(&mut self) -> End {
        let closed = self.session.handle_shutdown(&mut self.out);
        let _ = self.write_out().await;
        End::Closed(closed)
    }
}
