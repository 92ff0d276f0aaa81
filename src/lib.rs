//! ringmx: a Linux io_uring SMTP ingress appliance (a front-line MX).
//!
//! # Layout
//! - [`smtp`]: the sans-IO SMTP session (commands, replies, envelope, state machine).
//! - [`data`]: the sans-IO DATA scanner (`<CRLF>.<CRLF>` with SIMD memchr, dot-unstuffing).
//! - [`spool`]: the durable segment-log spool (writer with group commit, reader, tools).
//! - [`buffers`]: per-reactor registered buffers, sized against `RLIMIT_MEMLOCK`.
//! - [`server`]: the io_uring driver (one reactor per core, listeners, connections, shutdown).
//! - [`stats`]: counters, HDR histograms and the unix stats socket.
//! - [`config`]: configuration from flags and TOML, checked once.
//! - [`cli`]: the command line.
//! - [`sys`]: thin libc wrappers (leaf module).

pub mod buffers;
pub mod cli;
pub mod config;
pub mod data;
pub mod server;
pub mod smtp;
pub mod spool;
pub mod stats;
pub mod sys;
