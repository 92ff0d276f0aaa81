//! The sender: one edge-triggered epoll loop (mio) per thread over all of that thread's
//! sessions, the message counter shared by all threads, timeouts, the ack log and the progress
//! line.
//!
//! It does no SMTP itself (that is [`crate::session`]) and allocates nothing per message: the
//! message bytes come from the run's [`Template`], replies are parsed in place in each session's
//! fixed read buffer, and tokens for the ack log are written into a reused buffer.

use std::fs::File;
use std::io::{self, IoSlice, IsTerminal, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::args::{Config, Family};
use crate::message::{self, RunId, Template};
use crate::reply::MAX_REPLY;
use crate::report::{self, Report, Stats};
use crate::session::{Claim, Failure, Observer, Session, MAX_SEGMENTS};
use crate::tls;

/// How often timeouts are checked and connections retried.
const TICK: Duration = Duration::from_millis(100);
/// How often the progress line is updated.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Wait before reconnecting after a failed connection (only with `-A`).
const RECONNECT_DELAY: Duration = Duration::from_millis(100);
/// Ack-log bytes buffered before a write.
const ACK_LOG_FLUSH: usize = 64 * 1024;
/// A session's read buffer: one reply of the longest kind plus room for the next one's start.
const READ_BUF: usize = MAX_REPLY + 4096;
/// File descriptors besides the sessions' sockets (epoll, stdio, the ack log, slack).
const FD_SPARE: usize = 64;
/// Events taken from epoll per wake-up.
const EVENTS: usize = 1024;

/// Why a run could not start.
#[derive(Debug)]
pub(crate) enum RunError {
    /// The target does not resolve (to an address of the asked family).
    Resolve(String),
    /// The ack log cannot be opened.
    AckLog(io::Error),
    /// epoll could not be set up.
    Poll(io::Error),
    /// `--starttls` cannot be set up (the CA file, the name).
    Tls(String),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Resolve(s) => write!(f, "{s}"),
            Self::AckLog(e) => write!(f, "cannot open the ack log: {e}"),
            Self::Poll(e) => write!(f, "cannot create an epoll instance: {e}"),
            Self::Tls(e) => write!(f, "{e}"),
        }
    }
}

/// Set by the first SIGINT/SIGTERM: stop now and report (a second one kills the process).
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Makes Ctrl-C end the run with a report and a complete ack log instead of killing it.
fn catch_interrupts() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe); SA_RESETHAND puts
        // the default action back, so a second signal terminates as usual.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESETHAND;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Whether the run was interrupted by a signal.
pub(crate) fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Sends the configured load and returns the report.
///
/// # Errors
/// [`RunError`] when the run cannot start; failures during the run are in the report.
pub(crate) fn run(cfg: &Config) -> Result<Report, RunError> {
    let addr = resolve(&cfg.target, cfg.family)?;
    let tls = match &cfg.starttls {
        Some(opts) => {
            let (host, _) = split_target(&cfg.target)?;
            Some(tls::Client::new(opts, host).map_err(RunError::Tls)?)
        }
        None => None,
    };
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let run_id = RunId::new(wall.as_secs(), wall.subsec_nanos(), std::process::id());
    let tpl: &'static Template = Box::leak(Box::new(Template::new(&cfg.shape, &run_id, cfg.bdat)));
    let ack_log = match &cfg.ack_log {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(p)
                .map_err(RunError::AckLog)?,
        ),
        None => None,
    };
    raise_fd_limit(cfg.sessions);
    catch_interrupts();
    let start = Instant::now();
    let shared = Shared {
        cfg,
        tpl,
        addr,
        start,
        deadline: cfg.duration.map(|d| start + d),
        limit: cfg.messages.unwrap_or(u64::MAX),
        next: AtomicU64::new(0),
        connects: AtomicU64::new(0),
        abort: AtomicBool::new(false),
        acked: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        ack_log,
        first_error: Mutex::new(None),
        token_prefix: run_id.token(0).into_bytes(),
        progress: cfg.count || io::stderr().is_terminal(),
        tty: io::stderr().is_terminal(),
        tls,
    };
    let mut workers = Vec::with_capacity(cfg.threads);
    for t in 0..cfg.threads {
        let n = cfg.sessions / cfg.threads + usize::from(t < cfg.sessions % cfg.threads);
        workers.push(Worker::new(&shared, t, n).map_err(RunError::Poll)?);
    }
    let stats: Vec<Stats> = std::thread::scope(|scope| {
        let handles: Vec<_> = workers
            .into_iter()
            .map(|mut w| scope.spawn(move || w.run()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Stats::new()))
            .collect()
    });
    let elapsed = start.elapsed();
    if shared.progress && shared.tty {
        eprint!("\r\x1b[K");
    }
    let mut total = Stats::new();
    for s in &stats {
        total.merge(s);
    }
    let first_error = shared.first_error.lock().map(|e| e.clone()).unwrap_or(None);
    Ok(Report {
        stats: total,
        elapsed,
        message_bytes: tpl.message_len,
        cpu: cpu_times(),
        addr: addr.to_string(),
        first_error,
        aborted: shared.abort.load(Ordering::Relaxed) || interrupted(),
    })
}

/// Resolves `[inet:]host[:port]` (also `[v6addr]:port`; default port 25).
///
/// # Errors
/// [`RunError::Resolve`] with a message naming the target.
pub(crate) fn resolve(target: &str, family: Family) -> Result<SocketAddr, RunError> {
    let (host, port) = split_target(target)?;
    let port: u16 = port
        .parse()
        .map_err(|_| RunError::Resolve(format!("{target}: bad port {port:?}")))?;
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| RunError::Resolve(format!("{target}: {e}")))?;
    addrs
        .into_iter()
        .find(|a| match family {
            Family::Any => true,
            Family::V4 => a.is_ipv4(),
            Family::V6 => a.is_ipv6(),
        })
        .ok_or_else(|| RunError::Resolve(format!("{target}: no address of the requested family")))
}

/// `[inet:]host[:port]` (also `[v6addr]:port`) into host and port (default 25).
fn split_target(target: &str) -> Result<(&str, &str), RunError> {
    let t = target.strip_prefix("inet:").unwrap_or(target);
    if t.starts_with("unix:") {
        return Err(RunError::Resolve(format!(
            "{target}: UNIX-domain targets are not supported"
        )));
    }
    let (host, port) = if let Some(rest) = t.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| RunError::Resolve(format!("{target}: missing ']'")))?;
        match after.strip_prefix(':') {
            Some(p) => (h, p),
            None if after.is_empty() => (h, "25"),
            None => return Err(RunError::Resolve(format!("{target}: junk after ']'"))),
        }
    } else {
        match t.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, p),
            _ => (t, "25"),
        }
    };
    Ok((host, port))
}

/// Raises the soft open-files limit towards the hard one so that `-s` sessions fit (each session
/// is one socket). Failing that, connects fail later with "too many open files", counted.
fn raise_fd_limit(sessions: usize) {
    let want = (sessions + FD_SPARE) as libc::rlim_t;
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The process's user and system CPU time (all threads).
fn cpu_times() -> (Duration, Duration) {
    // SAFETY: getrusage only writes into the zeroed struct we pass; RUSAGE_SELF is valid.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut ru) != 0 {
            return (Duration::ZERO, Duration::ZERO);
        }
        ru
    };
    let tv = |t: libc::timeval| {
        Duration::new(
            t.tv_sec.max(0) as u64,
            (t.tv_usec.clamp(0, 999_999) * 1000) as u32,
        )
    };
    (tv(ru.ru_utime), tv(ru.ru_stime))
}

/// State shared by all threads.
struct Shared<'a> {
    cfg: &'a Config,
    tpl: &'static Template,
    addr: SocketAddr,
    start: Instant,
    /// `--duration` end: no message starts after it.
    deadline: Option<Instant>,
    /// `-m` (or unlimited).
    limit: u64,
    /// The next message index to hand out.
    next: AtomicU64,
    /// Connections opened so far (`--proxy`: the source of each).
    connects: AtomicU64,
    /// Stop now (a failure without `-A`).
    abort: AtomicBool,
    /// For the progress line.
    acked: AtomicU64,
    failed: AtomicU64,
    ack_log: Option<File>,
    first_error: Mutex<Option<String>>,
    /// The run's token with index 0; the digits are overwritten per message.
    token_prefix: Vec<u8>,
    progress: bool,
    tty: bool,
    /// `--starttls`.
    tls: Option<tls::Client>,
}

/// The answer to "may I start a message?".
enum Claimed {
    Got(Claim),
    /// Not before this time (`--rate`).
    NotYet(Instant),
    /// No more messages.
    Done,
}

impl Shared<'_> {
    fn claim(&self, now: Instant) -> Claimed {
        if self.abort.load(Ordering::Relaxed)
            || interrupted()
            || self.deadline.is_some_and(|d| now >= d)
        {
            return Claimed::Done;
        }
        let Some(rate) = self.cfg.rate else {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            return if i >= self.limit {
                Claimed::Done
            } else {
                Claimed::Got(Claim {
                    index: i,
                    start: now,
                })
            };
        };
        loop {
            let i = self.next.load(Ordering::Relaxed);
            if i >= self.limit {
                return Claimed::Done;
            }
            let due = self.start + Duration::from_secs_f64(i as f64 / rate);
            if self.deadline.is_some_and(|d| due >= d) {
                return Claimed::Done;
            }
            if due > now {
                return Claimed::NotYet(due);
            }
            if self
                .next
                .compare_exchange(i, i + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                return Claimed::Got(Claim {
                    index: i,
                    start: due,
                });
            }
        }
    }

    fn note_error(&self, why: Failure) {
        self.note_text(report::describe(why));
    }

    /// Keeps the first error of the run for the report.
    fn note_text(&self, text: String) {
        if let Ok(mut e) = self.first_error.lock() {
            if e.is_none() {
                *e = Some(text);
            }
        }
    }
}

/// The per-thread counters, the ack-log buffer and the session [`Observer`].
struct Ctx<'a> {
    sh: &'a Shared<'a>,
    stats: Stats,
    ack_buf: Vec<u8>,
    token: Vec<u8>,
}

impl Ctx<'_> {
    fn failure(&mut self, why: Failure) {
        if !self.sh.cfg.allow_fail {
            self.sh.abort.store(true, Ordering::Relaxed);
        }
        self.sh.note_error(why);
    }

    fn flush_ack_log(&mut self) {
        if let (Some(mut f), false) = (self.sh.ack_log.as_ref(), self.ack_buf.is_empty()) {
            // One write of whole lines to an O_APPEND file, so threads do not interleave lines.
            if let Err(e) = f.write_all(&self.ack_buf) {
                eprintln!("smtp-source: writing the ack log: {e}");
            }
            self.ack_buf.clear();
        }
    }
}

impl Observer for Ctx<'_> {
    fn greeted(&mut self, latency: Duration) {
        self.stats.greeting.record(latency);
    }

    fn acked(&mut self, index: u64, start: Instant, dot_sent: Instant, now: Instant) {
        self.stats.acked += 1;
        self.stats
            .data_end
            .record(now.saturating_duration_since(dot_sent));
        self.stats.txn.record(now.saturating_duration_since(start));
        self.sh.acked.fetch_add(1, Ordering::Relaxed);
        if self.sh.ack_log.is_some() {
            message::write_index(&mut self.token, index);
            self.ack_buf.extend_from_slice(&self.token);
            self.ack_buf.push(b'\n');
            if self.ack_buf.len() >= ACK_LOG_FLUSH {
                self.flush_ack_log();
            }
        }
    }

    fn failed(&mut self, _index: u64, why: Failure) {
        self.stats.count_failure(why);
        self.sh.failed.fetch_add(1, Ordering::Relaxed);
        self.failure(why);
    }

    fn rcpt_rejected(&mut self, code: u16) {
        *self.stats.rcpt_rejected.entry(code).or_insert(0) += 1;
        if !self.sh.cfg.allow_fail {
            self.sh.abort.store(true, Ordering::Relaxed);
        }
    }
}

/// Counts what is still in flight when a run stops early.
struct Unfinished(u64);

impl Observer for Unfinished {
    fn greeted(&mut self, _: Duration) {}
    fn acked(&mut self, _: u64, _: Instant, _: Instant, _: Instant) {}
    fn failed(&mut self, _: u64, _: Failure) {
        self.0 += 1;
    }
    fn rcpt_rejected(&mut self, _: u16) {}
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    /// No connection; may connect at `retry_at`.
    Closed,
    Connecting,
    Open,
    /// Finished for good.
    Done,
}

/// One session: its socket, protocol state and read buffer.
struct Slot {
    sock: Option<TcpStream>,
    /// `--starttls`: the TLS connection over `sock`, from the 220 to STARTTLS on.
    tls: Option<Box<rustls::ClientConnection>>,
    sess: Session,
    state: SlotState,
    /// When connect() was called (connect latency).
    since: Instant,
    /// Fail the connection if nothing happens by then (while waiting for something).
    deadline: Instant,
    retry_at: Instant,
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    /// In the idle list (`--rate`).
    idle: bool,
}

struct Worker<'a> {
    ctx: Ctx<'a>,
    id: usize,
    poll: Poll,
    slots: Vec<Slot>,
    /// `--rate`: sessions waiting for their next message (free, or closed without `-d`).
    idle: Vec<usize>,
    /// Slots not yet `Done`.
    live: usize,
    claims_done: bool,
    next_due: Option<Instant>,
}

impl<'a> Worker<'a> {
    fn new(sh: &'a Shared<'a>, id: usize, sessions: usize) -> io::Result<Self> {
        let now = Instant::now();
        let slots = (0..sessions)
            .map(|_| Slot {
                sock: None,
                tls: None,
                sess: Session::new(sh.tpl, sh.cfg.keep, sh.cfg.pipelining, now)
                    .with_starttls(sh.tls.is_some()),
                state: SlotState::Closed,
                since: now,
                deadline: now,
                retry_at: now,
                rbuf: vec![0; READ_BUF],
                rstart: 0,
                rend: 0,
                idle: false,
            })
            .collect();
        Ok(Self {
            ctx: Ctx {
                sh,
                stats: Stats::new(),
                ack_buf: Vec::with_capacity(ACK_LOG_FLUSH + 64),
                token: sh.token_prefix.clone(),
            },
            id,
            poll: Poll::new()?,
            slots,
            idle: Vec::with_capacity(sessions),
            live: sessions,
            claims_done: false,
            next_due: None,
        })
    }

    fn sh(&self) -> &'a Shared<'a> {
        self.ctx.sh
    }

    fn run(&mut self) -> Stats {
        let mut events = Events::with_capacity(EVENTS);
        let mut now = Instant::now();
        for i in 0..self.slots.len() {
            self.kick(i, now);
        }
        self.schedule(now);
        let mut next_tick = now + TICK;
        let mut next_progress = now + PROGRESS_EVERY;
        let mut last_acked = 0;
        while self.live > 0 && !self.sh().abort.load(Ordering::Relaxed) && !interrupted() {
            let mut wake = next_tick;
            if let Some(d) = self.next_due {
                wake = wake.min(d);
            }
            let timeout = wake.saturating_duration_since(now);
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    eprintln!("smtp-source: epoll: {e}");
                    self.ctx.sh.abort.store(true, Ordering::Relaxed);
                    break;
                }
            }
            now = Instant::now();
            for ev in events.iter() {
                let i = ev.token().0;
                if i < self.slots.len() {
                    self.on_event(i, ev, now);
                }
            }
            if self.next_due.is_some_and(|d| d <= now) || !self.idle.is_empty() {
                self.schedule(now);
            }
            if now >= next_tick {
                next_tick = now + TICK;
                self.tick(now);
                if self.id == 0 && now >= next_progress {
                    let acked = self.sh().acked.load(Ordering::Relaxed);
                    let secs = (now - next_progress + PROGRESS_EVERY).as_secs_f64();
                    self.progress(acked, (acked - last_acked) as f64 / secs, now);
                    last_acked = acked;
                    next_progress = now + PROGRESS_EVERY;
                }
            }
        }
        self.stop();
        self.ctx.flush_ack_log();
        std::mem::replace(&mut self.ctx.stats, Stats::new())
    }

    fn progress(&self, acked: u64, rate: f64, now: Instant) {
        let sh = self.sh();
        if !sh.progress {
            return;
        }
        let line = report::progress_line(
            acked,
            sh.failed.load(Ordering::Relaxed),
            rate,
            now - sh.start,
        );
        if sh.tty {
            eprint!("\r{line}\x1b[K");
        } else {
            eprintln!("{line}");
        }
    }

    /// Abort or normal end: what is still in flight is unfinished.
    fn stop(&mut self) {
        let mut left = Unfinished(0);
        for slot in &mut self.slots {
            slot.sess.abandon(Failure::Closed, &mut left);
            if let Some(mut s) = slot.sock.take() {
                let _ = self.poll.registry().deregister(&mut s);
            }
        }
        self.ctx.stats.unfinished += left.0;
    }

    /// Gives slot `i` work if it can take some.
    fn kick(&mut self, i: usize, now: Instant) {
        let rate = self.sh().cfg.rate.is_some();
        let keep = self.sh().cfg.keep;
        match self.slots[i].state {
            SlotState::Done | SlotState::Connecting => {}
            SlotState::Closed => {
                if now < self.slots[i].retry_at {
                    return;
                }
                if self.claims_done {
                    self.set_done(i);
                } else if !rate {
                    match self.sh().claim(now) {
                        Claimed::Got(c) => self.connect(i, Some(c), now),
                        Claimed::Done | Claimed::NotYet(_) => {
                            self.claims_done = true;
                            self.set_done(i);
                        }
                    }
                } else if keep {
                    self.connect(i, None, now);
                } else {
                    self.make_idle(i);
                }
            }
            SlotState::Open => {
                if !self.slots[i].sess.is_free() {
                    return;
                }
                if self.claims_done {
                    self.slots[i].sess.finish();
                } else if rate {
                    self.make_idle(i);
                } else {
                    match self.sh().claim(now) {
                        Claimed::Got(c) => self.slots[i].sess.assign(c, now),
                        Claimed::Done | Claimed::NotYet(_) => {
                            self.claims_done = true;
                            self.slots[i].sess.finish();
                        }
                    }
                }
                self.flush(i, now);
            }
        }
    }

    fn make_idle(&mut self, i: usize) {
        if !self.slots[i].idle {
            self.slots[i].idle = true;
            self.idle.push(i);
        }
    }

    fn set_done(&mut self, i: usize) {
        if self.slots[i].state != SlotState::Done {
            self.slots[i].state = SlotState::Done;
            self.live -= 1;
        }
    }

    /// `--rate`: hands due messages to idle sessions.
    fn schedule(&mut self, now: Instant) {
        if self.sh().cfg.rate.is_none() {
            return;
        }
        self.next_due = None;
        while let Some(&i) = self.idle.last() {
            if self.claims_done {
                self.idle.pop();
                self.slots[i].idle = false;
                self.kick(i, now);
                continue;
            }
            match self.sh().claim(now) {
                Claimed::Got(c) => {
                    self.idle.pop();
                    self.slots[i].idle = false;
                    match self.slots[i].state {
                        SlotState::Open => {
                            self.slots[i].sess.assign(c, now);
                            self.flush(i, now);
                        }
                        _ => self.connect(i, Some(c), now),
                    }
                }
                Claimed::NotYet(t) => {
                    self.next_due = Some(t);
                    return;
                }
                Claimed::Done => self.claims_done = true,
            }
        }
    }

    fn connect(&mut self, i: usize, claim: Option<Claim>, now: Instant) {
        let addr = self.sh().addr;
        let timeout = self.sh().cfg.timeout;
        let slot = &mut self.slots[i];
        slot.since = now;
        slot.deadline = now + timeout;
        slot.rstart = 0;
        slot.rend = 0;
        if let Some(c) = claim {
            slot.sess.assign(c, now);
        }
        let sh = self.ctx.sh;
        if let Some(p) = &sh.cfg.proxy {
            let n = sh.connects.fetch_add(1, Ordering::Relaxed);
            p.render(n, addr, slot.sess.proxy_header());
        }
        let mut sock = match TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => return self.connect_failed(i, &e, now),
        };
        let _ = sock.set_nodelay(true);
        if let Err(e) = self.poll.registry().register(
            &mut sock,
            Token(i),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            eprintln!("smtp-source: epoll register: {e}");
            return self.fail(i, Failure::Connect, now);
        }
        let slot = &mut self.slots[i];
        slot.sock = Some(sock);
        slot.state = SlotState::Connecting;
    }

    fn on_event(&mut self, i: usize, ev: &mio::event::Event, now: Instant) {
        if self.slots[i].state == SlotState::Connecting {
            let Some(sock) = self.slots[i].sock.as_ref() else {
                return;
            };
            match sock.take_error() {
                Ok(Some(e)) | Err(e) => return self.connect_failed(i, &e, now),
                Ok(None) => {}
            }
            match sock.peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                    if ev.is_error() || ev.is_read_closed() {
                        return self.fail(i, Failure::Connect, now);
                    }
                    return; // still connecting
                }
                Err(e) => return self.connect_failed(i, &e, now),
            }
            let timeout = self.sh().cfg.timeout;
            let slot = &mut self.slots[i];
            slot.state = SlotState::Open;
            slot.deadline = now + timeout;
            self.ctx.stats.connections += 1;
            self.ctx
                .stats
                .connect
                .record(now.saturating_duration_since(slot.since));
            slot.sess.connected(now);
        }
        if self.slots[i].state != SlotState::Open {
            return;
        }
        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
            self.read(i, ev.is_read_closed() || ev.is_error(), now);
        }
        if self.slots[i].state == SlotState::Open && ev.is_writable() {
            self.flush(i, now);
        }
    }

    /// Reads and handles replies until the socket is drained.
    fn read(&mut self, i: usize, closing: bool, now: Instant) {
        if self.slots[i].tls.is_some() {
            return self.read_tls(i, now);
        }
        let timeout = self.sh().cfg.timeout;
        loop {
            let slot = &mut self.slots[i];
            let Some(sock) = slot.sock.as_mut() else {
                return;
            };
            if slot.rend == slot.rbuf.len() {
                // parse() fails before a reply fills the buffer, so there is a consumed front.
                slot.rbuf.copy_within(slot.rstart..slot.rend, 0);
                slot.rend -= slot.rstart;
                slot.rstart = 0;
            }
            let space = slot.rbuf.len() - slot.rend;
            match sock.read(&mut slot.rbuf[slot.rend..]) {
                Ok(0) => {
                    if slot.sess.quit_sent() {
                        return self.close(i, now);
                    }
                    return self.fail(i, Failure::Closed, now);
                }
                Ok(n) => {
                    slot.rend += n;
                    slot.deadline = now + timeout;
                    let input = &slot.rbuf[slot.rstart..slot.rend];
                    match slot.sess.handle_input(input, now, &mut self.ctx) {
                        Ok((used, st)) => {
                            slot.rstart += used;
                            if slot.rstart == slot.rend {
                                slot.rstart = 0;
                                slot.rend = 0;
                            }
                            if st.done {
                                return self.close(i, now);
                            }
                            if st.starttls {
                                return self.start_tls(i, now);
                            }
                            if st.free {
                                self.kick(i, now);
                            }
                        }
                        Err(why) => return self.fail(i, why, now),
                    }
                    // Edge-triggered: a short read drained the socket, and the next arrival
                    // wakes us again. A pending close is read to its end now, though.
                    if n < space && !closing {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.fail(i, Failure::Closed, now),
            }
        }
        self.flush(i, now);
    }

    /// STARTTLS was answered 220: the handshake starts. Bytes after the 220 (none from an
    /// honest server) would be a command-injection attempt in reverse: the connection fails.
    fn start_tls(&mut self, i: usize, now: Instant) {
        let slot = &mut self.slots[i];
        if slot.rstart != slot.rend {
            let why = Failure::Protocol(crate::reply::ReplyError::Malformed);
            return self.fail(i, why, now);
        }
        let Some(client) = self.ctx.sh.tls.as_ref() else {
            return;
        };
        match rustls::ClientConnection::new(client.config.clone(), client.name.clone()) {
            Ok(c) => slot.tls = Some(Box::new(c)),
            Err(e) => {
                self.sh().note_text(format!("tls: {e}"));
                return self.fail(i, Failure::Tls, now);
            }
        }
        // The ClientHello goes out; the server's answer arrives as a readable event.
        self.flush(i, now);
    }

    /// `read` for a TLS session: records from the socket into rustls, plaintext from rustls
    /// into the read buffer and on to the session, until the socket is drained.
    fn read_tls(&mut self, i: usize, now: Instant) {
        let timeout = self.sh().cfg.timeout;
        loop {
            let slot = &mut self.slots[i];
            let Some(tls) = slot.tls.as_mut() else {
                return;
            };
            if slot.rend == slot.rbuf.len() {
                slot.rbuf.copy_within(slot.rstart..slot.rend, 0);
                slot.rend -= slot.rstart;
                slot.rstart = 0;
            }
            match tls.reader().read(&mut slot.rbuf[slot.rend..]) {
                Ok(0) => {
                    // close_notify, or the end of the stream.
                    if slot.sess.quit_sent() {
                        return self.close(i, now);
                    }
                    return self.fail(i, Failure::Closed, now);
                }
                Ok(n) => {
                    slot.rend += n;
                    slot.deadline = now + timeout;
                    let input = &slot.rbuf[slot.rstart..slot.rend];
                    match slot.sess.handle_input(input, now, &mut self.ctx) {
                        Ok((used, st)) => {
                            slot.rstart += used;
                            if slot.rstart == slot.rend {
                                slot.rstart = 0;
                                slot.rend = 0;
                            }
                            if st.done {
                                return self.close(i, now);
                            }
                            if st.starttls {
                                let why = Failure::Protocol(crate::reply::ReplyError::Malformed);
                                return self.fail(i, why, now);
                            }
                            if st.free {
                                self.kick(i, now);
                            }
                        }
                        Err(why) => return self.fail(i, why, now),
                    }
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    if slot.sess.quit_sent() {
                        return self.close(i, now);
                    }
                    return self.fail(i, Failure::Closed, now);
                }
            }
            let slot = &mut self.slots[i];
            let (Some(sock), Some(tls)) = (slot.sock.as_mut(), slot.tls.as_mut()) else {
                return;
            };
            match tls.read_tls(sock) {
                Ok(0) => {
                    if slot.sess.quit_sent() {
                        return self.close(i, now);
                    }
                    return self.fail(i, Failure::Closed, now);
                }
                Ok(_) => {
                    let was_handshaking = tls.is_handshaking();
                    if let Err(e) = tls.process_new_packets() {
                        // Send the alert rustls queued, if the socket takes it.
                        let _ = tls.write_tls(sock);
                        self.sh().note_text(format!("tls: {e}"));
                        return self.fail(i, Failure::Tls, now);
                    }
                    slot.deadline = now + timeout;
                    if was_handshaking && !tls.is_handshaking() {
                        self.ctx.stats.tls_handshakes += 1;
                        slot.sess.tls_established();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.fail(i, Failure::Closed, now),
            }
        }
        self.flush(i, now);
    }

    /// `flush` for a TLS session: the session's output into rustls, records onto the socket.
    fn flush_tls(&mut self, i: usize, now: Instant) {
        let timeout = self.sh().cfg.timeout;
        let slot = &mut self.slots[i];
        let (Some(sock), Some(tls)) = (slot.sock.as_mut(), slot.tls.as_mut()) else {
            return;
        };
        loop {
            while slot.sess.has_output() && !tls.is_handshaking() {
                let mut iov = [IoSlice::new(&[]); MAX_SEGMENTS];
                let n = slot.sess.out_slices(&mut iov);
                match tls.writer().write_vectored(&iov[..n]) {
                    // rustls' send buffer is full: write records first.
                    Ok(0) => break,
                    Ok(w) => slot.sess.consume_out(w, now),
                    Err(_) => return self.fail(i, Failure::Tls, now),
                }
            }
            if !tls.wants_write() {
                return;
            }
            match tls.write_tls(sock) {
                Ok(0) => return self.fail(i, Failure::Closed, now),
                Ok(_) => slot.deadline = now + timeout,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.fail(i, Failure::Closed, now),
            }
        }
    }

    /// Writes what the session has queued, as far as the socket takes it.
    fn flush(&mut self, i: usize, now: Instant) {
        if self.slots[i].state == SlotState::Open && self.slots[i].tls.is_some() {
            return self.flush_tls(i, now);
        }
        let timeout = self.sh().cfg.timeout;
        let slot = &mut self.slots[i];
        let Some(sock) = slot.sock.as_mut() else {
            return;
        };
        if slot.state != SlotState::Open {
            return;
        }
        while slot.sess.has_output() {
            let mut iov = [IoSlice::new(&[]); MAX_SEGMENTS];
            let n = slot.sess.out_slices(&mut iov);
            match sock.write_vectored(&iov[..n]) {
                Ok(0) => return self.fail(i, Failure::Closed, now),
                Ok(w) => {
                    slot.sess.consume_out(w, now);
                    slot.deadline = now + timeout;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.fail(i, Failure::Closed, now),
            }
        }
    }

    /// connect() failed: "connection refused" says it all, other errors get their text.
    fn connect_failed(&mut self, i: usize, e: &io::Error, now: Instant) {
        let why = classify_connect(e);
        if why != Failure::Refused {
            let addr = self.sh().addr;
            self.sh().note_text(format!("connect to {addr}: {e}"));
        }
        self.fail(i, why, now);
    }

    /// The connection ended normally (after QUIT).
    fn close(&mut self, i: usize, now: Instant) {
        // Nothing is in flight after the 221, but should a server close early, say so.
        let slot = &mut self.slots[i];
        slot.sess.abandon(Failure::Closed, &mut self.ctx);
        self.drop_socket(i);
        self.kick(i, now);
    }

    /// The connection failed: count it, fail its messages, maybe go on.
    fn fail(&mut self, i: usize, why: Failure, now: Instant) {
        self.ctx.stats.conn_errors.count(why);
        self.ctx.failure(why);
        let slot = &mut self.slots[i];
        slot.sess.abandon(why, &mut self.ctx);
        self.drop_socket(i);
        self.slots[i].retry_at = now + RECONNECT_DELAY;
        if !self.sh().abort.load(Ordering::Relaxed) {
            self.kick(i, now);
        }
    }

    fn drop_socket(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        // Closing the socket (its only descriptor) also takes it out of the epoll set, so no
        // deregister call: one system call less per connection.
        slot.sock = None;
        slot.tls = None;
        slot.state = SlotState::Closed;
        slot.rstart = 0;
        slot.rend = 0;
    }

    /// Timeouts, reconnects, the ack log.
    fn tick(&mut self, now: Instant) {
        for i in 0..self.slots.len() {
            let slot = &self.slots[i];
            let waiting = match slot.state {
                SlotState::Connecting => true,
                SlotState::Open => {
                    slot.sess.is_waiting()
                        || slot.sess.has_output()
                        || slot.tls.as_ref().is_some_and(|t| t.is_handshaking())
                }
                SlotState::Closed => {
                    if now >= slot.retry_at && !slot.idle {
                        self.kick(i, now);
                    }
                    false
                }
                SlotState::Done => false,
            };
            if waiting && now >= self.slots[i].deadline {
                self.fail(i, Failure::Timeout, now);
            }
        }
        if !self.ctx.ack_buf.is_empty() {
            self.ctx.flush_ack_log();
        }
    }
}

fn classify_connect(e: &io::Error) -> Failure {
    if e.kind() == io::ErrorKind::ConnectionRefused {
        Failure::Refused
    } else {
        Failure::Connect
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_resolve() {
        let a = resolve("127.0.0.1:2526", Family::Any).expect("v4");
        assert_eq!(a, "127.0.0.1:2526".parse().expect("addr"));
        let a = resolve("inet:[::1]:25", Family::Any).expect("v6");
        assert_eq!(a, "[::1]:25".parse().expect("addr"));
        assert_eq!(
            resolve("127.0.0.1", Family::V4)
                .expect("default port")
                .port(),
            25
        );
        assert_eq!(resolve("::1", Family::V6).expect("bare v6").port(), 25);
        assert!(resolve("127.0.0.1:1", Family::V6).is_err());
        assert!(resolve("127.0.0.1:99999", Family::Any).is_err());
        assert!(resolve("[::1", Family::Any).is_err());
        assert!(resolve("unix:/tmp/x", Family::Any).is_err());
    }

    #[test]
    fn cpu_time_is_readable() {
        let (u, s) = cpu_times();
        let mut x = 0u64;
        for i in 0..1_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let (u2, s2) = cpu_times();
        assert!(u2 + s2 >= u + s);
    }
}
