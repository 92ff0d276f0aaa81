//! The delivery thread's own spool writer: a small synchronous appender that writes whole
//! messages (bounces it generates, and messages it copies forward when it compacts a segment)
//! into segment files of a reactor index reserved for it, [`APPENDER_REACTOR`].
//!
//! Each call of [`Appender::write_segment`] writes one new segment, `<APPENDER_REACTOR>-<seq>.seg`:
//! a Segment frame, each message as Envelope, Data frames (at most [`DATA_CHUNK`] bytes each)
//! and Commit, then a Seal frame; then `fsync` of the file and of the directory. When it
//! returns, every message in it is durable. The frames are the ones the reactors write
//! (`frame.rs`), so `spool check`, `spool ls|cat|export`, the delivery stage's reader and the
//! queue tools read these segments like any other. A crash in the middle leaves an unsealed
//! file whose complete messages are whole by their CRCs; [`Appender::open`] recovers it (cuts
//! and seals it) like a reactor recovers its own.
//!
//! Ids: a new message gets an id of the reserved reactor index from an [`IdGen`], so it cannot
//! collide with a reactor's. A copied message keeps its original id (its journal records stay
//! valid); readers that find one id in two segments (a crash between a copy and the deletion
//! of the old segment) take the copy in the later-listed segment (see docs/spool.md,
//! "Compaction").
//!
//! Synchronous `std::fs`, called from the delivery thread's blocking pool; not for the
//! ingress hot path (the reactors keep their io_uring writers). It does not decide what to
//! write or when (that is `relay`).

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::frame::{
    self, unix_us, CommitRecord, EnvelopeRecord, Kind, SealRecord, SegmentRecord, FORMAT_VERSION,
};
use super::id::{IdGen, MessageId, MAX_REACTOR};
use super::journal::sync_dir;
use super::reader::StoredMessage;
use super::segment::{self, SegmentName};

/// The reactor index of the delivery thread's segments (the highest; `serve` runs at most
/// `MAX_REACTOR` reactors, indexes below it).
pub const APPENDER_REACTOR: u16 = MAX_REACTOR;
/// Largest Data frame payload the appender writes (as a reactor's write buffer).
pub const DATA_CHUNK: usize = 64 * 1024;
/// Write buffer in front of the file.
const WRITE_BUF: usize = 256 * 1024;

/// What a message to append is made of.
#[derive(Debug, Clone)]
pub enum Body {
    /// These bytes (a message generated here).
    Bytes(Vec<u8>),
    /// The bytes of a stored message, streamed and verified against its Commit crc.
    Stored(Box<StoredMessage>),
}

/// A message for [`Appender::write_segment`].
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Its id: a new one from [`Appender::next_id`], or the original id of a copied message.
    pub id: MessageId,
    /// Its envelope.
    pub envelope: EnvelopeRecord,
    /// Its bytes.
    pub body: Body,
}

/// The delivery thread's spool writer (one per spool directory).
#[derive(Debug)]
pub struct Appender {
    dir: PathBuf,
    next_seq: u64,
    ids: IdGen,
}

impl Appender {
    /// Recovers the reserved reactor's segments of `dir` (an unsealed one is cut after its
    /// last valid frame and sealed) and continues after them.
    ///
    /// # Errors
    /// Listing, reading, truncating or syncing failed.
    pub fn open(dir: &Path) -> io::Result<Self> {
        segment::ensure_dir(dir)?;
        let now_ms = unix_us(SystemTime::now()) / 1000;
        let rec = segment::recover(dir, APPENDER_REACTOR, now_ms)?;
        for (path, cut) in &rec.truncated {
            tracing::warn!("spool: {}: cut a torn tail of {cut} bytes", path.display());
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            next_seq: rec.next_seq.max(1),
            ids: IdGen::new(APPENDER_REACTOR, rec.id_floor),
        })
    }

    /// A new message id (of [`APPENDER_REACTOR`]).
    pub fn next_id(&mut self) -> MessageId {
        self.ids.next(unix_us(SystemTime::now()) / 1000)
    }

    /// Writes `msgs` into a new sealed segment and makes it durable (file and directory
    /// fsync). Returns its path. On error the partial file is removed (best effort; if that
    /// fails too, the next [`Appender::open`] recovers it).
    ///
    /// # Errors
    /// Creating, writing, reading a stored body (or its crc no longer matching), or syncing
    /// failed.
    pub fn write_segment(&mut self, msgs: &[NewMessage]) -> io::Result<PathBuf> {
        let name = SegmentName {
            reactor: APPENDER_REACTOR,
            seq: self.next_seq,
        };
        self.next_seq += 1;
        let path = self.dir.join(name.file_name());
        let res = self.write_file(&path, name.seq, msgs);
        if res.is_err() {
            let _ = std::fs::remove_file(&path);
        }
        res.map(|()| path)
    }

    fn write_file(&self, path: &Path, seq: u64, msgs: &[NewMessage]) -> io::Result<()> {
        let file = OpenOptions::new().write(true).create_new(true).open(path)?;
        let mut out = BufWriter::with_capacity(WRITE_BUF, &file);
        let mut buf = Vec::new();
        frame::encode_frame(
            Kind::Segment,
            0,
            &SegmentRecord {
                version: FORMAT_VERSION,
                reactor: APPENDER_REACTOR,
                seq,
                created_us: unix_us(SystemTime::now()),
                // Copies keep older ids: no floor.
                id_floor: 0,
            }
            .encode(),
            &mut buf,
        );
        out.write_all(&buf)?;
        let mut max_id = 0;
        for m in msgs {
            max_id = max_id.max(m.id.0);
            buf.clear();
            m.envelope.encode(&mut buf);
            let mut env = Vec::new();
            frame::encode_frame(Kind::Envelope, m.id.0, &buf, &mut env);
            out.write_all(&env)?;
            let mut data = DataFrames {
                out: &mut out,
                id: m.id.0,
                buf: Vec::with_capacity(DATA_CHUNK),
                size: 0,
                frames: 0,
                crc: 0,
            };
            match &m.body {
                Body::Bytes(b) => data.write_all(b)?,
                Body::Stored(s) => s.write_data(&mut data)?,
            }
            data.emit()?;
            let commit = CommitRecord {
                size: data.size,
                frames: data.frames,
                crc: data.crc,
            };
            buf.clear();
            frame::encode_frame(Kind::Commit, m.id.0, &commit.encode(), &mut buf);
            out.write_all(&buf)?;
        }
        buf.clear();
        frame::encode_frame(
            Kind::Seal,
            0,
            &SealRecord { seq, max_id }.encode(),
            &mut buf,
        );
        out.write_all(&buf)?;
        out.flush()?;
        drop(out);
        file.sync_all()?;
        sync_dir(&self.dir)
    }
}

/// Cuts a message's bytes into Data frames.
struct DataFrames<'a, W: Write> {
    out: &'a mut W,
    id: u64,
    buf: Vec<u8>,
    size: u64,
    frames: u32,
    crc: u32,
}

impl<W: Write> DataFrames<'_, W> {
    fn emit(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let mut f = Vec::with_capacity(frame::HEADER_LEN + self.buf.len());
        frame::encode_frame(Kind::Data, self.id, &self.buf, &mut f);
        self.out.write_all(&f)?;
        self.size += self.buf.len() as u64;
        self.frames += 1;
        self.crc = crc32c::crc32c_append(self.crc, &self.buf);
        self.buf.clear();
        Ok(())
    }
}

impl<W: Write> Write for DataFrames<'_, W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let take = bytes.len().min(DATA_CHUNK - self.buf.len());
        self.buf.extend_from_slice(&bytes[..take]);
        if self.buf.len() == DATA_CHUNK {
            self.emit()?;
        }
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::reader::{read_spool, scan_segment};
    use std::net::{IpAddr, Ipv4Addr};

    fn env(from: &str) -> EnvelopeRecord {
        EnvelopeRecord {
            client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            received_us: 1,
            helo: "mx.test".into(),
            esmtp: true,
            mail_from: from.into(),
            declared_size: None,
            body_8bitmime: false,
            smtputf8: false,
            rcpts: vec!["a@b.test".into()],
            tls: None,
        }
    }

    #[test]
    fn appended_messages_read_back_and_copies_keep_their_id() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Appender::open(dir.path()).unwrap();
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let id1 = a.next_id();
        let id2 = a.next_id();
        assert!(id2 > id1 && id1.reactor() == APPENDER_REACTOR);
        let p1 = a
            .write_segment(&[
                NewMessage {
                    id: id1,
                    envelope: env(""),
                    body: Body::Bytes(b"Subject: x\r\n\r\nhi\r\n".to_vec()),
                },
                NewMessage {
                    id: id2,
                    envelope: env("s@x.test"),
                    body: Body::Bytes(big.clone()),
                },
            ])
            .unwrap();
        let mut got = Vec::new();
        let rep = scan_segment(&p1, true, |m| {
            got.push(m);
            Ok(())
        })
        .unwrap();
        assert!(rep.sealed && !rep.is_corrupt() && rep.damage.is_none());
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].read_data().unwrap(), big);
        assert_eq!(got[0].envelope.mail_from, "");
        // A copy of a stored message keeps its id and bytes; readers see it once.
        let p2 = a
            .write_segment(&[NewMessage {
                id: id2,
                envelope: got[1].envelope.clone(),
                body: Body::Stored(Box::new(got[1].clone())),
            }])
            .unwrap();
        assert_ne!(p1, p2);
        let all = read_spool(dir.path()).unwrap();
        assert_eq!(all.len(), 2, "the copy and its original count once");
        let copy = all.iter().find(|m| m.id == id2).unwrap();
        assert_eq!(copy.segment, p2, "the later segment's copy wins");
        assert_eq!(copy.read_data().unwrap(), big);
        let check = crate::spool::reader::check_spool(dir.path()).unwrap();
        assert_eq!((check.committed, check.copies, check.corrupt), (3, 1, 0));
        // Reopening continues after the existing segments with greater ids.
        let mut b = Appender::open(dir.path()).unwrap();
        assert!(b.next_id() > id2);
        let p3 = b.write_segment(&[]).unwrap();
        assert!(p3
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .ends_with("00000003.seg"));
    }

    #[test]
    fn a_torn_segment_is_recovered_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Appender::open(dir.path()).unwrap();
        let id = a.next_id();
        let p = a
            .write_segment(&[NewMessage {
                id,
                envelope: env("s@x.test"),
                body: Body::Bytes(vec![b'x'; 1000]),
            }])
            .unwrap();
        let len = std::fs::metadata(&p).unwrap().len();
        // Cut into the Seal frame: the message stays, the file gets sealed again.
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(len - 5).unwrap();
        drop(f);
        let _ = Appender::open(dir.path()).unwrap();
        let rep = scan_segment(&p, true, |_| Ok(())).unwrap();
        assert!(rep.sealed && rep.committed == 1 && rep.damage.is_none());
    }
}
