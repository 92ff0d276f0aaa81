//! Command-line flags: Postfix smtp-source's short flags where they mean the same (getopt style:
//! `-s 10`, `-s10`, `-dc`), plus long flags of our own.
//!
//! It only parses and checks; it does not resolve host names (see [`Config::target`]) or open
//! files.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::message::Shape;
use crate::proxy::{self, Proxy};

/// Most concurrent sessions (each is a socket and a few KiB of buffers).
pub(crate) const MAX_SESSIONS: usize = 100_000;
/// Most recipients per message. RFC 5321 §4.5.3.1.8 requires servers to take at least 100.
pub(crate) const MAX_RECIPIENTS: u32 = 1000;
/// Largest message body (`-l`); the wire form is rendered once and kept in memory.
pub(crate) const MAX_SIZE: usize = 256 * 1024 * 1024;
/// Most event-loop threads.
pub(crate) const MAX_THREADS: usize = 256;
/// Default reply (and connect) timeout.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default body size (`-l`).
pub(crate) const DEFAULT_SIZE: usize = 1024;

/// Which address family to connect with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    /// Whatever the name resolves to first.
    Any,
    /// `-4`.
    V4,
    /// `-6`.
    V6,
}

/// A load run's settings.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Config {
    /// `-s`: concurrent sessions.
    pub(crate) sessions: usize,
    /// `-m`: messages in all; `None` means until `--duration` ends.
    pub(crate) messages: Option<u64>,
    /// `-l`, `-r`, `-f`, `-t`, `-M`, `-S`: what the messages look like.
    pub(crate) shape: Shape,
    /// `-d`: many messages per connection.
    pub(crate) keep: bool,
    /// `-c`: progress line even when stderr is not a terminal.
    pub(crate) count: bool,
    /// `-A`: go on after a negative reply.
    pub(crate) allow_fail: bool,
    /// `-4` / `-6`.
    pub(crate) family: Family,
    /// `--pipelining` / `--no-pipelining`.
    pub(crate) pipelining: bool,
    /// `--bdat`: send each message as one `BDAT <n> LAST` (RFC 3030) instead of DATA.
    pub(crate) bdat: bool,
    /// `--proxy` / `--proxy-source`: a PROXY protocol header first on every connection.
    pub(crate) proxy: Option<Proxy>,
    /// `--rate`: open-loop messages per second.
    pub(crate) rate: Option<f64>,
    /// `--duration`: stop starting messages after this long.
    pub(crate) duration: Option<Duration>,
    /// `--json`: the report as JSON on stdout.
    pub(crate) json: bool,
    /// `--ack-log`: append each acknowledged message's token to this file.
    pub(crate) ack_log: Option<PathBuf>,
    /// `--timeout`: longest wait for a connect or a reply.
    pub(crate) timeout: Duration,
    /// `--threads`: event loops (sessions are spread over them).
    pub(crate) threads: usize,
    /// `HOST:PORT` as given (resolved by the engine).
    pub(crate) target: String,
    /// `--starttls`: every session upgrades to TLS after EHLO.
    pub(crate) starttls: Option<StartTls>,
}

/// How `--starttls` checks the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StartTls {
    /// `--tls-insecure`: accept any certificate (test certificates); the handshake is still
    /// checked for a valid signature by the certificate's key.
    pub(crate) insecure: bool,
    /// `--tls-ca FILE`: the PEM certificates to trust (there is no built-in root store).
    pub(crate) ca: Option<PathBuf>,
    /// `--tls-name NAME`: the name sent as SNI and checked in the certificate (default: the
    /// target's host).
    pub(crate) name: Option<String>,
}

/// What to do.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Mode {
    /// Send mail.
    Run(Config),
    /// `--verify-eml DIR --ack-log FILE`: check that every acknowledged message is in `DIR`.
    Verify {
        /// Message shape flags (must match the run's).
        config: Config,
        /// Directory of exported `.eml` files.
        dir: PathBuf,
    },
    /// `--render TOKEN`: print the canonical message for a token.
    Render {
        /// Message shape flags.
        config: Config,
        /// The token.
        token: String,
    },
    /// `-h` / `--help`.
    Help,
}

/// A flag problem, with the text to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ArgsError(pub(crate) String);

impl std::fmt::Display for ArgsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The usage text.
pub(crate) const USAGE: &str = "\
usage: smtp-source [options] HOST[:PORT]      (also [::1]:PORT; default port 25)

Postfix smtp-source compatible:
  -s N          concurrent sessions (default 1)
  -m N          messages in all (default 1; unlimited with --duration)
  -l N          body size in bytes, 79-character lines (default 1024)
  -r N          recipients per message (default 1; several get 1to, 2to, ...)
  -d            send many messages per connection (default: one, then QUIT)
  -f ADDR       sender (default foo@HELO-NAME)
  -t ADDR       recipient (default foo@HELO-NAME)
  -M NAME       HELO name and Message-ID domain (default: this host's name)
  -S TEXT       Subject header (default: none)
  -c            show a running count even when stderr is not a terminal
  -A            go on after negative replies (default: stop at the first)
  -4 / -6       connect over IPv4 / IPv6 only
Our own:
  --pipelining / --no-pipelining   use PIPELINING when offered (default on)
  --starttls        STARTTLS after EHLO on every connection, then EHLO again (rustls)
  --tls-ca FILE     with --starttls: trust the PEM certificates in FILE
  --tls-insecure    with --starttls: accept any certificate (test certificates)
  --tls-name NAME   with --starttls: SNI and certificate name (default: HOST)
  --bdat            send each message as one BDAT <n> LAST (CHUNKING, RFC 3030) instead of
                    DATA: right after RCPT with pipelining, else after RCPT's reply; the
                    server must offer CHUNKING
  --proxy v1|v2     start every connection with a PROXY protocol header, as a balancer does
  --proxy-source S  its source: ADDR:PORT (every connection), or ADDR or ADDR/LEN (a new
                    address of the network and a new port per connection; default 192.0.2.0/24)
  --rate N          open loop: start N messages per second; latency counts from the
                    intended start, so stalls are not hidden
  --duration SECS   stop starting messages after SECS (with -m: whichever comes first)
  --timeout SECS    longest wait for a connect or a reply (default 30)
  --threads N       event-loop threads (default 1)
  --json            print the report as JSON on stdout
  --ack-log FILE    append the token of every message answered 250, one per line
  --verify-eml DIR  with --ack-log and the run's -l/-f/-t/-M/-S/-r: check that every
                    acknowledged message is in DIR exactly once, byte for byte
  --render TOKEN    print the message for TOKEN (with the run's shape flags)
  -h, --help
Exit status: 0 when every message was acknowledged, 1 otherwise, 2 for usage errors.
";

/// Parses the arguments (without the program name).
///
/// # Errors
/// [`ArgsError`] for an unknown flag, a missing or bad value, or a missing target.
pub(crate) fn parse(
    args: impl IntoIterator<Item = OsString>,
    hostname: &str,
) -> Result<Mode, ArgsError> {
    let mut args: Vec<String> = args
        .into_iter()
        .map(|a| {
            a.into_string()
                .map_err(|_| ArgsError("arguments must be UTF-8".into()))
        })
        .collect::<Result<_, _>>()?;
    args.reverse();
    let mut p = Partial::default();
    let mut positional = Vec::new();
    while let Some(arg) = args.pop() {
        if arg == "--" {
            positional.extend(args.drain(..).rev());
        } else if let Some(long) = arg.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (long, None),
            };
            p.long(name, inline, &mut args)?;
        } else if arg.len() > 1 && arg.starts_with('-') {
            let flags: Vec<char> = arg[1..].chars().collect();
            let mut i = 0;
            while i < flags.len() {
                let c = flags[i];
                i += 1;
                if takes_value(c) {
                    let rest: String = flags[i..].iter().collect();
                    let value = if rest.is_empty() {
                        args.pop()
                            .ok_or_else(|| ArgsError(format!("-{c} needs a value")))?
                    } else {
                        rest
                    };
                    p.short_value(c, &value)?;
                    break;
                }
                p.short_flag(c)?;
            }
        } else {
            positional.push(arg);
        }
    }
    p.finish(positional, hostname)
}

fn takes_value(c: char) -> bool {
    matches!(c, 's' | 'm' | 'l' | 'r' | 'f' | 't' | 'M' | 'S')
}

#[derive(Default)]
struct Partial {
    sessions: Option<usize>,
    messages: Option<u64>,
    size: Option<usize>,
    recipients: Option<u32>,
    from: Option<String>,
    to: Option<String>,
    helo: Option<String>,
    subject: Option<String>,
    keep: bool,
    count: bool,
    allow_fail: bool,
    family: Option<Family>,
    no_pipelining: bool,
    bdat: bool,
    proxy: Option<proxy::Version>,
    proxy_source: Option<proxy::Source>,
    rate: Option<f64>,
    duration: Option<Duration>,
    timeout: Option<Duration>,
    threads: Option<usize>,
    json: bool,
    ack_log: Option<PathBuf>,
    verify: Option<PathBuf>,
    render: Option<String>,
    help: bool,
    starttls: bool,
    tls_insecure: bool,
    tls_ca: Option<PathBuf>,
    tls_name: Option<String>,
}

impl Partial {
    fn short_flag(&mut self, c: char) -> Result<(), ArgsError> {
        match c {
            'd' => self.keep = true,
            'c' => self.count = true,
            'A' => self.allow_fail = true,
            '4' => self.family = Some(Family::V4),
            '6' => self.family = Some(Family::V6),
            'h' => self.help = true,
            'C' | 'F' | 'L' | 'N' | 'o' | 'R' | 'T' | 'v' | 'w' => {
                return Err(ArgsError(format!(
                    "-{c} (a Postfix smtp-source option) is not supported"
                )))
            }
            _ => return Err(ArgsError(format!("unknown option -{c}"))),
        }
        Ok(())
    }

    fn short_value(&mut self, c: char, v: &str) -> Result<(), ArgsError> {
        match c {
            's' => self.sessions = Some(number(c, v, 1, MAX_SESSIONS as u64)? as usize),
            'm' => self.messages = Some(number(c, v, 1, u64::MAX)?),
            'l' => self.size = Some(number(c, v, 0, MAX_SIZE as u64)? as usize),
            'r' => self.recipients = Some(number(c, v, 1, u64::from(MAX_RECIPIENTS))? as u32),
            'f' => self.from = Some(address(c, v)?),
            't' => self.to = Some(address(c, v)?),
            'M' => self.helo = Some(word(c, v)?),
            'S' => self.subject = Some(line(c, v)?),
            _ => return Err(ArgsError(format!("unknown option -{c}"))),
        }
        Ok(())
    }

    fn long(
        &mut self,
        name: &str,
        inline: Option<String>,
        rest: &mut Vec<String>,
    ) -> Result<(), ArgsError> {
        let mut value = || {
            inline
                .clone()
                .or_else(|| rest.pop())
                .ok_or_else(|| ArgsError(format!("--{name} needs a value")))
        };
        match name {
            "pipelining" => self.no_pipelining = false,
            "no-pipelining" => self.no_pipelining = true,
            "bdat" => self.bdat = true,
            "proxy" => self.proxy = Some(proxy::parse_version(&value()?).map_err(ArgsError)?),
            "proxy-source" => {
                self.proxy_source = Some(proxy::parse_source(&value()?).map_err(ArgsError)?);
            }
            "json" => self.json = true,
            "help" => self.help = true,
            "starttls" => self.starttls = true,
            "tls-insecure" => self.tls_insecure = true,
            "tls-ca" => self.tls_ca = Some(PathBuf::from(value()?)),
            "tls-name" => {
                let v = value()?;
                let ok =
                    word('-', &v).map_err(|_| ArgsError(format!("--tls-name: bad name {v:?}")))?;
                self.tls_name = Some(ok);
            }
            "rate" => {
                let v = value()?;
                let r: f64 = v
                    .parse()
                    .map_err(|_| ArgsError(format!("--rate: bad number {v:?}")))?;
                if !(r.is_finite() && r > 0.0) {
                    return Err(ArgsError("--rate must be above 0".into()));
                }
                self.rate = Some(r);
            }
            "duration" => self.duration = Some(seconds(name, &value()?)?),
            "timeout" => self.timeout = Some(seconds(name, &value()?)?),
            "threads" => {
                let v = value()?;
                self.threads = Some(number('-', &v, 1, MAX_THREADS as u64)? as usize);
            }
            "ack-log" => self.ack_log = Some(PathBuf::from(value()?)),
            "verify-eml" => self.verify = Some(PathBuf::from(value()?)),
            "render" => self.render = Some(value()?),
            _ => return Err(ArgsError(format!("unknown option --{name}"))),
        }
        if inline.is_some()
            && matches!(
                name,
                "pipelining"
                    | "no-pipelining"
                    | "bdat"
                    | "json"
                    | "help"
                    | "starttls"
                    | "tls-insecure"
            )
        {
            return Err(ArgsError(format!("--{name} takes no value")));
        }
        Ok(())
    }

    fn finish(self, positional: Vec<String>, hostname: &str) -> Result<Mode, ArgsError> {
        if self.help {
            return Ok(Mode::Help);
        }
        let helo = self.helo.unwrap_or_else(|| hostname.to_string());
        let sessions = self.sessions.unwrap_or(1);
        let threads = self.threads.unwrap_or(1);
        if threads > sessions {
            return Err(ArgsError(format!(
                "--threads {threads} is more than -s {sessions}"
            )));
        }
        let messages = match (self.messages, self.duration) {
            (Some(m), _) => Some(m),
            (None, Some(_)) => None,
            (None, None) => Some(1),
        };
        let proxy = match (self.proxy, self.proxy_source) {
            (Some(version), source) => Some(Proxy {
                version,
                source: match source {
                    Some(s) => s,
                    None => proxy::parse_source(proxy::DEFAULT_SOURCE).map_err(ArgsError)?,
                },
            }),
            (None, Some(_)) => return Err(ArgsError("--proxy-source needs --proxy v1|v2".into())),
            (None, None) => None,
        };
        let tool = self.verify.is_some() || self.render.is_some();
        let starttls = if self.starttls {
            if !self.tls_insecure && self.tls_ca.is_none() {
                return Err(ArgsError(
                    "--starttls needs --tls-ca FILE or --tls-insecure (no built-in root store)"
                        .into(),
                ));
            }
            Some(StartTls {
                insecure: self.tls_insecure,
                ca: self.tls_ca,
                name: self.tls_name,
            })
        } else {
            if self.tls_insecure || self.tls_ca.is_some() || self.tls_name.is_some() {
                return Err(ArgsError(
                    "--tls-ca, --tls-insecure and --tls-name need --starttls".into(),
                ));
            }
            None
        };
        let target = match positional.as_slice() {
            [t] => t.clone(),
            [] if tool => String::new(),
            [] => return Err(ArgsError("missing HOST:PORT (try --help)".into())),
            more => return Err(ArgsError(format!("one target expected, got {more:?}"))),
        };
        let config = Config {
            sessions,
            messages,
            shape: Shape {
                from: self.from.unwrap_or_else(|| format!("foo@{helo}")),
                to: self.to.unwrap_or_else(|| format!("foo@{helo}")),
                recipients: self.recipients.unwrap_or(1),
                subject: self.subject,
                size: self.size.unwrap_or(DEFAULT_SIZE),
                helo,
            },
            keep: self.keep,
            count: self.count,
            allow_fail: self.allow_fail,
            family: self.family.unwrap_or(Family::Any),
            pipelining: !self.no_pipelining,
            bdat: self.bdat,
            proxy,
            rate: self.rate,
            duration: self.duration,
            json: self.json,
            ack_log: self.ack_log,
            timeout: self.timeout.unwrap_or(DEFAULT_TIMEOUT),
            threads,
            target,
            starttls,
        };
        if let Some(dir) = self.verify {
            if config.ack_log.is_none() {
                return Err(ArgsError("--verify-eml needs --ack-log FILE".into()));
            }
            return Ok(Mode::Verify { config, dir });
        }
        if let Some(token) = self.render {
            return Ok(Mode::Render { config, token });
        }
        Ok(Mode::Run(config))
    }
}

fn number(flag: char, v: &str, min: u64, max: u64) -> Result<u64, ArgsError> {
    let n: u64 = v
        .parse()
        .map_err(|_| ArgsError(format!("-{flag}: not a number: {v:?}")))?;
    if n < min || n > max {
        return Err(ArgsError(format!("-{flag}: {n} is outside {min}..={max}")));
    }
    Ok(n)
}

fn seconds(name: &str, v: &str) -> Result<Duration, ArgsError> {
    let s: f64 = v
        .parse()
        .map_err(|_| ArgsError(format!("--{name}: not a number of seconds: {v:?}")))?;
    if !(s.is_finite() && s > 0.0 && s < 1e9) {
        return Err(ArgsError(format!("--{name} must be above 0")));
    }
    Ok(Duration::from_secs_f64(s))
}

/// An address for MAIL FROM / RCPT TO: no brackets, spaces or control characters (they would
/// change the command), and short enough for RFC 5321 §4.5.3.1.3 (256-octet paths).
fn address(flag: char, v: &str) -> Result<String, ArgsError> {
    let v = v
        .strip_prefix('<')
        .and_then(|x| x.strip_suffix('>'))
        .unwrap_or(v);
    if v.len() > 254
        || v.bytes()
            .any(|b| b <= b' ' || b == b'<' || b == b'>' || b == 0x7f)
    {
        return Err(ArgsError(format!("-{flag}: bad address {v:?}")));
    }
    Ok(v.to_string())
}

fn word(flag: char, v: &str) -> Result<String, ArgsError> {
    if v.is_empty() || v.len() > 255 || v.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(ArgsError(format!("-{flag}: bad name {v:?}")));
    }
    Ok(v.to_string())
}

fn line(flag: char, v: &str) -> Result<String, ArgsError> {
    if v.len() > 900 || v.bytes().any(|b| b == b'\r' || b == b'\n') {
        return Err(ArgsError(format!("-{flag}: bad header text {v:?}")));
    }
    Ok(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Config, ArgsError> {
        match parse(args.iter().map(OsString::from), "myhost")? {
            Mode::Run(c) => Ok(c),
            other => panic!("not a run: {other:?}"),
        }
    }

    #[test]
    fn postfix_style_flags() {
        let c = run(&[
            "-s",
            "10",
            "-m",
            "20000",
            "-l",
            "1024",
            "-d",
            "-M",
            "bench.test",
            "-f",
            "s@bench.test",
            "-t",
            "<r@bench.test>",
            "-S",
            "hi there",
            "-r5",
            "127.0.0.1:2526",
        ])
        .expect("parses");
        assert_eq!(c.sessions, 10);
        assert_eq!(c.messages, Some(20000));
        assert_eq!(c.shape.size, 1024);
        assert!(c.keep && !c.count && !c.allow_fail && c.pipelining);
        assert_eq!(c.shape.helo, "bench.test");
        assert_eq!(c.shape.from, "s@bench.test");
        assert_eq!(c.shape.to, "r@bench.test");
        assert_eq!(c.shape.subject.as_deref(), Some("hi there"));
        assert_eq!(c.shape.recipients, 5);
        assert_eq!(c.target, "127.0.0.1:2526");
    }

    #[test]
    fn starttls_flags() {
        assert_eq!(run(&["127.0.0.1:25"]).expect("parses").starttls, None);
        let c = run(&["--starttls", "--tls-insecure", "127.0.0.1:25"]).expect("parses");
        assert_eq!(
            c.starttls,
            Some(StartTls {
                insecure: true,
                ca: None,
                name: None
            })
        );
        let c = run(&[
            "--starttls",
            "--tls-ca=ca.pem",
            "--tls-name",
            "mx.example.test",
            "127.0.0.1:25",
        ])
        .expect("parses");
        assert_eq!(
            c.starttls,
            Some(StartTls {
                insecure: false,
                ca: Some(PathBuf::from("ca.pem")),
                name: Some("mx.example.test".into())
            })
        );
        for bad in [
            &["--starttls", "x:25"][..],
            &["--tls-insecure", "x:25"][..],
            &["--tls-name", "mx", "x:25"][..],
            &["--starttls=yes", "--tls-insecure", "x:25"][..],
            &["--starttls", "--tls-insecure", "--tls-name", "a b", "x:25"][..],
        ] {
            assert!(run(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn clustered_and_attached_short_flags() {
        let c = run(&["-dcAs50", "-m7", "-6", "[::1]:25"]).expect("parses");
        assert!(c.keep && c.count && c.allow_fail);
        assert_eq!((c.sessions, c.messages), (50, Some(7)));
        assert_eq!(c.family, Family::V6);
    }

    #[test]
    fn defaults() {
        let c = run(&["mx.example"]).expect("parses");
        assert_eq!((c.sessions, c.messages, c.threads), (1, Some(1), 1));
        assert_eq!(c.shape.from, "foo@myhost");
        assert_eq!(c.shape.helo, "myhost");
        assert_eq!(c.shape.size, DEFAULT_SIZE);
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        assert!(!c.keep && c.pipelining && c.rate.is_none());
        assert!(!c.bdat && c.proxy.is_none());
        // --duration without -m means "until time is up".
        let c = run(&["--duration", "2.5", "x:1"]).expect("parses");
        assert_eq!(c.messages, None);
        assert_eq!(c.duration, Some(Duration::from_millis(2500)));
    }

    #[test]
    fn long_flags() {
        let c = run(&[
            "--no-pipelining",
            "--rate=500",
            "--json",
            "--ack-log",
            "/tmp/a",
            "--timeout",
            "3",
            "--threads",
            "2",
            "-s",
            "4",
            "x:1",
        ])
        .expect("parses");
        assert!(!c.pipelining && c.json);
        assert_eq!(c.rate, Some(500.0));
        assert_eq!(c.ack_log, Some(PathBuf::from("/tmp/a")));
        assert_eq!(c.timeout, Duration::from_secs(3));
        assert_eq!(c.threads, 2);
    }

    #[test]
    fn bdat_and_proxy_flags() {
        let c = run(&[
            "--bdat",
            "--proxy",
            "v2",
            "--proxy-source=192.0.2.1:1234",
            "x:1",
        ])
        .expect("parses");
        assert!(c.bdat);
        assert_eq!(
            c.proxy,
            Some(Proxy {
                version: proxy::Version::V2,
                source: proxy::Source::Fixed("192.0.2.1:1234".parse().expect("addr")),
            })
        );
        let c = run(&["--proxy", "v1", "x:1"]).expect("parses");
        assert_eq!(
            c.proxy.map(|p| p.to_string()).as_deref(),
            Some("PROXY v1 from 192.0.2.0/24")
        );
        for bad in [
            &["--proxy-source", "192.0.2.1:1", "x:1"][..],
            &["--proxy", "v3", "x:1"],
            &["--proxy", "v1", "--proxy-source", "nowhere", "x:1"],
            &["--bdat=1", "x:1"],
        ] {
            assert!(
                parse(bad.iter().map(OsString::from), "h").is_err(),
                "{bad:?} should fail"
            );
        }
    }

    #[test]
    fn errors() {
        for bad in [
            &["-s", "0", "x:1"][..],
            &["-s"],
            &["-m", "ten", "x:1"],
            &["-q", "x:1"],
            &["-v", "x:1"],
            &["--rate", "0", "x:1"],
            &["--bogus", "x:1"],
            &["--json=1", "x:1"],
            &["-f", "a b@c", "x:1"],
            &["-S", "a\r\nBcc: x", "x:1"],
            &["-r", "1001", "x:1"],
            &["--threads", "3", "-s", "2", "x:1"],
            &[],
            &["a:1", "b:2"],
        ] {
            assert!(
                parse(bad.iter().map(OsString::from), "h").is_err(),
                "{bad:?} should fail"
            );
        }
        let e = parse(["-v", "x:1"].iter().map(OsString::from), "h").expect_err("fails");
        assert!(e.0.contains("not supported"));
    }

    #[test]
    fn tool_modes() {
        let m = parse(
            ["--verify-eml", "d", "--ack-log", "a", "-l", "100"]
                .iter()
                .map(OsString::from),
            "h",
        )
        .expect("parses");
        assert!(matches!(m, Mode::Verify { ref dir, .. } if dir == &PathBuf::from("d")));
        assert!(parse(["--verify-eml", "d"].iter().map(OsString::from), "h").is_err());
        let m = parse(["--render", "t"].iter().map(OsString::from), "h").expect("parses");
        assert!(matches!(m, Mode::Render { ref token, .. } if token == "t"));
        assert_eq!(
            parse(["-h"].iter().map(OsString::from), "h"),
            Ok(Mode::Help)
        );
    }
}
