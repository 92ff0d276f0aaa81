//! The spool's segments as the stage sees them: writing segments of its own (DSNs, compaction
//! copies), compaction of sealed segments pinned by a few old messages (see
//! [`COMPACT_LIVE_PERCENT`] and docs/spool.md), finished messages leaving the queue, and the
//! deletion of closed segments with nothing left to deliver.
//!
//! It does not follow the reactors' live segments (see `run`) or write the journal (see
//! `outcomes`).

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use super::{
    SegState, Stage, COMPACT_BATCH_BYTES, COMPACT_CHECK, COMPACT_FAILED_PAUSE,
    COMPACT_LIVE_PERCENT, COMPACT_MERGE_MIN, COMPACT_SMALL_BYTES,
};
use crate::spool::appender::{Appender, Body, NewMessage, APPENDER_REACTOR};
use crate::spool::id::MessageId;
use crate::spool::reader::{self, StoredMessage};

impl Stage {
    /// Writes `msgs` into a new segment of the stage's own (durable when this returns), and
    /// follows it like a sealed segment found at start. Returns its messages as read back.
    pub(super) async fn write_own_segment(
        &mut self,
        msgs: Vec<NewMessage>,
    ) -> io::Result<Vec<StoredMessage>> {
        let path = self.write_durable(msgs).await?;
        self.adopt(path)
    }

    /// Writes `msgs` into a new segment of the stage's own; it is durable when this returns
    /// its path.
    pub(super) async fn write_durable(&mut self, msgs: Vec<NewMessage>) -> io::Result<PathBuf> {
        let mut appender = self.take_appender()?;
        let res = tokio::task::spawn_blocking(move || {
            let r = appender.write_segment(&msgs);
            (appender, r)
        })
        .await;
        match res {
            Ok((a, r)) => {
                self.appender = Some(a);
                r
            }
            // The writer went with the task; the next use opens it again.
            Err(e) => Err(io::Error::other(format!("spool writer task: {e}"))),
        }
    }

    /// Follows a segment of the stage's own just written, like a sealed segment found at
    /// start. Returns its messages as read back.
    pub(super) fn adopt(&mut self, path: PathBuf) -> io::Result<Vec<StoredMessage>> {
        let mut found = Vec::new();
        reader::scan_segment(&path, false, |m| {
            found.push(m);
            Ok(())
        })?;
        self.segments.insert(
            path,
            SegState {
                reactor: APPENDER_REACTOR,
                closed: true,
                tail: None,
                live: found.iter().map(|m| m.id).collect(),
                done: Vec::new(),
            },
        );
        Ok(found)
    }

    /// The stage's spool writer, taken (give it back), opened again if it went with a task
    /// that panicked.
    pub(super) fn take_appender(&mut self) -> io::Result<Appender> {
        match self.appender.take() {
            Some(a) => Ok(a),
            None => Appender::open(&self.cfg.spool_dir),
        }
    }

    /// Compaction (docs/spool.md): closed segments older than `compact_after` whose queued
    /// messages fill less than [`COMPACT_LIVE_PERCENT`] of them get those messages copied,
    /// with their ids, into a new segment of the stage's own; then they are deleted. Segments
    /// with a message in flight (or not queued: found but not notified yet) wait.
    pub(super) async fn compact_segments(&mut self) {
        // Not while outcomes wait to be recorded: an old segment goes once it is copied, and
        // with it the messages finished only in memory.
        if self.compact_at.elapsed() < COMPACT_CHECK || !self.backlog.is_empty() {
            return;
        }
        self.compact_at = Instant::now();
        let clock = self.compact_at;
        self.compact_skip.retain(|_, until| *until > clock);
        let now = SystemTime::now();
        let busy: HashSet<MessageId> = self.in_flight.iter().map(|(id, _)| *id).collect();
        let mut picked = Vec::new();
        let mut batch = 0u64;
        for (path, s) in &self.segments {
            if !s.closed || s.live.is_empty() || self.compact_skip.contains_key(path) {
                continue;
            }
            let Ok(meta) = std::fs::metadata(path) else {
                continue;
            };
            let age = meta
                .modified()
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .unwrap_or_default();
            if age < self.cfg.compact_after {
                continue;
            }
            let mut live = 0u64;
            let mut movable = true;
            for id in &s.live {
                match self.queue.get(id) {
                    Some(m) if !busy.contains(id) => live += m.msg.size,
                    _ => {
                        movable = false;
                        break;
                    }
                }
            }
            let sparse = live.saturating_mul(100) < meta.len().saturating_mul(COMPACT_LIVE_PERCENT);
            // The stage's own small segments (one per bounce or compaction batch) are merged
            // too, so their number stays bounded.
            let small = s.reactor == APPENDER_REACTOR && meta.len() < COMPACT_SMALL_BYTES;
            if !movable || !(sparse || small) {
                continue;
            }
            if batch > 0 && batch + live > COMPACT_BATCH_BYTES {
                break;
            }
            batch += live;
            picked.push((path.clone(), meta.len(), live, sparse));
        }
        let merges = picked.iter().filter(|p| !p.3).count();
        if merges > 0 && merges < COMPACT_MERGE_MIN {
            // Too few small segments to be worth merging: only the sparse ones go.
            picked.retain(|p| p.3);
        }
        if picked.is_empty() {
            return;
        }
        let mut msgs = Vec::new();
        for (path, ..) in &picked {
            let Some(s) = self.segments.get(path) else {
                continue;
            };
            let mut ids: Vec<MessageId> = s.live.iter().copied().collect();
            ids.sort_unstable();
            for id in ids {
                if let Some(m) = self.queue.get(&id) {
                    msgs.push(NewMessage {
                        id,
                        envelope: m.msg.envelope.clone(),
                        body: Body::Stored(Box::new(m.msg.clone())),
                    });
                }
            }
        }
        let copies = match self.write_own_segment(msgs).await {
            Ok(c) => c,
            Err(e) => {
                let names: Vec<String> = picked.iter().map(|p| file_name(&p.0)).collect();
                tracing::warn!(
                    "delivery: compaction failed (the segments stay; left out for {} s): {} : {e}",
                    COMPACT_FAILED_PAUSE.as_secs(),
                    names.join(" ")
                );
                for (path, ..) in picked {
                    self.compact_skip.insert(path, clock + COMPACT_FAILED_PAUSE);
                }
                return;
            }
        };
        let target = copies
            .first()
            .map(|m| file_name(&m.segment))
            .unwrap_or_default();
        for c in copies {
            if let Some(m) = self.queue.get_mut(&c.id) {
                m.msg = c;
            }
        }
        for (path, size, live, _) in picked {
            let n = self.segments.remove(&path).map_or(0, |s| s.live.len());
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    self.stats.segments_deleted.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        "delivery: compacted segment {}: {n} queued message(s), {live} of {size} bytes, copied to {target}; deleted",
                        file_name(&path)
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // The copies are used from now on; the old file is only space (and is found
                // again, and ignored as a duplicate, at the next start).
                Err(e) => tracing::warn!("delivery: cannot delete {}: {e}", path.display()),
            }
        }
    }

    /// A finished message leaves the queue; its segment keeps the records saying so.
    pub(super) fn finish(&mut self, id: MessageId) {
        let Some(m) = self.queue.remove(&id) else {
            return;
        };
        let records = m.summary_records();
        for s in self.segments.values_mut() {
            if s.live.remove(&id) {
                s.done.extend(records.iter().cloned());
            }
        }
    }

    /// Deletes closed segments with nothing left to deliver, once the records that finished
    /// their messages are on disk: nothing is deleted while the backlog holds records or DSNs.
    pub(super) fn reclaim(&mut self) {
        if !self.backlog.is_empty() {
            return;
        }
        let done: Vec<PathBuf> = self
            .segments
            .iter()
            .filter(|(_, s)| s.closed && s.live.is_empty())
            .map(|(p, _)| p.clone())
            .collect();
        for path in done {
            self.segments.remove(&path);
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    self.stats.segments_deleted.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        "delivery: deleted segment {}: every message in it is delivered",
                        file_name(&path)
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!("delivery: cannot delete {}: {e}", path.display()),
            }
        }
    }
}

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}
