//! Recipient verification (`--verify-recipients`, a "callout"): at RCPT, ask a route's next hop
//! whether it takes a recipient, and cache its answer.
//!
//! A probe is `MAIL FROM:<>`, `RCPT TO:<addr>`, `RSET` (LHLO first for LMTP) over a connection
//! that stays open for the next probe ([`crate::smtp::client::Client::probe`]); for a non-ASCII
//! address `MAIL FROM:<> SMTPUTF8`, and a next hop without SMTPUTF8 is not asked: the client
//! answers `553 5.6.7` itself, a refusal like any 5xx (mail to that address could not be
//! delivered there; the session's reply is its usual `550 5.1.1`). 2xx: accepted,
//! cached [`VerifyConfig::cache_accept`]; 5xx: refused, cached [`VerifyConfig::cache_refuse`];
//! 4xx, a lost connection, or no answer within [`VerifyConfig::timeout`]: unverified (450),
//! unless an expired answer for the address is still known (kept up to [`STALE_KEEP`]), which
//! is then used. Nothing of a 4xx or a failure is cached.
//!
//! Where it runs: a thread of its own with a current-thread tokio runtime, like the delivery
//! stage, so the reactors never wait on a next hop. A reactor sends a request over a bounded
//! channel ([`Verifier::ask`], which never blocks) and awaits the answer on a oneshot.
//!
//! What bounds the load on the next hop, whatever the clients send (a dictionary attack):
//! - at most [`PROBE_CONNECTIONS`] probes (and connections) per route at a time, reused, closed
//!   after [`PROBE_IDLE`] unused;
//! - identical probes in flight are coalesced: a second session asking for an address already
//!   being probed waits for that probe;
//! - at most [`PROBE_QUEUE`] addresses per route wait for a free connection; past that, and
//!   past [`MAX_WAITERS`] sessions waiting in all, the answer is unverified at once;
//! - the cache holds at most [`CACHE_ENTRIES`] addresses (the oldest answer goes first).
//!
//! The cache key is the address folded to lower case (so case variations cannot bypass it);
//! the probe sends the address as the first client wrote it.
//!
//! It does not decide which recipients need a probe beyond the route's `verify` flag (the
//! session asks only for those its recipient table leaves open), speak STARTTLS to the next
//! hop, or persist the cache across restarts.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc::{self, error::TrySendError, UnboundedSender};
use tokio::sync::oneshot;

use super::connect;
use super::route::{Routes, Target};
use super::tls::Io;
use crate::smtp::client::{Client, Event, Reply, ReplyClass};
use crate::smtp::{Verdict, VerifyCheck};

/// Default `--verify-timeout`: how long a probe (connect, greeting, MAIL, RCPT) may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest `--verify-timeout` accepted, in seconds (the client waits that long at RCPT).
pub const MAX_TIMEOUT_SECS: u64 = 60;
/// Default `--verify-cache-accept`: how long an accepted address is taken without a probe.
pub const DEFAULT_CACHE_ACCEPT: Duration = Duration::from_secs(3600);
/// Default `--verify-cache-refuse`: how long a refused address is refused without a probe.
pub const DEFAULT_CACHE_REFUSE: Duration = Duration::from_secs(600);
/// Largest cache lifetime accepted, in seconds (a week).
pub const MAX_CACHE_SECS: u64 = 7 * 24 * 3600;
/// Probe connections per route (and probes in flight per route) at most.
pub const PROBE_CONNECTIONS: usize = 2;
/// Addresses per route waiting for a free probe connection at most; more are unverified at once.
pub const PROBE_QUEUE: usize = 64;
/// A probe connection unused this long is closed (QUIT).
pub const PROBE_IDLE: Duration = Duration::from_secs(30);
/// Probes per connection at most; then it is closed (QUIT) and a new one opened when needed
/// (a next hop may count each refused RCPT of a session as an error, as Postfix's
/// `smtpd_soft_error_limit` and `smtpd_hard_error_limit` do).
pub const PROBES_PER_CONNECTION: u32 = 100;
/// Addresses in the answer cache at most; the oldest answer is evicted first.
pub const CACHE_ENTRIES: usize = 100_000;
/// An expired answer is kept this long after it was given, as the fallback when a later probe
/// cannot complete.
pub const STALE_KEEP: Duration = Duration::from_secs(24 * 3600);
/// Sessions waiting for an answer at most (all routes); more are unverified at once.
pub const MAX_WAITERS: usize = 4096;
/// Requests in the channel from the reactors at most; more are unverified at once.
pub const REQUEST_CHANNEL: usize = 1024;
/// How often waiters' deadlines and idle connections are checked.
const TICK: Duration = Duration::from_millis(100);
/// Bytes per read from a next hop.
const READ_BUF: usize = 4096;
/// How long the QUIT of an idle connection may take.
const QUIT_TIMEOUT: Duration = Duration::from_secs(1);

/// The verifier's settings.
#[derive(Debug, Clone)]
pub struct VerifyConfig {
    /// The routes; those with `verify` are probed.
    pub routes: Routes,
    /// EHLO/LHLO name when the route names none.
    pub hostname: String,
    /// Per probe.
    pub timeout: Duration,
    /// How long an accepted answer is used.
    pub cache_accept: Duration,
    /// How long a refused answer is used.
    pub cache_refuse: Duration,
}

impl VerifyConfig {
    /// The names of the routes that verify recipients, in configuration order.
    pub fn verifying_routes(&self) -> Vec<&str> {
        self.routes
            .all()
            .iter()
            .filter(|r| r.verify)
            .map(|r| r.name.as_str())
            .collect()
    }
}

/// Where an [`Answer`] came from (for the log and the statistics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A cached answer, still fresh: no probe.
    Cache,
    /// A probe made for this request.
    Probe,
    /// A probe another session had already started for the same address (coalesced).
    Joined,
    /// The probe could not complete; an expired cached answer was used.
    Stale,
    /// Too many probes queued or sessions waiting: not asked.
    Busy,
    /// The probe could not complete (timeout, 4xx, connection failure) and nothing is cached.
    Failed,
}

impl Source {
    /// `cache`, `probe`, `joined`, `stale`, `busy`, `failed`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cache => "cache",
            Self::Probe => "probe",
            Self::Joined => "joined",
            Self::Stale => "stale",
            Self::Busy => "busy",
            Self::Failed => "failed",
        }
    }
}

/// The answer about one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// What the session replies.
    pub verdict: Verdict,
    /// Where it came from.
    pub source: Source,
    /// The next hop's reply (or why there is none), for the log; empty for a cache hit.
    pub detail: String,
    /// A probe was made for this request (whatever came of it); counted as a probe.
    pub probed: bool,
}

impl Answer {
    /// An answer from its parts.
    pub fn new(verdict: Verdict, source: Source, detail: impl Into<String>) -> Self {
        Self {
            verdict,
            source,
            detail: detail.into(),
            probed: false,
        }
    }
}

/// One question from a reactor.
#[derive(Debug)]
struct Request {
    address: String,
    reply: oneshot::Sender<Answer>,
}

/// The reactors' side: which recipients are verified, and how to ask.
#[derive(Debug)]
pub struct Verifier {
    tx: mpsc::Sender<Request>,
    routes: Routes,
    timeout: Duration,
}

impl VerifyCheck for Verifier {
    fn wants_verdict(&self, address: &str) -> bool {
        self.routes
            .for_rcpt(address)
            .is_some_and(|i| self.routes.all()[i].verify)
    }
}

impl Verifier {
    /// Asks about `address` without blocking: the answer comes on the receiver. `Err` is the
    /// answer at once when the verifier is too busy (or gone).
    ///
    /// # Errors
    /// An unverified [`Answer`] from [`Source::Busy`].
    pub fn ask(&self, address: &str) -> Result<oneshot::Receiver<Answer>, Answer> {
        let (reply, rx) = oneshot::channel();
        let req = Request {
            address: address.to_owned(),
            reply,
        };
        match self.tx.try_send(req) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => Err(Answer::new(
                Verdict::Unverified,
                Source::Busy,
                "verifier request queue full",
            )),
            Err(TrySendError::Closed(_)) => Err(Answer::new(
                Verdict::Unverified,
                Source::Busy,
                "verifier stopped",
            )),
        }
    }

    /// How long a session waits for an answer at most, as a backstop: the verifier itself
    /// answers within the probe timeout (plus one tick).
    pub fn wait_limit(&self) -> Duration {
        self.timeout + Duration::from_secs(1)
    }
}

/// Whether any route verifies.
pub fn any_route_verifies(routes: &Routes) -> bool {
    routes.all().iter().any(|r| r.verify)
}

/// The running verifier thread.
#[derive(Debug)]
pub struct VerifierHandle {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl VerifierHandle {
    /// Stops the thread (waiting sessions get no answer and time out) and waits for it.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the verifier thread.
///
/// # Errors
/// The thread or its runtime could not be created.
pub fn spawn(cfg: VerifyConfig) -> io::Result<(Arc<Verifier>, VerifierHandle)> {
    let (tx, rx) = mpsc::channel(REQUEST_CHANNEL);
    let stop = Arc::new(AtomicBool::new(false));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let verifier = Arc::new(Verifier {
        tx,
        routes: cfg.routes.clone(),
        timeout: cfg.timeout,
    });
    let stop2 = stop.clone();
    let thread = std::thread::Builder::new()
        .name("ringmx-verify".into())
        .spawn(move || {
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, Probes::new(cfg, stop2).run(rx));
        })?;
    Ok((
        verifier,
        VerifierHandle {
            stop,
            thread: Some(thread),
        },
    ))
}

/// A cached answer.
#[derive(Debug)]
struct Entry {
    verdict: Verdict,
    fresh_until: Instant,
    keep_until: Instant,
    seq: u64,
}

/// The answer cache: bounded, oldest answer evicted first.
#[derive(Debug, Default)]
struct Cache {
    map: HashMap<String, Entry>,
    /// Keys in the order their answers came (a key answered again appears again; only the
    /// occurrence with its entry's `seq` counts).
    order: VecDeque<(String, u64)>,
    seq: u64,
    cap: usize,
}

impl Cache {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            ..Self::default()
        }
    }

    fn insert(&mut self, key: &str, verdict: Verdict, fresh_for: Duration, now: Instant) {
        self.seq += 1;
        let entry = Entry {
            verdict,
            fresh_until: now + fresh_for,
            keep_until: now + fresh_for.max(STALE_KEEP),
            seq: self.seq,
        };
        self.map.insert(key.to_owned(), entry);
        self.order.push_back((key.to_owned(), self.seq));
        while self.map.len() > self.cap || self.order.len() > 2 * self.cap.max(1) {
            let Some((k, seq)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&k).is_some_and(|e| e.seq == seq) {
                self.map.remove(&k);
            }
        }
    }

    /// The answer for `key` and whether it is still fresh.
    fn get(&mut self, key: &str, now: Instant) -> Option<(Verdict, bool)> {
        let e = self.map.get(key)?;
        if e.keep_until <= now {
            self.map.remove(key);
            return None;
        }
        Some((e.verdict, now < e.fresh_until))
    }
}

/// A session waiting for an address.
#[derive(Debug)]
struct Waiter {
    reply: oneshot::Sender<Answer>,
    deadline: Instant,
}

/// An address being probed or queued for a probe.
#[derive(Debug)]
struct Pending {
    /// As the first session wrote it.
    address: String,
    waiters: Vec<Waiter>,
    /// A probe is running (else it is queued).
    started: bool,
}

/// One route's probe connections.
#[derive(Default)]
struct RouteState {
    idle: Vec<(ProbeConn, Instant)>,
    active: usize,
    queue: VecDeque<String>,
}

/// A finished probe.
struct Finished {
    key: String,
    route: usize,
    outcome: Result<Reply, Reply>,
    conn: Option<ProbeConn>,
}

/// The verifier thread's state.
struct Probes {
    cfg: VerifyConfig,
    stop: Arc<AtomicBool>,
    cache: Cache,
    pending: HashMap<String, Pending>,
    waiting: usize,
    routes: Vec<RouteState>,
    done_tx: UnboundedSender<Finished>,
    done_rx: mpsc::UnboundedReceiver<Finished>,
}

impl Probes {
    fn new(cfg: VerifyConfig, stop: Arc<AtomicBool>) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let routes = cfg
            .routes
            .all()
            .iter()
            .map(|_| RouteState::default())
            .collect();
        Self {
            cfg,
            stop,
            cache: Cache::new(CACHE_ENTRIES),
            pending: HashMap::new(),
            waiting: 0,
            routes,
            done_tx,
            done_rx,
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                req = rx.recv() => match req {
                    Some(req) => self.request(req),
                    None => break,
                },
                Some(f) = self.done_rx.recv() => self.finished(f),
                _ = tick.tick() => {
                    if self.stop.load(Ordering::Relaxed) {
                        break;
                    }
                    self.sweep();
                }
            }
        }
    }

    fn request(&mut self, req: Request) {
        let now = Instant::now();
        let key = req.address.to_ascii_lowercase();
        let cached = self.cache.get(&key, now);
        if let Some((v, true)) = cached {
            let _ = req.reply.send(Answer::new(v, Source::Cache, ""));
            return;
        }
        let busy = |why: &str| match cached {
            Some((v, _)) => Answer::new(v, Source::Stale, why),
            None => Answer::new(Verdict::Unverified, Source::Busy, why),
        };
        let Some(route) = self.cfg.routes.for_rcpt(&req.address) else {
            let _ = req.reply.send(busy("no route"));
            return;
        };
        if self.waiting >= MAX_WAITERS {
            let _ = req.reply.send(busy("too many sessions waiting"));
            return;
        }
        let waiter = Waiter {
            reply: req.reply,
            deadline: now + self.cfg.timeout,
        };
        if let Some(p) = self.pending.get_mut(&key) {
            p.waiters.push(waiter);
            self.waiting += 1;
            return;
        }
        let rs = &mut self.routes[route];
        let started = if rs.active < PROBE_CONNECTIONS {
            true
        } else if rs.queue.len() < PROBE_QUEUE {
            rs.queue.push_back(key.clone());
            false
        } else {
            let _ = waiter.reply.send(busy("probe queue full"));
            return;
        };
        self.pending.insert(
            key.clone(),
            Pending {
                address: req.address,
                waiters: vec![waiter],
                started,
            },
        );
        self.waiting += 1;
        if started {
            self.start(route, key);
        }
    }

    /// Runs a probe for `key` on a connection of `route` (an idle one, or a new one).
    fn start(&mut self, route: usize, key: String) {
        let Some(address) = self.pending.get(&key).map(|p| p.address.clone()) else {
            return;
        };
        let rs = &mut self.routes[route];
        rs.active += 1;
        let conn = rs.idle.pop().map(|(c, _)| c);
        let r = &self.cfg.routes.all()[route];
        let target = r.target.clone();
        let helo = r.helo.clone().unwrap_or_else(|| self.cfg.hostname.clone());
        let timeout = self.cfg.timeout;
        let done = self.done_tx.clone();
        tokio::task::spawn_local(async move {
            let (outcome, conn) = probe(&target, &helo, conn, &address, timeout).await;
            let _ = done.send(Finished {
                key,
                route,
                outcome,
                conn,
            });
        });
    }

    fn finished(&mut self, f: Finished) {
        let now = Instant::now();
        let rs = &mut self.routes[f.route];
        rs.active = rs.active.saturating_sub(1);
        match f.conn {
            Some(c) if c.probes < PROBES_PER_CONNECTION => rs.idle.push((c, now)),
            Some(c) => {
                tokio::task::spawn_local(c.quit());
            }
            None => {}
        }
        let (verdict, source, detail) = match &f.outcome {
            Ok(reply) => match reply.class() {
                ReplyClass::Positive => {
                    self.cache
                        .insert(&f.key, Verdict::Accepted, self.cfg.cache_accept, now);
                    (Verdict::Accepted, Source::Probe, reply.to_string())
                }
                ReplyClass::Permanent | ReplyClass::Intermediate => {
                    self.cache
                        .insert(&f.key, Verdict::Refused, self.cfg.cache_refuse, now);
                    (Verdict::Refused, Source::Probe, reply.to_string())
                }
                ReplyClass::Transient => self.fallback(&f.key, now, reply.to_string()),
            },
            Err(reply) => self.fallback(&f.key, now, reply.to_string()),
        };
        if let Some(p) = self.pending.remove(&f.key) {
            self.waiting = self.waiting.saturating_sub(p.waiters.len());
            for (i, w) in p.waiters.into_iter().enumerate() {
                let source = match (i, source) {
                    (0, s) | (_, s @ (Source::Stale | Source::Failed)) => s,
                    _ => Source::Joined,
                };
                let mut a = Answer::new(verdict, source, detail.clone());
                a.probed = i == 0;
                let _ = w.reply.send(a);
            }
        }
        self.next_queued(f.route);
    }

    /// A probe that could not complete: an expired answer if one is kept, else unverified.
    fn fallback(&mut self, key: &str, now: Instant, detail: String) -> (Verdict, Source, String) {
        match self.cache.get(key, now) {
            Some((v, _)) => (v, Source::Stale, detail),
            None => (Verdict::Unverified, Source::Failed, detail),
        }
    }

    /// Starts the next queued probe of `route` that someone still waits for, if a connection
    /// is free.
    fn next_queued(&mut self, route: usize) {
        while self.routes[route].active < PROBE_CONNECTIONS {
            let Some(key) = self.routes[route].queue.pop_front() else {
                return;
            };
            match self.pending.get_mut(&key) {
                Some(p) if p.started => {}
                Some(p) if !p.waiters.is_empty() => {
                    p.started = true;
                    self.start(route, key);
                }
                Some(_) => {
                    self.pending.remove(&key);
                }
                None => {}
            }
        }
    }

    /// Answers waiters past their deadline, forgets those who left, closes idle connections.
    fn sweep(&mut self) {
        let now = Instant::now();
        let mut answered = 0;
        let mut expired: Vec<(String, Vec<Waiter>)> = Vec::new();
        for (key, p) in &mut self.pending {
            let before = p.waiters.len();
            let (late, keep): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(&mut p.waiters)
                .into_iter()
                .filter(|w| !w.reply.is_closed())
                .partition(|w| w.deadline <= now);
            p.waiters = keep;
            answered += before - p.waiters.len();
            if !late.is_empty() {
                expired.push((key.clone(), late));
            }
        }
        self.waiting = self.waiting.saturating_sub(answered);
        for (key, late) in expired {
            let (verdict, source, detail) = self.fallback(&key, now, "probe timed out".into());
            for w in late {
                let _ = w.reply.send(Answer::new(verdict, source, detail.clone()));
            }
        }
        // A queued address nobody waits for any more is dropped (a running probe still
        // finishes and fills the cache).
        self.pending
            .retain(|_, p| p.started || !p.waiters.is_empty());
        let pending = &self.pending;
        for rs in &mut self.routes {
            rs.queue.retain(|k| pending.contains_key(k));
        }
        for rs in &mut self.routes {
            let mut i = 0;
            while i < rs.idle.len() {
                if now.duration_since(rs.idle[i].1) >= PROBE_IDLE {
                    let (c, _) = rs.idle.swap_remove(i);
                    tokio::task::spawn_local(c.quit());
                } else {
                    i += 1;
                }
            }
        }
    }
}

/// Probes `address` within `timeout`, on `conn` if given (retrying once on a fresh connection
/// if that one turns out dead), and returns the RCPT reply (or why there is none) and the
/// connection if it can be used again.
async fn probe(
    target: &Target,
    helo: &str,
    conn: Option<ProbeConn>,
    address: &str,
    timeout: Duration,
) -> (Result<Reply, Reply>, Option<ProbeConn>) {
    let attempt = async {
        let reused = conn.is_some();
        let mut c = match conn {
            Some(c) => c,
            None => ProbeConn::open(target, helo).await?,
        };
        match c.probe(address).await {
            Ok(r) => Ok((r, c)),
            Err(_) if reused => {
                let mut c = ProbeConn::open(target, helo).await?;
                let r = c.probe(address).await?;
                Ok((r, c))
            }
            Err(e) => Err(e),
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok((r, c))) => {
            let reusable = c.client.is_ready();
            (Ok(r), reusable.then_some(c))
        }
        Ok(Err(e)) => (Err(e), None),
        Err(_) => (
            Err(Reply::local(
                451,
                format!(
                    "4.4.2 no answer from {target} within {} s",
                    timeout.as_secs()
                ),
            )),
            None,
        ),
    }
}

/// One probe connection: the socket and the sans-IO client.
struct ProbeConn {
    io: Box<dyn Io>,
    client: Client,
    out: Vec<u8>,
    buf: Vec<u8>,
    /// Probes made on it.
    probes: u32,
}

impl ProbeConn {
    /// Connects and reads the greeting and the EHLO/LHLO reply (the caller bounds the time).
    async fn open(target: &Target, helo: &str) -> Result<Self, Reply> {
        // Refused by the configuration (`Route::from_spec`); never asked.
        if target.is_mx() {
            return Err(Reply::local(
                451,
                "4.3.5 recipient verification needs a fixed next hop",
            ));
        }
        let opened = connect::target(target, None).await?;
        let mut c = Self {
            io: opened.io,
            client: Client::new(opened.protocol, helo),
            out: Vec::new(),
            buf: vec![0; READ_BUF],
            probes: 0,
        };
        loop {
            match c.next_event().await {
                Event::Ready(_) => return Ok(c),
                Event::Closed(r) => {
                    c.flush().await;
                    return Err(r);
                }
                _ => {}
            }
        }
    }

    /// One probe: the RCPT reply, once the RSET after it is answered too.
    async fn probe(&mut self, address: &str) -> Result<Reply, Reply> {
        while self.client.poll_event().is_some() {}
        self.probes += 1;
        if self.client.probe(address, &mut self.out).is_err() {
            return Err(Reply::local(451, "4.4.2 probe connection not ready"));
        }
        let reply = loop {
            match self.next_event().await {
                // 421: the next hop is closing this connection, not answering about the
                // address (Postfix after too many errors): a lost connection.
                Event::Done(mut o) if !o.is_empty() => match o.swap_remove(0).reply {
                    r if r.code == 421 => return Err(r),
                    r => break r,
                },
                Event::Closed(r) => return Err(r),
                _ => {}
            }
        };
        // The RSET reply: the connection is ready for the next probe (or closed; the answer
        // stands either way).
        while !self.client.is_ready() && !self.client.is_closed() {
            if let Event::Closed(_) = self.next_event().await {
                break;
            }
        }
        Ok(reply)
    }

    async fn flush(&mut self) {
        if self.out.is_empty() {
            return;
        }
        let res = self.io.write_all(&self.out).await;
        self.out.clear();
        if let Err(e) = res {
            self.client
                .lose(&Reply::local(451, format!("4.4.2 write: {e}")));
        }
    }

    /// Writes what the client queued, then reads until it has an event.
    async fn next_event(&mut self) -> Event {
        loop {
            self.flush().await;
            if let Some(e) = self.client.poll_event() {
                return e;
            }
            if self.client.is_closed() {
                return Event::Closed(Reply::local(451, "4.4.2 connection closed"));
            }
            let why = match self.io.read(&mut self.buf).await {
                Ok(0) => "4.4.2 connection closed by the next hop".to_string(),
                Ok(n) => {
                    let (client, buf, out) = (&mut self.client, &self.buf, &mut self.out);
                    client.feed(&buf[..n], out);
                    continue;
                }
                Err(e) => format!("4.4.2 read: {e}"),
            };
            self.client.lose(&Reply::local(451, why));
        }
    }

    /// Says goodbye (best effort, bounded).
    async fn quit(mut self) {
        self.client.quit(&mut self.out);
        let _ = tokio::time::timeout(QUIT_TIMEOUT, async {
            self.flush().await;
            let _ = self.next_event().await;
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_is_bounded_and_evicts_the_oldest_answer() {
        let now = Instant::now();
        let mut c = Cache::new(3);
        let hour = Duration::from_secs(3600);
        for k in ["a", "b", "c"] {
            c.insert(k, Verdict::Accepted, hour, now);
        }
        c.insert("a", Verdict::Refused, hour, now); // answered again: now the newest
        c.insert("d", Verdict::Accepted, hour, now);
        assert_eq!(c.map.len(), 3);
        assert!(c.get("b", now).is_none(), "b was the oldest answer");
        assert_eq!(c.get("a", now), Some((Verdict::Refused, true)));
        for i in 0..100 {
            c.insert(&format!("k{i}"), Verdict::Accepted, hour, now);
        }
        assert!(c.map.len() <= 3 && c.order.len() <= 6);
    }

    #[test]
    fn cache_answers_go_stale_then_away() {
        let now = Instant::now();
        let mut c = Cache::new(10);
        c.insert("a", Verdict::Refused, Duration::from_secs(600), now);
        assert_eq!(c.get("a", now), Some((Verdict::Refused, true)));
        let later = now + Duration::from_secs(601);
        assert_eq!(c.get("a", later), Some((Verdict::Refused, false)));
        assert_eq!(c.get("a", now + STALE_KEEP + Duration::from_secs(1)), None);
        assert!(c.map.is_empty());
    }
}
