//! Listening sockets: one `SO_REUSEPORT` socket per reactor per `--listen` address, so the kernel
//! spreads incoming connections over the reactors with no shared accept queue.
//!
//! All sockets are bound on the main thread before any reactor starts, so a bind error (port in
//! use, no permission for port 25) ends start-up with one clear line, and port 0 works: the first
//! socket of an address picks the port and the other reactors' sockets join it. This module
//! does not accept connections; the reactor's accept loop does.

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// Pending-connection queue per socket (the kernel caps it at `net.core.somaxconn`).
pub const BACKLOG: i32 = 1024;

/// A bind failure, with the address.
#[derive(Debug)]
pub struct BindError {
    /// The address as configured.
    pub addr: SocketAddr,
    /// The OS error.
    pub source: io::Error,
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hint = match self.source.raw_os_error() {
            Some(libc::EACCES) if self.addr.port() < 1024 => {
                " (ports below 1024 need CAP_NET_BIND_SERVICE)"
            }
            Some(libc::EADDRINUSE) => " (another process listens there)",
            Some(libc::EADDRNOTAVAIL) => " (no such local address)",
            _ => "",
        };
        write!(f, "cannot listen on {}: {}{hint}", self.addr, self.source)
    }
}

impl std::error::Error for BindError {}

/// Binds `reactors` sockets for every address. Returns, per reactor, its listeners in the order
/// of `addrs`, and the bound addresses (ports resolved) in that order.
///
/// # Errors
/// The first address that cannot be bound.
pub fn bind_all(
    addrs: &[SocketAddr],
    reactors: usize,
) -> Result<(Vec<Vec<TcpListener>>, Vec<SocketAddr>), BindError> {
    let mut per_reactor: Vec<Vec<TcpListener>> = (0..reactors).map(|_| Vec::new()).collect();
    let mut bound = Vec::with_capacity(addrs.len());
    for &addr in addrs {
        if addr.port() != 0 {
            check_not_in_use(addr).map_err(|source| BindError { addr, source })?;
        }
        let mut actual = addr;
        for sockets in &mut per_reactor {
            let l = bind_one(actual).map_err(|source| BindError { addr, source })?;
            if actual.port() == 0 {
                actual = l
                    .local_addr()
                    .map_err(|source| BindError { addr, source })?;
            }
            sockets.push(l);
        }
        bound.push(actual);
    }
    Ok((per_reactor, bound))
}

/// Fails with `EADDRINUSE` if anything already listens on `addr`, including another ringmx.
///
/// `SO_REUSEPORT` lets every socket of the same user join a port, so a second ringmx started
/// by mistake (or an old one still running) would silently share the port and take half the
/// connections into its own spool. A socket bound *without* `SO_REUSEPORT` conflicts with any
/// listener on the port, so binding one (and closing it at once) tells. `SO_REUSEADDR` is set
/// so connections of an earlier run still in TIME-WAIT do not count.
fn check_not_in_use(addr: SocketAddr) -> io::Result<()> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())
}

/// One listening socket with `SO_REUSEADDR` + `SO_REUSEPORT` (+ `IPV6_V6ONLY` for IPv6 so that
/// `[::]:25` and `0.0.0.0:25` can be listed side by side).
///
/// The socket is left blocking: io_uring's accept waits in the kernel by itself, while an
/// `O_NONBLOCK` socket would make it complete with `EAGAIN` on some kernels.
fn bind_one(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(false)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_is_shared_by_all_reactors() {
        let (per, bound) = bind_all(&["127.0.0.1:0".parse().unwrap()], 3).unwrap();
        assert_eq!(per.len(), 3);
        assert_ne!(bound[0].port(), 0);
        for l in per.iter().flatten() {
            assert_eq!(l.local_addr().unwrap(), bound[0]);
        }
    }

    #[test]
    fn ipv6_loopback_binds_when_available() {
        match bind_all(&["[::1]:0".parse().unwrap()], 2) {
            Ok((_, bound)) => assert!(bound[0].is_ipv6()),
            // Hosts without IPv6 refuse the address; the error must say which.
            Err(e) => assert!(e.to_string().contains("[::1]:0"), "{e}"),
        }
    }

    #[test]
    fn a_port_held_by_another_reuseport_group_is_in_use() {
        // What a second ringmx (same user, SO_REUSEPORT) would otherwise silently join.
        let (first, bound) = bind_all(&["127.0.0.1:0".parse().unwrap()], 2).unwrap();
        let e = bind_all(&bound, 2).unwrap_err();
        assert_eq!(e.source.raw_os_error(), Some(libc::EADDRINUSE), "{e}");
        assert!(e.to_string().contains("another process"), "{e}");
        // Once the first group is closed the port is free again (TIME-WAIT aside).
        drop(first);
        assert!(bind_all(&bound, 2).is_ok());
    }

    #[test]
    fn address_in_use_is_explained() {
        let plain = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = plain.local_addr().unwrap();
        let e = bind_all(&[addr], 1).unwrap_err();
        assert!(e.to_string().contains(&addr.to_string()), "{e}");
        assert!(e.to_string().contains("another process"), "{e}");
    }
}
