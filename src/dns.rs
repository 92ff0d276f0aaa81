//! DNS lookups for the MX routes and the DNSBL checks: one shared resolver.
//!
//! The resolver ([hickory-resolver], with its cache: answers are kept for their TTL, negative
//! answers for their SOA's) runs on a thread of its own with a current-thread tokio runtime.
//! Callers on any thread (the delivery thread, the io_uring reactors) send a query over an
//! unbounded channel (a lock-free push, never a wait) and await its answer on a oneshot
//! channel, so a reactor never blocks on DNS and shares no lock with the resolver. A query
//! can be sent early and its answer awaited later ([`Resolver::query`] returns a [`Pending`]):
//! the DNSBL lookups start at connect time and are awaited only when the client's first
//! command comes.
//!
//! Servers: `/etc/resolv.conf` (the system's) by default, or the addresses given
//! (`--dns-server`), over UDP with TCP for truncated answers. The hosts file is not read: MX
//! and DNSBL answers come from the DNS alone.
//!
//! This module looks names up and classifies the answers ([`DnsError`]); it does not order MX
//! hosts, detect loops (`relay::mx`) or decide whether a client is listed (the server).
//!
//! [hickory-resolver]: https://docs.rs/hickory-resolver

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{ResolveError, TokioResolver};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;

/// How long one query waits for a server's answer before trying again.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(3);
/// Tries per query (and per server).
pub const QUERY_ATTEMPTS: usize = 2;
/// Answers kept in the cache (each for its TTL at most).
pub const CACHE_SIZE: usize = 8192;
/// Longest time a positive answer is cached, whatever its TTL.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default port of a `--dns-server` given without one.
pub const DNS_PORT: u16 = 53;

/// Why a lookup gave no records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsError {
    /// NXDOMAIN: the name does not exist (a final answer).
    NxDomain,
    /// A timeout, SERVFAIL, a refused or unreachable server: try again later.
    Temporary(String),
}

impl fmt::Display for DnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NxDomain => f.write_str("no such domain (NXDOMAIN)"),
            Self::Temporary(e) => write!(f, "temporary DNS failure: {e}"),
        }
    }
}

/// What to look up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// The MX records of a domain.
    Mx(String),
    /// The AAAA and then the A records of a host.
    Addresses(String),
    /// The A records of a name (a DNSBL query: `4.3.2.1.zone`).
    A(String),
}

/// An answer: records (possibly none: the name exists without records of that type), or why
/// there are none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// MX records: (preference, exchange without the final dot; `""` is the root, a null MX).
    Mx(Vec<(u16, String)>),
    /// Addresses, in the order asked (AAAA first for [`Query::Addresses`]).
    Addresses(Vec<IpAddr>),
}

/// A sent query: await it for its answer.
#[derive(Debug)]
pub struct Pending(Option<oneshot::Receiver<Result<Answer, DnsError>>>);

impl Future for Pending {
    type Output = Result<Answer, DnsError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(rx) = self.0.as_mut() else {
            return Poll::Ready(Err(stopped()));
        };
        Pin::new(rx)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|_| Err(stopped())))
    }
}

fn stopped() -> DnsError {
    DnsError::Temporary("the resolver thread is not running".into())
}

struct Request {
    query: Query,
    reply: oneshot::Sender<Result<Answer, DnsError>>,
}

/// The handle callers hold (cheap to clone; every clone talks to the same resolver thread,
/// which ends once every handle is dropped).
#[derive(Clone)]
pub struct Resolver {
    tx: UnboundedSender<Request>,
    servers: String,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Resolver({})", self.servers)
    }
}

impl Resolver {
    /// Starts the resolver thread. `servers` empty: the system's (`/etc/resolv.conf`).
    ///
    /// # Errors
    /// `/etc/resolv.conf` is unreadable, or the thread or its runtime could not be created.
    pub fn start(servers: &[SocketAddr]) -> io::Result<Self> {
        let (config, mut opts) = if servers.is_empty() {
            hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| io::Error::other(format!("reading /etc/resolv.conf: {e}")))?
        } else {
            let mut c = ResolverConfig::new();
            for &s in servers {
                c.add_name_server(NameServerConfig::new(s, Protocol::Udp));
                c.add_name_server(NameServerConfig::new(s, Protocol::Tcp));
            }
            (c, ResolverOpts::default())
        };
        opts.timeout = QUERY_TIMEOUT;
        opts.attempts = QUERY_ATTEMPTS;
        opts.cache_size = CACHE_SIZE;
        opts.positive_max_ttl = Some(MAX_TTL);
        opts.use_hosts_file = ResolveHosts::Never;
        let names = if servers.is_empty() {
            "system".to_string()
        } else {
            servers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (tx, rx) = unbounded_channel();
        std::thread::Builder::new()
            .name("ringmx-dns".into())
            .spawn(move || {
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, serve(config, opts, rx));
            })?;
        Ok(Self { tx, servers: names })
    }

    /// Sends `query` now; the answer comes when the returned [`Pending`] is awaited (or is
    /// dropped unread). Never blocks.
    pub fn query(&self, query: Query) -> Pending {
        let (reply, rx) = oneshot::channel();
        match self.tx.send(Request { query, reply }) {
            Ok(()) => Pending(Some(rx)),
            Err(_) => Pending(None),
        }
    }

    /// The MX records of `domain`: (preference, exchange). Empty: the domain exists without MX.
    ///
    /// # Errors
    /// NXDOMAIN, or a temporary failure.
    pub async fn mx(&self, domain: &str) -> Result<Vec<(u16, String)>, DnsError> {
        match self.query(Query::Mx(domain.to_string())).await? {
            Answer::Mx(v) => Ok(v),
            Answer::Addresses(_) => Err(DnsError::Temporary("unexpected answer".into())),
        }
    }

    /// The AAAA then A addresses of `host`. Empty: it exists without addresses.
    ///
    /// # Errors
    /// NXDOMAIN, or a temporary failure.
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        match self.query(Query::Addresses(host.to_string())).await? {
            Answer::Addresses(v) => Ok(v),
            Answer::Mx(_) => Err(DnsError::Temporary("unexpected answer".into())),
        }
    }

    /// The servers asked (`system` or the list), for the log.
    pub fn servers(&self) -> &str {
        &self.servers
    }
}

/// A name as a fully qualified one (a final dot), so no search domain is appended.
fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

/// The resolver thread's loop: one local task per query.
async fn serve(config: ResolverConfig, opts: ResolverOpts, mut rx: UnboundedReceiver<Request>) {
    let resolver = TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
        .with_options(opts)
        .build();
    while let Some(req) = rx.recv().await {
        let r = resolver.clone();
        tokio::task::spawn_local(async move {
            let answer = answer(&r, &req.query).await;
            // The caller may have stopped waiting.
            let _ = req.reply.send(answer);
        });
    }
}

async fn answer(r: &TokioResolver, q: &Query) -> Result<Answer, DnsError> {
    match q {
        Query::Mx(d) => {
            let found = records(r.mx_lookup(fqdn(d)).await)?;
            Ok(Answer::Mx(found.map_or_else(Vec::new, |l| {
                l.iter()
                    .map(|mx| {
                        let name = mx.exchange().to_ascii();
                        (mx.preference(), name.trim_end_matches('.').to_string())
                    })
                    .collect()
            })))
        }
        Query::Addresses(h) => {
            let name = fqdn(h);
            let (v6, v4) = tokio::join!(r.ipv6_lookup(name.as_str()), r.ipv4_lookup(name.as_str()));
            let (v6, v4) = (records(v6), records(v4));
            let mut out = Vec::new();
            let mut nx = 0;
            let mut temp = None;
            if let Ok(Some(l)) = &v6 {
                out.extend(l.iter().map(|a| IpAddr::V6(a.0)));
            }
            if let Ok(Some(l)) = &v4 {
                out.extend(l.iter().map(|a| IpAddr::V4(a.0)));
            }
            for e in [v6.err(), v4.err()].into_iter().flatten() {
                match e {
                    DnsError::NxDomain => nx += 1,
                    t @ DnsError::Temporary(_) => temp = Some(t),
                }
            }
            if !out.is_empty() {
                Ok(Answer::Addresses(out))
            } else if let Some(t) = temp {
                Err(t)
            } else if nx > 0 {
                Err(DnsError::NxDomain)
            } else {
                Ok(Answer::Addresses(out))
            }
        }
        Query::A(n) => {
            let found = records(r.ipv4_lookup(fqdn(n)).await)?;
            Ok(Answer::Addresses(found.map_or_else(Vec::new, |l| {
                l.iter().map(|a| IpAddr::V4(a.0)).collect()
            })))
        }
    }
}

/// `Ok(None)`: the name exists without such records (NOERROR, no data).
fn records<T>(r: Result<T, ResolveError>) -> Result<Option<T>, DnsError> {
    match r {
        Ok(l) => Ok(Some(l)),
        Err(e) if e.is_nx_domain() => Err(DnsError::NxDomain),
        Err(e) if e.is_no_records_found() => Ok(None),
        Err(e) => Err(DnsError::Temporary(e.to_string())),
    }
}

/// The DNSBL query name of `ip` in `zone`: the address's bytes (IPv4) or nibbles (IPv6) in
/// reverse order, then the zone (`192.0.2.1` in `bl.example` → `1.2.0.192.bl.example`).
pub fn dnsbl_name(ip: IpAddr, zone: &str) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(80 + zone.len());
    match ip {
        IpAddr::V4(a) => {
            for b in a.octets().iter().rev() {
                let _ = write!(s, "{b}.");
            }
        }
        IpAddr::V6(a) => {
            for b in a.octets().iter().rev() {
                let _ = write!(s, "{:x}.{:x}.", b & 0xf, b >> 4);
            }
        }
    }
    s.push_str(zone.trim_end_matches('.'));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dnsbl_names() {
        assert_eq!(
            dnsbl_name("192.0.2.1".parse().unwrap(), "bl.example."),
            "1.2.0.192.bl.example"
        );
        let v6 = dnsbl_name("2001:db8::1".parse().unwrap(), "bl.example");
        assert!(v6.starts_with("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0."), "{v6}");
        assert!(v6.ends_with("8.b.d.0.1.0.0.2.bl.example"), "{v6}");
    }

    #[test]
    fn names_are_fully_qualified() {
        assert_eq!(fqdn("a.test"), "a.test.");
        assert_eq!(fqdn("a.test."), "a.test.");
    }

    #[tokio::test]
    async fn a_stopped_resolver_answers_temporary() {
        let (tx, rx) = unbounded_channel();
        drop(rx);
        let r = Resolver {
            tx,
            servers: "none".into(),
        };
        assert!(matches!(r.mx("a.test").await, Err(DnsError::Temporary(_))));
    }
}
