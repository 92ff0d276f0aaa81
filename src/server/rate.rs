//! Per-client rate limits shared by all reactors: `--max-connect-rate`, `--max-message-rate`
//! and `--max-recipient-rate`, each per minute and per client (an IPv4 address, an IPv6 /64;
//! see [`super::limit::client_key`]).
//!
//! `SO_REUSEPORT` spreads one client's connections over every reactor, so the counts must be
//! shared; they are kept without a lock. Each limit has a fixed table of [`RATE_SLOTS`]
//! `AtomicU64` slots, indexed by a keyed hash of the client's key (the key is random per
//! process, so a client cannot aim at another's slot). A slot packs the current one-minute
//! window's number and the counts of that window and the one before; the rate is estimated as a
//! sliding minute, `previous × (share of the previous window still inside the last 60 s) +
//! current` (the approximation nginx and Cloudflare use), and a check is one load and one
//! compare-and-swap.
//!
//! Two clients whose keys hash to the same slot share one count: the limit is then stricter
//! for both of them (never looser for anyone). With [`RATE_SLOTS`] = 65,536 slots, a client
//! among 1,000 others active in the same two minutes shares its slot with probability about
//! 1.5 %. Attempts over the limit are not counted (a client that keeps trying is let in
//! again as soon as its rate falls under the limit).
//!
//! This module does not write replies or decide who is trusted: the accept path
//! (`421 4.7.0`) and the session (`450 4.7.1`, through [`RateCheck`]) do.

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::limit::client_key;
use crate::smtp::{Rate, RateCheck};

/// Slots per limit (a power of two): 512 KiB of atomics per limit that is on.
pub const RATE_SLOTS: usize = 1 << 16;
/// Highest accepted limit, per minute: counts are 20-bit fields of a slot.
pub const MAX_RATE: u32 = 1_000_000;
/// Length of one window, in milliseconds.
const WINDOW_MS: u64 = 60_000;
/// Bits of each count in a slot.
const COUNT_BITS: u32 = 20;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
/// Bits of the window number in a slot (the rest of 64): minutes wrap after 31 years.
const WINDOW_MASK: u64 = (1 << (64 - 2 * COUNT_BITS)) - 1;

/// What a rate limit is counted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateKind {
    /// New connections (`--max-connect-rate`).
    Connect,
    /// MAIL commands (`--max-message-rate`).
    Message,
    /// RCPT commands (`--max-recipient-rate`).
    Recipient,
}

/// One limit: the number allowed per minute and its slots.
#[derive(Debug)]
struct Limit {
    per_minute: u64,
    slots: Box<[AtomicU64]>,
}

/// The rate limits that are on.
#[derive(Debug)]
pub struct RateLimits {
    connect: Option<Limit>,
    message: Option<Limit>,
    recipient: Option<Limit>,
    /// Keys the slot hash (random per process).
    hasher: RandomState,
    /// Windows are counted from here.
    epoch: Instant,
}

impl RateLimits {
    /// Limits per minute (0: off); `None` when all are off. Values above [`MAX_RATE`] are
    /// taken as [`MAX_RATE`] (the configuration refuses them before).
    pub fn new(connect: u32, message: u32, recipient: u32, epoch: Instant) -> Option<Arc<Self>> {
        let limit = |n: u32| {
            (n > 0).then(|| Limit {
                per_minute: u64::from(n.min(MAX_RATE)),
                slots: (0..RATE_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            })
        };
        let l = Self {
            connect: limit(connect),
            message: limit(message),
            recipient: limit(recipient),
            hasher: RandomState::new(),
            epoch,
        };
        (l.connect.is_some() || l.message.is_some() || l.recipient.is_some()).then(|| Arc::new(l))
    }

    /// Whether the message or the recipient limit is on (the sessions need a [`RateCheck`]).
    pub fn limits_commands(&self) -> bool {
        self.message.is_some() || self.recipient.is_some()
    }

    /// Counts one `kind` from `client` at `now`; `false` when it is over the limit (and then
    /// not counted). Always `true` for a limit that is off.
    pub fn allow_kind(&self, kind: RateKind, client: IpAddr, now: Instant) -> bool {
        let limit = match kind {
            RateKind::Connect => &self.connect,
            RateKind::Message => &self.message,
            RateKind::Recipient => &self.recipient,
        };
        let Some(limit) = limit else {
            return true;
        };
        #[allow(clippy::cast_possible_truncation)] // masked to the table size
        let slot =
            &limit.slots[(self.hasher.hash_one(client_key(client)) as usize) & (RATE_SLOTS - 1)];
        let ms = u64::try_from(now.saturating_duration_since(self.epoch).as_millis())
            .unwrap_or(u64::MAX);
        let window = (ms / WINDOW_MS) & WINDOW_MASK;
        let into = ms % WINDOW_MS;
        let mut state = slot.load(Ordering::Relaxed);
        loop {
            let (w, prev, cur) = unpack(state);
            let (prev, cur) = if w == window {
                (prev, cur)
            } else if w == (window.wrapping_sub(1) & WINDOW_MASK) {
                (cur, 0)
            } else {
                (0, 0)
            };
            // prev × (WINDOW_MS - into) / WINDOW_MS + cur, in integers, rounded down.
            let estimate = prev * (WINDOW_MS - into) / WINDOW_MS + cur;
            if estimate >= limit.per_minute {
                return false;
            }
            let next = pack(window, prev, (cur + 1).min(COUNT_MASK));
            match slot.compare_exchange_weak(state, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(actual) => state = actual,
            }
        }
    }
}

impl RateCheck for RateLimits {
    fn allow(&self, what: Rate, client: IpAddr, now: Instant) -> bool {
        self.allow_kind(
            match what {
                Rate::Message => RateKind::Message,
                Rate::Recipient => RateKind::Recipient,
            },
            client,
            now,
        )
    }
}

fn pack(window: u64, prev: u64, cur: u64) -> u64 {
    (window << (2 * COUNT_BITS)) | ((prev & COUNT_MASK) << COUNT_BITS) | (cur & COUNT_MASK)
}

fn unpack(s: u64) -> (u64, u64, u64) {
    (
        s >> (2 * COUNT_BITS),
        (s >> COUNT_BITS) & COUNT_MASK,
        s & COUNT_MASK,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_client_is_cut_at_its_rate_and_others_are_not() {
        let t0 = Instant::now();
        let l = RateLimits::new(5, 0, 0, t0).unwrap();
        let a = ip("192.0.2.1");
        for _ in 0..5 {
            assert!(l.allow_kind(RateKind::Connect, a, t0));
        }
        assert!(!l.allow_kind(RateKind::Connect, a, t0));
        assert!(!l.allow_kind(RateKind::Connect, a, t0 + Duration::from_secs(59)));
        // Another client, and limits that are off.
        assert!(l.allow_kind(RateKind::Connect, ip("192.0.2.2"), t0));
        assert!(l.allow_kind(RateKind::Message, a, t0));
        assert!(!l.limits_commands());
        assert!(RateLimits::new(0, 0, 0, t0).is_none());
    }

    #[test]
    fn the_window_slides() {
        let t0 = Instant::now();
        let l = RateLimits::new(0, 10, 0, t0).unwrap();
        let a = ip("198.51.100.7");
        for _ in 0..10 {
            assert!(l.allow(Rate::Message, a, t0));
        }
        // Half-way into the next window half of the previous one still counts: 5 more.
        let mid = t0 + Duration::from_secs(90);
        for _ in 0..5 {
            assert!(l.allow(Rate::Message, a, mid));
        }
        assert!(!l.allow(Rate::Message, a, mid));
        // Two windows later everything has expired.
        let later = t0 + Duration::from_secs(180);
        for _ in 0..10 {
            assert!(l.allow(Rate::Message, a, later));
        }
        assert!(!l.allow(Rate::Message, a, later));
    }

    #[test]
    fn ipv6_clients_are_counted_by_64_and_mapped_ipv4_as_ipv4() {
        let t0 = Instant::now();
        let l = RateLimits::new(0, 0, 2, t0).unwrap();
        assert!(l.allow(Rate::Recipient, ip("2001:db8:1:2::1"), t0));
        assert!(l.allow(Rate::Recipient, ip("2001:db8:1:2:ffff::9"), t0));
        assert!(!l.allow(Rate::Recipient, ip("2001:db8:1:2::3"), t0));
        assert!(l.allow(Rate::Recipient, ip("2001:db8:1:3::1"), t0));
        assert!(l.allow(Rate::Recipient, ip("192.0.2.9"), t0));
        assert!(l.allow(Rate::Recipient, ip("::ffff:192.0.2.9"), t0));
        assert!(!l.allow(Rate::Recipient, ip("192.0.2.9"), t0));
    }

    #[test]
    fn threads_together_never_pass_the_limit() {
        let t0 = Instant::now();
        let l = RateLimits::new(1000, 0, 0, t0).unwrap();
        let a = ip("203.0.113.5");
        let allowed: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        (0..600)
                            .filter(|_| l.allow_kind(RateKind::Connect, a, t0))
                            .count()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(allowed, 1000);
    }

    #[test]
    fn slots_pack_and_unpack() {
        let s = pack(WINDOW_MASK, COUNT_MASK, 7);
        assert_eq!(unpack(s), (WINDOW_MASK, COUNT_MASK, 7));
    }
}
