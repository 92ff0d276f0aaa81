//! MAIL FROM and RCPT TO: the envelope of a transaction. `handle_mail` starts one (after
//! HELO/EHLO, one at a time, within the SIZE limit, a non-ASCII sender only with SMTPUTF8,
//! within the client's message rate); `handle_rcpt` adds a recipient, refuses it (the recipient
//! limit, a source route, SMTPUTF8, the DNSBL block, the recipient rate, the relay check, the
//! recipient table) or leaves it to the driver's verdict (`Phase::AwaitingVerdict`).
//!
//! It does not parse the command lines (`command` and `envelope` do), take the driver's verdict
//! (`Session::handle_verdict`, with the driver contract in `session.rs`) or count rates itself
//! (the policy's `RateCheck` does).

use super::{Session, State};
use crate::smtp::command;
use crate::smtp::envelope::{AddressError, Body, MailParams, Path};
use crate::smtp::reply::{self, Out};
use crate::smtp::{BodySink, Closed, Rate, RecipientRefusal, RecipientTable};

impl Session {
    pub(super) fn handle_mail(
        &mut self,
        path: Path<'_>,
        params: MailParams,
        out: &mut Out<'_>,
        sink: &mut impl BodySink,
    ) -> Result<(), Closed> {
        if !self.greeted {
            return self.fail(out, reply::NEED_HELO);
        }
        if self.in_transaction && self.bdat.as_ref().is_some_and(|t| t.failed.is_some()) {
            // MAIL after a failed BDAT message starts afresh (its message already ended).
            self.reset_transaction();
        }
        if self.in_transaction {
            return self.fail(out, reply::NESTED_MAIL);
        }
        if params
            .size
            .is_some_and(|n| n > self.config.max_message_size)
        {
            return self.fail(out, reply::TOO_BIG);
        }
        let address = match path {
            Path::Null => "",
            Path::Mailbox(m) if m.non_ascii && !params.smtputf8 => {
                return self.fail(out, reply::NEED_SMTPUTF8);
            }
            Path::Mailbox(m) => m.address,
            // The parser only gives Postmaster for forward-paths.
            Path::Postmaster(_) => {
                return self.fail(
                    out,
                    command::CommandError::Sender(AddressError::MissingDomain).reply(),
                );
            }
        };
        if !self.within_rate(Rate::Message) {
            sink.message_rate_limited(address);
            return self.fail(out, reply::MESSAGE_RATE);
        }
        let e = &mut self.envelope;
        e.mail_from.clear();
        e.mail_from.push_str(address);
        e.declared_size = params.size;
        e.body_8bitmime = params.body == Some(Body::EightBitMime);
        e.smtputf8 = params.smtputf8;
        e.rcpts.clear();
        self.in_transaction = true;
        reply::MAIL_OK.encode(out);
        Ok(())
    }

    pub(super) fn handle_rcpt(
        &mut self,
        path: Path<'_>,
        out: &mut Out<'_>,
        sink: &mut impl BodySink,
    ) -> Result<(), Closed> {
        if !self.in_transaction {
            return self.fail(out, reply::NEED_MAIL);
        }
        if self.envelope.rcpts.len() >= self.config.max_recipients {
            // RFC 5321 §4.5.3.1.10: not an error of the client; it sends the rest later.
            reply::TOO_MANY_RCPTS.encode(out);
            return Ok(());
        }
        let (address, mailbox) = match path {
            Path::Postmaster(p) => (p, None),
            Path::Mailbox(m) if m.source_route => {
                sink.recipient_refused(&self.envelope, m.address, RecipientRefusal::SourceRoute);
                return self.fail(out, reply::SOURCE_ROUTE_DENIED);
            }
            Path::Mailbox(m) if m.non_ascii && !self.envelope.smtputf8 => {
                sink.recipient_refused(&self.envelope, m.address, RecipientRefusal::NeedsSmtputf8);
                return self.fail(out, reply::NEED_SMTPUTF8);
            }
            Path::Mailbox(m) => (m.address, Some((m.local, m.domain))),
            // The parser never gives `<>` for a forward-path.
            Path::Null => {
                return self.fail(
                    out,
                    command::CommandError::Recipient(AddressError::EmptyForwardPath).reply(),
                );
            }
        };
        if let Some(zone) = &self.blocked_by {
            sink.recipient_refused(&self.envelope, address, RecipientRefusal::Dnsbl);
            reply::encode_dnsbl(out, self.client, zone);
            return self.count_error(out);
        }
        if !self.within_rate(Rate::Recipient) {
            sink.recipient_refused(&self.envelope, address, RecipientRefusal::RateLimited);
            return self.fail(out, reply::RECIPIENT_RATE);
        }
        if let Some((local, domain)) = mailbox {
            if !self.config.is_local_domain(domain) {
                sink.recipient_refused(&self.envelope, address, RecipientRefusal::Relay);
                return self.fail(out, reply::RELAY_DENIED);
            }
            // postmaster@ one of our domains is always taken (RFC 5321 §4.5.1).
            let postmaster = local.eq_ignore_ascii_case("postmaster");
            let known = |t: &RecipientTable| postmaster || t.accepts(address, domain);
            let table = self.policy.recipients.as_deref();
            if table.is_some_and(|t| !known(t)) {
                sink.recipient_refused(&self.envelope, address, RecipientRefusal::UnknownUser);
                reply::encode_unknown_user(out, address);
                return self.count_error(out);
            }
            // The table decides a listed address; no table, or only its `@domain` entry,
            // leaves it to the next hop when the route verifies (looked at only then).
            if let Some(verify) = self.policy.verify.as_deref() {
                let decided = postmaster || table.is_some_and(|t| t.lists_address(address));
                if !decided && verify.wants_verdict(address) {
                    self.state = State::AwaitingVerdict(address.to_owned());
                    return Ok(());
                }
            }
        }
        // `<Postmaster>` is stored as the postmaster of our first domain, so the delivery stage
        // routes it like any of that domain's recipients (RFC 5321 §4.5.1: it must arrive).
        let stored = match (mailbox, self.config.local_domains.first()) {
            (None, Some(domain)) => format!("{address}@{domain}"),
            _ => address.to_owned(),
        };
        self.envelope.rcpts.push(stored);
        reply::RCPT_OK.encode(out);
        Ok(())
    }

    /// Counts a MAIL or RCPT against the client's rate; `false` when it is over.
    fn within_rate(&self, what: Rate) -> bool {
        // `last_progress` is the time this command line was read.
        self.policy
            .rates
            .as_ref()
            .is_none_or(|r| r.allow(what, self.client, self.last_progress))
    }
}
