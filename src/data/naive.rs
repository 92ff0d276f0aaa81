//! A one-byte-at-a-time oracle for the DATA scanner, used only by tests.
//!
//! It reads the whole input at once and follows RFC 5321 §4.5.2 as literally as possible, with
//! no state machine, no chunks and no speed tricks, so that the fast scanner can be checked
//! against it on any input. It is not used by the server and is compiled only for tests.

/// What the oracle found in a complete input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Naive {
    /// The body bytes handed on so far, dot-stuffing undone. Bytes the scanner must still hold
    /// back (a line-start `.` or `.<CR>` at the very end of the input) are not in it.
    pub(crate) body: Vec<u8>,
    /// A CR followed by something other than LF was seen.
    pub(crate) bare_cr: bool,
    /// An LF not preceded by CR was seen.
    pub(crate) bare_lf: bool,
    /// The index just after the terminator's final LF, if the terminator was found.
    pub(crate) end: Option<usize>,
}

/// Scans `input` (the bytes right after the DATA command's CRLF) one byte at a time.
pub(crate) fn scan(input: &[u8]) -> Naive {
    let mut out = Naive {
        body: Vec::new(),
        bare_cr: false,
        bare_lf: false,
        end: None,
    };
    // The DATA command's own CRLF counts as the line end before the body.
    let mut at_line_start = true;
    let mut i = 0;
    while i < input.len() {
        let byte = input[i];
        if at_line_start && byte == b'.' {
            let rest = &input[i + 1..];
            if rest.starts_with(b"\r\n") {
                out.end = Some(i + 3);
                return out;
            }
            if rest.is_empty() || rest == b"\r" {
                // Could still become the terminator: nothing after the dot is handed on yet.
                return out;
            }
            // A stuffed dot: drop it; the next byte is ordinary line content.
            at_line_start = false;
            i += 1;
            continue;
        }
        let before = if i == 0 { b'\n' } else { input[i - 1] };
        if byte == b'\r' && i + 1 < input.len() && input[i + 1] != b'\n' {
            out.bare_cr = true;
        }
        if byte == b'\n' && before != b'\r' {
            out.bare_lf = true;
        }
        out.body.push(byte);
        at_line_start = byte == b'\n' && before == b'\r';
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oracle_basic_cases() {
        let n = scan(b"a\r\n..b\r\n.\r\nMAIL");
        assert_eq!(n.body, b"a\r\n.b\r\n");
        assert_eq!(n.end, Some(11));
        assert!(!n.bare_cr && !n.bare_lf);

        let n = scan(b".\r\n");
        assert_eq!((n.body.len(), n.end), (0, Some(3)));

        let n = scan(b"a\n.\nb\r\n.\r");
        assert_eq!(n.body, b"a\n.\nb\r\n");
        assert_eq!(n.end, None);
        assert!(n.bare_lf && !n.bare_cr);

        let n = scan(b"x\r.\r\n.\ry");
        assert_eq!(n.body, b"x\r.\r\n\ry");
        assert!(n.bare_cr && !n.bare_lf);
        assert_eq!(n.end, None);
    }
}
