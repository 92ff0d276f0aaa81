//! Per-reactor I/O buffers: io_uring registered ("fixed") buffers in two capacity tiers, sized
//! against `RLIMIT_MEMLOCK`, with a fallback to plain heap buffers.
//!
//! tokio-uring allows one registered buffer set per ring, so one [`BufferPool`] per reactor serves
//! both the connection driver's socket reads (the *read* tier, small buffers) and the spool
//! writer's file writes (the *write* tier, large buffers). Both tiers live in a single
//! [`FixedBufPool`]; the tier is selected by capacity, so the two sizes must differ.
//!
//! # Usage
//! ```no_run
//! use ringmx::buffers::{Buf, BufferConfig, BufferPool};
//! tokio_uring::start(async {
//!     // Once per reactor, before any other I/O on the ring.
//!     let pool = BufferPool::register(BufferConfig::from_rlimit(1));
//!     let listener = tokio_uring::net::TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
//!     let (stream, _) = listener.accept().await.unwrap();
//!     let buf = pool.next_read_buf().await;          // waits while all read buffers are in use
//!     let (res, buf) = buf.read_from(&stream).await; // read_fixed, or plain read on the heap path
//!     let n = res.unwrap();
//!     let bytes = &buf[..n];                         // valid bytes are [..n], see below
//!     # let _ = bytes;
//!     drop(buf);                                     // back to the pool
//! });
//! ```
//!
//! # Rules
//! - A checked-out [`Buf`] returns to its pool when dropped; an I/O operation in flight owns it
//!   and hands it back with its result (`(io::Result<_>, Buf)`), as everywhere in tokio-uring.
//! - After a read, the valid bytes are `buf[..n]` where `n` is the count the read returned. The
//!   buffer's initialised length (`buf.len()`) may be larger: it only ever grows, and a reused
//!   registered buffer keeps the initialised length of its previous use.
//! - [`BufferPool::read_buf`] / [`BufferPool::write_buf`] return `None` when the tier is empty;
//!   the async `next_*` variants wait for a buffer to come back. A caller that must not wait can
//!   take an unpooled heap buffer with [`Buf::heap`].
//!
//! This module does not decide how many connections a reactor serves or what to do when a tier
//! runs dry: the driver and the spool make those choices.

use std::cell::{Cell, RefCell};
use std::io;
use std::ops::{Deref, DerefMut};
use std::rc::Rc;

use tokio::sync::Notify;
use tokio_uring::buf::fixed::{FixedBuf, FixedBufPool};
use tokio_uring::buf::{BoundedBuf, IoBuf, IoBufMut};

/// Capacity of one read-tier buffer: a socket read of SMTP commands or body.
pub const DEFAULT_READ_BUF_SIZE: usize = 16 * 1024;

/// Capacity of one write-tier buffer: one spool write (a few frames or one Data frame).
pub const DEFAULT_WRITE_BUF_SIZE: usize = 64 * 1024;

/// Capacity of a *small* buffer: the spool writer starts every message in one of these (plain heap
/// memory, never registered) and moves it into a write-tier buffer only when the message
/// outgrows it. Envelope, `Received:` header and a body of a couple of KiB fit, so a small
/// message, and a slow sender stalled early in DATA, never holds a 64 KiB write buffer.
pub const SMALL_BUF_SIZE: usize = 4 * 1024;

/// Free small buffers a pool keeps for reuse (per reactor, 1 MiB); more are freed. Bounds the
/// memory kept after a burst of thousands of concurrent messages.
const SMALL_FREE_MAX: usize = 256;

/// The most buffers one registered set may hold: tokio-uring takes at most `UIO_MAXIOV` (1024).
pub const MAX_REGISTERED_BUFS: usize = 1024;

/// Pool size per reactor when `RLIMIT_MEMLOCK` is unlimited.
pub const UNLIMITED_POOL_BYTES: usize = 32 * 1024 * 1024;

/// Fraction of `RLIMIT_MEMLOCK` (in quarters) given to registered buffers; the rest is headroom
/// for the rings themselves on older kernels and for other locked memory.
const MEMLOCK_SHARE_QUARTERS: u64 = 3;

/// A heap allocation is not page aligned, so a registered buffer may pin one page more than its
/// size; count that page against the limit.
const PAGE: usize = 4096;

/// The smallest sensible pool: below this, registration is not worth trying.
const MIN_READ_BUFS: usize = 4;
/// See [`MIN_READ_BUFS`].
const MIN_WRITE_BUFS: usize = 2;

/// How many buffers of which size a reactor's pool holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferConfig {
    /// Capacity of a read-tier buffer (socket reads). Must differ from `write_buf_size`.
    pub read_buf_size: usize,
    /// Number of read-tier buffers.
    pub read_bufs: usize,
    /// Capacity of a write-tier buffer (spool writes). Must differ from `read_buf_size`.
    pub write_buf_size: usize,
    /// Number of write-tier buffers.
    pub write_bufs: usize,
}

impl BufferConfig {
    /// Sizes the pool of one reactor out of `reactors` so that all of them together stay within
    /// three quarters of `memlock` bytes (registered memory is accounted per user, so every
    /// reactor's ring draws on the same limit). One third of the budget goes to write buffers.
    /// `u64::MAX` means unlimited ([`UNLIMITED_POOL_BYTES`] per reactor).
    pub fn for_memlock(memlock: u64, reactors: usize) -> Self {
        let reactors = reactors.max(1) as u64;
        let budget = if memlock == u64::MAX {
            UNLIMITED_POOL_BYTES
        } else {
            usize::try_from(memlock / 4 * MEMLOCK_SHARE_QUARTERS / reactors).unwrap_or(usize::MAX)
        };
        let read_cost = DEFAULT_READ_BUF_SIZE + PAGE;
        let write_cost = DEFAULT_WRITE_BUF_SIZE + PAGE;
        let write_bufs = (budget / 3 / write_cost).max(MIN_WRITE_BUFS);
        let rest = budget.saturating_sub(write_bufs * write_cost);
        let read_bufs = (rest / read_cost)
            .max(MIN_READ_BUFS)
            .min(MAX_REGISTERED_BUFS - write_bufs.min(MAX_REGISTERED_BUFS / 2));
        let write_bufs = write_bufs.min(MAX_REGISTERED_BUFS - read_bufs);
        Self {
            read_buf_size: DEFAULT_READ_BUF_SIZE,
            read_bufs,
            write_buf_size: DEFAULT_WRITE_BUF_SIZE,
            write_bufs,
        }
    }

    /// [`BufferConfig::for_memlock`] with this process's soft `RLIMIT_MEMLOCK`.
    pub fn from_rlimit(reactors: usize) -> Self {
        Self::for_memlock(crate::sys::memlock_limit(), reactors)
    }

    /// Bytes this pool may pin, counting one extra page per buffer.
    pub fn pinned_bytes(&self) -> usize {
        self.read_bufs * (self.read_buf_size + PAGE)
            + self.write_bufs * (self.write_buf_size + PAGE)
    }
}

impl Default for BufferConfig {
    /// A small pool (one reactor, 8 MiB memlock): what tests and tools need.
    fn default() -> Self {
        Self::for_memlock(8 * 1024 * 1024, 1)
    }
}

/// One reactor's buffers (cheap to clone: a shared handle; not `Send`).
#[derive(Clone)]
pub struct BufferPool {
    inner: Rc<PoolInner>,
}

struct PoolInner {
    config: BufferConfig,
    /// The registered set, when registration succeeded.
    fixed: Option<FixedBufPool<Vec<u8>>>,
    /// Used instead of `fixed` when it is `None`.
    read_heap: Rc<HeapTier>,
    /// See `read_heap`.
    write_heap: Rc<HeapTier>,
    /// Small heap buffers ([`SMALL_BUF_SIZE`]): never run out, at most [`SMALL_FREE_MAX`] kept.
    small_heap: Rc<HeapTier>,
}

impl BufferPool {
    /// Allocates the pool and registers it with the current tokio-uring ring. Call it once per
    /// reactor inside `tokio_uring::start`, before other I/O on that ring (registration waits
    /// for in-flight operations). If the kernel refuses (`EPERM`, `ENOMEM`: usually
    /// `RLIMIT_MEMLOCK`), logs one warning and returns a pool of plain heap buffers with the same
    /// sizes and counts, so callers work either way.
    ///
    /// # Panics
    /// Outside a tokio-uring runtime (tokio-uring's own rule for registration).
    pub fn register(config: BufferConfig) -> Self {
        let config = normalize(config);
        let bufs = std::iter::repeat_with(|| Vec::with_capacity(config.read_buf_size))
            .take(config.read_bufs)
            .chain(
                std::iter::repeat_with(|| Vec::with_capacity(config.write_buf_size))
                    .take(config.write_bufs),
            );
        let fixed = FixedBufPool::new(bufs);
        match fixed.register() {
            Ok(()) => Self::build(config, Some(fixed)),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    pinned_bytes = config.pinned_bytes(),
                    memlock = crate::sys::memlock_limit(),
                    "cannot register io_uring fixed buffers (raise RLIMIT_MEMLOCK, e.g. \
                     LimitMEMLOCK= in the systemd unit); using plain heap buffers"
                );
                Self::build(config, None)
            }
        }
    }

    /// A pool of plain heap buffers (no registration, usable outside a runtime): for tests and
    /// tools, or when the operator turned registered buffers off.
    pub fn heap_only(config: BufferConfig) -> Self {
        Self::build(normalize(config), None)
    }

    fn build(config: BufferConfig, fixed: Option<FixedBufPool<Vec<u8>>>) -> Self {
        Self {
            inner: Rc::new(PoolInner {
                config,
                fixed,
                read_heap: HeapTier::new(config.read_buf_size, config.read_bufs, config.read_bufs),
                write_heap: HeapTier::new(
                    config.write_buf_size,
                    config.write_bufs,
                    config.write_bufs,
                ),
                small_heap: HeapTier::new(SMALL_BUF_SIZE, usize::MAX, SMALL_FREE_MAX),
            }),
        }
    }

    /// The sizes and counts in use.
    pub fn config(&self) -> BufferConfig {
        self.inner.config
    }

    /// Whether the buffers are registered with the ring (else they are heap buffers).
    pub fn is_registered(&self) -> bool {
        self.inner.fixed.is_some()
    }

    /// A free read-tier buffer, or `None` if all are in use.
    pub fn read_buf(&self) -> Option<Buf> {
        self.try_take(self.inner.config.read_buf_size, &self.inner.read_heap)
    }

    /// A read-tier buffer, waiting until one is returned if all are in use.
    pub async fn next_read_buf(&self) -> Buf {
        self.take(self.inner.config.read_buf_size, &self.inner.read_heap)
            .await
    }

    /// A free write-tier buffer, or `None` if all are in use.
    pub fn write_buf(&self) -> Option<Buf> {
        self.try_take(self.inner.config.write_buf_size, &self.inner.write_heap)
    }

    /// A write-tier buffer, waiting until one is returned if all are in use.
    pub async fn next_write_buf(&self) -> Buf {
        self.take(self.inner.config.write_buf_size, &self.inner.write_heap)
            .await
    }

    /// A small heap buffer of [`SMALL_BUF_SIZE`] bytes, reused from this pool's free list when
    /// one is there; never fails and never waits (there is no limit on how many are out).
    pub fn small_buf(&self) -> Buf {
        match HeapTier::try_take(&self.inner.small_heap) {
            Some(b) => Buf::Heap(b),
            // Unreachable: the small tier's checkout limit is `usize::MAX`.
            None => Buf::heap(SMALL_BUF_SIZE),
        }
    }

    fn try_take(&self, cap: usize, heap: &Rc<HeapTier>) -> Option<Buf> {
        match &self.inner.fixed {
            Some(fixed) => fixed.try_next(cap).map(Buf::Fixed),
            None => HeapTier::try_take(heap).map(Buf::Heap),
        }
    }

    async fn take(&self, cap: usize, heap: &Rc<HeapTier>) -> Buf {
        match &self.inner.fixed {
            Some(fixed) => Buf::Fixed(fixed.next(cap).await),
            None => Buf::Heap(HeapTier::take(heap).await),
        }
    }
}

impl std::fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufferPool")
            .field("config", &self.inner.config)
            .field("registered", &self.is_registered())
            .finish()
    }
}

/// Keeps the tiers apart (the pool selects a tier by capacity) and within tokio-uring's cap.
fn normalize(mut c: BufferConfig) -> BufferConfig {
    c.read_buf_size = c.read_buf_size.max(512);
    c.write_buf_size = c.write_buf_size.max(512);
    if c.write_buf_size == c.read_buf_size {
        c.write_buf_size += PAGE;
    }
    c.read_bufs = c.read_bufs.min(MAX_REGISTERED_BUFS);
    c.write_bufs = c.write_bufs.min(MAX_REGISTERED_BUFS - c.read_bufs);
    c
}

/// A buffer checked out of a [`BufferPool`] (or an unpooled heap buffer).
///
/// Pass the inner value to tokio-uring: `Fixed` to `read_fixed` / `write_fixed_at`, `Heap` to
/// `read` / `write_at`; or use the methods [`Buf::read_from`] and [`Buf::write_all_at`], which
/// pick the right call.
#[derive(Debug)]
pub enum Buf {
    /// A registered buffer (returns to the pool when dropped).
    Fixed(FixedBuf),
    /// A heap buffer (returns to the pool's heap tier when dropped, if it came from one).
    Heap(HeapBuf),
}

impl Buf {
    /// An unpooled heap buffer of `capacity` bytes, for when a tier is empty and waiting is not
    /// an option.
    pub fn heap(capacity: usize) -> Self {
        Self::Heap(HeapBuf {
            vec: Vec::with_capacity(capacity),
            home: None,
        })
    }

    /// An unpooled heap buffer of `len` zero bytes, all initialised (`len()` is `len`). Large
    /// ones come from `calloc`, so their pages are not touched until read.
    pub fn heap_zeroed(len: usize) -> Self {
        Self::Heap(HeapBuf {
            vec: vec![0; len],
            home: None,
        })
    }

    /// Total capacity in bytes.
    pub fn capacity(&self) -> usize {
        match self {
            Self::Fixed(b) => IoBuf::bytes_total(b),
            Self::Heap(b) => b.vec.capacity(),
        }
    }

    /// Whether this is a registered buffer.
    pub fn is_fixed(&self) -> bool {
        matches!(self, Self::Fixed(_))
    }

    /// Copies as much of `src` as fits to position `pos`, extending the initialised length
    /// (`len()`) as needed; returns the number of bytes copied. `pos` must not exceed `len()`
    /// (the initialised part stays a prefix); a larger `pos` copies nothing.
    pub fn put_at(&mut self, pos: usize, src: &[u8]) -> usize {
        if pos > self.len() {
            return 0;
        }
        let n = src.len().min(self.capacity() - pos);
        match self {
            Self::Fixed(b) => {
                let dst = IoBufMut::stable_mut_ptr(b);
                // SAFETY: `pos + n <= bytes_total()`, so the destination range lies inside the
                // registered allocation this handle exclusively owns; `src` is a shared slice
                // of other memory, so the ranges cannot overlap. Bytes up to `pos` were already
                // initialised and we initialise `pos..pos + n`, so the prefix rule of
                // `set_init` holds.
                unsafe {
                    std::ptr::copy_nonoverlapping(src.as_ptr(), dst.add(pos), n);
                    IoBufMut::set_init(b, pos + n);
                }
            }
            Self::Heap(b) => {
                let end = pos + n;
                if end > b.vec.len() {
                    b.vec.resize(end, 0);
                }
                b.vec[pos..end].copy_from_slice(&src[..n]);
            }
        }
        n
    }

    /// Reads once from a socket into the buffer (`read_fixed` for registered buffers). The valid
    /// bytes are `buf[..n]`.
    pub async fn read_from(
        self,
        stream: &tokio_uring::net::TcpStream,
    ) -> (io::Result<usize>, Self) {
        match self {
            Self::Fixed(b) => {
                let (res, b) = stream.read_fixed(b).await;
                (res, Self::Fixed(b))
            }
            Self::Heap(b) => {
                let (res, b) = stream.read(b).await;
                (res, Self::Heap(b))
            }
        }
    }

    /// Writes `self[..len]` at file offset `pos`, retrying short writes (`write_fixed_at` for
    /// registered buffers).
    ///
    /// # Errors
    /// The first error of the underlying writes; `WriteZero` if the kernel wrote nothing.
    /// `InvalidInput` if `len` exceeds the initialised length.
    pub async fn write_all_at(
        self,
        file: &tokio_uring::fs::File,
        len: usize,
        pos: u64,
    ) -> (io::Result<()>, Self) {
        if len > self.len() {
            let e = io::Error::new(
                io::ErrorKind::InvalidInput,
                "write beyond initialised bytes",
            );
            return (Err(e), self);
        }
        let mut done = 0;
        match self {
            Self::Fixed(mut b) => {
                while done < len {
                    let (res, slice) = file
                        .write_fixed_at(b.slice(done..len), pos + done as u64)
                        .await;
                    b = slice.into_inner();
                    match res {
                        Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), Self::Fixed(b)),
                        Ok(n) => done += n,
                        Err(e) => return (Err(e), Self::Fixed(b)),
                    }
                }
                (Ok(()), Self::Fixed(b))
            }
            Self::Heap(mut b) => {
                while done < len {
                    let (res, slice) = file
                        .write_at(b.slice(done..len), pos + done as u64)
                        .submit()
                        .await;
                    b = slice.into_inner();
                    match res {
                        Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), Self::Heap(b)),
                        Ok(n) => done += n,
                        Err(e) => return (Err(e), Self::Heap(b)),
                    }
                }
                (Ok(()), Self::Heap(b))
            }
        }
    }
}

impl Deref for Buf {
    type Target = [u8];
    /// The initialised bytes.
    fn deref(&self) -> &[u8] {
        match self {
            Self::Fixed(b) => b,
            Self::Heap(b) => &b.vec,
        }
    }
}

impl DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut [u8] {
        match self {
            Self::Fixed(b) => b,
            Self::Heap(b) => &mut b.vec,
        }
    }
}

/// A plain heap buffer usable in tokio-uring operations; returns to its pool tier when dropped.
pub struct HeapBuf {
    vec: Vec<u8>,
    home: Option<Rc<HeapTier>>,
}

impl std::fmt::Debug for HeapBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeapBuf")
            .field("len", &self.vec.len())
            .field("capacity", &self.vec.capacity())
            .field("pooled", &self.home.is_some())
            .finish()
    }
}

impl Drop for HeapBuf {
    fn drop(&mut self) {
        if let Some(home) = self.home.take() {
            let mut vec = std::mem::take(&mut self.vec);
            vec.clear();
            let mut free = home.free.borrow_mut();
            if free.len() < home.keep {
                free.push(vec);
            }
            drop(free);
            home.out.set(home.out.get() - 1);
            home.notify.notify_one();
        }
    }
}

// SAFETY: delegates to `Vec<u8>`, whose heap allocation does not move while the `HeapBuf` is
// moved (the pointer stays stable), and whose length never exceeds its capacity.
unsafe impl IoBuf for HeapBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.vec.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.vec.len()
    }
    fn bytes_total(&self) -> usize {
        self.vec.capacity()
    }
}

// SAFETY: as for `IoBuf` above; `set_init` keeps `Vec`'s invariant because callers promise the
// bytes up to `pos` (within capacity) are initialised.
unsafe impl IoBufMut for HeapBuf {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.vec.as_mut_ptr()
    }
    unsafe fn set_init(&mut self, pos: usize) {
        if self.vec.len() < pos {
            // SAFETY: the caller guarantees `..pos` is initialised and `pos <= capacity`.
            unsafe { self.vec.set_len(pos) };
        }
    }
}

/// A bounded free list of heap buffers of one size (the fallback for one tier, and the small
/// buffers).
struct HeapTier {
    cap: usize,
    /// At most this many checked out at once.
    max: usize,
    /// At most this many kept on the free list.
    keep: usize,
    free: RefCell<Vec<Vec<u8>>>,
    /// Buffers checked out.
    out: Cell<usize>,
    notify: Notify,
}

impl HeapTier {
    fn new(cap: usize, max: usize, keep: usize) -> Rc<Self> {
        Rc::new(Self {
            cap,
            max,
            keep,
            free: RefCell::new(Vec::new()),
            out: Cell::new(0),
            notify: Notify::new(),
        })
    }

    fn try_take(this: &Rc<Self>) -> Option<HeapBuf> {
        if this.out.get() >= this.max {
            return None;
        }
        let vec = this
            .free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(this.cap));
        this.out.set(this.out.get() + 1);
        Some(HeapBuf {
            vec,
            home: Some(Rc::clone(this)),
        })
    }

    async fn take(this: &Rc<Self>) -> HeapBuf {
        loop {
            let notified = this.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(b) = Self::try_take(this) {
                return b;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memlock_budget_is_respected() {
        for reactors in [1, 2, 4, 16] {
            let c = BufferConfig::for_memlock(8 << 20, reactors);
            assert!(c.pinned_bytes() * reactors <= 6 << 20, "{c:?} x{reactors}");
            assert!(c.read_bufs >= MIN_READ_BUFS && c.write_bufs >= MIN_WRITE_BUFS);
        }
        let c = BufferConfig::for_memlock(u64::MAX, 1);
        assert!(c.read_bufs + c.write_bufs <= MAX_REGISTERED_BUFS);
        assert!(c.pinned_bytes() <= UNLIMITED_POOL_BYTES + MAX_REGISTERED_BUFS * PAGE);
        let c = BufferConfig::for_memlock(8 << 20, 1);
        assert!(c.write_bufs >= 8, "{c:?}");
    }

    #[test]
    fn heap_tier_is_bounded_and_recycles() {
        let pool = BufferPool::heap_only(BufferConfig {
            read_buf_size: 1024,
            read_bufs: 2,
            write_buf_size: 4096,
            write_bufs: 1,
        });
        let a = pool.read_buf().map(|b| b.capacity());
        let b = pool.read_buf();
        assert_eq!(a, Some(1024));
        assert!(b.is_some());
        // `a` was dropped right away, so one is free again, then none.
        let c = pool.read_buf();
        assert!(c.is_some());
        assert!(pool.read_buf().is_none());
        let w = pool.write_buf();
        assert_eq!(w.as_ref().map(|w| w.capacity()), Some(4096));
        assert!(pool.write_buf().is_none());
        drop(w);
        assert!(pool.write_buf().is_some());
    }

    #[test]
    fn small_buffers_never_run_out_and_a_few_are_reused() {
        let pool = BufferPool::heap_only(BufferConfig::default());
        let many: Vec<Buf> = (0..SMALL_FREE_MAX + 10).map(|_| pool.small_buf()).collect();
        assert!(many
            .iter()
            .all(|b| b.capacity() >= SMALL_BUF_SIZE && !b.is_fixed()));
        drop(many);
        assert_eq!(pool.inner.small_heap.free.borrow().len(), SMALL_FREE_MAX);
        assert_eq!(pool.inner.small_heap.out.get(), 0);
        let mut b = pool.small_buf();
        assert_eq!(b.len(), 0, "a reused buffer comes back empty");
        b.put_at(0, b"x");
        assert_eq!(
            pool.inner.small_heap.free.borrow().len(),
            SMALL_FREE_MAX - 1
        );
    }

    #[test]
    fn put_at_keeps_prefix_rule() {
        let mut b = Buf::heap(8);
        assert_eq!(b.put_at(0, b"abc"), 3);
        assert_eq!(b.put_at(5, b"x"), 0, "gap after the initialised prefix");
        assert_eq!(b.put_at(3, b"defghij"), 5);
        assert_eq!(&b[..], b"abcdefgh");
        assert_eq!(b.put_at(1, b"Z"), 1);
        assert_eq!(&b[..], b"aZcdefgh");
    }

    #[test]
    fn failed_registration_falls_back_to_heap_buffers() {
        tokio_uring::start(async {
            let cfg = BufferConfig {
                read_buf_size: 4096,
                read_bufs: 1,
                write_buf_size: 8192,
                write_bufs: 1,
            };
            let first = BufferPool::register(cfg);
            // One registered set per ring: the second registration is refused.
            let second = BufferPool::register(cfg);
            assert!(!second.is_registered());
            let mut b = second.write_buf().expect("heap tier has a buffer");
            assert!(!b.is_fixed());
            assert!(second.write_buf().is_none(), "same count as configured");
            let dir = tempfile::tempdir().unwrap();
            let file = tokio_uring::fs::File::create(dir.path().join("f"))
                .await
                .unwrap();
            b.put_at(0, b"heap path");
            let (res, _b) = b.write_all_at(&file, 9, 0).await;
            res.unwrap();
            assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"heap path");
            drop(first);
        });
    }

    #[test]
    fn registered_pool_reads_and_writes() {
        tokio_uring::start(async {
            let pool = BufferPool::register(BufferConfig {
                read_buf_size: 4096,
                read_bufs: 2,
                write_buf_size: 8192,
                write_bufs: 2,
            });
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("f");
            let file = tokio_uring::fs::File::create(&path).await.unwrap();
            let mut w = pool.next_write_buf().await;
            assert_eq!(w.capacity(), 8192);
            assert_eq!(w.put_at(0, b"hello registered world"), 22);
            let (res, w) = w.write_all_at(&file, 22, 3).await;
            res.unwrap();
            assert_eq!(w.is_fixed(), pool.is_registered());
            file.sync_all().await.unwrap();
            let data = std::fs::read(&path).unwrap();
            assert_eq!(&data[3..], b"hello registered world");
            assert_eq!(&data[..3], &[0, 0, 0]);
        });
    }
}
