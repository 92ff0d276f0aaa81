//! The recipient table (`--recipients FILE`): which addresses of our domains exist, so that an
//! unknown recipient is refused at RCPT (`550 5.1.1`) instead of bounced later (backscatter).
//!
//! [`RecipientTable::from_bytes`] turns the file's text into an immutable table without
//! copying it: the text is lower-cased (ASCII) in place and kept as the arena, each entry's end
//! is marked with a LF in place, and a sorted, de-duplicated array of `u32` offsets points at
//! the entries. A lookup folds the client's address to lower case into a buffer on the stack
//! and binary-searches for it (a `memcmp` per probe), so it never allocates. Memory is the
//! file's size plus 4 bytes per entry, and a load needs no more than that at any moment (no
//! second copy, no temporary index); see [`RecipientTable::memory_bytes`].
//!
//! The format, one entry per line:
//! - `user@example.org`: that address;
//! - `@example.org`: every address of that domain;
//! - blank lines, and lines whose first non-blank character is `#`, are ignored;
//! - surrounding blanks are trimmed; an entry holds no blank, no `<`/`>` and exactly one `@`
//!   outside of its local part (the last `@` splits local part and domain), and is at most
//!   [`crate::smtp::MAX_PATH`] bytes long.
//!
//! Matching is ASCII case-insensitive over the whole address (as Postfix's tables do); bytes
//! outside ASCII (SMTPUTF8 addresses) must match exactly.
//!
//! This module does not read files, decide which domains are ours, or reload anything: the
//! driver reads the file, hands the text here and swaps the table it gets back.

use std::cmp::Ordering;
use std::fmt;

use super::MAX_PATH;

/// Largest table text accepted: the arena's offsets are `u32`, and a table this size already
/// costs more memory than a front-line MX should spend on one.
pub const MAX_RECIPIENT_TABLE_BYTES: usize = 1 << 30;

/// An immutable, sorted set of addresses and `@domain` wildcards.
#[derive(Clone)]
pub struct RecipientTable {
    /// The table's text, lower-cased; every entry ends at a LF (or the end of the text).
    text: Vec<u8>,
    /// Offsets of the entries in `text`, sorted by entry, without duplicates.
    starts: Box<[u32]>,
    /// How many entries are `@domain` wildcards.
    domains: usize,
}

/// Why a table's text was refused: the line (1-based) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableError {
    /// 1-based line number (0 for the whole text).
    pub line: usize,
    /// What is wrong.
    pub reason: &'static str,
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            f.write_str(self.reason)
        } else {
            write!(f, "line {}: {}", self.line, self.reason)
        }
    }
}

impl std::error::Error for TableError {}

impl fmt::Debug for RecipientTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecipientTable")
            .field("entries", &self.len())
            .field("domains", &self.domains)
            .field("memory_bytes", &self.memory_bytes())
            .finish()
    }
}

impl RecipientTable {
    /// Parses a table (see the module docs for the format); copies `text` first, see
    /// [`RecipientTable::from_bytes`].
    ///
    /// # Errors
    /// [`TableError`] for the first bad line, or a text over [`MAX_RECIPIENT_TABLE_BYTES`].
    pub fn parse(text: &[u8]) -> Result<Self, TableError> {
        Self::from_bytes(text.to_vec())
    }

    /// Parses a table from text it may change (it is lower-cased in place, then dropped): the
    /// peak memory of a load is the text, 8 bytes per entry of index, and the table.
    ///
    /// # Errors
    /// [`TableError`] for the first bad line, or a text over [`MAX_RECIPIENT_TABLE_BYTES`].
    pub fn from_bytes(mut text: Vec<u8>) -> Result<Self, TableError> {
        if text.len() > MAX_RECIPIENT_TABLE_BYTES {
            return Err(TableError {
                line: 0,
                reason: "the table is larger than 1 GiB",
            });
        }
        // Every entry's start; its end is marked with a LF in place (the byte after an entry
        // is a blank, a CR or a LF, or the text ends there).
        let lines = memchr::memchr_iter(b'\n', &text).count() + 1;
        let mut starts: Vec<u32> = Vec::with_capacity(lines);
        let mut line_start = 0usize;
        let mut n = 0;
        while line_start < text.len() {
            n += 1;
            let end =
                memchr::memchr(b'\n', &text[line_start..]).map_or(text.len(), |i| line_start + i);
            let (lead, entry) = trim(&text[line_start..end]);
            let (start, len) = (line_start + lead, entry.len());
            line_start = end + 1;
            if len == 0 || entry[0] == b'#' {
                continue;
            }
            check_entry(entry).map_err(|reason| TableError { line: n, reason })?;
            if let Some(b) = text.get_mut(start + len) {
                *b = b'\n';
            }
            // Fits in u32: the text is at most 1 GiB.
            #[allow(clippy::cast_possible_truncation)]
            starts.push(start as u32);
        }
        text.make_ascii_lowercase();
        let entry = |s: u32| entry_at(&text, s);
        starts.sort_unstable_by(|&a, &b| entry(a).cmp(entry(b)));
        starts.dedup_by(|a, b| entry(*a) == entry(*b));
        let domains = starts.iter().filter(|&&s| text[s as usize] == b'@').count();
        Ok(Self {
            text,
            starts: starts.into_boxed_slice(),
            domains,
        })
    }

    /// An empty table (refuses everyone but the postmaster).
    pub fn empty() -> Self {
        Self {
            text: Vec::new(),
            starts: Box::new([]),
            domains: 0,
        }
    }

    /// Entries (addresses and `@domain` wildcards).
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    /// Whether there is no entry at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries that are `@domain` wildcards.
    pub fn domain_entries(&self) -> usize {
        self.domains
    }

    /// Bytes of heap the table holds: the text it was parsed from (comments included) plus 4
    /// per entry.
    pub fn memory_bytes(&self) -> usize {
        self.text.capacity() + self.starts.len() * size_of::<u32>()
    }

    /// Whether `address` (`local@domain`, as the client wrote it) is in the table, itself or
    /// through `@domain`. `domain` is the part after the last `@`. Does not allocate.
    pub fn accepts(&self, address: &str, domain: &str) -> bool {
        let mut buf = [0u8; MAX_PATH];
        self.find(&mut buf, &[address.as_bytes()])
            || self.find(&mut buf, &[b"@", domain.as_bytes()])
    }

    /// Whether `address` itself is in the table (not through its `@domain`). Does not allocate.
    pub fn lists_address(&self, address: &str) -> bool {
        let mut buf = [0u8; MAX_PATH];
        self.find(&mut buf, &[address.as_bytes()])
    }

    /// Whether `@domain` is in the table, or any address of `domain` (linear: for start-up
    /// checks, not for the hot path).
    pub fn mentions_domain(&self, domain: &str) -> bool {
        (0..self.len()).any(|i| {
            let e = self.entry(i);
            e.iter()
                .rposition(|&b| b == b'@')
                .is_some_and(|at| e[at + 1..].eq_ignore_ascii_case(domain.as_bytes()))
        })
    }

    fn entry(&self, i: usize) -> &[u8] {
        entry_at(&self.text, self.starts[i])
    }

    /// Binary search for the concatenation of `parts`, folded to lower case into `buf` (a key
    /// longer than `buf` cannot be an entry: entries are at most [`MAX_PATH`] bytes).
    fn find(&self, buf: &mut [u8; MAX_PATH], parts: &[&[u8]]) -> bool {
        let mut len = 0;
        for p in parts {
            let Some(dst) = buf.get_mut(len..len + p.len()) else {
                return false;
            };
            dst.copy_from_slice(p);
            len += p.len();
        }
        let key = &mut buf[..len];
        key.make_ascii_lowercase();
        let key = &*key;
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.entry(mid).cmp(key) {
                Ordering::Less => lo = mid + 1,
                Ordering::Greater => hi = mid,
                Ordering::Equal => return true,
            }
        }
        false
    }
}

/// The entry that starts at `start`: up to the next LF or the end of `text`.
fn entry_at(text: &[u8], start: u32) -> &[u8] {
    let rest = &text[start as usize..];
    &rest[..memchr::memchr(b'\n', rest).unwrap_or(rest.len())]
}

/// Drops blanks (and a CR) at both ends; returns how many bytes were dropped in front.
fn trim(line: &[u8]) -> (usize, &[u8]) {
    let blank = |b: &u8| matches!(b, b' ' | b'\t' | b'\r');
    let lead = line.iter().take_while(|b| blank(b)).count();
    let rest = &line[lead..];
    let tail = rest.iter().rev().take_while(|b| blank(b)).count();
    (lead, &rest[..rest.len() - tail])
}

/// Checks one entry's shape.
fn check_entry(e: &[u8]) -> Result<(), &'static str> {
    if e.len() > MAX_PATH {
        return Err("entry longer than 256 bytes");
    }
    if e.iter()
        .any(|&b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'<' || b == b'>')
    {
        return Err("an entry is one address (no blanks, controls or angle brackets)");
    }
    if std::str::from_utf8(e).is_err() {
        return Err("entry is not UTF-8");
    }
    let Some(at) = e.iter().rposition(|&b| b == b'@') else {
        return Err("entry has no @ (write user@domain or @domain)");
    };
    let domain = &e[at + 1..];
    if domain.is_empty() || domain.contains(&b'@') {
        return Err("entry has no domain after its @");
    }
    if at > 0 && e[..at].contains(&b'@') && e[0] != b'"' {
        return Err("entry has more than one @");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> RecipientTable {
        RecipientTable::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn addresses_and_domains_match_in_any_case() {
        let t = table(
            "# users\n\
             Alice@Example.org\n\
             \tbob@example.org  \r\n\
             \n\
             @Catchall.Example\n\
             alice@example.org\n",
        );
        assert_eq!(t.len(), 3, "{t:?}");
        assert_eq!(t.domain_entries(), 1);
        assert!(t.accepts("alice@example.org", "example.org"));
        assert!(t.accepts("ALICE@EXAMPLE.ORG", "EXAMPLE.ORG"));
        assert!(t.accepts("Bob@Example.Org", "Example.Org"));
        assert!(!t.accepts("carol@example.org", "example.org"));
        assert!(!t.accepts("alic@example.org", "example.org"));
        assert!(!t.accepts("alice@example.orgx", "example.orgx"));
        assert!(t.accepts("anyone@catchall.example", "catchall.example"));
        assert!(t.accepts("x@CATCHALL.example", "CATCHALL.example"));
        assert!(!t.accepts("x@sub.catchall.example", "sub.catchall.example"));
        assert!(t.mentions_domain("EXAMPLE.org") && t.mentions_domain("catchall.example"));
        assert!(!t.mentions_domain("other.example"));
    }

    #[test]
    fn bad_lines_are_refused_with_their_number() {
        for (text, line) in [
            ("a@b\nno-at-sign\n", 2),
            ("a@b\n\nuser @example.org\n", 3),
            ("<a@b>\n", 1),
            ("a@\n", 1),
            ("a@b@c\n", 1),
        ] {
            let e = RecipientTable::parse(text.as_bytes()).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
        }
        let long = format!("{}@example.org", "a".repeat(250));
        assert!(RecipientTable::parse(long.as_bytes()).is_err());
        let t = table("a@b.example\n");
        assert!(
            !t.accepts(&long, "example.org"),
            "an over-long key is simply not found"
        );
        assert!(RecipientTable::parse(b"\xff@example.org").is_err());
    }

    #[test]
    fn quoted_local_parts_with_an_at_are_kept() {
        let t = table("\"a@b\"@example.org\n");
        assert!(t.accepts("\"a@b\"@example.org", "example.org"));
    }

    #[test]
    fn empty_table_and_memory() {
        let t = RecipientTable::empty();
        assert!(t.is_empty() && !t.accepts("a@b", "b"));
        assert!(table("# nothing\n\n").is_empty());
        let t = table("a@b.example\n@c.example");
        assert_eq!(t.memory_bytes(), 22 + 2 * 4);
        assert!(t.accepts("x@c.example", "c.example") && t.accepts("a@b.example", "b.example"));
    }

    proptest::proptest! {
        /// Against a set of lower-cased strings: every address is found in any case, and an
        /// address is accepted exactly when it or its `@domain` is in the set.
        #[test]
        fn agrees_with_a_set(
            entries in proptest::collection::vec("[a-cA-C]{0,3}@[a-bA-B]{1,2}", 0..40),
            probes in proptest::collection::vec("[a-cA-C]{1,3}@[a-bA-B]{1,2}", 0..40),
            crlf in proptest::bool::ANY,
        ) {
            let eol = if crlf { "\r\n" } else { "\n" };
            let text: String = entries.iter().map(|e| format!("  {e}{eol}# c{eol}")).collect();
            let t = RecipientTable::parse(text.as_bytes()).unwrap();
            let set: std::collections::HashSet<String> =
                entries.iter().map(|e| e.to_ascii_lowercase()).collect();
            proptest::prop_assert_eq!(t.len(), set.len());
            for p in entries.iter().chain(&probes) {
                if p.starts_with('@') {
                    continue;
                }
                let domain = &p[p.rfind('@').unwrap() + 1..];
                let want = set.contains(&p.to_ascii_lowercase())
                    || set.contains(&format!("@{}", domain.to_ascii_lowercase()));
                proptest::prop_assert_eq!(t.accepts(p, domain), want, "{}", p);
                proptest::prop_assert_eq!(t.accepts(&p.to_ascii_uppercase(), domain), want);
            }
        }
    }

    #[test]
    fn every_entry_of_a_large_table_is_found() {
        let mut text = String::new();
        for i in (0..5000).rev() {
            text.push_str(&format!("User{i}@D{}.example\n", i % 7));
        }
        let t = table(&text);
        assert_eq!(t.len(), 5000);
        for i in 0..5000 {
            let d = format!("d{}.example", i % 7);
            assert!(t.accepts(&format!("user{i}@{d}"), &d), "{i}");
            assert!(!t.accepts(&format!("user{i}x@{d}"), &d), "{i}");
        }
    }
}
