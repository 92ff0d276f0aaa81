//! The stage's loop: starts the routes' workers and the control socket, then per wake-up
//! (a notified id, a worker's outcome, a command, or a [`TICK`]) learns about committed
//! messages, applies outcomes, hands due recipients to their routes, compacts and updates the
//! queue gauges.
//!
//! It does not record outcomes (see `outcomes`), write or delete segments (see `segments`) or
//! talk to a next hop (see `worker` and `conn`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc::unbounded_channel;
use tokio::sync::Mutex;

use super::worker::{worker, MxContext, WorkerRoute};
use super::{record, Job, Outcome, Prepared, SegState, Stage, MAX_UNRECORDED, TICK};
use crate::dns::Resolver;
use crate::relay::control;
use crate::relay::mx::LocalHost;
use crate::relay::queue::{DueQueue, QueuedMessage, RcptState};
use crate::relay::tls::RouteTls;
use crate::smtp::client::{RcptOutcome, Reply, Status};
use crate::spool::frame::unix_us;
use crate::spool::id::MessageId;
use crate::spool::reader::{StoredMessage, Tail};
use crate::spool::segment::{self, SegmentName};
use crate::stats::DeliveryStats;

impl Stage {
    pub(super) fn new(p: Prepared, stats: Arc<DeliveryStats>, stop: Arc<AtomicBool>) -> Self {
        let (outcomes_tx, outcomes_rx) = unbounded_channel();
        let (control_tx, control_rx) = unbounded_channel();
        let mut due = DueQueue::new();
        for (id, m) in &p.queue {
            if let Some(at) = m.next_due() {
                due.push(at, *id);
            }
        }
        Self {
            cfg: p.cfg,
            queue: p.queue,
            segments: p.segments,
            journal: Some(p.journal),
            appender: Some(p.appender),
            compact_at: Instant::now(),
            compact_skip: HashMap::new(),
            rx: p.rx,
            stats,
            stop,
            unnotified: HashMap::new(),
            notified: HashSet::new(),
            in_flight: HashSet::new(),
            due,
            stats_at: None,
            jobs: Vec::new(),
            outcomes_tx,
            outcomes_rx,
            control: p.control,
            control_tx,
            control_rx,
            backlog: record::Backlog::default(),
            max_unrecorded: MAX_UNRECORDED,
            holding: false,
            #[cfg(test)]
            faults: record::Faults::default(),
        }
    }

    pub(super) async fn run(mut self, resolver: Option<Resolver>) {
        let me = Arc::new(LocalHost {
            hostname: self.cfg.hostname.to_ascii_lowercase(),
            listen: self.cfg.listen.clone(),
        });
        for (i, route) in self.cfg.routes.all().iter().enumerate() {
            let (tx, rx) = unbounded_channel();
            let rx = Arc::new(Mutex::new(rx));
            let route = Arc::new(route.clone());
            let helo = route
                .helo
                .clone()
                .unwrap_or_else(|| self.cfg.hostname.clone());
            // `check-config` and the start checked it; a CA file gone since then defers.
            let tls = Arc::new(RouteTls::new(&route).unwrap_or_else(|e| {
                tracing::error!("delivery: {e}; its mail is deferred");
                RouteTls::unusable()
            }));
            for _ in 0..route.concurrency {
                let ctx = WorkerRoute {
                    index: i,
                    route: route.clone(),
                    tls: tls.clone(),
                    mx: MxContext {
                        resolver: resolver.clone(),
                        me: me.clone(),
                    },
                    helo: helo.clone(),
                };
                tokio::task::spawn_local(worker(
                    ctx,
                    rx.clone(),
                    self.outcomes_tx.clone(),
                    self.stats.clone(),
                ));
            }
            self.jobs.push(tx);
        }
        tracing::info!(
            "delivery: {} route(s), {} message(s) queued from before",
            self.jobs.len(),
            self.queue.len()
        );
        if let Some(l) = self.control.take_listener() {
            tokio::task::spawn_local(control::serve(l, self.control_tx.clone()));
        }
        self.reclaim();
        while !self.stop.load(Ordering::Relaxed) {
            let mut ids = Vec::new();
            let mut outcomes = Vec::new();
            tokio::select! {
                n = self.rx.recv_many(&mut ids, 4096) => if n == 0 { break },
                Some(o) = self.outcomes_rx.recv() => outcomes.push(o),
                Some(r) = self.control_rx.recv() => self.control(r).await,
                () = tokio::time::sleep(TICK) => {}
            }
            while let Ok(o) = self.outcomes_rx.try_recv() {
                outcomes.push(o);
            }
            while let Ok(id) = self.rx.try_recv() {
                ids.push(id);
            }
            // Ids notified but not found yet (a segment read or the spool listing failed, e.g.
            // out of file descriptors) are looked for again at every turn, not only when their
            // reactor next takes mail.
            if !ids.is_empty() || !self.notified.is_empty() {
                self.learn(ids);
            }
            if !outcomes.is_empty() {
                self.apply(outcomes).await;
            }
            self.retry_owed(Instant::now()).await;
            self.schedule().await;
            self.compact_segments().await;
            self.update_stats();
        }
        self.stop_recording().await;
        tracing::info!("delivery stopped: {} message(s) queued", self.queue.len());
    }

    /// Notified ids: find them in their reactors' segments.
    fn learn(&mut self, ids: Vec<MessageId>) {
        let mut reactors = HashSet::new();
        for id in ids {
            match self.unnotified.remove(&id) {
                Some(m) => self.enqueue(m),
                None => {
                    self.notified.insert(id);
                    reactors.insert(id.reactor());
                }
            }
        }
        reactors.extend(self.notified.iter().map(|id| id.reactor()));
        if reactors.is_empty() {
            return;
        }
        // The segments already followed usually hold the new mail; the spool directory is
        // listed only when some notified id is not found in them (a reactor rolled to a new
        // segment, or this is its first message).
        let mut found = self.poll_tails(&reactors);
        let found_ids: HashSet<MessageId> = found.iter().map(|m| m.id).collect();
        if self.notified.iter().any(|id| !found_ids.contains(id)) {
            self.follow_new_segments(&reactors);
            found.extend(self.poll_tails(&reactors));
        }
        for m in found {
            if self.notified.remove(&m.id) {
                self.enqueue(m);
            } else {
                self.unnotified.insert(m.id, m);
            }
        }
        self.reclaim();
    }

    /// Adds the spool's segments of `reactors` that are not followed yet.
    fn follow_new_segments(&mut self, reactors: &HashSet<u16>) {
        match segment::list_segments(&self.cfg.spool_dir) {
            Ok(list) => {
                for (SegmentName { reactor, .. }, path) in list {
                    if reactors.contains(&reactor) && !self.segments.contains_key(&path) {
                        self.segments.insert(
                            path.clone(),
                            SegState {
                                reactor,
                                closed: false,
                                tail: Some(Tail::new(path)),
                                live: HashSet::new(),
                                done: Vec::new(),
                            },
                        );
                    }
                }
            }
            Err(e) => tracing::warn!("delivery: cannot list the spool: {e}"),
        }
    }

    /// Reads what was committed since the last poll in the open segments of `reactors`.
    fn poll_tails(&mut self, reactors: &HashSet<u16>) -> Vec<StoredMessage> {
        let mut found = Vec::new();
        for s in self.segments.values_mut() {
            if !reactors.contains(&s.reactor) || s.closed {
                continue;
            }
            let Some(tail) = s.tail.as_mut() else {
                continue;
            };
            let before = found.len();
            if let Err(e) = tail.poll(|m| found.push(m)) {
                tracing::warn!("delivery: reading {}: {e}", tail.path().display());
            }
            for m in &found[before..] {
                s.live.insert(m.id);
            }
            s.closed = tail.is_sealed();
        }
        found
    }

    pub(super) fn enqueue(&mut self, m: StoredMessage) {
        self.due.push(0, m.id);
        self.queue.insert(m.id, QueuedMessage::new(m));
    }

    /// Hands every due recipient to its route.
    pub(super) async fn schedule(&mut self) {
        let held = self.backlog.records() >= self.max_unrecorded;
        if held != self.holding {
            self.holding = held;
            if held {
                tracing::warn!(
                    "delivery: {} outcome(s) not written to the journal; no new attempt until they are",
                    self.backlog.records()
                );
            } else {
                tracing::info!("delivery: outcomes written; attempts resume");
            }
        }
        if held {
            return;
        }
        let now = unix_us(SystemTime::now());
        let lifetime = u64::try_from(self.cfg.max_queue_lifetime.as_micros()).unwrap_or(u64::MAX);
        let mut local = Vec::new();
        for id in self.due.pop_due(now) {
            let Some(m) = self.queue.get(&id) else {
                continue;
            };
            let id = &id;
            if m.deleted {
                continue;
            }
            // Recipients not due yet (or in flight: their outcome pushes them again) bring
            // the message back when the earliest of them is due.
            if let Some(later) = m
                .rcpts
                .iter()
                .filter(|r| r.state == RcptState::Pending && r.next_us > now)
                .map(|r| r.next_us)
                .min()
            {
                self.due.push(later, *id);
            }
            // By route, and for an `mx` route by recipient domain.
            let mut by_route: BTreeMap<(Option<usize>, Option<String>), Vec<usize>> =
                BTreeMap::new();
            for (i, r) in m.rcpts.iter().enumerate() {
                if r.state != RcptState::Pending
                    || r.next_us > now
                    || self.in_flight.contains(&(*id, i))
                {
                    continue;
                }
                let route = self.cfg.routes.for_rcpt(&r.addr);
                // A routed recipient is tried even past the queue lifetime: the attempt's
                // deferral is what fails it (see `apply`). One without a route expires here.
                if route.is_none() && now.saturating_sub(m.msg.envelope.received_us) > lifetime {
                    local.push((*id, i, true));
                    continue;
                }
                let domain = route
                    .filter(|&i| self.cfg.routes.all()[i].target.is_mx())
                    .map(|_| rcpt_domain(&r.addr));
                by_route.entry((route, domain)).or_default().push(i);
            }
            for ((route, domain), rcpts) in by_route {
                for &i in &rcpts {
                    self.in_flight.insert((*id, i));
                }
                match route {
                    Some(route) => {
                        let job = Job {
                            msg: m.msg.clone(),
                            rcpts,
                            domain,
                            queued_at: Instant::now(),
                        };
                        let _ = self.jobs[route].send(job);
                    }
                    None => local.extend(rcpts.into_iter().map(|i| (*id, i, false))),
                }
            }
        }
        if local.is_empty() {
            return;
        }
        // Expired recipients fail; recipients without a route are deferred (a route may be
        // added by a restart with another configuration).
        let mut outcomes = Vec::new();
        for (id, i, expired) in local {
            let reply = if expired {
                Reply::local(
                    550,
                    format!(
                        "5.4.7 delivery time expired after {} s in the queue",
                        self.cfg.max_queue_lifetime.as_secs()
                    ),
                )
            } else {
                Reply::local(451, "4.3.5 no route for this recipient's domain")
            };
            outcomes.push(Outcome {
                id,
                route: usize::MAX,
                rcpts: vec![i],
                results: vec![RcptOutcome {
                    status: if expired {
                        Status::Failed
                    } else {
                        Status::Deferred
                    },
                    reply,
                }],
                relay: "none".into(),
                tls: None,
                delays: [Duration::ZERO; 3],
            });
        }
        self.apply(outcomes).await;
    }

    /// Computes the queue gauges, at most once per [`TICK`] (they walk the queue).
    fn update_stats(&mut self) {
        if self.stats_at.is_some_and(|t| t.elapsed() < TICK) {
            return;
        }
        self.stats_at = Some(Instant::now());
        let s = &self.stats;
        let now = SystemTime::now();
        s.queue_messages
            .store(self.queue.len() as u64, Ordering::Relaxed);
        s.queue_recipients.store(
            self.queue.values().map(|m| m.pending() as u64).sum(),
            Ordering::Relaxed,
        );
        s.queue_bytes.store(
            self.queue.values().map(|m| m.msg.size).sum(),
            Ordering::Relaxed,
        );
        let oldest = self
            .queue
            .values()
            .map(|m| {
                now.duration_since(m.msg.received_at())
                    .unwrap_or_default()
                    .as_secs()
            })
            .max()
            .unwrap_or(0);
        s.queue_oldest_secs.store(oldest, Ordering::Relaxed);
        s.unrecorded
            .store(self.backlog.records() as u64, Ordering::Relaxed);
    }
}

/// The domain of an address, lower case, without a final dot.
fn rcpt_domain(addr: &str) -> String {
    addr.rsplit_once('@')
        .map_or("", |(_, d)| d)
        .trim_end_matches('.')
        .to_ascii_lowercase()
}
