//! CHUNKING (RFC 3030): the `BDAT <size> [LAST]` argument syntax, the accounting of one
//! transaction's chunks, and the bare-CR/LF check of chunk content.
//!
//! Chunk content is taken exactly as sent: no dot-stuffing, no terminator search, so it never
//! passes through the DATA scanner. What this module keeps across chunks:
//! - [`Transfer`]: the declared octets so far (checked against the size limit before a chunk
//!   is stored), whether the sink has an open message, and the failure that refuses the rest of
//!   the transaction's chunks;
//! - [`LineCheck`]: the same line-ending policy as DATA ([`super::BareLf`]): a bare LF or bare
//!   CR refuses the message under `reject`; under `normalize` a bare LF is stored as CRLF (no
//!   dot is dropped: BDAT content is not dot-stuffed) and a bare CR is still refused. A CR at the
//!   end of one chunk followed by an LF at the start of the next is an ordinary CRLF.
//!
//! It does not decide replies or touch the sink; the session ([`super::Session`]) does, and
//! its state `Chunk` counts the octets of the chunk being read.

use std::time::Instant;

use memchr::memchr2;

use super::hops::HopCounter;
use super::reply::Reply;

/// Most decimal digits accepted in a chunk size: enough for any `u64`; a longer size cannot be
/// parsed, so the stream cannot be framed any more.
pub(crate) const MAX_SIZE_DIGITS: usize = 20;

/// What follows the size in a BDAT command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// No argument: more chunks follow.
    More,
    /// `LAST` (any case): this chunk ends the message.
    Last,
    /// Something else: the chunk is read and discarded, then 501 5.5.4.
    Invalid,
}

/// Why a BDAT line cannot even be framed: no size, or one that is not a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unframeable;

/// Parses the arguments of `BDAT` (after the verb and its space, trailing spaces trimmed).
///
/// # Errors
/// [`Unframeable`] when the size is missing, not all digits or does not fit a `u64`.
pub(crate) fn parse_args(args: &[u8]) -> Result<(u64, Ending), Unframeable> {
    let end = args.iter().position(|&c| c == b' ').unwrap_or(args.len());
    let (digits, rest) = args.split_at(end);
    if digits.is_empty() || digits.len() > MAX_SIZE_DIGITS || !digits.iter().all(u8::is_ascii_digit)
    {
        return Err(Unframeable);
    }
    let size = std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or(Unframeable)?;
    let rest = rest.trim_ascii_start();
    let ending = if rest.is_empty() {
        Ending::More
    } else if rest.eq_ignore_ascii_case(b"LAST") {
        Ending::Last
    } else {
        Ending::Invalid
    };
    Ok((size, ending))
}

/// The BDAT side of one mail transaction: from its first BDAT until the message ends, fails
/// or the transaction is reset.
#[derive(Debug)]
pub(crate) struct Transfer {
    /// Octets declared by the chunks accepted so far (before any normalizing).
    pub(crate) octets: u64,
    /// The sink has a message open (`begin` called, `end` not yet).
    pub(crate) open: bool,
    /// The transaction failed: every further chunk is read, discarded and answered with this,
    /// until RSET or MAIL (or the LAST chunk, which ends the transaction).
    pub(crate) failed: Option<Reply>,
    /// The line-ending check across the chunks.
    pub(crate) lines: LineCheck,
    /// The `Received:` count across the chunks.
    pub(crate) hops: HopCounter,
}

impl Transfer {
    pub(crate) fn new(normalize: bool, max_hops: u32) -> Self {
        Self {
            octets: 0,
            open: false,
            failed: None,
            lines: LineCheck::new(normalize),
            hops: HopCounter::new(max_hops),
        }
    }
}

/// What becomes of the chunk being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// Its octets go to the sink.
    Store,
    /// Its octets are discarded; then this reply, counted as an error if `count` (a chunk of a
    /// transaction that has already failed is not counted again).
    Refuse {
        /// The reply after the chunk.
        reply: Reply,
        /// Whether it counts towards the error cap.
        count: bool,
    },
}

/// The chunk being read (the session's `Chunk` state).
#[derive(Debug)]
pub(crate) struct Chunk {
    /// Octets still to come.
    pub(crate) remaining: u64,
    /// The declared size (for the `250 2.0.0 <n> octets received` reply).
    pub(crate) size: u64,
    /// `BDAT … LAST`.
    pub(crate) last: bool,
    /// Where its octets go.
    pub(crate) disposition: Disposition,
    /// When the whole chunk must be in (`data_timeout` after its BDAT line), if set.
    pub(crate) deadline: Option<Instant>,
}

/// The bare-CR/LF check of chunk content, carried across chunks; see the module docs.
#[derive(Debug, Clone)]
pub(crate) struct LineCheck {
    /// Rewrite bare LF as CRLF instead of refusing it.
    normalize: bool,
    /// The last content octet seen (0 before the first).
    prev: u8,
    /// A bare CR, or (under `reject`) a bare LF, was seen.
    bad: bool,
}

impl LineCheck {
    pub(crate) fn new(normalize: bool) -> Self {
        Self {
            normalize,
            prev: 0,
            bad: false,
        }
    }

    /// Checks `piece` and hands it on to `emit`, bare LFs rewritten under `normalize`.
    pub(crate) fn feed(&mut self, piece: &[u8], emit: &mut impl FnMut(&[u8])) {
        let Some(&last) = piece.last() else {
            return;
        };
        if self.prev == b'\r' && piece[0] != b'\n' {
            self.bad = true; // the CR that ended the previous piece was bare
        }
        let mut start = 0;
        let mut search = 0;
        while let Some(off) = memchr2(b'\r', b'\n', &piece[search..]) {
            let i = search + off;
            search = i + 1;
            if piece[i] == b'\r' {
                if piece.get(i + 1).is_some_and(|&c| c != b'\n') {
                    self.bad = true;
                }
                continue;
            }
            let before = if i == 0 { self.prev } else { piece[i - 1] };
            if before == b'\r' {
                continue;
            }
            if !self.normalize {
                self.bad = true;
                continue;
            }
            if start < i {
                emit(&piece[start..i]);
            }
            emit(b"\r\n");
            start = i + 1;
        }
        if start < piece.len() {
            emit(&piece[start..]);
        }
        self.prev = last;
    }

    /// Whether the content so far holds a line ending the policy refuses.
    pub(crate) fn refused(&self) -> bool {
        self.bad
    }

    /// At the end of the message: whether the content, as a whole, is refused (a CR as its very
    /// last octet is bare too).
    pub(crate) fn refused_at_end(&self) -> bool {
        self.bad || self.prev == b'\r'
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_and_last() {
        assert_eq!(parse_args(b"0"), Ok((0, Ending::More)));
        assert_eq!(parse_args(b"10 LAST"), Ok((10, Ending::Last)));
        assert_eq!(parse_args(b"10   last"), Ok((10, Ending::Last)));
        assert_eq!(parse_args(b"10 LASTX"), Ok((10, Ending::Invalid)));
        assert_eq!(parse_args(b"10 LAST 3"), Ok((10, Ending::Invalid)));
        assert_eq!(
            parse_args(b"18446744073709551615"),
            Ok((u64::MAX, Ending::More))
        );
        for bad in [
            &b""[..],
            b"x",
            b"+5",
            b"-1",
            b"5x LAST",
            b"18446744073709551616",
            b"000000000000000000001",
        ] {
            assert_eq!(parse_args(bad), Err(Unframeable), "{bad:?}");
        }
    }

    fn check(normalize: bool, pieces: &[&[u8]]) -> (Vec<u8>, bool) {
        let mut c = LineCheck::new(normalize);
        let mut out = Vec::new();
        for p in pieces {
            c.feed(p, &mut |b: &[u8]| out.extend_from_slice(b));
        }
        (out, c.refused_at_end())
    }

    #[test]
    fn line_endings_split_anywhere() {
        let table: &[(&[u8], bool, &[u8], bool)] = &[
            (b"a\r\nb\r\n", false, b"a\r\nb\r\n", false),
            (b"a\nb\r\n", false, b"a\nb\r\n", true),
            (b"a\nb\r\n", true, b"a\r\nb\r\n", false),
            (b"\n.x\n", true, b"\r\n.x\r\n", false),
            (b"a\rb\r\n", false, b"a\rb\r\n", true),
            (b"a\rb\r\n", true, b"a\rb\r\n", true),
            (b"a\r", false, b"a\r", true),
            (b"a\r\r\n", true, b"a\r\r\n", true),
            (b"", false, b"", false),
            (b"no ending", false, b"no ending", false),
        ];
        for &(input, normalize, want, refused) in table {
            for i in 0..=input.len() {
                for j in i..=input.len() {
                    let got = check(normalize, &[&input[..i], &input[i..j], &input[j..]]);
                    assert_eq!(got, (want.to_vec(), refused), "{input:?} split {i},{j}");
                }
            }
        }
    }
}
