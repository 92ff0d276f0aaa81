//! The `Received:` trace header we prepend to every stored message (RFC 5321 §4.4), with the
//! protocol names of RFC 3848 and RFC 6531 §3.7.3. Pure formatting: no clock, no DNS.
//!
//! ```text
//! Received: from client.example ([192.0.2.1])
//!         (using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))
//!         by mx.example.net (ringmx) with ESMTPS id 01JDQ4R2S8K00
//!         for <user@example.net>; Tue, 26 Nov 2024 07:17:00 +0000
//! ```
//! We do no reverse DNS lookup, so TCP-info is the address literal alone. Fields the client
//! chose (HELO name, recipient) are sanitised so they cannot break the header: control
//! characters and the delimiters `()<>;\"` and whitespace become `_`. The `(using …)` line
//! appears only for a message received over STARTTLS, in Postfix's words.
//!
//! Everything comes from the spool's [`EnvelopeRecord`] (HELO, protocol flags, recipients,
//! client address, arrival time), the host name and the message id.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};

use super::frame::EnvelopeRecord;

/// Continuation lines start with a tab (folding whitespace, RFC 5322 §2.2.3).
const FOLD: &str = "\r\n\t";

/// Appends the trace header for a message, ending in CRLF.
pub fn received_header(out: &mut Vec<u8>, envelope: &EnvelopeRecord, hostname: &str, id: &str) {
    let helo = if envelope.helo.is_empty() {
        "unknown".to_string()
    } else {
        sanitize(&envelope.helo)
    };
    let mut s = String::with_capacity(200);
    s.push_str("Received: from ");
    s.push_str(&helo);
    s.push_str(" (");
    s.push_str(&address_literal(envelope.client_ip));
    s.push(')');
    s.push_str(FOLD);
    if let Some(t) = &envelope.tls {
        s.push_str("(using ");
        s.push_str(&sanitize(&t.version));
        s.push_str(" with cipher ");
        s.push_str(&sanitize(&t.cipher));
        s.push_str(&format!(" ({0}/{0} bits))", t.bits));
        s.push_str(FOLD);
    }
    s.push_str("by ");
    s.push_str(&sanitize(hostname));
    s.push_str(" (ringmx) with ");
    s.push_str(protocol(envelope));
    s.push_str(" id ");
    s.push_str(id);
    s.push_str(FOLD);
    if let [rcpt] = envelope.rcpts.as_slice() {
        s.push_str("for <");
        s.push_str(&sanitize(rcpt));
        s.push_str(">; ");
    } else {
        s.push_str("; ");
    }
    s.push_str(&rfc5322_date(envelope.received_at()));
    s.push_str("\r\n");
    out.extend_from_slice(s.as_bytes());
}

/// The WITH protocol: `SMTP` after HELO, `ESMTP` after EHLO, `UTF8SMTP` when the transaction
/// used SMTPUTF8 (RFC 6531 §3.7.3); over STARTTLS `ESMTPS` / `UTF8SMTPS` (RFC 3848). HELO after
/// STARTTLS stays `SMTP`: the registry has no TLS name for it, the `(using …)` line tells.
pub fn protocol(envelope: &EnvelopeRecord) -> &'static str {
    let tls = envelope.tls.is_some();
    match (envelope.esmtp, envelope.smtputf8, tls) {
        (_, true, false) => "UTF8SMTP",
        (_, true, true) => "UTF8SMTPS",
        (true, false, false) => "ESMTP",
        (true, false, true) => "ESMTPS",
        (false, false, _) => "SMTP",
    }
}

/// `[192.0.2.1]` or `[IPv6:2001:db8::1]` (RFC 5321 §4.1.3).
pub fn address_literal(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("[{a}]"),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => format!("[{v4}]"),
            None => format!("[IPv6:{a}]"),
        },
    }
}

/// An RFC 5322 §3.3 date-time in UTC, e.g. `Tue, 26 Nov 2024 07:17:00 +0000`.
///
/// Every message's `Received:` line needs one, and many share a second: the text of the last
/// second formatted is kept per thread, so `strftime` runs once a second, not once a message.
pub fn rfc5322_date(at: SystemTime) -> String {
    thread_local! {
        static LAST: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if last.0 != secs {
            let dt: DateTime<Utc> =
                DateTime::from_timestamp(i64::try_from(secs).unwrap_or(0), 0).unwrap_or_default();
            *last = (secs, dt.format("%a, %d %b %Y %H:%M:%S +0000").to_string());
        }
        last.1.clone()
    })
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() || c.is_whitespace() || "()<>;\\\"".contains(c) {
                '_'
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn env(esmtp: bool, utf8: bool, rcpts: &[&str]) -> EnvelopeRecord {
        EnvelopeRecord {
            client_ip: "192.0.2.1".parse().unwrap(),
            received_us: 0,
            helo: "client.example".into(),
            esmtp,
            mail_from: "a@b.example".into(),
            declared_size: None,
            body_8bitmime: false,
            smtputf8: utf8,
            rcpts: rcpts.iter().map(|s| s.to_string()).collect(),
            tls: None,
        }
    }

    #[test]
    fn tls_names_version_and_cipher_like_postfix() {
        let mut e = env(true, false, &["u@example.net"]);
        e.tls = Some(crate::spool::TlsTrace {
            version: "TLSv1.3".into(),
            cipher: "TLS_AES_256_GCM_SHA384".into(),
            bits: 256,
        });
        assert_eq!(
            render(&e, "192.0.2.1"),
            "Received: from client.example ([192.0.2.1])\r\n\t(using TLSv1.3 with cipher \
             TLS_AES_256_GCM_SHA384 (256/256 bits))\r\n\tby mx.example.net (ringmx) with \
             ESMTPS id 01JDQ4R2S8K00\r\n\tfor <u@example.net>; Tue, 26 Nov 2024 07:17:00 +0000\r\n"
        );
        e.smtputf8 = true;
        assert!(render(&e, "192.0.2.1").contains("with UTF8SMTPS id"));
        e.smtputf8 = false;
        e.esmtp = false;
        assert!(render(&e, "192.0.2.1").contains("with SMTP id"));
    }

    fn render(e: &EnvelopeRecord, ip: &str) -> String {
        let mut out = Vec::new();
        let at = UNIX_EPOCH + Duration::from_secs(1_732_605_420);
        let e = EnvelopeRecord {
            client_ip: ip.parse().unwrap(),
            received_us: crate::spool::frame::unix_us(at),
            ..e.clone()
        };
        received_header(&mut out, &e, "mx.example.net", "01JDQ4R2S8K00");
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn one_recipient_esmtp() {
        assert_eq!(
            render(&env(true, false, &["u@example.net"]), "192.0.2.1"),
            "Received: from client.example ([192.0.2.1])\r\n\tby mx.example.net (ringmx) with \
             ESMTP id 01JDQ4R2S8K00\r\n\tfor <u@example.net>; Tue, 26 Nov 2024 07:17:00 +0000\r\n"
        );
    }

    #[test]
    fn several_recipients_no_for_clause_and_protocols() {
        let s = render(&env(false, false, &["a@x", "b@x"]), "2001:db8::1");
        assert!(s.contains("([IPv6:2001:db8::1])"), "{s}");
        assert!(s.contains("with SMTP id"), "{s}");
        assert!(!s.contains("for <"), "{s}");
        assert!(s.contains("\r\n\t; Tue, 26 Nov 2024"), "{s}");
        assert!(render(&env(true, true, &[]), "::ffff:192.0.2.9").contains("with UTF8SMTP id"));
        assert!(render(&env(true, true, &[]), "::ffff:192.0.2.9").contains("([192.0.2.9])"));
    }

    #[test]
    fn hostile_fields_cannot_break_the_header() {
        let mut e = env(true, false, &["x>\r\nBcc: evil@x"]);
        e.helo = "a\r\nX-Injected: 1 (".into();
        let s = render(&e, "192.0.2.1");
        assert_eq!(s.matches("\r\n").count(), 3, "{s}");
        assert!(!s.contains("\r\nX-Injected"), "{s}");
        assert!(!s.contains("\r\nBcc"), "{s}");
        for line in s.split("\r\n").skip(1).filter(|l| !l.is_empty()) {
            assert!(
                line.starts_with('\t'),
                "every continuation is folded: {line:?}"
            );
        }
    }

    #[test]
    fn dates_are_rfc5322_and_the_per_second_cache_follows_the_clock() {
        use std::time::Duration;
        let t = UNIX_EPOCH + Duration::from_secs(1_732_605_420);
        assert_eq!(rfc5322_date(t), "Tue, 26 Nov 2024 07:17:00 +0000");
        // The same second (another fraction) comes from the cache, the next one does not.
        assert_eq!(
            rfc5322_date(t + Duration::from_millis(999)),
            "Tue, 26 Nov 2024 07:17:00 +0000"
        );
        assert_eq!(
            rfc5322_date(t + Duration::from_secs(1)),
            "Tue, 26 Nov 2024 07:17:01 +0000"
        );
        // Back in time (a clock step) is formatted anew, not served stale.
        assert_eq!(
            rfc5322_date(t - Duration::from_secs(86_400)),
            "Mon, 25 Nov 2024 07:17:00 +0000"
        );
        assert_eq!(
            rfc5322_date(UNIX_EPOCH - Duration::from_secs(5)),
            "Thu, 01 Jan 1970 00:00:00 +0000"
        );
    }
}
