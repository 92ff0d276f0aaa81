//! Message ids: 64 bits (milliseconds since the Unix epoch, reactor, counter), printed as 13
//! characters of Crockford base32, so ids sort by time as numbers and as text. Pure: the caller
//! supplies the clock reading.
//!
//! Layout, most significant first: 44 bits of milliseconds (good until the year 2527), 10 bits
//! of reactor index, 10 bits of counter within the millisecond. A reactor that issues more than
//! 1024 ids in one millisecond borrows the next millisecond, so ids stay unique and increasing;
//! after a restart the generator continues above the newest id found on disk, so a clock that
//! went backwards cannot repeat an id.

use std::fmt;
use std::str::FromStr;

/// Bits of the reactor field.
pub const REACTOR_BITS: u32 = 10;
/// Bits of the counter field.
pub const COUNTER_BITS: u32 = 10;
/// The largest reactor index an id can carry.
pub const MAX_REACTOR: u16 = (1 << REACTOR_BITS) - 1;
/// Characters in a printed id.
pub const ID_LEN: usize = 13;

const COUNTER_MAX: u64 = (1 << COUNTER_BITS) - 1;
const TIME_SHIFT: u32 = REACTOR_BITS + COUNTER_BITS;
/// Crockford's base32 alphabet: no I, L, O, U; sorts like the numbers it encodes.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A message id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MessageId(pub u64);

impl MessageId {
    /// Builds an id from its fields (each truncated to its width).
    pub fn new(time_ms: u64, reactor: u16, counter: u64) -> Self {
        Self(
            (time_ms << TIME_SHIFT)
                | ((u64::from(reactor) & u64::from(MAX_REACTOR)) << COUNTER_BITS)
                | (counter & COUNTER_MAX),
        )
    }

    /// Milliseconds since the Unix epoch.
    pub fn time_ms(self) -> u64 {
        self.0 >> TIME_SHIFT
    }

    /// The reactor that issued it.
    pub fn reactor(self) -> u16 {
        ((self.0 >> COUNTER_BITS) & u64::from(MAX_REACTOR)) as u16
    }

    /// The printed form.
    pub fn encode(self) -> [u8; ID_LEN] {
        let mut out = [0u8; ID_LEN];
        let mut v = self.0;
        for slot in out.iter_mut().rev() {
            *slot = ALPHABET[(v & 31) as usize];
            v >>= 5;
        }
        out
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.encode();
        // The alphabet is ASCII, so this cannot fail; fall back to hex rather than panic.
        match std::str::from_utf8(&e) {
            Ok(s) => f.write_str(s),
            Err(_) => write!(f, "{:016x}", self.0),
        }
    }
}

/// A string that is not a message id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadId;

impl fmt::Display for BadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "not a message id (expected {ID_LEN} characters of Crockford base32)"
        )
    }
}

impl std::error::Error for BadId {}

impl FromStr for MessageId {
    type Err = BadId;
    /// Parses a printed id (case-insensitive; `O` reads as 0, `I` and `L` as 1).
    fn from_str(s: &str) -> Result<Self, BadId> {
        if s.len() != ID_LEN {
            return Err(BadId);
        }
        let mut v: u64 = 0;
        for (i, c) in s.bytes().enumerate() {
            let d = match c.to_ascii_uppercase() {
                b'O' => 0,
                b'I' | b'L' => 1,
                u => ALPHABET.iter().position(|&a| a == u).ok_or(BadId)? as u64,
            };
            // The first character carries only 4 bits (13 * 5 = 65).
            if i == 0 && d > 15 {
                return Err(BadId);
            }
            v = (v << 5) | d;
        }
        Ok(Self(v))
    }
}

/// Issues increasing ids for one reactor.
#[derive(Debug, Clone)]
pub struct IdGen {
    reactor: u16,
    last: MessageId,
}

impl IdGen {
    /// A generator whose ids are all greater than `floor`.
    pub fn new(reactor: u16, floor: MessageId) -> Self {
        Self {
            reactor,
            last: floor,
        }
    }

    /// The next id at wall-clock time `now_ms`.
    pub fn next(&mut self, now_ms: u64) -> MessageId {
        let last_ms = self.last.time_ms();
        let id = if now_ms > last_ms {
            MessageId::new(now_ms, self.reactor, 0)
        } else {
            // Same (or earlier) millisecond: count up, carrying into the next millisecond.
            let counter = if self.last.reactor() == self.reactor {
                (self.last.0 & COUNTER_MAX) + 1
            } else {
                0
            };
            if counter > COUNTER_MAX || self.last.reactor() > self.reactor {
                MessageId::new(last_ms + 1, self.reactor, 0)
            } else if self.last.reactor() < self.reactor {
                MessageId::new(last_ms, self.reactor, 0)
            } else {
                MessageId::new(last_ms, self.reactor, counter)
            }
        };
        debug_assert!(id > self.last);
        self.last = id;
        id
    }

    /// The newest id issued (or the floor).
    pub fn last(&self) -> MessageId {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fields_round_trip() {
        let id = MessageId::new(1_732_600_000_000, 7, 5);
        assert_eq!(id.time_ms(), 1_732_600_000_000);
        assert_eq!(id.reactor(), 7);
        let text = id.to_string();
        assert_eq!(text.len(), ID_LEN);
        assert_eq!(text.parse::<MessageId>().unwrap(), id);
        assert_eq!(text.to_lowercase().parse::<MessageId>().unwrap(), id);
    }

    #[test]
    fn bad_ids_are_refused() {
        assert!("".parse::<MessageId>().is_err());
        assert!("0123456789ABU".parse::<MessageId>().is_err());
        assert!("G000000000000".parse::<MessageId>().is_err(), "65th bit");
        assert!("0123456789ABCD".parse::<MessageId>().is_err());
    }

    #[test]
    fn generator_increases_within_a_millisecond_and_carries() {
        let mut g = IdGen::new(3, MessageId::default());
        let mut prev = g.next(1000);
        for _ in 0..3000 {
            let id = g.next(1000);
            assert!(id > prev);
            assert_eq!(id.reactor(), 3);
            prev = id;
        }
        assert!(prev.time_ms() >= 1002, "carried into later milliseconds");
        // Clock goes backwards: still increasing.
        let back = g.next(10);
        assert!(back > prev);
    }

    #[test]
    fn generator_continues_above_floor_of_other_reactor_layout() {
        let floor = MessageId::new(5000, 9, 1023);
        let mut g = IdGen::new(2, floor);
        let id = g.next(4000);
        assert!(id > floor);
        assert_eq!(id.reactor(), 2);
    }

    proptest! {
        #[test]
        fn text_order_is_numeric_order(a: u64, b: u64) {
            let (x, y) = (MessageId(a), MessageId(b));
            prop_assert_eq!(x.cmp(&y), x.to_string().cmp(&y.to_string()));
            prop_assert_eq!(x.to_string().parse::<MessageId>().unwrap(), x);
        }
    }
}
