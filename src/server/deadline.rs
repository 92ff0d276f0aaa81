//! Coarse per-reactor deadlines for connection reads and writes.
//!
//! Every connection read and write is bounded by a deadline (the session's
//! [`crate::smtp::Session::next_deadline`] for reads, the idle timeout for writes). Racing each
//! one against its own `tokio::time` timer costs a timer registration per I/O, and registering a
//! timer earlier than the time driver's next wake-up unparks the reactor: an eventfd `write` and
//! an extra `epoll_wait` turn, several times per message. SMTP deadlines are seconds to minutes
//! (RFC 5321 §4.5.3.2), so they are checked coarsely instead:
//!
//! - each connection holds one [`Deadline`] cell, registered once with its reactor's [`Sweep`];
//!   arming it before an operation ([`Deadline::within`]) writes two `Cell`s: no syscall, no
//!   timer, no clock read;
//! - one ticker task per reactor ([`Sweep::run`]) reads the clock every [`TICK`], marks every
//!   deadline that has passed as fired and wakes its task, which then returns "timed out" from
//!   the operation it was waiting on.
//!
//! A deadline never fires early (the sweep compares it with the current clock). It fires at
//! most one [`TICK`] plus one loop turn of the reactor late, because sweeps follow each other
//! [`TICK`] apart (`MissedTickBehavior::Delay`: later if the reactor is busy, never in a burst).
//! When a reactor has no connections its ticker sleeps until the next one registers, so an idle
//! server does not wake up ten times a second.
//!
//! This module does not decide what a deadline is, nor what happens on expiry: the connection
//! driver ([`super::conn`]) does, and it still owns the tokio-uring rule that an operation
//! abandoned on expiry is completed by shutting the socket down before the fd is dropped.
//! Nothing here is `Send`: a sweep and its deadlines live on one reactor thread.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;

/// How often each reactor checks its connections' deadlines, and so the most a deadline fires
/// late (plus one reactor loop turn). The shortest configurable timeout is one second.
pub const TICK: Duration = Duration::from_millis(100);

/// An operation's deadline passed before it completed (the operation was dropped, still in
/// flight if it was an io_uring operation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

/// One connection's deadline, shared between its task and its reactor's [`Sweep`].
#[derive(Default)]
pub struct Deadline {
    /// When the operation in progress times out; `None`: not armed.
    at: Cell<Option<Instant>>,
    /// Set by the sweep once `at` has passed; cleared by [`Deadline::arm`].
    fired: Cell<bool>,
    /// The task waiting in [`Deadline::expired`].
    waker: Cell<Option<Waker>>,
}

impl Deadline {
    /// Arms the deadline at `at` (`None`: no deadline) and clears an earlier expiry.
    pub fn arm(&self, at: Option<Instant>) {
        self.at.set(at);
        self.fired.set(false);
    }

    /// Disarms the deadline: the sweep ignores it until it is armed again.
    pub fn disarm(&self) {
        self.arm(None);
    }

    /// Whether the sweep found the armed deadline passed.
    pub fn has_fired(&self) -> bool {
        self.fired.get()
    }

    /// Resolves once the sweep has found the armed deadline passed (never, if it is not armed).
    /// Polling it only stores the task's waker.
    pub fn expired(&self) -> Expired<'_> {
        Expired(self)
    }

    /// Runs `op` bounded by `at` (`None`: unbounded): its output, or [`Elapsed`] if the sweep
    /// found `at` passed first, in which case `op` is dropped unfinished. Disarms afterwards.
    pub async fn within<F: Future>(
        &self,
        at: Option<Instant>,
        op: F,
    ) -> Result<F::Output, Elapsed> {
        self.arm(at);
        let res = tokio::select! {
            biased;
            out = op => Ok(out),
            () = self.expired() => Err(Elapsed),
        };
        self.disarm();
        res
    }

    /// Marks the deadline fired if it is armed and not after `now`, and wakes its task. Returns
    /// whether it fired now.
    fn fire_if_due(&self, now: Instant) -> bool {
        match self.at.get() {
            Some(at) if at <= now && !self.fired.get() => {
                self.fired.set(true);
                if let Some(w) = self.waker.take() {
                    // Waking a local task only queues it; nothing runs inside this call.
                    w.wake();
                }
                true
            }
            _ => false,
        }
    }
}

impl std::fmt::Debug for Deadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deadline")
            .field("at", &self.at.get())
            .field("fired", &self.fired.get())
            .finish_non_exhaustive()
    }
}

/// The future of [`Deadline::expired`].
pub struct Expired<'a>(&'a Deadline);

impl Future for Expired<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let d = self.0;
        if d.fired.get() {
            return Poll::Ready(());
        }
        let w = match d.waker.take() {
            Some(w) if w.will_wake(cx.waker()) => w,
            _ => cx.waker().clone(),
        };
        d.waker.set(Some(w));
        Poll::Pending
    }
}

/// One reactor's deadlines and their sweep.
#[derive(Default)]
pub struct Sweep {
    /// Every registered deadline; dropped ones are pruned by the next sweep.
    entries: RefCell<Vec<Weak<Deadline>>>,
    /// The ticker, while it sleeps for want of deadlines.
    idle_ticker: Cell<Option<Waker>>,
}

impl Sweep {
    /// An empty sweep.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new, disarmed deadline checked by this sweep until it is dropped.
    pub fn register(&self) -> Rc<Deadline> {
        let d = Rc::new(Deadline::default());
        self.entries.borrow_mut().push(Rc::downgrade(&d));
        if let Some(w) = self.idle_ticker.take() {
            w.wake();
        }
        d
    }

    /// Fires every armed deadline not after `now` and forgets dropped ones. Returns how many
    /// deadlines are still registered.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut entries = self.entries.borrow_mut();
        entries.retain(|w| match w.upgrade() {
            Some(d) => {
                d.fire_if_due(now);
                true
            }
            None => false,
        });
        entries.len()
    }

    /// How many deadlines are registered (dropped ones count until the next sweep).
    pub fn len(&self) -> usize {
        self.entries.borrow().len()
    }

    /// Whether no deadline is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ticker: sweeps every [`TICK`] while deadlines are registered, sleeps while none are.
    /// Runs until its task is dropped with the runtime.
    pub async fn run(self: Rc<Self>) {
        let mut ticks = tokio::time::interval(TICK);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if self.sweep(Instant::now()) == 0 {
                self.registered().await;
                ticks.reset();
            }
        }
    }

    /// Resolves once a deadline is registered.
    fn registered(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            if self.is_empty() {
                self.idle_ticker.set(Some(cx.waker().clone()));
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
    }
}

impl std::fmt::Debug for Sweep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sweep")
            .field("entries", &self.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count(AtomicUsize::new(0)));
        (c.clone(), Waker::from(c))
    }

    fn poll_expired(d: &Deadline, waker: &Waker) -> Poll<()> {
        let mut f = d.expired();
        Pin::new(&mut f).poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn fires_only_armed_deadlines_that_have_passed() {
        let s = Sweep::new();
        let t0 = Instant::now();
        let early = s.register();
        let late = s.register();
        let unarmed = s.register();
        early.arm(Some(t0 + Duration::from_secs(1)));
        late.arm(Some(t0 + Duration::from_secs(5)));

        assert_eq!(s.sweep(t0), 3);
        assert!(!early.has_fired() && !late.has_fired() && !unarmed.has_fired());

        // Exactly at the deadline counts as passed (as tokio's sleep_until does).
        s.sweep(t0 + Duration::from_secs(1));
        assert!(early.has_fired());
        assert!(!late.has_fired() && !unarmed.has_fired());

        s.sweep(t0 + Duration::from_secs(3600));
        assert!(late.has_fired());
        assert!(!unarmed.has_fired(), "an unarmed deadline never fires");
    }

    #[test]
    fn rearming_clears_an_expiry_and_disarming_stops_it() {
        let s = Sweep::new();
        let t0 = Instant::now();
        let d = s.register();
        d.arm(Some(t0));
        s.sweep(t0);
        assert!(d.has_fired());
        d.arm(Some(t0 + Duration::from_secs(2)));
        assert!(!d.has_fired(), "a new deadline starts unexpired");
        s.sweep(t0 + Duration::from_secs(1));
        assert!(!d.has_fired());
        d.disarm();
        s.sweep(t0 + Duration::from_secs(10));
        assert!(!d.has_fired(), "a disarmed deadline is ignored");
    }

    #[test]
    fn the_waiting_task_is_woken_once_and_then_sees_the_expiry() {
        let s = Sweep::new();
        let t0 = Instant::now();
        let d = s.register();
        let (count, waker) = counting();
        d.arm(Some(t0 + Duration::from_millis(500)));
        assert_eq!(poll_expired(&d, &waker), Poll::Pending);
        assert_eq!(poll_expired(&d, &waker), Poll::Pending, "a repoll is fine");

        s.sweep(t0);
        assert_eq!(count.0.load(Ordering::SeqCst), 0, "not due: no wake-up");
        s.sweep(t0 + Duration::from_millis(500));
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        s.sweep(t0 + Duration::from_secs(1));
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "fired once");
        assert_eq!(poll_expired(&d, &waker), Poll::Ready(()));
    }

    #[test]
    fn dropped_deadlines_are_pruned_by_the_next_sweep() {
        let s = Sweep::new();
        let a = s.register();
        let b = s.register();
        let c = s.register();
        assert_eq!(s.len(), 3);
        drop(b);
        assert_eq!(s.sweep(Instant::now()), 2);
        drop(a);
        drop(c);
        assert_eq!(s.sweep(Instant::now()), 0);
        assert!(s.is_empty());
    }

    #[test]
    fn registering_wakes_an_idle_ticker() {
        let s = Sweep::new();
        let (count, waker) = counting();
        let mut f = std::pin::pin!(s.registered());
        assert_eq!(
            f.as_mut().poll(&mut Context::from_waker(&waker)),
            Poll::Pending
        );
        let d = s.register();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(
            f.as_mut().poll(&mut Context::from_waker(&waker)),
            Poll::Ready(())
        );
        drop(d);
    }

    #[test]
    fn within_returns_the_output_or_elapsed() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let s = Rc::new(Sweep::new());
            let d = s.register();
            let now = Instant::now();
            assert_eq!(d.within(Some(now), async { 7 }).await, Ok(7));
            assert_eq!(d.within(None, async { 8 }).await, Ok(8));
            // A never-ending operation is cut once a sweep sees its deadline passed.
            let sweeper = {
                let s = s.clone();
                async move {
                    tokio::task::yield_now().await;
                    s.sweep(Instant::now());
                }
            };
            let (res, ()) =
                tokio::join!(d.within(Some(now), std::future::pending::<()>()), sweeper);
            assert_eq!(res, Err(Elapsed));
            assert!(!d.has_fired(), "disarmed after the operation");
        });
    }
}
