//! The `serve` (and `check-config`) flags, as clap parses them.
//!
//! This module only describes the flags. It does not apply defaults, read the TOML file or
//! validate anything: every option is an `Option` here so that [`Config::load`](super::Config)
//! can tell "given on the command line" (wins) from "absent" (falls back to the file, then the
//! default). The `[default: …]` shown by `--help` is printed from the same constants the
//! configuration falls back to, so the two cannot disagree.

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use super::{
    TlsVersion, DEFAULT_DATA_TIMEOUT, DEFAULT_LISTEN, DEFAULT_MAX_CONNECTIONS, DEFAULT_SPOOL_DIR,
    DEFAULT_STATS_NAME,
};
use crate::smtp::{
    BareLf, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_MAX_RECIPIENTS,
    DEFAULT_TLS_HANDSHAKE_TIMEOUT,
};
use crate::spool::SyncPolicy;

/// The options of `ringmx serve` (and `ringmx check-config`).
///
/// The same keys are accepted in the `--config` TOML file, spelled like the flags (kebab-case,
/// e.g. `max-message-size = 1048576`); a flag given on the command line wins over the file.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// Address to listen on, IPv4 `127.0.0.1:2525` or IPv6 `[::1]:2525` (repeatable).
    #[arg(long, value_name = "ADDR", help = with_default(
        "Address to listen on, IPv4 `127.0.0.1:2525` or IPv6 `[::1]:2525` (repeatable)",
        DEFAULT_LISTEN,
    ))]
    pub listen: Vec<SocketAddr>,
    /// A domain we accept mail for (repeatable; required here or in the config file).
    #[arg(long, value_name = "D")]
    pub domain: Vec<String>,
    /// The spool directory.
    #[arg(long, value_name = "DIR", help = with_default(
        "The spool directory",
        format!("./{DEFAULT_SPOOL_DIR}"),
    ))]
    pub spool: Option<PathBuf>,
    /// The stats unix socket.
    #[arg(long, value_name = "PATH", help = with_default(
        "The stats unix socket",
        format!("<spool>/{DEFAULT_STATS_NAME}"),
    ))]
    pub stats: Option<PathBuf>,
    /// Number of io_uring reactors (threads) [default: the CPUs this process may use].
    #[arg(long, value_name = "N")]
    pub reactors: Option<usize>,
    /// Our hostname in the greeting and the Received: header [default: the system's].
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// When to fsync: `group` (before every 250, shared by concurrent messages) or `none`
    /// (testing only: acknowledged mail can be lost).
    #[arg(long, value_name = "POLICY", help = with_default(
        "When to fsync: `group` (before every 250, shared by concurrent messages) or `none` \
         (testing only: acknowledged mail can be lost)",
        SyncPolicy::Group.name(),
    ))]
    pub sync: Option<SyncPolicy>,
    /// Largest message accepted, in bytes (advertised as SIZE).
    #[arg(long, value_name = "BYTES", help = with_default(
        "Largest message accepted, in bytes (advertised as SIZE)",
        format!("{DEFAULT_MAX_MESSAGE_SIZE} = {} MiB", DEFAULT_MAX_MESSAGE_SIZE >> 20),
    ))]
    pub max_message_size: Option<u64>,
    /// Recipients per message.
    #[arg(long, value_name = "N", help = with_default(
        "Recipients per message",
        DEFAULT_MAX_RECIPIENTS,
    ))]
    pub max_recipients: Option<usize>,
    /// Concurrent connections over all reactors; more get `421 4.7.0`.
    #[arg(long, value_name = "N", help = with_default(
        "Concurrent connections over all reactors; more get `421 4.7.0`",
        DEFAULT_MAX_CONNECTIONS,
    ))]
    pub max_connections: Option<usize>,
    /// Concurrent connections from one client IP address; more get `421 4.7.0`
    /// [default: no limit].
    #[arg(long, value_name = "N")]
    pub max_connections_per_ip: Option<usize>,
    /// How long a client may stay silent or take for one command, in seconds.
    #[arg(long, value_name = "SECS", help = with_default(
        "How long a client may stay silent or take for one command, in seconds",
        DEFAULT_IDLE_TIMEOUT.as_secs(),
    ))]
    pub idle_timeout: Option<u64>,
    /// How long a whole message body may take, from the 354 to the final dot, in seconds, so
    /// a client dripping bytes cannot hold a connection forever.
    #[arg(long, value_name = "SECS", help = with_default(
        "How long a whole message body may take, from the 354 to the final dot, in seconds, so \
         a client dripping bytes cannot hold a connection forever",
        DEFAULT_DATA_TIMEOUT.as_secs(),
    ))]
    pub data_timeout: Option<u64>,
    /// A bare LF (LF without CR) in a command or a body: `reject` it (500 5.5.2 / 550 5.6.0),
    /// or `normalize` it to CRLF for old clients. Bare CR is always refused, and only
    /// <CRLF>.<CRLF> ends a message either way.
    #[arg(long, value_name = "POLICY", help = with_default(
        "A bare LF (LF without CR) in a command or a body: `reject` it (500 5.5.2 / 550 5.6.0), \
         or `normalize` it to CRLF for old clients. Bare CR is always refused, and only \
         <CRLF>.<CRLF> ends a message either way",
        BareLf::default().name(),
    ))]
    pub bare_lf: Option<BareLf>,
    /// A PEM certificate chain for STARTTLS, leaf first (repeatable; the n-th goes with the
    /// n-th --tls-key). The first pair is the default; another is used when the client's SNI
    /// matches one of its names. Without any, STARTTLS is not offered.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Vec<PathBuf>,
    /// The PEM private key (PKCS#8, PKCS#1 or SEC1) of the --tls-cert at the same position.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Vec<PathBuf>,
    /// Lowest TLS version accepted: `1.2` or `1.3`.
    #[arg(long, value_name = "VERSION", help = with_default(
        "Lowest TLS version accepted: `1.2` or `1.3`",
        TlsVersion::default().name(),
    ))]
    pub tls_min_version: Option<TlsVersion>,
    /// How long a client may take for the whole TLS handshake after STARTTLS, in seconds.
    #[arg(long, value_name = "SECS", help = with_default(
        "How long a client may take for the whole TLS handshake after STARTTLS, in seconds",
        DEFAULT_TLS_HANDSHAKE_TIMEOUT.as_secs(),
    ))]
    pub tls_handshake_timeout: Option<u64>,
    /// A TOML file with the same keys as these flags (kebab-case); flags win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// `text [default: value]`, the way clap prints its own defaults.
fn with_default(text: &str, default: impl Display) -> String {
    format!("{text} [default: {default}]")
}
