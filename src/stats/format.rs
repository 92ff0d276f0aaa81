//! Renders a [`Snapshot`] as text for people, JSON for scripts, or the Prometheus text
//! exposition format (version 0.0.4) for scrapers.
//!
//! Pure functions of a snapshot; no sockets or clocks here.

use std::fmt::Write as _;

use super::{MetricKind, ReactorSnapshot, Snapshot, Summary};

/// Picks one histogram summary out of a reactor snapshot.
type Pick = fn(&ReactorSnapshot) -> &Summary;

/// An output format, chosen by the one request line a stats client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned text (the default).
    Text,
    /// One JSON object.
    Json,
    /// Prometheus text exposition format.
    Prometheus,
}

impl Format {
    /// The format named by a request line (`text`, `json`, `prometheus`; case and surrounding
    /// blanks ignored; empty means text). `None` for anything else.
    pub fn from_request(line: &str) -> Option<Self> {
        match line.trim().to_ascii_lowercase().as_str() {
            "" | "text" => Some(Self::Text),
            "json" => Some(Self::Json),
            "prometheus" => Some(Self::Prometheus),
            _ => None,
        }
    }

    /// The request line that asks for this format.
    pub fn request(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
            Self::Prometheus => "prometheus",
        }
    }

    /// Renders `snap`.
    pub fn render(self, snap: &Snapshot) -> String {
        match self {
            Self::Text => text(snap),
            Self::Json => json(snap),
            Self::Prometheus => prometheus(snap),
        }
    }
}

/// Aligned text: counters of the total, then each histogram per reactor and in total.
pub fn text(snap: &Snapshot) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "ringmx {}  uptime {:.1}s  reactors {}  sync {}{}",
        snap.version,
        snap.uptime_secs,
        snap.reactors.len(),
        snap.sync,
        if snap.sync == "none" {
            " (NO FSYNC: acknowledged mail can be lost)"
        } else {
            ""
        }
    );
    let c = &snap.total.counters;
    let _ = writeln!(
        s,
        "connections  accepted {}  active {}  refused {} (limit {}, per-ip {})  proxy-failed {}",
        c.connections_accepted,
        c.connections_active,
        c.connections_refused_limit + c.connections_refused_per_ip,
        c.connections_refused_limit,
        c.connections_refused_per_ip,
        c.connections_proxy_failed
    );
    let _ = writeln!(
        s,
        "sessions     quit {}  timeout {}  too-many-errors {}  not-smtp {}  shutdown {}  disconnected {}  io-error {}",
        c.sessions_quit,
        c.sessions_timeout,
        c.sessions_too_many_errors,
        c.sessions_not_smtp,
        c.sessions_shutdown,
        c.sessions_disconnected,
        c.sessions_io_error
    );
    let _ = writeln!(
        s,
        "messages     accepted {}  rejected: too-big {}  bare-line-ending {}  too-many-hops {}  no-space {}  io {}  aborted {}",
        c.messages_accepted,
        c.messages_rejected_too_big,
        c.messages_rejected_bare_line_ending,
        c.messages_rejected_too_many_hops,
        c.messages_failed_no_space,
        c.messages_failed_io,
        c.messages_aborted
    );
    let _ = writeln!(
        s,
        "bytes        received {}  accepted {}",
        c.bytes_received, c.bytes_accepted
    );
    let _ = writeln!(
        s,
        "replies      2xx {}  3xx {}  4xx {}  5xx {}",
        c.replies_2xx, c.replies_3xx, c.replies_4xx, c.replies_5xx
    );
    let _ = writeln!(
        s,
        "tls          handshakes {}  failed: timeout {}  protocol {}  client-alert {}  sessions: v1.2 {}  v1.3 {}  discarded-bytes {}",
        c.tls_handshakes,
        c.tls_failed_timeout,
        c.tls_failed_protocol,
        c.tls_failed_alert,
        c.tls_sessions_v12,
        c.tls_sessions_v13,
        c.tls_discarded_bytes
    );
    let _ = writeln!(
        s,
        "refused      unknown-recipient {}  connect-rate {}  message-rate {}  recipient-rate {}  pregreet {}  dnsbl {}  (dnsbl lookup failures {})",
        c.refused_unknown_recipient,
        c.refused_connect_rate,
        c.refused_message_rate,
        c.refused_recipient_rate,
        c.refused_pregreet,
        c.refused_dnsbl,
        c.dnsbl_failures
    );
    let _ = writeln!(
        s,
        "verify       probes {}  cache-hits {}  coalesced {}  refused {}  deferred {}",
        c.verify_probes,
        c.verify_cache_hits,
        c.verify_coalesced,
        c.refused_unverified,
        c.deferred_unverified
    );
    if let Some(d) = &snap.delivery {
        let figures: Vec<String> = d
            .fields()
            .iter()
            .map(|(n, v, _)| format!("{} {v}", n.replace('_', "-")))
            .collect();
        let _ = writeln!(s, "delivery     {}", figures.join("  "));
        let _ = writeln!(
            s,
            "\n{:<24}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}",
            "delivery (us)", "count", "mean", "p50", "p90", "p99", "p99.9", "max"
        );
        summary_row(&mut s, "  accepted->delivered", &d.delivered_latency_us);
        summary_row(&mut s, "  attempt", &d.attempt_us);
    }
    let sp = &snap.total.spool;
    let line = |n: u8| {
        sp.fields()
            .iter()
            .filter(|f| f.line == n)
            .map(|f| format!("{} {}", f.label, f.value))
            .collect::<Vec<_>>()
            .join("  ")
    };
    let _ = writeln!(s, "spool        {}", line(1));
    let _ = writeln!(
        s,
        "             batch mean {:.2}  {}",
        sp.mean_batch,
        line(2)
    );
    let hist: Vec<String> = sp
        .batches
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(label, n)| format!("{label}:{n}"))
        .collect();
    let _ = writeln!(s, "             fsyncs by batch size  {}", hist.join("  "));
    let tables: [(&str, Pick); 5] = [
        ("ack latency (us)", |r| &r.ack_latency_us),
        ("spool fdatasync (us)", |r| &r.fsync_us),
        ("spool group write (us)", |r| &r.group_write_us),
        ("session duration (ms)", |r| &r.session_duration_ms),
        ("tls handshake (us)", |r| &r.tls_handshake_us),
    ];
    for (title, pick) in tables {
        let _ = writeln!(
            s,
            "\n{title:<24}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}",
            "count", "mean", "p50", "p90", "p99", "p99.9", "max"
        );
        for (i, r) in snap.reactors.iter().enumerate() {
            summary_row(&mut s, &format!("  reactor {i}"), pick(r));
        }
        summary_row(&mut s, "  total", pick(&snap.total));
    }
    s
}

/// One Prometheus summary's quantile, `_sum` and `_count` lines; `labels` (e.g.
/// `reactor="0"`, or empty) go before the quantile label; values are divided by `per_second`.
fn prometheus_quantiles(s: &mut String, metric: &str, labels: &str, m: &Summary, per_second: f64) {
    let sep = if labels.is_empty() { "" } else { "," };
    for (q, v) in [
        ("0.5", m.p50),
        ("0.9", m.p90),
        ("0.99", m.p99),
        ("0.999", m.p999),
        ("1", m.max),
    ] {
        #[allow(clippy::cast_precision_loss)] // latencies far below 2^52
        let v = v as f64 / per_second;
        let _ = writeln!(s, "{metric}{{{labels}{sep}quantile=\"{q}\"}} {v}");
    }
    let braces = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let _ = writeln!(s, "{metric}_sum{braces} {}", m.sum / per_second);
    let _ = writeln!(s, "{metric}_count{braces} {}", m.count);
}

fn summary_row(s: &mut String, label: &str, m: &Summary) {
    let _ = writeln!(
        s,
        "{label:<24}{:>10}{:>10.0}{:>10}{:>10}{:>10}{:>10}{:>10}",
        m.count, m.mean, m.p50, m.p90, m.p99, m.p999, m.max
    );
}

/// The snapshot as one pretty-printed JSON object.
pub fn json(snap: &Snapshot) -> String {
    // Serializing plain structs of numbers and static strings cannot fail.
    let mut s = serde_json::to_string_pretty(snap).unwrap_or_default();
    s.push('\n');
    s
}

/// Prometheus text exposition: counters as `ringmx_<name>` with a `reactor` label, histograms
/// as summaries with `quantile` labels (in seconds, or in messages for fsync batches).
pub fn prometheus(snap: &Snapshot) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# HELP ringmx_info Server facts; sync=\"none\" means no fsync."
    );
    let _ = writeln!(s, "# TYPE ringmx_info gauge");
    let _ = writeln!(
        s,
        "ringmx_info{{version=\"{}\",sync=\"{}\",reactors=\"{}\"}} 1",
        snap.version,
        snap.sync,
        snap.reactors.len()
    );
    let _ = writeln!(s, "# TYPE ringmx_uptime_seconds gauge");
    let _ = writeln!(s, "ringmx_uptime_seconds {:.3}", snap.uptime_secs);
    if let Some(d) = &snap.delivery {
        for (name, v, gauge) in d.fields() {
            let metric = if gauge {
                format!("ringmx_delivery_{name}")
            } else {
                format!("ringmx_delivery_{name}_total")
            };
            let kind = if gauge { "gauge" } else { "counter" };
            let _ = writeln!(s, "# TYPE {metric} {kind}\n{metric} {v}");
        }
        for (metric, m) in [
            ("ringmx_delivery_latency_seconds", &d.delivered_latency_us),
            ("ringmx_delivery_attempt_seconds", &d.attempt_us),
        ] {
            let _ = writeln!(s, "# TYPE {metric} summary");
            prometheus_quantiles(&mut s, metric, "", m, 1e6);
        }
    }
    let names: Vec<&'static str> = snap.total.counters.fields().iter().map(|f| f.0).collect();
    for (k, name) in names.iter().enumerate() {
        let gauge = matches!(*name, "connections_active");
        let metric = if gauge {
            format!("ringmx_{name}")
        } else {
            format!("ringmx_{name}_total")
        };
        let _ = writeln!(
            s,
            "# TYPE {metric} {}",
            if gauge { "gauge" } else { "counter" }
        );
        for (i, r) in snap.reactors.iter().enumerate() {
            let _ = writeln!(
                s,
                "{metric}{{reactor=\"{i}\"}} {}",
                r.counters.fields()[k].1
            );
        }
    }
    let spool_names = snap.total.spool.fields();
    for (k, field) in spool_names.iter().enumerate() {
        let (metric, kind) = match field.prometheus {
            Some(MetricKind::Counter) => (format!("ringmx_spool_{}_total", field.name), "counter"),
            Some(MetricKind::Gauge) => (format!("ringmx_spool_{}", field.name), "gauge"),
            None => continue,
        };
        let _ = writeln!(s, "# TYPE {metric} {kind}");
        for (i, r) in snap.reactors.iter().enumerate() {
            let _ = writeln!(
                s,
                "{metric}{{reactor=\"{i}\"}} {}",
                r.spool.fields()[k].value
            );
        }
    }
    let _ = writeln!(
        s,
        "# HELP ringmx_spool_fsync_batches_total fdatasync calls by how many messages each made durable."
    );
    let _ = writeln!(s, "# TYPE ringmx_spool_fsync_batches_total counter");
    for (i, r) in snap.reactors.iter().enumerate() {
        for (label, n) in &r.spool.batches {
            let _ = writeln!(
                s,
                "ringmx_spool_fsync_batches_total{{reactor=\"{i}\",messages=\"{label}\"}} {n}"
            );
        }
    }
    let summaries: [(&str, f64, Pick); 5] = [
        ("ringmx_ack_latency_seconds", 1e6, |r| &r.ack_latency_us),
        ("ringmx_spool_fsync_seconds", 1e6, |r| &r.fsync_us),
        ("ringmx_spool_group_write_seconds", 1e6, |r| {
            &r.group_write_us
        }),
        ("ringmx_session_duration_seconds", 1e3, |r| {
            &r.session_duration_ms
        }),
        ("ringmx_tls_handshake_seconds", 1e6, |r| &r.tls_handshake_us),
    ];
    for (metric, per_second, pick) in summaries {
        let _ = writeln!(s, "# TYPE {metric} summary");
        for (i, r) in snap.reactors.iter().enumerate() {
            let label = format!("reactor=\"{i}\"");
            prometheus_quantiles(&mut s, metric, &label, pick(r), per_second);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::spool::{SyncPolicy, Timings};
    use crate::stats::{ReactorStats, Registry};

    fn sample() -> Snapshot {
        let reg = Registry::new(2, SyncPolicy::Group);
        let r0 = reg.reactor(0).unwrap();
        ReactorStats::add(&r0.counters.messages_accepted, 7);
        ReactorStats::inc(&r0.counters.connections_active);
        r0.record_ack(Duration::from_micros(1500));
        r0.tls(crate::stats::TlsOutcome::Completed {
            v13: true,
            duration: Duration::from_micros(900),
        });
        r0.tls(crate::stats::TlsOutcome::ClientAlert);
        r0.fsync(Duration::from_micros(900));
        r0.group_write(Duration::from_micros(35));
        let r1 = reg.reactor(1).unwrap();
        r1.record_ack(Duration::from_micros(2500));
        r1.fsync(Duration::from_micros(1100));
        reg.snapshot()
    }

    #[test]
    fn refusals_by_cause_in_all_three_formats() {
        let reg = Registry::new(1, SyncPolicy::Group);
        let r0 = reg.reactor(0).unwrap();
        ReactorStats::add(&r0.counters.refused_unknown_recipient, 4);
        ReactorStats::inc(&r0.counters.refused_connect_rate);
        ReactorStats::add(&r0.counters.refused_message_rate, 2);
        ReactorStats::add(&r0.counters.refused_recipient_rate, 3);
        ReactorStats::add(&r0.counters.refused_dnsbl, 5);
        ReactorStats::add(&r0.counters.dnsbl_failures, 6);
        r0.session_ended(crate::stats::SessionEnd::Pregreet, Duration::from_millis(5));
        ReactorStats::add(&r0.counters.verify_probes, 5);
        ReactorStats::add(&r0.counters.verify_cache_hits, 6);
        ReactorStats::add(&r0.counters.verify_coalesced, 7);
        ReactorStats::add(&r0.counters.refused_unverified, 8);
        ReactorStats::add(&r0.counters.deferred_unverified, 9);
        let snap = reg.snapshot();
        let t = text(&snap);
        assert!(
            t.contains("verify       probes 5  cache-hits 6  coalesced 7  refused 8  deferred 9"),
            "{t}"
        );
        assert!(
            t.contains("refused      unknown-recipient 4  connect-rate 1  message-rate 2  recipient-rate 3  pregreet 1  dnsbl 5  (dnsbl lookup failures 6)"),
            "{t}"
        );
        let v: serde_json::Value = serde_json::from_str(&json(&snap)).unwrap();
        for (name, n) in [
            ("refused_unknown_recipient", 4),
            ("refused_connect_rate", 1),
            ("refused_message_rate", 2),
            ("refused_recipient_rate", 3),
            ("refused_pregreet", 1),
            ("verify_probes", 5),
            ("verify_cache_hits", 6),
            ("verify_coalesced", 7),
            ("refused_unverified", 8),
            ("deferred_unverified", 9),
            ("refused_dnsbl", 5),
            ("dnsbl_failures", 6),
        ] {
            assert_eq!(v["total"]["counters"][name], n, "{name}");
            let p = prometheus(&snap);
            assert!(
                p.contains(&format!("ringmx_{name}_total{{reactor=\"0\"}} {n}\n")),
                "{name}: {p}"
            );
        }
    }

    #[test]
    fn tls_figures_in_all_three_formats() {
        let snap = sample();
        let t = text(&snap);
        assert!(t.contains("tls          handshakes 1  failed: timeout 0  protocol 0  client-alert 1  sessions: v1.2 0  v1.3 1"), "{t}");
        assert!(t.contains("tls handshake (us)"), "{t}");
        let v: serde_json::Value = serde_json::from_str(&json(&snap)).unwrap();
        assert_eq!(v["total"]["counters"]["tls_sessions_v13"], 1);
        assert_eq!(v["total"]["counters"]["tls_failed_alert"], 1);
        assert_eq!(v["total"]["tls_handshake_us"]["count"], 1);
        let p = prometheus(&snap);
        assert!(
            p.contains("ringmx_tls_handshakes_total{reactor=\"0\"} 1\n"),
            "{p}"
        );
        assert!(
            p.contains("ringmx_tls_failed_timeout_total{reactor=\"0\"} 0\n"),
            "{p}"
        );
        assert!(
            p.contains("ringmx_tls_handshake_seconds_count{reactor=\"0\"} 1\n"),
            "{p}"
        );
    }

    #[test]
    fn delivery_histograms_in_all_three_formats() {
        let mut reg = Registry::new(1, SyncPolicy::Group);
        let d = reg.enable_delivery();
        {
            let mut h = d.histograms();
            h.record_delivered(Duration::from_millis(40));
            h.record_delivered(Duration::from_millis(60));
            h.record_attempt(Duration::from_millis(3));
        }
        let snap = reg.snapshot();
        let t = text(&snap);
        assert!(t.contains("accepted->delivered"), "{t}");
        let row = t.lines().find(|l| l.contains("  attempt ")).unwrap();
        assert_eq!(row.split_whitespace().nth(1), Some("1"), "{row}");
        let v: serde_json::Value = serde_json::from_str(&json(&snap)).unwrap();
        assert_eq!(v["delivery"]["delivered_latency_us"]["count"], 2);
        assert_eq!(v["delivery"]["attempt_us"]["count"], 1);
        let p = prometheus(&snap);
        assert!(
            p.contains("# TYPE ringmx_delivery_latency_seconds summary"),
            "{p}"
        );
        assert!(p.contains("ringmx_delivery_latency_seconds_count 2"), "{p}");
        let p99 = p
            .lines()
            .find(|l| l.starts_with("ringmx_delivery_latency_seconds{quantile=\"0.99\"}"))
            .unwrap();
        let secs: f64 = p99.rsplit(' ').next().unwrap().parse().unwrap();
        assert!((0.059..0.061).contains(&secs), "{p99}");
        assert!(p.contains("ringmx_delivery_attempt_seconds_count 1"), "{p}");
        // The reactor summaries keep their labels.
        assert!(
            p.contains("ringmx_ack_latency_seconds_count{reactor=\"0\"} 0"),
            "{p}"
        );
    }

    #[test]
    fn request_lines() {
        assert_eq!(Format::from_request(""), Some(Format::Text));
        assert_eq!(Format::from_request(" JSON\r\n"), Some(Format::Json));
        assert_eq!(
            Format::from_request("prometheus\n"),
            Some(Format::Prometheus)
        );
        assert_eq!(Format::from_request("xml"), None);
        for f in [Format::Text, Format::Json, Format::Prometheus] {
            assert_eq!(Format::from_request(f.request()), Some(f));
        }
    }

    #[test]
    fn text_shows_percentiles_per_reactor_and_total() {
        let t = text(&sample());
        assert!(t.contains("sync group"), "{t}");
        assert!(t.contains("messages     accepted 7"), "{t}");
        assert!(t.contains("ack latency (us)"), "{t}");
        assert!(t.contains("p99.9"), "{t}");
        let row = t
            .lines()
            .find(|l| l.trim_start().starts_with("reactor 1"))
            .unwrap();
        assert!(
            row.contains("2501") || row.contains("2500") || row.contains("2499"),
            "{row}"
        );
        let total = t
            .lines()
            .find(|l| l.trim_start().starts_with("total"))
            .unwrap();
        assert!(total.split_whitespace().nth(1) == Some("2"), "{total}");
    }

    #[test]
    fn spool_timings_in_every_format() {
        let snap = sample();
        let t = text(&snap);
        for title in ["spool fdatasync (us)", "spool group write (us)"] {
            let table: Vec<&str> = t
                .split("\n\n")
                .find(|b| b.starts_with(title))
                .unwrap_or_else(|| panic!("{title}: {t}"))
                .lines()
                .collect();
            assert!(table[0].ends_with("p50       p90       p99     p99.9       max"));
            assert_eq!(table.len(), 4, "{t}");
            let total: Vec<&str> = table[3].split_whitespace().collect();
            let want = if title.contains("fdatasync") {
                ["total", "2", "1000", "900", "1100"]
            } else {
                ["total", "1", "35", "35", "35"]
            };
            assert_eq!(total[..5], want, "{t}");
        }
        let v: serde_json::Value = serde_json::from_str(&json(&snap)).unwrap();
        assert_eq!(v["total"]["fsync_us"]["count"], 2);
        assert_eq!(v["reactors"][0]["group_write_us"]["count"], 1);
        for key in ["count", "mean", "p50", "p90", "p99", "p999", "max", "sum"] {
            assert!(v["total"]["fsync_us"].get(key).is_some(), "{key}");
        }
        let p = prometheus(&snap);
        assert!(
            p.contains("# TYPE ringmx_spool_fsync_seconds summary\n"),
            "{p}"
        );
        assert!(
            p.contains("# TYPE ringmx_spool_group_write_seconds summary\n"),
            "{p}"
        );
        for q in ["0.5", "0.9", "0.99", "0.999", "1"] {
            assert!(
                p.contains(&format!(
                    "ringmx_spool_fsync_seconds{{reactor=\"1\",quantile=\"{q}\"}} 0.0011"
                )),
                "{q}: {p}"
            );
        }
        assert!(
            p.contains("ringmx_spool_fsync_seconds_count{reactor=\"0\"} 1\n"),
            "{p}"
        );
        assert!(
            p.contains("ringmx_spool_group_write_seconds_count{reactor=\"1\"} 0\n"),
            "{p}"
        );
    }

    #[test]
    fn spool_figures_keep_their_text_lines_and_metrics() {
        let t = text(&sample());
        assert!(
            t.contains("\nspool        commits 0  aborts 0  failed 0  bytes 0  fsyncs 0  dir-fsyncs 0  segments 0\n"),
            "{t}"
        );
        assert!(
            t.contains("\n             batch mean 0.00  max 0  heap-buffers 0  write-errors 0  sync-errors 0\n"),
            "{t}"
        );
        let p = prometheus(&sample());
        let types: Vec<&str> = p
            .lines()
            .filter(|l| {
                l.starts_with("# TYPE ringmx_spool_")
                    && !l.contains("fsync_batches")
                    && !l.ends_with(" summary")
            })
            .collect();
        assert_eq!(
            types,
            [
                "# TYPE ringmx_spool_commits_total counter",
                "# TYPE ringmx_spool_aborts_total counter",
                "# TYPE ringmx_spool_failed_commits_total counter",
                "# TYPE ringmx_spool_bytes_total counter",
                "# TYPE ringmx_spool_fsyncs_total counter",
                "# TYPE ringmx_spool_dir_fsyncs_total counter",
                "# TYPE ringmx_spool_segments_total counter",
                "# TYPE ringmx_spool_max_batch gauge",
            ]
        );
        let v: serde_json::Value = serde_json::from_str(&json(&sample())).unwrap();
        for key in [
            "fsyncs",
            "dir_fsyncs",
            "commits",
            "aborts",
            "failed_commits",
            "bytes",
            "mean_batch",
            "max_batch",
            "batches",
            "segments",
            "heap_buffers",
            "write_errors",
            "sync_errors",
        ] {
            assert!(v["total"]["spool"].get(key).is_some(), "{key}");
        }
    }

    #[test]
    fn json_round_trips() {
        let v: serde_json::Value = serde_json::from_str(&json(&sample())).unwrap();
        assert_eq!(v["sync"], "group");
        assert_eq!(v["total"]["counters"]["messages_accepted"], 7);
        assert_eq!(v["reactors"].as_array().unwrap().len(), 2);
        assert_eq!(v["total"]["ack_latency_us"]["count"], 2);
    }

    #[test]
    fn prometheus_is_well_formed() {
        let p = prometheus(&sample());
        assert!(
            p.contains("ringmx_messages_accepted_total{reactor=\"0\"} 7\n"),
            "{p}"
        );
        assert!(
            p.contains("ringmx_connections_active{reactor=\"0\"} 1\n"),
            "{p}"
        );
        assert!(
            p.contains("ringmx_ack_latency_seconds_count{reactor=\"1\"} 1\n"),
            "{p}"
        );
        assert!(p.contains("ringmx_info{version="), "{p}");
        // Every non-comment line is `name{labels} value` with a number as value.
        for line in p.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(name.starts_with("ringmx_"), "{line}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
