//! Who gets a bounce, and the spooled message it becomes: from a queued message and its
//! failed (or long-deferred) recipients, the DSN ([`super::dsn`]) wrapped in an envelope from
//! `<>` to the message's sender (and `--bounce-copy`), ready for the delivery thread's
//! [`Appender`].
//!
//! Rules: no DSN for a message whose reverse-path is `<>` (a bounce, or a message that asked
//! for none), so bounces never bounce; one DSN per message per pass, naming every recipient
//! that failed (or crossed the delay-warning age) in it. The DSN is spooled with `SMTPUTF8`
//! when an address it goes to is not ASCII (its text is always ASCII, see [`super::dsn`]), so
//! the delivery stage sends it with `MAIL FROM:<> SMTPUTF8`, and only to a next hop that
//! offers SMTPUTF8. It reads the original's header section
//! (a synchronous `pread` of its first bytes) and does not write anything: the stage spools
//! what this returns before it records the failures.

use std::net::{IpAddr, Ipv4Addr};
use std::time::SystemTime;

use super::dsn::{self, RcptReport};
use super::queue::QueuedMessage;
use crate::spool::appender::{Appender, Body, NewMessage};
use crate::spool::frame::{unix_us, EnvelopeRecord};

/// What the bounce needs from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct BounceSettings<'a> {
    /// Our hostname.
    pub hostname: &'a str,
    /// A copy of every DSN to this address (`--bounce-copy`).
    pub copy_to: Option<&'a str>,
}

/// The DSN message for `m` reporting `rcpts` (all of one action), or `None` when its sender is
/// `<>`. `retry_hours`: for a delay warning, how long retries go on.
pub fn dsn_message(
    s: BounceSettings<'_>,
    appender: &mut Appender,
    m: &QueuedMessage,
    rcpts: &[RcptReport],
    retry_hours: Option<u64>,
    now: SystemTime,
) -> Option<NewMessage> {
    let sender = m.msg.envelope.mail_from.as_str();
    if sender.is_empty() || rcpts.is_empty() {
        return None;
    }
    let head = m
        .msg
        .read_head(dsn::MAX_ORIGINAL_HEADERS)
        .unwrap_or_else(|e| {
            tracing::warn!(
                "delivery id={}: reading its headers for the DSN: {e}",
                m.msg.id
            );
            Vec::new()
        });
    let id = appender.next_id();
    let report_id = id.to_string();
    let original_id = m.msg.id.to_string();
    let bytes = dsn::build(&dsn::Report {
        hostname: s.hostname,
        original_id: &original_id,
        sender,
        arrival: m.msg.received_at(),
        rcpts,
        original_head: &head,
        report_id: &report_id,
        now,
        retry_hours,
    });
    let mut to = vec![sender.to_string()];
    if let Some(c) = s.copy_to {
        if !c.eq_ignore_ascii_case(sender) {
            to.push(c.to_string());
        }
    }
    // The report itself is ASCII (`dsn::build`); a non-ASCII recipient (the original's sender,
    // or the copy's address) needs SMTPUTF8 to be sent at all (RFC 6531).
    let smtputf8 = to.iter().any(|a| !a.is_ascii());
    Some(NewMessage {
        id,
        envelope: EnvelopeRecord {
            client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            received_us: unix_us(now),
            helo: s.hostname.to_string(),
            esmtp: true,
            mail_from: String::new(),
            declared_size: None,
            body_8bitmime: false,
            smtputf8,
            rcpts: to,
            tls: None,
        },
        body: Body::Bytes(bytes),
    })
}

/// The host of a relay as the stage logs it (`host[addr]:port`, a socket path, `none`), for
/// `Remote-MTA`; `None` when no remote host answered.
pub fn remote_mta(relay: &str) -> Option<String> {
    if relay == "none" || relay.starts_with('/') || relay.is_empty() {
        return None;
    }
    let host = relay.split('[').next().unwrap_or(relay);
    // `host:port` without an address part.
    let host = match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    (!host.is_empty()).then(|| host.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_mta_is_the_host_part() {
        assert_eq!(
            remote_mta("mx.example.org[192.0.2.1]:25").as_deref(),
            Some("mx.example.org")
        );
        assert_eq!(remote_mta("127.0.0.1:2525").as_deref(), Some("127.0.0.1"));
        assert_eq!(remote_mta("none"), None);
        assert_eq!(remote_mta("/run/dovecot/lmtp"), None);
    }
}
