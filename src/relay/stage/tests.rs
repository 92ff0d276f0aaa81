//! Tests of the stage's start ([`super::prepare`]) on a spool written by hand: what is queued,
//! and which segments hold which messages. They do not start the stage's thread or connect
//! anywhere (the integration tests in `tests/it` do).

use super::*;
use crate::spool::appender::{Body, NewMessage};
use crate::spool::frame::EnvelopeRecord;
use crate::spool::journal::RecordKind;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

fn cfg(dir: &Path) -> DeliveryConfig {
    DeliveryConfig {
        spool_dir: dir.to_path_buf(),
        hostname: "mx.test".into(),
        routes: Routes::new(Vec::new()),
        retry_first: Duration::from_secs(1),
        retry_max: Duration::from_secs(1),
        max_queue_lifetime: Duration::from_secs(60),
        bounce_copy: None,
        delay_warning: None,
        compact_after: DEFAULT_COMPACT_AFTER,
        listen: Vec::new(),
    }
}

/// A stop between a compaction copy becoming durable and the old segment's deletion: at
/// start the message is queued once, from the copy; both segments hold it until it is finished.
#[test]
fn a_copy_and_its_original_count_once_and_the_copy_wins() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Appender::open(dir.path()).unwrap();
    let env = EnvelopeRecord {
        client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        received_us: 1,
        helo: "c".into(),
        esmtp: true,
        mail_from: "s@x.test".into(),
        declared_size: None,
        body_8bitmime: false,
        smtputf8: false,
        rcpts: vec!["r@y.test".into()],
        tls: None,
    };
    let (keep, done) = (a.next_id(), a.next_id());
    let msg = |id| NewMessage {
        id,
        envelope: env.clone(),
        body: Body::Bytes(b"Subject: s\r\n\r\nb\r\n".to_vec()),
    };
    let old = a.write_segment(&[msg(keep)]).unwrap();
    let mut stored = None;
    reader::scan_segment(&old, false, |m| {
        stored = Some(m);
        Ok(())
    })
    .unwrap();
    let copy = a
        .write_segment(&[
            NewMessage {
                id: keep,
                envelope: env.clone(),
                body: Body::Stored(Box::new(stored.unwrap())),
            },
            msg(done),
        ])
        .unwrap();
    // `done` was delivered before the stop.
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    j.append(&[queue::record(
        RecordKind::Delivered,
        done,
        0,
        2,
        0,
        1,
        "250 ok".into(),
    )])
    .unwrap();
    drop(j);
    let (_, p) = prepare(cfg(dir.path())).unwrap();
    assert_eq!(p.queue.len(), 1);
    assert_eq!(p.queue[&keep].msg.segment, copy);
    assert_eq!(
        p.segments[&old].live,
        HashSet::from([keep]),
        "the original still holds it until it is finished"
    );
    assert_eq!(
        p.segments[&copy].live,
        HashSet::from([keep]),
        "the copy holds the queued message"
    );
}
