//! MX routes: where a recipient domain's mail goes, from the DNS (RFC 5321 §5.1, RFC 7505).
//!
//! [`resolve`] turns a domain into the addresses to try, best first: its MX hosts by
//! preference (hosts of equal preference in random order, so they share the load), each
//! host's AAAA then A addresses; a domain without MX records is its own MX (implicit MX, its
//! AAAA/A records). The delivery stage tries them in turn until one takes the transaction.
//!
//! Answers that end the attempt: NXDOMAIN → failed `5.1.2`; a null MX (one MX record of `.`)
//! → failed `5.1.10`; a DNS timeout or SERVFAIL → deferred `4.4.3`. Loops: an MX host that is
//! this host (our hostname, or an address and port we listen on) is never tried, nor any host
//! of its preference or worse (we would be a backup MX handing mail to an equal or worse one);
//! if that leaves nothing, the recipients fail with `5.4.6` ("mail for X loops back to
//! myself", as Postfix says).
//!
//! This module decides the order and the errors; it opens no connection (the stage does) and
//! caches nothing (the resolver caches answers for their TTL).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr};

use crate::dns::{DnsError, Pending, Query, Resolver};
use crate::smtp::client::Reply;

/// MX hosts looked at, at most (by preference); the rest are ignored.
pub const MAX_MX_HOSTS: usize = 10;
/// Addresses tried per delivery attempt, at most (over all hosts).
pub const MAX_ADDRESSES: usize = 10;

/// What identifies this host, for loop detection.
#[derive(Debug, Clone, Default)]
pub struct LocalHost {
    /// Our hostname (lower case).
    pub hostname: String,
    /// Our listen addresses.
    pub listen: Vec<SocketAddr>,
}

impl LocalHost {
    fn is_name(&self, host: &str) -> bool {
        host.trim_end_matches('.')
            .eq_ignore_ascii_case(self.hostname.trim_end_matches('.'))
    }

    /// Whether `ip:port` reaches one of our listeners. A wildcard listener counts for loopback
    /// addresses only (the host's other addresses are not enumerated: name it in `hostname`).
    fn is_addr(&self, ip: IpAddr, port: u16) -> bool {
        self.listen.iter().any(|l| {
            l.port() == port
                && (l.ip() == ip
                    || (l.ip().is_unspecified() && (ip.is_loopback() || ip.is_unspecified())))
        })
    }
}

/// One address to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// The MX host's name (the domain itself for an implicit MX).
    pub host: String,
    /// Where to connect.
    pub addr: SocketAddr,
}

/// The addresses to try for `domain`, best first (at most [`MAX_ADDRESSES`]), or the reply
/// every recipient gets (4xx: deferred, 5xx: failed).
///
/// # Errors
/// The reply when nothing can be tried.
pub async fn resolve(
    resolver: &Resolver,
    domain: &str,
    port: u16,
    me: &LocalHost,
) -> Result<Vec<Hop>, Reply> {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let (hosts, implicit) = match resolver.mx(&domain).await {
        Err(DnsError::NxDomain) => {
            return Err(Reply::local(
                550,
                format!("5.1.2 domain {domain} does not exist (NXDOMAIN)"),
            ))
        }
        Err(DnsError::Temporary(e)) => {
            return Err(Reply::local(
                451,
                format!("4.4.3 MX lookup for {domain} failed: {e}"),
            ))
        }
        Ok(mx) if mx.len() == 1 && mx[0].1.is_empty() => {
            return Err(Reply::local(
                556,
                format!("5.1.10 {domain} does not accept mail (null MX, RFC 7505)"),
            ))
        }
        Ok(mx) if mx.is_empty() => (vec![(0, domain.clone())], true),
        Ok(mx) => (order(mx, &mut Rng::new()), false),
    };
    // Every host's addresses are asked for at once; answered in order below.
    let pending: Vec<(u16, String, Pending)> = hosts
        .into_iter()
        .take(MAX_MX_HOSTS)
        .map(|(pref, host)| {
            let p = resolver.query(Query::Addresses(host.clone()));
            (pref, host, p)
        })
        .collect();
    let mut found: Vec<(u16, Hop)> = Vec::new();
    let mut loop_pref: Option<u16> = None;
    let mut temporary = None;
    let mut missing = None;
    for (pref, host, p) in pending {
        let mut is_me = me.is_name(&host);
        match p.await {
            Ok(crate::dns::Answer::Addresses(addrs)) if !addrs.is_empty() => {
                for ip in addrs {
                    is_me |= me.is_addr(ip, port);
                    found.push((
                        pref,
                        Hop {
                            host: host.clone(),
                            addr: SocketAddr::new(ip, port),
                        },
                    ));
                }
            }
            Ok(_) => missing = Some(format!("{host} has no address")),
            Err(DnsError::NxDomain) => missing = Some(format!("{host} does not exist")),
            Err(DnsError::Temporary(e)) => temporary = Some(format!("{host}: {e}")),
        }
        if is_me {
            loop_pref = Some(loop_pref.map_or(pref, |p| p.min(pref)));
        }
    }
    if let Some(cut) = loop_pref {
        found.retain(|(pref, _)| *pref < cut);
        if found.is_empty() {
            return Err(Reply::local(
                554,
                format!("5.4.6 mail for {domain} loops back to myself"),
            ));
        }
    }
    if found.is_empty() {
        if let Some(t) = temporary {
            return Err(Reply::local(
                451,
                format!("4.4.3 address lookup failed: {t}"),
            ));
        }
        let why = missing.unwrap_or_else(|| "no address".into());
        return Err(if implicit {
            Reply::local(550, format!("5.1.2 {domain} has no MX and no address"))
        } else {
            Reply::local(
                451,
                format!("4.4.4 no MX host of {domain} has an address ({why})"),
            )
        });
    }
    Ok(found
        .into_iter()
        .map(|(_, h)| h)
        .take(MAX_ADDRESSES)
        .collect())
}

/// MX records by preference, equal preferences shuffled; null-MX entries (`.`) among others
/// are dropped.
fn order(mut mx: Vec<(u16, String)>, rng: &mut Rng) -> Vec<(u16, String)> {
    mx.retain(|(_, h)| !h.is_empty());
    // Fisher-Yates, then a stable sort by preference keeps the shuffle within each preference.
    for i in (1..mx.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        mx.swap(i, j);
    }
    mx.sort_by_key(|(p, _)| *p);
    mx
}

/// A small xorshift generator seeded from the process's random hash keys: enough to spread
/// load over equal-preference hosts, not for anything secret.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let seed = RandomState::new().build_hasher().finish();
        Self(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_by_preference_and_shuffles_equals() {
        let mx = vec![
            (20, "c".to_string()),
            (10, "a".to_string()),
            (10, "b".to_string()),
            (0, String::new()),
        ];
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..64 {
            let o = order(mx.clone(), &mut Rng::new());
            assert_eq!(o.len(), 3);
            assert_eq!(o[2], (20, "c".to_string()));
            assert_eq!(o[0].0, 10);
            assert_eq!(o[1].0, 10);
            firsts.insert(o[0].1.clone());
        }
        assert_eq!(firsts.len(), 2, "equal preferences are shuffled");
    }

    #[test]
    fn self_detection() {
        let me = LocalHost {
            hostname: "mx.a.test".into(),
            listen: vec![
                "127.0.0.1:2525".parse().unwrap(),
                "0.0.0.0:25".parse().unwrap(),
            ],
        };
        assert!(me.is_name("MX.a.test."));
        assert!(!me.is_name("mx2.a.test"));
        assert!(me.is_addr("127.0.0.1".parse().unwrap(), 2525));
        assert!(!me.is_addr("127.0.0.2".parse().unwrap(), 2525));
        assert!(!me.is_addr("127.0.0.1".parse().unwrap(), 2526));
        assert!(me.is_addr("127.0.0.9".parse().unwrap(), 25));
        assert!(!me.is_addr("192.0.2.1".parse().unwrap(), 25));
    }
}
