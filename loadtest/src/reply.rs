//! SMTP reply parsing (RFC 5321 §4.2), sans-IO: bytes in, one complete reply (code, length,
//! whether an EHLO reply advertised PIPELINING) out.
//!
//! It does not read sockets, keep state between calls or allocate: the caller keeps the unread
//! bytes and calls again when more arrive ("not complete yet" is `Ok(None)`, not an error).

/// The longest reply (all lines of a multi-line reply together) we accept before calling the
/// server broken. RFC 5321 §4.5.3.1.5 limits a reply line to 512 octets but not the number of
/// lines; 16 KiB is far more than any EHLO reply we have seen.
pub(crate) const MAX_REPLY: usize = 16 * 1024;

/// One complete reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reply {
    /// The three-digit reply code (200..=599 for a well-formed reply).
    pub(crate) code: u16,
    /// How many bytes of the input the reply took, line endings included.
    pub(crate) len: usize,
    /// Whether one of the lines after the first is the EHLO keyword `PIPELINING` (RFC 2920).
    pub(crate) pipelining: bool,
    /// Whether one of the lines after the first is the EHLO keyword `CHUNKING` (RFC 3030).
    pub(crate) chunking: bool,
}

impl Reply {
    /// Whether the code is a positive completion (2xx).
    pub(crate) fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }
}

/// Why the bytes are not an SMTP reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplyError {
    /// A line does not start with three digits followed by ' ', '-' or the line end.
    Malformed,
    /// A continuation line carries a different code than the first line.
    CodeMismatch,
    /// No complete reply within [`MAX_REPLY`] bytes.
    TooLong,
}

impl std::fmt::Display for ReplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Malformed => "malformed reply line",
            Self::CodeMismatch => "reply code changes inside a multi-line reply",
            Self::TooLong => "reply longer than 16 KiB",
        })
    }
}

/// Parses the first complete reply in `buf`.
///
/// Returns `Ok(None)` when `buf` holds only part of a reply (the caller reads more and calls again
/// with the same bytes at the front). Lines end with LF; a CR before it is optional, so a server
/// that sends bare LF is still understood.
///
/// # Errors
/// [`ReplyError`] when the bytes cannot be a reply.
pub(crate) fn parse(buf: &[u8]) -> Result<Option<Reply>, ReplyError> {
    let mut pos = 0;
    let mut code = None;
    let mut pipelining = false;
    let mut chunking = false;
    loop {
        let rest = &buf[pos..];
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            // Check what we have so far so garbage fails fast instead of at MAX_REPLY.
            check_prefix(rest)?;
            if buf.len() >= MAX_REPLY {
                return Err(ReplyError::TooLong);
            }
            return Ok(None);
        };
        let line = &rest[..nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let (line_code, last) = line_head(line)?;
        match code {
            None => code = Some(line_code),
            Some(c) if c != line_code => return Err(ReplyError::CodeMismatch),
            Some(_) => {
                pipelining |= is_keyword(&line[4..], b"PIPELINING");
                chunking |= is_keyword(&line[4..], b"CHUNKING");
            }
        }
        pos += nl + 1;
        if pos > MAX_REPLY {
            return Err(ReplyError::TooLong);
        }
        if last {
            return Ok(Some(Reply {
                code: line_code,
                len: pos,
                pipelining,
                chunking,
            }));
        }
    }
}

/// The code of a complete line and whether it is the last line of the reply.
fn line_head(line: &[u8]) -> Result<(u16, bool), ReplyError> {
    if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) || line[0] < b'2' {
        return Err(ReplyError::Malformed);
    }
    let code = line[..3]
        .iter()
        .fold(0u16, |acc, &d| acc * 10 + u16::from(d - b'0'));
    match line.get(3) {
        None | Some(b' ') => Ok((code, true)),
        Some(b'-') => Ok((code, false)),
        Some(_) => Err(ReplyError::Malformed),
    }
}

/// Rejects an incomplete line that already cannot become a reply line.
fn check_prefix(part: &[u8]) -> Result<(), ReplyError> {
    let digits = part.len().min(3);
    let ok_digits = part[..digits].iter().all(u8::is_ascii_digit);
    let ok_sep = part.len() < 4 || matches!(part[3], b' ' | b'-' | b'\r');
    if ok_digits && ok_sep {
        Ok(())
    } else {
        Err(ReplyError::Malformed)
    }
}

/// Whether the EHLO line text (after "250-") is `keyword`, alone or followed by parameters.
fn is_keyword(text: &[u8], keyword: &[u8]) -> bool {
    text.len() >= keyword.len()
        && text[..keyword.len()].eq_ignore_ascii_case(keyword)
        && matches!(text.get(keyword.len()), None | Some(b' '))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(input: &[u8]) -> Reply {
        match parse(input) {
            Ok(Some(r)) => r,
            other => panic!("{:?} for {:?}", other, String::from_utf8_lossy(input)),
        }
    }

    #[test]
    fn single_line_replies() {
        let r = complete(b"250 2.0.0 Ok\r\n");
        assert_eq!((r.code, r.len, r.pipelining), (250, 14, false));
        assert!(r.is_positive());
        let r = complete(b"354 End data with <CR><LF>.<CR><LF>\r\nrest");
        assert_eq!((r.code, r.len), (354, 37));
        assert!(!r.is_positive());
        // Code alone, no text (RFC 5321 §4.2: the text is optional).
        assert_eq!(complete(b"221\r\n").len, 5);
        // Bare LF.
        assert_eq!(complete(b"550 no\n").code, 550);
    }

    #[test]
    fn multi_line_ehlo_with_pipelining() {
        let ehlo = b"250-mx.example\r\n250-SIZE 1000\r\n250-pipelining\r\n250 8BITMIME\r\n";
        let r = complete(ehlo);
        assert_eq!((r.code, r.len, r.pipelining), (250, ehlo.len(), true));
        assert!(!r.chunking);
        assert!(complete(b"250-mx\r\n250-CHUNKING\r\n250 SIZE\r\n").chunking);
        assert!(!complete(b"250 CHUNKING\r\n").chunking);
        let no = b"250-mx.example\r\n250-PIPELININGX\r\n250 SIZE\r\n";
        assert!(!complete(no).pipelining);
        // The keyword on the greeting line (first line) is the domain, not a capability.
        assert!(!complete(b"250 PIPELINING\r\n").pipelining);
        assert!(complete(b"250-x\r\n250 PIPELINING\r\n").pipelining);
    }

    #[test]
    fn two_replies_back_to_back_are_taken_one_at_a_time() {
        let buf = b"250 ok\r\n250 ok too\r\n354 go\r\n";
        let a = complete(buf);
        let b = complete(&buf[a.len..]);
        let c = complete(&buf[a.len + b.len..]);
        assert_eq!((a.code, b.code, c.code), (250, 250, 354));
        assert_eq!(a.len + b.len + c.len, buf.len());
    }

    #[test]
    fn every_split_point_is_partial_then_complete() {
        let ehlo: &[u8] = b"250-mx.example\r\n250-PIPELINING\r\n250 SIZE 10240000\r\n";
        for cut in 0..ehlo.len() {
            assert_eq!(parse(&ehlo[..cut]), Ok(None), "cut at {cut}");
            let mut joined = ehlo[..cut].to_vec();
            joined.extend_from_slice(&ehlo[cut..]);
            let r = complete(&joined);
            assert_eq!((r.len, r.pipelining), (ehlo.len(), true));
        }
    }

    #[test]
    fn malformed_input_is_an_error() {
        assert_eq!(parse(b"hello\r\n"), Err(ReplyError::Malformed));
        assert_eq!(parse(b"25x ok\r\n"), Err(ReplyError::Malformed));
        assert_eq!(parse(b"250_ok\r\n"), Err(ReplyError::Malformed));
        assert_eq!(parse(b"150 ok\r\n"), Err(ReplyError::Malformed));
        assert_eq!(parse(b"ab"), Err(ReplyError::Malformed));
        assert_eq!(parse(b"250x"), Err(ReplyError::Malformed));
        assert_eq!(parse(b"\r\n"), Err(ReplyError::Malformed));
        assert_eq!(parse(b"250-a\r\n251 b\r\n"), Err(ReplyError::CodeMismatch));
    }

    #[test]
    fn endless_reply_is_bounded() {
        let mut buf = Vec::new();
        while buf.len() <= MAX_REPLY {
            buf.extend_from_slice(b"250-more\r\n");
        }
        assert_eq!(parse(&buf), Err(ReplyError::TooLong));
        let long_line = [b"250 ".as_slice(), &[b'x'; MAX_REPLY]].concat();
        assert_eq!(parse(&long_line), Err(ReplyError::TooLong));
    }
}
