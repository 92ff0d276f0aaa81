//! The DATA terminator scanner.
//!
//! Only the exact sequence `<CRLF>.<CRLF>` ends a message. The CRLF before the dot belongs to the
//! message's last line, so the body handed out ends with that CRLF (or is empty). Bare CR or bare
//! LF anywhere in the body is recorded (see [`DataScanner::saw_bare_line_ending`]) so the session
//! can refuse the message after the real terminator (SMTP smuggling, CVE-2023-51764).

/// The result of one [`DataScanner::scan`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// Bytes of the input consumed. When `complete` is true this is the index just after the
    /// terminator's final LF; bytes after it are the next SMTP commands.
    pub consumed: usize,
    /// Whether the terminator was found.
    pub complete: bool,
}

/// Where the scanner stands between two bytes; this is all it carries across chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line (after CRLF, or at the start of the body).
    LineStart,
    /// After `<CRLF>.`: the dot is held back (it is either stuffing or the terminator).
    Dot,
    /// After `<CRLF>.<CR>`: both are held back.
    DotCr,
    /// Inside a line.
    Mid,
    /// Inside a line, right after a CR (already emitted).
    Cr,
}

/// Finds the end of the DATA body across chunks of any size and undoes dot-stuffing.
#[derive(Debug, Clone)]
pub struct DataScanner {
    state: State,
    bare_cr: bool,
    bare_lf: bool,
}

impl Default for DataScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl DataScanner {
    /// A scanner at the start of a body (the DATA command's CRLF counts as the previous line end,
    /// so `.<CRLF>` at once is an empty message).
    pub fn new() -> Self {
        Self {
            state: State::LineStart,
            bare_cr: false,
            bare_lf: false,
        }
    }

    /// Scans `input`, handing body bytes (dot-stuffing undone) to `emit` in order as one or more
    /// segments, borrowed from `input` where possible. Stops right after the terminator.
    pub fn scan<F: FnMut(&[u8])>(&mut self, input: &[u8], mut emit: F) -> Scan {
        // Simple byte-at-a-time version; see the SIMD version.
        let mut seg_start = 0;
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::LineStart => {
                    if b == b'.' {
                        if seg_start < i {
                            emit(&input[seg_start..i]);
                        }
                        seg_start = i + 1;
                        self.state = State::Dot;
                    } else {
                        self.state = State::Mid;
                        continue;
                    }
                }
                State::Dot => {
                    if b == b'\r' {
                        self.state = State::DotCr;
                        seg_start = i + 1;
                    } else {
                        // Stuffed dot: dropped; this byte starts the line's content.
                        self.state = State::Mid;
                        continue;
                    }
                }
                State::DotCr => {
                    if b == b'\n' {
                        self.state = State::LineStart;
                        return Scan {
                            consumed: i + 1,
                            complete: true,
                        };
                    }
                    // `.<CR>x`: the dot was stuffing, the CR is bare.
                    self.bare_cr = true;
                    emit(b"\r");
                    seg_start = i;
                    self.state = State::Mid;
                    continue;
                }
                State::Mid => match b {
                    b'\r' => self.state = State::Cr,
                    b'\n' => {
                        self.bare_lf = true;
                        self.state = State::Mid;
                    }
                    _ => {}
                },
                State::Cr => match b {
                    b'\n' => self.state = State::LineStart,
                    b'\r' => self.bare_cr = true,
                    _ => {
                        self.bare_cr = true;
                        self.state = State::Mid;
                    }
                },
            }
            i += 1;
        }
        if seg_start < input.len() {
            emit(&input[seg_start..]);
        }
        Scan {
            consumed: input.len(),
            complete: false,
        }
    }

    /// Whether a bare CR or bare LF has been seen in this body so far.
    pub fn saw_bare_line_ending(&self) -> bool {
        self.bare_cr || self.bare_lf
    }

    /// Whether a bare LF (LF not preceded by CR) has been seen.
    pub fn saw_bare_lf(&self) -> bool {
        self.bare_lf
    }

    /// Whether a bare CR (CR not followed by LF) has been seen.
    pub fn saw_bare_cr(&self) -> bool {
        self.bare_cr
    }
}
