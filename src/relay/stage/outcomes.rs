//! Applying the workers' outcomes: one journal record per recipient, appended and fdatasynced
//! in one batch before anything relies on it, the DSNs of failed and long-delayed recipients
//! spooled before the failures are recorded, the delivery log line, the counters and
//! histograms; then the queue is updated and finished messages leave it. Also the journal's
//! compaction once it grows past [`JOURNAL_COMPACT_BYTES`].
//!
//! It does not decide what a DSN says (see `relay::bounce` and `relay::dsn`) or delete
//! segments (see `segments`).

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use super::{summary, Outcome, Stage, JOURNAL_COMPACT_BYTES, JOURNAL_RETRY};
use crate::relay::bounce::{self, BounceSettings};
use crate::relay::dsn::{self, RcptReport};
use crate::relay::queue::{self, backoff};
use crate::smtp::client::Status;
use crate::spool::appender::APPENDER_REACTOR;
use crate::spool::frame::unix_us;
use crate::spool::id::MessageId;
use crate::spool::journal::{DeliveryRecord, Journal, RecordKind};

impl Stage {
    /// Records outcomes durably, then updates the queue and frees finished segments.
    pub(super) async fn apply(&mut self, outcomes: Vec<Outcome>) {
        let now = SystemTime::now();
        let now_us = unix_us(now);
        let mut records = Vec::new();
        // Durations for the histograms, recorded after the loop (one lock, never held across
        // the journal append's await).
        let mut attempts_took = Vec::new();
        let mut delivered_after = Vec::new();
        // Recipients whose senders get a DSN (spooled before the records are appended).
        let mut failed: BTreeMap<MessageId, Vec<RcptReport>> = BTreeMap::new();
        let mut delayed: BTreeMap<MessageId, Vec<RcptReport>> = BTreeMap::new();
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
                let (kind, next_us) = match res.status {
                    Status::Delivered => (RecordKind::Delivered, 0),
                    Status::Failed => (RecordKind::Failed, 0),
                    Status::Deferred => {
                        let wait = backoff(attempts, self.cfg.retry_first, self.cfg.retry_max);
                        (RecordKind::Deferred, unix_us(now + wait))
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
                match kind {
                    RecordKind::Failed => failed.entry(o.id).or_default().push(report),
                    RecordKind::Deferred
                        if !r.warned && self.cfg.delay_warning.is_some_and(|w| age >= w) =>
                    {
                        records.push(queue::record(
                            RecordKind::Warned,
                            o.id,
                            i as u32,
                            now_us,
                            0,
                            0,
                            String::new(),
                        ));
                        delayed.entry(o.id).or_default().push(RcptReport {
                            action: dsn::Action::Delayed,
                            ..report
                        });
                    }
                    _ => {}
                }
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
                records.push(queue::record(
                    kind,
                    o.id,
                    i as u32,
                    now_us,
                    next_us,
                    attempts,
                    res.reply.to_string(),
                ));
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
        if records.is_empty() {
            return;
        }
        // The DSNs are durable before the failures they report are recorded: a crash in
        // between sends a DSN twice, never none.
        let recorded = match self.send_dsns(failed, delayed, now).await {
            Ok(()) => self.append(records.clone()).await,
            Err(e) => Err(io::Error::other(format!("spooling DSNs: {e}"))),
        };
        if let Err(e) = recorded {
            // Without a durable record nothing may rely on the outcome: leave the recipients
            // pending, so they are tried again (at-least-once).
            tracing::error!(
                "delivery journal: {e}; the outcomes are not recorded and will be retried"
            );
            let again = unix_us(now + JOURNAL_RETRY);
            for o in &outcomes {
                self.due.push(again, o.id);
            }
            return;
        }
        let mut finished = Vec::new();
        for r in &records {
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
        self.reclaim();
        self.compact_journal().await;
    }

    /// Builds and spools (durably) one DSN per message with failed or long-delayed recipients,
    /// and queues them for delivery.
    async fn send_dsns(
        &mut self,
        failed: BTreeMap<MessageId, Vec<RcptReport>>,
        delayed: BTreeMap<MessageId, Vec<RcptReport>>,
        now: SystemTime,
    ) -> io::Result<()> {
        if failed.is_empty() && delayed.is_empty() {
            return Ok(());
        }
        let Some(mut appender) = self.appender.take() else {
            return Err(io::Error::other("the stage's spool writer is unavailable"));
        };
        let settings = BounceSettings {
            hostname: &self.cfg.hostname,
            copy_to: self.cfg.bounce_copy.as_deref(),
        };
        let mut msgs = Vec::new();
        let mut logs = Vec::new();
        for (reports, warning) in [(failed, false), (delayed, true)] {
            for (id, rcpts) in reports {
                let Some(m) = self.queue.get(&id) else {
                    continue;
                };
                let retry_hours = warning.then(|| {
                    let age = now.duration_since(m.msg.received_at()).unwrap_or_default();
                    self.cfg.max_queue_lifetime.saturating_sub(age).as_secs() / 3600
                });
                match bounce::dsn_message(settings, &mut appender, m, &rcpts, retry_hours, now) {
                    Some(n) => {
                        logs.push(format!(
                            "delivery id={id}: {} dsn={} to=<{}> ({} recipient(s))",
                            if warning { "delay warning" } else { "bounce" },
                            n.id,
                            m.msg.envelope.mail_from,
                            rcpts.len()
                        ));
                        msgs.push(n);
                    }
                    None if !warning => tracing::info!(
                        "delivery id={id}: no DSN for {} failed recipient(s): the sender is <>{}",
                        rcpts.len(),
                        if m.msg.id.reactor() == APPENDER_REACTOR {
                            " (a DSN that failed is dropped)"
                        } else {
                            ""
                        }
                    ),
                    None => {}
                }
            }
        }
        let written = if msgs.is_empty() {
            self.appender = Some(appender);
            return Ok(());
        } else {
            self.write_own_segment(appender, msgs).await?
        };
        for m in written {
            self.enqueue(m);
        }
        for l in logs {
            tracing::info!("{l}");
        }
        Ok(())
    }

    /// Appends records and fdatasyncs them on the blocking pool.
    pub(super) async fn append(&mut self, records: Vec<DeliveryRecord>) -> io::Result<()> {
        let Some(mut j) = self.journal.take() else {
            return Err(io::Error::other("journal unavailable"));
        };
        let res = tokio::task::spawn_blocking(move || {
            let r = j.append(&records);
            (j, r)
        })
        .await;
        match res {
            Ok((j, r)) => {
                self.journal = Some(j);
                r
            }
            Err(e) => Err(io::Error::other(format!("journal task: {e}"))),
        }
    }

    async fn compact_journal(&mut self) {
        if self
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
