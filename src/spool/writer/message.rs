//! [`MessageWriter`]: one message from `begin` to commit or abort. It packs the message's
//! frames (see `pack`), reserves file ranges and submits writes for full buffers on `flush`,
//! and on `commit` hands its final frames to the segment's group (or writes them itself) and
//! waits until they are durable.
//!
//! It does not run fdatasync or decide who rides on which one (see `syncer`), and does not
//! track which bytes of the segment are written (see `live` and `progress`).

use std::rc::Rc;

use super::live::{Segment, WriteTask};
use super::pack::Packer;
use super::{pack, Failure, Shared};
use crate::spool::frame::{EnvelopeRecord, Kind};
use crate::spool::id::{MessageId, ID_LEN};
use crate::spool::trace::received_header;
use crate::spool::{SpoolError, SyncPolicy};

/// Submitted writes: the largest end offset and the tasks, or the error that stopped
/// submission with the tasks submitted before it.
type Submitted = Result<(u64, Vec<WriteTask>), (Failure, Vec<WriteTask>)>;

/// One message being written. Dropping it without [`MessageWriter::commit`] leaves an
/// incomplete message on disk, which readers skip.
pub struct MessageWriter {
    /// The spool it writes to.
    sh: Rc<Shared>,
    /// The segment this message is pinned to (all its frames go there); `None` if `begin`
    /// could not get one.
    seg: Option<Rc<Segment>>,
    /// The message id.
    id: MessageId,
    /// The id as printed (returned by `commit`).
    id_text: [u8; ID_LEN],
    /// The message's frames, in write buffers.
    packer: Packer,
    /// Sticky failure: pushes are dropped and commit fails.
    error: Option<Failure>,
    /// Whether any frame of this message reached the file.
    wrote: bool,
}

impl MessageWriter {
    /// A message pinned to `seg` (or born failed), with its Envelope frame and `Received:`
    /// header queued.
    pub(super) fn start(
        sh: Rc<Shared>,
        seg: Result<Rc<Segment>, Failure>,
        id: MessageId,
        envelope: &EnvelopeRecord,
    ) -> Self {
        let mut w = Self {
            sh,
            seg: None,
            id,
            id_text: id.encode(),
            packer: Packer::new(id.0),
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
        let mut payload = Vec::with_capacity(envelope.encoded_len());
        envelope.encode(&mut payload);
        w.packer.append_frame(Kind::Envelope, &payload, w.sh.bufs());
        let mut received = Vec::with_capacity(256);
        received_header(&mut received, envelope, &w.sh.config.hostname, w.id());
        w.push(&received);
        w
    }

    /// The printable message id (13 characters, see [`crate::spool::id`]).
    pub fn id(&self) -> &str {
        // Always ASCII from the base32 alphabet; an empty string would only show a bug.
        std::str::from_utf8(&self.id_text).unwrap_or("")
    }

    /// Bytes of this message held in memory (the buffer being filled and full ones waiting for
    /// `flush`).
    pub fn buffered(&self) -> usize {
        self.packer.buffered()
    }

    /// Copies body bytes into write buffers; never waits. A full buffer is queued for the next
    /// [`MessageWriter::flush`]; when the registered pool is empty, a heap buffer is used. Call
    /// `flush` after each push (at least every few buffers) to keep memory bounded. After a
    /// failure, bytes are dropped (the commit will fail).
    pub fn push(&mut self, bytes: &[u8]) {
        if self.error.is_some() {
            return;
        }
        self.packer.push(bytes, self.sh.bufs());
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
    /// [`SpoolError::NoSpace`] or another [`SpoolError`]: the message is not stored; never
    /// ack it.
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
        self.packer.clear();
        let Some(seg) = self.seg.clone() else {
            return;
        };
        if !self.wrote || self.error.is_some() {
            return;
        }
        let (buf, len) = pack::frame_buf(Kind::Abort, self.id.0, &[]);
        if let Ok((_, h)) = Shared::submit(&self.sh, &seg, buf, len) {
            let _ = h.await;
        }
    }

    async fn commit_inner(&mut self) -> Result<(), Failure> {
        if let Some(f) = &self.error {
            return Err(f.clone());
        }
        self.packer.append_commit(self.sh.bufs());
        let Some(seg) = self.seg.clone() else {
            return Err(Failure::NoSegment);
        };
        if self.sh.config.sync == SyncPolicy::Group {
            // Full buffers (a large message's earlier Data frames) are written on their own;
            // the rest rides in the segment's group write, reserved after them.
            let submitted = self.submit_queued();
            let member = match (&submitted, self.packer.tail()) {
                (Ok(_), Some(tail)) => Shared::join_group(&self.sh, &seg, tail),
                _ => None,
            };
            if let Some(member) = member {
                self.packer.drop_tail();
                self.wrote = true;
                self.await_writes(submitted).await?;
                return member.wait_synced().await;
            }
            // A failed submission returns its error here; a tail too large for a group
            // (a huge Envelope) takes the plain path below.
            self.await_writes(submitted).await?;
        }
        self.packer.queue_cur();
        let submitted = self.submit_queued();
        let waiter = match (&submitted, self.sh.config.sync) {
            (Ok((target, _)), SyncPolicy::Group) => {
                Some(Shared::register_waiter(&self.sh, &seg, *target))
            }
            _ => None,
        };
        self.await_writes(submitted).await?;
        match waiter {
            Some(w) => w.wait_synced().await,
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
            return Err((Failure::NoSegment, Vec::new()));
        };
        let queued = self.packer.take_queued();
        let mut handles = Vec::with_capacity(queued.len());
        let mut end = 0;
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
                .unwrap_or_else(|e| Err(Failure::WriteTask(e.to_string())));
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
}

impl Drop for MessageWriter {
    fn drop(&mut self) {
        if let Some(seg) = self.seg.take() {
            seg.open.set(seg.open.get() - 1);
            drop(Shared::maybe_finish(&self.sh, &seg));
        }
    }
}
