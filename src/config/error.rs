//! [`ConfigError`]: why a configuration is unusable, and its one-line message for the operator.
//!
//! Only the error type and its `Display`/`Error` impls: the checks that produce it are
//! `load`'s and `file`'s, and printing it is the caller's.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use super::{
    MAX_DATA_TIMEOUT_SECS, MAX_GREET_PAUSE_SECS, MAX_IDLE_TIMEOUT_SECS, MAX_MESSAGE_SIZE_LIMIT,
    MAX_RATE_LIMIT, MAX_REACTORS, MAX_TLS_HANDSHAKE_TIMEOUT_SECS, MAX_UNIX_SOCKET_PATH,
    MIN_SEGMENT_SIZE,
};

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
    /// A duration in seconds out of its range (name, value, limit): `verify-*`, the retry
    /// times, the queue lifetime, `compact-after`.
    SecsRange(&'static str, u64, u64),
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
            Self::SecsRange(name, n, max) => {
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
