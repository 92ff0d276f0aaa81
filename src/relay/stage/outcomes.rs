//! Applying the workers' outcomes: one journal record per recipient, the DSNs of failed and
//! long-delayed recipients (each spooled before the records of what it reports), the delivery
//! log line, the counters and histograms; the queue is updated and finished messages leave it.
//! `record` writes the records and DSNs, normally at once (one segment, one append); when it
//! cannot, the queue is updated all the same, so nothing is delivered or bounced twice, and
//! they wait in its backlog. Also the journal's compaction once it grows past
//! [`JOURNAL_COMPACT_BYTES`].
//!
//! It does not decide what a DSN says (see `relay::bounce` and `relay::dsn`), write to the
//! disk (see `record`) or delete segments (see `segments`).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use super::record::OwedDsn;
use super::{summary, Outcome, Stage, JOURNAL_COMPACT_BYTES, RECORD_RETRY_FIRST};
use crate::relay::bounce::{self, BounceSettings};
use crate::relay::dsn::{self, RcptReport};
use crate::relay::queue::{self, backoff};
use crate::smtp::client::{RcptOutcome, Reply, Status};
use crate::spool::appender::APPENDER_REACTOR;
use crate::spool::frame::unix_us;
use crate::spool::id::MessageId;
use crate::spool::journal::{DeliveryRecord, Journal, RecordKind};

/// Recipients of one message reported by one DSN, and their records (which must wait for it).
type Reported = (Vec<RcptReport>, Vec<DeliveryRecord>);

/// What [`Stage::build_dsns`] made of the failures and delay warnings of a batch.
#[derive(Default)]
struct Dsns {
    /// The DSNs to spool, each with the records it must precede.
    owed: Vec<OwedDsn>,
    /// Records that need no DSN (a `<>` sender).
    plain: Vec<DeliveryRecord>,
    /// Records whose DSN could not be built (no spool writer): not applied, tried again.
    unbuilt: Vec<DeliveryRecord>,
}

impl Stage {
    /// Applies outcomes to the queue and has them recorded; frees finished segments once
    /// they are.
    pub(super) async fn apply(&mut self, outcomes: Vec<Outcome>) {
        let now = SystemTime::now();
        let now_us = unix_us(now);
        let mut records = Vec::new();
        // Durations for the histograms, recorded after the loop (one lock, never held across
        // the journal append's await).
        let mut attempts_took = Vec::new();
        let mut delivered_after = Vec::new();
        // Recipients whose senders get a DSN, with the records that wait for it.
        let mut failed: BTreeMap<MessageId, Reported> = BTreeMap::new();
        let mut delayed: BTreeMap<MessageId, Reported> = BTreeMap::new();
        for o in &outcomes {
            if o.route != usize::MAX {
                // A real attempt (not a local "no route" or expiry outcome).
                attempts_took.push(o.delays[1] + o.delays[2]);
            }
            let route_name = self
                .cfg
                .routes
                .all()
                .get(o.route)
                .map_or_else(|| "none".to_string(), |r| r.name.clone());
            for (&i, res) in o.rcpts.iter().zip(&o.results) {
                self.in_flight.remove(&(o.id, i));
                let Some(m) = self.queue.get(&o.id) else {
                    continue;
                };
                let Some(r) = m.rcpts.get(i) else { continue };
                let attempts = r.attempts + 1;
                // The queue lifetime ends with an attempt, as Postfix's
                // maximal_queue_lifetime does: a deferral at or past it is the last, and the
                // recipient fails (a recipient is never given up untried, e.g. after an
                // outage longer than the lifetime).
                let expires_at = m.msg.received_at() + self.cfg.max_queue_lifetime;
                let last: RcptOutcome;
                let res = if res.status == Status::Deferred
                    && o.route != usize::MAX
                    && now >= expires_at
                {
                    last = RcptOutcome {
                        status: Status::Failed,
                        reply: Reply::local(
                            550,
                            format!(
                                "5.4.7 delivery time expired after {} s in the queue; last attempt: {}",
                                self.cfg.max_queue_lifetime.as_secs(),
                                res.reply
                            ),
                        ),
                    };
                    &last
                } else {
                    res
                };
                let (kind, next_us) = match res.status {
                    Status::Delivered => (RecordKind::Delivered, 0),
                    Status::Failed => (RecordKind::Failed, 0),
                    Status::Deferred => {
                        let wait = backoff(attempts, self.cfg.retry_first, self.cfg.retry_max);
                        // The last retry falls on the expiry, not after it.
                        (RecordKind::Deferred, unix_us((now + wait).min(expires_at)))
                    }
                };
                let counter = match res.status {
                    Status::Delivered => &self.stats.delivered,
                    Status::Deferred => &self.stats.deferred,
                    Status::Failed => &self.stats.failed,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                let age = now.duration_since(m.msg.received_at()).unwrap_or_default();
                if res.status == Status::Delivered {
                    delivered_after.push(age);
                }
                let expired = o.route == usize::MAX;
                let report = RcptReport {
                    addr: r.addr.clone(),
                    action: dsn::Action::Failed,
                    status: res.reply.dsn(),
                    remote_mta: bounce::remote_mta(&o.relay),
                    // An expired recipient: the last reply it got says why better than ours.
                    diagnostic: Some(if expired {
                        r.last_reply
                            .clone()
                            .unwrap_or_else(|| res.reply.to_string())
                    } else {
                        res.reply.to_string()
                    }),
                    last_attempt: Some(if expired && r.last_us > 0 {
                        std::time::UNIX_EPOCH + Duration::from_micros(r.last_us)
                    } else {
                        now
                    }),
                };
                let warn = kind == RecordKind::Deferred
                    && !r.warned
                    && self.cfg.delay_warning.is_some_and(|w| age >= w);
                let age = age.as_secs_f64();
                tracing::info!(
                    "delivery id={} to=<{}> route={} relay={} tls={} delay={:.2} delays={:.2}/{:.2}/{:.2} dsn={} status={} ({})",
                    o.id,
                    r.addr,
                    route_name,
                    o.relay,
                    o.tls.as_deref().unwrap_or("none"),
                    age,
                    o.delays[0].as_secs_f64(),
                    o.delays[1].as_secs_f64(),
                    o.delays[2].as_secs_f64(),
                    res.reply.dsn(),
                    res.status.name(),
                    res.reply
                );
                let rec = queue::record(
                    kind,
                    o.id,
                    i as u32,
                    now_us,
                    next_us,
                    attempts,
                    res.reply.to_string(),
                );
                if kind == RecordKind::Failed {
                    let (reports, records) = failed.entry(o.id).or_default();
                    reports.push(report);
                    records.push(rec);
                    continue;
                }
                records.push(rec);
                if warn {
                    let (reports, records) = delayed.entry(o.id).or_default();
                    reports.push(RcptReport {
                        action: dsn::Action::Delayed,
                        ..report
                    });
                    records.push(queue::record(
                        RecordKind::Warned,
                        o.id,
                        i as u32,
                        now_us,
                        0,
                        0,
                        String::new(),
                    ));
                }
            }
        }
        {
            let mut hist = self.stats.histograms();
            for took in attempts_took {
                hist.record_attempt(took);
            }
            for age in delivered_after {
                hist.record_delivered(age);
            }
        }
        if records.is_empty() && failed.is_empty() && delayed.is_empty() {
            return;
        }
        // The DSNs are spooled before the records of what they report are appended: a crash
        // in between sends a DSN twice, never none.
        let dsns = self.build_dsns(failed, delayed, now);
        records.extend(dsns.plain);
        if !dsns.unbuilt.is_empty() {
            // Without its DSN a failure may not be recorded, nor applied: tried again.
            let again = unix_us(now + RECORD_RETRY_FIRST);
            for r in &dsns.unbuilt {
                self.due.push(again, r.id);
            }
        }
        // The queue changes now, whether or not the records reach the disk below: a
        // recipient the next hop took is not handed out again, a failed one not bounced
        // again. What relies on the disk (deleting segments, rewriting the journal) waits for
        // the records (see `record`).
        let mut finished = Vec::new();
        let owed_records = dsns.owed.iter().flat_map(|d| d.records.iter());
        for r in records.iter().chain(owed_records) {
            if let Some(m) = self.queue.get_mut(&r.id) {
                m.apply(r);
                if r.kind == RecordKind::Deferred {
                    self.due.push(r.next_us, r.id);
                }
                if m.is_finished() {
                    finished.push(r.id);
                }
            }
        }
        for id in finished {
            self.finish(id);
        }
        self.record(records, dsns.owed).await;
        self.reclaim();
        self.compact_journal().await;
    }

    /// One DSN per message with failed or long-delayed recipients (none for a `<>` sender),
    /// built now (while the original is queued) and spooled by `record`.
    fn build_dsns(
        &mut self,
        failed: BTreeMap<MessageId, Reported>,
        delayed: BTreeMap<MessageId, Reported>,
        now: SystemTime,
    ) -> Dsns {
        let mut out = Dsns::default();
        if failed.is_empty() && delayed.is_empty() {
            return out;
        }
        let mut appender = match self.take_appender() {
            Ok(a) => a,
            Err(e) => {
                let unbuilt: Vec<DeliveryRecord> = failed
                    .into_values()
                    .chain(delayed.into_values())
                    .flat_map(|(_, records)| records)
                    .collect();
                tracing::error!(
                    "delivery: the stage's spool writer cannot be opened: {e}; no DSN for {} recipient(s), tried again",
                    unbuilt.len()
                );
                out.unbuilt = unbuilt;
                return out;
            }
        };
        let settings = BounceSettings {
            hostname: &self.cfg.hostname,
            copy_to: self.cfg.bounce_copy.as_deref(),
        };
        let all = failed
            .into_iter()
            .map(|r| (r, false))
            .chain(delayed.into_iter().map(|r| (r, true)));
        for ((id, (reports, records)), warning) in all {
            let Some(m) = self.queue.get(&id) else {
                out.plain.extend(records);
                continue;
            };
            let retry_hours = warning.then(|| {
                let age = now.duration_since(m.msg.received_at()).unwrap_or_default();
                self.cfg.max_queue_lifetime.saturating_sub(age).as_secs() / 3600
            });
            match bounce::dsn_message(settings, &mut appender, m, &reports, retry_hours, now) {
                Some(n) => out.owed.push(OwedDsn {
                    log: format!(
                        "delivery id={id}: {} dsn={} to=<{}> ({} recipient(s))",
                        if warning { "delay warning" } else { "bounce" },
                        n.id,
                        m.msg.envelope.mail_from,
                        reports.len()
                    ),
                    msg: n,
                    records,
                }),
                None => {
                    if !warning {
                        tracing::info!(
                            "delivery id={id}: no DSN for {} failed recipient(s): the sender is <>{}",
                            reports.len(),
                            if m.msg.id.reactor() == APPENDER_REACTOR {
                                " (a DSN that failed is dropped)"
                            } else {
                                ""
                            }
                        );
                    }
                    out.plain.extend(records);
                }
            }
        }
        self.appender = Some(appender);
        out
    }

    /// Rewrites the journal from the queue once it is large; never while records are owed
    /// (the queue in memory is ahead of the disk then: a DSN may not be spooled yet).
    pub(super) async fn compact_journal(&mut self) {
        if !self.backlog.is_empty()
            || self
                .journal
                .as_ref()
                .is_none_or(|j| j.len() < JOURNAL_COMPACT_BYTES)
        {
            return;
        }
        let summary = summary(&self.queue, &self.segments);
        let dir = self.cfg.spool_dir.clone();
        match tokio::task::spawn_blocking(move || Journal::rewrite(&dir, &summary)).await {
            Ok(Ok(j)) => self.journal = Some(j),
            Ok(Err(e)) => tracing::warn!("delivery journal: compaction failed: {e}"),
            Err(e) => tracing::warn!("delivery journal: compaction task: {e}"),
        }
    }
}
