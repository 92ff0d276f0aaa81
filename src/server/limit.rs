//! Connection limits shared by all reactors: `--max-connections` (a global atomic count) and
//! `--max-connections-per-ip` (a sharded map of counts per client: an IPv4 address or an IPv6
//! /64, see [`client_key`]).
//!
//! Both are touched only at connect and disconnect, never per read, so sharing them across
//! reactors costs one atomic add and, with a per-IP limit, one short uncontended lock per
//! connection. A [`ConnPermit`] gives its slot back when dropped. This module does not write
//! the `421 4.7.0` reply; the accept loop does.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Shards of the per-IP map: enough that reactors rarely meet on one lock.
const SHARDS: usize = 16;

/// The client a per-client limit counts: an IPv4 address, or the /64 of an IPv6 address (one
/// site's subnet: a host given a /64 can use any of its 2^64 addresses). An IPv4-mapped IPv6
/// address (`::ffff:192.0.2.1`, from a dual-stack listener) is its IPv4 address.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

/// The limits and the current counts.
#[derive(Debug)]
pub struct ConnLimits {
    max: usize,
    per_ip: Option<usize>,
    active: AtomicUsize,
    shards: Vec<Mutex<HashMap<IpAddr, usize>>>,
}

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `--max-connections`.
    Total,
    /// `--max-connections-per-ip`.
    PerIp,
    /// `--max-connect-rate` (checked by the accept path before these limits).
    ConnectRate,
}

impl Refusal {
    /// The limit's flag name, for the log line (`max-connections`, `max-connections-per-ip`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Total => "max-connections",
            Self::PerIp => "max-connections-per-ip",
            Self::ConnectRate => "max-connect-rate",
        }
    }
}

/// One admitted connection's slot; dropping it frees the slot.
#[derive(Debug)]
pub struct ConnPermit {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
}

impl ConnLimits {
    /// Limits of `max` connections in all and `per_ip` per client address.
    pub fn new(max: usize, per_ip: Option<usize>) -> Arc<Self> {
        Arc::new(Self {
            max,
            per_ip,
            active: AtomicUsize::new(0),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        })
    }

    /// Takes a slot for a connection from `ip` (counted by its [`client_key`]), or says which
    /// limit is reached.
    ///
    /// # Errors
    /// [`Refusal`] when a limit is reached (nothing is taken then).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnPermit, Refusal> {
        let ip = client_key(ip);
        if self.active.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.active.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal::Total);
        }
        if let Some(limit) = self.per_ip {
            let mut map = self.shard(ip);
            let n = map.entry(ip).or_insert(0);
            if *n >= limit {
                drop(map);
                self.active.fetch_sub(1, Ordering::Relaxed);
                return Err(Refusal::PerIp);
            }
            *n += 1;
        }
        Ok(ConnPermit {
            limits: self.clone(),
            ip,
        })
    }

    /// Connections admitted and not yet closed.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    fn shard(&self, ip: IpAddr) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(ip);
        #[allow(clippy::cast_possible_truncation)] // only the low bits pick a shard
        let i = (h as usize) % SHARDS;
        // The map holds plain counts; a poisoned lock still has usable data.
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        if self.limits.per_ip.is_some() {
            let mut map = self.limits.shard(self.ip);
            if let Some(n) = map.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&self.ip);
                }
            }
        }
        self.limits.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn total_and_per_ip_limits() {
        let l = ConnLimits::new(3, Some(2));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let p1 = l.admit(a).unwrap();
        let _p2 = l.admit(a).unwrap();
        assert_eq!(l.admit(a).unwrap_err(), Refusal::PerIp);
        let p3 = l.admit(b).unwrap();
        assert_eq!(l.admit(b).unwrap_err(), Refusal::Total);
        assert_eq!(l.active(), 3);
        drop(p3);
        drop(p1);
        assert_eq!(l.active(), 1);
        let _p4 = l.admit(a).unwrap();
        let _p5 = l.admit(b).unwrap();
        assert_eq!(l.active(), 3);
    }

    #[test]
    fn per_ip_map_does_not_grow_with_closed_connections() {
        let l = ConnLimits::new(10, Some(1));
        for i in 0..100u8 {
            drop(l.admit(IpAddr::from([10, 0, 0, i])).unwrap());
        }
        assert!(l.shards.iter().all(|s| s.lock().unwrap().is_empty()));
        assert_eq!(l.active(), 0);
    }

    #[test]
    fn ipv6_clients_are_limited_by_64() {
        let l = ConnLimits::new(10, Some(1));
        let a: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        let b: IpAddr = "2001:db8:0:1:8000::2".parse().unwrap();
        let c: IpAddr = "2001:db8:0:2::1".parse().unwrap();
        let _p = l.admit(a).unwrap();
        assert_eq!(l.admit(b).unwrap_err(), Refusal::PerIp);
        let _q = l.admit(c).unwrap();
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let _r = l.admit(v4).unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(l.admit(mapped).unwrap_err(), Refusal::PerIp);
        assert_eq!(client_key(b), "2001:db8:0:1::".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn no_per_ip_limit() {
        let l = ConnLimits::new(2, None);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let _a = l.admit(ip).unwrap();
        let _b = l.admit(ip).unwrap();
        assert_eq!(l.admit(ip).unwrap_err(), Refusal::Total);
    }
}
