//! The durable spool: one append-only segment file per reactor, frames of concurrent messages
//! interleaved, written through io_uring registered buffers, made durable by group commit.
//!
//! # Layout
//! - [`frame`]: the frame format and payload records (pure).
//! - [`id`]: message ids, time-sortable and printable (pure).
//! - [`trace`]: the `Received:` header (pure).
//! - [`segment`]: segment names, the CRC-verifying walker, start-up recovery (sync `std::fs`).
//! - `writer` (re-exported here): [`Spool`] and [`MessageWriter`], the io_uring writer.
//!   See its module docs for the files it is made of.
//! - [`appender`]: the delivery thread's synchronous writer (bounces, compaction copies) into
//!   segments of a reserved reactor index.
//! - [`journal`]: the delivery journal (what became of each recipient), read and appended.
//! - [`reader`]: reading stored messages and checking segments without a server.
//! - [`tool`]: `ringmx spool ls|cat|export|check`.
//!
//! # Writer call order
//! ```no_run
//! # use ringmx::spool::*; use ringmx::buffers::*;
//! # async fn f(envelope: EnvelopeRecord) -> Result<(), SpoolError> {
//! let pool = BufferPool::register(BufferConfig::from_rlimit(1));
//! let spool = Spool::open(SpoolConfig::new("./spool", 0, "mx.example.net"), pool).await?;
//! let mut msg = spool.begin(&envelope);             // sync: id, Envelope frame, Received:
//! msg.push(b"Subject: hi\r\n\r\nbody\r\n");          // sync copy, never waits
//! msg.flush().await?;                               // after each read: writes full buffers
//! let id = msg.commit().await?;                     // durable now: answer 250 ... queued as <id>
//! # let _ = id; Ok(()) }
//! ```
//!
//! The spool stores an [`EnvelopeRecord`] of its own (the SMTP envelope plus the client address
//! and arrival time); the connection driver builds it from the session's envelope. The spool
//! does not parse SMTP, undo dot-stuffing or enforce size limits: it stores the bytes it is given. It does not deliver mail; the delivery stage (`relay`) reads the segments, records outcomes
//! in the [`journal`] and deletes segments whose messages are all delivered.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

pub mod appender;
pub mod frame;
pub mod id;
pub mod journal;
pub mod reader;
pub mod segment;
pub mod tool;
pub mod trace;
mod writer;

pub use frame::{EnvelopeRecord, TlsTrace};
pub use writer::{MessageWriter, Spool};

/// Default segment size limit: 256 MiB (a soft limit: messages already started finish in the
/// segment they started in).
pub const DEFAULT_SEGMENT_SIZE: u64 = 256 * 1024 * 1024;

/// Default preallocation step (`fallocate` ahead of the write position).
pub const DEFAULT_PREALLOCATE: u64 = 8 * 1024 * 1024;

/// How commits reach the disk. The variants' docs are also the `--sync` help; [`SyncPolicy::name`]
/// is the one spelling used on the command line, in the config file, logs and stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncPolicy {
    /// fdatasync before every 250, one sync shared by all messages that end meanwhile.
    Group,
    /// Never fsync (testing only): a commit resolves once its frames are written, and
    /// acknowledged mail can be lost.
    None,
}

impl SyncPolicy {
    /// Every policy.
    pub const ALL: [Self; 2] = [Self::Group, Self::None];

    /// `group` / `none`: the flag value, the config-file value and the stats spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::Group => "group",
            Self::None => "none",
        }
    }

    /// The policy called `name` (exactly as [`SyncPolicy::name`] spells it).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// Settings of one reactor's writer.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// The spool directory (created, and its parent synced, if missing).
    pub dir: PathBuf,
    /// This reactor's index (part of segment names and message ids; at most [`id::MAX_REACTOR`]).
    pub reactor: u16,
    /// Roll the segment at this size (soft limit).
    pub segment_size: u64,
    /// fsync policy.
    pub sync: SyncPolicy,
    /// Our hostname, for the Received: header.
    pub hostname: String,
    /// Preallocate segment space this far ahead with `fallocate` (0: never). Turned off by itself
    /// where the filesystem does not support it.
    pub preallocate: u64,
    /// Prepared space: with group commit and preallocation on, write zeros ahead of the appends
    /// so that appends overwrite written blocks (see docs/spool.md, "Prepared space"). Off by
    /// default ([`DEFAULT_PREPARE`]): it makes each fdatasync cheaper for small messages, but
    /// writes every byte of a segment twice, which costs bulk mail more CPU than it saves.
    pub prepare: bool,
}

/// Whether spool segments get prepared (zero-filled) space by default: no. Measured on an ext4
/// without journal (`loadtest/compare.sh`, 50 sessions): 100 KiB messages took about 1.5× the
/// server CPU per message with it, while 1 KiB messages at 10 sessions gained about 5 %.
pub const DEFAULT_PREPARE: bool = false;

impl SpoolConfig {
    /// Defaults: 256 MiB segments, group commit, 8 MiB preallocation steps.
    pub fn new(dir: impl Into<PathBuf>, reactor: u16, hostname: impl Into<String>) -> Self {
        Self {
            dir: dir.into(),
            reactor,
            segment_size: DEFAULT_SEGMENT_SIZE,
            sync: SyncPolicy::Group,
            hostname: hostname.into(),
            preallocate: DEFAULT_PREALLOCATE,
            prepare: DEFAULT_PREPARE,
        }
    }
}

/// What the spool failed at. None of these ever acknowledges a message.
#[derive(Debug)]
pub enum SpoolError {
    /// ENOSPC / EDQUOT: answer 452 4.3.1.
    NoSpace,
    /// Any other I/O error (EIO, a failed fsync): answer 451 4.3.0.
    Io(io::Error),
    /// Another process holds this reactor's lock (it writes the same segments).
    ReactorInUse {
        /// The lock file, `<dir>/.lock-<reactor>`.
        lock: PathBuf,
        /// The reactor index.
        reactor: u16,
        /// The `flock` error.
        source: io::Error,
    },
    /// The reactor index exceeds [`id::MAX_REACTOR`] (it would not fit in message ids).
    ReactorIndex(u16),
    /// The spool was closed: no new messages.
    Closed,
    /// The message has no segment to write to.
    NoSegment,
    /// A segment write task ended without a result (it panicked or was cancelled); the text
    /// says how.
    WriteTask(String),
}

impl SpoolError {
    /// Classifies an I/O error.
    pub fn from_io(e: io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => Self::NoSpace,
            _ => Self::Io(e),
        }
    }

    /// What went wrong, without the `spool: ` prefix of `Display` (for messages that already
    /// name the spool).
    pub fn reason(&self) -> Reason<'_> {
        Reason(self)
    }

    /// The kind of the underlying I/O error, if there is one.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            Self::Io(e) | Self::ReactorInUse { source: e, .. } => Some(e.kind()),
            _ => None,
        }
    }
}

impl From<io::Error> for SpoolError {
    fn from(e: io::Error) -> Self {
        Self::from_io(e)
    }
}

/// [`SpoolError::reason`]: the error's text without the `spool: ` prefix.
#[derive(Debug, Clone, Copy)]
pub struct Reason<'a>(&'a SpoolError);

impl fmt::Display for Reason<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            SpoolError::NoSpace => f.write_str("no space left on device"),
            SpoolError::Io(e) => e.fmt(f),
            SpoolError::ReactorInUse {
                lock,
                reactor,
                source,
            } => write!(
                f,
                "{}: reactor {reactor} of this spool is in use by another process ({source})",
                lock.display()
            ),
            SpoolError::ReactorIndex(r) => {
                write!(f, "reactor index {r} exceeds {}", id::MAX_REACTOR)
            }
            SpoolError::Closed => f.write_str("spool is closed"),
            SpoolError::NoSegment => f.write_str("no segment"),
            SpoolError::WriteTask(e) => write!(f, "spool write task: {e}"),
        }
    }
}

impl fmt::Display for SpoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spool: {}", self.reason())
    }
}

impl std::error::Error for SpoolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(e) | Self::ReactorInUse { source: e, .. } => Some(e),
            _ => None,
        }
    }
}

/// Where a writer reports how long its disk operations took, as each completes (the server
/// records them into its per-reactor stats histograms; see [`Spool::set_timings`]). Called on
/// the reactor's thread, once per fdatasync and once per group write: keep it cheap.
///
/// With them, a message's ack latency splits into waiting (for the fdatasync in flight to
/// finish and the group to be sealed), writing (the group write) and flushing (the fdatasync).
pub trait Timings {
    /// One fdatasync of a segment took `took` (submission to completion, failed ones included).
    fn fsync(&self, took: Duration);
    /// One group write (the final frames of the messages of one fdatasync batch) took `took`,
    /// submission to completion.
    fn group_write(&self, took: Duration);
}

/// Buckets of [`SpoolStats::batch_hist`]: batch sizes 1, 2, 3–4, 5–8, …, 129–256, over 256.
pub const BATCH_BUCKETS: usize = 10;

/// Counters of a writer (per reactor; add them up with [`SpoolStats::merge`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// fdatasync calls completed on segments.
    pub fsyncs: u64,
    /// fsync calls on the spool directory (one per new segment).
    pub dir_fsyncs: u64,
    /// Messages committed (acknowledged).
    pub commits: u64,
    /// Messages aborted.
    pub aborts: u64,
    /// Commits that failed (never acknowledged).
    pub failed_commits: u64,
    /// Bytes written to segments.
    pub bytes: u64,
    /// Write operations submitted to segments (one per buffer: a group of small messages'
    /// final frames is one write, however many messages it holds).
    pub writes: u64,
    /// Messages made durable by fdatasync: the sum of all batch sizes.
    pub batch_sum: u64,
    /// The largest batch (messages covered by one fdatasync).
    pub batch_max: u64,
    /// Batch-size histogram, see [`BATCH_BUCKETS`].
    pub batch_hist: [u64; BATCH_BUCKETS],
    /// Segments created.
    pub segments: u64,
    /// Write buffers taken from the heap because the registered pool was empty.
    pub heap_buffers: u64,
    /// Failed segment writes.
    pub write_errors: u64,
    /// Failed fdatasync (or directory fsync) calls.
    pub sync_errors: u64,
}

impl SpoolStats {
    /// Mean messages per fdatasync.
    pub fn mean_batch(&self) -> f64 {
        if self.fsyncs == 0 {
            0.0
        } else {
            self.batch_sum as f64 / self.fsyncs as f64
        }
    }

    /// Adds another reactor's counters.
    pub fn merge(&mut self, o: &Self) {
        self.fsyncs += o.fsyncs;
        self.dir_fsyncs += o.dir_fsyncs;
        self.commits += o.commits;
        self.aborts += o.aborts;
        self.failed_commits += o.failed_commits;
        self.bytes += o.bytes;
        self.writes += o.writes;
        self.batch_sum += o.batch_sum;
        self.batch_max = self.batch_max.max(o.batch_max);
        for (a, b) in self.batch_hist.iter_mut().zip(o.batch_hist.iter()) {
            *a += b;
        }
        self.segments += o.segments;
        self.heap_buffers += o.heap_buffers;
        self.write_errors += o.write_errors;
        self.sync_errors += o.sync_errors;
    }

    /// Records one fdatasync that covered `n` commits.
    pub(crate) fn record_batch(&mut self, n: u64) {
        if n == 0 {
            return;
        }
        self.batch_sum += n;
        self.batch_max = self.batch_max.max(n);
        let bucket = (64 - (n - 1).leading_zeros()) as usize;
        self.batch_hist[bucket.min(BATCH_BUCKETS - 1)] += 1;
    }

    /// Label of histogram bucket `i` (e.g. `"5-8"`).
    pub fn bucket_label(i: usize) -> String {
        match i {
            0 => "1".into(),
            1 => "2".into(),
            _ if i + 1 == BATCH_BUCKETS => format!(">{}", 1u64 << (i - 1)),
            _ => format!("{}-{}", (1u64 << (i - 1)) + 1, 1u64 << i),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_histogram_buckets() {
        let mut s = SpoolStats::default();
        for n in [1, 2, 3, 4, 5, 8, 9, 64, 65, 256, 257, 10_000] {
            s.record_batch(n);
        }
        assert_eq!(s.batch_hist, [1, 1, 2, 2, 1, 0, 1, 1, 1, 2]);
        assert_eq!(s.batch_max, 10_000);
        assert_eq!(SpoolStats::bucket_label(0), "1");
        assert_eq!(SpoolStats::bucket_label(3), "5-8");
        assert_eq!(SpoolStats::bucket_label(8), "129-256");
        assert_eq!(SpoolStats::bucket_label(9), ">256");
    }

    #[test]
    fn error_classification() {
        assert!(matches!(
            SpoolError::from_io(io::Error::from_raw_os_error(libc::ENOSPC)),
            SpoolError::NoSpace
        ));
        assert!(matches!(
            SpoolError::from_io(io::Error::from_raw_os_error(libc::EDQUOT)),
            SpoolError::NoSpace
        ));
        assert!(matches!(
            SpoolError::from_io(io::Error::from_raw_os_error(libc::EIO)),
            SpoolError::Io(_)
        ));
    }

    #[test]
    fn display_keeps_the_operator_texts() {
        assert_eq!(
            SpoolError::NoSpace.to_string(),
            "spool: no space left on device"
        );
        assert_eq!(SpoolError::Closed.to_string(), "spool: spool is closed");
        assert_eq!(SpoolError::Closed.reason().to_string(), "spool is closed");
        assert_eq!(SpoolError::NoSegment.to_string(), "spool: no segment");
        let busy = SpoolError::ReactorInUse {
            lock: PathBuf::from("/s/.lock-3"),
            reactor: 3,
            source: io::Error::from_raw_os_error(libc::EWOULDBLOCK),
        };
        assert!(busy.to_string().starts_with(
            "spool: /s/.lock-3: reactor 3 of this spool is in use by another process ("
        ));
        assert_eq!(busy.io_kind(), Some(io::ErrorKind::WouldBlock));
        assert_eq!(
            SpoolError::ReactorIndex(9999).reason().to_string(),
            format!("reactor index 9999 exceeds {}", id::MAX_REACTOR)
        );
    }
}
