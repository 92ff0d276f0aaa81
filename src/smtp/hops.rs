//! Counts the `Received:` header fields of a message body as it streams by, so a message that
//! has been relayed too many times (a routing loop, RFC 5321 §6.3) is refused at its end with
//! `554 5.4.6 Too many hops`.
//!
//! Fed the same bytes the sink gets (after dot-unstuffing); a header field name is matched
//! case-insensitively at the start of a line only (continuation lines begin with white space),
//! across any split of the input. Once the header ends (the first empty line) or the count
//! is over the limit, it looks at nothing more: the body costs one branch per piece. It stores
//! nothing of the message.

use memchr::memchr;

const NAME: &[u8] = b"received:";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pos {
    /// At the start of a line.
    LineStart,
    /// This many bytes of [`NAME`] matched at the start of the line.
    Matching(usize),
    /// A CR at the start of a line: an LF next ends the header.
    CrAtStart,
    /// Inside a line that is not (or no longer) a `Received:` field.
    Rest,
    /// The header is over, or the count is past the limit.
    Done,
}

/// The counter of one message.
#[derive(Debug, Clone)]
pub(crate) struct HopCounter {
    count: u32,
    limit: u32,
    pos: Pos,
}

impl HopCounter {
    /// A counter that reports over `limit` fields; 0 counts nothing (no limit).
    pub(crate) fn new(limit: u32) -> Self {
        Self {
            count: 0,
            limit,
            pos: if limit == 0 {
                Pos::Done
            } else {
                Pos::LineStart
            },
        }
    }

    /// Whether more than the limit of `Received:` fields were seen.
    pub(crate) fn over(&self) -> bool {
        self.limit != 0 && self.count > self.limit
    }

    /// Looks at the next piece of the body.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) {
        while let Some((&b, rest)) = bytes.split_first() {
            match self.pos {
                Pos::Done => return,
                Pos::Rest => match memchr(b'\n', bytes) {
                    None => return,
                    Some(i) => {
                        bytes = &bytes[i + 1..];
                        self.pos = Pos::LineStart;
                        continue;
                    }
                },
                Pos::LineStart => {
                    self.pos = match b {
                        b'\n' => Pos::Done,
                        b'\r' => Pos::CrAtStart,
                        _ if b.eq_ignore_ascii_case(&NAME[0]) => Pos::Matching(1),
                        _ => Pos::Rest,
                    };
                }
                Pos::CrAtStart => {
                    self.pos = if b == b'\n' { Pos::Done } else { Pos::Rest };
                }
                Pos::Matching(n) => {
                    self.pos = if b.eq_ignore_ascii_case(&NAME[n]) {
                        if n + 1 == NAME.len() {
                            self.count += 1;
                            if self.over() {
                                Pos::Done
                            } else {
                                Pos::Rest
                            }
                        } else {
                            Pos::Matching(n + 1)
                        }
                    } else if b == b'\n' {
                        Pos::LineStart
                    } else {
                        Pos::Rest
                    };
                }
            }
            bytes = rest;
        }
    }

    /// `Received:` fields seen (up to the first one over the limit).
    #[cfg(test)]
    pub(crate) fn count(&self) -> u32 {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count_split(msg: &[u8], limit: u32) -> Vec<u32> {
        (0..=msg.len())
            .map(|at| {
                let mut h = HopCounter::new(limit);
                h.feed(&msg[..at]);
                h.feed(&msg[at..]);
                h.count()
            })
            .collect()
    }

    #[test]
    fn counts_header_fields_only_at_line_starts_in_any_split() {
        let msg = b"Received: from a\r\n\tby b\r\nRECEIVED:x\r\nX-Received: no\r\n received: no\r\nreceived:\r\nSubject: hi\r\n\r\nReceived: in the body\r\n";
        for n in count_split(msg, 50) {
            assert_eq!(n, 3);
        }
        // Bare LF line ends (normalized bodies) too.
        for n in count_split(b"Received: a\nReceived: b\n\nReceived: c\n", 50) {
            assert_eq!(n, 2);
        }
    }

    #[test]
    fn over_the_limit() {
        let mut msg = Vec::new();
        for _ in 0..4 {
            msg.extend_from_slice(b"Received: from x by y\r\n");
        }
        msg.extend_from_slice(b"\r\nbody\r\n");
        let mut h = HopCounter::new(3);
        h.feed(&msg);
        assert!(h.over());
        let mut h = HopCounter::new(4);
        h.feed(&msg);
        assert!(!h.over());
        let mut h = HopCounter::new(0);
        h.feed(&msg);
        assert!(!h.over(), "0: no limit");
    }
}
