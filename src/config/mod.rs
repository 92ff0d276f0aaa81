//! Configuration: the `serve` flags merged over an optional TOML file, checked once.
//!
//! [`Config::load`] reads the file named by `--config` (if any), lets every flag given on the
//! command line win over the file, fills in defaults and validates the result into an immutable
//! [`Config`]; the server shares it behind an `Arc`. It then hands out the pieces the other
//! modules need ([`Config::session_config`], [`Config::spool_config`]).
//!
//! The file uses the flags' own spelling (kebab-case), and unknown keys are errors so a typo is
//! not silently ignored:
//!
//! ```toml
//! listen = ["0.0.0.0:25", "[::]:25"]
//! domain = ["example.org"]
//! spool = "/var/spool/ringmx"
//! max-message-size = 36700160
//! # STARTTLS: a list of certificate/key pairs (the first is the default), like the
//! # repeated --tls-cert/--tls-key flags.
//! tls = [{ cert = "/etc/ringmx/mx.pem", key = "/etc/ringmx/mx.key" }]
//! tls-min-version = "1.2"
//! ```
//!
//! For TLS it only checks the shape (pairs complete, timeout in range); reading and matching
//! the certificates and keys is `server::tls`'s (at start, in `check-config`, on SIGHUP).
//!
//! The defaults of the SMTP limits (message size, recipients, idle timeout, error cap) are the
//! session's own ([`crate::smtp::DEFAULT_MAX_MESSAGE_SIZE`] and its neighbours); this module
//! only holds the defaults of what it alone decides (listen address, spool, connections, data
//! timeout).
//!
//! One job per file:
//! - `mod.rs` (this file): the public types ([`Config`], [`AbuseConfig`], [`TlsPair`],
//!   [`TlsVersion`]) and the defaults and limits this module decides.
//! - `flags.rs`: the `serve` flags ([`ServeArgs`]), as clap parses them.
//! - `file.rs`: the TOML file's keys, and reading and parsing the file.
//! - `load.rs`: [`Config::load`] and [`Config::from_toml`]: flags over the file over
//!   defaults, every value checked.
//! - `delivery.rs`: the steps of that merge for the routes, the queue's delays and recipient
//!   verification.
//! - `access.rs`: reading a checked [`Config`]: the accessors, the settings handed to each
//!   layer and the one-line [`Config::summary`].
//! - `parse.rs`: parsers of single values ([`parse_cidr`], [`parse_dnsbl_zone`],
//!   [`parse_dns_server`], DNS names).
//! - `error.rs`: [`ConfigError`] and its one-line messages.
//! - `tests.rs`: the unit tests.
//!
//! This module does not open sockets, create the spool directory or touch io_uring; it only
//! checks what can be checked without side effects.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::relay::Routes;
use crate::smtp::BareLf;
use crate::spool::SyncPolicy;

mod access;
mod delivery;
mod error;
mod file;
mod flags;
mod load;
mod parse;
#[cfg(test)]
mod tests;

pub use error::ConfigError;
pub use flags::ServeArgs;
pub use load::default_reactors;
pub use parse::{parse_cidr, parse_dns_server, parse_dnsbl_zone};

/// Default listen address: unprivileged port on loopback, so a first run needs no root.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:2525";
/// Default spool directory (relative to the working directory).
pub const DEFAULT_SPOOL_DIR: &str = "spool";
/// Name of the stats socket inside the spool directory when `--stats` is not given.
pub const DEFAULT_STATS_NAME: &str = "stats.sock";
/// Largest accepted `--max-message-size` (1 GiB); beyond that, SMTP is the wrong transport.
pub const MAX_MESSAGE_SIZE_LIMIT: u64 = 1024 * 1024 * 1024;
/// Default `--max-connections` over all reactors.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Upper bound for `--idle-timeout` (one hour).
pub const MAX_IDLE_TIMEOUT_SECS: u64 = 3600;
/// Default `--data-timeout`: a whole message body must arrive within 10 minutes of the 354,
/// however steadily it drips (the spirit of RFC 5321 §4.5.3.2.6, the 10 minutes a client waits
/// for the reply after the body). At the default `--max-message-size` (35 MiB) that asks for
/// about 60 KiB/s; raise it for very large messages from slow links.
pub const DEFAULT_DATA_TIMEOUT: Duration = Duration::from_secs(600);
/// Upper bound for `--data-timeout` (one day).
pub const MAX_DATA_TIMEOUT_SECS: u64 = 86_400;
/// Upper bound for `--tls-handshake-timeout` (ten minutes).
pub const MAX_TLS_HANDSHAKE_TIMEOUT_SECS: u64 = 600;
/// Highest `--max-connect-rate`, `--max-message-rate`, `--max-recipient-rate` (per minute).
pub const MAX_RATE_LIMIT: u32 = 1_000_000;
/// Upper bound for `--greet-pause` (postscreen's default is 6 s; clients wait 5 minutes for a
/// greeting, RFC 5321 §4.5.3.2.1, but some give up sooner).
pub const MAX_GREET_PAUSE_SECS: u64 = 60;
/// Upper bound for `--reactors`: reactor indexes fit in message ids (`spool::id::MAX_REACTOR`
/// is 1023), and the highest index is reserved for the delivery thread's own segments
/// (`spool::appender::APPENDER_REACTOR`), so reactors use 0..=1022.
pub const MAX_REACTORS: usize = 1023;
/// Smallest `--segment-size` (tests and small installations; real ones keep the default).
pub const MIN_SEGMENT_SIZE: u64 = 64 * 1024;
/// `sun_path` of a unix socket holds 108 bytes including the trailing NUL (unix(7)).
pub const MAX_UNIX_SOCKET_PATH: usize = 107;
/// Default `--dnsbl-threshold`: one listing (of weight 1) blocks.
pub const DEFAULT_DNSBL_THRESHOLD: u32 = 1;
/// Most `--dnsbl` zones (each is one query per connection).
pub const MAX_DNSBL_ZONES: usize = 32;

/// The DNS port, for a `dns-server` given without one.
pub const DNS_PORT: u16 = 53;

/// A checked configuration. Built once by [`Config::load`]; never changed afterwards.
#[derive(Debug, Clone)]
pub struct Config {
    listen: Vec<SocketAddr>,
    domains: Vec<String>,
    spool_dir: PathBuf,
    stats_path: PathBuf,
    reactors: usize,
    hostname: String,
    sync: SyncPolicy,
    max_message_size: u64,
    max_recipients: usize,
    max_hops: u32,
    max_errors: u32,
    max_connections: usize,
    max_connections_per_ip: Option<usize>,
    idle_timeout: Duration,
    data_timeout: Duration,
    bare_lf: BareLf,
    prepare_segments: bool,
    segment_size: u64,
    tls: Vec<TlsPair>,
    tls_min_version: TlsVersion,
    tls_handshake_timeout: Duration,
    proxy_protocol_from: Vec<ipnet::IpNet>,
    routes: Routes,
    retry_first: Duration,
    retry_max: Duration,
    max_queue_lifetime: Duration,
    bounce_copy: Option<String>,
    delay_warning: Option<Duration>,
    compact_after: Duration,
    abuse: AbuseConfig,
    dns_servers: Vec<SocketAddr>,
    verify_timeout: Duration,
    verify_cache_accept: Duration,
    verify_cache_refuse: Duration,
}

/// The door's abuse controls (`--recipients`, the rate limits, `--greet-pause`,
/// `--trusted-networks`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AbuseConfig {
    /// The recipient table file.
    pub recipients: Option<PathBuf>,
    /// New connections per minute per client (0: off).
    pub max_connect_rate: u32,
    /// MAIL commands per minute per client (0: off).
    pub max_message_rate: u32,
    /// RCPT commands per minute per client (0: off).
    pub max_recipient_rate: u32,
    /// The greet pause (zero: off).
    pub greet_pause: Duration,
    /// Clients exempt from the greet pause, the rate limits and the DNSBL checks.
    pub trusted_networks: Vec<ipnet::IpNet>,
    /// DNSBL zones and their weights (`--dnsbl ZONE[*WEIGHT]`).
    pub dnsbl: Vec<(String, u32)>,
    /// The score at which a DNSBL-listed client is refused (`--dnsbl-threshold`).
    pub dnsbl_threshold: u32,
}

/// One certificate chain and its private key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsPair {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

/// The lowest TLS version accepted (`--tls-min-version`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Deserialize)]
pub enum TlsVersion {
    /// TLS 1.2 (RFC 5246) and 1.3: what MX peers still need.
    #[default]
    #[value(name = "1.2")]
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 (RFC 8446) only.
    #[value(name = "1.3")]
    #[serde(rename = "1.3")]
    Tls13,
}

impl TlsVersion {
    /// `1.2` / `1.3`: the flag and config-file spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tls12 => "1.2",
            Self::Tls13 => "1.3",
        }
    }
}
