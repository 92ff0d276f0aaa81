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
//! This module does not open sockets, create the spool directory or touch io_uring; it only
//! checks what can be checked without side effects.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::relay::queue::{DEFAULT_MAX_QUEUE_LIFETIME, DEFAULT_RETRY_FIRST, DEFAULT_RETRY_MAX};
use crate::relay::stage::DEFAULT_COMPACT_AFTER;
use crate::relay::verify::{self, VerifyConfig};
use crate::relay::{DeliveryConfig, Route, RouteSpec, Routes};
use crate::smtp::{
    BareLf, SessionConfig, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_ERRORS, DEFAULT_MAX_JUNK_COMMANDS,
    DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_MAX_RECIPIENTS, DEFAULT_TLS_HANDSHAKE_TIMEOUT,
};
use crate::spool::{SpoolConfig, SyncPolicy, DEFAULT_SEGMENT_SIZE};

mod flags;

pub use flags::ServeArgs;

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
/// RFC 1035 §2.3.4: a domain name is at most 255 octets (253 as text).
const MAX_DOMAIN_LEN: usize = 253;
/// RFC 1035 §2.3.4: a label is at most 63 octets.
const MAX_LABEL_LEN: usize = 63;

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

/// Why a configuration is unusable. `Display` gives one line for the operator.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// The config file is not valid TOML or has unknown/mistyped keys.
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A `listen` entry in the file is not an `IP:port` address.
    BadListen(String),
    /// The same address is given twice.
    DuplicateListen(SocketAddr),
    /// A wildcard address (`0.0.0.0` or `[::]`) and a specific one of the same family share a
    /// port: the wildcard already covers it, and the kernel would refuse the second bind.
    OverlappingListen(SocketAddr, SocketAddr),
    /// No `--domain` anywhere.
    NoDomain,
    /// A domain is not a valid DNS name.
    BadDomain(String),
    /// The hostname is not a valid DNS name.
    BadHostname(String),
    /// `sync` in the file is neither `group` nor `none`.
    BadSync(String),
    /// `bare-lf` in the file is neither `reject` nor `normalize`.
    BadBareLf(String),
    /// An entry of `proxy-protocol-from` in the file is not an address or CIDR block.
    BadCidr(String),
    /// `--reactors` out of range.
    Reactors(usize),
    /// A limit that must be positive is zero.
    Zero(&'static str),
    /// `--max-message-size` above [`MAX_MESSAGE_SIZE_LIMIT`].
    MessageSizeTooLarge(u64),
    /// `--idle-timeout` above [`MAX_IDLE_TIMEOUT_SECS`].
    IdleTimeoutTooLong(u64),
    /// `--data-timeout` above [`MAX_DATA_TIMEOUT_SECS`].
    DataTimeoutTooLong(u64),
    /// The per-IP limit is above the global one.
    PerIpAboveTotal {
        /// `--max-connections-per-ip`.
        per_ip: usize,
        /// `--max-connections`.
        total: usize,
    },
    /// The spool path exists but is not a directory.
    SpoolNotDir(PathBuf),
    /// The stats socket path does not fit in `sun_path`.
    StatsPathTooLong(PathBuf),
    /// `--tls-cert` and `--tls-key` are not given the same number of times.
    TlsPairs {
        /// `--tls-cert` count.
        certs: usize,
        /// `--tls-key` count.
        keys: usize,
    },
    /// `--tls-handshake-timeout` above [`MAX_TLS_HANDSHAKE_TIMEOUT_SECS`].
    TlsHandshakeTimeoutTooLong(u64),
    /// A route (`[routes]`, `--relay-to`), a retry or a bounce setting is unusable.
    Route(String),
    /// `--segment-size` below [`MIN_SEGMENT_SIZE`].
    SegmentSize(u64),
    /// A rate limit above [`MAX_RATE_LIMIT`] (name, value).
    RateTooHigh(&'static str, u32),
    /// `--greet-pause` above [`MAX_GREET_PAUSE_SECS`].
    GreetPauseTooLong(u64),
    /// An entry of `trusted-networks` in the file is not an address or CIDR block.
    BadTrustedNetwork(String),
    /// An entry of `dns-server` in the file is not `IP` or `IP:PORT`.
    BadDnsServer(String),
    /// A `verify-*` duration out of its range (name, value, limit).
    VerifyRange(&'static str, u64, u64),
    /// A `dnsbl` entry is not `ZONE` or `ZONE*WEIGHT`, or there are too many.
    Dnsbl(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read { path, source } => {
                write!(f, "cannot read config file {}: {source}", path.display())
            }
            Self::Parse { path, message } => {
                // toml's messages span several lines; keep ours on one.
                let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
                write!(f, "config file {}: {message}", path.display())
            }
            Self::BadListen(s) => write!(
                f,
                "listen address {s:?} is not IP:port (e.g. 127.0.0.1:2525 or [::1]:2525)"
            ),
            Self::DuplicateListen(a) => write!(f, "listen address {a} is given twice"),
            Self::OverlappingListen(a, b) => write!(
                f,
                "listen addresses {a} and {b} overlap: the wildcard one already covers the other; list one of them"
            ),
            Self::NoDomain => write!(
                f,
                "no domain to accept mail for: give --domain D or `domain = [\"D\"]` in the config file"
            ),
            Self::BadDomain(d) => write!(f, "domain {d:?} is not a valid domain name"),
            Self::BadHostname(h) => write!(
                f,
                "hostname {h:?} is not a valid host name (set one with --hostname)"
            ),
            Self::BadSync(s) => write!(f, "sync {s:?} must be \"group\" or \"none\""),
            Self::BadCidr(s) => write!(
                f,
                "proxy-protocol-from {s:?} is not an address or CIDR block (like 10.0.0.0/8)"
            ),
            Self::BadBareLf(s) => write!(f, "bare-lf {s:?} must be \"reject\" or \"normalize\""),
            Self::Reactors(n) => write!(f, "reactors = {n} must be between 1 and {MAX_REACTORS}"),
            Self::Zero(name) => write!(f, "{name} must be at least 1"),
            Self::MessageSizeTooLarge(n) => write!(
                f,
                "max-message-size = {n} is above the limit of {MAX_MESSAGE_SIZE_LIMIT} bytes"
            ),
            Self::IdleTimeoutTooLong(n) => write!(
                f,
                "idle-timeout = {n} s is above the limit of {MAX_IDLE_TIMEOUT_SECS} s"
            ),
            Self::DataTimeoutTooLong(n) => write!(
                f,
                "data-timeout = {n} s is above the limit of {MAX_DATA_TIMEOUT_SECS} s"
            ),
            Self::PerIpAboveTotal { per_ip, total } => write!(
                f,
                "max-connections-per-ip = {per_ip} is above max-connections = {total}"
            ),
            Self::SpoolNotDir(p) => write!(f, "spool {} exists and is not a directory", p.display()),
            Self::TlsPairs { certs, keys } => write!(
                f,
                "{certs} --tls-cert but {keys} --tls-key: give them in pairs, the n-th key for the n-th certificate"
            ),
            Self::TlsHandshakeTimeoutTooLong(n) => write!(
                f,
                "tls-handshake-timeout = {n} s is above the limit of {MAX_TLS_HANDSHAKE_TIMEOUT_SECS} s"
            ),
            Self::Route(m) => f.write_str(m),
            Self::SegmentSize(n) => write!(
                f,
                "segment-size = {n} is below the minimum of {MIN_SEGMENT_SIZE} bytes"
            ),
            Self::RateTooHigh(name, n) => write!(
                f,
                "{name} = {n} per minute is above the limit of {MAX_RATE_LIMIT}"
            ),
            Self::GreetPauseTooLong(n) => write!(
                f,
                "greet-pause = {n} s is above the limit of {MAX_GREET_PAUSE_SECS} s"
            ),
            Self::Dnsbl(m) => f.write_str(m),
            Self::BadDnsServer(s) => write!(
                f,
                "dns-server {s:?} is not an IP address or IP:PORT (like 192.0.2.53 or 127.0.0.1:5353)"
            ),
            Self::BadTrustedNetwork(s) => write!(
                f,
                "trusted-networks {s:?} is not an address or CIDR block (like 10.0.0.0/8)"
            ),
            Self::VerifyRange(name, n, max) => {
                write!(f, "{name} = {n} s must be between 1 and {max} s")
            }
            Self::StatsPathTooLong(p) => write!(
                f,
                "stats socket path {} is longer than {MAX_UNIX_SOCKET_PATH} bytes; choose a shorter --stats",
                p.display()
            ),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The TOML file: the same keys as the flags, kebab-case, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileConfig {
    listen: Option<Vec<String>>,
    domain: Option<Vec<String>>,
    spool: Option<PathBuf>,
    stats: Option<PathBuf>,
    reactors: Option<usize>,
    hostname: Option<String>,
    sync: Option<String>,
    max_message_size: Option<u64>,
    max_recipients: Option<usize>,
    max_hops: Option<u32>,
    max_connections: Option<usize>,
    max_connections_per_ip: Option<usize>,
    idle_timeout: Option<u64>,
    data_timeout: Option<u64>,
    bare_lf: Option<String>,
    prepare_segments: Option<bool>,
    segment_size: Option<u64>,
    tls: Option<Vec<TlsPair>>,
    tls_min_version: Option<TlsVersion>,
    tls_handshake_timeout: Option<u64>,
    #[serde(alias = "proxy_protocol_from")]
    proxy_protocol_from: Option<Vec<String>>,
    routes: Option<BTreeMap<String, RouteSpec>>,
    relay_to: Option<String>,
    max_queue_lifetime: Option<u64>,
    retry_first: Option<u64>,
    retry_max: Option<u64>,
    bounce_copy: Option<String>,
    delay_warning: Option<u64>,
    compact_after: Option<u64>,
    recipients: Option<PathBuf>,
    max_connect_rate: Option<u32>,
    max_message_rate: Option<u32>,
    max_recipient_rate: Option<u32>,
    greet_pause: Option<u64>,
    trusted_networks: Option<Vec<String>>,
    dns_server: Option<Vec<String>>,
    verify_recipients: Option<bool>,
    verify_timeout: Option<u64>,
    verify_cache_accept: Option<u64>,
    verify_cache_refuse: Option<u64>,
    dnsbl: Option<Vec<String>>,
    dnsbl_threshold: Option<u32>,
}

impl Config {
    /// Reads `args.config` (if given), merges the flags over it and validates the result.
    ///
    /// # Errors
    /// [`ConfigError`] names the first problem found.
    pub fn load(args: &ServeArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Self::merge(args, file, default_reactors, system_hostname)
    }

    /// Parses TOML text as a config file (used by [`Config::load`] and tests).
    ///
    /// # Errors
    /// [`ConfigError::Parse`] with `path` as the file name in the message.
    pub fn from_toml(args: &ServeArgs, text: &str, path: &Path) -> Result<Self, ConfigError> {
        let file = parse_file(text, path)?;
        Self::merge(args, file, default_reactors, system_hostname)
    }

    fn merge(
        args: &ServeArgs,
        file: FileConfig,
        reactors_default: impl FnOnce() -> usize,
        hostname_default: impl FnOnce() -> String,
    ) -> Result<Self, ConfigError> {
        let listen = if !args.listen.is_empty() {
            args.listen.clone()
        } else if let Some(list) = file.listen {
            list.iter()
                .map(|s| {
                    s.trim()
                        .parse::<SocketAddr>()
                        .map_err(|_| ConfigError::BadListen(s.clone()))
                })
                .collect::<Result<Vec<_>, _>>()?
        } else {
            vec![DEFAULT_LISTEN
                .parse()
                .map_err(|_| ConfigError::BadListen(DEFAULT_LISTEN.into()))?]
        };
        let mut seen = HashSet::new();
        for a in &listen {
            if !seen.insert(*a) {
                return Err(ConfigError::DuplicateListen(*a));
            }
        }
        for (i, a) in listen.iter().enumerate() {
            for b in &listen[i + 1..] {
                let same_port = a.port() == b.port() && a.port() != 0;
                let same_family = a.is_ipv4() == b.is_ipv4();
                if same_port && same_family && (a.ip().is_unspecified() || b.ip().is_unspecified())
                {
                    return Err(ConfigError::OverlappingListen(*a, *b));
                }
            }
        }
        if listen.is_empty() {
            return Err(ConfigError::BadListen(String::new()));
        }

        let domains = if args.domain.is_empty() {
            file.domain.unwrap_or_default()
        } else {
            args.domain.clone()
        };
        if domains.is_empty() {
            return Err(ConfigError::NoDomain);
        }
        let mut domains_lc = Vec::with_capacity(domains.len());
        for d in &domains {
            let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
            if !is_dns_name(&d) {
                return Err(ConfigError::BadDomain(d));
            }
            if !domains_lc.contains(&d) {
                domains_lc.push(d);
            }
        }

        let spool_dir = args
            .spool
            .clone()
            .or(file.spool)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SPOOL_DIR));
        if spool_dir.exists() && !spool_dir.is_dir() {
            return Err(ConfigError::SpoolNotDir(spool_dir));
        }
        let stats_path = args
            .stats
            .clone()
            .or(file.stats)
            .unwrap_or_else(|| spool_dir.join(DEFAULT_STATS_NAME));
        if stats_path.as_os_str().len() > MAX_UNIX_SOCKET_PATH {
            return Err(ConfigError::StatsPathTooLong(stats_path));
        }

        let reactors = match args.reactors.or(file.reactors) {
            Some(n) => n,
            None => reactors_default(),
        };
        if !(1..=MAX_REACTORS).contains(&reactors) {
            return Err(ConfigError::Reactors(reactors));
        }

        let hostname = match args.hostname.clone().or(file.hostname) {
            Some(h) => h.trim().trim_end_matches('.').to_ascii_lowercase(),
            None => hostname_default(),
        };
        if !is_dns_name(&hostname) {
            return Err(ConfigError::BadHostname(hostname));
        }

        let sync = match (args.sync, file.sync) {
            (Some(p), _) => p,
            (None, Some(s)) => SyncPolicy::from_name(&s).ok_or(ConfigError::BadSync(s))?,
            (None, None) => SyncPolicy::Group,
        };

        let max_message_size = args
            .max_message_size
            .or(file.max_message_size)
            .unwrap_or(DEFAULT_MAX_MESSAGE_SIZE);
        if max_message_size == 0 {
            return Err(ConfigError::Zero("max-message-size"));
        }
        if max_message_size > MAX_MESSAGE_SIZE_LIMIT {
            return Err(ConfigError::MessageSizeTooLarge(max_message_size));
        }
        let max_recipients = args
            .max_recipients
            .or(file.max_recipients)
            .unwrap_or(DEFAULT_MAX_RECIPIENTS);
        if max_recipients == 0 {
            return Err(ConfigError::Zero("max-recipients"));
        }
        let max_connections = args
            .max_connections
            .or(file.max_connections)
            .unwrap_or(DEFAULT_MAX_CONNECTIONS);
        if max_connections == 0 {
            return Err(ConfigError::Zero("max-connections"));
        }
        let max_connections_per_ip = args.max_connections_per_ip.or(file.max_connections_per_ip);
        match max_connections_per_ip {
            Some(0) => return Err(ConfigError::Zero("max-connections-per-ip")),
            Some(per_ip) if per_ip > max_connections => {
                return Err(ConfigError::PerIpAboveTotal {
                    per_ip,
                    total: max_connections,
                })
            }
            _ => {}
        }
        let idle_timeout = match args.idle_timeout.or(file.idle_timeout) {
            Some(0) => return Err(ConfigError::Zero("idle-timeout")),
            Some(s) if s > MAX_IDLE_TIMEOUT_SECS => return Err(ConfigError::IdleTimeoutTooLong(s)),
            Some(s) => Duration::from_secs(s),
            None => DEFAULT_IDLE_TIMEOUT,
        };
        let data_timeout = match args.data_timeout.or(file.data_timeout) {
            Some(0) => return Err(ConfigError::Zero("data-timeout")),
            Some(s) if s > MAX_DATA_TIMEOUT_SECS => return Err(ConfigError::DataTimeoutTooLong(s)),
            Some(s) => Duration::from_secs(s),
            None => DEFAULT_DATA_TIMEOUT,
        };
        let prepare_segments = args.prepare_segments || file.prepare_segments.unwrap_or(false);
        let segment_size = match args.segment_size.or(file.segment_size) {
            Some(n) if n < MIN_SEGMENT_SIZE => return Err(ConfigError::SegmentSize(n)),
            Some(n) => n,
            None => DEFAULT_SEGMENT_SIZE,
        };
        let bare_lf = match (args.bare_lf, file.bare_lf) {
            (Some(p), _) => p,
            (None, Some(s)) => BareLf::from_name(&s).ok_or(ConfigError::BadBareLf(s))?,
            (None, None) => BareLf::default(),
        };
        let proxy_protocol_from = if args.proxy_protocol_from.is_empty() {
            let mut nets = Vec::new();
            for s in file.proxy_protocol_from.unwrap_or_default() {
                nets.push(parse_cidr(&s).ok_or(ConfigError::BadCidr(s))?);
            }
            nets
        } else {
            args.proxy_protocol_from.clone()
        };

        let tls = if args.tls_cert.is_empty() && args.tls_key.is_empty() {
            file.tls.unwrap_or_default()
        } else if args.tls_cert.len() != args.tls_key.len() {
            return Err(ConfigError::TlsPairs {
                certs: args.tls_cert.len(),
                keys: args.tls_key.len(),
            });
        } else {
            args.tls_cert
                .iter()
                .zip(&args.tls_key)
                .map(|(cert, key)| TlsPair {
                    cert: cert.clone(),
                    key: key.clone(),
                })
                .collect()
        };
        let tls_min_version = args
            .tls_min_version
            .or(file.tls_min_version)
            .unwrap_or_default();
        let tls_handshake_timeout = match args.tls_handshake_timeout.or(file.tls_handshake_timeout)
        {
            Some(0) => return Err(ConfigError::Zero("tls-handshake-timeout")),
            Some(s) if s > MAX_TLS_HANDSHAKE_TIMEOUT_SECS => {
                return Err(ConfigError::TlsHandshakeTimeoutTooLong(s))
            }
            Some(s) => Duration::from_secs(s),
            None => DEFAULT_TLS_HANDSHAKE_TIMEOUT,
        };

        let verify_all = args.verify_recipients || file.verify_recipients.unwrap_or(false);
        let mut routes = Vec::new();
        for (name, spec) in file.routes.unwrap_or_default() {
            routes.push(Route::from_spec(&name, &spec, verify_all).map_err(ConfigError::Route)?);
        }
        if let Some(target) = args.relay_to.clone().or(file.relay_to) {
            let spec = RouteSpec::Target(target);
            for d in &domains_lc {
                if !routes.iter().any(|r| &r.name == d) {
                    routes
                        .push(Route::from_spec(d, &spec, verify_all).map_err(ConfigError::Route)?);
                }
            }
        }
        // A route's CA file (or, for `encrypt` without one, the system's trust store) must be
        // usable now, not at the first delivery.
        for r in &routes {
            crate::relay::tls::RouteTls::new(r).map_err(ConfigError::Route)?;
        }
        let secs = |v: Option<u64>, name: &str, default: Duration| match v {
            Some(0) => Err(ConfigError::Zero(match name {
                "retry-first" => "retry-first",
                "retry-max" => "retry-max",
                _ => "max-queue-lifetime",
            })),
            Some(s) => Ok(Duration::from_secs(s)),
            None => Ok(default),
        };
        let retry_first = secs(
            args.retry_first.or(file.retry_first),
            "retry-first",
            DEFAULT_RETRY_FIRST,
        )?;
        let retry_max = secs(
            args.retry_max.or(file.retry_max),
            "retry-max",
            DEFAULT_RETRY_MAX,
        )?;
        let max_queue_lifetime = secs(
            args.max_queue_lifetime.or(file.max_queue_lifetime),
            "max-queue-lifetime",
            DEFAULT_MAX_QUEUE_LIFETIME,
        )?;
        let bounce_copy = args.bounce_copy.clone().or(file.bounce_copy);
        if let Some(a) = &bounce_copy {
            if a.is_empty()
                || !a.contains('@')
                || a.chars()
                    .any(|c| c.is_control() || c == ' ' || c == '<' || c == '>')
            {
                return Err(ConfigError::Route(format!(
                    "bounce-copy {a:?} is not an address like postmaster@example.net"
                )));
            }
        }
        let delay_warning = match args.delay_warning.or(file.delay_warning) {
            Some(0) => return Err(ConfigError::Zero("delay-warning")),
            v => v.map(Duration::from_secs),
        };
        let compact_after = match args.compact_after.or(file.compact_after) {
            Some(0) => return Err(ConfigError::Zero("compact-after")),
            Some(s) => Duration::from_secs(s),
            None => DEFAULT_COMPACT_AFTER,
        };
        if retry_max < retry_first {
            return Err(ConfigError::Route(format!(
                "retry-max = {} s is below retry-first = {} s",
                retry_max.as_secs(),
                retry_first.as_secs()
            )));
        }

        let rate = |flag: Option<u32>, file: Option<u32>, name: &'static str| match flag
            .or(file)
            .unwrap_or(0)
        {
            n if n > MAX_RATE_LIMIT => Err(ConfigError::RateTooHigh(name, n)),
            n => Ok(n),
        };
        let greet_pause = match args.greet_pause.or(file.greet_pause).unwrap_or(0) {
            s if s > MAX_GREET_PAUSE_SECS => return Err(ConfigError::GreetPauseTooLong(s)),
            s => Duration::from_secs(s),
        };
        let trusted_networks = if args.trusted_networks.is_empty() {
            let mut nets = Vec::new();
            for s in file.trusted_networks.unwrap_or_default() {
                nets.push(parse_cidr(&s).ok_or(ConfigError::BadTrustedNetwork(s))?);
            }
            nets
        } else {
            args.trusted_networks.clone()
        };
        if verify_all && routes.is_empty() {
            return Err(ConfigError::Route(
                "verify-recipients needs a route to ask (--relay-to or [routes])".into(),
            ));
        }
        let verify_secs = |v: Option<u64>, name: &'static str, max: u64, default: Duration| match v
        {
            None => Ok(default),
            Some(n) if n == 0 || n > max => Err(ConfigError::VerifyRange(name, n, max)),
            Some(n) => Ok(Duration::from_secs(n)),
        };
        let verify_timeout = verify_secs(
            args.verify_timeout.or(file.verify_timeout),
            "verify-timeout",
            verify::MAX_TIMEOUT_SECS,
            verify::DEFAULT_TIMEOUT,
        )?;
        let verify_cache_accept = verify_secs(
            args.verify_cache_accept.or(file.verify_cache_accept),
            "verify-cache-accept",
            verify::MAX_CACHE_SECS,
            verify::DEFAULT_CACHE_ACCEPT,
        )?;
        let verify_cache_refuse = verify_secs(
            args.verify_cache_refuse.or(file.verify_cache_refuse),
            "verify-cache-refuse",
            verify::MAX_CACHE_SECS,
            verify::DEFAULT_CACHE_REFUSE,
        )?;
        let dnsbl_specs = if args.dnsbl.is_empty() {
            file.dnsbl.unwrap_or_default()
        } else {
            args.dnsbl.clone()
        };
        let mut dnsbl = Vec::new();
        for s in &dnsbl_specs {
            dnsbl.push(parse_dnsbl_zone(s).map_err(ConfigError::Dnsbl)?);
        }
        if dnsbl.len() > MAX_DNSBL_ZONES {
            return Err(ConfigError::Dnsbl(format!(
                "{} dnsbl zones: at most {MAX_DNSBL_ZONES}",
                dnsbl.len()
            )));
        }
        let dnsbl_threshold = match args.dnsbl_threshold.or(file.dnsbl_threshold) {
            Some(0) => return Err(ConfigError::Zero("dnsbl-threshold")),
            Some(n) => n,
            None => DEFAULT_DNSBL_THRESHOLD,
        };
        let abuse = AbuseConfig {
            dnsbl,
            dnsbl_threshold,
            recipients: args.recipients.clone().or(file.recipients),
            max_connect_rate: rate(
                args.max_connect_rate,
                file.max_connect_rate,
                "max-connect-rate",
            )?,
            max_message_rate: rate(
                args.max_message_rate,
                file.max_message_rate,
                "max-message-rate",
            )?,
            max_recipient_rate: rate(
                args.max_recipient_rate,
                file.max_recipient_rate,
                "max-recipient-rate",
            )?,
            greet_pause,
            trusted_networks,
        };

        let dns_servers = if args.dns_server.is_empty() {
            let mut v = Vec::new();
            for s in file.dns_server.unwrap_or_default() {
                v.push(parse_dns_server(&s).ok_or(ConfigError::BadDnsServer(s))?);
            }
            v
        } else {
            args.dns_server.clone()
        };

        let max_hops = args
            .max_hops
            .or(file.max_hops)
            .unwrap_or(crate::smtp::DEFAULT_MAX_HOPS);

        Ok(Self {
            max_hops,
            abuse,
            dns_servers,
            verify_timeout,
            verify_cache_accept,
            verify_cache_refuse,
            routes: Routes::new(routes),
            retry_first,
            retry_max,
            max_queue_lifetime,
            bounce_copy,
            delay_warning,
            compact_after,
            listen,
            domains: domains_lc,
            spool_dir,
            stats_path,
            reactors,
            hostname,
            sync,
            max_message_size,
            max_recipients,
            max_connections,
            max_connections_per_ip,
            idle_timeout,
            data_timeout,
            bare_lf,
            prepare_segments,
            segment_size,
            tls,
            tls_min_version,
            tls_handshake_timeout,
            proxy_protocol_from,
        })
    }

    /// The abuse controls: recipient table, rate limits, greet pause, trusted networks.
    pub fn abuse(&self) -> &AbuseConfig {
        &self.abuse
    }

    /// The DNS servers to ask (`--dns-server`); empty: the system's (`/etc/resolv.conf`).
    pub fn dns_servers(&self) -> &[SocketAddr] {
        &self.dns_servers
    }

    /// Peers (load balancers) that must start each connection with a PROXY protocol header;
    /// empty: none.
    pub fn proxy_protocol_from(&self) -> &[ipnet::IpNet] {
        &self.proxy_protocol_from
    }

    /// Addresses to listen on (each gets one `SO_REUSEPORT` socket per reactor).
    pub fn listen(&self) -> &[SocketAddr] {
        &self.listen
    }
    /// Domains we accept mail for, lower-case, without a trailing dot.
    pub fn domains(&self) -> &[String] {
        &self.domains
    }
    /// The spool directory.
    pub fn spool_dir(&self) -> &Path {
        &self.spool_dir
    }
    /// The stats socket path.
    pub fn stats_path(&self) -> &Path {
        &self.stats_path
    }
    /// Number of reactors.
    pub fn reactors(&self) -> usize {
        self.reactors
    }
    /// Our hostname.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }
    /// The fsync policy.
    pub fn sync(&self) -> SyncPolicy {
        self.sync
    }
    /// Largest message in bytes.
    pub fn max_message_size(&self) -> u64 {
        self.max_message_size
    }
    /// Recipients per message.
    pub fn max_recipients(&self) -> usize {
        self.max_recipients
    }
    /// Concurrent connections over all reactors.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }
    /// Concurrent connections per client IP (`None`: no limit).
    pub fn max_connections_per_ip(&self) -> Option<usize> {
        self.max_connections_per_ip
    }
    /// How long a client may stay silent.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }
    /// How long a whole message body may take after the 354.
    pub fn data_timeout(&self) -> Duration {
        self.data_timeout
    }
    /// The bare-LF policy.
    pub fn bare_lf(&self) -> BareLf {
        self.bare_lf
    }

    /// The STARTTLS certificate/key pairs (empty: no STARTTLS); the first is the default.
    pub fn tls(&self) -> &[TlsPair] {
        &self.tls
    }
    /// The lowest TLS version accepted.
    pub fn tls_min_version(&self) -> TlsVersion {
        self.tls_min_version
    }
    /// How long a TLS handshake may take.
    pub fn tls_handshake_timeout(&self) -> Duration {
        self.tls_handshake_timeout
    }

    /// The policy every SMTP session shares.
    pub fn session_config(&self) -> Arc<SessionConfig> {
        Arc::new(SessionConfig {
            hostname: self.hostname.clone(),
            local_domains: self.domains.clone(),
            max_message_size: self.max_message_size,
            max_recipients: self.max_recipients,
            max_errors: DEFAULT_MAX_ERRORS,
            max_junk_commands: DEFAULT_MAX_JUNK_COMMANDS,
            max_hops: self.max_hops,
            idle_timeout: self.idle_timeout,
            data_timeout: Some(self.data_timeout),
            bare_lf: self.bare_lf,
            starttls: !self.tls.is_empty(),
            tls_handshake_timeout: self.tls_handshake_timeout,
        })
    }

    /// The delivery stage's settings, or `None` without any route (store only).
    pub fn delivery_config(&self) -> Option<DeliveryConfig> {
        (!self.routes.is_empty()).then(|| DeliveryConfig {
            spool_dir: self.spool_dir.clone(),
            hostname: self.hostname.clone(),
            routes: self.routes.clone(),
            retry_first: self.retry_first,
            retry_max: self.retry_max,
            max_queue_lifetime: self.max_queue_lifetime,
            listen: self.listen.clone(),
            bounce_copy: self.bounce_copy.clone(),
            delay_warning: self.delay_warning,
            compact_after: self.compact_after,
        })
    }

    /// The recipient verifier's settings, or `None` when no route verifies.
    pub fn verify_config(&self) -> Option<VerifyConfig> {
        verify::any_route_verifies(&self.routes).then(|| VerifyConfig {
            routes: self.routes.clone(),
            hostname: self.hostname.clone(),
            timeout: self.verify_timeout,
            cache_accept: self.verify_cache_accept,
            cache_refuse: self.verify_cache_refuse,
        })
    }

    /// The spool writer settings of reactor `reactor`.
    pub fn spool_config(&self, reactor: u16) -> SpoolConfig {
        let mut c = SpoolConfig::new(self.spool_dir.clone(), reactor, self.hostname.clone());
        c.sync = self.sync;
        c.prepare = self.prepare_segments;
        c.segment_size = self.segment_size;
        c
    }

    /// A one-line summary for `check-config` and the start-up log.
    pub fn summary(&self) -> String {
        let listen: Vec<String> = self.listen.iter().map(|a| a.to_string()).collect();
        format!(
            "listen={} domains={} hostname={} spool={} stats={} reactors={} sync={} \
             max-message-size={} max-recipients={} max-connections={} max-connections-per-ip={} \
             idle-timeout={}s data-timeout={}s bare-lf={} tls-pairs={} tls-min-version={} \
             tls-handshake-timeout={}s proxy-protocol-from={} recipients={} \
             max-connect-rate={} max-message-rate={} max-recipient-rate={} greet-pause={}s \
             trusted-networks={} verify-recipients={}",
            listen.join(","),
            self.domains.join(","),
            self.hostname,
            self.spool_dir.display(),
            self.stats_path.display(),
            self.reactors,
            self.sync.name(),
            self.max_message_size,
            self.max_recipients,
            self.max_connections,
            self.max_connections_per_ip
                .map_or_else(|| "unlimited".to_string(), |n| n.to_string()),
            self.idle_timeout.as_secs(),
            self.data_timeout.as_secs(),
            self.bare_lf.name(),
            self.tls.len(),
            self.tls_min_version.name(),
            self.tls_handshake_timeout.as_secs(),
            if self.proxy_protocol_from.is_empty() {
                "none".to_string()
            } else {
                let nets: Vec<String> = self
                    .proxy_protocol_from
                    .iter()
                    .map(|n| n.to_string())
                    .collect();
                nets.join(",")
            },
            self.abuse
                .recipients
                .as_ref()
                .map_or_else(|| "none".to_string(), |p| p.display().to_string()),
            self.abuse.max_connect_rate,
            self.abuse.max_message_rate,
            self.abuse.max_recipient_rate,
            self.abuse.greet_pause.as_secs(),
            if self.abuse.trusted_networks.is_empty() {
                "none".to_string()
            } else {
                let nets: Vec<String> = self
                    .abuse
                    .trusted_networks
                    .iter()
                    .map(|n| n.to_string())
                    .collect();
                nets.join(",")
            },
            self.verify_summary(),
        )
    }

    /// `verify-recipients=` of the summary: `off`, or the verifying routes and the timings.
    fn verify_summary(&self) -> String {
        let Some(v) = self.verify_config() else {
            return "off".to_string();
        };
        let names: Vec<&str> = v
            .routes
            .all()
            .iter()
            .filter(|r| r.verify)
            .map(|r| r.name.as_str())
            .collect();
        format!(
            "{}(timeout={}s,cache-accept={}s,cache-refuse={}s)",
            names.join(","),
            v.timeout.as_secs(),
            v.cache_accept.as_secs(),
            v.cache_refuse.as_secs()
        )
    }
}

/// An address or CIDR block: `10.0.0.0/8`, `2001:db8::/32`, or a single `192.0.2.1`.
pub fn parse_cidr(s: &str) -> Option<ipnet::IpNet> {
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

/// Parses `ZONE` or `ZONE*WEIGHT` (weight 1 by default).
///
/// # Errors
/// A message saying what is wrong.
pub fn parse_dnsbl_zone(s: &str) -> Result<(String, u32), String> {
    let (name, weight) = match s.rsplit_once('*') {
        Some((n, w)) => (
            n,
            w.parse::<u32>().ok().filter(|w| *w > 0).ok_or_else(|| {
                format!("dnsbl {s:?}: the weight after * must be a positive integer")
            })?,
        ),
        None => (s, 1),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let ok = !name.is_empty()
        && name.len() <= 200
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !ok {
        return Err(format!(
            "dnsbl {s:?} is not a DNS zone (like zen.example.org or zen.example.org*2)"
        ));
    }
    Ok((name, weight))
}

/// A DNS server: `IP` (port [`DNS_PORT`]) or `IP:PORT`.
pub fn parse_dns_server(s: &str) -> Option<SocketAddr> {
    s.parse::<SocketAddr>().ok().or_else(|| {
        s.parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, DNS_PORT))
    })
}

/// Default `--dnsbl-threshold`: one listing (of weight 1) blocks.
pub const DEFAULT_DNSBL_THRESHOLD: u32 = 1;
/// Most `--dnsbl` zones (each is one query per connection).
pub const MAX_DNSBL_ZONES: usize = 32;

/// The DNS port, for a `dns-server` given without one.
pub const DNS_PORT: u16 = 53;

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_file(&text, path)
}

fn parse_file(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The number of CPUs this process may run on (`sched_getaffinity`), at least 1.
pub fn default_reactors() -> usize {
    crate::sys::allowed_cpus().len().max(1)
}

/// The system's host name ([`crate::sys::hostname`]) in lower case, or `localhost`.
fn system_hostname() -> String {
    crate::sys::hostname().map_or_else(|| "localhost".to_string(), |h| h.to_ascii_lowercase())
}

/// A DNS name in the RFC 1123 sense: dot-separated labels of letters, digits and inner hyphens.
fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_DOMAIN_LEN
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= MAX_LABEL_LEN
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ServeArgs {
        ServeArgs {
            domain: vec!["Example.TEST".into()],
            ..ServeArgs::default()
        }
    }

    fn merge(args: &ServeArgs, toml: &str) -> Result<Config, ConfigError> {
        let file = parse_file(toml, Path::new("t.toml"))?;
        Config::merge(args, file, || 3, || "mx.local".into())
    }

    #[test]
    fn defaults() {
        let c = merge(&args(), "").unwrap();
        assert_eq!(
            c.listen(),
            ["127.0.0.1:2525".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(c.domains(), ["example.test"]);
        assert_eq!(c.spool_dir(), Path::new("spool"));
        assert_eq!(c.stats_path(), Path::new("spool/stats.sock"));
        assert_eq!(c.reactors(), 3);
        assert_eq!(c.hostname(), "mx.local");
        assert_eq!(c.sync(), SyncPolicy::Group);
        assert_eq!(c.max_message_size(), 35 * 1024 * 1024);
        assert_eq!(c.max_recipients(), 100);
        assert_eq!(c.max_connections(), DEFAULT_MAX_CONNECTIONS);
        assert_eq!(c.max_connections_per_ip(), None);
        assert_eq!(c.idle_timeout(), Duration::from_secs(300));
        assert_eq!(c.data_timeout(), Duration::from_secs(600));
        assert_eq!(
            c.session_config().data_timeout,
            Some(Duration::from_secs(600))
        );
    }

    #[test]
    fn overlapping_listen_addresses_are_refused() {
        let e = |list: &[&str]| {
            let flags = ServeArgs {
                listen: list.iter().map(|a| a.parse().unwrap()).collect(),
                ..args()
            };
            merge(&flags, "").err().map(|e| e.to_string())
        };
        let msg = e(&["127.0.0.1:25", "0.0.0.0:25"]).unwrap();
        assert!(msg.contains("127.0.0.1:25 and 0.0.0.0:25 overlap"), "{msg}");
        assert!(e(&["[::]:25", "[::1]:25"]).is_some());
        // Different families (IPV6_V6ONLY), different ports and port 0 are fine.
        assert_eq!(e(&["0.0.0.0:25", "[::]:25"]), None);
        assert_eq!(e(&["0.0.0.0:25", "127.0.0.1:26"]), None);
        assert_eq!(e(&["0.0.0.0:0", "127.0.0.1:0"]), None);
    }

    #[test]
    fn bare_lf_policy_defaults_to_reject() {
        let c = merge(&args(), "").unwrap();
        assert_eq!(c.bare_lf(), BareLf::Reject);
        assert_eq!(c.session_config().bare_lf, BareLf::Reject);
        let c = merge(&args(), "bare-lf = \"normalize\"").unwrap();
        assert_eq!(c.session_config().bare_lf, BareLf::Normalize);
        assert!(c.summary().contains("bare-lf=normalize"));
        let flags = ServeArgs {
            bare_lf: Some(BareLf::Reject),
            ..args()
        };
        assert_eq!(
            merge(&flags, "bare-lf = \"normalize\"").unwrap().bare_lf(),
            BareLf::Reject
        );
        let e = merge(&args(), "bare-lf = \"accept\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"reject\" or \"normalize\""), "{e}");
    }

    #[test]
    fn recipient_verification_per_route_and_for_all_routes() {
        assert!(merge(&args(), "").unwrap().verify_config().is_none());
        let routes = r#"
            [routes]
            "a.test" = "smtp:[127.0.0.1]:25"
            "b.test" = { target = "lmtp:[127.0.0.1]:24", verify = true }
            "*" = { target = "smtp:[127.0.0.1]:26", verify = false }
        "#;
        let verifying = |c: &Config| -> Vec<String> {
            let v = c.verify_config().map(|v| v.routes).unwrap_or_default();
            let mut names: Vec<String> = v
                .all()
                .iter()
                .filter(|r| r.verify)
                .map(|r| r.name.clone())
                .collect();
            names.sort();
            names
        };
        let c = merge(&args(), routes).unwrap();
        assert_eq!(verifying(&c), ["b.test"]);
        let v = c.verify_config().unwrap();
        assert_eq!(
            (v.timeout, v.cache_accept, v.cache_refuse),
            (
                verify::DEFAULT_TIMEOUT,
                verify::DEFAULT_CACHE_ACCEPT,
                verify::DEFAULT_CACHE_REFUSE
            )
        );
        let all = format!(
            "verify-recipients = true\nverify-timeout = 3\nverify-cache-refuse = 60\n{routes}"
        );
        let c = merge(&args(), &all).unwrap();
        assert_eq!(verifying(&c), ["a.test", "b.test"], "verify = false wins");
        assert!(
            c.summary().ends_with(
                "verify-recipients=a.test,b.test(timeout=3s,cache-accept=3600s,cache-refuse=60s)"
            ),
            "{}",
            c.summary()
        );
        assert!(merge(&args(), "")
            .unwrap()
            .summary()
            .ends_with("verify-recipients=off"));
        let v = c.verify_config().unwrap();
        assert_eq!(v.timeout, Duration::from_secs(3));
        assert_eq!(v.cache_refuse, Duration::from_secs(60));
        // The flag turns it on for --relay-to routes too.
        let flags = ServeArgs {
            verify_recipients: true,
            verify_cache_accept: Some(10),
            relay_to: Some("lmtp:unix:/run/lmtp".into()),
            ..args()
        };
        let c = merge(&flags, "").unwrap();
        assert_eq!(verifying(&c).len(), 1);
        assert_eq!(
            c.verify_config().unwrap().cache_accept,
            Duration::from_secs(10)
        );
        let e = |toml: &str| merge(&args(), toml).unwrap_err().to_string();
        assert!(
            e("verify-recipients = true").contains("needs a route"),
            "{}",
            e("verify-recipients = true")
        );
        assert!(e(&format!("verify-timeout = 0\n{routes}")).contains("verify-timeout = 0 s"));
        assert!(e(&format!("verify-timeout = 61\n{routes}")).contains("between 1 and 60"));
        assert!(e(&format!("verify-cache-accept = 999999999\n{routes}"))
            .contains("verify-cache-accept"));
    }

    #[test]
    fn abuse_controls_from_file_and_flags_and_their_limits() {
        let c = merge(&args(), "").unwrap();
        assert_eq!(
            c.abuse(),
            &AbuseConfig {
                dnsbl_threshold: DEFAULT_DNSBL_THRESHOLD,
                ..AbuseConfig::default()
            }
        );
        let toml = r#"
            recipients = "/etc/ringmx/recipients"
            max-connect-rate = 60
            max-message-rate = 100
            max-recipient-rate = 500
            greet-pause = 6
            trusted-networks = ["10.0.0.0/8", "192.0.2.25", "2001:db8::/32"]
        "#;
        let c = merge(&args(), toml).unwrap();
        let a = c.abuse();
        assert_eq!(
            a.recipients.as_deref(),
            Some(Path::new("/etc/ringmx/recipients"))
        );
        assert_eq!(
            (a.max_connect_rate, a.max_message_rate, a.max_recipient_rate),
            (60, 100, 500)
        );
        assert_eq!(a.greet_pause, Duration::from_secs(6));
        assert_eq!(a.trusted_networks.len(), 3);
        assert!(c.summary().contains("max-connect-rate=60 max-message-rate=100 max-recipient-rate=500 greet-pause=6s trusted-networks=10.0.0.0/8,192.0.2.25/32,2001:db8::/32"), "{}", c.summary());
        let flags = ServeArgs {
            max_message_rate: Some(7),
            greet_pause: Some(0),
            trusted_networks: vec![parse_cidr("127.0.0.0/8").unwrap()],
            ..args()
        };
        let c = merge(&flags, toml).unwrap();
        assert_eq!(c.abuse().max_message_rate, 7);
        assert_eq!(c.abuse().max_connect_rate, 60);
        assert!(c.abuse().greet_pause.is_zero());
        assert_eq!(
            c.abuse().trusted_networks,
            [parse_cidr("127.0.0.0/8").unwrap()]
        );
        let e = |toml| merge(&args(), toml).unwrap_err().to_string();
        assert!(e("max-recipient-rate = 1000001").contains("above the limit of 1000000"));
        assert!(e("greet-pause = 61").contains("above the limit of 60 s"));
        assert!(e("trusted-networks = [\"10.0.0.0/33\"]").contains("trusted-networks"));
        assert!(e("max-connect-rate = -1").contains("config file"));
    }

    #[test]
    fn data_timeout_from_file_and_flag_and_its_limits() {
        let c = merge(&args(), "data-timeout = 1200").unwrap();
        assert_eq!(c.data_timeout(), Duration::from_secs(1200));
        assert!(c.summary().contains("data-timeout=1200s"));
        let flags = ServeArgs {
            data_timeout: Some(5),
            ..args()
        };
        let c = merge(&flags, "data-timeout = 1200").unwrap();
        assert_eq!(
            c.session_config().data_timeout,
            Some(Duration::from_secs(5))
        );
        let e = |toml| merge(&args(), toml).unwrap_err().to_string();
        assert!(e("data-timeout = 0").contains("data-timeout must be at least 1"));
        assert!(e("data-timeout = 86401").contains("above the limit"));
    }

    #[test]
    fn file_values_are_used_and_flags_win() {
        let toml = r#"
            listen = ["0.0.0.0:25", "[::]:25"]
            domain = ["a.test", "b.test"]
            spool = "/var/spool/ringmx"
            reactors = 2
            hostname = "mx.a.test"
            sync = "none"
            max-message-size = 1000
            max-recipients = 5
            max-connections = 50
            max-connections-per-ip = 5
            idle-timeout = 30
        "#;
        let c = merge(&ServeArgs::default(), toml).unwrap();
        assert_eq!(c.listen().len(), 2);
        assert!(c.listen()[1].is_ipv6());
        assert_eq!(c.domains(), ["a.test", "b.test"]);
        assert_eq!(c.stats_path(), Path::new("/var/spool/ringmx/stats.sock"));
        assert_eq!(c.reactors(), 2);
        assert_eq!(c.sync(), SyncPolicy::None);
        assert_eq!(c.max_message_size(), 1000);
        assert_eq!(c.max_connections_per_ip(), Some(5));
        assert_eq!(c.idle_timeout(), Duration::from_secs(30));

        let flags = ServeArgs {
            listen: vec!["127.0.0.1:2626".parse().unwrap()],
            domain: vec!["c.test".into()],
            stats: Some("/run/ringmx/stats.sock".into()),
            sync: Some(SyncPolicy::Group),
            max_message_size: Some(2000),
            idle_timeout: Some(2),
            ..ServeArgs::default()
        };
        let c = merge(&flags, toml).unwrap();
        assert_eq!(
            c.listen(),
            ["127.0.0.1:2626".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(c.domains(), ["c.test"]);
        assert_eq!(c.stats_path(), Path::new("/run/ringmx/stats.sock"));
        assert_eq!(c.sync(), SyncPolicy::Group);
        assert_eq!(c.max_message_size(), 2000);
        assert_eq!(c.max_recipients(), 5);
        assert_eq!(c.idle_timeout(), Duration::from_secs(2));
    }

    #[test]
    fn dns_servers_and_mx_routes() {
        let c = merge(
            &args(),
            "dns-server = [\"127.0.0.1:5353\", \"192.0.2.53\", \"::1\"]\nrelay-to = \"mx:2525\"",
        )
        .unwrap();
        assert_eq!(
            c.dns_servers(),
            [
                "127.0.0.1:5353".parse::<SocketAddr>().unwrap(),
                "192.0.2.53:53".parse().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
        let d = c.delivery_config().unwrap();
        assert!(d.needs_resolver());
        assert_eq!(d.listen, c.listen());
        let e = merge(&args(), "dns-server = [\"ns.example\"]").unwrap_err();
        assert!(e.to_string().contains("IP:PORT"), "{e}");
        assert!(merge(&args(), "relay-to = \"mx:0\"").is_err());
    }

    #[test]
    fn dnsbl_zones_and_threshold() {
        let c = merge(
            &args(),
            "dnsbl = [\"Bl.Test.\", \"zen.test*3\"]\ndnsbl-threshold = 2",
        )
        .unwrap();
        assert_eq!(
            c.abuse().dnsbl,
            [("bl.test".to_string(), 1), ("zen.test".to_string(), 3)]
        );
        assert_eq!(c.abuse().dnsbl_threshold, 2);
        let d = merge(&args(), "").unwrap();
        assert_eq!(d.abuse().dnsbl_threshold, DEFAULT_DNSBL_THRESHOLD);
        for bad in [
            "\"\"",
            "\"bl..test\"",
            "\"bl.test*0\"",
            "\"bl.test*x\"",
            "\"bl test\"",
            "\"*2\"",
        ] {
            let e = merge(&args(), &format!("dnsbl = [{bad}]")).unwrap_err();
            assert!(e.to_string().contains("dnsbl"), "{bad}: {e}");
        }
        assert!(merge(&args(), "dnsbl-threshold = 0").is_err());
    }

    #[test]
    fn errors() {
        let e = |a: &ServeArgs, t: &str| merge(a, t).unwrap_err().to_string();
        assert!(e(&ServeArgs::default(), "").contains("--domain"));
        assert!(e(&args(), "listen = [\"localhost:25\"]").contains("not IP:port"));
        assert!(e(&args(), "listen = [\"1.2.3.4:25\", \"1.2.3.4:25\"]").contains("twice"));
        assert!(e(&args(), "max-mesage-size = 3").contains("unknown field"));
        assert!(e(&args(), "max-message-size = \"big\"").contains("t.toml"));
        assert!(e(&args(), "sync = \"always\"").contains("\"group\" or \"none\""));
        assert!(e(&args(), "reactors = 0").contains("between 1 and"));
        assert!(e(&args(), "max-recipients = 0").contains("max-recipients must be at least 1"));
        assert!(e(&args(), "idle-timeout = 0").contains("idle-timeout"));
        assert!(e(&args(), "idle-timeout = 99999").contains("above the limit"));
        assert!(e(&args(), "max-message-size = 99999999999").contains("above the limit"));
        assert!(e(&args(), "max-connections = 10\nmax-connections-per-ip = 11").contains("above"));
        assert!(e(&args(), "hostname = \"bad host\"").contains("hostname"));
        let bad_domain = ServeArgs {
            domain: vec!["exa mple.test".into()],
            ..ServeArgs::default()
        };
        assert!(e(&bad_domain, "").contains("not a valid domain"));
        let long = ServeArgs {
            stats: Some(PathBuf::from("/".repeat(200))),
            ..args()
        };
        assert!(e(&long, "").contains("longer than"));
        // Every message is one line.
        assert!(!e(&args(), "max-message-size = [").contains('\n'));
    }

    #[test]
    fn spool_path_that_is_a_file_is_refused() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let a = ServeArgs {
            spool: Some(f.path().to_path_buf()),
            ..args()
        };
        assert!(matches!(merge(&a, ""), Err(ConfigError::SpoolNotDir(_))));
    }

    #[test]
    fn read_error_names_the_file() {
        let a = ServeArgs {
            config: Some("/nonexistent/ringmx.toml".into()),
            ..args()
        };
        let msg = Config::load(&a).unwrap_err().to_string();
        assert!(msg.contains("/nonexistent/ringmx.toml"), "{msg}");
    }

    #[test]
    fn derived_configs() {
        let c = merge(&args(), "max-recipients = 7\nsync = \"none\"").unwrap();
        let s = c.session_config();
        assert_eq!(s.local_domains, ["example.test"]);
        assert_eq!(s.max_recipients, 7);
        assert_eq!(s.max_errors, DEFAULT_MAX_ERRORS);
        let sp = c.spool_config(3);
        assert_eq!(sp.reactor, 3);
        assert_eq!(sp.sync, SyncPolicy::None);
        assert_eq!(sp.dir, Path::new("spool"));
        assert!(c.summary().contains("sync=none"));
    }

    #[test]
    fn dns_names() {
        for ok in [
            "a",
            "example.test",
            "mx-1.example.test",
            "xn--bcher-kva.test",
        ] {
            assert!(is_dns_name(ok), "{ok}");
        }
        let long_label = "a".repeat(64);
        for bad in [
            "",
            "a..b",
            "-a.test",
            "a-.test",
            "a b",
            "a_b.test",
            long_label.as_str(),
        ] {
            assert!(!is_dns_name(bad), "{bad}");
        }
    }
}
