//! HDR histograms of one reactor (ack latency, session duration, the spool's fdatasync and group
//! write durations) and their percentile summary.
//!
//! A [`Histograms`] lives behind its reactor's mutex and is written once per message, once per
//! session and once per fdatasync and group write; the stats thread clones it to merge and
//! summarize. This module does not time anything
//! itself: callers pass durations they measured.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Significant decimal digits kept by every histogram (0.1 % relative error).
const SIGNIFICANT_FIGURES: u8 = 3;
/// Largest ack latency recorded exactly: 10 minutes in µs (slower values saturate).
const ACK_LATENCY_MAX_US: u64 = 600_000_000;
/// Largest spool operation (fdatasync, group write) recorded exactly: 10 minutes in µs.
const SPOOL_OP_MAX_US: u64 = 600_000_000;
/// Largest session duration recorded exactly: one day in ms.
const SESSION_DURATION_MAX_MS: u64 = 86_400_000;
/// Largest delivery latency recorded exactly: 30 days in µs (longer than any queue lifetime).
const DELIVERY_MAX_US: u64 = 30 * 86_400 * 1_000_000;

/// The histograms one reactor keeps.
#[derive(Debug, Clone)]
pub struct Histograms {
    /// End of DATA (terminator seen) → 250 written, fsync included; µs.
    pub ack_latency_us: Histogram<u64>,
    /// Accept → close; ms.
    pub session_duration_ms: Histogram<u64>,
    /// STARTTLS 220 written → TLS handshake complete; µs.
    pub tls_handshake_us: Histogram<u64>,
    /// One fdatasync of a spool segment, submission to completion; µs.
    pub fsync_us: Histogram<u64>,
    /// One spool group write (the final frames of an fdatasync's batch), submission to
    /// completion; µs.
    pub group_write_us: Histogram<u64>,
}

/// Percentiles of one histogram, as shown by `ringmx stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Values recorded.
    pub count: u64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest value.
    pub max: u64,
    /// Sum of the values (mean × count), for Prometheus `_sum`.
    pub sum: f64,
}

impl Histograms {
    /// Empty histograms.
    pub fn new() -> Self {
        Self {
            ack_latency_us: new_histogram(ACK_LATENCY_MAX_US),
            session_duration_ms: new_histogram(SESSION_DURATION_MAX_MS),
            tls_handshake_us: new_histogram(ACK_LATENCY_MAX_US),
            fsync_us: new_histogram(SPOOL_OP_MAX_US),
            group_write_us: new_histogram(SPOOL_OP_MAX_US),
        }
    }

    /// Records one message's ack latency.
    pub fn record_ack(&mut self, latency: Duration) {
        self.ack_latency_us.saturating_record(micros(latency));
    }

    /// Records one session's duration.
    pub fn record_session(&mut self, duration: Duration) {
        self.session_duration_ms
            .saturating_record(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
    }

    /// Records one completed TLS handshake's duration.
    pub fn record_tls_handshake(&mut self, duration: Duration) {
        self.tls_handshake_us.saturating_record(micros(duration));
    }

    /// Records one fdatasync's duration.
    pub fn record_fsync(&mut self, took: Duration) {
        self.fsync_us.saturating_record(micros(took));
    }

    /// Records one group write's duration.
    pub fn record_group_write(&mut self, took: Duration) {
        self.group_write_us.saturating_record(micros(took));
    }

    /// Adds `other` into `self` (same bounds, so this cannot fail; a failure would only lose
    /// that histogram's figures, never panic).
    pub fn merge(&mut self, other: &Self) {
        let _ = self.ack_latency_us.add(&other.ack_latency_us);
        let _ = self.session_duration_ms.add(&other.session_duration_ms);
        let _ = self.tls_handshake_us.add(&other.tls_handshake_us);
        let _ = self.fsync_us.add(&other.fsync_us);
        let _ = self.group_write_us.add(&other.group_write_us);
    }
}

/// The delivery stage's histograms (one set for the server, written by the delivery thread).
#[derive(Debug, Clone)]
pub struct DeliveryHistograms {
    /// Accepted (the message's arrival in the spool) → the next hop's 2xx for a recipient; µs.
    pub delivered_us: Histogram<u64>,
    /// One delivery attempt: connecting (or taking a cached connection) → the outcome; µs.
    pub attempt_us: Histogram<u64>,
}

impl DeliveryHistograms {
    /// Empty histograms.
    pub fn new() -> Self {
        Self {
            delivered_us: new_histogram(DELIVERY_MAX_US),
            attempt_us: new_histogram(DELIVERY_MAX_US),
        }
    }

    /// Records one recipient's accept-to-delivered latency.
    pub fn record_delivered(&mut self, latency: Duration) {
        self.delivered_us.saturating_record(micros(latency));
    }

    /// Records one attempt's duration.
    pub fn record_attempt(&mut self, took: Duration) {
        self.attempt_us.saturating_record(micros(took));
    }
}

impl Default for DeliveryHistograms {
    fn default() -> Self {
        Self::new()
    }
}

impl Default for Histograms {
    fn default() -> Self {
        Self::new()
    }
}

impl Summary {
    /// The summary of `h`.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let mean = h.mean();
        Self {
            count: h.len(),
            mean,
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            #[allow(clippy::cast_precision_loss)] // counts far below 2^52
            sum: mean * h.len() as f64,
        }
    }
}

/// `d` in whole µs, saturating.
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn new_histogram(high: u64) -> Histogram<u64> {
    Histogram::new_with_bounds(1, high, SIGNIFICANT_FIGURES).expect("bounds") // const 1 < high, 3 figures: valid
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_percentiles() {
        let mut h = Histograms::new();
        for us in 1..=1000u64 {
            h.record_ack(Duration::from_micros(us));
        }
        let s = Summary::of(&h.ack_latency_us);
        assert_eq!(s.count, 1000);
        assert!((499..=501).contains(&s.p50), "{s:?}");
        assert!((899..=901).contains(&s.p90), "{s:?}");
        assert!((989..=991).contains(&s.p99), "{s:?}");
        assert!((998..=1000).contains(&s.p999), "{s:?}");
        assert!((999..=1001).contains(&s.max), "{s:?}");
        assert!((s.mean - 500.5).abs() < 1.0);
    }

    #[test]
    fn empty_summary_is_zero() {
        assert_eq!(
            Summary::of(&Histograms::new().session_duration_ms),
            Summary::default()
        );
    }

    #[test]
    fn merge_adds_counts() {
        let mut a = Histograms::new();
        let mut b = Histograms::new();
        a.record_session(Duration::from_millis(10));
        b.record_session(Duration::from_millis(30));
        b.record_session(Duration::from_secs(10 * 86_400)); // saturates, never errors
        a.merge(&b);
        let s = Summary::of(&a.session_duration_ms);
        assert_eq!(s.count, 3);
        assert!(s.max >= SESSION_DURATION_MAX_MS - SESSION_DURATION_MAX_MS / 500);
    }
}
