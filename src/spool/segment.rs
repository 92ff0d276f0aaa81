//! Segment files on disk: their names (`<reactor>-<seq>.seg`), a sequential frame walker that
//! verifies every CRC, the seal check, and start-up recovery of a reactor's segments.
//!
//! Everything here is synchronous `std::fs`: it runs in the tools, in tests, and once at writer
//! start-up before any message is accepted. It does not write frames during normal operation
//! (that is `writer`, through io_uring).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::frame::{self, FrameError, FrameHeader, Kind, SealRecord, SegmentRecord, HEADER_LEN};
use super::id::MessageId;

/// File name suffix of segments.
pub const SEGMENT_SUFFIX: &str = ".seg";

/// Read buffer of the walker.
const WALK_BUF: usize = 256 * 1024;

/// A segment's identity, from its file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentName {
    /// The reactor that wrote it.
    pub reactor: u16,
    /// Its sequence number within the reactor.
    pub seq: u64,
}

impl SegmentName {
    /// `<reactor>-<seq>.seg`, the sequence number zero-padded to 8 digits.
    pub fn file_name(&self) -> String {
        format!("{}-{:08}{SEGMENT_SUFFIX}", self.reactor, self.seq)
    }

    /// Parses a file name made by [`SegmentName::file_name`].
    pub fn parse(name: &str) -> Option<Self> {
        let stem = name.strip_suffix(SEGMENT_SUFFIX)?;
        let (r, s) = stem.split_once('-')?;
        if r.is_empty() || s.is_empty() || !r.bytes().chain(s.bytes()).all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(Self {
            reactor: r.parse().ok()?,
            seq: s.parse().ok()?,
        })
    }
}

/// All segments in `dir`, sorted by reactor then sequence number. Other files are ignored.
///
/// # Errors
/// Reading the directory failed.
pub fn list_segments(dir: &Path) -> io::Result<Vec<(SegmentName, PathBuf)>> {
    let mut v = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(name) = entry.file_name().to_str().and_then(SegmentName::parse) {
            v.push((name, entry.path()));
        }
    }
    v.sort();
    Ok(v)
}

/// One step of a [`Walker`].
#[derive(Debug)]
pub enum Step<'a> {
    /// A frame whose CRC checks out.
    Frame {
        /// Offset of its header in the file.
        offset: u64,
        /// Its header.
        header: FrameHeader,
        /// Its payload.
        payload: &'a [u8],
        /// crc32c of the payload alone.
        payload_crc: u32,
    },
    /// The file ends exactly at a frame boundary.
    End,
    /// The bytes at `offset` are not a valid frame; nothing after it is trusted.
    Invalid {
        /// Where the valid prefix ends.
        offset: u64,
        /// Why.
        error: FrameError,
    },
}

/// Reads a segment's frames in order, verifying each CRC, never loading more than one frame.
pub struct Walker {
    r: BufReader<File>,
    offset: u64,
    len: u64,
    payload: Vec<u8>,
    done: bool,
}

impl Walker {
    /// Opens a segment for walking from its start.
    ///
    /// # Errors
    /// Opening or `stat` failed.
    pub fn open(path: &Path) -> io::Result<Self> {
        let f = File::open(path)?;
        let len = f.metadata()?.len();
        Ok(Self {
            r: BufReader::with_capacity(WALK_BUF, f),
            offset: 0,
            len,
            payload: Vec::new(),
            done: false,
        })
    }

    /// The file length when opened.
    pub fn file_len(&self) -> u64 {
        self.len
    }

    /// The next frame, or where and why the valid prefix ends.
    ///
    /// # Errors
    /// A read failed (an I/O error, not a bad frame).
    pub fn next_step(&mut self) -> io::Result<Step<'_>> {
        if self.done {
            return Ok(Step::End);
        }
        let left = self.len - self.offset;
        if left == 0 {
            self.done = true;
            return Ok(Step::End);
        }
        let offset = self.offset;
        let invalid = |this: &mut Self, error| {
            this.done = true;
            Ok(Step::Invalid { offset, error })
        };
        if left < HEADER_LEN as u64 {
            return invalid(self, FrameError::Short);
        }
        let mut h = [0u8; HEADER_LEN];
        self.r.read_exact(&mut h)?;
        let header = match FrameHeader::decode(&h) {
            Ok(x) => x,
            Err(e) => return invalid(self, e),
        };
        if u64::from(header.len) > left - HEADER_LEN as u64 {
            return invalid(self, FrameError::Short);
        }
        self.payload.resize(header.len as usize, 0);
        self.r.read_exact(&mut self.payload)?;
        let payload_crc = crc32c::crc32c(&self.payload);
        if frame::frame_crc(payload_crc, header.kind, header.id, header.len) != header.crc {
            return invalid(self, FrameError::BadCrc);
        }
        self.offset += (HEADER_LEN + self.payload.len()) as u64;
        Ok(Step::Frame {
            offset,
            header,
            payload: &self.payload,
            payload_crc,
        })
    }

    /// Offset just after the last frame returned.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

/// Reads the Seal frame at the very end of a segment, if there is one.
pub fn read_seal(file: &File) -> Option<SealRecord> {
    let len = file.metadata().ok()?.len();
    let frame_len = (HEADER_LEN + SealRecord::LEN) as u64;
    if len < frame_len {
        return None;
    }
    let mut b = [0u8; HEADER_LEN + SealRecord::LEN];
    file.read_exact_at(&mut b, len - frame_len).ok()?;
    let (h, p) = frame::decode_frame(&b).ok()?;
    if h.kind != Kind::Seal {
        return None;
    }
    SealRecord::decode(p).ok()
}

/// Offset of the next valid frame after `from` (exclusive), if any: how `check` tells a torn
/// tail (nothing valid follows) from damage in the middle.
///
/// # Errors
/// A read failed.
pub fn next_valid_frame(path: &Path, from: u64) -> io::Result<Option<u64>> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let finder = memchr::memmem::Finder::new(&frame::MAGIC);
    let mut pos = from + 1;
    let mut chunk = vec![0u8; 1 << 20];
    while pos + HEADER_LEN as u64 <= len {
        f.seek(SeekFrom::Start(pos))?;
        let want = chunk
            .len()
            .min(usize::try_from(len - pos).unwrap_or(usize::MAX));
        f.read_exact(&mut chunk[..want])?;
        for hit in finder.find_iter(&chunk[..want]) {
            let at = pos + hit as u64;
            if frame_at(&f, at, len)? {
                return Ok(Some(at));
            }
        }
        // Overlap by the magic's length minus one so a magic across chunks is found.
        if want < chunk.len() {
            break;
        }
        pos += (want - (frame::MAGIC.len() - 1)) as u64;
    }
    Ok(None)
}

/// Whether every byte of the file from `from` to `len` is zero: a segment's prepared space
/// (the writer writes zeros ahead of its appends), which ends the log cleanly. A torn write
/// leaves non-zero bytes before the zeros and is not one.
///
/// # Errors
/// A read failed.
pub fn is_zero_tail(f: &File, from: u64, len: u64) -> io::Result<bool> {
    let mut chunk = vec![0u8; 1 << 20];
    let mut pos = from;
    while pos < len {
        let want = chunk
            .len()
            .min(usize::try_from(len - pos).unwrap_or(usize::MAX));
        f.read_exact_at(&mut chunk[..want], pos)?;
        if chunk[..want].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        pos += want as u64;
    }
    Ok(true)
}

fn frame_at(f: &File, at: u64, len: u64) -> io::Result<bool> {
    let mut h = [0u8; HEADER_LEN];
    if at + HEADER_LEN as u64 > len {
        return Ok(false);
    }
    f.read_exact_at(&mut h, at)?;
    let Ok(header) = FrameHeader::decode(&h) else {
        return Ok(false);
    };
    if at + (HEADER_LEN as u64) + u64::from(header.len) > len {
        return Ok(false);
    }
    let mut p = vec![0u8; header.len as usize];
    f.read_exact_at(&mut p, at + HEADER_LEN as u64)?;
    Ok(header.verify(&p))
}

/// What start-up recovery found for one reactor.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    /// The sequence number for the writer's first new segment.
    pub next_seq: u64,
    /// New ids must be greater than this.
    pub id_floor: MessageId,
    /// Segments whose torn tail was cut off: (file, bytes removed).
    pub truncated: Vec<(PathBuf, u64)>,
    /// Segments whose tail of prepared zeros (the clean end of the log) was cut off: (file,
    /// bytes removed).
    pub zero_tails: Vec<(PathBuf, u64)>,
    /// Segments removed because not even their first frame was whole.
    pub removed: Vec<PathBuf>,
}

/// Brings a reactor's segments to a clean state before the writer starts: every segment without
/// a Seal frame is walked, cut after its last valid frame, sealed and fsynced (a file without a
/// valid first frame is removed). What is cut is reported as a torn tail, or, when it is all
/// zeros (the writer's prepared space, the clean end of the log), in `zero_tails`. Also finds the newest id and the next sequence number.
///
/// `now_ms` bounds the ids trusted from Seal frames (a Seal from the future is ignored).
///
/// # Errors
/// Listing, reading, truncating or syncing failed.
pub fn recover(dir: &Path, reactor: u16, now_ms: u64) -> io::Result<Recovered> {
    let mut out = Recovered::default();
    let segments: Vec<_> = list_segments(dir)?
        .into_iter()
        .filter(|(n, _)| n.reactor == reactor)
        .collect();
    let mut dir_dirty = false;
    for (i, (name, path)) in segments.iter().enumerate() {
        out.next_seq = out.next_seq.max(name.seq + 1);
        let newest = i + 1 == segments.len();
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        if !newest {
            if let Some(seal) = read_seal(&file) {
                let id = MessageId(seal.max_id);
                let plausible =
                    id.0 == 0 || (id.reactor() == reactor && id.time_ms() <= now_ms + 86_400_000);
                if plausible {
                    out.id_floor = out.id_floor.max(id);
                    continue;
                }
            }
        }
        // Walk: the newest always (its ids give the floor), older ones when unsealed.
        let mut w = Walker::open(path)?;
        let mut first: Option<SegmentRecord> = None;
        let mut max_id = 0u64;
        let mut sealed = false;
        while let Step::Frame {
            header, payload, ..
        } = w.next_step()?
        {
            if first.is_none() {
                match (header.kind, SegmentRecord::decode(payload)) {
                    (Kind::Segment, Ok(r)) => first = Some(r),
                    _ => break,
                }
            }
            sealed = header.kind == Kind::Seal;
            max_id = max_id.max(header.id);
        }
        let valid_end = if first.is_some() { w.offset() } else { 0 };
        let file_len = w.file_len();
        drop(w);
        let Some(first) = first else {
            drop(file);
            fs::remove_file(path)?;
            out.removed.push(path.clone());
            dir_dirty = true;
            continue;
        };
        let max_id = max_id.max(first.id_floor);
        out.id_floor = out.id_floor.max(MessageId(max_id));
        if sealed && valid_end == file_len {
            continue;
        }
        if valid_end < file_len {
            let cut = (path.clone(), file_len - valid_end);
            if is_zero_tail(&file, valid_end, file_len)? {
                out.zero_tails.push(cut);
            } else {
                out.truncated.push(cut);
            }
            file.set_len(valid_end)?;
        }
        if !sealed {
            let mut seal = Vec::new();
            frame::encode_frame(
                Kind::Seal,
                0,
                &SealRecord {
                    seq: name.seq,
                    max_id,
                }
                .encode(),
                &mut seal,
            );
            file.write_all_at(&seal, valid_end)?;
        }
        file.sync_all()?;
    }
    if dir_dirty {
        File::open(dir)?.sync_all()?;
    }
    Ok(out)
}

/// Creates `dir` if needed; when it did, fsyncs each parent whose entry it added, so the
/// directory survives a power cut (docs/design.md, invariant 2).
///
/// # Errors
/// Creating or syncing failed.
pub fn ensure_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut p = dir;
    while !p.as_os_str().is_empty() && !p.exists() {
        missing.push(p.to_path_buf());
        match p.parent() {
            Some(parent) => p = parent,
            None => break,
        }
    }
    fs::create_dir_all(dir)?;
    for m in missing.iter().rev() {
        let parent = match m.parent() {
            Some(x) if !x.as_os_str().is_empty() => x.to_path_buf(),
            _ => PathBuf::from("."),
        };
        File::open(&parent)?.sync_all()?;
    }
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort() {
        let n = SegmentName {
            reactor: 3,
            seq: 42,
        };
        assert_eq!(n.file_name(), "3-00000042.seg");
        assert_eq!(SegmentName::parse("3-00000042.seg"), Some(n));
        assert_eq!(
            SegmentName::parse("3-123456789.seg").map(|n| n.seq),
            Some(123_456_789)
        );
        for bad in [
            "3-42.se",
            "-42.seg",
            "3-.seg",
            "a-1.seg",
            "3_42.seg",
            "3-4-2.seg",
            ".seg",
        ] {
            assert_eq!(SegmentName::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn walker_stops_at_damage_and_next_valid_frame_finds_resumption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0-00000001.seg");
        let mut bytes = Vec::new();
        frame::encode_frame(Kind::Data, 1, b"first", &mut bytes);
        let second = bytes.len() as u64;
        frame::encode_frame(Kind::Data, 2, &vec![7u8; 3000], &mut bytes);
        let third = bytes.len() as u64;
        frame::encode_frame(Kind::Data, 3, b"third", &mut bytes);
        bytes[second as usize + HEADER_LEN + 5] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let mut w = Walker::open(&path).unwrap();
        assert!(matches!(
            w.next_step().unwrap(),
            Step::Frame { offset: 0, .. }
        ));
        match w.next_step().unwrap() {
            Step::Invalid { offset, error } => {
                assert_eq!((offset, error), (second, FrameError::BadCrc));
            }
            s => panic!("{s:?}"),
        }
        assert!(matches!(w.next_step().unwrap(), Step::End));
        assert_eq!(next_valid_frame(&path, second).unwrap(), Some(third));
        assert_eq!(next_valid_frame(&path, third).unwrap(), None);
    }
}
