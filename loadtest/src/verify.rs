//! `--verify-eml DIR`: checks a spool export against an ack log. Every acknowledged token must be
//! in exactly one file of `DIR` (dot files are skipped), and that file must end with the message
//! re-rendered from the token, byte for byte (a server may put trace headers such as `Received:`
//! in front).
//!
//! It only reads files; it does not talk to a server or know the spool format.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::message::{self, Shape};

/// The outcome of a check.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// Distinct tokens in the ack log.
    pub(crate) acked: u64,
    /// Tokens that appear more than once in the ack log (the generator's bug, not the server's).
    pub(crate) acked_twice: u64,
    /// Files read.
    pub(crate) files: u64,
    /// Acknowledged and found once, byte-exact.
    pub(crate) ok: u64,
    /// Acknowledged but not found.
    pub(crate) lost: u64,
    /// Acknowledged and found in more than one file.
    pub(crate) duplicated: u64,
    /// Acknowledged, found once, but the bytes differ.
    pub(crate) mismatched: u64,
    /// Found but never acknowledged (in flight at the crash: allowed).
    pub(crate) unacked: u64,
    /// Files without one of our tokens in a Message-ID header.
    pub(crate) foreign: u64,
    /// Up to ten examples of problems, for the report.
    pub(crate) examples: Vec<String>,
}

impl Verdict {
    /// No loss, no duplicate, no corruption.
    pub(crate) fn passed(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.mismatched == 0 && self.acked_twice == 0
    }

    /// Counts as text.
    pub(crate) fn text(&self) -> String {
        let mut s = format!(
            "verify: {} acked, {} files: {} ok, {} lost, {} duplicated, {} mismatched, \
             {} unacked (allowed), {} foreign, {} acked twice -> {}\n",
            self.acked,
            self.files,
            self.ok,
            self.lost,
            self.duplicated,
            self.mismatched,
            self.unacked,
            self.foreign,
            self.acked_twice,
            if self.passed() { "PASS" } else { "FAIL" }
        );
        for e in &self.examples {
            s.push_str("  ");
            s.push_str(e);
            s.push('\n');
        }
        s
    }

    /// Counts as JSON.
    pub(crate) fn json(&self) -> Value {
        json!({
            "acked": self.acked, "acked_twice": self.acked_twice, "files": self.files,
            "ok": self.ok, "lost": self.lost, "duplicated": self.duplicated,
            "mismatched": self.mismatched, "unacked": self.unacked, "foreign": self.foreign,
            "examples": self.examples, "passed": self.passed(),
        })
    }

    fn example(&mut self, s: String) {
        if self.examples.len() < 10 {
            self.examples.push(s);
        }
    }
}

/// Checks `dir` (every regular file in it, not recursing) against the tokens in `ack_log`.
///
/// # Errors
/// A message when the ack log or the directory cannot be read.
pub(crate) fn verify(shape: &Shape, ack_log: &Path, dir: &Path) -> Result<Verdict, String> {
    let log =
        std::fs::read_to_string(ack_log).map_err(|e| format!("{}: {e}", ack_log.display()))?;
    let mut v = Verdict::default();
    let mut acked = HashSet::new();
    for line in log.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if !acked.insert(line.to_string()) {
            v.acked_twice += 1;
            v.example(format!("acked twice: {line}"));
        }
    }
    v.acked = acked.len() as u64;
    let mut found: HashMap<String, Vec<PathBuf>> = HashMap::new();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && !is_hidden(p))
        .collect();
    paths.sort();
    for p in paths {
        v.files += 1;
        let bytes = std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        match message_id_token(&bytes) {
            Some(t) => found.entry(t).or_default().push(p),
            None => v.foreign += 1,
        }
    }
    for token in &acked {
        match found.get(token).map(Vec::as_slice) {
            None | Some([]) => {
                v.lost += 1;
                v.example(format!("lost: {token}"));
            }
            Some([one]) => {
                let bytes = std::fs::read(one).map_err(|e| format!("{}: {e}", one.display()))?;
                if same_message(&bytes, &message::render(shape, token)) {
                    v.ok += 1;
                } else {
                    v.mismatched += 1;
                    v.example(format!("differs: {token} in {}", one.display()));
                }
            }
            Some(many) => {
                v.duplicated += 1;
                v.example(format!("{} copies: {token}", many.len()));
            }
        }
    }
    v.unacked = found.keys().filter(|t| !acked.contains(*t)).count() as u64;
    Ok(v)
}

/// Dot files are an exporter's bookkeeping (e.g. its progress file), not messages.
fn is_hidden(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

/// The token in the `Message-ID: <token@…>` header, if the header block has one of ours.
fn message_id_token(msg: &[u8]) -> Option<String> {
    const NAME: &[u8] = b"message-id:";
    let mut pos = 0;
    while pos < msg.len() {
        let end = msg[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(msg.len(), |n| pos + n + 1);
        let line = &msg[pos..end];
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.is_empty() {
            return None; // end of the header block
        }
        if text.len() > NAME.len() && text[..NAME.len()].eq_ignore_ascii_case(NAME) {
            let value = std::str::from_utf8(&text[NAME.len()..]).ok()?.trim();
            let inner = value.strip_prefix('<')?.split('@').next()?;
            return message::is_token(inner).then(|| inner.to_string());
        }
        pos = end;
    }
    None
}

/// Whether `stored` is `expected`, possibly after trace header lines a server put in front.
/// A store that converted CRLF to LF is accepted when it did so for every line.
fn same_message(stored: &[u8], expected: &[u8]) -> bool {
    let ends = |exp: &[u8]| {
        stored.ends_with(exp) && {
            let prefix = &stored[..stored.len() - exp.len()];
            prefix.is_empty() || prefix.ends_with(b"\n")
        }
    };
    if ends(expected) {
        return true;
    }
    if !stored.windows(2).any(|w| w == b"\r\n") {
        let lf: Vec<u8> = expected.iter().copied().filter(|&b| b != b'\r').collect();
        return ends(&lf);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::RunId;

    fn shape() -> Shape {
        Shape {
            from: "s@x.test".into(),
            to: "r@x.test".into(),
            recipients: 1,
            helo: "x.test".into(),
            subject: None,
            size: 300,
        }
    }

    #[test]
    fn finds_loss_duplicates_and_corruption() {
        let dir = std::env::temp_dir().join(format!("smtp-source-verify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let run = RunId::new(1_700_000_000, 5, 6);
        let s = shape();
        let t: Vec<String> = (0..6).map(|i| run.token(i)).collect();
        let w = |name: &str, bytes: &[u8]| std::fs::write(dir.join(name), bytes).expect("write");
        // 0: exact. 1: with a Received header in front. 2: twice. 3: corrupted. 4: missing.
        // 5: stored but never acked. Plus a foreign file.
        w("a.eml", &message::render(&s, &t[0]));
        let mut traced = b"Received: from x by y; Thu, 1 Jan 2026 00:00:00 +0000\r\n".to_vec();
        traced.extend_from_slice(&message::render(&s, &t[1]));
        w("b.eml", &traced);
        w("c1.eml", &message::render(&s, &t[2]));
        w("c2.eml", &message::render(&s, &t[2]));
        let mut bad = message::render(&s, &t[3]);
        let last = bad.len() - 3;
        bad[last] ^= 1;
        w("d.eml", &bad);
        w("f.eml", &message::render(&s, &t[5]));
        w("g.eml", b"Subject: hi\r\n\r\nnothing\r\n");
        w(".export-state.eml", b"{}");
        let log = dir.join("acks");
        std::fs::write(&log, t[..5].join("\n") + "\n").expect("write");
        let sub = dir.join("export");
        std::fs::create_dir_all(&sub).expect("mkdir");
        for e in std::fs::read_dir(&dir).expect("ls").filter_map(Result::ok) {
            if e.path().extension().is_some_and(|x| x == "eml") {
                std::fs::rename(e.path(), sub.join(e.file_name())).expect("mv");
            }
        }
        let v = verify(&s, &log, &sub).expect("verify");
        assert_eq!(
            (
                v.acked,
                v.files,
                v.ok,
                v.lost,
                v.duplicated,
                v.mismatched,
                v.unacked,
                v.foreign
            ),
            (5, 7, 2, 1, 1, 1, 1, 1),
            "{v:?}"
        );
        assert!(!v.passed());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn lf_stores_and_prefix_rules() {
        let run = RunId::new(1_700_000_000, 5, 6);
        let m = message::render(&shape(), &run.token(1));
        assert!(same_message(&m, &m));
        let lf: Vec<u8> = m.iter().copied().filter(|&b| b != b'\r').collect();
        assert!(same_message(&lf, &m));
        // A prefix that is not whole lines does not count.
        let glued = [b"X".as_slice(), &m].concat();
        assert!(!same_message(&glued, &m));
        assert_eq!(message_id_token(&m), Some(run.token(1)));
        assert_eq!(message_id_token(b"Message-ID: <abc@x>\r\n\r\n"), None);
        assert_eq!(
            message_id_token(b"Subject: x\r\n\r\nMessage-ID: <a@b>\r\n"),
            None
        );
    }
}
