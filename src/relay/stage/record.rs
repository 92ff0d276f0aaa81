//! Writing the outcomes down: the journal records and the DSNs that must reach the disk, and
//! what happens when they cannot (a full disk, EIO, the spool writer gone).
//!
//! Everything to write goes through the [`Backlog`], oldest first: the DSNs (each with the
//! records of the failures or the delay warning it reports, journaled only once it is spooled),
//! then the journal records. Normally both are written in the batch that produced them, as one
//! segment and one append. When a write fails:
//! - the outcomes have changed the queue in memory anyway (`outcomes`), so a recipient the
//!   next hop took is never handed out again, and a failed one never bounced again, while the
//!   server runs; only a crash before the records are on disk repeats work (at-least-once);
//! - what was not written stays in the backlog and is tried again after [`RECORD_RETRY_FIRST`],
//!   doubling up to [`RECORD_RETRY_MAX`] (the journal and the DSNs each on their own clock, so a
//!   DSN that cannot be spooled does not hold back the other records); new records queue
//!   behind the old ones;
//! - a spooled DSN is never spooled again: its records move to the journal's queue;
//! - no segment is deleted or compacted, and the journal is not rewritten, while the backlog
//!   is not empty: a segment goes only once the records that finish its messages are on disk,
//!   and a compacted journal must never say a recipient failed before its DSN is spooled.
//!
//! One log line when a kind of write starts failing (with the error), one when it works again;
//! the failed attempts are counted (`record_errors`) and the records waiting shown
//! (`unrecorded`).
//!
//! It does not decide outcomes or build records and DSNs (see `outcomes`).

use std::io;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Stage, RECORD_RETRY_FIRST, RECORD_RETRY_MAX};
use crate::relay::queue::backoff;
use crate::spool::appender::NewMessage;
use crate::spool::journal::{DeliveryRecord, Journal};

/// What is applied in memory but not on disk yet.
#[derive(Debug, Default)]
pub(super) struct Backlog {
    /// Journal records to append, in order.
    records: Vec<DeliveryRecord>,
    /// DSNs to spool, each before its records.
    dsns: Vec<OwedDsn>,
    /// Appending to the journal.
    journal: Retry,
    /// Spooling DSNs.
    spool: Retry,
}

impl Backlog {
    /// Nothing waits to be written.
    pub(super) fn is_empty(&self) -> bool {
        self.records.is_empty() && self.dsns.is_empty()
    }

    /// Records not on disk yet, those waiting for their DSN included.
    pub(super) fn records(&self) -> usize {
        self.records.len() + self.dsns.iter().map(|d| d.records.len()).sum::<usize>()
    }
}

/// A DSN built (its id taken) but not spooled yet. Spooled with that id whenever it is, so
/// a DSN written twice (the segment durable, then an error) is one message to every reader.
#[derive(Debug)]
pub(super) struct OwedDsn {
    /// The DSN.
    pub(super) msg: NewMessage,
    /// The records of what it reports (Failed, Warned): journaled once it is spooled.
    pub(super) records: Vec<DeliveryRecord>,
    /// Logged once it is spooled.
    pub(super) log: String,
}

/// The failures in a row of one kind of write, and when to try again.
#[derive(Debug, Default)]
struct Retry {
    /// Failing since then (`None`: the last attempt worked).
    since: Option<Instant>,
    /// Failed attempts in a row.
    failures: u32,
    /// No attempt before this.
    next: Option<Instant>,
}

impl Retry {
    fn due(&self, now: Instant) -> bool {
        self.next.is_none_or(|t| now >= t)
    }

    /// Counts a failure at `now`; true if it is the first in a row.
    fn failed(&mut self, now: Instant) -> bool {
        self.failures = self.failures.saturating_add(1);
        self.next = Some(now + self.wait());
        let first = self.since.is_none();
        self.since.get_or_insert(now);
        first
    }

    /// The wait before the next attempt.
    fn wait(&self) -> Duration {
        backoff(self.failures, RECORD_RETRY_FIRST, RECORD_RETRY_MAX)
    }

    /// An attempt worked: how long the failures lasted and how many there were, if any.
    fn worked(&mut self, now: Instant) -> Option<(Duration, u32)> {
        let since = self.since.take()?;
        let failures = std::mem::take(&mut self.failures);
        self.next = None;
        Some((now.saturating_duration_since(since), failures))
    }
}

/// Failures injected by the tests: how many of the next journal appends and DSN spools fail
/// (with ENOSPC) before touching the disk.
#[cfg(test)]
#[derive(Debug, Default)]
pub(super) struct Faults {
    pub(super) journal: u32,
    pub(super) spool: u32,
}

#[cfg(test)]
fn inject(n: &mut u32) -> io::Result<()> {
    if *n == 0 {
        return Ok(());
    }
    *n -= 1;
    Err(io::Error::from_raw_os_error(libc::ENOSPC))
}

impl Stage {
    /// Queues `records` and `dsns` behind what is already owed and writes what is due.
    pub(super) async fn record(&mut self, records: Vec<DeliveryRecord>, dsns: Vec<OwedDsn>) {
        self.backlog.records.extend(records);
        self.backlog.dsns.extend(dsns);
        self.write_owed(Instant::now()).await;
    }

    /// Tries again what could not be written, if its wait is over; once everything is on
    /// disk, the segments it held back go.
    pub(super) async fn retry_owed(&mut self, now: Instant) {
        if self.backlog.is_empty() {
            return;
        }
        self.write_owed(now).await;
        if self.backlog.is_empty() {
            self.reclaim();
            self.compact_journal().await;
        }
    }

    /// At stop: one last attempt, whatever the wait; what is still owed is said (those
    /// recipients are tried again, or bounced again, after the restart).
    pub(super) async fn stop_recording(&mut self) {
        if self.backlog.is_empty() {
            return;
        }
        self.backlog.spool.next = None;
        self.backlog.journal.next = None;
        self.write_owed(Instant::now()).await;
        if !self.backlog.is_empty() {
            tracing::error!(
                "delivery: stopping with {} outcome record(s) and {} DSN(s) not on disk; their recipients are tried again after the restart",
                self.backlog.records(),
                self.backlog.dsns.len()
            );
        }
    }

    /// The DSNs first (their records join the journal's queue once they are spooled), then
    /// the journal records; each kind only if its wait after a failure is over.
    async fn write_owed(&mut self, now: Instant) {
        if !self.backlog.dsns.is_empty() && self.backlog.spool.due(now) {
            self.spool_owed(now).await;
        }
        if !self.backlog.records.is_empty() && self.backlog.journal.due(now) {
            let _ = self.append_owed(Vec::new(), now).await;
        }
    }

    /// Spools every owed DSN into one new segment and queues them for delivery.
    async fn spool_owed(&mut self, now: Instant) {
        match self.spool_dsns().await {
            Ok(()) => {
                if let Some((took, failures)) = self.backlog.spool.worked(now) {
                    tracing::info!(
                        "delivery: DSNs are spooled again, after {:.0} s and {failures} failed attempt(s)",
                        took.as_secs_f64()
                    );
                }
            }
            Err(e) => {
                self.stats.record_errors.fetch_add(1, Ordering::Relaxed);
                let first = self.backlog.spool.failed(now);
                let n = self.backlog.dsns.len();
                if first {
                    tracing::error!(
                        "delivery: cannot spool DSNs: {e}; {n} DSN(s) wait, tried again every {} s at most; the failures they report are recorded once they are spooled, and no segment is deleted meanwhile",
                        RECORD_RETRY_MAX.as_secs()
                    );
                } else {
                    tracing::debug!(
                        "delivery: spooling {n} DSN(s) failed again: {e}; next attempt in {} s",
                        self.backlog.spool.wait().as_secs()
                    );
                }
            }
        }
    }

    async fn spool_dsns(&mut self) -> io::Result<()> {
        #[cfg(test)]
        inject(&mut self.faults.spool)?;
        let msgs: Vec<NewMessage> = self.backlog.dsns.iter().map(|d| d.msg.clone()).collect();
        let path = self.write_durable(msgs).await?;
        // Spooled: never again, whatever follows.
        for d in std::mem::take(&mut self.backlog.dsns) {
            self.backlog.records.extend(d.records);
            tracing::info!("{}", d.log);
        }
        match self.adopt(path) {
            Ok(found) => {
                for m in found {
                    self.enqueue(m);
                }
            }
            Err(e) => tracing::warn!(
                "delivery: reading back the DSNs just spooled: {e}; they are sent after the next start"
            ),
        }
        Ok(())
    }

    /// Appends the owed records, then `extra`, as one durable batch. On success nothing is
    /// owed to the journal any more; on failure the owed records stay (`extra` is the caller's).
    pub(super) async fn append_owed(
        &mut self,
        extra: Vec<DeliveryRecord>,
        now: Instant,
    ) -> io::Result<()> {
        let mut batch = self.backlog.records.clone();
        batch.extend(extra);
        match self.append(batch).await {
            Ok(n) => {
                self.backlog.records.clear();
                if let Some((took, failures)) = self.backlog.journal.worked(now) {
                    tracing::info!(
                        "delivery journal: recording again, after {:.0} s and {failures} failed attempt(s); {n} record(s) written",
                        took.as_secs_f64()
                    );
                }
                Ok(())
            }
            Err(e) => {
                self.stats.record_errors.fetch_add(1, Ordering::Relaxed);
                let n = self.backlog.records();
                if self.backlog.journal.failed(now) {
                    tracing::error!(
                        "delivery journal: cannot record outcomes: {e}; they are applied (nothing is delivered or bounced twice), {n} record(s) wait, tried again every {} s at most, and no segment is deleted meanwhile",
                        RECORD_RETRY_MAX.as_secs()
                    );
                } else {
                    tracing::debug!(
                        "delivery journal: appending {n} record(s) failed again: {e}; next attempt in {} s",
                        self.backlog.journal.wait().as_secs()
                    );
                }
                Err(e)
            }
        }
    }

    /// Appends `records` and fdatasyncs them on the blocking pool; returns how many.
    async fn append(&mut self, records: Vec<DeliveryRecord>) -> io::Result<usize> {
        #[cfg(test)]
        inject(&mut self.faults.journal)?;
        let journal = self.journal.take();
        let dir = self.cfg.spool_dir.clone();
        let res = tokio::task::spawn_blocking(move || {
            let mut j = match journal {
                Some(j) => j,
                // It went with a task that panicked: open it again (cutting a torn tail).
                None => match Journal::open(&dir) {
                    Ok((j, _)) => j,
                    Err(e) => return (None, Err(e)),
                },
            };
            let r = j.append(&records).map(|()| records.len());
            (Some(j), r)
        })
        .await;
        match res {
            Ok((j, r)) => {
                self.journal = j;
                r
            }
            Err(e) => Err(io::Error::other(format!("journal task: {e}"))),
        }
    }
}
