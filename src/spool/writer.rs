//! The io_uring segment writer of one reactor: [`Spool`] and [`MessageWriter`].
//!
//! How a message reaches the disk:
//! 1. [`Spool::begin`] assigns the id and fills the first write buffer with the Envelope frame
//!    and the start of a Data frame holding our `Received:` header. Nothing is written yet.
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
//! This module does not read segments back (see `reader`) and does not recover them (see
//! `segment::recover`, which [`Spool::open`] calls).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fs::{File as StdFile, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::frame::{
    self, CommitRecord, EnvelopeRecord, Kind, SealRecord, SegmentRecord, HEADER_LEN,
};
use super::id::{IdGen, MessageId, ID_LEN, MAX_REACTOR};
use super::segment::{self, SegmentName};
use super::{trace, Arrival, SpoolConfig, SpoolError, SpoolStats, SyncPolicy};
use crate::buffers::{Buf, BufferPool};
use crate::smtp::Envelope;

/// How long the syncer waits for writes already in flight before it starts an fdatasync.
const DRAIN_MAX: std::time::Duration = std::time::Duration::from_millis(1);

/// A reactor's spool writer (cheap to clone: a shared handle; not `Send`).
///
/// Use it from the tasks of the tokio-uring runtime it was opened on; many connection tasks may
/// write messages concurrently.
#[derive(Clone)]
pub struct Spool {
    sh: Rc<Shared>,
}

/// One message being written. Dropping it without [`MessageWriter::commit`] leaves an
/// incomplete message on disk, which readers skip.
pub struct MessageWriter {
    sh: Rc<Shared>,
    /// The segment this message is pinned to (all its frames go there); `None` if `begin`
    /// could not get one.
    seg: Option<Rc<Segment>>,
    id: MessageId,
    id_text: [u8; ID_LEN],
    /// The buffer being filled, and how much of it is filled.
    cur: Option<Buf>,
    cur_len: usize,
    /// Offset in `cur` of the header of the open Data frame.
    data_hdr: Option<usize>,
    /// Full buffers waiting for `flush`, with their filled lengths.
    queued: Vec<(Buf, usize)>,
    size: u64,
    data_crc: u32,
    data_frames: u32,
    /// Sticky failure: pushes are dropped and commit fails.
    error: Option<Failure>,
    /// Whether any frame of this message reached the file.
    wrote: bool,
}

struct Shared {
    config: SpoolConfig,
    buffers: BufferPool,
    /// The spool directory, for fsync after creating a segment.
    dir: tokio_uring::fs::File,
    state: RefCell<State>,
    stats: RefCell<SpoolStats>,
    /// Segments with commits waiting for fdatasync.
    sync_queue: RefCell<Vec<Rc<Segment>>>,
    syncer_running: Cell<bool>,
    /// Wakes the syncer: a waiter arrived or a watermark moved.
    work: Notify,
    /// Exclusive lock on this reactor's segments (released by `close`).
    lock: RefCell<Option<StdFile>>,
}

struct State {
    current: Option<Rc<Segment>>,
    next_seq: u64,
    ids: IdGen,
    closed: bool,
}

/// Why a segment (and every unacknowledged message in it) failed.
#[derive(Debug, Clone)]
struct Failure {
    errno: Option<i32>,
    text: String,
}

impl Failure {
    fn from_io(e: &io::Error) -> Self {
        Self {
            errno: e.raw_os_error(),
            text: e.to_string(),
        }
    }
    fn other(text: &str) -> Self {
        Self {
            errno: None,
            text: text.to_string(),
        }
    }
    fn is_no_space(&self) -> bool {
        matches!(self.errno, Some(libc::ENOSPC) | Some(libc::EDQUOT))
    }
    fn to_error(&self) -> SpoolError {
        match self.errno {
            Some(n) => SpoolError::from_io(io::Error::from_raw_os_error(n)),
            None => SpoolError::Io(io::Error::other(self.text.clone())),
        }
    }
}

/// A spawned segment write.
type WriteTask = JoinHandle<Result<(), Failure>>;

/// Submitted writes: the largest end offset and the tasks, or the error that stopped
/// submission with the tasks submitted before it.
type Submitted = Result<(u64, Vec<WriteTask>), (Failure, Vec<WriteTask>)>;

struct Segment {
    name: SegmentName,
    path: PathBuf,
    file: tokio_uring::fs::File,
    /// The same file for synchronous metadata calls (truncation).
    std: StdFile,
    /// Next free offset: ranges are reserved synchronously.
    reserved: Cell<u64>,
    /// Watermark: every byte below it is written.
    written: Cell<u64>,
    /// Completed writes above the watermark: start -> end.
    done: RefCell<BTreeMap<u64, u64>>,
    inflight: Cell<u32>,
    /// Every byte below this is durable (fdatasync completed after it was written).
    synced: Cell<u64>,
    dir_synced: Cell<bool>,
    failure: RefCell<Option<Failure>>,
    /// Messages begun in this segment and not yet finished.
    open: Cell<u32>,
    current: Cell<bool>,
    finished: Cell<bool>,
    max_id: Cell<u64>,
    /// Commit targets (end offsets) waiting for fdatasync -> number of waiters.
    waiters: RefCell<BTreeMap<u64, u32>>,
    /// Woken after each fdatasync of this segment and on failure.
    synced_notify: Notify,
    /// Woken when `inflight` drops to zero.
    idle: Notify,
    prealloc_end: Cell<u64>,
    prealloc_on: Cell<bool>,
    /// The open group buffer: the final frames of committing messages, collected so that one
    /// write covers all of them (see [`Shared::join_group`]). Not yet reserved in the file.
    group: RefCell<Option<Group>>,
}

/// Final frames of several committing messages, copied back to back into one write buffer.
/// Its file range is reserved only when it is sealed, so the ranges of everything its members
/// submitted earlier (a large message's Data frames) lie before it.
struct Group {
    buf: Buf,
    len: usize,
    ticket: Rc<GroupTicket>,
}

/// What the members of a [`Group`] share.
struct GroupTicket {
    /// The end offset of the group's range, once sealed (reserved and submitted).
    end: Cell<Option<u64>>,
    /// Members still waiting; registered as waiters at the end offset when sealed.
    members: Cell<u32>,
}

/// A commit whose final frames ride in a [`Group`]. Dropping it unregisters the commit (as
/// [`WaiterGuard`] does for a commit with its own write).
struct GroupMember {
    seg: Rc<Segment>,
    ticket: Rc<GroupTicket>,
}

impl Segment {
    fn failure(&self) -> Option<Failure> {
        self.failure.borrow().clone()
    }

    /// Marks `start..end` written and advances the watermark over contiguous ranges.
    fn complete(&self, start: u64, end: u64) {
        if start != self.written.get() {
            self.done.borrow_mut().insert(start, end);
            return;
        }
        let mut wm = end;
        let mut done = self.done.borrow_mut();
        while let Some(next) = done.remove(&wm) {
            wm = next;
        }
        self.written.set(wm);
    }
}

impl Spool {
    /// Opens this reactor's writer: creates the directory if needed, takes the reactor's lock,
    /// recovers its segments (cuts torn tails, seals them; see `segment::recover`) and starts a
    /// new segment. Call it inside the reactor's tokio-uring runtime.
    ///
    /// # Errors
    /// The directory cannot be created or read, another process holds this reactor's lock,
    /// recovery or segment creation failed, or `reactor` exceeds [`MAX_REACTOR`].
    pub async fn open(config: SpoolConfig, buffers: BufferPool) -> Result<Self, SpoolError> {
        if config.reactor > MAX_REACTOR {
            return Err(SpoolError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("reactor index {} exceeds {MAX_REACTOR}", config.reactor),
            )));
        }
        segment::ensure_dir(&config.dir)?;
        let lock = lock_reactor(&config)?;
        let recovered = segment::recover(&config.dir, config.reactor, now_ms())?;
        for (path, cut) in &recovered.truncated {
            tracing::warn!(segment = %path.display(), bytes = cut, "recovery cut a torn tail (unacknowledged writes)");
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

    /// Starts a message: assigns its id and queues the Envelope frame and our `Received:`
    /// header (the first bytes of the stored message). Never waits and never fails: if no
    /// segment can be had (disk full, spool closed), the writer is born failed, swallows pushes,
    /// and its `commit` returns the error.
    pub fn begin(&self, envelope: &Envelope, arrival: &Arrival) -> MessageWriter {
        let sh = &self.sh;
        let (seg, id) = {
            let mut st = sh.state.borrow_mut();
            let seg = Shared::segment_for_message(sh, &mut st);
            (seg, st.ids.next(now_ms()))
        };
        let mut w = MessageWriter {
            sh: Rc::clone(sh),
            seg: None,
            id,
            id_text: id.encode(),
            cur: None,
            cur_len: 0,
            data_hdr: None,
            queued: Vec::new(),
            size: 0,
            data_crc: 0,
            data_frames: 0,
            error: None,
            wrote: false,
        };
        match seg {
            Ok(seg) => {
                seg.open.set(seg.open.get() + 1);
                seg.max_id.set(seg.max_id.get().max(id.0));
                w.seg = Some(seg);
            }
            Err(f) => {
                w.error = Some(f);
                return w;
            }
        }
        let rec = EnvelopeRecord {
            client_ip: arrival.client_ip,
            received_us: unix_us(arrival.received_at),
            helo: envelope.helo.clone(),
            esmtp: envelope.esmtp,
            mail_from: envelope.mail_from.clone(),
            declared_size: envelope.declared_size,
            body_8bitmime: envelope.body_8bitmime,
            smtputf8: envelope.smtputf8,
            rcpts: envelope.rcpts.clone(),
        };
        let mut payload = Vec::with_capacity(rec.encoded_len());
        rec.encode(&mut payload);
        w.append_frame(Kind::Envelope, &payload);
        let mut received = Vec::with_capacity(256);
        trace::received_header(
            &mut received,
            envelope,
            arrival.client_ip,
            &sh.config.hostname,
            w.id(),
            arrival.received_at,
        );
        w.push(&received);
        w
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
            return Err(Failure::other("spool is closed"));
        }
        if let Some(cur) = &st.current {
            if cur.failure.borrow().is_none() && cur.reserved.get() < this.config.segment_size {
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
            if free_bytes(&this.dir).is_some_and(|free| free < need) {
                return Err(Failure {
                    errno: Some(libc::ENOSPC),
                    text: "no space left on device".into(),
                });
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
        let seg = Rc::new(Segment {
            name,
            path,
            file: tokio_uring::fs::File::from_std(dup),
            std,
            reserved: Cell::new(0),
            written: Cell::new(0),
            done: RefCell::new(BTreeMap::new()),
            inflight: Cell::new(0),
            synced: Cell::new(0),
            dir_synced: Cell::new(this.config.sync == SyncPolicy::None),
            failure: RefCell::new(None),
            open: Cell::new(0),
            current: Cell::new(true),
            finished: Cell::new(false),
            max_id: Cell::new(st.ids.last().0),
            waiters: RefCell::new(BTreeMap::new()),
            synced_notify: Notify::new(),
            idle: Notify::new(),
            prealloc_end: Cell::new(0),
            prealloc_on: Cell::new(this.config.preallocate > 0),
            group: RefCell::new(None),
        });
        let rec = SegmentRecord {
            version: frame::FORMAT_VERSION,
            reactor: name.reactor,
            seq: name.seq,
            created_us: unix_us(SystemTime::now()),
            id_floor: st.ids.last().0,
        };
        let mut bytes = Vec::new();
        frame::encode_frame(Kind::Segment, 0, &rec.encode(), &mut bytes);
        let mut buf = Buf::heap(bytes.len());
        buf.put_at(0, &bytes);
        // Failure is recorded in the segment; the handle is not needed.
        drop(Self::submit(this, &seg, buf, bytes.len()));
        this.stats.borrow_mut().segments += 1;
        if let Some(old) = st.current.replace(Rc::clone(&seg)) {
            old.current.set(false);
            drop(Self::maybe_finish(this, &old));
        }
        Ok(seg)
    }

    /// Reserves `len` bytes at the segment's end and writes `buf[..len]` there in a spawned
    /// task. Returns the end offset of the range and the task's handle.
    fn submit(
        this: &Rc<Self>,
        seg: &Rc<Segment>,
        buf: Buf,
        len: usize,
    ) -> Result<(u64, WriteTask), Failure> {
        if let Some(f) = seg.failure() {
            return Err(f);
        }
        let off = seg.reserved.get();
        let end = off + len as u64;
        seg.reserved.set(end);
        seg.inflight.set(seg.inflight.get() + 1);
        this.stats.borrow_mut().writes += 1;
        Self::preallocate(this, seg);
        let sh = Rc::clone(this);
        let seg2 = Rc::clone(seg);
        let handle = tokio_uring::spawn(async move {
            let (res, buf) = buf.write_all_at(&seg2.file, len, off).await;
            drop(buf);
            seg2.inflight.set(seg2.inflight.get() - 1);
            let out = match res {
                Ok(()) => {
                    seg2.complete(off, end);
                    sh.stats.borrow_mut().bytes += len as u64;
                    if sh.syncer_running.get() {
                        sh.work.notify_one();
                    }
                    Ok(())
                }
                Err(e) => {
                    sh.stats.borrow_mut().write_errors += 1;
                    let f = Failure::from_io(&e);
                    Self::fail(&sh, &seg2, &f, "write");
                    Err(f)
                }
            };
            if seg2.inflight.get() == 0 {
                seg2.idle.notify_waiters();
            }
            drop(Self::maybe_finish(&sh, &seg2));
            out
        });
        Ok((end, handle))
    }

    /// Keeps `fallocate` ahead of the reserved end; turns itself off on the first error
    /// (unsupported filesystem, or no space: then the writes report it).
    fn preallocate(this: &Rc<Self>, seg: &Rc<Segment>) {
        let step = this.config.preallocate;
        if !seg.prealloc_on.get() || seg.reserved.get() + step / 2 < seg.prealloc_end.get() {
            return;
        }
        let start = seg.prealloc_end.get();
        seg.prealloc_end.set(start + step);
        let seg = Rc::clone(seg);
        drop(tokio_uring::spawn(async move {
            if let Err(e) = seg
                .file
                .fallocate(start, step, libc::FALLOC_FL_KEEP_SIZE)
                .await
            {
                tracing::debug!(segment = %seg.path.display(), error = %e, "fallocate failed; plain appends from now on");
                seg.prealloc_on.set(false);
            }
        }));
    }

    /// Fails a segment: every unacknowledged message with frames in it gets an error.
    fn fail(this: &Rc<Self>, seg: &Rc<Segment>, f: &Failure, what: &str) {
        if seg.failure.borrow().is_some() {
            return;
        }
        *seg.failure.borrow_mut() = Some(f.clone());
        // Its members get the error below; their frames are never written.
        seg.group.borrow_mut().take();
        tracing::warn!(
            segment = %seg.path.display(),
            error = %f.text,
            unacknowledged = seg.open.get(),
            "spool {what} failed: the segment is abandoned and its unacknowledged messages are \
             lost (their clients get a 4xx reply); acknowledged messages are not affected"
        );
        seg.synced_notify.notify_waiters();
        if this.syncer_running.get() {
            this.work.notify_one();
        }
    }

    /// Finishes a segment that is no longer current once it is idle: a failed one is cut back
    /// to its acknowledged prefix; a healthy one gets its Seal frame (returns that write).
    fn maybe_finish(this: &Rc<Self>, seg: &Rc<Segment>) -> Option<WriteTask> {
        if seg.current.get()
            || seg.finished.get()
            || seg.inflight.get() > 0
            || seg.group.borrow().is_some()
        {
            return None;
        }
        if seg.failure.borrow().is_some() {
            seg.finished.set(true);
            let keep = match this.config.sync {
                SyncPolicy::Group => seg.synced.get(),
                SyncPolicy::None => seg.written.get(),
            };
            let cut = if keep == 0 {
                // Nothing in it was ever acknowledged: remove the file.
                std::fs::remove_file(&seg.path)
            } else {
                seg.std.set_len(keep)
            };
            if let Err(e) = cut {
                tracing::warn!(segment = %seg.path.display(), error = %e, "cannot cut failed segment; recovery will");
            }
            return None;
        }
        if seg.open.get() > 0 {
            return None;
        }
        seg.finished.set(true);
        let mut bytes = Vec::new();
        let rec = SealRecord {
            seq: seg.name.seq,
            max_id: seg.max_id.get(),
        };
        frame::encode_frame(Kind::Seal, 0, &rec.encode(), &mut bytes);
        let mut buf = Buf::heap(bytes.len());
        buf.put_at(0, &bytes);
        let end = seg.reserved.get() + bytes.len() as u64;
        if seg.prealloc_end.get() > end {
            // Give back the preallocated space beyond the end (best effort).
            let seg2 = Rc::clone(seg);
            let len = seg.prealloc_end.get() - end;
            drop(tokio_uring::spawn(async move {
                let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
                let _ = seg2.file.fallocate(end, len, mode).await;
            }));
        }
        Self::submit(this, seg, buf, bytes.len())
            .ok()
            .map(|(_, h)| h)
    }

    /// Registers a commit whose last frame ends at `target` (called when its writes are
    /// submitted, so the syncer knows which writes it may wait for) and makes sure the syncer
    /// runs. The returned guard unregisters it.
    fn register_waiter(this: &Rc<Self>, seg: &Rc<Segment>, target: u64) -> WaiterGuard {
        *seg.waiters.borrow_mut().entry(target).or_insert(0) += 1;
        Self::wake_syncer(this, seg);
        WaiterGuard {
            seg: Rc::clone(seg),
            target,
        }
    }

    /// Queues `seg` for the syncer and makes sure the syncer runs.
    fn wake_syncer(this: &Rc<Self>, seg: &Rc<Segment>) {
        {
            let mut q = this.sync_queue.borrow_mut();
            if !q.iter().any(|s| Rc::ptr_eq(s, seg)) {
                q.push(Rc::clone(seg));
            }
        }
        if this.syncer_running.get() {
            this.work.notify_one();
        } else {
            this.syncer_running.set(true);
            drop(tokio_uring::spawn(Self::run_syncer(Rc::clone(this))));
        }
    }

    /// Copies a committing message's final frames (`tail`, at most one write buffer) into the
    /// segment's open group, starting one if needed; a group without room for them is sealed
    /// first. The syncer seals the open group right before its next fdatasync, so the frames of
    /// every commit that arrived meanwhile reach the file in one write. Returns `None` if `tail`
    /// is larger than a write buffer or the segment has failed (the caller then writes `tail`
    /// itself, or gets the segment's error).
    fn join_group(this: &Rc<Self>, seg: &Rc<Segment>, tail: &[u8]) -> Option<GroupMember> {
        let size = this.buffers.config().write_buf_size;
        if tail.len() > size || seg.failure.borrow().is_some() {
            return None;
        }
        let full = seg
            .group
            .borrow()
            .as_ref()
            .is_some_and(|g| g.buf.capacity() - g.len < tail.len());
        if full {
            Self::seal_group(this, seg);
        }
        let ticket = {
            let mut slot = seg.group.borrow_mut();
            let g = slot.get_or_insert_with(|| Group {
                buf: this.buffers.write_buf().unwrap_or_else(|| {
                    this.stats.borrow_mut().heap_buffers += 1;
                    Buf::heap(size)
                }),
                len: 0,
                ticket: Rc::new(GroupTicket {
                    end: Cell::new(None),
                    members: Cell::new(0),
                }),
            });
            let n = g.buf.put_at(g.len, tail);
            debug_assert_eq!(n, tail.len());
            g.len += n;
            g.ticket.members.set(g.ticket.members.get() + 1);
            Rc::clone(&g.ticket)
        };
        Self::wake_syncer(this, seg);
        Some(GroupMember {
            seg: Rc::clone(seg),
            ticket,
        })
    }

    /// Reserves the open group's range and submits its one write; its members become waiters
    /// at the group's end. If the segment has failed, the group is dropped (its members see
    /// the failure).
    fn seal_group(this: &Rc<Self>, seg: &Rc<Segment>) {
        let Some(g) = seg.group.borrow_mut().take() else {
            return;
        };
        if let Ok((end, handle)) = Self::submit(this, seg, g.buf, g.len) {
            // The write task records its own failure in the segment.
            drop(handle);
            g.ticket.end.set(Some(end));
            let members = g.ticket.members.get();
            if members > 0 {
                *seg.waiters.borrow_mut().entry(end).or_insert(0) += members;
            }
        }
    }

    /// Waits until `seg` is durable up to `target` (registered with `register_waiter`).
    async fn wait_synced(seg: &Segment, target: u64) -> Result<(), Failure> {
        loop {
            let notified = seg.synced_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(f) = seg.failure() {
                return Err(f);
            }
            if seg.synced.get() >= target {
                return Ok(());
            }
            notified.await;
        }
    }

    /// The syncer: at most one fdatasync in flight; exits when no commit is waiting.
    async fn run_syncer(this: Rc<Self>) {
        loop {
            // Let write completions that arrived with ours be processed first, so the next
            // fdatasync covers as many commits as possible.
            tokio::task::yield_now().await;
            let queue: Vec<Rc<Segment>> = this.sync_queue.borrow().clone();
            let mut progressed = false;
            for seg in queue {
                // Everything that joined the open group since the last fdatasync: one write.
                Self::seal_group(&this, &seg);
                if seg.failure.borrow().is_some() || seg.waiters.borrow().is_empty() {
                    this.sync_queue
                        .borrow_mut()
                        .retain(|s| !Rc::ptr_eq(s, &seg));
                    continue;
                }
                let synced = seg.synced.get();
                let wm = seg.written.get();
                if wm <= synced {
                    continue;
                }
                let batch: u64 = seg
                    .waiters
                    .borrow()
                    .range(synced + 1..=wm)
                    .map(|(_, n)| u64::from(*n))
                    .sum();
                if batch == 0 {
                    continue;
                }
                progressed = true;
                // Other commits whose writes are in flight are about to land: let them finish
                // (briefly) so this fdatasync covers them too.
                let drain_to = seg.waiters.borrow().last_key_value().map_or(0, |(t, _)| *t);
                if seg.written.get() < drain_to {
                    let deadline = tokio::time::Instant::now() + DRAIN_MAX;
                    while seg.written.get() < drain_to && seg.failure.borrow().is_none() {
                        let woken = tokio::time::timeout_at(deadline, this.work.notified()).await;
                        if woken.is_err() {
                            break;
                        }
                    }
                }
                let wm = seg.written.get();
                let batch: u64 = seg
                    .waiters
                    .borrow()
                    .range(synced + 1..=wm)
                    .map(|(_, n)| u64::from(*n))
                    .sum();
                if !seg.dir_synced.get() {
                    let r = this.dir.sync_all().await;
                    this.stats.borrow_mut().dir_fsyncs += 1;
                    if let Err(e) = r {
                        this.stats.borrow_mut().sync_errors += 1;
                        Self::fail(&this, &seg, &Failure::from_io(&e), "directory fsync");
                        continue;
                    }
                    seg.dir_synced.set(true);
                }
                let r = seg.file.sync_data().await;
                let mut stats = this.stats.borrow_mut();
                stats.fsyncs += 1;
                match r {
                    Ok(()) => {
                        stats.record_batch(batch);
                        drop(stats);
                        seg.synced.set(seg.synced.get().max(wm));
                        seg.synced_notify.notify_waiters();
                    }
                    Err(e) => {
                        stats.sync_errors += 1;
                        drop(stats);
                        Self::fail(&this, &seg, &Failure::from_io(&e), "fdatasync");
                    }
                }
            }
            if !progressed {
                if this.sync_queue.borrow().is_empty() {
                    this.syncer_running.set(false);
                    return;
                }
                this.work.notified().await;
            }
        }
    }
}

/// Removes a commit's target from its segment when the waiting commit ends (or is dropped).
struct WaiterGuard {
    seg: Rc<Segment>,
    target: u64,
}

impl GroupMember {
    /// Waits until the group is sealed and durable (an fdatasync that began after its write
    /// completed, and after everything before it in the segment was written, has completed).
    async fn wait_synced(&self) -> Result<(), Failure> {
        loop {
            let notified = self.seg.synced_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(f) = self.seg.failure() {
                return Err(f);
            }
            if let Some(end) = self.ticket.end.get() {
                if self.seg.synced.get() >= end {
                    return Ok(());
                }
            }
            notified.await;
        }
    }
}

impl Drop for GroupMember {
    fn drop(&mut self) {
        match self.ticket.end.get() {
            Some(end) => {
                let mut w = self.seg.waiters.borrow_mut();
                if let Some(n) = w.get_mut(&end) {
                    *n -= 1;
                    if *n == 0 {
                        w.remove(&end);
                    }
                }
            }
            None => self
                .ticket
                .members
                .set(self.ticket.members.get().saturating_sub(1)),
        }
    }
}

impl Drop for WaiterGuard {
    fn drop(&mut self) {
        let mut w = self.seg.waiters.borrow_mut();
        if let Some(n) = w.get_mut(&self.target) {
            *n -= 1;
            if *n == 0 {
                w.remove(&self.target);
            }
        }
    }
}

impl MessageWriter {
    /// The printable message id (13 characters, see [`super::id`]).
    pub fn id(&self) -> &str {
        // Always ASCII from the base32 alphabet; an empty string would only show a bug.
        std::str::from_utf8(&self.id_text).unwrap_or("")
    }

    /// Bytes of this message held in memory (the buffer being filled and full ones waiting for
    /// `flush`).
    pub fn buffered(&self) -> usize {
        self.cur_len + self.queued.iter().map(|(_, n)| n).sum::<usize>()
    }

    /// Copies body bytes into write buffers; never waits. A full buffer is queued for the next
    /// [`MessageWriter::flush`]; when the registered pool is empty, a heap buffer is used. Call
    /// `flush` after each push (at least every few buffers) to keep memory bounded. After a
    /// failure, bytes are dropped (the commit will fail).
    pub fn push(&mut self, mut bytes: &[u8]) {
        if self.error.is_some() {
            return;
        }
        while !bytes.is_empty() {
            if self.data_hdr.is_none() {
                if self.room() < HEADER_LEN + 1 {
                    self.queue_cur();
                }
                self.ensure_buf(0);
                let at = self.cur_len;
                self.put(&[0u8; HEADER_LEN]);
                self.data_hdr = Some(at);
            }
            let n = bytes.len().min(self.room());
            self.put(&bytes[..n]);
            bytes = &bytes[n..];
            if self.room() == 0 {
                self.close_data();
                self.queue_cur();
            }
        }
    }

    /// Writes the queued full buffers (as Data frames), all at once, and waits for them.
    ///
    /// # Errors
    /// A write failed or the message had already failed; the message cannot be committed.
    pub async fn flush(&mut self) -> Result<(), SpoolError> {
        self.write_queued()
            .await
            .map(|_| ())
            .map_err(|f| f.to_error())
    }

    /// Writes the rest and the Commit frame, then waits until the message is durable: with
    /// [`SyncPolicy::Group`], for an fdatasync that began after all of it was written; with
    /// [`SyncPolicy::None`], for the writes only. Returns the id for `250 ... queued as <id>`.
    ///
    /// # Errors
    /// [`SpoolError::NoSpace`] or [`SpoolError::Io`]: the message is not stored; never ack it.
    pub async fn commit(mut self) -> Result<String, SpoolError> {
        let res = self.commit_inner().await;
        let mut stats = self.sh.stats.borrow_mut();
        match res {
            Ok(()) => {
                stats.commits += 1;
                Ok(self.id().to_string())
            }
            Err(f) => {
                stats.failed_commits += 1;
                Err(f.to_error())
            }
        }
    }

    /// Drops the message. If some of it already reached the file, writes an Abort frame (so
    /// `check` counts it as aborted, not incomplete); errors are ignored, the message is not
    /// mail either way.
    pub async fn abort(mut self) {
        self.sh.stats.borrow_mut().aborts += 1;
        self.queued.clear();
        self.cur = None;
        self.cur_len = 0;
        self.data_hdr = None;
        let Some(seg) = self.seg.clone() else {
            return;
        };
        if !self.wrote || self.error.is_some() {
            return;
        }
        let mut bytes = Vec::new();
        frame::encode_frame(Kind::Abort, self.id.0, &[], &mut bytes);
        let mut buf = Buf::heap(bytes.len());
        buf.put_at(0, &bytes);
        if let Ok((_, h)) = Shared::submit(&self.sh, &seg, buf, bytes.len()) {
            let _ = h.await;
        }
    }

    async fn commit_inner(&mut self) -> Result<(), Failure> {
        if let Some(f) = &self.error {
            return Err(f.clone());
        }
        self.close_data();
        let rec = CommitRecord {
            size: self.size,
            frames: self.data_frames,
            crc: self.data_crc,
        };
        self.append_frame(Kind::Commit, &rec.encode());
        let Some(seg) = self.seg.clone() else {
            return Err(Failure::other("no segment"));
        };
        if self.sh.config.sync == SyncPolicy::Group {
            // Full buffers (a large message's earlier Data frames) are written on their own;
            // the rest rides in the segment's group write, reserved after them.
            let submitted = self.submit_queued();
            let member = match (&submitted, &self.cur) {
                (Ok(_), Some(cur)) => Shared::join_group(&self.sh, &seg, &cur[..self.cur_len]),
                _ => None,
            };
            if let Some(member) = member {
                self.cur = None;
                self.cur_len = 0;
                self.wrote = true;
                self.await_writes(submitted).await?;
                return member.wait_synced().await;
            }
            // A failed submission returns its error here; a tail too large for a group
            // (a huge Envelope) takes the plain path below.
            self.await_writes(submitted).await?;
        }
        self.queue_cur();
        let submitted = self.submit_queued();
        let guard = match (&submitted, self.sh.config.sync) {
            (Ok((target, _)), SyncPolicy::Group) => {
                Some(Shared::register_waiter(&self.sh, &seg, *target))
            }
            _ => None,
        };
        self.await_writes(submitted).await?;
        match guard {
            Some(g) => Shared::wait_synced(&seg, g.target).await,
            None => Ok(()),
        }
    }

    /// Writes every queued buffer and waits for the writes.
    async fn write_queued(&mut self) -> Result<(), Failure> {
        let submitted = self.submit_queued();
        self.await_writes(submitted).await
    }

    /// Reserves and submits every queued buffer; returns the largest end offset and the write
    /// tasks (the error, if one could not be submitted, comes with those that were).
    fn submit_queued(&mut self) -> Submitted {
        if let Some(f) = &self.error {
            return Err((f.clone(), Vec::new()));
        }
        let Some(seg) = self.seg.clone() else {
            return Err((Failure::other("no segment"), Vec::new()));
        };
        let mut handles = Vec::with_capacity(self.queued.len());
        let mut end = 0;
        let queued = std::mem::take(&mut self.queued);
        for (buf, len) in queued {
            match Shared::submit(&self.sh, &seg, buf, len) {
                Ok((e, h)) => {
                    end = end.max(e);
                    handles.push(h);
                }
                Err(f) => return Err((f, handles)),
            }
        }
        if !handles.is_empty() {
            self.wrote = true;
        }
        Ok((end, handles))
    }

    /// Waits for submitted writes; the first error becomes the message's sticky error.
    async fn await_writes(&mut self, submitted: Submitted) -> Result<(), Failure> {
        let (mut first_err, handles) = match submitted {
            Ok((_, h)) => (None, h),
            Err((f, h)) => (Some(f), h),
        };
        if !handles.is_empty() {
            self.wrote = true;
        }
        for h in handles {
            let r = h
                .await
                .unwrap_or_else(|e| Err(Failure::other(&format!("spool write task: {e}"))));
            if let Err(f) = r {
                first_err.get_or_insert(f);
            }
        }
        match first_err {
            Some(f) => {
                self.error = Some(f.clone());
                Err(f)
            }
            None => Ok(()),
        }
    }

    fn room(&self) -> usize {
        self.cur.as_ref().map_or(0, |b| b.capacity() - self.cur_len)
    }

    fn ensure_buf(&mut self, min: usize) {
        if self.cur.is_some() {
            return;
        }
        let size = self.sh.buffers.config().write_buf_size;
        let buf = if min > size {
            Buf::heap(min)
        } else {
            self.sh.buffers.write_buf().unwrap_or_else(|| {
                self.sh.stats.borrow_mut().heap_buffers += 1;
                Buf::heap(size)
            })
        };
        self.cur = Some(buf);
        self.cur_len = 0;
    }

    fn put(&mut self, bytes: &[u8]) {
        if let Some(b) = &mut self.cur {
            let n = b.put_at(self.cur_len, bytes);
            debug_assert_eq!(n, bytes.len());
            self.cur_len += n;
        }
    }

    /// Fills in the open Data frame's header (length, CRC), or removes it if empty.
    fn close_data(&mut self) {
        let Some(at) = self.data_hdr.take() else {
            return;
        };
        let Some(b) = &mut self.cur else {
            return;
        };
        let start = at + HEADER_LEN;
        let len = self.cur_len - start;
        if len == 0 {
            self.cur_len = at;
            return;
        }
        let payload = &b[start..self.cur_len];
        let pc = crc32c::crc32c(payload);
        // A second hardware-CRC pass over the (cache-hot) payload is far cheaper than
        // `crc32c_combine`, whose GF(2) matrix work dominated the server's CPU profile.
        self.data_crc = crc32c::crc32c_append(self.data_crc, payload);
        self.size += len as u64;
        self.data_frames += 1;
        let h = frame::encode_header(Kind::Data, self.id.0, len as u32, pc);
        b[at..start].copy_from_slice(&h);
    }

    /// Moves the current buffer to the queue.
    fn queue_cur(&mut self) {
        self.close_data();
        if let Some(b) = self.cur.take() {
            if self.cur_len > 0 {
                self.queued.push((b, self.cur_len));
            }
        }
        self.cur_len = 0;
    }

    /// Appends a whole frame, starting a new buffer if it does not fit.
    fn append_frame(&mut self, kind: Kind, payload: &[u8]) {
        self.close_data();
        let need = HEADER_LEN + payload.len();
        if self.room() < need {
            self.queue_cur();
        }
        self.ensure_buf(need);
        let h = frame::encode_header(
            kind,
            self.id.0,
            payload.len() as u32,
            crc32c::crc32c(payload),
        );
        self.put(&h);
        self.put(payload);
    }
}

impl Drop for MessageWriter {
    fn drop(&mut self) {
        if let Some(seg) = self.seg.take() {
            seg.open.set(seg.open.get() - 1);
            drop(Shared::maybe_finish(&self.sh, &seg));
        }
    }
}

/// Takes an exclusive `flock` on `<dir>/.lock-<reactor>` so two processes never write the same
/// reactor's segments.
fn lock_reactor(config: &SpoolConfig) -> Result<StdFile, SpoolError> {
    let path = config.dir.join(format!(".lock-{}", config.reactor));
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    // SAFETY: flock takes a valid open descriptor (owned by `f`, alive for the call) and flags.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(SpoolError::Io(io::Error::new(
            e.kind(),
            format!(
                "{}: reactor {} of this spool is in use by another process ({e})",
                path.display(),
                config.reactor
            ),
        )));
    }
    Ok(f)
}

/// Bytes available to us on the filesystem holding `dir`, if `fstatvfs` works.
fn free_bytes(dir: &tokio_uring::fs::File) -> Option<u64> {
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: the descriptor is open for the call (owned by `dir`); fstatvfs writes only into
    // the struct we pass.
    let rc = unsafe { libc::fstatvfs(dir.as_raw_fd(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: fstatvfs returned 0, so it initialised the struct.
    let st = unsafe { st.assume_init() };
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

fn unix_us(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn now_ms() -> u64 {
    unix_us(SystemTime::now()) / 1000
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffers::BufferConfig;
    use crate::spool::reader;

    fn envelope(rcpts: &[&str]) -> Envelope {
        Envelope {
            helo: "client.example".into(),
            esmtp: true,
            mail_from: "sender@example.org".into(),
            declared_size: Some(1000),
            body_8bitmime: true,
            smtputf8: false,
            rcpts: rcpts.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn arrival() -> Arrival {
        Arrival {
            client_ip: "192.0.2.7".parse().unwrap(),
            received_at: SystemTime::now(),
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
                let mut w = spool.begin(&envelope(&["rcpt@example.test"]), &arrival());
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
                    let mut w = spool.begin(&envelope(&["a@x", "b@x"]), &arrival());
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
                    let mut w = spool.begin(&envelope(&["a@x"]), &arrival());
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
            let mut a = spool.begin(&envelope(&[]), &arrival());
            a.push(&body(50_000, 1));
            a.flush().await.unwrap();
            a.abort().await;
            let mut dropped = spool.begin(&envelope(&[]), &arrival());
            dropped.push(&body(40_000, 2));
            dropped.flush().await.unwrap();
            drop(dropped);
            let never_flushed = spool.begin(&envelope(&[]), &arrival());
            never_flushed.abort().await;
            let mut ok = spool.begin(&envelope(&[]), &arrival());
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
                    let mut w = spool.begin(&envelope(&["r@x"]), &arrival());
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
            assert!(matches!(b, Err(SpoolError::Io(ref e)) if e.to_string().contains("in use")));
            let c = Spool::open(SpoolConfig::new(dir.path(), 1, "h"), pool.clone()).await;
            assert!(c.is_ok());
            a.close().await.unwrap();
            let again = Spool::open(SpoolConfig::new(dir.path(), 0, "h"), pool).await;
            assert!(again.is_ok());
        });
    }
}
