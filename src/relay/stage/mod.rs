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
//! anything on disk relies on it (at-least-once: a crash after the next hop's 2xx but before the
//! record is durable delivers again, never loses). Failed recipients' senders get a DSN, spooled
//! durably (the stage's own [`Appender`]) before the failures are recorded. A sealed segment
//! whose messages are all finished is then deleted; one pinned by a few old messages is
//! compacted (they are copied forward, see [`COMPACT_LIVE_PERCENT`]).
//!
//! When recording fails (a full disk, EIO), the outcomes still change the queue in memory, so
//! nothing is delivered or bounced twice while the server runs; the records and DSNs not on disk
//! wait in a backlog retried with a backoff ([`RECORD_RETRY_FIRST`] to [`RECORD_RETRY_MAX`]),
//! and no segment is deleted or compacted until it is empty (see `record`).
//!
//! The operator's `queue retry` and `queue delete` arrive from the control socket
//! ([`super::control`], served on this runtime) as commands in the same loop: a retry makes the
//! pending recipients due now (the [`DueQueue`]), a delete appends a durable Deleted record and
//! finishes the message.
//!
//! Outbound STARTTLS is [`super::tls`]'s (`conn` only swaps a connection's socket for the
//! TLS stream when the client asks); BDAT is the sans-IO client's.
//!
//! An `mx` route's jobs are per recipient domain: its worker looks the domain up
//! ([`super::mx::resolve`], through the shared [`crate::dns::Resolver`]) and tries the MX
//! addresses in turn until one takes the transaction; its connection is kept for the next job
//! of the same domain only.
//!
//! Bounces and compaction: see [`super::bounce`] and docs/spool.md.
//!
//! # Files
//! - this file: the settings and constants, [`prepare`] and [`spawn`], and the state the other
//!   files share (the stage's, a segment's, a job and its outcome).
//! - `run`: the stage's loop: learning about committed messages and scheduling due recipients.
//! - `commands`: the operator's `queue retry|delete|bounce` from the control socket.
//! - `outcomes`: applying the workers' outcomes: DSNs, the journal records, the log lines.
//! - `record`: writing them: the backlog of records and DSNs not on disk yet, its retries.
//! - `segments`: the stage's own segments, compaction, deleting finished segments.
//! - `worker`: a route's workers, and trying a domain's MX hosts in turn.
//! - `conn`: one outbound connection: connecting, greeting, STARTTLS and a transaction.
//!
//! The stage does not parse routes or decide TLS policy ([`super::route`], [`super::tls`]),
//! build DSN text ([`super::dsn`]), or append to the reactors' segments (it reads them, and
//! deletes them once every message in them is finished).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::control::{self, ControlSocket};
use super::queue::{self, DueQueue, QueuedMessage};
use super::route::Routes;
use crate::dns::Resolver;
use crate::smtp::client::RcptOutcome;
use crate::spool::appender::Appender;
use crate::spool::id::MessageId;
use crate::spool::journal::{DeliveryRecord, Journal};
use crate::spool::reader::{self, StoredMessage, Tail};
use crate::spool::segment;
use crate::stats::DeliveryStats;

mod commands;
mod conn;
mod outcomes;
mod record;
mod run;
mod segments;
#[cfg(test)]
mod tests;
mod worker;

/// How often the stage looks for due recipients and stops.
pub const TICK: Duration = Duration::from_millis(100);
/// After a failure to record outcomes (a journal append or a DSN spool), the first retry waits
/// this long; each failure in a row doubles the wait, up to [`RECORD_RETRY_MAX`].
pub const RECORD_RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between two attempts to record outcomes that could not be recorded.
pub const RECORD_RETRY_MAX: Duration = Duration::from_secs(30);
/// While this many outcome records wait to be written (about 100 bytes each), no new delivery
/// attempt starts: the backlog, and what a crash during a long write failure would deliver
/// again, stay bounded. Attempts resume once the records are on disk.
pub const MAX_UNRECORDED: usize = 100_000;
/// Longest wait for a TCP or unix connection to a next hop.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a reply (RFC 5321 §4.5.3.2: 5 minutes for most) or a write.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest wait for the reply to the end of a body (RFC 5321 §4.5.3.2.6: 10 minutes; a next
/// hop may be scanning the message).
pub const END_OF_DATA_TIMEOUT: Duration = Duration::from_secs(600);
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
/// How long the segments of a failed compaction are left out of the next ones (so one that
/// cannot be copied is not copied again every [`COMPACT_CHECK`]).
pub const COMPACT_FAILED_PAUSE: Duration = Duration::from_secs(600);
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

/// The stage's state on its thread; its methods are in `run`, `commands`, `outcomes` and
/// `segments`.
struct Stage {
    cfg: DeliveryConfig,
    queue: BTreeMap<MessageId, QueuedMessage>,
    segments: HashMap<PathBuf, SegState>,
    journal: Option<Journal>,
    /// The stage's own spool writer (DSNs, compaction copies).
    appender: Option<Appender>,
    /// When segments were last looked at for compaction.
    compact_at: Instant,
    /// Segments whose compaction failed (e.g. a message that no longer reads back), left out
    /// until then.
    compact_skip: HashMap<PathBuf, Instant>,
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
    /// Outcomes applied in memory whose records or DSNs are not on disk yet.
    backlog: record::Backlog,
    /// At this many records in the backlog no attempt starts ([`MAX_UNRECORDED`]; lower in
    /// tests).
    max_unrecorded: usize,
    /// Attempts are held for the backlog (logged when it starts and ends).
    holding: bool,
    /// Failures the tests inject into the journal appends and DSN spools.
    #[cfg(test)]
    faults: record::Faults,
}
