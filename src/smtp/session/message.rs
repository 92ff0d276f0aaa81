//! The message body's commands and its end: `BDAT <size> [LAST]` (whether a chunk's octets are
//! stored or refused, the sink's `begin` at the first stored chunk, the reply after a chunk's
//! last octet, the end of the message at a LAST chunk), a partial BDAT message dropped by RSET or
//! HELO/EHLO, and the end of a DATA message at its terminator (the sink's `end`, then the wait
//! for the commit or the refusal's reply).
//!
//! It does not read body bytes: the input loop in `session.rs` feeds DATA bytes to the scanner
//! and chunk octets to the sink, and answers the DATA command itself (that loop is the hot path
//! and stays in one piece). BDAT's arguments, chunk accounting and the line-ending check of
//! chunk content are in `smtp/bdat.rs`.

use std::time::Instant;

use super::{Session, State};
use crate::smtp::bdat::{Chunk, Disposition, Ending, Transfer};
use crate::smtp::reply::{self, Out, Reply};
use crate::smtp::{BareLf, BodySink, Closed, Rejection};

impl Session {
    /// `BDAT <size> [LAST]`: decides where the chunk's octets go and starts reading them.
    pub(super) fn handle_bdat(&mut self, size: u64, ending: Ending, sink: &mut impl BodySink) {
        // `last_progress` is the time this BDAT line was read.
        let deadline = self
            .config
            .data_timeout
            .and_then(|t| self.last_progress.checked_add(t));
        let disposition = self.chunk_disposition(size, ending, sink);
        self.state = State::Chunk(Chunk {
            remaining: size,
            size,
            last: ending == Ending::Last,
            disposition,
            deadline,
        });
    }

    /// Whether a chunk of `size` octets is stored or refused (see the type docs); begins the
    /// sink's message at the first stored chunk and ends it when the transaction fails here.
    fn chunk_disposition(
        &mut self,
        size: u64,
        ending: Ending,
        sink: &mut impl BodySink,
    ) -> Disposition {
        let refuse = |reply| Disposition::Refuse { reply, count: true };
        let normalize = self.config.bare_lf == BareLf::Normalize;
        let max_hops = self.config.max_hops;
        if ending == Ending::Invalid {
            if self.in_transaction {
                self.bdat
                    .get_or_insert_with(|| Transfer::new(normalize, max_hops));
                self.fail_transfer(reply::BDAT_FAILED, Rejection::Discarded, sink);
            }
            return refuse(reply::BDAT_SYNTAX);
        }
        if !self.in_transaction {
            return refuse(reply::NEED_MAIL);
        }
        if self.envelope.rcpts.is_empty() {
            return refuse(reply::NEED_RCPT);
        }
        let t = self
            .bdat
            .get_or_insert_with(|| Transfer::new(normalize, max_hops));
        if let Some(reply) = t.failed {
            return Disposition::Refuse {
                reply,
                count: false,
            };
        }
        if !t.open {
            t.open = true;
            sink.begin(&self.envelope);
        }
        let total = t.octets.saturating_add(size);
        if total > self.config.max_message_size {
            self.fail_transfer(reply::TOO_BIG, Rejection::TooBig, sink);
            return refuse(reply::TOO_BIG);
        }
        t.octets = total;
        Disposition::Store
    }

    /// The BDAT transaction failed: later chunks get `reply`; an open message ends with `why`.
    fn fail_transfer(&mut self, reply: Reply, why: Rejection, sink: &mut impl BodySink) {
        let Some(t) = self.bdat.as_mut() else {
            return;
        };
        t.failed = Some(reply);
        if std::mem::take(&mut t.open) {
            sink.end(&self.envelope, Err(why));
            self.yield_now = true;
        }
    }

    /// RSET, HELO/EHLO: a partial BDAT message is dropped (nothing stored).
    pub(super) fn discard_bdat(&mut self, sink: &mut impl BodySink) {
        if let Some(t) = self.bdat.as_mut() {
            if std::mem::take(&mut t.open) {
                sink.end(&self.envelope, Err(Rejection::Discarded));
                self.yield_now = true;
            }
        }
    }

    /// The last octet of a chunk was read: answer it, or end the message at a LAST chunk.
    pub(super) fn end_chunk(
        &mut self,
        now: Instant,
        out: &mut Out<'_>,
        sink: &mut impl BodySink,
    ) -> Result<(), Closed> {
        let State::Chunk(chunk) = std::mem::replace(&mut self.state, State::Command) else {
            return Ok(());
        };
        self.last_progress = now;
        let t = match (chunk.disposition, self.bdat.as_mut()) {
            (Disposition::Refuse { reply, count }, _) => {
                if chunk.last && self.bdat.is_some() {
                    self.reset_transaction(); // the failed message is over
                }
                reply.encode(out);
                return if count { self.count_error(out) } else { Ok(()) };
            }
            (Disposition::Store, Some(t)) => t,
            // A stored chunk always has its transfer; answer as if it failed.
            (Disposition::Store, None) => return self.fail(out, reply::BDAT_FAILED),
        };
        let refused = if chunk.last {
            t.lines.refused_at_end()
        } else {
            t.lines.refused()
        };
        if refused {
            self.fail_transfer(
                reply::BODY_BARE_LINE_ENDING,
                Rejection::BareLineEnding,
                sink,
            );
            if chunk.last {
                self.reset_transaction();
            }
            return self.fail(out, reply::BODY_BARE_LINE_ENDING);
        }
        if chunk.last && t.hops.over() {
            self.fail_transfer(reply::TOO_MANY_HOPS, Rejection::TooManyHops, sink);
            self.reset_transaction();
            return self.fail(out, reply::TOO_MANY_HOPS);
        }
        if chunk.last {
            t.open = false;
            sink.end(&self.envelope, Ok(()));
            self.state = State::AwaitingCommit;
            return Ok(());
        }
        reply::encode_chunk_received(out, chunk.size);
        Ok(())
    }

    /// The terminator was seen: tell the sink, then wait for the commit or answer the refusal.
    pub(super) fn end_message(
        &mut self,
        now: Instant,
        outcome: Result<(), Rejection>,
        out: &mut Out<'_>,
        sink: &mut impl BodySink,
    ) -> Result<(), Closed> {
        sink.end(&self.envelope, outcome);
        match outcome {
            Ok(()) => {
                self.state = State::AwaitingCommit;
                Ok(())
            }
            Err(rejection) => {
                self.yield_now = true;
                self.reset_transaction();
                self.state = State::Command;
                self.last_progress = now;
                self.fail(
                    out,
                    match rejection {
                        Rejection::TooBig => reply::TOO_BIG,
                        Rejection::TooManyHops => reply::TOO_MANY_HOPS,
                        Rejection::BareLineEnding | Rejection::Discarded => {
                            reply::BODY_BARE_LINE_ENDING
                        }
                    },
                )
            }
        }
    }
}
