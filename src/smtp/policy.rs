//! Per-connection policy the driver hands a session: the recipient table snapshot and the
//! message/recipient rate check, both as plain data or a trait object, so the session decides
//! its replies (`550 5.1.1`, `450 4.7.1`) without knowing where the answers come from.
//!
//! Recipient verification ([`VerifyCheck`], [`Verdict`]): the session only learns whether a
//! recipient's route asks its next hop; it then waits in [`super::Phase::AwaitingVerdict`] for
//! the driver's [`Verdict`], which comes from elsewhere (a probe, a cache).
//!
//! This module does not count anything or read a clock; the driver's [`RateCheck`]
//! implementation does (shared by all reactors). A session without a [`Policy`] checks nothing
//! beyond the local domains.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use super::recipients::RecipientTable;

/// What a rate is counted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    /// A MAIL command (one message attempt).
    Message,
    /// A RCPT command (one recipient attempt).
    Recipient,
}

/// Counts a client's messages and recipients against its limits. Implemented by the driver
/// (shared across reactors); must be cheap and must not block: it is asked once per MAIL and
/// once per RCPT.
pub trait RateCheck: fmt::Debug + Send + Sync {
    /// Counts one `what` from `client` at `now`, and says whether it is within the limit
    /// (`false`: over it; the attempt is then not counted).
    fn allow(&self, what: Rate, client: IpAddr, now: Instant) -> bool;
}

/// Whether a recipient is verified with its next hop (recipient verification, per route).
/// Implemented by the driver; must be cheap and must not block: it only says *whether*, the
/// answer comes later as a [`Verdict`].
pub trait VerifyCheck: fmt::Debug + Send + Sync {
    /// Whether RCPT `address` (`local@domain`, as the client wrote it, of a local domain) must
    /// wait for a verdict.
    fn wants_verdict(&self, address: &str) -> bool;
}

/// The driver's answer about a recipient the session waits for
/// ([`super::Session::handle_verdict`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The next hop takes it: 250.
    Accepted,
    /// The next hop refused it (5xx): `550 5.1.1 … User unknown`.
    Refused,
    /// No answer in time, 4xx, or too busy to ask: `450 4.1.1 … unverified address`.
    Unverified,
}

/// The policy of one session, fixed when it starts.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// The recipient table in force when the connection began (`None`: every address of a local
    /// domain is accepted).
    pub recipients: Option<Arc<RecipientTable>>,
    /// The rate limits (`None`: none, e.g. for a trusted client).
    pub rates: Option<Arc<dyn RateCheck>>,
    /// Recipient verification (`None`: off). Asked only for a recipient the table does not
    /// decide: no table, or one matched only by its `@domain` entry; never for postmaster.
    pub verify: Option<Arc<dyn VerifyCheck>>,
}
