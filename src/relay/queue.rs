//! Queue state: what is left to do for each spooled message, rebuilt from the segments (the
//! envelopes) and the delivery journal (the outcomes). Pure: no I/O, time passed in.
//!
//! A recipient is pending (never tried, or deferred with a next-retry time), delivered, or
//! failed (a 5xx or expired; held, visible, until deleted: bounces are a later issue). A
//! message is *finished* when every recipient is delivered or the message was deleted; only
//! finished messages free their segment.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::spool::id::MessageId;
use crate::spool::journal::{DeliveryRecord, RecordKind};
use crate::spool::reader::StoredMessage;

/// Default first retry after a deferral.
pub const DEFAULT_RETRY_FIRST: Duration = Duration::from_secs(60);
/// Default longest retry interval (the backoff doubles up to it).
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(3600);
/// Default queue lifetime: a recipient still deferred after this fails (as Postfix).
pub const DEFAULT_MAX_QUEUE_LIFETIME: Duration = Duration::from_secs(5 * 86_400);

/// The wait before the next attempt after `attempts` failed ones: `first`, doubling, capped at
/// `max`.
pub fn backoff(attempts: u32, first: Duration, max: Duration) -> Duration {
    let shift = attempts.saturating_sub(1).min(30);
    first.saturating_mul(1u32 << shift).min(max)
}

/// Where a recipient is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RcptState {
    /// To be tried (at `next_us`).
    Pending,
    /// The next hop has it.
    Delivered,
    /// Permanently failed or expired; held.
    Failed,
}

/// One recipient of a queued message.
#[derive(Debug, Clone, Serialize)]
pub struct RcptEntry {
    /// The forward-path.
    pub addr: String,
    /// Where it is.
    pub state: RcptState,
    /// Attempts so far.
    pub attempts: u32,
    /// Pending: not before this (µs since the epoch; 0: now).
    pub next_us: u64,
    /// The last reply (or local reason), if tried.
    pub last_reply: Option<String>,
    /// When it was last tried (µs since the epoch; 0: never).
    pub last_us: u64,
}

/// A spooled message and its recipients' states.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    /// The stored message.
    pub msg: StoredMessage,
    /// Its recipients, in envelope order.
    pub rcpts: Vec<RcptEntry>,
    /// Deleted by the operator.
    pub deleted: bool,
}

impl QueuedMessage {
    /// A message nothing happened to yet.
    pub fn new(msg: StoredMessage) -> Self {
        let rcpts = msg
            .envelope
            .rcpts
            .iter()
            .map(|a| RcptEntry {
                addr: a.clone(),
                state: RcptState::Pending,
                attempts: 0,
                next_us: 0,
                last_reply: None,
                last_us: 0,
            })
            .collect();
        Self {
            msg,
            rcpts,
            deleted: false,
        }
    }

    /// Applies a journal record about this message.
    pub fn apply(&mut self, r: &DeliveryRecord) {
        if r.kind == RecordKind::Deleted {
            self.deleted = true;
            return;
        }
        let Some(e) = self.rcpts.get_mut(r.rcpt as usize) else {
            return;
        };
        // A delivered recipient stays delivered (a late deferral of a duplicate attempt
        // cannot undo it).
        if e.state == RcptState::Delivered {
            return;
        }
        e.state = match r.kind {
            RecordKind::Delivered => RcptState::Delivered,
            RecordKind::Failed => RcptState::Failed,
            RecordKind::Deferred | RecordKind::Deleted => RcptState::Pending,
        };
        e.attempts = e.attempts.max(r.attempts);
        e.next_us = r.next_us;
        e.last_reply = Some(r.reply.clone());
        e.last_us = r.at_us;
    }

    /// Every recipient delivered, or deleted: its segment space may go.
    pub fn is_finished(&self) -> bool {
        self.deleted || self.rcpts.iter().all(|r| r.state == RcptState::Delivered)
    }

    /// Some recipient failed (and the message is not deleted).
    pub fn has_failed(&self) -> bool {
        !self.deleted && self.rcpts.iter().any(|r| r.state == RcptState::Failed)
    }

    /// Some recipient is pending and was tried before.
    pub fn is_deferred(&self) -> bool {
        !self.deleted
            && self
                .rcpts
                .iter()
                .any(|r| r.state == RcptState::Pending && r.attempts > 0)
    }

    /// Recipients still pending.
    pub fn pending(&self) -> usize {
        if self.deleted {
            return 0;
        }
        self.rcpts
            .iter()
            .filter(|r| r.state == RcptState::Pending)
            .count()
    }

    /// Records that restate this message's recipients (for a compacted journal): one per
    /// recipient that was tried.
    pub fn summary_records(&self) -> Vec<DeliveryRecord> {
        let id = self.msg.id;
        if self.deleted {
            return vec![record(RecordKind::Deleted, id, 0, 0, 0, 0, String::new())];
        }
        self.rcpts
            .iter()
            .enumerate()
            .filter(|(_, r)| r.attempts > 0 || r.state != RcptState::Pending)
            .map(|(i, r)| {
                let kind = match r.state {
                    RcptState::Pending => RecordKind::Deferred,
                    RcptState::Delivered => RecordKind::Delivered,
                    RcptState::Failed => RecordKind::Failed,
                };
                record(
                    kind,
                    id,
                    i as u32,
                    r.last_us,
                    r.next_us,
                    r.attempts,
                    r.last_reply.clone().unwrap_or_default(),
                )
            })
            .collect()
    }
}

/// A journal record (`code` parsed from the reply's first three digits).
pub fn record(
    kind: RecordKind,
    id: MessageId,
    rcpt: u32,
    at_us: u64,
    next_us: u64,
    attempts: u32,
    reply: String,
) -> DeliveryRecord {
    let code = reply.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
    DeliveryRecord {
        kind,
        id,
        rcpt,
        at_us,
        next_us,
        attempts,
        code,
        reply,
    }
}

/// The queue: every spooled message with the journal's outcomes applied, by id. Records about
/// messages no longer in the spool are ignored.
pub fn build(
    messages: Vec<StoredMessage>,
    records: &[DeliveryRecord],
) -> BTreeMap<MessageId, QueuedMessage> {
    let mut q: BTreeMap<MessageId, QueuedMessage> = messages
        .into_iter()
        .map(|m| (m.id, QueuedMessage::new(m)))
        .collect();
    for r in records {
        if let Some(m) = q.get_mut(&r.id) {
            m.apply(r);
        }
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let f = Duration::from_secs(60);
        let m = Duration::from_secs(3600);
        let got: Vec<u64> = (1..=9).map(|a| backoff(a, f, m).as_secs()).collect();
        assert_eq!(got, [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]);
        assert_eq!(backoff(u32::MAX, f, m), m);
    }
}
