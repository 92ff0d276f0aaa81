//! Frame packing: one message's frames laid out in write buffers. [`Packer`] copies body bytes
//! into Data frames (closing a frame's header, with length and CRC, when its buffer is full),
//! appends whole frames (Envelope, Commit), and keeps the full buffers until the message
//! writer reserves file ranges for them.
//!
//! Small first: a message starts in a small heap buffer ([`SMALL_BUF_SIZE`], from the pool's
//! free list) and moves into a write-tier buffer (copying what it holds) only when it outgrows
//! it; later buffers of that message are write-tier ones. A small message's frames are then
//! copied once, into the group buffer, as before, and a message waiting in DATA holds 4 KiB
//! instead of 64 KiB. The frames are the same bytes either way: the move happens before a
//! buffer is closed, so frame boundaries depend only on the write-buffer size.
//!
//! No I/O: buffers come from the pool (or the heap when it is empty) and are handed back
//! filled; writing them, and deciding when, is `message`'s job.

use std::cell::RefCell;

use crate::buffers::{Buf, BufferPool, SMALL_BUF_SIZE};
use crate::spool::frame::{self, CommitRecord, Kind, HEADER_LEN};
use crate::spool::SpoolStats;

/// Where write buffers come from: the pool's write tier, else the heap (counted in
/// [`SpoolStats::heap_buffers`]).
#[derive(Clone, Copy)]
pub(super) struct Buffers<'a> {
    /// The reactor's buffer pool.
    pub(super) pool: &'a BufferPool,
    /// The spool's counters.
    pub(super) stats: &'a RefCell<SpoolStats>,
}

impl Buffers<'_> {
    /// Bytes in a write buffer.
    pub(super) fn size(&self) -> usize {
        self.pool.config().write_buf_size
    }

    /// A small heap buffer ([`SMALL_BUF_SIZE`]), from the pool's free list if it has one.
    fn small(&self) -> Buf {
        self.pool.small_buf()
    }

    /// A write buffer of [`Buffers::size`] bytes, from the pool if it has one.
    pub(super) fn take(&self) -> Buf {
        self.pool.write_buf().unwrap_or_else(|| {
            self.stats.borrow_mut().heap_buffers += 1;
            Buf::heap(self.size())
        })
    }
}

/// A whole frame in a heap buffer of its own, with its length (for the rare frames written
/// alone: Segment, Seal, Abort).
pub(super) fn frame_buf(kind: Kind, id: u64, payload: &[u8]) -> (Buf, usize) {
    let mut bytes = Vec::new();
    frame::encode_frame(kind, id, payload, &mut bytes);
    let mut buf = Buf::heap(bytes.len());
    buf.put_at(0, &bytes);
    (buf, bytes.len())
}

/// One message's frames, packed into write buffers.
pub(super) struct Packer {
    /// The message id, in every frame header.
    id: u64,
    /// The buffer being filled.
    cur: Option<Buf>,
    /// Whether `cur` is a small buffer (moved into a write buffer when it runs out of room).
    cur_small: bool,
    /// Whether the next buffer may be a small one: true until the message outgrows its first
    /// buffer (false from the start when small buffers are off).
    small_first: bool,
    /// How much of `cur` is filled.
    cur_len: usize,
    /// Offset in `cur` of the header of the open Data frame.
    data_hdr: Option<usize>,
    /// Full buffers waiting to be written, with their filled lengths.
    queued: Vec<(Buf, usize)>,
    /// Data bytes in closed Data frames.
    size: u64,
    /// crc32c of those bytes, for the Commit frame.
    data_crc: u32,
    /// Closed Data frames.
    data_frames: u32,
}

impl Packer {
    /// An empty packer for message `id`.
    pub(super) fn new(id: u64) -> Self {
        Self {
            id,
            cur: None,
            cur_small: false,
            small_first: true,
            cur_len: 0,
            data_hdr: None,
            queued: Vec::new(),
            size: 0,
            data_crc: 0,
            data_frames: 0,
        }
    }

    /// Bytes held: the buffer being filled and the full ones waiting.
    pub(super) fn buffered(&self) -> usize {
        self.cur_len + self.queued.iter().map(|(_, n)| n).sum::<usize>()
    }

    /// An empty packer that never uses small buffers (what every message did before they
    /// existed): the reference the small-first layout is checked against.
    #[cfg(test)]
    fn without_small(id: u64) -> Self {
        Self {
            small_first: false,
            ..Self::new(id)
        }
    }

    /// Copies `bytes` into Data frames; a full buffer is closed and queued.
    pub(super) fn push(&mut self, mut bytes: &[u8], b: Buffers<'_>) {
        while !bytes.is_empty() {
            if self.data_hdr.is_none() {
                self.grow_for(HEADER_LEN + 1, b);
                if self.room() < HEADER_LEN + 1 {
                    self.queue_cur();
                }
                self.ensure_buf(0, b);
                let at = self.cur_len;
                self.put(&[0u8; HEADER_LEN]);
                self.data_hdr = Some(at);
            }
            self.grow_for(bytes.len(), b);
            let n = bytes.len().min(self.room());
            self.put(&bytes[..n]);
            bytes = &bytes[n..];
            if self.room() == 0 && !self.cur_small {
                self.close_data();
                self.queue_cur();
            }
        }
    }

    /// Closes the open Data frame and appends the Commit frame (size, frame count and CRC of
    /// all Data frames).
    pub(super) fn append_commit(&mut self, b: Buffers<'_>) {
        self.close_data();
        let rec = CommitRecord {
            size: self.size,
            frames: self.data_frames,
            crc: self.data_crc,
        };
        self.append_frame(Kind::Commit, &rec.encode(), b);
    }

    /// Appends a whole frame, starting a new buffer if it does not fit (a heap buffer of its
    /// size if it is larger than a write buffer).
    pub(super) fn append_frame(&mut self, kind: Kind, payload: &[u8], b: Buffers<'_>) {
        self.close_data();
        let need = HEADER_LEN + payload.len();
        if self.cur_len + need <= b.size() {
            self.grow_for(need, b);
        }
        if self.room() < need {
            self.queue_cur();
        }
        self.ensure_buf(need, b);
        let h = frame::encode_header(kind, self.id, payload.len() as u32, crc32c::crc32c(payload));
        self.put(&h);
        self.put(payload);
    }

    /// Moves the buffer being filled to the queue (closing its Data frame).
    pub(super) fn queue_cur(&mut self) {
        self.close_data();
        if let Some(b) = self.cur.take() {
            if self.cur_len > 0 {
                self.queued.push((b, self.cur_len));
            }
        }
        self.cur_small = false;
        self.cur_len = 0;
    }

    /// Takes the full buffers waiting to be written.
    pub(super) fn take_queued(&mut self) -> Vec<(Buf, usize)> {
        std::mem::take(&mut self.queued)
    }

    /// The filled part of the buffer being filled, if any.
    pub(super) fn tail(&self) -> Option<&[u8]> {
        self.cur.as_ref().map(|b| &b[..self.cur_len])
    }

    /// Drops the buffer being filled (its bytes went elsewhere; a small one goes back to the
    /// pool's free list).
    pub(super) fn drop_tail(&mut self) {
        self.cur = None;
        self.cur_small = false;
        self.cur_len = 0;
    }

    /// Drops everything (the message is aborted).
    pub(super) fn clear(&mut self) {
        self.queued.clear();
        self.drop_tail();
        self.data_hdr = None;
    }

    fn room(&self) -> usize {
        self.cur.as_ref().map_or(0, |b| b.capacity() - self.cur_len)
    }

    /// Makes sure a buffer is being filled, with room for `min` bytes if it is new: a small
    /// one while the message has not outgrown one, else a write buffer (or a heap buffer of
    /// `min` bytes, for a frame larger than a write buffer).
    fn ensure_buf(&mut self, min: usize, b: Buffers<'_>) {
        if self.cur.is_some() {
            return;
        }
        // Small buffers only where they are smaller than write buffers (a test pool may not be).
        let small = self.small_first && min <= SMALL_BUF_SIZE && SMALL_BUF_SIZE < b.size();
        let buf = if small {
            b.small()
        } else if min > b.size() {
            Buf::heap(min)
        } else {
            b.take()
        };
        self.cur_small = small && buf.capacity() < b.size();
        self.cur = Some(buf);
        self.cur_len = 0;
    }

    /// If the buffer being filled is a small one without room for `need` more bytes, moves its
    /// bytes into a write buffer (the open Data frame's header is filled in later, at the same
    /// offset) and gives the small one back. From then on the message takes write buffers.
    fn grow_for(&mut self, need: usize, b: Buffers<'_>) {
        if !self.cur_small || self.room() >= need {
            return;
        }
        let mut big = b.take();
        if let Some(small) = &self.cur {
            let n = big.put_at(0, &small[..self.cur_len]);
            debug_assert_eq!(n, self.cur_len);
        }
        self.cur = Some(big);
        self.cur_small = false;
        self.small_first = false;
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
        let h = frame::encode_header(Kind::Data, self.id, len as u32, pc);
        b[at..start].copy_from_slice(&h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffers::BufferConfig;

    /// A heap-only pool of two 4 KiB write buffers, and counters.
    struct Fixture {
        pool: BufferPool,
        stats: RefCell<SpoolStats>,
    }

    impl Fixture {
        fn new() -> Self {
            Self {
                pool: BufferPool::heap_only(BufferConfig {
                    read_buf_size: 1024,
                    read_bufs: 1,
                    write_buf_size: 4096,
                    write_bufs: 2,
                }),
                stats: RefCell::new(SpoolStats::default()),
            }
        }

        fn bufs(&self) -> Buffers<'_> {
            Buffers {
                pool: &self.pool,
                stats: &self.stats,
            }
        }
    }

    /// A heap-only pool whose write buffers (16 KiB) are larger than small buffers.
    fn fixture_16k() -> Fixture {
        Fixture {
            pool: BufferPool::heap_only(BufferConfig {
                read_buf_size: 1024,
                read_bufs: 1,
                write_buf_size: 16 * 1024,
                write_bufs: 16,
            }),
            stats: RefCell::new(SpoolStats::default()),
        }
    }

    /// Packs a message (Envelope, `body` pushed in `chunk`-byte pieces, Commit) and returns
    /// its bytes and whether its last buffer was a small one.
    fn pack(mut p: Packer, b: Buffers<'_>, body: &[u8], chunk: usize) -> (Vec<u8>, bool) {
        p.append_frame(Kind::Envelope, b"envelope record", b);
        p.push(b"Received: from x\r\n", b);
        for c in body.chunks(chunk) {
            p.push(c, b);
        }
        p.append_commit(b);
        let small = p.cur_small;
        (bytes(&mut p), small)
    }

    #[test]
    fn small_first_gives_the_same_frames_and_small_messages_stay_small() {
        let fx = fixture_16k();
        let b = fx.bufs();
        for len in [0, 1, 1000, 3_900, 4_100, 16_000, 16_500, 100 * 1024] {
            let body: Vec<u8> = (0..len as u32).map(|i| (i % 251) as u8).collect();
            for chunk in [1, 7, 1024, 70_000] {
                let (small_first, was_small) = pack(Packer::new(9), b, &body, chunk);
                let (reference, _) = pack(Packer::without_small(9), b, &body, chunk);
                assert!(small_first == reference, "len {len}, chunk {chunk}");
                let fits = small_first.len() <= SMALL_BUF_SIZE;
                assert_eq!(was_small, fits, "len {len}, chunk {chunk}");
                let data: Vec<u8> = frames(&small_first)
                    .into_iter()
                    .filter(|f| f.0 == Kind::Data)
                    .flat_map(|f| f.2)
                    .collect();
                assert_eq!(&data[b"Received: from x\r\n".len()..], &body[..]);
            }
        }
        // Every buffer went back: the pool's write tier is whole again.
        let all: Vec<Buf> = std::iter::from_fn(|| fx.pool.write_buf()).collect();
        assert_eq!(all.len(), 16);
        assert_eq!(fx.stats.borrow().heap_buffers, 0);
    }

    #[test]
    fn a_small_message_takes_no_write_buffer() {
        let fx = fixture_16k();
        let b = fx.bufs();
        let held: Vec<Buf> = std::iter::from_fn(|| fx.pool.write_buf()).collect();
        let mut p = Packer::new(3);
        p.append_frame(Kind::Envelope, b"envelope record", b);
        p.push(&[b'a'; 2000], b);
        p.append_commit(b);
        assert!(p.cur_small);
        assert!(p.tail().is_some_and(|t| t.len() > 2000));
        assert_eq!(
            fx.stats.borrow().heap_buffers,
            0,
            "the write tier was empty"
        );
        // Growing past the small buffer takes a write buffer (here from the heap).
        let mut p = Packer::new(4);
        p.push(&[b'a'; SMALL_BUF_SIZE], b);
        assert!(!p.cur_small);
        assert_eq!(fx.stats.borrow().heap_buffers, 1);
        drop(held);
    }

    /// The queued buffers and the tail, back to back: what would reach the file.
    fn bytes(p: &mut Packer) -> Vec<u8> {
        let mut out = Vec::new();
        for (b, n) in p.take_queued() {
            out.extend_from_slice(&b[..n]);
        }
        out.extend_from_slice(p.tail().unwrap_or(&[]));
        out
    }

    /// Decodes every frame: (kind, id, payload).
    fn frames(mut bytes: &[u8]) -> Vec<(Kind, u64, Vec<u8>)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let (h, payload) = frame::decode_frame(bytes).unwrap();
            out.push((h.kind, h.id, payload.to_vec()));
            bytes = &bytes[HEADER_LEN + payload.len()..];
        }
        out
    }

    #[test]
    fn a_message_packs_into_checked_frames_across_buffers() {
        let fx = Fixture::new();
        let b = fx.bufs();
        let body: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let mut p = Packer::new(42);
        p.append_frame(Kind::Envelope, b"envelope", b);
        for chunk in body.chunks(777) {
            p.push(chunk, b);
        }
        p.push(&[], b);
        p.append_commit(b);
        assert!(p.buffered() >= body.len());
        let all = frames(&bytes(&mut p));
        assert_eq!(all.first().map(|f| f.0), Some(Kind::Envelope));
        assert_eq!(all.last().map(|f| f.0), Some(Kind::Commit));
        assert!(all.iter().all(|f| f.1 == 42));
        let data: Vec<u8> = all
            .iter()
            .filter(|f| f.0 == Kind::Data)
            .flat_map(|f| f.2.clone())
            .collect();
        assert_eq!(data, body);
        let n_data = all.iter().filter(|f| f.0 == Kind::Data).count();
        assert_eq!(fx.pool.config().write_buf_size, 4096);
        assert!(n_data >= 5, "one Data frame per buffer at most: {n_data}");
        let commit = CommitRecord::decode(&all[all.len() - 1].2).unwrap();
        assert_eq!(commit.size, body.len() as u64);
        assert_eq!(commit.frames as usize, n_data);
        assert_eq!(commit.crc, crc32c::crc32c(&body));
        // The pool's two write buffers ran out; the rest came from the heap.
        assert!(fx.stats.borrow().heap_buffers > 0);
    }

    #[test]
    fn an_empty_body_has_no_data_frame_and_a_large_frame_gets_its_own_buffer() {
        let fx = Fixture::new();
        let b = fx.bufs();
        let mut p = Packer::new(7);
        let big = vec![b'x'; 10_000];
        p.append_frame(Kind::Envelope, &big, b);
        p.push(b"", b);
        p.append_commit(b);
        let all = frames(&bytes(&mut p));
        let kinds: Vec<Kind> = all.iter().map(|f| f.0).collect();
        assert_eq!(kinds, [Kind::Envelope, Kind::Commit]);
        assert_eq!(all[0].2, big);
        let commit = CommitRecord::decode(&all[1].2).unwrap();
        assert_eq!((commit.size, commit.frames), (0, 0));
    }

    #[test]
    fn clear_drops_everything() {
        let fx = Fixture::new();
        let b = fx.bufs();
        let mut p = Packer::new(1);
        p.push(&[b'a'; 10_000], b);
        assert!(p.buffered() > 10_000);
        p.clear();
        assert_eq!(p.buffered(), 0);
        assert!(p.tail().is_none());
    }

    #[test]
    fn frame_buf_holds_one_whole_frame() {
        let (buf, len) = frame_buf(Kind::Abort, 9, &[]);
        assert_eq!(len, HEADER_LEN);
        let all = frames(&buf[..len]);
        assert_eq!(all, [(Kind::Abort, 9, Vec::new())]);
    }
}
