//! The delivery journal: `<spool>/delivery.journal`, one CRC'd record per delivery outcome.
//!
//! Segments are append-only and written only by their reactor, so what became of a message
//! after it was spooled lives beside them, in one file the delivery stage alone appends to
//! (synchronous `std::fs`; the stage calls it from its own journal thread). A record says that
//! one recipient of one message was delivered, deferred (with the next retry time) or failed,
//! or that a whole message was deleted by the operator, or that its sender was warned of a
//! delay. Delivered and failed records are made
//! durable (one `fdatasync` per batch, group commit) before anything relies on them, above all
//! before a segment is deleted. See docs/spool.md, "Delivery journal".
//!
//! Record: `len u32 | crc u32 | payload`, little-endian, `crc` the crc32c of the payload.
//! Payload: `kind u8 | id u64 | rcpt u32 | at_us u64 | next_us u64 | attempts u32 | code u16 |
//! reply (len u32, UTF-8)`. A reader trusts the file up to the first record that does not check
//! out (a torn tail after a crash); [`Journal::open`] cuts it there.
//!
//! This module does not decide anything about delivery (that is `relay`); it stores and reads
//! records, and rewrites the file compacted ([`Journal::rewrite`]).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::id::MessageId;
use crate::sys;

/// Disk space kept allocated past the journal's end (`fallocate`, size unchanged): on a full
/// disk the stage can still record outcomes, and only those records let it delete finished
/// segments and give the space back. Topped up when less than half is left.
pub const JOURNAL_RESERVE: u64 = 1024 * 1024;

/// The journal's file name inside the spool directory.
pub const JOURNAL_NAME: &str = "delivery.journal";
/// Largest record payload accepted when reading (a reply text is at most a few KiB).
pub const MAX_RECORD: u32 = 64 * 1024;
/// Longest reply text stored in a record (longer ones are cut).
pub const MAX_REPLY_TEXT: usize = 2048;
/// Record header: length and crc.
const RECORD_HEADER: usize = 8;
/// Fixed part of a payload before the reply text.
const FIXED: usize = 1 + 8 + 4 + 8 + 8 + 4 + 2 + 4;

/// What a record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// The next hop took the recipient (2xx after the end of data).
    Delivered = 1,
    /// Not this time; retry at `next_us`.
    Deferred = 2,
    /// Permanent failure (5xx) or expired: held until deleted.
    Failed = 3,
    /// The whole message was deleted (`rcpt` is ignored).
    Deleted = 4,
    /// A delay warning (DSN, `Action: delayed`) for this recipient is spooled: no second one.
    Warned = 5,
}

impl RecordKind {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Delivered,
            2 => Self::Deferred,
            3 => Self::Failed,
            4 => Self::Deleted,
            5 => Self::Warned,
            _ => return None,
        })
    }
}

/// One journal record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    /// What happened.
    pub kind: RecordKind,
    /// The message.
    pub id: MessageId,
    /// The recipient's index in the message's envelope.
    pub rcpt: u32,
    /// When, microseconds since the Unix epoch.
    pub at_us: u64,
    /// Deferred: the next attempt, microseconds since the Unix epoch (0 otherwise).
    pub next_us: u64,
    /// Attempts so far, this one included.
    pub attempts: u32,
    /// The reply code that decided it (0 if none).
    pub code: u16,
    /// The reply (or the local reason), one line.
    pub reply: String,
}

impl DeliveryRecord {
    /// Appends the encoded record to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut text = self.reply.as_str();
        if text.len() > MAX_REPLY_TEXT {
            let mut cut = MAX_REPLY_TEXT;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text = &text[..cut];
        }
        let mut p = Vec::with_capacity(FIXED + text.len());
        p.push(self.kind as u8);
        p.extend_from_slice(&self.id.0.to_le_bytes());
        p.extend_from_slice(&self.rcpt.to_le_bytes());
        p.extend_from_slice(&self.at_us.to_le_bytes());
        p.extend_from_slice(&self.next_us.to_le_bytes());
        p.extend_from_slice(&self.attempts.to_le_bytes());
        p.extend_from_slice(&self.code.to_le_bytes());
        p.extend_from_slice(&(text.len() as u32).to_le_bytes());
        p.extend_from_slice(text.as_bytes());
        out.extend_from_slice(&(p.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32c::crc32c(&p).to_le_bytes());
        out.extend_from_slice(&p);
    }

    fn decode(p: &[u8]) -> Option<Self> {
        let u64_at = |i: usize| {
            p.get(i..i + 8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
        };
        let u32_at = |i: usize| {
            p.get(i..i + 4)
                .map(|b| u32::from_le_bytes(b.try_into().unwrap_or([0; 4])))
        };
        let kind = RecordKind::from_u8(*p.first()?)?;
        let code = u16::from_le_bytes(p.get(33..35)?.try_into().ok()?);
        let len = u32_at(35)? as usize;
        let text = p.get(FIXED..FIXED + len)?;
        if FIXED + len != p.len() {
            return None;
        }
        Some(Self {
            kind,
            id: MessageId(u64_at(1)?),
            rcpt: u32_at(9)?,
            at_us: u64_at(13)?,
            next_us: u64_at(21)?,
            attempts: u32_at(29)?,
            code,
            reply: String::from_utf8(text.to_vec()).ok()?,
        })
    }
}

/// What [`read_journal`] found.
#[derive(Debug, Default)]
pub struct JournalRead {
    /// Every valid record, in order.
    pub records: Vec<DeliveryRecord>,
    /// Where the valid prefix ends.
    pub valid_end: u64,
    /// The file's length (more than `valid_end`: a torn tail).
    pub file_len: u64,
}

/// The journal's path in `dir`.
pub fn journal_path(dir: &Path) -> PathBuf {
    dir.join(JOURNAL_NAME)
}

/// Reads the journal of the spool `dir` (an absent file is empty).
///
/// # Errors
/// Reading failed.
pub fn read_journal(dir: &Path) -> io::Result<JournalRead> {
    let bytes = match std::fs::read(journal_path(dir)) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(JournalRead::default()),
        Err(e) => return Err(e),
    };
    let mut r = JournalRead {
        file_len: bytes.len() as u64,
        ..JournalRead::default()
    };
    let mut at = 0usize;
    while let Some(h) = bytes.get(at..at + RECORD_HEADER) {
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        if len > MAX_RECORD {
            break;
        }
        let Some(p) = bytes.get(at + RECORD_HEADER..at + RECORD_HEADER + len as usize) else {
            break;
        };
        if crc32c::crc32c(p) != crc {
            break;
        }
        let Some(rec) = DeliveryRecord::decode(p) else {
            break;
        };
        r.records.push(rec);
        at += RECORD_HEADER + len as usize;
    }
    r.valid_end = at as u64;
    Ok(r)
}

/// The journal open for appending (the delivery stage's only).
#[derive(Debug)]
pub struct Journal {
    file: File,
    end: u64,
    /// Space is allocated up to here ([`JOURNAL_RESERVE`]; `end` when none could be).
    reserved: u64,
}

impl Journal {
    /// Opens (creating) the journal of `dir`, cuts a torn tail, and returns it with its
    /// records.
    ///
    /// # Errors
    /// Opening, reading, truncating or syncing failed.
    pub fn open(dir: &Path) -> io::Result<(Self, Vec<DeliveryRecord>)> {
        let read = read_journal(dir)?;
        let path = journal_path(dir);
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        if read.file_len > read.valid_end {
            file.set_len(read.valid_end)?;
            file.sync_all()?;
        }
        if !existed {
            sync_dir(dir)?;
        }
        let mut journal = Self {
            file,
            end: read.valid_end,
            reserved: read.valid_end,
        };
        journal.keep_reserve(0);
        Ok((journal, read.records))
    }

    /// Tops the space allocated past the end up to `need` bytes plus [`JOURNAL_RESERVE`] when
    /// less than half of the reserve is left. Best effort: a filesystem without `fallocate`,
    /// or one already full, leaves appends to find space as they go.
    fn keep_reserve(&mut self, need: u64) {
        if self.reserved >= self.end + need + JOURNAL_RESERVE / 2 {
            return;
        }
        let len = need + JOURNAL_RESERVE;
        if sys::reserve(&self.file, self.end, len).is_ok() {
            self.reserved = self.end + len;
        }
    }

    /// Appends `records` and `fdatasync`s them: durable when this returns.
    ///
    /// # Errors
    /// Writing or syncing failed. The journal then still ends where it did (what this wrote
    /// is cut, best effort), so the caller can append the same records again; the next append
    /// rewrites that range, which makes the kernel write its pages again even where a failed
    /// fdatasync left them marked clean.
    pub fn append(&mut self, records: &[DeliveryRecord]) -> io::Result<()> {
        let mut buf = Vec::new();
        for r in records {
            r.encode(&mut buf);
        }
        self.keep_reserve(buf.len() as u64);
        let res = self
            .file
            .write_all_at(&buf, self.end)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = res {
            // A later, shorter append must not leave valid records of this one behind it.
            let _ = self.file.set_len(self.end);
            // Cutting the file frees the blocks past its end too.
            self.reserved = self.end;
            return Err(e);
        }
        self.end += buf.len() as u64;
        Ok(())
    }

    /// The journal's size in bytes.
    pub fn len(&self) -> u64 {
        self.end
    }

    /// Whether the journal is empty.
    pub fn is_empty(&self) -> bool {
        self.end == 0
    }

    /// Replaces the journal of `dir` with `records` (written to a temporary file, synced,
    /// renamed over it, the directory synced) and opens the new one.
    ///
    /// # Errors
    /// Any step failed; the old journal is then still in place.
    pub fn rewrite(dir: &Path, records: &[DeliveryRecord]) -> io::Result<Self> {
        let tmp = dir.join(format!("{JOURNAL_NAME}.tmp"));
        let mut buf = Vec::new();
        for r in records {
            r.encode(&mut buf);
        }
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&buf)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, journal_path(dir))?;
        sync_dir(dir)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(journal_path(dir))?;
        let mut journal = Self {
            file,
            end: buf.len() as u64,
            reserved: buf.len() as u64,
        };
        journal.keep_reserve(0);
        Ok(journal)
    }
}

/// fsyncs a directory (a new or renamed entry in it becomes durable).
///
/// # Errors
/// Opening or syncing failed.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(kind: RecordKind, id: u64, rcpt: u32) -> DeliveryRecord {
        DeliveryRecord {
            kind,
            id: MessageId(id),
            rcpt,
            at_us: 7,
            next_us: 9,
            attempts: 2,
            code: 451,
            reply: "451 4.3.0 later ü".into(),
        }
    }

    #[test]
    fn append_read_torn_tail_and_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, recs) = Journal::open(dir.path()).unwrap();
        assert!(recs.is_empty() && j.is_empty());
        let a = rec(RecordKind::Deferred, 1, 0);
        let b = rec(RecordKind::Delivered, 1, 1);
        j.append(&[a.clone(), b.clone()]).unwrap();
        drop(j);
        // A torn record after them: ignored by readers, cut by the next open.
        let mut bytes = std::fs::read(journal_path(dir.path())).unwrap();
        let good = bytes.len();
        let mut extra = Vec::new();
        rec(RecordKind::Failed, 2, 0).encode(&mut extra);
        bytes.extend_from_slice(&extra[..extra.len() - 3]);
        std::fs::write(journal_path(dir.path()), &bytes).unwrap();
        let r = read_journal(dir.path()).unwrap();
        assert_eq!(r.records, [a.clone(), b.clone()]);
        assert_eq!(r.valid_end, good as u64);
        let (mut j, recs) = Journal::open(dir.path()).unwrap();
        assert_eq!(recs.len(), 2);
        j.append(&[rec(RecordKind::Deleted, 3, 0)]).unwrap();
        assert_eq!(read_journal(dir.path()).unwrap().records.len(), 3);
        let j = Journal::rewrite(dir.path(), std::slice::from_ref(&b)).unwrap();
        assert_eq!(read_journal(dir.path()).unwrap().records, [b]);
        assert!(!j.is_empty());
    }

    #[test]
    fn long_replies_are_cut_on_a_char_boundary() {
        let mut r = rec(RecordKind::Failed, 5, 0);
        r.reply = "é".repeat(MAX_REPLY_TEXT);
        let mut buf = Vec::new();
        r.encode(&mut buf);
        let back = DeliveryRecord::decode(&buf[RECORD_HEADER..]).unwrap();
        assert_eq!(back.reply.len(), MAX_REPLY_TEXT);
    }
}
