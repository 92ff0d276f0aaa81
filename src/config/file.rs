//! The TOML file named by `--config`: [`FileConfig`] with its keys (the flags' own spelling,
//! kebab-case, all optional, unknown keys refused), and reading and parsing the file.
//!
//! Only the file's shape: values are kept as written (addresses, CIDR blocks, `sync` and
//! `bare-lf` as strings) and are checked, merged with the flags and given defaults by `load`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{ConfigError, TlsPair, TlsVersion};
use crate::relay::RouteSpec;

/// The TOML file: the same keys as the flags, kebab-case, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(super) struct FileConfig {
    pub(super) listen: Option<Vec<String>>,
    pub(super) domain: Option<Vec<String>>,
    pub(super) spool: Option<PathBuf>,
    pub(super) stats: Option<PathBuf>,
    pub(super) reactors: Option<usize>,
    pub(super) hostname: Option<String>,
    pub(super) sync: Option<String>,
    pub(super) max_message_size: Option<u64>,
    pub(super) max_recipients: Option<usize>,
    pub(super) max_hops: Option<u32>,
    pub(super) max_errors: Option<u32>,
    pub(super) max_connections: Option<usize>,
    pub(super) max_connections_per_ip: Option<usize>,
    pub(super) idle_timeout: Option<u64>,
    pub(super) data_timeout: Option<u64>,
    pub(super) bare_lf: Option<String>,
    pub(super) prepare_segments: Option<bool>,
    pub(super) segment_size: Option<u64>,
    pub(super) tls: Option<Vec<TlsPair>>,
    pub(super) tls_min_version: Option<TlsVersion>,
    pub(super) tls_handshake_timeout: Option<u64>,
    #[serde(alias = "proxy_protocol_from")]
    pub(super) proxy_protocol_from: Option<Vec<String>>,
    pub(super) routes: Option<BTreeMap<String, RouteSpec>>,
    pub(super) relay_to: Option<String>,
    pub(super) max_queue_lifetime: Option<u64>,
    pub(super) retry_first: Option<u64>,
    pub(super) retry_max: Option<u64>,
    pub(super) bounce_copy: Option<String>,
    pub(super) delay_warning: Option<u64>,
    pub(super) compact_after: Option<u64>,
    pub(super) recipients: Option<PathBuf>,
    pub(super) max_connect_rate: Option<u32>,
    pub(super) max_message_rate: Option<u32>,
    pub(super) max_recipient_rate: Option<u32>,
    pub(super) greet_pause: Option<u64>,
    pub(super) trusted_networks: Option<Vec<String>>,
    pub(super) dns_server: Option<Vec<String>>,
    pub(super) verify_recipients: Option<bool>,
    pub(super) verify_timeout: Option<u64>,
    pub(super) verify_cache_accept: Option<u64>,
    pub(super) verify_cache_refuse: Option<u64>,
    pub(super) dnsbl: Option<Vec<String>>,
    pub(super) dnsbl_threshold: Option<u32>,
}

pub(super) fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_file(&text, path)
}

pub(super) fn parse_file(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}
