//! Spool throughput, durable: group commit into one segment log versus one file per message.
//!
//! - `spool/group_commit/4096`: 64 concurrent writers on one reactor (one tokio-uring runtime),
//!   4 KiB messages, `SyncPolicy::Group` (every commit waits for an fdatasync that covers it).
//! - `spool/file_per_message/4096`: the same messages and concurrency, each written the way a
//!   Maildir or Postfix queue does it: create a temporary file, write, fsync, close, rename.
//! - `spool/file_per_message_dirsync/4096`: the same, plus an fsync of the directory after
//!   the rename (POSIX durability of the new name; what the spool does per segment).
//! - `spool/group_commit/102400`: 100 KiB messages, pushed in 16 KiB pieces with a flush after
//!   each, as the connection driver does.
//!
//! Throughput is in messages. Files go to a temporary directory under `target/` (on the disk
//! that holds the build, not a tmpfs, so fsync costs what it costs). After the run, the fsync
//! batch sizes of the group-commit cases are printed to stderr.
//!
//! Run: `cargo bench --bench spool -- --warm-up-time 1 --measurement-time 3`

use std::cell::RefCell;
use std::hint::black_box;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use criterion::{criterion_main, BenchmarkId, Criterion, Throughput};
use ringmx::buffers::{BufferConfig, BufferPool};
use ringmx::spool::frame::unix_us;
use ringmx::spool::{EnvelopeRecord, Spool, SpoolConfig, SpoolStats};

/// Concurrent writers (connections) on the reactor.
const WRITERS: usize = 64;
/// Messages per writer per iteration.
const PER_WRITER: usize = 4;
/// Messages per iteration.
const BATCH: usize = WRITERS * PER_WRITER;
/// Body pieces handed to the writer between flushes (one socket read).
const PIECE: usize = 16 * 1024;

fn message(size: usize) -> Vec<u8> {
    let mut v = b"From: <bench@example.org>\r\nSubject: bench\r\n\r\n".to_vec();
    let mut i = 0u32;
    while v.len() < size {
        v.extend_from_slice(
            format!("{i:08} the quick brown fox jumps over the lazy dog 0123456789\r\n").as_bytes(),
        );
        i += 1;
    }
    v.truncate(size);
    v
}

fn envelope() -> EnvelopeRecord {
    EnvelopeRecord {
        client_ip: "192.0.2.1".parse().expect("literal"),
        received_us: 0,
        helo: "client.example".into(),
        esmtp: true,
        mail_from: "bench@example.org".into(),
        declared_size: None,
        body_8bitmime: false,
        smtputf8: false,
        rcpts: vec!["user@example.net".into()],
        tls: None,
    }
}

/// Runs `iters` batches through a fresh spool; returns the time of the batches alone.
fn group_commit(base: &Path, size: usize, iters: u64, stats: &RefCell<SpoolStats>) -> Duration {
    let dir = tempfile::tempdir_in(base).expect("bench temp dir");
    let body = Rc::new(message(size));
    tokio_uring::start(async {
        let pool = BufferPool::register(BufferConfig::from_rlimit(1));
        let spool = Spool::open(SpoolConfig::new(dir.path(), 0, "mx.bench"), pool)
            .await
            .expect("open spool");
        let start = Instant::now();
        for _ in 0..iters {
            let mut tasks = Vec::with_capacity(WRITERS);
            for _ in 0..WRITERS {
                let spool = spool.clone();
                let body = Rc::clone(&body);
                tasks.push(tokio_uring::spawn(async move {
                    let env = envelope();
                    for _ in 0..PER_WRITER {
                        // Built per message (the strings cloned), as the connection driver does.
                        let rec = EnvelopeRecord {
                            received_us: unix_us(SystemTime::now()),
                            ..env.clone()
                        };
                        let mut w = spool.begin(&rec);
                        for piece in body.chunks(PIECE) {
                            w.push(piece);
                            w.flush().await.expect("flush");
                        }
                        let id = w.commit().await.expect("commit");
                        assert_eq!(id.len(), 13);
                        black_box(id);
                    }
                }));
            }
            for t in tasks {
                t.await.expect("writer task");
            }
        }
        let elapsed = start.elapsed();
        let st = spool.stats();
        assert_eq!(st.commits, iters * BATCH as u64);
        stats.borrow_mut().merge(&st);
        spool.close().await.expect("close");
        elapsed
    })
}

/// The same messages, one file each: create, write, fsync, close, rename into place; with
/// `dirsync`, also fsync the directory after the rename (what makes the rename itself durable
/// by POSIX rules, as the spool does for each new segment).
fn file_per_message(base: &Path, size: usize, iters: u64, dirsync: bool) -> Duration {
    let dir = tempfile::tempdir_in(base).expect("bench temp dir");
    let tmp = dir.path().join("tmp");
    let new = dir.path().join("new");
    std::fs::create_dir(&tmp).expect("tmp dir");
    std::fs::create_dir(&new).expect("new dir");
    let body = Rc::new(message(size));
    tokio_uring::start(async {
        let start = Instant::now();
        let mut n = 0u64;
        for _ in 0..iters {
            let mut tasks = Vec::with_capacity(WRITERS);
            for w in 0..WRITERS {
                let body = Rc::clone(&body);
                let (tmp, new) = (tmp.clone(), new.clone());
                let first = n + (w * PER_WRITER) as u64;
                tasks.push(tokio_uring::spawn(async move {
                    for k in 0..PER_WRITER as u64 {
                        let name = format!("{}.msg", first + k);
                        let t = tmp.join(&name);
                        let f = tokio_uring::fs::File::create(&t).await.expect("create");
                        let (res, _) = f.write_all_at(body.to_vec(), 0).await;
                        res.expect("write");
                        f.sync_all().await.expect("fsync");
                        f.close().await.expect("close");
                        tokio_uring::fs::rename(&t, new.join(&name))
                            .await
                            .expect("rename");
                        if dirsync {
                            let d = tokio_uring::fs::File::open(&new).await.expect("open dir");
                            d.sync_all().await.expect("fsync dir");
                            d.close().await.expect("close dir");
                        }
                    }
                }));
            }
            for t in tasks {
                t.await.expect("writer task");
            }
            n += BATCH as u64;
        }
        start.elapsed()
    })
}

fn bench(c: &mut Criterion) {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("spool-bench");
    std::fs::create_dir_all(&base).expect("bench base dir");
    let mut g = c.benchmark_group("spool");
    g.sample_size(10);
    g.throughput(Throughput::Elements(BATCH as u64));
    let stats_4k = RefCell::new(SpoolStats::default());
    g.bench_function(BenchmarkId::new("group_commit", 4096), |b| {
        b.iter_custom(|iters| group_commit(&base, 4096, iters, &stats_4k))
    });
    g.bench_function(BenchmarkId::new("file_per_message", 4096), |b| {
        b.iter_custom(|iters| file_per_message(&base, 4096, iters, false))
    });
    g.bench_function(BenchmarkId::new("file_per_message_dirsync", 4096), |b| {
        b.iter_custom(|iters| file_per_message(&base, 4096, iters, true))
    });
    let stats_100k = RefCell::new(SpoolStats::default());
    g.bench_function(BenchmarkId::new("group_commit", 102400), |b| {
        b.iter_custom(|iters| group_commit(&base, 102_400, iters, &stats_100k))
    });
    g.finish();
    for (name, st) in [
        ("group_commit/4096", stats_4k),
        ("group_commit/102400", stats_100k),
    ] {
        let st = st.into_inner();
        let hist: Vec<String> = st
            .batch_hist
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| format!("{}:{n}", SpoolStats::bucket_label(i)))
            .collect();
        eprintln!(
            "spool/{name}: {} commits, {} fdatasyncs, mean batch {:.1}, max batch {}, \
             batch histogram [{}], {} heap buffers",
            st.commits,
            st.fsyncs,
            st.mean_batch(),
            st.batch_max,
            hist.join(" "),
            st.heap_buffers
        );
    }
}

mod group {
    // criterion_group! defines an undocumented pub fn.
    #![allow(missing_docs)]
    criterion::criterion_group!(benches, super::bench);
}
criterion_main!(group::benches);
