//! The durable spool: append-only segment files, one writer per reactor, group commit.
//!
//! (Stub API; the real module replaces it.)

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::SystemTime;

use crate::buffers::BufferPool;
use crate::smtp::Envelope;

pub mod tool;

/// How commits reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// fdatasync before every ack, shared by all commits that arrive meanwhile.
    Group,
    /// No fsync at all (testing only).
    None,
}

/// Settings of one reactor's writer.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// The spool directory.
    pub dir: PathBuf,
    /// This reactor's index (part of segment names and message ids).
    pub reactor: u16,
    /// Roll the segment at this size.
    pub segment_size: u64,
    /// fsync policy.
    pub sync: SyncPolicy,
    /// Our hostname, for the Received: header.
    pub hostname: String,
}

/// What the spool failed at.
#[derive(Debug)]
pub enum SpoolError {
    /// ENOSPC / EDQUOT.
    NoSpace,
    /// Any other I/O error.
    Io(io::Error),
}

/// Per-connection facts recorded with the envelope.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// The client's address.
    pub client_ip: IpAddr,
    /// When DATA started.
    pub received_at: SystemTime,
}

/// A reactor's spool writer (cheap to clone; not `Send`).
#[derive(Clone)]
pub struct Spool {}

/// One message being written.
pub struct MessageWriter {}

/// Counters of a writer.
#[derive(Debug, Clone, Default)]
pub struct SpoolStats {
    /// fdatasync calls completed.
    pub fsyncs: u64,
    /// Messages committed.
    pub commits: u64,
}

impl Spool {
    /// Opens (recovering its newest segment) this reactor's writer.
    pub async fn open(config: SpoolConfig, buffers: BufferPool) -> Result<Self, SpoolError> {
        let _ = (config, buffers);
        todo!()
    }
    /// Starts a message: assigns its id and writes the Envelope frame and Received: header.
    pub fn begin(&self, envelope: &Envelope, arrival: &Arrival) -> MessageWriter {
        let _ = (envelope, arrival);
        todo!()
    }
    /// Counters so far.
    pub fn stats(&self) -> SpoolStats {
        todo!()
    }
    /// Syncs and closes the segment.
    pub async fn close(&self) -> Result<(), SpoolError> {
        todo!()
    }
}

impl MessageWriter {
    /// The printable message id.
    pub fn id(&self) -> &str {
        todo!()
    }
    /// Copies body bytes into (registered) buffers; never waits.
    pub fn push(&mut self, bytes: &[u8]) {
        let _ = bytes;
        todo!()
    }
    /// Writes the full buffers out as Data frames.
    pub async fn flush(&mut self) -> Result<(), SpoolError> {
        todo!()
    }
    /// Writes the rest and the Commit frame and waits for the group fdatasync.
    pub async fn commit(self) -> Result<String, SpoolError> {
        todo!()
    }
    /// Drops the message (writes an Abort frame).
    pub async fn abort(self) {
        todo!()
    }
}
