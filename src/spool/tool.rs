//! The work of `ringmx spool ls|cat|export|check`: read the spool without a server.
//!
//! Output is plain text a postmaster can grep (one line per message or segment, fields
//! separated by tabs), or JSON (`ls`: one object per line; `check`: one object), written to
//! the `Write` the caller passes. Failures are [`ToolError`]s.
//!
//! This module reads segments and writes export files; it never modifies the spool. It takes
//! plain parameters: parsing the command line, printing errors and choosing exit codes belong
//! to the command-line front end.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::id::MessageId;
use super::journal::{self, RecordKind};
use super::reader::{self, DamageKind, StoredMessage};
use super::segment;

/// Name of the export progress file kept in the export directory.
pub const EXPORT_STATE: &str = ".ringmx-export.json";

/// Save export progress at least this often (messages).
const EXPORT_SAVE_EVERY: u64 = 256;

/// A tool failure, printed as one line.
#[derive(Debug)]
pub enum ToolError {
    /// The reader closed stdout (`ls | head`): not an error.
    BrokenPipe,
    /// An I/O error with what we were doing.
    Io(String, io::Error),
    /// Anything else.
    Msg(String),
}

impl ToolError {
    /// An I/O error while doing `what`; a closed pipe becomes [`ToolError::BrokenPipe`].
    pub fn io(what: impl std::fmt::Display, e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::BrokenPipe {
            Self::BrokenPipe
        } else {
            Self::Io(what.to_string(), e)
        }
    }
}

impl std::fmt::Display for ToolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BrokenPipe => f.write_str("broken pipe"),
            Self::Io(what, e) => write!(f, "{what}: {e}"),
            Self::Msg(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for ToolError {}

/// Fails unless `dir` is a directory (the one check every tool makes first).
///
/// # Errors
/// [`ToolError::Msg`] naming the directory.
pub fn require_spool_dir(dir: &Path) -> Result<(), ToolError> {
    if dir.is_dir() {
        Ok(())
    } else {
        Err(ToolError::Msg(format!(
            "{}: no such spool directory (use --spool DIR)",
            dir.display()
        )))
    }
}

/// `ls`: one line per committed message, oldest first (tab-separated), or one JSON object per
/// line.
///
/// # Errors
/// Reading the spool or writing `out` failed.
pub fn ls(dir: &Path, json: bool, out: &mut dyn Write) -> Result<(), ToolError> {
    let w = |e| ToolError::io("stdout", e);
    let msgs = reader::read_spool(dir).map_err(|e| ToolError::io(dir.display(), e))?;
    for m in &msgs {
        let subject = m
            .subject()
            .map_err(|e| ToolError::io(m.segment.display(), e))?
            .unwrap_or_default();
        if json {
            let line = serde_json::to_string(&LsEntry::new(m, &subject))
                .map_err(|e| ToolError::Msg(e.to_string()))?;
            writeln!(out, "{line}").map_err(w)?;
        } else {
            writeln!(
                out,
                "{}\t{}\t{}\t{}\t<{}>\t{}\t{}",
                m.id,
                time_text(m.envelope.received_us),
                m.envelope.client_ip,
                m.size,
                m.envelope.mail_from,
                m.envelope
                    .rcpts
                    .iter()
                    .map(|r| format!("<{r}>"))
                    .collect::<Vec<_>>()
                    .join(","),
                one_line(&subject)
            )
            .map_err(w)?;
        }
    }
    Ok(())
}

/// `cat`: writes the stored bytes of message `id` to `out`.
///
/// # Errors
/// A malformed or unknown id, or an I/O error.
pub fn cat(dir: &Path, id: &str, out: &mut dyn Write) -> Result<(), ToolError> {
    let parsed: MessageId = id
        .parse()
        .map_err(|e| ToolError::Msg(format!("{id}: {e}")))?;
    let m = reader::find_message(dir, parsed)
        .map_err(|e| ToolError::io(dir.display(), e))?
        .ok_or_else(|| ToolError::Msg(format!("{id}: no committed message with this id")))?;
    m.write_data(out).map_err(|e| ToolError::io(id, e))
}

/// What `check` says about the delivery journal (present only with onward delivery).
#[derive(Debug, Default, Serialize)]
struct JournalCheck {
    records: u64,
    delivered: u64,
    deferred: u64,
    failed: u64,
    deleted: u64,
    /// Delay warnings sent (one per recipient).
    warned: u64,
    /// Bytes after the last valid record (a torn tail: cut at the next start).
    torn_tail_bytes: u64,
}

fn check_journal(dir: &Path) -> Result<Option<JournalCheck>, ToolError> {
    if !journal::journal_path(dir).exists() {
        return Ok(None);
    }
    let j = journal::read_journal(dir).map_err(|e| ToolError::io(dir.display(), e))?;
    let mut c = JournalCheck {
        records: j.records.len() as u64,
        torn_tail_bytes: j.file_len - j.valid_end,
        ..JournalCheck::default()
    };
    for r in &j.records {
        *match r.kind {
            RecordKind::Delivered => &mut c.delivered,
            RecordKind::Deferred => &mut c.deferred,
            RecordKind::Failed => &mut c.failed,
            RecordKind::Deleted => &mut c.deleted,
            RecordKind::Warned => &mut c.warned,
        } += 1;
    }
    Ok(Some(c))
}

/// `check`: verifies every segment and writes the report (one line per segment and a total,
/// or one JSON object), with a line about the delivery journal if there is one (every record
/// kind is valid; a torn tail is reported, not an error: the next start cuts it). Returns
/// whether the spool is sound (see [`reader::CheckReport::is_ok`]).
///
/// # Errors
/// Reading the spool or writing `out` failed.
pub fn check(dir: &Path, json: bool, out: &mut dyn Write) -> Result<bool, ToolError> {
    let w = |e| ToolError::io("stdout", e);
    let r = reader::check_spool(dir).map_err(|e| ToolError::io(dir.display(), e))?;
    let journal = check_journal(dir)?;
    if json {
        let mut v = serde_json::to_value(&r).map_err(|e| ToolError::Msg(e.to_string()))?;
        if let (Some(j), Some(obj)) = (&journal, v.as_object_mut()) {
            let j = serde_json::to_value(j).map_err(|e| ToolError::Msg(e.to_string()))?;
            obj.insert("journal".into(), j);
        }
        let text = serde_json::to_string_pretty(&v).map_err(|e| ToolError::Msg(e.to_string()))?;
        writeln!(out, "{text}").map_err(w)?;
    } else {
        for s in &r.segments {
            let name = s
                .path
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default();
            let mut line = format!(
                "{name}\tframes {}\tcommitted {}\taborted {}\tincomplete {}\t{}",
                s.frames,
                s.committed,
                s.aborted,
                s.incomplete,
                if s.sealed { "sealed" } else { "open" }
            );
            if let Some(d) = &s.damage {
                let what = match d.kind {
                    DamageKind::TornTail => "torn tail",
                    DamageKind::CrashGap => "crash gap (unsynced writes; cut at next start)",
                    DamageKind::Corrupt => "CORRUPT",
                };
                line.push_str(&format!(
                    "\t{what} at {} ({}, {} bytes)",
                    d.offset,
                    d.error,
                    s.file_len - d.offset
                ));
            }
            if s.zero_tail > 0 {
                line.push_str(&format!(
                    "\tprepared zeros after the end ({} bytes)",
                    s.zero_tail
                ));
            }
            for a in &s.anomalies {
                line.push_str(&format!("\tCORRUPT: {a}"));
            }
            writeln!(out, "{line}").map_err(w)?;
        }
        if let Some(j) = &journal {
            let mut line = format!(
                "{}	records {}	delivered {}	deferred {}	failed {}	deleted {}	warned {}",
                journal::JOURNAL_NAME,
                j.records,
                j.delivered,
                j.deferred,
                j.failed,
                j.deleted,
                j.warned
            );
            if j.torn_tail_bytes > 0 {
                line.push_str(&format!(
                    "	torn tail ({} bytes; cut at next start)",
                    j.torn_tail_bytes
                ));
            }
            writeln!(out, "{line}").map_err(w)?;
        }
        writeln!(
            out,
            "total: {} segment(s), {} frames, {} committed, {} aborted, {} incomplete, \
             {} torn tail(s), {} crash gap(s), {} corrupt",
            r.segments.len(),
            r.frames,
            r.committed,
            r.aborted,
            r.incomplete,
            r.torn_tails,
            r.crash_gaps,
            r.corrupt
        )
        .map_err(w)?;
        if r.copies > 0 {
            writeln!(
                out,
                "{} message(s) stored twice: copies made by compaction before a stop; readers \
                 use the copy, and the old segment goes once its other messages are delivered",
                r.copies
            )
            .map_err(w)?;
        }
    }
    Ok(r.is_ok())
}

#[derive(Serialize)]
struct LsEntry<'a> {
    id: String,
    time: String,
    client_ip: String,
    helo: &'a str,
    from: &'a str,
    rcpts: &'a [String],
    size: u64,
    subject: &'a str,
    segment: String,
}

impl<'a> LsEntry<'a> {
    fn new(m: &'a StoredMessage, subject: &'a str) -> Self {
        Self {
            id: m.id.to_string(),
            time: time_text(m.envelope.received_us),
            client_ip: m.envelope.client_ip.to_string(),
            helo: &m.envelope.helo,
            from: &m.envelope.mail_from,
            rcpts: &m.envelope.rcpts,
            size: m.size,
            subject,
            segment: m.segment.display().to_string(),
        }
    }
}

fn time_text(us: u64) -> String {
    DateTime::<Utc>::from_timestamp_micros(i64::try_from(us).unwrap_or(0))
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Control characters (a folded Subject's CR LF TAB) become spaces, so one message is one line.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// An export destination.
#[derive(Debug, Clone)]
pub enum Target {
    /// `<id>.eml` files in a directory.
    Eml(PathBuf),
    /// A Maildir.
    Maildir(PathBuf),
}

impl Target {
    /// The directory written to.
    pub fn dir(&self) -> &Path {
        match self {
            Self::Eml(d) | Self::Maildir(d) => d,
        }
    }
}

/// What an export run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportSummary {
    /// Messages written by this run.
    pub exported: u64,
    /// Messages found already exported (files present, from an interrupted earlier run).
    pub skipped: u64,
}

/// Export progress: for each segment file name, the offset after the last exported Commit.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ExportState {
    version: u32,
    segments: BTreeMap<String, u64>,
}

/// Exports every committed message not exported before. Safe to interrupt and rerun: each file
/// is written to a temporary name, fsynced and renamed into place; progress (per segment, the
/// offset of the last exported Commit frame) is saved in [`EXPORT_STATE`] in the target; a
/// message whose file already exists is not written again.
///
/// # Errors
/// Reading the spool or writing the target failed.
pub fn export(spool: &Path, target: &Target) -> Result<ExportSummary, ToolError> {
    let dir = target.dir();
    fs::create_dir_all(dir).map_err(|e| ToolError::io(dir.display(), e))?;
    let state_path = dir.join(EXPORT_STATE);
    let mut state: ExportState = match fs::read(&state_path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| {
            ToolError::Msg(format!(
                "{}: unreadable export state: {e}",
                state_path.display()
            ))
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => ExportState::default(),
        Err(e) => return Err(ToolError::io(state_path.display(), e)),
    };
    state.version = 1;
    let mut present = HashSet::new();
    let host = hostname();
    if let Target::Maildir(d) = target {
        for sub in ["tmp", "new", "cur"] {
            fs::create_dir_all(d.join(sub)).map_err(|e| ToolError::io(d.join(sub).display(), e))?;
        }
        // A message a mail reader already moved to cur/ keeps its unique name before ':'.
        for sub in ["new", "cur"] {
            let p = d.join(sub);
            for entry in fs::read_dir(&p).map_err(|e| ToolError::io(p.display(), e))? {
                let entry = entry.map_err(|e| ToolError::io(p.display(), e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                present.insert(name.split(':').next().unwrap_or_default().to_string());
            }
        }
    }
    let mut sum = ExportSummary::default();
    let segments = segment::list_segments(spool).map_err(|e| ToolError::io(spool.display(), e))?;
    for (name, path) in segments {
        let key = name.file_name();
        let from = state.segments.get(&key).copied().unwrap_or(0);
        let mut since_save = 0u64;
        let mut result = Ok(());
        let scan = reader::scan_segment(&path, false, |m| {
            if m.commit_offset < from || result.is_err() {
                return Ok(());
            }
            match deliver(&m, target, &host, &present) {
                Ok(true) => sum.exported += 1,
                Ok(false) => sum.skipped += 1,
                Err(e) => {
                    result = Err(e);
                    return Ok(());
                }
            }
            state.segments.insert(key.clone(), m.commit_offset + 1);
            since_save += 1;
            if since_save >= EXPORT_SAVE_EVERY {
                since_save = 0;
                save_state(&state_path, &state).map_err(io::Error::other)?;
            }
            Ok(())
        });
        scan.map_err(|e| ToolError::io(path.display(), e))?;
        save_state(&state_path, &state)?;
        result?;
    }
    let synced = match target {
        Target::Eml(d) => d.clone(),
        Target::Maildir(d) => d.join("new"),
    };
    File::open(&synced)
        .and_then(|f| f.sync_all())
        .map_err(|e| ToolError::io(synced.display(), e))?;
    Ok(sum)
}

/// Writes one message; `Ok(false)` if it was already there.
fn deliver(
    m: &StoredMessage,
    target: &Target,
    host: &str,
    present: &HashSet<String>,
) -> Result<bool, ToolError> {
    let id = m.id.to_string();
    let (tmp, dest) = match target {
        Target::Eml(d) => (
            d.join(format!(".{id}.eml.tmp")),
            d.join(format!("{id}.eml")),
        ),
        Target::Maildir(d) => {
            // Maildir unique name: time, our unique id, host (no '/' or ':').
            let secs = m.envelope.received_us / 1_000_000;
            let unique = format!("{secs}.R{id}.{host}");
            if present.contains(&unique) {
                return Ok(false);
            }
            (d.join("tmp").join(&unique), d.join("new").join(&unique))
        }
    };
    if dest.exists() {
        return Ok(false);
    }
    let write = || -> io::Result<()> {
        let mut f = BufWriter::new(File::create(&tmp)?);
        m.write_data(&mut f)?;
        let f = f.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        fs::rename(&tmp, &dest)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        ToolError::io(dest.display(), e)
    })?;
    Ok(true)
}

fn save_state(path: &Path, state: &ExportState) -> Result<(), ToolError> {
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(state).map_err(|e| ToolError::Msg(e.to_string()))?;
    let write = || -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| ToolError::io(path.display(), e))
}

/// This host's name for Maildir file names, with `/` and `:` escaped as the Maildir
/// convention asks.
fn hostname() -> String {
    crate::sys::hostname()
        .unwrap_or_else(|| "localhost".to_string())
        .replace('/', "\\057")
        .replace(':', "\\072")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::journal::{DeliveryRecord, Journal};

    #[test]
    fn check_reports_the_journal_with_deleted_records_and_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let rec = |kind, id| DeliveryRecord {
            kind,
            id: MessageId(id),
            rcpt: 0,
            at_us: 1,
            next_us: 0,
            attempts: 0,
            code: 0,
            reply: "deleted by the operator".into(),
        };
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        j.append(&[rec(RecordKind::Deleted, 1), rec(RecordKind::Delivered, 2)])
            .unwrap();
        drop(j);
        let mut out = Vec::new();
        assert!(check(dir.path(), false, &mut out).unwrap());
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(
                "delivery.journal\trecords 2\tdelivered 1\tdeferred 0\tfailed 0\tdeleted 1\twarned 0\n"
            ),
            "{text}"
        );
        // Half a record after them: reported, still sound.
        let mut bytes = fs::read(journal::journal_path(dir.path())).unwrap();
        bytes.extend_from_slice(&[9, 0, 0, 0, 1]);
        fs::write(journal::journal_path(dir.path()), &bytes).unwrap();
        let mut out = Vec::new();
        assert!(check(dir.path(), true, &mut out).unwrap());
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["journal"]["deleted"], 1);
        assert_eq!(v["journal"]["torn_tail_bytes"], 5);
    }
}
