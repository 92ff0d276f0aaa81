//! Envelope syntax: reverse- and forward-paths (RFC 5321 §4.1.2) and MAIL parameters
//! (RFC 1870 SIZE, RFC 6152 BODY, RFC 6531 SMTPUTF8).
//!
//! Paths must be in angle brackets. The local part is a dot-string or a quoted string and is kept
//! literally: `user%other@local` and `"a@b"@local` are local parts of `local`, never routes.
//! Source routes (`<@a,@b:user@c>`) are parsed; in a reverse-path they are dropped
//! (RFC 5321 §4.1.1.2), a forward-path reports them so the session can refuse it.
//! Non-ASCII bytes are allowed where RFC 6531 allows them and reported, so the session can
//! insist on SMTPUTF8.
//!
//! This module does not decide whether a recipient is ours (the session asks
//! [`crate::smtp::SessionConfig::is_local_domain`]) and does not check a forward-path's domain
//! syntax: a domain that is not exactly one of ours is refused whatever it looks like, so
//! `user@remote@local`, `user@local.` or `user@[127.0.0.1]` all end as "not ours".

use memchr::memchr;

use super::{MAX_DOMAIN, MAX_LOCAL_PART, MAX_PATH};

/// Which path a command carries: MAIL's reverse-path may be `<>`, RCPT's forward-path may be
/// `<Postmaster>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathKind {
    /// MAIL FROM.
    Reverse,
    /// RCPT TO.
    Forward,
}

/// A parsed path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Path<'a> {
    /// `<>` (reverse-path only): bounces and other mail that must not be answered.
    Null,
    /// `<Postmaster>` in any case, without a domain (forward-path only, RFC 5321 §4.5.1).
    Postmaster(&'a str),
    /// `<[route:]local@domain>`.
    Mailbox(Mailbox<'a>),
}

/// A mailbox from a path; every slice borrows the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mailbox<'a> {
    /// `local@domain`, without brackets and source route.
    pub(crate) address: &'a str,
    /// The local part as written (quotes included).
    pub(crate) local: &'a str,
    /// The domain as written.
    pub(crate) domain: &'a str,
    /// Whether the path had a source route (`@a,@b:` before the mailbox).
    pub(crate) source_route: bool,
    /// Whether the path holds any non-ASCII byte (needs SMTPUTF8).
    pub(crate) non_ascii: bool,
}

/// What is wrong with a path. The session answers 501 with 5.1.7 (sender) or 5.1.3
/// (recipient) and [`AddressError::text`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AddressError {
    /// Nothing after the colon.
    Missing,
    /// The path does not start with `<`.
    NoAngleBrackets,
    /// No closing `>` (or an unterminated quoted string).
    Unbalanced,
    /// `<>` as a forward-path.
    EmptyForwardPath,
    /// A malformed source route.
    BadRoute,
    /// A local part that is neither a dot-string nor a quoted string.
    BadLocalPart,
    /// A local part over [`MAX_LOCAL_PART`] octets.
    LocalPartTooLong,
    /// No `@domain`.
    MissingDomain,
    /// A reverse-path domain that is neither a domain nor an address literal.
    BadDomain,
    /// A domain over [`MAX_DOMAIN`] octets.
    DomainTooLong,
    /// A path over [`MAX_PATH`] octets.
    PathTooLong,
}

impl AddressError {
    /// The reply text.
    pub(crate) fn text(self) -> &'static str {
        match self {
            Self::Missing => "Missing address",
            Self::NoAngleBrackets => "Address must be in angle brackets",
            Self::Unbalanced => "Unbalanced angle brackets or quotes in address",
            Self::EmptyForwardPath => "Empty recipient address",
            Self::BadRoute => "Bad source route",
            Self::BadLocalPart => "Bad local part in address",
            Self::LocalPartTooLong => "Local part too long",
            Self::MissingDomain => "Address must include a domain",
            Self::BadDomain => "Bad domain in address",
            Self::DomainTooLong => "Domain too long",
            Self::PathTooLong => "Path too long",
        }
    }
}

/// Parses a path at the start of `s` (the text right after `FROM:`/`TO:` and any spaces) and
/// returns it with the rest of `s` (the parameters, if any).
///
/// # Errors
/// [`AddressError`] when the path is malformed or over a limit.
pub(crate) fn parse_path(s: &str, kind: PathKind) -> Result<(Path<'_>, &str), AddressError> {
    let b = s.as_bytes();
    match b.first() {
        None => return Err(AddressError::Missing),
        Some(b'<') => {}
        Some(_) => return Err(AddressError::NoAngleBrackets),
    }
    if b.get(1) == Some(&b'>') {
        return match kind {
            PathKind::Reverse => Ok((Path::Null, &s[2..])),
            PathKind::Forward => Err(AddressError::EmptyForwardPath),
        };
    }
    let mut i = 1;

    // A-d-l ":" (RFC 5321 §4.1.2): "@dom,@dom:".
    let source_route = b.get(i) == Some(&b'@');
    if source_route {
        loop {
            i += 1; // the '@'
            let start = i;
            while i < b.len() && !matches!(b[i], b',' | b':' | b'>') {
                i += 1;
            }
            if i >= b.len() || b[i] == b'>' || !is_domain(&b[start..i]) {
                return Err(AddressError::BadRoute);
            }
            i += 1;
            if b[i - 1] == b':' {
                break;
            }
            if b.get(i) != Some(&b'@') {
                return Err(AddressError::BadRoute);
            }
        }
    }

    // "<Postmaster>" without a domain, any case (RFC 5321 §4.5.1, §4.1.1.3).
    const POSTMASTER: &[u8] = b"postmaster";
    if kind == PathKind::Forward && !source_route {
        if let Some(word) = b.get(i..i + POSTMASTER.len()) {
            if word.eq_ignore_ascii_case(POSTMASTER) && b.get(i + POSTMASTER.len()) == Some(&b'>') {
                let end = i + POSTMASTER.len();
                return Ok((Path::Postmaster(&s[i..end]), &s[end + 1..]));
            }
        }
    }

    // Local-part = Dot-string / Quoted-string.
    let local_start = i;
    if b.get(i) == Some(&b'"') {
        i += 1;
        loop {
            match b.get(i) {
                None => return Err(AddressError::Unbalanced),
                Some(b'"') => {
                    i += 1;
                    break;
                }
                // quoted-pairSMTP = %d92 %d32-126
                Some(b'\\') => match b.get(i + 1) {
                    None => return Err(AddressError::Unbalanced),
                    Some(32..=126) => i += 2,
                    Some(_) => return Err(AddressError::BadLocalPart),
                },
                Some(&c) if is_qtext(c) => i += 1,
                Some(_) => return Err(AddressError::BadLocalPart),
            }
        }
    } else {
        // Atoms separated by single dots; no leading, trailing or doubled dot.
        let mut after_dot = true;
        while let Some(&c) = b.get(i) {
            if c == b'.' {
                if after_dot {
                    return Err(AddressError::BadLocalPart);
                }
                after_dot = true;
            } else if is_atext(c) {
                after_dot = false;
            } else {
                break;
            }
            i += 1;
        }
        if i == b.len() {
            return Err(AddressError::Unbalanced);
        }
        if after_dot {
            return Err(AddressError::BadLocalPart);
        }
    }
    let local_end = i;
    if local_end - local_start > MAX_LOCAL_PART {
        return Err(AddressError::LocalPartTooLong);
    }
    match b.get(i) {
        Some(b'@') => i += 1,
        Some(b'>') => return Err(AddressError::MissingDomain),
        None => return Err(AddressError::Unbalanced),
        Some(_) => return Err(AddressError::BadLocalPart),
    }

    // The domain runs to the closing '>'.
    let domain_start = i;
    let domain_end = match memchr(b'>', &b[i..]) {
        Some(n) => i + n,
        None => return Err(AddressError::Unbalanced),
    };
    if domain_end + 1 > MAX_PATH {
        return Err(AddressError::PathTooLong);
    }
    let domain = &b[domain_start..domain_end];
    if domain.is_empty() {
        return Err(AddressError::MissingDomain);
    }
    if domain.len() > MAX_DOMAIN {
        return Err(AddressError::DomainTooLong);
    }
    if kind == PathKind::Reverse && !is_domain(domain) {
        return Err(AddressError::BadDomain);
    }
    // All slice ends below sit on ASCII bytes, so they are char boundaries.
    let mailbox = Mailbox {
        address: &s[local_start..domain_end],
        local: &s[local_start..local_end],
        domain: &s[domain_start..domain_end],
        source_route,
        non_ascii: !b[..domain_end].is_ascii(),
    };
    Ok((Path::Mailbox(mailbox), &s[domain_end + 1..]))
}

/// atext (RFC 5322 §3.2.3), plus any non-ASCII byte (RFC 6531 §3.3 UTF8-non-ascii).
fn is_atext(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&c) || c >= 0x80
}

/// qtextSMTP (RFC 5321 §4.1.2), plus any non-ASCII byte (RFC 6531 §3.3).
fn is_qtext(c: u8) -> bool {
    matches!(c, 32..=33 | 35..=91 | 93..=126) || c >= 0x80
}

/// Domain or address-literal (RFC 5321 §4.1.2); non-ASCII bytes are allowed in labels
/// (U-labels, RFC 6531).
pub(crate) fn is_domain(d: &[u8]) -> bool {
    if d.is_empty() || d.len() > MAX_DOMAIN {
        return false;
    }
    if d[0] == b'[' {
        // address-literal: "[" 1*dcontent "]"; dcontent = %d33-90 / %d94-126
        return d.len() >= 3
            && d[d.len() - 1] == b']'
            && d[1..d.len() - 1]
                .iter()
                .all(|&c| matches!(c, 33..=90 | 94..=126));
    }
    d.split(|&c| c == b'.').all(|label| {
        !label.is_empty()
            && (label.len() <= 63 || !label.is_ascii())
            && label[0] != b'-'
            && label[label.len() - 1] != b'-'
            && label
                .iter()
                .all(|&c| c.is_ascii_alphanumeric() || c == b'-' || c >= 0x80)
    })
}

/// BODY= values we accept (RFC 6152).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Body {
    /// `BODY=7BIT`.
    SevenBit,
    /// `BODY=8BITMIME`.
    EightBitMime,
}

/// The MAIL parameters we understand.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct MailParams {
    /// `SIZE=n` (RFC 1870); a number too big for `u64` reads as `u64::MAX`.
    pub(crate) size: Option<u64>,
    /// `BODY=`.
    pub(crate) body: Option<Body>,
    /// `SMTPUTF8` (RFC 6531).
    pub(crate) smtputf8: bool,
}

/// What is wrong with the parameters after a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ParamError {
    /// Not `SP keyword[=value]` (e.g. text glued to the `>`): 501 5.5.4.
    Malformed,
    /// A keyword (or BODY value) we do not offer: 555 5.5.4 (RFC 5321 §4.1.1.11).
    Unsupported,
    /// A known keyword with a wrong value: 501 5.5.4.
    BadValue,
    /// The same keyword twice: 501 5.5.4.
    Duplicate,
}

/// Splits `rest` (what follows a path's `>`) into `(keyword, value)` pairs and hands them to `f`.
fn for_each_param(
    rest: &str,
    mut f: impl FnMut(&str, Option<&str>) -> Result<(), ParamError>,
) -> Result<(), ParamError> {
    if rest.is_empty() {
        return Ok(());
    }
    if !rest.starts_with(' ') {
        return Err(ParamError::Malformed);
    }
    for token in rest.split(' ').filter(|t| !t.is_empty()) {
        let (key, value) = match token.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (token, None),
        };
        // esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-"); esmtp-value = 1*(%d33-60 / %d62-126)
        let key_ok = key
            .bytes()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
            && key.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-');
        let value_ok = value
            .is_none_or(|v| !v.is_empty() && v.bytes().all(|c| matches!(c, 33..=60 | 62..=126)));
        if !key_ok || !value_ok {
            return Err(ParamError::Malformed);
        }
        f(key, value)?;
    }
    Ok(())
}

/// Parses MAIL parameters.
///
/// # Errors
/// [`ParamError`] for malformed, unknown, duplicate or wrong-valued parameters.
pub(crate) fn parse_mail_params(rest: &str) -> Result<MailParams, ParamError> {
    let mut params = MailParams::default();
    for_each_param(rest, |key, value| {
        if key.eq_ignore_ascii_case("SIZE") {
            if params.size.is_some() {
                return Err(ParamError::Duplicate);
            }
            let v = value.ok_or(ParamError::BadValue)?;
            // size-value = 1*20DIGIT (RFC 1870 §3)
            if v.len() > 20 || !v.bytes().all(|c| c.is_ascii_digit()) {
                return Err(ParamError::BadValue);
            }
            params.size = Some(v.parse().unwrap_or(u64::MAX));
        } else if key.eq_ignore_ascii_case("BODY") {
            if params.body.is_some() {
                return Err(ParamError::Duplicate);
            }
            let v = value.ok_or(ParamError::BadValue)?;
            params.body = Some(if v.eq_ignore_ascii_case("7BIT") {
                Body::SevenBit
            } else if v.eq_ignore_ascii_case("8BITMIME") {
                Body::EightBitMime
            } else {
                // e.g. BINARYMIME, which needs CHUNKING: not offered.
                return Err(ParamError::Unsupported);
            });
        } else if key.eq_ignore_ascii_case("SMTPUTF8") {
            if params.smtputf8 {
                return Err(ParamError::Duplicate);
            }
            if value.is_some() {
                return Err(ParamError::BadValue);
            }
            params.smtputf8 = true;
        } else {
            return Err(ParamError::Unsupported);
        }
        Ok(())
    })?;
    Ok(params)
}

/// Parses RCPT parameters: we offer none (no DSN), so any is unsupported.
///
/// # Errors
/// [`ParamError::Malformed`] or [`ParamError::Unsupported`].
pub(crate) fn parse_rcpt_params(rest: &str) -> Result<(), ParamError> {
    for_each_param(rest, |_, _| Err(ParamError::Unsupported))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailbox(s: &str, kind: PathKind) -> Result<(String, bool, bool, String), AddressError> {
        match parse_path(s, kind)? {
            (Path::Mailbox(m), rest) => {
                assert_eq!(m.address, format!("{}@{}", m.local, m.domain));
                Ok((
                    m.address.to_owned(),
                    m.source_route,
                    m.non_ascii,
                    rest.to_owned(),
                ))
            }
            (other, _) => panic!("{s:?}: not a mailbox: {other:?}"),
        }
    }

    #[test]
    fn reverse_paths_that_parse() {
        use PathKind::Reverse;
        assert_eq!(parse_path("<>", Reverse), Ok((Path::Null, "")));
        assert_eq!(
            parse_path("<> SIZE=1", Reverse),
            Ok((Path::Null, " SIZE=1"))
        );
        let table: &[(&str, &str, bool, &str)] = &[
            ("<a@b.example>", "a@b.example", false, ""),
            (
                "<first.last@x.example> BODY=8BITMIME",
                "first.last@x.example",
                false,
                " BODY=8BITMIME",
            ),
            ("<user%other@x.example>", "user%other@x.example", false, ""),
            ("<\"a b@c\"@x.example>", "\"a b@c\"@x.example", false, ""),
            ("<\"a\\\"q\"@x.example>", "\"a\\\"q\"@x.example", false, ""),
            ("<\"a>b\"@x.example>", "\"a>b\"@x.example", false, ""),
            ("<a@[192.0.2.1]>", "a@[192.0.2.1]", false, ""),
            ("<a@[IPv6:2001:db8::1]>", "a@[IPv6:2001:db8::1]", false, ""),
            (
                "<@r1.example,@r2.example:a@b.example>",
                "a@b.example",
                true,
                "",
            ),
            (
                "<!#$&'*+-/=?^_`{|}~@x-y.example>",
                "!#$&'*+-/=?^_`{|}~@x-y.example",
                false,
                "",
            ),
        ];
        for &(input, address, routed, rest) in table {
            let got = mailbox(input, Reverse).unwrap_or_else(|e| panic!("{input:?}: {e:?}"));
            assert_eq!(
                got,
                (address.to_owned(), routed, false, rest.to_owned()),
                "{input:?}"
            );
        }
    }

    #[test]
    fn malformed_paths_and_their_errors() {
        use AddressError::*;
        use PathKind::{Forward, Reverse};
        let table: &[(&str, PathKind, AddressError)] = &[
            ("", Forward, Missing),
            ("a@b.example", Reverse, NoAngleBrackets),
            ("a@b.example>", Forward, NoAngleBrackets),
            ("<a@b.example", Reverse, Unbalanced),
            ("<a@b.example", Forward, Unbalanced),
            ("<", Forward, Unbalanced),
            ("<a", Forward, Unbalanced),
            ("<\"a@b.example>", Forward, Unbalanced),
            ("<>", Forward, EmptyForwardPath),
            ("<<a@b.example>>", Forward, BadLocalPart),
            ("<.a@b.example>", Forward, BadLocalPart),
            ("<a.@b.example>", Forward, BadLocalPart),
            ("<a..b@b.example>", Forward, BadLocalPart),
            ("<a b@b.example>", Forward, BadLocalPart),
            ("<a(c)@b.example>", Forward, BadLocalPart),
            ("<\"a\x01\"@b.example>", Forward, BadLocalPart),
            ("<user>", Forward, MissingDomain),
            ("<user>", Reverse, MissingDomain),
            ("<a@>", Forward, MissingDomain),
            ("<@:a@b.example>", Forward, BadRoute),
            ("<@r.example a@b.example>", Forward, BadRoute),
            ("<@r.example,a@b.example>", Forward, BadRoute),
            ("<@r.example>", Forward, BadRoute),
            ("<a@b..example>", Reverse, BadDomain),
            ("<a@b.example.>", Reverse, BadDomain),
            ("<a@-b.example>", Reverse, BadDomain),
            ("<a@c@b.example>", Reverse, BadDomain),
            ("<a@[]>", Reverse, BadDomain),
            ("<a@b_c.example>", Reverse, BadDomain),
        ];
        for &(input, kind, want) in table {
            assert_eq!(
                parse_path(input, kind).map(|_| ()),
                Err(want),
                "{input:?} {kind:?}"
            );
        }
    }

    #[test]
    fn forward_path_domains_are_not_judged_here() {
        // The relay check refuses these as "not ours"; the parser only hands them on.
        for (input, domain) in [
            (
                "<a@remote.example@local.example>",
                "remote.example@local.example",
            ),
            ("<a@local.example.>", "local.example."),
            ("<a@[127.0.0.1]>", "[127.0.0.1]"),
        ] {
            match parse_path(input, PathKind::Forward) {
                Ok((Path::Mailbox(m), "")) => assert_eq!(m.domain, domain),
                other => panic!("{input:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn postmaster_without_domain_only_in_forward_paths() {
        for p in [
            "<Postmaster>",
            "<postmaster>",
            "<POSTMASTER>",
            "<pOsTmAsTeR>",
        ] {
            assert_eq!(
                parse_path(p, PathKind::Forward),
                Ok((Path::Postmaster(&p[1..p.len() - 1]), ""))
            );
        }
        assert_eq!(
            parse_path("<Postmaster>", PathKind::Reverse).map(|_| ()),
            Err(AddressError::MissingDomain)
        );
        assert_eq!(
            parse_path("<postmasters>", PathKind::Forward).map(|_| ()),
            Err(AddressError::MissingDomain)
        );
        // With a domain it is an ordinary mailbox.
        assert!(matches!(
            parse_path("<postmaster@x.example>", PathKind::Forward),
            Ok((Path::Mailbox(_), ""))
        ));
    }

    #[test]
    fn length_limits_are_exact() {
        let d = "x.example";
        let ok = format!("<{}@{d}>", "a".repeat(MAX_LOCAL_PART));
        assert!(mailbox(&ok, PathKind::Forward).is_ok());
        let long = format!("<{}@{d}>", "a".repeat(MAX_LOCAL_PART + 1));
        assert_eq!(
            parse_path(&long, PathKind::Forward).map(|_| ()),
            Err(AddressError::LocalPartTooLong)
        );
        // A path of exactly MAX_PATH octets: "<" + 64 + "@" + domain + ">".
        let dom_len = MAX_PATH - 3 - MAX_LOCAL_PART;
        let domain = domain_of_len(dom_len);
        let ok = format!("<{}@{domain}>", "a".repeat(MAX_LOCAL_PART));
        assert_eq!(ok.len(), MAX_PATH);
        assert!(mailbox(&ok, PathKind::Reverse).is_ok());
        let long = format!(
            "<{}@{}>",
            "a".repeat(MAX_LOCAL_PART),
            domain_of_len(dom_len + 1)
        );
        assert_eq!(
            parse_path(&long, PathKind::Reverse).map(|_| ()),
            Err(AddressError::PathTooLong)
        );
        // Domains: 255 is fine for is_domain, 256 is not.
        assert!(is_domain(domain_of_len(MAX_DOMAIN).as_bytes()));
        assert!(!is_domain(domain_of_len(MAX_DOMAIN + 1).as_bytes()));
    }

    /// A valid domain of exactly `n` octets (labels of at most 60).
    fn domain_of_len(n: usize) -> String {
        (0..n)
            .map(|i| if i % 61 == 60 && i != n - 1 { '.' } else { 'b' })
            .collect()
    }

    #[test]
    fn non_ascii_is_reported_and_allowed_by_syntax() {
        let (addr, _, non_ascii, _) =
            mailbox("<josé@bücher.example>", PathKind::Reverse).expect("utf-8 mailbox");
        assert_eq!(addr, "josé@bücher.example");
        assert!(non_ascii);
        let (_, _, non_ascii, _) = mailbox("<jose@x.example>", PathKind::Reverse).unwrap();
        assert!(!non_ascii);
    }

    #[test]
    fn domain_syntax_table() {
        for ok in [
            "a",
            "a.b",
            "a-b.c1",
            "1.2.3.4",
            "xn--bcher-kva.example",
            "[1.2.3.4]",
            "[IPv6:::1]",
        ] {
            assert!(is_domain(ok.as_bytes()), "{ok:?}");
        }
        for bad in [
            "", ".", "a.", ".a", "a..b", "-a", "a-", "a b", "a@b", "[", "[]", "[a[b]", "a_b",
        ] {
            assert!(!is_domain(bad.as_bytes()), "{bad:?}");
        }
        assert!(!is_domain(format!("{}.x", "a".repeat(64)).as_bytes()));
    }

    #[test]
    fn mail_parameters_table() {
        use ParamError::*;
        let ok = |size, body, smtputf8| {
            Ok(MailParams {
                size,
                body,
                smtputf8,
            })
        };
        let table: &[(&str, Result<MailParams, ParamError>)] = &[
            ("", ok(None, None, false)),
            (" SIZE=1000", ok(Some(1000), None, false)),
            (" size=0", ok(Some(0), None, false)),
            (
                "  SIZE=12  BODY=8bitmime ",
                ok(Some(12), Some(Body::EightBitMime), false),
            ),
            (" BODY=7BIT", ok(None, Some(Body::SevenBit), false)),
            (" SMTPUTF8", ok(None, None, true)),
            (" smtputf8 SIZE=5", ok(Some(5), None, true)),
            (
                " SIZE=99999999999999999999",
                ok(Some(u64::MAX), None, false),
            ),
            (" SIZE=999999999999999999999", Err(BadValue)),
            (" SIZE=", Err(Malformed)),
            (" SIZE", Err(BadValue)),
            (" SIZE=12a", Err(BadValue)),
            (" SIZE=-1", Err(BadValue)),
            (" SIZE=1 SIZE=2", Err(Duplicate)),
            (" BODY=BINARYMIME", Err(Unsupported)),
            (" BODY", Err(BadValue)),
            (" BODY=7BIT BODY=7BIT", Err(Duplicate)),
            (" SMTPUTF8=yes", Err(BadValue)),
            (" SMTPUTF8 SMTPUTF8", Err(Duplicate)),
            (" AUTH=<>", Err(Unsupported)),
            (" RET=FULL", Err(Unsupported)),
            (" X-FOO", Err(Unsupported)),
            ("SIZE=1", Err(Malformed)),
            (" =1", Err(Malformed)),
            (" SI_ZE=1", Err(Malformed)),
            (" SIZE=a=b", Err(Malformed)),
        ];
        for (input, want) in table {
            assert_eq!(&parse_mail_params(input), want, "{input:?}");
        }
    }

    #[test]
    fn rcpt_parameters_are_not_offered() {
        assert_eq!(parse_rcpt_params(""), Ok(()));
        assert_eq!(parse_rcpt_params("   "), Ok(()));
        assert_eq!(
            parse_rcpt_params(" NOTIFY=NEVER"),
            Err(ParamError::Unsupported)
        );
        assert_eq!(parse_rcpt_params("x"), Err(ParamError::Malformed));
    }
}
