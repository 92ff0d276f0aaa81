//! The writer end to end, inside a tokio-uring runtime: round trips through segments, group
//! commit, aborts, rolling and reopening, the reactor lock. The pure parts have their own
//! tests (`progress`, `pack`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use super::*;
use crate::buffers::BufferConfig;
use crate::spool::frame::unix_us;
use crate::spool::reader;

fn envelope(rcpts: &[&str]) -> EnvelopeRecord {
    EnvelopeRecord {
        client_ip: "192.0.2.7".parse().unwrap(),
        received_us: unix_us(SystemTime::now()),
        helo: "client.example".into(),
        esmtp: true,
        mail_from: "sender@example.org".into(),
        declared_size: Some(1000),
        body_8bitmime: true,
        smtputf8: false,
        rcpts: rcpts.iter().map(|s| s.to_string()).collect(),
        tls: None,
    }
}

fn small_pool() -> BufferPool {
    BufferPool::register(BufferConfig {
        read_buf_size: 4096,
        read_bufs: 2,
        write_buf_size: 16 * 1024,
        write_bufs: 4,
    })
}

fn body(n: usize, seed: u8) -> Vec<u8> {
    let mut v = b"Subject: test\r\n\r\n".to_vec();
    while v.len() < n {
        let line = format!("line {} of message {seed}\r\n", v.len());
        v.extend_from_slice(line.as_bytes());
    }
    v
}

/// The stored bytes are: our Received: header, then the client bytes exactly.
fn client_part(stored: &[u8]) -> &[u8] {
    assert!(stored.starts_with(
        b"Received: from client.example ([192.0.2.7])\r\n\tby mx.test (ringmx) with ESMTP id "
    ));
    let end = memchr::memmem::find(stored, b" +0000\r\n").unwrap() + 8;
    &stored[end..]
}

#[test]
fn messages_round_trip_through_segments() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SpoolConfig::new(dir.path().join("spool"), 2, "mx.test");
    let bodies = [body(10, 1), body(5000, 2), body(300_000, 3)];
    let ids = tokio_uring::start(async {
        let spool = Spool::open(cfg, small_pool()).await.unwrap();
        let mut ids = Vec::new();
        for (i, b) in bodies.iter().enumerate() {
            let mut w = spool.begin(&envelope(&["rcpt@example.test"]));
            // Uneven pushes across buffer boundaries, flushing as the driver would.
            for chunk in b.chunks(7000 + i * 333) {
                w.push(chunk);
                assert!(w.buffered() <= 2 * 16 * 1024 + 7000 + 1000);
                w.flush().await.unwrap();
            }
            let id = w.id().to_string();
            assert_eq!(w.commit().await.unwrap(), id);
            ids.push(id);
        }
        let st = spool.stats();
        assert_eq!(st.commits, 3);
        assert!(st.fsyncs >= 1 && st.batch_sum == 3, "{st:?}");
        spool.close().await.unwrap();
        ids
    });
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    let msgs = reader::read_spool(&dir.path().join("spool")).unwrap();
    assert_eq!(msgs.len(), 3);
    for ((m, b), id) in msgs.iter().zip(&bodies).zip(&ids) {
        assert_eq!(&m.id_string(), id);
        let data = m.read_data().unwrap();
        assert_eq!(client_part(&data), &b[..]);
        assert_eq!(m.size as usize, data.len());
        assert_eq!(m.envelope.rcpts, vec!["rcpt@example.test".to_string()]);
        assert_eq!(m.envelope.mail_from, "sender@example.org");
        assert_eq!(m.envelope.declared_size, Some(1000));
        assert!(m.envelope.esmtp && m.envelope.body_8bitmime && !m.envelope.smtputf8);
        assert_eq!(m.envelope.client_ip.to_string(), "192.0.2.7");
        let text = String::from_utf8_lossy(&data);
        assert!(
            text.contains(&format!("id {id}\r\n\tfor <rcpt@example.test>; ")),
            "{}",
            &text[..200]
        );
    }
    let check = reader::check_spool(&dir.path().join("spool")).unwrap();
    assert!(check.is_ok() && check.torn_tails == 0, "{check:?}");
    assert!(check.segments.iter().all(|s| s.sealed), "{check:?}");
}

#[test]
fn group_commit_shares_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SpoolConfig::new(dir.path(), 0, "mx.test");
    const N: usize = 64;
    let st = tokio_uring::start(async {
        let spool = Spool::open(cfg, small_pool()).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..N {
            let spool = spool.clone();
            tasks.push(tokio_uring::spawn(async move {
                let mut w = spool.begin(&envelope(&["a@x", "b@x"]));
                w.push(&body(4096, i as u8));
                w.commit().await.unwrap()
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let st = spool.stats();
        spool.close().await.unwrap();
        st
    });
    assert_eq!(st.commits, N as u64);
    assert_eq!(
        st.batch_sum, N as u64,
        "every commit rode on exactly one fdatasync: {st:?}"
    );
    assert!(st.fsyncs < N as u64 / 4, "group commit: {st:?}");
    assert!(st.batch_max > 1, "{st:?}");
    assert_eq!(reader::read_spool(dir.path()).unwrap().len(), N);
}

#[test]
fn concurrent_small_commits_share_writes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SpoolConfig::new(dir.path(), 0, "mx.test");
    const N: usize = 64;
    // Small messages of different sizes, plus a large one whose tail joins a group.
    let bodies: Vec<Vec<u8>> = (0..N)
        .map(|i| match i {
            17 => body(70_000, 17),
            _ => body(200 + i * 37, i as u8),
        })
        .collect();
    let (st, ids) = tokio_uring::start(async {
        let spool = Spool::open(cfg, small_pool()).await.unwrap();
        let mut tasks = Vec::new();
        for b in &bodies {
            let spool = spool.clone();
            let b = b.clone();
            tasks.push(tokio_uring::spawn(async move {
                let mut w = spool.begin(&envelope(&["a@x"]));
                for chunk in b.chunks(16 * 1024) {
                    w.push(chunk);
                    w.flush().await.unwrap();
                }
                w.commit().await.unwrap()
            }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.unwrap());
        }
        let st = spool.stats();
        spool.close().await.unwrap();
        (st, ids)
    });
    assert_eq!(st.commits, N as u64);
    assert_eq!(st.batch_sum, N as u64, "each commit in one batch: {st:?}");
    // The segment header, the large message's full buffers, and a few group writes.
    assert!(st.writes < N as u64 / 4, "writes coalesced: {st:?}");
    let msgs = reader::read_spool(dir.path()).unwrap();
    assert_eq!(msgs.len(), N);
    for (id, b) in ids.iter().zip(&bodies) {
        let m = msgs.iter().find(|m| &m.id_string() == id).unwrap();
        assert_eq!(client_part(&m.read_data().unwrap()), &b[..]);
    }
    let check = reader::check_spool(dir.path()).unwrap();
    assert!(check.is_ok() && check.torn_tails == 0, "{check:?}");
    assert!(check.segments.iter().all(|s| s.sealed), "{check:?}");
}

#[test]
fn aborted_and_unfinished_messages_are_not_mail() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SpoolConfig::new(dir.path(), 0, "mx.test");
    tokio_uring::start(async {
        let spool = Spool::open(cfg, small_pool()).await.unwrap();
        let mut a = spool.begin(&envelope(&[]));
        a.push(&body(50_000, 1));
        a.flush().await.unwrap();
        a.abort().await;
        let mut dropped = spool.begin(&envelope(&[]));
        dropped.push(&body(40_000, 2));
        dropped.flush().await.unwrap();
        drop(dropped);
        let never_flushed = spool.begin(&envelope(&[]));
        never_flushed.abort().await;
        let mut ok = spool.begin(&envelope(&[]));
        ok.push(b"Subject: kept\r\n\r\nx\r\n");
        ok.commit().await.unwrap();
        spool.close().await.unwrap();
    });
    let msgs = reader::read_spool(dir.path()).unwrap();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].subject().unwrap().as_deref(), Some("kept"));
    let check = reader::check_spool(dir.path()).unwrap();
    assert_eq!(
        (check.committed, check.aborted, check.incomplete),
        (1, 1, 1),
        "{check:?}"
    );
    assert!(check.is_ok());
}

#[test]
fn reopen_continues_ids_and_rolls_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = SpoolConfig::new(dir.path(), 1, "mx.test");
    cfg.segment_size = 20_000;
    cfg.sync = SyncPolicy::None;
    let mut all = Vec::new();
    for round in 0..2 {
        let cfg = cfg.clone();
        let ids = tokio_uring::start(async move {
            let spool = Spool::open(cfg, BufferPool::heap_only(BufferConfig::default()))
                .await
                .unwrap();
            let mut ids = Vec::new();
            for i in 0..10 {
                let mut w = spool.begin(&envelope(&["r@x"]));
                w.push(&body(3000 + i * 100, round));
                ids.push(w.commit().await.unwrap());
            }
            spool.close().await.unwrap();
            ids
        });
        all.extend(ids);
    }
    let sorted = {
        let mut s = all.clone();
        s.sort();
        s.dedup();
        s
    };
    assert_eq!(sorted, all, "ids unique and increasing across restarts");
    let segs = segment::list_segments(dir.path()).unwrap();
    assert!(segs.len() >= 4, "rolled: {segs:?}");
    assert!(segs.iter().all(|(n, _)| n.reactor == 1));
    let msgs = reader::read_spool(dir.path()).unwrap();
    assert_eq!(msgs.iter().map(|m| m.id_string()).collect::<Vec<_>>(), all);
    let check = reader::check_spool(dir.path()).unwrap();
    assert!(
        check.is_ok() && check.segments.iter().all(|s| s.sealed),
        "{check:?}"
    );
}

#[test]
fn second_writer_for_same_reactor_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    tokio_uring::start(async {
        let a = Spool::open(SpoolConfig::new(dir.path(), 0, "h"), small_pool())
            .await
            .unwrap();
        let pool = BufferPool::heap_only(BufferConfig::default());
        let b = Spool::open(SpoolConfig::new(dir.path(), 0, "h"), pool.clone()).await;
        assert!(
            matches!(b, Err(SpoolError::ReactorInUse { reactor: 0, .. })),
            "{:?}",
            b.err()
        );
        let c = Spool::open(SpoolConfig::new(dir.path(), 1, "h"), pool.clone()).await;
        assert!(c.is_ok());
        a.close().await.unwrap();
        let again = Spool::open(SpoolConfig::new(dir.path(), 0, "h"), pool).await;
        assert!(again.is_ok());
    });
}

/// Counts the durations a writer reports.
#[derive(Default)]
struct Recorder {
    fsyncs: AtomicU64,
    group_writes: AtomicU64,
}

impl Timings for Recorder {
    fn fsync(&self, took: Duration) {
        assert!(took > Duration::ZERO);
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
    }

    fn group_write(&self, took: Duration) {
        assert!(took > Duration::ZERO);
        self.group_writes.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn fsync_and_group_write_durations_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SpoolConfig::new(dir.path(), 0, "mx.test");
    let rec = Arc::new(Recorder::default());
    let st = tokio_uring::start(async {
        let spool = Spool::open(cfg, small_pool()).await.unwrap();
        spool.set_timings(rec.clone());
        let mut tasks = Vec::new();
        for i in 0..8u8 {
            let spool = spool.clone();
            tasks.push(tokio_uring::spawn(async move {
                let mut w = spool.begin(&envelope(&["r@example.test"]));
                w.push(&body(1000, i));
                w.flush().await.unwrap();
                w.commit().await.unwrap()
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let st = spool.stats();
        spool.close().await.unwrap();
        st
    });
    assert_eq!(st.commits, 8);
    // Every fdatasync of a segment was timed (close's own final sync is not counted in either).
    assert_eq!(rec.fsyncs.load(Ordering::Relaxed), st.fsyncs, "{st:?}");
    let groups = rec.group_writes.load(Ordering::Relaxed);
    assert!((1..=8).contains(&groups), "{groups}");
}

#[test]
fn appends_go_into_prepared_zeros_and_the_zero_tail_is_a_clean_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = SpoolConfig::new(dir.path(), 0, "mx.test");
    cfg.prepare = true;
    let seg_path = dir
        .path()
        .join(SegmentName { reactor: 0, seq: 1 }.file_name());
    let n = 48; // 48 x 64 KiB: past PREPARE_START, so a chunk of zeros is prepared
    let live = tokio_uring::start(async {
        let spool = Spool::open(cfg, small_pool()).await.unwrap();
        for i in 0..n {
            let mut w = spool.begin(&envelope(&["r@example.test"]));
            w.push(&body(64 * 1024, i as u8));
            w.flush().await.unwrap();
            w.commit().await.unwrap();
        }
        // Wait for the zero write and its fdatasync (counted as a write in flight).
        let seg = spool.sh.state.borrow().current.clone().unwrap();
        loop {
            let idle = seg.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if seg.inflight.get() == 0 {
                break;
            }
            idle.await;
        }
        assert!(seg.zero_end.get() >= live::PREPARE_START + live::PREPARE_CHUNK);
        // The live segment, as a reader sees it now: frames, then prepared zeros.
        let live = reader::check_spool(dir.path()).unwrap();
        spool.close().await.unwrap();
        live
    });
    let s = &live.segments[0];
    assert!(
        live.is_ok() && live.torn_tails == 0 && s.damage.is_none(),
        "{live:?}"
    );
    assert_eq!(s.committed, n);
    assert!(s.zero_tail >= live::PREPARE_CHUNK / 2, "{s:?}");
    assert_eq!(s.valid_end + s.zero_tail, s.file_len);
    // Closed: sealed, and the file ends at the Seal frame.
    let after = reader::check_spool(dir.path()).unwrap();
    let s = &after.segments[0];
    assert!(s.sealed && s.zero_tail == 0 && s.damage.is_none(), "{s:?}");
    assert_eq!(std::fs::metadata(&seg_path).unwrap().len(), s.valid_end);
    assert_eq!(reader::read_spool(dir.path()).unwrap().len(), n as usize);
}

#[test]
fn recovery_cuts_a_zero_tail_as_a_clean_end() {
    let dir = tempfile::tempdir().unwrap();
    tokio_uring::start(async {
        let spool = Spool::open(SpoolConfig::new(dir.path(), 0, "h"), small_pool())
            .await
            .unwrap();
        let mut w = spool.begin(&envelope(&["r@example.test"]));
        w.push(&body(100, 1));
        w.commit().await.unwrap();
        // Not closed: like a crash, the segment stays unsealed.
        std::mem::forget(spool);
    });
    let path = dir
        .path()
        .join(SegmentName { reactor: 0, seq: 1 }.file_name());
    let len = std::fs::metadata(&path).unwrap().len();
    // Prepared zeros after the last frame, as a crash leaves them.
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len + 3 * 4096).unwrap();
    drop(f);
    let check = reader::check_spool(dir.path()).unwrap();
    assert!(check.is_ok() && check.torn_tails == 0, "{check:?}");
    assert_eq!(check.segments[0].zero_tail, 3 * 4096);
    let rec = segment::recover(dir.path(), 0, now_ms()).unwrap();
    assert!(rec.truncated.is_empty(), "{rec:?}");
    assert_eq!(rec.zero_tails, vec![(path.clone(), 3 * 4096)]);
    let check = reader::check_spool(dir.path()).unwrap();
    assert!(check.segments[0].sealed && check.segments[0].zero_tail == 0);
    assert_eq!(reader::read_spool(dir.path()).unwrap().len(), 1);
}
