//! The DATA terminator scanner.
//!
//! Only the exact sequence `<CRLF>.<CRLF>` ends a message. The CRLF before the dot belongs to the
//! message's last line, so the body handed out ends with that CRLF (or is empty). Bare CR or bare
//! LF anywhere in the body is recorded (see [`DataScanner::saw_bare_line_ending`]) so the session
//! can refuse the message after the real terminator (SMTP smuggling, CVE-2023-51764).
//!
//! # How it is fast
//! Almost every byte of a mail body is "nothing to do": ordinary line content, or a CR directly
//! followed by LF that is not followed by a dot. The scanner therefore looks at pairs of
//! neighbouring bytes `(a, b)` and calls a pair *interesting* when
//! - `a` is CR but `b` is not LF, or `b` is LF but `a` is not CR (a bare line ending), or
//! - `a` is LF and `b` is `.` (a line that may start with a dot: stuffing or the terminator).
//!
//! A body with no interesting pair has nothing to unstuff, flag or stop at. The fast path finds
//! the next interesting pair, and the exact byte-by-byte state machine runs only on the byte of an
//! interesting pair and the one or two bytes after it. Body segments are slices of the input; the
//! only bytes ever held back across calls are a line-start `.` and a `.<CR>` (which may still
//! become the terminator).
//!
//! # Two searches, chosen by line length
//! - **Blocks** ([`first_interesting`]): [`BLOCK`] pairs at a time, with a branch-free loop that
//!   the compiler turns into SIMD compares (no `unsafe`, plain SSE2 on x86-64), skipping every
//!   block without an interesting pair. It costs the same per byte whatever the line length.
//! - **Lines** (`memchr::memchr2(b'\r', b'\n', ..)`, which picks AVX2 at run time): every
//!   interesting pair holds a CR or an LF, so it jumps from one line ending to the next and tests
//!   only the pairs around each. One call per line (about 15 ns here) plus a per-byte cost well
//!   below the blocks'.
//!
//! Neither wins everywhere (GiB/s, 64 KiB of CRLF text lines, one in 16 dot-stuffed, fed whole;
//! median of 3 runs of `cargo bench --bench scanner -- --warm-up-time 1 --measurement-time 3`
//! on a shared 2-core AMD EPYC VM; "only" pins one search by setting [`FIRST_PROBE`] to
//! `usize::MAX`, or [`FIRST_PROBE`] and [`LINES_FROM`] to 0):
//!
//! | line length (bench id) | blocks only | lines only | this scanner |
//! |------------------------|-------------|------------|--------------|
//! | 76 (`typical_76`)      | 14.5        | 3.5        | 14.6         |
//! | 256 (`lines_256`)      | 15.9        | 11.4       | 15.7         |
//! | 384 (`lines_384`)      | 16.5        | 14.9       | 16.1         |
//! | 512 (`lines_512`)      | 16.7        | 20.1       | 19.1         |
//! | 998 (`long_lines`)     | 16.6        | 29.4       | 27.0         |
//! | 4000 (`lines_4000`)    | 17.7        | 41.7       | 32.8         |
//!
//! The crossover is near 400 bytes. [`Search`] therefore keeps a mode: in lines mode it sees every
//! line end and keeps a moving average of the last few line lengths, going back to blocks when it
//! drops below [`LINES_FROM`] (512, on the safe side of the crossover: short-line mail, by far the
//! most common, must not pay for lines). In blocks mode it cannot see line ends, so it *probes*:
//! after [`FIRST_PROBE`] bytes of a body (past most header sections) and then every
//! [`PROBE_EVERY`] bytes it switches to lines, which on short lines falls back after two
//! `memchr2` calls. A probe costs about 70 ns here (the calls and a trip through cold code), so
//! the interval is long: on 76-character lines the cost is within run-to-run noise (about 2% by
//! the fastest tenth of the samples, on `typical_76` and on the 1 MiB `base64_76`). The 64 KiB
//! inputs above switch at 8 KiB, so they show less than the lines-only figure; `mixed` (16 KiB
//! runs, shorter than the probe interval) shows probing where it does not pay (about 2%).
//!
//! Code alignment: the same block loop measured about 8% slower on `typical_76` when the linker
//! put its head on a 64-byte boundary than 16 bytes off it, and where it lands moves with
//! unrelated code anywhere in the binary (the figures above and the before/after comparison of
//! this design were taken with the loop at the same alignment in every binary; `nm` shows where
//! `first_interesting` lands). Check that, or build with
//! `RUSTFLAGS="-C llvm-args=-align-loops=64"`, before reading a few percent into a change.
//!
//! `scan` works on a copy of the [`Search`]: reached through `self`, it made the compiler reload
//! the state machine's state from memory after every search call (about 10% on `typical_76`).
//!
//! It does not parse headers, count the size limit or know about SMTP replies; the session does.

/// The result of one [`DataScanner::scan`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// Bytes of the input consumed. When `complete` is true this is the index just after the
    /// terminator's final LF; bytes after it are the next SMTP commands.
    pub consumed: usize,
    /// Whether the terminator was found.
    pub complete: bool,
}

/// Finds the end of the DATA body across chunks of any size and undoes dot-stuffing.
///
/// Feed it every byte after the DATA command's CRLF, in chunks of any size, until a [`Scan`]
/// says `complete`; then call [`DataScanner::reset`] (or make a new one) for the next message.
#[derive(Debug, Clone)]
pub struct DataScanner {
    state: State,
    bare_cr: bool,
    bare_lf: bool,
    search: Search,
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
            search: Search::new(LINES_FROM, FIRST_PROBE, PROBE_EVERY),
        }
    }

    /// Makes the scanner ready for a new body, forgetting the bare CR/LF marks.
    pub fn reset(&mut self) {
        *self = Self::new();
    }

    /// Scans `input`, handing body bytes (dot-stuffing undone) to `emit` in order as one or more
    /// segments, borrowed from `input` where possible. Stops right after the terminator.
    ///
    /// `emit` is never called with an empty slice. A line-start `.` or `.<CR>` at the end of
    /// `input` is held back (it is consumed, but handed on, or dropped, only once the next call
    /// shows what follows it).
    pub fn scan<F: FnMut(&[u8])>(&mut self, input: &[u8], mut emit: F) -> Scan {
        let mut seg_start = 0;
        let mut i = 0;
        // A copy, written back on return: were the search reached through `self`, the compiler
        // would have to reload `self.state` from memory after every search call.
        let mut search = self.search;
        while i < input.len() {
            // Fast path: every pair before the first interesting one is plain body, and the
            // state after it follows from the last byte skipped. Pairs are only looked at inside
            // `input`, so the first byte of a call always goes through the state machine.
            if i > 0 && self.state.is_plain() {
                let next = search.next_interesting(input, i);
                if next > i {
                    self.state = State::after_plain(input[next - 1]);
                    i = next;
                    if i == input.len() {
                        break;
                    }
                }
            }
            // Exact path: one byte through the state machine.
            let byte = input[i];
            match self.state {
                State::LineStart if byte == b'.' => {
                    if seg_start < i {
                        emit(&input[seg_start..i]);
                    }
                    seg_start = i + 1;
                    self.state = State::Dot;
                }
                State::LineStart | State::Mid => self.line_byte(byte),
                State::Cr => match byte {
                    b'\n' => self.state = State::LineStart,
                    b'\r' => self.bare_cr = true,
                    _ => {
                        self.bare_cr = true;
                        self.state = State::Mid;
                    }
                },
                State::Dot if byte == b'\r' => {
                    seg_start = i + 1;
                    self.state = State::DotCr;
                }
                // A stuffed dot, already dropped: this byte starts the line's content.
                State::Dot => self.line_byte(byte),
                State::DotCr if byte == b'\n' => {
                    self.state = State::LineStart;
                    self.search = search;
                    return Scan {
                        consumed: i + 1,
                        complete: true,
                    };
                }
                State::DotCr => {
                    // `.<CR>x`: the dot was stuffing and the CR (held back) is bare; `x` is
                    // line content (a CR or ordinary byte: an LF would have been the end).
                    self.bare_cr = true;
                    emit(b"\r");
                    seg_start = i;
                    self.line_byte(byte);
                }
            }
            i += 1;
        }
        if seg_start < input.len() {
            emit(&input[seg_start..]);
        }
        self.search = search;
        Scan {
            consumed: input.len(),
            complete: false,
        }
    }

    /// Moves past `byte` inside a line, or at a line start when it is not a dot.
    fn line_byte(&mut self, byte: u8) {
        match byte {
            b'\r' => self.state = State::Cr,
            b'\n' => {
                self.bare_lf = true;
                self.state = State::Mid;
            }
            _ => self.state = State::Mid,
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

/// Where the scanner stands between two bytes; this is all it carries across chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line (after CRLF, or at the start of the body).
    LineStart,
    /// After `<CRLF>.`: the dot is held back (it is either stuffing or the terminator).
    Dot,
    /// After `<CRLF>.<CR>`: both are held back.
    DotCr,
    /// Inside a line (the last byte was neither a CR nor the LF of a CRLF).
    Mid,
    /// Inside a line, right after a CR (already emitted).
    Cr,
}

impl State {
    /// Whether nothing is held back, so the state follows from the last byte alone.
    fn is_plain(self) -> bool {
        matches!(self, Self::LineStart | Self::Mid | Self::Cr)
    }

    /// The state after `last` when the pair ending in `last` was not interesting (so an LF there
    /// is the LF of a CRLF).
    fn after_plain(last: u8) -> Self {
        match last {
            b'\r' => Self::Cr,
            b'\n' => Self::LineStart,
            _ => Self::Mid,
        }
    }
}

/// Which way [`Search`] looks for the next interesting pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// [`first_interesting`]: every pair, [`BLOCK`] at a time. Best for short lines.
    Blocks,
    /// [`memchr::memchr2`] from one CR or LF to the next, then the pairs around it. Best for
    /// long lines.
    Lines,
}

/// The fast path's search for the next interesting pair, and the mode it is in. It measures
/// line lengths while in [`Mode::Lines`] (one `memchr2` hit per clean line) and leaves that mode
/// when their moving average drops below `lines_from`; in [`Mode::Blocks`] it cannot see line
/// ends, so after skipping `probe_every` bytes it tries [`Mode::Lines`] again.
#[derive(Debug, Clone, Copy)]
struct Search {
    mode: Mode,
    /// Moving average of recent line lengths (CRLF excluded), in bytes; only used in
    /// [`Mode::Lines`].
    avg: u32,
    /// Bytes the block search may still skip before it tries [`Mode::Lines`] again.
    budget: usize,
    /// [`LINES_FROM`], or another threshold in tests.
    lines_from: u32,
    /// [`PROBE_EVERY`], or another interval in tests.
    probe_every: usize,
}

/// What one stretch of search in one mode found.
enum Step {
    /// The first interesting pair, or the input's length if there is none.
    Found(usize),
    /// The search changed mode at this pair index, having found no interesting pair before it.
    Switched(usize),
}

impl Search {
    /// A search that starts with blocks, tries lines after `first_probe` bytes, and then every
    /// `probe_every` bytes of blocks; it stays with lines while they are `lines_from` bytes long
    /// or more on average.
    fn new(lines_from: u32, first_probe: usize, probe_every: usize) -> Self {
        Self {
            mode: Mode::Blocks,
            avg: lines_from,
            budget: first_probe,
            lines_from,
            probe_every,
        }
    }

    /// The index `j >= from` of the first interesting pair `(input[j - 1], input[j])`, or
    /// `input.len()` if there is none (the contract of [`first_interesting`]). `from` must be
    /// at least 1.
    #[inline(always)]
    fn next_interesting(&mut self, input: &[u8], from: usize) -> usize {
        // The common case, short lines, goes straight to the block search.
        let from = match self.mode {
            Mode::Blocks => match self.by_blocks(input, from) {
                Step::Found(k) => return k,
                Step::Switched(at) => at,
            },
            Mode::Lines => from,
        };
        self.switching(input, from)
    }

    /// [`Search::next_interesting`] from [`Mode::Lines`], while the mode may change.
    #[inline(never)]
    fn switching(&mut self, input: &[u8], from: usize) -> usize {
        let mut j = from;
        loop {
            j = match self.by_lines(input, j) {
                Step::Found(k) => return k,
                Step::Switched(at) => match self.by_blocks(input, at) {
                    Step::Found(k) => return k,
                    Step::Switched(at) => at,
                },
            };
        }
    }

    /// Looks for the first interesting pair at or after `from` with [`first_interesting`], at
    /// most `budget` bytes far. When the budget runs out first, switches to [`Mode::Lines`] (a
    /// probe, which starts in the middle of a line).
    #[inline(always)]
    fn by_blocks(&mut self, input: &[u8], from: usize) -> Step {
        let stop = input.len().min(from.saturating_add(self.budget));
        let k = first_interesting(&input[..stop], from);
        self.budget -= k - from;
        if k < stop || stop == input.len() {
            return Step::Found(k);
        }
        self.mode = Mode::Lines;
        self.avg = self.lines_from;
        Step::Switched(stop)
    }

    /// Looks for the first interesting pair at or after `from` with `memchr2`, one CR or LF at a
    /// time, counting line lengths as it goes. Every interesting pair holds a CR or an LF, so
    /// the pairs between two hits need no test; a clean CRLF costs one call.
    fn by_lines(&mut self, input: &[u8], from: usize) -> Step {
        let mut j = from;
        let mut counted = false;
        loop {
            // A CR or LF at `j - 1` takes part in pair `j`, so the search starts there.
            let Some(off) = memchr::memchr2(b'\r', b'\n', &input[j - 1..]) else {
                return Step::Found(input.len());
            };
            let p = j - 1 + off;
            // Pairs before `p` hold neither byte; `p`, `p + 1` and `p + 2` see this CR or LF
            // and what follows it (for a CRLF: the pair before the CR, the CRLF, the LF and
            // the next line's first byte).
            for k in p.max(j)..input.len().min(p + 3) {
                if interesting(input[k - 1], input[k]) {
                    return Step::Found(k);
                }
            }
            j = p + 3;
            if j >= input.len() {
                return Step::Found(input.len());
            }
            // The first hit ends a line whose start this call did not see (a read boundary,
            // a probe, a bare line ending): its length is not known. Later hits end whole
            // lines, as the search went on right after a clean CRLF.
            if counted {
                // An exponential moving average over about the last four lines.
                let len = u32::try_from(off).unwrap_or(u32::MAX).min(MAX_COUNTED);
                self.avg = self.avg.saturating_mul(3).saturating_add(len) / 4;
                if self.avg < self.lines_from {
                    self.mode = Mode::Blocks;
                    self.budget = self.probe_every;
                    return Step::Switched(j);
                }
            }
            counted = true;
        }
    }
}

/// The average line length (CRLF excluded) from which [`Mode::Lines`] is used: where one
/// `memchr2` call per line beats [`BLOCK`]-pair tests (see the module doc for the figures).
const LINES_FROM: u32 = 512;

/// Bytes of a body the block search skips before it first tries [`Mode::Lines`]: past the
/// header section of most mail (a few KiB of short lines), so that a long-line body is found
/// early and a message smaller than this never pays for a probe.
const FIRST_PROBE: usize = 8 * 1024;

/// Bytes the block search skips before it tries [`Mode::Lines`] again. A probe on short lines
/// costs two `memchr2` calls and a trip through cold code (about 1-2% of this interval's
/// block-search time); long lines that start after the first probe are found at most this far
/// (plus a line or two) into them.
const PROBE_EVERY: usize = 64 * 1024;

/// Line lengths are counted up to this many bytes, which keeps the moving average in range.
const MAX_COUNTED: u32 = 1 << 16;

/// Pairs tested at once by the fast path. 64 bytes is four SSE2 vectors: large enough to pay for
/// the final test of the accumulated compare results, small enough that the blocks holding an
/// interesting pair (a stuffed line, the terminator) cost little to search again.
const BLOCK: usize = 64;

/// Whether the pair `(a, b)` of neighbouring bytes needs the state machine (see the module doc).
#[inline(always)]
fn interesting(a: u8, b: u8) -> bool {
    ((a == b'\r') != (b == b'\n')) | ((a == b'\n') & (b == b'.'))
}

/// Whether any of the `BLOCK` pairs in `window` (`BLOCK + 1` bytes) is interesting. Written
/// without branches so that it compiles to vector compares. The window is read as two
/// overlapping arrays (`a[k]`, `b[k]` = `window[k]`, `window[k + 1]`) so that the compiler loads
/// each vector once from memory rather than shifting bytes between registers.
#[inline(always)]
fn block_has_interesting(window: &[u8; BLOCK + 1]) -> bool {
    let (a, b) = pair_arrays(window);
    let mut acc = 0u8;
    for k in 0..BLOCK {
        acc |= u8::from(interesting(a[k], b[k]));
    }
    acc != 0
}

/// `window` seen as its first `BLOCK` bytes and its last `BLOCK` bytes.
#[inline(always)]
fn pair_arrays(window: &[u8; BLOCK + 1]) -> (&[u8; BLOCK], &[u8; BLOCK]) {
    // The fallbacks are never taken (a BLOCK + 1 array always has BLOCK-long ends); the
    // compiler removes them.
    let (a, _) = window
        .split_first_chunk::<BLOCK>()
        .unwrap_or((&[0; BLOCK], &[]));
    let (_, b) = window
        .split_last_chunk::<BLOCK>()
        .unwrap_or((&[], &[0; BLOCK]));
    (a, b)
}

/// The index `j >= from` of the first interesting pair `(input[j - 1], input[j])`, or
/// `input.len()` if there is none. `from` must be at least 1.
fn first_interesting(input: &[u8], from: usize) -> usize {
    debug_assert!(from >= 1, "a pair needs the byte before it");
    let mut j = from;
    while let Some(window) = input[j - 1..].first_chunk::<{ BLOCK + 1 }>() {
        if block_has_interesting(window) {
            return j + first_in_block(window, 0);
        }
        j += BLOCK;
    }
    if j == input.len() {
        return j;
    }
    // Fewer than BLOCK pairs are left: test the last BLOCK pairs of the input instead, skipping
    // the ones before `j` (they were tested already, or come before `from`).
    if let Some(window) = input.last_chunk::<{ BLOCK + 1 }>() {
        let start = input.len() - BLOCK;
        return start + first_in_block(window, j - start);
    }
    while j < input.len() && !interesting(input[j - 1], input[j]) {
        j += 1;
    }
    j
}

/// The index of the first interesting pair of `window` at or after `skip`, or `BLOCK` if there
/// is none. The pair tests are stored as bytes (vector compares again) and read back eight at a
/// time as little-endian words, so the first non-zero byte is found with one trailing-zero count.
#[inline(always)]
fn first_in_block(window: &[u8; BLOCK + 1], skip: usize) -> usize {
    let (a, b) = pair_arrays(window);
    let mut flags = [0u8; BLOCK];
    for (k, flag) in flags.iter_mut().enumerate() {
        *flag = u8::from(interesting(a[k], b[k]));
    }
    for (w, word) in flags.chunks_exact(8).enumerate() {
        // `chunks_exact(8)` yields 8-byte slices only, so the conversion cannot fail.
        let mut word = u64::from_le_bytes(word.try_into().unwrap_or_default());
        let low = w * 8;
        if skip >= low + 8 {
            continue;
        }
        if skip > low {
            word &= u64::MAX << ((skip - low) * 8);
        }
        if word != 0 {
            return low + (word.trailing_zeros() / 8) as usize;
        }
    }
    BLOCK
}

#[cfg(test)]
mod tests;
