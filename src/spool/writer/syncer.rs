//! Group commit: the group buffer that collects committing messages' final frames into one
//! write, the [`Waiter`] a commit holds until its frames are durable, and the syncer task that
//! runs one fdatasync at a time for every commit below the written watermark.
//!
//! The syncer only decides when to seal a group and when to fdatasync; which offsets are
//! written or durable and who waits where is counted in `progress`, and writes are submitted
//! by `live`. With [`SyncPolicy::None`](crate::spool::SyncPolicy::None) none of this runs.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::live::Segment;
use super::{Failure, Shared};
use crate::buffers::Buf;

/// How long the syncer waits for writes already in flight before it starts an fdatasync.
const DRAIN_MAX: Duration = Duration::from_millis(1);

/// Final frames of several committing messages, copied back to back into one write buffer.
/// Its file range is reserved only when it is sealed, so the ranges of everything its members
/// submitted earlier (a large message's Data frames) lie before it.
pub(super) struct Group {
    /// The write buffer.
    buf: Buf,
    /// How much of it is filled.
    len: usize,
    /// What the members share.
    ticket: Rc<GroupTicket>,
}

/// What the members of a [`Group`] share.
struct GroupTicket {
    /// The end offset of the group's range, once sealed (reserved and submitted).
    end: Cell<Option<u64>>,
    /// Members still waiting; registered as waiters at the end offset when sealed.
    members: Cell<u32>,
}

/// A commit waiting for its frames to be durable. Dropping it (when the wait ends, or the
/// commit is cancelled) releases it.
pub(super) struct Waiter {
    /// The segment its frames are in.
    seg: Rc<Segment>,
    /// Where its frames end.
    at: Target,
}

/// Where a waiting commit's frames end.
enum Target {
    /// At this offset: the commit wrote its frames itself.
    Offset(u64),
    /// At the end of a group: known once the group is sealed.
    Group(Rc<GroupTicket>),
}

impl Waiter {
    /// The end offset to wait for, if known yet.
    fn target(&self) -> Option<u64> {
        match &self.at {
            Target::Offset(t) => Some(*t),
            Target::Group(ticket) => ticket.end.get(),
        }
    }

    /// Waits until the commit's frames are durable: an fdatasync that began after they, and
    /// everything before them in the segment, were written has completed. Fails with the
    /// segment's failure.
    pub(super) async fn wait_synced(&self) -> Result<(), Failure> {
        loop {
            let notified = self.seg.synced_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(r) = self.seg.progress.borrow().poll(self.target()) {
                return r;
            }
            notified.await;
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        match (self.target(), &self.at) {
            (Some(t), _) => self.seg.progress.borrow_mut().release(t),
            // A group not sealed yet: its members are counted in its ticket, not at an offset.
            (None, Target::Group(ticket)) => {
                ticket.members.set(ticket.members.get().saturating_sub(1));
            }
            (None, Target::Offset(_)) => {}
        }
    }
}

impl Shared {
    /// Registers a commit whose last frame ends at `target` (called when its writes are
    /// submitted, so the syncer knows which writes it may wait for) and makes sure the syncer
    /// runs.
    pub(super) fn register_waiter(this: &Rc<Self>, seg: &Rc<Segment>, target: u64) -> Waiter {
        seg.progress.borrow_mut().wait(target, 1);
        Self::wake_syncer(this, seg);
        Waiter {
            seg: Rc::clone(seg),
            at: Target::Offset(target),
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
    pub(super) fn join_group(this: &Rc<Self>, seg: &Rc<Segment>, tail: &[u8]) -> Option<Waiter> {
        let bufs = this.bufs();
        if tail.len() > bufs.size() || seg.progress.borrow().failed() {
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
                buf: bufs.take(),
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
        Some(Waiter {
            seg: Rc::clone(seg),
            at: Target::Group(ticket),
        })
    }

    /// Reserves the open group's range and submits its one write; its members become waiters
    /// at the group's end. If the segment has failed, the group is dropped (its members see
    /// the failure).
    pub(super) fn seal_group(this: &Rc<Self>, seg: &Rc<Segment>) {
        let Some(g) = seg.group.borrow_mut().take() else {
            return;
        };
        if let Ok((end, handle)) = Self::submit_timed(this, seg, g.buf, g.len, true) {
            // The write task records its own failure in the segment.
            drop(handle);
            g.ticket.end.set(Some(end));
            seg.progress.borrow_mut().wait(end, g.ticket.members.get());
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
                let (batch, drain_to) = {
                    let p = seg.progress.borrow();
                    if p.failed() || !p.has_waiters() {
                        this.sync_queue
                            .borrow_mut()
                            .retain(|s| !Rc::ptr_eq(s, &seg));
                        continue;
                    }
                    (p.batch(p.written()), p.last_target().unwrap_or(0))
                };
                if batch == 0 {
                    continue;
                }
                progressed = true;
                // Other commits whose writes are in flight are about to land: let them finish
                // (briefly) so this fdatasync covers them too.
                Self::drain(&this, &seg, drain_to).await;
                let (wm, batch) = {
                    let p = seg.progress.borrow();
                    (p.written(), p.batch(p.written()))
                };
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
                let started = Instant::now();
                let r = seg.file.sync_data().await;
                this.time_fsync(started.elapsed());
                let mut stats = this.stats.borrow_mut();
                stats.fsyncs += 1;
                match r {
                    Ok(()) => {
                        stats.record_batch(batch);
                        drop(stats);
                        seg.progress.borrow_mut().synced_to(wm);
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

    /// Waits (at most [`DRAIN_MAX`]) until `seg` is written up to `target`, or has failed.
    async fn drain(this: &Rc<Self>, seg: &Segment, target: u64) {
        let pending = || {
            let p = seg.progress.borrow();
            p.written() < target && !p.failed()
        };
        if !pending() {
            return;
        }
        let deadline = tokio::time::Instant::now() + DRAIN_MAX;
        while pending() {
            let woken = tokio::time::timeout_at(deadline, this.work.notified()).await;
            if woken.is_err() {
                break;
            }
        }
    }
}
