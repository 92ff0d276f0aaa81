//! The recipient table (`--recipients FILE`): which addresses of our domains exist, so that an
//! unknown recipient is refused at RCPT (`550 5.1.1`) instead of bounced later (backscatter).
//!
//! [`RecipientTable::parse`] turns the file's text into an immutable table: every entry
//! lower-cased (ASCII), sorted and de-duplicated, stored back to back in one byte arena with one
//! `u32` offset per entry. A lookup is a binary search that folds the client's address to lower
//! case byte by byte as it compares, so it never allocates. Memory is the entries' bytes plus
//! 4 bytes per entry (plus one), whatever the file's comments and blank lines; see
//! [`RecipientTable::memory_bytes`].
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
#[derive(Clone, PartialEq, Eq)]
pub struct RecipientTable {
    /// The entries, lower-case, sorted, back to back.
    arena: Box<[u8]>,
    /// Entry `i` is `arena[starts[i]..starts[i + 1]]`; `len() + 1` offsets.
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
    /// Parses a table (see the module docs for the format).
    ///
    /// # Errors
    /// [`TableError`] for the first bad line, or a text over [`MAX_RECIPIENT_TABLE_BYTES`].
    pub fn parse(text: &[u8]) -> Result<Self, TableError> {
        if text.len() > MAX_RECIPIENT_TABLE_BYTES {
            return Err(TableError {
                line: 0,
                reason: "the table is larger than 1 GiB",
            });
        }
        // (start, len) of every entry in `text`; lower-cased when copied below.
        let mut index: Vec<(u32, u32)> = Vec::with_capacity(text.len() / 24 + 1);
        let mut offset = 0usize;
        for (n, raw) in text.split(|&b| b == b'\n').enumerate() {
            let line_start = offset;
            offset += raw.len() + 1;
            let (lead, entry) = trim(raw);
            if entry.is_empty() || entry[0] == b'#' {
                continue;
            }
            check_entry(entry).map_err(|reason| TableError {
                line: n + 1,
                reason,
            })?;
            // Both fit in u32: the text is at most 1 GiB.
            #[allow(clippy::cast_possible_truncation)]
            index.push(((line_start + lead) as u32, entry.len() as u32));
        }
        let slice = |&(s, l): &(u32, u32)| &text[s as usize..(s + l) as usize];
        index.sort_unstable_by(|a, b| cmp_folded(slice(a), slice(b)));
        index.dedup_by(|a, b| cmp_folded(slice(a), slice(b)) == Ordering::Equal);
        let total: usize = index.iter().map(|&(_, l)| l as usize).sum();
        let mut arena = Vec::with_capacity(total);
        let mut starts = Vec::with_capacity(index.len() + 1);
        let mut domains = 0;
        for e in &index {
            #[allow(clippy::cast_possible_truncation)] // total <= text.len() <= 1 GiB
            starts.push(arena.len() as u32);
            let bytes = slice(e);
            domains += usize::from(bytes[0] == b'@');
            arena.extend(bytes.iter().map(u8::to_ascii_lowercase));
        }
        #[allow(clippy::cast_possible_truncation)]
        starts.push(arena.len() as u32);
        Ok(Self {
            arena: arena.into_boxed_slice(),
            starts: starts.into_boxed_slice(),
            domains,
        })
    }

    /// An empty table (refuses everyone but the postmaster).
    pub fn empty() -> Self {
        Self {
            arena: Box::new([]),
            starts: Box::new([0]),
            domains: 0,
        }
    }

    /// Entries (addresses and `@domain` wildcards).
    pub fn len(&self) -> usize {
        self.starts.len() - 1
    }

    /// Whether there is no entry at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries that are `@domain` wildcards.
    pub fn domain_entries(&self) -> usize {
        self.domains
    }

    /// Bytes of heap the table holds: the entries' bytes plus 4 per entry (and 4).
    pub fn memory_bytes(&self) -> usize {
        self.arena.len() + self.starts.len() * size_of::<u32>()
    }

    /// Whether `address` (`local@domain`, as the client wrote it) is in the table, itself or
    /// through `@domain`. `domain` is the part after the last `@`. Does not allocate.
    pub fn accepts(&self, address: &str, domain: &str) -> bool {
        self.find(&[address.as_bytes()]) || self.find(&[b"@", domain.as_bytes()])
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
        &self.arena[self.starts[i] as usize..self.starts[i + 1] as usize]
    }

    /// Binary search for the concatenation of `key`, folded to lower case.
    fn find(&self, key: &[&[u8]]) -> bool {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let entry = self.entry(mid).iter().copied();
            let k = key
                .iter()
                .flat_map(|p| p.iter())
                .map(u8::to_ascii_lowercase);
            match entry.cmp(k) {
                Ordering::Less => lo = mid + 1,
                Ordering::Greater => hi = mid,
                Ordering::Equal => return true,
            }
        }
        false
    }
}

/// Compares two entries as their lower-case forms.
fn cmp_folded(a: &[u8], b: &[u8]) -> Ordering {
    a.iter()
        .map(u8::to_ascii_lowercase)
        .cmp(b.iter().map(u8::to_ascii_lowercase))
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
        assert_eq!(table("# nothing\n\n"), t);
        let t = table("a@b.example\n@c.example\n");
        assert_eq!(t.memory_bytes(), 11 + 10 + 3 * 4);
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
