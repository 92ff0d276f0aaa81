//! One SMTP command line → a [`Command`] or a [`CommandError`] (RFC 5321 §4.1).
//!
//! The input is one line without its CRLF; the session has already checked its length and that
//! it holds no CR or LF. Verbs are case-insensitive. A few leniencies that cost nothing and that
//! real clients need: spaces after the colon of `MAIL FROM:`/`RCPT TO:`, extra spaces between
//! parameters, trailing spaces, and arguments to NOOP, HELP and QUIT (ignored).
//!
//! This module does not know the session state (sequence errors, limits that depend on the
//! configuration and SMTPUTF8 are the session's) and never allocates.

use memchr::memchr;

use super::envelope::{
    parse_mail_params, parse_path, parse_rcpt_params, AddressError, MailParams, ParamError, Path,
    PathKind,
};
use super::reply::Reply;
use super::MAX_DOMAIN;

/// A syntactically valid command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command<'a> {
    /// `EHLO domain` (RFC 5321 §4.1.1.1); the argument as written.
    Ehlo(&'a str),
    /// `HELO domain`.
    Helo(&'a str),
    /// `MAIL FROM:<reverse-path> [params]`.
    Mail {
        /// The reverse-path.
        path: Path<'a>,
        /// SIZE, BODY, SMTPUTF8.
        params: MailParams,
    },
    /// `RCPT TO:<forward-path>`.
    Rcpt {
        /// The forward-path.
        path: Path<'a>,
    },
    /// `DATA`.
    Data,
    /// `BDAT <size> [LAST]` (RFC 3030); the size is always known, else the line is
    /// [`CommandError::Unframeable`].
    Bdat {
        /// Octets of content following the line.
        size: u64,
        /// `LAST`, nothing, or something invalid.
        ending: super::bdat::Ending,
    },
    /// `RSET`.
    Rset,
    /// `NOOP [text]`.
    Noop,
    /// `QUIT`.
    Quit,
    /// `VRFY text`.
    Vrfy,
    /// `HELP [text]`.
    Help,
    /// `STARTTLS` (RFC 3207); `args` if anything followed the verb (501 5.5.4 when offered).
    StartTls {
        /// Something followed the verb.
        args: bool,
    },
}

/// Why a line is not a valid command. Small and `Copy`; [`CommandError::reply`] says what the
/// client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CommandError {
    /// Not a verb we know (or an empty line): 500 5.5.2.
    Unrecognized,
    /// A verb we know but do not offer (EXPN, AUTH, ETRN, TURN…; STARTTLS when no certificate
    /// is configured, which the session decides): 502 5.5.1.
    NotImplemented,
    /// An HTTP request line (`GET / HTTP/1.1`, `POST`, `CONNECT`…): not an SMTP client at all.
    /// The session answers 221 2.7.0 and closes instead of replying to every header line.
    NotSmtp,
    /// A NUL byte in the line: 501 5.5.4.
    NulByte,
    /// An argument that is not UTF-8: 501 5.5.4.
    InvalidUtf8,
    /// Wrong shape of arguments; carries the syntax to show: 501 5.5.4.
    Syntax(&'static str),
    /// A bad reverse-path: 501 5.1.7 (RFC 3463 "bad sender's mailbox address syntax").
    Sender(AddressError),
    /// A bad forward-path: 501 5.1.3 (RFC 3463 "bad destination mailbox address syntax").
    Recipient(AddressError),
    /// A MAIL or RCPT parameter we do not offer: 555 5.5.4 (RFC 5321 §4.1.1.11).
    UnsupportedParameter,
    /// A parameter with a bad value, twice, or glued to the path: 501 5.5.4.
    BadParameter,
    /// A BDAT line without a size that can be parsed: 501 5.5.4, and the session closes (the
    /// octets that follow can no longer be told from commands).
    Unframeable,
}

impl CommandError {
    /// The reply for this error.
    pub(crate) fn reply(self) -> Reply {
        match self {
            Self::Unrecognized => Reply::new(500, "5.5.2", "Command unrecognized"),
            Self::NotImplemented => Reply::new(502, "5.5.1", "Command not implemented"),
            Self::NotSmtp => super::reply::NOT_SMTP,
            Self::NulByte => Reply::new(501, "5.5.4", "NUL byte in command line"),
            Self::InvalidUtf8 => Reply::new(501, "5.5.4", "Invalid UTF-8 in command line"),
            Self::Syntax(syntax) => Reply::new(501, "5.5.4", syntax),
            Self::Sender(e) => Reply::new(501, "5.1.7", e.text()),
            Self::Recipient(e) => Reply::new(501, "5.1.3", e.text()),
            Self::UnsupportedParameter => Reply::new(555, "5.5.4", "Unsupported parameter"),
            Self::BadParameter => Reply::new(501, "5.5.4", "Bad parameter"),
            Self::Unframeable => super::reply::BDAT_SYNTAX,
        }
    }
}

impl From<ParamError> for CommandError {
    fn from(e: ParamError) -> Self {
        match e {
            ParamError::Unsupported => Self::UnsupportedParameter,
            ParamError::Malformed | ParamError::BadValue | ParamError::Duplicate => {
                Self::BadParameter
            }
        }
    }
}

/// The longest verb we know (`STARTTLS`).
const MAX_VERB: usize = 8;

/// Parses one command line (without CRLF, without CR or LF inside).
///
/// # Errors
/// [`CommandError`] when the line is not a valid command.
pub(crate) fn parse(line: &[u8]) -> Result<Command<'_>, CommandError> {
    if memchr(0, line).is_some() {
        return Err(CommandError::NulByte);
    }
    let line = trim_end(line);
    let verb_len = line
        .iter()
        .position(|c| !c.is_ascii_alphabetic())
        .unwrap_or(line.len());
    let (verb, rest) = line.split_at(verb_len);
    let args = match rest {
        [] => rest,
        [b' ', tail @ ..] => trim_start(tail),
        _ => return Err(CommandError::Unrecognized),
    };
    if verb.is_empty() || verb.len() > MAX_VERB {
        return Err(CommandError::Unrecognized);
    }
    let mut upper = [0u8; MAX_VERB];
    for (u, v) in upper.iter_mut().zip(verb) {
        *u = v.to_ascii_uppercase();
    }
    match &upper[..verb.len()] {
        b"EHLO" => parse_hello(args, "Syntax: EHLO hostname").map(Command::Ehlo),
        b"HELO" => parse_hello(args, "Syntax: HELO hostname").map(Command::Helo),
        b"MAIL" => parse_mail(args),
        b"RCPT" => parse_rcpt(args),
        b"DATA" => no_args(args, Command::Data, "Syntax: DATA"),
        b"RSET" => no_args(args, Command::Rset, "Syntax: RSET"),
        b"NOOP" => Ok(Command::Noop),
        b"QUIT" => Ok(Command::Quit),
        b"HELP" => Ok(Command::Help),
        b"VRFY" if args.is_empty() => Err(CommandError::Syntax("Syntax: VRFY address")),
        b"VRFY" => Ok(Command::Vrfy),
        b"STARTTLS" => Ok(Command::StartTls {
            args: !args.is_empty(),
        }),
        b"BDAT" => super::bdat::parse_args(args)
            .map(|(size, ending)| Command::Bdat { size, ending })
            .map_err(|_| CommandError::Unframeable),
        b"EXPN" | b"AUTH" | b"ETRN" | b"TURN" | b"ATRN" | b"SEND" | b"SOML" | b"SAML" => {
            Err(CommandError::NotImplemented)
        }
        // HTTP/1.x methods (RFC 9110 §9) and the HTTP/2 preface (RFC 9113 §3.4).
        b"GET" | b"HEAD" | b"POST" | b"PUT" | b"DELETE" | b"CONNECT" | b"OPTIONS" | b"TRACE"
        | b"PATCH" | b"PRI" => Err(CommandError::NotSmtp),
        _ => Err(CommandError::Unrecognized),
    }
}

fn trim_end(s: &[u8]) -> &[u8] {
    let end = s
        .iter()
        .rposition(|&c| c != b' ' && c != b'\t')
        .map_or(0, |i| i + 1);
    &s[..end]
}

fn trim_start(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&c| c != b' ').unwrap_or(s.len());
    &s[start..]
}

fn no_args(
    args: &[u8],
    command: Command<'static>,
    syntax: &'static str,
) -> Result<Command<'static>, CommandError> {
    if args.is_empty() {
        Ok(command)
    } else {
        Err(CommandError::Syntax(syntax))
    }
}

/// The EHLO/HELO argument: any printable text up to [`MAX_DOMAIN`] octets. RFC 5321 §4.1.4 says
/// a server must not refuse a session because the name does not match; we only refuse what could
/// not go into a trace header (control characters, nothing at all).
fn parse_hello<'a>(args: &'a [u8], syntax: &'static str) -> Result<&'a str, CommandError> {
    if args.is_empty() || args.len() > MAX_DOMAIN || args.iter().any(|&c| c < 0x20 || c == 0x7f) {
        return Err(CommandError::Syntax(syntax));
    }
    std::str::from_utf8(args).map_err(|_| CommandError::InvalidUtf8)
}

/// `FROM:` / `TO:` (case-insensitive), then optional spaces, then the path as UTF-8.
fn after_keyword<'a>(
    args: &'a [u8],
    keyword: &[u8],
    syntax: &'static str,
) -> Result<&'a str, CommandError> {
    let n = keyword.len();
    if args.len() <= n || !args[..n].eq_ignore_ascii_case(keyword) || args[n] != b':' {
        return Err(CommandError::Syntax(syntax));
    }
    std::str::from_utf8(trim_start(&args[n + 1..])).map_err(|_| CommandError::InvalidUtf8)
}

fn parse_mail(args: &[u8]) -> Result<Command<'_>, CommandError> {
    let s = after_keyword(args, b"FROM", "Syntax: MAIL FROM:<address>")?;
    let (path, rest) = parse_path(s, PathKind::Reverse).map_err(CommandError::Sender)?;
    let params = parse_mail_params(rest)?;
    Ok(Command::Mail { path, params })
}

fn parse_rcpt(args: &[u8]) -> Result<Command<'_>, CommandError> {
    let s = after_keyword(args, b"TO", "Syntax: RCPT TO:<address>")?;
    let (path, rest) = parse_path(s, PathKind::Forward).map_err(CommandError::Recipient)?;
    parse_rcpt_params(rest)?;
    Ok(Command::Rcpt { path })
}

#[cfg(test)]
mod tests {
    use super::super::envelope::{Body, Mailbox};
    use super::*;

    fn mbox<'a>(address: &'a str, local: &'a str, domain: &'a str) -> Path<'a> {
        Path::Mailbox(Mailbox {
            address,
            local,
            domain,
            source_route: false,
            non_ascii: false,
        })
    }

    #[test]
    fn command_table() {
        use Command::*;
        use CommandError::*;
        let no_params = MailParams::default();
        let table: Vec<(&[u8], Result<Command<'_>, CommandError>)> = vec![
            // verbs, any case
            (b"EHLO client.example", Ok(Ehlo("client.example"))),
            (b"ehlo client.example", Ok(Ehlo("client.example"))),
            (b"eHlO [192.0.2.1]", Ok(Ehlo("[192.0.2.1]"))),
            (b"HELO c", Ok(Helo("c"))),
            (b"helo   c  ", Ok(Helo("c"))),
            (b"DATA", Ok(Data)),
            (b"data", Ok(Data)),
            (b"DATA ", Ok(Data)),
            (b"RSET", Ok(Rset)),
            (b"NOOP", Ok(Noop)),
            (b"noop anything at all", Ok(Noop)),
            (b"QUIT", Ok(Quit)),
            (b"HELP", Ok(Help)),
            (b"help mail", Ok(Help)),
            (b"VRFY postmaster", Ok(Vrfy)),
            // MAIL / RCPT
            (
                b"MAIL FROM:<>",
                Ok(Mail {
                    path: Path::Null,
                    params: no_params,
                }),
            ),
            (
                b"mail from:<>",
                Ok(Mail {
                    path: Path::Null,
                    params: no_params,
                }),
            ),
            (
                b"MAIL FROM: <a@b.example>",
                Ok(Mail {
                    path: mbox("a@b.example", "a", "b.example"),
                    params: no_params,
                }),
            ),
            (
                b"MAIL FROM:<a@b.example> SIZE=10 BODY=8BITMIME SMTPUTF8",
                Ok(Mail {
                    path: mbox("a@b.example", "a", "b.example"),
                    params: MailParams {
                        size: Some(10),
                        body: Some(Body::EightBitMime),
                        smtputf8: true,
                    },
                }),
            ),
            (
                b"RCPT TO:<x@y.example>",
                Ok(Rcpt {
                    path: mbox("x@y.example", "x", "y.example"),
                }),
            ),
            (
                b"rcpt to:<Postmaster>",
                Ok(Rcpt {
                    path: Path::Postmaster("Postmaster"),
                }),
            ),
            // errors
            (b"", Err(Unrecognized)),
            (b" MAIL FROM:<>", Err(Unrecognized)),
            (b"MAILFROM:<>", Err(Unrecognized)),
            (b"XYZZY", Err(Unrecognized)),
            (b"NOOP\tx", Err(Unrecognized)),
            (b"GET / HTTP/1.1", Err(NotSmtp)),
            (b"get /index.html HTTP/1.0", Err(NotSmtp)),
            (b"POST /form HTTP/1.1", Err(NotSmtp)),
            (b"CONNECT mx.example:25 HTTP/1.1", Err(NotSmtp)),
            (b"PRI * HTTP/2.0", Err(NotSmtp)),
            (b"GETX / HTTP/1.1", Err(Unrecognized)),
            (b"Host: mx.example", Err(Unrecognized)),
            (b"STARTTLSX", Err(Unrecognized)),
            (b"EHLO", Err(Syntax("Syntax: EHLO hostname"))),
            (b"HELO ", Err(Syntax("Syntax: HELO hostname"))),
            (b"EHLO a\x01b", Err(Syntax("Syntax: EHLO hostname"))),
            (b"EHLO \xff", Err(InvalidUtf8)),
            (b"DATA x", Err(Syntax("Syntax: DATA"))),
            (b"RSET x", Err(Syntax("Syntax: RSET"))),
            (b"VRFY", Err(Syntax("Syntax: VRFY address"))),
            (b"MAIL", Err(Syntax("Syntax: MAIL FROM:<address>"))),
            (b"MAIL FROM", Err(Syntax("Syntax: MAIL FROM:<address>"))),
            (
                b"MAIL FROM <a@b.example>",
                Err(Syntax("Syntax: MAIL FROM:<address>")),
            ),
            (
                b"MAIL TO:<a@b.example>",
                Err(Syntax("Syntax: MAIL FROM:<address>")),
            ),
            (b"MAIL FROM:", Err(Sender(AddressError::Missing))),
            (
                b"MAIL FROM:<a@b.example",
                Err(Sender(AddressError::Unbalanced)),
            ),
            (
                b"MAIL FROM:a@b.example",
                Err(Sender(AddressError::NoAngleBrackets)),
            ),
            (b"MAIL FROM:<a@b.example> FOO=1", Err(UnsupportedParameter)),
            (b"MAIL FROM:<a@b.example>SIZE=1", Err(BadParameter)),
            (b"MAIL FROM:<a@b.example> SIZE=x", Err(BadParameter)),
            (b"MAIL FROM:<\xc3@b.example>", Err(InvalidUtf8)),
            (b"RCPT TO:", Err(Recipient(AddressError::Missing))),
            (
                b"RCPT TO:<>",
                Err(Recipient(AddressError::EmptyForwardPath)),
            ),
            (
                b"RCPT TO <x@y.example>",
                Err(Syntax("Syntax: RCPT TO:<address>")),
            ),
            (
                b"RCPT TO:<x@y.example",
                Err(Recipient(AddressError::Unbalanced)),
            ),
            (
                b"RCPT TO:x@y.example>",
                Err(Recipient(AddressError::NoAngleBrackets)),
            ),
            (
                b"RCPT TO:<x@y.example> NOTIFY=NEVER",
                Err(UnsupportedParameter),
            ),
            (b"RCPT TO:<x@y.example>>", Err(BadParameter)),
            (b"RCPT TO:<x\0@y.example>", Err(NulByte)),
            (b"NOOP \0", Err(NulByte)),
            // known but not offered (STARTTLS: the session decides)
            (b"EXPN staff", Err(NotImplemented)),
            (b"STARTTLS", Ok(StartTls { args: false })),
            (b"starttls x", Ok(StartTls { args: true })),
            (b"AUTH PLAIN AGFAYg==", Err(NotImplemented)),
            (
                b"BDAT 10 LAST",
                Ok(Bdat {
                    size: 10,
                    ending: super::super::bdat::Ending::Last,
                }),
            ),
            (b"BDAT ten", Err(Unframeable)),
            (b"ETRN example.org", Err(NotImplemented)),
            (b"TURN", Err(NotImplemented)),
        ];
        for (line, want) in &table {
            assert_eq!(&parse(line), want, "{:?}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn error_replies_carry_the_right_codes() {
        let table = [
            (CommandError::Unrecognized, 500, "5.5.2"),
            (CommandError::NotImplemented, 502, "5.5.1"),
            (CommandError::NotSmtp, 221, "2.7.0"),
            (CommandError::NulByte, 501, "5.5.4"),
            (CommandError::InvalidUtf8, 501, "5.5.4"),
            (CommandError::Syntax("x"), 501, "5.5.4"),
            (CommandError::Sender(AddressError::Unbalanced), 501, "5.1.7"),
            (
                CommandError::Recipient(AddressError::Unbalanced),
                501,
                "5.1.3",
            ),
            (CommandError::UnsupportedParameter, 555, "5.5.4"),
            (CommandError::BadParameter, 501, "5.5.4"),
        ];
        for (e, code, status) in table {
            let r = e.reply();
            assert_eq!((r.code, r.status), (code, status), "{e:?}");
        }
    }

    #[test]
    fn hello_argument_length_limit() {
        let ok = format!("EHLO {}", "a".repeat(MAX_DOMAIN));
        assert!(matches!(parse(ok.as_bytes()), Ok(Command::Ehlo(_))));
        let long = format!("EHLO {}", "a".repeat(MAX_DOMAIN + 1));
        assert_eq!(
            parse(long.as_bytes()),
            Err(CommandError::Syntax("Syntax: EHLO hostname"))
        );
    }
}
