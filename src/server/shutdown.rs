//! Graceful shutdown: SIGTERM/SIGINT handling, the stop state every reactor watches, and a
//! per-reactor tracker of live connections to wait for.
//!
//! The first signal moves the state to [`Stop::Draining`]: reactors stop accepting, idle
//! sessions get `421 4.3.2`, messages in flight may finish for up to [`GRACE_PERIOD`]. A second
//! signal (or the end of the grace period, per reactor) moves to [`Stop::Now`]: remaining
//! sessions are cut and their unfinished messages aborted. This module does not close
//! listeners or sessions itself; the reactor and connection driver react to the state.

use std::cell::Cell;
use std::io;
use std::rc::Rc;
use std::thread::JoinHandle;
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};
use tokio::sync::{watch, Notify};

/// How long messages in flight may take to finish after SIGTERM before they are cut.
pub const GRACE_PERIOD: Duration = Duration::from_secs(10);
/// After the grace period, how long to wait for cut sessions to abort and close.
pub const HARD_STOP_WAIT: Duration = Duration::from_secs(5);

/// The server's run state, only ever moving forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stop {
    /// Serving.
    Running,
    /// Not accepting; finishing messages in flight; idle sessions are closed.
    Draining,
    /// Closing everything now.
    Now,
}

/// The signal-watching thread; dropping it stops the thread.
#[derive(Debug)]
pub struct SignalWatcher {
    handle: Handle,
    thread: Option<JoinHandle<()>>,
}

impl SignalWatcher {
    /// Installs SIGTERM/SIGINT handlers; each signal advances `stop` by one step.
    ///
    /// # Errors
    /// Installing the handlers or spawning the thread failed.
    pub fn start(stop: watch::Sender<Stop>) -> io::Result<Self> {
        let mut signals = Signals::new([SIGTERM, SIGINT])?;
        let handle = signals.handle();
        let thread = std::thread::Builder::new()
            .name("ringmx-signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    let name = if sig == SIGTERM { "SIGTERM" } else { "SIGINT" };
                    let next = advance(*stop.borrow());
                    match next {
                        Stop::Draining => {
                            tracing::info!(
                                "{name}: stopping: no new connections, messages in flight may finish within {}s",
                                GRACE_PERIOD.as_secs()
                            );
                            super::notify::stopping();
                        }
                        _ => tracing::info!("{name}: stopping now"),
                    }
                    stop.send_replace(next);
                }
            })?;
        Ok(Self {
            handle,
            thread: Some(thread),
        })
    }
}

impl Drop for SignalWatcher {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The state after one more stop request.
pub fn advance(s: Stop) -> Stop {
    match s {
        Stop::Running => Stop::Draining,
        Stop::Draining | Stop::Now => Stop::Now,
    }
}

/// Counts one reactor's live connection tasks so the reactor can wait for them to end.
#[derive(Debug, Default)]
pub struct Tracker {
    live: Cell<usize>,
    idle: Notify,
}

/// A live connection; dropping it tells the [`Tracker`].
#[derive(Debug)]
pub struct TrackGuard(Rc<Tracker>);

impl Tracker {
    /// A tracker with no connections.
    pub fn new() -> Rc<Self> {
        Rc::new(Self::default())
    }

    /// Registers a connection.
    pub fn enter(self: &Rc<Self>) -> TrackGuard {
        self.live.set(self.live.get() + 1);
        TrackGuard(self.clone())
    }

    /// Connections not yet finished.
    pub fn live(&self) -> usize {
        self.live.get()
    }

    /// Resolves once no connection is live.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.live.get() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for TrackGuard {
    fn drop(&mut self) {
        let n = self.0.live.get().saturating_sub(1);
        self.0.live.set(n);
        if n == 0 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_only_moves_forward() {
        assert_eq!(advance(Stop::Running), Stop::Draining);
        assert_eq!(advance(Stop::Draining), Stop::Now);
        assert_eq!(advance(Stop::Now), Stop::Now);
        assert!(Stop::Running < Stop::Draining && Stop::Draining < Stop::Now);
    }

    #[test]
    fn tracker_waits_for_all_guards() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let t = Tracker::new();
            t.idle().await; // nothing live: immediate
            let a = t.enter();
            let b = t.enter();
            assert_eq!(t.live(), 2);
            let t2 = t.clone();
            let waiter = tokio::task::spawn_local(async move { t2.idle().await });
            tokio::task::yield_now().await;
            drop(a);
            tokio::task::yield_now().await;
            assert!(!waiter.is_finished());
            drop(b);
            tokio::time::timeout(Duration::from_secs(1), waiter)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(t.live(), 0);
        });
    }
}
