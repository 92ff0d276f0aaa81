//! Throughput of the DATA scanner (`ringmx::data::DataScanner`).
//!
//! Ids (kept stable so runs can be compared):
//! - `scanner/typical_76/65536`: 64 KiB of 76-character CRLF text lines, one in 16 dot-stuffed,
//!   ending in the terminator, fed in 64 KiB chunks.
//! - `naive/typical_76/65536`: the same input through the test oracle (`src/data/naive.rs`,
//!   compiled into this bench from the same file the unit tests use): the whole input at once,
//!   one byte at a time, RFC 5321 §4.5.2 as literally as possible. It is the baseline the fast
//!   scanner is measured against, not a rival to it. (Until the bench used the oracle, this id
//!   measured a streaming byte-at-a-time state machine kept in the bench: older figures for it
//!   are not comparable.)
//! - `scanner/base64_76/1048576`: 1 MiB of 76-character base64 lines, fed in 64 KiB chunks.
//! - `scanner/long_lines/65536`: 64 KiB of 998-character text lines (the RFC 5321 §4.5.3.1.6
//!   maximum), one in 16 dot-stuffed.
//! - `scanner/mixed/262144`: 256 KiB alternating 16 KiB runs of 76-character and 998-character
//!   text lines (a text part and an unwrapped HTML part, eight times over), one in 16
//!   dot-stuffed, fed in 64 KiB chunks: what switching between short-line and long-line searching
//!   costs when the runs are too short for the long-line search to pay.
//! - `scanner/lines_<n>/65536` for n = 256, 384, 512, 4000: 64 KiB of `n`-character text lines,
//!   one in 16 dot-stuffed, around the line length where the scanner changes how it searches
//!   (4000 is over the RFC 5321 limit, but unwrapped HTML like that is common).
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

// The oracle is test-only code in the library (`#[cfg(test)]`), so the bench compiles the same
// file rather than keeping a copy of it. Cargo sets `cfg(test)` for a bench without the libtest
// harness too, so the oracle's own test module is compiled here with its `#[test]` dropped,
// leaving its `use super::*` unused.
#[path = "../src/data/naive.rs"]
#[allow(unused_imports)]
mod naive;

/// Characters per text line before the CRLF (RFC 5322 §2.1.1 recommends at most 78).
const TYPICAL_LINE: usize = 76;
/// Characters per line at the RFC 5321 §4.5.3.1.6 limit of 1000 octets with the CRLF.
const LONG_LINE: usize = 998;
/// Every how many text lines one starts with a (stuffed) dot.
const STUFF_EVERY: usize = 16;
/// Line lengths of the `lines_<n>` inputs.
const SWEEP: [usize; 4] = [256, 384, 512, 4000];
/// Bytes of one run of equal-length lines in the `mixed` input.
const MIXED_RUN: usize = 16 * 1024;
/// Size of one read handed to the scanner.
const CHUNK: usize = 64 * 1024;
/// The DATA terminator that closes every bench input (its CRLF is the last body line's).
const TERMINATOR: &[u8] = b".\r\n";

/// A bench input: the wire bytes and what the scanner must hand on.
struct Input {
    wire: Vec<u8>,
    body_len: usize,
}

/// Lines drawn by `fill`, then the terminator, `total` bytes in all (the last two lines are
/// shortened to land exactly on `total`). `line_len` gives each line's length from the bytes
/// written so far. When `stuff` is set, one line in [`STUFF_EVERY`] begins with `.`, so it goes
/// on the wire dot-stuffed as `..`.
fn build(
    total: usize,
    line_len: impl Fn(usize) -> usize,
    stuff: bool,
    mut fill: impl FnMut(&mut Vec<u8>, usize),
) -> Input {
    let mut wire = Vec::with_capacity(total);
    let mut body_len = 0;
    let mut lines = 0;
    let room = total - TERMINATOR.len();
    loop {
        let line_len = line_len(wire.len());
        if room - wire.len() <= 2 * line_len + 4 {
            break;
        }
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
    }
    wire.extend_from_slice(TERMINATOR);
    assert_eq!(wire.len(), total, "bench input size");
    Input { wire, body_len }
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

fn typical(total: usize, line_len: impl Fn(usize) -> usize) -> Input {
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
    build(
        total,
        |_| TYPICAL_LINE,
        false,
        move |out, n| {
            out.extend((0..n).map(|_| ALPHABET[(rng.next() % 64) as usize]));
        },
    )
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

/// Runs the oracle over the whole input and returns the same figures as [`run_scanner`].
fn run_oracle(input: &[u8]) -> (usize, usize) {
    let found = naive::scan(input);
    assert!(!found.bare_cr && !found.bare_lf, "bench inputs are clean");
    (found.end.expect("terminator"), found.body.len())
}

fn benches(c: &mut Criterion) {
    let typical_76 = typical(65536, |_| TYPICAL_LINE);
    let base64_76 = base64(1 << 20);
    let long_lines = typical(65536, |_| LONG_LINE);
    let mixed = typical(256 * 1024, |at| {
        if (at / MIXED_RUN) % 2 == 0 {
            TYPICAL_LINE
        } else {
            LONG_LINE
        }
    });

    let sweep: Vec<(String, Input)> = SWEEP
        .iter()
        .map(|&len| (format!("lines_{len}"), typical(65536, move |_| len)))
        .collect();

    let mut group = c.benchmark_group("scanner");
    let named = [
        ("typical_76", &typical_76),
        ("base64_76", &base64_76),
        ("long_lines", &long_lines),
        ("mixed", &mixed),
    ];
    let swept = sweep.iter().map(|(name, input)| (name.as_str(), input));
    for (name, input) in named.into_iter().chain(swept) {
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
                let got = run_oracle(black_box(&input.wire));
                assert_eq!(got, (input.wire.len(), input.body_len));
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
