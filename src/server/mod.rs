//! The io_uring driver. (Stub.)
