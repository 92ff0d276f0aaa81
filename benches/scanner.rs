//! Throughput of the DATA scanner (`ringmx::data::DataScanner`).
//!
//! Ids (kept stable so runs can be compared):
//! - `scanner/typical_76/65536`: 64 KiB of 76-character CRLF text lines, one in 16 dot-stuffed,
//!   ending in the terminator, fed in 64 KiB chunks.
//! - `naive/typical_76/65536`: the same input through [`reference::ByteScanner`], a plain
//!   one-byte-at-a-time state machine kept in this file (the scanner the fast one replaced).
//! - `ceiling/lf_count/65536`: `memchr::memchr_iter(b'\n', ..).count()` over the same input, the
//!   speed limit of anything that must find every line end.
//! - `scanner/base64_76/1048576`: 1 MiB of 76-character base64 lines, fed in 64 KiB chunks.
//! - `scanner/long_lines/65536`: 64 KiB of 998-character text lines (the RFC 5321 §4.5.3.1.6
//!   maximum), one in 16 dot-stuffed.
//!
//! Run: `cargo bench --bench scanner -- --warm-up-time 1 --measurement-time 3`.
//! Samples are many and short (flat sampling), so on a busy machine most of them run
//! uninterrupted; read the median (`jq .median.point_estimate
//! target/criterion/scanner/typical_76/65536/new/estimates.json`, in ns per iteration) rather than
//! the mean that criterion prints, which a few interrupted samples drag down.
//! Every iteration asserts the body length and that the terminator was found where expected.

// `criterion_group!` defines an undocumented `pub fn`; nothing else here is public.
#![allow(missing_docs)]

use criterion::{
    black_box, criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use ringmx::data::DataScanner;

/// Characters per text line before the CRLF (RFC 5322 §2.1.1 recommends at most 78).
const TYPICAL_LINE: usize = 76;
/// Characters per line at the RFC 5321 §4.5.3.1.6 limit of 1000 octets with the CRLF.
const LONG_LINE: usize = 998;
/// Every how many text lines one starts with a (stuffed) dot.
const STUFF_EVERY: usize = 16;
/// Size of one read handed to the scanner.
const CHUNK: usize = 64 * 1024;
/// The DATA terminator that closes every bench input (its CRLF is the last body line's).
const TERMINATOR: &[u8] = b".\r\n";

/// A bench input: the wire bytes and what the scanner must hand on.
struct Input {
    wire: Vec<u8>,
    body_len: usize,
    lines: usize,
}

/// Lines of `line_len` characters drawn by `fill`, then the terminator, `total` bytes in all (the
/// last two lines are shortened to land exactly on `total`). When `stuff` is set, one line in
/// [`STUFF_EVERY`] begins with `.`, so it goes on the wire dot-stuffed as `..`.
fn build(
    total: usize,
    line_len: usize,
    stuff: bool,
    mut fill: impl FnMut(&mut Vec<u8>, usize),
) -> Input {
    let mut wire = Vec::with_capacity(total);
    let mut body_len = 0;
    let mut lines = 0;
    let room = total - TERMINATOR.len();
    while room - wire.len() > 2 * line_len + 4 {
        if stuff && lines % STUFF_EVERY == 7 {
            wire.extend_from_slice(b"..");
            fill(&mut wire, line_len - 1);
        } else {
            fill(&mut wire, line_len);
        }
        wire.extend_from_slice(b"\r\n");
        body_len += line_len + 2;
        lines += 1;
    }
    let left = room - wire.len() - 4;
    for len in [left / 2, left - left / 2] {
        fill(&mut wire, len);
        wire.extend_from_slice(b"\r\n");
        body_len += len + 2;
        lines += 1;
    }
    wire.extend_from_slice(TERMINATOR);
    assert_eq!(wire.len(), total, "bench input size");
    Input {
        wire,
        body_len,
        lines,
    }
}

/// A small deterministic generator (xorshift) so inputs are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn typical(total: usize, line_len: usize) -> Input {
    const WORDS: &[&str] = &[
        "the", "message", "of", "mail", "server", "and", "a", "delivery", "to", "queue", "is",
        "spool", "with", "Regards,", "receipt", "for", "order", "1234", "Thanks.", "e.g.",
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    build(total, line_len, true, move |out, n| {
        let start = out.len();
        while out.len() - start < n {
            let word = WORDS[(rng.next() % WORDS.len() as u64) as usize];
            out.extend_from_slice(word.as_bytes());
            out.push(b' ');
        }
        out.truncate(start + n);
    })
}

fn base64(total: usize) -> Input {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    build(total, TYPICAL_LINE, false, move |out, n| {
        out.extend((0..n).map(|_| ALPHABET[(rng.next() % 64) as usize]));
    })
}

/// Feeds `input` to a fresh scanner in `CHUNK`-sized reads and returns the body length.
fn run_scanner(input: &[u8]) -> (usize, usize) {
    let mut scanner = DataScanner::new();
    let mut body = 0;
    let mut consumed = 0;
    for chunk in input.chunks(CHUNK) {
        let scan = scanner.scan(chunk, |segment| body += segment.len());
        consumed += scan.consumed;
        if scan.complete {
            break;
        }
    }
    (consumed, body)
}

fn run_reference(input: &[u8]) -> (usize, usize) {
    let mut scanner = reference::ByteScanner::new();
    let mut body = 0;
    let mut consumed = 0;
    for chunk in input.chunks(CHUNK) {
        let (used, complete) = scanner.scan(chunk, |segment| body += segment.len());
        consumed += used;
        if complete {
            break;
        }
    }
    (consumed, body)
}

fn benches(c: &mut Criterion) {
    let typical_76 = typical(65536, TYPICAL_LINE);
    let base64_76 = base64(1 << 20);
    let long_lines = typical(65536, LONG_LINE);

    let mut group = c.benchmark_group("scanner");
    for (name, input) in [
        ("typical_76", &typical_76),
        ("base64_76", &base64_76),
        ("long_lines", &long_lines),
    ] {
        group.sampling_mode(SamplingMode::Flat);
        group.throughput(Throughput::Bytes(input.wire.len() as u64));
        group.bench_with_input(
            BenchmarkId::new(name, input.wire.len()),
            input,
            |b, input| {
                b.iter(|| {
                    let got = run_scanner(black_box(&input.wire));
                    assert_eq!(got, (input.wire.len(), input.body_len));
                })
            },
        );
    }
    group.finish();

    let input = &typical_76;
    let mut group = c.benchmark_group("naive");
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Bytes(input.wire.len() as u64));
    group.bench_with_input(
        BenchmarkId::new("typical_76", input.wire.len()),
        input,
        |b, input| {
            b.iter(|| {
                let got = run_reference(black_box(&input.wire));
                assert_eq!(got, (input.wire.len(), input.body_len));
            })
        },
    );
    group.finish();

    let mut group = c.benchmark_group("ceiling");
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Bytes(input.wire.len() as u64));
    group.bench_with_input(
        BenchmarkId::new("lf_count", input.wire.len()),
        input,
        |b, input| {
            b.iter(|| {
                let lfs = memchr::memchr_iter(b'\n', black_box(&input.wire)).count();
                // One LF per line plus the terminator's.
                assert_eq!(lfs, input.lines + 1);
            })
        },
    );
    group.finish();
}

/// Many short samples: on a shared machine a sample that another process interrupts is slow,
/// and with short samples most are not interrupted, so the median shows the code's own speed.
fn config() -> Criterion {
    Criterion::default().sample_size(3000).nresamples(10_000)
}

criterion_group! {
    name = scanner;
    config = config();
    targets = benches
}
criterion_main!(scanner);

/// The byte-at-a-time scanner the SIMD one replaced, kept here as the `naive` baseline: same
/// rules, same streaming interface, no block skipping.
mod reference {
    #[derive(Clone, Copy)]
    enum State {
        LineStart,
        Dot,
        DotCr,
        Mid,
        Cr,
    }

    pub(crate) struct ByteScanner {
        state: State,
        bare_cr: bool,
        bare_lf: bool,
    }

    impl ByteScanner {
        pub(crate) fn new() -> Self {
            Self {
                state: State::LineStart,
                bare_cr: false,
                bare_lf: false,
            }
        }

        /// Returns (consumed, complete).
        pub(crate) fn scan<F: FnMut(&[u8])>(&mut self, input: &[u8], mut emit: F) -> (usize, bool) {
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
                            self.state = State::Mid;
                            continue;
                        }
                    }
                    State::DotCr => {
                        if b == b'\n' {
                            self.state = State::LineStart;
                            return (i + 1, true);
                        }
                        self.bare_cr = true;
                        emit(b"\r");
                        seg_start = i;
                        self.state = State::Mid;
                        continue;
                    }
                    State::Mid => match b {
                        b'\r' => self.state = State::Cr,
                        b'\n' => self.bare_lf = true,
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
            assert!(!self.bare_cr && !self.bare_lf, "bench inputs are clean");
            (input.len(), false)
        }
    }
}
