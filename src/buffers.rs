//! Per-reactor registered buffers (io_uring fixed buffers), sized against RLIMIT_MEMLOCK, with a
//! fallback to plain heap buffers. (Stub.)

/// One reactor's buffer pool, shared by its connections (reads) and its spool writer (writes).
#[derive(Clone)]
pub struct BufferPool {}
