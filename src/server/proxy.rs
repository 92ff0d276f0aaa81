//! The PROXY protocol (HAProxy's v1 text and v2 binary header) from trusted load balancers.
//!
//! A connection from a peer inside `--proxy-protocol-from` must begin with a PROXY header
//! before we send anything. It is read here, right after accept and before the session
//! exists, into bounded buffers (at most [`MAX_PROXY_HEADER`] octets, however it is split
//! across reads) and parsed with the `ppp` crate. The source address in the header then
//! becomes the client address everywhere: the per-IP limit (admission happens only after the
//! header), the session, logs, `Received:` and stats. A v2 `LOCAL` header (the balancer's own
//! health check) and v1 `UNKNOWN` / v2 unspecified or unix addresses are served with the
//! balancer's own address, as the specification says. Bytes that came after the header are
//! handed to the session as its first input.
//!
//! A header that is missing (the first octets cannot start one), malformed, longer than
//! [`MAX_PROXY_HEADER`], or not complete within the idle timeout closes the connection without
//! a reply; it is counted (`connections_proxy_failed`) and logged once.
//!
//! This module does not decide who is trusted (the configuration does) and does nothing for
//! other peers: a PROXY line from them is an ordinary unknown command (500) in the session.

use std::net::{IpAddr, Shutdown, SocketAddr};
use std::rc::Rc;
use std::time::Instant;

use ppp::PartialResult;
use tokio_uring::net::TcpStream;

use super::reactor::Reactor;
use super::shutdown::TrackGuard;
use crate::buffers::Buf;
use crate::stats::ReactorStats;

/// Longest PROXY header we read: a v1 header is at most 107 octets; a v2 header is 16 octets
/// plus its addresses and TLVs, which HAProxy keeps far below this.
pub const MAX_PROXY_HEADER: usize = 4096;
/// The v1 header's start.
const V1_PREFIX: &[u8] = b"PROXY ";
/// The v2 header's 12-octet signature.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 header, CRLF included (the specification's 107).
const V1_MAX: usize = 107;

/// What the bytes read so far hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A prefix of a header: read more.
    Incomplete,
    /// A whole header of `len` octets; `client` is its source address, `None` for LOCAL or
    /// UNKNOWN (serve with the balancer's address).
    Header {
        /// Octets of the header.
        len: usize,
        /// The original client, if the header names one.
        client: Option<SocketAddr>,
        /// 1 or 2.
        version: u8,
    },
    /// Not a PROXY header, or a broken one.
    Malformed(&'static str),
}

/// Parses the start of a connection from a trusted balancer.
pub fn parse(buf: &[u8]) -> Parsed {
    let is_prefix = |sig: &[u8]| buf.starts_with(sig) || sig.starts_with(buf);
    if is_prefix(V2_SIGNATURE) && !buf.is_empty() && buf[0] == b'\r' {
        return match ppp::v2::Header::try_from(buf) {
            Ok(h) => Parsed::Header {
                len: h.len(),
                client: match (h.command, h.addresses) {
                    (ppp::v2::Command::Local, _) => None,
                    (_, ppp::v2::Addresses::IPv4(a)) => {
                        Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                    }
                    (_, ppp::v2::Addresses::IPv6(a)) => {
                        Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                    }
                    (_, ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_)) => None,
                },
                version: 2,
            },
            Err(e) if e.is_incomplete() && buf.len() < MAX_PROXY_HEADER => Parsed::Incomplete,
            Err(_) if buf.len() >= MAX_PROXY_HEADER => Parsed::Malformed("v2 header too long"),
            Err(_) => Parsed::Malformed("malformed v2 header"),
        };
    }
    if !is_prefix(V1_PREFIX) {
        return Parsed::Malformed("no PROXY header");
    }
    // A v1 header is one line: judge it once its LF is in (the crate reads some prefixes of
    // a good line as errors, and some broken lines as incomplete).
    if !buf.contains(&b'\n') {
        return if buf.len() < V1_MAX {
            Parsed::Incomplete
        } else {
            Parsed::Malformed("v1 header too long")
        };
    }
    match ppp::v1::Header::try_from(buf) {
        Ok(h) => Parsed::Header {
            len: h.header.len(),
            client: match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => {
                    Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                }
                ppp::v1::Addresses::Tcp6(a) => {
                    Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                }
                ppp::v1::Addresses::Unknown => None,
            },
            version: 1,
        },
        Err(_) => Parsed::Malformed("malformed v1 header"),
    }
}

/// Reads the PROXY header of a connection from the trusted balancer `balancer`, then admits
/// the connection under the client's address (see the module docs). Closes it on failure.
pub async fn accept(r: Rc<Reactor>, stream: TcpStream, balancer: SocketAddr, track: TrackGuard) {
    match read_header(&r, &stream).await {
        Ok((client, early, version)) => {
            let client = client.unwrap_or(balancer);
            tracing::info!("proxy from={balancer} client={client} header=v{version}");
            super::reactor::admit(&r, stream, client, early, track);
        }
        Err(why) => {
            ReactorStats::inc(&r.stats.counters.connections_proxy_failed);
            tracing::info!("proxy from={balancer} closed: {why}");
            // Completes a read left in flight by a timeout, so the fd really closes.
            let _ = stream.shutdown(Shutdown::Both);
            drop(track);
        }
    }
}

/// The header's client address, the bytes after it and its version; or why it failed.
async fn read_header(
    r: &Reactor,
    stream: &TcpStream,
) -> Result<(Option<SocketAddr>, Vec<u8>, u8), &'static str> {
    let deadline = r.deadlines.register();
    let until = Instant::now().checked_add(r.idle_timeout);
    let mut have: Vec<u8> = Vec::new();
    loop {
        let want = MAX_PROXY_HEADER - have.len();
        let read = Buf::heap(want).read_from(stream);
        let (res, buf) = deadline
            .within(until, read)
            .await
            .map_err(|_| "no PROXY header within the idle timeout")?;
        match res {
            Ok(0) => return Err("closed before a complete PROXY header"),
            Ok(n) => have.extend_from_slice(&buf[..n]),
            Err(_) => return Err("read error before a complete PROXY header"),
        }
        match parse(&have) {
            Parsed::Incomplete if have.len() < MAX_PROXY_HEADER => {}
            Parsed::Incomplete => return Err("PROXY header too long"),
            Parsed::Malformed(why) => return Err(why),
            Parsed::Header {
                len,
                client,
                version,
            } => {
                have.drain(..len);
                return Ok((client, have, version));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addrs: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&u16::try_from(addrs.len()).unwrap().to_be_bytes());
        h.extend_from_slice(addrs);
        h
    }

    #[test]
    fn v1_and_v2_headers_parse_at_every_split() {
        let tcp4 = v2(1, 0x11, &[192, 0, 2, 9, 127, 0, 0, 1, 0x30, 0x39, 0, 25]);
        let cases: Vec<(Vec<u8>, Option<&str>, u8)> = vec![
            (
                b"PROXY TCP4 192.0.2.9 127.0.0.1 12345 25\r\n".to_vec(),
                Some("192.0.2.9:12345"),
                1,
            ),
            (
                b"PROXY TCP6 2001:db8::7 ::1 4000 25\r\n".to_vec(),
                Some("[2001:db8::7]:4000"),
                1,
            ),
            (b"PROXY UNKNOWN\r\n".to_vec(), None, 1),
            (tcp4, Some("192.0.2.9:12345"), 2),
            (v2(0, 0x00, &[]), None, 2),
            (v2(1, 0x00, &[1, 2, 3]), None, 2),
        ];
        for (header, client, version) in cases {
            let mut input = header.clone();
            input.extend_from_slice(b"EHLO x\r\n");
            for cut in 0..header.len() {
                assert_eq!(
                    parse(&input[..cut]),
                    Parsed::Incomplete,
                    "{header:?} at {cut}"
                );
            }
            let want = Parsed::Header {
                len: header.len(),
                client: client.map(|c| c.parse().unwrap()),
                version,
            };
            for end in header.len()..=input.len() {
                assert_eq!(parse(&input[..end]), want, "{header:?} to {end}");
            }
        }
    }

    #[test]
    fn anything_else_is_malformed() {
        for bad in [
            &b"EHLO x\r\n"[..],
            b"GET / HTTP/1.1\r\n",
            b"PROXY TCP4 1.2.3.4\r\n",
            b"PROXY TCP4 300.1.1.1 1.1.1.1 1 2\r\n",
            b"PROXY TCP9 1.1.1.1 1.1.1.1 1 2\r\n",
            b"\r\n\r\n\0\r\nQUIT\n\x31\x11\x00\x00",
            b"\r\nEHLO",
        ] {
            assert!(matches!(parse(bad), Parsed::Malformed(_)), "{bad:?}");
        }
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
        assert!(matches!(parse(&long), Parsed::Malformed(_)));
    }
}
