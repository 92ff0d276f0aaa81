//! Parsers of single values, shared by the flags and the TOML file: an address or CIDR block
//! ([`parse_cidr`]), a DNSBL zone and its weight ([`parse_dnsbl_zone`]), a DNS server
//! ([`parse_dns_server`]), and the DNS-name check for domains and the host name.
//!
//! Pure functions of one string: they do not know which flag or key it came from, so turning
//! a failure into a [`ConfigError`](super::ConfigError) or a clap error is the caller's.

use std::net::SocketAddr;

use super::DNS_PORT;

/// RFC 1035 §2.3.4: a domain name is at most 255 octets (253 as text).
const MAX_DOMAIN_LEN: usize = 253;
/// RFC 1035 §2.3.4: a label is at most 63 octets.
const MAX_LABEL_LEN: usize = 63;

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

/// A DNS name in the RFC 1123 sense: dot-separated labels of letters, digits and inner hyphens.
pub(super) fn is_dns_name(s: &str) -> bool {
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
