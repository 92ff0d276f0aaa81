//! Routes: where a recipient's mail goes next, by recipient domain.
//!
//! A target is `smtp:[host]:port`, `lmtp:[host]:port` or `lmtp:unix:/path` (the brackets, as
//! in Postfix, say "this host, no MX lookup"; a named target never has its MX looked up, so
//! `host:port` means the same), or `mx` / `mx:PORT`: the recipient domain's MX hosts, looked up
//! in the DNS at delivery time ([`super::mx`]), on port 25 or PORT. Each route has a TLS policy
//! (and an optional CA file to verify the next hop against), a connection limit, an optional
//! HELO name, and whether its recipients are verified with the target at RCPT (`verify`, see
//! [`super::verify`]). This module parses and looks up; it opens nothing (the CA file is read
//! by [`super::tls`]).

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

/// Default outbound connections per route.
pub const DEFAULT_CONCURRENCY: usize = 8;
/// Largest `concurrency` accepted.
pub const MAX_CONCURRENCY: usize = 1024;

/// SMTP or LMTP, over TCP or a unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `smtp:[host]:port`.
    Smtp(String, u16),
    /// `lmtp:[host]:port`.
    Lmtp(String, u16),
    /// `lmtp:unix:/path`.
    LmtpUnix(PathBuf),
    /// `mx` or `mx:PORT`: SMTP to the recipient domain's MX hosts (RFC 5321 §5), on this port.
    Mx(u16),
}

/// The SMTP port of MX hosts.
pub const MX_PORT: u16 = 25;

impl Target {
    /// Parses `smtp:[host]:port`, `lmtp:[host]:port`, `lmtp:unix:/path`, `mx` or `mx:PORT`.
    ///
    /// # Errors
    /// A message saying what is wrong.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "route target {s:?} is not smtp:[host]:port, lmtp:[host]:port, lmtp:unix:/path, mx or mx:PORT"
            )
        };
        if s == "mx" {
            return Ok(Self::Mx(MX_PORT));
        }
        if let Some(port) = s.strip_prefix("mx:") {
            return match port.parse::<u16>() {
                Ok(p) if p != 0 => Ok(Self::Mx(p)),
                _ => Err(bad()),
            };
        }
        let (proto, rest) = s.split_once(':').ok_or_else(bad)?;
        if proto == "lmtp" {
            if let Some(path) = rest.strip_prefix("unix:") {
                if !path.starts_with('/') {
                    return Err(bad());
                }
                return Ok(Self::LmtpUnix(PathBuf::from(path)));
            }
        }
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() || port == 0 {
            return Err(bad());
        }
        match proto {
            "smtp" => Ok(Self::Smtp(host.to_string(), port)),
            "lmtp" => Ok(Self::Lmtp(host.to_string(), port)),
            _ => Err(bad()),
        }
    }

    /// Whether it speaks LMTP.
    pub fn is_lmtp(&self) -> bool {
        matches!(self, Self::Lmtp(..) | Self::LmtpUnix(..))
    }

    /// Whether its hosts come from the recipient domain's MX records.
    pub fn is_mx(&self) -> bool {
        matches!(self, Self::Mx(_))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Smtp(h, p) => write!(f, "smtp:[{h}]:{p}"),
            Self::Lmtp(h, p) => write!(f, "lmtp:[{h}]:{p}"),
            Self::LmtpUnix(p) => write!(f, "lmtp:unix:{}", p.display()),
            Self::Mx(MX_PORT) => f.write_str("mx"),
            Self::Mx(p) => write!(f, "mx:{p}"),
        }
    }
}

/// The TLS policy of a route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Never STARTTLS.
    None,
    /// STARTTLS when offered, else in clear; the certificate is checked only against `ca`,
    /// when given (see [`super::tls`]).
    #[default]
    May,
    /// STARTTLS or nothing: never sends in clear; the certificate is verified (against `ca`,
    /// else the system's trust store).
    Encrypt,
}

impl TlsMode {
    /// `none` / `may` / `encrypt`.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::May => "may",
            Self::Encrypt => "encrypt",
        }
    }
}

/// One route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Its key: a domain or `*`.
    pub name: String,
    /// Where to.
    pub target: Target,
    /// TLS policy.
    pub tls: TlsMode,
    /// Outbound connections at most.
    pub concurrency: usize,
    /// HELO/EHLO/LHLO name (default: our hostname).
    pub helo: Option<String>,
    /// PEM file of the CA(s) the next hop's certificate must chain to.
    pub ca: Option<PathBuf>,
    /// Recipients are verified with the target at RCPT (`verify = true`, or
    /// `--verify-recipients` for a route that does not say).
    pub verify: bool,
}

/// A route in the TOML file: a target string, or a table.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RouteSpec {
    /// `"example.org" = "lmtp:[10.0.0.5]:24"`.
    Target(String),
    /// `"example.org" = { target = "…", tls = "encrypt", ca = "/etc/ringmx/ca.pem",
    /// concurrency = 4, helo = "mx.example", verify = true }`.
    Full(RouteTable),
}

/// The table form of a [`RouteSpec`].
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RouteTable {
    /// The target.
    pub target: String,
    /// TLS policy.
    #[serde(default)]
    pub tls: TlsMode,
    /// Connection limit.
    pub concurrency: Option<usize>,
    /// HELO name.
    pub helo: Option<String>,
    /// CA file (PEM).
    pub ca: Option<PathBuf>,
    /// Verify recipients at RCPT (default: `--verify-recipients`).
    pub verify: Option<bool>,
}

impl Route {
    /// A route from its key and TOML spec; `verify_default` is whether it verifies recipients
    /// when the spec does not say (`--verify-recipients`).
    ///
    /// # Errors
    /// A bad target or limit.
    pub fn from_spec(name: &str, spec: &RouteSpec, verify_default: bool) -> Result<Self, String> {
        let (target, tls, concurrency, helo, ca, verify) = match spec {
            RouteSpec::Target(t) => (t.as_str(), TlsMode::default(), None, None, None, None),
            RouteSpec::Full(t) => (
                t.target.as_str(),
                t.tls,
                t.concurrency,
                t.helo.clone(),
                t.ca.clone(),
                t.verify,
            ),
        };
        let concurrency = concurrency.unwrap_or(DEFAULT_CONCURRENCY);
        if !(1..=MAX_CONCURRENCY).contains(&concurrency) {
            return Err(format!(
                "route {name:?}: concurrency = {concurrency} must be between 1 and {MAX_CONCURRENCY}"
            ));
        }
        let target = Target::parse(target)?;
        // Recipient verification asks one next hop that knows the mailboxes; an `mx` route's
        // hosts are other people's servers (asking them would be a callout to the world).
        if target.is_mx() && verify == Some(true) {
            return Err(format!(
                "route {name:?}: verify = true needs a fixed next hop, not {target}"
            ));
        }
        let verify = verify.unwrap_or_else(|| verify_default && !target.is_mx());
        Ok(Self {
            name: name.to_ascii_lowercase(),
            target,
            tls,
            concurrency,
            helo,
            ca,
            verify,
        })
    }
}

/// The routes, looked up by recipient domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    routes: Vec<Route>,
    by_domain: HashMap<String, usize>,
    default: Option<usize>,
}

impl Routes {
    /// A table of `routes` (keys: lower-case domains or `*`).
    pub fn new(routes: Vec<Route>) -> Self {
        let mut t = Self::default();
        for r in routes {
            let i = t.routes.len();
            if r.name == "*" {
                t.default = Some(i);
            } else {
                t.by_domain.insert(r.name.clone(), i);
            }
            t.routes.push(r);
        }
        t
    }

    /// No routes: store only.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Every route, by index.
    pub fn all(&self) -> &[Route] {
        &self.routes
    }

    /// Whether a `"*"` route catches every other domain (bounces to remote senders need it).
    pub fn has_default(&self) -> bool {
        self.default.is_some()
    }

    /// The route index for a recipient address (by its domain, else `*`).
    pub fn for_rcpt(&self, rcpt: &str) -> Option<usize> {
        let domain = rcpt.rsplit_once('@').map_or("", |(_, d)| d);
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        self.by_domain.get(&domain).copied().or(self.default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            Target::parse("smtp:[127.0.0.1]:25").unwrap(),
            Target::Smtp("127.0.0.1".into(), 25)
        );
        assert_eq!(
            Target::parse("lmtp:[::1]:24").unwrap(),
            Target::Lmtp("::1".into(), 24)
        );
        assert_eq!(
            Target::parse("lmtp:unix:/run/dovecot/lmtp").unwrap(),
            Target::LmtpUnix("/run/dovecot/lmtp".into())
        );
        assert_eq!(
            Target::parse("smtp:mail.example:2525").unwrap().to_string(),
            "smtp:[mail.example]:2525"
        );
        assert_eq!(Target::parse("mx").unwrap(), Target::Mx(25));
        assert_eq!(Target::parse("mx:2525").unwrap(), Target::Mx(2525));
        assert_eq!(Target::parse("mx:2525").unwrap().to_string(), "mx:2525");
        assert_eq!(Target::parse("mx:25").unwrap().to_string(), "mx");
        assert!(Target::parse("mx").unwrap().is_mx());
        assert!(!Target::parse("mx").unwrap().is_lmtp());
        for bad in [
            "smtp",
            "smtp:[h]",
            "smtp:[h]:0",
            "http:[h]:80",
            "lmtp:unix:rel",
            "smtp:[]:25",
            "mx:0",
            "mx:",
            "mx:x",
            "mx:[h]:25",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lookup_by_domain_then_star() {
        let r = |name: &str, t: &str| {
            Route::from_spec(name, &RouteSpec::Target(t.into()), false).unwrap()
        };
        let routes = Routes::new(vec![r("a.test", "smtp:[h]:1"), r("*", "lmtp:[h]:2")]);
        assert_eq!(routes.for_rcpt("x@A.Test"), Some(0));
        assert_eq!(routes.for_rcpt("x@b.test"), Some(1));
        assert_eq!(
            Routes::new(vec![r("a.test", "smtp:[h]:1")]).for_rcpt("x@b"),
            None
        );
        let bad = RouteSpec::Full(RouteTable {
            target: "smtp:[h]:1".into(),
            tls: TlsMode::None,
            concurrency: Some(0),
            helo: None,
            ca: None,
            verify: None,
        });
        assert!(Route::from_spec("x", &bad, false).is_err());
        let no = RouteSpec::Full(RouteTable {
            target: "smtp:[h]:1".into(),
            tls: TlsMode::None,
            concurrency: None,
            helo: None,
            ca: None,
            verify: Some(false),
        });
        assert!(!Route::from_spec("x", &no, true).unwrap().verify);
        assert!(!r("x", "smtp:[h]:1").verify);
        let by_default = Route::from_spec("x", &RouteSpec::Target("smtp:[h]:1".into()), true);
        assert!(by_default.unwrap().verify);
        let mx = Route::from_spec("x", &RouteSpec::Target("mx".into()), true);
        assert!(
            !mx.unwrap().verify,
            "--verify-recipients leaves mx routes alone"
        );
        let mx_verify = RouteSpec::Full(RouteTable {
            target: "mx".into(),
            tls: TlsMode::May,
            concurrency: None,
            helo: None,
            ca: None,
            verify: Some(true),
        });
        assert!(Route::from_spec("x", &mx_verify, false).is_err());
    }
}
