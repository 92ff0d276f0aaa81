//! Reading the spool without a server: committed messages (metadata first, bytes on demand) and
//! a CRC walk that reports what it found. Synchronous `std::fs`; safe to run while a server
//! writes (it reads only the valid prefix of each segment).
//!
//! Rules: a segment is trusted up to its first frame that does not check out; a message is
//! returned only if its Envelope, all its Data frames and its Commit frame lie in that prefix
//! and the Commit record (size, frame count, whole-message crc32c) matches them. Incomplete,
//! aborted and torn messages are counted, never returned. This module does not modify segments
//! (recovery in `segment` does).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;

use super::appender::APPENDER_REACTOR;
use super::frame::{CommitRecord, EnvelopeRecord, FrameHeader, Kind, SegmentRecord, HEADER_LEN};
use super::id::MessageId;
use super::segment::{self, SegmentName, Step, Walker};

/// How much of a message [`StoredMessage::subject`] reads to find the header section.
pub const HEAD_LIMIT: usize = 64 * 1024;

/// A committed message: where it is and what its envelope says. The bytes are read on demand.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    /// Its id.
    pub id: MessageId,
    /// The envelope and client facts.
    pub envelope: EnvelopeRecord,
    /// Size of the stored message (Received: header included).
    pub size: u64,
    /// The segment holding it.
    pub segment: PathBuf,
    /// Offset of its Commit frame in the segment (messages appear in this order).
    pub commit_offset: u64,
    /// (offset, length) of each Data payload.
    extents: Vec<(u64, u32)>,
    crc: u32,
}

impl StoredMessage {
    /// The id as printed.
    pub fn id_string(&self) -> String {
        self.id.to_string()
    }

    /// When DATA started.
    pub fn received_at(&self) -> SystemTime {
        self.envelope.received_at()
    }

    /// The whole stored message (RFC 5322 bytes, our Received: header first), verified against
    /// the Commit frame's crc32c.
    ///
    /// # Errors
    /// Reading failed, or the bytes no longer match (`InvalidData`).
    pub fn read_data(&self) -> io::Result<Vec<u8>> {
        let mut v = Vec::with_capacity(usize::try_from(self.size).unwrap_or(0));
        self.write_data(&mut v)?;
        Ok(v)
    }

    /// Streams the message to `out`, one Data frame at a time, verifying the whole-message
    /// crc32c at the end.
    ///
    /// # Errors
    /// Reading or writing failed, or the bytes no longer match (`InvalidData`, after they were
    /// written).
    pub fn write_data(&self, out: &mut dyn Write) -> io::Result<()> {
        let f = File::open(&self.segment)?;
        let mut crc = 0u32;
        let mut buf = Vec::new();
        for &(off, len) in &self.extents {
            buf.resize(len as usize, 0);
            f.read_exact_at(&mut buf, off)?;
            crc = crc32c::crc32c_append(crc, &buf);
            out.write_all(&buf)?;
        }
        if crc != self.crc {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("message {} changed on disk (crc mismatch)", self.id),
            ));
        }
        Ok(())
    }

    /// The first `max` bytes of the message (unverified).
    ///
    /// # Errors
    /// Reading failed.
    pub fn read_head(&self, max: usize) -> io::Result<Vec<u8>> {
        let f = File::open(&self.segment)?;
        let mut v = Vec::new();
        for &(off, len) in &self.extents {
            let take = (len as usize).min(max - v.len());
            let start = v.len();
            v.resize(start + take, 0);
            f.read_exact_at(&mut v[start..], off)?;
            if v.len() == max {
                break;
            }
        }
        Ok(v)
    }

    /// The decoded Subject (RFC 2047 encoded words, legacy charsets included), if any.
    ///
    /// # Errors
    /// Reading failed.
    pub fn subject(&self) -> io::Result<Option<String>> {
        let head = self.read_head(HEAD_LIMIT)?;
        let end = memchr::memmem::find(&head, b"\r\n\r\n").map_or(head.len(), |i| i + 4);
        let parsed = mail_parser::MessageParser::default().parse_headers(&head[..end]);
        Ok(parsed.and_then(|m| m.subject().map(str::to_string)))
    }
}

/// What is wrong at the end of a segment's valid prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DamageKind {
    /// Nothing valid follows: an interrupted write at the end (normal after a crash).
    TornTail,
    /// Valid frames follow, but the segment is not sealed: writes that were in flight at a
    /// crash landed out of order. Nothing acknowledged lies beyond; the writer's recovery cuts
    /// it at next start.
    CrashGap,
    /// Valid frames follow in a sealed segment: damage in the middle.
    Corrupt,
}

/// Where a segment's valid prefix ends and why.
#[derive(Debug, Clone, Serialize)]
pub struct Damage {
    /// Classification.
    pub kind: DamageKind,
    /// End of the valid prefix.
    pub offset: u64,
    /// The frame error there.
    pub error: String,
    /// Offset of the next valid frame, if any.
    pub resumes_at: Option<u64>,
}

/// The result of walking one segment.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SegmentReport {
    /// The file.
    pub path: PathBuf,
    /// Reactor and sequence number from the file name.
    pub reactor: u16,
    /// See `reactor`.
    pub seq: u64,
    /// File length.
    pub file_len: u64,
    /// End of the valid prefix.
    pub valid_end: u64,
    /// Valid frames.
    pub frames: u64,
    /// Committed messages (whole and verified).
    pub committed: u64,
    /// Aborted messages.
    pub aborted: u64,
    /// Messages begun but neither committed nor aborted within the valid prefix.
    pub incomplete: u64,
    /// Whether the segment ends with a Seal frame.
    pub sealed: bool,
    /// Damage at the end of the valid prefix, if the file goes on after it (not when all it
    /// goes on with is zeros, see `zero_tail`).
    pub damage: Option<Damage>,
    /// Bytes of zeros after the valid prefix: space the writer prepared ahead of its appends
    /// (a live segment, or one a crash left), the clean end of the log, not damage. Found only
    /// when classifying (`check`); 0 otherwise.
    pub zero_tail: u64,
    /// Inconsistencies among valid frames (each one is corruption).
    pub anomalies: Vec<String>,
}

impl SegmentReport {
    /// Whether this segment shows corruption (as opposed to a torn tail or crash gap).
    pub fn is_corrupt(&self) -> bool {
        !self.anomalies.is_empty()
            || self
                .damage
                .as_ref()
                .is_some_and(|d| d.kind == DamageKind::Corrupt)
    }
}

#[derive(Debug)]
struct Partial {
    envelope: EnvelopeRecord,
    extents: Vec<(u64, u32)>,
    size: u64,
    crc: u32,
}

impl Partial {
    /// A message whose envelope frame was just read, before any body.
    fn new(envelope: EnvelopeRecord) -> Self {
        Self {
            envelope,
            extents: Vec::new(),
            size: 0,
            crc: 0,
        }
    }
}

/// Walks one segment, calling `each` for every committed message in commit order. With
/// `classify`, also looks past the end of the valid prefix to classify the damage (reads the
/// rest of the file).
///
/// # Errors
/// A read failed, or `each` returned an error.
pub fn scan_segment(
    path: &Path,
    classify: bool,
    mut each: impl FnMut(StoredMessage) -> io::Result<()>,
) -> io::Result<SegmentReport> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(SegmentName::parse);
    let mut rep = SegmentReport {
        path: path.to_path_buf(),
        reactor: name.map_or(0, |n| n.reactor),
        seq: name.map_or(0, |n| n.seq),
        ..SegmentReport::default()
    };
    let mut w = Walker::open(path)?;
    rep.file_len = w.file_len();
    let mut open: HashMap<u64, Partial> = HashMap::new();
    let mut after_seal = false;
    let mut invalid = None;
    loop {
        let (offset, header, payload) = match w.next_step()? {
            Step::Frame {
                offset,
                header,
                payload,
                ..
            } => (offset, header, payload),
            Step::End => break,
            Step::Invalid { offset, error } => {
                invalid = Some((offset, error));
                break;
            }
        };
        rep.frames += 1;
        if after_seal {
            rep.anomalies
                .push(format!("frame at {offset} after the Seal frame"));
            after_seal = false;
        }
        if rep.frames == 1 && header.kind != Kind::Segment {
            rep.anomalies
                .push("first frame is not a Segment frame".into());
        }
        match header.kind {
            Kind::Segment => {
                if offset != 0 {
                    rep.anomalies.push(format!("Segment frame at {offset}"));
                } else if SegmentRecord::decode(payload).is_err() {
                    rep.anomalies.push("unreadable Segment frame".into());
                }
            }
            Kind::Envelope => match EnvelopeRecord::decode(payload) {
                Ok(envelope) => {
                    let old = open.insert(header.id, Partial::new(envelope));
                    if old.is_some() {
                        rep.anomalies
                            .push(format!("second Envelope for {}", MessageId(header.id)));
                    }
                }
                Err(_) => rep
                    .anomalies
                    .push(format!("unreadable Envelope for {}", MessageId(header.id))),
            },
            Kind::Data => match open.get_mut(&header.id) {
                Some(p) => {
                    p.extents.push((offset + HEADER_LEN as u64, header.len));
                    p.size += u64::from(header.len);
                    p.crc = crc32c::crc32c_append(p.crc, payload);
                }
                None => rep.anomalies.push(format!(
                    "Data frame at {offset} for unknown message {}",
                    MessageId(header.id)
                )),
            },
            Kind::Commit => {
                let Some(p) = open.remove(&header.id) else {
                    rep.anomalies.push(format!(
                        "Commit for unknown message {}",
                        MessageId(header.id)
                    ));
                    continue;
                };
                match CommitRecord::decode(payload) {
                    Ok(c)
                        if c.size == p.size
                            && c.frames as usize == p.extents.len()
                            && c.crc == p.crc =>
                    {
                        rep.committed += 1;
                        each(StoredMessage {
                            id: MessageId(header.id),
                            envelope: p.envelope,
                            size: p.size,
                            segment: path.to_path_buf(),
                            commit_offset: offset,
                            extents: p.extents,
                            crc: p.crc,
                        })?;
                    }
                    _ => rep.anomalies.push(format!(
                        "Commit of {} does not match its Data frames",
                        MessageId(header.id)
                    )),
                }
            }
            Kind::Abort => {
                if open.remove(&header.id).is_some() {
                    rep.aborted += 1;
                } else {
                    rep.anomalies.push(format!(
                        "Abort for unknown message {}",
                        MessageId(header.id)
                    ));
                }
            }
            Kind::Seal => after_seal = true,
        }
    }
    rep.sealed = after_seal;
    rep.valid_end = w.offset();
    rep.incomplete = open.len() as u64;
    if let Some((offset, _)) = invalid {
        let zeros = classify
            && File::open(path)
                .and_then(|f| segment::is_zero_tail(&f, offset, rep.file_len))
                .unwrap_or(false);
        if zeros {
            rep.zero_tail = rep.file_len - offset;
            invalid = None;
        }
    }
    if let Some((offset, error)) = invalid {
        let resumes_at = if classify {
            segment::next_valid_frame(path, offset)?
        } else {
            None
        };
        let sealed_tail = classify
            && File::open(path)
                .ok()
                .and_then(|f| segment::read_seal(&f))
                .is_some();
        let kind = match resumes_at {
            None => DamageKind::TornTail,
            Some(_) if sealed_tail => DamageKind::Corrupt,
            Some(_) => DamageKind::CrashGap,
        };
        rep.damage = Some(Damage {
            kind,
            offset,
            error: error.to_string(),
            resumes_at,
        });
    }
    Ok(rep)
}

/// Calls `each` for every committed message in `dir`, segment by segment (reactor, then
/// sequence number) in commit order, holding only metadata in memory.
///
/// # Errors
/// Listing or reading failed, or `each` returned an error.
pub fn for_each_message(
    dir: &Path,
    mut each: impl FnMut(StoredMessage) -> io::Result<()>,
) -> io::Result<()> {
    for (_, path) in segment::list_segments(dir)? {
        scan_segment(&path, false, &mut each)?;
    }
    Ok(())
}

/// Every committed message in `dir`, sorted by id (metadata only; read the bytes with
/// [`StoredMessage::read_data`]). An id found in two segments (a message copied forward by
/// compaction whose old segment is not deleted yet) is returned once: the copy, in the
/// later-listed segment.
///
/// # Errors
/// Listing or reading failed.
pub fn read_spool(dir: &Path) -> io::Result<Vec<StoredMessage>> {
    let mut v = Vec::new();
    for_each_message(dir, |m| {
        v.push(m);
        Ok(())
    })?;
    // Stable: among equal ids the listing order stays; keep the last of each run.
    v.sort_by_key(|m| m.id);
    v.reverse();
    v.dedup_by_key(|m| m.id);
    v.reverse();
    Ok(v)
}

/// The committed message with this id, if any. Only segments of the id's reactor and of the
/// delivery thread's appender (which holds copies) are read; a copy wins over its original.
///
/// # Errors
/// Listing or reading failed.
pub fn find_message(dir: &Path, id: MessageId) -> io::Result<Option<StoredMessage>> {
    let mut found = None;
    for (name, path) in segment::list_segments(dir)? {
        if name.reactor != id.reactor() && name.reactor != APPENDER_REACTOR {
            continue;
        }
        scan_segment(&path, false, |m| {
            if m.id == id {
                found = Some(m);
            }
            Ok(())
        })?;
    }
    Ok(found)
}

/// Follows one segment as it grows: each [`Tail::poll`] reads the frames written since the
/// last one and returns the messages whose Commit frame it reached. Used by the delivery stage
/// to learn about new mail without a second copy of it. A frame that does not check out yet (a
/// write in flight, prepared zeros) ends the poll; the next poll tries it again, so a torn frame
/// is never trusted and a completed one is never missed. Reads with `pread` from a fresh file
/// handle each poll (the writer may roll, seal or, after delivery, the file may be deleted).
#[derive(Debug)]
pub struct Tail {
    path: PathBuf,
    offset: u64,
    open: HashMap<u64, Partial>,
    sealed: bool,
}

impl Tail {
    /// A tail at the start of `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            offset: 0,
            open: HashMap::new(),
            sealed: false,
        }
    }

    /// The segment followed.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the Seal frame was read: no message will be added.
    pub fn is_sealed(&self) -> bool {
        self.sealed
    }

    /// Reads what was written since the last poll, calling `each` for every newly committed
    /// message (in commit order).
    ///
    /// # Errors
    /// Opening or reading the file failed.
    pub fn poll(&mut self, mut each: impl FnMut(StoredMessage)) -> io::Result<()> {
        if self.sealed {
            return Ok(());
        }
        let f = File::open(&self.path)?;
        let len = f.metadata()?.len();
        let mut payload = Vec::new();
        while self.offset + HEADER_LEN as u64 <= len {
            let mut h = [0u8; HEADER_LEN];
            f.read_exact_at(&mut h, self.offset)?;
            let Ok(header) = FrameHeader::decode(&h) else {
                break;
            };
            let body = self.offset + HEADER_LEN as u64;
            if body + u64::from(header.len) > len {
                break;
            }
            payload.resize(header.len as usize, 0);
            f.read_exact_at(&mut payload, body)?;
            if !header.verify(&payload) {
                break;
            }
            let offset = self.offset;
            self.offset = body + u64::from(header.len);
            match header.kind {
                Kind::Segment => {}
                Kind::Envelope => {
                    if let Ok(envelope) = EnvelopeRecord::decode(&payload) {
                        self.open.insert(header.id, Partial::new(envelope));
                    }
                }
                Kind::Data => {
                    if let Some(p) = self.open.get_mut(&header.id) {
                        p.extents.push((body, header.len));
                        p.size += u64::from(header.len);
                        p.crc = crc32c::crc32c_append(p.crc, &payload);
                    }
                }
                Kind::Commit => {
                    let Some(p) = self.open.remove(&header.id) else {
                        continue;
                    };
                    if let Ok(c) = CommitRecord::decode(&payload) {
                        if c.size == p.size
                            && c.frames as usize == p.extents.len()
                            && c.crc == p.crc
                        {
                            each(StoredMessage {
                                id: MessageId(header.id),
                                envelope: p.envelope,
                                size: p.size,
                                segment: self.path.clone(),
                                commit_offset: offset,
                                extents: p.extents,
                                crc: p.crc,
                            });
                        }
                    }
                }
                Kind::Abort => {
                    self.open.remove(&header.id);
                }
                Kind::Seal => {
                    self.sealed = true;
                    self.open.clear();
                    break;
                }
            }
        }
        Ok(())
    }
}

/// The result of checking a whole spool.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    /// One report per segment.
    pub segments: Vec<SegmentReport>,
    /// Valid frames in all segments.
    pub frames: u64,
    /// Committed messages.
    pub committed: u64,
    /// Aborted messages.
    pub aborted: u64,
    /// Incomplete messages.
    pub incomplete: u64,
    /// Segments ending in a torn tail.
    pub torn_tails: u64,
    /// Unsealed segments with a crash gap.
    pub crash_gaps: u64,
    /// Segments with corruption.
    pub corrupt: u64,
    /// Committed messages whose id is also in an earlier-listed segment: copies made by
    /// compaction whose original segment is not deleted yet (a stop in between). Not damage:
    /// readers use the copy.
    pub copies: u64,
}

impl CheckReport {
    /// No corruption (torn tails and crash gaps are normal after a crash).
    pub fn is_ok(&self) -> bool {
        self.corrupt == 0
    }
}

/// Walks every segment in `dir`, verifying every CRC and every Commit record.
///
/// # Errors
/// Listing or reading failed.
pub fn check_spool(dir: &Path) -> io::Result<CheckReport> {
    let mut r = CheckReport::default();
    let mut seen = std::collections::HashSet::new();
    for (_, path) in segment::list_segments(dir)? {
        let s = scan_segment(&path, true, |m| {
            if !seen.insert(m.id) {
                r.copies += 1;
            }
            Ok(())
        })?;
        r.frames += s.frames;
        r.committed += s.committed;
        r.aborted += s.aborted;
        r.incomplete += s.incomplete;
        match s.damage.as_ref().map(|d| d.kind) {
            Some(DamageKind::TornTail) => r.torn_tails += 1,
            Some(DamageKind::CrashGap) => r.crash_gaps += 1,
            _ => {}
        }
        if s.is_corrupt() {
            r.corrupt += 1;
        }
        r.segments.push(s);
    }
    Ok(r)
}
