//! Tests of the stage on a spool written by hand: its start ([`super::prepare`]): what is
//! queued, and which segments hold which messages; and recording outcomes when the journal or
//! the DSN spool fails, with the test playing the next hop (a [`Harness`]). They do not start
//! the stage's thread or connect anywhere (the integration tests in `tests/it` do).

use super::*;
use crate::smtp::client::{Reply, Status};
use crate::spool::appender::{Body, NewMessage};
use crate::spool::frame::{unix_us, EnvelopeRecord};
use crate::spool::journal::{read_journal, RecordKind, JOURNAL_NAME};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::SystemTime;

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

/// The next hop the recording tests play: `bad@` is refused, `later@` deferred, anyone else
/// taken.
fn next_hop(addr: &str) -> RcptOutcome {
    let (status, reply) = if addr.starts_with("bad@") {
        (Status::Failed, Reply::local(550, "5.1.1 no such user"))
    } else if addr.starts_with("later@") {
        (Status::Deferred, Reply::local(451, "4.3.0 try later"))
    } else {
        (Status::Delivered, Reply::local(250, "2.0.0 ok"))
    };
    RcptOutcome { status, reply }
}

/// Writes one message from `s@x.test` to `rcpts`, received at `received`, in a segment of its
/// own; returns its id and the segment.
fn write_message(a: &mut Appender, rcpts: &[&str], received: SystemTime) -> (MessageId, PathBuf) {
    let id = a.next_id();
    let envelope = EnvelopeRecord {
        client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        received_us: unix_us(received),
        helo: "c".into(),
        esmtp: true,
        mail_from: "s@x.test".into(),
        declared_size: None,
        body_8bitmime: false,
        smtputf8: false,
        rcpts: rcpts.iter().map(|r| r.to_string()).collect(),
        tls: None,
    };
    let path = a
        .write_segment(&[NewMessage {
            id,
            envelope,
            body: Body::Bytes(b"Subject: s\r\n\r\nb\r\n".to_vec()),
        }])
        .unwrap();
    (id, path)
}

/// One catch-all route whose jobs the test answers itself.
fn catch_all() -> Routes {
    Routes::new(vec![super::super::route::Route {
        name: "*".into(),
        target: super::super::route::Target::parse("smtp:[127.0.0.1]:25").unwrap(),
        tls: super::super::route::TlsMode::None,
        concurrency: 1,
        helo: None,
        ca: None,
        verify: false,
    }])
}

/// A stage on a spool written by hand, with one catch-all route whose jobs the test takes
/// and answers ([`next_hop`]) instead of workers, so the journal and the DSN spool can be made
/// to fail ([`record::Faults`]).
struct Harness {
    dir: tempfile::TempDir,
    stage: Stage,
    stats: Arc<DeliveryStats>,
    jobs: UnboundedReceiver<Job>,
    /// Both recipients end: `ok1@` delivered, `bad@` failed (one DSN to `s@x.test`).
    both: MessageId,
    both_segment: PathBuf,
    /// Never ends: `ok2@` delivered, `later@` deferred.
    other: MessageId,
    other_segment: PathBuf,
    /// Transactions per message and recipient.
    tried: HashMap<(MessageId, String), usize>,
    /// Every DSN ever seen on disk.
    dsns_seen: HashSet<MessageId>,
    /// A clock for the retries, a minute further at each step (past any backoff).
    clock: Instant,
}

impl Harness {
    fn new(faults: record::Faults) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Appender::open(dir.path()).unwrap();
        let now = SystemTime::now();
        let (both, both_segment) = write_message(&mut a, &["ok1@y.test", "bad@y.test"], now);
        let (other, other_segment) = write_message(&mut a, &["ok2@y.test", "later@y.test"], now);
        drop(a);
        let mut c = cfg(dir.path());
        c.routes = catch_all();
        // A deferred recipient is not due again during the test.
        c.retry_first = Duration::from_secs(3600);
        c.retry_max = Duration::from_secs(3600);
        c.max_queue_lifetime = Duration::from_secs(86_400);
        let (_, p) = prepare(c).unwrap();
        let stats = Arc::new(DeliveryStats::default());
        let mut stage = Stage::new(p, stats.clone(), Arc::new(AtomicBool::new(false)));
        let (tx, jobs) = unbounded_channel();
        stage.jobs = vec![tx];
        stage.faults = faults;
        Self {
            dir,
            stage,
            stats,
            jobs,
            both,
            both_segment,
            other,
            other_segment,
            tried: HashMap::new(),
            dsns_seen: HashSet::new(),
            clock: Instant::now(),
        }
    }

    /// One pass of the stage's loop: schedule, answer every job, apply the outcomes, retry
    /// what is owed (the clock a minute later); then the checks. Returns the jobs answered.
    async fn step(&mut self) -> usize {
        self.stage.schedule().await;
        let mut outcomes = Vec::new();
        while let Ok(job) = self.jobs.try_recv() {
            let results = job
                .rcpts
                .iter()
                .map(|&i| {
                    let addr = &job.msg.envelope.rcpts[i];
                    *self.tried.entry((job.msg.id, addr.clone())).or_default() += 1;
                    next_hop(addr)
                })
                .collect();
            outcomes.push(Outcome {
                id: job.msg.id,
                route: 0,
                rcpts: job.rcpts,
                results,
                relay: "127.0.0.1:25".into(),
                tls: None,
                delays: [Duration::ZERO; 3],
            });
        }
        let n = outcomes.len();
        if n > 0 {
            self.stage.apply(outcomes).await;
        }
        self.clock += Duration::from_secs(60);
        self.stage.retry_owed(self.clock).await;
        self.check();
        n
    }

    /// The DSNs on disk.
    fn dsns_on_disk(dir: &Path) -> Vec<MessageId> {
        let mut found = Vec::new();
        for (_, path) in segment::list_segments(dir).unwrap() {
            reader::scan_segment(&path, false, |m| {
                if m.envelope.mail_from.is_empty() {
                    found.push(m.id);
                }
                Ok(())
            })
            .unwrap();
        }
        found
    }

    /// What must hold at every moment, on disk and for the next hop, and after a crash now.
    fn check(&mut self) {
        for ((id, addr), n) in &self.tried {
            assert_eq!(*n, 1, "{id} <{addr}> tried {n} times");
        }
        let dsns = Self::dsns_on_disk(self.dir.path());
        self.dsns_seen.extend(dsns.iter().copied());
        assert!(
            self.dsns_seen.len() <= 1,
            "bounced twice: {:?}",
            self.dsns_seen
        );
        let journal = read_journal(self.dir.path()).unwrap().records;
        let has = |kind: RecordKind, id: MessageId, rcpt: u32| {
            journal
                .iter()
                .filter(|r| r.kind == kind && r.id == id && r.rcpt == rcpt)
                .count()
        };
        for r in &journal {
            assert_eq!(has(r.kind, r.id, r.rcpt), 1, "recorded twice: {r:?}");
        }
        // The DSN is on disk, or was delivered (and its segment deleted).
        let bounced = !dsns.is_empty()
            || self
                .dsns_seen
                .iter()
                .any(|&d| has(RecordKind::Delivered, d, 0) > 0);
        if has(RecordKind::Failed, self.both, 1) > 0 {
            assert!(bounced, "a failure recorded before its DSN was spooled");
        }
        if !self.both_segment.exists() {
            assert_eq!(
                has(RecordKind::Delivered, self.both, 0) + has(RecordKind::Failed, self.both, 1),
                2,
                "a segment deleted before the records that finish it were written"
            );
        }
        assert!(self.other_segment.exists());
        self.crash_check(&journal, bounced);
    }

    /// A crash now loses nothing: a copy of the spool, started, queues every recipient whose
    /// end is not on disk, and a failure on disk has its DSN.
    fn crash_check(&self, journal: &[DeliveryRecord], bounced: bool) {
        let copy = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(self.dir.path()).unwrap() {
            let e = e.unwrap();
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".seg") || name == JOURNAL_NAME {
                std::fs::copy(e.path(), copy.path().join(&*name)).unwrap();
            }
        }
        let (_, p) = prepare(cfg(copy.path())).unwrap();
        for (id, addrs) in [
            (self.both, ["ok1@y.test", "bad@y.test"]),
            (self.other, ["ok2@y.test", "later@y.test"]),
        ] {
            for (i, addr) in addrs.iter().enumerate() {
                let ended = journal.iter().any(|r| {
                    r.id == id
                        && r.rcpt == i as u32
                        && matches!(r.kind, RecordKind::Delivered | RecordKind::Failed)
                });
                if ended {
                    continue;
                }
                let m = p.queue.get(&id).unwrap_or_else(|| panic!("{id} lost"));
                assert_eq!(m.rcpts[i].state, queue::RcptState::Pending, "<{addr}>");
            }
            if let Some(m) = p.queue.get(&id) {
                if m.rcpts.iter().any(|r| r.state == queue::RcptState::Failed) {
                    assert!(bounced, "a failure without its DSN after a crash");
                }
            }
        }
    }

    /// Steps until nothing is left to do; then every recipient was tried once and bounced at
    /// most once, and everything is on disk.
    async fn run_to_the_end(&mut self) {
        // Until two quiet steps in a row (a DSN spooled by the retry of one step is handed
        // out by the next).
        let mut quiet = 0;
        for _ in 0..20 {
            let n = self.step().await;
            quiet = if n == 0 && self.stage.backlog.is_empty() {
                quiet + 1
            } else {
                0
            };
            if quiet == 2 {
                break;
            }
        }
        assert!(self.stage.backlog.is_empty());
        assert_eq!(self.stage.backlog.records(), 0);
        let (both, other) = (self.both, self.other);
        for (id, addr) in [
            (both, "ok1@y.test"),
            (both, "bad@y.test"),
            (other, "ok2@y.test"),
            (other, "later@y.test"),
        ] {
            assert_eq!(
                self.tried.get(&(id, addr.to_string())),
                Some(&1),
                "<{addr}>"
            );
        }
        assert_eq!(self.dsns_seen.len(), 1, "one DSN for the failed recipient");
        let dsn = *self.dsns_seen.iter().next().unwrap();
        assert_eq!(self.tried.get(&(dsn, "s@x.test".to_string())), Some(&1));
        // `both` and the DSN are finished and on disk: their segments went.
        assert!(!self.both_segment.exists());
        assert!(Self::dsns_on_disk(self.dir.path()).is_empty());
        assert!(self.other_segment.exists());
        let journal = read_journal(self.dir.path()).unwrap().records;
        let kinds = |id| {
            let mut k: Vec<(u32, RecordKind)> = journal
                .iter()
                .filter(|r| r.id == id)
                .map(|r| (r.rcpt, r.kind))
                .collect();
            k.sort_by_key(|(rcpt, kind)| (*rcpt, *kind as u8));
            k
        };
        assert_eq!(
            kinds(both),
            [(0, RecordKind::Delivered), (1, RecordKind::Failed)]
        );
        assert_eq!(
            kinds(other),
            [(0, RecordKind::Delivered), (1, RecordKind::Deferred)]
        );
        assert_eq!(kinds(dsn), [(0, RecordKind::Delivered)]);
    }
}

/// The journal cannot be appended to three times in a row (a full disk): the outcomes hold in
/// memory, so nobody is tried or bounced again, and no segment goes before its records.
#[tokio::test]
async fn journal_failures_deliver_and_bounce_once_and_keep_segments_until_recorded() {
    let mut h = Harness::new(record::Faults {
        journal: 3,
        spool: 0,
    });
    h.step().await;
    // The DSN is spooled; nothing is in the journal; the finished message's segment stays.
    assert_eq!(Harness::dsns_on_disk(h.dir.path()).len(), 1);
    assert!(read_journal(h.dir.path()).unwrap().records.is_empty());
    assert!(h.both_segment.exists());
    assert!(!h.stage.backlog.is_empty());
    assert!(!h.stage.queue.contains_key(&h.both), "finished in memory");
    h.run_to_the_end().await;
    assert_eq!(h.stats.record_errors.load(Ordering::Relaxed), 3);
}

/// The DSN cannot be spooled twice in a row: the other outcomes are recorded at once, the
/// failure only after its DSN, which is spooled once.
#[tokio::test]
async fn dsn_spool_failures_hold_back_only_the_failure_and_bounce_once() {
    let mut h = Harness::new(record::Faults {
        journal: 0,
        spool: 2,
    });
    h.step().await;
    let journal = read_journal(h.dir.path()).unwrap().records;
    let kinds: Vec<(MessageId, u32, RecordKind)> =
        journal.iter().map(|r| (r.id, r.rcpt, r.kind)).collect();
    assert!(
        kinds.contains(&(h.both, 0, RecordKind::Delivered)),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&(h.other, 0, RecordKind::Delivered)),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&(h.other, 1, RecordKind::Deferred)),
        "{kinds:?}"
    );
    assert!(
        !kinds.contains(&(h.both, 1, RecordKind::Failed)),
        "{kinds:?}"
    );
    assert!(Harness::dsns_on_disk(h.dir.path()).is_empty());
    assert!(h.both_segment.exists());
    h.run_to_the_end().await;
    assert_eq!(h.stats.record_errors.load(Ordering::Relaxed), 2);
}

/// Both fail, the DSN spool longer than the journal; and the plain case, for comparison.
#[tokio::test]
async fn journal_and_dsn_failures_together_and_none() {
    for (journal, spool) in [(2, 4), (4, 1), (0, 0)] {
        let mut h = Harness::new(record::Faults { journal, spool });
        h.run_to_the_end().await;
        assert_eq!(
            h.stats.record_errors.load(Ordering::Relaxed),
            u64::from(journal + spool)
        );
    }
}

/// A stage on a spool holding one message to `rcpts`, received at `received`, with the
/// catch-all route (its jobs come out of `jobs`) and `tweak` applied to the configuration.
struct OneMessage {
    dir: tempfile::TempDir,
    stage: Stage,
    id: MessageId,
    segment: PathBuf,
    jobs: UnboundedReceiver<Job>,
}

fn one_message(
    rcpts: &[&str],
    received: SystemTime,
    tweak: impl FnOnce(&mut DeliveryConfig),
) -> OneMessage {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Appender::open(dir.path()).unwrap();
    let (id, segment) = write_message(&mut a, rcpts, received);
    drop(a);
    let mut c = cfg(dir.path());
    c.routes = catch_all();
    c.max_queue_lifetime = Duration::from_secs(86_400);
    tweak(&mut c);
    let (_, p) = prepare(c).unwrap();
    let mut stage = Stage::new(
        p,
        Arc::new(DeliveryStats::default()),
        Arc::new(AtomicBool::new(false)),
    );
    let (tx, jobs) = unbounded_channel();
    stage.jobs = vec![tx];
    OneMessage {
        dir,
        stage,
        id,
        segment,
        jobs,
    }
}

/// The next hop's answer ([`next_hop`]) to `job`.
fn answer(job: Job) -> Outcome {
    Outcome {
        id: job.msg.id,
        route: 0,
        results: job
            .rcpts
            .iter()
            .map(|&i| next_hop(&job.msg.envelope.rcpts[i]))
            .collect(),
        rcpts: job.rcpts,
        relay: "127.0.0.1:25".into(),
        tls: None,
        delays: [Duration::ZERO; 3],
    }
}

/// A message older than the queue lifetime (the server was down longer than that) is tried
/// once more, not bounced untried: delivered if the hop takes it; a deferral is the last and
/// fails the recipient with 5.4.7, the hop's reply kept in the diagnostic, and one DSN.
#[tokio::test]
async fn past_the_queue_lifetime_a_recipient_is_tried_once_more_then_fails() {
    let two_days_ago = SystemTime::now() - Duration::from_secs(2 * 86_400);
    let OneMessage {
        dir,
        mut stage,
        id,
        mut jobs,
        ..
    } = one_message(&["ok@y.test", "later@y.test"], two_days_ago, |_| {});
    stage.schedule().await;
    let job = jobs.try_recv().expect("both recipients go to the next hop");
    assert_eq!(job.rcpts, [0, 1]);
    stage.apply(vec![answer(job)]).await;
    let records = read_journal(dir.path()).unwrap().records;
    let kinds: Vec<(u32, RecordKind)> = records
        .iter()
        .filter(|r| r.id == id)
        .map(|r| (r.rcpt, r.kind))
        .collect();
    assert_eq!(
        kinds,
        [(0, RecordKind::Delivered), (1, RecordKind::Failed)],
        "{records:?}"
    );
    let failed = records
        .iter()
        .find(|r| r.kind == RecordKind::Failed)
        .unwrap();
    assert!(failed.reply.contains("5.4.7"), "{}", failed.reply);
    assert!(failed.reply.contains("4.3.0 try later"), "{}", failed.reply);
    assert_eq!(Harness::dsns_on_disk(dir.path()).len(), 1);
    assert!(!stage.queue.contains_key(&id), "finished");
}

/// A segment whose message no longer reads back (its bytes changed on disk) fails its
/// compaction once, then is left out for [`COMPACT_FAILED_PAUSE`] instead of being copied
/// again every [`COMPACT_CHECK`]; the segment stays.
#[tokio::test]
async fn a_segment_that_cannot_be_compacted_is_left_out_for_a_while() {
    let OneMessage {
        dir: _dir,
        mut stage,
        segment: path,
        ..
    } = one_message(&["later@y.test"], SystemTime::now(), |c| {
        c.compact_after = Duration::ZERO;
    });
    // Change a body byte after the stage has queued the message.
    let mut bytes = std::fs::read(&path).unwrap();
    let at = memchr::memmem::find(&bytes, b"Subject: s").unwrap();
    bytes[at] = b'X';
    std::fs::write(&path, &bytes).unwrap();
    stage.compact_at = Instant::now() - COMPACT_CHECK;
    stage.compact_segments().await;
    assert!(path.exists());
    assert!(stage.compact_skip.contains_key(&path), "set aside");
    assert!(
        stage.compact_skip[&path] >= Instant::now() + COMPACT_FAILED_PAUSE - Duration::from_secs(5)
    );
}

/// While the journal cannot take the outcomes and their backlog is at [`MAX_UNRECORDED`]
/// (1 here), a recipient due again is not tried; once the records are written, it is.
#[tokio::test]
async fn attempts_wait_while_the_backlog_is_full() {
    let OneMessage {
        dir: _dir,
        mut stage,
        mut jobs,
        ..
    } = one_message(&["later@y.test"], SystemTime::now(), |_| {});
    stage.faults = record::Faults {
        journal: 1,
        spool: 0,
    };
    stage.max_unrecorded = 1;
    stage.schedule().await;
    let job = jobs.try_recv().expect("tried");
    // Deferred (retry in 1 s); its record cannot be written.
    stage.apply(vec![answer(job)]).await;
    assert_eq!(stage.backlog.records(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    stage.schedule().await;
    assert!(jobs.try_recv().is_err(), "tried while the backlog is full");
    // The journal takes the record: the recipient, due since, is tried.
    stage.retry_owed(Instant::now() + RECORD_RETRY_MAX).await;
    assert!(stage.backlog.is_empty());
    stage.schedule().await;
    assert!(jobs.try_recv().is_ok(), "tried once the record is written");
}
