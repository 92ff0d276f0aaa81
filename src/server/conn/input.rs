//! Input: one read of the socket raced against the session's deadline and the stop state
//! (`read`, and what it turned into, `ReadEvent`), the consumed-bytes rule (`feed`: bytes the
//! session did not consume stay in `pending`, in front of the next read's, under
//! [`MAX_PENDING`]) and the run of the session over the input (`drive`): after each
//! `handle_input` the RCPT verdict, the body flush, the end of a message and the batch's write,
//! then the bytes that followed a STARTTLS line dropped and counted.
//!
//! It does not pick read buffers (see `mod.rs`), write (see `output`), talk to the spool (see
//! `message`), decrypt (see `starttls`) or shut the socket down (see `end`).

use std::io;
use std::time::Instant;

use super::end::End;
use super::{Conn, MAX_PENDING};
use crate::buffers::Buf;
use crate::server::shutdown::Stop;
use crate::smtp::Phase;
use crate::stats::ReactorStats;

/// What a read turned into.
pub(super) enum ReadEvent {
    /// The read completed (bytes, EOF or error) and gave the buffer back.
    Done(io::Result<usize>, Buf),
    /// The session's deadline passed first.
    Timeout,
    /// The server is stopping and this session must go.
    Stop,
}

impl Conn<'_> {
    /// Reads into `buf`, racing the session deadline and the stop state. On `Timeout`/`Stop`
    /// the read stays in flight: the caller must close the connection (`finish` does).
    pub(super) async fn read(&mut self, buf: Buf) -> ReadEvent {
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
    pub(super) async fn feed(&mut self, data: &[u8]) -> Result<(), End> {
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
}
