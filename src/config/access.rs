//! Reading a checked [`Config`]: its accessors, the settings it hands to each layer
//! ([`Config::session_config`], [`Config::spool_config`], [`Config::delivery_config`],
//! [`Config::verify_config`]) and the one-line [`Config::summary`].
//!
//! Nothing here checks, defaults or changes a value: that is done once, when the `Config` is
//! built (`load`).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::{AbuseConfig, Config, TlsPair, TlsVersion};
use crate::relay::verify::{self, VerifyConfig};
use crate::relay::DeliveryConfig;
use crate::smtp::{BareLf, SessionConfig, DEFAULT_MAX_JUNK_COMMANDS};
use crate::spool::{SpoolConfig, SyncPolicy};

impl Config {
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
            max_errors: self.max_errors,
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
        let names = v.verifying_routes();
        format!(
            "{}(timeout={}s,cache-accept={}s,cache-refuse={}s)",
            names.join(","),
            v.timeout.as_secs(),
            v.cache_accept.as_secs(),
            v.cache_refuse.as_secs()
        )
    }
}
