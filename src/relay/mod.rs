//! Onward delivery: the spool relays to the next hop over SMTP or LMTP, retries, and frees
//! the disk of delivered mail. Opt-in: without a route, ringmx stores only, as before.
//!
//! # Layout
//! - [`route`]: route targets (`smtp:[host]:port`, `lmtp:[host]:port`, `lmtp:unix:/path`),
//!   per-route TLS policy and connection limit, lookup by recipient domain.
//! - [`queue`]: queue state rebuilt from the segments and the delivery journal (pure), retry
//!   backoff.
//! - [`dsn`]: the delivery status notification (RFC 3464) text (pure).
//! - [`bounce`]: who gets a DSN, and the spooled message it becomes.
//! - [`stage`]: the delivery thread (its own tokio runtime): learns about committed messages,
//!   schedules, drives the sans-IO [`crate::smtp::client`] over TCP or unix sockets, records
//!   outcomes in the [`crate::spool::journal`], spools bounces (through
//!   [`crate::spool::appender`]) before recording failures, deletes finished segments and
//!   compacts pinned ones.
//! - [`tool`]: `ringmx queue ls|show`, reading the spool directly.
//!
//! It does not speak outbound STARTTLS or BDAT, or look up MX records.

pub mod bounce;
pub mod dsn;
pub mod queue;
pub mod route;
pub mod stage;
pub mod tool;

pub use route::{Route, RouteSpec, Routes, Target, TlsMode};
pub use stage::{DeliveryConfig, Notifier};
