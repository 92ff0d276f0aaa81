//! Building a [`Config`]: [`Config::load`] and [`Config::from_toml`] take the `serve` flags and
//! the TOML file, let every flag given on the command line win over the file, fill in the
//! defaults and check every value, stopping at the first problem ([`ConfigError`]).
//!
//! `Config::merge` is the list of steps, in the order the checks are made (the first error
//! found is the one reported); each step is a small function of the flag and the file's value.
//! Those of the server, the session limits, TLS and the abuse controls are here; those of
//! delivery and recipient verification are `delivery`'s.
//!
//! It does not read or parse the file (`file`), parse single values such as CIDR blocks or
//! DNSBL zones (`parse`), or hand settings to other layers (`access`). It creates nothing:
//! it only looks at the spool path (and, through `delivery`, loads the routes' TLS trust
//! anchors to check them).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use super::delivery;
use super::file::{parse_file, read_file, FileConfig};
use super::parse::{is_dns_name, parse_cidr, parse_dns_server, parse_dnsbl_zone};
use super::{
    AbuseConfig, Config, ConfigError, ServeArgs, TlsPair, DEFAULT_DATA_TIMEOUT,
    DEFAULT_DNSBL_THRESHOLD, DEFAULT_LISTEN, DEFAULT_MAX_CONNECTIONS, DEFAULT_SPOOL_DIR,
    DEFAULT_STATS_NAME, MAX_DATA_TIMEOUT_SECS, MAX_DNSBL_ZONES, MAX_GREET_PAUSE_SECS,
    MAX_IDLE_TIMEOUT_SECS, MAX_MESSAGE_SIZE_LIMIT, MAX_RATE_LIMIT, MAX_REACTORS,
    MAX_TLS_HANDSHAKE_TIMEOUT_SECS, MAX_UNIX_SOCKET_PATH, MIN_SEGMENT_SIZE,
};
use crate::relay::Routes;
use crate::smtp::{
    BareLf, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_ERRORS, DEFAULT_MAX_HOPS, DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_RECIPIENTS, DEFAULT_TLS_HANDSHAKE_TIMEOUT,
};
use crate::spool::{SyncPolicy, DEFAULT_SEGMENT_SIZE};

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

    pub(super) fn merge(
        args: &ServeArgs,
        file: FileConfig,
        reactors_default: impl FnOnce() -> usize,
        hostname_default: impl FnOnce() -> String,
    ) -> Result<Self, ConfigError> {
        // Each step checks its values in turn and returns the first error. The steps keep the
        // order the checks have always had, so the error reported (and tested) stays the same:
        // the verification checks, for instance, sit between the greet pause and the DNSBLs.
        let listen = listen_addrs(&args.listen, file.listen)?;
        let domains = domains(&args.domain, file.domain)?;
        let spool_dir = spool_dir(args.spool.as_deref(), file.spool)?;
        let stats_path = stats_path(args.stats.as_deref(), file.stats, &spool_dir)?;
        let reactors = reactors(args.reactors, file.reactors, reactors_default)?;
        let hostname = hostname(args.hostname.as_deref(), file.hostname, hostname_default)?;
        let sync = sync_policy(args.sync, file.sync)?;

        let max_message_size = max_message_size(args.max_message_size, file.max_message_size)?;
        let max_recipients = max_recipients(args.max_recipients, file.max_recipients)?;
        let max_connections = max_connections(args.max_connections, file.max_connections)?;
        let max_connections_per_ip = max_connections_per_ip(
            args.max_connections_per_ip,
            file.max_connections_per_ip,
            max_connections,
        )?;
        let idle_timeout = idle_timeout(args.idle_timeout, file.idle_timeout)?;
        let data_timeout = data_timeout(args.data_timeout, file.data_timeout)?;
        let prepare_segments = args.prepare_segments || file.prepare_segments.unwrap_or(false);
        let segment_size = segment_size(args.segment_size, file.segment_size)?;
        let bare_lf = bare_lf(args.bare_lf, file.bare_lf)?;
        let proxy_protocol_from = networks(
            &args.proxy_protocol_from,
            file.proxy_protocol_from,
            ConfigError::BadCidr,
        )?;

        let tls = tls_pairs(&args.tls_cert, &args.tls_key, file.tls)?;
        let tls_min_version = args
            .tls_min_version
            .or(file.tls_min_version)
            .unwrap_or_default();
        let tls_handshake_timeout =
            tls_handshake_timeout(args.tls_handshake_timeout, file.tls_handshake_timeout)?;

        let verify_all = args.verify_recipients || file.verify_recipients.unwrap_or(false);
        let relay_to = args.relay_to.clone().or(file.relay_to);
        let routes = delivery::routes(file.routes, relay_to, &domains, verify_all)?;
        let retry_first = delivery::retry_first(args.retry_first, file.retry_first)?;
        let retry_max = delivery::retry_max(args.retry_max, file.retry_max)?;
        let max_queue_lifetime =
            delivery::max_queue_lifetime(args.max_queue_lifetime, file.max_queue_lifetime)?;
        let bounce_copy = delivery::bounce_copy(args.bounce_copy.as_deref(), file.bounce_copy)?;
        let delay_warning = delivery::delay_warning(args.delay_warning, file.delay_warning)?;
        let compact_after = delivery::compact_after(args.compact_after, file.compact_after)?;
        delivery::check_retry_order(retry_first, retry_max)?;

        let greet_pause = greet_pause(args.greet_pause, file.greet_pause)?;
        let trusted_networks = networks(
            &args.trusted_networks,
            file.trusted_networks,
            ConfigError::BadTrustedNetwork,
        )?;
        delivery::check_verify_has_route(verify_all, &routes)?;
        let verify_timeout = delivery::verify_timeout(args.verify_timeout, file.verify_timeout)?;
        let verify_cache_accept =
            delivery::verify_cache_accept(args.verify_cache_accept, file.verify_cache_accept)?;
        let verify_cache_refuse =
            delivery::verify_cache_refuse(args.verify_cache_refuse, file.verify_cache_refuse)?;
        let dnsbl = dnsbl_zones(&args.dnsbl, file.dnsbl)?;
        let dnsbl_threshold = dnsbl_threshold(args.dnsbl_threshold, file.dnsbl_threshold)?;
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

        let dns_servers = dns_servers(&args.dns_server, file.dns_server)?;
        let max_hops = args.max_hops.or(file.max_hops).unwrap_or(DEFAULT_MAX_HOPS);
        let max_errors = args
            .max_errors
            .or(file.max_errors)
            .unwrap_or(DEFAULT_MAX_ERRORS);

        Ok(Self {
            max_hops,
            max_errors,
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
            domains,
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
}

/// The number of CPUs this process may run on (`sched_getaffinity`), at least 1.
pub fn default_reactors() -> usize {
    crate::sys::allowed_cpus().len().max(1)
}

/// The system's host name ([`crate::sys::hostname`]) in lower case, or `localhost`.
fn system_hostname() -> String {
    crate::sys::hostname().map_or_else(|| "localhost".to_string(), |h| h.to_ascii_lowercase())
}

// ---- where it listens, what it serves, where it stores --------------------------------------

/// `--listen` over `listen` over [`DEFAULT_LISTEN`], parsed and checked by [`check_listen`].
fn listen_addrs(
    flag: &[SocketAddr],
    file: Option<Vec<String>>,
) -> Result<Vec<SocketAddr>, ConfigError> {
    let listen = if !flag.is_empty() {
        flag.to_vec()
    } else if let Some(list) = file {
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
    check_listen(&listen)?;
    Ok(listen)
}

/// No address twice, no wildcard sharing a port with an address of its family, at least one.
fn check_listen(listen: &[SocketAddr]) -> Result<(), ConfigError> {
    let mut seen = HashSet::new();
    for a in listen {
        if !seen.insert(*a) {
            return Err(ConfigError::DuplicateListen(*a));
        }
    }
    for (i, a) in listen.iter().enumerate() {
        for b in &listen[i + 1..] {
            let same_port = a.port() == b.port() && a.port() != 0;
            let same_family = a.is_ipv4() == b.is_ipv4();
            if same_port && same_family && (a.ip().is_unspecified() || b.ip().is_unspecified()) {
                return Err(ConfigError::OverlappingListen(*a, *b));
            }
        }
    }
    if listen.is_empty() {
        return Err(ConfigError::BadListen(String::new()));
    }
    Ok(())
}

/// `--domain` over `domain`: at least one, each a DNS name, lower case, without duplicates.
fn domains(flag: &[String], file: Option<Vec<String>>) -> Result<Vec<String>, ConfigError> {
    let domains = if flag.is_empty() {
        file.unwrap_or_default()
    } else {
        flag.to_vec()
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
    Ok(domains_lc)
}

/// `--spool` over `spool` over [`DEFAULT_SPOOL_DIR`]; if it exists, it must be a directory.
fn spool_dir(flag: Option<&Path>, file: Option<PathBuf>) -> Result<PathBuf, ConfigError> {
    let spool_dir = flag
        .map(Path::to_path_buf)
        .or(file)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SPOOL_DIR));
    if spool_dir.exists() && !spool_dir.is_dir() {
        return Err(ConfigError::SpoolNotDir(spool_dir));
    }
    Ok(spool_dir)
}

/// `--stats` over `stats` over [`DEFAULT_STATS_NAME`] in the spool; it must fit in `sun_path`.
fn stats_path(
    flag: Option<&Path>,
    file: Option<PathBuf>,
    spool_dir: &Path,
) -> Result<PathBuf, ConfigError> {
    let stats_path = flag
        .map(Path::to_path_buf)
        .or(file)
        .unwrap_or_else(|| spool_dir.join(DEFAULT_STATS_NAME));
    if stats_path.as_os_str().len() > MAX_UNIX_SOCKET_PATH {
        return Err(ConfigError::StatsPathTooLong(stats_path));
    }
    Ok(stats_path)
}

/// `--reactors` over `reactors` over `default()` (called only then), 1 to [`MAX_REACTORS`].
fn reactors(
    flag: Option<usize>,
    file: Option<usize>,
    default: impl FnOnce() -> usize,
) -> Result<usize, ConfigError> {
    let reactors = match flag.or(file) {
        Some(n) => n,
        None => default(),
    };
    if !(1..=MAX_REACTORS).contains(&reactors) {
        return Err(ConfigError::Reactors(reactors));
    }
    Ok(reactors)
}

/// `--hostname` over `hostname` (lower case, no final dot) over `default()`: a DNS name.
fn hostname(
    flag: Option<&str>,
    file: Option<String>,
    default: impl FnOnce() -> String,
) -> Result<String, ConfigError> {
    let hostname = match flag.or(file.as_deref()) {
        Some(h) => h.trim().trim_end_matches('.').to_ascii_lowercase(),
        None => default(),
    };
    if !is_dns_name(&hostname) {
        return Err(ConfigError::BadHostname(hostname));
    }
    Ok(hostname)
}

/// `--sync` over `sync` (by name) over [`SyncPolicy::Group`].
fn sync_policy(flag: Option<SyncPolicy>, file: Option<String>) -> Result<SyncPolicy, ConfigError> {
    Ok(match (flag, file) {
        (Some(p), _) => p,
        (None, Some(s)) => SyncPolicy::from_name(&s).ok_or(ConfigError::BadSync(s))?,
        (None, None) => SyncPolicy::Group,
    })
}

// ---- session limits -------------------------------------------------------------------------

/// `--max-message-size` over the file over the session's default: 1 to [`MAX_MESSAGE_SIZE_LIMIT`].
fn max_message_size(flag: Option<u64>, file: Option<u64>) -> Result<u64, ConfigError> {
    let max_message_size = flag.or(file).unwrap_or(DEFAULT_MAX_MESSAGE_SIZE);
    if max_message_size == 0 {
        return Err(ConfigError::Zero("max-message-size"));
    }
    if max_message_size > MAX_MESSAGE_SIZE_LIMIT {
        return Err(ConfigError::MessageSizeTooLarge(max_message_size));
    }
    Ok(max_message_size)
}

/// `--max-recipients` over the file over the session's default, not zero.
fn max_recipients(flag: Option<usize>, file: Option<usize>) -> Result<usize, ConfigError> {
    let max_recipients = flag.or(file).unwrap_or(DEFAULT_MAX_RECIPIENTS);
    if max_recipients == 0 {
        return Err(ConfigError::Zero("max-recipients"));
    }
    Ok(max_recipients)
}

/// `--max-connections` over the file over [`DEFAULT_MAX_CONNECTIONS`], not zero.
fn max_connections(flag: Option<usize>, file: Option<usize>) -> Result<usize, ConfigError> {
    let max_connections = flag.or(file).unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if max_connections == 0 {
        return Err(ConfigError::Zero("max-connections"));
    }
    Ok(max_connections)
}

/// `--max-connections-per-ip` over the file, if any: not zero, not above `total`.
fn max_connections_per_ip(
    flag: Option<usize>,
    file: Option<usize>,
    total: usize,
) -> Result<Option<usize>, ConfigError> {
    let max_connections_per_ip = flag.or(file);
    match max_connections_per_ip {
        Some(0) => Err(ConfigError::Zero("max-connections-per-ip")),
        Some(per_ip) if per_ip > total => Err(ConfigError::PerIpAboveTotal { per_ip, total }),
        _ => Ok(max_connections_per_ip),
    }
}

/// `--idle-timeout` over the file: 1 to [`MAX_IDLE_TIMEOUT_SECS`] s, or the session's default.
fn idle_timeout(flag: Option<u64>, file: Option<u64>) -> Result<Duration, ConfigError> {
    match flag.or(file) {
        Some(0) => Err(ConfigError::Zero("idle-timeout")),
        Some(s) if s > MAX_IDLE_TIMEOUT_SECS => Err(ConfigError::IdleTimeoutTooLong(s)),
        Some(s) => Ok(Duration::from_secs(s)),
        None => Ok(DEFAULT_IDLE_TIMEOUT),
    }
}

/// `--data-timeout` over the file: 1 to [`MAX_DATA_TIMEOUT_SECS`] s, or [`DEFAULT_DATA_TIMEOUT`].
fn data_timeout(flag: Option<u64>, file: Option<u64>) -> Result<Duration, ConfigError> {
    match flag.or(file) {
        Some(0) => Err(ConfigError::Zero("data-timeout")),
        Some(s) if s > MAX_DATA_TIMEOUT_SECS => Err(ConfigError::DataTimeoutTooLong(s)),
        Some(s) => Ok(Duration::from_secs(s)),
        None => Ok(DEFAULT_DATA_TIMEOUT),
    }
}

/// `--segment-size` over the file: at least [`MIN_SEGMENT_SIZE`], or [`DEFAULT_SEGMENT_SIZE`].
fn segment_size(flag: Option<u64>, file: Option<u64>) -> Result<u64, ConfigError> {
    match flag.or(file) {
        Some(n) if n < MIN_SEGMENT_SIZE => Err(ConfigError::SegmentSize(n)),
        Some(n) => Ok(n),
        None => Ok(DEFAULT_SEGMENT_SIZE),
    }
}

/// `--bare-lf` over `bare-lf` (by name) over the session's default.
fn bare_lf(flag: Option<BareLf>, file: Option<String>) -> Result<BareLf, ConfigError> {
    Ok(match (flag, file) {
        (Some(p), _) => p,
        (None, Some(s)) => BareLf::from_name(&s).ok_or(ConfigError::BadBareLf(s))?,
        (None, None) => BareLf::default(),
    })
}

/// The flag's networks if any, else the file's, each parsed by [`parse_cidr`] (`bad`: the error).
fn networks(
    flag: &[IpNet],
    file: Option<Vec<String>>,
    bad: fn(String) -> ConfigError,
) -> Result<Vec<IpNet>, ConfigError> {
    if !flag.is_empty() {
        return Ok(flag.to_vec());
    }
    let mut nets = Vec::new();
    for s in file.unwrap_or_default() {
        nets.push(parse_cidr(&s).ok_or_else(|| bad(s))?);
    }
    Ok(nets)
}

// ---- TLS ------------------------------------------------------------------------------------

/// `--tls-cert`/`--tls-key` (as many of each) paired in order, over the file's `tls` list.
fn tls_pairs(
    certs: &[PathBuf],
    keys: &[PathBuf],
    file: Option<Vec<TlsPair>>,
) -> Result<Vec<TlsPair>, ConfigError> {
    if certs.is_empty() && keys.is_empty() {
        return Ok(file.unwrap_or_default());
    }
    if certs.len() != keys.len() {
        return Err(ConfigError::TlsPairs {
            certs: certs.len(),
            keys: keys.len(),
        });
    }
    Ok(certs
        .iter()
        .zip(keys)
        .map(|(cert, key)| TlsPair {
            cert: cert.clone(),
            key: key.clone(),
        })
        .collect())
}

/// `--tls-handshake-timeout` over the file: 1 to [`MAX_TLS_HANDSHAKE_TIMEOUT_SECS`] s, or the
/// session's default.
fn tls_handshake_timeout(flag: Option<u64>, file: Option<u64>) -> Result<Duration, ConfigError> {
    match flag.or(file) {
        Some(0) => Err(ConfigError::Zero("tls-handshake-timeout")),
        Some(s) if s > MAX_TLS_HANDSHAKE_TIMEOUT_SECS => {
            Err(ConfigError::TlsHandshakeTimeoutTooLong(s))
        }
        Some(s) => Ok(Duration::from_secs(s)),
        None => Ok(DEFAULT_TLS_HANDSHAKE_TIMEOUT),
    }
}

// ---- abuse controls and resolvers -----------------------------------------------------------

/// `--greet-pause` over the file: 0 (off) by default, at most [`MAX_GREET_PAUSE_SECS`].
fn greet_pause(flag: Option<u64>, file: Option<u64>) -> Result<Duration, ConfigError> {
    match flag.or(file).unwrap_or(0) {
        s if s > MAX_GREET_PAUSE_SECS => Err(ConfigError::GreetPauseTooLong(s)),
        s => Ok(Duration::from_secs(s)),
    }
}

/// `--dnsbl` over `dnsbl`, each parsed by [`parse_dnsbl_zone`], at most [`MAX_DNSBL_ZONES`].
fn dnsbl_zones(
    flag: &[String],
    file: Option<Vec<String>>,
) -> Result<Vec<(String, u32)>, ConfigError> {
    let specs = if flag.is_empty() {
        file.unwrap_or_default()
    } else {
        flag.to_vec()
    };
    let mut dnsbl = Vec::new();
    for s in &specs {
        dnsbl.push(parse_dnsbl_zone(s).map_err(ConfigError::Dnsbl)?);
    }
    if dnsbl.len() > MAX_DNSBL_ZONES {
        return Err(ConfigError::Dnsbl(format!(
            "{} dnsbl zones: at most {MAX_DNSBL_ZONES}",
            dnsbl.len()
        )));
    }
    Ok(dnsbl)
}

/// `--dnsbl-threshold` over the file: not zero, or [`DEFAULT_DNSBL_THRESHOLD`].
fn dnsbl_threshold(flag: Option<u32>, file: Option<u32>) -> Result<u32, ConfigError> {
    match flag.or(file) {
        Some(0) => Err(ConfigError::Zero("dnsbl-threshold")),
        Some(n) => Ok(n),
        None => Ok(DEFAULT_DNSBL_THRESHOLD),
    }
}

/// A per-minute rate (`name`), flag over file, 0 (off) by default, at most [`MAX_RATE_LIMIT`].
fn rate(flag: Option<u32>, file: Option<u32>, name: &'static str) -> Result<u32, ConfigError> {
    match flag.or(file).unwrap_or(0) {
        n if n > MAX_RATE_LIMIT => Err(ConfigError::RateTooHigh(name, n)),
        n => Ok(n),
    }
}

/// `--dns-server` over `dns-server`, each parsed by [`parse_dns_server`]; empty: the system's.
fn dns_servers(
    flag: &[SocketAddr],
    file: Option<Vec<String>>,
) -> Result<Vec<SocketAddr>, ConfigError> {
    if !flag.is_empty() {
        return Ok(flag.to_vec());
    }
    let mut servers = Vec::new();
    for s in file.unwrap_or_default() {
        servers.push(parse_dns_server(&s).ok_or(ConfigError::BadDnsServer(s))?);
    }
    Ok(servers)
}
