//! The live segment: the file being appended to, its reserved end, the writes in flight, its
//! preallocation and prepared (zero-filled) space, its failure, and how it is finished (sealed
//! and cut to its Seal frame, or cut back after a failure).
//!
//! Writes are submitted here ([`Shared::submit`]); the bookkeeping they update (written and
//! durable offsets, waiters, failure) lives in `progress`. This file does not decide when to
//! fdatasync or who waits for it (see `syncer`) and does not build frames (see `pack`).

use std::cell::{Cell, RefCell};
use std::fs::File as StdFile;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::pack;
use super::progress::Progress;
use super::syncer::Group;
use super::{Failure, Shared};
use crate::buffers::Buf;
use crate::spool::frame::{Kind, SealRecord};
use crate::spool::segment::SegmentName;
use crate::spool::{SpoolConfig, SyncPolicy};

/// Zero-filled space is prepared in chunks of this size ahead of the append offset, so appends
/// overwrite written blocks and their fdatasync need not also write the inode (size change).
pub(super) const PREPARE_CHUNK: u64 = 8 * 1024 * 1024;

/// The next chunk is prepared when the reserved end comes within this distance of the prepared
/// end.
pub(super) const PREPARE_AHEAD: u64 = 4 * 1024 * 1024;

/// Nothing is prepared until a segment holds this much: a server started for a handful of
/// messages (the tests start hundreds) never writes a chunk of zeros.
pub(super) const PREPARE_START: u64 = 1024 * 1024;

/// A spawned segment write.
pub(super) type WriteTask = JoinHandle<Result<(), Failure>>;

/// One segment file being written.
pub(super) struct Segment {
    /// Reactor and sequence number: the file name, and the Seal frame's record.
    pub(super) name: SegmentName,
    /// The file, for logs and for removing it when a failed segment holds nothing acknowledged.
    pub(super) path: PathBuf,
    /// The file for io_uring writes, `fallocate` and `fdatasync`.
    pub(super) file: tokio_uring::fs::File,
    /// The same file for synchronous metadata calls (truncation).
    pub(super) std: StdFile,
    /// Next free offset: ranges are reserved synchronously, back to back, so writes of many
    /// messages are in flight at once at distinct offsets.
    pub(super) reserved: Cell<u64>,
    /// Writes submitted and not yet completed.
    pub(super) inflight: Cell<u32>,
    /// Written and durable offsets, waiting commits, and the failure (pure bookkeeping).
    pub(super) progress: RefCell<Progress>,
    /// Whether the file's directory entry is durable (the spool directory was fsynced after
    /// the file was created; always true without fsync).
    pub(super) dir_synced: Cell<bool>,
    /// Messages begun in this segment and not yet committed, aborted or dropped.
    pub(super) open: Cell<u32>,
    /// Whether new messages go here (false once the spool rolled past it or closed).
    pub(super) current: Cell<bool>,
    /// Whether it was sealed or cut back: nothing more happens to it.
    pub(super) finished: Cell<bool>,
    /// The largest message id begun here (or the id floor when created), for the Seal frame.
    pub(super) max_id: Cell<u64>,
    /// Woken after each fdatasync of this segment and on failure.
    pub(super) synced_notify: Notify,
    /// Woken when `inflight` drops to zero.
    pub(super) idle: Notify,
    /// Space is preallocated (`fallocate`, keeping the size) up to this offset.
    pub(super) prealloc_end: Cell<u64>,
    /// Whether to keep preallocating: off when configured so or after the first error.
    pub(super) prealloc_on: Cell<bool>,
    /// Zeros are written (or being written) up to this offset, see [`PREPARE_CHUNK`].
    pub(super) zero_end: Cell<u64>,
    /// The range whose zeros are being written: writes into it wait until it is done, so a
    /// zero write can never land over frames.
    pub(super) zeroing: Cell<Option<(u64, u64)>>,
    /// Woken when a zero write ends.
    pub(super) zeroed: Notify,
    /// Whether to keep preparing zeroed space: off unless configured (`SpoolConfig::prepare`),
    /// without group commit or preallocation, and after the first error (then appends extend
    /// the file, as without it).
    pub(super) zero_on: Cell<bool>,
    /// The open group buffer: the final frames of committing messages, collected so that one
    /// write covers all of them (see `Shared::join_group`). Not yet reserved in the file.
    pub(super) group: RefCell<Option<Group>>,
}

impl Segment {
    /// Waits while zeros are being written over any of `start..end`.
    async fn wait_zeroed(&self, start: u64, end: u64) {
        loop {
            let done = self.zeroed.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            match self.zeroing.get() {
                Some((zs, ze)) if start < ze && end > zs => done.await,
                _ => return,
            }
        }
    }

    /// A new, empty segment: nothing reserved, written or durable.
    pub(super) fn new(
        name: SegmentName,
        path: PathBuf,
        file: tokio_uring::fs::File,
        std: StdFile,
        config: &SpoolConfig,
        id_floor: u64,
    ) -> Self {
        Self {
            name,
            path,
            file,
            std,
            reserved: Cell::new(0),
            inflight: Cell::new(0),
            progress: RefCell::new(Progress::default()),
            dir_synced: Cell::new(config.sync == SyncPolicy::None),
            open: Cell::new(0),
            current: Cell::new(true),
            finished: Cell::new(false),
            max_id: Cell::new(id_floor),
            synced_notify: Notify::new(),
            idle: Notify::new(),
            prealloc_end: Cell::new(0),
            prealloc_on: Cell::new(config.preallocate > 0),
            zero_end: Cell::new(0),
            zeroing: Cell::new(None),
            zeroed: Notify::new(),
            zero_on: Cell::new(
                config.prepare && config.preallocate > 0 && config.sync == SyncPolicy::Group,
            ),
            group: RefCell::new(None),
        }
    }

    /// The failure, if the segment has failed.
    pub(super) fn failure(&self) -> Option<Failure> {
        self.progress.borrow().failure().cloned()
    }
}

impl Shared {
    /// Reserves `len` bytes at the segment's end and writes `buf[..len]` there in a spawned
    /// task. Returns the end offset of the range and the task's handle.
    pub(super) fn submit(
        this: &Rc<Self>,
        seg: &Rc<Segment>,
        buf: Buf,
        len: usize,
    ) -> Result<(u64, WriteTask), Failure> {
        Self::submit_timed(this, seg, buf, len, false)
    }

    /// [`Shared::submit`], reporting the write's duration as a group write if `group`.
    pub(super) fn submit_timed(
        this: &Rc<Self>,
        seg: &Rc<Segment>,
        buf: Buf,
        len: usize,
        group: bool,
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
        Self::prepare_zeros(this, seg);
        let sh = Rc::clone(this);
        let seg2 = Rc::clone(seg);
        let handle = tokio_uring::spawn(async move {
            seg2.wait_zeroed(off, end).await;
            let started = group.then(Instant::now);
            let (res, buf) = buf.write_all_at(&seg2.file, len, off).await;
            if let Some(t) = started {
                sh.time_group_write(t.elapsed());
            }
            drop(buf);
            seg2.inflight.set(seg2.inflight.get() - 1);
            let out = match res {
                Ok(()) => {
                    seg2.progress.borrow_mut().complete(off, end);
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

    /// Keeps zero-filled space ahead of the reserved end: when it comes within
    /// [`PREPARE_AHEAD`] of the zeroed end, writes the next [`PREPARE_CHUNK`] of zeros (from the
    /// reserved end if that is further) and fdatasyncs it, in a spawned task counted as a write
    /// in flight. Writes reserved into that range wait until the zeros are written. An error
    /// (no space, unsupported) turns it off for this segment: appends then extend the file.
    ///
    /// Durability does not depend on it: an ack needs an fdatasync that began after its frames
    /// were written, and those frames were written after the zeros around them, so that
    /// fdatasync also makes the size the zeros gave the file durable. Preparing only moves the
    /// size change (and the zero blocks) out of the fdatasyncs that acks wait for.
    fn prepare_zeros(this: &Rc<Self>, seg: &Rc<Segment>) {
        let reserved = seg.reserved.get();
        if !seg.zero_on.get()
            || seg.zeroing.get().is_some()
            || reserved < PREPARE_START
            || reserved + PREPARE_AHEAD <= seg.zero_end.get()
        {
            return;
        }
        let start = seg.zero_end.get().max(reserved.next_multiple_of(4096));
        // Segments roll at `segment_size`: prepare little beyond it.
        if start >= this.config.segment_size.max(PREPARE_START) + PREPARE_AHEAD {
            return;
        }
        let end = start + PREPARE_CHUNK;
        seg.zero_end.set(end);
        seg.zeroing.set(Some((start, end)));
        seg.inflight.set(seg.inflight.get() + 1);
        let sh = Rc::clone(this);
        let seg = Rc::clone(seg);
        drop(tokio_uring::spawn(async move {
            // calloc'd: the zero pages are not touched until the kernel copies from them.
            let zeros = Buf::heap_zeroed(PREPARE_CHUNK as usize);
            let (res, zeros) = zeros
                .write_all_at(&seg.file, PREPARE_CHUNK as usize, start)
                .await;
            drop(zeros);
            seg.zeroing.set(None);
            seg.zeroed.notify_waiters();
            let res = match res {
                Ok(()) => seg.file.sync_data().await,
                Err(e) => Err(e),
            };
            if let Err(e) = res {
                tracing::debug!(segment = %seg.path.display(), error = %e, "cannot prepare zeroed space; plain appends from now on");
                seg.zero_on.set(false);
            }
            seg.inflight.set(seg.inflight.get() - 1);
            if seg.inflight.get() == 0 {
                seg.idle.notify_waiters();
            }
            drop(Self::maybe_finish(&sh, &seg));
        }));
    }

    /// Fails a segment: every unacknowledged message with frames in it gets an error.
    pub(super) fn fail(this: &Rc<Self>, seg: &Rc<Segment>, f: &Failure, what: &str) {
        if !seg.progress.borrow_mut().fail(f.clone()) {
            return;
        }
        // Its members get the error below; their frames are never written.
        seg.group.borrow_mut().take();
        tracing::warn!(
            segment = %seg.path.display(),
            error = %f,
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
    pub(super) fn maybe_finish(this: &Rc<Self>, seg: &Rc<Segment>) -> Option<WriteTask> {
        if seg.current.get()
            || seg.finished.get()
            || seg.inflight.get() > 0
            || seg.group.borrow().is_some()
        {
            return None;
        }
        let keep = {
            let p = seg.progress.borrow();
            match (p.failed(), this.config.sync) {
                (false, _) => None,
                (true, SyncPolicy::Group) => Some(p.synced()),
                (true, SyncPolicy::None) => Some(p.written()),
            }
        };
        if let Some(keep) = keep {
            seg.finished.set(true);
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
        let rec = SealRecord {
            seq: seg.name.seq,
            max_id: seg.max_id.get(),
        };
        let (buf, len) = pack::frame_buf(Kind::Seal, 0, &rec.encode());
        let end = seg.reserved.get() + len as u64;
        if seg.zero_end.get() > end {
            // Prepared zeros beyond the Seal frame: the file ends at the Seal.
            if let Err(e) = seg.std.set_len(end) {
                tracing::debug!(segment = %seg.path.display(), error = %e, "cannot cut prepared zeros; recovery will");
            }
        }
        if seg.prealloc_end.get() > end {
            // Give back the preallocated space beyond the end (best effort).
            let seg2 = Rc::clone(seg);
            let len = seg.prealloc_end.get() - end;
            drop(tokio_uring::spawn(async move {
                let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
                let _ = seg2.file.fallocate(end, len, mode).await;
            }));
        }
        Self::submit(this, seg, buf, len).ok().map(|(_, h)| h)
    }
}
