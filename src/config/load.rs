//! Building a [`Config`]: [`Config::load`] and [`Config::from_toml`] take the `serve` flags and
//! the TOML file, let every flag given on the command line win over the file, fill in the
//! defaults and check every value, stopping at the first problem ([`ConfigError`]).
//!
//! It does not read or parse the file (`file`), parse single values such as CIDR blocks or
//! DNSBL zones (`parse`), or hand settings to other layers (`access`). It creates nothing:
//! it only looks at the spool path and loads the routes' TLS trust anchors to check them.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::file::{parse_file, read_file, FileConfig};
use super::parse::{is_dns_name, parse_cidr, parse_dns_server, parse_dnsbl_zone};
use super::{
    AbuseConfig, Config, ConfigError, ServeArgs, TlsPair, DEFAULT_DATA_TIMEOUT,
    DEFAULT_DNSBL_THRESHOLD, DEFAULT_LISTEN, DEFAULT_MAX_CONNECTIONS, DEFAULT_SPOOL_DIR,
    DEFAULT_STATS_NAME, MAX_DATA_TIMEOUT_SECS, MAX_DNSBL_ZONES, MAX_GREET_PAUSE_SECS,
    MAX_IDLE_TIMEOUT_SECS, MAX_MESSAGE_SIZE_LIMIT, MAX_RATE_LIMIT, MAX_REACTORS,
    MAX_TLS_HANDSHAKE_TIMEOUT_SECS, MAX_UNIX_SOCKET_PATH, MIN_SEGMENT_SIZE,
};
use crate::relay::queue::{DEFAULT_MAX_QUEUE_LIFETIME, DEFAULT_RETRY_FIRST, DEFAULT_RETRY_MAX};
use crate::relay::stage::DEFAULT_COMPACT_AFTER;
use crate::relay::verify;
use crate::relay::{Route, RouteSpec, Routes};
use crate::smtp::{
    BareLf, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_MAX_RECIPIENTS,
    DEFAULT_TLS_HANDSHAKE_TIMEOUT,
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
}

/// The number of CPUs this process may run on (`sched_getaffinity`), at least 1.
pub fn default_reactors() -> usize {
    crate::sys::allowed_cpus().len().max(1)
}

/// The system's host name ([`crate::sys::hostname`]) in lower case, or `localhost`.
fn system_hostname() -> String {
    crate::sys::hostname().map_or_else(|| "localhost".to_string(), |h| h.to_ascii_lowercase())
}
