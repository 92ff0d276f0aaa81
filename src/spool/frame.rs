//! The on-disk frame: `magic | kind | flags | reserved | message id | length | crc32c | payload`,
//! and the payload records of each kind. Pure encoding and decoding: no files, no I/O.
//!
//! All integers are little-endian. The CRC (crc32c, Castagnoli) covers the payload followed by
//! header bytes 4..20 (kind, flags, reserved, id, length), so a frame checks out only if its
//! header and payload were both written whole. See `docs/spool.md` for the full format.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The first four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"RMXF";

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 24;

/// The largest payload a reader accepts. Data frames are at most one write buffer; an Envelope
/// is bounded by the SMTP limits on recipients and path lengths (RFC 5321 §4.5.3.1).
pub const MAX_PAYLOAD: u32 = 16 * 1024 * 1024;

/// Version of the segment format, in the segment's first frame.
pub const FORMAT_VERSION: u16 = 1;

/// Version of the envelope record.
const ENVELOPE_VERSION: u8 = 1;

/// What a frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Kind {
    /// First frame of every segment: a [`SegmentRecord`]; message id 0.
    Segment = 1,
    /// A message starts: an [`EnvelopeRecord`].
    Envelope = 2,
    /// A chunk of the message (Received: header first, then the client's bytes).
    Data = 3,
    /// The message is complete: a [`CommitRecord`]. It is mail once this frame is durable.
    Commit = 4,
    /// The message was dropped; empty payload.
    Abort = 5,
    /// Last frame of a finished segment: a [`SealRecord`]; message id 0.
    Seal = 6,
}

impl Kind {
    /// The kind for a byte, if any.
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Segment,
            2 => Self::Envelope,
            3 => Self::Data,
            4 => Self::Commit,
            5 => Self::Abort,
            6 => Self::Seal,
            _ => return None,
        })
    }
}

/// A decoded frame header (magic, kind and length checked; CRC not yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The frame kind.
    pub kind: Kind,
    /// The message id (0 for segment-level frames).
    pub id: u64,
    /// Payload length in bytes.
    pub len: u32,
    /// The stored crc32c.
    pub crc: u32,
}

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes than a header or the payload it announces.
    Short,
    /// The magic does not match.
    BadMagic,
    /// Unknown kind, non-zero reserved bytes, or a length over [`MAX_PAYLOAD`].
    BadHeader,
    /// The CRC does not match.
    BadCrc,
    /// The CRC matched but the payload does not parse as its kind's record.
    BadPayload,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Short => "truncated frame",
            Self::BadMagic => "bad magic",
            Self::BadHeader => "bad frame header",
            Self::BadCrc => "CRC mismatch",
            Self::BadPayload => "malformed payload",
        })
    }
}

impl std::error::Error for FrameError {}

impl FrameHeader {
    /// Decodes a header, checking magic, kind, reserved bytes and the length limit.
    ///
    /// # Errors
    /// [`FrameError::Short`], [`FrameError::BadMagic`] or [`FrameError::BadHeader`].
    pub fn decode(bytes: &[u8]) -> Result<Self, FrameError> {
        let Some(h) = bytes.get(..HEADER_LEN) else {
            return Err(FrameError::Short);
        };
        if h[..4] != MAGIC {
            return Err(FrameError::BadMagic);
        }
        let kind = Kind::from_u8(h[4]).ok_or(FrameError::BadHeader)?;
        if h[5] != 0 || h[6] != 0 || h[7] != 0 {
            return Err(FrameError::BadHeader);
        }
        let id = u64::from_le_bytes(arr(&h[8..16]));
        let len = u32::from_le_bytes(arr(&h[16..20]));
        let crc = u32::from_le_bytes(arr(&h[20..24]));
        if len > MAX_PAYLOAD {
            return Err(FrameError::BadHeader);
        }
        Ok(Self { kind, id, len, crc })
    }

    /// Whether `payload` (exactly `len` bytes) matches the stored CRC.
    pub fn verify(&self, payload: &[u8]) -> bool {
        payload.len() == self.len as usize
            && frame_crc(crc32c::crc32c(payload), self.kind, self.id, self.len) == self.crc
    }
}

/// The CRC of a frame whose payload has crc32c `payload_crc`.
pub fn frame_crc(payload_crc: u32, kind: Kind, id: u64, len: u32) -> u32 {
    crc32c::crc32c_append(payload_crc, &fields(kind, id, len))
}

/// Header bytes 4..20.
fn fields(kind: Kind, id: u64, len: u32) -> [u8; 16] {
    let mut f = [0u8; 16];
    f[0] = kind as u8;
    f[4..12].copy_from_slice(&id.to_le_bytes());
    f[12..16].copy_from_slice(&len.to_le_bytes());
    f
}

/// Encodes a header for a payload of `len` bytes whose crc32c is `payload_crc`.
pub fn encode_header(kind: Kind, id: u64, len: u32, payload_crc: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&MAGIC);
    h[4..20].copy_from_slice(&fields(kind, id, len));
    h[20..24].copy_from_slice(&frame_crc(payload_crc, kind, id, len).to_le_bytes());
    h
}

/// Appends a whole frame to `out`.
pub fn encode_frame(kind: Kind, id: u64, payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&encode_header(kind, id, len, crc32c::crc32c(payload)));
    out.extend_from_slice(payload);
}

/// Decodes and verifies one frame at the start of `bytes`: the header and its payload.
///
/// # Errors
/// Any [`FrameError`] but `BadPayload`.
pub fn decode_frame(bytes: &[u8]) -> Result<(FrameHeader, &[u8]), FrameError> {
    let h = FrameHeader::decode(bytes)?;
    let end = HEADER_LEN + h.len as usize;
    let payload = bytes.get(HEADER_LEN..end).ok_or(FrameError::Short)?;
    if !h.verify(payload) {
        return Err(FrameError::BadCrc);
    }
    Ok((h, payload))
}

fn arr<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[..N]);
    a
}

/// Payload of a [`Kind::Segment`] frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentRecord {
    /// [`FORMAT_VERSION`].
    pub version: u16,
    /// The writing reactor.
    pub reactor: u16,
    /// The segment's sequence number.
    pub seq: u64,
    /// Creation time, microseconds since the Unix epoch.
    pub created_us: u64,
    /// Every message id in this segment is greater than this one.
    pub id_floor: u64,
}

impl SegmentRecord {
    /// Bytes in the encoding.
    pub const LEN: usize = 28;

    /// Encodes the record.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(Self::LEN);
        v.extend_from_slice(&self.version.to_le_bytes());
        v.extend_from_slice(&self.reactor.to_le_bytes());
        v.extend_from_slice(&self.seq.to_le_bytes());
        v.extend_from_slice(&self.created_us.to_le_bytes());
        v.extend_from_slice(&self.id_floor.to_le_bytes());
        v
    }

    /// Decodes the record.
    ///
    /// # Errors
    /// [`FrameError::BadPayload`] on a wrong length or version.
    pub fn decode(p: &[u8]) -> Result<Self, FrameError> {
        if p.len() != Self::LEN {
            return Err(FrameError::BadPayload);
        }
        let r = Self {
            version: u16::from_le_bytes(arr(&p[0..2])),
            reactor: u16::from_le_bytes(arr(&p[2..4])),
            seq: u64::from_le_bytes(arr(&p[4..12])),
            created_us: u64::from_le_bytes(arr(&p[12..20])),
            id_floor: u64::from_le_bytes(arr(&p[20..28])),
        };
        if r.version != FORMAT_VERSION {
            return Err(FrameError::BadPayload);
        }
        Ok(r)
    }
}

/// Payload of a [`Kind::Commit`] frame: what the message's Data frames must add up to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitRecord {
    /// Total Data payload bytes (the stored message size).
    pub size: u64,
    /// Number of Data frames.
    pub frames: u32,
    /// crc32c of the whole message (all Data payloads in order).
    pub crc: u32,
}

impl CommitRecord {
    /// Bytes in the encoding.
    pub const LEN: usize = 16;

    /// Encodes the record.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut v = [0u8; Self::LEN];
        v[0..8].copy_from_slice(&self.size.to_le_bytes());
        v[8..12].copy_from_slice(&self.frames.to_le_bytes());
        v[12..16].copy_from_slice(&self.crc.to_le_bytes());
        v
    }

    /// Decodes the record.
    ///
    /// # Errors
    /// [`FrameError::BadPayload`] on a wrong length.
    pub fn decode(p: &[u8]) -> Result<Self, FrameError> {
        if p.len() != Self::LEN {
            return Err(FrameError::BadPayload);
        }
        Ok(Self {
            size: u64::from_le_bytes(arr(&p[0..8])),
            frames: u32::from_le_bytes(arr(&p[8..12])),
            crc: u32::from_le_bytes(arr(&p[12..16])),
        })
    }
}

/// Payload of a [`Kind::Seal`] frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealRecord {
    /// The segment's sequence number.
    pub seq: u64,
    /// The largest message id in the segment (or the segment's id floor if it has none).
    pub max_id: u64,
}

impl SealRecord {
    /// Bytes in the encoding.
    pub const LEN: usize = 16;

    /// Encodes the record.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut v = [0u8; Self::LEN];
        v[0..8].copy_from_slice(&self.seq.to_le_bytes());
        v[8..16].copy_from_slice(&self.max_id.to_le_bytes());
        v
    }

    /// Decodes the record.
    ///
    /// # Errors
    /// [`FrameError::BadPayload`] on a wrong length.
    pub fn decode(p: &[u8]) -> Result<Self, FrameError> {
        if p.len() != Self::LEN {
            return Err(FrameError::BadPayload);
        }
        Ok(Self {
            seq: u64::from_le_bytes(arr(&p[0..8])),
            max_id: u64::from_le_bytes(arr(&p[8..16])),
        })
    }
}

/// Payload of an [`Kind::Envelope`] frame: the SMTP envelope and where the message came from.
///
/// This is the spool's own record of a message's envelope: the writer takes it as it is
/// (`Spool::begin`), builds the `Received:` header from it and stores it; readers get it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeRecord {
    /// The client's address.
    pub client_ip: IpAddr,
    /// When DATA started, microseconds since the Unix epoch.
    pub received_us: u64,
    /// The HELO/EHLO argument.
    pub helo: String,
    /// Whether the client used EHLO.
    pub esmtp: bool,
    /// MAIL FROM reverse-path without angle brackets (empty for `<>`).
    pub mail_from: String,
    /// SIZE= declared by the client.
    pub declared_size: Option<u64>,
    /// BODY=8BITMIME.
    pub body_8bitmime: bool,
    /// SMTPUTF8.
    pub smtputf8: bool,
    /// Accepted forward-paths without angle brackets.
    pub rcpts: Vec<String>,
    /// The TLS the message came over (STARTTLS), if any.
    pub tls: Option<TlsTrace>,
}

/// The TLS of a session, as the `Received:` header names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsTrace {
    /// `TLSv1.2` / `TLSv1.3`.
    pub version: String,
    /// IANA cipher suite name.
    pub cipher: String,
    /// Symmetric key bits.
    pub bits: u16,
}

const F_ESMTP: u8 = 1;
const F_8BITMIME: u8 = 2;
const F_SMTPUTF8: u8 = 4;
const F_SIZE: u8 = 8;
/// TLS: version, cipher (strings) and bits (u16) follow the recipients.
const F_TLS: u8 = 16;

impl EnvelopeRecord {
    /// When DATA started, from [`EnvelopeRecord::received_us`].
    pub fn received_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.received_us)
    }

    /// Appends the encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(ENVELOPE_VERSION);
        let mut flags = 0;
        if self.esmtp {
            flags |= F_ESMTP;
        }
        if self.body_8bitmime {
            flags |= F_8BITMIME;
        }
        if self.smtputf8 {
            flags |= F_SMTPUTF8;
        }
        if self.declared_size.is_some() {
            flags |= F_SIZE;
        }
        if self.tls.is_some() {
            flags |= F_TLS;
        }
        out.push(flags);
        out.extend_from_slice(&self.received_us.to_le_bytes());
        out.extend_from_slice(&self.declared_size.unwrap_or(0).to_le_bytes());
        match self.client_ip {
            IpAddr::V4(a) => {
                out.push(4);
                out.extend_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                out.push(6);
                out.extend_from_slice(&a.octets());
            }
        }
        put_str(out, &self.helo);
        put_str(out, &self.mail_from);
        out.extend_from_slice(&(self.rcpts.len() as u32).to_le_bytes());
        for r in &self.rcpts {
            put_str(out, r);
        }
        if let Some(t) = &self.tls {
            put_str(out, &t.version);
            put_str(out, &t.cipher);
            out.extend_from_slice(&t.bits.to_le_bytes());
        }
    }

    /// The encoded length.
    pub fn encoded_len(&self) -> usize {
        let ip = match self.client_ip {
            IpAddr::V4(_) => 5,
            IpAddr::V6(_) => 17,
        };
        2 + 16
            + ip
            + 4
            + self.helo.len()
            + 4
            + self.mail_from.len()
            + 4
            + self.rcpts.iter().map(|r| 4 + r.len()).sum::<usize>()
            + self
                .tls
                .as_ref()
                .map_or(0, |t| 4 + t.version.len() + 4 + t.cipher.len() + 2)
    }

    /// Decodes the record.
    ///
    /// # Errors
    /// [`FrameError::BadPayload`] if the bytes do not parse or strings are not UTF-8.
    pub fn decode(p: &[u8]) -> Result<Self, FrameError> {
        let mut c = Cursor { b: p };
        if c.u8()? != ENVELOPE_VERSION {
            return Err(FrameError::BadPayload);
        }
        let flags = c.u8()?;
        let received_us = c.u64()?;
        let size = c.u64()?;
        let client_ip = match c.u8()? {
            4 => IpAddr::V4(Ipv4Addr::from(arr::<4>(c.take(4)?))),
            6 => IpAddr::V6(Ipv6Addr::from(arr::<16>(c.take(16)?))),
            _ => return Err(FrameError::BadPayload),
        };
        let helo = c.string()?;
        let mail_from = c.string()?;
        let n = c.u32()? as usize;
        if n > c.b.len() / 4 {
            return Err(FrameError::BadPayload);
        }
        let mut rcpts = Vec::with_capacity(n);
        for _ in 0..n {
            rcpts.push(c.string()?);
        }
        let tls = if flags & F_TLS != 0 {
            Some(TlsTrace {
                version: c.string()?,
                cipher: c.string()?,
                bits: u16::from_le_bytes(arr(c.take(2)?)),
            })
        } else {
            None
        };
        if !c.b.is_empty() {
            return Err(FrameError::BadPayload);
        }
        Ok(Self {
            client_ip,
            received_us,
            helo,
            esmtp: flags & F_ESMTP != 0,
            mail_from,
            declared_size: (flags & F_SIZE != 0).then_some(size),
            body_8bitmime: flags & F_8BITMIME != 0,
            smtputf8: flags & F_SMTPUTF8 != 0,
            rcpts,
            tls,
        })
    }
}

/// Microseconds since the Unix epoch (0 before it, saturating far after it), the time unit of
/// the records.
pub fn unix_us(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

struct Cursor<'a> {
    b: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.b.len() < n {
            return Err(FrameError::BadPayload);
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        Ok(u32::from_le_bytes(arr(self.take(4)?)))
    }
    fn u64(&mut self) -> Result<u64, FrameError> {
        Ok(u64::from_le_bytes(arr(self.take(8)?)))
    }
    fn string(&mut self) -> Result<String, FrameError> {
        let n = self.u32()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| FrameError::BadPayload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> EnvelopeRecord {
        EnvelopeRecord {
            client_ip: "2001:db8::7".parse().unwrap(),
            received_us: 1_700_000_000_123_456,
            helo: "client.example".into(),
            esmtp: true,
            mail_from: "".into(),
            declared_size: Some(4096),
            body_8bitmime: false,
            smtputf8: true,
            rcpts: vec!["a@example.test".into(), "Ünï@example.test".into()],
            tls: None,
        }
    }

    #[test]
    fn frame_round_trip() {
        let mut out = Vec::new();
        encode_frame(Kind::Data, 0xdead_beef_0102, b"hello\r\n", &mut out);
        assert_eq!(out.len(), HEADER_LEN + 7);
        assert_eq!(&out[..4], b"RMXF");
        let (h, p) = decode_frame(&out).unwrap();
        assert_eq!(h.kind, Kind::Data);
        assert_eq!(h.id, 0xdead_beef_0102);
        assert_eq!(h.len, 7);
        assert_eq!(p, b"hello\r\n");
    }

    #[test]
    fn empty_payload_round_trip() {
        let mut out = Vec::new();
        encode_frame(Kind::Abort, 9, b"", &mut out);
        let (h, p) = decode_frame(&out).unwrap();
        assert_eq!((h.kind, h.id, p.len()), (Kind::Abort, 9, 0));
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let mut out = Vec::new();
        encode_frame(
            Kind::Commit,
            42,
            &CommitRecord {
                size: 1,
                frames: 1,
                crc: 7,
            }
            .encode(),
            &mut out,
        );
        for i in 0..out.len() * 8 {
            let mut bad = out.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(
                decode_frame(&bad).is_err(),
                "bit {i} flipped went unnoticed"
            );
        }
    }

    #[test]
    fn short_input_is_short() {
        let mut out = Vec::new();
        encode_frame(Kind::Data, 1, b"0123456789", &mut out);
        for cut in 0..out.len() {
            assert_eq!(
                decode_frame(&out[..cut]).unwrap_err(),
                FrameError::Short,
                "cut {cut}"
            );
        }
    }

    #[test]
    fn header_checks() {
        let mut out = Vec::new();
        encode_frame(Kind::Data, 1, b"x", &mut out);
        let mut bad = out.clone();
        bad[0] = b'X';
        assert_eq!(FrameHeader::decode(&bad).unwrap_err(), FrameError::BadMagic);
        let mut bad = out.clone();
        bad[4] = 99;
        assert_eq!(
            FrameHeader::decode(&bad).unwrap_err(),
            FrameError::BadHeader
        );
        let mut bad = out.clone();
        bad[16..20].copy_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
        assert_eq!(
            FrameHeader::decode(&bad).unwrap_err(),
            FrameError::BadHeader
        );
        assert_eq!(
            FrameHeader::decode(&[0u8; HEADER_LEN]).unwrap_err(),
            FrameError::BadMagic
        );
    }

    #[test]
    fn crc_is_crc32c_of_payload_then_fields() {
        // Known answer: crc32c("123456789") = 0xE3069283.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        let h = encode_header(Kind::Data, 5, 9, crc32c::crc32c(b"123456789"));
        let mut whole = b"123456789".to_vec();
        whole.extend_from_slice(&h[4..20]);
        assert_eq!(
            u32::from_le_bytes(h[20..24].try_into().unwrap()),
            crc32c::crc32c(&whole)
        );
    }

    #[test]
    fn records_round_trip() {
        let e = envelope();
        let mut p = Vec::new();
        e.encode(&mut p);
        assert_eq!(p.len(), e.encoded_len());
        assert_eq!(EnvelopeRecord::decode(&p).unwrap(), e);
        let mut v4 = envelope();
        v4.client_ip = "192.0.2.1".parse().unwrap();
        v4.declared_size = None;
        v4.rcpts.clear();
        let mut p4 = Vec::new();
        v4.encode(&mut p4);
        assert_eq!(p4.len(), v4.encoded_len());
        assert_eq!(EnvelopeRecord::decode(&p4).unwrap(), v4);
        for cut in 0..p.len() {
            assert!(EnvelopeRecord::decode(&p[..cut]).is_err());
        }
        let mut t = envelope();
        t.tls = Some(TlsTrace {
            version: "TLSv1.2".into(),
            cipher: "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".into(),
            bits: 128,
        });
        let mut pt = Vec::new();
        t.encode(&mut pt);
        assert_eq!(pt.len(), t.encoded_len());
        assert_eq!(EnvelopeRecord::decode(&pt).unwrap(), t);
        for cut in 0..pt.len() {
            assert!(EnvelopeRecord::decode(&pt[..cut]).is_err());
        }
        let s = SegmentRecord {
            version: FORMAT_VERSION,
            reactor: 3,
            seq: 7,
            created_us: 11,
            id_floor: 13,
        };
        assert_eq!(SegmentRecord::decode(&s.encode()).unwrap(), s);
        let c = CommitRecord {
            size: 1 << 40,
            frames: 3,
            crc: 0xabcdef,
        };
        assert_eq!(CommitRecord::decode(&c.encode()).unwrap(), c);
        let z = SealRecord {
            seq: 1,
            max_id: u64::MAX,
        };
        assert_eq!(SealRecord::decode(&z.encode()).unwrap(), z);
    }
}
