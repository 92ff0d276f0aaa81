//! The message path into the spool. [`SpoolSink`], the session's [`BodySink`], begins a
//! [`MessageWriter`] when a message starts, pushes body segments into it, notes the end of the
//! message, and counts and logs refused recipients and senders. After each `handle_input`,
//! `flush_body` hands the pushed bytes to the spool and `end_message` commits the message (the
//! group fsync) or aborts it, counts and logs it, hands a committed id on to delivery and gives
//! the session the result: the 250 is written only after its commit resolved (docs/design.md,
//! invariant 1). The session's envelope becomes the spool's record here (`envelope_record`) and
//! nowhere else.
//!
//! It does not write replies (see `output`), know the spool's frames ([`crate::spool`]) or
//! abort a message the connection left unfinished (see `end`).

use std::net::IpAddr;
use std::time::{Instant, SystemTime};

use super::Conn;
use crate::smtp::{BodySink, CommitError, Envelope, Phase, RecipientRefusal, Rejection};
use crate::spool::{EnvelopeRecord, MessageWriter, Spool, SpoolError, TlsTrace};
use crate::stats::{MessageOutcome, ReactorStats};

/// The [`BodySink`] of one connection: streams body segments into the spool writer.
pub(super) struct SpoolSink<'r> {
    spool: &'r Spool,
    /// For the refusal counters.
    stats: &'r ReactorStats,
    client_ip: IpAddr,
    /// The message being received, from `begin` until commit/abort.
    pub(super) writer: Option<MessageWriter>,
    /// A spool write failed; the rest of the body is dropped and the end answered 451/452.
    failed: Option<CommitError>,
    /// Set by `end`, taken by the driver after `handle_input`.
    ended: Option<Result<(), Rejection>>,
    /// When `end` was called (start of the ack latency).
    eod: Option<Instant>,
    /// Body bytes of the current message.
    pub(super) size: u64,
    /// MAIL FROM of the message at `end`, for the log line.
    from: String,
    /// MAIL FROM of the message in progress (for an abort log line).
    pub(super) from_current: String,
    /// Recipients of the message at `end`.
    rcpts: usize,
}

impl<'r> SpoolSink<'r> {
    pub(super) fn new(spool: &'r Spool, stats: &'r ReactorStats, client_ip: IpAddr) -> Self {
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

impl Conn<'_> {
    /// Hands the body bytes pushed during the last `handle_input` to the spool.
    pub(super) async fn flush_body(&mut self) {
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
    pub(super) async fn end_message(&mut self) -> Option<Instant> {
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
