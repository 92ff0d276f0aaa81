//! ringmx: a Linux io_uring SMTP ingress appliance (a front-line MX).
//!
//! # Layout
//! - [`sys`]: the libc wrappers (CPU affinity, `RLIMIT_MEMLOCK`/`RLIMIT_NOFILE`, host name,
//!   the spool's reactor lock, free disk space).
//! - [`data`]: the sans-IO DATA scanner (`<CRLF>.<CRLF>` with SIMD memchr, dot-unstuffing).
//! - [`smtp`]: the sans-IO SMTP session (commands, replies, envelope, state machine).
//! - [`buffers`]: per-reactor registered buffers, sized against `RLIMIT_MEMLOCK`.
//! - [`spool`]: the durable segment-log spool (writer with group commit, reader, tools).
//! - [`stats`]: counters, HDR histograms and the unix stats socket.
//! - [`crypto`]: the rustls crypto provider shared by inbound and outbound STARTTLS.
//! - [`dns`]: the shared DNS resolver (its own thread) for MX routes and DNSBL checks.
//! - [`relay`]: onward delivery (routes, MX lookup, queue state, the delivery thread, `queue`
//!   tools).
//! - [`config`]: configuration from the `serve` flags and TOML, checked once.
//! - [`server`]: the io_uring driver (one reactor per core, listeners, connections, shutdown).
//! - [`cmd`]: the command line and the subcommand front ends (`serve`, `check-config`,
//!   `stats`, `spool`); `main.rs` only calls [`cmd::run`].
//!
//! # Dependency rule
//!
//! The modules form layers; a module imports (`use crate::…`, or a `crate::…` path anywhere,
//! doc links included) only the modules listed for it here, all of them below it:
//!
//! ```text
//!   cmd                       the top: nothing imports it
//!    └─ server                drives everything below; imported only by cmd
//!        ├─ config            relay, smtp, spool, sys
//!        ├─ relay             crypto, dns, stats, smtp, spool, sys
//!        ├─ stats             smtp, spool, sys
//!        ├─ spool             buffers, sys
//!        │   └─ buffers       sys
//!        ├─ smtp              data          ┐ the sans-IO core: no I/O, and nothing
//!        │   └─ data          (nothing)     ┘ else from this crate
//!        ├─ crypto            (nothing)       leaf: the rustls crypto provider
//!        ├─ dns               (nothing)       leaf: hickory-resolver on its own thread
//!        └─ sys               (nothing)       leaf: libc only
//! ```
//!
//! So `smtp` and `data` depend on nothing outside themselves, and nothing below `server`
//! imports `server`, `config` or `cmd`: a library module that needs a setting takes it as a
//! parameter or a plain struct (`SessionConfig`, `SpoolConfig`), never the command line.
//! `scripts/check-module-graph.sh` checks this table (CI runs it); change both together.

pub mod buffers;
pub mod cmd;
pub mod config;
pub mod crypto;
pub mod data;
pub mod dns;
pub mod relay;
pub mod server;
pub mod smtp;
pub mod spool;
pub mod stats;
pub mod sys;
