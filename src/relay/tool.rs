//! `ringmx queue ls [--deferred|--failed] [--json]` and `ringmx queue show ID`: the queue as
//! the spool and the delivery journal say it, read directly (the server may be running or
//! not; a running server's latest outcomes are there once its journal batch is synced).
//! Nothing here modifies the spool.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::Serialize;

use super::queue::{self, QueuedMessage, RcptEntry};
use crate::spool::appender::APPENDER_REACTOR;
use crate::spool::id::MessageId;
use crate::spool::journal::read_journal;
use crate::spool::reader::read_spool;
use crate::spool::tool::{require_spool_dir, ToolError};

/// Which messages `queue ls` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Every message not finished.
    All,
    /// With a recipient deferred (tried, still pending).
    Deferred,
    /// With a failed recipient (bounced) while others are still pending (a message with none
    /// pending is finished and leaves the queue).
    Failed,
}

fn load(dir: &Path) -> Result<BTreeMap<MessageId, QueuedMessage>, ToolError> {
    require_spool_dir(dir)?;
    let msgs = read_spool(dir).map_err(|e| ToolError::io(dir.display(), e))?;
    let journal = read_journal(dir).map_err(|e| ToolError::io(dir.display(), e))?;
    let mut q = queue::build(msgs, &journal.records);
    q.retain(|_, m| !m.is_finished());
    Ok(q)
}

#[derive(Serialize)]
struct Entry<'a> {
    id: String,
    received: String,
    size: u64,
    from: &'a str,
    rcpts: &'a [RcptEntry],
}

fn entry(m: &QueuedMessage) -> Entry<'_> {
    Entry {
        id: m.msg.id.to_string(),
        received: time(m.msg.envelope.received_us),
        size: m.msg.size,
        from: &m.msg.envelope.mail_from,
        rcpts: &m.rcpts,
    }
}

fn time(us: u64) -> String {
    if us == 0 {
        return "-".into();
    }
    let t = chrono::DateTime::from_timestamp_micros(i64::try_from(us).unwrap_or(i64::MAX));
    t.map_or_else(
        || "-".into(),
        |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    )
}

/// Lists queued messages: one line each (id, arrival, size, `<from>`, then per recipient
/// `<rcpt>=state`), or one JSON object per line.
///
/// # Errors
/// The spool cannot be read, or writing failed.
pub fn ls(dir: &Path, filter: Filter, json: bool, out: &mut dyn Write) -> Result<(), ToolError> {
    let q = load(dir)?;
    let w = |e: std::io::Error| ToolError::io("stdout", e);
    for m in q.values() {
        let keep = match filter {
            Filter::All => true,
            Filter::Deferred => m.is_deferred(),
            Filter::Failed => m.has_failed(),
        };
        if !keep {
            continue;
        }
        if json {
            let line = serde_json::to_string(&entry(m))
                .map_err(|e| ToolError::io("json", std::io::Error::other(e)))?;
            writeln!(out, "{line}").map_err(w)?;
        } else {
            let rcpts: Vec<String> = m
                .rcpts
                .iter()
                .map(|r| format!("<{}>={}", r.addr, state(r)))
                .collect();
            writeln!(
                out,
                "{}\t{}\t{}\t<{}>\t{}",
                m.msg.id,
                time(m.msg.envelope.received_us),
                m.msg.size,
                m.msg.envelope.mail_from,
                rcpts.join(" ")
            )
            .map_err(w)?;
        }
    }
    Ok(())
}

fn state(r: &RcptEntry) -> &'static str {
    match r.state {
        queue::RcptState::Pending if r.attempts > 0 => "deferred",
        queue::RcptState::Pending => "queued",
        queue::RcptState::Delivered => "delivered",
        queue::RcptState::Failed => "failed",
    }
}

/// Shows one message: envelope and, per recipient, state, attempts, last reply, next retry.
///
/// # Errors
/// Bad id, not queued, the spool cannot be read, or writing failed.
pub fn show(dir: &Path, id: &str, out: &mut dyn Write) -> Result<(), ToolError> {
    let want: MessageId = id
        .parse()
        .map_err(|_| ToolError::Msg(format!("{id:?} is not a message id")))?;
    let q = load(dir)?;
    let m = q.get(&want).ok_or_else(|| {
        ToolError::Msg(format!(
            "message {id} is not queued (delivered, deleted or never spooled)"
        ))
    })?;
    let w = |e: std::io::Error| ToolError::io("stdout", e);
    let e = &m.msg.envelope;
    writeln!(out, "id:        {}", m.msg.id).map_err(w)?;
    writeln!(
        out,
        "received:  {} from {} ({})",
        time(e.received_us),
        e.client_ip,
        e.helo
    )
    .map_err(w)?;
    writeln!(out, "size:      {}", m.msg.size).map_err(w)?;
    writeln!(out, "from:      <{}>", e.mail_from).map_err(w)?;
    let copied = m
        .msg
        .segment
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| {
            n.starts_with(&format!("{APPENDER_REACTOR}-")) && m.msg.id.reactor() != APPENDER_REACTOR
        });
    writeln!(
        out,
        "segment:   {}{}",
        m.msg.segment.display(),
        if copied {
            " (copied forward by compaction)"
        } else {
            ""
        }
    )
    .map_err(w)?;
    for r in &m.rcpts {
        writeln!(
            out,
            "rcpt:      <{}> {} attempts={} last={} next={}{}",
            r.addr,
            state(r),
            r.attempts,
            time(r.last_us),
            if r.state == queue::RcptState::Pending {
                time(r.next_us)
            } else {
                "-".into()
            },
            r.last_reply
                .as_ref()
                .map_or_else(String::new, |t| format!(" ({t})"))
        )
        .map_err(w)?;
    }
    Ok(())
}
