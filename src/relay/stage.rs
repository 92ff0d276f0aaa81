//! The delivery stage: its own thread with a current-thread tokio runtime, beside the reactors.
//!
//! Why a thread of its own: delivery is outbound, long-lived and paced by other servers (a
//! next hop may take minutes to answer), while a reactor's loop must stay short for the 250s
//! it owes. A separate thread shares nothing with the reactors but an unbounded channel of
//! message ids that a connection sends to after a successful commit (a lock-free push), so the
//! ingress hot path takes no lock and never waits for delivery. Plain tokio (not tokio-uring)
//! because outbound sockets are few and the code is simpler; reading a queued message is a
//! synchronous `pread` on this thread, and journal appends run on tokio's blocking pool.
//!
//! How it learns about mail: at start ([`prepare`], before the reactors open their spools) it
//! reads every committed message of every segment and the delivery journal; afterwards each
//! notified id makes it follow ([`Tail`]) that reactor's segments to find the message. Only
//! notified messages (whose 250 was earned) are delivered; those found by the tail before their
//! notification wait for it.
//!
//! Per tick it hands due recipients, grouped by message and route, to the route's workers
//! (`concurrency` tasks, each keeping one connection open while jobs keep coming), and applies
//! their outcomes: a journal record per recipient, appended and fdatasynced in one batch before
//! anything relies on it (at-least-once: a crash after the next hop's 2xx but before the record
//! is durable delivers again, never loses). Failed recipients' senders get a DSN, spooled
//! durably (the stage's own [`Appender`]) before the failures are recorded. A sealed segment
//! whose messages are all finished is then deleted; one pinned by a few old messages is
//! compacted (they are copied forward, see [`COMPACT_LIVE_PERCENT`]).
//!
//! The operator's `queue retry` and `queue delete` arrive from the control socket
//! ([`super::control`], served on this runtime) as commands in the same loop: a retry makes the
//! pending recipients due now (the [`DueQueue`]), a delete appends a durable Deleted record and
//! finishes the message.
//!
//! Outbound STARTTLS is [`super::tls`]'s (this file only swaps a connection's socket for the
//! TLS stream when the client asks); BDAT is the sans-IO client's.
//!
//! An `mx` route's jobs are per recipient domain: its worker looks the domain up
//! ([`super::mx::resolve`], through the shared [`crate::dns::Resolver`]) and tries the MX
//! addresses in turn until one takes the transaction; its connection is kept for the next job
//! of the same domain only.
//!
//! Bounces and compaction: see [`super::bounce`] and docs/spool.md.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::Mutex;

use super::bounce::{self, BounceSettings};
use super::control::{self, Command, ControlSocket, Refusal};
use super::dsn::{self, RcptReport};
use super::mx::{self, LocalHost};
use super::queue::{self, backoff, DueQueue, QueuedMessage, RcptState};
use super::route::{Route, Routes, Target};
use super::tls::{Io, RouteTls};
use crate::dns::Resolver;
use crate::smtp::client::{Client, Event, Protocol, RcptOutcome, Reply, Status, TlsPolicy};
use crate::spool::appender::{Appender, Body, NewMessage, APPENDER_REACTOR};
use crate::spool::frame::unix_us;
use crate::spool::id::MessageId;
use crate::spool::journal::{DeliveryRecord, Journal, RecordKind};
use crate::spool::reader::{self, StoredMessage, Tail};
use crate::spool::segment::{self, SegmentName};
use crate::stats::DeliveryStats;

/// How often the stage looks for due recipients and stops.
pub const TICK: Duration = Duration::from_millis(100);
/// When the delivery journal could not record outcomes, how long before those recipients are
/// tried again.
const JOURNAL_RETRY: Duration = Duration::from_secs(1);
/// Longest wait for a TCP or unix connection to a next hop.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for any reply (RFC 5321 §4.5.3.2 asks for 5 minutes for most, 10 after the
/// data; one limit for all).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(300);
/// An idle outbound connection is closed (QUIT) after this long without a job.
pub const CONN_IDLE: Duration = Duration::from_secs(5);
/// Bytes of dot-stuffed body gathered before a write.
pub const BODY_CHUNK: usize = 64 * 1024;
/// Read buffer for replies.
const READ_BUF: usize = 4096;
/// The journal is rewritten (compacted) once it grows past this many bytes.
pub const JOURNAL_COMPACT_BYTES: u64 = 64 * 1024 * 1024;
/// Default age after which a sealed segment may be compacted (`--compact-after`): one default
/// retry-max interval, so a segment is not copied while its deferred mail is likely to go soon.
pub const DEFAULT_COMPACT_AFTER: Duration = Duration::from_secs(3600);
/// A sealed segment old enough is compacted when its live (undelivered) messages fill less
/// than this percentage of its size.
pub const COMPACT_LIVE_PERCENT: u64 = 25;
/// A closed segment of the stage's own smaller than this is merged with others like it, once
/// there are [`COMPACT_MERGE_MIN`] of them old enough (whatever their live share).
pub const COMPACT_SMALL_BYTES: u64 = 1024 * 1024;
/// How many small stage segments make a merge worth it.
pub const COMPACT_MERGE_MIN: usize = 8;
/// How often the stage looks for segments to compact.
pub const COMPACT_CHECK: Duration = Duration::from_secs(1);
/// Bytes of live messages copied by one compaction pass (at least one segment is, whatever
/// its size): bounds the time the stage spends copying before it schedules again.
pub const COMPACT_BATCH_BYTES: u64 = 64 * 1024 * 1024;

/// What the delivery stage needs (built by `config`).
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// The spool directory.
    pub spool_dir: PathBuf,
    /// Our hostname (the default HELO name).
    pub hostname: String,
    /// The routes (non-empty: without routes there is no stage).
    pub routes: Routes,
    /// First retry after a deferral.
    pub retry_first: Duration,
    /// Longest retry interval.
    pub retry_max: Duration,
    /// A recipient still not delivered this long after arrival fails.
    pub max_queue_lifetime: Duration,
    /// A copy of every DSN to this address.
    pub bounce_copy: Option<String>,
    /// Warn senders of recipients deferred this long after arrival (once per recipient).
    pub delay_warning: Option<Duration>,
    /// Sealed segments this old may be compacted (see [`COMPACT_LIVE_PERCENT`]).
    pub compact_after: Duration,
    /// Our listen addresses (an MX host at one of them is this host: a loop).
    pub listen: Vec<SocketAddr>,
}

impl DeliveryConfig {
    /// Whether a route looks up MX records (the stage then needs a [`Resolver`]).
    pub fn needs_resolver(&self) -> bool {
        self.routes.all().iter().any(|r| r.target.is_mx())
    }
}

/// The reactors' side: tells the stage that a message was committed (after its fdatasync,
/// before its 250). Cloned into every reactor; sending never blocks.
#[derive(Debug, Clone)]
pub struct Notifier(UnboundedSender<MessageId>);

impl Notifier {
    /// `id` is durable and acknowledged.
    pub fn committed(&self, id: MessageId) {
        // The stage gone (stopping) is not the reactor's problem.
        let _ = self.0.send(id);
    }
}

#[derive(Debug)]
struct SegState {
    reactor: u16,
    /// Sealed, or found at start: nothing more will be added.
    closed: bool,
    /// Following it (segments created after start).
    tail: Option<Tail>,
    /// Its messages not finished yet (unnotified ones included).
    live: HashSet<MessageId>,
    /// The journal records that say its finished messages are finished: kept (and rewritten
    /// by every compaction) while the segment exists, so a restart never delivers them again.
    done: Vec<DeliveryRecord>,
}

/// The stage's state from [`prepare`], ready for [`spawn`].
#[derive(Debug)]
pub struct Prepared {
    cfg: DeliveryConfig,
    queue: BTreeMap<MessageId, QueuedMessage>,
    segments: HashMap<PathBuf, SegState>,
    journal: Journal,
    appender: Appender,
    rx: UnboundedReceiver<MessageId>,
    control: ControlSocket,
}

/// Binds the control socket, reads the spool and the journal, compacts the journal, and
/// returns the reactors' [`Notifier`]. Call before the reactors open their spools (their
/// recovery then only seals and trims what this read: the valid prefixes are the same).
///
/// # Errors
/// The control socket is in use or cannot be bound; reading the spool or the journal, or
/// rewriting the journal, failed.
pub fn prepare(cfg: DeliveryConfig) -> io::Result<(Notifier, Prepared)> {
    segment::ensure_dir(&cfg.spool_dir)?;
    let control = control::bind(&cfg.spool_dir)?;
    // Recovers (seals) the stage's own segments before they are read.
    let appender = Appender::open(&cfg.spool_dir)?;
    let mut messages = Vec::new();
    let mut segments: HashMap<PathBuf, SegState> = HashMap::new();
    // An id in two segments: a compaction copy whose original was not deleted yet (a stop in
    // between, possibly while the copies were being written). The later-listed one (the copy)
    // is used: the queue keeps the last of equal ids.
    let mut seen: HashSet<MessageId> = HashSet::new();
    let mut copies = 0usize;
    for (name, path) in segment::list_segments(&cfg.spool_dir)? {
        let mut live = HashSet::new();
        let mut dups = Vec::new();
        reader::scan_segment(&path, false, |m| {
            if !seen.insert(m.id) {
                dups.push(m.id);
            }
            live.insert(m.id);
            messages.push(m);
            Ok(())
        })?;
        // Both segments keep the id in `live` (each holds it until it is finished, so each
        // keeps the records that finish it: a restart never finds it unfinished in the older
        // one); the queue uses the copy.
        copies += dups.len();
        segments.insert(
            path,
            SegState {
                reactor: name.reactor,
                closed: true,
                tail: None,
                live,
                done: Vec::new(),
            },
        );
    }
    if copies > 0 {
        tracing::info!(
            "delivery: {copies} message(s) found twice (compaction stopped before deleting the old segment); using the copies"
        );
    }
    let (_, records) = Journal::open(&cfg.spool_dir)?;
    let mut queue = queue::build(messages, &records);
    // Finished messages leave the queue (their segment goes once the others are finished too);
    // their segment keeps the records that say so.
    queue.retain(|id, m| {
        let keep = !m.is_finished();
        if !keep {
            for s in segments.values_mut() {
                if s.live.remove(id) {
                    s.done.extend(m.summary_records());
                }
            }
        }
        keep
    });
    // The journal restarts with one record per tried recipient of each message still in the
    // spool, so it never names a message that is gone (whose id a new message could in
    // principle reuse).
    let journal = Journal::rewrite(&cfg.spool_dir, &summary(&queue, &segments))?;
    let (tx, rx) = unbounded_channel();
    Ok((
        Notifier(tx),
        Prepared {
            cfg,
            queue,
            segments,
            journal,
            appender,
            rx,
            control,
        },
    ))
}

/// The compacted journal: a summary of every queued message, and the records of the finished
/// messages whose segments are still there.
fn summary(
    queue: &BTreeMap<MessageId, QueuedMessage>,
    segments: &HashMap<PathBuf, SegState>,
) -> Vec<DeliveryRecord> {
    queue
        .values()
        .flat_map(|m| m.summary_records())
        .chain(segments.values().flat_map(|s| s.done.iter().cloned()))
        .collect()
}

/// The running stage.
#[derive(Debug)]
pub struct StageHandle {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StageHandle {
    /// Stops the stage (connections in progress are dropped; their recipients are tried again
    /// at the next start) and waits for its thread.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the stage's thread. Call once the reactors are ready. `resolver` is required for
/// `mx` routes (without it their recipients are deferred).
///
/// # Errors
/// The thread or its runtime could not be created.
pub fn spawn(
    p: Prepared,
    stats: Arc<DeliveryStats>,
    resolver: Option<Resolver>,
) -> io::Result<StageHandle> {
    let stop = Arc::new(AtomicBool::new(false));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let stop2 = stop.clone();
    let thread = std::thread::Builder::new()
        .name("ringmx-deliver".into())
        .spawn(move || {
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, Stage::new(p, stats, stop2).run(resolver));
        })?;
    Ok(StageHandle {
        stop,
        thread: Some(thread),
    })
}

/// A unit of work for a route's workers: some recipients of one message.
#[derive(Debug)]
struct Job {
    msg: StoredMessage,
    rcpts: Vec<usize>,
    /// The recipients' domain (lower case), for an `mx` route.
    domain: Option<String>,
    queued_at: Instant,
}

/// What a worker reports for a [`Job`].
#[derive(Debug)]
struct Outcome {
    id: MessageId,
    route: usize,
    rcpts: Vec<usize>,
    results: Vec<RcptOutcome>,
    relay: String,
    /// The connection's TLS (`TLSv1.3/…/verified`), if STARTTLS was done.
    tls: Option<String>,
    /// Waiting for a worker, connecting (and greeting), the transaction.
    delays: [Duration; 3],
}

struct Stage {
    cfg: DeliveryConfig,
    queue: BTreeMap<MessageId, QueuedMessage>,
    segments: HashMap<PathBuf, SegState>,
    journal: Option<Journal>,
    /// The stage's own spool writer (DSNs, compaction copies).
    appender: Option<Appender>,
    /// When segments were last looked at for compaction.
    compact_at: Instant,
    rx: UnboundedReceiver<MessageId>,
    stats: Arc<DeliveryStats>,
    stop: Arc<AtomicBool>,
    /// Committed messages the tail found before their notification.
    unnotified: HashMap<MessageId, StoredMessage>,
    /// Notified ids the tail has not found yet.
    notified: HashSet<MessageId>,
    in_flight: HashSet<(MessageId, usize)>,
    /// When each message with pending recipients is next due.
    due: DueQueue,
    /// When the queue gauges were last computed (they walk the queue).
    stats_at: Option<Instant>,
    jobs: Vec<UnboundedSender<Job>>,
    outcomes_tx: UnboundedSender<Outcome>,
    outcomes_rx: UnboundedReceiver<Outcome>,
    /// The control socket (its file is removed when the stage ends) and its commands.
    control: ControlSocket,
    control_tx: UnboundedSender<control::Request>,
    control_rx: UnboundedReceiver<control::Request>,
}

impl Stage {
    fn new(p: Prepared, stats: Arc<DeliveryStats>, stop: Arc<AtomicBool>) -> Self {
        let (outcomes_tx, outcomes_rx) = unbounded_channel();
        let (control_tx, control_rx) = unbounded_channel();
        let mut due = DueQueue::new();
        for (id, m) in &p.queue {
            if let Some(at) = m.next_due() {
                due.push(at, *id);
            }
        }
        Self {
            cfg: p.cfg,
            queue: p.queue,
            segments: p.segments,
            journal: Some(p.journal),
            appender: Some(p.appender),
            compact_at: Instant::now(),
            rx: p.rx,
            stats,
            stop,
            unnotified: HashMap::new(),
            notified: HashSet::new(),
            in_flight: HashSet::new(),
            due,
            stats_at: None,
            jobs: Vec::new(),
            outcomes_tx,
            outcomes_rx,
            control: p.control,
            control_tx,
            control_rx,
        }
    }

    async fn run(mut self, resolver: Option<Resolver>) {
        let me = Arc::new(LocalHost {
            hostname: self.cfg.hostname.to_ascii_lowercase(),
            listen: self.cfg.listen.clone(),
        });
        for (i, route) in self.cfg.routes.all().iter().enumerate() {
            let (tx, rx) = unbounded_channel();
            let rx = Arc::new(Mutex::new(rx));
            let route = Arc::new(route.clone());
            let helo = route
                .helo
                .clone()
                .unwrap_or_else(|| self.cfg.hostname.clone());
            // `check-config` and the start checked it; a CA file gone since then defers.
            let tls = Arc::new(RouteTls::new(&route).unwrap_or_else(|e| {
                tracing::error!("delivery: {e}; its mail is deferred");
                RouteTls::unusable()
            }));
            for _ in 0..route.concurrency {
                let ctx = WorkerRoute {
                    index: i,
                    route: route.clone(),
                    tls: tls.clone(),
                    mx: MxContext {
                        resolver: resolver.clone(),
                        me: me.clone(),
                    },
                    helo: helo.clone(),
                };
                tokio::task::spawn_local(worker(
                    ctx,
                    rx.clone(),
                    self.outcomes_tx.clone(),
                    self.stats.clone(),
                ));
            }
            self.jobs.push(tx);
        }
        tracing::info!(
            "delivery: {} route(s), {} message(s) queued from before",
            self.jobs.len(),
            self.queue.len()
        );
        if let Some(l) = self.control.take_listener() {
            tokio::task::spawn_local(control::serve(l, self.control_tx.clone()));
        }
        self.reclaim();
        while !self.stop.load(Ordering::Relaxed) {
            let mut ids = Vec::new();
            let mut outcomes = Vec::new();
            tokio::select! {
                n = self.rx.recv_many(&mut ids, 4096) => if n == 0 { break },
                Some(o) = self.outcomes_rx.recv() => outcomes.push(o),
                Some(r) = self.control_rx.recv() => self.control(r).await,
                () = tokio::time::sleep(TICK) => {}
            }
            while let Ok(o) = self.outcomes_rx.try_recv() {
                outcomes.push(o);
            }
            while let Ok(id) = self.rx.try_recv() {
                ids.push(id);
            }
            if !ids.is_empty() {
                self.learn(ids);
            }
            if !outcomes.is_empty() {
                self.apply(outcomes).await;
            }
            self.schedule().await;
            self.compact_segments().await;
            self.update_stats();
        }
        tracing::info!("delivery stopped: {} message(s) queued", self.queue.len());
    }

    /// A command from the control socket (`ringmx queue retry|delete`).
    async fn control(&mut self, req: control::Request) {
        let res = match req.command {
            Command::Retry(Some(id)) => match self.queue.get_mut(&id) {
                Some(m) if !m.deleted => {
                    let n = m.retry_now();
                    if n > 0 {
                        self.due.push(0, id);
                    }
                    tracing::info!("delivery id={id} retry requested: {n} recipient(s) due now");
                    Ok(n)
                }
                _ => Err(Refusal::NotQueued(id)),
            },
            Command::Retry(None) => {
                let mut n = 0;
                for (id, m) in &mut self.queue {
                    let k = m.retry_now();
                    if k > 0 {
                        self.due.push(0, *id);
                        n += k;
                    }
                }
                tracing::info!(
                    "delivery: retry of every message requested: {n} recipient(s) due now"
                );
                Ok(n)
            }
            Command::Delete(id) => self.delete(id).await,
            Command::Bounce(id) => self.bounce_now(id).await,
        };
        let _ = req.reply.send(res);
    }

    /// Deletes a queued message: a durable Deleted record first, then it leaves the queue (a
    /// transaction already under way for it is not interrupted; its outcome is ignored).
    async fn delete(&mut self, id: MessageId) -> Result<usize, Refusal> {
        let left = match self.queue.get(&id) {
            Some(m) if !m.deleted => m
                .rcpts
                .iter()
                .filter(|r| r.state != RcptState::Delivered)
                .count(),
            _ => return Err(Refusal::NotQueued(id)),
        };
        let rec = queue::record(
            RecordKind::Deleted,
            id,
            0,
            unix_us(SystemTime::now()),
            0,
            0,
            "deleted by the operator".into(),
        );
        if let Err(e) = self.append(vec![rec.clone()]).await {
            tracing::error!("delivery journal: {e}; message {id} is not deleted");
            return Err(Refusal::Other(format!(
                "the delivery journal could not record the deletion: {e}"
            )));
        }
        if let Some(m) = self.queue.get_mut(&id) {
            m.apply(&rec);
        }
        tracing::info!(
            "delivery id={id} deleted by the operator: {left} recipient(s) will not be delivered"
        );
        self.finish(id);
        self.reclaim();
        Ok(left)
    }

    /// `queue bounce`: the message's pending recipients fail now, through the same path as an
    /// expiry (a DSN spooled before the failures are recorded). Recipients in a transaction
    /// under way keep its outcome.
    async fn bounce_now(&mut self, id: MessageId) -> Result<usize, Refusal> {
        let rcpts: Vec<usize> = match self.queue.get(&id) {
            Some(m) if !m.deleted => m
                .rcpts
                .iter()
                .enumerate()
                .filter(|(i, r)| {
                    r.state == RcptState::Pending && !self.in_flight.contains(&(id, *i))
                })
                .map(|(i, _)| i)
                .collect(),
            _ => return Err(Refusal::NotQueued(id)),
        };
        let n = rcpts.len();
        let outcomes = rcpts
            .into_iter()
            .map(|i| Outcome {
                id,
                route: usize::MAX,
                rcpts: vec![i],
                results: vec![RcptOutcome {
                    status: Status::Failed,
                    reply: Reply::local(550, "5.0.0 returned to the sender by the postmaster"),
                }],
                relay: "none".into(),
                tls: None,
                delays: [Duration::ZERO; 3],
            })
            .collect();
        tracing::info!("delivery id={id} bounce requested: {n} recipient(s) fail now");
        self.apply(outcomes).await;
        Ok(n)
    }

    /// Notified ids: find them in their reactors' segments.
    fn learn(&mut self, ids: Vec<MessageId>) {
        let mut reactors = HashSet::new();
        for id in ids {
            match self.unnotified.remove(&id) {
                Some(m) => self.enqueue(m),
                None => {
                    self.notified.insert(id);
                    reactors.insert(id.reactor());
                }
            }
        }
        if reactors.is_empty() {
            return;
        }
        // The segments already followed usually hold the new mail; the spool directory is
        // listed only when some notified id is not found in them (a reactor rolled to a new
        // segment, or this is its first message).
        let mut found = self.poll_tails(&reactors);
        let found_ids: HashSet<MessageId> = found.iter().map(|m| m.id).collect();
        if self.notified.iter().any(|id| !found_ids.contains(id)) {
            self.follow_new_segments(&reactors);
            found.extend(self.poll_tails(&reactors));
        }
        for m in found {
            if self.notified.remove(&m.id) {
                self.enqueue(m);
            } else {
                self.unnotified.insert(m.id, m);
            }
        }
        self.reclaim();
    }

    /// Adds the spool's segments of `reactors` that are not followed yet.
    fn follow_new_segments(&mut self, reactors: &HashSet<u16>) {
        match segment::list_segments(&self.cfg.spool_dir) {
            Ok(list) => {
                for (SegmentName { reactor, .. }, path) in list {
                    if reactors.contains(&reactor) && !self.segments.contains_key(&path) {
                        self.segments.insert(
                            path.clone(),
                            SegState {
                                reactor,
                                closed: false,
                                tail: Some(Tail::new(path)),
                                live: HashSet::new(),
                                done: Vec::new(),
                            },
                        );
                    }
                }
            }
            Err(e) => tracing::warn!("delivery: cannot list the spool: {e}"),
        }
    }

    /// Reads what was committed since the last poll in the open segments of `reactors`.
    fn poll_tails(&mut self, reactors: &HashSet<u16>) -> Vec<StoredMessage> {
        let mut found = Vec::new();
        for s in self.segments.values_mut() {
            if !reactors.contains(&s.reactor) || s.closed {
                continue;
            }
            let Some(tail) = s.tail.as_mut() else {
                continue;
            };
            let before = found.len();
            if let Err(e) = tail.poll(|m| found.push(m)) {
                tracing::warn!("delivery: reading {}: {e}", tail.path().display());
            }
            for m in &found[before..] {
                s.live.insert(m.id);
            }
            s.closed = tail.is_sealed();
        }
        found
    }

    fn enqueue(&mut self, m: StoredMessage) {
        self.due.push(0, m.id);
        self.queue.insert(m.id, QueuedMessage::new(m));
    }

    /// Hands every due recipient to its route.
    async fn schedule(&mut self) {
        let now = unix_us(SystemTime::now());
        let lifetime = u64::try_from(self.cfg.max_queue_lifetime.as_micros()).unwrap_or(u64::MAX);
        let mut local = Vec::new();
        for id in self.due.pop_due(now) {
            let Some(m) = self.queue.get(&id) else {
                continue;
            };
            let id = &id;
            if m.deleted {
                continue;
            }
            // Recipients not due yet (or in flight: their outcome pushes them again) bring
            // the message back when the earliest of them is due.
            if let Some(later) = m
                .rcpts
                .iter()
                .filter(|r| r.state == RcptState::Pending && r.next_us > now)
                .map(|r| r.next_us)
                .min()
            {
                self.due.push(later, *id);
            }
            // By route, and for an `mx` route by recipient domain.
            let mut by_route: BTreeMap<(Option<usize>, Option<String>), Vec<usize>> =
                BTreeMap::new();
            for (i, r) in m.rcpts.iter().enumerate() {
                if r.state != RcptState::Pending
                    || r.next_us > now
                    || self.in_flight.contains(&(*id, i))
                {
                    continue;
                }
                if now.saturating_sub(m.msg.envelope.received_us) > lifetime {
                    local.push((*id, i, true));
                    continue;
                }
                let route = self.cfg.routes.for_rcpt(&r.addr);
                let domain = route
                    .filter(|&i| self.cfg.routes.all()[i].target.is_mx())
                    .map(|_| rcpt_domain(&r.addr));
                by_route.entry((route, domain)).or_default().push(i);
            }
            for ((route, domain), rcpts) in by_route {
                for &i in &rcpts {
                    self.in_flight.insert((*id, i));
                }
                match route {
                    Some(route) => {
                        let job = Job {
                            msg: m.msg.clone(),
                            rcpts,
                            domain,
                            queued_at: Instant::now(),
                        };
                        let _ = self.jobs[route].send(job);
                    }
                    None => local.extend(rcpts.into_iter().map(|i| (*id, i, false))),
                }
            }
        }
        if local.is_empty() {
            return;
        }
        // Expired recipients fail; recipients without a route are deferred (a route may be
        // added by a restart with another configuration).
        let mut outcomes = Vec::new();
        for (id, i, expired) in local {
            let reply = if expired {
                Reply::local(
                    550,
                    format!(
                        "5.4.7 delivery time expired after {} s in the queue",
                        self.cfg.max_queue_lifetime.as_secs()
                    ),
                )
            } else {
                Reply::local(451, "4.3.5 no route for this recipient's domain")
            };
            outcomes.push(Outcome {
                id,
                route: usize::MAX,
                rcpts: vec![i],
                results: vec![RcptOutcome {
                    status: if expired {
                        Status::Failed
                    } else {
                        Status::Deferred
                    },
                    reply,
                }],
                relay: "none".into(),
                tls: None,
                delays: [Duration::ZERO; 3],
            });
        }
        self.apply(outcomes).await;
    }

    /// Records outcomes durably, then updates the queue and frees finished segments.
    async fn apply(&mut self, outcomes: Vec<Outcome>) {
        let now = SystemTime::now();
        let now_us = unix_us(now);
        let mut records = Vec::new();
        // Durations for the histograms, recorded after the loop (one lock, never held across
        // the journal append's await).
        let mut attempts_took = Vec::new();
        let mut delivered_after = Vec::new();
        // Recipients whose senders get a DSN (spooled before the records are appended).
        let mut failed: BTreeMap<MessageId, Vec<RcptReport>> = BTreeMap::new();
        let mut delayed: BTreeMap<MessageId, Vec<RcptReport>> = BTreeMap::new();
        for o in &outcomes {
            if o.route != usize::MAX {
                // A real attempt (not a local "no route" or expiry outcome).
                attempts_took.push(o.delays[1] + o.delays[2]);
            }
            let route_name = self
                .cfg
                .routes
                .all()
                .get(o.route)
                .map_or_else(|| "none".to_string(), |r| r.name.clone());
            for (&i, res) in o.rcpts.iter().zip(&o.results) {
                self.in_flight.remove(&(o.id, i));
                let Some(m) = self.queue.get(&o.id) else {
                    continue;
                };
                let Some(r) = m.rcpts.get(i) else { continue };
                let attempts = r.attempts + 1;
                let (kind, next_us) = match res.status {
                    Status::Delivered => (RecordKind::Delivered, 0),
                    Status::Failed => (RecordKind::Failed, 0),
                    Status::Deferred => {
                        let wait = backoff(attempts, self.cfg.retry_first, self.cfg.retry_max);
                        (RecordKind::Deferred, unix_us(now + wait))
                    }
                };
                let counter = match res.status {
                    Status::Delivered => &self.stats.delivered,
                    Status::Deferred => &self.stats.deferred,
                    Status::Failed => &self.stats.failed,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                let age = now.duration_since(m.msg.received_at()).unwrap_or_default();
                if res.status == Status::Delivered {
                    delivered_after.push(age);
                }
                let expired = o.route == usize::MAX;
                let report = RcptReport {
                    addr: r.addr.clone(),
                    action: dsn::Action::Failed,
                    status: res.reply.dsn(),
                    remote_mta: bounce::remote_mta(&o.relay),
                    // An expired recipient: the last reply it got says why better than ours.
                    diagnostic: Some(if expired {
                        r.last_reply
                            .clone()
                            .unwrap_or_else(|| res.reply.to_string())
                    } else {
                        res.reply.to_string()
                    }),
                    last_attempt: Some(if expired && r.last_us > 0 {
                        std::time::UNIX_EPOCH + Duration::from_micros(r.last_us)
                    } else {
                        now
                    }),
                };
                match kind {
                    RecordKind::Failed => failed.entry(o.id).or_default().push(report),
                    RecordKind::Deferred
                        if !r.warned && self.cfg.delay_warning.is_some_and(|w| age >= w) =>
                    {
                        records.push(queue::record(
                            RecordKind::Warned,
                            o.id,
                            i as u32,
                            now_us,
                            0,
                            0,
                            String::new(),
                        ));
                        delayed.entry(o.id).or_default().push(RcptReport {
                            action: dsn::Action::Delayed,
                            ..report
                        });
                    }
                    _ => {}
                }
                let age = age.as_secs_f64();
                tracing::info!(
                    "delivery id={} to=<{}> route={} relay={} tls={} delay={:.2} delays={:.2}/{:.2}/{:.2} dsn={} status={} ({})",
                    o.id,
                    r.addr,
                    route_name,
                    o.relay,
                    o.tls.as_deref().unwrap_or("none"),
                    age,
                    o.delays[0].as_secs_f64(),
                    o.delays[1].as_secs_f64(),
                    o.delays[2].as_secs_f64(),
                    res.reply.dsn(),
                    res.status.name(),
                    res.reply
                );
                records.push(queue::record(
                    kind,
                    o.id,
                    i as u32,
                    now_us,
                    next_us,
                    attempts,
                    res.reply.to_string(),
                ));
            }
        }
        {
            let mut hist = self.stats.histograms();
            for took in attempts_took {
                hist.record_attempt(took);
            }
            for age in delivered_after {
                hist.record_delivered(age);
            }
        }
        if records.is_empty() {
            return;
        }
        // The DSNs are durable before the failures they report are recorded: a crash in
        // between sends a DSN twice, never none.
        let recorded = match self.send_dsns(failed, delayed, now).await {
            Ok(()) => self.append(records.clone()).await,
            Err(e) => Err(io::Error::other(format!("spooling DSNs: {e}"))),
        };
        if let Err(e) = recorded {
            // Without a durable record nothing may rely on the outcome: leave the recipients
            // pending, so they are tried again (at-least-once).
            tracing::error!(
                "delivery journal: {e}; the outcomes are not recorded and will be retried"
            );
            let again = unix_us(now + JOURNAL_RETRY);
            for o in &outcomes {
                self.due.push(again, o.id);
            }
            return;
        }
        let mut finished = Vec::new();
        for r in &records {
            if let Some(m) = self.queue.get_mut(&r.id) {
                m.apply(r);
                if r.kind == RecordKind::Deferred {
                    self.due.push(r.next_us, r.id);
                }
                if m.is_finished() {
                    finished.push(r.id);
                }
            }
        }
        for id in finished {
            self.finish(id);
        }
        self.reclaim();
        self.compact_journal().await;
    }

    /// Builds and spools (durably) one DSN per message with failed or long-delayed recipients,
    /// and queues them for delivery.
    async fn send_dsns(
        &mut self,
        failed: BTreeMap<MessageId, Vec<RcptReport>>,
        delayed: BTreeMap<MessageId, Vec<RcptReport>>,
        now: SystemTime,
    ) -> io::Result<()> {
        if failed.is_empty() && delayed.is_empty() {
            return Ok(());
        }
        let Some(mut appender) = self.appender.take() else {
            return Err(io::Error::other("the stage's spool writer is unavailable"));
        };
        let settings = BounceSettings {
            hostname: &self.cfg.hostname,
            copy_to: self.cfg.bounce_copy.as_deref(),
        };
        let mut msgs = Vec::new();
        let mut logs = Vec::new();
        for (reports, warning) in [(failed, false), (delayed, true)] {
            for (id, rcpts) in reports {
                let Some(m) = self.queue.get(&id) else {
                    continue;
                };
                let retry_hours = warning.then(|| {
                    let age = now.duration_since(m.msg.received_at()).unwrap_or_default();
                    self.cfg.max_queue_lifetime.saturating_sub(age).as_secs() / 3600
                });
                match bounce::dsn_message(settings, &mut appender, m, &rcpts, retry_hours, now) {
                    Some(n) => {
                        logs.push(format!(
                            "delivery id={id}: {} dsn={} to=<{}> ({} recipient(s))",
                            if warning { "delay warning" } else { "bounce" },
                            n.id,
                            m.msg.envelope.mail_from,
                            rcpts.len()
                        ));
                        msgs.push(n);
                    }
                    None if !warning => tracing::info!(
                        "delivery id={id}: no DSN for {} failed recipient(s): the sender is <>{}",
                        rcpts.len(),
                        if m.msg.id.reactor() == APPENDER_REACTOR {
                            " (a DSN that failed is dropped)"
                        } else {
                            ""
                        }
                    ),
                    None => {}
                }
            }
        }
        let written = if msgs.is_empty() {
            self.appender = Some(appender);
            return Ok(());
        } else {
            self.write_own_segment(appender, msgs).await?
        };
        for m in written {
            self.enqueue(m);
        }
        for l in logs {
            tracing::info!("{l}");
        }
        Ok(())
    }

    /// Writes `msgs` into a new segment of the stage's own (durable when this returns), and
    /// follows it like a sealed segment found at start. Returns its messages as read back.
    async fn write_own_segment(
        &mut self,
        mut appender: Appender,
        msgs: Vec<NewMessage>,
    ) -> io::Result<Vec<StoredMessage>> {
        let res = tokio::task::spawn_blocking(move || {
            let r = appender.write_segment(&msgs);
            (appender, r)
        })
        .await;
        let path = match res {
            Ok((a, r)) => {
                self.appender = Some(a);
                r?
            }
            Err(e) => return Err(io::Error::other(format!("spool writer task: {e}"))),
        };
        let mut found = Vec::new();
        reader::scan_segment(&path, false, |m| {
            found.push(m);
            Ok(())
        })?;
        self.segments.insert(
            path,
            SegState {
                reactor: APPENDER_REACTOR,
                closed: true,
                tail: None,
                live: found.iter().map(|m| m.id).collect(),
                done: Vec::new(),
            },
        );
        Ok(found)
    }

    /// Compaction (docs/spool.md): closed segments older than `compact_after` whose queued
    /// messages fill less than [`COMPACT_LIVE_PERCENT`] of them get those messages copied,
    /// with their ids, into a new segment of the stage's own; then they are deleted. Segments
    /// with a message in flight (or not queued: found but not notified yet) wait.
    async fn compact_segments(&mut self) {
        if self.compact_at.elapsed() < COMPACT_CHECK {
            return;
        }
        self.compact_at = Instant::now();
        let now = SystemTime::now();
        let busy: HashSet<MessageId> = self.in_flight.iter().map(|(id, _)| *id).collect();
        let mut picked = Vec::new();
        let mut batch = 0u64;
        for (path, s) in &self.segments {
            if !s.closed || s.live.is_empty() {
                continue;
            }
            let Ok(meta) = std::fs::metadata(path) else {
                continue;
            };
            let age = meta
                .modified()
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .unwrap_or_default();
            if age < self.cfg.compact_after {
                continue;
            }
            let mut live = 0u64;
            let mut movable = true;
            for id in &s.live {
                match self.queue.get(id) {
                    Some(m) if !busy.contains(id) => live += m.msg.size,
                    _ => {
                        movable = false;
                        break;
                    }
                }
            }
            let sparse = live.saturating_mul(100) < meta.len().saturating_mul(COMPACT_LIVE_PERCENT);
            // The stage's own small segments (one per bounce or compaction batch) are merged
            // too, so their number stays bounded.
            let small = s.reactor == APPENDER_REACTOR && meta.len() < COMPACT_SMALL_BYTES;
            if !movable || !(sparse || small) {
                continue;
            }
            if batch > 0 && batch + live > COMPACT_BATCH_BYTES {
                break;
            }
            batch += live;
            picked.push((path.clone(), meta.len(), live, sparse));
        }
        let merges = picked.iter().filter(|p| !p.3).count();
        if merges > 0 && merges < COMPACT_MERGE_MIN {
            // Too few small segments to be worth merging: only the sparse ones go.
            picked.retain(|p| p.3);
        }
        if picked.is_empty() {
            return;
        }
        let Some(appender) = self.appender.take() else {
            return;
        };
        let mut msgs = Vec::new();
        for (path, ..) in &picked {
            let Some(s) = self.segments.get(path) else {
                continue;
            };
            let mut ids: Vec<MessageId> = s.live.iter().copied().collect();
            ids.sort_unstable();
            for id in ids {
                if let Some(m) = self.queue.get(&id) {
                    msgs.push(NewMessage {
                        id,
                        envelope: m.msg.envelope.clone(),
                        body: Body::Stored(Box::new(m.msg.clone())),
                    });
                }
            }
        }
        let copies = match self.write_own_segment(appender, msgs).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("delivery: compaction failed (the segments stay): {e}");
                return;
            }
        };
        let target = copies
            .first()
            .map(|m| file_name(&m.segment))
            .unwrap_or_default();
        for c in copies {
            if let Some(m) = self.queue.get_mut(&c.id) {
                m.msg = c;
            }
        }
        for (path, size, live, _) in picked {
            let n = self.segments.remove(&path).map_or(0, |s| s.live.len());
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    self.stats.segments_deleted.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        "delivery: compacted segment {}: {n} queued message(s), {live} of {size} bytes, copied to {target}; deleted",
                        file_name(&path)
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // The copies are used from now on; the old file is only space (and is found
                // again, and ignored as a duplicate, at the next start).
                Err(e) => tracing::warn!("delivery: cannot delete {}: {e}", path.display()),
            }
        }
    }

    /// Appends records and fdatasyncs them on the blocking pool.
    async fn append(&mut self, records: Vec<DeliveryRecord>) -> io::Result<()> {
        let Some(mut j) = self.journal.take() else {
            return Err(io::Error::other("journal unavailable"));
        };
        let res = tokio::task::spawn_blocking(move || {
            let r = j.append(&records);
            (j, r)
        })
        .await;
        match res {
            Ok((j, r)) => {
                self.journal = Some(j);
                r
            }
            Err(e) => Err(io::Error::other(format!("journal task: {e}"))),
        }
    }

    async fn compact_journal(&mut self) {
        if self
            .journal
            .as_ref()
            .is_none_or(|j| j.len() < JOURNAL_COMPACT_BYTES)
        {
            return;
        }
        let summary = summary(&self.queue, &self.segments);
        let dir = self.cfg.spool_dir.clone();
        match tokio::task::spawn_blocking(move || Journal::rewrite(&dir, &summary)).await {
            Ok(Ok(j)) => self.journal = Some(j),
            Ok(Err(e)) => tracing::warn!("delivery journal: compaction failed: {e}"),
            Err(e) => tracing::warn!("delivery journal: compaction task: {e}"),
        }
    }

    /// A finished message leaves the queue; its segment keeps the records saying so.
    fn finish(&mut self, id: MessageId) {
        let Some(m) = self.queue.remove(&id) else {
            return;
        };
        let records = m.summary_records();
        for s in self.segments.values_mut() {
            if s.live.remove(&id) {
                s.done.extend(records.iter().cloned());
            }
        }
    }

    /// Deletes closed segments with nothing left to deliver.
    fn reclaim(&mut self) {
        let done: Vec<PathBuf> = self
            .segments
            .iter()
            .filter(|(_, s)| s.closed && s.live.is_empty())
            .map(|(p, _)| p.clone())
            .collect();
        for path in done {
            self.segments.remove(&path);
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    self.stats.segments_deleted.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        "delivery: deleted segment {}: every message in it is delivered",
                        file_name(&path)
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!("delivery: cannot delete {}: {e}", path.display()),
            }
        }
    }

    /// Computes the queue gauges, at most once per [`TICK`] (they walk the queue).
    fn update_stats(&mut self) {
        if self.stats_at.is_some_and(|t| t.elapsed() < TICK) {
            return;
        }
        self.stats_at = Some(Instant::now());
        let s = &self.stats;
        let now = SystemTime::now();
        s.queue_messages
            .store(self.queue.len() as u64, Ordering::Relaxed);
        s.queue_recipients.store(
            self.queue.values().map(|m| m.pending() as u64).sum(),
            Ordering::Relaxed,
        );
        s.queue_bytes.store(
            self.queue.values().map(|m| m.msg.size).sum(),
            Ordering::Relaxed,
        );
        let oldest = self
            .queue
            .values()
            .map(|m| {
                now.duration_since(m.msg.received_at())
                    .unwrap_or_default()
                    .as_secs()
            })
            .max()
            .unwrap_or(0);
        s.queue_oldest_secs.store(oldest, Ordering::Relaxed);
    }
}

/// The domain of an address, lower case, without a final dot.
fn rcpt_domain(addr: &str) -> String {
    addr.rsplit_once('@')
        .map_or("", |(_, d)| d)
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// What the workers of an `mx` route need besides the route.
#[derive(Debug, Clone)]
struct MxContext {
    resolver: Option<Resolver>,
    me: Arc<LocalHost>,
}

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// What a route's workers share: the route, its index, its TLS, MX lookups and HELO name.
struct WorkerRoute {
    index: usize,
    route: Arc<Route>,
    tls: Arc<RouteTls>,
    mx: MxContext,
    helo: String,
}

/// One of a route's `concurrency` workers: takes jobs, keeps one connection while they come.
async fn worker(
    ctx: WorkerRoute,
    jobs: Arc<Mutex<UnboundedReceiver<Job>>>,
    done: UnboundedSender<Outcome>,
    stats: Arc<DeliveryStats>,
) {
    let WorkerRoute {
        index,
        route,
        tls,
        mx,
        helo,
    } = ctx;
    let mut conn: Option<Conn> = None;
    loop {
        let job = {
            let mut rx = jobs.lock().await;
            if conn.is_some() {
                match tokio::time::timeout(CONN_IDLE, rx.recv()).await {
                    Ok(Some(j)) => Some(j),
                    Ok(None) => return,
                    Err(_) => None,
                }
            } else {
                match rx.recv().await {
                    Some(j) => Some(j),
                    None => return,
                }
            }
        };
        let Some(job) = job else {
            if let Some(c) = conn.take() {
                c.quit(&stats).await;
            }
            continue;
        };
        let waited = job.queued_at.elapsed();
        let t0 = Instant::now();
        let mut relay = route.target.to_string();
        let mut connect_time = Duration::ZERO;
        let mut tls_used = None;
        let results = if let Target::Mx(port) = route.target {
            // A kept connection serves later jobs of the same domain only.
            if conn.as_ref().is_some_and(|c| c.domain != job.domain) {
                if let Some(c) = conn.take() {
                    c.quit(&stats).await;
                }
            }
            match conn.as_mut() {
                Some(c) => {
                    relay = c.relay.clone();
                    tls_used = c.tls.clone();
                    c.transact(&job).await
                }
                None => {
                    let d = deliver_mx(&job, port, &tls, &helo, &mx, &stats).await;
                    relay = d.relay;
                    connect_time = d.connect_time;
                    conn = d.conn;
                    tls_used = conn.as_ref().and_then(|c| c.tls.clone());
                    d.results
                }
            }
        } else {
            if conn.is_none() {
                match Conn::open(&route, &tls, &helo).await {
                    Ok(c) => {
                        connect_time = t0.elapsed();
                        stats.connections_opened.fetch_add(1, Ordering::Relaxed);
                        stats.connections_active.fetch_add(1, Ordering::Relaxed);
                        conn = Some(c);
                    }
                    Err(reply) => {
                        let _ = done.send(Outcome {
                            id: job.msg.id,
                            route: index,
                            results: deferred(&job, &reply),
                            rcpts: job.rcpts,
                            relay,
                            tls: None,
                            delays: [waited, t0.elapsed(), Duration::ZERO],
                        });
                        continue;
                    }
                }
            }
            match conn.as_mut() {
                Some(c) => {
                    relay = c.relay.clone();
                    tls_used = c.tls.clone();
                    c.transact(&job).await
                }
                None => deferred(&job, &Reply::local(451, "4.4.1 no connection")),
            }
        };
        let transaction = t0.elapsed().saturating_sub(connect_time);
        if conn.as_ref().is_some_and(|c| c.client.is_closed()) {
            conn = None;
            stats.connections_active.fetch_sub(1, Ordering::Relaxed);
        }
        let _ = done.send(Outcome {
            id: job.msg.id,
            route: index,
            results,
            rcpts: job.rcpts,
            relay,
            tls: tls_used,
            delays: [waited, connect_time, transaction],
        });
    }
}

/// What [`deliver_mx`] did.
struct MxDelivery {
    results: Vec<RcptOutcome>,
    relay: String,
    connect_time: Duration,
    /// The connection that took the transaction, kept for the domain's next job.
    conn: Option<Conn>,
}

/// Delivers `job` to its domain's MX hosts: resolves them, then tries each address until one
/// takes the transaction (a transaction whose recipients were all deferred moves on to the
/// next address).
async fn deliver_mx(
    job: &Job,
    port: u16,
    tls: &RouteTls,
    helo: &str,
    mx: &MxContext,
    stats: &DeliveryStats,
) -> MxDelivery {
    let domain = job.domain.clone().unwrap_or_default();
    let mut out = MxDelivery {
        results: Vec::new(),
        relay: "none".into(),
        connect_time: Duration::ZERO,
        conn: None,
    };
    let Some(resolver) = &mx.resolver else {
        out.results = deferred(job, &Reply::local(451, "4.3.5 no DNS resolver"));
        return out;
    };
    let hops = match mx::resolve(resolver, &domain, port, &mx.me).await {
        Ok(h) => h,
        Err(reply) => {
            out.results = replied(job, &reply);
            return out;
        }
    };
    let t0 = Instant::now();
    for hop in hops {
        let mut c = match Conn::open_hop(&hop, tls, helo, &domain).await {
            Ok(c) => c,
            Err(reply) => {
                tracing::info!(
                    "delivery id={} domain={domain} host={}[{}] not accepting: {reply}; trying the next MX address",
                    job.msg.id,
                    hop.host,
                    hop.addr
                );
                out.relay = format!("{}[{}]:{}", hop.host, hop.addr.ip(), hop.addr.port());
                out.results = deferred(job, &reply);
                continue;
            }
        };
        out.connect_time = t0.elapsed();
        stats.connections_opened.fetch_add(1, Ordering::Relaxed);
        stats.connections_active.fetch_add(1, Ordering::Relaxed);
        out.relay = c.relay.clone();
        out.results = c.transact(job).await;
        if out.results.iter().any(|r| r.status != Status::Deferred) {
            out.conn = Some(c);
            return out;
        }
        if c.client.is_closed() {
            stats.connections_active.fetch_sub(1, Ordering::Relaxed);
        } else {
            c.quit(stats).await;
        }
    }
    out
}

/// Every recipient of `job` gets `reply`: failed for a 5xx, else deferred.
fn replied(job: &Job, reply: &Reply) -> Vec<RcptOutcome> {
    let status = if reply.code >= 500 {
        Status::Failed
    } else {
        Status::Deferred
    };
    job.rcpts
        .iter()
        .map(|_| RcptOutcome {
            status,
            reply: reply.clone(),
        })
        .collect()
}

fn deferred(job: &Job, reply: &Reply) -> Vec<RcptOutcome> {
    job.rcpts
        .iter()
        .map(|_| RcptOutcome {
            status: Status::Deferred,
            reply: reply.clone(),
        })
        .collect()
}

/// One outbound connection: the socket, the sans-IO client and its buffers.
struct Conn {
    io: Box<dyn Io>,
    client: Client,
    out: Vec<u8>,
    buf: Vec<u8>,
    /// `host[addr]:port` or the socket path, for the log.
    relay: String,
    /// After STARTTLS: version, cipher suite and whether the certificate was verified.
    tls: Option<String>,
    /// The recipient domain it was opened for (an `mx` route's connection).
    domain: Option<String>,
}

impl Conn {
    /// Connects, reads the greeting and the EHLO/LHLO reply, and does STARTTLS as the route's
    /// TLS says. A failed handshake under `may` without `ca` is retried once in clear.
    async fn open(route: &Route, tls: &RouteTls, helo: &str) -> Result<Self, Reply> {
        match Self::open_with(route, tls, tls.policy, helo).await {
            Err((reply, true)) if tls.clear_after_failure() => {
                tracing::warn!(
                    "delivery: {reply}; tls = \"may\": trying {} again in clear",
                    route.target
                );
                Self::open_with(route, tls, TlsPolicy::Never, helo)
                    .await
                    .map_err(|(r, _)| r)
            }
            r => r.map_err(|(r, _)| r),
        }
    }

    /// [`Conn::open`] with `policy`; the error says whether the TLS handshake failed.
    async fn open_with(
        route: &Route,
        tls: &RouteTls,
        policy: TlsPolicy,
        helo: &str,
    ) -> Result<Self, (Reply, bool)> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            Reply::local(451, format!("4.4.1 connect to {}: {what}{e}", route.target))
        };
        let (io, relay, protocol): (Box<dyn Io>, String, Protocol) = match &route.target {
            Target::Smtp(host, port) | Target::Lmtp(host, port) => {
                let s = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    tokio::net::TcpStream::connect((host.as_str(), *port)),
                )
                .await
                .map_err(|_| (fail("timed out", &""), false))?
                .map_err(|e| (fail("", &e), false))?;
                let _ = s.set_nodelay(true);
                let peer = s.peer_addr().map_or_else(
                    |_| format!("{host}:{port}"),
                    |a| format!("{host}[{}]:{}", a.ip(), a.port()),
                );
                let proto = if route.target.is_lmtp() {
                    Protocol::Lmtp
                } else {
                    Protocol::Smtp
                };
                (Box::new(s), peer, proto)
            }
            Target::LmtpUnix(path) => {
                let s =
                    tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::UnixStream::connect(path))
                        .await
                        .map_err(|_| (fail("timed out", &""), false))?
                        .map_err(|e| (fail("", &e), false))?;
                (Box::new(s), path.display().to_string(), Protocol::Lmtp)
            }
            Target::Mx(_) => {
                return Err((
                    Reply::local(451, "4.3.5 an mx route has no fixed host"),
                    false,
                ))
            }
        };
        Self::greet(io, relay, protocol, helo, tls, policy, None).await
    }

    /// Connects to one MX address of `domain`, reads the greeting and the EHLO reply, and does
    /// STARTTLS as the route's TLS says (the certificate checked against the MX host's name). A
    /// failed handshake under `may` without `ca` is retried once in clear.
    async fn open_hop(
        hop: &mx::Hop,
        tls: &RouteTls,
        helo: &str,
        domain: &str,
    ) -> Result<Self, Reply> {
        let connect = || async {
            let relay = format!("{}[{}]:{}", hop.host, hop.addr.ip(), hop.addr.port());
            let fail = |e: String| Reply::local(451, format!("4.4.1 connect to {relay}: {e}"));
            let s = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(hop.addr))
                .await
                .map_err(|_| fail("timed out".into()))?
                .map_err(|e| fail(e.to_string()))?;
            let _ = s.set_nodelay(true);
            Ok::<_, Reply>((s, relay))
        };
        let host = Some(hop.host.as_str());
        let (s, relay) = connect().await?;
        let mut c = match Self::greet(
            Box::new(s),
            relay,
            Protocol::Smtp,
            helo,
            tls,
            tls.policy,
            host,
        )
        .await
        {
            Err((reply, true)) if tls.clear_after_failure() => {
                tracing::warn!(
                    "delivery: {reply}; tls = \"may\": trying {} again in clear",
                    hop.host
                );
                let (s, relay) = connect().await?;
                Self::greet(
                    Box::new(s),
                    relay,
                    Protocol::Smtp,
                    helo,
                    tls,
                    TlsPolicy::Never,
                    host,
                )
                .await
                .map_err(|(r, _)| r)?
            }
            r => r.map_err(|(r, _)| r)?,
        };
        c.domain = Some(domain.to_string());
        Ok(c)
    }

    /// Reads the greeting and the EHLO/LHLO reply on a new connection, with STARTTLS as
    /// `policy` says (`host`: the name to check the certificate against, for an MX host). The
    /// error says whether the TLS handshake failed.
    async fn greet(
        io: Box<dyn Io>,
        relay: String,
        protocol: Protocol,
        helo: &str,
        tls: &RouteTls,
        policy: TlsPolicy,
        host: Option<&str>,
    ) -> Result<Self, (Reply, bool)> {
        let mut c = Self {
            io,
            client: Client::new(protocol, helo).with_tls(policy),
            out: Vec::new(),
            buf: vec![0; READ_BUF],
            relay,
            tls: None,
            domain: None,
        };
        let mut handshake_failed = false;
        loop {
            match c.next_event().await {
                Event::Ready(_) => return Ok(c),
                Event::Closed(r) => {
                    c.flush().await;
                    return Err((r, handshake_failed));
                }
                Event::StartTls => {
                    // The client saw nothing after the 220: the socket's next bytes are TLS.
                    let plain = std::mem::replace(&mut c.io, Box::new(tokio::io::empty()));
                    match tls.handshake(plain, &c.relay, host).await {
                        Ok((io, desc)) => {
                            c.io = io;
                            c.tls = Some(desc);
                            c.client.tls_established(&mut c.out);
                        }
                        Err(why) => {
                            handshake_failed = true;
                            c.client.lose(&Reply::local(451, why));
                        }
                    }
                }
                _ => {}
            }
        }
    }

    async fn flush(&mut self) {
        if self.out.is_empty() {
            return;
        }
        let res = tokio::time::timeout(REPLY_TIMEOUT, self.io.write_all(&self.out)).await;
        self.out.clear();
        let err = match res {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".into(),
        };
        self.client.lose(&Reply::local(
            451,
            format!("4.4.2 write to {}: {err}", self.relay),
        ));
    }

    /// Writes what the client queued, then reads until it has an event.
    async fn next_event(&mut self) -> Event {
        loop {
            self.flush().await;
            if let Some(e) = self.client.poll_event() {
                return e;
            }
            if self.client.is_closed() {
                return Event::Closed(Reply::local(451, "4.4.2 connection closed"));
            }
            let why = match tokio::time::timeout(REPLY_TIMEOUT, self.io.read(&mut self.buf)).await {
                Ok(Ok(0)) => format!("4.4.2 connection closed by {}", self.relay),
                Ok(Ok(n)) => {
                    let (client, buf, out) = (&mut self.client, &self.buf, &mut self.out);
                    client.feed(&buf[..n], out);
                    continue;
                }
                Ok(Err(e)) => format!("4.4.2 read from {}: {e}", self.relay),
                Err(_) => format!("4.4.2 timeout waiting for a reply from {}", self.relay),
            };
            self.client.lose(&Reply::local(451, why));
        }
    }

    /// Feeds the client the replies already here, without waiting: pipelined BDAT chunks
    /// each get one, and reading them as the body goes keeps the next hop from blocking on
    /// its writes while we block on ours.
    async fn read_ready(&mut self) {
        while !self.client.is_closed() {
            // A zero timeout polls the read once: ready bytes, or nothing now.
            match tokio::time::timeout(Duration::ZERO, self.io.read(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {
                    let (client, buf, out) = (&mut self.client, &self.buf, &mut self.out);
                    client.feed(&buf[..n], out);
                }
                // Nothing ready, or an end or error that the next wait for a reply reports.
                _ => return,
            }
        }
    }

    /// Runs one transaction for `job`.
    async fn transact(&mut self, job: &Job) -> Vec<RcptOutcome> {
        while !self.client.is_ready() {
            if let Event::Closed(r) = self.next_event().await {
                return deferred(job, &r);
            }
        }
        // Stale Ready events of the previous transaction.
        while self.client.poll_event().is_some() {}
        let data = match job.msg.read_data() {
            Ok(d) => d,
            Err(e) => {
                return deferred(
                    job,
                    &Reply::local(451, format!("4.3.0 reading the spool: {e}")),
                );
            }
        };
        let env = &job.msg.envelope;
        let rcpts: Vec<String> = job.rcpts.iter().map(|&i| env.rcpts[i].clone()).collect();
        if self
            .client
            .start(
                &env.mail_from,
                &rcpts,
                Some(data.len() as u64),
                &mut self.out,
            )
            .is_err()
        {
            return deferred(job, &Reply::local(451, "4.3.0 connection not ready"));
        }
        loop {
            match self.next_event().await {
                Event::SendBody => {
                    // The last chunk goes with the end (`BDAT n LAST` when chunking).
                    let mut chunks = data.chunks(BODY_CHUNK).peekable();
                    while let Some(chunk) = chunks.next() {
                        if chunks.peek().is_none() {
                            self.client.end_body_with(chunk, &mut self.out);
                        } else {
                            self.client.body(chunk, &mut self.out);
                            self.flush().await;
                            self.read_ready().await;
                        }
                    }
                    if data.is_empty() {
                        self.client.end_body(&mut self.out);
                    }
                }
                Event::Done(o) => return o,
                Event::Closed(r) => return deferred(job, &r),
                Event::Ready(_) | Event::StartTls => {}
            }
        }
    }

    async fn quit(mut self, stats: &DeliveryStats) {
        stats.connections_active.fetch_sub(1, Ordering::Relaxed);
        self.client.quit(&mut self.out);
        self.flush().await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.next_event()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::frame::EnvelopeRecord;
    use std::net::{IpAddr, Ipv4Addr};

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
}
