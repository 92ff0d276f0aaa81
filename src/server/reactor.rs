//! One reactor: an OS thread (pinned to a CPU when possible) running one tokio-uring runtime
//! with its own listeners, buffer pool, spool writer and statistics.
//!
//! The thread opens the spool, reports "ready" (or why not) to the main thread, runs one accept
//! loop per listener, and on shutdown stops accepting, waits for connections to finish (grace
//! period), cuts the rest, and syncs and closes the spool.
//!
//! Accept is never raced against a timer or `select!` (a dropped accept loses the connection it
//! was about to return, docs/design.md): to stop, the reactor shuts the listening socket down, which
//! completes the pending accept with an error, and the loop checks the stop state after every
//! accept. This module does not speak SMTP; [`super::conn`] does.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use tokio::sync::watch;
use tokio_uring::net::{TcpListener, TcpStream};

use super::conn;
use super::deadline::Sweep;
use super::limit::{ConnLimits, Refusal};
use super::rate::RateKind;
use super::shutdown::{Stop, TrackGuard, Tracker, GRACE_PERIOD, HARD_STOP_WAIT};
use super::ServerError;
use crate::buffers::{BufferConfig, BufferPool};
use crate::config::Config;
use crate::smtp::SessionConfig;
use crate::spool::Spool;
use crate::stats::ReactorStats;

/// Submission queue entries of each ring (completions get twice as many). Thousands of idle
/// connections each keep one read in flight, but in-flight operations do not occupy the queue;
/// it only has to hold what one loop turn submits.
pub const RING_ENTRIES: u32 = 1024;
/// Smallest ring tried when locked memory is short. Recent kernels charge ring memory to
/// `RLIMIT_MEMLOCK` again (a 1024-entry ring needs more than the old 64 KiB default);
/// tokio-uring submits early when the queue is full, so a small ring only costs a few more
/// `io_uring_enter` calls.
pub const MIN_RING_ENTRIES: u32 = 16;
/// Share of `RLIMIT_MEMLOCK` the rings of all reactors may take together (in halves): the rest
/// is for the start-up probe's ring, whose memory the kernel releases only after a while, and
/// for registered buffers.
const RING_MEMLOCK_SHARE_HALVES: u64 = 1;
/// Pause after an accept error such as EMFILE, so a full fd table does not spin the loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// What every connection task of a reactor shares.
pub struct Reactor {
    /// This reactor's number (spool segment names, logs).
    pub index: usize,
    /// Our hostname, for replies written outside the session (421 on refusal).
    pub hostname: String,
    /// The SMTP policy.
    pub session_config: Arc<SessionConfig>,
    /// This reactor's spool writer.
    pub spool: Spool,
    /// This reactor's buffers (shared with the spool writer).
    pub pool: BufferPool,
    /// This reactor's counters and histograms.
    pub stats: Arc<ReactorStats>,
    /// Global connection limits.
    pub limits: Arc<ConnLimits>,
    /// This reactor's stop state (the global one, plus the end of the grace period).
    pub stop: watch::Receiver<Stop>,
    /// Live connection tasks.
    pub tracker: Rc<Tracker>,
    /// How long a client may stay silent (also bounds our writes).
    pub idle_timeout: Duration,
    /// The connections' read and write deadlines, swept by one ticker task.
    pub deadlines: Rc<Sweep>,
    /// STARTTLS, when certificates are configured.
    pub tls: Option<Arc<super::tls::TlsAcceptor>>,
    /// Balancers whose connections begin with a PROXY header (`--proxy-protocol-from`).
    pub proxy_from: Vec<ipnet::IpNet>,
    /// The delivery stage, told of every committed message (`None`: store only).
    pub delivery: Option<crate::relay::Notifier>,
    /// The door's abuse controls, shared by all reactors.
    pub abuse: Abuse,
}

/// The abuse controls a reactor applies at the door (see [`super::rate`] and
/// [`super::recipients`]).
#[derive(Debug, Clone, Default)]
pub struct Abuse {
    /// The recipient table file and the table in force (`--recipients`).
    pub recipients: Option<Arc<super::recipients::Recipients>>,
    /// The per-client rate limits, shared by all reactors.
    pub rates: Option<Arc<super::rate::RateLimits>>,
    /// Clients exempt from the greet pause and the rate limits (`--trusted-networks`).
    pub trusted: Vec<ipnet::IpNet>,
    /// `--greet-pause` (zero: off).
    pub greet_pause: Duration,
    /// Recipient verification with the next hop (`--verify-recipients`, `verify = true` on a
    /// route); `None` when no route verifies.
    pub verify: Option<Arc<crate::relay::verify::Verifier>>,
    /// The DNSBL checks (`--dnsbl`), shared by all reactors.
    pub dnsbl: Option<Arc<super::dnsbl::Dnsbl>>,
}

impl Abuse {
    /// Whether `client` is in a trusted network.
    pub fn is_trusted(&self, client: std::net::IpAddr) -> bool {
        let ip = client.to_canonical();
        self.trusted.iter().any(|n| n.contains(&ip))
    }

    /// The policy of a new session from a client that is `trusted` or not: the recipient table
    /// in force now, the message/recipient rate limits unless trusted, and recipient
    /// verification (for trusted clients too: it is about the recipient, not the client).
    pub fn policy(&self, trusted: bool) -> crate::smtp::Policy {
        crate::smtp::Policy {
            recipients: self.recipients.as_ref().map(|r| r.current()),
            rates: match &self.rates {
                Some(r) if !trusted && r.limits_commands() => {
                    Some(r.clone() as Arc<dyn crate::smtp::RateCheck>)
                }
                _ => None,
            },
            verify: self
                .verify
                .as_ref()
                .map(|v| v.clone() as Arc<dyn crate::smtp::VerifyCheck>),
        }
    }
}

/// Everything a reactor thread is given at spawn.
pub struct ReactorSetup {
    /// Reactor number.
    pub index: usize,
    /// CPU to pin to, if pinning.
    pub cpu: Option<usize>,
    /// The configuration.
    pub config: Arc<Config>,
    /// Shared session policy.
    pub session_config: Arc<SessionConfig>,
    /// Its listening sockets (bound, listening, blocking).
    pub listeners: Vec<StdListener>,
    /// Its statistics.
    pub stats: Arc<ReactorStats>,
    /// Global connection limits.
    pub limits: Arc<ConnLimits>,
    /// STARTTLS, when certificates are configured.
    pub tls: Option<Arc<super::tls::TlsAcceptor>>,
    /// The global stop state.
    pub stop: watch::Receiver<Stop>,
    /// Start-up report to the main thread.
    pub ready: mpsc::Sender<(usize, Result<(), ServerError>)>,
    /// The delivery stage's notifier, when routes are configured.
    pub delivery: Option<crate::relay::Notifier>,
    /// The abuse controls (shared by all reactors).
    pub abuse: Abuse,
}

/// The body of a reactor thread. Returns after a clean shutdown or a start-up failure (which
/// it has reported through `setup.ready`).
pub fn run(setup: ReactorSetup) -> Result<(), ServerError> {
    let index = setup.index;
    if let Some(cpu) = setup.cpu {
        match crate::sys::pin_current_thread(cpu) {
            Ok(()) => tracing::debug!("reactor {index} pinned to cpu {cpu}"),
            Err(e) => {
                tracing::warn!("reactor {index}: cannot pin to cpu {cpu}: {e}; running unpinned")
            }
        }
    }
    let rt = match new_runtime(index, setup.config.reactors()) {
        Ok(rt) => rt,
        Err(e) => {
            let err =
                ServerError::IoUring(super::probe::classify(e, super::probe::disabled_sysctl()));
            let _ = setup.ready.send((index, Err(err)));
            return Ok(());
        }
    };
    rt.block_on(reactor_main(setup))
}

/// Locked memory a ring of `entries` submission entries takes, over-estimated for sizing:
/// 64-byte SQEs, twice as many 16-byte CQEs, the SQ index array, and two pages of ring headers.
pub fn ring_locked_bytes(entries: u32) -> u64 {
    u64::from(entries) * (64 + 2 * 16 + 4) + 2 * 4096
}

/// The ring size to start with: [`RING_ENTRIES`], or, when `RLIMIT_MEMLOCK` (`memlock` bytes)
/// applies to us (`limited`: no `CAP_IPC_LOCK`), the largest power of two at least
/// [`MIN_RING_ENTRIES`] whose ring, once per reactor, fits in half of it. Several reactors start
/// at once and draw on the same per-user limit, so each sizes itself up front instead of
/// taking what it can and starving the others.
pub fn initial_ring_entries(memlock: u64, reactors: usize, limited: bool) -> u32 {
    if !limited || memlock == u64::MAX {
        return RING_ENTRIES;
    }
    let share = memlock / 2 * RING_MEMLOCK_SHARE_HALVES / (reactors.max(1) as u64);
    let mut entries = RING_ENTRIES;
    while entries > MIN_RING_ENTRIES && ring_locked_bytes(entries) > share {
        entries /= 2;
    }
    entries
}

/// Whether `RLIMIT_MEMLOCK` binds this process: false when it has `CAP_IPC_LOCK` in its
/// effective set (then the kernel does not charge locked memory to the limit).
fn memlock_applies() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_none_or(|caps| caps & (1 << CAP_IPC_LOCK) == 0)
}

/// A tokio-uring runtime with [`initial_ring_entries`] entries, or, while the kernel still
/// answers `ENOMEM`, with half as many, down to [`MIN_RING_ENTRIES`]; a smaller ring than
/// [`RING_ENTRIES`] is logged as a warning. Not `Builder::start`, which panics when the ring
/// cannot be created.
fn new_runtime(index: usize, reactors: usize) -> std::io::Result<tokio_uring::Runtime> {
    let memlock = crate::sys::memlock_limit();
    let mut entries = initial_ring_entries(memlock, reactors, memlock_applies());
    // Kernels before 6.0 refuse the setup flags with EINVAL: then the ring is made without them.
    let mut flags = true;
    loop {
        let mut builder = tokio_uring::builder();
        builder.entries(entries);
        if flags {
            let mut urb = tokio_uring::uring_builder();
            // COOP_TASKRUN: completions are run when this thread next enters the kernel instead
            // of interrupting it (an IPI and a context switch per completion otherwise);
            // SINGLE_ISSUER: only this thread submits (true: the reactor owns its ring), which
            // lets the kernel skip the submission lock.
            urb.setup_coop_taskrun()
                .setup_taskrun_flag()
                .setup_single_issuer();
            builder.uring_builder(&urb);
        }
        match tokio_uring::Runtime::new(&builder) {
            Ok(rt) => {
                if entries < RING_ENTRIES {
                    tracing::warn!(
                        "reactor {index}: RLIMIT_MEMLOCK ({memlock} bytes) is too small for an io_uring ring of {RING_ENTRIES} entries per reactor; running with {entries}: raise LimitMEMLOCK= for full speed"
                    );
                }
                return Ok(rt);
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && flags => {
                tracing::debug!(
                    "reactor {index}: io_uring setup flags refused ({e}); without them"
                );
                flags = false;
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOMEM) && entries > MIN_RING_ENTRIES => {
                entries /= 2;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn reactor_main(setup: ReactorSetup) -> Result<(), ServerError> {
    let ReactorSetup {
        index,
        config,
        session_config,
        listeners,
        stats,
        limits,
        mut stop,
        ready,
        tls,
        delivery,
        abuse,
        ..
    } = setup;
    #[allow(clippy::cast_possible_truncation)] // index < MAX_REACTORS (1023) by Config
    let spool_config = config.spool_config(index as u16);
    // Registered before any other I/O on this ring (tokio-uring waits for in-flight operations
    // to register); falls back to heap buffers with a warning if RLIMIT_MEMLOCK is too small.
    let pool = BufferPool::register(BufferConfig::from_rlimit(config.reactors()));
    let spool = match Spool::open(spool_config, pool.clone()).await {
        Ok(s) => s,
        Err(e) => {
            let err = ServerError::Spool(index, config.spool_dir().to_path_buf(), e);
            let _ = ready.send((index, Err(err)));
            return Ok(());
        }
    };
    // fdatasync and group-write durations go straight into this reactor's histograms.
    spool.set_timings(stats.clone());

    let (local_tx, local_rx) = watch::channel(Stop::Running);
    let r = Rc::new(Reactor {
        index,
        hostname: config.hostname().to_string(),
        session_config,
        spool,
        pool,
        stats,
        limits,
        stop: local_rx,
        tracker: Tracker::new(),
        idle_timeout: config.idle_timeout(),
        deadlines: Rc::new(Sweep::new()),
        tls,
        proxy_from: config.proxy_protocol_from().to_vec(),
        delivery,
        abuse,
    });
    // The ticker holds only the sweep, not the reactor; it ends with the runtime.
    tokio_uring::spawn(r.deadlines.clone().run());

    let mut fds = Vec::with_capacity(listeners.len());
    let mut loops = Vec::with_capacity(listeners.len());
    for l in listeners {
        fds.push(l.as_raw_fd());
        let local = l.local_addr().ok();
        let l = TcpListener::from_std(l);
        loops.push(tokio_uring::spawn(accept_loop(r.clone(), l, local)));
    }
    let _ = ready.send((index, Ok(())));

    // Serve until the global state leaves Running.
    while *stop.borrow_and_update() == Stop::Running {
        if stop.changed().await.is_err() {
            break;
        }
    }
    local_tx.send_replace(Stop::Draining);
    for fd in &fds {
        // SAFETY: `fd` belongs to a listener owned by one of `loops`, which are still running
        // (they only exit after this call wakes them), so the descriptor is open and ours.
        // shutdown(2) on a listening socket fails its pending accept and unhashes it from the
        // SO_REUSEPORT group, so no new connection is queued on it.
        unsafe { libc::shutdown(*fd, libc::SHUT_RDWR) };
    }
    for l in loops {
        let _ = l.await;
    }
    let live = r.tracker.live();
    if live > 0 {
        tracing::info!("reactor {index}: waiting for {live} connection(s)");
    }

    // Let messages in flight finish; a second signal or the grace period ends the wait.
    let hard = *stop.borrow() == Stop::Now
        || tokio::select! {
            () = r.tracker.idle() => false,
            () = tokio::time::sleep(GRACE_PERIOD) => true,
            () = wait_for(&mut stop, Stop::Now) => true,
        };
    if hard {
        local_tx.send_replace(Stop::Now);
        if tokio::time::timeout(HARD_STOP_WAIT, r.tracker.idle())
            .await
            .is_err()
        {
            tracing::warn!(
                "reactor {index}: {} connection(s) did not end in time",
                r.tracker.live()
            );
        }
    }

    let result = r.spool.close().await;
    r.stats.set_spool(r.spool.stats());
    match result {
        Ok(()) => {
            tracing::debug!("reactor {index}: spool closed");
            Ok(())
        }
        Err(e) => Err(ServerError::Spool(
            index,
            config.spool_dir().to_path_buf(),
            e,
        )),
    }
}

async fn wait_for(stop: &mut watch::Receiver<Stop>, state: Stop) {
    while *stop.borrow_and_update() < state {
        if stop.changed().await.is_err() {
            // The sender is gone: nothing will ever change; wait forever (other arms decide).
            std::future::pending::<()>().await;
        }
    }
}

/// Checks the connection limits for `client` and serves the connection or refuses it with 421.
/// `early`: bytes the client sent before the greeting (after a PROXY header).
pub fn admit(
    r: &Rc<Reactor>,
    stream: TcpStream,
    client: SocketAddr,
    early: Vec<u8>,
    track: TrackGuard,
) {
    let c = &r.stats.counters;
    if let Some(rates) = &r.abuse.rates {
        if !r.abuse.is_trusted(client.ip())
            && !rates.allow_kind(RateKind::Connect, client.ip(), std::time::Instant::now())
        {
            ReactorStats::inc(&c.refused_connect_rate);
            let why = Refusal::ConnectRate;
            tokio_uring::spawn(conn::refuse(r.clone(), stream, client, why, track));
            return;
        }
    }
    match r.limits.admit(client.ip()) {
        Ok(permit) => {
            ReactorStats::inc(&c.connections_active);
            let r2 = r.clone();
            tokio_uring::spawn(async move {
                conn::serve_from(r2.clone(), stream, client, early, permit, track).await;
                ReactorStats::dec(&r2.stats.counters.connections_active);
            });
        }
        Err(why) => {
            ReactorStats::inc(match why {
                Refusal::Total => &c.connections_refused_limit,
                Refusal::PerIp => &c.connections_refused_per_ip,
                // Not a ConnLimits refusal (counted above); kept apart for the match.
                Refusal::ConnectRate => &c.refused_connect_rate,
            });
            tokio_uring::spawn(conn::refuse(r.clone(), stream, client, why, track));
        }
    }
}

async fn accept_loop(r: Rc<Reactor>, listener: TcpListener, local: Option<SocketAddr>) {
    let c = &r.stats.counters;
    loop {
        let res = listener.accept().await;
        if *r.stop.borrow() != Stop::Running {
            // Whatever was accepted after the stop is closed unanswered (dropped).
            break;
        }
        match res {
            Ok((stream, peer)) => {
                ReactorStats::inc(&c.connections_accepted);
                let track = r.tracker.enter();
                if r.proxy_from.iter().any(|net| net.contains(&peer.ip())) {
                    // Admitted under the client's address once its PROXY header is read.
                    tokio_uring::spawn(super::proxy::accept(r.clone(), stream, peer, track));
                } else {
                    admit(&r, stream, peer, Vec::new(), track);
                }
            }
            Err(e) => match e.raw_os_error() {
                // The client gave up before we accepted: nothing to do.
                Some(libc::ECONNABORTED | libc::EPROTO | libc::EINTR) => {}
                _ => {
                    tracing::warn!(
                        "accept on {} failed: {e}",
                        local.map_or_else(|| "?".to_string(), |a| a.to_string())
                    );
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            },
        }
    }
    tracing::debug!("reactor {}: stopped accepting", r.index);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_size_follows_the_memlock_limit_only_when_it_applies() {
        assert_eq!(initial_ring_entries(u64::MAX, 8, true), RING_ENTRIES);
        assert_eq!(initial_ring_entries(64 * 1024, 2, false), RING_ENTRIES);
        assert_eq!(initial_ring_entries(8 << 20, 2, true), RING_ENTRIES);
        // The old 64 KiB default: two reactors' rings fit in half of it.
        let e = initial_ring_entries(64 * 1024, 2, true);
        assert!((MIN_RING_ENTRIES..RING_ENTRIES).contains(&e), "{e}");
        assert!(2 * ring_locked_bytes(e) <= 32 * 1024, "{e}");
        assert!(
            2 * ring_locked_bytes(e * 2) > 32 * 1024,
            "the largest that fits: {e}"
        );
        // Nothing fits: the floor, and the kernel has the last word.
        assert_eq!(initial_ring_entries(0, 4, true), MIN_RING_ENTRIES);
        assert_eq!(initial_ring_entries(64 * 1024, 0, true), 128);
    }
}
