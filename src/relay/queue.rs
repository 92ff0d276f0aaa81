//! Queue state: what is left to do for each spooled message, rebuilt from the segments (the
//! envelopes) and the delivery journal (the outcomes). Pure: no I/O, time passed in.
//!
//! A recipient is pending (never tried, or deferred with a next-retry time), delivered, or
//! failed (a 5xx or expired; its sender's bounce was spooled before the failure was recorded,
//! or there is no sender to tell: `<>`). A message is *finished* when no recipient is pending
//! (each is delivered or failed) or the message was deleted; only finished messages free their
//! segment.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
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
    /// Permanently failed or expired; the sender was sent a DSN (unless it is `<>`).
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
    /// Its sender was warned of the delay (`--delay-warning`).
    pub warned: bool,
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
                warned: false,
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
        if r.kind == RecordKind::Warned {
            e.warned = true;
            return;
        }
        // A delivered recipient stays delivered (a late deferral of a duplicate attempt
        // cannot undo it).
        if e.state == RcptState::Delivered {
            return;
        }
        e.state = match r.kind {
            RecordKind::Delivered => RcptState::Delivered,
            RecordKind::Failed => RcptState::Failed,
            RecordKind::Deferred | RecordKind::Deleted | RecordKind::Warned => RcptState::Pending,
        };
        e.attempts = e.attempts.max(r.attempts);
        e.next_us = r.next_us;
        e.last_reply = Some(r.reply.clone());
        e.last_us = r.at_us;
    }

    /// `queue retry`: every pending recipient is due now (its backoff forgotten until the next
    /// deferral; not journaled, so a restart restores the recorded retry times). Returns how
    /// many recipients are pending.
    pub fn retry_now(&mut self) -> usize {
        if self.deleted {
            return 0;
        }
        let mut n = 0;
        for r in &mut self.rcpts {
            if r.state == RcptState::Pending {
                r.next_us = 0;
                n += 1;
            }
        }
        n
    }

    /// No recipient pending (each delivered, or failed and bounced), or deleted: its segment
    /// space may go.
    pub fn is_finished(&self) -> bool {
        self.deleted || self.rcpts.iter().all(|r| r.state != RcptState::Pending)
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

    /// When the earliest pending recipient is due (µs since the epoch), `None` if none is
    /// pending (or the message is deleted).
    pub fn next_due(&self) -> Option<u64> {
        if self.deleted {
            return None;
        }
        self.rcpts
            .iter()
            .filter(|r| r.state == RcptState::Pending)
            .map(|r| r.next_us)
            .min()
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
    /// recipient that was tried, and one per delay warning sent.
    pub fn summary_records(&self) -> Vec<DeliveryRecord> {
        let id = self.msg.id;
        if self.deleted {
            return vec![record(RecordKind::Deleted, id, 0, 0, 0, 0, String::new())];
        }
        let warned = self
            .rcpts
            .iter()
            .enumerate()
            .filter(|(_, r)| r.warned)
            .map(|(i, _)| record(RecordKind::Warned, id, i as u32, 0, 0, 0, String::new()));
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
            .chain(warned)
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

/// Which messages are due when: a min-heap of `(due µs, id)`, so the scheduler looks only at
/// messages with something due instead of walking the whole queue (a queue of a million
/// deferred messages costs nothing until they come due).
///
/// Entries are hints, not the truth: a message may have several entries, or a stale one (its
/// recipient was delivered meanwhile, or retried earlier). The scheduler checks each popped
/// message's recipients and pushes the message again at its next due time
/// ([`QueuedMessage::next_due`]) if something is left for later.
#[derive(Debug, Default)]
pub struct DueQueue {
    heap: BinaryHeap<Reverse<(u64, MessageId)>>,
}

impl DueQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `id` due at `at_us` (µs since the epoch; 0: now).
    pub fn push(&mut self, at_us: u64, id: MessageId) {
        self.heap.push(Reverse((at_us, id)));
    }

    /// Takes every id due at or before `now_us`, each once, earliest first.
    pub fn pop_due(&mut self, now_us: u64) -> Vec<MessageId> {
        let mut out: Vec<MessageId> = Vec::new();
        while let Some(Reverse((at, id))) = self.heap.peek().copied() {
            if at > now_us {
                break;
            }
            self.heap.pop();
            if !out.contains(&id) {
                out.push(id);
            }
        }
        out
    }

    /// Entries held (stale ones included).
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_queue_pops_due_ids_once_in_time_order() {
        let (a, b, c) = (
            MessageId::new(1, 0, 1),
            MessageId::new(1, 0, 2),
            MessageId::new(2, 1, 3),
        );
        let mut q = DueQueue::new();
        q.push(50, b);
        q.push(10, a);
        q.push(30, a); // a second (stale) entry for a
        q.push(100, c);
        assert_eq!(q.pop_due(5), vec![]);
        assert_eq!(q.pop_due(50), vec![a, b]);
        assert_eq!(q.len(), 1);
        assert_eq!(q.pop_due(99), vec![]);
        assert_eq!(q.pop_due(u64::MAX), vec![c]);
        assert!(q.is_empty());
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let f = Duration::from_secs(60);
        let m = Duration::from_secs(3600);
        let got: Vec<u64> = (1..=9).map(|a| backoff(a, f, m).as_secs()).collect();
        assert_eq!(got, [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]);
        assert_eq!(backoff(u32::MAX, f, m), m);
    }
}
