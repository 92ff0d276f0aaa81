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
//! This module does not parse SMTP, decide replies or know the spool format.

use std::io;
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::rc::Rc;
use std::time::{Instant, SystemTime};

use tokio::sync::watch;
use tokio_uring::net::TcpStream;

use super::deadline::Deadline;
use super::limit::{ConnPermit, Refusal};
use super::reactor::Reactor;
use super::shutdown::{Stop, TrackGuard};
use super::tls::{TlsConn, TlsFailure};
use crate::buffers::Buf;
use crate::relay::verify::{Answer, Source};
use crate::smtp::{
    BodySink, Closed, CommitError, Envelope, Phase, RecipientRefusal, Rejection, Session, Verdict,
};
use crate::spool::{EnvelopeRecord, MessageWriter, Spool, SpoolError, TlsTrace};
use crate::stats::{MessageOutcome, ReactorStats, SessionEnd, TlsOutcome};

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

/// How a session ended.
#[derive(Debug)]
enum End {
    /// The session closed it (QUIT, errors, timeout, shutdown); its reply was written.
    Closed(Closed),
    /// The client closed the connection.
    Eof,
    /// A socket error.
    Io(io::Error),
    /// The client did not take our replies within the idle timeout.
    WriteTimeout,
    /// The session left more unconsumed input than it promised.
    Overflow,
    /// The TLS handshake did not finish within `--tls-handshake-timeout`.
    TlsTimeout,
    /// TLS failed (handshake or later).
    Tls(TlsFailure),
    /// The client talked before the end of the greet pause (554 5.5.1 written).
    Pregreet,
}

impl End {
    /// The `reason=` of the disconnect log line.
    fn name(&self) -> &'static str {
        match self {
            Self::Closed(Closed::Quit) => "quit",
            Self::Closed(Closed::Timeout) => "timeout",
            Self::Closed(Closed::TooManyErrors) => "too-many-errors",
            Self::Closed(Closed::Shutdown) => "shutdown",
            Self::Closed(Closed::NotSmtp) => "not-smtp",
            Self::Closed(Closed::Unframeable) => "bad-bdat",
            Self::Eof => "client-closed",
            Self::WriteTimeout => "write-timeout",
            Self::Io(_) | Self::Overflow => "error",
            Self::TlsTimeout => "tls-timeout",
            Self::Tls(TlsFailure::Protocol) => "tls-protocol-error",
            Self::Tls(TlsFailure::ClientAlert) => "tls-client-alert",
            Self::Pregreet => "pregreet",
        }
    }

    /// How the statistics count it.
    fn counted_as(&self) -> SessionEnd {
        match self {
            Self::Closed(Closed::Quit) => SessionEnd::Quit,
            Self::Closed(Closed::Timeout) | Self::WriteTimeout | Self::TlsTimeout => {
                SessionEnd::Timeout
            }
            // An unframeable BDAT line is a protocol error that ends the session at once.
            Self::Closed(Closed::TooManyErrors | Closed::Unframeable) => SessionEnd::TooManyErrors,
            Self::Closed(Closed::Shutdown) => SessionEnd::Shutdown,
            Self::Closed(Closed::NotSmtp) => SessionEnd::NotSmtp,
            Self::Eof => SessionEnd::Disconnected,
            Self::Io(_) | Self::Overflow | Self::Tls(_) => SessionEnd::IoError,
            Self::Pregreet => SessionEnd::Pregreet,
        }
    }
}

/// What a read turned into.
enum ReadEvent {
    /// The read completed (bytes, EOF or error) and gave the buffer back.
    Done(io::Result<usize>, Buf),
    /// The session's deadline passed first.
    Timeout,
    /// The server is stopping and this session must go.
    Stop,
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

    /// `--greet-pause`: writes `220-`, sleeps (cut short if the server stops), then looks
    /// without reading whether the client has sent anything: if so, `554 5.5.1` and
    /// [`End::Pregreet`]. The first input of a PROXY connection (sent after its header but
    /// before our greeting) counts too.
    async fn greet_pause(&mut self) -> Result<(), End> {
        crate::smtp::greeting_first_line(&mut self.out, &self.r.hostname);
        self.write_out().await?;
        let pause = self.r.abuse.greet_pause;
        if self.pending.is_empty() {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                // Stopping: end the pause; the loop then closes with 421 after the greeting.
                _ = self.stop.changed(), if self.watch_stop => {}
            }
        }
        let mut peek = [0u8; PREGREET_PEEK];
        let n = if self.pending.is_empty() {
            match crate::sys::peek_nonblocking(&self.stream, &mut peek) {
                Ok(0) => return Err(End::Eof),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(End::Io(e)),
            }
        } else {
            let n = self.pending.len().min(PREGREET_PEEK);
            peek[..n].copy_from_slice(&self.pending[..n]);
            n
        };
        let seen: String = peek[..n]
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    char::from(b)
                } else {
                    '.'
                }
            })
            .collect();
        tracing::info!(
            "reject from={} reason=pregreet reply=554 5.5.1 sent=\"{seen}\"",
            self.peer
        );
        self.r.stats.replies(crate::smtp::refuse_pregreet(
            &mut self.out,
            &self.r.hostname,
        ));
        let out = std::mem::take(&mut self.out);
        let _ = self.write_raw(out).await;
        Err(End::Pregreet)
    }

    /// Reads into `buf`, racing the session deadline and the stop state. On `Timeout`/`Stop`
    /// the read stays in flight: the caller must close the connection (`finish` does).
    async fn read(&mut self, buf: Buf) -> ReadEvent {
        let phase = self.session.phase();
        self.deadline.arm(self.session.next_deadline());
        let read = buf.read_from(&self.stream);
        tokio::pin!(read);
        loop {
            tokio::select! {
                biased;
                (res, buf) = &mut read => {
                    self.deadline.disarm();
                    return ReadEvent::Done(res, buf);
                }
                () = self.deadline.expired() => return ReadEvent::Timeout,
                changed = self.stop.changed(), if self.watch_stop => {
                    if changed.is_err() {
                        self.watch_stop = false;
                        continue;
                    }
                    let s = *self.stop.borrow_and_update();
                    if s == Stop::Now || (s == Stop::Draining && phase == Phase::Command) {
                        return ReadEvent::Stop;
                    }
                }
            }
        }
    }

    /// Feeds newly read bytes (after any pending tail) to the session.
    async fn feed(&mut self, data: &[u8]) -> Result<(), End> {
        if self.pending.is_empty() {
            let used = self.drive(data).await?;
            self.pending.extend_from_slice(&data[used..]);
        } else {
            let mut pending = std::mem::take(&mut self.pending);
            pending.extend_from_slice(data);
            let used = self.drive(&pending).await?;
            pending.drain(..used);
            self.pending = pending;
        }
        if self.pending.len() > MAX_PENDING {
            tracing::warn!(
                "closing from={}: {} bytes of input left unconsumed",
                self.peer,
                self.pending.len()
            );
            return Err(End::Overflow);
        }
        Ok(())
    }

    /// Runs the session over `input` until it needs more bytes, committing messages on the way.
    /// Returns how many bytes it consumed.
    async fn drive(&mut self, input: &[u8]) -> Result<usize, End> {
        if self.dnsbl.is_some() {
            self.settle_dnsbl().await;
        }
        let mut used = 0;
        loop {
            let res = self.session.handle_input(
                Instant::now(),
                &input[used..],
                &mut self.out,
                &mut self.sink,
            );
            let n = match res {
                Ok(n) => n,
                Err(closed) => {
                    // A message refused in this same batch (e.g. 552 then QUIT) is settled
                    // first, so it is counted as refused, not as aborted.
                    self.end_message().await;
                    self.write_out().await?;
                    return Err(End::Closed(closed));
                }
            };
            used += n;
            if self.session.phase() == Phase::AwaitingVerdict {
                if let Err(closed) = self.verify_rcpt().await {
                    self.write_out().await?;
                    return Err(End::Closed(closed));
                }
            }
            self.flush_body().await;
            let acked_at = self.end_message().await;
            self.write_out().await?;
            if self.session.phase() == Phase::StartTls {
                // CVE-2011-0411: whatever followed the STARTTLS line was sent before the
                // handshake; it is dropped unseen, never given to rustls or the session.
                let dropped = (input.len() - used) as u64;
                ReactorStats::add(&self.r.stats.counters.tls_discarded_bytes, dropped);
                if dropped > 0 {
                    tracing::info!(
                        "starttls from={} discarded={dropped} (bytes sent after STARTTLS before the handshake)",
                        self.peer
                    );
                }
                return Ok(input.len());
            }
            if let Some(eod) = acked_at {
                self.r.stats.record_ack(eod.elapsed());
            }
            // Stopping: a session that has just finished a transaction must not start another
            // from commands already pipelined behind it; it gets 421 4.3.2 now.
            if *self.stop.borrow() != Stop::Running && self.session.phase() == Phase::Command {
                return Err(self.close_for_shutdown().await);
            }
            if used >= input.len() || (acked_at.is_none() && n == 0) {
                return Ok(used);
            }
        }
    }

    /// The session waits for a RCPT verdict: asks the verifier (a channel send, never
    /// blocking), awaits its answer (bounded by [`Verifier::wait_limit`]), counts, logs, and
    /// hands the verdict to the session.
    ///
    /// [`Verifier::wait_limit`]: crate::relay::verify::Verifier::wait_limit
    async fn verify_rcpt(&mut self) -> Result<(), Closed> {
        let Some(address) = self.session.awaiting_verdict().map(str::to_owned) else {
            return Ok(());
        };
        let started = Instant::now();
        let answer = match &self.r.abuse.verify {
            Some(v) => match v.ask(&address) {
                Ok(rx) => match tokio::time::timeout(v.wait_limit(), rx).await {
                    Ok(Ok(a)) => a,
                    _ => Answer::new(Verdict::Unverified, Source::Failed, "no answer in time"),
                },
                Err(a) => a,
            },
            // The session asks only when a verifier is configured.
            None => Answer::new(Verdict::Unverified, Source::Failed, "no verifier"),
        };
        let c = &self.r.stats.counters;
        if answer.probed {
            ReactorStats::inc(&c.verify_probes);
        }
        match answer.source {
            Source::Cache | Source::Stale => ReactorStats::inc(&c.verify_cache_hits),
            Source::Joined => ReactorStats::inc(&c.verify_coalesced),
            Source::Probe | Source::Busy | Source::Failed => {}
        }
        let ms = started.elapsed().as_millis();
        let why = match answer.verdict {
            Verdict::Accepted => {
                tracing::debug!(
                    "verified rcpt=<{address}> client={} source={} ms={ms} reply=\"{}\"",
                    self.peer.ip(),
                    answer.source.name(),
                    answer.detail
                );
                None
            }
            Verdict::Refused => {
                ReactorStats::inc(&c.refused_unverified);
                Some(RecipientRefusal::VerifyRefused)
            }
            Verdict::Unverified => {
                ReactorStats::inc(&c.deferred_unverified);
                Some(RecipientRefusal::Unverified)
            }
        };
        if let Some(why) = why {
            let (code, status) = why.reply();
            tracing::info!(
                "reject rcpt=<{address}> from=<{}> client={} reason={} reply={code} {status} source={} ms={ms} next-hop=\"{}\"",
                self.session.envelope().mail_from,
                self.peer.ip(),
                why.name(),
                answer.source.name(),
                answer.detail
            );
        }
        self.session
            .handle_verdict(Instant::now(), answer.verdict, &mut self.out)
    }

    /// Awaits the DNSBL verdict (bounded by [`super::dnsbl::DNSBL_WAIT`] from the connect; a
    /// task wait, never a blocked reactor) and blocks the client's recipients if it is listed.
    async fn settle_dnsbl(&mut self) {
        let (Some(check), Some(d)) = (self.dnsbl.take(), self.r.abuse.dnsbl.clone()) else {
            return;
        };
        let v = d.verdict(check).await;
        if v.failures > 0 {
            ReactorStats::add(&self.r.stats.counters.dnsbl_failures, u64::from(v.failures));
            tracing::info!(
                "dnsbl client={} lookups-failed={} (counted as not listed)",
                self.peer.ip(),
                v.failures
            );
        }
        if !v.listed.is_empty() {
            tracing::info!(
                "dnsbl client={} listed-by={} score={} blocked={}",
                self.peer.ip(),
                v.listed.join(","),
                v.score,
                v.blocked_by.is_some()
            );
        }
        if let Some(zone) = v.blocked_by {
            self.session.block_recipients(&zone);
        }
    }

    /// Hands the body bytes pushed during the last `handle_input` to the spool.
    async fn flush_body(&mut self) {
        let sink = &mut self.sink;
        if sink.failed.is_some() || sink.ended.is_some() {
            return;
        }
        if let Some(w) = sink.writer.as_mut() {
            if let Err(e) = w.flush().await {
                tracing::warn!("spool write failed from={}: {e}", self.peer);
                sink.failed = Some(commit_error(&e));
            }
        }
    }

    /// If the session saw the end of a message: commits (or aborts) it and tells the session.
    /// Returns when the end of DATA was seen if a commit was answered (for the ack latency).
    async fn end_message(&mut self) -> Option<Instant> {
        let stats = &self.r.stats;
        let ended = self.sink.ended.take();
        if ended.is_none() && self.session.phase() != Phase::AwaitingCommit {
            return None;
        }
        let eod = self.sink.eod.unwrap_or_else(Instant::now);
        let writer = self.sink.writer.take();
        match ended {
            Some(Err(rejection)) => {
                if let Some(w) = writer {
                    w.abort().await;
                }
                self.rejected += 1;
                stats.message(match rejection {
                    Rejection::TooBig => MessageOutcome::TooBig,
                    Rejection::BareLineEnding => MessageOutcome::BareLineEnding,
                    Rejection::TooManyHops => MessageOutcome::TooManyHops,
                    Rejection::Discarded => MessageOutcome::Aborted,
                });
                let reason = rejection.name();
                // Past the limit the session stops handing on body bytes, so `sink.size`
                // only counts up to it: log the limit instead of a misleading small size.
                let size = match rejection {
                    Rejection::TooBig => {
                        format!(">{}", self.r.session_config.max_message_size)
                    }
                    Rejection::BareLineEnding | Rejection::TooManyHops | Rejection::Discarded => {
                        self.sink.size.to_string()
                    }
                };
                tracing::info!(
                    "rejected from=<{}> client={} reason={reason} size={size}",
                    self.sink.from,
                    self.peer.ip(),
                );
                None
            }
            // Ok, or the session waits for a commit we never heard of (a missing `end`):
            // answer it either way so the session cannot hang.
            _ => {
                let result = match (writer, self.sink.failed.take()) {
                    (Some(w), None) => w.commit().await.map_err(|e| {
                        tracing::warn!("spool commit failed from={}: {e}", self.peer);
                        commit_error(&e)
                    }),
                    (Some(w), Some(e)) => {
                        w.abort().await;
                        Err(e)
                    }
                    (None, e) => Err(e.unwrap_or(CommitError::Io)),
                };
                stats.set_spool(self.r.spool.stats());
                match &result {
                    Ok(id) => {
                        self.messages += 1;
                        // Durable now: hand it on (a lock-free channel push), only when
                        // routes are configured.
                        if let Some(d) = &self.r.delivery {
                            if let Ok(id) = id.parse() {
                                d.committed(id);
                            }
                        }
                        stats.message(MessageOutcome::Accepted {
                            bytes: self.sink.size,
                        });
                        tracing::info!(
                            "accepted id={id} from=<{}> rcpts={} size={} ms={} client={}",
                            self.sink.from,
                            self.sink.rcpts,
                            self.sink.size,
                            eod.elapsed().as_millis(),
                            self.peer.ip()
                        );
                    }
                    Err(e) => {
                        self.rejected += 1;
                        stats.message(match e {
                            CommitError::NoSpace => MessageOutcome::NoSpace,
                            CommitError::Io => MessageOutcome::Io,
                        });
                    }
                }
                self.session.handle_commit(
                    Instant::now(),
                    result.as_deref().map_err(|e| *e),
                    &mut self.out,
                );
                Some(eod)
            }
        }
    }

    /// Writes the batch of replies in `out` with one `write_all`, bounded by the idle timeout
    /// (checked by the reactor's sweep, so up to one tick late); under TLS, encrypted (with
    /// whatever else rustls has to send).
    async fn write_out(&mut self) -> Result<(), End> {
        let tls_pending = self.tls.as_ref().is_some_and(|t| t.wants_write());
        if self.out.is_empty() && !tls_pending {
            return Ok(());
        }
        self.r.stats.replies(self.session.take_replies());
        if let Some(tls) = self.tls.as_mut() {
            let wire = tls.seal(&self.out).map_err(End::Io)?;
            self.out.clear();
            let wire = self.write_raw(wire).await?;
            if let Some(tls) = self.tls.as_mut() {
                tls.recycle_wire(wire);
            }
            return Ok(());
        }
        let out = std::mem::take(&mut self.out);
        self.out = self.write_raw(out).await?;
        Ok(())
    }

    /// Writes `buf` with one `write_all`, bounded by the idle timeout; returns it emptied.
    async fn write_raw(&self, buf: Vec<u8>) -> Result<Vec<u8>, End> {
        let write = self.stream.write_all(buf);
        match self
            .deadline
            .within(write_deadline(self.r.idle_timeout), write)
            .await
        {
            Ok((Ok(()), mut buf)) => {
                buf.clear();
                Ok(buf)
            }
            Ok((Err(e), _)) => Err(End::Io(e)),
            Err(_) => Err(End::WriteTimeout),
        }
    }

    /// Decrypts newly read bytes and feeds the plaintext to the session, in chunks of at most
    /// [`super::tls::PLAINTEXT_LIMIT`].
    async fn feed_tls(&mut self, mut data: &[u8]) -> Result<(), End> {
        loop {
            let Some(tls) = self.tls.as_mut() else {
                return Ok(());
            };
            let plain = match tls.decrypt(&mut data) {
                Ok(p) => p,
                Err(f) => return Err(self.tls_failed(f).await),
            };
            let fed = if plain.is_empty() {
                Ok(())
            } else {
                self.feed(&plain).await
            };
            if let Some(tls) = self.tls.as_mut() {
                tls.recycle(plain);
            }
            fed?;
            if data.is_empty() {
                // Anything rustls wants to say (a KeyUpdate answer, an alert).
                return self.write_out().await;
            }
        }
    }

    /// Sends the alert rustls queued (best effort) and names the end.
    async fn tls_failed(&mut self, f: TlsFailure) -> End {
        if let Some(tls) = self.tls.as_mut() {
            if let Ok(wire) = tls.seal(&[]) {
                let _ = self.write_raw(wire).await;
            }
        }
        End::Tls(f)
    }

    /// STARTTLS was answered 220: runs the TLS handshake over this connection's reads and
    /// writes until it completes, fails or passes the session's deadline, then tells the
    /// session. Plaintext that came in the same read as the client's last handshake message is
    /// fed to the session at once.
    async fn start_tls(&mut self) -> Result<(), End> {
        let started = Instant::now();
        // The session offers STARTTLS only when the reactor has an acceptor.
        let Some(Ok(conn)) = self.r.tls.as_ref().map(|a| a.start()) else {
            return Err(End::Tls(TlsFailure::Protocol));
        };
        self.tls = Some(Box::new(conn));
        let mut buf = Buf::heap(COMMAND_READ_SIZE);
        let mut early = Vec::new();
        let res = loop {
            let Some(tls) = self.tls.as_mut() else {
                break Err(End::Tls(TlsFailure::Protocol));
            };
            if !tls.is_handshaking() {
                break Ok(());
            }
            match self.read(buf).await {
                ReadEvent::Done(Ok(0), _) => break Err(End::Tls(TlsFailure::Protocol)),
                ReadEvent::Done(Ok(n), b) => {
                    self.bytes_in += n as u64;
                    ReactorStats::add(&self.r.stats.counters.bytes_received, n as u64);
                    let mut data = &b[..n];
                    let mut failed = None;
                    while let Some(tls) = self.tls.as_mut() {
                        match tls.decrypt(&mut data) {
                            Ok(p) => {
                                early.extend_from_slice(&p);
                                tls.recycle(p);
                            }
                            Err(f) => {
                                failed = Some(f);
                                break;
                            }
                        }
                        if data.is_empty() {
                            break;
                        }
                    }
                    if let Some(f) = failed {
                        break Err(self.tls_failed(f).await);
                    }
                    buf = b;
                    // The server's flight (ServerHello … Finished, or TLS 1.2's answers).
                    if let Err(end) = self.write_out().await {
                        break Err(end);
                    }
                }
                ReadEvent::Done(Err(e), _) => break Err(End::Io(e)),
                ReadEvent::Timeout => break Err(End::TlsTimeout),
                // No 421 in the middle of a handshake: the client could not read it.
                ReadEvent::Stop => break Err(End::Closed(Closed::Shutdown)),
            }
        };
        let stats = &self.r.stats;
        let tls = match (res, self.tls.as_ref()) {
            (Ok(()), Some(tls)) => tls,
            (res, _) => {
                let end = res.err().unwrap_or(End::Tls(TlsFailure::Protocol));
                match &end {
                    End::TlsTimeout => stats.tls(TlsOutcome::Timeout),
                    End::Tls(TlsFailure::ClientAlert) => stats.tls(TlsOutcome::ClientAlert),
                    End::Tls(TlsFailure::Protocol) | End::Io(_) => {
                        stats.tls(TlsOutcome::Protocol);
                    }
                    _ => {}
                }
                tracing::info!(
                    "starttls failed from={} reason={} ms={}",
                    self.peer,
                    end.name(),
                    started.elapsed().as_millis()
                );
                return Err(end);
            }
        };
        let info = tls.info();
        stats.tls(TlsOutcome::Completed {
            v13: tls.is_v13(),
            duration: started.elapsed(),
        });
        tracing::info!(
            "starttls from={} version={} cipher={} kx={} sni={} ms={}",
            self.peer,
            info.version,
            info.cipher,
            tls.kx_group(),
            tls.sni().unwrap_or("-"),
            started.elapsed().as_millis()
        );
        self.session.tls_started(Instant::now(), info);
        if early.is_empty() {
            Ok(())
        } else {
            self.feed(&early).await
        }
    }

    async fn close_for_shutdown(&mut self) -> End {
        let closed = self.session.handle_shutdown(&mut self.out);
        let _ = self.write_out().await;
        End::Closed(closed)
    }

    /// Aborts an unfinished message, shuts the socket down (completing any read still in
    /// flight, so the fd really closes), counts and logs.
    async fn finish(mut self, end: End) {
        let stats = &self.r.stats;
        if let Some(w) = self.sink.writer.take() {
            w.abort().await;
            stats.message(MessageOutcome::Aborted);
            tracing::info!(
                "aborted from=<{}> client={} size={} (connection ended mid-message)",
                self.sink.from_current,
                self.peer.ip(),
                self.sink.size
            );
        }
        let _ = self.stream.shutdown(Shutdown::Both);
        let reason = end.name();
        let duration = self.started.elapsed();
        stats.session_ended(end.counted_as(), duration);
        match &end {
            End::Io(e) => tracing::info!(
                "disconnect from={} reason={reason} error=\"{e}\" messages={} rejected={} bytes={} ms={}",
                self.peer,
                self.messages,
                self.rejected,
                self.bytes_in,
                duration.as_millis()
            ),
            _ => tracing::info!(
                "disconnect from={} reason={reason} messages={} rejected={} bytes={} ms={}",
                self.peer,
                self.messages,
                self.rejected,
                self.bytes_in,
                duration.as_millis()
            ),
        }
    }
}

/// The [`BodySink`] of one connection: streams body segments into the spool writer.
struct SpoolSink<'r> {
    spool: &'r Spool,
    /// For the refusal counters.
    stats: &'r ReactorStats,
    client_ip: IpAddr,
    /// The message being received, from `begin` until commit/abort.
    writer: Option<MessageWriter>,
    /// A spool write failed; the rest of the body is dropped and the end answered 451/452.
    failed: Option<CommitError>,
    /// Set by `end`, taken by the driver after `handle_input`.
    ended: Option<Result<(), Rejection>>,
    /// When `end` was called (start of the ack latency).
    eod: Option<Instant>,
    /// Body bytes of the current message.
    size: u64,
    /// MAIL FROM of the message at `end`, for the log line.
    from: String,
    /// MAIL FROM of the message in progress (for an abort log line).
    from_current: String,
    /// Recipients of the message at `end`.
    rcpts: usize,
}

impl<'r> SpoolSink<'r> {
    fn new(spool: &'r Spool, stats: &'r ReactorStats, client_ip: IpAddr) -> Self {
        Self {
            spool,
            stats,
            client_ip,
            writer: None,
            failed: None,
            ended: None,
            eod: None,
            size: 0,
            from: String::new(),
            from_current: String::new(),
            rcpts: 0,
        }
    }
}

impl BodySink for SpoolSink<'_> {
    fn begin(&mut self, envelope: &Envelope) {
        let record = envelope_record(envelope, self.client_ip, SystemTime::now());
        self.writer = Some(self.spool.begin(&record));
        self.failed = None;
        self.ended = None;
        self.eod = None;
        self.size = 0;
        self.from_current.clone_from(&envelope.mail_from);
    }

    fn segment(&mut self, bytes: &[u8]) {
        self.size += bytes.len() as u64;
        if self.failed.is_none() {
            if let Some(w) = self.writer.as_mut() {
                w.push(bytes);
            }
        }
    }

    fn end(&mut self, envelope: &Envelope, outcome: Result<(), Rejection>) {
        self.ended = Some(outcome);
        self.eod = Some(Instant::now());
        self.from.clone_from(&envelope.mail_from);
        self.rcpts = envelope.rcpts.len();
    }

    fn recipient_refused(&mut self, envelope: &Envelope, address: &str, why: RecipientRefusal) {
        match why {
            RecipientRefusal::UnknownUser => {
                ReactorStats::inc(&self.stats.counters.refused_unknown_recipient);
            }
            RecipientRefusal::RateLimited => {
                ReactorStats::inc(&self.stats.counters.refused_recipient_rate);
            }
            RecipientRefusal::Dnsbl => {
                ReactorStats::inc(&self.stats.counters.refused_dnsbl);
            }
            _ => {}
        }
        let (code, status) = why.reply();
        tracing::info!(
            "reject rcpt=<{address}> from=<{}> client={} reason={} reply={code} {status}",
            envelope.mail_from,
            self.client_ip,
            why.name()
        );
    }

    fn message_rate_limited(&mut self, from: &str) {
        self.count_message_rate(from);
    }
}

impl SpoolSink<'_> {
    /// See [`BodySink::message_rate_limited`] (kept out of the trait impl above for merges).
    fn count_message_rate(&self, from: &str) {
        ReactorStats::inc(&self.stats.counters.refused_message_rate);
        tracing::info!(
            "reject mail from=<{from}> client={} reason=message-rate reply=450 4.7.1",
            self.client_ip
        );
    }
}

/// The spool's record of a message's envelope: the session's envelope, where it came from and
/// when DATA started. The one place the session's envelope becomes the spool's.
fn envelope_record(envelope: &Envelope, client_ip: IpAddr, at: SystemTime) -> EnvelopeRecord {
    EnvelopeRecord {
        client_ip,
        received_us: crate::spool::frame::unix_us(at),
        helo: envelope.helo.clone(),
        esmtp: envelope.esmtp,
        mail_from: envelope.mail_from.clone(),
        declared_size: envelope.declared_size,
        body_8bitmime: envelope.body_8bitmime,
        smtputf8: envelope.smtputf8,
        rcpts: envelope.rcpts.clone(),
        tls: envelope.tls.as_ref().map(|t| TlsTrace {
            version: t.version.clone(),
            cipher: t.cipher.clone(),
            bits: t.bits,
        }),
    }
}

/// 452 for a full disk, 451 for anything else.
fn commit_error(e: &SpoolError) -> CommitError {
    match e {
        SpoolError::NoSpace => CommitError::NoSpace,
        _ => CommitError::Io,
    }
}

/// When a write started now must have completed: `idle` from now (`None` if unrepresentable).
/// The one clock read per write; reads take the session's deadline and read no clock.
fn write_deadline(idle: std::time::Duration) -> Option<Instant> {
    Instant::now().checked_add(idle)
}
