//! Counters and latency histograms of a run, merged over threads, and the report: a text table
//! or JSON, plus the live progress line.
//!
//! It does not measure anything itself; the engine records into [`Stats`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::args::Config;
use crate::session::{Failure, Step};

/// Highest latency the histograms hold (longer ones are recorded as this), in nanoseconds.
const MAX_LATENCY_NS: u64 = 3_600_000_000_000;
/// Significant decimal digits of the histograms.
const SIG_DIGITS: u8 = 3;

/// One latency histogram, nanoseconds.
#[derive(Debug, Clone)]
pub(crate) struct Latency(Histogram<u64>);

impl Latency {
    fn new() -> Self {
        let h = Histogram::new_with_bounds(1, MAX_LATENCY_NS, SIG_DIGITS);
        Self(h.expect("constant bounds hdrhistogram accepts: low 1, high > 2, 3 digits"))
    }

    /// Records one latency.
    pub(crate) fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.0.saturating_record(ns);
    }

    fn merge(&mut self, other: &Self) {
        // Same bounds on both sides, so adding cannot fail; saturate on the impossible error.
        let _ = self.0.add(&other.0);
    }

    /// How many values were recorded.
    pub(crate) fn count(&self) -> u64 {
        self.0.len()
    }

    /// The value at percentile `p` (0..=100), microseconds.
    pub(crate) fn percentile_us(&self, p: f64) -> f64 {
        self.0.value_at_percentile(p) as f64 / 1000.0
    }

    fn max_us(&self) -> f64 {
        self.0.max() as f64 / 1000.0
    }
}

/// Connection-level errors, counted per event (one connection, one count).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ConnErrors {
    /// Connection refused.
    pub(crate) refused: u64,
    /// Other connect failures (unreachable, reset during the handshake, timeout while connecting).
    pub(crate) connect: u64,
    /// Closed or reset by the server in the middle of the dialogue.
    pub(crate) closed: u64,
    /// No reply within `--timeout`.
    pub(crate) timeout: u64,
    /// A malformed or unasked-for reply.
    pub(crate) protocol: u64,
    /// Greeting, EHLO or HELO refused.
    pub(crate) refused_reply: u64,
}

impl ConnErrors {
    /// All errors.
    pub(crate) fn total(&self) -> u64 {
        self.refused
            + self.connect
            + self.closed
            + self.timeout
            + self.protocol
            + self.refused_reply
    }

    /// Counts one error.
    pub(crate) fn count(&mut self, why: Failure) {
        match why {
            Failure::Refused => self.refused += 1,
            Failure::Connect => self.connect += 1,
            Failure::Closed => self.closed += 1,
            Failure::Timeout => self.timeout += 1,
            Failure::Protocol(_) | Failure::Tls | Failure::NoChunking => self.protocol += 1,
            Failure::Reply { .. } => self.refused_reply += 1,
        }
    }
}

/// Everything one thread counted.
#[derive(Debug, Clone)]
pub(crate) struct Stats {
    /// Messages answered 250 after the data.
    pub(crate) acked: u64,
    /// Messages that failed, by reason (`"550"` for a reply code, `"closed"`, …).
    pub(crate) failed: BTreeMap<String, u64>,
    /// Refused recipients by reply code.
    pub(crate) rcpt_rejected: BTreeMap<u16, u64>,
    /// Connections that got as far as TCP established.
    pub(crate) connections: u64,
    /// `--starttls`: TLS handshakes completed.
    pub(crate) tls_handshakes: u64,
    /// Connection-level errors.
    pub(crate) conn_errors: ConnErrors,
    /// Messages claimed but neither acknowledged nor failed when the run stopped (an abort).
    pub(crate) unfinished: u64,
    /// `connect()` to established.
    pub(crate) connect: Latency,
    /// Established to the 220 greeting.
    pub(crate) greeting: Latency,
    /// The end-of-data dot written to its 250.
    pub(crate) data_end: Latency,
    /// The message's (intended) start to its 250.
    pub(crate) txn: Latency,
}

impl Stats {
    /// Empty counters.
    pub(crate) fn new() -> Self {
        Self {
            acked: 0,
            failed: BTreeMap::new(),
            rcpt_rejected: BTreeMap::new(),
            connections: 0,
            tls_handshakes: 0,
            conn_errors: ConnErrors::default(),
            unfinished: 0,
            connect: Latency::new(),
            greeting: Latency::new(),
            data_end: Latency::new(),
            txn: Latency::new(),
        }
    }

    /// Counts a failed message.
    pub(crate) fn count_failure(&mut self, why: Failure) {
        let key = match why {
            Failure::Reply { code, .. } => code.to_string(),
            Failure::Refused => "refused".into(),
            Failure::Connect => "connect".into(),
            Failure::Closed => "closed".into(),
            Failure::Timeout => "timeout".into(),
            Failure::Protocol(_) => "protocol".into(),
            Failure::Tls => "tls".into(),
            Failure::NoChunking => "no-chunking".into(),
        };
        *self.failed.entry(key).or_insert(0) += 1;
    }

    /// Messages that failed.
    pub(crate) fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }

    /// Adds another thread's counts.
    pub(crate) fn merge(&mut self, o: &Self) {
        self.acked += o.acked;
        for (k, v) in &o.failed {
            *self.failed.entry(k.clone()).or_insert(0) += v;
        }
        for (k, v) in &o.rcpt_rejected {
            *self.rcpt_rejected.entry(*k).or_insert(0) += v;
        }
        self.connections += o.connections;
        self.tls_handshakes += o.tls_handshakes;
        let (a, b) = (&mut self.conn_errors, &o.conn_errors);
        a.refused += b.refused;
        a.connect += b.connect;
        a.closed += b.closed;
        a.timeout += b.timeout;
        a.protocol += b.protocol;
        a.refused_reply += b.refused_reply;
        self.unfinished += o.unfinished;
        self.connect.merge(&o.connect);
        self.greeting.merge(&o.greeting);
        self.data_end.merge(&o.data_end);
        self.txn.merge(&o.txn);
    }
}

/// A finished run.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    /// Merged counters.
    pub(crate) stats: Stats,
    /// Wall time from start to the last reply.
    pub(crate) elapsed: Duration,
    /// Canonical bytes per message.
    pub(crate) message_bytes: usize,
    /// This process's user and system CPU time.
    pub(crate) cpu: (Duration, Duration),
    /// The address connected to.
    pub(crate) addr: String,
    /// The first error worth a line of its own (e.g. "connection refused"), if any.
    pub(crate) first_error: Option<String>,
    /// The run stopped early: a failure without `-A`, or a signal.
    pub(crate) aborted: bool,
}

impl Report {
    /// Acknowledged messages per second of wall time.
    pub(crate) fn msgs_per_s(&self) -> f64 {
        self.stats.acked as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Acknowledged megabytes (10^6) of message per second.
    pub(crate) fn mb_per_s(&self) -> f64 {
        self.msgs_per_s() * self.message_bytes as f64 / 1e6
    }

    /// Whether every requested message was acknowledged and nothing went wrong.
    pub(crate) fn success(&self, cfg: &Config) -> bool {
        let s = &self.stats;
        let all = cfg
            .messages
            .is_none_or(|m| s.acked == m || cfg.duration.is_some());
        s.acked > 0
            && all
            && s.failed_total() == 0
            && s.unfinished == 0
            && s.conn_errors.total() == 0
    }

    fn cpu_us_per_msg(&self) -> f64 {
        let cpu = self.cpu.0 + self.cpu.1;
        cpu.as_secs_f64() * 1e6 / (self.stats.acked.max(1)) as f64
    }

    fn latencies(&self) -> [(&'static str, &Latency); 4] {
        let s = &self.stats;
        [
            ("connect", &s.connect),
            ("greeting", &s.greeting),
            ("data_end", &s.data_end),
            ("txn", &s.txn),
        ]
    }

    /// The human-readable report.
    pub(crate) fn text(&self, cfg: &Config) -> String {
        let s = &self.stats;
        let mut o = String::new();
        let mode = if cfg.keep {
            "reused connections"
        } else {
            "one connection per message"
        };
        let pipe = if cfg.pipelining {
            "pipelining when offered"
        } else {
            "no pipelining"
        };
        let _ = writeln!(
            o,
            "smtp-source: {} sessions to {}, {mode}, {pipe}, {} byte messages{}{}{}",
            cfg.sessions,
            self.addr,
            self.message_bytes,
            if cfg.bdat { " by BDAT" } else { "" },
            cfg.proxy.map(|p| format!(", {p}")).unwrap_or_default(),
            cfg.rate
                .map(|r| format!(", {r} msgs/s open loop"))
                .unwrap_or_default()
        );
        let _ = writeln!(o, "  acked        {}", s.acked);
        let _ = write!(o, "  failed       {}", s.failed_total());
        for (k, v) in &s.failed {
            let _ = write!(o, "  [{k}: {v}]");
        }
        let _ = writeln!(o);
        if !s.rcpt_rejected.is_empty() {
            let _ = write!(o, "  rcpt refused");
            for (k, v) in &s.rcpt_rejected {
                let _ = write!(o, "  [{k}: {v}]");
            }
            let _ = writeln!(o);
        }
        if s.unfinished > 0 {
            let _ = writeln!(o, "  unfinished   {} (run stopped early)", s.unfinished);
        }
        let e = &s.conn_errors;
        if e.total() > 0 {
            let _ = writeln!(
                o,
                "  conn errors  refused {}, connect {}, closed {}, timeout {}, protocol {}, \
                 greeting/EHLO refused {}",
                e.refused, e.connect, e.closed, e.timeout, e.protocol, e.refused_reply
            );
        }
        let _ = writeln!(o, "  connections  {}", s.connections);
        if cfg.starttls.is_some() {
            let _ = writeln!(o, "  starttls     {} handshakes", s.tls_handshakes);
        }
        let _ = writeln!(o, "  elapsed      {:.3} s", self.elapsed.as_secs_f64());
        let _ = writeln!(
            o,
            "  rate         {:.0} msgs/s, {:.2} MB/s",
            self.msgs_per_s(),
            self.mb_per_s()
        );
        let _ = writeln!(
            o,
            "  client cpu   {:.3} s user, {:.3} s sys, {:.1} us/msg",
            self.cpu.0.as_secs_f64(),
            self.cpu.1.as_secs_f64(),
            self.cpu_us_per_msg()
        );
        let _ = writeln!(
            o,
            "  latency (us)        p50        p90        p99      p99.9        max      count"
        );
        for (name, h) in self.latencies() {
            if h.count() == 0 {
                continue;
            }
            let label = match name {
                "data_end" => "data-end -> 250",
                "txn" if cfg.rate.is_some() => "intended -> 250",
                "txn" => "MAIL -> 250",
                other => other,
            };
            let _ = writeln!(
                o,
                "  {label:<15} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10}",
                h.percentile_us(50.0),
                h.percentile_us(90.0),
                h.percentile_us(99.0),
                h.percentile_us(99.9),
                h.max_us(),
                h.count()
            );
        }
        if let Some(err) = &self.first_error {
            let _ = writeln!(o, "  first error  {err}");
        }
        o
    }

    /// The report as JSON (same figures as [`Report::text`]).
    pub(crate) fn json(&self, cfg: &Config) -> Value {
        let s = &self.stats;
        let mut lat = serde_json::Map::new();
        for (name, h) in self.latencies() {
            lat.insert(
                name.to_string(),
                json!({
                    "count": h.count(),
                    "p50": h.percentile_us(50.0),
                    "p90": h.percentile_us(90.0),
                    "p99": h.percentile_us(99.0),
                    "p99_9": h.percentile_us(99.9),
                    "max": h.max_us(),
                }),
            );
        }
        let e = &s.conn_errors;
        json!({
            "target": self.addr,
            "sessions": cfg.sessions,
            "messages_requested": cfg.messages,
            "message_bytes": self.message_bytes,
            "reuse_connections": cfg.keep,
            "pipelining": cfg.pipelining,
            "bdat": cfg.bdat,
            "proxy": cfg.proxy.map(|p| p.to_string()),
            "rate": cfg.rate,
            "acked": s.acked,
            "failed": s.failed_total(),
            "failed_by_code": s.failed,
            "rcpt_rejected_by_code": s.rcpt_rejected
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect::<BTreeMap<String, u64>>(),
            "unfinished": s.unfinished,
            "aborted": self.aborted,
            "connections": s.connections,
            "starttls": cfg.starttls.is_some(),
            "tls_handshakes": s.tls_handshakes,
            "connection_errors": {
                "refused": e.refused, "connect": e.connect, "closed": e.closed,
                "timeout": e.timeout, "protocol": e.protocol, "greeting_refused": e.refused_reply,
            },
            "first_error": self.first_error,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "msgs_per_s": self.msgs_per_s(),
            "mb_per_s": self.mb_per_s(),
            "client_cpu": {
                "user_s": self.cpu.0.as_secs_f64(),
                "sys_s": self.cpu.1.as_secs_f64(),
                "us_per_msg": self.cpu_us_per_msg(),
            },
            "latency_us": lat,
            "success": self.success(cfg),
        })
    }
}

/// The progress line: acknowledged, failed, and the rate over the last interval.
pub(crate) fn progress_line(acked: u64, failed: u64, rate: f64, elapsed: Duration) -> String {
    format!(
        "smtp-source: {:>7.1}s  {acked:>10} acked  {failed:>6} failed  {rate:>9.0} msgs/s",
        elapsed.as_secs_f64()
    )
}

/// Names a step for error lines ("EHLO refused: 554").
pub(crate) fn describe(why: Failure) -> String {
    match why {
        Failure::Reply { step, code } => match step {
            Step::Greeting | Step::Ehlo | Step::Helo | Step::StartTls => {
                format!("{} refused with {code}", step.name())
            }
            _ => format!("{} answered {code}", step.name()),
        },
        Failure::Refused => "connection refused".into(),
        Failure::Connect => "connect failed".into(),
        Failure::Closed => "connection closed by the server".into(),
        Failure::Timeout => "timed out waiting for the server".into(),
        Failure::Protocol(e) => format!("protocol error: {e}"),
        Failure::Tls => "TLS handshake or record error".into(),
        Failure::NoChunking => "the server does not offer CHUNKING (needed by --bdat)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_counts_and_histograms() {
        let mut a = Stats::new();
        let mut b = Stats::new();
        a.acked = 3;
        b.acked = 4;
        a.count_failure(Failure::Reply {
            step: Step::Dot,
            code: 451,
        });
        b.count_failure(Failure::Reply {
            step: Step::Rcpt,
            code: 451,
        });
        b.count_failure(Failure::Closed);
        b.conn_errors.count(Failure::Refused);
        a.data_end.record(Duration::from_micros(100));
        b.data_end.record(Duration::from_micros(300));
        a.merge(&b);
        assert_eq!(a.acked, 7);
        assert_eq!(a.failed.get("451"), Some(&2));
        assert_eq!(a.failed.get("closed"), Some(&1));
        assert_eq!(a.failed_total(), 3);
        assert_eq!(a.conn_errors.refused, 1);
        assert_eq!(a.data_end.count(), 2);
        let p100 = a.data_end.percentile_us(100.0);
        assert!((299.0..=301.0).contains(&p100), "{p100}");
    }
}
