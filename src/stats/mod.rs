//! Statistics: per-reactor counters and HDR histograms, merged into snapshots on request.
//!
//! Shared-nothing on the hot path: every reactor owns one [`ReactorStats`]. Its counters are
//! relaxed atomics that only that reactor writes; the stats thread reads them. Its histograms sit
//! behind a `Mutex` that the reactor takes once per message and once per session (uncontended,
//! tens of nanoseconds) and the stats thread takes for one clone per request. A mutex was chosen
//! over a request channel into each reactor because the stats socket then answers even while a
//! reactor is busy, draining or stuck in a slow fsync, and the reactor needs no extra task.
//!
//! The spool's fdatasync and group-write durations arrive through [`crate::spool::Timings`],
//! which [`ReactorStats`] implements: the reactor hands its stats to its spool writer.
//!
//! [`Registry::snapshot`] merges everything into a [`Snapshot`], which [`format`](mod@format) renders as text,
//! JSON or Prometheus exposition format and [`socket`] serves on a unix socket. This module does
//! not measure anything itself; the connection driver records what it timed.

pub mod format;
pub mod histogram;
pub mod socket;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;

pub use histogram::{DeliveryHistograms, Histograms, Summary};

use crate::smtp::ReplyTally;
use crate::spool::{SpoolStats, SyncPolicy, Timings, BATCH_BUCKETS};

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
    /// Connections from a `--proxy-protocol-from` balancer closed for a missing, malformed or
    /// late PROXY header.
    connections_proxy_failed,
    /// Sessions that ended with QUIT.
    sessions_quit,
    /// Sessions cut off by the idle timeout.
    sessions_timeout,
    /// Sessions closed after too many errors.
    sessions_too_many_errors,
    /// Sessions closed by a server shutdown.
    sessions_shutdown,
    /// Sessions closed because the client spoke HTTP, not SMTP (221 2.7.0).
    sessions_not_smtp,
    /// Sessions the client closed without QUIT.
    sessions_disconnected,
    /// Sessions ended by a socket error.
    sessions_io_error,
    /// Messages made durable and acknowledged with 250.
    messages_accepted,
    /// Messages refused for their size (552 5.3.4).
    messages_rejected_too_big,
    /// Messages refused for a bare CR or LF (550 5.6.0).
    messages_rejected_bare_line_ending,
    /// Messages refused for carrying more `Received:` fields than `--max-hops` (554 5.4.6).
    messages_rejected_too_many_hops,
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
    /// TLS handshakes completed (STARTTLS).
    tls_handshakes,
    /// TLS handshakes cut off by `--tls-handshake-timeout`.
    tls_failed_timeout,
    /// TLS handshakes failed on a protocol error (not TLS, bad messages, no common version or
    /// cipher, the client closed).
    tls_failed_protocol,
    /// TLS handshakes the client aborted with an alert (e.g. it does not trust our certificate).
    tls_failed_alert,
    /// TLS sessions with TLS 1.2.
    tls_sessions_v12,
    /// TLS sessions with TLS 1.3.
    tls_sessions_v13,
    /// Bytes received after a STARTTLS line before the handshake, discarded (CVE-2011-0411).
    tls_discarded_bytes,
    /// Recipients refused as not in the recipient table (550 5.1.1).
    refused_unknown_recipient,
    /// Connections refused by `--max-connect-rate` (421 4.7.0).
    refused_connect_rate,
    /// MAIL commands refused by `--max-message-rate` (450 4.7.1).
    refused_message_rate,
    /// RCPT commands refused by `--max-recipient-rate` (450 4.7.1).
    refused_recipient_rate,
    /// Clients that talked before the end of the greet pause (554 5.5.1, closed); also how
    /// those sessions ended.
    refused_pregreet,
    /// Recipients the next hop refused when verified (550 5.1.1), probed or from the cache.
    refused_unverified,
    /// Recipients that could not be verified in time (450 4.1.1): timeout, 4xx, next hop
    /// down, verifier busy.
    deferred_unverified,
    /// Recipient verifications answered from the cache, without a probe.
    verify_cache_hits,
    /// Recipient verification probes made (`MAIL FROM:<>`, `RCPT`, `RSET` to the next hop).
    verify_probes,
    /// Recipient verifications that joined a probe already in flight for the same address.
    verify_coalesced,
    /// Recipients refused because the client is listed by DNSBLs at or over the threshold
    /// (554 5.7.1).
    refused_dnsbl,
    /// DNSBL lookups that failed or did not answer in time (counted as not listed).
    dnsbl_failures,
}

/// How a STARTTLS handshake ended, as the `tls_*` counters count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsOutcome {
    /// Completed with TLS 1.3 (`true`) or 1.2, taking this long.
    Completed {
        /// TLS 1.3.
        v13: bool,
        /// From the 220 to the end of the handshake.
        duration: Duration,
    },
    /// `--tls-handshake-timeout` passed.
    Timeout,
    /// A protocol error (or the client closed mid-handshake).
    Protocol,
    /// The client sent an alert.
    ClientAlert,
}

/// How a session ended, as the `sessions_*` counters count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// QUIT.
    Quit,
    /// The idle timeout (reading or writing).
    Timeout,
    /// Too many errors.
    TooManyErrors,
    /// A server shutdown.
    Shutdown,
    /// The client spoke HTTP.
    NotSmtp,
    /// The client closed without QUIT.
    Disconnected,
    /// A socket error (or broken input handling).
    IoError,
    /// The client talked before the end of the greet pause (counted as `refused_pregreet`).
    Pregreet,
}

/// What became of one message, as the `messages_*` counters count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageOutcome {
    /// Durable and acknowledged, with this many body bytes.
    Accepted {
        /// Body bytes.
        bytes: u64,
    },
    /// Refused for its size.
    TooBig,
    /// Refused for a bare CR or LF.
    BareLineEnding,
    /// Refused for too many `Received:` fields.
    TooManyHops,
    /// Not stored: the disk is full.
    NoSpace,
    /// Not stored: an I/O error.
    Io,
    /// Dropped because the connection ended mid-message.
    Aborted,
}

/// One reactor's statistics.
#[derive(Debug)]
pub struct ReactorStats {
    /// Counters.
    pub counters: Counters,
    /// Histograms and the spool writer's latest figures, behind one lock.
    locked: Mutex<Locked>,
}

/// What [`ReactorStats`] keeps behind its mutex.
#[derive(Debug, Clone, Default)]
struct Locked {
    histograms: Histograms,
    spool: SpoolStats,
}

impl ReactorStats {
    /// Zeroed statistics.
    pub fn new() -> Self {
        Self {
            counters: Counters::default(),
            locked: Mutex::new(Locked::default()),
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

    /// Counts replies written to a client, by class.
    pub fn replies(&self, t: ReplyTally) {
        let c = &self.counters;
        Self::add(&c.replies_2xx, t.c2xx);
        Self::add(&c.replies_3xx, t.c3xx);
        Self::add(&c.replies_4xx, t.c4xx);
        Self::add(&c.replies_5xx, t.c5xx);
    }

    /// Counts how a session ended and records its duration.
    pub fn session_ended(&self, end: SessionEnd, duration: Duration) {
        let c = &self.counters;
        Self::inc(match end {
            SessionEnd::Quit => &c.sessions_quit,
            SessionEnd::Timeout => &c.sessions_timeout,
            SessionEnd::TooManyErrors => &c.sessions_too_many_errors,
            SessionEnd::Shutdown => &c.sessions_shutdown,
            SessionEnd::NotSmtp => &c.sessions_not_smtp,
            SessionEnd::Disconnected => &c.sessions_disconnected,
            SessionEnd::IoError => &c.sessions_io_error,
            SessionEnd::Pregreet => &c.refused_pregreet,
        });
        self.record_session(duration);
    }

    /// Counts how a TLS handshake ended (and records its duration if it completed).
    pub fn tls(&self, outcome: TlsOutcome) {
        let c = &self.counters;
        match outcome {
            TlsOutcome::Completed { v13, duration } => {
                Self::inc(&c.tls_handshakes);
                Self::inc(if v13 {
                    &c.tls_sessions_v13
                } else {
                    &c.tls_sessions_v12
                });
                self.lock().histograms.record_tls_handshake(duration);
            }
            TlsOutcome::Timeout => Self::inc(&c.tls_failed_timeout),
            TlsOutcome::Protocol => Self::inc(&c.tls_failed_protocol),
            TlsOutcome::ClientAlert => Self::inc(&c.tls_failed_alert),
        }
    }

    /// Counts what became of a message.
    pub fn message(&self, outcome: MessageOutcome) {
        let c = &self.counters;
        match outcome {
            MessageOutcome::Accepted { bytes } => {
                Self::inc(&c.messages_accepted);
                Self::add(&c.bytes_accepted, bytes);
            }
            MessageOutcome::TooBig => Self::inc(&c.messages_rejected_too_big),
            MessageOutcome::BareLineEnding => Self::inc(&c.messages_rejected_bare_line_ending),
            MessageOutcome::TooManyHops => Self::inc(&c.messages_rejected_too_many_hops),
            MessageOutcome::NoSpace => Self::inc(&c.messages_failed_no_space),
            MessageOutcome::Io => Self::inc(&c.messages_failed_io),
            MessageOutcome::Aborted => Self::inc(&c.messages_aborted),
        }
    }

    /// Publishes the spool writer's figures (a copy of [`crate::spool::Spool::stats`]).
    pub fn set_spool(&self, spool: SpoolStats) {
        self.lock().spool = spool;
    }

    /// Records one acknowledged message's latency.
    pub fn record_ack(&self, latency: Duration) {
        self.lock().histograms.record_ack(latency);
    }

    /// Records one finished session's duration.
    pub fn record_session(&self, duration: Duration) {
        self.lock().histograms.record_session(duration);
    }

    fn lock(&self) -> MutexGuard<'_, Locked> {
        // A panic while holding this lock can only come from hdrhistogram itself; the data is
        // plain counts and still usable, so a poisoned lock is taken over, not propagated.
        self.locked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Timings for ReactorStats {
    fn fsync(&self, took: Duration) {
        self.lock().histograms.record_fsync(took);
    }

    fn group_write(&self, took: Duration) {
        self.lock().histograms.record_group_write(took);
    }
}

impl Default for ReactorStats {
    fn default() -> Self {
        Self::new()
    }
}

/// The delivery stage's figures (one set for the server; only the delivery thread writes them).
#[derive(Debug, Default)]
pub struct DeliveryStats {
    /// Recipients delivered (2xx after the end of data).
    pub delivered: AtomicU64,
    /// Recipient attempts deferred (4xx, connection failures, timeouts).
    pub deferred: AtomicU64,
    /// Recipients failed (5xx or expired).
    pub failed: AtomicU64,
    /// Outbound connections opened.
    pub connections_opened: AtomicU64,
    /// Outbound connections open now.
    pub connections_active: AtomicU64,
    /// Segments deleted because every message in them was finished.
    pub segments_deleted: AtomicU64,
    /// Failed attempts to record outcomes: journal appends and DSN spools (full disk, EIO).
    pub record_errors: AtomicU64,
    /// Outcome records applied in memory but not on disk yet (their DSN's included).
    pub unrecorded: AtomicU64,
    /// Messages in the queue (not finished).
    pub queue_messages: AtomicU64,
    /// Recipients pending.
    pub queue_recipients: AtomicU64,
    /// Bytes of the queued messages.
    pub queue_bytes: AtomicU64,
    /// Age of the oldest queued message, seconds.
    pub queue_oldest_secs: AtomicU64,
    /// Accept-to-delivered and attempt durations; locked by the delivery thread once per
    /// outcome batch and by the stats thread per snapshot.
    pub histograms: Mutex<DeliveryHistograms>,
}

/// [`DeliveryStats`] at one moment.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeliverySnapshot {
    /// Recipients delivered.
    pub delivered: u64,
    /// Recipient attempts deferred.
    pub deferred: u64,
    /// Recipients failed.
    pub failed: u64,
    /// Outbound connections opened.
    pub connections_opened: u64,
    /// Outbound connections open now.
    pub connections_active: u64,
    /// Segments deleted.
    pub segments_deleted: u64,
    /// Failed attempts to record outcomes.
    pub record_errors: u64,
    /// Outcome records not on disk yet.
    pub unrecorded: u64,
    /// Messages queued.
    pub queue_messages: u64,
    /// Recipients pending.
    pub queue_recipients: u64,
    /// Bytes queued.
    pub queue_bytes: u64,
    /// Oldest queued message, seconds.
    pub queue_oldest_secs: u64,
    /// Accepted → delivered to the next hop, per recipient, µs.
    pub delivered_latency_us: Summary,
    /// One delivery attempt (connect or reuse → outcome), µs.
    pub attempt_us: Summary,
}

impl DeliveryStats {
    /// Reads every figure (relaxed).
    pub fn snapshot(&self) -> DeliverySnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (delivered_latency_us, attempt_us) = {
            let h = self.histograms();
            (Summary::of(&h.delivered_us), Summary::of(&h.attempt_us))
        };
        DeliverySnapshot {
            delivered: g(&self.delivered),
            deferred: g(&self.deferred),
            failed: g(&self.failed),
            connections_opened: g(&self.connections_opened),
            connections_active: g(&self.connections_active),
            segments_deleted: g(&self.segments_deleted),
            record_errors: g(&self.record_errors),
            unrecorded: g(&self.unrecorded),
            queue_messages: g(&self.queue_messages),
            queue_recipients: g(&self.queue_recipients),
            queue_bytes: g(&self.queue_bytes),
            queue_oldest_secs: g(&self.queue_oldest_secs),
            delivered_latency_us,
            attempt_us,
        }
    }

    /// The histograms, locked. A panic while holding the lock can only come from hdrhistogram
    /// itself; the data is still usable, so a poisoned lock is taken as is.
    pub fn histograms(&self) -> MutexGuard<'_, DeliveryHistograms> {
        self.histograms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl DeliverySnapshot {
    /// `(name, value, is_gauge)` of every figure, for the text and Prometheus formats.
    pub fn fields(&self) -> [(&'static str, u64, bool); 12] {
        [
            ("delivered", self.delivered, false),
            ("deferred", self.deferred, false),
            ("failed", self.failed, false),
            ("connections_opened", self.connections_opened, false),
            ("connections_active", self.connections_active, true),
            ("segments_deleted", self.segments_deleted, false),
            ("record_errors", self.record_errors, false),
            ("unrecorded", self.unrecorded, true),
            ("queue_messages", self.queue_messages, true),
            ("queue_recipients", self.queue_recipients, true),
            ("queue_bytes", self.queue_bytes, true),
            ("queue_oldest_seconds", self.queue_oldest_secs, true),
        ]
    }
}

/// Everything the stats socket can see: each reactor's statistics plus server facts.
#[derive(Debug)]
pub struct Registry {
    started: Instant,
    sync: SyncPolicy,
    reactors: Vec<Arc<ReactorStats>>,
    /// Set when the delivery stage runs (routes are configured).
    delivery: Option<Arc<DeliveryStats>>,
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
    /// The delivery stage, when routes are configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySnapshot>,
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
    /// TLS handshake duration (220 of STARTTLS → handshake done), µs.
    pub tls_handshake_us: Summary,
    /// Spool fdatasync duration, µs.
    pub fsync_us: Summary,
    /// Spool group write duration, µs.
    pub group_write_us: Summary,
    /// The spool writer's figures.
    pub spool: SpoolFigures,
}

/// How Prometheus should type a figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only grows: exported as `ringmx_spool_<name>_total`.
    Counter,
    /// Goes up and down (or is a maximum): exported as `ringmx_spool_<name>`.
    Gauge,
}

/// One plain spool figure with how each format shows it (from [`SpoolFigures::fields`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolField {
    /// The JSON field name (and the Prometheus metric's stem).
    pub name: &'static str,
    /// The label in the text format.
    pub label: &'static str,
    /// The text format's spool line that shows it: 1 (volumes) or 2 (batches and errors).
    pub line: u8,
    /// Exported to Prometheus as this kind, or not at all.
    pub prometheus: Option<MetricKind>,
    /// The value.
    pub value: u64,
}

/// Declares the spool figures once: the struct the JSON format serializes, how it is filled
/// from a [`SpoolStats`], and the table the text and Prometheus formats walk.
macro_rules! spool_figures {
    ($( $(#[$doc:meta])* $name:ident = $src:ident, $label:literal, $line:literal, $prom:expr; )*) => {
        /// A spool writer's figures, as shown by the stats socket.
        #[derive(Debug, Clone, Default, Serialize)]
        pub struct SpoolFigures {
            $( $(#[$doc])* pub $name: u64, )*
            /// Mean messages per fdatasync (the group-commit batch size).
            pub mean_batch: f64,
            /// Batch-size histogram: `(sizes, fsyncs)` pairs such as `("5-8", 12)`.
            pub batches: Vec<(String, u64)>,
        }

        impl SpoolFigures {
            fn new(s: &SpoolStats) -> Self {
                Self {
                    $( $name: s.$src, )*
                    mean_batch: s.mean_batch(),
                    batches: (0..BATCH_BUCKETS)
                        .map(|i| (SpoolStats::bucket_label(i), s.batch_hist[i]))
                        .collect(),
                }
            }

            /// The plain figures in declaration order (not `mean_batch` and `batches`).
            pub fn fields(&self) -> Vec<SpoolField> {
                vec![ $( SpoolField {
                    name: stringify!($name),
                    label: $label,
                    line: $line,
                    prometheus: $prom,
                    value: self.$name,
                }, )* ]
            }
        }
    };
}

spool_figures! {
    /// Messages committed.
    commits = commits, "commits", 1, Some(MetricKind::Counter);
    /// Messages aborted.
    aborts = aborts, "aborts", 1, Some(MetricKind::Counter);
    /// Commits that failed.
    failed_commits = failed_commits, "failed", 1, Some(MetricKind::Counter);
    /// Bytes written to segments.
    bytes = bytes, "bytes", 1, Some(MetricKind::Counter);
    /// fdatasync calls on segments.
    fsyncs = fsyncs, "fsyncs", 1, Some(MetricKind::Counter);
    /// fsync calls on the spool directory.
    dir_fsyncs = dir_fsyncs, "dir-fsyncs", 1, Some(MetricKind::Counter);
    /// Segments created.
    segments = segments, "segments", 1, Some(MetricKind::Counter);
    /// Largest batch.
    max_batch = batch_max, "max", 2, Some(MetricKind::Gauge);
    /// Write buffers taken from the heap because the registered pool was empty.
    heap_buffers = heap_buffers, "heap-buffers", 2, None;
    /// Failed segment writes.
    write_errors = write_errors, "write-errors", 2, None;
    /// Failed fsyncs.
    sync_errors = sync_errors, "sync-errors", 2, None;
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
            delivery: None,
        }
    }

    /// Turns on the delivery figures; returns them for the delivery stage to update.
    pub fn enable_delivery(&mut self) -> Arc<DeliveryStats> {
        self.delivery.get_or_insert_with(Default::default).clone()
    }

    /// Reactor `i`'s statistics, for its thread.
    pub fn reactor(&self, i: usize) -> Option<Arc<ReactorStats>> {
        self.reactors.get(i).cloned()
    }

    /// Merges all reactors' figures now.
    pub fn snapshot(&self) -> Snapshot {
        let mut total_counters = CounterSnapshot::default();
        let mut total = Locked::default();
        let mut reactors = Vec::with_capacity(self.reactors.len());
        for r in &self.reactors {
            let counters = r.counters.snapshot();
            let locked = r.lock().clone();
            total_counters.add(&counters);
            total.histograms.merge(&locked.histograms);
            total.spool.merge(&locked.spool);
            reactors.push(ReactorSnapshot::new(counters, &locked));
        }
        Snapshot {
            version: env!("CARGO_PKG_VERSION"),
            uptime_secs: self.started.elapsed().as_secs_f64(),
            sync: self.sync.name(),
            reactors,
            total: ReactorSnapshot::new(total_counters, &total),
            delivery: self.delivery.as_ref().map(|d| d.snapshot()),
        }
    }
}

impl ReactorSnapshot {
    fn new(counters: CounterSnapshot, l: &Locked) -> Self {
        Self {
            counters,
            ack_latency_us: Summary::of(&l.histograms.ack_latency_us),
            session_duration_ms: Summary::of(&l.histograms.session_duration_ms),
            tls_handshake_us: Summary::of(&l.histograms.tls_handshake_us),
            fsync_us: Summary::of(&l.histograms.fsync_us),
            group_write_us: Summary::of(&l.histograms.group_write_us),
            spool: SpoolFigures::new(&l.spool),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_counted_by_class_once_per_reply() {
        let s = ReactorStats::new();
        let mut t = ReplyTally::default();
        for code in [250, 354, 421, 550] {
            t.record(code);
        }
        s.replies(t);
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
        r0.fsync(Duration::from_micros(800));
        r1.fsync(Duration::from_micros(1200));
        r1.group_write(Duration::from_micros(40));
        r0.set_spool(SpoolStats {
            fsyncs: 1,
            commits: 1,
            batch_sum: 1,
            batch_max: 1,
            batch_hist: [1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ..SpoolStats::default()
        });
        r1.set_spool(SpoolStats {
            fsyncs: 2,
            commits: 5,
            batch_sum: 5,
            batch_max: 3,
            batch_hist: [0, 1, 1, 0, 0, 0, 0, 0, 0, 0],
            ..SpoolStats::default()
        });
        let snap = reg.snapshot();
        assert_eq!(snap.sync, "none");
        assert_eq!(snap.reactors.len(), 2);
        assert_eq!(snap.reactors[1].counters.messages_accepted, 2);
        assert_eq!(snap.total.counters.messages_accepted, 3);
        assert_eq!(snap.total.counters.connections_active, 0);
        assert_eq!(snap.total.spool.fsyncs, 3);
        assert_eq!(snap.total.spool.commits, 6);
        assert_eq!(snap.total.spool.max_batch, 3);
        assert!((snap.total.spool.mean_batch - 2.0).abs() < 1e-9);
        assert_eq!(snap.total.spool.batches[0], ("1".to_string(), 1));
        assert_eq!(snap.total.spool.batches[2], ("3-4".to_string(), 1));
        assert_eq!(snap.total.ack_latency_us.count, 2);
        assert_eq!(snap.reactors[0].ack_latency_us.max, 100);
        assert!((299..=301).contains(&snap.total.ack_latency_us.max));
        assert_eq!(snap.total.fsync_us.count, 2);
        assert_eq!(snap.reactors[0].fsync_us.max, 800);
        assert!((1199..=1201).contains(&snap.total.fsync_us.max));
        assert_eq!(snap.total.group_write_us.count, 1);
        assert_eq!(snap.reactors[0].group_write_us.count, 0);
    }
}
