//! Statistics: per-reactor counters and HDR histograms, merged into snapshots on request.
//!
//! Shared-nothing on the hot path: every reactor owns one [`ReactorStats`]. Its counters are
//! relaxed atomics that only that reactor writes; the stats thread reads them. Its histograms sit
//! behind a `Mutex` that the reactor takes once per message and once per session (uncontended,
//! tens of nanoseconds) and the stats thread takes for one clone per request. A mutex was chosen
//! over a request channel into each reactor because the stats socket then answers even while a
//! reactor is busy, draining or stuck in a slow fsync, and the reactor needs no extra task.
//!
//! [`Registry::snapshot`] merges everything into a [`Snapshot`], which [`format`] renders as text,
//! JSON or Prometheus exposition format and [`socket`] serves on a unix socket. This module does
//! not measure anything itself; the connection driver records what it timed.

pub mod format;
pub mod histogram;
pub mod socket;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;

pub use histogram::{Histograms, Summary};

use crate::config::sync_name;
use crate::spool::SyncPolicy;

/// Declares the counter set once: an atomic struct for the reactor and a plain snapshot struct.
macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident, )*) => {
        /// One reactor's counters (relaxed atomics, written by that reactor only).
        #[derive(Debug, Default)]
        pub struct Counters {
            $( $(#[$doc])* pub $name: AtomicU64, )*
        }

        /// A copy of [`Counters`] at one moment (or their sum over reactors).
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
        pub struct CounterSnapshot {
            $( $(#[$doc])* pub $name: u64, )*
        }

        impl Counters {
            /// Reads every counter.
            pub fn snapshot(&self) -> CounterSnapshot {
                CounterSnapshot { $( $name: self.$name.load(Ordering::Relaxed), )* }
            }
        }

        impl CounterSnapshot {
            /// Adds `other` field by field.
            pub fn add(&mut self, other: &Self) {
                $( self.$name += other.$name; )*
            }

            /// `(name, value)` pairs in declaration order, for the text and Prometheus formats.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![ $( (stringify!($name), self.$name), )* ]
            }
        }
    };
}

counters! {
    /// Connections accepted (including those then refused by a limit).
    connections_accepted,
    /// Connections open now.
    connections_active,
    /// Connections refused because `--max-connections` was reached.
    connections_refused_limit,
    /// Connections refused because `--max-connections-per-ip` was reached.
    connections_refused_per_ip,
    /// Sessions that ended with QUIT.
    sessions_quit,
    /// Sessions cut off by the idle timeout.
    sessions_timeout,
    /// Sessions closed after too many errors.
    sessions_too_many_errors,
    /// Sessions closed by a server shutdown.
    sessions_shutdown,
    /// Sessions the client closed without QUIT.
    sessions_disconnected,
    /// Sessions ended by a socket error.
    sessions_io_error,
    /// Messages made durable and acknowledged with 250.
    messages_accepted,
    /// Messages refused for their size (552 5.3.4).
    messages_rejected_too_big,
    /// Messages refused for a bare CR or LF (550 5.6.11).
    messages_rejected_bare_line_ending,
    /// Messages not stored because the disk is full (452 4.3.1).
    messages_failed_no_space,
    /// Messages not stored because of an I/O error (451 4.3.0).
    messages_failed_io,
    /// Messages dropped because the client left (or the server stopped) mid-DATA.
    messages_aborted,
    /// Bytes read from clients.
    bytes_received,
    /// Body bytes of accepted messages.
    bytes_accepted,
    /// 2xx replies sent.
    replies_2xx,
    /// 3xx replies sent.
    replies_3xx,
    /// 4xx replies sent.
    replies_4xx,
    /// 5xx replies sent.
    replies_5xx,
    /// fdatasync calls completed by this reactor's spool writer.
    spool_fsyncs,
    /// Messages committed by this reactor's spool writer.
    spool_commits,
}

/// One reactor's statistics.
#[derive(Debug)]
pub struct ReactorStats {
    /// Counters.
    pub counters: Counters,
    histograms: Mutex<Histograms>,
}

impl ReactorStats {
    /// Zeroed statistics.
    pub fn new() -> Self {
        Self {
            counters: Counters::default(),
            histograms: Mutex::new(Histograms::new()),
        }
    }

    /// Adds `n` to a counter.
    #[inline]
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one to a counter.
    #[inline]
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Subtracts one from a gauge.
    #[inline]
    pub fn dec(counter: &AtomicU64) {
        counter.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts the replies in `out` (complete reply lines, RFC 5321 §4.2: the last line of a
    /// reply has a space or nothing after the code) by their first digit.
    pub fn count_replies(&self, out: &[u8]) {
        let c = &self.counters;
        for line in out.split(|&b| b == b'\n') {
            if line.len() >= 3 && (line.len() == 3 || line[3] != b'-') {
                match line[0] {
                    b'2' => Self::inc(&c.replies_2xx),
                    b'3' => Self::inc(&c.replies_3xx),
                    b'4' => Self::inc(&c.replies_4xx),
                    b'5' => Self::inc(&c.replies_5xx),
                    _ => {}
                }
            }
        }
    }

    /// Publishes the spool writer's totals and records the fsync batches since the last call.
    pub fn set_spool(&self, fsyncs: u64, commits: u64) {
        let c = &self.counters;
        let old_f = c.spool_fsyncs.swap(fsyncs, Ordering::Relaxed);
        let old_c = c.spool_commits.swap(commits, Ordering::Relaxed);
        if fsyncs > old_f {
            self.histograms()
                .record_batches(fsyncs - old_f, commits.saturating_sub(old_c));
        }
    }

    /// Records one acknowledged message's latency.
    pub fn record_ack(&self, latency: Duration) {
        self.histograms().record_ack(latency);
    }

    /// Records one finished session's duration.
    pub fn record_session(&self, duration: Duration) {
        self.histograms().record_session(duration);
    }

    fn histograms(&self) -> MutexGuard<'_, Histograms> {
        // A panic while holding this lock can only come from hdrhistogram itself; the data is
        // plain counts and still usable, so a poisoned lock is taken over, not propagated.
        self.histograms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Default for ReactorStats {
    fn default() -> Self {
        Self::new()
    }
}

/// Everything the stats socket can see: each reactor's statistics plus server facts.
#[derive(Debug)]
pub struct Registry {
    started: Instant,
    sync: SyncPolicy,
    reactors: Vec<Arc<ReactorStats>>,
}

/// A merged view at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// ringmx version.
    pub version: &'static str,
    /// Seconds since start-up.
    pub uptime_secs: f64,
    /// `group` or `none` (`none`: acknowledged mail can be lost on a crash).
    pub sync: &'static str,
    /// Each reactor, in order.
    pub reactors: Vec<ReactorSnapshot>,
    /// All reactors together.
    pub total: ReactorSnapshot,
}

/// One reactor's (or the total's) figures.
#[derive(Debug, Clone, Serialize)]
pub struct ReactorSnapshot {
    /// The counters.
    pub counters: CounterSnapshot,
    /// Ack latency (end of DATA → 250 written, fsync included), µs.
    pub ack_latency_us: Summary,
    /// Session duration, ms.
    pub session_duration_ms: Summary,
    /// Messages per fdatasync.
    pub fsync_batch: Summary,
}

impl Registry {
    /// A registry of `reactors` zeroed reactors.
    pub fn new(reactors: usize, sync: SyncPolicy) -> Self {
        Self {
            started: Instant::now(),
            sync,
            reactors: (0..reactors)
                .map(|_| Arc::new(ReactorStats::new()))
                .collect(),
        }
    }

    /// Reactor `i`'s statistics, for its thread.
    pub fn reactor(&self, i: usize) -> Option<Arc<ReactorStats>> {
        self.reactors.get(i).cloned()
    }

    /// Merges all reactors' figures now.
    pub fn snapshot(&self) -> Snapshot {
        let mut total_counters = CounterSnapshot::default();
        let mut total_h = Histograms::new();
        let mut reactors = Vec::with_capacity(self.reactors.len());
        for r in &self.reactors {
            let counters = r.counters.snapshot();
            let h = r.histograms().clone();
            total_counters.add(&counters);
            total_h.merge(&h);
            reactors.push(ReactorSnapshot::new(counters, &h));
        }
        Snapshot {
            version: env!("CARGO_PKG_VERSION"),
            uptime_secs: self.started.elapsed().as_secs_f64(),
            sync: sync_name(self.sync),
            reactors,
            total: ReactorSnapshot::new(total_counters, &total_h),
        }
    }
}

impl ReactorSnapshot {
    fn new(counters: CounterSnapshot, h: &Histograms) -> Self {
        Self {
            counters,
            ack_latency_us: Summary::of(&h.ack_latency_us),
            session_duration_ms: Summary::of(&h.session_duration_ms),
            fsync_batch: Summary::of(&h.fsync_batch),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_counted_by_class_once_per_reply() {
        let s = ReactorStats::new();
        s.count_replies(
            b"250-mx.test\r\n250-PIPELINING\r\n250 SIZE 10\r\n354 go\r\n421 4.3.2 bye\r\n550 5.7.1 no\r\n",
        );
        let c = s.counters.snapshot();
        assert_eq!(
            (c.replies_2xx, c.replies_3xx, c.replies_4xx, c.replies_5xx),
            (1, 1, 1, 1)
        );
    }

    #[test]
    fn snapshot_merges_reactors() {
        let reg = Registry::new(2, SyncPolicy::None);
        let r0 = reg.reactor(0).unwrap();
        let r1 = reg.reactor(1).unwrap();
        assert!(reg.reactor(2).is_none());
        ReactorStats::inc(&r0.counters.messages_accepted);
        ReactorStats::add(&r1.counters.messages_accepted, 2);
        ReactorStats::inc(&r1.counters.connections_active);
        ReactorStats::dec(&r1.counters.connections_active);
        r0.record_ack(Duration::from_micros(100));
        r1.record_ack(Duration::from_micros(300));
        r1.set_spool(2, 10);
        r1.set_spool(3, 12);
        let snap = reg.snapshot();
        assert_eq!(snap.sync, "none");
        assert_eq!(snap.reactors.len(), 2);
        assert_eq!(snap.reactors[1].counters.messages_accepted, 2);
        assert_eq!(snap.total.counters.messages_accepted, 3);
        assert_eq!(snap.total.counters.connections_active, 0);
        assert_eq!(snap.total.counters.spool_fsyncs, 3);
        assert_eq!(snap.total.ack_latency_us.count, 2);
        assert_eq!(snap.reactors[0].ack_latency_us.max, 100);
        assert!((299..=301).contains(&snap.total.ack_latency_us.max));
        assert_eq!(snap.total.fsync_batch.count, 3);
    }
}
