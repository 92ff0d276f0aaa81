//! The `normalize` policy for bare LF in a message body ([`super::BareLf::Normalize`]): every
//! LF not preceded by CR becomes CRLF, and a `.` right after such an LF is dropped as the
//! client's own dot-stuffing, the way Postfix's `smtpd_forbid_bare_newline = normalize` reads
//! such lines.
//!
//! It works on the body segments the DATA scanner hands out (terminator already found,
//! `<CRLF>`-dot-stuffing already undone) and carries two facts across segments: the last byte
//! seen and whether a dot is still to be dropped. It never decides where the message ends (only
//! `<CRLF>.<CRLF>` does, so `\n.\r\n` stays ordinary content) and does not touch bare CR, which
//! the session refuses under both policies.

use memchr::memchr;

/// Rewrites bare LF to CRLF across body segments; see the module docs.
#[derive(Debug, Clone, Default)]
pub(crate) struct LfNormalizer {
    /// The last body byte seen (0 before the first).
    prev: u8,
    /// The previous segment ended with a rewritten LF: a `.` starting this one is stuffing.
    drop_dot: bool,
}

impl LfNormalizer {
    /// Passes `segment` on to `emit` in pieces, bare LFs replaced by CRLF.
    pub(crate) fn feed(&mut self, segment: &[u8], emit: &mut impl FnMut(&[u8])) {
        let Some(&last) = segment.last() else {
            return;
        };
        let mut start = 0;
        if std::mem::take(&mut self.drop_dot) && segment[0] == b'.' {
            start = 1;
        }
        let mut search = start;
        while let Some(off) = memchr(b'\n', &segment[search..]) {
            let lf = search + off;
            let before = if lf == 0 { self.prev } else { segment[lf - 1] };
            search = lf + 1;
            if before == b'\r' {
                continue;
            }
            if start < lf {
                emit(&segment[start..lf]);
            }
            emit(b"\r\n");
            start = lf + 1;
            match segment.get(start) {
                Some(b'.') => start += 1,
                Some(_) => {}
                None => self.drop_dot = true,
            }
            search = start;
        }
        if start < segment.len() {
            emit(&segment[start..]);
        }
        self.prev = last;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalize(segments: &[&[u8]]) -> Vec<u8> {
        let mut n = LfNormalizer::default();
        let mut out = Vec::new();
        for s in segments {
            n.feed(s, &mut |piece: &[u8]| {
                assert!(!piece.is_empty(), "empty piece");
                out.extend_from_slice(piece);
            });
        }
        out
    }

    #[test]
    fn bare_lf_becomes_crlf_and_its_stuffing_dot_goes() {
        let table: &[(&[u8], &[u8])] = &[
            (b"", b""),
            (b"a\r\nb\r\n", b"a\r\nb\r\n"),
            (b"a\nb\n", b"a\r\nb\r\n"),
            (b"\n", b"\r\n"),
            (b"a\n..b\n", b"a\r\n.b\r\n"),
            (b"a\n.b\n", b"a\r\nb\r\n"),
            (b"a\n.\n", b"a\r\n\r\n"),
            (b"a\n.\r\nMAIL FROM:<x>\r\n", b"a\r\n\r\nMAIL FROM:<x>\r\n"),
            (b"a\n\n\n", b"a\r\n\r\n\r\n"),
            (b".a\r\n", b".a\r\n"), // a CRLF line start was the scanner's business
            (b"a\r.\n", b"a\r.\r\n"), // bare CR is left alone (the session refuses it)
        ];
        for &(input, want) in table {
            assert_eq!(
                normalize(&[input]),
                want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn every_split_gives_the_same_bytes() {
        let input: &[u8] = b"Subject: x\n\n..dotted\n.\nplain\r\nend\n.x\r\n\n";
        let whole = normalize(&[input]);
        assert_eq!(
            whole,
            b"Subject: x\r\n\r\n.dotted\r\n\r\nplain\r\nend\r\nx\r\n\r\n"
        );
        for i in 0..=input.len() {
            for j in i..=input.len() {
                let parts = [&input[..i], &input[i..j], &input[j..]];
                assert_eq!(normalize(&parts), whole, "split at {i}, {j}");
            }
        }
    }
}
