//! The io_uring driver: `ringmx serve`.
//!
//! [`run`] checks that io_uring works ([`probe`]), binds every listening socket ([`listener`]),
//! starts one pinned reactor thread per core ([`reactor`]), each with its own tokio-uring
//! runtime, spool writer, buffer pool and statistics, then the stats socket, and tells systemd it
//! is ready ([`notify`]). SIGTERM/SIGINT ([`shutdown`]) drain the reactors; `run` returns once
//! every reactor has synced and closed its spool. STARTTLS certificates, their SIGHUP reload
//! and the rustls wrapper the driver uses live in [`tls`]. Connections are driven by [`conn`],
//! their read and write deadlines checked by a coarse per-reactor sweep ([`deadline`]); limits
//! shared by the reactors live in [`limit`]. The DNS resolver thread ([`crate::dns`]) starts
//! before the reactors when an `mx` route or a DNSBL zone ([`dnsbl`]) needs it.
//!
//! Nothing here parses SMTP or writes spool frames: that is [`crate::smtp`] and
//! [`crate::spool`].

pub mod conn;
pub mod deadline;
pub mod dnsbl;
pub mod limit;
pub mod listener;
pub mod notify;
pub mod probe;
pub mod proxy;
pub mod rate;
pub mod reactor;
pub mod recipients;
pub mod shutdown;
pub mod tls;

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use tokio::sync::watch;

use crate::config::Config;
use crate::spool::{SpoolError, SyncPolicy};
use crate::stats::socket::{StatsError, StatsServer};
use crate::stats::Registry;
use limit::ConnLimits;
use listener::BindError;
use probe::ProbeError;
use shutdown::{SignalWatcher, Stop};

/// Why the server could not start or did not stop cleanly. `Display` is one line.
#[derive(Debug)]
#[non_exhaustive]
pub enum ServerError {
    /// io_uring is unusable here.
    IoUring(ProbeError),
    /// A listening socket could not be bound.
    Bind(BindError),
    /// A reactor's spool (reactor number, spool directory) failed to open or close.
    Spool(usize, PathBuf, SpoolError),
    /// The stats socket could not be set up.
    Stats(StatsError),
    /// Signal handlers or threads could not be set up.
    Setup(&'static str, io::Error),
    /// A reactor thread panicked.
    ReactorPanicked(usize),
    /// The TLS certificates could not be loaded.
    Tls(tls::TlsLoadError),
    /// The recipient table could not be loaded.
    Recipients(recipients::RecipientsError),
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::IoUring(e) => e.fmt(f),
            Self::Bind(e) => e.fmt(f),
            Self::Spool(i, dir, SpoolError::NoSpace) => {
                write!(
                    f,
                    "spool {} (reactor {i}): no space left on device",
                    dir.display()
                )
            }
            Self::Spool(i, dir, e) => {
                let hint = match e.io_kind() {
                    Some(io::ErrorKind::PermissionDenied) => {
                        " (the user running ringmx must be able to create and write files there; check the owner and mode of the directory, or choose another with --spool)"
                    }
                    Some(io::ErrorKind::ReadOnlyFilesystem) => " (choose a writable --spool)",
                    _ => "",
                };
                write!(
                    f,
                    "spool {} (reactor {i}): {}{hint}",
                    dir.display(),
                    e.reason()
                )
            }
            Self::Stats(e) => e.fmt(f),
            Self::Setup(what, e) => write!(f, "cannot set up {what}: {e}"),
            Self::ReactorPanicked(i) => write!(f, "reactor {i} crashed (see the log above)"),
            Self::Tls(e) => e.fmt(f),
            Self::Recipients(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ServerError {}

/// Sets up logging to stderr, one line per event, level from `RUST_LOG` (default `info`).
///
/// Lines are formatted on the thread that logs them but written by a background thread
/// (`tracing-appender`), so a reactor never makes a blocking `write(2)` to stderr per message.
/// The queue is not lossy: if stderr cannot keep up for 128k lines, loggers wait rather than
/// drop audit lines. Keep the returned guard alive until exit: dropping it flushes the queue.
///
/// The writer thread writes whatever lines are queued with one `write(2)`, then pauses for
/// [`LOG_BATCH_PAUSE`] (`BatchedStderr`): under load, lines reach stderr in batches at most
/// that much later, and the thread wakes a few hundred times a second instead of once per line.
#[must_use = "dropping the guard stops and flushes the log writer"]
pub fn init_logging() -> tracing_appender::non_blocking::WorkerGuard {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("ringmx-log")
        .finish(BatchedStderr::default());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(io::stderr().is_terminal())
        .with_target(false)
        .try_init();
    guard
}

/// How long the log writer thread pauses after writing a batch of lines: lines logged
/// meanwhile wait in the queue (no wakeup per line) and go out together in the next write.
pub const LOG_BATCH_PAUSE: Duration = Duration::from_millis(2);

/// A batch of lines is written out early once it holds this many bytes.
const LOG_BATCH_MAX: usize = 64 * 1024;

/// Stderr for the log writer thread: lines are collected in a buffer and written with one
/// `write(2)` when the thread has drained its queue (`flush`), after which the thread pauses
/// for [`LOG_BATCH_PAUSE`]. A line is never split across writes.
#[derive(Default)]
struct BatchedStderr {
    buf: Vec<u8>,
}

impl BatchedStderr {
    fn write_out(&mut self) -> io::Result<()> {
        let r = io::Write::write_all(&mut io::stderr().lock(), &self.buf);
        self.buf.clear();
        r
    }
}

impl io::Write for BatchedStderr {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(line);
        if self.buf.len() >= LOG_BATCH_MAX {
            self.write_out()?;
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let r = self.write_out();
        std::thread::sleep(LOG_BATCH_PAUSE);
        r
    }
}

impl Drop for BatchedStderr {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            let _ = self.write_out();
        }
    }
}

/// Runs the server until SIGTERM/SIGINT, then drains and returns.
///
/// # Errors
/// [`ServerError`] for anything that stops start-up, or a spool that failed to close.
pub fn run(config: Config) -> Result<(), ServerError> {
    let config = Arc::new(config);
    probe::probe().map_err(ServerError::IoUring)?;
    raise_nofile_limit(config.max_connections());
    let tls = tls::TlsAcceptor::from_config(&config).map_err(ServerError::Tls)?;

    let n = config.reactors();
    // One resolver (its own thread) for the MX routes and the DNSBL checks, when either is used.
    let needs_dns = config.delivery_config().is_some_and(|d| d.needs_resolver())
        || !config.abuse().dnsbl.is_empty();
    let resolver = if needs_dns {
        let r = crate::dns::Resolver::start(config.dns_servers())
            .map_err(|e| ServerError::Setup("the DNS resolver", e))?;
        tracing::info!("dns: resolver started (servers: {})", r.servers());
        Some(r)
    } else {
        None
    };
    // Before binding: a client must not wait in the backlog while a large table loads.
    let mut abuse = abuse_controls(&config, resolver.as_ref())?;
    let (listeners, bound) = listener::bind_all(config.listen(), n).map_err(ServerError::Bind)?;
    // Recipient verification (only when a route verifies): its thread must run before the
    // first RCPT can ask it.
    let verifier = match config.verify_config() {
        Some(vc) => {
            let verifying = vc.verifying_routes();
            tracing::info!(
                "recipient verification on routes {}: timeout {}s, cache accepted {}s refused {}s",
                verifying.join(","),
                vc.timeout.as_secs(),
                vc.cache_accept.as_secs(),
                vc.cache_refuse.as_secs()
            );
            let (v, handle) = crate::relay::verify::spawn(vc)
                .map_err(|e| ServerError::Setup("the recipient verifier", e))?;
            abuse.verify = Some(v);
            Some(handle)
        }
        None => None,
    };
    let mut registry = Registry::new(n, config.sync());
    // Delivery (only with routes): read the spool and the journal before the reactors recover
    // their segments; the stage's thread starts once they are ready.
    let delivery = match config.delivery_config() {
        Some(dc) => {
            if !dc.routes.has_default() {
                tracing::warn!(
                    "routes without \"*\": bounces (DSNs) to senders outside the routed domains have no route and are dropped after max-queue-lifetime; add \"*\" = \"mx\" to [routes]"
                );
            }
            let stats = registry.enable_delivery();
            let (notifier, prepared) = crate::relay::stage::prepare(dc)
                .map_err(|e| ServerError::Setup("the delivery queue", e))?;
            Some((notifier, prepared, stats))
        }
        None => None,
    };
    let registry = Arc::new(registry);
    let limits = ConnLimits::new(config.max_connections(), config.max_connections_per_ip());
    let session_config = config.session_config();
    let (stop_tx, stop_rx) = watch::channel(Stop::Running);
    let signals = SignalWatcher::start(stop_tx.clone())
        .map_err(|e| ServerError::Setup("signal handlers", e))?;
    let reload = tls::ReloadWatcher::start(tls.clone(), abuse.recipients.clone())
        .map_err(|e| ServerError::Setup("the SIGHUP handler", e))?;

    let cpus = crate::sys::allowed_cpus();
    let pin = n <= cpus.len();
    if !pin {
        tracing::info!(
            "{n} reactors on {} allowed CPUs: reactor threads are not pinned",
            cpus.len()
        );
    }
    let (ready_tx, ready_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let mut threads = Vec::with_capacity(n);
    for (index, listeners) in listeners.into_iter().enumerate() {
        let setup = reactor::ReactorSetup {
            index,
            cpu: pin.then(|| cpus[index]),
            config: config.clone(),
            session_config: session_config.clone(),
            listeners,
            stats: registry
                .reactor(index)
                .ok_or(ServerError::ReactorPanicked(index))?,
            limits: limits.clone(),
            tls: tls.clone(),
            stop: stop_rx.clone(),
            ready: ready_tx.clone(),
            delivery: delivery.as_ref().map(|d| d.0.clone()),
            abuse: abuse.clone(),
        };
        let done = DoneGuard {
            index,
            tx: done_tx.clone(),
            sent: false,
        };
        let t = std::thread::Builder::new()
            .name(format!("ringmx-r{index}"))
            .spawn(move || {
                let mut done = done;
                let res = reactor::run(setup);
                done.send(res);
            })
            .map_err(|e| ServerError::Setup("reactor threads", e));
        match t {
            Ok(t) => threads.push(t),
            Err(e) => {
                stop_tx.send_replace(Stop::Now);
                drop(ready_tx);
                return Err(e);
            }
        }
    }
    drop(ready_tx);
    drop(done_tx);

    // Wait until every reactor has opened its spool and started accepting.
    let mut first_error = None;
    for _ in 0..n {
        match ready_rx.recv() {
            Ok((_, Ok(()))) => {}
            Ok((_, Err(e))) => {
                first_error.get_or_insert(e);
            }
            // A reactor died before reporting (panic); its DoneGuard tells the rest.
            Err(_) => break,
        }
    }
    let stats_server = if first_error.is_none() {
        match StatsServer::start(config.stats_path(), registry.clone()) {
            Ok(s) => Some(s),
            Err(e) => {
                first_error = Some(ServerError::Stats(e));
                None
            }
        }
    } else {
        None
    };
    let mut stage = None;
    if first_error.is_none() {
        if let Some((_, prepared, stats)) = delivery {
            match crate::relay::stage::spawn(prepared, stats, resolver.clone()) {
                Ok(h) => stage = Some(h),
                Err(e) => first_error = Some(ServerError::Setup("the delivery thread", e)),
            }
        }
    }
    if first_error.is_some() {
        stop_tx.send_replace(Stop::Now);
    } else {
        if !config.hostname().contains('.') {
            tracing::warn!(
                "hostname {:?} is not fully qualified: the greeting, EHLO reply and Received: header should name this host's FQDN (RFC 5321 §4.1.3, §4.3.1); set --hostname",
                config.hostname()
            );
        }
        if config.bare_lf() == crate::smtp::BareLf::Normalize {
            tracing::info!(
                "--bare-lf normalize: bare LF in commands and bodies is read as CRLF (bare CR is still refused)"
            );
        }
        if config.sync() == SyncPolicy::None {
            tracing::warn!(
                "--sync none: messages are acknowledged WITHOUT fsync; a crash or power cut loses accepted mail (testing only)"
            );
        }
        if tls.is_some() {
            tracing::info!(
                "STARTTLS offered: {} certificate(s), min version {}, handshake timeout {}s",
                config.tls().len(),
                config.tls_min_version().name(),
                config.tls_handshake_timeout().as_secs()
            );
        }
        for a in &bound {
            tracing::info!("listening on {a}");
        }
        tracing::info!(
            "ready: {n} reactor(s), sync={}, spool={}, stats={}",
            config.sync().name(),
            config.spool_dir().display(),
            config.stats_path().display()
        );
        notify::ready();
    }

    // Wait for every reactor to finish; one ending on its own stops the others.
    for _ in 0..n {
        let Ok((index, res)) = done_rx.recv() else {
            break;
        };
        if *stop_tx.borrow() == Stop::Running {
            tracing::error!("reactor {index} stopped unexpectedly; shutting down");
            notify::stopping();
            stop_tx.send_replace(Stop::Draining);
        }
        if let Err(e) = res {
            tracing::error!("{e}");
            first_error.get_or_insert(e);
        }
    }
    for t in threads {
        let _ = t.join();
    }
    if let Some(stage) = stage {
        stage.stop();
    }
    if let Some(verifier) = verifier {
        verifier.stop();
    }
    drop(stats_server);
    drop(signals);
    drop(reload);
    match first_error {
        Some(e) => Err(e),
        None => {
            tracing::info!("stopped");
            Ok(())
        }
    }
}

/// Loads the recipient table (logging its size and load time, and warning about local domains
/// it does not mention) and sets up the rate limits.
fn abuse_controls(
    config: &Config,
    resolver: Option<&crate::dns::Resolver>,
) -> Result<reactor::Abuse, ServerError> {
    let a = config.abuse();
    let recipients = match &a.recipients {
        None => None,
        Some(path) => {
            let (r, loaded) =
                recipients::Recipients::load(path).map_err(ServerError::Recipients)?;
            tracing::info!("recipient table {}: {loaded}", path.display());
            let table = r.current();
            for d in config.domains() {
                if !table.mentions_domain(d) {
                    tracing::warn!(
                        "recipient table {} has no entry for domain {d}: every recipient there gets 550 5.1.1 (add @{d} to accept them all)",
                        path.display()
                    );
                }
            }
            Some(r)
        }
    };
    let rates = rate::RateLimits::new(
        a.max_connect_rate,
        a.max_message_rate,
        a.max_recipient_rate,
        std::time::Instant::now(),
    );
    if rates.is_some() {
        tracing::info!(
            "rate limits per client and minute: connect {} message {} recipient {} (0: off); trusted networks: {}",
            a.max_connect_rate,
            a.max_message_rate,
            a.max_recipient_rate,
            a.trusted_networks.len()
        );
    }
    let dnsbl = match resolver {
        Some(r) if !a.dnsbl.is_empty() => {
            let zones: Vec<dnsbl::Zone> = a
                .dnsbl
                .iter()
                .map(|(name, weight)| dnsbl::Zone {
                    name: name.clone(),
                    weight: *weight,
                })
                .collect();
            tracing::info!(
                "dnsbl: {} at threshold {} (not for trusted networks)",
                zones
                    .iter()
                    .map(|z| format!("{}*{}", z.name, z.weight))
                    .collect::<Vec<_>>()
                    .join(","),
                a.dnsbl_threshold
            );
            Some(Arc::new(dnsbl::Dnsbl::new(
                zones,
                a.dnsbl_threshold,
                r.clone(),
            )))
        }
        _ => None,
    };
    Ok(reactor::Abuse {
        dnsbl,
        recipients,
        rates,
        trusted: a.trusted_networks.clone(),
        greet_pause: a.greet_pause,
        verify: None,
    })
}

/// Reports a reactor thread's end to the main thread, also when it unwinds from a panic.
struct DoneGuard {
    index: usize,
    tx: mpsc::Sender<(usize, Result<(), ServerError>)>,
    sent: bool,
}

impl DoneGuard {
    fn send(&mut self, res: Result<(), ServerError>) {
        self.sent = true;
        let _ = self.tx.send((self.index, res));
    }
}

impl Drop for DoneGuard {
    fn drop(&mut self) {
        if !self.sent {
            let _ = self
                .tx
                .send((self.index, Err(ServerError::ReactorPanicked(self.index))));
        }
    }
}

/// File descriptors needed beyond client connections (listeners, spool files, stats, rings).
const FD_RESERVE: u64 = 256;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, and warns if `--max-connections` would
/// still not fit.
fn raise_nofile_limit(max_connections: usize) {
    let Some(allowed) = crate::sys::raise_nofile_limit() else {
        return;
    };
    if (max_connections as u64).saturating_add(FD_RESERVE) > allowed {
        tracing::warn!(
            "max-connections = {max_connections} but only {allowed} file descriptors are allowed (RLIMIT_NOFILE); raise LimitNOFILE="
        );
    }
}
