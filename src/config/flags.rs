//! The `serve` (and `check-config`) flags, as clap parses them.
//!
//! This module only describes the flags. It does not apply defaults, read the TOML file or
//! validate anything: every option is an `Option` here so that [`Config::load`](super::Config)
//! can tell "given on the command line" (wins) from "absent" (falls back to the file, then the
//! default). The `[default: …]` shown by `--help` is printed from the same constants the
//! configuration falls back to, so the two cannot disagree.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use super::{
    TlsVersion, DEFAULT_DATA_TIMEOUT, DEFAULT_LISTEN, DEFAULT_MAX_CONNECTIONS, DEFAULT_SPOOL_DIR,
    DEFAULT_STATS_NAME,
};
use crate::relay::queue::{DEFAULT_MAX_QUEUE_LIFETIME, DEFAULT_RETRY_FIRST, DEFAULT_RETRY_MAX};
use crate::relay::stage::DEFAULT_COMPACT_AFTER;
use crate::smtp::{
    BareLf, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_ERRORS, DEFAULT_MAX_HOPS, DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_RECIPIENTS, DEFAULT_TLS_HANDSHAKE_TIMEOUT,
};
use crate::spool::{SyncPolicy, DEFAULT_SEGMENT_SIZE};

/// The options of `ringmx serve` (and `ringmx check-config`).
///
/// The same keys are accepted in the `--config` TOML file, spelled like the flags (kebab-case,
/// e.g. `max-message-size = 1048576`); a flag given on the command line wins over the file.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// Address to listen on, IPv4 `127.0.0.1:2525` or IPv6 `[::1]:2525` (repeatable).
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<SocketAddr>,
    /// A domain we accept mail for (repeatable; required here or in the config file).
    #[arg(long, value_name = "D")]
    pub domain: Vec<String>,
    /// The spool directory.
    #[arg(long, value_name = "DIR")]
    pub spool: Option<PathBuf>,
    /// The stats unix socket.
    #[arg(long, value_name = "PATH")]
    pub stats: Option<PathBuf>,
    /// Number of io_uring reactors (threads) [default: the CPUs this process may use].
    #[arg(long, value_name = "N")]
    pub reactors: Option<usize>,
    /// Our hostname in the greeting and the Received: header [default: the system's].
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// When to fsync: `group` (before every 250, shared by concurrent messages) or `none`
    /// (testing only: acknowledged mail can be lost).
    #[arg(long, value_name = "POLICY")]
    pub sync: Option<SyncPolicy>,
    /// Largest message accepted, in bytes (advertised as SIZE).
    #[arg(long, value_name = "BYTES")]
    pub max_message_size: Option<u64>,
    /// Recipients per message.
    #[arg(long, value_name = "N")]
    pub max_recipients: Option<usize>,
    /// Concurrent connections over all reactors; more get `421 4.7.0`.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Concurrent connections from one client IP address; more get `421 4.7.0`
    /// [default: no limit].
    #[arg(long, value_name = "N")]
    pub max_connections_per_ip: Option<usize>,
    /// How long a client may stay silent or take for one command, in seconds.
    #[arg(long, value_name = "SECS")]
    pub idle_timeout: Option<u64>,
    /// How long a whole message body may take, from the 354 to the final dot, in seconds, so
    /// a client dripping bytes cannot hold a connection forever.
    #[arg(long, value_name = "SECS")]
    pub data_timeout: Option<u64>,
    /// A bare LF (LF without CR) in a command or a body: `reject` it (500 5.5.2 / 550 5.6.0),
    /// or `normalize` it to CRLF for old clients. Bare CR is always refused, and only
    /// `<CRLF>.<CRLF>` ends a message either way.
    #[arg(long, value_name = "POLICY")]
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
    #[arg(long, value_name = "VERSION")]
    pub tls_min_version: Option<TlsVersion>,
    /// How long a client may take for the whole TLS handshake after STARTTLS, in seconds.
    #[arg(long, value_name = "SECS")]
    pub tls_handshake_timeout: Option<u64>,
    /// Write zeros ahead of the spool's appends, so that each fdatasync only flushes data
    /// (cheaper for many small messages, but every segment byte is written twice: costly for
    /// bulk mail; see docs/spool.md, "Prepared space"). Off by default.
    #[arg(long)]
    pub prepare_segments: bool,
    /// Start a new spool segment once the current one reaches this many bytes (a soft limit;
    /// at least 65536).
    #[arg(long, value_name = "BYTES")]
    pub segment_size: Option<u64>,
    /// A TOML file with the same keys as these flags (kebab-case); flags win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A load balancer's address or CIDR block (repeatable): connections from it must begin
    /// with a PROXY protocol header (v1 or v2), whose client address is then used for limits,
    /// logs, `Received:` and stats. Default: none.
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr_flag)]
    pub proxy_protocol_from: Vec<ipnet::IpNet>,
    /// Deliver mail for every --domain onward to this next hop: `smtp:[host]:port`,
    /// `lmtp:[host]:port`, `lmtp:unix:/path`, or `mx` / `mx:PORT` for the recipient domain's
    /// MX hosts (more routes: `[routes]` in the config file).
    /// Without any route, mail is only stored.
    #[arg(long, value_name = "TARGET")]
    pub relay_to: Option<String>,
    /// A recipient not delivered this long after arrival fails (and its sender gets a DSN), in
    /// seconds.
    #[arg(long, value_name = "SECS")]
    pub max_queue_lifetime: Option<u64>,
    /// First retry after a deferred delivery, in seconds (then doubling up to --retry-max).
    #[arg(long, value_name = "SECS")]
    pub retry_first: Option<u64>,
    /// Longest wait between delivery retries, in seconds.
    #[arg(long, value_name = "SECS")]
    pub retry_max: Option<u64>,
    /// Also send a copy of every bounce (DSN) to this address, e.g. the postmaster. Default:
    /// none.
    #[arg(long, value_name = "ADDRESS")]
    pub bounce_copy: Option<String>,
    /// Warn the sender (a DSN with `Action: delayed`, once per recipient) when a recipient is
    /// still deferred this many seconds after arrival. Default: never.
    #[arg(long, value_name = "SECS")]
    pub delay_warning: Option<u64>,
    /// Compact a sealed spool segment this many seconds old whose undelivered messages fill
    /// less than a quarter of it: copy them forward and delete it.
    #[arg(long, value_name = "SECS")]
    pub compact_after: Option<u64>,
    /// The recipient table: one address per line, or `@domain` for a whole domain, `#`
    /// comments, case-insensitive. A recipient of a local domain not in it gets `550 5.1.1`
    /// at RCPT; SIGHUP reloads it (a bad file keeps the old table) [default: none, every
    /// address of a --domain is accepted].
    #[arg(long, value_name = "FILE")]
    pub recipients: Option<PathBuf>,
    /// New connections per minute from one client (an IPv4 address, an IPv6 /64), over all
    /// reactors; more get `421 4.7.0`. 0: no limit.
    #[arg(long, value_name = "N")]
    pub max_connect_rate: Option<u32>,
    /// MAIL commands per minute from one client; more get `450 4.7.1`. 0: no limit.
    #[arg(long, value_name = "N")]
    pub max_message_rate: Option<u32>,
    /// RCPT commands per minute from one client; more get `450 4.7.1`. 0: no limit.
    #[arg(long, value_name = "N")]
    pub max_recipient_rate: Option<u32>,
    /// Send `220-` first, wait this long, then the final `220 ` line; a client that talks
    /// before it gets `554 5.5.1` and is disconnected (pregreet). 0: off.
    #[arg(long, value_name = "SECS")]
    pub greet_pause: Option<u64>,
    /// A client address or CIDR block exempt from the greet pause and the rate limits
    /// (repeatable). Default: none.
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr_flag)]
    pub trusted_networks: Vec<ipnet::IpNet>,
    /// A message carrying more `Received:` header fields than this is refused at the end of
    /// its data with `554 5.4.6 Too many hops` (a mail loop); 0: no limit.
    #[arg(long, value_name = "N")]
    pub max_hops: Option<u32>,
    /// Error replies (refused commands and recipients) a session may get since its last
    /// accepted message; the last of them is followed by `421 4.7.0` and the close. 0: no
    /// limit.
    #[arg(long, value_name = "N")]
    pub max_errors: Option<u32>,
    /// A DNS blocklist zone, with an optional weight (`ZONE*WEIGHT`, default 1; repeatable):
    /// the client's address is looked up in each at connect time; at or over
    /// --dnsbl-threshold every RCPT gets `554 5.7.1 ... blocked using ZONE`. A failed lookup
    /// counts as not listed. Default: none.
    #[arg(long, value_name = "ZONE[*WEIGHT]")]
    pub dnsbl: Vec<String>,
    /// The sum of the weights of the listing zones at which a client is refused.
    #[arg(long, value_name = "N")]
    pub dnsbl_threshold: Option<u32>,
    /// A DNS server for MX routes and DNSBL lookups, `IP` or `IP:PORT` (repeatable)
    /// [default: the servers of /etc/resolv.conf].
    #[arg(long, value_name = "IP[:PORT]", value_parser = parse_dns_server_flag)]
    pub dns_server: Vec<SocketAddr>,
    /// Verify recipients with the next hop at RCPT, on every route that does not say
    /// otherwise (`verify = false` in its `[routes]` table): `MAIL FROM:<>`, `RCPT TO`, `RSET`
    /// over a reused connection; refused → `550 5.1.1`, no answer in time or 4xx →
    /// `450 4.1.1`. Addresses listed in --recipients are not asked. Needs a route.
    #[arg(long)]
    pub verify_recipients: bool,
    /// How long a verification probe may take, in seconds.
    #[arg(long, value_name = "SECS")]
    pub verify_timeout: Option<u64>,
    /// How long an address the next hop accepted is taken without asking again, in seconds.
    #[arg(long, value_name = "SECS")]
    pub verify_cache_accept: Option<u64>,
    /// How long an address the next hop refused is refused without asking again, in seconds.
    #[arg(long, value_name = "SECS")]
    pub verify_cache_refuse: Option<u64>,
}

/// `--dns-server`: `IP` (port 53) or `IP:PORT` (`[v6]:PORT`).
fn parse_dns_server_flag(s: &str) -> Result<SocketAddr, String> {
    super::parse_dns_server(s).ok_or_else(|| format!("{s:?} is not an IP address or IP:PORT"))
}

/// `--proxy-protocol-from`: an address or a CIDR block.
fn parse_cidr_flag(s: &str) -> Result<ipnet::IpNet, String> {
    super::parse_cidr(s).ok_or_else(|| format!("{s:?} is not an address or CIDR block"))
}

impl ServeArgs {
    /// The default of each option that has one, by clap argument id, as `--help` shows it.
    /// Every value comes from the constant the configuration falls back to, so the help text
    /// cannot drift from what `serve` does. (The fields are `Option`s, so that a flag can win
    /// over the TOML file, and clap cannot know these defaults itself.)
    pub fn defaults() -> Vec<(&'static str, String)> {
        vec![
            ("listen", DEFAULT_LISTEN.to_string()),
            ("spool", format!("./{DEFAULT_SPOOL_DIR}")),
            ("stats", format!("<spool>/{DEFAULT_STATS_NAME}")),
            ("sync", SyncPolicy::Group.name().to_string()),
            (
                "max_message_size",
                format!(
                    "{DEFAULT_MAX_MESSAGE_SIZE} = {} MiB",
                    DEFAULT_MAX_MESSAGE_SIZE >> 20
                ),
            ),
            ("max_recipients", DEFAULT_MAX_RECIPIENTS.to_string()),
            ("max_connections", DEFAULT_MAX_CONNECTIONS.to_string()),
            ("idle_timeout", DEFAULT_IDLE_TIMEOUT.as_secs().to_string()),
            ("data_timeout", DEFAULT_DATA_TIMEOUT.as_secs().to_string()),
            ("bare_lf", BareLf::default().name().to_string()),
            ("tls_min_version", TlsVersion::default().name().to_string()),
            (
                "tls_handshake_timeout",
                DEFAULT_TLS_HANDSHAKE_TIMEOUT.as_secs().to_string(),
            ),
            (
                "max_queue_lifetime",
                DEFAULT_MAX_QUEUE_LIFETIME.as_secs().to_string(),
            ),
            ("retry_first", DEFAULT_RETRY_FIRST.as_secs().to_string()),
            ("retry_max", DEFAULT_RETRY_MAX.as_secs().to_string()),
            (
                "segment_size",
                format!(
                    "{DEFAULT_SEGMENT_SIZE} = {} MiB",
                    DEFAULT_SEGMENT_SIZE >> 20
                ),
            ),
            ("compact_after", DEFAULT_COMPACT_AFTER.as_secs().to_string()),
            ("max_connect_rate", "0".to_string()),
            ("max_message_rate", "0".to_string()),
            ("max_recipient_rate", "0".to_string()),
            ("greet_pause", "0".to_string()),
            (
                "verify_timeout",
                crate::relay::verify::DEFAULT_TIMEOUT.as_secs().to_string(),
            ),
            (
                "verify_cache_accept",
                crate::relay::verify::DEFAULT_CACHE_ACCEPT
                    .as_secs()
                    .to_string(),
            ),
            (
                "verify_cache_refuse",
                crate::relay::verify::DEFAULT_CACHE_REFUSE
                    .as_secs()
                    .to_string(),
            ),
            ("max_hops", DEFAULT_MAX_HOPS.to_string()),
            ("max_errors", DEFAULT_MAX_ERRORS.to_string()),
            (
                "dnsbl_threshold",
                super::DEFAULT_DNSBL_THRESHOLD.to_string(),
            ),
        ]
    }

    /// Appends ` [default: …]` from [`Self::defaults`] to the help of each option of `cmd`
    /// (a subcommand built from these arguments), the way clap prints its own defaults.
    pub fn show_defaults(mut cmd: clap::Command) -> clap::Command {
        for (id, default) in Self::defaults() {
            cmd = cmd.mut_arg(id, |arg| {
                let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
                arg.help(format!("{help} [default: {default}]"))
            });
        }
        cmd
    }
}
