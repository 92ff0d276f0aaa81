//! DNSBL checks (`--dnsbl ZONE[*WEIGHT]`, `--dnsbl-threshold N`): the client's address is
//! looked up in every zone when it connects, while it is being greeted (and during the greet
//! pause), through the shared [`Resolver`].
//!
//! [`Dnsbl::start`] sends the queries (a channel push each; the reactor never blocks on DNS);
//! the connection awaits the [`Check`] before it hands the client's first command to the
//! session, bounded by [`DNSBL_WAIT`] from the connect. A zone lists the client when its
//! query answers an address in 127.0.0.0/8 (127.255.255.0/24 excepted: the error codes some
//! lists return to resolvers they refuse); the weights of the listing zones add up, and at or
//! over the threshold the session refuses every RCPT with `554 5.7.1 ... blocked using ZONE`.
//! A lookup that fails (timeout, SERVFAIL, the answer not in time) counts as not listed (fail
//! open) and is counted (`dnsbl_failures`). Answers are cached by the resolver for their TTL.
//!
//! This module does not reply to the client or count refusals (the session and the connection
//! driver do).

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use crate::dns::{Answer, DnsError, Pending, Query, Resolver};

/// Longest wait for the DNSBL answers, from the connect; later ones count as failed lookups.
pub const DNSBL_WAIT: Duration = Duration::from_secs(5);

/// One zone and its weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    /// The zone, without a final dot (`zen.example.org`).
    pub name: String,
    /// What a listing adds to the score.
    pub weight: u32,
}

/// The configured zones and the resolver.
#[derive(Debug)]
pub struct Dnsbl {
    zones: Vec<Zone>,
    threshold: u32,
    resolver: Resolver,
}

/// The lookups of one client, under way.
#[derive(Debug)]
pub struct Check {
    client: IpAddr,
    started: Instant,
    pending: Vec<(usize, Pending)>,
}

/// What the lookups said.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verdict {
    /// The listing zone with the largest weight, when the score reached the threshold.
    pub blocked_by: Option<String>,
    /// Sum of the weights of the listing zones.
    pub score: u32,
    /// Zones that list the client.
    pub listed: Vec<String>,
    /// Lookups that failed or did not answer in time (counted as not listed).
    pub failures: u32,
}

impl Dnsbl {
    /// DNSBL checks against `zones`, blocking at `threshold`.
    pub fn new(zones: Vec<Zone>, threshold: u32, resolver: Resolver) -> Self {
        Self {
            zones,
            threshold,
            resolver,
        }
    }

    /// Sends the queries for `client` (never blocks).
    pub fn start(&self, client: IpAddr) -> Check {
        let client = client.to_canonical();
        let pending = self
            .zones
            .iter()
            .enumerate()
            .map(|(i, z)| {
                let q = Query::A(crate::dns::dnsbl_name(client, &z.name));
                (i, self.resolver.query(q))
            })
            .collect();
        Check {
            client,
            started: Instant::now(),
            pending,
        }
    }

    /// Awaits the answers (until [`DNSBL_WAIT`] after the connect) and scores them.
    pub async fn verdict(&self, check: Check) -> Verdict {
        let deadline = tokio::time::Instant::from_std(check.started + DNSBL_WAIT);
        let mut v = Verdict::default();
        let mut best: Option<&Zone> = None;
        for (i, p) in check.pending {
            let zone = &self.zones[i];
            let listed = match tokio::time::timeout_at(deadline, p).await {
                Ok(Ok(Answer::Addresses(a))) => a.iter().any(is_listing),
                Ok(Ok(Answer::Mx(_))) | Ok(Err(DnsError::NxDomain)) => false,
                Ok(Err(DnsError::Temporary(e))) => {
                    tracing::debug!("dnsbl {} for {}: {e}", zone.name, check.client);
                    v.failures += 1;
                    false
                }
                Err(_) => {
                    v.failures += 1;
                    false
                }
            };
            if listed {
                v.score = v.score.saturating_add(zone.weight);
                v.listed.push(zone.name.clone());
                if best.is_none_or(|b| zone.weight > b.weight) {
                    best = Some(zone);
                }
            }
        }
        if v.score >= self.threshold {
            v.blocked_by = best.map(|z| z.name.clone());
        }
        v
    }
}

/// A DNSBL answer that lists: 127.0.0.0/8 except 127.255.255.0/24 (refusal codes).
fn is_listing(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            o[0] == 127 && !(o[1] == 255 && o[2] == 255) && *v4 != Ipv4Addr::LOCALHOST
        }
        IpAddr::V6(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_answers() {
        assert!(is_listing(&"127.0.0.2".parse().unwrap()));
        assert!(is_listing(&"127.0.1.4".parse().unwrap()));
        assert!(!is_listing(&"127.255.255.254".parse().unwrap()));
        assert!(!is_listing(&"127.0.0.1".parse().unwrap()));
        assert!(!is_listing(&"192.0.2.1".parse().unwrap()));
    }
}
