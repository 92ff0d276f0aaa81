//! Onward delivery: the spool relays to the next hop over SMTP or LMTP, retries, and frees
//! the disk of delivered mail. Opt-in: without a route, ringmx stores only, as before.
//!
//! # Layout
//! - [`route`]: route targets (`smtp:[host]:port`, `lmtp:[host]:port`, `lmtp:unix:/path`,
//!   `mx`, `mx:PORT`), per-route TLS policy, CA file and connection limit, lookup by recipient
//!   domain.
//! - [`tls`]: outbound STARTTLS: each route's rustls client configuration (`none`, `may`,
//!   `encrypt`; which certificates are checked) and the handshake.
//! - `connect`: opening a next hop's socket (TCP or unix, the 4.4.1 reply when it fails), for
//!   the stage's connections and the verifier's probes.
//! - [`mx`]: the MX hosts of a recipient domain, in the order to try them (null MX, implicit
//!   MX, loops back to this host), through the shared [`crate::dns::Resolver`].
//! - [`queue`]: queue state rebuilt from the segments and the delivery journal (pure), retry
//!   backoff.
//! - [`dsn`]: the delivery status notification (RFC 3464) text (pure).
//! - [`bounce`]: who gets a DSN, and the spooled message it becomes.
//! - [`stage`]: the delivery thread (its own tokio runtime): learns about committed messages,
//!   schedules, drives the sans-IO [`crate::smtp::client`] over TCP or unix sockets, records
//!   outcomes in the [`crate::spool::journal`], spools bounces (through
//!   [`crate::spool::appender`]) before recording failures, deletes finished segments and
//!   compacts pinned ones.
//! - [`control`]: the control socket `<spool>/control.sock` that the stage serves, and the
//!   client side of `ringmx queue retry|delete`.
//! - [`tool`]: `ringmx queue ls|show`, reading the spool directly.
//! - [`verify`]: recipient verification at RCPT (`--verify-recipients`): probes a route's
//!   target (`MAIL FROM:<>`, `RCPT TO`, `RSET`) from a thread of its own, with a bounded answer
//!   cache and a small pool of reused connections per route.
//!
//! It does not check MTA-STS or DANE policies for MX hosts (see docs/design.md).

pub mod bounce;
mod connect;
pub mod control;
pub mod dsn;
pub mod mx;
pub mod queue;
pub mod route;
pub mod stage;
pub mod tls;
pub mod tool;
pub mod verify;

pub use route::{Route, RouteSpec, Routes, Target, TlsMode};
pub use stage::{DeliveryConfig, Notifier};
