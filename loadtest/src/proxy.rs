//! `--proxy v1|v2`: the PROXY protocol header (HAProxy's v1 text line or v2 binary header) sent
//! first on every connection, as a load balancer would, so a server that trusts us as its
//! balancer takes the header's source as the client. Rendering only, sans-IO.
//!
//! The source is `--proxy-source`: `ADDR:PORT` (`[v6]:PORT`) is the same on every connection;
//! `ADDR` or `ADDR/LEN` takes a new address of that network per connection (cycling, skipping
//! the network's first and last address when it has more than two) with a new port.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v2 signature (12 octets).
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The default `--proxy-source`: TEST-NET-1 (RFC 5737), a new address per connection.
pub(crate) const DEFAULT_SOURCE: &str = "192.0.2.0/24";

/// Which header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    /// `PROXY TCP4 … CRLF`.
    V1,
    /// The binary header, command PROXY, TCP over IPv4 or IPv6.
    V2,
}

/// Where the header says the connection comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// Always this address and port.
    Fixed(SocketAddr),
    /// A new address of `net`/`len` and a new port per connection.
    Vary {
        /// The network (host bits zero).
        net: IpAddr,
        /// Prefix length.
        len: u8,
    },
}

/// `--proxy` with its `--proxy-source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Proxy {
    /// v1 or v2.
    pub(crate) version: Version,
    /// The claimed client.
    pub(crate) source: Source,
}

impl std::fmt::Display for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = match self.version {
            Version::V1 => "v1",
            Version::V2 => "v2",
        };
        match self.source {
            Source::Fixed(a) => write!(f, "PROXY {v} from {a}"),
            Source::Vary { net, len } => write!(f, "PROXY {v} from {net}/{len}"),
        }
    }
}

/// Parses `v1` or `v2`.
pub(crate) fn parse_version(v: &str) -> Result<Version, String> {
    match v {
        "v1" | "1" => Ok(Version::V1),
        "v2" | "2" => Ok(Version::V2),
        _ => Err(format!("--proxy: {v:?} is not v1 or v2")),
    }
}

/// Parses `ADDR:PORT`, `[v6]:PORT`, `ADDR` or `ADDR/LEN`.
pub(crate) fn parse_source(s: &str) -> Result<Source, String> {
    let bad = || format!("--proxy-source: {s:?} is not ADDR:PORT, ADDR or ADDR/LEN");
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(Source::Fixed(a));
    }
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l.parse::<u8>().map_err(|_| bad())?)),
        None => (s, None),
    };
    let ip: IpAddr = addr.parse().map_err(|_| bad())?;
    let bits = if ip.is_ipv4() { 32 } else { 128 };
    let len = len.unwrap_or(bits);
    if len > bits {
        return Err(bad());
    }
    Ok(Source::Vary {
        net: mask(ip, len),
        len,
    })
}

fn mask(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

impl Source {
    /// The source of connection number `n` (0, 1, …) of the run.
    pub(crate) fn nth(&self, n: u64) -> SocketAddr {
        match *self {
            Self::Fixed(a) => a,
            Self::Vary { net, len } => {
                let port = 1024 + (n % 64_512) as u16;
                let host_bits = if net.is_ipv4() { 32 } else { 128 } - u32::from(len);
                let hosts = 1u128.checked_shl(host_bits).unwrap_or(0); // 0: 2^128
                let off = match hosts {
                    1 => 0,
                    2 => u128::from(n % 2),
                    0 => u128::from(n) + 1,
                    h => 1 + u128::from(n) % (h - 2),
                };
                let ip = match net {
                    IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) + off as u32)),
                    IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) + off)),
                };
                SocketAddr::new(ip, port)
            }
        }
    }
}

impl Proxy {
    /// Writes the header of connection number `n` to `dst` (the server's address) into `out`,
    /// replacing its contents. When `dst` is of the other family than the source, the header
    /// names the unspecified address of the source's family as the destination.
    pub(crate) fn render(&self, n: u64, dst: SocketAddr, out: &mut Vec<u8>) {
        use std::io::Write as _;
        out.clear();
        let src = self.source.nth(n);
        let dst_ip = match (src.ip(), dst.ip()) {
            (IpAddr::V4(_), IpAddr::V4(d)) => IpAddr::V4(d),
            (IpAddr::V4(_), IpAddr::V6(d)) => {
                IpAddr::V4(d.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED))
            }
            (IpAddr::V6(_), IpAddr::V6(d)) => IpAddr::V6(d),
            (IpAddr::V6(_), IpAddr::V4(d)) => IpAddr::V6(d.to_ipv6_mapped()),
        };
        match self.version {
            Version::V1 => {
                let fam = if src.is_ipv4() { "TCP4" } else { "TCP6" };
                // Writing to a Vec cannot fail.
                let _ = write!(
                    out,
                    "PROXY {fam} {} {dst_ip} {} {}\r\n",
                    src.ip(),
                    src.port(),
                    dst.port()
                );
            }
            Version::V2 => {
                out.extend_from_slice(V2_SIGNATURE);
                match (src.ip(), dst_ip) {
                    (IpAddr::V4(s), IpAddr::V4(d)) => {
                        // Version 2, command PROXY; TCP over IPv4; 12 octets of addresses.
                        out.extend_from_slice(&[0x21, 0x11, 0, 12]);
                        out.extend_from_slice(&s.octets());
                        out.extend_from_slice(&d.octets());
                    }
                    (IpAddr::V6(s), IpAddr::V6(d)) => {
                        out.extend_from_slice(&[0x21, 0x21, 0, 36]);
                        out.extend_from_slice(&s.octets());
                        out.extend_from_slice(&d.octets());
                    }
                    _ => unreachable!("the destination has the source's family"),
                }
                out.extend_from_slice(&src.port().to_be_bytes());
                out.extend_from_slice(&dst.port().to_be_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    #[test]
    fn sources_parse_and_vary() {
        assert_eq!(
            parse_source("192.0.2.1:1234"),
            Ok(Source::Fixed(addr("192.0.2.1:1234")))
        );
        assert_eq!(
            parse_source("[2001:db8::1]:25"),
            Ok(Source::Fixed(addr("[2001:db8::1]:25")))
        );
        let s = parse_source("192.0.2.77/24").expect("net");
        assert_eq!(
            s,
            Source::Vary {
                net: "192.0.2.0".parse().expect("ip"),
                len: 24
            }
        );
        assert_eq!(s.nth(0), addr("192.0.2.1:1024"));
        assert_eq!(s.nth(253), addr("192.0.2.254:1277"));
        assert_eq!(
            s.nth(254),
            addr("192.0.2.1:1278"),
            "cycles, skipping .0 and .255"
        );
        let one = parse_source("198.51.100.7").expect("one address");
        assert_eq!(
            one.nth(5).ip(),
            "198.51.100.7".parse::<IpAddr>().expect("ip")
        );
        assert_eq!(one.nth(5).port(), 1029);
        let all = parse_source("0.0.0.0/0").expect("all");
        assert_eq!(all.nth(0).ip(), "0.0.0.1".parse::<IpAddr>().expect("ip"));
        let v6 = parse_source("2001:db8::/32").expect("v6");
        assert_eq!(v6.nth(1).ip(), "2001:db8::2".parse::<IpAddr>().expect("ip"));
        for bad in [
            "",
            "x",
            "192.0.2.1/33",
            "2001:db8::/129",
            "192.0.2.1:",
            "1.2.3.4/x",
        ] {
            assert!(parse_source(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_version("v2"), Ok(Version::V2));
        assert!(parse_version("v3").is_err());
    }

    #[test]
    fn headers_render() {
        let mut out = Vec::new();
        let p = Proxy {
            version: Version::V1,
            source: Source::Fixed(addr("192.0.2.1:1234")),
        };
        p.render(0, addr("127.0.0.1:2525"), &mut out);
        assert_eq!(out, b"PROXY TCP4 192.0.2.1 127.0.0.1 1234 2525\r\n");
        let p = Proxy {
            version: Version::V1,
            source: Source::Fixed(addr("[2001:db8::7]:40000")),
        };
        p.render(0, addr("127.0.0.1:25"), &mut out);
        assert_eq!(out, b"PROXY TCP6 2001:db8::7 ::ffff:127.0.0.1 40000 25\r\n");
        let p = Proxy {
            version: Version::V2,
            source: Source::Fixed(addr("198.51.100.23:40001")),
        };
        p.render(0, addr("127.0.0.1:25"), &mut out);
        let mut want = V2_SIGNATURE.to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0, 12, 198, 51, 100, 23, 127, 0, 0, 1]);
        want.extend_from_slice(&[0x9c, 0x41, 0, 25]);
        assert_eq!(out, want);
        let p = Proxy {
            version: Version::V2,
            source: Source::Fixed(addr("[2001:db8::7]:1")),
        };
        p.render(0, addr("[::1]:25"), &mut out);
        assert_eq!(out.len(), 16 + 36);
        assert_eq!(&out[12..16], &[0x21, 0x21, 0, 36]);
        assert_eq!(
            p.to_string(),
            "PROXY v2 from [2001:db8::7]:1",
            "for the report"
        );
    }
}
