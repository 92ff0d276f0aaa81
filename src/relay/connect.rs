//! Opening the socket to a next hop, shared by the delivery stage's connections and the
//! recipient verifier's probes: TCP to a route's `host:port` or to one MX address, or a unix
//! socket, with `TCP_NODELAY`, within a time limit when the caller gives one. A failure is the
//! `4.4.1 connect to …` reply that defers the recipients.
//!
//! It does not read the greeting or speak SMTP, LMTP or TLS (see `stage` and `verify`, and
//! [`super::tls`]), and does not look MX hosts up (see [`super::mx`]).

use std::fmt::Display;
use std::future::Future;
use std::io;
use std::time::Duration;

use tokio::net::{TcpStream, ToSocketAddrs, UnixStream};

use super::route::Target;
use super::tls::Io;
use crate::smtp::client::{Protocol, Reply};

/// A new connection to a route's fixed target.
pub(super) struct Opened {
    /// The socket.
    pub(super) io: Box<dyn Io>,
    /// For the log: `host[addr]:port` (`host:port` when the peer's address is unknown), or the
    /// socket's path.
    pub(super) relay: String,
    /// LMTP for an `lmtp:` target, else SMTP.
    pub(super) protocol: Protocol,
}

/// Connects to a route's fixed target (`smtp:[host]:port`, `lmtp:[host]:port`,
/// `lmtp:unix:/path`), within `limit` if given (else the caller bounds the time).
///
/// # Errors
/// `4.4.1 connect to TARGET: …` with the reason (or `timed out`); a 4.3.5 reply for an `mx`
/// target, which has no fixed host.
pub(super) async fn target(target: &Target, limit: Option<Duration>) -> Result<Opened, Reply> {
    match target {
        Target::Smtp(host, port) | Target::Lmtp(host, port) => {
            let s = tcp((host.as_str(), *port), target, limit).await?;
            let relay = s.peer_addr().map_or_else(
                |_| format!("{host}:{port}"),
                |a| format!("{host}[{}]:{}", a.ip(), a.port()),
            );
            let protocol = if target.is_lmtp() {
                Protocol::Lmtp
            } else {
                Protocol::Smtp
            };
            Ok(Opened {
                io: Box::new(s),
                relay,
                protocol,
            })
        }
        Target::LmtpUnix(path) => {
            let s = within(limit, target, UnixStream::connect(path)).await?;
            Ok(Opened {
                io: Box::new(s),
                relay: path.display().to_string(),
                protocol: Protocol::Lmtp,
            })
        }
        Target::Mx(_) => Err(Reply::local(451, "4.3.5 an mx route has no fixed host")),
    }
}

/// Connects over TCP to `addr` (a `(host, port)` pair or an address) within `limit` if given,
/// and sets `TCP_NODELAY`.
///
/// # Errors
/// `4.4.1 connect to NAME: …` with the reason (or `timed out`).
pub(super) async fn tcp(
    addr: impl ToSocketAddrs,
    name: &dyn Display,
    limit: Option<Duration>,
) -> Result<TcpStream, Reply> {
    let s = within(limit, name, TcpStream::connect(addr)).await?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// Awaits a connect, within `limit` if given; its error becomes the 4.4.1 reply naming `name`.
async fn within<T>(
    limit: Option<Duration>,
    name: &dyn Display,
    connect: impl Future<Output = io::Result<T>>,
) -> Result<T, Reply> {
    let fail = |why: &dyn Display| Reply::local(451, format!("4.4.1 connect to {name}: {why}"));
    let res = match limit {
        Some(limit) => tokio::time::timeout(limit, connect)
            .await
            .map_err(|_| fail(&"timed out"))?,
        None => connect.await,
    };
    res.map_err(|e| fail(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error's text, or "connected".
    fn text<T>(r: Result<T, Reply>) -> String {
        r.err()
            .map_or_else(|| "connected".into(), |e| e.to_string())
    }

    #[tokio::test]
    async fn failures_are_replies_naming_the_target() {
        // A port nothing listens on (bound, then closed).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let smtp = Target::Smtp("127.0.0.1".into(), port);
        let e = text(target(&smtp, Some(Duration::from_secs(5))).await);
        assert!(
            e.starts_with(&format!("451 4.4.1 connect to smtp:[127.0.0.1]:{port}: ")),
            "{e}"
        );
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let e = text(tcp(addr, &"mx.test[127.0.0.1]", None).await);
        assert!(
            e.starts_with("451 4.4.1 connect to mx.test[127.0.0.1]: "),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let unix = Target::LmtpUnix(dir.path().join("missing.sock"));
        let e = text(target(&unix, None).await);
        assert!(
            e.starts_with(&format!("451 4.4.1 connect to {unix}: ")),
            "{e}"
        );
        let e = text(target(&Target::Mx(25), None).await);
        assert_eq!(e, "451 4.3.5 an mx route has no fixed host");
    }
}
