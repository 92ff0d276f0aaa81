//! Tests of the DATA scanner: hand-written cases (the terminator, dot-stuffing, bare CR/LF,
//! held-back bytes, every split of an input), the two searches and the switching between them,
//! and property tests that check the scanner, under several search settings, against the oracle
//! in `data/naive.rs` on random inputs split at random points (and the block search against the
//! pair rule). They do not measure speed: `cargo bench --bench scanner` does.

use super::*;
use crate::data::naive::{self, Naive};
use proptest::prelude::*;

/// A scanner whose search uses these settings instead of [`LINES_FROM`], [`FIRST_PROBE`]
/// and [`PROBE_EVERY`] (the first probe comes after `probe_every` bytes too).
fn tuned(lines_from: u32, probe_every: usize) -> DataScanner {
    DataScanner {
        search: Search::new(lines_from, probe_every, probe_every),
        ..DataScanner::new()
    }
}

/// A scanner that never leaves [`Mode::Blocks`] (its budget is never spent).
fn blocks_only() -> DataScanner {
    tuned(LINES_FROM, usize::MAX)
}

/// The scanners every test runs: the default, one pinned to [`Mode::Blocks`] (it never
/// probes), one pinned to [`Mode::Lines`] (it probes at once and no average is below 0), and
/// two that switch modes every few bytes or lines.
fn scanners() -> [(&'static str, DataScanner); 5] {
    [
        ("default", DataScanner::new()),
        ("blocks", blocks_only()),
        ("lines", tuned(0, 0)),
        ("switch 4/1", tuned(4, 1)),
        ("switch 24/7", tuned(24, 7)),
    ]
}

/// Feeds `chunks` to every scanner of [`scanners`], checks that they all agree, and returns
/// what came out in the oracle's shape.
fn run(chunks: &[&[u8]]) -> Naive {
    let [(_, first), rest @ ..] = scanners();
    let want = run_in(first, chunks);
    for (name, scanner) in rest {
        assert_eq!(run_in(scanner, chunks), want, "{name} scanner vs default");
    }
    want
}

/// Feeds `chunks` in order to `scanner` until it says complete, checking the per-call rules,
/// and returns what came out in the oracle's shape.
fn run_in(mut scanner: DataScanner, chunks: &[&[u8]]) -> Naive {
    let mut out = Naive {
        body: Vec::new(),
        bare_cr: false,
        bare_lf: false,
        end: None,
    };
    let mut offset = 0;
    for chunk in chunks {
        let scan = scanner.scan(chunk, |segment| {
            assert!(!segment.is_empty(), "empty segment emitted");
            out.body.extend_from_slice(segment);
        });
        assert!(scan.consumed <= chunk.len());
        offset += scan.consumed;
        if scan.complete {
            out.end = Some(offset);
            break;
        }
        assert_eq!(
            scan.consumed,
            chunk.len(),
            "an incomplete scan consumes everything"
        );
    }
    out.bare_cr = scanner.saw_bare_cr();
    out.bare_lf = scanner.saw_bare_lf();
    assert_eq!(scanner.saw_bare_line_ending(), out.bare_cr || out.bare_lf);
    out
}

/// Splits `input` into chunks of the given sizes (cycled; 0 is read as 1).
fn chunked<'a>(input: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut chunks = Vec::new();
    let mut rest = input;
    let mut k = 0;
    while !rest.is_empty() {
        let n = sizes[k % sizes.len()].clamp(1, rest.len());
        chunks.push(&rest[..n]);
        rest = &rest[n..];
        k += 1;
    }
    chunks
}

/// The scanner in one call, in every 2-way split, and (for short inputs) every 3-way split
/// agrees with the oracle. Returns the oracle's result.
fn check_all_splits(input: &[u8]) -> Naive {
    let want = naive::scan(input);
    assert_eq!(
        run(&[input]),
        want,
        "whole input {:?}",
        input.escape_ascii().to_string()
    );
    for a in 0..=input.len() {
        let got = run(&[&input[..a], &input[a..]]);
        assert_eq!(
            got,
            want,
            "split at {a} of {:?}",
            input.escape_ascii().to_string()
        );
    }
    if input.len() <= 24 {
        for a in 0..=input.len() {
            for b in a..=input.len() {
                let got = run(&[&input[..a], &input[a..b], &input[b..]]);
                assert_eq!(got, want, "split at {a},{b}");
            }
        }
    }
    assert_eq!(run(&chunked(input, &[1])), want, "one byte at a time");
    want
}

/// Checks a seed against its expected outcome, split every way, and padded on both sides by
/// 0..=70 bytes (past two 32-byte vectors) so that every part of it lands on every position
/// relative to the scanner's blocks.
fn check_seed(input: &[u8], body: &[u8], end: Option<usize>, bare_cr: bool, bare_lf: bool) {
    let want = check_all_splits(input);
    assert_eq!(
        want,
        Naive {
            body: body.to_vec(),
            bare_cr,
            bare_lf,
            end
        },
        "oracle vs hand-written expectation"
    );
    for pad in 0..=70 {
        // A clean line of `pad` bytes before the seed keeps it at a line start.
        let mut padded = vec![b'p'; pad];
        padded.extend_from_slice(b"\r\n");
        let prefix = padded.len();
        padded.extend_from_slice(input);
        padded.resize(padded.len() + pad, b's');
        let got = run(&[&padded]);
        assert_eq!(got, naive::scan(&padded), "pad {pad}");
        assert_eq!(&got.body[..prefix], &padded[..prefix]);
        if end.is_some() {
            // Padding after the terminator is not part of the message.
            assert_eq!(got.end, end.map(|e| e + prefix), "pad {pad}");
            assert_eq!((got.bare_cr, got.bare_lf), (bare_cr, bare_lf), "pad {pad}");
            assert_eq!(&got.body[prefix..], body, "pad {pad}");
        }
        // The same, split in the middle of the seed and at a padding boundary.
        let mid = prefix + input.len() / 2;
        assert_eq!(run(&[&padded[..mid], &padded[mid..]]), got, "pad {pad} mid");
        assert_eq!(run(&[&padded[..prefix], &padded[prefix..]]), got);
        // Padding with no line end at all: the seed is then inside a line.
        let mut raw = vec![b'q'; pad];
        raw.extend_from_slice(input);
        raw.resize(raw.len() + pad, b's');
        assert_eq!(run(&[&raw]), naive::scan(&raw), "raw pad {pad}");
    }
}

#[test]
fn terminator_at_start_is_an_empty_message() {
    check_seed(b".\r\n", b"", Some(3), false, false);
}

#[test]
fn bytes_after_the_terminator_are_not_consumed() {
    check_seed(b"Hi\r\n.\r\nQUIT\r\n", b"Hi\r\n", Some(7), false, false);
    check_seed(b"a\r\n.\r\n.\r\n", b"a\r\n", Some(6), false, false);
}

#[test]
fn ordinary_lines_pass_through() {
    check_seed(
        b"Subject: x\r\n\r\nbody line\r\n.\r\n",
        b"Subject: x\r\n\r\nbody line\r\n",
        Some(28),
        false,
        false,
    );
}

#[test]
fn empty_lines_before_the_terminator() {
    check_seed(b"\r\n\r\n.\r\n", b"\r\n\r\n", Some(7), false, false);
}

#[test]
fn double_dot_line_is_unstuffed() {
    check_seed(b"..\r\n.\r\n", b".\r\n", Some(7), false, false);
}

#[test]
fn stuffed_dot_before_text_is_removed() {
    check_seed(b"a\r\n..b\r\n.\r\n", b"a\r\n.b\r\n", Some(11), false, false);
    check_seed(b"...x\r\n.\r\n", b"..x\r\n", Some(9), false, false);
}

#[test]
fn dot_inside_a_line_is_kept() {
    check_seed(
        b"a.b\r\nc..\r\n.\r\n",
        b"a.b\r\nc..\r\n",
        Some(13),
        false,
        false,
    );
}

#[test]
fn dot_space_line_is_not_the_end() {
    // `\r\n. \r\n`: a stuffed dot before a space; the line is " ".
    check_seed(b"a\r\n. \r\n.\r\n", b"a\r\n \r\n", Some(10), false, false);
    check_seed(b"a\r\n. \r\n", b"a\r\n \r\n", None, false, false);
}

#[test]
fn lf_dot_lf_is_not_the_end() {
    check_seed(b"a\n.\nb", b"a\n.\nb", None, false, true);
    check_seed(b"a\n.\nb\r\n.\r\n", b"a\n.\nb\r\n", Some(10), false, true);
}

#[test]
fn lf_dot_crlf_is_not_the_end() {
    check_seed(b"a\n.\r\nb", b"a\n.\r\nb", None, false, true);
    check_seed(
        b"a\n.\r\nb\r\n.\r\n",
        b"a\n.\r\nb\r\n",
        Some(11),
        false,
        true,
    );
}

#[test]
fn crlf_dot_lf_is_not_the_end() {
    // The dot starts a line and is not followed by CRLF: stuffing, and the LF is bare.
    check_seed(b"a\r\n.\nb", b"a\r\n\nb", None, false, true);
    check_seed(
        b"a\r\n.\nb\r\n.\r\n",
        b"a\r\n\nb\r\n",
        Some(11),
        false,
        true,
    );
}

#[test]
fn cr_dot_cr_is_not_the_end() {
    check_seed(b"a\r.\rb", b"a\r.\rb", None, true, false);
    check_seed(b"a\r.\rb\r\n.\r\n", b"a\r.\rb\r\n", Some(10), true, false);
}

#[test]
fn crlf_dot_cr_is_not_the_end() {
    check_seed(b"a\r\n.\rb", b"a\r\n\rb", None, true, false);
    check_seed(
        b"a\r\n.\rb\r\n.\r\n",
        b"a\r\n\rb\r\n",
        Some(11),
        true,
        false,
    );
}

#[test]
fn lf_dot_cr_is_not_the_end() {
    check_seed(b"a\n.\rb", b"a\n.\rb", None, true, true);
    check_seed(b"a\n.\rb\r\n.\r\n", b"a\n.\rb\r\n", Some(10), true, true);
}

#[test]
fn bare_cr_is_flagged_and_scanning_goes_on() {
    check_seed(b"a\rb\r\n.\r\n", b"a\rb\r\n", Some(8), true, false);
    check_seed(b"\r\r\n.\r\n", b"\r\r\n", Some(6), true, false);
}

#[test]
fn bare_lf_is_flagged_and_scanning_goes_on() {
    check_seed(b"a\nb\r\n.\r\n", b"a\nb\r\n", Some(8), false, true);
    // An LF right at the start follows the DATA line's LF, not a CR.
    check_seed(b"\n.\r\n", b"\n.\r\n", None, false, true);
    check_seed(b"\n\r\n.\r\n", b"\n\r\n", Some(6), false, true);
}

#[test]
fn dot_cr_followed_by_other_bytes() {
    // `.<CR>` then not LF: the dot was stuffing, the CR is bare and handed on.
    check_seed(b".\rx\r\n.\r\n", b"\rx\r\n", Some(8), true, false);
    check_seed(b".\r\r\n.\r\n", b"\r\r\n", Some(7), true, false);
    check_seed(b".\r.\r\n", b"\r.\r\n", None, true, false);
    check_seed(b".\r\r\r\n", b"\r\r\r\n", None, true, false);
}

#[test]
fn held_back_bytes_at_the_end_of_input() {
    check_seed(b"a\r\n.", b"a\r\n", None, false, false);
    check_seed(b"a\r\n.\r", b"a\r\n", None, false, false);
    // A trailing CR is not bare yet: its LF may come in the next read.
    check_seed(b"a\r", b"a\r", None, false, false);
}

#[test]
fn terminator_split_at_every_byte() {
    let input = b"line\r\n.\r\nNEXT";
    for a in 0..=input.len() {
        let got = run(&[&input[..a], &input[a..]]);
        assert_eq!(got.end, Some(9), "split at {a}");
        assert_eq!(got.body, b"line\r\n");
    }
    // 1|4, 2|3, 3|2, 4|1 of the terminator itself.
    for a in 1..5 {
        let t = b"\r\n.\r\n";
        let got = run(&[b"x", &t[..a], &t[a..]]);
        assert_eq!((got.body.as_slice(), got.end), (&b"x\r\n"[..], Some(6)));
    }
}

#[test]
fn segments_borrow_the_input() {
    let mut input = Vec::new();
    for _ in 0..100 {
        input.extend_from_slice(b"0123456789abcdefghijklmnopqrstuvwxyz\r\n");
    }
    let mut scanner = DataScanner::new();
    let mut segments = Vec::new();
    let scan = scanner.scan(&input, |s| segments.push((s.as_ptr(), s.len())));
    assert_eq!(
        scan,
        Scan {
            consumed: input.len(),
            complete: false
        }
    );
    assert_eq!(segments, vec![(input.as_ptr(), input.len())]);

    // A stuffed dot splits the body in two segments around it, both borrowed.
    let input = b"ab\r\n..cd\r\n.\r\n";
    let mut segments = Vec::new();
    let scan = DataScanner::new().scan(input, |s| segments.push(s.as_ptr_range()));
    assert!(scan.complete);
    let base = input.as_ptr_range();
    assert_eq!(segments.len(), 2);
    assert_eq!(segments[0].start, base.start);
    assert!(segments
        .iter()
        .all(|r| base.start <= r.start && r.end <= base.end));
}

#[test]
fn reset_forgets_the_previous_body() {
    let mut scanner = DataScanner::new();
    let scan = scanner.scan(b"a\nb\r\n.\r\n", |_| {});
    assert!(scan.complete && scanner.saw_bare_lf() && !scanner.saw_bare_cr());
    scanner.reset();
    assert!(!scanner.saw_bare_line_ending());
    let mut body = Vec::new();
    let scan = scanner.scan(b".\r\n", |s| body.extend_from_slice(s));
    assert_eq!(
        scan,
        Scan {
            consumed: 3,
            complete: true
        }
    );
    assert!(body.is_empty());
}

#[test]
fn flags_are_sticky_across_calls() {
    let mut scanner = DataScanner::new();
    scanner.scan(b"a\rb", |_| {});
    assert!(scanner.saw_bare_cr());
    let scan = scanner.scan(b"\r\nclean\r\n", |_| {});
    assert!(!scan.complete);
    assert!(scanner.saw_bare_cr() && !scanner.saw_bare_lf());
}

#[test]
fn interesting_pairs() {
    let cases: &[(u8, u8, bool)] = &[
        (b'\r', b'\n', false),
        (b'a', b'b', false),
        (b'\n', b'a', false),
        (b'\n', b'\r', false),
        (b'.', b'.', false),
        (b'\r', b'a', true),
        (b'\r', b'\r', true),
        (b'a', b'\n', true),
        (b'\n', b'\n', true),
        (b'\n', b'.', true),
        (b'\r', b'.', true),
    ];
    for &(a, b, want) in cases {
        assert_eq!(interesting(a, b), want, "({a:?}, {b:?})");
    }
}

#[test]
fn first_interesting_finds_every_position() {
    // One interesting pair at every position of a long clean body, in and out of blocks.
    let clean: Vec<u8> = b"abcdefg\r\n".iter().copied().cycle().take(300).collect();
    assert_eq!(first_interesting(&clean, 1), clean.len());
    for at in 1..clean.len() {
        for (bad, sample) in [(b'\n', "lf"), (b'.', "dot"), (b'\r', "cr")] {
            let mut input = clean.clone();
            input[at] = bad;
            for from in [1, at.saturating_sub(BLOCK).max(1), at] {
                let want = (from..input.len())
                    .find(|&j| interesting(input[j - 1], input[j]))
                    .unwrap_or(input.len());
                assert_eq!(first_interesting(&input, from), want, "{sample} at {at}");
            }
        }
    }
}

#[test]
fn stuffed_dot_at_every_offset_of_a_long_body() {
    for leading in 0..=3 * BLOCK {
        let mut input = vec![b'x'; leading];
        input.extend_from_slice(b"\r\n..y\r\nzz\r\n.\r\nNOOP\r\n");
        let got = check_long(&input);
        let mut body = vec![b'x'; leading];
        body.extend_from_slice(b"\r\n.y\r\nzz\r\n");
        assert_eq!(got.body, body, "leading {leading}");
        assert_eq!(got.end, Some(input.len() - 6));
        assert!(!got.bare_cr && !got.bare_lf);
    }
}

#[test]
fn bare_endings_at_every_offset_of_a_long_body() {
    for leading in 0..=3 * BLOCK {
        for (smuggle, cr, lf) in [
            (&b"\n.\n"[..], false, true),
            (b"\r.\r", true, false),
            (b"\n.\r\n", false, true),
            (b"\rX", true, false),
        ] {
            let mut input = vec![b'x'; leading];
            input.extend_from_slice(smuggle);
            input.extend_from_slice(b"y\r\n.\r\n");
            let got = check_long(&input);
            assert_eq!(got.end, Some(input.len()), "leading {leading}");
            assert_eq!((got.bare_cr, got.bare_lf), (cr, lf), "leading {leading}");
        }
    }
}

/// Runs a long input whole, in a few chunkings and split at every byte, against the oracle.
fn check_long(input: &[u8]) -> Naive {
    let want = naive::scan(input);
    assert_eq!(run(&[input]), want);
    for sizes in [&[1usize][..], &[7], &[64], &[65, 3], &[31, 33, 2]] {
        assert_eq!(run(&chunked(input, sizes)), want, "sizes {sizes:?}");
    }
    for a in (0..=input.len()).step_by(5) {
        assert_eq!(run(&[&input[..a], &input[a..]]), want, "split {a}");
    }
    want
}

#[test]
fn bare_lf_mail_runs_line_by_line() {
    // A Unix-style client: every line ends in a bare LF; nothing ends the message.
    let input: Vec<u8> = b"some text\n.\n"
        .iter()
        .copied()
        .cycle()
        .take(1000)
        .collect();
    let got = check_long(&input);
    assert!(got.bare_lf && !got.bare_cr && got.end.is_none());
    assert_eq!(got.body, input);
}

#[test]
fn empty_input_consumes_nothing() {
    let mut scanner = DataScanner::new();
    let mut calls = 0;
    let scan = scanner.scan(b"", |_| calls += 1);
    assert_eq!(
        scan,
        Scan {
            consumed: 0,
            complete: false
        }
    );
    assert_eq!(calls, 0);
    // The state is unchanged: a terminator right after is still an empty message.
    assert_eq!(scanner.scan(b".\r\n", |_| calls += 1).consumed, 3);
    assert_eq!(calls, 0);
}

#[test]
fn pipelined_commands_after_the_terminator_stay_in_the_buffer() {
    let input =
        b"Subject: t\r\n\r\nhi\r\n.\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n";
    let mut body = Vec::new();
    let scan = DataScanner::new().scan(input, |s| body.extend_from_slice(s));
    assert!(scan.complete);
    assert_eq!(
        &input[scan.consumed..],
        b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n"
    );
    assert_eq!(body, b"Subject: t\r\n\r\nhi\r\n");
}

#[test]
fn held_dot_cr_is_handed_on_as_the_only_copied_byte() {
    let mut scanner = DataScanner::new();
    let first = b"ab\r\n.\r";
    let mut segments: Vec<Vec<u8>> = Vec::new();
    let scan = scanner.scan(first, |s| segments.push(s.to_vec()));
    assert_eq!(
        scan,
        Scan {
            consumed: 6,
            complete: false
        }
    );
    assert_eq!(segments, vec![b"ab\r\n".to_vec()]);
    let second = b"x\r\n.\r\n";
    let mut pointers = Vec::new();
    let scan = scanner.scan(second, |s| pointers.push((s.to_vec(), s.as_ptr())));
    assert_eq!(
        scan,
        Scan {
            consumed: 6,
            complete: true
        }
    );
    assert_eq!(pointers.len(), 2);
    assert_eq!(pointers[0].0, b"\r");
    assert!(
        !second.as_ptr_range().contains(&pointers[0].1),
        "the held CR is a constant"
    );
    assert_eq!(
        (pointers[1].0.as_slice(), pointers[1].1),
        (&b"x\r\n"[..], second.as_ptr())
    );
    assert!(scanner.saw_bare_cr() && !scanner.saw_bare_lf());
}

#[test]
fn dense_stuffed_lines() {
    let mut input = b"..\r\n".repeat(300);
    input.extend_from_slice(b"...\r\n.\r\n");
    let got = check_long(&input);
    let mut body = b".\r\n".repeat(300);
    body.extend_from_slice(b"..\r\n");
    assert_eq!(got.body, body);
    assert_eq!(got.end, Some(input.len()));
}

#[test]
fn dense_empty_lines() {
    let mut input = b"\r\n".repeat(500);
    input.extend_from_slice(b".\r\n");
    let got = check_long(&input);
    assert_eq!(got.body, b"\r\n".repeat(500));
    assert_eq!(got.end, Some(input.len()));
    assert!(!got.bare_cr && !got.bare_lf);
}

#[test]
fn every_other_byte_value_passes_through() {
    // 8BITMIME / binary-ish content: NUL, DEL, high bytes; only CR, LF and a line-start dot
    // mean anything to the scanner.
    let line: Vec<u8> = (0..=255u8).filter(|b| *b != b'\r' && *b != b'\n').collect();
    let mut input = Vec::new();
    for _ in 0..4 {
        input.extend_from_slice(&line);
        input.extend_from_slice(b"\r\n");
    }
    let body = input.clone();
    input.extend_from_slice(b".\r\nQUIT\r\n");
    let got = check_long(&input);
    assert_eq!(got.body, body);
    assert_eq!(got.end, Some(input.len() - 6));
    assert!(!got.bare_cr && !got.bare_lf);
}

#[test]
fn terminator_at_every_offset_of_a_long_body() {
    for leading in 0..=3 * BLOCK {
        let mut input = vec![b'x'; leading];
        input.extend_from_slice(b"\r\n.\r\nDATA");
        let mut scanner = DataScanner::new();
        let mut body = Vec::new();
        let scan = scanner.scan(&input, |s| body.extend_from_slice(s));
        assert_eq!(
            scan,
            Scan {
                consumed: leading + 5,
                complete: true
            },
            "leading {leading}"
        );
        assert_eq!(body.len(), leading + 2);
        assert_eq!(
            run(&chunked(&input, &[leading / 2 + 1])),
            naive::scan(&input)
        );
    }
}

#[test]
fn first_in_block_skips_pairs_before_skip() {
    let mut window = [b'a'; BLOCK + 1];
    window[10] = b'\n'; // pair 9 ('a', LF) is interesting
    window[40] = b'\r'; // pair 40 ('\r', 'a') is interesting
    assert!(block_has_interesting(&window));
    assert_eq!(first_in_block(&window, 0), 9);
    assert_eq!(first_in_block(&window, 9), 9);
    assert_eq!(first_in_block(&window, 10), 40);
    assert_eq!(first_in_block(&window, 41), BLOCK);
    assert!(!block_has_interesting(&[b'a'; BLOCK + 1]));
}

#[test]
fn every_search_mode_finds_every_position() {
    // Lines of 36 bytes and empty lines, one byte made interesting at every position; each
    // search is reused across calls so it is met in every state it gets into.
    let clean: Vec<u8> = b"abcdefghijklmnopqrstuvwxyz0123456789\r\n\r\n"
        .iter()
        .copied()
        .cycle()
        .take(300)
        .collect();
    for (name, scanner) in scanners() {
        let mut search = scanner.search;
        assert_eq!(search.next_interesting(&clean, 1), clean.len(), "{name}");
        for at in 1..clean.len() {
            for bad in [b'\n', b'.', b'\r'] {
                let mut input = clean.clone();
                input[at] = bad;
                for from in [
                    1,
                    at.saturating_sub(BLOCK).max(1),
                    at.saturating_sub(2).max(1),
                    at,
                ] {
                    let want = (from..input.len())
                        .find(|&j| interesting(input[j - 1], input[j]))
                        .unwrap_or(input.len());
                    assert_eq!(
                        search.next_interesting(&input, from),
                        want,
                        "{name}: {bad:?} at {at} from {from}"
                    );
                }
            }
        }
    }
}

/// `count` lines of `len` bytes each with CRLF, one in 16 starting with a stuffed dot.
fn text_lines(count: usize, len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for n in 0..count {
        let start = out.len();
        if n % 16 == 7 {
            out.extend_from_slice(b"..");
        }
        out.resize(start + len, b'w');
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[test]
fn default_modes_follow_the_line_length() {
    // Short lines, long lines, short, long: 4 KiB reads, the mode looked at after each.
    let sections = [
        (text_lines(540, 76), Mode::Blocks),
        (text_lines(100, 998), Mode::Lines),
        (text_lines(540, 76), Mode::Blocks),
        (text_lines(100, 998), Mode::Lines),
    ];
    let mut input = Vec::new();
    let mut bounds = Vec::new();
    for (lines, _) in &sections {
        input.extend_from_slice(lines);
        bounds.push(input.len());
    }
    input.extend_from_slice(b".\r\nQUIT\r\n");

    let mut scanner = DataScanner::new();
    let mut body = Vec::new();
    let mut offset = 0;
    let mut modes = Vec::new();
    for chunk in input.chunks(4096) {
        let scan = scanner.scan(chunk, |s| body.extend_from_slice(s));
        offset += scan.consumed;
        modes.push((offset, scanner.search.mode));
        if scan.complete {
            break;
        }
    }
    let want = naive::scan(&input);
    assert_eq!(body, want.body);
    assert_eq!(Some(offset), want.end);
    assert_eq!(offset, input.len() - 6);

    // Short lines never leave blocks for long (the probes at FIRST_PROBE and after fail).
    assert!(modes
        .iter()
        .take_while(|(at, _)| *at < bounds[0])
        .all(|(_, mode)| *mode == Mode::Blocks));
    let mut start = 0;
    for ((lines, mode), end) in sections.iter().zip(&bounds) {
        // Lines mode begins at most a probe interval (plus a line or two) into a long-line
        // section; blocks come back within a few short lines (a 4 KiB read or two).
        let lag = match mode {
            Mode::Lines => PROBE_EVERY + 2 * 1000 + 4096,
            Mode::Blocks => 2 * 4096,
        };
        assert!(lines.len() > lag);
        let settled: Vec<_> = modes
            .iter()
            .filter(|(at, _)| start + lag <= *at && at < end)
            .collect();
        assert!(!settled.is_empty());
        assert!(
            settled.iter().all(|(_, m)| m == mode),
            "section ending at {end}: {settled:?}"
        );
        start = *end;
    }
}

#[test]
fn long_line_body_switches_at_the_first_probe() {
    let input = text_lines(30, 998);
    let mut scanner = DataScanner::new();
    // A message smaller than FIRST_PROBE never leaves blocks.
    scanner.scan(&input[..FIRST_PROBE - 1], |_| {});
    assert_eq!(scanner.search.mode, Mode::Blocks);
    assert!(scanner.search.budget > 0);
    scanner.scan(&input[FIRST_PROBE - 1..], |_| {});
    assert_eq!(scanner.search.mode, Mode::Lines);
    assert!(scanner.search.avg >= LINES_FROM);
}

/// Long lines, short lines, long, empty, long, short (no terminator).
fn long_short_long() -> Vec<u8> {
    let mut input = Vec::new();
    for (count, len) in [(3, 30), (5, 3), (3, 30), (4, 0), (3, 30), (4, 3)] {
        for _ in 0..count {
            input.resize(input.len() + len, b'v');
            input.extend_from_slice(b"\r\n");
        }
    }
    input
}

/// The mode a scanner with these settings is in after each prefix of `input` (index `n`
/// holds the mode after `input[..n]`).
fn modes_after_prefixes(input: &[u8], lines_from: u32, probe_every: usize) -> Vec<Mode> {
    (0..=input.len())
        .map(|n| {
            let mut scanner = tuned(lines_from, probe_every);
            scanner.scan(&input[..n], |_| {});
            scanner.search.mode
        })
        .collect()
}

#[test]
fn tricky_bytes_at_every_mode_switch() {
    let base = long_short_long();
    let tricks: [&[u8]; 7] = [
        b"\r\n.\r\n",
        b"\r\n..x\r\n",
        b"\r\n.\r",
        b"\r\n.",
        b"\rQ",
        b"\nQ",
        b"\r\n.\n",
    ];
    for (lines_from, probe_every) in [(16, 12), (24, 30), (8, 5)] {
        let modes = modes_after_prefixes(&base, lines_from, probe_every);
        let switches: Vec<usize> = (1..modes.len())
            .filter(|&n| modes[n] != modes[n - 1])
            .collect();
        // The settings are chosen so that `base` switches each way at least twice: probes
        // in long lines switch to lines, short or empty lines back to blocks.
        let to_lines = switches
            .iter()
            .filter(|&&n| modes[n] == Mode::Lines)
            .count();
        assert!(to_lines >= 2, "{lines_from}/{probe_every}: {switches:?}");
        let to_blocks = switches.len() - to_lines;
        assert!(to_blocks >= 2, "{lines_from}/{probe_every}: {switches:?}");
        for &n in &switches {
            for at in n.saturating_sub(2)..(n + 2).min(base.len()) {
                for trick in tricks {
                    let mut seed = base[..at].to_vec();
                    seed.extend_from_slice(trick);
                    seed.extend_from_slice(&base[at..]);
                    seed.extend_from_slice(b"\r\n.\r\nNOOP");
                    let want = naive::scan(&seed);
                    assert!(want.end.is_some());
                    assert_eq!(run(&[&seed]), want);
                    for split in 0..=seed.len() {
                        let got = run_in(
                            tuned(lines_from, probe_every),
                            &[&seed[..split], &seed[split..]],
                        );
                        assert_eq!(
                            got,
                            want,
                            "{lines_from}/{probe_every} switch {n} at {at} split {split} {:?}",
                            seed.escape_ascii().to_string()
                        );
                    }
                }
            }
        }
    }
}

/// Bytes biased towards the ones that matter to the scanner.
fn interesting_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        4 => Just(b'\r'),
        4 => Just(b'\n'),
        3 => Just(b'.'),
        3 => Just(b'a'),
        1 => any::<u8>(),
    ]
}

/// Lines with CRLF endings, some dot-stuffed, some with smuggled endings, some long.
fn line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => "[a-z .]{0,90}\r\n".prop_map(String::into_bytes),
        2 => "\\.[a-z.]{0,10}\r\n".prop_map(String::into_bytes),
        1 => Just(b".\r\n".to_vec()),
        1 => prop::collection::vec(interesting_byte(), 0..8),
        1 => "[a-z]{100,300}\r\n".prop_map(String::into_bytes),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_match_the_oracle(
        input in prop::collection::vec(interesting_byte(), 0..300),
        sizes in prop::collection::vec(1usize..80, 1..6),
    ) {
        let want = naive::scan(&input);
        prop_assert_eq!(run(&[&input]), want.clone());
        prop_assert_eq!(run(&chunked(&input, &sizes)), want);
    }

    #[test]
    fn block_tests_match_the_pair_rule(
        bytes in prop::collection::vec(interesting_byte(), BLOCK + 1),
        skip in 0..=BLOCK,
    ) {
        let window: &[u8; BLOCK + 1] = bytes.as_slice().try_into().unwrap();
        let pairs: Vec<bool> = bytes.windows(2).map(|p| interesting(p[0], p[1])).collect();
        prop_assert_eq!(block_has_interesting(window), pairs.contains(&true));
        let want = (skip..BLOCK).find(|&k| pairs[k]).unwrap_or(BLOCK);
        prop_assert_eq!(first_in_block(window, skip), want);
    }

    #[test]
    fn random_search_settings_match_the_oracle(
        lines in prop::collection::vec(line(), 0..60),
        lines_from in 0u32..400,
        probe_every in 0usize..400,
        sizes in prop::collection::vec(1usize..300, 1..6),
    ) {
        let input = lines.concat();
        let want = naive::scan(&input);
        let whole = run_in(tuned(lines_from, probe_every), &[&input]);
        prop_assert_eq!(whole, want.clone());
        let chunks = chunked(&input, &sizes);
        prop_assert_eq!(run_in(tuned(lines_from, probe_every), &chunks), want);
    }

    #[test]
    fn random_lines_match_the_oracle(
        lines in prop::collection::vec(line(), 0..40),
        sizes in prop::collection::vec(1usize..200, 1..6),
    ) {
        let input = lines.concat();
        let want = naive::scan(&input);
        prop_assert_eq!(run(&[&input]), want.clone());
        prop_assert_eq!(run(&chunked(&input, &sizes)), want);
    }
}

proptest! {
    // Long inputs are slow to generate; fewer cases, each covering many blocks.
    #![proptest_config(ProptestConfig::with_cases(100))]

    #[test]
    fn long_bodies_in_large_reads_match_the_oracle(
        lines in prop::collection::vec(line(), 50..200),
        sizes in prop::collection::vec(500usize..5000, 1..4),
    ) {
        let input = lines.concat();
        let want = naive::scan(&input);
        prop_assert_eq!(run(&chunked(&input, &sizes)), want);
    }
}
