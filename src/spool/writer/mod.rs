//! The io_uring segment writer of one reactor: [`Spool`] and [`MessageWriter`].
//!
//! How a message reaches the disk:
//! 1. [`Spool::begin`] assigns the id and fills the first buffer with the Envelope frame and the
//!    start of a Data frame holding our `Received:` header. Nothing is written yet. The first
//!    buffer is a small one ([`SMALL_BUF_SIZE`](crate::buffers::SMALL_BUF_SIZE)); a message that
//!    outgrows it moves into a write buffer (see `pack`).
//! 2. [`MessageWriter::push`] copies body bytes into the buffer; a full buffer is closed (its
//!    Data frame header gets length and CRC) and queued. Push never waits.
//! 3. [`MessageWriter::flush`] reserves a file range for each queued buffer *synchronously*
//!    (so writes of many connections are in flight at once, at distinct offsets) and writes it
//!    with `write_fixed_at` in a spawned task (so a cancelled caller cannot lose a completion).
//! 4. [`MessageWriter::commit`] appends the Commit frame, writes any full buffers still queued,
//!    and copies the rest (for a 4 KiB message: Envelope + Data + Commit, about 4.4 KiB) into
//!    the segment's open *group buffer* instead of writing it. Then it waits for an fdatasync
//!    that *began* after every byte of the segment up to the end of its Commit frame was written.
//!
//! Group writes: buffered writes to ext4 cannot complete inline in io_uring, so each one is
//! handed to an io-wq worker thread (a wakeup and context switches). The syncer *seals* the
//! open group right before each fdatasync: it reserves the group's range and writes all of it
//! with one `write_fixed_at`, so every commit that arrived during the previous fdatasync costs
//! one shared write. A group without room for the next message's final frames is sealed (and
//! written) at once by that message. A group is reserved only when sealed, after every range
//! its members reserved before, so each message's frames stay in order in the file.
//! [`SyncPolicy::None`] has no syncer: there each commit writes its own frames.
//!
//! Group commit: writes complete out of order, so each segment tracks its *watermark*, the end
//! of the contiguous written prefix. One syncer task per spool runs at most one fdatasync at a
//! time; it starts one when some waiting commit lies below the watermark, and when it finishes,
//! every commit below the watermark it started from is durable. Commits arriving meanwhile ride
//! on the next one. Because an ack needs the whole prefix written, a crash can only lose frames
//! after the first hole, and those belong to unacknowledged messages: recovery cuts there.
//!
//! Failures: a failed write or fdatasync *fails the segment*. Every unacknowledged message with
//! frames in it gets an error (and is reported lost in the log: after a failed fdatasync the
//! page cache cannot be trusted); the next `begin` rolls to a new segment, and once the failed
//! segment is idle it is cut back to its acknowledged prefix. Acknowledged messages lie below
//! that prefix and are not touched.
//!
//! # Files
//! - this file: the [`Spool`] handle (open, begin, close) and segment rolling.
//! - `message`: [`MessageWriter`], one message from `begin` to commit or abort.
//! - `pack`: frame packing into write buffers (pure but for the buffer pool).
//! - `live`: the live segment: reservations, writes, preallocation, failure, finishing.
//! - `progress`: the pure bookkeeping: written watermark, durable offset, waiters, failure.
//! - `syncer`: group commit: the group buffer, waiting commits, the fdatasync task.
//!
//! This module does not read segments back (see `reader`) and does not recover them (see
//! `segment::recover`, which [`Spool::open`] calls).

use std::cell::{Cell, RefCell};
use std::fmt;
use std::fs::{File as StdFile, OpenOptions};
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;

use super::frame::{self, unix_us, EnvelopeRecord, Kind, SegmentRecord};
use super::id::{IdGen, MAX_REACTOR};
use super::segment::{self, SegmentName};
use super::{SpoolConfig, SpoolError, SpoolStats, SyncPolicy, Timings};
use crate::buffers::BufferPool;
use crate::sys::{self, LockError};

mod live;
mod message;
mod pack;
mod progress;
mod syncer;
#[cfg(test)]
mod tests;

use live::Segment;
pub use message::MessageWriter;

/// A reactor's spool writer (cheap to clone: a shared handle; not `Send`).
///
/// Use it from the tasks of the tokio-uring runtime it was opened on; many connection tasks may
/// write messages concurrently.
#[derive(Clone)]
pub struct Spool {
    sh: Rc<Shared>,
}

/// What the handle, the message writers, the write tasks and the syncer share.
struct Shared {
    /// The settings the spool was opened with.
    config: SpoolConfig,
    /// Where write buffers come from.
    buffers: BufferPool,
    /// The spool directory, for fsync after creating a segment.
    dir: tokio_uring::fs::File,
    /// The current segment, sequence numbers, ids, whether closed.
    state: RefCell<State>,
    /// Counters.
    stats: RefCell<SpoolStats>,
    /// Where fdatasync and group-write durations go, if anywhere.
    timings: RefCell<Option<Arc<dyn Timings>>>,
    /// Segments with commits waiting for fdatasync.
    sync_queue: RefCell<Vec<Rc<Segment>>>,
    /// Whether the syncer task runs.
    syncer_running: Cell<bool>,
    /// Wakes the syncer: a waiter arrived or a watermark moved.
    work: Notify,
    /// Exclusive lock on this reactor's segments (released by `close`).
    lock: RefCell<Option<StdFile>>,
}

/// The spool's mutable state outside the segments.
struct State {
    /// The segment new messages go to.
    current: Option<Rc<Segment>>,
    /// Sequence number of the next segment.
    next_seq: u64,
    /// Message ids.
    ids: IdGen,
    /// Set by `close`: `begin` fails from then on.
    closed: bool,
}

/// Why a segment (and every unacknowledged message in it) or a message failed: a cheap,
/// cloneable stand-in for [`SpoolError`] (which holds a non-`Clone` `io::Error`), shared by
/// all the messages a failure hits.
#[derive(Debug, Clone)]
enum Failure {
    /// An I/O error with an OS error number (a write, fdatasync, segment creation, no space).
    Os(i32),
    /// An I/O error without one (a short write), by its text.
    Io(String),
    /// The spool is closed.
    Closed,
    /// The message has no segment.
    NoSegment,
    /// A write task ended without a result (how, as text).
    WriteTask(String),
}

impl Failure {
    fn from_io(e: &io::Error) -> Self {
        match e.raw_os_error() {
            Some(n) => Self::Os(n),
            None => Self::Io(e.to_string()),
        }
    }

    fn is_no_space(&self) -> bool {
        matches!(self, Self::Os(libc::ENOSPC) | Self::Os(libc::EDQUOT))
    }

    fn to_error(&self) -> SpoolError {
        match self {
            Self::Os(n) => SpoolError::from_io(io::Error::from_raw_os_error(*n)),
            Self::Io(text) => SpoolError::Io(io::Error::other(text.clone())),
            Self::Closed => SpoolError::Closed,
            Self::NoSegment => SpoolError::NoSegment,
            Self::WriteTask(text) => SpoolError::WriteTask(text.clone()),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Os(n) => io::Error::from_raw_os_error(*n).fmt(f),
            Self::Io(text) => f.write_str(text),
            _ => self.to_error().reason().fmt(f),
        }
    }
}

impl Spool {
    /// Opens this reactor's writer: creates the directory if needed, takes the reactor's lock,
    /// recovers its segments (cuts torn tails, seals them; see `segment::recover`) and starts a
    /// new segment. Call it inside the reactor's tokio-uring runtime.
    ///
    /// # Errors
    /// The directory cannot be created or read, another process holds this reactor's lock
    /// ([`SpoolError::ReactorInUse`]), recovery or segment creation failed, or `reactor`
    /// exceeds [`MAX_REACTOR`] ([`SpoolError::ReactorIndex`]).
    pub async fn open(config: SpoolConfig, buffers: BufferPool) -> Result<Self, SpoolError> {
        if config.reactor > MAX_REACTOR {
            return Err(SpoolError::ReactorIndex(config.reactor));
        }
        segment::ensure_dir(&config.dir)?;
        let lock = sys::lock_reactor(&config.dir, config.reactor).map_err(|e| match e {
            LockError::Open(e) => SpoolError::from_io(e),
            LockError::Held { path, source } => SpoolError::ReactorInUse {
                lock: path,
                reactor: config.reactor,
                source,
            },
        })?;
        let recovered = segment::recover(&config.dir, config.reactor, now_ms())?;
        for (path, cut) in &recovered.truncated {
            tracing::warn!(segment = %path.display(), bytes = cut, "recovery cut a torn tail (unacknowledged writes)");
        }
        for (path, cut) in &recovered.zero_tails {
            tracing::debug!(segment = %path.display(), bytes = cut, "recovery cut the prepared zeros after the last frame");
        }
        for path in &recovered.removed {
            tracing::warn!(segment = %path.display(), "recovery removed a segment with no whole frame");
        }
        let dir = tokio_uring::fs::File::from_std(StdFile::open(&config.dir)?);
        let sh = Rc::new(Shared {
            buffers,
            dir,
            state: RefCell::new(State {
                current: None,
                next_seq: recovered.next_seq.max(1),
                ids: IdGen::new(config.reactor, recovered.id_floor),
                closed: false,
            }),
            config,
            stats: RefCell::new(SpoolStats::default()),
            timings: RefCell::new(None),
            sync_queue: RefCell::new(Vec::new()),
            syncer_running: Cell::new(false),
            work: Notify::new(),
            lock: RefCell::new(Some(lock)),
        });
        let seg = {
            let mut st = sh.state.borrow_mut();
            Shared::roll(&sh, &mut st).map_err(|f| f.to_error())?
        };
        // The first segment: make its directory entry durable before anything else.
        if sh.config.sync == SyncPolicy::Group {
            sh.dir.sync_all().await?;
            sh.stats.borrow_mut().dir_fsyncs += 1;
            seg.dir_synced.set(true);
        }
        Ok(Self { sh })
    }

    /// Starts a message: assigns its id and queues the Envelope frame (`envelope` as given)
    /// and our `Received:` header, built from it (the first bytes of the stored message).
    /// Never waits and never fails: if no segment can be had (disk full, spool closed), the
    /// writer is born failed, swallows pushes, and its `commit` returns the error.
    pub fn begin(&self, envelope: &EnvelopeRecord) -> MessageWriter {
        let sh = &self.sh;
        let (seg, id) = {
            let mut st = sh.state.borrow_mut();
            let seg = Shared::segment_for_message(sh, &mut st);
            (seg, st.ids.next(now_ms()))
        };
        MessageWriter::start(Rc::clone(sh), seg, id, envelope)
    }

    /// Reports every later fdatasync's and group write's duration to `timings`.
    pub fn set_timings(&self, timings: Arc<dyn Timings>) {
        *self.sh.timings.borrow_mut() = Some(timings);
    }

    /// Counters so far.
    pub fn stats(&self) -> SpoolStats {
        self.sh.stats.borrow().clone()
    }

    /// The configuration in use.
    pub fn config(&self) -> &SpoolConfig {
        &self.sh.config
    }

    /// Stops accepting messages (later `begin`s fail), waits for writes in flight, seals and
    /// syncs the current segment if no message is still open in it, and releases the reactor's
    /// lock. Messages still open may finish; a segment left unsealed is recovered at next start.
    ///
    /// # Errors
    /// Sealing or syncing the segment failed.
    pub async fn close(&self) -> Result<(), SpoolError> {
        let seg = {
            let mut st = self.sh.state.borrow_mut();
            st.closed = true;
            st.current.take()
        };
        let mut result = Ok(());
        if let Some(seg) = seg {
            seg.current.set(false);
            // Frames collected for the syncer go out now (their commits still wait for it).
            Shared::seal_group(&self.sh, &seg);
            loop {
                let idle = seg.idle.notified();
                tokio::pin!(idle);
                idle.as_mut().enable();
                if seg.inflight.get() == 0 {
                    break;
                }
                idle.await;
            }
            if let Some(seal) = Shared::maybe_finish(&self.sh, &seg) {
                if let Ok(Err(f)) = seal.await {
                    result = Err(f.to_error());
                }
                if result.is_ok() && self.sh.config.sync == SyncPolicy::Group {
                    if let Err(e) = seg.file.sync_data().await {
                        result = Err(SpoolError::from_io(e));
                    }
                }
            }
        }
        self.sh.lock.borrow_mut().take();
        result
    }
}

impl Shared {
    /// The current segment, rolling to a new one when it is full or failed.
    fn segment_for_message(this: &Rc<Self>, st: &mut State) -> Result<Rc<Segment>, Failure> {
        if st.closed {
            return Err(Failure::Closed);
        }
        if let Some(cur) = &st.current {
            if !cur.progress.borrow().failed() && cur.reserved.get() < this.config.segment_size {
                return Ok(Rc::clone(cur));
            }
        }
        Self::roll(this, st)
    }

    /// Creates the next segment and makes it current. The file is created synchronously (an
    /// `open(2)` with `O_CREAT`, once per segment); its header frame is written through the
    /// ring. Its directory entry is fsynced by the syncer before the first ack in it.
    fn roll(this: &Rc<Self>, st: &mut State) -> Result<Rc<Segment>, Failure> {
        // After running out of space, do not create (and abandon) a new file per message
        // while the filesystem is still full.
        let out_of_space = st
            .current
            .as_ref()
            .and_then(|c| c.failure())
            .is_some_and(|f| f.is_no_space());
        if out_of_space {
            let need = 2 * this.buffers.config().write_buf_size as u64;
            if sys::free_bytes(&this.dir).is_some_and(|free| free < need) {
                return Err(Failure::Os(libc::ENOSPC));
            }
        }
        let name = SegmentName {
            reactor: this.config.reactor,
            seq: st.next_seq,
        };
        st.next_seq += 1;
        let path = this.config.dir.join(name.file_name());
        let std = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| {
                tracing::warn!(segment = %path.display(), error = %e, "cannot create spool segment");
                Failure::from_io(&e)
            })?;
        let dup = std.try_clone().map_err(|e| Failure::from_io(&e))?;
        let seg = Rc::new(Segment::new(
            name,
            path,
            tokio_uring::fs::File::from_std(dup),
            std,
            &this.config,
            st.ids.last().0,
        ));
        let rec = SegmentRecord {
            version: frame::FORMAT_VERSION,
            reactor: name.reactor,
            seq: name.seq,
            created_us: unix_us(SystemTime::now()),
            id_floor: st.ids.last().0,
        };
        let (buf, len) = pack::frame_buf(Kind::Segment, 0, &rec.encode());
        // Failure is recorded in the segment; the handle is not needed.
        drop(Self::submit(this, &seg, buf, len));
        this.stats.borrow_mut().segments += 1;
        if let Some(old) = st.current.replace(Rc::clone(&seg)) {
            old.current.set(false);
            drop(Self::maybe_finish(this, &old));
        }
        Ok(seg)
    }

    /// Reports an fdatasync's duration.
    fn time_fsync(&self, took: Duration) {
        if let Some(t) = &*self.timings.borrow() {
            t.fsync(took);
        }
    }

    /// Reports a group write's duration.
    fn time_group_write(&self, took: Duration) {
        if let Some(t) = &*self.timings.borrow() {
            t.group_write(took);
        }
    }

    /// Where this spool's write buffers come from.
    fn bufs(&self) -> pack::Buffers<'_> {
        pack::Buffers {
            pool: &self.buffers,
            stats: &self.stats,
        }
    }
}

fn now_ms() -> u64 {
    unix_us(SystemTime::now()) / 1000
}
